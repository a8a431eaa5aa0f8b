"""Simulated ECUs: plausible CAN traffic from a database, on trio's clock.

`SimulatedEcu` is the core, without I/O of its own: it sends every message of a database (or those named) at
its cycle time through a ``send`` callable, with values that look like a car's, or with the values of a
vehicle model (``values``). ``vwos can sim`` drives it from the command line; `CanSimulator` is the same as a
service (plugin ``can_sim``) on any python-can interface, and a base class for simulated vehicles: override
`CanSimulator.values` for coherent signal values and `CanSimulator.received` to answer command frames (the
demo vehicle in ``examples/demo`` does both). See ``docs/can.md``, "sim".
"""

from __future__ import annotations

import heapq
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar

import attrs
import can
import cantools.database
import trio

from bus import Codec
from services.can._codec import (
    CanCodec,
    CanDatabaseError,
    EncodeError,
    Frame,
    not_available_values,
)
from services.can._codec import (
    cached_database as _database_of,
)
from services.can._codec import (
    suggest as _suggest,
)
from services.can._config_check import e2e_problems, interface_problem
from services.can._e2e import E2E, E2EProtection, bind_e2e
from services.can._link import keep_link_open, reconnect_backoff
from services.can._transport import (
    CanTransport,
    FrameRefusedError,
    LinkDownError,
    ProblemLog,
    ReceiveMode,
    can_filters,
    frame_message,
    open_python_can,
    positive,
)
from vwos import FieldProblem, Service, ServiceContext, StructureError

#: A vehicle model behind a `SimulatedEcu`: ``values(message, t)`` is a mapping of signal name to physical
#: value for ``message`` at ``t`` seconds after the start.
SignalValues: TypeAlias = Callable[[str, float], Mapping[str, float]]


_COUNTER = re.compile(r"(?:^|_)(?:COUNTER|CNT|BZ|ALIVE)$", re.IGNORECASE)
_CHECKSUM = re.compile(r"(?:^|_)(?:CHECKSUM|CHKSUM|CRC\d*|CHK)$", re.IGNORECASE)
#: Choice names that say "no valid value" or a fault (SNA, Init, Fehler, invalid, ... as real exports spell
#: them, in English and German): the simulator (a healthy car) steps through the other choices, and its
#: waves avoid these raw values.
_NOT_A_VALUE = re.compile(
    r"(?:^|[\W_])(?:sna|init|initiali[sz]\w*|invalid|ung(?:ue|ü)ltig\w*|error|fehler|fault|"
    r"not[\W_]*(?:available|valid|defined)|unavailable|undefined|"
    r"nicht[\W_]*(?:verf(?:ue|ü)gbar|definiert|g(?:ue|ü)ltig)|reserved|reserviert)(?=$|[\W_])",
    re.IGNORECASE,
)
#: ... unless the name says there is none: "kein_Fehler", "NO_FAULT", "PMM_FAULT_NONE", "LAMP_OFF".
_NEGATED = re.compile(
    r"(?:^|[\W_])(?:kein\w*|no|ohne)[\W_]+(?:fehler|fault|error)|[\W_](?:none|off|ok)$", re.IGNORECASE
)


def _means_no_value(name: str) -> bool:
    """Whether a choice's name says the signal has no valid value, or a fault (SNA, Init, Fehler, ...)."""
    return _NOT_A_VALUE.search(name) is not None and _NEGATED.search(name) is None


SignalKind = Literal["counter", "checksum", "wave", "step", "constant", "multiplexer"]


def _signal_range(sig: Any) -> tuple[float, float]:
    """The values a signal can take: its [minimum, maximum] within what its bits can carry."""
    if sig.is_float:
        raw_low, raw_high = -1e3, 1e3
    elif sig.is_signed:
        raw_low, raw_high = -(2 ** (sig.length - 1)), 2 ** (sig.length - 1) - 1
    else:
        raw_low, raw_high = 0, 2**sig.length - 1
    ends = sorted((raw_low * sig.scale + sig.offset, raw_high * sig.scale + sig.offset))
    low = ends[0] if sig.minimum is None else max(ends[0], sig.minimum)
    high = ends[1] if sig.maximum is None else min(ends[1], sig.maximum)
    if low > high:  # a declared range outside what the bits carry: the message will fail to encode
        return ends[0], ends[1]
    return low, high


