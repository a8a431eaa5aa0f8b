"""The simulated ECU as a service (`CanSimulator`, plugin ``can_sim``) and its vehicle-model hook, on
python-can's virtual interface under trio's MockClock. The ECU's schedule and plans: test_can_tools.py."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import can
import pytest
import trio
import trio.testing

from bus import Codec
from services.can import (
    CanCodec,
    CanGateway,
    CanSimulator,
    Frame,
    GatewayConfig,
    SimulatedEcu,
    SimulatorConfig,
    load_database,
)
from vwos import ConfigError, ServiceSpec, load_plugin, parse_config
from vwos.testing import open_harness

ECU_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU GW

BO_ 256 Dash: 4 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|250] "km/h" GW
 SG_ Dash_Counter : 16|4@1+ (1,0) [0|15] "" GW
 SG_ Locked : 20|1@1+ (1,0) [0|1] "" GW

BO_ 512 Command: 1 GW
 SG_ Lock : 0|1@1+ (1,0) [0|1] "" ECU

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 50;
"""


@pytest.fixture
def dbc(tmp_path: Path) -> Path:
    path = tmp_path / "ecu.dbc"
    path.write_text(ECU_DBC)
    return path


def channel() -> str:
    return f"vwos-sim-{uuid.uuid4().hex[:8]}"


@attrs.frozen
class LockingConfig(SimulatorConfig):
    speed: float = 30.0


