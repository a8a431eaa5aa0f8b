"""Isolated services: a service run in a child process of its own, joined to the bus over a Unix socket.

The supervisor's side. `run_isolated` is started with ``nursery.start`` exactly where an in-process service's
``run`` would be, so readiness, start timeout, watchdog, restart policy and ordering are the supervisor's
unchanged logic. The child is ``python -m vwos._child`` (see `vwos._child`).

Parent and child talk over three pipes, besides the bus socket:

- **stdin** carries the payload (a length-prefixed pickle of `ChildPayload`: the service class, its config,
  the socket path ...) and then stays open: its EOF tells the child that the supervisor is gone.
- **stdout** is the control channel, one JSON object per line: ``{"ready": true}``, ``{"heartbeat": true}``
  and, last, ``{"exit": "normal" | "error" | "memory" | "stopped", "error": "...", "signal": "SIGTERM"}``
  (``error`` with ``"error"``; ``signal``, the signal's name, with ``"stopped"`` when a signal stopped it).
  The child points its own fd 1 at stderr, so a service's ``print`` cannot corrupt it.
- **stderr** carries the child's log: JSON lines (structlog), relayed into the supervisor's log with the
  service's name and the child's pid; any other line (a traceback from a crash) is relayed as text and
  the last of them is quoted in the exit reason.

Readiness and heartbeats use the control channel rather than bus names: it needs no extra grants in the
service's permission set (the service gets exactly its ``permissions`` on the bus), nobody else on the bus
can forge them, and it works before the child has connected to the bus and after it lost the connection.

The child is stopped with SIGTERM (it cancels the service, whose ``finally`` blocks run) and, if still
there after the service's ``stop_timeout``, with SIGKILL: unlike an in-process task, an isolated service is
never left behind.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from vwos._logging import LEVELS, configured_level, service_logger

if TYPE_CHECKING:
    from vwos._supervisor import ServiceSpec

__all__ = [
    "EXIT_MEMORY",
    "ChildPayload",
    "IsolatedServiceFailed",
    "run_isolated",
]

_log = structlog.get_logger("vwos.supervisor")

#: The exit status of a child whose service hit its memory limit (a MemoryError under ``RLIMIT_AS``).
EXIT_MEMORY = 86
#: The exit status of a child whose service raised.
EXIT_ERROR = 1
#: Environment variables the child reads before anything else.
ENV_MEMORY_LIMIT = "VWOS_CHILD_MEMORY_LIMIT_MB"
ENV_SYS_PATH = "VWOS_CHILD_SYS_PATH"
#: The supervisor's log level: the child drops below it itself instead of sending lines to be dropped.
ENV_LOG_LEVEL = "VWOS_CHILD_LOG_LEVEL"

_LENGTH = struct.Struct("!Q")
_STDERR_TAIL = 20


def unwrap(exc: BaseException) -> BaseException:
    """The exception inside exception groups of one member each (what a nursery wraps one error in)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe_failure(exc: BaseException) -> str:
    """How a service's failure is reported: ``Type: message``, or an isolated service's own reason."""
    exc = unwrap(exc)
    if isinstance(exc, IsolatedServiceFailed):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


