"""The trio supervisor, driven end to end under an autojump MockClock.

The matrix strategy x restart type x how the child ended (the spirit of Erlang's supervisor_SUITE), then
escalation, ordering, start and stop timeouts, the watchdog, operator commands and the status table.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import structlog.testing
import trio
import trio.testing

from vwos import (
    Exit,
    GroupSpec,
    Restart,
    Service,
    ServiceContext,
    ServiceSpec,
    ServiceStatus,
    State,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    SupervisorPolicy,
)
from vwos._policy import BackoffPolicy

NO_JITTER = BackoffPolicy(initial=1.0, multiplier=2.0, max_delay=10.0, jitter=0.0)


@attrs.define
class Journal:
    """What the scripted services did, in order, with mock times."""

    events: list[tuple[float, str, str]] = attrs.field(factory=list)
    incarnations: dict[str, int] = attrs.field(factory=dict)

    def note(self, what: str, name: str) -> None:
        self.events.append((trio.current_time(), what, name))

    def what(self, *kinds: str) -> list[tuple[str, str]]:
        return [(w, n) for _, w, n in self.events if not kinds or w in kinds]


@attrs.frozen
class Script:
    journal: Journal
    #: What the first ``times`` incarnations do ``act_after`` seconds after ready: run, return, raise,
    #: hang_start, no_heartbeat, ignore_stop, block (``time.sleep(block_for)`` in the event loop); later
    #: incarnations run for ever.
    behaviour: str = "run"
    times: int = 1
    act_after: float = 1.0
    ready_after: float = 0.0
    heartbeat_every: float | None = None
    block_for: float = 0.0


class Scripted(Service[Script]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        journal, script = self.config.journal, self.config
        n = journal.incarnations.get(ctx.name, 0) + 1
        journal.incarnations[ctx.name] = n
        behaviour = script.behaviour if n <= script.times else "run"
        journal.note("start", ctx.name)
        try:
            if behaviour == "hang_start":
                await trio.sleep_forever()
            await trio.sleep(script.ready_after)
            task_status.started()
            journal.note("ready", ctx.name)
            async with trio.open_nursery() as nursery:
                if script.heartbeat_every is not None and behaviour != "no_heartbeat":
                    nursery.start_soon(_beat, ctx, script.heartbeat_every)
                await trio.sleep(script.act_after)
                if behaviour == "return":
                    journal.note("return", ctx.name)
                    nursery.cancel_scope.cancel()
                    return
                if behaviour == "raise":
                    journal.note("raise", ctx.name)
                    raise RuntimeError(f"{ctx.name} broke")
                if behaviour == "block":
                    journal.note("block", ctx.name)
                    time.sleep(script.block_for)  # noqa: ASYNC251 -- the fault under test
                await trio.sleep_forever()
        except BaseException as exc:
            if not _is_cancellation(exc):
                raise
            journal.note("cancelled", ctx.name)
            if behaviour == "ignore_stop":
                with trio.CancelScope(shield=True):
                    await trio.sleep(1000)
            raise


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


async def _beat(ctx: ServiceContext, every: float) -> None:
    await ctx.heartbeat_every(every)


def spec(name: str, journal: Journal, **kwargs: Any) -> ServiceSpec:
    script_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in attrs.fields_dict(Script)}
    kwargs.setdefault("backoff", NO_JITTER)
    return ServiceSpec(name, Scripted, Script(journal, **script_fields), **kwargs)


async def run_for(supervisor: Supervisor, seconds: float) -> list[ServiceStatus]:
    """Run the supervisor for ``seconds`` of mock time, then shut it down; the status table before that."""
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(seconds)
        status = supervisor.status()
        supervisor.shutdown()
    return status


# -- the matrix ----------------------------------------------------------------------------------------

EXITS = {"return": Exit.NORMAL, "raise": Exit.ERROR, "cancel": Exit.CANCELLED}


def _restarted(restart: Restart, how: str) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return how != "return"
    return False


@pytest.mark.parametrize(
    ("strategy", "restart", "how"),
    list(itertools.product(Strategy, Restart, EXITS)),
    ids=lambda v: getattr(v, "value", v),
)
async def test_matrix(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, restart: Restart, how: str
) -> None:
    journal = Journal()
    behaviour = "run" if how == "cancel" else how
    supervisor = Supervisor(
        [
            spec("a", journal),
            spec("b", journal, behaviour=behaviour, restart=restart, after=("a",)),
            spec("c", journal, after=("b",)),
        ],
        policy=SupervisorPolicy(strategy=strategy, intensity=3, period=60),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.5)
        if how == "cancel":  # cancelled by something other than the supervisor stopping it
            scope = supervisor._children["b"].scope
            assert scope is not None
            scope.cancel()
        await trio.sleep(30)
        status = {row.name: row for row in supervisor.status()}
        supervisor.shutdown()

    starts = {n: journal.what("start").count(("start", n)) for n in "abc"}
    if not _restarted(restart, how):
        assert starts == {"a": 1, "b": 1, "c": 1}
        assert status["b"].state is State.EXITED
        assert status["b"].last_exit is EXITS[how]
        assert (status["a"].state, status["c"].state) == (State.RUNNING, State.RUNNING)
        return
    assert status["b"].state is State.RUNNING
    assert status["b"].restarts == 1
    expected = {
        Strategy.ONE_FOR_ONE: {"a": 1, "b": 2, "c": 1},
        Strategy.ONE_FOR_ALL: {"a": 2, "b": 2, "c": 2},
        Strategy.REST_FOR_ONE: {"a": 1, "b": 2, "c": 2},
    }[strategy]
    assert starts == expected
    # Collateral siblings are stopped (a and c at once: neither starts after the other) and started again
    # in start order, each once the one it starts after is ready.
    after_failure = [e for e in journal.what("start", "cancelled") if e != ("cancelled", "b")][3:]
    if strategy is Strategy.ONE_FOR_ALL:
        assert sorted(after_failure[:2]) == [("cancelled", "a"), ("cancelled", "c")]
        assert after_failure[2:5] == [("start", "a"), ("start", "b"), ("start", "c")]
    if strategy is Strategy.REST_FOR_ONE:
        assert after_failure[:1] == [("cancelled", "c")]
        assert after_failure[1:3] == [("start", "b"), ("start", "c")]


# -- escalation ----------------------------------------------------------------------------------------


async def test_a_service_past_its_budget_fails_alone_and_the_rest_keeps_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [spec("a", journal), spec("b", journal, behaviour="raise", times=100, act_after=0.1)],
        policy=SupervisorPolicy(intensity=2, period=10),
    )
    rows = {row.name: row for row in await run_for(supervisor, 60)}
    assert journal.what("start").count(("start", "b")) == 3  # first run + 2 restarts, then it failed
    assert rows["b"].state is State.FAILED
    assert rows["b"].reason is not None
    assert "'b' failed: RuntimeError: b broke" in rows["b"].reason
    assert "3 restarts" in rows["b"].reason
    assert "exceeds intensity 2 per 10" in rows["b"].reason
    assert rows["a"].state is State.RUNNING  # the healthy one never noticed
    assert ("cancelled", "a") not in journal.what("cancelled")[:-1]


async def test_a_critical_service_past_its_budget_gives_up_and_says_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [spec("a", journal), spec("b", journal, behaviour="raise", times=100, act_after=0.1, critical=True)],
        policy=SupervisorPolicy(intensity=2, period=10),
    )
    with pytest.raises(SupervisorGaveUp) as info:
        await supervisor.run()
    reason = info.value.reason
    assert "'b' failed: RuntimeError: b broke" in reason
    assert "3 restarts" in reason
    assert "exceeds intensity 2 per 10" in reason
    # The service's own exception is the cause, traceback and all.
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "b broke"
    assert info.value.__cause__.__traceback__ is not None
    assert journal.what("start").count(("start", "b")) == 3  # first run + 2 restarts, then give up
    assert ("cancelled", "a") in journal.what("cancelled")  # the healthy one was stopped too
    assert {row.name: row.state for row in supervisor.status()}["b"] is State.FAILED


async def test_restarts_spread_beyond_the_period_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    backoff = BackoffPolicy(initial=1.0, multiplier=1.0, max_delay=1.0, jitter=0.0, reset_after=1000)
    supervisor = Supervisor(
        [spec("a", journal, behaviour="raise", times=10, act_after=20.0, backoff=backoff)],
        policy=SupervisorPolicy(intensity=1, period=10),
    )
    (row,) = await run_for(supervisor, 200)
    assert journal.what("raise").count(("raise", "a")) == 9
    assert row.restarts == 9
    assert row.state is State.RUNNING


# -- backoff -------------------------------------------------------------------------------------------


async def test_backoff_grows_between_restarts(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [spec("a", journal, behaviour="raise", times=4, act_after=0.0)],
        policy=SupervisorPolicy(intensity=10, period=100),
    )
    await run_for(supervisor, 60)
    starts = [t for t, w, _ in journal.events if w == "start"]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0, 8.0]


# -- ordering, readiness, timeouts ---------------------------------------------------------------------


async def test_start_waits_for_readiness_in_order_and_stop_is_reversed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("gateway", journal, ready_after=2.0),
            spec("logic", journal, after=("gateway",), ready_after=1.0),
            spec("uplink", journal, after=("logic",)),
        ]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        ready_at = trio.current_time()
        supervisor.shutdown()
    assert journal.what("start", "ready") == [
        ("start", "gateway"),
        ("ready", "gateway"),
        ("start", "logic"),
        ("ready", "logic"),
        ("start", "uplink"),
        ("ready", "uplink"),
    ]
    assert ready_at == pytest.approx(3.0)
    assert journal.what("cancelled") == [
        ("cancelled", "uplink"),
        ("cancelled", "logic"),
        ("cancelled", "gateway"),
    ]
    assert all(row.state is State.STOPPED for row in supervisor.status())


async def test_start_timeout_counts_as_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [spec("a", journal, behaviour="hang_start", start_timeout=5.0)],
        policy=SupervisorPolicy(intensity=3, period=100),
    )
    (row,) = await run_for(supervisor, 30)
    assert row.state is State.RUNNING
    assert row.restarts == 1
    assert row.last_exit is Exit.START_TIMEOUT
    assert row.last_error == "not ready within its start timeout of 5 s"


async def test_watchdog_restarts_a_service_whose_heartbeat_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [spec("a", journal, behaviour="no_heartbeat", heartbeat_every=0.5, watchdog=2.0)],
        policy=SupervisorPolicy(intensity=3, period=100),
    )
    (row,) = await run_for(supervisor, 30)
    assert row.restarts == 1
    assert row.last_exit is Exit.WATCHDOG
    assert row.last_error == "no heartbeat for 2 s"
    assert row.state is State.RUNNING  # the second incarnation beats and stays


async def test_a_service_that_ignores_its_stop_is_left_behind_after_its_stop_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("a", journal),
            spec("b", journal, behaviour="ignore_stop", act_after=10_000, stop_timeout=3.0),
            spec("c", journal, after=("b",)),
        ]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(1)
        supervisor.shutdown()
        stop_began = trio.current_time()
        await supervisor.wait_stopped()
        stopped_at = trio.current_time()
        left_behind = supervisor.left_behind
    # 'a' (independent of b) stopped at once; everything had stopped or was left behind after b's stop
    # timeout, not after b's 1000 s of stubbornness.
    a_cancelled = next(t for t, w, n in journal.events if (w, n) == ("cancelled", "a"))
    assert a_cancelled == pytest.approx(stop_began)
    assert stopped_at - stop_began == pytest.approx(3.0)
    assert left_behind == ("b",)
    # c, which starts after b, was stopped before b.
    cancelled = [n for _, w, n in journal.events if w == "cancelled"]
    assert cancelled.index("c") < cancelled.index("b")


# -- operator commands, status, state --------------------------------------------------------------


async def test_operator_stop_start_restart(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    supervisor = Supervisor([spec("a", journal), spec("b", journal)])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.stop_service("b")
        await trio.sleep(10)
        assert {r.name: r.state for r in supervisor.status()} == {"a": State.RUNNING, "b": State.STOPPED}
        supervisor.start_service("b")
        await trio.sleep(1)
        supervisor.restart_service("a")
        await trio.sleep(1)
        rows = {r.name: r for r in supervisor.status()}
        supervisor.shutdown()
    assert rows["a"].state is State.RUNNING
    assert rows["b"].state is State.RUNNING
    assert rows["a"].restarts == 0  # an operator's restart is not the policy's
    assert rows["a"].uptime == pytest.approx(1.0)
    assert journal.what("start").count(("start", "a")) == 2
    assert journal.what("start").count(("start", "b")) == 2
    with pytest.raises(KeyError, match="no such service or group: 'zzz'"):
        supervisor.stop_service("zzz")


async def test_the_status_table_numbers_each_run_of_a_service(autojump_clock: trio.testing.MockClock) -> None:
    """``incarnation`` counts the runs started: what tells a caller that a new run began."""
    journal = Journal()
    supervisor = Supervisor([spec("a", journal, behaviour="raise"), spec("b", journal)])
    assert [r.incarnation for r in supervisor.status()] == [0, 0]  # not started yet
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert [r.incarnation for r in supervisor.status()] == [1, 1]
        await trio.sleep(2.5)  # a raised after 1 s and was restarted after its 1 s backoff
        crashed = {r.name: r for r in supervisor.status()}
        supervisor.stop_service("a")
        await trio.sleep(1)
        stopped = {r.name: r for r in supervisor.status()}
        supervisor.restart_service("a")
        await trio.sleep(1)
        restarted = {r.name: r for r in supervisor.status()}
        supervisor.shutdown()
    assert (crashed["a"].state, crashed["a"].restarts, crashed["a"].incarnation) == (State.RUNNING, 1, 2)
    assert (stopped["a"].state, stopped["a"].incarnation) == (State.STOPPED, 2)  # a stop starts no run
    assert (restarted["a"].state, restarted["a"].incarnation) == (State.RUNNING, 3)
    assert restarted["b"].incarnation == 1
    assert journal.what("start").count(("start", "a")) == 3


async def test_cancelling_the_supervisor_still_stops_services_in_reverse_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor([spec("a", journal), spec("b", journal, after=("a",))])
    with trio.move_on_after(5):
        await supervisor.run()
    assert journal.what("cancelled") == [("cancelled", "b"), ("cancelled", "a")]


async def test_services_get_a_state_dir_and_a_scoped_bus(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: dict[str, Any] = {}

    class Probe(Service[Journal]):
        async def run(
            self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            seen["state_dir"] = ctx.state_dir
            seen["exists"] = ctx.state_dir.is_dir()
            seen["client"] = ctx.bus.name
            task_status.started()
            await trio.sleep_forever()

    supervisor = Supervisor([ServiceSpec("probe", Probe, Journal())], state_dir=tmp_path)
    await run_for(supervisor, 1)
    assert seen == {"state_dir": tmp_path / "probe", "exists": True, "client": "probe"}


async def test_services_given_out_of_order_start_in_dependency_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor([spec("a", journal, after=("b",)), spec("b", journal, ready_after=1.0)])
    await run_for(supervisor, 2)
    assert journal.what("start", "ready")[:3] == [("start", "b"), ("ready", "b"), ("start", "a")]
    assert [row.name for row in supervisor.status()] == ["b", "a"]


def test_after_must_name_a_service_that_runs_and_no_cycle() -> None:
    journal = Journal()
    with pytest.raises(ValueError, match="'after' names services that do not run: zzz"):
        Supervisor([spec("a", journal, after=("zzz",)), spec("b", journal)])
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        Supervisor([spec("a", journal, after=("b",)), spec("b", journal, after=("a",))])


# -- the tree: groups, critical units, failed units and their revival ------------------------------------


async def test_a_group_restarts_whole_and_units_outside_it_never_notice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("x", journal, group="pair", behaviour="raise", times=1, act_after=1.0),
            spec("y", journal, group="pair"),
            spec("z", journal),
        ],
        groups=[GroupSpec("pair", Strategy.ONE_FOR_ALL)],
        policy=SupervisorPolicy(intensity=3, period=100),
    )
    rows = {row.name: row for row in await run_for(supervisor, 30)}
    assert journal.what("start").count(("start", "x")) == 2
    assert journal.what("start").count(("start", "y")) == 2  # one_for_all inside the group
    assert journal.what("start").count(("start", "z")) == 1  # outside it: untouched
    assert rows["x"].group == "pair"
    assert all(row.state is State.RUNNING for row in rows.values())


async def test_a_non_critical_group_past_its_budget_fails_and_vwos_restart_revives_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            # x is critical within the group: its failure escalates to the group, which is not critical.
            spec(
                "x",
                journal,
                group="pair",
                behaviour="raise",
                times=100,
                act_after=0.5,
                critical=True,
                intensity=0,
            ),
            spec("y", journal, group="pair"),
            spec("z", journal),
        ],
        groups=[GroupSpec("pair", Strategy.ONE_FOR_ONE, intensity=1, period=100)],
        policy=SupervisorPolicy(intensity=3, period=100),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(60)
        rows = {row.name: row for row in supervisor.status()}
        groups = {g.name: g for g in supervisor.group_status()}
        assert rows["x"].state is State.FAILED
        assert rows["y"].state is State.FAILED  # the group failed as a whole
        assert rows["z"].state is State.RUNNING
        assert groups["pair"].state is State.FAILED
        assert groups["pair"].reason is not None
        assert "x" in groups["pair"].reason
        starts_before = journal.what("start").count(("start", "x"))
        supervisor.restart_service("pair")  # a fresh budget: it runs again
        await trio.sleep(0.1)
        assert {row.name: row.state for row in supervisor.status()}["y"] is State.RUNNING
        assert journal.what("start").count(("start", "x")) == starts_before + 1
        supervisor.shutdown()
    assert journal.what("start").count(("start", "z")) == 1
    assert supervisor.stop_reason is not None
    assert "gave up" not in supervisor.stop_reason


async def test_a_failed_service_comes_back_on_its_own_after_revive_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec(
                "a",
                journal,
                behaviour="raise",
                times=2,
                act_after=0.1,
                intensity=1,
                period=100,
                revive_after=50.0,
            )
        ],
        policy=SupervisorPolicy(intensity=3, period=100),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(10)
        (row,) = supervisor.status()
        assert row.state is State.FAILED
        assert row.revive_at is not None
        assert row.revive_at - trio.current_time() == pytest.approx(50.0 - (10 - 1.1), abs=1.0)
        await trio.sleep(60)
        (row,) = supervisor.status()
        assert row.state is State.RUNNING  # the third incarnation runs for ever
        supervisor.shutdown()
    assert journal.what("start").count(("start", "a")) == 3


async def test_a_start_that_never_finishes_holds_back_only_what_is_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("slow", journal, behaviour="hang_start", times=1000, start_timeout=10.0),
            spec("needs_slow", journal, after=("slow",)),
            spec("free", journal, ready_after=1.0),
        ],
        policy=SupervisorPolicy(intensity=1, period=1000),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(5)
        rows = {row.name: row for row in supervisor.status()}
        assert rows["free"].state is State.RUNNING  # started in parallel, not behind slow
        assert rows["slow"].state is State.STARTING
        assert rows["needs_slow"].state is State.WAITING
        assert rows["needs_slow"].reason == "waiting for 'slow' (starting)"
        await trio.sleep(100)
        rows = {row.name: row for row in supervisor.status()}
        assert rows["slow"].state is State.FAILED
        assert rows["free"].state is State.RUNNING
        assert rows["needs_slow"].state is State.WAITING
        assert supervisor.phase == "up"  # every start has settled: systemd hears READY
        supervisor.shutdown()
    assert ("start", "needs_slow") not in journal.what("start")


async def test_a_shutdown_while_starts_are_pending_stops_within_the_stop_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("slow", journal, behaviour="hang_start", start_timeout=1000.0),
            spec("needs_slow", journal, after=("slow",)),
            spec("free", journal),
        ]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(3)
        stop_at = trio.current_time()
        supervisor.shutdown("test")
        await supervisor.wait_stopped()
        assert trio.current_time() - stop_at <= 5.0  # the default stop timeout
    assert ("cancelled", "slow") in journal.what("cancelled")
    assert ("cancelled", "free") in journal.what("cancelled")


async def test_heartbeat_every_keeps_the_watchdog_quiet(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    supervisor = Supervisor([spec("a", journal, heartbeat_every=0.5, watchdog=2.0)])
    (row,) = await run_for(supervisor, 60)
    assert row.restarts == 0
    assert row.state is State.RUNNING


async def test_heartbeat_every_refuses_a_nonsense_interval() -> None:
    beats: list[float] = []
    ctx = ServiceContext.__new__(ServiceContext)
    object.__setattr__(ctx, "_heartbeat", lambda: beats.append(1.0))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="heartbeat_every needs a finite number of seconds > 0"):
            await ctx.heartbeat_every(bad)
    assert beats == []


# -- a blocked event loop (real time: the block is a real time.sleep) -----------------------------------


async def test_a_blocked_loop_names_the_blocker_and_restarts_only_it() -> None:
    """The blocker sleeps 1.2 s in the event loop once; the limit is 0.3 s. The innocent service's
    watchdog (0.5 s) would fire late for that block without the loop watch: it must not be restarted."""
    journal = Journal()
    supervisor = Supervisor(
        [
            spec(
                "blocker",
                journal,
                behaviour="block",
                block_for=1.2,
                act_after=0.2,
                heartbeat_every=0.05,
                watchdog=5.0,
                backoff=BackoffPolicy(initial=0.01, jitter=0.0),
            ),
            spec("innocent", journal, heartbeat_every=0.05, watchdog=0.5),
        ],
        policy=SupervisorPolicy(intensity=3, period=100),
        loop_block=0.3,
    )
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.sleep(3.0)  # the block starts at 0.2 s and lasts 1.2 s
            rows = {row.name: row for row in supervisor.status()}
            supervisor.shutdown()
    assert rows["blocker"].restarts == 1
    assert rows["blocker"].last_exit is Exit.BLOCKED
    assert rows["innocent"].restarts == 0
    assert journal.what("start").count(("start", "innocent")) == 1
    (blocked, *_) = [e for e in logs if e["event"] == "event loop blocked"]
    assert blocked["service"] == "blocker"
    assert "time.sleep(script.block_for)" in blocked["where"]  # its stack, at the line that blocks


# -- the test kit ------------------------------------------------------------------------------------------


class _Breaks(Service[None]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(1)
        _fail_deep_inside()


def _fail_deep_inside() -> None:
    raise LookupError("the sensor table has no row 7")


async def test_the_harness_raises_the_service_s_own_exception_with_its_traceback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from vwos.testing import open_harness

    with pytest.raises(LookupError, match="the sensor table has no row 7") as info:
        async with open_harness(ServiceSpec("breaks", _Breaks, None)):
            await trio.sleep(10)
    frames = [entry.name for entry in info.traceback]
    assert "_fail_deep_inside" in frames
    assert "run" in frames
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_the_harness_reports_a_watchdog_failure_as_supervisor_gave_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from vwos.testing import open_harness

    journal = Journal()
    with pytest.raises(SupervisorGaveUp, match="no heartbeat for 2 s"):
        async with open_harness(
            spec("quiet", journal, behaviour="no_heartbeat", heartbeat_every=0.5, watchdog=2.0)
        ):
            await trio.sleep(10)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no")


class _Odd(BaseException):
    pass


@attrs.frozen
class _Raise:
    make: Any


class _RaisesAnything(Service[_Raise]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(0.5)
        raise self.config.make()


@pytest.mark.parametrize(
    ("make", "summary"),
    [
        (lambda: SystemExit("sensor not found"), "SystemExit: sensor not found"),
        (KeyboardInterrupt, "KeyboardInterrupt: "),
        (_Odd, "_Odd: "),
        (_Unprintable, "_Unprintable: <str() of the exception failed: ValueError>"),
        (
            lambda: BaseExceptionGroup("two", [ValueError("a"), KeyError("b")]),
            "ExceptionGroup: two (2 sub-exceptions)",
        ),
    ],
    ids=["SystemExit", "KeyboardInterrupt", "BaseException", "unprintable", "group"],
)
async def test_whatever_a_service_raises_is_its_own_failure(
    autojump_clock: trio.testing.MockClock, make: Any, summary: str
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            ServiceSpec("careless", _RaisesAnything, _Raise(make), backoff=NO_JITTER),
            spec("innocent", journal),
        ],
        policy=SupervisorPolicy(intensity=1, period=100),
    )
    rows = {row.name: row for row in await run_for(supervisor, 30)}
    assert rows["careless"].state is State.FAILED
    assert rows["careless"].last_error is not None
    assert rows["careless"].last_error.startswith(summary)
    assert rows["innocent"].state is State.RUNNING
    assert journal.what("start") == [("start", "innocent")]


async def test_a_revival_does_not_start_what_the_operator_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("a", journal, group="g", critical=True, intensity=0, behaviour="raise", act_after=1.0),
            spec("b", journal, group="g"),
        ],
        groups=[GroupSpec("g", intensity=0, revive_after=10.0)],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.5)
        supervisor.stop_service("b")  # the operator keeps b stopped
        await trio.sleep(2.0)
        assert {g.name: g.state for g in supervisor.group_status()}["g"] is State.FAILED
        assert {r.name: r.state for r in supervisor.status()}["b"] is State.STOPPED  # stopped, not failed
        await trio.sleep(10.0)  # g is revived
        rows = {r.name: r.state for r in supervisor.status()}
        supervisor.shutdown()
    assert rows == {"a": State.RUNNING, "b": State.STOPPED}
    assert journal.what("start").count(("start", "b")) == 1


async def test_a_critical_member_the_operator_started_in_a_stopped_group_is_never_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec(
                "s", journal, group="g", critical=True, intensity=0, behaviour="raise", act_after=1.0, times=2
            ),
            spec("t", journal, group="g"),
        ],
        groups=[GroupSpec("g", intensity=5, period=10.0)],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.5)
        supervisor.stop_service("g")
        await trio.sleep(0.5)
        supervisor.start_service("s")  # only the member
        await trio.sleep(100)
        rows = {r.name: r for r in supervisor.status()}
        supervisor.shutdown()
    # Found by an attack: past its budget it was left in backoff for ever. Its group restarts it now (the
    # operator's start ended the group's stop as a whole); what the operator stopped stays stopped.
    assert rows["s"].state is State.RUNNING
    assert journal.what("start").count(("start", "s")) == 3
    assert rows["t"].state is State.STOPPED


async def test_a_service_that_holds_the_loop_in_steps_below_the_limit_is_restarted() -> None:
    """Each step blocks 0.3 s, under the 0.5 s limit, one after the other: it holds the loop most of the
    time, so it is restarted (and only it: the innocent's watchdog of 0.4 s excuses the hog's steps)."""

    class Hog(Service[None]):
        async def run(
            self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            while True:
                time.sleep(0.3)  # noqa: ASYNC251 -- the fault under test
                await trio.lowlevel.checkpoint()

    journal = Journal()
    supervisor = Supervisor(
        [
            ServiceSpec("hog", Hog, None, backoff=BackoffPolicy(initial=0.01, jitter=0.0)),
            spec("innocent", journal, heartbeat_every=0.05, watchdog=0.4),
        ],
        policy=SupervisorPolicy(intensity=100, period=100),
        loop_block=0.5,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.sleep(2.0)
            rows = {row.name: row for row in supervisor.status()}
            supervisor.shutdown()
    assert rows["hog"].restarts >= 1
    assert rows["hog"].last_exit is Exit.BLOCKED
    assert rows["hog"].last_error is not None
    assert rows["hog"].last_error.startswith("held the event loop")
    assert rows["innocent"].restarts == 0


async def test_a_block_by_another_service_does_not_count_against_a_start_timeout() -> None:
    journal = Journal()
    supervisor = Supervisor(
        [
            spec("blocker", journal, behaviour="block", block_for=1.0, act_after=0.05),
            spec("innocent", journal, ready_after=0.5, start_timeout=0.8),
        ],
        policy=SupervisorPolicy(intensity=0, period=100),
        loop_block=3.0,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.sleep(0.5)
            rows = {row.name: row for row in supervisor.status()}
            supervisor.shutdown()
    assert rows["innocent"].state is State.RUNNING
    assert rows["innocent"].restarts == 0
    assert journal.what("block") == [("block", "blocker")]


# -- errors a plugin author can act on ---------------------------------------------------------------------


class _Typo(Service[None]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with ctx.bus.subscribe("Vehicle.Sped") as speeds:
            task_status.started()
            async for _ in speeds:
                pass


class _Speedo(Service[None]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from bus import Topic

        ctx.bus.publisher(Topic("Vehicle.Speed", float))
        task_status.started()
        await trio.sleep_forever()


async def test_a_subscription_to_a_name_nobody_declares_is_reported_once_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(
        [ServiceSpec("speedo", _Speedo, None), ServiceSpec("dashboard", _Typo, None)], undeclared_grace=10.0
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.sleep(9)
            early = [e for e in logs if e["event"].startswith("subscribed to a topic nobody has declared")]
            await trio.sleep(60)
            supervisor.shutdown()
    assert early == []  # within the grace period: a publisher may still be starting
    (report,) = [e for e in logs if e["event"].startswith("subscribed to a topic nobody has declared")]
    assert report["event"] == "subscribed to a topic nobody has declared; did you mean 'Vehicle.Speed'?"
    assert report["service"] == "dashboard"
    assert report["topic"] == "Vehicle.Sped"
    assert report["closest"] == ["Vehicle.Speed"]
    assert report["log_level"] == "warning"


async def test_the_supervisor_serves_its_socket_with_the_configured_connection_limits(tmp_path: Path) -> None:
    import bus

    journal = Journal()
    socket = tmp_path / "bus.sock"
    supervisor = Supervisor(
        [spec("a", journal)],
        socket_path=socket,
        authorize=lambda peer, name: bus.Permissions.ALL,  # a trusted tool
        connection_limits=bus.ConnectionLimits(subscriptions=2),
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            async with bus.connect_unix(socket, "tool") as client:
                first = client.subscribe("Vehicle.A")
                second = client.subscribe("Vehicle.B")
                third = client.subscribe("Vehicle.C")
                with pytest.raises(bus.LimitExceededError, match="limit of 2 subscriptions per connection"):
                    await third.receive()
                first.close()
                second.close()
            supervisor.shutdown()


# -- construction and the operator's side before run ----------------------------------------------------


@pytest.mark.parametrize("grace", [0.0, -1.0, float("inf"), float("nan")])
def test_an_undeclared_grace_that_is_not_a_positive_finite_number_is_refused(grace: float) -> None:
    with pytest.raises(ValueError, match=r"undeclared_grace must be a finite number of seconds > 0, got "):
        Supervisor([], undeclared_grace=grace)


def test_two_enabled_services_of_one_name_are_refused_a_disabled_one_does_not_count() -> None:
    journal = Journal()
    with pytest.raises(ValueError, match=r"^service names must be unique: \['a', 'a'\]$"):
        Supervisor([spec("a", journal), spec("a", journal)])
    disabled = attrs.evolve(spec("a", journal), enabled=False)
    Supervisor([spec("a", journal), disabled])  # no error


def test_the_bus_is_there_only_once_the_supervisor_runs() -> None:
    with pytest.raises(RuntimeError, match="the supervisor has not started yet"):
        _ = Supervisor([]).bus


async def test_a_shutdown_before_run_makes_run_stop_at_once_with_the_first_reason(
    autojump_clock: Any,
) -> None:
    journal = Journal()
    supervisor = Supervisor([spec("a", journal)])
    supervisor.shutdown("changed my mind")
    supervisor.shutdown("a second reason")  # the first one given wins
    with trio.fail_after(10):
        await supervisor.run()
    assert journal.events == [(0.0, "start", "a"), (0.0, "cancelled", "a")]  # stopped as soon as it started
    assert supervisor.stop_reason == "changed my mind"
    assert supervisor.phase == "stopped"
