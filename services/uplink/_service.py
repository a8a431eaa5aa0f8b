"""The uplink service: campaigns collect samples from the bus into the durable outbox; batches go out
through a transport (MQTT, or files when no broker is configured) and leave the outbox once acknowledged."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from bus import Overflow, Subscription, Topic, default_codec
from services.uplink._batch import MIN_MAX_BATCH_BYTES
from services.uplink._campaign import Campaign, CampaignFilter
from services.uplink._file import FileTransport
from services.uplink._mqtt import MqttConfig, MqttTransport
from services.uplink._outbox import Outbox, Row
from services.uplink._transport import TransportError, UplinkTransport
from vwos import BackoffPolicy, Service, ServiceContext


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be positive, not {value}")


def _max_batch_bytes(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < MIN_MAX_BATCH_BYTES:
        raise ValueError(f"must be at least {MIN_MAX_BATCH_BYTES} bytes, not {value}")


def _campaigns(_: object, attribute: attrs.Attribute[Any], value: tuple[Campaign, ...]) -> None:
    if not value:
        raise ValueError("at least one campaign is needed: [[services.NAME.config.campaigns]]")
    names = [c.name for c in value]
    if len(set(names)) != len(names):
        raise ValueError(f"campaign names must be unique: {names}")


def _vehicle_id(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or any(c in value for c in "/+#\0 ") or len(value) > 128:
        raise ValueError(f"{value!r} must be 1-128 characters without '/', '+', '#', spaces or NUL")


@attrs.frozen
class UplinkConfig:
    """The uplink's ``[services.NAME.config]``: the vehicle, its campaigns, where batches go, the outbox."""

    vehicle_id: str = attrs.field(
        validator=_vehicle_id, metadata={"help": "names the vehicle in every batch"}
    )
    campaigns: tuple[Campaign, ...] = attrs.field(validator=_campaigns, metadata={"help": "what to collect"})
    transport: Literal["file", "mqtt"] = attrs.field(
        default="file", metadata={"help": "file (no broker: batches as files) | mqtt"}
    )
    directory: Path | None = attrs.field(
        default=None, metadata={"help": "file transport: where batch files go (default: state dir/outgoing)"}
    )
    mqtt: MqttConfig | None = attrs.field(default=None, metadata={"help": "the broker, for transport = mqtt"})
    quota_mb: float = attrs.field(
        default=64.0, validator=_positive, metadata={"help": "disk quota of the outbox"}
    )
    max_batch_bytes: int = attrs.field(
        default=131072,
        validator=_max_batch_bytes,
        metadata={"help": "at most this many bytes per batch (128 KiB: AWS IoT Core's limit)"},
    )
    compress: bool = attrs.field(default=True, metadata={"help": "zlib-compress batches"})
    synchronous: Literal["normal", "full"] = attrs.field(
        default="normal", metadata={"help": "normal: survives a process crash; full: a power loss too"}
    )
    flush_interval: float = attrs.field(
        default=0.05, validator=_positive, metadata={"help": "seconds between commits of collected samples"}
    )
    batch_delay: float = attrs.field(
        default=2.0,
        validator=_positive,
        metadata={"help": "seconds a sample waits at most for a fuller batch"},
    )
    queue_size: int = attrs.field(
        default=100_000, metadata={"help": "samples the bus queues for the uplink before it drops the oldest"}
    )
    status_period: float = attrs.field(
        default=5.0, validator=_positive, metadata={"help": "seconds between status samples"}
    )
    reconnect: BackoffPolicy = attrs.field(
        factory=lambda: BackoffPolicy(initial=0.5, multiplier=2.0, max_delay=60.0, jitter=0.2),
        metadata={
            "help": "backoff between connection attempts; the count starts over at each connect "
            "(reset_after is not used)"
        },
    )

    def __attrs_post_init__(self) -> None:
        if self.transport == "mqtt":
            if self.mqtt is None:
                raise ValueError("transport = 'mqtt' needs an [services.NAME.config.mqtt] table")
            limit = self.mqtt.max_message_size
            if self.max_batch_bytes > limit:  # MqttTransport.publish would refuse such batches, forever
                raise ValueError(
                    f"max_batch_bytes = {self.max_batch_bytes} is more than mqtt.max_message_size = {limit}: "
                    "each batch is one MQTT message, and a larger one would be refused and never leave the "
                    f"outbox; set max_batch_bytes to at most {limit} (or raise max_message_size, if the "
                    "broker allows it)"
                )


