"""The pytest plugin of the vwos test kit, registered through the ``pytest11`` entry point.

It gives the ``vwos_harness`` fixture: ``async with vwos_harness(MyService(config)) as h: ...``, with the
services' state directories under the test's ``tmp_path``. Use it with pytest-trio (``trio_mode = true``,
or ``@pytest.mark.trio``) and its ``autojump_clock`` fixture to run in mock time.

And the ``vwos_bus_client`` fixture: a test that uses it (``pytestmark =
pytest.mark.usefixtures("vwos_bus_client")`` for a whole module) runs twice, its harnesses giving the
services in-process bus clients once and clients over the bus socket once -- as anyio runs a test on
every backend -- so a service that works only in-process (``isolated = false``) is caught.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vwos.testing._harness import BUS_CLIENT_KINDS, DEFAULT_BUS_CLIENT, BusClientKind, open_harness


@pytest.fixture
def vwos_harness(tmp_path: Path) -> Callable[..., Any]:
    """``open_harness`` with state directories in the test's ``tmp_path``."""
    return functools.partial(open_harness, state_dir=tmp_path / "state")


@pytest.fixture(params=BUS_CLIENT_KINDS)
def vwos_bus_client(request: pytest.FixtureRequest) -> Iterator[BusClientKind]:
    """The kind of bus handle the test's harnesses give their services: ``"in_process"``, then
    ``"socket"``."""
    kind: BusClientKind = request.param
    token = DEFAULT_BUS_CLIENT.set(kind)
    try:
        yield kind
    finally:
        DEFAULT_BUS_CLIENT.reset(token)
