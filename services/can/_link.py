"""The reconnect loop of the CAN gateway and the CAN simulator: keep one CAN link open, reopening it after a
failure with `vwos.BackoffPolicy`'s delays (the policy the supervisor and the uplink use too)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NoReturn

import can
import trio

from services.can._transport import CanTransport, LinkDownError
from vwos import BackoffPolicy


def reconnect_backoff(initial: float, maximum: float) -> BackoffPolicy:
    """The CAN services' policy from their ``reconnect_initial`` and ``reconnect_max``: the wait doubles from
    ``initial`` up to ``maximum``, without jitter, and starts over as soon as a link opens."""
    return BackoffPolicy(initial=initial, multiplier=2.0, max_delay=maximum, jitter=0.0, reset_after=0.0)


async def keep_link_open(
    open_transport: Callable[[], CanTransport],
    handle: Callable[[list[can.Message]], object],
    backoff: BackoffPolicy,
    *,
    up: Callable[[CanTransport], object],
    down: Callable[[str], object],
    closed: Callable[[], object] = lambda: None,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Open the link and ``handle`` each batch it receives; when opening or receiving fails with
    `LinkDownError`, call ``down(reason)``, wait ``backoff.delay(n)`` for the n-th failure in a row and try
    again, forever (never a crash loop). Other exceptions propagate.

    ``up(transport)`` is called once a link is open, ``closed()`` just before it is closed (a failure or
    cancellation). The count of failures starts over once a link has stayed open for
    ``backoff.reset_after`` seconds (trio's clock). ``task_status.started()`` comes after the first try,
    whether it opened the link or not.
    """
    failures = 0
    started = False
    while True:
        try:
            transport = open_transport()
        except LinkDownError as exc:
            down(exc.describe())
        else:
            opened_at = trio.current_time()
            up(transport)
            if not started:
                started = True
                task_status.started()
            try:
                while True:
                    handle(await transport.receive())
            except LinkDownError as exc:
                down(exc.describe())
            finally:
                closed()
                transport.close()
            if trio.current_time() - opened_at >= backoff.reset_after:
                failures = 0
        if not started:
            started = True
            task_status.started()
        failures += 1
        await trio.sleep(backoff.delay(failures, rand()))
