"""The supervisor's restart policy, as pure logic: no trio, no I/O, no clock.

This is the "sans-IO" half of the supervisor (the h11 habit). A :class:`RestartEngine` is told what happened
to the services -- each call carries the current time as a plain float ``now`` -- and answers with what to
do, as data. A thin trio driver does the doing. The semantics are Erlang/OTP's supervision tree, with
systemd's start limits, ordering and backoff on top.

Units: services and groups
    The engine supervises a tree. Its leaves are **services** (:class:`ChildSpec`), the only things the
    driver runs; its inner nodes are **groups** (:class:`GroupSpec`, OTP's nested supervisors, AUTOSAR's
    function groups), and the root is the supervisor itself (:class:`SupervisorPolicy`). A service or a
    group is a *unit*; every unit but the root belongs to one group (``group=None``: the root).

Restart types (:class:`Restart`)
    ``PERMANENT`` services are always restarted, ``TRANSIENT`` ones only after an abnormal exit,
    ``TEMPORARY`` ones never.

Exits (:class:`Exit`)
    ``NORMAL`` (``run`` returned) is the only normal exit of a running service. ``ERROR``, ``CANCELLED``,
    ``START_TIMEOUT``, ``WATCHDOG`` and ``BLOCKED`` are abnormal. ``CANCELLED`` counts as abnormal: a
    service is never cancelled except by the supervisor stopping it, and such a stop is reported as
    ``STOPPED`` (or through :meth:`RestartEngine.on_stopped`), so a cancellation from anywhere else is a
    fault. ``STOPPED`` -- a stop the supervisor or the operator asked for -- never leads to a restart and
    never counts toward a restart budget.

Strategies (:class:`Strategy`), per group
    When a unit of a group is to be restarted, the group's strategy says what comes along: ``ONE_FOR_ONE``
    restarts only that unit, ``ONE_FOR_ALL`` every unit of the group, ``REST_FOR_ONE`` the unit and the
    units after it in start order. A group taken along is restarted whole. As in OTP, a ``TEMPORARY``
    service stopped as collateral is not restarted (it ends up ``EXITED``), a ``TRANSIENT`` one is, and a
    group restart also starts again a ``TRANSIENT`` service that had finished normally. A service the
    operator stopped stays stopped through restarts of its group (systemd's ``systemctl stop``).

Restart budgets and containment
    Every unit has its own budget: at most ``intensity`` restarts within any ``period`` seconds (a
    restart that takes siblings along counts once, for the unit that failed). ``intensity`` and
    ``period`` left unset on a unit are its group's, and the root's are the `SupervisorPolicy`'s. One
    restart more **exhausts** the unit:

    - a unit that is not ``critical`` becomes ``FAILED`` (systemd's start limit): it is stopped (a
      group: all its services) and stays down; everything else keeps running;
    - a ``critical`` unit's exhaustion is a failure of its group: the group is restarted whole (under
      its own group's strategy), which counts against the group's own budget, and so on up; the units
      in it, nested groups included, start again with fresh budgets; a group that exhausts its budget
      fails or escalates by the same rule;
    - when the failure reaches the root, the supervisor **gives up**: the decision's ``give_up`` carries
      the reason, every service is stopped, and the engine is closed.

    So escalation climbs only through critical units; with no groups and nothing critical, each service
    fails alone. ``intensity=0`` exhausts on the first restart. A failed unit comes back when the
    operator starts it (with a fresh budget), or on its own ``revive_after`` seconds after it failed,
    if that is set.

Start order and readiness
    ``after`` names units (services or groups) that must be ready before a unit starts; a group's
    ``after`` holds for every service in it, and a group is ready once all its services are. A service
    that ran to completion (``EXITED`` after a normal exit) counts as ready. Everything else starts at
    once, in parallel: a service that never becomes ready, or fails, holds back only the services
    ``after`` it (shown as ``WAITING``, with what they wait for). A restart batch (a unit and what its
    strategy takes along) starts only once every member it stops has finished stopping.

Stop order
    Stopping is the reverse: a service is stopped only once the services ``after`` it that are being
    stopped too have finished stopping; independent services stop in parallel. The engine hands out
    stops like starts: :meth:`RestartEngine.stop_due`.

Backoff
    Before a restart the unit waits ``min(max_delay, initial * multiplier ** (n - 1))``, jittered by up
    to ``±jitter`` of itself, where ``n`` counts the unit's consecutive failures. For backoff, any exit
    that leads to a restart is a failure -- a ``PERMANENT`` service that returns was meant to run forever.
    The count resets when a service ends (exit or stop) after having been ready for at least
    ``reset_after`` seconds (default 60 s), and when the operator starts it. In a group restart the whole
    batch waits for the delay of the unit that failed; its siblings' counts are untouched.

How a driver uses it
    1. ``engine.start_all(now)`` once.
    2. In a loop: start every service ``engine.start_due(now)`` returns, stop every service
       ``engine.stop_due()`` returns (the engine counts them as ``STARTING``/``STOPPING`` from then on, so
       a name is never handed out twice); then wait for the next event, or until
       ``engine.next_deadline()`` if that is not None.
    3. Report each service's readiness with ``on_ready(name, now)``, and how each run ended with exactly
       one of ``on_exit(name, exit, now, error)`` (it ended on its own) or ``on_stopped(name, now)`` (it
       ended because the driver stopped it). An ``on_exit`` for a service that is being stopped counts as
       its stop.
    4. Decisions (:class:`Decision`) say what an event changed; if ``decision.give_up`` is set, stop
       what ``stop_due`` hands out until nothing runs, then fail with that reason.
    5. Operator commands go through ``on_stop_requested(name)`` and ``on_start_requested(name, now)``
       (a restart is the two in a row; both take services and groups); shutdown through ``stop_all()``.

    After every call, ask ``start_due`` and ``stop_due`` again: readiness, finished stops, elapsed
    backoffs and revivals are what let waiting services go. Starts and stops are pulled rather than
    listed in decisions, because a later event can change a pending one (a one_for_all restart absorbs a
    one_for_one backoff, a service fails while its batch is starting); the engine keeps one schedule, the
    driver keeps none.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "ChildStatus",
    "Decision",
    "Exit",
    "GroupSpec",
    "GroupStatus",
    "Restart",
    "RestartEngine",
    "State",
    "Strategy",
    "SupervisorPolicy",
    "TransitionError",
    "start_order",
]


class Restart(enum.Enum):
    """When a service that ended is restarted."""

    #: Always.
    PERMANENT = "permanent"
    #: Only after an abnormal exit.
    TRANSIENT = "transient"
    #: Never.
    TEMPORARY = "temporary"


class Exit(enum.Enum):
    """How a service's run ended."""

    #: ``run`` returned.
    NORMAL = "normal"
    #: ``run`` raised.
    ERROR = "error"
    #: The service's task was cancelled by something other than the supervisor stopping it.
    CANCELLED = "cancelled"
    #: The service did not become ready in time (supervisor-internal).
    START_TIMEOUT = "start_timeout"
    #: The service's heartbeat stopped (supervisor-internal).
    WATCHDOG = "watchdog"
    #: The service blocked the event loop (supervisor-internal).
    BLOCKED = "blocked"
    #: The supervisor or the operator stopped it. Never restarted, never counted.
    STOPPED = "stopped"

    @property
    def abnormal(self) -> bool:
        """Whether this exit is a fault: everything but ``NORMAL`` and ``STOPPED``."""
        return self not in (Exit.NORMAL, Exit.STOPPED)


