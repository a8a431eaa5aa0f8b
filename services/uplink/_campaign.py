"""Data-collection campaigns: which bus samples the uplink keeps, and how they are stored. Pure logic.

A `Campaign` (from the service's TOML config) names bus topic patterns and a collection mode:

``every``
    every sample of a matching topic is kept;
``period``
    at most one sample per ``period`` seconds per topic (the first one after the period has passed, by the
    bus clock ``bus_time``, which is monotonic);
``change``
    a sample is kept only when its value differs from the last value this campaign kept for that topic
    (the first sample of a topic is always kept; ``nan`` counts as equal to ``nan``).

A `CampaignFilter` applies every campaign to each incoming sample. A sample kept by several campaigns is
stored **once**, with a `Keep` that merges them: the **highest priority** and the **longest ttl** (no ttl,
meaning "keep until delivered", beats any ttl). Each campaign thus gets at least what it asked for: a sample
is never dropped earlier, nor sent later, than one of its campaigns alone would have it. Taking the
shortest ttl instead would silently drop data a campaign without ttl was promised; the cost of the longest is
only that a sample may live longer, or rank higher, than one of its campaigns alone would keep it.

The service subscribes once per pattern (`CampaignFilter.patterns`), so with overlapping patterns
(``Test.**`` and ``Test.Counter``) a sample arrives through several subscriptions. The filter takes each
topic from one of them only, that of the first pattern matching it (``keep``'s ``via``): a sample is
considered once, whatever the patterns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

from bus import TopicError, check_pattern, matches

__all__ = ["Campaign", "CampaignFilter", "Keep", "Mode"]

Mode = Literal["every", "period", "change"]

_MODES: tuple[str, ...] = ("every", "period", "change")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
#: Priorities are stored as SQLite integers: keep them well inside 64 bits.
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1


def _name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(
            f"campaign name {value!r} must be letters, digits, '_' and '-', not starting with '-'"
        )


def _topics(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("a campaign needs at least one topic pattern (e.g. 'Vehicle.Speed' or 'Vehicle.**')")
    for pattern in value:
        try:
            check_pattern(pattern)
        except TopicError as exc:
            raise ValueError(str(exc)) from None


def _mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _MODES:
        raise ValueError(f"mode must be one of 'every', 'period', 'change', not {value!r}")


def _positive_seconds(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value}")


def _priority(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, not {value}")


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # one pattern given on its own
        return (value,)
    return value if isinstance(value, tuple) else tuple(value)


@attrs.frozen
class Campaign:
    """One data-collection campaign: which topics, how often, how important, how long data stays useful."""

    name: str = attrs.field(
        validator=_name, metadata={"help": "the campaign's name (in statistics and logs)"}
    )
    topics: tuple[str, ...] = attrs.field(
        converter=_as_tuple,
        validator=_topics,
        metadata={"help": "bus topic names or patterns ('*' one segment, '**' any depth)"},
    )
    mode: Mode = attrs.field(
        default="every",
        validator=_mode,
        metadata={"help": "every | period (at most one sample per period per topic) | change"},
    )
    period: float | None = attrs.field(
        default=None, validator=_positive_seconds, metadata={"help": "seconds; required for mode 'period'"}
    )
    priority: int = attrs.field(
        default=0, validator=_priority, metadata={"help": "higher is sent first and dropped last"}
    )
    ttl: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata={"help": "seconds after its timestamp a sample is dropped unsent; none: kept until sent"},
    )

    def __attrs_post_init__(self) -> None:
        if self.mode == "period" and self.period is None:
            raise ValueError(f"campaign {self.name!r}: mode 'period' needs a period (seconds)")
        if self.mode != "period" and self.period is not None:
            raise ValueError(
                f"campaign {self.name!r}: period is only for mode 'period' (this campaign's mode is "
                f"{self.mode!r})"
            )


@attrs.frozen(cache_hash=True)
class Keep:
    """How a kept sample is stored: the campaigns that kept it (in config order), priority and ttl.

    The outbox stores samples grouped by `Keep`, so a `CampaignFilter` hands out one instance per distinct
    combination of campaigns.
    """

    campaigns: tuple[str, ...]
    priority: int = 0
    #: Seconds after the sample's timestamp it is dropped unsent; None: kept until delivered.
    ttl: float | None = None

    @property
    def label(self) -> str:
        """The campaign names joined with ``,`` (how statistics name the group)."""
        return ",".join(self.campaigns)

    @classmethod
    def merge(cls, campaigns: Sequence[Campaign]) -> Keep:
        """The `Keep` of a sample kept by all of ``campaigns``: highest priority, longest ttl (None wins)."""
        if not campaigns:
            raise ValueError("Keep.merge needs at least one campaign")
        ttls = [c.ttl for c in campaigns]
        return cls(
            campaigns=tuple(c.name for c in campaigns),
            priority=max(c.priority for c in campaigns),
            ttl=None if None in ttls else max(t for t in ttls if t is not None),
        )


class _Route:
    """The campaigns matching one topic: the stateless ones (``every``) and the stateful ones; and the
    pattern whose subscription the topic is taken from."""

    __slots__ = ("constant", "owner", "stateful", "stateless")

    def __init__(
        self, stateless: tuple[int, ...], stateful: tuple[int, ...], constant: Keep | None, owner: int | None
    ) -> None:
        self.stateless = stateless
        self.stateful = stateful
        #: The answer for every sample when no campaign of this topic has state (None: never kept).
        self.constant = constant
        #: The index in `CampaignFilter.patterns` of the first pattern matching the topic (None: none does).
        self.owner = owner


def _same(a: Any, b: Any) -> bool:
    """Whether a value did not change: equal, of one type; ``nan`` equals ``nan``."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        if a == b:
            return True
        return bool(a != a and b != b)  # both nan
    except Exception:  # a value type whose comparison fails: treat as a change, never lose data
        return False


