"""Process-wide settings every vwos process applies at start: the supervisor and isolated services."""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLD", "tune_gc"]

#: The garbage collector's first-generation threshold in vwos processes (CPython's default is 700; 2000
#: from Python 3.13). The bus allocates a sample (a tuple) per value; with the default, a busy topic makes
#: the collector run every few hundred samples and walk every sample still queued, which cost 30-40 % of
#: the broker's time in ``bench/ipc.py``. Cycles are still collected, just in larger steps.
GC_THRESHOLD: Final = 10_000


def tune_gc() -> None:
    """Raise the collector's first-generation threshold to `GC_THRESHOLD` (never lower it)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, gen1, gen2)
