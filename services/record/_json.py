"""The JSON form of bus values and samples in a recording, and back: what `vwos record` writes as each MCAP
message and `vwos replay` reads.

A sample is the object ``{"value": V, "available": true, "publisher": P, "seq": N}`` (``"available":
false, "reason": R`` and ``"value": null`` for a `bus.NotAvailable`). Values: numbers and texts as they
are, NaN and the infinities as the texts ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, bytes as base64
texts, enum members by name, records as objects of their fields, lists, sets and tuples as arrays. Back
from JSON, a value is rebuilt by its type expression (`bus.TypeSchema`): what was a tuple is a tuple again.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from bus import Codec, CodecError, EnumMember, NotAvailable, Record, Sample, TypeSchema

__all__ = ["RecordingError", "from_json", "sample_json", "to_json", "type_key"]

#: Values nest at most this deep in a recording (deeper: refused, never a RecursionError).
MAX_DEPTH: Final = 64
#: The type name of `bus.NotAvailable` (every codec registers it).
NOT_AVAILABLE: Final = "bus.NotAvailable"
_SCALAR_KEYS: Final = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes"}
_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class RecordingError(Exception):
    """A recording cannot be written or read as asked: the message says what and where."""


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_json(value: Any, codec: Codec | None = None, depth: int = 0) -> Any:
    """``value`` as JSON data (see the module docstring). Records of registered classes travel as the
    fields their schema names (``codec``'s, else every attrs field)."""
    t = type(value)
    if t is float:
        return _float(value)
    if value is None or t is str or t is int or t is bool:
        return value
    if depth > MAX_DEPTH:
        raise RecordingError(f"a value nested more than {MAX_DEPTH} levels deep")
    if t is bytes or t is bytearray or t is memoryview:
        return base64.b64encode(value).decode("ascii")
    if t is NotAvailable:
        return {"available": False, "reason": value.reason}
    if t is Record:
        return {k: to_json(v, codec, depth + 1) for k, v in value.fields.items()}
    if t is EnumMember:
        return value.name
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, float):  # a float subclass (an IntEnum was caught above)
        return _float(float(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if attrs.has(t):
        names: list[str]
        try:
            names = [n for n, _ in (codec.describe(t).fields or ())] if codec is not None else []
        except CodecError:
            names = []
        if not names:
            names = [f.name for f in attrs.fields(t)]
        return {n: to_json(getattr(value, n), codec, depth + 1) for n in names}
    if t is list or t is tuple or isinstance(value, (list, tuple)):
        return [to_json(v, codec, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_json(v, codec, depth + 1) for v in value]
        try:
            return sorted(items)  # one order for equal sets
        except TypeError:
            return items
    if isinstance(value, Mapping):
        return {str(k): to_json(v, codec, depth + 1) for k, v in value.items()}
    raise RecordingError(f"cannot record a value of type {t.__name__}: {value!r:.80}")


def type_key(value: object, codec: Codec) -> str | None:
    """The name of ``value``'s type in a recording: ``float``, ``str``..., or a registered type's name
    (``demo.Fuel``); None for a `bus.NotAvailable` (it has no type of its own) or a type the codec does not
    know (recorded as untyped JSON under its class name prefixed ``?``)."""
    t = type(value)
    key = _SCALAR_KEYS.get(t)
    if key is not None:
        return key
    if t is NotAvailable:
        return None
    if t is Record or t is EnumMember:
        return value.type_name  # type: ignore[attr-defined, no-any-return]
    try:
        return codec.type_name(t)
    except CodecError:
        if isinstance(value, float):
            return "float"
        if isinstance(value, int) and not isinstance(value, enum.Enum):
            return "int"
        return f"?{t.__module__}.{t.__qualname__}"


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def sample_json(sample: Sample[Any], codec: Codec | None = None) -> bytes:
    """The message a sample is recorded as (UTF-8 JSON, see the module docstring)."""
    value = sample.value
    if type(value) is NotAvailable:
        data: dict[str, Any] = {"value": None, "available": False, "reason": value.reason}
    else:
        data = {"value": to_json(value, codec), "available": True}
    data["publisher"] = sample.publisher
    data["seq"] = sample.seq
    return _dumps(data).encode()


def float_tail(publisher: str) -> str:
    """What follows the value in a float sample's message, up to its seq: ``FLOAT_HEAD + repr(value) + tail
    + str(seq) + "}"`` is `sample_json`'s message for a finite float (the recorder's hot path)."""
    return ',"available":true,"publisher":' + _dumps(publisher) + ',"seq":'


def float_encoder(publisher: str) -> Callable[[float, int], bytes]:
    """The fast path of `sample_json` for a float sample of ``publisher``: the same bytes."""
    tail = float_tail(publisher)
    head = '{"value":'
    frepr = float.__repr__
    isfinite = math.isfinite

    def encode(value: float, seq: int) -> bytes:
        if isfinite(value):
            return f"{head}{frepr(value)}{tail}{seq}}}".encode()
        return f'{head}"{_float(value)}"{tail}{seq}}}'.encode()

    return encode


# -- back from JSON -------------------------------------------------------------------------------------


def _refuse(where: str, expected: str, data: object) -> RecordingError:
    return RecordingError(f"{where}: expected {expected}, got {json.dumps(data)[:80]}")


def from_json(
    data: Any,
    expr: Any,
    schemas: Mapping[str, TypeSchema],
    where: str = "value",
    depth: int = 0,
    resolve: Callable[[Any], Any] | None = None,
) -> Any:
    """The value ``data`` (JSON) stands for, by its type expression ``expr``: records as `bus.Record`,
    enum members as `bus.EnumMember`, `bus.NotAvailable` as itself. ``resolve`` is applied to each record
    and enum member, innermost first (`read_recording` makes registered classes of them with it).
    `RecordingError` saying where what does not fit."""
    if depth > MAX_DEPTH:
        raise RecordingError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if type(expr) is str:
        if expr == "float":
            if type(data) in (int, float) and type(data) is not bool:
                return float(data)
            if type(data) is str and data in _NON_FINITE:
                return _NON_FINITE[data]
            raise _refuse(where, "a number", data)
        if expr == "int":
            if type(data) is int:
                return data
            raise _refuse(where, "a whole number", data)
        if expr == "bool":
            if type(data) is bool:
                return data
            raise _refuse(where, "true or false", data)
        if expr == "str":
            if type(data) is str:
                return data
            raise _refuse(where, "a text", data)
        if expr == "bytes":
            if type(data) is str:
                try:
                    return base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    pass
            raise _refuse(where, "base64 bytes", data)
        if expr == "none":
            if data is None:
                return None
            raise _refuse(where, "null", data)
        return data  # "any": as JSON gives it
    ((key, arg),) = expr.items()
    inner = depth + 1
    if key in ("list", "set", "frozenset", "tuple"):
        if type(data) is not list:
            raise _refuse(where, "an array", data)
        if key == "tuple" and type(arg) is list:
            if len(data) != len(arg):
                raise _refuse(where, f"an array of {len(arg)} items", data)
            pairs = enumerate(zip(data, arg, strict=True))
            return tuple(from_json(d, e, schemas, f"{where}[{i}]", inner, resolve) for i, (d, e) in pairs)
        items = [from_json(d, arg, schemas, f"{where}[{i}]", inner, resolve) for i, d in enumerate(data)]
        kind: Callable[[list[Any]], Any] = {"list": list, "set": set, "frozenset": frozenset, "tuple": tuple}[
            key
        ]
        try:
            return kind(items)
        except TypeError:
            raise _refuse(where, "hashable items", data) from None
    if key == "dict":
        if type(data) is not dict:
            raise _refuse(where, "an object", data)
        return {k: from_json(v, arg, schemas, f"{where}.{k}", inner, resolve) for k, v in data.items()}
    if key == "union":
        problems = []
        for member in arg:
            try:
                return from_json(data, member, schemas, where, inner, resolve)
            except RecordingError as exc:
                problems.append(exc)
        raise _refuse(where, "one of the union's types", data)
    if key == "literal":
        for v in arg:
            if type(v) is dict:
                if data == v["member"]:
                    member = EnumMember(v["type"], data)
                    return member if resolve is None else resolve(member)
            elif data == v and type(data) is type(v):
                return data
        raise _refuse(where, f"one of {arg!r:.60}", data)
    if key == "type":
        return _typed(data, arg, schemas, where, inner, resolve)
    raise RecordingError(f"{where}: unknown type expression {key!r}")


def _typed(
    data: Any,
    name: str,
    schemas: Mapping[str, TypeSchema],
    where: str,
    depth: int,
    resolve: Callable[[Any], Any] | None,
) -> Any:
    if name == NOT_AVAILABLE:
        if type(data) is dict and type(data.get("reason")) is str and data.get("available") is False:
            try:
                return NotAvailable(data["reason"])
            except ValueError as exc:
                raise RecordingError(f"{where}: {exc}") from None
        raise _refuse(where, "a not-available object", data)
    schema = schemas.get(name)
    if schema is None:
        raise RecordingError(f"{where}: the recording has no schema of the type {name!r}")
    if schema.members is not None:
        if type(data) is str and data in dict(schema.members):
            member = EnumMember(name, data)
            return member if resolve is None else resolve(member)
        raise _refuse(where, f"a member of {name}", data)
    if type(data) is not dict:
        raise _refuse(where, f"an object of {name}'s fields", data)
    fields = schema.fields or ()
    names = [n for n, _ in fields]
    if set(data) != set(names):
        raise RecordingError(
            f"{where}: {name} has the fields {', '.join(names)}; the recording has "
            f"{', '.join(map(str, data))}"
        )
    record = Record(
        name, {n: from_json(data[n], e, schemas, f"{where}.{n}", depth, resolve) for n, e in fields}
    )
    return record if resolve is None else resolve(record)
