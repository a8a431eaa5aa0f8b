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
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import DriverAction as Action
from strategies import Step, Tree, backoff_policies, steps, supervision_trees

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


def test_a_group_taken_along_comes_back_whole_its_temporary_services_too() -> None:
    # OTP restarts a nested supervisor with all its children: one that had ended, or a temporary one,
    # starts again with its group; at the root, a temporary taken along is gone for good.
    children = [svc("a"), svc("t", T), svc("u", T, group="g"), svc("v", R, group="g"), svc("w", T, group="g")]
    sim = Sim.of(children, [grp("g")], SupervisorPolicy(ALL, intensity=100))
    sim.exit("v", Exit.NORMAL, at=0.5)
    sim.exit("w", Exit.ERROR, at=0.5)
    assert sim.states() == {n: State.EXITED if n in "vw" else State.RUNNING for n in "atuvw"}
    mark = sim.mark()

    decision = sim.exit("a", at=1.0)
    sim.settle()

    assert decision.start == ("a", "u", "v", "w")
    assert decision.finished == ("t",)
    assert sim.started(mark) == ["a", "u", "v", "w"]
    assert sim.states() == {n: State.EXITED if n == "t" else State.RUNNING for n in "atuvw"}


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
    # A group shows failed when it failed (itself, or with the group it is in) and says why; one in which
    # something failed alone while the rest runs shows running.
    expected = {"b": set(), "g": {"g"}, "outer": {"outer", "g"}}[boundary]
    assert {g.name for g in sim.engine.group_status() if g.state is State.FAILED} == expected
    assert {g.name for g in sim.engine.group_status() if g.reason is not None} == expected


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
        for n in range(20):
            if sim.exit(name, at=sim.now + step).failed:
                return n
            sim.settle()
        raise AssertionError(f"{name} never failed")

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
    # "b", stopped by the operator, stays stopped (not failed) while its group is down.
    assert sim.exit("a", at=1.0).failed == ("g", "a", "c")
    sim.settle()
    assert sim.states() == {"a": State.FAILED, "b": State.STOPPED, "c": State.FAILED}

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


def test_an_operator_start_of_a_service_in_a_stopped_group_lets_the_group_restart_again() -> None:
    # Found by test_property_with_the_operator_...: the operator stops a group, starts one of its
    # services; that critical service exhausts its budget and the group is to restart whole. Before, the
    # group was still held as a whole, so its restart was skipped and the service stayed in backoff for
    # ever (no start_at, no deadline).
    children = [svc("a", group="g", critical=True, intensity=0), svc("b", group="g")]
    sim = Sim.of(children, [grp("g", ALL)])
    sim.engine.on_stop_requested("g")
    sim.settle()
    sim.engine.on_start_requested("a", 1.0)
    sim.now = 1.0
    sim.settle()
    assert sim.states() == {"a": State.RUNNING, "b": State.STOPPED}

    decision = sim.exit("a", at=2.0)  # "g" restarts whole: "a" comes back; "b", still stopped, does not
    sim.settle()

    assert decision.start == ("a",)
    assert sim.states() == {"a": State.RUNNING, "b": State.STOPPED}
    assert (sim.group("g").restarts, sim.row("b").held) == (1, True)


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
    # "a" failed alone: its own row shows it; the group, with "b" running, runs (it did not fail itself,
    # has no reason and is not revived as a whole).
    assert (sim.group("g").state, sim.group("g").reason, sim.group("g").revive_at) == (
        State.RUNNING,
        None,
        None,
    )

    sim.engine.on_stop_requested("b")
    assert sim.group("g").state is State.STOPPING
    sim.settle()
    assert sim.group("g").state is State.FAILED  # nothing of it runs, and a service of it failed
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


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (6, 1.0), (50, 1.0), (5000, 1.0)],
)
def test_backoff_grows_and_is_capped(failures: int, delay: float) -> None:
    policy = BackoffPolicy(initial=0.1, multiplier=2.0, max_delay=1.0, jitter=0.0)
    assert policy.delay(failures) == pytest.approx(delay)


@pytest.mark.parametrize(("rand", "delay"), [(0.0, 0.8), (0.25, 0.9), (0.5, 1.0), (1.0, 1.2)])
def test_backoff_jitter(rand: float, delay: float) -> None:
    policy = BackoffPolicy(initial=1.0, jitter=0.2)
    assert policy.delay(1, rand) == pytest.approx(delay)


def test_backoff_with_no_initial_delay_is_zero() -> None:
    assert BackoffPolicy(initial=0.0, multiplier=10.0).delay(10_000, 1.0) == 0.0


@pytest.mark.parametrize(("failures", "rand"), [(0, 0.5), (1, -0.1), (1, 1.1), (1, math.nan)])
def test_backoff_refuses_bad_arguments(failures: int, rand: float) -> None:
    with pytest.raises(ValueError, match=r"^(failures|rand) must be"):
        BackoffPolicy().delay(failures, rand)


def fail_and_restart(sim: Sim, name: str, at: float) -> Decision:
    """``name`` fails at ``at``; it is restarted (and ready) as soon as its backoff allows."""
    decision = sim.exit(name, at=at)
    assert name in decision.start
    sim.run_until(at + decision.delay)
    assert sim.active[name] == "running"
    return decision


