"""The CAN tools, ``vwos can dump | replay | sim | gen``, and the pieces they are made of.

The commands reach the ``vwos`` command as an extension (entry-point group ``vwos.commands``, function
`register`), since the runtime knows nothing of CAN. Each piece works without the command line too:

`FrameView`
    received frames as text lines like candump's, with message and signal names, values and units, or as
    JSON objects; `dump_frames` drives it from a transport.
`replay`, `read_log`
    a recorded log (whatever ``can.LogReader`` reads) sent again with its timing, on trio's clock.
`SimulatedEcu` (in ``_sim.py``, shared with the `CanSimulator` service)
    plausible traffic for the messages of a database at their cycle times, on trio's clock.
`generate_topics`
    a typed Python module of a database's topics, field for field the records `CanCodec` decodes into.

Every problem with an input (a file, a name, an interface) is a `ToolError`, which the commands print as one
line and exit 2. See ``docs/can.md``, "Tools".
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import math
import os
import signal
import sys
import textwrap
import types
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import attrs
import can
import can.io.generic
import can.io.player
import cantools.database
import trio

from bus import Codec, NotAvailable
from services.can._codec import (
    CanCodec,
    CanDatabaseError,
    Frame,
    FrameError,
    _field_name,
    load_database,
)
from services.can._codec import suggest as _suggest
from services.can._sim import SimulatedEcu as SimulatedEcu  # the tool's core, also importable from here
from services.can._transport import (
    CanTransport,
    LinkDownError,
    PythonCanTransport,
    can_filters,
    frame_message,
    socketcan_link_problem,
)

EXIT_OK = 0
#: The CAN link failed while a tool was running.
EXIT_LINK = 1
#: A wrong input: the command line, a file, a name, an interface.
EXIT_USAGE = 2

#: How long `replay` keeps retrying a frame the interface refuses (a full transmit queue) before giving up.
SEND_PATIENCE = 1.0


class ToolError(Exception):
    """A wrong input of a CAN tool (a file, a name, an interface); the message says which and what."""


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


def _make_vcan(channel: str) -> str:
    return f"a virtual one: sudo ip link add dev {channel} type vcan && sudo ip link set up {channel}"


def open_bus(
    interface: str,
    channel: str,
    *,
    fd: bool = False,
    bitrate: int | None = None,
    filters: list[dict[str, Any]] | None = None,
) -> PythonCanTransport:
    """Open a python-can bus as a transport (waiting on the socket for SocketCAN, a worker thread for
    interfaces without one). Raises `ToolError` naming the interface, the channel and what went wrong."""
    if interface == "socketcan":  # a SocketCAN socket opens fine on an interface that is down: ask first
        problem = socketcan_link_problem(channel)
        if problem is not None:
            missing = problem.endswith("no such network interface")
            hint = _make_vcan(channel) if missing else f"sudo ip link set up {channel}"
            raise ToolError(f"cannot open {interface} channel {channel!r}: {problem} ({hint})")
    kwargs: dict[str, Any] = {"interface": interface, "channel": channel, "fd": fd}
    if bitrate is not None:
        kwargs["bitrate"] = bitrate
    if filters:
        kwargs["can_filters"] = filters
    try:
        bus = can.Bus(**kwargs)
    except can.CanInterfaceNotImplementedError as exc:
        known = sorted(can.interfaces.VALID_INTERFACES)
        hint = "" if interface in known else f" (python-can knows {', '.join(known)})"
        raise ToolError(f"--interface {interface}: {exc}{hint}") from None
    except (can.CanError, OSError, ValueError, TypeError, ImportError) as exc:
        hint = ""
        if isinstance(exc, OSError) and interface == "socketcan":
            hint = {
                errno.ENODEV: f" (no such network interface; {_make_vcan(channel)})",
                errno.ENETDOWN: f" (the interface is down: sudo ip link set up {channel})",
                errno.EAFNOSUPPORT: " (this kernel has no SocketCAN: sudo modprobe can_raw vcan)",
            }.get(exc.errno or 0, "")
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ToolError(f"cannot open {interface} channel {channel!r}: {reason}{hint}") from None
    return PythonCanTransport(bus)


def _json_number(value: float) -> float | None:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else format(value, ".10g")


# -- dump -------------------------------------------------------------------------------------------------


class FrameView:
    """Received frames as people and programs read them: `line` (like candump's, with the message name and
    each signal's name, value, unit and choice label) or `record` / `json` (one object per frame).

    Without a codec, or for a frame id not in the database, a frame is shown raw as candump shows it.
    """

    def __init__(self, codec: CanCodec | None = None, *, channel: str = "") -> None:
        self.codec = codec
        self.channel = channel
        self._messages: dict[tuple[int, bool], Any] = {}
        if codec is not None:
            for message in codec.db.messages:
                self._messages[message.frame_id, bool(message.is_extended_frame)] = message

    def record(self, msg: can.Message) -> dict[str, Any]:
        """The frame as a JSON-able dict: ``timestamp``, ``channel``, ``id``, ``extended``, ``fd``,
        ``dlc``, ``data`` (hex); with a database, ``message`` (None for an unknown id) and then ``signals``
        (name: value), ``units`` and ``labels`` (choice names), or ``error`` ({kind, message})."""
        out: dict[str, Any] = {
            "timestamp": msg.timestamp,
            "channel": str(msg.channel) if msg.channel is not None else self.channel,
            "id": msg.arbitration_id,
            "extended": msg.is_extended_id,
            "fd": msg.is_fd,
            "dlc": msg.dlc,
            "data": bytes(msg.data).hex(),
        }
        if msg.is_error_frame:
            out["error_frame"] = True
            return out
        if msg.is_remote_frame:
            out["remote"] = True
            return out
        if self.codec is None:
            return out
        message = self._messages.get((msg.arbitration_id, msg.is_extended_id))
        out["message"] = None if message is None else message.name
        if message is None:
            return out
        try:
            decoded = self.codec.decode(msg.arbitration_id, msg.data)
        except FrameError as exc:
            out["error"] = {"kind": exc.kind, "message": str(exc)}
            return out
        except Exception as exc:  # a payload the codec did not foresee: shown, never a traceback
            out["error"] = {"kind": "undecodable", "message": f"{type(exc).__name__}: {exc}"}
            return out
        if not decoded:
            return out
        record = decoded[0][1]
        signals: dict[str, Any] = {}
        units: dict[str, str] = {}
        labels: dict[str, str] = {}
        for sig in message.signals:
            value = getattr(record, _field_name(sig.name))
            if value is None:  # a multiplexed signal not in this frame
                continue
            if type(value) is NotAvailable:
                signals[sig.name] = {"not_available": value.reason}
                continue
            signals[sig.name] = _json_number(value)
            if sig.unit:
                units[sig.name] = sig.unit
            if sig.choices and isinstance(value, int) and sig.scale == 1 and sig.offset == 0:
                label = sig.choices.get(value)
                if label is not None:
                    labels[sig.name] = str(label)
        out["signals"] = signals
        if units:
            out["units"] = units
        if labels:
            out["labels"] = labels
        return out

    def json(self, msg: can.Message) -> str:
        """`record` as one line of JSON."""
        return json.dumps(self.record(msg), ensure_ascii=False)

    def line(self, msg: can.Message) -> str:
        """``(timestamp)  channel  id  [dlc]  data bytes  Message  Signal=value unit ...``, candump-style."""
        rec = self.record(msg)
        ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
        head = f"({msg.timestamp:.6f})  {rec['channel']}  {ident}   [{msg.dlc}]"
        if msg.is_error_frame:
            return f"{head}  ERRORFRAME"
        if msg.is_remote_frame:
            return f"{head}  remote request"
        data = " ".join(f"{b:02X}" for b in msg.data)
        name = rec.get("message")
        if name is None:
            return f"{head}  {data}"
        text = f"{head}  {data:<23}  {name}"
        if "error" in rec:
            return f"{text}  ! {rec['error']['kind']}: {rec['error']['message']}"
        units, labels = rec.get("units", {}), rec.get("labels", {})
        parts = []
        for sig, value in rec["signals"].items():
            if isinstance(value, dict):  # {"not_available": reason}
                parts.append(f"{sig}=n/a ({value['not_available']})")
                continue
            part = f"{sig}={'nan' if value is None else _number(value)}"
            if sig in units:
                part += f" {units[sig]}"
            if sig in labels:
                part += f" ({labels[sig]})"
            parts.append(part)
        return f"{text}  {'  '.join(parts)}" if parts else text


async def dump_frames(
    transport: CanTransport,
    view: FrameView,
    out: TextIO,
    *,
    json_lines: bool = False,
    count: int | None = None,
    ids: set[tuple[int, bool]] | None = None,
) -> int:
    """Print received frames, one line each, until ``count`` are shown (or forever); return how many.

    ``ids`` keeps only those (frame id, extended) pairs. Raises `LinkDownError` if the link fails.
    """
    shown = 0
    render = view.json if json_lines else view.line
    while count is None or shown < count:
        lines = []
        for msg in await transport.receive():
            if ids is not None and (msg.arbitration_id, msg.is_extended_id) not in ids:
                continue
            lines.append(render(msg))
            shown += 1
            if shown == count:
                break
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
    return shown


# -- replay -----------------------------------------------------------------------------------------------


class _Lines:
    """A text file handed to a python-can reader, counting the lines it reads so an error can name one."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self.number = 0
        self.text = ""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._file)
        self.number += 1
        self.text = line
        return line

    def readline(self) -> str:
        line = self._file.readline()
        if line:
            self.number += 1
            self.text = line
        return line

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


