"""Schemas that travel: a registered type described as data, and values of types known only that way.

A `TypeSchema` is what a peer needs to read and write values of a registered attrs class or enum without
importing it: the registered name, the fingerprint (the same 16 hex digits that travel with every
instance), and a record's fields with their type expressions, or an enum's members. It travels as a CBOR/JSON
map (`TypeSchema.to_wire`; docs/protocol.md specifies it). A codec that has *learned* a schema
(`Codec.learn`) decodes instances of that type into a `Record` (its type name and its fields by name) or an
`EnumMember`, and encodes those back -- checked against the schema, so a peer with the class gets exactly
what it would have got from one. A payload whose fingerprint differs from the learned schema's still fails
with `SchemaMismatchError`.

Type expressions (``expr``), JSON- and CBOR-able:

``"none"`` ``"bool"`` ``"int"`` ``"float"`` ``"str"`` ``"bytes"`` ``"any"``
    the scalars, and any supported value.
``{"list": E}`` ``{"set": E}`` ``{"frozenset": E}`` ``{"tuple": E}`` ``{"dict": E}``
    homogeneous containers (a dict has ``str`` keys).
``{"tuple": [E, ...]}``
    a tuple of fixed length.
``{"union": [E, ...]}``
    any of the members (``X | None`` is ``{"union": [X, "none"]}``).
``{"literal": [V, ...]}``
    one of the values: scalars, or ``{"type": NAME, "member": MEMBER}`` for an enum member.
``{"type": NAME}``
    a registered record or enum, whose schema travels too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from bus._errors import CodecError

__all__ = ["MAX_SCHEMA_DEPTH", "EnumMember", "Record", "TypeSchema", "check_expr", "expr_refs"]

#: How deeply a type expression may nest (deeper: refused, never a RecursionError).
MAX_SCHEMA_DEPTH: Final = 32
#: At most this many fields or members per schema, and items per expression list.
_MAX_ITEMS: Final = 4096
_MAX_NAME: Final = 1024

_SCALARS: Final = frozenset({"none", "bool", "int", "float", "str", "bytes", "any"})
_CONTAINERS: Final = frozenset({"list", "set", "frozenset", "tuple", "dict"})


def _as_dict(fields: Mapping[str, Any]) -> dict[str, Any]:
    return dict(fields)


@attrs.frozen
class Record:
    """A value of a registered record type this process knows only by its schema (it did not import the
    class): the type's registered name and its fields by name, in order. ``record["Speed"]`` and
    ``record.fields`` read them; `Codec.encode` sends it as the class itself would travel."""

    type_name: str
    fields: Mapping[str, Any] = attrs.field(converter=_as_dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __getattr__(self, name: str) -> Any:
        """A field by attribute, as on an instance of the class: ``record.FuelLevel``."""
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return object.__getattribute__(self, "fields")[name]
        except KeyError:
            raise AttributeError(f"{self.type_name} has no field {name!r}") from None

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.type_name.rsplit('.', 1)[-1]}({inner})"


@attrs.frozen
class EnumMember:
    """A member of a registered enum this process knows only by its schema: the type's name and the
    member's name (its value is in the schema)."""

    type_name: str
    name: str

    def __str__(self) -> str:
        return self.name


def _text(value: object, what: str) -> str:
    if type(value) is not str or not value or len(value) > _MAX_NAME:
        raise CodecError(
            f"{what}: expected a non-empty text of at most {_MAX_NAME} characters, got {value!r}"
        )
    return value


def _items(value: object, what: str) -> list[Any]:
    if type(value) is not list or len(value) > _MAX_ITEMS:
        raise CodecError(
            f"{what}: expected an array of at most {_MAX_ITEMS} items, got {type(value).__name__}"
        )
    return value


def _literal_value(value: object, what: str) -> Any:
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if type(value) is float:
        return value
    if type(value) is dict and set(value) == {"type", "member"}:
        return {
            "type": _text(value["type"], f"{what}.type"),
            "member": _text(value["member"], f"{what}.member"),
        }
    raise CodecError(
        f"{what}: a literal value is a scalar or an enum member ({{type, member}}), got {value!r}"
    )


