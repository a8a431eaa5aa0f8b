"""The supervisor's restart policy, as pure logic: no trio, no I/O, no clock.

This is the "sans-IO" half of the supervisor (the h11 habit). A :class:`RestartEngine` is told what happened
to the children -- each call carries the current time as a plain float ``now`` -- and answers with what to
do, as data. A thin trio driver does the doing. The semantics are Erlang/OTP's supervisor, with systemd's
backoff and operator stop/start on top.

Restart types (:class:`Restart`)
    ``PERMANENT`` children are always restarted, ``TRANSIENT`` ones only after an abnormal exit,
    ``TEMPORARY`` ones never.

Exits (:class:`Exit`)
    ``NORMAL`` (``run`` returned) is the only normal exit of a running child. ``ERROR``, ``CANCELLED``,
    ``START_TIMEOUT`` and ``WATCHDOG`` are abnormal. ``CANCELLED`` counts as abnormal: a service is never
    cancelled except by the supervisor stopping it, and such a stop is reported as ``STOPPED`` (or through
    :meth:`RestartEngine.on_stopped`), so a cancellation from anywhere else is a fault. ``STOPPED`` -- a
    stop the supervisor or the operator asked for -- never leads to a restart and never counts toward the
    restart intensity.

Strategies (:class:`Strategy`)
    ``ONE_FOR_ONE`` restarts only the child that ended. ``ONE_FOR_ALL`` stops all other children (in
    reverse start order) and restarts all of them in start order. ``REST_FOR_ONE`` does that for the child
    and the children after it in start order. As in OTP, a ``TEMPORARY`` sibling stopped as collateral is
    not restarted (it ends up ``EXITED``), a ``TRANSIENT`` one is; and, as in OTP, a group restart also
    starts again a ``TRANSIENT`` sibling that had finished normally before. Unlike OTP, a child the operator
    stopped stays stopped through group restarts (systemd's ``systemctl stop`` semantics): an operator's
    stop is only undone by an operator's start.

Starting order
    Children are started one at a time in start order, each once the one before it in the same batch is
    ready (``nursery.start``/``READY=1``). A batch is the initial start, or the children a restart
    decision puts back; a batch also waits until every child it stops has finished stopping. A child that
    fails while its batch is starting holds the rest of the batch back until it is ready (it is being
    restarted under the policy) or has ended for good.

Restart intensity
    At most ``intensity`` restarts within any ``period`` seconds, counted supervisor-wide (as in OTP, a
    group restart counts once). A restart is counted at the time of the exit that asked for it; restarts
    ``period`` seconds apart or less fall in one window (OTP keeps restarts with ``t >= now - period``).
    One restart more escalates: the decision's ``give_up`` carries the reason, every child is to be
    stopped, and the engine is closed. ``intensity=0`` escalates on the first restart. The default is 3
    restarts per 5 s (OTP's is 1 per 5 s, which is harsh for services that talk to hardware).

Backoff
    Before a restart the child waits ``min(max_delay, initial * multiplier ** (n - 1))``, jittered by up
    to ``±jitter`` of itself, where ``n`` counts the child's consecutive failures. For backoff, any exit
    that leads to a restart is a failure -- a ``PERMANENT`` child that returns was meant to run forever.
    The count resets when a child ends (exit or stop) after having been ready for at least
    ``reset_after`` seconds (default 60 s), and when the operator starts it. In a group restart the whole
    batch waits for the delay of the child that failed; its siblings' counts are untouched.

How a driver uses it
    1. ``engine.start_all(now)`` once.
    2. In a loop: start every name ``engine.start_due(now)`` returns (the engine counts it as
       ``STARTING`` from then on, so a name is never handed out twice); then wait for the next event, or
       until ``engine.next_deadline()`` if that is not None.
    3. Report each child's readiness with ``on_ready(name, now)``, and how each run ended with exactly one
       of ``on_exit(name, exit, now, error)`` (it ended on its own) or ``on_stopped(name, now)`` (it ended
       because the driver stopped it). An ``on_exit`` for a child that is being stopped counts as its stop.
    4. Carry out every :class:`Decision`: stop exactly the children in ``decision.stop``, one after
       another in that order; if ``decision.give_up`` is set, stop them and then fail with that reason.
    5. Operator commands go through ``on_stop_requested(name)`` and ``on_start_requested(name, now)``
       (a restart is the two in a row); shutdown through ``stop_all()``, whose decision lists what to stop.

    After every call, ask ``start_due`` again: readiness, finished stops and elapsed backoffs are what let
    waiting children go. Starts are pulled rather than listed in decisions with a delay each, because a
    later failure can change a pending restart (a one_for_all restart absorbs a one_for_one backoff, a
    child fails while its batch is starting); the engine keeps one schedule, the driver keeps none.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "ChildStatus",
    "Decision",
    "Exit",
    "Restart",
    "RestartEngine",
    "State",
    "Strategy",
    "SupervisorPolicy",
    "TransitionError",
]


class Restart(enum.Enum):
    """When a child that ended is restarted."""

    #: Always.
    PERMANENT = "permanent"
    #: Only after an abnormal exit.
    TRANSIENT = "transient"
    #: Never.
    TEMPORARY = "temporary"


class Exit(enum.Enum):
    """How a child's run ended."""

    #: ``run`` returned.
    NORMAL = "normal"
    #: ``run`` raised.
    ERROR = "error"
    #: The child's task was cancelled by something other than the supervisor stopping it.
    CANCELLED = "cancelled"
    #: The child did not become ready in time (supervisor-internal).
    START_TIMEOUT = "start_timeout"
    #: The child's heartbeat stopped (supervisor-internal).
    WATCHDOG = "watchdog"
    #: The supervisor or the operator stopped it. Never restarted, never counted.
    STOPPED = "stopped"

    @property
    def abnormal(self) -> bool:
        """Whether this exit is a fault: everything but ``NORMAL`` and ``STOPPED``."""
        return self not in (Exit.NORMAL, Exit.STOPPED)


