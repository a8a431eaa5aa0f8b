"""Real CAN databases load and decode: one small nasty database per fault class real exports have, written
here, and random payloads for every message of ``../shared/dbc/vw_mqb.dbc`` and
``../shared/kuksa/Model3CAN.dbc`` through `CanCodec.decode`."""

from __future__ import annotations

import math
import random
import time
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import can
import cantools
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import can_frames, can_payloads
from test_can_gateway import Link, gateway_on, status

from bus import Codec, NotAvailable
from services.can import (
    CanCodec,
    CanDatabaseError,
    CodecStatistics,
    EncodeError,
    FrameError,
    FrameView,
    GatewayConfig,
    SignalMapping,
    load_database,
)
from services.can._codec import not_available_values
from services.can._database import database_warnings
from vwos import ServiceSpec
from vwos.testing import open_harness

SHARED = Path(__file__).resolve().parents[2] / "shared"
VW_MQB = SHARED / "dbc" / "vw_mqb.dbc"
MODEL3 = SHARED / "kuksa" / "Model3CAN.dbc"

HEADER = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU GW\n\n'


def write_dbc(tmp_path: Path, body: str, *, name: str = "nasty.dbc", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes((HEADER + body).encode(encoding))
    return path


def codec_of(db: Any, network: str = "t") -> CanCodec:
    return CanCodec(db, network, codec=Codec())


def record_of(codec: CanCodec, frame_id: int, data: bytes, extended: bool | None = None) -> Any:
    pairs = codec.decode(frame_id, data, extended)
    assert pairs[0][0].name.startswith(f"CAN.{codec.network}.")
    return pairs[0][1]


# -- loading: ids above 0x7FF without the extended flag ---------------------------------------------------

UNFLAGGED = """\
BO_ 419361024 Engine: 8 ECU
 SG_ Temp : 0|8@1+ (1,-40) [-40|210] "degC" GW
 SG_ Load : 8|8@1+ (0.5,0) [0|100] "%" GW
 SG_ Torque : 32|32@1- (1,0) [0|0] "Nm" GW

BO_ 256 Plain: 8 ECU
 SG_ Value : 0|8@1+ (1,0) [0|255] "" GW

BO_TX_BU_ 419361024 : ECU,GW;

CM_ BO_ 419361024 "engine data; not BO_ 419361024 inside a comment";
CM_ SG_ 419361024 Temp "coolant";
BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 419361024 100;
VAL_ 419361024 Load 255 "SNA";
SIG_VALTYPE_ 419361024 Torque : 1;
"""


def test_ids_above_0x7ff_without_the_extended_flag_are_taken_as_extended(tmp_path: Path) -> None:
    path = write_dbc(tmp_path, UNFLAGGED)
    for strict in (True, False):  # the fault is real: cantools alone refuses the file, strict or not
        with pytest.raises(Exception, match="is more than 11 bits"):
            cantools.database.load_file(path, strict=strict)
    db = load_database(path)
    engine = db.get_message_by_name("Engine")
    assert (engine.frame_id, engine.is_extended_frame) == (0x18FEF100, True)
    # every other mention of the message still reaches it: comment, attribute, choices, type, senders
    assert engine.comment == "engine data; not BO_ 419361024 inside a comment"
    assert engine.get_signal_by_name("Temp").comment == "coolant"
    assert engine.cycle_time == 100
    assert engine.get_signal_by_name("Load").choices == {255: "SNA"}
    assert engine.get_signal_by_name("Torque").is_float
    assert engine.senders == ["ECU", "GW"]
    assert db.get_message_by_name("Plain").is_extended_frame is False
    assert database_warnings(db) == (
        "frame ids above 0x7FF without the extended flag, taken as extended: Engine (0x18FEF100)",
    )
    codec = codec_of(db)
    assert codec.warnings == database_warnings(db)
    assert record_of(codec, 0x18FEF100, bytes([0, 255, 0, 0, 0, 0, 0, 0]), True).Load == NotAvailable(
        "not_available"
    )
    frame = codec.encode("Engine", {"Temp": 20})
    assert (frame.arbitration_id, frame.is_extended_id) == (0x18FEF100, True)


def test_a_warning_names_at_most_twenty_messages_and_loading_many_stays_fast(tmp_path: Path) -> None:
    body = "".join(
        f'BO_ {0x800 + i} M{i}: 8 ECU\n SG_ S{i} : 0|8@1+ (1,0) [0|255] "" GW\n\nCM_ BO_ {0x800 + i} "c";\n'
        for i in range(2000)
    )
    path = write_dbc(tmp_path, body)
    started = time.perf_counter()
    db = load_database(path)
    repaired = time.perf_counter() - started
    assert all(m.is_extended_frame for m in db.messages)
    (warning,) = database_warnings(db)
    assert warning.endswith("M19 (0x813) and 1980 more")
    assert repaired < 30.0  # generous: the repair is one more pass of cantools' tokenizer


# -- loading: CAN FD without VFrameFormat -----------------------------------------------------------------

FD = """\
BO_ 512 Big: 16 ECU
 SG_ First : 0|8@1+ (1,0) [0|255] "" GW
 SG_ Last : 120|8@1+ (1,0) [0|255] "" GW

BO_ 513 Small: 8 ECU
 SG_ Value : 0|8@1+ (1,0) [0|255] "" GW
"""


def test_messages_longer_than_8_bytes_are_can_fd(tmp_path: Path) -> None:
    db = load_database(write_dbc(tmp_path, FD))
    big, small = db.get_message_by_name("Big"), db.get_message_by_name("Small")
    assert (big.is_fd, small.is_fd) == (True, False)
    assert database_warnings(db) == (
        "messages longer than 8 bytes taken as CAN FD (no VFrameFormat says so): Big",
    )
    codec = codec_of(db)
    frame = codec.encode("Big", {"First": 1, "Last": 2})
    assert (frame.is_fd, len(frame.data)) == (True, 16)
    assert record_of(codec, 512, frame.data) == codec.message_topic("Big").type(First=1, Last=2)
    assert codec.encode("Small", {}).is_fd is False


def test_frames_of_an_fd_message_of_a_length_fd_has_not_are_padded(tmp_path: Path) -> None:
    # 10 bytes: an FD frame carries 12 (the next length its DLC can say), the last two padding
    body = 'BO_ 514 Odd: 10 ECU\n SG_ Tail : 72|8@1+ (1,0) [0|255] "" GW\n'
    codec = codec_of(load_database(write_dbc(tmp_path, body)))
    frame = codec.encode("Odd", {"Tail": 7})
    assert (frame.is_fd, len(frame.data)) == (True, 10)
    assert record_of(codec, 0x202, frame.data + b"\xcc\xcc").Tail == 7
    assert record_of(codec, 0x202, frame.data).Tail == 7
    for length in (11, 16):
        with pytest.raises(FrameError, match=f"Odd \\(0x202\\): {length} data bytes, the database says 10"):
            codec.decode(0x202, bytes(length))


# -- loading: text encodings ------------------------------------------------------------------------------

TEXT = """\
BO_ 256 Klima: 2 ECU
 SG_ Aussen : 0|8@1+ (1,-40) [-40|85] "°C" GW

CM_ SG_ 256 Aussen "Außentemperatur, gemessen hinter dem Kühlergrill";
"""


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "utf-8", "utf-8-sig", "utf-16"])
def test_text_in_any_usual_encoding_reads_right(tmp_path: Path, encoding: str) -> None:
    db = load_database(write_dbc(tmp_path, TEXT, encoding=encoding))
    signal = db.get_message_by_name("Klima").get_signal_by_name("Aussen")
    assert signal.unit == "°C"  # not "Â°C" (UTF-8 read as cp1252) nor "\ufffdC" (cp1252 read as UTF-8)
    assert signal.comment == "Außentemperatur, gemessen hinter dem Kühlergrill"


