"""The ``vwos`` command, run as a user runs it: a real process, real signals, exit codes."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from spawn import wait_for_line

from vwos._cli import COMMANDS_GROUP, _command_entry_points, main

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


def example_config(tmp_path: Path) -> Path:
    """The overspeed example's config, its plugin path absolute and its state in ``tmp_path``."""
    config = tmp_path / "vwos.toml"
    config.write_text(
        EXAMPLE.read_text()
        .replace('python_path = ["."]', f'python_path = ["{EXAMPLE.parent}"]')
        .replace('state_dir = ".state"', f'state_dir = "{tmp_path / "state"}"')
    )
    return config


def test_run_stops_cleanly_on_sigterm_in_reverse_order(tmp_path: Path) -> None:
    config = example_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = wait_for_line(proc.stderr, "all services ready")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    events = [json.loads(line) for line in ("".join(lines) + err).splitlines() if line.strip()]
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
            critical = true
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


# -- command extensions (entry-point group vwos.commands) --------------------------------------------------

# Every module these tests write is called vwos_cx_*, and forgotten again after each test.
EXTENSIONS = """
import argparse


def register(subparsers):
    hello = subparsers.add_parser("hello", help="say hello")
    hello.add_argument("--name", default="world")
    hello.set_defaults(handler=lambda args: print(f"hello {args.name}") or 3)


def half(subparsers):
    subparsers.add_parser("half", help="half registered")
    raise RuntimeError("no CAN bus\\nhere")


def clash(subparsers):
    subparsers.add_parser("run")


def bare(subparsers):
    subparsers.add_parser("bare")


NOT_CALLABLE = 42
"""


