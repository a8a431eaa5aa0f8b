"""The uplink benchmark: samples/s into the crash-safe outbox, bytes per sample on the wire, delivery rate.

Measured in one run, each rate the best of ``--repeat`` runs (median and run-to-run spread reported too):

* **accepted**: samples/s stored by ``Outbox.accept`` into a fresh outbox on disk (SQLite, WAL,
  ``synchronous=NORMAL``: each accept is a committed transaction that survives a process crash). The
  workload is what the uplink service hands over: realistic samples (floats of 36 VSS-like signals and small
  attrs records -- a position and a tyre reading -- under two campaigns of different priority), in accept
  calls of ``--call-samples`` samples each (5,000: 50 ms of samples at 100,000 samples/s).
* **bytes per sample** on the wire: the batches' payload bytes (CBOR, zlib) over their samples, beside a
  plain JSON encoding of the same samples in the same run (``json.dumps`` of a list of ``{"topic", "value",
  "timestamp"}`` objects, attrs records as objects of their fields).
* **delivered**: samples/s end to end, from the first accept to the last acknowledgement. Like the service,
  it accepts every call and sends batches whenever a batch's worth is stored, then the rest; each batch is
  acked in the outbox once the transport acknowledged it. ``delivered_per_s`` is delivery **to mosquitto**
  (``delivered_transport: "mqtt"``): a ``mosquitto`` this benchmark starts on free loopback ports
  (``tests/mqtt_broker.py``; stopped at the end, whatever happens), `MqttTransport` publishing each batch
  at QoS 1 and awaiting its PUBACK, with ``rate_limit = 0``. (AWS IoT Core's 100 publishes/s per
  connection caps batches, not samples: with the thousands of samples of a batch -- about 7,400 in the
  default run -- that is some 740,000 samples/s, which the table prints.) An independent subscriber
  (``mosquitto_sub``, another process) receives the batches; they are decoded and deduplicated by
  ``(stream, seq)`` afterwards. The
  ``file`` transport's figure (each batch written to a temporary name, fsync'ed, renamed, directory
  fsync'ed) is ``delivered_file_per_s``. Without mosquitto (Debian packages ``mosquitto`` and
  ``mosquitto-clients``), or with ``--transport file``, ``delivered_per_s`` is the file figure
  (``delivered_transport: "file"``) and the table says why.
* **campaign filter**: samples/s through ``CampaignFilter.keep`` (an extra figure: the service's per-sample
  decision before accept).

Every delivered batch (files; what the subscriber received) is decoded afterwards (untimed): each sample
must arrive exactly once.

Usage: ``python bench/uplink.py [--json] [--samples N] [--repeat R] [--call-samples C] [--transport T]``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import logging
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

# Python put bench/ first on sys.path, where bench/bus.py would shadow the bus package: project root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The test suite's broker helper (tests/mqtt_broker.py), last: nothing in tests/ shadows anything.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

import attrs
import structlog
import trio
from mqtt_broker import (
    BrokerError,
    MosquittoBroker,
    Subscriber,
    mosquitto_unavailable_reason,
    mosquitto_version,
)

from bench import _table
from bus import default_codec
from services.uplink import (
    Campaign,
    CampaignFilter,
    FileTransport,
    Keep,
    MqttConfig,
    MqttTransport,
    Outbox,
    Row,
    decode_batch,
    read_header,
)

GOAL_ACCEPTED_PER_S = 100_000
GOAL_VS_JSON = 5.0
DEFAULT_SAMPLES = 200_000
DEFAULT_CALL_SAMPLES = 5_000
T0 = 1_700_000_000.0
#: Samples per second of bus time in the workload (for timestamps).
RATE = 100_000.0
#: How long the independent subscriber may take to show every batch published (untimed).
SUBSCRIBER_TIMEOUT = 30.0


@default_codec.register(name="bench.uplink.Position")
@attrs.frozen
class Position:
    latitude: float
    longitude: float
    altitude: float
    heading: float


@default_codec.register(name="bench.uplink.Tyre")
@attrs.frozen
class Tyre:
    pressure: float
    temperature: float
    warning: bool


SIGNALS = [
    f"Vehicle.{group}.{name}"
    for group in ("Powertrain", "Chassis", "Cabin", "Body", "ADAS", "OBD")
    for name in ("Speed", "Torque", "Current", "Voltage", "Temperature", "Position")
]
LIVE = Keep(("live",), priority=5, ttl=600.0)
LOG = Keep(("log",), priority=0, ttl=None)


def workload(n: int, seed: int = 7) -> list[Row]:
    """``n`` samples: floats with CAN-like resolution on 36 signals, and small attrs records."""
    rng = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        t = T0 + i / RATE
        k = i % 40
        if k == 38:
            value: object = Position(
                round(52.42 + rng.random() * 0.01, 7),
                round(10.78 + rng.random() * 0.01, 7),
                round(80 + rng.random() * 5, 1),
                round(rng.random() * 360, 1),
            )
            out.append(("Vehicle.CurrentLocation", value, t, LIVE))
        elif k == 39:
            value = Tyre(round(2.3 + rng.random() * 0.2, 2), round(20 + rng.random() * 15, 1), False)
            out.append(("Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire", value, t, LOG))
        else:
            topic = SIGNALS[k % len(SIGNALS)]
            out.append((topic, round(rng.uniform(0, 250), 2), t, LIVE if k < 6 else LOG))
    return out


def calls_of(rows: Sequence[Row], size: int) -> list[list[Row]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def _collect() -> None:
    gc.collect()


# -- accepted -------------------------------------------------------------------------------------------


def accept_run(
    calls: Sequence[Sequence[Row]], directory: Path, synchronous: Literal["normal", "full"]
) -> float:
    """Seconds to accept every call into a fresh outbox."""
    path = directory / "accept.sqlite3"
    with Outbox(path, quota_bytes=1 << 40, vehicle_id="BENCH", synchronous=synchronous) as outbox:
        started = time.perf_counter()
        for call in calls:
            outbox.accept(call)
        seconds = time.perf_counter() - started
        stored = outbox.statistics().stored_samples
    expected = sum(len(c) for c in calls)
    if stored != expected:
        raise RuntimeError(f"{stored} samples stored of {expected}")
    return seconds


def wire_bytes(calls: Sequence[Sequence[Row]], directory: Path, max_batch_bytes: int) -> tuple[int, int]:
    """The payload bytes and the number of the batches that carry every call's samples (untimed)."""
    total = batches = 0
    path = directory / "wire.sqlite3"
    with Outbox(path, quota_bytes=1 << 40, vehicle_id="BENCH", max_batch_bytes=max_batch_bytes) as outbox:
        for call in calls:
            outbox.accept(call)
        while (formed := outbox.next_batch(T0)) is not None:
            total += len(formed[1])
            batches += 1
            outbox.ack(formed[0])
    return total, batches


