"""Snapshot mode's pure logic, without I/O: the ring of the last N seconds of samples (bounded also by a
sample count and a byte estimate), trigger conditions on topics (parsed from text, firing on a rising edge,
at most once per minimum interval), and `Snapshotter`, the state machine that turns triggers into
`Snapshot`\\ s -- the window before a trigger and, optionally, a post window after it.

Time here is always bus time (`bus.Sample.bus_time`); the trio driver (``_snapshot_run``) tells it "now".
"""

from __future__ import annotations

import collections
import enum
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from bus import EnumMember, NotAvailable, Record, Sample, check_pattern
from services.record._json import RecordingError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MIN_INTERVAL",
    "MAX_CONDITION_LENGTH",
    "MAX_REASON_LENGTH",
    "Condition",
    "ConditionError",
    "Snapshot",
    "SnapshotRing",
    "SnapshotTooSoonError",
    "Snapshotter",
    "Trigger",
    "parse_condition",
    "sample_size",
]

#: The ring's default caps: a flood of samples cannot take more memory than this.
DEFAULT_MAX_SAMPLES: Final = 1_000_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: A trigger fires at most once per this many seconds of bus time by default.
DEFAULT_MIN_INTERVAL: Final = 10.0
#: The longest condition text, and the longest reason a caller may give.
MAX_CONDITION_LENGTH: Final = 1000
MAX_REASON_LENGTH: Final = 200
#: At most this many reasons are kept per snapshot (more are counted).
_MAX_REASONS: Final = 32
#: The ring remembers its cap evictions in this many buckets per window (for `Snapshot.evicted`).
_EVICTION_BUCKETS: Final = 256
#: What a sample costs held in the ring beyond its value: the named tuple (6 slots), a slot in each of the
#: ring's deques, the bus time and seq objects, the timestamp (measured with tracemalloc; see the tests).
_SAMPLE_OVERHEAD: Final = 200
_NESTING: Final = 64


class ConditionError(RecordingError):
    """A trigger condition that cannot be parsed: the message says what is wrong in it."""


class SnapshotTooSoonError(RecordingError):
    """A snapshot asked for sooner than the minimum interval after the last one (or while the writer is
    behind): the message says when the next one can be taken."""


# -- sizes ----------------------------------------------------------------------------------------------

_getsizeof = sys.getsizeof
_SMALL: Final[dict[type, int]] = {float: 24, int: 28, bool: 0, type(None): 0}


def _value_size(value: Any, depth: int) -> int:
    t = type(value)
    fixed = _SMALL.get(t)
    if fixed is not None:
        return fixed if t is not int else _getsizeof(value)
    if t is str or t is bytes or t is bytearray:
        return _getsizeof(value)
    if depth > _NESTING or isinstance(value, enum.Enum) or t is EnumMember:
        return 8  # shared objects (enum members), or too deep to be recorded anyway
    if t is NotAvailable:
        return 56
    if t is tuple or t is list or t is set or t is frozenset:
        return _getsizeof(value) + sum(_value_size(v, depth + 1) for v in value)
    if t is dict:
        return _getsizeof(value) + sum(
            _value_size(k, depth + 1) + _value_size(v, depth + 1) for k, v in value.items()
        )
    if t is Record:
        return 56 + _value_size(value.fields, depth + 1)
    if attrs.has(t):
        return _getsizeof(value) + sum(
            _value_size(getattr(value, a.name), depth + 1) for a in attrs.fields(t)
        )
    return _getsizeof(value)


def sample_size(sample: Sample[Any]) -> int:
    """An estimate of the bytes ``sample`` keeps alive in the ring (its value walked, shared objects such as
    the topic name and enum members not counted). Used for the byte cap, not for accounting to the byte."""
    value = sample.value
    if type(value) is float:
        return _SAMPLE_OVERHEAD + 24
    return _SAMPLE_OVERHEAD + _value_size(value, 0)


# -- conditions -----------------------------------------------------------------------------------------

