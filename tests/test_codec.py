"""The bus's CBOR codec: exact round trips, registration, fingerprints, and defensive decoding."""

from __future__ import annotations

import enum
import math
import typing
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    cbor_values,
    cbor_values_with_tuples,
    instances_of,
    mutated_bytes,
    values_of_type,
)

from bus._codec import OBJECT_TAG, Codec, default_codec
from bus._errors import CodecError, SchemaMismatchError

# -- types used across the tests (module level, so their string annotations resolve) -------------------------


class Gear(enum.IntEnum):
    P = 0
    R = 1
    N = 2
    D = 3


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Mode(enum.StrEnum):
    ECO = "eco"
    SPORT = "sport"


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@attrs.frozen
class Point:
    x: float
    y: float


@attrs.define
class Reading:
    """One field of every kind the codec restores from annotations."""

    name: str
    value: float
    count: int
    raw: bytes
    ok: bool
    gear: Gear
    color: Color | None
    mode: Mode
    where: Point
    path: tuple[Point, ...]
    pair: tuple[int, str]
    empty: tuple[()]
    tags: frozenset[str]
    flags: set[int]
    samples: list[int]
    by_name: dict[str, list[float]]
    nested: list[tuple[Gear, frozenset[int]]]
    extra: Any
    anything: tuple  # type: ignore[type-arg]  # a bare annotation on purpose
    level: Literal["low", "high", 3, Color.GREEN]
    maybe: int | None = None


@attrs.define
class Tree:
    label: str
    children: list[Tree] = attrs.Factory(list)
    parent_gear: Gear | None = None


@attrs.frozen
class KwOnly:
    a: int
    b: str = attrs.field(kw_only=True)


@attrs.define
class Private:
    _secret: int
    visible: str


@attrs.define
class Derived:
    a: int
    doubled: int = attrs.field(init=False, default=-1)


@attrs.frozen
class Empty:
    pass


@attrs.frozen
class NonNegative:
    speed: float = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class Unregistered:
    a: int


class UnregisteredGear(enum.IntEnum):
    ONE = 1


class Text(str):
    __slots__ = ()


CODEC = Codec()
for _cls in (Reading, Tree, KwOnly, Private, Derived, Empty, NonNegative):
    CODEC.register(_cls)


def assert_same(actual: object, expected: object, path: str = "value") -> None:
    """Equal, of exactly the same types all the way down; nan equals nan and -0.0 is not 0.0."""
    assert type(actual) is type(expected), f"{path}: {type(actual)!r} is not {type(expected)!r}"
    if isinstance(expected, float):
        assert isinstance(actual, float)
        if math.isnan(expected):
            assert math.isnan(actual), path
        else:
            assert actual == expected, path
            assert math.copysign(1.0, actual) == math.copysign(1.0, expected), f"{path}: sign of zero"
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple)
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), path
        for key, e in expected.items():
            assert_same(actual[key], e, f"{path}[{key!r}]")
    elif attrs.has(type(expected)):
        for field in attrs.fields(typing.cast(Any, type(expected))):
            assert_same(getattr(actual, field.name), getattr(expected, field.name), f"{path}.{field.name}")
    else:
        assert actual == expected, path


def tuples_to_lists(value: object) -> object:
    if isinstance(value, list | tuple):
        return [tuples_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: tuples_to_lists(v) for k, v in value.items()}
    return value


def wire(data: bytes) -> Any:
    """Decode ``data`` with plain cbor2, keeping tags as `cbor2.CBORTag`: to look at the wire format."""
    return cbor2.loads(data, tag_hook=lambda tag, immutable: tag)


def object_tag(codec: Codec, cls: type, payload: object, *, fingerprint: object = None) -> bytes:
    """Hand-made tag-27 bytes for ``cls`` with any payload (and the right fingerprint unless given)."""
    fp = codec.fingerprint(cls) if fingerprint is None else fingerprint
    return cbor2.dumps(cbor2.CBORTag(OBJECT_TAG, [codec.type_name(cls), fp, payload]))


def a_reading(**changes: Any) -> Reading:
    reading = Reading(
        name="front left",
        value=-0.0,
        count=2**70,
        raw=b"\x00\xff",
        ok=True,
        gear=Gear.D,
        color=Color.RED,
        mode=Mode.SPORT,
        where=Point(1.5, math.inf),
        path=(Point(0.0, 1.0), Point(2, 3)),
        pair=(7, "seven"),
        empty=(),
        tags=frozenset({"a", "b"}),
        flags={1, 2, 3},
        samples=[1, -1, 0],
        by_name={"x": [math.nan, 1.0]},
        nested=[(Gear.R, frozenset({4, 5}))],
        extra={"list": [1, "two", None], "gear": Gear.N, "point": Point(0.5, -0.5)},
        anything=(1, [2, 3]),
        level=Color.GREEN,
        maybe=None,
    )
    return attrs.evolve(reading, **changes)


