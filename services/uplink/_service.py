"""The uplink service: campaigns collect samples from the bus into the durable outbox; batches go out
through a transport (MQTT, or files when no broker is configured) and leave the outbox once acknowledged."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import trio

from bus import (
    Method,
    Overflow,
    PermissionDeniedError,
    Permissions,
    Sample,
    Subscription,
    Topic,
    default_codec,
)
from services.uplink._azure import check_device_id
from services.uplink._azure_config import AzureConfig
from services.uplink._batch import MAX_BODY_BYTES, MIN_MAX_BATCH_BYTES
from services.uplink._campaign import Campaign, CampaignFilter
from services.uplink._file import FileTransport
from services.uplink._mqtt_config import MqttConfig
from services.uplink._outbox import (
    MAX_QUOTA_BYTES,
    MIN_QUOTA_BYTES,
    Outbox,
    OutboxError,
    OutboxStatistics,
    OutboxStorageError,
    Row,
    min_quota_bytes,
)
from services.uplink._state import StateTemplate, StateTracker
from services.uplink._transport import TransportError, TransportFactory, UplinkTransport
from vwos import BackoffPolicy, Service, ServiceContext

#: The longest duration a setting may be (as vwos's own: about 31 years; beyond, OS timers overflow).
_MAX_SECONDS: Final = 1_000_000_000.0
#: The quota's bounds, in MB (the outbox's own: below, not even the schema, a WAL and a batch fit).
MIN_QUOTA_MB: Final = MIN_QUOTA_BYTES / (1024 * 1024)
MAX_QUOTA_MB: Final = MAX_QUOTA_BYTES / (1024 * 1024)
#: The most samples the bus may queue for the uplink.
MAX_QUEUE_SIZE: Final = 10_000_000


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Seconds: > 0 and finite (at most about 31 years)."""
    if not 0 < value <= _MAX_SECONDS:  # also refuses NaN and inf
        raise ValueError(f"expected a number of seconds > 0 and at most {_MAX_SECONDS:.0f}, not {value}")