@attrs.frozen
class _SignalPlan:
    """How one signal's value evolves; `value` is a pure function of time and frame count."""

    name: str
    kind: SignalKind
    low: float
    high: float
    integer: bool
    constant: float = 0.0
    center: float = 0.0
    amplitude: float = 0.0
    period: float = 1.0
    phase: float = 0.0
    #: The multiplexer values this signal is sent with; None: always.
    mux: frozenset[int] | None = None
    #: For "step": the values it steps through, each held ``period`` seconds (from ``phase``). For "wave":
    #: the raw values it must not take (choices that mean "no valid value"), with ``scale`` and ``offset``.
    steps: tuple[float, ...] = ()
    avoid: frozenset[int] = frozenset()
    scale: float = 1.0
    offset: float = 0.0

    def clamp(self, value: float) -> float:
        """``value`` brought into the signal's range (and rounded, for an integer signal)."""
        if not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if self.integer:
            return min(max(round(value), math.ceil(self.low)), math.floor(self.high))
        return min(max(float(value), self.low), self.high)

    def value(self, t: float, n: int) -> float:
        if self.kind == "counter":
            low, high = math.ceil(self.low), math.floor(self.high)
            return low + n % (high - low + 1)
        if self.kind == "wave":
            value = self.center + self.amplitude * math.sin(2 * math.pi * t / self.period + self.phase)
            if self.integer:
                value = round(value)
                value = min(max(value, math.ceil(self.low)), math.floor(self.high))
            else:
                value = min(max(value, self.low), self.high)
            return self._avoided(value) if self.avoid else value
        if self.kind == "step":
            return self.steps[math.floor(t / self.period + self.phase) % len(self.steps)]
        return self.constant

    def _avoided(self, value: float) -> float:
        """``value``, moved by whole raw steps toward the wave's center off a raw value it must avoid."""
        raw = round((value - self.offset) / self.scale)
        toward = 1 if self.center >= value else -1
        if self.scale < 0:
            toward = -toward
        for _ in range(min(len(self.avoid), 64) + 1):  # a bounded walk, however many values it avoids
            if raw not in self.avoid:
                break
            raw += toward
        moved = raw * self.scale + self.offset
        return moved if self.low <= moved <= self.high else value


def _plan_signal(message: Any, sig: Any, default: float) -> _SignalPlan:
    low, high = _signal_range(sig)
    integer = not sig.is_float and float(sig.scale).is_integer() and float(sig.offset).is_integer()
    mux = frozenset(sig.multiplexer_ids) if sig.multiplexer_ids else None
    if sig.is_multiplexer:
        return _SignalPlan(sig.name, "multiplexer", low, high, True)
    if integer and _COUNTER.search(sig.name) and math.floor(high) > math.ceil(low):
        return _SignalPlan(sig.name, "counter", low, high, True, mux=mux)
    if integer and _CHECKSUM.search(sig.name):
        return _SignalPlan(sig.name, "checksum", low, high, True, constant=math.ceil(low), mux=mux)
    physical = not integer or (bool(sig.unit) and sig.length > 2)
    seed = zlib.crc32(f"{message.name}.{sig.name}".encode())
    choices = _choices(sig)
    # Raw values whose choices mean "no valid value" (Init, SNA, ...), and those the gateway's codec takes
    # for "not available" (its labels, GenSigSNA-style attributes): never sent.
    avoid = frozenset(raw for raw, name in choices if sig.scale and _means_no_value(name))
    avoid |= not_available_values(sig)
    if physical and high > low:  # a value, perhaps with a few special raw values named
        if low < 0 < high:  # around zero: a steering angle, an acceleration
            center, amplitude = 0.0, 0.3 * min(-low, high)
        else:  # in the lower part of the range: a speed, a temperature
            center, amplitude = low + 0.25 * (high - low), 0.2 * (high - low)
        return _SignalPlan(
            sig.name,
            "wave",
            low,
            high,
            integer,
            center=center,
            amplitude=amplitude,
            period=20.0 + seed % 41,
            phase=2 * math.pi * ((seed >> 8) % 1000) / 1000,
            mux=mux,
            avoid=avoid,
            scale=float(sig.scale),
            offset=float(sig.offset),
        )
    steps = _steps(sig, choices, low, high, not_available_values(sig))
    if len(steps) > 1:  # an enumeration or a flag with named values: through them, a few seconds each
        return _SignalPlan(
            sig.name,
            "step",
            low,
            high,
            integer,
            period=2.0 + seed % 7,
            phase=((seed >> 8) % 1000) / 1000 * len(steps),
            mux=mux,
            steps=steps,
        )
    value = steps[0] if steps else min(max(default, low), high)
    if integer:
        value = min(max(round(value), math.ceil(low)), math.floor(high))
    plan = _SignalPlan(
        sig.name,
        "constant",
        low,
        high,
        integer,
        center=(low + high) / 2,
        mux=mux,
        avoid=avoid,
        scale=float(sig.scale),
        offset=float(sig.offset),
    )
    # An initial value the database marks as "no valid value" (a percentage whose only choice is 127
    # "SNA"): the nearest valid one instead.
    return attrs.evolve(plan, constant=plan._avoided(value) if avoid else value)


