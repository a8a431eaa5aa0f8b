"""The CBOR codec of the bus: what crosses a process boundary or goes to disk is encoded here.

Values
    ``None``, ``bool``, ``int`` (any size: big ones travel as CBOR bignums, tags 2/3), ``float`` (``nan``,
    the infinities and ``-0.0`` included), ``str``, ``bytes``, ``list``, ``tuple``, ``dict`` with ``str``
    keys, and instances of registered attrs classes and enums, nested in any way. Types are exact: a
    subclass of a builtin (``collections.OrderedDict``, an enum that was not registered, a ``str``
    subclass) is refused rather than silently flattened into its base type. A top-level (or untyped)
    ``tuple`` travels as a CBOR array and decodes as a ``list``; sets are refused except in an attrs field
    annotated ``frozenset[...]`` or ``set[...]``.

Registered attrs classes
    An instance travels as CBOR tag 27, IANA's "serialised language-independent object with type name and
    constructor arguments", whose content is ``[type_name, fingerprint, [field values in field order]]``.
    Only fields with ``init=True`` travel; decoding calls the class's ``__init__`` with them, so attrs
    validators and converters run on the receiving side too. A field's annotation drives both directions:
    on encode the value must match it (exact types; the numeric tower holds, so an ``int`` is a valid
    ``float`` and a ``bool`` a valid ``int``), on decode the value is checked against it and restored:
    ``tuple[...]``, ``frozenset[...]`` and ``set[...]`` from CBOR arrays, nested attrs classes and enums
    from their tags. Supported annotations: the scalar types above, ``None``, ``Any``/``object``,
    ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``frozenset[T]``, ``set[T]``, ``dict[str, T]``, unions
    and ``Optional``, ``Literal[...]``, ``NewType`` and other attrs classes and enums (registered along with
    the class that refers to them). Anything else is refused when the class is registered.

Enums
    Enums reuse tag 27, with content ``[type_name, fingerprint, member_name]``: the registered type name is
    the marker that tells an enum from an attrs class, so no second tag number is taken. Members travel by
    name (canonical members only; ``enum.Flag`` types are refused, their combinations have no single name).

Fingerprints
    A short hex digest of the type's registered name, its fields' names and annotations in order (an enum's
    member names and values), and the same for every registered type it reaches. It travels with each
    instance; a peer with a different definition fails with `SchemaMismatchError`.

Decoding is defensive: malformed, truncated or trailing bytes, any CBOR tag other than 2, 3 and 27 (the
tags cbor2 would turn into datetimes, decimals, sets ... included), simple values, ``undefined``, maps with
non-``str`` or duplicate keys, unknown type names, wrong field counts and wrong field types all raise
`CodecError`; nothing but registered classes is ever constructed.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import io
import operator
import reprlib
import types
import typing
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, TypeVar, overload

import attrs
import cbor2

from bus._errors import CodecError, SchemaMismatchError
from bus._sample import NotAvailable
from bus._schema import EnumMember, Record, TypeSchema, field_problem

__all__ = ["OBJECT_TAG", "Codec", "default_codec"]

#: The CBOR tag that carries registered attrs instances and enum members.
OBJECT_TAG: Final = 27

_NoneType: Final = type(None)
_SCALAR_TYPES: Final[frozenset[type]] = frozenset({_NoneType, bool, int, float, str, bytes})
_STR_ONLY: Final[frozenset[type]] = frozenset({str})
_FINGERPRINT_CHARS: Final = 16

#: Tags cbor2 decodes by itself; all but the bignums (2, 3) are refused. The test suite checks that this
#: list still covers every tag the installed cbor2 knows.
_CBOR2_BUILTIN_TAGS: Final = (
    0,
    1,
    4,
    5,
    25,
    28,
    29,
    30,
    35,
    36,
    37,
    52,
    54,
    100,
    256,
    258,
    260,
    261,
    1004,
    43000,
    55799,
)

_SIMPLE_ANNOTATIONS: Final[dict[object, tuple[str, frozenset[type]]]] = {
    _NoneType: ("None", frozenset({_NoneType})),
    None: ("None", frozenset({_NoneType})),
    bool: ("bool", frozenset({bool})),
    int: ("int", frozenset({int, bool})),
    float: ("float", frozenset({float, int, bool})),
    str: ("str", frozenset({str})),
    bytes: ("bytes", frozenset({bytes})),
}

_SUPPORTED_VALUES: Final = (
    "a supported value (None, bool, int, float, str, bytes, list, tuple, dict with str keys, "
    "or an instance of a registered attrs class or enum)"
)

#: While `Codec.encode` is given ``types``: the set the names of the registered types it encodes go to (a
#: context variable: each thread, and each trio task, encodes with its own).
_NOTED: Final[contextvars.ContextVar[set[str] | None]] = contextvars.ContextVar("vwos_noted", default=None)

_TOO_DEEP: Final = "cannot encode value: it is nested too deeply, or contains itself"

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = 4

_C = TypeVar("_C", bound=type)

_Converter = Callable[[Any], Any]


def _type_label(tp: type) -> str:
    if tp.__module__ == "builtins":
        return tp.__qualname__
    return f"{tp.__module__}.{tp.__qualname__}"


def _value_label(value: object) -> str:
    return f"{_type_label(type(value))} {_repr.repr(value)}"


class _Mismatch(Exception):
    """A value does not have the shape its place expects. ``path`` grows as it propagates outwards."""

    def __init__(self, expected: str, got: object) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.path = ""

    def at(self, step: str) -> _Mismatch:
        self.path = step + self.path
        return self

    def describe(self) -> str:
        return f"expected {self.expected}, got {_value_label(self.got)}"


def _locate(items: Iterable[tuple[object, Any]], convert: _Converter) -> _Mismatch:
    """Find which item ``convert`` refuses, for the error message (slow path only)."""
    for step, item in items:
        try:
            convert(item)
        except _Mismatch as exc:
            return exc.at(f"[{step!r}]")
    return _Mismatch("a value this codec can convert", None)  # pragma: no cover - callers saw a failure


class _Shape:
    """How one annotation is checked and converted in each direction.

    ``types`` is set when the shape is a bare exact-type check that converts nothing either way, which lets
    containers check their items in one C-level pass. ``refs`` are the registered classes the annotation
    reaches directly (for fingerprints). ``expr`` is the annotation as a type expression of the schemas
    that travel (`bus.TypeSchema`; JSON- and CBOR-able: ``"float"``, ``{"list": "int"}``, ...).
    """

    __slots__ = ("decode", "encode", "expr", "label", "refs", "types")

    def __init__(
        self,
        label: str,
        encode: _Converter,
        decode: _Converter,
        types: frozenset[type] | None = None,
        refs: frozenset[type] = frozenset(),
        expr: Any = "any",
    ) -> None:
        self.label = label
        self.encode = encode
        self.decode = decode
        self.types = types
        self.refs = refs
        self.expr = expr


def _exact_shape(
    label: str, allowed: frozenset[type], refs: frozenset[type] = frozenset(), expr: Any = None
) -> _Shape:
    def check(value: Any) -> Any:
        if type(value) in allowed:
            return value
        raise _Mismatch(label, value)

    return _Shape(label, check, check, allowed, refs, label.lower() if expr is None else expr)


def _items_converter(label: str, container: Any, item: _Shape, *, rebuild: bool) -> _Converter:
    """A converter for a homogeneous sequence whose items follow ``item``; returns a list when rebuilding."""
    allowed = item.types
    convert_item = item.encode if rebuild else item.decode

    def convert(value: Any) -> Any:
        if type(value) is not container:
            raise _Mismatch(label, value)
        if allowed is not None:
            if allowed.issuperset(map(type, value)):
                return value
            raise _locate(enumerate(value), convert_item)
        try:
            return [convert_item(x) for x in value]
        except _Mismatch:
            raise _locate(enumerate(value), convert_item) from None

    return convert


def _sequence_shape(kind: type, item: _Shape) -> _Shape:
    """``list[T]``, ``tuple[T, ...]``, ``frozenset[T]`` and ``set[T]``: each travels as a CBOR array."""
    label = f"{kind.__name__}[{item.label}]" if kind is not tuple else f"tuple[{item.label}, ...]"
    expr = {kind.__name__: item.expr}
    encode_items = _items_converter(label, kind, item, rebuild=True)
    decode_items = _items_converter(label, list, item, rebuild=False)
    if kind is list:
        return _Shape(label, encode_items, decode_items, refs=item.refs, expr=expr)

    def decode(value: Any) -> Any:
        items = decode_items(value)
        try:
            return kind(items)
        except TypeError:  # unhashable items for a set
            raise _Mismatch(f"{label} with hashable items", value) from None

    if kind is tuple:
        return _Shape(label, encode_items, decode, refs=item.refs, expr=expr)

    def encode(value: Any) -> Any:
        items = encode_items(value)
        return items if type(items) is list else list(items)

    return _Shape(label, encode, decode, refs=item.refs, expr=expr)


def _fixed_tuple_shape(items: Sequence[_Shape]) -> _Shape:
    label = "tuple[" + (", ".join(s.label for s in items) or "()") + "]"
    count = len(items)
    encoders = tuple(s.encode for s in items)
    decoders = tuple(s.decode for s in items)

    def convert(value: Any, container: Any, converters: tuple[_Converter, ...]) -> list[Any]:
        if type(value) is not container or len(value) != count:
            raise _Mismatch(label, value)
        try:
            return [c(x) for c, x in zip(converters, value, strict=True)]
        except _Mismatch:
            for i, (c, x) in enumerate(zip(converters, value, strict=True)):
                try:
                    c(x)
                except _Mismatch as exc:
                    raise exc.at(f"[{i}]") from None
            raise  # pragma: no cover

    def encode(value: Any) -> Any:
        return convert(value, tuple, encoders)

    def decode(value: Any) -> Any:
        return tuple(convert(value, list, decoders))

    refs = frozenset().union(*(s.refs for s in items))
    return _Shape(label, encode, decode, refs=refs, expr={"tuple": [s.expr for s in items]})


def _dict_shape(item: _Shape) -> _Shape:
    label = f"dict[str, {item.label}]"
    allowed = item.types

    def converter(convert_item: _Converter) -> _Converter:
        def convert(value: Any) -> Any:
            if type(value) is not dict:
                raise _Mismatch(label, value)
            if not _STR_ONLY.issuperset(map(type, value)):
                key = next(k for k in value if type(k) is not str)
                raise _Mismatch("str dict keys", key)
            if allowed is not None:
                if allowed.issuperset(map(type, value.values())):
                    return value
                raise _locate(value.items(), convert_item)
            try:
                return {k: convert_item(x) for k, x in value.items()}
            except _Mismatch:
                raise _locate(value.items(), convert_item) from None

        return convert

    return _Shape(
        label, converter(item.encode), converter(item.decode), refs=item.refs, expr={"dict": item.expr}
    )


def _union_shape(members: Sequence[_Shape]) -> _Shape:
    label = " | ".join(s.label for s in members)
    refs = frozenset().union(*(s.refs for s in members))
    expr = {"union": [s.expr for s in members]}
    if all(s.types is not None for s in members):
        allowed = frozenset().union(*(s.types for s in members if s.types is not None))
        return _exact_shape(label, allowed, refs, expr)

    def converter(converters: Sequence[_Converter]) -> _Converter:
        def convert(value: Any) -> Any:
            for c in converters:
                try:
                    return c(value)
                except _Mismatch:
                    pass
            raise _Mismatch(label, value)

        return convert

    return _Shape(
        label,
        converter([s.encode for s in members]),
        converter([s.decode for s in members]),
        refs=refs,
        expr=expr,
    )


class _Everything:
    """Contains every type: the type check of a field that its converter checks instead."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING: Final = _Everything()


