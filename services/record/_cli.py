"""``vwos record``, ``vwos replay`` and ``vwos bag info``: the command-line face of services.record.

Registered through the ``vwos.commands`` entry-point group (``register``). Exit codes: 0 -- done; 1 -- the
system refused something (the socket, a file) or the recording is damaged (one line says what); 2 -- a
usage error; 3 -- ``record`` dropped samples (the recording is complete otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from vwos import default_socket_path, tune_gc

__all__ = ["register"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_DROPPED: Final = 3
_MAX_SECONDS: Final = 1e9


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not 0 < value <= 1e7:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes > 0, got {text!r}")
    return max(1, int(value * 1_000_000))


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate (1 real time, 0 fastest), got {text!r}") from None
    if not 0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"expected a rate from 0 to 1e6, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``record``, ``replay`` and ``bag`` to the ``vwos`` command's subparsers."""
    socket_help = "the bus socket (default: $VWOS_SOCKET, as vwos run)"
    record = subparsers.add_parser(
        "record",
        help="record bus samples to an MCAP file",
        description="Record the samples of the topics the patterns match (all without) to MCAP, until "
        "--duration or Ctrl-C.",
    )
    record.add_argument("out", metavar="OUT.mcap", help="the file to write")
    record.add_argument("patterns", metavar="PATTERN", nargs="*", help="topics or patterns (default: **)")
    record.add_argument("--duration", type=_seconds, metavar="S", help="stop after this many seconds")
    record.add_argument(
        "--split-size", type=_megabytes, metavar="MB", help="start a new file once one has this many MB"
    )
    record.add_argument(
        "--split-duration", type=_seconds, metavar="S", help="start a new file every this many seconds"
    )
    record.add_argument("--vehicle-id", metavar="ID", help="the vehicle id written into the metadata")
    record.add_argument(
        "--queue-size", type=_count, default=None, metavar="N", help="the recorder's queue (default 200000)"
    )
    record.add_argument("--socket", metavar="PATH", help=socket_help)
    _snapshot_options(record)
    record.set_defaults(handler=record_command)

    play = subparsers.add_parser(
        "replay",
        help="publish an MCAP recording into a running bus",
        description="Publish a recording made by vwos record into the bus, its timing scaled by --rate.",
    )
    play.add_argument(
        "file", metavar="FILE.mcap", help="the recording (a split one: its base name, or its parts in order)"
    )
    play.add_argument(
        "patterns",
        metavar="PATTERN",
        nargs="*",
        help="only these topics (default: all); more files (the arguments ending in .mcap)",
    )
    play.add_argument("--rate", type=_rate, default=1.0, metavar="X", help="speed: 1 real time, 0 fastest")
    play.add_argument("--fast", action="store_true", help="as fast as the bus takes them (--rate 0)")
    play.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    play.add_argument("--socket", metavar="PATH", help=socket_help)
    play.set_defaults(handler=replay_command)

    bag = subparsers.add_parser("bag", help="tools for MCAP recordings")
    commands = bag.add_subparsers(dest="bag_command", metavar="COMMAND", required=True)
    info = commands.add_parser(
        "info", help="what a recording holds", description="Channels, counts, times, size of a recording."
    )
    info.add_argument(
        "file", metavar="FILE", nargs="+", help="an MCAP file; several, or a split one's base name: as one"
    )
    info.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    info.set_defaults(handler=bag_info_command)


