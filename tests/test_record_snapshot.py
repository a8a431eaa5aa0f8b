"""Snapshot mode of services.record: the conditions (parsed, evaluated), the ring's bounds and the rising
edges (hypothesis), the state machine, and `SnapshotRecorder` on a live bus under MockClock (conditions, the
bus method, post windows, floods, a full disk); `vwos record --snapshot` as a real process.

Every snapshot file is read back with the mcap reader and with npm's @mcap/core (`check_file`, from
test_record)."""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import signal
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import strategies
import trio
import trio.testing
from record_kit import broker, until, vwos_command
from test_record import check_file, node_reader  # noqa: F401 -- the fixtures behind `read_twice`

import bus
from bus import Bus, NotAvailable, RemoteError, Sample, Topic
from services.record import (
    SNAPSHOT_METHOD,
    Condition,
    ConditionError,
    RecordingError,
    SnapshotRecorder,
    SnapshotReply,
    SnapshotResult,
    SnapshotTooSoonError,
    bag_info,
    parse_condition,
    read_recording,
    record_bus,
)
from services.record._snapshot import Snapshot, SnapshotRing, Snapshotter, Trigger, sample_size
from vwos._cli import main as vwos_main

__all__ = ["broker"]  # record_kit's fixture, used here

SPEED = Topic("Snap.Speed", float, unit="km/h")
GEAR = Topic("Snap.Gear", str)
BRAKE = Topic("Brake.Pressed", bool)
TIMEOUT = 60


@pytest.fixture
def read_twice(request: pytest.FixtureRequest) -> Any:
    """test_record's ``check_file``: read files with the mcap reader and with @mcap/core, compare them."""
    return request.getfixturevalue("check_file")


def speed(value: Any, t: float, seq: int, topic: str = "Snap.Speed") -> Sample[Any]:
    return Sample(topic, value, 1.7e9 + t, t, "ecu", seq)


# -- conditions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "topic", "op", "operand", "normal"),
    [
        ("Vehicle.Speed > 130", "Vehicle.Speed", ">", 130, "Vehicle.Speed > 130"),
        ("Vehicle.Speed>=-1.5e3", "Vehicle.Speed", ">=", -1500.0, "Vehicle.Speed >= -1.5e3"),
        ("  A.b <  .5 ", "A.b", "<", 0.5, "A.b < .5"),
        ("A.b <= 7.", "A.b", "<=", 7.0, "A.b <= 7."),
        ('Vehicle.Gear == "REVERSE"', "Vehicle.Gear", "==", "REVERSE", 'Vehicle.Gear == "REVERSE"'),
        ("Vehicle.Gear != 'D'", "Vehicle.Gear", "!=", "D", "Vehicle.Gear != 'D'"),
        ('A == "say \\"hi\\" \\u00e9"', "A", "==", 'say "hi" é', 'A == "say \\"hi\\" \\u00e9"'),
        ('A == ""', "A", "==", "", 'A == ""'),
        ("Body.Horn == true", "Body.Horn", "==", True, "Body.Horn == true"),
        ("Body.Horn != false", "Body.Horn", "!=", False, "Body.Horn != false"),
        ("Vehicle.Speed is not available", "Vehicle.Speed", "is not available", None, None),
        ("Vehicle.Speed  IS  NOT  available", "Vehicle.Speed", "is not available", None, None),
        ("Vehicle.Speed is available", "Vehicle.Speed", "is available", None, None),
        ("A == 12345678901234567890123", "A", "==", 12345678901234567890123, "A == 12345678901234567890123"),
    ],
)
def test_conditions_parse(text: str, topic: str, op: str, operand: Any, normal: str | None) -> None:
    condition = parse_condition(text)
    assert str(condition) == condition.text
    assert (condition.topic, condition.op, condition.operand) == (topic, op, operand)
    assert type(condition.operand) is type(operand)
    assert condition.text == (normal or f"{topic} {op}")
    assert parse_condition(condition.text) == condition


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "a trigger condition is empty"),
        ("   ", "a trigger condition is empty"),
        ("Vehicle.Speed", "expected 'TOPIC OP VALUE'"),
        ("Vehicle.Speed 130", "expected 'TOPIC OP VALUE'"),
        ("Vehicle.Speed => 130", "expected 'TOPIC OP VALUE'"),
        ("Vehicle.Speed = 130", "expected 'TOPIC OP VALUE'"),
        ("> 130", "expected 'TOPIC OP VALUE'"),
        ("Vehicle.Speed >", "nothing to compare with after '>'"),
        ("Vehicle.Speed > fast", "expected a number, true, false or a quoted text after '>', got 'fast'"),
        ("Vehicle.Speed >> 3", "got '> 3'"),
        ("Vehicle.Speed > 1_000", "got '1_000'"),
        ("Vehicle.Speed > nan", "got 'nan'"),
        ("Vehicle.Speed > inf", "got 'inf'"),
        ("Vehicle.Speed > 1e999", "the number '1e999' is out of range"),
        ("Vehicle.Speed > 1" + "0" * 60, "more than 40 digits"),
        ("Body.Horn > true", "'>' compares numbers; true is a bool (use == or !=)"),
        ('Vehicle.Gear < "R"', "'<' compares numbers; '\"R\"' is a text (use == or !=)"),
        ('Vehicle.Gear == "R', 'has no closing "'),
        ("Vehicle.Gear == 'it's'", "has a ' inside"),
        ('Vehicle.Gear == "\\x"', "is not a valid quoted text"),
        ("Vehicle.* > 3", "a trigger's topic is one name, not a pattern"),
        ("Vehicle.** is not available", "a trigger's topic is one name, not a pattern"),
        ("Vehicle..Speed > 3", "'Vehicle..Speed' is not a topic name"),
        ("Vehicle.Spe-ed > 3", "is not a topic name"),
        ("A is not availble", "expected 'TOPIC OP VALUE'"),
        ("A" * 2000 + " > 1", "longer than 1000 characters"),
    ],
)
def test_bad_conditions_say_what_is_wrong_in_one_line(text: str, problem: str) -> None:
    with pytest.raises(ConditionError) as raised:
        parse_condition(text)
    message = str(raised.value)
    assert problem in message
    assert "\n" not in message
    assert len(message) < 400
    if text.strip() and len(text) <= 60:
        assert repr(text) in message  # it names the condition


