"""The benchmarks in ``bench/`` run, tiny, and report what they promise: no timing is checked here.

Each benchmark is a case of `CASES`: its script runs as a subprocess with ``--json`` and a tiny workload, and
must print exactly one JSON object whose figures are positive numbers and whose drop counts are 0.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import MQB_DBC, SHARED, require_shared_file

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MODEL3_DBC = SHARED / "kuksa" / "Model3CAN.dbc"
#: A benchmark that has not finished by then is hung, not slow.
TIMEOUT = 120
#: The config bench/footprint.py measures in the suite.
FOOTPRINT_CONFIG = ROOT / "examples" / "demo" / "vwos.toml"


@dataclass(frozen=True)
class Case:
    """One benchmark script and what its ``--json`` object must hold."""

    script: str
    #: A workload small enough for the test suite.
    args: tuple[str, ...]
    #: Keys whose values must be positive numbers.
    positive: tuple[str, ...]
    #: Keys whose values must be 0 (samples dropped, errors).
    zero: tuple[str, ...] = ()
    #: Keys that may be null, but only when the module named is not installed (an optional reference).
    optional: Mapping[str, str] = field(default_factory=dict)
    #: Text the human-readable table must contain.
    table_mentions: tuple[str, ...] = ()
    #: Data files from ../shared the benchmark reads.
    needs: tuple[Path, ...] = ()
    #: The test id (default: the script).
    name: str = ""

    @property
    def id(self) -> str:
        return self.name or self.script


CASES = [
    Case(
        "bus.py",
        ("--samples", "2000", "--repeat", "2"),
        positive=(
            "delivered_per_s_1to1",
            "delivered_per_s_1to10",
            "p50_latency_us_1to1",
            "p99_latency_us_1to1",
            "zenoh_per_s_1to1",
            "trio_channel_per_s_1to1",
        ),
        zero=("dropped_1to1", "dropped_1to10", "zenoh_dropped_1to1"),
        optional={"zenoh_per_s_1to1": "zenoh", "zenoh_dropped_1to1": "zenoh"},
        table_mentions=("vwos 1 -> 1 delivered", "zenoh", "trio memory channel", "goal"),
    ),
    *(
        Case(
            "can.py",
            ("--frames", "2000", "--repeat", "2", "--batch", "128", "--seconds", "0.2", *dbc_args),
            positive=(
                "frames_per_s",
                "cpu_us_per_frame",
                "codec_decode_frames_per_s",
                "cantools_decode_frames_per_s",
                "opendbc_frames_per_s",
                "opendbc_cpu_us_per_frame",
                "max_lag_ms_at_8000_fps",
                "paced_frames",
                "opendbc_messages",
            ),
            zero=(
                "dropped_at_8000_fps",
                "dropped_saturated",
                "frame_errors",
                "opendbc_rejected_frames",
                "e2e_failures",
            ),
            optional={
                "opendbc_frames_per_s": "opendbc",
                "opendbc_cpu_us_per_frame": "opendbc",
                "opendbc_rejected_frames": "opendbc",
                "opendbc_messages": "opendbc",
            },
            table_mentions=(
                "whole path",
                "opendbc CANParser.update",
                "cantools decode_message",
                "paced 8,000 frames/s",
                "goal whole path >= 1.5x opendbc",
            ),
            needs=(dbc,),
            name=name,
        )
        for name, dbc, dbc_args in [
            ("can.py", MQB_DBC, ()),  # the default: vw_mqb.dbc, strict=False
            ("can.py-Model3CAN", MODEL3_DBC, ("--dbc", str(MODEL3_DBC))),
        ]
    ),
    Case(
        "uplink.py",
        # Small batches: several of them through the file transport and the benchmark's own mosquitto.
        ("--samples", "3000", "--repeat", "2", "--call-samples", "500", "--max-batch-bytes", "8192"),
        positive=(
            "accepted_per_s",
            "delivered_per_s",
            "delivered_file_per_s",
            "bytes_per_sample",
            "json_bytes_per_sample",
            "json_vs_vwos_bytes",
            "filter_per_s",
        ),
        zero=("lost_samples", "duplicated_samples"),
        table_mentions=(
            "accepted into the outbox",
            "delivered end to end to mosquitto",
            "delivered end to end (file transport",
            "plain JSON",
            "goal",
        ),
    ),
    Case(
        "ipc.py",
        # Publisher, subscriber (and broker) processes of each system; QoS 0 drops are reported, not zero.
        ("--samples", "2000", "--repeat", "2"),
        positive=("delivered_per_s", "two_process_per_s", "zenoh_per_s", "mosquitto_per_s"),
        zero=("dropped", "dropped_by_subscriber_queue"),
        optional={"zenoh_per_s": "zenoh", "mosquitto_per_s": "paho"},
        table_mentions=(
            "vwos (broker + 2 clients, Unix socket)",
            "vwos (publisher in the broker, 1 client)",
            "zenoh",
            "mosquitto + paho QoS 0",
            "goal",
        ),
    ),
    Case(
        "record.py",
        # A broker child publishing to this process's recorder over the socket, the bare mcap writer, replay.
        ("--samples", "3000", "--repeat", "1", "--topics", "2"),
        positive=("record_per_s", "mcap_bare_per_s", "replay_per_s", "bytes_per_sample"),
        zero=("dropped",),
        table_mentions=("record from a live bus (socket)", "mcap Writer alone (reference)", "replay", "goal"),
    ),
    Case(
        "footprint.py",
        # `vwos run` of a small config (the script's default is the demo's, examples/demo/vwos.toml), one
        # measured run after the warm-up, a short settle; beside the bare-interpreter references.
        ("--config", str(FOOTPRINT_CONFIG), "--repeat", "1", "--settle", "0.2"),
        positive=(
            "seconds_to_ready",
            "cpu_seconds_to_ready",
            "rss_mib",
            "rss_at_ready_mib",
            "rss_anon_mib",
            "rss_file_mib",
            "hwm_mib",
            "seconds_to_stop",
            "bare_python_seconds_to_ready",
            "bare_python_rss_mib",
            "import_trio_seconds_to_ready",
            "import_trio_rss_mib",
            "import_vwos_cli_seconds_to_ready",
            "import_vwos_cli_rss_mib",
        ),
        table_mentions=(
            "vwos: spawn -> READY=1 (all services up)",
            "vwos: RSS after 0.2 s running",
            "python -c pass: RSS",
            'python -c "import trio": spawn -> READY=1',
            "goal RSS < 40 MiB",
            "goal spawn -> all services ready < 0.5 s",
        ),
    ),
]


def run_bench(script: str, *args: str, python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_args, str(BENCH / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_json_figures(case: Case) -> None:
    for path in case.needs:
        require_shared_file(path)
    proc = run_bench(case.script, "--json", *case.args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON value: anything else on stdout fails here
    assert isinstance(result, dict)
    for key in (*case.positive, *case.zero):
        assert key in result, f"{case.script}: no {key!r} in {sorted(result)}"
        value = result[key]
        if value is None and key in case.optional:
            module = case.optional[key]
            assert not installed(module), f"{key} is null although {module} is installed"
            continue
        assert is_number(value), f"{key} = {value!r} is not a number"
        if key in case.zero:
            assert value == 0, f"{key} = {value!r}"
        else:
            assert value > 0, f"{key} = {value!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_table(case: Case) -> None:
    for path in case.needs:
        require_shared_file(path)
    proc = run_bench(case.script, *case.args)
    assert proc.returncode == 0, proc.stderr
    for text in case.table_mentions:
        assert text in proc.stdout


def _hiding(module: str) -> str:
    """Python code that runs the script in argv[1] as __main__ with ``module`` not importable."""
    return (
        f"import runpy, sys; sys.modules[{module!r}] = None; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
        "runpy.run_path(script, run_name='__main__')"
    )


def test_bus_without_zenoh() -> None:
    """Without zenoh, the bus benchmark reports its figure as null, says why, and still measures the rest."""
    hide_zenoh = _hiding("zenoh")
    args = ("--samples", "500", "--repeat", "1")
    proc = run_bench("bus.py", "--json", *args, python_args=("-c", hide_zenoh))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["zenoh_per_s_1to1"] is None
    assert result["vwos_vs_zenoh_1to1"] is None
    assert "zenoh is not importable" in result["zenoh_unavailable"]
    assert result["delivered_per_s_1to1"] > 0
    table = run_bench("bus.py", *args, python_args=("-c", hide_zenoh))
    assert table.returncode == 0, table.stderr
    assert "zenoh not measured: zenoh is not importable" in table.stdout


def _bench_module(monkeypatch: pytest.MonkeyPatch, script: str) -> Any:
    """bench/``script`` imported (the scripts put the project root on sys.path: undone after the test)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCH / script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_can_counts_a_sample_its_subscriber_dropped_as_lost_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus counts a dropped sample as not received (dropped = pushed - received - queued): of 1000
    frames, 990 samples received and 10 dropped is 10 lost, not 20."""
    bench_can = _bench_module(monkeypatch, "can.py")
    saturated = bench_can.SaturatedRun(frames=1000, received=990, dropped=10, seconds=0.5, cpu=0.25)
    assert saturated.lost == 10
    assert (saturated.per_s, saturated.cpu_us_per_frame) == (2000.0, 250.0)
    paced = bench_can.PacedRun(frames=1000, received=990, dropped=10, seconds=1.0, cpu=0.5, lags=[0.001])
    assert paced.lost == 10
    assert isinstance(paced, bench_can.SaturatedRun)
    assert paced.lags == [0.001]
    # Samples never published or still queued when the run ended are lost too, without a drop.
    assert bench_can.SaturatedRun(frames=1000, received=997, dropped=0, seconds=1.0, cpu=1.0).lost == 3
    assert bench_can.SaturatedRun(frames=1000, received=1000, dropped=0, seconds=1.0, cpu=1.0).lost == 0


#: A small database with the habits of real exports, for bench/can.py: signals without a declared range
#: ([0|0]), ranges at the edge of the scaling (50.8 bar at 0.1 is raw 507.99999999999994 in floating point,
#: 50.8 degC at 0.5/-10 raw 121.6), a 24-byte message without
#: VFrameFormat (CAN FD all the same), an extended id, a float, a multiplexer, choices with an SNA value.
NASTY_DBC = """VERSION ""