class Strategy(enum.Enum):
    """Which units of a group a restart takes along."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class State(enum.Enum):
    """Where a unit is, as shown in the status table."""

    #: Not running: not started yet, stopped by the operator, or stopped at shutdown.
    STOPPED = "stopped"
    #: Due to start, but held back until the units it starts after are ready.
    WAITING = "waiting"
    #: Started, not ready yet.
    STARTING = "starting"
    #: Ready.
    RUNNING = "running"
    #: Being stopped by the driver.
    STOPPING = "stopping"
    #: Waiting to be restarted (its backoff, or its turn in a group restart).
    BACKOFF = "backoff"
    #: Ended for good: a temporary service, or a transient one that finished normally.
    EXITED = "exited"
    #: Exhausted its restart budget (or is in a group that did): down until revived.
    FAILED = "failed"


class TransitionError(RuntimeError):
    """The driver reported something that cannot happen in the service's current state."""


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
    """How long a unit waits before a restart.

    The n-th consecutive failure waits ``min(max_delay, initial * multiplier ** (n - 1))``, jittered by up
    to ``±jitter`` of itself. The count resets once the unit has been up (ready) for ``reset_after``
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
        raise ValueError(f"a unit's name must be a non-empty string, got {value!r}")


def _check_intensity(_inst: object, _attribute: attrs.Attribute[Any], value: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"intensity must be an integer >= 0, got {value!r}")


def _check_period(_inst: object, _attribute: attrs.Attribute[Any], value: float | None) -> None:
    if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        raise ValueError(f"period must be a finite number of seconds > 0, got {value!r}")


def _check_revive(_inst: object, _attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and (not isinstance(value, int | float) or not value > 0 or math.isinf(value)):
        raise ValueError(f"revive_after must be a finite number of seconds > 0, got {value!r}")


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class ChildSpec:
    """A supervised service, as the restart policy sees it."""

    name: str = attrs.field(validator=_check_name)
    restart: Restart = attrs.field(default=Restart.PERMANENT, validator=attrs.validators.instance_of(Restart))
    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy, validator=attrs.validators.instance_of(BackoffPolicy)
    )
    #: Units (services or groups) that must be ready before this one starts.
    after: tuple[str, ...] = attrs.field(default=(), converter=_names, kw_only=True)
    #: The group it belongs to; None: the root.
    group: str | None = attrs.field(default=None, kw_only=True)
    #: Exhausting its budget fails its group (escalates) instead of failing only this service.
    critical: bool = attrs.field(default=False, kw_only=True)
    #: Its own restart budget; None: its group's.
    intensity: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_intensity), kw_only=True
    )
    period: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_period), kw_only=True
    )
    #: Seconds after failing that it is started again on its own; None: its group's (None: never).
    revive_after: float | None = attrs.field(default=None, validator=_check_revive, kw_only=True)


@attrs.frozen
class GroupSpec:
    """A group of units under one strategy (a nested supervisor)."""

    name: str = attrs.field(validator=_check_name)
    strategy: Strategy = attrs.field(
        default=Strategy.ONE_FOR_ONE, validator=attrs.validators.instance_of(Strategy)
    )
    #: Its restart budget, also the default of its units; None: its group's.
    intensity: int | None = attrs.field(default=None, validator=attrs.validators.optional(_check_intensity))
    period: float | None = attrs.field(default=None, validator=attrs.validators.optional(_check_period))
    #: The delay before the group is restarted whole.
    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy, validator=attrs.validators.instance_of(BackoffPolicy)
    )
    group: str | None = attrs.field(default=None, kw_only=True)
    critical: bool = attrs.field(default=False, kw_only=True)
    after: tuple[str, ...] = attrs.field(default=(), converter=_names, kw_only=True)
    #: Seconds after failing that it is started again on its own, also its units' default; None: its group's.
    revive_after: float | None = attrs.field(default=None, validator=_check_revive, kw_only=True)


@attrs.frozen
class SupervisorPolicy:
    """The root of the tree: its strategy, and the default restart budget of every unit (``intensity``
    restarts per ``period`` seconds) and revival (``revive_after``)."""

    strategy: Strategy = attrs.field(
        default=Strategy.ONE_FOR_ONE, validator=attrs.validators.instance_of(Strategy)
    )
    intensity: int = attrs.field(default=3, validator=_check_intensity)
    period: float = attrs.field(default=5.0, validator=_check_period)
    revive_after: float | None = attrs.field(default=None, validator=_check_revive, kw_only=True)


@attrs.frozen
class Decision:
    """What an event changed, as data.

    ``stop``
        Services this decision stops. Informational: the driver stops services when
        :meth:`RestartEngine.stop_due` hands them out, which honours the stop order.
    ``start``
        Services this decision (re)schedules, in start order. Informational: the driver starts services
        when :meth:`RestartEngine.start_due` releases them, which honours ``delay``, readiness and stops.
    ``delay``
        The backoff (seconds) before the first of ``start`` may start.
    ``finished``
        Services that ended for good because of this event (state ``EXITED`` once stopped).
    ``failed``
        Units (services or groups) that exhausted their budget or were failed with their group.
    ``give_up``
        If set, the supervisor escalates: stop everything, then fail with this reason.
    """

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    delay: float = 0.0
    finished: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    give_up: str | None = None


@attrs.frozen
class ChildStatus:
    """One service's row of the status table (a snapshot)."""

    name: str
    restart: Restart
    state: State
    #: Restarts the supervisor made on its own (operator starts are not counted).
    restarts: int
    #: Failures since the service last stayed up ``reset_after`` seconds; drives the backoff.
    consecutive_failures: int
    last_exit: Exit | None
    last_error: str | None
    started_at: float | None
    ready_at: float | None
    ended_at: float | None
    #: When a waiting service may start (it may also wait for its turn); None when not waiting to start.
    start_at: float | None
    #: The operator stopped it: it is not restarted until the operator starts it.
    held: bool
    #: The group it belongs to (None: the root).
    group: str | None = None
    critical: bool = False
    #: Why it is in its state, when that needs saying: what it waits for, why it failed.
    reason: str | None = None
    #: The units it waits for (state ``WAITING``).
    waiting_for: tuple[str, ...] = ()
    #: When a failed unit is revived on its own; None: only by the operator.
    revive_at: float | None = None