# -- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        2**64,
        -(2**64) - 1,
        10**40,
        -(10**40),
        1.5,
        1.1,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        5e-324,
        "",
        "grüße 🚗",
        b"",
        b"\x00\xff",
        [],
        {},
        [1, [2, [3, {"k": [b"x"]}]]],
    ],
)
def test_plain_values_round_trip_exactly(value: object) -> None:
    assert_same(CODEC.decode(CODEC.encode(value)), value)


@given(cbor_values())
def test_arbitrary_plain_values_round_trip_exactly(value: object) -> None:
    assert_same(CODEC.decode(CODEC.encode(value)), value)


@given(cbor_values_with_tuples())
def test_tuples_outside_typed_fields_come_back_as_lists(value: object) -> None:
    assert_same(CODEC.decode(CODEC.encode(value)), tuples_to_lists(value))


def test_top_level_tuple_decodes_as_list() -> None:
    assert CODEC.decode(CODEC.encode((1, (2, 3)))) == [1, [2, 3]]


@given(instances_of(Reading))
def test_registered_instances_round_trip_with_their_types(reading: Reading) -> None:
    decoded = CODEC.decode(CODEC.encode(reading))
    assert type(decoded) is Reading
    assert_same(decoded, reading)


@given(instances_of(Tree))
def test_self_referential_classes_round_trip(tree: Tree) -> None:
    assert_same(CODEC.decode(CODEC.encode(tree)), tree)


@given(st.lists(st.one_of(instances_of(Tree), instances_of(KwOnly), values_of_type(Gear | Color | Mode))))
def test_registered_values_inside_plain_containers_round_trip(values: list[object]) -> None:
    assert_same(CODEC.decode(CODEC.encode({"values": values})), {"values": values})


def test_annotations_restore_tuples_sets_enums_and_nested_classes() -> None:
    reading = a_reading()
    decoded = CODEC.decode(CODEC.encode(reading))
    assert isinstance(decoded, Reading)
    assert type(decoded.path) is tuple
    assert type(decoded.path[0]) is Point
    assert type(decoded.pair) is tuple
    assert type(decoded.tags) is frozenset
    assert type(decoded.flags) is set
    assert type(decoded.gear) is Gear
    assert type(decoded.mode) is Mode
    assert type(decoded.nested[0]) is tuple
    assert type(decoded.nested[0][0]) is Gear
    assert type(decoded.nested[0][1]) is frozenset
    assert type(decoded.anything) is tuple
    # an Any field keeps registered types but, like the top level, turns tuples into lists
    assert decoded.extra == {"list": [1, "two", None], "gear": Gear.N, "point": Point(0.5, -0.5)}
    assert type(decoded.extra["gear"]) is Gear
    assert decoded.anything == (1, [2, 3])
    assert_same(decoded, reading)


@pytest.mark.parametrize("member", [*Gear, *Color, *Mode])
def test_enum_members_round_trip_as_members(member: enum.Enum) -> None:
    decoded = CODEC.decode(CODEC.encode(member))
    assert decoded is member


def test_int_and_bool_values_keep_their_types_in_wider_fields() -> None:
    # the numeric tower: an int is a valid float, a bool a valid int; what was sent comes back
    decoded = CODEC.decode(CODEC.encode(a_reading(value=3, count=True, where=Point(1, 2))))
    assert isinstance(decoded, Reading)
    assert_same((decoded.value, decoded.count, decoded.where.x), (3, True, 1))


def test_kw_only_private_derived_and_empty_classes_round_trip() -> None:
    for value in (KwOnly(1, b="b"), Private(5, "v"), Empty()):
        assert_same(CODEC.decode(CODEC.encode(value)), value)
    derived = Derived(2)
    derived.doubled = 4
    decoded = CODEC.decode(CODEC.encode(derived))
    assert isinstance(decoded, Derived)
    # init=False fields do not travel; the receiving side gets their default
    assert (decoded.a, decoded.doubled) == (2, -1)


