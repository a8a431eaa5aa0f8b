"""The messages of the socket protocol: each one's fields, how they are checked as they are decoded
(`from_wire`), their CBOR form (`to_wire`), and the error kinds an ERROR carries (`ERROR_KINDS`).

Plain data, no state and no I/O: `bus._wire.Connection` frames and unframes them, `bus._state` says which
may flow when. Each message is a CBOR array whose first item is its operation code; anything malformed
raises `ProtocolError`, naming the message and field. ``docs/protocol.md`` is the specification.
"""

from __future__ import annotations

import enum
import math
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, ClassVar, Final

import attrs

from bus._codec import Codec, default_codec
from bus._errors import (
    BusError,
    CallTimeoutError,
    CodecError,
    LimitExceededError,
    MethodAlreadyServedError,
    NoSuchMethodError,
    PermissionDeniedError,
    RemoteError,
    StaleValueError,
    TopicError,
    UnknownTopicError,
    ValueRefusedError,
)
from bus._handle import MAX_SUBSCRIPTION_PATTERNS
from bus._permissions import Permissions
from bus._sample import Sample, SampleColumns
from bus._schema import TypeSchema
from bus._topic import FloatList, Overflow, QoS, Topic, register_type

__all__ = [
    "BY_OP",
    "DEFAULT_MAX_FRAME",
    "ERROR_KINDS",
    "MIN_MAX_FRAME",
    "PROTOCOL_VERSION",
    "SENT_BY_BOTH",
    "Call",
    "Cancel",
    "Declare",
    "Deliver",
    "Error",
    "ErrorKind",
    "Get",
    "Hello",
    "IsStale",
    "Message",
    "ProtocolError",
    "Publish",
    "Refused",
    "Reply",
    "Role",
    "Serve",
    "Subscribe",
    "Sync",
    "Types",
    "Unserve",
    "Unsubscribe",
    "Welcome",
    "error_from_exception",
    "label",
    "pack_doubles",
    "remote_error",
    "timeout_to_wire",
]


#: The protocol version this code speaks (HELLO and WELCOME carry it).
PROTOCOL_VERSION: Final = 3
#: The largest frame body accepted unless configured otherwise: 1 MiB.
DEFAULT_MAX_FRAME: Final = 1 << 20
#: The smallest frame limit a peer may announce (a HELLO must fit).
MIN_MAX_FRAME: Final = 1024
_MAX_ID: Final = 2**63 - 1


class ProtocolError(BusError):
    """The peer broke the socket protocol: bad framing, malformed CBOR, a wrong message, a wrong version."""


class Role(enum.Enum):
    """An end of a connection: the one a `Connection` object is, the ones that send a message."""

    CLIENT = "client"
    SERVER = "server"


# -- field checkers (decoding) ----------------------------------------------------------------------------

_Check = Callable[[Any, str], Any]


def label(value: object) -> str:
    """A received value as an error message shows it: its type and its repr, shortened."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _bad(field: str, expected: str, value: object) -> ProtocolError:
    return ProtocolError(f"{field}: expected {expected}, got {label(value)}")


def _str(value: Any, field: str) -> str:
    if type(value) is str:
        return value
    raise _bad(field, "a text string", value)


def _opt_str(value: Any, field: str) -> str | None:
    return None if value is None else _str(value, field)


def _id(value: Any, field: str) -> int:
    if type(value) is int and 0 <= value <= _MAX_ID:
        return value
    raise _bad(field, f"an id (an int from 0 to {_MAX_ID})", value)


def _opt_id(value: Any, field: str) -> int | None:
    return None if value is None else _id(value, field)


def _num(value: Any, field: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _bad(field, "a number", value)


def _opt_num(value: Any, field: str) -> float | None:
    return None if value is None else _num(value, field)


def _bound(value: Any, field: str) -> float | None:
    """A topic's min or max: null, an int (kept an int, as declared) or a float."""
    if value is None or type(value) in (int, float):
        return value  # type: ignore[no-any-return]
    raise _bad(field, "null or a number", value)


def _bool(value: Any, field: str) -> bool:
    if type(value) is bool:
        return value
    raise _bad(field, "a bool", value)


def _any(value: Any, field: str) -> Any:
    return value


def _queue_size(value: Any, field: str) -> int | None:
    if value is None or (type(value) is int and 1 <= value <= _MAX_ID):
        return value
    raise _bad(field, "null or a positive int", value)


