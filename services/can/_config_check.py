"""What `vwos check` finds in a CAN gateway's config: what `CanGateway` would fail on at start or at run.

The functions here are the bodies of `GatewayConfig`'s validators. Each checks one field in the light of
the others and returns every problem it finds, as `vwos.FieldProblem` with a path relative to that field
(``(2, "signals", "Speed")`` of ``cyclic`` is ``cyclic[2].signals.Speed``), so that every problem of a list
is reported at once, at its item. They read the other fields of ``cfg`` with `_get`: the config loader runs
the validators on a half-built instance where a field whose value was wrong is missing, and a check that
needs it is then left out (its own problem is reported at its own key).

What the gateway does at run is what is checked, by the same code where it can be: values of cyclic
messages are encoded by `CanCodec.encode` as ``run`` encodes them at start, mapped topics are made by a
`CanCodec` as ``run`` makes them, a ``topics_module``'s records are adopted by a `CanCodec` as ``run``
adopts them. The codecs made here register their record classes with a codec of their own, never with
the bus's default codec: a check leaves nothing behind that a later check or a run could trip on.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import can
import cantools.database

from bus import Codec, Permissions, Topic, TopicError
from services.can._codec import (
    STALE_AFTER_CYCLES,
    CanCodec,
    CanDatabaseError,
    EncodeError,
    cached_database,
    suggest,
)
from services.can._e2e import E2EConfigError, bind_e2e
from vwos import FieldProblem

#: The shortest period of a cyclic message, in seconds: a CAN bus carries at most about 8,000 frames a
#: second (1 Mbit/s), and the fastest cyclic messages in a car are sent every few milliseconds.
MIN_CYCLIC_PERIOD: Final = 0.001

#: How many records of a list that fail the same way are named one by one before the rest are counted.
_MAX_NAMED: Final = 10

_NETWORK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What `_get` returns for a field the half-built config does not have (its value was wrong).
MISSING: Final[Any] = _Missing()


def _get(cfg: object, name: str) -> Any:
    return getattr(cfg, name, MISSING)


# -- the database ----------------------------------------------------------------------------------------

#: Why a database file (path, strict, mtime) did not load: the validators of one config ask for it once
#: each, and a file that does not parse should be parsed once, not once per validator.
_FAILED: dict[tuple[str, bool, int], str] = {}
_MAX_FAILED: Final = 16


def load(path: Any, strict: Any) -> cantools.database.can.Database | str:
    """The database at ``path`` (loaded once per file version, see `cached_database`), or why not."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except (OSError, TypeError, ValueError):
        return f"{path}: no such file"
    key = (os.fspath(path), bool(strict), mtime)
    failed = _FAILED.get(key)
    if failed is not None:
        return failed
    try:
        return cached_database(path, bool(strict))
    except CanDatabaseError as exc:
        if len(_FAILED) >= _MAX_FAILED:
            _FAILED.clear()
        _FAILED[key] = str(exc)
        return str(exc)


def database_of(cfg: object) -> cantools.database.can.Database | None:
    """The config's database, or None when it does not load (that is reported at ``database``)."""
    path, strict = _get(cfg, "database"), _get(cfg, "strict")
    if path is MISSING or strict is MISSING:
        return None
    db = load(path, strict)
    return None if isinstance(db, str) else db


#: Codecs without message topics (cheap: no record classes) for encoding checks, by database and network.
_CODECS: dict[tuple[int, str], tuple[cantools.database.can.Database, CanCodec]] = {}
_MAX_CODECS: Final = 8


def _codec(db: cantools.database.can.Database, network: str) -> CanCodec | None:
    key = (id(db), network)
    hit = _CODECS.get(key)
    if hit is not None and hit[0] is db:
        return hit[1]
    try:
        codec = CanCodec(db, network, message_topics=False, codec=Codec())
    except Exception:  # the database is refused: reported by the checks that build what run builds
        return None
    if len(_CODECS) >= _MAX_CODECS:
        del _CODECS[next(iter(_CODECS))]
    _CODECS[key] = (db, codec)
    return codec


