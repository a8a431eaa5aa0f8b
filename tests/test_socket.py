"""The Unix socket transport: real sockets in tmp_path, trio's real clock, hard timeouts everywhere."""

from __future__ import annotations

import math
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from strategies import topics_and_runs

import bus
from bus import (
    Bus,
    BusError,
    CallTimeoutError,
    Method,
    NoSuchMethodError,
    PeerCredentials,
    PermissionDeniedError,
    Permissions,
    RemoteError,
    Topic,
    ValueRefusedError,
)
from bus._messages import (
    Hello,
    Publish,
    Role,
)
from bus._remote import RemotePublisher
from bus._stream import _Outbox
from bus._wire import (
    Connection,
)

LIMIT = 10  # seconds: every test ends within this, or fails


@bus.default_codec.register(name="test_socket.Position")
@attrs.frozen
class Position:
    lat: float
    lon: float


SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400)
POSITION = Topic("Vehicle.CurrentLocation", Position)
ECHO = Method("Test.Echo", str, str)


def allow_all(creds: PeerCredentials, name: str) -> Permissions:
    return Permissions.ALL


@attrs.define
class Broker:
    bus: Bus
    path: Path
    seen: list[tuple[PeerCredentials, str]]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    the_bus = Bus()
    path = tmp_path / "bus.sock"
    seen: list[tuple[PeerCredentials, str]] = []

    def authorize(creds: PeerCredentials, name: str) -> Permissions | None:
        seen.append((creds, name))
        if name == "intruder":
            return None
        if name == "restricted":
            return Permissions(publish=["Vehicle.Other"], subscribe=["Vehicle.Other"])
        return Permissions.ALL

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: _serve(the_bus, path, authorize, task_status))
        yield Broker(the_bus, path, seen)
        nursery.cancel_scope.cancel()


async def _serve(
    the_bus: Bus,
    path: Path,
    authorize: Callable[[PeerCredentials, str], Permissions | None],
    task_status: Any,
) -> None:
    await bus.serve_unix(the_bus, path, authorize=authorize, write_timeout=0.5, task_status=task_status)


