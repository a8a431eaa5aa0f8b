"""The control commands of ``vwos``: ``status``, ``start``, ``stop``, ``restart``, ``logs``, ``top`` and
``bus list|echo|pub|hz|call``, clients of the running supervisor's control plane (`vwos._control`),
reached over its Unix socket.

Each command is an ``async def cmd_X(client, args, out) -> int`` taking a bus client (in tests an
in-process ``Bus().client(...)``, in use the socket's RemoteBusClient); `run_control` maps errors to exit
codes; `_add_control_commands` adds them to the ``vwos`` parser. See docs/control.md.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

import attrs
import cattrs
import cattrs.gen
import trio

from bus import EnumMember, NotAvailable, Record, connect_unix
from vwos._display import readable_json, value_text
from vwos._isolation import unwrap
from vwos._logging import LEVELS

if TYPE_CHECKING:
    pass

from vwos._cli_common import (
    EXIT_OK,
    SOCKET_ENV,
    Handler,
    Subparsers,
    _check_socket_path,
    _one_line,
    _say,
    _UsageError,
    count_argument,
    default_socket_path,
    seconds_argument,
)

EXIT_FAILED = 1  # the operation failed (no such service, refused value, permission denied...)
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # cannot reach the supervisor


#: A command of the control plane: takes a bus client, the parsed arguments and the output stream.
ControlCommand: TypeAlias = Callable[[Any, argparse.Namespace, TextIO], Awaitable[int]]


def _scalar_json(value: Any) -> Any:
    return value.name if isinstance(value, enum.Enum) else value


def _float_json(value: float) -> Any:
    """A float as it is (JSON is for programs: every digit kept); NaN and the infinities, which JSON has
    not, as the texts ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (as protobuf's JSON mapping)."""
    if isinstance(value, enum.Enum):
        return value.name
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_converter() -> cattrs.Converter:
    """Bus values as JSON, on cattrs' unstructuring: attrs classes as objects (each field by the type of
    its value, not its annotation: any field may hold a `bus.NotAvailable`), enums by name, bytes as hex,
    tuples and sets as arrays, a `bus.NotAvailable` as ``{"not_available": reason}``, keys as text."""
    converter = cattrs.Converter()
    unstructure = converter.unstructure

    def by_value(cls: type) -> Any:
        fields: dict[str, Any] = {
            f.name: cattrs.gen.override(unstruct_hook=unstructure) for f in attrs.fields(cls)
        }
        return cattrs.gen.make_dict_unstructure_fn(cls, converter, **fields)

    converter.register_unstructure_hook_factory(attrs.has, by_value)
    converter.register_unstructure_hook(NotAvailable, lambda value: {"not_available": value.reason})
    converter.register_unstructure_hook(Record, lambda r: {k: unstructure(v) for k, v in r.fields.items()})
    converter.register_unstructure_hook(EnumMember, lambda member: member.name)
    # By name, also for enums of str or int: found by their MRO, those would reach the str or int hook.
    for base in (enum.Enum, str, int):
        converter.register_unstructure_hook(base, _scalar_json)
    converter.register_unstructure_hook(float, _float_json)
    converter.register_unstructure_hook(bytes, bytes.hex)
    for array in (list, tuple, set, frozenset):
        converter.register_unstructure_hook(array, lambda items: [unstructure(v) for v in items])
    converter.register_unstructure_hook(
        dict, lambda table: {str(k): unstructure(v) for k, v in table.items()}
    )
    return converter


_JSON = _json_converter()


def _jsonable(value: Any) -> Any:
    """A bus value as JSON data (see `_json_converter`)."""
    return _JSON.unstructure(value)


def _dump(obj: Any) -> str:
    return json.dumps(_jsonable(obj))


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
    # Columns as wide as their longest entry, so long names keep the table aligned.
    name_w = max([len("TOPIC"), *(len(t.name) for t in reply.topics)])
    type_w = max([len("TYPE"), *(len(t.type) for t in reply.topics)])
    unit_w = max([len("UNIT"), *(len(t.unit or "") for t in reply.topics)])
    out.write(f"{'TOPIC':<{name_w}} {'TYPE':<{type_w}} {'UNIT':<{unit_w}} {'RATE/s':>8} {'AGE':>7}  LATEST\n")
    for t in reply.topics:
        latest = "-" if t.latest is None else t.latest + ("  (stale)" if t.stale else "")
        age = format_seconds(t.age)
        unit = t.unit or ""
        out.write(
            f"{t.name:<{name_w}} {t.type:<{type_w}} {unit:<{unit_w}} {t.rate:>8.1f} {age:>7}  {latest}\n"
        )
    return EXIT_OK


def _shown(value: Any) -> str:
    """A value as text: records by field, floats at their resolution (`vwos._display.value_text`)."""
    return value_text(value)


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
        out.write(json.dumps(readable_json(_jsonable(result)), indent=2) + "\n")
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
