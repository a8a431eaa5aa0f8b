"""What the demo shows a person: a live panel of the car, its services and the uplink.

On a terminal the panel is redrawn in place every ``interval`` seconds; otherwise (a pipe, a log file, a
test) one plain line is written every ``line_interval`` seconds. When the demo stops -- Ctrl-C, SIGTERM or
``vwos run --duration`` -- it says what the uplink shipped, where the batch files are and how to read
them. The dashboard only reads: the latest value of each topic (`BusClient.fetch`), the uplink's status
topic, and the supervisor's status table through the control plane (``Vwos.Control.Read.Status``).

`Snapshot` is what one frame shows; `render_panel` and `render_line` turn it into text, without I/O.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

import attrs
import trio
from demo_signals import (
    AUTO_LOCK_COMMANDS,
    AUTO_LOCK_STATE,
    AVERAGE_CONSUMPTION,
    AVERAGE_SPEED,
    COOLANT_TEMPERATURE,
    CURRENT_GEAR,
    DOOR_LOCKED,
    DOOR_OPEN,
    ENGINE_SPEED,
    FUEL_LEVEL,
    FUEL_RATE,
    GEAR_LEVER,
    LOW_FUEL,
    NETWORK,
    ODOMETER,
    SPEED,
    TIRE_LOW,
    TIRE_PRESSURE,
    TRIP_DISTANCE,
    TRIP_DURATION,
    TRIP_FUEL,
)
from demo_signals import positive as _positive

from bus import BusError, Subscription, Topic
from vwos import Service, ServiceContext

#: The control plane's status method (docs/control.md), called by name: the dashboard is a plain client.
STATUS_METHOD = "Vwos.Control.Read.Status"
#: A value older than this (seconds of bus time) is shown as missing.
STALE_AFTER = 2.0
WIDTH = 78
LEVER = "PRND"


@attrs.frozen
class DashboardConfig:
    """The dashboard's ``[services.NAME.config]``."""

    style: Literal["auto", "panel", "lines"] = attrs.field(
        default="auto", metadata={"help": "panel on a terminal, lines otherwise (auto); or force one"}
    )
    interval: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "seconds between panels"}
    )
    line_interval: float = attrs.field(
        default=5.0, validator=_positive, metadata={"help": "seconds between plain lines"}
    )
    network: str = attrs.field(default=NETWORK, metadata={"help": "the CAN network whose status to show"})
    uplink: str = attrs.field(default="uplink", metadata={"help": "the uplink service's name"})
    batches: Path | None = attrs.field(
        default=None, metadata={"help": "where the uplink's file transport writes (for the closing words)"}
    )
    title: str = attrs.field(default="vwos demo vehicle", metadata={"help": "the panel's title"})


@attrs.frozen
class Snapshot:
    """Everything one frame of the dashboard shows (None: not known, or stale)."""

    uptime: float
    services: tuple[tuple[str, str], ...] | None = None
    link: Any = None
    speed: float | None = None
    rpm: float | None = None
    lever: int | None = None
    gear: int | None = None
    coolant: float | None = None
    fuel_level: float | None = None
    fuel_rate: float | None = None
    odometer: float | None = None
    tyres: tuple[tuple[str, float | None], ...] = ()
    locked: bool | None = None
    doors_open: tuple[str, ...] = ()
    auto_lock: str | None = None
    lock_commands: int | None = None
    trip_km: float | None = None
    trip_s: float | None = None
    trip_speed: float | None = None
    trip_consumption: float | None = None
    trip_fuel: float | None = None
    warnings: tuple[str, ...] = ()
    uplink: Any = None
    #: The uplink's status when the dashboard started: the panel shows what happened since.
    uplink_baseline: Any = None


# -- text ---------------------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    """``value`` formatted, with its unit; ``--`` (as wide, without the unit) when there is none."""
    if value is None:
        width = re.sub(r"\D.*", "", fmt)  # "6.1f" -> "6"
        return "--".rjust(int(width or 0))
    return f"{value:{fmt}}{unit}"


def _count(n: int, what: str) -> str:
    """``1 batch``, ``2 batches``, ``1,000 samples``."""
    plural = what + ("es" if what.endswith(("s", "sh", "ch", "x")) else "s")
    return f"{n:,} {what if n == 1 else plural}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _gear(snap: Snapshot) -> str:
    if snap.lever is None:
        return "--"
    lever = LEVER[snap.lever] if 0 <= snap.lever < len(LEVER) else "?"
    return f"{lever}{snap.gear}" if lever == "D" and snap.gear else lever


