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

Everything the child starts belongs to its *run* (`vwos._proctree`): the child leads a session and process
group of its own, every process of the run inherits its token (``VWOS_RUN``), and while runs exist the
supervisor is a child subreaper, so orphans come to it. `IsolatedRuns` tells the bus socket's authorize
which run a peer belongs to, and finds what is left of a run. A run is stopped as a whole (`_stop_tree`):
SIGTERM to the child (it cancels the service, whose ``finally`` blocks run), then to the rest of the run,
SIGKILL to all after the service's ``stop_timeout``; also when the child ended by itself. Unlike an
in-process task, nothing of an isolated service is ever left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import signal
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
import trio

from bus import Permissions
from vwos._logging import LEVELS, configured_level, service_logger
from vwos._proctree import ENV_RUN, SUBREAPER, LiveProcesses, Processes, Verdict, members, owner, reapable

if TYPE_CHECKING:
    from bus import PeerCredentials  # for annotations only: a service's process never loads the broker
    from vwos._spec import ServiceSpec

__all__ = [
    "EXIT_MEMORY",
    "ChildPayload",
    "IsolatedRuns",
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
#: The longest line kept from the child's stderr (a log line with its traceback) and from its control
#: channel; the rest of a longer line is dropped (and counted), so no output can grow our memory unbounded.
MAX_LOG_LINE: Final = 256 * 1024
MAX_CONTROL_LINE: Final = 64 * 1024
#: How much of a stderr line is kept for the exit reason.
_TAIL_LINE = 1000
#: How often a run's sweep reaps the zombies of its orphans (and notes its processes).
_SWEEP_INTERVAL = 5.0
#: How soon the stop sequence first looks whether what it signalled has gone (then less and less often).
_POLL = 0.01


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
    try:
        message = str(exc)
    except Exception as failed:  # a service's exception whose str() raises is still its failure
        message = f"<str() of the exception failed: {type(failed).__name__}>"
    return f"{type(exc).__name__}: {message}"[:1000]


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


# -- the runs and their processes ---------------------------------------------------------------------------


@attrs.define(eq=False)
class Run:
    """One incarnation of an isolated service: its process and the token every process of it inherits."""

    name: str
    pid: int
    token: str
    permissions: Permissions
    #: False once its process has ended: what is left of it gets nothing on the bus and is being stopped.
    alive: bool = True


class IsolatedRuns:
    """The supervisor's isolated runs: which of them a process belongs to, and what is left of each.

    `authorize` is the bus socket's rule for peers (see ``docs/supervisor.md``, "Permissions"):

    - a process of a live run (the service's own process, anything in its session or process group,
      anything descending from it, an orphan of it reparented to the supervisor that carries its token)
      gets exactly that service's permissions, under the service's name only;
    - a process that is related but not provably of a live run (one descending from the supervisor that
      no run claims, a process of a run that has ended, one carrying a run token from elsewhere) gets
      nothing;
    - a process that cannot be seen gets nothing if it has the supervisor's uid (ours are always visible:
      it is gone, or in another pid namespace);
    - anyone else (a stranger: the CLI, another program; another user's process hidden by ``hidepid``) is
      handed to ``fallback``, the configured authorize, and refused without one.
    """

    def __init__(self, processes: Processes | None = None, *, me: Callable[[], int] = os.getpid) -> None:
        self._processes: Processes = processes if processes is not None else LiveProcesses()
        self._me = me
        self._runs: dict[int, Run] = {}
        #: Processes seen alive as members of a run: their zombies are ours to reap, once reparented to us.
        self._known: set[int] = set()

    def start(self, name: str, pid: int, token: str, permissions: Permissions) -> Run:
        """Note a run whose process has just been started (before it can connect)."""
        run = self._runs[pid] = Run(name, pid, token, permissions)
        return run

    def end(self, run: Run) -> None:
        """Its process has ended (or is being stopped): nothing of it is authorized any more."""
        run.alive = False

    def forget(self, run: Run) -> None:
        """All of it has been stopped and reaped."""
        if self._runs.get(run.pid) is run:
            del self._runs[run.pid]

    def owner(self, pid: int) -> Run | Verdict:
        """The run the process ``pid`` belongs to (alive or ended), or a `Verdict` (see `owner`)."""
        tokens = {run.pid: run.token for run in self._runs.values()}
        found = owner(pid, tokens, self._me(), self._processes)
        return found if isinstance(found, Verdict) else self._runs[found]

    def authorize(
        self,
        peer: PeerCredentials,
        client_name: str,
        fallback: Callable[[PeerCredentials, str], Permissions | None] | None,
    ) -> Permissions | None:
        """The permissions of a peer of the bus socket, or None to refuse it (see the class docstring)."""
        found = self.owner(peer.pid)
        if isinstance(found, Run):
            if found.alive and client_name == found.name:
                return found.permissions
            why = "its service has ended" if not found.alive else f"it may connect as {found.name!r} only"
            _log.warning(
                "refused a process of an isolated service",
                service=found.name,
                pid=peer.pid,
                client=client_name,
                why=why,
            )
            return None
        if found is Verdict.REFUSE or (found is Verdict.UNSEEN and peer.uid == os.getuid()):
            # (Our own uid's processes are always visible to us: an unseen one is gone, or in another pid
            # namespace, and whoever holds its connection now cannot be told.)
            why = "started under the supervisor, no isolated service's" if found is Verdict.REFUSE else "gone"
            _log.warning(
                "refused a peer that cannot be told from an isolated service's process",
                pid=peer.pid,
                uid=peer.uid,
                client=client_name,
                why=why,
            )
            return None
        return fallback(peer, client_name) if fallback is not None else None

    def members(self, run: Run) -> set[int]:
        """The live processes of ``run`` now, its own process included while it lives."""
        table = self._processes.snapshot()
        found = members(
            table, run.pid, run.token, self._me(), self._processes.token, adoptees_only=SUBREAPER.active
        )
        self._known |= found - {run.pid}
        return found

    def send_signal(self, run: Run, pids: set[int], signum: signal.Signals) -> None:
        """Send ``signum`` to ``pids`` of ``run``: to its process group at once (a fork in it cannot slip
        through), and to each of the others."""
        in_group = False
        for pid in pids:
            proc = self._processes.stat(pid)
            in_group = in_group or (proc is not None and proc.pgid == run.pid)
        if in_group or run.pid in pids:  # the group exists, so its id cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signum)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def kill_all(self) -> None:
        """SIGKILL every live run's whole process tree now (for an exit that cannot wait)."""
        for run in list(self._runs.values()):
            self.send_signal(run, self.members(run), signal.SIGKILL)

    def reap(self) -> int:
        """Reap the zombies of orphans reparented to the supervisor; returns how many."""
        table = self._processes.snapshot()
        self._known &= table.keys()  # a pid gone from the table may be reused: forget it
        reaped = 0
        for pid in reapable(table, self._me(), self._known, set(self._runs)):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
            except ChildProcessError:
                pass
            self._known.discard(pid)
        return reaped


async def _stop_tree(
    process: trio.Process, run: Run, runs: IsolatedRuns, stop_timeout: float, log: Any
) -> None:
    """Stop what is left of ``run`` and reap it; returns at once if nothing is left.

    The service's process first, with SIGTERM (its ``finally`` blocks may stop what it started); once it has
    ended, SIGTERM to every other process of the run; SIGKILL to all that are still there when
    ``stop_timeout`` has passed since the first SIGTERM (or since the service's process ended by itself).
    """
    deadline = trio.current_time() + stop_timeout
    if process.returncode is None:
        with trio.move_on_at(deadline):
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # pragma: no cover -- gone already
                pass
            await process.wait()
    if process.returncode is None:
        log.error("service process did not stop within its stop timeout; killed", stop_timeout=stop_timeout)
        await _kill_all(process, run, runs)
    runs.end(run)
    left = runs.members(run)
    if left:
        log.info("stopping the processes the service left behind", processes=len(left))
        runs.send_signal(run, left, signal.SIGTERM)
        poll = _POLL
        while left and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await trio.sleep(poll)
            poll = min(poll * 2, 0.25)  # a scan of /proc costs ~0.1 ms a process: do not spin on it
            runs.reap()
            left = runs.members(run)
        if left:
            log.error(
                "processes the service left behind did not stop within its stop timeout; killed",
                processes=len(left),
                stop_timeout=stop_timeout,
            )
            await _kill_all(process, run, runs)
    runs.reap()


async def _kill_all(process: trio.Process, run: Run, runs: IsolatedRuns) -> None:
    """SIGKILL every process of ``run`` until none is left (a process forked meanwhile is found next round),
    then wait for its own process."""
    for _ in range(200):
        left = runs.members(run)
        if process.returncode is None:
            left.add(run.pid)
        if not left:
            break
        runs.send_signal(run, left, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await trio.sleep(_POLL / 4)
        runs.reap()
    else:  # pragma: no cover -- a fork bomb faster than we can kill
        _log.error("could not kill every process of an isolated service", service=run.name)
    with trio.CancelScope(shield=True):
        await process.wait()


async def _sweep(runs: IsolatedRuns, run: Run) -> None:
    """While a run lives: note its processes and reap the zombies of its orphans, now and then."""
    while True:
        await trio.sleep(_SWEEP_INTERVAL)
        runs.members(run)
        runs.reap()


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
    runs: IsolatedRuns,
    done: trio.CancelScope,
    task_status: trio.TaskStatus[None],
) -> None:
    """Run ``spec``'s service in a child process, under ``nursery.start`` like an in-process service.

    Calls ``task_status.started()`` once the service is ready (or has run to completion without saying
    so), and ``heartbeat()`` for each heartbeat the child relays; the run is in ``runs`` from its start until
    all of it has been reaped (so the socket's authorize can tell its processes). Returns when the service
    returned (after cancelling ``done``); raises `IsolatedServiceFailed` when the process ended any other
    way. Either way, and when cancelled, stops what is left of its process tree (see `_stop_tree`).
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
    token = secrets.token_hex(16)
    env = dict(os.environ)
    paths = [p for p in sys.path if isinstance(p, str)]
    env[ENV_SYS_PATH] = json.dumps(paths)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env[ENV_LOG_LEVEL] = configured_level()
    env[ENV_RUN] = token
    if spec.memory_limit_mb is not None:
        env[ENV_MEMORY_LIMIT] = str(spec.memory_limit_mb)
    else:
        env.pop(ENV_MEMORY_LIMIT, None)
    SUBREAPER.acquire()  # orphans of its processes come to us, not to init
    try:
        await _run_process(spec, data, env, token, runs, heartbeat, done, task_status)
    finally:
        SUBREAPER.release()


async def _run_process(
    spec: ServiceSpec,
    data: bytes,
    env: dict[str, str],
    token: str,
    runs: IsolatedRuns,
    heartbeat: Callable[[], None],
    done: trio.CancelScope,
    task_status: trio.TaskStatus[None],
) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vwos._child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # Its own session and process group: a terminal's Ctrl-C reaches the supervisor only (which then
        # stops the children in order), and its processes can be told and signalled as one.
        start_new_session=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = process.stderr
    pid = process.pid
    run = runs.start(spec.name, pid, token, spec.permissions)
    log = _log.bind(service=spec.name, pid=pid)
    log.info("service process started")
    report = _Report()
    ready = False
    stderr_done = trio.Event()
    relay_scope = trio.CancelScope(shield=True)  # relays what the tree says while it is being stopped

    async def relay() -> None:
        with relay_scope:
            await _relay_stderr(stderr, spec.name, pid, report, stderr_done)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        nursery.start_soon(_sweep, runs, run)
        try:
            try:
                await process.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it died at once; its exit status says why
            control = _Lines(process.stdout, MAX_CONTROL_LINE)
            while (message := await _next_message(control)) is not None:
                if message.get("heartbeat"):
                    heartbeat()
                elif message.get("ready") and not ready:
                    ready = True
                    task_status.started()
                elif "exit" in message:
                    report.exit = str(message["exit"])
                    error = message.get("error")
                    report.error = None if error is None else str(error)[:_TAIL_LINE]
                    signame = message.get("signal")
                    report.stop_signal = None if signame is None else str(signame)[:_TAIL_LINE]
            await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                runs.end(run)
                await _stop_tree(process, run, runs, spec.stop_timeout, log)
                with trio.move_on_after(1.0):  # the last lines, once nobody holds stderr open
                    await stderr_done.wait()
                relay_scope.cancel()
                with trio.move_on_after(1.0):
                    await process.stdin.aclose()
                runs.forget(run)
                nursery.cancel_scope.cancel()
    returncode = process.returncode
    assert returncode is not None
    log.info("service process ended", returncode=returncode)
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


class _Lines:
    """Lines from a byte stream (no async generator: those outlive a cancellation untidily).

    A line longer than ``max_line`` bytes is cut there: the rest of it, up to its newline, is dropped and
    counted, so a stream without newlines costs at most ``max_line`` bytes of memory and linear time.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._buffer = bytearray()
        self._dropped = 0  # bytes dropped from the line being read
        self._pending: deque[tuple[bytes, int]] = deque()
        self._eof = False

    async def next(self) -> tuple[bytes, int] | None:
        """The next line without its newline, and how many bytes of it were dropped; None at the end."""
        while not self._pending:
            if self._eof:
                return None
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self._eof = True
                if self._buffer or self._dropped:
                    self._end_line()
                continue
            start = 0
            while (newline := chunk.find(b"\n", start)) >= 0:
                self._add(chunk, start, newline)
                self._end_line()
                start = newline + 1
            self._add(chunk, start, len(chunk))
        return self._pending.popleft()

    def _add(self, chunk: bytes | bytearray, start: int, end: int) -> None:
        room = self._max_line - len(self._buffer)
        keep = min(room, end - start)
        self._buffer += chunk[start : start + keep]
        self._dropped += end - start - keep

    def _end_line(self) -> None:
        self._pending.append((bytes(self._buffer), self._dropped))
        self._buffer.clear()
        self._dropped = 0


async def _next_message(lines: _Lines) -> dict[str, Any] | None:
    """The next control message; None at the end of the stream."""
    while True:
        line = await lines.next()
        if line is None:
            return None
        if line[1]:
            continue  # cut: not a message of ours
        try:
            message = json.loads(line[0])
        except ValueError:
            continue
        if isinstance(message, dict):
            return message


def _format_exception(value: Any) -> str:
    """A relayed record's ``exception`` as text: the child renders tracebacks as Python's text already; a
    list in structlog's ``dict_tracebacks`` shape (a service that put one there) is laid out the same way."""
    if not isinstance(value, list):
        return str(value)
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        out.append("Traceback (most recent call last):")
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
        lines = _Lines(stream, MAX_LOG_LINE)
        while (next_line := await lines.next()) is not None:
            raw, dropped = next_line
            line = raw.decode("utf-8", "replace").rstrip()
            if not line and not dropped:
                continue
            record: Any = None
            if not dropped:
                try:
                    record = json.loads(line)
                except ValueError:
                    pass
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
            elif dropped:
                report.stderr_tail.append(line[:_TAIL_LINE])
                logger.warning("stderr", line=line, dropped_bytes=dropped)
            else:
                report.stderr_tail.append(line[:_TAIL_LINE])
                logger.warning("stderr", line=line)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.set()
