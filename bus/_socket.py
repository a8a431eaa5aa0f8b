"""The local socket transport: a bus served on a Unix domain socket, and the client that joins it.

Thin trio code around the sans-IO protocol of ``bus/_wire.py`` (see ``docs/protocol.md``). The broker side
(`serve_unix`) makes each accepted connection a `BusClient` with the permissions `authorize` grants, so the
bus enforces everything exactly as in-process. The client side (`connect_unix`) yields a `RemoteBusClient`
whose API mirrors `BusClient`.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, NoReturn, TypeVar

import attrs
import structlog
import trio

from bus._bus import (
    _BLOCK_HINT,
    Bus,
    BusClient,
    Publisher,
    _RequestRefused,
    _response_problem,
)
from bus._errors import (
    BusError,
    CallTimeoutError,
    CodecError,
    LimitExceededError,
    MethodAlreadyServedError,
    PermissionDeniedError,
    RemoteError,
    StaleValueError,
    TopicError,
    ValueRefusedError,
    shown,
)
from bus._handle import _check_request, _ClientBase, _method_of, _subscribed
from bus._pattern import covers
from bus._permissions import Action, Permissions
from bus._sample import NotAvailable, Sample, _sliced
from bus._subscription import ColumnSubscription, Subscription, SubscriptionStatistics
from bus._topic import FloatList, Method, Overflow, QoS, Topic
from bus._wire import (
    _ACTIONS,
    DEFAULT_MAX_FRAME,
    Call,
    Cancel,
    Closed,
    Connection,
    Declare,
    Deliver,
    Error,
    Get,
    Hello,
    IsStale,
    Message,
    ProtocolError,
    Publish,
    Refused,
    Reply,
    Role,
    Serve,
    Subscribe,
    Unserve,
    Unsubscribe,
    Welcome,
    error_from_exception,
    remote_error,
    timeout_to_wire,
)

T = TypeVar("T")
_now = time.time


def _as_is(value: T) -> T:
    return value


def _seconds(timestamp: object) -> float:
    if type(timestamp) is int:
        return float(timestamp)
    raise TypeError(f"timestamp: expected seconds (a float), got {type(timestamp).__name__}")


Req = TypeVar("Req")
Resp = TypeVar("Resp")

_log = structlog.get_logger("vwos.bus.socket")

#: The socket file's mode unless `serve_unix` is told otherwise: only the broker's user may connect.
DEFAULT_SOCKET_MODE: Final = 0o600
#: How long a connection's socket may stay unwritable (its peer not reading) before it is closed.
DEFAULT_WRITE_TIMEOUT: Final = 5.0
#: Messages queued for one connection before sample forwarding pauses (its subscriptions then drop per
#: their overflow policy); four times as many of any kind and the connection is closed.
DEFAULT_MAX_PENDING: Final = 4096
_HANDSHAKE_TIMEOUT: Final = 5.0
_READ_SIZE: Final = 65536
#: The longest client name a broker accepts in HELLO.
MAX_CLIENT_NAME: Final = 256
#: A connection's first refusals are all logged; after these, one in `_LOG_EVERY` (with the count).
_LOG_FIRST: Final = 100
_LOG_EVERY: Final = 1000


def _positive_count(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"ConnectionLimits.{attribute.name} must be a positive int, not {value!r}")


@attrs.frozen
class ConnectionLimits:
    """What one client connection may hold at once on the broker (``serve_unix(..., limits=...)``).

    A request beyond a limit is refused with `LimitExceededError` (the client sees it: a SUBSCRIBE's
    subscription ends with it, a SERVE or CALL raises it), logged with the client's name, uid and pid;
    the connection stays up. The defaults are far above what a service needs and low enough that no
    connection can make the broker's work per request or its memory grow without bound.
    """

    #: Subscriptions open at once.
    subscriptions: int = attrs.field(
        default=1024,
        validator=_positive_count,
        metadata={"help": "subscriptions one connection may hold open"},
    )
    #: Methods served at once.
    methods: int = attrs.field(
        default=64, validator=_positive_count, metadata={"help": "methods one connection may serve"}
    )
    #: Calls made by the client that are still waiting for their reply.
    calls: int = attrs.field(
        default=1024,
        validator=_positive_count,
        metadata={"help": "calls one connection may have waiting for their reply"},
    )
    #: Samples the broker may queue for the connection's subscriptions: the sum of their queue sizes
    #: (``latest`` subscriptions, one sample per topic, do not count). A reader that reads slowly keeps
    #: its queues full; this bounds the memory it holds on the broker.
    queued: int = attrs.field(
        default=1 << 20,
        validator=_positive_count,
        metadata={
            "help": "samples one connection's subscriptions may queue on the broker (the sum of their queue "
            "sizes; latest subscriptions do not count)"
        },
    )


@attrs.frozen
class PeerCredentials:
    """Who is at the other end of a Unix socket connection, as the kernel reports it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


class BrokerRefusedError(BusError):
    """The broker refused the connection (its ``authorize`` said no); ``reason`` is what it said."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the broker refused the connection: {reason}")
        self.reason = reason


class ConnectionLostError(BusError):
    """The connection to the broker is gone (closed by the broker, a protocol error, or the socket broke)."""


Authorize = Callable[[PeerCredentials, str], Permissions | None]


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """The peer credentials of a connected Unix socket (``SO_PEERCRED``: pid, uid, gid)."""
    size = struct.calcsize("3i")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


# -- shared: the outgoing queue and the writer ------------------------------------------------------------


class _Stalled(Exception):
    """The peer stopped reading: its socket stayed unwritable, or too much piled up for it."""


_TAKEN: Final = object()


class _Outbox:
    """Messages waiting for the writer, counted in samples (a PUBLISH or SAMPLES message counts one per
    sample it carries, any other message one). Samples wait for `room`; control messages are always
    queued, but beyond ``4 * limit`` the connection is declared stalled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
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
            await trio.lowlevel.cancel_shielded_checkpoint()
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


