"""What the recording tests share that is not MCAP-specific: a broker on a Unix socket in the test's
temporary directory that lets every client do everything (`broker`, a fixture: import it into a test
module), the ``vwos`` command line as this interpreter runs it (`vwos_command`), and a wait for what another
process does (`until`)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

import bus
from bus import Bus, Permissions

#: How long a test waits for another process at most.
TIMEOUT = 60


def allow_all(creds: bus.PeerCredentials, name: str) -> Permissions:
    """An ``authorize`` for `bus.serve_unix` that grants every client everything."""
    return Permissions.ALL


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[Bus, Path]]:
    """A bus served on ``tmp_path / "bus.sock"``, every client allowed everything: (the bus, the socket)."""
    the_bus = Bus()
    path = tmp_path / "bus.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: bus.serve_unix(the_bus, path, authorize=allow_all, task_status=task_status)
        )
        yield the_bus, path
        nursery.cancel_scope.cancel()


def vwos_command(*args: str) -> list[str]:
    """``vwos ARGS...`` run by this interpreter."""
    return [sys.executable, "-m", "vwos", *args]


async def until(predicate: Callable[[], object], *, poll: float = 0.02) -> None:
    """Wait (at most `TIMEOUT` seconds) until ``predicate()`` is true: a file or a state another process
    makes, polled every ``poll`` seconds."""
    with trio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 -- what another process does
            await trio.sleep(poll)