# -- delivered ------------------------------------------------------------------------------------------


class Delivery:
    """One delivery run: its time, what was sent, and what arrived (decoded afterwards, untimed)."""

    def __init__(
        self, seconds: float, payload_bytes: int, batches: int, samples: int, lost: int, dup: int
    ) -> None:
        self.seconds = seconds
        self.payload_bytes = payload_bytes
        self.batches = batches
        self.samples = samples
        self.lost = lost
        self.duplicated = dup


async def deliver(
    calls: Sequence[Sequence[Row]],
    path: Path,
    max_batch_bytes: int,
    publish: Callable[[int, bytes], Awaitable[None]],
) -> tuple[float, int, int]:
    """Accept every call into a fresh outbox at ``path`` and ``publish`` batches as they fill, each acked in
    the outbox once ``publish`` returned; then the rest. Returns the seconds from the first accept to the
    last acknowledgement, the payload bytes and the number of batches sent."""
    payload_bytes = batches = 0
    with Outbox(path, quota_bytes=1 << 40, vehicle_id="BENCH", max_batch_bytes=max_batch_bytes) as outbox:

        async def send(*, full_only: bool) -> None:
            nonlocal payload_bytes, batches
            while True:
                if full_only:
                    stats = outbox.statistics()
                    if stats.stored_bytes - stats.formed_bytes < max_batch_bytes:
                        return
                formed = outbox.next_batch(T0)
                if formed is None:
                    return
                seq, payload = formed
                await publish(seq, payload)
                outbox.ack(seq)
                payload_bytes += len(payload)
                batches += 1

        started = time.perf_counter()
        for call in calls:
            outbox.accept(call)
            await send(full_only=True)
        await send(full_only=False)
        seconds = time.perf_counter() - started
    return seconds, payload_bytes, batches


