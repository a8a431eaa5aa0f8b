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

A campaign with a ``condition`` (a `bus.Condition` over topics' latest values, e.g. ``Vehicle.Speed > 130
and Vehicle.ADAS.ABS.IsEngaged``) collects only around the moments its trigger fires (AWS IoT FleetWise's
condition-based campaigns): until then its samples (those its mode takes) wait in a ring of the last
``pre_trigger`` seconds (bus time; at most ``window_samples`` of them, the oldest dropped beyond and
counted); when the trigger fires (``trigger_mode`` ``rising_edge`` or ``always``, at most once per
``min_interval`` seconds) the ring is released into the outbox, and the campaign keeps its samples live
for ``post_trigger`` seconds more (a new firing meanwhile extends the window). A released sample is stored
with that campaign's `Keep` alone, even when another campaign kept it live already: each campaign gets all
it asked for, at the cost of a sample stored twice.

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

import collections
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import attrs

from bus import Condition, ConditionError, TopicError, Trigger, TriggerMode, check_pattern, matches

__all__ = ["Campaign", "CampaignFilter", "Keep", "Mode"]

Mode = Literal["every", "period", "change"]

_MODES: tuple[str, ...] = ("every", "period", "change")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
#: The keys that only mean something for a campaign with a condition.
_TRIGGER_KEYS = frozenset({"trigger_mode", "min_interval", "pre_trigger", "post_trigger", "window_samples"})
#: Priorities are stored as SQLite integers: keep them well inside 64 bits.
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1


def _name_check(what: str) -> Callable[[object, attrs.Attribute[str], str], None]:
    """The validator of a ``what``'s name (a campaign's, a state template's)."""

    def check(_: object, attribute: attrs.Attribute[str], value: str) -> None:
        if not _NAME.match(value):
            raise ValueError(
                f"{what} name {value!r} must be letters, digits, '_' and '-', not starting with '-'"
            )

    return check


