"""The socket protocol's sans-IO state machine: framing, round trips, the handshake, limits, fuzzing."""

from __future__ import annotations

import struct
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import column_batches, mutated_bytes, wire_handshakes, wire_messages

import bus
from bus import Permissions, Sample, Topic
from bus._messages import (
    DEFAULT_MAX_FRAME,
    Call,
    Declare,
    Deliver,
    Error,
    Hello,
    ProtocolError,
    Publish,
    Refused,
    Reply,
    Role,
    Subscribe,
    Types,
    Welcome,
    error_from_exception,
)
from bus._wire import (
    Closed,
    Connection,
)


@bus.default_codec.register(name="test_wire.Point")
@attrs.frozen
class Point:
    x: float
    y: float


def pair(max_frame: int = DEFAULT_MAX_FRAME) -> tuple[Connection, Connection]:
    """A client and a server past the handshake."""
    client, server = (
        Connection(Role.CLIENT, max_frame=max_frame),
        Connection(Role.SERVER, max_frame=max_frame),
    )
    server.receive_data(client.send([Hello("c", max_frame=max_frame)]))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send([Welcome(Permissions.ALL, max_frame)]))
    assert isinstance(client.next_event(), Welcome)
    return client, server


def drain(conn: Connection) -> list[Any]:
    return list(conn.events())


def test_hello_frame_bytes() -> None:
    data = Connection(Role.CLIENT).send([Hello("svc")])
    assert data.hex() == "0000000e8185000363737663f61a00100000"  # the worked example of docs/protocol.md


def test_a_batch_is_one_frame_and_round_trips() -> None:
    client, server = pair()
    messages = [Deliver(1, [Sample("A.b", Point(1.0, float(i)), 1.0, 2.0, "p", i)]) for i in range(100)]
    client.receive_data(server.send(messages[:1]))  # the first carries the TYPES of Point before it
    assert [type(m) for m in drain(client)] == [Types, Deliver]
    data = server.send(messages)
    assert int.from_bytes(data[:4], "big") == len(data) - 4  # one frame
    client.receive_data(data)
    assert drain(client) == messages
    assert type(messages[0].samples[0].value) is Point


def test_batches_and_runs_split_to_fit_the_peer_limit() -> None:
    client, server = pair(max_frame=4096)
    messages = [Deliver(1, [Sample("A.b", "x" * 100, 1.0, 2.0, "p", i)]) for i in range(200)]
    client.receive_data(server.send(messages))
    assert drain(client) == messages
    run = Deliver(1, [Sample("A.b", "x" * 100, 1.0, 2.0, "p", i) for i in range(200)])
    data = server.send([run])
    client.receive_data(data)
    got = drain(client)
    assert len(got) > 1  # one run, split into several SAMPLES messages of whole samples
    assert [s for m in got for s in m.samples] == run.samples
    publish = Publish("A.b", ["y" * 100] * 300, [1.0] * 300)
    server.receive_data(client.send([publish]))
    parts = drain(server)
    assert len(parts) > 1
    assert [v for m in parts for v in m.values] == publish.values
    with pytest.raises(ProtocolError, match="exceeds the peer's frame limit"):
        server.send([Reply(1, b"x" * 5000)])


def test_a_run_travels_as_columns() -> None:
    """A busy topic's run: topic, publisher and bus time once, the first seq, floats packed."""
    client, server = pair()
    run = [Sample("Vehicle.Speed", float(i), 100.0 + i, 5.0, "gw", 41 + i) for i in range(1000)]
    (item,) = cbor2.loads(server.send([Deliver(3, run)])[4:])
    assert item[:3] == [7, 3, "Vehicle.Speed"]
    assert item[3] == struct.pack("<1000d", *(s.value for s in run))
    assert item[4] == struct.pack("<1000d", *(s.timestamp for s in run))
    assert item[5:] == [5.0, "gw", 41]
    mixed: list[Sample[Any]] = [Sample("A.b", 1, 1.0, 2.0, "p", 7), Sample("A.c", "x", 1.5, 2.5, "q", 3)]
    (item,) = cbor2.loads(server.send([Deliver(4, mixed)])[4:])
    assert item[2:] == [["A.b", "A.c"], [1, "x"], struct.pack("<2d", 1.0, 1.5), struct.pack("<2d", 2.0, 2.5),
                        ["p", "q"], [7, 3]]  # fmt: skip
    client.receive_data(server.send([Deliver(3, run), Deliver(4, mixed)]))
    assert drain(client) == [Deliver(3, run), Deliver(4, mixed)]


