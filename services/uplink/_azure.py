"""Azure IoT Hub's dialect of MQTT, and its credentials. Pure: no paho, no trio, no network.

IoT Hub speaks MQTT 3.1.1 over TLS on port 8883 with fixed topics:

=====================================================  =====================================================
telemetry (car -> cloud)                               ``devices/{id}/messages/events/{property bag}``
direct methods (cloud -> car, answered)                ``$iothub/methods/POST/{name}/?$rid={rid}``
the method's answer                                    ``$iothub/methods/res/{status}/?$rid={rid}``
twin GET (the whole twin)                              ``$iothub/twin/GET/?$rid={rid}``
a patch of the reported properties                     ``$iothub/twin/PATCH/properties/reported/?$rid=``
the answers to both                                    ``$iothub/twin/res/{status}/?$rid={rid}[&$version=]``
a patch of the desired properties (cloud -> car)       ``$iothub/twin/PATCH/properties/desired/?$version=``
cloud-to-device messages                               ``devices/{id}/messages/devicebound/{property bag}``
=====================================================  =====================================================

A *property bag* is ``key=value`` pairs joined by ``&``, keys and values percent-encoded (RFC 3986): the
system properties (``$.ct`` content type, ``$.ce`` content encoding, ``$.mid`` message id, ...) and the
application's own. `encode_property_bag` / `decode_property_bag` are exact inverses.

The device authenticates with a *SAS token* as its MQTT password (`sas_token`): ``SharedAccessSignature
sr={resource}&sig={signature}&se={expiry}[&skn={policy}]``, the signature being the base64 HMAC-SHA256, under
the device's symmetric key, of the URL-encoded resource (``{hub}/devices/{id}``), a newline and the expiry
(seconds since the Unix epoch) -- or with an X.509 client certificate instead (no password). The client id is
the device id; the user name ``{hub}/{id}/?api-version=2021-04-12`` (`device_username`).

`AzureDialect` is the uplink's `Dialect` for IoT Hub: what a batch goes out as, what to subscribe to, what an
incoming message means, how answers are addressed. See ``docs/azure.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from services.uplink._batch import BatchError, read_header
from services.uplink._dialect import (
    CloudEvent,
    CloudMessage,
    CommandRequest,
    DesiredPatch,
    Incoming,
    Outgoing,
    TwinResponse,
)

__all__ = [
    "API_VERSION",
    "MAX_MESSAGE_BYTES",
    "S1_RATE_LIMIT",
    "AzureDialect",
    "SasToken",
    "check_device_id",
    "decode_property_bag",
    "derive_device_key",
    "device_resource",
    "device_username",
    "encode_property_bag",
    "parse_sas_token",
    "read_device_key",
    "sas_token",
    "sign",
]

#: The IoT Hub MQTT API version vwos speaks (the user name's ``api-version``).
API_VERSION: Final = "2021-04-12"
#: IoT Hub's largest device-to-cloud message: 256 KB.
MAX_MESSAGE_BYTES: Final = 256 * 1024
#: IoT Hub's device-to-cloud quota per S1 unit: 100 messages per second (the default rate limit).
S1_RATE_LIMIT: Final = 100.0
#: The content type batches are sent with (``$.ct``): the batch envelope is one CBOR item.
CONTENT_TYPE: Final = "application/cbor"
#: The content encoding (``$.ce``): the message as a whole is not content-encoded (its body may be
#: zlib-compressed inside the envelope; ``vwos-body`` says so).
CONTENT_ENCODING: Final = "identity"

#: What a device id may hold (IoT Hub: up to 128 ASCII letters, digits and ``-.%_*?!(),:=@$'``).
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
#: What vwos puts in a ``$rid`` (it comes back unchanged in the answer's topic).
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9\-._~]{1,64}")
#: A percent sign not followed by two hex digits: not a valid escape.
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Symmetric keys IoT Hub issues are 16 to 64 bytes (base64 in the portal, the CLI and connection strings).
_KEY_BYTES: Final = (16, 64)
#: A key file is a line of base64: anything much longer is not one.
_MAX_KEY_FILE: Final = 4096


# -- device ids, user names, property bags -------------------------------------------------------------------


def check_device_id(device_id: str) -> str:
    """``device_id`` if IoT Hub allows it, else ValueError saying what it allows."""
    if not isinstance(device_id, str) or _DEVICE_ID.fullmatch(device_id) is None:
        raise ValueError(
            f"device id {device_id!r} is not an IoT Hub device id: 1-128 ASCII letters, digits and "
            "- . % _ * ? ! ( ) , : = @ $ '"
        )
    return device_id


def device_username(hub: str, device_id: str) -> str:
    """The MQTT user name a device connects with: ``{hub}/{device}/?api-version=2021-04-12``."""
    return f"{hub}/{device_id}/?api-version={API_VERSION}"


def device_resource(hub: str, device_id: str) -> str:
    """The resource a device's SAS token grants access to: ``{hub}/devices/{device}``."""
    return f"{hub}/devices/{device_id}"


