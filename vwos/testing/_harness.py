"""Run services against an in-memory bus, feed them inputs, and await what they publish."""

from __future__ import annotations

import contextlib
import contextvars
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar, overload

import attrs
import trio

from bus import Bus, BusClient, Method, NotAvailable, Overflow, Permissions, Sample, Topic, matches
from vwos._policy import GroupSpec, SupervisorPolicy
from vwos._service import Service
from vwos._spec import ServiceSpec, ServiceStatus
from vwos._supervisor import Supervisor, SupervisorGaveUp

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: How long `Harness.expect` waits unless told otherwise (seconds of trio time: mock time under MockClock).
DEFAULT_EXPECT_TIMEOUT = 5.0

#: The bus handles a harness gives its services: in-process clients, or clients over the bus socket.
BusClientKind: TypeAlias = Literal["in_process", "socket"]
BUS_CLIENT_KINDS: tuple[BusClientKind, ...] = ("in_process", "socket")
#: The kind `open_harness` uses when it is given none (the ``vwos_bus_client`` fixture sets it).
DEFAULT_BUS_CLIENT: contextvars.ContextVar[BusClientKind] = contextvars.ContextVar(
    "vwos_bus_client", default="in_process"
)


class ExpectationFailed(AssertionError):
    """`Harness.expect` timed out, or `Harness.expect_none` saw a sample it should not have."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Harness:
    """A running set of services on an in-memory bus, and a test client with every permission.

    Everything the services publish is recorded from the start; `expect` reads the record in order, so a
    sample published before the call is not missed. Made by `open_harness`.
    """

    def __init__(self, supervisor: Supervisor, client: BusClient, recorder: list[Sample[Any]]) -> None:
        self.supervisor = supervisor
        self.client = client
        self.bus: Bus = supervisor.bus
        self._record = recorder
        self._cursor = 0
        self._arrived = trio.Event()

    def _note(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    # -- inputs --------------------------------------------------------------------------------------

    @overload
    def publish(
        self, topic: Topic[T], value: T | NotAvailable, *, timestamp: float | None = None
    ) -> None: ...
    @overload
    def publish(self, topic: str, value: Any, *, timestamp: float | None = None) -> None: ...
    def publish(self, topic: Topic[Any] | str, value: Any, *, timestamp: float | None = None) -> None:
        """Publish an input as the test client ``"test"`` (`samples` shows it as the bus took it)."""
        self.client.publish_nowait(topic, value, timestamp=timestamp)

    @overload
    async def call(self, method: Method[Req, Resp], arg: Req, *, timeout: float = ...) -> Resp: ...
    @overload
    async def call(self, method: str, arg: Any = None, *, timeout: float = ...) -> Any: ...
    async def call(self, method: Method[Any, Any] | str, arg: Any = None, *, timeout: float = 5.0) -> Any:
        """Call a method a service serves."""
        return await self.client.call(method, arg, timeout=timeout)

    # -- outputs -------------------------------------------------------------------------------------

    def samples(self, topic: Topic[Any] | str = "**") -> list[Sample[Any]]:
        """Every sample published so far on topics matching ``topic`` (a topic, name or pattern)."""
        pattern = topic.name if isinstance(topic, Topic) else topic
        return [s for s in self._record if matches(pattern, s.topic)]

    @overload
    async def expect(
        self,
        topic: Topic[T],
        where: Callable[[T], bool] | None = None,
        *,
        timeout: float = DEFAULT_EXPECT_TIMEOUT,
    ) -> Sample[T]: ...
    @overload
    async def expect(
        self,
        topic: str,
        where: Callable[[Any], bool] | None = None,
        *,
        timeout: float = DEFAULT_EXPECT_TIMEOUT,
    ) -> Sample[Any]: ...
    async def expect(
        self,
        topic: Topic[Any] | str,
        where: Callable[[Any], bool] | None = None,
        *,
        timeout: float = DEFAULT_EXPECT_TIMEOUT,
    ) -> Sample[Any]:
        """Wait for the next sample on ``topic`` (a name or pattern) whose value satisfies ``where``.

        Reads the record of everything published from the cursor on, and moves the cursor past the
        sample it returns. ``where`` sees only samples that carry a value: a `bus.NotAvailable` sample
        never matches it (`expect_not_available` waits for one). Raises `ExpectationFailed` (an
        AssertionError) after ``timeout`` seconds of trio time, listing what was published meanwhile on
        matching topics.
        """
        pattern = topic.name if isinstance(topic, Topic) else topic
        what = pattern + ("" if where is None else " matching the condition")
        if where is None:
            return await self._wait_for(pattern, lambda _: True, what, timeout)
        test = where
        return await self._wait_for(pattern, lambda s: s.available and test(s.value), what, timeout)

    async def expect_not_available(
        self,
        topic: Topic[Any] | str,
        reason: str | None = None,
        *,
        timeout: float = DEFAULT_EXPECT_TIMEOUT,
    ) -> Sample[Any]:
        """Wait for the next sample on ``topic`` that says its source has no valid value (its value is a
        `bus.NotAvailable`), with ``reason`` if given; otherwise as `expect`."""
        pattern = topic.name if isinstance(topic, Topic) else topic
        what = f"{pattern} not available" + ("" if reason is None else f" ({reason})")

        def accept(sample: Sample[Any]) -> bool:
            return not sample.available and (reason is None or sample.reason == reason)

        return await self._wait_for(pattern, accept, what, timeout)

    async def _wait_for(
        self, pattern: str, accept: Callable[[Sample[Any]], bool], what: str, timeout: float
    ) -> Sample[Any]:
        seen: list[Sample[Any]] = []
        with trio.move_on_after(timeout):
            while True:
                while self._cursor < len(self._record):
                    sample = self._record[self._cursor]
                    self._cursor += 1
                    if matches(pattern, sample.topic):
                        if accept(sample):
                            return sample
                        seen.append(sample)
                await self._arrived.wait()
        tail = ", ".join(f"{s.topic}={s.value!r}" for s in seen[-10:]) or "nothing"
        raise ExpectationFailed(f"no sample on {what} within {timeout:g} s; seen on matching topics: {tail}")

    async def expect_none(
        self,
        topic: Topic[Any] | str,
        where: Callable[[Any], bool] | None = None,
        *,
        within: float,
    ) -> None:
        """Let ``within`` seconds pass and fail if a matching sample was published in that time."""
        pattern = topic.name if isinstance(topic, Topic) else topic
        start = len(self._record)
        await trio.sleep(within)
        for sample in self._record[start:]:
            if matches(pattern, sample.topic) and (
                where is None or (sample.available and where(sample.value))
            ):
                raise ExpectationFailed(
                    f"unexpected sample {sample.topic}={sample.value!r} within {within:g} s"
                )

    def status(self) -> dict[str, ServiceStatus]:
        """The supervisor's status table, by service name."""
        return {row.name: row for row in self.supervisor.status()}


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _spec(item: Service[Any] | ServiceSpec) -> ServiceSpec:
    if isinstance(item, ServiceSpec):
        return item
    if isinstance(item, Service):
        return ServiceSpec(_snake(type(item).__name__), type(item), item.config)
    raise TypeError(f"expected a Service instance or a ServiceSpec, not {type(item).__name__}")


