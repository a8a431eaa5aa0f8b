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
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import ssl
import string
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import attrs
import structlog
import trio

from services.uplink._transport import TransportError

# paho is imported where a transport uses it, not here: `MqttConfig` is part of every uplink's config, and
# an uplink with the file transport would otherwise load paho-mqtt at start-up for nothing (~8 ms, 1 MiB).
if TYPE_CHECKING:
    from paho.mqtt import client as paho
    from paho.mqtt.client import SocketLike
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["MqttConfig", "MqttStatistics", "MqttTransport", "TokenBucket"]

#: MQTT's largest packet (its remaining-length field ends at 256 MiB).
MQTT_MAX_PAYLOAD = 268_435_455
#: How long `MqttTransport.close` waits for a clean DISCONNECT before it just closes the socket.
CLOSE_TIMEOUT = 2.0
#: Characters that must not appear in a topic name (wildcards, NUL) nor in a vehicle id (also "/").
_TOPIC_FORBIDDEN = ("+", "#", "\0")

Protocol = Literal["3.1.1", "5"]


# -- the config ---------------------------------------------------------------------------------------------


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _template_problem(template: str) -> str | None:
    """Why ``template`` is not a valid ``{vehicle}`` template, or None."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r} is not a valid template: {exc}"
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name != "vehicle" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"{template!r}: {shown} is not allowed, the only placeholder is {{vehicle}}"
    return None


def _topic(_: object, __: attrs.Attribute[str], value: str) -> None:
    problem = _template_problem(value)
    if problem is not None:
        raise ValueError(problem)
    if not value:
        raise ValueError("the topic must not be empty (e.g. 'vwos/{vehicle}/batches')")
    bad = [c for c in _TOPIC_FORBIDDEN if c in value]
    if bad:
        raise ValueError(
            f"the topic {value!r} must not contain {', '.join(map(repr, bad))} (a publish topic)"
        )
    if len(value.encode()) > 60_000:
        raise ValueError("the topic is too long (MQTT allows 65535 bytes)")


def _client_id(_: object, __: attrs.Attribute[str], value: str) -> None:
    problem = _template_problem(value)
    if problem is not None:
        raise ValueError(problem)
    if "\0" in value:
        raise ValueError("client_id must not contain NUL")


def _non_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


def _port(_: object, __: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value}")


def _keepalive(_: object, __: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"expected seconds from 0 (no keepalive) to 65535, got {value}")


#: The longest timeout (as vwos's own durations): beyond, a socket's timeout overflows the C time_t.
_MAX_SECONDS: Final = 1_000_000_000.0


def _positive_seconds(_: object, __: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= _MAX_SECONDS:  # also refuses NaN and inf
        raise ValueError(f"expected a number of seconds > 0 and at most {_MAX_SECONDS:.0f}, got {value}")


def _rate(_: object, __: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected publishes per second >= 0 (0: no limit), got {value}")


def _burst(_: object, __: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"expected at least 1, got {value}")


def _max_message_size(_: object, __: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MQTT_MAX_PAYLOAD:
        raise ValueError(f"expected bytes from 1 to {MQTT_MAX_PAYLOAD}, got {value}")


def _needs_tls(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in (None, False) and not instance.tls:
        raise ValueError(f"{attribute.name} is a TLS setting: it needs tls = true")


def _key_file(instance: Any, attribute: attrs.Attribute[Any], value: Path | None) -> None:
    _needs_tls(instance, attribute, value)
    if value is not None and instance.cert_file is None:
        raise ValueError("key_file needs cert_file (the client certificate it belongs to)")


def _password_source(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if attribute.name == "password_env":
        if not isinstance(value, str) or not value:
            raise ValueError("password_env must name an environment variable")
        if instance.password_file is not None:
            raise ValueError("give the password either in password_file or in password_env, not both")
    if instance.username is None:
        raise ValueError(f"{attribute.name} needs username (MQTT sends no password without a user name)")


@attrs.frozen
class MqttConfig:
    """How the uplink reaches its MQTT broker. Built from the uplink service's TOML config.

    It holds no secret: the password comes from ``password_file`` or ``password_env``, read at each connect.
    """

    host: str = attrs.field(validator=_non_empty, metadata=_help("The broker's host name or IP address."))
    port: int | None = attrs.field(
        default=None, validator=_port, metadata=_help("The broker's port; default 1883, or 8883 with tls.")
    )
    topic: str = attrs.field(
        default="vwos/{vehicle}/batches",
        validator=_topic,
        metadata=_help("The topic batches are published to; {vehicle} is replaced by the vehicle id."),
    )
    client_id: str = attrs.field(
        default="vwos-{vehicle}",
        validator=_client_id,
        metadata=_help(
            'The MQTT client id; {vehicle} is replaced by the vehicle id; "": the broker picks one.'
        ),
    )
    protocol: Protocol = attrs.field(default="3.1.1", metadata=_help('The MQTT version: "3.1.1" or "5".'))
    keepalive: int = attrs.field(
        default=60,
        validator=_keepalive,
        metadata=_help("Seconds between keepalive pings on an idle connection; 0: none."),
    )
    tls: bool = attrs.field(default=False, metadata=_help("Connect over TLS (mqtts)."))
    ca_file: Path | None = attrs.field(
        default=None,
        validator=_needs_tls,
        metadata=_help(
            "PEM file of the CA(s) that signed the broker's certificate; default: the system's CAs."
        ),
    )
    cert_file: Path | None = attrs.field(
        default=None,
        validator=_needs_tls,
        metadata=_help("PEM client certificate, for brokers that authenticate clients by certificate."),
    )
    key_file: Path | None = attrs.field(
        default=None,
        validator=_key_file,
        metadata=_help("PEM private key of cert_file (unencrypted); default: the key is in cert_file."),
    )
    tls_insecure: bool = attrs.field(
        default=False,
        validator=_needs_tls,
        metadata=_help(
            "Do not check that the broker's certificate names `host` (the chain is still verified). "
            "Test set-ups only."
        ),
    )
    username: str | None = attrs.field(default=None, metadata=_help("The MQTT user name."))
    password_file: Path | None = attrs.field(
        default=None,
        validator=_password_source,
        metadata=_help("A file holding the MQTT password (a trailing newline is ignored)."),
    )
    password_env: str | None = attrs.field(
        default=None,
        validator=_password_source,
        metadata=_help("An environment variable holding the MQTT password."),
    )
    connect_timeout: float = attrs.field(
        default=10.0,
        validator=_positive_seconds,
        metadata=_help("Seconds for TCP connect, TLS handshake and CONNACK together."),
    )
    ack_timeout: float = attrs.field(
        default=30.0,
        validator=_positive_seconds,
        metadata=_help("Seconds to wait for a batch's PUBACK before the connection is dropped."),
    )
    rate_limit: float = attrs.field(
        default=100.0,
        validator=_rate,
        metadata=_help("At most this many publishes per second (AWS IoT Core allows 100); 0: no limit."),
    )
    rate_burst: int = attrs.field(
        default=10,
        validator=_burst,
        metadata=_help("How many publishes may go at once, after a pause, within rate_limit."),
    )
    max_message_size: int = attrs.field(
        default=128 * 1024,
        validator=_max_message_size,
        metadata=_help("Largest batch, in bytes, sent as one message (AWS IoT Core: 128 KiB)."),
    )

    @property
    def effective_port(self) -> int:
        """``port``, or the default for the scheme (1883; 8883 with TLS)."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls else 1883

    @property
    def url(self) -> str:
        """``mqtt://host:port`` or ``mqtts://host:port``, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.effective_port}"


# -- the rate limit (pure) ----------------------------------------------------------------------------------


class TokenBucket:
    """A token bucket: on average at most ``rate`` takes per second, up to ``burst`` at once. Pure logic.

    `take` is told the time; it returns how long the caller must wait before going ahead (0.0: at once).
    A take always succeeds -- the bucket goes into debt -- so callers that take one after another, or
    concurrently, are spaced ``1 / rate`` apart once the burst is spent. ``rate == 0`` means no limit.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be >= 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """Take one token at time ``now``; the delay (seconds) before the caller may act on it."""
        if self.rate == 0:
            return 0.0
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


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
        self.driving = False  # the driver has started (and will call _finish when it ends)
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


