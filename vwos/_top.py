"""``vwos top``: a live terminal view of the services and the busiest topics (plain ANSI redraw).

On a terminal it redraws a frame every ``--interval`` (the screen cleared with ANSI codes, keys read in
cbreak mode so ``q`` quits). Without one -- standard output a pipe or a file -- it prints one frame as plain
lines and ends, as ``--once`` does, and leaves the terminal modes alone; ``--json`` without a terminal
streams one JSON frame per interval until stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import attrs
import trio

from vwos._control import STATUS, TOPICS, StatusReply, TopicsReply, TopicsRequest

_CLEAR = "\x1b[H\x1b[2J"


def format_seconds(seconds: float | None) -> str:
    """``None`` -> ``-``; else a compact duration: ``4.2s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def busiest(topics: TopicsReply, limit: int) -> list[Any]:
    """The ``limit`` topics with the highest rates (then most published), busiest first."""
    return sorted(topics.topics, key=lambda t: (-t.rate, -t.published, t.name))[:limit]


def render_frame(status: StatusReply, topics: TopicsReply, *, limit: int = 15, width: int = 100) -> str:
    """One frame of ``vwos top``, as plain text."""
    lines = [f"vwos top — supervisor up {format_seconds(status.supervisor_uptime)}", ""]
    # Columns as wide as their longest entry (so long names keep the table aligned).
    name_w = max([len("SERVICE"), *(len(s.name) for s in status.services)])
    lines.append(f"{'SERVICE':<{name_w}} {'STATE':<9} {'RESTARTS':>8} {'UPTIME':>8}  LAST ERROR")
    for s in status.services:
        error = (s.last_error or "")[: max(0, width - name_w - 31)]
        uptime = format_seconds(s.uptime)
        lines.append(f"{s.name:<{name_w}} {s.state:<9} {s.restarts:>8} {uptime:>8}  {error}")
    lines.append("")
    shown = busiest(topics, limit)
    topic_w = max([len("TOPIC"), *(len(t.name) for t in shown)])
    lines.append(f"{'TOPIC':<{topic_w}} {'RATE/s':>9} {'COUNT':>9}  LATEST")
    for t in shown:
        latest = "-" if t.latest is None else t.latest
        if t.stale and t.latest is not None:
            latest += " (stale)"
        lines.append(
            f"{t.name:<{topic_w}} {t.rate:>9.1f} {t.published:>9}  {latest[: max(0, width - topic_w - 22)]}"
        )
    return "\n".join(line[:width] for line in lines) + "\n"


async def _snapshot(client: Any) -> tuple[StatusReply, TopicsReply]:
    status: StatusReply = await client.call(STATUS, None)
    topics: TopicsReply = await client.call(TOPICS, TopicsRequest("**"))
    return status, topics


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (OSError, ValueError):  # closed
        return False


@contextlib.contextmanager
def _cbreak(stream: TextIO | None) -> Iterator[bool]:
    """Put a terminal in cbreak mode (keys arrive one by one, unechoed); yields whether it did."""
    if stream is None:
        yield False
        return
    try:
        import termios
        import tty

        fd = stream.fileno()
        if not os.isatty(fd):
            yield False
            return
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError):
        yield False
        return
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_quit(fd: int, scope: trio.CancelScope) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 32)
        if not data or b"q" in data.lower():
            scope.cancel()
            return


async def cmd_top(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``vwos top [--once] [--limit N] [--interval S] [--json]``."""
    terminal = _is_terminal(out)
    if args.once or not (terminal or args.json):
        status, topics = await _snapshot(client)
        out.write(
            _json_frame(status, topics, args.limit)
            if args.json
            else render_frame(status, topics, limit=args.limit)
        )
        return 0
    with _cbreak(sys.stdin if terminal else None) as keys, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            if keys:
                nursery.start_soon(_wait_for_quit, sys.stdin.fileno(), scope)
            while True:
                status, topics = await _snapshot(client)
                if args.json:
                    out.write(_json_frame(status, topics, args.limit))
                else:
                    width = _width(out)
                    out.write(_CLEAR + render_frame(status, topics, limit=args.limit, width=width))
                    out.write("q or Ctrl-C quits\n")
                out.flush()
                await trio.sleep(args.interval)
    return 0


def _json_frame(status: StatusReply, topics: TopicsReply, limit: int) -> str:
    frame = {
        "supervisor_uptime": status.supervisor_uptime,
        "services": [attrs.asdict(s) for s in status.services],
        "topics": [attrs.asdict(t) for t in busiest(topics, limit)],
    }
    return json.dumps(frame) + "\n"


def _width(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100
