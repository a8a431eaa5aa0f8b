"""Replay: a recording published into a bus through any `bus.BusHandle`, with its bus-time spacing scaled
by a rate (or as fast as it can), in trio's clock, so that under MockClock a replay is deterministic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from bus import (
    BusHandle,
    Codec,
    EnumMember,
    NotAvailable,
    PublisherHandle,
    Record,
    Topic,
    TopicError,
    UnknownTopicError,
    ValueRefusedError,
    default_codec,
)
from services.record._json import RecordingError
from services.record._parts import Recordings, read_recording

__all__ = ["ReplayResult", "replay"]

#: As fast as it can: a checkpoint after this many samples, so the bus and the writer keep up.
_YIELD_EVERY: Final = 512


@attrs.frozen
class ReplayResult:
    """What a replay published: samples handed to the bus (``refused`` included), passes through the
    recording, trio-clock seconds it took, and
    the samples skipped (not available on a topic not declared yet, whose type was not known yet) and
    refused by the bus (a value its topic's type or rules do not take: a topic whose type changed)."""

    published: int
    loops: int
    seconds: float
    skipped: int = 0
    refused: int = 0


async def _publisher(handle: BusHandle, name: str, value: Any) -> PublisherHandle[Any] | None:
    """A publisher for the topic ``name``: by name when the bus has it declared, else declared here with
    the class of ``value`` (None while that is not known: a not-available value)."""
    try:
        await handle.get(name, allow_stale=True)
        return handle.publisher(name)
    except UnknownTopicError:
        pass
    cls = type(value)
    if cls in (NotAvailable, Record, EnumMember):
        if cls is NotAvailable:
            return None
        raise RecordingError(
            f"{name}: no such topic is declared on the bus, and this process has no class for its type "
            f"{value.type_name} to declare it with: start the service that declares it first"
        )
    try:
        return handle.publisher(Topic(name, cls))
    except TopicError as exc:
        raise RecordingError(f"{name}: cannot declare the topic to replay it: {exc}") from None


async def replay(
    handle: BusHandle,
    path: Recordings,
    patterns: Sequence[str] = (),
    *,
    rate: float = 1.0,
    loop: bool = False,
    loops: int | None = None,
    codec: Codec = default_codec,
) -> ReplayResult:
    """Publish the recording at ``path`` (the topics ``patterns`` match; all without) through ``handle``:
    one file, or the parts of a split recording as one (its base name, or the files: see `bag_info`), their
    timing continuous across the parts, ``loop`` going over all of them.

    Each sample is published at its recorded bus time less the first one's, divided by ``rate``, from now
    in trio's clock (``rate=0``: as fast as the bus takes them), with its recorded source timestamp, and its
    value decoded back to its type (`read_recording`: registered classes, else `bus.Record`, which the
    broker checks against its classes). ``loop`` starts over at the end (``loops`` passes at most; for ever
    without), the next pass after the last one's span. Returns what was published. Raises `RecordingError`
    for a file that is not a whole recording (what came before the bad part has been published) and
    the bus's own errors (a value its topic refuses, a permission denied). A topic the bus has not
    declared is declared with the class of its first value (no unit or range: start the service that
    declares it first to have those); its not-available samples before that are skipped (counted).
    """
    if not rate >= 0 or rate == float("inf"):
        raise RecordingError(f"rate must be a finite number >= 0, not {rate!r}")
    publishers: dict[str, PublisherHandle[Any]] = {}
    started = trio.current_time()
    published = passes = skipped = refused = 0
    origin = started
    while True:
        first: float | None = None
        last_offset = 0.0
        for sample in read_recording(path, patterns, codec=codec):
            if first is None:
                first = sample.bus_time
            offset = max(0.0, sample.bus_time - first)
            last_offset = max(last_offset, offset)
            if rate:
                target = origin + offset / rate
                if target > trio.current_time():
                    await trio.sleep_until(target)
            elif published % _YIELD_EVERY == _YIELD_EVERY - 1:
                await trio.lowlevel.checkpoint()
            publisher = publishers.get(sample.topic)
            if publisher is None:
                publisher = await _publisher(handle, sample.topic, sample.value)
                if publisher is None:
                    skipped += 1
                    continue
                publishers[sample.topic] = publisher
            try:
                publisher.publish_nowait(sample.value, timestamp=sample.timestamp)
            except trio.WouldBlock:  # the outgoing queue is full: wait for room
                await publisher.publish(sample.value, timestamp=sample.timestamp)
            except ValueRefusedError:
                # This sample (in-process), or an earlier one the broker refused (over a socket, where the
                # refusal comes later and this sample was not queued): counted once, this one tried again.
                refused += 1
                try:
                    publisher.publish_nowait(sample.value, timestamp=sample.timestamp)
                except ValueRefusedError:
                    published += 1  # this very sample: handed to the bus, and counted as refused above
                    continue
                except trio.WouldBlock:
                    await publisher.publish(sample.value, timestamp=sample.timestamp)
            published += 1
        passes += 1
        if not loop or first is None or (loops is not None and passes >= loops):
            break
        origin += last_offset / rate if rate else 0.0
        await trio.lowlevel.checkpoint()
    try:
        await handle.flush()
    except ValueRefusedError:
        refused += 1
    return ReplayResult(published, passes, trio.current_time() - started, skipped, refused)