def _choices(sig: Any) -> list[tuple[int, str]]:
    """A signal's choices as (raw value, name)."""
    return [(int(raw), str(name)) for raw, name in (sig.choices or {}).items() if isinstance(raw, int)]


def _steps(
    sig: Any, choices: list[tuple[int, str]], low: float, high: float, unavailable: frozenset[int]
) -> tuple[float, ...]:
    """The physical values of a signal's choices that are in range, those that mean "no valid value" (or a
    fault, or that the codec decodes as not available: ``unavailable`` raw values) left out, in order."""
    values = [(raw * sig.scale + sig.offset, raw, name) for raw, name in sorted(choices)]
    return tuple(
        v
        for v, raw, name in values
        if low - 1e-9 <= v <= high + 1e-9 and not _means_no_value(name) and raw not in unavailable
    )


class _MessagePlan:
    __slots__ = (
        "by_name",
        "checksums",
        "cycle",
        "fd",
        "k",
        "multiplexer",
        "mux_values",
        "name",
        "offset",
        "sent",
        "signals",
    )

    def __init__(self, codec: CanCodec, message: Any, cycle: float) -> None:
        self.name: str = message.name
        self.cycle = cycle
        #: The first send's delay from the start, and the index of the cycle due next.
        self.offset = 0.0
        self.k = 0
        self.sent = 0
        defaults = codec.defaults(message.name)
        plans = [_plan_signal(message, s, defaults[s.name]) for s in message.signals]
        self.multiplexer = next((p for p in plans if p.kind == "multiplexer"), None)
        self.signals = [p for p in plans if p.kind not in ("multiplexer", "checksum")]
        self.checksums = [p for p in plans if p.kind == "checksum"]
        #: The signals a `SignalValues` hook may set: all but the multiplexer and the checksums.
        self.by_name = {p.name: p for p in self.signals}
        values = sorted({v for p in plans if p.mux is not None for v in p.mux})
        self.mux_values = values or [0]
        #: Whether its frames are CAN FD (`Frame.is_fd` of the codec's frames), known once it encoded one.
        self.fd = False


def _undecodable(message: Any, frames: list[Frame]) -> str | None:
    """Why frames cantools encoded for ``message`` cannot be decoded again (None if they can): a receiver
    would count every one of them as undecodable, so the simulator leaves such a message out. So it is with
    signals reaching past the message's length, which a database loaded with ``strict=False`` may have."""
    for frame in frames:
        try:
            message.decode(frame.data, decode_choices=False)
        except Exception as exc:
            why = str(exc).rstrip(".") or type(exc).__name__
            return f"cantools encodes it but cannot decode the frames: {why}"
    return None


def _why_not(message: Any, exc: Exception) -> str:
    """Why a message cannot be encoded: cantools' overlap check says it better than the encoder."""
    try:
        message.refresh(strict=True)  # rebuilds the same codecs; raises if signals overlap
    except Exception as check:
        return f"{str(check).rstrip('.')}: cantools cannot encode overlapping signals"
    return str(exc)