def test_parse_condition_refuses_what_is_not_text() -> None:
    with pytest.raises(ConditionError, match="must be a str, not int"):
        parse_condition(3)  # type: ignore[arg-type]


class Gear(enum.Enum):
    PARK = 0
    REVERSE = 1


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        ("A > 130", 130.5, True),
        ("A > 130", 130, False),
        ("A >= 130", 130.0, True),
        ("A == 130", 130.0, True),
        ("A != 130", 130.0, False),
        ("A < 0", -0.1, True),
        ("A <= 2", 3, False),
        ("A > 130", math.nan, False),
        ("A != 130", math.nan, True),
        ("A > 130", math.inf, True),
        ("A > 0", True, None),  # a bool is not a number here
        ("A > 0", "5", None),
        ("A > 0", None, None),
        ("A > 0", (1, 2), None),
        ("A > 0", NotAvailable("e2e"), False),
        ("A == true", True, True),
        ("A == true", 1, None),
        ("A != false", False, False),
        ('A == "R"', "R", True),
        ('A == "R"', "r", False),
        ('A == "REVERSE"', Gear.REVERSE, True),
        ('A != "REVERSE"', Gear.PARK, True),
        ('A == "REVERSE"', bus.EnumMember("x.Gear", "REVERSE"), True),
        ('A == "1"', 1, None),
        ('A == "R"', NotAvailable("e2e"), False),
        ("A is not available", NotAvailable("e2e"), True),
        ("A is not available", 0.0, False),
        ("A is available", NotAvailable("e2e"), False),
        ("A is available", "anything", True),
        ("A == 123456789012345678901234567890", 123456789012345678901234567890, True),
        ("A == 123456789012345678901234567890", 123456789012345678901234567891, False),
    ],
)
def test_condition_holds(condition: str, value: Any, holds: bool | None) -> None:
    assert parse_condition(condition).holds(value) is holds


def conditions() -> st.SearchStrategy[Condition]:
    numbers = st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=False, allow_infinity=False)
    )
    texts = st.text(max_size=20).filter(lambda t: t.isprintable())
    comparisons = st.one_of(
        st.tuples(st.sampled_from([">", ">=", "<", "<=", "==", "!="]), numbers),
        st.tuples(st.sampled_from(["==", "!="]), st.one_of(st.booleans(), texts)),
    )

    def build(topic: str, op_operand: tuple[str, Any]) -> Condition:
        op, operand = op_operand
        if type(operand) is bool:
            written = "true" if operand else "false"
        elif type(operand) is str:
            written = json.dumps(operand)
        else:
            written = repr(operand)
        return Condition(f"{topic} {op} {written}", topic, op, operand)

    availability = st.builds(
        lambda topic, op: Condition(f"{topic} {op}", topic, op, None),
        strategies.topic_names(),
        st.sampled_from(["is available", "is not available"]),
    )
    return st.one_of(st.builds(build, strategies.topic_names(), comparisons), availability)


@hypothesis.given(condition=conditions())
def test_a_condition_reads_back_from_its_text(condition: Condition) -> None:
    parsed = parse_condition(condition.text)
    assert (parsed.topic, parsed.op) == (condition.topic, condition.op)
    assert parsed.operand == condition.operand
    assert type(parsed.operand) is type(condition.operand)


@hypothesis.given(
    op=st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
    operand=st.floats(allow_nan=False, allow_infinity=False),
    value=st.one_of(st.floats(), st.integers()),
)
def test_numbers_compare_as_python_compares_them(op: str, operand: float, value: float) -> None:
    import operator

    python = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    python |= {"==": operator.eq, "!=": operator.ne}
    condition = parse_condition(f"A {op} {operand!r}")
    assert condition.holds(value) is python[op](value, operand)


# -- the ring -------------------------------------------------------------------------------------------


def ring_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.floats(),
        st.text(max_size=300),
        st.binary(max_size=2000),
        st.just(NotAvailable("e2e")),
        st.lists(st.integers(), max_size=30).map(tuple),
    )


@st.composite
def sample_streams(draw: st.DrawFn) -> list[Sample[Any]]:
    """Samples as a subscription delivers them: bus times that never go back, bursts at one time."""
    n = draw(st.integers(min_value=0, max_value=150))
    t = draw(st.floats(min_value=0, max_value=1e6))
    out = []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.001, 0.1, 0.5, 3.0, 40.0]))
        out.append(Sample(f"T.{i % 3}", draw(ring_values()), 1.7e9, t, "p", i + 1))
    return out