def test_the_engine_backs_off_more_with_each_consecutive_failure() -> None:
    sim = Sim.of([svc("a", backoff=STEADY), svc("b", backoff=STEADY)])
    delays = []
    for _ in range(8):
        delays.append(fail_and_restart(sim, "b", sim.now + 1.0).delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert sim.row("b").consecutive_failures == 8
    assert sim.row("a").consecutive_failures == 0  # every service counts its own


def test_the_engine_draws_jitter_from_the_injected_random() -> None:
    policy = BackoffPolicy(initial=1.0, jitter=0.5)
    delays = []
    for _ in range(2):
        sim = Sim.of([svc("b", backoff=policy)], seed=7)
        delays.append([fail_and_restart(sim, "b", t * 10.0).delay for t in range(1, 4)])
    expected_rng = random.Random(7)
    assert delays[0] == delays[1] == [policy.delay(n, expected_rng.random()) for n in (1, 2, 3)]
    assert len(set(delays[0])) == 3


@pytest.mark.parametrize(("uptime", "delay"), [(29.9, 2.0), (30.0, 0.5), (100.0, 0.5)])
def test_backoff_resets_after_stable_uptime(uptime: float, delay: float) -> None:
    sim = Sim.of([svc("b", backoff=STEADY)])  # reset_after=30
    for _ in range(2):
        fail_and_restart(sim, "b", sim.now + 1.0)
    assert sim.row("b").ready_at == sim.now

    decision = sim.exit("b", at=sim.now + uptime)

    assert decision.delay == delay
    assert sim.row("b").consecutive_failures == (1 if delay == 0.5 else 3)


def test_uptime_is_measured_from_readiness_not_from_start() -> None:
    sim = Sim.of([svc("a", backoff=STEADY)])
    sim.hang.add("a")
    sim.exit("a", at=1.0)
    sim.run_until(1.5)  # started at 1.5 ...
    sim.now = 21.5
    sim.ready("a")  # ... ready 20 s later ...

    decision = sim.exit("a", at=41.5)  # ... up for 20 s, 40 s after its start

    assert decision.delay == 1.0  # the second consecutive failure: no reset


def test_stable_uptime_also_resets_when_the_service_is_stopped() -> None:
    sim = Sim.of([svc(n, backoff=STEADY) for n in "ab"], policy=SupervisorPolicy(ALL, intensity=100))
    for t in (1.0, 3.0):  # "b" fails twice, under one_for_all ...
        decision = sim.exit("b", at=t)
        sim.run_until(t + decision.delay)
    assert sim.row("b").consecutive_failures == 2

    sim.exit("a", at=100.0)  # ... runs for a long time, and is stopped as collateral of "a"
    sim.settle()

    assert sim.row("b").consecutive_failures == 0
    assert sim.row("a").consecutive_failures == 1


def test_one_for_one_restarts_are_independent() -> None:
    sim = Sim.of([svc(n, backoff=STEADY) for n in "abcd"])
    sim.exit("a", at=1.0)
    sim.exit("c", at=1.2)
    assert sim.engine.next_deadline() == 1.5
    mark = sim.mark()
    sim.now = 1.7
    sim.settle()
    assert sim.started(mark) == ["a", "c"]  # "c" does not wait for "a" to be ready


# -- stopping: reverse dependency order, independent ones at once ----------------------------------------


def test_stop_all_stops_in_reverse_dependency_order_and_independent_ones_at_once() -> None:
    children = [svc("a"), svc("b", after="a"), svc("c", after="b"), svc("d"), svc("e", after="a")]
    sim = Sim.of(children)
    sim.stuck.update("abcde")

    decision = sim.engine.stop_all()

    assert decision == Decision(stop=("e", "d", "c", "b", "a"))
    assert sim.pull() == ((), ("e", "d", "c"))  # what nothing running starts after
    assert sim.engine.closed
    assert sim.engine.given_up is None
    for name, then in (("c", ("b",)), ("d", ()), ("e", ()), ("b", ("a",))):
        sim.stopped(name)
        assert sim.pull() == ((), then)
    sim.stopped("a")
    assert set(sim.states().values()) == {State.STOPPED}
    assert sim.engine.stop_all() == Decision()
    assert sim.engine.start_due(100.0) == ()
    with pytest.raises(TransitionError, match="shutting down"):
        sim.engine.on_start_requested("a", 2.0)


def test_a_stop_that_hangs_holds_back_only_what_it_starts_after() -> None:
    children = [svc("a"), svc("b", after="a"), svc("c"), svc("d", after="c")]
    sim = Sim.of(children)
    sim.stuck.add("d")

    sim.engine.stop_all()
    sim.settle()

    assert sim.states() == {"a": State.STOPPED, "b": State.STOPPED, "c": State.STOPPING, "d": State.STOPPING}
    assert sim.active == {"c": "running", "d": "stopping"}  # "c" is not handed out before "d" has stopped
    assert sim.stops() == ["d", "b", "a"]
    sim.stuck.clear()
    sim.settle()
    assert set(sim.states().values()) == {State.STOPPED}
    assert sim.stops() == ["d", "b", "a", "c"]


def test_stopping_while_starts_are_pending() -> None:
    children = [svc("a"), svc("b", after="a"), svc("c", backoff=STEADY), svc("d")]
    sim = Sim.of(children, hang="a")
    sim.exit("c", at=1.0)  # "c" backs off; "b" waits for "a", which never becomes ready
    assert sim.states() == {"a": State.STARTING, "b": State.WAITING, "c": State.BACKOFF, "d": State.RUNNING}

    assert sim.engine.stop_all() == Decision(stop=("d", "a"))

    assert sim.engine.startup_settled()
    sim.settle()
    assert set(sim.states().values()) == {State.STOPPED}
    assert sim.stops() == ["d", "a"]
    assert sim.engine.next_deadline() is None


def test_a_group_restart_stops_in_reverse_dependency_order_and_waits_for_what_is_outside() -> None:
    children = [
        svc("a", group="g"),
        svc("b", group="g", after="a"),
        svc("out", after="b"),
        svc("c", group="g"),
    ]
    sim = Sim.of(children, [grp("g", ALL)])
    sim.stuck.add("b")
    mark = sim.mark()

    sim.exit("c", at=1.0)

    # "out" starts after "b" but is not in "g": it is not stopped, and "b" does not wait for it.
    assert sim.stops(mark) == ["b"]
    assert sim.active["out"] == "running"
    sim.stuck.clear()
    sim.settle()
    assert sim.stops(mark) == ["b", "a"]
    assert sim.started(mark) == ["a", "c", "b"]
    assert sim.running() == {"a", "b", "out", "c"}


# -- the operator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy))
def test_an_operator_stop_is_not_restarted_and_takes_nothing_along(strategy: Strategy) -> None:
    sim = quartet(strategy)

    decision = sim.engine.on_stop_requested("b")

    assert decision == Decision(stop=("b",))  # only "b", whatever the strategy
    assert sim.row("b").state is State.STOPPING
    sim.settle()
    assert (sim.row("b").state, sim.row("b").held, sim.row("b").last_exit) == (
        State.STOPPED,
        True,
        Exit.STOPPED,
    )
    sim.run_until(1000.0)
    assert sim.engine.next_deadline() is None
    assert sim.states() == {"a": State.RUNNING, "b": State.STOPPED, "c": State.RUNNING, "d": State.RUNNING}


def test_an_operator_stop_of_a_group_stops_its_services_in_order_and_keeps_them_stopped() -> None:
    children = [svc("x"), svc("a", group="g"), svc("b", group="g", after="a"), svc("y", after="g")]
    sim = Sim.of(children, [grp("g", ALL)])
    mark = sim.mark()

    assert set(sim.engine.on_stop_requested("g").stop) == {"a", "b"}

    sim.settle()
    assert sim.stops(mark) == ["b", "a"]  # "y" starts after "g" but is not in it: it keeps running
    assert sim.states() == {"x": State.RUNNING, "a": State.STOPPED, "b": State.STOPPED, "y": State.RUNNING}
    assert sim.group("g").state is State.STOPPED
    sim.engine.on_start_requested("g", 1.0)
    sim.now = 1.0
    sim.settle()
    assert sim.started(mark) == ["a", "b"]


def test_an_operator_stop_survives_a_group_restart() -> None:
    sim = quartet(ALL)
    assert sim.engine.on_stop_requested("b") == Decision(stop=("b",))
    sim.settle()
    mark = sim.mark()

    decision = sim.exit("a", at=2.0)

    assert (decision.stop, decision.start) == (("d", "c"), ("a", "c", "d"))
    sim.run_until(2.5)
    assert sim.started(mark) == ["a", "c", "d"]
    assert sim.row("b").state is State.STOPPED


def test_operator_stops_and_starts_never_count_toward_a_budget() -> None:
    sim = Sim.of([svc("a"), svc("b", critical=True)], policy=SupervisorPolicy(ONE, intensity=0))
    for t in range(10):
        sim.now = float(t)
        assert sim.engine.on_stop_requested("b") == Decision(stop=("b",))
        sim.settle()
        assert sim.engine.on_start_requested("b", sim.now) == Decision(start=("b",))
        sim.settle()
    for t in range(10, 20):  # a restart, as the supervisor's restart_service does it: stop, then start
        sim.now = float(t)
        sim.engine.on_stop_requested("b")
        sim.engine.on_start_requested("b", sim.now)
        sim.settle()
    assert sim.engine.given_up is None
    assert sim.row("b").restarts == 0
    assert sim.started().count("b") == 21


def test_a_stop_reported_as_an_exit_is_held_and_not_counted() -> None:
    sim = Sim.of([svc("a"), svc("b", critical=True)], policy=SupervisorPolicy(ONE, intensity=0))
    assert sim.exit("b", Exit.STOPPED, at=1.0) == Decision()
    assert (sim.row("b").state, sim.row("b").held) == (State.STOPPED, True)
    assert sim.engine.given_up is None


def test_an_operator_stop_cancels_a_pending_restart() -> None:
    sim = Sim.of([svc("b", backoff=STEADY)])
    sim.exit("b", at=1.0)
    assert sim.engine.next_deadline() == 1.5

    assert sim.engine.on_stop_requested("b") == Decision()

    assert sim.engine.next_deadline() is None
    sim.run_until(100.0)
    assert sim.row("b").state is State.STOPPED
    assert sim.started() == ["b"]


def test_an_operator_start_skips_the_backoff_and_resets_the_failures() -> None:
    sim = Sim.of([svc(n, backoff=STEADY) for n in "abcd"])
    for name in "bcd":
        sim.exit(name, at=1.0)
    mark = sim.mark()

    assert sim.engine.on_start_requested("b", 1.1) == Decision(start=("b",))

    sim.now = 1.1
    sim.settle()
    assert sim.started(mark) == ["b"]
    assert (sim.row("b").consecutive_failures, sim.row("b").restarts) == (0, 0)  # not a restart
    sim.run_until(1.5)
    assert sim.started(mark) == ["b", "c", "d"]
    assert sim.row("c").restarts == 1


def test_an_operator_start_of_a_running_service_does_nothing() -> None:
    sim = Sim.of(services("a", "b"))
    assert sim.engine.on_start_requested("b", 1.0) == Decision()
    assert sim.row("b").state is State.RUNNING


def test_an_operator_start_while_stopping_starts_it_once_stopped() -> None:
    sim = Sim.of(services("a", "b"))
    sim.stuck.add("b")
    sim.engine.on_stop_requested("b")
    sim.settle()
    mark = sim.mark()

    assert sim.engine.on_start_requested("b", 1.0) == Decision(start=("b",))

    sim.now = 1.0
    sim.settle()
    assert sim.started(mark) == []  # still stopping
    assert sim.row("b").held is False
    sim.stopped("b")
    sim.settle()
    assert sim.started(mark) == ["b"]


def test_an_operator_can_start_a_finished_temporary_service() -> None:
    sim = Sim.of([svc("a"), svc("b", T)])
    sim.exit("b", Exit.NORMAL, at=1.0)

    assert sim.engine.on_start_requested("b", 2.0) == Decision(start=("b",))

    assert sim.engine.start_due(2.0) == ("b",)


def test_an_operator_stop_before_start_all_keeps_the_service_out() -> None:
    sim = Sim.of([svc("a"), svc("b"), svc("c", after="b"), svc("d")], start=False)
    assert sim.engine.on_stop_requested("b") == Decision()
    assert sim.engine.start_all(0.0) == Decision(start=("a", "c", "d"))
    sim.settle()
    assert sim.states() == {"a": State.RUNNING, "b": State.STOPPED, "c": State.WAITING, "d": State.RUNNING}
    assert sim.row("c").reason == "waiting for 'b' (stopped)"


def test_an_operator_stop_of_a_collateral_service_takes_it_out_of_the_group_restart() -> None:
    sim = quartet(ALL)
    sim.stuck.add("c")
    decision = sim.exit("a", at=1.0)
    assert decision.start == tuple("abcd")

    assert sim.engine.on_stop_requested("c") == Decision()  # already stopping

    sim.stuck.clear()
    sim.run_until(1.5)
    assert (sim.row("c").state, sim.row("c").held) == (State.STOPPED, True)
    assert sim.running() == {"a", "b", "d"}


# -- the status table ------------------------------------------------------------------------------------


def test_status_table() -> None:
    children = [
        svc("a"),
        svc("b", backoff=STEADY, group="g", critical=True),
        svc("c", R, group="g"),
        svc("d", T),
        svc("e", after="b"),
    ]
    sim = Sim.of(children, [grp("g")], start=False)
    sim.engine.start_all(0.0)
    sim.hang.update("bcd")
    sim.settle()
    sim.now = 1.0
    for name in "bcd":
        sim.ready(name)
    sim.pull()
    sim.now = 1.5
    sim.ready("e")
    sim.exit("b", Exit.WATCHDOG, "no heartbeat for 3.0 s", at=2.0)
    sim.exit("c", Exit.NORMAL, at=2.1)
    sim.exit("d", Exit.ERROR, "ValueError: bad frame", at=2.2)
    sim.engine.on_stop_requested("a")
    sim.stuck.add("a")
    sim.pull()

    def status(name: str, restart: Restart, state: State, **fields: Any) -> ChildStatus:
        defaults: dict[str, Any] = {
            "restarts": 0,
            "consecutive_failures": 0,
            "last_exit": None,
            "last_error": None,
            "started_at": 0.0,
            "ready_at": None,
            "ended_at": None,
            "start_at": None,
            "held": False,
        }
        return ChildStatus(name, restart, state, **{**defaults, **fields})

    assert sim.engine.status() == [
        status("a", P, State.STOPPING, ready_at=0.0, held=True),
        status(
            "b", P, State.BACKOFF, consecutive_failures=1, last_exit=Exit.WATCHDOG,
            last_error="no heartbeat for 3.0 s", ready_at=1.0, ended_at=2.0, start_at=2.5, group="g",
            critical=True,
        ),
        status("c", R, State.EXITED, last_exit=Exit.NORMAL, ready_at=1.0, ended_at=2.1, group="g"),
        status(
            "d", T, State.EXITED, consecutive_failures=1, last_exit=Exit.ERROR,
            last_error="ValueError: bad frame", ready_at=1.0, ended_at=2.2,
        ),
        status("e", P, State.RUNNING, started_at=1.0, ready_at=1.5),
    ]  # fmt: skip

    sim.hang.clear()
    sim.run_until(2.6)
    sim.stuck.clear()
    sim.now = 4.0
    sim.settle()
    assert (sim.row("a").state, sim.row("a").ended_at, sim.row("a").last_exit) == (
        State.STOPPED,
        4.0,
        Exit.STOPPED,
    )
    assert (sim.row("b").state, sim.row("b").restarts, sim.row("b").started_at) == (State.RUNNING, 1, 2.5)
    assert sim.engine.group_status() == [
        GroupStatus("g", None, ONE, False, State.RUNNING, 0, ("b", "c"), None, None),
    ]


# -- configuration and misuse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": -1.0}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"max_delay": math.nan}, "max_delay"),
        ({"jitter": 1.5}, "jitter"),
        ({"reset_after": -0.1}, "reset_after"),
    ],
)
def test_backoff_policy_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BackoffPolicy(**kwargs)


