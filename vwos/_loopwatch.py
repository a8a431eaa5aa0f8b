"""Watching the event loop for tasks that block it (``time.sleep`` in a coroutine, a long computation).

Every service of a supervisor shares one trio event loop: a task that does not yield stops all of them,
their heartbeats included. `LoopWatch` is a trio instrument that notes when each task step starts and how
long it took, and a thread that looks at the step in progress:

- **while the loop is blocked**, the thread logs it once the step has run ``threshold`` seconds, naming the
  task (and so the service) and quoting where it is (the event loop thread's stack);
- **once the step ends**, a step that ran ``threshold`` seconds or more is reported to ``on_blocked(task,
  seconds)`` in the event loop (the supervisor restarts that task's service, and only it);
- **a service that holds the loop most of the time** in steps each below ``threshold`` (a 1.9 s step every
  2 s, forty tasks of 90 ms each) is reported too: once its steps of ``excuse`` seconds or more add up to
  ``threshold`` within ``2 * threshold`` seconds, i.e. half the loop's time;
- every step of ``excuse`` seconds or more is remembered for a while, so that a watchdog or a start
  timeout can leave out time the loop spent blocked by someone else (`blocked_since`): an innocent service
  is never restarted for another's block.

The cost is two ``perf_counter`` calls per task step; the thread wakes a few times per ``threshold``.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

import structlog
import trio

__all__ = ["LoopWatch", "below"]

_log = structlog.get_logger("vwos.supervisor")

#: How long a record of a blocked step is kept for `LoopWatch.blocked_since` (seconds of loop time).
_KEEP = 600.0
_MAX_RECORDS = 1000


def _task_label(task: trio.lowlevel.Task | None) -> str:
    return "?" if task is None else task.name


class LoopWatch(trio.abc.Instrument):
    """Detects task steps that block the event loop; see the module docstring.

    ``threshold``: seconds a step may take before it counts as blocking the loop. ``excuse``: steps at
    least this long are remembered for `blocked_since`. ``describe(task)`` names what a task belongs to
    (a service) for the log, or None.
    """

    def __init__(
        self,
        *,
        threshold: float = 5.0,
        excuse: float = 0.02,
        describe: Callable[[trio.lowlevel.Task], str | None] | None = None,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.threshold = threshold
        self.excuse = min(excuse, threshold)
        self._describe = describe
        # Written by the event loop thread (the instrument), read by the watch thread: single attribute
        # reads and writes, atomic in CPython.
        self._step_task: trio.lowlevel.Task | None = None
        self._step_started = 0.0
        self._step_number = 0
        #: (loop time when the step ended, seconds it took, task), newest last.
        self._records: deque[tuple[float, float, trio.lowlevel.Task]] = deque(maxlen=_MAX_RECORDS)
        self._on_blocked: Callable[[trio.lowlevel.Task | None, float, float | None], None] | None = None
        #: Per owner (what ``describe`` names): its recent long steps (ended, seconds) and their sum.
        self._busy: dict[str, tuple[deque[tuple[float, float]], list[float]]] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._clock: Callable[[], float] = trio.current_time
        self._loop_thread = 0

    # -- the instrument (event loop thread) ------------------------------------------------------------

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_task = task
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._step_task is not task:  # the step that added the instrument: its start is unknown
            return
        seconds = time.perf_counter() - self._step_started
        self._step_task = None
        self._step_number += 1
        if seconds < self.excuse:
            return
        self._records.append((self._clock(), seconds, task))
        if seconds >= self.threshold:
            self._report(task, seconds, None)
            return
        owner = self._describe(task) if self._describe is not None else None
        if owner is None:
            return
        ended = time.perf_counter()
        steps, total = self._busy.setdefault(owner, (deque(), [0.0]))
        steps.append((ended, seconds))
        total[0] += seconds
        window = 2 * self.threshold
        while steps and steps[0][0] < ended - window:
            total[0] -= steps.popleft()[1]
        if total[0] >= self.threshold:
            busy = total[0]
            steps.clear()
            total[0] = 0.0
            self._report(task, busy, window)

    def _report(self, task: trio.lowlevel.Task, seconds: float, over: float | None) -> None:
        if self._on_blocked is None or self._token is None:
            return
        try:
            self._token.run_sync_soon(self._on_blocked, task, seconds, over)
        except trio.RunFinishedError:  # pragma: no cover -- the run is ending
            pass

    # -- what the supervisor asks ------------------------------------------------------------------------

    def blocked_since(self, since: float, exempt: trio.lowlevel.Task | None = None) -> float:
        """Seconds the loop was blocked, in steps that ended after loop time ``since``, by tasks other
        than ``exempt`` and those below it."""
        total = 0.0
        for ended, seconds, task in reversed(self._records):
            if ended < since:
                break
            if exempt is None or not below(task, exempt):
                total += seconds
        return total

    # -- running -------------------------------------------------------------------------------------

    async def run(
        self,
        on_blocked: Callable[[trio.lowlevel.Task | None, float, float | None], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch until cancelled (``await nursery.start(watch.run, on_blocked)``).

        ``on_blocked(task, seconds, over)`` is called in the event loop: ``over`` None for one step of
        ``task`` that took ``seconds``; else its owner's steps took ``seconds`` within ``over`` seconds.
        """
        self._on_blocked = on_blocked
        self._token = trio.lowlevel.current_trio_token()
        self._clock = trio.current_time
        self._loop_thread = threading.get_ident()
        stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop,), name="vwos loop watch", daemon=True)
        trio.lowlevel.add_instrument(self)
        thread.start()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(self)
            stop.set()
            self._on_blocked = None

    def _watch(self, stop: threading.Event) -> None:
        """The watch thread: log a step that has been running ``threshold`` seconds, once."""
        reported = -1
        interval = self.threshold / 4
        while not stop.wait(interval):
            task, started, number = self._step_task, self._step_started, self._step_number
            if task is None or number == reported:
                continue
            running = time.perf_counter() - started
            if running < self.threshold or self._step_task is not task:
                continue
            reported = number
            frame = sys._current_frames().get(self._loop_thread)
            where = "".join(traceback.format_stack(frame, limit=8)) if frame is not None else "?"
            owner = self._describe(task) if self._describe is not None else None
            _log.error(
                "event loop blocked",
                service=owner,
                task=_task_label(task),
                seconds=round(running, 1),
                where=where.rstrip(),
            )


def below(task: trio.lowlevel.Task, root: trio.lowlevel.Task) -> bool:
    """Whether ``task`` is ``root`` or runs below it (in a nursery it opened, at any depth)."""
    current: trio.lowlevel.Task | None = task
    while current is not None:
        if current is root:
            return True
        nursery = current.parent_nursery
        current = None if nursery is None else nursery.parent_task
    return False
