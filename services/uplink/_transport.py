"""The interface every uplink transport implements (the file transport, MQTT, test doubles).

The uplink service drives a transport: ``connect`` once (and again after a failure), then ``publish`` one
formed batch at a time, in outbox order, and ``close`` when it stops. A batch leaves the outbox only after
``publish`` returned for it, so ``publish`` must return only once the far side acknowledged the batch
(MQTT: PUBACK for QoS 1; the file transport: the file renamed into place and its directory synced).
Delivery is at least once: a batch may be published again with the same ``seq`` after a failure or a
restart, and the receiver drops duplicates by ``(vehicle id, seq)``.

The service does not build its transport itself: a `TransportFactory` makes it for each run (httpx's
``transport=`` seam). The default one builds what ``config.transport`` names (`FileTransport`,
`MqttTransport`); ``Uplink.with_transport(factory)`` takes another (`MemoryTransport` in tests, a cloud
dialect of an integrator's).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from services.uplink._service import UplinkConfig
    from vwos import ServiceContext


class TransportError(Exception):
    """The transport cannot connect, or the link failed during a publish.

    The message says why, for a person (``"broker refused the connection: not authorized"``). The batch
    being published stays in the outbox and is sent again later.
    """


class UplinkTransport(Protocol):
    """Where formed batches go. Implementations: ``FileTransport`` (``_file.py``), MQTT (``_mqtt.py``),
    ``MemoryTransport`` (``_memory.py``, for tests)."""

    #: A short name for logs and statistics (``"file"``, ``"mqtt"``).
    name: str

    async def connect(self) -> None:
        """Open the link; raises ``TransportError`` (with a clear reason) if it cannot."""
        ...

    async def publish(self, seq: int, payload: bytes) -> None:
        """Send one batch; return once it is acknowledged.

        Raises ``TransportError`` if the link failed: the batch stays in the outbox and is sent again.
        """
        ...

    async def close(self) -> None:
        """Close the link (idempotent)."""
        ...


class TransportFactory(Protocol):
    """Makes the transport of one run of the uplink service.

    Called once each time the service starts, with its config and its `vwos.ServiceContext` (the vehicle
    id, the state directory, the logger); the service enters the returned async context manager for as long
    as it runs and publishes through the transport it yields. Leaving it releases the transport (a
    connection's tasks, a socket).
    """

    def __call__(
        self, config: UplinkConfig, ctx: ServiceContext, /
    ) -> AbstractAsyncContextManager[UplinkTransport]: ...
