"""Snapshot mode on a live bus: `SnapshotRecorder` keeps the last N seconds of the recorded samples in a
`Snapshotter` and writes each snapshot to a new MCAP file; `record_bus` drives it in place of a
`RecordingWriter`. It serves the bus method `SNAPSHOT_METHOD` (a snapshot on request) and closes each post
window on time. Files are written in the recorder's own trio task, a few thousand samples at a time, so
that the recording goes on while they are written."""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from bus import BusHandle, Codec, Method, Sample, Subscription, default_codec, matches
from services.record._json import RecordingError
from services.record._snapshot import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MIN_INTERVAL,
    MAX_REASON_LENGTH,
    Condition,
    Snapshot,
    Snapshotter,
)
from services.record._writer import RecordingWriter

__all__ = ["SNAPSHOT_METHOD", "SnapshotRecorder", "SnapshotReply", "SnapshotResult"]

#: The bus method a snapshot recorder serves by default (``vwos bus call Vwos.Record.Snapshot``).
SNAPSHOT_METHOD: Final = "Vwos.Record.Snapshot"
#: Samples written per step before the recorder's other tasks get a turn.
_WRITE_STEP: Final = 4096
#: How long a request or a post window waits for the samples already queued to be taken in (seconds).
_CATCH_UP: Final = 1.0


@default_codec.register(name="vwos.record.SnapshotReply")
@attrs.frozen
class SnapshotReply:
    """The reply of `SNAPSHOT_METHOD`: the file written, its samples, what triggered it, its window (bus
    time), the samples of the window the ring's caps had dropped, and whether the recording stopped
    before its post window ended."""

    file: str
    samples: int
    triggers: tuple[str, ...]
    window_start: float
    window_end: float
    evicted: int
    truncated: bool


@attrs.frozen
class SnapshotResult:
    """A snapshot written (``error`` None) or not (``error`` says why; a partial file may be left)."""

    index: int
    path: str
    samples: int
    triggers: tuple[str, ...]
    window_start: float
    window_end: float
    evicted: int
    truncated: bool
    error: str | None = None

    def reply(self) -> SnapshotReply:
        return SnapshotReply(
            self.path,
            self.samples,
            self.triggers,
            self.window_start,
            self.window_end,
            self.evicted,
            self.truncated,
        )


