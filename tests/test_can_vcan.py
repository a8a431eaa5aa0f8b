"""The CAN gateway on real SocketCAN (vcan0), natively or inside User-Mode Linux: see tests/vcan.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import vcan

TESTS = Path(__file__).resolve().parent


@pytest.mark.vcan
def test_gateway_on_real_vcan_with_can_utils_as_peers(vcan_runner: vcan.VcanRunner, tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    result = vcan_runner(
        f'"$PYTHON" {TESTS / "vcan_gateway_scenario.py"} {TESTS / "data" / "test.dbc"} {out}',
        timeout=150,
    )
    assert result.returncode == 0, result.describe()
    seen = json.loads(out.read_text())
    assert seen["mode"] == "fd"  # waits on the socket: no thread
    assert seen["speed"] == [88.5, 7, True]  # from cansend, with the kernel's timestamp
    assert "vcan0" in seen["candump"]
    assert "200#0100" in seen["candump"]  # the Send request, seen by candump
    assert "down" in seen["down_reason"]
    assert seen["reconnects"] >= 1
    assert seen["speed_after"] == 100.0
    assert seen["restarts"] == 0  # degraded and recovered, never crashed