class _AttrsInfo:
    """What the codec knows about one registered attrs class, computed once at registration.

    The hot paths check the fields whose shape is a bare exact-type check in one C-level pass
    (``all(map(contains, ...))``) and call converters only for the fields that need one.
    """

    __slots__ = (
        "checks",
        "cls",
        "construct",
        "decoders",
        "encoders",
        "field_names",
        "fingerprint",
        "getter",
        "name",
        "shapes",
    )

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name
        self.fingerprint = ""
        wire = [f for f in attrs.fields(cls) if f.init]
        self.field_names = tuple(f.name for f in wire)
        self.shapes: tuple[_Shape, ...] = ()
        self.checks: tuple[Container[type], ...] = ()
        self.encoders: tuple[tuple[int, _Converter], ...] = ()
        self.decoders: tuple[tuple[int, _Converter], ...] = ()
        if not wire:
            self.getter: Callable[[object], tuple[Any, ...]] = lambda obj: ()
        elif len(wire) == 1:
            only = operator.attrgetter(wire[0].name)
            self.getter = lambda obj: (only(obj),)
        else:
            self.getter = operator.attrgetter(*self.field_names)
        if any(f.kw_only for f in wire):
            aliases = tuple(f.alias for f in wire)
            self.construct: Callable[[list[Any]], object] = lambda values: cls(
                **dict(zip(aliases, values, strict=True))
            )
        else:
            self.construct = lambda values: cls(*values)

    def set_shapes(self, shapes: Sequence[_Shape]) -> None:
        self.shapes = tuple(shapes)
        self.checks = tuple(_EVERYTHING if s.types is None else s.types for s in shapes)
        self.encoders = tuple((i, s.encode) for i, s in enumerate(shapes) if s.types is None)
        self.decoders = tuple((i, s.decode) for i, s in enumerate(shapes) if s.types is None)

    @property
    def refs(self) -> frozenset[type]:
        return frozenset().union(*(s.refs for s in self.shapes))

    def schema(self) -> str:
        fields = ", ".join(f"{n}: {s.label}" for n, s in zip(self.field_names, self.shapes, strict=True))
        return f"attrs {self.name}({fields})"

    def describe(self) -> TypeSchema:
        fields = tuple((n, s.expr) for n, s in zip(self.field_names, self.shapes, strict=True))
        return TypeSchema(self.name, self.fingerprint, fields=fields)

    def _field_error(self, values: Sequence[Any], *, decoding: bool) -> str:
        for field, shape, value in zip(self.field_names, self.shapes, values, strict=True):
            try:
                (shape.decode if decoding else shape.encode)(value)
            except _Mismatch as found:
                return f"{self.name}.{field}{found.path}: {found.describe()}"
        raise AssertionError("no field was refused")  # pragma: no cover

    def to_wire(self, obj: object) -> cbor2.CBORTag:
        values: Any = self.getter(obj)
        try:
            if not all(map(operator.contains, self.checks, map(type, values))):
                raise _Mismatch("", None)
            if self.encoders:
                values = list(values)
                for i, convert in self.encoders:
                    values[i] = convert(values[i])
        except _Mismatch:
            raise CodecError(f"cannot encode {self._field_error(self.getter(obj), decoding=False)}") from None
        return cbor2.CBORTag(OBJECT_TAG, [self.name, self.fingerprint, values])

    def from_wire(self, payload: object) -> object:
        count = len(self.field_names)
        if type(payload) is not list:
            raise CodecError(
                f"{self.name}: expected a list of {count} field values, got {_value_label(payload)}"
            )
        if len(payload) != count:
            raise CodecError(
                f"{self.name}: expected {count} field values ({', '.join(self.field_names)}), "
                f"got {len(payload)}"
            )
        try:
            if not all(map(operator.contains, self.checks, map(type, payload))):
                raise _Mismatch("", None)
            values = list(payload) if self.decoders else payload
            for i, convert in self.decoders:
                values[i] = convert(values[i])
        except _Mismatch:
            raise CodecError(f"cannot decode {self._field_error(payload, decoding=True)}") from None
        try:
            return self.construct(values)
        except Exception as exc:
            raise CodecError(f"{self.name}: the decoded fields were refused by the class: {exc!r}") from exc