def _named_exception(error_type: str, message: str) -> Exception:
    """An exception whose class is named ``error_type``: how a remote handler's error is re-raised on the
    bus, so that the caller's `RemoteError` names the remote exception type."""
    cls: type[Exception] = type(error_type if error_type.isidentifier() else "RemoteError", (Exception,), {})
    return cls(message)


# -- the broker side --------------------------------------------------------------------------------------


def _grant(authorized: Permissions, requested: Permissions | None) -> Permissions:
    """What a connection gets: what ``authorize`` allowed, narrowed to what the client asked for."""
    if requested is None:
        return authorized
    return Permissions(
        **{
            action: tuple(
                p
                for p in getattr(requested, action)
                if any(covers(g, p) for g in getattr(authorized, action))
            )
            for action in _ACTIONS
        }
    )


#: The broker yields to other tasks after this many messages of one read (a yield per message cost a third
#: of the throughput of bench/ipc.py; 64 bound what one client's frame holds the loop to well under 1 ms).
_YIELD_EVERY: Final = 64


def prepare_socket_dir(path: str | os.PathLike[str]) -> None:
    """Make sure the directory that will hold the socket ``path`` is private, as ssh-agent and tmux do.

    A missing directory is created with mode 0o700 (its missing parents as ``mkdir -p`` would). An
    existing one must be a directory owned by this user or root and writable by nobody else: whoever can
    write there can replace the socket with one of their own. Anything else raises `BusError` saying
    what is wrong. `serve_unix` calls this; call it earlier to fail before anything starts.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(os.path.dirname(directory), exist_ok=True)
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made meanwhile by someone else: checked below like any other
        except OSError as exc:
            raise BusError(f"{directory}: cannot create the socket's directory: {exc.strerror}") from None
        info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise BusError(f"{directory}: the socket's directory is not a directory")
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise BusError(
            f"{directory}: the socket's directory belongs to uid {info.st_uid}, not to this user "
            f"(uid {me}) or root; refusing to serve there (its owner could replace the socket): "
            "remove it, or choose another socket path"
        )
    loose = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose:
        who = (
            "its group and others"
            if loose == stat.S_IWGRP | stat.S_IWOTH
            else ("its group" if loose == stat.S_IWGRP else "others")
        )
        raise BusError(
            f"{directory}: the socket's directory (mode {stat.S_IMODE(info.st_mode):#o}) is writable by "
            f"{who}; refusing to serve there (they could replace the socket): `chmod go-w` it, or choose "
            "another socket path"
        )


def _remove_stale_socket(path: str) -> bool:
    """True if ``path`` must be probed (it is a socket); raise if it exists and is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise BusError(f"{path}: exists and is not a socket; refusing to replace it")
    return True


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _bind(path: str, mode: int) -> trio.socket.SocketType:
    if _remove_stale_socket(path):
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            _log.info("removing stale socket file", path=path)
            os.unlink(path)
        else:
            raise BusError(f"{path}: another broker is serving on this socket")
        finally:
            probe.close()
    # Bound under a temporary name, given its mode, then renamed into place: the socket is never
    # reachable under ``path`` with looser permissions.
    tmp = f"{path}.{os.getpid()}.tmp"
    _unlink_if_present(tmp)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(tmp)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        sock.listen(128)
    except BaseException:
        sock.close()
        _unlink_if_present(tmp)
        raise
    return sock


