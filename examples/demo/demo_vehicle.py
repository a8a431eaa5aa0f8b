"""The demo vehicle: a small petrol car on CAN, simulated with coherent physics.

`VehicleModel` is the car, without I/O: a driver follows a repeating drive cycle (parked, town, a stop at
a light, country road, motorway, back to park); the speed comes from the road-load equation, so that the
engine speed follows the gears, the fuel rate the power drawn, the odometer the distance, the fuel level the
fuel burnt; the tyres warm up as the car drives and one of them has a slow puncture; the central locking
answers lock commands (``Body_DoorCommand.LockRequest``) after a short delay, and the driver unlocks it and
opens a door at the end of each drive. `VehicleModel.values` gives each CAN message's signals at a time.

`DemoVehicle` is the service (``plugin = "demo_vehicle:DemoVehicle"``): the `CanSimulator` of
``services.can``, which sends the messages of ``demo_vehicle.dbc`` at their cycle times on any python-can
interface (virtual in the demo, SocketCAN ``vcan0`` in ``vwos-vcan.toml``), with the model's values.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import attrs
import trio
from demo_signals import positive as _positive

from services.can import CanSimulator, SimulatorConfig
from vwos import ServiceContext

# -- the car's constants (a compact hatchback) ------------------------------------------------------------

MASS_KG: Final = 1350.0
#: Rolling resistance coefficient and drag area (Cd * frontal area, m²).
ROLLING: Final = 0.011
DRAG_AREA: Final = 0.62
AIR_DENSITY: Final = 1.2
G: Final = 9.81
#: Engine efficiency and petrol's lower heating value (J per litre): fuel = power / (efficiency * LHV).
ENGINE_EFFICIENCY: Final = 0.29
PETROL_J_PER_L: Final = 32.0e6
#: Fuel the engine burns idling or at low load, l/h.
IDLE_FUEL_RATE: Final = 0.7
IDLE_RPM: Final = 800.0
MAX_POWER_W: Final = 85_000.0
#: Engine rpm per km/h in each gear of the six-speed automatic, and the speeds it shifts up at (km/h).
RPM_PER_KMH: Final = (0.0, 112.0, 68.0, 47.0, 36.0, 29.0, 24.0)
SHIFT_UP_KMH: Final = (0.0, 18.0, 32.0, 50.0, 68.0, 88.0)
#: Selector lever positions, as ``Gearbox_01.GearLever`` encodes them.
PARK, REVERSE, NEUTRAL, DRIVE = 0, 1, 2, 3
#: ``Ignition_01.IgnitionState``.
IGNITION_ON, IGNITION_START = 2, 3
#: ``Body_DoorCommand.LockRequest``.
LOCK, UNLOCK = 1, 2
#: The engine cranks for this long after the start.
CRANKING_S: Final = 0.6
#: Tyres warm up towards the outside temperature plus this much per km/h, with this time constant.
TYRE_HEAT_PER_KMH: Final = 0.25
TYRE_HEAT_TAU_S: Final = 300.0
#: A punctured tyre stops losing air here (the driver would notice the car pulling long before).
FLAT_KPA: Final = 120.0

#: The drive cycle: (seconds, target speed km/h, selector lever). The driver follows the target speed with
#: the acceleration the car has; it repeats for as long as the demo runs.
DRIVE_CYCLE: Final = (
    (1.5, 0.0, PARK),  # engine started, parked
    (0.5, 0.0, DRIVE),  # in D, foot on the brake
    (22.0, 50.0, DRIVE),  # away through town
    (8.0, 30.0, DRIVE),  # a 30 zone
    (10.0, 0.0, DRIVE),  # a red light
    (28.0, 100.0, DRIVE),  # country road
    (25.0, 125.0, DRIVE),  # motorway
    (15.0, 80.0, DRIVE),  # off the motorway
    (14.0, 0.0, DRIVE),  # slowing down, stopping
    (10.0, 0.0, PARK),  # parked: the driver unlocks, opens the door, closes it
)
_CYCLE_STARTS: Final = [sum(leg[0] for leg in DRIVE_CYCLE[:i]) for i in range(len(DRIVE_CYCLE))]
CYCLE_S: Final = sum(leg[0] for leg in DRIVE_CYCLE)
#: In the final parking leg: when the driver unlocks, and when the driver's door is open.
PARK_UNLOCK_AT: Final = 1.0
PARK_DOOR_OPEN: Final = (2.0, 5.0)

Wheel = Literal["FL", "FR", "RL", "RR"]
WHEEL_NAMES: Final[tuple[Wheel, ...]] = ("FL", "FR", "RL", "RR")


def leg_at(t: float) -> tuple[int, float, float, int]:
    """The drive cycle at ``t`` seconds: (leg index, seconds into the leg, target km/h, selector lever)."""
    into_cycle = t % CYCLE_S
    index = bisect.bisect_right(_CYCLE_STARTS, into_cycle) - 1
    _, target, lever = DRIVE_CYCLE[index]
    return index, into_cycle - _CYCLE_STARTS[index], target, lever


def _in_range(low: float, high: float) -> Any:
    def check(_: object, attribute: attrs.Attribute[float], value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}, got {value:g}")

    return check


@attrs.frozen
class VehicleConfig(SimulatorConfig):
    """The demo vehicle's config: the simulator's (database, interface, ...) and the car's state at start."""

    odometer_km: float = attrs.field(
        default=12_345.6, validator=_in_range(0, 999_999), metadata={"help": "the odometer at start, km"}
    )
    fuel_percent: float = attrs.field(
        default=12.02,
        validator=_in_range(0, 100),
        metadata={"help": "fuel in the tank at start, % (just above the demo's low fuel warning, at 12)"},
    )
    tank_litres: float = attrs.field(default=50.0, validator=_positive, metadata={"help": "tank capacity"})
    tyre_kpa: float = attrs.field(
        default=240.0, validator=_in_range(100, 450), metadata={"help": "cold pressure of the sound tyres"}
    )
    leaking_tyre: Literal["FL", "FR", "RL", "RR", "none"] = attrs.field(
        default="RL", metadata={"help": "the tyre with a slow puncture: FL, FR, RL, RR or none"}
    )
    leak_start_kpa: float = attrs.field(
        default=222.0, validator=_in_range(100, 450), metadata={"help": "its cold pressure at start"}
    )
    leak_kpa_per_min: float = attrs.field(
        default=60.0, validator=_in_range(0, 1000), metadata={"help": "how fast it loses air"}
    )
    outside_temp: float = attrs.field(
        default=18.0, validator=_in_range(-40, 50), metadata={"help": "outside air temperature, °C"}
    )
    coolant_start: float = attrs.field(
        default=35.0,
        validator=_in_range(-40, 120),
        metadata={"help": "engine coolant temperature at start, °C"},
    )
    lock_delay: float = attrs.field(
        default=0.2,
        validator=_in_range(0, 10),
        metadata={"help": "seconds the central locking takes to act on a command"},
    )