class _EnumInfo:
    """What the codec knows about one registered enum."""

    __slots__ = ("cls", "fingerprint", "members", "name", "tags")

    def __init__(self, cls: type[enum.Enum], name: str) -> None:
        self.cls = cls
        self.name = name
        self.fingerprint = ""
        self.members: dict[str, enum.Enum] = {m.name: m for m in cls}
        #: member name -> its ready-made tag; filled once the fingerprint is known.
        self.tags: dict[str, cbor2.CBORTag] = {}

    refs: ClassVar[frozenset[type]] = frozenset()

    def schema(self) -> str:
        members = ", ".join(f"{n}={_stable_repr(m.value)}" for n, m in self.members.items())
        return f"enum {self.name}{{{members}}}"

    def describe(self) -> TypeSchema:
        members = tuple(
            (n, m.value if type(m.value) in _SCALAR_TYPES else None) for n, m in self.members.items()
        )
        return TypeSchema(self.name, self.fingerprint, members=members)

    def finish(self) -> None:
        self.tags.update(
            {n: cbor2.CBORTag(OBJECT_TAG, [self.name, self.fingerprint, n]) for n in self.members}
        )

    def to_wire(self, member: Any) -> cbor2.CBORTag:
        return self.tags[member.name]

    def from_wire(self, payload: object) -> object:
        member = self.members.get(payload) if type(payload) is str else None
        if member is None:
            raise CodecError(f"{self.name}: expected the name of a member, got {_value_label(payload)}")
        return member


