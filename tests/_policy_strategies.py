"""Hypothesis strategies for the restart-policy engine (``vwos._policy``).

Kept apart from ``tests/strategies.py`` only while that file is being written; merge them into it.
"""

from __future__ import annotations

import enum

import attrs
from hypothesis import strategies as st

from vwos._policy import BackoffPolicy, ChildSpec, Exit, Restart, Strategy, SupervisorPolicy


def _seconds(max_value: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=max_value, allow_nan=False, allow_infinity=False)


def backoff_policies(*, max_seconds: float = 100.0) -> st.SearchStrategy[BackoffPolicy]:
    """Any valid backoff policy with delays up to ``max_seconds``, including the edges (zero delays, no
    jitter, full jitter)."""
    return st.builds(
        BackoffPolicy,
        initial=_seconds(max_seconds / 10),
        multiplier=st.floats(min_value=1.0, max_value=10.0),
        max_delay=_seconds(max_seconds),
        jitter=st.floats(min_value=0.0, max_value=1.0),
        reset_after=_seconds(max_seconds),
    )


def supervisor_policies() -> st.SearchStrategy[SupervisorPolicy]:
    """Any strategy, with small intensities so that escalation is reached often."""
    return st.builds(
        SupervisorPolicy,
        strategy=st.sampled_from(Strategy),
        intensity=st.integers(min_value=0, max_value=5),
        period=st.floats(min_value=0.1, max_value=60.0),
    )


@st.composite
def child_specs(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 5, max_seconds: float = 10.0
) -> list[ChildSpec]:
    """A start-ordered list of children with unique names ``c0``, ``c1``, ..., backoffs up to
    ``max_seconds`` (short, so that simulated runs get through many restarts)."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    return [
        ChildSpec(
            f"c{i}",
            restart=draw(st.sampled_from(Restart)),
            backoff=draw(backoff_policies(max_seconds=max_seconds)),
        )
        for i in range(size)
    ]


class Action(enum.Enum):
    """What a simulated driver does in one step."""

    TICK = "tick"  # let time pass
    READY = "ready"  # a starting child becomes ready
    EXIT = "exit"  # an active child (starting, running or stopping) ends on its own
    STOPPED = "stopped"  # a child being stopped finishes stopping
    OPERATOR_STOP = "operator_stop"
    OPERATOR_START = "operator_start"


@attrs.frozen
class Step:
    """One step of a simulated driver: after ``dt`` seconds, do ``action`` to the ``pick``-th candidate."""

    action: Action
    pick: int
    exit: Exit
    dt: float


def steps(
    *, operator: bool = True, min_size: int = 20, max_size: int = 100, max_dt: float = 10.0
) -> st.SearchStrategy[list[Step]]:
    """Sequences of driver steps; ``operator=False`` leaves out operator stops and starts.

    Long by default (hypothesis draws short lists otherwise), so that runs get to restarts and escalation.
    """
    actions = [action for action in Action if operator or not action.name.startswith("OPERATOR")]
    # Bias towards exits and readiness, so that runs reach restarts and escalation.
    weighted = st.one_of(
        st.sampled_from([Action.EXIT, Action.READY, Action.STOPPED, Action.TICK]), st.sampled_from(actions)
    )
    step = st.builds(
        Step,
        action=weighted,
        pick=st.integers(min_value=0, max_value=10),
        exit=st.sampled_from(Exit),
        dt=st.one_of(st.just(0.0), _seconds(max_dt)),
    )
    return st.lists(step, min_size=min_size, max_size=max_size)
