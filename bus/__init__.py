"""vwos's typed publish/subscribe bus: topics, samples, subscriptions, methods, permissions, codecs.

The bus knows nothing of supervisors, CAN or MQTT. See ``docs/bus.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bus._broker import ConnectionLimits, PeerCredentials, prepare_socket_dir, serve_unix
    from bus._bus import (
        Bus,
        BusClient,
        BusStatistics,
        Publisher,
        TopicStatistics,
        UndeclaredSubscription,
    )
    from bus._codec import Codec, default_codec
    from bus._condition import Condition, ConditionError, Trigger, TriggerMode
    from bus._errors import (
        BusError,
        CallTimeoutError,
        CodecError,
        LimitExceededError,
        MethodAlreadyServedError,
        MethodError,
        NoSuchMethodError,
        PermissionDeniedError,
        RemoteError,
        SchemaMismatchError,
        StaleValueError,
        TopicError,
        UnknownTopicError,
        ValueRefusedError,
    )
    from bus._handle import DEFAULT_CALL_TIMEOUT, MAX_SUBSCRIPTION_PATTERNS, BusHandle, PublisherHandle
    from bus._messages import (
        DEFAULT_MAX_FRAME,
        PROTOCOL_VERSION,
        ProtocolError,
    )
    from bus._pattern import MAX_NAME_LENGTH, MAX_SEGMENT_LENGTH, MAX_SEGMENTS, check_pattern, covers, matches
    from bus._permissions import Action, Permissions
    from bus._remote import (
        BrokerRefusedError,
        ConnectionLostError,
        RemoteBusClient,
        RemotePublisher,
        connect_unix,
    )
    from bus._sample import NotAvailable, Sample
    from bus._schema import EnumMember, Record, TypeSchema
    from bus._subscription import Subscription, SubscriptionStatistics
    from bus._topic import Method, Overflow, QoS, Topic

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "MAX_NAME_LENGTH",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "MAX_SUBSCRIPTION_PATTERNS",
    "PROTOCOL_VERSION",
    "Action",
    "BrokerRefusedError",
    "Bus",
    "BusClient",
    "BusError",
    "BusHandle",
    "BusStatistics",
    "CallTimeoutError",
    "Codec",
    "CodecError",
    "Condition",
    "ConditionError",
    "ConnectionLimits",
    "ConnectionLostError",
    "EnumMember",
    "LimitExceededError",
    "Method",
    "MethodAlreadyServedError",
    "MethodError",
    "NoSuchMethodError",
    "NotAvailable",
    "Overflow",
    "PeerCredentials",
    "PermissionDeniedError",
    "Permissions",
    "ProtocolError",
    "Publisher",
    "PublisherHandle",
    "QoS",
    "Record",
    "RemoteBusClient",
    "RemoteError",
    "RemotePublisher",
    "Sample",
    "SchemaMismatchError",
    "StaleValueError",
    "Subscription",
    "SubscriptionStatistics",
    "Topic",
    "TopicError",
    "TopicStatistics",
    "Trigger",
    "TriggerMode",
    "TypeSchema",
    "UndeclaredSubscription",
    "UnknownTopicError",
    "ValueRefusedError",
    "check_pattern",
    "connect_unix",
    "covers",
    "default_codec",
    "matches",
    "prepare_socket_dir",
    "serve_unix",
]

#: The private module each public name is defined in. Each is imported when one of its names is first used
#: (PEP 562), not with the package: a process that only talks to a broker does not load the broker, and one
#: bus in a process does not load the remote client.
_LAZY: dict[str, str] = {
    "Condition": "_condition",
    "ConditionError": "_condition",
    "Trigger": "_condition",
    "TriggerMode": "_condition",
    "ConnectionLimits": "_broker",
    "PeerCredentials": "_broker",
    "prepare_socket_dir": "_broker",
    "serve_unix": "_broker",
    "Bus": "_bus",
    "BusClient": "_bus",
    "BusStatistics": "_bus",
    "Publisher": "_bus",
    "TopicStatistics": "_bus",
    "UndeclaredSubscription": "_bus",
    "Codec": "_codec",
    "EnumMember": "_schema",
    "Record": "_schema",
    "TypeSchema": "_schema",
    "default_codec": "_codec",
    "BusError": "_errors",
    "CallTimeoutError": "_errors",
    "CodecError": "_errors",
    "LimitExceededError": "_errors",
    "MethodAlreadyServedError": "_errors",
    "MethodError": "_errors",
    "NoSuchMethodError": "_errors",
    "PermissionDeniedError": "_errors",
    "RemoteError": "_errors",
    "SchemaMismatchError": "_errors",
    "StaleValueError": "_errors",
    "TopicError": "_errors",
    "UnknownTopicError": "_errors",
    "ValueRefusedError": "_errors",
    "DEFAULT_CALL_TIMEOUT": "_handle",
    "MAX_SUBSCRIPTION_PATTERNS": "_handle",
    "BusHandle": "_handle",
    "PublisherHandle": "_handle",
    "DEFAULT_MAX_FRAME": "_messages",
    "PROTOCOL_VERSION": "_messages",
    "ProtocolError": "_messages",
    "MAX_NAME_LENGTH": "_pattern",
    "MAX_SEGMENT_LENGTH": "_pattern",
    "MAX_SEGMENTS": "_pattern",
    "check_pattern": "_pattern",
    "covers": "_pattern",
    "matches": "_pattern",
    "Action": "_permissions",
    "Permissions": "_permissions",
    "BrokerRefusedError": "_remote",
    "ConnectionLostError": "_remote",
    "RemoteBusClient": "_remote",
    "RemotePublisher": "_remote",
    "connect_unix": "_remote",
    "NotAvailable": "_sample",
    "Sample": "_sample",
    "Subscription": "_subscription",
    "SubscriptionStatistics": "_subscription",
    "Method": "_topic",
    "Overflow": "_topic",
    "QoS": "_topic",
    "Topic": "_topic",
}

if not TYPE_CHECKING:  # for mypy the names are the imports above, and a misspelt one stays an error

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
