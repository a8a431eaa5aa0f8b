"""Loading CAN databases as real vehicles' files are: in whatever encoding they were written, and with the
faults common exports have repaired before cantools sees them (each repair named in `database_warnings`).

The repairs work on the DBC text as cantools' own DBC tokenizer splits it (so strings and comments are
never touched), and change only what cantools refuses or misreads:

* a message id above 0x7FF without the extended flag (bit 31): cantools refuses the file ("Standard frame
  id 0x... is more than 11 bits"), strict or not. The id is flagged wherever the file names the message.
* a multiplexed signal marked with a bare ``m`` (its multiplexer values only in ``SG_MUL_VAL_``): cantools
  cannot read the file. The marker gets its first multiplexer value from ``SG_MUL_VAL_``.
* a multiplexer marked ``m`` or ``m<value>`` (not ``M``) while ``SG_MUL_VAL_`` names it as the
  multiplexer of other signals: cantools reads it as a plain signal and never decodes the signals it
  selects. It is marked ``M`` (``m<value>M`` when it is itself multiplexed).

After loading, a message longer than 8 bytes is CAN FD whether or not its ``VFrameFormat`` says so.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import os
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import cantools
import cantools.database

#: The extended-frame flag of a message id in a DBC file (and of SocketCAN's ``can_id``).
EXTENDED_FLAG: Final = 0x80000000

#: The formats cantools reads, by file name extension (anything else: cantools tries each).
_FORMATS: Final = frozenset({"dbc", "kcd", "sym", "arxml", "cdd"})

#: Tokens after which the DBC grammar has a message id (``BO_ 1234 Name:``, ``CM_ SG_ 1234 ...``,
#: ``BA_ "x" BO_ 1234 ...``, ``VAL_ 1234 ...``, ...). ``BU_BO_REL_`` has a node name before it.
_ID_AFTER: Final = frozenset(
    {"BO_", "SG_", "BO_TX_BU_", "VAL_", "SIG_VALTYPE_", "SG_MUL_VAL_", "SIG_GROUP_", "SIG_TYPE_REF_"}
)

#: At most this many names in one warning line; the rest are counted.
_NAMES_SHOWN: Final = 20

#: What each loaded database needed repaired, for `database_warnings`.
_WARNINGS: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


class CanDatabaseError(Exception):
    """A CAN database could not be loaded or does not fit; the message names the file and the reason."""


def load_database(path: str | os.PathLike[str], *, strict: bool = True) -> cantools.database.can.Database:
    """Load a CAN database (DBC, KCD, SYM, ARXML: whatever cantools reads).

    The text is read as UTF-8 when it is valid UTF-8, else as Windows-1252 (else Latin-1), so units such as
    ``°C`` read right whichever an export tool wrote. Common export faults are repaired, each with a warning
    (see `database_warnings`): unflagged extended ids, multiplexers and multiplexed signals marked with a
    bare ``m``, CAN FD messages without ``VFrameFormat``.

    ``strict=False`` accepts real-world files with overlapping signals or other sloppiness (such as
    opendbc's ``vw_mqb.dbc``). Raises `CanDatabaseError` naming the file and what was wrong; it says that
    ``strict = false`` would load the file only when it would.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise CanDatabaseError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CanDatabaseError(f"{path}: a directory, not a CAN database") from None
    except OSError as exc:
        raise CanDatabaseError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    extension = os.path.splitext(name)[1][1:].lower()
    fmt = extension if extension in _FORMATS else None
    text = decode_text(data)
    warnings: list[str] = []
    if fmt in ("dbc", None):
        text = repair_dbc_text(text, warnings)
    try:
        db = _parse(text, fmt, strict)
    except Exception as exc:
        hint = ""
        if strict:
            try:
                _parse(text, fmt, False)
            except Exception:
                pass
            else:
                hint = " (real-world files often need strict = false: this one loads with it)"
        raise CanDatabaseError(f"{path}: cannot load the CAN database: {exc}{hint}") from None
    if not isinstance(db, cantools.database.can.Database):
        raise CanDatabaseError(f"{path}: not a CAN database")
    _repair_loaded(db, warnings)
    _WARNINGS[db] = tuple(warnings)
    return db


def database_warnings(db: cantools.database.can.Database) -> tuple[str, ...]:
    """What `load_database` had to repair in ``db`` (one line each), or ``()``."""
    return _WARNINGS.get(db, ())


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


def decode_text(data: bytes) -> str:
    """The text of a database file: UTF-8 (with or without a byte order mark) if it is valid UTF-8, UTF-16
    with its byte order mark, else Windows-1252, else Latin-1 (which reads any bytes)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _parse(text: str, fmt: str | None, strict: bool) -> Any:
    return cantools.database.load_string(text, database_format=fmt, strict=strict)


# -- repairs of the DBC text ------------------------------------------------------------------------------


@functools.cache
def _dbc_tokenizer() -> Callable[[str], Sequence[Any]] | None:
    """cantools' own DBC tokenizer (its module moved between versions), or None where it is not found."""
    for module_name in (
        "cantools.database.can.formats.dbc.dbc_loader",
        "cantools.database.can.formats.dbc",
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        parser = getattr(module, "DbcParser", None) or getattr(module, "Parser", None)
        if parser is None:
            continue
        tokenize: Callable[[str], Sequence[Any]] | None = getattr(parser(), "tokenize", None)
        if tokenize is not None:
            return tokenize
    return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_NAMES_SHOWN])
    more = len(items) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def repair_dbc_text(text: str, warnings: list[str]) -> str:
    """``text`` with the faults described in the module's docstring repaired; a line per kind of repair is
    appended to ``warnings``. Text that cantools' tokenizer does not take is returned as it is (cantools
    then says what is wrong with it)."""
    tokenize = _dbc_tokenizer()
    if tokenize is None or "BO_" not in text:
        return text
    try:
        tokens = tokenize(text)
    except Exception:
        return text
    kinds = [t.kind for t in tokens]
    n = len(tokens)

    # What the file declares: message ids (by name), signal markers, and SG_MUL_VAL_ entries.
    messages: dict[int, str] = {}
    markers: list[tuple[int, int, str]] = []  # (token index of the marker, message id, signal name)
    selected: dict[tuple[int, str], int] = {}  # (message id, signal): its first multiplexer value
    multiplexers: dict[tuple[int, str], list[str]] = {}  # (message id, multiplexer): the signals it selects
    current: int | None = None
    for i, kind in enumerate(kinds):
        if kind == "BO_" and i + 3 < n and kinds[i + 1] == "NUMBER" and kinds[i + 2] == "WORD":
            if kinds[i + 3] == ":":
                current = _int(tokens[i + 1].value)
                if current is not None:
                    messages[current] = tokens[i + 2].value
        elif kind == "SG_" and i + 3 < n and kinds[i + 1] == "WORD" and kinds[i + 2] == "WORD":
            if kinds[i + 3] == ":" and current is not None:
                markers.append((i + 2, current, tokens[i + 1].value))
        elif kind == "SG_MUL_VAL_" and i + 4 < n and kinds[i + 1] == "NUMBER":
            ident = _int(tokens[i + 1].value)
            if ident is None or kinds[i + 2] != "WORD" or kinds[i + 3] != "WORD" or kinds[i + 4] != "NUMBER":
                continue
            low = _int(tokens[i + 4].value)
            signal, multiplexer = tokens[i + 2].value, tokens[i + 3].value
            if low is not None:
                selected.setdefault((ident, signal), low)
            multiplexers.setdefault((ident, multiplexer), []).append(signal)

    edits: list[tuple[int, int, str]] = []  # (offset, length, replacement)

    # Multiplexers not marked "M", multiplexed signals marked with a bare "m".
    bare_selected: list[str] = []
    unmarked: list[str] = []
    for index, ident, signal in markers:
        token = tokens[index]
        marker = token.value
        if not re.fullmatch(r"m\d*", marker):  # "M", "m3M": marked as multiplexers already
            continue
        value = selected.get((ident, signal))
        if marker == "m" and value is not None:
            marker = f"m{value}"
            bare_selected.append(f"{messages.get(ident, ident)}.{signal}")
        if (ident, signal) in multiplexers:
            marker = ("" if marker == "m" else marker) + "M"
            chosen = ", ".join(multiplexers[ident, signal])
            unmarked.append(f"{messages.get(ident, ident)}.{signal} (of {chosen})")
        if marker != token.value:
            edits.append((token.offset, len(token.value), marker))
    if unmarked:
        warnings.append(
            "multiplexers not marked 'M' that SG_MUL_VAL_ names as multiplexers, taken as multiplexers: "
            f"{_listed(unmarked)}"
        )
    if bare_selected:
        warnings.append(
            "multiplexed signals marked with a bare 'm', their multiplexer values taken from SG_MUL_VAL_: "
            f"{_listed(bare_selected)}"
        )

    # Unflagged extended ids: flagged wherever the file names the message.
    unflagged = {
        ident for ident in messages if 0x7FF < ident <= 0x1FFFFFFF and (ident | EXTENDED_FLAG) not in messages
    }
    if unflagged:
        for i in range(1, n):
            if kinds[i] != "NUMBER":
                continue
            before = kinds[i - 1]
            if before in _ID_AFTER or (before == "WORD" and i >= 2 and kinds[i - 2] == "BU_BO_REL_"):
                ident = _int(tokens[i].value)
                if ident in unflagged:
                    token = tokens[i]
                    edits.append((token.offset, len(token.value), str(ident | EXTENDED_FLAG)))
        named = [f"{messages[ident]} (0x{ident:X})" for ident in sorted(unflagged)]
        warnings.append(
            f"frame ids above 0x7FF without the extended flag, taken as extended: {_listed(named)}"
        )

    if not edits:
        return text
    pieces: list[str] = []
    last = 0
    for offset, length, replacement in sorted(edits):
        pieces.append(text[last:offset])
        pieces.append(replacement)
        last = offset + length
    pieces.append(text[last:])
    return "".join(pieces)


# -- repairs of the loaded database -----------------------------------------------------------------------


def _repair_loaded(db: cantools.database.can.Database, warnings: list[str]) -> None:
    """CAN FD by length; ranges declared upside down noted (the codec ignores them)."""
    fd = [m for m in db.messages if m.length > 8 and not m.is_fd]
    for message in fd:
        message.is_fd = True
    if fd:
        warnings.append(
            "messages longer than 8 bytes taken as CAN FD (no VFrameFormat says so): "
            + _listed([m.name for m in fd])
        )
    inverted = [
        f"{m.name}.{s.name}"
        for m in db.messages
        for s in m.signals
        if s.minimum is not None and s.maximum is not None and s.minimum > s.maximum
    ]
    if inverted:
        warnings.append(
            f"signals whose minimum is above their maximum, taken as unbounded: {_listed(inverted)}"
        )
