"""The CAN gateway on a real SocketCAN vcan0 with CAN FD (mtu 72) and extended ids, can-utils as the peers.

Run inside the vcan harness by tests/test_can_vcan.py: ``$PYTHON tests/vcan_fd_scenario.py DBC OUT``, with
vcan0 already set to mtu 72 and a ``candump -L`` of it running. It runs the real gateway under the real
supervisor twice, with kernel filters on and off, and records what each step gave (never stopping at a
step that went wrong, so that every behaviour is reported): FD frames from ``cansend`` (one declared FD by
the database, one only longer than 8 bytes), an extended-id frame, an extended frame whose id is the number
of a standard message, and ``Send`` of an FD message, of a long one without the FD attribute and of an
extended one (``candump`` sees what went out; the test reads its log). It writes what it saw as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from services.can import CanGateway, GatewayConfig, SendRequest, send_method, status_topic
from vwos import ServiceSpec, SupervisorPolicy
from vwos.testing import open_harness

NETWORK = "fd"
#: What each step may wait for a sample (UML's system calls are slow; natively it takes milliseconds).
WAIT = 20.0


async def cansend(frame: str) -> None:
    await trio.run_process(["cansend", "vcan0", frame])


def values(sample: Any) -> dict[str, Any]:
    """A record sample's fields."""
    return {f.name: getattr(sample.value, f.name) for f in attrs.fields(type(sample.value))}


async def step(seen: dict[str, Any], name: str, coro: Any) -> None:
    """Run one step; record its result, or what went wrong (the next steps still run)."""
    try:
        seen[name] = await coro
    except Exception as exc:
        seen[name] = {"error": f"{type(exc).__name__}: {exc}"}


async def run(dbc: Path, kernel_filters: bool) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    config = GatewayConfig(
        database=dbc,
        network=NETWORK,
        interface="socketcan",
        channel="vcan0",
        fd=True,
        kernel_filters=kernel_filters,
        transmit=("FdCommand", "ExtCommand", "LongCommand"),
        status_period=0.5,
        reconnect_initial=0.05,
        reconnect_max=0.3,
    )
    policy = SupervisorPolicy(intensity=0, period=1.0)
    async with open_harness(ServiceSpec("gateway", CanGateway, config), policy=policy) as car:
        up = await car.expect(status_topic(NETWORK), lambda s: s.state == "up", timeout=WAIT)
        seen["mode"] = up.value.mode

        async def received(frame: str, topic: str) -> dict[str, Any]:
            await cansend(frame)
            return values(await car.expect(f"CAN.{NETWORK}.{topic}", timeout=WAIT))

        # FD in: declared FD (16 bytes), and only longer than 8 bytes (24, no VFrameFormat)
        await step(seen, "fd_declared", received("300##0" + "3412" + "00" * 12 + "7856", "FdDeclared"))
        await step(seen, "fd_long", received("301##0" + "3412" + "00" * 20 + "7856", "FdLong"))
        # extended in
        await step(seen, "extended", received("18FEF100#E803000000000000", "ExtSensor"))
        # an extended frame with the number of the standard message Std109 (0x109), then a marker on the
        # standard 0x109 itself: every Std109 sample until the marker must be the marker's
        await step(seen, "standard_109", received("109#0700000000000000", "Std109"))
        await cansend("00000109#6300000000000000")  # 8 hex digits: extended
        await step(seen, "marker_109", received("109#0900000000000000", "Std109"))
        seen["std109_values"] = [s.value.Value for s in car.samples(f"CAN.{NETWORK}.Std109")]

        async def send(message: str, signals: dict[str, float]) -> str:
            await car.call(send_method(NETWORK), SendRequest(message, signals), timeout=WAIT)
            return "sent"

        await step(seen, "send_fd", send("FdCommand", {"Level": 0x1234, "Last": 0x5678}))
        await step(seen, "send_extended", send("ExtCommand", {"Mode": 5}))
        # Last: a long message without VFrameFormat, sent as classic, fails with EINVAL (seen as link down)
        await step(seen, "send_long", send("LongCommand", {"Level": 0x4321}))
        await trio.sleep(0.5)
        last = car.samples(status_topic(NETWORK))[-1].value
        seen["status_after"] = {"state": last.state, "reason": last.reason}
        seen["restarts"] = car.status()["gateway"].restarts
    return seen


async def main(dbc: Path) -> dict[str, Any]:
    return {"filters_on": await run(dbc, True), "filters_off": await run(dbc, False)}


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(trio.run(main, Path(sys.argv[1])), default=str))