BO_ 256 Plain: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|0] "km/h" GW
 SG_ Gear : 16|3@1+ (1,0) [0|7] "" GW
 SG_ Temp : 24|8@1- (0.5,-10) [-5|50.8] "degC" GW
 SG_ Plain_Counter : 32|4@1+ (1,0) [0|15] "" GW
 SG_ Pressure : 40|10@1+ (0.1,0) [0|50.8] "bar" GW
 SG_ Plain_CRC : 56|8@1+ (1,0) [0|255] "" GW

BO_ 2147483913 Ext: 8 ECU
 SG_ Torque : 0|16@1- (0.1,0) [0|0] "Nm" GW
 SG_ Fl : 16|32@1- (1,0) [0|0] "" GW

BO_ 300 Wide: 24 ECU
 SG_ A : 0|16@1+ (1,0) [0|100] "" GW
 SG_ B : 176|16@1+ (0.001,0) [0|0] "" GW

BO_ 301 Paged: 8 ECU
 SG_ Page M : 0|8@1+ (1,0) [0|255] "" GW
 SG_ P0 m0 : 8|16@1+ (1,0) [0|0] "" GW
 SG_ P1 m1 : 8|16@1+ (0.1,0) [0|1000] "" GW

SIG_VALTYPE_ 2147483913 Fl : 1;
VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" 7 "SNA" ;
"""
#: ... and a standard message with the number of Ext's extended id, 0x109: a distinct message.
COLLIDING = 'BO_ 265 Std109: 2 ECU\n SG_ X : 0|16@1+ (1,0) [0|0] "" GW\n'
SMALL = ("--frames", "1500", "--repeat", "1", "--batch", "64", "--seconds", "0.1")


def _nasty(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "nasty.dbc"
    path.write_text(NASTY_DBC + extra)
    return path


@pytest.mark.parametrize(
    "extra",
    [
        "",
        pytest.param(COLLIDING, id="extended-and-standard-0x109"),
    ],
)
def test_can_takes_another_database(tmp_path: Path, extra: str) -> None:
    """`--dbc` with signals without a range (it crashed on them), FD, extended ids, floats, multiplexers."""
    proc = run_bench("can.py", "--json", "--dbc", str(_nasty(tmp_path, extra)), *SMALL)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["database"] == "nasty.dbc"
    assert result["strict"] is True
    assert result["fd"] is True  # Wide, 24 bytes
    assert result["mix_messages"] == result["database_messages"] == (5 if extra else 4)
    assert result["skipped_messages"] == []
    assert result["frames_per_s"] > 0
    assert result["cantools_decode_frames_per_s"] > 0
    assert result["dropped_at_8000_fps"] == result["dropped_saturated"] == result["frame_errors"] == 0
    if installed("opendbc"):
        assert result["opendbc_frames_per_s"] > 0
        assert result["opendbc_messages"] == result["mix_messages"]
        assert result["opendbc_checked_messages"] == 0  # opendbc knows no checksum for "nasty"
        assert result["opendbc_rejected_frames"] == 0


def test_can_traffic_is_valid_for_the_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every raw value inside the signal's declared range, taken in raw space (50.8 bar at 0.1 is raw 508,
    though (50.8 - 0) / 0.1 is 507.99999999999994; 50.8 degC at 0.5/-10 is 121.6, so 121 is the top),
    counters counting by one, pages cycling, ids spread over the messages, the same frames every time."""
    bench_can = _bench_module(monkeypatch, "can.py")
    db = bench_can.load_database(_nasty(tmp_path))
    temp = db.get_message_by_name("Plain").get_signal_by_name("Temp")
    assert bench_can.raw_bounds(temp) == (10, 121)
    pressure = db.get_message_by_name("Plain").get_signal_by_name("Pressure")
    assert bench_can.raw_bounds(pressure) == (0, 508)
    speed = db.get_message_by_name("Plain").get_signal_by_name("Speed")  # no range: what 16 bits carry
    assert bench_can.raw_bounds(speed) == (0, 65535)
    frames = bench_can.traffic(bench_can.mix(db), 4000)
    assert len(frames) == 4000
    by_id: dict[str, list[dict[str, Any]]] = {}
    messages = {(m.frame_id, m.is_extended_frame): m for m in db.messages}
    for frame in frames:
        message = messages[frame.arbitration_id, frame.is_extended_id]
        assert frame.is_extended_id == message.is_extended_frame
        assert frame.is_fd == (message.length > 8)
        raw = message.decode(frame.data, decode_choices=False, scaling=False)
        for name, value in raw.items():
            low, high = bench_can.raw_bounds(message.get_signal_by_name(name))
            assert low <= value <= high, f"{message.name}.{name} = {value}"
        by_id.setdefault(message.name, []).append(raw)
    assert set(by_id) == {"Plain", "Ext", "Wide", "Paged"}  # 100 ms each: about a quarter each
    assert all(900 <= len(v) <= 1100 for v in by_id.values())
    counters = [r["Plain_Counter"] for r in by_id["Plain"]]
    assert all((b - a) % 16 == 1 for a, b in itertools.pairwise(counters))
    assert [r["Page"] for r in by_id["Paged"][:4]] == [0, 1, 0, 1]
    assert len({r["Speed"] for r in by_id["Plain"]}) > 100  # random, drifting
    assert {r["Gear"] for r in by_id["Plain"]} <= {0, 1, 2, 3, 7}
    assert frames == sorted(frames, key=lambda m: m.timestamp)
    again = bench_can.traffic(bench_can.mix(db), 4000)
    assert [bytes(m.data) for m in again] == [bytes(m.data) for m in frames]  # seeded: the same frames


