"""The gateway never dies on a frame: odd frames, refused values and refused sends are counted, and every
received frame is accounted for under exactly one counter — with real databases and random payloads."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import can
import pytest
import structlog
import structlog.testing
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_can_gateway import DBC, Link, gateway, gateway_on, speed_frame, status

from bus import NotAvailable, RemoteError, ValueRefusedError
from services.can import (
    CanCodec,
    CyclicMessage,
    FrameRefusedError,
    GatewayConfig,
    LinkStatus,
    SendRequest,
    SignalMapping,
    load_database,
    send_method,
    status_topic,
)
from vwos import ServiceSpec
from vwos.testing import open_harness

# The services run on in-process bus clients, then on clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")

SHARED = Path(__file__).resolve().parents[2] / "shared"
VW_MQB = SHARED / "dbc" / "vw_mqb.dbc"
MODEL3 = SHARED / "kuksa" / "Model3CAN.dbc"


def accounted(report: LinkStatus) -> int:
    """Every received frame is under exactly one of these."""
    return (
        report.decoded
        + report.unknown_ids
        + report.wrong_lengths
        + report.undecodable
        + report.remote_frames
        + report.fd_frames
        + report.error_frames
        + report.refused
        + report.e2e_failures
    )


async def test_remote_and_fd_frames_are_counted_as_such(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    async with open_harness(gateway(link)) as car:
        link.transport.inject(
            can.Message(arbitration_id=0x100, is_remote_frame=True, dlc=8),  # Speed's id, asked for
            can.Message(arbitration_id=0x100, is_fd=True, data=bytes(8)),  # an FD frame on a classic net
            speed_frame(10.0),
        )
        report = await status(car, lambda s: s.frames_received == 3)
        assert car.status()["gateway"].restarts == 0
    assert (report.remote_frames, report.fd_frames, report.wrong_lengths, report.decoded) == (1, 1, 0, 1)
    assert accounted(report) == report.frames_received


async def test_a_value_outside_a_mappings_own_range_is_not_available(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a mapping whose declared range is narrower than what the ECU sends: published as not available
    link = Link()
    narrow = (SignalMapping("Speed.VehicleSpeed", "Vehicle.Speed", max=50.0),)
    async with open_harness(gateway(link, signals=narrow)) as car:
        link.transport.inject(speed_frame(120.0), speed_frame(30.0))
        refused = await car.expect("Vehicle.Speed")
        kept = await car.expect("Vehicle.Speed")
        report = await status(car, lambda s: s.frames_received == 2)
        assert car.status()["gateway"].restarts == 0
    assert (refused.available, refused.reason) == (False, "out_of_range")
    assert kept.value == 30.0
    assert (report.refused, report.decoded) == (0, 2)
    assert (report.signals_out_of_range, report.signals_not_available) == (1, 0)
    assert accounted(report) == report.frames_received


SNA_DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 512 Fuel: 2 ECU
 SG_ Level : 0|8@1+ (0.5,0) [0|100] "%" ECU
 SG_ Range : 8|8@1+ (10,0) [0|2000] "km" ECU
VAL_ 512 Level 254 "Init" 255 "Fehler" ;
"""