def test_a_run_may_end_at_the_last_sequence_number() -> None:
    """The last seq of a run, first + n - 1, may be 2**63 - 1 (found by hypothesis: it was refused)."""
    client, server = pair()
    last = 2**63 - 1
    run = [Sample("Vehicle.Speed", float(i), 1.0 + i, 5.0, "gw", last - 2 + i) for i in range(3)]
    client.receive_data(server.send([Deliver(3, run)]))
    assert drain(client) == [Deliver(3, run)]
    past = [
        7,
        3,
        "Vehicle.Speed",
        struct.pack("<3d", 0, 1, 2),
        struct.pack("<3d", 0, 1, 2),
        5.0,
        "gw",
        last - 1,
    ]
    with pytest.raises(ProtocolError, match=r"SAMPLES\.seq"):
        Deliver.from_wire(past)  # its last sample would be 2**63


def test_publish_runs_need_a_timestamp_per_value() -> None:
    with pytest.raises(ValueError, match="as many timestamps as values"):
        Publish("A.b", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        Publish("A.b", [], [])
    with pytest.raises(ValueError, match="at least one"):
        Deliver(1, [])


@settings(max_examples=200)
@given(st.data())
def test_every_message_round_trips(data: st.DataObject) -> None:
    client, server = pair()
    role = data.draw(st.sampled_from(Role))
    messages = data.draw(st.lists(wire_messages(role=role), min_size=1, max_size=5))
    sender, receiver = (client, server) if role is Role.CLIENT else (server, client)
    encoded = sender.send(messages)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    got = []
    for chunk in (encoded[:cut], encoded[cut:]):
        if chunk:  # b"" would mean the end of the stream
            receiver.receive_data(chunk)
            got += drain(receiver)
    # Compare encodings: values may hold NaN (never equal to itself); a value's encoding is what must survive.
    assert [type(m) for m in got] == [type(m) for m in messages]
    encode = bus.default_codec.encode
    assert encode([m.to_wire() for m in got]) == encode([m.to_wire() for m in messages])


@given(wire_handshakes())
def test_handshake_round_trips(handshake: tuple[Hello, Welcome]) -> None:
    hello, welcome = handshake
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send([hello]))
    assert server.next_event() == hello
    assert server.peer_max_frame == hello.max_frame
    client.receive_data(server.send([welcome]))
    assert client.next_event() == welcome
    assert client.open


def test_declare_carries_a_topic() -> None:
    topic = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400, max_age=0.5, description="speed")
    assert Declare.from_topic(topic).to_topic() == topic
    typed = Topic("Vehicle.Pos", Point)
    assert Declare.from_topic(typed).to_topic() == typed

    class Unregistered:
        pass

    with pytest.raises(bus.CodecError, match="not registered"):
        Declare.from_topic(Topic("A.b", Unregistered))
    with pytest.raises(bus.TopicError, match="unknown type"):
        Declare("A.b", "nowhere.Type").to_topic()


def test_errors_travel_typed() -> None:
    for exc in [
        bus.PermissionDeniedError("c", "publish", "A.b"),
        bus.ValueRefusedError("A.b", "above max 4", 5),
        bus.UnknownTopicError("A.b"),
        bus.StaleValueError("A.b", 2.0, 1.0),
        bus.NoSuchMethodError("M.x"),
        bus.MethodAlreadyServedError("M.x", "s"),
        bus.RemoteError("M.x", "KeyError", "k"),
        bus.CallTimeoutError("M.x", 1.5),
        bus.TopicError("bad"),
    ]:
        client, server = pair()
        client.receive_data(server.send([error_from_exception(7, exc)]))
        (message,) = drain(client)
        again = message.to_exception()
        assert type(again) is type(exc)
        assert str(again) == str(exc)
    assert type(Error(None, "future", "X", "m", []).to_exception()) is bus.BusError


