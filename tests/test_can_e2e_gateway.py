"""End-to-end protection in the CAN gateway and the simulator: checked on receive (a failing frame's
signals are not available, reason ``e2e``), filled on send (Send, cyclic messages, actuators, the
simulator), so round trips pass; its config checked like the rest, every problem at its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import can
import pytest
import trio
import trio.testing
from test_can_gateway import Link, gateway_on
from test_can_resilience import accounted

from bus import NotAvailable, Topic
from services.can import (
    E2E,
    Actuator,
    CanCodec,
    CyclicMessage,
    GatewayConfig,
    LinkStatus,
    SendRequest,
    SignalMapping,
    SimulatedEcu,
    bind_e2e,
    load_database,
    send_method,
    status_topic,
)
from vwos import ConfigError, ServiceSpec, parse_config
from vwos.testing import Harness, open_harness

# The services run on in-process bus clients, then on clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")

# Volkswagen's layout: CRC in byte 0, the alive counter in the low nibble of byte 1 (Profile 2); a Tesla
# message with its checksum in the last byte; an extended message whose id, as a standard id, is Brake's.
DBC = """VERSION ""
BS_:
BU_: ECU GW
BO_ 159 Brake: 8 ECU
 SG_ Brake_CRC : 0|8@1+ (1,0) [0|255] "" GW
 SG_ Brake_BZ : 8|4@1+ (1,0) [0|15] "" GW
 SG_ Pressure : 16|12@1+ (0.1,0) [0|409.5] "bar" GW
 SG_ Active : 28|1@1+ (1,0) [0|1] "" GW
BO_ 2147483807 BrakeExt: 8 ECU
 SG_ Level : 0|8@1+ (1,0) [0|255] "" GW
BO_ 264 Drive: 8 ECU
 SG_ Torque : 0|12@1+ (1,0) [0|4095] "Nm" GW
 SG_ Drive_Counter : 52|4@1+ (1,0) [0|15] "" GW
 SG_ Drive_Checksum : 56|8@1+ (1,0) [0|255] "" GW
