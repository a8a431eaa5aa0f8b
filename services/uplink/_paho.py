"""The paho-mqtt driver: paho's client run on its external-loop hooks by trio tasks, one connection at a time.

`_Attempt` runs paho's blocking ``reconnect()`` (lookup, TCP, TLS, CONNECT queued) in a worker thread and
closes the socket itself if trio stops waiting; `_Link` is one connection: paho's ``on_*`` hooks, the
publishes awaiting PUBACK, and its loop driver (`_Link.drive`: read, write and keepalive tasks on the
non-blocking socket, until paho closes it). Protocol logic is paho's; policy (timeouts, wording, reconnects)
is the transport's (``_mqtt.py``). paho is imported only for types here: it loads when a transport connects.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from services.uplink._mqtt_errors import _clean, _error_levels

if TYPE_CHECKING:
    from paho.mqtt import client as paho
    from paho.mqtt.client import SocketLike
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__: list[str] = []


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails (paho would drop it unclosed)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _ErrorLog:
    """paho's hook ``on_log``, keeping its last error line: paho logs (rather than raises) socket errors."""

    last_error: str | None

    def on_log(self, client: paho.Client, userdata: Any, level: int, message: str) -> None:  # either thread
        if level in _error_levels():
            self.last_error = _clean(message)


class _Attempt(_ErrorLog):
    """paho's blocking ``reconnect()`` in a worker thread, abandoned safely if trio stops waiting for it."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.last_error = None
        self._lock = threading.Lock()
        self._finished = False
        self._abandoned = False
        client.on_log = self.on_log  # paho logs (rather than raises) a failed write of CONNECT

    def run(self) -> MQTTErrorCode:  # in the worker thread
        try:
            return self.client.reconnect()
        finally:
            with self._lock:
                self._finished = True
                if self._abandoned:
                    self._close()

    def abandon(self) -> None:  # in trio, when the wait was cancelled
        with self._lock:
            self._abandoned = True
            if self._finished:
                self._close()

    def _close(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            sock.close()


class _Pending:
    """A publish waiting for its PUBACK."""

    __slots__ = ("done", "error", "reason")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reason: ReasonCode | None = None
        self.error: str | None = None


class _Link(_ErrorLog):
    """One connection: its paho client and socket, the driver's state, the publishes awaiting PUBACK.

    paho calls the ``on_*`` methods from ``loop_read``/``loop_write``/``loop_misc``/``publish``, i.e. from
    trio tasks, on trio's thread (they are installed only after the connect thread is done).
    """

    def __init__(self, client: paho.Client, sock: SocketLike) -> None:
        self.client = client
        self.socket = sock
        self.scope = trio.CancelScope()  # the driver's; cancelled when paho closes the socket
        self.connack: ReasonCode | None = None
        self.settled = trio.Event()  # CONNACK arrived, or the link ended
        self.ended = trio.Event()  # the driver has finished
        self.alive = True
        self.reason: str | None = None  # why the link ended
        self.last_error = None  # paho's last error line (it logs socket errors, not raises them)
        self.pending: dict[int, _Pending] = {}
        self.write_wanted = trio.Event()
        self.driving = False  # the driver has started (and will call finish when it ends)
        #: Told ``(link, reason)`` when a link that was up ends (the transport logs it).
        self.on_lost: Callable[[_Link, str], None] | None = None
        client.on_connect = self.on_connect
        client.on_publish = self.on_publish
        client.on_disconnect = self.on_disconnect
        client.on_socket_close = self.on_socket_close
        client.on_socket_register_write = self.on_socket_register_write
        client.on_log = self.on_log

    def detach(self) -> None:
        """Remove every hook, so that paho (or its finaliser) calls nothing of ours again."""
        client = self.client
        client.on_connect = None
        client.on_publish = None
        client.on_disconnect = None
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_log = None

    @property
    def connected(self) -> bool:
        return self.alive and self.connack is not None and not self.connack.is_failure

    def end(self, reason: str) -> None:
        """Mark the link ended (first reason wins) and stop the driver."""
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    # the loop driver

    async def drive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background task of one connection: reads, writes and keepalive, until the socket closes."""
        self.driving = True
        try:
            with self.scope:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read)
                    nursery.start_soon(self._write)
                    nursery.start_soon(self._misc)
        finally:
            self.finish()

    def finish(self) -> None:
        """The end of a link: fail the publishes awaiting PUBACK, close the socket. Idempotent."""
        link = self
        if link.ended.is_set():
            return
        was_up = link.connack is not None and not link.connack.is_failure
        link.alive = False
        reason = link.reason or "connection closed"
        for pending in link.pending.values():
            pending.error = reason
            pending.done.set()
        link.pending.clear()
        link.detach()
        sock = link.client.socket()
        if sock is not None:  # stopped by us, not by paho: it still holds an open socket
            trio.lowlevel.notify_closing(sock)
            sock.close()
        link.settled.set()
        link.ended.set()
        if was_up and self.on_lost is not None:
            self.on_lost(self, reason)

    async def _read(self) -> None:
        link = self
        client, sock = link.client, link.socket
        # TLS may hold decrypted bytes that the kernel no longer signals as readable
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        with contextlib.suppress(trio.ClosedResourceError):
            while client.socket() is sock:
                await trio.lowlevel.wait_readable(sock)
                client.loop_read()
                while tls is not None and client.socket() is sock and tls.pending():
                    client.loop_read()

    async def _write(self) -> None:
        link = self
        client, sock = link.client, link.socket
        with contextlib.suppress(trio.ClosedResourceError):
            while client.socket() is sock:
                if not client.want_write():
                    link.write_wanted = trio.Event()
                    await link.write_wanted.wait()
                    continue
                await trio.lowlevel.wait_writable(sock)
                client.loop_write()

    async def _misc(self) -> None:
        link = self
        client, sock = link.client, link.socket
        while client.socket() is sock:
            await trio.sleep(1.0)
            client.loop_misc()

    async def stop(self) -> None:
        """Stop the driver and wait for it (it closes the socket and fails pending publishes)."""
        with trio.CancelScope(shield=True):
            self.end("the connection was closed")
            if self.driving:
                await self.ended.wait()
            else:  # the driver never ran
                self.finish()

    # paho's hooks

    def on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        self.connack = reason
        self.settled.set()

    def on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        pending = self.pending.pop(mid, None)
        if pending is not None:
            pending.reason = reason
            pending.done.set()

    def on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self.end(f"the broker disconnected: {reason}")
        elif reason == "Keep alive timeout":
            self.end("no answer from the broker within the keepalive time")
        elif self.last_error is not None:
            self.end(self.last_error)
        else:
            self.end("connection closed by the broker")

    def on_socket_close(self, client: paho.Client, userdata: Any, sock: SocketLike) -> None:
        trio.lowlevel.notify_closing(sock)  # wakes a task waiting on it (with ClosedResourceError)
        self.alive = False
        self.scope.cancel()

    def on_socket_register_write(self, client: paho.Client, userdata: Any, sock: SocketLike) -> None:
        self.write_wanted.set()
