"""A hostile client on the real Unix socket: each attack of issue 11 against a broker, with bounds on time
and memory, and a fuzzer of valid-but-extreme requests asserting the broker stays responsive to another
client and keeps its invariants.

The raw client here speaks the protocol through `bus._wire.Connection` (so it can send what the Python
client never would); the honest clients use `bus.connect_unix`. Real sockets in tmp dirs, trio's real
clock, a hard timeout on every test.
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from hypothesis import example, given, settings
from strategies import HostileOp, hostile_sessions

import bus
from bus import (
    Bus,
    BusClient,
    BusError,
    ConnectionLimits,
    ConnectionLostError,
    LimitExceededError,
    Method,
    PeerCredentials,
    PermissionDeniedError,
    Permissions,
    Topic,
    TopicError,
    ValueRefusedError,
)
from bus._messages import (
    Call,
    Declare,
    Error,
    Hello,
    Message,
    Publish,
    Reply,
    Role,
    Serve,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from bus._wire import (
    Closed,
    Connection,
)
from vwos._runtime import tune_gc

LIMIT = 30  # seconds: every test ends within this, or fails
SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400)
PING = Method("Test.Ping", int, int)


@attrs.frozen
class LockRequest:
    lock: bool


bus.default_codec.register(LockRequest, name="test_hostile.LockRequest")
LOCK = Method("Body.Doors.Lock", LockRequest, bool)

#: What the broker grants each client name (anyone else: everything).
GRANTS = {
    "reader": Permissions(subscribe=["**"], call=["Test.*"]),  # as the control socket's CONTROL_READ
    "squatter": Permissions(subscribe=["**"], publish=["Squat.**"]),
}


class RecordingBus(Bus):
    """A bus that remembers every client it made, to check that no subscription outlives its owner."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[BusClient] = []

    def client(self, name: str, permissions: Permissions = Permissions.ALL) -> BusClient:
        made = super().client(name, permissions)
        self.clients.append(made)
        return made


@attrs.define
class Broker:
    bus: RecordingBus
    path: Path
    nursery: trio.Nursery


def _authorize(creds: PeerCredentials, name: str) -> Permissions:
    return GRANTS.get(name, Permissions.ALL)


@asynccontextmanager
async def serving(
    tmp_path: Path, limits: ConnectionLimits | None = None, write_timeout: float = 1.0
) -> AsyncIterator[Broker]:
    """A broker on a socket in ``tmp_path``, with an in-process server of ``PING``."""
    the_bus = RecordingBus()
    path = tmp_path / "bus.sock"

    async def ping(n: int) -> int:
        return n

    async with trio.open_nursery() as nursery:
        await nursery.start(the_bus.client("pinger").serve, PING, ping)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            await bus.serve_unix(
                the_bus,
                path,
                authorize=_authorize,
                write_timeout=write_timeout,
                limits=limits or ConnectionLimits(),
                task_status=task_status,
            )

        await nursery.start(serve)
        yield Broker(the_bus, path, nursery)
        nursery.cancel_scope.cancel()


class RawClient:
    """A client that sends whatever messages it is given, in frames as large as it likes."""

    def __init__(self, stream: trio.SocketStream, conn: Connection) -> None:
        self.stream = stream
        self.conn = conn

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, name: str, permissions: Permissions | None = None
    ) -> AsyncIterator[RawClient]:
        stream = await trio.open_unix_socket(str(path))
        try:
            conn = Connection(Role.CLIENT)
            client = cls(stream, conn)
            await client.send([Hello(name, permissions)])
            (welcome,) = await client.receive(1)
            assert isinstance(welcome, Welcome), welcome
            yield client
        finally:
            await stream.aclose()

    async def send(self, messages: list[Any]) -> None:
        await self.stream.send_all(self.conn.send(messages))

    async def receive(self, n: int) -> list[Message]:
        """The next ``n`` messages (fewer if the broker closes the connection), within 5 s."""
        got: list[Message] = []
        with trio.fail_after(5):
            while len(got) < n:
                event = self.conn.next_event()
                if event is None:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, Closed):
                    break
                else:
                    got.append(event)
        return got

    async def round_trip(self) -> None:
        """A call answered on this connection: everything sent before it has been handled."""
        await self.send([Call(2**62, PING.name, 1, 5.0)])
        while True:
            (answer,) = await self.receive(1)
            if isinstance(answer, Reply | Error) and answer.id == 2**62:
                return


