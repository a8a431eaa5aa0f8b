"""The warnings: the threshold rule on its own, and the service on the bus in mock time."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from car_warnings import LowThreshold, VehicleWarnings, WarningsConfig
from demo_signals import FUEL_LEVEL, LOW_FUEL, TIRE_LOW, TIRE_PRESSURE

from bus import NotAvailable
from vwos.testing import Harness, open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")


def test_the_rule_debounces_and_has_hysteresis() -> None:
    rule = LowThreshold(12.0, hysteresis=3.0, debounce=2.0)
    assert rule.update(11.9, 0.0) is False  # below, but not for 2 s yet
    assert rule.update(12.1, 1.0) is False  # a slosh: back above, the count starts over
    assert rule.update(11.9, 2.0) is False
    assert rule.update(11.8, 3.9) is False
    assert (rule.update(11.8, 4.0), rule.on) == (True, True)  # below for 2 s: on
    assert rule.update(14.9, 5.0) is False  # above the threshold, not above threshold + hysteresis
    assert rule.update(14.9, 9.0) is False
    assert rule.update(15.1, 10.0) is False  # refuelled ...
    assert (rule.update(40.0, 12.0), rule.on) == (True, False)  # ... for 2 s: off
    immediate = LowThreshold(200.0, hysteresis=0.0, debounce=0.0)
    assert immediate.update(199.0, 0.0) is True


async def feed(car: Harness, fuel: float, tyres: dict[str, float], seconds: float) -> None:
    for _ in range(round(seconds / 0.5)):  # the CAN database sends both every 500 ms
        car.publish(FUEL_LEVEL, fuel)
        for wheel, kpa in tyres.items():
            car.publish(TIRE_PRESSURE[wheel], kpa)
        await trio.sleep(0.5)


SOUND = {"FL": 240.0, "FR": 241.0, "RL": 239.5, "RR": 240.0}


async def test_warnings_start_off_and_come_on_after_the_debounce(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(VehicleWarnings(WarningsConfig(debounce=2.0))) as car:
        assert (await car.expect(LOW_FUEL)).value is False
        for warning in TIRE_LOW.values():
            assert car.samples(warning)[-1].value is False
        await feed(car, 30.0, SOUND, 5.0)
        await feed(car, 11.5, {**SOUND, "RL": 195.0}, 1.5)  # low, but not for 2 s
        assert car.samples(LOW_FUEL)[-1].value is False
        await feed(car, 11.5, {**SOUND, "RL": 195.0}, 1.0)
        assert car.samples(LOW_FUEL)[-1].value is True
        assert car.samples(TIRE_LOW["RL"])[-1].value is True
        assert [car.samples(TIRE_LOW[w])[-1].value for w in ("FL", "FR", "RR")] == [False] * 3
        await feed(car, 11.5, {**SOUND, "RL": 205.0}, 5.0)  # pumped up a little: not by the hysteresis
        assert car.samples(TIRE_LOW["RL"])[-1].value is True
        await feed(car, 11.5, SOUND, 3.0)  # pumped up
        assert car.samples(TIRE_LOW["RL"])[-1].value is False
        assert len(car.samples(TIRE_LOW["RL"])) == 3  # off at start, on, off: only changes are published


async def test_the_thresholds_are_configurable(autojump_clock: trio.testing.MockClock) -> None:
    config = WarningsConfig(low_fuel_percent=25.0, low_tyre_kpa=230.0, debounce=0.0)
    async with open_harness(VehicleWarnings(config)) as car:
        await feed(car, 20.0, {"FR": 225.0}, 1.0)
        assert car.samples(LOW_FUEL)[-1].value is True
        assert car.samples(TIRE_LOW["FR"])[-1].value is True


async def test_a_reading_that_is_not_available_keeps_the_warning_as_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A NotAvailable fuel level or pressure (an ECU's SNA) crashed the service; it is no news."""
    async with open_harness(VehicleWarnings(WarningsConfig())) as car:
        await feed(car, 5.0, SOUND, 5.0)  # low fuel: on
        assert car.samples(LOW_FUEL)[-1].value is True
        for _ in range(10):
            car.publish(FUEL_LEVEL, NotAvailable("not_available"))
            car.publish(TIRE_PRESSURE["FL"], NotAvailable("e2e"))
            await trio.sleep(0.5)
        assert car.samples(LOW_FUEL)[-1].value is True
        assert car.status()["vehicle_warnings"].restarts == 0
