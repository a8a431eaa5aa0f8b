"""A fake Azure IoT Hub for tests: mosquitto behind a small TLS front that authenticates devices as IoT Hub
does, and a "service side" that plays the cloud (twin, direct methods, cloud-to-device messages, DPS).

It is proven faithful by Microsoft's own device SDK (``azure-iot-device``, tests/test_iothub_fake.py): what
the SDK accepts here, vwos can rely on.

How it is built
    * mosquitto (tests/mqtt_broker.py) on free loopback ports: one plain listener per registered device with
      ``mount_point fakehub/{device}/`` -- so each device sees IoT Hub's topics (``$iothub/...``,
      ``devices/{id}/...``) as its own, isolated from the others -- and one anonymous listener for the
      service side. (Debian's mosquitto 2.0.11 adds the mount point to what a client sends but does not
      take it off what it delivers: the front takes it off each PUBLISH it relays to the device.)
    * the front (`FakeIotHub`, threads in the test process): listens with TLS on ``address:8883`` -- a
      loopback address drawn per hub (127.x.y.z; every 127/8 address is local on Linux), so the SDK's fixed
      port 8883 needs no patching -- with a server certificate for that address made by openssl in the test
      (its CA in ``ca_file``). For each connection it reads the MQTT CONNECT, checks it as IoT Hub does
      (MQTT 3.1.1; client id a registered device; user name ``{hub}/{device}/?api-version=...``; a SAS
      token signed with the device's key, for ``{hub}/devices/{device}``, not expired -- or a client
      certificate from the test CA whose CN is the device id), answers a refusal with the CONNACK code IoT
      Hub sends (1 protocol, 2 identifier, 4 user name, 5 not authorised), else relays the connection's bytes
      to the device's mosquitto listener. Like IoT Hub, it drops a connection when its SAS token expires.
    * the service side: a paho client on the service listener that answers twin GETs and reported patches
      (keeping a twin document with ``$version``s), and sends desired patches, direct methods (collecting
      their answers) and cloud-to-device messages; it records telemetry with its property bag decoded.
    * DPS (`FakeIotHub.dps_address`, optional): a second front on another loopback address:8883 for the
      Device Provisioning Service's MQTT API (``$dps/registrations/...``), assigning enrolled registrations to
      this hub; served by the front itself, no mosquitto.

Everything here uses only the standard library and paho (and openssl for the certificates); it decodes
tokens and property bags with urllib and hmac directly, not with vwos's own code, so a mistake in vwos is
not mirrored by the fake.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import selectors
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import mqtt_broker

HUB = "fakehub.azure-devices.net"
PORT = 8883
#: CONNACK return codes (MQTT 3.1.1) as IoT Hub uses them.
ACCEPTED, BAD_PROTOCOL, BAD_IDENTIFIER, BAD_CREDENTIALS, NOT_AUTHORIZED = 0, 1, 2, 4, 5
#: The largest CONNECT the front reads (IoT Hub's user names and tokens are far smaller).
MAX_CONNECT = 64 * 1024
DEFAULT_TIMEOUT = 10.0


# -- certificates -------------------------------------------------------------------------------------------


@attrs.frozen
class HubCertificates:
    ca_file: Path
    server_cert: Path
    server_key: Path
    directory: Path

    def device_certificate(self, device_id: str) -> tuple[Path, Path]:
        """A client certificate (CN ``device_id``) signed by the hub's CA, and its key."""
        ca = (self.ca_file, self.directory / "ca.key")
        cert = mqtt_broker._leaf(self.directory, f"device-{device_id}", device_id, ca, "clientAuth", "")
        return cert, self.directory / f"device-{device_id}.key"