BAD_BUDGETS: list[tuple[dict[str, Any], str]] = [
    ({"intensity": -1}, "intensity must be an integer >= 0, got -1"),
    ({"intensity": 1.5}, "intensity must be an integer >= 0, got 1.5"),
    ({"intensity": True}, "intensity must be an integer >= 0, got True"),
    ({"period": 0.0}, "period must be a finite number of seconds > 0, got 0.0"),
    ({"period": math.inf}, "period must be a finite number"),
    ({"period": math.nan}, "period must be a finite number"),
    ({"period": "5"}, "period must be a finite number"),
    ({"revive_after": 0}, "revive_after must be a finite number of seconds > 0, got 0"),
    ({"revive_after": math.inf}, "revive_after must be"),
    ({"revive_after": -3.0}, "revive_after must be"),
]


@pytest.mark.parametrize("unit", ["supervisor", "group", "service"])
@pytest.mark.parametrize(("kwargs", "match"), BAD_BUDGETS)
def test_budget_validation(unit: str, kwargs: dict[str, Any], match: str) -> None:
    makers: dict[str, Any] = {
        "supervisor": SupervisorPolicy,
        "group": lambda **kw: GroupSpec("g", **kw),
        "service": lambda **kw: ChildSpec("s", **kw),
    }
    with pytest.raises(ValueError, match=match):
        makers[unit](**kwargs)


