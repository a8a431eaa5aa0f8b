"""The in-process bus: topic registry, routing, latest values, request/response."""

from __future__ import annotations

import contextlib
import difflib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import attrs
import structlog
import trio

from bus._errors import (
    CallTimeoutError,
    MethodAlreadyServedError,
    NoSuchMethodError,
    PermissionDeniedError,
    RemoteError,
    StaleValueError,
    UnknownTopicError,
    ValueRefusedError,
    shown,
)
from bus._handle import _check_request, _ClientBase, _method_of, _subscribed
from bus._pattern import MAX_NAME_LENGTH, check_pattern, is_pattern, matches
from bus._permissions import Action, Permissions
from bus._sample import NotAvailable, Sample, SampleRun, _new_sample, _sliced
from bus._subscription import ColumnSubscription, Subscription, SubscriptionStatistics
from bus._topic import Method, Overflow, QoS, Topic, register_type

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

_log = structlog.get_logger("vwos.bus")
_now = time.time
_perf_counter = time.perf_counter


def _system_clock_offset(clock: Callable[[], float]) -> float | None:
    """``offset`` when ``clock`` is trio's default clock (``SystemClock.current_time``, which returns
    ``offset + time.perf_counter()``), so that a publisher reads the same time without a Python call per
    sample; None for any other clock (MockClock, a clock given to `Bus`): that one is called."""
    owner = getattr(clock, "__self__", None)
    kind = type(owner)
    if (
        kind.__name__ != "SystemClock"
        or not kind.__module__.startswith("trio.")
        or getattr(clock, "__func__", None) is not getattr(kind, "current_time", None)
    ):
        return None
    offset = getattr(owner, "offset", None)
    if type(offset) is not float:
        return None
    before = clock()
    mine = offset + _perf_counter()
    after = clock()
    return offset if before <= mine <= after else None  # it computes what we think it does


def _fast_rules(topic: Topic[Any]) -> tuple[type | None, float, float]:
    """``(type, low, high)``: a value of exactly ``type`` within ``low <= value <= high`` is one the topic's
    checker returns as it is (an ``int`` or ``float`` topic without ``allowed``), so that a publisher
    checks it inline; other values go to the checker. ``(None, ...)``: every value goes to it."""
    if topic.type not in (int, float) or topic.allowed is not None:
        return None, 0.0, 0.0
    low = -math.inf if topic.min is None else topic.min
    high = math.inf if topic.max is None else topic.max
    return topic.type, low, high


class _TopicState:
    """What the bus keeps per topic. Adding or removing a subscription is O(1) (``subs`` is an ordered
    dict); the routing tuples the publishers iterate are rebuilt from it lazily, by the first publish
    after a change (``pushes`` is None until then), so n subscription changes between two publishes cost
    one rebuild, paid by a publish that costs as much anyway."""

    __slots__ = (
        "blocking",
        "check",
        "column_subs",
        "declarer",
        "fast_pushes",
        "holders",
        "latest",
        "name",
        "pushes",
        "routed",
        "sample_subs",
        "seq",
        "subs",
        "topic",
    )

    def __init__(self, topic: Topic[Any], subs: Iterable[Subscription[Any]], declarer: str | None) -> None:
        self.topic = topic
        self.name = topic.name
        self.check = topic._check
        self.seq = 0
        self.latest: Sample[Any] | None = None
        self.subs: dict[Subscription[Any], None] = dict.fromkeys(subs)
        #: The client that declared the topic first (None: `Bus.declare`), named by conflicts.
        self.declarer = declarer
        #: Who keeps the declaration: the clients that declared it or hold a publisher of it (the bus
        #: itself for `Bus.declare`). Released once none is left, if nothing was ever published.
        self.holders: set[object] = set()
        #: Built by `rebuild` from ``subs``; ``pushes`` is None while they are out of date.
        self.pushes: tuple[Callable[[Sample[Any]], None], ...] | None = None
        #: The same, each a deque's own C append, for a publisher that has made sure every ``block``
        #: queue has room (`_BlockingPublisher`): it need not have each push check again.
        self.fast_pushes: tuple[Callable[[Sample[Any]], None], ...] = ()
        self.routed: tuple[Subscription[Any], ...] = ()
        self.blocking: tuple[Subscription[Any], ...] = ()
        #: A run from another process goes to these as one `SampleRun`, to the others as built samples.
        self.column_subs: tuple[ColumnSubscription, ...] = ()
        self.sample_subs: tuple[Subscription[Any], ...] = ()

    def add(self, sub: Subscription[Any]) -> None:
        self.subs[sub] = None
        self.pushes = None

    def remove(self, sub: Subscription[Any]) -> None:
        if sub in self.subs:
            del self.subs[sub]
            self.pushes = None

    def rebuild(self) -> tuple[Callable[[Sample[Any]], None], ...]:
        """The routing tuples, from ``subs``; returns ``pushes``."""
        subs = self.routed = tuple(self.subs)
        self.blocking = tuple(s for s in subs if s.overflow is Overflow.BLOCK)
        self.column_subs = tuple(s for s in subs if type(s) is ColumnSubscription)
        self.sample_subs = tuple(s for s in subs if type(s) is not ColumnSubscription)
        pushes = self.pushes = tuple(s.push for s in subs)
        self.fast_pushes = tuple(s._queue.append if s.overflow is Overflow.BLOCK else s.push for s in subs)
        return pushes