def _quota_mb(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not MIN_QUOTA_MB <= value <= MAX_QUOTA_MB:  # also refuses NaN and inf
        raise ValueError(f"expected a number of MB from {MIN_QUOTA_MB:g} to {MAX_QUOTA_MB:.0f}, not {value}")
    batch = instance.max_batch_bytes  # validators run once every field is set (AttributeError: it is bad)
    smallest = min_quota_bytes(batch)
    if _quota_bytes(value) < smallest:  # the outbox would refuse it when the service starts
        raise ValueError(
            f"quota_mb = {value:g} is less than four batches of max_batch_bytes = {batch:,} "
            f"({smallest / (1024 * 1024):g} MB), the least the outbox holds (one batch waiting for its "
            "acknowledgement, the samples of the next ones); raise quota_mb or lower max_batch_bytes"
        )


def _quota_bytes(quota_mb: float) -> int:
    return int(quota_mb * 1024 * 1024)


def _queue_size(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_QUEUE_SIZE:
        raise ValueError(f"expected a number of samples from 1 to {MAX_QUEUE_SIZE:,}, not {value}")


def _max_batch_bytes(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < MIN_MAX_BATCH_BYTES:
        raise ValueError(f"must be at least {MIN_MAX_BATCH_BYTES} bytes, not {value}")
    if value > MAX_BODY_BYTES:
        raise ValueError(f"must be at most {MAX_BODY_BYTES} bytes (what a reader decodes), not {value}")


def _campaigns(_: object, attribute: attrs.Attribute[Any], value: tuple[Campaign, ...]) -> None:
    if not value:
        raise ValueError("at least one campaign is needed: [[services.NAME.config.campaigns]]")
    names = [c.name for c in value]
    if len(set(names)) != len(names):
        raise ValueError(f"campaign names must be unique: {names}")


def _templates(_: object, attribute: attrs.Attribute[Any], value: tuple[StateTemplate, ...]) -> None:
    names = [t.name for t in value]
    if len(set(names)) != len(names):
        raise ValueError(f"state template names must be unique: {names}")


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
    state_templates: tuple[StateTemplate, ...] = attrs.field(
        default=(),
        validator=_templates,
        metadata={
            "help": "last known state: the latest values of topic sets, on change, periodic, on request"
        },
    )
    transport: Literal["file", "mqtt", "azure"] = attrs.field(
        default="file", metadata={"help": "file (no broker: batches as files) | mqtt | azure (IoT Hub)"}
    )
    directory: Path | None = attrs.field(
        default=None, metadata={"help": "file transport: where batch files go (default: state dir/outgoing)"}
    )
    mqtt: MqttConfig | None = attrs.field(default=None, metadata={"help": "the broker, for transport = mqtt"})
    azure: AzureConfig | None = attrs.field(
        default=None, metadata={"help": "the IoT Hub device, for transport = azure"}
    )
    quota_mb: float = attrs.field(
        default=64.0, validator=_quota_mb, metadata={"help": "disk quota of the outbox (its WAL included)"}
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
        default=100_000,
        validator=_queue_size,
        metadata={"help": "samples the bus queues for the uplink before it drops the oldest"},
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
        if self.transport == "azure":
            azure = self.azure
            if azure is None:
                raise ValueError("transport = 'azure' needs an [services.NAME.config.azure] table")
            if azure.device_id is None and azure.dps is None:
                check_device_id(self.vehicle_id)  # it is the device id: IoT Hub's rules apply
            if self.max_batch_bytes > azure.max_message_size:
                raise ValueError(
                    f"max_batch_bytes = {self.max_batch_bytes} is more than azure.max_message_size = "
                    f"{azure.max_message_size}: IoT Hub refuses messages over 256 KB, and a larger batch "
                    f"would never leave the outbox; set max_batch_bytes to at most {azure.max_message_size}"
                )
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
    #: How the outbox's storage is doing: "ok", "quota" (evicting to stay within it), "disk_full", "error"
    #: (an I/O error, a damaged file, or the outbox could not be opened: ``storage_error`` says why).
    storage: str = "ok"
    storage_error: str = ""
    #: Samples that could not be stored at all (no room left, the disk full, the storage failing).
    dropped_storage: int = 0
    #: Samples lost to damage: corrupt chunks or batches, commits a damaged WAL lost, a replaced file.
    dropped_damaged: int = 0
    #: The outbox's files on disk (database, WAL, high-water mark) and what they may take: the quota, or
    #: less when the disk has less room. Their ratio is the outbox's occupancy.
    disk_bytes: int = 0
    disk_budget: int = 0
    #: Samples condition campaigns dropped from full pre-trigger rings (their ``window_samples``).
    dropped_window: int = 0


def status_topic(service: str) -> Topic[UplinkStatus]:
    """The topic an uplink service called ``service`` reports its progress and losses on."""
    return Topic(f"Uplink.{service}.Status", UplinkStatus, description="uplink progress and losses")


def _queued(sub: Subscription[Any]) -> Iterator[list[Sample[Any]]]:
    """The batches ``sub`` holds now, without waiting."""
    while True:
        try:
            yield sub.receive_batch_nowait()
        except (trio.WouldBlock, trio.ClosedResourceError):
            return


def fetch_state_method(service: str) -> Method[str, int]:
    """The method an uplink service called ``service`` serves to store a state template's latest values now
    (the template's name; ``""``: every template). It answers how many samples it stored."""
    return Method(f"Uplink.{service}.FetchState", str, int)


def configured_transport(
    config: UplinkConfig, ctx: ServiceContext
) -> contextlib.AbstractAsyncContextManager[UplinkTransport]:
    """The `TransportFactory` the service uses by default: the transport ``config.transport`` names --
    `MqttTransport` on ``config.mqtt``, or `FileTransport` into ``config.directory`` (by default the
    service's state directory's ``outgoing``)."""
    if config.transport == "azure":
        assert config.azure is not None  # UplinkConfig refuses transport = "azure" without it
        from services.uplink._azure_transport import AzureTransport

        return AzureTransport(config.azure, config.vehicle_id, state_dir=ctx.state_dir, log=ctx.log)
    if config.transport == "mqtt":
        assert config.mqtt is not None  # UplinkConfig refuses transport = "mqtt" without it
        # Imported here: an uplink that writes files never loads the MQTT transport (nor paho).
        from services.uplink._mqtt import MqttTransport

        return MqttTransport(config.mqtt, config.vehicle_id, log=ctx.log)
    directory = config.directory if config.directory is not None else ctx.state_dir / "outgoing"
    return contextlib.nullcontext(FileTransport(directory))


#: How long the service waits between attempts to open an outbox that could not be opened.
_STORAGE_RETRY = BackoffPolicy(initial=1.0, multiplier=2.0, max_delay=30.0, jitter=0.2)


class Uplink(Service[UplinkConfig]):
    """Collects campaigns from the bus into a crash-safe outbox and ships them in batches.

    Storage faults never stop it: a full disk or a failing write is counted and reported on the status
    topic, and the outbox is always closed (its lock released) however the service ends.
    """

    outbox: Outbox | None

    def __init__(self, config: UplinkConfig, *, transport: TransportFactory | None = None) -> None:
        super().__init__(config)
        #: Makes the transport of each run: ``transport``, else the one ``config.transport`` names.
        self.transport_factory: TransportFactory = (
            transport if transport is not None else configured_transport
        )

    @classmethod
    def bus_names(cls, config: UplinkConfig) -> Permissions | None:
        """What it subscribes to (campaigns, their conditions' topics, state templates), publishes (its
        status) and serves (``FetchState``, with state templates): for the config check."""
        campaigns = CampaignFilter(config.campaigns).patterns
        templates = StateTracker(config.state_templates).patterns
        return Permissions(
            publish=("Uplink.*.Status",),
            subscribe=tuple(dict.fromkeys([*campaigns, *templates])),
            serve=("Uplink.*.FetchState",) if config.state_templates else (),
        )

    @classmethod
    def with_transport(cls, transport: TransportFactory) -> type[Uplink]:
        """This service class with ``transport`` in place of the configured one, for a `vwos.ServiceSpec`
        (which names a class the supervisor constructs with the config alone)::

            link = MemoryTransport()
            spec = ServiceSpec("uplink", Uplink.with_transport(link), config)

        The class is made at run time: it cannot be pickled, so not used with ``isolated = true``.
        """

        def __init__(self: Uplink, config: UplinkConfig) -> None:
            cls.__init__(self, config, transport=transport)

        namespace = {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__}
        return type(cls.__name__, (cls,), namespace)

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self.ctx = ctx
        self._lock = trio.Lock()  # the outbox is used from one thread at a time
        self._pending: list[Row] = []
        self._connected = False
        self._transport_name: str = cfg.transport  # the transport's own name once it is made
        self._last_error = ""
        self._refused = 0
        #: Samples the service could not hand to an outbox (none open, or it failed while storing them).
        self._dropped_unstored = 0
        #: Why no outbox is open ("" while one is).
        self._outbox_error = ""
        self._storage_logged = ""
        #: Batches the transport acknowledged whose acknowledgement the outbox could not store yet.
        self._unacked: list[tuple[str, int]] = []
        self._last_stats: OutboxStatistics | None = None
        #: Unformed bytes in the outbox from which a batch goes out at once, not after batch_delay.
        self._ready_bytes = cfg.max_batch_bytes // 3
        self._batch_ready = trio.Event()
        self._outbox_lost = trio.Event()
        self.outbox = None
        self._subs: list[Subscription[Any]] = []
        try:
            await self._open()
            filt = self._filter = CampaignFilter(cfg.campaigns)
            self._status = ctx.bus.publisher(status_topic(ctx.name))
            subs = [
                ctx.bus.subscribe(pattern, queue_size=cfg.queue_size, overflow=Overflow.DROP_OLDEST)
                for pattern in filt.patterns
            ]
            self._subs = subs
            tracker = self._tracker = StateTracker(cfg.state_templates)
            state_subs = [
                ctx.bus.subscribe(pattern, queue_size=cfg.queue_size, overflow=Overflow.DROP_OLDEST)
                for pattern in tracker.patterns
            ]
            self._state_subs = state_subs
            async with trio.open_nursery() as nursery:
                for index, sub in enumerate(subs):
                    nursery.start_soon(self._collect, sub, index, filt)
                for sub in state_subs:
                    nursery.start_soon(self._collect_state, sub, tracker)
                for index, template in enumerate(cfg.state_templates):
                    if template.period is not None:
                        nursery.start_soon(self._periodic_state, tracker, index, template.period)
                if cfg.state_templates:
                    try:
                        await nursery.start(ctx.bus.serve, fetch_state_method(ctx.name), self._fetch_state)
                    except PermissionDeniedError as exc:  # state on request is off; the rest works on
                        ctx.log.warning(
                            "state templates are not served on request: the permissions do not allow it",
                            error=str(exc),
                        )
                nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._report)
                nursery.start_soon(self._keep_open)
                task_status.started()
        finally:
            try:
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    self._drain()  # what the subscriptions hold that no collector took yet
                    await self._flush()  # what was collected but not yet committed: keep it on a clean stop
            finally:
                self._close_outbox()  # whatever the flush did: the lock is always released

    # -- the outbox: open, lose, close ----------------------------------------------------------------

    async def _open(self) -> bool:
        """Open the outbox (in a worker thread); False, logged and reported, if it cannot be opened."""
        try:
            await trio.to_thread.run_sync(self._open_outbox)
        except OutboxError as exc:
            self._outbox_error = f"the outbox cannot be opened: {exc}"
            self._log_storage(self._outbox_error)
            return False
        self._outbox_error = ""
        return True

    def _open_outbox(self) -> None:
        cfg = self.config
        outbox = Outbox(
            self.ctx.state_dir / "outbox.sqlite",
            quota_bytes=_quota_bytes(cfg.quota_mb),
            vehicle_id=cfg.vehicle_id,
            max_batch_bytes=cfg.max_batch_bytes,
            compress=cfg.compress,
            synchronous=cfg.synchronous,
        )
        self.outbox = outbox  # at once: if the task is cancelled meanwhile, run's finally closes it
        self._last_stats = stats = outbox.statistics()
        if outbox.moved_aside is not None:
            self.ctx.log.warning(
                "outbox file was unusable; moved aside, starting a fresh one", detail=str(outbox.moved_aside)
            )
        if outbox.damage is not None:
            self.ctx.log.warning(
                "outbox damage found at open: samples were lost",
                lost_samples=outbox.damage.lost_samples,
                corrupt_samples=outbox.damage.corrupt_samples,
                detail=str(outbox.damage),
            )
        self.ctx.log.info(
            "outbox open",
            path=str(outbox.path),
            stored_samples=stats.stored_samples,
            unacked_batches=stats.formed_batches,
        )

    async def _keep_open(self) -> None:
        """Open the outbox again, with backoff, whenever none is open (it could not be opened, or broke)."""
        rng = random.Random()
        failures = 0
        while True:
            if self.outbox is not None:
                await self._outbox_lost.wait()
                self._outbox_lost = trio.Event()
                failures = 0
                continue
            failures += 1
            await trio.sleep(_STORAGE_RETRY.delay(failures, rng.random()))
            async with self._lock:
                opened = self.outbox is not None or await self._open()
            if opened:
                self.ctx.log.info("outbox open again: storing samples")
                self._publish_status()
                self._batch_ready.set()

    async def _storage_failed(self, exc: OutboxStorageError) -> None:
        """Log a storage failure (once per distinct message); a damaged outbox is closed, to open it again.
        Called with the lock held."""
        self._log_storage(str(exc))
        if exc.kind == "corrupt" and self.outbox is not None:
            outbox, self.outbox = self.outbox, None
            self._last_stats = outbox.statistics()
            self._outbox_error = f"the outbox is damaged and is opened again: {exc}"
            await trio.to_thread.run_sync(outbox.close)
            self._outbox_lost.set()

    def _log_storage(self, message: str) -> None:
        if message != self._storage_logged:
            self.ctx.log.warning("uplink storage failed; samples may be dropped", error=message)
            self._storage_logged = message

    def _close_outbox(self) -> None:
        """Close the outbox now, in this thread: nothing else uses it once the tasks have ended."""
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            outbox.close()

    # -- collect and commit ---------------------------------------------------------------------------

    async def _collect(self, sub: Subscription[Any], index: int, filt: CampaignFilter) -> None:
        """Collect what ``sub``, the subscription to ``filt.patterns[index]``, delivers. With overlapping
        patterns a sample arrives once per matching subscription: ``keep`` takes it from one only."""
        while True:
            try:
                batch = await sub.receive_batch()
            except trio.ClosedResourceError:
                return
            self._take(batch, index, filt)

    def _take(self, batch: list[Sample[Any]], index: int, filt: CampaignFilter) -> None:
        keep = filt.keep
        pending = self._pending  # looked up per batch: _flush swaps the list between awaits
        start = len(pending)
        for s in batch:
            k = keep(s.topic, s.value, s.bus_time, index, s.timestamp)
            if k is not None:
                pending.append((s.topic, s.value, s.timestamp, k))
        released = filt.take_released()  # what condition campaigns' triggers let out of their rings
        if released:  # older than this batch's samples: stored before them
            pending[start:start] = released

    async def _collect_state(self, sub: Subscription[Any], tracker: StateTracker) -> None:
        """Note what a state template's subscription delivers; store what an on_change template keeps.
        A topic matched by several of the templates' patterns arrives once per subscription: a repeated
        sample changes nothing."""
        while True:
            try:
                batch = await sub.receive_batch()
            except trio.ClosedResourceError:
                return
            self._note_state(batch, tracker)

    def _note_state(self, batch: list[Sample[Any]], tracker: StateTracker) -> None:
        pending = self._pending  # looked up per batch: _flush swaps the list between awaits
        for s in batch:
            rows = tracker.observe(s.topic, s.value, s.timestamp)
            if rows:
                pending.extend(rows)

    async def _periodic_state(self, tracker: StateTracker, index: int, period: float) -> None:
        while True:
            await trio.sleep(period)
            self._pending.extend(tracker.snapshot(index))

    async def _fetch_state(self, name: str) -> int:
        """``FetchState``: store the latest values of template ``name`` ("": of every template) now."""
        tracker = self._tracker
        indexes = range(len(tracker.templates)) if name == "" else [tracker.index(name)]
        rows = [row for i in indexes for row in tracker.snapshot(i)]
        self._pending.extend(rows)
        await self._flush()
        self._batch_ready.set()  # asked for: send it without waiting for a fuller batch
        return len(rows)

    def _drain(self) -> None:
        """At stop: take what the subscriptions still queue (a collector the stop came before, on a busy
        machine) into what the last flush stores, so a clean stop keeps every sample it was given."""
        for index, sub in enumerate(self._subs):
            for batch in _queued(sub):
                self._take(batch, index, self._filter)
        for sub in getattr(self, "_state_subs", ()):
            for batch in _queued(sub):
                self._note_state(batch, self._tracker)

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(self.config.flush_interval)
            await self._flush()
            self.ctx.heartbeat()

    async def _flush(self) -> None:
        if not self._pending:
            return
        async with self._lock:
            # Taken only once the lock is held: a stop that cancels the wait for the lock leaves the rows
            # pending, and the last flush stores them (they were lost when taken before the wait).
            rows, self._pending = self._pending, []  # the collectors append to the new list from now on
            if not rows:
                return
            outbox = self.outbox
            if outbox is None:  # none could be opened: what was collected is dropped, and counted
                self._dropped_unstored += len(rows)
                return
            try:
                full = await trio.to_thread.run_sync(self._accept, outbox, rows)
            except OutboxStorageError as exc:  # a damaged file: the rows were not stored
                self._dropped_unstored += len(rows)
                await self._storage_failed(exc)
                return
        if full:
            self._batch_ready.set()

    def _accept(self, outbox: Outbox, rows: list[Row]) -> bool:
        """Commit ``rows`` (in a worker thread); True once a batch's worth is stored. A storage failure
        does not raise: the outbox counts what it could not store and says why in its statistics."""

        def refused(topic: str, reason: str) -> None:
            self._refused += 1
            self.ctx.log.warning("sample refused by the outbox", topic=topic, reason=reason)

        outbox.accept(rows, now=time.time(), on_refused=refused)
        stats = outbox.statistics()
        if stats.storage_error:
            self._log_storage(stats.storage_error)
        return outbox.unformed_bytes >= self._ready_bytes

    # -- send -----------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        cfg = self.config
        rng = random.Random()
        failures = 0
        async with self.transport_factory(cfg, self.ctx) as transport:
            self._transport_name = transport.name
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
                item = await self._next_batch()
                if item is None:
                    break  # nothing to send, or the storage failed: try again after batch_delay
                stream, seq, payload = item
                await transport.publish(seq, payload)  # returns once acknowledged
                await self._ack(stream, seq)
                outbox = self.outbox
                if outbox is None or outbox.unformed_bytes < self._ready_bytes:
                    break  # the rest waits for a fuller batch, at most batch_delay
            last_sent = trio.current_time()

    async def _next_batch(self) -> tuple[str, int, bytes] | None:
        """The next batch to publish, as ``(stream, seq, payload)``; None if there is none, or if the
        storage failed (acknowledgements it could not store before are stored first)."""
        async with self._lock:
            outbox = self.outbox
            if outbox is None:
                return None
            try:
                while self._unacked:
                    stream, seq = self._unacked[0]
                    if stream == outbox.stream:
                        await trio.to_thread.run_sync(outbox.ack, seq)
                    self._unacked.pop(0)
                item = await trio.to_thread.run_sync(outbox.next_batch, time.time())
            except OutboxStorageError as exc:
                await self._storage_failed(exc)
                return None
            return None if item is None else (outbox.stream, *item)

    async def _ack(self, stream: str, seq: int) -> None:
        async with self._lock:
            outbox = self.outbox
            if outbox is not None and outbox.stream == stream:
                try:
                    await trio.to_thread.run_sync(outbox.ack, seq)
                    return
                except OutboxStorageError as exc:
                    await self._storage_failed(exc)
            # Sent, but not yet acknowledged in the outbox: that is done before anything else is sent.
            self._unacked.append((stream, seq))

    # -- status ---------------------------------------------------------------------------------------

    def status(self) -> UplinkStatus:
        """The status now. Reads the outbox's snapshot only: safe while a worker thread uses the outbox."""
        outbox = self.outbox
        s = outbox.statistics() if outbox is not None else self._last_stats
        if outbox is not None:
            self._last_stats = s
        if outbox is None:
            storage, storage_error = "error", self._outbox_error
        elif s is not None:
            storage, storage_error = s.storage, s.storage_error
        dropped_before = sum(sub.statistics().dropped for sub in self._subs)
        filt = getattr(self, "_filter", None)
        dropped_window = 0 if filt is None else filt.window_dropped
        if s is None:
            return UplinkStatus(
                connected=self._connected,
                transport=self._transport_name,
                last_error=self._last_error,
                accepted=0,
                stored_samples=0,
                stored_bytes=0,
                sent_batches=0,
                sent_samples=0,
                dropped_quota=0,
                dropped_ttl=0,
                refused=self._refused,
                dropped_before_outbox=dropped_before,
                storage=storage,
                storage_error=storage_error,
                dropped_storage=self._dropped_unstored,
                dropped_window=dropped_window,
            )
        return UplinkStatus(
            connected=self._connected,
            transport=self._transport_name,
            last_error=self._last_error,
            accepted=s.accepted,
            stored_samples=s.stored_samples + s.formed_samples,
            stored_bytes=s.stored_bytes,
            sent_batches=s.acked_batches,
            sent_samples=s.acked_samples,
            dropped_quota=s.dropped_quota,
            dropped_ttl=s.dropped_ttl,
            refused=self._refused,
            dropped_before_outbox=dropped_before,
            storage=storage,
            storage_error=storage_error,
            dropped_storage=s.dropped_storage + self._dropped_unstored,
            dropped_damaged=s.dropped_corrupt + s.lost_damaged,
            disk_bytes=s.disk_bytes,
            disk_budget=s.disk_budget,
            dropped_window=dropped_window,
        )

    def _publish_status(self) -> None:
        self._status.publish_nowait(self.status())

    async def _report(self) -> None:
        last: tuple[int, ...] = (0, 0, 0, 0)
        while True:
            await trio.sleep(self.config.status_period)
            status = self.status()
            self._status.publish_nowait(status)
            dropped = (
                status.dropped_quota,
                status.dropped_ttl,
                status.dropped_storage,
                status.dropped_damaged,
            )
            if dropped != last:
                self.ctx.log.warning(
                    "uplink dropped data",
                    dropped_quota=status.dropped_quota,
                    dropped_ttl=status.dropped_ttl,
                    dropped_storage=status.dropped_storage,
                    dropped_damaged=status.dropped_damaged,
                    storage=status.storage,
                )
                last = dropped