def test_can_bad_databases_and_options_are_clear_errors(tmp_path: Path) -> None:
    missing = run_bench("can.py", "--dbc", str(tmp_path / "missing.dbc"), *SMALL)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'missing.dbc'}: no such file"
    overlapping = tmp_path / "overlap.dbc"
    overlapping.write_text(
        'VERSION ""\nBO_ 1 X: 1 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" GW\n SG_ B : 4|8@1+ (1,0) [0|1] "" GW\n'
    )
    strict = run_bench("can.py", "--dbc", str(overlapping), *SMALL)
    assert strict.returncode == 2
    assert "cannot load the CAN database" in strict.stderr
    assert strict.stderr.rstrip().endswith("(real-world files often need --no-strict)")
    assert "Traceback" not in strict.stderr
    # --no-strict loads it, but cantools encodes none of its messages (their signals overlap).
    loose = run_bench("can.py", "--dbc", str(overlapping), "--no-strict", *SMALL)
    assert loose.returncode == 2
    assert "cantools encodes and decodes none of its messages" in loose.stderr
    # A database without protected messages: E2E checks are on, on none of them; --no-e2e turns them off.
    for flag in ("--e2e", "--no-e2e"):
        e2e = run_bench("can.py", "--json", "--dbc", str(_nasty(tmp_path)), flag, *SMALL)
        assert e2e.returncode == 0, e2e.stderr
        result = json.loads(e2e.stdout)
        assert (result["e2e"], result["e2e_messages"], result["e2e_failures"]) == (False, [], 0)