@default_codec.register(name="vwos.uplink.UplinkStatus")
@attrs.frozen
class UplinkStatus:
    """What ``Uplink.<name>.Status`` carries."""

    connected: bool
    transport: str
    last_error: str
    accepted: int
    stored_samples: int
    stored_bytes: int
    sent_batches: int
    sent_samples: int
    dropped_quota: int
    dropped_ttl: int
    refused: int
    dropped_before_outbox: int


def status_topic(service: str) -> Topic[UplinkStatus]:
    """The topic an uplink service called ``service`` reports its progress and losses on."""
    return Topic(f"Uplink.{service}.Status", UplinkStatus, description="uplink progress and losses")


class Uplink(Service[UplinkConfig]):
    """Collects campaigns from the bus into a crash-safe outbox and ships them in batches."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self.ctx = ctx
        self._lock = trio.Lock()  # the outbox is used from one thread at a time
        self._pending: list[Row] = []
        self._connected = False
        self._last_error = ""
        self._refused = 0
        #: Unformed bytes in the outbox from which a batch goes out at once, not after batch_delay.
        self._ready_bytes = cfg.max_batch_bytes // 3
        self._batch_ready = trio.Event()
        self.outbox = await trio.to_thread.run_sync(self._open_outbox)
        try:
            filt = CampaignFilter(cfg.campaigns)
            self._status = ctx.bus.publisher(status_topic(ctx.name))
            subs = [
                ctx.bus.subscribe(pattern, queue_size=cfg.queue_size, overflow=Overflow.DROP_OLDEST)
                for pattern in filt.patterns
            ]
            self._subs = subs
            async with trio.open_nursery() as nursery:
                for index, sub in enumerate(subs):
                    nursery.start_soon(self._collect, sub, index, filt)
                nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._report)
                task_status.started()
        finally:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                await self._flush()  # what was collected but not yet committed: keep it on a clean stop
                await trio.to_thread.run_sync(self.outbox.close)

    def _open_outbox(self) -> Outbox:
        cfg = self.config
        outbox = Outbox(
            self.ctx.state_dir / "outbox.sqlite",
            quota_bytes=int(cfg.quota_mb * 1024 * 1024),
            vehicle_id=cfg.vehicle_id,
            max_batch_bytes=cfg.max_batch_bytes,
            compress=cfg.compress,
            synchronous=cfg.synchronous,
        )
        if outbox.moved_aside is not None:
            self.ctx.log.warning(
                "outbox file was unusable; moved aside, starting a fresh one", detail=str(outbox.moved_aside)
            )
        stats = outbox.statistics()
        self.ctx.log.info(
            "outbox open",
            path=str(outbox.path),
            stored_samples=stats.stored_samples,
            unacked_batches=stats.formed_batches,
        )
        return outbox

    # -- collect and commit ---------------------------------------------------------------------------

    async def _collect(self, sub: Subscription[Any], index: int, filt: CampaignFilter) -> None:
        """Collect what ``sub``, the subscription to ``filt.patterns[index]``, delivers. With overlapping
        patterns a sample arrives once per matching subscription: ``keep`` takes it from one only."""
        keep = filt.keep
        while True:
            try:
                batch = await sub.receive_batch()
            except trio.ClosedResourceError:
                return
            pending = self._pending  # looked up per batch: _flush swaps the list between awaits
            for s in batch:
                k = keep(s.topic, s.value, s.bus_time, index)
                if k is not None:
                    pending.append((s.topic, s.value, s.timestamp, k))

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(self.config.flush_interval)
            await self._flush()
            self.ctx.heartbeat()

    async def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []  # the collectors append to the new list from now on
        async with self._lock:
            full = await trio.to_thread.run_sync(self._accept, rows)
        if full:
            self._batch_ready.set()

    def _accept(self, rows: list[Row]) -> bool:
        """Commit ``rows`` (in a worker thread); True once a batch's worth is stored."""

        def refused(topic: str, reason: str) -> None:
            self._refused += 1
            self.ctx.log.warning("sample refused by the outbox", topic=topic, reason=reason)

        self.outbox.accept(rows, now=time.time(), on_refused=refused)
        return self.outbox.unformed_bytes >= self._ready_bytes

    # -- send -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[UplinkTransport]:
        cfg = self.config
        if cfg.transport == "mqtt":
            assert cfg.mqtt is not None
            async with MqttTransport(cfg.mqtt, cfg.vehicle_id, log=self.ctx.log) as mqtt:
                yield mqtt
        else:
            directory = cfg.directory if cfg.directory is not None else self.ctx.state_dir / "outgoing"
            yield FileTransport(directory)

    async def _send_loop(self) -> None:
        cfg = self.config
        rng = random.Random()
        failures = 0
        async with self._transport() as transport:
            while True:
                try:
                    await transport.connect()
                    self._connected, failures = True, 0
                    self.ctx.log.info("uplink connected", transport=transport.name)
                    self._publish_status()
                    await self._send_batches(transport)
                except TransportError as exc:
                    failures += 1
                    if self._connected or self._last_error != str(exc):
                        self.ctx.log.warning("uplink link failed; batches stay in the outbox", error=str(exc))
                    self._connected, self._last_error = False, str(exc)
                    self._publish_status()
                    await transport.close()
                    await trio.sleep(cfg.reconnect.delay(failures, rng.random()))

    async def _send_batches(self, transport: UplinkTransport) -> None:
        cfg = self.config
        last_sent = trio.current_time()
        while True:
            with trio.move_on_at(last_sent + cfg.batch_delay):
                await self._batch_ready.wait()
            self._batch_ready = trio.Event()
            while True:
                async with self._lock:
                    item = await trio.to_thread.run_sync(self.outbox.next_batch, time.time())
                if item is None:
                    break
                seq, payload = item
                await transport.publish(seq, payload)  # returns once acknowledged
                async with self._lock:
                    await trio.to_thread.run_sync(self.outbox.ack, seq)
                if self.outbox.unformed_bytes < self._ready_bytes:
                    break  # the rest waits for a fuller batch, at most batch_delay
            last_sent = trio.current_time()

    # -- status ---------------------------------------------------------------------------------------

    def status(self) -> UplinkStatus:
        s = self.outbox.statistics()
        return UplinkStatus(
            connected=self._connected,
            transport=self.config.transport,
            last_error=self._last_error,
            accepted=s.accepted,
            stored_samples=s.stored_samples + s.formed_samples,
            stored_bytes=s.stored_bytes,
            sent_batches=s.acked_batches,
            sent_samples=s.acked_samples,
            dropped_quota=s.dropped_quota,
            dropped_ttl=s.dropped_ttl,
            refused=self._refused,
            dropped_before_outbox=sum(sub.statistics().dropped for sub in self._subs),
        )

    def _publish_status(self) -> None:
        self._status.publish_nowait(self.status())

    async def _report(self) -> None:
        last: tuple[int, int] = (0, 0)
        while True:
            await trio.sleep(self.config.status_period)
            async with self._lock:
                status = self.status()
            self._status.publish_nowait(status)
            dropped = (status.dropped_quota, status.dropped_ttl)
            if dropped != last:
                self.ctx.log.warning(
                    "uplink dropped data", dropped_quota=status.dropped_quota, dropped_ttl=status.dropped_ttl
                )
                last = dropped