def _doors(snap: Snapshot) -> str:
    if snap.locked is None:
        return "--"
    text = "locked" if snap.locked else "unlocked"
    return f"{text}, {'open: ' + ' '.join(snap.doors_open) if snap.doors_open else 'closed'}"


def _uplink(snap: Snapshot) -> tuple[str, str]:
    """(what arrived and left since the dashboard started, what waits), or ("--", "")."""
    status, base = snap.uplink, snap.uplink_baseline
    if status is None:
        return "--", ""
    accepted = status.accepted - (base.accepted if base is not None else 0)
    batches = status.sent_batches - (base.sent_batches if base is not None else 0)
    samples = status.sent_samples - (base.sent_samples if base is not None else 0)
    link = status.transport + ("" if status.connected else " (not connected)")
    sent = f"{link} · {_count(accepted, 'sample')} accepted"
    sent += f" · {_count(batches, 'batch')} ({_count(samples, 'sample')}) shipped"
    return sent, f"{status.stored_samples:,} pending"


def _services(snap: Snapshot, color: bool, width: int) -> list[str]:
    """The services and their states, as many lines of at most ``width`` columns as it takes."""
    if snap.services is None:
        return ["(no control plane)"]
    marks = {"running": ("●", "32"), "starting": ("○", "33"), "backoff": ("○", "33"), "stopping": ("○", "33")}
    lines: list[str] = []
    line, used = "", 0
    for name, state in snap.services:
        mark, code = marks.get(state, ("✖", "31"))
        text = f"{name}" + ("" if state == "running" else f" ({state})")
        if used and used + 4 + len(text) > width:
            lines.append(line)
            line, used = "", 0
        shown = f"\x1b[{code}m{mark}\x1b[0m" if color else mark
        line += ("  " if used else "") + f"{shown} {text}"
        used += (2 if used else 0) + 2 + len(text)
    return [*lines, line]


def _link(snap: Snapshot) -> str:
    link = snap.link
    if link is None:
        return "--"
    if link.state != "up":
        hint = ""
        if "no such network interface" in link.reason:
            channel = link.reason.partition(":")[0]
            hint = f" (make it: sudo ip link add dev {channel} type vcan && sudo ip link set up {channel})"
        return f"DOWN: {link.reason}{hint}"
    bad = (
        link.unknown_ids
        + link.wrong_lengths
        + link.undecodable
        + link.error_frames
        + link.fd_frames
        + link.refused
        + link.e2e_failures
    )
    return f"up ({link.mode}) · {link.frames_received:,} frames in · {link.frames_sent:,} sent · {bad:,} bad"


def render_panel(snap: Snapshot, *, title: str, network: str, color: bool = False) -> list[str]:
    """The panel's lines (each at most about `WIDTH` columns, colour codes aside)."""
    rule = "─" * WIDTH
    head = f" {title}"
    right = f"up {_clock(snap.uptime)} · Ctrl-C stops "
    tyres = "   ".join(
        f"{wheel} {_num(kpa, '.1f')}" + (" ▼" if any(w.endswith(wheel) for w in snap.warnings) else "")
        for wheel, kpa in snap.tyres
    )
    lock = _doors(snap)
    if snap.auto_lock is not None:
        sent = snap.lock_commands
        lock += f" · auto lock {snap.auto_lock} ({_num(sent, 'd')} command{'' if sent == 1 else 's'} sent)"
    warnings = ", ".join(snap.warnings) if snap.warnings else "none"
    if color and snap.warnings:
        warnings = f"\x1b[1;31m{warnings}\x1b[0m"
    shipped, pending = _uplink(snap)
    services = _services(snap, color, WIDTH - 13)
    lines = [
        head + " " * max(1, WIDTH - len(head) - len(right)) + right,
        rule,
        f" services    {services[0]}",
        *(f"             {more}" for more in services[1:]),
        f" CAN {network:<7} {_link(snap)}",
        rule,
        f" speed      {_num(snap.speed, '6.1f', ' km/h')}    gear {_gear(snap):<4}"
        f"  engine {_num(snap.rpm, '5.0f', ' rpm')}    coolant {_num(snap.coolant, '.0f', ' °C')}",
        f" fuel       {_num(snap.fuel_level, '6.2f', ' %')}       {_num(snap.fuel_rate, '5.2f', ' l/h')}"
        f"    odometer {_num(snap.odometer, ',.1f', ' km')}",
        f" tyres kPa  {tyres}",
        f" doors      {lock}",
        f" trip       {_num(snap.trip_km, '.2f', ' km')} in {_clock(snap.trip_s)}"
        f" · {_num(snap.trip_speed, '.1f', ' km/h')} average"
        f" · {_num(snap.trip_consumption, '.1f', ' l/100km')}"
        f" · {_num(snap.trip_fuel, '.3f', ' l')}",
        f" warnings   {warnings}",
        rule,
        f" uplink     {shipped}",
        f"            {pending}" if pending else "",
    ]
    return lines