def test_the_class_must_work_without_the_default_instance() -> None:
    codec = Codec()
    assert not codec.is_registered(Point)
    codec.register(Point)
    assert codec.decode(codec.encode(Point(1.0, 2.0))) == Point(1.0, 2.0)
    assert not default_codec.is_registered(Tree)
    assert isinstance(default_codec, Codec)


# -- wire format ---------------------------------------------------------------------------------------------


def test_an_attrs_instance_travels_as_tag_27_with_name_fingerprint_and_positional_fields() -> None:
    codec = Codec()
    codec.register(Point)
    tag = wire(codec.encode(Point(1.5, -2.0)))
    assert isinstance(tag, cbor2.CBORTag)
    assert tag.tag == OBJECT_TAG == 27
    name, fingerprint, fields = tag.value
    assert name == f"{__name__}.Point"
    assert fingerprint == codec.fingerprint(Point)
    assert list(fields) == [1.5, -2.0]


def test_an_enum_member_travels_as_tag_27_with_its_name() -> None:
    codec = Codec()
    codec.register(Gear, name="vehicle.Gear")
    tag = wire(codec.encode(Gear.D))
    assert isinstance(tag, cbor2.CBORTag)
    assert tag.tag == OBJECT_TAG
    assert list(tag.value) == ["vehicle.Gear", codec.fingerprint(Gear), "D"]


def test_frozenset_fields_travel_as_arrays() -> None:
    tag = wire(CODEC.encode(a_reading(tags=frozenset({"only"}))))
    fields = tag.value[2]
    assert fields[[f.name for f in attrs.fields(Reading)].index("tags")] == ("only",)


# -- registration --------------------------------------------------------------------------------------------


def test_register_works_as_a_decorator_with_and_without_a_name() -> None:
    codec = Codec()

    @codec.register
    @attrs.frozen
    class Plain:
        a: int

    @codec.register(name="custom.Named")
    @attrs.frozen
    class Named:
        a: int

    assert codec.type_name(Plain) == f"{__name__}.{Plain.__qualname__}"
    assert codec.type_name(Named) == "custom.Named"
    assert codec.decode(codec.encode(Named(1))) == Named(1)
    assert codec.decode(codec.encode(Plain(2))) == Plain(2)


def test_register_is_idempotent_for_the_same_class() -> None:
    codec = Codec()
    assert codec.register(Point) is Point
    fingerprint = codec.fingerprint(Point)
    assert codec.register(Point) is Point
    assert codec.register(Point, name=codec.type_name(Point)) is Point
    assert codec.fingerprint(Point) == fingerprint


def test_registering_another_class_under_a_taken_name_is_refused() -> None:
    codec = Codec()
    codec.register(Point, name="shared.Name")
    with pytest.raises(CodecError, match=r"'shared\.Name'.*already registered for .*Point"):
        codec.register(Unregistered, name="shared.Name")
    assert not codec.is_registered(Unregistered)


def test_registering_a_class_again_under_another_name_is_refused() -> None:
    codec = Codec()
    codec.register(Point, name="first.Point")
    with pytest.raises(CodecError, match=r"already registered as 'first\.Point'"):
        codec.register(Point, name="second.Point")


def test_registering_a_class_registers_the_types_its_fields_refer_to() -> None:
    codec = Codec()
    codec.register(Reading)
    for cls in (Reading, Point, Gear, Color, Mode):
        assert codec.is_registered(cls), cls
    assert not codec.is_registered(Tree)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (int, "not an attrs class or an enum"),
        (Text, "not an attrs class or an enum"),
        (Perm, r"enum\.Flag types are not supported"),
    ],
)
def test_only_attrs_classes_and_enums_can_be_registered(cls: type, message: str) -> None:
    codec = Codec()
    with pytest.raises(CodecError, match=message):
        codec.register(cls)


@attrs.frozen
class HasDatetime:
    point: Point
    when: datetime


@attrs.frozen
class HasIntKeys:
    table: dict[int, str]


@attrs.frozen
class HasSequence:
    items: Sequence[int]


@attrs.frozen
class HasFlag:
    perm: Perm


@attrs.frozen
class HasMissingName:
    thing: NoSuchName  # type: ignore[name-defined]  # noqa: F821 - unresolvable on purpose


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (HasDatetime, r"field 'when' is annotated .*datetime.*not support"),
        (HasIntKeys, r"field 'table'.*dict keys must be str"),
        (HasSequence, r"field 'items'.*not support"),
        (HasFlag, r"enum\.Flag types are not supported"),
        (HasMissingName, r"annotations cannot be resolved.*NoSuchName"),
    ],
)
def test_unsupported_field_annotations_are_refused_and_nothing_is_registered(cls: type, message: str) -> None:
    codec = Codec()
    with pytest.raises(CodecError, match=message):
        codec.register(cls)
    assert not codec.is_registered(cls)
    assert not codec.is_registered(Point)  # registered along the way, then rolled back


