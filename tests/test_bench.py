"""The benchmarks in ``bench/`` run, tiny, and report what they promise: no timing is checked here.

Each benchmark is a case of `CASES`: its script runs as a subprocess with ``--json`` and a tiny workload, and
must print exactly one JSON object whose figures are positive numbers and whose drop counts are 0.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import MQB_DBC, require_shared_file

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
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
    Case(
        "can.py",
        ("--frames", "2000", "--repeat", "2", "--batch", "128", "--seconds", "0.2"),
        positive=(
            "frames_per_s",
            "cpu_us_per_frame",
            "codec_decode_frames_per_s",
            "cantools_decode_frames_per_s",
            "max_lag_ms_at_8000_fps",
            "paced_frames",
        ),
        zero=("dropped_at_8000_fps", "dropped_saturated", "frame_errors"),
        table_mentions=("whole path", "cantools decode_message", "paced 8,000 frames/s", "goal"),
        needs=(MQB_DBC,),
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
        "footprint.py",
        # `vwos run` of a small config (the script's default is the demo's, examples/demo/vwos.toml), one
        # measured run after the warm-up, a short settle; beside the bare-interpreter references.
        ("--config", str(FOOTPRINT_CONFIG), "--repeat", "1", "--settle", "0.2"),
        positive=(
            "seconds_to_ready",
            "rss_mib",
            "rss_at_ready_mib",
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
            "goal RSS < 60 MiB",
            "goal spawn -> all services ready < 1.5 s",
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


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.script)
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


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.script)
def test_table(case: Case) -> None:
    for path in case.needs:
        require_shared_file(path)
    proc = run_bench(case.script, *case.args)
    assert proc.returncode == 0, proc.stderr
    for text in case.table_mentions:
        assert text in proc.stdout


def test_bus_without_zenoh() -> None:
    """Without zenoh, the bus benchmark reports its figure as null, says why, and still measures the rest."""
    hide_zenoh = (
        "import runpy, sys; sys.modules['zenoh'] = None; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
        "runpy.run_path(script, run_name='__main__')"
    )
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
