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
* **delivered**: samples/s end to end, from the first accept to the last acknowledgement, through the
  ``file`` transport (each batch written to a temporary name, fsync'ed, renamed, directory fsync'ed). Like
  the service, it accepts every call and sends batches whenever a batch's worth is stored, then the rest.
  ``--transport mqtt`` is the place for the MQTT transport's figure: not implemented yet, it reports null.
* **campaign filter**: samples/s through ``CampaignFilter.keep`` (an extra figure: the service's per-sample
  decision before accept).

Every delivered batch is decoded afterwards (untimed): each sample must arrive exactly once.

Usage: ``python bench/uplink.py [--json] [--samples N] [--repeat R] [--call-samples C] [--transport file]``.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

# Python put bench/ first on sys.path, where bench/bus.py would shadow the bus package: project root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs
import trio

from bench import _table
from bus import default_codec
from services.uplink import Campaign, CampaignFilter, FileTransport, Keep, Outbox, Row, decode_batch

GOAL_ACCEPTED_PER_S = 100_000
GOAL_VS_JSON = 5.0
DEFAULT_SAMPLES = 200_000
DEFAULT_CALL_SAMPLES = 5_000
T0 = 1_700_000_000.0
#: Samples per second of bus time in the workload (for timestamps).
RATE = 100_000.0


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
    def __init__(
        self, seconds: float, payload_bytes: int, batches: int, samples: int, lost: int, dup: int
    ) -> None:
        self.seconds = seconds
        self.payload_bytes = payload_bytes
        self.batches = batches
        self.samples = samples
        self.lost = lost
        self.duplicated = dup


async def deliver_run(calls: Sequence[Sequence[Row]], directory: Path, max_batch_bytes: int) -> Delivery:
    """Accept every call and send batches through the file transport as they fill; the whole time."""
    transport = FileTransport(directory / "batches", fsync=True)
    await transport.connect()
    payload_bytes = batches = 0
    with Outbox(
        directory / "deliver.sqlite3",
        quota_bytes=1 << 40,
        vehicle_id="BENCH",
        max_batch_bytes=max_batch_bytes,
    ) as outbox:

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
                await transport.publish(seq, payload)
                outbox.ack(seq)
                payload_bytes += len(payload)
                batches += 1

        started = time.perf_counter()
        for call in calls:
            outbox.accept(call)
            await send(full_only=True)
        await send(full_only=False)
        seconds = time.perf_counter() - started
    await transport.close()
    # Untimed: every sample arrived exactly once (the workload's timestamps are unique per sample).
    expected = {round(t * 1_000_000) for call in calls for _, _, t, _ in call}
    seen: dict[int, int] = {}
    for file in sorted((directory / "batches").iterdir()):
        for sample in decode_batch(file.read_bytes()).samples:
            seen[sample.timestamp_us] = seen.get(sample.timestamp_us, 0) + 1
    lost = len(expected - set(seen))
    dup = sum(n - 1 for n in seen.values()) + len(set(seen) - expected)
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
        choices=("file", "mqtt"),
        default="file",
        help="the transport of the delivery figure (mqtt: not implemented yet, reported as null)",
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
    delivered: list[float] = []
    filtered: list[float] = []
    deliveries: list[Delivery] = []
    mqtt_unavailable: str | None = None
    if args.transport == "mqtt":
        mqtt_unavailable = (
            "the MQTT transport (services/uplink/_mqtt.py) is not measured by this benchmark yet"
        )
    with tempfile.TemporaryDirectory(prefix="vwos-bench-uplink-", dir=args.dir) as scratch:
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
            if args.transport == "file":
                delivery = trio.run(deliver_run, calls, directory, args.max_batch_bytes)
                deliveries.append(delivery)
                delivered.append(n / delivery.seconds)
            _collect()
            filtered.append(n / filter_run(rows))

    acc = _table.Runs("samples/s", accepted)
    flt = _table.Runs("samples/s", filtered)
    dlv = _table.Runs("samples/s", delivered) if delivered else None
    json_per_sample = json_bytes(rows) / n
    bytes_per_sample = payload_bytes / n
    lost = sum(d.lost for d in deliveries)
    duplicated = sum(d.duplicated for d in deliveries)
    vs_json = _table.ratio(json_per_sample, bytes_per_sample)

    result: dict[str, Any] = {
        "benchmark": "uplink",
        "accepted_per_s": acc.best,
        "delivered_per_s": dlv.best if dlv else None,
        "delivered_transport": args.transport,
        "mqtt_unavailable": mqtt_unavailable,
        "bytes_per_sample": bytes_per_sample,
        "json_bytes_per_sample": json_per_sample,
        "json_vs_vwos_bytes": vs_json,
        "filter_per_s": flt.best,
        "batches": batches,
        "lost_samples": lost,
        "duplicated_samples": duplicated,
        "goal_accepted_per_s": GOAL_ACCEPTED_PER_S,
        "goal_vs_json": GOAL_VS_JSON,
        "goal_accepted_per_s_met": acc.best >= GOAL_ACCEPTED_PER_S,
        "goal_vs_json_met": None if vs_json is None else vs_json >= GOAL_VS_JSON,
        "figures": "best of the runs (highest rate); spread = (max - min) / median",
        "runs": {"accepted_per_s": acc, "delivered_per_s": dlv, "filter_per_s": flt},
        "samples": n,
        "repeat": repeat,
        "call_samples": args.call_samples,
        "max_batch_bytes": args.max_batch_bytes,
        "synchronous": args.synchronous,
        **_table.environment(
            trio=trio.__version__, cbor2=importlib.metadata.version("cbor2"), sqlite=sqlite3.sqlite_version
        ),
    }

    table = _table.Table(
        f"vwos uplink: best of {repeat} run{'s' if repeat > 1 else ''} of {n:,} samples "
        f"(accept calls of {args.call_samples:,}), Python {result['python']}, "
        f"SQLite {sqlite3.sqlite_version}",
        ["figure", "best", "median", "spread"],
    )
    table.row(
        f"accepted into the outbox (WAL, {args.synchronous.upper()})",
        _table.rate(acc.best),
        _table.rate(acc.median),
        _table.percent(acc.spread),
    )
    if dlv is not None:
        table.row(
            "delivered end to end (file transport, fsync)",
            _table.rate(dlv.best),
            _table.rate(dlv.median),
            _table.percent(dlv.spread),
        )
    else:
        table.row(f"delivered end to end ({args.transport})", "-", "-", "-")
        table.note(f"delivery not measured: {mqtt_unavailable}")
    table.row(
        "campaign filter decisions",
        _table.rate(flt.best),
        _table.rate(flt.median),
        _table.percent(flt.spread),
    )
    table.rule()
    table.row("bytes per sample: vwos batches (CBOR, zlib)", f"{bytes_per_sample:.2f} B")
    table.row("bytes per sample: plain JSON (reference)", f"{json_per_sample:.2f} B")
    table.row("JSON / vwos", _table.times(vs_json))
    table.note("best: highest rate of the runs; spread: (max - min) / median")
    table.note(
        f"batches: {batches} of at most {args.max_batch_bytes:,} bytes; "
        f"lost {lost}, duplicated {duplicated} (must be 0)"
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
