"""The CAN gateway on an in-memory link and on python-can's virtual interface, under trio's MockClock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import can
import pytest
import trio
import trio.testing

from bus import RemoteError, Topic
from services.can import (
    Actuator,
    CanCodec,
    CanDatabaseError,
    CanGateway,
    CanTransport,
    CyclicMessage,
    EncodeError,
    GatewayConfig,
    LinkDownError,
    LinkStatus,
    MemoryTransport,
    SendRequest,
    SignalMapping,
    load_database,
    send_method,
    status_topic,
)
from vwos import ServiceSpec, SupervisorPolicy
from vwos.testing import Harness, open_harness

# The services run on in-process bus clients, then on clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")

DBC = Path(__file__).parent / "data" / "test.dbc"
SPEED = Topic("Vehicle.Speed", float)


class Link:
    """A CAN link the test controls: plugged in or not, and its current in-memory transport."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()
        self.plugged = True
        self.opened = 0

    def unplug(self) -> None:
        self.plugged = False
        self.transport.down("[Errno 100] Network is down")

    def plug(self) -> None:
        self.plugged = True
        self.transport = MemoryTransport()


def gateway_on(link: Link) -> type[CanGateway]:
    class MemoryGateway(CanGateway):
        def open_transport(self) -> CanTransport:
            link.opened += 1
            if not link.plugged:
                raise LinkDownError("OSError: [Errno 19] No such device")
            return link.transport

    return MemoryGateway


def config(**kwargs: Any) -> GatewayConfig:
    kwargs.setdefault("database", DBC)
    kwargs.setdefault("network", "body")
    return GatewayConfig(**kwargs)


def speed_frame(kmh: float, *, counter: int = 0, timestamp: float = 1_700_000_000.25) -> can.Message:
    codec = CanCodec(load_database(DBC), "body")
    frame = codec.encode("Speed", {"VehicleSpeed": kmh, "Counter": counter})
    return can.Message(
        arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False, timestamp=timestamp
    )


def gateway(link: Link, **kwargs: Any) -> ServiceSpec:
    return ServiceSpec("gateway", gateway_on(link), config(**kwargs))


async def status(car: Harness, where: Any = None) -> LinkStatus:
    sample = await car.expect(status_topic("body"), where)
    value: LinkStatus = sample.value
    return value


# -- receive -------------------------------------------------------------------------------------------


async def test_frames_become_typed_message_samples_with_the_kernel_timestamp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    async with open_harness(gateway(link)) as car:
        link.transport.inject(speed_frame(88.5, counter=7))
        sample = await car.expect("CAN.body.Speed")
    record = sample.value
    assert type(record).__name__ == "Speed"
    assert attrs.asdict(record) == {"VehicleSpeed": 88.5, "Counter": 7, "Gear": 0}
    assert sample.timestamp == 1_700_000_000.25
    assert sample.publisher == "gateway"


