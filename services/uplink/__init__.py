"""The cloud uplink: campaigns choose bus data, a durable outbox stores it, transports deliver it.

`Uplink` is the service (plugin ``uplink``). The pure parts live here (no trio, no network):
campaigns and their filter (`Campaign`, `CampaignFilter`,
`Keep`), the batch wire format (`BatchBuilder`, `decode_batch`), the SQLite outbox (`Outbox`), and the
transport interface (`UplinkTransport`, `TransportError`, `TransportFactory`) with the embedded
`FileTransport` and, for tests, `MemoryTransport`. See ``docs/uplink.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.uplink._azure import AzureDialect
    from services.uplink._azure_config import AzureConfig, DpsConfig
    from services.uplink._azure_transport import AzureTransport
    from services.uplink._batch import (
        DEFAULT_MAX_BATCH_BYTES,
        Batch,
        BatchBuilder,
        BatchError,
        BatchHeader,
        BatchSample,
        OpaqueValue,
        SampleTooLargeError,
        decode_batch,
        encode_batch,
        prepare_value,
        read_header,
    )
    from services.uplink._campaign import Campaign, CampaignFilter, Keep, Mode
    from services.uplink._file import FileTransport, batch_file_name
    from services.uplink._memory import MemoryTransport
    from services.uplink._mqtt import MqttStatistics, MqttTransport
    from services.uplink._mqtt_config import MqttConfig
    from services.uplink._outbox import (
        Damage,
        MovedAside,
        Outbox,
        OutboxError,
        OutboxStatistics,
        OutboxStorageError,
        Row,
        StorageState,
        min_quota_bytes,
    )
    from services.uplink._ratelimit import TokenBucket
    from services.uplink._service import (
        Uplink,
        UplinkConfig,
        UplinkStatus,
        configured_transport,
        fetch_state_method,
        status_topic,
    )
    from services.uplink._state import StateTemplate, StateTracker
    from services.uplink._transport import TransportError, TransportFactory, UplinkTransport

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "AzureConfig",
    "AzureDialect",
    "AzureTransport",
    "Batch",
    "BatchBuilder",
    "BatchError",
    "BatchHeader",
    "BatchSample",
    "Campaign",
    "CampaignFilter",
    "Damage",
    "DpsConfig",
    "FileTransport",
    "Keep",
    "MemoryTransport",
    "Mode",
    "MovedAside",
    "MqttConfig",
    "MqttStatistics",
    "MqttTransport",
    "OpaqueValue",
    "Outbox",
    "OutboxError",
    "OutboxStatistics",
    "OutboxStorageError",
    "Row",
    "SampleTooLargeError",
    "StateTemplate",
    "StateTracker",
    "StorageState",
    "TokenBucket",
    "TransportError",
    "TransportFactory",
    "Uplink",
    "UplinkConfig",
    "UplinkStatus",
    "UplinkTransport",
    "batch_file_name",
    "configured_transport",
    "decode_batch",
    "encode_batch",
    "fetch_state_method",
    "min_quota_bytes",
    "prepare_value",
    "read_header",
    "status_topic",
]

#: The private module each public name is defined in. Each is imported when one of its names is first used
#: (PEP 562), not with the package: an uplink that writes files never loads the MQTT transport.
_LAZY: dict[str, str] = {
    "AzureDialect": "_azure",
    "AzureConfig": "_azure_config",
    "DpsConfig": "_azure_config",
    "AzureTransport": "_azure_transport",
    "DEFAULT_MAX_BATCH_BYTES": "_batch",
    "Batch": "_batch",
    "BatchBuilder": "_batch",
    "BatchError": "_batch",
    "BatchHeader": "_batch",
    "BatchSample": "_batch",
    "OpaqueValue": "_batch",
    "SampleTooLargeError": "_batch",
    "decode_batch": "_batch",
    "encode_batch": "_batch",
    "prepare_value": "_batch",
    "read_header": "_batch",
    "Campaign": "_campaign",
    "CampaignFilter": "_campaign",
    "Keep": "_campaign",
    "Mode": "_campaign",
    "FileTransport": "_file",
    "batch_file_name": "_file",
    "MemoryTransport": "_memory",
    "MqttConfig": "_mqtt_config",
    "MqttStatistics": "_mqtt",
    "MqttTransport": "_mqtt",
    "TokenBucket": "_ratelimit",
    "Damage": "_outbox",
    "MovedAside": "_outbox",
    "Outbox": "_outbox",
    "OutboxError": "_outbox",
    "OutboxStatistics": "_outbox",
    "OutboxStorageError": "_outbox",
    "Row": "_outbox",
    "StorageState": "_outbox",
    "min_quota_bytes": "_outbox",
    "Uplink": "_service",
    "UplinkConfig": "_service",
    "UplinkStatus": "_service",
    "configured_transport": "_service",
    "fetch_state_method": "_service",
    "StateTemplate": "_state",
    "StateTracker": "_state",
    "status_topic": "_service",
    "TransportError": "_transport",
    "TransportFactory": "_transport",
    "UplinkTransport": "_transport",
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