async def test_publish_subscribe_across_the_socket(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        local = broker.bus.client("local")
        with local.subscribe("Vehicle.**") as samples:
            async with bus.connect_unix(broker.path, "remote") as client:
                client.publish_nowait(SPEED, 87.5)
                client.publisher(POSITION).publish_nowait(Position(52.4, 10.8))
                first = await samples.receive()
                second = await samples.receive()
        assert (first.topic, first.value, first.publisher, first.seq) == ("Vehicle.Speed", 87.5, "remote", 1)
        assert second.value == Position(52.4, 10.8)
        assert type(second.value) is Position
        creds, name = broker.seen[0]
        assert (creds.pid, creds.uid, name) == (os.getpid(), os.getuid(), "remote")


async def test_remote_subscription_with_patterns_and_latest(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        local = broker.bus.client("local")
        local.publish_nowait(SPEED, 10.0)
        async with bus.connect_unix(broker.path, "remote") as client:
            with client.subscribe("Vehicle.*", latest=True) as subs, client.subscribe("Other.**") as other:
                assert (await subs.receive()).value == 10.0  # the latest value, at once
                for v in range(1, 50):
                    local.publish_nowait(SPEED, float(v))
                local.publish_nowait(POSITION, Position(1.0, 2.0))
                got: list[Any] = []
                while len(got) < 50:
                    got.extend(s.value for s in await subs.receive_batch())
                assert got == [float(v) for v in range(1, 50)] + [Position(1.0, 2.0)]
                assert other.statistics().received == 0
                assert subs.statistics().received == 51


async def test_get_and_is_stale(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        topic = Topic("Vehicle.Fresh", int, max_age=1000.0)
        async with bus.connect_unix(broker.path, "remote") as client:
            assert await client.get(topic) is None
            assert await client.is_stale(topic)
            broker.bus.client("local").publish_nowait(topic, 3)
            sample = await client.get("Vehicle.Fresh")
            assert sample is not None
            assert (sample.value, sample.seq, sample.publisher) == (3, 1, "local")
            assert not await client.is_stale(topic)
            with pytest.raises(bus.UnknownTopicError):
                await client.get("Vehicle.Nothing")


async def test_call_a_method_served_in_process(broker: Broker) -> None:
    async def echo(text: str) -> str:
        if text == "boom":
            raise KeyError("boom")
        if text == "slow":
            await trio.sleep_forever()
        return text.upper()

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.bus.client("server").serve, ECHO, echo)
            async with bus.connect_unix(broker.path, "remote") as client:
                assert await client.call(ECHO, "hi") == "HI"
                with pytest.raises(RemoteError) as info:
                    await client.call(ECHO, "boom")
                assert info.value.error_type == "KeyError"
                with pytest.raises(CallTimeoutError):
                    await client.call(ECHO, "slow", timeout=0.2)
                with pytest.raises(NoSuchMethodError):
                    await client.call("Test.Nobody", 1)
                with pytest.raises(ValueRefusedError):
                    await client.call(ECHO, 42)  # type: ignore[misc]
            nursery.cancel_scope.cancel()


async def test_a_remote_client_serves_a_method_called_in_process(broker: Broker) -> None:
    async def echo(text: str) -> str:
        if text == "boom":
            raise ValueError("bad text")
        return text * 2

    with trio.fail_after(LIMIT):
        local = broker.bus.client("local")
        async with bus.connect_unix(broker.path, "remote") as client, trio.open_nursery() as nursery:
            await nursery.start(client.serve, ECHO, echo)
            assert broker.bus.statistics().methods == {"Test.Echo": "remote"}
            assert await local.call(ECHO, "ab") == "abab"
            with pytest.raises(RemoteError) as info:
                await local.call(ECHO, "boom")
            assert (info.value.error_type, info.value.message) == ("ValueError", "bad text")
            # and another remote client calls it through the broker
            async with bus.connect_unix(broker.path, "caller") as caller:
                assert await caller.call(ECHO, "x") == "xx"
            with pytest.raises(bus.MethodAlreadyServedError):
                await local.serve(ECHO, echo)
            nursery.cancel_scope.cancel()


async def test_pending_calls_fail_when_the_serving_client_disconnects(broker: Broker) -> None:
    async def hang(text: str) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.fail_after(LIMIT):
        local = broker.bus.client("local")
        errors: list[BaseException] = []

        async def caller() -> None:
            try:
                await local.call(ECHO, "x", timeout=LIMIT)
            except bus.MethodError as exc:
                errors.append(exc)

        async with (
            trio.open_nursery() as outer,
            bus.connect_unix(broker.path, "remote") as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(client.serve, ECHO, hang)
            outer.start_soon(caller)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        assert len(errors) == 1
        assert isinstance(errors[0], RemoteError | NoSuchMethodError)
        assert (
            "disconnected" in str(errors[0]) or "Cancelled" in str(errors[0]) or "no such" in str(errors[0])
        )
        with pytest.raises(NoSuchMethodError):
            await local.call(ECHO, "again")


async def test_errors_permission_and_values(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        async with bus.connect_unix(broker.path, "restricted") as client:
            assert client.permissions.publish == ("Vehicle.Other",)
            with pytest.raises(PermissionDeniedError):
                client.publish_nowait(SPEED, 1.0)
            with pytest.raises(PermissionDeniedError):
                client.subscribe("Vehicle.**")
            with pytest.raises(PermissionDeniedError):
                await client.call(ECHO, "x")
        async with bus.connect_unix(broker.path, "remote") as client:
            with pytest.raises(ValueRefusedError):
                client.publish_nowait(SPEED, 999.0)  # checked here: the topic travelled with the publisher
            # a topic only the broker knows: the refusal comes back asynchronously
            broker.bus.declare(Topic("Vehicle.Gear", str, allowed=("P", "D")))
            client.publish_nowait("Vehicle.Gear", "X")
            await client.flush()
            await trio.sleep(0.2)  # the broker's refusal travels back
            with pytest.raises(ValueRefusedError, match="not one of the allowed values"):
                client.publish_nowait("Vehicle.Gear", "P")
            client.publish_nowait("Vehicle.Gear", "P")  # raised once; then publishing goes on
        assert [s.value for s in broker.bus.latest("Vehicle.Gear")] == ["P"]  # only the valid ones got in


async def test_requested_permissions_narrow_the_grant(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        asked = Permissions(publish=["Vehicle.Speed"], subscribe=["Vehicle.**"])
        async with bus.connect_unix(broker.path, "remote", permissions=asked) as client:
            assert client.permissions == Permissions(publish=["Vehicle.Speed"], subscribe=["Vehicle.**"])
            with pytest.raises(PermissionDeniedError):
                client.publish_nowait(POSITION, Position(0.0, 0.0))


async def test_authorize_refuses_a_connection(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        with pytest.raises(bus.BrokerRefusedError, match="not authorized"):
            async with bus.connect_unix(broker.path, "intruder"):
                pytest.fail("connected")
        async with bus.connect_unix(broker.path, "remote") as client:
            assert await client.get(SPEED) is None


async def test_socket_file_mode_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: bus.serve_unix(Bus(), path, authorize=allow_all, task_status=task_status)
            )
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            nursery.cancel_scope.cancel()
        assert not path.exists()


async def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: stale
    assert path.exists()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: bus.serve_unix(Bus(), path, authorize=allow_all, task_status=task_status)
            )
            with pytest.raises(BusError, match="another broker"):
                await bus.serve_unix(Bus(), path, authorize=allow_all)
            async with bus.connect_unix(path, "remote") as client:
                client.publish_nowait(SPEED, 3.0)
                await client.flush()
                assert await client.get(SPEED) is not None  # the new broker serves
            nursery.cancel_scope.cancel()
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    with pytest.raises(BusError, match="not a socket"):
        await bus.serve_unix(Bus(), plain, authorize=allow_all)
    assert plain.read_text() == "not a socket"


# -- hostile input ------------------------------------------------------------------------------------------


async def _raw(path: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(path))


async def _hello(stream: trio.SocketStream) -> None:
    conn = Connection(Role.CLIENT)
    await stream.send_all(conn.send([Hello("raw")]))
    reply = await stream.receive_some(65536)
    assert reply  # WELCOME


async def _closed_by_broker(stream: trio.SocketStream) -> bytes:
    """Read until the broker closes: returns everything it sent (its last words)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff\xff", id="oversize-length"),
        pytest.param(b"\x00\x00\x00\x10\x81", id="truncated-frame"),
        pytest.param(b"\x00\x00\x00\x03\xff\xfe\xfd", id="garbage-cbor"),
        pytest.param(b"\x00\x00\x00\x03\x81\x81\x18\x63", id="unknown-op"),
        pytest.param(b"\x00\x00\x00\x04\x81\x82\x03\x01", id="wrong-shape"),
    ],
)
async def test_hostile_input_closes_only_that_connection(broker: Broker, payload: bytes) -> None:
    with trio.fail_after(LIMIT):
        async with bus.connect_unix(broker.path, "good") as good:
            with good.subscribe("Vehicle.**") as samples:
                stream = await _raw(broker.path)
                await _hello(stream)
                await stream.send_all(payload)
                if payload.startswith(b"\x00\x00\x00\x10"):
                    await stream.send_eof()
                last_words = await _closed_by_broker(stream)
                await stream.aclose()
                assert b"ProtocolError" in last_words or payload.startswith(b"\x00\x00\x00\x10")
                broker.bus.client("local").publish_nowait(SPEED, 5.0)
                assert (await samples.receive()).value == 5.0


async def test_garbage_before_hello(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        stream = await _raw(broker.path)
        await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
        last_words = await _closed_by_broker(stream)
        await stream.aclose()
        assert b"exceeds the limit" in last_words
        async with bus.connect_unix(broker.path, "good") as good:
            assert good.permissions == Permissions.ALL


async def test_a_client_that_never_reads_is_disconnected(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        stream = await _raw(broker.path)
        async with stream:  # closed whatever happens: a leaked socket would fail a later test
            conn = Connection(Role.CLIENT)
            await stream.send_all(conn.send([Hello("sleeper")]))
            await stream.receive_some(65536)
            from bus._messages import Subscribe

            await stream.send_all(conn.send([Subscribe(1, "**", 1000, "drop_oldest", False)]))
            await trio.sleep(0.1)
            local = broker.bus.client("flood")

            def sleeper_statistics() -> Any:
                found = [s for s in broker.bus.statistics().subscriptions if s.client == "sleeper"]
                return found[0] if found else None

            async with bus.connect_unix(broker.path, "good") as good:
                with good.subscribe("Vehicle.Speed", queue_size=100000) as samples:
                    # A burst without a checkpoint: its queue (1000) overflows whatever the machine's speed.
                    for _ in range(5000):
                        local.publish_nowait(SPEED, 1.0)
                    sub_stats = sleeper_statistics()
                    start = trio.current_time()
                    while True:
                        for _ in range(500):
                            local.publish_nowait(SPEED, 1.0)
                        await trio.sleep(0.001)
                        now = sleeper_statistics()
                        if now is None:
                            break
                        sub_stats = now
                        assert sub_stats.queued <= 1000  # its queue drops; nothing grows without bound
                        if trio.current_time() - start > 5:
                            pytest.fail("the stalled client was not disconnected")
                    assert sub_stats is not None
                    assert sub_stats.dropped > 0
                    elapsed = trio.current_time() - start
                    assert elapsed < 3  # write_timeout is 0.5 s
                    got = 0
                    while got < 1000:
                        got += len(await samples.receive_batch())
                    assert got >= 1000  # the good client still receives


async def test_bursts_travel_as_runs_in_order_and_a_refused_value_spares_the_rest(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        gear = broker.bus.declare(Topic("Vehicle.Gear", str, allowed=("P", "D")))
        local = broker.bus.client("local")
        with local.subscribe("Vehicle.**", queue_size=1000) as samples:
            async with bus.connect_unix(broker.path, "remote") as client:
                speed = client.publisher(SPEED)
                for i in range(300):  # no yield: one write of runs, interleaved topics keep their order
                    speed.publish_nowait(float(i), timestamp=1000 + i)
                    if i % 100 == 99:
                        client.publish_nowait(POSITION, Position(float(i), 0.0))
                for value in ("P", "X", "D"):  # one run; only the broker knows the rule against "X"
                    client.publish_nowait("Vehicle.Gear", value)
                await client.flush()
                got: list[Any] = []
                while len(got) < 305:
                    got.extend(await samples.receive_batch())
                await trio.sleep(0.2)  # the broker's refusal travels back
                with pytest.raises(ValueRefusedError, match="'X'"):  # raised once, by the next publish
                    client.publish_nowait(SPEED, 1.0)
                client.publish_nowait(SPEED, 1.0)
        speeds = [s for s in got if s.topic == SPEED.name]
        assert [s.value for s in speeds] == [float(i) for i in range(300)]
        assert [s.seq for s in speeds] == list(range(1, 301))
        assert [s.timestamp for s in speeds] == [1000.0 + i for i in range(300)]
        assert all(type(s.timestamp) is float for s in speeds)
        kinds = [s.topic.rsplit(".", 1)[1] for s in got]
        assert kinds[:101] == ["Speed"] * 100 + ["CurrentLocation"]
        assert [s.value for s in got if s.topic == gear.name] == ["P", "D"]
        assert samples.statistics().dropped == 0


@asynccontextmanager
async def _reader_and_writer(
    broker: Broker, *, queue_size: int, overflow: str
) -> AsyncIterator[tuple[bus.RemoteBusClient, bus.Subscription[float], bus.RemoteBusClient]]:
    """Two remote clients, "reader" subscribed to SPEED (the broker has the subscription) and "writer"."""
    async with (
        bus.connect_unix(broker.path, "reader") as reader,
        bus.connect_unix(broker.path, "writer") as writer,
    ):
        with reader.subscribe(SPEED, queue_size=queue_size, overflow=overflow) as samples:
            await reader.get(SPEED)  # a round trip: the broker has the subscription
            yield reader, samples, writer


async def test_a_block_subscriber_across_the_socket_loses_nothing(broker: Broker) -> None:
    """Back-pressure through two sockets: a slow remote reader with a `block` queue of 16 slows the
    remote publisher down; every sample arrives, in order."""
    n = 20_000
    with trio.fail_after(LIMIT):
        async with _reader_and_writer(broker, queue_size=16, overflow="block") as (_, samples, writer):
            received: list[float] = []

            async def read_slowly() -> None:
                while len(received) < n:
                    received.extend(s.value for s in await samples.receive_batch())
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_slowly)
                publisher = writer.publisher(SPEED)
                for i in range(n):
                    await publisher.publish(float(i % 400))
            assert received == [float(i % 400) for i in range(n)]
            assert samples.statistics().dropped == 0
            (on_broker,) = [s for s in broker.bus.statistics().subscriptions if s.client == "reader"]
            assert (on_broker.received, on_broker.dropped) == (n, 0)


async def test_timestamps_must_be_seconds(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        async with bus.connect_unix(broker.path, "remote") as client:
            with pytest.raises(TypeError, match="timestamp: expected seconds"):
                client.publish_nowait(SPEED, 1.0, timestamp="now")  # type: ignore[call-overload]
            client.publish_nowait(SPEED, 1.0, timestamp=5)
            sample = await client.get(SPEED)
            assert sample is not None
            assert sample.timestamp == 5.0
            assert type(sample.timestamp) is float


class _StubClient:
    """What a `RemotePublisher` uses of its client: a name, the outbox, and the refusal of a publish."""

    name = "stub"

    def __init__(self) -> None:
        self._outbox = _Outbox(1 << 20)

    def _refuse_publish(self) -> None:
        raise trio.WouldBlock


@given(topics_and_runs())
def test_a_remote_publisher_checks_each_value_exactly_as_the_topic_does(
    case: tuple[Topic[Any], list[Any]],
) -> None:
    """The remote hot path passes a float in the topic's range without calling the rules: it must
    accept, normalise and refuse exactly as `Topic.check`, for every topic and value."""
    topic, values = case
    edges = [0.0, -0.0, math.inf, -math.inf, math.nan, 1, True]
    for bound in (topic.min, topic.max):
        if bound is not None:
            edges += [float(bound), math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)]
    values = values + edges
    client = _StubClient()
    publisher: RemotePublisher[Any] = RemotePublisher(client, topic.name, topic)  # type: ignore[arg-type]
    queued: list[Any] = []
    for value in values:
        try:
            expected = topic.check(value)
        except ValueRefusedError:
            with pytest.raises(ValueRefusedError):
                publisher.publish_nowait(value, timestamp=1.0)
            continue
        publisher.publish_nowait(value, timestamp=1.0)
        queued.append(expected)
    assert all(isinstance(m, Publish) for m in client._outbox.items)
    sent = [v for m in client._outbox.items if isinstance(m, Publish) for v in m.values]
    assert repr(sent) == repr(queued)  # NaN may be in both
    assert [type(v) for v in sent] == [type(v) for v in queued]


async def test_a_closed_remote_client_refuses_to_publish(broker: Broker) -> None:
    with trio.fail_after(LIMIT):
        async with bus.connect_unix(broker.path, "remote") as client:
            speed = client.publisher(SPEED)
            speed.publish_nowait(1.0)
            client.close()
            with pytest.raises(trio.ClosedResourceError, match="'remote' is closed"):
                speed.publish_nowait(2.0)
            with pytest.raises(trio.ClosedResourceError):
                client.publish_nowait(SPEED, 2.0)


async def test_runs_to_a_drop_oldest_reader_across_the_socket_keep_order_and_account_for_every_sample(
    broker: Broker,
) -> None:
    """A remote publisher's runs reach a remote `drop_oldest` reader that reads only at the end: what
    arrives is in order and ends with the last sample, and every sample is received or counted as
    dropped, on the broker's side and on the reader's."""
    n = 20_000
    with trio.fail_after(LIMIT):
        async with _reader_and_writer(broker, queue_size=64, overflow="drop_oldest") as (
            reader,
            samples,
            writer,
        ):
            publisher = writer.publisher(SPEED)
            for i in range(n):  # in bursts of 500: runs of hundreds of samples
                try:
                    publisher.publish_nowait(float(i % 400), timestamp=float(i))
                except trio.WouldBlock:
                    await publisher.publish(float(i % 400), timestamp=float(i))
                if i % 500 == 499:
                    await trio.lowlevel.checkpoint()
            await writer.flush()
            while True:  # until the broker has taken every sample and forwarded what it kept
                stats = broker.bus.statistics()
                (topic,) = [t for t in stats.topics if t.name == SPEED.name]
                (on_broker,) = [s for s in stats.subscriptions if s.client == "reader"]
                if topic.published == n and not on_broker.queued:
                    break
                await trio.sleep(0.01)
            await reader.get(SPEED)  # a round trip: what the broker forwarded has arrived
            arrived = samples.receive_batch_nowait()
            mine = samples.statistics()
        assert on_broker.received + on_broker.dropped == n
        assert mine.received + mine.dropped == on_broker.received
        assert on_broker.dropped + mine.dropped > 0
        seqs = [s.seq for s in arrived]
        assert seqs == sorted(set(seqs))
        assert arrived[-1].timestamp == n - 1
        assert all(s.value == float(int(s.timestamp) % 400) for s in arrived)