def test_bytes_no_encoding_defines_still_load(tmp_path: Path) -> None:
    # 0x81 is undefined in cp1252 and invalid UTF-8: Latin-1 reads it (as a control character)
    path = tmp_path / "odd.dbc"
    path.write_bytes((HEADER + TEXT).encode("cp1252").replace(b"Au\xdfen", b"Au\x81en"))
    signal = load_database(path).get_message_by_name("Klima").get_signal_by_name("Aussen")
    assert signal.unit == "°C"
    assert str(signal.comment).startswith("Au\x81entemperatur")


# -- loading: bare "m" multiplexers (extended multiplexing) ------------------------------------------------

BARE_MULTIPLEXER = """\
BO_ 257 Bare: 8 ECU
 SG_ Mux m : 0|8@1+ (1,0) [0|255] "" GW
 SG_ X m : 8|8@1+ (1,0) [0|255] "" GW
 SG_ Y m : 16|8@1+ (0.5,0) [0|100] "" GW
 SG_ Z : 24|8@1+ (1,0) [0|255] "" GW

SG_MUL_VAL_ 257 X Mux 1-1;
SG_MUL_VAL_ 257 Y Mux 2-3;
"""

#: The variant cantools cannot read at all: the multiplexer is marked M, the signals it selects a bare m.
BARE_SIGNALS = BARE_MULTIPLEXER.replace("Mux m :", "Mux M :")