class CampaignFilter:
    """Decides, per incoming sample, whether any campaign keeps it, and with which `Keep`.

    Pure and synchronous; it holds the per-campaign, per-topic state of the ``period`` and ``change`` modes
    (the last kept bus time and value). Topic-to-campaign matching is computed once per topic name, and so
    is which pattern's subscription a topic is taken from (see `keep`'s ``via``).
    """

    def __init__(self, campaigns: Sequence[Campaign]) -> None:
        names = [c.name for c in campaigns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"campaign names must be unique; repeated: {', '.join(duplicates)}")
        self.campaigns: tuple[Campaign, ...] = tuple(campaigns)
        self._patterns = tuple(dict.fromkeys(p for c in self.campaigns for p in c.topics))
        self._routes: dict[str, _Route] = {}
        self._keeps: dict[tuple[int, ...], Keep] = {}
        #: Per campaign index: topic -> last kept bus time (period) or value (change).
        self._last: list[dict[str, Any]] = [{} for _ in self.campaigns]

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every topic pattern of every campaign, once each, in config order (what to subscribe to)."""
        return self._patterns

    def keep_for(self, indexes: tuple[int, ...]) -> Keep:
        """The one `Keep` instance for the campaigns at ``indexes`` (sorted, config order)."""
        keep = self._keeps.get(indexes)
        if keep is None:
            keep = self._keeps[indexes] = Keep.merge([self.campaigns[i] for i in indexes])
        return keep

    def _route(self, topic: str) -> _Route:
        matching = [i for i, c in enumerate(self.campaigns) if any(matches(p, topic) for p in c.topics)]
        stateless = tuple(i for i in matching if self.campaigns[i].mode == "every")
        stateful = tuple(i for i in matching if self.campaigns[i].mode != "every")
        constant = self.keep_for(stateless) if stateless and not stateful else None
        owner = next((i for i, p in enumerate(self._patterns) if matches(p, topic)), None)
        route = self._routes[topic] = _Route(stateless, stateful, constant, owner)
        return route

    def keep(self, topic: str, value: object, bus_time: float, via: int | None = None) -> Keep | None:
        """The `Keep` of a sample if some campaign keeps it, else None; updates the modes' state.

        ``via`` is the index in `patterns` of the subscription the sample came through. Overlapping patterns
        deliver a sample once per matching subscription; it is kept only through the first pattern that
        matches its topic, and the copies from the others are None (and leave the modes' state alone).
        """
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
        if via is not None and via != route.owner:
            return None
        if not route.stateful:
            return route.constant
        kept = list(route.stateless)
        for i in route.stateful:
            campaign = self.campaigns[i]
            last = self._last[i]
            if campaign.mode == "period":
                previous = last.get(topic)
                period = campaign.period
                assert period is not None  # checked by Campaign
                if previous is None or bus_time - previous >= period:
                    last[topic] = bus_time
                    kept.append(i)
            else:  # change
                if topic not in last or not _same(last[topic], value):
                    last[topic] = value
                    kept.append(i)
        if not kept:
            return None
        return self.keep_for(tuple(sorted(kept)))

    def reset(self) -> None:
        """Forget the state of the ``period`` and ``change`` modes (the next sample of each topic is kept)."""
        for last in self._last:
            last.clear()
