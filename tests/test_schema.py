"""Types that travel: schemas of registered types, values of types known only by their schema, and the
TYPES message that brings a client the schemas before the values that need them."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from spawn import wait_for_line
from strategies import instances_of, schema_junk

import bus
from bus import Codec, CodecError, EnumMember, Permissions, Record, Sample, SchemaMismatchError, TypeSchema
from bus._messages import Deliver, Hello, ProtocolError, Reply, Role, Types, Welcome
from bus._wire import Connection


class Gear(enum.Enum):
    P = "P"
    D = "D"
    R = "R"


@attrs.frozen
class Wheel:
    pressure: float
    low: bool = False


@attrs.frozen
class Car:
    speed: float
    gear: Gear
    wheels: tuple[Wheel, ...]
    fixed: tuple[int, str]
    tags: dict[str, int]
    note: str | None
    mode: Literal["eco", "sport", Gear.P]
    blob: bytes
    extra: Any = None


def both() -> tuple[Codec, Codec]:
    """A codec with the classes, and one that has learned their schemas from it."""
    ours = Codec()
    ours.register(Car, name="test.Car")
    theirs = Codec()
    theirs.learn(TypeSchema.from_wire(s.to_wire()) for s in ours.schemas(Car))
    return ours, theirs


CAR = Car(
    50.48,
    Gear.D,
    (Wheel(240.0), Wheel(180.5, True)),
    (1, "a"),
    {"x": 1},
    None,
    Gear.P,
    b"\x00\xff",
    [1.5, Gear.R],
)


def test_a_schema_says_every_field_and_the_types_it_reaches() -> None:
    ours, _ = both()
    schemas = {s.name: s for s in ours.schemas(Car)}
    assert set(schemas) == {"test.Car", f"{__name__}.Wheel", f"{__name__}.Gear"}
    car = schemas["test.Car"]
    assert car.fingerprint == ours.fingerprint(Car)
    assert dict(car.fields or ()) == {
        "speed": "float",
        "gear": {"type": f"{__name__}.Gear"},
        "wheels": {"tuple": {"type": f"{__name__}.Wheel"}},
        "fixed": {"tuple": ["int", "str"]},
        "tags": {"dict": "int"},
        "note": {"union": ["str", "none"]},
        "mode": {"literal": ["eco", "sport", {"type": f"{__name__}.Gear", "member": "P"}]},
        "blob": "bytes",
        "extra": "any",
    }
    assert schemas[f"{__name__}.Gear"].members == (("P", "P"), ("D", "D"), ("R", "R"))
    assert schemas[f"{__name__}.Gear"].kind == "enum"
    for schema in schemas.values():
        assert TypeSchema.from_wire(schema.to_wire()) == schema


def test_a_codec_that_learned_the_schemas_reads_and_writes_the_values_as_the_class_does() -> None:
    ours, theirs = both()
    data = ours.encode(CAR)
    value = theirs.decode(data)
    assert isinstance(value, Record)
    assert value.type_name == "test.Car"
    assert value["speed"] == 50.48
    assert value["gear"] == EnumMember(f"{__name__}.Gear", "D")
    assert value["wheels"][1] == Record(f"{__name__}.Wheel", {"pressure": 180.5, "low": True})
    assert value["extra"] == [1.5, EnumMember(f"{__name__}.Gear", "R")]
    assert theirs.encode(value) == data  # byte for byte what the class makes
    assert ours.decode(theirs.encode(value)) == CAR


def test_a_record_made_from_json_like_data_reaches_a_peer_with_the_class_as_the_class() -> None:
    ours, theirs = both()
    gear = f"{__name__}.Gear"
    made = Record(
        "test.Car",
        {  # any order of fields; arrays as lists
            "gear": EnumMember(gear, "R"),
            "speed": 3,
            "wheels": [Record(f"{__name__}.Wheel", {"pressure": 1.0, "low": False})],
            "fixed": [2, "b"],
            "tags": {},
            "note": "n",
            "mode": "eco",
            "blob": b"",
            "extra": None,
        },
    )
    car = ours.decode(theirs.encode(made))
    assert car == Car(3, Gear.R, (Wheel(1.0),), (2, "b"), {}, "n", "eco", b"", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"speed": "fast"}, "test.Car.speed: expected float, got str 'fast'"),
        ({"gear": EnumMember(f"{__name__}.Gear", "X")}, "Gear.X"),
        ({"gear": "D"}, "test.Car.gear: expected tests.test_schema.Gear"),
        ({"fixed": [1]}, "test.Car.fixed: expected an array of 2 items"),
        ({"mode": "race"}, "test.Car.mode: expected one of 'eco', 'sport'"),
        ({"tags": {"a": "b"}}, "test.Car.tags['a']: expected int"),
        ({"wheels": [Record(f"{__name__}.Wheel", {"pressure": 1.0})]}, "Wheel needs the field 'low'"),
        ({"nope": 1}, "test.Car has no field 'nope'"),
    ],
)
def test_a_record_that_does_not_match_its_schema_is_refused_saying_where(
    fields: dict[str, Any], message: str
) -> None:
    _, theirs = both()
    good = theirs.decode(both()[0].encode(CAR))
    assert isinstance(good, Record)
    bad = Record("test.Car", {**good.fields, **fields})
    with pytest.raises(CodecError) as caught:
        theirs.encode(bad)
    assert message.replace("tests.test_schema", __name__) in str(caught.value)


def test_a_peer_with_another_definition_still_fails_loudly() -> None:
    ours, theirs = both()

    @attrs.frozen
    class Car2:
        speed: int  # another definition under the same name

    other = Codec()
    other.register(Car2, name="test.Car")
    with pytest.raises(SchemaMismatchError, match=r"test\.Car: schema fingerprint mismatch"):
        theirs.decode(other.encode(Car2(1)))
    theirs.learn(other.schemas(Car2))  # learning the new one replaces the old
    assert theirs.decode(other.encode(Car2(1))) == Record("test.Car", {"speed": 1})
    ours.learn(other.schemas(Car2))  # a registered class always wins over a learned schema
    with pytest.raises(SchemaMismatchError):
        ours.decode(other.encode(Car2(1)))


def test_unknown_types_are_still_refused_without_a_schema() -> None:
    ours, _ = both()
    with pytest.raises(CodecError, match="unknown type name"):
        Codec().decode(ours.encode(CAR))
    with pytest.raises(CodecError, match="neither registered nor learned"):
        Codec().encode(Record("x.Y", {}))
    with pytest.raises(CodecError, match="neither registered nor learned"):
        Codec().describe("x.Y")


@attrs.frozen
class Node:
    value: int
    children: tuple[Node, ...] = ()


@given(instances_of(Node))
def test_any_value_round_trips_through_a_learned_schema(node: Node) -> None:
    ours = Codec()
    ours.register(Node, name="test.Node")
    theirs = Codec()
    theirs.learn(ours.schemas(Node))
    data = ours.encode(node)
    assert theirs.encode(theirs.decode(data)) == data
    assert ours.decode(theirs.encode(theirs.decode(data))) == node


@given(schema_junk())
def test_a_schema_from_the_wire_is_read_or_refused_with_a_codec_error(junk: object) -> None:
    try:
        schema = TypeSchema.from_wire(junk)
    except CodecError:
        return
    assert TypeSchema.from_wire(schema.to_wire()) == schema


@given(st.integers(min_value=0, max_value=200))
def test_deep_or_large_schemas_are_refused_in_bounded_time(depth: int) -> None:
    expr: Any = "int"
    for _ in range(depth):
        expr = {"list": expr}
    wire = {"name": "x.Deep", "fingerprint": "00", "fields": [["f", expr]]}
    if depth > 32:
        with pytest.raises(CodecError, match="nested more than 32 levels"):
            TypeSchema.from_wire(wire)
    else:
        assert TypeSchema.from_wire(wire).fields == (("f", expr),)
    with pytest.raises(CodecError, match="at most 4096 items"):
        TypeSchema.from_wire({"name": "x", "fingerprint": "0", "fields": [["f", "int"]] * 5000})


# -- TYPES on the wire -------------------------------------------------------------------------------------


def _pair(client_codec: Codec, server_codec: Codec) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, codec=client_codec)
    server = Connection(Role.SERVER, codec=server_codec)
    server.receive_data(client.send([Hello("c")]))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send([Welcome(Permissions.ALL, 1 << 20)]))
    assert isinstance(client.next_event(), Welcome)
    return client, server


def test_the_schemas_go_once_per_connection_before_the_first_value_that_needs_them() -> None:
    ours = Codec()
    ours.register(Car, name="test.Car")
    theirs = Codec()
    client, server = _pair(theirs, ours)
    sample = Sample("Vehicle.Car", CAR, 1.0, 2.0, "p", 1)
    client.receive_data(server.send([Deliver(1, [sample])]))
    events: list[Any] = list(client.events())
    assert [type(e) for e in events] == [Types, Deliver]
    assert {s.name for s in events[0].schemas} == {"test.Car", f"{__name__}.Wheel", f"{__name__}.Gear"}
    got = events[1].samples[0].value
    assert isinstance(got, Record)
    assert got["wheels"][0]["pressure"] == 240.0
    client.receive_data(server.send([Deliver(1, [sample]), Reply(7, Wheel(1.0))]))  # known: no TYPES
    assert [type(e) for e in client.events()] == [Deliver, Reply]
    # A reply's value needs them as much as samples do (the TYPES frame goes before the frame of both).
    other_client, other_server = _pair(Codec(), ours)
    other_client.receive_data(other_server.send([Reply(1, 5)]))  # a plain value needs none
    other_client.receive_data(other_server.send([Reply(1, 5), Reply(2, [Gear.R])]))
    events = list(other_client.events())
    assert [type(e) for e in events] == [Reply, Types, Reply, Reply]
    assert [s.name for s in events[1].schemas] == [f"{__name__}.Gear"]
    assert events[3].result == [EnumMember(f"{__name__}.Gear", "R")]


def test_only_a_server_sends_types_and_a_malformed_one_is_a_protocol_error() -> None:
    client, _ = _pair(Codec(), Codec())
    schema = TypeSchema("x.T", "00", fields=(("a", "int"),))
    with pytest.raises(ProtocolError, match="does not send TYPES"):
        client.send([Types((schema,))])
    raw = Connection(Role.SERVER).codec.encode([[17, [{"name": "x.T", "fingerprint": "0", "fields": 3}]]])
    client.receive_data(len(raw).to_bytes(4, "big") + raw)
    with pytest.raises(ProtocolError, match=r"TYPES.schemas: schema x.T.fields: expected an array"):
        list(client.events())


# -- end to end: a process without the classes ---------------------------------------------------------------

_BROKER = textwrap.dedent(
    """
    import sys, trio, attrs, bus

    @bus.default_codec.register(name="demo.Fuel")
    @attrs.frozen
    class Fuel:
        level: float
        unit: str = "%"

    FUEL = bus.Topic("CAN.demo.Fuel", Fuel)
    STATE = bus.Method("Demo.Fuel.Get", object, Fuel)

    async def main() -> None:
        the_bus = bus.Bus()
        client = the_bus.client("gateway")
        publisher = client.publisher(FUEL)
        seen = client.subscribe("Demo.In")

        async def echo() -> None:  # what a tool publishes comes back as the class it decoded to
            async for sample in seen:
                print("got", type(sample.value).__name__, sample.value, flush=True)

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: bus.serve_unix(
                    the_bus, sys.argv[1], authorize=lambda c, n: bus.Permissions.ALL, task_status=task_status
                )
            )
            async def state(_: object) -> Fuel:
                return Fuel(50.480000000000004)

            nursery.start_soon(client.serve, STATE, state)
            client.declare(bus.Topic("Demo.In", Fuel))
            nursery.start_soon(echo)
            print("ready", flush=True)
            for i in range(100_000):
                await publisher.publish(Fuel(50.0 + i / 100))
                await trio.sleep(0.05)

    trio.run(main)
    """
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A broker process whose bus carries a record type this test process never registered."""
    script = tmp_path / "broker.py"
    script.write_text(_BROKER)
    socket = Path(os.environ.get("TMPDIR", "/tmp")) / f"vwos-schema-{os.getpid()}" / "bus.sock"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert proc.stdout is not None
        wait_for_line(proc.stdout, "ready", timeout=30)
        yield socket, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.timeout(60)
