"""A CAN network's database as bus topics, and frames to typed values and back. Pure logic: no I/O.

Every message of the database becomes a topic ``CAN.<network>.<Message>`` whose value is an attrs record
with one field per signal (class made from the database, registered with the bus codec). A mapping table
can also publish chosen signals under VSS-style names (``Vehicle.Speed``) with a unit and a linear
transform. Signal values are checked and scaled here, once per signal, by a plan made per message when the
codec is built: a raw value the database marks as "no valid value", or one outside the signal's declared
range (compared in raw integer space, so the check agrees with the database's scaling), becomes a
`bus.NotAvailable` in its field; the frame's other signals keep their values.

Each message gets a decoder compiled from its layout and plan when the codec is built
(`services.can._compiled`: shifts and masks on the payload, the plan's steps written out per signal, the
record made in place), used once it decodes sample payloads exactly as the general path does. The general
path (`CanCodec._general`: cantools' layouts unpack the raw values, the plan's steps are looped over) takes
the messages it does not cover, a multiplexer inside a page say, and payloads that are neither bytes nor
bytearray.
"""

from __future__ import annotations

import copy
import decimal
import difflib
import keyword
import math
import random
import re
import typing
import unicodedata
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import cantools
import cantools.database
import cantools.database.utils

from bus import Codec, NotAvailable, Topic, default_codec
from services.can._compiled import compile_decoder
from services.can._database import (
    EXTENDED_FLAG,
    CanDatabaseError,
    cached_database,
    database_warnings,
    load_database,
)

__all__ = [
    "STALE_AFTER_CYCLES",
    "CanCodec",
    "CanDatabaseError",
    "CodecStatistics",
    "EncodeError",
    "Frame",
    "FrameError",
    "SignalMapping",
    "cached_database",
    "load_database",
    "not_available_values",
    "suggest",
]

#: A message topic goes stale after this many of its database cycle times without a frame.
STALE_AFTER_CYCLES = 3.0

#: The data lengths a CAN FD frame can have beyond 8 bytes (its DLC codes 9 to 15).
_FD_LENGTHS: Final = (12, 16, 20, 24, 32, 48, 64)

#: The largest standard (11-bit) frame id.
_STANDARD_MAX: Final = 0x7FF

#: Record classes made so far, by bus codec (they are registered with it), then network, message and signal
#: layout (see `CanCodec._record_class`).
_RECORDS: weakref.WeakKeyDictionary[Codec, dict[tuple[Any, ...], type]] = weakref.WeakKeyDictionary()

#: The values a signal takes when the frame does not carry a valid one (shared: they are frozen).
_NOT_AVAILABLE: Final = NotAvailable("not_available")
_OUT_OF_RANGE: Final = NotAvailable("out_of_range")

FrameErrorKind = Literal["unknown_id", "wrong_length", "undecodable"]


