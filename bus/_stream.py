"""What both ends of a socket connection share: the outgoing queue (`_Outbox`) and the task that writes it
to the stream (`_write_loop`), the request waiting for its answer (`_Pending`), and the stream's sizes."""

from __future__ import annotations

import os
from typing import Any, Final

import structlog
import trio

from bus._errors import (
    CodecError,
)
from bus._messages import (
    Call,
    Deliver,
    Error,
    Message,
    ProtocolError,
    Reply,
)
from bus._wire import (
    Connection,
)

_log = structlog.get_logger("vwos.bus.socket")

#: Messages queued for one connection before sample forwarding pauses (its subscriptions then drop per
#: their overflow policy); four times as many of any kind and the connection is closed.
DEFAULT_MAX_PENDING: Final = 4096
_HANDSHAKE_TIMEOUT: Final = 5.0
_READ_SIZE: Final = 65536
#: The most scheduler passes the writer lets other tasks fill the outbox before it writes.
_GATHER_PASSES: Final = 16
#: The most samples it gathers so: enough to spread the per-frame work thin, and a frame a subscriber's
#: queue of the default size (1,024 in bench/ipc.py) takes twice over, so that no end waits on another.
_GATHER_SAMPLES: Final = 512


class _Stalled(Exception):
    """The peer stopped reading: its socket stayed unwritable, or too much piled up for it."""


_TAKEN: Final = object()


class _Outbox:
    """Messages waiting for the writer, counted in samples (a PUBLISH or SAMPLES message counts one per
    sample it carries, any other message one). Samples wait for `room`; control messages are always
    queued, but beyond ``4 * limit`` the connection is declared stalled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: The writer gathers bursts up to this many samples (`take`).
        self.gather = min(limit // 2, _GATHER_SAMPLES)
        #: What `RemotePublisher.publish_nowait` compares ``count`` with: ``limit``, or -1 while the client
        #: has something to raise first (closed, an asynchronous error): one comparison on the hot path.
        self.gate = limit
        self.items: list[Message] = []
        #: The message put last, until the writer takes the queue (a PUBLISH grows while it is the tail).
        self.tail: object = _TAKEN
        self.count = 0
        self.overfull = False
        self.writing = False
        self._wake = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()

    @property
    def room(self) -> int:
        return self.limit - self.count

    def put(self, message: Message, weight: int = 1) -> None:
        self.items.append(message)
        self.tail = message
        self.count += weight
        if self.count > 4 * self.limit:
            self.overfull = True
        if len(self.items) == 1:
            self._wake.unpark_all()

    def grow(self, weight: int) -> None:
        """The tail message took ``weight`` more samples (it is still queued)."""
        self.count += weight
        if self.count > 4 * self.limit:
            self.overfull = True

    async def wait_room(self) -> None:
        while self.room <= 0:
            await self._room.park()

    async def take(self) -> list[Message]:
        if not self.items and not self.overfull:
            while not self.items and not self.overfull:
                self.writing = False
                self._drained.unpark_all()
                await self._wake.park()
            # Woken by the first message: let the tasks that are runnable now add theirs first (one pass
            # of the scheduler; nothing waits when nothing else runs), so that a busy publisher's bursts
            # travel as one run in one write. Fewer, larger frames save per-frame work on both ends.
            # While the passes bring more (a publisher bursting in this process), more passes, up to
            # `gather` samples in at most `_GATHER_PASSES` passes (a task adding one message per pass
            # does not hold a reply back for long); it stops after two passes that brought nothing (not
            # one: trio runs a pass's tasks in either order, so the writer may run before the task that
            # adds in it).
            seen, idle, passes = self.count, 0, 0
            gather = self.gather
            while idle < 2 and passes < _GATHER_PASSES and self.count < gather and not self.overfull:
                passes += 1
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self.count == seen:
                    idle += 1
                else:
                    seen, idle = self.count, 0
        if self.overfull:
            raise _Stalled(f"more than {4 * self.limit} samples queued for a peer that does not read")
        self.writing = True
        items, self.items = self.items, []
        self.tail = _TAKEN
        self.count = 0
        self._room.unpark_all()
        return items

    async def wait_drained(self) -> None:
        while self.items or self.writing:
            await self._drained.park()


def _encode(conn: Connection, batch: list[Message], log: Any) -> bytes:
    """One write's bytes for ``batch``; a message that cannot be encoded is dropped (a reply is replaced
    by an ERROR) with a log line, and the rest still go."""
    try:
        return conn.send(batch)
    except (CodecError, ProtocolError):
        pass
    parts: list[bytes] = []
    for message in batch:
        try:
            parts.append(conn.send([message]))
        except (CodecError, ProtocolError) as exc:
            log.warning("message not sent", message=message.NAME, error=str(exc))
            if isinstance(message, Reply | Call):
                parts.append(
                    conn.send([Error(message.id, "codec", type(exc).__name__, str(exc), [str(exc)])])
                )
            elif isinstance(message, Deliver):
                for sample in message.samples:  # keep every sample that can be sent
                    try:
                        parts.append(conn.send([Deliver(message.sub_id, [sample])]))
                    except (CodecError, ProtocolError) as one:
                        note = f"sample of {sample.topic} not delivered: {one}"
                        parts.append(conn.send([Error(None, "codec", type(one).__name__, note, [note])]))
    return b"".join(parts)


async def _write_loop(
    stream: trio.SocketStream, conn: Connection, outbox: _Outbox, stall_after: float, log: Any
) -> None:
    fd = stream.socket.fileno()
    while True:
        batch = await outbox.take()
        data = _encode(conn, batch, log)
        if not data:
            continue
        # The socket is non-blocking: try the write at once, which usually takes it all, and leave the
        # waiting (and trio's checkpoints) to send_all for the rest. One task switch less per batch.
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"writing to the socket failed: {exc}") from exc
        if written == len(data):
            continue
        with trio.move_on_after(stall_after) as scope:
            await stream.send_all(memoryview(data)[written:])
        if scope.cancelled_caught:
            raise _Stalled(f"the socket stayed unwritable for {stall_after:g} s (the peer does not read)")


async def _aclose(stream: trio.SocketStream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        await stream.aclose()


class _Pending:
    """A request waiting for its answer: a call to the broker (client side), or a call the broker
    forwarded to the client that serves its method (broker side)."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """End the wait with ``result`` or ``error``, unless it has ended already (a late answer)."""
        if not self.done.is_set():
            self.result = result
            self.error = error
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.finish(error=error)