def _topics_check(what: str) -> Callable[[object, attrs.Attribute[tuple[str, ...]], tuple[str, ...]], None]:
    """The validator of a ``what``'s topic patterns: at least one, each a valid bus pattern."""

    def check(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError(
                f"{what} needs at least one topic pattern (e.g. 'Vehicle.Speed' or 'Vehicle.**')"
            )
        for pattern in value:
            try:
                check_pattern(pattern)
            except TopicError as exc:
                raise ValueError(str(exc)) from None

    return check


_name = _name_check("campaign")
_topics = _topics_check("a campaign")


def _mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _MODES:
        raise ValueError(f"mode must be one of 'every', 'period', 'change', not {value!r}")


def _positive_seconds(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value}")


def _condition(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        try:
            Condition.parse(value)
        except ConditionError as exc:
            raise ValueError(str(exc)) from None


def _non_negative_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 86_400):
        raise ValueError(f"{attribute.name} must be seconds from 0 to 86400 (a day), not {value}")


def _trigger_mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("rising_edge", "always"):
        raise ValueError(f"trigger_mode must be 'rising_edge' or 'always', not {value!r}")


def _window_samples(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 10_000_000:
        raise ValueError(f"window_samples must be from 1 to 10000000, not {value}")


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
    condition: str | None = attrs.field(
        default=None,
        validator=_condition,
        metadata={"help": "collect only around the moments this holds, e.g. 'Vehicle.Speed > 130'"},
    )
    trigger_mode: TriggerMode = attrs.field(
        default="rising_edge",
        validator=_trigger_mode,
        metadata={"help": "rising_edge (when the condition becomes true) | always (each time it holds)"},
    )
    min_interval: float = attrs.field(
        default=0.0,
        validator=_non_negative_seconds,
        metadata={"help": "seconds between two firings, at least"},
    )
    pre_trigger: float = attrs.field(
        default=0.0, validator=_non_negative_seconds, metadata={"help": "seconds of samples before a firing"}
    )
    post_trigger: float = attrs.field(
        default=0.0, validator=_non_negative_seconds, metadata={"help": "seconds of samples after a firing"}
    )
    window_samples: int = attrs.field(
        default=100_000,
        validator=_window_samples,
        metadata={"help": "samples the pre-trigger ring holds at most (the oldest dropped beyond)"},
    )

    def __attrs_post_init__(self) -> None:
        if self.condition is None:
            given = [
                field.name
                for field in attrs.fields(type(self))
                if field.name in _TRIGGER_KEYS and getattr(self, field.name) != field.default
            ]
            if given:
                raise ValueError(
                    f"campaign {self.name!r}: {', '.join(given)} only apply to a campaign with a condition"
                )
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

    __slots__ = ("constant", "owner", "stateful", "stateless", "watchers")

    def __init__(
        self,
        stateless: tuple[int, ...],
        stateful: tuple[int, ...],
        constant: Keep | None,
        owner: int | None,
        watchers: tuple[int, ...] = (),
    ) -> None:
        self.stateless = stateless
        self.stateful = stateful
        #: The campaigns whose condition reads this topic.
        self.watchers = watchers
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
        self._triggers: list[Trigger | None] = [
            None
            if c.condition is None
            else Trigger(Condition.parse(c.condition), mode=c.trigger_mode, min_interval=c.min_interval)
            for c in self.campaigns
        ]
        watched = [
            t for trigger in self._triggers if trigger is not None for t in sorted(trigger.condition.topics)
        ]
        self._patterns = tuple(dict.fromkeys([*(p for c in self.campaigns for p in c.topics), *watched]))
        #: The latest value of each topic a condition reads.
        self._latest: dict[str, Any] = {}
        #: Per campaign with a condition: the bus time its live window ends (-inf: not triggered).
        self._until = [-math.inf] * len(self.campaigns)
        #: Per campaign with a condition: its pre-trigger ring of (bus time, row).
        self._rings: list[collections.deque[tuple[float, tuple[str, Any, float, Keep]]]] = [
            collections.deque() for _ in self.campaigns
        ]
        #: Rows a firing released from a ring since `take_released` was last called.
        self._released: list[tuple[str, Any, float, Keep]] = []
        #: Samples dropped from full pre-trigger rings (``window_samples``).
        self.window_dropped = 0
        self._routes: dict[str, _Route] = {}
        self._keeps: dict[tuple[int, ...], Keep] = {}
        #: Per campaign index: topic -> last kept bus time (period) or value (change).
        self._last: list[dict[str, Any]] = [{} for _ in self.campaigns]

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every topic pattern of every campaign, then the topics its conditions read, once each, in config
        order (what to subscribe to)."""
        return self._patterns

    def keep_for(self, indexes: tuple[int, ...]) -> Keep:
        """The one `Keep` instance for the campaigns at ``indexes`` (sorted, config order)."""
        keep = self._keeps.get(indexes)
        if keep is None:
            keep = self._keeps[indexes] = Keep.merge([self.campaigns[i] for i in indexes])
        return keep

    def _route(self, topic: str) -> _Route:
        matching = [i for i, c in enumerate(self.campaigns) if any(matches(p, topic) for p in c.topics)]
        simple = [i for i in matching if self.campaigns[i].mode == "every" and self._triggers[i] is None]
        stateless = tuple(simple)
        stateful = tuple(i for i in matching if i not in simple)
        watchers = tuple(
            i for i, t in enumerate(self._triggers) if t is not None and topic in t.condition.topics
        )
        constant = self.keep_for(stateless) if stateless and not stateful else None
        owner = next((i for i, p in enumerate(self._patterns) if matches(p, topic)), None)
        route = self._routes[topic] = _Route(stateless, stateful, constant, owner, watchers)
        return route

    def _fire(self, index: int, bus_time: float) -> None:
        """Campaign ``index``'s trigger fired at ``bus_time``: release its ring, open its live window."""
        campaign = self.campaigns[index]
        ring = self._rings[index]
        start = bus_time - campaign.pre_trigger
        self._released.extend(row for t, row in ring if t >= start)
        ring.clear()
        self._until[index] = max(self._until[index], bus_time + campaign.post_trigger)

    def take_released(self) -> list[tuple[str, Any, float, Keep]]:
        """The rows (topic, value, timestamp, keep) triggers released from their rings since the last
        call, oldest first: store them as `keep`'s answers are stored."""
        released = self._released
        if released:  # else the empty list itself: no allocation per batch on the hot path
            self._released = []
        return released

    def fired(self, name: str) -> int:
        """How many times the trigger of campaign ``name`` fired (0 for a campaign without condition)."""
        for campaign, trigger in zip(self.campaigns, self._triggers, strict=True):
            if campaign.name == name:
                return 0 if trigger is None else trigger.fired
        raise KeyError(name)

    def keep(
        self, topic: str, value: object, bus_time: float, via: int | None = None, timestamp: float = 0.0
    ) -> Keep | None:
        """The `Keep` of a sample if some campaign keeps it, else None; updates the modes' state.

        ``via`` is the index in `patterns` of the subscription the sample came through. Overlapping patterns
        deliver a sample once per matching subscription; it is kept only through the first pattern that
        matches its topic, and the copies from the others are None (and leave the modes' state alone).

        A sample of a topic a condition reads updates the condition first; a firing releases its ring
        (`take_released`). ``timestamp`` (the sample's source time) is what a ring keeps with the sample.
        """
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
        if via is not None and via != route.owner:
            return None
        if route.watchers:
            latest = self._latest
            latest[topic] = value
            for i in route.watchers:
                trigger = self._triggers[i]
                assert trigger is not None  # a watcher has a trigger
                if trigger.update(latest, bus_time):
                    self._fire(i, bus_time)
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
                    taken = True
                else:
                    taken = False
            elif campaign.mode == "change":
                taken = topic not in last or not _same(last[topic], value)
                if taken:
                    last[topic] = value
            else:
                taken = True
            if not taken:
                continue
            if self._triggers[i] is None or bus_time <= self._until[i]:
                kept.append(i)
            elif campaign.pre_trigger > 0:
                self._hold(i, (topic, value, timestamp, self.keep_for((i,))), bus_time)
        if not kept:
            return None
        return self.keep_for(tuple(sorted(kept)))

    def _hold(self, index: int, row: tuple[str, Any, float, Keep], bus_time: float) -> None:
        """Put a row into campaign ``index``'s pre-trigger ring, dropping what is older than its window or
        beyond its size."""
        campaign = self.campaigns[index]
        ring = self._rings[index]
        ring.append((bus_time, row))
        start = bus_time - campaign.pre_trigger
        while ring[0][0] < start:
            ring.popleft()
        if len(ring) > campaign.window_samples:
            ring.popleft()
            self.window_dropped += 1

    def reset(self) -> None:
        """Forget the state of the ``period`` and ``change`` modes (the next sample of each topic is kept)."""
        for last in self._last:
            last.clear()
