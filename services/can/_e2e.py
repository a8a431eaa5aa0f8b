"""End-to-end (E2E) protection of CAN messages: CRCs and alive counters as AUTOSAR's E2E profiles define
them, Volkswagen's MQB variant, and Tesla's checksum. Pure logic: no I/O, no clock.

An `E2E` is the configuration of one message's protection (a TOML table of the gateway's config).
`E2E.bind` fits it to the message's layout in the database (where the CRC and the counter sit, found
from the signal names where the config does not name them) and returns an `E2EProtection`. That makes
the per-message state: an `E2EChecker` for received frames (``check(data)`` is None or a short reason)
and an `E2EProtector` for sent frames (``protect(data)`` fills in the counter and the CRC).

Profiles (see docs/can.md):

``p01``
    AUTOSAR E2E Profile 1: CRC-8/SAE-J1850 (poly 0x1D) over the 16-bit data id (modes both, alt, low,
    nibble) and the payload without the CRC byte; a 4-bit counter 0..14.
``p02``
    AUTOSAR E2E Profile 2: CRC-8/AUTOSAR (poly 0x2F, "8H2F") over the payload without the CRC byte, then
    one byte of a 16-entry data id list picked by the 4-bit counter 0..15.
``vw_mqb``
    Volkswagen MQB: Profile 2 as VW uses it, the data id list being the per-message "magic" bytes; a
    single byte stands for all 16 counter values.
``p05``
    AUTOSAR E2E Profile 5: CRC-16/CCITT-FALSE (poly 0x1021) over the payload without the two CRC bytes,
    then the 16-bit data id (low byte first); an 8-bit counter.
``tesla``
    Tesla's 8-bit checksum: the sum of the frame id's two low bytes and every other payload byte, modulo
    256 (the scheme opendbc uses for the Model 3); no published test vectors.
``counter``
    An alive counter alone (any width up to 16 bits), no CRC.

The 8-bit CRCs are 256-entry tables in Python (for classic frames about as fast as a call into a C
library); the 16-bit one is the standard library's ``binascii.crc_hqx``.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, get_args

import attrs

from services.can._codec import suggest

__all__ = [
    "E2E",
    "E2E_PROFILES",
    "E2E_REASONS",
    "E2EChecker",
    "E2EConfigError",
    "E2EProtection",
    "E2EProtector",
    "bind_e2e",
    "find_e2e_signals",
]

Profile = Literal["p01", "p02", "vw_mqb", "p05", "tesla", "counter"]
DataIdMode = Literal["both", "alt", "low", "nibble"]
Reason = Literal["length", "crc", "counter_invalid", "counter_frozen", "counter_jumped"]

#: The profiles `E2E` supports.
E2E_PROFILES: Final[tuple[str, ...]] = get_args(Profile)

#: What `E2EChecker.check` may return for a frame that fails (None means it passed):
#: ``length`` the payload is too short for the message, ``crc`` the CRC (or checksum, or P01's data id
#: nibble) is wrong, ``counter_invalid`` a counter value the profile never sends (P01's 15),
#: ``counter_frozen`` the counter did not move, ``counter_jumped`` it moved by more than
#: ``max_delta_counter``.
E2E_REASONS: Final[tuple[str, ...]] = get_args(Reason)


# -- CRCs ------------------------------------------------------------------------------------------------


def _table8(poly: int) -> tuple[int, ...]:
    """The byte-wise table of an 8-bit CRC, most significant bit first (not reflected)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_J1850: Final = _table8(0x1D)
_H2F: Final = _table8(0x2F)


def _run8(table: Sequence[int], register: int, data: Iterable[int]) -> int:
    for byte in data:
        register = table[register ^ byte]
    return register


def crc8_sae_j1850(data: bytes | bytearray) -> int:
    """CRC-8/SAE-J1850: poly 0x1D, init 0xFF, final XOR 0xFF (check value 0x4B)."""
    return _run8(_J1850, 0xFF, data) ^ 0xFF


