"""The CAN tools (``vwos can dump | replay | sim | gen``): the pieces under trio's MockClock with a fake send,
and the commands on python-can's virtual interface. Real vcan is tested elsewhere."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import json
import math
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import can
import pytest
import trio
import trio.testing
from spawn import wait_for_line

import services.can._cli as cli
import services.can._transport as can_transport
import vwos._cli
from bus import Codec, NotAvailable
from services.can import (
    CanCodec,
    CanDatabaseError,
    EncodeError,
    Frame,
    LinkDownError,
    MemoryTransport,
    load_database,
)
from services.can._cli import register
from services.can._gen import generate_topics
from services.can._logtools import (
    FrameView,
    ReplayStats,
    ToolError,
    dump_frames,
    read_log,
    replay,
)
from services.can._sim import SimulatedEcu

ROOT = Path(__file__).resolve().parents[1]
LONG = "Message_With_A_Long_Name_To_Wrap_The_Topic"
LONGER = "Message_With_A_Cycle_And_A_Long_Name_ToWrap"  # with max_age: one argument per line

TINY_DBC = f"""VERSION ""

NS_ :

BS_:

BU_: ECU GW

BO_ 256 Speed: 8 ECU
 SG_ VehicleSpeed : 0|16@1+ (0.01,0) [0|250] "km/h" GW
 SG_ Speed_BZ : 16|4@1+ (1,0) [0|15] "" GW
 SG_ Gear : 20|3@1+ (1,0) [0|7] "" GW
 SG_ Speed_CRC : 24|8@1+ (1,0) [0|255] "" GW
 SG_ SteeringAngle : 32|16@1- (0.1,0) [-800|800] "deg" GW

BO_ 512 Doors: 2 GW
 SG_ Locked : 0|1@1+ (1,0) [0|1] "" ECU
 SG_ Temperature : 8|8@1+ (1,-40) [-40|85] "degC" ECU

BO_ 2566914304 Battery: 4 ECU
 SG_ Voltage : 0|16@1+ (0.001,0) [0|65.535] "V" GW
 SG_ Current : 16|16@1- (0.1,0) [-3276.8|3276.7] "A" GW

BO_ 768 {LONG}: 1 ECU
 SG_ Level : 0|8@1+ (1,0) [0|255] "" GW

BO_ 769 {LONGER}: 1 ECU
 SG_ Level : 0|8@1+ (1,0) [0|255] "" GW

CM_ BO_ 256 "Vehicle speed and gear, from the \\"ABS\\" ECU.";
CM_ BO_ 512 "The doors: whether they are locked, and the temperature in the cabin, which is measured by the
door module for reasons nobody remembers; a comment long enough to need more than one line.";
CM_ SG_ 256 VehicleSpeed "Speed over ground";
BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 20;
BA_ "GenMsgCycleTime" BO_ 512 100;
BA_ "GenMsgCycleTime" BO_ 769 50;
VAL_ 256 Gear 0 "Park" 1 "Reverse" 2 "Neutral" 3 "Drive" ;
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.dbc"
    path.write_text(TINY_DBC)
    return path


def tiny_codec(tiny: Path) -> CanCodec:
    return CanCodec(load_database(tiny), "tiny", codec=Codec())


def tool(*argv: str | Path) -> int:
    """Run ``vwos can ...`` as the command does, with `register` on a parser of its own."""
    parser = argparse.ArgumentParser(prog="vwos")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.handler(args)
    return code


def channel() -> str:
    """A virtual CAN channel no other test uses."""
    return f"vwos-test-{uuid.uuid4().hex[:8]}"


def frame_message(frame: Frame, timestamp: float = 1_700_000_000.25) -> can.Message:
    return can.Message(
        timestamp=timestamp,
        arbitration_id=frame.arbitration_id,
        data=frame.data,
        is_extended_id=frame.is_extended_id,
        channel="vcan0",
    )


def drain(bus: can.BusABC) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout=0)) is not None:
        out.append(msg)
    return out


# -- dump -------------------------------------------------------------------------------------------------


def test_line_shows_message_signals_values_units_and_labels(tiny: Path) -> None:
    codec = tiny_codec(tiny)
    frame = codec.encode("Speed", {"VehicleSpeed": 12.34, "Gear": 3, "SteeringAngle": -5.5, "Speed_BZ": 7})
    line = FrameView(codec).line(frame_message(frame))
    assert line.startswith("(1700000000.250000)  vcan0  100   [8]  D2 04 37 00 C9 FF 00 00  Speed  ")
    assert line.endswith(
        "Speed  VehicleSpeed=12.34 km/h  Speed_BZ=7  Gear=3 (Drive)  Speed_CRC=0  SteeringAngle=-5.5 deg"
    )