def check_expr(expr: object, where: str = "type", depth: int = 0) -> Any:
    """``expr`` if it is a well-formed type expression (see the module docstring); else `CodecError`
    saying where in it what is wrong. Safe on any input: bounded depth and sizes."""
    if depth > MAX_SCHEMA_DEPTH:
        raise CodecError(f"{where}: a type expression nested more than {MAX_SCHEMA_DEPTH} levels deep")
    if type(expr) is str:
        if expr in _SCALARS:
            return expr
        raise CodecError(f"{where}: unknown type {expr!r} (one of {', '.join(sorted(_SCALARS))}, or a map)")
    if type(expr) is not dict or len(expr) != 1:
        raise CodecError(f"{where}: a type expression is a text or a map of one key, got {expr!r:.80}")
    ((key, arg),) = expr.items()
    inner = f"{where}.{key}"
    if key in _CONTAINERS:
        if key == "tuple" and type(arg) is list:
            return {
                key: [check_expr(e, f"{inner}[{i}]", depth + 1) for i, e in enumerate(_items(arg, inner))]
            }
        return {key: check_expr(arg, inner, depth + 1)}
    if key == "union":
        members = _items(arg, inner)
        if not members:
            raise CodecError(f"{inner}: a union has at least one member")
        return {key: [check_expr(e, f"{inner}[{i}]", depth + 1) for i, e in enumerate(members)]}
    if key == "literal":
        return {key: [_literal_value(v, f"{inner}[{i}]") for i, v in enumerate(_items(arg, inner))]}
    if key == "type":
        return {key: _text(arg, inner)}
    raise CodecError(f"{where}: unknown type expression {key!r}")


def expr_refs(expr: Any) -> Iterator[str]:
    """The registered type names a (checked) type expression refers to."""
    if type(expr) is not dict:
        return
    ((key, arg),) = expr.items()
    if key == "type":
        yield arg
    elif key == "literal":
        for v in arg:
            if type(v) is dict:
                yield v["type"]
    elif type(arg) is list:
        for e in arg:
            yield from expr_refs(e)
    else:
        yield from expr_refs(arg)


@attrs.frozen
class TypeSchema:
    """A registered type described as data: a record (``fields``: name and type expression of each field
    that travels, in order) or an enum (``members``: name and value of each). See the module docstring."""

    name: str
    fingerprint: str
    fields: tuple[tuple[str, Any], ...] | None = None
    members: tuple[tuple[str, Any], ...] | None = None

    @property
    def kind(self) -> str:
        """``"record"`` or ``"enum"``."""
        return "enum" if self.members is not None else "record"

    def refs(self) -> set[str]:
        """The registered type names this type's fields refer to."""
        return {name for _, expr in self.fields or () for name in expr_refs(expr)}

    def to_wire(self) -> dict[str, Any]:
        """The map that travels: ``{"name", "fingerprint", "fields": [[name, expr], ...]}`` for a record,
        ``{"name", "fingerprint", "members": [[name, value], ...]}`` for an enum."""
        out: dict[str, Any] = {"name": self.name, "fingerprint": self.fingerprint}
        if self.members is not None:
            out["members"] = [[n, v] for n, v in self.members]
        else:
            out["fields"] = [[n, e] for n, e in self.fields or ()]
        return out

    @classmethod
    def from_wire(cls, data: object) -> TypeSchema:
        """A schema from its map; `CodecError` saying what is wrong (safe on any decoded input)."""
        if type(data) is not dict:
            raise CodecError(f"a type schema is a map, got {type(data).__name__}")
        name = _text(data.get("name"), "schema.name")
        where = f"schema {name}"
        fingerprint = data.get("fingerprint")
        if type(fingerprint) is not str or not 1 <= len(fingerprint) <= 64:
            raise CodecError(f"{where}: the fingerprint is a text of 1 to 64 characters, got {fingerprint!r}")
        extra = set(data) - {"name", "fingerprint", "fields", "members"}
        if extra:
            raise CodecError(f"{where}: unknown keys {sorted(map(str, extra))}")
        if ("fields" in data) == ("members" in data):
            raise CodecError(f"{where}: a schema has either fields (a record) or members (an enum)")
        if "members" in data:
            members = []
            for i, item in enumerate(_items(data["members"], f"{where}.members")):
                if type(item) is not list or len(item) != 2:
                    raise CodecError(f"{where}.members[{i}]: expected [name, value], got {item!r:.80}")
                member = _text(item[0], f"{where}.members[{i}]")
                value = item[1] if type(item[1]) in (bool, int, float, str, bytes, type(None)) else None
                members.append((member, value))
            return cls(name, fingerprint, members=tuple(members))
        fields = []
        seen: set[str] = set()
        for i, item in enumerate(_items(data["fields"], f"{where}.fields")):
            if type(item) is not list or len(item) != 2:
                raise CodecError(f"{where}.fields[{i}]: expected [name, type], got {item!r:.80}")
            field = _text(item[0], f"{where}.fields[{i}]")
            if field in seen:
                raise CodecError(f"{where}.fields[{i}]: the field {field!r} is named twice")
            seen.add(field)
            fields.append((field, check_expr(item[1], f"{where}.{field}")))
        return cls(name, fingerprint, fields=tuple(fields))


