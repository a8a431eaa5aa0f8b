"""The simulated ECU as a service (`CanSimulator`, plugin ``can_sim``) and its vehicle-model hook, on
python-can's virtual interface under trio's MockClock. The ECU's schedule and plans: test_can_tools.py."""

from __future__ import annotations

import argparse
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
from conftest import SHARED, require_shared_file

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
from services.can import _cli as can_cli
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


@pytest.mark.usefixtures("vwos_bus_client")
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


@pytest.mark.usefixtures("vwos_bus_client")
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


@pytest.mark.usefixtures("vwos_bus_client")
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


# -- what the simulated car does with a real database's habits --------------------------------------------

#: A car whose signals have the habits of real exports: a vehicle speed with choices for its init and error
#: values (it stayed 0 before), an angle whose raw 0 means SNA, an enumeration with an SNA value, flags with
#: named values (one of them an error flag), and signals without a declared range ([0|0]).
CAR_DBC = """VERSION ""

BO_ 256 Motion: 8 ECU
 SG_ VehicleSpeed : 0|16@1+ (0.01,0) [0|655.35] "km/h" GW
 SG_ Angle : 16|8@1- (1,0) [-100|100] "deg" GW
 SG_ Gear : 24|3@1+ (1,0) [0|7] "" GW
 SG_ Blinker : 27|1@1+ (1,0) [0|1] "" GW
 SG_ Fault : 28|1@1+ (1,0) [0|1] "" GW
 SG_ Level : 32|8@1+ (1,0) [0|0] "" GW
 SG_ Temperature : 40|8@1+ (1,-40) [0|0] "degC" GW

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 20;
VAL_ 256 VehicleSpeed 65534 "Init" 65535 "Fehler" ;
VAL_ 256 Angle 0 "SNA" ;
VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" 7 "SNA" ;
VAL_ 256 Blinker 0 "off" 1 "on" ;
VAL_ 256 Fault 0 "kein_Fehler" 1 "Fehler" ;
"""


def _load(tmp_path: Path, text: str, *, strict: bool = True) -> Any:
    path = tmp_path / "car.dbc"
    path.write_text(text)
    return load_database(path, strict=strict)