class VehicleModel:
    """The simulated car's state, advanced in time by `advance` (pure: no I/O, no clock of its own).

    Times are seconds since the start. `values(message, t)` advances to ``t`` and returns the signals of a
    CAN message of ``demo_vehicle.dbc``; `receive` takes a command frame's signals.
    """

    def __init__(self, config: VehicleConfig) -> None:
        self.config = config
        self.t = 0.0
        #: m/s, m/s², and whether the driver brakes.
        self.v = 0.0
        self.accel = 0.0
        self.braking = False
        self.lever = PARK
        self.gear = 0
        self.rpm = 0.0
        self.power_w = 0.0
        self.fuel_rate = 0.0  # l/h
        self.throttle = 0.0  # %
        self.load = 0.0  # %
        self.coolant = config.coolant_start
        self.odometer_km = config.odometer_km
        self.fuel_l = config.fuel_percent / 100.0 * config.tank_litres
        self.fuel_used_l = 0.0
        self.distance_km = 0.0
        #: Cold (ambient) pressures, kPa, and the tyres' temperature, °C.
        self.cold_kpa: dict[Wheel, float] = dict.fromkeys(WHEEL_NAMES, config.tyre_kpa)
        if config.leaking_tyre != "none":
            self.cold_kpa[config.leaking_tyre] = config.leak_start_kpa
        self.tyre_temp = config.outside_temp
        self.locked = False
        self.doors_open: dict[Wheel, bool] = dict.fromkeys(WHEEL_NAMES, False)
        #: A lock state the central locking will reach, and when.
        self._lock_pending: tuple[float, bool] | None = None
        self._leg = -1
        #: Lock commands received, and those refused (a door open).
        self.lock_commands = 0
        self.refused_commands = 0

    @property
    def speed_kmh(self) -> float:
        return self.v * 3.6

    @property
    def fuel_percent(self) -> float:
        return 100.0 * self.fuel_l / self.config.tank_litres

    def pressure(self, wheel: Wheel) -> float:
        """A tyre's pressure now (gauge, kPa): its cold pressure, raised by its temperature (Gay-Lussac on
        absolute pressure)."""
        cold_abs = self.cold_kpa[wheel] + 101.3
        ratio = (self.tyre_temp + 273.15) / (self.config.outside_temp + 273.15)
        return cold_abs * ratio - 101.3

    @property
    def ignition(self) -> int:
        return IGNITION_START if self.t < CRANKING_S else IGNITION_ON

    # -- commands -----------------------------------------------------------------------------------------

    def receive(self, message: str, signals: Mapping[str, float], t: float) -> None:
        """A frame for the car: ``Body_DoorCommand`` with ``LockRequest`` 1 (lock) or 2 (unlock). The
        central locking acts ``lock_delay`` later; it does not lock while a door is open."""
        self.advance(t)
        if message != "Body_DoorCommand":
            return
        request = int(signals.get("LockRequest", 0))
        if request not in (LOCK, UNLOCK):
            return
        self.lock_commands += 1
        if request == LOCK and any(self.doors_open.values()):
            self.refused_commands += 1
            return
        self._lock_pending = (t + self.config.lock_delay, request == LOCK)

    # -- time -----------------------------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Move the car on to ``t`` (earlier times are ignored), in steps of at most 50 ms."""
        while self.t < t:
            step = min(0.05, t - self.t)
            self._step(self.t + step, step)

    def _step(self, t: float, dt: float) -> None:
        cfg = self.config
        leg, into, target_kmh, lever = leg_at(t)
        if leg != self._leg:
            self._enter_leg(leg)
        self.lever = lever
        self._driver(t, into, leg)
        # The driver follows the target speed, as hard as the car allows (less at speed), braking at most
        # 3 m/s²; cruising, the speed wanders a little around the target.
        target = target_kmh / 3.6 * (1.0 + 0.015 * math.sin(t / 6.0)) if target_kmh > 0 else 0.0
        available = max(0.4, 2.4 - self.v / 20.0) if lever == DRIVE and t >= CRANKING_S else 0.0
        accel = min(max(0.7 * (target - self.v), -3.0), available)
        if target == 0.0 and self.v < 2.0:
            accel = -1.5  # the last few metres: a steady stop
        v = max(0.0, self.v + accel * dt)
        self.accel = (v - self.v) / dt
        self.v = v
        accel = self.accel
        resist = MASS_KG * G * ROLLING * (self.v > 0) + 0.5 * AIR_DENSITY * DRAG_AREA * self.v**2
        self.power_w = (MASS_KG * accel + resist) * self.v
        self.braking = accel < -0.4 or (lever == DRIVE and self.v == 0.0)
        self._powertrain(t, dt)
        distance_km = self.v * dt / 1000.0
        self.odometer_km += distance_km
        self.distance_km += distance_km
        burnt = min(self.fuel_l, self.fuel_rate * dt / 3600.0)
        self.fuel_l -= burnt
        self.fuel_used_l += burnt
        # Tyres: warm up with speed; the punctured one loses air.
        warm = cfg.outside_temp + TYRE_HEAT_PER_KMH * self.speed_kmh
        self.tyre_temp += (warm - self.tyre_temp) * min(1.0, dt / TYRE_HEAT_TAU_S)
        if cfg.leaking_tyre != "none":
            wheel = cfg.leaking_tyre
            self.cold_kpa[wheel] = max(FLAT_KPA, self.cold_kpa[wheel] - cfg.leak_kpa_per_min * dt / 60.0)
        if self._lock_pending is not None and t >= self._lock_pending[0]:
            self.locked = self._lock_pending[1]
            self._lock_pending = None
        self.t = t

    def _enter_leg(self, leg: int) -> None:
        self._leg = leg
        if leg == len(DRIVE_CYCLE) - 1 and self.fuel_percent < 5.0:
            self.fuel_l = 0.8 * self.config.tank_litres  # parked at a filling station

    def _driver(self, t: float, into: float, leg: int) -> None:
        """At the end of each drive, parked: the driver unlocks the car and opens and shuts the door."""
        if leg != len(DRIVE_CYCLE) - 1:
            return
        if into >= PARK_UNLOCK_AT and self.locked and self._lock_pending is None:
            self._lock_pending = (t, False)  # the key's unlock button: at once
        opened, shut = PARK_DOOR_OPEN
        self.doors_open["FL"] = opened <= into < shut

    def _powertrain(self, t: float, dt: float) -> None:
        kmh = self.speed_kmh
        if self.lever == DRIVE:
            if self.gear == 0:
                self.gear = 1
            while self.gear < 6 and kmh > SHIFT_UP_KMH[self.gear]:
                self.gear += 1
            while self.gear > 1 and kmh < SHIFT_UP_KMH[self.gear - 1] - 6.0:
                self.gear -= 1
        else:
            self.gear = 0
        drive = max(0.0, self.power_w)
        self.throttle = min(100.0, 100.0 * drive / MAX_POWER_W)
        if t < CRANKING_S:
            self.rpm = 250.0
        else:
            self.rpm = max(IDLE_RPM + 15.0 * self.throttle, kmh * RPM_PER_KMH[self.gear])
            self.rpm = min(self.rpm, 6500.0)
        available = MAX_POWER_W * min(1.0, self.rpm / 5500.0)
        self.load = 0.0 if self.power_w < 0 and kmh > 20 else min(100.0, 15.0 + 85.0 * drive / available)
        if t < CRANKING_S:
            self.fuel_rate = 0.0
        elif self.power_w < 0 and kmh > 20:
            self.fuel_rate = 0.0  # overrun: fuel cut
        else:
            self.fuel_rate = IDLE_FUEL_RATE + drive / (ENGINE_EFFICIENCY * PETROL_J_PER_L) * 3600.0
        if self.fuel_l <= 0:
            self.fuel_rate = 0.0
        self.coolant += (90.0 - self.coolant) * min(1.0, dt * (0.004 + 0.02 * self.load / 100.0))

    # -- CAN --------------------------------------------------------------------------------------------

    def values(self, message: str, t: float) -> dict[str, float]:
        """The signals of ``message`` at ``t`` (physical values, as the database scales them)."""
        self.advance(t)
        if message == "ESP_01":
            return {
                "VehicleSpeed": self.speed_kmh,
                "BrakePedalPressed": float(self.braking),
                "LongitudinalAccel": self.accel,
            }
        if message == "Engine_01":
            return {"EngineSpeed": self.rpm, "ThrottlePosition": self.throttle, "CoolantTemp": self.coolant}
        if message == "Engine_02":
            return {
                "FuelRate": self.fuel_rate,
                "EngineLoad": self.load,
                "EngineRunning": float(t >= CRANKING_S),
            }
        if message == "Gearbox_01":
            return {"GearLever": self.lever, "CurrentGear": self.gear}
        if message == "Body_DoorStatus":
            doors = {f"DoorOpen_{w}": float(self.doors_open[w]) for w in WHEEL_NAMES}
            return {"DoorsLocked": float(self.locked), **doors}
        if message == "Fuel_01":
            return {"FuelLevel": self.fuel_percent}
        if message == "Ignition_01":
            return {"IgnitionState": self.ignition}
        if message == "Cluster_01":
            return {"Odometer": self.odometer_km, "OutsideTemp": self.config.outside_temp}
        if message == "TPMS_01":
            return {f"TyrePressure_{w}": self.pressure(w) for w in WHEEL_NAMES}
        return {}


class DemoVehicle(CanSimulator[VehicleConfig]):
    """The demo's simulated car: its ECUs' CAN traffic from a `VehicleModel`, answering lock commands."""

    config_class: ClassVar[type[Any]] = VehicleConfig

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.model = VehicleModel(self.config)  # a fresh car (at the configured start) on every start
        await super().run(ctx, task_status=task_status)

    def values(self, message: str, t: float) -> Mapping[str, float]:
        return self.model.values(message, t)

    def received(self, message: str, signals: Mapping[str, float], t: float) -> None:
        refused = self.model.refused_commands
        self.model.receive(message, signals, t)
        self.ctx.log.info(
            "central locking command",
            request={LOCK: "lock", UNLOCK: "unlock"}.get(int(signals.get("LockRequest", 0)), "none"),
            refused=self.model.refused_commands > refused,
        )