@pytest.mark.parametrize("thing", [3, Point(1.0, 2.0)], ids=["an int", "an instance"])
def test_registering_what_is_not_a_class_is_refused(thing: object) -> None:
    codec = Codec()
    with pytest.raises(CodecError, match=r"^cannot register .*: not a class$"):
        codec.register(thing)  # type: ignore[call-overload]  # the wrong type on purpose


def test_an_empty_type_name_is_refused() -> None:
    codec = Codec()
    with pytest.raises(CodecError, match="the type name must be a non-empty str"):
        codec.register(Point, name="")
    assert not codec.is_registered(Point)


@attrs.frozen
class HasListOfTwo:
    items: list[int, str]  # type: ignore[type-arg]  # two arguments on purpose


@attrs.frozen
class HasComplexLiteral:
    value: Literal[1.5j]  # type: ignore[valid-type]  # not a scalar on purpose


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (HasListOfTwo, r"field 'items' .*\(list takes one type argument\)"),
        (HasComplexLiteral, r"field 'value' .*\(Literal value 1\.5j is not a scalar or an enum member\)"),
    ],
)
def test_malformed_annotations_are_refused(cls: type, message: str) -> None:
    codec = Codec()
    with pytest.raises(CodecError, match=message):
        codec.register(cls)
    assert not codec.is_registered(cls)


def test_fingerprint_and_type_name_of_an_unregistered_class_are_errors() -> None:
    codec = Codec()
    with pytest.raises(CodecError, match="Point is not registered"):
        codec.fingerprint(Point)
    with pytest.raises(CodecError, match="Point is not registered"):
        codec.type_name(Point)


# -- fingerprints --------------------------------------------------------------------------------------------


def thing_fingerprint(cls: type, name: str = "demo.Thing") -> str:
    codec = Codec()
    codec.register(cls, name=name)
    return codec.fingerprint(cls)


@attrs.frozen
class ThingV1:
    speed: float
    unit: str


@attrs.frozen
class ThingRenamed:
    velocity: float
    unit: str


@attrs.frozen
class ThingRetyped:
    speed: int
    unit: str


@attrs.frozen
class ThingReordered:
    unit: str
    speed: float


@attrs.frozen
class ThingExtraField:
    speed: float
    unit: str
    source: str = ""


@attrs.frozen
class ThingOptional:
    speed: float | None
    unit: str


def test_fingerprint_is_16_hex_digits_and_the_same_in_every_codec() -> None:
    fingerprint = thing_fingerprint(ThingV1)
    assert len(fingerprint) == 16
    int(fingerprint, 16)
    assert thing_fingerprint(ThingV1) == fingerprint


def test_fingerprint_is_stable_across_releases() -> None:
    # A change here breaks the wire format between releases: change it only on purpose.
    assert thing_fingerprint(ThingV1) == "45b4e35a87fb7aab"


@pytest.mark.parametrize(
    "changed", [ThingRenamed, ThingRetyped, ThingReordered, ThingExtraField, ThingOptional]
)
def test_fingerprint_changes_with_the_fields(changed: type) -> None:
    assert thing_fingerprint(changed) != thing_fingerprint(ThingV1)


def test_fingerprint_changes_with_the_type_name() -> None:
    assert thing_fingerprint(ThingV1, "demo.Other") != thing_fingerprint(ThingV1)


class GearV2(enum.IntEnum):
    P = 0
    R = 1
    N = 2
    D = 3
    S = 4


@attrs.frozen
class CarV1:
    gear: Gear


@attrs.frozen
class CarV2:
    gear: GearV2


def test_fingerprint_changes_when_a_nested_type_changes() -> None:
    first, second = Codec(), Codec()
    first.register(Gear, name="demo.Gear")
    second.register(GearV2, name="demo.Gear")
    first.register(CarV1, name="demo.Car")
    second.register(CarV2, name="demo.Car")
    assert first.fingerprint(Gear) != second.fingerprint(GearV2)
    assert first.fingerprint(CarV1) != second.fingerprint(CarV2)


