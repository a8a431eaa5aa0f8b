"""The codec's compiled decoders (services/can/_compiled.py) decode as cantools does: every signal's raw
value as cantools unpacks it alone, then checked and scaled as docs/can.md says (not available where the
database marks the raw value so or it lies outside the declared range), on every message of
``../shared/dbc/vw_mqb.dbc`` and ``../shared/kuksa/Model3CAN.dbc`` and of small nasty databases written
here (Motorola, signed, 1-bit, 64-bit, floating point, odd start bits and lengths, multiplexed, CAN FD 64
bytes, overlapping signals); and exactly as the codec's general path does, counters included."""

from __future__ import annotations

import copy
import decimal
import math
import random
import time
from pathlib import Path
from typing import Any

import attrs
import cantools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import can_message_payloads

from bus import Codec, NotAvailable
from services.can import CanCodec, FrameError, SignalMapping, load_database
from services.can._codec import not_available_values

SHARED = Path(__file__).resolve().parents[2] / "shared"
VW_MQB = SHARED / "dbc" / "vw_mqb.dbc"
MODEL3 = SHARED / "kuksa" / "Model3CAN.dbc"

HEADER = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU GW\n\n'

#: One message per nasty layout. Motorola start bits are the most significant bit, numbered as DBC does.
NASTY = """\
BO_ 256 Mixed: 8 ECU
 SG_ OneBit : 0|1@1+ (1,0) [0|1] "" GW
 SG_ OneBitSigned : 1|1@1- (1,0) [0|0] "" GW
 SG_ IntelSigned : 2|13@1- (0.5,-10) [-100|100] "" GW
 SG_ MotorolaOdd : 23|12@0+ (0.1,0) [0|300] "km/h" GW
 SG_ MotorolaSigned : 27|7@0- (1,0) [-50|50] "" GW
 SG_ NegativeScale : 41|5@1+ (-2,100) [10|90] "" GW
 SG_ Sna : 46|2@1+ (1,0) [0|3] "" GW
 SG_ MotorolaWord : 55|16@0- (0.01,0) [-300|300] "bar" GW

BO_ 257 Wide: 8 ECU
 SG_ Unsigned64 : 0|64@1+ (1,0) [0|0] "" GW

BO_ 258 WideMotorola: 8 ECU
 SG_ Signed64 : 7|64@0- (1,0) [0|0] "" GW

BO_ 259 Floats: 8 ECU
 SG_ Single : 0|32@1- (1,0) [-1000|1000] "" GW
 SG_ SingleMotorola : 39|32@0- (2,1) [0|0] "" GW

BO_ 260 Double: 8 ECU
 SG_ Plain : 0|64@1- (1,0) [0|0] "" GW

BO_ 261 Paged: 8 ECU
 SG_ Page M : 0|4@1+ (1,0) [0|15] "" GW
 SG_ Byte m0 : 8|8@1+ (1,0) [0|200] "" GW
 SG_ Word m1 : 8|16@1- (0.1,0) [-1000|1000] "" GW
 SG_ Extra m1 : 24|8@1+ (1,0) [0|255] "" GW
 SG_ Moto m2 : 15|12@0+ (1,0) [0|4000] "" GW
 SG_ Always : 56|8@1+ (1,0) [0|200] "" GW

BO_ 262 Long: 64 ECU
 SG_ First : 0|8@1+ (1,0) [0|255] "" GW
 SG_ Middle : 263|20@0- (0.5,0) [-1000|1000] "" GW
 SG_ Far : 300|64@1+ (1,0) [0|0] "" GW
 SG_ Last : 504|8@1+ (1,0) [0|254] "" GW

BO_ 263 Short: 5 ECU
 SG_ Across : 3|30@1+ (0.001,0) [0|1000000] "" GW
 SG_ Top : 39|3@0+ (1,0) [0|7] "" GW

BO_ 264 Overlap: 8 ECU
 SG_ Whole : 0|16@1+ (1,0) [0|65535] "" GW
 SG_ Half : 8|16@1+ (1,0) [0|60000] "" GW

BA_DEF_ SG_ "GenSigSNA" STRING ;
BA_DEF_DEF_ "GenSigSNA" "";
BA_ "GenSigSNA" SG_ 256 NegativeScale "1Fh";
VAL_ 256 Sna 3 "SNA" ;
VAL_ 261 Always 255 "Init" ;
SIG_VALTYPE_ 259 Single : 1;
SIG_VALTYPE_ 259 SingleMotorola : 1;
SIG_VALTYPE_ 260 Plain : 2;
"""