_OVERFLOWS: Final = frozenset(o.value for o in Overflow)


def _overflow(value: Any, field: str) -> str | None:
    if value is None or (type(value) is str and value in _OVERFLOWS):
        return value
    raise _bad(field, f"null or one of {sorted(_OVERFLOWS)}", value)


def _max_frame(value: Any, field: str) -> int:
    if type(value) is int and MIN_MAX_FRAME <= value <= 2**32 - 1:
        return value
    raise _bad(field, f"a frame limit (an int from {MIN_MAX_FRAME} to 2**32-1)", value)


def _version(value: Any, field: str) -> int:
    if type(value) is not int:
        raise _bad(field, "an int protocol version", value)
    if value != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {value}; this peer speaks version {PROTOCOL_VERSION}"
        )
    return value


_ACTIONS: Final = ("publish", "subscribe", "serve", "call", "block")
#: The most patterns per action a client may ask for in HELLO: the broker narrows each against its grant
#: before it answers, and checks each again per request (a full frame of them took a third of a second).
MAX_REQUESTED_PATTERNS: Final = 256


def _permissions(value: Any, field: str, max_patterns: int | None = None) -> Permissions:
    if type(value) is not dict:
        raise _bad(field, "a map of permission lists", value)
    unknown = set(value) - set(_ACTIONS)
    if unknown:
        raise ProtocolError(f"{field}: unknown actions {sorted(map(str, unknown))}; known: {list(_ACTIONS)}")
    lists: dict[str, tuple[str, ...]] = {}
    for action, patterns in value.items():
        if type(patterns) is not list or not all(type(p) is str for p in patterns):
            raise _bad(f"{field}.{action}", "a list of text patterns", patterns)
        if max_patterns is not None and len(patterns) > max_patterns:
            raise ProtocolError(
                f"{field}.{action}: {len(patterns)} patterns asked for; the limit is {max_patterns}"
            )
        lists[action] = tuple(patterns)
    try:
        return Permissions(**lists)
    except TopicError as exc:
        raise ProtocolError(f"{field}: {exc}") from None


def _opt_permissions(value: Any, field: str, max_patterns: int | None = None) -> Permissions | None:
    return None if value is None else _permissions(value, field, max_patterns)


def _encode_permissions(perms: Permissions | None) -> dict[str, list[str]] | None:
    if perms is None:
        return None
    return {action: list(getattr(perms, action)) for action in _ACTIONS}


def _list(value: Any, field: str) -> list[Any]:
    if type(value) is list:
        return value
    raise _bad(field, "an array", value)


def _opt_list(value: Any, field: str) -> list[Any] | None:
    return None if value is None else _list(value, field)


_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_pack: Final = struct.pack
_NUMBER_TYPES: Final = frozenset({int, float})
_FLOAT_ONLY: Final = {float}


def pack_doubles(numbers: Sequence[float]) -> bytes:
    """Numbers as the wire packs them: 8 bytes each, IEEE 754 binary64, little-endian."""
    return _pack(f"<{len(numbers)}d", *numbers)  # twice as fast as array("d", ...).tobytes()


def _span(first: int, n: int) -> tuple[int, ...]:
    """The seqs of ``n`` consecutive samples from ``first`` (compared with a run's, in C)."""
    return tuple(range(first, first + n))


def _pack_values(values: Sequence[Any]) -> Any:
    """A run's values as they travel: packed doubles if every one is a float, else a CBOR array."""
    if type(values) is FloatList or (type(values[0]) is float and set(map(type, values)) == _FLOAT_ONLY):
        return pack_doubles(values)
    return values if type(values) is list else list(values)


