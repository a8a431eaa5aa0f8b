"""The ``mqtt`` transport: each batch is one MQTT PUBLISH at QoS 1, acknowledged by the broker's PUBACK.

paho-mqtt does the protocol; trio does the waiting. paho runs with its *external loop* hooks, never with its
own network thread:

Connecting (`MqttTransport.connect`)
    A fresh paho ``Client`` per connection attempt (so no state of a dead connection -- queued or
    half-acknowledged messages -- leaks into the next one: the outbox, not paho, is what re-sends). paho's
    ``reconnect()`` does the blocking part -- name lookup, TCP connect, TLS handshake, queueing CONNECT --
    and runs once per attempt in a worker thread (``trio.to_thread.run_sync(abandon_on_cancel=True)``),
    bounded by ``connect_timeout``. That is the only thread: nothing per message. If the attempt is
    cancelled or times out, the thread is abandoned and closes its own socket when it finishes. Then the
    loop driver starts and `connect` waits (still within ``connect_timeout``) for the CONNACK: a refusal
    (bad user name or password, not authorised), a failed TLS handshake, a refused or timed-out TCP connect
    or a connection lost before the CONNACK all raise `TransportError` with the reason.

The loop driver (one background task per connection)
    `MqttTransport` is an async context manager that owns a nursery (``async with MqttTransport(...) as
    transport``); `connect` starts the driver in it with ``nursery.start``. The driver runs three small
    loops in a nursery of its own, all on the non-blocking socket paho created:

    * read: ``trio.lowlevel.wait_readable`` then ``loop_read()`` (and again while the TLS layer holds
      decrypted bytes, ``SSLSocket.pending()``, which the kernel cannot signal);
    * write: sleeps on an event that paho's ``on_socket_register_write`` sets when a packet is queued (a
      publish, a PINGREQ, DISCONNECT), then ``wait_writable`` and ``loop_write()`` until ``want_write()``
      is false;
    * misc: ``loop_misc()`` once a second (keepalive PINGREQ, and the keepalive timeout).

    Whenever paho closes the socket (read or write error, the broker hung up, keepalive timeout, our
    DISCONNECT sent) its ``on_socket_close`` hook calls ``trio.lowlevel.notify_closing`` and cancels the
    driver. When the driver ends -- for that reason or because it was cancelled -- every publish waiting
    for its PUBACK fails with `TransportError` and the reason; no publish is left hanging.

Publishing (`MqttTransport.publish`)
    Refuses a payload larger than ``max_message_size`` before anything is sent, waits for the rate limiter
    (a `TokenBucket` on trio's clock), hands the message to paho (QoS 1) and waits for its PUBACK (paho's
    ``on_publish`` with the message id). MQTT 5 PUBACKs carry a reason code; a failure code (e.g. "Not
    authorized", "Quota exceeded") raises `TransportError`. No PUBACK within ``ack_timeout`` drops the
    connection and raises. Delivery is at least once: after any failure the caller sends the batch again,
    on a new connection.

Secrets
    The config holds no password, only where to read it (``password_file`` or ``password_env``); it is read
    at each `connect` (so it can be rotated) and handed straight to paho: it is not kept on the transport
    and never logged or put in an error message.

Reconnecting is the caller's job: on `TransportError` from `connect` or `publish`, wait (exponential backoff
with jitter: ``vwos.BackoffPolicy.delay(failures, random.random())``) and call `connect` again.

This module's one job is the transport: connecting, publishing, closing, with their timeouts and errors.
The other parts live beside it: the config (``_mqtt_config.py``), the rate limiter (``_ratelimit.py``),
paho's driver -- the connect thread and the loop driver (``_paho.py``) -- and the wording of failures
(``_mqtt_errors.py``).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs
import structlog
import trio

from services.uplink._mqtt_config import _TOPIC_FORBIDDEN, MQTT_MAX_PAYLOAD, MqttConfig, Protocol
from services.uplink._mqtt_errors import (
    _CONNACK_HINTS,
    _load_error,
    _refuse_key_password,
    _ssl_text,
    _tls_hint,
)
from services.uplink._paho import _Attempt, _ClosingSSLSocket, _Link, _Pending
from services.uplink._ratelimit import TokenBucket
from services.uplink._transport import TransportError

# paho is imported where a transport uses it, not here: `MqttConfig` is part of every uplink's config, and
# an uplink with the file transport would otherwise load paho-mqtt at start-up for nothing (~8 ms, 1 MiB).
if TYPE_CHECKING:
    from paho.mqtt import client as paho
    from paho.mqtt.client import SocketLike

__all__ = ["MQTT_MAX_PAYLOAD", "MqttConfig", "MqttStatistics", "MqttTransport", "Protocol", "TokenBucket"]

#: How long `MqttTransport.close` waits for a clean DISCONNECT before it just closes the socket.
CLOSE_TIMEOUT = 2.0


# -- the transport ------------------------------------------------------------------------------------------


@attrs.frozen
class MqttStatistics:
    """What `MqttTransport.statistics` reports."""

    #: Whether a connection is up (CONNACK accepted, not lost since).
    connected: bool
    #: Successful connections so far.
    connects: int
    #: Batches handed to a connection (PUBLISH sent or queued).
    published: int
    #: Batches acknowledged by the broker (PUBACK).
    acknowledged: int
    #: Batches waiting for their PUBACK now.
    inflight: int


class MqttTransport:
    """Publishes batches to an MQTT broker (the `UplinkTransport` interface). Use it as ``async with``::

        async with MqttTransport(config, vehicle_id) as transport:
            await transport.connect()
            await transport.publish(seq, payload)

    The ``async with`` block owns the nursery in which each connection's loop driver runs; leaving it closes
    the connection. ``log`` is a structlog logger (the service's ``ctx.log``); by default ``vwos.uplink``.
    """

    name = "mqtt"

    def __init__(
        self, config: MqttConfig, vehicle_id: str, *, log: structlog.typing.FilteringBoundLogger | None = None
    ) -> None:
        if not vehicle_id or any(c in vehicle_id for c in (*_TOPIC_FORBIDDEN, "/")):
            raise ValueError(
                f"vehicle id {vehicle_id!r} cannot go in an MQTT topic (empty, or has / + # NUL)"
            )
        self.config = config
        self.vehicle_id = vehicle_id
        self.topic = config.topic.format(vehicle=vehicle_id)
        self.client_id = config.client_id.format(vehicle=vehicle_id)
        self.url = config.url
        logger = log if log is not None else structlog.get_logger("vwos.uplink")
        self._log: structlog.typing.FilteringBoundLogger = logger.bind(transport="mqtt", broker=self.url)
        self._bucket = TokenBucket(config.rate_limit, config.rate_burst)
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._link: _Link | None = None
        self._connects = 0
        self._published = 0
        self._acknowledged = 0

    def __repr__(self) -> str:
        state = "connected" if self._link is not None and self._link.connected else "not connected"
        return f"<MqttTransport {self.url} topic={self.topic!r} client_id={self.client_id!r} {state}>"

    # -- the nursery --

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this MqttTransport is already in use (async with)")
        stack = contextlib.AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, nursery = self._stack, self._nursery
        try:
            await self.close()
        finally:
            self._stack = self._nursery = None
            if nursery is not None:
                nursery.cancel_scope.cancel()
            if stack is not None:
                # The body's exception is not passed into the nursery: it propagates as it is, not wrapped in
                # an ExceptionGroup. Only a crash of the driver itself (a bug) would come out of here.
                await stack.aclose()

    # -- statistics --

    def statistics(self) -> MqttStatistics:
        """Counters and the connection state, for status displays and tests."""
        link = self._link
        return MqttStatistics(
            connected=link is not None and link.connected,
            connects=self._connects,
            published=self._published,
            acknowledged=self._acknowledged,
            inflight=len(link.pending) if link is not None else 0,
        )

    # -- connect --

    async def connect(self) -> None:
        """Connect (TCP, TLS, CONNECT/CONNACK) within ``connect_timeout``; raises `TransportError` with the
        reason if the broker cannot be reached or refuses. A previous connection is closed first."""
        if self._nursery is None:
            raise RuntimeError("use MqttTransport as `async with MqttTransport(...) as transport:`")
        nursery = self._nursery
        await self.close()
        config = self.config
        password = await self._password()
        context = self._tls_context() if config.tls else None
        client = self._new_client(password, context)
        del password
        link: _Link | None = None
        try:
            with trio.move_on_after(config.connect_timeout) as deadline:
                sock = await self._open_socket(client)
                link = _Link(client, sock)
                link.on_lost = self._lost
                await nursery.start(link.drive)
                await link.settled.wait()
            if deadline.cancelled_caught:
                if link is None:
                    raise TransportError(
                        f"{self.url}: cannot connect: no TCP connection or TLS handshake within "
                        f"connect_timeout {config.connect_timeout:g} s"
                    )
                raise TransportError(
                    f"{self.url}: no CONNACK from the broker within connect_timeout "
                    f"{config.connect_timeout:g} s"
                )
            assert link is not None  # the deadline was not hit, so the socket is open
            if link.connack is not None and link.connack.is_failure:
                reason = str(link.connack).lower()
                raise TransportError(
                    f"{self.url}: connection refused by the broker: {reason}{_CONNACK_HINTS.get(reason, '')}"
                )
            if not link.connected:
                why = link.reason or "connection closed"
                hint = _tls_hint(why) if config.tls else " (does the broker expect TLS on this port?)"
                raise TransportError(f"{self.url}: connection lost before CONNACK: {why}{hint}")
        except BaseException:
            if link is not None:
                await link.stop()
            raise
        self._link = link
        self._connects += 1
        self._log.info("mqtt connected", client_id=self.client_id, protocol=config.protocol, topic=self.topic)

    async def _password(self) -> str | None:
        config = self.config
        if config.password_file is not None:
            path = config.password_file
            try:
                data = await trio.Path(path).read_bytes()
            except OSError as exc:
                raise TransportError(
                    f"{self.url}: cannot read password_file {path}: {exc.strerror or exc}"
                ) from None
            try:
                text = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise TransportError(f"{self.url}: password_file {path} is not UTF-8 text") from None
            if not text:
                raise TransportError(f"{self.url}: password_file {path} is empty")
            return text
        if config.password_env is not None:
            value = os.environ.get(config.password_env)
            if not value:
                raise TransportError(
                    f"{self.url}: environment variable {config.password_env} (password_env) is not set, "
                    "or empty"
                )
            return value
        return None

    def _tls_context(self) -> ssl.SSLContext:
        config = self.config
        try:
            context = ssl.create_default_context(
                cafile=None if config.ca_file is None else str(config.ca_file)
            )
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"{self.url}: cannot load ca_file {config.ca_file}: {_load_error(exc)}"
            ) from None
        if config.cert_file is not None:
            key = None if config.key_file is None else str(config.key_file)
            try:
                context.load_cert_chain(str(config.cert_file), key, password=_refuse_key_password)
            except (OSError, ValueError) as exc:
                raise TransportError(
                    f"{self.url}: cannot load cert_file {config.cert_file} / key_file {config.key_file}: "
                    f"{_load_error(exc)}"
                ) from None
        if config.tls_insecure:
            context.check_hostname = False
        context.sslsocket_class = _ClosingSSLSocket
        return context

    def _new_client(self, password: str | None, context: ssl.SSLContext | None) -> paho.Client:
        from paho.mqtt import client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        config = self.config
        v5 = config.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # never a blocking reconnect inside loop_read
        )
        # The worker thread's socket timeouts: a little longer than `connect`'s own deadline, which is thus
        # the one that ends a slow attempt (the abandoned thread then finishes and closes its socket).
        client.connect_timeout = config.connect_timeout + 1.0
        if config.username is not None:
            client.username_pw_set(config.username, password)
        if context is not None:
            client.tls_set_context(context)  # its check_hostname also sets paho's "insecure" flag
        client.connect_async(
            config.host,
            config.effective_port,
            config.keepalive,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )
        return client

    async def _open_socket(self, client: paho.Client) -> SocketLike:
        """paho's blocking connect (lookup, TCP, TLS, CONNECT queued) in a worker thread."""
        from paho.mqtt import client as paho
        from paho.mqtt.enums import MQTTErrorCode

        attempt = _Attempt(client)
        try:
            rc = await trio.to_thread.run_sync(attempt.run, abandon_on_cancel=True)
        except trio.Cancelled:
            attempt.abandon()
            raise
        except ssl.SSLCertVerificationError as exc:
            message = exc.verify_message or _ssl_text(exc)
            hint = "check host, or tls_insecure" if "mismatch" in message.lower() else "check ca_file"
            raise TransportError(
                f"{self.url}: TLS handshake failed: certificate verify failed: {message} ({hint})"
            ) from None
        except ssl.SSLError as exc:
            text = _ssl_text(exc)
            hint = (
                " (is this port a TLS listener?)" if "WRONG_VERSION_NUMBER" in str(exc) else _tls_hint(text)
            )
            raise TransportError(f"{self.url}: TLS handshake failed: {text}{hint}") from None
        except ConnectionResetError:
            if self.config.tls:  # while the broker read our TLS ClientHello
                raise TransportError(
                    f"{self.url}: TLS handshake failed: connection reset by the broker "
                    "(is this port a TLS listener?)"
                ) from None
            raise TransportError(f"{self.url}: cannot connect: connection reset by the broker") from None
        except ConnectionRefusedError:
            raise TransportError(
                f"{self.url}: cannot connect: connection refused (is the broker running, on this port?)"
            ) from None
        except TimeoutError:
            raise TransportError(
                f"{self.url}: cannot connect: timed out after {self.config.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # includes socket.gaierror (name lookup)
            raise TransportError(f"{self.url}: cannot connect: {exc.strerror or exc}") from None
        sock = client.socket()
        if sock is None or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            attempt.abandon()
            why = attempt.last_error or paho.error_string(rc)
            hint = _tls_hint(why) if self.config.tls else ""
            raise TransportError(f"{self.url}: cannot connect: {why}{hint}")
        return sock

    def _lost(self, link: _Link, reason: str) -> None:
        if self._link is link:  # not closed by us
            self._log.warning("mqtt connection lost", reason=reason)

    # -- publish --

    def _live_link(self, seq: int) -> _Link:
        link = self._link
        if link is None:
            raise TransportError(f"{self.url}: not connected (batch {seq} not sent)")
        if not link.connected:
            raise TransportError(
                f"{self.url}: not connected ({link.reason or 'connection lost'}; batch {seq} not sent)"
            )
        return link

    async def publish(self, seq: int, payload: bytes) -> None:
        """Publish one batch at QoS 1; return once the broker acknowledged it (PUBACK).

        Raises `TransportError` if the batch is too large (before anything is sent), if there is no
        connection, if the connection fails before the PUBACK, if the broker refuses it (MQTT 5) or if no
        PUBACK comes within ``ack_timeout`` (the connection is then dropped).
        """
        config = self.config
        size = len(payload)
        if size > config.max_message_size:
            raise TransportError(
                f"batch {seq} of {size} bytes exceeds max_message_size {config.max_message_size}"
            )
        self._live_link(seq)
        delay = self._bucket.take(trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
        link = self._live_link(seq)
        from paho.mqtt import client as paho
        from paho.mqtt.enums import MQTTErrorCode

        info = link.client.publish(self.topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"{self.url}: cannot publish batch {seq}: {paho.error_string(info.rc)}")
        pending = link.pending[info.mid] = _Pending()
        self._published += 1
        try:
            with trio.move_on_after(config.ack_timeout) as waiting:
                await pending.done.wait()
        finally:
            link.pending.pop(info.mid, None)
        if waiting.cancelled_caught:
            reason = f"no PUBACK for batch {seq} within ack_timeout {config.ack_timeout:g} s"
            await self._stop_link(link, reason)
            raise TransportError(f"{self.url}: {reason} (connection dropped)")
        if pending.error is not None:
            raise TransportError(f"{self.url}: batch {seq} not acknowledged: {pending.error}")
        if pending.reason is not None and pending.reason.is_failure:
            raise TransportError(f"{self.url}: the broker refused batch {seq}: {pending.reason}")
        self._acknowledged += 1

    async def _stop_link(self, link: _Link, reason: str) -> None:
        link.end(reason)
        if self._link is link:
            self._link = None
        await link.stop()

    # -- close --

    async def close(self) -> None:
        """Send DISCONNECT (for at most `CLOSE_TIMEOUT`), close the socket, stop the driver. Idempotent."""
        link, self._link = self._link, None
        if link is None:
            return
        with trio.CancelScope(shield=True):
            if link.connected:
                link.reason = "the connection was closed by the uplink"
                with trio.move_on_after(CLOSE_TIMEOUT):
                    link.client.disconnect()  # queued; the driver sends it, then paho closes the socket
                    await link.ended.wait()
            await link.stop()
        self._log.info("mqtt closed")
