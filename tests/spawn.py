"""Reading a child process's output in tests with a real deadline.

``pipe.readline()`` blocks for as long as a hung child writes nothing, so a test waiting for a line
would hang with it. `wait_for_line` reads the pipe's file descriptor with ``select`` instead and fails
the test when the deadline passes or the child closes the pipe first, showing what it did write.
"""

from __future__ import annotations

import os
import select
import time
from typing import IO

import pytest


def wait_for_line(pipe: IO[str], needle: str, *, timeout: float = 30.0) -> list[str]:
    """Read ``pipe`` (a child's ``stdout`` or ``stderr``, opened with ``text=True`` and not read from
    before) until a line containing ``needle`` has arrived; returns every line read, the last one
    containing it (any text after that line is returned as a last, partial line).

    Fails the test if ``timeout`` seconds pass first or the pipe ends.
    """
    fd = pipe.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        lines = data.decode(errors="replace").splitlines(keepends=True)
        if any(needle in line and line.endswith("\n") for line in lines):
            return lines
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no line with {needle!r} within {timeout:g} s; the child wrote:\n{_tail(data)}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"the child closed its output before a line with {needle!r}:\n{_tail(data)}")
        data += chunk


def _tail(data: bytes) -> str:
    return data.decode(errors="replace")[-3000:]