def _values(value: Any, field: str) -> list[Any]:
    """A run's values: a non-empty array, or packed doubles (a byte string of 8 bytes per value)."""
    if type(value) is list and value:
        return value
    if type(value) is bytes and value and len(value) % 8 == 0:
        return FloatList(_numbers(value, field, len(value) // 8))
    raise _bad(field, "a non-empty array of values, or packed doubles", value)


def _numbers(value: Any, field: str, n: int) -> list[float]:
    """``n`` numbers: packed doubles (8 bytes each), or an array of numbers."""
    if type(value) is bytes:
        if len(value) != 8 * n:
            raise ProtocolError(
                f"{field}: expected {n} packed doubles ({8 * n} bytes), got {len(value)} bytes"
            )
        unpacked = array("d")
        unpacked.frombytes(value)
        if not _LITTLE_ENDIAN:  # pragma: no cover - big-endian machines
            unpacked.byteswap()
        return unpacked.tolist()
    if type(value) is list and len(value) == n and _NUMBER_TYPES.issuperset(map(type, value)):
        return [float(v) for v in value] if int in set(map(type, value)) else value
    raise _bad(field, f"{n} numbers (packed doubles, or an array)", value)


def _texts(value: Any, field: str, n: int) -> list[str]:
    if type(value) is list and len(value) == n and set(map(type, value)) == {str}:
        return value
    raise _bad(field, f"a text, or an array of {n} texts", value)


def _seqs(value: Any, field: str, n: int) -> list[int]:
    if (
        type(value) is list
        and len(value) == n
        and set(map(type, value)) == {int}
        and min(value) >= 0
        and max(value) <= _MAX_ID
    ):
        return value
    raise _bad(field, f"the first sequence number, or an array of {n} (ints >= 0)", value)


# -- messages ---------------------------------------------------------------------------------------------

_C = Role.CLIENT
_S = Role.SERVER
#: The `SENT_BY` of a message either end sends.
SENT_BY_BOTH: Final = frozenset({_C, _S})


class _Message:
    """Base of every message: an operation code, the roles that send it, and its fields' checkers."""

    __slots__ = ()

    OP: ClassVar[int]
    NAME: ClassVar[str]
    SENT_BY: ClassVar[frozenset[Role]]
    #: (attribute, checker on decode); encoded in this order after the op code.
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]]

    def to_wire(self) -> list[Any]:
        return [self.OP, *(getattr(self, name) for name, _ in self.FIELDS)]

    @classmethod
    def from_wire(cls, items: list[Any]) -> Any:
        fields = cls.FIELDS
        if len(items) != len(fields) + 1:
            raise ProtocolError(
                f"{cls.NAME} message: expected {len(fields) + 1} items "
                f"[op, {', '.join(n for n, _ in fields)}], got {len(items)}"
            )
        return cls(*(check(v, f"{cls.NAME}.{n}") for (n, check), v in zip(fields, items[1:], strict=True)))


@attrs.frozen
class Hello(_Message):
    """Client -> server, first: who the client is and (optionally) the permissions it asks for."""

    name: str
    permissions: Permissions | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    version: int = PROTOCOL_VERSION

    OP: ClassVar[int] = 0
    NAME: ClassVar[str] = "HELLO"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def to_wire(self) -> list[Any]:
        return [self.OP, self.version, self.name, _encode_permissions(self.permissions), self.max_frame]

    @classmethod
    def from_wire(cls, items: list[Any]) -> Hello:
        # The version first: a peer of another version may send a HELLO of another shape.
        if len(items) < 2:
            raise ProtocolError("HELLO message: expected [0, version, name, permissions, max_frame]")
        version = _version(items[1], "HELLO.version")
        if len(items) != 5:
            raise ProtocolError(
                "HELLO message: expected 5 items [0, version, name, permissions, max_frame], "
                f"got {len(items)}"
            )
        return cls(
            _str(items[2], "HELLO.name"),
            _opt_permissions(items[3], "HELLO.permissions", MAX_REQUESTED_PATTERNS),
            _max_frame(items[4], "HELLO.max_frame"),
            version,
        )


@attrs.frozen
class Welcome(_Message):
    """Server -> client: the connection is accepted with these permissions."""

    permissions: Permissions
    max_frame: int = DEFAULT_MAX_FRAME
    version: int = PROTOCOL_VERSION

    OP: ClassVar[int] = 1
    NAME: ClassVar[str] = "WELCOME"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_S})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def to_wire(self) -> list[Any]:
        return [self.OP, self.version, _encode_permissions(self.permissions), self.max_frame]

    @classmethod
    def from_wire(cls, items: list[Any]) -> Welcome:
        if len(items) < 2:
            raise ProtocolError("WELCOME message: expected [1, version, permissions, max_frame]")
        version = _version(items[1], "WELCOME.version")
        if len(items) != 4:
            raise ProtocolError(
                f"WELCOME message: expected 4 items [1, version, permissions, max_frame], got {len(items)}"
            )
        return cls(
            _permissions(items[2], "WELCOME.permissions"), _max_frame(items[3], "WELCOME.max_frame"), version
        )