class SimulatedEcu:
    """A simulated ECU: sends every message of a CAN database (or the ``messages`` named) at its cycle
    time (cantools' ``cycle_time``; ``default_cycle`` seconds for messages without one), with plausible
    signal values, encoded by `CanCodec`.

    Values: signals named like counters (``COUNTER``, ``*_BZ``, ``*_CNT``) count up by one per frame and
    wrap; checksums (``CHECKSUM``, ``*_CRC``, ``*_CHK``) are the XOR of the frame's other bytes (plausible,
    not valid for any real algorithm); physical signals (scaled, or with a unit) follow a slow sine (a
    period of 20-60 s) within their range, around zero for signed ranges and in the lower half otherwise,
    stepping over raw values whose choices mean "no valid value" (SNA, Init, Fehler, ...); signals with
    choices (enumerations, named flags) step through the choices in their range, a few seconds each,
    leaving out those that mean "no valid value" or a fault; the others (plain flags and integers) keep
    their initial value. Multiplexed messages cycle through their multiplexer values. Signals without a
    declared minimum or maximum take the range their bits carry.

    Left out, with the reason in `skipped`: a message that cannot be encoded (cantools cannot encode
    overlapping signals, which databases loaded with ``strict=False`` may have), one whose frames cantools
    encodes but cannot decode (signals reaching past its length), and, with ``fd=False`` (a classic link),
    one whose frames are CAN FD (`Frame.is_fd`; `fd_messages` lists those it sends).

    ``values``, if given, is a model of the vehicle behind the ECU: ``values(message, t)`` returns signal
    values of ``message`` at ``t`` seconds after the start (a mapping of signal name to physical value),
    which replace the planned ones; each is brought into the signal's range (and rounded for integer
    signals), so a model cannot make a frame fail to encode. Counters and checksums stay the ECU's (a
    checksum is computed over the model's values). It is called once per frame, in time order, and once
    per message (at ``t = 0``) when the ECU is made, to check that the messages encode. A name that is not a
    signal the model may set (an unknown one, the multiplexer, a checksum) is a ``ValueError``.

    `run` sends with trio's timing (MockClock in tests): one task, sleeping until the next message is due.
    The first frames are spread over each message's first cycle, so they do not all leave at once.
    `start` and `poll` are the same schedule without I/O.
    """

    def __init__(
        self,
        source: CanCodec | cantools.database.can.Database,
        send: Callable[[Frame], None],
        *,
        messages: Iterable[str] | None = None,
        default_cycle: float = 0.1,
        values: SignalValues | None = None,
        fd: bool = True,
        e2e: Mapping[str, E2EProtection] | None = None,
    ) -> None:
        if not default_cycle > 0:
            raise ValueError(f"default_cycle must be positive seconds, not {default_cycle!r}")
        self.codec = source if isinstance(source, CanCodec) else self._codec(source)
        self._send = send
        self._values = values
        #: E2E protectors by message name: they fill each frame's alive counter and CRC.
        self._protectors = {name: p.protector() for name, p in (e2e or {}).items()}
        chosen = list(self.codec.db.messages)
        if messages is not None:
            wanted = set(messages)
            known = {m.name for m in chosen}
            for name in sorted(wanted - known):
                raise ValueError(f"no message {name!r} in the database{_suggest(name, known)}")
            chosen = [m for m in chosen if m.name in wanted]
        #: Messages that cannot be encoded, and why; they are not sent.
        self.skipped: dict[str, str] = {}
        self._plans: list[_MessagePlan] = []
        for message in chosen:
            cycle = message.cycle_time / 1000.0 if message.cycle_time else default_cycle
            plan = _MessagePlan(self.codec, message, cycle)
            try:
                probes = [self._encode(plan, 0.0, n) for n in range(len(plan.mux_values))]
            except EncodeError as exc:
                self.skipped[message.name] = _why_not(message, exc)
                continue
            undecodable = _undecodable(message, probes)
            if undecodable is not None:
                self.skipped[message.name] = undecodable
                continue
            plan.fd = any(frame.is_fd for frame in probes)
            if plan.fd and not fd:
                self.skipped[message.name] = (
                    f"CAN FD ({message.length} data bytes), and the link is classic CAN (not fd)"
                )
                continue
            self._plans.append(plan)
        self._heap: list[tuple[float, int]] = []
        self._t0 = 0.0
        #: Frames sent by `run` so far.
        self.sent = 0

    @staticmethod
    def _codec(db: cantools.database.can.Database) -> CanCodec:
        return CanCodec(db, "sim", message_topics=False, codec=Codec())

    @property
    def messages(self) -> list[str]:
        """The messages it sends, in database order."""
        return [p.name for p in self._plans]

    @property
    def fd_messages(self) -> list[str]:
        """The messages it sends as CAN FD frames (`Frame.is_fd`), in database order: a link for them must
        be opened with FD."""
        return [p.name for p in self._plans if p.fd]

    def _plan(self, message: str) -> _MessagePlan:
        plan = next((p for p in self._plans if p.name == message), None)
        if plan is None:
            raise KeyError(f"{message}: not one of the simulated messages")
        return plan

    def cycle(self, message: str) -> float:
        """A message's period, in seconds."""
        return self._plan(message).cycle

    def statistics(self) -> dict[str, int]:
        """Frames made so far, by message."""
        return {p.name: p.sent for p in self._plans}

    def _encode(self, plan: _MessagePlan, t: float, n: int) -> Frame:
        values: dict[str, float] = {}
        mux_value: int | None = None
        if plan.multiplexer is not None:
            mux_value = plan.mux_values[n % len(plan.mux_values)]
            values[plan.multiplexer.name] = mux_value
        for sig in plan.signals:
            if sig.mux is None or mux_value in sig.mux:
                values[sig.name] = sig.value(t, n)
        if self._values is not None:
            for name, value in self._values(plan.name, t).items():
                given = plan.by_name.get(name)
                if given is None:
                    raise ValueError(f"{plan.name}: the vehicle model sets {name!r}, not a signal it may set")
                if given.mux is None or mux_value in given.mux:
                    values[name] = given.clamp(value)
        checksums = [c for c in plan.checksums if c.mux is None or mux_value in c.mux]
        for check in checksums:
            values[check.name] = check.constant
        frame = self.codec.encode(plan.name, values, base={})
        if not checksums or plan.name in self._protectors:  # E2E fills its CRC (`_next_frame`)
            return frame
        xor = 0
        for byte in frame.data:
            xor ^= byte
        for check in checksums:
            values[check.name] = min(max(xor, math.ceil(check.low)), math.floor(check.high))
        return self.codec.encode(plan.name, values, base={})

    def frame(self, message: str, t: float) -> Frame:
        """The next frame of ``message`` as it would be sent ``t`` seconds after the start (its counters
        advance)."""
        return self._next_frame(self._plan(message), t)

    def _next_frame(self, plan: _MessagePlan, t: float) -> Frame:
        frame = self._encode(plan, t, plan.sent)
        protector = self._protectors.get(plan.name)
        if protector is not None:
            frame = attrs.evolve(frame, data=protector.protect(frame.data))
        plan.sent += 1
        return frame

    # -- the schedule, without I/O ------------------------------------------------------------------------

    @property
    def start_time(self) -> float:
        """The time given to `start`: ``t`` in the schedule (and in ``values``) is counted from it."""
        return self._t0

    def start(self, now: float) -> None:
        """Start the schedule at time ``now``: message i of n is first due ``cycle * i / n`` later."""
        self._t0 = now
        count = len(self._plans)
        self._heap = []
        for i, plan in enumerate(self._plans):
            plan.offset, plan.k = plan.cycle * i / count, 0
            self._heap.append((now + plan.offset, i))
        heapq.heapify(self._heap)

    def next_due(self) -> float:
        """When the next frame is due (``math.inf`` if nothing is simulated)."""
        return self._heap[0][0] if self._heap else math.inf

    def poll(self, now: float) -> list[Frame]:
        """The frames due by ``now``, in order. A message late by more than a cycle skips what it missed
        rather than sending a burst."""
        frames = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, i = heapq.heappop(heap)
            plan = self._plans[i]
            try:
                frames.append(self._next_frame(plan, due - self._t0))
            except EncodeError as exc:  # values the probe at the start did not meet: leave it out
                self.skipped[plan.name] = _why_not(self.codec.db.get_message_by_name(plan.name), exc)
                continue
            start = self._t0 + plan.offset
            plan.k += 1
            if start + plan.k * plan.cycle <= now:
                plan.k = math.floor((now - start) / plan.cycle) + 1
                while start + plan.k * plan.cycle <= now:  # rounding
                    plan.k += 1
            heapq.heappush(heap, (start + plan.k * plan.cycle, i))
        return frames

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send the messages until cancelled. Whatever ``send`` raises ends it."""
        self.start(trio.current_time())
        task_status.started()
        while True:
            await trio.sleep_until(self.next_due())
            for frame in self.poll(trio.current_time()):
                self._send(frame)
                self.sent += 1


# -- the service ------------------------------------------------------------------------------------------


def _database(inst: Any, attribute: attrs.Attribute[Path], value: Path) -> None:
    """The database must exist and load (as ``strict`` says)."""
    if not value.is_file():
        raise ValueError(f"{value}: no such file")
    try:
        _database_of(value, getattr(inst, "strict", True))
    except CanDatabaseError as exc:
        raise ValueError(str(exc)) from None


def _message_names(inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    """Every name must be a message of the database (read once the database and ``strict`` are known)."""
    if not value:
        return
    try:
        db = _database_of(inst.database, inst.strict)
    except CanDatabaseError:
        return  # reported at ``database``
    known = [m.name for m in db.messages]
    sent = set(getattr(inst, "messages", None) or ()) if attribute.name == "receive" else set()
    problems = []  # every one, each at its index
    for i, name in enumerate(value):
        if name not in known:
            message = f"no message {name!r} in {Path(inst.database).name}{_suggest(name, known)}"
            problems.append(FieldProblem((i,), message))
        elif name in sent:
            problems.append(
                FieldProblem((i,), f"{name}: listed in both messages and receive (an ECU sends or receives)")
            )
    if problems:
        raise StructureError(problems, key=attribute.alias)


def _known_e2e(inst: Any, attribute: attrs.Attribute[Any], value: tuple[E2E, ...]) -> None:
    problems = e2e_problems(inst, value)
    if problems:
        raise StructureError(problems, key=attribute.alias)


def _interface(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    problem = interface_problem(value)
    if problem is not None:
        raise ValueError(problem)


@attrs.frozen
class SimulatorConfig:
    """`CanSimulator`'s ``[services.NAME.config]``: the database, the interface, what to send and receive."""

    database: Path = attrs.field(
        validator=_database, metadata={"help": "the CAN database (DBC, KCD, SYM, ARXML)"}
    )
    strict: bool = attrs.field(
        default=True, metadata={"help": "false for real-world databases with overlaps"}
    )
    interface: str = attrs.field(
        default="socketcan", validator=_interface, metadata={"help": "a python-can interface"}
    )
    channel: str = attrs.field(default="vcan0", metadata={"help": "the interface's channel"})
    bitrate: int | None = attrs.field(default=None, metadata={"help": "for interfaces that set it"})
    fd: bool = attrs.field(default=False, metadata={"help": "CAN FD frames"})
    messages: tuple[str, ...] | None = attrs.field(
        default=None,
        validator=_message_names,
        metadata={"help": "the messages it sends (default: every message not in receive)"},
    )
    receive: tuple[str, ...] = attrs.field(
        default=(),
        validator=_message_names,
        metadata={"help": "messages it listens for, such as commands (the rest are read and dropped)"},
    )
    default_cycle: float = attrs.field(
        default=0.1,
        validator=positive,
        metadata={"help": "seconds between frames of messages without a cycle time"},
    )
    receive_mode: ReceiveMode = attrs.field(default="auto", metadata={"help": "auto | fd | thread | poll"})
    poll_interval: float = attrs.field(
        default=0.01, validator=positive, metadata={"help": "seconds, for poll"}
    )
    reconnect_initial: float = attrs.field(
        default=0.1, validator=positive, metadata={"help": "seconds before the first try to reopen the link"}
    )
    reconnect_max: float = attrs.field(
        default=5.0,
        validator=positive,
        metadata={"help": "the longest wait between tries, doubling up to it"},
    )
    log_interval: float = attrs.field(
        default=10.0,
        validator=positive,
        metadata={"help": "at most one log line per problem kind this often"},
    )
    e2e: tuple[E2E, ...] = attrs.field(
        default=(),
        validator=_known_e2e,
        metadata={"help": "end-to-end protection (CRC, alive counter) filled into the messages it sends"},
    )


