"""systemd integration without a dependency: ``sd_notify`` over ``$NOTIFY_SOCKET``.

With ``Type=notify`` in the unit (see ``examples/systemd/vwos.service``), `tell_systemd` follows the
supervisor through its life (`Supervisor.phase`) and tells systemd:

- ``STATUS=starting N services`` at once;
- ``READY=1`` once the supervisor is ``"up"``: the first start of every service has been decided -- it
  became ready, ended, failed, or waits behind a service whose first start failed -- never while a first
  start is still pending, and never at all if the supervisor is told to stop before that (a service that
  cannot start is the restart policy's to handle: it must not keep systemd from seeing vwos up);
- ``WATCHDOG=1`` at half the unit's ``WatchdogSec=`` (``$WATCHDOG_USEC``), but only while the supervisor is
  healthy (`Supervisor.probe`: ``"up"`` and its event loop answers within a quarter of ``WatchdogSec``).
  A supervisor that hangs, gives up or is stopping sends none, and systemd's watchdog restarts a hung one;
  ``STATUS=`` rides along whenever the running count or restarts change;
- ``STOPPING=1`` with the reason (a signal, ``--duration``, restarts exceeding the intensity) as soon as
  the supervisor starts stopping: from then on systemd's stop timeout applies, not the watchdog.

Outside systemd (no ``NOTIFY_SOCKET``) nothing is sent. ``NOTIFY_SOCKET`` may be an absolute path or
``@name`` for the abstract namespace, as systemd documents.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING

import structlog
import trio

if TYPE_CHECKING:
    from vwos._supervisor import Supervisor

__all__ = ["ENVIRONMENT", "SystemdNotifier", "describe", "tell_systemd"]

#: The variables systemd sets for sd_notify; ``unset_environment=True`` removes them.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_log = structlog.get_logger("vwos.systemd")


class SystemdNotifier:
    """Sends sd_notify messages to the socket named by ``NOTIFY_SOCKET`` (an absolute path, or ``@name``
    for the abstract namespace). ``environ`` defaults to the process environment; with
    ``unset_environment=True`` the variables are then removed from it (as ``sd_notify(1, ...)`` does), so
    that child processes — isolated services — do not inherit the supervisor's notify socket."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2  # systemd's advice: ping at half the timeout
        self._socket: socket.socket | None = None
        if unset_environment and isinstance(env, MutableMapping):
            for name in ENVIRONMENT:
                env.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``notify(READY=1, STATUS="3 services up")``); False if not sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                # Non-blocking: this runs on the event loop, and a datagram socket whose reader has fallen
                # behind (net.unix.max_dgram_qlen, 10 by default) would block it. Better one message lost.
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(message, self._address)
        except OSError:
            return False  # systemd went away or is not reading: nothing to crash over
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(WATCHDOG=1)
        return self.notify(WATCHDOG=1, STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def describe(supervisor: Supervisor) -> str:
    """The ``STATUS=`` line of a supervisor that is up: ``"2 of 3 services running (can: backoff), 4
    restarts"``."""
    rows = supervisor.status()
    running = sum(1 for row in rows if row.state.value == "running")
    text = f"{running} of {len(rows)} service{'s' if len(rows) != 1 else ''} running"
    others = [f"{row.name}: {row.state.value}" for row in rows if row.state.value != "running"]
    if others:
        text += f" ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
    restarts = sum(row.restarts for row in rows)
    if restarts:
        text += f", {restarts} restart{'s' if restarts != 1 else ''}"
    return text


async def tell_systemd(supervisor: Supervisor, notifier: SystemdNotifier) -> None:
    """Tell systemd about ``supervisor`` (see the module's docstring) until it is stopping; then return.

    Start it beside ``supervisor.run``, before or after. Does nothing outside systemd.
    """
    if not notifier.enabled:
        return
    count = len(supervisor.status())
    notifier.status(f"starting {count} service{'s' if count != 1 else ''}")
    await supervisor.wait_phase("up")
    if supervisor.phase == "up":
        status = describe(supervisor)
        notifier.ready(status)
        _log.debug("told systemd: ready", status=status)
        async with trio.open_nursery() as nursery:
            if notifier.watchdog_interval is not None:
                nursery.start_soon(_feed_watchdog, supervisor, notifier, notifier.watchdog_interval, status)
            await supervisor.wait_phase("stopping")
            # No checkpoint between waking up and telling: this task may be cancelled at the next one.
            notifier.stopping(f"stopping: {supervisor.stop_reason}")
            nursery.cancel_scope.cancel()
        return
    await supervisor.wait_phase("stopping")  # told to stop before every service was up: never READY=1
    notifier.stopping(f"stopping: {supervisor.stop_reason}")


async def _feed_watchdog(
    supervisor: Supervisor, notifier: SystemdNotifier, interval: float, status: str
) -> None:
    """``WATCHDOG=1`` every ``interval`` while the supervisor is healthy; ``STATUS=`` when it changed."""
    shown = status
    while True:
        deadline = trio.current_time() + interval
        # Pings at most 1.5 intervals apart (3/4 of WatchdogSec) while the probes are answered.
        healthy = False
        with trio.move_on_after(interval / 2):
            healthy = await supervisor.probe()
        if healthy:
            now = describe(supervisor)
            notifier.watchdog(None if now == shown else now)
            shown = now
        elif supervisor.phase == "up":
            _log.warning("supervisor unresponsive: WATCHDOG=1 withheld", interval=interval)
        await trio.sleep_until(deadline)