"""
MAGIC = [0x40 + n for n in range(16)]
E2E_CONFIG = (
    E2E(message="Brake", profile="vw_mqb", data_id=MAGIC),
    E2E(message="Drive", profile="tesla"),
)
NETWORK = "chassis"


@pytest.fixture
def dbc(tmp_path: Path) -> Path:
    path = tmp_path / "e2e.dbc"
    path.write_text(DBC)
    return path


def protector(dbc: Path, message: str, counter: int = 0) -> Any:
    return bind_e2e(E2E_CONFIG, load_database(dbc))[message].protector(counter)


def frame(dbc: Path, message: str, signals: dict[str, float], data: bytes | None = None) -> can.Message:
    codec = CanCodec(load_database(dbc), "frames")
    encoded = codec.encode(message, signals)
    return can.Message(
        arbitration_id=encoded.arbitration_id,
        data=encoded.data if data is None else data,
        is_extended_id=encoded.is_extended_id,
        timestamp=1_700_000_000.0,
    )


def spec(dbc: Path, link: Link, **kwargs: Any) -> ServiceSpec:
    kwargs.setdefault("e2e", E2E_CONFIG)
    return ServiceSpec("gateway", gateway_on(link), GatewayConfig(database=dbc, network=NETWORK, **kwargs))


async def status(car: Harness, where: Any) -> LinkStatus:
    sample = await car.expect(status_topic(NETWORK), where)
    value: LinkStatus = sample.value
    return value


async def test_protected_frames_pass_and_a_bad_crc_or_counter_makes_every_signal_not_available(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    guard = protector(dbc, "Brake")
    good = [guard.protect(frame(dbc, "Brake", {"Pressure": 10.0 + n}).data) for n in range(3)]
    bad_crc = bytes([good[2][0] ^ 0xFF, *good[2][1:]])
    mapping = (SignalMapping("Brake.Pressure", "Chassis.Brake.Pressure"),)
    async with open_harness(spec(dbc, link, signals=mapping)) as car:
        link.transport.inject(frame(dbc, "Brake", {}, good[0]), frame(dbc, "Brake", {}, good[1]))
        first = await car.expect("Chassis.Brake.Pressure")
        second = await car.expect("Chassis.Brake.Pressure")
        link.transport.inject(frame(dbc, "Brake", {}, bad_crc))  # a wrong CRC
        crc = await car.expect_not_available("CAN.chassis.Brake", "e2e")
        link.transport.inject(frame(dbc, "Brake", {}, good[1]))  # the counter did not move since good[1]
        await car.expect_not_available("CAN.chassis.Brake", "e2e")
        link.transport.inject(frame(dbc, "Brake", {}, good[2]))  # in step again
        third = await car.expect("CAN.chassis.Brake", lambda r: r.Pressure == pytest.approx(12.0))
        report = await status(car, lambda s: s.frames_received == 5)
        pressures = car.samples("Chassis.Brake.Pressure")
    assert (first.value, second.value) == (pytest.approx(10.0), pytest.approx(11.0))
    assert (crc.available, crc.value) == (False, NotAvailable("e2e"))  # the whole message: one check
    assert [s.reason for s in pressures if not s.available] == ["e2e", "e2e"]  # the mapped topic too
    assert third.value.Brake_BZ == 2
    assert (report.decoded, report.e2e_failures) == (3, 2)
    assert accounted(report) == report.frames_received


async def test_an_extended_frame_with_a_protected_standard_id_is_not_checked_as_it(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    async with open_harness(spec(dbc, link)) as car:
        # 0x9F extended is BrakeExt, unprotected: its payload is no Brake frame and must not be checked as one
        link.transport.inject(frame(dbc, "BrakeExt", {"Level": 7}))
        sample = await car.expect("CAN.chassis.BrakeExt")
        report = await status(car, lambda s: s.frames_received == 1)
    assert sample.value.Level == 7
    assert (report.decoded, report.e2e_failures) == (1, 0)


async def test_send_cyclic_messages_and_actuators_fill_counter_and_crc(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    cyclic = (CyclicMessage("Drive", period=0.1, signals={"Torque": 100.0}),)
    actuators = (Actuator(topic="Chassis.Brake.Request", message="Brake", signal="Pressure"),)
    request = Topic("Chassis.Brake.Request", float)
    config = spec(dbc, link, transmit=("Brake",), cyclic=cyclic, actuators=actuators)
    async with open_harness(config) as car:
        await trio.sleep(0.35)  # Drive at 0, 0.1, 0.2, 0.3
        assert await car.call(send_method(NETWORK), SendRequest("Brake", {"Pressure": 5.0})) is True
        car.publish(request, 6.5)
        await trio.sleep(0.01)
        car.publish(request, 7.0)
        await trio.sleep(0.01)
    db = load_database(dbc)
    checkers = {name: p.checker() for name, p in bind_e2e(E2E_CONFIG, db).items()}
    sent: dict[str, list[bytes]] = {"Brake": [], "Drive": []}
    for message in link.transport.sent:
        name = db.get_message_by_frame_id(message.arbitration_id).name
        sent[name].append(bytes(message.data))
    assert len(sent["Drive"]) >= 4
    assert len(sent["Brake"]) == 3  # Send, then the actuator twice: one counter shared by both
    for name, frames in sent.items():
        assert [checkers[name].check(data) for data in frames] == [None] * len(frames), name
    brake: Any = db.get_message_by_name("Brake")
    decoded = [brake.decode(data) for data in sent["Brake"]]
    assert [d["Pressure"] for d in decoded] == pytest.approx([5.0, 6.5, 7.0])
    assert [d["Brake_BZ"] for d in decoded] == [0, 1, 2]


async def test_an_actuator_sample_that_is_not_available_is_not_sent_and_the_gateway_goes_on(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    actuators = (Actuator(topic="Chassis.Brake.Request", message="Brake", signal="Pressure"),)
    request = Topic("Chassis.Brake.Request", float)
    async with open_harness(spec(dbc, link, transmit=("Brake",), actuators=actuators)) as car:
        car.publish(request, NotAvailable("sensor_fault"))
        await trio.sleep(0.01)
        car.publish(request, 3.0)
        await trio.sleep(0.01)
        assert car.status()["gateway"].restarts == 0
    assert len(link.transport.sent) == 1


async def test_a_reconnect_starts_the_counter_check_anew(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    guard = protector(dbc, "Brake")
    frames = [guard.protect(frame(dbc, "Brake", {"Pressure": 1.0}).data) for _ in range(8)]
    async with open_harness(spec(dbc, link)) as car:
        link.transport.inject(frame(dbc, "Brake", {}, frames[0]))
        await car.expect("CAN.chassis.Brake")
        link.unplug()
        await status(car, lambda s: s.state == "down")
        link.plug()
        await status(car, lambda s: s.state == "up")
        link.transport.inject(frame(dbc, "Brake", {}, frames[7]))  # a jump of 7 over the gap: not a failure
        report = await status(car, lambda s: s.frames_received == 2)
    assert (report.decoded, report.e2e_failures) == (2, 0)


async def test_the_simulator_fills_e2e_so_the_gateway_passes_every_frame(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    ecu = SimulatedEcu(
        load_database(dbc),
        lambda f: link.transport.inject(
            can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=f.is_extended_id)
        ),
        e2e=bind_e2e(E2E_CONFIG, load_database(dbc)),
        default_cycle=0.01,
    )
    async with open_harness(spec(dbc, link)) as car:
        async with trio.open_nursery() as nursery:
            await nursery.start(ecu.run)
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
        report = await status(car, lambda s: s.frames_received == ecu.sent)
    assert ecu.sent >= 3 * 150
    assert report.e2e_failures == 0
    assert report.decoded == ecu.sent


def test_e2e_configs_that_do_not_fit_the_database_are_problems_at_their_keys(dbc: Path) -> None:
    text = f"""