def render_line(snap: Snapshot) -> str:
    """One plain line for logs and pipes."""
    shipped, pending = _uplink(snap)
    running = "--"
    if snap.services is not None:
        up = sum(1 for _, state in snap.services if state == "running")
        running = f"{up}/{len(snap.services)} running"
    return (
        f"[{_clock(snap.uptime)}] speed {_num(snap.speed, '.1f', ' km/h')} {_gear(snap)}"
        f" {_num(snap.rpm, '.0f', ' rpm')} | fuel {_num(snap.fuel_level, '.2f', ' %')}"
        f" {_num(snap.fuel_rate, '.2f', ' l/h')} | trip {_num(snap.trip_km, '.2f', ' km')}"
        f" {_num(snap.trip_speed, '.1f', ' km/h')} {_num(snap.trip_consumption, '.1f', ' l/100km')}"
        f" | doors {_doors(snap)}, auto lock {snap.auto_lock or '--'}"
        f" | warnings: {', '.join(snap.warnings) or 'none'}"
        f" | uplink {shipped}{', ' + pending if pending else ''} | CAN {_link(snap).partition(' ·')[0]}"
        f" | services {running}"
    )


def closing_words(snap: Snapshot, batches: Path | None, cwd: Path | None = None) -> list[str]:
    """What the dashboard says when the demo stops: what was shipped, where, and how to read it."""
    lines = [f"The demo ran for {_clock(snap.uptime)}."]
    status, base = snap.uplink, snap.uplink_baseline
    if status is not None:
        batches_sent = status.sent_batches - (base.sent_batches if base is not None else 0)
        samples = status.sent_samples - (base.sent_samples if base is not None else 0)
        lines.append(
            f"The uplink shipped {_count(batches_sent, 'batch')} ({_count(samples, 'sample')}) over "
            f"{status.transport}; {_count(status.stored_samples, 'sample')} left in its outbox for next time."
        )
    if batches is not None and (status is None or status.transport == "file"):
        shown = batches
        try:
            shown = batches.relative_to(cwd or Path.cwd())
        except ValueError:
            pass
        count = len(list(batches.glob("*.cbor"))) if batches.is_dir() else 0
        lines.append(
            f"{_count(count, 'batch file')} {'is' if count == 1 else 'are'} in {shown}/ ; to read them:"
        )
        lines.append(f"    vwos uplink inspect {shown} --summary     # or without --summary: every sample")
    elif status is not None and status.transport == "mqtt":
        lines.append("The batches went to the MQTT broker; catch some with")
        lines.append("    mosquitto_sub -h localhost -t 'vwos/+/batches' -C 1 -N > batch.cbor")
        lines.append("and read them with: vwos uplink inspect batch.cbor")
    return lines


# -- the service ---------------------------------------------------------------------------------------------