# -- values of learned types -------------------------------------------------------------------------------


class _Refused(Exception):
    """A value does not match a type expression; ``path`` and ``expected`` say where and what."""

    def __init__(self, path: str, expected: str, got: object) -> None:
        super().__init__(path)
        self.path = path
        self.expected = expected
        self.got = got

    def describe(self, prefix: str) -> str:
        return (
            f"{prefix}{self.path}: expected {self.expected}, got {type(self.got).__name__} {self.got!r:.60}"
        )


def _expected_text(expr: Any) -> str:
    if type(expr) is str:
        return expr
    ((key, arg),) = expr.items()
    if key == "type":
        return str(arg)
    if key == "union":
        return " | ".join(_expected_text(e) for e in arg)
    if key == "literal":
        return "one of " + ", ".join(repr(v) for v in arg)
    if type(arg) is list:
        return f"{key}[{', '.join(_expected_text(e) for e in arg)}]"
    return f"{key}[{_expected_text(arg)}]"


def match(value: Any, expr: Any, type_name_of: Any, path: str = "") -> None:
    """Check that ``value`` (a decoded or to-be-encoded value: arrays are lists or tuples) matches ``expr``;
    raise `_Refused` at the first place it does not. ``type_name_of(value)`` is the registered type name
    of a record or enum value (a `Record`, an `EnumMember`, or an instance of a registered class), else
    None."""
    if type(expr) is str:
        kind = type(value)
        ok = (
            expr == "any"
            or (expr == "none" and value is None)
            or (expr == "bool" and kind is bool)
            or (expr == "int" and kind in (int, bool))
            or (expr == "float" and kind in (float, int, bool))
            or (expr == "str" and kind is str)
            or (expr == "bytes" and kind is bytes)
        )
        if not ok:
            raise _Refused(path, expr, value)
        return
    ((key, arg),) = expr.items()
    if key == "type":
        if type_name_of(value) != arg:
            raise _Refused(path, arg, value)
    elif key == "union":
        for member in arg:
            try:
                match(value, member, type_name_of, path)
                return
            except _Refused:
                continue
        raise _Refused(path, _expected_text(expr), value)
    elif key == "literal":
        for option in arg:
            if type(option) is dict:
                if type_name_of(value) == option["type"] and _member_name(value) == option["member"]:
                    return
            elif type(option) is type(value) and option == value:
                return
        raise _Refused(path, _expected_text(expr), value)
    elif key == "dict":
        if type(value) is not dict or not all(type(k) is str for k in value):
            raise _Refused(path, "a map with text keys", value)
        for k, v in value.items():
            match(v, arg, type_name_of, f"{path}[{k!r}]")
    else:  # list, set, frozenset, tuple: arrays
        if not isinstance(value, list | tuple | set | frozenset):
            raise _Refused(path, f"an array ({_expected_text(expr)})", value)
        if type(arg) is list:  # a fixed tuple
            if len(value) != len(arg):
                raise _Refused(path, f"an array of {len(arg)} items", value)
            for i, (item, item_expr) in enumerate(zip(value, arg, strict=True)):
                match(item, item_expr, type_name_of, f"{path}[{i}]")
        else:
            for i, item in enumerate(value):
                match(item, arg, type_name_of, f"{path}[{i}]")


def _member_name(value: Any) -> str | None:
    if isinstance(value, EnumMember):
        return value.name
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else None


def field_problem(schema: TypeSchema, values: Sequence[Any], type_name_of: Any) -> str | None:
    """What is wrong with ``values`` as the fields of ``schema``'s record, or None."""
    fields = schema.fields or ()
    if len(values) != len(fields):
        names = ", ".join(n for n, _ in fields)
        return f"{schema.name}: expected {len(fields)} field values ({names}), got {len(values)}"
    for (field, expr), value in zip(fields, values, strict=True):
        try:
            match(value, expr, type_name_of)
        except _Refused as refused:
            return refused.describe(f"{schema.name}.{field}")
    return None


def finite_or_text(value: float) -> float | str:
    """A float as JSON can carry it: finite as it is; NaN and the infinities as the texts protobuf's JSON
    mapping uses (``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
