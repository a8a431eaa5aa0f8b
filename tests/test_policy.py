"""The restart-policy engine of the supervision tree: pure logic, driven by a simulated driver (no trio).

In the spirit of Erlang's supervisor_SUITE: the matrix strategy x restart type x exit kind x critical or not
x nesting; escalation up to the first unit that is not critical; readiness isolation (services start in
parallel, each waits only for what it starts after); failed units and their revival; the stop order;
backoff; the operator; the status tables; then hypothesis properties over random trees and events.

The engine has no clock: every call carries the time as a float. `Sim` drives it the way the supervisor's
pull loop does (``start_due``, ``stop_due``, ``next_deadline``) on a simulated clock that jumps from
deadline to deadline, so backoffs and revivals take no real time, and it checks every hand-out: nothing
is started twice or before what it starts after is ready, nothing stopped before what starts after it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pytest
from strategies import Tree

from vwos._policy import (
    BackoffPolicy,
    ChildSpec,
    ChildStatus,
    Decision,
    Exit,
    GroupSpec,
    GroupStatus,
    Restart,
    RestartEngine,
    State,
    Strategy,
    SupervisorPolicy,
    TransitionError,
)

P, R, T = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY
ONE, ALL, REST = Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE
#: A backoff without jitter, so that delays are exact: 0.5, 1, 2, 4, 8, 10, 10, ...
STEADY = BackoffPolicy(initial=0.5, multiplier=2.0, max_delay=10.0, jitter=0.0, reset_after=30.0)
#: No backoff at all, for tests about which units restart and about counting.
NO_BACKOFF = BackoffPolicy(initial=0.0, jitter=0.0)
#: A budget large enough never to be reached.
ROOMY = SupervisorPolicy(ONE, intensity=100, period=5.0)


def svc(name: str, restart: Restart = P, *, backoff: BackoffPolicy = NO_BACKOFF, **kwargs: Any) -> ChildSpec:
    return ChildSpec(name, restart, backoff, **kwargs)


def grp(
    name: str, strategy: Strategy = ONE, *, backoff: BackoffPolicy = NO_BACKOFF, **kwargs: Any
) -> GroupSpec:
    return GroupSpec(name, strategy, backoff=backoff, **kwargs)


# -- the simulated driver --------------------------------------------------------------------------------


@attrs.define
class Sim:
    """The supervisor's pull loop, synchronous, on a simulated clock; it checks what the engine hands out.

    Started services become ready by themselves in `settle` (but those in ``hang``), stops finish by
    themselves (but those in ``stuck``); tests make the rest happen with `ready`, `exit` and `stopped`.
    """

    engine: RestartEngine
    tree: Tree
    now: float = 0.0
    #: What the driver itself believes each service is doing: "starting", "running" or "stopping".
    active: dict[str, str] = attrs.Factory(dict)
    hang: set[str] = attrs.Factory(set)
    stuck: set[str] = attrs.Factory(set)
    #: Every hand-out: (time, "start" or "stop", name).
    log: list[tuple[float, str, str]] = attrs.Factory(list)
    deps: dict[str, frozenset[str]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.deps = self.tree.deps()

    @classmethod
    def of(
        cls,
        children: Sequence[ChildSpec],
        groups: Sequence[GroupSpec] = (),
        policy: SupervisorPolicy = ROOMY,
        *,
        seed: int = 0,
        start: bool = True,
        hang: str | Iterable[str] = (),
    ) -> Sim:
        tree = Tree(policy, tuple(groups), tuple(children))
        engine = RestartEngine(policy, children, groups=groups, rng=random.Random(seed))
        sim = cls(engine, tree, hang={hang} if isinstance(hang, str) else set(hang))
        if start:
            sim.engine.start_all(sim.now)
            sim.settle()
        return sim

    # what the engine hands out

    def satisfied(self, name: str) -> bool:
        """Ready as a dependency, as the driver sees it: it reported readiness and has not ended since, or
        it ran to completion."""
        if name in self.active:
            return self.active[name] == "running"
        r = self.row(name)
        return r.state is State.EXITED and r.last_exit is Exit.NORMAL

    def pull(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        started = self.engine.start_due(self.now)
        for name in started:
            assert name not in self.active, f"{name} handed out to start while {self.active[name]}"
            early = sorted(d for d in self.deps[name] if not self.satisfied(d))
            assert not early, f"{name} started before {early} were ready"
            self.active[name] = "starting"
            self.log.append((self.now, "start", name))
        stopped = self.engine.stop_due()
        stopping = {n for n, s in self.active.items() if s == "stopping"} | set(stopped)
        for name in stopped:
            assert self.active.get(name) in ("starting", "running"), f"{name} handed out to stop while idle"
            early = sorted(d for d, deps in self.deps.items() if name in deps and d in stopping)
            assert not early, f"{name} stopped before {early}, which start after it"
            self.active[name] = "stopping"
            self.log.append((self.now, "stop", name))
        return started, stopped

    def settle(self) -> None:
        """Without time passing: pull, let started services become ready and stops finish, until quiet."""
        for _ in range(1000):
            self.pull()
            ready = [n for n, s in self.active.items() if s == "starting" and n not in self.hang]
            done = [n for n, s in self.active.items() if s == "stopping" and n not in self.stuck]
            if not ready and not done:
                return
            for name in ready:
                self.ready(name)
            for name in done:
                self.stopped(name)
        raise AssertionError("the engine keeps handing out work")

    def run_until(self, t: float) -> None:
        """Let time pass until ``t``, from deadline to deadline, settling at each."""
        self.settle()
        for _ in range(1000):
            deadline = self.engine.next_deadline()
            if deadline is None or deadline > t:
                break
            assert deadline >= self.now, f"a deadline in the past: {deadline} < {self.now}"
            self.now = deadline
            before = len(self.log)
            self.settle()
            assert len(self.log) > before or self.engine.next_deadline() != deadline, (
                "a deadline without work"
            )
        self.now = max(self.now, t)
        self.settle()

    # events

    def ready(self, name: str) -> None:
        assert self.active.get(name) in ("starting", "stopping")
        self.engine.on_ready(name, self.now)
        if self.active[name] == "starting":
            self.active[name] = "running"

    def exit(
        self, name: str, exit: Exit = Exit.ERROR, error: str | None = "boom", *, at: float | None = None
    ) -> Decision:
        if at is not None:
            self.now = at
        assert name in self.active, f"{name} is not running"
        del self.active[name]
        decision = self.engine.on_exit(name, exit, self.now, None if exit is Exit.NORMAL else error)
        self.pull()
        return decision

    def stopped(self, name: str) -> None:
        assert self.active.get(name) == "stopping"
        del self.active[name]
        self.engine.on_stopped(name, self.now)

    def stop_everything(self) -> None:
        self.engine.stop_all()
        self.stuck.clear()
        self.settle()
        assert not self.active

    # what the tests look at

    def mark(self) -> int:
        return len(self.log)

    def started(self, since: int = 0) -> list[str]:
        return [name for _, what, name in self.log[since:] if what == "start"]

    def stops(self, since: int = 0) -> list[str]:
        return [name for _, what, name in self.log[since:] if what == "stop"]

    def states(self) -> dict[str, State]:
        return {r.name: r.state for r in self.engine.status()}

    def row(self, name: str) -> ChildStatus:
        (found,) = (r for r in self.engine.status() if r.name == name)
        return found

    def group(self, name: str) -> GroupStatus:
        (found,) = (g for g in self.engine.group_status() if g.name == name)
        return found

    def running(self) -> set[str]:
        return {n for n, s in self.states().items() if s is State.RUNNING}


def services(*names: str, group: str | None = None, **kwargs: Any) -> list[ChildSpec]:
    return [svc(name, group=group, **kwargs) for name in names]


# -- the matrix: strategy x restart type x exit kind x critical x nesting ---------------------------------


def _parse_table(text: str) -> dict[tuple[Restart, Exit], bool]:
    header, *lines = (line.split() for line in text.strip().splitlines())
    table = {}
    for restart, *cells in lines:
        for exit, cell in zip(header, cells, strict=True):
            table[Restart(restart), Exit(exit)] = {"yes": True, "no": False}[cell]
    return table


#: Is the service restarted? (OTP's do_restart; every exit but normal and stopped is abnormal.)
RESTARTED = _parse_table(
    """
                normal  error  cancelled  start_timeout  watchdog  blocked  stopped
    permanent   yes     yes    yes        yes            yes       yes      no
    transient   no      yes    yes        yes            yes       yes      no
    temporary   no      no     no         no             no        no       no
    """
)

#: What the exit says, in the reasons (with error "boom", none for normal).
DESCRIBED = {
    Exit.NORMAL: "returned",
    Exit.ERROR: "failed: boom",
    Exit.CANCELLED: "was cancelled: boom",
    Exit.START_TIMEOUT: "did not become ready in time: boom",
    Exit.WATCHDOG: "missed its watchdog: boom",
    Exit.BLOCKED: "blocked the event loop: boom",
}

INTENSITY, PERIOD = 2, 10.0
NESTINGS = ("flat", "group", "nested")
#: Start order of each nesting: "b" is the service that exits; "a", "b", "c", "d" share its group.
ORDER = {"flat": "abcd", "group": "xabcdy", "nested": "xoabcdy"}
#: When "b" is restarted within its budget: the services that restart with it.
WITHIN = {ONE: "b", ALL: "abcd", REST: "bcd"}
#: When "b" exhausts its budget, by (critical, nesting): what restarts, and whether the supervisor gives up.
EXHAUSTED: dict[tuple[bool, str], tuple[str, bool]] = {
    (False, "flat"): ("", False),  # "b" fails alone
    (False, "group"): ("", False),
    (False, "nested"): ("", False),
    (True, "flat"): ("", True),  # a critical unit at the root: the supervisor gives up
    (True, "group"): ("xabcdy", False),  # "g" restarts whole, under the root's one_for_all
    (True, "nested"): ("oabcd", False),  # "g" restarts whole, under "outer"'s one_for_all
}


def matrix_tree(
    nesting: str, strategy: Strategy, restart: Restart, critical: bool
) -> tuple[SupervisorPolicy, list[ChildSpec], list[GroupSpec]]:
    """The tree of one matrix case: "b" (of "a", "b", "c", "d", under ``strategy``) flat at the root, in a
    group "g" at the root, or in "g" in a group "outer" with a service "o" of its own; "x" and "y" at the
    root. The root and "outer" are one_for_all, so that anything leaking out of "g" would show. Every
    budget is the root's."""
    inner = "g" if nesting != "flat" else None
    b = svc("b", restart, group=inner, critical=critical)
    quartet = [svc("a", group=inner), b, svc("c", group=inner), svc("d", group=inner)]
    if nesting == "flat":
        return SupervisorPolicy(strategy, INTENSITY, PERIOD), quartet, []
    policy = SupervisorPolicy(ALL, INTENSITY, PERIOD)
    if nesting == "group":
        return policy, [svc("x"), *quartet, svc("y")], [grp("g", strategy)]
    groups = [grp("outer", ALL), grp("g", strategy, group="outer")]
    return policy, [svc("x"), svc("o", group="outer"), *quartet, svc("y")], groups


