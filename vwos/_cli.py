"""The ``vwos`` command: run, check, plugins, and the commands of installed extensions.

Exit codes: 0 — done (``run`` stopped cleanly, ``check`` found nothing wrong); 1 — the supervisor gave up
(restarts exceeded the intensity); 2 — the config or the command line is wrong (every problem listed).

**Extensions.** A distribution adds subcommands through the entry-point group ``vwos.commands``: each entry
point names a function ``register(subparsers) -> None`` that adds its subparser(s) to the given
``argparse`` subparsers and sets ``handler`` on each: ``parser.set_defaults(handler=fn)`` with
``fn(args: argparse.Namespace) -> int`` returning the exit code. An extension that fails to load or to
register is skipped with a one-line warning on stderr; the core commands never load extensions at all.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

import attrs
import structlog
import trio

from bus import connect_unix
from vwos._config import ConfigError, SupervisorConfig, load_config
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


def _parser(*, extensions: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vwos", description="vwos in-vehicle middleware runtime")
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the supervisor and its services from a TOML config")
    run.add_argument("config", help="the TOML config file")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop cleanly after this long")
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
    args = _parser(extensions=extensions).parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:  # an extension's subparser that did not set its handler
        print(f"vwos: the command {args.command!r} has no handler (a bug in its extension)", file=sys.stderr)
        return EXIT_CONFIG
    return handler(args)


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
        return 130


async def _run(config: SupervisorConfig, duration: float | None, socket: str | None, logs: LogBuffer) -> int:
    from bus import Bus, BusError, prepare_socket_dir
    from vwos._control import ControlPlane, default_authorize

    socket_path = Path(socket or default_socket_path())
    try:
        prepare_socket_dir(socket_path)  # created 0700, or refused if others could replace the socket
    except BusError as exc:
        print(f"vwos: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    bus = Bus()
    supervisor = Supervisor(
        config.services,  # the supervisor leaves out disabled ones
        policy=config.policy,
        state_dir=config.state_dir,
        bus=bus,
        socket_path=socket_path,
        authorize=default_authorize(),
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
        async with trio.open_nursery() as nursery:

            async def supervise(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await supervisor.run(task_status=task_status)
                finally:
                    nursery.cancel_scope.cancel()  # the control plane, the signal watcher, the timers

            nursery.start_soon(_watch_signals, supervisor)
            await nursery.start(ControlPlane(supervisor, logs=logs).run)
            # READY=1 once every service is up, WATCHDOG=1 while healthy, STOPPING=1 (vwos._systemd).
            nursery.start_soon(tell_systemd, supervisor, systemd)
            await nursery.start(supervise)
            if duration is not None:
                nursery.start_soon(_stop_after, supervisor, duration)
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


async def _watch_signals(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping:
                _log.warning("second signal while stopping: exiting at once", signal=name)
                raise KeyboardInterrupt
            stopping = True
            _log.info("stopping on signal", signal=name)
            supervisor.shutdown(f"{name} received")


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


def _jsonable(value: Any) -> Any:
    """A bus value as JSON: attrs classes as objects, enums by name, bytes as hex, tuples as arrays."""
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
        out.write(_dump({"supervisor_uptime": reply.supervisor_uptime, "services": reply.services}) + "\n")
        return EXIT_OK
    out.write(f"{'SERVICE':<24} {'STATE':<9} {'RESTARTS':>8} {'UPTIME':>8}  {'LAST EXIT':<13} LAST ERROR\n")
    for s in reply.services:
        out.write(
            f"{s.name:<24} {s.state:<9} {s.restarts:>8} {format_seconds(s.uptime):>8}  "
            f"{s.last_exit or '-':<13} {s.last_error or ''}".rstrip()
            + "\n"
        )
    return EXIT_OK


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


def _log_text(line: Any) -> str:
    stamp = datetime.datetime.fromtimestamp(line.timestamp, tz=datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    return f"{stamp.replace('+00:00', 'Z')} {line.level:<8} {line.text}"


async def cmd_logs(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos logs SERVICE [-n N] [-f]``: the last N lines; with ``-f``, then every new line as it comes."""
    from vwos._control import LOGS, LogsRequest

    def show(reply: Any) -> None:
        for line in reply.lines:
            if args.json:
                out.write(_dump({"service": args.service, **attrs.asdict(line)}) + "\n")
            else:
                out.write(_log_text(line) + "\n")
        out.flush()

    reply = await client.call(LOGS, LogsRequest(args.service, args.lines, 0))
    show(reply)
    cursor = reply.cursor
    while args.follow:
        await trio.sleep(args.interval)
        reply = await client.call(LOGS, LogsRequest(args.service, 100_000, cursor))
        if reply.missed:
            _say(sys.stderr, f"{reply.missed} lines of {args.service} were lost before they could be shown")
        show(reply)
        cursor = reply.cursor
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
    return json.dumps(_jsonable(value)) if not isinstance(value, str) else repr(value)


