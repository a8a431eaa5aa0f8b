"""The ``azure`` transport: `MqttTransport` speaking as an Azure IoT Hub device.

What it adds to the MQTT transport (``_mqtt.py``), nothing else changed there:

Credentials, at each connect
    The client id is the device id, the user name ``{hub}/{device}/?api-version=2021-04-12``, the password a
    SAS token made from the device's key (read from ``key_file`` at each connect: it can be rotated, and is
    never kept) valid for ``sas_ttl`` -- or none, with an X.509 client certificate. With DPS the hub and the
    device id come from provisioning (``_dps.py``), cached in the state directory.

Telemetry
    Each batch goes to ``devices/{id}/messages/events/`` with its property bag (`AzureDialect.telemetry`).

Renewal before the token expires, with no sample lost
    IoT Hub closes a connection when its SAS token expires. A task started at each connect sleeps until
    ``renew_margin`` before the expiry, then takes the send lock -- so the publish in flight finishes first,
    acknowledged or failed -- disconnects cleanly (DISCONNECT) and connects again with a new token. A batch
    is only ever taken out of the outbox after its PUBACK, so nothing is lost: if the renewal's connect fails,
    the next publish fails, the batch stays in the outbox and the service reconnects with its backoff. A
    publish that finds the renewal overdue (the task was late) renews first.

Re-provisioning
    When the hub refuses a cached DPS assignment (not authorised, unknown identifier: the device was moved or
    deleted), the cache is dropped and the next connect provisions again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import structlog
import trio

from services.uplink._azure import (
    AzureDialect,
    derive_device_key,
    device_resource,
    read_device_key,
    sas_token,
)
from services.uplink._azure_config import AzureConfig
from services.uplink._dps import Assignment, forget_assignment, provision
from services.uplink._mqtt import MqttTransport
from services.uplink._transport import TransportError

__all__ = ["AzureTransport", "renewal_delay"]


def renewal_delay(expiry: float, now: float, margin: float) -> float:
    """Seconds from ``now`` until a connection whose token expires at ``expiry`` is renewed (>= 0)."""
    return max(0.0, expiry - margin - now)


class AzureTransport(MqttTransport):
    """Publishes batches to Azure IoT Hub as one device (the `UplinkTransport` interface). ``async with``.

    ``state_dir`` holds the DPS cache (when ``config.dps`` is set); ``clock`` is the wall clock tokens
    expire by (tests may shift it).
    """

    name = "azure"

    def __init__(
        self,
        config: AzureConfig,
        vehicle_id: str,
        *,
        state_dir: Path | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.azure = config
        self.state_dir = state_dir
        if config.dps is not None and state_dir is None:
            raise ValueError("DPS provisioning needs a state directory for its cache")
        self.assignment: Assignment | None = None
        hub = config.hub or "provisioning.invalid"  # replaced at the first connect, from DPS
        device_id = config.device_id or vehicle_id
        self.dialect = AzureDialect(device_id)
        super().__init__(config.mqtt(hub, device_id), vehicle_id, log=log)
        self._log = self._log.bind(transport="azure")
        self.hub = config.hub
        self.device_id = device_id
        #: The DPS registration id's default (the device id configured, else the vehicle id).
        self._configured_id = device_id
        self._sas: str | None = None
        #: When the current connection's token expires (wall clock), None with a certificate.
        self.expiry: float | None = None
        #: Renewals done (reconnects for a new token).
        self.renewals = 0
        self._send_lock = trio.Lock()
        self._renew_at = math.inf  # trio's clock
        self._renewal: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<AzureTransport hub={self.hub} device={self.device_id} {self.url}>"

    # -- connect --

    async def connect(self) -> None:
        """Provision (DPS, when needed), then connect with a fresh token; renewal is scheduled."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        async with self._send_lock:
            await self._connect_with_token()
        self._schedule_renewal()

    async def _connect_with_token(self) -> None:
        config = self.azure
        if config.dps is not None:
            await self._provision()
        assert self.hub is not None
        self.config = config.mqtt(self.hub, self.device_id)
        self.dialect = AzureDialect(self.device_id)
        self.url, self.client_id = self.config.url, self.device_id
        self._log = self._log.bind(broker=self.url, hub=self.hub, device=self.device_id)
        self._sas, self.expiry = await self._token()
        try:
            await MqttTransport.connect(self)
        except TransportError as exc:
            if self.assignment is not None and _refused_identity(str(exc)):
                self._log.warning(
                    "the hub refused the provisioned device: provisioning again", error=str(exc)
                )
                assert self.state_dir is not None
                await trio.to_thread.run_sync(forget_assignment, self.state_dir)
                self.assignment = None
                self.hub, self.device_id = config.hub, self._configured_id
            raise
        finally:
            self._sas = None  # never kept beyond the connect

    async def _token(self) -> tuple[str | None, float | None]:
        config = self.azure
        if config.cert_file is not None:
            return None, None
        try:
            key = await trio.to_thread.run_sync(self._device_key)
        except ValueError as exc:
            raise TransportError(f"{self.url}: {exc}") from None
        expiry = int(time.time() + config.sas_ttl)
        assert self.hub is not None
        return sas_token(device_resource(self.hub, self.device_id), key, expiry), float(expiry)

    def _device_key(self) -> bytes:
        """The device's key: the azure table's key_file, else its DPS enrolment's (individual: the same key;
        group: derived from the group key and the registration id). In a worker thread."""
        config = self.azure
        if config.key_file is not None:
            return read_device_key(config.key_file)
        dps = config.dps
        assert dps is not None  # AzureConfig refuses a table with no key, certificate or dps
        if dps.key_file is not None:
            return read_device_key(dps.key_file)
        assert dps.group_key_file is not None
        assert self.assignment is not None
        return derive_device_key(read_device_key(dps.group_key_file), self.assignment.registration_id)

    async def _password(self) -> str | None:
        return self._sas

    async def _provision(self) -> None:
        if self.assignment is None:
            assert self.state_dir is not None
            assert self.azure.dps is not None
            self.assignment = await provision(self.azure, self._configured_id, self.state_dir, log=self._log)
        self.hub = self.assignment.hub
        self.device_id = self.assignment.device_id

    # -- renewal --

    def _schedule_renewal(self) -> None:
        if self.expiry is None or self._nursery is None:
            self._renew_at = math.inf
            return
        delay = renewal_delay(self.expiry, time.time(), self.azure.renew_margin)
        self._renew_at = trio.current_time() + delay
        scope = self._renewal = trio.CancelScope()
        self._nursery.start_soon(self._renew_later, scope)

    async def _renew_later(self, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep_until(self._renew_at)
            async with self._send_lock:
                await self._renew()
            if self._renewal is scope:
                self._schedule_renewal()

    async def _renew(self) -> None:
        """Reconnect with a new token (the send lock held: no publish in flight)."""
        link = self._link
        if link is None or not link.connected:
            self._renew_at = math.inf  # the service reconnects (with a new token) on its own
            return
        self._log.info("renewing the SAS token: reconnecting", expiry=self.expiry)
        try:
            await self._connect_with_token()
        except TransportError as exc:
            self._renew_at = math.inf
            self._log.warning("SAS renewal failed; the uplink reconnects", error=str(exc))
            return
        self.renewals += 1

    # -- publish --

    async def publish(self, seq: int, payload: bytes) -> None:
        """Publish one batch with its property bag; return once IoT Hub acknowledged it (PUBACK)."""
        async with self._send_lock:
            if trio.current_time() >= self._renew_at:
                await self._renew()
                if self._renewal is not None:
                    self._renewal.cancel()
                self._schedule_renewal()
            self.topic = self.dialect.telemetry(seq, payload).topic
            await MqttTransport.publish(self, seq, payload)


def _refused_identity(message: str) -> bool:
    return "connection refused by the broker" in message and (
        "not authorized" in message or "identifier" in message
    )
