"""vwos's typed publish/subscribe bus: topics, samples, subscriptions, methods, permissions, codecs.

The bus knows nothing of supervisors, CAN or MQTT. See ``docs/bus.md``.
"""

from bus._bus import DEFAULT_CALL_TIMEOUT, Bus, BusClient, BusStatistics, Publisher, TopicStatistics
from bus._codec import Codec, default_codec
from bus._errors import (
    BusError,
    CallTimeoutError,
    CodecError,
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
from bus._pattern import covers, matches
from bus._permissions import Action, Permissions
from bus._sample import Sample
from bus._subscription import Subscription, SubscriptionStatistics
from bus._topic import Method, Overflow, QoS, Topic

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "Action",
    "Bus",
    "BusClient",
    "BusError",
    "BusStatistics",
    "CallTimeoutError",
    "Codec",
    "CodecError",
    "Method",
    "MethodAlreadyServedError",
    "MethodError",
    "NoSuchMethodError",
    "Overflow",
    "PermissionDeniedError",
    "Permissions",
    "Publisher",
    "QoS",
    "RemoteError",
    "Sample",
    "SchemaMismatchError",
    "StaleValueError",
    "Subscription",
    "SubscriptionStatistics",
    "Topic",
    "TopicError",
    "TopicStatistics",
    "UnknownTopicError",
    "ValueRefusedError",
    "covers",
    "default_codec",
    "matches",
]
