"""The ``vwos`` command: run, check, plugins, and the commands of installed extensions; the control
commands (status, logs, restart, bus ...) are `vwos._control_cli`, what both use `vwos._cli_common`.

Exit codes: 0 — done (``run`` stopped cleanly, ``check`` found nothing wrong); 1 — the supervisor gave up
(restarts exceeded the intensity), or the system refused something (a file, a socket: one line says what);
2 — the config or the command line is wrong (every problem listed, one line each); 70 — an unexpected error
(a bug: one line on stderr; ``vwos --debug ...`` shows the traceback).

Every number of seconds on the command line (``--duration``, ``--timeout``, ``--window``, ``--interval``,
``--wait``) is finite, > 0 and at most `vwos._config.MAX_SECONDS`; counts are whole numbers >= 1 (``-n`` of
``logs`` >= 0). Extensions may use `seconds_argument` and `count_argument` as argparse ``type=`` to say the
same.

**Extensions.** A distribution adds subcommands through the entry-point group ``vwos.commands``: each entry
point names a function ``register(subparsers) -> None`` that adds its subparser(s) to the given
``argparse`` subparsers and sets ``handler`` on each: ``parser.set_defaults(handler=fn)`` with
``fn(args: argparse.Namespace) -> int`` returning the exit code. An extension that fails to load or to
register is skipped with a one-line warning on stderr; the core commands never load extensions at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from vwos._cli_common import EXIT_OK as EXIT_OK
from vwos._cli_common import Handler as Handler
from vwos._cli_common import Subparsers as Subparsers
from vwos._cli_common import (
    _check_socket_path,
    _one_line,
    _say,
    _UsageError,
    default_socket_path,
)
from vwos._cli_common import count_argument as count_argument
from vwos._cli_common import seconds_argument as seconds_argument
from vwos._config import ConfigError, SupervisorConfig, load_config
from vwos._control_cli import _add_control_commands
from vwos._isolation import unwrap
from vwos._logging import FORMATS, LEVELS, configure_logging
from vwos._plugins import installed_plugins
from vwos._structure import FieldDoc, describe_fields
from vwos._supervisor import Supervisor, SupervisorGaveUp
from vwos._systemd import SystemdNotifier, tell_systemd

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from vwos._control import LogBuffer

EXIT_GAVE_UP = 1
EXIT_CONFIG = 2
EXIT_SYSTEM = 1  # the system refused something: a file, a directory, a socket
EXIT_INTERNAL = 70  # an unexpected error: a bug (sysexits' EX_SOFTWARE)
#: A second SIGINT/SIGTERM while stopping: exit at once (128 + SIGINT, what a shell reports).
EXIT_INTERRUPTED = 130

_log = structlog.get_logger("vwos")

#: The entry-point group of command extensions: each names a ``register(subparsers) -> None`` function.
COMMANDS_GROUP = "vwos.commands"


_CORE_COMMANDS = ("run", "check", "plugins")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vwos")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (every other command starts without
    importing ``importlib.metadata`` and reading the installed distributions)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"vwos {_version()}")  # on stdout, as argparse's own version action does
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line on stderr (what was wrong, and where help is), not the
    usage block and then the error; its subcommands' parsers are made of this class too."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _parser(*, extensions: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog="vwos", description="vwos in-vehicle middleware runtime")
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error (a bug), not one line"
    )
    # Subcommands' parsers are _Parser too (argparse makes them of the parent's class); extensions see the
    # documented ArgumentParser type.
    sub = typing.cast("Subparsers", parser.add_subparsers(dest="command", required=True))

    run = sub.add_parser("run", help="run the supervisor and its services from a TOML config")
    run.add_argument("config", help="the TOML config file")
    run.add_argument(
        "--duration", type=seconds_argument, metavar="SECONDS", help="stop cleanly after this long"
    )
    run.add_argument(
        "--log-format",
        choices=FORMATS,
        default="auto",
        help="console on a terminal, JSON lines otherwise (default: auto)",
    )
    run.add_argument("--log-level", choices=LEVELS, help="overrides [supervisor] log_level")
    run.add_argument(
        "--socket",
        metavar="PATH",
        help="the bus and control socket (default: $VWOS_SOCKET; see docs/control.md)",
    )
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check", help="validate a config and its plugins without running anything")
    check.add_argument("config", help="the TOML config file")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_cmd_check)

    plugins = sub.add_parser("plugins", help="list installed services and their config fields")
    plugins.add_argument("--json", action="store_true", help="print the result as JSON")
    plugins.set_defaults(handler=_cmd_plugins)
    _add_control_commands(sub)  # vwos._control_cli
    if extensions:
        _add_extension_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vwos`` command. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The core commands (and --version) do not load extensions: `vwos run` starts as fast, and says the
    # same, whatever else is installed.
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    extensions = first not in _CORE_COMMANDS and "--version" not in argv
    parser = _parser(extensions=extensions)
    if not [arg for arg in argv if arg != "--debug"]:  # a bare `vwos`: what there is to run
        parser.print_usage(sys.stderr)
        print("vwos: error: a command is required (see vwos --help)", file=sys.stderr)
        return EXIT_CONFIG
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:  # an extension's subparser that did not set its handler
        print(f"vwos: the command {args.command!r} has no handler (a bug in its extension)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as raised:
        return _unexpected(raised, debug=args.debug)


def _unexpected(raised: BaseException, *, debug: bool) -> int:
    """An exception no command turned into a message: one line on stderr (the traceback with ``--debug``)."""
    exc = unwrap(raised)
    if isinstance(exc, BaseExceptionGroup):
        leaves = _leaves(exc)
        exc, more = leaves[0], len(leaves) - 1
    else:
        more = 0
    also = f" (and {more} more)" if more else ""
    if debug:
        traceback.print_exception(raised, file=sys.stderr)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename is not None else ""
        print(f"vwos: {_one_line(exc.strerror or str(exc))}{where}{also}", file=sys.stderr)
        return EXIT_SYSTEM
    hint = "" if debug else "; vwos --debug ... shows the traceback"
    print(
        f"vwos: unexpected error (a bug): {type(exc).__name__}: {_one_line(str(exc))}{also}{hint}",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# -- extensions -------------------------------------------------------------------------------------


def _command_entry_points() -> list[EntryPoint]:
    import importlib.metadata  # here: only commands other than the core ones pay for it

    found = importlib.metadata.entry_points(group=COMMANDS_GROUP)
    return sorted(found, key=lambda ep: (ep.name, ep.value))


def _add_extension_commands(sub: Subparsers) -> None:
    """Let each extension add its commands; one that fails leaves nothing behind but a warning."""
    for ep in _command_entry_points():
        names = set(sub.choices)
        listed = len(sub._choices_actions)  # the help lines of the commands, which argparse keeps apart
        try:
            register = ep.load()
            if not callable(register):
                raise TypeError(f"{type(register).__name__} is not callable")
            register(sub)
        except Exception as exc:
            for name in set(sub.choices) - names:
                del sub.choices[name]
            del sub._choices_actions[listed:]
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(
                f"vwos: warning: command extension {ep.name!r} ({ep.value}) not loaded: {reason}",
                file=sys.stderr,
            )


def _print_problems(exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"vwos: {count} problem{'s' if count != 1 else ''} in the config:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


# -- check ------------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.json:
            problems = [
                {"file": str(p.file), "key": p.key_path, "message": p.message, "line": p.line}
                for p in exc.problems
            ]
            print(json.dumps({"ok": False, "problems": problems}, indent=2))
        else:
            _print_problems(exc)
        return EXIT_CONFIG
    if args.json:
        services = [
            {"name": s.name, "plugin": s.plugin, "enabled": s.enabled, "after": list(s.after)}
            for s in config.services
        ]
        print(json.dumps({"ok": True, "config": str(config.path), "services": services}, indent=2))
    else:
        enabled = [s for s in config.services if s.enabled]
        print(f"{config.path}: ok, {len(enabled)} service{'s' if len(enabled) != 1 else ''} in start order:")
        for s in config.services:
            state = "" if s.enabled else "  (disabled)"
            after = f"  after {', '.join(s.after)}" if s.after else ""
            print(f"  {s.name:<20} {s.plugin}{after}{state}")
    return EXIT_OK


# -- plugins ----------------------------------------------------------------------------------------


def _field_json(doc: FieldDoc) -> dict[str, Any]:
    return {
        "name": doc.name,
        "type": doc.type_text,
        "default": doc.default_text,
        "required": doc.required,
        "help": doc.help,
        "fields": [_field_json(f) for f in doc.fields],
    }


def _field_lines(docs: Sequence[FieldDoc], indent: str) -> list[str]:
    lines = []
    for doc in docs:
        default = "required" if doc.required else f"= {doc.default_text}"
        help_text = f"  # {doc.help}" if doc.help else ""
        lines.append(f"{indent}{doc.name}: {doc.type_text} {default}{help_text}")
        lines.extend(_field_lines(doc.fields, indent + "  "))
    return lines


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins = installed_plugins()
    if args.json:
        out = []
        for p in plugins:
            fields = describe_fields(p.service_class.config_class) if p.service_class is not None else []
            out.append(
                {
                    "name": p.name,
                    "ref": p.ref,
                    "distribution": p.distribution,
                    "error": p.error,
                    "config": [_field_json(f) for f in fields],
                }
            )
        print(json.dumps(out, indent=2))
        return EXIT_OK
    if not plugins:
        print("no services are installed (entry point group 'vwos.services')")
    for p in plugins:
        origin = f"  [{p.distribution}]" if p.distribution else ""
        print(f"{p.name}  {p.ref}{origin}")
        if p.service_class is None:
            print(f"  cannot be loaded: {p.error}")
            continue
        doc = (p.service_class.__doc__ or "").strip().splitlines()
        if doc:
            print(f"  {doc[0]}")
        fields = describe_fields(p.service_class.config_class)
        print("\n".join(_field_lines(fields, "    ")) if fields else "    (no config)")
    return EXIT_OK


# -- run --------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        configure_logging(format=args.log_format, level="info")
        _print_problems(exc)
        return EXIT_CONFIG
    try:
        _check_socket_path(args.socket or default_socket_path())
    except _UsageError as exc:
        _say(sys.stderr, str(exc))
        return EXIT_CONFIG
    from vwos._control import LogBuffer

    logs = LogBuffer()
    configure_logging(
        format=args.log_format, level=args.log_level or config.log_level, extra_processors=[logs.processor]
    )
    from vwos._runtime import tune_gc

    tune_gc()
    try:
        return trio.run(_run, config, args.duration, args.socket, logs)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return EXIT_INTERRUPTED
    except Exception as raised:  # main() prints the one-line summary; the log keeps the whole story
        failure = unwrap(raised)
        if isinstance(failure, OSError):
            _log.error("vwos run failed", error=f"{type(failure).__name__}: {failure}")
        else:
            _log.error("vwos run failed", exc_info=failure)
        raise


async def _run(config: SupervisorConfig, duration: float | None, socket: str | None, logs: LogBuffer) -> int:
    from bus import Bus, BusError, prepare_socket_dir
    from vwos._control import ControlPlane, default_authorize

    socket_path = Path(socket or default_socket_path())
    try:
        prepare_socket_dir(socket_path)  # created 0700, or refused if others could replace the socket
    except BusError as exc:  # the system refused: the directory cannot be made, or is not safe
        print(f"vwos: {exc}", file=sys.stderr)
        return EXIT_SYSTEM
    bus = Bus()
    supervisor = Supervisor(
        config.services,  # the supervisor leaves out disabled ones
        groups=config.groups,
        policy=config.policy,
        state_dir=config.state_dir,
        bus=bus,
        socket_path=socket_path,
        authorize=default_authorize(),
        loop_block=config.loop_block_limit,
        undeclared_grace=config.undeclared_grace,
        connection_limits=config.connection_limits,
    )
    # Read and forget $NOTIFY_SOCKET: isolated services (child processes) must not talk to systemd.
    systemd = SystemdNotifier(unset_environment=True)
    _log.info(
        "vwos starting",
        config=str(config.path),
        pid=os.getpid(),
        control_socket=str(socket_path),
        stop="Ctrl-C or SIGTERM" + (f", or after {duration:g} s" if duration else ""),
        systemd=systemd.enabled,
    )
    gave_up: BaseException | None = None
    try:
        with _signals_stop(supervisor, trio.lowlevel.current_trio_token()):
            async with trio.open_nursery() as nursery:

                async def supervise(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        await supervisor.run(task_status=task_status)
                    finally:
                        nursery.cancel_scope.cancel()  # the control plane, the timers

                # Before the services start: --duration holds while starts are pending too.
                if duration is not None:
                    nursery.start_soon(_stop_after, supervisor, duration)
                nursery.start_soon(_exit_when_left_behind, supervisor)
                await nursery.start(ControlPlane(supervisor, logs=logs).run)
                # READY=1 once every service is up, WATCHDOG=1 while healthy, STOPPING=1 (vwos._systemd).
                nursery.start_soon(tell_systemd, supervisor, systemd)
                await nursery.start(supervise)
    except* SupervisorGaveUp as group:
        gave_up = group.exceptions[0]
    finally:
        systemd.close()
    if gave_up is not None:
        print(f"vwos: the supervisor gave up: {gave_up}", file=sys.stderr)
        return EXIT_GAVE_UP
    return EXIT_OK


async def _stop_after(supervisor: Supervisor, seconds: float) -> None:
    await trio.sleep(seconds)
    _log.info("duration reached, stopping", seconds=seconds)
    supervisor.shutdown(f"--duration {seconds:g} s reached")


@contextlib.contextmanager
def _signals_stop(supervisor: Supervisor, token: trio.lowlevel.TrioToken) -> Iterator[None]:
    """SIGINT and SIGTERM stop the supervisor; a second one exits at once with 130.

    Plain Python signal handlers, not trio's signal receiver: Python runs them in the main thread between
    bytecodes even while a service blocks the event loop (a ``time.sleep``, a busy loop), so the second
    signal ends the process however stuck the loop is. The first is handed to the loop
    (``run_sync_soon`` is signal-safe) and stops everything as soon as the loop runs again.
    """
    seen: list[str] = []

    def first(name: str) -> None:
        _log.info("stopping on signal", signal=name)
        supervisor.shutdown(f"{name} received")

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        seen.append(name)
        if len(seen) == 1:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(first, name)
            return
        # Not through structlog: the handler may have interrupted a log line, and its logger holds a lock
        # for the line (a deadlock). One plain line, written straight to the file descriptor.
        with contextlib.suppress(OSError):
            os.write(2, f"vwos: second signal while stopping ({name}): exiting at once\n".encode())
        _exit_now(supervisor, EXIT_INTERRUPTED)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


async def _exit_when_left_behind(supervisor: Supervisor) -> None:
    """Once everything has stopped but services that ignore cancellation, exit the process: their tasks
    would keep `trio.run` from ever returning."""
    await supervisor.wait_stopped()
    left = supervisor.left_behind
    if left:
        _log.error("exiting with services left behind: they did not stop when cancelled", services=list(left))
        _exit_now(
            supervisor,
            EXIT_GAVE_UP if supervisor.stop_reason and "gave up" in supervisor.stop_reason else EXIT_OK,
        )


def _exit_now(supervisor: Supervisor, code: int) -> None:
    """Leave at once: kill isolated services' processes (they would stop on their own once our end of
    their pipes closes, but one may ignore that too), flush what was written, and ``os._exit``."""
    try:
        supervisor.kill_processes()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # closed, or (from a signal handler) a write to it was interrupted
                pass
    finally:
        os._exit(code)


def console_main() -> None:
    """The ``vwos`` console script. Output piped into a reader that stops early (``vwos ... | head``)
    ends the command quietly, as it does for other Unix tools."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    sys.exit(code)