class IsolatedServiceFailed(Exception):
    """An isolated service's process ended abnormally; ``reason`` (the status table's error) says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ChildPayload:
    """What the child needs to run the service: sent pickled over its stdin."""

    name: str
    service_class: type[Any]
    config: Any
    socket_path: str
    state_dir: str
    #: Seconds between heartbeats relayed to the supervisor (None: the service has no watchdog).
    heartbeat_interval: float | None


def encode_payload(payload: ChildPayload) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def decode_payload(read: Callable[[int], bytes]) -> ChildPayload:
    """Read a payload with ``read(n)`` (a blocking read of exactly ``n`` bytes, or fewer at EOF)."""
    head = read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise EOFError("no payload on stdin")
    (size,) = _LENGTH.unpack(head)
    data = read(size)
    if len(data) != size:
        raise EOFError("truncated payload on stdin")
    payload = pickle.loads(data)
    if not isinstance(payload, ChildPayload):
        raise TypeError(f"expected a ChildPayload, got {type(payload).__name__}")
    return payload


def check_picklable(spec: ServiceSpec) -> None:
    """Raise ValueError unless an isolated service's class and config can be sent to a child process."""
    try:
        pickle.dumps((spec.service_class, spec.config), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ValueError(
            f"{spec.name}: an isolated service's class and config must be picklable (the class importable "
            f"by its module and name): {type(exc).__name__}: {exc}"
        ) from None


def heartbeat_interval(watchdog: float | None) -> float | None:
    """How often the child relays heartbeats: often enough that the watchdog sees them in good time."""
    if watchdog is None:
        return None
    return min(0.5, watchdog / 5)


# -- running one incarnation --------------------------------------------------------------------------------


@attrs.define
class _Report:
    """What the child said about how it ended, and the tail of its stderr that was not a log line."""

    exit: str | None = None
    error: str | None = None
    #: The name of the signal that stopped the service (with ``exit`` "stopped").
    stop_signal: str | None = None
    stderr_tail: deque[str] = attrs.Factory(lambda: deque(maxlen=_STDERR_TAIL))


async def run_isolated(
    spec: ServiceSpec,
    *,
    socket_path: Path,
    state_dir: Path,
    heartbeat: Callable[[], None],
    on_spawn: Callable[[int], None],
    on_reaped: Callable[[int], None],
    done: trio.CancelScope,
    task_status: trio.TaskStatus[None],
) -> None:
    """Run ``spec``'s service in a child process, under ``nursery.start`` like an in-process service.

    Calls ``task_status.started()`` once the service is ready (or has run to completion without saying
    so), ``heartbeat()`` for each heartbeat the child relays, ``on_spawn(pid)`` once the process exists (so
    the socket's ``authorize`` can recognise it) and ``on_reaped(pid)`` once it has been reaped. Returns
    when the service returned (after cancelling ``done``); raises `IsolatedServiceFailed` when the process
    ended any other way. When cancelled, stops the process: SIGTERM, then SIGKILL after the stop timeout.
    """
    payload = ChildPayload(
        name=spec.name,
        service_class=spec.service_class,
        config=spec.config,
        socket_path=str(socket_path),
        state_dir=str(state_dir),
        heartbeat_interval=heartbeat_interval(spec.watchdog),
    )
    data = encode_payload(payload)
    env = dict(os.environ)
    paths = [p for p in sys.path if isinstance(p, str)]
    env[ENV_SYS_PATH] = json.dumps(paths)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env[ENV_LOG_LEVEL] = configured_level()
    if spec.memory_limit_mb is not None:
        env[ENV_MEMORY_LIMIT] = str(spec.memory_limit_mb)
    else:
        env.pop(ENV_MEMORY_LIMIT, None)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vwos._child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor only; it stops the children
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    pid = process.pid
    on_spawn(pid)
    _log.info("service process started", service=spec.name, pid=pid)
    report = _Report()
    ready = False
    try:
        async with trio.open_nursery() as nursery:
            stderr_done = trio.Event()
            nursery.start_soon(_relay_stderr, process.stderr, spec.name, pid, report, stderr_done)
            try:
                await process.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it died at once; its exit status says why
            control = _Lines(process.stdout)
            while (message := await _next_message(control)) is not None:
                if message.get("heartbeat"):
                    heartbeat()
                elif message.get("ready") and not ready:
                    ready = True
                    task_status.started()
                elif "exit" in message:
                    report.exit = str(message["exit"])
                    error = message.get("error")
                    report.error = None if error is None else str(error)
                    signame = message.get("signal")
                    report.stop_signal = None if signame is None else str(signame)
            await process.wait()
            with trio.move_on_after(1.0):  # a grandchild may hold stderr open: do not wait for ever
                await stderr_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                await _terminate(process, spec.name, spec.stop_timeout)
            with trio.move_on_after(1.0):
                await process.stdin.aclose()
            on_reaped(pid)
    returncode = process.returncode
    assert returncode is not None
    _log.info("service process ended", service=spec.name, pid=pid, returncode=returncode)
    if returncode == 0 and report.exit in (None, "normal"):
        if not ready:
            task_status.started()  # ran to completion without saying it was ready
        done.cancel()
        return
    raise IsolatedServiceFailed(_exit_reason(returncode, report, spec.memory_limit_mb))


def _exit_reason(returncode: int, report: _Report, memory_limit_mb: int | None) -> str:
    if report.exit == "memory" or returncode == EXIT_MEMORY:
        limit = f"{memory_limit_mb} MiB" if memory_limit_mb is not None else "the process's"
        return f"memory limit of {limit} reached"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    if report.exit == "error" and report.error:
        return report.error
    if report.exit == "stopped":
        # A clean stop the supervisor did not ask for (when it did, it reports the service stopped and
        # drops this reason): say what stopped it.
        by = f" ({report.stop_signal})" if report.stop_signal else ""
        return f"stopped from outside the supervisor{by}"
    last = report.stderr_tail[-1] if report.stderr_tail else None
    reason = f"exited with code {returncode}"
    return f"{reason}: {last}" if last else reason


async def _terminate(process: trio.Process, name: str, stop_timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``stop_timeout``; returns once the process is reaped."""
    with trio.move_on_after(stop_timeout):
        try:
            process.terminate()
        except ProcessLookupError:  # pragma: no cover -- gone already
            pass
        await process.wait()
        return
    _log.error("service process did not stop within its stop timeout; killed", service=name, pid=process.pid)
    try:
        process.kill()
    except ProcessLookupError:  # pragma: no cover
        pass
    await process.wait()


class _Lines:
    """Lines from a byte stream (no async generator: those outlive a cancellation untidily)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._pending: deque[bytes] = deque()
        self._eof = False

    async def next(self) -> bytes | None:
        """The next line, without its newline; None at the end of the stream."""
        while not self._pending:
            if self._eof:
                return None
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self._eof = True
                if self._buffer:
                    self._pending.append(self._buffer)
                continue
            *complete, self._buffer = (self._buffer + chunk).split(b"\n")
            self._pending.extend(complete)
        return self._pending.popleft()


async def _next_message(lines: _Lines) -> dict[str, Any] | None:
    """The next control message; None at the end of the stream."""
    while True:
        line = await lines.next()
        if line is None:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            return message


def _format_exception(value: Any) -> str:
    """structlog's ``dict_tracebacks`` (a list of {exc_type, exc_value, frames}) as traceback-like text."""
    if not isinstance(value, list):
        return str(value)
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        for frame in entry.get("frames", ()):
            if isinstance(frame, dict):
                out.append(
                    f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}'
                )
        out.append(f"{entry.get('exc_type')}: {entry.get('exc_value')}")
    return "\n".join(out)


async def _relay_stderr(
    stream: trio.abc.ReceiveStream, name: str, pid: int, report: _Report, done: trio.Event
) -> None:
    """Relay the child's log lines into the supervisor's log; keep the tail of anything else."""
    logger = service_logger(name).bind(pid=pid)
    try:
        lines = _Lines(stream)
        while (raw := await lines.next()) is not None:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                event = record.pop("event")
                level = str(record.pop("level", "info"))
                record.pop("timestamp", None)
                record.pop("service", None)
                record.pop("pid", None)
                if "exception" in record:
                    record["exception"] = _format_exception(record["exception"])
                method = getattr(logger, level if level in LEVELS else "info")
                try:
                    method(event, **{str(k): v for k, v in record.items()})
                except Exception:  # a record our renderer cannot show: relay it as text
                    logger.warning("stderr", line=line)
            else:
                report.stderr_tail.append(line)
                logger.warning("stderr", line=line)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.set()
