"""Topic names and subscription patterns: pure functions, no I/O.

A name is a dot-path of segments (``Vehicle.Cabin.Door.Row1.Left.IsLocked``). A pattern is a name whose
segments may also be ``*`` (exactly one segment) or ``**`` (any number of segments, zero included, so
``Vehicle.**`` matches ``Vehicle`` itself too, as in Eclipse Zenoh's key expressions).
"""

from __future__ import annotations

import functools
import re

from bus._errors import TopicError

_SEGMENT = re.compile(r"[A-Za-z0-9_]+\Z")
_FIRST = re.compile(r"[A-Za-z_]")


def check_name(name: str, *, what: str = "topic name") -> str:
    """Return ``name`` if it is a valid dot-path, else raise `TopicError` saying what is wrong."""
    if not isinstance(name, str):
        raise TopicError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise TopicError(f"{what} is empty")
    if not _FIRST.match(name):
        raise TopicError(f"{what} {name!r} must start with a letter or underscore")
    for segment in name.split("."):
        if not _SEGMENT.match(segment):
            raise TopicError(
                f"{what} {name!r}: segment {segment!r} must be non-empty letters, digits or underscores"
            )
    return name


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise `TopicError`."""
    if not isinstance(pattern, str):
        raise TopicError(f"pattern must be a str, not {type(pattern).__name__}")
    if not pattern:
        raise TopicError("pattern is empty")
    for segment in pattern.split("."):
        if segment in ("*", "**"):
            continue
        if not _SEGMENT.match(segment):
            raise TopicError(
                f"pattern {pattern!r}: segment {segment!r} must be a name segment, '*' or '**' "
                "(wildcards stand alone between dots)"
            )
    return pattern


def is_pattern(text: str) -> bool:
    """True if ``text`` contains a wildcard segment."""
    return "*" in text


@functools.lru_cache(maxsize=4096)
def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def matches(pattern: str, name: str) -> bool:
    """True if the topic ``name`` matches ``pattern``."""
    if "*" not in pattern:
        return pattern == name
    return _match(_split(pattern), _split(name))


@functools.lru_cache(maxsize=65536)
def _match(pat: tuple[str, ...], segs: tuple[str, ...]) -> bool:
    if not pat:
        return not segs
    head = pat[0]
    if head == "**":
        return any(_match(pat[1:], segs[i:]) for i in range(len(segs) + 1))
    if not segs:
        return False
    if head == "*" or head == segs[0]:
        return _match(pat[1:], segs[1:])
    return False


def covers(grant: str, requested: str) -> bool:
    """True if every name that ``requested`` matches is also matched by ``grant``.

    Used for permissions: a client granted ``Vehicle.**`` may subscribe to ``Vehicle.Cabin.*`` but not to
    ``**``. The check is structural and sound: it never says yes when some name would escape the grant.
    """
    return _covers(_split(grant), _split(requested))


@functools.lru_cache(maxsize=4096)
def _covers(grant: tuple[str, ...], req: tuple[str, ...]) -> bool:
    if not grant:
        return not req
    head = grant[0]
    if head == "**":
        # ``**`` in the grant may absorb any run of requested segments, wildcards included.
        return any(_covers(grant[1:], req[i:]) for i in range(len(req) + 1))
    if not req:
        return False
    if req[0] == "**":
        return False  # only a grant ``**`` can absorb a requested ``**``
    if head == "*" or head == req[0]:
        return _covers(grant[1:], req[1:])
    return False