@attrs.frozen
class UndeclaredSubscription:
    """A subscription to an exact name that no topic is declared under (see
    `Bus.undeclared_subscriptions`): most often a typo, or a publisher that never started."""

    #: The subscribing client's name.
    client: str
    #: The name subscribed to.
    name: str
    #: The bus clock when the subscription was made (compare with ``bus.clock()`` for a grace period).
    since: float
    #: The declared names closest to ``name`` (``difflib``), closest first; at most three.
    closest: tuple[str, ...]


#: `Bus.undeclared_subscriptions` looks for close names for this many distinct names per call at most.
_MAX_SUGGESTED: Final = 64


_HOLE: Final = "\0"  # stands for any one segment in `_NearIndex`'s keys (no segment holds it)


class _NearIndex:
    """The declared names by their neighbourhoods, so that the names one segment away from a name (one
    segment changed, missing or extra: how a typo looks; case ignored) are found with a few dict look-ups
    instead of comparing it with every declared name (910 VSS names took ~35 ms per name with difflib).
    Built once per set of declared names (`Bus` drops it when a topic comes or goes)."""

    __slots__ = ("by_hole", "by_name", "by_shorter")

    def __init__(self, names: Iterable[str]) -> None:
        by_name: dict[tuple[str, ...], list[str]] = {}
        by_hole: dict[tuple[str, ...], list[str]] = {}
        by_shorter: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            segments = tuple(name.lower().split("."))
            by_name.setdefault(segments, []).append(name)
            for i in range(len(segments)):
                by_hole.setdefault((*segments[:i], _HOLE, *segments[i + 1 :]), []).append(name)
                by_shorter.setdefault(segments[:i] + segments[i + 1 :], []).append(name)
        self.by_name = by_name
        self.by_hole = by_hole
        self.by_shorter = by_shorter

    def closest(self, name: str, n: int) -> list[str]:
        """Up to ``n`` names near ``name``, closest first (``difflib``'s ratio, at least 0.6)."""
        segments = tuple(name.lower().split("."))
        near: dict[str, None] = dict.fromkeys(self.by_name.get(segments, ()))  # differs in case only
        near.update(dict.fromkeys(self.by_shorter.get(segments, ())))  # one segment missing in name
        for i in range(len(segments)):
            near.update(dict.fromkeys(self.by_hole.get((*segments[:i], _HOLE, *segments[i + 1 :]), ())))
            near.update(dict.fromkeys(self.by_name.get(segments[:i] + segments[i + 1 :], ())))  # one extra
        near.pop(name, None)
        return difflib.get_close_matches(name, list(near), n=n)


@attrs.frozen
class TopicStatistics:
    """A snapshot of one topic."""

    name: str
    type: str
    published: int
    subscribers: int
    latest_bus_time: float | None


@attrs.frozen
class BusStatistics:
    """A snapshot of the whole bus: topics, subscriptions, served methods."""

    topics: tuple[TopicStatistics, ...]
    subscriptions: tuple[SubscriptionStatistics, ...]
    methods: dict[str, str]

    @property
    def dropped(self) -> int:
        """Samples dropped by all subscriber queues together."""
        return sum(s.dropped for s in self.subscriptions)


def _default_clock() -> Callable[[], float]:
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return time.monotonic


