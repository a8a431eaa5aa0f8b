"""The broker: a `Bus` served on a Unix socket (`serve_unix`), each accepted connection a `BusClient` with
the permissions ``authorize`` grants, driven by its peer's messages (`_Session`), so the bus enforces
everything exactly as in-process. See ``docs/protocol.md``."""

from __future__ import annotations

import math
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import attrs
import structlog
import trio

from bus._bus import BrokerSide, Bus
from bus._errors import (
    BusError,
    CodecError,
    LimitExceededError,
    MethodAlreadyServedError,
    PermissionDeniedError,
    StaleValueError,
    TopicError,
    ValueRefusedError,
    shown,
)
from bus._messages import (
    _ACTIONS,
    DEFAULT_MAX_FRAME,
    Call,
    Cancel,
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
    Sync,
    Unserve,
    Unsubscribe,
    Welcome,
    error_from_exception,
)
from bus._pattern import covers
from bus._permissions import Permissions
from bus._sample import Sample, SampleColumns
from bus._stream import (
    _HANDSHAKE_TIMEOUT,
    _READ_SIZE,
    DEFAULT_MAX_PENDING,
    _aclose,
    _Outbox,
    _Pending,
    _Stalled,
    _write_loop,
)
from bus._subscription import ColumnSubscription, Subscription
from bus._topic import Overflow, QoS
from bus._wire import (
    Closed,
    Connection,
)

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_now = time.time

_log = structlog.get_logger("vwos.bus.socket")

#: The socket file's mode unless `serve_unix` is told otherwise: only the broker's user may connect.
DEFAULT_SOCKET_MODE: Final = 0o600
#: How long a connection's socket may stay unwritable (its peer not reading) before it is closed.
DEFAULT_WRITE_TIMEOUT: Final = 5.0
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


Authorize = Callable[[PeerCredentials, str], Permissions | None]


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """The peer credentials of a connected Unix socket (``SO_PEERCRED``: pid, uid, gid)."""
    size = struct.calcsize("3i")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