def test_a_multiplexer_marked_with_a_bare_m_selects_its_signals(tmp_path: Path) -> None:
    path = write_dbc(tmp_path, BARE_MULTIPLEXER)
    # the fault: cantools reads the multiplexer as a plain signal and never decodes X or Y
    alone = cantools.database.can.Database()
    alone.add_dbc_file(path)
    plain = alone.get_message_by_name("Bare")
    assert (plain.is_multiplexed(), plain.decode(bytes([1, 7, 9, 4, 0, 0, 0, 0]))) == (
        False,
        {"Mux": 1, "Z": 4},
    )
    db = load_database(path)
    assert db.get_message_by_name("Bare").signal_tree == [{"Mux": {1: ["X"], 2: ["Y"], 3: ["Y"]}}, "Z"]
    assert database_warnings(db) == (
        "multiplexers not marked 'M' that SG_MUL_VAL_ names as multiplexers, taken as multiplexers: "
        "Bare.Mux (of X, Y)",
        "multiplexed signals marked with a bare 'm', their multiplexer values taken from SG_MUL_VAL_: "
        "Bare.X, Bare.Y",
    )
    codec = codec_of(db)
    record = codec.message_topic("Bare").type
    hints = typing.get_type_hints(record)
    assert hints == {
        "Mux": int | NotAvailable,  # in every frame
        "X": int | NotAvailable | None,  # None where the multiplexer leaves it out
        "Y": float | NotAvailable | None,
        "Z": int | NotAvailable,
    }
    assert attrs.asdict(record_of(codec, 257, bytes([1, 7, 9, 4, 0, 0, 0, 0]))) == {
        "Mux": 1, "X": 7, "Y": None, "Z": 4
    }  # fmt: skip
    assert attrs.asdict(record_of(codec, 257, bytes([3, 7, 9, 4, 0, 0, 0, 0]))) == {
        "Mux": 3, "X": None, "Y": 4.5, "Z": 4
    }  # fmt: skip
    # encode from what is given: the multiplexer and its page's signals
    assert codec.encode("Bare", {"Mux": 2, "Y": 50.0, "Z": 1}).data[:4] == bytes([2, 0, 100, 1])
    with pytest.raises(EncodeError, match="Bare: X not sent with these multiplexer values"):
        codec.encode("Bare", {"Mux": 2, "X": 1})


def test_multiplexed_signals_marked_with_a_bare_m_load(tmp_path: Path) -> None:
    path = write_dbc(tmp_path, BARE_SIGNALS)
    with pytest.raises(Exception, match="invalid literal for int"):  # the fault: cantools cannot read it
        cantools.database.load_file(path)
    db = load_database(path)
    assert db.get_message_by_name("Bare").signal_tree == [{"Mux": {1: ["X"], 2: ["Y"], 3: ["Y"]}}, "Z"]
    codec = codec_of(db)
    assert record_of(codec, 257, bytes([2, 7, 9, 4, 0, 0, 0, 0])).Y == 4.5


NESTED = """\
BO_ 256 Nested: 4 ECU
 SG_ Mux M : 0|8@1+ (1,0) [0|255] "" GW
 SG_ Sub m0 : 8|8@1+ (1,0) [0|255] "" GW
 SG_ A m1 : 16|8@1+ (1,0) [0|255] "" GW
 SG_ B m2 : 16|8@1+ (1,0) [0|255] "" GW
 SG_ C m5 : 24|8@1+ (1,0) [0|255] "" GW

SG_MUL_VAL_ 256 Sub Mux 0-0;
SG_MUL_VAL_ 256 A Sub 1-1;
SG_MUL_VAL_ 256 B Sub 2-2;
SG_MUL_VAL_ 256 C Mux 5-5;
"""


def test_a_nested_multiplexer_not_marked_m_selects_its_signals(tmp_path: Path) -> None:
    path = write_dbc(tmp_path, NESTED)
    alone = cantools.database.can.Database()
    alone.add_dbc_file(path)  # the fault: Mux selects A and B itself, and Sub is a plain signal of page 0
    assert alone.get_message_by_name("Nested").signal_tree == [
        {"Mux": {0: ["Sub"], 1: ["A"], 2: ["B"], 5: ["C"]}}
    ]
    db = load_database(path)
    assert db.get_message_by_name("Nested").signal_tree == [
        {"Mux": {0: [{"Sub": {1: ["A"], 2: ["B"]}}], 5: ["C"]}}
    ]
    assert database_warnings(db) == (
        "multiplexers not marked 'M' that SG_MUL_VAL_ names as multiplexers, taken as multiplexers: "
        "Nested.Sub (of A, B)",
    )
    codec = codec_of(db)
    assert attrs.asdict(record_of(codec, 0x100, bytes([0, 2, 7, 9]))) == {
        "Mux": 0, "Sub": 2, "A": None, "B": 7, "C": None
    }  # fmt: skip
    assert codec.encode("Nested", {"Mux": 0, "Sub": 1, "A": 3}).data[:3] == bytes([0, 1, 3])


def test_a_multiplexer_value_that_selects_nothing_still_yields_the_other_signals(tmp_path: Path) -> None:
    codec = codec_of(load_database(write_dbc(tmp_path, BARE_MULTIPLEXER)))
    record = record_of(codec, 257, bytes([9, 7, 9, 4, 0, 0, 0, 0]))  # 9: no page
    assert attrs.asdict(record) == {"Mux": 9, "X": None, "Y": None, "Z": 4}
    assert codec.statistics() == CodecStatistics(out_of_range=0, not_available=0, unknown_multiplexer=1)


# -- extended and standard ids: distinct routes -----------------------------------------------------------

TWINS = """\
BO_ 265 Std: 2 ECU
 SG_ A : 0|16@1+ (1,0) [0|65535] "" GW

BO_ 2147483913 Ext: 2 ECU
 SG_ B : 0|16@1+ (1,0) [0|65535] "" GW

BO_ 2147483904 OnlyExt: 1 ECU
 SG_ C : 0|8@1+ (1,0) [0|255] "" GW
"""