def test_handshake_rules() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    with pytest.raises(ProtocolError, match="send HELLO before"):
        client.send([Publish("A.b", [1], [1.0])])
    server.receive_data(Connection(Role.CLIENT).send([Hello("x")]))
    assert isinstance(server.next_event(), Hello)
    with pytest.raises(ProtocolError, match="send WELCOME or REFUSED before"):
        server.send([Reply(1, None)])
    refused = server.send([Refused("no")])
    client.send([Hello("x")])
    client.receive_data(refused)
    assert client.next_event() == Refused("no")
    assert not client.open


_HELLO = Hello("x")
_WELCOME = Welcome(Permissions.ALL)
_PUBLISH = Publish("A.b", [1], [1.0])
_SAMPLES = Deliver(1, [Sample("A.b", 1, 1.0, 1.0, "p", 1)])


def _wire(message: Any) -> bytes:
    body = cbor2.dumps([message.to_wire()])
    return len(body).to_bytes(4, "big") + body


def _fed(conn: Connection, message: Any) -> None:
    """``conn`` receives ``message`` (framed by hand: the sender's rules are not asked)."""
    conn.receive_data(_wire(message))
    assert conn.next_event() == message


# Each rule of the handshake (bus/_state.py's table and its two rules linking the ends), as the end
# that finds it words it: (role, the messages sent or received first, in order, then the one that
# breaks a rule, sent (True) or received, and the error).
_RULES: list[tuple[Role, list[Any], Any, bool, str]] = [
    (Role.CLIENT, [], _PUBLISH, True, "send HELLO before PUBLISH"),
    (Role.CLIENT, [_HELLO], _HELLO, True, "HELLO was sent already"),
    (Role.SERVER, [], _PUBLISH, False, "expected HELLO first, got PUBLISH"),
    (Role.SERVER, [], Error(None, "bus", "BusError", "m"), False, "expected HELLO first, got ERROR"),
    (Role.SERVER, [_HELLO], _HELLO, False, "a second HELLO"),
    (Role.SERVER, [_HELLO], _PUBLISH, False, "PUBLISH received before WELCOME: wait for the server's answer"),
    (Role.SERVER, [_HELLO], Reply(1), True, "send WELCOME or REFUSED before REPLY"),
    (Role.SERVER, [], _WELCOME, True, "cannot send WELCOME before the client's HELLO"),
    (Role.SERVER, [], Refused("no"), True, "cannot send REFUSED before the client's HELLO"),
    (Role.SERVER, [_HELLO, _WELCOME], Refused("no"), True, "cannot send REFUSED: the handshake is over"),
    (Role.SERVER, [_HELLO, Refused("no")], Reply(1), True, "cannot send REPLY: the connection was refused"),
    (Role.SERVER, [_HELLO, Refused("no")], _PUBLISH, False, "PUBLISH received after REFUSED"),
    (Role.CLIENT, [_HELLO], _SAMPLES, False, "expected WELCOME or REFUSED first, got SAMPLES"),
    (Role.CLIENT, [_HELLO, _WELCOME], _WELCOME, False, "WELCOME received after the handshake"),
    (Role.CLIENT, [_HELLO, Refused("no")], _PUBLISH, True, "cannot send PUBLISH: the connection was refused"),
    (Role.CLIENT, [_HELLO, Refused("no")], _WELCOME, False, "WELCOME received after REFUSED"),
]


@pytest.mark.parametrize(("role", "before", "message", "sending", "error"), _RULES)
def test_every_handshake_rule(role: Role, before: list[Any], message: Any, sending: bool, error: str) -> None:
    conn = Connection(role)
    for earlier in before:
        if role in earlier.SENT_BY:
            conn.send([earlier])
        else:
            _fed(conn, earlier)
    states = dict(conn.state.states)
    if not sending:
        conn.receive_data(_wire(message))
    with pytest.raises(ProtocolError) as raised:
        conn.send([message]) if sending else conn.next_event()
    assert str(raised.value) == error
    if sending:
        assert conn.state.states == states  # a refused message moves no state