async def serve_unix(
    bus: Bus,
    path: str | os.PathLike[str],
    *,
    authorize: Authorize,
    max_frame: int = DEFAULT_MAX_FRAME,
    mode: int = DEFAULT_SOCKET_MODE,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    max_pending: int = DEFAULT_MAX_PENDING,
    limits: ConnectionLimits = ConnectionLimits(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``bus`` on the Unix socket ``path`` until cancelled (``await nursery.start(serve_unix, ...)``).

    The socket's directory must be private (`prepare_socket_dir`: created 0o700 if missing). The socket
    file gets ``mode`` (0o600 by default: only this user; 0o660 lets the group in). A stale socket file
    left by a dead broker is replaced; a live broker's is refused with `BusError`. Each connection's
    peer credentials (``SO_PEERCRED``) and the client's name go to ``authorize``, which returns the
    connection's permissions, or None to refuse it. ``max_frame`` limits incoming frames; a peer whose
    socket stays unwritable for ``write_timeout`` seconds is disconnected; ``limits`` bounds what one
    connection may hold at once (`ConnectionLimits`).
    """
    if not isinstance(limits, ConnectionLimits):
        raise TypeError(f"limits must be a bus.ConnectionLimits, not {type(limits).__name__}")
    fspath = os.fspath(path)
    prepare_socket_dir(fspath)
    sock = await _bind(fspath, mode)
    inode = os.stat(fspath).st_ino
    listener = trio.SocketListener(sock)
    log = _log.bind(path=fspath)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(bus, stream, authorize, max_frame, write_timeout, max_pending, limits)
        except Exception as exc:  # never let one connection take the broker down
            log.exception("connection handler failed", error=repr(exc))

    try:
        log.info("serving the bus", mode=oct(mode))
        task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        try:
            if os.stat(fspath).st_ino == inode:
                os.unlink(fspath)
        except FileNotFoundError:
            pass


async def _send_now(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(1):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _serve_connection(
    bus: Bus,
    stream: trio.SocketStream,
    authorize: Authorize,
    max_frame: int,
    write_timeout: float,
    max_pending: int,
    limits: ConnectionLimits,
) -> None:
    try:
        creds = peer_credentials(stream.socket)
    except OSError as exc:
        _log.warning("connection closed: no peer credentials", error=str(exc))
        await _aclose(stream)
        return
    log = _log.bind(pid=creds.pid, uid=creds.uid, gid=creds.gid)
    conn = Connection(Role.SERVER, max_frame=max_frame)
    try:
        hello: Hello | None = None
        with trio.move_on_after(_HANDSHAKE_TIMEOUT):
            while hello is None:
                event = conn.next_event()
                if event is None:
                    conn.receive_data(await stream.receive_some(_READ_SIZE))
                elif isinstance(event, Closed):
                    log.info("connection closed before HELLO")
                    return
                else:
                    assert isinstance(event, Hello)  # the state machine allows nothing else first
                    hello = event
        if hello is None:
            log.warning("connection closed: no HELLO within the handshake timeout")
            return
        log = log.bind(client=shown(hello.name))
        if not 1 <= len(hello.name) <= MAX_CLIENT_NAME:
            log.warning("connection refused: bad client name", length=len(hello.name))
            reason = f"a client name has 1 to {MAX_CLIENT_NAME} characters, not {len(hello.name)}"
            await _send_now(stream, conn.send([Refused(reason)]))
            return
        try:
            authorized = authorize(creds, hello.name)
        except Exception as exc:
            log.exception("authorize failed; refusing the connection", error=repr(exc))
            authorized = None
        if authorized is None:
            log.warning("connection refused by authorize")
            await _send_now(
                stream, conn.send([Refused(f"client {hello.name!r} (uid {creds.uid}) is not authorized")])
            )
            return
        granted = _grant(authorized, hello.permissions)
        await stream.send_all(conn.send([Welcome(granted, max_frame)]))
        log.info("client connected")
        session = _Session(
            bus.client(hello.name, granted), stream, conn, log, write_timeout, max_pending, limits
        )
        await session.run()
    except ProtocolError as exc:
        log.warning("connection closed: protocol error", error=str(exc))
        await _send_now(stream, _fatal_bytes(conn, exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("connection lost", error=str(exc))
    finally:
        await _aclose(stream)


def _fatal_bytes(conn: Connection, exc: ProtocolError) -> bytes:
    try:
        return conn.send([error_from_exception(None, exc)])
    except (ProtocolError, CodecError):
        return b""


def _queued(overflow: Overflow, queue_size: int) -> int:
    """What a subscription counts against `ConnectionLimits.queued`: its queue size (a ``latest`` one
    keeps one sample per topic: nothing)."""
    return 0 if overflow is Overflow.LATEST else queue_size


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


class _StatusCallback:
    """A ``task_status`` that calls a function when the task has started."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: object = None) -> None:
        self._callback()


class _Refusals:
    """Logs one connection's refusals, with the client's name, uid and pid (the connection's logger):
    the first `_LOG_FIRST` all, then one in `_LOG_EVERY` with the count so far, so that a client sending
    refused requests in a loop cannot flood the log. The session's `BusClient` logs its permission
    refusals through it too."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.count = 0

    def warning(self, event: str, **fields: Any) -> None:
        self.count += 1
        count = self.count
        if count <= _LOG_FIRST:
            self.log.warning(event, **fields)
        elif count % _LOG_EVERY == 0:
            self.log.warning(event, refusals=count, logged="the first 100, then one in 1000", **fields)

    def summary(self) -> None:
        if self.count > _LOG_FIRST:
            self.log.warning("refusals of this connection", refusals=self.count)


class _Session:
    """One accepted connection: a `BusClient` driven by the messages of its peer."""

    def __init__(
        self,
        client: BusClient,
        stream: trio.SocketStream,
        conn: Connection,
        log: Any,
        write_timeout: float,
        max_pending: int,
        limits: ConnectionLimits,
    ) -> None:
        self.client = client
        self.stream = stream
        self.conn = conn
        self.log = log
        self.limits = limits
        self.refusals = _Refusals(log)
        client._log = self.refusals
        self.write_timeout = write_timeout
        self.outbox = _Outbox(max_pending)
        self.subs: dict[int, Subscription[Any]] = {}
        #: The sum of the queue sizes of ``subs`` (`ConnectionLimits.queued`).
        self.queued = 0
        self.calls: dict[int, trio.CancelScope] = {}
        self.forwarded: dict[int, _Pending] = {}
        self.served: dict[str, trio.CancelScope] = {}
        self.next_id = 0
        self.ending: BaseException | None = None
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._guard, self._read_loop)
                nursery.start_soon(self._guard, self._writer)
        finally:
            self._fail_forwarded()
            self.client.close()
            self.refusals.summary()
        if isinstance(self.ending, ProtocolError):
            raise self.ending
        if isinstance(self.ending, _Stalled):
            self.log.warning("connection closed: the client does not read", reason=str(self.ending))
        elif self.ending is not None:
            self.log.info("connection lost", error=str(self.ending))
        else:
            self.log.info("client disconnected")

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        assert self.nursery is not None
        try:
            await task()
        except (ProtocolError, _Stalled, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.ending is None:
                self.ending = exc
        self._fail_forwarded()
        self.nursery.cancel_scope.cancel()

    async def _writer(self) -> None:
        await _write_loop(self.stream, self.conn, self.outbox, self.write_timeout, self.log)

    def _fail_forwarded(self) -> None:
        for pending in self.forwarded.values():
            lost = f"the serving client {self.client.name!r} disconnected"
            pending.fail(_named_exception("ConnectionLost", lost))

    async def _read_loop(self) -> None:
        conn = self.conn
        while True:
            for handled, event in enumerate(conn.events(), 1):
                if isinstance(event, Closed):
                    return
                if handled % _YIELD_EVERY == 0:  # within one read: one huge frame cannot starve the others
                    await trio.lowlevel.checkpoint()
                await self._dispatch(event)
            conn.receive_data(await self.stream.receive_some(_READ_SIZE))

    def _check_queue(self, qos: QoS) -> None:
        """A new subscription's queue against `ConnectionLimits.queued` (`LimitExceededError`)."""
        limit = self.limits.queued
        if self.queued + _queued(qos.overflow, qos.queue_size) > limit:
            raise LimitExceededError(self.client.name, "queued", limit)

    def _refuse(self, id: int | None, exc: BusError, op: str) -> None:
        """Answer request ``id`` (None: asynchronously) with ``exc``, and log the refusal."""
        if not isinstance(exc, PermissionDeniedError):  # the client logged those itself, through us
            self.refusals.warning("request refused", op=op, error=str(exc))
        self.outbox.put(error_from_exception(id, exc))

    async def _dispatch(self, m: Message) -> None:
        put = self.outbox.put
        if isinstance(m, Publish):
            try:
                await self._publish(self.client._publisher(m.topic, False), m.values, m.timestamps, m.wait)
            except BusError as exc:
                self._refuse(None, exc, "PUBLISH")
        elif isinstance(m, Deliver | Hello | Welcome | Refused):  # pragma: no cover - the state machine
            raise ProtocolError(f"unexpected {m.NAME}")
        elif isinstance(m, Declare):
            try:
                self.client.declare(m.to_topic(self.conn.codec))
            except BusError as exc:
                self._refuse(None, exc, "DECLARE")
            except Exception as exc:  # e.g. unhashable allowed values
                self._refuse(None, TopicError(f"{shown(m.name)}: invalid declaration: {exc}"), "DECLARE")
        elif isinstance(m, Subscribe):
            if m.sub_id in self.subs:
                raise ProtocolError(f"SUBSCRIBE: subscription id {m.sub_id} is already in use")
            if len(self.subs) >= self.limits.subscriptions:
                limit = LimitExceededError(self.client.name, "subscriptions", self.limits.subscriptions)
                self._refuse(m.sub_id, limit, "SUBSCRIBE")
                return
            try:
                patterns = [m.pattern] if type(m.pattern) is str else m.pattern
                sub = self.client._subscribe(
                    patterns, m.queue_size, m.overflow, m.latest, columns=True, check_qos=self._check_queue
                )
            except BusError as exc:
                self._refuse(m.sub_id, exc, "SUBSCRIBE")
                return
            self.subs[m.sub_id] = sub
            self.queued += _queued(sub.overflow, sub.capacity)
            assert self.nursery is not None
            self.nursery.start_soon(self._forward, m.sub_id, sub)
        elif isinstance(m, Unsubscribe):
            found = self.subs.pop(m.sub_id, None)
            if found is not None:
                self.queued -= _queued(found.overflow, found.capacity)
                found.close()
        elif isinstance(m, Get):
            try:
                sample = self.client._get_now(m.topic, m.allow_stale)
            except StaleValueError as exc:
                put(error_from_exception(m.id, exc))  # an answer, not a refusal
            except BusError as exc:
                self._refuse(m.id, exc, "GET")
            else:
                put(Reply(m.id, None if sample is None else list(sample)))
        elif isinstance(m, IsStale):
            try:
                put(Reply(m.id, self.client._is_stale_now(m.topic)))
            except BusError as exc:
                self._refuse(m.id, exc, "STALE")
        elif isinstance(m, Call):
            if m.id in self.calls:
                self._refuse(m.id, BusError(f"call {m.id} refused: its id is in use"), "CALL")
                return
            if len(self.calls) >= self.limits.calls:
                self._refuse(m.id, LimitExceededError(self.client.name, "calls", self.limits.calls), "CALL")
                return
            scope = trio.CancelScope()
            self.calls[m.id] = scope
            assert self.nursery is not None
            self.nursery.start_soon(self._call, m, scope)
        elif isinstance(m, Cancel):
            found_scope = self.calls.get(m.id)
            if found_scope is not None:
                found_scope.cancel()
        elif isinstance(m, Serve):
            if m.method in self.served:
                self._refuse(m.id, MethodAlreadyServedError(m.method, self.client.name), "SERVE")
                return
            if len(self.served) >= self.limits.methods:
                limit = LimitExceededError(self.client.name, "methods", self.limits.methods)
                self._refuse(m.id, limit, "SERVE")
                return
            scope = trio.CancelScope()
            self.served[m.method] = scope
            assert self.nursery is not None
            self.nursery.start_soon(self._serve, m, scope)
        elif isinstance(m, Unserve):
            found_scope = self.served.pop(m.method, None)
            if found_scope is not None:
                found_scope.cancel()
        elif isinstance(m, Reply | Error):
            if m.id is None:
                assert isinstance(m, Error)
                self.log.warning("the client reports an error", kind=m.kind, message=m.message)
                return
            pending = self.forwarded.get(m.id)
            if pending is None:
                return  # a late answer to a call already given up
            if isinstance(m, Reply):
                pending.finish(m.result)
            elif m.kind == "value_refused" and len(m.args) == 3:  # the serving client refused the request
                pending.finish(error=_RequestRefused(*m.args))
            else:
                pending.finish(error=_named_exception(m.error_type, m.message))

    async def _publish(
        self, publisher: Publisher[Any], values: list[Any], timestamps: list[float], wait: bool
    ) -> None:
        """Publish a PUBLISH's run: all at once while the subscribers' queues take it. With ``wait`` (the
        remote publisher awaited, or was made with ``block=True``) it waits for room in ``block`` queues
        as an in-process ``await publish`` would, reading nothing more from this connection meanwhile:
        the back-pressure reaches the remote publisher. Without, it never waits: a full ``block`` queue
        does not get what does not fit, as with ``publish_nowait``. If a value is refused, the others are
        still published, one by one, and the first refusal is reported."""
        try:
            while values:
                done = publisher._publish_run(values, timestamps, wait)
                if done == 0:  # a `block` subscriber's queue is full: wait, like an in-process publisher
                    await publisher._wait_for_room()
                values, timestamps = _sliced(values, done, None), timestamps[done:]
        except ValueRefusedError as refused:
            for value, timestamp in zip(values, timestamps, strict=True):
                with contextlib.suppress(ValueRefusedError):
                    if wait:
                        await publisher.publish(value, timestamp=timestamp)  # waits for room, as above
                    else:
                        Publisher.publish_nowait(publisher, value, timestamp=timestamp)
            raise refused from None

    async def _forward(self, sub_id: int, sub: Subscription[Any]) -> None:
        """Move the subscription's samples to the outbox, one SAMPLES message per batch, while the outbox
        has room."""
        outbox = self.outbox
        try:
            while True:
                await outbox.wait_room()
                room = max(outbox.room, 1)
                if type(sub) is ColumnSubscription:
                    batch: Sequence[Sample[Any]] = await sub.receive_columns(room)
                else:
                    batch = await sub.receive_batch(room)
                outbox.put(Deliver(sub_id, batch), len(batch))
        except trio.ClosedResourceError:
            return

    async def _call(self, m: Call, scope: trio.CancelScope) -> None:
        with scope:
            try:
                timeout = math.inf if m.timeout is None else m.timeout
                result = await self.client.call(m.method, m.arg, timeout=timeout)
            except (ValueRefusedError, TopicError, PermissionDeniedError) as exc:
                self._refuse(m.id, exc, "CALL")
            except BusError as exc:
                self.outbox.put(error_from_exception(m.id, exc))
            except ValueError as exc:
                self.outbox.put(Error(m.id, "bus", "ValueError", str(exc), [str(exc)]))
            else:
                self.outbox.put(Reply(m.id, result))
        self.calls.pop(m.id, None)

    async def _serve(self, m: Serve, scope: trio.CancelScope) -> None:
        method = m.method

        async def forward(arg: Any) -> Any:
            self.next_id += 1
            call_id = self.next_id
            pending = _Pending()
            self.forwarded[call_id] = pending
            try:
                self.outbox.put(Call(call_id, method, arg, None))
                await pending.done.wait()
            finally:
                del self.forwarded[call_id]
                if not pending.done.is_set():
                    self.outbox.put(Cancel(call_id))
            if pending.error is not None:
                raise pending.error
            return pending.result

        with scope:
            try:
                await self.client.serve(
                    method, forward, task_status=_StatusCallback(lambda: self.outbox.put(Reply(m.id, None)))
                )
            except BusError as exc:
                self._refuse(m.id, exc, "SERVE")
        if self.served.get(method) is scope:
            del self.served[method]


# -- the client side --------------------------------------------------------------------------------------


#: What a publisher's run is before its first publish: never queued, so never the outbox's tail.
_NO_RUN: Final = Publish("-", [0.0], [0.0])


class RemotePublisher(Generic[T]):
    """A declared publisher of one topic on a `RemoteBusClient` (mirrors `bus.Publisher`).

    Publishing queues the sample for the connection's writer, which sends everything queued in one write.
    The value is checked here when the topic is known to this client (declared, or published through a
    `Topic`); the broker checks again, and reports a refusal asynchronously (raised by the next publish).
    A publisher made with ``block=True`` (and ``await publish`` of any) asks the broker to wait for room
    in ``block`` queues: the broker then reads nothing more from this connection until there is, so the
    outgoing queue fills and ``publish_nowait`` raises `trio.WouldBlock`.
    """

    __slots__ = (
        "_block",
        "_check",
        "_client",
        "_floats",
        "_high",
        "_low",
        "_name",
        "_outbox",
        "_run",
        "_twin",
        "topic",
    )

    def __init__(
        self, client: RemoteBusClient, name: str, topic: Topic[T] | None, block: bool = False
    ) -> None:
        self._client = client
        self._outbox = client._outbox
        self._name = name
        self._block = block
        #: ``await publish`` of a publisher that does not wait: a waiting publisher of the same topic.
        self._twin: RemotePublisher[T] | None = None
        #: The PUBLISH this publisher appends to while it is the last one queued.
        self._run: Publish = _NO_RUN
        self._floats = topic is not None and topic.type is float
        self._check: Callable[[Any], Any] = _as_is if topic is None else topic._check
        # A float in [_low, _high] passes the topic's rules without a call: a float topic's range (the
        # whole line when it has none), an empty one (inf, -inf) for every other topic.
        self._low, self._high = math.inf, -math.inf
        if self._floats and topic is not None and topic.allowed is None:
            self._low = -math.inf if topic.min is None else float(topic.min)
            self._high = math.inf if topic.max is None else float(topic.max)
        self.topic = topic

    def publish_nowait(self, value: T | NotAvailable, *, timestamp: float | None = None) -> None:
        """Queue ``value`` for sending. Raises `ValueRefusedError` if the topic's rules refuse it, a
        pending asynchronous error from the broker, `trio.ClosedResourceError` once the client is closed,
        and `trio.WouldBlock` if the outgoing queue is full."""
        # The hot path of a service in its own process: a handful of attribute loads, one comparison for
        # "full, closed or an error to raise", the topic's rules (inline for a float in range), and two
        # appends to the PUBLISH still waiting for the writer (a new one when it has gone).
        outbox = self._outbox
        if outbox.count >= outbox.gate:
            self._client._refuse_publish()
        # (a float when compared; the comparison is false for NaN, which goes to the rules too)
        if type(value) is not float or not self._low <= value <= self._high:
            value = self._check(value)
            if type(value) is NotAvailable and self._floats:
                self._not_only_floats()
        if timestamp is None:
            timestamp = _now()
        elif type(timestamp) is not float:
            timestamp = _seconds(timestamp)
        run = self._run
        if outbox.tail is run:  # still queued: the run grows
            run.values.append(value)
            run.timestamps.append(timestamp)
            outbox.count += 1
        else:
            # A float topic's checked values are floats (or NotAvailable, rarely): the run says so when
            # they are, and then packs without a look.
            values = FloatList((value,)) if self._floats and type(value) is float else [value]
            self._run = run = Publish(self._name, values, [timestamp], self._block)
            outbox.put(run)

    def _not_only_floats(self) -> None:
        """A float topic's queued run is about to take a `NotAvailable`: it is no longer floats only."""
        run = self._run
        if self._outbox.tail is run and type(run.values) is FloatList:
            object.__setattr__(run, "values", list(run.values))  # frozen, but not yet sent: still ours

    async def publish(self, value: T | NotAvailable, *, timestamp: float | None = None) -> None:
        """Like `publish_nowait`, but waits for room in the outgoing queue, and the broker for room in
        ``block`` queues (as an in-process ``await publish`` does)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._client._outbox.wait_room()
        waiting = self
        if not self._block:
            waiting = self._twin or RemotePublisher(self._client, self._name, self.topic, block=True)
            self._twin = waiting
        waiting.publish_nowait(value, timestamp=timestamp)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __repr__(self) -> str:
        block = " (block)" if self._block else ""
        return f"<RemotePublisher {self._name!r} of {self._client.name!r}{block}>"


class RemoteBusClient(_ClientBase):
    """A bus client in another process, connected over a Unix socket (made by `connect_unix`): a
    `BusHandle`, as `BusClient` is, so a service written against one runs on the other.

    The differences: ``get`` and ``is_stale`` are a round trip to the broker; publishes do not wait for
    the broker, so a refusal only the broker detects is logged and raised by the next publish; the
    permission set is the one the broker granted, checked here first and enforced by the broker.
    """

    def __init__(
        self, name: str, permissions: Permissions, conn: Connection, stream: trio.SocketStream
    ) -> None:
        self.name = name
        self.permissions = permissions
        self._conn = conn
        self._stream = stream
        self._outbox = _Outbox(DEFAULT_MAX_PENDING)
        self._topics: dict[str, Topic[Any]] = {}
        self._publishers = {}
        self._block_publishers = {}
        self._subs: dict[int, Subscription[Any]] = {}
        self._pushed: dict[int, list[int]] = {}
        self._parked: set[Subscription[Any]] = set()
        self._pending: dict[int, _Pending] = {}
        self._handlers: dict[str, trio.MemorySendChannel[Call]] = {}
        self._handler_scopes: dict[int, trio.CancelScope] = {}
        self._next_id = 0
        self._closed = False
        #: An asynchronous error from the broker, raised by the next publish or declare.
        self._async_error: BusError | None = None
        #: Why the connection ended, once it has.
        self._lost: ConnectionLostError | None = None
        #: Set when either of the above is (and then the outbox's gate is closed for publishers).
        self._problem: BusError | None = None

    # -- checks ----------------------------------------------------------------------------------------

    def _set_problem(self, problem: BusError) -> None:
        self._problem = problem
        self._outbox.gate = -1

    def _raise_problem(self) -> None:
        if self._lost is not None:
            raise self._lost
        error = self._async_error
        self._async_error = None
        self._problem = None
        if not self._closed:
            self._outbox.gate = self._outbox.limit
        if error is not None:
            raise error

    def _refuse_publish(self) -> NoReturn:
        """Why a publish cannot be queued (the publisher's one check failed): closed, an error to raise
        first, or no room."""
        if self._closed:
            raise trio.ClosedResourceError(f"bus client {self.name!r} is closed")
        if self._problem is not None:
            self._raise_problem()
        raise trio.WouldBlock

    def _require(self, action: Action, name: str, hint: str = "") -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"bus client {self.name!r} is closed")
        if self._lost is not None:
            raise self._lost
        if not self.permissions.allows(action, name):
            _log.warning("permission denied", client=self.name, action=action.value, name=shown(name))
            raise PermissionDeniedError(self.name, action.value, name, hint)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- topics and publishing -------------------------------------------------------------------------

    def declare(self, topic: Topic[T]) -> Topic[T]:
        """Declare ``topic`` on the bus (needs the right to publish it): checked here against this client's
        declarations at once, and by the broker against the bus's (a conflict found there is raised by
        the next publish or declare)."""
        self._require(Action.PUBLISH, topic.name)
        if self._problem is not None:
            self._raise_problem()
        known = self._topics.get(topic.name)
        if known is not None:
            known._check_redeclaration(topic, f"{self.name} (this client)")
            return topic
        declaration = Declare.from_topic(topic, self._conn.codec)
        self._topics[topic.name] = topic
        self._outbox.put(declaration)
        return topic

    def _known(self, topic: Topic[Any]) -> None:
        """A topic this client reads through a `Topic` object: declared if this client may publish it
        (as `BusClient` does), else only remembered here (for its QoS)."""
        if self.permissions.allows(Action.PUBLISH, topic.name):
            self.declare(topic)
        else:
            self._topics.setdefault(topic.name, topic)

    def _make_publisher(self, topic: Topic[Any] | str, name: str, block: bool) -> RemotePublisher[Any]:
        if isinstance(topic, Topic):
            self.declare(topic)
            known: Topic[Any] | None = topic
        else:
            known = self._topics.get(name)
        return RemotePublisher(self, name, known, block)

    # -- subscribing and reading -----------------------------------------------------------------------

    def _subscribe(
        self,
        topics: Sequence[Topic[Any] | str],
        queue_size: int | None,
        overflow: Overflow | str | None,
        latest: bool,
    ) -> Subscription[Any]:
        """Samples arrive in batches. Both ends keep a queue of the chosen size and policy: the broker's
        (which drops while this connection is backed up) and this one (which drops while the reader is
        slow)."""
        patterns, qos = _subscribed(topics, self._declared_qos)
        for pattern in patterns:
            self._require(Action.SUBSCRIBE, pattern)
        qos = qos._override(queue_size, overflow)
        if qos.overflow is Overflow.BLOCK:
            for pattern in patterns:
                self._require(Action.BLOCK, pattern, _BLOCK_HINT)
        for topic in topics:
            if isinstance(topic, Topic):
                self._known(topic)
        sub_id = self._new_id()
        counter = [0]
        sub: Subscription[Any] = Subscription(
            self.name, patterns, qos.queue_size, qos.overflow, self._detach, lambda: counter[0], self._parked
        )
        self._subs[sub_id] = sub
        self._pushed[sub_id] = counter
        # One name or pattern travels as a text, as to a broker that knows no more.
        wire: str | list[str] = patterns[0] if len(patterns) == 1 else list(patterns)
        self._outbox.put(Subscribe(sub_id, wire, qos.queue_size, qos.overflow.value, latest))
        return sub

    def _declared_qos(self, name: str) -> QoS | None:
        known = self._topics.get(name)
        return None if known is None else known.qos

    def _detach(self, sub: Subscription[Any]) -> None:
        for sub_id, found in list(self._subs.items()):
            if found is sub:
                del self._subs[sub_id]
                del self._pushed[sub_id]
                if self._lost is None:
                    self._outbox.put(Unsubscribe(sub_id))

    async def _request(self, message: Get | IsStale | Serve) -> Any:
        pending = _Pending()
        self._pending[message.id] = pending
        try:
            self._outbox.put(message)
            await pending.done.wait()
        finally:
            del self._pending[message.id]
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def _get(self, topic: Topic[Any] | str, allow_stale: bool) -> Sample[Any] | None:
        name = topic if isinstance(topic, str) else topic.name
        self._require(Action.SUBSCRIBE, name)
        if isinstance(topic, Topic):
            self._known(topic)
        result = await self._request(Get(self._new_id(), name, allow_stale))
        if result is None:
            return None
        if type(result) is not list or len(result) != 6:
            raise ProtocolError(f"REPLY to GET: expected null or the 6 fields of a sample, got {result!r}")
        return Sample(*result)

    async def _is_stale(self, topic: Topic[Any] | str) -> bool:
        name = topic if isinstance(topic, str) else topic.name
        self._require(Action.SUBSCRIBE, name)
        if isinstance(topic, Topic):
            self._known(topic)
        result = await self._request(IsStale(self._new_id(), name))
        if type(result) is not bool:
            raise ProtocolError(f"REPLY to STALE: expected a bool, got {result!r}")
        return result

    # -- methods ---------------------------------------------------------------------------------------

    async def _call(self, mdef: Method[Any, Any], arg: Any, timeout: float) -> Any:  # noqa: ASYNC109
        call_id = self._new_id()
        pending = _Pending()
        self._pending[call_id] = pending
        try:
            self._outbox.put(Call(call_id, mdef.name, arg, timeout_to_wire(timeout)))
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            del self._pending[call_id]
            if not pending.done.is_set() and self._lost is None:
                self._outbox.put(Cancel(call_id))
        if not pending.done.is_set():
            raise CallTimeoutError(mdef.name, timeout)
        if pending.error is not None:
            raise pending.error
        result = pending.result
        problem = _response_problem(mdef, result)
        if problem is not None:
            raise RemoteError(mdef.name, "TypeError", problem)
        return result

    async def serve(
        self,
        method: Method[Req, Resp] | str,
        handler: Callable[[Req], Awaitable[Resp]],
        *,
        concurrency: int = 16,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``method`` on the bus until cancelled (see `BusClient.serve`): calls from any client of the
        bus reach ``handler`` here. Registered with the broker once started (errors such as
        `MethodAlreadyServedError` are raised before that)."""
        mdef = _method_of(method)
        self._require(Action.SERVE, mdef.name)
        if mdef.name in self._handlers:
            raise MethodAlreadyServedError(mdef.name, self.name)
        send, receive = trio.open_memory_channel[Call](math.inf)
        self._handlers[mdef.name] = send
        try:
            await self._request(Serve(self._new_id(), mdef.name))
            limit = trio.CapacityLimiter(concurrency)
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for call in receive:
                    nursery.start_soon(self._handle, mdef, handler, call, limit)
        finally:
            if self._handlers.get(mdef.name) is send:
                del self._handlers[mdef.name]
                if self._lost is None and not self._closed:
                    self._outbox.put(Unserve(mdef.name))
            send.close()

    async def _handle(
        self,
        mdef: Method[Any, Any],
        handler: Callable[[Any], Awaitable[Any]],
        call: Call,
        limit: trio.CapacityLimiter,
    ) -> None:
        try:
            _check_request(mdef, call.arg)  # however it was called: by Method or by name
        except ValueRefusedError as refused:
            _log.info("call refused", method=mdef.name, error=str(refused))
            self._outbox.put(error_from_exception(call.id, refused))
            return
        with trio.CancelScope() as scope:
            self._handler_scopes[call.id] = scope
            try:
                async with limit:
                    result = await handler(call.arg)
            except Exception as exc:
                _log.info("method handler raised", method=mdef.name, error=repr(exc))
                self._outbox.put(remote_error(call.id, exc, mdef.name))
            else:
                problem = _response_problem(mdef, result)
                if problem is not None:
                    self._outbox.put(remote_error(call.id, TypeError(problem), mdef.name))
                else:
                    self._outbox.put(Reply(call.id, result))
            finally:
                self._handler_scopes.pop(call.id, None)

    # -- the connection --------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Read and write until the connection ends; then fail whatever waits for the broker."""
        reason = "the broker closed the connection"
        try:
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    nonlocal reason
                    try:
                        await self._read_loop()
                    except ProtocolError as exc:
                        reason = f"protocol error: {exc}"
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        reason = f"the socket broke: {exc}"
                    if self._lost is None:
                        self._lost = ConnectionLostError(
                            f"{self.name}: connection to the broker lost: {reason}"
                        )
                    nursery.cancel_scope.cancel()

                async def writer() -> None:
                    nonlocal reason
                    try:
                        await _write_loop(self._stream, self._conn, self._outbox, math.inf, _log)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, _Stalled) as exc:
                        reason = f"the socket broke: {exc}"
                        nursery.cancel_scope.cancel()

                nursery.start_soon(reader)
                nursery.start_soon(writer)
        finally:
            if self._lost is None:
                self._lost = ConnectionLostError(f"{self.name}: connection to the broker lost: {reason}")
            self._set_problem(self._lost)
            if not self._closed:
                _log.warning("connection to the broker lost", client=self.name, reason=reason)
            for pending in self._pending.values():
                pending.fail(self._lost)
            for sub in list(self._subs.values()):
                sub.close()
            for send in self._handlers.values():
                send.close()

    async def _read_loop(self) -> None:
        conn = self._conn
        while True:
            for event in conn.events():
                if isinstance(event, Closed):
                    return
                if isinstance(event, Deliver):
                    sub = self._subs.get(event.sub_id)
                    if sub is not None:
                        await self._push(event.sub_id, sub, event.samples)
                else:
                    self._dispatch(event)
            conn.receive_data(await self._stream.receive_some(_READ_SIZE))

    async def _push(self, sub_id: int, sub: Subscription[Any], samples: Sequence[Sample[Any]]) -> None:
        counter = self._pushed[sub_id]
        while samples and not sub.closed:
            if sub.overflow is Overflow.BLOCK:
                room = sub.room
                if room <= 0:
                    await sub._wait_for_space()  # back-pressure, through the socket, to the publisher
                    continue
                now, samples = samples[:room], samples[room:]
            else:
                now, samples = samples, []
            if sub.overflow is Overflow.LATEST:
                for sample in now:  # a pattern's samples: the latest of each topic
                    sub.push(sample)
            else:
                sub.push_run(now)  # drop_oldest: a deque with maxlen drops the oldest by itself
            counter[0] += len(now)
            sub.wake()

    def _dispatch(self, m: Message) -> None:
        if isinstance(m, Reply | Error):
            if m.id is None:
                assert isinstance(m, Error)
                if m.kind == "protocol":
                    self._lost = ConnectionLostError(
                        f"{self.name}: the broker closed the connection: {m.message}"
                    )
                    _log.error("the broker reports a protocol error", client=self.name, error=m.message)
                    return
                _log.warning("the broker refused an operation", client=self.name, error=m.message)
                self._async_error = m.to_exception()
                self._set_problem(self._async_error)
                return
            pending = self._pending.get(m.id)
            if pending is not None:
                if isinstance(m, Reply):
                    pending.finish(m.result)
                else:
                    pending.finish(error=m.to_exception())
                return
            sub = self._subs.get(m.id)
            if sub is not None and isinstance(m, Error):
                _log.warning("the broker refused a subscription", client=self.name, error=m.message)
                self._async_error = m.to_exception()
                self._set_problem(self._async_error)
                sub._fail(m.to_exception())  # its reads raise why
        elif isinstance(m, Call):
            send = self._handlers.get(m.method)
            if send is None:
                self._outbox.put(Error(m.id, "no_such_method", "NoSuchMethodError", m.method, [m.method]))
            else:
                send.send_nowait(m)
        elif isinstance(m, Cancel):
            scope = self._handler_scopes.get(m.id)
            if scope is not None:
                scope.cancel()

    # -- life cycle ------------------------------------------------------------------------------------

    def statistics(self) -> list[SubscriptionStatistics]:
        """Statistics of this client's subscriptions (their queues on this side of the socket)."""
        return [s.statistics() for s in self._subs.values()]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every subscription; further operations raise `trio.ClosedResourceError`."""
        for sub in list(self._subs.values()):
            sub.close()
        self._closed = True
        self._outbox.gate = -1

    async def flush(self) -> None:
        """Wait until everything queued (publishes included) has been written to the socket."""
        if self._lost is not None:
            raise self._lost
        await self._outbox.wait_drained()

    def __repr__(self) -> str:
        return f"<RemoteBusClient {self.name!r}>"


@asynccontextmanager
async def connect_unix(
    path: str | os.PathLike[str],
    name: str,
    *,
    permissions: Permissions | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    flush_timeout: float = 5.0,
) -> AsyncIterator[RemoteBusClient]:
    """Join the bus served on the Unix socket ``path`` as the client ``name``.

    ``async with connect_unix(path, "my-service") as client: ...`` — ``client`` is a `RemoteBusClient`.
    ``permissions`` asks for a narrower set than the broker would grant. On exit, what is still queued is
    written (for up to ``flush_timeout`` seconds) and the connection closed. Raises `BrokerRefusedError` if
    the broker refuses the connection, `ProtocolError` if it speaks another protocol.
    """
    stream = await trio.open_unix_socket(os.fspath(path))
    try:
        conn = Connection(Role.CLIENT, max_frame=max_frame)
        await stream.send_all(conn.send([Hello(name, permissions, max_frame)]))
        welcome = await _handshake(stream, conn)
        client = RemoteBusClient(name, welcome.permissions, conn, stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                with trio.move_on_after(flush_timeout) as scope:
                    scope.shield = True
                    if client._lost is None:
                        await client._outbox.wait_drained()
                client.close()
                nursery.cancel_scope.cancel()
    finally:
        await _aclose(stream)


async def _handshake(stream: trio.SocketStream, conn: Connection) -> Welcome:
    with trio.fail_after(_HANDSHAKE_TIMEOUT):
        while True:
            event = conn.next_event()
            if event is None:
                conn.receive_data(await stream.receive_some(_READ_SIZE))
            elif isinstance(event, Welcome):
                return event
            elif isinstance(event, Refused):
                raise BrokerRefusedError(event.reason)
            elif isinstance(event, Error):
                raise ProtocolError(f"the broker closed the connection: {event.message}")
            else:
                raise ProtocolError("the broker closed the connection during the handshake")
