"""The cloud uplink: campaigns choose bus data, a durable outbox stores it, transports deliver it.

`Uplink` is the service (plugin ``uplink``). The pure parts live here (no trio, no network):
campaigns and their filter (`Campaign`, `CampaignFilter`,
`Keep`), the batch wire format (`BatchBuilder`, `decode_batch`), the SQLite outbox (`Outbox`), and the
transport interface (`UplinkTransport`, `TransportError`, `TransportFactory`) with the embedded
`FileTransport` and, for tests, `MemoryTransport`. See ``docs/uplink.md``.
"""

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
from services.uplink._mqtt import MqttConfig, MqttStatistics, MqttTransport, TokenBucket
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
from services.uplink._service import Uplink, UplinkConfig, UplinkStatus, configured_transport, status_topic
from services.uplink._transport import TransportError, TransportFactory, UplinkTransport

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "Batch",
    "BatchBuilder",
    "BatchError",
    "BatchHeader",
    "BatchSample",
    "Campaign",
    "CampaignFilter",
    "Damage",
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
    "min_quota_bytes",
    "prepare_value",
    "read_header",
    "status_topic",
]