@attrs.frozen
class Refused(_Message):
    """Server -> client, instead of WELCOME: the connection is refused; the server closes it."""

    reason: str

    OP: ClassVar[int] = 2
    NAME: ClassVar[str] = "REFUSED"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_S})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("reason", _str),)


@attrs.frozen
class Publish(_Message):
    """Client -> server: publish a run of values on ``topic``, each with its source timestamp (no reply;
    a refusal comes as an ERROR with no id). ``timestamps[i]`` belongs to ``values[i]``. ``wait``: the
    publisher waits for room in ``block`` queues (``await publish``, or a publisher made with
    ``block=True``); without it, a full ``block`` queue does not get the samples that do not fit.

    On the wire: ``[3, topic, values, timestamps]``, or ``[3, topic, values, timestamps, true]`` with
    ``wait``; the timestamps packed (`pack_doubles`). The Python client appends to the last queued
    PUBLISH while it is still waiting for the writer, so a burst of publishes on one topic travels as one
    message.
    """

    topic: str
    values: list[Any]
    timestamps: list[float]
    wait: bool = False

    OP: ClassVar[int] = 3
    NAME: ClassVar[str] = "PUBLISH"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def __attrs_post_init__(self) -> None:
        if len(self.values) != len(self.timestamps) or not self.values:
            raise ValueError(
                f"PUBLISH needs as many timestamps as values, at least one: got {len(self.values)} values "
                f"and {len(self.timestamps)} timestamps"
            )

    def __len__(self) -> int:
        return len(self.values)

    def to_wire(self) -> list[Any]:
        wire = [3, self.topic, _pack_values(self.values), pack_doubles(self.timestamps)]
        if self.wait:
            wire.append(True)
        return wire

    @classmethod
    def from_wire(cls, items: list[Any]) -> Publish:
        if len(items) not in (4, 5):
            raise ProtocolError(
                "PUBLISH message: expected 4 or 5 items [3, topic, values, timestamps, wait?], "
                f"got {len(items)}"
            )
        topic, values, timestamps = items[1:4]
        wait = _bool(items[4], "PUBLISH.wait") if len(items) == 5 else False
        values = _values(values, "PUBLISH.values")
        return cls(
            _str(topic, "PUBLISH.topic"),
            values,
            _numbers(timestamps, "PUBLISH.timestamps", len(values)),
            wait,
        )

    def split(self) -> tuple[Publish, Publish]:
        """Two messages of half the run each (to fit a frame limit)."""
        half = len(self.values) // 2
        return (
            Publish(self.topic, self.values[:half], self.timestamps[:half], self.wait),
            Publish(self.topic, self.values[half:], self.timestamps[half:], self.wait),
        )


_SCALAR_TYPES: Final[dict[str, type]] = {"bool": bool, "int": int, "float": float, "str": str, "bytes": bytes}
_SCALAR_NAMES: Final[dict[type, str]] = {t: n for n, t in _SCALAR_TYPES.items()}
_TOPIC_KEYS: Final = (
    "name",
    "type",
    "unit",
    "min",
    "max",
    "allowed",
    "description",
    "max_age",
    "queue_size",
    "overflow",
)