def test_can_checks_e2e_where_the_database_has_it() -> None:
    """Model3CAN's Tesla checksums and counters, filled by the gateway's protectors, all checked and passed
    (and, with opendbc, vw_mqb's CRCs as opendbc computes them: it rejects none of the frames)."""
    proc = run_bench("can.py", "--json", "--dbc", str(require_shared_file(MODEL3_DBC)), *SMALL)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["e2e"] is True
    assert len(result["e2e_messages"]) == 25
    assert result["e2e_failures"] == 0
    assert result["frame_errors"] == 0


def test_can_without_opendbc(tmp_path: Path) -> None:
    """Without opendbc (Python >= 3.13 has no release of it), its figure is null, the table says why, and
    the rest is measured."""
    hide = _hiding("opendbc")
    args = ("--dbc", str(_nasty(tmp_path)), *SMALL)
    proc = run_bench("can.py", "--json", *args, python_args=("-c", hide))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["opendbc_frames_per_s"] is None
    assert result["gateway_vs_opendbc"] is None
    assert result["goal_vs_opendbc_met"] is None
    assert "opendbc is not importable" in result["opendbc_unavailable"]
    assert result["frames_per_s"] > 0
    table = run_bench("can.py", *args, python_args=("-c", hide))
    assert table.returncode == 0, table.stderr
    assert "opendbc not measured: opendbc is not importable" in table.stdout
    assert "goal whole path >= 1.5x opendbc's CANParser: n/a" in table.stdout