def test_a_peer_with_another_definition_fails_with_schema_mismatch() -> None:
    ours, theirs = Codec(), Codec()
    ours.register(ThingV1, name="demo.Thing")
    theirs.register(ThingRetyped, name="demo.Thing")
    with pytest.raises(SchemaMismatchError, match=r"demo\.Thing: schema fingerprint mismatch") as caught:
        ours.decode(theirs.encode(ThingRetyped(1, "m/s")))
    assert caught.value.type_name == "demo.Thing"
    assert caught.value.ours == ours.fingerprint(ThingV1)
    assert caught.value.theirs == theirs.fingerprint(ThingRetyped)


def test_a_peer_with_another_enum_definition_fails_with_schema_mismatch() -> None:
    ours, theirs = Codec(), Codec()
    ours.register(Gear, name="demo.Gear")
    theirs.register(GearV2, name="demo.Gear")
    with pytest.raises(SchemaMismatchError):
        ours.decode(theirs.encode(GearV2.D))


# -- encoding errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Unregistered(1), r"got test_codec\.Unregistered Unregistered\(a=1\)"),
        ({1, 2}, r"got set \{1, 2\}"),
        (frozenset({1}), "got frozenset"),
        ({1: "one"}, r"expected str dict keys, got int 1"),
        ([0, {"deep": {(1, 2): 3}}], r"at \[1\]\['deep'\]: expected str dict keys, got tuple"),
        (UnregisteredGear.ONE, r"got test_codec\.UnregisteredGear"),
        (Text("x"), r"got test_codec\.Text"),
        (OrderedDict(a=1), "got collections.OrderedDict"),
        (datetime(2024, 1, 1), "got datetime.datetime"),
        (bytearray(b"x"), "got bytearray"),
        (1j, "got complex"),
        (cbor2.CBORTag(1, 0), "got cbor2.CBORTag"),
        ([[object()]], r"at \[0\]\[0\]: expected a supported value .* got object"),
    ],
)
def test_encoding_an_unsupported_value_names_its_type(value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.encode(value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": "3"}, r"Reading\.count: expected int, got str '3'"),
        ({"value": None}, r"Reading\.value: expected float, got NoneType None"),
        ({"gear": 3}, r"Reading\.gear: expected test_codec\.Gear, got int 3"),
        ({"path": [Point(0, 0)]}, r"Reading\.path: expected tuple\[test_codec\.Point, \.\.\.\], got list"),
        ({"path": (Point(0, 0), "p")}, r"Reading\.path\[1\]: expected test_codec\.Point, got str"),
        ({"pair": (1, 2)}, r"Reading\.pair\[1\]: expected str, got int 2"),
        ({"pair": (1, "a", 2)}, r"Reading\.pair: expected tuple\[int, str\]"),
        ({"tags": {"a"}}, r"Reading\.tags: expected frozenset\[str\], got set"),
        ({"by_name": {"x": [1.0, "y"]}}, r"Reading\.by_name\['x'\]\[1\]: expected float, got str"),
        ({"by_name": {1: []}}, r"Reading\.by_name: expected str dict keys, got int 1"),
        ({"by_name": []}, r"Reading\.by_name: expected dict\[str, list\[float\]\], got list \[\]"),
        ({"nested": [(Gear.R, frozenset({"s"}))]}, r"Reading\.nested\[0\]\[1\]\[0\]: expected int, got str"),
        ({"extra": {"s": {1}}}, r"Reading\.extra\['s'\]: expected a supported value"),
        ({"level": "medium"}, r"Reading\.level: expected 'low' \| 'high' \| 3 \| test_codec\.Color\.GREEN"),
        ({"maybe": 1.5}, r"Reading\.maybe: expected int \| None, got float 1\.5"),
        ({"where": Unregistered(1)}, r"Reading\.where: expected test_codec\.Point"),
    ],
)
def test_encoding_a_field_of_the_wrong_type_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.encode(a_reading(**changes))


@attrs.frozen
class Counts:
    by_name: dict[str, int]


def test_a_dict_of_scalars_names_the_first_wrong_value() -> None:
    codec = Codec()
    codec.register(Counts)
    assert codec.decode(codec.encode(Counts({"a": 1, "b": 2}))) == Counts({"a": 1, "b": 2})
    with pytest.raises(CodecError, match=r"Counts\.by_name\['b'\]: expected int, got float 2\.0"):
        codec.encode(Counts({"a": 1, "b": 2.0}))  # type: ignore[dict-item]  # on purpose


def test_a_subclass_of_a_registered_class_is_not_encoded_as_its_base() -> None:
    codec = Codec()
    codec.register(Point)

    @attrs.frozen
    class Point3(Point):
        z: float = 0.0

    with pytest.raises(CodecError, match="Point3"):
        codec.encode(Point3(1.0, 2.0))