[services.gw]
plugin = "can_gateway"
[services.gw.config]
database = "{dbc}"
[[services.gw.config.e2e]]
message = "Brakes"
profile = "vw_mqb"
data_id = [1]
[[services.gw.config.e2e]]
message = "Brake"
profile = "vw_mqb"
[[services.gw.config.e2e]]
message = "Drive"
profile = "p01"
data_id = [1]
crc_signal = "Torque"
[[services.gw.config.e2e]]
message = "Drive"
profile = "nonsense"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=dbc.parent / "vwos.toml")
    keys = [p.key_path.removeprefix("services.gw.config.") for p in info.value.problems]
    text_of = {k: p.message for k, p in zip(keys, info.value.problems, strict=True)}
    assert "e2e[0].message" in keys
    assert "did you mean 'Brake'" in text_of["e2e[0].message"]
    assert any(k.startswith("e2e[1]") and "data" in text_of[k] for k in keys)  # vw_mqb needs its data id
    assert any(k.startswith("e2e[2]") for k in keys)  # a 12-bit CRC
    assert "e2e[3].profile" in keys


def test_the_simulator_config_takes_e2e_too(dbc: Path) -> None:
    text = f"""
[services.sim]
plugin = "can_sim"
[services.sim.config]
database = "{dbc}"
[[services.sim.config.e2e]]
message = "Nope"
profile = "tesla"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=dbc.parent / "vwos.toml")
    assert [p.key_path for p in info.value.problems] == ["services.sim.config.e2e[0].message"]


async def test_a_frame_not_sent_takes_no_counter_value(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    """A cyclic period while the link is down, or a frame the interface refuses, uses up no counter value:
    the receiver sees one step per frame that reached the bus."""
    link = Link()
    cyclic = (CyclicMessage("Brake", period=0.1, signals={"Pressure": 2.0}),)
    async with open_harness(spec(dbc, link, cyclic=cyclic)) as car:
        await trio.sleep(0.25)  # 0, 0.1, 0.2: three frames
        link.unplug()
        await status(car, lambda s: s.state == "down")
        await trio.sleep(1.0)  # ten periods with nowhere to send
        link.transport.refusing = "[Errno 22] Invalid argument"
        link.plug()
        link.transport.refusing = "[Errno 22] Invalid argument"
        await status(car, lambda s: s.state == "up")
        await trio.sleep(0.3)  # refused
        link.transport.refusing = None
        await trio.sleep(0.25)
        sent_after = list(link.transport.sent)
        report = await status(car, lambda s: s.send_errors > 0)
    brake: Any = load_database(dbc).get_message_by_name("Brake")
    assert report.send_errors >= 2
    counters = [brake.decode(m.data)["Brake_BZ"] for m in sent_after]
    assert counters[:2] == [3, 4]  # after 0, 1, 2 went out before the outage


async def test_a_frame_failing_e2e_is_not_decoded_and_its_signals_are_not_counted(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    link = Link()
    guard = protector(dbc, "Brake")
    good = guard.protect(frame(dbc, "Brake", {"Pressure": 1.0}).data)
    raw = bytearray(good)
    raw[2:4] = b"\xff\x0f"  # Pressure raw 4095 = 409.5 bar: in range; and a wrong CRC now
    async with open_harness(spec(dbc, link)) as car:
        link.transport.inject(frame(dbc, "Brake", {}, bytes(raw)))
        report = await status(car, lambda s: s.frames_received == 1)
    assert (report.e2e_failures, report.decoded) == (1, 0)
    assert (report.signals_out_of_range, report.signals_not_available) == (0, 0)


async def test_the_simulator_survives_an_interface_that_refuses_its_frames(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    from services.can import CanSimulator, CanTransport, MemoryTransport, SimulatorConfig

    transport = MemoryTransport()
    transport.refusing = "[Errno 22] Invalid argument"

    class Sim(CanSimulator[SimulatorConfig]):
        def open_transport(self) -> CanTransport:
            return transport

    config = SimulatorConfig(database=dbc, messages=("Brake",), e2e=E2E_CONFIG[:1])
    async with open_harness(ServiceSpec("sim", Sim, config)) as car:
        await trio.sleep(1.0)
        assert car.status()["sim"].state.value == "running"
        assert car.status()["sim"].restarts == 0


def test_a_value_e2e_would_overwrite_is_a_config_problem(dbc: Path) -> None:
    text = f"""
