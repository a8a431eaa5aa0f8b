"""The ``vwos`` command, run as a user runs it: a real process, real signals, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vwos._cli import main

EXAMPLE = Path(__file__).parent.parent / "examples" / "overspeed" / "vwos.toml"

CRASHING = """
import trio
from vwos import Service

class Crash(Service):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep(0.05)
        raise RuntimeError("sensor unplugged")
"""


def vwos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vwos", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_run_stops_cleanly_on_sigterm_in_reverse_order(tmp_path: Path) -> None:
    config = tmp_path / "vwos.toml"
    config.write_text(
        EXAMPLE.read_text()
        .replace('python_path = ["."]', f'python_path = ["{EXAMPLE.parent}"]')
        .replace('state_dir = ".state"', f'state_dir = "{tmp_path / "state"}"')
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "all services ready" in line:
                break
        else:
            pytest.fail("not ready within 30 s")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    events = [json.loads(line) for line in (lines + err.splitlines()) if line.strip()]
    messages = [(e["event"], e.get("service")) for e in events]
    assert proc.returncode == 0
    assert ("stopping on signal", None) in messages
    stops = [svc for event, svc in messages if event == "service stopping"]
    assert stops == ["overspeed", "drive"]
    assert messages[-1] == ("supervisor stopped", None)
    assert all("timestamp" in e and "level" in e for e in events)
    assert (tmp_path / "state" / "overspeed").is_dir()


def test_run_exits_1_when_the_supervisor_gives_up(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(textwrap.dedent(CRASHING))
    config = tmp_path / "vwos.toml"
    config.write_text(
        textwrap.dedent(
            """
            [supervisor]
            intensity = 2
            period = 60
            python_path = ["."]
            [services.crash]
            plugin = "crash:Crash"
            backoff = { initial = 0.01, jitter = 0.0 }
            """
        )
    )
    result = vwos("run", str(config), "--log-format", "json")
    assert result.returncode == 1
    assert "vwos: the supervisor gave up: 'crash' failed: RuntimeError: sensor unplugged" in result.stderr
    assert "3 restarts" in result.stderr


def test_run_with_a_bad_config_exits_2_listing_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "vwos.toml"
    config.write_text(
        '[supervisor]\nstrategy = "one_for_some"\n[services.x]\nplugin = "nope:Nope"\nrestrat = 1\n'
    )
    result = vwos("run", str(config))
    assert result.returncode == 2
    assert "3 problems in the config" in result.stderr
    assert "supervisor.strategy" in result.stderr
    assert "services.x.restrat" in result.stderr
    assert "did you mean 'restart'?" in result.stderr
    assert "nope" in result.stderr


def test_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "ok, 2 services in start order" in out
    assert "overspeed" in out
    assert "after drive" in out


def test_check_json_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "vwos.toml"
    config.write_text('[services.a]\nplugin = "x:Y"\nafter = ["b"]\n')
    assert main(["check", str(config), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    keys = sorted(p["key"] for p in report["problems"])
    assert keys == ["services.a.after[0]", "services.a.plugin"]


def test_check_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_plugins_lists_installed_services_with_their_config_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list)
    for plugin in listed:
        assert {"name", "ref", "config", "error"} <= set(plugin)


def test_version_and_usage() -> None:
    result = vwos("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("vwos ")
    result = vwos()
    assert result.returncode == 2
    assert "run" in result.stderr


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "vwos"
    result = subprocess.run(
        [script, "check", str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
