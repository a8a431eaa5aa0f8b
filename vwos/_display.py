"""Bus values as people read them: floats at their resolution, records by field, every type alike.

A float decoded from a scaled CAN signal is ``5048 * 0.01 = 50.480000000000004``: the digits past the
15th significant one are binary noise, not the signal's value. `readable_float` drops them (15 significant
digits is what a double carries exactly in decimal), `value_text` writes any bus value the way a class's
``repr`` would -- registered classes, `bus.Record` values of types known only by their schema, enums and
`bus.EnumMember`, `bus.NotAvailable` -- with its floats readable and nothing cut off.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from bus import EnumMember, NotAvailable, Record

__all__ = ["MAX_TEXT", "readable_float", "readable_json", "value_text"]


def readable_float(value: float) -> float:
    """``value`` rounded to 15 significant digits (NaN and the infinities as they are)."""
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.15g}")


#: At most this many characters of one value's text (a megabyte of bytes is not shown whole).
MAX_TEXT = 2000


def value_text(value: Any, limit: int = MAX_TEXT) -> str:
    """A bus value as one line of text: ``Fuel_01(FuelLevel=50.48)``, ``[1.5, 2.0]``, ``'D'``; at most
    ``limit`` characters (longer: cut, saying how much was left out)."""
    try:
        text = _text(value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def _text(value: Any) -> str:
    kind = type(value)
    if kind is float:
        return repr(readable_float(value))
    if kind is NotAvailable:
        return str(value)
    if kind is Record:
        inner = ", ".join(f"{k}={_text(v)}" for k, v in value.fields.items())
        return f"{value.type_name.rsplit('.', 1)[-1]}({inner})"
    if kind is EnumMember:
        return f"{value.type_name.rsplit('.', 1)[-1]}.{value.name}"
    if isinstance(value, enum.Enum):
        return f"{kind.__name__}.{value.name}"
    if attrs.has(kind):
        inner = ", ".join(f"{f.name}={_text(getattr(value, f.name))}" for f in attrs.fields(kind) if f.repr)
        return f"{kind.__name__}({inner})"
    if kind is list or kind is tuple:
        items = ", ".join(_text(v) for v in value)
        return f"[{items}]" if kind is list else f"({items}{',' if len(value) == 1 else ''})"
    if kind is dict:
        return "{" + ", ".join(f"{k!r}: {_text(v)}" for k, v in value.items()) + "}"
    if kind is set or kind is frozenset:
        return "{" + ", ".join(sorted(_text(v) for v in value)) + "}" if value else f"{kind.__name__}()"
    return repr(value)


def readable_json(data: Any) -> Any:
    """JSON data (as `json.loads` makes it) with every float at its resolution, for text meant to be
    read; beyond 100 levels of nesting the rest is left as it is."""
    return _readable(data, 0)


def _readable(data: Any, depth: int) -> Any:
    kind = type(data)
    if kind is float:
        return readable_float(data)
    if depth > 100:
        return data
    if kind is list:
        return [_readable(v, depth + 1) for v in data]
    if kind is dict:
        return {k: _readable(v, depth + 1) for k, v in data.items()}
    return data
