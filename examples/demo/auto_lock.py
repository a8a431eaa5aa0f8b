"""Auto lock: lock the doors once the car drives off.

Once the car is faster than ``lock_above`` (15 km/h) with its doors closed and unlocked, the service sends
the central locking's command over CAN -- ``Body_DoorCommand`` with ``LockRequest`` = 1, through the CAN
gateway's ``CAN.<network>.Send`` method -- and waits for the doors to report locked. If they do not within
``confirm_timeout``, it sends again, up to ``attempts`` times, then reports ``failed``. It locks once per
drive: unlocked by hand while driving, the doors stay unlocked until the car has slowed below
``rearm_below`` (5 km/h) and drives off again.

``Vehicle.Cabin.Door.AutoLock.State`` says where it is (``armed``, ``locking``, ``locked``, ``failed``);
``Vehicle.Cabin.Door.AutoLock.Commands`` counts the commands sent.
"""

from __future__ import annotations

import attrs
import trio
from demo_signals import (
    AUTO_LOCK_COMMANDS,
    AUTO_LOCK_STATE,
    DOOR_LOCKED,
    DOOR_OPEN,
    NETWORK,
    SPEED,
)
from demo_signals import positive as _positive

from bus import BusError, Subscription
from services.can import SendRequest, send_method
from vwos import Service, ServiceContext


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")


def _below_lock_speed(inst: AutoLockConfig, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < inst.lock_above:
        raise ValueError(f"must be from 0 to below lock_above ({inst.lock_above:g} km/h), not {value:g}")


@attrs.frozen
class AutoLockConfig:
    """The auto lock's ``[services.NAME.config]``: when to lock, and the CAN command that locks."""

    lock_above: float = attrs.field(
        default=15.0, validator=_positive, metadata={"help": "km/h: lock once the car is faster"}
    )
    rearm_below: float = attrs.field(
        default=5.0,
        validator=_below_lock_speed,
        metadata={"help": "km/h: lock again on the next drive once the car was slower than this"},
    )
    network: str = attrs.field(default=NETWORK, metadata={"help": "the CAN network: its gateway's Send"})
    message: str = attrs.field(default="Body_DoorCommand", metadata={"help": "the lock command's message"})
    signal: str = attrs.field(default="LockRequest", metadata={"help": "the signal that asks to lock"})
    lock_value: float = attrs.field(default=1.0, metadata={"help": "the signal's value for 'lock'"})
    confirm_timeout: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "seconds for the doors to report locked"}
    )
    attempts: int = attrs.field(
        default=3, validator=_at_least_one, metadata={"help": "commands sent before giving up"}
    )


class AutoLock(Service[AutoLockConfig]):
    """Locks the doors over CAN once the car drives faster than ``lock_above``."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.ctx = ctx
        self.state = "armed"
        self.commands = 0
        #: The latest lock and open state of each door (None: not heard of yet).
        self.locked: dict[str, bool | None] = dict.fromkeys(DOOR_LOCKED)
        self.open: dict[str, bool | None] = dict.fromkeys(DOOR_OPEN)
        self._doors_changed = trio.Event()
        self._warned_open = False
        ctx.bus.publish_nowait(AUTO_LOCK_STATE, self.state)
        ctx.bus.publish_nowait(AUTO_LOCK_COMMANDS, self.commands)
        speeds = ctx.bus.subscribe(SPEED, overflow="latest")
        doors = [
            (ctx.bus.subscribe(t, overflow="latest"), self.locked, door) for door, t in DOOR_LOCKED.items()
        ]
        doors += [(ctx.bus.subscribe(t, overflow="latest"), self.open, door) for door, t in DOOR_OPEN.items()]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for sub, table, door in doors:
                nursery.start_soon(self._watch_door, sub, table, door)
            nursery.start_soon(
                ctx.heartbeat_every, 1.0
            )  # not per speed sample: the car may stand, the link be down
            task_status.started()
            with speeds:
                async for sample in speeds:
                    if sample.available:  # no speed now: nothing to decide on
                        self._on_speed(sample.value)

    async def _watch_door(self, sub: Subscription[bool], table: dict[str, bool | None], door: str) -> None:
        with sub:
            async for sample in sub:
                table[door] = sample.value if sample.available else None  # unknown: never locks on it
                self._doors_changed.set()
                self._doors_changed = trio.Event()

    @property
    def all_locked(self) -> bool:
        return all(v is True for v in self.locked.values())

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.ctx.bus.publish_nowait(AUTO_LOCK_STATE, state)

    def _on_speed(self, speed: float) -> None:
        cfg = self.config
        if speed < cfg.rearm_below and self.state in ("locked", "failed"):
            self._set_state("armed")
            self._warned_open = False
            return
        if self.state != "armed" or speed <= cfg.lock_above:
            return
        if self.all_locked:
            self._set_state("locked")  # locked already (by hand, or the last drive): nothing to do
            return
        if None in self.locked.values():
            return  # the central locking has not reported yet
        if any(self.open.values()):
            if not self._warned_open:
                self.ctx.log.info("not locking: a door is open", speed=round(speed, 1))
                self._warned_open = True
            return
        self._set_state("locking")
        self._nursery.start_soon(self._lock, speed)

    async def _lock(self, speed: float) -> None:
        cfg = self.config
        request = SendRequest(cfg.message, {cfg.signal: cfg.lock_value})
        for attempt in range(1, cfg.attempts + 1):
            try:
                await self.ctx.bus.call(send_method(cfg.network), request, timeout=cfg.confirm_timeout)
            except BusError as exc:
                self.ctx.log.warning("lock command not sent", attempt=attempt, error=str(exc))
            else:
                self.commands += 1
                self.ctx.bus.publish_nowait(AUTO_LOCK_COMMANDS, self.commands)
                self.ctx.log.info("lock command sent", speed=round(speed, 1), attempt=attempt)
            with trio.move_on_after(cfg.confirm_timeout):
                while not self.all_locked:
                    await self._doors_changed.wait()
            if self.all_locked:
                self._set_state("locked")
                return
        self.ctx.log.warning("the doors did not lock", attempts=cfg.attempts)
        self._set_state("failed")
