"""Tests of the example service, written the way the tutorial (docs/tutorial.md) shows."""

from __future__ import annotations

import pytest
import trio.testing
from overspeed import OVERSPEED, SET_LIMIT, SPEED, OverspeedConfig, OverspeedWarning

from bus import NotAvailable, RemoteError
from vwos.testing import ExpectationFailed, open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")


async def test_warns_above_the_limit_and_clears_below_the_hysteresis(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(OverspeedWarning(OverspeedConfig(limit=130, hysteresis=5))) as car:
        assert (await car.expect(OVERSPEED)).value is False  # the initial state
        car.publish(SPEED, 120.0)
        await car.expect_none(OVERSPEED, within=1)
        car.publish(SPEED, 131.0)
        assert (await car.expect(OVERSPEED)).value is True
        car.publish(SPEED, 127.0)  # under the limit, but not by the hysteresis yet
        await car.expect_none(OVERSPEED, within=1)
        car.publish(SPEED, 124.0)
        assert (await car.expect(OVERSPEED)).value is False


async def test_the_limit_can_be_changed_at_run_time(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(OverspeedWarning(OverspeedConfig(limit=130))) as car:
        assert await car.call(SET_LIMIT, 80.0) == 130.0
        car.publish(SPEED, 90.0)
        await car.expect(OVERSPEED, lambda warning: warning)
        with pytest.raises(RemoteError, match="the limit must be positive"):
            await car.call(SET_LIMIT, -5.0)


async def test_expect_fails_clearly_when_nothing_comes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(OverspeedWarning(OverspeedConfig(limit=130))) as car:
        car.publish(SPEED, 50.0)
        with pytest.raises(ExpectationFailed, match=r"no sample on Vehicle\.Warning\.Overspeed matching"):
            await car.expect(OVERSPEED, lambda warning: warning, timeout=10)


async def test_a_speed_that_is_not_available_keeps_the_warning_as_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A NotAvailable speed crashed the service with a TypeError; it is no news."""
    async with open_harness(OverspeedWarning(OverspeedConfig(limit=130))) as car:
        car.publish(SPEED, 140.0)
        await car.expect(OVERSPEED, lambda on: on is True)
        car.publish(SPEED, NotAvailable("e2e"))
        await car.expect_none(OVERSPEED, lambda on: on is False, within=1.0)
        car.publish(SPEED, 100.0)
        await car.expect(OVERSPEED, lambda on: on is False)
        assert car.status()["overspeed_warning"].restarts == 0