def _network(cfg: object) -> str | None:
    network = _get(cfg, "network")
    return network if isinstance(network, str) and network_problem(network) is None else None


def _lookup(db: cantools.database.can.Database, name: str) -> tuple[Any, str | None]:
    """The message ``name`` of ``db``, or None and why not."""
    try:
        return db.get_message_by_name(name), None
    except KeyError:
        known = [m.name for m in db.messages]
        return None, f"no message {name!r} in the database{suggest(name, known)}"


def _no_signal(message: Any, name: str) -> str | None:
    known = [s.name for s in message.signals]
    return None if name in known else f"{message.name}: no signal {name!r}{suggest(name, known)}"


def is_fd(message: Any) -> bool:
    """Whether the gateway sends ``message`` as a CAN FD frame (more than 8 bytes cannot be classic)."""
    return bool(message.is_fd) or message.length > 8


def _fd_problem(cfg: object, message: Any, what: str) -> str | None:
    if _get(cfg, "fd") is not False or not is_fd(message):
        return None
    return (
        f"{message.name} is a CAN FD message ({message.length} bytes) and this network is configured "
        f"fd = false: {what}; set fd = true if the network is CAN FD"
    )


def _counted(problems: list[str], what: str) -> list[str]:
    if len(problems) <= _MAX_NAMED:
        return problems
    return [*problems[:_MAX_NAMED], f"and {len(problems) - _MAX_NAMED} more {what}"]


def _finite(item: object, keys: Iterable[str], where: tuple[Any, ...]) -> list[FieldProblem]:
    out = []
    for key in keys:
        value = getattr(item, key)
        if value is not None and not math.isfinite(value):
            out.append(FieldProblem((*where, key), f"expected a finite number, got {value!r}"))
    return out


def _topic_name_problem(name: str) -> str | None:
    try:
        Topic(name, object)
    except TopicError as exc:
        return str(exc)
    return None


# -- the fields ------------------------------------------------------------------------------------------


def network_problem(network: str) -> str | None:
    """Why ``network`` cannot name a network in topic names (``CAN.<network>.<Message>``), or None."""
    if not _NETWORK.match(network):
        return (
            f"{network!r} must be a name of letters, digits and underscores, not starting with a digit "
            "(it goes in topic names: CAN.<network>.<Message>)"
        )
    return _topic_name_problem(f"CAN.{network}.Status")


def database_problems(cfg: object, path: Any, gateway_names: Mapping[str, str]) -> list[FieldProblem]:
    """The database must exist and load as ``strict`` says (its error shown as the loader gives it); with
    ``message_topics``, every message must make a topic (a valid name; a cycle time, if any, > 0), and none
    may take the name of the gateway's own status topic or send method (``gateway_names``: name -> what it
    is)."""
    if not os.path.isfile(path):
        return [FieldProblem((), f"{path}: no such file")]
    db = load(path, _get(cfg, "strict"))
    if isinstance(db, str):
        return [FieldProblem((), db)]
    network = _network(cfg)
    if _get(cfg, "message_topics") is not True or network is None:
        return []
    found = []
    for message in db.messages:
        if message.name in gateway_names:
            found.append(
                f"{path}: message {message.name!r} would publish on CAN.{network}.{message.name}, which is "
                f"the gateway's own {gateway_names[message.name]}; rename the message in the database, or "
                "set message_topics = false and map its signals"
            )
    bad = []
    for message in db.messages:  # its topic as the codec makes it, but for the record class
        cycle = message.cycle_time
        try:
            Topic(
                f"CAN.{network}.{message.name}",
                object,
                max_age=STALE_AFTER_CYCLES * cycle / 1000.0 if cycle else None,
            )
        except TopicError as exc:
            bad.append(f"{path}: message {message.name!r} cannot be a topic: {exc}")
    found += _counted(bad, "messages whose names cannot be topics (set message_topics = false?)")
    ids: dict[str, list[str]] = {}
    for message in db.messages:
        ids.setdefault(message.name, []).append(f"0x{message.frame_id:x}")
    for name, frames in ids.items():
        if len(frames) > 1:
            found.append(
                f"{path}: messages {', '.join(frames)} are all named {name!r}: a name makes one topic and "
                "one record; rename them in the database, or set message_topics = false and map their signals"
            )
    fields = [
        f"{path}: signal {message.name}.{signal.name!r} cannot be a field of the message's record (it is "
        "not a Python name)"
        for message in db.messages
        for signal in message.signals
        if not signal.name.isidentifier()
    ]
    found += _counted(fields, "signals that cannot be fields (set message_topics = false and map them?)")
    return [FieldProblem((), text) for text in found]