def make_hub_certificates(directory: Path, addresses: list[str]) -> HubCertificates:
    """A CA and a server certificate for ``addresses`` (IPs) and the hub's name."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = mqtt_broker._ca(directory, "ca")
    names = ", ".join([f"DNS:{HUB}", "DNS:localhost", *(f"IP:{a}" for a in addresses)])
    server = mqtt_broker._leaf(directory, "server", HUB, ca, "serverAuth", f"subjectAltName = {names}")
    return HubCertificates(ca[0], server, directory / "server.key", directory)


def random_loopback() -> str:
    """A loopback address other than 127.0.0.1 (all of 127/8 is local on Linux)."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def bind_8883() -> tuple[socket.socket, str]:
    """A listening socket on port 8883 of a fresh loopback address."""
    for _ in range(20):
        address = random_loopback()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((address, PORT))
        except OSError:
            sock.close()
            continue
        sock.listen(16)
        return sock, address
    raise RuntimeError("no free loopback address for port 8883")


# -- MQTT packets (just what the front needs) ---------------------------------------------------------------


def _read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_packet(sock: socket.socket, limit: int = MAX_CONNECT) -> tuple[int, bytes, bytes]:
    """(first byte, body, the whole packet as read)."""
    head = _read_exact(sock, 1)
    length, shift, raw_length = 0, 0, b""
    for _ in range(4):
        byte = _read_exact(sock, 1)
        raw_length += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    else:
        raise ValueError("malformed remaining length")
    if length > limit:
        raise ValueError(f"packet of {length} bytes")
    body = _read_exact(sock, length)
    return head[0], body, head + raw_length + body


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from("!H", data, at)
    value = data[at + 2 : at + 2 + size]
    if len(value) != size:
        raise ValueError("truncated string")
    return value, at + 2 + size


def _encode_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _length(size: int) -> bytes:
    out = b""
    while True:
        byte, size = size % 128, size // 128
        out += bytes([byte | (0x80 if size else 0)])
        if not size:
            return out


def _take_packet(data: bytes) -> tuple[bytes, bytes] | None:
    """The first whole packet of ``data`` and the rest, or None while it is incomplete."""
    length, shift = 0, 0
    for index in range(1, min(len(data), 5)):
        byte = data[index]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            end = index + 1 + length
            return (data[:end], data[end:]) if len(data) >= end else None
    if len(data) >= 5:
        raise ValueError("malformed remaining length")
    return None