@contextlib.contextmanager
def read_log(path: str | Path) -> Iterator[Iterator[can.Message]]:
    """The frames of a CAN log file, in file order, as python-can reads them (candump ``.log``, ``.asc``,
    ``.blf``, ``.csv``, ``.trc``, ...; also gzipped). Closes the file on exit.

    Raises `ToolError` naming the file, and for text formats the line, of anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"{path}: no such file")
    reader_class = can.io.player.MESSAGE_READERS.get(path.suffix.lower())
    lines: _Lines | None = None
    try:
        if reader_class is not None and issubclass(reader_class, can.io.generic.TextIOMessageReader):
            lines = _Lines(path.open(encoding="utf-8", errors="replace"))
            reader: Any = cast(Any, reader_class)(lines)
        else:
            reader = can.LogReader(path)
    except Exception as exc:
        if lines is not None:
            lines.close()
        known = ", ".join(sorted(can.io.player.MESSAGE_READERS))
        raise ToolError(
            f"{path}: cannot read it: {exc} (python-can reads {known}, and those gzipped)"
        ) from None

    def frames() -> Iterator[can.Message]:
        iterator = iter(reader)
        while True:
            try:
                msg = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                if lines is None:
                    raise ToolError(f"{path}: cannot read a frame: {reason}") from None
                raise ToolError(
                    f"{path}: line {lines.number}: not a frame python-can can read ({reason}): "
                    f"{lines.text.strip()[:80]!r}"
                ) from None
            yield msg

    try:
        yield frames()
    finally:
        reader.stop()


@attrs.define
class ReplayStats:
    """What `replay` did, updated as it goes (so a summary can be printed after an interruption)."""

    #: Frames sent.
    frames: int = 0
    #: Error frames in the log, which are not sent.
    skipped: int = 0
    #: Full passes through the file.
    rounds: int = 0
    #: Seconds of the recording (last timestamp minus first) in one pass.
    recorded: float = 0.0
    #: Seconds on trio's clock from the first frame sent to the last.
    elapsed: float = 0.0


async def _send_patiently(send: Callable[[can.Message], None], msg: can.Message) -> None:
    """Send, retrying briefly while the interface refuses (a full transmit queue: ENOBUFS)."""
    deadline: float | None = None
    delay = 0.001
    while True:
        try:
            send(msg)
            return
        except (LinkDownError, can.CanError) as exc:
            now = trio.current_time()
            if deadline is None:
                deadline = now + SEND_PATIENCE
            elif now >= deadline:
                raise LinkDownError(f"the interface refused frames for {SEND_PATIENCE:g} s: {exc}") from exc
        await trio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def replay(
    path: str | Path,
    send: Callable[[can.Message], None],
    *,
    speed: float = 1.0,
    loop: bool = False,
    fd: bool = True,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Send the frames of a CAN log with their recorded timing: each frame at its timestamp's offset from
    the first frame's, divided by ``speed`` (2 is twice as fast; 0 sends as fast as the link takes them),
    on trio's clock. With ``loop``, start over at the end until cancelled.

    Frames go out without their recorded channel (SocketCAN would otherwise send them to the interface they
    were recorded on); error frames are skipped. ``fd=False`` refuses CAN FD frames with a `ToolError`.
    Raises `ToolError` for an unreadable or empty file, `LinkDownError` if the link does not take frames.
    """
    if not speed >= 0:
        raise ValueError(f"speed must be 0 or more, not {speed!r}")
    stats = ReplayStats() if stats is None else stats
    started: float | None = None
    while True:
        first: float | None = None
        begin = 0.0
        with read_log(path) as frames:
            for msg in frames:
                if msg.is_error_frame:
                    stats.skipped += 1
                    continue
                if msg.is_fd and not fd:
                    raise ToolError(f"{path}: frame {stats.frames + 1} is CAN FD: replay it with --fd")
                if first is None:
                    first, begin = msg.timestamp, trio.current_time()
                    started = begin if started is None else started
                offset = msg.timestamp - first
                if speed > 0:
                    await trio.sleep_until(begin + offset / speed)
                else:
                    await trio.lowlevel.checkpoint()
                msg.channel = None
                await _send_patiently(send, msg)
                stats.frames += 1
                stats.recorded = max(stats.recorded, offset)
                assert started is not None
                stats.elapsed = trio.current_time() - started
        if first is None:
            raise ToolError(f"{path}: no CAN frames in the file")
        stats.rounds += 1
        if not loop:
            return stats


