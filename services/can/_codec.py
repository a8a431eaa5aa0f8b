"""A CAN network's database as bus topics, and frames to typed values and back. Pure logic: no I/O.

Every message of the database becomes a topic ``CAN.<network>.<Message>`` whose value is an attrs record
with one field per signal (class made from the database, registered with the bus codec). A mapping table
can also publish chosen signals under VSS-style names (``Vehicle.Speed``) with a unit and a linear
transform. Signal values are decoded with cantools, numeric (choices are not turned into names), scaled.
"""

from __future__ import annotations

import difflib
import functools
import keyword
import math
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import cantools
import cantools.database

from bus import Codec, Topic, default_codec

#: A message topic goes stale after this many of its database cycle times without a frame.
STALE_AFTER_CYCLES = 3.0


#: Record classes made so far, by network, message and signal layout (see `CanCodec._record_class`).
_RECORDS: dict[tuple[Any, ...], type] = {}


class CanDatabaseError(Exception):
    """A CAN database could not be loaded or does not fit; the message names the file and the reason."""


class FrameError(Exception):
    """A received frame could not be turned into values. ``kind`` is what went wrong, for counters:
    ``unknown_id``, ``wrong_length`` or ``undecodable``."""

    def __init__(self, kind: Literal["unknown_id", "wrong_length", "undecodable"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class EncodeError(ValueError):
    """Signal values could not be encoded into a frame: an unknown signal, or a value out of range."""


@attrs.frozen
class SignalMapping:
    """Publish one signal under a name of its own (VSS style), transformed ``value * scale + offset``."""

    signal: str = attrs.field(metadata={"help": "``Message.Signal`` in the database"})
    topic: str = attrs.field(metadata={"help": "the topic name, e.g. ``Vehicle.Speed``"})
    type: Literal["float", "int", "bool"] = attrs.field(
        default="float", metadata={"help": "the topic's value type"}
    )
    unit: str | None = attrs.field(
        default=None, metadata={"help": "default: the signal's unit in the database"}
    )
    scale: float = attrs.field(default=1.0, metadata={"help": "the topic's value is signal * scale + offset"})
    offset: float = attrs.field(default=0.0, metadata={"help": "see scale"})
    min: float | None = attrs.field(
        default=None,
        metadata={"help": "default: the signal's minimum in the database, transformed (float and int)"},
    )
    max: float | None = attrs.field(
        default=None,
        metadata={"help": "default: the signal's maximum in the database, transformed (float and int)"},
    )
    description: str = attrs.field(default="", metadata={"help": "the topic's description"})


@attrs.frozen
class Frame:
    """A frame to send: what `CanCodec.encode` returns."""

    arbitration_id: int
    data: bytes
    is_extended_id: bool
    is_fd: bool


def load_database(path: str | os.PathLike[str], *, strict: bool = True) -> cantools.database.Database:
    """Load a CAN database (DBC, KCD, SYM, ARXML: whatever cantools reads).

    ``strict=False`` accepts real-world files with overlapping signals or other sloppiness (such as
    opendbc's ``vw_mqb.dbc``). Raises `CanDatabaseError` naming the file and what was wrong.
    """
    try:
        db = cantools.database.load_file(os.fspath(path), strict=strict)
    except FileNotFoundError:
        raise CanDatabaseError(f"{path}: no such file") from None
    except Exception as exc:
        hint = "" if not strict else " (real-world files often need strict = false)"
        raise CanDatabaseError(f"{path}: cannot load the CAN database: {exc}{hint}") from None
    if not isinstance(db, cantools.database.can.Database):
        raise CanDatabaseError(f"{path}: not a CAN database")
    return db


@functools.cache
def _load_cached(path: str, strict: bool, _mtime_ns: int) -> cantools.database.can.Database:
    return load_database(path, strict=strict)


def cached_database(path: str | os.PathLike[str], strict: bool) -> cantools.database.can.Database:
    """The database at ``path``, loaded once per file version: a config check and the services of one
    process share it. Raises `CanDatabaseError`."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        raise CanDatabaseError(f"{path}: no such file") from None
    return _load_cached(os.fspath(path), strict, mtime)


def suggest(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _field_name(signal: str) -> str:
    return f"{signal}_" if keyword.iskeyword(signal) or signal.startswith("_") else signal


def _is_integer(value: float) -> bool:
    return float(value).is_integer()


def _signal_type(signal: Any) -> type:
    if signal.is_float or not _is_integer(signal.scale) or not _is_integer(signal.offset):
        return float
    return int


class _Route:
    """What the codec does with one frame id."""

    __slots__ = ("count", "fields", "length", "mapped", "message", "positional", "record", "topic")

    def __init__(self, message: Any, record: type | None, topic: Topic[Any] | None) -> None:
        self.message = message
        self.length = message.length
        self.record = record
        self.topic = topic
        self.fields = {s.name: _field_name(s.name) for s in message.signals}
        self.count = len(self.fields)
        self.mapped: list[tuple[Topic[Any], str, float, float, str]] = []
        # cantools decodes signals in the message's signal order, which is the record's field order: then
        # the record is built positionally, without a dict per frame. Checked once, on an all-zero frame.
        self.positional = False
        if not message.is_multiplexed():
            try:
                probe = message.decode(bytes(message.length), decode_choices=False)
            except Exception:
                probe = {}
            self.positional = list(probe) == [s.name for s in message.signals]


class CanCodec:
    """Frames of one CAN network to typed values, and signal values to frames.

    ``network`` names the network in topic names (``CAN.<network>.<Message>``). With
    ``message_topics=False`` only the ``mappings`` are published. Records are registered with ``codec``
    (the bus's default codec unless given) under ``can.<network>.<Message>``.
    """

    def __init__(
        self,
        db: cantools.database.Database,
        network: str,
        *,
        message_topics: bool = True,
        mappings: Sequence[SignalMapping] = (),
        codec: Codec | None = None,
        records: Mapping[str, type] | None = None,
    ) -> None:
        self.db = db
        self.network = network
        self._codec = codec if codec is not None else default_codec
        #: Record classes to use instead of making them, by message name: the ``RECORDS`` of a module
        #: ``vwos can gen`` wrote, so that its typed topics are the very topics the gateway publishes.
        self._given = dict(records or {})
        self._routes: dict[int, _Route] = {}
        self._by_name: dict[str, Any] = {}
        for message in db.messages:
            self._by_name[message.name] = message
            record: type | None = None
            topic: Topic[Any] | None = None
            if message_topics:
                record = self._record_class(message)
                topic = Topic(
                    f"CAN.{network}.{message.name}",
                    record,
                    max_age=self._max_age(message),
                    description=(message.comment or "") if isinstance(message.comment, str) else "",
                )
            self._routes[message.frame_id] = _Route(message, record, topic)
        self._mapped_topics: list[Topic[Any]] = []
        for mapping in mappings:
            self._add_mapping(mapping)

    # -- topics ---------------------------------------------------------------------------------------

    def _max_age(self, message: Any) -> float | None:
        cycle = message.cycle_time
        return STALE_AFTER_CYCLES * cycle / 1000.0 if cycle else None

    def _record_class(self, message: Any) -> type:
        optional = message.is_multiplexed()
        shape = tuple((_field_name(s.name), _signal_type(s)) for s in message.signals)
        given = self._given.get(message.name)
        if given is not None:
            return self._adopt(given, message, shape)
        key = (self.network, message.name, optional, shape, id(self._codec))
        cached = _RECORDS.get(key)
        if cached is not None:  # the same message of the same network: one class, whoever loads it
            return cached
        fields: dict[str, Any] = {}
        for name, kind in shape:
            field_type: Any = kind | None if optional else kind
            fields[name] = (
                attrs.field(type=field_type, default=None) if optional else attrs.field(type=field_type)
            )
        cls = attrs.make_class(message.name, fields, frozen=True, slots=True)
        cls.__doc__ = f"Signals of CAN message {message.name} (0x{message.frame_id:x}) on {self.network}."
        cls.__module__ = f"vwos.can.{self.network}"
        name = f"can.{self.network}.{message.name}"
        try:
            self._codec.register(cls, name=name)
        except Exception as exc:  # this network already has a message of that name with other signals
            raise CanDatabaseError(f"cannot register the record of {message.name}: {exc}") from None
        _RECORDS[key] = cls
        return cls

    def _adopt(self, cls: type, message: Any, shape: tuple[tuple[str, type], ...]) -> type:
        """Use a given (generated) record class, once it is checked to have exactly the right fields."""
        if not attrs.has(cls):
            raise CanDatabaseError(f"the record class given for {message.name} is not an attrs class")
        hints = typing.get_type_hints(cls)
        have = tuple((f.name, hints.get(f.name)) for f in attrs.fields(cls))
        want = tuple((name, kind | None if message.is_multiplexed() else kind) for name, kind in shape)
        if have != want:
            raise CanDatabaseError(
                f"the record class given for {message.name} does not match the database "
                "(generate the topics module again with `vwos can gen`): "
                f"it has {[(n, getattr(t, '__name__', str(t))) for n, t in have]}"
            )
        try:
            self._codec.register(cls, name=f"can.{self.network}.{message.name}")
        except Exception as exc:
            raise CanDatabaseError(f"cannot register the record of {message.name}: {exc}") from None
        return cls

    def _add_mapping(self, mapping: SignalMapping) -> None:
        message_name, _, signal_name = mapping.signal.partition(".")
        message = self._by_name.get(message_name)
        if message is None:
            raise CanDatabaseError(f"mapping {mapping.topic}: no message {message_name!r} in the database")
        signal = next((s for s in message.signals if s.name == signal_name), None)
        if signal is None:
            names = ", ".join(s.name for s in message.signals)
            raise CanDatabaseError(
                f"mapping {mapping.topic}: message {message_name} has no signal {signal_name!r} "
                f"(it has {names})"
            )
        low, high = mapping.min, mapping.max
        if mapping.type != "bool":
            ends = [
                v * mapping.scale + mapping.offset for v in (signal.minimum, signal.maximum) if v is not None
            ]
            if low is None and len(ends) == 2:
                low = min(ends)
            if high is None and len(ends) == 2:
                high = max(ends)
        kinds: dict[str, type] = {"float": float, "int": int, "bool": bool}
        topic: Topic[Any] = Topic(
            mapping.topic,
            kinds[mapping.type],
            unit=mapping.unit if mapping.unit is not None else signal.unit,
            min=None if mapping.type == "bool" else low,
            max=None if mapping.type == "bool" else high,
            max_age=self._max_age(message),
            description=mapping.description or f"{mapping.signal} on {self.network}",
        )
        self._routes[message.frame_id].mapped.append(
            (topic, signal_name, mapping.scale, mapping.offset, mapping.type)
        )
        self._mapped_topics.append(topic)

    @property
    def topics(self) -> list[Topic[Any]]:
        """Every topic this codec publishes: message topics first, then mapped signals."""
        message_topics = [r.topic for r in self._routes.values() if r.topic is not None]
        return message_topics + self._mapped_topics

    def message_topic(self, message: str) -> Topic[Any]:
        """The topic of one message, by message name."""
        msg = self._message(message)
        topic = self._routes[msg.frame_id].topic
        if topic is None:
            raise KeyError(f"{message}: message topics are off for network {self.network}")
        return topic

    def wanted_ids(self) -> list[tuple[int, bool]]:
        """The (frame id, extended) pairs this codec publishes something for: for kernel filters."""
        return [
            (fid, route.message.is_extended_frame)
            for fid, route in self._routes.items()
            if route.topic is not None or route.mapped
        ]

    # -- receive --------------------------------------------------------------------------------------

    def decode(self, frame_id: int, data: bytes | bytearray) -> list[tuple[Topic[Any], Any]]:
        """The (topic, value) pairs a received frame yields. Raises `FrameError` if it yields none."""
        route = self._routes.get(frame_id)
        if route is None:
            raise FrameError("unknown_id", f"frame id 0x{frame_id:x} is not in the database")
        if len(data) != route.length:
            raise FrameError(
                "wrong_length",
                f"{route.message.name} (0x{frame_id:x}): {len(data)} data bytes, "
                f"the database says {route.length}",
            )
        try:
            values = route.message.decode(data, decode_choices=False)
        except Exception as exc:
            raise FrameError("undecodable", f"{route.message.name} (0x{frame_id:x}): {exc}") from None
        out: list[tuple[Topic[Any], Any]] = []
        if route.topic is not None:
            record = route.record
            assert record is not None
            if route.positional and len(values) == route.count:
                out.append((route.topic, record(*values.values())))
            else:
                fields = route.fields
                out.append((route.topic, record(**{fields[k]: v for k, v in values.items()})))
        for topic, signal, scale, offset, kind in route.mapped:
            raw = values.get(signal)
            if raw is None:  # a multiplexed signal not in this frame
                continue
            if kind == "bool":
                out.append((topic, bool(raw)))
            else:
                value = raw * scale + offset
                out.append((topic, round(value) if kind == "int" else float(value)))
        return out

    # -- transmit -------------------------------------------------------------------------------------

    def _message(self, name: str) -> Any:
        message = self._by_name.get(name)
        if message is None:
            raise EncodeError(f"no message {name!r} in the CAN database of {self.network}")
        return message

    def defaults(self, message: str) -> dict[str, float]:
        """Each signal's value when nothing is given: its initial value, else 0 brought into range."""
        msg = self._message(message)
        out: dict[str, float] = {}
        for s in msg.signals:
            if s.initial is not None:
                value = float(s.initial) if isinstance(s.initial, int | float) else 0.0
            else:
                value = 0.0
                if s.minimum is not None and value < s.minimum:
                    value = s.minimum
                if s.maximum is not None and value > s.maximum:
                    value = s.maximum
            out[s.name] = value
        return out

    def encode(
        self, message: str, signals: Mapping[str, float], *, base: Mapping[str, float] | None = None
    ) -> Frame:
        """A frame of ``message`` with ``signals`` set, the others from ``base`` or their `defaults`.

        Raises `EncodeError` naming the message and the signal for unknown signals and values out of range.
        """
        msg = self._message(message)
        known = {s.name: s for s in msg.signals}
        unknown = sorted(set(signals) - set(known))
        if unknown:
            raise EncodeError(
                f"{message}: no signal {', '.join(map(repr, unknown))} (signals: {', '.join(sorted(known))})"
            )
        values = dict(self.defaults(message) if base is None else base)
        for name, value in signals.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise EncodeError(f"{message}.{name}: expected a number, got {value!r}")
            s = known[name]
            if (s.minimum is not None and value < s.minimum) or (s.maximum is not None and value > s.maximum):
                raise EncodeError(
                    f"{message}.{name}: {value!r} is out of range [{s.minimum}, {s.maximum}]"
                    + (f" {s.unit}" if s.unit else "")
                )
            values[name] = value
        if msg.is_multiplexed():
            values = self._selected(msg, values, signals)
        try:
            data = msg.encode(values, scaling=True, strict=True)
        except Exception as exc:
            raise EncodeError(f"{message}: cannot encode: {exc}") from None
        return Frame(msg.frame_id, bytes(data), msg.is_extended_frame, bool(msg.is_fd))

    def _selected(self, msg: Any, values: dict[str, float], given: Mapping[str, float]) -> dict[str, float]:
        """The values of a multiplexed message's signals that its multiplexer values select."""
        selected: dict[str, float] = {}

        def may(branches: dict[int, Any]) -> str:
            return f"(it may be {', '.join(map(str, sorted(branches)))})"

        def walk(nodes: list[Any]) -> None:
            for node in nodes:
                if isinstance(node, str):
                    if node not in values:
                        raise EncodeError(f'{msg.name}: cannot encode: no value for "{node}"')
                    selected[node] = values[node]
                    continue
                for mux, branches in node.items():
                    if mux not in values:  # a nested multiplexer (extended multiplexing) left unset
                        raise EncodeError(f"{msg.name}.{mux}: no value for this multiplexer {may(branches)}")
                    selected[mux] = values[mux]
                    branch = branches.get(int(values[mux]))
                    if branch is None:
                        raise EncodeError(
                            f"{msg.name}.{mux}: {values[mux]!r} selects nothing {may(branches)}"
                        )
                    walk(branch)

        walk(msg.signal_tree)
        stray = sorted(set(given) - set(selected))
        if stray:
            raise EncodeError(f"{msg.name}: {', '.join(stray)} not sent with these multiplexer values")
        return selected

    def messages(self) -> Iterable[Any]:
        """The database's messages (cantools ``Message`` objects)."""
        return self.db.messages