class Bus:
    """A typed publish/subscribe bus in one process.

    Services do not use the bus directly: each gets a `BusClient` (``bus.client(name, permissions)``)
    through which it publishes, subscribes, serves and calls, within its permissions. Created inside
    ``trio.run``, the bus reads trio's clock (so tests under MockClock see mock time); ``clock`` overrides.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._topics: dict[str, _TopicState] = {}
        #: Every subscription (an ordered set), and the same by kind: by exact name, and with wildcards.
        self._subscriptions: dict[Subscription[Any], None] = {}
        self._exact: dict[str, dict[Subscription[Any], None]] = {}
        self._wildcard: dict[Subscription[Any], tuple[str, ...]] = {}  # and their wildcard patterns
        #: The bus clock when each subscription was made.
        self._since: dict[Subscription[Any], float] = {}
        self._servers: dict[str, _Server] = {}
        #: Subscriptions whose reader waits: publishers wake readers only while this is not empty.
        self._parked: set[Subscription[Any]] = set()
        #: Per subscription, each routed topic's sequence number when routing began (for drop counts).
        self._offsets: dict[Subscription[Any], dict[str, int]] = {}
        #: The declared names by neighbourhood (`closest_names`); None until asked for, or out of date.
        self._near: _NearIndex | None = None
        self.clock: Callable[[], float] = clock if clock is not None else _default_clock()

    def client(self, name: str, permissions: Permissions = Permissions.ALL) -> BusClient:
        """A handle on the bus for one client (a service, a tool), limited to ``permissions``."""
        return BusClient(self, name, permissions)

    # -- topics --------------------------------------------------------------------------------------

    def declare(self, topic: Topic[T]) -> Topic[T]:
        """Make ``topic`` known for good (a client's declaration, `BusClient.declare`, is released if
        the client goes away before anything was published). Declaring the same name again with another
        type or other rules raises `TopicError` naming the first declarer and what differs."""
        self._declare(topic, self, None)
        return topic

    def _declare(self, topic: Topic[Any], holder: object, declarer: str | None) -> _TopicState:
        name = topic.name
        state = self._topics.get(name)
        if state is None:
            register_type(topic.type)  # so that remote clients can be told its schema
        if state is not None:
            if state.topic is not topic:
                state.topic._check_redeclaration(topic, state.declarer)
            state.holders.add(holder)
            return state
        subs = dict.fromkeys(self._exact.get(name, ()))
        for sub, wild in self._wildcard.items():
            if sub not in subs and any(matches(p, name) for p in wild):
                subs[sub] = None
        for sub in subs:
            self._offsets[sub][name] = 0
        state = self._topics[name] = _TopicState(topic, subs, declarer)
        self._near = None
        state.holders.add(holder)
        return state

    def _release(self, holder: object, names: Iterable[str]) -> None:
        """``holder`` (a closing client) lets go of the topics ``names``: each that nobody else holds and
        that was never published is forgotten, so its name may be declared afresh."""
        for name in names:
            state = self._topics.get(name)
            if state is None:
                continue
            state.holders.discard(holder)
            if state.holders or state.seq:
                continue
            del self._topics[name]
            self._near = None
            for sub in state.subs:
                self._offsets[sub].pop(name, None)
            _log.info("declaration released: its declarer left before publishing", topic=name)

    def topic(self, name: str) -> Topic[Any]:
        """The declared topic called ``name``."""
        state = self._topics.get(name)
        if state is None:
            raise UnknownTopicError(name)
        return state.topic

    def method(self, name: str) -> Method[Any, Any]:
        """The method called ``name`` as its server declared it; `NoSuchMethodError` if nobody serves it."""
        server = self._servers.get(name)
        if server is None:
            raise NoSuchMethodError(name)
        return server.method

    def topics(self, pattern: str = "**") -> list[Topic[Any]]:
        """Declared topics whose names match ``pattern``, sorted by name."""
        check_pattern(pattern)
        return [s.topic for n, s in sorted(self._topics.items()) if matches(pattern, n)]

    def latest(self, pattern: str = "**") -> list[Sample[Any]]:
        """The latest sample of every topic matching ``pattern`` that has one, sorted by topic."""
        check_pattern(pattern)
        return [
            s.latest for n, s in sorted(self._topics.items()) if s.latest is not None and matches(pattern, n)
        ]

    def undeclared_subscriptions(self) -> list[UndeclaredSubscription]:
        """Subscriptions to an exact name under which no topic is declared, by name, with the declared
        names closest to each (for at most 64 distinct names per call, the first by name; the others get
        none). A report for the supervisor to make once a grace period has passed (``since``): a
        subscriber waiting on a misspelt name waits for ever."""
        found: list[UndeclaredSubscription] = []
        suggested = 0
        for name, subs in sorted(self._exact.items()):
            if name in self._topics:
                continue
            closest: tuple[str, ...] = ()
            if suggested < _MAX_SUGGESTED:
                suggested += 1
                closest = tuple(self.closest_names(name))
            found.extend(UndeclaredSubscription(sub.client, name, self._since[sub], closest) for sub in subs)
        return found

    def closest_names(self, name: str, n: int = 3) -> list[str]:
        """The declared topic names closest to ``name``, closest first, at most ``n``: for a "did you
        mean ...?". Candidates are the names one segment away (a segment changed, missing or extra; case
        ignored), ranked by ``difflib``'s similarity ratio (at least 0.6); ``name`` itself is never one.
        Costs a few look-ups, whatever the number of declared topics."""
        if type(n) is not int or n < 1:
            raise ValueError(f"n must be a positive int, not {n!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if len(name) > MAX_NAME_LENGTH:
            return []  # not a name: nothing declared is near it
        index = self._near
        if index is None:
            index = self._near = _NearIndex(self._topics)
        return index.closest(name, n)

    # -- subscriptions -------------------------------------------------------------------------------

    def _subscription(
        self,
        client: str,
        patterns: tuple[str, ...],
        qos: QoS,
        detach: Callable[[Subscription[Any]], None],
        latest: bool,
        columns: bool = False,
    ) -> Subscription[Any]:
        """Make a subscription to ``patterns`` (distinct, checked names and patterns), route the matching
        topics to it, and queue their latest values if asked.
        ``columns``: a `ColumnSubscription` (for a socket subscriber), unless the overflow is ``latest``.
        Everything that can fail happens before anything is changed: a refused subscription leaves
        nothing behind."""
        topics = self._topics
        wild = tuple(p for p in patterns if is_pattern(p))
        exact = [p for p in patterns if not is_pattern(p)]
        matched = [topics[p] for p in exact if p in topics]
        if wild:
            have = set(exact)
            matched += [
                state
                for name, state in topics.items()
                if name not in have and any(matches(p, name) for p in wild)
            ]
        offsets: dict[str, int] = {}

        def pushed() -> int:
            return sum(topics[name].seq - offset for name, offset in offsets.items())

        kind = ColumnSubscription if columns and qos.overflow is not Overflow.LATEST else Subscription
        sub: Subscription[Any] = kind(
            client, patterns, qos.queue_size, qos.overflow, detach, pushed, self._parked
        )
        self._subscriptions[sub] = None
        self._offsets[sub] = offsets
        self._since[sub] = self.clock()
        if wild:
            self._wildcard[sub] = wild
        for name in exact:
            self._exact.setdefault(name, {})[sub] = None
        for state in matched:
            offsets[state.name] = state.seq
            if latest and state.latest is not None:
                sub.push(state.latest)
                offsets[state.name] -= 1  # one more sample pushed than the sequence numbers say
            state.add(sub)
        return sub

    def _detach(self, sub: Subscription[Any]) -> None:
        del self._subscriptions[sub]
        offsets = self._offsets.pop(sub)
        del self._since[sub]
        self._parked.discard(sub)
        self._wildcard.pop(sub, None)
        for pattern in sub.patterns:
            exact = self._exact.get(pattern)
            if exact is not None:
                del exact[sub]
                if not exact:
                    del self._exact[pattern]
        topics = self._topics
        for name in offsets:
            state = topics.get(name)
            if state is not None:
                state.remove(sub)

    def statistics(self) -> BusStatistics:
        """Per-topic publish counts and per-subscription queue figures (drops included)."""
        return BusStatistics(
            topics=tuple(
                TopicStatistics(
                    name=n,
                    type=s.topic.type.__qualname__,
                    published=s.seq,
                    subscribers=len(s.subs),
                    latest_bus_time=None if s.latest is None else s.latest.bus_time,
                )
                for n, s in sorted(self._topics.items())
            ),
            subscriptions=tuple(s.statistics() for s in self._subscriptions),
            methods={name: server.owner for name, server in sorted(self._servers.items())},
        )


class _Call:
    """One request in flight between a caller and a server."""

    __slots__ = ("arg", "caller", "done", "error", "result", "scope")

    def __init__(self, arg: Any, caller: str) -> None:
        self.arg = arg
        self.caller = caller
        self.done = trio.Event()
        self.result: Any = None
        self.error: Exception | None = None
        self.scope: trio.CancelScope | None = None

    def finish(self, result: Any = None, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.result = result
            self.error = error
            self.done.set()


@attrs.frozen
class _Server:
    method: Method[Any, Any]
    owner: str
    send: trio.MemorySendChannel[_Call]


def _response_problem(mdef: Method[Any, Any], result: Any) -> str | None:
    """What is wrong with a handler's ``result`` for the method's response type, or None."""
    if mdef.response is not object and not isinstance(result, mdef.response):
        return f"handler returned {type(result).__name__}, expected {mdef.response.__qualname__}"
    return None


class _RequestRefused(ValueRefusedError):
    """Raised by a handler that stands for a server in another process when that server refused the
    request (not of its method's request type): the caller gets it as the `ValueRefusedError` it is,
    not as a `RemoteError` of the handler."""


_BLOCK_HINT: Final = (
    "a subscription with overflow 'block' makes publishers that wait wait for it, a right of its own "
    "(Permissions.block); use 'drop_oldest' or 'latest'"
)


class BusClient(_ClientBase):
    """One client's handle on a `Bus` in this process: a `BusHandle`. Every operation is checked against
    the client's permissions.

    ``publish_nowait`` is synchronous, never waits and never fails because of another client's queue: it
    is the fast path. ``await publish`` is a checkpoint and waits for room in ``block`` queues (whose
    clients were granted ``block``); see `Overflow.BLOCK`.
    """

    def __init__(self, bus: Bus, name: str, permissions: Permissions) -> None:
        self.bus = bus
        self.name = name
        self.permissions = permissions
        self._publishers = {}
        self._block_publishers = {}
        self._subscriptions: dict[Subscription[Any], None] = {}
        #: Names of the topics this client declared or publishes: released (unless published) on close.
        self._declared: set[str] = set()
        self._closed = False
        #: Where refusals are logged (a socket connection puts one here that adds the peer's uid and pid).
        self._log: Any = _log.bind(client=name)

    def _require(self, action: Action, name: str, hint: str = "") -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"bus client {self.name!r} is closed")
        if not self.permissions.allows(action, name):
            self._log.warning("permission denied", action=action.value, name=shown(name))
            raise PermissionDeniedError(self.name, action.value, name, hint)

    def declare(self, topic: Topic[T]) -> Topic[T]:
        """Declare a topic on the bus (see `Bus.declare`). Needs the right to publish it; released when
        this client closes if nothing was published on it by then."""
        self._require(Action.PUBLISH, topic.name)
        self._hold(topic)
        return topic

    def _hold(self, topic: Topic[Any]) -> _TopicState:
        state = self.bus._declare(topic, self, self.name)
        self._declared.add(topic.name)
        return state

    def _known(self, topic: Topic[Any]) -> _TopicState | None:
        """The state of a topic this client reads through a `Topic` object: declared by this client if it
        may publish it; else the existing declaration, which must agree with it (`TopicError`); else
        None (not declared yet: a reader does not declare)."""
        if self.permissions.allows(Action.PUBLISH, topic.name):
            return self._hold(topic)
        state = self.bus._topics.get(topic.name)
        if state is not None and state.topic is not topic:
            state.topic._check_redeclaration(topic, state.declarer)
        return state

    def _read_state(self, topic: Topic[Any] | str) -> _TopicState | None:
        """The state `get` and `is_stale` read (the subscribe permission checked first)."""
        name = topic if isinstance(topic, str) else topic.name
        self._require(Action.SUBSCRIBE, name)
        if isinstance(topic, str):
            state = self.bus._topics.get(topic)
            if state is None:
                raise UnknownTopicError(topic)
            return state
        return self._known(topic)

    # -- the hooks of _ClientBase ---------------------------------------------------------------------

    def _make_publisher(self, topic: Topic[Any] | str, name: str, block: bool) -> Publisher[Any]:
        if isinstance(topic, str):
            state = self.bus._topics.get(name)
            if state is None:
                raise UnknownTopicError(name)
            state.holders.add(self)
            self._declared.add(name)
        else:
            state = self._hold(topic)
        return (_BlockingPublisher if block else Publisher)(self, state)

    def _subscribe(
        self,
        topics: Sequence[Topic[Any] | str],
        queue_size: int | None,
        overflow: Overflow | str | None,
        latest: bool,
        columns: bool = False,
        check_qos: Callable[[QoS], None] | None = None,
    ) -> Subscription[Any]:
        """`subscribe`; ``columns`` for a socket subscriber; ``check_qos`` may refuse the queue asked for
        (it raises) before anything is made."""
        patterns, qos = _subscribed(topics, self._declared_qos)
        for pattern in patterns:
            self._require(Action.SUBSCRIBE, pattern)
        qos = qos._override(queue_size, overflow)
        if qos.overflow is Overflow.BLOCK:
            for pattern in patterns:
                self._require(Action.BLOCK, pattern, _BLOCK_HINT)
        if check_qos is not None:
            check_qos(qos)
        for topic in topics:
            if isinstance(topic, Topic):
                self._known(topic)
        sub = self.bus._subscription(self.name, patterns, qos, self._detach, latest, columns)
        self._subscriptions[sub] = None
        return sub

    def _declared_qos(self, name: str) -> QoS | None:
        state = self.bus._topics.get(name)
        return None if state is None else state.topic.qos

    def _detach(self, sub: Subscription[Any]) -> None:
        self.bus._detach(sub)
        del self._subscriptions[sub]

    async def _get(self, topic: Topic[Any] | str, allow_stale: bool) -> Sample[Any] | None:
        await trio.lowlevel.checkpoint()
        return self._get_now(topic, allow_stale)

    def _get_now(self, topic: Topic[Any] | str, allow_stale: bool = False) -> Sample[Any] | None:
        """`get` without the checkpoint (for the broker, which answers a GET at once)."""
        state = self._read_state(topic)
        if state is None:
            return None
        sample = state.latest
        if sample is None or allow_stale:
            return sample
        max_age = state.topic.max_age
        if max_age is not None:
            age = self.bus.clock() - sample.bus_time
            if age > max_age:
                raise StaleValueError(state.name, age, max_age)
        return sample

    async def _is_stale(self, topic: Topic[Any] | str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._is_stale_now(topic)

    def _is_stale_now(self, topic: Topic[Any] | str) -> bool:
        """`is_stale` without the checkpoint (for the broker)."""
        state = self._read_state(topic)
        if state is None:
            return True
        sample, max_age = state.latest, state.topic.max_age
        if sample is None:
            return True
        return max_age is not None and self.bus.clock() - sample.bus_time > max_age

    # -- methods -------------------------------------------------------------------------------------

    async def serve(
        self,
        method: Method[Req, Resp] | str,
        handler: Callable[[Req], Awaitable[Resp]],
        *,
        concurrency: int = 16,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``method`` until cancelled: each call runs ``await handler(arg)`` in a task of its own.

        Start it with ``await nursery.start(ctx.bus.serve, LOCK, self.lock)``: it is registered once
        started. At most ``concurrency`` calls wait in line; further callers wait for room (within their
        timeout). An exception from the handler reaches the caller as `RemoteError`.
        """
        mdef: Method[Any, Any] = _method_of(method)
        self._require(Action.SERVE, mdef.name)
        register_type(mdef.request)  # so that remote callers can be told their schemas
        register_type(mdef.response)
        existing = self.bus._servers.get(mdef.name)
        if existing is not None:
            raise MethodAlreadyServedError(mdef.name, existing.owner)
        send, receive = trio.open_memory_channel[_Call](concurrency)
        server = _Server(mdef, self.name, send)
        self.bus._servers[mdef.name] = server
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for call in receive:
                    nursery.start_soon(self._handle, mdef, handler, call)
        finally:
            if self.bus._servers.get(mdef.name) is server:
                del self.bus._servers[mdef.name]
            send.close()
            while True:
                try:
                    pending = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                pending.finish(error=NoSuchMethodError(mdef.name))
            receive.close()

    async def _handle(
        self, mdef: Method[Any, Any], handler: Callable[[Any], Awaitable[Any]], call: _Call
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                call.scope = scope
                try:
                    result = await handler(call.arg)
                except _RequestRefused as refused:  # by the server in another process this stands for
                    call.finish(error=ValueRefusedError(refused.topic, refused.rule, refused.value))
                    return
                except Exception as exc:
                    _log.info("method handler raised", method=mdef.name, caller=call.caller, error=repr(exc))
                    call.finish(error=RemoteError(mdef.name, type(exc).__name__, str(exc)))
                    return
                problem = _response_problem(mdef, result)
                if problem is not None:
                    call.finish(error=RemoteError(mdef.name, "TypeError", problem))
                else:
                    call.finish(result)
        finally:
            # Abandoned by its caller (who has its answer already), or the server is stopping.
            call.finish(error=RemoteError(mdef.name, "Cancelled", "the server stopped before replying"))

    async def _call(self, mdef: Method[Any, Any], arg: Any, timeout: float) -> Any:
        server = self.bus._servers.get(mdef.name)
        if server is None:
            await trio.lowlevel.checkpoint()
            raise NoSuchMethodError(mdef.name)
        if server.method is not mdef:
            _check_request(server.method, arg)
        call = _Call(arg, self.name)
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf):
            try:
                await server.send.send(call)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise NoSuchMethodError(mdef.name) from None
            await call.done.wait()
        if not call.done.is_set():
            if call.scope is not None:
                call.scope.cancel()
            call.finish(error=CallTimeoutError(mdef.name, timeout))
        if call.error is not None:
            raise call.error
        return call.result

    # -- life cycle ----------------------------------------------------------------------------------

    def statistics(self) -> list[SubscriptionStatistics]:
        """Statistics of this client's subscriptions."""
        return [s.statistics() for s in self._subscriptions]

    @property
    def closed(self) -> bool:
        return self._closed

    async def flush(self) -> None:
        """A checkpoint: in-process, what this client published has reached the bus already."""
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close every subscription of this client; further operations raise `trio.ClosedResourceError`.
        The client's declarations of topics nothing was published on are released."""
        for sub in list(self._subscriptions):
            sub.close()
        self._closed = True
        self._publishers.clear()
        self._block_publishers.clear()
        self.bus._release(self, self._declared)
        self._declared.clear()

    def __repr__(self) -> str:
        return f"<BusClient {self.name!r}>"


class Publisher(Generic[T]):
    """A declared publisher of one topic, made by `BusClient.publisher`: the fast path of publishing."""

    __slots__ = (
        "_client",
        "_clock",
        "_high",
        "_low",
        "_name",
        "_offset",
        "_parked",
        "_state",
        "_type",
        "topic",
    )

    def __init__(self, client: BusClient, state: _TopicState) -> None:
        self._client = client
        self._name = client.name
        self._state = state
        self._clock = client.bus.clock
        #: trio's clock's offset when the bus reads trio's default clock (None: call ``_clock``).
        self._offset = _system_clock_offset(self._clock)
        #: A value of this type in ``[_low, _high]`` passes the topic's rules as it is (`_fast_rules`).
        self._type, self._low, self._high = _fast_rules(state.topic)
        self._parked = client.bus._parked
        self.topic: Topic[T] = state.topic

    def publish_nowait(self, value: T | NotAvailable, *, timestamp: float | None = None) -> None:
        """See `BusClient.publish_nowait`."""
        # The hot path: no look-up, no permission check (done once), the rules compiled into one function,
        # the sample built once and shared by every subscriber, each push a deque's own C append (a
        # `block` queue's checks its room first: a full one leaves the sample out and counts it).
        # The value is checked inline when it is a number of the topic's type within its range (what
        # the compiled rules return as it is), and the time read inline from trio's default clock.
        if self._client._closed:
            raise trio.ClosedResourceError(f"bus client {self._name!r} is closed")
        state = self._state
        if type(value) is not self._type or not self._low <= value <= self._high:  # type: ignore[operator]
            value = state.check(value)
        pushes = state.pushes
        if pushes is None:  # the subscriptions changed since the last publish
            pushes = state.rebuild()
        seq = state.seq + 1
        state.seq = seq
        offset = self._offset
        sample: Sample[T] = _new_sample(
            Sample,
            (
                state.name,
                value,
                _now() if timestamp is None else timestamp,
                self._clock() if offset is None else offset + _perf_counter(),
                self._name,
                seq,
            ),
        )
        state.latest = sample
        for push in pushes:
            push(sample)
        parked = self._parked
        if parked and not parked.isdisjoint(state.routed):
            for sub in state.routed:
                sub.wake()

    def _publish_run(self, values: list[Any], timestamps: list[float], wait: bool = True) -> int:
        """Publish a run of values (``timestamps[i]`` the source time of ``values[i]``), as a PUBLISH from
        another process brings them: the rules checked for the whole run, the run queued whole for socket
        subscribers (`ColumnSubscription`) and as samples built in C for the others. Returns how many were
        published from the start of the run: all; or, if ``wait`` (the remote publisher waits, as ``await
        publish`` does), fewer when the queue of a ``block`` subscriber filled up (wait for room, then
        publish the rest). Without ``wait``, a full ``block`` queue takes what fits and leaves the rest out,
        as for ``publish_nowait``. Raises `ValueRefusedError` if a value breaks the topic's rules: then
        nothing was published (publish them one by one to keep the others)."""
        if self._client._closed:
            raise trio.ClosedResourceError(f"bus client {self._name!r} is closed")
        state = self._state
        values = state.topic._check_many(values)
        n = len(values)
        if state.pushes is None:
            state.rebuild()
        if wait and state.blocking:
            room = min((sub.room for sub in state.blocking if not sub.closed), default=n)  # as _wait_for_room
            if room < n:
                if room <= 0:
                    return 0
                n, values, timestamps = room, _sliced(values, 0, room), timestamps[:room]
        seq = state.seq
        state.seq = seq + n
        run = SampleRun(state.name, values, timestamps, self._clock(), self._name, seq + 1)
        for column_sub in state.column_subs:  # socket subscribers: the run as it is, no samples built
            column_sub.push_columns(run)
        if state.sample_subs:
            samples = run.samples()
            state.latest = samples[-1]
            for sub in state.sample_subs:
                sub.push_run(samples)
        else:
            state.latest = _new_sample(
                Sample, (state.name, values[-1], timestamps[-1], run.bus_time, self._name, seq + n)
            )
        parked = self._parked
        if parked and not parked.isdisjoint(state.routed):
            for sub in state.routed:
                sub.wake()
        return n

    async def publish(self, value: T | NotAvailable, *, timestamp: float | None = None) -> None:
        """See `BusClient.publish`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        value = self._state.check(value)
        waited = await self._wait_for_room()
        Publisher.publish_nowait(self, value, timestamp=timestamp)  # no await since the check: it fits
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _full(self) -> Subscription[Any] | None:
        """A ``block`` subscriber's full queue, if there is one."""
        state = self._state
        if state.pushes is None:
            state.rebuild()
        for sub in state.blocking:
            if len(sub._queue) + sub._extra >= sub.capacity and not sub._closed:  # sub.full, inline
                return sub
        return None

    async def _wait_for_room(self) -> bool:
        """Wait until no ``block`` subscriber's queue is full; True if that meant waiting."""
        waited = False
        while True:
            full = self._full()
            if full is None:
                return waited
            waited = True
            await full._wait_for_space()

    def __repr__(self) -> str:
        return f"<Publisher {self.topic.name!r} of {self._name!r}>"


class _BlockingPublisher(Publisher[T]):
    """A publisher made with ``block=True``: its ``publish_nowait`` raises `trio.WouldBlock` (nothing
    delivered) while a ``block`` subscriber's queue is full."""

    __slots__ = ()

    def publish_nowait(self, value: T | NotAvailable, *, timestamp: float | None = None) -> None:
        """See `BusClient.publisher`: raises `trio.WouldBlock` while a ``block`` queue is full."""
        if self._client._closed:
            raise trio.ClosedResourceError(f"bus client {self._name!r} is closed")
        state = self._state
        if state.pushes is None:  # the subscriptions changed since the last publish
            state.rebuild()
        for sub in state.blocking:  # `_full`, inline (a call per sample cost a tenth of bench/ipc.py)
            if len(sub._queue) + sub._extra >= sub.capacity and not sub._closed:
                state.check(value)  # a refused value is refused first, as ever
                raise trio.WouldBlock
        # Publisher.publish_nowait's body, with the pushes that need not check for room (there is room
        # in every block queue): a Python check per sample cost a quarter of bench/ipc.py's throughput.
        if type(value) is not self._type or not self._low <= value <= self._high:  # type: ignore[operator]
            value = state.check(value)
        seq = state.seq + 1
        state.seq = seq
        offset = self._offset
        sample: Sample[T] = _new_sample(
            Sample,
            (
                state.name,
                value,
                _now() if timestamp is None else timestamp,
                self._clock() if offset is None else offset + _perf_counter(),
                self._name,
                seq,
            ),
        )
        state.latest = sample
        for push in state.fast_pushes:
            push(sample)
        parked = self._parked
        if parked and not parked.isdisjoint(state.routed):
            for sub in state.routed:
                sub.wake()

    def __repr__(self) -> str:
        return f"<Publisher {self.topic.name!r} of {self._name!r} (block)>"


class BrokerSide:
    """The socket broker's side of one connection's `BusClient`: what ``bus/_broker.py`` needs of the
    in-process bus beyond the `BusHandle` API, and all it uses of its internals.

    Internal, not public API (not exported from ``bus``): the one place the two modules meet, so that the
    broker reaches into no private name of the bus. ``client`` is the connection's `BusClient` (the broker
    uses its public API for everything else: declare, call, serve, close); ``log`` is where the client's
    refusals go (the connection's logger, which adds the peer's uid and pid).
    """

    __slots__ = ("client",)

    def __init__(self, bus: Bus, name: str, permissions: Permissions, log: Any) -> None:
        self.client = bus.client(name, permissions)
        self.client._log = log

    async def publish_run(self, topic: str, values: list[Any], timestamps: list[float], wait: bool) -> None:
        """Publish a PUBLISH's run: all at once while the subscribers' queues take it. With ``wait`` (the
        remote publisher awaited, or was made with ``block=True``) it waits for room in ``block`` queues
        as an in-process ``await publish`` would, reading nothing more from this connection meanwhile:
        the back-pressure reaches the remote publisher. Without, it never waits: a full ``block`` queue
        does not get what does not fit, as with ``publish_nowait``. If a value is refused, the others are
        still published, one by one, and the first refusal is reported."""
        publisher: Publisher[Any] = self.client._publisher(topic, False)
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

    def subscribe(
        self,
        patterns: Sequence[str],
        queue_size: int | None,
        overflow: str | None,
        latest: bool,
        check_qos: Callable[[QoS], None],
    ) -> Subscription[Any]:
        """A SUBSCRIBE's subscription: a `ColumnSubscription` (runs queued as they are published, for the
        connection's writer); ``check_qos`` may refuse the queue asked for (it raises) before anything is
        made."""
        return self.client._subscribe(
            patterns, queue_size, overflow, latest, columns=True, check_qos=check_qos
        )

    def get_now(self, topic: str, allow_stale: bool) -> Sample[Any] | None:
        """A GET's answer, at once (`BusHandle.get` without its checkpoint)."""
        return self.client._get_now(topic, allow_stale)

    def is_stale_now(self, topic: str) -> bool:
        """A STALE's answer, at once (`BusHandle.is_stale` without its checkpoint)."""
        return self.client._is_stale_now(topic)

    @staticmethod
    def request_refused(topic: str, rule: str, value: Any) -> ValueRefusedError:
        """What the broker's handler for a method served by a remote client raises when that client
        refused the request: the caller gets it as the `ValueRefusedError` it is, not as a `RemoteError`
        of the handler."""
        return _RequestRefused(topic, rule, value)
