"""The entry point of an isolated service's process: ``python -m vwos._child`` (started by the supervisor).

It reads its `vwos._isolation.ChildPayload` from stdin, sets its memory limit (``RLIMIT_AS``) before the
service's module is imported, connects to the supervisor's bus socket under the service's name, and runs
the service exactly as the supervisor would in-process, with a `ServiceContext` whose ``bus`` is the remote
client. Readiness, heartbeats and how the run ended go to the supervisor as JSON lines on the control
channel (the original stdout); logs go to stderr as JSON lines. See `vwos._isolation` for the protocol.

SIGTERM (or EOF on stdin: the supervisor is gone) cancels the service; its ``finally`` blocks run.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import trio

from bus import RemoteBusClient, connect_unix
from vwos._isolation import (
    ENV_LOG_LEVEL,
    ENV_MEMORY_LIMIT,
    ENV_SYS_PATH,
    EXIT_ERROR,
    EXIT_MEMORY,
    ChildPayload,
    decode_payload,
    describe_failure,
    unwrap,
)

_MEMORY_REPORT = b'{"exit": "memory"}\n'  # written without allocating much, after a MemoryError
#: The longest failure summary sent to the supervisor (it becomes the status table's error).
_MAX_SUMMARY = 1000


def _summary(text: str) -> str:
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 1] + "…"


class _Control:
    """The control channel: small JSON lines written with ``os.write`` (never blocks for long)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **message: Any) -> None:
        self.write(json.dumps(message).encode() + b"\n")

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            pass  # the supervisor is gone; stdin's EOF stops us


class _Started:
    """The ``task_status`` handed to the service: ``started()`` tells the supervisor it is ready.

    The report goes out once what the service queued on the bus before it (declarations, first samples)
    has been written to the socket, so services that start after it find them.
    """

    def __init__(self, control: _Control, client: RemoteBusClient, nursery: trio.Nursery) -> None:
        self._control = control
        self._client = client
        self._nursery = nursery
        self.called = False

    def started(self, value: None = None) -> None:
        if self.called:
            raise RuntimeError("called 'started' twice on the same task status")
        self.called = True
        self._nursery.start_soon(self._report)

    async def _report(self) -> None:
        with trio.move_on_after(5.0):
            await self._client.flush()
        self._control.send(ready=True)


class _Heartbeat:
    def __init__(self) -> None:
        self.beat = trio.Event()

    def __call__(self) -> None:
        self.beat.set()


async def _relay_heartbeats(heartbeat: _Heartbeat, control: _Control, interval: float) -> None:
    while True:
        await heartbeat.beat.wait()
        heartbeat.beat = trio.Event()
        control.send(heartbeat=True)
        await trio.sleep(interval)


async def _watch_stop(scope: trio.CancelScope, stopped: list[signal.Signals | None]) -> None:
    """Cancel the service on SIGTERM (noting the signal in ``stopped``), or when stdin reaches EOF (the
    supervisor is gone; noted as None)."""
    stdin = trio.lowlevel.FdStream(os.dup(0))

    async def on_eof() -> None:
        async with stdin:
            while await stdin.receive_some(4096):
                pass
        stopped.append(None)
        scope.cancel()

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_eof)
            async for signum in signals:
                stopped.append(signal.Signals(signum))
                scope.cancel()
                nursery.cancel_scope.cancel()
                return


async def _run(payload: ChildPayload, control: _Control) -> tuple[str, signal.Signals | None]:
    """Run the service; return how it ended, "normal" or "stopped", and the signal that stopped it (None
    if it was not a signal). Raises what the service raised."""
    from vwos._logging import service_logger
    from vwos._service import ServiceContext

    stopped: list[signal.Signals | None] = []
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as service_scope:
            outer.start_soon(_watch_stop, service_scope, stopped)
            async with connect_unix(payload.socket_path, name=payload.name) as client:
                heartbeat = _Heartbeat()
                ctx = ServiceContext(
                    name=payload.name,
                    bus=client,
                    log=service_logger(payload.name),
                    state_dir=Path(payload.state_dir),
                    heartbeat=heartbeat,
                )
                service = payload.service_class(payload.config)
                async with trio.open_nursery() as nursery:
                    status = _Started(control, client, nursery)
                    if payload.heartbeat_interval is not None:
                        nursery.start_soon(_relay_heartbeats, heartbeat, control, payload.heartbeat_interval)
                    await service.run(ctx, task_status=status)
                    if status.called:
                        with trio.move_on_after(5.0):
                            await client.flush()
                    nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    return ("stopped", stopped[0]) if stopped else ("normal", None)


def _has(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_has(e, kind) for e in exc.exceptions)
    return False


def main() -> int:
    # The control channel is the original stdout; fd 1 becomes stderr, so print() cannot corrupt it.
    control = _Control(os.dup(1))
    os.dup2(2, 1)
    limit = os.environ.get(ENV_MEMORY_LIMIT)
    if limit:
        size = int(limit) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    paths = os.environ.get(ENV_SYS_PATH)
    if paths:
        sys.path[:] = json.loads(paths)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us, with SIGTERM

    from vwos._logging import configure_logging
    from vwos._runtime import tune_gc

    tune_gc()

    import structlog

    # Exceptions are rendered here, as Python's own traceback text (configure_logging's format_exc_info),
    # so the supervisor's log shows them whole: a traceback cannot cross the process boundary as an object.
    configure_logging(format="json", level=os.environ.get(ENV_LOG_LEVEL, "debug"), stream=sys.stderr)
    stdin: BinaryIO = sys.stdin.buffer
    try:
        payload = decode_payload(stdin.read)
        how, signum = trio.run(_run, payload, control)
    except BaseException as exc:
        if _has(exc, MemoryError):
            control.write(_MEMORY_REPORT)
            return EXIT_MEMORY
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            raise
        control.send(exit="error", error=_summary(describe_failure(exc)))
        # The service's own exception, not the nursery's group of one around it.
        structlog.get_logger("vwos.child").error("service failed", exc_info=unwrap(exc))
        return EXIT_ERROR
    if signum is None:
        control.send(exit=how)
    else:
        control.send(exit=how, signal=signum.name)  # stopped by a signal: say which
    if how == "stopped" and signum is None:
        _stop_own_group()
    return 0


def _stop_own_group(grace: float = 2.0) -> None:
    """The supervisor is gone (stdin's EOF), so nobody else will stop what the service started in our
    process group: SIGTERM to it, SIGKILL (ourselves included: we are done) to what is left after
    ``grace`` seconds. What left the group is for the service manager (systemd kills the whole cgroup)."""
    group = os.getpgrp()
    if group != os.getpid():
        return  # not started as the supervisor starts us: the group is not ours
    from vwos._proctree import LiveProcesses

    processes = LiveProcesses()

    def others() -> bool:
        me = os.getpid()
        return any(p.pgid == group and p.pid != me and not p.zombie for p in processes.snapshot().values())

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while others() and time.monotonic() < deadline:
        time.sleep(0.02)
    if others():
        sys.stderr.flush()
        os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