@attrs.frozen
class GroupStatus:
    """One group's row of the status table (a snapshot).

    Its state is derived from its services': the first of ``STOPPING``, ``STARTING``, ``BACKOFF`` and
    ``WAITING`` that one of them is in; else ``STOPPED`` if all are, ``RUNNING`` if one is (a service
    that failed alone shows in its own row), ``FAILED`` if one failed and none runs, else ``EXITED``. It
    is ``FAILED`` whatever its services' states when the group itself exhausted its budget (or is in a
    group that did): then, and only then, ``reason`` says why."""

    name: str
    group: str | None
    strategy: Strategy
    critical: bool
    state: State
    #: Times the group was restarted whole.
    restarts: int
    services: tuple[str, ...]
    reason: str | None
    revive_at: float | None


# -- the tree ----------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Unit:
    name: str
    parent: _Group | None
    critical: bool
    intensity: int
    period: float
    backoff: BackoffPolicy
    revive_after: float | None
    after: tuple[str, ...]
    #: Start-order position (a group: that of its first service).
    index: int = 0
    window: deque[float] = attrs.Factory(deque)
    consecutive_failures: int = 0
    restarts: int = 0
    failed_at: float | None = None
    reason: str | None = None
    held: bool = False


@attrs.define(eq=False)
class _Leaf(_Unit):
    spec: ChildSpec = attrs.field(kw_only=True)
    state: State = State.STOPPED
    #: The start batch the service belongs to while it waits, starts or is stopped for a restart.
    batch: int | None = None
    #: The state a STOPPING service goes to once stopped (BACKOFF if it is to be restarted).
    after_stop: State = State.STOPPED
    #: A STOPPING service the driver has been told to stop (by stop_due).
    released: bool = False
    not_before: float = 0.0
    #: Its next start is a restart (counted in ``restarts``), not a first or operator start.
    restart_pending: bool = False
    last_exit: Exit | None = None
    last_error: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    #: Its first start has been decided one way or the other (ready, ended, failed, stopped).
    settled_once: bool = False
    #: Every service it waits for (its own and its groups' ``after``, groups expanded).
    deps: tuple[_Leaf, ...] = ()
    #: Every service that waits for it.
    dependents: tuple[_Leaf, ...] = ()

    @property
    def waiting(self) -> bool:
        """Waiting to be started (by ``start_due``)."""
        return self.batch is not None and self.state in (State.STOPPED, State.BACKOFF)

    @property
    def satisfied(self) -> bool:
        """Ready, as a dependency: running, or ran to completion."""
        return self.state is State.RUNNING or (self.state is State.EXITED and self.last_exit is Exit.NORMAL)


@attrs.define(eq=False)
class _Group(_Unit):
    spec: GroupSpec | None = None
    strategy: Strategy = Strategy.ONE_FOR_ONE
    members: list[_Unit] = attrs.Factory(list)
    leaves: list[_Leaf] = attrs.Factory(list)
    failed: bool = False
    #: When all its services were last up at once (drives the group's backoff reset).
    ready_at: float | None = None


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
        Exit.BLOCKED: "blocked the event loop",
        Exit.STOPPED: "was stopped",
    }[exit]
    return f"{text}: {error}" if error else text