def interface_problem(interface: str) -> str | None:
    """Why python-can has no interface ``interface`` (the link would stay down for ever), or None."""
    valid = can.interfaces.VALID_INTERFACES
    if interface in valid:
        return None
    close = suggest(interface, valid)
    listed = close or f" (it has {', '.join(sorted(valid))})"
    return f"python-can has no interface {interface!r}{listed}"


def receive_mode_problem(cfg: object, mode: str) -> str | None:
    """``receive_mode = "fd"`` needs an interface whose bus has a file descriptor to wait on."""
    interface = _get(cfg, "interface")
    if mode != "fd" or not isinstance(interface, str):
        return None
    backend = can.interfaces.BACKENDS.get(interface)
    if backend is None:
        return None
    try:
        cls = getattr(importlib.import_module(backend[0]), backend[1])
    except Exception:  # its driver is not installed here: the link reports that when it opens
        return None
    if getattr(cls, "fileno", None) is can.BusABC.fileno:
        return (
            f'python-can\'s {interface} interface has no file descriptor to wait on: use "auto" (it picks '
            'the best mode), "thread" or "poll"'
        )
    return None


def _own_topics(cfg: object, db: cantools.database.can.Database | None) -> dict[str, str]:
    """The topics this gateway publishes by itself (not its mapped signals): name -> what it is."""
    network = _network(cfg)
    if network is None:
        return {}
    own = {
        f"CAN.{network}.Status": "the gateway's status topic",
        f"CAN.{network}.frames": "the gateway's raw frames topic",
    }
    if _get(cfg, "message_topics") is True and db is not None:
        for message in db.messages:
            own.setdefault(f"CAN.{network}.{message.name}", f"the topic of message {message.name}")
    return own


# Another item of the same list is named by what it is, not by its index: when some items of a list cannot be
# built, the validator is run on the others alone (see `vwos.StructureError`), and an index would be off.


def mapping_problems(cfg: object, mappings: Sequence[Any]) -> list[FieldProblem]:
    """Each mapping: its ``Message.Signal`` in the database, a valid topic name that no other mapping and
    no topic of the gateway's own takes, finite numbers; then the topic made as the gateway makes it."""
    db = database_of(cfg)
    own = _own_topics(cfg, db)
    found: list[FieldProblem] = []
    first: dict[str, int] = {}
    good: list[tuple[int, Any]] = []
    for i, mapping in enumerate(mappings):
        problems = _finite(mapping, ("scale", "offset", "min", "max"), (i,))
        if mapping.min is not None and mapping.max is not None and mapping.min > mapping.max:
            problems.append(FieldProblem((i, "min"), f"{mapping.min!r} is above max {mapping.max!r}"))
        message_name, dot, signal_name = mapping.signal.partition(".")
        if not dot or not message_name or not signal_name:
            problems.append(FieldProblem((i, "signal"), f"{mapping.signal!r}: expected Message.Signal"))
        elif db is not None:
            message, why = _lookup(db, message_name)
            why = why if message is None else _no_signal(message, signal_name)
            if why is not None:
                problems.append(FieldProblem((i, "signal"), why))
        name_problem = _topic_name_problem(mapping.topic)
        if name_problem is not None:
            problems.append(FieldProblem((i, "topic"), name_problem))
        elif mapping.topic in first:
            where = first[mapping.topic]
            problems.append(
                FieldProblem(
                    (i, "topic"),
                    f"{mapping.topic} is the topic of an earlier mapping too ({mappings[where].signal}): a "
                    "topic carries one signal",
                )
            )
        elif mapping.topic in own:
            problems.append(
                FieldProblem(
                    (i, "topic"), f"{mapping.topic} is {own[mapping.topic]}, which the gateway publishes"
                )
            )
        first.setdefault(mapping.topic, i)
        found += problems
        if not problems:
            good.append((i, mapping))
    network = _network(cfg)
    if db is None or network is None or not good:
        return found
    try:  # the topics as run makes them (the range from the database, transformed): one codec for all
        CanCodec(db, network, message_topics=False, mappings=[m for _, m in good], codec=Codec())
    except Exception:
        for i, mapping in good:  # which of them
            try:
                CanCodec(db, network, message_topics=False, mappings=[mapping], codec=Codec())
            except Exception as exc:
                found.append(FieldProblem((i,), _exception_text(exc)))
    return found


