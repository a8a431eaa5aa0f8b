"""The vwos test kit: run services against an in-memory bus under trio's MockClock.

See ``docs/testing.md``. The pytest plugin (``vwos_harness`` fixture) is registered automatically.
"""

from vwos.testing._harness import (
    DEFAULT_EXPECT_TIMEOUT,
    BusClientKind,
    ExpectationFailed,
    Harness,
    open_harness,
)

__all__ = ["DEFAULT_EXPECT_TIMEOUT", "BusClientKind", "ExpectationFailed", "Harness", "open_harness"]