def _iso(timestamp: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Waiters:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: SnapshotResult | None = None


class SnapshotRecorder:
    """Snapshot mode: keeps the last ``seconds`` of the samples it is given (bus time; at most
    ``max_samples`` and about ``max_bytes``) and writes a snapshot of them to a new file
    ``STEM_snap_NNNN.mcap`` beside ``path`` when a condition's rising edge or a call of the bus method
    ``method`` (None: not served) triggers one; ``post`` seconds after the trigger are included. An
    index whose file exists is skipped: earlier snapshots are never overwritten.

    Give it to `record_bus` in place of a `RecordingWriter`. ``on_snapshot`` is called with each
    `SnapshotResult`. `files`, `recorded` (samples taken in), `dropped` (never received, or dropped by the
    ring's caps before their time), `results`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        seconds: float,
        *,
        conditions: Sequence[Condition] = (),
        post: float = 0.0,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        patterns: Sequence[str] = ("**",),
        method: str | None = SNAPSHOT_METHOD,
        vehicle_id: str | None = None,
        metadata: dict[str, str] | None = None,
        codec: Codec = default_codec,
        on_snapshot: Callable[[SnapshotResult], None] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise RecordingError(
                f"{self.path}: cannot write snapshots: {self.path.parent} is not a directory"
            )
        self.patterns = tuple(patterns)
        self.method = (
            Method(method, object, SnapshotReply, "write the snapshot window to a file") if method else None
        )
        self.vehicle_id = vehicle_id
        self.extra_metadata = dict(metadata or {})
        self.codec = codec
        self.on_snapshot = on_snapshot
        #: The conditions' topics the patterns do not match: watched, not recorded (`record_bus`
        #: subscribes to them too).
        self.watch_topics = tuple(
            sorted({c.topic for c in conditions if not any(matches(p, c.topic) for p in self.patterns)})
        )
        self.snapshotter = Snapshotter(
            seconds,
            conditions=conditions,
            post=post,
            min_interval=min_interval,
            max_samples=max_samples,
            max_bytes=max_bytes,
            watch_only=self.watch_topics,
        )
        self.files: list[Path] = []
        self.results: list[SnapshotResult] = []
        self._index = 0
        self._queue: list[Snapshot] = []
        self._waiters: dict[int, _Waiters] = {}
        self._wake_writer = trio.Event()
        self._wake_timer = trio.Event()
        self._offset: float | None = None  # bus time minus trio's clock, at the last sample received
        self._fed = 0
        #: Tasks waiting until so many samples have been taken in (`_catch_up`).
        self._catching_up: list[tuple[int, trio.Event]] = []
        self._counted = 0
        self._last_seq: dict[str, int] = {}
        self._missed = 0
        self._closed = False

    # -- counts ---------------------------------------------------------------------------------------

    @property
    def recorded(self) -> int:
        """Samples taken in (into the ring, or watched for a condition)."""
        return self._fed

    @property
    def dropped(self) -> int:
        """Samples that never arrived (the larger of the subscription's count and the topics' seq gaps),
        and those the ring's caps dropped before their time or refused."""
        ring = self.snapshotter.ring
        return max(self._missed, self._counted) + ring.evicted + ring.refused

    def count_dropped(self, n: int) -> None:
        """Say that at least ``n`` samples never arrived (a subscription's own count)."""
        self._counted = max(self._counted, n)

    # -- input (what record_bus calls) ---------------------------------------------------------------

    def write_many(self, samples: Sequence[Sample[Any]]) -> None:
        """Take samples in (they are kept for the snapshots, and the conditions see them)."""
        if self._closed:
            raise RecordingError("the recording is closed")
        if not samples:
            return
        last_seq = self._last_seq
        missed = 0
        for sample in samples:
            topic, seq = sample.topic, sample.seq
            last = last_seq.get(topic)
            if last is not None and seq > last + 1:
                missed += seq - last - 1
            last_seq[topic] = seq
        self._missed += missed
        self._fed += len(samples)
        if self._catching_up:
            fed = self._fed
            for target, event in self._catching_up:
                if fed >= target:
                    event.set()
            self._catching_up = [(t, e) for t, e in self._catching_up if not e.is_set()]
        try:
            self._offset = samples[-1].bus_time - trio.current_time()
        except RuntimeError:  # outside trio (a test feeding it directly): no clock to relate to
            pass
        was_pending = self.snapshotter.pending
        ready = self.snapshotter.feed(samples)
        if ready:
            self._hand_over(ready)
        if self.snapshotter.pending is not None and self.snapshotter.pending is not was_pending:
            self._wake_timer.set()

    def write(self, sample: Sample[Any]) -> None:
        self.write_many([sample])

    def _bus_now(self) -> float:
        """Bus time now, as the clock offset at the last sample received puts it."""
        now = trio.current_time() + (self._offset or 0.0)
        return max(now, self.snapshotter.ring.newest)

    def _hand_over(self, ready: Iterable[Snapshot]) -> None:
        self._queue.extend(ready)
        self._wake_writer.set()

    # -- the trio side --------------------------------------------------------------------------------

    async def run(
        self,
        handle: BusHandle,
        sub: Subscription[Any],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the method, close post windows on time, write the snapshots; until cancelled. Started
        once the method is served (its errors, `bus.PermissionDeniedError` or
        `bus.MethodAlreadyServedError`, are raised before)."""
        try:
            await self._run(handle, sub, task_status)
        except BaseExceptionGroup as group:  # an error in serving the method, as itself
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
                raise group.exceptions[0] from None
            raise

    async def _run(
        self, handle: BusHandle, sub: Subscription[Any], task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            if self.method is not None:

                async def snapshot(arg: object) -> SnapshotReply:
                    return await self._request(sub, arg)

                await nursery.start(handle.serve, self.method, snapshot)
            nursery.start_soon(self._post_timer, sub)
            nursery.start_soon(self._writer)
            task_status.started()

    async def _catch_up(self, sub: Subscription[Any]) -> None:
        """Wait until the samples queued by now have been taken in by the recording loop."""
        stats = sub.statistics()
        target = stats.received + stats.queued
        if self._fed >= target:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._catching_up.append((target, event))
        with trio.move_on_after(_CATCH_UP):
            await event.wait()

    async def _request(self, sub: Subscription[Any], arg: object) -> SnapshotReply:
        if arg is None:
            reason = "request"
        elif type(arg) is str and len(arg) <= MAX_REASON_LENGTH and arg.isprintable():
            reason = f"request: {arg}" if arg else "request"
        else:
            raise TypeError(
                f"the argument is the snapshot's reason, a printable text of at most {MAX_REASON_LENGTH} "
                f"characters, or nothing; got {type(arg).__name__} {arg!r:.40}"
            )
        await self._catch_up(sub)
        if self._closed:
            raise RecordingError("the recording is ending")
        snapshot = self.snapshotter.request(reason, self._bus_now(), timestamp=time.time())
        waiters = self._waiters.get(snapshot.index)
        if waiters is None:
            waiters = self._waiters[snapshot.index] = _Waiters()
        if snapshot.pending:
            self._wake_timer.set()
        else:
            self._hand_over([snapshot])
        await waiters.done.wait()
        result = waiters.result
        assert result is not None
        if result.error is not None:
            raise RecordingError(result.error)
        return result.reply()

    async def _post_timer(self, sub: Subscription[Any]) -> None:
        while True:
            due = self.snapshotter.due
            if due is None:
                self._wake_timer = trio.Event()
                await self._wake_timer.wait()
                continue
            await trio.sleep_until(due - (self._offset or 0.0))
            await self._catch_up(sub)
            ready = self.snapshotter.poll(max(due, self._bus_now()))  # the deadline has passed here
            if ready:
                self._hand_over(ready)

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            snapshot = self._queue.pop(0)
            with trio.CancelScope(shield=True):  # a file once begun is finished (close() writes the rest)
                for _ in self._write_steps(snapshot):
                    await trio.lowlevel.checkpoint()  # the recording loop's turn

    # -- writing --------------------------------------------------------------------------------------

    def _next_path(self) -> Path:
        suffix = self.path.suffix or ".mcap"
        while True:
            path = self.path.with_name(f"{self.path.stem}_snap_{self._index:04d}{suffix}")
            self._index += 1
            if not path.exists():
                return path

    def _metadata(self, snapshot: Snapshot) -> dict[str, str]:
        data = {
            **self.extra_metadata,
            **snapshot.metadata(),
            "snapshot_seconds": repr(self.snapshotter.seconds),
        }
        data["snapshot_post"] = repr(self.snapshotter.post)
        if snapshot.timestamp is not None and math.isfinite(snapshot.timestamp):
            data["trigger_time"] = _iso(snapshot.timestamp)
        return data

    def _write_steps(self, snapshot: Snapshot) -> Iterator[None]:
        """Write ``snapshot`` to its file, pausing (a yield) after each step of samples."""
        path = self._next_path()
        error: str | None = None
        samples = snapshot.samples
        try:
            with RecordingWriter(
                path,
                patterns=self.patterns,
                vehicle_id=self.vehicle_id,
                codec=self.codec,
                metadata=self._metadata(snapshot),
            ) as writer:
                self.files.append(path)
                for i in range(0, len(samples), _WRITE_STEP):
                    writer.write_many(samples[i : i + _WRITE_STEP])
                    yield
        except RecordingError as exc:
            error = str(exc)
        result = SnapshotResult(
            snapshot.index,
            str(path),
            len(samples),
            tuple(snapshot.reasons),
            snapshot.start,
            snapshot.end,
            snapshot.evicted,
            snapshot.truncated,
            error,
        )
        snapshot.samples = []  # the memory goes now, not with the last reference to the snapshot
        self.snapshotter.written(snapshot)
        self.results.append(result)
        waiters = self._waiters.pop(snapshot.index, None)
        if waiters is not None:
            waiters.result = result
            waiters.done.set()
        if self.on_snapshot is not None:
            self.on_snapshot(result)

    def close(self) -> list[Path]:
        """The recording ends: the pending snapshot (truncated if its post window is open) and those not
        written yet are written now. The files written. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.extend(self.snapshotter.finish())
            while self._queue:
                for _ in self._write_steps(self._queue.pop(0)):
                    pass
        return list(self.files)
