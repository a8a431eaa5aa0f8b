"""The in-process bus benchmark: vwos's bus beside eclipse-zenoh and a bare trio memory channel.

Measured in one run, each figure the best of ``--repeat`` runs (the median and the run-to-run spread are
reported too; the goals are judged on the medians, against zenoh's median of the same run):

* vwos delivery rate, samples received by subscribers per second (summed over subscribers), 1 publisher to
  1 subscriber and to 10, on a checked ``float`` topic (unit, min, max). A declared publisher (like
  zenoh's below) publishes bursts with ``publish_nowait`` and yields between them; subscribers read
  with ``receive_batch``. Queues are big enough that nothing is dropped: drops are counted from the
  subscription statistics and must be 0.
* vwos latency 1->1, p50 and p99 in microseconds, from ``sample.bus_time`` (trio's clock) to the moment the
  subscriber has the sample, one sample in flight at a time (a paced rate, never a full queue).
* eclipse-zenoh (Python binding) 1->1 on one session that neither listens, connects nor scouts: a declared
  publisher puts each float as 8 bytes, a callback subscriber counts deliveries.
* a bare trio memory channel 1->1, ``await send()`` / ``async for``, one value at a time: the floor.

Usage: ``python bench/bus.py [--json] [--samples N] [--repeat R] [--burst B]``.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Python put bench/ first on sys.path, where this file would shadow the bus package: the project root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from bench import _table
from bus import Bus, Subscription, Topic

SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400, description="vehicle speed")
ZENOH_KEY = "vehicle/speed"
GOAL_PER_S = 1_000_000
GOAL_VS_ZENOH = 2.0
FAN_OUT = 10
DEFAULT_SAMPLES = 200_000
DEFAULT_BURST = 100
#: Samples of one latency run, at most (each waits for the previous one to arrive).
LATENCY_SAMPLES = 20_000
#: A zenoh run whose callback received nothing for this long (seconds) has lost the rest of its samples.
ZENOH_STALL = 1.0

#: A zenoh session that touches no network: peer mode, no listen or connect endpoints, no scouting.
ZENOH_LOCAL_ONLY = (
    ("mode", '"peer"'),
    ("listen/endpoints", "[]"),
    ("connect/endpoints", "[]"),
    ("scouting/multicast/enabled", "false"),
    ("scouting/gossip/enabled", "false"),
)


def speeds(n: int) -> list[float]:
    """``n`` plausible speeds in km/h, all within the topic's range."""
    return [(i * 7.3) % 400.0 for i in range(n)]


def _collect() -> None:
    """Start every run from the same heap: no garbage of the previous run to collect on our time."""
    gc.collect()


# -- vwos: delivery rate ------------------------------------------------------------------------------


class BusRun:
    """One delivery-rate run: samples delivered, seconds, drops."""

    def __init__(self, delivered: int, seconds: float, dropped: int) -> None:
        self.delivered = delivered
        self.seconds = seconds
        self.dropped = dropped

    @property
    def per_s(self) -> float:
        return self.delivered / self.seconds


async def bus_delivery(values: Sequence[float], subscribers: int, burst: int) -> BusRun:
    """Publish ``values`` in bursts to ``subscribers`` subscribers; time until the last one has them all."""
    bus = Bus()
    pub = bus.client("bench.publisher")
    # Big enough for the two or three bursts a subscriber can be behind (trio may run the publisher twice
    # in a row), so nothing is dropped; drops are counted anyway.
    subs = [
        bus.client(f"bench.subscriber{i}").subscribe(SPEED, queue_size=4 * burst) for i in range(subscribers)
    ]
    chunks = [values[i : i + burst] for i in range(0, len(values), burst)]
    expected = len(values)
    finished: list[float] = []
    started = 0.0

    async def subscriber(sub: Subscription[float]) -> None:
        received = 0
        try:
            while received < expected:
                received += len(await sub.receive_batch())
        except trio.ClosedResourceError:  # closed by the publisher and drained: some samples were dropped
            pass
        finished.append(time.perf_counter())

    async def publisher() -> None:
        nonlocal started
        publish = pub.publisher(SPEED).publish_nowait  # a declared publisher, as zenoh's below
        checkpoint = trio.lowlevel.checkpoint
        started = time.perf_counter()
        for chunk in chunks:
            for value in chunk:
                publish(value)
            await checkpoint()
        for sub in subs:  # a subscriber that lost samples stops when it has read what is left
            sub.close()

    async with trio.open_nursery() as nursery:
        for sub in subs:
            nursery.start_soon(subscriber, sub)
        nursery.start_soon(publisher)
    stats = [sub.statistics() for sub in subs]
    delivered = sum(s.received for s in stats)
    dropped = sum(s.dropped for s in stats)
    if delivered + dropped != expected * subscribers:
        raise RuntimeError(f"{delivered} samples delivered and {dropped} dropped of {expected * subscribers}")
    return BusRun(delivered, max(finished) - started, dropped)