@attrs.frozen
class Declare(_Message):
    """Client -> server: declare a topic (no reply; a conflict comes as an ERROR with no id).

    The topic travels as a map; its type by name: ``bool``, ``int``, ``float``, ``str``, ``bytes``, or the
    type name of a class registered with the codec (which the broker must have registered too).
    """

    name: str
    type: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    description: str = ""
    max_age: float | None = None
    queue_size: int = 64
    overflow: str = "drop_oldest"

    OP: ClassVar[int] = 4
    NAME: ClassVar[str] = "DECLARE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def to_wire(self) -> list[Any]:
        return [self.OP, {key: getattr(self, key) for key in _TOPIC_KEYS}]

    @classmethod
    def from_wire(cls, items: list[Any]) -> Declare:
        if len(items) != 2:
            raise ProtocolError(f"DECLARE message: expected 2 items [4, topic], got {len(items)}")
        spec = items[1]
        if type(spec) is not dict:
            raise _bad("DECLARE.topic", "a map", spec)
        if "name" not in spec or "type" not in spec:
            raise ProtocolError("DECLARE.topic: the keys 'name' and 'type' are required")
        get = spec.get
        min_, max_ = _bound(get("min"), "DECLARE.topic.min"), _bound(get("max"), "DECLARE.topic.max")
        queue_size = _queue_size(get("queue_size"), "DECLARE.topic.queue_size")
        overflow = _overflow(get("overflow"), "DECLARE.topic.overflow")
        description = get("description")
        return cls(
            name=_str(spec["name"], "DECLARE.topic.name"),
            type=_str(spec["type"], "DECLARE.topic.type"),
            unit=_opt_str(get("unit"), "DECLARE.topic.unit"),
            min=min_,
            max=max_,
            allowed=_opt_list(get("allowed"), "DECLARE.topic.allowed"),
            description="" if description is None else _str(description, "DECLARE.topic.description"),
            max_age=_opt_num(get("max_age"), "DECLARE.topic.max_age"),
            queue_size=64 if queue_size is None else queue_size,
            overflow="drop_oldest" if overflow is None else overflow,
        )

    @classmethod
    def from_topic(cls, topic: Topic[Any], codec: Codec = default_codec) -> Declare:
        """The declaration of ``topic``; `CodecError` if its type is neither a scalar nor registered."""
        type_name = _SCALAR_NAMES.get(topic.type)
        if type_name is None:
            if codec is default_codec:
                register_type(topic.type)
            if not codec.is_registered(topic.type):
                raise CodecError(
                    f"{topic.name}: its type {topic.type.__qualname__} is not registered with the codec; "
                    "register it (bus.default_codec.register) to use the topic over a socket"
                )
            type_name = codec.type_name(topic.type)
        return cls(
            name=topic.name,
            type=type_name,
            unit=topic.unit,
            min=topic.min,
            max=topic.max,
            allowed=None if topic.allowed is None else list(topic.allowed),
            description=topic.description,
            max_age=topic.max_age,
            queue_size=topic.qos.queue_size,
            overflow=topic.qos.overflow.value,
        )

    def to_topic(self, codec: Codec = default_codec) -> Topic[Any]:
        """The `Topic` declared; `TopicError` if the type is unknown here or the rules are invalid."""
        vtype = _SCALAR_TYPES.get(self.type)
        if vtype is None:
            info = codec._by_name.get(self.type)
            if info is None:
                raise TopicError(
                    f"{self.name}: unknown type {self.type!r}: it is not registered with this process's codec"
                )
            vtype = info.cls
        return Topic(
            self.name,
            vtype,
            unit=self.unit,
            min=self.min,
            max=self.max,
            allowed=None if self.allowed is None else tuple(self.allowed),
            description=self.description,
            max_age=self.max_age,
            qos=QoS(self.queue_size, Overflow(self.overflow)),
        )


def _subscribed(value: Any, field: str) -> str | list[str]:
    """What a SUBSCRIBE subscribes to: a text, or an array of 1 to 256 texts (several in one queue)."""
    if type(value) is str:
        return value
    if type(value) is list and value and all(type(v) is str for v in value):
        if len(value) > MAX_SUBSCRIPTION_PATTERNS:
            raise ProtocolError(
                f"{field}: {len(value)} names and patterns; a subscription takes at most "
                f"{MAX_SUBSCRIPTION_PATTERNS}"
            )
        return value
    raise _bad(field, "a text string, or a non-empty array of them", value)


@attrs.frozen
class Subscribe(_Message):
    """Client -> server: subscribe to a name or pattern (a text), or to several in one queue (an array of
    texts), under the client-chosen ``sub_id``."""

    sub_id: int
    pattern: str | list[str]
    queue_size: int | None = None
    overflow: str | None = None
    latest: bool = False

    OP: ClassVar[int] = 5
    NAME: ClassVar[str] = "SUBSCRIBE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("sub_id", _id),
        ("pattern", _subscribed),
        ("queue_size", _queue_size),
        ("overflow", _overflow),
        ("latest", _bool),
    )


@attrs.frozen
class Unsubscribe(_Message):
    """Client -> server: end subscription ``sub_id``."""

    sub_id: int

    OP: ClassVar[int] = 6
    NAME: ClassVar[str] = "UNSUBSCRIBE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("sub_id", _id),)