def test_a_value_that_contains_itself_is_refused() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(CodecError, match="nested too deeply, or contains itself"):
        CODEC.encode(looped)


# -- decoding errors -----------------------------------------------------------------------------------------


def test_every_truncation_of_a_valid_encoding_is_a_codec_error() -> None:
    data = CODEC.encode(a_reading())
    for end in range(len(data)):
        with pytest.raises(CodecError):
            CODEC.decode(data[:end])
    with pytest.raises(CodecError, match="truncated"):
        CODEC.decode(b"")


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff", b"\x01\x02\x03", CODEC.encode("another item")])
def test_trailing_garbage_is_a_codec_error(garbage: bytes) -> None:
    for value in (1, "text", [1.5] * 300, a_reading()):
        data = CODEC.encode(value)
        with pytest.raises(CodecError, match=f"trailing garbage: {len(garbage)} bytes"):
            CODEC.decode(data + garbage)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "malformed"),
        (b"\x1c", "malformed"),
        (b"\x62\xff\xfe", "malformed"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
        (b"\xc2\x61a", "malformed"),  # a bignum whose content is text
        (b"\x81" * 1000 + b"\x00", "malformed"),  # nested deeper than cbor2 allows
        (b"\xa2\x61a\x01\x61a\x02", "malformed.*[Dd]uplicate"),
    ],
)
def test_malformed_cbor_is_a_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.decode(data)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (cbor2.undefined, r"got cbor2\.UndefinedType"),
        (cbor2.CBORSimpleValue(16), r"got cbor2\.CBORSimpleValue"),
        ([1, cbor2.CBORSimpleValue(99)], r"at \[1\]: expected a supported value"),
        ({1: 2}, "expected str dict keys, got int 1"),
        ({"ok": {(1, 2): 3}}, r"at \['ok'\]: expected str dict keys, got tuple"),
    ],
)
def test_values_outside_the_supported_set_are_refused_when_decoding(value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.decode(cbor2.dumps(value))


def test_every_cbor_tag_but_bignums_and_27_is_refused() -> None:
    # Also proves the codec's list of cbor2's built-in tags is complete for the installed cbor2.
    accepted = []
    for tag in range(65536):
        for payload in (0, "x", b"x", [0]):
            try:
                CODEC.decode(cbor2.dumps(cbor2.CBORTag(tag, payload)))
            except CodecError:
                continue
            accepted.append(tag)
            break
    assert accepted == [2, 3]


@given(st.integers(min_value=0, max_value=2**64 - 1).filter(lambda t: t not in (2, 3, 27)), st.data())
def test_unknown_tags_are_codec_errors_naming_the_tag(tag: int, data: st.DataObject) -> None:
    payload = data.draw(cbor_values(max_leaves=3))
    # cbor2's encoder turns on string references inside tag 256 (stringref-namespace), so a repeated
    # string in its payload is written as tag 25, which the decoder meets (and names) first.
    named = r"CBOR tag (256|25)\b" if tag == 256 else f"CBOR tag {tag}"
    with pytest.raises(CodecError, match=named):
        CODEC.decode(cbor2.dumps(cbor2.CBORTag(tag, payload)))


def test_unknown_type_names_are_codec_errors() -> None:
    data = cbor2.dumps(cbor2.CBORTag(OBJECT_TAG, ["no.such.Type", "0" * 16, []]))
    with pytest.raises(CodecError, match=r"unknown type name 'no\.such\.Type'"):
        CODEC.decode(data)


def test_decoding_never_constructs_an_unregistered_class() -> None:
    sender, receiver = Codec(), Codec()
    sender.register(Point)
    data = sender.encode([Point(1.0, 2.0)])
    with pytest.raises(CodecError, match=r"unknown type name 'test_codec\.Point'"):
        receiver.decode(data)
    assert not receiver.is_registered(Point)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("just a string", r"expected \[type name, fingerprint, payload\]"),
        (["test_codec.Point", "x"], r"expected \[type name, fingerprint, payload\]"),
        ([1, "x", []], "expected a str type name, got int 1"),
        (["test_codec.Point", 12, [1.0, 2.0]], "expected a str fingerprint, got int 12"),
    ],
)
def test_malformed_object_tags_are_codec_errors(content: object, message: str) -> None:
    codec = Codec()
    codec.register(Point)
    with pytest.raises(CodecError, match=message):
        codec.decode(cbor2.dumps(cbor2.CBORTag(OBJECT_TAG, content)))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1.0], r"Point: expected 2 field values \(x, y\), got 1"),
        ([1.0, 2.0, 3.0], r"Point: expected 2 field values \(x, y\), got 3"),
        ({"x": 1.0, "y": 2.0}, r"Point: expected a list of 2 field values, got dict"),
        ("xy", r"Point: expected a list of 2 field values, got str"),
    ],
)
def test_wrong_field_counts_are_codec_errors(payload: object, message: str) -> None:
    codec = Codec()
    codec.register(Point)
    with pytest.raises(CodecError, match=message):
        codec.decode(object_tag(codec, Point, payload))