def test_unknown_ids_and_frames_without_a_database_are_raw_like_candump(tiny: Path) -> None:
    unknown = can.Message(timestamp=1.5, arbitration_id=0x7FF, data=b"\xde\xad", is_extended_id=False)
    assert FrameView(tiny_codec(tiny), channel="can1").line(unknown) == "(1.500000)  can1  7FF   [2]  DE AD"
    extended = can.Message(timestamp=1.5, arbitration_id=0x1ABCDE, data=b"\x01", channel="vcan0")
    assert FrameView().line(extended) == "(1.500000)  vcan0  001ABCDE   [1]  01"
    # The id of a standard message, sent as an extended frame, is not that message.
    speed = can.Message(timestamp=1.5, arbitration_id=0x100, data=bytes(8), channel="vcan0")
    assert FrameView(tiny_codec(tiny)).line(speed) == "(1.500000)  vcan0  00000100   [8]  " + " ".join(
        ["00"] * 8
    )


def test_extended_messages_error_and_remote_frames(tiny: Path) -> None:
    codec = tiny_codec(tiny)
    view = FrameView(codec)
    battery = frame_message(codec.encode("Battery", {"Voltage": 12.6, "Current": -1.5}))
    assert "  19000100   [4]  " in view.line(battery)
    assert view.line(battery).endswith("Battery  Voltage=12.6 V  Current=-1.5 A")
    error = can.Message(timestamp=2.0, is_error_frame=True, channel="vcan0")
    assert view.line(error).endswith("ERRORFRAME")
    remote = can.Message(
        timestamp=2.0, arbitration_id=0x100, is_remote_frame=True, dlc=8, is_extended_id=False
    )
    assert view.line(remote).endswith("[8]  remote request")


def test_a_frame_that_does_not_decode_says_why(tiny: Path) -> None:
    short = can.Message(timestamp=3.0, arbitration_id=0x100, data=b"\x01\x02", is_extended_id=False)
    view = FrameView(tiny_codec(tiny), channel="vcan0")
    line = view.line(short)
    assert line.startswith("(3.000000)  vcan0  100   [2]  01 02")
    assert line.endswith("Speed  ! wrong_length: Speed (0x100): 2 data bytes, the database says 8")
    assert view.record(short)["error"] == {
        "kind": "wrong_length",
        "message": "Speed (0x100): 2 data bytes, the database says 8",
    }


def test_json_lines(tiny: Path) -> None:
    codec = tiny_codec(tiny)
    view = FrameView(codec)
    frame = codec.encode("Speed", {"VehicleSpeed": 50.0, "Gear": 1})
    record = json.loads(view.json(frame_message(frame)))
    assert record == {
        "timestamp": 1_700_000_000.25,
        "channel": "vcan0",
        "id": 0x100,
        "extended": False,
        "fd": False,
        "dlc": 8,
        "data": frame.data.hex(),
        "message": "Speed",
        "signals": {"VehicleSpeed": 50.0, "Speed_BZ": 0, "Gear": 1, "Speed_CRC": 0, "SteeringAngle": 0.0},
        "units": {"VehicleSpeed": "km/h", "SteeringAngle": "deg"},
        "labels": {"Gear": "Reverse"},
    }
    unknown = json.loads(view.json(can.Message(arbitration_id=0x7FF, data=b"\x01", is_extended_id=False)))
    assert unknown["message"] is None
    assert "signals" not in unknown
    assert unknown["data"] == "01"


async def test_dump_frames_stops_after_count_and_keeps_only_the_filtered_ids(tiny: Path) -> None:
    codec = tiny_codec(tiny)
    link = MemoryTransport()
    speed = frame_message(codec.encode("Speed", {"VehicleSpeed": 1.0}))
    doors = frame_message(codec.encode("Doors", {"Locked": 1}))
    link.inject(doors, speed, doors, speed, speed)

    class Out:
        def __init__(self) -> None:
            self.text = ""
            self.flushes = 0

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            self.flushes += 1

    out = Out()
    shown = await dump_frames(link, FrameView(codec), out, count=2, ids={(0x100, False)})  # type: ignore[arg-type]
    assert shown == 2
    lines = out.text.splitlines()
    assert len(lines) == 2
    assert all("Speed  VehicleSpeed=1 km/h" in line for line in lines)
    assert out.flushes == 1


@pytest.fixture
def frames_after_open(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[can.Message]], None]:
    """Make the command's bus see ``messages`` sent by another node once it is open."""

    def arrange(messages: list[can.Message]) -> None:
        real_open = cli.open_bus

        def open_then_send(interface: str, channel: str, **kwargs: Any) -> Any:
            transport = real_open(interface, channel, **kwargs)
            with can.Bus(interface="virtual", channel=channel) as other:
                for msg in messages:
                    other.send(msg)
            return transport

        monkeypatch.setattr(cli, "open_bus", open_then_send)

    return arrange


def test_dump_command_on_the_virtual_interface(
    tiny: Path, capsys: pytest.CaptureFixture[str], frames_after_open: Callable[[list[can.Message]], None]
) -> None:
    codec = tiny_codec(tiny)
    unknown = can.Message(arbitration_id=0x7FF, data=b"\x01\x02", is_extended_id=False)
    speed = frame_message(codec.encode("Speed", {"VehicleSpeed": 88.0, "Gear": 3}))
    frames_after_open([unknown, speed, speed])
    ch = channel()
    assert tool("can", "dump", "--interface", "virtual", "--channel", ch, "--dbc", tiny, "--count", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"  {ch}  7FF   [2]  01 02")
    assert "Speed  VehicleSpeed=88 km/h" in lines[1]
    assert "Gear=3 (Drive)" in lines[1]


