"""The bus API every client offers (`BusHandle`), and the part of it every client writes the same way.

`BusHandle` is the typed protocol a service is written against: `bus.BusClient` (in-process) and
`bus.RemoteBusClient` (over the socket) both satisfy it, and later clients (Zenoh, a recording's replay)
will. Each call has one shape everywhere: what may need a round trip to the broker (``get``, ``is_stale``,
``call``, ``flush``) is a coroutine in every client, even where it needs none.

`_ClientBase` holds what the clients share: the overloaded public signatures, written once, and the
declared-publisher cache. A client supplies the hooks (``_require``, ``_make_publisher``, ``_subscribe``,
``_get``, ``_is_stale``, ``_call``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Protocol, TypeVar, overload

import trio

from bus._errors import TopicError, ValueRefusedError
from bus._pattern import check_name, check_pattern
from bus._permissions import Action, Permissions
from bus._sample import NotAvailable, Sample
from bus._subscription import Subscription, SubscriptionStatistics
from bus._topic import Method, Overflow, QoS, Topic

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: How long `BusHandle.call` waits for a reply unless told otherwise.
DEFAULT_CALL_TIMEOUT = 5.0

#: The most names and patterns one subscription may take (`BusHandle.subscribe`).
MAX_SUBSCRIPTION_PATTERNS: Final = 256

#: What `BusHandle.subscribe` takes: one or more names, patterns or topics (or sequences of them).
Subscribable = Topic[Any] | str | Iterable[Topic[Any] | str]

#: Declared publishers kept per client at most (someone building a new `Topic` per publish stays bounded).
_MAX_CACHED_PUBLISHERS = 4096


class PublisherHandle(Protocol[T_contra]):
    """A declared publisher of one topic, made by `BusHandle.publisher`: the fast path of publishing
    (`bus.Publisher` in-process, `bus.RemotePublisher` over the socket)."""

    def publish_nowait(self, value: T_contra | NotAvailable, *, timestamp: float | None = None) -> None:
        """See `BusHandle.publish_nowait`."""
        ...

    async def publish(self, value: T_contra | NotAvailable, *, timestamp: float | None = None) -> None:
        """See `BusHandle.publish`."""
        ...


class BusHandle(Protocol):
    """One client's handle on the bus, wherever the bus is: what `ServiceContext.bus` is.

    Every operation is checked against the client's ``permissions``. ``publish_nowait`` and ``subscribe``
    are plain calls (they never wait); ``publish``, ``get``, ``is_stale``, ``call``, ``serve`` and
    ``flush`` are coroutines in every client. See ``docs/bus.md``.
    """

    @property
    def name(self) -> str:
        """The client's name (a sample's ``publisher``)."""
        ...

    @property
    def permissions(self) -> Permissions:
        """What the client may do."""
        ...

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        ...

    def declare(self, topic: Topic[T]) -> Topic[T]:
        """Declare ``topic`` on the bus (needs the right to publish it)."""
        ...

    @overload
    def publisher(self, topic: Topic[T], *, block: bool = False) -> PublisherHandle[T]: ...
    @overload
    def publisher(self, topic: str, *, block: bool = False) -> PublisherHandle[Any]: ...

    @overload
    def publish_nowait(
        self, topic: Topic[T], value: T | NotAvailable, *, timestamp: float | None = None
    ) -> None: ...
    @overload
    def publish_nowait(self, topic: str, value: Any, *, timestamp: float | None = None) -> None: ...

    @overload
    async def publish(
        self, topic: Topic[T], value: T | NotAvailable, *, timestamp: float | None = None
    ) -> None: ...
    @overload
    async def publish(self, topic: str, value: Any, *, timestamp: float | None = None) -> None: ...

    @overload
    def subscribe(
        self,
        topic: Topic[T],
        /,
        *,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        latest: bool = False,
    ) -> Subscription[T]: ...
    @overload
    def subscribe(
        self,
        topic: Subscribable,
        /,
        *more: Topic[Any] | str,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        latest: bool = False,
    ) -> Subscription[Any]: ...

    @overload
    async def get(self, topic: Topic[T], *, allow_stale: bool = False) -> Sample[T] | None: ...
    @overload
    async def get(self, topic: str, *, allow_stale: bool = False) -> Sample[Any] | None: ...

    async def is_stale(self, topic: Topic[Any] | str) -> bool:
        """True if the topic has a value older than its ``max_age``, or no value at all."""
        ...

    async def serve(
        self,
        method: Method[Req, Resp] | str,
        handler: Callable[[Req], Awaitable[Resp]],
        *,
        concurrency: int = 16,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``method`` until cancelled (``await nursery.start(ctx.bus.serve, LOCK, lock)``)."""
        ...

    @overload
    async def call(self, method: Method[Req, Resp], arg: Req, *, timeout: float = ...) -> Resp: ...  # noqa: ASYNC109
    @overload
    async def call(self, method: str, arg: Any = None, *, timeout: float = ...) -> Any: ...  # noqa: ASYNC109

    def statistics(self) -> list[SubscriptionStatistics]:
        """Statistics of this client's subscriptions."""
        ...

    async def flush(self) -> None:
        """Wait until what this client sent so far has reached the bus: its subscriptions are in place,
        its declarations and samples are on the bus (in-process at once; over the socket a round trip)."""
        ...

    def close(self) -> None:
        """Close every subscription; further operations raise `trio.ClosedResourceError`."""
        ...