def _quote(text: str) -> str:
    try:
        return urllib.parse.quote(text, safe="")
    except UnicodeEncodeError:
        raise ValueError(f"{text[:100]!r} is not UTF-8 text (a lone surrogate)") from None


def _unquote(text: str, what: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise ValueError(f"{what} {text!r}: a % not followed by two hex digits")
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {text!r}: its escapes are not UTF-8") from None


def encode_property_bag(properties: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``key=value&...``, each key and value percent-encoded (every byte but ``A-Za-z0-9-._~``)."""
    items = properties.items() if isinstance(properties, Mapping) else properties
    parts = []
    for key, value in items:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"property {key!r}={value!r}: keys must be non-empty strings, values strings")
        parts.append(f"{_quote(key)}={_quote(value)}")
    return "&".join(parts)


def decode_property_bag(text: str) -> dict[str, str]:
    """The properties of a property bag (the inverse of `encode_property_bag`).

    A key without ``=`` has the value ``""``. ValueError for an empty key, a key given twice, a bad escape
    or escapes that are not UTF-8.
    """
    properties: dict[str, str] = {}
    if not text:
        return properties
    for part in text.split("&"):
        raw_key, _, raw_value = part.partition("=")
        key = _unquote(raw_key, "property name")
        if not key:
            raise ValueError(f"property bag {text[:200]!r}: an empty property name")
        if key in properties:
            raise ValueError(f"property bag {text[:200]!r}: {key!r} is given twice")
        properties[key] = _unquote(raw_value, f"property {key!r}:")
    return properties


# -- keys and SAS tokens -------------------------------------------------------------------------------------


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not base64 (a device key as the portal or `az` shows it)") from None
    low, high = _KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"{where} holds a key of {len(key)} bytes: IoT Hub keys are {low} to {high} bytes")
    return key


def read_device_key(path: Path) -> bytes:
    """The symmetric key in ``path`` (one line of base64, as ``az iot hub device-identity show`` gives it).

    Raises ValueError (naming the file, never showing the key) if it cannot be read or is not a key.
    """
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read key_file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"key_file {path} is larger than {_MAX_KEY_FILE} bytes: not a base64 key")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"key_file {path} is not base64 text") from None
    if not text.strip():
        raise ValueError(f"key_file {path} is empty")
    return _decode_key(text, f"key_file {path}")


def decode_key(text: str, where: str = "the key") -> bytes:
    """A base64 symmetric key's bytes; ValueError naming ``where`` if it is not one."""
    return _decode_key(text, where)


def derive_device_key(group_key: bytes, registration_id: str) -> bytes:
    """A device's key under a DPS group enrolment: the HMAC-SHA256 of its registration id under the group
    enrolment's key."""
    return hmac.new(group_key, registration_id.encode("utf-8"), hashlib.sha256).digest()


def sign(key: bytes, message: str) -> str:
    """The base64 HMAC-SHA256 of ``message`` under ``key``."""
    return base64.b64encode(hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")


def sas_token(resource: str, key: bytes, expiry: int, *, policy: str | None = None) -> str:
    """A shared access signature for ``resource`` (e.g. `device_resource`), valid until ``expiry`` (Unix
    seconds): ``SharedAccessSignature sr=...&sig=...&se=...[&skn=policy]``."""
    encoded = _quote(resource)
    signature = _quote(sign(key, encoded + "\n" + str(expiry)))
    token = f"SharedAccessSignature sr={encoded}&sig={signature}&se={expiry}"
    return token if policy is None else f"{token}&skn={_quote(policy)}"


@attrs.frozen
class SasToken:
    """A SAS token's parts (`parse_sas_token`): for a hub, or a test's fake of one, to check it."""

    #: The resource, decoded (``hub/devices/id``).
    resource: str
    #: The signature, decoded (base64 text).
    signature: str
    expiry: int
    policy: str | None
    #: The resource as the token has it (URL-encoded): what was signed.
    signed_resource: str = ""

    def valid(self, key: bytes) -> bool:
        """Whether the signature is the one ``key`` makes (compared in constant time)."""
        expected = sign(key, f"{self.signed_resource or _quote(self.resource)}\n{self.expiry}")
        return hmac.compare_digest(expected.encode(), self.signature.encode())


def parse_sas_token(token: str) -> SasToken:
    """The parts of a SAS token; ValueError saying what is missing or wrong."""
    prefix = "SharedAccessSignature "
    if not token.startswith(prefix):
        raise ValueError("a SAS token starts with 'SharedAccessSignature '")
    text = token[len(prefix) :]
    fields = decode_property_bag(text)
    raw = dict(part.partition("=")[::2] for part in text.split("&"))
    unknown = sorted(set(fields) - {"sr", "sig", "se", "skn"})
    if unknown:
        raise ValueError(f"a SAS token has no field {unknown[0]!r}")
    missing = [name for name in ("sr", "sig", "se") if not fields.get(name)]
    if missing:
        raise ValueError(f"the SAS token has no {missing[0]}")
    if not fields["se"].isdigit() or len(fields["se"]) > 12:
        raise ValueError(f"the SAS token's expiry se={fields['se']!r} is not a time in seconds")
    return SasToken(fields["sr"], fields["sig"], int(fields["se"]), fields.get("skn"), raw.get("sr", ""))


# -- the dialect ---------------------------------------------------------------------------------------------


def _request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or _REQUEST_ID.fullmatch(request_id) is None:
        raise ValueError(f"request id {request_id!r}: 1-64 letters, digits and - . _ ~")
    return request_id


def _query(topic: str, query: str) -> dict[str, str]:
    """The ``?``-part of an ``$iothub`` topic, as a property bag (ValueError naming the topic)."""
    try:
        return decode_property_bag(query)
    except ValueError as exc:
        raise ValueError(f"{topic[:200]!r}: {exc}") from None


def _status(topic: str, text: str) -> int:
    if not (len(text) == 3 and text.isdigit()):
        raise ValueError(f"{topic[:200]!r}: status {text!r} is not a 3-digit code")
    return int(text)


def _version(topic: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isdigit() and len(text) <= 19):
        raise ValueError(f"{topic[:200]!r}: $version {text!r} is not a non-negative integer")
    return int(text)


def _split(topic: str, prefix: str, *, required: bool = True) -> tuple[str, dict[str, str]]:
    """``prefix{path}/?{query}`` -> (path, query); ValueError when there is no ``?`` and it is required."""
    rest = topic[len(prefix) :]
    path, sep, query = rest.partition("/?")
    if not sep:
        path, sep, query = rest.partition("?")
        if not sep:
            if required:
                raise ValueError(f"{topic[:200]!r}: no '?' with the request's properties")
            path = path.removesuffix("/")
    return path, _query(topic, query)


@attrs.define  # not frozen: the Dialect protocol's ``name`` is a plain (settable) attribute
class AzureDialect:
    """The uplink's `Dialect` for Azure IoT Hub, for one device. Pure: a function of its arguments.

    ``parse`` turns IoT Hub's topics into the uplink's events (`CommandRequest` for a direct method, with its
    ``$rid`` as ``reply_to``; `TwinResponse`; `DesiredPatch`; `CloudMessage` for a cloud-to-device message,
    its property bag decoded) and raises ValueError saying what is wrong with a malformed one.
    """

    device_id: str = attrs.field(validator=lambda _, __, value: check_device_id(value))
    name: str = "azure"

    @property
    def telemetry_topic(self) -> str:
        """Where batches go, before their property bag."""
        return f"devices/{self.device_id}/messages/events/"

    @property
    def cloud_to_device_topic(self) -> str:
        return f"devices/{self.device_id}/messages/devicebound/"

    def telemetry_properties(self, seq: int, payload: bytes) -> dict[str, str]:
        """The property bag of one batch: its content type and encoding, its seq and stream, a message id
        that is the same each time the batch is sent (``{stream}-{seq}``: a consumer can drop duplicates)."""
        properties = {"$.ct": CONTENT_TYPE, "$.ce": CONTENT_ENCODING}
        try:
            header = read_header(payload)
        except BatchError:
            header = None  # not a vwos batch (a test's payload): the seq alone
        if header is not None:
            properties["$.mid"] = f"{header.stream}-{seq}"
        properties["vwos-seq"] = str(seq)
        if header is not None:
            properties["vwos-stream"] = header.stream
            properties["vwos-body"] = "zlib" if header.compressed else "cbor"
        return properties

    def telemetry(self, seq: int, payload: bytes) -> Outgoing:
        bag = encode_property_bag(self.telemetry_properties(seq, payload))
        return Outgoing(self.telemetry_topic + bag, payload, qos=1)

    def subscriptions(self) -> list[tuple[str, int]]:
        return [
            ("$iothub/methods/POST/#", 1),
            ("$iothub/twin/res/#", 1),
            ("$iothub/twin/PATCH/properties/desired/#", 1),
            (self.cloud_to_device_topic + "#", 1),
        ]

    def parse(self, message: Incoming) -> CloudEvent | None:
        topic = message.topic
        if topic.startswith("$iothub/methods/POST/"):
            name, query = _split(topic, "$iothub/methods/POST/")
            if not name or "/" in name:
                raise ValueError(f"{topic[:200]!r}: no method name (or one with '/')")
            rid = query.get("$rid")
            if not rid:
                raise ValueError(f"{topic[:200]!r}: a direct method without $rid")
            return CommandRequest(name, message.payload, reply_to=rid)
        if topic.startswith("$iothub/twin/res/"):
            status, query = _split(topic, "$iothub/twin/res/")
            rid = query.get("$rid")
            if not rid:
                raise ValueError(f"{topic[:200]!r}: a twin response without $rid")
            return TwinResponse(
                rid, _status(topic, status), message.payload, version=_version(topic, query.get("$version"))
            )
        if topic.startswith("$iothub/twin/PATCH/properties/desired"):
            path, query = _split(topic, "$iothub/twin/PATCH/properties/desired", required=False)
            if path:
                raise ValueError(f"{topic[:200]!r}: not a desired-properties patch topic")
            version = _version(topic, query.get("$version"))
            if version is None:
                version = _document_version(message.payload, topic)
            return DesiredPatch(version, message.payload)
        if topic.startswith("devices/"):
            parts = topic.split("/", 4)
            if len(parts) < 4 or parts[2:4] != ["messages", "devicebound"]:
                return None
            if parts[1] != self.device_id:
                raise ValueError(f"{topic[:200]!r}: a cloud-to-device message for another device")
            try:
                properties = decode_property_bag(parts[4] if len(parts) == 5 else "")
            except ValueError as exc:
                raise ValueError(f"{topic[:200]!r}: {exc}") from None
            return CloudMessage(message.payload, properties)
        return None

    def command_reply(self, reply_to: Any, status: int, payload: bytes) -> Outgoing:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            raise ValueError(f"status {status!r}: a 3-digit code")
        if not isinstance(reply_to, str) or not reply_to or any(c in reply_to for c in "/+#\0"):
            raise ValueError(f"reply_to {reply_to!r}: not a $rid from a direct method")
        return Outgoing(f"$iothub/methods/res/{status}/?$rid={_quote(reply_to)}", payload, qos=1)

    def get_desired(self, request_id: str) -> Outgoing:
        return Outgoing(f"$iothub/twin/GET/?$rid={_request_id(request_id)}", b"", qos=1)

    def report(self, request_id: str, document: bytes) -> Outgoing:
        rid = _request_id(request_id)
        return Outgoing(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", document, qos=1)

    def desired_from_twin(self, response: TwinResponse) -> DesiredPatch:
        """The whole desired document from the answer to `get_desired` (IoT Hub answers a twin GET with
        ``{"desired": {...}, "reported": {...}}``); ValueError if the answer is not that."""
        if response.status != 200:
            raise ValueError(f"twin GET answered with status {response.status}")
        try:
            twin = json.loads(response.payload)
        except (ValueError, RecursionError):
            raise ValueError("twin GET: the answer is not JSON") from None
        desired = twin.get("desired") if isinstance(twin, dict) else None
        if not isinstance(desired, dict):
            raise ValueError("twin GET: the answer has no 'desired' object")
        version = desired.get("$version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("twin GET: the desired properties have no $version")
        return DesiredPatch(version, json.dumps(desired, separators=(",", ":")).encode(), full=True)


def _document_version(payload: bytes, topic: str) -> int:
    """The ``$version`` inside a desired patch (when its topic has none)."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise ValueError(f"{topic[:200]!r}: a desired patch without $version, and not JSON") from None
    version = document.get("$version") if isinstance(document, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{topic[:200]!r}: a desired patch without $version")
    return version