def test_defaults() -> None:
    assert SupervisorPolicy() == SupervisorPolicy(ONE, intensity=3, period=5.0, revive_after=None)
    assert BackoffPolicy() == BackoffPolicy(0.1, 2.0, 30.0, 0.1, 60.0)
    assert ChildSpec("x") == ChildSpec(
        "x",
        P,
        BackoffPolicy(),
        after=(),
        group=None,
        critical=False,
        intensity=None,
        period=None,
        revive_after=None,
    )
    assert GroupSpec("g") == GroupSpec(
        "g", ONE, None, None, BackoffPolicy(), group=None, critical=False, after=(), revive_after=None
    )
    assert ChildSpec("x", after="y").after == ("y",)  # one name, or several


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ChildSpec("")
    with pytest.raises(ValueError, match="non-empty"):
        GroupSpec("")
    with pytest.raises(TypeError):
        ChildSpec("x", "permanent")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        GroupSpec("g", "one_for_all")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("children", "groups", "match"),
    [
        ([svc("a"), svc("a")], [], "duplicate unit name 'a'"),
        ([svc("a")], [grp("a")], "duplicate unit name 'a'"),
        ([svc("a", group="nope")], [], "'a' is in group 'nope', which is not a group"),
        ([svc("a")], [grp("g", group="h"), grp("h", group="g")], "groups nest in a cycle: g -> h -> g"),
        ([svc("a", after="nope")], [], "'a' starts after 'nope', which is not a service or group"),
        ([svc("a", group="g", after="g")], [grp("g")], "'a' cannot start after 'g': one contains the other"),
        ([svc("a", group="g")], [grp("g", after="a")], "'g' cannot start after 'a': one contains the other"),
        ([svc("a", after="b"), svc("b", after="a")], [], "dependency cycle: a -> b -> a"),
        ([svc("a", after="b"), svc("b")], [], "children must be in start order: 'a' starts after 'b'"),
    ],
)
def test_trees_that_cannot_be_are_refused(
    children: list[ChildSpec], groups: list[GroupSpec], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RestartEngine(ROOMY, children, groups=groups)


def test_unknown_units() -> None:
    sim = Sim.of([svc("a", group="g")], [grp("g")])
    with pytest.raises(ValueError, match="unknown service 'x'"):
        sim.engine.on_ready("x", 0.0)
    with pytest.raises(ValueError, match="'g' is a group, not a service"):
        sim.engine.on_exit("g", Exit.ERROR, 0.0)
    with pytest.raises(ValueError, match="unknown service or group 'x'"):
        sim.engine.on_stop_requested("x")
    with pytest.raises(ValueError, match="unknown service or group 'x'"):
        sim.engine.on_start_requested("x", 0.0)


def test_impossible_reports_are_refused() -> None:
    sim = Sim.of([svc("a", backoff=STEADY)], start=False)
    with pytest.raises(TransitionError, match="'a' cannot become ready while stopped"):
        sim.engine.on_ready("a", 0.0)
    sim.engine.start_all(0.0)
    sim.settle()
    with pytest.raises(TransitionError, match="already called"):
        sim.engine.start_all(0.0)
    with pytest.raises(TransitionError, match="'a' cannot finish stopping while running"):
        sim.engine.on_stopped("a", 1.0)
    sim.exit("a", at=1.0)
    with pytest.raises(TransitionError, match="'a' cannot exit while backoff"):
        sim.engine.on_exit("a", Exit.ERROR, 1.0)


def test_exit_abnormal() -> None:
    assert {e for e in Exit if e.abnormal} == {
        Exit.ERROR,
        Exit.CANCELLED,
        Exit.START_TIMEOUT,
        Exit.WATCHDOG,
        Exit.BLOCKED,
    }


def test_the_engine_shows_its_configuration() -> None:
    policy = SupervisorPolicy(REST, intensity=2, period=1.0)
    specs = [svc("x", group="g"), svc("y", T, group="inner"), svc("z")]
    groups = [grp("g"), grp("inner", group="g")]
    engine = RestartEngine(policy, iter(specs), groups=iter(groups))
    assert engine.policy is policy
    assert engine.specs == tuple(specs)
    assert engine.group_specs == tuple(groups)
    assert engine.units() == ("x", "y", "z", "g", "inner")
    assert engine.services_of("g") == ("x", "y")
    assert engine.services_of("inner") == ("y",)
    assert engine.services_of("z") == ("z",)


# -- properties, over random trees and random events -------------------------------------------------------


@attrs.define
class Budgets:
    """An account of every unit's restart budget kept apart from the engine, from the rules as documented:
    each unit counts its restarts in a sliding window (within budget: it restarts; one too many: it fails,
    or, if critical, its group counts one), a group restarted whole gives everything in it fresh budgets,
    a failed unit comes back after its revive_after with fresh budgets for all in it."""

    tree: Tree
    windows: dict[str, list[float]] = attrs.Factory(dict)
    #: Per unit, the times its own restarts were granted, one list per stretch between two fresh budgets.
    granted: dict[str, list[list[float]]] = attrs.Factory(dict)
    #: Failed units (the unit that failed, not what failed with it) and when each comes back (None: never).
    failed: dict[str, float | None] = attrs.Factory(dict)

    def _inherited(self, name: str, field: str) -> Any:
        unit = self.tree.unit(name)
        while getattr(unit, field) is None and unit.group is not None:
            unit = self.tree.unit(unit.group)
        value = getattr(unit, field)
        return getattr(self.tree.policy, field) if value is None else value

    def intensity(self, name: str) -> int:
        return int(self._inherited(name, "intensity"))

    def period(self, name: str) -> float:
        return float(self._inherited(name, "period"))

    def revive_after(self, name: str) -> float | None:
        value = self._inherited(name, "revive_after")
        return None if value is None else float(value)

    def critical(self, name: str) -> bool:
        return self.tree.unit(name).critical

    def inside(self, name: str) -> list[str]:
        """The units in a group, nested ones and their services included (for a service: none)."""
        return [u.name for u in self.tree.units if name in self.tree.ancestors(u.name)]

    def fresh(self, names: Iterable[str]) -> None:
        for name in names:
            self.windows[name] = []
            self.granted.setdefault(name, [[]]).append([])

    def count(self, service: str, now: float) -> tuple[str, str]:
        """A restart-worthy exit of ``service``: what is to happen, ("restart" | "fail" | "give_up", unit)."""
        unit = service
        while True:
            window = [t for t in self.windows.get(unit, []) if not t < now - self.period(unit)]
            window.append(now)
            self.windows[unit] = window
            if len(window) <= self.intensity(unit):
                self.granted.setdefault(unit, [[]])[-1].append(now)
                if unit != service:
                    self.fresh(self.inside(unit))
                return "restart", unit
            if not self.critical(unit):
                revive = self.revive_after(unit)
                self.failed[unit] = None if revive is None else now + revive
                return "fail", unit
            parent = self.tree.parent(unit)
            if parent is None:
                return "give_up", unit
            unit = parent

    def revive_due(self, now: float) -> None:
        """What the engine revives in ``start_due(now)``: failed units not inside another failed one."""
        for unit, at in list(self.failed.items()):
            outermost = not any(group in self.failed for group in self.tree.ancestors(unit))
            if outermost and at is not None and at <= now:
                inside = self.inside(unit)
                for name in (unit, *inside):
                    self.failed.pop(name, None)
                self.fresh([unit, *inside])

    def check_windows(self) -> None:
        """No unit was granted more restarts than its intensity in any window of its period."""
        for unit, stretches in self.granted.items():
            intensity, period = self.intensity(unit), self.period(unit)
            for times in stretches:
                for t in times:
                    assert sum(1 for u in times if not u < t - period and u <= t) <= intensity, (unit, times)


@attrs.define
class Explorer:
    """Random events against a random tree, through `Sim`, checking each decision and the engine's state."""

    sim: Sim
    budgets: Budgets | None  # None once the operator has acted (operator starts reset budgets too)
    give_ups: list[str] = attrs.Factory(list)
    failures: list[tuple[str, ...]] = attrs.Factory(list)
    #: The services the operator stopped (or that were reported stopped) and has not started since.
    held: set[str] = attrs.Factory(set)

    @property
    def engine(self) -> RestartEngine:
        return self.sim.engine

    def pull(self) -> None:
        if self.budgets is not None and not self.engine.closed:
            self.budgets.revive_due(self.sim.now)
        started, _ = self.sim.pull()
        assert not self.held & set(started), f"started what the operator stopped: {self.held & set(started)}"

    def step(self, step: Step) -> None:
        sim, tree = self.sim, self.sim.tree
        sim.now += step.dt
        self.pull()
        units = [c.name for c in tree.children] + [g.name for g in tree.groups]
        candidates = {
            Action.READY: [n for n, s in sim.active.items() if s == "starting"],
            Action.EXIT: sorted(sim.active),
            Action.STOPPED: [n for n, s in sim.active.items() if s == "stopping"],
            Action.OPERATOR_STOP: units,
            Action.OPERATOR_START: [] if self.engine.closed else units,
            Action.TICK: [],
        }[step.action]
        if candidates:
            name = candidates[step.pick % len(candidates)]
            if step.action is Action.READY:
                sim.ready(name)
            elif step.action is Action.EXIT:
                self.exit(name, step.exit)
            elif step.action is Action.STOPPED:
                sim.stopped(name)
            elif step.action is Action.OPERATOR_STOP:
                self.budgets = None
                self.held |= tree.services_of(name)
                self.contained(self.engine.on_stop_requested(name))
            else:
                self.budgets = None
                self.held -= tree.services_of(name)
                self.contained(self.engine.on_start_requested(name, sim.now))
        self.pull()
        self.check_state()

    def exit(self, name: str, exit: Exit) -> None:
        sim, tree = self.sim, self.sim.tree
        before = {r.name: _effect(r) for r in self.engine.status()}
        restarts = {g.name: g.restarts for g in self.engine.group_status()}
        spec = next(c for c in tree.children if c.name == name)
        counted = (
            before[name] in (State.STARTING, State.RUNNING)
            and exit is not Exit.STOPPED
            and (spec.restart is P or (spec.restart is R and exit.abnormal))
        )
        del sim.active[name]
        if exit is Exit.STOPPED and before[name] is not State.STOPPING:
            self.held.add(name)  # a stop the supervisor did not ask for: the operator's, after the fact
        decision = self.engine.on_exit(name, exit, sim.now, "boom")
        after = {r.name: _effect(r) for r in self.engine.status()}
        if decision.give_up is not None:
            # Only a chain of critical units from the service up to the root gives up.
            assert spec.critical, decision
            assert all(tree.unit(g).critical for g in tree.ancestors(name)), decision
            assert self.engine.closed
            assert self.engine.given_up == decision.give_up
            self.give_ups.append(decision.give_up)
        if decision.failed:
            # A failure stops nothing outside the unit that failed, and restarts nothing.
            self.failures.append(decision.failed)
            down = tree.services_of(decision.failed[0])
            assert name in down
            assert {n: s for n, s in after.items() if n not in down} == {
                n: s for n, s in before.items() if n not in down
            }, (decision, before, after)
            assert decision.start == ()
        if not counted:
            assert (decision.failed, decision.give_up, decision.start) == ((), None, ())
            assert {g.name: g.restarts for g in self.engine.group_status()} == restarts
        if self.budgets is not None and counted:
            what, unit = self.budgets.count(name, sim.now)
            now_restarts = {g.name: g.restarts for g in self.engine.group_status()}
            if what == "restart":
                assert (decision.failed, decision.give_up) == ((), None), (unit, decision)
                assert name in decision.start
                assert now_restarts == {g: n + (g == unit) for g, n in restarts.items()}, (unit, decision)
            elif what == "fail":
                assert decision.give_up is None, (unit, decision)
                assert decision.failed[:1] == (unit,), (unit, decision)
                revive_at = self.budgets.failed[unit]
                if unit in after:
                    assert next(r for r in self.engine.status() if r.name == unit).revive_at == revive_at
                else:
                    assert (
                        next(g for g in self.engine.group_status() if g.name == unit).revive_at == revive_at
                    )
            else:
                label = f"group {unit!r}" if unit not in after else repr(unit)
                assert decision.give_up is not None, (unit, decision)
                assert decision.give_up.startswith(f"{label} "), (unit, decision)
        self.pull()

    def contained(self, decision: Decision) -> None:
        """An operator command fails and gives up nothing."""
        assert (decision.failed, decision.give_up) == ((), None)

    def check_state(self) -> None:
        sim = self.sim
        allowed = {
            "starting": (State.STARTING, State.STOPPING),
            "running": (State.RUNNING, State.STOPPING),
            "stopping": (State.STOPPING,),
        }
        states = sim.states()
        for r in self.engine.status():
            if r.name in sim.active:
                assert r.state in allowed[sim.active[r.name]], r
            else:
                assert r.state in (State.STOPPED, State.WAITING, State.BACKOFF, State.EXITED, State.FAILED), r
            if r.state is State.STOPPING and sim.active.get(r.name) != "stopping":
                # Not handed out yet: only because something that starts after it is still stopping.
                assert any(states[d] is State.STOPPING for d, deps in sim.deps.items() if r.name in deps), r
            if r.start_at is not None:
                assert r.state in (State.STOPPED, State.BACKOFF, State.WAITING), r
                assert not r.held, r
            if r.state in (State.BACKOFF, State.WAITING):  # never in limbo: it has a time to start
                assert r.start_at is not None, r
            assert (r.state is State.WAITING) == bool(r.waiting_for), r
            assert r.held is (r.name in self.held), r
        deadline = self.engine.next_deadline()
        assert deadline is None or deadline > sim.now  # nothing due is left lying
        if self.engine.closed:
            assert self.engine.start_due(math.inf) == ()

    def shut_down(self) -> None:
        """Stop everything: every stop is handed out, in order, and it ends."""
        sim = self.sim
        self.contained(self.engine.stop_all())
        for _ in range(len(sim.tree.children) + 1):
            _, stopped = sim.pull()
            for name in stopped:
                running_after = [d for d, deps in sim.deps.items() if name in deps and d in sim.active]
                assert running_after == [d for d in running_after if sim.active[d] == "stopping"]
                assert not [d for d in running_after if d not in stopped], (name, running_after)
            for name in [n for n, s in sim.active.items() if s == "stopping"]:
                sim.stopped(name)
            if not sim.active:
                break
        assert not sim.active, f"stops that never end: {sim.active}"
        assert {r.state for r in self.engine.status()} <= {State.STOPPED, State.EXITED, State.FAILED}
        assert self.engine.startup_settled()
        assert self.engine.next_deadline() is None


def _effect(row: ChildStatus) -> State | float:
    """What a decision can change about a service: its state, or when it starts if it is to start (whether
    it shows as waiting or backing off also depends on the state of what it waits for)."""
    return row.state if row.start_at is None else row.start_at


def explore(tree: Tree, script: list[Step], seed: int) -> Explorer:
    sim = Sim.of(tree.children, tree.groups, tree.policy, seed=seed, start=False)
    explorer = Explorer(sim, Budgets(tree))
    assert sim.engine.start_all(0.0).start == tuple(c.name for c in tree.children)
    explorer.pull()
    for step in script:
        explorer.step(step)
    if explorer.budgets is not None:
        explorer.budgets.check_windows()
    explorer.shut_down()
    return explorer


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(supervision_trees(), steps(operator=False), st.integers())
def test_property_every_unit_keeps_its_own_budget(tree: Tree, script: list[Step], seed: int) -> None:
    # Each restart-worthy exit is decided as the documented budgets say (restart, fail or give up, and
    # which unit); no unit is granted more than its intensity in any window of its period; failures
    # stop nothing outside the unit that failed; only a chain of critical units up to the root gives up;
    # nothing starts before what it starts after is ready; every stop ends, in order.
    explore(tree, script, seed)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(supervision_trees(), steps(), st.integers())
def test_property_with_the_operator_nothing_is_lost_or_started_too_early(
    tree: Tree, script: list[Step], seed: int
) -> None:
    explore(tree, script, seed)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    supervision_trees(max_groups=3, max_services=4, max_intensity=1, critical_in=1, max_seconds=1.0),
    steps(operator=False, max_dt=0.5),
    st.integers(),
)
def test_property_deep_critical_chains_escalate_by_the_budgets(
    tree: Tree, script: list[Step], seed: int
) -> None:
    # Everything critical, tiny budgets, little time between events: escalation climbs far and often.
    explore(tree, script, seed)