def test_footprint_falls_back_to_the_overspeed_example_without_a_demo_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    footprint = _bench_module(monkeypatch, "footprint.py")
    assert footprint.choose_config(None)[0] in (footprint.DEMO_CONFIG, footprint.FALLBACK_CONFIG)
    monkeypatch.setattr(footprint, "DEMO_CONFIG", ROOT / "examples" / "no-such-demo" / "vwos.toml")
    config, note = footprint.choose_config(None)
    assert config == ROOT / "examples" / "overspeed" / "vwos.toml"
    assert "examples/no-such-demo/vwos.toml does not exist" in note
    assert "measuring examples/overspeed/vwos.toml instead" in note
    assert footprint.choose_config(tmp_path / "mine.toml") == (tmp_path / "mine.toml", None)


def test_footprint_of_a_missing_config_fails_clearly(tmp_path: Path) -> None:
    proc = run_bench("footprint.py", "--config", str(tmp_path / "missing.toml"), "--repeat", "1")
    assert proc.returncode == 2
    assert f"no such config: {tmp_path / 'missing.toml'}" in proc.stderr
    assert proc.stdout == ""


def test_footprint_reports_a_config_that_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "vwos.toml"
    config.write_text('[services.x]\nplugin = "nowhere:Nothing"\n')
    proc = run_bench("footprint.py", "--config", str(config), "--repeat", "1", "--settle", "0")
    assert proc.returncode == 1
    assert "exited with 2 before READY=1" in proc.stderr  # vwos's exit code for a bad config ...
    assert "nowhere" in proc.stderr  # ... and what vwos said about it