def test_dump_command_json_with_a_filter(
    tiny: Path, capsys: pytest.CaptureFixture[str], frames_after_open: Callable[[list[can.Message]], None]
) -> None:
    codec = tiny_codec(tiny)
    doors = frame_message(codec.encode("Doors", {"Temperature": 21}))
    speed = frame_message(codec.encode("Speed", {"VehicleSpeed": 30.0}))
    frames_after_open([speed, doors, speed, doors])
    args: list[str | Path] = ["can", "dump", "--interface", "virtual", "--channel", channel(), "--dbc", tiny]
    assert tool(*args, "--json", "--count", "2", "--filter", "Doors") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["message"] for r in records] == ["Doors", "Doors"]
    assert records[0]["signals"] == {"Locked": 0, "Temperature": 21}
    assert records[0]["units"] == {"Temperature": "degC"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--dbc", "{missing}"], "{missing}: no such file"),
        (["--dbc", "{garbage}"], "{garbage}: cannot load the CAN database"),
        (
            ["--dbc", "{tiny}", "--filter", "Sped"],
            "--filter: no message 'Sped' in the database; did you mean 'Speed'?",
        ),
        (["--filter", "Speed"], "--filter names messages: it needs --dbc"),
        (["--interface", "nope"], '--interface nope: Unknown interface type "nope" (python-can knows'),
        (
            ["--interface", "socketcan", "--channel", "vwosnope0"],
            "cannot open socketcan channel 'vwosnope0': ",
        ),
    ],
)
def test_dump_bad_inputs_exit_2_with_one_clear_line(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    garbage = tmp_path / "garbage.dbc"
    garbage.write_text("BO_ this is not a database\n")
    paths = {"missing": tmp_path / "missing.dbc", "garbage": garbage, "tiny": tiny}
    argv = [str(a).format(**paths) for a in argv]
    if "--interface" not in argv:
        argv += ["--interface", "virtual", "--channel", channel()]
    assert tool("can", "dump", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vwos can: ")
    assert expected.format(**paths) in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


# -- replay -----------------------------------------------------------------------------------------------

TIMES = [100.0, 100.01, 100.5, 101.25]


def recording() -> list[can.Message]:
    return [
        can.Message(
            timestamp=TIMES[0], arbitration_id=0x100, data=b"\x01\x02", is_extended_id=False, channel=0
        ),
        can.Message(
            timestamp=TIMES[1], arbitration_id=0x19000100, data=b"\x03", is_extended_id=True, channel=0
        ),
        can.Message(timestamp=TIMES[2], arbitration_id=0x200, data=b"", is_extended_id=False, channel=0),
        can.Message(timestamp=TIMES[3], arbitration_id=0x100, data=bytes(8), is_extended_id=False, channel=0),
    ]


def write_log(path: Path, messages: list[can.Message]) -> Path:
    """Write ``messages`` with python-can's own writer for the suffix: candump -L ``.log`` or ``.asc``."""
    writer = can.CanutilsLogWriter(path, channel="vcan0") if path.suffix == ".log" else can.ASCWriter(path)
    with writer:
        for msg in messages:
            writer.on_message_received(msg)
    return path


class Recorder:
    """A fake send: what was sent, and when on trio's clock (from the first send)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, can.Message]] = []

    def __call__(self, msg: can.Message) -> None:
        self.sent.append((trio.current_time(), msg))

    @property
    def times(self) -> list[float]:
        return [t - self.sent[0][0] for t, _ in self.sent]


@pytest.mark.parametrize("suffix", [".log", ".asc"])
@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
async def test_replay_keeps_the_recorded_timing_scaled_by_speed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, suffix: str, speed: float
) -> None:
    log = write_log(tmp_path / f"drive{suffix}", recording())
    send = Recorder()
    stats = await replay(log, send, speed=speed)
    expected = [(t - TIMES[0]) / speed for t in TIMES]
    assert send.times == pytest.approx(expected, abs=1e-9)
    assert [(m.arbitration_id, bytes(m.data), m.is_extended_id) for _, m in send.sent] == [
        (m.arbitration_id, bytes(m.data), m.is_extended_id) for m in recording()
    ]
    assert (stats.frames, stats.skipped, stats.rounds) == (4, 0, 1)
    assert (stats.recorded, stats.elapsed) == pytest.approx((1.25, expected[-1]))


async def test_replay_at_speed_0_sends_at_once_without_the_recorded_channel(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "drive.log", recording())
    with read_log(log) as frames:
        assert all(m.channel for m in frames)  # SocketCAN would send these to the recorded interface
    send = Recorder()
    await replay(log, send, speed=0)
    assert send.times == [0, 0, 0, 0]
    assert {m.channel for _, m in send.sent} == {None}


async def test_replay_loops_until_cancelled_and_skips_error_frames(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    messages = recording()
    messages.insert(2, can.Message(timestamp=100.2, is_error_frame=True))
    log = write_log(tmp_path / "drive.log", messages)
    send = Recorder()
    stats = ReplayStats()
    with trio.move_on_after(2.8):
        await replay(log, send, loop=True, stats=stats)
    # Each round starts when the previous one ends: frames at 0, .01, .5, 1.25, then 1.25 + the same.
    assert send.times == pytest.approx([0, 0.01, 0.5, 1.25, 1.25, 1.26, 1.75, 2.5, 2.5, 2.51], abs=1e-9)
    assert (stats.frames, stats.rounds, stats.skipped) == (10, 2, 3)


async def test_replay_refuses_fd_frames_on_a_classic_bus(tmp_path: Path) -> None:
    fd = can.Message(timestamp=1.0, arbitration_id=0x100, data=bytes(12), is_fd=True, is_extended_id=False)
    log = write_log(tmp_path / "fd.log", [fd])
    with pytest.raises(ToolError, match=r"fd\.log: frame 1 is CAN FD: replay it with --fd"):
        await replay(log, Recorder(), fd=False)
    send = Recorder()
    await replay(log, send, fd=True)
    assert send.sent[0][1].is_fd


async def test_replay_retries_a_full_transmit_queue_then_gives_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "drive.log", recording()[:1])
    refusals = 3

    def busy(msg: can.Message) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise can.CanOperationError("Failed to transmit: [Errno 105] No buffer space available")

    assert (await replay(log, busy)).frames == 1
    refusals = 10_000
    with pytest.raises(LinkDownError, match=r"refused frames for 1 s: .*No buffer space"):
        await replay(log, busy)


BAD_LOGS = {
    "bad.log": ("(0.000000) vcan0 100#1122\n(0.010000) vcan0 100#3344\n(0.020000) vcan0 1O0#55\n", "line 3"),
    "bad.asc": (
        "base hex  timestamps absolute\nno internal events logged\n"
        " 0.000000 1  100             Rx   d 2 01 02\n 0.010000 1  100             Rx   d 2 01 zz\n",
        "line 4",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_LOGS))
async def test_an_unreadable_line_is_named(tmp_path: Path, name: str) -> None:
    text, where = BAD_LOGS[name]
    log = tmp_path / name
    log.write_text(text)
    send = Recorder()
    with pytest.raises(ToolError) as info:
        await replay(log, send, speed=0)
    assert str(info.value).startswith(f"{log}: {where}: not a frame python-can can read (ValueError: ")
    assert len(send.sent) in (1, 2)  # what came before the bad line was sent


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("missing.log", None, "missing.log: no such file"),
        (
            "drive.txt",
            "(0.0) vcan0 100#11\n",
            "drive.txt: cannot read it: No read support for unknown log format",
        ),
        ("empty.log", "\n", "empty.log: no CAN frames in the file"),
        ("bad.log", "(0.000000) vcan0 100#1122\nnot a frame at all\n", "bad.log: line 2: not a frame"),
    ],
)
def test_replay_command_bad_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, expected: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert tool("can", "replay", path, "--interface", "virtual", "--channel", channel(), "--speed", "0") == 2
    err = capsys.readouterr().err
    assert f"vwos can: {tmp_path / expected}" in err
    assert "Traceback" not in err


@pytest.fixture
def mock_time(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """Run the commands' trio loop in mock time."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    monkeypatch.setattr(cli, "_clock", clock)
    return clock


def test_replay_command_on_the_virtual_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mock_time: trio.testing.MockClock
) -> None:
    log = write_log(tmp_path / "drive.asc", recording())
    ch = channel()
    with can.Bus(interface="virtual", channel=ch) as listener:
        assert tool("can", "replay", log, "--interface", "virtual", "--channel", ch, "--speed", "2") == 0
        received = drain(listener)
    assert [(m.arbitration_id, bytes(m.data)) for m in received] == [
        (m.arbitration_id, bytes(m.data)) for m in recording()
    ]
    out = capsys.readouterr().out
    assert out == f"replayed 4 frames from {log} in 0.625 s (recorded 1.250 s, speed 2)\n"
    assert mock_time.current_time() == pytest.approx(0.625)


# -- sim --------------------------------------------------------------------------------------------------


class FrameRecorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, Frame]] = []

    def __call__(self, frame: Frame) -> None:
        self.sent.append((trio.current_time(), frame))

    def times(self, frame_id: int) -> list[float]:
        return [t for t, f in self.sent if f.arbitration_id == frame_id]


