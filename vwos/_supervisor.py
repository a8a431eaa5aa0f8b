"""The supervisor: thin trio code that runs services and carries out the restart-policy engine's decisions.

All policy (what to restart, when, what fails, when to give up) lives in `vwos._policy.RestartEngine`; this
module only starts tasks, waits for readiness, watches heartbeats and the event loop, stops tasks, and
feeds the engine what happened.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs
import structlog
import trio

from bus import (
    Bus,
    BusError,
    BusHandle,
    ConnectionLimits,
    PeerCredentials,
    Permissions,
    connect_unix,
    serve_unix,
)
from vwos._isolation import (
    IsolatedRuns,
    IsolatedServiceFailed,
    check_picklable,
    describe_failure,
    run_isolated,
    unwrap,
)
from vwos._logging import service_logger
from vwos._loopwatch import LoopWatch, below
from vwos._policy import (
    Decision,
    Exit,
    GroupSpec,
    GroupStatus,
    RestartEngine,
    State,
    SupervisorPolicy,
    TransitionError,
    service_dependencies,
    start_order,
)
from vwos._service import ServiceContext
from vwos._spec import ServiceSpec, ServiceStatus

_log = structlog.get_logger("vwos.supervisor")


class SupervisorGaveUp(Exception):
    """Raised by `Supervisor.run` when a critical unit exhausted its restart budget and the failure reached
    the root: the supervisor stopped everything. ``__cause__`` is the exception of the service whose
    failure escalated, when there was one (its traceback intact)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        self.cancel_error: str | None = None
        self.last_heartbeat = 0.0
        self.ready_at: float | None = None
        #: The exception the last run ended with (for the test kit and `SupervisorGaveUp`'s cause).
        self.exception: BaseException | None = None
        #: The run did not stop within its stop timeout at shutdown: it is left behind, its end ignored.
        self.abandoned = False
        #: The run was told to stop and is past its stop timeout (it ignores cancellation).
        self.overdue = False
        self.root_task: trio.lowlevel.Task | None = None

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
    exception: BaseException | None = None


@attrs.frozen
class _Abandoned:
    """A service did not stop within its stop timeout while everything stops: go on without it."""

    name: str
    incarnation: int


@attrs.frozen
class _Command:
    action: str  # "stop" | "start" | "restart" | "shutdown"
    name: str | None = None


@attrs.frozen
class _Probe:
    """A liveness probe: the event loop sets ``answered`` when it gets to it."""

    answered: trio.Event


@attrs.frozen
class _Blocked:
    """The event loop was blocked for ``seconds`` by the service ``name`` (a task of its)."""

    name: str
    incarnation: int
    seconds: float
    #: None: in one step; else in steps within this many seconds.
    over: float | None = None


_Event = _Ready | _Exited | _Abandoned | _Command | _Probe | _Blocked
_SETTLED = (State.RUNNING, State.EXITED, State.STOPPED, State.FAILED)

#: Where the supervisor is in its life, in order; see `Supervisor.phase`.
Phase: TypeAlias = Literal["new", "starting", "up", "stopping", "stopped"]
_PHASES: tuple[Phase, ...] = ("new", "starting", "up", "stopping", "stopped")

#: An isolated service's process is killed after its stop timeout: its stop waits for that, and this more.
_ISOLATED_STOP_GRACE = 5.0
#: The name of each service's root task: the loop watch finds the service a task belongs to by it.
TASK_PREFIX = "vwos service "