[services.gw]
plugin = "can_gateway"
[services.gw.config]
database = "{dbc}"
transmit = ["Brake"]
[[services.gw.config.actuators]]
topic = "Chassis.Brake.Crc"
message = "Brake"
signal = "Brake_CRC"
[[services.gw.config.cyclic]]
message = "Brake"
period = 0.1
signals = {{ Brake_BZ = 3, Pressure = 1.0 }}
[[services.gw.config.e2e]]
message = "Brake"
profile = "vw_mqb"
data_id = [1]
[[services.gw.config.e2e]]
message = "Drive"
profile = "counter"
check_counter = false
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=dbc.parent / "vwos.toml")
    problems = sorted(
        (p.key_path.removeprefix("services.gw.config."), p.message) for p in info.value.problems
    )
    overwritten = "but E2E fills it in every frame sent: that value would never reach the bus"
    assert problems == [
        ("e2e[0].message", f"Brake.Brake_BZ is set by cyclic[0].signals, {overwritten}"),
        ("e2e[0].message", f"Brake.Brake_CRC is set by actuators[0], {overwritten}"),
        (
            "e2e[1].check_counter",
            "profile 'counter' with check_counter = false checks nothing: check it, or drop the entry",
        ),
    ]


def test_the_simulator_never_sends_a_value_the_gateway_decodes_as_not_available(tmp_path: Path) -> None:
    path = tmp_path / "state.dbc"
    path.write_text(
        'VERSION ""\nBS_:\nBU_: ECU\nBO_ 1 Mode: 1 ECU\n SG_ State : 0|3@1+ (1,0) [0|7] "" ECU\n'
        'VAL_ 1 State 0 "Off" 1 "Eco" 2 "Sport" 3 "n/a" ;\n'
    )
    db = load_database(path)
    codec = CanCodec(db, "t")
    frames: list[Any] = []
    ecu = SimulatedEcu(db, frames.append, default_cycle=0.5)
    ecu.start(0.0)
    for k in range(200):
        frames.extend(ecu.poll(k * 0.5))
    states = [codec.decode(f.arbitration_id, f.data, f.is_extended_id)[0][1].State for f in frames]
    assert len(states) >= 200
    assert NotAvailable("not_available") not in states
    assert {0, 1, 2} <= set(states)
