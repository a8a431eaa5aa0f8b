"""The demo vehicle (examples/demo, `./dev demo`): its configs, and the demo run as a user runs it -- on
python-can's virtual bus, against a real MQTT broker, and on real SocketCAN vcan0."""

from __future__ import annotations

import importlib
import json
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import mqtt_broker
import pytest
import trio
import vcan
from spawn import wait_for_line

import bus
from bus import Codec, Topic
from services.can import CanCodec, load_database
from services.uplink import BatchSample, decode_batch
from vwos import load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
CONFIGS = sorted(DEMO.glob("vwos*.toml"))
VEHICLE = "DEMO-CAR-1"
VWOS_RUN = (sys.executable, "-m", "vwos", "run")


def vwos(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vwos", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def demo_config(tmp_path: Path, name: str = "vwos.toml", **replace: str) -> Path:
    """The demo's config ``name`` with absolute paths to the demo, its state and batches in ``tmp_path``,
    and ``replace`` (old text: new text) applied."""
    text = (DEMO / name).read_text()
    state = re.search(r'state_dir = "(\.demo/[^"]*)"', text)
    assert state is not None
    changes = {
        state.group(0): f'state_dir = "{tmp_path / "state"}"',
        'python_path = ["."]': f'python_path = ["{DEMO}"]',
        'database = "demo_vehicle.dbc"': f'database = "{DEMO / "demo_vehicle.dbc"}"',
        '".demo/outgoing"': f'"{tmp_path / "outgoing"}"',
        '".demo/outgoing-vcan"': f'"{tmp_path / "outgoing"}"',
        **replace,
    }
    for old, new in changes.items():
        assert old in text or old.startswith('".demo/outgoing'), old
        text = text.replace(old, new)
    config = tmp_path / name
    config.write_text(text)
    return config


def samples_of(batches: list[bytes]) -> dict[str, list[BatchSample]]:
    """Every sample of the batches, by topic, in time order."""
    by_topic: dict[str, list[BatchSample]] = {}
    for data in batches:
        for sample in decode_batch(data).samples:
            by_topic.setdefault(sample.topic, []).append(sample)
    return {topic: sorted(samples, key=lambda s: s.timestamp_us) for topic, samples in by_topic.items()}


def values(samples: dict[str, list[BatchSample]], topic: str) -> list[Any]:
    return [s.value for s in samples.get(topic, [])]


def assert_the_car_drove_and_locked(samples: dict[str, list[BatchSample]]) -> None:
    """What every run of the demo must have shipped after a few seconds of driving."""
    speeds = values(samples, "Vehicle.Speed")
    assert len(speeds) >= 10
    assert max(speeds) > 15.0  # it drove off ...
    assert values(samples, "Vehicle.Cabin.Door.AutoLock.Commands")[-1] == 1  # ... the auto lock sent one
    locked = values(samples, "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked")
    assert locked[-1] is True  # ... the simulated car's central locking answered it over CAN
    assert "locked" in values(samples, "Vehicle.Cabin.Door.AutoLock.State")
    assert values(samples, "Vehicle.TripMeterReading")[-1] > 0.0  # ... and the trip computer counted
    assert values(samples, "Vehicle.Powertrain.CombustionEngine.Speed")[-1] >= 800.0


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- the configs ---------------------------------------------------------------------------------------------


def test_there_are_the_four_configs() -> None:
    assert [c.name for c in CONFIGS] == [
        "vwos-mqtt.toml",
        "vwos-vcan-mqtt.toml",
        "vwos-vcan.toml",
        "vwos.toml",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_every_config_passes_vwos_check(config: Path) -> None:
    result = vwos("check", config)
    assert result.returncode == 0, result.stderr
    assert f"{config}: ok, 7 services in start order" in result.stdout


def _differences(base: Any, other: Any, path: str = "") -> set[str]:
    if isinstance(base, dict) and isinstance(other, dict):
        keys = set(base) | set(other)
        return {d for key in keys for d in _differences(base.get(key), other.get(key), f"{path}.{key}")}
    if isinstance(base, list) and isinstance(other, list) and len(base) == len(other):
        return {d for i, (a, b) in enumerate(zip(base, other, strict=True)) for d in _differences(a, b, path)}
    return set() if base == other else {path.lstrip(".")}


def test_the_configs_differ_from_the_default_only_where_they_say() -> None:
    def load(name: str) -> dict[str, Any]:
        return tomllib.loads((DEMO / name).read_text())

    base = load("vwos.toml")
    can = {f"services.{s}.config.{k}" for s in ("vehicle", "gateway") for k in ("interface", "channel")}
    mqtt = {"services.uplink.config.transport", "services.uplink.config.directory"}
    mqtt |= {"services.uplink.config.mqtt", "services.dashboard.config"}
    # Each config keeps its state and batches apart, so that they can run side by side.
    outgoing = {"services.uplink.config.directory", "services.dashboard.config.batches"}
    assert _differences(base, load("vwos-vcan.toml")) == {"supervisor.state_dir", *can, *outgoing}
    assert _differences(base, load("vwos-mqtt.toml")) == {"supervisor.state_dir", *mqtt}
    assert _differences(base, load("vwos-vcan-mqtt.toml")) == {"supervisor.state_dir", *can, *mqtt}
    vcan_config = load("vwos-vcan.toml")["services"]
    assert (
        vcan_config["vehicle"]["config"]["channel"] == vcan_config["gateway"]["config"]["channel"] == "vcan0"
    )
    assert load("vwos-mqtt.toml")["services"]["uplink"]["config"]["mqtt"] == {
        "host": "localhost",
        "port": 1883,
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_the_gateway_declares_exactly_the_topics_the_demo_services_use(config: Path) -> None:
    """A service subscribing with a `Topic` of demo_signals declares it: it must agree with the gateway's
    declaration (unit, range, max_age), or the bus refuses the later one."""
    loaded = load_config(config)  # puts examples/demo on sys.path
    signals = importlib.import_module("demo_signals")
    gateway = loaded.service("gateway").config
    codec = CanCodec(
        load_database(gateway.database),
        gateway.network,
        mappings=gateway.signals,
        codec=Codec(),
        message_topics=False,
    )
    declared = {t.name: t for t in codec.topics}
    ours: list[Topic[Any]] = [
        signals.SPEED,
        signals.ENGINE_SPEED,
        signals.COOLANT_TEMPERATURE,
        signals.FUEL_RATE,
        signals.FUEL_LEVEL,
        signals.ODOMETER,
        signals.GEAR_LEVER,
        signals.CURRENT_GEAR,
        *signals.TIRE_PRESSURE.values(),
        *signals.DOOR_LOCKED.values(),
        *signals.DOOR_OPEN.values(),
    ]
    assert sorted(declared) == sorted(t.name for t in ours)
    for topic in ours:
        assert topic.same_declaration(declared[topic.name]), (topic, declared[topic.name])
    assert gateway.network == signals.NETWORK


def test_mistakes_in_the_demo_config_are_named_with_the_key_and_a_fix(tmp_path: Path) -> None:
    config = demo_config(
        tmp_path,
        **{
            'receive = ["Body_DoorCommand"]': 'receive = ["Body_DoorComand"]\n'
            'leaking_tyre = "RX"\nfuel_percent = 120.0',
            "lock_above = 15.0": "lock_above = 15.0\nrearm_below = 20.0",
            "low_tyre_kpa = 200.0": 'low_tyre_kpa = "200"',
        },
    )
    result = vwos("check", config)
    assert result.returncode == 2
    assert "5 problems in the config" in result.stderr
    assert (
        "services.vehicle.config.receive[0]: no message 'Body_DoorComand' in demo_vehicle.dbc; "
        "did you mean 'Body_DoorCommand'?" in result.stderr
    )
    assert "services.vehicle.config.leaking_tyre: expected one of" in result.stderr
    assert "services.vehicle.config.fuel_percent: expected a number from 0 to 100, got 120" in result.stderr
    assert (
        "services.autolock.config.rearm_below: must be from 0 to below lock_above (15 km/h)" in result.stderr
    )
    assert "services.warnings.config.low_tyre_kpa: expected a number" in result.stderr


# -- the demo, run as a user runs it ----------------------------------------------------------------------


def test_the_demo_runs_and_ships_what_the_car_did(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    started = time.monotonic()
    # The car passes 15 km/h about 4 s after the start; a batch leaves at least every 2 s.
    result = vwos("run", config, "--duration", "8", "--log-format", "json", "--log-level", "info")
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 30
    events = log_events(result.stderr)
    ready = next(e for e in events if e["event"] == "all services ready")
    assert ready["services"] == 7
    problems = [e for e in events if e["level"] in ("warning", "error", "critical")]
    assert problems == []
    # Not a terminal: plain lines, then where the batches are and how to read them.
    outgoing = tmp_path / "outgoing"
    out = result.stdout
    assert re.search(r"^\[0:00:05\] speed \d+\.\d km/h D\d", out, re.MULTILINE), out
    assert "services 7/7 running" in out
    assert f"batch files are in {outgoing}/" in out
    assert f"vwos uplink inspect {outgoing} --summary" in out
    files = sorted(outgoing.glob("*.cbor"))
    assert len(files) >= 2  # a batch at least every 2 s while the car drives
    batches = [f.read_bytes() for f in files]
    assert [decode_batch(b).seq for b in batches] == list(range(1, len(batches) + 1))
    assert {decode_batch(b).vehicle_id for b in batches} == {VEHICLE}
    assert_the_car_drove_and_locked(samples_of(batches))
    shown = vwos("uplink", "inspect", outgoing, "--summary")
    assert shown.returncode == 0, shown.stderr
    assert f"vehicle {VEHICLE}" in shown.stdout
    assert "Vehicle.Cabin.Door.AutoLock.Commands" in shown.stdout


def test_ctrl_c_stops_the_demo_cleanly_and_says_where_the_batches_are(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json", "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "all services ready")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    stops = [str(e.get("service")) for e in log_events(err) if e["event"] == "service stopping"]
    # Each service is stopped once what starts after it has stopped; the four that start after the
    # gateway alone stop together.
    assert stops[0] == "dashboard"
    assert sorted(stops[1:5]) == ["autolock", "trip", "uplink", "warnings"]
    assert stops[5:] == ["gateway", "vehicle"]
    assert "The demo ran for 0:00:0" in out
    assert f"vwos uplink inspect {tmp_path / 'outgoing'} --summary" in out


@pytest.mark.slow
def test_the_demo_ships_to_a_real_mqtt_broker(
    tmp_path: Path, make_mosquitto: mqtt_broker.BrokerFactory
) -> None:
    broker = make_mosquitto()
    observer = mqtt_broker.Subscriber(broker, f"vwos/{VEHICLE}/batches")
    config = demo_config(
        tmp_path,
        "vwos-mqtt.toml",
        **{'host = "localhost"\nport = 1883': f'host = "{broker.host}"\nport = {broker.port}'},
    )
    with observer:
        result = vwos("run", config, "--duration", "8", "--log-format", "json", "--log-level", "info")
        assert result.returncode == 0, result.stderr[-3000:]
        connected = [e for e in log_events(result.stderr) if e["event"] == "uplink connected"]
        assert connected[0]["transport"].startswith("mqtt")
        received = observer.wait_for(2, timeout=10)
    assert_the_car_drove_and_locked(samples_of(received))
    assert "The batches went to the MQTT broker" in result.stdout
    assert not (tmp_path / "outgoing").exists()


@pytest.mark.vcan
@pytest.mark.slow
def test_the_demo_on_real_socketcan_vcan0(vcan_runner: vcan.VcanRunner, tmp_path: Path) -> None:
    config = demo_config(tmp_path, "vwos-vcan.toml")
    result = vcan_runner(
        f"""
        set -u
        base=$(vcan_receivers vcan0)
        candump -L vcan0,391:7FF >{tmp_path}/commands.log &   # the lock command: an independent witness
        candump -L -n 100 vcan0,0B0:7FF >{tmp_path}/speed.log &
        vcan_wait_receivers vcan0 $((base + 2))
        "$PYTHON" -m vwos run {config} --duration 10 --log-format json --log-level info \\
            >{tmp_path}/stdout 2>{tmp_path}/stderr
        code=$?
        sleep 0.5
        kill %1 2>/dev/null
        wait %2
        exit $code
        """,
        timeout=150,
    )
    stderr = (tmp_path / "stderr").read_text()
    assert result.returncode == 0, result.describe() + "\n" + stderr[-3000:]
    events = log_events(stderr)
    link = [e for e in events if e["event"] == "CAN link up"]
    assert link
    assert link[0]["mode"] == "fd"  # the gateway waits on the SocketCAN socket
    assert re.search(r"vcan0 391#01", (tmp_path / "commands.log").read_text())  # LockRequest = 1
    assert len((tmp_path / "speed.log").read_text().splitlines()) == 100  # ESP_01 from the simulated car
    files = sorted((tmp_path / "outgoing").glob("*.cbor"))
    assert_the_car_drove_and_locked(samples_of([f.read_bytes() for f in files]))


def test_the_demo_keeps_running_with_a_block_reader_attached_that_never_reads(tmp_path: Path) -> None:
    """Before: a remote reader subscribing Vehicle.** with overflow "block" and queue_size 1 made the
    gateway's publish_nowait raise; it crash-looped and the supervisor gave up in 0.7 s. Now the gateway,
    the uplink and every other service run on, and the car's data still reaches the cloud."""
    config = demo_config(tmp_path)
    socket = tmp_path / "vwos.sock"
    proc = subprocess.Popen(
        [*VWOS_RUN, str(config), "--socket", str(socket), "--log-format", "json", "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def attach_and_wait() -> int:
        async with bus.connect_unix(socket, "stuck-reader") as reader:
            stuck = reader.subscribe("Vehicle.**", queue_size=1, overflow="block")  # never read
            await trio.sleep(6)
            return stuck.statistics().received

    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "all services ready")
        received = trio.run(attach_and_wait)
        assert proc.poll() is None  # still running
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    events = log_events(err)
    trouble = [e for e in events if e["level"] in ("error", "critical")]
    assert trouble == []
    assert not [e for e in events if e["event"] == "restart scheduled"]
    assert received <= 1
    batches = sorted((tmp_path / "outgoing").glob("*.cbor"))
    assert len(batches) >= 2  # the uplink kept shipping
