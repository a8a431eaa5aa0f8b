"""The trip computer: the arithmetic on its own, and the service on the bus in mock time."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from demo_signals import (
    AVERAGE_CONSUMPTION,
    AVERAGE_SPEED,
    FUEL_RATE,
    RESET_TRIP,
    SPEED,
    TRIP_DISTANCE,
    TRIP_DURATION,
    TRIP_FUEL,
)
from trip_computer import Trip, TripComputer, TripConfig

from bus import NotAvailable
from vwos.testing import Harness, open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")


def test_distance_time_and_averages() -> None:
    trip = Trip(max_gap=1.0, min_distance=0.1)
    assert trip.average_speed is None
    for i in range(601):  # 60 s at 10 Hz: accelerating from 0 to 120 km/h in a straight line
        trip.speed(120.0 * i / 600, i / 10)
        trip.fuel_rate(6.0, i / 10)
    assert trip.duration == pytest.approx(60.0)
    assert trip.distance == pytest.approx(1.0)  # an average of 60 km/h for a minute
    assert trip.average_speed == pytest.approx(60.0)
    assert trip.fuel == pytest.approx(0.1)  # 6 l/h for a minute
    assert trip.average_consumption == pytest.approx(10.0)  # 0.1 l over 1 km


def test_a_lost_signal_is_not_made_up_and_no_consumption_before_the_minimum_distance() -> None:
    trip = Trip(max_gap=1.0, min_distance=0.05)
    trip.speed(36.0, 0.0)
    trip.speed(36.0, 10.0)  # a 10 s gap: the signal was lost, nothing is integrated
    assert trip.distance == 0.0
    assert trip.duration == 0.0
    for i in range(1, 101):
        trip.speed(36.0, 10.0 + i / 10)  # then 10 s at 36 km/h: 100 m
        trip.fuel_rate(3.6, 10.0 + i / 10)
    trip.speed(50.0, 15.0)  # out of order: ignored
    assert trip.distance == pytest.approx(0.1)
    assert trip.duration == pytest.approx(10.0)
    assert trip.average_consumption == pytest.approx(9.9)  # 3.6 l/h over 9.9 s of fuel samples, 0.1 km
    short = Trip(min_distance=0.5)
    for i in range(101):
        short.speed(36.0, i / 10)
    assert short.distance == pytest.approx(0.1)
    assert short.average_consumption is None


async def drive(car: Harness, kmh: float, litres_per_hour: float, seconds: float, rate: float = 50.0) -> None:
    for _ in range(round(seconds * rate)):
        car.publish(SPEED, kmh)
        car.publish(FUEL_RATE, litres_per_hour)
        await trio.sleep(1 / rate)


async def test_the_service_publishes_the_trip_every_period(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(TripComputer(TripConfig(period=1.0, min_distance=0.1))) as car:
        assert (await car.expect(TRIP_DISTANCE)).value == 0.0
        await car.expect_none(AVERAGE_CONSUMPTION, within=1.5)  # nothing to say yet
        await drive(car, 72.0, 7.2, 30.0)  # 30 s at 72 km/h (20 m/s): 600 m, at 7.2 l/h: 60 ml
        await trio.sleep(1.0)
        distance = car.samples(TRIP_DISTANCE)[-1].value
        assert distance == pytest.approx(0.6, rel=0.01)
        assert car.samples(TRIP_DURATION)[-1].value == pytest.approx(30.0, rel=0.01)
        assert car.samples(AVERAGE_SPEED)[-1].value == pytest.approx(72.0)
        assert car.samples(TRIP_FUEL)[-1].value == pytest.approx(0.06, rel=0.01)
        assert car.samples(AVERAGE_CONSUMPTION)[-1].value == pytest.approx(10.0)  # 0.06 l / 0.6 km
        published = [s.bus_time for s in car.samples(TRIP_DISTANCE)]
        assert {round(b - a, 6) for a, b in itertools.pairwise(published)} == {1.0}


async def test_reset_starts_a_new_trip(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(TripComputer(TripConfig())) as car:
        await drive(car, 36.0, 3.0, 20.0)  # 200 m
        old = await car.call(RESET_TRIP, None)
        assert old == pytest.approx(0.2, rel=0.01)
        assert (await car.expect(TRIP_DISTANCE, lambda km: km == 0.0)).value == 0.0
        await drive(car, 36.0, 3.0, 10.0)
        await trio.sleep(1.0)
        assert car.samples(TRIP_DISTANCE)[-1].value == pytest.approx(0.1, rel=0.02)


async def test_a_not_available_speed_is_a_gap_not_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    """A NotAvailable speed or fuel rate (an ECU's SNA, a failed E2E check) crashed the service with a
    TypeError (found by replaying recordings); it is a gap: nothing is integrated across it."""
    async with open_harness(TripComputer(TripConfig(period=1.0))) as car:
        await drive(car, 72.0, 7.2, 10.0)  # 200 m
        car.publish(SPEED, NotAvailable("e2e"))
        car.publish(FUEL_RATE, NotAvailable("not_available"))
        await trio.sleep(5.0)  # nothing arrives for 5 s: within max_gap of nothing, since the gap reset it
        await drive(car, 72.0, 7.2, 10.0)  # another 200 m
        await trio.sleep(1.0)
        assert car.samples(TRIP_DISTANCE)[-1].value == pytest.approx(0.4, rel=0.02)
        assert car.status()["trip_computer"].restarts == 0
