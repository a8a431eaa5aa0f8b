"""Last-known-state templates (FleetWise's "last known state"): the latest values of a signal set, shipped
on change, periodically, or on request. Pure logic (no trio); the service drives it.

A `StateTemplate` (``[[services.NAME.config.state_templates]]``) names topic patterns and how its state is
shipped: ``on_change`` stores a sample whenever a topic's value differs from the last one stored for the
template; ``periodic`` stores the latest value of every topic it has seen each ``period`` seconds, changed
or not, so the cloud's picture of the car is never older than a period; any template's whole state is
also stored on request (the service's ``Uplink.<name>.FetchState`` method, which a cloud command can be
allowed to call). The rows go through the outbox like campaigns' samples, under the template's name, so
they survive outages and restarts the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from bus import matches
from services.uplink._campaign import Keep, _as_tuple, _name_check, _same, _topics_check

__all__ = ["StateTemplate", "StateTracker", "UpdateMode"]

UpdateMode = Literal["on_change", "periodic"]

#: Rows the tracker remembers per template at most: a pattern like ``**`` on a busy bus cannot grow it
#: without bound (topics beyond are not part of the state, and counted).
MAX_TOPICS = 10_000

Row = tuple[str, Any, float, Keep]


def _update(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("on_change", "periodic"):
        raise ValueError(f"update must be 'on_change' or 'periodic', not {value!r}")


def _period(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 86_400):
        raise ValueError(f"period must be seconds > 0 and at most 86400, not {value}")


@attrs.frozen
class StateTemplate:
    """One last-known-state template: which topics, and when their latest values are shipped."""

    name: str = attrs.field(
        validator=_name_check("template"), metadata={"help": "the template's name (in batches and logs)"}
    )
    topics: tuple[str, ...] = attrs.field(
        converter=_as_tuple,
        validator=_topics_check("a state template"),
        metadata={"help": "bus topic names or patterns"},
    )
    update: UpdateMode = attrs.field(
        default="on_change",
        validator=_update,
        metadata={"help": "on_change (a sample when a value changed) | periodic (every value each period)"},
    )
    period: float | None = attrs.field(
        default=None, validator=_period, metadata={"help": "seconds; required for update 'periodic'"}
    )
    priority: int = attrs.field(default=0, metadata={"help": "as a campaign's"})
    ttl: float | None = attrs.field(default=None, metadata={"help": "as a campaign's"})

    def __attrs_post_init__(self) -> None:
        if self.update == "periodic" and self.period is None:
            raise ValueError(f"state template {self.name!r}: update 'periodic' needs a period (seconds)")
        if self.update != "periodic" and self.period is not None:
            raise ValueError(f"state template {self.name!r}: period is only for update 'periodic'")
        if self.ttl is not None and not (math.isfinite(self.ttl) and self.ttl > 0):
            raise ValueError(f"state template {self.name!r}: ttl must be a positive number of seconds")


class StateTracker:
    """The latest value of each template's topics, and the rows to store for them."""

    def __init__(self, templates: Sequence[StateTemplate]) -> None:
        names = [t.name for t in templates]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"state template names must be unique; repeated: {', '.join(repeated)}")
        self.templates = tuple(templates)
        self._patterns = tuple(dict.fromkeys(p for t in self.templates for p in t.topics))
        self._keeps = [Keep((f"state:{t.name}",), t.priority, t.ttl) for t in self.templates]
        #: Per template: topic -> (value, timestamp) last seen.
        self._latest: list[dict[str, tuple[Any, float]]] = [{} for _ in self.templates]
        #: Per template, on_change: topic -> the value last stored.
        self._stored: list[dict[str, Any]] = [{} for _ in self.templates]
        self._routes: dict[str, tuple[int, ...]] = {}
        #: Topics left out of a template's state because it already had `MAX_TOPICS`.
        self.overflow = 0

    @property
    def patterns(self) -> tuple[str, ...]:
        """What to subscribe to: every template's patterns, once each."""
        return self._patterns

    def index(self, name: str) -> int:
        for i, template in enumerate(self.templates):
            if template.name == name:
                return i
        known = ", ".join(t.name for t in self.templates) or "none"
        raise KeyError(f"no state template {name!r} (templates: {known})")

    def observe(self, topic: str, value: Any, timestamp: float) -> list[Row]:
        """Note a sample; the rows ``on_change`` templates store for it (none when nothing changed)."""
        route = self._routes.get(topic)
        if route is None:
            route = self._routes[topic] = tuple(
                i for i, t in enumerate(self.templates) if any(matches(p, topic) for p in t.topics)
            )
        rows: list[Row] = []
        for i in route:
            latest = self._latest[i]
            if topic not in latest and len(latest) >= MAX_TOPICS:
                self.overflow += 1
                continue
            latest[topic] = (value, timestamp)
            if self.templates[i].update == "on_change":
                stored = self._stored[i]
                if topic not in stored or not _same(stored[topic], value):
                    stored[topic] = value
                    rows.append((topic, value, timestamp, self._keeps[i]))
        return rows

    def snapshot(self, index: int) -> list[Row]:
        """Every latest value of template ``index``, in topic order (for a period or a request)."""
        keep = self._keeps[index]
        latest = self._latest[index]
        return [(topic, value, timestamp, keep) for topic, (value, timestamp) in sorted(latest.items())]
