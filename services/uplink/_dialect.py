"""The cloud's dialect of MQTT: where telemetry goes, and what the topics of cloud -> car traffic mean.

One design, several clouds. The uplink's MQTT transport moves bytes; a `Dialect` (sans-IO, no paho, no
trio) says which topics and properties a batch is published with, what the transport subscribes to after
each CONNACK, how an incoming message reads -- a command (`CommandRequest`), a change of desired
configuration (`DesiredPatch`), the answer to a request of ours (`TwinResponse`), a message for the car
(`CloudMessage`) -- and how the car's answers are addressed (`Outgoing`). The cloud logic above it (which
bus method a command calls, how desired configuration is validated and applied) never sees a topic.

Dialects: the generic MQTT 5 one (request/response with response topic and correlation data: Azure
Event Grid's MQTT broker, HiveMQ, EMQX, mosquitto) and Azure IoT Hub's (MQTT 3.1.1, ``$iothub/...``
topics, ``$rid`` request ids, property bags in topic names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

__all__ = [
    "CloudEvent",
    "CloudMessage",
    "CommandRequest",
    "DesiredPatch",
    "Dialect",
    "Incoming",
    "Outgoing",
    "TwinResponse",
]


@attrs.frozen
class Incoming:
    """A message the transport received, as MQTT gave it (MQTT 5 fields empty under 3.1.1)."""

    topic: str
    payload: bytes
    #: MQTT 5 user properties (a property bag's entries, for dialects that put them in the topic).
    properties: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


@attrs.frozen
class Outgoing:
    """A message the car sends: a batch, a command's answer, a request of its own."""

    topic: str
    payload: bytes
    qos: int = 1
    properties: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str | None = None
    correlation_data: bytes | None = None


@attrs.frozen
class CommandRequest:
    """The cloud calls a command (Azure: a direct method): ``name`` with a JSON ``payload``.

    ``reply_to`` is whatever the dialect needs to address the answer (Azure's ``$rid``; MQTT 5's response
    topic and correlation data): pass it back to `Dialect.command_reply`, untouched.
    """

    name: str
    payload: bytes
    reply_to: Any


@attrs.frozen
class DesiredPatch:
    """The cloud changed the car's desired configuration (Azure: a desired-properties patch).

    ``version`` is the document's version after the patch (Azure's ``$version``), None when the dialect has
    none. ``document`` is the JSON object as sent (``full`` is true when it is the whole desired document,
    not a patch: the answer to a full GET, a retained message).
    """

    version: int | None
    document: bytes
    full: bool = False


@attrs.frozen
class TwinResponse:
    """The answer to a request the car sent (Azure: a twin GET or a reported-properties patch)."""

    request_id: str
    status: int
    payload: bytes
    version: int | None = None


@attrs.frozen
class CloudMessage:
    """A message for the car (Azure: cloud-to-device), published on a bus topic with its properties."""

    payload: bytes
    properties: Mapping[str, str] = attrs.field(factory=dict)


CloudEvent = CommandRequest | DesiredPatch | TwinResponse | CloudMessage


class Dialect(Protocol):
    """How one cloud speaks MQTT. Pure functions of their arguments and the dialect's own settings."""

    #: A short name for logs and status (``"mqtt5"``, ``"azure"``).
    name: str

    def telemetry(self, seq: int, payload: bytes) -> Outgoing:
        """The message one batch goes out as (its topic, QoS 1, the properties saying its encoding)."""
        ...

    def subscriptions(self) -> list[tuple[str, int]]:
        """The topic filters (with QoS) to subscribe to after each CONNACK, for cloud -> car traffic."""
        ...

    def parse(self, message: Incoming) -> CloudEvent | None:
        """What ``message`` means, or None when it is not for this dialect (logged and counted).

        Raises ``ValueError`` saying what is wrong when it is for the dialect but malformed.
        """
        ...

    def command_reply(self, reply_to: Any, status: int, payload: bytes) -> Outgoing:
        """The answer to a `CommandRequest`: an HTTP-like status (200, 400, 404, 500, 504) and JSON."""
        ...

    def get_desired(self, request_id: str) -> Outgoing | None:
        """A request for the whole desired document (sent after each connect), or None when the dialect
        receives it without asking (a retained message)."""
        ...

    def report(self, request_id: str, document: bytes) -> Outgoing:
        """A patch of the car's reported state (JSON), answered by a `TwinResponse` with ``request_id``
        where the dialect answers (Azure), else not answered."""
        ...