@functools.cache
def _error_levels() -> tuple[int, int]:
    """paho's log levels that carry an error worth reporting (looked up once: paho is imported lazily)."""
    from paho.mqtt.enums import LogLevel

    return (LogLevel.MQTT_LOG_ERR, LogLevel.MQTT_LOG_WARNING)


def _refuse_key_password() -> str:
    raise ValueError("key_file is encrypted: use an unencrypted key, protected by its file permissions")


_SSL_NOISE = re.compile(r"\[SSL: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)")


def _clean(text: str) -> str:
    """An error text without OpenSSL's ``[SSL: CODE]`` prefix and ``(_ssl.c:1006)`` suffix."""
    # paho says "failed to receive" for failed sends too
    return _SSL_NOISE.sub("", text).replace("failed to receive on socket:", "socket error:").strip()


def _ssl_text(exc: ssl.SSLError) -> str:
    return _clean(str(exc.args[1]) if len(exc.args) > 1 else str(exc))


def _load_error(exc: OSError | ValueError) -> str:
    """Why a TLS file could not be loaded: OpenSSL's reason, else the OS's, else the exception's text."""
    if isinstance(exc, ssl.SSLError):
        why: str | None = _ssl_text(exc)
    elif isinstance(exc, OSError):
        why = exc.strerror
    else:
        why = None
    return why or str(exc)