def _sample_text(sample: Any) -> str:
    return f"{sample.topic} = {_shown(sample.value)}  ({sample.publisher} #{sample.seq})"


def _sample_json(sample: Any) -> str:
    return _dump(
        {
            "topic": sample.topic,
            "value": sample.value,
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
    if args.window <= 0:
        raise _UsageError(f"--window must be positive seconds, not {args.window:g}")
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
    path = args.socket
    hint = "(is `vwos run` running? it serves the control socket)"
    connected = False
    try:
        async with connect_unix(path, name=f"vwos-cli-{os.getpid()}") as client:
            connected = True
            return await run_control(command, client, args, sys.stdout, sys.stderr)
    except BaseException as raised:
        exc = unwrap(raised)
        if connected and not isinstance(exc, OSError | EOFError | trio.BrokenResourceError):
            raise
        if isinstance(exc, FileNotFoundError):
            _say(sys.stderr, f"cannot connect to {path}: no such file {hint}")
        elif isinstance(exc, ConnectionRefusedError):
            _say(sys.stderr, f"cannot connect to {path}: nothing listens there {hint}")
        elif isinstance(exc, PermissionError):
            _say(sys.stderr, f"cannot connect to {path}: permission denied (see the socket's owner and mode)")
        elif isinstance(exc, OSError | EOFError | trio.BrokenResourceError):
            what = "lost the connection to" if connected else "cannot connect to"
            _say(sys.stderr, f"{what} {path}: {exc}")
        else:
            raise
        return EXIT_UNREACHABLE


def _control_handler(command: ControlCommand) -> Handler:
    def handler(args: argparse.Namespace) -> int:
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
            "--wait", type=float, default=10.0, metavar="S", help="wait this long for it to settle (10)"
        )
        operate.set_defaults(handler=_control_handler(cmd_operate))
    logs = _common(sub.add_parser("logs", help="recent log lines of a service; -f follows"))
    logs.add_argument("service", metavar="SERVICE", help="the service's name in the config")
    logs.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many lines (20)")
    logs.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come")
    logs.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    logs.set_defaults(handler=_control_handler(cmd_logs))
    top = _common(sub.add_parser("top", help="a live view of services and the busiest topics"))
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--limit", type=int, default=15, metavar="N", help="how many topics (15)")
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period (1 s)")
    top.set_defaults(handler=_control_handler(cmd_top))

    bus_parser = sub.add_parser("bus", help="the bus of the running supervisor: list, echo, pub, hz, call")
    bus_sub = bus_parser.add_subparsers(dest="bus_command", metavar="COMMAND", required=True)
    listing = _common(bus_sub.add_parser("list", help="topics with type, rate, latest value, staleness"))
    listing.add_argument("pattern", nargs="?", default="**", metavar="PATTERN", help="(default **)")
    listing.set_defaults(handler=_control_handler(cmd_bus_list))
    echo = _common(bus_sub.add_parser("echo", help="print samples of matching topics as they arrive"))
    echo.add_argument("pattern", metavar="PATTERN", help="a topic name or pattern (* one segment, ** any)")
    echo.add_argument("--count", type=int, metavar="N", help="stop after N samples")
    echo.add_argument("--latest", action="store_true", help="start with the latest value of each topic")
    echo.set_defaults(handler=_control_handler(cmd_bus_echo))
    pub = _common(bus_sub.add_parser("pub", help="publish one value (JSON) on a topic"))
    pub.add_argument("topic", metavar="TOPIC", help="the topic's full name (no pattern)")
    pub.add_argument("value", metavar="VALUE", help='JSON: 87.5, true, "D" (or D), {"lat": 52.4, ...}')
    pub.set_defaults(handler=_control_handler(cmd_bus_pub))
    hz = _common(bus_sub.add_parser("hz", help="measure a topic's rate and intervals"))
    hz.add_argument("topic", metavar="TOPIC", help="the topic's full name (no pattern)")
    hz.add_argument("--window", type=float, default=5.0, metavar="S", help="seconds per report (5)")
    hz.add_argument("--count", type=int, metavar="N", help="stop after N reports")
    hz.set_defaults(handler=_control_handler(cmd_bus_hz))
    call = _common(bus_sub.add_parser("call", help="call a method and print its reply"))
    call.add_argument("method", metavar="METHOD", help="the method's full name, e.g. CAN.demo.Send")
    call.add_argument("arg", nargs="?", metavar="ARG", help="the argument, as JSON")
    call.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait (5)")
    call.set_defaults(handler=_control_handler(cmd_bus_call))


# ================================================================================ end control commands
