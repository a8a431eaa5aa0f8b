"""Received frames as text and recorded logs sent again: the CAN tools' library, usable without the command
line.

`FrameView`
    received frames as text lines like candump's, with message and signal names, values and units, or as
    JSON objects; `dump_frames` drives it from a transport.
`replay`, `read_log`
    a recorded log (whatever ``can.LogReader`` reads) sent again with its timing, on trio's clock.

Every problem with an input (a file, a name, an interface) is a `ToolError`; the commands
(``services/can/_cli.py``) print it as one line and exit 2. See ``docs/can.md``, "Tools".
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import attrs
import can
import can.io.generic
import can.io.player
import trio

from bus import NotAvailable
from services.can._codec import (
    CanCodec,
    FrameError,
    _field_name,
)
from services.can._transport import (
    CanTransport,
    LinkDownError,
)

#: How long `replay` keeps retrying a frame the interface refuses (a full transmit queue) before giving up.
SEND_PATIENCE = 1.0


class ToolError(Exception):
    """A wrong input of a CAN tool (a file, a name, an interface); the message says which and what."""


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
            decoded = self.codec.decode(msg.arbitration_id, msg.data, msg.is_extended_id)
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
def read_log(path: str | Path, *, absolute: bool = False) -> Iterator[Iterator[can.Message]]:
    """The frames of a CAN log file, in file order, as python-can reads them (candump ``.log``, ``.asc``,
    ``.blf``, ``.csv``, ``.trc``, ...; also gzipped). Closes the file on exit.

    ``absolute``: an ASC file's timestamps from its start date, in seconds since the epoch, rather than
    from 0 (the other formats' timestamps are as the file has them). Raises `ToolError` naming the file,
    and for text formats the line, of anything unreadable, and for a BLF file shorter than its header
    says (cut off) once its last whole frame is read.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"{path}: no such file")
    reader_class = can.io.player.MESSAGE_READERS.get(path.suffix.lower())
    lines: _Lines | None = None
    try:
        if reader_class is not None and issubclass(reader_class, can.io.generic.TextIOMessageReader):
            lines = _Lines(path.open(encoding="utf-8", errors="replace"))
            options = {"relative_timestamp": False} if absolute and reader_class is can.ASCReader else {}
            reader: Any = cast(Any, reader_class)(lines, **options)
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
                _check_complete(path, reader)
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


def _check_complete(path: Path, reader: Any) -> None:
    """A BLF file shorter than its header says was cut off (python-can's reader just stops there)."""
    if isinstance(reader, can.BLFReader) and path.suffix.lower() == ".blf":  # not gzipped
        size = path.stat().st_size
        if reader.file_size > size:
            raise ToolError(
                f"{path}: cut off after {size} bytes (its header says {reader.file_size}): the frames "
                "after that are missing"
            )


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
