"""The publish rate limit: `TokenBucket`, pure logic told the time (no trio, no clock of its own)."""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """A token bucket: on average at most ``rate`` takes per second, up to ``burst`` at once. Pure logic.

    `take` is told the time; it returns how long the caller must wait before going ahead (0.0: at once).
    A take always succeeds -- the bucket goes into debt -- so callers that take one after another, or
    concurrently, are spaced ``1 / rate`` apart once the burst is spent. ``rate == 0`` means no limit.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be >= 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """Take one token at time ``now``; the delay (seconds) before the caller may act on it."""
        if self.rate == 0:
            return 0.0
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
