"""Driver warnings: low fuel and low tyre pressure.

`LowThreshold` is the rule, without I/O: a warning comes on once a reading has stayed below ``low`` for
``debounce`` seconds (fuel sloshes, a tyre's reading jitters), and goes off once it has stayed above
``low + hysteresis`` as long (refuelled, tyre pumped up). `VehicleWarnings` is the service: one rule for
the fuel level, one per tyre, published as VSS booleans (``...FuelSystem.IsFuelLevelLow``,
``...Tire.IsPressureLow``), False at start.
"""

from __future__ import annotations

import attrs
import trio
from demo_signals import FUEL_LEVEL, LOW_FUEL, TIRE_LOW, TIRE_PRESSURE
from demo_signals import positive as _positive

from bus import Subscription, Topic
from vwos import Service, ServiceContext


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"must be 0 or more, not {value:g}")


@attrs.frozen
class WarningsConfig:
    """The warnings' ``[services.NAME.config]``: thresholds, hysteresis, debounce."""

    low_fuel_percent: float = attrs.field(
        default=12.0, validator=_positive, metadata={"help": "% of the tank: the low fuel warning below it"}
    )
    fuel_hysteresis: float = attrs.field(
        default=3.0, validator=_not_negative, metadata={"help": "% above the threshold before it goes off"}
    )
    low_tyre_kpa: float = attrs.field(
        default=200.0, validator=_positive, metadata={"help": "kPa: a tyre's low pressure warning below it"}
    )
    tyre_hysteresis: float = attrs.field(
        default=10.0, validator=_not_negative, metadata={"help": "kPa above the threshold before it goes off"}
    )
    debounce: float = attrs.field(
        default=2.0,
        validator=_not_negative,
        metadata={"help": "seconds a reading must stay across a threshold"},
    )


class LowThreshold:
    """A low-side warning with hysteresis and debounce; `update` says when it changes."""

    def __init__(self, low: float, hysteresis: float, debounce: float) -> None:
        self.low = low
        self.high = low + hysteresis
        self.debounce = debounce
        #: Whether the warning is on.
        self.on = False
        self._since: float | None = None

    def update(self, value: float, now: float) -> bool:
        """Take a reading at ``now`` (seconds); True if the warning has just come on or gone off."""
        crossing = value < self.low if not self.on else value > self.high
        if not crossing:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if now - self._since < self.debounce:
            return False
        self.on = not self.on
        self._since = None
        return True


class VehicleWarnings(Service[WarningsConfig]):
    """Publishes the low fuel and the low tyre pressure warnings."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        rules: list[tuple[str, Subscription[float], LowThreshold, Topic[bool]]] = [
            (
                "fuel",
                ctx.bus.subscribe(FUEL_LEVEL, overflow="latest"),
                LowThreshold(cfg.low_fuel_percent, cfg.fuel_hysteresis, cfg.debounce),
                LOW_FUEL,
            )
        ]
        for wheel, pressure in TIRE_PRESSURE.items():
            rule = LowThreshold(cfg.low_tyre_kpa, cfg.tyre_hysteresis, cfg.debounce)
            rules.append(
                (f"tyre {wheel}", ctx.bus.subscribe(pressure, overflow="latest"), rule, TIRE_LOW[wheel])
            )
        for _, _, _, warning in rules:
            ctx.bus.publish_nowait(warning, False)
        async with trio.open_nursery() as nursery:
            for what, readings, rule, warning in rules:
                nursery.start_soon(self._watch, ctx, what, readings, rule, warning)
            task_status.started()
            await ctx.heartbeat_every(1.0)  # a parked car or a quiet CAN link is no reason to restart

    async def _watch(
        self,
        ctx: ServiceContext,
        what: str,
        readings: Subscription[float],
        rule: LowThreshold,
        warning: Topic[bool],
    ) -> None:
        with readings:
            async for sample in readings:
                if not sample.available:  # no reading now (an ECU's SNA): the warning stays as it is
                    continue
                if rule.update(sample.value, sample.bus_time):
                    ctx.log.info(
                        f"{what}: warning {'on' if rule.on else 'off'}", reading=round(sample.value, 2)
                    )
                    ctx.bus.publish_nowait(warning, rule.on, timestamp=sample.timestamp)