def test_the_restart_table_is_complete() -> None:
    assert set(RESTARTED) == set(itertools.product(Restart, Exit))
    assert set(DESCRIBED) == set(Exit) - {Exit.STOPPED}


@pytest.mark.parametrize("nesting", NESTINGS)
@pytest.mark.parametrize("critical", [False, True], ids=["plain", "critical"])
@pytest.mark.parametrize("exit", list(Exit), ids=lambda e: e.value)
@pytest.mark.parametrize("restart", list(Restart), ids=lambda r: r.value)
@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.value)
def test_matrix(strategy: Strategy, restart: Restart, exit: Exit, critical: bool, nesting: str) -> None:
    policy, children, groups = matrix_tree(nesting, strategy, restart, critical)
    order = ORDER[nesting]
    # A start timeout ends a start that never finished; every other exit ends a running service.
    sim = Sim.of(children, groups, policy, hang="b" if exit is Exit.START_TIMEOUT else ())
    up = State.STARTING if exit is Exit.START_TIMEOUT else State.RUNNING
    assert sim.states() == {n: up if n == "b" else State.RUNNING for n in order}

    if not RESTARTED[restart, exit]:
        mark = sim.mark()
        decision = sim.exit("b", exit, at=1.0)
        sim.settle()
        # Nothing else is touched; "b" is gone for good, or held if it was a stop.
        held = exit is Exit.STOPPED
        assert decision == Decision(finished=() if held else ("b",))
        assert sim.log[mark:] == []
        assert sim.states() == {
            n: (State.STOPPED if held else State.EXITED) if n == "b" else State.RUNNING for n in order
        }
        assert sim.row("b").held is held
        assert sim.engine.next_deadline() is None
        return

    for attempt in range(1, INTENSITY + 1):  # within the budget: "b" and what its strategy takes along
        mark = sim.mark()
        decision = sim.exit("b", exit, at=attempt / 10)
        sim.settle()
        restarted = [n for n in order if n in WITHIN[strategy]]
        assert (decision.give_up, decision.failed, decision.finished) == (None, (), ())
        assert decision.start == tuple(restarted)
        assert sim.started(mark) == restarted  # in start order, all at once (no backoff)
        assert sim.stops(mark) == [n for n in reversed(restarted) if n != "b"]  # in reverse order
        assert sim.states() == {n: up if n == "b" else State.RUNNING for n in order}
        assert sim.row("b").restarts == attempt
        assert {r.name: r.restarts for r in sim.engine.status() if r.name != "b"} == {
            n: attempt if n in restarted else 0 for n in order if n != "b"
        }

    mark = sim.mark()
    decision = sim.exit("b", exit, at=(INTENSITY + 1) / 10)  # one restart more: "b" is exhausted
    sim.settle()
    taken_along, gives_up = EXHAUSTED[critical, nesting]
    too_many = "too many restarts: 3 restarts in 0.2 s exceeds intensity 2 per 10.0 s"
    if gives_up:
        assert decision.give_up == f"'b' {DESCRIBED[exit]}; {too_many}"
        assert sim.engine.given_up == decision.give_up
        assert sim.engine.closed
        assert sim.started(mark) == []
        assert sim.stops(mark) == ["d", "c", "a"]
        assert sim.states() == {n: State.FAILED if n == "b" else State.STOPPED for n in order}
        assert sim.engine.start_due(math.inf) == ()
        assert sim.engine.next_deadline() is None
    elif not taken_along:
        assert decision == Decision(failed=("b",))
        assert sim.log[mark:] == []
        assert sim.states() == {n: State.FAILED if n == "b" else State.RUNNING for n in order}
        assert sim.row("b").reason == f"'b' {DESCRIBED[exit]}; {too_many}"
        assert sim.engine.given_up is None
        assert sim.engine.next_deadline() is None  # no revive_after: down until the operator starts it
    else:  # "g" is restarted whole, under the strategy of its own group
        assert (decision.give_up, decision.failed) == (None, ())
        assert sim.started(mark) == list(taken_along)
        assert sim.stops(mark) == [n for n in reversed(taken_along) if n != "b"]
        assert sim.states() == {n: up if n == "b" else State.RUNNING for n in order}
        assert sim.group("g").restarts == 1
        if nesting == "nested":
            assert sim.group("outer").restarts == 0
        # ... and "b" starts over with a fresh budget: its next exit is within it again.
        mark = sim.mark()
        assert sim.exit("b", exit, at=0.4).start == tuple(n for n in order if n in WITHIN[strategy])
        assert sim.engine.given_up is None


