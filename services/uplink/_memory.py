"""The ``memory`` transport: batches delivered into a list, with a far side a test drives.

httpx's ``MockTransport`` idea for the uplink: a test makes one `MemoryTransport`, hands it to the service as
its transport factory (``Uplink.with_transport(link)``) and plays the cloud: it reads what was delivered,
takes the link down and brings it back, makes publishes fail, holds acknowledgements back and releases them.
No broker, no files, no threads. One object serves every run of the service (a restarted service connects
again to the same far side), so what was delivered before a restart is still there to check.

It keeps every delivered payload in memory: a tool for tests and examples, not for a vehicle.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Self

import trio

from services.uplink._transport import TransportError

__all__ = ["MemoryTransport"]

#: Why a connect fails and a publish in flight is lost after `MemoryTransport.go_down` without a reason.
DOWN: Final = "the memory link is down"


def _count(value: int, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be an int >= 1, not {value!r}")
    return value


def _reason(value: str, what: str) -> str:
    if type(value) is not str or not value:
        raise ValueError(f"{what} must be a non-empty str (the TransportError's message), not {value!r}")
    return value


class MemoryTransport:
    """An `UplinkTransport` that delivers into memory; the test plays the far side.

    As the transport: `connect` fails while the link is down; `publish` returns once the batch is
    acknowledged -- at once, or when the test releases it (`hold_acks`) -- and appends ``(seq, payload)`` to
    `delivered`; it raises `TransportError` if the link goes down while it waits, if a failure was queued
    with `fail_publishes`, or without a `connect` first. As the factory (`TransportFactory`): calling it
    returns an async context manager yielding the transport itself.

    Everything is for one trio run at a time; the methods that drive the far side are plain functions a
    test calls between awaits.
    """

    name = "memory"

    def __init__(self) -> None:
        #: Every acknowledged publish, ``(seq, payload)``, in order; a batch sent again appears again (at
        #: least once: a receiver drops duplicates by stream and seq).
        self.delivered: list[tuple[int, bytes]] = []
        #: Successful connects, publish attempts, and the publishes that raised `TransportError`.
        self.connects = 0
        self.publishes = 0
        self.failures = 0
        self._down: str | None = None
        self._connected = False
        self._link = 0  # a new number at each connect and each loss: a waiting publish sees its link end
        self._lost = ""  # why the last link ended
        self._fail: collections.deque[list[Any]] = collections.deque()  # [reason, publishes left to fail]
        self._holding = False
        self._released = 0
        self._waiting = 0
        self._changed = trio.Event()

    def __repr__(self) -> str:
        state = "down" if self._down is not None else "connected" if self._connected else "up"
        return f"<MemoryTransport {state}, {len(self.delivered)} delivered, {self._waiting} waiting>"

    # -- the far side, driven by the test --

    @property
    def payloads(self) -> list[bytes]:
        """The delivered payloads, in order (a batch sent again appears again)."""
        return [payload for _, payload in self.delivered]

    @property
    def connected(self) -> bool:
        """Whether the service holds a live link (connected, and neither closed nor lost since)."""
        return self._connected

    @property
    def waiting(self) -> int:
        """Publishes waiting for their acknowledgement (held back by `hold_acks`)."""
        return self._waiting

    def go_down(self, reason: str = DOWN) -> None:
        """Take the link down: a live link is lost (a publish waiting for its acknowledgement raises
        `TransportError` with ``reason``, as does the next publish), and `connect` raises it until
        `come_up`."""
        self._down = _reason(reason, "reason")
        self._lose(reason)

    def come_up(self) -> None:
        """Bring the link back: `connect` succeeds again."""
        self._down = None
        self._notify()

    def fail_publishes(self, count: int = 1, reason: str = "the far side refused the batch") -> None:
        """Make the next ``count`` publishes raise `TransportError` with ``reason`` (each also loses the
        link, as a failed MQTT publish does: the service connects again)."""
        reason, count = _reason(reason, "reason"), _count(count, "count")
        self._fail.append([reason, count])  # a count, not count copies: fail_publishes(10**12) is cheap

    def hold_acks(self) -> None:
        """From now on each publish waits until `release` lets it through."""
        self._holding = True

    def release(self, count: int | None = None) -> None:
        """Acknowledge ``count`` publishes (waiting ones first, then those to come); None: all, and stop
        holding acknowledgements back."""
        if count is None:
            self._holding, self._released = False, 0
        else:
            self._released += _count(count, "count")
        self._notify()

    async def wait_delivered(self, count: int) -> list[bytes]:
        """Wait until at least ``count`` publishes were acknowledged; the payloads delivered so far."""
        while len(self.delivered) < count:
            await self._wait()
        return self.payloads

    async def wait_waiting(self, count: int = 1) -> None:
        """Wait until at least ``count`` publishes wait for their acknowledgement (with `hold_acks`)."""
        while self._waiting < count:
            await self._wait()

    # -- the factory --

    def __call__(self, config: object, ctx: object, /) -> AbstractAsyncContextManager[Self]:
        """The `TransportFactory` call: this transport itself, whatever the service's config."""
        return self._run()

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[Self]:
        try:
            yield self
        finally:
            await self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the transport --

    async def connect(self) -> None:
        """Connect; raises `TransportError` while the link is down."""
        await trio.lowlevel.checkpoint()
        if self._down is not None:
            raise TransportError(self._down)
        self._lose("connected again")
        self._connected = True
        self.connects += 1
        self._notify()

    async def publish(self, seq: int, payload: bytes) -> None:
        """Deliver one batch; returns once it is acknowledged."""
        if type(seq) is not int or seq < 0:
            raise TypeError(f"seq must be an int >= 0, not {seq!r}")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        self.publishes += 1
        if not self._connected:
            await trio.lowlevel.checkpoint()
            self.failures += 1
            raise TransportError(self._lost or "the memory transport is not connected")
        if self._fail:
            await trio.lowlevel.checkpoint()
            reason, left = self._fail[0]
            if left == 1:
                self._fail.popleft()
            else:
                self._fail[0][1] = left - 1
            self._lose(reason)
            self.failures += 1
            raise TransportError(reason)
        link = self._link
        data = bytes(payload)
        self._waiting += 1
        self._notify()
        try:
            while self._holding and not self._released and self._link == link:
                await self._wait()
            if self._link != link:
                self.failures += 1
                raise TransportError(self._lost)
            if self._holding:
                self._released -= 1
        finally:
            self._waiting -= 1
        self.delivered.append((seq, data))
        self._notify()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Close the link (idempotent); a publish waiting for its acknowledgement raises."""
        await trio.lowlevel.checkpoint()
        self._lose("the memory transport was closed")

    # -- internals --

    def _lose(self, reason: str) -> None:
        if self._connected:
            self._connected = False
            self._link += 1
            self._lost = reason
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()