async def _run_for(ecu: SimulatedEcu, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await ecu.run()


async def test_a_simulated_car_moves_its_signals_with_choices(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    db = _load(tmp_path, CAR_DBC)
    frames: list[Frame] = []
    ecu = SimulatedEcu(db, frames.append)
    await _run_for(ecu, 60.0)
    assert len(frames) == 3000  # 20 ms for a minute
    motion = [db.decode_message(f.arbitration_id, f.data, decode_choices=False) for f in frames]

    speeds = [m["VehicleSpeed"] for m in motion]
    assert max(speeds) - min(speeds) > 100  # it moves (it stayed 0 because the signal has choices)
    assert max(speeds) < 655.34  # never its Init or Fehler value
    angles = [m["Angle"] for m in motion]
    assert min(angles) < 0 < max(angles)  # a wave around zero ...
    assert 0 not in angles  # ... stepping over raw 0, which means SNA
    gears = [m["Gear"] for m in motion]
    assert set(gears) == {0, 1, 2, 3}  # P R N D, never SNA
    assert 3 <= sum(a != b for a, b in itertools.pairwise(gears)) <= 60 / 2  # held seconds each
    assert {m["Blinker"] for m in motion} == {0, 1}  # a named flag steps too
    assert {m["Fault"] for m in motion} == {0}  # ... but a healthy car shows no fault
    # Without a declared range: the range its bits carry.
    assert {m["Level"] for m in motion} == {0}  # a plain integer keeps its initial value
    temperatures = [m["Temperature"] for m in motion]
    assert max(temperatures) - min(temperatures) > 20
    assert -40 <= min(temperatures) <= max(temperatures) <= 215


def test_a_message_cantools_encodes_but_cannot_decode_is_left_out_with_the_reason(tmp_path: Path) -> None:
    """A signal reaching past its message (loaded with strict=False): cantools encodes the frames, but
    decodes none of them; a receiver would count every one as undecodable."""
    db = _load(
        tmp_path,
        'VERSION ""\n\nBO_ 256 Beyond: 2 ECU\n SG_ A : 8|16@1+ (1,0) [0|100] "" GW\n\n'
        'BO_ 257 Fine: 1 ECU\n SG_ B : 0|8@1+ (1,0) [0|100] "" GW\n',
        strict=False,
    )
    frames: list[Frame] = []
    ecu = SimulatedEcu(db, frames.append)
    assert ecu.messages == ["Fine"]
    assert list(ecu.skipped) == ["Beyond"]
    assert ecu.skipped["Beyond"].startswith("cantools encodes it but cannot decode the frames: ")
    ecu.start(0.0)
    assert [f.arbitration_id for f in ecu.poll(1.0)] == [257]


def tool(*argv: str | Path) -> int:
    """``vwos can ...`` as the command runs it."""
    parser = argparse.ArgumentParser(prog="vwos")
    can_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.handler(args)
    return code


def test_the_sim_command_warns_of_a_message_it_cannot_decode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(can_cli, "_clock", trio.testing.MockClock(autojump_threshold=0))
    path = tmp_path / "beyond.dbc"
    path.write_text(
        'VERSION ""\n\nBO_ 256 Beyond: 2 ECU\n SG_ A : 8|16@1+ (1,0) [0|100] "" GW\n\n'
        'BO_ 257 Fine: 1 ECU\n SG_ B : 0|8@1+ (1,0) [0|100] "" GW\n'
    )
    ch = channel()
    with can.Bus(interface="virtual", channel=ch) as listener:
        code = tool(
            "can", "sim", path, "--no-strict", "--interface", "virtual", "--channel", ch, "--duration", "1"
        )
        received = _drain(listener)
    assert code == 0
    assert {m.arbitration_id for m in received} == {257}
    err = capsys.readouterr().err
    assert (
        "vwos can: warning: Beyond is not simulated: cantools encodes it but cannot decode the frames" in err
    )


def _fd_dbc(tmp_path: Path) -> Path:
    """``WideFd`` is declared CAN FD (``VFrameFormat``); ``Wide``, 12 bytes too, is not (a common export
    fault): it is CAN FD all the same, there is no classic frame of 12 bytes."""
    path = tmp_path / "fd.dbc"
    path.write_text(
        """VERSION ""

BO_ 256 Wide: 12 ECU
 SG_ A : 0|16@1+ (1,0) [0|100] "" GW
 SG_ B : 80|16@1+ (1,0) [0|100] "" GW

BO_ 257 WideFd: 12 ECU
 SG_ C : 0|16@1+ (1,0) [0|100] "" GW

BO_ 258 Classic: 8 ECU
 SG_ D : 0|16@1+ (1,0) [0|100] "" GW

BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","""
        + '"reserved",' * 12
        + """"StandardCAN_FD","ExtendedCAN_FD";
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 257 14;
"""
    )
    return path


def test_fd_messages_need_an_fd_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(can_cli, "_clock", trio.testing.MockClock(autojump_threshold=0))
    path = _fd_dbc(tmp_path)
    db = load_database(path)
    ecu = SimulatedEcu(db, lambda frame: None, messages=["WideFd", "Classic"])
    assert ecu.fd_messages == ["WideFd"]
    classic = SimulatedEcu(db, lambda frame: None, messages=["WideFd", "Classic"], fd=False)
    assert classic.messages == ["Classic"]
    assert classic.skipped == {"WideFd": "CAN FD (12 data bytes), and the link is classic CAN (not fd)"}
    ch = channel()
    argv: list[str | Path] = [
        "can",
        "sim",
        path,
        "--messages",
        "WideFd,Classic",
        "--interface",
        "virtual",
        "--channel",
        ch,
    ]
    assert tool(*argv, "--duration", "1") == 2
    assert "vwos can: " in (err := capsys.readouterr().err)
    assert "message WideFd is CAN FD: simulate it with --fd" in err
    with can.Bus(interface="virtual", channel=ch, fd=True) as listener:
        assert tool(*argv, "--fd", "--duration", "1") == 0
        received = _drain(listener)
    wide = [m for m in received if m.arbitration_id == 257]
    assert wide
    assert all(m.is_fd and len(m.data) == 12 for m in wide)


def test_a_message_longer_than_8_bytes_is_fd_without_the_attribute(tmp_path: Path) -> None:
    path = _fd_dbc(tmp_path)
    ecu = SimulatedEcu(load_database(path), lambda frame: None)
    assert ecu.fd_messages == ["Wide", "WideFd"]
    classic = SimulatedEcu(load_database(path), lambda frame: None, fd=False)
    assert classic.messages == ["Classic"]
    assert set(classic.skipped) == {"Wide", "WideFd"}


@pytest.mark.usefixtures("vwos_bus_client")
async def test_the_service_leaves_fd_messages_out_on_a_classic_link(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = _fd_dbc(tmp_path)
    ch = channel()
    config = SimulatorConfig(
        database=path, interface="virtual", channel=ch, messages=("WideFd", "Classic"), receive_mode="poll"
    )
    with can.Bus(interface="virtual", channel=ch) as peer:
        async with open_harness(ServiceSpec("ecu", CanSimulator, config)) as car:
            await trio.sleep(1.0)
            assert car.status()["ecu"].state.value == "running"
            seen = _drain(peer)
    assert {m.arbitration_id for m in seen} == {258}
    assert 9 <= len(seen) <= 11


async def test_the_sim_of_model3can_decodes_in_range(autojump_clock: trio.testing.MockClock) -> None:
    """Kuksa's Model3CAN.dbc: 255 signals without a declared range, 29 multiplexed messages, choices named
    SNA everywhere. Every message is simulated, every frame decodes, every value is in range and none is a
    choice that means "no valid value"."""
    db = load_database(require_shared_file(SHARED / "kuksa" / "Model3CAN.dbc"))
    frames: list[Frame] = []
    ecu = SimulatedEcu(db, frames.append)
    assert ecu.skipped == {}
    assert len(ecu.messages) == len(db.messages)
    await _run_for(ecu, 10.0)
    messages: dict[tuple[int, bool], Any] = {(m.frame_id, m.is_extended_frame): m for m in db.messages}
    moved: dict[str, set[float]] = {}
    for frame in frames:
        message = messages[frame.arbitration_id, frame.is_extended_id]
        decoded = message.decode(frame.data, decode_choices=False)
        for name, value in decoded.items():
            signal = message.get_signal_by_name(name)
            if signal.minimum is not None and signal.maximum is not None:
                assert signal.minimum - 1e-6 <= value <= signal.maximum + 1e-6, f"{message.name}.{name}"
            label = (signal.choices or {}).get(round((value - signal.offset) / signal.scale))
            assert label is None or "SNA" not in str(label), f"{message.name}.{name} = {label}"
            moved.setdefault(f"{message.name}.{name}", set()).add(value)
    with_choices = [f"{m.name}.{s.name}" for m in db.messages for s in m.signals if s.choices]
    stepped = [name for name in with_choices if len(moved.get(name, ())) > 1]
    assert len(stepped) > len(with_choices) // 2  # a car that moves: most of them change within 10 s
