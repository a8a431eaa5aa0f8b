"""Topics, methods and quality of service: what a name on the bus means."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar

import attrs

from bus._errors import TopicError, ValueRefusedError
from bus._pattern import check_name
from bus._sample import NotAvailable

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Overflow(enum.Enum):
    """What a subscriber's queue does when a sample arrives and the queue is full."""

    #: Drop the oldest queued sample (the default). The subscriber sees the newest ``queue_size`` samples.
    DROP_OLDEST = "drop_oldest"
    #: Keep only the latest sample of each topic: a new sample replaces a queued one of the same topic.
    #: Meant for state ("what is the speed now?"), where old values are worthless.
    LATEST = "latest"
    #: Make publishers that wait (``await publish``) wait until the subscriber has made room: the only
    #: policy that can slow a publisher down, and a right of its own (``Permissions.block``). A publisher
    #: that does not wait (``publish_nowait``) is never slowed or failed by it: a full queue leaves the
    #: sample out (counted as ``dropped_nowait``), unless the publisher was made with ``block=True``.
    BLOCK = "block"


def _positive_int(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise TopicError(f"{attribute.name} must be a positive int, not {value!r}")


@attrs.frozen
class QoS:
    """A subscriber queue's size and overflow policy."""

    queue_size: int = attrs.field(default=64, validator=_positive_int)
    overflow: Overflow = attrs.field(default=Overflow.DROP_OLDEST, converter=Overflow)

    def _override(self, queue_size: int | None, overflow: Overflow | str | None) -> QoS:
        """This QoS with the subscriber's own ``queue_size`` and ``overflow`` where given."""
        return QoS(
            queue_size=self.queue_size if queue_size is None else queue_size,
            overflow=self.overflow if overflow is None else Overflow(overflow),
        )


_NUMERIC = (int, float)


def _build_checker(topic: Topic[Any]) -> Callable[[Any], Any]:
    """Compile the topic's rules into one function: returns the (normalised) value or raises."""
    name = topic.name
    vtype = topic.type
    lo, hi, allowed, unit = topic.min, topic.max, topic.allowed, topic.unit
    suffix = f" {unit}" if unit else ""

    def refuse(value: Any, rule: str) -> None:
        raise ValueRefusedError(name, rule, value)

    def check_type(value: Any) -> Any:
        if type(value) is NotAvailable:  # any topic may say its source has no valid value
            return value
        if vtype is float:
            if type(value) is float:
                return value
            if type(value) is int:
                return float(value)
            refuse(value, f"expected float, got {type(value).__name__}")
        if vtype is int:
            if type(value) is int:
                return value
            refuse(value, f"expected int, got {type(value).__name__}")
        if vtype is bool:
            if type(value) is bool:
                return value
            refuse(value, f"expected bool, got {type(value).__name__}")
        if isinstance(value, vtype):
            return value
        refuse(value, f"expected {vtype.__qualname__}, got {type(value).__name__}")
        raise AssertionError("unreachable")  # pragma: no cover

    if lo is None and hi is None and allowed is None:
        if vtype is float:

            def check_float(value: Any) -> Any:
                if type(value) is float:
                    return value
                return check_type(value)

            return check_float
        return check_type

    allowed_set = frozenset(allowed) if allowed is not None else None
    low = -math.inf if lo is None else lo
    high = math.inf if hi is None else hi

    def diagnose(value: Any) -> None:
        if value != value:
            refuse(value, "not a number (the topic has a declared range)")
        if value < low:
            refuse(value, f"below min {lo:g}{suffix}")
        refuse(value, f"above max {hi:g}{suffix}")

    def check_allowed(value: Any) -> Any:
        if allowed_set is not None and value not in allowed_set:
            refuse(value, f"not one of the allowed values {list(allowed or ())!r}")
        return value

    if allowed_set is None:

        def check_range(value: Any) -> Any:
            if type(value) is not vtype:
                if type(value) is NotAvailable:
                    return value
                value = check_type(value)
            if not low <= value <= high:  # false for NaN too
                diagnose(value)
            return value

        return check_range

    def check_rules(value: Any) -> Any:
        if type(value) is not vtype:
            if type(value) is NotAvailable:
                return value
            value = check_type(value)
        if (lo is not None or hi is not None) and not low <= value <= high:
            diagnose(value)
        return check_allowed(value)

    return check_rules


class FloatList(list):  # type: ignore[type-arg]
    """A list of values known to be floats, every one (decoded from packed doubles): checking a run of
    them skips the pass over their types."""

    __slots__ = ()


def _build_many_checker(topic: Topic[Any], check: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """The topic's rules for a run of values (a PUBLISH from another process): ``check`` on each value,
    with a fast path, in C, for a run of scalars all of the topic's type: one pass for the types, and for
    a range ``min``/``max`` of the run (after ``sum`` showed no NaN). Raises at the first refused value."""
    vtype = topic.type

    def each(values: list[Any]) -> list[Any]:
        return list(map(check, values))

    if vtype not in (bool, int, float, str, bytes) or topic.allowed is not None:
        return each
    only = {vtype}
    known = FloatList if vtype is float else None  # a run of this type needs no pass over its types
    if topic.min is None and topic.max is None:

        def unranged(values: list[Any]) -> list[Any]:
            return values if type(values) is known or set(map(type, values)) == only else each(values)

        return unranged
    low = -math.inf if topic.min is None else topic.min
    high = math.inf if topic.max is None else topic.max

    def ranged(values: list[Any]) -> list[Any]:
        if type(values) is known or set(map(type, values)) == only:
            total = sum(values)
            if total == total and low <= min(values) and max(values) <= high:  # total != total: a NaN
                return values
        return each(values)

    return ranged


def _to_tuple(values: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


@attrs.frozen
class Topic(Generic[T]):
    """A named, typed stream of values on the bus.

    ``Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400)`` declares that every value published
    under that name is a float between 0 and 400 -- or a `NotAvailable`, which every topic accepts. The
    type may be a scalar (``bool``, ``int``, ``float``, ``str``, ``bytes``), an `enum.Enum` or an attrs
    class. ``int`` values are accepted for a ``float`` topic
    and delivered as floats; ``bool`` is never taken for a number.

    ``max_age`` (seconds) marks the latest value stale once it is older; ``qos`` is the default queue of a
    subscriber that gives none of its own.
    """

    name: str = attrs.field(validator=lambda _, __, v: check_name(v))
    type: type[T]
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = attrs.field(default=None, converter=_to_tuple)
    description: str = ""
    max_age: float | None = None
    qos: QoS = attrs.field(factory=QoS)
    _check: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False, hash=False)
    _check_many: Callable[[list[Any]], list[Any]] = attrs.field(init=False, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.type, type):
            raise TopicError(f"{self.name}: type must be a class, not {self.type!r}")
        if (self.min is not None or self.max is not None) and self.type not in _NUMERIC:
            raise TopicError(f"{self.name}: min/max need an int or float topic, not {self.type.__name__}")
        for bound in (self.min, self.max):
            if bound is not None and (type(bound) not in _NUMERIC or math.isnan(bound)):
                raise TopicError(f"{self.name}: min/max must be numbers, not {bound!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise TopicError(f"{self.name}: min {self.min} is above max {self.max}")
        if self.max_age is not None and not (self.max_age > 0):
            raise TopicError(f"{self.name}: max_age must be positive seconds, not {self.max_age!r}")
        check = _build_checker(self)
        object.__setattr__(self, "_check", check)
        object.__setattr__(self, "_check_many", _build_many_checker(self, check))

    def check(self, value: Any) -> T:
        """Return ``value`` (an int made a float for a float topic) or raise `ValueRefusedError`."""
        result: T = self._check(value)
        return result

    def same_declaration(self, other: Topic[Any]) -> bool:
        """True if ``other`` declares the same name with the same type and rules (QoS aside)."""
        return attrs.evolve(self, qos=other.qos, description=other.description) == other

    def _differences(self, other: Topic[Any]) -> list[str]:
        """What ``other`` declares differently, one ``field value (declared: value)`` each."""
        found = []
        for field in _DECLARED_FIELDS:
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                found.append(f"{field} {_declared(theirs)} (declared: {_declared(mine)})")
        return found

    def _check_redeclaration(self, other: Topic[Any], declarer: str | None = None) -> None:
        """Raise `TopicError` unless ``other`` (declared again under this name) is this declaration,
        naming who declared it first (``declarer``, a client name; None: `Bus.declare`) and each field
        that differs."""
        if other is self or self.same_declaration(other):
            return
        by = "with Bus.declare" if declarer is None else f"by {declarer!r}"
        raise TopicError(
            f"{self.name}: already declared {by}; this declaration differs in "
            + ", ".join(self._differences(other))
        )


#: The fields two declarations of one topic must agree on (QoS and description may differ).
_DECLARED_FIELDS: Final = ("type", "unit", "min", "max", "allowed", "max_age")


def _declared(value: Any) -> str:
    """A declared field's value as an error message shows it: a type by name, anything else as repr."""
    if isinstance(value, type):
        return value.__qualname__
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def register_type(tp: object) -> None:
    """Register the attrs class or enum ``tp`` with `bus.default_codec` if it is not yet: a type used in a
    topic or method is registered when the topic is declared on a bus (or published on) and when the
    method is served, under its default name (register it first to give it a name of its own). A type the
    codec cannot carry stays unregistered: it works in-process, and a use over a socket says why not."""
    from bus._codec import default_codec

    if not isinstance(tp, type) or not (attrs.has(tp) or issubclass(tp, enum.Enum)):
        return
    if default_codec.is_registered(tp):
        return
    try:
        default_codec.register(tp)
    except Exception:
        return


@attrs.frozen
class Method(Generic[Req, Resp]):
    """A named request/response endpoint: ``Method("Body.Doors.Lock", LockRequest, bool)``.

    ``request`` and ``response`` are checked on each call; ``object`` accepts anything.
    """

    name: str = attrs.field(validator=lambda _, __, v: check_name(v, what="method name"))
    request: type[Req] = attrs.field(default=object)  # type: ignore[assignment]
    response: type[Resp] = attrs.field(default=object)  # type: ignore[assignment]
    description: str = ""