def test_what_may_flow_before_the_answer() -> None:
    """An ERROR flows before the server's answer (its reason for closing); a client's requests may follow
    its HELLO at once, and a server reads them once it has answered."""
    server = Connection(Role.SERVER)
    server.send([Error(None, "protocol", "ProtocolError", "bye")])
    client = Connection(Role.CLIENT)
    _fed(client, Error(None, "protocol", "ProtocolError", "bye"))
    assert not client.open
    server = Connection(Role.SERVER)
    server.receive_data(client.send([_HELLO, _PUBLISH]))
    assert server.next_event() == _HELLO
    server.send([_WELCOME])
    assert server.next_event() == _PUBLISH
    assert server.open


def test_version_is_checked_first() -> None:
    server = Connection(Role.SERVER)
    body = cbor2.dumps([[0, 4, "a", "future", "fields", 1]])
    server.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="unsupported protocol version 4; this peer speaks version 3"):
        server.next_event()
    with pytest.raises(ProtocolError):  # stays broken
        server.next_event()


def _frame(item: object) -> bytes:
    body = cbor2.dumps(item)
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x20\x00\x01", "exceeds the limit"),
        (b"\x00\x00\x00\x00", "empty frame"),
        (b"\x00\x00\x00\x02\xff\xff", "undecodable frame"),
        (_frame({"a": 1}), "non-empty CBOR array of messages"),
        (_frame([]), "non-empty CBOR array of messages"),
        (_frame([5]), "a message is a non-empty CBOR array"),
        (_frame([[99]]), "unknown operation"),
        (_frame([["publish"]]), "unknown operation"),
        (_frame([[3, "A.b"]]), "expected 4 or 5 items"),
        (_frame([[3, "A.b", [1], b"\0" * 8, 1]]), "PUBLISH.wait: expected a bool"),
        (_frame([[3, 5, [1], b"\0" * 8]]), "PUBLISH.topic: expected a text string"),
        (_frame([[3, "A.b", [], b""]]), "PUBLISH.values: expected a non-empty array"),
        (
            _frame([[3, "A.b", b"\0" * 7, b""]]),
            "PUBLISH.values: expected a non-empty array of values, or packed",
        ),
        (
            _frame([[3, "A.b", [1, 2], b"\0" * 8]]),
            r"PUBLISH.timestamps: expected 2 packed doubles \(16 bytes\)",
        ),
        (_frame([[3, "A.b", [1], ["now"]]]), "PUBLISH.timestamps: expected 1 numbers"),
        (_frame([[3, "A.b", [1], [True]]]), "PUBLISH.timestamps: expected 1 numbers"),
        (_frame([[7, 1, "A", [1], [1.0], 1.0, "p", 1]]), "a client does not send SAMPLES"),
        (_frame([[5, -1, "A", None, None, False]]), "SUBSCRIBE.sub_id"),
        (_frame([[5, 1, "A", 0, None, False]]), "SUBSCRIBE.queue_size"),
        (_frame([[5, 1, "A", None, "sometimes", False]]), "SUBSCRIBE.overflow"),
        (_frame([[0, 3, "x", None, 1 << 20]]), "a second HELLO"),
        (_frame([[4, {"name": "A"}]]), "'name' and 'type' are required"),
        (_frame([[1, 3, {}, 1 << 20]]), "a client does not send WELCOME"),
    ],
)
def test_malformed_input_raises_protocol_error(data: bytes, match: str) -> None:
    _, server = pair()
    server.receive_data(data)
    with pytest.raises(ProtocolError, match=match):
        drain(server)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([0], r"^HELLO message: expected \[0, version, name, permissions, max_frame\]$"),
        ([0, "3"], r"^HELLO\.version: expected an int protocol version, got str '3'$"),
        ([0, 3, "x"], r"^HELLO message: expected 5 items .*, got 3$"),
        (
            [0, 3, "x", None, 100],
            r"^HELLO\.max_frame: expected a frame limit \(an int from 1024 to 2\*\*32-1\)",
        ),
        (
            [0, 3, "x", [], 1 << 20],
            r"^HELLO\.permissions: expected a map of permission lists, got list \[\]$",
        ),
        ([0, 3, "x", {"fly": []}, 1 << 20], r"^HELLO\.permissions: unknown actions \['fly'\]; known: "),
        (
            [0, 3, "x", {"publish": "A"}, 1 << 20],
            r"^HELLO\.permissions\.publish: expected a list of text patterns, got str 'A'$",
        ),
    ],
)
def test_a_malformed_hello_is_a_protocol_error_naming_the_field(items: list[Any], match: str) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(_frame([items]))
    with pytest.raises(ProtocolError, match=match):
        drain(server)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([1], r"^WELCOME message: expected \[1, version, permissions, max_frame\]$"),
        ([1, 3, {}], r"^WELCOME message: expected 4 items \[1, version, permissions, max_frame\], got 3$"),
        ([1, 3, {}, 1 << 20, 5], r"^WELCOME message: expected 4 items .*, got 5$"),
    ],
)
def test_a_malformed_welcome_is_a_protocol_error(items: list[Any], match: str) -> None:
    client = Connection(Role.CLIENT)
    client.send([Hello("c")])
    client.receive_data(_frame([items]))
    with pytest.raises(ProtocolError, match=match):
        drain(client)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([7, 1, "A", [1]], r"^SAMPLES message: expected 8 items .*, got 4$"),
        (
            [7, 1, "A", [1], [1.0], 1.0, ["p", "q"], 1],
            r"^SAMPLES\.publisher: expected a text, or an array of 1 texts, got list \['p', 'q'\]$",
        ),
        ([7, 1, "A", [1], [1.0], 1.0, "p", "1"], r"^SAMPLES\.seq: expected the first sequence number"),
    ],
)
def test_malformed_samples_from_the_server_are_a_protocol_error(items: list[Any], match: str) -> None:
    client, _ = pair()
    client.receive_data(_frame([items]))
    with pytest.raises(ProtocolError, match=match):
        drain(client)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([4], r"^DECLARE message: expected 2 items \[4, topic\], got 1$"),
        ([4, "x"], r"^DECLARE\.topic: expected a map, got str 'x'$"),
        ([3, "A.b", [1], [None]], r"^PUBLISH\.timestamps: expected 1 numbers"),
        ([8, 1, "M", 1, None], r"^GET message: expected 4 items \[op, id, topic, allow_stale\], got 5$"),
    ],
)
def test_malformed_requests_from_a_client_name_the_message(items: list[Any], match: str) -> None:
    _, server = pair()
    server.receive_data(_frame([items]))
    with pytest.raises(ProtocolError, match=match):
        drain(server)