def _nasty(tmp_path: Path) -> CanCodec:
    path = tmp_path / "nasty.dbc"
    path.write_text(HEADER + NASTY)
    return CanCodec(load_database(path, strict=False), "nasty", codec=Codec())


CODECS: dict[str, CanCodec] = {}


def real(name: str) -> CanCodec:
    if not CODECS:
        CODECS["vw_mqb"] = CanCodec(load_database(VW_MQB, strict=False), "mqb", codec=Codec())
        CODECS["Model3CAN"] = CanCodec(load_database(MODEL3), "model3", codec=Codec())
    return CODECS[name]


# -- the oracle: cantools decodes each signal alone ------------------------------------------------------


def _alone(message: Any, signal: Any) -> Any:
    """A cantools message of ``signal`` alone (as a plain signal): cantools unpacks its raw value."""
    single = copy.copy(signal)
    single.is_multiplexer = False
    single.multiplexer_ids = None
    single.multiplexer_signal = None
    return cantools.database.can.Message(
        frame_id=message.frame_id,
        name=message.name,
        length=message.length,
        signals=[single],
        is_extended_frame=message.is_extended_frame,
        strict=False,
    )


def _dec(value: float) -> decimal.Decimal:
    return decimal.Decimal(value) if isinstance(value, int) else decimal.Decimal(repr(float(value)))


def _in_declared_range(signal: Any, raw: int) -> bool:
    """Whether the raw value scales into [minimum, maximum], computed exactly (a range declared upside down
    counts as none)."""
    low, high = signal.minimum, signal.maximum
    if low is not None and high is not None and low > high:
        return True
    value = decimal.Decimal(raw) * _dec(signal.scale) + _dec(signal.offset)
    return (low is None or value >= _dec(low)) and (high is None or value <= _dec(high))


def expected(message: Any, data: bytes) -> list[Any]:
    """What each signal of a frame should decode to, in the message's signal order: None where its
    multiplexer leaves it out, `NotAvailable` where docs/can.md says so, else its scaled value."""
    out: list[Any] = []
    raws = {
        s.name: _alone(message, s).decode(data, decode_choices=False, scaling=False)[s.name]
        for s in message.signals
    }
    for signal in message.signals:
        if signal.multiplexer_signal is not None and raws[signal.multiplexer_signal] not in (
            signal.multiplexer_ids or ()
        ):
            out.append(None)
            continue
        raw = raws[signal.name]
        plain = signal.scale == 1 and signal.offset == 0 and signal.minimum is None and signal.maximum is None
        if signal.is_float:
            if plain:
                out.append(raw)
            elif raw != raw:
                out.append(NotAvailable("not_available"))
            else:
                value = raw * signal.scale + signal.offset
                low = -math.inf if signal.minimum is None else signal.minimum
                high = math.inf if signal.maximum is None else signal.maximum
                out.append(value if low <= value <= high else NotAvailable("out_of_range"))
        elif raw in not_available_values(signal):
            out.append(NotAvailable("not_available"))
        elif not _in_declared_range(signal, raw):
            out.append(NotAvailable("out_of_range"))
        else:
            out.append(signal.conversion.raw_to_scaled(raw, False))
    return out


def _agree(got: Any, want: Any, signal: Any) -> bool:
    if want is None or isinstance(want, NotAvailable):
        return bool(got == want)
    if isinstance(want, float) and want != want:
        return isinstance(got, float) and got != got
    if signal.is_float or not (float(signal.scale).is_integer() and float(signal.offset).is_integer()):
        if type(got) is not float:
            return False
    elif type(got) is not int:
        return False
    # our value is kept inside the declared range where the scaling's rounding would leave it
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=abs(signal.scale) * 1e-9)