@attrs.frozen
class Deliver(_Message):
    """Server -> client: samples for subscription ``sub_id``, in the order they entered the bus.

    On the wire the samples travel as columns, ``[7, sub_id, topic, values, timestamps, bus_time,
    publisher, seq]``, where a column every sample shares is sent once: ``topic`` and ``publisher`` are a
    text (all samples) or an array of texts; ``bus_time`` a number (all samples) or one per sample;
    ``seq`` the first sample's seq when the others follow it one by one, else an array. Timestamps (and
    per-sample bus times) are packed doubles (`pack_doubles`).
    """

    sub_id: int
    samples: Sequence[Sample[Any]]

    OP: ClassVar[int] = 7
    NAME: ClassVar[str] = "SAMPLES"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_S})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def __attrs_post_init__(self) -> None:
        if not self.samples:
            raise ValueError("SAMPLES needs at least one sample")

    def __len__(self) -> int:
        return len(self.samples)

    def to_wire(self) -> list[Any]:
        samples = self.samples
        if type(samples) is SampleColumns:
            runs = samples.run_columns()
            if runs is not None:  # runs of one topic from one publisher, as the broker queued them
                return self._runs_to_wire(*runs)
        n = len(samples)
        topics, values, timestamps, bus_times, publishers, seqs = zip(*samples, strict=True)
        first_topic = topics[0]
        topic: Any = first_topic if topics.count(first_topic) == n else list(topics)
        first_publisher = publishers[0]
        publisher: Any = first_publisher if publishers.count(first_publisher) == n else list(publishers)
        first_bus_time = bus_times[0]
        bus_time: Any = (
            first_bus_time
            if bus_times.count(first_bus_time) == n
            and first_bus_time == first_bus_time  # not NaN
            and (first_bus_time != 0.0 or _same_zeros(bus_times))  # 0.0 == -0.0: keep the sign
            else pack_doubles(bus_times)
        )
        first_seq = seqs[0]
        consecutive = type(topic) is str and seqs[-1] - first_seq == n - 1 and seqs == _span(first_seq, n)
        seq: Any = first_seq if consecutive else list(seqs)
        return [
            7,
            self.sub_id,
            topic,
            _pack_values(values),
            pack_doubles(timestamps),
            bus_time,
            publisher,
            seq,
        ]

    def _runs_to_wire(
        self,
        topic: str,
        publisher: str,
        values: list[Any],
        timestamps: list[float],
        bus_time: float | list[float],
        first_seq: int,
    ) -> list[Any]:
        shared = pack_doubles(bus_time) if type(bus_time) is list else bus_time
        return [
            7,
            self.sub_id,
            topic,
            _pack_values(values),
            pack_doubles(timestamps),
            shared,
            publisher,
            first_seq,
        ]

    @classmethod
    def from_wire(cls, items: list[Any]) -> Deliver:
        if len(items) != 8:
            raise ProtocolError(
                "SAMPLES message: expected 8 items [7, sub_id, topic, values, timestamps, bus_time, "
                f"publisher, seq], got {len(items)}"
            )
        _, sub_id, topic, values, timestamps, bus_time, publisher, seq = items
        values = _values(values, "SAMPLES.values")
        n = len(values)
        topics: Any = repeat(topic) if type(topic) is str else _texts(topic, "SAMPLES.topic", n)
        publishers: Any = (
            repeat(publisher) if type(publisher) is str else _texts(publisher, "SAMPLES.publisher", n)
        )
        bus_times: Any
        if type(bus_time) is float or type(bus_time) is int:
            bus_times = repeat(float(bus_time))
        else:
            bus_times = _numbers(bus_time, "SAMPLES.bus_time", n)
        seqs: Any
        if type(seq) is int:
            if not 0 <= seq <= _MAX_ID - max(n - 1, 0):  # the last one, seq + n - 1, is an id too
                raise _bad("SAMPLES.seq", "a sequence number (an int >= 0)", seq)
            seqs = range(seq, seq + n)
        else:
            seqs = _seqs(seq, "SAMPLES.seq", n)
        timestamps = _numbers(timestamps, "SAMPLES.timestamps", n)
        # The columns are n long, or endless (repeat) for the shared ones.
        columns = zip(topics, values, timestamps, bus_times, publishers, seqs)  # noqa: B905
        return cls(_id(sub_id, "SAMPLES.sub_id"), list(map(tuple.__new__, repeat(Sample), columns)))

    def split(self) -> tuple[Deliver, Deliver]:
        """Two messages of half the samples each (to fit a frame limit)."""
        half = len(self.samples) // 2
        return Deliver(self.sub_id, self.samples[:half]), Deliver(self.sub_id, self.samples[half:])


@attrs.frozen
class Get(_Message):
    """Client -> server: the latest sample of ``topic`` (REPLY with the sample's six fields, or null)."""

    id: int
    topic: str
    allow_stale: bool = False

    OP: ClassVar[int] = 8
    NAME: ClassVar[str] = "GET"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id), ("topic", _str), ("allow_stale", _bool))


