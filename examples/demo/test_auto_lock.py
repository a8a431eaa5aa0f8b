"""The auto lock, against a fake gateway whose central locking answers (or not) in mock time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from auto_lock import AutoLock, AutoLockConfig
from demo_signals import AUTO_LOCK_COMMANDS, AUTO_LOCK_STATE, DOOR_LOCKED, DOOR_OPEN, SPEED

from bus import NotAvailable
from services.can import SendRequest, send_method
from vwos import ServiceSpec
from vwos.testing import Harness, open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")


class FakeGateway:
    """Serves ``CAN.demo.Send`` like the gateway; its central locking locks ``delay`` after a command
    (unless ``broken``) and reports every door's lock and open state."""

    def __init__(self, car: Harness, *, delay: float = 0.2, broken: bool = False) -> None:
        self.car = car
        self.delay = delay
        self.broken = broken
        self.requests: list[SendRequest] = []

    def report(self, *, locked: bool, open_door: str | None = None) -> None:
        for door, topic in DOOR_LOCKED.items():
            self.car.publish(topic, locked)
            self.car.publish(DOOR_OPEN[door], door == open_door)

    async def send(self, request: SendRequest) -> bool:
        self.requests.append(request)
        if not self.broken:
            await trio.sleep(self.delay)
            self.report(locked=True)
        return True


@asynccontextmanager
async def car_with(
    config: AutoLockConfig, *, broken: bool = False, watchdog: float | None = None
) -> AsyncIterator[tuple[Harness, FakeGateway]]:
    spec = ServiceSpec("auto_lock", AutoLock, config, watchdog=watchdog)
    async with open_harness(spec) as car, trio.open_nursery() as nursery:
        fake = FakeGateway(car, broken=broken)
        await nursery.start(car.client.serve, send_method("demo"), fake.send)
        fake.report(locked=False)
        yield car, fake
        nursery.cancel_scope.cancel()


async def accelerate(car: Harness, start: float, end: float, step: float = 1.0) -> None:
    speed = start
    while (speed <= end) if step > 0 else (speed >= end):
        car.publish(SPEED, speed)
        await trio.sleep(0.1)
        speed += step


LOCK = SendRequest("Body_DoorCommand", {"LockRequest": 1.0})


async def test_locks_once_the_car_is_faster_than_15_kmh(autojump_clock: trio.testing.MockClock) -> None:
    async with car_with(AutoLockConfig()) as (car, gateway):
        assert (await car.expect(AUTO_LOCK_STATE)).value == "armed"
        await accelerate(car, 0.0, 15.0)
        assert gateway.requests == []  # 15 km/h is not faster than 15
        await accelerate(car, 16.0, 40.0)
        assert gateway.requests == [LOCK]  # once, for all the samples above 15
        assert (await car.expect(AUTO_LOCK_STATE)).value == "locking"
        assert (await car.expect(AUTO_LOCK_STATE)).value == "locked"
        assert car.samples(AUTO_LOCK_COMMANDS)[-1].value == 1


async def test_a_door_open_keeps_it_from_locking_until_it_is_shut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with car_with(AutoLockConfig()) as (car, gateway):
        gateway.report(locked=False, open_door="RL")
        await accelerate(car, 10.0, 30.0)
        assert gateway.requests == []
        gateway.report(locked=False)  # shut
        await accelerate(car, 30.0, 32.0)
        assert gateway.requests == [LOCK]


async def test_it_retries_then_reports_failed(autojump_clock: trio.testing.MockClock) -> None:
    config = AutoLockConfig(attempts=3, confirm_timeout=1.0)
    async with car_with(config, broken=True) as (car, gateway):
        await accelerate(car, 10.0, 20.0)
        await car.expect(AUTO_LOCK_STATE, lambda state: state == "failed", timeout=5)
        assert gateway.requests == [LOCK, LOCK, LOCK]
        assert car.samples(AUTO_LOCK_COMMANDS)[-1].value == 3
        await accelerate(car, 30.0, 40.0)
        assert len(gateway.requests) == 3  # not again on this drive


async def test_unlocked_by_hand_it_locks_again_only_on_the_next_drive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with car_with(AutoLockConfig(lock_above=15.0, rearm_below=5.0)) as (car, gateway):
        await accelerate(car, 10.0, 20.0)
        await car.expect(AUTO_LOCK_STATE, lambda state: state == "locked")
        gateway.report(locked=False)  # the driver unlocks while driving
        await accelerate(car, 20.0, 50.0)
        await accelerate(car, 50.0, 6.0, step=-2.0)  # slows down, not below 5 km/h
        await accelerate(car, 6.0, 30.0)
        assert len(gateway.requests) == 1
        await accelerate(car, 30.0, 0.0, step=-2.0)  # stops
        assert (await car.expect(AUTO_LOCK_STATE, lambda state: state == "armed")).value == "armed"
        await accelerate(car, 0.0, 20.0)
        assert len(gateway.requests) == 2


async def test_already_locked_it_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with car_with(AutoLockConfig()) as (car, gateway):
        gateway.report(locked=True)
        await accelerate(car, 10.0, 30.0)
        assert gateway.requests == []
        assert car.samples(AUTO_LOCK_STATE)[-1].value == "locked"


async def test_without_a_gateway_it_says_so_and_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(AutoLock(AutoLockConfig(attempts=2))) as car:
        for topic in DOOR_LOCKED.values():
            car.publish(topic, False)
        for topic in DOOR_OPEN.values():
            car.publish(topic, False)
        await accelerate(car, 10.0, 20.0)
        await car.expect(AUTO_LOCK_STATE, lambda state: state == "failed", timeout=5)
        assert car.samples(AUTO_LOCK_COMMANDS)[-1].value == 0  # nothing could be sent
        assert car.status()["auto_lock"].restarts == 0


async def test_without_speed_samples_the_watchdog_does_not_restart_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with car_with(AutoLockConfig(), watchdog=5.0) as (car, gateway):  # the demo configs' watchdog
        await accelerate(car, 0.0, 3.0)
        await trio.sleep(30.0)  # the car is off, or the CAN link down: no speed samples
        assert car.status()["auto_lock"].restarts == 0
        await accelerate(car, 10.0, 20.0)  # the same run of the service still locks on the next drive
        await car.expect(AUTO_LOCK_STATE, lambda state: state == "locked")
        assert gateway.requests == [LOCK]
        assert car.status()["auto_lock"].restarts == 0


async def test_a_speed_or_door_that_is_not_available_never_locks_and_never_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A NotAvailable speed crashed the service (TypeError); a door whose state is not available is
    unknown, and it does not lock on an unknown door."""
    async with open_harness(AutoLock(AutoLockConfig())) as car:
        for topic in DOOR_LOCKED.values():
            car.publish(topic, False)
        for topic in DOOR_OPEN.values():
            car.publish(topic, False)
        car.publish(next(iter(DOOR_LOCKED.values())), NotAvailable("not_available"))
        car.publish(SPEED, NotAvailable("e2e"))
        await accelerate(car, 10.0, 20.0)
        await car.expect_none(AUTO_LOCK_STATE, lambda state: state == "locking", within=2.0)
        assert car.samples(AUTO_LOCK_COMMANDS) == [] or car.samples(AUTO_LOCK_COMMANDS)[-1].value == 0
        assert car.status()["auto_lock"].restarts == 0
