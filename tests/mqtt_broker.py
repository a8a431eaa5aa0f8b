"""A real MQTT broker for tests: Debian's ``mosquitto`` on free loopback ports, certificates from ``openssl``.

Public names
    `make_certificates` writes a test PKI into a directory with the ``openssl`` command: a CA, a server
    certificate for ``127.0.0.1``/``localhost``, a client certificate signed by the CA, and a second,
    unrelated CA (for "wrong CA" tests). It returns the paths as `Certificates`.
    `MosquittoBroker` runs ``mosquitto`` with its configuration, password file and log in a directory of its
    own: ``start()``, ``stop()``, ``kill()``, ``restart()`` (same ports), ``pause()``/``resume()``
    (SIGSTOP/SIGCONT: a broker that accepts nothing and answers nothing), and a context manager that always
    stops it. Every wait has a hard timeout; a broker that did not come up raises `BrokerError` with the tail
    of its log.
    `BrokerFactory` starts brokers in subdirectories of one directory and stops them all in ``close()``
    (the ``make_mosquitto`` fixture in ``conftest.py``).
    `Subscriber` runs an independent subscriber in another process (``mosquitto_sub``: QoS 1, a persistent
    session) that writes each payload it receives as a line of hex to a file; `Subscriber.payloads` reads
    them back as bytes, `Subscriber.wait_for` (blocking) and `Subscriber.receive` (trio) wait for a count.

Listeners (all on 127.0.0.1)
    ``port``       plain MQTT; needs a user name and password when ``users`` is given, else anonymous.
    ``tls_port``   MQTT over TLS (only with ``certificates``); same authentication as ``port``; with
                   ``require_certificate=True`` a client must present a certificate signed by the CA.
    ``open_port``  plain MQTT, always anonymous: for observers such as `Subscriber` (messages flow between
                   listeners: a subscriber on ``open_port`` receives what a client publishes on ``tls_port``).

The broker runs with ``persistence false``: a restart forgets sessions and queued messages. Debian packages:
``mosquitto`` (the broker, ``mosquitto_passwd``), ``mosquitto-clients`` (``mosquitto_sub``), ``openssl``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import attrs

__all__ = [
    "BrokerError",
    "BrokerFactory",
    "Certificates",
    "MosquittoBroker",
    "Subscriber",
    "make_certificates",
    "mosquitto_unavailable_reason",
]

HOST = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"
#: How long a broker may take to start listening, or to stop, before it is killed and the test fails.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class BrokerError(RuntimeError):
    """The broker (or a helper process) could not be started, or did not behave."""


def _which(name: str, fallback: str | None = None) -> str | None:
    found = shutil.which(name)
    if found is None and fallback is not None and os.access(fallback, os.X_OK):
        return fallback
    return found


def mosquitto_version() -> str | None:
    """The version mosquitto reports (``mosquitto -h``), or None."""
    try:
        proc = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"mosquitto version (\S+)", proc.stdout + proc.stderr)
    return found.group(1) if found else None


def mosquitto_unavailable_reason() -> str | None:
    """Why the broker tests cannot run here (a missing program and its Debian package), or None."""
    needs = {
        "mosquitto": ("mosquitto", MOSQUITTO),
        "mosquitto_passwd": ("mosquitto", "/usr/bin/mosquitto_passwd"),
        "mosquitto_sub": ("mosquitto-clients", "/usr/bin/mosquitto_sub"),
        "openssl": ("openssl", "/usr/bin/openssl"),
    }
    missing = [
        f"{name} (Debian package {package})"
        for name, (package, path) in needs.items()
        if _which(name, path) is None
    ]
    return f"missing: {', '.join(missing)}" if missing else None


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 30.0) -> None:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise BrokerError(f"{' '.join(str(a) for a in args)} failed ({result.returncode}): {result.stderr}")


# -- certificates -------------------------------------------------------------------------------------------


@attrs.frozen
class Certificates:
    """Paths of a test PKI (PEM files). ``other_ca_file`` is a CA that signed nothing here."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path


_CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
{alt_names}
"""


def _key(path: Path) -> None:
    _run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.crt", directory / f"{name}.ext"
    _key(key)
    ext.write_text(_CA_EXTENSIONS)
    csr = directory / f"{name}.csr"
    _run("openssl", "req", "-new", "-key", key, "-subj", f"/CN=vwos test {name}", "-out", csr)
    _run("openssl", "x509", "-req", "-in", csr, "-signkey", key, "-days", "2", "-sha256",
         "-extfile", ext, "-out", cert)  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, cn: str, ca: tuple[Path, Path], usage: str, alt_names: str) -> Path:
    key, cert, ext, csr = (directory / f"{name}{suffix}" for suffix in (".key", ".crt", ".ext", ".csr"))
    _key(key)
    ext.write_text(_LEAF_EXTENSIONS.format(usage=usage, alt_names=alt_names))
    _run("openssl", "req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", csr)
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
         "-days", "2", "-sha256", "-extfile", ext, "-out", cert)  # fmt: skip
    return cert


def make_certificates(directory: Path, *, client_cn: str = "vehicle-1") -> Certificates:
    """Write a CA, a server certificate (``localhost``, ``127.0.0.1``), a client certificate (CN
    ``client_cn``) and an unrelated second CA into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    other_ca, _ = _ca(directory, "other-ca")
    server = _leaf(
        directory, "server", "localhost", ca, "serverAuth", "subjectAltName = DNS:localhost, IP:127.0.0.1"
    )
    client = _leaf(directory, "client", client_cn, ca, "clientAuth", "")
    return Certificates(
        ca_file=ca[0],
        server_cert=server,
        server_key=directory / "server.key",
        client_cert=client,
        client_key=directory / "client.key",
        other_ca_file=other_ca,
    )