# -- gen --------------------------------------------------------------------------------------------------

#: Names the generated module uses for itself (builtins in annotations, imports, constants).
_MODULE_NAMES = {
    "annotations",
    "Any",
    "attrs",
    "Topic",
    "NETWORK",
    "TOPICS",
    "RECORDS",
    "int",
    "float",
    "None",
}
_WIDTH = 110


def _ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(text.replace("\\", "/").replace('"', "'").split())


def _comment_text(comment: Any) -> str:
    if isinstance(comment, dict):  # comments by language
        comment = comment.get("EN") or next(iter(comment.values()), "")
    return _ascii(comment) if isinstance(comment, str) else ""


def _type_text(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        return " | ".join("None" if a is type(None) else a.__name__ for a in kind.__args__)
    return str(kind.__name__)


def _assign(target: str, call: str, args: list[str]) -> list[str]:
    """``target = call(args)`` as ruff format writes it: on one line if it fits, else the arguments on one
    indented line, else one argument per line."""
    one = f"{target} = {call}({', '.join(args)})"
    if len(one) <= _WIDTH:
        return [one]
    inner = "    " + ", ".join(args)
    if len(inner) <= _WIDTH:
        return [f"{target} = {call}(", inner, ")"]
    return [f"{target} = {call}(", *(f"    {a}," for a in args), ")"]


def generate_topics(db: cantools.database.can.Database, *, network: str = "can0", source: str = "") -> str:
    """A Python module of typed topics for ``db`` on ``network``: for each message an attrs frozen record
    class with the same fields (names, order, types) as the records `CanCodec` decodes into, and a
    ``<Message>_TOPIC`` constant, ``Topic("CAN.<network>.<Message>", <Message>, max_age=...)`` with the
    codec's ``max_age``; then ``TOPICS`` and ``RECORDS`` (by message name). ``source`` names the database in
    the header. The module is ruff-clean and mypy --strict clean.

    Raises `CanDatabaseError` if a name cannot be a Python name or the codec refuses the database.
    """
    if not network.isidentifier():
        raise CanDatabaseError(f"network {network!r}: must be letters, digits and underscores")
    try:
        codec = CanCodec(db, network, codec=Codec())
    except Exception as exc:
        raise CanDatabaseError(f"{source or 'the database'}: {exc}") from None
    names = [m.name for m in db.messages]
    reserved = _MODULE_NAMES | {f"{n}_TOPIC" for n in names}
    for message in db.messages:
        name = message.name
        if not name.isidentifier() or name.startswith("__") or name in reserved or names.count(name) > 1:
            raise CanDatabaseError(f"message {name!r}: cannot be the name of a class in the generated module")
        for sig in message.signals:
            if _field_name(sig.name) in ("int", "float", "None") or not sig.name.isidentifier():
                raise CanDatabaseError(f"signal {name}.{sig.name}: cannot be the name of a field")
    origin = f"Generated by `vwos can gen` from {_ascii(source) or 'a CAN database'}, network {network}."
    header = [
        *textwrap.wrap(origin, _WIDTH, initial_indent="# ", subsequent_indent="# "),
        "# Do not edit: generate it again instead.",
        f'"""Typed topics of CAN network ``{network}``: one record class and one topic per message.',
        "",
        "The record classes have the fields (names, order, types) of the records ``services.can.CanCodec``",
        "decodes into; the topics have the names and ``max_age`` of the topics it publishes.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "import attrs",
        "",
        "from bus import Topic",
        "",
        f'NETWORK = "{network}"',
    ]
    lines = header
    for message in db.messages:
        topic = codec.message_topic(message.name)
        record = topic.type
        fields = attrs.fields(record)
        assert [f.name for f in fields] == [_field_name(s.name) for s in message.signals]
        lines += ["", "", "@attrs.frozen", f"class {message.name}:"]
        about = f"0x{message.frame_id:X}{' extended' if message.is_extended_frame else ''}, "
        about += f"{message.length} bytes" + (
            f", every {message.cycle_time} ms" if message.cycle_time else ""
        )
        summary = f"{message.name} ({about})."
        comment = _comment_text(message.comment)
        single = f'    """{summary}{" " + comment if comment else ""}"""'
        if len(single) <= _WIDTH:
            lines.append(single)
        else:
            lines.append(f'    """{summary}')
            lines.append("")
            lines += textwrap.wrap(comment, _WIDTH - 4, initial_indent="    ", subsequent_indent="    ")
            lines.append('    """')
        if fields:
            lines.append("")
        for sig, field in zip(message.signals, fields, strict=True):
            notes = []
            text = _comment_text(sig.comment)
            if text:
                notes.append(text)
            if sig.minimum is not None and sig.maximum is not None:
                notes.append(f"[{_number(sig.minimum)}, {_number(sig.maximum)}]")
            if sig.unit and _ascii(sig.unit):
                notes.append(_ascii(sig.unit))
            if sig.choices:
                notes.append("; ".join(f"{_number(k)}: {_ascii(str(v))}" for k, v in sig.choices.items()))
            if notes:
                lines += textwrap.wrap(
                    " ".join(notes), _WIDTH - 4, initial_indent="    #: ", subsequent_indent="    #: "
                )
            default = " = None" if field.default is None else ""
            lines.append(f"    {field.name}: {_type_text(field.type)}{default}")
        lines.append("")
        lines.append("")
        args = [f'"{topic.name}"', message.name]
        if topic.max_age is not None:
            args.append(f"max_age={topic.max_age!r}")
        lines += _assign(f"{message.name}_TOPIC: Topic[{message.name}]", "Topic", args)
    lines += ["", "#: Every message's topic, in database order."]
    if names:
        lines += ["TOPICS: tuple[Topic[Any], ...] = (", *(f"    {n}_TOPIC," for n in names), ")"]
        lines += [
            "",
            "#: Every message's record class, by message name.",
            "RECORDS: dict[str, type[Any]] = {",
        ]
        lines += [*(f'    "{n}": {n},' for n in names), "}"]
    else:
        lines += ["TOPICS: tuple[Topic[Any], ...] = ()", "", "#: Every message's record class, by name."]
        lines += ["RECORDS: dict[str, type[Any]] = {}"]
    return "\n".join(lines).replace(" \n", "\n") + "\n"


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