def transmit_problems(cfg: object, transmit: Sequence[str]) -> list[FieldProblem]:
    """Each name (but ``*``) a message of the database that this network can carry."""
    db = database_of(cfg)
    if db is None:
        return []
    found = []
    for i, name in enumerate(transmit):
        if name == "*":
            continue
        message, why = _lookup(db, name)
        why = why if message is None else _fd_problem(cfg, message, "Send would refuse it every time")
        if why is not None:
            found.append(FieldProblem((i,), why))
    return found


def cyclic_problems(cfg: object, cyclic: Sequence[Any]) -> list[FieldProblem]:
    """Each cyclic message: in the database, listed once, carried by this network, and its signal values
    encoded as ``run`` encodes them at start (each bad value reported at its signal)."""
    db = database_of(cfg)
    if db is None:
        return []
    codec = _codec(db, _network(cfg) or "check")
    found = []
    first: dict[str, int] = {}
    for i, entry in enumerate(cyclic):
        if entry.message in first:
            found.append(
                FieldProblem(
                    (i, "message"),
                    f"{entry.message} is listed in cyclic before: list a message once, with all the signal "
                    "values it starts with",
                )
            )
            continue
        first[entry.message] = i
        message, why = _lookup(db, entry.message)
        why = why if message is None else _fd_problem(cfg, message, "it cannot be sent on this network")
        if why is not None:
            found.append(FieldProblem((i, "message"), why))
            continue
        given = {}
        for name, value in entry.signals.items():
            unknown = _no_signal(message, name)
            if unknown is not None:
                found.append(FieldProblem((i, "signals", name), unknown))
            else:
                given[name] = value
        if codec is not None:
            found += encode_problems(codec, message.name, given, (i,))
    return found


def encode_problems(
    codec: CanCodec,
    message: str,
    signals: Mapping[str, float],
    where: tuple[Any, ...],
    *,
    base: Mapping[str, float] | None = None,
) -> list[FieldProblem]:
    """Why ``codec.encode(message, signals, base=base)`` fails, every reason: a value the codec refuses is
    reported at ``where + ("signals", name)`` and left out for the next try; a failure of the message as a
    whole (its multiplexers, the values it takes from its defaults) at ``where``."""
    values = dict(signals)
    found = []
    while True:
        try:
            codec.encode(message, values, base=base)
        except EncodeError as exc:
            name = _blamed(exc, message, values)
            if name is None:
                found.append(FieldProblem(where, str(exc)))
                return found
            found.append(
                FieldProblem((*where, "signals", name), str(exc).removeprefix(f"{message}.{name}: "))
            )
            del values[name]
        except Exception as exc:  # a failure the codec did not foresee: run would fail the same way
            found.append(FieldProblem(where, f"{message}: cannot encode: {_exception_text(exc)}"))
            return found
        else:
            return found


def _blamed(exc: EncodeError, message: str, values: Mapping[str, float]) -> str | None:
    """The signal of ``values`` an `EncodeError` is about, if it is about one."""
    signal = getattr(exc, "signal", None)
    if isinstance(signal, str) and signal in values:
        return signal
    text = str(exc)
    for name in sorted(values, key=len, reverse=True):
        if text.startswith(f"{message}.{name}: "):
            return name
    return None