def _unmount(packet: bytes, mount: bytes) -> bytes:
    """A PUBLISH with ``mount`` taken off its topic; any other packet as it is."""
    if packet[0] >> 4 != 3:
        return packet
    at = 1
    while packet[at] & 0x80:
        at += 1
    body = packet[at + 1 :]
    topic, offset = _string(body, 0)
    body = _encode_string(topic.removeprefix(mount)) + body[offset:]
    return bytes([packet[0]]) + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (what the DPS front sends)."""
    body = _encode_string(topic) + payload
    return bytes([0x30]) + _length(len(body)) + body


@attrs.frozen
class Connect:
    level: int
    client_id: str
    username: str | None
    password: bytes | None
    keepalive: int


def parse_connect(body: bytes) -> Connect:
    name, at = _string(body, 0)
    if name != b"MQTT":
        raise ValueError(f"protocol name {name!r}")
    level, flags = body[at], body[at + 1]
    (keepalive,) = struct.unpack_from("!H", body, at + 2)
    at += 4
    if level == 5:  # properties
        size, shift = 0, 0
        while True:
            byte = body[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        at += size
    client_id, at = _string(body, at)
    if flags & 0x04:  # will
        if level == 5:
            raise ValueError("MQTT 5 will properties are not read here")
        _, at = _string(body, at)
        _, at = _string(body, at)
    username = password = None
    if flags & 0x80:
        raw, at = _string(body, at)
        username = raw.decode()
    if flags & 0x40:
        password, at = _string(body, at)
    return Connect(level, client_id.decode(), username, password, keepalive)


def connack(code: int) -> bytes:
    return bytes([0x20, 0x02, 0x00, code])


# -- SAS, checked as IoT Hub documents it (independently of services.uplink._azure) ------------------------


def check_sas(token: str, resource: str, key: bytes, *, now: float) -> tuple[bool, str, int]:
    """(valid, why not, expiry)."""
    prefix = "SharedAccessSignature "
    if not token.startswith(prefix):
        return False, "not a SAS token", 0
    fields = dict(part.partition("=")[::2] for part in token[len(prefix) :].split("&"))
    sr, sig, se = fields.get("sr", ""), fields.get("sig", ""), fields.get("se", "")
    if urllib.parse.unquote(sr).lower() != resource.lower():
        return False, f"token for {urllib.parse.unquote(sr)!r}, not {resource!r}", 0
    if not se.isdigit():
        return False, "no expiry", 0
    expected = base64.b64encode(hmac.new(key, f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, urllib.parse.unquote(sig)):
        return False, "bad signature", 0
    if int(se) <= now:
        return False, "expired", int(se)
    return True, "", int(se)


def property_bag(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, _, value = part.partition("=")
        out[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return out


# -- the hub ------------------------------------------------------------------------------------------------


@attrs.define
class Device:
    """A registered device: a symmetric key, or authentication by X.509 certificate (CN = device id)."""

    device_id: str
    key: bytes | None = None
    x509: bool = False
    port: int = 0  # its mosquitto listener
    desired: dict[str, Any] = attrs.field(factory=lambda: {"$version": 1})
    reported: dict[str, Any] = attrs.field(factory=lambda: {"$version": 1})
    enabled: bool = True


@attrs.frozen
class ConnectRecord:
    client_id: str
    username: str | None
    code: int
    why: str
    auth: str  # "sas", "x509" or ""
    expiry: int = 0
    at: float = 0.0


@attrs.frozen
class Telemetry:
    device_id: str
    topic: str
    properties: dict[str, str]
    payload: bytes


@attrs.frozen
class CloudMessageSent:
    device_id: str
    topic: str
    payload: bytes


class _Mosquitto(mqtt_broker.MosquittoBroker):
    """mosquitto with one mounted listener per device and an anonymous service listener."""

    def __init__(self, directory: Path, devices: Mapping[str, Device]) -> None:
        super().__init__(directory)
        self.devices = devices

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for device in self.devices.values():
            if not device.port:
                device.port = mqtt_broker.free_port()
        lines = [
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type all",
            "per_listener_settings true",
            "max_keepalive 65535",
            f"listener {self.port} {mqtt_broker.HOST}",
            "allow_anonymous true",
            f"listener {self.open_port} {mqtt_broker.HOST}",
            "allow_anonymous true",
        ]
        import os
        import pwd

        lines.insert(0, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        for device in self.devices.values():
            lines += [
                f"listener {device.port} {mqtt_broker.HOST}",
                "allow_anonymous true",
                f"mount_point fakehub/{device.device_id}/",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _ports(self) -> list[int]:
        return [self.port, self.open_port, *(d.port for d in self.devices.values())]


class FakeIotHub:
    """A fake IoT Hub on ``address:8883`` (TLS; CA in ``certificates.ca_file``). Use as a context manager.

    ``devices`` maps device ids to keys (bytes) or to None for X.509 devices. ``enrolments`` (DPS) maps
    registration ids to ``(key or None, device id)``: with ``dps=True`` a DPS front runs on ``dps_address``.
    """

    def __init__(
        self,
        directory: Path,
        devices: Mapping[str, bytes | None],
        *,
        dps: bool = False,
        enrolments: Mapping[str, tuple[bytes | None, str]] | None = None,
        id_scope: str = "0ne00FA4E01",
    ) -> None:
        self.directory = directory
        self.devices = {name: Device(name, key=key, x509=key is None) for name, key in devices.items()}
        self.enrolments = dict(enrolments or {})
        for _, device_id in self.enrolments.values():
            self.devices.setdefault(device_id, Device(device_id))
        self.id_scope = id_scope
        self.hub = HUB
        self._listener, self.address = bind_8883()
        self._dps_listener: socket.socket | None = None
        self.dps_address: str | None = None
        if dps:
            self._dps_listener, self.dps_address = bind_8883()
        addresses = [a for a in (self.address, self.dps_address) if a]
        self.certificates = make_hub_certificates(directory / "pki", addresses)
        self.broker = _Mosquitto(directory / "mosquitto", self.devices)
        self.connects: list[ConnectRecord] = []
        self.telemetry: list[Telemetry] = []
        self.c2d_sent: list[CloudMessageSent] = []
        self.twin_requests: list[tuple[str, str]] = []  # (device, "GET" | "PATCH")
        self.dps_requests: list[tuple[str, str]] = []  # (registration id, topic)
        self.dps_refused: set[str] = set()  # registration ids DPS refuses (401)
        self.online: dict[str, int] = {}  # device -> open connections
        self.lock = threading.Condition()
        self._method_answers: dict[str, tuple[int, bytes] | None] = {}
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepting = threading.Event()
        self._service: Any = None
        self._server_context = self._make_context()

    # -- life cycle --

    def _make_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certificates.server_cert, self.certificates.server_key)
        context.load_verify_locations(self.certificates.ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, when given, must be the CA's
        return context

    def __enter__(self) -> FakeIotHub:
        try:
            self.broker.__enter__()
            self._start_service()
            self._spawn(self._accept_loop, self._listener, self._serve_device)
            if self._dps_listener is not None:
                self._spawn(self._accept_loop, self._dps_listener, self._serve_dps)
            self._accepting.set()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping = True
        for sock in (self._listener, self._dps_listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
                with contextlib.suppress(OSError):
                    sock.close()
        self.drop_connections()
        if self._service is not None:
            self._service.loop_stop()
            self._service.disconnect()
        self.broker.__exit__(None, None, None)
        for thread in self._threads:
            thread.join(2.0)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def pause_accepting(self) -> None:
        """An outage: drop every connection and refuse new ones (TCP reset) until `resume_accepting`."""
        self._accepting.clear()
        self.drop_connections()

    def resume_accepting(self) -> None:
        self._accepting.set()

    def drop_connections(self) -> None:
        with self.lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    # -- the TLS front --

    def _accept_loop(self, listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
        while not self._stopping:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            if not self._accepting.is_set():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # a reset: the hub is "down"
                continue
            self._spawn(self._handshake, sock, serve)

    def _handshake(self, raw: socket.socket, serve: Callable[[ssl.SSLSocket], None]) -> None:
        raw.settimeout(DEFAULT_TIMEOUT)
        try:
            sock = self._server_context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self.lock:
            self._connections.append(sock)
        try:
            serve(sock)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _refuse(self, sock: ssl.SSLSocket, record: ConnectRecord) -> None:
        with self.lock:
            self.connects.append(record)
            self.lock.notify_all()
        sock.sendall(connack(record.code))

    def _serve_device(self, sock: ssl.SSLSocket) -> None:
        first, body, packet = read_packet(sock)
        if first >> 4 != 1:
            return  # not CONNECT: IoT Hub closes
        connect = parse_connect(body)
        now = time.time()

        def record(code: int, why: str, auth: str = "", expiry: int = 0) -> ConnectRecord:
            return ConnectRecord(connect.client_id, connect.username, code, why, auth, expiry, now)

        if connect.level != 4:
            self._refuse(sock, record(BAD_PROTOCOL, f"MQTT level {connect.level}: IoT Hub speaks 3.1.1"))
            return
        device = self.devices.get(connect.client_id)
        if device is None or not device.enabled:
            self._refuse(sock, record(BAD_IDENTIFIER, "no such device"))
            return
        username = connect.username or ""
        prefix = f"{self.hub}/{device.device_id}/?"
        query = property_bag(username[len(prefix) :]) if username.startswith(prefix) else {}
        if not query.get("api-version"):
            self._refuse(sock, record(BAD_CREDENTIALS, f"user name {username!r}"))
            return
        expiry = 0
        peer = sock.getpeercert()
        if connect.password is not None:
            if device.key is None:
                self._refuse(sock, record(NOT_AUTHORIZED, "an X.509 device sent a SAS token", "sas"))
                return
            ok, why, expiry = check_sas(
                connect.password.decode(errors="replace"),
                f"{self.hub}/devices/{device.device_id}",
                device.key,
                now=now,
            )
            if not ok:
                self._refuse(sock, record(NOT_AUTHORIZED, why, "sas"))
                return
            auth = "sas"
        elif peer:
            subject = _subject(peer)
            if not device.x509 or subject.get("commonName") != device.device_id:
                self._refuse(sock, record(NOT_AUTHORIZED, f"certificate for {subject}", "x509"))
                return
            auth = "x509"
        else:
            self._refuse(sock, record(NOT_AUTHORIZED, "neither a SAS token nor a certificate"))
            return
        with self.lock:
            self.connects.append(record(ACCEPTED, "", auth, expiry))
            self.online[device.device_id] = self.online.get(device.device_id, 0) + 1
            self.lock.notify_all()
        try:
            self._relay(sock, packet, device, expiry)
        finally:
            with self.lock:
                self.online[device.device_id] -= 1
                self.lock.notify_all()

    def _relay(self, sock: ssl.SSLSocket, connect: bytes, device: Device, expiry: int) -> None:
        """Relay bytes both ways in this one thread (an SSLSocket must not be read and written by two
        threads at once), taking the mount point off what the broker delivers."""
        upstream = socket.create_connection((mqtt_broker.HOST, device.port), timeout=DEFAULT_TIMEOUT)
        with self.lock:
            self._connections.append(upstream)
        upstream.sendall(connect)
        sock.settimeout(DEFAULT_TIMEOUT)
        mount = f"fakehub/{device.device_id}/".encode()
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        selector.register(upstream, selectors.EVENT_READ)
        pending = b""
        try:
            while not self._stopping:
                if expiry and time.time() >= expiry:
                    break  # IoT Hub ends a connection when its token expires
                ready = {key.fileobj for key, _ in selector.select(0 if sock.pending() else 0.1)}
                if sock in ready or sock.pending():
                    try:
                        chunk = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        chunk = None
                    if chunk == b"":
                        break
                    if chunk:
                        upstream.sendall(chunk)
                if upstream in ready:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    pending += chunk
                    while (taken := _take_packet(pending)) is not None:
                        packet, pending = taken
                        sock.sendall(_unmount(packet, mount))
        except (OSError, ValueError):
            pass
        finally:
            selector.close()
            for s in (upstream, sock):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            upstream.close()

    # -- the service side --

    def _start_service(self) -> None:
        from paho.mqtt import client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fakehub-service")
        subscribed = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [
                ("fakehub/+/devices/+/messages/events/#", 1),
                ("fakehub/+/$iothub/twin/GET/#", 1),
                ("fakehub/+/$iothub/twin/PATCH/properties/reported/#", 1),
                ("fakehub/+/$iothub/methods/res/#", 1),
            ]
        )
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = self._on_service_message
        client.connect(mqtt_broker.HOST, self.broker.open_port)
        client.loop_start()
        self._service = client
        if not subscribed.wait(DEFAULT_TIMEOUT):
            raise RuntimeError("the fake hub's service side did not subscribe")

    def _publish(self, device_id: str, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self._service.publish(f"fakehub/{device_id}/{topic}", payload, qos=qos)
        info.wait_for_publish(DEFAULT_TIMEOUT)

    def _on_service_message(self, client: Any, userdata: Any, message: Any) -> None:
        _, device_id, topic = message.topic.split("/", 2)
        device = self.devices.get(device_id)
        if device is None:
            return
        payload = bytes(message.payload)
        if topic.startswith(f"devices/{device_id}/messages/events/"):
            bag = topic[len(f"devices/{device_id}/messages/events/") :]
            with self.lock:
                self.telemetry.append(Telemetry(device_id, topic, property_bag(bag), payload))
                self.lock.notify_all()
        elif topic.startswith("$iothub/twin/GET/"):
            rid = property_bag(topic.partition("?")[2]).get("$rid", "")
            with self.lock:
                self.twin_requests.append((device_id, "GET"))
                twin = {"desired": device.desired, "reported": device.reported}
                self.lock.notify_all()
            self._service.publish(
                f"fakehub/{device_id}/$iothub/twin/res/200/?$rid={rid}", json.dumps(twin).encode(), qos=1
            )
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            rid = property_bag(topic.partition("?")[2]).get("$rid", "")
            try:
                patch = json.loads(payload)
                if not isinstance(patch, dict):
                    raise ValueError("not an object")
            except ValueError:
                self._service.publish(f"fakehub/{device_id}/$iothub/twin/res/400/?$rid={rid}", b"", qos=1)
                return
            with self.lock:
                _merge(device.reported, patch)
                device.reported["$version"] += 1
                version = device.reported["$version"]
                self.twin_requests.append((device_id, "PATCH"))
                self.lock.notify_all()
            self._service.publish(
                f"fakehub/{device_id}/$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=1
            )
        elif topic.startswith("$iothub/methods/res/"):
            status, _, query = topic[len("$iothub/methods/res/") :].partition("/?")
            rid = property_bag(query).get("$rid", "")
            with self.lock:
                if rid in self._method_answers:
                    self._method_answers[rid] = (int(status), payload)
                    self.lock.notify_all()

    # -- what a test does as the cloud --

    def wait_until(self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Block until ``predicate()`` (called with the lock held) is true; AssertionError after
        ``timeout``."""
        with self.lock:
            if not self.lock.wait_for(predicate, timeout):
                raise AssertionError(f"fake IoT Hub: not reached within {timeout} s")

    def telemetry_after(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[Telemetry]:
        """The telemetry the service side has received, once it has at least ``count`` messages: a device's
        publish is acknowledged by mosquitto before mosquitto delivers it to the service side, so a test
        that has its PUBACKs waits here for what it sent."""
        self.wait_until(lambda: len(self.telemetry) >= count, timeout)
        with self.lock:
            return list(self.telemetry)

    def invoke_method(
        self, device_id: str, name: str, payload: Any, *, timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[int, Any]:
        """Call a direct method; (status, the answer's JSON) -- (504, None) when no answer comes in time."""
        rid = uuid.uuid4().hex[:8]
        with self.lock:
            self._method_answers[rid] = None
        self._publish(device_id, f"$iothub/methods/POST/{name}/?$rid={rid}", json.dumps(payload).encode())
        with self.lock:
            self.lock.wait_for(lambda: self._method_answers[rid] is not None, timeout)
            answer = self._method_answers.pop(rid)
        if answer is None:
            return 504, None
        status, body = answer
        return status, json.loads(body) if body else None

    def update_desired(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Patch the desired properties and send the patch; the new ``$version``."""
        device = self.devices[device_id]
        with self.lock:
            _merge(device.desired, dict(patch))
            device.desired["$version"] += 1
            version: int = device.desired["$version"]
        body = json.dumps({**patch, "$version": version}).encode()
        self._publish(device_id, f"$iothub/twin/PATCH/properties/desired/?$version={version}", body)
        return version

    def send_c2d(self, device_id: str, payload: bytes, properties: Mapping[str, str] | None = None) -> str:
        """A cloud-to-device message with its property bag (IoT Hub adds ``$.mid`` and ``$.to``)."""
        mid = uuid.uuid4().hex
        bag = {"$.mid": mid, "$.to": f"/devices/{device_id}/messages/deviceBound", **(properties or {})}
        encoded = urllib.parse.urlencode(bag, quote_via=urllib.parse.quote)
        topic = f"devices/{device_id}/messages/devicebound/{encoded}"
        self._publish(device_id, topic, payload)
        with self.lock:
            self.c2d_sent.append(CloudMessageSent(device_id, topic, payload))
        return mid

    def connection_string(self, device_id: str) -> str:
        key = self.devices[device_id].key
        assert key is not None
        return (
            f"HostName={self.hub};DeviceId={device_id};SharedAccessKey={base64.b64encode(key).decode()};"
            f"GatewayHostName={self.address}"
        )

    # -- DPS --

    def _serve_dps(self, sock: ssl.SSLSocket) -> None:
        first, body, _ = read_packet(sock)
        if first >> 4 != 1:
            return
        connect = parse_connect(body)
        registration = connect.client_id
        enrolment = self.enrolments.get(registration)
        username = connect.username or ""
        expected = f"{self.id_scope}/registrations/{registration}/"
        if enrolment is None:
            sock.sendall(connack(NOT_AUTHORIZED))
            return
        if not username.startswith(expected) or "api-version=" not in username:
            sock.sendall(connack(BAD_CREDENTIALS))
            return
        key, device_id = enrolment
        if key is not None:
            ok, _, _ = check_sas(
                (connect.password or b"").decode(errors="replace"),
                f"{self.id_scope}/registrations/{registration}",
                key,
                now=time.time(),
            )
            if not ok:
                sock.sendall(connack(NOT_AUTHORIZED))
                return
        else:
            peer = sock.getpeercert()
            subject = _subject(peer)
            if subject.get("commonName") != registration:
                sock.sendall(connack(NOT_AUTHORIZED))
                return
        sock.sendall(connack(ACCEPTED))
        operation = None
        polls = itertools.count()
        sock.settimeout(DEFAULT_TIMEOUT)
        while True:
            first, body, _ = read_packet(sock)
            kind = first >> 4
            if kind == 8:  # SUBSCRIBE: SUBACK granting QoS 1
                (mid,) = struct.unpack_from("!H", body, 0)
                sock.sendall(bytes([0x90, 0x03]) + struct.pack("!H", mid) + b"\x01")
            elif kind == 12:  # PINGREQ
                sock.sendall(b"\xd0\x00")
            elif kind == 14:  # DISCONNECT
                return
            elif kind == 3:
                topic_raw, at = _string(body, 0)
                if (first >> 1) & 3:
                    (mid,) = struct.unpack_from("!H", body, at)
                    at += 2
                    sock.sendall(bytes([0x40, 0x02]) + struct.pack("!H", mid))
                topic = topic_raw.decode()
                with self.lock:
                    self.dps_requests.append((registration, topic))
                    self.lock.notify_all()
                query = property_bag(topic.partition("?")[2])
                rid = query.get("$rid", "")
                if topic.startswith("$dps/registrations/PUT/iotdps-register/"):
                    if registration in self.dps_refused:
                        status, answer = 401, {"errorCode": 401002, "message": "refused by the test"}
                    else:
                        operation = f"op-{uuid.uuid4().hex[:8]}"
                        status, answer = 202, {"operationId": operation, "status": "assigning"}
                    sock.sendall(
                        publish_packet(
                            f"$dps/registrations/res/{status}/?$rid={rid}&retry-after=1",
                            json.dumps(answer).encode(),
                        )
                    )
                elif topic.startswith("$dps/registrations/GET/iotdps-get-operationstatus/"):
                    if query.get("operationId") != operation or operation is None:
                        status, answer = 404, {"message": "no such operation"}
                    elif next(polls) == 0:
                        status, answer = 202, {"operationId": operation, "status": "assigning"}
                    else:
                        status = 200
                        answer = {
                            "operationId": operation,
                            "status": "assigned",
                            "registrationState": {
                                "registrationId": registration,
                                "assignedHub": self.hub,
                                "deviceId": device_id,
                                "status": "assigned",
                                "substatus": "initialAssignment",
                            },
                        }
                    sock.sendall(
                        publish_packet(
                            f"$dps/registrations/res/{status}/?$rid={rid}&retry-after=1",
                            json.dumps(answer).encode(),
                        )
                    )


def _subject(peer: Any) -> dict[str, str]:
    """The subject of a peer certificate (``getpeercert()``) as a dict; {} for none."""
    subject: dict[str, str] = {}
    for rdn in (peer or {}).get("subject", ()):
        for name, value in rdn:
            subject[name] = value
    return subject


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A JSON merge patch, as the twin applies one (null removes)."""
    for key, value in patch.items():
        if key == "$version":
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
