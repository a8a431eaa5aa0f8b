"""The ``[services.NAME.config.azure]`` table: `AzureConfig` (an IoT Hub device) and `DpsConfig` (its
provisioning). Plain attrs data, no I/O: the keys are read from their files at each connect.

IoT Hub's own rules are the defaults and the bounds: MQTT 3.1.1 over TLS on 8883, at most 256 KB per
message, 100 messages per second (an S1 unit's quota), user names and SAS tokens as ``_azure.py`` makes them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Final

import attrs

from services.uplink._azure import API_VERSION, MAX_MESSAGE_BYTES, S1_RATE_LIMIT, check_device_id
from services.uplink._mqtt_config import MqttConfig, _burst, _help, _port
from services.uplink._mqtt_config import _positive_seconds as _seconds

__all__ = ["DPS_ENDPOINT", "AzureConfig", "DpsConfig"]

#: The Device Provisioning Service's global endpoint.
DPS_ENDPOINT: Final = "global.azure-devices-provisioning.net"
#: SAS token lifetimes vwos accepts: from 10 s (tests) to a year.
_MIN_TTL, _MAX_TTL = 10.0, 365 * 86400.0
#: How long before its token expires a connection is renewed, at most (and at most a fifth of the ttl).
RENEW_MARGIN: Final = 300.0
#: IoT Hub drops a connection idle for 1.5 times its keepalive, and accepts at most 1177 s.
_MAX_KEEPALIVE: Final = 1177
_HOST: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ID_SCOPE: Final = re.compile(r"0ne[0-9A-Za-z]{8}")
_REGISTRATION_ID: Final = re.compile(r"[a-z0-9\-._:]{1,128}")


def _host(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and _HOST.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not a host name (e.g. 'myhub.azure-devices.net')")


def _device_id(_: object, __: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_device_id(value)


def _ttl(_: object, __: attrs.Attribute[float], value: float) -> None:
    if not _MIN_TTL <= value <= _MAX_TTL:  # also refuses NaN and inf
        raise ValueError(f"expected seconds from {_MIN_TTL:g} to {_MAX_TTL:g} (a year), got {value}")


def _keepalive(_: object, __: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= _MAX_KEEPALIVE:
        raise ValueError(f"expected seconds from 1 to {_MAX_KEEPALIVE} (IoT Hub's limit), got {value}")


def _rate(_: object, __: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected messages per second >= 0 (0: no limit), got {value}")


def _message_size(_: object, __: attrs.Attribute[int], value: int) -> None:
    if not 1024 <= value <= MAX_MESSAGE_BYTES:
        raise ValueError(
            f"expected bytes from 1024 to {MAX_MESSAGE_BYTES} (IoT Hub refuses messages over 256 KB), "
            f"got {value}"
        )


def _cert_key(instance: Any, attribute: attrs.Attribute[Any], value: Path | None) -> None:
    if value is not None and instance.cert_file is None:
        raise ValueError(f"{attribute.name} needs cert_file (the client certificate it belongs to)")


def _id_scope(_: object, __: attrs.Attribute[str], value: str) -> None:
    if _ID_SCOPE.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not a DPS ID scope (0ne and 8 letters or digits, e.g. 0ne00ABC123)")


def _registration_id(_: object, __: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and _REGISTRATION_ID.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not a DPS registration id: 1-128 lower-case letters, digits and - . _ :"
        )


@attrs.frozen
class DpsConfig:
    """``[services.NAME.config.azure.dps]``: provision the device through the Device Provisioning Service.

    The assigned hub and device id are cached in the service's state directory and reused; the device is
    provisioned again when the hub refuses it. Authentication: an individual enrolment's key
    (``key_file``), a group enrolment's key (``group_key_file``: the device's key is derived from it and the
    registration id), or the azure table's X.509 certificate (``cert_file``).
    """

    id_scope: str = attrs.field(validator=_id_scope, metadata=_help("The DPS instance's ID scope (0ne...)."))
    registration_id: str | None = attrs.field(
        default=None,
        validator=_registration_id,
        metadata=_help("The enrolment's registration id; default: the device id, else the vehicle id."),
    )
    endpoint: str = attrs.field(
        default=DPS_ENDPOINT, validator=_host, metadata=_help("The DPS host name (global endpoint).")
    )
    key_file: Path | None = attrs.field(
        default=None, metadata=_help("An individual enrolment's symmetric key (base64, one line).")
    )
    group_key_file: Path | None = attrs.field(
        default=None,
        metadata=_help("A group enrolment's key; the device key is HMAC-SHA256(group key, registration id)."),
    )
    port: int = attrs.field(default=8883, validator=_port, metadata=_help("The DPS port."))
    timeout: float = attrs.field(
        default=60.0, validator=_seconds, metadata=_help("Seconds a whole registration may take.")
    )

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.group_key_file is not None:
            raise ValueError("give dps.key_file or dps.group_key_file, not both")


@attrs.frozen
class AzureConfig:
    """``[services.NAME.config.azure]``: the uplink as an Azure IoT Hub device (``transport = "azure"``).

    Authentication by SAS token -- made from ``key_file`` (the device's symmetric key, never the key
    itself in the config), valid for ``sas_ttl`` seconds, renewed before it expires by reconnecting -- or by
    an X.509 client certificate (``cert_file``, ``cert_key_file``). With ``dps``, ``hub`` and ``device_id``
    come from provisioning.
    """

    hub: str | None = attrs.field(
        default=None,
        validator=_host,
        metadata=_help("The IoT Hub's host name (myhub.azure-devices.net); from DPS when dps is set."),
    )
    device_id: str | None = attrs.field(
        default=None, validator=_device_id, metadata=_help("The device id; default: the vehicle id.")
    )
    key_file: Path | None = attrs.field(
        default=None, metadata=_help("The device's symmetric key (base64, one line), for SAS tokens.")
    )
    cert_file: Path | None = attrs.field(
        default=None, metadata=_help("PEM X.509 client certificate (instead of a key_file).")
    )
    cert_key_file: Path | None = attrs.field(
        default=None,
        validator=_cert_key,
        metadata=_help("PEM private key of cert_file (unencrypted); default: the key is in cert_file."),
    )
    sas_ttl: float = attrs.field(
        default=3600.0, validator=_ttl, metadata=_help("Seconds each SAS token is valid for.")
    )
    gateway_host: str | None = attrs.field(
        default=None,
        validator=_host,
        metadata=_help("Connect to this host instead of the hub (an IoT Edge gateway); TLS checks it."),
    )
    ca_file: Path | None = attrs.field(
        default=None,
        metadata=_help("PEM CA file the hub's certificate is checked against; default: system's."),
    )
    port: int = attrs.field(default=8883, validator=_port, metadata=_help("IoT Hub's MQTT port."))
    keepalive: int = attrs.field(
        default=60, validator=_keepalive, metadata=_help("Seconds between keepalive pings (at most 1177).")
    )
    connect_timeout: float = attrs.field(
        default=10.0, validator=_seconds, metadata=_help("Seconds to connect.")
    )
    ack_timeout: float = attrs.field(
        default=30.0, validator=_seconds, metadata=_help("Seconds to wait for a message's PUBACK.")
    )
    rate_limit: float = attrs.field(
        default=S1_RATE_LIMIT,
        validator=_rate,
        metadata=_help("At most this many messages per second (an S1 unit: 100); 0: no limit."),
    )
    rate_burst: int = attrs.field(
        default=10, validator=_burst, metadata=_help("How many messages may go at once after a pause.")
    )
    max_message_size: int = attrs.field(
        default=MAX_MESSAGE_BYTES,
        validator=_message_size,
        metadata=_help("Largest batch, in bytes (IoT Hub: 256 KB, its property bag aside)."),
    )
    dps: DpsConfig | None = attrs.field(default=None, metadata=_help("Provision through DPS."))

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is not None:
            raise ValueError("give key_file (SAS) or cert_file (X.509), not both")
        if self.dps is None:
            if self.hub is None:
                raise ValueError("the azure table needs hub (the IoT Hub's host name), or a dps table")
            if self.key_file is None and self.cert_file is None:
                raise ValueError("the azure table needs key_file (SAS tokens) or cert_file (X.509)")
        else:
            dps = self.dps
            if dps.key_file is None and dps.group_key_file is None and self.cert_file is None:
                raise ValueError("dps needs key_file, group_key_file or the azure table's cert_file")

    @property
    def renew_margin(self) -> float:
        """How long before a SAS token expires the connection is renewed: a fifth of the ttl, at most
        5 min."""
        return min(RENEW_MARGIN, self.sas_ttl / 5)

    def mqtt(self, hub: str, device_id: str) -> MqttConfig:
        """The MQTT settings of a connection to ``hub`` as ``device_id``."""
        return MqttConfig(
            host=self.gateway_host or hub,
            port=self.port,
            topic=f"devices/{device_id}/messages/events/",
            client_id=device_id.replace("{", "{{").replace("}", "}}"),
            protocol="3.1.1",
            keepalive=self.keepalive,
            tls=True,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.cert_key_file,
            username=f"{hub}/{device_id}/?api-version={API_VERSION}",
            connect_timeout=self.connect_timeout,
            ack_timeout=self.ack_timeout,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            max_message_size=self.max_message_size,
        )