@hypothesis.given(
    stream=sample_streams(),
    seconds=st.sampled_from([0.01, 1.0, 5.0, 30.0]),
    max_samples=st.integers(min_value=1, max_value=60),
    max_bytes=st.integers(min_value=1, max_value=20_000),
)
def test_the_ring_never_holds_more_than_its_window_or_its_caps(
    stream: list[Sample[Any]], seconds: float, max_samples: int, max_bytes: int
) -> None:
    ring = SnapshotRing(seconds, max_samples=max_samples, max_bytes=max_bytes)
    for i, sample in enumerate(stream):
        ring.push(sample)
        held = ring.samples()
        assert len(held) <= max_samples
        assert ring.bytes <= max_bytes
        assert ring.bytes == sum(sample_size(s) for s in held)
        if held:
            assert held[-1].bus_time - held[0].bus_time <= seconds
            assert held[0].bus_time >= ring.newest - seconds
        # what it holds is the newest samples, in order: a suffix of what it was given
        assert held == stream[i + 1 - len(held) : i + 1]
        assert ring.pushed == len(held) + ring.aged + ring.evicted
        assert ring.late == ring.refused == 0
        window = ring.window(ring.newest - seconds)
        assert window == held


def test_the_ring_refuses_odd_bus_times_and_keeps_late_samples_in_the_window() -> None:
    ring = SnapshotRing(10.0)
    ring.push(speed(1.0, 100.0, 1))
    ring.push(speed(2.0, math.nan, 2))
    ring.push(speed(3.0, math.inf, 3))
    ring.push(speed(4.0, 80.0, 4))  # older than the window on arrival
    ring.push(speed(5.0, 95.0, 5))  # late, within the window: kept, ages with 100.0
    assert (ring.refused, ring.late, len(ring)) == (2, 1, 2)
    ring.push(speed(6.0, 110.0, 6))
    assert [s.value for s in ring.samples()] == [1.0, 5.0, 6.0]
    ring.push(speed(7.0, 110.5, 7))
    assert [s.value for s in ring.samples()] == [6.0, 7.0]
    assert ring.window(0.0) == ring.samples()


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"seconds": 0}, "positive number of seconds"),
        ({"seconds": math.inf}, "positive number of seconds"),
        ({"seconds": "10"}, "positive number of seconds"),
        ({"seconds": 1, "max_samples": 0}, "max_samples"),
        ({"seconds": 1, "max_samples": 1.5}, "max_samples"),
        ({"seconds": 1, "max_bytes": -1}, "max_bytes"),
    ],
)
def test_the_ring_refuses_bad_bounds(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(RecordingError, match=problem):
        SnapshotRing(**kwargs)


def test_a_flood_takes_no_more_memory_than_the_cap() -> None:
    cap = 4 * 1024 * 1024
    ring = SnapshotRing(60.0, max_samples=10_000_000, max_bytes=cap)

    def flood() -> Iterator[Sample[Any]]:
        for i in range(150_000):
            yield Sample("Flood.A", float(i), 1.7e9 + i, 1.0 + i * 1e-5, "p", i + 1)
        for i in range(3_000):
            yield Sample("Flood.B", os.urandom(2000), 1.7e9, 4.0, "p", i + 1)

    tracemalloc.start()
    try:
        for sample in flood():
            ring.push(sample)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ring.bytes <= cap
    assert ring.evicted > 130_000
    assert peak < 2 * cap  # the estimate is not far below what the samples really take
    assert ring.samples()[-1].topic == "Flood.B"


def test_sizes_grow_with_the_values() -> None:
    import attrs

    @attrs.frozen
    class Pos:
        x: float
        name: str

    small = sample_size(speed(1.0, 1.0, 1))
    assert sample_size(speed("x" * 10_000, 1.0, 1)) > small + 10_000
    assert sample_size(speed(b"x" * 10_000, 1.0, 1)) > small + 10_000
    assert sample_size(speed(Pos(1.0, "y" * 5000), 1.0, 1)) > small + 5000
    assert sample_size(speed(bus.Record("a.B", {"k": "z" * 3000}), 1.0, 1)) > small + 3000
    assert sample_size(speed({"k": ["v" * 100] * 50}, 1.0, 1)) > small + 5000
    assert sample_size(speed(object(), 1.0, 1)) > small - 24
    deep: Any = 1.0
    for _ in range(10_000):
        deep = [deep]
    assert sample_size(speed(deep, 1.0, 1)) < 100_000  # too deep to be walked (and to be recorded)


# -- rising edges -----------------------------------------------------------------------------------------


@hypothesis.given(
    values=st.lists(
        st.one_of(st.floats(0, 200), st.just(NotAvailable("x")), st.text(max_size=2)), max_size=80
    ),
    gaps=st.lists(st.sampled_from([0.0, 0.1, 1.0, 7.0]), min_size=80, max_size=80),
    min_interval=st.sampled_from([0.0, 0.5, 5.0]),
)
def test_a_trigger_fires_on_rising_edges_at_most_once_per_interval(
    values: list[Any], gaps: list[float], min_interval: float
) -> None:
    condition = parse_condition("A > 130")
    snapshotter = Snapshotter(10.0, conditions=[condition], min_interval=min_interval, max_outstanding=1000)
    t = 0.0
    expected_fires, expected_suppressed, was, last = [], 0, False, None
    got: list[Snapshot] = []
    for value, gap in zip(values, gaps, strict=False):
        t += gap
        now = type(value) is float and value > 130
        if now and not was:
            if last is None or t - last >= min_interval:
                expected_fires.append(t)
                last = t
            else:
                expected_suppressed += 1
        was = now
        got += snapshotter.feed([speed(value, t, len(got) + 1, "A")])
    (trigger,) = snapshotter.triggers
    assert [s.time for s in got] == expected_fires
    assert trigger.suppressed == expected_suppressed
    assert trigger.mismatched == sum(type(v) is str for v in values)
    for snapshot in got:
        assert all(snapshot.start <= s.bus_time <= snapshot.end for s in snapshot.samples)
        assert snapshot.end - snapshot.start == pytest.approx(10.0)


def test_a_condition_that_stays_true_writes_one_snapshot() -> None:
    snapshotter = Snapshotter(5.0, conditions=[parse_condition("A > 130")], min_interval=0.0)
    ready = snapshotter.feed(speed(140.0 + i % 3, i / 10, i + 1, "A") for i in range(1000))
    assert len(ready) == 1
    assert snapshotter.triggers[0].fired == 1


def test_trigger_counts_what_it_cannot_compare() -> None:
    trigger = Trigger(parse_condition("A > 1"))
    assert not trigger.edge("text")
    assert not trigger.edge(None)
    assert trigger.edge(2.0)
    assert (trigger.mismatched, trigger.mismatched_type) == (2, "str")


# -- the state machine ------------------------------------------------------------------------------------


def drive(seconds: float, rate: float = 10.0, start: float = 0.0) -> list[Sample[Any]]:
    return [speed(float(i), start + i / rate, i + 1) for i in range(int(seconds * rate))]


def test_a_snapshot_holds_the_window_before_and_the_post_window_after() -> None:
    snapshotter = Snapshotter(
        10.0, conditions=[parse_condition("Brake.Pressed == true")], post=3.0, min_interval=0.0
    )
    assert snapshotter.feed(drive(30.0)) == []
    ready = snapshotter.feed([Sample("Brake.Pressed", True, 1.7e9, 30.0, "abs", 1)])
    assert ready == []
    pending = snapshotter.pending
    assert pending is not None
    assert (pending.time, pending.start, pending.end, snapshotter.due) == (30.0, 20.0, 33.0, 33.0)
    assert snapshotter.poll(32.9) == []
    ready = snapshotter.feed(drive(5.0, start=30.05))  # 30.05 .. 34.95: the window ends at 33.0
    assert len(ready) == 1
    (snapshot,) = ready
    assert not snapshot.pending
    assert snapshotter.pending is None
    times = [s.bus_time for s in snapshot.samples]
    assert times[0] == 20.0
    assert max(times) <= 33.0
    assert times == sorted(times)
    assert len(snapshot.samples) == 100 + 1 + 30  # 20.0-29.9, the brake, 30.05-32.95
    meta = snapshot.metadata()
    assert json.loads(meta["trigger"]) == ["Brake.Pressed == true"]
    assert (meta["window_start"], meta["window_end"], meta["evicted"]) == ("20.0", "33.0", "0")
    assert snapshot.timestamp == 1.7e9


def test_triggers_while_pending_join_and_requests_are_rate_limited() -> None:
    snapshotter = Snapshotter(
        10.0,
        conditions=[parse_condition("Snap.Speed > 50"), parse_condition("Snap.Speed > 55")],
        post=5.0,
        min_interval=20.0,
    )
    ready = snapshotter.feed(drive(6.0))  # 51 at 5.1 s, 56 at 5.6 s: one snapshot, two reasons
    assert ready == []
    pending = snapshotter.pending
    assert pending is not None
    joined = snapshotter.request("request: brake", 6.0)
    assert joined is pending
    assert pending.reasons == ["Snap.Speed > 50", "Snap.Speed > 55", "request: brake"]
    (done,) = snapshotter.poll(10.1)
    assert done is pending
    assert snapshotter.taken == 1
    with pytest.raises(SnapshotTooSoonError, match=r"taken 4\.0 s ago; the next can be taken in 16\.0 s"):
        snapshotter.request("again", 10.0)
    with pytest.raises(RecordingError, match="at most 200"):
        snapshotter.request("x" * 201, 40.0)
    snapshotter.written(done)
    second = snapshotter.request("", 40.0)
    assert (second.reasons, second.pending, second.start) == (["request"], True, 30.0)
    assert second.samples == []  # nothing newer than 5.9 s in the ring: it was all older than 30 s
    (finished,) = snapshotter.finish()
    assert finished is second
    assert finished.truncated
    assert finished.metadata()["truncated"] == "true"
    assert snapshotter.finish() == []


def test_at_most_so_many_snapshots_are_outstanding() -> None:
    snapshotter = Snapshotter(
        10.0, conditions=[parse_condition("A == true")], min_interval=0.0, max_outstanding=2
    )
    flips = [Sample("A", i % 2 == 0, 0.0, i / 10, "p", i + 1) for i in range(20)]  # 10 rising edges
    ready = snapshotter.feed(flips)
    assert len(ready) == 2
    assert snapshotter.triggers[0].skipped == 8
    with pytest.raises(SnapshotTooSoonError, match="2 snapshots are still being written"):
        snapshotter.request("", 5.0)
    snapshotter.written(ready[0])
    (third,) = snapshotter.feed([Sample("A", False, 0, 3.0, "p", 21), Sample("A", True, 0, 3.1, "p", 22)])
    assert third.suppressed == 8  # the edges skipped since the last snapshot
    assert third.metadata()["suppressed"] == "8"


def test_many_reasons_are_counted_not_kept() -> None:
    snapshotter = Snapshotter(10.0, conditions=[parse_condition("A == true")], post=100.0, min_interval=0.0)
    snapshotter.feed([Sample("A", i % 2 == 0, 0.0, i / 10, "p", i + 1) for i in range(200)])
    pending = snapshotter.pending
    assert pending is not None
    assert (len(pending.reasons), pending.more_reasons) == (32, 100 - 32)
    assert pending.metadata()["more_triggers"] == "68"


def test_the_caps_hold_for_the_post_window_and_evictions_are_counted() -> None:
    snapshotter = Snapshotter(
        100.0, conditions=[parse_condition("Snap.Speed == 1")], post=10.0, max_samples=300, min_interval=0
    )
    snapshotter.feed(speed(0.0, i / 10, i + 1) for i in range(1000))  # 0 .. 99.9 s: 300 kept
    assert (len(snapshotter.ring), snapshotter.ring.evicted) == (300, 700)
    assert snapshotter.feed([speed(1.0, 100.0, 1001)]) == []
    pending = snapshotter.pending
    assert pending is not None
    assert (len(pending.samples), pending.evicted, pending.complete_from) == (300, 701, 70.0)
    post = [speed(0.0, 100.0 + (i + 1) / 50, 1002 + i) for i in range(600)]  # 500 in the post window
    (snapshot,) = snapshotter.feed(post)
    assert snapshot is pending
    assert (len(snapshot.samples), snapshot.post_dropped) == (300 + 300, 200)
    assert snapshot.samples[0].bus_time == pytest.approx(70.1)
    meta = snapshot.metadata()
    assert (meta["evicted"], meta["complete_from"], meta["post_dropped"]) == ("701", "70.0", "200")


def test_topics_only_watched_are_not_kept() -> None:
    snapshotter = Snapshotter(
        10.0,
        conditions=[parse_condition("Brake.Pressed == true")],
        min_interval=0,
        watch_only={"Brake.Pressed"},
    )
    (snapshot,) = snapshotter.feed([*drive(2.0), Sample("Brake.Pressed", True, 0.0, 2.0, "abs", 1)])
    assert {s.topic for s in snapshot.samples} == {"Snap.Speed"}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"post": -1}, "post"),
        ({"post": math.nan}, "post"),
        ({"min_interval": -0.1}, "min_interval"),
        ({"max_outstanding": 0}, "max_outstanding"),
    ],
)
def test_the_snapshotter_refuses_bad_settings(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(RecordingError, match=problem):
        Snapshotter(10.0, **kwargs)


# -- a live bus under MockClock ---------------------------------------------------------------------------


class Recording:
    """A `SnapshotRecorder` recording an in-process bus in the background."""

    def __init__(self, the_bus: Bus, recorder: SnapshotRecorder, patterns: list[str]) -> None:
        self.bus, self.recorder, self.patterns = the_bus, recorder, patterns
        self.stop = trio.Event()
        self.results: list[Any] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = self.bus.client("vwos-record")
        self.results.append(
            await record_bus(client, self.recorder, self.patterns, stop=self.stop, task_status=task_status)
        )


@pytest.fixture
async def recording(tmp_path: Path) -> AsyncIterator[Any]:
    """``await recording(recorder_kwargs...)``: a bus and a running recorder; stopped at the end."""
    started: list[Recording] = []
    async with trio.open_nursery() as nursery:

        async def start(seconds: float = 10.0, patterns: list[str] | None = None, **kwargs: Any) -> Recording:
            the_bus = Bus()
            patterns = patterns or ["Snap.**"]
            kwargs.setdefault("min_interval", 0.0)
            recorder = SnapshotRecorder(tmp_path / "drive.mcap", seconds, patterns=patterns, **kwargs)
            rec = Recording(the_bus, recorder, patterns)
            await nursery.start(rec.run)
            started.append(rec)
            return rec

        yield start
        for rec in started:
            rec.stop.set()


async def publish_drive(car: Any, profile: Any, seconds: float, rate: float = 10.0) -> None:
    """Publish ``profile(t)`` on Snap.Speed at ``rate`` Hz for ``seconds`` (bus time from now)."""
    pub = car.publisher(SPEED)
    start = trio.current_time()
    for i in range(int(seconds * rate)):
        await trio.sleep_until(start + i / rate)
        pub.publish_nowait(profile(i / rate))


async def test_a_condition_writes_the_minute_before_and_the_seconds_after(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(
        60.05,  # the window's edges fall between the samples (10 Hz)
        conditions=[parse_condition("Snap.Speed > 130")],
        post=5.05,
        min_interval=20.0,
        vehicle_id="WVW-3",
    )
    car = rec.bus.client("car")

    def profile(t: float) -> float:
        # over 130 from 70 s to 80 s (one file), a dip, over again at 81 s (too soon: suppressed), and again
        # from 110 s (a second file)
        return 140.0 if 70 <= t < 80 or 81 <= t < 82 or t >= 110 else 100.0 + t / 100

    t0 = trio.current_time()
    await publish_drive(car, profile, 120.0)
    await trio.sleep(1.0)
    recorder = rec.recorder
    assert [r.index for r in recorder.results] == [0, 1]
    assert [Path(f).name for f in recorder.files] == ["drive_snap_0000.mcap", "drive_snap_0001.mcap"]
    assert recorder.snapshotter.triggers[0].suppressed == 1
    first, second = read_twice(*recorder.files)
    assert first.messages == 651  # 10 s .. 75 s at 10 Hz: the minute before 70 s, 5 s after
    assert second.messages == 651  # 50 s .. 115 s
    meta = first.metadata["vwos"]
    assert json.loads(meta["trigger"]) == ["Snap.Speed > 130"]
    assert float(meta["trigger_bus_time"]) == pytest.approx(t0 + 70.0)
    assert float(meta["window_end"]) - float(meta["window_start"]) == pytest.approx(65.1)
    assert meta["vehicle_id"] == "WVW-3"
    assert meta["snapshot_seconds"] == "60.05"
    assert meta["trigger_time"].endswith("Z")
    back = list(read_recording(recorder.files[0]))
    assert back[0].bus_time == pytest.approx(t0 + 10.0, abs=1e-6)
    assert back[-1].bus_time == pytest.approx(t0 + 75.0, abs=1e-6)
    assert all(b.seq == a.seq + 1 for a, b in itertools.pairwise(back))
    rec.stop.set()
    await trio.sleep(1.0)
    (result,) = rec.results
    assert result.files == tuple(str(f) for f in recorder.files)
    assert (result.recorded, result.dropped) == (1200, 0)


async def test_the_post_window_ends_on_time_without_samples(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(10.0, conditions=[parse_condition("Snap.Speed is not available")], post=3.0)
    car = rec.bus.client("car").publisher(SPEED)
    for i in range(50):
        car.publish_nowait(float(i))
        await trio.sleep(0.1)
    car.publish_nowait(NotAvailable("e2e"))  # at 5.0 s; then nothing more
    t = trio.current_time()
    await trio.sleep(2.9)
    assert rec.recorder.results == []
    await trio.sleep(0.2)
    (result,) = rec.recorder.results
    assert result.error is None
    assert result.window_end == pytest.approx(t + 3.0)
    assert not result.truncated
    (info,) = read_twice(Path(result.path))
    assert info.messages == 51


async def test_the_bus_method_writes_a_snapshot_and_replies(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(5.05)
    car = rec.bus.client("car").publisher(SPEED)
    caller = rec.bus.client("operator")
    for i in range(100):
        car.publish_nowait(float(i))
        await trio.sleep(0.1)
    car.publish_nowait(1000.0)  # published just before the call: in the snapshot
    reply = await caller.call(SNAPSHOT_METHOD, "hard braking")
    assert isinstance(reply, SnapshotReply)
    assert reply.triggers == ("request: hard braking",)
    assert reply.samples == 51  # 5.0 s .. 9.9 s, and the last one
    assert reply.window_end - reply.window_start == pytest.approx(5.05)
    (info,) = read_twice(Path(reply.file))
    assert info.messages == reply.samples
    assert json.loads(info.metadata["vwos"]["trigger"]) == ["request: hard braking"]
    assert list(read_recording(reply.file))[-1].value == 1000.0
    with pytest.raises(RemoteError, match="the argument is the snapshot's reason"):
        await caller.call(SNAPSHOT_METHOD, 42)
    with pytest.raises(RemoteError, match="printable"):
        await caller.call(SNAPSHOT_METHOD, "line\nbreak")
    await trio.sleep(1.0)
    second = await caller.call(SNAPSHOT_METHOD, None)  # min_interval 0 here
    assert second.triggers == ("request",)
    assert Path(second.file).name == "drive_snap_0001.mcap"


async def test_a_request_waits_for_its_post_window_and_is_refused_too_soon(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(5.05, post=2.05, min_interval=30.0)
    car = rec.bus.client("car").publisher(SPEED)
    caller = rec.bus.client("operator")
    async with trio.open_nursery() as nursery:

        async def drive() -> None:
            for i in range(200):
                car.publish_nowait(float(i))
                await trio.sleep(0.1)

        nursery.start_soon(drive)
        await trio.sleep(10.0)
        asked = trio.current_time()
        reply = await caller.call(SNAPSHOT_METHOD, "x", timeout=10.0)
        assert trio.current_time() - asked >= 2.0
        assert reply.samples == 71  # 5.0 s .. 12.0 s: 5 s before, 2 s after
        with pytest.raises(RemoteError, match=r"the next can be taken in 2[78]"):
            await caller.call(SNAPSHOT_METHOD, None)
    (info,) = read_twice(Path(reply.file))
    assert info.messages == 71


async def test_stopping_during_a_post_window_writes_it_cut_short(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(10.0, conditions=[parse_condition("Snap.Speed >= 20")], post=30.0)
    car = rec.bus.client("car").publisher(SPEED)
    for i in range(30):
        car.publish_nowait(float(i))
        await trio.sleep(0.1)
    rec.stop.set()
    await trio.sleep(0.1)
    (result,) = rec.results
    (snapshot,) = rec.recorder.results
    assert snapshot.truncated
    assert snapshot.samples == 30
    (info,) = read_twice(Path(snapshot.path))
    assert info.metadata["vwos"]["truncated"] == "true"
    assert result.files == (snapshot.path,)


async def test_a_flood_is_bounded_and_counted(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(60.0, max_samples=1000)
    car = rec.bus.client("car").publisher(SPEED)
    for burst in range(5):
        for i in range(1000):
            car.publish_nowait(float(burst * 1000 + i))
        await trio.sleep(0.01)
    ring = rec.recorder.snapshotter.ring
    assert (len(ring), ring.evicted) == (1000, 4000)
    reply = await rec.bus.client("operator").call(SNAPSHOT_METHOD, None)
    assert (reply.samples, reply.evicted) == (1000, 4000)
    (info,) = read_twice(Path(reply.file))
    assert info.metadata["vwos"]["evicted"] == "4000"
    assert float(info.metadata["vwos"]["complete_from"]) <= float(info.metadata["vwos"]["window_end"])
    rec.stop.set()
    await trio.sleep(0.1)
    (result,) = rec.results
    assert (result.recorded, result.dropped) == (5000, 4000)


async def test_a_condition_on_a_topic_not_recorded_is_watched(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(10.0, conditions=[parse_condition("Brake.Pressed == true")])
    assert rec.recorder.watch_topics == ("Brake.Pressed",)
    car = rec.bus.client("car")
    speed_pub, brake = car.publisher(SPEED), car.publisher(BRAKE)
    for i in range(20):
        speed_pub.publish_nowait(float(i))
        brake.publish_nowait(i == 15)
        await trio.sleep(0.1)
    (result,) = rec.recorder.results
    (info,) = read_twice(Path(result.path))
    assert {c.topic for c in info.channels} == {"Snap.Speed"}
    assert info.messages == 16


async def test_existing_snapshots_are_never_overwritten(
    tmp_path: Path, recording: Any, autojump_clock: trio.testing.MockClock
) -> None:
    (tmp_path / "drive_snap_0000.mcap").write_bytes(b"an earlier incident")
    (tmp_path / "drive_snap_0001.mcap").write_bytes(b"another")
    rec = await recording(5.0)
    rec.bus.client("car").publisher(SPEED).publish_nowait(1.0)
    reply = await rec.bus.client("operator").call(SNAPSHOT_METHOD, None)
    assert Path(reply.file).name == "drive_snap_0002.mcap"
    assert (tmp_path / "drive_snap_0000.mcap").read_bytes() == b"an earlier incident"
    assert bag_info(reply.file).messages == 1


async def test_a_snapshot_before_any_sample_is_an_empty_file(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(5.0)
    reply = await rec.bus.client("operator").call(SNAPSHOT_METHOD, None)
    assert reply.samples == 0
    (info,) = read_twice(Path(reply.file))
    assert info.messages == 0


async def test_a_full_disk_fails_the_snapshot_not_the_recording(
    small_disk: Path, autojump_clock: trio.testing.MockClock
) -> None:
    the_bus = Bus()
    seen: list[SnapshotResult] = []
    recorder = SnapshotRecorder(
        small_disk / "full.mcap", 60.0, patterns=["Big"], min_interval=0.0, on_snapshot=seen.append
    )
    rec = Recording(the_bus, recorder, ["Big"])
    big = the_bus.client("car").publisher(Topic("Big", bytes))
    async with trio.open_nursery() as nursery:
        await nursery.start(rec.run)
        for _ in range(200):  # 800 KiB, random: more than the disk holds
            big.publish_nowait(os.urandom(4096))
            await trio.sleep(0.01)
        caller = the_bus.client("operator")
        with pytest.raises(
            RemoteError, match=r"full_snap_0000\.mcap: cannot write the recording: No space left"
        ):
            await caller.call(SNAPSHOT_METHOD, None)
        big.publish_nowait(b"still recording")
        await trio.sleep(0.1)
        assert recorder.recorded == 201
        rec.stop.set()
    assert seen[0].error is not None
    (result,) = rec.results
    assert result.recorded == 201


async def test_serving_the_method_twice_is_an_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    the_bus = Bus()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            first = Recording(the_bus, SnapshotRecorder(tmp_path / "a.mcap", 5.0), ["**"])
            await nursery.start(first.run)
            second = Recording(the_bus, SnapshotRecorder(tmp_path / "b.mcap", 5.0), ["**"])
            with pytest.raises(bus.MethodAlreadyServedError):
                await nursery.start(second.run)
            first.stop.set()
    assert second.recorder.files == []


def test_the_recorder_counts_gaps_and_writes_what_is_left_when_closed(
    tmp_path: Path, read_twice: Any
) -> None:
    recorder = SnapshotRecorder(
        tmp_path / "d.mcap", 5.0, conditions=[parse_condition("Snap.Speed > 2")], method=None
    )
    recorder.write_many([speed(1.0, 1.0, 1), speed(2.0, 1.1, 5)])  # outside trio: fed all the same
    recorder.write_many([])
    recorder.write(Sample("Snap.Speed", 3.0, 1e20, 1.2, "ecu", 6))  # a source timestamp out of range
    recorder.count_dropped(2)
    assert (recorder.recorded, recorder.dropped) == (3, 3)  # 3 missing by the seq numbers
    (path,) = recorder.close()  # the snapshot the writer task never took: written now
    (info,) = read_twice(path)
    assert info.messages == 3
    assert info.metadata["vwos"]["trigger_time"] == "1e+20"
    assert info.metadata["vwos"]["dropped"] == "3"  # the gap, in the window
    assert recorder.close() == [path]
    with pytest.raises(RecordingError, match="closed"):
        recorder.write(speed(4.0, 1.3, 7))


async def test_a_flood_of_calls_joins_one_snapshot(
    recording: Any, autojump_clock: trio.testing.MockClock, read_twice: Any
) -> None:
    rec = await recording(5.0, post=1.0)
    rec.bus.client("car").publisher(SPEED).publish_nowait(1.0)
    replies: list[Any] = []
    async with trio.open_nursery() as nursery:
        for i in range(50):
            caller = rec.bus.client(f"caller-{i}")

            async def call(caller: Any = caller, i: int = i) -> None:
                replies.append(await caller.call(SNAPSHOT_METHOD, f"call {i}"))

            nursery.start_soon(call)
    assert len({r.file for r in replies}) == 1
    assert len(replies) == 50
    assert len(replies[0].triggers) == 32  # the rest counted
    (info,) = read_twice(Path(replies[0].file))
    assert info.metadata["vwos"]["more_triggers"] == "18"


def test_a_recorder_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="is not a directory"):
        SnapshotRecorder(tmp_path / "no" / "drive.mcap", 5.0)


# -- the command --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            ["--snapshot", "10", "--trigger", "Vehicle.Speed >"],
            "trigger 'Vehicle.Speed >': nothing to compare",
        ),
        (["--snapshot", "10", "--trigger", "Vehicle.* > 3"], "one name, not a pattern"),
        (["--trigger", "Vehicle.Speed > 3"], "--trigger needs --snapshot SECONDS"),
        (["--post", "3"], "--post needs --snapshot SECONDS"),
        (["--min-interval", "3"], "--min-interval needs --snapshot SECONDS"),
        (["--snapshot-method", "A.B"], "--snapshot-method needs --snapshot SECONDS"),
        (["--snapshot-max-mb", "3"], "--snapshot-max-mb needs --snapshot SECONDS"),
        (["--snapshot", "10", "--split-size", "5"], "--split-size does not go with --snapshot"),
        (["--snapshot", "10", "--snapshot-method", "Bad..Name"], "--snapshot-method: "),
        (["--snapshot", "10", "--no-snapshot-method"], "needs a --trigger"),
    ],
)
def test_bad_snapshot_options_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    argv = ["record", str(tmp_path / "x.mcap"), "--socket", str(tmp_path / "none.sock"), *extra]
    assert vwos_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("vwos record: ")
    assert problem in err
    assert not (tmp_path / "x.mcap").exists()


def served(the_bus: Bus, method: str) -> bool:
    try:
        the_bus.method(method)
    except bus.NoSuchMethodError:
        return False
    return True


async def test_vwos_record_snapshot_with_a_trigger_and_vwos_bus_call(
    broker: tuple[Bus, Path], tmp_path: Path, read_twice: Any
) -> None:
    the_bus, socket = broker
    out = tmp_path / "drive.mcap"
    car = the_bus.client("car")
    speed_pub, gear = car.publisher(Topic("Cli.Speed", float)), car.publisher(Topic("Cli.Gear", str))
    log_out, log_err = tmp_path / "record.out", tmp_path / "record.err"
    with trio.fail_after(TIMEOUT), log_out.open("wb") as stdout, log_err.open("wb") as stderr:
        recorder = await trio.lowlevel.open_process(
            vwos_command(
                "record", str(out), "Cli.**", "--snapshot", "30", "--trigger", 'Cli.Gear == "R"',
                "--trigger", "Cli.Gear > 3", "--post", "0.3", "--socket", str(socket),
                "--vehicle-id", "WVW-5",
            ),
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
        try:
            await until(lambda: served(the_bus, SNAPSHOT_METHOD))
            for i in range(300):
                speed_pub.publish_nowait(float(i))
                if i in (100, 250):
                    gear.publish_nowait("R" if i == 100 else "D")
                await trio.sleep(0.002)
            await until(lambda: "snapshot 0:" in log_out.read_text())
            done = await trio.run_process(
                vwos_command("bus", "call", SNAPSHOT_METHOD, "--socket", str(socket), "--json"),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            recorder.send_signal(signal.SIGINT)
            await recorder.wait()
        finally:
            if recorder.returncode is None:
                recorder.kill()
                await recorder.wait()
    assert recorder.returncode == 0, log_err.read_text()
    assert log_err.read_text() == (
        "vwos record: trigger 'Cli.Gear > 3': 2 samples of Cli.Gear were str, which it cannot compare (false "
        "for them)\n"
    )
    reply = json.loads(done.stdout)["result"]
    assert Path(reply["file"]).name == "drive_snap_0001.mcap"
    assert reply["samples"] == 302
    assert reply["triggers"] == ["request"]
    text = log_out.read_text()
    assert "snapshot 0: " in text
    assert '(Cli.Gear == "R")' in text
    assert "recorded 302 samples (0 dropped)" in text
    first, second = read_twice(tmp_path / "drive_snap_0000.mcap", tmp_path / "drive_snap_0001.mcap")
    assert first.metadata["vwos"]["vehicle_id"] == "WVW-5"
    assert json.loads(first.metadata["vwos"]["trigger"]) == ['Cli.Gear == "R"']
    assert {c.topic for c in first.channels} == {"Cli.Speed", "Cli.Gear"}
    assert 102 <= first.messages <= second.messages == 302