def _tls_hint(text: str) -> str:
    """A hint for a TLS failure the broker reported after the handshake (TLS 1.3 checks client certificates
    then), or ""."""
    upper = text.upper()
    if "CERTIFICATE_REQUIRED" in upper or "CERTIFICATE REQUIRED" in upper:
        return " (the broker requires a client certificate: set cert_file and key_file)"
    if any(code in upper for code in ("UNKNOWN_CA", "UNKNOWN CA", "BAD_CERTIFICATE", "BAD CERTIFICATE")):
        return " (the broker rejected the client certificate: check cert_file and key_file)"
    if "EOF OCCURRED IN VIOLATION OF PROTOCOL" in upper or "UNEXPECTED_EOF" in upper:
        return (
            " (the broker ended the TLS connection: does it require a client certificate (cert_file, "
            "key_file), or reject this one?)"
        )
    return ""


_CONNACK_HINTS = {
    "bad user name or password": " (check username and password_file / password_env)",
    "not authorized": " (check username, the password, client_id and the broker's access rules)",
    "client identifier not valid": " (check client_id)",
    "identifier rejected": " (check client_id)",
}


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
                await nursery.start(self._drive, link)
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
                await self._stop(link)
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

    # -- the loop driver --

    async def _drive(
        self, link: _Link, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The background task of one connection: reads, writes and keepalive, until the socket closes."""
        link.driving = True
        try:
            with link.scope:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, link)
                    nursery.start_soon(self._write, link)
                    nursery.start_soon(self._misc, link)
        finally:
            self._finish(link)

    def _finish(self, link: _Link) -> None:
        """The end of a link: fail the publishes awaiting PUBACK, close the socket. Idempotent."""
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
        if was_up and self._link is link:  # not closed by us
            self._log.warning("mqtt connection lost", reason=reason)

    async def _read(self, link: _Link) -> None:
        client, sock = link.client, link.socket
        # TLS may hold decrypted bytes that the kernel no longer signals as readable
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        with contextlib.suppress(trio.ClosedResourceError):
            while client.socket() is sock:
                await trio.lowlevel.wait_readable(sock)
                client.loop_read()
                while tls is not None and client.socket() is sock and tls.pending():
                    client.loop_read()

    async def _write(self, link: _Link) -> None:
        client, sock = link.client, link.socket
        with contextlib.suppress(trio.ClosedResourceError):
            while client.socket() is sock:
                if not client.want_write():
                    link.write_wanted = trio.Event()
                    await link.write_wanted.wait()
                    continue
                await trio.lowlevel.wait_writable(sock)
                client.loop_write()

    async def _misc(self, link: _Link) -> None:
        client, sock = link.client, link.socket
        while client.socket() is sock:
            await trio.sleep(1.0)
            client.loop_misc()

    async def _stop(self, link: _Link) -> None:
        """Stop the driver of ``link`` and wait for it (it closes the socket and fails pending publishes)."""
        with trio.CancelScope(shield=True):
            link.end("the connection was closed")
            if link.driving:
                await link.ended.wait()
            else:  # the driver never ran
                self._finish(link)

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
        await self._stop(link)

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
            await self._stop(link)
        self._log.info("mqtt closed")