class _Learned:
    """Encodes `Record` and `EnumMember` values (types known by their schema, or registered) as the
    registered type itself travels. Sits in the codec's table under those two classes."""

    __slots__ = ("codec",)

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def to_wire(self, value: Any) -> cbor2.CBORTag:
        codec = self.codec
        name = value.type_name
        info = codec._by_name.get(name)
        if info is not None:  # a registered type after all: travel as its class does
            if isinstance(value, EnumMember):
                if not isinstance(info, _EnumInfo) or value.name not in info.members:
                    raise CodecError(f"cannot encode {name}.{value.name}: {name} has no such member")
                return info.tags[value.name]
            if not isinstance(info, _AttrsInfo):
                raise CodecError(f"cannot encode a record of {name}: it is an enum")
            return info.to_wire(_construct(info, value))
        schema = codec._learned.get(name)
        if schema is None:
            raise CodecError(f"cannot encode a value of {name!r}: its type is neither registered nor learned")
        if isinstance(value, EnumMember):
            if schema.members is None or value.name not in dict(schema.members):
                raise CodecError(f"cannot encode {name}.{value.name}: {name} has no such member")
            return cbor2.CBORTag(OBJECT_TAG, [name, schema.fingerprint, value.name])
        if schema.fields is None:
            raise CodecError(f"cannot encode a record of {name}: it is an enum")
        values = _in_order(name, [n for n, _ in schema.fields], value.fields)
        problem = field_problem(schema, values, codec._type_name_of)
        if problem is not None:
            raise CodecError(f"cannot encode {problem}")
        try:
            prepared = [codec._prepare(v) for v in values]
        except _Mismatch as exc:
            raise CodecError(f"cannot encode a record of {name}: {exc.describe()}") from None
        return cbor2.CBORTag(OBJECT_TAG, [name, schema.fingerprint, prepared])

    def from_wire(self, schema: TypeSchema, payload: object) -> object:
        name = schema.name
        if schema.members is not None:
            if type(payload) is not str or payload not in dict(schema.members):
                raise CodecError(f"{name}: expected the name of a member, got {_value_label(payload)}")
            return EnumMember(name, payload)
        if type(payload) is not list:
            raise CodecError(f"{name}: expected a list of field values, got {_value_label(payload)}")
        problem = field_problem(schema, payload, self.codec._type_name_of)
        if problem is not None:
            raise CodecError(f"cannot decode {problem}")
        return Record(name, {n: v for (n, _), v in zip(schema.fields or (), payload, strict=True)})


def _in_order(name: str, names: Sequence[str], given: Mapping[str, Any]) -> list[Any]:
    """The values of a record of type ``name`` in the order of its fields ``names``; `CodecError` naming
    a field it lacks or one it has not."""
    if set(given) != set(names):
        unknown = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        what = f"has no field {unknown[0]!r}" if unknown else f"needs the field {missing[0]!r}"
        raise CodecError(f"cannot encode a record of {name}: {name} {what} (fields: {', '.join(names)})")
    return [given[n] for n in names]


def _construct(info: _AttrsInfo, record: Record) -> object:
    """An instance of ``info``'s class from a `Record` of it (by field name; validators run)."""
    values = _in_order(info.name, info.field_names, record.fields)
    try:
        return info.construct(values)
    except Exception as exc:
        raise CodecError(
            f"cannot encode a record of {info.name}: the class refused its fields: {exc!r}"
        ) from exc


_Info = _AttrsInfo | _EnumInfo


def _stable_repr(value: object) -> str:
    """``repr`` for values whose repr is the same in every process; the type's name otherwise."""
    if type(value) in _SCALAR_TYPES:
        return repr(value)
    return f"<{_type_label(type(value))}>"