@attrs.frozen
class IsStale(_Message):
    """Client -> server: whether ``topic``'s latest value is stale (REPLY with a bool)."""

    id: int
    topic: str

    OP: ClassVar[int] = 9
    NAME: ClassVar[str] = "STALE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id), ("topic", _str))


def _schemas(value: Any, field: str) -> tuple[TypeSchema, ...]:
    if type(value) is not list or not 1 <= len(value) <= _MAX_SCHEMAS:
        raise _bad(field, f"an array of 1 to {_MAX_SCHEMAS} type schemas", value)
    try:
        return tuple(TypeSchema.from_wire(item) for item in value)
    except CodecError as exc:
        raise ProtocolError(f"{field}: {exc}") from None


#: At most this many schemas in one TYPES message.
_MAX_SCHEMAS: Final = 4096


@attrs.frozen
class Types(_Message):
    """Server -> client: the schemas of registered types (`bus.TypeSchema`), sent before the first message
    that carries a value of one of them on this connection, so a client without the classes decodes them
    (as `bus.Record` / `bus.EnumMember`). Each type's schema travels once per connection, with the
    schemas of the types its fields refer to."""

    schemas: tuple[TypeSchema, ...]

    OP: ClassVar[int] = 17
    NAME: ClassVar[str] = "TYPES"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_S})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("schemas", _schemas),)

    def to_wire(self) -> list[Any]:
        return [self.OP, [s.to_wire() for s in self.schemas]]


@attrs.frozen
class Sync(_Message):
    """Client -> server: a barrier. The broker handles a connection's messages in order, so its REPLY
    (null) says that everything the client sent before has been handled: subscriptions are in place,
    declarations and samples are on the bus."""

    id: int

    OP: ClassVar[int] = 16
    NAME: ClassVar[str] = "SYNC"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id),)


@attrs.frozen
class Call(_Message):
    """Either way: call ``method`` with ``arg``. A client calls methods served on the bus; the server
    forwards calls of methods a client serves to that client (with ``timeout`` null)."""

    id: int
    method: str
    arg: Any = None
    timeout: float | None = None

    OP: ClassVar[int] = 10
    NAME: ClassVar[str] = "CALL"
    SENT_BY: ClassVar[frozenset[Role]] = SENT_BY_BOTH
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("id", _id),
        ("method", _str),
        ("arg", _any),
        ("timeout", _opt_num),
    )


@attrs.frozen
class Cancel(_Message):
    """Either way: the sender no longer waits for the reply to its CALL ``id``."""

    id: int

    OP: ClassVar[int] = 11
    NAME: ClassVar[str] = "CANCEL"
    SENT_BY: ClassVar[frozenset[Role]] = SENT_BY_BOTH
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id),)


@attrs.frozen
class Serve(_Message):
    """Client -> server: serve ``method`` on the bus on the client's behalf (REPLY null, or ERROR)."""

    id: int
    method: str

    OP: ClassVar[int] = 12
    NAME: ClassVar[str] = "SERVE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id), ("method", _str))


@attrs.frozen
class Unserve(_Message):
    """Client -> server: stop serving ``method``."""

    method: str

    OP: ClassVar[int] = 13
    NAME: ClassVar[str] = "UNSERVE"
    SENT_BY: ClassVar[frozenset[Role]] = frozenset({_C})
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("method", _str),)


@attrs.frozen
class Reply(_Message):
    """Either way: the successful answer to the request ``id`` (GET, STALE, CALL, SERVE)."""

    id: int
    result: Any = None

    OP: ClassVar[int] = 14
    NAME: ClassVar[str] = "REPLY"
    SENT_BY: ClassVar[frozenset[Role]] = SENT_BY_BOTH
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (("id", _id), ("result", _any))


@attrs.frozen
class ErrorKind:
    """An ERROR's ``kind``: the bus error class it stands for, and what its ``args`` carry."""

    kind: str
    cls: type[BusError]
    #: The exception's attributes that travel in ``args``, in its constructor's order; None: the message
    #: alone (``args`` is ``[message]``, and the exception is made from ``message``).
    args: tuple[str, ...] | None