_ORDERING: Final = (">", ">=", "<", "<=")
_EQUALITY: Final = ("==", "!=")
_AVAILABILITY: Final = ("is available", "is not available")
_USAGE: Final = "expected 'TOPIC OP VALUE' (OP one of > >= < <= == !=) or 'TOPIC is [not] available'"
_COMPARISON = re.compile(r"(?P<topic>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<operand>.*)", re.DOTALL)
_AVAILABLE = re.compile(r"(?P<topic>\S+)\s+is\s+(?P<not>not\s+)?available", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_MAX_INT_DIGITS: Final = 40


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _operand(text: str, op: str, where: str) -> float | int | bool | str:
    if text in ("true", "false"):
        if op in _ORDERING:
            raise ConditionError(f"{where}: {op!r} compares numbers; {text} is a bool (use == or !=)")
        return text == "true"
    if text[:1] in ("'", '"'):
        quote = text[0]
        if len(text) < 2 or text[-1] != quote:
            raise ConditionError(f"{where}: the text {_shown(text)} has no closing {quote}")
        if quote == '"':
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConditionError(
                    f"{where}: the text {_shown(text)} is not a valid quoted text: {exc.msg}"
                ) from None
            if type(value) is not str:  # pragma: no cover - a JSON document in quotes is a str
                raise ConditionError(f"{where}: {_shown(text)} is not a quoted text")
        else:
            value = text[1:-1]
            if "'" in value:
                raise ConditionError(f"{where}: the text {_shown(text)} has a ' inside (quote it with \")")
        if op in _ORDERING:
            raise ConditionError(f"{where}: {op!r} compares numbers; {_shown(text)} is a text (use == or !=)")
        return value
    if _INTEGER.fullmatch(text):
        if len(text) > _MAX_INT_DIGITS:
            raise ConditionError(
                f"{where}: the number {_shown(text, 20)} has more than {_MAX_INT_DIGITS} digits"
            )
        return int(text)
    if _NUMBER.fullmatch(text):
        number = float(text)
        if not math.isfinite(number):
            raise ConditionError(f"{where}: the number {_shown(text)} is out of range")
        return number
    if not text:
        raise ConditionError(f"{where}: nothing to compare with after {op!r}")
    raise ConditionError(
        f"{where}: expected a number, true, false or a quoted text after {op!r}, got {_shown(text)}"
    )


def _topic(text: str, where: str) -> str:
    try:
        check_pattern(text)
    except Exception as exc:
        raise ConditionError(f"{where}: {_shown(text)} is not a topic name: {exc}") from None
    if "*" in text:
        raise ConditionError(f"{where}: a trigger's topic is one name, not a pattern ({_shown(text)})")
    return text


@attrs.frozen
class Condition:
    """A condition on one topic's latest value, as parsed by `parse_condition`: ``Vehicle.Speed > 130``,
    ``Vehicle.Gear == "REVERSE"``, ``Body.Horn.IsActive == true``, ``Vehicle.Speed is not available``."""

    #: The condition as written (whitespace around the parts normalized).
    text: str
    topic: str
    #: One of ``> >= < <= == !=``, ``is available``, ``is not available``.
    op: str
    #: The number, bool or text compared with (None for the availability tests).
    operand: float | int | bool | str | None

    def holds(self, value: object) -> bool | None:
        """Whether the condition holds for ``value``: True or False, or None when ``value`` cannot be
        compared with the operand (a text where a number is wanted, a record...: false, but worth telling).

        A `bus.NotAvailable` value makes every comparison false (it is no value). Numbers compare as
        numbers (``130 == 130.0``), never with a bool; texts compare with texts, and with enum members by
        their names (``Vehicle.Gear == "REVERSE"``)."""
        op = self.op
        if type(value) is NotAvailable:
            return op == "is not available"
        if op == "is available":
            return True
        if op == "is not available":
            return False
        operand = self.operand
        if type(operand) is bool:
            if type(value) is not bool:
                return None
        elif type(operand) is str:
            if isinstance(value, enum.Enum) or type(value) is EnumMember:
                value = value.name
            elif type(value) is not str:
                return None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if op == "==":
            return bool(value == operand)
        if op == "!=":
            return bool(value != operand)
        if op == ">":
            return bool(value > operand)  # type: ignore[operator]
        if op == ">=":
            return bool(value >= operand)  # type: ignore[operator]
        if op == "<":
            return bool(value < operand)  # type: ignore[operator]
        return bool(value <= operand)  # type: ignore[operator]

    def __str__(self) -> str:
        return self.text


def parse_condition(text: str) -> Condition:
    """Parse a trigger condition: ``TOPIC OP VALUE`` (OP one of ``> >= < <= == !=``; VALUE a number,
    ``true``/``false``, or a text in double or single quotes), or ``TOPIC is not available`` / ``TOPIC is
    available``. The ordering operators take numbers only. `ConditionError` says what is wrong."""
    if not isinstance(text, str):
        raise ConditionError(f"a trigger condition must be a str, not {type(text).__name__}")
    where = f"trigger {_shown(text)}"
    if len(text) > MAX_CONDITION_LENGTH:
        raise ConditionError(f"{where}: longer than {MAX_CONDITION_LENGTH} characters")
    stripped = text.strip()
    if not stripped:
        raise ConditionError("a trigger condition is empty: " + _USAGE)
    available = _AVAILABLE.fullmatch(stripped)
    if available is not None:
        topic = _topic(available["topic"], where)
        op = "is not available" if available["not"] else "is available"
        return Condition(f"{topic} {op}", topic, op, None)
    comparison = _COMPARISON.fullmatch(stripped)
    if comparison is None:
        raise ConditionError(f"{where}: {_USAGE}")
    topic = _topic(comparison["topic"], where)
    op = comparison["op"]
    raw = comparison["operand"].strip()
    operand = _operand(raw, op, where)
    return Condition(f"{topic} {op} {raw}", topic, op, operand)


@attrs.define
class Trigger:
    """A condition's state: fires on a rising edge (false -- or not seen yet -- to true), at most once per
    ``min_interval`` seconds of bus time; what it did is counted."""

    condition: Condition
    min_interval: float = DEFAULT_MIN_INTERVAL
    #: Whether the condition held for the topic's last sample.
    active: bool = False
    #: Rising edges that took (or joined) a snapshot; those too soon after the last (suppressed); those
    #: skipped because the writer was behind; samples whose value could not be compared (and its type).
    fired: int = 0
    suppressed: int = 0
    skipped: int = 0
    mismatched: int = 0
    mismatched_type: str | None = None
    #: The bus time of the last firing.
    last_fired: float | None = None

    def edge(self, value: object) -> bool:
        """Take the topic's next value; True on a rising edge (whether or not it may fire: see `may_fire`)."""
        holds = self.condition.holds(value)
        if holds is None:
            self.mismatched += 1
            if self.mismatched_type is None:
                self.mismatched_type = type(value).__name__
            holds = False
        rising = holds and not self.active
        self.active = holds
        return rising

    def may_fire(self, now: float) -> bool:
        return self.last_fired is None or not now - self.last_fired < self.min_interval


# -- the ring -------------------------------------------------------------------------------------------


class SnapshotRing:
    """The last ``seconds`` of samples (by bus time), at most ``max_samples`` of them and about
    ``max_bytes`` (`sample_size`): when a cap is reached the oldest samples go first, and are counted
    (`evicted`).

    Samples are expected in bus-time order, as a subscription delivers them. One that comes late is kept in
    arrival order and ages with the newest before it; one older than the window on arrival is not kept
    (`late`). A sample whose bus time is not finite is refused (`refused`).
    """

    def __init__(
        self, seconds: float, *, max_samples: int = DEFAULT_MAX_SAMPLES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise RecordingError(f"a snapshot window must be a positive number of seconds, not {seconds!r}")
        if not (type(max_samples) is int and max_samples >= 1):
            raise RecordingError(f"max_samples must be a whole number >= 1, not {max_samples!r}")
        if not (type(max_bytes) is int and max_bytes >= 1):
            raise RecordingError(f"max_bytes must be a whole number of bytes >= 1, not {max_bytes!r}")
        self.seconds = float(seconds)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self._samples: collections.deque[Sample[Any]] = collections.deque()
        #: Per sample: its size and the time it ages by (its bus time, or the newest before it if later).
        self._sizes: collections.deque[int] = collections.deque()
        self._keys: collections.deque[float] = collections.deque()
        #: The estimated bytes held.
        self.bytes = 0
        #: The newest bus time seen (-inf before the first sample).
        self.newest = -math.inf
        #: Samples taken in; aged out of the window; evicted by a cap before their time; too old on
        #: arrival; refused (no finite bus time).
        self.pushed = 0
        self.aged = 0
        self.evicted = 0
        self.late = 0
        self.refused = 0
        #: The key of the newest sample a cap evicted (-inf: none).
        self.evicted_until = -math.inf
        # Cap evictions in buckets of window/_EVICTION_BUCKETS seconds: [first key, last key, count].
        self._buckets: collections.deque[list[Any]] = collections.deque()

    def __len__(self) -> int:
        return len(self._samples)

    def push(self, sample: Sample[Any]) -> None:
        """Take one sample in; age out and evict what no longer fits."""
        t = sample.bus_time
        newest = self.newest
        if t >= newest:
            if t == math.inf:
                self.refused += 1
                return
            self.newest = newest = t
        elif t < newest - self.seconds or t != t:
            if t != t:
                self.refused += 1
            else:
                self.late += 1
            return
        else:
            t = newest  # late, but in the window: it ages with the newest
        size = sample_size(sample)
        self._samples.append(sample)
        self._sizes.append(size)
        self._keys.append(t)
        self.bytes += size
        self.pushed += 1
        keys = self._keys
        limit = newest - self.seconds
        while keys[0] < limit:
            self._pop()
            self.aged += 1
        if len(keys) > self.max_samples or self.bytes > self.max_bytes:
            self._evict()

    def _pop(self) -> float:
        self._samples.popleft()
        self.bytes -= self._sizes.popleft()
        return self._keys.popleft()

    def _evict(self) -> None:
        keys = self._keys
        resolution = self.seconds / _EVICTION_BUCKETS
        buckets = self._buckets
        while keys and (len(keys) > self.max_samples or self.bytes > self.max_bytes):
            key = self._pop()
            self.evicted += 1
            self.evicted_until = key
            if buckets and key - buckets[-1][0] < resolution:
                buckets[-1][1] = key
                buckets[-1][2] += 1
            else:
                buckets.append([key, key, 1])
        limit = self.newest - self.seconds
        while buckets and buckets[0][1] < limit:
            buckets.popleft()

    def evicted_since(self, start: float) -> int:
        """How many samples of bus time ``start`` or later the caps evicted (an upper bound: counted in
        buckets of 1/256 of the window)."""
        limit = self.newest - self.seconds
        while self._buckets and self._buckets[0][1] < limit:
            self._buckets.popleft()
        return sum(count for _, last, count in self._buckets if last >= start)

    def window(self, start: float, end: float = math.inf) -> list[Sample[Any]]:
        """The samples held whose bus times are from ``start`` to ``end``, in order (a new list)."""
        return [s for s in self._samples if start <= s.bus_time <= end]

    def samples(self) -> list[Sample[Any]]:
        """Every sample held, oldest first (a new list)."""
        return list(self._samples)


# -- snapshots ------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Snapshot:
    """One snapshot: the samples from ``start`` to ``end`` (bus time), taken at ``time`` for ``reasons``.

    ``pending`` while its post window is open (samples still arrive); `Snapshotter.feed`, `poll` and
    `finish` hand it over once complete. ``evicted`` counts samples of the window the ring's caps dropped
    before it was taken (at most; 0 when the ring held all of it); ``post_dropped`` those of the post
    window over the caps; ``truncated`` says the recording stopped before its post window ended.
    """

    index: int
    time: float
    start: float
    end: float
    reasons: list[str]
    samples: list[Sample[Any]]
    evicted: int = 0
    complete_from: float | None = None
    post_dropped: int = 0
    more_reasons: int = 0
    suppressed: int = 0
    truncated: bool = False
    pending: bool = True
    #: The source timestamp of the triggering sample, or the time of the request (epoch seconds).
    timestamp: float | None = None
    _bytes: int = 0
    _post: int = 0
    _max_samples: int = DEFAULT_MAX_SAMPLES
    _max_bytes: int = DEFAULT_MAX_BYTES

    def add_reason(self, reason: str) -> None:
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)
        else:
            self.more_reasons += 1

    def _take(self, sample: Sample[Any]) -> None:
        """A sample of the post window (held within the ring's caps of its own)."""
        size = sample_size(sample)
        if self._post >= self._max_samples or self._bytes + size > self._max_bytes:
            self.post_dropped += 1
            return
        self._bytes += size
        self._post += 1
        self.samples.append(sample)

    def metadata(self) -> dict[str, str]:
        """What the snapshot's file says of it (the ``vwos`` metadata record's extra keys)."""
        data = {
            "snapshot_index": str(self.index),
            "trigger": json.dumps(self.reasons, ensure_ascii=False),
            "trigger_bus_time": repr(self.time),
            "window_start": repr(self.start),
            "window_end": repr(self.end),
            "window_samples": str(len(self.samples)),
            "evicted": str(self.evicted),
        }
        if self.more_reasons:
            data["more_triggers"] = str(self.more_reasons)
        if self.complete_from is not None:
            data["complete_from"] = repr(self.complete_from)
        if self.post_dropped:
            data["post_dropped"] = str(self.post_dropped)
        if self.suppressed:
            data["suppressed"] = str(self.suppressed)
        if self.truncated:
            data["truncated"] = "true"
        return data


class Snapshotter:
    """The ring and the triggers: `feed` the samples of a subscription in order, `request` snapshots (a
    bus method's call), `poll` with the bus time now, `finish` at the end; each hands back the snapshots
    that are complete, to be written.

    A snapshot holds the samples of ``seconds`` before its trigger up to ``post`` seconds after it. A
    trigger while a snapshot is pending (its post window open) joins it (its reason added). Each trigger
    fires at most once per ``min_interval`` seconds (a condition's rising edges in between are
    ``suppressed``; a request in between is refused with `SnapshotTooSoonError`), and at most
    ``max_outstanding`` snapshots are taken and not yet `written` (a trigger beyond is skipped, or refused):
    memory stays bounded by the ring's caps and that many snapshots.

    ``record`` says which topics go into the ring (None: all fed); the conditions' topics that it refuses
    are only watched.
    """

    def __init__(
        self,
        seconds: float,
        *,
        conditions: Sequence[Condition] = (),
        post: float = 0.0,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_outstanding: int = 2,
        watch_only: Iterable[str] = (),
    ) -> None:
        if not (isinstance(post, (int, float)) and math.isfinite(post) and post >= 0):
            raise RecordingError(f"post must be seconds >= 0, not {post!r}")
        if not (isinstance(min_interval, (int, float)) and math.isfinite(min_interval) and min_interval >= 0):
            raise RecordingError(f"min_interval must be seconds >= 0, not {min_interval!r}")
        if not (type(max_outstanding) is int and max_outstanding >= 1):
            raise RecordingError(f"max_outstanding must be a whole number >= 1, not {max_outstanding!r}")
        self.ring = SnapshotRing(seconds, max_samples=max_samples, max_bytes=max_bytes)
        self.seconds = self.ring.seconds
        self.post = float(post)
        self.min_interval = float(min_interval)
        self.max_outstanding = max_outstanding
        self.triggers = [Trigger(c, self.min_interval) for c in conditions]
        self._by_topic: dict[str, list[Trigger]] = {}
        for trigger in self.triggers:
            self._by_topic.setdefault(trigger.condition.topic, []).append(trigger)
        #: Requests (bus method calls): their last firing, and how many were refused.
        self.request_trigger = Trigger(Condition("request", "", "is available", None), self.min_interval)
        self._watch_only = frozenset(watch_only)
        self.pending: Snapshot | None = None
        #: Snapshots taken so far; taken and not yet `written`.
        self.taken = 0
        self.outstanding = 0
        self._suppressed = 0

    # -- the clock's view ---------------------------------------------------------------------------

    @property
    def due(self) -> float | None:
        """The bus time the pending snapshot's post window ends (None: nothing pending)."""
        return None if self.pending is None else self.pending.end

    # -- input ---------------------------------------------------------------------------------------

    def feed(self, samples: Iterable[Sample[Any]]) -> list[Snapshot]:
        """Take samples in order (into the ring, the pending snapshot, the triggers); the snapshots
        completed on the way."""
        ready: list[Snapshot] = []
        push = self.ring.push
        by_topic = self._by_topic
        watch_only = self._watch_only
        for sample in samples:
            pending = self.pending
            if pending is not None and sample.bus_time > pending.end:
                ready.append(self._complete(pending))
                pending = None
            topic = sample.topic
            if not watch_only or topic not in watch_only:
                push(sample)
                if pending is not None:
                    pending._take(sample)
            triggers = by_topic.get(topic)
            if triggers is not None:
                for trigger in triggers:
                    if trigger.edge(sample.value):
                        snapshot = self._fire(
                            trigger, trigger.condition.text, sample.bus_time, sample.timestamp
                        )
                        if snapshot is not None and not snapshot.pending:
                            ready.append(snapshot)
        return ready

    def request(self, reason: str, now: float, *, timestamp: float | None = None) -> Snapshot:
        """A snapshot asked for at bus time ``now`` (at least the newest sample's), for ``reason``: the
        pending snapshot it joined, or a new one (``pending`` while its post window is open). Refused with
        `SnapshotTooSoonError` sooner than ``min_interval`` after the last request, or while
        ``max_outstanding`` snapshots are being written."""
        if type(reason) is not str or len(reason) > MAX_REASON_LENGTH:
            raise RecordingError(f"a snapshot's reason is a text of at most {MAX_REASON_LENGTH} characters")
        now = max(now, self.ring.newest)
        trigger = self.request_trigger
        if self.pending is None:
            if not trigger.may_fire(now):
                assert trigger.last_fired is not None
                trigger.suppressed += 1
                wait = trigger.last_fired + self.min_interval - now
                raise SnapshotTooSoonError(
                    f"the last snapshot asked for was taken {now - trigger.last_fired:.1f} s ago; the next "
                    f"can be taken in {wait:.1f} s (the minimum interval is {self.min_interval:g} s)"
                )
            if self.outstanding >= self.max_outstanding:
                trigger.skipped += 1
                raise SnapshotTooSoonError(
                    f"{self.outstanding} snapshots are still being written; ask again when they are"
                )
        snapshot = self._fire(trigger, reason or "request", now, timestamp, force=True)
        assert snapshot is not None
        return snapshot

    def poll(self, now: float) -> list[Snapshot]:
        """The pending snapshot once bus time ``now`` is past its post window."""
        pending = self.pending
        if pending is not None and now >= pending.end:
            return [self._complete(pending)]
        return []

    def finish(self) -> list[Snapshot]:
        """The recording ends: the pending snapshot as it is (``truncated`` if its post window was still
        open)."""
        pending = self.pending
        if pending is None:
            return []
        if self.ring.newest < pending.end:
            pending.truncated = True
        return [self._complete(pending)]

    def written(self, snapshot: Snapshot) -> None:
        """Say that a snapshot handed over has been written (or given up): room for the next."""
        self.outstanding = max(0, self.outstanding - 1)

    # -- inside --------------------------------------------------------------------------------------

    def _complete(self, snapshot: Snapshot) -> Snapshot:
        snapshot.pending = False
        if self.pending is snapshot:
            self.pending = None
        return snapshot

    def _fire(
        self, trigger: Trigger, reason: str, now: float, timestamp: float | None, *, force: bool = False
    ) -> Snapshot | None:
        pending = self.pending
        if pending is not None:
            trigger.fired += 1
            trigger.last_fired = now
            pending.add_reason(reason)
            return pending
        if not force:
            if not trigger.may_fire(now):
                trigger.suppressed += 1
                self._suppressed += 1
                return None
            if self.outstanding >= self.max_outstanding:
                trigger.skipped += 1
                self._suppressed += 1
                return None
        trigger.fired += 1
        trigger.last_fired = now
        ring = self.ring
        start = now - self.seconds
        evicted_until = ring.evicted_until
        snapshot = Snapshot(
            index=self.taken,
            time=now,
            start=start,
            end=now + self.post,
            reasons=[reason],
            samples=ring.window(start, now),
            evicted=ring.evicted_since(start),
            complete_from=evicted_until if evicted_until >= start else None,
            suppressed=self._suppressed,
            timestamp=timestamp,
            max_samples=ring.max_samples,
            max_bytes=ring.max_bytes,
        )
        self._suppressed = 0
        self.taken += 1
        self.outstanding += 1
        if self.post > 0:
            self.pending = snapshot
        else:
            snapshot.pending = False
        return snapshot
