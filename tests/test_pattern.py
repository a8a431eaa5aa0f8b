"""Names, patterns and permission coverage: table tests and hypothesis invariants."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import patterns, topic_names

from bus import Topic, TopicError, ValueRefusedError, covers, matches


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("Vehicle.Speed", "Vehicle.Speed", True),
        ("Vehicle.Speed", "Vehicle.Speed.X", False),
        ("Vehicle.*", "Vehicle.Speed", True),
        ("Vehicle.*", "Vehicle", False),
        ("Vehicle.*", "Vehicle.Cabin.Door", False),
        ("Vehicle.**", "Vehicle", True),
        ("Vehicle.**", "Vehicle.Cabin.Door", True),
        ("**.IsLocked", "Vehicle.Cabin.Door.IsLocked", True),
        ("**.IsLocked", "IsLocked", True),
        ("Vehicle.**.Left.*", "Vehicle.Cabin.Door.Row1.Left.IsLocked", True),
        ("Vehicle.**.Left.*", "Vehicle.Left", False),
        ("**", "Anything.At.All", True),
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("grant", "requested", "expected"),
    [
        ("Vehicle.**", "Vehicle.Cabin.*", True),
        ("Vehicle.**", "Vehicle.**", True),
        ("Vehicle.**", "**", False),
        ("Vehicle.*", "Vehicle.**", False),
        ("Vehicle.*", "Vehicle.*", True),
        ("Vehicle.Speed", "Vehicle.*", False),
        ("*.Speed", "Vehicle.Speed", True),
        ("**", "**", True),
    ],
)
def test_covers(grant: str, requested: str, expected: bool) -> None:
    assert covers(grant, requested) is expected


@given(topic_names())
def test_a_name_matches_itself_and_the_catch_all(name: str) -> None:
    assert matches(name, name)
    assert matches("**", name)
    assert covers(name, name)


@given(patterns(), patterns(), topic_names())
def test_covers_is_sound(grant: str, requested: str, name: str) -> None:
    """If a grant covers a requested pattern, no name the request matches escapes the grant."""
    if covers(grant, requested) and matches(requested, name):
        assert matches(grant, name)


@given(patterns())
def test_a_pattern_covers_itself(pattern: str) -> None:
    assert covers(pattern, pattern)


@given(st.text(max_size=20))
def test_any_text_is_either_a_valid_name_or_a_clear_topic_error(text: str) -> None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", text):
        assert Topic(text, int).name == text
    else:
        with pytest.raises(TopicError, match="topic name"):
            Topic(text, int)


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=0, max_value=1e6),
)
def test_a_range_accepts_exactly_the_values_inside_it(value: float, low: float, width: float) -> None:
    topic = Topic("Vehicle.X", float, min=low, max=low + width)
    if low <= value <= low + width:
        assert topic.check(value) == value
    else:
        with pytest.raises(ValueRefusedError) as info:
            topic.check(value)
        assert info.value.topic == "Vehicle.X"
