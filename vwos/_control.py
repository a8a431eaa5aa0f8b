"""The control plane: the running supervisor's state and operations, served as typed methods on the bus.

The control interface *is* the bus: `ControlPlane` serves ``Vwos.Control.Read.*`` (status, topics, logs,
value conversion) and ``Vwos.Control.Operate.*`` (start, stop, restart a service) as bus methods, so a
client's rights are ordinary bus permissions: reading is ``call`` on ``Vwos.Control.Read.*`` (plus
``subscribe``, for ``vwos bus echo``/``hz``), operating is ``call`` on ``Vwos.Control.Operate.*``, and
publishing is the bus's own ``publish`` right. `CONTROL_READ`, `CONTROL_OPERATE` and `CONTROL_ADMIN` are
the three permission sets the control socket hands out (see `default_authorize`). See ``docs/control.md``.

Every request and reply is a frozen attrs class registered with `bus.default_codec`, so it crosses the
socket transport unchanged.
"""

from __future__ import annotations

import collections
import enum
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final, Literal

import attrs
import structlog
import trio

from bus import (
    Bus,
    BusClient,
    Method,
    NoSuchMethodError,
    Permissions,
    Sample,
    Topic,
    UnknownTopicError,
    default_codec,
)
from vwos._display import value_text
from vwos._jsonvalue import JsonValueError, structure_json
from vwos._logging import configured_level
from vwos._policy import State
from vwos._supervisor import _SETTLED, Supervisor

__all__ = [
    "CONTROL_ADMIN",
    "CONTROL_OPERATE",
    "CONTROL_READ",
    "CONVERT",
    "LOGS",
    "RESTART",
    "START",
    "STATUS",
    "STOP",
    "TOPICS",
    "ControlError",
    "ControlPlane",
    "ConvertReply",
    "ConvertRequest",
    "LogBuffer",
    "LogLine",
    "LogsReply",
    "LogsRequest",
    "OperateReply",
    "ServiceRecord",
    "ServiceRequest",
    "StatusReply",
    "TopicRecord",
    "TopicsReply",
    "TopicsRequest",
    "convert_json",
    "default_authorize",
]

_log = structlog.get_logger("vwos.control")

#: The bus client name the control plane serves under.
CONTROL_CLIENT = "vwos.control"
READ_PREFIX: Final = "Vwos.Control.Read"
OPERATE_PREFIX: Final = "Vwos.Control.Operate"


# == types =================================================================================================


@default_codec.register(name="vwos.control.ServiceRecord")
@attrs.frozen
class ServiceRecord:
    """One service in the status table. ``state``/``last_exit`` are the values of `State`/`Exit`;
    ``incarnation`` numbers the service's runs (0 before the first), so a new run has a higher number."""

    name: str
    state: str
    restarts: int
    uptime: float | None
    last_exit: str | None
    last_error: str | None
    incarnation: int
    #: Why it is in its state, when that needs saying: what a ``waiting`` one waits for, why a ``failed``
    #: one failed (e.g. ``too many restarts: 4 restarts in 2.1 s exceeds intensity 3 per 5.0 s``).
    reason: str | None = None
    #: The group it belongs to; None for the root (and for a group's own record, its parent group).
    group: str | None = None
    critical: bool = False
    #: Seconds until a failed unit is started again on its own; None: only by the operator.
    revive_in: float | None = None
    #: ``"service"`` or ``"group"``.
    kind: str = "service"


@default_codec.register(name="vwos.control.StatusReply")
@attrs.frozen
class StatusReply:
    """``Vwos.Control.Read.Status``: every service in start order, how long the supervisor has run, and the
    supervision groups (``kind = "group"`` records; their ``incarnation`` is the sum of their services')."""

    services: tuple[ServiceRecord, ...]
    supervisor_uptime: float
    groups: tuple[ServiceRecord, ...] = ()


@default_codec.register(name="vwos.control.TopicsRequest")
@attrs.frozen
class TopicsRequest:
    """``Vwos.Control.Read.Topics``: topics whose names match ``pattern``."""

    pattern: str = "**"


