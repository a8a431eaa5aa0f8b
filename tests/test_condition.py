"""bus.Condition and bus.Trigger: a safe expression subset, three-valued logic, errors at a column, edges."""

from __future__ import annotations

import enum
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import CONDITION_TOPICS, condition_values, conditions

from bus import Condition, ConditionError, EnumMember, NotAvailable, Record, Trigger


class Gear(enum.Enum):
    PARK = 0
    DRIVE = 1


@attrs.frozen
class Door:
    locked: bool
    angle: float


def holds(text: str, **values: Any) -> bool | None:
    return Condition.parse(text).truth({k.replace("__", "."): v for k, v in values.items()})


def test_the_issue_example_reads_two_topics_and_holds_only_when_both_do() -> None:
    c = Condition.parse("Vehicle.Speed > 130 and Vehicle.ADAS.ABS.IsEngaged")
    assert c.topics == {"Vehicle.Speed", "Vehicle.ADAS.ABS.IsEngaged"}
    assert c({"Vehicle.Speed": 140.5, "Vehicle.ADAS.ABS.IsEngaged": True})
    assert not c({"Vehicle.Speed": 140.5, "Vehicle.ADAS.ABS.IsEngaged": False})
    assert not c({"Vehicle.Speed": 120, "Vehicle.ADAS.ABS.IsEngaged": True})
    assert c.truth({"Vehicle.Speed": 140.5}) is None  # ABS unknown: not decided
    assert c.truth({"Vehicle.Speed": 100}) is False  # false whatever ABS is


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("V.Speed * 3.6 > 100", {"V.Speed": 30.0}, True),
        ("0 < V.Speed < 10", {"V.Speed": 5}, True),
        ("0 < V.Speed < 10", {"V.Speed": 10}, False),
        ("abs(V.Accel) >= 9.81", {"V.Accel": -10.0}, True),
        ("-V.Accel > 1", {"V.Accel": -2}, True),
        ("V.Speed % 2 == 1", {"V.Speed": 3}, True),
        ("V.Speed / 0 > 1", {"V.Speed": 3}, None),  # division by zero: unknown, not a crash
        ("V.Gear == 'DRIVE'", {"V.Gear": Gear.DRIVE}, True),
        ("V.Gear == 'DRIVE'", {"V.Gear": EnumMember("demo.Gear", "PARK")}, False),
        ("V.Door['locked']", {"V.Door": Door(True, 1.0)}, True),
        ("V.Door['angle'] > 0.5", {"V.Door": Record("demo.Door", {"locked": False, "angle": 0.7})}, True),
        ("V.Door['missing']", {"V.Door": Door(True, 1.0)}, None),
        ("V.Door['__class__']", {"V.Door": Door(True, 1.0)}, None),  # no way into Python's attributes
        ("V.Tyres[1] > 2", {"V.Tyres": [1.0, 2.5]}, True),
        ("V.Tyres[5] > 2", {"V.Tyres": [1.0, 2.5]}, None),
        ("`Up.1st.State` == 'online'", {"Up.1st.State": "online"}, True),
        ("available(V.Speed)", {"V.Speed": NotAvailable("out_of_range")}, False),
        ("not available(V.Speed)", {}, True),
        ("V.Speed > 1", {"V.Speed": NotAvailable("sna")}, None),
        ("V.Speed > 1", {"V.Speed": float("nan")}, None),
        ("V.Speed > 1", {"V.Speed": "fast"}, None),  # a text is not compared with a number
        ("V.Speed", {"V.Speed": 1.0}, None),  # a number is no truth value
        ("V.Flag == true", {"V.Flag": True}, True),
        ("V.Flag == 1", {"V.Flag": True}, None),  # True is not the number 1 here
        ("not V.Flag", {"V.Flag": NotAvailable("x")}, None),
        ("V.A or V.B", {"V.A": True}, True),
        ("V.A and V.B", {"V.A": False}, False),
    ],
)
def test_values_decide_conditions_three_valued(
    text: str, values: dict[str, Any], expected: bool | None
) -> None:
    c = Condition.parse(text)
    assert c.truth(values) is expected
    assert c(values) is (expected is True)


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("Vehicle.Speed >", 16, "ends too early"),
        ("Vehicle.Speed > > 3", 17, "invalid syntax"),
        ("x ** 2 > 1", 1, "'**' is not allowed"),
        ("__import__('os').system('true')", 1, "functions are available"),
        ("V.Speed > 1 if V.A else 2", 1, "'x if c else y'"),
        ("V.Speed in [1, 2]", 1, "'in' is not allowed"),
        ("V.Speed is None", 1, "'is' is not allowed"),
        ("(lambda: 1)() > 0", 1, "functions are"),
        ("[V.Speed][0] > 1", 1, "a list is not allowed"),
        ("abs(V.A).B > 1", 1, "a topic name is a dotted name"),
        ("V.Door[V.Index]", 8, "a subscript is a field name"),
        ("`a b` > 1", 1, "is not a topic name"),
        ("`Up.up-1.State` > 1", 1, "segment 'up-1' must be non-empty letters, digits or underscores"),
        ("`1a.b` > 0", 1, "must start with a letter or underscore"),
        ("`V.Speed > 1", 1, "backquote is not closed"),
        ("   V.Speed >> 3", 4, "'>>'"),
        ("V.Speed > b'x'", 11, "is not allowed: use numbers"),
        ("available(1)", 11, "takes a topic name"),
        ("1 > 0", 0, "reads no topic"),
        ("   ", 0, "is empty"),
        ("V.Speed > 1\nor V.A", 12, "one line"),
        ("~V.Flag", 1, "'~' is not allowed"),
        ("V.A\x00", 4, "NUL"),
        ("f'{V.Speed}' == '1'", 1, "an f-string"),
    ],
)
def test_bad_conditions_are_refused_with_the_column_and_the_rule(text: str, column: int, words: str) -> None:
    with pytest.raises(ConditionError) as caught:
        Condition.parse(text)
    assert caught.value.column == column
    assert words in str(caught.value)
    assert repr(text) in str(caught.value)


