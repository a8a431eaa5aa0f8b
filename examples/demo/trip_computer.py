"""The trip computer: distance, driving time, average speed, fuel used and average consumption of the trip.

`Trip` is the arithmetic, without I/O: it integrates the vehicle speed (km/h) and the engine's fuel rate
(l/h) over time with the trapezoid rule. `TripComputer` is the service: it feeds `Trip` from
``Vehicle.Speed`` and ``Vehicle.OBD.FuelRate`` and publishes the trip's figures every ``period``; the method
``Vehicle.TripComputer.Reset`` starts a new trip.

Time is the bus clock (``Sample.bus_time``: trio's clock, so tests drive it in mock time); a CAN frame
reaches the bus within milliseconds of its kernel timestamp. A gap longer than ``max_gap`` between two
samples (a lost signal) is not integrated: neither distance nor time is made up for it.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
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
from demo_signals import positive as _positive

from bus import Subscription
from vwos import Service, ServiceContext


@attrs.frozen
class TripConfig:
    """The trip computer's ``[services.NAME.config]``."""

    period: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "seconds between published trip figures"}
    )
    max_gap: float = attrs.field(
        default=1.0,
        validator=_positive,
        metadata={"help": "seconds: a longer gap between two samples is a lost signal, not integrated"},
    )
    min_distance: float = attrs.field(
        default=0.1,
        validator=_positive,
        metadata={"help": "km driven before the average consumption is published"},
    )


class _Integral:
    """The trapezoid-rule integral over time of one signal (per hour: km/h gives km, l/h gives litres)."""

    __slots__ = ("last", "max_gap", "seconds", "total")

    def __init__(self, max_gap: float) -> None:
        self.max_gap = max_gap
        self.total = 0.0
        self.seconds = 0.0
        self.last: tuple[float, float] | None = None

    def add(self, value: float, t: float) -> None:
        if self.last is not None:
            t0, v0 = self.last
            dt = t - t0
            if 0 < dt <= self.max_gap:
                self.total += (v0 + value) / 2.0 * dt / 3600.0
                self.seconds += dt
            elif dt <= 0:
                return  # out of order or simultaneous: keep the earlier point
        self.last = (t, value)

    def lose(self) -> None:
        """The signal said it has no value: the next sample starts afresh (nothing made up across)."""
        self.last = None


class Trip:
    """One trip's figures, from speed and fuel rate samples (value, time in seconds)."""

    def __init__(self, *, max_gap: float = 1.0, min_distance: float = 0.1) -> None:
        self.min_distance = min_distance
        self._distance = _Integral(max_gap)
        self._fuel = _Integral(max_gap)

    def speed(self, kmh: float, t: float) -> None:
        self._distance.add(kmh, t)

    def fuel_rate(self, litres_per_hour: float, t: float) -> None:
        self._fuel.add(litres_per_hour, t)

    def speed_lost(self) -> None:
        """The speed is not available (an ECU's SNA, a failed E2E check): a gap, as a lost signal is."""
        self._distance.lose()

    def fuel_rate_lost(self) -> None:
        """The fuel rate is not available: a gap."""
        self._fuel.lose()

    @property
    def distance(self) -> float:
        """km."""
        return self._distance.total

    @property
    def duration(self) -> float:
        """Seconds of the trip with a speed signal (stops included)."""
        return self._distance.seconds

    @property
    def fuel(self) -> float:
        """Litres."""
        return self._fuel.total

    @property
    def average_speed(self) -> float | None:
        """km/h, or None before the trip has a duration."""
        return self.distance / (self.duration / 3600.0) if self.duration > 0 else None

    @property
    def average_consumption(self) -> float | None:
        """l/100 km, or None before ``min_distance`` is driven (the figure would mean little)."""
        return 100.0 * self.fuel / self.distance if self.distance >= self.min_distance else None


class TripComputer(Service[TripConfig]):
    """Publishes the trip's distance, time, average speed, fuel used and average consumption."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self.trip = Trip(max_gap=cfg.max_gap, min_distance=cfg.min_distance)

        async def reset(_: Any) -> float:
            old, self.trip = self.trip, Trip(max_gap=cfg.max_gap, min_distance=cfg.min_distance)
            ctx.log.info("trip reset", distance_km=round(old.distance, 3), fuel_l=round(old.fuel, 3))
            self._publish(ctx)
            return old.distance

        async def feed(samples: Subscription[float], speed: bool) -> None:
            with samples:
                async for sample in samples:
                    if not sample.available:  # a bus.NotAvailable: a gap, not a number
                        self.trip.speed_lost() if speed else self.trip.fuel_rate_lost()
                    elif speed:
                        self.trip.speed(sample.value, sample.bus_time)
                    else:
                        self.trip.fuel_rate(sample.value, sample.bus_time)

        # Every sample counts for the integrals: queues deep enough for seconds of 50 Hz samples.
        speeds = ctx.bus.subscribe(SPEED, queue_size=1024)
        fuel_rates = ctx.bus.subscribe(FUEL_RATE, queue_size=1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, speeds, True)
            nursery.start_soon(feed, fuel_rates, False)
            await nursery.start(ctx.bus.serve, RESET_TRIP, reset)
            self._publish(ctx)
            task_status.started()
            while True:
                await trio.sleep(cfg.period)
                self._publish(ctx)
                ctx.heartbeat()

    def _publish(self, ctx: ServiceContext) -> None:
        trip = self.trip
        ctx.bus.publish_nowait(TRIP_DISTANCE, trip.distance)
        ctx.bus.publish_nowait(TRIP_DURATION, trip.duration)
        ctx.bus.publish_nowait(TRIP_FUEL, trip.fuel)
        if trip.average_speed is not None:
            ctx.bus.publish_nowait(AVERAGE_SPEED, trip.average_speed)
        if trip.average_consumption is not None:
            ctx.bus.publish_nowait(AVERAGE_CONSUMPTION, trip.average_consumption)