def _run(fn: Any, *args: Any) -> Any:
    """``trio.run(fn, *args)``, with an error that ended a nursery raised as itself, not in a group."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _say(err: TextIO, command: str, message: str) -> None:
    err.write(f"vwos {command}: {' '.join(message.split())}\n")


# -- record -------------------------------------------------------------------------------------------------


def record_command(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The handler of ``vwos record``."""
    from bus import BusError, ProtocolError, check_pattern
    from services.record._json import RecordingError

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    patterns = list(args.patterns) or ["**"]
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except Exception as exc:
            _say(err, "record", f"{pattern!r}: not a topic pattern: {exc}")
            return EXIT_USAGE
    problem = _check_snapshot_options(args)
    if problem is not None:
        _say(err, "record", problem)
        return EXIT_USAGE
    socket = args.socket or default_socket_path()
    tune_gc()  # as vwos's own processes (collecting every 700 allocations cost a third of the rate)
    args.snapshot_out, args.snapshot_failures, args.snapshot_recorder = out, 0, None
    try:
        result = _run(_record, args, patterns, socket)
    except RecordingError as exc:
        _say(err, "record", str(exc))
        return EXIT_FAILED
    except OSError as exc:
        _say(err, "record", f"cannot connect to the bus at {socket}: {exc.strerror or exc}")
        return EXIT_FAILED
    except (BusError, ProtocolError) as exc:
        _say(err, "record", f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    recorded, dropped, seconds, files, lost = result
    where = ", ".join(files) or "no file (no snapshot was triggered)"
    out.write(f"recorded {recorded} samples ({dropped} dropped) in {seconds:.1f} s to {where}\n")
    if lost is not None:
        _say(err, "record", f"the connection to the bus was lost ({lost}); the recording ends there")
        return EXIT_FAILED
    for trigger in args.snapshot_recorder.snapshotter.triggers if args.snapshot_recorder else ():
        if trigger.mismatched:
            _say(
                err,
                "record",
                f"trigger {trigger.condition.text!r}: {trigger.mismatched} samples of "
                f"{trigger.condition.topic} were {trigger.mismatched_type}, which it cannot compare "
                "(false for them)",
            )
    if args.snapshot_failures:
        _say(err, "record", f"{args.snapshot_failures} snapshot(s) could not be written (see above)")
        return EXIT_FAILED
    return EXIT_DROPPED if dropped else EXIT_OK


async def _record(
    args: argparse.Namespace, patterns: Sequence[str], socket: str
) -> tuple[int, int, float, list[str], str | None]:
    from bus import ConnectionLostError, connect_unix
    from services.record._recorder import DEFAULT_QUEUE_SIZE, record_bus
    from services.record._writer import RecordingWriter

    stop = trio.Event()
    async with connect_unix(socket, "vwos-record") as client:
        writer: Any
        if args.snapshot is not None:
            writer = _snapshot_recorder(args, patterns)
        else:
            writer = RecordingWriter(
                args.out,
                patterns=patterns,
                vehicle_id=args.vehicle_id,
                split_size=args.split_size,
                split_duration=args.split_duration,
            )
        lost: str | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            try:
                result = await record_bus(
                    client,
                    writer,
                    patterns,
                    duration=args.duration,
                    queue_size=args.queue_size or DEFAULT_QUEUE_SIZE,
                    stop=stop,
                )
                recorded, dropped, seconds = result.recorded, result.dropped, result.seconds
                if result.ended == "closed":
                    lost = "the broker closed the connection"
            except ConnectionLostError as exc:
                lost = str(exc)
                recorded, dropped, seconds = writer.recorded, writer.dropped, 0.0
            nursery.cancel_scope.cancel()
    return recorded, dropped, seconds, [str(f) for f in writer.files], lost


# -- record --snapshot ------------------------------------------------------------------------------------

_MAX_TRIGGERS: Final = 100


def _snapshot_options(record: argparse.ArgumentParser) -> None:
    from services.record._snapshot import DEFAULT_MIN_INTERVAL
    from services.record._snapshot_run import SNAPSHOT_METHOD

    group = record.add_argument_group(
        "snapshot mode",
        "Keep the last SECONDS in memory and write them to OUT_snap_NNNN.mcap when a --trigger condition "
        f"becomes true or the bus method {SNAPSHOT_METHOD} is called (docs/record.md).",
    )
    group.add_argument("--snapshot", type=_seconds, metavar="SECONDS", help="keep this many seconds")
    group.add_argument(
        "--trigger",
        action="append",
        default=[],
        metavar="COND",
        help="snapshot when COND becomes true: 'TOPIC OP VALUE' (OP > >= < <= == !=) or 'TOPIC is not "
        "available'; repeatable",
    )
    group.add_argument(
        "--post", type=_seconds_or_zero, default=0.0, metavar="S", help="also keep S seconds after a trigger"
    )
    group.add_argument(
        "--min-interval",
        type=_seconds_or_zero,
        default=DEFAULT_MIN_INTERVAL,
        metavar="S",
        help=f"each trigger fires at most once per S seconds (default {DEFAULT_MIN_INTERVAL:g})",
    )
    group.add_argument(
        "--snapshot-max-samples", type=_count, default=None, metavar="N", help="hold at most N samples"
    )
    group.add_argument(
        "--snapshot-max-mb",
        type=_megabytes,
        default=None,
        metavar="MB",
        help="hold about MB megabytes at most",
    )
    group.add_argument(
        "--snapshot-method",
        default=SNAPSHOT_METHOD,
        metavar="NAME",
        help=f"the bus method that takes a snapshot (default {SNAPSHOT_METHOD})",
    )
    group.add_argument("--no-snapshot-method", action="store_true", help="serve no method (triggers only)")


def _check_snapshot_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the snapshot options (one line), or None; parses the triggers into
    ``args.conditions``."""
    from bus import Method
    from services.record._snapshot import DEFAULT_MIN_INTERVAL, ConditionError, parse_condition
    from services.record._snapshot_run import SNAPSHOT_METHOD

    args.conditions = []
    snapshot_only = [
        ("--trigger", bool(args.trigger)),
        ("--post", args.post != 0.0),
        ("--min-interval", args.min_interval != DEFAULT_MIN_INTERVAL),
        ("--snapshot-method", args.snapshot_method != SNAPSHOT_METHOD),
        ("--snapshot-max-samples", args.snapshot_max_samples is not None),
        ("--snapshot-max-mb", args.snapshot_max_mb is not None),
        ("--no-snapshot-method", args.no_snapshot_method),
    ]
    if args.snapshot is None:
        for option, given in snapshot_only:
            if given:
                return f"{option} needs --snapshot SECONDS"
        return None
    for option, value in (("--split-size", args.split_size), ("--split-duration", args.split_duration)):
        if value is not None:
            return f"{option} does not go with --snapshot (each snapshot is one file)"
    if len(args.trigger) > _MAX_TRIGGERS:
        return f"at most {_MAX_TRIGGERS} --trigger conditions, not {len(args.trigger)}"
    for text in args.trigger:
        try:
            args.conditions.append(parse_condition(text))
        except ConditionError as exc:
            return str(exc)
    if not args.no_snapshot_method:
        try:
            Method(args.snapshot_method)
        except Exception as exc:
            return f"--snapshot-method: {exc}"
    elif not args.conditions:
        return "--no-snapshot-method needs a --trigger: nothing could take a snapshot"
    return None


def _snapshot_recorder(args: argparse.Namespace, patterns: Sequence[str]) -> Any:
    from services.record._snapshot import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES
    from services.record._snapshot_run import SnapshotRecorder, SnapshotResult

    out: TextIO = args.snapshot_out

    def said(result: SnapshotResult) -> None:
        if result.error is not None:
            args.snapshot_failures += 1
            out.write(f"snapshot {result.index} failed: {result.error}\n")
        else:
            cut = " (cut short: the recording ended)" if result.truncated else ""
            out.write(
                f"snapshot {result.index}: {result.samples} samples to {result.path} "
                f"({'; '.join(result.triggers)}){cut}\n"
            )
        out.flush()

    args.snapshot_recorder = SnapshotRecorder(
        args.out,
        args.snapshot,
        conditions=args.conditions,
        post=args.post,
        min_interval=args.min_interval,
        max_samples=args.snapshot_max_samples or DEFAULT_MAX_SAMPLES,
        max_bytes=args.snapshot_max_mb or DEFAULT_MAX_BYTES,
        patterns=patterns,
        method=None if args.no_snapshot_method else args.snapshot_method,
        vehicle_id=args.vehicle_id,
        on_snapshot=said,
    )
    return args.snapshot_recorder


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


# -- replay -------------------------------------------------------------------------------------------------


def replay_command(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The handler of ``vwos replay``."""
    from bus import BusError, ProtocolError
    from services.record._json import RecordingError
    from services.record._parts import bag_info

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args.files, args.patterns = _files_and_patterns(args.file, args.patterns)
    try:
        info = bag_info(args.files)  # a damaged file fails here, before anything is published
    except RecordingError as exc:
        _say(err, "replay", str(exc))
        return EXIT_FAILED
    for warning in info.warnings:  # no summary (its recorder was killed): replayed as far as it goes
        _say(err, "replay", warning)
    for channel in info.channels:
        if (channel.message_encoding, channel.schema_encoding) != ("json", "jsonschema"):
            _say(
                err,
                "replay",
                f"{info.path}: channel {channel.topic} is {channel.message_encoding} with a "
                f"{channel.schema_encoding or 'no'} schema, not a vwos recording's json/jsonschema",
            )
            return EXIT_FAILED
    socket = args.socket or default_socket_path()
    rate = 0.0 if args.fast else args.rate
    tune_gc()  # as vwos's own processes (collecting every 700 allocations cost a third of the rate)
    try:
        published, loops, seconds, refused = _run(_replay, args, rate, socket)
    except RecordingError as exc:
        _say(err, "replay", str(exc))
        return EXIT_FAILED
    except OSError as exc:
        _say(err, "replay", f"cannot connect to the bus at {socket}: {exc.strerror or exc}")
        return EXIT_FAILED
    except (BusError, ProtocolError) as exc:
        _say(err, "replay", f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    also = f" ({refused} refused by the bus)" if refused else ""
    out.write(f"published {published} samples in {loops} pass(es), {seconds:.1f} s{also}\n")
    return EXIT_OK


def _files_and_patterns(first: str, rest: Sequence[str]) -> tuple[list[str], list[str]]:
    """``vwos replay FILE [FILE.mcap ...] [PATTERN ...]``: the arguments after the first that end in
    ``.mcap`` are files too (a split recording's parts, a glob the shell expanded), the others patterns."""
    files = [first, *(a for a in rest if a.lower().endswith(".mcap"))]
    return files, [a for a in rest if not a.lower().endswith(".mcap")]


async def _replay(args: argparse.Namespace, rate: float, socket: str) -> tuple[int, int, float, int]:
    from bus import connect_unix
    from services.record._replay import replay

    async with connect_unix(socket, "vwos-replay") as client:
        stopped = trio.Event()
        results: list[tuple[int, int, float, int]] = []
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                r = await replay(client, args.files, args.patterns, rate=rate, loop=args.loop)
                results.append((r.published - r.refused, r.loops, r.seconds, r.refused))
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(_stop_on_signal, stopped)
            await stopped.wait()
            nursery.cancel_scope.cancel()
    return results[0] if results else (0, 0, 0.0, 0)


# -- bag info -----------------------------------------------------------------------------------------------


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.9f}"
    return f"{moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} ({seconds:.9f})"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def bag_info_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """The handler of ``vwos bag info``."""
    from services.record._json import RecordingError
    from services.record._parts import bag_info

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        info = bag_info(args.file)
    except RecordingError as exc:
        _say(err, "bag info", str(exc))
        return EXIT_FAILED
    if args.json:
        out.write(json.dumps(info.to_json(), ensure_ascii=False, default=str) + "\n")
        return EXIT_OK
    rows: list[tuple[str, Any]] = [
        ("Files", "\n              ".join(Path(f).name for f in info.files or (info.path,))),
        ("Bag size", _size(info.size)),
        ("Library", info.library),
        ("Duration", f"{info.duration:.3f} s" if math.isfinite(info.duration) else "-"),
        ("Start", _when(info.start)),
        ("End", _when(info.end)),
        ("Messages", info.messages),
        ("Chunks", f"{info.chunks} ({', '.join(info.compression) or 'none'})"),
    ]
    rows.extend(("Warning", w) for w in info.warnings)  # no summary: what was lost, in one line
    for name, value in rows:
        out.write(f"{name + ':':<14}{value}\n")
    width = max((len(c.topic) for c in info.channels), default=5)
    type_width = max((len(c.type) for c in info.channels), default=4)
    out.write(f"{'Topic information:':<14}\n")
    for c in info.channels:
        out.write(
            f"  {c.topic:<{width}}  {c.type:<{type_width}}  {c.messages:>10} msgs  "
            f"{c.message_encoding}/{c.schema_encoding}\n"
        )
    for name, data in info.metadata.items():
        shown = ", ".join(f"{k}={v}" for k, v in data.items())
        out.write(f"Metadata {name}: {shown}\n")
    return EXIT_OK
