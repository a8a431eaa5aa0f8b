"""The CAN gateway's raw frames (``raw_frames = true``): every received frame on ``CAN.<network>.frames``,
unknown ids, remote, error and CAN FD frames included, with their flags; nothing of it when off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import can
import pytest
import trio
import trio.testing
from test_can_gateway import DBC, Link, config, gateway, speed_frame, status

from bus import Topic, default_codec
from services.can import CanGateway, GatewayConfig, RawFrame, SignalMapping, frames_topic
from vwos import StructureError
from vwos.testing import open_harness

pytestmark = pytest.mark.usefixtures("vwos_bus_client")

FRAMES = "CAN.body.frames"


def odd_frames() -> list[can.Message]:
    """A frame of each kind the database does not decode, and one it does."""
    t = 1_700_000_000.5
    return [
        speed_frame(42.0, timestamp=t),
        can.Message(arbitration_id=0x7AB, data=b"\x01\x02", is_extended_id=False, timestamp=t + 0.1),
        can.Message(arbitration_id=0x100, data=b"\x01\x02", is_extended_id=True, timestamp=t + 0.2),
        can.Message(
            arbitration_id=0x100, is_remote_frame=True, dlc=8, is_extended_id=False, timestamp=t + 0.3
        ),
        can.Message(
            arbitration_id=0x40, is_error_frame=True, data=bytes(8), is_extended_id=False, timestamp=t + 0.4
        ),
        can.Message(
            arbitration_id=0x123,
            is_fd=True,
            bitrate_switch=True,
            error_state_indicator=True,
            data=bytes(range(64)),
            is_extended_id=False,
            timestamp=t + 0.5,
        ),
        # 500 km/h, out of range: the speed is not available, the frame is as it came
        can.Message(
            arbitration_id=0x100, data=b"\x50\xc3" + bytes(6), is_extended_id=False, timestamp=t + 0.6
        ),
    ]


async def test_every_received_frame_is_published_as_it_is_with_its_flags(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    sent = odd_frames()
    async with open_harness(gateway(link, raw_frames=True)) as car:
        link.transport.inject(*sent)
        await car.expect(status_topic_name(), lambda s: s.frames_received == len(sent))
        frames = car.samples(FRAMES)
        speeds = car.samples("CAN.body.Speed")
        final = await status(car)
    assert [s.timestamp for s in frames] == [m.timestamp for m in sent]
    assert [s.seq for s in frames] == list(range(1, len(sent) + 1))
    assert all(s.publisher == "gateway" for s in frames)
    got = [s.value for s in frames]
    assert all(type(v) is RawFrame for v in got)
    assert [(v.arbitration_id, v.extended, v.remote, v.error, v.fd) for v in got] == [
        (0x100, False, False, False, False),
        (0x7AB, False, False, False, False),
        (0x100, True, False, False, False),
        (0x100, False, True, False, False),
        (0x40, False, False, True, False),
        (0x123, False, False, False, True),
        (0x100, False, False, False, False),
    ]
    assert got[0].data == bytes(sent[0].data)
    assert type(got[0].data) is bytes
    assert got[3].dlc == 8
    assert got[3].data == b""
    assert (got[5].bitrate_switch, got[5].error_state_indicator, got[5].dlc) == (True, True, 64)
    assert got[5].data == bytes(range(64))
    # the decoded topics and the counters are what they are without raw frames
    assert len(speeds) == 2
    assert (final.decoded, final.unknown_ids, final.remote_frames, final.error_frames, final.fd_frames) == (
        2,
        2,
        1,
        1,
        1,
    )
    assert final.raw_frames_dropped == 0


def status_topic_name() -> str:
    return "CAN.body.Status"


async def test_without_raw_frames_no_frames_topic_exists(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    async with open_harness(gateway(link)) as car:
        link.transport.inject(*odd_frames())
        await car.expect(status_topic_name(), lambda s: s.frames_received == 7)
        assert car.samples(FRAMES) == []
        assert FRAMES not in {t.name for t in car.bus.topics()}


def test_the_receive_path_is_the_decoding_alone_without_raw_frames() -> None:
    """Zero cost when off: the batch handler is the gateway's `_handle` itself, no wrapper around it."""

    def prepared(cfg: GatewayConfig) -> CanGateway:
        gw = CanGateway(cfg)
        gw._prepare(lambda topic: _Sink(topic), lambda *a, **k: None)
        return gw

    off = prepared(config())
    assert off.receive == off._handle
    on = prepared(config(raw_frames=True))
    assert on.receive == on._handle_raw