def actuator_problems(cfg: object, actuators: Sequence[Any]) -> list[FieldProblem]:
    """Each actuator: its message and signal in the database; the message one the gateway may send
    (``transmit``, or cyclic) on this network, and that can be sent with only this signal set; its topic a
    valid name that the gateway does not publish itself, of one type across actuators; finite numbers."""
    db = database_of(cfg)
    own = _own_topics(cfg, db)
    mappings = _get(cfg, "signals")
    if mappings is not MISSING:
        for j, mapping in enumerate(mappings):
            own.setdefault(mapping.topic, f"the topic of signals[{j}] ({mapping.signal})")
    transmit, cyclic = _get(cfg, "transmit"), _get(cfg, "cyclic")
    sendable = None if transmit is MISSING or cyclic is MISSING else {*transmit, *(c.message for c in cyclic)}
    bases: dict[str, Mapping[str, float] | None] = {}  # by message: the values of its cyclic entry
    codec = None if db is None else _codec(db, _network(cfg) or "check")
    found: list[FieldProblem] = []
    types: dict[str, str] = {}
    for i, actuator in enumerate(actuators):
        found += _finite(actuator, ("scale", "offset"), (i,))
        name_problem = _topic_name_problem(actuator.topic)
        if name_problem is not None:
            found.append(FieldProblem((i, "topic"), name_problem))
        elif actuator.topic in own:
            found.append(
                FieldProblem(
                    (i, "topic"),
                    f"{actuator.topic} is {own[actuator.topic]}, which the gateway publishes: an actuator "
                    "on it would send back what the gateway receives",
                )
            )
        elif actuator.topic in types and types[actuator.topic] != actuator.type:
            other = types[actuator.topic]
            found.append(
                FieldProblem(
                    (i, "type"),
                    f"{actuator.topic} is the topic of an earlier actuator too, with type {other!r}: a topic "
                    "has one type",
                )
            )
        types.setdefault(actuator.topic, actuator.type)
        if db is None:
            continue
        message, why = _lookup(db, actuator.message)
        if message is None:
            found.append(FieldProblem((i, "message"), str(why)))
            continue
        why = _fd_problem(cfg, message, "the gateway cannot send it on this network")
        if why is None and sendable is not None and "*" not in sendable and message.name not in sendable:
            why = (
                f"{message.name} is not in transmit (nor sent cyclically): the gateway would refuse to "
                "send it at every sample; add it to transmit"
            )
        if why is not None:
            found.append(FieldProblem((i, "message"), why))
        unknown = _no_signal(message, actuator.signal)
        if unknown is not None:
            found.append(FieldProblem((i, "signal"), unknown))
        elif codec is not None and why is None:
            if message.name not in bases:
                bases[message.name] = _cyclic_base(codec, message.name, cyclic)
            problem = _alone_problem(codec, message.name, actuator.signal, bases[message.name])
            if problem is not None:
                found.append(FieldProblem((i, "signal"), problem))
    return found


_WRONG: Final[Mapping[str, float]] = {}


def _cyclic_base(codec: CanCodec, message: str, cyclic: Any) -> Mapping[str, float] | None:
    """The values the gateway sends ``message`` with when it is cyclic (its defaults and the entry's
    values), None if it is not, or `_WRONG` if its cyclic entry is wrong (reported there)."""
    for entry in () if cyclic is MISSING else cyclic:
        if entry.message == message:
            if encode_problems(codec, message, entry.signals, ()):
                return _WRONG
            return codec.defaults(message) | dict(entry.signals)
    return None


def _alone_problem(
    codec: CanCodec, message: str, signal: str, base: Mapping[str, float] | None
) -> str | None:
    """Why ``message`` cannot be sent with only ``signal`` set, as an actuator sends it (on top of
    ``base``, the values of its cyclic entry, if it has one), or None."""
    if base is _WRONG:
        return None
    defaults = codec.defaults(message)
    try:
        codec.encode(message, {signal: defaults[signal]}, base=base)
    except Exception as exc:
        return f"{message} cannot be sent with only {signal} set: {_exception_text(exc)}"
    return None