async def test_mapped_signals_are_published_under_vss_names_with_unit_and_transform(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    mappings = (
        SignalMapping("Speed.VehicleSpeed", "Vehicle.Speed"),
        SignalMapping("Speed.VehicleSpeed", "Vehicle.SpeedMps", scale=1 / 3.6, unit="m/s"),
        SignalMapping("Speed.Gear", "Vehicle.Powertrain.Gear", type="int"),
    )
    async with open_harness(gateway(link, signals=mappings, message_topics=False)) as car:
        link.transport.inject(speed_frame(72.0))
        kmh = await car.expect("Vehicle.Speed")
        mps = await car.expect("Vehicle.SpeedMps")
        gear = await car.expect("Vehicle.Powertrain.Gear")
        topic = car.bus.topic("Vehicle.Speed")
        assert car.samples("CAN.body.Speed") == []  # message topics are off
    assert kmh.value == 72.0
    assert mps.value == pytest.approx(20.0)
    assert gear.value == 0
    assert type(gear.value) is int
    assert (topic.unit, topic.min, topic.max) == ("km/h", 0, 400)


async def test_bad_frames_are_counted_and_never_crash_the_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    async with open_harness(gateway(link)) as car:
        link.transport.inject(
            can.Message(arbitration_id=0x7FF, data=b"\x01", is_extended_id=False),  # not in the database
            can.Message(arbitration_id=0x100, data=b"\x01\x02", is_extended_id=False),  # Speed has 8 bytes
            can.Message(arbitration_id=0x100, is_error_frame=True),
            can.Message(arbitration_id=0x040, is_error_frame=True),  # CAN_ERR_BUSOFF
            speed_frame(10.0),
        )
        await car.expect("CAN.body.Speed")  # the good frame after the bad ones still gets through
        report = await status(car, lambda s: s.frames_received == 5)
        assert car.status()["gateway"].restarts == 0
    assert (report.unknown_ids, report.wrong_lengths, report.error_frames, report.bus_off) == (1, 1, 2, 1)
    assert report.state == "up"


async def test_message_topics_go_stale_after_three_cycle_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    async with open_harness(gateway(link)) as car:
        topic = car.bus.topic("CAN.body.Speed")
        assert topic.max_age == pytest.approx(0.060)  # GenMsgCycleTime 20 ms
        assert car.bus.topic("CAN.body.Battery").max_age is None  # no cycle time in the database
        link.transport.inject(speed_frame(10.0))
        await car.expect("CAN.body.Speed")
        assert not await car.client.is_stale("CAN.body.Speed")
        await trio.sleep(0.061)
        assert await car.client.is_stale("CAN.body.Speed")


# -- transmit ------------------------------------------------------------------------------------------


async def test_send_method_encodes_with_defaults_and_refuses_clearly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    async with open_harness(gateway(link, transmit=("DoorCommand",))) as car:
        send = send_method("body")
        assert await car.call(send, SendRequest("DoorCommand", {"LockRequest": 1})) is True
        with pytest.raises(
            RemoteError, match=r"DoorCommand: no signal 'Lock' \(signals: Interior, LockRequest\)"
        ):
            await car.call(send, SendRequest("DoorCommand", {"Lock": 1}))
        with pytest.raises(RemoteError, match=r"DoorCommand.LockRequest: 2 is out of range \[0, 1\]"):
            await car.call(send, SendRequest("DoorCommand", {"LockRequest": 2}))
        with pytest.raises(RemoteError, match="Speed is not in the gateway's transmit list"):
            await car.call(send, SendRequest("Speed", {"VehicleSpeed": 1}))
        with pytest.raises(RemoteError, match="no message 'Nope'"):
            await car.call(send, SendRequest("Nope", {}))
    (sent,) = link.transport.sent
    assert (sent.arbitration_id, bytes(sent.data)) == (0x200, b"\x01\x00")


async def test_cyclic_messages_go_out_at_their_period_and_carry_sent_values(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    cyclic = (CyclicMessage("DoorCommand", period=0.1, signals={"Interior": 1}),)
    async with open_harness(gateway(link, cyclic=cyclic)) as car:
        await trio.sleep(1.05)
        first = len(link.transport.sent)
        await car.call(send_method("body"), SendRequest("DoorCommand", {"LockRequest": 1}))
        await trio.sleep(0.5)
    assert first == 11  # at 0.0, 0.1, ..., 1.0
    assert [bytes(m.data) for m in link.transport.sent[:2]] == [b"\x02\x00", b"\x02\x00"]
    assert bytes(link.transport.sent[-1].data) == b"\x03\x00"  # LockRequest kept, Interior still 1


async def test_actuator_topics_become_frames(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    actuators = (Actuator("Body.Doors.LockRequest", "DoorCommand", "LockRequest", type="bool"),)
    async with open_harness(gateway(link, actuators=actuators, transmit=("DoorCommand",))) as car:
        car.publish("Body.Doors.LockRequest", True)
        await trio.sleep(0.01)
    (sent,) = link.transport.sent
    assert bytes(sent.data) == b"\x01\x00"


def test_a_wrong_cyclic_config_is_refused_with_a_clear_error() -> None:
    cyclic = (CyclicMessage("DoorCommand", period=0.1, signals={"Nope": 1}),)
    with pytest.raises(ValueError, match=r"cyclic\[0\]\.signals\.Nope: DoorCommand: no signal 'Nope'"):
        config(cyclic=cyclic)


def test_a_message_named_like_the_gateways_own_topics_is_refused_clearly(tmp_path: Path) -> None:
    dbc = tmp_path / "status.dbc"
    dbc.write_text(
        'VERSION ""\n\nBS_:\n\nBU_: ECU\n\n'
        'BO_ 100 Status: 1 ECU\n SG_ Ok : 0|8@1+ (1,0) [0|255] "" Vector__XXX\n'
    )
    with pytest.raises(ValueError, match=r"message 'Status' would publish on CAN.body.Status, which is the "):
        config(database=dbc)
    assert config(database=dbc, message_topics=False).database == dbc  # mapped signals only: no clash


def test_names_the_database_does_not_have_are_config_problems_at_their_keys(tmp_path: Path) -> None:
    """`vwos check` finds them: every one, at its key, with the closest name the database has."""
    from vwos import ConfigError, parse_config

    text = f"""
    [services.body]
    plugin = "can_gateway"
    [services.body.config]
    database = "{DBC}"
    transmit = ["DoorComand"]
    [[services.body.config.signals]]
    signal = "Speed.VehicleSped"
    topic = "Vehicle.Speed"
    [[services.body.config.cyclic]]
    message = "DoorCommand"
    period = 0.1
    signals = {{ Interior = 1, LockReqest = 1 }}
    [[services.body.config.actuators]]
    topic = "Vehicle.Cabin.Lock"
    message = "Nope"
    signal = "LockRequest"
    """
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    problems = {p.key_path.removeprefix("services.body.config."): p.message for p in info.value.problems}
    assert problems == {
        "transmit[0]": "no message 'DoorComand' in the database; did you mean 'DoorCommand'?",
        "signals[0].signal": "Speed: no signal 'VehicleSped'; did you mean 'VehicleSpeed'?",
        "cyclic[0].signals.LockReqest": "DoorCommand: no signal 'LockReqest'; did you mean 'LockRequest'?",
        "actuators[0].message": "no message 'Nope' in the database",
    }


# -- health --------------------------------------------------------------------------------------------


async def test_link_down_degrades_then_recovers_without_a_crash_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    policy = SupervisorPolicy(intensity=0, period=1.0)
    spec = gateway(link, reconnect_initial=0.1, reconnect_max=1.0, transmit=("DoorCommand",))
    async with open_harness(spec, policy=policy) as car:
        link.transport.inject(speed_frame(10.0))
        await car.expect("CAN.body.Speed")
        link.unplug()
        down = await status(car, lambda s: s.state == "down")
        assert "Network is down" in down.reason
        with pytest.raises(RemoteError, match="CAN network body is down"):
            await car.call(send_method("body"), SendRequest("DoorCommand", {}))
        await trio.sleep(10)  # unplugged for a while: retries back off to reconnect_max, no crash
        tries_while_down = link.opened
        link.plug()
        up = await status(car, lambda s: s.state == "up")
        link.transport.inject(speed_frame(20.0))
        again = await car.expect("CAN.body.Speed")
        assert car.status()["gateway"].restarts == 0
    assert again.value.VehicleSpeed == 20.0
    assert up.reconnects == 1
    assert 5 <= tries_while_down <= 16  # backed off: not one try per millisecond


async def test_an_interface_missing_at_start_is_degraded_not_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    link.plugged = False
    async with open_harness(gateway(link)) as car:  # ready although the link is not there
        down = await status(car, lambda s: s.state == "down")
        assert "No such device" in down.reason
        link.plug()
        await status(car, lambda s: s.state == "up")


# -- databases -----------------------------------------------------------------------------------------


def test_real_world_database_loads_non_strict_and_strict_failure_says_so(mqb_dbc: Path) -> None:
    db = load_database(mqb_dbc, strict=False)
    codec = CanCodec(db, "mqb_test")
    assert len(codec.topics) == len(db.messages) > 100
    with pytest.raises(CanDatabaseError, match=r"vw_mqb.dbc: cannot load .*strict = false"):
        load_database(mqb_dbc, strict=True)
    with pytest.raises(CanDatabaseError, match=r"nope\.dbc: no such file"):
        load_database(Path("nope.dbc"))


def test_two_codecs_of_one_network_share_record_classes() -> None:
    a = CanCodec(load_database(DBC), "shared")
    b = CanCodec(load_database(DBC), "shared")
    assert a.message_topic("Speed").type is b.message_topic("Speed").type


def test_records_round_trip_through_the_bus_codec() -> None:
    from bus import default_codec

    codec = CanCodec(load_database(DBC), "rt")
    frame = codec.encode("Battery", {"Voltage": 12.6, "Current": -3.5})
    ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
    assert default_codec.decode(default_codec.encode(record)) == record


# -- python-can's virtual interface --------------------------------------------------------------------


async def test_virtual_interface_in_poll_mode(autojump_clock: trio.testing.MockClock) -> None:
    spec = ServiceSpec(
        "gateway",
        CanGateway,
        config(interface="virtual", channel="vwos-test-virtual", receive_mode="poll", transmit=("*",)),
    )
    peer = can.Bus(interface="virtual", channel="vwos-test-virtual")
    try:
        async with open_harness(spec) as car:
            mode = await status(car, lambda s: s.state == "up")
            peer.send(speed_frame(33.0))
            sample = await car.expect("CAN.body.Speed")
            await car.call(send_method("body"), SendRequest("DoorCommand", {"LockRequest": 1}))
            echoed = peer.recv(timeout=0)
    finally:
        peer.shutdown()
    assert mode.mode == "poll"
    assert sample.value.VehicleSpeed == 33.0
    assert echoed is not None
    assert echoed.arbitration_id == 0x200


# -- config --------------------------------------------------------------------------------------------


def test_a_gateway_config_loads_from_toml_with_mappings_and_cyclic_messages(tmp_path: Path) -> None:
    from vwos import parse_config

    text = f"""
    [services.body]
    plugin = "can_gateway"
    [services.body.config]
    database = "{DBC}"
    network = "body"
    transmit = ["DoorCommand"]
    [[services.body.config.signals]]
    signal = "Speed.VehicleSpeed"
    topic = "Vehicle.Speed"
    [[services.body.config.cyclic]]
    message = "DoorCommand"
    period = 0.1
    signals = {{ Interior = 1 }}
    """
    (spec,) = parse_config(text, path=tmp_path / "vwos.toml").services
    assert spec.service_class is CanGateway
    assert spec.config.signals == (SignalMapping("Speed.VehicleSpeed", "Vehicle.Speed"),)
    assert spec.config.cyclic == (CyclicMessage("DoorCommand", 0.1, {"Interior": 1.0}),)


def test_a_missing_database_is_a_config_problem_at_its_key(tmp_path: Path) -> None:
    from vwos import ConfigError, parse_config

    text = '[services.body]\nplugin = "can_gateway"\n[services.body.config]\ndatabase = "nope.dbc"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    (problem,) = info.value.problems
    assert problem.key_path == "services.body.config.database"
    assert "nope.dbc: no such file" in problem.message


def test_multiplexed_messages_encode_the_selected_branch_and_decode_with_optional_fields(
    mqb_dbc: Path,
) -> None:
    codec = CanCodec(load_database(mqb_dbc, strict=False), "mqb_mux")
    frame = codec.encode("VIN_01", {"VIN_01_MUX": 1, "VIN_4": 65})
    ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
    assert (record.VIN_01_MUX, record.VIN_4, record.VIN_1) == (1, 65, None)
    with pytest.raises(EncodeError, match="VIN_01: VIN_4 not sent with these multiplexer values"):
        codec.encode("VIN_01", {"VIN_4": 65})
    with pytest.raises(EncodeError, match=r"VIN_01.VIN_01_MUX: 3 selects nothing \(it may be 0, 1, 2\)"):
        codec.encode("VIN_01", {"VIN_01_MUX": 3})


async def test_topics_from_vwos_can_gen_are_the_gateways_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    from services.can import generate_topics

    (tmp_path / "body_topics.py").write_text(generate_topics(load_database(DBC), network="gen"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import body_topics  # type: ignore[import-not-found]

    link = Link()
    spec = ServiceSpec("gateway", gateway_on(link), config(network="gen", topics_module="body_topics"))
    async with open_harness(spec) as car:
        with car.client.subscribe(body_topics.Speed_TOPIC) as speeds:  # typed: Subscription[Speed]
            link.transport.inject(speed_frame(61.0))
            sample = await speeds.receive()
    assert isinstance(sample.value, body_topics.Speed)
    assert sample.value.VehicleSpeed == 61.0


def test_a_stale_generated_module_is_refused() -> None:
    @attrs.frozen
    class Speed:
        VehicleSpeed: float

    with pytest.raises(CanDatabaseError, match="does not match the database"):
        CanCodec(load_database(DBC), "stale", records={"Speed": Speed})


def test_opening_an_interface_fails_only_with_link_down_and_leaks_no_bus() -> None:
    """receive_mode = "fd" on an interface without a file descriptor, an interface that does not exist:
    LinkDownError (the gateway's backoff handles it), never another exception out of the link task."""
    from services.can._transport import open_python_can

    with pytest.raises(LinkDownError, match="no file descriptor"):
        open_python_can("virtual", "fd-less", mode="fd")
    with pytest.raises(LinkDownError):
        open_python_can("no_such_interface", "x")


def test_the_one_opener_says_how_to_fix_what_it_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway, the simulator and the `vwos can` tools open python-can through one function, whose
    `LinkDownError` carries a hint: the gateway's status shows it as the CLI does."""
    import errno

    import services.can._transport as transport
    from services.can._transport import open_python_can

    with pytest.raises(LinkDownError) as unknown:
        open_python_can("no_such_interface", "x")
    assert str(unknown.value).startswith("CanInterfaceNotImplementedError: ")
    assert unknown.value.hint.startswith("python-can knows ")
    assert "socketcan" in unknown.value.hint
    assert unknown.value.describe() == f"{unknown.value} ({unknown.value.hint})"

    monkeypatch.setattr(
        transport, "socketcan_link_problem", lambda channel: f"{channel}: the interface is down"
    )
    with pytest.raises(LinkDownError) as down:
        open_python_can("socketcan", "vcan3")
    assert down.value.describe() == "vcan3: the interface is down (sudo ip link set up vcan3)"

    monkeypatch.setattr(transport, "socketcan_link_problem", lambda channel: None)

    def refuse(**kwargs: Any) -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported\nby protocol")

    monkeypatch.setattr(can, "Bus", refuse)
    with pytest.raises(LinkDownError) as no_socketcan:
        open_python_can("socketcan", "vcan3")
    assert no_socketcan.value.describe() == (
        "OSError: [Errno 97] Address family not supported by protocol"
        " (this kernel has no SocketCAN: sudo modprobe can_raw vcan)"
    )
    assert LinkDownError("plain").describe() == "plain"