def check_frame(codec: CanCodec, message: Any, data: bytes) -> None:
    route = codec._routes[message.frame_id | (1 << 31) if message.is_extended_frame else message.frame_id]
    assert route.compiled is not None, f"{message.name} has no compiled decoder"
    ((_, record),) = codec.decode(message.frame_id, data, bool(message.is_extended_frame))
    fields = [getattr(record, f.name) for f in attrs.fields(type(record))]
    for signal, got, want in zip(message.signals, fields, expected(message, data), strict=True):
        assert _agree(got, want, signal), (message.name, signal.name, data.hex(), got, want)
    general = codec._general(route, data, [0, 0, 0])
    assert general == [(route.topic, record)] or _nan_equal(general[0][1], record)


def _nan_equal(a: Any, b: Any) -> bool:
    left, right = attrs.astuple(a), attrs.astuple(b)
    return all(x == y or (x != x and y != y) for x, y in zip(left, right, strict=True))


# -- tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vw_mqb", "Model3CAN"])
def test_every_message_of_the_real_databases_has_a_compiled_decoder(name: str) -> None:
    codec = real(name)
    missing = [r.what for r in codec._routes.values() if r.compiled is None]
    assert missing == []


@pytest.mark.parametrize("name", ["vw_mqb", "Model3CAN"])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_real_databases_decode_as_cantools_decodes_each_signal(name: str, data: Any) -> None:
    codec = real(name)
    message = data.draw(st.sampled_from(list(codec.messages())))
    check_frame(codec, message, data.draw(can_message_payloads(message)))