def _method_of(method: Method[Any, Any] | str) -> Method[Any, Any]:
    return Method(method) if isinstance(method, str) else method


class _ClientBase:
    """The public API of a bus client, written once: signatures, the publisher cache, the first checks.
    A client class supplies the hooks below."""

    name: str
    permissions: Permissions
    #: Declared publishers by topic name (a str) or by the id of the Topic object (kept alive beside it,
    #: so that its id is not reused); those made with ``block=True`` apart.
    _publishers: dict[int | str, tuple[Any, Topic[Any] | str]]
    _block_publishers: dict[int | str, tuple[Any, Topic[Any] | str]]

    # -- the hooks ---------------------------------------------------------------------------------------

    def _require(self, action: Action, name: str, hint: str = "") -> None:
        raise NotImplementedError

    def _make_publisher(self, topic: Topic[Any] | str, name: str, block: bool) -> Any:
        """A new publisher of ``topic`` (its name checked, the publish permission granted)."""
        raise NotImplementedError

    def _subscribe(
        self,
        topics: Sequence[Topic[Any] | str],
        queue_size: int | None,
        overflow: Overflow | str | None,
        latest: bool,
    ) -> Subscription[Any]:
        """`subscribe` to ``topics`` (one or more, each a `Topic` or a str: see `_subscribed`)."""
        raise NotImplementedError

    async def _get(self, topic: Topic[Any] | str, allow_stale: bool) -> Sample[Any] | None:
        raise NotImplementedError

    async def _is_stale(self, topic: Topic[Any] | str) -> bool:
        raise NotImplementedError

    async def _call(self, mdef: Method[Any, Any], arg: Any, timeout: float) -> Any:  # noqa: ASYNC109
        """Call ``mdef`` (the permission and the argument already checked)."""
        raise NotImplementedError

    # -- publish -----------------------------------------------------------------------------------------

    def _publisher(self, topic: Topic[Any] | str, block: bool) -> Any:
        """`publisher`, typed as the client's own publisher class (``Any`` here)."""
        key = topic if type(topic) is str else id(topic)
        cache = self._block_publishers if block else self._publishers
        cached = cache.get(key)
        if cached is not None:
            return cached[0]
        name = topic if isinstance(topic, str) else topic.name
        if isinstance(topic, str):
            check_name(name)  # a topic name: no wildcards
        self._require(Action.PUBLISH, name)
        publisher = self._make_publisher(topic, name, block)
        if len(cache) > _MAX_CACHED_PUBLISHERS:
            cache.clear()
        cache[key] = (publisher, topic)
        return publisher

    @overload
    def publisher(self, topic: Topic[T], *, block: bool = False) -> PublisherHandle[T]: ...
    @overload
    def publisher(self, topic: str, *, block: bool = False) -> PublisherHandle[Any]: ...
    def publisher(self, topic: Topic[Any] | str, *, block: bool = False) -> PublisherHandle[Any]:
        """A declared publisher for one topic: the permission is checked once, here; its
        ``publish_nowait`` is the fastest way to publish (like Zenoh's and ROS 2's declared publishers).

        ``block=True`` makes a publisher that takes back-pressure from ``block`` subscribers (Zenoh's
        congestion control "block"): its ``publish_nowait`` raises `trio.WouldBlock` while one's queue is
        full (nothing delivered) instead of leaving the sample out of that queue. For lossless streams
        whose publisher can wait (``except trio.WouldBlock: await publisher.publish(value)``).
        """
        return self._publisher(topic, block)  # type: ignore[no-any-return]

    @overload
    def publish_nowait(
        self, topic: Topic[T], value: T | NotAvailable, *, timestamp: float | None = None
    ) -> None: ...
    @overload
    def publish_nowait(self, topic: str, value: Any, *, timestamp: float | None = None) -> None: ...
    def publish_nowait(self, topic: Topic[Any] | str, value: Any, *, timestamp: float | None = None) -> None:
        """Check ``value`` against the topic's rules and deliver it to every matching subscriber.

        Raises `ValueRefusedError` (nothing delivered) if a rule is broken, `PermissionDeniedError` if
        the client may not publish the topic. Never waits, and never fails because of a subscriber: a
        ``block`` subscriber whose queue is full does not get the sample (it is counted in its statistics'
        ``dropped_nowait``); ``await publish`` waits for room instead.
        Publishing often on one topic? `publisher` saves the look-up.
        """
        cached = self._publishers.get(topic if type(topic) is str else id(topic))
        publisher = cached[0] if cached is not None else self._publisher(topic, False)
        publisher.publish_nowait(value, timestamp=timestamp)

    @overload
    async def publish(
        self, topic: Topic[T], value: T | NotAvailable, *, timestamp: float | None = None
    ) -> None: ...
    @overload
    async def publish(self, topic: str, value: Any, *, timestamp: float | None = None) -> None: ...
    async def publish(self, topic: Topic[Any] | str, value: Any, *, timestamp: float | None = None) -> None:
        """Like `publish_nowait`, but waits for room in the queues of ``block`` subscribers."""
        await self._publisher(topic, False).publish(value, timestamp=timestamp)

    # -- subscribe and read ------------------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        topic: Topic[T],
        /,
        *,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        latest: bool = False,
    ) -> Subscription[T]: ...
    @overload
    def subscribe(
        self,
        topic: Subscribable,
        /,
        *more: Topic[Any] | str,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        latest: bool = False,
    ) -> Subscription[Any]: ...
    def subscribe(
        self,
        topic: Subscribable,
        /,
        *more: Topic[Any] | str,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        latest: bool = False,
    ) -> Subscription[Any]:
        """Subscribe to a topic, or to a pattern of names (``*`` one segment, ``**`` any depth); or to
        several at once, in one queue: ``subscribe(SPEED, "Vehicle.Gear", "Body.**")`` or a sequence of
        them (at most `MAX_SUBSCRIPTION_PATTERNS`). A topic several of them match is delivered once.

        The queue takes ``queue_size`` and ``overflow`` if given, else the first one's QoS: a `Topic`'s,
        a declared topic's for its exact name, else the default QoS. With ``latest=True`` the latest value
        of each matching topic is queued at once, so the subscriber starts from the current state.
        ``overflow="block"`` needs the ``block`` permission besides ``subscribe``. Subscribing through a
        `Topic` declares it if this client may publish it; else the topic's declaration, if there is one,
        must agree with it.
        """
        return self._subscribe(_flattened(topic, more), queue_size, overflow, latest)

    @overload
    async def get(self, topic: Topic[T], *, allow_stale: bool = False) -> Sample[T] | None: ...
    @overload
    async def get(self, topic: str, *, allow_stale: bool = False) -> Sample[Any] | None: ...
    async def get(self, topic: Topic[Any] | str, *, allow_stale: bool = False) -> Sample[Any] | None:
        """The topic's latest sample, or None if nothing was published yet.

        Raises `StaleValueError` if the topic has a ``max_age`` and its latest sample is older, unless
        ``allow_stale``; `UnknownTopicError` for a name no topic is declared under. Reading needs the
        subscribe permission. A checkpoint in-process, a round trip to the broker over the socket.
        """
        return await self._get(topic, allow_stale)

    async def is_stale(self, topic: Topic[Any] | str) -> bool:
        """True if the topic has a value older than its ``max_age``, or no value at all."""
        return await self._is_stale(topic)

    # -- methods -----------------------------------------------------------------------------------------

    @overload
    async def call(self, method: Method[Req, Resp], arg: Req, *, timeout: float = ...) -> Resp: ...  # noqa: ASYNC109
    @overload
    async def call(self, method: str, arg: Any = None, *, timeout: float = ...) -> Any: ...  # noqa: ASYNC109
    async def call(
        self,
        method: Method[Any, Any] | str,
        arg: Any = None,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109 - it travels with the request
    ) -> Any:
        """Call a method and return its reply.

        Raises `NoSuchMethodError` if nobody serves it, `RemoteError` if its handler raised,
        `CallTimeoutError` if no reply came within ``timeout`` seconds (``math.inf`` waits for ever),
        `ValueRefusedError` if ``arg`` is not of the method's request type — the type of the `Method`
        given, and the type its server declared (so also for a method called by name).
        """
        mdef = _method_of(method)
        self._require(Action.CALL, mdef.name)
        _check_call(mdef, arg, timeout)
        return await self._call(mdef, arg, timeout)