def test_integer_timestamps_arrive_as_floats() -> None:
    _, server = pair()
    server.receive_data(_frame([[3, "A.b", [1, 2], [1, 2.5]]]))
    (publish,) = drain(server)
    assert publish.timestamps == [1.0, 2.5]
    assert [type(t) for t in publish.timestamps] == [float, float]


def test_size_checked_before_the_body_arrives() -> None:
    _, server = pair(max_frame=2048)
    server.receive_data((4096).to_bytes(4, "big"))  # only the prefix: the body never needs buffering
    with pytest.raises(ProtocolError, match="4096 bytes exceeds the limit of 2048"):
        server.next_event()


def test_truncated_and_clean_ends() -> None:
    client, server = pair()
    data = client.send([Publish("A.b", [1.0], [1.0])])
    server.receive_data(data[:-1])
    assert server.next_event() is None
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="truncated frame"):
        server.next_event()
    client2, server2 = pair()
    server2.receive_data(client2.send([Publish("A.b", [1.0], [1.0])]) + b"")
    server2.receive_data(b"")
    assert drain(server2) == [Publish("A.b", [1.0], [1.0]), Closed()]


def test_schema_mismatch_is_a_protocol_error() -> None:
    _, server = pair()
    server.receive_data(
        _frame([[3, "A.b", cbor2.CBORTag(27, ["test_wire.Point", "0" * 16, [1.0, 2.0]]), None]])
    )
    with pytest.raises(ProtocolError, match="fingerprint mismatch"):
        server.next_event()


