"""The ``vwos`` command, run as a user runs it: a real process, real signals, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from spawn import wait_for_line

from vwos import NoConfig, Service
from vwos._cli import COMMANDS_GROUP, _command_entry_points, _parser, main, seconds_argument

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


@attrs.frozen
class _ListedZone:
    name: str
    limit: float = attrs.field(default=50.0, metadata={"help": "km/h"})


@attrs.frozen
class _ListedConfig:
    threshold: float = attrs.field(metadata={"help": "The speed limit."})
    zone: _ListedZone = _ListedZone("city")


class Listed(Service[_ListedConfig]):
    """Warns above a threshold.

    More text that the listing leaves out."""


class Bare(Service[NoConfig]):
    pass


def _listed_plugins(monkeypatch: pytest.MonkeyPatch, refs: dict[str, str]) -> None:
    import vwos._plugins

    points = [importlib.metadata.EntryPoint(n, r, "vwos.services") for n, r in refs.items()]
    monkeypatch.setattr(vwos._plugins, "_entry_points", lambda: points)


def test_plugins_lists_each_service_its_doc_and_config_or_why_it_cannot_be_loaded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _listed_plugins(
        monkeypatch, {"listed": "test_cli:Listed", "bare": "test_cli:Bare", "gone": "vwos_no_such_module:X"}
    )
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "bare  test_cli:Bare"
    assert out[1] == "    (no config)"
    assert out[2] == "gone  vwos_no_such_module:X"
    assert out[3].startswith("  cannot be loaded: ")
    assert "vwos_no_such_module" in out[3]
    assert out[4:] == [
        "listed  test_cli:Listed",
        "  Warns above a threshold.",
        "    threshold: number required  # The speed limit.",
        '    zone: table = { name = "city", limit = 50.0 }',
        "      name: string required",
        "      limit: number = 50.0  # km/h",
    ]
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["gone"]["config"] == []
    assert listed["gone"]["error"] == out[3].removeprefix("  cannot be loaded: ")
    assert [f["name"] for f in listed["listed"]["config"]] == ["threshold", "zone"]
    assert [f["name"] for f in listed["listed"]["config"][1]["fields"]] == ["name", "limit"]


def test_plugins_says_when_none_are_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _listed_plugins(monkeypatch, {})
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out == "no services are installed (entry point group 'vwos.services')\n"


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
    """The commands reach the supervisor with `bus.connect_unix`, imported with `vwos._control_cli` (not
    looked up when a command runs), and say why they cannot: here a socket that nobody listens on."""
    import socket

    import trio

    import bus
    from vwos import _cli, _control_cli

    path = tmp_path / "vwos.sock"
    calls: list[tuple[str, str]] = []

    def spy(path: str, *, name: str) -> Any:
        calls.append((path, name))
        return bus.connect_unix(path, name=name)

    monkeypatch.setattr(_control_cli, "connect_unix", spy)
    args = _cli._parser(extensions=False).parse_args(["status", "--socket", str(path)])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound but not listening: a connection is refused
        code = trio.run(_control_cli._connect_and_run, _control_cli.cmd_status, args)
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


# -- no command line prints a traceback ---------------------------------------------------------------------


def _number_options() -> list[tuple[list[str], argparse.Action]]:
    """Every option of every command (extensions' included) whose value is a number: the command's words
    (with placeholders for its positionals) and the option."""
    found: list[tuple[list[str], argparse.Action]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        positionals = [a for a in parser._actions if not a.option_strings]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
            elif action.option_strings and action.type is not None:
                placeholders = ["x" for a in positionals if a.nargs is None]
                found.append(([*words, *placeholders], action))

    with contextlib.redirect_stderr(io.StringIO()):
        walk(_parser(extensions=True), [])
    return found


#: Options for which 0 means something (tail's ``-n 0``; replay as fast as possible; no post window, no
#: minimum interval between snapshots).
ZERO_ALLOWED = {("logs", "--lines"), ("can", "replay", "--speed"), ("replay", "--rate")}
ZERO_ALLOWED |= {("record", "--post"), ("record", "--min-interval")}
BAD_SECONDS = ["nan", "inf", "-inf", "-1", "0", "-0.0", "abc", "", "1e300", "1e10"]
BAD_COUNTS = ["nan", "inf", "-5", "0", "1.5", "abc", "", "9" * 5000]


def _takes(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except (argparse.ArgumentTypeError, ValueError):
        return False
    return True


def _sweep() -> list[Any]:
    cases = []
    for words, action in _number_options():
        option = max(action.option_strings, key=len)
        # A count takes whole numbers only; a size in MB may be fractional (`record --split-size 1.5`).
        integer = isinstance(action.type("2"), int) and not _takes(action.type, "1.5")  # type: ignore[misc, operator]
        core = action.type is seconds_argument or words[0] not in ("can", "uplink")
        command = tuple(word for word in words if word != "x")
        for value in BAD_COUNTS if integer else BAD_SECONDS:
            if value in ("0", "-0.0") and (*command, option) in ZERO_ALLOWED:
                continue
            if value in ("1e300", "1e10") and not core:
                continue  # the extensions' own bounds are theirs
            cases.append(
                pytest.param(
                    [*words, f"{option}={value}"], option, id=f"{' '.join(words)} {option}={value[:8]}"
                )
            )
    return cases


@pytest.mark.parametrize(("argv", "option"), _sweep())
def test_a_bad_number_on_the_command_line_is_one_line_and_exit_2(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """nan, infinities, negative, zero and absurd values of every timeout, window, interval, duration and
    count of every command: exit 2 and one line naming the option, never a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("vwos")
    assert f"{option}: " in line
    assert line.endswith("--help)")


def test_the_sweep_covers_every_duration_option() -> None:
    names = {(tuple(w for w in words if w != "x"), action.dest) for words, action in _number_options()}
    for expected in [
        (("run",), "duration"),
        (("start",), "wait"),
        (("logs",), "lines"),
        (("logs",), "interval"),
        (("top",), "interval"),
        (("top",), "limit"),
        (("bus", "hz"), "window"),
        (("bus", "call"), "timeout"),
        (("bus", "echo"), "count"),
    ]:
        assert expected in names


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--socket", "/tmp/" + "s" * 200 + ".sock"],
        ["run", str(EXAMPLE), "--socket", "/" + "s" * 120],
    ],
)
def test_a_socket_path_too_long_for_a_unix_socket_is_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("vwos: --socket /")
    assert "a Unix socket's path has at most 107 bytes" in line