def _only_cancellations(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancellations(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class Supervisor:
    """Runs a tree of services on one bus under OTP/systemd-style supervision.

    ``await supervisor.run(task_status=...)`` starts the services -- in parallel, each once the units it
    starts ``after`` are ready -- reports started once every service's first start has been decided, and
    then supervises them until `shutdown` is called or the task is cancelled: then it stops them in
    reverse order, each within its stop timeout. A service that exhausts its restart budget fails alone
    (or takes its group with it, where it is critical); only when a failure reaches the root does the
    supervisor stop everything and raise `SupervisorGaveUp`.

    `phase` tells where it is in that life (`wait_phase` waits for one), and `probe` whether it is
    healthy: what ``vwos run`` tells systemd (``READY=1`` once ``"up"``, ``WATCHDOG=1`` while healthy).

    ``loop_block`` (seconds, None to turn it off): a watch thread detects an event loop blocked that long
    while it is blocked, names the service whose task blocks it, and that service -- only it -- is
    restarted (exit ``blocked``); other services' watchdogs do not count the time the loop was blocked.
    ``connection_limits``: what one client of the bus socket may hold at once (`bus.ConnectionLimits`).
    ``service_bus``: how a service that is not isolated reaches the bus -- ``"in_process"`` (a
    `bus.BusClient` of it, the default) or ``"socket"`` (a `bus.RemoteBusClient` over the bus socket, with
    the service's permissions, as an isolated service's process does; the socket is served then). The
    test kit runs service tests both ways (`vwos.testing.open_harness`).
    ``undeclared_grace`` (seconds, None to turn it off): a subscription to an exact topic name that nobody
    has declared this long after it was made is logged once, with the declared names closest to it.

    All policy is the `RestartEngine`'s: this class only runs tasks and tells the engine what happened.
    """

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        *,
        groups: Sequence[GroupSpec] = (),
        policy: SupervisorPolicy | None = None,
        bus: Bus | None = None,
        state_dir: Path | None = None,
        rng: random.Random | None = None,
        socket_path: Path | None = None,
        authorize: Callable[[PeerCredentials, str], Permissions | None] | None = None,
        loop_block: float | None = 2.0,
        undeclared_grace: float | None = 10.0,
        connection_limits: ConnectionLimits | None = None,
        service_bus: Literal["in_process", "socket"] = "in_process",
    ) -> None:
        if service_bus not in ("in_process", "socket"):
            raise ValueError(f"service_bus must be 'in_process' or 'socket', not {service_bus!r}")
        self._service_bus = service_bus
        self.policy = policy if policy is not None else SupervisorPolicy()
        if undeclared_grace is not None and not 0 < undeclared_grace < math.inf:
            raise ValueError(
                f"undeclared_grace must be a finite number of seconds > 0, got {undeclared_grace!r}"
            )
        self._undeclared_grace = undeclared_grace
        self._connection_limits = connection_limits if connection_limits is not None else ConnectionLimits()
        self._specs = [s for s in services if s.enabled]
        names = [s.name for s in self._specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        enabled = set(names) | {g.name for g in groups}
        for spec in self._specs:
            missing = [dep for dep in spec.after if dep not in enabled]
            if missing:
                raise ValueError(f"{spec.name}: 'after' names services that do not run: {', '.join(missing)}")
        # Start order: each service after what it starts after (groups expanded), ties in the given order.
        deps = service_dependencies([s.child_spec() for s in self._specs], groups)
        order, cycles = start_order(deps)
        if cycles:
            raise ValueError(f"dependency cycle: {' -> '.join(cycles[0])}")
        by_name = {s.name: s for s in self._specs}
        self._specs = [by_name[name] for name in order]
        self._order = order
        self._children = {s.name: _Child(s) for s in self._specs}
        self._engine = RestartEngine(
            self.policy, [s.child_spec() for s in self._specs], groups=groups, rng=rng
        )
        self._groups = tuple(groups)
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
        self._serve_socket = (
            socket_path is not None or service_bus == "socket" or any(s.isolated for s in self._specs)
        )
        self._authorize_other = authorize
        #: The isolated services' runs and their processes, for the socket's authorize.
        self._isolated = IsolatedRuns()
        self._phase: Phase = "new"
        self._reached = {phase: trio.Event() for phase in _PHASES}
        self._reached["new"].set()
        self._stop_reason: str | None = None
        #: Set once everything that could be stopped has stopped (services left behind excepted).
        self._stopped_all = trio.Event()
        self._closing = trio.Event()
        self._culprit: BaseException | None = None
        self._loop_watch = (
            LoopWatch(threshold=loop_block, describe=self._service_of) if loop_block is not None else None
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the supervisor is in its life: ``"new"`` (`run` not called yet), ``"starting"`` (starting
        the services), ``"up"`` (the first start of every service has been decided -- it became ready,
        ended, failed, or waits behind one that failed -- and it supervises them), ``"stopping"``
        (shutdown requested, the failure of a critical unit reached the root, or `run` cancelled: it
        stops the services) and ``"stopped"`` (`run` has returned or raised). A supervisor that is asked
        to stop while starting goes from ``"starting"`` to ``"stopping"``, never ``"up"``.
        """
        return self._phase

    @property
    def stop_reason(self) -> str | None:
        """Why the supervisor is stopping (given to `shutdown`, or why it gave up); None until then."""
        return self._stop_reason

    @property
    def left_behind(self) -> tuple[str, ...]:
        """Services that did not stop within their stop timeout when everything stopped: their tasks
        still run (an in-process task cannot be killed), so `run` cannot return; ``vwos run`` exits the
        process instead once `wait_stopped` returns."""
        return tuple(name for name, child in self._children.items() if child.abandoned and child.running)

    def kill_processes(self) -> None:
        """SIGKILL every isolated service's whole process tree (for an exit that cannot wait: ``vwos
        run``'s second signal)."""
        self._isolated.kill_all()

    async def wait_stopped(self) -> None:
        """Wait until every service has stopped or been left behind (see `left_behind`)."""
        await self._stopped_all.wait()

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
        if self._service_bus == "socket" and peer.pid == os.getpid():
            child = self._children.get(client_name)
            if child is not None and not child.spec.isolated:  # a service of ours, over the socket
                return child.spec.permissions
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
        """Stop a service or a group; it stays stopped (not restarted) until `start_service`."""
        self._check_name(name)
        self._send.send_nowait(_Command("stop", name))

    def start_service(self, name: str) -> None:
        """Start a stopped or failed service or group (at once, skipping any backoff, with a fresh
        restart budget)."""
        self._check_name(name)
        self._send.send_nowait(_Command("start", name))

    def restart_service(self, name: str) -> None:
        """Stop a service or group and start it again (a failed one is revived); an operator's restart
        does not count toward any restart budget."""
        self._check_name(name)
        self._send.send_nowait(_Command("restart", name))

    def _check_name(self, name: str) -> None:
        if name not in self._engine.units():
            units = ", ".join(self._engine.units())
            raise KeyError(f"no such service or group: {name!r} (there are: {units})")

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
                    reason=(
                        "did not stop within its stop timeout: it ignores cancellation; what restarts or "
                        "starts after it waits"
                        if child.overdue and child.running
                        else st.reason
                    ),
                    group=st.group,
                    critical=st.critical,
                    revive_at=st.revive_at,
                )
            )
        return rows

    def group_status(self) -> list[GroupStatus]:
        """One row per group, in start order (empty without groups)."""
        return self._engine.group_status()

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
                    if self._loop_watch is not None:
                        await nursery.start(self._loop_watch.run, self._on_blocked)
                    if self._undeclared_grace is not None:
                        nursery.start_soon(self._report_undeclared, self._bus, self._undeclared_grace)
                    if self._socket_path is not None:
                        await nursery.start(
                            partial(
                                serve_unix,
                                self._bus,
                                self._socket_path,
                                authorize=self.authorize,
                                limits=self._connection_limits,
                            )
                        )
                        _log.info("bus served on a unix socket", path=str(self._socket_path))
                    gave_up = await self._supervise(task_status)
                except BaseException as exc:
                    self._stopping("cancelled" if isinstance(exc, trio.Cancelled) else f"failed: {exc!r}")
                    raise
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_everything()
                    self._nursery = None
                    nursery.cancel_scope.cancel()
        finally:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
                self._socket_path = None
            self._advance("stopped")
        if gave_up is not None:
            raise SupervisorGaveUp(gave_up) from self._culprit
        _log.info("supervisor stopped")

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> str | None:
        """The event loop. Returns None on shutdown, or the reason the engine gave up."""
        engine = self._engine
        engine.start_all(self._clock())
        started = False
        while True:
            self._pull()
            if not started and engine.startup_settled():
                started = True
                if not engine.closed:
                    self._startup_finished()
                task_status.started()
            if engine.closed and not self._any_running():
                return engine.given_up
            deadline = engine.next_deadline()
            event: _Event | None = None
            with trio.move_on_at(math.inf if deadline is None else deadline):
                event = await self._receive.receive()
            if event is None:
                continue
            if isinstance(event, _Command) and event.action == "shutdown":
                if not started:
                    started = True
                    task_status.started()
                self._begin_stop()
                continue
            decision = self._handle(event)
            if decision is not None and decision.give_up is not None:
                _log.critical("supervisor gives up", reason=decision.give_up)
                self._stopping(f"gave up: {decision.give_up}")
                self._closing.set()

    def _pull(self) -> None:
        """Start and stop what the engine hands out."""
        assert self._nursery is not None
        now = self._clock()
        for name in self._engine.start_due(now):
            self._spawn(name)
        for name in self._engine.stop_due():
            self._nursery.start_soon(self._stop, name)

    def _any_running(self) -> bool:
        return any(child.running and not child.abandoned for child in self._children.values())

    def _begin_stop(self) -> None:
        self._engine.stop_all()
        self._closing.set()

    def _startup_finished(self) -> None:
        if self._phase == "starting":
            self._advance("up")
        seconds = round(self._clock() - (self._started_at or 0.0), 3)
        rows = self._engine.status()
        not_ready = {
            r.name: r.state.value for r in rows if r.state not in _SETTLED or r.state is State.FAILED
        }
        if not not_ready:
            _log.info("all services ready", services=len(self._order), seconds=seconds)
        else:
            _log.warning(
                "startup finished; not every service is ready",
                ready=sum(r.state is State.RUNNING for r in rows),
                services=len(self._order),
                not_ready=not_ready,
                seconds=seconds,
            )

    def _handle(self, event: _Event) -> Decision | None:
        """Tell the engine what happened; return its decision, if it made one."""
        now = self._clock()
        engine = self._engine
        if isinstance(event, _Probe):
            event.answered.set()
            return None
        if isinstance(event, _Ready):
            if event.incarnation == self._children[event.name].incarnation:
                engine.on_ready(event.name, now)
            return None
        if isinstance(event, _Blocked):
            self._blocked(event)
            return None
        if isinstance(event, _Abandoned):
            child = self._children[event.name]
            if event.incarnation == child.incarnation and child.running:
                child.abandoned = True
                try:
                    engine.on_stopped(event.name, now)
                except TransitionError:
                    pass
            return None
        if isinstance(event, _Exited):
            child = self._children[event.name]
            if event.incarnation != child.incarnation or child.abandoned:
                return None
            child.exception = event.exception
            if event.stopped:
                engine.on_stopped(event.name, now)
                return None
            self._log_exit(event)
            decision = engine.on_exit(event.name, event.exit, now, error=event.error)
            self._report(decision)
            if decision.give_up is not None:
                self._culprit = event.exception
            return decision
        assert isinstance(event, _Command)
        assert event.name is not None
        _log.info(f"operator: {event.action}", service=event.name)
        try:
            if event.action == "stop":
                return engine.on_stop_requested(event.name)
            if event.action == "start":
                return engine.on_start_requested(event.name, now)
            decision = engine.on_stop_requested(event.name)  # restart: stop, then start once stopped
            engine.on_start_requested(event.name, now)
        except TransitionError as exc:  # the supervisor is stopping: nothing starts any more
            _log.warning(f"operator: {event.action} refused", service=event.name, reason=str(exc))
            return None
        return decision

    def _log_exit(self, event: _Exited) -> None:
        if event.exit is Exit.NORMAL:
            _log.info("service exited", service=event.name, exit=event.exit.value)
            return
        exception = event.exception
        if exception is not None and event.exit is Exit.ERROR:
            exception = unwrap(exception)
        if isinstance(exception, IsolatedServiceFailed):
            # Its process logged the exception with its own traceback (relayed); ours would show only
            # the supervisor's side of the pipe.
            _log.error("service exited", service=event.name, exit=event.exit.value, error=event.error)
        elif exception is not None and event.exit is Exit.ERROR:
            _log.error(
                "service failed",
                service=event.name,
                exit=event.exit.value,
                error=event.error,
                exc_info=exception,
            )
        else:
            _log.error("service exited", service=event.name, exit=event.exit.value, error=event.error)

    def _report(self, decision: Decision) -> None:
        if decision.give_up is not None:
            return
        if decision.failed:
            rows = {r.name: r for r in self._engine.status()}
            groups = {g.name: g for g in self._engine.group_status()}
            for name in decision.failed:
                row = rows.get(name)
                reason = row.reason if row is not None else groups[name].reason
                revive = row.revive_at if row is not None else groups[name].revive_at
                _log.error(
                    "service failed for good" if row is not None else "group failed for good",
                    service=name,
                    reason=reason,
                    revive_in=None if revive is None else round(revive - self._clock(), 3),
                )
        if decision.start:
            _log.info("restart scheduled", services=list(decision.start), delay=round(decision.delay, 3))

    async def _stop_everything(self) -> None:
        """Stop whatever still runs, in reverse order, and let the engine know (shielded: also when the
        supervisor's own task was cancelled)."""
        if not self._engine.closed:
            self._begin_stop()
        while True:
            self._pull()
            if not self._any_running():
                break
            event = await self._receive.receive()
            if isinstance(event, _Command):
                continue  # nothing starts any more
            self._handle(event)
        self._stopped_all.set()
        while True:  # answer what is left, for a truthful status table
            try:
                event = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if not isinstance(event, _Command):
                self._handle(event)

    # -- one child -----------------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        assert self._nursery is not None
        child = self._children[name]
        child.incarnation += 1
        child.done = trio.Event()
        child.stopping = False
        child.overdue = False
        child.cancel_reason = None
        child.cancel_error = None
        child.ready_at = None
        child.exception = None
        _log.info("service starting", service=name)
        self._nursery.start_soon(self._incarnation, child, name=f"{TASK_PREFIX}{name}")

    async def _incarnation(self, child: _Child) -> None:
        """One run of a service, in-process or isolated: the start timeout, readiness, the watchdog, and the
        report of how it ended are the same for both; only the runner that starts it differs."""
        spec = child.spec
        incarnation = child.incarnation
        child.root_task = trio.lowlevel.current_task()
        runner = self._run_isolated if spec.isolated else self._run_in_process
        exit, error, exception = Exit.NORMAL, None, None
        # Shielded: cancelling the supervisor does not reach services directly; the supervisor stops them
        # itself, in reverse start order, each within its stop timeout.
        scope = trio.CancelScope(shield=True)
        child.scope = scope
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    with trio.CancelScope() as start_scope:
                        timer = trio.CancelScope()
                        nursery.start_soon(self._start_timer, child, timer, start_scope)
                        try:
                            await nursery.start(runner, child, nursery.cancel_scope)
                        finally:
                            timer.cancel()
                    if start_scope.cancelled_caught:
                        child.cancel_reason = Exit.START_TIMEOUT
                        nursery.cancel_scope.cancel()
                    else:
                        child.ready_at = child.last_heartbeat = self._clock()
                        _log.info("service ready", service=spec.name)
                        self._send.send_nowait(_Ready(spec.name, incarnation))
                        if spec.watchdog is not None:
                            nursery.start_soon(self._watchdog, child, spec.watchdog, nursery.cancel_scope)
        except BaseException as exc:
            # Whatever the service raised is its own failure: SystemExit, KeyboardInterrupt and other base
            # exceptions too (the supervisor handles signals itself). Only a cancellation from outside the
            # shielded scope -- which cannot happen while it is shielded -- goes on up.
            if _only_cancellations(exc):
                raise
            exit, error, exception = Exit.ERROR, describe_failure(exc), unwrap(exc)
        finally:
            child.done.set()
        if child.cancel_reason is Exit.START_TIMEOUT:
            error = f"not ready within its start timeout of {spec.start_timeout:g} s"
            exit = Exit.START_TIMEOUT
        elif child.cancel_reason is Exit.WATCHDOG:
            exit, error = Exit.WATCHDOG, f"no heartbeat for {spec.watchdog:g} s"
        elif child.cancel_reason is Exit.BLOCKED:
            exit, error = Exit.BLOCKED, child.cancel_error
        elif scope.cancelled_caught and not child.stopping:
            exit = Exit.CANCELLED
        self._send.send_nowait(
            _Exited(spec.name, incarnation, exit, error, stopped=child.stopping, exception=exception)
        )

    def _heartbeat(self, child: _Child) -> Callable[[], None]:
        def heartbeat() -> None:
            child.last_heartbeat = self._clock()

        return heartbeat

    def _context(self, child: _Child, bus: Any) -> ServiceContext:
        spec = child.spec
        return ServiceContext(
            name=spec.name,
            bus=bus,
            log=service_logger(spec.name),
            state_dir=(self._state_dir or Path(".")) / spec.name,
            heartbeat=self._heartbeat(child),
        )

    async def _run_in_process(
        self, child: _Child, done: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run the service in a task of this process, on a bus client of its own."""
        spec = child.spec
        async with self._service_handle(spec) as handle, trio.open_nursery() as nursery:
            ctx = self._context(child, handle)
            service = spec.service_class(spec.config)
            # Over the socket, "ready" waits until the broker has handled what the service sent before
            # it (its subscriptions are in place), as an isolated service's readiness does.
            barrier = handle.flush if self._service_bus == "socket" else None
            status = _StartedFlag(task_status, barrier, nursery)
            await service.run(ctx, task_status=status)
            if not status.called:
                status.started()  # returned without saying it was ready: it ran to completion
            done.cancel()  # ends the watchdog with the service

    @asynccontextmanager
    async def _service_handle(self, spec: ServiceSpec) -> AsyncIterator[BusHandle]:
        """The bus handle of a service that is not isolated (see ``service_bus``), closed when it ends."""
        if self._service_bus == "socket":
            assert self._socket_path is not None
            async with connect_unix(self._socket_path, spec.name, permissions=spec.permissions) as remote:
                yield remote
            return
        client = self.bus.client(spec.name, spec.permissions)
        try:
            yield client
        finally:
            client.close()

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

    async def _start_timer(
        self, child: _Child, timer: trio.CancelScope, start_scope: trio.CancelScope
    ) -> None:
        """Cancel ``start_scope`` once the service has had ``start_timeout`` seconds to start -- not
        counting time the event loop spent blocked by others."""
        watch = self._loop_watch
        begun = self._clock()
        with timer:
            while True:
                excused = watch.blocked_since(begun, child.root_task) if watch is not None else 0.0
                deadline = begun + child.spec.start_timeout + excused
                if self._clock() >= deadline:
                    start_scope.cancel()
                    return
                await trio.sleep_until(deadline)

    async def _watchdog(self, child: _Child, period: float, scope: trio.CancelScope) -> None:
        watch = self._loop_watch
        while True:
            since = child.last_heartbeat
            # Time the event loop spent blocked by someone else does not count against this service.
            excused = watch.blocked_since(since, child.root_task) if watch is not None else 0.0
            deadline = since + period + excused
            if self._clock() >= deadline:
                _log.error("watchdog: no heartbeat", service=child.spec.name, period=period)
                child.cancel_reason = Exit.WATCHDOG
                scope.cancel()
                return
            await trio.sleep_until(deadline)

    async def _report_undeclared(self, bus: Bus, grace: float) -> None:
        """Log, once each, subscriptions to exact names nobody declared within ``grace`` seconds: most
        often a typo, which would otherwise wait in silence for ever."""
        reported: set[tuple[str, str]] = set()
        while True:
            await trio.sleep(grace / 2)
            now = bus.clock()
            current: set[tuple[str, str]] = set()
            for found in bus.undeclared_subscriptions():
                key = (found.client, found.name)
                current.add(key)
                if key in reported or now - found.since < grace:
                    continue
                reported.add(key)
                hint = f"; did you mean {found.closest[0]!r}?" if found.closest else ""
                who = {"service" if found.client in self._children else "client": found.client}
                _log.warning(
                    f"subscribed to a topic nobody has declared{hint}",
                    **who,
                    topic=found.name,
                    waiting=round(now - found.since, 1),
                    closest=list(found.closest),
                )
            reported &= (
                current  # a subscription that ended, or whose topic came: report it again if it recurs
            )

    def _service_of(self, task: trio.lowlevel.Task) -> str | None:
        """The service a task belongs to (for the loop watch's log), or None. Reads only task names, so it
        is safe from the watch thread."""
        current: trio.lowlevel.Task | None = task
        while current is not None:
            if current.name.startswith(TASK_PREFIX):
                return current.name[len(TASK_PREFIX) :]
            nursery = current.parent_nursery
            current = None if nursery is None else nursery.parent_task
        return None

    def _on_blocked(self, task: trio.lowlevel.Task | None, seconds: float, over: float | None = None) -> None:
        """From the loop watch, in the event loop once it runs again: ``task`` blocked it ``seconds`` (in
        one step, or in steps within ``over`` seconds)."""
        for child in self._children.values():
            if (
                child.running
                and task is not None
                and child.root_task is not None
                and below(task, child.root_task)
            ):
                self._send.send_nowait(_Blocked(child.spec.name, child.incarnation, seconds, over))
                return

    def _blocked(self, event: _Blocked) -> None:
        child = self._children[event.name]
        if event.incarnation != child.incarnation or not child.running or child.stopping:
            return
        if child.scope is None or child.cancel_reason is not None:
            return
        if child.ready_at is None:  # still starting: its start timeout bounds that
            _log.warning(
                "service blocked the event loop while starting", service=event.name, seconds=event.seconds
            )
            return
        child.cancel_reason = Exit.BLOCKED
        if event.over is None:
            child.cancel_error = f"blocked the event loop for {event.seconds:.1f} s"
        else:
            child.cancel_error = f"held the event loop {event.seconds:.1f} s of {event.over:g} s"
        _log.error(
            "service blocked the event loop; restarting it",
            service=event.name,
            seconds=round(event.seconds, 3),
            within=event.over,
        )
        child.scope.cancel()

    async def _stop(self, name: str) -> None:
        child = self._children[name]
        if not child.running or child.scope is None:
            return  # it ended on its own meanwhile: its exit report, on its way, finishes the stop
        child.stopping = True
        _log.info("service stopping", service=name)
        child.scope.cancel()
        grace = _ISOLATED_STOP_GRACE if child.spec.isolated else 0.0
        with trio.move_on_after(child.spec.stop_timeout + grace):
            await child.done.wait()
        if child.done.is_set():
            _log.info("service stopped", service=name)
            return
        child.overdue = True
        _log.error(
            "service did not stop within its stop timeout", service=name, stop_timeout=child.spec.stop_timeout
        )
        # Wait on, unless everything is stopping: then go on without it. (An in-process task cannot be
        # killed: it is left behind, and ``vwos run`` exits the process once all else has stopped.)
        incarnation = child.incarnation
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when, child.done, nursery.cancel_scope)
            nursery.start_soon(_cancel_when, self._closing, nursery.cancel_scope)
        if not child.done.is_set() and child.incarnation == incarnation:
            _log.error("service left behind: it does not stop when cancelled", service=name)
            self._send.send_nowait(_Abandoned(name, incarnation))


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class _StartedFlag:
    """Wraps a task status to learn whether the service called ``started()``; with a ``barrier``, the
    supervisor learns it once the barrier (the bus handle's `flush`) has passed."""

    def __init__(
        self,
        inner: trio.TaskStatus[None],
        barrier: Callable[[], Awaitable[None]] | None = None,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._inner = inner
        self._barrier = barrier
        self._nursery = nursery
        self.called = False

    def started(self, value: None = None) -> None:
        if self.called:
            raise RuntimeError("called 'started' twice on the same task status")
        self.called = True
        if self._barrier is None or self._nursery is None:
            self._inner.started()
        else:
            self._nursery.start_soon(self._report, self._barrier)

    async def _report(self, barrier: Callable[[], Awaitable[None]]) -> None:
        try:
            await barrier()
        except (BusError, trio.ClosedResourceError):
            pass  # the connection is gone: the service will fail on its own; ready is still its to say
        self._inner.started()