SimConfigT = TypeVar("SimConfigT", bound=SimulatorConfig)


class CanSimulator(Service[SimConfigT]):
    """A simulated ECU on a CAN interface: sends a database's messages at their cycle times.

    The plugin ``can_sim`` sends plausible values (see `SimulatedEcu`). As a base class it is a simulated
    vehicle: override `values` with a model of the car and `received` to act on command frames, and give
    the subclass its own config class (a subclass of `SimulatorConfig`, set as ``config_class``).

    It keeps its link the way the gateway does: an interface that is missing or fails is logged as a
    warning and reopened with exponential backoff (frames due meanwhile are dropped, and counted), so a
    simulator started before its ``vcan0`` exists does not crash-loop the supervisor.
    """

    config_class: ClassVar[type[Any]] = SimulatorConfig

    # -- what a simulated vehicle overrides -----------------------------------------------------------

    def values(self, message: str, t: float) -> Mapping[str, float]:
        """Signal values of ``message`` at ``t`` seconds after the start, replacing the planned ones (see
        `SimulatedEcu`). The default sets none: every signal follows its plan."""
        return {}

    def received(self, message: str, signals: Mapping[str, float], t: float) -> None:
        """A frame of one of the ``receive`` messages arrived, decoded (physical values), ``t`` seconds
        after the start. The default ignores it."""

    # -- the service ----------------------------------------------------------------------------------

    def open_transport(self) -> CanTransport:
        """Open the CAN link (tests may override it with a `MemoryTransport`)."""
        cfg = self.config
        filters = can_filters(self._receive)
        return open_python_can(
            cfg.interface,
            cfg.channel,
            fd=cfg.fd,
            bitrate=cfg.bitrate,
            filters=filters or None,
            mode=cfg.receive_mode,
            poll_interval=cfg.poll_interval,
        )

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self.ctx = ctx
        db = _database_of(cfg.database, cfg.strict)
        codec = CanCodec(db, "sim", message_topics=False, codec=Codec())
        receive = set(cfg.receive)
        sends = (
            cfg.messages
            if cfg.messages is not None
            else [m.name for m in db.messages if m.name not in receive]
        )
        self._receive: dict[tuple[int, bool], Any] = {
            (m.frame_id, bool(m.is_extended_frame)): m for m in db.messages if m.name in receive
        }
        self._transport: CanTransport | None = None
        self._problem = ProblemLog(ctx.log, "CAN simulator problem", cfg.log_interval)
        #: Frames sent, frames dropped (link down or refusing), frames of ``receive`` messages handed on.
        self.frames_sent = self.frames_dropped = self.frames_received = 0
        self.ecu = SimulatedEcu(
            codec,
            self._send,
            messages=sends,
            default_cycle=cfg.default_cycle,
            values=self.values,
            fd=cfg.fd,
            e2e=bind_e2e(cfg.e2e, db),
        )
        for name, reason in self.ecu.skipped.items():
            ctx.log.warning("message not simulated", message=name, reason=reason)
        ctx.log.info(
            "simulating",
            database=str(cfg.database),
            messages=len(self.ecu.messages),
            receive=sorted(receive),
            interface=cfg.interface,
            channel=cfg.channel,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self._link)
            await nursery.start(self.ecu.run)
            nursery.start_soon(self._beat)
            task_status.started()

    async def _beat(self) -> None:
        while True:
            self.ctx.heartbeat()
            await trio.sleep(1.0)

    def _send(self, frame: Frame) -> None:
        transport = self._transport
        if transport is None:
            self.frames_dropped += 1
            return
        try:
            transport.send(frame_message(frame))
        except (LinkDownError, FrameRefusedError, can.CanError) as exc:
            self.frames_dropped += 1  # a frame the interface refuses (EINVAL: FD on a classic vcan) too
            self._problem("send", f"a frame was not sent: {exc}")
            return
        self.frames_sent += 1

    async def _link(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link open (ready after the first try, whether it worked or not): read what arrives
        while it is up; when it fails, log it and reopen with exponential backoff."""
        cfg = self.config
        down: str | None = None

        def up(transport: CanTransport) -> None:
            nonlocal down
            self._transport = transport
            if down is not None:
                self.ctx.log.info("CAN link up again", channel=cfg.channel)
            down = None

        def failed(reason: str) -> None:
            nonlocal down
            if down != reason:
                self.ctx.log.warning("CAN link down: frames are dropped, reconnecting", reason=reason)
            down = reason

        def closed() -> None:
            self._transport = None

        await keep_link_open(
            self.open_transport,
            self._handle,
            reconnect_backoff(cfg.reconnect_initial, cfg.reconnect_max),
            up=up,
            down=failed,
            closed=closed,
            task_status=task_status,
        )

    def _handle(self, batch: list[can.Message]) -> None:
        """Hand the frames of ``receive`` messages to `received`; drop the rest."""
        if not self._receive:
            return
        now = trio.current_time() - self.ecu.start_time
        for msg in batch:
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            message = self._receive.get((msg.arbitration_id, msg.is_extended_id))
            if message is None:
                continue
            try:
                signals = message.decode(bytes(msg.data), decode_choices=False)
            except Exception as exc:
                self._problem("undecodable", f"{message.name} (0x{msg.arbitration_id:x}): {exc}")
                continue
            self.frames_received += 1
            self.received(message.name, signals, now)
