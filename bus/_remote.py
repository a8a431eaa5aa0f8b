"""The client side of the socket: `connect_unix` joins a broker's bus as a `RemoteBusClient` (a
`BusHandle`, as `BusClient` is), whose `RemotePublisher` queues runs for the connection's writer."""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, NoReturn, TypeVar

import structlog
import trio

from bus._bus import (
    _BLOCK_HINT,
    _response_problem,
)
from bus._errors import (
    BusError,
    CallTimeoutError,
    MethodAlreadyServedError,
    PermissionDeniedError,
    RemoteError,
    ValueRefusedError,
    shown,
)
from bus._handle import _check_request, _ClientBase, _method_of, _subscribed
from bus._messages import (
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
    Types,
    Unserve,
    Unsubscribe,
    Welcome,
    error_from_exception,
    remote_error,
    timeout_to_wire,
)
from bus._permissions import Action, Permissions
from bus._sample import NotAvailable, Sample
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
from bus._subscription import Subscription, SubscriptionStatistics
from bus._topic import FloatList, Method, Overflow, QoS, Topic, register_type
from bus._wire import (
    Closed,
    Connection,
)

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_now = time.time


def _as_is(value: T) -> T:
    return value


def _seconds(timestamp: object) -> float:
    if type(timestamp) is int:
        return float(timestamp)
    raise TypeError(f"timestamp: expected seconds (a float), got {type(timestamp).__name__}")


_log = structlog.get_logger("vwos.bus.socket")


class BrokerRefusedError(BusError):
    """The broker refused the connection (its ``authorize`` said no); ``reason`` is what it said."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the broker refused the connection: {reason}")
        self.reason = reason


class ConnectionLostError(BusError):
    """The connection to the broker is gone (closed by the broker, a protocol error, or the socket broke)."""


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

    async def _request(self, message: Get | IsStale | Serve | Sync) -> Any:
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
        register_type(mdef.request)  # so that replies and requests of its types can be decoded by name
        register_type(mdef.response)
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
        handlers: dict[type[Message], Callable[[Any], None]] = {
            Reply: self._on_reply,
            Error: self._on_error,
            Call: self._on_call,
            Cancel: self._on_cancel,
            Types: _learned,  # the connection has taught its codec the schemas already
        }
        unexpected = self._unexpected
        while True:
            for event in conn.events():
                if isinstance(event, Closed):
                    return
                if type(event) is Deliver:  # samples, the hot path: pushed, which may wait for room
                    sub = self._subs.get(event.sub_id)
                    if sub is not None:
                        await self._push(event.sub_id, sub, event.samples)
                else:
                    handlers.get(type(event), unexpected)(event)
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

    # -- the handlers of `_handlers`: one per kind of message the broker sends (SAMPLES aside) ------------

    def _unexpected(self, m: Message) -> None:  # pragma: no cover - the state machine
        raise ProtocolError(f"unexpected {m.NAME}")

    def _on_reply(self, m: Reply) -> None:
        pending = self._pending.get(m.id)
        if pending is not None:
            pending.finish(m.result)

    def _on_error(self, m: Error) -> None:
        if m.id is None:
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
            pending.finish(error=m.to_exception())
            return
        sub = self._subs.get(m.id)
        if sub is not None:
            _log.warning("the broker refused a subscription", client=self.name, error=m.message)
            self._async_error = m.to_exception()
            self._set_problem(self._async_error)
            sub._fail(m.to_exception())  # its reads raise why

    def _on_call(self, m: Call) -> None:
        send = self._handlers.get(m.method)
        if send is None:
            self._outbox.put(Error(m.id, "no_such_method", "NoSuchMethodError", m.method, [m.method]))
        else:
            send.send_nowait(m)

    def _on_cancel(self, m: Cancel) -> None:
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
        """Wait until the broker has handled everything this client sent so far: its subscriptions are in
        place, its declarations and samples are on the bus (a SYNC round trip)."""
        if self._lost is not None:
            raise self._lost
        await self._request(Sync(self._new_id()))

    def __repr__(self) -> str:
        return f"<RemoteBusClient {self.name!r}>"


def _learned(message: Types) -> None:
    """TYPES: nothing left to do (`bus._wire.Connection` has taught its codec the schemas)."""


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
