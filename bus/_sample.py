"""The sample: one value as it travels on the bus; "not available" in place of a value; and the column forms
a broker forwards runs in."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, Final, Generic, NamedTuple, TypeVar, overload

import attrs

T = TypeVar("T")

#: The longest `NotAvailable.reason`, in characters.
MAX_REASON_LENGTH: Final = 64


def _reason(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if type(value) is not str or not value or len(value) > MAX_REASON_LENGTH or not value.isprintable():
        raise ValueError(
            f"a NotAvailable reason must be a short printable str (1 to {MAX_REASON_LENGTH} characters), "
            f"not {value!r:.80}"
        )


@attrs.frozen(slots=True)
class NotAvailable:
    """In place of a value: the source says it has no valid value now, and why.

    A sample whose value is a ``NotAvailable`` is news ("the ECU says the speed is not available"), unlike
    no sample at all (no news: see ``max_age`` and staleness). Any topic accepts one whatever its type and
    rules; a record field accepts one where its annotation allows it (``speed: float | NotAvailable``).
    `Sample.available` and `Sample.reason` read it. ``reason`` is a short code; the CAN gateway uses
    ``out_of_range``, ``not_available``, ``e2e`` and others listed in docs/can.md. It travels as the
    registered type ``bus.NotAvailable`` (every `Codec` knows it).
    """

    reason: str = attrs.field(validator=_reason)

    def __str__(self) -> str:
        return f"not available ({self.reason})"


class Sample(NamedTuple, Generic[T]):
    """One published value, immutable.

    ``timestamp`` is the source time in seconds since the epoch (when the value was measured: a CAN frame's
    kernel timestamp, say; the wall clock at publish time if the publisher gave none). ``bus_time`` is the
    bus clock (trio's clock, so MockClock in tests) when the sample entered the bus; staleness and latency
    are measured on it. ``seq`` counts the topic's samples from 1.

    A named tuple rather than an attrs class: it is built once per publish on the hot path, where a tuple
    costs a fifth of a frozen attrs instance, and it is just as immutable.
    """

    topic: str
    value: T
    timestamp: float
    bus_time: float
    publisher: str
    seq: int

    @property
    def available(self) -> bool:
        """False when the value is a `NotAvailable` (the source says it has no valid value)."""
        return type(self.value) is not NotAvailable

    @property
    def reason(self) -> str | None:
        """The `NotAvailable` reason, or None when the sample carries a value."""
        value: Any = self.value
        return value.reason if type(value) is NotAvailable else None


_new_sample = tuple.__new__  # a Sample without the named tuple's Python-level __new__: half the cost


@attrs.define
class SampleRun:
    """Consecutive samples of one topic from one publisher, as columns: how a run published from another
    process travels through the broker to socket subscribers, which send columns anyway, so the sample
    tuples are never built there. ``values[i]`` has ``timestamps[i]`` and seq ``first_seq + i``."""

    topic: str
    values: list[Any]
    timestamps: list[float]
    bus_time: float
    publisher: str
    first_seq: int

    def __len__(self) -> int:
        return len(self.values)

    def head(self, n: int) -> SampleRun:
        """The first ``n`` samples."""
        return SampleRun(
            self.topic,
            _sliced(self.values, 0, n),
            self.timestamps[:n],
            self.bus_time,
            self.publisher,
            self.first_seq,
        )

    def tail(self, n: int) -> SampleRun:
        """The last ``n`` samples."""
        start = len(self.values) - n
        return SampleRun(
            self.topic,
            _sliced(self.values, start, None),
            self.timestamps[start:],
            self.bus_time,
            self.publisher,
            self.first_seq + start,
        )

    def samples(self) -> list[Sample[Any]]:
        n = len(self.values)
        return list(
            map(  # built in C: tuple.__new__(Sample, fields) for each 6-tuple of fields
                _new_sample,
                repeat(Sample),
                zip(
                    repeat(self.topic),
                    self.values,
                    self.timestamps,
                    repeat(self.bus_time),
                    repeat(self.publisher),
                    range(self.first_seq, self.first_seq + n),
                ),
            )
        )


def _sliced(values: list[Any], start: int, stop: int | None) -> list[Any]:
    part = values[start:stop]
    return part if type(values) is list else type(values)(part)  # a FloatList stays one


class SampleColumns(Sequence[Sample[Any]]):
    """A batch of a socket subscriber's queue: runs (`SampleRun`) and single samples, in order, read as a
    sequence of samples (built on first use) or, when it is one topic's consecutive runs from one
    publisher, straight as columns (`run_columns`)."""

    __slots__ = ("_entries", "_len", "_samples")

    def __init__(
        self, entries: list[SampleRun | Sample[Any]], n: int, samples: list[Sample[Any]] | None = None
    ) -> None:
        self._entries = entries
        self._len = n
        #: The samples, once built (or given: ``entries`` when they are all single samples).
        self._samples = samples

    def _absorb(self, other: SampleColumns) -> None:
        """Append ``other``'s samples: the broker grows the SAMPLES message it queued last, while the writer
        has not taken it yet (the entries lists are the batches' own, fresh from `take_columns`)."""
        singles = self._samples is self._entries and other._samples is other._entries
        self._entries.extend(other._entries)
        self._len += other._len
        if not singles:
            self._samples = None  # built from the entries on first use

    def run_columns(self) -> tuple[str, str, list[Any], list[float], float | list[float], int] | None:
        """``(topic, publisher, values, timestamps, bus_time, first_seq)`` when the batch is runs of one
        topic from one publisher with consecutive seqs (``bus_time`` a number when they share it, else one
        per sample); None otherwise."""
        entries = self._entries
        first = entries[0]
        if type(first) is not SampleRun:
            return None
        if len(entries) == 1:
            return (
                first.topic,
                first.publisher,
                first.values,
                first.timestamps,
                first.bus_time,
                first.first_seq,
            )
        kind = type(first.values)  # a FloatList (known floats) stays one if every run's values are one
        values = kind()
        timestamps: list[float] = []
        bus_times: list[float] = []
        shared_time = True
        seq = first.first_seq
        for run in entries:
            if (
                type(run) is not SampleRun
                or run.topic != first.topic
                or run.publisher != first.publisher
                or run.first_seq != seq
            ):
                return None
            if type(run.values) is not kind:
                kind = list
            n = len(run.values)
            seq += n
            values.extend(run.values)
            timestamps.extend(run.timestamps)
            bus_times.extend(repeat(run.bus_time, n))
            shared_time = (
                shared_time
                and run.bus_time == first.bus_time
                and (
                    run.bus_time != 0.0
                    or math.copysign(1.0, run.bus_time) == math.copysign(1.0, first.bus_time)
                )
            )
        bus_time: float | list[float] = first.bus_time if shared_time else bus_times
        if type(values) is not kind:
            values = list(values)
        return first.topic, first.publisher, values, timestamps, bus_time, first.first_seq

    def _all(self) -> list[Sample[Any]]:
        if self._samples is None:
            samples: list[Sample[Any]] = []
            for entry in self._entries:
                if type(entry) is SampleRun:
                    samples.extend(entry.samples())
                else:
                    samples.append(entry)  # type: ignore[arg-type]
            self._samples = samples
        return self._samples

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Sample[Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample[Any]]: ...
    def __getitem__(self, index: int | slice) -> Sample[Any] | list[Sample[Any]]:
        return self._all()[index]

    def __iter__(self) -> Iterator[Sample[Any]]:
        return iter(self._all())