def crc8_h2f(data: bytes | bytearray) -> int:
    """CRC-8/AUTOSAR ("8H2F"): poly 0x2F, init 0xFF, final XOR 0xFF (check value 0xDF)."""
    return _run8(_H2F, 0xFF, data) ^ 0xFF


def crc16_ccitt_false(data: bytes | bytearray) -> int:
    """CRC-16/CCITT-FALSE (IBM-3740): poly 0x1021, init 0xFFFF, no final XOR (check value 0x29B1).

    The standard library's ``binascii.crc_hqx`` is this CRC (in C) when started from 0xFFFF."""
    return binascii.crc_hqx(data, 0xFFFF)


# -- signals as bit fields -------------------------------------------------------------------------------

Payload = bytes | bytearray | memoryview


class _Field:
    """A signal's raw bits in a payload, read and written byte by byte (either byte order)."""

    __slots__ = ("end", "get", "length", "name", "segments")

    def __init__(self, signal: Any) -> None:
        self.name: str = signal.name
        self.length: int = signal.length
        # (byte, bit in byte) of each value bit, least significant first
        if signal.byte_order == "little_endian":
            bits = [divmod(signal.start + k, 8) for k in range(signal.length)]
        else:  # big endian: the start bit is the most significant, numbered as in DBC files
            msb_first = []
            pos = signal.start
            for _ in range(signal.length):
                msb_first.append(divmod(pos, 8))
                pos = pos - 1 if pos % 8 else pos + 15
            bits = msb_first[::-1]
        # runs of value bits that are consecutive bits of one byte: (byte, shift, mask, value shift)
        runs: list[list[int]] = []
        for k, (byte, bit) in enumerate(bits):
            last = runs[-1] if runs else None
            if last is not None and last[0] == byte and last[1] + last[2] == bit:
                last[2] += 1
            else:
                runs.append([byte, bit, 1, k])
        self.segments: tuple[tuple[int, int, int, int], ...] = tuple(
            (byte, shift, (1 << width) - 1, vshift) for byte, shift, width, vshift in runs
        )
        self.end: int = max(byte for byte, _ in bits) + 1  # payload bytes needed
        self.get: Callable[[Payload], int] = self._getter()

    def _getter(self) -> Callable[[Payload], int]:
        if len(self.segments) == 1:
            byte, shift, mask, _ = self.segments[0]
            if shift == 0 and mask == 0xFF:
                return lambda data: data[byte]
            return lambda data: (data[byte] >> shift) & mask
        segments = self.segments

        def get(data: Payload) -> int:
            value = 0
            for byte, shift, mask, vshift in segments:
                value |= ((data[byte] >> shift) & mask) << vshift
            return value

        return get

    def put(self, buf: bytearray, value: int) -> None:
        for byte, shift, mask, vshift in self.segments:
            buf[byte] = (buf[byte] & ~(mask << shift) & 0xFF) | (((value >> vshift) & mask) << shift)

    def bits(self) -> set[int]:
        """The payload bits it covers, as byte * 8 + bit."""
        return {
            byte * 8 + bit
            for byte, shift, mask, _ in self.segments
            for bit in range(shift, shift + mask.bit_length())
        }

    def whole_bytes(self) -> tuple[int, int] | None:
        """(first, end) if it covers exactly the bytes first..end-1, else None."""
        covered = self.bits()
        first = min(covered) // 8
        end = first + self.length // 8
        return (first, end) if self.length % 8 == 0 and covered == set(range(first * 8, end * 8)) else None


# -- configuration ---------------------------------------------------------------------------------------


@attrs.frozen
class _Rules:
    crc_bits: int | None  # None: no CRC
    counter_bits: int | None  # None: any width from 1 to 16
    modulo: int | None  # counter values run 0..modulo-1; None: 2 ** width
    data_ids: tuple[int, ...]  # how many data id values it takes
    data_id_max: int