@given(
    backoff_policies(), st.integers(min_value=1, max_value=10_000), st.floats(min_value=0.0, max_value=1.0)
)
def test_property_backoff_delay_bounds(policy: BackoffPolicy, failures: int, rand: float) -> None:
    delay = policy.delay(failures, rand)
    assert 0 <= delay <= policy.max_delay * (1 + policy.jitter)
    unjittered = policy.delay(failures)
    assert unjittered * (1 - policy.jitter) <= delay * (1 + 1e-12) + 1e-12
    assert delay <= unjittered * (1 + policy.jitter) * (1 + 1e-12) + 1e-12
    assert policy.delay(failures + 1) >= unjittered  # never shrinks


@given(supervision_trees(), steps(operator=False), st.integers())
def test_property_a_temporary_service_is_never_restarted(tree: Tree, script: list[Step], seed: int) -> None:
    # (A temporary service in a group does start again when its group is restarted whole, as in OTP.)
    explorer = explore(tree, script, seed)
    for r in explorer.engine.status():
        if r.restart is T and r.group is None and r.name not in _revived(explorer):
            assert explorer.sim.started().count(r.name) <= 1
            assert r.restarts == 0


def _revived(explorer: Explorer) -> set[str]:
    """Services that were failed at some point (a revival starts even a temporary one again)."""
    return {
        name
        for failed in explorer.failures
        for unit in failed
        for name in explorer.sim.tree.services_of(unit)
    }