@asynccontextmanager
async def open_harness(
    *services: Service[Any] | ServiceSpec,
    policy: SupervisorPolicy | None = None,
    groups: Sequence[GroupSpec] = (),
    state_dir: Path | None = None,
    permissions: Permissions = Permissions.ALL,
    bus_client: BusClientKind | None = None,
) -> AsyncIterator[Harness]:
    """Run ``services`` under a real `Supervisor` on a fresh in-memory bus; yield once all are ready.

    Give services as instances (``Overspeed(OverspeedConfig(limit=130))``, named after their class in
    snake case) or as `ServiceSpec` for full control (name, ``after``, permissions, watchdog...). By
    default any service failure ends the test: without a ``policy`` the supervisor runs with intensity 0
    and every service critical, so the first crash ends the test with the service's own exception
    (traceback intact), and a watchdog or start timeout with `SupervisorGaveUp` saying why. With a
    ``policy``, the services' own ``critical`` settings hold, as in a real run; ``groups`` are the
    supervision tree's groups the specs name. Under pytest-trio's
    ``autojump_clock`` everything runs in mock time, so a test of minutes of driving takes milliseconds.

    ``bus_client``: the bus handle each service gets -- ``"in_process"`` (a `bus.BusClient`) or
    ``"socket"`` (a `bus.RemoteBusClient` over the supervisor's bus socket, as with ``isolated = true``).
    None takes the kind of the test's ``vwos_bus_client`` fixture (parametrized over both, so a test that
    uses it runs once with each), else ``"in_process"``.
    """
    specs: Sequence[ServiceSpec] = [_spec(s) for s in services]
    if policy is None:
        specs = [attrs.evolve(s, critical=True, intensity=None, period=None) for s in specs]
    bus = Bus()
    recorder: list[Sample[Any]] = []
    client = bus.client("test", permissions)
    tap = bus.client("vwos.testing").subscribe("**", queue_size=1_000_000, overflow=Overflow.DROP_OLDEST)
    with contextlib.ExitStack() as stack:
        if state_dir is None:  # a temporary one only when none is given (the pytest fixture gives one)
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vwos-test-")))
        supervisor = Supervisor(
            specs,
            groups=groups,
            policy=policy if policy is not None else SupervisorPolicy(intensity=0, period=1.0),
            loop_block=None,
            bus=bus,
            state_dir=state_dir,
            service_bus=bus_client if bus_client is not None else DEFAULT_BUS_CLIENT.get(),
        )
        harness = Harness(supervisor, client, recorder)

        async def record() -> None:
            async for sample in tap:
                recorder.append(sample)
                while True:
                    try:
                        recorder.append(tap.receive_nowait())
                    except (trio.WouldBlock, trio.ClosedResourceError):  # drained, or closed meanwhile
                        break
                harness._note()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record)
                await nursery.start(supervisor.run)
                try:
                    yield harness
                finally:
                    supervisor.shutdown()
                    tap.close()
        except BaseExceptionGroup as group:
            # A service failure ends the test as itself, not wrapped in the nurseries' groups: the
            # service's own exception where there is one, else SupervisorGaveUp saying why.
            gave_up, rest = group.split(SupervisorGaveUp)
            if gave_up is not None and rest is None:
                error = _first_leaf(gave_up)
                cause = error.__cause__
                if isinstance(cause, Exception):
                    raise cause from None
                raise error from None
            raise