def arrived(calls: Sequence[Sequence[Row]], payloads: Iterable[bytes]) -> tuple[int, int]:
    """Samples lost and duplicated: ``payloads`` decoded, deduplicated by batch ``(stream, seq)`` (a QoS 1
    re-delivery), each sample of ``calls`` expected exactly once (the workload's timestamps are unique)."""
    expected = {round(t * 1_000_000) for call in calls for _, _, t, _ in call}
    batches: set[tuple[str, int]] = set()
    seen: dict[int, int] = {}
    for payload in payloads:
        batch = decode_batch(payload)
        if (batch.stream, batch.seq) in batches:
            continue
        batches.add((batch.stream, batch.seq))
        for sample in batch.samples:
            seen[sample.timestamp_us] = seen.get(sample.timestamp_us, 0) + 1
    lost = len(expected - set(seen))
    dup = sum(n - 1 for n in seen.values()) + len(set(seen) - expected)
    return lost, dup


async def deliver_file(calls: Sequence[Sequence[Row]], directory: Path, max_batch_bytes: int) -> Delivery:
    """Deliver through the file transport (each batch fsync'ed, renamed, directory fsync'ed)."""
    transport = FileTransport(directory / "batches", fsync=True)
    await transport.connect()
    try:
        seconds, payload_bytes, batches = await deliver(
            calls, directory / "deliver-file.sqlite3", max_batch_bytes, transport.publish
        )
    finally:
        await transport.close()
    files = sorted((directory / "batches").iterdir())
    lost, dup = arrived(calls, (file.read_bytes() for file in files))
    return Delivery(seconds, payload_bytes, batches, sum(len(c) for c in calls), lost, dup)


def received_batches(subscriber: Subscriber) -> int:
    """The distinct batches ``(stream, seq)`` the subscriber has received so far."""
    return len({(h.stream, h.seq) for h in map(read_header, subscriber.payloads())})


async def deliver_mqtt(
    calls: Sequence[Sequence[Row]], directory: Path, max_batch_bytes: int, broker: MosquittoBroker, run: int
) -> Delivery:
    """Deliver to ``broker`` with `MqttTransport` (QoS 1, each batch's PUBACK awaited, no rate limit), an
    independent ``mosquitto_sub`` subscribed; what it received is decoded and counted afterwards."""
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        rate_limit=0,  # AWS IoT Core's 100 publishes/s would cap batches, not samples (see the docstring)
        max_message_size=max(max_batch_bytes, 128 * 1024),
    )
    # stdout is the table's or the JSON object's: the transport's warnings go to stderr, its info nowhere
    quiet = structlog.make_filtering_bound_logger(logging.WARNING)
    log = structlog.wrap_logger(structlog.PrintLogger(sys.stderr), wrapper_class=quiet)
    async with MqttTransport(config, f"BENCH-{run}", log=log) as transport:
        with Subscriber(broker, transport.topic, client_id=f"vwos-bench-observer-{run}") as subscriber:
            await transport.connect()
            seconds, payload_bytes, batches = await deliver(
                calls, directory / "deliver-mqtt.sqlite3", max_batch_bytes, transport.publish
            )
            await transport.close()
            # Untimed: wait until the subscriber has every batch (or give up: what is missing is lost).
            with trio.move_on_after(SUBSCRIBER_TIMEOUT):
                while received_batches(subscriber) < batches:  # noqa: ASYNC110 -- another process writes it
                    await trio.sleep(0.02)
            payloads = subscriber.payloads()
    lost, dup = arrived(calls, payloads)
    return Delivery(seconds, payload_bytes, batches, sum(len(c) for c in calls), lost, dup)


# -- JSON, the reference ----------------------------------------------------------------------------------


def _json_value(value: object) -> object:
    if attrs.has(type(value)):
        return attrs.asdict(value)  # type: ignore[arg-type]
    return value


def json_bytes(rows: Sequence[Row]) -> int:
    """Bytes of the plain JSON encoding of ``rows``."""
    return len(json.dumps([{"topic": t, "value": _json_value(v), "timestamp": ts} for t, v, ts, _ in rows]))


# -- the campaign filter ----------------------------------------------------------------------------------


def filter_run(rows: Sequence[Row]) -> float:
    """Seconds to decide every sample with a filter of three campaigns (every / period / change)."""
    campaigns = CampaignFilter(
        [
            Campaign("live", ("Vehicle.Powertrain.*", "Vehicle.CurrentLocation"), priority=5, ttl=600.0),
            Campaign("log", ("Vehicle.**",)),
            Campaign("slow", ("Vehicle.Cabin.*",), mode="period", period=1.0, priority=1),
        ]
    )
    keep = campaigns.keep
    started = time.perf_counter()
    for topic, value, t, _ in rows:
        keep(topic, value, t)
    return time.perf_counter() - started