# -- collateral siblings ----------------------------------------------------------------------------------

QUARTET = "abcd"


def quartet(strategy: Strategy, restarts: dict[str, Restart] | None = None, **policy: object) -> Sim:
    restarts = restarts or {}
    specs = [svc(n, restarts.get(n, P), backoff=STEADY) for n in QUARTET]
    return Sim.of(specs, policy=SupervisorPolicy(strategy, **{"intensity": 100, **policy}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("strategy", "restarts", "failing", "stop", "start", "finished"),
    [
        # A temporary sibling stopped as collateral is not restarted (it is removed); a transient one is.
        (ALL, {"b": T, "c": R}, "a", "dcb", "acd", "b"),
        (ALL, {"a": T, "d": R}, "c", "dba", "bcd", "a"),
        (REST, {"c": T, "d": R}, "b", "dc", "bd", "c"),
        # Services before the failing one are untouched by rest_for_one, whatever their type.
        (REST, {"a": T, "b": R}, "c", "d", "cd", ""),
        # A transient failing service is restarted like a permanent one, and takes its siblings along.
        (ALL, {"a": R, "b": T, "c": T, "d": T}, "a", "dcb", "a", "bcd"),
    ],
)
def test_collateral_siblings(
    strategy: Strategy, restarts: dict[str, Restart], failing: str, stop: str, start: str, finished: str
) -> None:
    sim = quartet(strategy, restarts)
    mark = sim.mark()

    decision = sim.exit(failing, at=1.0)

    assert (decision.stop, decision.start, decision.finished) == (tuple(stop), tuple(start), tuple(finished))
    sim.settle()
    assert sim.stops(mark) == list(stop)
    for name in finished:
        assert (sim.row(name).state, sim.row(name).last_exit) == (State.EXITED, Exit.STOPPED)
    assert sim.started(mark) == []  # the backoff
    sim.run_until(1.5)
    assert sim.started(mark) == list(start)
    assert sim.running() == set(QUARTET) - set(finished)


@pytest.mark.parametrize(("strategy", "stop"), [(ALL, "db"), (REST, "db")])
def test_a_group_restart_starts_a_finished_transient_again(strategy: Strategy, stop: str) -> None:
    # OTP keeps a transient child that exited normally in its child list, and a restart of all of them
    # starts every child in the list again.
    sim = quartet(strategy, {"c": R})
    assert sim.exit("c", Exit.NORMAL, at=1.0) == Decision(finished=("c",))
    mark = sim.mark()

    decision = sim.exit("a", at=2.0)

    assert (decision.stop, decision.start) == (tuple(stop), ("a", "b", "c", "d"))
    assert sim.row("c").state is State.BACKOFF
    sim.run_until(2.5)
    assert sim.started(mark) == list("abcd")


def test_a_group_restart_leaves_a_finished_temporary_gone() -> None:
    sim = quartet(ALL, {"c": T})
    sim.exit("c", at=1.0)

    decision = sim.exit("a", at=2.0)

    assert (decision.stop, decision.start) == (("d", "b"), ("a", "b", "d"))
    sim.run_until(10.0)
    assert sim.row("c").state is State.EXITED


def test_a_group_restart_waits_for_every_stop() -> None:
    sim = quartet(ALL)
    sim.stuck.add("b")
    mark = sim.mark()
    decision = sim.exit("a", at=1.0)
    assert decision.stop == ("d", "c", "b")

    sim.run_until(100.0)
    assert sim.states()["b"] is State.STOPPING
    assert sim.started(mark) == []  # "b" is still stopping, backoff or not
    assert sim.engine.next_deadline() is None
    sim.stopped("b")
    assert sim.engine.next_deadline() == 1.5
    sim.settle()
    assert sim.started(mark) == list("abcd")


def test_a_crash_while_being_stopped_counts_as_the_stop() -> None:
    sim = quartet(ALL, intensity=1)
    sim.stuck.add("c")
    sim.exit("a", at=1.0)
    assert sim.active["c"] == "stopping"

    assert sim.exit("c", Exit.ERROR, "crashed on the way out") == Decision()

    assert sim.row("c").state is State.BACKOFF  # restarted with its group, no restart of its own
    assert (sim.row("c").last_exit, sim.row("c").last_error) == (Exit.ERROR, "crashed on the way out")
    sim.run_until(1.5)
    assert sim.running() == set(QUARTET)
    assert sim.engine.given_up is None
    assert sim.row("c").consecutive_failures == 0  # not a failure of its own


def test_a_second_failure_during_a_group_restart_merges_into_it() -> None:
    sim = quartet(REST)
    sim.stuck.add("d")
    first = sim.exit("c", at=1.0)
    assert (first.stop, first.start) == (("d",), ("c", "d"))

    second = sim.exit("a", at=1.2)

    assert (second.stop, second.start) == (("b",), ("a", "b", "c", "d"))
    mark = sim.mark()
    sim.run_until(1.6)
    assert (
        sim.started(mark) == []
    )  # "c" waited until 1.5, but it now comes with "a" (until 1.7), and "d" stops
    sim.stuck.clear()
    sim.run_until(1.7)
    assert sim.started(mark) == list("abcd")


# -- escalation -------------------------------------------------------------------------------------------


def chain(*, b: bool, g: bool, outer: bool, policy: SupervisorPolicy | None = None) -> Sim:
    """ "b" in "g" in "outer" (with a service "o" of its own), "x" at the root; every budget 1 per 100 s."""
    groups = [grp("outer", critical=outer), grp("g", group="outer", critical=g)]
    children = [svc("x"), svc("o", group="outer"), svc("a", group="g"), svc("b", group="g", critical=b)]
    return Sim.of(children, groups, policy or SupervisorPolicy(ONE, intensity=1, period=100.0))


def crash_until_it_ends(sim: Sim, name: str, *, limit: int = 50) -> tuple[int, Decision]:
    """Crash ``name`` each time it runs again, until its group fails or the supervisor gives up."""
    for crashes in range(1, limit + 1):
        decision = sim.exit(name, at=sim.now + 0.01)
        sim.settle()
        if decision.failed or decision.give_up:
            return crashes, decision
    raise AssertionError(f"{name} crashed {limit} times and nothing failed")


@pytest.mark.parametrize(
    ("b", "g", "outer"), list(itertools.product([False, True], repeat=3)), ids=lambda c: "crit" if c else "-"
)
def test_escalation_stops_at_the_first_unit_that_is_not_critical(b: bool, g: bool, outer: bool) -> None:
    sim = chain(b=b, g=g, outer=outer)
    boundary = next((unit for unit, critical in (("b", b), ("g", g), ("outer", outer)) if not critical), None)

    crashes, decision = crash_until_it_ends(sim, "b")

    # Each level takes intensity + 1 = 2 exhaustions of the level below, each of which starts afresh.
    assert crashes == {"b": 2, "g": 4, "outer": 8, None: 8}[boundary]
    assert (sim.group("g").restarts, sim.group("outer").restarts) == {
        "b": (0, 0),
        "g": (1, 0),
        "outer": (2, 1),
        None: (2, 1),
    }[boundary]
    if boundary is None:
        assert decision.give_up is not None
        assert decision.give_up.startswith(
            "group 'outer' failed because critical group 'g' failed because critical 'b' failed: boom; "
        )
        assert sim.states() == {"x": State.STOPPED, "o": State.STOPPED, "a": State.STOPPED, "b": State.FAILED}
        return
    assert decision.give_up is None
    assert (
        decision.failed
        == {"b": ("b",), "g": ("g", "a", "b"), "outer": ("outer", "g", "o", "a", "b")}[boundary]
    )
    down = sim.tree.services_of(boundary)
    assert sim.states() == {n: State.FAILED if n in down else State.RUNNING for n in "xoab"}
    assert sim.started().count("x") == 1  # never touched
    assert sim.started().count("o") == 1 + sim.group("outer").restarts
    # A group with a failed service shows failed; only one that failed itself says why.
    assert {g.name for g in sim.engine.group_status() if g.state is State.FAILED} == {"g", "outer"}
    failed = {g.name for g in sim.engine.group_status() if g.reason is not None}
    assert failed == {"b": set(), "g": {"g"}, "outer": {"outer", "g"}}[boundary]


def test_a_critical_group_inside_a_group_that_is_not_restarts_it_and_goes_no_higher() -> None:
    sim = chain(b=True, g=True, outer=False, policy=SupervisorPolicy(ALL, intensity=1, period=100.0))
    for _ in range(3):
        sim.exit("b", at=sim.now + 0.01)
        sim.settle()
    mark = sim.mark()

    decision = sim.exit("b", at=sim.now + 0.01)  # "g" exhausted: "outer" restarts whole
    sim.settle()

    assert (decision.failed, decision.give_up) == ((), None)
    assert sim.started(mark) == ["x", "o", "a", "b"]  # under the root's one_for_all: "x" comes along
    assert sim.group("outer").restarts == 1

    crashes, decision = crash_until_it_ends(sim, "b")  # "outer" exhausted: it fails, alone

    assert crashes == 4
    assert (decision.failed, decision.give_up) == (("outer", "g", "o", "a", "b"), None)
    assert sim.states() == {"x": State.RUNNING, "o": State.FAILED, "a": State.FAILED, "b": State.FAILED}
    assert sim.started().count("x") == 2


@pytest.mark.parametrize(("strategy", "restarted"), [(ONE, "ab"), (ALL, "xaby"), (REST, "aby")])
def test_a_group_restarts_whole_under_its_own_groups_strategy(strategy: Strategy, restarted: str) -> None:
    children = [svc("x"), svc("a", group="g"), svc("b", group="g", critical=True, intensity=0), svc("y")]
    sim = Sim.of(children, [grp("g")], SupervisorPolicy(strategy, intensity=5, period=10.0))
    mark = sim.mark()

    decision = sim.exit("b", at=1.0)
    sim.settle()

    assert (decision.failed, decision.give_up) == ((), None)
    assert sim.started(mark) == list(restarted)
    assert sim.group("g").restarts == 1
    assert sim.running() == set("xaby")


def test_a_nested_group_starts_afresh_when_its_group_restarts_whole() -> None:
    # "g" exhausts its budget (1 per 100 s) and "outer" restarts whole: "g" is a fresh nested supervisor,
    # with a fresh budget, as its services are; before, it kept its count and failed "outer" again at
    # the next exhaustion of "b".
    groups = [grp("outer", critical=True, intensity=5), grp("g", group="outer", critical=True, intensity=1)]
    children = [svc("o", group="outer"), svc("b", group="g", critical=True, intensity=0)]
    sim = Sim.of(children, groups, SupervisorPolicy(ONE, intensity=3, period=100.0))
    for _ in range(2):  # "g" restarted once, then exhausted: "outer" restarts
        sim.exit("b", at=sim.now + 0.01)
        sim.settle()
    assert (sim.group("g").restarts, sim.group("outer").restarts) == (1, 1)

    sim.exit("b", at=sim.now + 0.01)
    sim.settle()

    assert (sim.group("g").restarts, sim.group("outer").restarts) == (2, 1)


def test_a_failed_unit_stays_failed_through_a_restart_of_its_group() -> None:
    children = [
        svc("a", group="g", intensity=0),
        svc("b", group="g", critical=True, intensity=0),
        svc("c", group="g"),
    ]
    sim = Sim.of(children, [grp("g", ALL)])
    assert sim.exit("a", at=1.0).failed == ("a",)

    decision = sim.exit("b", at=2.0)  # "g" restarts whole
    sim.settle()

    assert decision.start == ("b", "c")
    assert sim.states() == {"a": State.FAILED, "b": State.RUNNING, "c": State.RUNNING}
    assert (
        sim.row("a").reason
        == "'a' failed: boom; too many restarts: 1 restart in 0.0 s exceeds intensity 0 per 5.0 s"
    )


@pytest.mark.parametrize("exit", [Exit.ERROR, Exit.START_TIMEOUT, Exit.WATCHDOG, Exit.BLOCKED])
def test_a_critical_service_at_the_root_gives_up_and_stops_everything_in_order(exit: Exit) -> None:
    children = [svc("a"), svc("b", after="a", critical=True), svc("c", after="b"), svc("d")]
    sim = Sim.of(
        children,
        policy=SupervisorPolicy(ONE, intensity=1, period=5.0),
        hang="b" if exit is Exit.START_TIMEOUT else (),
    )
    sim.exit("b", exit, at=1.0)
    sim.settle()
    sim.stuck.add("c")
    sim.stuck.add("d")
    mark = sim.mark()

    decision = sim.exit("b", exit, at=2.0)

    assert (
        decision.give_up
        == f"'b' {DESCRIBED[exit]}; too many restarts: 2 restarts in 1.0 s exceeds intensity 1 per 5.0 s"
    )
    # Everything stops at once: "c" starts after "b", which is down, and not after "a" (nor was "c" even
    # started, if "b" never became ready).
    assert sim.stops(mark) == ["d", "a"] if exit is Exit.START_TIMEOUT else ["d", "c", "a"]
    sim.stuck.clear()
    sim.settle()
    assert sim.states() == {"a": State.STOPPED, "b": State.FAILED, "c": State.STOPPED, "d": State.STOPPED}
    with pytest.raises(TransitionError, match="gave up: 'b' "):
        sim.engine.on_start_requested("b", 3.0)


# -- restart budgets --------------------------------------------------------------------------------------


def test_budgets_are_per_unit_not_supervisor_wide() -> None:
    # Before, three restarts of three different services exhausted a supervisor-wide intensity of 2.
    sim = Sim.of(services("a", "b", "c", "d"), policy=SupervisorPolicy(ONE, intensity=2, period=10.0))
    for t, name in enumerate("aabbcc"):
        decision = sim.exit(name, at=float(t))
        assert (decision.start, decision.failed, decision.give_up) == ((name,), (), None)
        sim.settle()
    assert sim.running() == set("abcd")

    assert sim.exit("a", at=7.0).failed == ("a",)  # a third restart of "a" within 10 s is one too many
    assert sim.running() == set("bcd")


def test_budgets_default_to_the_groups_and_then_the_supervisors() -> None:
    groups = [grp("outer", intensity=1, period=50.0), grp("g", group="outer"), grp("h", intensity=3)]
    children = [
        svc("a", group="g"),
        svc("b", group="h"),
        svc("c", group="h", intensity=0),
        svc("d", period=1.0),
    ]
    sim = Sim.of(children, groups, SupervisorPolicy(ONE, intensity=2, period=10.0))

    def restarts_until_failed(name: str, step: float) -> int:
        for n in itertools.count():
            if sim.exit(name, at=sim.now + step).failed:
                return n
            sim.settle()
        raise AssertionError  # pragma: no cover

    assert restarts_until_failed("a", 10.0) == 1  # "outer"'s 1 per 50 s, through "g"
    assert restarts_until_failed("b", 1.0) == 3  # "h"'s own
    assert restarts_until_failed("c", 1.0) == 0  # its own
    assert restarts_until_failed("d", 0.3) == 2  # the supervisor's 2, in its own 1 s period


def test_no_failure_when_restarts_are_spread_beyond_the_period() -> None:
    sim = Sim.of(services("a", "b"), policy=SupervisorPolicy(ONE, intensity=2, period=10.0))
    for i in range(30):
        assert sim.exit("b", at=i * 5.001).failed == ()
        sim.settle()
    assert sim.row("b").restarts == 30


@pytest.mark.parametrize(("second", "fails"), [(5.0, True), (4.999, True), (5.001, False)])
def test_the_window_includes_its_edge(second: float, fails: bool) -> None:
    # OTP keeps restarts with t >= now - period: two restarts exactly one period apart are in one window.
    sim = Sim.of(services("b"), policy=SupervisorPolicy(ONE, intensity=1, period=5.0))
    sim.exit("b", at=0.0)
    sim.settle()
    assert bool(sim.exit("b", at=second).failed) is fails


def test_a_group_restart_counts_once_for_the_unit_that_failed() -> None:
    sim = Sim.of(services("a", "b", "c", "d"), policy=SupervisorPolicy(ALL, intensity=1, period=5.0))
    assert len(sim.exit("b", at=1.0).start) == 4
    sim.settle()
    for name in "acd":  # the siblings' budgets are untouched
        assert sim.exit(name, at=2.0).failed == ()
        sim.settle()
    assert sim.exit("b", at=3.0).failed == ("b",)


def test_intensity_zero_fails_on_the_first_restart() -> None:
    sim = Sim.of(services("a", "b"), policy=SupervisorPolicy(ONE, intensity=0))

    decision = sim.exit("b", at=7.0)

    assert decision == Decision(failed=("b",))
    assert (
        sim.row("b").reason
        == "'b' failed: boom; too many restarts: 1 restart in 0.0 s exceeds intensity 0 per 5.0 s"
    )


@pytest.mark.parametrize(("restart", "exit"), [(T, Exit.ERROR), (R, Exit.NORMAL), (P, Exit.STOPPED)])
def test_intensity_zero_allows_exits_that_are_not_restarted(restart: Restart, exit: Exit) -> None:
    sim = Sim.of([svc("a"), svc("b", restart, critical=True)], policy=SupervisorPolicy(ONE, intensity=0))
    decision = sim.exit("b", exit, at=1.0)
    assert (decision.failed, decision.give_up, sim.engine.given_up) == ((), None, None)


def test_the_reason_names_the_exit_and_a_return_counts() -> None:
    sim = Sim.of([svc("a", critical=True)], policy=SupervisorPolicy(ONE, intensity=0))
    assert sim.exit("a", Exit.NORMAL, at=1.0).give_up == (
        "'a' returned; too many restarts: 1 restart in 0.0 s exceeds intensity 0 per 5.0 s"
    )


# -- readiness: parallel starts, each held back only by what it starts after --------------------------------


def test_independent_services_start_at_once_and_each_waits_only_for_its_own() -> None:
    children = [svc("a"), svc("b", after="a"), svc("c"), svc("d", after="c"), svc("e", after=["b", "d"])]
    sim = Sim.of(children, start=False)
    assert sim.engine.start_due(0.0) == ()  # nothing before start_all
    assert sim.engine.start_all(0.0) == Decision(start=("a", "b", "c", "d", "e"))
    assert sim.engine.next_deadline() == 0.0

    assert sim.pull() == (("a", "c"), ())
    assert sim.engine.next_deadline() is None  # waiting for readiness, not for time
    sim.ready("c")
    assert sim.pull() == (("d",), ())
    sim.ready("d")
    assert sim.pull() == ((), ())  # "e" also waits for "b"
    assert sim.row("e").waiting_for == ("b",)
    sim.ready("a")
    assert sim.pull() == (("b",), ())
    sim.ready("b")
    assert sim.pull() == (("e",), ())


def test_a_start_that_never_finishes_holds_back_only_what_starts_after_it() -> None:
    children = [
        svc("a", backoff=STEADY),
        svc("b", after="a"),
        svc("c"),
        svc("d", after="c"),
        svc("e", after="b"),
    ]
    sim = Sim.of(children, hang="a")

    assert sim.states() == {
        "a": State.STARTING,
        "b": State.WAITING,
        "c": State.RUNNING,
        "d": State.RUNNING,
        "e": State.WAITING,
    }
    assert (sim.row("b").waiting_for, sim.row("b").reason) == (("a",), "waiting for 'a' (starting)")
    assert (sim.row("e").waiting_for, sim.row("e").reason) == (("b",), "waiting for 'b' (waiting)")
    assert sim.row("b").start_at == 0.0
    assert not sim.engine.startup_settled()

    sim.exit("a", Exit.START_TIMEOUT, "not ready within 5.0 s", at=5.0)  # the driver's start timeout

    assert sim.engine.startup_settled()  # its first start is over: what waits behind it is settled too
    assert sim.row("b").reason == "waiting for 'a' (backoff)"
    assert sim.running() == {"c", "d"}
    sim.hang.clear()
    sim.run_until(5.5)  # "a" starts again after its backoff, is ready, and "b" and "e" follow
    assert sim.running() == set("abcde")
    assert sim.started() == ["a", "c", "d", "a", "b", "e"]


def test_a_service_that_keeps_failing_to_start_holds_back_only_what_starts_after_it() -> None:
    children = [svc("a", intensity=2), svc("b", after="a"), svc("c")]
    sim = Sim.of(children, hang="a")
    for t in (1.0, 2.0):
        assert sim.exit("a", Exit.ERROR, at=t).start == ("a",)
        sim.settle()

    assert sim.exit("a", Exit.ERROR, at=3.0).failed == ("a",)

    assert sim.states() == {"a": State.FAILED, "b": State.WAITING, "c": State.RUNNING}
    assert sim.row("b").reason == "waiting for 'a' (failed)"
    assert sim.engine.startup_settled()
    sim.run_until(1000.0)
    assert sim.started() == ["a", "c", "a", "a"]  # "b" waits as long as "a" is down


@pytest.mark.parametrize("restart", [T, R])
def test_a_service_that_ran_to_completion_counts_as_ready(restart: Restart) -> None:
    sim = Sim.of([svc("setup", restart), svc("app", after="setup")], hang="setup")
    assert sim.states()["app"] is State.WAITING

    sim.exit("setup", Exit.NORMAL, at=1.0)  # returned without ever calling task_status.started()
    sim.settle()

    assert sim.states() == {"setup": State.EXITED, "app": State.RUNNING}
    assert sim.engine.startup_settled()


def test_a_permanent_service_that_returns_holds_back_what_waits_for_it() -> None:
    sim = Sim.of([svc("a", backoff=STEADY), svc("b", after="a")], hang="a")

    sim.exit("a", Exit.NORMAL, at=1.0)  # permanent: it is restarted, so it has not "run to completion"

    assert sim.states() == {"a": State.BACKOFF, "b": State.WAITING}
    sim.hang.clear()
    sim.run_until(1.5)
    assert sim.running() == {"a", "b"}


def test_a_running_service_keeps_running_while_what_it_starts_after_restarts() -> None:
    sim = Sim.of([svc("a", backoff=STEADY), svc("b", after="a")])
    mark = sim.mark()

    decision = sim.exit("a", at=1.0)

    assert decision.stop == ()
    assert sim.states() == {"a": State.BACKOFF, "b": State.RUNNING}
    sim.run_until(2.0)
    assert sim.log[mark:] == [(1.5, "start", "a")]


def test_after_a_group_waits_for_every_service_in_it() -> None:
    children = [svc("a", group="g"), svc("b", group="h"), svc("c", group="g"), svc("app", after="g")]
    sim = Sim.of(children, [grp("g"), grp("h")], hang="c")
    assert sim.row("app").waiting_for == ("c",)  # "a" is ready already; "b" is not in "g"
    sim.hang.clear()
    sim.ready("c")
    assert sim.pull() == (("app",), ())


def test_a_groups_after_holds_for_every_service_in_it() -> None:
    children = [svc("gw"), svc("a", group="g"), svc("b", group="inner"), svc("c")]
    groups = [grp("g", after="gw"), grp("inner", group="g")]
    sim = Sim.of(children, groups, hang="gw")
    assert sim.states() == {"gw": State.STARTING, "a": State.WAITING, "b": State.WAITING, "c": State.RUNNING}
    assert sim.row("b").reason == "waiting for 'gw' (starting)"
    assert sim.group("g").state is State.WAITING
    sim.hang.clear()
    sim.ready("gw")
    sim.settle()
    assert sim.running() == {"gw", "a", "b", "c"}
    assert sim.group("g").state is State.RUNNING


def test_a_restart_batch_starts_in_dependency_order() -> None:
    children = [
        svc("a", group="g"),
        svc("b", group="g", after="a"),
        svc("c", group="g", after="b"),
        svc("d", group="g"),
    ]
    sim = Sim.of(children, [grp("g", ALL)], hang="a")
    sim.hang.clear()
    sim.ready("a")
    sim.settle()
    sim.hang.update("abcd")
    mark = sim.mark()

    sim.exit("d", at=1.0)

    assert sim.stops(mark) == ["c"]  # each after what starts after it
    for name, then in (("c", ["c", "b"]), ("b", ["c", "b", "a"])):
        sim.stopped(name)
        sim.pull()
        assert sim.stops(mark) == then
    assert sim.started(mark) == []  # the batch waits for every stop
    sim.stopped("a")
    sim.pull()
    assert sim.started(mark) == ["a", "d"]
    for name, then in (("a", ["a", "d", "b"]), ("b", ["a", "d", "b", "c"])):
        sim.ready(name)
        sim.pull()
        assert sim.started(mark) == then


def _first_start(sim: Sim, *, hang: str = "", fail: bool = False, hold: str = "") -> None:
    if hold:
        sim.engine.on_stop_requested(hold)
    sim.engine.start_all(0.0)
    sim.hang.update(hang)
    sim.settle()
    if fail:
        sim.exit("a", at=1.0)


#: How the first start goes, for "a", "b" (after "a") and "c"; and whether it has settled.
FIRST_STARTS = {
    "all ready": ({}, True),
    "one still starting": ({"hang": "c"}, False),
    "one waits behind one still starting": ({"hang": "a"}, False),
    "one waits behind one whose first start failed and backs off": ({"hang": "a", "fail": True}, True),
    "one waits behind one the operator stopped": ({"hold": "a"}, True),
    "one the operator stopped before it started": ({"hold": "c"}, True),
}


@pytest.mark.parametrize("how", list(FIRST_STARTS))
def test_startup_settled(how: str) -> None:
    sim = Sim.of([svc("a", backoff=STEADY), svc("b", after="a"), svc("c")], start=False)
    kwargs, settled = FIRST_STARTS[how]

    _first_start(sim, **kwargs)  # type: ignore[arg-type]

    assert sim.engine.startup_settled() is settled
    sim.engine.stop_all()
    assert sim.engine.startup_settled()  # shut down: nothing is pending any more


def test_startup_settles_when_a_service_fails_for_good() -> None:
    sim = Sim.of([svc("a", intensity=0), svc("b", after="a")], hang="a")
    assert not sim.engine.startup_settled()
    sim.exit("a", Exit.START_TIMEOUT, at=5.0)
    assert sim.states() == {"a": State.FAILED, "b": State.WAITING}
    assert sim.engine.startup_settled()


def test_readiness_after_a_stop_was_requested_does_not_undo_the_stop() -> None:
    sim = Sim.of(services("a"), hang="a")
    sim.engine.on_stop_requested("a")
    sim.engine.on_ready("a", 0.1)
    assert sim.row("a").state is State.STOPPING


# -- failed units and their revival -----------------------------------------------------------------------


def test_a_group_inside_a_failed_group_says_when_the_failed_group_comes_back() -> None:
    groups = [
        grp("outer", intensity=0, revive_after=50.0),
        grp("g", group="outer", critical=True, revive_after=5.0),
    ]
    children = [svc("o", group="outer"), svc("b", group="g", critical=True, intensity=0), svc("x")]
    sim = Sim.of(children, groups)

    decision = sim.exit("b", at=1.0)  # "b", then "g", then "outer" exhausted (0 restarts each)
    sim.settle()

    assert decision.failed == ("outer", "g", "o", "b")
    failed_at = 1.0
    assert [(g.name, g.state, g.reason, g.revive_at) for g in sim.engine.group_status()] == [
        ("outer", State.FAILED, sim.group("outer").reason, failed_at + 50.0),
        ("g", State.FAILED, "its group 'outer' failed", failed_at + 50.0),  # not "g"'s own 5 s
    ]
    assert [(r.name, r.reason, r.revive_at) for r in sim.engine.status()] == [
        ("o", "its group 'outer' failed", failed_at + 50.0),
        ("b", "its group 'outer' failed", failed_at + 50.0),
        ("x", None, None),
    ]
    sim.run_until(failed_at + 49.0)
    assert sim.group("g").state is State.FAILED
    sim.run_until(failed_at + 50.0)
    assert sim.running() == {"o", "b", "x"}


def failing_alone(**b: Any) -> Sim:
    """Services "a", "b" and "c" (after "b"), up; then "b" exits and fails at once (intensity 0)."""
    sim = Sim.of([svc("a"), svc("b", intensity=0, **b), svc("c", after="b")])
    assert sim.exit("b", at=1.0).failed == ("b",)
    sim.settle()
    return sim


def test_an_operator_start_revives_a_failed_service_with_a_fresh_budget() -> None:
    sim = Sim.of([svc("a"), svc("b", intensity=2), svc("c", after="b")])
    for t in (1.0, 2.0, 3.0):
        sim.exit("b", at=t)
        sim.settle()
    assert sim.states() == {"a": State.RUNNING, "b": State.FAILED, "c": State.RUNNING}
    assert sim.engine.next_deadline() is None
    mark = sim.mark()

    assert sim.engine.on_start_requested("b", 4.0) == Decision(start=("b",))

    sim.now = 4.0
    sim.settle()
    assert sim.started(mark) == ["b"]  # at once, no backoff
    assert (sim.row("b").reason, sim.row("b").restarts, sim.row("b").consecutive_failures) == (None, 2, 0)
    for t in (4.1, 4.2):  # two restarts within 5 s again: the old ones are forgotten
        assert sim.exit("b", at=t).failed == ()
        sim.settle()
    assert sim.exit("b", at=4.3).failed == ("b",)


def test_a_failed_service_comes_back_on_its_own_after_revive_after() -> None:
    sim = failing_alone(revive_after=30.0)
    assert sim.row("b").revive_at == 31.0
    assert sim.engine.next_deadline() == 31.0
    mark = sim.mark()

    sim.run_until(30.9)
    assert sim.started(mark) == []
    sim.run_until(31.0)

    assert sim.log[mark:] == [(31.0, "start", "b")]
    assert (sim.row("b").state, sim.row("b").reason, sim.row("b").revive_at) == (State.RUNNING, None, None)
    assert sim.row("b").restarts == 1  # a revival is a restart the supervisor made on its own ...
    assert sim.exit("b", at=32.0).failed == ("b",)  # ... with a fresh budget (here: none)
    assert sim.row("b").revive_at == 62.0


@pytest.mark.parametrize(
    ("policy", "group", "service", "revive_at"),
    [
        (None, None, None, None),
        (10.0, None, None, 11.0),
        (10.0, 20.0, None, 21.0),
        (10.0, 20.0, 5.0, 6.0),
        (None, None, 5.0, 6.0),
    ],
)
def test_revive_after_defaults_to_the_groups_and_then_the_supervisors(
    policy: float | None, group: float | None, service: float | None, revive_at: float | None
) -> None:
    groups = [grp("outer", revive_after=group), grp("g", group="outer")]
    children = [svc("b", group="g", intensity=0, revive_after=service)]
    sim = Sim.of(children, groups, SupervisorPolicy(ONE, revive_after=policy))
    sim.exit("b", at=1.0)
    assert sim.row("b").revive_at == revive_at
    assert sim.engine.next_deadline() == revive_at


def test_a_failed_group_is_revived_whole_with_fresh_budgets() -> None:
    children = [
        svc("gw"),
        svc("a", group="g"),
        svc("b", group="g", after="a", critical=True, intensity=0),
        svc("c", group="g", after="b"),
    ]
    sim = Sim.of(children, [grp("g", ALL, intensity=1, revive_after=60.0, after="gw")])
    sim.exit("b", at=1.0)
    sim.settle()
    decision = sim.exit("b", at=2.0)  # "g" exhausts its own budget: it fails, alone
    sim.settle()
    assert decision.failed == ("g", "a", "b", "c")
    assert sim.states() == {"gw": State.RUNNING, "a": State.FAILED, "b": State.FAILED, "c": State.FAILED}
    reason = (
        "group 'g' failed because critical 'b' failed: boom; too many restarts: 1 restart in 0.0 s exceeds "
        "intensity 0 per 5.0 s; too many restarts: 2 restarts in 1.0 s exceeds intensity 1 per 5.0 s"
    )
    assert sim.group("g") == GroupStatus(
        name="g",
        group=None,
        strategy=ALL,
        critical=False,
        state=State.FAILED,
        restarts=1,
        services=("a", "b", "c"),
        reason=reason,
        revive_at=62.0,
    )
    assert [(r.reason, r.revive_at) for r in sim.engine.status()] == [(None, None)] + [
        ("its group 'g' failed", 62.0)
    ] * 3
    mark = sim.mark()

    sim.run_until(62.0)

    assert sim.started(mark) == ["a", "b", "c"]  # each after what it starts after
    assert sim.group("g").state is State.RUNNING
    assert (sim.group("g").reason, sim.group("g").revive_at) == (None, None)
    sim.exit("b", at=63.0)  # a fresh budget for "g": restarted once more ...
    sim.settle()
    assert sim.group("g").restarts == 2
    assert sim.exit("b", at=64.0).failed == ("g", "a", "b", "c")  # ... and failed again at the second


def test_an_operator_start_of_a_failed_group_revives_it_at_once() -> None:
    sim = Sim.of(
        [svc("a", group="g", critical=True, intensity=0), svc("b", group="g")], [grp("g", intensity=0)]
    )
    assert sim.exit("a", at=1.0).failed == ("g", "a", "b")
    sim.settle()

    assert sim.engine.on_start_requested("g", 2.0) == Decision(start=("a", "b"))

    sim.now = 2.0
    sim.settle()
    assert sim.running() == {"a", "b"}
    assert (sim.group("g").state, sim.group("g").reason) == (State.RUNNING, None)
    assert sim.row("a").restarts == 0  # an operator start is not a restart


def test_an_operator_stop_of_a_failed_unit_cancels_its_revival() -> None:
    sim = failing_alone(revive_after=30.0)

    assert sim.engine.on_stop_requested("b") == Decision()

    assert (sim.row("b").state, sim.row("b").held, sim.row("b").revive_at) == (State.FAILED, True, None)
    sim.run_until(1000.0)
    assert sim.started().count("b") == 1
    sim.engine.on_start_requested("b", 1000.0)
    sim.settle()
    assert sim.running() == {"a", "b", "c"}


def test_a_revival_on_its_own_keeps_what_the_operator_stopped_stopped() -> None:
    # systemctl stop semantics: a service the operator stopped stays stopped through restarts of its
    # group, and a revival of its group is one.
    children = [svc("a", group="g", critical=True, intensity=0), svc("b", group="g"), svc("c", group="g")]
    sim = Sim.of(children, [grp("g", intensity=0, revive_after=10.0)])
    sim.engine.on_stop_requested("b")
    sim.settle()
    assert sim.exit("a", at=1.0).failed == ("g", "a", "b", "c")
    sim.settle()

    sim.run_until(11.0)

    assert sim.states() == {"a": State.RUNNING, "b": State.STOPPED, "c": State.RUNNING}
    assert sim.row("b").held
    sim.now = 12.0
    sim.engine.on_start_requested("b", sim.now)
    sim.settle()
    assert sim.running() == {"a", "b", "c"}


def test_an_operator_start_of_a_service_in_a_failed_group_revives_the_group() -> None:
    # The service is down because its group failed: starting it starts the group. Before, only the
    # service came back, its group stayed failed, and once the group's failures were older than its
    # period the service's next exhaustion left it in backoff for ever.
    children = [svc("a", group="g", critical=True, intensity=0), svc("b", group="g"), svc("x")]
    sim = Sim.of(children, [grp("g", intensity=1, period=10.0)])
    sim.exit("a", at=1.0)
    sim.settle()
    assert sim.exit("a", at=2.0).failed == ("g", "a", "b")
    sim.settle()
    assert sim.row("a").reason == "its group 'g' failed"

    assert sim.engine.on_start_requested("a", 50.0) == Decision(start=("a", "b"))

    sim.now = 50.0
    sim.settle()
    assert sim.running() == {"a", "b", "x"}
    assert sim.group("g").state is State.RUNNING
    sim.exit("a", at=51.0)  # "g" has a fresh budget: restarted ...
    sim.settle()
    assert sim.running() == {"a", "b", "x"}
    assert sim.exit("a", at=52.0).failed == ("g", "a", "b")  # ... then failed again, not left hanging


def test_nothing_is_to_be_revived_once_the_supervisor_has_given_up() -> None:
    children = [svc("a", intensity=0, revive_after=10.0), svc("b", critical=True, intensity=0)]
    sim = Sim.of(children, policy=SupervisorPolicy(ONE, revive_after=10.0))
    sim.exit("a", at=1.0)
    assert sim.row("a").revive_at == 11.0

    assert sim.exit("b", at=2.0).give_up is not None

    assert [(r.name, r.state, r.revive_at) for r in sim.engine.status()] == [
        ("a", State.FAILED, None),
        ("b", State.FAILED, None),
    ]
    assert sim.engine.next_deadline() is None


def test_a_groups_state_is_derived_from_its_services_but_failed_is_its_own() -> None:
    children = [
        svc("a", group="g", intensity=0),
        svc("b", group="g", backoff=STEADY),
        svc("c", group="g", restart=T),
    ]
    sim = Sim.of(children, [grp("g")], hang="b")
    assert sim.group("g").state is State.STARTING
    sim.hang.clear()
    sim.ready("b")
    assert sim.group("g").state is State.RUNNING
    sim.exit("c", Exit.NORMAL, at=1.0)
    assert sim.group("g").state is State.RUNNING  # one running is enough

    sim.exit("b", at=1.0)
    assert sim.group("g").state is State.BACKOFF
    sim.run_until(1.5)
    assert sim.exit("a", at=2.0).failed == ("a",)
    # "a" failed alone: the group shows it, but did not fail itself, and is not revived as a whole.
    assert (sim.group("g").state, sim.group("g").reason, sim.group("g").revive_at) == (
        State.FAILED,
        None,
        None,
    )

    sim.engine.on_stop_requested("b")
    assert sim.group("g").state is State.STOPPING
    sim.settle()
    assert sim.group("g").state is State.FAILED
    sim.engine.on_start_requested("a", 3.0)
    sim.now = 3.0
    sim.settle()
    assert sim.group("g").state is State.RUNNING
    sim.engine.on_stop_requested("a")
    sim.settle()
    assert sim.states() == {"a": State.STOPPED, "b": State.STOPPED, "c": State.EXITED}
    assert sim.group("g").state is State.EXITED
    sim.engine.on_stop_requested("c")
    assert sim.group("g").state is State.EXITED  # "c" had ended already: nothing to stop


# -- backoff ----------------------------------------------------------------------------------------------


def test_a_group_restarted_whole_waits_for_its_own_backoff_which_grows() -> None:
    # "g" is restarted whole each time "b" fails (intensity 0, critical); "g"'s backoff applies, and grows
    # while "b" keeps failing to start, also after "g" was once up for longer than reset_after. Before,
    # the group's count started over at every restart once it had been up that long.
    children = [svc("a", group="g"), svc("b", group="g", critical=True, intensity=0)]
    sim = Sim.of(children, [grp("g", ALL, backoff=STEADY, intensity=100, period=1000.0)])
    sim.now = 100.0  # up for 100 s > reset_after (30 s)
    sim.hang.add("b")
    delays: list[float] = []
    for _ in range(4):
        decision = sim.exit("b", Exit.START_TIMEOUT if delays else Exit.ERROR, at=sim.now + 1.0)
        delays.append(decision.delay)
        sim.run_until(sim.now + decision.delay)
        assert sim.states() == {"a": State.RUNNING, "b": State.STARTING}
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert sim.group("g").restarts == 4

    sim.hang.clear()
    sim.ready("b")
    sim.now += 30.0  # up (all its services ready) for reset_after: the count starts over
    assert sim.exit("b", at=sim.now).delay == 0.5
