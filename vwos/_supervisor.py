"""The supervisor: thin trio code that runs services and carries out the restart-policy engine's decisions.

All policy (what to restart, when, when to give up) lives in `vwos._policy.RestartEngine`; this module
only starts tasks, waits for readiness, watches heartbeats, stops tasks, and feeds the engine what happened.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs
import structlog
import trio

from bus import Bus, PeerCredentials, Permissions, serve_unix
from vwos._isolation import IsolatedRuns, check_picklable, describe_failure, run_isolated
from vwos._logging import service_logger
from vwos._policy import (
    BackoffPolicy,
    ChildSpec,
    Decision,
    Exit,
    Restart,
    RestartEngine,
    State,
    SupervisorPolicy,
    TransitionError,
)
from vwos._service import Service, ServiceContext

_log = structlog.get_logger("vwos.supervisor")


class SupervisorGaveUp(Exception):
    """Raised by `Supervisor.run` when restarts exceeded the intensity: the supervisor stopped everything."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ServiceSpec:
    """How the supervisor runs one service: built by the config loader, or by hand in tests."""

    name: str
    service_class: type[Service[Any]]
    config: Any = None
    restart: Restart = Restart.PERMANENT
    after: tuple[str, ...] = ()
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    watchdog: float | None = None
    backoff: BackoffPolicy = attrs.field(factory=BackoffPolicy)
    permissions: Permissions = Permissions.ALL
    enabled: bool = True
    #: Run the service in a child process of its own (see ``docs/supervisor.md``, "Isolated services").
    isolated: bool = False
    #: An isolated service's address-space limit in MiB, enforced by the OS (``RLIMIT_AS``).
    memory_limit_mb: int | None = attrs.field(default=None)

    @memory_limit_mb.validator
    def _check_memory_limit(self, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is None:
            return
        if not self.isolated:
            raise ValueError(f"{self.name}: memory_limit_mb needs isolated=True")
        if type(value) is not int or value < 1:
            raise ValueError(f"{self.name}: memory_limit_mb must be a positive integer, got {value!r}")


@attrs.frozen
class ServiceStatus:
    """One row of the supervisor's status table."""

    name: str
    state: State
    restarts: int
    uptime: float | None
    last_exit: Exit | None
    last_error: str | None
    #: How many runs of the service have been started (0 before the first): a new run has a higher number.
    incarnation: int


class _Child:
    """The driver's view of one service: its spec and its current incarnation, if any."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.incarnation = 0
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.done.set()
        self.stopping = False
        self.cancel_reason: Exit | None = None
        self.last_heartbeat = 0.0
        self.ready_at: float | None = None

    @property
    def running(self) -> bool:
        return not self.done.is_set()


@attrs.frozen
class _Ready:
    name: str
    incarnation: int


@attrs.frozen
class _Exited:
    name: str
    incarnation: int
    exit: Exit
    error: str | None
    stopped: bool  # the supervisor stopped it


@attrs.frozen
class _Command:
    action: str  # "stop" | "start" | "restart" | "shutdown"
    name: str | None = None


@attrs.frozen
class _Probe:
    """A liveness probe: the event loop sets ``answered`` when it gets to it."""

    answered: trio.Event


_Event = _Ready | _Exited | _Command | _Probe
_SETTLED = (State.RUNNING, State.EXITED, State.STOPPED, State.FAILED)

#: Where the supervisor is in its life, in order; see `Supervisor.phase`.
Phase: TypeAlias = Literal["new", "starting", "up", "stopping", "stopped"]
_PHASES: tuple[Phase, ...] = ("new", "starting", "up", "stopping", "stopped")


class Supervisor:
    """Runs a set of services on one bus under OTP/systemd-style supervision.

    ``await supervisor.run(task_status=...)`` starts the services one by one in start order, each once the
    one before is ready, reports started once all are up, and then supervises them until `shutdown` is
    called or the task is cancelled: then it stops them in reverse order, each within its stop timeout.
    If restarts exceed the intensity it stops everything and raises `SupervisorGaveUp`.

    `phase` tells where it is in that life (`wait_phase` waits for one), and `probe` whether it is
    healthy: what ``vwos run`` tells systemd (``READY=1`` once ``"up"``, ``WATCHDOG=1`` while healthy).

    All policy is the `RestartEngine`'s: this class only runs tasks and tells the engine what happened.
    """

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        *,
        policy: SupervisorPolicy | None = None,
        bus: Bus | None = None,
        state_dir: Path | None = None,
        rng: random.Random | None = None,
        socket_path: Path | None = None,
        authorize: Callable[[PeerCredentials, str], Permissions | None] | None = None,
    ) -> None:
        self.policy = policy if policy is not None else SupervisorPolicy()
        self._specs = [s for s in services if s.enabled]
        names = [s.name for s in self._specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        self._children = {s.name: _Child(s) for s in self._specs}
        for index, spec in enumerate(self._specs):
            missing = [dep for dep in spec.after if dep not in names[:index]]
            if missing:
                raise ValueError(
                    f"{spec.name}: 'after' names services that do not run before it: {', '.join(missing)}"
                )
        self._order = names
        self._engine = RestartEngine(
            self.policy,
            [ChildSpec(s.name, restart=s.restart, backoff=s.backoff) for s in self._specs],
            rng=rng,
        )
        self._bus = bus
        self._state_dir = state_dir
        if state_dir is not None:
            for name in names:
                (state_dir / name).mkdir(parents=True, exist_ok=True)
        self._send, self._receive = trio.open_memory_channel[_Event](math.inf)
        self._nursery: trio.Nursery | None = None
        self._clock: Callable[[], float] = trio.current_time
        self._started_at: float | None = None
        for spec in self._specs:
            if spec.isolated:
                check_picklable(spec)
        self._socket_path = socket_path
        self._serve_socket = socket_path is not None or any(s.isolated for s in self._specs)
        self._authorize_other = authorize
        #: The isolated services' runs and their processes, for the socket's authorize.
        self._isolated = IsolatedRuns()
        self._phase: Phase = "new"
        self._reached = {phase: trio.Event() for phase in _PHASES}
        self._reached["new"].set()
        self._stop_reason: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the supervisor is in its life: ``"new"`` (`run` not called yet), ``"starting"`` (starting
        the services), ``"up"`` (every service has been up at once: running, or ended for good; it
        supervises them), ``"stopping"`` (shutdown requested, restarts exceeded the intensity, or `run`
        cancelled: it stops the services) and ``"stopped"`` (`run` has returned or raised). A supervisor
        that is asked to stop while starting goes from ``"starting"`` to ``"stopping"``, never ``"up"``.
        """
        return self._phase

    @property
    def stop_reason(self) -> str | None:
        """Why the supervisor is stopping (given to `shutdown`, or why it gave up); None until then."""
        return self._stop_reason

    async def wait_phase(self, phase: Phase) -> None:
        """Wait until the supervisor has reached ``phase`` or gone past it (see `phase`)."""
        await self._reached[phase].wait()

    def _advance(self, phase: Phase) -> None:
        if _PHASES.index(phase) <= _PHASES.index(self._phase):
            return
        self._phase = phase
        for reached in _PHASES[: _PHASES.index(phase) + 1]:
            self._reached[reached].set()

    def _stopping(self, reason: str) -> None:
        if _PHASES.index(self._phase) < _PHASES.index("stopping"):
            self._stop_reason = reason
            self._advance("stopping")

    async def probe(self) -> bool:
        """Whether the supervisor is healthy: ``"up"``, and its event loop (the task that reacts to exits,
        restarts and operator commands) answers a probe. Returns False at once while starting and once
        stopping (also after giving up); otherwise waits for the answer, which a stuck event loop never
        gives: bound the wait (``with trio.move_on_after(seconds): healthy = await supervisor.probe()``).
        """
        if self._phase != "up":
            return False
        probe = _Probe(trio.Event())
        self._send.send_nowait(probe)
        await probe.answered.wait()
        return self._phase == "up"

    @property
    def bus(self) -> Bus:
        """The bus the services share (created when the supervisor starts, unless one was given)."""
        if self._bus is None:
            raise RuntimeError("the supervisor has not started yet")
        return self._bus

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket the bus is served on (isolated services and other local peers join it there).

        The path given to the constructor; else, if any service is isolated, a socket in a private
        temporary directory, set once `run` has started (and removed when it returns); else None.
        """
        return self._socket_path

    def authorize(self, peer: PeerCredentials, client_name: str) -> Permissions | None:
        """The bus socket's ``authorize(peer_credentials, client_name)``.

        A process of an isolated service (its own, or one it started: by session, process group, ancestry,
        or its run's token for an orphan) gets exactly that service's permissions, under that service's name
        only; a process started under the supervisor that is no live service's gets nothing; any other peer
        is handed to the ``authorize`` callback given to the constructor, and refused (None) without one.
        See `vwos._isolation.IsolatedRuns`.
        """
        return self._isolated.authorize(peer, client_name, self._authorize_other)

    # -- the operator's side -------------------------------------------------------------------------

    def shutdown(self, reason: str = "shutdown requested") -> None:
        """Stop every service in reverse start order, then return from `run`; ``reason`` becomes
        `stop_reason` (the first one given wins)."""
        if self._phase == "new":
            self._stop_reason = self._stop_reason or reason  # run() starts and stops at once
        else:
            self._stopping(reason)
        self._send.send_nowait(_Command("shutdown"))

    def stop_service(self, name: str) -> None:
        """Stop one service; it stays stopped (not restarted) until `start_service`."""
        self._check_name(name)
        self._send.send_nowait(_Command("stop", name))

    def start_service(self, name: str) -> None:
        """Start a stopped service (at once, skipping any backoff)."""
        self._check_name(name)
        self._send.send_nowait(_Command("start", name))

    def restart_service(self, name: str) -> None:
        """Stop a service and start it again; an operator's restart does not count toward the intensity."""
        self._check_name(name)
        self._send.send_nowait(_Command("restart", name))

    def _check_name(self, name: str) -> None:
        if name not in self._children:
            raise KeyError(f"no such service: {name!r} (services: {', '.join(self._order)})")

    def status(self) -> list[ServiceStatus]:
        """The status table: one row per service, in start order."""
        now = self._clock()
        rows = []
        for st in self._engine.status():
            child = self._children[st.name]
            up = st.state is State.RUNNING and child.ready_at is not None
            rows.append(
                ServiceStatus(
                    name=st.name,
                    state=st.state,
                    restarts=st.restarts,
                    uptime=now - child.ready_at if up and child.ready_at is not None else None,
                    last_exit=st.last_exit,
                    last_error=st.last_error,
                    incarnation=child.incarnation,
                )
            )
        return rows

    # -- running -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the services, supervise them, stop them. See the class docstring."""
        self._clock = trio.current_time
        if self._phase != "new":
            raise RuntimeError("a Supervisor runs once")
        self._advance("starting")
        if self._stop_reason is not None:  # shutdown() before run()
            self._advance("stopping")
        if self._bus is None:
            self._bus = Bus()
        self._started_at = self._clock()
        _log.info("supervisor starting", services=self._order, strategy=self.policy.strategy.value)
        gave_up: str | None = None
        temp_dir: str | None = None
        if self._serve_socket and self._socket_path is None:
            temp_dir = tempfile.mkdtemp(prefix="vwos-")  # short: a socket path has ~100 bytes at most
            self._socket_path = Path(temp_dir) / "bus.sock"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    if self._socket_path is not None:
                        await nursery.start(
                            partial(serve_unix, self._bus, self._socket_path, authorize=self.authorize)
                        )
                        _log.info("bus served on a unix socket", path=str(self._socket_path))
                    gave_up = await self._supervise(task_status)
                except BaseException as exc:
                    self._stopping("cancelled" if isinstance(exc, trio.Cancelled) else f"failed: {exc!r}")
                    raise
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown(gave_up)
                    self._nursery = None
                    nursery.cancel_scope.cancel()
        finally:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
                self._socket_path = None
            self._advance("stopped")
        if gave_up is not None:
            raise SupervisorGaveUp(gave_up)
        _log.info("supervisor stopped")

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> str | None:
        """The event loop. Returns None on shutdown, or the reason the engine gave up."""
        engine = self._engine
        engine.start_all(self._clock())
        started = False
        while True:
            for name in engine.start_due(self._clock()):
                self._spawn(name)
            if not started and all(row.state in _SETTLED and row.start_at is None for row in engine.status()):
                started = True
                if self._phase == "starting":
                    self._advance("up")
                _log.info(
                    "all services ready",
                    services=len(self._order),
                    seconds=round(self._clock() - (self._started_at or 0.0), 3),
                )
                task_status.started()
            deadline = engine.next_deadline()
            event: _Event | None = None
            with trio.move_on_at(math.inf if deadline is None else deadline):
                event = await self._receive.receive()
            if event is None:
                continue
            if isinstance(event, _Probe):
                event.answered.set()
                continue
            if isinstance(event, _Command) and event.action == "shutdown":
                if not started:
                    task_status.started()
                return None
            decision = self._handle(event)
            if decision is None:
                continue
            if decision.give_up is not None:
                _log.critical("supervisor gives up", reason=decision.give_up)
                self._stopping(f"gave up: {decision.give_up}")
                await self._stop_names(decision.stop)
                return decision.give_up
            if decision.stop:
                assert self._nursery is not None
                self._nursery.start_soon(self._stop_names, decision.stop)

    def _handle(self, event: _Ready | _Exited | _Command) -> Decision | None:
        """Tell the engine what happened; return its decision, if it made one."""
        now = self._clock()
        engine = self._engine
        if isinstance(event, _Ready):
            if event.incarnation == self._children[event.name].incarnation:
                engine.on_ready(event.name, now)
            return None
        if isinstance(event, _Exited):
            if event.incarnation != self._children[event.name].incarnation:
                return None
            if event.stopped:
                engine.on_stopped(event.name, now)
                return None
            log = _log.info if event.exit is Exit.NORMAL else _log.error
            log("service exited", service=event.name, exit=event.exit.value, error=event.error)
            decision = engine.on_exit(event.name, event.exit, now, error=event.error)
            if decision.start and decision.give_up is None:
                _log.info("restart scheduled", services=list(decision.start), delay=round(decision.delay, 3))
            return decision
        assert event.name is not None
        _log.info(f"operator: {event.action}", service=event.name)
        if event.action == "stop":
            return engine.on_stop_requested(event.name)
        if event.action == "start":
            return engine.on_start_requested(event.name, now)
        decision = engine.on_stop_requested(event.name)  # restart: stop, then start once stopped
        engine.on_start_requested(event.name, now)
        return decision

    async def _shutdown(self, gave_up: str | None) -> None:
        """Stop whatever still runs, in reverse start order, and let the engine know."""
        if gave_up is None:
            decision = self._engine.stop_all()
            await self._stop_names(decision.stop)
        for child in self._children.values():  # stragglers from an interrupted stop sequence
            if child.running:
                await self._stop(child.spec.name)
        while True:  # the last exit reports, for a truthful status table
            try:
                event = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(event, _Probe):
                event.answered.set()  # answered "not healthy": the phase is no longer "up"
            elif isinstance(event, _Exited) and event.stopped:
                with contextlib.suppress(TransitionError):
                    self._engine.on_stopped(event.name, self._clock())

    # -- one child -----------------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        assert self._nursery is not None
        child = self._children[name]
        child.incarnation += 1
        child.done = trio.Event()
        child.stopping = False
        child.cancel_reason = None
        child.ready_at = None
        _log.info("service starting", service=name)
        self._nursery.start_soon(self._incarnation, child, name=f"vwos service {name}")

    async def _incarnation(self, child: _Child) -> None:
        """One run of a service, in-process or isolated: the start timeout, readiness, the watchdog, and the
        report of how it ended are the same for both; only the runner that starts it differs."""
        spec = child.spec
        incarnation = child.incarnation
        runner = self._run_isolated if spec.isolated else self._run_in_process
        exit, error = Exit.NORMAL, None
        # Shielded: cancelling the supervisor does not reach services directly; the supervisor stops them
        # itself, in reverse start order, each within its stop timeout.
        scope = trio.CancelScope(shield=True)
        child.scope = scope
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    with trio.move_on_after(spec.start_timeout) as start_scope:
                        await nursery.start(runner, child, nursery.cancel_scope)
                    if start_scope.cancelled_caught:
                        child.cancel_reason = Exit.START_TIMEOUT
                        nursery.cancel_scope.cancel()
                    else:
                        child.ready_at = child.last_heartbeat = self._clock()
                        _log.info("service ready", service=spec.name)
                        self._send.send_nowait(_Ready(spec.name, incarnation))
                        if spec.watchdog is not None:
                            nursery.start_soon(self._watchdog, child, spec.watchdog, nursery.cancel_scope)
        except Exception as exc:
            exit, error = Exit.ERROR, describe_failure(exc)
        finally:
            child.done.set()
        if child.cancel_reason is Exit.START_TIMEOUT:
            error = f"not ready within its start timeout of {spec.start_timeout:g} s"
            exit = Exit.START_TIMEOUT
        elif child.cancel_reason is Exit.WATCHDOG:
            exit, error = Exit.WATCHDOG, f"no heartbeat for {spec.watchdog:g} s"
        elif scope.cancelled_caught and not child.stopping:
            exit = Exit.CANCELLED
        self._send.send_nowait(_Exited(spec.name, incarnation, exit, error, stopped=child.stopping))

    def _heartbeat(self, child: _Child) -> Callable[[], None]:
        def heartbeat() -> None:
            child.last_heartbeat = self._clock()

        return heartbeat

    async def _run_in_process(
        self, child: _Child, done: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run the service in a task of this process, on a bus client of its own."""
        spec = child.spec
        bus_client = self.bus.client(spec.name, spec.permissions)
        try:
            ctx = ServiceContext(
                name=spec.name,
                bus=bus_client,
                log=service_logger(spec.name),
                state_dir=(self._state_dir or Path(".")) / spec.name,
                heartbeat=self._heartbeat(child),
            )
            service = spec.service_class(spec.config)
            status = _StartedFlag(task_status)
            await service.run(ctx, task_status=status)
            if not status.called:
                task_status.started()  # returned without saying it was ready: it ran to completion
            done.cancel()  # ends the watchdog with the service
        finally:
            bus_client.close()

    async def _run_isolated(
        self, child: _Child, done: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run the service in a process of its own, joined to the bus over the socket."""
        spec = child.spec
        assert self._socket_path is not None
        await run_isolated(
            spec,
            socket_path=self._socket_path,
            state_dir=((self._state_dir or Path(".")) / spec.name).absolute(),
            heartbeat=self._heartbeat(child),
            runs=self._isolated,
            done=done,
            task_status=task_status,
        )

    async def _watchdog(self, child: _Child, period: float, scope: trio.CancelScope) -> None:
        while True:
            deadline = child.last_heartbeat + period
            if self._clock() >= deadline:
                _log.error("watchdog: no heartbeat", service=child.spec.name, period=period)
                child.cancel_reason = Exit.WATCHDOG
                scope.cancel()
                return
            await trio.sleep_until(deadline)

    async def _stop(self, name: str) -> None:
        child = self._children[name]
        if not child.running or child.scope is None:
            return
        child.stopping = True
        _log.info("service stopping", service=name)
        child.scope.cancel()
        # An isolated service's process is killed after its stop timeout: wait for that, and a little more.
        grace = 5.0 if child.spec.isolated else 0.0
        with trio.move_on_after(child.spec.stop_timeout + grace) as timeout:
            await child.done.wait()
        if not timeout.cancelled_caught:
            _log.info("service stopped", service=name)
        else:
            _log.error(
                "service did not stop within its stop timeout; left behind",
                service=name,
                stop_timeout=child.spec.stop_timeout,
            )

    async def _stop_names(self, names: Sequence[str]) -> None:
        for name in names:
            await self._stop(name)


class _StartedFlag:
    """Wraps a task status to learn whether the service called ``started()``."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: None = None) -> None:
        self.called = True
        self._inner.started()