@default_codec.register(name="vwos.control.TopicRecord")
@attrs.frozen
class TopicRecord:
    """One topic: its declaration, traffic and latest value.

    ``rate`` is samples per second over the control plane's sliding window; ``latest`` a short ``repr`` of
    the latest value (None before the first sample); ``age`` seconds of bus time since it; ``stale`` is
    True once the age exceeds the topic's ``max_age``.
    """

    name: str
    type: str
    unit: str | None
    description: str
    published: int
    subscribers: int
    rate: float
    latest: str | None
    age: float | None
    max_age: float | None
    stale: bool


@default_codec.register(name="vwos.control.TopicsReply")
@attrs.frozen
class TopicsReply:
    topics: tuple[TopicRecord, ...]
    #: The span of the sliding window the rates were measured over (0 until two samples exist).
    window: float


@default_codec.register(name="vwos.control.LogsRequest")
@attrs.frozen
class LogsRequest:
    """``Vwos.Control.Read.Logs``: the last ``lines`` lines of ``service`` whose ``seq`` is above ``after``.

    To follow a log, call again with ``after`` set to the reply's ``cursor``.
    """

    service: str
    lines: int = 50
    after: int = 0


@default_codec.register(name="vwos.control.LogLine")
@attrs.frozen
class LogLine:
    """One log line of a service: a sequence number (over all services), wall-clock time, level, text."""

    seq: int
    timestamp: float
    level: str
    text: str


@default_codec.register(name="vwos.control.LogsReply")
@attrs.frozen
class LogsReply:
    lines: tuple[LogLine, ...]
    #: Pass as ``after`` to get only newer lines.
    cursor: int
    #: Lines newer than ``after`` that were no longer in the ring buffer (or beyond ``lines``).
    missed: int
    #: The supervisor's log level: lines below it were never logged, so never kept (None: not known).
    level: str | None = None


@default_codec.register(name="vwos.control.ServiceRequest")
@attrs.frozen
class ServiceRequest:
    """``Vwos.Control.Operate.Start/Stop/Restart``: which service, and how long to wait for it to settle."""

    service: str
    wait: float = 10.0


@default_codec.register(name="vwos.control.OperateReply")
@attrs.frozen
class OperateReply:
    """What the operation led to: the service's status once it settled (or once ``wait`` ran out)."""

    action: str
    service: ServiceRecord
    settled: bool


@default_codec.register(name="vwos.control.ConvertRequest")
@attrs.frozen
class ConvertRequest:
    """``Vwos.Control.Read.Convert``: turn JSON text into a value of a topic's type or a method's request
    type (``kind`` ``"topic"`` or ``"method"``), checked against the topic's rules.

    Text that is not JSON is taken as a string for a ``str`` or enum type (so ``vwos bus pub Gear D`` works).
    """

    name: str
    text: str
    kind: str = "topic"


@default_codec.register(name="vwos.control.ConvertReply")
@attrs.frozen
class ConvertReply:
    value: Any
    type: str


class ControlError(Exception):
    """A control request that cannot be carried out (no such service, no such topic, a bad value)."""


STATUS: Final = Method(f"{READ_PREFIX}.Status", object, StatusReply, "the supervisor's status table")
TOPICS: Final = Method(f"{READ_PREFIX}.Topics", TopicsRequest, TopicsReply, "topics with rates and values")
LOGS: Final = Method(f"{READ_PREFIX}.Logs", LogsRequest, LogsReply, "recent log lines of a service")
CONVERT: Final = Method(f"{READ_PREFIX}.Convert", ConvertRequest, ConvertReply, "JSON to a typed value")
START: Final = Method(f"{OPERATE_PREFIX}.Start", ServiceRequest, OperateReply, "start a stopped service")
STOP: Final = Method(
    f"{OPERATE_PREFIX}.Stop", ServiceRequest, OperateReply, "stop a service, keep it stopped"
)
RESTART: Final = Method(f"{OPERATE_PREFIX}.Restart", ServiceRequest, OperateReply, "stop and start a service")


