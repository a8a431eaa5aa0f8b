"""JSON Schemas of recorded samples, in the form Foxglove decodes: one per type, made from the type's
`bus.TypeSchema`s, with those schemas themselves under ``x-vwos`` so that a replay can rebuild the values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from bus import Codec, CodecError, TypeSchema
from services.record._json import NOT_AVAILABLE, RecordingError, to_json

__all__ = ["SCHEMA_ENCODING", "TYPE_KEY", "sample_schema", "schemas_of", "value_expr"]

#: The MCAP schema encoding and the message encoding of every channel.
SCHEMA_ENCODING: Final = "jsonschema"
#: The key of a JSON Schema that holds vwos's own description of the type.
TYPE_KEY: Final = "x-vwos"
_MAX_DEPTH: Final = 32

_SCALARS: Final[Mapping[str, dict[str, Any]]] = {
    "none": {"type": "null"},
    "bool": {"type": "boolean"},
    "int": {"type": "integer"},
    "float": {"anyOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]},
    "str": {"type": "string"},
    "bytes": {"type": "string", "contentEncoding": "base64"},
    "any": {},
}


def value_expr(key: str) -> Any:
    """The type expression of a recorded type name (a scalar's name, else a registered type)."""
    return key if key in _SCALARS else {"type": key}


def schemas_of(key: str, codec: Codec) -> list[TypeSchema]:
    """The `bus.TypeSchema`s a value of ``key`` needs (none for a scalar or an unknown type)."""
    if key in _SCALARS or key.startswith("?"):
        return []
    try:
        return codec.schemas(key)
    except CodecError:
        return []


def _json_schema(expr: Any, by_name: Mapping[str, TypeSchema], seen: tuple[str, ...]) -> dict[str, Any]:
    if type(expr) is str:
        return dict(_SCALARS.get(expr, {}))
    if len(seen) > _MAX_DEPTH:
        return {}
    ((key, arg),) = expr.items()
    if key in ("list", "set", "frozenset", "tuple"):
        if key == "tuple" and type(arg) is list:
            n = len(arg)
            items = [_json_schema(e, by_name, seen) for e in arg]
            return {"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}
        return {"type": "array", "items": _json_schema(arg, by_name, seen)}
    if key == "dict":
        return {"type": "object", "additionalProperties": _json_schema(arg, by_name, seen)}
    if key == "union":
        return {"anyOf": [_json_schema(e, by_name, seen) for e in arg]}
    if key == "literal":
        return {"enum": [v["member"] if type(v) is dict else to_json(v) for v in arg]}
    if key == "type":
        if arg == NOT_AVAILABLE:
            return {
                "type": "object",
                "properties": {"available": {"const": False}, "reason": {"type": "string"}},
                "required": ["available", "reason"],
            }
        schema = by_name.get(arg)
        if schema is None or arg in seen:  # unknown, or a type that contains itself: anything
            return {"title": arg}
        if schema.members is not None:
            return {"title": arg, "type": "string", "enum": [name for name, _ in schema.members]}
        fields = schema.fields or ()
        return {
            "title": arg,
            "type": "object",
            "properties": {n: _json_schema(e, by_name, (*seen, arg)) for n, e in fields},
            "required": [n for n, _ in fields],
            "additionalProperties": False,
        }
    return {}


def sample_schema(key: str | None, schemas: Sequence[TypeSchema]) -> bytes:
    """The JSON Schema of a recorded sample whose value is of ``key`` (None: a topic heard of only as not
    available yet), as UTF-8 bytes."""
    by_name = {s.name: s for s in schemas}
    value = {} if key is None or key.startswith("?") else _json_schema(value_expr(key), by_name, ())
    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": key or "unknown",
        "type": "object",
        "properties": {
            "value": {"anyOf": [value, {"type": "null"}]} if value else {},
            "available": {"type": "boolean"},
            "reason": {"type": "string"},
            "publisher": {"type": "string"},
            "seq": {"type": "integer"},
        },
        "required": ["value", "available", "publisher", "seq"],
        TYPE_KEY: {"type": key, "schemas": [to_json(s.to_wire()) for s in schemas]},
    }
    try:
        return json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:  # pragma: no cover - to_json leaves nothing JSON cannot hold
        raise RecordingError(f"the schema of {key} cannot be written as JSON: {exc}") from None