async def _until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds (polled; fails saying ``what`` after ``seconds``)."""
    deadline = time.perf_counter() + seconds
    while not condition():
        if time.perf_counter() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        await trio.sleep(0.01)


async def _ping_round_trip(path: Path, name: str = "bystander") -> float:
    """Seconds another, honest client needs to connect and have a call answered."""
    started = time.perf_counter()
    async with bus.connect_unix(path, name) as client:
        assert await client.call(PING, 7, timeout=LIMIT) == 7
    return time.perf_counter() - started


def _check_invariants(the_bus: RecordingBus) -> None:
    """No subscription without a live owner; every index and routing table agrees with the subscriptions;
    no declaration that nobody holds unless it was published on."""
    live = [c for c in the_bus.clients if not c.closed]
    owned = {sub for c in live for sub in c._subscriptions}
    subs = set(the_bus._subscriptions)
    assert subs == owned, "a subscription without a live owner (or an owner's that the bus lost)"
    exact = {s for d in the_bus._exact.values() for s in d}
    assert subs == exact | set(the_bus._wildcard)
    assert not exact & set(the_bus._wildcard)
    assert subs == set(the_bus._offsets) == set(the_bus._since)
    holders_allowed: set[object] = {the_bus, *live}
    for name, state in the_bus._topics.items():
        assert set(state.subs) == {s for s in subs if bus.matches(s.pattern, name)}, name
        assert state.holders <= holders_allowed, name
        assert state.holders or state.seq, f"{name}: declared by nobody alive and never published"


# -- names and patterns ---------------------------------------------------------------------------------


async def test_a_subscribe_of_1500_double_stars_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Before: RecursionError in the broker, an ownerless subscription, and every declaration after it
    failing. Now: a TopicError for that subscription, answered at once; nothing left behind."""
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker, RawClient.open(broker.path, "hostile") as raw:
            tracemalloc.start()
            started = time.perf_counter()
            try:
                await raw.send([Subscribe(1, ".".join(["**"] * 1500), None, None, False)])
                (answer,) = await raw.receive(1)
                elapsed = time.perf_counter() - started
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert isinstance(answer, Error)
            assert (answer.id, answer.kind) == (1, "topic")
            assert "limit is 1024" in answer.message
            assert elapsed < 1.0
            assert peak < 10_000_000
            _check_invariants(broker.bus)
            broker.bus.declare(SPEED)  # declarations still work
            await raw.send([Subscribe(2, "Vehicle.**", None, None, False)])
            await raw.round_trip()
            broker.bus.client("gateway").publish_nowait(SPEED, 1.0)
            (sample,) = await raw.receive(1)
            assert sample.NAME == "SAMPLES"
            _check_invariants(broker.bus)


async def test_huge_patterns_in_the_requested_permissions_are_refused_in_bounded_time(tmp_path: Path) -> None:
    """Before: the broker narrowed a requested grant of 20,000 ``*`` with ``covers`` (seconds, hundreds
    of MB). Now the HELLO is a protocol error, found from the pattern's length."""
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            stream = await trio.open_unix_socket(str(broker.path))
            conn = Connection(Role.CLIENT)
            asked = Permissions.NONE
            object.__setattr__(asked, "subscribe", (".".join(["*"] * 20_000),))  # no check on our side
            tracemalloc.start()
            started = time.perf_counter()
            try:
                await stream.send_all(conn.send([Hello("hostile", asked)]))
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                elapsed = time.perf_counter() - started
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                await stream.aclose()
            assert b"ProtocolError" in answer
            assert b"limit is 1024" in answer
            assert elapsed < 1.0
            assert peak < 20_000_000
            assert await _ping_round_trip(broker.path) < 2.0


