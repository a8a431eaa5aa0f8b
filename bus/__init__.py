"""vwos's typed publish/subscribe bus: topics, samples, subscriptions, methods, permissions, codecs.

The bus knows nothing of supervisors, CAN or MQTT. See ``docs/bus.md``.
"""

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