def start_order(after: Mapping[str, Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Order names so that each comes after all the names it lists, ties going to the earlier key.

    ``after`` maps each name (in file order) to the names it starts after; names it lists that are not keys
    are ignored. Returns the order of every name not caught in or behind a cycle, and the cycles, each as
    ``[a, b, ..., a]`` (``a`` starts after ``b`` ...), starting at its earliest name, earliest first.
    """
    index = {name: i for i, name in enumerate(after)}
    deps = {name: [d for d in dict.fromkeys(after[name]) if d in index] for name in after}
    waiting = {name: len(deps[name]) for name in after}
    dependents: dict[str, list[str]] = {name: [] for name in after}
    for name in after:
        for dep in deps[name]:
            dependents[dep].append(name)
    ready = [(index[name], name) for name in after if not deps[name]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (index[dependent], dependent))
    placed = set(order)
    left = {name: [d for d in deps[name] if d not in placed] for name in after if name not in placed}
    cycles = [_cycle_through(component[0], left, set(component)) for component in _cyclic_components(left)]
    cycles.sort(key=lambda cycle: index[cycle[0]])
    return order, cycles


def _cyclic_components(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` that contain a cycle, members in key order (Tarjan)."""
    position = {name: i for i, name in enumerate(graph)}
    number: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in number:
            continue
        # Iterative DFS: (node, index of the next edge to follow).
        work: list[tuple[str, int]] = [(root, 0)]
        number[root] = low[root] = len(number)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edge = work[-1]
            edges = graph[node]
            if edge < len(edges):
                work[-1] = (node, edge + 1)
                nxt = edges[edge]
                if nxt not in number:
                    number[nxt] = low[nxt] = len(number)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], number[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == number[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(sorted(component, key=position.__getitem__))
    return components


def _cycle_through(start: str, graph: dict[str, list[str]], members: set[str]) -> list[str]:
    """A shortest cycle from ``start`` back to it, within ``members`` (breadth first, edges in list order)."""
    parent: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for nxt in graph[node]:
            if nxt not in members:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start!r}")  # pragma: no cover -- members is a cyclic component


def service_dependencies(
    children: Sequence[ChildSpec], groups: Sequence[GroupSpec] = ()
) -> dict[str, list[str]]:
    """Every service's dependencies as services: its own ``after`` and its groups', groups expanded to
    their services. Raises ValueError for unknown names and for a unit ``after`` its own group or one
    of its own services. (The config loader reports the same with key paths.)"""
    group_of: dict[str, str | None] = {c.name: c.group for c in children}
    group_of.update({g.name: g.group for g in groups})
    leaves_of: dict[str, list[str]] = {g.name: [] for g in groups}
    for child in children:
        parent = child.group
        while parent is not None:
            leaves_of[parent].append(child.name)
            parent = group_of[parent]
    after_of: dict[str, tuple[str, ...]] = {c.name: c.after for c in children}
    after_of.update({g.name: g.after for g in groups})

    def ancestors(name: str) -> list[str]:
        out = []
        parent = group_of[name]
        while parent is not None:
            out.append(parent)
            parent = group_of[parent]
        return out

    result: dict[str, list[str]] = {}
    for child in children:
        deps: dict[str, None] = {}
        for unit in (child.name, *ancestors(child.name)):
            for dep in after_of[unit]:
                if dep not in group_of:
                    raise ValueError(f"{unit!r} starts after {dep!r}, which is not a service or group")
                if (dep == unit and dep in leaves_of) or dep in ancestors(unit) or unit in ancestors(dep):
                    raise ValueError(f"{unit!r} cannot start after {dep!r}: one contains the other")
                for leaf in leaves_of.get(dep, [dep]):
                    deps[leaf] = None
        result[child.name] = list(deps)
    return result


class RestartEngine:
    """The restart policy of one supervisor: feed it events, carry out its decisions.

    ``children`` are the services, in start order (the order ties are broken by; every service must
    come after what it starts after, groups expanded); ``groups`` the groups of the tree, any order.
    ``rng`` draws the backoff jitter; pass a seeded ``random.Random`` for reproducible delays. See the
    module docstring for the call sequence.
    """

    def __init__(
        self,
        policy: SupervisorPolicy,
        children: Iterable[ChildSpec],
        *,
        groups: Iterable[GroupSpec] = (),
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        children = list(children)
        groups = list(groups)
        names = [c.name for c in children] + [g.name for g in groups]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"duplicate unit name {name!r}")
            seen.add(name)
        group_specs = {g.name: g for g in groups}
        items: list[ChildSpec | GroupSpec] = [*children, *groups]
        for item in items:
            if item.group is not None and item.group not in group_specs:
                raise ValueError(f"{item.name!r} is in group {item.group!r}, which is not a group")
        for gspec in groups:  # groups nest as a tree
            outer, path = gspec.group, [gspec.name]
            while outer is not None:
                if outer in path:
                    raise ValueError(f"groups nest in a cycle: {' -> '.join([*path, outer])}")
                path.append(outer)
                outer = group_specs[outer].group
        deps = service_dependencies(children, groups)
        order, cycles = start_order(deps)
        if cycles:
            raise ValueError(f"dependency cycle: {' -> '.join(cycles[0])}")
        position = {name: i for i, name in enumerate(c.name for c in children)}
        for name in order:
            for dep in deps[name]:
                if position[dep] > position[name]:
                    raise ValueError(f"children must be in start order: {name!r} starts after {dep!r}")

        self._root = _Group(
            name="",
            parent=None,
            critical=True,
            intensity=policy.intensity,
            period=policy.period,
            backoff=BackoffPolicy(),
            revive_after=policy.revive_after,
            after=(),
            strategy=policy.strategy,
        )
        self._groups: dict[str, _Group] = {}

        def group(name: str | None) -> _Group:
            if name is None:
                return self._root
            found = self._groups.get(name)
            if found is None:
                spec = group_specs[name]
                parent = group(spec.group)
                found = _Group(
                    name=name,
                    parent=parent,
                    critical=spec.critical,
                    intensity=parent.intensity if spec.intensity is None else spec.intensity,
                    period=parent.period if spec.period is None else spec.period,
                    backoff=spec.backoff,
                    revive_after=parent.revive_after if spec.revive_after is None else spec.revive_after,
                    after=spec.after,
                    spec=spec,
                    strategy=spec.strategy,
                )
                self._groups[name] = found
                parent.members.append(found)
            return found

        for gspec in groups:
            group(gspec.name)
        self._leaves: dict[str, _Leaf] = {}
        for index, cspec in enumerate(children):
            owner = group(cspec.group)
            leaf = _Leaf(
                name=cspec.name,
                parent=owner,
                critical=cspec.critical,
                intensity=owner.intensity if cspec.intensity is None else cspec.intensity,
                period=owner.period if cspec.period is None else cspec.period,
                backoff=cspec.backoff,
                revive_after=owner.revive_after if cspec.revive_after is None else cspec.revive_after,
                after=cspec.after,
                index=index,
                spec=cspec,
            )
            self._leaves[cspec.name] = leaf
            owner.members.append(leaf)
            holder: _Group | None = owner
            while holder is not None:
                holder.leaves.append(leaf)
                holder = holder.parent
        for leaf in self._leaves.values():
            leaf.deps = tuple(self._leaves[d] for d in deps[leaf.name])
        dependents: dict[str, list[_Leaf]] = {name: [] for name in self._leaves}
        for leaf in self._leaves.values():
            for needed in leaf.deps:
                dependents[needed.name].append(leaf)
        for leaf in self._leaves.values():
            leaf.dependents = tuple(dependents[leaf.name])
        for g in (self._root, *self._groups.values()):
            g.index = min((leaf.index for leaf in g.leaves), default=len(self._leaves))
            g.members.sort(key=lambda member: member.index)
        self._order: tuple[_Leaf, ...] = tuple(self._leaves.values())
        self._rng = rng if rng is not None else random.Random()
        self._next_batch = 0
        self._started = False
        self._closed = False
        self._give_up: str | None = None

    # -- read-only views ---------------------------------------------------------------------------------

    @property
    def policy(self) -> SupervisorPolicy:
        return self._policy

    @property
    def specs(self) -> tuple[ChildSpec, ...]:
        """The services, in start order."""
        return tuple(leaf.spec for leaf in self._order)

    @property
    def group_specs(self) -> tuple[GroupSpec, ...]:
        return tuple(g.spec for g in self._groups.values() if g.spec is not None)

    @property
    def closed(self) -> bool:
        """True after :meth:`stop_all` or an escalation: nothing is started any more."""
        return self._closed

    @property
    def given_up(self) -> str | None:
        """The escalation reason, once the engine has given up."""
        return self._give_up

    def units(self) -> tuple[str, ...]:
        """The names of every service and group."""
        return (*self._leaves, *self._groups)

    def services_of(self, name: str) -> tuple[str, ...]:
        """The services of the unit ``name``: itself for a service, all of a group's (nested included)."""
        return tuple(leaf.name for leaf in self._leaves_of(self._unit(name)))

    def status(self) -> list[ChildStatus]:
        """A snapshot of every service, in start order."""
        return [self._row(leaf) for leaf in self._order]

    def _shown_state(self, leaf: _Leaf) -> State:
        """The state of the status table: a service due to start that waits for others is ``WAITING``."""
        if leaf.waiting and not all(dep.satisfied for dep in leaf.deps):
            return State.WAITING
        return leaf.state

    def _row(self, leaf: _Leaf) -> ChildStatus:
        state = self._shown_state(leaf)
        waiting_for: tuple[str, ...] = ()
        reason = leaf.reason if leaf.state is State.FAILED else None
        if state is State.WAITING:
            waiting_for = tuple(dep.name for dep in leaf.deps if not dep.satisfied)
            reason = "waiting for " + ", ".join(
                f"{dep.name!r} ({self._shown_state(dep).value})" for dep in leaf.deps if not dep.satisfied
            )
        failed = self._failed_unit(leaf)
        return ChildStatus(
            name=leaf.name,
            restart=leaf.spec.restart,
            state=state,
            restarts=leaf.restarts,
            consecutive_failures=leaf.consecutive_failures,
            last_exit=leaf.last_exit,
            last_error=leaf.last_error,
            started_at=leaf.started_at,
            ready_at=leaf.ready_at,
            ended_at=leaf.ended_at,
            start_at=leaf.not_before if leaf.waiting else None,
            held=leaf.held,
            group=leaf.parent.name if leaf.parent is not self._root and leaf.parent is not None else None,
            critical=leaf.critical,
            reason=reason,
            waiting_for=waiting_for,
            revive_at=self._revive_at(failed) if failed is not None else None,
        )

    def group_status(self) -> list[GroupStatus]:
        """A snapshot of every group, in start order."""
        rows = []
        for g in sorted(self._groups.values(), key=lambda g: g.index):
            assert g.spec is not None
            rows.append(
                GroupStatus(
                    name=g.name,
                    group=g.spec.group,
                    strategy=g.strategy,
                    critical=g.critical,
                    state=self._group_state(g),
                    restarts=g.restarts,
                    services=tuple(leaf.name for leaf in g.leaves),
                    reason=g.reason if g.failed else None,
                    revive_at=self._revive_at(failed) if (failed := self._failed_unit(g)) else None,
                )
            )
        return rows

    def _group_state(self, g: _Group) -> State:
        if g.failed:
            return State.FAILED
        states = [self._row(leaf).state for leaf in g.leaves]
        for state in (State.STOPPING, State.STARTING, State.BACKOFF, State.WAITING):
            if state in states:
                return state
        if states and all(s is State.STOPPED for s in states):
            return State.STOPPED
        if any(s is State.RUNNING for s in states):
            return State.RUNNING  # a member that failed on its own shows in its own row, not the group's
        if State.FAILED in states:
            return State.FAILED
        return State.EXITED if states else State.STOPPED

    def startup_settled(self) -> bool:
        """Whether the first start of every service has been decided: each became ready, ended, failed,
        was stopped, or waits behind a unit whose first start failed. Until then the supervisor is
        starting; from then on it supervises (``vwos run`` tells systemd it is ready)."""
        memo: dict[str, bool] = {}

        def pending(leaf: _Leaf) -> bool:
            if leaf.name not in memo:
                if leaf.settled_once or not (leaf.waiting or leaf.state is State.STARTING):
                    memo[leaf.name] = False
                elif leaf.state is State.STARTING:
                    memo[leaf.name] = True
                else:  # waiting: pending unless held back by a unit whose first start is over
                    memo[leaf.name] = all(dep.satisfied or pending(dep) for dep in leaf.deps)
            return memo[leaf.name]

        return self._closed or not any(pending(leaf) for leaf in self._order)

    # -- starting --------------------------------------------------------------------------------------

    def start_all(self, now: float) -> Decision:
        """Schedule the initial start of every service (except ones the operator stopped)."""
        if self._started:
            raise TransitionError("start_all() was already called")
        self._check_open()
        self._started = True
        batch = self._new_batch()
        names = []
        for leaf in self._order:
            if leaf.held or leaf.state is not State.STOPPED or leaf.batch is not None:
                continue
            leaf.batch = batch
            leaf.not_before = now
            names.append(leaf.name)
        return Decision(start=tuple(names))

    def start_due(self, now: float) -> tuple[str, ...]:
        """The services to start now, in start order; the engine counts them as ``STARTING`` from now on.

        Start each (for instance with ``nursery.start_soon``) and report ``on_ready`` or ``on_exit``.
        Revives failed units whose ``revive_after`` has come.
        """
        if self._closed:
            return ()
        self._revive_due(now)
        due = [leaf for leaf in self._startable() if leaf.not_before <= now]
        for leaf in due:
            leaf.state = State.STARTING
            leaf.started_at = now
            leaf.ready_at = None
            if leaf.restart_pending:
                leaf.restarts += 1
                leaf.restart_pending = False
        return tuple(leaf.name for leaf in due)

    def stop_due(self) -> tuple[str, ...]:
        """The services to stop now; the engine expects an ``on_stopped`` (or ``on_exit``) for each.

        A service is handed out once every service ``after`` it that is being stopped too has stopped.
        """
        due = []
        for leaf in reversed(self._order):
            if leaf.state is not State.STOPPING or leaf.released:
                continue
            if any(d.state is State.STOPPING for d in leaf.dependents):
                continue
            leaf.released = True
            due.append(leaf.name)
        return tuple(due)

    def next_deadline(self) -> float | None:
        """When :meth:`start_due` will next have something to do if nothing else happens, or None."""
        if self._closed:
            return None
        times = [leaf.not_before for leaf in self._startable()]
        for unit in self._failed_units():
            revive = self._revive_at(unit)
            if revive is not None:
                times.append(revive)
        return min(times, default=None)

    def _startable(self) -> list[_Leaf]:
        """Waiting services free to start but for their backoff: their batch has nothing stopping, and
        everything they start after is ready."""
        stopping = {
            leaf.batch for leaf in self._order if leaf.state is State.STOPPING and leaf.batch is not None
        }
        return [
            leaf
            for leaf in self._order
            if leaf.waiting and leaf.batch not in stopping and all(dep.satisfied for dep in leaf.deps)
        ]

    # -- events from the driver --------------------------------------------------------------------------

    def on_ready(self, name: str, now: float) -> None:
        """The service called ``task_status.started()``."""
        leaf = self._leaf(name)
        if leaf.state is State.STOPPING:
            return  # it was asked to stop while starting; the stop wins
        if leaf.state is not State.STARTING:
            raise TransitionError(f"{name!r} cannot become ready while {leaf.state.value}")
        leaf.state = State.RUNNING
        leaf.ready_at = now
        leaf.batch = None
        leaf.settled_once = True
        group = leaf.parent
        while group is not None:
            if all(member.satisfied for member in group.leaves):
                group.ready_at = now
            group = group.parent

    def on_exit(self, name: str, exit: Exit, now: float, error: str | None = None) -> Decision:
        """The service's run ended on its own (not because the driver stopped it); ``error`` says why.

        An exit of a service that is being stopped counts as that stop finishing.
        """
        leaf = self._leaf(name)
        if leaf.state is State.STOPPING:
            self._finish_stop(leaf, now, exit, error)
            return Decision()
        if leaf.state not in _ACTIVE:
            raise TransitionError(f"{name!r} cannot exit while {leaf.state.value}")
        leaf.last_exit = exit
        leaf.last_error = error
        leaf.ended_at = now
        leaf.settled_once = True
        self._note_uptime(leaf, now)
        if exit is Exit.STOPPED:
            # A stop the engine did not ask for (it asked for none: the service is not STOPPING) can only
            # be the operator's, reported after the fact: treat it like one.
            leaf.state = State.STOPPED
            leaf.batch = None
            leaf.held = True
            return Decision()
        restart = leaf.spec.restart is Restart.PERMANENT or (
            leaf.spec.restart is Restart.TRANSIENT and exit.abnormal
        )
        if restart or exit.abnormal:
            leaf.consecutive_failures += 1
        if not restart:
            leaf.state = State.EXITED
            leaf.batch = None
            return Decision(finished=(name,))
        leaf.state = State.BACKOFF  # (until decided otherwise below)
        decision = self._unit_failed(leaf, now, _describe_exit(exit, error))
        if decision.give_up is not None:
            leaf.state = State.FAILED  # the service whose exit made the supervisor give up
        return decision

    def on_stopped(self, name: str, now: float) -> None:
        """A service the driver was asked to stop has finished stopping."""
        leaf = self._leaf(name)
        if leaf.state is not State.STOPPING:
            raise TransitionError(f"{name!r} cannot finish stopping while {leaf.state.value}")
        self._finish_stop(leaf, now, Exit.STOPPED, None)

    # -- operator commands -----------------------------------------------------------------------------

    def on_stop_requested(self, name: str) -> Decision:
        """The operator stops a unit: it is stopped and stays stopped, whatever its restart type."""
        unit = self._unit(name)
        unit.held = True
        stop = []
        for leaf in self._leaves_of(unit):
            leaf.held = True
            if self._stop_leaf(leaf, State.STOPPED):
                stop.append(leaf.name)
        return Decision(stop=tuple(stop))

    def on_start_requested(self, name: str, now: float) -> Decision:
        """The operator starts a unit: at once (skipping any backoff), with its failures forgotten and a
        fresh restart budget; a failed unit is revived, and so is a failed group it is in (it is down
        because of that group). A group it is in that the operator stopped is no longer held as a whole
        (what else in it the operator stopped stays stopped)."""
        self._check_open()
        unit = self._unit(name)
        group = unit.parent
        while group is not None:
            group.held = False
            group = group.parent
        down = self._failed_unit(unit)
        if down is None or down is unit:
            return self._revive(unit, now)
        for inner in (
            unit,
            *(g for g in self._groups.values() if self._inside(g, unit)),
            *self._leaves_of(unit),
        ):
            inner.held = False  # what the operator named; the rest of the group keeps its holds
        return self._revive(down, now, keep_held=True)

    def stop_all(self) -> Decision:
        """Shut down: stop every running service (in reverse order, by `stop_due`); nothing is started
        any more."""
        if self._closed:
            return Decision()
        self._closed = True
        return Decision(stop=self._stop_everything())

    # -- internals ---------------------------------------------------------------------------------------

    def _leaf(self, name: str) -> _Leaf:
        try:
            return self._leaves[name]
        except KeyError:
            if name in self._groups:
                raise ValueError(f"{name!r} is a group, not a service") from None
            raise ValueError(f"unknown service {name!r}") from None

    def _unit(self, name: str) -> _Unit:
        unit: _Unit | None = self._leaves.get(name) or self._groups.get(name)
        if unit is None:
            raise ValueError(f"unknown service or group {name!r}")
        return unit

    def _leaves_of(self, unit: _Unit) -> list[_Leaf]:
        return [unit] if isinstance(unit, _Leaf) else list(unit.leaves) if isinstance(unit, _Group) else []

    def _check_open(self) -> None:
        if self._give_up is not None:
            raise TransitionError(f"the supervisor gave up: {self._give_up}")
        if self._closed:
            raise TransitionError("the supervisor is shutting down")

    def _new_batch(self) -> int:
        self._next_batch += 1
        return self._next_batch

    def _note_uptime(self, leaf: _Leaf, now: float) -> None:
        if leaf.ready_at is not None and now - leaf.ready_at >= leaf.spec.backoff.reset_after:
            leaf.consecutive_failures = 0

    def _finish_stop(self, leaf: _Leaf, now: float, exit: Exit, error: str | None) -> None:
        leaf.last_exit = exit
        leaf.last_error = error
        leaf.ended_at = now
        leaf.settled_once = True
        self._note_uptime(leaf, now)
        leaf.state = leaf.after_stop
        leaf.after_stop = State.STOPPED
        leaf.released = False
        if not leaf.waiting:
            leaf.batch = None

    def _stop_leaf(self, leaf: _Leaf, after: State) -> bool:
        """Make ``leaf`` end up in ``after`` (STOPPED, EXITED or FAILED): a running one stops, one already
        stopping will not restart, a waiting one goes there at once. Returns whether it is to be stopped."""
        if leaf.state in _ACTIVE:
            leaf.state = State.STOPPING
            leaf.after_stop = after
            leaf.released = False
            leaf.batch = None
            return True
        if leaf.state is State.STOPPING:
            if leaf.after_stop is State.BACKOFF or after is State.FAILED:
                leaf.after_stop = after
            leaf.batch = None
        elif leaf.waiting:
            leaf.state = after if after is not State.EXITED else State.STOPPED
            leaf.batch = None
        elif after is State.FAILED and leaf.state is not State.FAILED:
            leaf.state = State.FAILED
        return False

    def _count(self, unit: _Unit, now: float) -> str | None:
        """Count a restart of ``unit`` at ``now``; the message if it is one too many for its budget."""
        window = unit.window
        while window and window[0] < now - unit.period:
            window.popleft()
        window.append(now)
        count = len(window)
        if count <= unit.intensity:
            return None
        plural = "restart" if count == 1 else "restarts"
        return (
            f"too many restarts: {count} {plural} in {_seconds(now - window[0])} exceeds intensity "
            f"{unit.intensity} per {_seconds(unit.period)}"
        )

    def _label(self, unit: _Unit) -> str:
        return f"group {unit.name!r}" if isinstance(unit, _Group) else repr(unit.name)

    def _unit_failed(self, unit: _Unit, now: float, what: str) -> Decision:
        """``unit`` (a service that ended, or a group a critical member failed) is to be restarted: within
        its budget restart it under its group's strategy; else fail it, or escalate if it is critical."""
        too_many = self._count(unit, now)
        if too_many is None:
            if isinstance(unit, _Group):
                if unit.ready_at is not None and now - unit.ready_at >= unit.backoff.reset_after:
                    unit.consecutive_failures = 0
                unit.ready_at = None  # up again once all its services are ready again
                unit.consecutive_failures += 1
                unit.restarts += 1
            delay = unit.backoff.delay(max(1, unit.consecutive_failures), self._rng.random())
            return self._restart(unit, now, delay)
        reason = f"{self._label(unit)} {what}; {too_many}"
        parent = unit.parent
        if not unit.critical or parent is None or parent.held or getattr(parent, "failed", False):
            # A group the operator stopped, or one that failed, is not restarted for a member the operator
            # started on its own: that member fails alone.
            return self._fail(unit, now, reason)
        if parent is self._root:
            return self._escalate(unit, now, reason)
        return self._unit_failed(parent, now, f"failed because critical {reason}")

    def _fail(self, unit: _Unit, now: float, reason: str) -> Decision:
        """Fail a non-critical unit: it stops and stays down until revived."""
        unit.failed_at = now
        unit.reason = reason
        stop = []
        failed = [unit.name]
        if isinstance(unit, _Group):
            unit.failed = True
            for group in sorted(self._groups.values(), key=lambda g: g.index):
                if group is not unit and self._inside(group, unit):
                    if not group.failed:
                        failed.append(group.name)
                    group.failed = True
                    group.failed_at = now
                    group.reason = f"its group {unit.name!r} failed"
        for leaf in self._leaves_of(unit):
            leaf.restart_pending = False
            if leaf.held and leaf is not unit and leaf.state not in _ACTIVE:
                continue  # the operator stopped it: it stays stopped, not failed
            if leaf is not unit:
                leaf.failed_at = now
                leaf.reason = f"its group {unit.name!r} failed"
                if leaf.state is not State.FAILED:
                    failed.append(leaf.name)
            if self._stop_leaf(leaf, State.FAILED):
                stop.append(leaf.name)
        return Decision(stop=tuple(stop), failed=tuple(failed))

    def _inside(self, unit: _Unit, group: _Unit) -> bool:
        parent = unit.parent
        while parent is not None:
            if parent is group:
                return True
            parent = parent.parent
        return False

    def _escalate(self, culprit: _Unit, now: float, reason: str) -> Decision:
        """The failure reached the root: give up, stopping everything."""
        self._give_up = reason
        self._closed = True
        culprit.failed_at = now
        culprit.reason = reason
        if isinstance(culprit, _Group):
            culprit.failed = True
        return Decision(stop=self._stop_everything(), give_up=reason)

    def _stop_everything(self) -> tuple[str, ...]:
        stop = []
        for leaf in reversed(self._order):
            if self._stop_leaf(leaf, State.STOPPED):
                stop.append(leaf.name)
            leaf.batch = None
        return tuple(stop)

    def _siblings(self, unit: _Unit) -> Sequence[_Unit]:
        """The units of ``unit``'s group that a restart of ``unit`` takes along (``unit`` included)."""
        parent = unit.parent
        assert parent is not None
        if parent.strategy is Strategy.ONE_FOR_ALL:
            return parent.members
        if parent.strategy is Strategy.REST_FOR_ONE:
            return [m for m in parent.members if m.index >= unit.index]
        return (unit,)

    def _restart(self, failed: _Unit, now: float, delay: float) -> Decision:
        """Put ``failed`` back after ``delay``, with the siblings its group's strategy takes along."""
        joined: list[tuple[_Leaf, float | None]] = []  # member, and its earlier start time if it had one
        old_batches: set[int] = set()
        stop: list[str] = []
        finished: list[str] = []
        for sibling in self._siblings(failed):
            whole = isinstance(sibling, _Group)  # a group comes back whole, its temporaries included
            if whole and (sibling.held or getattr(sibling, "failed", False)):
                continue
            if (
                whole and sibling is failed
            ):  # it starts afresh: its units, nested groups too, have new budgets
                inner: list[_Unit] = [g for g in self._groups.values() if self._inside(g, sibling)]
                for unit in (*inner, *self._leaves_of(sibling)):
                    unit.window.clear()
                    unit.consecutive_failures = 0
            for member in self._leaves_of(sibling):
                earlier: float | None = None
                if member.held or member.state is State.FAILED:
                    continue
                if member is failed:
                    member.state = State.BACKOFF
                    member.restart_pending = True
                elif member.state in _ACTIVE:
                    member.state = State.STOPPING
                    member.released = False
                    stop.append(member.name)
                    if member.spec.restart is Restart.TEMPORARY and not whole:
                        member.after_stop = State.EXITED  # OTP: a temporary sibling is not restarted
                        finished.append(member.name)
                    else:
                        member.after_stop = State.BACKOFF
                        member.restart_pending = True
                elif member.state is State.STOPPING:  # already on its way out: joins the batch
                    if member.after_stop is State.FAILED:
                        continue
                    earlier = member.not_before
                    if member.after_stop is State.EXITED and not whole:
                        finished.append(member.name)
                    else:
                        member.after_stop = State.BACKOFF
                        member.restart_pending = True
                elif member.waiting:
                    earlier = member.not_before  # already waiting: joins the batch
                elif member.state is State.BACKOFF:
                    member.restart_pending = True  # the service whose exit failed its group
                elif member.state is State.EXITED and (whole or member.spec.restart is Restart.TRANSIENT):
                    member.state = State.BACKOFF  # OTP: a group restart starts a finished transient again
                    member.restart_pending = True
                elif member.state is State.STOPPED and whole:
                    member.state = State.BACKOFF
                    member.restart_pending = True
                else:
                    continue  # a temporary that is gone for good
                if member.batch is not None:
                    old_batches.add(member.batch)
                joined.append((member, earlier))
        # The new batch absorbs the batches its members were in, so that they start together.
        batch = self._new_batch()
        for leaf in self._order:
            if leaf.batch is not None and leaf.batch in old_batches:
                leaf.batch = batch
        start_at = now + delay
        start: list[str] = []
        for member, earlier in joined:
            member.batch = batch
            if member.state is State.STOPPING and member.after_stop is State.EXITED:
                continue
            member.not_before = start_at if earlier is None else max(earlier, start_at)
            start.append(member.name)
        start.sort(key=lambda name: self._leaves[name].index)
        return Decision(stop=tuple(reversed(stop)), start=tuple(start), delay=delay, finished=tuple(finished))

    # -- failed units and revival ----------------------------------------------------------------------

    def _failed_unit(self, unit: _Unit) -> _Unit | None:
        """The outermost failed unit that keeps ``unit`` down (itself, or a group around it)."""
        if isinstance(unit, _Leaf):
            itself = unit.state is State.FAILED and unit.failed_at is not None
        else:
            itself = isinstance(unit, _Group) and unit.failed
        found: _Unit | None = unit if itself else None
        group = unit.parent
        while group is not None:
            if group.failed:
                found = group
            group = group.parent
        return found

    def _failed_units(self) -> list[_Unit]:
        units: list[_Unit] = [g for g in self._groups.values() if g.failed and not self._in_failed(g)]
        units += [
            leaf
            for leaf in self._order
            if leaf.state is State.FAILED and leaf.failed_at is not None and not self._in_failed(leaf)
        ]
        return units

    def _in_failed(self, unit: _Unit) -> bool:
        group = unit.parent
        while group is not None:
            if group.failed:
                return True
            group = group.parent
        return False

    def _revive_at(self, unit: _Unit) -> float | None:
        if unit.revive_after is None or unit.failed_at is None or unit.held or self._closed:
            return None
        return unit.failed_at + unit.revive_after

    def _revive_due(self, now: float) -> None:
        for unit in self._failed_units():
            revive = self._revive_at(unit)
            if revive is not None and revive <= now:
                self._revive(unit, now, by_operator=False, keep_held=True)

    def _revive(
        self, unit: _Unit, now: float, *, by_operator: bool = True, keep_held: bool = False
    ) -> Decision:
        """Start ``unit`` again at once, with its failures forgotten and a fresh budget (an operator's
        start, or a revival). With ``keep_held``, what the operator stopped in it stays stopped."""
        if isinstance(unit, _Leaf) and unit.state in _ACTIVE:
            unit.held = False
            return Decision()
        for inner in (unit, *(g for g in self._groups.values() if self._inside(g, unit))):
            if not keep_held:
                inner.held = False
            inner.window.clear()
            inner.consecutive_failures = 0
            inner.failed_at = None
            inner.reason = None
            if isinstance(inner, _Group):
                inner.failed = False
        start = []
        batch: int | None = None
        for leaf in self._leaves_of(unit):
            if not keep_held:
                leaf.held = False
            if leaf.state in _ACTIVE:
                continue
            leaf.window.clear()
            leaf.consecutive_failures = 0
            leaf.failed_at = None
            leaf.reason = None
            if leaf.held:  # no longer failed, but stopped: until the operator starts it
                if leaf.state is State.FAILED:
                    leaf.state = State.STOPPED
                elif leaf.state is State.STOPPING and leaf.after_stop is State.FAILED:
                    leaf.after_stop = State.STOPPED
                continue
            leaf.restart_pending = not by_operator
            leaf.not_before = now
            if leaf.batch is None:
                if batch is None:
                    batch = self._new_batch()
                leaf.batch = batch
            if leaf.state is State.STOPPING:
                leaf.after_stop = State.STOPPED
            elif not leaf.waiting:
                leaf.state = State.STOPPED
            start.append(leaf.name)
        return Decision(start=tuple(start))