async def test_signal_values_not_available_are_counted_in_the_status_by_reason(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    dbc = tmp_path / "fuel.dbc"
    dbc.write_text(SNA_DBC)
    link = Link()
    spec = ServiceSpec("gateway", gateway_on(link), GatewayConfig(database=dbc, network="body"))
    async with open_harness(spec) as car:
        link.transport.inject(
            can.Message(arbitration_id=512, data=bytes([255, 210]), is_extended_id=False),  # Fehler; 2100 km
            can.Message(arbitration_id=512, data=bytes([254, 10]), is_extended_id=False),  # Init; 100 km
            can.Message(arbitration_id=512, data=bytes([100, 10]), is_extended_id=False),  # 50 %; 100 km
        )
        report = await status(car, lambda s: s.frames_received == 3)
        fuel = car.samples("CAN.body.Fuel")
    assert [s.value.Level for s in fuel] == [NotAvailable("not_available")] * 2 + [50.0]
    assert [s.value.Range for s in fuel] == [NotAvailable("out_of_range"), 100, 100]
    assert (report.decoded, report.signals_not_available, report.signals_out_of_range) == (3, 2, 1)


async def test_a_value_the_bus_refuses_costs_only_its_frame(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a codec bug that yields a wrong-typed value for one frame: the bus refuses it, the next frame passes
    decode = CanCodec.decode

    def buggy(self: CanCodec, frame_id: int, data: bytes | bytearray, extended: bool | None = None) -> Any:
        pairs = decode(self, frame_id, data, extended)
        return [(t, "fast") for t, _ in pairs] if data[0] == 0xE0 else pairs

    monkeypatch.setattr(CanCodec, "decode", buggy)
    link = Link()
    with structlog.testing.capture_logs() as logs:
        async with open_harness(gateway(link)) as car:
            # 120 km/h: raw 12000, 0xE0 first
            link.transport.inject(speed_frame(120.0), speed_frame(30.0), speed_frame(120.0))
            kept = await car.expect("CAN.body.Speed")
            report = await status(car, lambda s: s.frames_received == 3)
            assert car.status()["gateway"].restarts == 0
    assert kept.value.VehicleSpeed == 30.0
    assert (report.refused, report.decoded) == (2, 1)
    assert accounted(report) == report.frames_received
    refused = [e for e in logs if e.get("kind") == "refused"]
    assert len(refused) == 1  # rate-limited: the second refusal within log_interval is counted, not logged
    assert refused[0]["log_level"] == "error"
    assert isinstance(refused[0]["exc_info"], ValueRefusedError)
    assert "frame 0x100" in refused[0]["detail"]
    assert "expected Speed, got str" in refused[0]["detail"]


async def test_send_of_an_fd_message_on_a_classic_network_is_a_clear_error(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    dbc = tmp_path / "fd.dbc"
    dbc.write_text(
        'VERSION ""\n\nBS_:\n\nBU_: ECU\n\n'
        "BO_ 512 Big: 16 ECU\n"
        ' SG_ Value : 0|8@1+ (1,0) [0|255] "" Vector__XXX\n\n'
        'BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","reserved",'
        '"reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved",'
        '"reserved","reserved","StandardCAN_FD","ExtendedCAN_FD";\n'
        'BA_DEF_DEF_ "VFrameFormat" "StandardCAN";\n'
        'BA_ "VFrameFormat" BO_ 512 14;\n'
    )
    link = Link()
    spec = ServiceSpec(
        "gateway", gateway_on(link), GatewayConfig(database=dbc, network="body", transmit=("*",))
    )
    async with open_harness(spec) as car:
        with pytest.raises(RemoteError, match=r"Big is a CAN FD message \(16 bytes\).*fd = false"):
            await car.call(send_method("body"), SendRequest("Big", {"Value": 1}))
        report = await status(car)
    assert link.transport.sent == []
    assert report.state == "up"


async def test_a_frame_the_interface_refuses_is_a_frame_error_not_link_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    link.transport.refusing = "[Errno 22] Invalid argument"
    async with open_harness(gateway(link, transmit=("Speed",), cyclic=(CyclicMessage("Speed", 0.1),))) as car:
        with pytest.raises(RemoteError, match="Invalid argument"):
            await car.call(send_method("body"), SendRequest("Speed", {"VehicleSpeed": 1.0}))
        await trio.sleep(1.0)  # the cyclic sender meets the same refusal ten times and goes on
        report = await status(car, lambda s: s.send_errors >= 10)
        assert car.status()["gateway"].restarts == 0
    assert report.state == "up"
    assert report.frames_sent == 0


def test_frame_refused_error_is_public() -> None:
    assert issubclass(FrameRefusedError, Exception)


# -- real databases, random payloads ---------------------------------------------------------------------


def _random_frames(db: Any, rng: random.Random, n: int) -> list[can.Message]:
    """Frames of the database's messages with random payloads, and some nasty ones around them."""
    messages = list(db.messages)
    frames = []
    for _ in range(n):
        roll = rng.random()
        message = rng.choice(messages)
        length = message.length
        if roll < 0.05:
            length = rng.randrange(0, 9)  # a wrong length, most of the time
        data = rng.randbytes(length)
        frames.append(
            can.Message(
                arbitration_id=message.frame_id if roll > 0.02 else rng.randrange(0x800),
                is_extended_id=message.is_extended_frame,
                is_fd=length > 8,
                is_remote_frame=0.05 <= roll < 0.06,
                data=b"" if 0.05 <= roll < 0.06 else data,
                dlc=length,
            )
        )
    return frames


@pytest.mark.parametrize(("path", "strict"), [(VW_MQB, False), (MODEL3, True)], ids=["vw_mqb", "Model3CAN"])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
async def test_random_payloads_of_real_databases_never_stop_the_gateway(
    path: Path, strict: bool, seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    db = load_database(path, strict=strict)
    frames = _random_frames(db, random.Random(seed), 400)
    fd = any(m.length > 8 for m in db.messages)
    link = Link()
    spec = ServiceSpec(
        "gateway", gateway_on(link), GatewayConfig(database=path, network="body", strict=strict, fd=fd)
    )
    async with open_harness(spec) as car:
        link.transport.inject(*frames)
        report: LinkStatus = (
            await car.expect(status_topic("body"), lambda s: s.frames_received == len(frames), timeout=30)
        ).value
        assert car.status()["gateway"].restarts == 0
        assert car.status()["gateway"].state.value == "running"
    assert accounted(report) == len(frames)
    assert report.decoded > 0


def test_dump_shows_a_frame_the_codec_cannot_build_instead_of_a_traceback(tmp_path: Path) -> None:
    from services.can import FrameView

    class Broken(CanCodec):
        def decode(self, frame_id: int, data: bytes | bytearray, extended: bool | None = None) -> Any:
            raise TypeError("__init__() missing 1 required positional argument: 'Sig'")

    view = FrameView(Broken(load_database(DBC), "body"))
    frame = speed_frame(10.0)
    record = view.record(frame)
    assert record["error"] == {
        "kind": "undecodable",
        "message": "TypeError: __init__() missing 1 required positional argument: 'Sig'",
    }
    assert "! undecodable: TypeError" in view.line(frame)