# == permissions ===========================================================================================

#: Read the supervisor's state: status, topics, logs; subscribe to (echo, measure) any topic.
CONTROL_READ: Final = Permissions(subscribe=("**",), call=(f"{READ_PREFIX}.*",))
#: Reading, and starting, stopping and restarting services. Not publishing, not calling other methods.
CONTROL_OPERATE: Final = Permissions(subscribe=("**",), call=(f"{READ_PREFIX}.*", f"{OPERATE_PREFIX}.*"))
#: Everything: publish any topic, call any method (actuation included), serve.
CONTROL_ADMIN: Final = Permissions.ALL


def _peer_uid(credentials: Any) -> int | None:
    uid = getattr(credentials, "uid", None)
    if uid is None and isinstance(credentials, tuple) and len(credentials) == 3:
        uid = credentials[1]  # SO_PEERCRED's (pid, uid, gid)
    return uid if type(uid) is int else None


def _uids(argument: str, value: Iterable[int]) -> frozenset[int]:
    if isinstance(value, str | bytes):
        raise TypeError(f"default_authorize: {argument} must be uids (integers), not {value!r}")
    try:
        uids = frozenset(value)
    except TypeError:
        raise TypeError(f"default_authorize: {argument} must be an iterable of uids, not {value!r}") from None
    wrong = sorted(repr(uid) for uid in uids if type(uid) is not int or uid < 0)
    if wrong:
        raise TypeError(
            f"default_authorize: {argument} must hold uids (integers >= 0), not {', '.join(wrong)}"
        )
    return uids


def default_authorize(
    admin_uids: Iterable[int] | None = None,
    operate_uids: Iterable[int] = (),
    read_uids: Iterable[int] | Literal["any"] = "any",
) -> Callable[[Any, str], Permissions | None]:
    """An ``authorize(peer_credentials, client_name)`` for the control socket, by the peer's uid.

    ``admin_uids`` get `CONTROL_ADMIN` (None, the default: root and the user running the supervisor, as
    ``os.getuid()`` says when this is called), ``operate_uids`` `CONTROL_OPERATE`, ``read_uids``
    `CONTROL_READ` (``"any"``: every peer that can open the socket, whose file mode is then the gate); a uid
    in several gets the most; anyone else is refused (None). The credentials are an object with a ``uid``
    attribute, or SO_PEERCRED's ``(pid, uid, gid)``. Wrong arguments (a string, a negative or non-integer
    uid) raise TypeError naming the argument.

    The `Supervisor` asks it only about peers that are no process of an isolated service and were not
    started under the supervisor (see `Supervisor.authorize`): being the same uid gives a service's own
    subprocess nothing.
    """
    admins = _uids("admin_uids", (0, os.getuid()) if admin_uids is None else admin_uids)
    operators = _uids("operate_uids", operate_uids)
    readers: frozenset[int] | None
    if isinstance(read_uids, str):
        if read_uids != "any":
            raise TypeError(f'default_authorize: read_uids must be uids or "any", not {read_uids!r}')
        readers = None
    else:
        readers = _uids("read_uids", read_uids)

    def authorize(peer_credentials: Any, client_name: str) -> Permissions | None:
        uid = _peer_uid(peer_credentials)
        if uid is None:
            return None
        if uid in admins:
            return CONTROL_ADMIN
        if uid in operators:
            return CONTROL_OPERATE
        if readers is None or uid in readers:
            return CONTROL_READ
        return None

    return authorize


# == logs ==================================================================================================

_SKIP_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "service",
        "logger",
        "_record",
        "_from_structlog",
        "exception",
        "exc_info",
    }
)