def test_extended_and_standard_frames_of_one_id_are_distinct_messages(tmp_path: Path) -> None:
    db = load_database(write_dbc(tmp_path, TWINS))
    codec = codec_of(db)
    data = bytes([1, 2])
    assert type(record_of(codec, 0x109, data, False)).__name__ == "Std"
    assert type(record_of(codec, 0x109, data, True)).__name__ == "Ext"
    assert type(record_of(codec, 0x109, data)).__name__ == "Std"  # no flag given: an 11-bit id is standard
    with pytest.raises(FrameError, match="standard frame id 0x100 is not in the database") as info:
        codec.decode(0x100, b"\x01", False)
    assert info.value.kind == "unknown_id"
    assert sorted(codec.wanted_ids()) == [(0x100, True), (0x109, False), (0x109, True)]
    assert (codec.encode("Std", {}).is_extended_id, codec.encode("Ext", {}).is_extended_id) == (False, True)
    view = FrameView(codec)
    for extended, name in [(False, "Std"), (True, "Ext")]:
        frame = can.Message(arbitration_id=0x109, data=data, is_extended_id=extended)
        assert view.record(frame)["message"] == name
        assert view.record(frame)["signals"] == {"A" if name == "Std" else "B": 0x201}


@pytest.mark.usefixtures("vwos_bus_client")
async def test_the_gateway_never_publishes_an_extended_frame_as_the_standard_message(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = write_dbc(tmp_path, TWINS.split("\nBO_ 2147483913")[0] + "\n")  # only Std 0x109
    link = Link()
    cfg = GatewayConfig(database=path, network="body", kernel_filters=False)
    async with open_harness(ServiceSpec("gateway", gateway_on(link), cfg)) as car:
        link.transport.inject(
            can.Message(arbitration_id=0x109, data=b"\x05\x00", is_extended_id=True),
            can.Message(arbitration_id=0x109, data=b"\x06\x00", is_extended_id=False),
        )
        sample = await car.expect("CAN.body.Std")
        report = await status(car, lambda s: s.frames_received == 2)
    assert sample.value.A == 6
    assert (report.unknown_ids, report.decoded) == (1, 1)


@pytest.mark.usefixtures("vwos_bus_client")
async def test_the_gateway_logs_what_loading_its_database_repaired(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = Link()
    cfg = GatewayConfig(database=write_dbc(tmp_path, UNFLAGGED), network="body")
    async with open_harness(ServiceSpec("gateway", gateway_on(link), cfg)) as car:
        await status(car)
    out = capsys.readouterr().out
    assert "CAN database repaired" in out
    assert "taken as extended: Engine (0x18FEF100)" in out


# -- loading: the strict hint -----------------------------------------------------------------------------


def test_a_range_declared_upside_down_is_warned_about_and_taken_as_unbounded(tmp_path: Path) -> None:
    path = write_dbc(
        tmp_path, 'BO_ 1 X: 8 ECU\n SG_ A : 0|8@1+ (1,0) [10|0] "" GW\n SG_ B : 8|8@1+ (1,0) [0|5] "" GW\n'
    )
    db = load_database(path)
    assert database_warnings(db) == ("signals whose minimum is above their maximum, taken as unbounded: X.A",)
    ((_, record),) = codec_of(db).decode(1, bytes([200, 3, 0, 0, 0, 0, 0, 0]))
    assert (record.A, record.B) == (200, 3)  # 200 is outside [10, 0] read either way: not refused


def test_the_strict_hint_only_where_strict_false_loads_the_file(tmp_path: Path) -> None:
    overlap = write_dbc(
        tmp_path, 'BO_ 1 X: 1 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" GW\n SG_ B : 4|4@1+ (1,0) [0|1] "" GW\n'
    )
    with pytest.raises(CanDatabaseError, match=r"overlap.*\(real-world files often need strict = false"):
        load_database(overlap)
    assert load_database(overlap, strict=False).messages[0].name == "X"
    broken = write_dbc(tmp_path, 'BO_ 1 X: 1 ECU\n SG_ A : 0|8@1+ (1,0) [0|1 "" GW\n', name="broken.dbc")
    with pytest.raises(CanDatabaseError) as info:
        load_database(broken)
    assert "strict = false" not in str(info.value)
    assert str(info.value).startswith(f"{broken}: cannot load the CAN database: ")
    with pytest.raises(CanDatabaseError) as info:
        load_database(broken, strict=False)
    assert str(info.value).startswith(f"{broken}: cannot load the CAN database: ")
    assert "strict = false" not in str(info.value)
    long_name = tmp_path / ("x" * 300 + ".dbc")
    with pytest.raises(CanDatabaseError, match=r"x\.dbc: cannot read it: File name too long$"):
        load_database(long_name)
    with pytest.raises(CanDatabaseError, match="a directory, not a CAN database"):
        load_database(tmp_path)
    with pytest.raises(CanDatabaseError, match="no such file"):
        load_database(tmp_path / "none.dbc")


# -- values: ranges in raw integer space ------------------------------------------------------------------

RANGES = """\
BO_ 256 Ranges: 8 ECU
 SG_ Pressure : 0|16@1+ (0.1,0) [0|50.8] "bar" GW
 SG_ Speed : 16|16@1+ (0.01,0) [0|655.32] "km/h" GW
 SG_ Falling : 32|8@1+ (-0.5,10) [-2.5|10] "" GW
 SG_ Signed : 40|8@1- (0.25,-1) [-10|10] "" GW
 SG_ Free : 48|16@1+ (0.1,0) [0|0] "" GW
"""


def test_the_range_check_agrees_with_the_scaling(tmp_path: Path) -> None:
    codec = CanCodec(
        load_database(write_dbc(tmp_path, RANGES)),
        "t",
        codec=Codec(),
        mappings=[SignalMapping("Ranges.Pressure", "Vehicle.Brake.Pressure", unit="bar")],
    )

    def frame(pressure: int, speed: int, falling: int = 0, signed: int = 0, free: int = 0) -> bytes:
        return (
            pressure.to_bytes(2, "little")
            + speed.to_bytes(2, "little")
            + bytes([falling, signed & 0xFF])
            + free.to_bytes(2, "little")
        )

    pairs = codec.decode(0x100, frame(508, 65532, 25, 0x2C, 65535))
    (_, record), (mapped, pressure) = pairs
    # 508 * 0.1 is 50.800000000000004 in floats: inside the range the database means, so 50.8
    assert (record.Pressure, pressure) == (50.8, 50.8)
    assert mapped.check(pressure) == 50.8  # the bus takes it
    assert record.Speed == 655.32
    assert record.Falling == -2.5  # 25 * -0.5 + 10: a negative scale's ends swap
    assert record.Signed == 10.0  # 44 * 0.25 - 1
    assert record.Free == pytest.approx(6553.5)  # [0|0]: no range declared, every value goes
    (_, record), (_, pressure) = codec.decode(0x100, frame(509, 65534, 26, 0x2D))
    out = NotAvailable("out_of_range")
    assert (record.Pressure, pressure, record.Speed, record.Falling, record.Signed) == (out,) * 5
    (_, record), _ = codec.decode(0x100, frame(0, 0, 0xFF, 0xD8))  # 0xD8 = -40 -> -11: below -10
    assert (record.Pressure, record.Speed, record.Falling, record.Signed) == (0, 0, out, out)
    assert codec.statistics().out_of_range == 4 + 2  # the mapped topic's NotAvailable is the record's


#: Scales and offsets as databases write them: decimal fractions that floats cannot hold exactly.
decimals = st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    scale=(decimals | st.sampled_from([Decimal(1), Decimal(2)])).filter(lambda d: d != 0),
    offset=decimals | st.just(Decimal(0)),
    low=decimals,
    high=decimals,
    length=st.integers(min_value=1, max_value=24),
    signed=st.booleans(),
    data=st.data(),
)
def test_a_value_decoded_from_a_raw_value_in_range_is_in_range(
    scale: Decimal, offset: Decimal, low: Decimal, high: Decimal, length: int, signed: bool, data: Any
) -> None:
    assume(low <= high and not (low == high == 0))
    kind = "-" if signed else "+"
    text = f'{HEADER}BO_ 256 M: 4 ECU\n SG_ S : 0|{length}@1{kind} ({scale},{offset}) [{low}|{high}] "" GW\n'
    db = cantools.database.can.Database()
    db.add_dbc_string(text)
    codec = CanCodec(db, "t", codec=Codec(), mappings=[SignalMapping("M.S", "Vehicle.S")])
    extent = (-(1 << (length - 1)), (1 << (length - 1)) - 1) if signed else (0, (1 << length) - 1)
    raw = data.draw(st.integers(*extent) | st.sampled_from(extent))
    pairs = codec.decode(0x100, (raw & 0xFFFFFFFF).to_bytes(4, "little"))
    (_, record), (topic, mapped) = pairs
    exact = Decimal(raw) * scale + offset  # what the database means, without rounding
    if low <= exact <= high:
        assert float(low) <= record.S <= float(high)
        assert topic.check(mapped) == record.S  # the mapped topic's own range takes it too
    else:
        assert record.S == mapped == NotAvailable("out_of_range")


# -- values: what the database marks as not available -----------------------------------------------------

MARKED = """\
BO_ 256 Marked: 8 ECU
 SG_ Level : 0|7@1+ (1,0) [0|100] "%" GW
 SG_ Gear : 8|4@1+ (1,0) [0|15] "" GW
 SG_ Pedal : 12|2@1+ (1,0) [0|2] "" GW
 SG_ Attr : 16|8@1+ (1,0) [0|255] "" GW
 SG_ Hex : 24|8@1+ (1,0) [0|255] "" GW
 SG_ Plain : 32|8@1+ (1,0) [0|255] "" GW
 SG_ Mapped : 40|16@1+ (0.01,0) [0|655.35] "km/h" GW

BA_DEF_ SG_ "GenSigSNA" STRING ;
BA_DEF_ SG_ "GenSigInvalidValue" INT 0 255;
BA_DEF_DEF_ "GenSigSNA" "";
BA_DEF_DEF_ "GenSigInvalidValue" 0;
BA_ "GenSigInvalidValue" SG_ 256 Attr 254;
BA_ "GenSigSNA" SG_ 256 Hex "FFh";
VAL_ 256 Level 126 "Init" 127 "Fehler";
VAL_ 256 Gear 0 "Init" 1 "P" 2 "R" 3 "N" 4 "D" 14 "Fehler" 15 "SNA";
VAL_ 256 Pedal 0 "OFF" 1 "ON" 2 "INVALID";
VAL_ 256 Mapped 65535 "Signal nicht verfügbar";
"""


def test_raw_values_the_database_marks_as_not_available(tmp_path: Path) -> None:
    db = load_database(write_dbc(tmp_path, MARKED))
    codec = CanCodec(
        db, "t", codec=Codec(), mappings=[SignalMapping("Marked.Mapped", "Vehicle.Speed", unit="km/h")]
    )
    na = NotAvailable("not_available")
    (_, record), (_, speed) = codec.decode(0x100, bytes([126, 0x20 | 0x0F, 254, 0xFF, 0, 0xFF, 0xFF, 0]))
    assert (record.Level, record.Gear, record.Pedal, record.Attr, record.Hex, speed) == (na,) * 6
    assert record.Plain == 0
    assert record.Mapped == na
    # In an enumeration of states, "Init" and "Fehler" are states (SNA and INVALID are not values)
    (_, record), (_, speed) = codec.decode(0x100, bytes([127, 0x10 | 0x0E, 253, 0xFE, 0, 0x10, 0x27, 0]))
    assert (record.Level, record.Gear, record.Pedal, record.Attr, record.Hex) == (na, 14, 1, 253, 0xFE)
    assert speed == 100.0
    (_, record), _ = codec.decode(0x100, bytes([100, 0x00, 0, 0, 0, 0, 0, 0]))
    assert (record.Level, record.Gear, record.Attr) == (100, 0, 0)  # the attributes' defaults mark nothing
    assert codec.statistics().not_available == 6 + 1


@pytest.mark.parametrize(
    ("value", "marked"),
    [
        (255, {255}),
        ("0xFF", {255}),
        ("FFh", {255}),
        (" 2_55 ", {255}),
        ("255", {255}),
        (254.0, {254}),
        (254.5, set()),  # not a raw value
        (True, set()),  # a boolean is not a number here
        (None, set()),
        ([255], set()),
        ("junk", set()),
        ("h", set()),  # a bare hex suffix
        ("", set()),
    ],
)
def test_the_forms_of_a_not_available_attribute_value(value: object, marked: set[int]) -> None:
    """The raw value in a GenSigSNA-style attribute, as exports write it; what is not a raw value marks
    nothing (rather than failing the load)."""
    signal = types.SimpleNamespace(
        choices=None, dbc=types.SimpleNamespace(attributes={"GenSigSNA": types.SimpleNamespace(value=value)})
    )
    assert not_available_values(signal) == marked


def label(signal: Any, raw: int) -> str:
    return str(signal.choices[raw])


def test_not_available_values_of_the_real_databases() -> None:
    """The label rules, pinned on what the two real databases say."""
    mqb = load_database(VW_MQB, strict=False)
    marked = {
        f"{m.name}.{s.name}": {raw: label(s, raw) for raw in not_available_values(s)}
        for m in mqb.messages
        for s in m.signals
        if not_available_values(s)
    }
    assert marked == {
        "ACC_06.ACC_Sollbeschleunigung_02": {2047: "Fehler"},
        "TSK_06.TSK_Wunsch_Uebersetz": {0: "Init"},
        "HCA_01.EA_ACC_Wunschgeschwindigkeit": {1023: "Init"},
        "ACC_07.ACC_Anhalteweg": {2047: "Fehler"},
        "ACC_07.ACC_Sollbeschleunigung_02": {2047: "Fehler"},
        "Kombi_03.KBI_Tankfuellstand_Prozent": {126: "Init", 127: "Fehler"},
        "Kombi_03.KBI_Tankinhalt_hochaufl": {16382: "Init", 16383: "Fehler"},
        "Kombi_03.KBI_Max_Tankinhalt": {254: "Init", 255: "Fehler"},
    }
    tesla = load_database(MODEL3)
    labels = {label(s, raw) for m in tesla.messages for s in m.signals for raw in not_available_values(s)}
    assert {label for label in labels if not label.endswith("SNA")} == {"INVALID"}
    gear = tesla.get_message_by_name("ID118DriveSystemStatus").get_signal_by_name("DI_gear")
    assert {label(gear, raw) for raw in not_available_values(gear)} == {"DI_GEAR_SNA"}
    state = tesla.get_message_by_name("ID261_12vBattStatus").get_signal_by_name("VCFRONT_batterySMState")
    assert not_available_values(state) == frozenset()  # 0 "INIT" is a state of the battery's state machine


def test_a_nan_in_a_floating_point_signal_is_not_available(tmp_path: Path) -> None:
    body = (
        'BO_ 256 F: 8 ECU\n SG_ Bounded : 0|32@1- (1,0) [-100|100] "" GW\n'
        ' SG_ Open : 32|32@1- (1,0) [0|0] "" GW\n\n'
        "SIG_VALTYPE_ 256 Bounded : 1;\nSIG_VALTYPE_ 256 Open : 1;\n"
    )
    codec = codec_of(load_database(write_dbc(tmp_path, body)))
    nan = bytes.fromhex("0000c07f")
    record = record_of(codec, 0x100, nan + nan)
    assert record.Bounded == NotAvailable("not_available")
    assert math.isnan(record.Open)  # no range declared: the value as it is
    record = record_of(codec, 0x100, bytes.fromhex("0000c842") + bytes.fromhex("0000c842"))  # 100.0
    assert (record.Bounded, record.Open) == (100.0, 100.0)
    assert record_of(codec, 0x100, bytes.fromhex("0000cac2") + bytes(4)).Bounded == NotAvailable(
        "out_of_range"
    )


# -- decode never raises but FrameError; one bad signal leaves the others ------------------------------------

OVERLAP = """\
BO_ 256 Overlap: 2 ECU
 SG_ Whole : 0|16@1+ (1,0) [0|65535] "" GW
 SG_ Low : 0|8@1+ (1,0) [0|255] "" GW
 SG_ High : 8|8@1+ (1,0) [0|255] "" GW
 SG_ Flag : 15|1@1+ (1,0) [0|1] "" GW
"""


def test_a_message_whose_signals_overlap_decodes_every_signal(tmp_path: Path) -> None:
    db = load_database(write_dbc(tmp_path, OVERLAP), strict=False)
    with pytest.raises(cantools.database.DecodeError):  # the fault: cantools cannot unpack it whole
        db.get_message_by_name("Overlap").decode(b"\x34\x92")
    record = record_of(codec_of(db), 0x100, b"\x34\x92")
    assert attrs.asdict(record) == {"Whole": 0x9234, "Low": 0x34, "High": 0x92, "Flag": 1}


def test_pla_01_of_vw_mqb_decodes_although_its_signals_overlap() -> None:
    codec = codec_of(load_database(VW_MQB, strict=False), "mqb")
    record = record_of(codec, codec.db.get_message_by_name("PLA_01").frame_id, bytes(range(8)))
    assert len(attrs.asdict(record)) == 13
    assert record.COUNTER == 1


@pytest.mark.parametrize(
    ("frame_id", "data", "kind"),
    [
        (0x100, "not bytes", "wrong_length"),
        (0x100, None, "undecodable"),
        ("0x100", b"\x00" * 8, "undecodable"),
        (None, b"", "undecodable"),
        (-1, b"", "unknown_id"),
        (2**100, b"", "unknown_id"),
    ],
)
def test_decode_of_wrong_types_is_a_frame_error(frame_id: Any, data: Any, kind: str) -> None:
    codec = codec_of(load_database(Path(__file__).parent / "data" / "test.dbc"))
    with pytest.raises(FrameError) as info:
        codec.decode(frame_id, data)
    assert info.value.kind == kind


def _codecs() -> dict[str, CanCodec]:
    return {
        "vw_mqb": CanCodec(load_database(VW_MQB, strict=False), "mqb", codec=Codec()),
        "Model3CAN": CanCodec(load_database(MODEL3), "model3", codec=Codec()),
    }


CODECS: dict[str, CanCodec] = {}


def real(name: str) -> CanCodec:
    if not CODECS:
        CODECS.update(_codecs())
    return CODECS[name]


@pytest.mark.parametrize("name", ["vw_mqb", "Model3CAN"])
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_frames_of_real_databases_decode_or_are_a_frame_error(name: str, data: Any) -> None:
    codec = real(name)
    frame_id, payload, extended = data.draw(can_frames(list(codec.messages())))
    try:
        pairs = codec.decode(frame_id, payload, extended)
    except FrameError as exc:
        kind: str | None = exc.kind
    else:
        kind = None
    if kind is not None:
        assert kind in ("unknown_id", "wrong_length")  # every message of both databases decodes
        return
    (topic, record), *mapped = pairs
    assert mapped == []
    for field in attrs.fields(type(record)):
        value = getattr(record, field.name)
        assert value is None or isinstance(value, int | float | NotAvailable), (field.name, value)
    assert topic.check(record) is record


def _in_range_values(message: Any, record: Any) -> dict[str, float]:
    return {
        s.name: getattr(record, f.name)
        for s, f in zip(message.signals, attrs.fields(type(record)), strict=True)
        if isinstance(getattr(record, f.name), int | float)
    }


#: Messages whose values cannot round-trip: PLA_01's signals share bits (so vw_mqb needs strict=False).
OVERLAPPING = {"vw_mqb": {"PLA_01"}, "Model3CAN": set()}


@pytest.mark.parametrize("name", ["vw_mqb", "Model3CAN"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_in_range_values_of_real_databases_round_trip_exactly(name: str, data: Any) -> None:
    codec = real(name)
    message = data.draw(st.sampled_from([m for m in codec.messages() if m.name not in OVERLAPPING[name]]))
    payload = data.draw(can_payloads(message.length))
    unknown = codec.statistics().unknown_multiplexer
    ((_, record),) = codec.decode(message.frame_id, payload, message.is_extended_frame)
    values = _in_range_values(message, record)
    if message.is_multiplexed():
        assume(codec.statistics().unknown_multiplexer == unknown)  # a page the database has
        multiplexers = {s.name for s in message.signals if s.is_multiplexer}
        assume(multiplexers <= set(values))  # a multiplexer that is itself not available selects nothing
    frame = codec.encode(message.name, values)
    assert (frame.arbitration_id, frame.is_extended_id) == (message.frame_id, message.is_extended_frame)
    ((_, again),) = codec.decode(frame.arbitration_id, frame.data, frame.is_extended_id)
    decoded = _in_range_values(message, again)  # the signals not given take their defaults: left out
    assert {key: decoded.get(key) for key in values} == values
    for key, value in values.items():
        assert type(decoded[key]) is type(value)


@pytest.mark.parametrize("name", sorted(OVERLAPPING))
def test_every_message_of_the_real_databases_decodes_and_round_trips(name: str) -> None:
    """Every message, not only those hypothesis happens to draw: 30 payloads each (random, all bits set,
    all clear) decode, and their in-range values come back from encode and decode."""
    codec = real(name)
    rng = random.Random(name)
    round_trips = 0
    for message in codec.messages():
        payloads = [bytes(message.length), b"\xff" * message.length]
        payloads += [rng.randbytes(message.length) for _ in range(28)]
        for payload in payloads:
            unknown = codec.statistics().unknown_multiplexer
            ((_, record),) = codec.decode(message.frame_id, payload, message.is_extended_frame)
            if message.name in OVERLAPPING[name] or codec.statistics().unknown_multiplexer != unknown:
                continue
            values = _in_range_values(message, record)
            if not {s.name for s in message.signals if s.is_multiplexer} <= set(values):
                continue
            frame = codec.encode(message.name, values)
            ((_, again),) = codec.decode(frame.arbitration_id, frame.data, frame.is_extended_id)
            decoded = _in_range_values(message, again)
            assert {key: decoded.get(key) for key in values} == values, message.name
            round_trips += 1
    assert round_trips > 20 * len(list(codec.messages()))


@pytest.mark.parametrize("name", sorted(OVERLAPPING))
def test_every_message_of_the_real_databases_encodes_its_defaults(name: str) -> None:
    codec = real(name)
    for message in codec.messages():
        if message.is_multiplexed():  # its defaults may select no page: covered by the round trips
            continue
        frame = codec.encode(message.name, {})
        assert len(frame.data) == message.length


def test_a_frame_with_one_bad_signal_still_yields_the_others(tmp_path: Path) -> None:
    codec = CanCodec(
        load_database(write_dbc(tmp_path, RANGES)),
        "t",
        codec=Codec(),
        mappings=[
            SignalMapping("Ranges.Pressure", "Vehicle.Brake.Pressure"),
            SignalMapping("Ranges.Speed", "Vehicle.Speed"),
        ],
    )
    data = (600).to_bytes(2, "little") + (1000).to_bytes(2, "little") + bytes(4)
    (_, record), (_, pressure), (_, speed) = codec.decode(0x100, data)
    assert (record.Pressure, pressure) == (NotAvailable("out_of_range"),) * 2
    assert (record.Speed, speed) == (10.0, 10.0)


def test_the_record_types_say_where_values_may_be_missing() -> None:
    codec = real("vw_mqb")
    hints = typing.get_type_hints(codec.message_topic("VIN_01").type)
    assert hints["VIN_01_MUX"] == int | NotAvailable
    assert hints["VIN_1"] == int | NotAvailable | None
    assert typing.get_type_hints(codec.message_topic("ESP_21").type)["ESP_v_Signal"] == float | NotAvailable
    assert all(isinstance(t, types.UnionType) for t in hints.values())


def test_the_issue_s_init_value_is_out_of_range_not_refused() -> None:
    # ESP_21.ESP_v_Signal: raw 0xFFFE decodes to 655.34 km/h against max 655.32
    codec = CanCodec(
        load_database(VW_MQB, strict=False),
        "mqb2",
        codec=Codec(),
        mappings=[SignalMapping("ESP_21.ESP_v_Signal", "Vehicle.Speed")],
    )
    frame = codec.encode("ESP_21", {"ESP_v_Signal": 100.0})
    message = codec.db.get_message_by_name("ESP_21")
    raw = message.decode_simple(frame.data, decode_choices=False, scaling=False)
    data = message.encode({**raw, "ESP_v_Signal": 0xFFFE}, scaling=False, strict=False)
    (_, record), (topic, speed) = codec.decode(frame.arbitration_id, data)
    assert record.ESP_v_Signal == speed == NotAvailable("out_of_range")
    assert topic.check(speed) == speed


def test_defaults_and_encode_keep_to_what_the_bits_carry(tmp_path: Path) -> None:
    # Model3CAN's UI_socSnapshotExpirationTime: 4 bits, offset 2, no range: 0 is not a value it can carry
    body = 'BO_ 256 M: 1 ECU\n SG_ Expiry : 0|4@1+ (1,2) [0|0] "" GW\n'
    codec = codec_of(load_database(write_dbc(tmp_path, body)))
    assert codec.defaults("M") == {"Expiry": 2}
    assert record_of(codec, 0x100, codec.encode("M", {}).data).Expiry == 2
    with pytest.raises(EncodeError, match=r"M.Expiry: 18 is more than its 4 bits carry \[2, 17\]"):
        codec.encode("M", {"Expiry": 18})
    with pytest.raises(EncodeError, match="expected a finite number, got inf"):
        codec.encode("M", {"Expiry": math.inf})
