"""An example car service: warn when the vehicle goes faster than a limit.

Two services live here: ``DriveCycle`` plays a speed sensor (a smooth accelerate / cruise / brake
cycle), and ``OverspeedWarning`` does the car logic: it watches ``Vehicle.Speed`` and publishes
``Vehicle.Warning.Overspeed`` when the speed goes above the limit, and again when it drops back below the
limit minus a hysteresis. A method lets other services (or ``vwos bus call``) change the limit at run time.

``vwos run vwos.toml`` runs both; ``pytest test_overspeed.py`` tests the warning logic in mock time.
"""

from __future__ import annotations

import math

import attrs
import trio

from bus import Method, Topic
from vwos import Service, ServiceContext

SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400, max_age=1.0, description="Vehicle speed")
OVERSPEED = Topic(
    "Vehicle.Warning.Overspeed", bool, description="True while the vehicle is faster than the set limit"
)
SET_LIMIT = Method(
    "Vehicle.Warning.Overspeed.SetLimit", float, float, description="Set the limit; returns the old one"
)


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen
class DriveCycleConfig:
    period: float = attrs.field(
        default=0.1, validator=_positive, metadata={"help": "seconds between samples"}
    )
    top_speed: float = attrs.field(default=150.0, validator=_positive, metadata={"help": "km/h"})
    cycle: float = attrs.field(
        default=60.0, validator=_positive, metadata={"help": "seconds per drive cycle"}
    )


class DriveCycle(Service[DriveCycleConfig]):
    """A pretend speed sensor: speed rises from 0 to ``top_speed`` and back over each ``cycle``."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        start = trio.current_time()
        task_status.started()
        while True:
            phase = ((trio.current_time() - start) % cfg.cycle) / cfg.cycle
            speed = cfg.top_speed * math.sin(math.pi * phase) ** 2
            ctx.bus.publish_nowait(SPEED, round(speed, 2))
            ctx.heartbeat()
            await trio.sleep(cfg.period)


@attrs.frozen
class OverspeedConfig:
    limit: float = attrs.field(default=130.0, validator=_positive, metadata={"help": "km/h"})
    hysteresis: float = attrs.field(
        default=5.0, metadata={"help": "km/h below the limit before the warning clears"}
    )


class OverspeedWarning(Service[OverspeedConfig]):
    """Publishes ``Vehicle.Warning.Overspeed`` True above the limit, False once back below it."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.limit = float(self.config.limit)
        warning = False
        ctx.bus.publish_nowait(OVERSPEED, warning)

        async def set_limit(new: float) -> float:
            if not new > 0:
                raise ValueError(f"the limit must be positive, not {new}")
            old, self.limit = self.limit, new
            ctx.log.info("limit changed", old=old, new=new)
            return old

        async with trio.open_nursery() as nursery:
            await nursery.start(ctx.bus.serve, SET_LIMIT, set_limit)
            with ctx.bus.subscribe(SPEED, overflow="latest") as speeds:
                task_status.started()
                async for sample in speeds:
                    ctx.heartbeat()
                    if not sample.available:  # no speed now: the warning stays as it is
                        continue
                    speed = sample.value
                    if not warning and speed > self.limit:
                        warning = True
                    elif warning and speed < self.limit - self.config.hysteresis:
                        warning = False
                    else:
                        continue
                    ctx.log.info("overspeed" if warning else "speed back under the limit", speed=speed)
                    ctx.bus.publish_nowait(OVERSPEED, warning, timestamp=sample.timestamp)
