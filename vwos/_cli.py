"""The ``vwos`` command: run, check, plugins, and the commands of installed extensions.

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
import datetime
import enum
import json
import os
import signal
import sys
import time
import traceback
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

import attrs
import structlog
import trio

from bus import NotAvailable, connect_unix
from vwos._config import MAX_SECONDS, ConfigError, SupervisorConfig, load_config
from vwos._isolation import unwrap
from vwos._logging import FORMATS, LEVELS, configure_logging
from vwos._plugins import installed_plugins
from vwos._structure import FieldDoc, describe_fields
from vwos._supervisor import Supervisor, SupervisorGaveUp
from vwos._systemd import SystemdNotifier, tell_systemd

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from vwos._control import LogBuffer

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_CONFIG = 2
EXIT_SYSTEM = 1  # the system refused something: a file, a directory, a socket
EXIT_INTERNAL = 70  # an unexpected error: a bug (sysexits' EX_SOFTWARE)
#: A second SIGINT/SIGTERM while stopping: exit at once (128 + SIGINT, what a shell reports).
EXIT_INTERRUPTED = 130

_log = structlog.get_logger("vwos")

#: The entry-point group of command extensions: each names a ``register(subparsers) -> None`` function.
COMMANDS_GROUP = "vwos.commands"

#: What ``register`` receives: the ``vwos`` parser's subparsers (call ``add_parser`` on it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: What a command's ``handler`` default is: it takes the parsed arguments and returns the exit code.
Handler: TypeAlias = Callable[[argparse.Namespace], int]

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


def seconds_argument(text: str) -> float:
    """An argparse ``type=``: a number of seconds, finite, > 0 and at most `MAX_SECONDS` (about 31 years)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and at most {MAX_SECONDS:.0f}, got {text!r}"
        )
    return value