class Dashboard(Service[DashboardConfig]):
    """Shows the car, its services and the uplink, live; says where the shipped batches are at the end."""

    #: Where the dashboard writes (standard output unless a test sets it).
    out: TextIO | None = None

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        out = self.out if self.out is not None else sys.stdout
        panel = cfg.style == "panel" or (cfg.style == "auto" and out.isatty())
        color = panel and out.isatty() and "NO_COLOR" not in os.environ
        self._start = trio.current_time()
        self._uplink: Any = None
        self._baseline: Any = None
        # The uplink's status from its first sample on (its latest at once if there is one): the first is
        # the baseline of "since the demo started", as the uplink's counters outlive a run.
        uplink_status = ctx.bus.subscribe(f"Uplink.{cfg.uplink}.Status", latest=True)
        snap = Snapshot(uptime=0.0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_uplink, uplink_status)
                task_status.started()
                await self._show(ctx, out, panel, color)
        finally:
            with trio.move_on_after(1.0) as cleanup:
                cleanup.shield = True
                snap = await self.snapshot(ctx)
            out.write("\n" + "\n".join(closing_words(snap, cfg.batches)) + "\n")
            out.flush()

    async def _follow_uplink(self, statuses: Subscription[Any]) -> None:
        with statuses:
            async for sample in statuses:
                if self._baseline is None:
                    self._baseline = sample.value
                self._uplink = sample.value

    async def _show(self, ctx: ServiceContext, out: TextIO, panel: bool, color: bool) -> None:
        cfg = self.config
        if panel:
            out.write("\x1b[2J")  # clear the screen; each frame is drawn from the top left corner
        while True:
            snap = await self.snapshot(ctx)
            if panel:
                lines = render_panel(snap, title=cfg.title, network=cfg.network, color=color)
                out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
            else:
                out.write(render_line(snap) + "\n")
            out.flush()
            ctx.heartbeat()
            await trio.sleep(cfg.interval if panel else cfg.line_interval)

    async def _latest(self, ctx: ServiceContext, topic: Topic[Any] | str, *, fresh: bool = True) -> Any:
        """The latest value of ``topic``, or None if there is none or (with ``fresh``, for measurements
        and statuses sent periodically) it is older than `STALE_AFTER`. Read by name: the dashboard never
        declares a topic."""
        try:
            sample = await ctx.bus.get(topic.name if isinstance(topic, Topic) else topic, allow_stale=True)
        except BusError:  # not declared yet: its publisher has not started
            return None
        if sample is None or (fresh and trio.current_time() - sample.bus_time > STALE_AFTER):
            return None
        return sample.value if sample.available else None  # not available: shown as unknown

    async def _services(self, ctx: ServiceContext) -> tuple[tuple[str, str], ...] | None:
        try:
            reply = await ctx.bus.call(STATUS_METHOD, None, timeout=0.5)
        except BusError:
            return None
        return tuple((row.name, row.state) for row in reply.services)

    async def snapshot(self, ctx: ServiceContext) -> Snapshot:
        """Read everything a frame shows."""
        cfg = self.config
        latest = self._latest
        tyres: list[tuple[str, float | None]] = []
        for wheel, pressure in TIRE_PRESSURE.items():
            tyres.append((wheel, await latest(ctx, pressure)))
        locks = [await latest(ctx, topic) for topic in DOOR_LOCKED.values()]
        opened = tuple([door for door, topic in DOOR_OPEN.items() if await latest(ctx, topic)])
        warnings: list[str] = []
        if await latest(ctx, LOW_FUEL, fresh=False):
            warnings.append("low fuel")
        for wheel, low in TIRE_LOW.items():
            if await latest(ctx, low, fresh=False):
                warnings.append(f"low tyre pressure {wheel}")
        return Snapshot(
            uptime=trio.current_time() - self._start,
            services=await self._services(ctx),
            link=await latest(ctx, f"CAN.{cfg.network}.Status"),
            speed=await latest(ctx, SPEED),
            rpm=await latest(ctx, ENGINE_SPEED),
            lever=await latest(ctx, GEAR_LEVER),
            gear=await latest(ctx, CURRENT_GEAR),
            coolant=await latest(ctx, COOLANT_TEMPERATURE),
            fuel_level=await latest(ctx, FUEL_LEVEL),
            fuel_rate=await latest(ctx, FUEL_RATE),
            odometer=await latest(ctx, ODOMETER),
            tyres=tuple(tyres),
            locked=None if None in locks else all(locks),
            doors_open=opened,
            auto_lock=await latest(ctx, AUTO_LOCK_STATE, fresh=False),
            lock_commands=await latest(ctx, AUTO_LOCK_COMMANDS, fresh=False),
            trip_km=await latest(ctx, TRIP_DISTANCE),
            trip_s=await latest(ctx, TRIP_DURATION),
            trip_speed=await latest(ctx, AVERAGE_SPEED),
            trip_consumption=await latest(ctx, AVERAGE_CONSUMPTION),
            trip_fuel=await latest(ctx, TRIP_FUEL),
            warnings=tuple(warnings),
            uplink=self._uplink,
            uplink_baseline=self._baseline,
        )