def test_wrong_field_types_are_codec_errors_naming_the_field() -> None:
    codec = Codec()
    codec.register(Point)
    with pytest.raises(CodecError, match=r"cannot decode test_codec\.Point\.y: expected float, got str '2'"):
        codec.decode(object_tag(codec, Point, [1.0, "2"]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "3", r"Reading\.count: expected int, got str"),
        ("gear", 3, r"Reading\.gear: expected test_codec\.Gear, got int 3"),
        ("gear", "D", r"Reading\.gear: expected test_codec\.Gear, got str"),
        ("pair", [1, 2], r"Reading\.pair\[1\]: expected str, got int 2"),
        ("pair", [1], r"Reading\.pair: expected tuple\[int, str\], got list"),
        ("empty", [1], r"Reading\.empty: expected tuple\[\(\)\], got list"),
        ("tags", [["unhashable"]], r"Reading\.tags\[0\]: expected str, got list"),
        ("extra", [[1, cbor2.undefined]], r"Reading\.extra\[0\]\[1\]: expected a supported value"),
        ("level", "medium", r"Reading\.level: expected 'low' \| 'high'"),
        ("level", True, r"Reading\.level: expected 'low' \| 'high'"),
        ("by_name", {"x": ["nan"]}, r"Reading\.by_name\['x'\]\[0\]: expected float, got str"),
    ],
)
def test_fields_that_do_not_match_their_annotation_are_refused(
    field: str, value: object, message: str
) -> None:
    tag = wire(CODEC.encode(a_reading()))
    fields = [_thaw(v) for v in tag.value[2]]
    fields[[f.name for f in attrs.fields(Reading)].index(field)] = value
    data = object_tag(CODEC, Reading, fields)
    with pytest.raises(CodecError, match=message):
        CODEC.decode(data)