class _Registration:
    """One call to `Codec.register`: collects the new types and commits them only if all of them work."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.by_type: dict[type, _Info] = {}
        self.by_name: dict[str, _Info] = {}

    def lookup(self, cls: type) -> _Info | None:
        return self.by_type.get(cls) or self.codec._by_type.get(cls)

    def add(self, cls: object, name: str | None) -> _Info:
        if not isinstance(cls, type):
            raise CodecError(f"cannot register {cls!r}: not a class")
        existing = self.lookup(cls)
        if existing is not None:
            if name is not None and name != existing.name:
                raise CodecError(
                    f"cannot register {_type_label(cls)} as {name!r}: already registered as {existing.name!r}"
                )
            return existing
        if name is None:
            name = f"{cls.__module__}.{cls.__qualname__}"
        if type(name) is not str or not name:
            raise CodecError(f"cannot register {_type_label(cls)}: the type name must be a non-empty str")
        other = self.by_name.get(name) or self.codec._by_name.get(name)
        if other is not None:
            raise CodecError(
                f"cannot register {_type_label(cls)} as {name!r}: "
                f"that name is already registered for {_type_label(other.cls)}"
            )
        info: _Info
        if issubclass(cls, enum.Flag):
            raise CodecError(f"cannot register {_type_label(cls)}: enum.Flag types are not supported")
        if issubclass(cls, enum.Enum):
            info = _EnumInfo(cls, name)
            self.by_type[cls] = self.by_name[name] = info
        elif attrs.has(cls):
            info = _AttrsInfo(cls, name)
            self.by_type[cls] = self.by_name[name] = (
                info  # before the fields: classes may refer to themselves
            )
            info.set_shapes(self.field_shapes(cls, info.field_names))
        else:
            raise CodecError(f"cannot register {_type_label(cls)}: not an attrs class or an enum.Enum")
        return info

    def field_shapes(self, cls: type, names: Sequence[str]) -> list[_Shape]:
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            raise CodecError(
                f"cannot register {_type_label(cls)}: its annotations cannot be resolved ({exc!r}); "
                "classes the annotations name must be importable from the class's module"
            ) from exc
        fields = attrs.fields_dict(cls)
        shapes = []
        for field in names:
            hint = hints.get(field, fields[field].type)
            try:
                shapes.append(self.shape(Any if hint is None else hint))
            except _Unsupported as exc:
                raise CodecError(
                    f"cannot register {_type_label(cls)}: field {field!r} is annotated {hint!r}, "
                    f"which the codec does not support ({exc})"
                ) from None
        return shapes

    def shape(self, tp: Any) -> _Shape:
        codec = self.codec
        simple = _SIMPLE_ANNOTATIONS.get(tp) if _hashable(tp) else None
        if simple is not None:
            return _exact_shape(*simple)
        if tp is Any or tp is object or isinstance(tp, TypeVar):
            return _Shape("Any", codec._prepare, codec._check_decoded, expr="any")
        if isinstance(tp, str):
            raise _Unsupported("it is a string that could not be resolved")
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:  # typing.NewType
            return self.shape(supertype)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        cls = origin if origin is not None else tp
        if isinstance(cls, type) and (attrs.has(cls) or issubclass(cls, enum.Enum)):
            info = self.add(cls, None)
            if isinstance(info, _EnumInfo):
                return self.enum_shape(info)
            return _exact_shape(info.name, frozenset({cls}), frozenset({cls}), {"type": info.name})
        if origin is typing.Union or origin is types.UnionType:
            return _union_shape([self.shape(a) for a in args])
        if origin is Literal:
            return self.literal_shape(args)
        if cls in (list, frozenset, set):
            if len(args) > 1:
                raise _Unsupported(f"{cls.__name__} takes one type argument")
            return _sequence_shape(cls, self.shape(args[0] if args else Any))
        if cls is tuple:
            if origin is None:  # a bare ``tuple``
                return _sequence_shape(tuple, self.shape(Any))
            if len(args) == 2 and args[1] is Ellipsis:
                return _sequence_shape(tuple, self.shape(args[0]))
            if not args or args == ((),):  # ``tuple[()]``, spelt either way
                return _fixed_tuple_shape([])
            return _fixed_tuple_shape([self.shape(a) for a in args])
        if cls is dict:
            if args and args[0] is not str:
                raise _Unsupported("dict keys must be str")
            return _dict_shape(self.shape(args[1] if args else Any))
        raise _Unsupported(
            "use None, bool, int, float, str, bytes, Any, list[...], tuple[...], frozenset[...], set[...], "
            "dict[str, ...], unions, Literal[...], or an attrs class or enum"
        )

    def enum_shape(self, info: _EnumInfo) -> _Shape:
        cls = info.cls
        tags = info.tags
        label = info.name

        def encode(value: Any) -> Any:
            if type(value) is cls:
                return tags[value.name]
            raise _Mismatch(label, value)

        def decode(value: Any) -> Any:
            if type(value) is cls:
                return value
            raise _Mismatch(label, value)

        return _Shape(label, encode, decode, refs=frozenset({cls}), expr={"type": info.name})

    def literal_shape(self, args: tuple[Any, ...]) -> _Shape:
        options: list[_Shape] = []
        values: list[Any] = []
        for arg in args:
            if isinstance(arg, enum.Enum):
                info = self.add(type(arg), None)
                assert isinstance(info, _EnumInfo)
                options.append(self.literal_member_shape(info, arg))
                values.append({"type": info.name, "member": arg.name})
            elif type(arg) in _SCALAR_TYPES:
                options.append(_literal_scalar_shape(arg))
                values.append(arg)
            else:
                raise _Unsupported(f"Literal value {arg!r} is not a scalar or an enum member")
        shape = _union_shape(options)
        shape.expr = {"literal": values}
        return shape

    def literal_member_shape(self, info: _EnumInfo, member: enum.Enum) -> _Shape:
        label = f"{info.name}.{member.name}"
        tags = info.tags

        def encode(value: Any) -> Any:
            if value is member:
                return tags[member.name]
            raise _Mismatch(label, value)

        def decode(value: Any) -> Any:
            if value is member:
                return value
            raise _Mismatch(label, value)

        return _Shape(label, encode, decode, refs=frozenset({info.cls}))

    def commit(self) -> None:
        for info in self.by_type.values():
            info.fingerprint = self.fingerprint(info)
            if isinstance(info, _EnumInfo):
                info.finish()
        self.codec._by_type.update(self.by_type)
        self.codec._by_name.update(self.by_name)

    def fingerprint(self, info: _Info) -> str:
        seen: dict[type, _Info] = {}
        todo = [info]
        while todo:
            current = todo.pop()
            if current.cls in seen:
                continue
            seen[current.cls] = current
            for ref in current.refs:
                found = self.lookup(ref)
                assert found is not None, ref
                todo.append(found)
        others = sorted(i.schema() for c, i in seen.items() if c is not info.cls)
        text = "\n".join([info.schema(), *others])
        return hashlib.sha256(text.encode()).hexdigest()[:_FINGERPRINT_CHARS]


class _Unsupported(Exception):
    """An annotation the codec cannot handle; turned into a `CodecError` naming the field."""


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _literal_scalar_shape(literal: object) -> _Shape:
    label = repr(literal)
    kind = type(literal)

    def check(value: Any) -> Any:
        if type(value) is kind and value == literal:
            return value
        raise _Mismatch(label, value)

    return _Shape(label, check, check)


def _refuse_tag(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise CodecError(f"CBOR tag {tag} is not supported by this codec")

    return refuse


def _refuse_unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> Any:
    raise CodecError(f"unknown CBOR tag {tag.tag}")


def _codec_error_in(exc: BaseException) -> CodecError | None:
    """The `CodecError` one of our hooks raised, if cbor2 wrapped one in its own error."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 10:
        if isinstance(cause, CodecError):
            return cause
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def _check_float(field: str, value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise CodecError(f"sample field {field!r}: expected float, got {_value_label(value)}")


class Codec:
    """Encodes values to CBOR and back; see the module docstring for the wire format.

    Each instance has its own registry of types: a codec only ever constructs the classes registered with it.
    """

    def __init__(self) -> None:
        self._by_type: dict[type, _Info] = {}
        self._by_name: dict[str, _Info] = {}
        semantic: dict[int, Callable[[Any, bool], Any]] = {
            tag: _refuse_tag(tag) for tag in _CBOR2_BUILTIN_TAGS
        }
        semantic[OBJECT_TAG] = self._decode_object
        self._semantic_decoders: Mapping[int, Callable[[Any, bool], Any]] = semantic
        #: Schemas learned from peers, by type name (types this codec has no class for).
        self._learned: dict[str, TypeSchema] = {}
        self.register(NotAvailable, name="bus.NotAvailable")  # every codec: any topic may carry one
        self._learner = _Learned(self)

    # -- registration ---------------------------------------------------------------------------------------

    @overload
    def register(self, cls: _C, /, *, name: str | None = None) -> _C: ...
    @overload
    def register(self, cls: None = None, /, *, name: str | None = None) -> Callable[[_C], _C]: ...

    def register(self, cls: _C | None = None, /, *, name: str | None = None) -> _C | Callable[[_C], _C]:
        """Register an attrs class or an enum under a stable type name (its ``module.qualname`` by default).

        Works as a decorator, with or without ``name=``. Registering the same class again is a no-op; the
        attrs classes and enums its fields' annotations refer to are registered with it, under their default
        names (to give one of those a name of its own, register it first). Raises `CodecError` if the name is
        taken by another class, or a field's annotation is not supported (then nothing is registered).
        """
        if cls is None:
            return lambda c: self.register(c, name=name)
        registration = _Registration(self)
        registration.add(cls, name)
        registration.commit()
        return cls

    def is_registered(self, cls: type) -> bool:
        """Whether ``cls`` is registered with this codec (directly or as a field's type)."""
        return cls in self._by_type

    def type_name(self, cls: type) -> str:
        """The type name ``cls`` travels under; `CodecError` if it is not registered."""
        return self._info(cls).name

    def fingerprint(self, cls: type) -> str:
        """The schema fingerprint of a registered class: 16 hex digits of a sha256."""
        return self._info(cls).fingerprint

    def _info(self, cls: type) -> _Info:
        info = self._by_type.get(cls)
        if info is None:
            raise CodecError(f"{_type_label(cls)} is not registered with this codec")
        return info

    # -- schemas --------------------------------------------------------------------------------------------

    def describe(self, type_: type | str) -> TypeSchema:
        """The schema of a registered class (or type name), or of a learned type name; `CodecError` if
        this codec knows neither."""
        if isinstance(type_, str):
            info = self._by_name.get(type_)
            if info is not None:
                return info.describe()
            learned = self._learned.get(type_)
            if learned is None:
                raise CodecError(f"unknown type name {type_!r}: neither registered nor learned")
            return learned
        return self._info(type_).describe()

    def schemas(self, type_: type | str) -> list[TypeSchema]:
        """The schema of ``type_`` and of every registered or learned type its fields reach (what a peer
        needs to read and write its values), ``type_``'s first."""
        first = self.describe(type_)
        found = {first.name: first}
        todo = list(first.refs())
        while todo:
            name = todo.pop()
            if name not in found:
                schema = self.describe(name)
                found[name] = schema
                todo.extend(schema.refs())
        return list(found.values())

    def learn(self, schemas: Iterable[TypeSchema]) -> None:
        """Learn types from a peer's schemas: their values decode as `Record`/`EnumMember`, and those
        encode back. A schema of a type registered here is ignored (the class wins; a payload with another
        fingerprint fails with `SchemaMismatchError` as before); a learned one is replaced."""
        for schema in schemas:
            if schema.name not in self._by_name:
                self._learned[schema.name] = schema

    def with_schemas(self, schemas: Iterable[TypeSchema]) -> Codec:
        """A codec with this one's registered classes (shared: registering on either registers on both)
        that has also learned ``schemas`` -- for data that carries its own schemas (an uplink batch, a
        recording), without teaching this codec."""
        other = Codec.__new__(Codec)
        other._by_type = self._by_type
        other._by_name = self._by_name
        other._learned = dict(self._learned)
        other._learner = _Learned(other)
        semantic = dict(self._semantic_decoders)
        semantic[OBJECT_TAG] = other._decode_object
        other._semantic_decoders = semantic
        other.learn(schemas)
        return other

    def knows(self, name: str) -> bool:
        """Whether values of the type ``name`` can be decoded here (registered or learned)."""
        return name in self._by_name or name in self._learned

    def _type_name_of(self, value: object) -> str | None:
        if isinstance(value, Record | EnumMember):
            return value.type_name
        info = self._by_type.get(type(value))
        return None if info is None else info.name

    # -- values ---------------------------------------------------------------------------------------------

    def encode(self, value: object, *, types: set[str] | None = None) -> bytes:
        """Encode ``value`` to CBOR bytes; `CodecError` (naming the type) if it holds anything unsupported.

        With ``types``, the names of the registered types whose values ``value`` holds are added to it
        outside typed fields (whose types `schemas` reaches): what a peer needs the schemas of."""
        token = _NOTED.set(types)
        try:
            prepared = self._prepare(value)
            return self._dumps(prepared)
        except _Mismatch as exc:
            where = f" at {exc.path}" if exc.path else ""
            raise CodecError(f"cannot encode value{where}: {exc.describe()}") from None
        except RecursionError:
            raise CodecError(_TOO_DEEP) from None
        finally:
            _NOTED.reset(token)

    def decode(self, data: bytes | bytearray | memoryview) -> object:
        """Decode one value from ``data``, which must hold exactly one CBOR item; `CodecError` otherwise."""
        return self._loads(data)

    def encode_sample(self, sample: Sequence[object]) -> bytes:
        """Encode a bus sample: any 6-sequence ``(topic, value, timestamp, bus_time, publisher, seq)``."""
        try:
            topic, value, timestamp, bus_time, publisher, seq = sample
        except (TypeError, ValueError):
            raise CodecError(
                "a sample must be a sequence of 6 fields "
                f"(topic, value, timestamp, bus_time, publisher, seq), got {_value_label(sample)}"
            ) from None
        if type(topic) is not str:
            raise CodecError(f"sample field 'topic': expected str, got {_value_label(topic)}")
        if type(publisher) is not str:
            raise CodecError(f"sample field 'publisher': expected str, got {_value_label(publisher)}")
        if type(seq) is not int or seq < 0:
            raise CodecError(f"sample field 'seq': expected an int >= 0, got {_value_label(seq)}")
        timestamp = _check_float("timestamp", timestamp)
        bus_time = _check_float("bus_time", bus_time)
        try:
            prepared = self._prepare(value)
        except _Mismatch as exc:
            where = f" at {exc.path}" if exc.path else ""
            raise CodecError(
                f"cannot encode the value of a {topic} sample{where}: {exc.describe()}"
            ) from None
        except RecursionError:
            raise CodecError(_TOO_DEEP) from None
        return self._dumps([topic, prepared, timestamp, bus_time, publisher, seq])

    def decode_sample(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[str, object, float, float, str, int]:
        """Decode a sample encoded by `encode_sample` into the plain tuple of its six fields."""
        item = self._loads(data)
        if type(item) is not list or len(item) != 6:
            raise CodecError(f"a sample is a CBOR array of 6 items, got {_value_label(item)}")
        topic, value, timestamp, bus_time, publisher, seq = item
        if type(topic) is not str:
            raise CodecError(f"sample field 'topic': expected str, got {_value_label(topic)}")
        if type(publisher) is not str:
            raise CodecError(f"sample field 'publisher': expected str, got {_value_label(publisher)}")
        if type(seq) is not int or seq < 0:
            raise CodecError(f"sample field 'seq': expected an int >= 0, got {_value_label(seq)}")
        return (
            topic,
            value,
            _check_float("timestamp", timestamp),
            _check_float("bus_time", bus_time),
            publisher,
            seq,
        )

    # -- machinery ------------------------------------------------------------------------------------------

    def _dumps(self, prepared: object) -> bytes:
        try:
            return cbor2.dumps(prepared, default=self._default)
        except CodecError:
            raise
        except RecursionError:
            raise CodecError(_TOO_DEEP) from None
        except Exception as exc:  # cbor2 found something our checks let through
            raise CodecError(f"cannot encode value: {exc}") from exc

    def _loads(self, data: bytes | bytearray | memoryview) -> object:
        try:
            stream = io.BytesIO(data)
            value = cbor2.CBORDecoder(
                stream,
                semantic_decoders=self._semantic_decoders,
                tag_hook=_refuse_unknown_tag,
                allow_duplicate_keys=False,
            ).decode()
        except Exception as exc:
            ours = _codec_error_in(exc)
            if ours is not None:
                raise ours from None
            if isinstance(exc, cbor2.CBORDecodeEOF):
                raise CodecError(f"truncated CBOR data: {exc}") from exc
            raise CodecError(f"malformed CBOR data: {exc}") from exc
        end = stream.tell()
        size = stream.seek(0, io.SEEK_END)
        if end != size:
            raise CodecError(f"trailing garbage: {size - end} bytes after the CBOR item (of {size} bytes)")
        try:
            return self._check_decoded(value)
        except _Mismatch as exc:
            where = f" at {exc.path}" if exc.path else ""
            raise CodecError(f"unsupported value in CBOR data{where}: {exc.describe()}") from None

    def _default(self, encoder: cbor2.CBOREncoder, value: object) -> None:
        """cbor2's hook for the types it does not know: registered attrs instances (enums come prepared)."""
        info = self._by_type.get(type(value))
        if info is None:
            if type(value) is Record or type(value) is EnumMember:  # a type known by its schema
                encoder.encode(self._learner.to_wire(value))
                return
            raise CodecError(f"cannot encode value: expected {_SUPPORTED_VALUES}, got {_value_label(value)}")
        noted = _NOTED.get()
        if noted is not None:
            noted.add(info.name)
        encoder.encode(info.to_wire(value))

    def _decode_object(self, content: Any, immutable: bool) -> object:
        """cbor2's semantic decoder for tag 27: build a registered attrs instance or enum member."""
        if type(content) is not list or len(content) != 3:
            raise CodecError(
                f"CBOR tag {OBJECT_TAG}: expected [type name, fingerprint, payload], "
                f"got {_value_label(content)}"
            )
        name, fingerprint, payload = content
        if type(name) is not str:
            raise CodecError(f"CBOR tag {OBJECT_TAG}: expected a str type name, got {_value_label(name)}")
        info = self._by_name.get(name)
        if info is None:
            learned = self._learned.get(name)
            if learned is None:
                raise CodecError(f"unknown type name {name!r}: it is not registered with this codec")
            if fingerprint != learned.fingerprint:
                if type(fingerprint) is not str:
                    raise CodecError(f"{name}: expected a str fingerprint, got {_value_label(fingerprint)}")
                raise SchemaMismatchError(name, learned.fingerprint, fingerprint)
            return self._learner.from_wire(learned, payload)
        if fingerprint != info.fingerprint:
            if type(fingerprint) is not str:
                raise CodecError(f"{name}: expected a str fingerprint, got {_value_label(fingerprint)}")
            raise SchemaMismatchError(name, info.fingerprint, fingerprint)
        return info.from_wire(payload)

    def _prepare(self, value: Any) -> Any:
        """Check a value (outside typed fields) is supported; swap enum members for their tags.

        Returns ``value`` itself unless it holds an enum member (copy on write), so the common case of plain
        data costs one pass of type checks, mostly in C.
        """
        kind = type(value)
        if kind in _SCALAR_TYPES:
            return value
        info = self._by_type.get(kind)
        if info is not None:
            if isinstance(info, _EnumInfo):
                noted = _NOTED.get()
                if noted is not None:
                    noted.add(info.name)
                return info.to_wire(value)
            return value
        if kind is list or kind is tuple:
            if _SCALAR_TYPES.issuperset(map(type, value)):
                return value
            copy: list[Any] | None = None
            for i, item in enumerate(value):
                try:
                    prepared = self._prepare(item)
                except _Mismatch as exc:
                    raise exc.at(f"[{i}]") from None
                if prepared is not item:
                    if copy is None:
                        copy = list(value)
                    copy[i] = prepared
            return value if copy is None else copy
        if kind is dict:
            if not _STR_ONLY.issuperset(map(type, value)):
                key = next(k for k in value if type(k) is not str)
                raise _Mismatch("str dict keys", key)
            if _SCALAR_TYPES.issuperset(map(type, value.values())):
                return value
            changed: dict[str, Any] | None = None
            for key, item in value.items():
                try:
                    prepared = self._prepare(item)
                except _Mismatch as exc:
                    raise exc.at(f"[{key!r}]") from None
                if prepared is not item:
                    if changed is None:
                        changed = dict(value)
                    changed[key] = prepared
            return value if changed is None else changed
        if kind is Record or kind is EnumMember:  # encoded by `_default`, from the schema
            return value
        raise _Mismatch(_SUPPORTED_VALUES, value)

    def _check_decoded(self, value: Any) -> Any:
        """Check a decoded value (outside typed fields) holds only supported values; return it."""
        kind = type(value)
        if kind in _SCALAR_TYPES or kind in self._by_type:
            return value
        if kind is list:
            if not _SCALAR_TYPES.issuperset(map(type, value)):
                for i, item in enumerate(value):
                    try:
                        self._check_decoded(item)
                    except _Mismatch as exc:
                        raise exc.at(f"[{i}]") from None
            return value
        if kind is dict:
            if not _STR_ONLY.issuperset(map(type, value)):
                key = next(k for k in value if type(k) is not str)
                raise _Mismatch("str dict keys", key)
            if not _SCALAR_TYPES.issuperset(map(type, value.values())):
                for key, item in value.items():
                    try:
                        self._check_decoded(item)
                    except _Mismatch as exc:
                        raise exc.at(f"[{key!r}]") from None
            return value
        if kind is Record or kind is EnumMember:  # decoded from a learned schema
            return value
        raise _Mismatch(_SUPPORTED_VALUES, value)


#: A codec for the whole process; register the types of your topics on it.
default_codec: Final = Codec()