class LockingEcu(CanSimulator[LockingConfig]):
    """A simulated vehicle: a constant speed, and a lock that follows the Command frames."""

    config_class: ClassVar[type[Any]] = LockingConfig
    commands: ClassVar[list[tuple[str, dict[str, float], float]]] = []

    async def run(self, ctx: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.locked = False
        await super().run(ctx, task_status=task_status)

    def values(self, message: str, t: float) -> Mapping[str, float]:
        return {"Speed": self.config.speed, "Locked": float(self.locked)} if message == "Dash" else {}

    def received(self, message: str, signals: Mapping[str, float], t: float) -> None:
        self.commands.append((message, dict(signals), t))
        self.locked = bool(signals["Lock"])


def test_the_plugin_is_installed() -> None:
    assert load_plugin("can_sim") is CanSimulator
    assert CanSimulator.config_class is SimulatorConfig
    assert LockingEcu.config_class is LockingConfig


async def test_the_plugin_feeds_a_gateway_on_the_virtual_bus(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    ch = channel()
    sim = SimulatorConfig(database=dbc, interface="virtual", channel=ch, receive_mode="poll")
    gateway = GatewayConfig(database=dbc, network="car", interface="virtual", channel=ch, receive_mode="poll")
    async with open_harness(
        ServiceSpec("ecu", CanSimulator, sim), ServiceSpec("gateway", CanGateway, gateway, after=("ecu",))
    ) as car:
        await trio.sleep(1.0)
        assert car.samples("CAN.car.Status")[-1].value.state == "up"
        frames = [s.value for s in car.samples("CAN.car.Dash")]
        assert 18 <= len(frames) <= 21  # 50 ms for a second
        counters = [f.Dash_Counter for f in frames]  # (the first went out before the gateway listened)
        assert [(b - a) % 16 for a, b in itertools.pairwise(counters)] == [1] * (len(counters) - 1)
        # Command is not simulated: without `receive` the ECU sends every message, with a default cycle.
        commands = car.samples("CAN.car.Command")
        assert 9 <= len(commands) <= 11


async def test_a_vehicle_model_sets_values_and_answers_commands(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    ch = channel()
    LockingEcu.commands.clear()
    config = LockingConfig(
        database=dbc, interface="virtual", channel=ch, receive=("Command",), receive_mode="poll", speed=42.0
    )
    codec = CanCodec(load_database(dbc), "check", codec=Codec())
    with can.Bus(interface="virtual", channel=ch) as peer:
        async with open_harness(ServiceSpec("ecu", LockingEcu, config)):
            await trio.sleep(0.5)
            seen = _drain(peer)
            assert {m.arbitration_id for m in seen} == {256}  # Command is received, not sent
            first = codec.decode(256, seen[0].data)[0][1]
            assert (first.Speed, first.Locked) == (42.0, 0)
            lock = codec.encode("Command", {"Lock": 1})
            peer.send(can.Message(arbitration_id=lock.arbitration_id, data=lock.data, is_extended_id=False))
            peer.send(can.Message(arbitration_id=0x7FF, data=b"\x00", is_extended_id=False))  # not for it
            await trio.sleep(0.5)
            last = codec.decode(256, _drain(peer)[-1].data)[0][1]
            assert last.Locked == 1
    assert [(m, s) for m, s, _ in LockingEcu.commands] == [("Command", {"Lock": 1})]
    assert 0.5 <= LockingEcu.commands[0][2] <= 0.6  # seconds since the ECU started


def _drain(bus: can.BusABC) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout=0)) is not None:
        out.append(msg)
    return out


async def test_a_missing_interface_is_waited_for_not_crashed_on(
    autojump_clock: trio.testing.MockClock, dbc: Path
) -> None:
    config = SimulatorConfig(database=dbc, interface="socketcan", channel="vwosnone0", reconnect_max=1.0)
    async with open_harness(ServiceSpec("ecu", CanSimulator, config)) as car:
        await trio.sleep(5.0)
        assert car.status()["ecu"].state.value == "running"
        assert car.status()["ecu"].restarts == 0


def test_the_hook_is_clamped_to_the_signal_range_and_unknown_names_are_refused(dbc: Path) -> None:
    frames: list[Frame] = []
    ecu = SimulatedEcu(
        load_database(dbc), frames.append, messages=["Dash"], values=lambda m, t: {"Speed": 900.0}
    )
    ecu.start(0.0)
    codec = CanCodec(load_database(dbc), "check", codec=Codec())
    assert codec.decode(256, ecu.poll(0.0)[0].data)[0][1].Speed == 250.0  # the range's top
    with pytest.raises(ValueError, match="Dash: the vehicle model sets 'Sped', not a signal it may set"):
        SimulatedEcu(load_database(dbc), frames.append, values=lambda m, t: {"Sped": 1.0})
    with pytest.raises(ValueError, match="Speed: expected a number, got 'fast'"):
        SimulatedEcu(load_database(dbc), frames.append, values=lambda m, t: {"Speed": "fast"})  # type: ignore[dict-item]


def test_config_mistakes_are_reported_at_their_key(dbc: Path, tmp_path: Path) -> None:
    text = f"""
[services.ecu]
plugin = "can_sim"
[services.ecu.config]
database = "{dbc}"
messages = ["Dash", "Dahs"]
receive = ["Command", "Dash"]
default_cycle = 0
[services.broken]
plugin = "can_sim"
[services.broken.config]
database = "{tmp_path / "nope.dbc"}"
[services.sloppy]
plugin = "can_sim"
[services.sloppy.config]
database = "{tmp_path / "bad.dbc"}"
"""
    (tmp_path / "bad.dbc").write_text(
        'VERSION ""\nBO_ 1 X: 1 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" GW\n SG_ B : 4|8@1+ (1,0) [0|1] "" GW\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    message = str(info.value)
    assert "services.ecu.config.messages[1]: no message 'Dahs' in ecu.dbc; did you mean 'Dash'?" in message
    assert "services.ecu.config.default_cycle: must be positive, not 0" in message
    assert "services.ecu.config.receive[1]: Dash: listed in both messages and receive" in message
    assert "services.broken.config.database: " in message
    assert "nope.dbc: no such file" in message
    assert "services.sloppy.config.database: " in message
    assert "The signal B does not fit in message X." in message
    assert "real-world files often need strict = false" in message