def _named_exception(error_type: str, message: str) -> Exception:
    """An exception whose class is named ``error_type``: how a remote handler's error is re-raised on the
    bus, so that the caller's `RemoteError` names the remote exception type."""
    cls: type[Exception] = type(error_type if error_type.isidentifier() else "RemoteError", (Exception,), {})
    return cls(message)


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
        session = _Session(bus, hello.name, granted, stream, conn, log, write_timeout, max_pending, limits)
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
        bus: Bus,
        name: str,
        permissions: Permissions,
        stream: trio.SocketStream,
        conn: Connection,
        log: Any,
        write_timeout: float,
        max_pending: int,
        limits: ConnectionLimits,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.log = log
        self.limits = limits
        self.refusals = _Refusals(log)
        #: The connection's client on the bus, and the broker's side of it (its client logs refusals here).
        self.side = BrokerSide(bus, name, permissions, self.refusals)
        self.client = self.side.client
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
        #: What to do with each kind of message the client sends.
        self._handlers: dict[type[Message], Callable[[Any], Awaitable[None]]] = {
            Publish: self._on_publish,
            Declare: self._on_declare,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Get: self._on_get,
            IsStale: self._on_is_stale,
            Sync: self._on_sync,
            Call: self._on_call,
            Cancel: self._on_cancel,
            Serve: self._on_serve,
            Unserve: self._on_unserve,
            Reply: self._on_answer,
            Error: self._on_answer,
        }

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
        handlers = self._handlers
        unexpected = self._unexpected
        while True:
            for handled, event in enumerate(conn.events(), 1):
                if isinstance(event, Closed):
                    return
                if handled % _YIELD_EVERY == 0:  # within one read: one huge frame cannot starve the others
                    await trio.lowlevel.checkpoint()
                await handlers.get(type(event), unexpected)(event)
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

    # -- the handlers of `_handlers`: one per kind of message a client sends ---------------------------

    async def _unexpected(self, m: Message) -> None:  # pragma: no cover - the state machine
        raise ProtocolError(f"unexpected {m.NAME}")

    async def _on_publish(self, m: Publish) -> None:
        try:
            await self.side.publish_run(m.topic, m.values, m.timestamps, m.wait)
        except BusError as exc:
            self._refuse(None, exc, "PUBLISH")

    async def _on_declare(self, m: Declare) -> None:
        try:
            self.client.declare(m.to_topic(self.conn.codec))
        except BusError as exc:
            self._refuse(None, exc, "DECLARE")
        except Exception as exc:  # e.g. unhashable allowed values
            self._refuse(None, TopicError(f"{shown(m.name)}: invalid declaration: {exc}"), "DECLARE")

    async def _on_subscribe(self, m: Subscribe) -> None:
        if m.sub_id in self.subs:
            raise ProtocolError(f"SUBSCRIBE: subscription id {m.sub_id} is already in use")
        if len(self.subs) >= self.limits.subscriptions:
            limit = LimitExceededError(self.client.name, "subscriptions", self.limits.subscriptions)
            self._refuse(m.sub_id, limit, "SUBSCRIBE")
            return
        try:
            patterns = [m.pattern] if type(m.pattern) is str else m.pattern
            sub = self.side.subscribe(patterns, m.queue_size, m.overflow, m.latest, self._check_queue)
        except BusError as exc:
            self._refuse(m.sub_id, exc, "SUBSCRIBE")
            return
        self.subs[m.sub_id] = sub
        self.queued += _queued(sub.overflow, sub.capacity)
        assert self.nursery is not None
        self.nursery.start_soon(self._forward, m.sub_id, sub)

    async def _on_unsubscribe(self, m: Unsubscribe) -> None:
        found = self.subs.pop(m.sub_id, None)
        if found is not None:
            self.queued -= _queued(found.overflow, found.capacity)
            found.close()

    async def _on_get(self, m: Get) -> None:
        try:
            sample = self.side.get_now(m.topic, m.allow_stale)
        except StaleValueError as exc:
            self.outbox.put(error_from_exception(m.id, exc))  # an answer, not a refusal
        except BusError as exc:
            self._refuse(m.id, exc, "GET")
        else:
            self.outbox.put(Reply(m.id, None if sample is None else list(sample)))

    async def _on_is_stale(self, m: IsStale) -> None:
        try:
            self.outbox.put(Reply(m.id, self.side.is_stale_now(m.topic)))
        except BusError as exc:
            self._refuse(m.id, exc, "STALE")

    async def _on_sync(self, m: Sync) -> None:
        self.outbox.put(Reply(m.id, None))  # handled in order: what came before it has been handled

    async def _on_call(self, m: Call) -> None:
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

    async def _on_cancel(self, m: Cancel) -> None:
        found = self.calls.get(m.id)
        if found is not None:
            found.cancel()

    async def _on_serve(self, m: Serve) -> None:
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

    async def _on_unserve(self, m: Unserve) -> None:
        found = self.served.pop(m.method, None)
        if found is not None:
            found.cancel()

    async def _on_answer(self, m: Reply | Error) -> None:
        """A REPLY or ERROR: the client's answer to a call the broker forwarded to it (`_serve`)."""
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
            pending.finish(error=BrokerSide.request_refused(*m.args))
        else:
            pending.finish(error=_named_exception(m.error_type, m.message))

    async def _forward(self, sub_id: int, sub: Subscription[Any]) -> None:
        """Move the subscription's samples to the outbox, one SAMPLES message per batch, while the outbox
        has room."""
        outbox = self.outbox
        try:
            while True:
                await outbox.wait_room()
                room = max(outbox.room, 1)
                if type(sub) is ColumnSubscription:
                    columns = await sub.receive_columns(room)
                    tail = outbox.tail
                    # The SAMPLES this forwarder queued last, not taken by the writer yet: it grows (a
                    # publisher in this process bursting makes one message, not one per burst).
                    if (
                        type(tail) is Deliver
                        and tail.sub_id == sub_id
                        and type(tail.samples) is SampleColumns
                    ):
                        tail.samples._absorb(columns)
                        outbox.grow(len(columns))
                        continue
                    batch: Sequence[Sample[Any]] = columns
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
