"""The sample: one value as it travels on the bus."""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Sample(NamedTuple, Generic[T]):
    """One published value, immutable.

    ``timestamp`` is the source time in seconds since the epoch (when the value was measured: a CAN frame's
    kernel timestamp, say; the wall clock at publish time if the publisher gave none). ``bus_time`` is the
    bus clock (trio's clock, so MockClock in tests) when the sample entered the bus; staleness and latency
    are measured on it. ``seq`` counts the topic's samples from 1.

    A named tuple rather than an attrs class: it is built once per publish on the hot path, where a tuple
    costs a fifth of a frozen attrs instance, and it is just as immutable.
    """

    topic: str
    value: T
    timestamp: float
    bus_time: float
    publisher: str
    seq: int