async def simulate(ecu: SimulatedEcu, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await ecu.run()


def decoded(codec: CanCodec, frames: list[Frame]) -> Iterator[tuple[Any, Any]]:
    """(cantools message, record) of each frame, decoded by the gateway's codec."""
    for frame in frames:
        ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
        yield codec.db.get_message_by_frame_id(frame.arbitration_id), record


def assert_in_range(message: Any, record: Any) -> None:
    for sig, field in zip(message.signals, attrs.fields(type(record)), strict=True):
        value = getattr(record, field.name)
        if isinstance(value, NotAvailable):  # a value the database itself marks as "no valid value"
            assert value.reason == "not_available", f"{message.name}.{sig.name} = {value}"
            continue
        if value is None or sig.minimum is None or sig.maximum is None:
            continue
        assert sig.minimum - 1e-9 <= value <= sig.maximum + 1e-9, f"{message.name}.{sig.name} = {value}"


async def test_sim_sends_each_message_at_its_cycle_time(
    autojump_clock: trio.testing.MockClock, tiny: Path
) -> None:
    send = FrameRecorder()
    ecu = SimulatedEcu(load_database(tiny), send, default_cycle=0.25)
    assert ecu.messages == ["Speed", "Doors", "Battery", LONG, LONGER]
    assert [ecu.cycle(m) for m in ecu.messages] == [0.02, 0.1, 0.25, 0.25, 0.05]
    begin = trio.current_time()
    await simulate(ecu, 2.0)
    for frame_id, cycle, index in [(0x100, 0.02, 0), (0x200, 0.1, 1), (0x19000100, 0.25, 2)]:
        times = send.times(frame_id)
        assert times[0] - begin == pytest.approx(cycle * index / 5)  # first frames spread over a cycle
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps == pytest.approx([cycle] * len(gaps), abs=1e-9)
        assert abs(len(times) - 2.0 / cycle) <= 1
    assert ecu.sent == len(send.sent) == sum(ecu.statistics().values())
    assert ecu.skipped == {}


async def test_sim_values_are_plausible_and_decode(
    autojump_clock: trio.testing.MockClock, tiny: Path
) -> None:
    send = FrameRecorder()
    ecu = SimulatedEcu(load_database(tiny), send)
    await simulate(ecu, 30.0)
    codec = tiny_codec(tiny)
    speed = [r for m, r in decoded(codec, [f for _, f in send.sent]) if m.name == "Speed"]
    doors = [r for m, r in decoded(codec, [f for _, f in send.sent]) if m.name == "Doors"]
    assert 1500 <= len(speed) <= 1501
    for message, record in decoded(codec, [f for _, f in send.sent]):
        assert_in_range(message, record)
    # Counters count; checksums are the XOR of the other bytes; scaled signals move smoothly.
    assert [r.Speed_BZ for r in speed[:20]] == [i % 16 for i in range(20)]
    for _, frame in send.sent:
        if frame.arbitration_id == 0x100:
            others = frame.data[:3] + frame.data[4:]
            assert (
                frame.data[3]
                == others[0] ^ others[1] ^ others[2] ^ others[3] ^ others[4] ^ others[5] ^ others[6]
            )
    speeds = [r.VehicleSpeed for r in speed]
    assert max(speeds) - min(speeds) > 20  # it moves ...
    assert max(abs(b - a) for a, b in itertools.pairwise(speeds)) < 1  # ... slowly (per 20 ms)
    assert min(speeds) >= 0.05 * 250 - 0.01
    assert max(speeds) <= 0.45 * 250 + 0.01
    angles = [r.SteeringAngle for r in speed]
    assert min(angles) < 0 < max(angles)  # around zero
    # An enumeration steps through its choices (Park, Reverse, Neutral, Drive), seconds each.
    gears = [r.Gear for r in speed]
    assert set(gears) == {0, 1, 2, 3}
    assert sum(a != b for a, b in itertools.pairwise(gears)) <= 30 / 2 + 1
    assert {r.Locked for r in doors} == {0}  # a plain flag stays put
    temperatures = {r.Temperature for r in doors}
    assert len(temperatures) > 3
    assert all(isinstance(t, int) for t in temperatures)


async def test_sim_of_the_mqb_database_decodes_without_errors(
    autojump_clock: trio.testing.MockClock, mqb_dbc: Path
) -> None:
    db = load_database(mqb_dbc, strict=False)
    send = FrameRecorder()
    ecu = SimulatedEcu(db, send)
    # cantools cannot encode a message whose signals overlap: PLA_01 in this file.
    assert list(ecu.skipped) == ["PLA_01"]
    assert "The signals PLA_Bremsverzoegerung and PLA_Bremsmoment are overlapping" in ecu.skipped["PLA_01"]
    assert len(ecu.messages) == len(db.messages) - 1
    await simulate(ecu, 1.0)
    codec = CanCodec(db, "mqb", codec=Codec())
    frames = [f for _, f in send.sent]
    assert set(ecu.statistics().values()) <= {10, 11}  # 100 ms each: no cycle times in this file
    vin = []
    for message, record in decoded(codec, frames):
        assert_in_range(message, record)
        if message.name == "VIN_01":
            vin.append(record.VIN_01_MUX)
    assert vin[:10] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # a multiplexed message goes through its pages


# Extended multiplexing: the multiplexer ``Sub`` is itself multiplexed (sent with ``Page`` 0).
EXTENDED_MUX_DBC = """VERSION ""

BO_ 256 Pages: 4 ECU
 SG_ Page M : 0|8@1+ (1,0) [0|255] "" GW
 SG_ Sub m0M : 8|8@1+ (1,0) [0|255] "" GW
 SG_ Level m0 : 24|8@1+ (1,0) [0|255] "" GW
 SG_ Odometer m1 : 8|16@1+ (1,0) [0|65535] "km" GW
 SG_ Fuel m1 : 16|8@1+ (1,0) [0|255] "l" GW
 SG_ Range m2 : 16|8@1+ (1,0) [0|255] "km" GW

BO_ 512 Plain: 1 ECU
 SG_ Lamp : 0|8@1+ (1,0) [0|255] "" GW

SG_MUL_VAL_ 256 Sub Page 0-0;
SG_MUL_VAL_ 256 Level Page 0-0;
SG_MUL_VAL_ 256 Fuel Sub 1-1;
SG_MUL_VAL_ 256 Range Sub 2-2;
SG_MUL_VAL_ 256 Odometer Page 1-1;
"""


@pytest.fixture
def extended_mux(tmp_path: Path) -> Path:
    path = tmp_path / "extended_mux.dbc"
    path.write_text(EXTENDED_MUX_DBC)
    return path


def test_a_nested_multiplexer_without_a_value_is_an_encode_error(extended_mux: Path) -> None:
    codec = CanCodec(load_database(extended_mux), "ext", codec=Codec())
    frame = codec.encode("Pages", {"Page": 0, "Sub": 1, "Level": 7, "Fuel": 42}, base={})
    ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
    assert (record.Page, record.Sub, record.Level, record.Fuel, record.Range) == (0, 1, 7, 42, None)
    with pytest.raises(EncodeError, match=r"^Pages\.Sub: no value for this multiplexer \(it may be 1, 2\)$"):
        codec.encode("Pages", {"Page": 0, "Level": 7}, base={})
    with pytest.raises(EncodeError, match=r"^Pages\.Sub: 0\.0 selects nothing \(it may be 1, 2\)$"):
        codec.encode("Pages", {"Page": 0, "Level": 7})  # Sub's default, 0
    with pytest.raises(EncodeError, match=r'^Pages: cannot encode: .*"Level"'):
        codec.encode("Pages", {"Page": 0, "Sub": 2, "Range": 9}, base={})
    with pytest.raises(EncodeError, match=r"^Pages: Range not sent with these multiplexer values$"):
        codec.encode("Pages", {"Page": 0, "Sub": 1, "Range": 9})
    assert codec.encode("Pages", {"Page": 1, "Odometer": 513}, base={}).data == bytes([1, 1, 2, 0])


async def test_sim_leaves_out_a_message_whose_nested_multiplexer_it_cannot_set(
    autojump_clock: trio.testing.MockClock, extended_mux: Path
) -> None:
    send = FrameRecorder()
    ecu = SimulatedEcu(load_database(extended_mux), send)
    assert ecu.messages == ["Plain"]
    assert ecu.skipped == {"Pages": "Pages.Sub: no value for this multiplexer (it may be 1, 2)"}
    await simulate(ecu, 1.0)
    assert {f.arbitration_id for _, f in send.sent} == {0x200}
    assert ecu.sent == len(send.sent) == 10


def test_sim_command_warns_of_a_message_it_leaves_out(
    extended_mux: Path, capsys: pytest.CaptureFixture[str], mock_time: trio.testing.MockClock
) -> None:
    ch = channel()
    with can.Bus(interface="virtual", channel=ch) as listener:
        code = tool("can", "sim", extended_mux, "--interface", "virtual", "--channel", ch, "--duration", "1")
        received = drain(listener)
    assert code == 0
    assert {m.arbitration_id for m in received} == {0x200}
    captured = capsys.readouterr()
    assert captured.out == f"sent {len(received)} frames of 1 message in 1.000 s\n"
    reason = "Pages.Sub: no value for this multiplexer (it may be 1, 2)"
    assert f"vwos can: warning: Pages is not simulated: {reason}\n" in captured.err


def test_sim_schedule_without_io(tiny: Path) -> None:
    ecu = SimulatedEcu(load_database(tiny), lambda frame: None, messages=["Doors", "Speed"])
    assert ecu.messages == ["Speed", "Doors"]
    assert ecu.next_due() == math.inf
    ecu.start(10.0)
    assert ecu.next_due() == 10.0
    assert [f.arbitration_id for f in ecu.poll(10.0)] == [0x100]
    assert ecu.next_due() == pytest.approx(10.02)
    # Late by more than a cycle: one frame each, no burst, and back on the original phase.
    assert sorted(f.arbitration_id for f in ecu.poll(10.5)) == [0x100, 0x200]
    assert ecu.next_due() == pytest.approx(10.52)
    assert ecu.poll(10.51) == []
    with pytest.raises(ValueError, match="no message 'Door' in the database; did you mean 'Doors'"):
        SimulatedEcu(load_database(tiny), lambda frame: None, messages=["Door"])
    with pytest.raises(KeyError, match="Battery: not one of the simulated messages"):
        ecu.frame("Battery", 0.0)


async def test_sim_run_reports_ready_and_accepts_a_codec(
    autojump_clock: trio.testing.MockClock, tiny: Path
) -> None:
    send = FrameRecorder()
    ecu = SimulatedEcu(tiny_codec(tiny), send, messages=["Doors"])
    async with trio.open_nursery() as nursery:
        assert ecu.next_due() == math.inf
        await nursery.start(ecu.run)
        assert ecu.next_due() < math.inf  # ready: the schedule has started
        await trio.sleep(0.45)
        nursery.cancel_scope.cancel()
    assert ecu.sent == 5


def test_sim_command_on_the_virtual_interface(
    tiny: Path, capsys: pytest.CaptureFixture[str], mock_time: trio.testing.MockClock
) -> None:
    ch = channel()
    with can.Bus(interface="virtual", channel=ch) as listener:
        code = tool(
            "can",
            "sim",
            tiny,
            "--interface",
            "virtual",
            "--channel",
            ch,
            "--messages",
            "Speed,Doors",
            "--duration",
            "1",
        )
        received = drain(listener)
    assert code == 0
    ids = [m.arbitration_id for m in received]
    assert ids.count(0x200) == 10
    assert ids.count(0x100) in (50, 51)
    captured = capsys.readouterr()
    assert captured.out == f"sent {len(received)} frames of 2 messages in 1.000 s\n"
    assert f"simulating 2 messages of {tiny} on virtual {ch} for 1 s" in captured.err
    codec = tiny_codec(tiny)
    for msg in received:
        codec.decode(msg.arbitration_id, msg.data)  # raises FrameError if not


# `vwos can ...` in a process of its own, until the `can` entry point is installed.
TOOL_SCRIPT = """
import argparse, sys
from services.can._cli import register
parser = argparse.ArgumentParser(prog="vwos")
register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sim_command_stops_cleanly_on_a_signal(tiny: Path, signum: int) -> None:
    argv = ["can", "sim", str(tiny), "--interface", "virtual", "--channel", channel()]
    proc = subprocess.Popen(
        [sys.executable, "-c", TOOL_SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        ready = wait_for_line(proc.stderr, "simulating")  # printed once the signals are handled
        assert ready[:1] == [f"simulating 5 messages of {tiny} on virtual {argv[-1]} (Ctrl-C stops)\n"]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert re.fullmatch(r"sent \d+ frames? of 5 messages in \d+\.\d{3} s\n", out)
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--messages", "Speed,Dors"],
            "--messages: no message 'Dors' in the database; did you mean 'Doors'?",
        ),
        (["--interface", "nope"], "--interface nope: "),
    ],
)
def test_sim_command_bad_inputs(
    tiny: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    if "--interface" not in argv:
        argv += ["--interface", "virtual", "--channel", channel()]
    assert tool("can", "sim", tiny, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vwos can: {expected}")
    assert "Traceback" not in err


def test_sim_command_drops_frames_the_link_refuses_then_gives_up(
    tiny: Path,
    capsys: pytest.CaptureFixture[str],
    mock_time: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing(MemoryTransport):
        def send(self, message: can.Message) -> None:
            raise LinkDownError("CanOperationError: [Errno 100] Network is down")

    monkeypatch.setattr(cli, "open_bus", lambda *args, **kwargs: Refusing())
    assert tool("can", "sim", tiny, "--messages", "Doors") == 1
    captured = capsys.readouterr()
    assert (
        "vwos can: warning: a frame was not sent (CanOperationError: [Errno 100] Network is down)"
        in captured.err
    )
    assert captured.err.splitlines()[-1] == (
        "vwos can: the CAN link failed: no frame was taken for 1 s: "
        "CanOperationError: [Errno 100] Network is down"
    )
    assert captured.out == "sent 0 frames of 1 message in 1.100 s, 11 dropped\n"


# -- gen --------------------------------------------------------------------------------------------------


def load_module(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    name = f"vwos_generated_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def assert_matches_the_codec(module: Any, codec: CanCodec) -> None:
    assert codec.network == module.NETWORK
    assert [t.name for t in module.TOPICS] == [t.name for t in codec.topics]
    for topic, generated in zip(codec.topics, module.TOPICS, strict=True):
        record, mine = topic.type, generated.type
        assert module.RECORDS[record.__name__] is mine
        assert getattr(module, f"{record.__name__}_TOPIC") is generated
        attrs.resolve_types(mine)  # the module's annotations are strings (from __future__ import annotations)
        theirs = [(f.name, f.type, f.default) for f in attrs.fields(record)]
        ours = [(f.name, f.type, f.default) for f in attrs.fields(mine)]
        assert ours == theirs, record.__name__
        # The same declaration but for the class: the name, max_age and the other rules.
        assert attrs.evolve(generated, type=record).same_declaration(topic)


def test_gen_mqb_matches_the_codec_and_is_mypy_strict_and_ruff_clean(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny: Path,
    mqb_dbc: Path,
) -> None:
    mqb = tmp_path / "mqb_topics.py"
    assert tool("can", "gen", mqb_dbc, "--no-strict", "-o", mqb, "--network", "mqb") == 0
    assert capsys.readouterr().err == f"wrote {mqb}: 113 messages of network mqb\n"
    small = tmp_path / "tiny_topics.py"
    assert tool("can", "gen", tiny, "-o", small) == 0
    text = mqb.read_text()
    assert text.startswith("# Generated by `vwos can gen` from vw_mqb.dbc (sha256 ")
    assert "    VIN_01_MUX: int | NotAvailable\n" in text  # the multiplexer is in every frame
    assert "    VIN_1: int | NotAvailable | None\n" in text  # None where the multiplexer leaves it out

    module = load_module(mqb, monkeypatch)
    db = load_database(mqb_dbc, strict=False)
    codec = CanCodec(db, "mqb", codec=Codec())
    assert_matches_the_codec(module, codec)
    # A record the codec decodes fits the generated class, field for field.
    frame = codec.encode("ESP_21", {"ESP_v_Signal": 87.5})
    ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
    copy = module.ESP_21(**attrs.asdict(record))
    assert attrs.astuple(copy) == attrs.astuple(record)
    assert_matches_the_codec(
        load_module(small, monkeypatch), CanCodec(load_database(tiny), "can0", codec=Codec())
    )

    # With the project's settings (line length, first-party packages, strict) and a cache of its own.
    config = str(ROOT / "pyproject.toml")
    files = [str(mqb), str(small)]
    checks = [
        ["ruff", "check", "--config", config, *files],
        ["ruff", "format", "--check", "--config", config, *files],
        ["mypy", "--config-file", config, "--strict", "--cache-dir", str(tmp_path / ".mypy"), *files],
    ]
    for command in checks:
        result = subprocess.run(
            [sys.executable, "-m", *command],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, f"{' '.join(command[:2])}:\n{result.stdout}{result.stderr}"


def test_gen_writes_to_stdout_with_docstrings_from_comments(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tool("can", "gen", tiny, "--network", "body") == 0
    text = capsys.readouterr().out
    assert "network body." in text.splitlines()[0]
    assert (
        '    """Speed (0x100, 8 bytes, every 20 ms). Vehicle speed and gear, from the \'ABS\' ECU."""' in text
    )
    assert "    #: Speed over ground [0, 250] km/h\n    VehicleSpeed: float | NotAvailable\n" in text
    assert "    #: [0, 7] 0: Park; 1: Reverse; 2: Neutral; 3: Drive\n    Gear: int | NotAvailable\n" in text
    assert 'Speed_TOPIC: Topic[Speed] = Topic("CAN.body.Speed", Speed, max_age=0.06)' in text
    assert 'Battery_TOPIC: Topic[Battery] = Topic("CAN.body.Battery", Battery)' in text
    assert '    """Doors (0x200, 2 bytes, every 100 ms).\n\n    The doors: whether' in text
    assert 'class Battery:\n    """Battery (0x19000100 extended, 4 bytes)."""' in text


