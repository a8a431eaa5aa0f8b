"""The demo vehicle: its physics hang together, its frames decode, and it answers lock commands."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import attrs
import can
import pytest
import trio
import trio.testing
from demo_vehicle import (
    CYCLE_S,
    DRIVE,
    PARK,
    RPM_PER_KMH,
    SHIFT_UP_KMH,
    DemoVehicle,
    VehicleConfig,
    VehicleModel,
    leg_at,
)

from bus import Codec
from services.can import CanCodec, Frame, MemoryTransport, SimulatedEcu, load_database
from vwos import ServiceSpec
from vwos.testing import open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")

DBC = Path(__file__).resolve().with_name("demo_vehicle.dbc")


def config(**changes: Any) -> VehicleConfig:
    return attrs.evolve(VehicleConfig(database=DBC, receive=("Body_DoorCommand",)), **changes)


def locked_at(model: VehicleModel, t: float) -> bool:
    """Whether the central locking is locked at ``t`` (advancing the model there)."""
    model.advance(t)
    return model.locked


def drive(model: VehicleModel, seconds: float, step: float = 0.02) -> list[tuple[float, float, float]]:
    """Advance ``model`` by ``seconds``; (t, km/h, fuel rate l/h) at every step."""
    trace = []
    start = model.t
    for i in range(1, round(seconds / step) + 1):
        model.advance(start + i * step)
        trace.append((model.t, model.speed_kmh, model.fuel_rate))
    return trace


def test_distance_and_fuel_follow_speed_and_fuel_rate() -> None:
    model = VehicleModel(config(fuel_percent=60.0))
    trace = drive(model, 2 * CYCLE_S)
    # The odometer is the integral of the speed; the fuel burnt, of the fuel rate; the tank, what is left.
    km = sum(v * 0.02 / 3600 for _, v, _ in trace)
    litres = sum(r * 0.02 / 3600 for _, _, r in trace)
    assert model.odometer_km - 12_345.6 == pytest.approx(km, rel=0.01)
    assert model.fuel_used_l == pytest.approx(litres, rel=0.01)
    assert model.fuel_percent == pytest.approx(60.0 - 100 * model.fuel_used_l / 50.0)
    # Two drive cycles: a few km, a plausible consumption for a small petrol car driven briskly.
    assert 3.5 < model.distance_km < 5.5  # about 60 km/h on average
    assert 5 < 100 * model.fuel_used_l / model.distance_km < 12
    assert max(v for _, v, _ in trace) == pytest.approx(125 * 1.015, abs=3)


def test_the_engine_follows_the_gears_and_cuts_fuel_on_the_overrun() -> None:
    model = VehicleModel(config())
    seen: list[tuple[float, int, float, float]] = []
    for _ in range(round(CYCLE_S / 0.1)):
        model.advance(model.t + 0.1)
        seen.append((model.speed_kmh, model.gear, model.rpm, model.throttle))
    for kmh, gear, rpm, throttle in seen[10:]:  # after the start (cranking at 250 rpm)
        # The engine turns with the wheels in the gear engaged, or at least at idle (the converter slips).
        assert rpm == pytest.approx(min(6500, max(800 + 15 * throttle, kmh * RPM_PER_KMH[gear])))
        if gear:  # up at SHIFT_UP_KMH[gear], down 6 km/h under the gear's own up-shift speed
            assert (SHIFT_UP_KMH[gear - 1] - 6 if gear > 1 else 0) <= kmh
            assert kmh <= (SHIFT_UP_KMH[gear] if gear < 6 else math.inf)
    assert {gear for _, gear, _, _ in seen} == set(range(7))  # parked (0), then every gear
    # Braking from speed: no fuel at all; idling: a little.
    model = VehicleModel(config())
    drive(model, 90.0)  # on the motorway
    model.advance(96.0)  # braking off the motorway
    assert model.power_w < 0
    assert model.fuel_rate == 0.0
    model.advance(125.0)  # parked
    assert model.speed_kmh == 0
    assert model.fuel_rate == pytest.approx(0.7)


def test_the_punctured_tyre_loses_air_and_the_others_warm_up() -> None:
    model = VehicleModel(config(leaking_tyre="RL", leak_start_kpa=222.0, leak_kpa_per_min=60.0))
    assert model.pressure("RL") == pytest.approx(222.0)
    drive(model, 60.0)
    assert model.pressure("RL") == pytest.approx(222.0 - 60.0, abs=3)  # a minute at 60 kPa/min, a bit warmer
    for wheel in ("FL", "FR", "RR"):
        assert 240.0 < model.pressure(wheel) < 250.0  # warmer than when parked: higher
    drive(model, 600.0)
    assert model.cold_kpa["RL"] == 120.0  # it stops losing air, flat
    sound = VehicleModel(config(leaking_tyre="none"))
    drive(sound, 60.0)
    assert min(sound.cold_kpa.values()) == 240.0


def test_the_central_locking_answers_commands_after_its_delay() -> None:
    model = VehicleModel(config(lock_delay=0.2))
    assert locked_at(model, 10.0) is False
    model.receive("Body_DoorCommand", {"LockRequest": 1}, 10.0)
    assert locked_at(model, 10.15) is False  # not yet
    assert locked_at(model, 10.25) is True
    model.receive("Body_DoorCommand", {"LockRequest": 0}, 11.0)  # "none": nothing happens
    model.receive("Body_DoorCommand", {"LockRequest": 2}, 11.0)
    assert locked_at(model, 11.3) is False
    assert model.lock_commands == 2


def test_the_driver_unlocks_and_opens_the_door_when_parked_and_a_lock_is_refused_meanwhile() -> None:
    model = VehicleModel(config())
    model.receive("Body_DoorCommand", {"LockRequest": 1}, 5.0)
    park = CYCLE_S - 10.0  # the last leg: parked
    assert leg_at(park + 0.5)[3] == PARK
    assert leg_at(park - 0.5)[3] == DRIVE
    assert locked_at(model, park + 0.5) is True
    assert locked_at(model, park + 1.5) is False  # unlocked by the driver
    model.advance(park + 3.0)
    assert model.doors_open["FL"] is True
    model.receive("Body_DoorCommand", {"LockRequest": 1}, park + 3.0)
    assert locked_at(model, park + 4.0) is False  # not with a door open
    assert model.refused_commands == 1
    model.advance(park + 6.0)
    assert model.doors_open["FL"] is False


async def test_every_frame_encodes_and_decodes_in_range(autojump_clock: trio.testing.MockClock) -> None:
    db = load_database(DBC, strict=True)
    model = VehicleModel(config())
    frames: list[Frame] = []
    sent = [m.name for m in db.messages if m.name != "Body_DoorCommand"]
    ecu = SimulatedEcu(db, frames.append, messages=sent, values=model.values)
    with trio.move_on_after(CYCLE_S):
        await ecu.run()
    assert ecu.skipped == {}
    codec = CanCodec(db, "check", codec=Codec())
    speeds = []
    for frame in frames:
        ((_, record),) = codec.decode(frame.arbitration_id, frame.data)
        message = db.get_message_by_frame_id(frame.arbitration_id)
        for sig in message.signals:
            value = getattr(record, sig.name)
            assert sig.minimum <= value <= sig.maximum, f"{message.name}.{sig.name} = {value}"
        if message.name == "ESP_01":
            speeds.append(record.VehicleSpeed)
    assert len(speeds) == pytest.approx(CYCLE_S / 0.02, abs=2)  # 50 Hz
    assert max(speeds) > 120
    assert min(speeds) == 0.0
    assert max(abs(b - a) for a, b in itertools.pairwise(speeds)) < 0.23  # 3 m/s² for 20 ms: 0.216 km/h


async def test_the_service_sends_the_car_and_answers_a_lock_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = MemoryTransport()

    class OnMemory(DemoVehicle):
        def open_transport(self) -> MemoryTransport:
            return link

    codec = CanCodec(load_database(DBC), "check", codec=Codec())
    lock = codec.encode("Body_DoorCommand", {"LockRequest": 1})

    def door_status() -> list[bool]:
        return [
            bool(codec.decode(m.arbitration_id, m.data)[0][1].DoorsLocked)
            for m in link.sent
            if m.arbitration_id == 0x390
        ]

    async with open_harness(ServiceSpec("vehicle", OnMemory, config())) as car:
        await trio.sleep(5.0)
        assert door_status()
        assert not any(door_status())
        ids = {m.arbitration_id for m in link.sent}
        assert 0x391 not in ids  # the command is received, never sent
        assert ids == {m.frame_id for m in codec.db.messages} - {0x391}
        link.inject(can.Message(arbitration_id=lock.arbitration_id, data=lock.data, is_extended_id=False))
        await trio.sleep(1.0)
        assert door_status()[-1] is True
        assert car.status()["vehicle"].restarts == 0
