"""The restart-policy engine: pure logic, driven by hand and by a simulated driver (no trio, no clock).

In the spirit of Erlang's supervisor_SUITE: the matrix strategy x restart type x exit kind, collateral
siblings, restart intensity and escalation, backoff, operator stop/start, and the status table; then
hypothesis properties over arbitrary sequences of events.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import DriverAction as Action
from strategies import Step, backoff_policies, child_specs, steps, supervisor_policies

from vwos._policy import (
    BackoffPolicy,
    ChildSpec,
    ChildStatus,
    Decision,
    Exit,
    Restart,
    RestartEngine,
    State,
    Strategy,
    SupervisorPolicy,
    TransitionError,
)

NAMES = ("a", "b", "c", "d")
#: A backoff without jitter, so that delays are exact: 0.5, 1, 2, 4, 8, 10, 10, ...
STEADY = BackoffPolicy(initial=0.5, multiplier=2.0, max_delay=10.0, jitter=0.0, reset_after=30.0)
#: No backoff at all, for tests about counting restarts.
NO_BACKOFF = BackoffPolicy(initial=0.0, jitter=0.0)


def make_engine(
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    restarts: Mapping[str, Restart] | None = None,
    *,
    intensity: int = 100,
    period: float = 5.0,
    backoff: BackoffPolicy = STEADY,
    rng: random.Random | None = None,
) -> RestartEngine:
    restarts = restarts or {}
    specs = [ChildSpec(name, restarts.get(name, Restart.PERMANENT), backoff) for name in NAMES]
    return RestartEngine(SupervisorPolicy(strategy, intensity, period), specs, rng=rng)


def start_everything(engine: RestartEngine, now: float = 0.0) -> None:
    """The initial start: one child at a time, each once the one before is ready."""
    assert engine.start_all(now) == Decision(start=NAMES)
    for name in NAMES:
        assert engine.start_due(now) == (name,)
        engine.on_ready(name, now)
    assert engine.start_due(now) == ()


def states(engine: RestartEngine) -> dict[str, State]:
    return {row.name: row.state for row in engine.status()}


def row(engine: RestartEngine, name: str) -> ChildStatus:
    (found,) = (r for r in engine.status() if r.name == name)
    return found


def finish_stops(engine: RestartEngine, decision: Decision, now: float) -> None:
    for name in decision.stop:
        engine.on_stopped(name, now)


def start_in_order(engine: RestartEngine, names: Iterable[str], now: float, *, rest: bool = False) -> None:
    """Release ``names`` one at a time, checking that each waits for the one before it to be ready.

    Unless ``rest``, nothing else may be due afterwards.
    """
    for name in names:
        assert engine.start_due(now) == (name,)
        assert engine.start_due(now) == ()  # the next waits for this one's readiness
        engine.on_ready(name, now)
    if not rest:
        assert engine.start_due(now) == ()


def fail_and_restart(engine: RestartEngine, name: str, now: float, exit: Exit = Exit.ERROR) -> Decision:
    """``name`` (running, under one_for_one) fails at ``now``; restart it as soon as allowed."""
    decision = engine.on_exit(name, exit, now, "boom")
    if decision.give_up is None:
        assert decision.start == (name,)
        assert engine.start_due(now + decision.delay) == (name,)
        engine.on_ready(name, now + decision.delay)
    return decision


# -- the matrix: strategy x restart type x exit kind ------------------------------------------------------


def _parse_table(text: str) -> dict[tuple[Restart, Exit], bool]:
    header, *lines = (line.split() for line in text.strip().splitlines())
    table = {}
    for restart, *cells in lines:
        for exit, cell in zip(header, cells, strict=True):
            table[Restart(restart), Exit(exit)] = {"yes": True, "no": False}[cell]
    return table


#: Is the child restarted? (OTP's do_restart, with CANCELLED, START_TIMEOUT and WATCHDOG abnormal.)
RESTARTED = _parse_table(
    """
                normal  error  cancelled  start_timeout  watchdog  stopped
    permanent   yes     yes    yes        yes            yes       no
    transient   no      yes    yes        yes            yes       no
    temporary   no      no     no         no             no        no
    """
)

#: When "b" (of a, b, c, d) is restarted: what is stopped, in order, and what is started, in order.
SIBLINGS: dict[Strategy, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Strategy.ONE_FOR_ONE: ((), ("b",)),
    Strategy.ONE_FOR_ALL: (("d", "c", "a"), ("a", "b", "c", "d")),
    Strategy.REST_FOR_ONE: (("d", "c"), ("b", "c", "d")),
}


def test_the_restart_table_is_complete() -> None:
    assert set(RESTARTED) == set(itertools.product(Restart, Exit))


@pytest.mark.parametrize("exit", list(Exit), ids=lambda e: e.value)
@pytest.mark.parametrize("restart", list(Restart), ids=lambda r: r.value)
@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.value)
def test_matrix(strategy: Strategy, restart: Restart, exit: Exit) -> None:
    engine = make_engine(strategy, {"b": restart})
    start_everything(engine)

    decision = engine.on_exit("b", exit, 1.0, "boom")

    assert decision.give_up is None
    if not RESTARTED[restart, exit]:
        # Nothing else is touched; the child is gone for good, or held if it was a stop.
        assert decision.stop == decision.start == ()
        assert decision.finished == (() if exit is Exit.STOPPED else ("b",))
        gone = State.STOPPED if exit is Exit.STOPPED else State.EXITED
        assert states(engine) == {"a": State.RUNNING, "b": gone, "c": State.RUNNING, "d": State.RUNNING}
        assert engine.start_due(1000.0) == ()
        assert engine.next_deadline() is None
        return

    stop, start = SIBLINGS[strategy]
    assert (decision.stop, decision.start, decision.finished) == (stop, start, ())
    assert decision.delay == 0.5
    expected = {name: State.STOPPING if name in stop else State.RUNNING for name in NAMES}
    expected["b"] = State.BACKOFF
    assert states(engine) == expected

    finish_stops(engine, decision, 1.0)
    assert engine.start_due(1.4) == ()  # still backing off
    assert engine.next_deadline() == 1.5
    start_in_order(engine, start, 1.5)
    assert all(state is State.RUNNING for state in states(engine).values())
    assert {r.name: r.restarts for r in engine.status()} == {name: int(name in start) for name in NAMES}


# -- collateral siblings ----------------------------------------------------------------------------------

T, P, R = Restart.TEMPORARY, Restart.PERMANENT, Restart.TRANSIENT


@pytest.mark.parametrize(
    ("strategy", "restarts", "failing", "stop", "start", "finished"),
    [
        # A temporary sibling stopped as collateral is not restarted (it is removed); a transient one is.
        (Strategy.ONE_FOR_ALL, {"b": T, "c": R}, "a", ("d", "c", "b"), ("a", "c", "d"), ("b",)),
        (Strategy.ONE_FOR_ALL, {"a": T, "d": R}, "c", ("d", "b", "a"), ("b", "c", "d"), ("a",)),
        (Strategy.REST_FOR_ONE, {"c": T, "d": R}, "b", ("d", "c"), ("b", "d"), ("c",)),
        # Children before the failing one are untouched by rest_for_one, whatever their type.
        (Strategy.REST_FOR_ONE, {"a": T, "b": R}, "c", ("d",), ("c", "d"), ()),
        # A transient failing child is restarted like a permanent one, and takes its siblings along.
        (
            Strategy.ONE_FOR_ALL,
            {"a": R, "b": T, "c": T, "d": T},
            "a",
            ("d", "c", "b"),
            ("a",),
            ("b", "c", "d"),
        ),
    ],
)
def test_collateral_siblings(
    strategy: Strategy,
    restarts: dict[str, Restart],
    failing: str,
    stop: tuple[str, ...],
    start: tuple[str, ...],
    finished: tuple[str, ...],
) -> None:
    engine = make_engine(strategy, restarts)
    start_everything(engine)

    decision = engine.on_exit(failing, Exit.ERROR, 1.0, "boom")

    assert (decision.stop, decision.start, decision.finished) == (stop, start, finished)
    finish_stops(engine, decision, 1.0)
    for name in finished:
        assert row(engine, name).state is State.EXITED
        assert row(engine, name).last_exit is Exit.STOPPED
    start_in_order(engine, start, 1.5)
    untouched = set(NAMES) - set(stop) - {failing}
    assert {n for n, s in states(engine).items() if s is State.RUNNING} == set(start) | untouched


@pytest.mark.parametrize(
    ("strategy", "stop", "start"),
    [
        (Strategy.ONE_FOR_ALL, ("d", "b"), ("a", "b", "c", "d")),
        (Strategy.REST_FOR_ONE, ("d", "b"), ("a", "b", "c", "d")),
    ],
)
def test_group_restart_starts_a_finished_transient_again(
    strategy: Strategy, stop: tuple[str, ...], start: tuple[str, ...]
) -> None:
    # OTP keeps a transient child that exited normally in its child list, and a group restart starts every
    # child in the list again.
    engine = make_engine(strategy, {"c": Restart.TRANSIENT})
    start_everything(engine)
    assert engine.on_exit("c", Exit.NORMAL, 1.0) == Decision(finished=("c",))

    decision = engine.on_exit("a", Exit.ERROR, 2.0, "boom")

    assert (decision.stop, decision.start) == (stop, start)
    assert row(engine, "c").state is State.BACKOFF
    finish_stops(engine, decision, 2.0)
    start_in_order(engine, start, 2.5)


def test_group_restart_leaves_a_finished_temporary_gone() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL, {"c": Restart.TEMPORARY})
    start_everything(engine)
    engine.on_exit("c", Exit.ERROR, 1.0, "boom")

    decision = engine.on_exit("a", Exit.ERROR, 2.0, "boom")

    assert (decision.stop, decision.start) == (("d", "b"), ("a", "b", "d"))
    assert row(engine, "c").state is State.EXITED


def test_group_restart_waits_for_every_stop() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL)
    start_everything(engine)
    decision = engine.on_exit("a", Exit.ERROR, 1.0, "boom")
    assert decision.stop == ("d", "c", "b")

    engine.on_stopped("d", 1.0)
    engine.on_stopped("c", 1.0)
    assert engine.start_due(100.0) == ()  # "b" is still stopping, backoff or not
    assert engine.next_deadline() is None
    engine.on_stopped("b", 100.0)
    assert engine.next_deadline() == 1.5
    start_in_order(engine, NAMES, 100.0)


def test_a_crash_while_being_stopped_counts_as_the_stop() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL, intensity=1)
    start_everything(engine)
    decision = engine.on_exit("a", Exit.ERROR, 1.0, "boom")

    assert engine.on_exit("c", Exit.ERROR, 1.0, "crashed on the way out") == Decision()

    assert row(engine, "c").state is State.BACKOFF  # restarted with its group, no restart of its own
    assert (row(engine, "c").last_exit, row(engine, "c").last_error) == (Exit.ERROR, "crashed on the way out")
    for name in decision.stop:
        if name != "c":
            engine.on_stopped(name, 1.0)
    start_in_order(engine, NAMES, 1.5)
    assert engine.given_up is None  # one restart only: intensity 1 is not exceeded


def test_a_second_failure_during_a_group_restart_merges_into_it() -> None:
    engine = make_engine(Strategy.REST_FOR_ONE)
    start_everything(engine)
    first = engine.on_exit("c", Exit.ERROR, 1.0, "boom")
    assert (first.stop, first.start) == (("d",), ("c", "d"))

    second = engine.on_exit("a", Exit.ERROR, 1.2, "boom")

    assert (second.stop, second.start) == (("b",), ("a", "b", "c", "d"))
    engine.on_stopped("d", 1.2)
    engine.on_stopped("b", 1.2)
    assert engine.start_due(1.5) == ()  # "c" waited until 1.5, but it now comes after "a" (until 1.7)
    start_in_order(engine, NAMES, 1.7)


# -- starting order ---------------------------------------------------------------------------------------


def test_initial_start_is_one_at_a_time_in_order() -> None:
    engine = make_engine()
    assert engine.start_due(0.0) == ()  # nothing before start_all
    assert engine.start_all(0.0) == Decision(start=NAMES)
    assert engine.next_deadline() == 0.0
    assert engine.start_due(0.0) == ("a",)
    assert engine.next_deadline() is None  # waiting for readiness, not for time
    assert states(engine) == {"a": State.STARTING, "b": State.STOPPED, "c": State.STOPPED, "d": State.STOPPED}
    assert [r.start_at for r in engine.status()] == [None, 0.0, 0.0, 0.0]
    engine.on_ready("a", 0.1)
    assert engine.start_due(0.1) == ("b",)


@pytest.mark.parametrize("exit", [Exit.ERROR, Exit.START_TIMEOUT, Exit.CANCELLED])
def test_a_child_failing_to_start_holds_back_those_after_it(exit: Exit) -> None:
    engine = make_engine(Strategy.ONE_FOR_ONE)
    engine.start_all(0.0)
    start_in_order(engine, ["a"], 0.0, rest=True)
    assert engine.start_due(0.0) == ("b",)

    decision = engine.on_exit("b", exit, 2.0, "no luck")

    assert (decision.stop, decision.start, decision.delay) == ((), ("b",), 0.5)
    assert engine.start_due(2.4) == ()
    start_in_order(engine, ["b", "c", "d"], 2.5)
    assert row(engine, "b").restarts == 1
    assert row(engine, "c").restarts == 0


def test_a_temporary_child_failing_to_start_lets_the_rest_go() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL, {"b": Restart.TEMPORARY})
    engine.start_all(0.0)
    start_in_order(engine, ["a"], 0.0, rest=True)
    assert engine.start_due(0.0) == ("b",)

    assert engine.on_exit("b", Exit.START_TIMEOUT, 5.0) == Decision(finished=("b",))

    start_in_order(engine, ["c", "d"], 5.0)
    assert row(engine, "b").state is State.EXITED


def test_one_for_one_restarts_are_independent() -> None:
    engine = make_engine(Strategy.ONE_FOR_ONE, backoff=STEADY)
    start_everything(engine)
    engine.on_exit("a", Exit.ERROR, 1.0)
    engine.on_exit("c", Exit.ERROR, 1.2)
    assert engine.next_deadline() == 1.5
    assert engine.start_due(1.7) == ("a", "c")  # "c" does not wait for "a" to be ready


# -- restart intensity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("intensity", [1, 2, 3, 5])
def test_escalates_exactly_at_intensity_plus_one(intensity: int) -> None:
    engine = make_engine(intensity=intensity, period=10.0, backoff=NO_BACKOFF)
    start_everything(engine)
    for t in range(intensity):
        assert fail_and_restart(engine, "b", float(t)).give_up is None

    decision = engine.on_exit("b", Exit.ERROR, float(intensity), "boom")

    reason = (
        f"'b' failed: boom; too many restarts: {intensity + 1} restarts in {float(intensity)} s "
        f"exceeds intensity {intensity} per 10.0 s"
    )
    assert decision == Decision(stop=("d", "c", "a"), give_up=reason)
    assert engine.given_up == reason
    assert engine.closed
    assert states(engine) == {
        "a": State.STOPPING,
        "b": State.FAILED,
        "c": State.STOPPING,
        "d": State.STOPPING,
    }
    finish_stops(engine, decision, float(intensity))
    assert states(engine) == {"a": State.STOPPED, "b": State.FAILED, "c": State.STOPPED, "d": State.STOPPED}
    assert engine.start_due(1000.0) == ()
    assert engine.next_deadline() is None
    with pytest.raises(TransitionError, match="gave up: 'b' failed"):
        engine.on_start_requested("b", 1000.0)


def test_no_escalation_when_restarts_are_spread_beyond_the_period() -> None:
    engine = make_engine(intensity=2, period=10.0, backoff=NO_BACKOFF)
    start_everything(engine)
    for i in range(30):
        assert fail_and_restart(engine, "b", i * 5.001).give_up is None
    assert row(engine, "b").restarts == 30


@pytest.mark.parametrize(("second", "escalates"), [(5.0, True), (4.999, True), (5.001, False)])
def test_the_window_includes_its_edge(second: float, escalates: bool) -> None:
    # OTP keeps restarts with t >= now - period: two restarts exactly one period apart are in one window.
    engine = make_engine(intensity=1, period=5.0, backoff=NO_BACKOFF)
    start_everything(engine)
    fail_and_restart(engine, "b", 0.0)
    assert (fail_and_restart(engine, "b", second).give_up is not None) is escalates


def test_intensity_is_counted_supervisor_wide() -> None:
    engine = make_engine(intensity=2, period=10.0, backoff=NO_BACKOFF)
    start_everything(engine)
    fail_and_restart(engine, "a", 1.0)
    fail_and_restart(engine, "b", 2.0, Exit.WATCHDOG)

    decision = engine.on_exit("c", Exit.START_TIMEOUT, 3.5)

    assert decision.give_up == (
        "'c' did not become ready in time; "
        "too many restarts: 3 restarts in 2.5 s exceeds intensity 2 per 10.0 s"
    )
    assert decision.stop == ("d", "b", "a")


def test_a_group_restart_counts_once() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL, intensity=1, backoff=NO_BACKOFF)
    start_everything(engine)
    decision = engine.on_exit("b", Exit.ERROR, 1.0)
    assert decision.give_up is None
    assert len(decision.start) == 4


def test_intensity_zero_escalates_on_the_first_restart() -> None:
    engine = make_engine(intensity=0, backoff=NO_BACKOFF)
    start_everything(engine)

    decision = engine.on_exit("b", Exit.ERROR, 7.0, "boom")

    assert (
        decision.give_up
        == "'b' failed: boom; too many restarts: 1 restart in 0.0 s exceeds intensity 0 per 5.0 s"
    )


@pytest.mark.parametrize(
    ("restart", "exit"),
    [(Restart.TEMPORARY, Exit.ERROR), (Restart.TRANSIENT, Exit.NORMAL), (Restart.PERMANENT, Exit.STOPPED)],
)
def test_intensity_zero_allows_exits_that_are_not_restarted(restart: Restart, exit: Exit) -> None:
    engine = make_engine(intensity=0, restarts={"b": restart})
    start_everything(engine)
    assert engine.on_exit("b", exit, 1.0).give_up is None
    assert engine.given_up is None


def test_escalation_message_names_the_exit() -> None:
    engine = make_engine(intensity=0)
    start_everything(engine)
    assert engine.on_exit("a", Exit.NORMAL, 1.0).give_up == (
        "'a' returned; too many restarts: 1 restart in 0.0 s exceeds intensity 0 per 5.0 s"
    )


# -- backoff ----------------------------------------------------------------------------------------------


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


def test_the_engine_backs_off_more_with_each_consecutive_failure() -> None:
    engine = make_engine(backoff=STEADY)
    start_everything(engine)
    delays = []
    now = 0.0
    for _ in range(8):
        now += 1.0
        decision = fail_and_restart(engine, "b", now)
        delays.append(decision.delay)
        now += decision.delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert row(engine, "b").consecutive_failures == 8


def test_the_engine_draws_jitter_from_the_injected_random() -> None:
    policy = BackoffPolicy(initial=1.0, jitter=0.5)
    delays = []
    for _ in range(2):
        engine = make_engine(backoff=policy, rng=random.Random(7))
        start_everything(engine)
        delays.append([fail_and_restart(engine, "b", float(t) * 10).delay for t in range(1, 4)])
    expected_rng = random.Random(7)
    assert delays[0] == delays[1] == [policy.delay(n, expected_rng.random()) for n in (1, 2, 3)]
    assert len(set(delays[0])) == 3


@pytest.mark.parametrize(("uptime", "delay"), [(29.9, 2.0), (30.0, 0.5), (100.0, 0.5)])
def test_backoff_resets_after_stable_uptime(uptime: float, delay: float) -> None:
    engine = make_engine(backoff=STEADY)  # reset_after=30
    start_everything(engine)
    now = 0.0
    for _ in range(2):
        now += 1.0
        now += fail_and_restart(engine, "b", now).delay
    ready_at = row(engine, "b").ready_at
    assert ready_at == now

    decision = engine.on_exit("b", Exit.ERROR, now + uptime)

    assert decision.delay == delay
    assert row(engine, "b").consecutive_failures == (1 if delay == 0.5 else 3)


def test_uptime_is_measured_from_readiness_not_from_start() -> None:
    engine = make_engine(backoff=STEADY)
    start_everything(engine)
    engine.on_exit("a", Exit.ERROR, 1.0)
    assert engine.start_due(1.5) == ("a",)  # started at 1.5 ...
    engine.on_ready("a", 21.5)  # ... ready 20 s later ...

    decision = engine.on_exit("a", Exit.ERROR, 41.5)  # ... up for 20 s, 40 s after its start

    assert decision.delay == 1.0  # the second consecutive failure: no reset


def test_stable_uptime_also_resets_when_the_child_is_stopped() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL, backoff=STEADY)
    start_everything(engine)
    # Fail "b" twice under one_for_all, then let it run 60 s and stop it as collateral of "a".
    for t in (1.0, 3.0):
        decision = engine.on_exit("b", Exit.ERROR, t)
        finish_stops(engine, decision, t)
        start_in_order(engine, NAMES, t + decision.delay)
    assert row(engine, "b").consecutive_failures == 2
    decision = engine.on_exit("a", Exit.ERROR, 100.0)
    finish_stops(engine, decision, 100.0)
    assert row(engine, "b").consecutive_failures == 0
    assert row(engine, "a").consecutive_failures == 1


# -- the operator ----------------------------------------------------------------------------------------


def test_an_operator_stop_is_not_restarted() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL)
    start_everything(engine)

    decision = engine.on_stop_requested("b")

    assert decision == Decision(stop=("b",))  # only "b", whatever the strategy
    assert row(engine, "b").state is State.STOPPING
    engine.on_stopped("b", 1.0)
    assert row(engine, "b").state is State.STOPPED
    assert row(engine, "b").held
    assert row(engine, "b").last_exit is Exit.STOPPED
    assert engine.start_due(1000.0) == ()
    assert engine.next_deadline() is None
    assert states(engine) == {"a": State.RUNNING, "b": State.STOPPED, "c": State.RUNNING, "d": State.RUNNING}


def test_an_operator_stop_survives_a_group_restart() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL)
    start_everything(engine)
    assert engine.on_stop_requested("b") == Decision(stop=("b",))
    engine.on_stopped("b", 1.0)

    decision = engine.on_exit("a", Exit.ERROR, 2.0)

    assert (decision.stop, decision.start) == (("d", "c"), ("a", "c", "d"))
    finish_stops(engine, decision, 2.0)
    start_in_order(engine, ["a", "c", "d"], 2.5)
    assert row(engine, "b").state is State.STOPPED


def test_operator_stops_do_not_count_toward_intensity() -> None:
    engine = make_engine(intensity=0)
    start_everything(engine)
    for t in range(10):
        assert engine.on_stop_requested("b") == Decision(stop=("b",))
        engine.on_stopped("b", float(t))
        assert engine.on_start_requested("b", float(t)) == Decision(start=("b",))
        start_in_order(engine, ["b"], float(t))
    assert engine.given_up is None
    assert row(engine, "b").restarts == 0


def test_a_stop_reported_as_an_exit_is_held_and_not_counted() -> None:
    engine = make_engine(intensity=0)
    start_everything(engine)
    assert engine.on_exit("b", Exit.STOPPED, 1.0) == Decision()
    assert (row(engine, "b").state, row(engine, "b").held) == (State.STOPPED, True)
    assert engine.given_up is None


def test_an_operator_stop_cancels_a_pending_restart() -> None:
    engine = make_engine()
    start_everything(engine)
    engine.on_exit("b", Exit.ERROR, 1.0)
    assert engine.next_deadline() == 1.5

    assert engine.on_stop_requested("b") == Decision()

    assert engine.next_deadline() is None
    assert engine.start_due(100.0) == ()
    assert row(engine, "b").state is State.STOPPED


def test_an_operator_start_skips_the_backoff_and_resets_the_failures() -> None:
    engine = make_engine()
    start_everything(engine)
    engine.on_exit("b", Exit.ERROR, 1.0)
    engine.on_exit("c", Exit.ERROR, 1.0)
    engine.on_exit("d", Exit.ERROR, 1.0)

    assert engine.on_start_requested("b", 1.1) == Decision(start=("b",))

    assert engine.start_due(1.1) == ("b",)
    assert row(engine, "b").consecutive_failures == 0
    assert row(engine, "b").restarts == 0  # an operator start is not a restart
    assert engine.start_due(1.5) == ("c", "d")
    assert row(engine, "c").restarts == 1


def test_an_operator_start_of_a_running_child_does_nothing() -> None:
    engine = make_engine()
    start_everything(engine)
    assert engine.on_start_requested("b", 1.0) == Decision()
    assert row(engine, "b").state is State.RUNNING


def test_an_operator_start_while_stopping_starts_it_once_stopped() -> None:
    engine = make_engine()
    start_everything(engine)
    engine.on_stop_requested("b")

    assert engine.on_start_requested("b", 1.0) == Decision(start=("b",))

    assert engine.start_due(1.0) == ()  # still stopping
    engine.on_stopped("b", 1.2)
    assert row(engine, "b").held is False
    assert engine.start_due(1.2) == ("b",)


def test_an_operator_can_start_a_finished_temporary_child() -> None:
    engine = make_engine(restarts={"b": Restart.TEMPORARY})
    start_everything(engine)
    engine.on_exit("b", Exit.NORMAL, 1.0)

    assert engine.on_start_requested("b", 2.0) == Decision(start=("b",))

    assert engine.start_due(2.0) == ("b",)


def test_an_operator_stop_before_start_all_keeps_the_child_out() -> None:
    engine = make_engine()
    assert engine.on_stop_requested("c") == Decision()
    assert engine.start_all(0.0) == Decision(start=("a", "b", "d"))
    start_in_order(engine, ["a", "b", "d"], 0.0)


# -- shutdown ---------------------------------------------------------------------------------------------


def test_stop_all_stops_everything_in_reverse_order() -> None:
    engine = make_engine(Strategy.REST_FOR_ONE)
    start_everything(engine)
    engine.on_exit("c", Exit.ERROR, 1.0)  # c backing off, d stopping

    decision = engine.stop_all()

    assert decision == Decision(stop=("b", "a"))  # "d" is already stopping, "c" is not running
    assert engine.closed
    assert engine.given_up is None
    assert engine.start_due(100.0) == ()
    engine.on_stopped("d", 1.0)
    finish_stops(engine, decision, 1.0)
    assert set(states(engine).values()) == {State.STOPPED}
    assert engine.stop_all() == Decision()
    with pytest.raises(TransitionError, match="shutting down"):
        engine.on_start_requested("a", 2.0)


def test_readiness_after_a_stop_was_requested_does_not_undo_the_stop() -> None:
    engine = make_engine()
    engine.start_all(0.0)
    assert engine.start_due(0.0) == ("a",)
    engine.on_stop_requested("a")
    engine.on_ready("a", 0.1)
    assert row(engine, "a").state is State.STOPPING


# -- the status table ------------------------------------------------------------------------------------


def test_status_table() -> None:
    engine = make_engine(Strategy.ONE_FOR_ONE, {"c": Restart.TRANSIENT, "d": Restart.TEMPORARY})
    engine.start_all(0.0)
    start_in_order(engine, ["a"], 0.0, rest=True)
    assert engine.start_due(0.5) == ("b",)
    engine.on_ready("b", 1.0)
    assert engine.start_due(1.0) == ("c",)
    engine.on_ready("c", 1.0)
    assert engine.start_due(1.0) == ("d",)
    engine.on_ready("d", 1.5)
    engine.on_exit("b", Exit.WATCHDOG, 2.0, "no heartbeat for 3.0 s")
    engine.on_exit("c", Exit.NORMAL, 2.5)
    engine.on_exit("d", Exit.ERROR, 3.0, "ValueError: bad frame")
    engine.on_stop_requested("a")

    def status(name: str, restart: Restart, state: State, **fields: object) -> ChildStatus:
        defaults: dict[str, object] = {
            "restarts": 0,
            "consecutive_failures": 0,
            "last_exit": None,
            "last_error": None,
            "started_at": None,
            "ready_at": None,
            "ended_at": None,
            "start_at": None,
            "held": False,
        }
        return ChildStatus(name, restart, state, **{**defaults, **fields})  # type: ignore[arg-type]

    assert engine.status() == [
        status("a", Restart.PERMANENT, State.STOPPING, started_at=0.0, ready_at=0.0, held=True),
        status(
            "b", Restart.PERMANENT, State.BACKOFF, consecutive_failures=1, last_exit=Exit.WATCHDOG,
            last_error="no heartbeat for 3.0 s", started_at=0.5, ready_at=1.0, ended_at=2.0, start_at=2.5,
        ),
        status(
            "c", Restart.TRANSIENT, State.EXITED, last_exit=Exit.NORMAL, started_at=1.0, ready_at=1.0,
            ended_at=2.5,
        ),
        status(
            "d", Restart.TEMPORARY, State.EXITED, consecutive_failures=1, last_exit=Exit.ERROR,
            last_error="ValueError: bad frame", started_at=1.0, ready_at=1.5, ended_at=3.0,
        ),
    ]  # fmt: skip

    assert engine.start_due(2.5) == ("b",)
    engine.on_ready("b", 2.6)
    engine.on_stopped("a", 4.0)
    assert (row(engine, "a").state, row(engine, "a").ended_at, row(engine, "a").last_exit) == (
        State.STOPPED,
        4.0,
        Exit.STOPPED,
    )
    assert (row(engine, "b").state, row(engine, "b").restarts, row(engine, "b").started_at) == (
        State.RUNNING,
        1,
        2.5,
    )


# -- misuse -----------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"intensity": -1}, "intensity"),
        ({"intensity": 1.5}, "intensity"),
        ({"intensity": True}, "intensity"),
        ({"period": 0.0}, "period"),
        ({"period": math.inf}, "period"),
    ],
)
def test_supervisor_policy_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SupervisorPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    assert SupervisorPolicy() == SupervisorPolicy(Strategy.ONE_FOR_ONE, intensity=3, period=5.0)
    assert BackoffPolicy() == BackoffPolicy(0.1, 2.0, 30.0, 0.1, 60.0)
    assert ChildSpec("x") == ChildSpec("x", Restart.PERMANENT, BackoffPolicy())


def test_child_spec_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ChildSpec("")
    with pytest.raises(TypeError):
        ChildSpec("x", "permanent")  # type: ignore[arg-type]


def test_duplicate_child_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate child name 'a'"):
        RestartEngine(SupervisorPolicy(), [ChildSpec("a"), ChildSpec("a")])


def test_unknown_child() -> None:
    engine = make_engine()
    with pytest.raises(ValueError, match="unknown child 'x'"):
        engine.on_ready("x", 0.0)


def test_impossible_reports_are_refused() -> None:
    engine = make_engine()
    with pytest.raises(TransitionError, match="'a' cannot become ready while stopped"):
        engine.on_ready("a", 0.0)
    start_everything(engine)
    with pytest.raises(TransitionError, match="already called"):
        engine.start_all(0.0)
    with pytest.raises(TransitionError, match="'a' cannot finish stopping while running"):
        engine.on_stopped("a", 1.0)
    engine.on_exit("a", Exit.ERROR, 1.0)
    with pytest.raises(TransitionError, match="'a' cannot exit while backoff"):
        engine.on_exit("a", Exit.ERROR, 1.0)


def test_exit_abnormal() -> None:
    assert {e for e in Exit if e.abnormal} == {Exit.ERROR, Exit.CANCELLED, Exit.START_TIMEOUT, Exit.WATCHDOG}


# -- properties, over arbitrary event sequences ----------------------------------------------------------


@attrs.define
class SimDriver:
    """A minimal, synchronous stand-in for the trio driver: it does what the decisions say, and checks."""

    engine: RestartEngine
    now: float = 0.0
    #: What the driver itself believes each child is doing: "starting", "running" or "stopping".
    active: dict[str, str] = attrs.Factory(dict)
    starts: list[str] = attrs.Factory(list)
    #: Times at which a restart was granted (an exit led to a restart).
    granted: list[float] = attrs.Factory(list)
    escalations: list[tuple[float, Decision]] = attrs.Factory(list)
    delays: list[tuple[ChildSpec, float]] = attrs.Factory(list)

    def release(self) -> None:
        waiting = {r.name: r.start_at for r in self.engine.status()}
        for name in self.engine.start_due(self.now):
            assert name not in self.active, f"{name} started twice"
            start_at = waiting[name]
            assert start_at is not None
            assert start_at <= self.now
            self.active[name] = "starting"
            self.starts.append(name)

    def carry_out(self, decision: Decision, failing: ChildSpec | None = None) -> None:
        for name in decision.stop:
            assert self.active.get(name) in ("starting", "running"), f"asked to stop idle {name}"
            self.active[name] = "stopping"
        if decision.give_up is not None:
            self.escalations.append((self.now, decision))
        elif failing is not None and failing.name in decision.start:
            self.granted.append(self.now)
            self.delays.append((failing, decision.delay))

    def step(self, step: Step) -> None:
        self.now += step.dt
        self.release()
        names = [spec.name for spec in self.engine.specs]
        spec_of = {spec.name: spec for spec in self.engine.specs}
        candidates = {
            Action.READY: [n for n, s in self.active.items() if s == "starting"],
            Action.EXIT: sorted(self.active),
            Action.STOPPED: [n for n, s in self.active.items() if s == "stopping"],
            Action.OPERATOR_STOP: names,
            Action.OPERATOR_START: [] if self.engine.closed else names,
            Action.TICK: [],
        }[step.action]
        if candidates:
            name = candidates[step.pick % len(candidates)]
            if step.action is Action.READY:
                self.engine.on_ready(name, self.now)
                self.active[name] = "running"
            elif step.action is Action.EXIT:
                was = self.active.pop(name)
                exit = Exit.STOPPED if was == "stopping" and step.exit is Exit.STOPPED else step.exit
                decision = self.engine.on_exit(name, exit, self.now, "boom")
                self.carry_out(decision, None if was == "stopping" else spec_of[name])
            elif step.action is Action.STOPPED:
                del self.active[name]
                self.engine.on_stopped(name, self.now)
            elif step.action is Action.OPERATOR_STOP:
                self.carry_out(self.engine.on_stop_requested(name))
            else:
                self.engine.on_start_requested(name, self.now)
        self.release()
        self.check_consistency()

    def check_consistency(self) -> None:
        expected = {"starting": State.STARTING, "running": State.RUNNING, "stopping": State.STOPPING}
        for r in self.engine.status():
            if r.name in self.active:
                assert r.state is expected[self.active[r.name]], r
            else:
                assert r.state in (State.STOPPED, State.BACKOFF, State.EXITED, State.FAILED), r
            if r.start_at is not None:
                assert r.state in (State.STOPPED, State.BACKOFF), r
                assert not r.held, r
            if r.state is State.BACKOFF:
                assert r.start_at is not None, r
        if self.engine.given_up is not None:
            assert self.engine.start_due(math.inf) == ()


def run(policy: SupervisorPolicy, specs: list[ChildSpec], script: list[Step], seed: int) -> SimDriver:
    engine = RestartEngine(policy, specs, rng=random.Random(seed))
    driver = SimDriver(engine)
    engine.start_all(0.0)
    driver.release()
    for step in script:
        driver.step(step)
    return driver


@given(supervisor_policies(), child_specs(), steps(), st.integers())
def test_property_restarts_never_exceed_the_intensity(
    policy: SupervisorPolicy, specs: list[ChildSpec], script: list[Step], seed: int
) -> None:
    driver = run(policy, specs, script, seed)
    granted = driver.granted
    for t in granted:
        # Any closed window [t, t + period] that starts at a granted restart (the worst case).
        assert sum(1 for u in granted if t <= u <= t + policy.period) <= policy.intensity
    assert len(driver.escalations) <= 1
    for at, decision in driver.escalations:
        # The escalating restart is exactly the one past the intensity.
        assert sum(1 for u in granted if at - policy.period <= u <= at) == policy.intensity
        assert f"exceeds intensity {policy.intensity} per" in (decision.give_up or "")
        assert driver.engine.given_up == decision.give_up


@given(supervisor_policies(), child_specs(), steps(), st.integers())
def test_property_backoff_delays_stay_in_bounds(
    policy: SupervisorPolicy, specs: list[ChildSpec], script: list[Step], seed: int
) -> None:
    driver = run(policy, specs, script, seed)
    for spec, delay in driver.delays:
        assert 0 <= delay <= spec.backoff.max_delay * (1 + spec.backoff.jitter)


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


@given(supervisor_policies(), child_specs(), steps(operator=False), st.integers())
def test_property_a_temporary_child_is_never_restarted(
    policy: SupervisorPolicy, specs: list[ChildSpec], script: list[Step], seed: int
) -> None:
    driver = run(policy, specs, script, seed)
    for r in driver.engine.status():
        if r.restart is Restart.TEMPORARY:
            assert driver.starts.count(r.name) <= 1
            assert r.restarts == 0


@given(supervisor_policies(), child_specs(), steps(operator=False), st.integers())
def test_property_without_the_operator_only_permanent_and_transient_children_come_back(
    policy: SupervisorPolicy, specs: list[ChildSpec], script: list[Step], seed: int
) -> None:
    driver = run(policy, specs, script, seed)
    total_restarts = sum(r.restarts for r in driver.engine.status())
    # Every start beyond each child's first is a restart the engine counted.
    assert len(driver.starts) - len(set(driver.starts)) == total_restarts


def test_an_operator_stop_of_a_collateral_child_takes_it_out_of_the_group_restart() -> None:
    engine = make_engine(Strategy.ONE_FOR_ALL)
    start_everything(engine)
    decision = engine.on_exit("a", Exit.ERROR, 1.0)
    assert decision.start == NAMES

    assert engine.on_stop_requested("c") == Decision()  # already stopping

    finish_stops(engine, decision, 1.0)
    assert (row(engine, "c").state, row(engine, "c").held) == (State.STOPPED, True)
    start_in_order(engine, ["a", "b", "d"], 1.5)


def test_the_engine_shows_its_configuration() -> None:
    policy = SupervisorPolicy(Strategy.REST_FOR_ONE, intensity=2, period=1.0)
    specs = [ChildSpec("x"), ChildSpec("y", Restart.TEMPORARY)]
    engine = RestartEngine(policy, iter(specs))
    assert engine.policy is policy
    assert engine.specs == tuple(specs)