def _thaw(value: object) -> object:
    """cbor2 hands tag contents over immutable: turn them back into lists and dicts for re-encoding."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, typing.Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _thaw(value.value))
    return value


def test_a_set_field_with_unhashable_items_is_refused() -> None:
    codec = Codec()

    @codec.register(name="demo.Bag")
    @attrs.frozen
    class Bag:
        items: frozenset[Any]

    with pytest.raises(CodecError, match=r"Bag\.items: expected frozenset\[Any\] with hashable items"):
        codec.decode(object_tag(codec, Bag, [[[1], [2]]]))


def test_an_unknown_enum_member_is_a_codec_error() -> None:
    codec = Codec()
    codec.register(Gear)
    with pytest.raises(CodecError, match=r"Gear: expected the name of a member, got str 'X'"):
        codec.decode(object_tag(codec, Gear, "X"))
    with pytest.raises(CodecError, match=r"Gear: expected the name of a member, got int 3"):
        codec.decode(object_tag(codec, Gear, 3))


def test_values_the_class_refuses_are_codec_errors() -> None:
    with pytest.raises(CodecError, match=r"NonNegative: the decoded fields were refused by the class"):
        CODEC.decode(object_tag(CODEC, NonNegative, [-1.0]))


def test_decoding_a_non_bytes_object_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        CODEC.decode("not bytes")  # type: ignore[arg-type]


# -- fuzzing -------------------------------------------------------------------------------------------------


def check_decoding_only_raises_codec_error(data: bytes) -> None:
    """Decoding either fails with `CodecError` or gives a value that encodes and decodes to itself."""
    error: CodecError | None = None
    try:
        decoded = CODEC.decode(data)
    except CodecError as exc:
        error = exc
    if error is not None:
        assert str(error)  # every error says what was wrong
        return
    assert_same(CODEC.decode(CODEC.encode(decoded)), decoded)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    check_decoding_only_raises_codec_error(data)


@settings(max_examples=500)
@given(st.one_of(cbor_values(), instances_of(Reading), instances_of(Tree)), st.data())
def test_mutated_encodings_only_ever_raise_codec_error(value: object, data: st.DataObject) -> None:
    check_decoding_only_raises_codec_error(data.draw(mutated_bytes(CODEC.encode(value))))


# -- samples -------------------------------------------------------------------------------------------------


class FakeSample(NamedTuple):
    topic: str
    value: object
    timestamp: float
    bus_time: float
    publisher: str
    seq: int


@given(
    st.text(),
    st.one_of(cbor_values(max_leaves=5), instances_of(Tree), values_of_type(Gear)),
    st.floats(),
    st.floats(),
    st.text(),
    st.integers(min_value=0),
)
def test_samples_round_trip_as_plain_tuples(
    topic: str, value: object, timestamp: float, bus_time: float, publisher: str, seq: int
) -> None:
    sample = FakeSample(topic, value, timestamp, bus_time, publisher, seq)
    decoded = CODEC.decode_sample(CODEC.encode_sample(sample))
    assert type(decoded) is tuple
    assert_same(decoded, tuple(sample))


def test_a_sample_is_a_cbor_array_of_its_six_fields() -> None:
    data = CODEC.encode_sample(["Vehicle.Speed", Point(1.0, 2.0), 10.5, 3.25, "gateway", 7])
    raw = wire(data)
    assert raw[0] == "Vehicle.Speed"
    assert isinstance(raw[1], cbor2.CBORTag)
    assert raw[2:] == [10.5, 3.25, "gateway", 7]


def test_integer_sample_times_become_floats() -> None:
    decoded = CODEC.decode_sample(CODEC.encode_sample(("t", 1, 10, 20, "p", 1)))
    assert_same(decoded, ("t", 1, 10.0, 20.0, "p", 1))
    decoded = CODEC.decode_sample(cbor2.dumps(["t", 1, 10, 20, "p", 1]))
    assert_same(decoded, ("t", 1, 10.0, 20.0, "p", 1))


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (("t", 1, 1.0, 2.0, "p"), "sequence of 6 fields"),
        (("t", 1, 1.0, 2.0, "p", 1, "extra"), "sequence of 6 fields"),
        (42, "sequence of 6 fields"),
        ((1, 1, 1.0, 2.0, "p", 1), "'topic': expected str, got int"),
        (("t", 1, "now", 2.0, "p", 1), "'timestamp': expected float, got str"),
        (("t", 1, 1.0, True, "p", 1), "'bus_time': expected float, got bool"),
        (("t", 1, 1.0, 2.0, None, 1), "'publisher': expected str, got NoneType"),
        (("t", 1, 1.0, 2.0, "p", -1), r"'seq': expected an int >= 0, got int -1"),
        (("t", 1, 1.0, 2.0, "p", 1.0), r"'seq': expected an int >= 0, got float"),
        (("t", 1, 1.0, 2.0, "p", True), r"'seq': expected an int >= 0, got bool"),
        (("t", {1, 2}, 1.0, 2.0, "p", 1), r"value of a t sample: expected a supported value .* got set"),
    ],
)
def test_encoding_a_malformed_sample_is_a_codec_error(sample: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.encode_sample(sample)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("not a sample", "a sample is a CBOR array of 6 items, got str"),
        (["t", 1, 1.0, 2.0, "p"], "a sample is a CBOR array of 6 items, got list"),
        ([1, 1, 1.0, 2.0, "p", 1], "'topic': expected str, got int"),
        (["t", 1, "now", 2.0, "p", 1], "'timestamp': expected float, got str"),
        (["t", 1, 1.0, None, "p", 1], "'bus_time': expected float, got NoneType"),
        (["t", 1, 1.0, 2.0, b"p", 1], "'publisher': expected str, got bytes"),
        (["t", 1, 1.0, 2.0, "p", -5], "'seq': expected an int >= 0, got int -5"),
        (["t", 1, 1.0, 2.0, "p", False], "'seq': expected an int >= 0, got bool"),
        (["t", cbor2.undefined, 1.0, 2.0, "p", 1], r"at \[1\]: expected a supported value"),
    ],
)
def test_decoding_a_malformed_sample_is_a_codec_error(item: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.decode_sample(cbor2.dumps(item))


def test_decoding_a_damaged_sample_is_a_codec_error() -> None:
    data = CODEC.encode_sample(("t", 1, 1.0, 2.0, "p", 1))
    with pytest.raises(CodecError, match="trailing garbage"):
        CODEC.decode_sample(data + b"\x00")
    with pytest.raises(CodecError, match="truncated"):
        CODEC.decode_sample(data[:-1])