class LogBuffer:
    """A bounded ring buffer of log lines per service, fed by a structlog processor.

    Put `processor` in structlog's chain after ``add_log_level`` and ``TimeStamper`` and before the
    renderer: every event that carries ``service=NAME`` is kept (the last ``capacity`` per service), and
    passed on unchanged. Lines are numbered per service from 1; the number is the cursor a follower
    passes back as ``after``.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity!r}")
        self.capacity = capacity
        self._lines: dict[str, collections.deque[LogLine]] = {}
        self._counts: dict[str, int] = {}

    def processor(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor: records lines that carry ``service``."""
        service = event_dict.get("service")
        if isinstance(service, str):
            self.add(service, str(event_dict.get("level", method_name)), _render(event_dict))
        return event_dict

    def add(self, service: str, level: str, text: str, timestamp: float | None = None) -> LogLine:
        """Keep one line of ``service``."""
        seq = self._counts[service] = self._counts.get(service, 0) + 1
        line = LogLine(seq, time.time() if timestamp is None else timestamp, level, text)
        lines = self._lines.get(service)
        if lines is None:
            lines = self._lines[service] = collections.deque(maxlen=self.capacity)
        lines.append(line)
        return line

    def read(self, service: str, *, lines: int = 50, after: int = 0) -> LogsReply:
        """The last ``lines`` lines of ``service`` numbered above ``after``, and the cursor to read on from.

        ``missed`` counts the lines above ``after`` not returned: beyond ``lines``, or gone from the ring.
        """
        kept = self._lines.get(service, collections.deque())
        count = self._counts.get(service, 0)
        newer = [line for line in kept if line.seq > after]
        chosen = newer[-lines:] if lines > 0 else []
        missed = max(0, count - max(after, 0) - len(chosen))
        return LogsReply(tuple(chosen), max(count, after), missed)


def _render(event_dict: Mapping[str, Any]) -> str:
    """One log line as `vwos logs` shows it: the event, its fields, and a traceback on the lines below."""
    text = str(event_dict.get("event", ""))
    extra = " ".join(f"{k}={v!r}" for k, v in event_dict.items() if k not in _SKIP_KEYS)
    line = f"{text} {extra}" if extra else text
    trace = event_dict.get("exception")
    if trace is None:  # a chain that renders exceptions after us: render it here the same way
        info = event_dict.get("exc_info")
        if isinstance(info, BaseException):
            trace = "".join(traceback.format_exception(info))
    return f"{line}\n{str(trace).rstrip()}" if isinstance(trace, str) and trace else line


# == value conversion ======================================================================================


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__qualname__
    return str(tp).replace("typing.", "")


def convert_json(tp: Any, data: Any, where: str = "value") -> Any:
    """Convert decoded JSON ``data`` to the type ``tp``: scalars, enums (by name or value), ``bytes`` (from
    a hex string), attrs classes (from an object with their field names), ``list``/``tuple``/``dict``,
    unions and Optional (see `vwos._jsonvalue`). Raises `ControlError` saying where and what was expected.
    """
    try:
        return structure_json(tp, data)
    except JsonValueError as exc:
        raise ControlError(f"{where}{exc.path}: {exc.message}") from exc