# -- vwos: latency ------------------------------------------------------------------------------------


async def bus_latency(values: Sequence[float]) -> list[float]:
    """Latencies (seconds) of ``values`` published one at a time, each once the previous one arrived."""
    bus = Bus()
    clock = bus.clock
    pub = bus.client("bench.publisher")
    sub = bus.client("bench.subscriber").subscribe(SPEED, queue_size=16)
    latencies: list[float] = []
    expected = len(values)

    async def subscriber() -> None:
        while len(latencies) < expected:
            batch = await sub.receive_batch()
            now = clock()
            latencies.extend(now - sample.bus_time for sample in batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        checkpoint = trio.lowlevel.checkpoint
        for i, value in enumerate(values, 1):
            pub.publish_nowait(SPEED, value)
            for _ in range(1000):  # let the subscriber take it: one sample in flight
                if len(latencies) >= i:
                    break
                await checkpoint()
            else:
                raise RuntimeError(f"sample {i} of the latency run never arrived")
    dropped = sub.statistics().dropped
    if dropped:
        raise RuntimeError(f"latency run dropped {dropped} samples")
    return latencies


# -- trio memory channel ------------------------------------------------------------------------------


async def trio_channel(values: Sequence[float], buffer: int) -> float:
    """Seconds to send ``values`` through a trio memory channel, one ``await send`` / receive at a time."""
    send, receive = trio.open_memory_channel[float](buffer)
    expected = len(values)
    finished = 0.0

    async def receiver() -> None:
        nonlocal finished
        received = 0
        async with receive:
            async for _ in receive:
                received += 1
                if received == expected:
                    break
        finished = time.perf_counter()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        started = time.perf_counter()
        async with send:
            for value in values:
                await send.send(value)
    return finished - started


# -- zenoh --------------------------------------------------------------------------------------------


def _open_sockets() -> int | None:
    """How many sockets this process holds (Linux), to show that zenoh opened none."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


class ZenohResult:
    def __init__(self) -> None:
        self.per_s: list[float] = []
        self.dropped = 0
        self.sockets: int | None = None
        self.version: str | None = None
        self.unavailable: str | None = None


def zenoh_delivery(values: Sequence[float], repeat: int) -> ZenohResult:
    """``repeat`` runs of zenoh 1->1 on one local-only session; ``unavailable`` says why if it cannot run."""
    result = ZenohResult()
    try:
        # Imported by name, as Any: the figures do not depend on zenoh's (partial) type hints.
        zenoh: Any = importlib.import_module("zenoh")
    except ImportError as exc:
        result.unavailable = f"zenoh is not importable ({type(exc).__name__}: {exc})"
        return result
    try:
        result.version = importlib.metadata.version("eclipse-zenoh")
    except importlib.metadata.PackageNotFoundError:
        result.version = getattr(zenoh, "__version__", None)
    try:
        config = zenoh.Config()
        for key, json5 in ZENOH_LOCAL_ONLY:
            config.insert_json5(key, json5)
        session = zenoh.open(config)
    except Exception as exc:
        result.unavailable = f"zenoh session did not open ({type(exc).__name__}: {exc})"
        return result
    try:
        _zenoh_run(session, values[: min(len(values), 1000)])  # warm-up, untimed
        for _ in range(repeat):
            _collect()
            delivered, seconds = _zenoh_run(session, values)
            result.per_s.append(delivered / seconds)
            result.dropped += len(values) - delivered
            if result.sockets is None:
                result.sockets = _open_sockets()
    finally:
        session.close()  # an open session keeps the interpreter from exiting
    return result


def _zenoh_run(session: Any, values: Sequence[float]) -> tuple[int, float]:
    """Put ``values`` through ``session``: samples delivered to the callback, and seconds until the last."""
    received = 0

    def on_sample(_: Any) -> None:
        nonlocal received
        received += 1

    pack: Callable[[float], bytes] = struct.Struct("<d").pack
    expected = len(values)
    subscriber = session.declare_subscriber(ZENOH_KEY, on_sample)
    publisher = session.declare_publisher(ZENOH_KEY)
    try:
        put = publisher.put
        started = time.perf_counter()
        for value in values:
            put(pack(value))
        # The callback runs on a zenoh thread: wait for it to catch up, or to stop making progress.
        last, last_progress = -1, time.perf_counter()
        while received < expected:
            now = time.perf_counter()
            if received != last:
                last, last_progress = received, now
            elif now - last_progress > ZENOH_STALL:
                break
            time.sleep(0.0002)
        return received, time.perf_counter() - started
    finally:
        publisher.undeclare()
        subscriber.undeclare()


# -- the whole benchmark -------------------------------------------------------------------------------


async def measure_bus(
    values: Sequence[float], latency_values: Sequence[float], repeat: int, burst: int
) -> dict[str, Any]:
    # A short untimed warm-up of each path.
    warm = values[: min(len(values), 10 * burst)]
    await bus_delivery(warm, 1, burst)
    await bus_delivery(warm, FAN_OUT, burst)
    await bus_latency(latency_values[:100])
    await trio_channel(warm, 4 * burst)

    one: list[BusRun] = []
    ten: list[BusRun] = []
    p50: list[float] = []
    p99: list[float] = []
    channel: list[float] = []
    for _ in range(repeat):
        _collect()
        one.append(await bus_delivery(values, 1, burst))
        _collect()
        ten.append(await bus_delivery(values, FAN_OUT, burst))
        _collect()
        latencies = await bus_latency(latency_values)
        p50.append(_table.percentile(latencies, 50) * 1e6)
        p99.append(_table.percentile(latencies, 99) * 1e6)
        _collect()
        channel.append(len(values) / await trio_channel(values, 4 * burst))
    return {
        "1to1": _table.Runs("samples/s", [r.per_s for r in one]),
        "1to10": _table.Runs("samples/s", [r.per_s for r in ten]),
        "p50": _table.Runs("us", p50, higher_is_better=False),
        "p99": _table.Runs("us", p99, higher_is_better=False),
        "trio": _table.Runs("samples/s", channel),
        "dropped_1to1": sum(r.dropped for r in one),
        "dropped_1to10": sum(r.dropped for r in ten),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = _table.parser(__doc__, default_samples=DEFAULT_SAMPLES)
    parser.add_argument(
        "--burst",
        type=_table.positive_int,
        default=DEFAULT_BURST,
        help="samples published between two yields",
    )
    args = parser.parse_args(argv)
    n, repeat, burst = args.samples, args.repeat, args.burst
    values = speeds(n)
    latency_values = values[:LATENCY_SAMPLES]

    bus = trio.run(measure_bus, values, latency_values, repeat, burst)
    z = zenoh_delivery(values, repeat)
    zenoh_runs = _table.Runs("samples/s", z.per_s) if z.per_s else None

    one: _table.Runs = bus["1to1"]
    ten: _table.Runs = bus["1to10"]
    p50: _table.Runs = bus["p50"]
    p99: _table.Runs = bus["p99"]
    chan: _table.Runs = bus["trio"]
    zenoh_best = zenoh_runs.best if zenoh_runs else None
    zenoh_median = zenoh_runs.median if zenoh_runs else None
    vs_zenoh = _table.ratio(one.best, zenoh_best)
    # The goals are judged on the medians (the best run alone flatters a noisy machine), each against
    # the reference's median measured in the same run.
    vs_zenoh_median = _table.ratio(one.median, zenoh_median)
    vs_trio = _table.ratio(one.best, chan.best)
    dropped = bus["dropped_1to1"] + bus["dropped_1to10"]

    result: dict[str, Any] = {
        "benchmark": "bus",
        "delivered_per_s_1to1": one.best,
        "delivered_per_s_1to10": ten.best,
        "p50_latency_us_1to1": p50.best,
        "p99_latency_us_1to1": p99.best,
        "zenoh_per_s_1to1": zenoh_best,
        "trio_channel_per_s_1to1": chan.best,
        "vwos_vs_zenoh_1to1": vs_zenoh,
        "vwos_vs_trio_channel_1to1": vs_trio,
        "dropped_1to1": bus["dropped_1to1"],
        "dropped_1to10": bus["dropped_1to10"],
        "zenoh_dropped_1to1": None if zenoh_runs is None else z.dropped,
        "zenoh_unavailable": z.unavailable,
        "zenoh_open_sockets": z.sockets,
        "median_per_s_1to1": one.median,
        "zenoh_median_per_s_1to1": zenoh_median,
        "vwos_vs_zenoh_1to1_median": vs_zenoh_median,
        "goal_per_s_1to1": GOAL_PER_S,
        "goal_vs_zenoh": GOAL_VS_ZENOH,
        "goal_per_s_met": one.median >= GOAL_PER_S,
        "goal_vs_zenoh_met": None if vs_zenoh_median is None else vs_zenoh_median >= GOAL_VS_ZENOH,
        "goals": "judged on the medians: vwos 1->1 median, and over zenoh's median of the same run",
        "figures": "best of the runs (highest rate, lowest latency); spread = (max - min) / median",
        "runs": {
            "delivered_per_s_1to1": one,
            "delivered_per_s_1to10": ten,
            "p50_latency_us_1to1": p50,
            "p99_latency_us_1to1": p99,
            "zenoh_per_s_1to1": zenoh_runs,
            "trio_channel_per_s_1to1": chan,
        },
        "spread_1to1": one.spread,
        "spread_1to10": ten.spread,
        "spread_p99_latency": p99.spread,
        "spread_zenoh": None if zenoh_runs is None else zenoh_runs.spread,
        "spread_trio_channel": chan.spread,
        "samples": n,
        "latency_samples": len(latency_values),
        "repeat": repeat,
        "burst": burst,
        "fan_out": FAN_OUT,
        **_table.environment(trio=trio.__version__, zenoh=z.version),
    }

    table = _table.Table(
        f"vwos bus, in-process: best of {repeat} run{'s' if repeat > 1 else ''} of {n:,} samples "
        f"(publisher bursts of {burst}, {len(latency_values):,} for latency), Python {result['python']}",
        ["figure", "best", "median", "spread", "vwos / it"],
    )
    table.runs("vwos 1 -> 1 delivered", one)
    table.runs(f"vwos 1 -> {FAN_OUT} delivered (sum)", ten)
    table.runs("vwos 1 -> 1 latency p50", p50, fmt=_table.micros)
    table.runs("vwos 1 -> 1 latency p99", p99, fmt=_table.micros)
    table.rule()
    if zenoh_runs is not None:
        table.runs("zenoh 1 -> 1 (1 session, callback, 8 B)", zenoh_runs, _table.times(vs_zenoh))
    else:
        table.row("zenoh 1 -> 1", "-", "-", "-", "-")
        table.note(f"zenoh not measured: {z.unavailable}")
    table.runs("trio memory channel 1 -> 1", chan, _table.times(vs_trio))
    table.note(
        "best: highest rate / lowest latency of the runs; spread: (max - min) / median; "
        "vwos / it: vwos 1 -> 1 delivered over that reference"
    )
    table.note(
        f"dropped: vwos {dropped} (must be 0)" + ("" if zenoh_runs is None else f", zenoh {z.dropped}")
    )
    if z.sockets is not None:
        table.note(f"sockets open while the zenoh session ran: {z.sockets}")
    table.goal(
        f">= {GOAL_PER_S:,} samples/s 1 -> 1 (median)",
        one.median >= GOAL_PER_S,
        _table.rate(one.median),
    )
    table.goal(
        f">= {GOAL_VS_ZENOH:g}x zenoh 1 -> 1 (median over median)",
        result["goal_vs_zenoh_met"],
        _table.times(vs_zenoh_median) if vs_zenoh_median is not None else "zenoh not measured",
    )
    _table.emit(args, result, table)
    if dropped:
        print(f"error: the bus dropped {dropped} samples during the measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