@pytest.fixture
def extensions(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], None]]:
    """Install a fake distribution declaring the given ``vwos.commands`` entry points."""
    saved_path = sys.path[:]
    site = tmp_path / "site"
    site.mkdir()
    (site / "vwos_cx_demo.py").write_text(EXTENSIONS)
    sys.path.insert(0, str(site))

    def install(entry_points: dict[str, str]) -> None:
        info = site / "vwos_cx_demo-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vwos-cx-demo\nVersion: 1.0\n")
        lines = [f"[{COMMANDS_GROUP}]", *(f"{name} = {ref}" for name, ref in entry_points.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()

    yield install
    sys.path[:] = saved_path
    for name in [name for name in sys.modules if name.startswith("vwos_cx_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_an_extension_adds_a_command(
    extensions: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    extensions({"hello": "vwos_cx_demo:register"})
    assert main(["hello", "--name", "trio"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "hello trio\n"
    assert captured.err == ""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "say hello" in capsys.readouterr().out


def test_extensions_that_fail_warn_in_one_line_and_leave_nothing_behind(
    extensions: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    extensions(
        {
            "hello": "vwos_cx_demo:register",
            "half": "vwos_cx_demo:half",
            "clash": "vwos_cx_demo:clash",
            "gone": "vwos_cx_missing:register",
            "number": "vwos_cx_demo:NOT_CALLABLE",
        }
    )
    assert main(["hello"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "hello world\n"
    assert captured.err.splitlines() == [
        "vwos: warning: command extension 'clash' (vwos_cx_demo:clash) not loaded: "
        "ArgumentError: argument command: conflicting subparser: run",
        "vwos: warning: command extension 'gone' (vwos_cx_missing:register) not loaded: "
        "ModuleNotFoundError: No module named 'vwos_cx_missing'",
        "vwos: warning: command extension 'half' (vwos_cx_demo:half) not loaded: "
        "RuntimeError: no CAN bus here",
        "vwos: warning: command extension 'number' (vwos_cx_demo:NOT_CALLABLE) not loaded: "
        "TypeError: int is not callable",
    ]
    # What the half-registered extension added is gone again, from the choices and from the help.
    with pytest.raises(SystemExit) as info:
        main(["half"])
    assert info.value.code == 2
    assert "invalid choice: 'half'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "say hello" in out
    assert "half registered" not in out


def test_core_commands_do_not_load_extensions(
    extensions: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    extensions({"half": "vwos_cx_demo:half", "gone": "vwos_cx_missing:register"})
    assert main(["check", str(EXAMPLE)]) == 0
    assert main(["plugins", "--json"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().err == ""
    assert "vwos_cx_demo" not in sys.modules


def test_an_extension_command_without_a_handler(
    extensions: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    extensions({"bare": "vwos_cx_demo:bare"})
    assert main(["bare"]) == 2
    assert capsys.readouterr().err == "vwos: the command 'bare' has no handler (a bug in its extension)\n"


def test_extensions_found_through_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        seen.append(group)
        return [importlib.metadata.EntryPoint("zz", "vwos_cx_none:register", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert [ep.name for ep in _command_entry_points()] == ["zz"]
    assert seen == ["vwos.commands"]


def test_control_commands_over_the_socket_of_a_running_supervisor(tmp_path: Path) -> None:
    config = example_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "all services ready")
        status = json.loads(vwos("status", "--json").stdout)
        assert {s["name"]: s["state"] for s in status["services"]} == {
            "drive": "running",
            "overspeed": "running",
        }
        assert vwos("restart", "overspeed").returncode == 0
        after = json.loads(vwos("status", "--json").stdout)
        assert {s["name"]: s["last_exit"] for s in after["services"]}["overspeed"] == "stopped"
        topics = json.loads(vwos("bus", "list", "--json").stdout)
        assert "Vehicle.Speed" in {t["name"] for t in topics["topics"]}
        refused = vwos("bus", "pub", "Vehicle.Speed", '"fast"')
        assert refused.returncode == 1
        assert "Vehicle.Speed" in refused.stderr
        answer = vwos("bus", "call", "Vehicle.Warning.Overspeed.SetLimit", "100.0")
        assert answer.returncode == 0, answer.stderr
        assert "120" in answer.stdout  # the old limit
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    missing = vwos("status")
    assert missing.returncode == 3
    assert "cannot connect" in missing.stderr


def test_control_commands_connect_with_the_socket_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands reach the supervisor with `bus.connect_unix`, imported with `vwos._cli` (not looked up
    when a command runs), and say why they cannot: here a socket that nobody listens on."""
    import socket

    import trio

    import bus
    from vwos import _cli

    path = tmp_path / "vwos.sock"
    calls: list[tuple[str, str]] = []

    def spy(path: str, *, name: str) -> Any:
        calls.append((path, name))
        return bus.connect_unix(path, name=name)

    monkeypatch.setattr(_cli, "connect_unix", spy)
    args = _cli._parser(extensions=False).parse_args(["status", "--socket", str(path)])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound but not listening: a connection is refused
        code = trio.run(_cli._connect_and_run, _cli.cmd_status, args)
    assert code == 3
    assert calls == [(str(path), f"vwos-cli-{os.getpid()}")]
    hint = "(is `vwos run` running? it serves the control socket)"
    assert capsys.readouterr().err == f"vwos: cannot connect to {path}: nothing listens there {hint}\n"


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """``vwos ... | head``: the reader goes away; vwos stops with 141 (SIGPIPE's status), no traceback."""
    code = (
        "import sys; from vwos import _cli; "
        "_cli.main = lambda: (sys.stdout.write('line\\n' * 200_000), 0)[1]; _cli.console_main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # -u hides EPIPE (drops data)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(10) == b"line\nline\n"
        process.stdout.close()  # like head: read a little, then go
        errors = process.stderr.read()
        assert process.wait(timeout=30) == 141
    assert errors == b""


def test_every_argument_of_every_command_has_help_text() -> None:
    """The generated CLI reference (docs/_ext/vwos_cliref.py) shows it; the docs build fails without."""
    import argparse

    from vwos._cli import _parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{parser.prog} {action.metavar or action.dest}")

    walk(_parser(extensions=True))
    assert missing == []