def _parse_text(tp: Any, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ControlError(
            f"the value is nested too deeply to be read as JSON ({len(text)} characters)"
        ) from None
    except json.JSONDecodeError as exc:
        if tp is str or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
            return text  # a bare word for a str or enum topic
        raise ControlError(f"the value {text!r} is not JSON: {exc}") from None


# == the control plane =====================================================================================


def _latest_text(sample: Sample[Any]) -> str:
    """A latest value as ``bus list``/``top`` show it: short, and "not available (why)" for no value."""
    return value_text(sample.value)


def _record(row: Any, now: float) -> ServiceRecord:
    return ServiceRecord(
        name=row.name,
        state=row.state.value,
        restarts=row.restarts,
        uptime=row.uptime,
        last_exit=None if row.last_exit is None else row.last_exit.value,
        last_error=row.last_error,
        incarnation=row.incarnation,
        reason=row.reason,
        group=row.group,
        critical=row.critical,
        revive_in=None if row.revive_at is None else max(0.0, row.revive_at - now),
    )


def _group_record(row: Any, services: Mapping[str, ServiceRecord], now: float) -> ServiceRecord:
    return ServiceRecord(
        name=row.name,
        state=row.state.value,
        restarts=row.restarts,
        uptime=None,
        last_exit=None,
        last_error=None,
        incarnation=sum(services[name].incarnation for name in row.services if name in services),
        reason=row.reason,
        group=row.group,
        critical=row.critical,
        revive_in=None if row.revive_at is None else max(0.0, row.revive_at - now),
        kind="group",
    )


_SETTLED_STATES = frozenset(state.value for state in _SETTLED)
#: Where a stop ends: stopped, or (for a service that had ended already) exited or failed.
_STOP_SETTLED_STATES = _SETTLED_STATES - {State.RUNNING.value}
#: A start of a service in these states starts no new run: it is up, or on its way up.
_UP_STATES = frozenset({State.STARTING.value, State.RUNNING.value})


def _operation_done(action: str, before: ServiceRecord, row: ServiceRecord) -> bool:
    """Whether ``action``, asked for when the service was ``before``, has settled in ``row``.

    A stop is done once the service is no longer running or stopping. A start or restart is done once a
    run started after the request (a higher ``incarnation``; for a start, the run already up or starting
    will do) has settled: it is running, or it has already ended.
    """
    if action == "stop":
        return row.state in _STOP_SETTLED_STATES
    new_run = row.incarnation > before.incarnation or (action == "start" and before.state in _UP_STATES)
    return new_run and row.state in _SETTLED_STATES


class ControlPlane:
    """Serves the control methods of a running `Supervisor` on its bus.

    ``await nursery.start(ControlPlane(supervisor, logs=buffer).run)`` once the supervisor has its bus
    (pass the same `Bus` to both; ``run`` waits for the supervisor to have one). Rates are measured by
    sampling every topic's publish count every ``sample_interval`` seconds over a sliding ``window``.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        logs: LogBuffer | None = None,
        window: float = 5.0,
        sample_interval: float = 1.0,
        poll_interval: float = 0.05,
    ) -> None:
        if not (sample_interval > 0 and window >= sample_interval):
            raise ValueError("need sample_interval > 0 and window >= sample_interval")
        self.supervisor = supervisor
        self.logs = logs if logs is not None else LogBuffer()
        self.window = window
        self.sample_interval = sample_interval
        self.poll_interval = poll_interval
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(
            maxlen=math.ceil(window / sample_interval) + 1
        )
        self._started_at: float | None = None
        self._client: BusClient | None = None

    @property
    def bus(self) -> Bus:
        return self.supervisor.bus

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every control method, and sample the publish counts, until cancelled."""
        self._started_at = trio.current_time()
        client = self._client = self.bus.client(CONTROL_CLIENT, Permissions(serve=("Vwos.Control.**",)))
        handlers: list[tuple[Method[Any, Any], Callable[[Any], Any]]] = [
            (STATUS, self.status),
            (TOPICS, self.topics),
            (LOGS, self.read_logs),
            (CONVERT, self.convert),
            (START, self.start),
            (STOP, self.stop),
            (RESTART, self.restart),
        ]
        try:
            async with trio.open_nursery() as nursery:
                for method, handler in handlers:
                    await nursery.start(client.serve, method, handler)
                self._sample()
                nursery.start_soon(self._sampler)
                task_status.started()
        finally:
            client.close()

    async def _sampler(self) -> None:
        while True:
            await trio.sleep(self.sample_interval)
            self._sample()

    def _sample(self) -> None:
        counts = {t.name: t.published for t in self.bus.statistics().topics}
        self._samples.append((self.bus.clock(), counts))

    # -- read ----------------------------------------------------------------------------------------

    async def status(self, _: object = None) -> StatusReply:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        started = self._started_at if self._started_at is not None else now
        services = self._records(now)
        groups = tuple(_group_record(g, services, now) for g in self.supervisor.group_status())
        return StatusReply(tuple(services.values()), now - started, groups)

    def _records(self, now: float) -> dict[str, ServiceRecord]:
        return {row.name: _record(row, now) for row in self.supervisor.status()}

    def _rates(self, counts: Mapping[str, int], now: float) -> tuple[dict[str, float], float]:
        if not self._samples:
            return {}, 0.0
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return {}, 0.0
        return {name: (count - old.get(name, 0)) / span for name, count in counts.items()}, span

    async def topics(self, request: TopicsRequest) -> TopicsReply:
        await trio.lowlevel.checkpoint()
        bus = self.bus
        now = bus.clock()
        stats = {t.name: t for t in bus.statistics().topics}
        rates, span = self._rates({n: t.published for n, t in stats.items()}, now)
        latest = {s.topic: s for s in bus.latest(request.pattern)}
        records = []
        for topic in bus.topics(request.pattern):
            sample = latest.get(topic.name)
            age = None if sample is None else now - sample.bus_time
            stale = sample is None or (topic.max_age is not None and age is not None and age > topic.max_age)
            records.append(
                TopicRecord(
                    name=topic.name,
                    type=topic.type.__qualname__,
                    unit=topic.unit,
                    description=topic.description,
                    published=stats[topic.name].published,
                    subscribers=stats[topic.name].subscribers,
                    rate=rates.get(topic.name, 0.0),
                    latest=None if sample is None else _latest_text(sample),
                    age=age,
                    max_age=topic.max_age,
                    stale=stale,
                )
            )
        return TopicsReply(tuple(records), span)

    async def read_logs(self, request: LogsRequest) -> LogsReply:
        await trio.lowlevel.checkpoint()
        self._row(request.service)  # no such service: ControlError
        reply = self.logs.read(request.service, lines=request.lines, after=request.after)
        return attrs.evolve(reply, level=configured_level())

    async def convert(self, request: ConvertRequest) -> ConvertReply:
        await trio.lowlevel.checkpoint()
        if request.kind == "topic":
            try:
                topic: Topic[Any] = self.bus.topic(request.name)
            except UnknownTopicError:
                raise ControlError(f"{request.name}: no such topic is declared on the bus") from None
            tp: Any = topic.type
            value = convert_json(tp, _parse_text(tp, request.text), request.name)
            value = topic.check(value)  # ValueRefusedError names the rule
        elif request.kind == "method":
            tp = self._request_type(request.name)
            value = convert_json(tp, _parse_text(tp, request.text), request.name)
        else:
            raise ControlError(f"kind must be 'topic' or 'method', not {request.kind!r}")
        return ConvertReply(value, _type_name(tp))

    def _request_type(self, name: str) -> Any:
        try:
            return self.bus.method(name).request
        except NoSuchMethodError:
            raise ControlError(f"{name}: no such method is served on this bus") from None

    # -- operate -------------------------------------------------------------------------------------

    def _row(self, name: str) -> ServiceRecord:
        """The status of the service or group ``name``; `ControlError` naming them if there is none."""
        now = trio.current_time()
        services = self._records(now)
        if name in services:
            return services[name]
        groups = self.supervisor.group_status()
        for group in groups:
            if group.name == name:
                return _group_record(group, services, now)
        names = ", ".join([*services, *(g.name for g in groups)]) or "none"
        raise ControlError(f"no such service or group: {name!r} (there are: {names})")

    async def _operate(self, action: str, request: ServiceRequest) -> OperateReply:
        before = self._row(request.service)
        _log.info("control: operator request", action=action, service=request.service)
        getattr(self.supervisor, f"{action}_service")(request.service)
        row = before
        with trio.move_on_after(max(request.wait, 0.0)):
            while True:
                await trio.sleep(self.poll_interval)
                row = self._row(request.service)
                if _operation_done(action, before, row):
                    return OperateReply(action, row, True)
        return OperateReply(action, row, False)

    async def start(self, request: ServiceRequest) -> OperateReply:
        return await self._operate("start", request)

    async def stop(self, request: ServiceRequest) -> OperateReply:
        return await self._operate("stop", request)

    async def restart(self, request: ServiceRequest) -> OperateReply:
        return await self._operate("restart", request)
