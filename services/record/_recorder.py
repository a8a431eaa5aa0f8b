"""Recording from a live bus: a subscriber with its own queue that writes every sample it receives with a
`RecordingWriter`, and counts what it did not receive."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from bus import BusHandle, Overflow, Sample, Subscription
from services.record._json import RecordingError
from services.record._snapshot_run import SnapshotRecorder
from services.record._writer import RecordingWriter

__all__ = ["DEFAULT_FLUSH_INTERVAL", "DEFAULT_QUEUE_SIZE", "RecordResult", "record_bus"]

#: The recorder's subscription queue: it drops its oldest sample when full, so that no publisher waits.
DEFAULT_QUEUE_SIZE: Final = 200_000
#: At most this many samples are written per batch (between checkpoints).
_BATCH: Final = 8192
#: Seconds between two flushes of the recording to disk: at most what a killed recorder loses.
DEFAULT_FLUSH_INTERVAL: Final = 1.0


@attrs.frozen
class RecordResult:
    """What a recording took: samples recorded and dropped (never received), bus-time seconds, files,
    and why it ended: ``"duration"``, ``"stopped"`` (the ``stop`` event) or ``"closed"`` (the client or
    its connection to the broker closed)."""

    recorded: int
    dropped: int
    seconds: float
    files: tuple[str, ...]
    ended: str = "duration"


async def record_bus(
    handle: BusHandle,
    writer: RecordingWriter | SnapshotRecorder,
    patterns: Sequence[str] = ("**",),
    *,
    duration: float | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    stop: trio.Event | None = None,
    flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> RecordResult:
    """Record the samples of the topics ``patterns`` match from ``handle`` with ``writer`` for
    ``duration`` seconds (or until ``stop`` is set; until cancelled without either), then close the
    writer. A lost connection to the broker ends the recording too: its error is raised once the files
    are closed.

    The subscription is a ``drop_oldest`` queue of ``queue_size`` samples: a slow disk never slows a
    publisher, and what the queue drops is counted (`RecordResult.dropped`, and the files' metadata: the
    larger of the subscription's own count and the gaps in the topics' seq numbers). ``task_status`` is
    started once subscribed.

    With a `SnapshotRecorder` in place of the writer it records in snapshot mode: the samples go to its
    ring, it serves its bus method and writes its snapshots while the recording goes on (``task_status``
    is started once the method is served too); `RecordResult.files` are the snapshots written.

    Every ``flush_interval`` seconds (None: never) what was recorded since the last time is written out
    (`RecordingWriter.flush`) and fsync'd, in a worker thread: a recorder killed, or a power loss, loses at
    most the samples of the last interval (and those still in its queue); the file then has no summary,
    and `bag_info` / `read_recording` read what it holds.
    """
    started = trio.current_time()
    ended = "duration"
    try:
        if flush_interval is not None and not flush_interval > 0:
            raise RecordingError(f"flush_interval must be positive seconds or None, not {flush_interval!r}")
        snapshots = writer if isinstance(writer, SnapshotRecorder) else None
        watched = snapshots.watch_topics if snapshots is not None else ()
        sub = handle.subscribe(*patterns, *watched, queue_size=queue_size, overflow=Overflow.DROP_OLDEST)
        with sub:
            if snapshots is None:
                task_status.started()
            with trio.move_on_after(math.inf if duration is None else duration) as scope:
                try:
                    async with trio.open_nursery() as nursery:
                        if snapshots is not None:
                            await nursery.start(snapshots.run, handle, sub)
                            task_status.started()
                        if stop is not None:
                            nursery.start_soon(_cancel_on, stop, scope)
                        if flush_interval is not None and isinstance(writer, RecordingWriter):
                            nursery.start_soon(_flush_every, writer, flush_interval)  # not snapshots
                        while True:
                            try:
                                batch = await sub.receive_batch(_BATCH)
                            except (trio.EndOfChannel, trio.ClosedResourceError):
                                ended = "closed"  # the client closed, or lost its connection
                                break
                            writer.write_many(batch)
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:  # the loop's error (a lost connection) as itself
                    if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
                        raise group.exceptions[0] from None
                    raise
            if stop is not None and stop.is_set() and ended != "closed":
                ended = "stopped"
            for batch in _drain(sub):
                writer.write_many(batch)
            writer.count_dropped(sub.statistics().dropped)
    finally:
        files = writer.close()  # no await: a cancellation cannot stop it half-way
    return RecordResult(
        writer.recorded, writer.dropped, trio.current_time() - started, tuple(str(f) for f in files), ended
    )


def _drain(sub: Subscription[Any]) -> list[list[Sample[Any]]]:
    """What is still queued once the recording stops (it arrived in time: it is recorded too)."""
    batches = []
    while True:
        try:
            batches.append(sub.receive_batch_nowait(_BATCH))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
            return batches


async def _flush_every(writer: RecordingWriter, interval: float) -> None:
    flushed = writer.recorded
    while True:
        await trio.sleep(interval)
        if writer.recorded == flushed:
            continue
        flushed = writer.recorded
        writer.flush()
        fd = writer._dup_fd()
        if fd is not None:  # not cancellable: the thread owns fd until it has closed it
            await trio.to_thread.run_sync(_fsync_and_close, fd)


def _fsync_and_close(fd: int) -> None:
    try:
        with contextlib.suppress(OSError):  # a file system that cannot: flushed to the OS all the same
            os.fsync(fd)
    finally:
        os.close(fd)


async def _cancel_on(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