#: Every error kind, the one statement of how bus errors cross the socket (both ways). Looked up by
#: class along an exception's MRO, so a subclass travels as the nearest kind (`UnknownTopicError` before
#: `TopicError`; a `BusError` of no kind of its own as ``bus``).
ERROR_KINDS: Final = (
    ErrorKind("permission_denied", PermissionDeniedError, ("client", "action", "name", "hint")),
    ErrorKind("limit", LimitExceededError, ("client", "what", "limit")),
    ErrorKind("value_refused", ValueRefusedError, ("topic", "rule", "value")),
    ErrorKind("unknown_topic", UnknownTopicError, ("name",)),
    ErrorKind("topic", TopicError, None),
    ErrorKind("stale", StaleValueError, ("topic", "age", "max_age")),
    ErrorKind("no_such_method", NoSuchMethodError, ("method",)),
    ErrorKind("already_served", MethodAlreadyServedError, ("method", "server")),
    ErrorKind("remote", RemoteError, ("method", "error_type", "message")),
    ErrorKind("timeout", CallTimeoutError, ("method", "timeout")),
    ErrorKind("codec", CodecError, None),
    ErrorKind("protocol", ProtocolError, None),
    ErrorKind("bus", BusError, None),
)
_BY_KIND: Final = {k.kind: k for k in ERROR_KINDS}
_BY_CLASS: Final[dict[type[BaseException], ErrorKind]] = {k.cls: k for k in ERROR_KINDS}


@attrs.frozen
class Error(_Message):
    """Either way: request ``id`` (or subscription ``id``) failed; ``id`` null: an asynchronous error
    (a PUBLISH or DECLARE refused), or, of kind ``protocol``, the reason the sender closes the connection.
    """

    id: int | None
    kind: str
    error_type: str
    message: str
    args: list[Any] = attrs.field(factory=list)

    OP: ClassVar[int] = 15
    NAME: ClassVar[str] = "ERROR"
    SENT_BY: ClassVar[frozenset[Role]] = SENT_BY_BOTH
    FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("id", _opt_id),
        ("kind", _str),
        ("error_type", _str),
        ("message", _str),
        ("args", _list),
    )

    def to_exception(self) -> BusError:
        """The bus error this stands for (a plain `BusError` with the message for an unknown kind)."""
        found = _BY_KIND.get(self.kind)
        if found is None or found.args is None:
            return (BusError if found is None else found.cls)(self.message)
        try:
            return found.cls(*self.args)
        except Exception:  # wrong arguments from a peer: keep the message
            return BusError(self.message)


def remote_error(id: int | None, exc: BaseException, method: str) -> Error:
    """The ERROR (kind ``remote``) for ``exc`` raised by the handler of ``method``, whatever its type."""
    return Error(id, "remote", type(exc).__name__, str(exc), [method, type(exc).__name__, str(exc)])


def error_from_exception(id: int | None, exc: BaseException, *, method: str | None = None) -> Error:
    """The ERROR message for ``exc``; an exception that is not a bus error travels as kind ``remote``."""
    for cls in type(exc).__mro__:
        found = _BY_CLASS.get(cls)
        if found is not None:
            break
    else:
        return remote_error(id, exc, method or "")
    args = [str(exc)] if found.args is None else [getattr(exc, name) for name in found.args]
    return Error(id, found.kind, type(exc).__name__, str(exc), args)


Message = (
    Hello
    | Welcome
    | Refused
    | Publish
    | Declare
    | Subscribe
    | Unsubscribe
    | Deliver
    | Get
    | IsStale
    | Sync
    | Types
    | Call
    | Cancel
    | Serve
    | Unserve
    | Reply
    | Error
)

#: Each message class by its operation code.
BY_OP: Final[dict[int, type[_Message]]] = {
    cls.OP: cls
    for cls in (
        Hello,
        Welcome,
        Refused,
        Publish,
        Declare,
        Subscribe,
        Unsubscribe,
        Deliver,
        Get,
        IsStale,
        Sync,
        Types,
        Call,
        Cancel,
        Serve,
        Unserve,
        Reply,
        Error,
    )
}


def _same_zeros(values: Sequence[float]) -> bool:
    """Whether the zeros ``values`` (all equal to 0.0) have one sign: 0.0 and -0.0 compare equal."""
    sign = math.copysign(1.0, values[0])
    return all(math.copysign(1.0, v) == sign for v in values)


def timeout_to_wire(timeout: float) -> float | None:
    """A call timeout as it travels: null for no timeout (infinity)."""
    return None if math.isinf(timeout) else float(timeout)
