"""Bus values as people read them (vwos/_display.py)."""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs
import pytest

from bus import EnumMember, NotAvailable, Record
from vwos._display import readable_float, readable_json, value_text


class Gear(enum.Enum):
    D = "D"


@attrs.frozen
class Fix:
    lat: float
    hidden: int = attrs.field(default=0, repr=False)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5048 * 0.01, "50.48"),
        (0.0, "0.0"),
        (math.inf, "inf"),
        (NotAvailable("e2e"), "not available (e2e)"),
        (Record("can.demo.Fuel", {"level": 2.1 * 3}), "Fuel(level=6.3)"),
        (EnumMember("x.Gear", "D"), "Gear.D"),
        (Gear.D, "Gear.D"),
        (Fix(1.5), "Fix(lat=1.5)"),
        ([1.1 * 3, "a"], "[3.3, 'a']"),
        ((1,), "(1,)"),
        ({"k": 0.1 + 0.2}, "{'k': 0.3}"),
        ({2, 1}, "{1, 2}"),
        (frozenset(), "frozenset()"),
        (b"\x01", "b'\\x01'"),
    ],
)
def test_values_read_at_their_resolution_and_whole(value: Any, text: str) -> None:
    assert value_text(value) == text


def test_long_and_deep_values_are_bounded() -> None:
    assert value_text("x" * 3000, limit=10) == "'xxxxxxxxx... (2992 more characters)"
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert value_text(deep) == "(a value nested too deeply to show)"
    assert math.isnan(readable_float(math.nan))
    assert readable_json({"a": [0.1 + 0.2, {"b": 1e-300 * 3}], "n": None}) == {
        "a": [0.3, {"b": 3e-300}],
        "n": None,
    }
    nested: Any = 0.30000000000000004
    for _ in range(150):
        nested = [nested]
    out = readable_json(nested)
    for _ in range(150):
        out = out[0]
    assert out == 0.30000000000000004  # beyond 100 levels, left as it is
