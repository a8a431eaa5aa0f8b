"""A subscriber's bounded queue, its overflow policies, and how its reader waits."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio

from bus._sample import Sample
from bus._topic import Overflow

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

T = TypeVar("T")


@attrs.frozen
class SubscriptionStatistics:
    """A snapshot of one subscription's queue."""

    client: str
    pattern: str
    overflow: Overflow
    capacity: int
    queued: int
    received: int
    dropped: int


class Subscription(Generic[T]):
    """The receiving end of a subscription: a bounded queue of samples, read by one task at a time.

    Read it with ``async for sample in sub``, ``await sub.receive()``, or in batches with
    ``await sub.receive_batch()`` (everything queued, at least one sample: the fast way to keep up with a
    busy topic). Close it (or use it as a context manager) to unsubscribe; the owning client closes it too.
    """

    __slots__ = (
        "_closed",
        "_detach",
        "_latest",
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
        "push",
        "push_run",
    )

    def __init__(
        self,
        client: str,
        pattern: str,
        capacity: int,
        overflow: Overflow,
        detach: Callable[[Subscription[Any]], None],
        pushed: Callable[[], int],
        parked: set[Subscription[Any]],
    ) -> None:
        self.client = client
        self.pattern = pattern
        self.capacity = capacity
        self.overflow = overflow
        self._detach = detach
        #: How many samples the bus has pushed to this subscription so far (computed from the topics'
        #: sequence numbers, so the hot path counts nothing): drops = pushed - received - queued.
        self._pushed = pushed
        # DROP_OLDEST: a deque with maxlen drops the oldest by itself, in C. BLOCK: the publisher never
        # pushes to a full queue. LATEST: one slot per topic.
        self._queue: deque[Sample[T]] = deque(maxlen=capacity if overflow is Overflow.DROP_OLDEST else None)
        self._latest: dict[str, Sample[T]] = {}
        self._received = 0
        self._parked = parked
        self._closed = False
        self._waiter: trio.lowlevel.Task | None = None
        self._space = trio.lowlevel.ParkingLot()
        #: Called by the bus for each sample: for queues, the deque's own C ``append``.
        self.push: Callable[[Sample[T]], None]
        #: Called by the bus with a run of samples of one topic: for queues, the deque's own C ``extend``.
        self.push_run: Callable[[list[Sample[T]]], None]
        if overflow is Overflow.LATEST:
            self.push = self._push_latest
            self.push_run = self._push_latest_of_run
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

    def _push_latest_of_run(self, samples: list[Sample[T]]) -> None:
        self._push_latest(samples[-1])  # one topic: the last one is the latest

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
        """Take the next sample; raise `trio.WouldBlock` if none is queued."""
        if self._queue or self._latest:
            return self._pop_one()
        if self._closed:
            raise trio.ClosedResourceError(f"subscription to {self.pattern!r} is closed")
        raise trio.WouldBlock

    def receive_batch_nowait(self, max_items: int | None = None) -> list[Sample[T]]:
        """Take every queued sample (at most ``max_items``); raise `trio.WouldBlock` if none is queued."""
        if self._queue or self._latest:
            return self._pop_all(max_items)
        if self._closed:
            raise trio.ClosedResourceError(f"subscription to {self.pattern!r} is closed")
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

    async def receive(self) -> Sample[T]:
        """Wait for the next sample and take it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sample = self.receive_nowait()
        except trio.WouldBlock:
            await self._wait()
            return self.receive_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return sample

    async def receive_batch(self, max_items: int | None = None) -> list[Sample[T]]:
        """Wait until at least one sample is queued, then take all queued (at most ``max_items``)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            batch = self.receive_batch_nowait(max_items)
        except trio.WouldBlock:
            await self._wait()
            return self.receive_batch_nowait(max_items)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Sample[T]:
        try:
            return await self.receive()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None

    def statistics(self) -> SubscriptionStatistics:
        """Queue depth, capacity, and how many samples were received and dropped."""
        queued = len(self._queue) + len(self._latest)
        return SubscriptionStatistics(
            client=self.client,
            pattern=self.pattern,
            overflow=self.overflow,
            capacity=self.capacity,
            queued=queued,
            received=self._received,
            dropped=self._pushed() - self._received - queued,
        )

    @property
    def closed(self) -> bool:
        return self._closed

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