async def test_a_hello_asking_for_thousands_of_patterns_is_refused_at_once(tmp_path: Path) -> None:
    """Before: a HELLO of 12,000 patterns per action (a 1 MiB frame) held the broker for a third of a
    second while it narrowed each against the grant, and every later request of that client checked
    them all again. Now more than 256 per action is a protocol error, found by counting."""
    patterns = tuple(f"Vehicle.A{i}.*" for i in range(12_000))
    asked = Permissions(publish=patterns, subscribe=patterns, serve=patterns, call=patterns, block=patterns)
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            stream = await trio.open_unix_socket(str(broker.path))
            data = Connection(Role.CLIENT).send([Hello("hostile", asked)])
            started = time.perf_counter()
            try:
                await stream.send_all(data)
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                elapsed = time.perf_counter() - started
            finally:
                await stream.aclose()
            assert b"12000 patterns asked for; the limit is 256" in answer  # refused by counting
            assert elapsed < 2.0  # generous: a loaded machine; the narrowing it replaced took 0.3 s idle
            assert await _ping_round_trip(broker.path) < 2.0
            within = Permissions(subscribe=patterns[:256])
            async with bus.connect_unix(broker.path, "modest", permissions=within) as modest:
                assert modest.permissions == within


# -- floods -----------------------------------------------------------------------------------------------


@pytest.fixture
def vwos_gc() -> Iterator[None]:
    """The collector tuned as in every vwos process (`vwos._runtime.tune_gc`, which `vwos run` calls):
    with the default thresholds, 20,000 subscriptions' objects make full collections pause this whole
    process -- broker and clients alike -- for up to half a second at a time."""
    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("vwos_gc")