def _check_request(mdef: Method[Any, Any], arg: Any) -> None:
    """A call's argument against the method's request type: `ValueRefusedError` if it is not one."""
    if mdef.request is not object and not isinstance(arg, mdef.request):
        raise ValueRefusedError(mdef.name, f"expected a {mdef.request.__qualname__} argument", arg)


def _check_call(mdef: Method[Any, Any], arg: Any, timeout: float) -> None:
    """A call's argument against the method's request type, and its timeout (in every bus client)."""
    _check_request(mdef, arg)
    if not (timeout > 0):
        raise ValueError(f"timeout must be positive seconds, not {timeout!r}")


def _flattened(topic: Subscribable, more: tuple[Topic[Any] | str, ...]) -> list[Topic[Any] | str]:
    """`subscribe`'s arguments as one list of topics, names and patterns; `TypeError` naming the first
    that is none of them."""
    first = [topic] if isinstance(topic, Topic | str) else list(topic)
    topics = [*first, *more]
    for i, item in enumerate(topics):
        if not isinstance(item, Topic | str):
            raise TypeError(
                f"subscribe: argument {i} is a {type(item).__name__}; expected a Topic, a name or a pattern"
            )
    if not topics:
        raise TypeError("subscribe needs at least one Topic, name or pattern")
    if len(topics) > MAX_SUBSCRIPTION_PATTERNS:
        raise TopicError(
            f"a subscription takes at most {MAX_SUBSCRIPTION_PATTERNS} names and patterns, not {len(topics)}"
        )
    return topics


def _subscribed(
    topics: Sequence[Topic[Any] | str], qos_of: Callable[[str], QoS | None]
) -> tuple[tuple[str, ...], QoS]:
    """The distinct names and patterns of ``topics`` (each checked, in order), and the QoS of the first:
    a `Topic`'s own, else ``qos_of(name)`` (a declared topic's) for an exact name, else the default."""
    patterns = tuple(dict.fromkeys(t.name if isinstance(t, Topic) else check_pattern(t) for t in topics))
    first = topics[0]
    if isinstance(first, Topic):
        return patterns, first.qos
    return patterns, qos_of(patterns[0]) or QoS()
