"""The pytest plugin of the vwos test kit, registered through the ``pytest11`` entry point.

It gives the ``vwos_harness`` fixture: ``async with vwos_harness(MyService(config)) as h: ...``, with the
services' state directories under the test's ``tmp_path``. Use it with pytest-trio (``trio_mode = true``,
or ``@pytest.mark.trio``) and its ``autojump_clock`` fixture to run in mock time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vwos.testing._harness import open_harness


@pytest.fixture
def vwos_harness(tmp_path: Path) -> Callable[..., Any]:
    """``open_harness`` with state directories in the test's ``tmp_path``."""
    return functools.partial(open_harness, state_dir=tmp_path / "state")
