"""The CAN tools' commands, ``vwos can dump | replay | sim | gen``: argparse, opening the interface, signals
and exit codes, around the library in ``_logtools.py`` (dump, replay), ``_gen.py`` (gen) and ``_sim.py``
(`SimulatedEcu`).

The commands reach the ``vwos`` command as an extension (entry-point group ``vwos.commands``, function
`register`), since the runtime knows nothing of CAN. Every problem with an input (a file, a name, an
interface) is a `ToolError`, which the commands print as one line and exit 2. See ``docs/can.md``, "Tools".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import can
import can.io.generic
import can.io.player
import cantools.database
import trio

from bus import Codec
from services.can._codec import (
    CanCodec,
    CanDatabaseError,
    Frame,
    load_database,
)
from services.can._codec import suggest as _suggest
from services.can._gen import generate_topics as generate_topics
from services.can._logtools import SEND_PATIENCE, ToolError, dump_frames, replay
from services.can._logtools import FrameView as FrameView
from services.can._logtools import ReplayStats as ReplayStats
from services.can._logtools import read_log as read_log
from services.can._sim import SimulatedEcu as SimulatedEcu  # the tool's core, also importable from here
from services.can._transport import (
    LinkDownError,
    PythonCanTransport,
    can_filters,
    frame_message,
    open_python_can,
)

EXIT_OK = 0
#: The CAN link failed while a tool was running.
EXIT_LINK = 1
#: A wrong input: the command line, a file, a name, an interface.
EXIT_USAGE = 2


# -- shared helpers ---------------------------------------------------------------------------------------


def _database(path: str | Path, *, strict: bool) -> cantools.database.can.Database:
    try:
        return load_database(path, strict=strict)
    except CanDatabaseError as exc:
        raise ToolError(str(exc)) from None


def _split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _messages_named(db: cantools.database.can.Database, names: Sequence[str], option: str) -> list[Any]:
    by_name = {m.name: m for m in db.messages}
    found = []
    for name in names:
        message = by_name.get(name)
        if message is None:
            raise ToolError(f"{option}: no message {name!r} in the database{_suggest(name, by_name)}")
        found.append(message)
    return found


def open_bus(
    interface: str,
    channel: str,
    *,
    fd: bool = False,
    bitrate: int | None = None,
    filters: list[dict[str, Any]] | None = None,
) -> PythonCanTransport:
    """Open a python-can bus as a transport, as the gateway does (`open_python_can`). Raises `ToolError`
    naming the interface, the channel, what went wrong and how to fix it."""
    try:
        return open_python_can(interface, channel, fd=fd, bitrate=bitrate, filters=filters)
    except LinkDownError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        if isinstance(exc.__cause__, can.CanInterfaceNotImplementedError):
            raise ToolError(f"--interface {interface}: {exc.__cause__}{hint}") from None
        raise ToolError(f"cannot open {interface} channel {channel!r}: {exc}{hint}") from None


# -- the commands -----------------------------------------------------------------------------------------

#: The clock the commands run trio with (None: the real one). Tests put a MockClock here.
_clock: trio.abc.Clock | None = None


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _error(text: str) -> None:
    print(f"vwos can: {text}", file=sys.stderr)


async def _stop_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def _run(work: Callable[[], Awaitable[int]]) -> int:
    """Run ``work`` under trio until it returns or SIGINT/SIGTERM stops it (then exit code 0)."""
    broken_pipe = False

    async def main() -> int:
        nonlocal broken_pipe
        code = EXIT_OK
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                try:
                    code = await work()
                except ToolError as exc:
                    _error(str(exc))
                    code = EXIT_USAGE
                except LinkDownError as exc:
                    _error(f"the CAN link failed: {exc}")
                    code = EXIT_LINK
                except BrokenPipeError:  # `vwos can dump | head`: the reader has gone, which is fine
                    broken_pipe = True
                finally:
                    nursery.cancel_scope.cancel()
        return code

    try:
        code = trio.run(main, clock=_clock)
    except KeyboardInterrupt:  # in the instant before the signal receiver was open
        return 130
    if broken_pipe:  # keep the interpreter from failing to flush stdout at exit
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _handler(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ToolError as exc:
            _error(str(exc))
            return EXIT_USAGE

    handle.__doc__ = fn.__doc__
    return handle


def _cmd_dump(args: argparse.Namespace) -> int:
    """vwos can dump"""
    codec: CanCodec | None = None
    ids: set[tuple[int, bool]] | None = None
    if args.dbc is not None:
        codec = CanCodec(_database(args.dbc, strict=args.strict), "dump", codec=Codec())
    if args.filter is not None:
        if codec is None:
            raise ToolError("--filter names messages: it needs --dbc")
        chosen = _messages_named(codec.db, _split_names(args.filter), "--filter")
        ids = {(m.frame_id, bool(m.is_extended_frame)) for m in chosen}
    filters = None
    if ids is not None:
        filters = can_filters(ids)
    view = FrameView(codec, channel=args.channel)
    transport = open_bus(args.interface, args.channel, fd=args.fd, bitrate=args.bitrate, filters=filters)

    async def work() -> int:
        try:
            await dump_frames(transport, view, sys.stdout, json_lines=args.json, count=args.count, ids=ids)
        finally:
            transport.close()
        return EXIT_OK

    return _run(work)


def _cmd_replay(args: argparse.Namespace) -> int:
    """vwos can replay"""
    with read_log(args.file) as frames:  # a missing or unknown file is an error before the bus is opened
        next(frames, None)
    transport = open_bus(args.interface, args.channel, fd=args.fd, bitrate=args.bitrate)
    stats = ReplayStats()

    async def work() -> int:
        try:
            await replay(args.file, transport.send, speed=args.speed, loop=args.loop, fd=args.fd, stats=stats)
        finally:
            transport.close()
            if stats.frames:
                rounds = f" in {_count(stats.rounds, 'round')}" if args.loop else ""
                skipped = f", {_count(stats.skipped, 'error frame')} skipped" if stats.skipped else ""
                frames = _count(stats.frames, "frame")
                print(
                    f"replayed {frames} from {args.file}{rounds} in {stats.elapsed:.3f} s "
                    f"(recorded {stats.recorded:.3f} s, speed {args.speed:g}){skipped}"
                )
        return EXIT_OK

    return _run(work)


def _cmd_sim(args: argparse.Namespace) -> int:
    """vwos can sim"""
    db = _database(args.dbc, strict=args.strict)
    names = _split_names(args.messages) if args.messages is not None else None
    if names is not None:
        _messages_named(db, names, "--messages")
    dropped = 0
    failing_since: float | None = None

    def send(frame: Frame) -> None:
        nonlocal dropped, failing_since
        try:
            transport.send(frame_message(frame))
        except (LinkDownError, can.CanError) as exc:
            now = trio.current_time()
            if failing_since is None:
                failing_since = now
                _error(f"warning: a frame was not sent ({exc}); dropping until the link takes them again")
            elif now - failing_since > SEND_PATIENCE:
                raise LinkDownError(f"no frame was taken for {SEND_PATIENCE:g} s: {exc}") from exc
            dropped += 1
            return
        failing_since = None

    ecu = SimulatedEcu(db, send, messages=names, default_cycle=args.default_cycle / 1000.0)
    if ecu.fd_messages and not args.fd:  # the codec's frames say which are FD (> 8 bytes always are)
        raise ToolError(f"{args.dbc}: message {ecu.fd_messages[0]} is CAN FD: simulate it with --fd")
    transport = open_bus(args.interface, args.channel, fd=args.fd, bitrate=args.bitrate)
    for name, reason in ecu.skipped.items():
        _error(f"warning: {name} is not simulated: {reason}")

    async def work() -> int:
        what = f"{_count(len(ecu.messages), 'message')} of {args.dbc} on {args.interface} {args.channel}"
        print(  # once Ctrl-C and SIGTERM stop it cleanly
            f"simulating {what}" + (f" for {args.duration:g} s" if args.duration else " (Ctrl-C stops)"),
            file=sys.stderr,
            flush=True,
        )
        begin = trio.current_time()
        try:
            with trio.move_on_after(math.inf if args.duration is None else args.duration):
                await ecu.run()
        finally:
            transport.close()
            lost = f", {dropped} dropped" if dropped else ""
            print(
                f"sent {_count(ecu.sent - dropped, 'frame')} of {_count(len(ecu.messages), 'message')} in "
                f"{trio.current_time() - begin:.3f} s{lost}"
            )
        return EXIT_OK

    return _run(work)


def _cmd_gen(args: argparse.Namespace) -> int:
    """vwos can gen"""
    if not args.network.isidentifier():
        raise ToolError(f"--network {args.network!r}: must be letters, digits and underscores")
    db = _database(args.dbc, strict=args.strict)
    digest = hashlib.sha256(Path(args.dbc).read_bytes()).hexdigest()[:16]
    try:
        text = generate_topics(db, network=args.network, source=f"{Path(args.dbc).name} (sha256 {digest}...)")
    except CanDatabaseError as exc:
        raise ToolError(f"{args.dbc}: {exc}") from None
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ToolError(f"{args.output}: cannot write it: {exc.strerror or exc}") from None
    print(
        f"wrote {args.output}: {_count(len(db.messages), 'message')} of network {args.network}",
        file=sys.stderr,
    )
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _number_at_least(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or math.isinf(value):
            raise argparse.ArgumentTypeError(
                f"expected a number {'>=' if inclusive else '>'} {low:g}, got {text}"
            )
        return value

    return parse


def _bus_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CAN interface")
    group.add_argument("--interface", default="socketcan", help="a python-can interface (default: socketcan)")
    group.add_argument("--channel", default="vcan0", help="the interface's channel (default: vcan0)")
    group.add_argument("--bitrate", type=_positive_int, help="bits per second, for interfaces that set it")
    group.add_argument("--fd", action="store_true", help="CAN FD")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``vwos can`` and its tools to the ``vwos`` command (entry-point group ``vwos.commands``)."""
    can_parser = subparsers.add_parser(
        "can",
        help="CAN tools: decoded live view, log replay, simulated ECU, typed topics",
        description="CAN tools. Exit codes: 0 done or stopped by Ctrl-C/SIGTERM, 1 the CAN link failed, "
        "2 a wrong input.",
    )
    tools = can_parser.add_subparsers(dest="can_command", required=True, metavar="TOOL")

    dump = tools.add_parser("dump", help="print received frames, decoded with a database, like candump")
    _bus_options(dump)
    dump.add_argument("--dbc", help="the CAN database (DBC, KCD, SYM, ARXML); without it frames are raw")
    dump.add_argument("--no-strict", dest="strict", action="store_false", help="accept sloppy databases")
    dump.add_argument("--json", action="store_true", help="one JSON object per line")
    dump.add_argument("--count", type=_positive_int, help="stop after this many frames")
    dump.add_argument("--filter", metavar="MSG,...", help="only these messages (needs --dbc)")
    dump.set_defaults(handler=_handler(_cmd_dump))

    play = tools.add_parser("replay", help="send a recorded log (.log, .asc, ...) with its timing")
    play.add_argument("file", help="the log: candump -L .log, .asc, or anything python-can reads")
    _bus_options(play)
    play.add_argument(
        "--speed",
        type=_number_at_least(0, inclusive=True),
        default=1.0,
        help="2: twice as fast; 0: as fast as possible (default: 1)",
    )
    play.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    play.set_defaults(handler=_handler(_cmd_replay))

    sim = tools.add_parser("sim", help="a simulated ECU sending a database's messages at their cycle times")
    sim.add_argument("dbc", help="the CAN database")
    _bus_options(sim)
    sim.add_argument("--no-strict", dest="strict", action="store_false", help="accept sloppy databases")
    sim.add_argument(
        "--default-cycle",
        type=_number_at_least(0, inclusive=False),
        default=100.0,
        metavar="MS",
        help="period of messages without a cycle time (default: 100)",
    )
    sim.add_argument("--messages", metavar="A,B,...", help="only these messages")
    sim.add_argument(
        "--duration", type=_number_at_least(0, inclusive=False), metavar="S", help="stop after S seconds"
    )
    sim.set_defaults(handler=_handler(_cmd_sim))

    gen = tools.add_parser("gen", help="generate a typed Python module of a database's topics")
    gen.add_argument("dbc", help="the CAN database")
    gen.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    gen.add_argument("--network", default="can0", help="the network's name in topic names (default: can0)")
    gen.add_argument("--no-strict", dest="strict", action="store_false", help="accept sloppy databases")
    gen.set_defaults(handler=_handler(_cmd_gen))
