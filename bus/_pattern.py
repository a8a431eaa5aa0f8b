"""Topic names and subscription patterns: pure functions, no I/O.

A name is a dot-path of segments (``Vehicle.Cabin.Door.Row1.Left.IsLocked``). A pattern is a name whose
segments may also be ``*`` (exactly one segment) or ``**`` (any number of segments, zero included, so
``Vehicle.**`` matches ``Vehicle`` itself too, as in Eclipse Zenoh's key expressions).

Names and patterns are bounded (`MAX_NAME_LENGTH` characters, `MAX_SEGMENTS` segments of at most
`MAX_SEGMENT_LENGTH` characters each): anything longer is a `TopicError`, found in time linear in the
limit, not in the text. Matching and coverage run the pattern as an automaton over the other's segment
positions kept as bits of one int: one step per pattern segment, no recursion, no backtracking.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from bus._errors import TopicError, shown

#: The longest name or pattern, in characters.
MAX_NAME_LENGTH: Final = 1024
#: The most segments a name or pattern has.
MAX_SEGMENTS: Final = 64
#: The longest segment, in characters.
MAX_SEGMENT_LENGTH: Final = 128

_SEGMENT = re.compile(r"[A-Za-z0-9_]+\Z")
_FIRST = re.compile(r"[A-Za-z_]")


def _check_bounds(text: str, what: str) -> list[str]:
    """The segments of ``text``, or `TopicError` if it is longer than the bounds allow."""
    if len(text) > MAX_NAME_LENGTH:
        raise TopicError(
            f"{what} {shown(text)} is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    segments = text.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise TopicError(f"{what} {shown(text)} has {len(segments)} segments; the limit is {MAX_SEGMENTS}")
    for segment in segments:
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise TopicError(
                f"{what} {shown(text)}: segment {shown(segment)} is {len(segment)} characters long; "
                f"the limit is {MAX_SEGMENT_LENGTH}"
            )
    return segments


def check_name(name: str, *, what: str = "topic name") -> str:
    """Return ``name`` if it is a valid dot-path, else raise `TopicError` saying what is wrong."""
    if not isinstance(name, str):
        raise TopicError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise TopicError(f"{what} is empty")
    segments = _check_bounds(name, what)
    if not _FIRST.match(name):
        raise TopicError(f"{what} {shown(name)} must start with a letter or underscore")
    for segment in segments:
        if not _SEGMENT.match(segment):
            raise TopicError(
                f"{what} {shown(name)}: segment {shown(segment)} must be non-empty letters, digits or "
                "underscores"
            )
    return name


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise `TopicError`."""
    if not isinstance(pattern, str):
        raise TopicError(f"pattern must be a str, not {type(pattern).__name__}")
    if not pattern:
        raise TopicError("pattern is empty")
    for segment in _check_bounds(pattern, "pattern"):
        if segment in ("*", "**"):
            continue
        if not _SEGMENT.match(segment):
            raise TopicError(
                f"pattern {shown(pattern)}: segment {shown(segment)} must be a name segment, '*' or '**' "
                "(wildcards stand alone between dots)"
            )
    return pattern


def is_pattern(text: str) -> bool:
    """True if ``text`` contains a wildcard segment."""
    return "*" in text


@functools.lru_cache(maxsize=4096)
def _split(text: str) -> tuple[str, ...]:
    """The segments of a name or pattern; `TopicError` beyond the bounds (never cached)."""
    return tuple(_check_bounds(text, "name or pattern"))


def matches(pattern: str, name: str) -> bool:
    """True if the topic ``name`` matches ``pattern``. `TopicError` if either is beyond the bounds."""
    if "*" not in pattern:
        return pattern == name
    return _run(_split(pattern), _masks(name))


def covers(grant: str, requested: str) -> bool:
    """True if every name that ``requested`` matches is also matched by ``grant``.

    Used for permissions: a client granted ``Vehicle.**`` may subscribe to ``Vehicle.Cabin.*`` but not to
    ``**``. The check is structural and sound: it never says yes when some name would escape the grant.
    `TopicError` if either is beyond the bounds.
    """
    return _run(_split(grant), _masks(requested))


class _Masks:
    """A name or requested pattern of n segments as bit masks over its positions 0..n-1: for each
    distinct segment, where it occurs; where a one-segment wildcard may go (``*`` of a pattern matches
    any segment of a name, and covers any requested segment but ``**``)."""

    __slots__ = ("by_segment", "n", "one", "two")

    def __init__(self, segments: tuple[str, ...]) -> None:
        self.n = len(segments)
        by_segment: dict[str, int] = {}
        two = 0
        for j, segment in enumerate(segments):
            by_segment[segment] = by_segment.get(segment, 0) | (1 << j)
            if segment == "**":
                two |= 1 << j
        self.by_segment = by_segment
        self.two = two
        self.one = ((1 << self.n) - 1) & ~two


@functools.lru_cache(maxsize=4096)
def _masks(text: str) -> _Masks:
    return _Masks(_split(text))


def _run(pattern: tuple[str, ...], target: _Masks) -> bool:
    """Whether ``pattern`` matches a name, or covers a requested pattern: the target. An NFA run over the
    target's positions held in one int (bit j: the pattern so far can have consumed exactly the first j
    segments), one step per pattern segment, no recursion, no backtracking. ``**`` reaches every
    position from the lowest reached one on (it absorbs any run, wildcards included); ``*`` advances over
    one segment that is not a requested ``**`` (which only ``**`` covers); a name segment advances over
    an equal segment only (never over a requested ``*``)."""
    full = (1 << (target.n + 1)) - 1
    by_segment = target.by_segment
    one = target.one
    row = 1
    for segment in pattern:
        if segment == "**":
            row = full & ~((row & -row) - 1)
        elif segment == "*":
            row = (row & one) << 1
        else:
            row = (row & by_segment.get(segment, 0)) << 1
        if not row:
            return False
    return bool(row >> target.n & 1)