@pytest.mark.parametrize("name", ["vw_mqb", "Model3CAN"])
def test_every_message_of_the_real_databases_decodes_as_cantools(name: str) -> None:
    """Every message, not only those hypothesis draws: all bits clear, all set, and random payloads."""
    codec = real(name)
    rng = random.Random(name)
    for message in codec.messages():
        for data in (bytes(message.length), b"\xff" * message.length, rng.randbytes(message.length)):
            check_frame(codec, message, data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_nasty_layouts_decode_as_cantools_decodes_each_signal(tmp_path: Path, data: Any) -> None:
    codec = _nasty(tmp_path)
    message = data.draw(st.sampled_from(list(codec.messages())))
    check_frame(codec, message, data.draw(can_message_payloads(message)))


def test_every_nasty_layout_is_compiled_and_decodes_its_edges(tmp_path: Path) -> None:
    codec = _nasty(tmp_path)
    assert [r.what for r in codec._routes.values() if r.compiled is None] == []
    for message in codec.messages():
        for data in (bytes(message.length), b"\xff" * message.length, b"\x80" * message.length):
            check_frame(codec, message, data)


def test_nasty_values_by_hand(tmp_path: Path) -> None:
    """A few values worked out by hand, against both the compiled and cantools' bit layouts."""
    codec = _nasty(tmp_path)
    ((_, wide),) = codec.decode(257, b"\xff" * 8, False)
    assert wide.Unsigned64 == 2**64 - 1
    ((_, motorola),) = codec.decode(258, b"\x80" + bytes(7), False)
    assert motorola.Signed64 == -(2**63)
    ((_, mixed),) = codec.decode(256, b"\x02" + bytes(4) + b"\x3e\xff\xff", False)
    assert mixed.OneBitSigned == -1  # one signed bit set is -1
    assert mixed.NegativeScale == NotAvailable("not_available")  # raw 0x1F: its GenSigSNA
    assert mixed.MotorolaWord == -0.01
    ((_, short),) = codec.decode(263, b"\x00\x00\x00\x00\xe0", False)
    assert (short.Top, short.Across) == (7, 0.0)
    ((_, paged),) = codec.decode(261, b"\x01\x9c\xff\x07" + bytes(3) + b"\xff", False)
    assert (paged.Page, paged.Byte, paged.Word, paged.Extra, paged.Moto) == (1, None, -10.0, 7, None)
    assert paged.Always == NotAvailable("not_available")  # 255 "Init" of a physical signal
    unknown = codec.statistics().unknown_multiplexer
    ((_, nowhere),) = codec.decode(261, b"\x0f" + bytes(7), False)
    assert (nowhere.Byte, nowhere.Word, nowhere.Moto, nowhere.Always) == (None, None, None, 0)
    assert codec.statistics().unknown_multiplexer == unknown + 1


def test_mapped_signals_and_counters_agree_with_the_general_path(tmp_path: Path) -> None:
    path = tmp_path / "nasty.dbc"
    path.write_text(HEADER + NASTY)
    mappings = [
        SignalMapping(signal="Mixed.MotorolaOdd", topic="Vehicle.Speed", scale=2.0),
        SignalMapping(signal="Paged.Word", topic="Vehicle.Word", type="int"),
        SignalMapping(signal="Mixed.OneBit", topic="Vehicle.Flag", type="bool"),
    ]
    fast = CanCodec(load_database(path, strict=False), "fast", codec=Codec(), mappings=mappings)
    slow = CanCodec(load_database(path, strict=False), "slow", codec=Codec(), mappings=mappings)
    for route in slow._routes.values():
        route.compiled = None  # the general path only
    assert all(route.compiled is not None for route in fast._routes.values())
    rng = random.Random(7)
    for _ in range(300):
        message = rng.choice(list(fast.messages()))
        data = rng.randbytes(message.length)
        got = fast.decode(message.frame_id, data, False)
        want = slow.decode(message.frame_id, data, False)
        assert [t.name.split(".", 2)[-1] for t, _ in got] == [t.name.split(".", 2)[-1] for t, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert a == b or (attrs.has(type(a)) and _nan_equal(a, b)) or (a != a and b != b)
    assert fast.statistics() == slow.statistics()
    assert fast.statistics().out_of_range > 0
    assert fast.statistics().not_available > 0


@pytest.mark.parametrize("data", [[0] * 8, "abcdefgh", memoryview(bytes(8))])
def test_payloads_of_other_types_are_undecodable_as_before(tmp_path: Path, data: Any) -> None:
    """Only bytes and bytearray take the compiled decoder (a list of ints would read as bytes there); the
    general path finds the others undecodable (a memoryview too: cantools reverses it), as before."""
    codec = _nasty(tmp_path)
    with pytest.raises(FrameError) as info:
        codec.decode(256, data, False)
    assert info.value.kind == "undecodable"


def test_a_given_record_class_is_made_through_its_own_init(tmp_path: Path) -> None:
    """A record class given to the codec (a `vwos can gen` module's) may do more in ``__init__`` than set
    its fields: the compiled decoder calls it, where it sets the fields of the codec's own classes itself."""
    made = _nasty(tmp_path)
    own = type(made.decode(256, bytes(8), False)[0][1])
    calls: list[Any] = []

    class Base:
        def __attrs_post_init__(self) -> None:
            calls.append(self)

    fields = {f.name: attrs.field(type=f.type) for f in attrs.fields(own)}
    given = attrs.make_class("Mixed", fields, bases=(Base,), frozen=True, slots=True)
    path = tmp_path / "nasty.dbc"
    codec = CanCodec(load_database(path, strict=False), "given", codec=Codec(), records={"Mixed": given})
    assert codec._routes[256].compiled is not None
    calls.clear()
    ((_, record),) = codec.decode(256, bytes(8), False)
    assert type(record) is given
    assert calls == [record]


def test_a_message_of_thousands_of_overlapping_signals_builds_quickly(tmp_path: Path) -> None:
    """``strict = false`` lets signals share bits without limit: 2,000 of them in one 64-byte message (each
    of 1 to 13 bits, half Motorola, some signed) make a codec in seconds (the groups cantools can unpack
    used to be found by trial, minutes), and every signal decodes as cantools decodes it alone."""
    lines = [
        f' SG_ S{i} : {i % 500}|{1 + i % 13}@{i % 2}{"-" if i % 3 == 0 else "+"} (0.5,1) [0|100] "" GW'
        for i in range(2000)
    ]
    path = tmp_path / "many.dbc"
    path.write_text(HEADER + "BO_ 300 Many: 64 ECU\n" + "\n".join(lines) + "\n")
    db = load_database(path, strict=False)
    start = time.perf_counter()
    codec = CanCodec(db, "many", codec=Codec())
    assert time.perf_counter() - start < 10.0
    message = db.get_message_by_name("Many")
    check_frame(codec, message, bytes(range(64)))
    check_frame(codec, message, random.Random(3).randbytes(64))
