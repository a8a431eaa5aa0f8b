"""Permission sets: which names a bus client may publish, subscribe, serve and call."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import ClassVar

import attrs

from bus._pattern import check_pattern, covers, matches


class Action(enum.Enum):
    """An operation a bus client can be granted."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    SERVE = "serve"
    CALL = "call"
    #: Subscribe with ``overflow="block"``: a queue that publishers which wait (``await publish``) wait for.
    BLOCK = "block"


def _patterns(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    return tuple(check_pattern(v) for v in values)


@attrs.frozen
class Permissions:
    """Patterns a client may publish, subscribe to, serve and call, and subscribe to with a ``block`` queue.

    Everything not granted is denied. ``block`` is the right to make publishers that wait (``await
    publish``) wait for this client's queue: a subscription with ``overflow="block"`` needs both
    ``subscribe`` and a ``block`` pattern covering its pattern. ``Permissions.ALL`` grants everything (the
    default for a client of an in-process bus created without a manifest); ``Permissions.NONE`` nothing.
    """

    publish: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    subscribe: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    serve: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    call: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    block: tuple[str, ...] = attrs.field(default=(), converter=_patterns)

    ALL: ClassVar[Permissions]
    NONE: ClassVar[Permissions]

    def allows(self, action: Action, name: str) -> bool:
        """True if ``name`` (a topic or method name, or for SUBSCRIBE and BLOCK a pattern) is granted."""
        grants: tuple[str, ...] = getattr(self, action.value)
        if action is Action.SUBSCRIBE or action is Action.BLOCK:
            return any(covers(g, name) for g in grants)
        return any(matches(g, name) for g in grants)


Permissions.ALL = Permissions(publish=("**",), subscribe=("**",), serve=("**",), call=("**",), block=("**",))
Permissions.NONE = Permissions()