def test_a_huge_name_is_shown_shortened_in_the_error() -> None:
    for text in ["A." * 2000 + "B > 1", "`" + "A." * 1500 + "B` > 1"]:
        with pytest.raises(ConditionError, match="is not a topic name") as caught:
            Condition.parse(text)
        assert len(str(caught.value)) < 600


def test_huge_and_deep_conditions_are_refused_quickly() -> None:
    with pytest.raises(ConditionError, match="longer than 4096"):
        Condition.parse("V.A and " * 1000 + "V.B")
    with pytest.raises(ConditionError, match="nested"):
        Condition.parse("not " * 100 + "V.A")
    with pytest.raises(ConditionError):
        Condition.parse("(" * 300 + "V.A" + ")" * 300)
    with pytest.raises(ConditionError, match="expected a text"):
        Condition.parse(42)  # type: ignore[arg-type]  # a TOML integer where a condition belongs


@settings(max_examples=300)
@given(
    conditions(),
    st.dictionaries(st.sampled_from([t.strip("`") for t in CONDITION_TOPICS]), condition_values()),
)
def test_conditions_agree_with_a_reference_three_valued_evaluator(
    drawn: tuple[str, Any], values: dict[str, object]
) -> None:
    text, reference = drawn
    c = Condition.parse(text)
    assert c.truth(values) is reference(values)
    negated = Condition.parse(f"not ({text})")
    truth = c.truth(values)
    assert negated.truth(values) is (None if truth is None else not truth)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_a_condition_error(text: str) -> None:
    try:
        c = Condition.parse(text)
    except ConditionError as exc:
        column = exc.column
        assert 0 <= column <= len(text) + 1
    else:
        assert c.topics  # a condition that parsed reads a topic
        c.truth(dict.fromkeys(c.topics, 1))  # and evaluates without raising


def test_a_rising_edge_fires_once_per_becoming_true() -> None:
    trigger = Trigger(Condition.parse("V.Speed > 130"))
    speeds = [100, 140, 150, 120, NotAvailable("x"), 140, 141]
    fired = [trigger.update({"V.Speed": s}, now=i * 10.0) for i, s in enumerate(speeds)]
    assert fired == [False, True, False, False, False, True, False]
    assert trigger.fired == 2


def test_min_interval_suppresses_edges_inside_it_and_always_mode_repeats() -> None:
    edge = Trigger(Condition.parse("V.A"), min_interval=5.0)
    times_values = [(0.0, True), (1.0, False), (2.0, True), (3.0, False), (6.0, True)]
    assert [edge.update({"V.A": v}, now=t) for t, v in times_values] == [True, False, False, False, True]
    always = Trigger(Condition.parse("V.A"), mode="always", min_interval=2.0)
    assert [always.update({"V.A": True}, now=t) for t in (0.0, 1.0, 2.0, 3.0, 4.5)] == [
        True,
        False,
        True,
        False,
        True,
    ]


@given(
    st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.booleans()), max_size=40),
    st.floats(0, 10, allow_nan=False),
)
def test_a_trigger_never_fires_twice_within_its_interval_nor_without_an_edge(
    steps: list[tuple[float, bool]], interval: float
) -> None:
    trigger = Trigger(Condition.parse("V.A"), min_interval=interval)
    now, previous, last = 0.0, False, None
    for dt, value in steps:
        now += dt
        if trigger.update({"V.A": value}, now):
            assert value
            assert not previous
            assert last is None or now - last >= interval
            last = now
        previous = value


def test_trigger_settings_are_checked() -> None:
    c = Condition.parse("V.A")
    with pytest.raises(ValueError, match="min_interval"):
        Trigger(c, min_interval=-1.0)
    with pytest.raises(ValueError, match="rising_edge"):
        Trigger(c, mode="sometimes")  # type: ignore[arg-type]