def topics_module_problems(cfg: object, name: str) -> list[FieldProblem]:
    """The module must import and have ``RECORDS`` (record classes by message name) that the gateway's
    codec adopts, made for this network."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return [FieldProblem((), f"cannot import {name!r}: {_exception_text(exc)}")]
    records = getattr(module, "RECORDS", MISSING)
    if records is MISSING:
        return [FieldProblem((), f"module {name} has no RECORDS: is it a module `vwos can gen` wrote?")]
    if not isinstance(records, Mapping) or not all(
        isinstance(k, str) and isinstance(v, type) for k, v in records.items()
    ):
        return [
            FieldProblem(
                (), f"{name}.RECORDS: expected a dict of record classes by message name, got {records!r:.80}"
            )
        ]
    found = []
    network = _network(cfg)
    made_for = getattr(module, "NETWORK", None)
    if isinstance(made_for, str) and network is not None and made_for != network:
        found.append(
            FieldProblem(
                (),
                f"{name} was generated for network {made_for!r}, and this gateway's network is {network!r}: "
                f"its topics (CAN.{made_for}.*) are not the gateway's (CAN.{network}.*); generate it again "
                f"with `vwos can gen --network {network}`",
            )
        )
    db = database_of(cfg)
    if db is None or network is None or _get(cfg, "message_topics") is not True:
        return found
    try:  # adopted as run adopts them, by a codec of its own (see the module's docstring)
        CanCodec(db, network, records=records, codec=Codec())
    except Exception as exc:
        found.append(FieldProblem((), f"{name}: {_exception_text(exc)}"))
    return found


def bus_names(cfg: Any) -> Permissions | None:
    """What the gateway publishes (its status topic, its message topics, its mapped signals), serves
    (``CAN.<network>.Send``) and subscribes to (its actuators' topics) with ``cfg``; None if the database
    does not load."""
    db = database_of(cfg)
    network = _network(cfg)
    if db is None or network is None:
        return None
    publish = [f"CAN.{network}.Status"]
    if cfg.raw_frames:
        publish.append(f"CAN.{network}.frames")
    if cfg.message_topics:
        publish += [f"CAN.{network}.{m.name}" for m in db.messages]
    publish += [m.topic for m in cfg.signals]
    return Permissions(
        publish=tuple(dict.fromkeys(publish)),
        subscribe=tuple(dict.fromkeys(a.topic for a in cfg.actuators)),
        serve=(f"CAN.{network}.Send",),
    )


def _exception_text(exc: BaseException) -> str:
    if isinstance(exc, CanDatabaseError | EncodeError | TopicError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def e2e_problems(cfg: object, configs: Sequence[Any]) -> list[FieldProblem]:
    """Each E2E config fits its message in the database (see `bind_e2e`), and nothing else the gateway
    sends sets the signals E2E fills (an actuator or a cyclic value there would never reach the bus):
    every problem at its key."""
    db = database_of(cfg)
    if db is None:
        return []
    try:
        protections = bind_e2e(configs, db)
    except E2EConfigError as exc:
        return [FieldProblem(path, text) for path, text in exc.problems]
    index = {c.message: i for i, c in enumerate(configs)}
    setters: list[tuple[str, str, str]] = []  # (message, signal, who sets it)
    actuators, cyclic = _get(cfg, "actuators"), _get(cfg, "cyclic")
    for i, actuator in enumerate(() if actuators is MISSING else actuators):
        setters.append((actuator.message, actuator.signal, f"actuators[{i}]"))
    for i, entry in enumerate(() if cyclic is MISSING else cyclic):
        setters.extend((entry.message, name, f"cyclic[{i}].signals") for name in entry.signals)
    found: list[FieldProblem] = []
    for message, signal, who in setters:
        protection = protections.get(message)
        if protection is not None and signal in (protection.crc_signal, protection.counter_signal):
            found.append(
                FieldProblem(
                    (index[message], "message"),
                    f"{message}.{signal} is set by {who}, but E2E fills it in every frame sent: that value "
                    "would never reach the bus",
                )
            )
    return found
