"""The CAN gateway against a real SocketCAN vcan0, with can-utils as the independent peers.

Run inside the vcan harness by tests/test_can_vcan.py: ``$PYTHON tests/vcan_gateway_scenario.py DBC OUT``.
It runs the real gateway under the real supervisor and, step by step: frames from ``cansend`` must come out
as samples; a Send request must come out as a frame ``candump`` sees; ``ip link set vcan0 down`` must be
reported as degraded and ``up`` as recovered, with frames flowing again. It writes what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from services.can import CanGateway, GatewayConfig, SendRequest, send_method, status_topic
from vwos import ServiceSpec, SupervisorPolicy
from vwos.testing import open_harness


async def sh(*args: str) -> None:
    await trio.run_process(args)


async def main(dbc: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    config = GatewayConfig(
        database=dbc,
        network="body",
        interface="socketcan",
        channel="vcan0",
        transmit=("DoorCommand",),
        status_period=0.2,
        reconnect_initial=0.05,
        reconnect_max=0.3,
    )
    candump = subprocess.Popen(  # noqa: ASYNC220 - a peer that runs for the whole scenario
        ["candump", "-L", "vcan0,200:7FF"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        policy = SupervisorPolicy(intensity=0, period=1.0)
        async with open_harness(ServiceSpec("gateway", CanGateway, config), policy=policy) as car:
            status = status_topic("body")
            up = await car.expect(status, lambda s: s.state == "up", timeout=20)
            seen["mode"] = up.value.mode
            # frames in -> samples out (Speed 88.5 km/h, Counter 7, from cansend)
            await sh("cansend", "vcan0", "100#9222070000000000")
            sample = await car.expect("CAN.body.Speed", timeout=20)
            seen["speed"] = [sample.value.VehicleSpeed, sample.value.Counter, sample.timestamp > 1e9]
            # requests in -> frames seen by candump
            await car.call(send_method("body"), SendRequest("DoorCommand", {"LockRequest": 1}), timeout=10)
            # link down -> degraded; up -> recovered, frames flow again
            await sh("ip", "link", "set", "vcan0", "down")
            down = await car.expect(status, lambda s: s.state == "down", timeout=20)
            seen["down_reason"] = down.value.reason
            await trio.sleep(1.0)
            await sh("ip", "link", "set", "vcan0", "up")
            again = await car.expect(status, lambda s: s.state == "up", timeout=20)
            seen["reconnects"] = again.value.reconnects
            await sh("cansend", "vcan0", "100#1027000000000000")
            sample = await car.expect("CAN.body.Speed", lambda r: r.VehicleSpeed == 100.0, timeout=20)
            seen["speed_after"] = sample.value.VehicleSpeed
            seen["restarts"] = car.status()["gateway"].restarts
    finally:
        candump.terminate()
        dumped, _ = candump.communicate(timeout=10)
    seen["candump"] = dumped.split()
    return seen


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(trio.run(main, Path(sys.argv[1]))))