# -- the whole benchmark ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = _table.parser(__doc__, default_samples=DEFAULT_SAMPLES)
    parser.add_argument(
        "--call-samples",
        type=_table.positive_int,
        default=DEFAULT_CALL_SAMPLES,
        help="samples per accept call (the service accepts every ~50 ms)",
    )
    parser.add_argument("--max-batch-bytes", type=_table.positive_int, default=128 * 1024)
    parser.add_argument(
        "--transport",
        choices=("mqtt", "file"),
        default="mqtt",
        help="the transport of delivered_per_s: mqtt (a mosquitto started here on a free loopback port; "
        "the file figure is measured too) or file (no broker)",
    )
    parser.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="the outbox's durability for the accepted figure: process crash (normal) or power loss (full)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the outboxes go (default: a temp dir)")
    args = parser.parse_args(argv)
    n, repeat = args.samples, args.repeat
    rows = workload(n)
    calls = calls_of(rows, args.call_samples)

    accepted: list[float] = []
    delivered_file: list[float] = []
    delivered_mqtt: list[float] = []
    filtered: list[float] = []
    file_runs: list[Delivery] = []
    mqtt_runs: list[Delivery] = []
    mqtt_unavailable: str | None = None
    if args.transport == "file":
        mqtt_unavailable = "--transport file was given"
    elif (missing := mosquitto_unavailable_reason()) is not None:
        mqtt_unavailable = f"no mosquitto to deliver to ({missing})"
    broker_port: int | None = None
    with (
        tempfile.TemporaryDirectory(prefix="vwos-bench-uplink-", dir=args.dir) as scratch,
        contextlib.ExitStack() as stack,  # leaves before the directory goes: the broker is stopped first
    ):
        broker: MosquittoBroker | None = None
        if mqtt_unavailable is None:
            try:
                broker = stack.enter_context(MosquittoBroker(Path(scratch) / "mosquitto"))
                broker_port = broker.port
            except BrokerError as exc:  # the context manager has killed it
                mqtt_unavailable = f"mosquitto did not start: {exc}"
        (Path(scratch) / "wire").mkdir()
        payload_bytes, batches = wire_bytes(calls, Path(scratch) / "wire", args.max_batch_bytes)
        warm = calls_of(rows[: min(n, 2 * args.call_samples)], args.call_samples)
        (Path(scratch) / "warm").mkdir()
        accept_run(warm, Path(scratch) / "warm", args.synchronous)  # untimed warm-up
        for run in range(repeat):
            directory = Path(scratch) / f"run{run}"
            directory.mkdir()
            _collect()
            accepted.append(n / accept_run(calls, directory, args.synchronous))
            _collect()
            delivery = trio.run(deliver_file, calls, directory, args.max_batch_bytes)
            file_runs.append(delivery)
            delivered_file.append(n / delivery.seconds)
            if broker is not None:
                _collect()
                delivery = trio.run(deliver_mqtt, calls, directory, args.max_batch_bytes, broker, run)
                mqtt_runs.append(delivery)
                delivered_mqtt.append(n / delivery.seconds)
            _collect()
            filtered.append(n / filter_run(rows))
    version = mosquitto_version() if broker_port is not None else None

    acc = _table.Runs("samples/s", accepted)
    flt = _table.Runs("samples/s", filtered)
    dlv_file = _table.Runs("samples/s", delivered_file)
    dlv_mqtt = _table.Runs("samples/s", delivered_mqtt) if delivered_mqtt else None
    dlv = dlv_mqtt if dlv_mqtt is not None else dlv_file
    json_per_sample = json_bytes(rows) / n
    bytes_per_sample = payload_bytes / n
    samples_per_batch = n / batches
    lost = sum(d.lost for d in (*file_runs, *mqtt_runs))
    duplicated = sum(d.duplicated for d in (*file_runs, *mqtt_runs))
    vs_json = _table.ratio(json_per_sample, bytes_per_sample)

    result: dict[str, Any] = {
        "benchmark": "uplink",
        "accepted_per_s": acc.best,
        "delivered_per_s": dlv.best,
        "delivered_transport": "mqtt" if dlv_mqtt is not None else "file",
        "delivered_file_per_s": dlv_file.best,
        "mqtt_unavailable": mqtt_unavailable,
        "bytes_per_sample": bytes_per_sample,
        "json_bytes_per_sample": json_per_sample,
        "json_vs_vwos_bytes": vs_json,
        "filter_per_s": flt.best,
        "batches": batches,
        "samples_per_batch": samples_per_batch,
        "lost_samples": lost,
        "duplicated_samples": duplicated,
        "lost_samples_mqtt": sum(d.lost for d in mqtt_runs) if mqtt_runs else None,
        "duplicated_samples_mqtt": sum(d.duplicated for d in mqtt_runs) if mqtt_runs else None,
        "mqtt_qos": 1,
        "mqtt_rate_limit": 0,
        "goal_accepted_per_s": GOAL_ACCEPTED_PER_S,
        "goal_vs_json": GOAL_VS_JSON,
        "goal_accepted_per_s_met": acc.best >= GOAL_ACCEPTED_PER_S,
        "goal_vs_json_met": None if vs_json is None else vs_json >= GOAL_VS_JSON,
        "figures": "best of the runs (highest rate); spread = (max - min) / median",
        "runs": {
            "accepted_per_s": acc,
            "delivered_per_s": dlv,
            "delivered_file_per_s": dlv_file,
            "filter_per_s": flt,
        },
        "samples": n,
        "repeat": repeat,
        "call_samples": args.call_samples,
        "max_batch_bytes": args.max_batch_bytes,
        "synchronous": args.synchronous,
        **_table.environment(
            trio=trio.__version__,
            cbor2=importlib.metadata.version("cbor2"),
            paho_mqtt=importlib.metadata.version("paho-mqtt"),
            sqlite=sqlite3.sqlite_version,
            mosquitto=version,
        ),
    }

    table = _table.Table(
        f"vwos uplink: best of {repeat} run{'s' if repeat > 1 else ''} of {n:,} samples "
        f"(accept calls of {args.call_samples:,}), Python {result['python']}, "
        f"SQLite {sqlite3.sqlite_version}",
        ["figure", "best", "median", "spread"],
    )
    table.runs(f"accepted into the outbox (WAL, {args.synchronous.upper()})", acc)
    if dlv_mqtt is not None:
        table.runs("delivered end to end to mosquitto (MQTT QoS 1)", dlv_mqtt)
    else:
        table.row("delivered end to end to mosquitto (MQTT QoS 1)", "-", "-", "-")
    table.runs("delivered end to end (file transport, fsync)", dlv_file)
    table.runs("campaign filter decisions", flt)
    table.rule()
    table.row("bytes per sample: vwos batches (CBOR, zlib)", f"{bytes_per_sample:.2f} B")
    table.row("bytes per sample: plain JSON (reference)", f"{json_per_sample:.2f} B")
    table.row("JSON / vwos", _table.times(vs_json))
    table.note("best: highest rate of the runs; spread: (max - min) / median")
    if dlv_mqtt is not None:
        table.note(
            f"mqtt: mosquitto {version or '(version unknown)'} started by this benchmark on "
            f"127.0.0.1:{broker_port} (stopped at the end); each batch one QoS 1 PUBLISH, its PUBACK "
            "awaited, then acked in the outbox; rate_limit 0; every batch counted again from an "
            "independent mosquitto_sub (decoded, deduplicated by (stream, seq))"
        )
        table.note(
            f"AWS IoT Core's 100 publishes/s would cap batches, not samples: at {samples_per_batch:,.0f} "
            f"samples per batch that is {_table.rate(100 * samples_per_batch, ' samples/s')}"
        )
    else:
        table.note(f"MQTT delivery not measured: {mqtt_unavailable}; delivered_per_s is the file figure")
    table.note(
        f"batches: {batches} of at most {args.max_batch_bytes:,} bytes ({samples_per_batch:,.0f} samples "
        f"each); lost {lost}, duplicated {duplicated} (must be 0)"
    )
    table.goal(
        f">= {GOAL_ACCEPTED_PER_S:,} samples/s accepted",
        acc.best >= GOAL_ACCEPTED_PER_S,
        _table.rate(acc.best),
    )
    table.goal(
        f">= {GOAL_VS_JSON:g}x fewer bytes than JSON",
        result["goal_vs_json_met"],
        _table.times(vs_json) if vs_json is not None else "not measured",
    )
    _table.emit(args, result, table)
    if lost or duplicated:
        print(f"error: {lost} samples lost and {duplicated} duplicated on the way", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
