"""Names, patterns and permission coverage: table tests and hypothesis invariants."""

from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import patterns, topic_names

from bus import Topic, TopicError, ValueRefusedError, covers, matches
from bus._pattern import check_name, check_pattern


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


# -- bounds and cost ------------------------------------------------------------------------------------


def _reference_covers(grant: tuple[str, ...], req: tuple[str, ...]) -> bool:
    """The structural rule, written as the obvious recursion (the oracle for small inputs)."""
    if not grant:
        return not req
    if grant[0] == "**":
        return any(_reference_covers(grant[1:], req[i:]) for i in range(len(req) + 1))
    if not req or req[0] == "**":
        return False
    return (grant[0] == "*" or grant[0] == req[0]) and _reference_covers(grant[1:], req[1:])


@given(patterns(max_depth=7), patterns(max_depth=7))
def test_coverage_and_matching_agree_with_the_recursive_rule(grant: str, requested: str) -> None:
    expected = _reference_covers(tuple(grant.split(".")), tuple(requested.split(".")))
    assert covers(grant, requested) is expected
    if "*" not in requested:  # a name: matching is coverage of a name
        assert matches(grant, requested) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".".join(["**"] * 1500), "is 4499 characters long; the limit is 1024"),
        (".".join(["*"] * 20_000), "is 39999 characters long; the limit is 1024"),
        (".".join(["*"] * 100), "has 100 segments; the limit is 64"),
        ("A." + "x" * 129, r"segment 'x+'\.\.\. \(129 characters\) is 129 characters long; the limit is 128"),
        ("A" * 10_000_000, "is 10000000 characters long"),
    ],
)
def test_a_pattern_beyond_the_bounds_is_a_topic_error_in_bounded_time(text: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TopicError, match=message) as info:
        check_pattern(text)
    with pytest.raises(TopicError):
        covers("**", text)
    with pytest.raises(TopicError):
        covers(text, "A")
    with pytest.raises(TopicError):
        matches("**", text)
    assert len(str(info.value)) < 300  # the message shows the start of the text, not the whole of it
    assert time.perf_counter() - started < 0.5  # generous: it takes microseconds (plus the big string)


def test_names_at_the_bounds_are_valid() -> None:
    longest = ".".join(["S" * 15] * 64)  # 64 segments, 1023 characters
    assert check_name(longest) == longest
    assert check_pattern(".".join(["**"] * 64))
    assert check_name("A" * 128) == "A" * 128
    with pytest.raises(TopicError, match="65 segments"):
        Topic(".".join(["A"] * 65), int)
    with pytest.raises(TopicError, match=r"topic name .* is 1025 characters long"):
        Topic("A" * 1025, int)


def test_coverage_and_matching_cost_no_more_than_the_bounds_allow() -> None:
    """The worst inputs within the bounds (alternating ``**`` and a segment, against 64 wildcards or
    segments) take microseconds each, and no memory to speak of: no recursion, no memo table."""
    alternating = ".".join(["**", "a"] * 32)
    names = [".".join(["a"] * 63 + [f"x{i}"]) for i in range(2000)]  # distinct: no cache helps
    requests = [".".join(["*"] * 63 + [f"x{i}"]) for i in range(2000)]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert not any(matches(alternating, n) for n in names)
        assert not any(covers(alternating, r) for r in requests)
        assert covers("**", ".".join(["*"] * 64))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # About 0.1 s alone, 6 s once under coverage on a loaded machine; the old recursion took seconds for
    # one such call (hours for these 4,000): the bound tells the two apart with room for any load.
    assert elapsed < 60.0
    assert peak < 20_000_000