class Strategy(enum.Enum):
    """Which children a restart takes along."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class State(enum.Enum):
    """Where a child is, as shown in the status table."""

    #: Not running: not started yet, stopped by the operator, or stopped at shutdown.
    STOPPED = "stopped"
    #: Started, not ready yet.
    STARTING = "starting"
    #: Ready.
    RUNNING = "running"
    #: Being stopped by the driver.
    STOPPING = "stopping"
    #: Waiting to be restarted (its backoff, or its turn in a group restart).
    BACKOFF = "backoff"
    #: Ended for good: a temporary child, or a transient one that finished normally.
    EXITED = "exited"
    #: The supervisor gave up because of this child.
    FAILED = "failed"


class TransitionError(RuntimeError):
    """The driver reported something that cannot happen in the child's current state."""


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _check_multiplier(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 1:
        raise ValueError(f"multiplier must be >= 1, got {value!r}")


def _check_jitter(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"jitter must be between 0 and 1, got {value!r}")


@attrs.frozen
class BackoffPolicy:
    """How long a child waits before a restart.

    The n-th consecutive failure waits ``min(max_delay, initial * multiplier ** (n - 1))``, jittered by up
    to ``±jitter`` of itself. The count resets once the child has been up (ready) for ``reset_after``
    seconds.
    """

    initial: float = attrs.field(
        default=0.1, validator=_non_negative, metadata={"help": "Seconds before the first restart."}
    )
    multiplier: float = attrs.field(
        default=2.0,
        validator=_check_multiplier,
        metadata={"help": "Each consecutive restart waits this many times longer (>= 1)."},
    )
    max_delay: float = attrs.field(
        default=30.0, validator=_non_negative, metadata={"help": "The longest wait, in seconds."}
    )
    jitter: float = attrs.field(
        default=0.1,
        validator=_check_jitter,
        metadata={"help": "Each wait varies randomly by up to this fraction of itself (0 to 1)."},
    )
    reset_after: float = attrs.field(
        default=60.0,
        validator=_non_negative,
        metadata={"help": "Seconds up (ready) after which the count of consecutive restarts starts over."},
    )

    def delay(self, failures: int, rand: float = 0.5) -> float:
        """The delay before the restart that follows the ``failures``-th consecutive failure.

        ``rand`` is a uniform random value in [0, 1] (``random.random()``); 0.5 means no jitter, 0 the
        shortest delay, 1 the longest. The result lies in ``[0, max_delay * (1 + jitter)]``.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures!r}")
        if not 0 <= rand <= 1:
            raise ValueError(f"rand must be between 0 and 1, got {rand!r}")
        if self.initial == 0:
            base = 0.0
        else:
            try:
                base = min(self.max_delay, self.initial * self.multiplier ** (failures - 1))
            except OverflowError:
                base = self.max_delay
        return base * (1 + self.jitter * (2 * rand - 1))


def _check_name(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a child's name must be a non-empty string, got {value!r}")


@attrs.frozen
class ChildSpec:
    """A supervised child, as the restart policy sees it."""

    name: str = attrs.field(validator=_check_name)
    restart: Restart = attrs.field(default=Restart.PERMANENT, validator=attrs.validators.instance_of(Restart))
    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy, validator=attrs.validators.instance_of(BackoffPolicy)
    )


def _check_intensity(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"intensity must be an integer >= 0, got {value!r}")


def _check_period(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"period must be a finite number of seconds > 0, got {value!r}")


@attrs.frozen
class SupervisorPolicy:
    """The supervisor's strategy and restart intensity: at most ``intensity`` restarts per ``period`` s."""

    strategy: Strategy = attrs.field(
        default=Strategy.ONE_FOR_ONE, validator=attrs.validators.instance_of(Strategy)
    )
    intensity: int = attrs.field(default=3, validator=_check_intensity)
    period: float = attrs.field(default=5.0, validator=_check_period)


@attrs.frozen
class Decision:
    """What the driver is to do after an event, as data.

    ``stop``
        Children to stop now, one after another in this order (reverse start order). Report each with
        :meth:`RestartEngine.on_stopped` (or ``on_exit`` if it ended on its own meanwhile).
    ``start``
        Children this decision (re)schedules, in start order. Informational: the driver starts children
        when :meth:`RestartEngine.start_due` releases them, which honours ``delay``, the start order,
        readiness and the stops above.
    ``delay``
        The backoff (seconds) before the first of ``start`` may start.
    ``finished``
        Children that ended for good because of this event (state ``EXITED`` once stopped).
    ``give_up``
        If set, the supervisor escalates: stop ``stop``, then fail with this reason. Nothing is restarted.
    """

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    delay: float = 0.0
    finished: tuple[str, ...] = ()
    give_up: str | None = None


@attrs.frozen
class ChildStatus:
    """One row of the supervisor's status table (a snapshot)."""

    name: str
    restart: Restart
    state: State
    #: Restarts the supervisor made on its own (operator starts are not counted).
    restarts: int
    #: Failures since the child last stayed up ``reset_after`` seconds; drives the backoff.
    consecutive_failures: int
    last_exit: Exit | None
    last_error: str | None
    started_at: float | None
    ready_at: float | None
    ended_at: float | None
    #: When a waiting child may start (it may also wait for its turn); None when not waiting to start.
    start_at: float | None
    #: The operator stopped it: it is not restarted until the operator starts it.
    held: bool


@attrs.define
class _Child:
    spec: ChildSpec
    index: int
    state: State = State.STOPPED
    #: The start batch the child belongs to while it waits, starts or is stopped for a restart.
    group: int | None = None
    #: The state a STOPPING child goes to once stopped (BACKOFF if it is to be restarted).
    after_stop: State = State.STOPPED
    not_before: float = 0.0
    held: bool = False
    #: Its next start is a restart (counted in ``restarts``), not a first or operator start.
    restart_pending: bool = False
    restarts: int = 0
    consecutive_failures: int = 0
    last_exit: Exit | None = None
    last_error: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def waiting(self) -> bool:
        """Waiting to be started (by ``start_due``)."""
        return self.group is not None and self.state in (State.STOPPED, State.BACKOFF)


_ACTIVE = (State.STARTING, State.RUNNING)


def _seconds(value: float) -> str:
    return f"{float(round(value, 3))} s"


def _describe_exit(exit: Exit, error: str | None) -> str:
    text = {
        Exit.NORMAL: "returned",
        Exit.ERROR: "failed",
        Exit.CANCELLED: "was cancelled",
        Exit.START_TIMEOUT: "did not become ready in time",
        Exit.WATCHDOG: "missed its watchdog",
        Exit.STOPPED: "was stopped",
    }[exit]
    return f"{text}: {error}" if error else text


class RestartEngine:
    """The restart policy of one supervisor: feed it events, carry out its decisions.

    ``children`` are in start order (dependencies already sorted). ``rng`` draws the backoff jitter; pass
    a seeded ``random.Random`` for reproducible delays. See the module docstring for the call sequence.
    """

    def __init__(
        self,
        policy: SupervisorPolicy,
        children: Iterable[ChildSpec],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._children: dict[str, _Child] = {}
        for index, spec in enumerate(children):
            if spec.name in self._children:
                raise ValueError(f"duplicate child name {spec.name!r}")
            self._children[spec.name] = _Child(spec, index)
        self._order: tuple[_Child, ...] = tuple(self._children.values())
        self._rng = rng if rng is not None else random.Random()
        self._restarts: deque[float] = deque()
        self._next_group = 0
        self._started = False
        self._closed = False
        self._give_up: str | None = None

    # -- read-only views ---------------------------------------------------------------------------------

    @property
    def policy(self) -> SupervisorPolicy:
        return self._policy

    @property
    def specs(self) -> tuple[ChildSpec, ...]:
        """The children, in start order."""
        return tuple(child.spec for child in self._order)

    @property
    def closed(self) -> bool:
        """True after :meth:`stop_all` or an escalation: nothing is started any more."""
        return self._closed

    @property
    def given_up(self) -> str | None:
        """The escalation reason, once the engine has given up."""
        return self._give_up

    def status(self) -> list[ChildStatus]:
        """A snapshot of every child, in start order."""
        return [
            ChildStatus(
                name=child.name,
                restart=child.spec.restart,
                state=child.state,
                restarts=child.restarts,
                consecutive_failures=child.consecutive_failures,
                last_exit=child.last_exit,
                last_error=child.last_error,
                started_at=child.started_at,
                ready_at=child.ready_at,
                ended_at=child.ended_at,
                start_at=child.not_before if child.waiting else None,
                held=child.held,
            )
            for child in self._order
        ]

    # -- starting --------------------------------------------------------------------------------------

    def start_all(self, now: float) -> Decision:
        """Schedule the initial start of every child (except ones the operator stopped), in start order."""
        if self._started:
            raise TransitionError("start_all() was already called")
        self._check_open()
        self._started = True
        group = self._new_group()
        names = []
        for child in self._order:
            if child.held or child.state is not State.STOPPED or child.group is not None:
                continue
            child.group = group
            child.not_before = now
            names.append(child.name)
        return Decision(start=tuple(names))

    def start_due(self, now: float) -> tuple[str, ...]:
        """The children to start now, in start order; the engine counts them as ``STARTING`` from now on.

        Start each (for instance with ``nursery.start_soon``) and report ``on_ready`` or ``on_exit``.
        """
        if self._closed:
            return ()
        due = [first for first in self._batch_heads() if first.not_before <= now]
        for child in due:
            child.state = State.STARTING
            child.started_at = now
            child.ready_at = None
            if child.restart_pending:
                child.restarts += 1
                child.restart_pending = False
        return tuple(child.name for child in due)

    def next_deadline(self) -> float | None:
        """When :meth:`start_due` will next have something to start if nothing else happens, or None."""
        if self._closed:
            return None
        times = [first.not_before for first in self._batch_heads()]
        return min(times, default=None)

    def _batch_heads(self) -> list[_Child]:
        """The first child of every batch that is free to start but for its backoff."""
        batches: dict[int, list[_Child]] = {}
        for child in self._order:
            if child.group is not None:
                batches.setdefault(child.group, []).append(child)
        heads = []
        for members in batches.values():
            if any(member.state is State.STOPPING for member in members):
                continue
            if members[0].waiting:
                heads.append(members[0])
        heads.sort(key=lambda child: child.index)
        return heads

    # -- events from the driver --------------------------------------------------------------------------

    def on_ready(self, name: str, now: float) -> None:
        """The child called ``task_status.started()``."""
        child = self._child(name)
        if child.state is State.STOPPING:
            return  # it was asked to stop while starting; the stop wins
        if child.state is not State.STARTING:
            raise TransitionError(f"{name!r} cannot become ready while {child.state.value}")
        child.state = State.RUNNING
        child.ready_at = now
        child.group = None

    def on_exit(self, name: str, exit: Exit, now: float, error: str | None = None) -> Decision:
        """The child's run ended on its own (not because the driver stopped it); ``error`` describes why.

        An exit of a child that is being stopped counts as that stop finishing.
        """
        child = self._child(name)
        if child.state is State.STOPPING:
            self._finish_stop(child, now, exit, error)
            return Decision()
        if child.state not in _ACTIVE:
            raise TransitionError(f"{name!r} cannot exit while {child.state.value}")
        child.last_exit = exit
        child.last_error = error
        child.ended_at = now
        self._note_uptime(child, now)
        if exit is Exit.STOPPED:
            # A stop the engine did not ask for (it asked for none: the child is not STOPPING) can only be
            # the operator's, reported after the fact: treat it like one.
            child.state = State.STOPPED
            child.group = None
            child.held = True
            return Decision()
        restart = child.spec.restart is Restart.PERMANENT or (
            child.spec.restart is Restart.TRANSIENT and exit.abnormal
        )
        if restart or exit.abnormal:
            child.consecutive_failures += 1
        if not restart:
            child.state = State.EXITED
            child.group = None
            return Decision(finished=(name,))
        too_many = self._add_restart(now)
        if too_many is not None:
            return self._escalate(child, f"{name!r} {_describe_exit(exit, error)}; {too_many}")
        delay = child.spec.backoff.delay(child.consecutive_failures, self._rng.random())
        return self._restart(child, now, delay)

    def on_stopped(self, name: str, now: float) -> None:
        """A child the driver was asked to stop has finished stopping."""
        child = self._child(name)
        if child.state is not State.STOPPING:
            raise TransitionError(f"{name!r} cannot finish stopping while {child.state.value}")
        self._finish_stop(child, now, Exit.STOPPED, None)

    # -- operator commands -----------------------------------------------------------------------------

    def on_stop_requested(self, name: str) -> Decision:
        """The operator stops a child: it is stopped and stays stopped, whatever its restart type."""
        child = self._child(name)
        child.held = True
        return Decision(stop=(name,)) if self._stop_child(child) else Decision()

    def _stop_child(self, child: _Child) -> bool:
        """Make ``child`` end up stopped: a running one stops, one already stopping will not restart, a
        waiting one is stopped at once. Returns whether the driver must stop it."""
        if child.state in _ACTIVE:
            child.state = State.STOPPING
            child.after_stop = State.STOPPED
            child.group = None
            return True
        if child.state is State.STOPPING:
            if child.after_stop is State.BACKOFF:
                child.after_stop = State.STOPPED
            child.group = None
        elif child.waiting:
            child.state = State.STOPPED
            child.group = None
        return False

    def on_start_requested(self, name: str, now: float) -> Decision:
        """The operator starts a child: at once (skipping any backoff), with its failure count reset."""
        self._check_open()
        child = self._child(name)
        child.held = False
        if child.state in _ACTIVE:
            return Decision()
        child.consecutive_failures = 0
        child.restart_pending = False
        child.not_before = now
        if child.group is None:
            child.group = self._new_group()
        if child.state is State.STOPPING:
            child.after_stop = State.STOPPED
        elif not child.waiting:
            child.state = State.STOPPED
        return Decision(start=(name,))

    def stop_all(self) -> Decision:
        """Shut down: stop every running child in reverse start order; nothing is started any more."""
        if self._closed:
            return Decision()
        self._closed = True
        return Decision(stop=self._stop_everything(except_=None))

    # -- internals ---------------------------------------------------------------------------------------

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise ValueError(f"unknown child {name!r}") from None

    def _check_open(self) -> None:
        if self._give_up is not None:
            raise TransitionError(f"the supervisor gave up: {self._give_up}")
        if self._closed:
            raise TransitionError("the supervisor is shutting down")

    def _new_group(self) -> int:
        self._next_group += 1
        return self._next_group

    def _note_uptime(self, child: _Child, now: float) -> None:
        if child.ready_at is not None and now - child.ready_at >= child.spec.backoff.reset_after:
            child.consecutive_failures = 0

    def _finish_stop(self, child: _Child, now: float, exit: Exit, error: str | None) -> None:
        child.last_exit = exit
        child.last_error = error
        child.ended_at = now
        self._note_uptime(child, now)
        child.state = child.after_stop
        child.after_stop = State.STOPPED
        if not child.waiting:
            child.group = None

    def _add_restart(self, now: float) -> str | None:
        """Count a restart at ``now``; the message if it is one too many."""
        policy = self._policy
        while self._restarts and self._restarts[0] < now - policy.period:
            self._restarts.popleft()
        self._restarts.append(now)
        count = len(self._restarts)
        if count <= policy.intensity:
            return None
        plural = "restart" if count == 1 else "restarts"
        return (
            f"too many restarts: {count} {plural} in {_seconds(now - self._restarts[0])} exceeds intensity "
            f"{policy.intensity} per {_seconds(policy.period)}"
        )

    def _members(self, child: _Child) -> Sequence[_Child]:
        strategy = self._policy.strategy
        if strategy is Strategy.ONE_FOR_ALL:
            return self._order
        if strategy is Strategy.REST_FOR_ONE:
            return self._order[child.index :]
        return (child,)

    def _restart(self, failed: _Child, now: float, delay: float) -> Decision:
        """Put ``failed`` back after ``delay``, with the siblings its strategy takes along."""
        joined: list[tuple[_Child, float | None]] = []  # member, and its earlier start time if it had one
        old_groups: set[int] = set()
        stop: list[str] = []
        finished: list[str] = []
        for member in self._members(failed):
            earlier: float | None = None
            if member is failed:
                member.state = State.BACKOFF
                member.restart_pending = True
            elif member.held:
                continue
            elif member.state in _ACTIVE:
                member.state = State.STOPPING
                stop.append(member.name)
                if member.spec.restart is Restart.TEMPORARY:
                    member.after_stop = State.EXITED  # OTP: a temporary sibling is not restarted
                    finished.append(member.name)
                else:
                    member.after_stop = State.BACKOFF
                    member.restart_pending = True
            elif member.waiting or member.state is State.STOPPING:
                earlier = member.not_before  # already waiting, or already on its way out: joins the batch
            elif member.state is State.EXITED and member.spec.restart is Restart.TRANSIENT:
                member.state = State.BACKOFF  # OTP: a group restart starts a finished transient again
                member.restart_pending = True
            else:
                continue  # a temporary that is gone for good
            if member.group is not None:
                old_groups.add(member.group)
            joined.append((member, earlier))
        # The new batch absorbs the batches its members were in, so their order keeps holding.
        group = self._new_group()
        for child in self._order:
            if child.group is not None and child.group in old_groups:
                child.group = group
        start_at = now + delay
        start: list[str] = []
        for member, earlier in joined:
            member.group = group
            if member.state is State.STOPPING and member.after_stop is State.EXITED:
                continue
            member.not_before = start_at if earlier is None else max(earlier, start_at)
            start.append(member.name)
        return Decision(stop=tuple(reversed(stop)), start=tuple(start), delay=delay, finished=tuple(finished))

    def _escalate(self, failed: _Child, reason: str) -> Decision:
        failed.state = State.FAILED
        failed.group = None
        self._give_up = reason
        self._closed = True
        return Decision(stop=self._stop_everything(except_=failed), give_up=reason)

    def _stop_everything(self, except_: _Child | None) -> tuple[str, ...]:
        stop = []
        for child in reversed(self._order):
            if child is except_:
                continue
            if self._stop_child(child):
                stop.append(child.name)
            child.group = None
        return tuple(stop)