def test_gen_refuses_names_it_cannot_use(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tool("can", "gen", tiny, "--network", "body-2") == 2
    assert (
        capsys.readouterr().err == "vwos can: --network 'body-2': must be letters, digits and underscores\n"
    )
    clash = tmp_path / "clash.dbc"
    clash.write_text(TINY_DBC.replace("BO_ 512 Doors:", "BO_ 512 Speed_TOPIC:"))
    with pytest.raises(CanDatabaseError, match="message 'Speed_TOPIC': cannot be the name of a class"):
        generate_topics(load_database(clash))
    assert tool("can", "gen", clash) == 2
    assert (
        "message 'Speed_TOPIC': cannot be the name of a class in the generated module"
        in capsys.readouterr().err
    )
    assert tool("can", "gen", tmp_path / "nope.dbc") == 2
    assert capsys.readouterr().err == f"vwos can: {tmp_path / 'nope.dbc'}: no such file\n"


# -- the extension, as `vwos` loads it --------------------------------------------------------------------


def test_vwos_can_through_the_entry_point(
    tiny: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = importlib.metadata.EntryPoint("can", "services.can._cli:register", vwos._cli.COMMANDS_GROUP)
    monkeypatch.setattr(vwos._cli, "_command_entry_points", lambda: [entry])
    assert vwos._cli.main(["can", "gen", str(tiny)]) == 0
    assert "class Speed:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        vwos._cli.main(["can"])
    assert info.value.code == 2
    assert "the following arguments are required: TOOL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("problem", "hint"),
    [
        ("vcan7: the interface is down", "(sudo ip link set up vcan7)"),
        ("vcan7: no such network interface", "(a virtual one: sudo ip link add dev vcan7 type vcan && "),
    ],
)
def test_dump_refuses_a_socketcan_interface_that_is_down_or_missing_before_opening_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], problem: str, hint: str
) -> None:
    """A SocketCAN socket opens fine on an interface that is down, and then nothing ever arrives: the
    tools ask the kernel first (as the gateway does), and say how to bring it up."""
    monkeypatch.setattr(can_transport, "socketcan_link_problem", lambda channel: problem)

    def no_bus(**kwargs: Any) -> None:
        raise AssertionError("can.Bus must not be opened")

    monkeypatch.setattr(can, "Bus", no_bus)
    assert tool("can", "dump", "--interface", "socketcan", "--channel", "vcan7") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vwos can: cannot open socketcan channel 'vcan7': {problem} {hint}")