class _Sink:
    def __init__(self, topic: Topic[Any], fail: bool = False) -> None:
        self.topic = topic
        self.fail = fail
        self.got: list[Any] = []

    def publish_nowait(self, value: Any, *, timestamp: float | None = None) -> None:
        if self.fail:
            raise trio.WouldBlock
        self.got.append(self.topic.check(value))

    async def publish(self, value: Any, *, timestamp: float | None = None) -> None:
        self.publish_nowait(value, timestamp=timestamp)


def test_raw_frames_the_bus_does_not_take_are_counted_and_decoding_goes_on() -> None:
    sinks: dict[str, _Sink] = {}

    def publisher(topic: Topic[Any]) -> _Sink:
        sinks[topic.name] = _Sink(topic, fail=topic.name == FRAMES)
        return sinks[topic.name]

    gw = CanGateway(config(raw_frames=True))
    gw._prepare(publisher, lambda *a, **k: None)
    gw.receive([speed_frame(10.0), speed_frame(20.0)])
    status = gw.status()
    assert (status.raw_frames_dropped, status.decoded, status.refused) == (2, 2, 0)
    assert [r.VehicleSpeed for r in sinks["CAN.body.Speed"].got] == [10.0, 20.0]


def test_bus_names_grant_the_frames_topic_only_with_raw_frames() -> None:
    assert FRAMES in CanGateway.bus_names(config(raw_frames=True)).publish  # type: ignore[union-attr]
    assert FRAMES not in CanGateway.bus_names(config()).publish  # type: ignore[union-attr]


def test_frames_is_a_name_of_the_gateway_a_message_or_mapping_may_not_take(tmp_path: Path) -> None:
    dbc = tmp_path / "frames.dbc"
    dbc.write_text(DBC.read_text().replace("BO_ 512 DoorCommand", "BO_ 512 frames"))
    with pytest.raises(StructureError, match=r"message 'frames' would publish on CAN\.body\.frames.*raw"):
        config(database=dbc)
    with pytest.raises(StructureError, match=r"CAN\.body\.frames is the gateway's raw frames topic"):
        config(signals=(SignalMapping("Speed.VehicleSpeed", FRAMES),))


def test_kernel_filters_are_off_with_raw_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    monkeypatch.setattr("services.can._gateway.open_python_can", lambda *a, **k: opened.append(k["filters"]))
    for raw in (False, True):
        gw = CanGateway(config(raw_frames=raw))
        gw._prepare(lambda topic: _Sink(topic), lambda *a, **k: None)
        gw.open_transport()
    filtered, unfiltered = opened
    assert filtered is not None
    assert len(filtered) == 3
    assert unfiltered is None  # unknown ids must reach the raw frames topic too


def test_the_frame_record_travels_with_its_schema() -> None:
    frame = RawFrame(0x1ABCDEF, True, True, False, False, True, False, 12, bytes(12))
    assert default_codec.decode(default_codec.encode(frame)) == frame
    fields = dict(default_codec.describe(RawFrame).fields or ())
    assert list(fields) == [
        "arbitration_id",
        "extended",
        "fd",
        "remote",
        "error",
        "bitrate_switch",
        "error_state_indicator",
        "dlc",
        "data",
    ]
    assert fields["data"] == "bytes"
    assert frames_topic("pt").name == "CAN.pt.frames"
    assert frames_topic("pt").type is RawFrame