async def test_a_frame_of_20000_subscribes_does_not_starve_another_client(tmp_path: Path) -> None:
    """Before: 20,000 SUBSCRIBEs in one frame kept the broker at 100 % CPU and unreachable for two
    minutes. Now each subscription costs O(1) and the broker yields between messages: with the limit
    raised to let all of them in, another client's calls are answered while the flood is processed."""
    n = 20_000
    with trio.fail_after(LIMIT):
        async with serving(tmp_path, ConnectionLimits(subscriptions=n)) as broker:
            for i in range(50):
                broker.bus.declare(Topic(f"Vehicle.T{i}", float))
            async with (
                RawClient.open(broker.path, "hostile") as raw,
                bus.connect_unix(broker.path, "bystander") as bystander,
            ):
                flood = [
                    Subscribe(i + 1, "Vehicle.*" if i % 2 else f"Vehicle.T{i % 50}", 1, None, False)
                    for i in range(n)
                ]
                assert len(raw.conn.send(flood)) < 1 << 20  # one frame
                during: list[tuple[float, int]] = []
                await raw.send(flood)
                started = time.perf_counter()
                while len(broker.bus._subscriptions) < n:
                    t = time.perf_counter()
                    assert await bystander.call(PING, 1, timeout=LIMIT) == 1
                    during.append((time.perf_counter() - t, len(broker.bus._subscriptions)))
                took = time.perf_counter() - started
            assert any(count < n for _, count in during), "the flood was over before the first answer"
            latencies = sorted(latency for latency, _ in during)
            worst, median = latencies[-1], latencies[len(latencies) // 2]
            # Here about 0.1 s at worst (a collection of the young generations), 1 ms typically; the
            # bound is generous for a loaded machine (before: no answer for two minutes).
            assert worst < 2.0, f"a call waited {worst:.3f} s behind the flood (which took {took:.2f} s)"
            assert median < 0.5, f"calls took {median:.3f} s (the median) during the flood"
            assert took < 20
            _check_invariants(broker.bus)


async def test_a_flood_beyond_the_limit_is_refused_with_a_clear_error_and_bounded_logs(
    tmp_path: Path,
) -> None:
    """With the default limits, the first 1024 subscriptions of the flood are made, every other is
    refused with LimitExceededError (the client sees each), and the log stays bounded."""
    n = 5000
    with trio.fail_after(LIMIT), structlog.testing.capture_logs() as logs:
        async with serving(tmp_path) as broker, RawClient.open(broker.path, "hostile") as raw:
            await raw.send([Subscribe(i + 1, "Vehicle.Speed", None, None, False) for i in range(n)])
            answers = await raw.receive(n - 1024)
            assert {(type(a).__name__, getattr(a, "kind", None)) for a in answers} == {("Error", "limit")}
            assert sorted(a.id for a in answers if isinstance(a, Error) and a.id is not None) == list(
                range(1025, n + 1)
            )
            error = answers[0]
            assert isinstance(error, Error)
            assert isinstance(error.to_exception(), LimitExceededError)
            assert "limit of 1024 subscriptions per connection" in error.message
            assert len(broker.bus._subscriptions) == 1024
            assert await _ping_round_trip(broker.path) < 2.0
            await raw.send([Unsubscribe(i + 1) for i in range(n)])  # unknown ids are ignored
            await raw.send([Subscribe(n + 1, "Vehicle.Speed", None, None, False)])
            await raw.round_trip()
            assert len(broker.bus._subscriptions) == 1  # the flood is gone, the new one is in
    refusals = [e for e in logs if e["event"] == "request refused"]
    assert 100 <= len(refusals) <= 110  # the first 100, then one in 1000
    assert all(e["client"] == "'hostile'" and e["pid"] == os.getpid() for e in refusals)


async def test_served_methods_and_pending_calls_are_limited(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with serving(tmp_path, ConnectionLimits(methods=2, calls=3)) as broker:
            started: list[object] = []

            async def never(arg: object) -> None:
                started.append(arg)
                await trio.sleep_forever()

            async with bus.connect_unix(broker.path, "svc") as svc, trio.open_nursery() as nursery:
                await nursery.start(svc.serve, "Svc.A", never)
                await nursery.start(svc.serve, "Svc.B", never)
                with pytest.raises(LimitExceededError, match="limit of 2 methods"):
                    await svc.serve("Svc.C", never)
                for _ in range(3):
                    nursery.start_soon(lambda: svc.call("Svc.A", timeout=LIMIT))
                await _until(lambda: len(started) == 3, "the three calls reached the handler")
                with pytest.raises(LimitExceededError, match="limit of 3 calls"):
                    await svc.call("Svc.B", timeout=LIMIT)
                nursery.cancel_scope.cancel()


async def test_the_queues_a_connection_asks_for_are_limited_in_total(tmp_path: Path) -> None:
    """Before: a subscriber could ask for a queue of 2**40 samples on ``**`` and read slowly enough not to
    be cut off: its queue on the broker grew with everything the bus carried. Now the sum of a
    connection's queue sizes is limited (`ConnectionLimits.queued`), and the broker holds no more."""
    with trio.fail_after(LIMIT):
        async with (
            serving(tmp_path, ConnectionLimits(queued=10_000)) as broker,
            RawClient.open(broker.path, "hostile") as raw,
        ):
            broker.bus.declare(SPEED)
            await raw.send(
                [
                    Subscribe(1, "**", 2**40, None, False),
                    Subscribe(2, "**", 6000, "block", False),
                    Subscribe(3, "Vehicle.*", 5000, None, False),  # 11,000 in all
                    Subscribe(4, "Vehicle.**", 10**9, "latest", False),  # one per topic: not counted
                ]
            )
            answers = [a for a in await raw.receive(2) if isinstance(a, Error)]
            assert [(a.id, a.kind) for a in answers] == [(1, "limit"), (3, "limit")]
            assert "limit of 10000 samples queued for its subscriptions" in answers[0].message
            assert isinstance(answers[0].to_exception(), LimitExceededError)
            await raw.send([Unsubscribe(2), Subscribe(5, "Vehicle.*", 5000, None, False)])
            await raw.round_trip()
            queues = {
                s.pattern: s.capacity for s in broker.bus.statistics().subscriptions if s.client == "hostile"
            }
            assert queues == {"Vehicle.*": 5000, "Vehicle.**": 10**9}
            publisher = broker.bus.client("gateway").publisher(SPEED)
            for i in range(50_000):  # the hostile client reads none of it
                publisher.publish_nowait(float(i % 400))
            held = sum(s.queued for s in broker.bus.statistics().subscriptions if s.client == "hostile")
            assert held <= 5000 + 1
            async with bus.connect_unix(broker.path, "honest") as honest:  # the client sees the refusal
                with pytest.raises(LimitExceededError, match="ask for smaller queues"):
                    async for _ in honest.subscribe("**", queue_size=2**40):
                        pass


# -- slow readers and publishers ---------------------------------------------------------------------------


async def test_a_block_reader_never_fails_or_stalls_a_publisher_it_does_not_own(tmp_path: Path) -> None:
    """Before: a remote reader subscribing Vehicle.** with overflow "block" and queue_size 1 made the
    gateway's publish_nowait raise trio.WouldBlock (and the gateway crash-loop). Now the gateway in the
    broker's process and an isolated one (over the socket) both publish on; the reader misses what its
    queue cannot take, counted; everyone else gets everything."""
    n = 5000
    with trio.fail_after(LIMIT):
        async with serving(tmp_path, write_timeout=LIMIT) as broker:
            gateway = broker.bus.client("gateway").publisher(SPEED)
            watcher = broker.bus.client("watcher").subscribe("Vehicle.**", queue_size=4 * n)
            async with (
                bus.connect_unix(broker.path, "blocker") as blocker,
                bus.connect_unix(broker.path, "isolated-gateway") as isolated,
            ):
                stuck = blocker.subscribe("Vehicle.**", queue_size=1, overflow="block")  # never read
                await blocker.get(SPEED)  # the broker has the subscription
                remote = isolated.publisher(SPEED)
                started = time.perf_counter()
                for i in range(n):
                    gateway.publish_nowait(float(i % 400))  # never raises
                    remote.publish_nowait(float(i % 400))  # never raises: the broker never stops reading
                    if i % 100 == 99:
                        await trio.lowlevel.checkpoint()
                await isolated.flush()
                await _until(lambda: watcher.statistics().queued == 2 * n, "the watcher got everything")
                took = time.perf_counter() - started
                (on_broker,) = [s for s in broker.bus.statistics().subscriptions if s.client == "blocker"]
                assert on_broker.dropped_nowait > 0
                assert on_broker.dropped_nowait == on_broker.dropped
                assert stuck.statistics().received == 0
            assert watcher.statistics().dropped == 0
            assert took < 10


async def test_a_block_subscription_needs_the_right_and_the_reader_sees_the_refusal(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            async with bus.connect_unix(broker.path, "reader") as reader:  # CONTROL_READ-like: no block
                with pytest.raises(PermissionDeniedError, match="may not block"):
                    reader.subscribe("Vehicle.**", overflow="block")
            async with RawClient.open(broker.path, "reader") as raw:  # past the client's own check
                await raw.send([Subscribe(1, "Vehicle.**", 1, "block", False)])
                (answer,) = await raw.receive(1)
                assert isinstance(answer, Error)
                assert (answer.id, answer.kind) == (1, "permission_denied")
                assert "Permissions.block" in answer.message
            _check_invariants(broker.bus)


# -- declarations -----------------------------------------------------------------------------------------


async def test_a_client_cannot_squat_a_topic_it_may_not_publish(tmp_path: Path) -> None:
    """Before: DECLARE needed no permission, so a client declared Vehicle.Speed as str before the gateway
    started, and the gateway failed. Now the DECLARE is refused, and a declaration of a client that left
    without publishing is released."""
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            async with RawClient.open(broker.path, "squatter") as raw:
                await raw.send([Declare(name="Vehicle.Speed", type="str")])
                (answer,) = await raw.receive(1)
                assert isinstance(answer, Error)
                assert (answer.id, answer.kind) == (None, "permission_denied")
                assert "may not publish 'Vehicle.Speed'" in answer.message
            async with bus.connect_unix(broker.path, "early") as early:  # may publish, but never does
                early.declare(Topic("Vehicle.Speed", str))
                await early.flush()
                await early.get("Vehicle.Speed")  # a round trip: declared on the broker
                assert broker.bus.topic("Vehicle.Speed").type is str
            await _until(lambda: "Vehicle.Speed" not in broker.bus._topics, "the declaration released")
            broker.bus.client("gateway").publish_nowait(SPEED, 88.0)  # the gateway starts: no conflict
            assert broker.bus.topic("Vehicle.Speed") is SPEED
            _check_invariants(broker.bus)


async def test_a_conflicting_declaration_over_the_socket_names_the_first_declarer(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            broker.bus.client("can-gateway").declare(SPEED)
            async with bus.connect_unix(broker.path, "plugin") as plugin:
                plugin.declare(Topic("Vehicle.Speed", int, unit="km/h", min=0, max=400))
                await plugin.get(SPEED.name)  # the broker has answered the DECLARE by now
                with pytest.raises(TopicError) as info:
                    plugin.publish_nowait("Vehicle.Speed", 1)
            assert str(info.value) == (
                "Vehicle.Speed: already declared by 'can-gateway'; this declaration differs in "
                "type int (declared: float)"
            )


# -- methods -------------------------------------------------------------------------------------------


async def test_a_call_by_name_is_type_checked_across_the_socket(tmp_path: Path) -> None:
    """Before: CALL by method name skipped the request type check, and the handler got None. Now the
    caller gets ValueRefusedError whoever serves the method and however it is called."""
    got: list[object] = []

    async def lock(request: LockRequest) -> bool:
        got.append(request)
        return True

    with trio.fail_after(LIMIT):
        async with serving(tmp_path) as broker:
            async with (
                bus.connect_unix(broker.path, "body") as body,
                bus.connect_unix(broker.path, "app") as app,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(body.serve, LOCK, lock)  # served in another process
                with pytest.raises(ValueRefusedError, match="expected a LockRequest argument"):
                    await app.call("Body.Doors.Lock", None)
                with pytest.raises(ValueRefusedError):
                    await broker.bus.client("local").call("Body.Doors.Lock", {"lock": True})
                async with RawClient.open(broker.path, "raw") as raw:
                    await raw.send([Call(1, "Body.Doors.Lock", "open sesame", 5.0)])
                    (answer,) = await raw.receive(1)
                    assert isinstance(answer, Error)
                    assert (answer.id, answer.kind) == (1, "value_refused")
                assert await app.call(LOCK, LockRequest(lock=True)) is True
                nursery.cancel_scope.cancel()
            assert got == [LockRequest(lock=True)]
            async with bus.connect_unix(broker.path, "app") as app:  # served in the broker's process
                with pytest.raises(ValueRefusedError, match="expected a int argument"):
                    await app.call("Test.Ping", "x")


# -- refusals are logged with who it was --------------------------------------------------------------


async def test_every_refusal_is_logged_with_the_clients_name_uid_and_pid(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT), structlog.testing.capture_logs() as logs:
        async with (
            serving(tmp_path, ConnectionLimits(subscriptions=1)) as broker,
            RawClient.open(broker.path, "reader") as raw,
        ):
            broker.bus.declare(SPEED)
            await raw.send(
                [
                    Publish("Vehicle.Speed", [1.0], [1.0]),  # permission
                    Subscribe(1, "Vehicle.**", None, None, False),
                    Subscribe(2, "Vehicle.*", None, None, False),  # limit
                    Subscribe(3, "Bad..Name", None, None, False),  # bad name
                    Call(4, "Test.Ping", "not an int", 5.0),  # bad type
                    Declare(name="Vehicle.Speed", type="str"),  # permission
                ]
            )
            await raw.receive(5)
    refusals = [e for e in logs if e["event"] in ("request refused", "permission denied")]
    assert len(refusals) == 5, refusals
    for event in refusals:
        assert (event["client"], event["uid"], event["pid"]) == ("'reader'", os.getuid(), os.getpid())


# -- the socket's directory ----------------------------------------------------------------------------


async def test_a_socket_directory_others_can_write_or_own_is_refused(tmp_path: Path) -> None:
    """Before: /tmp/vwos-UID pre-created 0777 by another user was used as is. Now serve_unix (and `vwos
    run`, through prepare_socket_dir) refuses it, as ssh-agent and tmux do, and makes a missing one 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with (
        trio.fail_after(LIMIT),
        pytest.raises(
            BusError, match=r"shared: the socket's directory \(mode 0o777\) is writable by its group"
        ),
    ):
        await bus.serve_unix(Bus(), shared / "bus.sock", authorize=_authorize)
    assert not (shared / "bus.sock").exists()
    shared.chmod(0o770 | stat.S_ISVTX)
    with pytest.raises(BusError, match="writable by its group"):
        bus.prepare_socket_dir(shared / "bus.sock")
    missing = tmp_path / "a" / "vwos-1000"
    bus.prepare_socket_dir(missing / "vwos.sock")
    assert stat.S_IMODE(missing.stat().st_mode) == 0o700
    bus.prepare_socket_dir(missing / "vwos.sock")  # ours and private: fine, again
    bus.prepare_socket_dir(tmp_path / "bus.sock")  # a test's tmp dir is fine
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(BusError, match="not a directory"):
        bus.prepare_socket_dir(a_file / "bus.sock")
    if os.geteuid() == 0:  # only root can give a directory to someone else
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4242, 4242)
        with pytest.raises(BusError, match="belongs to uid 4242, not to this user"):
            bus.prepare_socket_dir(theirs / "bus.sock")


# -- the fuzzer -------------------------------------------------------------------------------------------


async def _run_hostile(raw: RawClient, ops: list[HostileOp]) -> None:
    """Send the fuzzer's requests, some in one frame; read whatever comes back meanwhile."""
    next_id = 1_000_000
    for op in ops:
        kind, args = op
        messages: list[Any]
        if kind == "subscribe":
            pattern, queue_size, overflow, latest, copies = args
            messages = []
            for _ in range(copies):
                next_id += 1
                messages.append(Subscribe(next_id, pattern, queue_size, overflow, latest))
        elif kind == "unsubscribe":
            messages = [Unsubscribe(next_id - i) for i in range(args)]
        elif kind == "declare":
            name, type_name = args
            messages = [Declare(name=name, type=type_name)]
        elif kind == "publish":
            name, values = args
            messages = [Publish(name, values, [1.0] * len(values), wait=False)]
        elif kind == "serve":
            next_id += 1
            messages = [Serve(next_id, args)]
        else:
            assert kind == "call"
            method, arg, copies = args
            messages = []
            for _ in range(copies):
                next_id += 1
                messages.append(Call(next_id, method, arg, 0.5))
        try:
            await raw.send(messages)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the broker closed the connection (too much piled up for it): its right
        with trio.move_on_after(0.01):  # read a little, as a real (but rude) client would
            await raw.receive(10**9)


def _fuzz(ops_of_two: tuple[list[HostileOp], list[HostileOp]], tmp: Path) -> None:
    async def main() -> None:
        with trio.fail_after(LIMIT), structlog.testing.capture_logs() as logs:
            async with serving(tmp, ConnectionLimits(subscriptions=300, methods=8, calls=64)) as broker:
                broker.bus.declare(SPEED)
                async with (
                    RawClient.open(broker.path, "hostile") as one,
                    RawClient.open(broker.path, "reader") as two,
                ):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_run_hostile, one, ops_of_two[0])
                        nursery.start_soon(_run_hostile, two, ops_of_two[1])
                        while True:  # the broker answers another client while the two do their worst
                            assert await _ping_round_trip(broker.path) < 2.0
                            if not nursery.child_tasks:
                                break
                    _check_invariants(broker.bus)
                    assert await _ping_round_trip(broker.path) < 2.0
                await _until(
                    lambda: all(c.closed for c in broker.bus.clients if c.name in ("hostile", "reader")),
                    "the broker saw both go",
                )
                _check_invariants(broker.bus)
                assert all(s.client == "pinger" for s in broker.bus._subscriptions)
                assert set(broker.bus._servers) == {PING.name}
        failures = [e for e in logs if e["log_level"] in ("error", "critical")]
        assert not failures, f"the broker failed on a request: {failures[0]}"

    trio.run(main)


#: The attacks of issue 11 as sessions, always tried first (random ones may miss them in 25 examples).
_MANY_DOUBLE_STARS = ".".join(["**"] * 1500)
_ATTACKS: list[tuple[list[HostileOp], list[HostileOp]]] = [
    (  # a recursion bomb beside a block reader that never reads and a publisher that does not wait
        [("subscribe", (_MANY_DOUBLE_STARS, None, None, False, 1)), ("declare", ("Vehicle.Other", "str"))],
        [("subscribe", ("Vehicle.**", 1, "block", False, 1)), ("publish", ("Vehicle.Speed", [1.0] * 2000))],
    ),
    (  # floods past the limits: subscriptions with every QoS, methods, pending calls
        [
            ("subscribe", ("Vehicle.*", 1, "block", True, 400)),
            ("serve", "Hostile.A"),
            ("call", ("Hostile.A", 1, 100)),
        ],
        [("subscribe", ("**", 2**40, "drop_oldest", True, 400)), ("call", ("Test.Ping", "x", 100))],
    ),
    (  # squatting and conflicting declarations, then leaving
        [("declare", ("Vehicle.Speed", "str")), ("declare", ("Squat.X", "int"))],
        [("declare", ("Squat.X", "str")), ("publish", ("Squat.X", ["x", 1]))],
    ),
]


@settings(max_examples=25, deadline=None)
@given(hostile_sessions(), hostile_sessions())
@example(*_ATTACKS[0])
@example(*_ATTACKS[1])
@example(*_ATTACKS[2])
def test_the_broker_survives_valid_but_extreme_requests(
    tmp_path_factory: pytest.TempPathFactory, one: list[HostileOp], two: list[HostileOp]
) -> None:
    """Huge patterns (within the bounds and beyond), floods of subscriptions, block readers that never
    read, many pending calls, conflicting declarations, from two clients at once: the broker answers
    another client within 2 s throughout, keeps its invariants, and forgets both clients once they go."""
    _fuzz((one, two), tmp_path_factory.mktemp("fuzz"))


# -- the built-in services with a block reader attached ---------------------------------------------------


def test_the_demo_keeps_running_with_block_readers_attached_over_the_socket(tmp_path: Path) -> None:
    """Before: a remote reader of ``Vehicle.**`` with overflow "block" and queue_size 1 made the CAN
    gateway's publish_nowait raise trio.WouldBlock; it crash-looped and the supervisor gave up in 0.7 s.
    Now the demo -- the simulated car, the CAN gateway, the uplink, the car functions -- runs its 10 s
    with two such readers on its socket (one that never reads its subscription, one that never reads its
    socket at all), nothing is restarted, and the uplink ships what the car did."""
    from test_demo import assert_the_car_drove_and_locked, demo_config, log_events, samples_of

    config = demo_config(tmp_path)
    socket_path = tmp_path / "run" / "vwos.sock"
    errors = tmp_path / "stderr.log"
    command = [
        sys.executable,
        "-m",
        "vwos",
        "run",
        str(config),
        "--duration",
        "10",
        "--socket",
        str(socket_path),
    ]
    speeds_seen: list[int] = []

    async def attach() -> None:
        with trio.fail_after(LIMIT):
            while "all services ready" not in errors.read_text():
                assert proc.poll() is None, errors.read_text()[-3000:]
                await trio.sleep(0.05)
            async with (
                bus.connect_unix(socket_path, "block-reader") as reader,
                RawClient.open(socket_path, "deaf-reader") as deaf,
                bus.connect_unix(socket_path, "watcher") as watcher,
            ):
                reader.subscribe("Vehicle.**", queue_size=1, overflow="block")  # never read
                await deaf.send([Subscribe(1, "Vehicle.**", 1, "block", False)])  # its socket never read
                with watcher.subscribe("Vehicle.Speed", queue_size=1000) as speeds:
                    while proc.poll() is None:
                        with trio.move_on_after(0.2):
                            try:
                                speeds_seen.append(len(await speeds.receive_batch()))
                            except trio.ClosedResourceError:  # the run ended (the broker went)
                                return

    started = time.monotonic()
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [*command, "--log-format", "json", "--log-level", "info"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            with contextlib.suppress(ConnectionLostError):  # the run ends under the readers
                trio.run(attach)
            proc.wait(timeout=LIMIT)
        finally:
            proc.kill()
            proc.wait()
    err = errors.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started < LIMIT
    events = log_events(err)
    assert not [e for e in events if e["level"] in ("error", "critical")], err[-3000:]
    assert [e for e in events if e["event"] == "service exited"] == []  # none stopped before the end
    assert sum(speeds_seen) >= 50  # the gateway published on (10 Hz) to a reader beside the stuck ones
    outgoing = tmp_path / "outgoing"
    assert_the_car_drove_and_locked(samples_of([f.read_bytes() for f in sorted(outgoing.glob("*.cbor"))]))