def test_subscribe_and_call_shapes() -> None:
    client, server = pair()
    messages: list[Subscribe | Call] = [
        Subscribe(3, "Vehicle.**", 10, "latest", True),
        Call(4, "M.x", [1, 2]),
    ]
    server.receive_data(client.send(messages))
    assert drain(server) == messages


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=1, max_value=50), max_size=10))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    for role in Role:
        conn = Connection(role, max_frame=1024)
        _feed(conn, data, cuts)


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_frames(data: st.DataObject) -> None:
    client, server = pair()
    role = data.draw(st.sampled_from(Role))  # PUBLISH runs to the broker, SAMPLES to a client, ...
    sender, receiver = (client, server) if role is Role.CLIENT else (server, client)
    messages = data.draw(st.lists(wire_messages(role=role), min_size=1, max_size=3))
    valid = sender.send(messages)
    damaged = data.draw(mutated_bytes(valid))
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=64), max_size=8))
    _feed(receiver, damaged, cuts)


def _feed(conn: Connection, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in chunks: only valid events or ProtocolError may come out."""
    chunks = []
    rest = data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            for event in conn.events():
                assert isinstance(event, Closed) or hasattr(event, "OP")
                assert len(conn._buffer) <= conn.max_frame + 4 + max(len(c) for c in chunks)
    except ProtocolError as exc:
        message = str(exc)
        assert message  # a clear message, never an empty one


def test_publish_bytes() -> None:
    """The second worked example of docs/protocol.md: a float and its timestamp, each one packed double."""
    message = Publish("Vehicle.Speed", [87.5], [1700000000.25])
    expected = (
        "84 03 6d 56 65 68 69 63 6c 65 2e 53 70 65 65 64 "
        + "48 00 00 00 00 00 e0 55 40 48 00 00 10 40 fc 54 d9 41"
    )
    assert bus.default_codec.encode(message.to_wire()).hex(" ") == expected


@given(column_batches())
def test_runs_queued_as_columns_go_on_the_wire_as_their_samples_would(entries: list[Any]) -> None:
    """A broker forwards runs without building their samples: the SAMPLES it writes is byte for byte the
    one the built samples give, and reads back as them."""
    from bus._sample import SampleColumns, SampleRun

    built = [s for e in entries for s in (e.samples() if isinstance(e, SampleRun) else [e])]
    columns = SampleColumns(entries, len(built))
    assert list(columns) == built or repr(list(columns)) == repr(built)  # NaN != NaN
    fast, slow = Deliver(3, columns).to_wire(), Deliver(3, built).to_wire()
    codec = bus.default_codec
    assert codec.encode(fast) == codec.encode(slow)
    back = Deliver.from_wire(codec.decode(codec.encode(fast)))  # type: ignore[arg-type]
    assert repr(back.samples) == repr(
        [s._replace(bus_time=float(s.bus_time)) for s in built]
    )  # read as float


def test_a_subscribe_of_several_patterns_travels_as_an_array_and_one_as_a_text() -> None:
    client, server = pair()
    several = Subscribe(1, ["Vehicle.Speed", "Body.**"], None, None, False)
    one = Subscribe(2, "Vehicle.Speed")
    server.receive_data(client.send([several, one]))
    assert drain(server) == [several, one]
    assert cbor2.loads(client.send([one])[4:])[0][2] == "Vehicle.Speed"  # as an older broker reads it


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ([], "SUBSCRIBE.pattern: expected a text string, or a non-empty array of them"),
        (["A.b", 7], "SUBSCRIBE.pattern: expected a text string, or a non-empty array of them"),
        ([f"A.b{i}" for i in range(257)], "257 names and patterns; a subscription takes at most 256"),
    ],
)
def test_a_bad_list_of_patterns_is_a_protocol_error(pattern: list[Any], match: str) -> None:
    _, server = pair()
    server.receive_data(_frame([[5, 1, pattern, None, None, False]]))
    with pytest.raises(ProtocolError, match=match):
        drain(server)