def test_a_bare_vwos_shows_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vwos")
    assert "run" in err
    assert err.endswith("vwos: error: a command is required (see vwos --help)\n")


def test_an_unexpected_error_is_one_line_and_the_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vwos import _cli

    def broken(args: argparse.Namespace) -> int:
        raise ExceptionGroup("wrapped", [RuntimeError("services\nare gone")])

    monkeypatch.setattr(_cli, "_cmd_check", broken)
    assert main(["check", "x"]) == 70
    assert capsys.readouterr().err == (
        "vwos: unexpected error (a bug): RuntimeError: services are gone; "
        "vwos --debug ... shows the traceback\n"
    )
    assert main(["--debug", "check", "x"]) == 70
    err = capsys.readouterr().err
    assert err.startswith(("  + Exception Group Traceback", "Traceback"))
    assert err.endswith("vwos: unexpected error (a bug): RuntimeError: services are gone\n")

    def refused(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/var/lib/vwos")

    monkeypatch.setattr(_cli, "_cmd_check", refused)
    assert main(["check", "x"]) == 1
    assert capsys.readouterr().err == "vwos: Permission denied: /var/lib/vwos\n"


async def test_a_socket_that_never_answers_the_handshake_is_exit_3(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """It accepts the connection and says nothing: the handshake times out; docs/cli.md says exit 3."""
    from vwos import _cli, _control_cli

    path = tmp_path / "silent.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen()
    accepted: list[object] = []

    async def accept_and_say_nothing() -> None:
        conn, _ = await listener.accept()
        with conn:
            accepted.append(conn)
            await trio.sleep_forever()

    args = _cli._parser(extensions=False).parse_args(["status", "--socket", str(path)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_say_nothing)
        with trio.fail_after(60):
            code = await _control_cli._connect_and_run(_control_cli.cmd_status, args)
        nursery.cancel_scope.cancel()
    listener.close()
    assert code == 3
    assert len(accepted) == 1
    assert capsys.readouterr().err == (
        f"vwos: cannot connect to {path}: no answer to the handshake (is it the socket of `vwos run`, and is "
        "that process stuck?)\n"
    )


def test_check_refuses_what_run_would_fail_on_and_run_says_the_same(tmp_path: Path) -> None:
    """Each of these made `vwos run` crash at start (a traceback) after `vwos check` said ok."""
    (tmp_path / "afile").write_text("")
    config = tmp_path / "vwos.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [supervisor]
            state_dir = "afile"
            start_timeout = 1e300
            python_path = ["{EXAMPLE.parent}"]
            [services.{"n" * 65}]
            plugin = "overspeed:OverspeedWarning"
            [services.drive]
            plugin = "overspeed:DriveCycle"
            isolated = true
            memory_limit_mb = {2**63 - 1}
            permissions = {{ publish = ["Vehicle..Speed", "Vehicle.Speed", "A.*B"] }}
            """
        )
    )
    checked = vwos("check", str(config))
    ran = vwos("run", str(config), "--duration", "5")
    for result in (checked, ran):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    lines = checked.stderr.splitlines()
    assert lines[0] == "vwos: 6 problems in the config:"
    for key in [
        "supervisor.start_timeout",
        f"services.{'n' * 65}: invalid service name",
        "services.drive.memory_limit_mb",
        "services.drive.permissions.publish[0]",
        "services.drive.permissions.publish[2]",
        "supervisor.state_dir",
    ]:
        assert any(key in line for line in lines), key
    assert lines[1:] == [line for line in ran.stderr.splitlines() if line.startswith("  ")]


def test_run_where_the_socket_cannot_be_made_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """The system refuses (here: no directory for the socket can be made under /proc): one line, exit 1."""
    result = vwos(
        "run",
        str(example_config(tmp_path)),
        "--socket",
        "/proc/vwos-nowhere/vwos.sock",
        "--log-format",
        "json",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("vwos: ")
    assert "/proc/vwos-nowhere" in last


# -- one fault never stops the car: vwos run keeps going, and always stops when told ----------------------

FAULTY = (
    CRASHING
    + """
class NeverReady(Service):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        await trio.sleep_forever()

class Stubborn(Service):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        while True:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                pass  # swallows every cancellation: it can never be stopped

class BlocksForGood(Service):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        import time
        task_status.started()
        await trio.sleep(0.2)
        time.sleep(1000)  # the event loop is stuck: nothing in-process can preempt it

class Healthy(Service):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        while True:
            ctx.heartbeat()
            await trio.sleep(0.05)
"""
)


def start_run(config: Path) -> subprocess.Popen[str]:
    """``vwos run CONFIG`` logging JSON lines, its pipes open for the test to read."""
    return subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def faulty_config(tmp_path: Path, services: str) -> Path:
    (tmp_path / "faulty.py").write_text(textwrap.dedent(FAULTY))
    config = tmp_path / "vwos.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [supervisor]
            intensity = 2
            period = 60
            python_path = ["."]
            state_dir = "{tmp_path / "state"}"
            """
        )
        + textwrap.dedent(services)
    )
    return config


def test_run_keeps_going_when_a_non_critical_plugin_crash_loops(tmp_path: Path) -> None:
    config = faulty_config(
        tmp_path,
        """
        [services.crash]
        plugin = "faulty:Crash"
        backoff = { initial = 0.01, jitter = 0.0 }
        [services.healthy]
        plugin = "faulty:Healthy"
        watchdog = 1.0
        """,
    )
    result = vwos("run", str(config), "--duration", "3", "--log-format", "json")
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stderr[-2000:]
    failed = [e for e in events if e["event"] == "service failed for good"]
    assert [e["service"] for e in failed] == ["crash"]
    assert "RuntimeError: sensor unplugged" in failed[0]["reason"]
    assert not [e for e in events if e["event"] == "service starting" and e.get("service") == "healthy"][1:]
    assert "supervisor gave up" not in result.stderr
    # The crash's traceback is in the log, not just its repr.
    tracebacks = [e["exception"] for e in events if e["event"] == "service failed" and "exception" in e]
    assert tracebacks
    assert "Traceback (most recent call last):" in tracebacks[0]
    assert 'raise RuntimeError("sensor unplugged")' in tracebacks[0]


def test_duration_ends_the_run_while_a_start_never_finishes(tmp_path: Path) -> None:
    config = faulty_config(
        tmp_path,
        """
        [services.slow]
        plugin = "faulty:NeverReady"
        start_timeout = 1000
        [services.after_slow]
        plugin = "faulty:Healthy"
        after = ["slow"]
        [services.healthy]
        plugin = "faulty:Healthy"
        """,
    )
    result = vwos("run", str(config), "--duration", "1", "--log-format", "json", timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    ready = [e.get("service") for e in events if e["event"] == "service ready"]
    assert ready == ["healthy"]  # independent of slow: up in parallel; after_slow waits
    assert events[-1]["event"] == "supervisor stopped"


def test_a_second_signal_exits_130_at_once_even_if_a_service_swallows_cancellation(tmp_path: Path) -> None:
    config = faulty_config(
        tmp_path,
        """
        [services.stubborn]
        plugin = "faulty:Stubborn"
        stop_timeout = 1000
        [services.healthy]
        plugin = "faulty:Healthy"
        """,
    )
    proc = start_run(config)
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "all services ready")
        proc.send_signal(signal.SIGTERM)
        wait_for_line(proc.stderr, "service stopping")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130


def test_two_signals_exit_130_even_while_a_service_blocks_the_event_loop_for_good(tmp_path: Path) -> None:
    config = faulty_config(
        tmp_path,
        """
        [services.stuck]
        plugin = "faulty:BlocksForGood"
        [services.healthy]
        plugin = "faulty:Healthy"
        """,
    )
    proc = start_run(config)
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "all services ready")
        time.sleep(0.5)  # the block has begun: the loop cannot read a signal any more
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "vwos: second signal while stopping (SIGTERM): exiting at once" in err
