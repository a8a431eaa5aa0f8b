"""The demo vehicle's topics: what the CAN gateway publishes, and what the demo's services publish.

The gateway makes its topics from the ``[[services.gateway.config.signals]]`` mappings of ``vwos.toml`` and
the database ``demo_vehicle.dbc`` (unit, range, and ``max_age`` = three cycle times). A service that
subscribes with one of the `Topic` objects below declares the same topic, so the two declarations must
agree, or the bus refuses the second; ``tests/test_demo.py`` checks that every one of these matches what
the gateway declares from the demo's configs. Names follow the COVESA Vehicle Signal Specification (VSS)
where it has one.

At the end, what the demo services share besides topics: the `positive` validator.
"""

from __future__ import annotations

from typing import Any, Final

from bus import Method, Topic
from services.can import STALE_AFTER_CYCLES

#: The CAN network's name in the gateway's topics: ``CAN.demo.<Message>``, ``CAN.demo.Send``.
NETWORK: Final = "demo"


def _stale_after(cycle_ms: int) -> float:
    """The gateway's ``max_age`` of a signal sent every ``cycle_ms`` milliseconds."""
    return STALE_AFTER_CYCLES * cycle_ms / 1000.0


# -- from the CAN gateway -----------------------------------------------------------------------------------

SPEED = Topic(
    "Vehicle.Speed", float, unit="km/h", min=0.0, max=320.0, max_age=_stale_after(20), description="ESP_01"
)
ENGINE_SPEED = Topic(
    "Vehicle.Powertrain.CombustionEngine.Speed",
    float,
    unit="rpm",
    min=0.0,
    max=8000.0,
    max_age=_stale_after(20),
    description="Engine_01.EngineSpeed",
)
COOLANT_TEMPERATURE = Topic(
    "Vehicle.Powertrain.CombustionEngine.ECT",
    float,
    unit="celsius",
    min=-40.0,
    max=150.0,
    max_age=_stale_after(20),
    description="Engine_01.CoolantTemp",
)
FUEL_RATE = Topic(
    "Vehicle.OBD.FuelRate",
    float,
    unit="l/h",
    min=0.0,
    max=80.0,
    max_age=_stale_after(100),
    description="Engine_02.FuelRate",
)
FUEL_LEVEL = Topic(
    "Vehicle.Powertrain.FuelSystem.RelativeLevel",
    float,
    unit="percent",
    min=0.0,
    max=100.0,
    max_age=_stale_after(500),
    description="Fuel_01.FuelLevel",
)
ODOMETER = Topic(
    "Vehicle.TraveledDistance",
    float,
    unit="km",
    min=0.0,
    max=1_000_000.0,
    max_age=_stale_after(1000),
    description="Cluster_01.Odometer",
)
GEAR_LEVER = Topic(
    "Vehicle.Powertrain.Transmission.GearLever",
    int,
    min=0,
    max=3,
    max_age=_stale_after(100),
    description="Gearbox_01.GearLever: 0 P, 1 R, 2 N, 3 D",
)
CURRENT_GEAR = Topic(
    "Vehicle.Powertrain.Transmission.CurrentGear",
    int,
    min=0,
    max=8,
    max_age=_stale_after(100),
    description="Gearbox_01.CurrentGear: 0 none",
)

#: The wheels, as the CAN database names them, and their place in VSS.
WHEELS: Final = {
    "FL": "Row1.Wheel.Left",
    "FR": "Row1.Wheel.Right",
    "RL": "Row2.Wheel.Left",
    "RR": "Row2.Wheel.Right",
}
#: The doors, as the CAN database names them, and their place in VSS (a left-hand drive car).
DOORS: Final = {
    "FL": "Row1.DriverSide",
    "FR": "Row1.PassengerSide",
    "RL": "Row2.DriverSide",
    "RR": "Row2.PassengerSide",
}


def _tire(wheel: str) -> Topic[float]:
    return Topic(
        f"Vehicle.Chassis.Axle.{WHEELS[wheel]}.Tire.Pressure",
        float,
        unit="kPa",
        min=0.0,
        max=500.0,
        max_age=_stale_after(500),
        description=f"TPMS_01.TyrePressure_{wheel}",
    )


def _door(wheel: str, what: str, signal: str) -> Topic[bool]:
    return Topic(
        f"Vehicle.Cabin.Door.{DOORS[wheel]}.{what}",
        bool,
        max_age=_stale_after(100),
        description=f"Body_DoorStatus.{signal}",
    )


#: Tyre pressures, by wheel (``FL``, ``FR``, ``RL``, ``RR``).
TIRE_PRESSURE: Final = {wheel: _tire(wheel) for wheel in WHEELS}
#: Each door's lock (the central locking's ``DoorsLocked``, the same for every door), by door.
DOOR_LOCKED: Final = {door: _door(door, "IsLocked", "DoorsLocked") for door in DOORS}
#: Each door open or not, by door.
DOOR_OPEN: Final = {door: _door(door, "IsOpen", f"DoorOpen_{door}") for door in DOORS}

# -- from the trip computer (trip_computer.py) --------------------------------------------------------------

TRIP_DISTANCE = Topic("Vehicle.TripMeterReading", float, unit="km", min=0.0, description="distance this trip")
TRIP_DURATION = Topic("Vehicle.TripDuration", float, unit="s", min=0.0, description="driving time this trip")
AVERAGE_SPEED = Topic("Vehicle.AverageSpeed", float, unit="km/h", min=0.0, description="this trip")
TRIP_FUEL = Topic(
    "Vehicle.Powertrain.FuelSystem.ConsumptionSinceStart",
    float,
    unit="l",
    min=0.0,
    description="fuel used this trip",
)
AVERAGE_CONSUMPTION = Topic(
    "Vehicle.Powertrain.FuelSystem.AverageConsumption",
    float,
    unit="l/100km",
    min=0.0,
    description="this trip; published once the trip is long enough to say",
)
RESET_TRIP = Method(
    "Vehicle.TripComputer.Reset", object, float, description="start a new trip; returns the old trip's km"
)

# -- from the auto lock (auto_lock.py) ----------------------------------------------------------------------

AUTO_LOCK_STATES: Final = ("armed", "locking", "locked", "failed")
AUTO_LOCK_STATE = Topic(
    "Vehicle.Cabin.Door.AutoLock.State",
    str,
    allowed=AUTO_LOCK_STATES,
    description="armed: will lock once the car moves; locking: command sent; locked: done this drive; "
    "failed: the doors did not lock",
)
AUTO_LOCK_COMMANDS = Topic(
    "Vehicle.Cabin.Door.AutoLock.Commands", int, min=0, description="lock commands sent over CAN"
)

# -- from the warnings (car_warnings.py) --------------------------------------------------------------------

LOW_FUEL = Topic("Vehicle.Powertrain.FuelSystem.IsFuelLevelLow", bool, description="the low fuel warning")
#: The low tyre pressure warning, by wheel.
TIRE_LOW: Final = {
    wheel: Topic(f"Vehicle.Chassis.Axle.{place}.Tire.IsPressureLow", bool, description="low tyre pressure")
    for wheel, place in WHEELS.items()
}


def positive(_: object, attribute: Any, value: float) -> None:
    """The attrs validator the demo services' configs share: seconds, limits and rates above zero."""
    if not value > 0:
        raise ValueError(f"must be positive, not {value:g}")