async def test_a_client_without_the_class_reads_calls_and_publishes_records(
    broker: tuple[Path, subprocess.Popen[str]],
) -> None:
    socket, proc = broker
    assert not bus.default_codec.knows("demo.Fuel")
    with trio.fail_after(30):
        async with bus.connect_unix(socket, "tool") as client:
            with client.subscribe("CAN.demo.Fuel") as sub:
                sample = await sub.receive()
            assert isinstance(sample.value, Record)
            assert sample.value.type_name == "demo.Fuel"
            assert sample.value["unit"] == "%"
            reply = await client.call("Demo.Fuel.Get", None)
            assert reply == Record("demo.Fuel", {"level": 50.480000000000004, "unit": "%"})
            await client.publisher("Demo.In").publish(Record("demo.Fuel", {"level": 1.0, "unit": "l"}))
            await client.flush()
    assert proc.stdout is not None
    lines = wait_for_line(proc.stdout, "got Fuel", timeout=10)
    assert [line for line in lines if "got Fuel" in line] == ["got Fuel Fuel(level=1.0, unit='l')\n"]


@pytest.mark.timeout(60)
def test_the_cli_echoes_and_calls_records_it_never_imported(
    broker: tuple[Path, subprocess.Popen[str]],
) -> None:
    socket, _ = broker
    vwos = [sys.executable, "-m", "vwos"]
    echo = subprocess.run(
        [*vwos, "bus", "echo", "CAN.demo.Fuel", "--count", "1", "--socket", str(socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout.startswith("CAN.demo.Fuel = Fuel(level=")
    assert ", unit='%')  (gateway #" in echo.stdout
    call = subprocess.run(
        [*vwos, "bus", "call", "Demo.Fuel.Get", "--socket", str(socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert call.returncode == 0, call.stderr
    assert call.stdout == '{\n  "level": 50.48,\n  "unit": "%"\n}\n'  # at its resolution
    as_json = subprocess.run(
        [*vwos, "bus", "call", "Demo.Fuel.Get", "--json", "--socket", str(socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (
        as_json.stdout
        == '{"method": "Demo.Fuel.Get", "result": {"level": 50.480000000000004, "unit": "%"}}\n'
    )


_OK = {"name": "x.T", "fingerprint": "00"}


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([], "a type schema is a map, got list"),
        ({"name": "", "fingerprint": "0", "fields": []}, "schema.name: expected a non-empty text"),
        ({"name": "x.T", "fingerprint": 5, "fields": []}, "schema x.T: the fingerprint is a text"),
        ({**_OK, "fields": [], "extra": 1}, "schema x.T: unknown keys ['extra']"),
        ({**_OK, "fields": [], "members": []}, "either fields (a record) or members (an enum)"),
        (_OK, "either fields (a record) or members (an enum)"),
        ({**_OK, "members": [["P"]]}, "schema x.T.members[0]: expected [name, value]"),
        ({**_OK, "fields": ["a"]}, "schema x.T.fields[0]: expected [name, type]"),
        ({**_OK, "fields": [["a", "int"], ["a", "str"]]}, "the field 'a' is named twice"),
        ({**_OK, "fields": [["a", "integer"]]}, "schema x.T.a: unknown type 'integer'"),
        ({**_OK, "fields": [["a", {"list": "int", "set": "int"}]]}, "a text or a map of one key"),
        ({**_OK, "fields": [["a", 7]]}, "a text or a map of one key"),
        ({**_OK, "fields": [["a", {"union": []}]]}, "schema x.T.a.union: a union has at least one member"),
        ({**_OK, "fields": [["a", {"optional": "int"}]]}, "unknown type expression 'optional'"),
        ({**_OK, "fields": [["a", {"literal": [[1]]}]]}, "a literal value is a scalar or an enum member"),
        ({**_OK, "fields": [["a", {"type": ""}]]}, "schema x.T.a.type: expected a non-empty text"),
    ],
)
def test_a_malformed_schema_is_refused_saying_where(wire: Any, message: str) -> None:
    with pytest.raises(CodecError) as caught:
        TypeSchema.from_wire(wire)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("expr", "value", "message"),
    [
        ({"type": "x.E"}, 1, "expected x.E, got int 1"),
        ({"union": ["int", "str"]}, 1.5, "expected int | str, got float 1.5"),
        ({"dict": "int"}, [1], "expected a map with text keys"),
        ({"list": "int"}, 3, "expected an array (list[int])"),
        ({"tuple": ["int", "str"]}, [1, 2], "r.f[1]: expected str, got int 2"),
        ({"literal": [1, {"type": "x.E", "member": "A"}]}, 2, "expected one of 1, {'type': 'x.E'"),
        ({"set": {"frozenset": "bool"}}, [[1]], "r.f[0][0]: expected bool, got int 1"),
    ],
)
def test_a_learned_record_checks_each_field_against_its_type(expr: Any, value: Any, message: str) -> None:
    codec = Codec()
    codec.learn([TypeSchema("r", "00", fields=(("f", expr),)), TypeSchema("x.E", "01", members=(("A", 1),))])
    with pytest.raises(CodecError) as caught:
        codec.encode(Record("r", {"f": value}))
    assert message in str(caught.value)
    assert codec.decode(codec.encode(Record("r", {"f": _good(expr)}))) == Record("r", {"f": _good(expr)})


def _good(expr: Any) -> Any:
    """A value of ``expr``, as a decoded learned value reads (arrays as lists)."""
    good = {
        "type": EnumMember("x.E", "A"),
        "union": 1,
        "dict": {"k": 1},
        "list": [1],
        "tuple": [1, "a"],
        "literal": EnumMember("x.E", "A"),
        "set": [[True]],
    }
    return good[next(iter(expr))]


def test_a_learned_enum_member_reads_as_its_name() -> None:
    member = EnumMember("x.E", "A")
    assert (str(member), str(Record("a.b.Fix", {"lat": 1.5}))) == ("A", "Fix(lat=1.5)")
    assert Record("a.b.Fix", {"lat": 1.5}).lat == 1.5
    with pytest.raises(AttributeError, match=r"a\.b\.Fix has no field 'lon'"):
        _ = Record("a.b.Fix", {"lat": 1.5}).lon
