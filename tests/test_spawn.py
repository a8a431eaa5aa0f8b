"""The test helper that waits for a child's line: it must not hang with a hung child."""

from __future__ import annotations

import subprocess
import sys

import pytest
from spawn import wait_for_line


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_returns_the_lines_up_to_the_one_awaited() -> None:
    with _child("print('one'); print('two: ready', flush=True); import time; time.sleep(30)") as proc:
        try:
            assert proc.stdout is not None
            assert wait_for_line(proc.stdout, "ready", timeout=20) == ["one\n", "two: ready\n"]
        finally:
            proc.kill()


def test_fails_at_the_deadline_when_a_child_hangs_silently() -> None:
    with _child("print('started', flush=True); import time; time.sleep(30)") as proc:
        try:
            assert proc.stdout is not None
            with pytest.raises(
                pytest.fail.Exception, match=r"(?s)no line with 'ready' within 0.3 s.*started"
            ):
                wait_for_line(proc.stdout, "ready", timeout=0.3)
        finally:
            proc.kill()


def test_fails_when_the_child_ends_first() -> None:
    with _child("print('bye')") as proc:
        assert proc.stdout is not None
        with pytest.raises(pytest.fail.Exception, match="closed its output before a line with 'ready'"):
            wait_for_line(proc.stdout, "ready", timeout=20)