class FrameError(Exception):
    """A received frame could not be turned into values. ``kind`` is what went wrong, for counters:
    ``unknown_id`` (no message of that id and kind, standard or extended, in the database),
    ``wrong_length`` (not the database's length) or ``undecodable`` (cantools cannot unpack it)."""

    def __init__(self, kind: FrameErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: FrameErrorKind = kind


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


@attrs.frozen
class CodecStatistics:
    """What `CanCodec.decode` has met so far (`CanCodec.statistics`): signal values it decoded as not
    available, by reason, and frames whose multiplexer value selects nothing the database knows."""

    #: Signal values outside their declared range (in a message record or a mapped topic's own range).
    out_of_range: int
    #: Signal values the database marks as "no valid value" (SNA, Init, error, invalid, ...).
    not_available: int
    #: Frames whose multiplexer value selects no signals in the database: only their signals outside the
    #: multiplexer's reach were decoded.
    unknown_multiplexer: int


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


def _multiplexed(signal: Any) -> bool:
    """Whether a multiplexer can leave the signal out of a frame."""
    return signal.multiplexer_signal is not None


def _field_type(signal: Any) -> Any:
    kind = _signal_type(signal)
    return kind | NotAvailable | None if _multiplexed(signal) else kind | NotAvailable


# -- "not available" raw values -------------------------------------------------------------------------

#: Value descriptions (``VAL_``) that mark a raw value as "no valid value" in any signal, compared as
#: `_label_key` makes them: SNA (signal not available: also Tesla's ``DI_GEAR_SNA``) and invalid values.
_NOT_AVAILABLE_LABELS: Final = frozenset(
    {
        "sna",
        "signal not available",
        "signal nicht verfuegbar",
        "n/a",
        "invalid",
        "ungueltig",
        "signal invalid",
        "signal ungueltig",
        "signal error",
        "signal fehler",
    }
)

#: Labels that mark "no valid value" only among a physical signal's few special raw values (Volkswagen's
#: ``126 "Init" 127 "Fehler"`` of a fuel level in percent). In an enumeration of states they are states
#: (Tesla's battery state machine ``0 "INIT" 1 "CHARGE" ...``, Volkswagen's ``0 "Init" 1 "Aus" 2 "Ein"
#: 3 "Fehler"``) and are kept. Labels that only contain such a word (``ACC_INIT``,
#: ``reversibler_Fehler_im_ACC_System``, ``CDP_IS_NOT_AVAILABLE``) are always states.
_SPECIAL_VALUE_LABELS: Final = frozenset(
    {
        "init",
        "initial",
        "initialwert",
        "init value",
        "error",
        "fehler",
        "not available",
        "nicht verfuegbar",
    }
)

#: Signal attributes real exports use for a raw value that means "no valid value" (Vector's
#: ``GenSigSNA``, often written ``"FFh"``; ``GenSigInvalidValue``; a gateway's
#: ``GenSigMissingSourceValue``).
_NOT_AVAILABLE_ATTRIBUTES: Final = (
    "GenSigSNA",
    "GenSigInvalidValue",
    "GenSigInvValue",
    "GenSigMissingSourceValue",
)

_GERMAN: Final = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


def _label_key(label: str) -> str:
    text = unicodedata.normalize("NFC", label).casefold().translate(_GERMAN)
    return " ".join(re.split(r"[\s_\-]+", text.strip(" .!"))).strip()


def _is_not_available_label(label: str, *, enumeration: bool) -> bool:
    key = _label_key(label)
    if key in _NOT_AVAILABLE_LABELS or key.endswith(" sna"):
        return True
    return not enumeration and key in _SPECIAL_VALUE_LABELS


def _is_enumeration(signal: Any) -> bool:
    """Whether the signal's value descriptions name states rather than a physical signal's few special
    values: a signal without scaling or unit whose descriptions name three values or more, or at least half
    of the raw values its declared range (else its bits) allows."""
    choices = signal.choices or {}
    if not choices or signal.scale != 1 or signal.offset != 0 or signal.unit:
        return False
    if len(choices) >= 3:
        return True
    lo, hi = _raw_bounds(signal)
    extent_lo, extent_hi = _raw_extent(signal)
    count = min(hi, extent_hi) - max(lo, extent_lo) + 1
    return 2 * len(choices) >= count


def _attribute_raw(value: Any) -> int | None:
    """A raw value as an export writes it in an attribute: ``255``, ``"0xFF"``, ``"FFh"``, ``"255"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if not isinstance(value, str):
        return None
    text = value.strip().replace("_", "")
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        if text[-1:] in "hH" and len(text) > 1:
            return int(text[:-1], 16)
        return int(text)
    except ValueError:
        return None


def not_available_values(signal: Any) -> frozenset[int]:
    """The raw values of a cantools signal that mean "no valid value": value descriptions named so (see
    docs/can.md) and the ``GenSigSNA`` / ``GenSigInvalidValue`` style attributes of real exports."""
    found: set[int] = set()
    enumeration = _is_enumeration(signal)
    for raw, label in (signal.choices or {}).items():
        if isinstance(raw, int) and _is_not_available_label(str(label), enumeration=enumeration):
            found.add(raw)
    dbc = getattr(signal, "dbc", None)
    attributes = getattr(dbc, "attributes", None) or {}
    for name in _NOT_AVAILABLE_ATTRIBUTES:
        attribute = attributes.get(name)
        if attribute is None:
            continue
        raw = _attribute_raw(getattr(attribute, "value", None))
        if raw is not None:
            found.add(raw)
    return frozenset(found)


# -- per-signal plans -----------------------------------------------------------------------------------


def _decimal(value: float) -> decimal.Decimal:
    """A database number as the decimal the file wrote (floats print as the shortest text that reads back)."""
    return decimal.Decimal(value) if isinstance(value, int) else decimal.Decimal(repr(float(value)))


def _raw_extent(signal: Any) -> tuple[int, int]:
    """The raw integers a signal's bits can carry."""
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


def _physical_extent(signal: Any) -> tuple[float, float]:
    """The lowest and highest scaled values a signal's bits carry."""
    first, last = (raw * signal.scale + signal.offset for raw in _raw_extent(signal))
    return (first, last) if first <= last else (last, first)


def _declared_range(signal: Any) -> tuple[float | None, float | None]:
    """The signal's [minimum, maximum]; a range declared upside down counts as none."""
    low, high = signal.minimum, signal.maximum
    if low is not None and high is not None and low > high:
        return None, None
    return low, high


def _raw_bounds(signal: Any) -> tuple[float, float]:
    """The raw integers whose scaled value lies inside the declared range, computed exactly (in decimal,
    from the numbers as the file wrote them): ``(-inf, inf)`` where no bound is declared."""
    low, high = _declared_range(signal)
    scale, offset = signal.scale, signal.offset
    if scale == 0 or (low is None and high is None):
        return -math.inf, math.inf
    with decimal.localcontext() as context:
        context.prec = 50
        ends = [
            None if v is None else (_decimal(v) - _decimal(offset)) / _decimal(scale) for v in (low, high)
        ]
    if scale < 0:
        ends.reverse()
    first, last = ends
    return (
        -math.inf if first is None else int(first.to_integral_value(decimal.ROUND_CEILING)),
        math.inf if last is None else int(last.to_integral_value(decimal.ROUND_FLOOR)),
    )


#: A signal that only needs scaling: (field index, scale, offset).
_ScaleStep = tuple[int, Any, Any]
#: A signal whose raw value is its value, checked: (field index, raw low, raw high, raw values that are
#: not available).
_GuardStep = tuple[int, float, float, frozenset[int]]
#: A scaled signal whose raw value is checked: (field index, scale, offset, raw low, raw high, raw values
#: that are not available).
_CheckStep = tuple[int, Any, Any, float, float, frozenset[int]]
#: The same, whose scaled value could fall outside its range by a rounding error at an end, and is kept
#: inside: (field index, scale, offset, raw low, raw high, min, max, raw values that are not available).
_ClampStep = tuple[int, Any, Any, float, float, float, float, frozenset[int]]
#: A floating-point (IEEE) signal's work: (field index, scale, offset, min, max).
_FloatStep = tuple[int, Any, Any, float, float]


@attrs.define
class _Plan:
    """What decode does with each signal of a message, by kind of work (the fewer steps a kind needs, the
    less each frame costs); signals in none of the lists are their raw value as it is."""

    scaled: list[_ScaleStep] = attrs.field(factory=list)
    guarded: list[_GuardStep] = attrs.field(factory=list)
    checked: list[_CheckStep] = attrs.field(factory=list)
    clamped: list[_ClampStep] = attrs.field(factory=list)
    floats: list[_FloatStep] = attrs.field(factory=list)

    def add(self, index: int, signal: Any) -> None:
        scale, offset = signal.scale, signal.offset
        if _signal_type(signal) is int:  # integer arithmetic keeps int values int
            scale, offset = int(scale), int(offset)
        low, high = _declared_range(signal)
        vmin = -math.inf if low is None else low
        vmax = math.inf if high is None else high
        if signal.is_float:
            if not (scale == 1 and offset == 0 and low is None and high is None):
                self.floats.append((index, scale, offset, vmin, vmax))
            return  # else NaN stays NaN: the signal declares no range it could be outside of
        lo, hi = _raw_bounds(signal)
        extent_lo, extent_hi = _raw_extent(signal)
        lo, hi = max(lo, extent_lo), min(hi, extent_hi)
        na = not_available_values(signal)
        ends = sorted((lo * scale + offset, hi * scale + offset))  # scaling is monotonic
        unchecked = lo == extent_lo and hi == extent_hi  # every raw value the bits carry is in range
        if unchecked:
            lo, hi = -math.inf, math.inf
        identity = scale == 1 and offset == 0
        clamp = not identity and not (ends[0] >= vmin and ends[1] <= vmax)
        if unchecked and not na and not clamp:
            if not identity:
                self.scaled.append((index, scale, offset))
        elif identity:
            self.guarded.append((index, lo, hi, na))
        elif clamp:
            # kept inside [min, max] as the signal's type: a float signal's value never becomes an int 100
            self.clamped.append((index, scale, offset, lo, hi, float(vmin), float(vmax), na))
        else:
            self.checked.append((index, scale, offset, lo, hi, na))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal raw values (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(x == b[k] or (x != x and b[k] != b[k]) for k, x in a.items())


def _unpackers(message: Any) -> tuple[Callable[[Any], dict[str, Any]] | None, ...] | None:
    """cantools' compiled bit layouts of a message that is not multiplexed, (big endian, little endian),
    None for an endianness no signal has: what its decode unpacks with before its Python loop over the
    signals. None where they are not to be had or unpack other values than cantools' decode (checked here
    on a few payloads), so that decode is the one used."""
    create = getattr(cantools.database.utils, "create_encode_decode_formats", None)
    if create is None or message.is_multiplexed():
        return None
    try:
        formats = create(message.signals, message.length)
        orders = {s.byte_order for s in message.signals}
        big = formats.big_endian.unpack if "big_endian" in orders else None
        little = formats.little_endian.unpack if orders - {"big_endian"} else None
        rng = random.Random(message.frame_id)
        for data in (
            bytes(message.length),
            b"\xff" * message.length,
            *(rng.randbytes(message.length) for _ in range(4)),
        ):
            raw: dict[str, Any] = {} if big is None else dict(big(data))
            if little is not None:
                raw.update(little(data[::-1]))
            if not _same(raw, message.decode(data, decode_choices=False, scaling=False)):
                return None
    except Exception:
        return None
    return big, little


Unpack = Callable[[Any], dict[str, Any]]


def _layout(message: Any, names: Iterable[str]) -> Unpack:
    """cantools' compiled bit layouts of some signals of a message, as one function: data to raw values."""
    wanted = set(names)
    signals = [s for s in message.signals if s.name in wanted]  # in the message's order, as cantools has them
    formats = cantools.database.utils.create_encode_decode_formats(signals, message.length)
    orders = {s.byte_order for s in signals}
    big: Unpack | None = formats.big_endian.unpack if "big_endian" in orders else None
    little: Unpack | None = formats.little_endian.unpack if orders - {"big_endian"} else None
    if little is None:
        return big if big is not None else (lambda data: {})
    if big is None:
        return lambda data: little(data[::-1])

    def both(data: Any) -> dict[str, Any]:
        raw = big(data)
        raw.update(little(data[::-1]))
        return raw

    return both


def _pages(message: Any) -> tuple[Unpack, str, dict[int, Unpack]] | None:
    """For a message with one multiplexer (not nested): the layout of the signals every frame carries (the
    multiplexer among them), the multiplexer's name, and the layout of each page by multiplexer value;
    None for other messages, or where they unpack other values than cantools' decode (checked on random
    raw values of every page)."""
    tree = message.signal_tree
    multiplexers = [node for node in tree if isinstance(node, dict)]
    if len(multiplexers) != 1 or len(multiplexers[0]) != 1:
        return None
    ((name, branches),) = multiplexers[0].items()
    if any(not isinstance(node, str) for branch in branches.values() for node in branch):
        return None  # a multiplexer inside a page (extended multiplexing): cantools' decode does it
    by_name = {s.name: s for s in message.signals}
    common = [by_name[node] for node in tree if isinstance(node, str)] + [by_name[name]]
    try:
        top = _layout(message, (s.name for s in common))
        pages = {value: _layout(message, branch) for value, branch in branches.items()}
        rng = random.Random(message.frame_id)
        for value, branch in branches.items():
            for _ in range(3):
                raw = {
                    s.name: 0.0 if s.is_float else rng.randint(*_raw_extent(s))
                    for s in [*common, *(by_name[n] for n in branch)]
                }
                raw[name] = value
                data = message.encode(raw, scaling=False, strict=False)
                ours = top(data)
                ours.update(pages[ours[name]](data))
                if not _same(ours, message.decode(data, decode_choices=False, scaling=False)):
                    return None
    except Exception:
        return None
    return top, name, pages


def _decoder(message: Any) -> Callable[..., Any] | None:
    """A function decoding a frame of ``message`` into raw values by signal name, with cantools; for a
    message cantools cannot unpack whole (its signals overlap, as ``strict = false`` allows), one that
    unpacks it in groups of signals that do not overlap. None if not even that works."""
    payloads = (bytes(message.length), b"\xff" * message.length)

    def works(m: Any) -> bool:
        try:
            for data in payloads:
                m.decode(data, decode_choices=False, scaling=False)
        except Exception:
            return False
        return True

    # decode_simple: decode less a check for containers (cantools >= 37). A multiplexed message is not
    # probed: a payload whose multiplexer selects nothing fails by design (see `_Route.top`).
    whole = typing.cast(Callable[..., Any], getattr(message, "decode_simple", message.decode))
    if message.is_multiplexed():
        return whole
    if works(message):
        return whole
    if message.is_container:
        return None
    parts = _disjoint_parts(message, works)
    if parts is None:
        parts = _tried_parts(message, works)
    if parts is None:
        return None
    decoders = [p.decode for p in parts]

    def decode(data: bytes, decode_choices: bool, scaling: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for part in decoders:
            values.update(part(data, decode_choices, scaling))
        return values

    return decode


def _signal_bits(signal: Any) -> set[int]:
    """The payload bits a signal covers, as byte * 8 + bit (bit 0 the least significant of its byte)."""
    if signal.byte_order == "little_endian":
        return set(range(signal.start, signal.start + signal.length))
    bits, position = set(), signal.start  # big endian: from its most significant bit, numbered as DBC does
    for _ in range(signal.length):
        bits.add(position)
        position = position - 1 if position % 8 else position + 15
    return bits


def _disjoint_parts(message: Any, works: Callable[[Any], bool]) -> list[Any] | None:
    """``message``'s signals in groups whose bits do not overlap (each signal in the first group it fits), as
    cantools messages: a few set operations a signal, so that a file of thousands of overlapping signals
    still loads quickly. None if a group does not decode (then `_tried_parts` tries)."""
    groups: list[list[Any]] = []
    taken: list[set[int]] = []
    for signal in message.signals:
        bits = _signal_bits(signal)
        for group, used in zip(groups, taken, strict=True):
            if used.isdisjoint(bits):
                group.append(signal)
                used |= bits
                break
        else:
            groups.append([signal])
            taken.append(bits)
    parts = [_part(message, group) for group in groups]
    return parts if all(p is not None and works(p) for p in parts) else None


def _tried_parts(message: Any, works: Callable[[Any], bool]) -> list[Any] | None:
    """``message``'s signals in groups that cantools decodes, found by trying each signal in each group."""
    groups: list[list[Any]] = []
    parts: list[Any] = []
    for signal in message.signals:
        for i, group in enumerate(groups):
            candidate = _part(message, [*group, signal])
            if candidate is not None and works(candidate):
                group.append(signal)
                parts[i] = candidate
                break
        else:
            candidate = _part(message, [signal])
            if candidate is None or not works(candidate):
                return None
            groups.append([signal])
            parts.append(candidate)
    return parts


def _part(message: Any, signals: Sequence[Any], *, plain: bool = False) -> Any:
    """A cantools message with some of ``message``'s signals (copies; ``plain``: as non-multiplexed)."""
    copies = []
    for signal in signals:
        signal = copy.copy(signal)
        if plain:
            signal.is_multiplexer = False
            signal.multiplexer_ids = None
            signal.multiplexer_signal = None
        copies.append(signal)
    try:
        return cantools.database.can.Message(
            frame_id=message.frame_id,
            name=message.name,
            length=message.length,
            signals=copies,
            is_extended_frame=message.is_extended_frame,
            strict=False,
        )
    except Exception:
        return None


class _Route:
    """What the codec does with the frames of one message."""

    __slots__ = (
        "big",
        "checked",
        "clamped",
        "compiled",
        "decode",
        "fast",
        "floats",
        "guarded",
        "length",
        "little",
        "mapped",
        "message",
        "names",
        "order",
        "padded",
        "pages",
        "record",
        "scaled",
        "top",
        "topic",
        "what",
    )

    def __init__(self, message: Any, record: type | None, topic: Topic[Any] | None) -> None:
        self.message = message
        self.length = message.length
        #: For a CAN FD message whose length no FD frame has (10 bytes, say): the length of its frames, the
        #: next one FD has (12), whose last bytes are padding. None otherwise.
        self.padded: int | None = None
        if message.length > 8 and message.length not in _FD_LENGTHS:
            self.padded = next((n for n in _FD_LENGTHS if n > message.length), None)
        self.record: Any = record
        self.topic = topic
        kind = " extended" if message.is_extended_frame else ""
        self.what = f"{message.name} (0x{message.frame_id:x}{kind})"
        self.names = tuple(s.name for s in message.signals)
        #: (topic, field index, scale, offset, kind, low, high) per mapped signal.
        self.mapped: list[tuple[Topic[Any], int, float, float, type, float, float]] = []
        plan = _Plan()
        for index, signal in enumerate(message.signals):
            plan.add(index, signal)
        self.scaled = tuple(plan.scaled)
        self.guarded = tuple(plan.guarded)
        self.checked = tuple(plan.checked)
        self.clamped = tuple(plan.clamped)
        self.floats = tuple(plan.floats)
        self.decode = _decoder(message)
        #: cantools' compiled layouts (see `_unpackers`), used directly when the message has them; ``order``
        #: says how their values line up with the record's fields: 1 in order, -1 reversed (little-endian
        #: layouts list their signals from the last one), 0 looked up by name. Decided on an all-zero frame.
        self.big: Callable[[Any], dict[str, Any]] | None = None
        self.little: Callable[[Any], dict[str, Any]] | None = None
        self.order = 0
        unpackers = _unpackers(message) if self.decode is not None else None
        if unpackers is not None:
            self.big, self.little = unpackers
            data = bytes(message.length)
            raw: dict[str, Any] = {} if self.big is None else dict(self.big(data))
            if self.little is not None:
                raw.update(self.little(data[::-1]))
            keys = tuple(raw)
            self.order = 1 if keys == self.names else -1 if keys == self.names[::-1] else 0
        #: The little-endian layout when it is all decode needs (no big-endian signal, values in order).
        self.fast = self.little if self.order and self.big is None else None
        #: For a message with one multiplexer: cantools' layouts of what every frame carries and of each
        #: page (see `_pages`), used directly.
        self.pages = _pages(message) if message.is_multiplexed() else None
        #: For a multiplexed message: its signals outside every multiplexer's reach, as a plain message,
        #: decoded when the multiplexer's value selects nothing the database knows.
        self.top: Callable[..., Any] | None = None
        if message.is_multiplexed():
            part = _part(message, [s for s in message.signals if not _multiplexed(s)], plain=True)
            self.top = None if part is None else _decoder(part)
        #: The message's own decoder, what `CanCodec.decode` returns for a frame of the database's length
        #: (see `compile`); None until then, and for messages it does not cover.
        self.compiled: Callable[[Any, list[int]], list[tuple[Topic[Any], Any]]] | None = None

    def compile(
        self,
        general: Callable[[_Route, Any, list[int]], list[tuple[Topic[Any], Any]]],
        *,
        plain_record: bool,
    ) -> None:
        """Make `compiled` (see `services.can._compiled`), once the route's mapped signals are known, if it
        decodes exactly as ``general`` (`CanCodec._general`) does on sample payloads: all zeros, all ones,
        random ones and, for a multiplexed message, some of each page. Else it stays None."""
        message = self.message
        pages = _page_map(message)
        if message.is_multiplexed() and pages is None:
            return  # a multiplexer inside a page (extended multiplexing): the general path does it
        whole = self.topic is not None and not self.mapped
        try:
            values = compile_decoder(
                message,
                self,
                pages=pages,
                record=self.record if whole else None,
                topic=self.topic if whole else None,
                name=f"0x{message.frame_id:x}",  # numbers only, even in a traceback's file name
                plain_record=plain_record,
            )
        except Exception:  # a layout nobody foresaw: the general path decodes it
            return
        if values is None:
            return
        compiled: Callable[[Any, list[int]], list[tuple[Topic[Any], Any]]]
        if whole:
            compiled = values
        else:
            finish = CanCodec._finish

            def compiled(data: Any, stats: list[int]) -> list[tuple[Topic[Any], Any]]:
                return finish(self, values(data, stats), stats)

        for data in _samples(message, pages):
            try:
                expected = general(self, data, [0, 0, 0])
            except Exception:
                return  # the general path fails on it: leave such a message to the general path
            try:
                got = compiled(data, [0, 0, 0])
            except Exception:
                return
            if not _identical(got, expected):
                return
        self.compiled = compiled


def _page_map(message: Any) -> tuple[str, dict[int, list[str]]] | None:
    """For a message with one multiplexer whose pages hold no multiplexer: its name and the names of the
    signals of each page by multiplexer value. None for other messages."""
    if not message.is_multiplexed():
        return None
    tree = message.signal_tree
    multiplexers = [node for node in tree if isinstance(node, dict)]
    if len(multiplexers) != 1 or len(multiplexers[0]) != 1:
        return None
    ((name, branches),) = multiplexers[0].items()
    if any(not isinstance(node, str) for branch in branches.values() for node in branch):
        return None
    return name, {value: list(branch) for value, branch in branches.items()}


def _samples(message: Any, pages: tuple[str, dict[int, list[str]]] | None) -> list[bytes]:
    """Payloads to check a compiled decoder on (seeded: the same every time)."""
    length = message.length
    rng = random.Random(message.frame_id)
    samples = [bytes(length), b"\xff" * length, *(rng.randbytes(length) for _ in range(16))]
    if pages is not None:
        name, branches = pages
        common = [s for s in message.signals if not _multiplexed(s)]
        by_name = {s.name: s for s in message.signals}
        for value, branch in branches.items():
            for _ in range(2):
                raw = {
                    s.name: 0.0 if s.is_float else rng.randint(*_raw_extent(s))
                    for s in [*common, *(by_name[n] for n in branch)]
                }
                raw[name] = value
                try:
                    samples.append(bytes(message.encode(raw, scaling=False, strict=False)))
                except Exception:
                    continue
    return samples


def _identical(a: list[tuple[Topic[Any], Any]], b: list[tuple[Topic[Any], Any]]) -> bool:
    """The same (topic, value) pairs, each value of the same type and printing the same: a record's
    ``repr`` shows its fields' (an int 100 is not a float 100.0, -0.0 is not 0.0, NaN is NaN)."""
    return len(a) == len(b) and all(
        x[0] is y[0] and type(x[1]) is type(y[1]) and repr(x[1]) == repr(y[1])
        for x, y in zip(a, b, strict=True)
    )


class CanCodec:
    """Frames of one CAN network to typed values, and signal values to frames.

    ``network`` names the network in topic names (``CAN.<network>.<Message>``). With
    ``message_topics=False`` only the ``mappings`` are published. Records are registered with ``codec``
    (the bus's default codec unless given) under ``can.<network>.<Message>``.

    Standard and extended frames are distinct: a standard frame 0x109 is never taken for an extended
    message 0x109, nor the other way round.
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
        #: Routes by frame id, with `EXTENDED_FLAG` set for extended frames.
        self._routes: dict[int, _Route] = {}
        self._by_name: dict[str, _Route] = {}
        #: What decode met: [values out of range, values not available, unknown multiplexer values].
        self._stats = [0, 0, 0]
        for message in db.messages:
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
            route = _Route(message, record, topic)
            key = message.frame_id | EXTENDED_FLAG if message.is_extended_frame else message.frame_id
            self._routes[key] = route
            self._by_name[message.name] = route
        self._mapped_topics: list[Topic[Any]] = []
        for mapping in mappings:
            self._add_mapping(mapping)
        for route in self._routes.values():  # a given record class may do more in its __init__: called
            route.compile(self._general, plain_record=route.message.name not in self._given)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What loading the database had to repair, one line each (unflagged extended ids, bare ``m``
        multiplexers, CAN FD by length, ...), for the gateway's log: see `load_database`."""
        return database_warnings(self.db)

    def statistics(self) -> CodecStatistics:
        """Counts of what `decode` met so far: see `CodecStatistics`."""
        return CodecStatistics(*self._stats)

    # -- topics ---------------------------------------------------------------------------------------

    def _max_age(self, message: Any) -> float | None:
        cycle = message.cycle_time
        return STALE_AFTER_CYCLES * cycle / 1000.0 if cycle else None

    def _record_class(self, message: Any) -> type:
        shape = tuple((_field_name(s.name), _field_type(s)) for s in message.signals)
        given = self._given.get(message.name)
        if given is not None:
            return self._adopt(given, message, shape)
        key = (self.network, message.name, shape)
        made = _RECORDS.setdefault(self._codec, {})
        cached = made.get(key)
        if cached is not None:  # the same message of the same network: one class, whoever loads it
            return cached
        fields = {name: attrs.field(type=field_type) for name, field_type in shape}
        try:
            cls = attrs.make_class(message.name, fields, frozen=True, slots=True)
        except Exception as exc:  # two signals whose field names clash, say
            raise CanDatabaseError(f"cannot make the record of {message.name}: {exc}") from None
        kind = " extended" if message.is_extended_frame else ""
        cls.__doc__ = (
            f"Signals of CAN message {message.name} (0x{message.frame_id:x}{kind}) on {self.network}."
        )
        cls.__module__ = f"vwos.can.{self.network}"
        name = f"can.{self.network}.{message.name}"
        try:
            self._codec.register(cls, name=name)
        except Exception as exc:  # this network already has a message of that name with other signals
            raise CanDatabaseError(f"cannot register the record of {message.name}: {exc}") from None
        made[key] = cls
        return cls

    def _adopt(self, cls: type, message: Any, shape: tuple[tuple[str, Any], ...]) -> type:
        """Use a given (generated) record class, once it is checked to have exactly the right fields."""
        if not attrs.has(cls):
            raise CanDatabaseError(f"the record class given for {message.name} is not an attrs class")
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            raise CanDatabaseError(f"the record class given for {message.name}: {exc}") from None
        have = tuple((f.name, hints.get(f.name)) for f in attrs.fields(cls))
        if have != shape:
            raise CanDatabaseError(
                f"the record class given for {message.name} does not match the database "
                "(generate the topics module again with `vwos can gen`): "
                f"it has {[(n, str(t)) for n, t in have]}"
            )
        try:
            self._codec.register(cls, name=f"can.{self.network}.{message.name}")
        except Exception as exc:
            raise CanDatabaseError(f"cannot register the record of {message.name}: {exc}") from None
        return cls

    def _add_mapping(self, mapping: SignalMapping) -> None:
        message_name, _, signal_name = mapping.signal.partition(".")
        route = self._by_name.get(message_name)
        if route is None:
            raise CanDatabaseError(f"mapping {mapping.topic}: no message {message_name!r} in the database")
        message = route.message
        index = next((i for i, s in enumerate(message.signals) if s.name == signal_name), None)
        if index is None:
            names = ", ".join(s.name for s in message.signals)
            raise CanDatabaseError(
                f"mapping {mapping.topic}: message {message_name} has no signal {signal_name!r} "
                f"(it has {names})"
            )
        signal = message.signals[index]
        low, high = mapping.min, mapping.max
        if mapping.type != "bool":
            ends = [v * mapping.scale + mapping.offset for v in _declared_range(signal) if v is not None]
            if low is None and len(ends) == 2:
                low = min(ends)
            if high is None and len(ends) == 2:
                high = max(ends)
        kinds: dict[str, type] = {"float": float, "int": int, "bool": bool}
        kind = kinds[mapping.type]
        topic: Topic[Any] = Topic(
            mapping.topic,
            kind,
            unit=mapping.unit if mapping.unit is not None else signal.unit,
            min=None if mapping.type == "bool" else low,
            max=None if mapping.type == "bool" else high,
            max_age=self._max_age(message),
            description=mapping.description or f"{mapping.signal} on {self.network}",
        )
        bounds = (
            (-math.inf, math.inf)
            if mapping.type == "bool"
            else (-math.inf if low is None else low, math.inf if high is None else high)
        )
        route.mapped.append((topic, index, mapping.scale, mapping.offset, kind, *bounds))
        self._mapped_topics.append(topic)

    @property
    def topics(self) -> list[Topic[Any]]:
        """Every topic this codec publishes: message topics first, then mapped signals."""
        message_topics = [r.topic for r in self._routes.values() if r.topic is not None]
        return message_topics + self._mapped_topics

    def message_topic(self, message: str) -> Topic[Any]:
        """The topic of one message, by message name."""
        topic = self._route(message).topic
        if topic is None:
            raise KeyError(f"{message}: message topics are off for network {self.network}")
        return topic

    def wanted_ids(self) -> list[tuple[int, bool]]:
        """The (frame id, extended) pairs this codec publishes something for: for kernel filters."""
        return [
            (route.message.frame_id, bool(route.message.is_extended_frame))
            for route in self._routes.values()
            if route.topic is not None or route.mapped
        ]

    def frame_lengths(self, message: str) -> tuple[int, ...]:
        """The data lengths a frame of ``message`` may have: its length, and for a CAN FD message of a
        length no FD frame has, the padded length its frames have. Raises `EncodeError` for no such
        message."""
        route = self._route(message)
        return (route.length,) if route.padded is None else (route.length, route.padded)

    def not_available(self, frame_id: int, extended: bool, reason: str) -> list[tuple[Topic[Any], Any]]:
        """The (topic, value) pairs for a frame of a known message whose content is not to be trusted
        (its end-to-end protection failed, say): ``NotAvailable(reason)`` on the message's topic (the
        whole sample, so that ``sample.available`` says it) and on each mapped signal's. Empty for an id the
        database does not know."""
        route = self._routes.get(frame_id | EXTENDED_FLAG if extended else frame_id)
        if route is None:
            return []
        value = NotAvailable(reason)
        out: list[tuple[Topic[Any], Any]] = []
        if route.topic is not None:
            out.append((route.topic, value))
        out.extend((mapped[0], value) for mapped in route.mapped)
        return out

    # -- receive --------------------------------------------------------------------------------------

    def decode(
        self, frame_id: int, data: bytes | bytearray, extended: bool | None = None
    ) -> list[tuple[Topic[Any], Any]]:
        """The (topic, value) pairs a received frame yields.

        ``extended`` is the frame's extended-id flag (python-can's ``is_extended_id``); None takes ids above
        0x7FF as extended and the others as standard. A signal whose raw value the database marks as not
        available, or outside its declared range, is a `bus.NotAvailable` (``"not_available"``,
        ``"out_of_range"``) in the record and on its mapped topic; the other signals keep their values.
        A signal a multiplexer leaves out is None in the record and not published on its mapped topic.

        Raises `FrameError` if the frame yields nothing, and nothing else whatever the payload.
        """
        try:
            if extended is None:
                extended = frame_id > _STANDARD_MAX
            route = self._routes.get(frame_id | EXTENDED_FLAG if extended else frame_id)
            if route is None:
                sort = "extended" if extended else "standard"
                raise FrameError("unknown_id", f"{sort} frame id 0x{frame_id:x} is not in the database")
            if len(data) != route.length:
                if len(data) != route.padded:
                    raise FrameError(
                        "wrong_length",
                        f"{route.what}: {len(data)} data bytes, the database says {route.length}",
                    )
                data = data[: route.length]  # a CAN FD frame padded to the next length FD has
            compiled = route.compiled
            kind = data.__class__
            if compiled is not None and (kind is bytearray or kind is bytes):  # see `_Route.compile`
                return compiled(data, self._stats)
            return self._general(route, data, self._stats)
        except FrameError:
            raise
        except Exception as exc:  # a payload or a database nobody foresaw: still only a FrameError
            ident = f"0x{frame_id:x}" if isinstance(frame_id, int) else repr(frame_id)
            raise FrameError("undecodable", f"frame id {ident}: {type(exc).__name__}: {exc}") from exc

    def _general(
        self, route: _Route, data: bytes | bytearray, stats: list[int]
    ) -> list[tuple[Topic[Any], Any]]:
        """`decode`'s general path, for a frame of the database's length: cantools' layouts unpack the raw
        values, the plan's steps check and scale them, then the record and the mapped signals. Messages
        with a compiled decoder (`_Route.compile`) take this path only when the decoder is checked."""
        values = self._checked_values(route, data, stats)
        return self._finish(route, values, stats)

    def _checked_values(self, route: _Route, data: bytes | bytearray, stats: list[int]) -> list[Any]:
        """The signals' values in field order, checked and scaled as the plan says."""
        little = route.fast
        if little is not None:  # the usual case: an Intel (little-endian) layout
            raw = little(data[::-1])
            values = [*reversed(raw.values())] if route.order < 0 else [*raw.values()]
        else:
            values = self._values(route, data, stats)
        for index, scale, offset in route.scaled:
            raw_value = values[index]
            if raw_value is not None:  # None: a multiplexed signal not in this frame
                values[index] = raw_value * scale + offset
        for index, lo, hi, na in route.guarded:
            raw_value = values[index]
            if raw_value is None:
                continue
            if na and raw_value in na:
                values[index] = _NOT_AVAILABLE
                stats[1] += 1
            elif not lo <= raw_value <= hi:
                values[index] = _OUT_OF_RANGE
                stats[0] += 1
        for index, scale, offset, lo, hi, na in route.checked:
            raw_value = values[index]
            if raw_value is None:
                continue
            if na and raw_value in na:
                values[index] = _NOT_AVAILABLE
                stats[1] += 1
            elif lo <= raw_value <= hi:
                values[index] = raw_value * scale + offset
            else:
                values[index] = _OUT_OF_RANGE
                stats[0] += 1
        for index, scale, offset, lo, hi, vmin, vmax, na in route.clamped:
            raw_value = values[index]
            if raw_value is None:
                continue
            if na and raw_value in na:
                values[index] = _NOT_AVAILABLE
                stats[1] += 1
            elif lo <= raw_value <= hi:
                value = raw_value * scale + offset
                # the scaled value of a raw value in range is in range, never a rounding error outside
                values[index] = vmax if value > vmax else vmin if value < vmin else value
            else:
                values[index] = _OUT_OF_RANGE
                stats[0] += 1
        for index, scale, offset, vmin, vmax in route.floats:
            raw_value = values[index]
            if raw_value is None:
                continue
            if raw_value != raw_value:  # NaN: the IEEE "no value"
                values[index] = _NOT_AVAILABLE
                stats[1] += 1
                continue
            value = raw_value * scale + offset
            if vmin <= value <= vmax:
                values[index] = value
            else:
                values[index] = _OUT_OF_RANGE
                stats[0] += 1
        return values

    @staticmethod
    def _finish(route: _Route, values: list[Any], stats: list[int]) -> list[tuple[Topic[Any], Any]]:
        """The (topic, value) pairs of a frame's checked and scaled values: its record and mapped signals."""
        out: list[tuple[Topic[Any], Any]] = []
        if route.topic is not None:
            out.append((route.topic, route.record(*values)))
        for topic, index, scale, offset, kind, low, high in route.mapped:
            value = values[index]
            if value is None:  # a multiplexed signal not in this frame
                continue
            if value.__class__ is not NotAvailable:
                if kind is bool:
                    value = bool(value)
                else:
                    value = value * scale + offset
                    value = round(value) if kind is int else float(value)
                    if not low <= value <= high:  # the mapping's own range (NaN too)
                        value = _OUT_OF_RANGE
                        stats[0] += 1
            out.append((topic, value))
        return out

    def _values(self, route: _Route, data: bytes | bytearray, stats: list[int]) -> list[Any]:
        """Raw values in field order, the slower ways: big-endian or mixed layouts, multiplexed messages and
        those cantools unpacks in parts. None for a signal the frame does not carry."""
        if route.order:
            big, little = route.big, route.little
            raw: dict[str, Any] = {} if big is None else big(data)
            if little is not None:
                raw.update(little(data[::-1]))
            if route.order > 0 and little is None:
                return [*raw.values()]
            get = raw.get
            return [get(name) for name in route.names]
        pages = route.pages
        if pages is not None:
            top, multiplexer, layouts = pages
            raw = top(data)
            layout = layouts.get(raw[multiplexer])
            if layout is None:  # the multiplexer selects nothing the database knows
                stats[2] += 1
            else:
                raw.update(layout(data))
            get = raw.get
            return [get(name) for name in route.names]
        unpack = route.decode
        if unpack is None:
            raise FrameError("undecodable", f"{route.what}: cantools cannot unpack this message")
        try:
            raw = unpack(data, False, False)
        except cantools.database.DecodeError:
            if route.top is None:
                raise
            raw = route.top(data, False, False)  # the multiplexer selects nothing the database knows
            stats[2] += 1
        get = raw.get
        return [get(name) for name in route.names]

    # -- transmit -------------------------------------------------------------------------------------

    def _route(self, name: str) -> _Route:
        route = self._by_name.get(name)
        if route is None:
            raise EncodeError(f"no message {name!r} in the CAN database of {self.network}")
        return route

    def _message(self, name: str) -> Any:
        return self._route(name).message

    def defaults(self, message: str) -> dict[str, float]:
        """Each signal's value when nothing is given: its initial value, else 0 brought into range (the
        declared one, and what its bits carry: 0 of a signal with an offset of 2 is 2)."""
        msg = self._message(message)
        out: dict[str, float] = {}
        for s in msg.signals:
            if s.initial is not None:
                value = float(s.initial) if isinstance(s.initial, int | float) else 0.0
            else:
                value = 0.0
                low, high = _declared_range(s)
                if not s.is_float:
                    ends = _physical_extent(s)
                    low = ends[0] if low is None else max(low, ends[0])
                    high = ends[1] if high is None else min(high, ends[1])
                if low is not None and value < low:
                    value = low
                if high is not None and value > high:
                    value = high
            out[s.name] = value
        return out

    def encode(
        self, message: str, signals: Mapping[str, float], *, base: Mapping[str, float] | None = None
    ) -> Frame:
        """A frame of ``message`` with ``signals`` set, the others from ``base`` or their `defaults`.

        For a multiplexed message only the signals its multiplexer values select are sent (so giving the
        multiplexer and the signals of its page is enough). Raises `EncodeError` naming the message and the
        signal for unknown signals and values out of range (the declared range, give or take cantools'
        tolerance of a millionth of the scale; raw values the database names in its value descriptions are
        allowed, as cantools allows them).
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
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise EncodeError(f"{message}.{name}: expected a finite number, got {value!r}")
            self._check_range(msg, known[name], value)
            values[name] = value
        if msg.is_multiplexed():
            values = self._selected(msg, values, signals)
        try:
            data = msg.encode(values, scaling=True, strict=True)
        except Exception as exc:
            raise EncodeError(f"{message}: cannot encode: {exc}") from None
        return Frame(msg.frame_id, bytes(data), bool(msg.is_extended_frame), bool(msg.is_fd))

    @staticmethod
    def _check_range(msg: Any, signal: Any, value: float) -> None:
        """Refuse a value outside the signal's declared range (unless a value description names its raw
        value, as cantools allows) or beyond what its bits carry."""
        unit = f" {signal.unit}" if signal.unit else ""
        low, high = _declared_range(signal)
        tolerance = abs(signal.scale) * 1e-6
        if (low is not None and value < low - tolerance) or (high is not None and value > high + tolerance):
            try:
                raw = signal.conversion.numeric_scaled_to_raw(value) if signal.choices else None
            except Exception:
                raw = None
            if raw is None or raw not in signal.choices:
                raise EncodeError(
                    f"{msg.name}.{signal.name}: {value!r} is out of range [{low}, {high}]{unit}"
                )
        if not signal.is_float:
            first, last = _physical_extent(signal)
            half = abs(signal.scale) / 2  # what rounds to the first or last raw value
            if not first - half < value < last + half:
                raise EncodeError(
                    f"{msg.name}.{signal.name}: {value!r} is more than its {signal.length} bits carry "
                    f"[{first:g}, {last:g}]{unit}"
                )

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