_RULES: Final[Mapping[str, _Rules]] = {
    "p01": _Rules(8, 4, 15, (1,), 0xFFFF),
    "p02": _Rules(8, 4, 16, (16,), 0xFF),
    "vw_mqb": _Rules(8, 4, 16, (1, 16), 0xFF),
    "p05": _Rules(16, 8, 256, (1,), 0xFFFF),
    "tesla": _Rules(8, None, None, (0,), 0),
    "counter": _Rules(None, None, None, (0,), 0),
}


def _profile_of(inst: Any) -> str | None:
    profile = getattr(inst, "profile", None)
    return profile if profile in _RULES else None


def _check_message(inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a message name of the database")


def _check_profile(inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _RULES:
        raise ValueError(f"must be one of {', '.join(map(repr, E2E_PROFILES))}, not {value!r}")


def _check_mode(inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in get_args(DataIdMode):
        raise ValueError(f"must be one of {', '.join(map(repr, get_args(DataIdMode)))}, not {value!r}")
    profile = _profile_of(inst)
    if profile is not None and profile != "p01" and value != "both":
        raise ValueError(f"is for profile 'p01' only (this one is {profile!r})")


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    if isinstance(values, int | str | bytes):
        raise TypeError(f"must be an array of integers ([0x123] for one), not {values!r}")
    return tuple(values)


def _item_problem(ids: Sequence[int]) -> str | None:
    for i, item in enumerate(ids):
        if isinstance(item, bool) or not isinstance(item, int):
            return f"[{i}] must be an integer, not {item!r}"
    return None


def _data_id_problem(profile: str, ids: Sequence[int], mode: str, *, given: bool = True) -> str | None:
    """What is wrong with ``ids`` as the data id of ``profile`` (in P01 data id mode ``mode``), or None.
    ``given``: the config gave them (none given means "the database's", checked by `E2E.bind`), else the
    database did."""
    problem = _item_problem(ids)
    if problem is not None:
        return problem
    rules = _RULES[profile]
    if not ids and given and rules.data_ids != (0,):
        return None
    if len(ids) not in rules.data_ids:
        if rules.data_ids == (0,):
            return f"profile {profile!r} takes no data id"
        counts = " or ".join(map(str, rules.data_ids))
        what = "value" if rules.data_ids == (1,) else "values"
        source = "" if given else " in the database"
        return f"profile {profile!r} takes {counts} {what} ({_DATA_ID_HELP[profile]}), got {len(ids)}{source}"
    limit = 0x0FFF if mode == "nibble" else rules.data_id_max
    for i, item in enumerate(ids):
        if not 0 <= item <= limit:
            return f"[{i}] {item:#x} is out of range 0..{limit:#x}"
    return None


def _check_data_id(inst: Any, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
    profile = _profile_of(inst)
    mode = getattr(inst, "data_id_mode", "both")
    # with no valid profile (reported at its key) only the items can be checked
    problem = _item_problem(value) if profile is None else _data_id_problem(profile, value, mode)
    if problem is not None:
        raise ValueError(problem)


def _database_data_ids(message: Any) -> tuple[int, ...]:
    """The data ids an AUTOSAR (ARXML) database gives for ``message``, if any."""
    autosar = getattr(message, "autosar", None)
    e2e = getattr(autosar, "e2e", None)
    return tuple(getattr(e2e, "data_ids", None) or ())


_DATA_ID_HELP: Final = {
    "p01": "the 16-bit data id",
    "p02": "the data id list, one byte per counter value",
    "vw_mqb": "the message's magic byte, or one per counter value",
    "p05": "the 16-bit data id",
}


def _check_name(inst: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("must be a signal name of the message")
    if value is None:
        return
    profile = _profile_of(inst)
    if attribute.name == "crc_signal" and profile == "counter":
        raise ValueError("profile 'counter' has no CRC")


def _check_nibble(inst: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    _check_name(inst, attribute, value)
    nibble = getattr(inst, "data_id_mode", "both") == "nibble"
    if nibble and value is None:
        raise ValueError("data_id_mode 'nibble' needs the signal that carries the data id's high nibble")
    if not nibble and value is not None:
        raise ValueError("is for data_id_mode 'nibble' only")


def _check_counter_flag(inst: Any, attribute: attrs.Attribute[bool], value: bool) -> None:
    if value is False and _profile_of(inst) == "counter":
        raise ValueError(
            "profile 'counter' with check_counter = false checks nothing: check it, or drop the entry"
        )


def _check_delta(inst: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an integer of at least 1, not {value!r}")


@attrs.frozen(kw_only=True)
class E2E:
    """End-to-end protection of one message: which profile, where its CRC and counter are, its data id.

    A TOML table of the gateway's config (``[[services.NAME.config.e2e]]``). What the database tells is
    the default: the CRC and counter signals are the message's signals named like them (``CHECKSUM``,
    ``*_CRC``, ``*Checksum``; ``COUNTER``, ``*_BZ``, ``*Counter``, ``*_SQC``), the data id is the one an
    AUTOSAR (ARXML) database gives. `bind` fits the config to the message and reports what does not fit.
    """

    message: str = attrs.field(validator=_check_message, metadata={"help": "the message's name"})
    profile: Profile = attrs.field(
        validator=_check_profile, metadata={"help": "p01 | p02 | vw_mqb | p05 | tesla | counter"}
    )
    data_id_mode: DataIdMode = attrs.field(
        default="both",
        validator=_check_mode,
        metadata={"help": "p01: how the data id enters the CRC (both | alt | low | nibble)"},
    )
    data_id: tuple[int, ...] = attrs.field(
        default=(),
        converter=_ints,
        validator=_check_data_id,
        metadata={"help": "p01/p05: [id]; p02: 16 bytes; vw_mqb: 1 or 16 bytes; default: the database's"},
    )
    crc_signal: str | None = attrs.field(
        default=None, validator=_check_name, metadata={"help": "default: the signal named like a CRC"}
    )
    counter_signal: str | None = attrs.field(
        default=None, validator=_check_name, metadata={"help": "default: the signal named like a counter"}
    )
    nibble_signal: str | None = attrs.field(
        default=None,
        validator=_check_nibble,
        metadata={"help": "p01 nibble mode: the signal that carries the data id's high nibble"},
    )
    max_delta_counter: int = attrs.field(
        default=2,
        validator=_check_delta,
        metadata={"help": "the largest counter step still accepted (2: one frame lost)"},
    )
    check_counter: bool = attrs.field(
        default=True,
        validator=_check_counter_flag,
        metadata={"help": "false: the counter only enters the CRC, its steps are not checked"},
    )

    def bind(self, message: Any) -> E2EProtection:
        """This protection fitted to ``message`` (a cantools ``Message``).

        Raises `E2EConfigError` naming each key that does not fit the message (a missing or ambiguous
        signal, a wrong width, a CRC not on whole bytes, overlapping fields, a counter step too large).
        """
        return E2EProtection(self, message)


class E2EConfigError(ValueError):
    """E2E configs that do not fit the database. ``problems`` holds (key path, message) pairs; the key path
    is relative to the config (``("crc_signal",)``) or, from `bind_e2e`, to the list (``(3, "crc_signal")``).
    """

    def __init__(self, problems: Sequence[tuple[tuple[int | str, ...], str]]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{_path_text(path)}: {text}" for path, text in self.problems))


def _path_text(path: tuple[int | str, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# -- finding the signals ---------------------------------------------------------------------------------

_CRC_SUFFIXES: Final = ("checksum", "crc", "chksum")
_COUNTER_SUFFIXES: Final = ("counter", "_bz", "_sqc")


def _suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The part of ``name`` before one of ``suffixes`` (case-insensitive), or None."""
    lowered = name.lower()
    for suffix in suffixes:
        if lowered.endswith(suffix):
            return name[: len(name) - len(suffix)].rstrip("_")
    if lowered in ("bz", "sqc") and suffixes is _COUNTER_SUFFIXES:
        return ""
    return None


def _candidates(message: Any, suffixes: tuple[str, ...]) -> dict[str, str]:
    """Signal name -> its prefix, for the message's plain (not multiplexed) signals named with a suffix."""
    out = {}
    for signal in message.signals:
        prefix = _suffix(signal.name, suffixes)
        if prefix is not None and signal.multiplexer_ids is None and not signal.is_multiplexer:
            out[signal.name] = prefix
    return out


def _pick(message: Any) -> tuple[list[str], list[str]]:
    """The CRC candidates and the counter candidates, the counters that pair with the CRC first."""
    crcs = _candidates(message, _CRC_SUFFIXES)
    counters = _candidates(message, _COUNTER_SUFFIXES)
    if len(crcs) == 1:
        (prefix,) = crcs.values()
        paired = [name for name, p in counters.items() if p.lower() == prefix.lower()]
        if len(paired) == 1:
            return list(crcs), paired
    return list(crcs), list(counters)


def find_e2e_signals(message: Any) -> tuple[str | None, str | None]:
    """The CRC signal and the alive counter signal of a cantools ``Message``, found by their names.

    CRCs: ``CHECKSUM``, ``CRC``, ``*_CRC``, ``*Checksum``; counters: ``COUNTER``, ``BZ``, ``*_BZ``
    (Volkswagen's *Botschaftszähler*), ``SQC``, ``*_SQC``, ``*Counter``. Where several signals look like
    a counter, the one with the CRC's prefix is taken (``DAS_controlChecksum`` pairs with
    ``DAS_controlCounter``). None for
    none, or for more than one that fit equally. Multiplexed signals are never taken.
    """
    crcs, counters = _pick(message)
    return (crcs[0] if len(crcs) == 1 else None, counters[0] if len(counters) == 1 else None)


# -- a protection bound to a message ---------------------------------------------------------------------


class E2EProtection:
    """An `E2E` fitted to its message's layout. Immutable; makes the per-message state objects.

    ``crc_signal`` and ``counter_signal`` are the signals it uses (None where the profile has none),
    ``data_id`` the data id (the config's, else the database's), ``counter_modulo`` how many counter
    values there are (P01: 15). What a protector writes into them overrides whatever the payload held.
    The CRC covers the message's length (``length``): bytes beyond it are not looked at. ``frame_id`` and
    ``extended`` name the message's route.
    """

    def __init__(self, config: E2E, message: Any) -> None:
        self.config = config
        self.message: str = message.name
        self.frame_id: int = message.frame_id
        self.extended: bool = bool(message.is_extended_frame)
        self.length: int = message.length
        rules = _RULES[config.profile]
        problems: list[tuple[tuple[int | str, ...], str]] = []
        signals = {s.name: s for s in message.signals}
        crcs, counters = _pick(message)

        def field(key: str, given: str | None, found: list[str], what: str) -> _Field | None:
            if given is None:
                if len(found) != 1:
                    several = f"several signals look like {what} ({', '.join(found)})"
                    text = several if found else f"no signal is named like {what}"
                    problems.append(((key,), f"{message.name}: {text}; name one with {key}"))
                    return None
                given = found[0]
            signal = signals.get(given)
            if signal is None:
                problems.append(((key,), f"{message.name} has no signal {given!r}{suggest(given, signals)}"))
                return None
            if signal.multiplexer_ids is not None or signal.is_multiplexer:
                problems.append(((key,), f"{message.name}.{given} is multiplexed; E2E fields cannot be"))
                return None
            if signal.is_float:
                problems.append(((key,), f"{message.name}.{given} is a float signal"))
                return None
            return _Field(signal)

        crc = counter = nibble = None
        if rules.crc_bits is not None:
            crc = field("crc_signal", config.crc_signal, crcs, "a CRC")
            if crc is not None:
                if crc.length != rules.crc_bits:
                    problems.append(
                        (
                            ("crc_signal",),
                            f"{message.name}.{crc.name} has {crc.length} bits; profile {config.profile!r} "
                            f"needs {rules.crc_bits}",
                        )
                    )
                elif crc.whole_bytes() is None:
                    problems.append(
                        (("crc_signal",), f"{message.name}.{crc.name} does not lie on whole bytes")
                    )
        # tesla: a checksum, with a counter where one is named or found; every other profile has one
        if config.profile != "tesla" or config.counter_signal is not None or counters:
            counter = field("counter_signal", config.counter_signal, counters, "an alive counter")
            if counter is not None:
                wanted = rules.counter_bits
                if wanted is not None and counter.length != wanted:
                    problems.append(
                        (
                            ("counter_signal",),
                            f"{message.name}.{counter.name} has {counter.length} bits; profile "
                            f"{config.profile!r} needs {wanted}",
                        )
                    )
                elif wanted is None and counter.length > 16:
                    problems.append(
                        (
                            ("counter_signal",),
                            f"{message.name}.{counter.name} has {counter.length} bits, more than 16",
                        )
                    )
        if config.data_id_mode == "nibble" and config.nibble_signal is not None:
            nibble = field("nibble_signal", config.nibble_signal, [], "a data id nibble")
            if nibble is not None and nibble.length != 4:
                problems.append(
                    (("nibble_signal",), f"{message.name}.{nibble.name} has {nibble.length} bits, not 4")
                )
        data_id = config.data_id
        if not data_id and rules.data_ids != (0,):
            data_id = _database_data_ids(message)
            if not data_id:
                problems.append(
                    (
                        ("data_id",),
                        f"{message.name}: profile {config.profile!r} needs "
                        f"{_DATA_ID_HELP[config.profile]}; the database gives none",
                    )
                )
            else:
                problem = _data_id_problem(config.profile, data_id, config.data_id_mode, given=False)
                if problem is not None:
                    problems.append((("data_id",), f"{message.name}: {problem}"))
        fields = {"crc_signal": crc, "counter_signal": counter, "nibble_signal": nibble}
        named = [(k, f) for k, f in fields.items() if f is not None]
        for i, (key, f) in enumerate(named):
            if f.end > message.length:
                problems.append(
                    ((key,), f"{message.name}.{f.name} ends beyond the message's {message.length} bytes")
                )
            for _, other in named[:i]:
                if f.bits() & other.bits():
                    problems.append(((key,), f"{message.name}.{f.name} overlaps {other.name}"))
        modulo = rules.modulo if rules.modulo is not None else (1 << counter.length if counter else 1)
        if counter is not None and config.check_counter and config.max_delta_counter >= modulo:
            problems.append(
                (
                    ("max_delta_counter",),
                    f"{config.max_delta_counter} is not less than the {modulo} counter values: a jump could "
                    "never be seen",
                )
            )
        if problems:
            raise E2EConfigError(problems)

        self.crc_signal: str | None = crc.name if crc else None
        self.counter_signal: str | None = counter.name if counter else None
        self.counter_modulo: int = modulo
        self._crc_field = crc
        self._counter_field = counter
        self._nibble_field = nibble
        self._need = max((f.end for _, f in named), default=0)
        self._need = max(self._need, message.length)
        self.data_id: tuple[int, ...] = data_id
        self._compute = self._crc_function(crc) if crc is not None else None
        self._nibble = (data_id[0] >> 8) & 0x0F if nibble is not None else 0

    def _crc_function(self, crc: _Field) -> Callable[[Payload, int], int]:
        """``f(data, counter)``: the CRC the profile wants for the payload ``data``.

        The CRC covers the message's bytes but the CRC's own, in order: ``data[:lo]`` and ``data[hi:n]``.
        Written for speed: the tables are closure variables, and a CRC in byte 0 (the usual place) skips
        the empty first part.
        """
        span = crc.whole_bytes()
        assert span is not None
        lo, hi = span
        n = self.length
        config = self.config
        ids = self.data_id
        profile = config.profile

        if profile == "p01":
            j1850 = _J1850
            low, high = ids[0] & 0xFF, (ids[0] >> 8) & 0xFF
            # P01 chains CRC-8/SAE-J1850 from the register 0x00 and ends with no final XOR (AUTOSAR's
            # start value 0xFF and its final XOR cancel out); the data id comes first, so the register
            # after it is worked out here, per counter value (mode alt takes the high byte when odd)
            first: dict[str, Callable[[int], tuple[int, ...]]] = {
                "both": lambda c: (low, high),
                "low": lambda c: (low,),
                "nibble": lambda c: (low, 0),
                "alt": lambda c: (high,) if c % 2 else (low,),
            }
            starts = tuple(_run8(j1850, 0x00, first[config.data_id_mode](c)) for c in range(16))

            def p01(data: Payload, counter: int) -> int:
                register = starts[counter]
                for byte in data[:lo]:
                    register = j1850[register ^ byte]
                for byte in data[hi:n]:
                    register = j1850[register ^ byte]
                return register

            return p01

        if profile in ("p02", "vw_mqb"):
            h2f = _H2F
            id_list = ids * 16 if len(ids) == 1 else ids
            if lo == 0:

                def p02_first(data: Payload, counter: int) -> int:
                    register = 0xFF
                    for byte in data[hi:n]:
                        register = h2f[register ^ byte]
                    return h2f[register ^ id_list[counter]] ^ 0xFF

                return p02_first

            def p02(data: Payload, counter: int) -> int:
                register = 0xFF
                for byte in data[:lo]:
                    register = h2f[register ^ byte]
                for byte in data[hi:n]:
                    register = h2f[register ^ byte]
                return h2f[register ^ id_list[counter]] ^ 0xFF

            return p02

        if profile == "p05":
            id_bytes = bytes((ids[0] & 0xFF, (ids[0] >> 8) & 0xFF))
            crc_hqx = binascii.crc_hqx  # CRC-16/CCITT-FALSE when started from 0xFFFF

            def p05(data: Payload, counter: int) -> int:
                register = crc_hqx(data[:lo], 0xFFFF) if lo else 0xFFFF
                return crc_hqx(id_bytes, crc_hqx(data[hi:n], register))

            return p05

        assert profile == "tesla"
        id_sum = (self.frame_id & 0xFF) + ((self.frame_id >> 8) & 0xFF)

        def tesla(data: Payload, counter: int) -> int:
            return (id_sum + sum(data[:lo]) + sum(data[hi:n])) & 0xFF

        return tesla

    def expected_crc(self, data: Payload) -> int | None:
        """The CRC the profile wants for ``data`` with the counter it holds (None: no CRC, or too short)."""
        if self._compute is None or len(data) < self._need:
            return None
        counter = self._counter_field.get(data) if self._counter_field is not None else 0
        return self._compute(data, counter)

    def checker(self) -> E2EChecker:
        """A new checker of received frames, with no counter seen yet."""
        return E2EChecker(self)

    def protector(self, counter: int = 0) -> E2EProtector:
        """A new protector for frames to send; the first gets ``counter``."""
        return E2EProtector(self, counter)

    def __repr__(self) -> str:
        return (
            f"E2EProtection({self.message!r}, profile={self.config.profile!r}, crc={self.crc_signal!r}, "
            f"counter={self.counter_signal!r})"
        )


class E2EChecker:
    """The receive side of one message's protection: checks each frame's CRC and counter step.

    `check` returns None for a frame that passes, else a reason from `E2E_REASONS`. It never raises,
    whatever the payload. A frame with a wrong CRC leaves the counter state alone; a counter that jumped
    becomes the reference for the next frame (one bad frame, then in step again); a frozen one is
    reported every time it repeats. `reset` forgets the last counter (after the link was down).
    """

    __slots__ = (
        "_check_counter",
        "_compute",
        "_counter",
        "_crc",
        "_last",
        "_max_delta",
        "_modulo",
        "_need",
        "_nibble",
        "_nibble_value",
        "protection",
    )

    def __init__(self, protection: E2EProtection) -> None:
        self.protection = protection
        self._need = protection._need
        self._crc = protection._crc_field.get if protection._crc_field is not None else None
        self._compute = protection._compute
        self._counter = protection._counter_field.get if protection._counter_field is not None else None
        self._nibble = protection._nibble_field.get if protection._nibble_field is not None else None
        self._nibble_value = protection._nibble
        self._modulo = protection.counter_modulo
        self._max_delta = protection.config.max_delta_counter
        self._check_counter = protection.config.check_counter and self._counter is not None
        self._last = -1

    def reset(self) -> None:
        """Forget the last counter: the next frame's counter is taken as it is."""
        self._last = -1

    def check(self, data: Payload) -> str | None:
        """None if ``data`` passes, else why not: ``length``, ``crc``, ``counter_invalid``,
        ``counter_frozen`` or ``counter_jumped``."""
        if len(data) < self._need:
            return "length"
        counter = self._counter(data) if self._counter is not None else 0
        if counter >= self._modulo:  # P01 never sends 15
            return "counter_invalid"
        if self._crc is not None:
            assert self._compute is not None
            if self._crc(data) != self._compute(data, counter):
                return "crc"
            if self._nibble is not None and self._nibble(data) != self._nibble_value:
                return "crc"
        if not self._check_counter:
            return None
        last = self._last
        self._last = counter
        if last < 0:
            return None
        delta = (counter - last) % self._modulo
        if delta == 0:
            return "counter_frozen"
        if delta > self._max_delta:
            return "counter_jumped"
        return None


class E2EProtector:
    """The send side of one message's protection: fills each payload's counter and CRC.

    `protect` returns the payload with the counter (advanced by one per call, wrapping at the profile's
    modulo) and the CRC written into their signals, overriding what they held.
    """

    __slots__ = ("_counter", "protection")

    def __init__(self, protection: E2EProtection, counter: int = 0) -> None:
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise TypeError(f"the first counter must be an integer, not {counter!r}")
        if not 0 <= counter < protection.counter_modulo:
            raise ValueError(
                f"{protection.message}: the first counter must be 0..{protection.counter_modulo - 1}, "
                f"not {counter}"
            )
        self.protection = protection
        self._counter = counter

    @property
    def counter(self) -> int:
        """The counter the next protected payload gets."""
        return self._counter

    def advance(self) -> None:
        """Move the counter one step (what `protect` does unless told not to)."""
        self._counter = (self._counter + 1) % self.protection.counter_modulo

    def protect(self, data: Payload, *, advance: bool = True) -> bytes:
        """``data`` with its counter and CRC filled in. Raises ValueError if it is shorter than the
        message. With ``advance=False`` the counter stays where it is until `advance` (call it once the
        frame was sent: a frame that was not sent takes no counter value)."""
        p = self.protection
        if len(data) < p._need:
            raise ValueError(
                f"{p.message}: a payload of {len(data)} bytes is too short for the message's {p._need} bytes"
            )
        buf = bytearray(data)
        counter = self._counter
        if p._counter_field is not None:
            p._counter_field.put(buf, counter)
            if advance:
                self.advance()
        if p._nibble_field is not None:
            p._nibble_field.put(buf, p._nibble)
        if p._crc_field is not None:
            assert p._compute is not None
            p._crc_field.put(buf, p._compute(buf, counter))
        return bytes(buf)


def bind_e2e(configs: Sequence[E2E], database: Any) -> dict[str, E2EProtection]:
    """Each config fitted to its message of the cantools ``database``, by message name.

    Raises `E2EConfigError` listing every problem at once, at key paths ``(index, key)``: a message the
    database lacks, a second config for the same message, and whatever `E2E.bind` finds.
    """
    problems: list[tuple[tuple[int | str, ...], str]] = []
    out: dict[str, E2EProtection] = {}
    by_name = {m.name: m for m in database.messages}
    for i, config in enumerate(configs):
        message = by_name.get(config.message)
        if message is None:
            problems.append(
                (
                    (i, "message"),
                    f"no message {config.message!r} in the database{suggest(config.message, by_name)}",
                )
            )
            continue
        if config.message in out:
            problems.append(((i, "message"), f"a second E2E config for {config.message}"))
            continue
        try:
            out[config.message] = config.bind(message)
        except E2EConfigError as exc:
            problems.extend(((i, *path), text) for path, text in exc.problems)
    if problems:
        raise E2EConfigError(problems)
    return out