def count_argument(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
    _add_control_commands(sub)  # the control commands' section, at the end of this file
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


# ==================================================================================== control commands
# `vwos status|start|stop|restart|logs|top` and `vwos bus list|echo|pub|hz|call`: clients of the running
# supervisor's control plane (vwos._control), reached over its Unix socket. Each command is an
# ``async def cmd_X(client, args, out) -> int`` taking a bus client (in tests an in-process
# ``Bus().client(...)``, in use the socket's RemoteBusClient); `run_control` maps errors to exit codes.
# See docs/control.md.

EXIT_FAILED = 1  # the operation failed (no such service, refused value, permission denied...)
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # cannot reach the supervisor

#: The environment variable naming the control socket.
SOCKET_ENV = "VWOS_SOCKET"

#: A command of the control plane: takes a bus client, the parsed arguments and the output stream.
ControlCommand: TypeAlias = Callable[[Any, argparse.Namespace, TextIO], Awaitable[int]]


def default_socket_path() -> str:
    """``$VWOS_SOCKET``; else ``/run/vwos/vwos.sock`` for root; else ``$XDG_RUNTIME_DIR/vwos.sock``; else
    ``/tmp/vwos-UID/vwos.sock``. `vwos run` serves (and the commands connect to) this path by default.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if os.getuid() == 0:
        return "/run/vwos/vwos.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "vwos.sock")
    return f"/tmp/vwos-{os.getuid()}/vwos.sock"


def _check_socket_path(path: str, *, option: str = "--socket") -> None:
    """Raise `_UsageError` if ``path`` cannot be a Unix socket's path (at most 107 bytes on Linux)."""
    size = len(os.fsencode(path))
    if size > _SUN_PATH_MAX:
        raise _UsageError(
            f"{option} {path}: a Unix socket's path has at most {_SUN_PATH_MAX} bytes, this one has {size} "
            f"(give a shorter {option}, or set ${SOCKET_ENV})"
        )


#: The longest path of a Unix socket (``sun_path`` is 108 bytes on Linux, with its terminating NUL).
_SUN_PATH_MAX = 107


def _jsonable(value: Any) -> Any:
    """A bus value as JSON: attrs classes as objects, enums by name, bytes as hex, tuples as arrays, a
    `bus.NotAvailable` as ``{"not_available": reason}``."""
    if type(value) is NotAvailable:
        return {"not_available": value.reason}
    if isinstance(value, enum.Enum):
        return value.name
    if attrs.has(type(value)):
        return {f.name: _jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _dump(obj: Any) -> str:
    return json.dumps(_jsonable(obj))


def _say(err: TextIO, message: str) -> None:
    err.write(f"vwos: {message}\n")


async def run_control(
    command: ControlCommand, client: Any, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """Run a control command; print a clear one-line message and return the exit code on an error."""
    from bus import (
        CallTimeoutError,
        NoSuchMethodError,
        PermissionDeniedError,
        RemoteError,
        TopicError,
        UnknownTopicError,
        ValueRefusedError,
    )

    try:
        return await command(client, args, out)
    except BaseException as raised:
        exc = unwrap(raised)
        if isinstance(exc, PermissionDeniedError):
            _say(err, f"permission denied: {exc.client!r} may not {exc.action} {exc.name!r}")
            return EXIT_FAILED
        if isinstance(exc, RemoteError):
            if exc.error_type in ("ControlError", "ValueRefusedError"):
                _say(err, exc.message)
            else:
                _say(err, str(exc))
            return EXIT_FAILED
        if isinstance(exc, NoSuchMethodError):
            if exc.method.startswith("Vwos.Control."):
                _say(err, f"the supervisor does not serve the control interface ({exc.method})")
                return EXIT_UNREACHABLE
            _say(err, str(exc))
            return EXIT_FAILED
        if isinstance(exc, CallTimeoutError) and exc.method.startswith("Vwos.Control."):
            _say(err, f"the supervisor did not answer in time ({exc.method}): is it stuck?")
            return EXIT_UNREACHABLE
        if isinstance(exc, UnknownTopicError | ValueRefusedError | CallTimeoutError):
            _say(err, str(exc))
            return EXIT_FAILED
        if isinstance(exc, TopicError):
            _say(err, str(exc))
            return EXIT_USAGE
        if isinstance(exc, _UsageError):
            _say(err, str(exc))
            return EXIT_USAGE
        raise


class _UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2)."""


# -- status and operations --------------------------------------------------------------------------


async def cmd_status(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos status``: every service's state, restarts, uptime, last exit and last error."""
    from vwos._control import STATUS
    from vwos._top import format_seconds

    reply = await client.call(STATUS, None)
    if args.json:
        document = {"supervisor_uptime": reply.supervisor_uptime, "services": reply.services}
        document["groups"] = reply.groups
        out.write(_dump(document) + "\n")
        return EXIT_OK
    width = max([24, *(len(s.name) + 1 for s in (*reply.services, *reply.groups))])
    out.write(f"{'SERVICE':<{width}} {'STATE':<9} {'RESTARTS':>8} {'UPTIME':>8}  {'LAST EXIT':<13} WHY\n")
    for s in reply.services:
        out.write(
            f"{s.name:<{width}} {s.state:<9} {s.restarts:>8} {format_seconds(s.uptime):>8}  "
            f"{s.last_exit or '-':<13} {_why(s)}".rstrip()
            + "\n"
        )
    if reply.groups:
        out.write(f"\n{'GROUP':<{width}} {'STATE':<9} {'RESTARTS':>8}  WHY\n")
        for g in reply.groups:
            out.write(f"{g.name:<{width}} {g.state:<9} {g.restarts:>8}  {_why(g)}".rstrip() + "\n")
    return EXIT_OK


def _why(record: Any) -> str:
    """The status table's last column: why a unit is in its state (failed, waiting), else its last error."""
    text = record.reason or record.last_error or ""
    if record.revive_in is not None:
        text += f" (revive in {record.revive_in:.0f} s)"
    return str(text)


#: What each operation should leave a service in, to count as done.
_OPERATE_OK = {"start": ("running", "exited"), "stop": ("stopped",), "restart": ("running", "exited")}


async def cmd_operate(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos start|stop|restart SERVICE``: waits for the service to settle (``--wait`` seconds)."""
    from vwos._control import RESTART, START, STOP, ServiceRequest

    method = {"start": START, "stop": STOP, "restart": RESTART}[args.command]
    reply = await client.call(method, ServiceRequest(args.service, args.wait), timeout=args.wait + 5.0)
    row = reply.service
    ok = reply.settled and row.state in _OPERATE_OK[args.command]
    if args.json:
        out.write(_dump({"ok": ok, "action": reply.action, "settled": reply.settled, "service": row}) + "\n")
    elif ok:
        out.write(f"{args.command}: {row.name} is {row.state}\n")
    else:
        why = f"{row.name} is {row.state}" + (f" ({row.last_error})" if row.last_error else "")
        if not reply.settled:
            why += f", not settled after {args.wait:g} s"
        out.write(f"{args.command} failed: {why}\n")
    return EXIT_OK if ok else EXIT_FAILED


# -- logs -------------------------------------------------------------------------------------------


def _log_text(line: Any, service: str | None = None) -> str:
    stamp = datetime.datetime.fromtimestamp(line.timestamp, tz=datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    who = f"{service} " if service is not None else ""
    return f"{stamp.replace('+00:00', 'Z')} {line.level:<8} {who}{line.text}"


def _hidden_levels_note(level: str | None, shown: int) -> str | None:
    """What to say about lines the supervisor's log level never let into the buffer, or None.

    Above ``info`` it hides the lines of normal operation, which is worth saying every time; at ``info`` it
    hides only debug lines, worth saying when nothing at all is shown."""
    if level not in LEVELS or level == "debug":
        return None
    hidden = LEVELS[: LEVELS.index(level)]
    if level == "info" and shown:
        return None
    return (
        f"the supervisor logs at level {level!r}: {', '.join(hidden)} lines were never kept "
        f"(run it with --log-level {hidden[-1]} to see them)"
    )


async def cmd_logs(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos logs [SERVICE] [-n N] [-f]``: the last N lines of a service, or of every service merged in
    time order; with ``-f``, then every new line as it comes. Says when the log level hid lines."""
    from vwos._control import LOGS, STATUS, LogsRequest

    if args.service is not None:
        names = [args.service]
    else:
        names = [row.name for row in (await client.call(STATUS, None)).services]
    every = args.service is None
    width = max((len(name) for name in names), default=0)

    def show(lines: list[tuple[str, Any]]) -> None:
        for name, line in lines:
            if args.json:
                out.write(_dump({"service": name, **attrs.asdict(line)}) + "\n")
            else:
                out.write(_log_text(line, name.ljust(width) if every else None) + "\n")
        out.flush()

    order = {name: i for i, name in enumerate(names)}

    def merged(replies: dict[str, Any]) -> list[tuple[str, Any]]:
        """Every service's lines in time order (ties: the services' order, then each one's own)."""
        lines = [(name, line) for name, reply in replies.items() for line in reply.lines]
        lines.sort(key=lambda item: (item[1].timestamp, order[item[0]], item[1].seq))
        return lines

    replies = {name: await client.call(LOGS, LogsRequest(name, args.lines, 0)) for name in names}
    everything = merged(replies)
    chosen = everything[len(everything) - args.lines :] if args.lines else []
    show(chosen)
    levels = {reply.level for reply in replies.values()}
    note = _hidden_levels_note(levels.pop() if len(levels) == 1 else None, len(chosen))
    if note is not None:
        _say(sys.stderr, note)
    cursors = {name: reply.cursor for name, reply in replies.items()}
    while args.follow:
        await trio.sleep(args.interval)
        replies = {}
        for name in names:
            reply = replies[name] = await client.call(LOGS, LogsRequest(name, 100_000, cursors[name]))
            if reply.missed:
                _say(sys.stderr, f"{reply.missed} lines of {name} were lost before they could be shown")
            cursors[name] = reply.cursor
        show(merged(replies))
    return EXIT_OK


# -- bus --------------------------------------------------------------------------------------------


async def cmd_bus_list(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos bus list [PATTERN]``: topics with type, rate, latest value and staleness."""
    from vwos._control import TOPICS, TopicsRequest
    from vwos._top import format_seconds

    reply = await client.call(TOPICS, TopicsRequest(args.pattern))
    if args.json:
        out.write(_dump({"window": reply.window, "topics": reply.topics}) + "\n")
        return EXIT_OK
    out.write(f"{'TOPIC':<44} {'TYPE':<12} {'UNIT':<6} {'RATE/s':>8} {'AGE':>7}  LATEST\n")
    for t in reply.topics:
        latest = "-" if t.latest is None else t.latest + ("  (stale)" if t.stale else "")
        age = format_seconds(t.age)
        out.write(f"{t.name:<44} {t.type:<12} {t.unit or '':<6} {t.rate:>8.1f} {age:>7}  {latest}\n")
    return EXIT_OK


def _shown(value: Any) -> str:
    if type(value) is NotAvailable:
        return str(value)
    return json.dumps(_jsonable(value)) if not isinstance(value, str) else repr(value)


def _sample_text(sample: Any) -> str:
    return f"{sample.topic} = {_shown(sample.value)}  ({sample.publisher} #{sample.seq})"


def _sample_json(sample: Any) -> str:
    return _dump(
        {
            "topic": sample.topic,
            "value": sample.value,
            "available": sample.available,
            "timestamp": sample.timestamp,
            "bus_time": sample.bus_time,
            "publisher": sample.publisher,
            "seq": sample.seq,
        }
    )


async def cmd_bus_echo(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos bus echo PATTERN [--count N] [--latest]``: print samples as they arrive."""
    seen = 0
    with client.subscribe(args.pattern, queue_size=1024, latest=args.latest) as sub:
        async for sample in sub:
            out.write((_sample_json(sample) if args.json else _sample_text(sample)) + "\n")
            out.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return EXIT_OK


async def cmd_bus_pub(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos bus pub TOPIC VALUE``: VALUE is JSON, converted to the topic's type by the control plane."""
    from vwos._control import CONVERT, ConvertRequest

    converted = await client.call(CONVERT, ConvertRequest(args.topic, args.value, "topic"))
    timestamp = time.time()
    client.publish_nowait(args.topic, converted.value, timestamp=timestamp)
    if args.json:
        out.write(_dump({"topic": args.topic, "value": converted.value, "timestamp": timestamp}) + "\n")
    else:
        out.write(f"published {args.topic} = {_shown(converted.value)}\n")
    return EXIT_OK


async def cmd_bus_hz(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos bus hz TOPIC [--window S] [--count N]``: one report per window: rate and interval figures."""
    reports = 0
    last: float | None = None
    with client.subscribe(args.topic, queue_size=65536) as sub:
        while args.count is None or reports < args.count:
            intervals: list[float] = []
            received = 0
            with trio.move_on_after(args.window):
                async for sample in sub:
                    received += 1
                    if last is not None:
                        intervals.append(sample.bus_time - last)
                    last = sample.bus_time
            reports += 1
            mean = sum(intervals) / len(intervals) if intervals else None
            report = {
                "topic": args.topic,
                "window": args.window,
                "samples": received,
                "rate": (1.0 / mean if mean else 0.0) if mean is not None else received / args.window,
                "min": min(intervals) if intervals else None,
                "max": max(intervals) if intervals else None,
                "mean": mean,
            }
            if args.json:
                out.write(json.dumps(report) + "\n")
            elif mean is None:
                out.write(f"{args.topic}: {received} samples in {args.window:g} s\n")
            else:
                out.write(
                    f"{args.topic}: rate {report['rate']:.2f} Hz  min {report['min']:.4f} s  "
                    f"max {report['max']:.4f} s  mean {mean:.4f} s  "
                    f"({received} samples in {args.window:g} s)\n"
                )
            out.flush()
    return EXIT_OK


async def cmd_bus_call(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos bus call METHOD [ARG] [--timeout S]``: ARG is JSON, converted to the method's request type."""
    from bus import Method
    from vwos._control import CONVERT, ConvertRequest

    arg: Any = None
    if args.arg is not None:
        arg = (await client.call(CONVERT, ConvertRequest(args.method, args.arg, "method"))).value
    result = await client.call(Method(args.method), arg, timeout=args.timeout)
    if args.json:
        out.write(_dump({"method": args.method, "result": result}) + "\n")
    else:
        out.write(json.dumps(_jsonable(result), indent=2) + "\n")
    return EXIT_OK


async def cmd_top(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos top``: see `vwos._top`."""
    from vwos._top import cmd_top as top

    return await top(client, args, out)


# -- wiring: argparse and the socket ----------------------------------------------------------------


async def _connect_and_run(command: ControlCommand, args: argparse.Namespace) -> int:
    from bus import BrokerRefusedError, ConnectionLostError, ProtocolError

    path = args.socket
    hint = "(is `vwos run` running? it serves the control socket)"
    connected = False
    try:
        async with connect_unix(path, name=f"vwos-cli-{os.getpid()}") as client:
            connected = True
            return await run_control(command, client, args, sys.stdout, sys.stderr)
    except BaseException as raised:
        exc = unwrap(raised)
        lost = OSError | EOFError | trio.BrokenResourceError | ConnectionLostError | ProtocolError
        if connected and not isinstance(exc, lost):
            raise
        if isinstance(exc, FileNotFoundError):
            _say(sys.stderr, f"cannot connect to {path}: no such file {hint}")
        elif isinstance(exc, ConnectionRefusedError):
            _say(sys.stderr, f"cannot connect to {path}: nothing listens there {hint}")
        elif isinstance(exc, PermissionError):
            _say(sys.stderr, f"cannot connect to {path}: permission denied (see the socket's owner and mode)")
        elif isinstance(exc, trio.TooSlowError):  # connect_unix's handshake timeout
            _say(
                sys.stderr,
                f"cannot connect to {path}: no answer to the handshake (is it the socket of `vwos run`, and "
                "is that process stuck?)",
            )
        elif isinstance(exc, BrokerRefusedError):
            _say(sys.stderr, f"cannot connect to {path}: the supervisor refused the connection: {exc.reason}")
        elif isinstance(exc, lost):
            what = "lost the connection to" if connected else "cannot connect to"
            _say(sys.stderr, f"{what} {path}: {_one_line(str(exc)) or type(exc).__name__}")
        else:
            raise
        return EXIT_UNREACHABLE


def _control_handler(command: ControlCommand) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            _check_socket_path(args.socket)
        except _UsageError as exc:
            _say(sys.stderr, str(exc))
            return EXIT_USAGE
        try:
            return trio.run(_connect_and_run, command, args)
        except KeyboardInterrupt:  # how echo, hz, logs -f and top are ended
            return EXIT_OK

    return handler


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--socket",
        default=default_socket_path(),
        metavar="PATH",
        help=f"the supervisor's control socket (default: ${SOCKET_ENV}, else %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (one object per line when streaming)")
    return parser


def _add_control_commands(sub: Subparsers) -> None:
    status = _common(sub.add_parser("status", help="services of the running supervisor: state, restarts..."))
    status.set_defaults(handler=_control_handler(cmd_status))
    for action, text in (
        ("start", "start a stopped service"),
        ("stop", "stop a service (it stays stopped until started)"),
        ("restart", "stop a service and start it again"),
    ):
        operate = _common(sub.add_parser(action, help=text))
        operate.add_argument("service", metavar="SERVICE", help="the service's name in the config")
        operate.add_argument(
            "--wait",
            type=seconds_argument,
            default=10.0,
            metavar="S",
            help="wait this long for it to settle (10)",
        )
        operate.set_defaults(handler=_control_handler(cmd_operate))
    logs = _common(sub.add_parser("logs", help="recent log lines of a service, or of all; -f follows"))
    logs.add_argument(
        "service",
        nargs="?",
        metavar="SERVICE",
        help="the service's name in the config (default: all services)",
    )
    logs.add_argument(
        "-n", "--lines", type=count_argument(0), default=20, metavar="N", help="how many lines (20; 0: none)"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come")
    logs.add_argument("--interval", type=seconds_argument, default=0.5, help=argparse.SUPPRESS)
    logs.set_defaults(handler=_control_handler(cmd_logs))
    top = _common(sub.add_parser("top", help="a live view of services and the busiest topics"))
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--limit", type=count_argument(), default=15, metavar="N", help="how many topics (15)")
    top.add_argument(
        "--interval", type=seconds_argument, default=1.0, metavar="S", help="refresh period (1 s)"
    )
    top.set_defaults(handler=_control_handler(cmd_top))

    bus_parser = sub.add_parser("bus", help="the bus of the running supervisor: list, echo, pub, hz, call")
    bus_sub = bus_parser.add_subparsers(dest="bus_command", metavar="COMMAND", required=True)
    listing = _common(bus_sub.add_parser("list", help="topics with type, rate, latest value, staleness"))
    listing.add_argument("pattern", nargs="?", default="**", metavar="PATTERN", help="(default **)")
    listing.set_defaults(handler=_control_handler(cmd_bus_list))
    echo = _common(bus_sub.add_parser("echo", help="print samples of matching topics as they arrive"))
    echo.add_argument("pattern", metavar="PATTERN", help="a topic name or pattern (* one segment, ** any)")
    echo.add_argument("--count", type=count_argument(), metavar="N", help="stop after N samples")
    echo.add_argument("--latest", action="store_true", help="start with the latest value of each topic")
    echo.set_defaults(handler=_control_handler(cmd_bus_echo))
    pub = _common(bus_sub.add_parser("pub", help="publish one value (JSON) on a topic"))
    pub.add_argument("topic", metavar="TOPIC", help="the topic's full name (no pattern)")
    pub.add_argument("value", metavar="VALUE", help='JSON: 87.5, true, "D" (or D), {"lat": 52.4, ...}')
    pub.set_defaults(handler=_control_handler(cmd_bus_pub))
    hz = _common(bus_sub.add_parser("hz", help="measure a topic's rate and intervals"))
    hz.add_argument("topic", metavar="TOPIC", help="the topic's full name (no pattern)")
    hz.add_argument(
        "--window", type=seconds_argument, default=5.0, metavar="S", help="seconds per report (5)"
    )
    hz.add_argument("--count", type=count_argument(), metavar="N", help="stop after N reports")
    hz.set_defaults(handler=_control_handler(cmd_bus_hz))
    call = _common(bus_sub.add_parser("call", help="call a method and print its reply"))
    call.add_argument("method", metavar="METHOD", help="the method's full name, e.g. CAN.demo.Send")
    call.add_argument("arg", nargs="?", metavar="ARG", help="the argument, as JSON")
    call.add_argument(
        "--timeout", type=seconds_argument, default=5.0, metavar="S", help="seconds to wait (5)"
    )
    call.set_defaults(handler=_control_handler(cmd_bus_call))


# ================================================================================ end control commands
