"""A subscriber's bounded queue, its overflow policies, and how its reader waits."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import attrs
import trio

from bus._sample import Sample, SampleColumns, SampleRun
from bus._topic import Overflow

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

T = TypeVar("T")
R = TypeVar("R")


@attrs.frozen
class SubscriptionStatistics:
    """A snapshot of one subscription's queue."""

    client: str
    pattern: str
    overflow: Overflow
    capacity: int
    queued: int
    received: int
    #: Samples that never reached the reader: what the queue dropped, and what never got into it.
    dropped: int
    #: Of ``dropped``, the samples a publisher that does not wait (``publish_nowait``) left out because
    #: this ``block`` queue was full (always 0 for the other policies).
    dropped_nowait: int = 0


class Subscription(Generic[T]):
    """The receiving end of a subscription: a bounded queue of samples, read by one task at a time.

    Read it with ``async for sample in sub``, ``await sub.receive()``, or in batches with
    ``await sub.receive_batch()`` (everything queued, at least one sample: the fast way to keep up with a
    busy topic). Close it (or use it as a context manager) to unsubscribe; the owning client closes it too.
    """

    __slots__ = (
        "_closed",
        "_detach",
        "_error",
        "_extra",
        "_latest",
        "_missed",
        "_parked",
        "_pushed",
        "_queue",
        "_received",
        "_space",
        "_waiter",
        "capacity",
        "client",
        "overflow",
        "pattern",
        "patterns",
        "push",
        "push_run",
    )

    def __init__(
        self,
        client: str,
        pattern: str | tuple[str, ...],
        capacity: int,
        overflow: Overflow,
        detach: Callable[[Subscription[Any]], None],
        pushed: Callable[[], int],
        parked: set[Subscription[Any]],
    ) -> None:
        self.client = client
        #: The names and patterns subscribed to (one or more), and the same as one text (", " between).
        self.patterns: tuple[str, ...] = (pattern,) if type(pattern) is str else tuple(pattern)
        self.pattern = ", ".join(self.patterns)
        self.capacity = capacity
        self.overflow = overflow
        self._detach = detach
        #: How many samples the bus has pushed to this subscription so far (computed from the topics'
        #: sequence numbers, so the hot path counts nothing): drops = pushed - received - queued.
        self._pushed = pushed
        self._latest: dict[str, Sample[T]] = {}
        self._received = 0
        self._parked = parked
        self._closed = False
        #: Why the subscription was closed, if it was refused: raised by reads once the queue is empty.
        self._error: BaseException | None = None
        #: Samples left out of a full ``block`` queue by publishers that do not wait.
        self._missed = 0
        self._waiter: trio.lowlevel.Task | None = None
        self._space = trio.lowlevel.ParkingLot()
        #: Called by the bus for each sample: for queues, the deque's own C ``append``.
        self.push: Callable[[Sample[T]], None]
        #: Called by the bus with a run of samples of one topic: for queues, the deque's own C ``extend``.
        self.push_run: Callable[[Sequence[Sample[T]]], None]
        self._queue: deque[Any]
        #: Samples queued beyond the queue's entries (a `ColumnSubscription`'s runs; 0 here), so that
        #: ``len(_queue) + _extra`` is the queued count of either kind: what publishers compare with
        #: ``capacity`` on the hot path, without a property call.
        self._extra = 0
        self._make_queue()

    def _make_queue(self) -> None:
        """The queue and the push functions. DROP_OLDEST: a deque with maxlen drops the oldest by itself,
        in C. BLOCK: a publisher that waits pushes only when there is room; one that does not wait finds
        the sample left out (and counted) when the queue is full. LATEST: one slot per topic."""
        overflow = self.overflow
        self._queue = deque(maxlen=self.capacity if overflow is Overflow.DROP_OLDEST else None)
        if overflow is Overflow.LATEST:
            self.push = self._push_latest
            self.push_run = self._push_latest_of_run
        elif overflow is Overflow.BLOCK:
            self.push = self._push_block
            self.push_run = self._push_run_block
        else:
            self.push = self._queue.append
            self.push_run = self._queue.extend

    # -- the bus's side ------------------------------------------------------------------------------

    def _push_latest(self, sample: Sample[T]) -> None:
        latest = self._latest
        topic = sample.topic
        if topic not in latest and len(latest) >= self.capacity:
            del latest[next(iter(latest))]
        latest[topic] = sample

    def _push_latest_of_run(self, samples: Sequence[Sample[T]]) -> None:
        self._push_latest(samples[-1])  # one topic: the last one is the latest

    def _push_block(self, sample: Sample[T]) -> None:
        queue = self._queue
        if len(queue) < self.capacity:
            queue.append(sample)
        else:
            self._missed += 1

    def _push_run_block(self, samples: Sequence[Sample[T]]) -> None:
        room = self.capacity - len(self._queue)
        if room >= len(samples):
            self._queue.extend(samples)
            return
        if room > 0:
            self._queue.extend(samples[:room])
        self._missed += len(samples) - max(room, 0)

    def wake(self) -> None:
        """Wake the reader if it waits (the bus calls this after pushing)."""
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None
            self._parked.discard(self)

    @property
    def full(self) -> bool:
        """True if the queue holds ``capacity`` samples."""
        return len(self._queue) >= self.capacity

    @property
    def room(self) -> int:
        """How many more samples the queue takes before it is full (``block``: before publishers wait)."""
        return self.capacity - len(self._queue)

    async def _wait_for_space(self) -> None:
        await self._space.park()

    def _pop_all(self, max_items: int | None) -> list[Sample[T]]:
        if self._latest:
            items = list(self._latest.values())
            self._latest.clear()
            if max_items is not None and len(items) > max_items:
                for sample in items[max_items:]:
                    self._latest[sample.topic] = sample
                items = items[:max_items]
        else:
            queue = self._queue
            if max_items is None or max_items >= len(queue):
                items = list(queue)
                queue.clear()
            else:
                items = [queue.popleft() for _ in range(max_items)]
        self._received += len(items)
        if self._space:
            self._space.unpark_all()
        return items

    def _pop_one(self) -> Sample[T]:
        if self._latest:
            topic = next(iter(self._latest))
            sample = self._latest.pop(topic)
        else:
            sample = self._queue.popleft()
        self._received += 1
        if self._space:
            self._space.unpark_all()
        return sample

    # -- the reader's side ---------------------------------------------------------------------------

    def receive_nowait(self) -> Sample[T]:
        """Take the next sample; raise `trio.WouldBlock` if none is queued. Once the subscription is
        closed and empty: `trio.ClosedResourceError`, or the error it was refused with (a remote
        subscription the broker refused, e.g. `PermissionDeniedError`)."""
        if self._queue or self._latest:
            return self._pop_one()
        if self._closed:
            self._raise_closed()
        raise trio.WouldBlock

    def _raise_closed(self) -> NoReturn:
        if self._error is not None:
            raise self._error
        raise trio.ClosedResourceError(f"subscription to {self.pattern!r} is closed")

    def receive_batch_nowait(self, max_items: int | None = None) -> list[Sample[T]]:
        """Take every queued sample (at most ``max_items``); raise `trio.WouldBlock` if none is queued."""
        if self._queue or self._latest:
            return self._pop_all(max_items)
        if self._closed:
            self._raise_closed()
        raise trio.WouldBlock

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise trio.BusyResourceError(f"another task is already receiving from {self.pattern!r}")
        self._waiter = trio.lowlevel.current_task()
        self._parked.add(self)  # publishers look for readers to wake only while this set is not empty

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._waiter = None
            self._parked.discard(self)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _receive_with(self, take: Callable[[], R]) -> R:
        """``take()`` (a ``*_nowait`` read) as a trio operation: a checkpoint, and a wait when it would
        block."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            got = take()
        except trio.WouldBlock:
            await self._wait()
            return take()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return got

    async def receive(self) -> Sample[T]:
        """Wait for the next sample and take it."""
        return await self._receive_with(self.receive_nowait)

    async def receive_batch(self, max_items: int | None = None) -> list[Sample[T]]:
        """Wait until at least one sample is queued, then take all queued (at most ``max_items``)."""
        return await self._receive_with(lambda: self.receive_batch_nowait(max_items))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Sample[T]:
        try:
            return await self.receive()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None

    def statistics(self) -> SubscriptionStatistics:
        """Queue depth, capacity, and how many samples were received and dropped."""
        queued = self._queued()
        return SubscriptionStatistics(
            client=self.client,
            pattern=self.pattern,
            overflow=self.overflow,
            capacity=self.capacity,
            queued=queued,
            received=self._received,
            dropped=self._pushed() - self._received - queued,
            dropped_nowait=self._missed,
        )

    def _queued(self) -> int:
        return len(self._queue) + len(self._latest)

    @property
    def closed(self) -> bool:
        return self._closed

    def _fail(self, error: BaseException) -> None:
        """Close the subscription because it was refused: reads raise ``error`` once the queue is empty."""
        if not self._closed:
            self._error = error
        self.close()

    def close(self) -> None:
        """Unsubscribe. Samples already queued can still be read; then reads raise or iteration ends."""
        if self._closed:
            return
        pushed = self._pushed()
        self._pushed = lambda: pushed  # frozen: nothing more is pushed
        self._detach(self)
        self._closed = True
        self.wake()
        self._space.unpark_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} of {self.client!r} ({self.overflow.value}, {self.capacity})>"


class ColumnSubscription(Subscription[Any]):
    """The broker's queue for a subscriber in another process: the same bounded queue and policies
    (``drop_oldest`` or ``block``; not ``latest``), but a run published from another process is queued as
    one `SampleRun` entry and read back as columns (`receive_columns`), so that the broker forwards it
    without building a sample tuple per value. Single samples (published in this process) queue as they
    are, a ``block`` queue's with the deque's own C ``append``.

    Samples queued = entries + ``_extra`` (each run adds its length less one); ``_runs`` counts the run
    entries, so that a queue of single samples is taken as fast as a `Subscription`'s."""

    __slots__ = ("_runs",)

    def _make_queue(self) -> None:
        if self.overflow is Overflow.LATEST:
            raise ValueError("a ColumnSubscription queues samples: drop_oldest or block, not latest")
        self._queue = deque()  # SampleRun and Sample entries: bounded by counting, not by maxlen
        self._extra = 0
        self._runs = 0
        # (no push_run: the bus hands a ColumnSubscription its runs through push_columns)
        if self.overflow is Overflow.DROP_OLDEST:
            self.push = self._push_one
        else:  # block: a sample beyond the room is left out (a publisher that waits never brings one)
            self.push = self._push_block_one

    def _push_one(self, sample: Sample[Any]) -> None:
        self._queue.append(sample)
        if len(self._queue) + self._extra > self.capacity:
            self._drop_oldest()

    def _push_block_one(self, sample: Sample[Any]) -> None:
        if len(self._queue) + self._extra < self.capacity:
            self._queue.append(sample)
        else:
            self._missed += 1

    def push_columns(self, run: SampleRun) -> None:
        """Queue a run (the bus calls this instead of building its samples). A ``block`` queue takes what
        fits and leaves the rest out (counted)."""
        n = len(run.values)
        if self.overflow is Overflow.BLOCK:
            room = self.capacity - len(self._queue) - self._extra
            if room < n:
                if room <= 0:
                    self._missed += n
                    return
                self._missed += n - room
                run, n = run.head(room), room
        self._queue.append(run)
        self._extra += n - 1
        self._runs += 1
        if self.overflow is Overflow.DROP_OLDEST and len(self._queue) + self._extra > self.capacity:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        queue = self._queue
        excess = len(queue) + self._extra - self.capacity
        while excess > 0:
            first = queue[0]
            if type(first) is not SampleRun:
                queue.popleft()
                excess -= 1
                continue
            n = len(first.values)
            if n <= excess:
                queue.popleft()
                self._runs -= 1
                self._extra -= n - 1
                excess -= n
            else:
                queue[0] = first.tail(n - excess)
                self._extra -= excess
                excess = 0

    @property
    def full(self) -> bool:
        return len(self._queue) + self._extra >= self.capacity

    @property
    def room(self) -> int:
        return self.capacity - len(self._queue) - self._extra

    def _queued(self) -> int:
        return len(self._queue) + self._extra

    def take_columns(self, max_items: int | None = None) -> SampleColumns:
        """Take the queued samples (at most ``max_items``, at least one), as `SampleColumns`; raise
        `trio.WouldBlock` if none is queued."""
        queue = self._queue
        if not queue:
            if self._closed:
                self._raise_closed()
            raise trio.WouldBlock
        queued = len(queue) + self._extra
        limit = queued if max_items is None else max(1, min(queued, max_items))
        entries: list[Any]
        if not self._runs:  # single samples only
            if limit == queued:
                entries = list(queue)
                queue.clear()
            else:
                entries = [queue.popleft() for _ in range(limit)]
            taken = SampleColumns(entries, limit, entries)
        else:
            entries = []
            count = 0
            while count < limit:
                first = queue[0]
                if type(first) is not SampleRun:
                    entries.append(queue.popleft())
                    count += 1
                    continue
                n = len(first.values)
                if count + n <= limit:
                    entries.append(queue.popleft())
                    self._runs -= 1
                    self._extra -= n - 1
                    count += n
                else:
                    part = limit - count
                    entries.append(first.head(part))
                    queue[0] = first.tail(n - part)
                    self._extra -= part
                    count = limit
            taken = SampleColumns(entries, limit)
        self._received += limit
        if self._space:
            self._space.unpark_all()
        return taken

    async def receive_columns(self, max_items: int | None = None) -> SampleColumns:
        """Wait until at least one sample is queued, then take them (see `take_columns`)."""
        return await self._receive_with(lambda: self.take_columns(max_items))

    def _pop_all(self, max_items: int | None) -> list[Sample[Any]]:
        return list(self.take_columns(max_items))

    def _pop_one(self) -> Sample[Any]:
        return self.take_columns(1)[0]