# -- the broker ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """A ``mosquitto`` process on free loopback ports, everything it needs in ``directory``.

    ``users`` (name -> password) makes ``port`` and ``tls_port`` require a password (a password file made
    with ``mosquitto_passwd -b -c``); ``certificates`` adds the TLS listener; ``require_certificate`` makes
    it demand a client certificate signed by the CA.
    """

    def __init__(
        self,
        directory: Path,
        *,
        certificates: Certificates | None = None,
        users: Mapping[str, str] | None = None,
        require_certificate: bool = False,
        persistent: bool = False,
        log_types: Sequence[str] = ("all",),
    ) -> None:
        if require_certificate and certificates is None:
            raise ValueError("require_certificate needs certificates")
        self.directory = directory
        self.certificates = certificates
        self.users = dict(users or {})
        self.require_certificate = require_certificate
        #: Keep sessions and queued QoS 1 messages across a restart (a persistent subscriber misses nothing).
        self.persistent = persistent
        #: mosquitto's ``log_type`` lines: everything by default (a line per message, for debugging tests).
        self.log_types = tuple(log_types)
        self.host = HOST
        self.port = 0
        self.tls_port: int | None = None
        self.open_port = 0
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self.output_file = directory / "mosquitto.out"
        self.password_file = directory / "passwords"
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        atexit.register(self._kill_at_exit)

    # -- configuration --

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.users and not self.password_file.exists():
            for number, (user, password) in enumerate(self.users.items()):
                flags = ("-b", "-c") if number == 0 else ("-b",)
                _run("mosquitto_passwd", *flags, self.password_file, user, password)
            self.password_file.chmod(0o600)
        user = pwd.getpwuid(os.geteuid()).pw_name  # as root, mosquitto would drop to user "mosquitto"
        auth = (
            f"allow_anonymous false\npassword_file {self.password_file}\n"
            if self.users
            else "allow_anonymous true\n"
        )
        lines = [
            f"user {user}",
            *(
                [f"persistence true\npersistence_location {self.directory}/", "autosave_interval 1"]
                if self.persistent
                else ["persistence false"]
            ),
            f"log_dest file {self.log_file}",
            *(f"log_type {kind}" for kind in self.log_types),
            "per_listener_settings true",
            "max_keepalive 65535",
            f"listener {self.port} {HOST}",
            auth,
            f"listener {self.open_port} {HOST}",
            "allow_anonymous true",
        ]
        if self.certificates is not None:
            c = self.certificates
            lines += [
                f"listener {self.tls_port} {HOST}",
                auth,
                f"cafile {c.ca_file}",
                f"certfile {c.server_cert}",
                f"keyfile {c.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _ports(self) -> list[int]:
        return [p for p in (self.port, self.open_port, self.tls_port) if p]

    # -- life cycle --

    @property
    def running(self) -> bool:
        """Whether the broker process is alive (paused counts as alive)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on fresh free ports (or the same ones, after a first start), wait until every listener
        accepts connections."""
        if self.running:
            raise BrokerError("the broker is already running")
        first = self.port == 0
        for attempt in range(3):
            if first:
                self.port, self.open_port = free_port(), free_port()
                self.tls_port = free_port() if self.certificates is not None else None
            self._write_config()
            try:
                self._spawn()
                return
            except BrokerError:
                if not first or attempt == 2:
                    raise  # restart() keeps its ports: no retry on others

    def _spawn(self) -> None:
        with self.output_file.open("ab") as out:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        waiting = self._ports()
        while waiting:
            if not self.running:
                self._process = None
                raise BrokerError(f"mosquitto exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto did not listen within {START_TIMEOUT} s:\n{self.log_tail()}")
            waiting = [p for p in waiting if not _accepts(p)]
            if waiting:
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (SIGTERM; SIGKILL if it takes longer than `STOP_TIMEOUT`). Idempotent."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                if self._paused:
                    process.send_signal(signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT)
        finally:
            self._process = None
            self._paused = False

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL): its connections drop without a word. Idempotent."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.kill()
                process.wait(STOP_TIMEOUT)
        finally:
            self._process = None
            self._paused = False

    def restart(self) -> None:
        """Stop and start again on the same ports."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the broker stays connected but reads, answers and acknowledges nothing."""
        if self._process is None:
            raise BrokerError("the broker is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self._process is None:
            raise BrokerError("the broker is not running")
        self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def _kill_at_exit(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def __enter__(self) -> MosquittoBroker:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self.kill()  # in case stop() itself failed
            atexit.unregister(self._kill_at_exit)

    # -- looking inside --

    def log_text(self) -> str:
        """The broker's log so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log and output, for error messages."""
        output = self.output_file.read_text(errors="replace") if self.output_file.exists() else ""
        return "\n".join((self.log_text() + output).splitlines()[-lines:])

    def wait_for_log(self, text: str, *, timeout: float = 5.0, after: int = 0) -> int:
        """Wait until ``text`` appears in the log at or after offset ``after``; returns where it ends."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            found = log.find(text, after)
            if found >= 0:
                return found + len(text)
            if time.monotonic() > deadline:
                raise BrokerError(f"{text!r} not in the broker log after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    async def log_shows(self, text: str, *, count: int = 1) -> str:
        """Wait (trio) until ``text`` appears ``count`` times in the log (the broker logs asynchronously to
        what a client sees); returns the log. Bound it with ``trio.fail_after``."""
        import trio

        while (log := self.log_text()).count(text) < count:  # noqa: ASYNC110 -- another process writes it
            await trio.sleep(0.02)
        return log

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<MosquittoBroker {state} port={self.port} tls_port={self.tls_port} open_port={self.open_port}>"
        )


class BrokerFactory:
    """Starts `MosquittoBroker` instances (each in its own subdirectory of ``directory``); ``close()`` stops
    every one of them."""

    def __init__(self, directory: Path, certificates: Certificates | None = None) -> None:
        self.directory = directory
        self.certificates = certificates
        self.brokers: list[MosquittoBroker] = []

    def __call__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        require_certificate: bool = False,
        persistent: bool = False,
    ) -> MosquittoBroker:
        """A started broker (see `MosquittoBroker` for the options)."""
        broker = MosquittoBroker(
            self.directory / f"mosquitto-{len(self.brokers)}",
            certificates=self.certificates,
            users=users,
            require_certificate=require_certificate,
            persistent=persistent,
        )
        self.brokers.append(broker)
        broker.__enter__()
        return broker

    def close(self) -> None:
        """Stop every broker started here (kill it if it will not stop)."""
        for broker in self.brokers:
            broker.__exit__(None, None, None)


# -- an independent subscriber -----------------------------------------------------------------------------


class Subscriber:
    """``mosquitto_sub`` in its own process, subscribed to ``topic`` (QoS 1, persistent session
    ``client_id``) on the broker's anonymous ``open_port``, writing each payload as a hex line to a file."""

    def __init__(self, broker: MosquittoBroker, topic: str, *, client_id: str = "vwos-test-observer") -> None:
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self.output = broker.directory / f"received-{client_id}.hex"
        self._errors = broker.directory / f"received-{client_id}.err"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the broker has acknowledged the subscription."""
        if self._process is not None:
            raise BrokerError("the subscriber is already running")
        log_offset = len(self.broker.log_text())
        with self.output.open("ab") as out, self._errors.open("ab") as err:
            self._process = subprocess.Popen(
                ["mosquitto_sub", "-h", self.broker.host, "-p", str(self.broker.open_port),
                 "-t", self.topic, "-q", "1", "-c", "-i", self.client_id, "-F", "%x"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )  # fmt: skip
        try:
            self.broker.wait_for_log(f"Sending SUBACK to {self.client_id}", after=log_offset)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the subscriber process. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def payloads(self) -> list[bytes]:
        """Every payload received so far, in order (complete lines only)."""
        try:
            text = self.output.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # the last piece is "" or a line still being written
        return [bytes.fromhex(line) for line in lines]

    def wait_for(self, count: int, *, timeout: float = 10.0) -> list[bytes]:
        """Block until at least ``count`` payloads arrived (or raise `BrokerError` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.payloads()
            if len(received) >= count:
                return received
            if time.monotonic() > deadline or (
                self._process is not None and self._process.poll() is not None
            ):
                errors = self._errors.read_text(errors="replace") if self._errors.exists() else ""
                raise BrokerError(
                    f"subscriber got {len(received)} of {count} payloads in {timeout} s {errors}"
                )
            time.sleep(0.02)

    async def receive(self, count: int) -> list[bytes]:
        """`wait_for` for trio code (polls with ``trio.sleep``); bound it with ``trio.fail_after``."""
        import trio

        while len(received := self.payloads()) < count:  # noqa: ASYNC110 -- another process writes the file
            await trio.sleep(0.02)
        return received

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
