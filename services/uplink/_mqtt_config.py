"""The ``[services.NAME.config.mqtt]`` table: `MqttConfig`, its validators and MQTT's own bounds.

Plain attrs data with no I/O and no paho: every uplink's config holds one, whatever its transport.
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Final, Literal

import attrs

__all__ = ["MQTT_MAX_PAYLOAD", "MqttConfig", "Protocol"]

#: MQTT's largest packet (its remaining-length field ends at 256 MiB).
MQTT_MAX_PAYLOAD = 268_435_455
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


def _port(_: object, __: attrs.Attribute[Any], value: int | None) -> None:
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
