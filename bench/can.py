"""The CAN gateway benchmark: frames through the whole receive path, beside cantools' bare decode loop.

Traffic is a realistic mix of the messages of a real Volkswagen MQB database (``../shared/dbc/vw_mqb.dbc``,
loaded with ``strict=False``): each message sent at a typical MQB cycle time (the database has none; see
`CYCLE_MS`), its signals changing plausibly inside their [minimum, maximum] (counters counting, checksums
changing, flags toggling, values swinging), encoded with the gateway's own codec
(``CanCodec.encode``) into python-can ``Message`` objects with timestamps, all before anything is timed.

Measured in one run, each rate the best of ``--repeat`` runs (the median and the run-to-run spread too):

* the whole path, frames/s: the real `CanGateway` service under a `vwos.Supervisor`, its link a
  `MemoryTransport` fed batches of ``--batch`` frames the way a drained socket delivers them; each frame is
  checked, decoded (cantools, then an attrs record) and published as a typed sample on
  ``CAN.<network>.<Message>``; one subscriber on ``CAN.**`` reads them with ``receive_batch``. The next
  batch arrives once every sample of the last one reached the subscriber; the run is done when every
  sample arrived. Also CPU µs per frame (``time.process_time`` over the timed part). Nothing may be
  dropped: samples received must equal samples expected and the subscriber's drop count must be 0.
* ``CanCodec.decode`` alone over the same frames: the gateway's decoding without trio or the bus.
* cantools' bare decode loop over the same frames, ``db.decode_message(frame_id, data,
  decode_choices=False)``: the floor of any cantools-based gateway.
* a paced run at 8,000 frames/s (the most a classic 1 Mbit/s CAN bus carries) for ``--seconds`` of real
  time: every 10 ms the 80 frames due are injected (``trio.sleep_until`` on the real clock). Reports the
  frames whose samples never reached the subscriber (must be 0), the lag from a batch's due time until
  the subscriber had all of it (max and p50), and the CPU load.

Usage: ``python bench/can.py [--json] [--frames N] [--repeat R] [--batch B] [--seconds S] [--profile K]``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import heapq
import importlib.metadata
import io
import math
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Python put bench/ first on sys.path, where this file would shadow python-can (``import can``) and
# bench/bus.py the bus package: move bench/ to the end of the path (a stable sort), the project root first.
sys.path.sort(key=lambda entry: Path(entry or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import can
import trio

from bench import _table
from bus import Bus, Subscription
from services.can import (
    CanCodec,
    CanGateway,
    CanTransport,
    GatewayConfig,
    MemoryTransport,
    load_database,
    status_topic,
)
from vwos import ServiceSpec, Supervisor, SupervisorPolicy, configure_logging

DBC = Path(__file__).resolve().parents[2] / "shared" / "dbc" / "vw_mqb.dbc"
NETWORK = "mqb"
GOAL_FRAMES_PER_S = 40_000
#: The most frames a classic CAN bus at 1 Mbit/s carries (about 125 µs per frame of 8 data bytes).
PACED_FRAMES_PER_S = 8_000
#: The paced run injects the frames due every this many seconds.
PACED_TICK = 0.010
#: A batch of a flat-out run whose samples stopped coming for this long (seconds) lost some of them.
STALL = 5.0
#: A paced run waits this long (seconds) after its last batch for the samples still on their way.
PACED_GRACE = 1.0
DEFAULT_FRAMES = 100_000
DEFAULT_BATCH = 256
DEFAULT_SECONDS = 3.0
#: The subscriber's queue: a few of the biggest batch a transport hands over (512), so that only a
#: subscriber that really falls behind drops samples. Drops are counted anyway.
QUEUE_SIZE = 4 * 512
#: Source timestamps of the generated traffic start here (seconds since the epoch).
EPOCH = 1_700_000_000.0

#: Typical cycle times (ms) of MQB messages; the database carries none. Those marked "op" are the rates
#: openpilot's Volkswagen MQB car port expects (selfdrive/car/volkswagen/carstate.py, get_can_parser:
#: LWI_01, LH_EPS_03, ESP_19 at 100 Hz; ESP_02, ESP_05, ESP_21, Motor_20, TSK_06 at 50 Hz; GRA_ACC_01 at
#: 33 Hz; Gateway_73, Getriebe_11, SWA_01 at 20 Hz; ACC_02 at 17 Hz; Gateway_72, Motor_14, LDW_02,
#: Motor_EV_01 at 10 Hz; Airbag_02 at 5 Hz; Kombi_01 at 2 Hz; Blinkmodi_02, Kombi_03, Einheiten_01 at
#: 1 Hz) and sends (HCA_01, ACC_06, ACC_07, ACC_10 at 50 Hz). The others are typical of their kind:
#: chassis, drivetrain and driver-assistance dynamics at 10 or 20 ms, body and comfort at 100 ms (the
#: default), network management, identification and diagnosis at 1000 ms.
CYCLE_MS: dict[str, int] = {
    # steering and brakes
    "LWI_01": 10,  # op
    "LH_EPS_03": 10,  # op
    "ESP_19": 10,  # op
    "ESP_02": 20,  # op
    "ESP_05": 20,  # op
    "ESP_21": 20,  # op
    "ESP_10": 20,
    "ESP_08": 20,
    "ESP_33": 20,
    "ESP_15": 20,
    "LH_EPS_01": 20,
    "EPB_01": 20,
    "Airbag_01": 20,
    "HCA_01": 20,  # op
    # engine and gearbox
    "Motor_11": 10,
    "Motor_12": 10,
    "Motor_Hybrid_01": 10,
    "Getriebe_Hybrid_01": 10,
    "Motor_20": 20,  # op
    "TSK_06": 20,  # op
    "Motor_04": 20,
    "Getriebe_12": 20,
    "Getriebe_13": 20,
    "Waehlhebel_03": 20,
    "Getriebe_11": 50,  # op
    # driver assistance
    "ACC_06": 20,  # op
    "ACC_07": 20,  # op
    "ACC_10": 20,  # op
    "PLA_01": 20,
    "GRA_ACC_01": 30,  # op
    "Gateway_73": 50,  # op
    "SWA_01": 50,  # op
    "ACC_02": 60,  # op
    # 100 ms, named for the record (the default anyway)
    "Gateway_72": 100,  # op
    "Motor_14": 100,  # op
    "LDW_02": 100,  # op
    "Motor_EV_01": 100,  # op
    "Klemmen_Status_01": 100,
    # slow
    "Airbag_02": 200,  # op
    "Kombi_01": 500,  # op
    "Blinkmodi_02": 1000,  # op
    "Kombi_03": 1000,  # op
    "Einheiten_01": 1000,  # op
    "Diagnose_01": 1000,
    "VIN_01": 1000,
    "Systeminfo_01": 1000,
    "Motor_Code_01": 1000,
    "Remotestart_FFB": 1000,
}
#: Network management (NMH_*) and other node messages (KN_*) are rare.
RARE_PREFIXES = ("NMH_", "KN_")
DEFAULT_CYCLE_MS = 100


def cycle_ms(message: str) -> int:
    """The cycle time (ms) the benchmark sends ``message`` at."""
    if message in CYCLE_MS:
        return CYCLE_MS[message]
    return 1000 if message.startswith(RARE_PREFIXES) else DEFAULT_CYCLE_MS


def _collect() -> None:
    """Start every run from the same heap: no garbage of the previous run to collect on our time."""
    gc.collect()


# -- traffic ---------------------------------------------------------------------------------------------


class _SignalWave:
    """Plausible successive values of one signal, always inside its [minimum, maximum]."""

    def __init__(self, signal: Any, index: int) -> None:
        self.name: str = signal.name
        lo, hi = float(signal.minimum), float(signal.maximum)
        if not signal.is_float:  # the range the bits can carry (opendbc has a 4-bit COUNTER up to 255)
            raw_lo = -(1 << (signal.length - 1)) if signal.is_signed else 0
            raw_hi = (1 << (signal.length - 1)) - 1 if signal.is_signed else (1 << signal.length) - 1
            ends = sorted((raw_lo * signal.scale + signal.offset, raw_hi * signal.scale + signal.offset))
            lo, hi = max(lo, ends[0]), min(hi, ends[1])
        self.lo, self.hi = lo, hi
        upper = signal.name.upper()
        self.kind = "wave"
        if "COUNTER" in upper or upper.endswith("_BZ"):
            self.kind = "counter"  # a message counter: 0, 1, ..., 15, 0, ...
        elif "CHECKSUM" in upper or upper.endswith("_CRC"):
            self.kind = "checksum"
        elif signal.length == 1:
            self.kind = "flag"
        elif signal.choices:
            self.kind = "choice"
            self.choices = [float(int(v)) for v in signal.choices if lo <= int(v) <= hi] or [lo]
        # Each signal its own pace and phase, so values do not all move together.
        self.period = 50 + (index * 37) % 400
        self.phase = (index * 0.7) % (2 * math.pi)

    def value(self, k: int) -> float:
        """The value in the ``k``-th frame of its message."""
        lo, hi = self.lo, self.hi
        if self.kind == "counter":
            return lo + k % int(hi - lo + 1)
        if self.kind == "checksum":
            return lo + (k * 167 + self.period) % int(hi - lo + 1)
        if self.kind == "flag":
            return lo if (k // self.period) % 2 == 0 else hi
        if self.kind == "choice":
            return self.choices[(k // self.period) % len(self.choices)]
        swing = 0.5 + 0.5 * math.sin(self.phase + 2 * math.pi * k / self.period)
        return min(max(lo + (hi - lo) * swing, lo), hi)


def decodable(message: Any) -> bool:
    """Whether cantools decodes frames of ``message`` at all. Not so PLA_01 of ``vw_mqb.dbc``: its signals
    overlap (hence ``strict=False``) and cantools 45 neither decodes nor encodes it (every frame of it is
    counted ``undecodable`` by the gateway). The traffic leaves such messages out."""
    try:
        message.decode(bytes(message.length), decode_choices=False)
    except Exception:
        return False
    return True


class _MessageSource:
    """Successive frames of one message: every signal's next value, encoded with the gateway's codec."""

    def __init__(self, codec: CanCodec, message: Any, first_index: int) -> None:
        self.codec = codec
        self.name: str = message.name
        self.frame_id: int = message.frame_id
        self.period = cycle_ms(message.name) / 1000.0
        self.waves = [_SignalWave(s, first_index + i) for i, s in enumerate(message.signals)]
        self.count = 0
        # A multiplexed message (VIN_01) carries one multiplexer value's signals per frame: cycle them.
        self.mux: tuple[str, list[int], dict[int, set[str]]] | None = None
        if message.is_multiplexed():
            muxer = next(s for s in message.signals if s.is_multiplexer)
            ids = sorted({i for s in message.signals for i in (s.multiplexer_ids or ())})
            members = {
                i: {s.name for s in message.signals if not s.multiplexer_ids or i in s.multiplexer_ids}
                for i in ids
            }
            self.mux = (muxer.name, ids, members)

    def next_frame(self, timestamp: float) -> can.Message:
        k = self.count
        self.count += 1
        values = {w.name: w.value(k) for w in self.waves}
        if self.mux is not None:
            # The codec's defaults hold every multiplexer value's signals, which cantools refuses: give it
            # only the signals of this frame's multiplexer value, as the base.
            name, ids, members = self.mux
            selected = ids[k % len(ids)]
            values = {n: v for n, v in values.items() if n in members[selected]}
            values[name] = float(selected)
            frame = self.codec.encode(self.name, {}, base=values)
        else:
            frame = self.codec.encode(self.name, values)
        return can.Message(
            timestamp=timestamp,
            arbitration_id=frame.arbitration_id,
            data=frame.data,
            is_extended_id=frame.is_extended_id,
            is_fd=frame.is_fd,
            dlc=len(frame.data),
        )


def mix(db: Any) -> list[Any]:
    """The messages of the traffic: every message of the database that cantools can decode."""
    return [m for m in db.messages if decodable(m)]


def bus_load(messages: Sequence[Any]) -> float:
    """Frames per second the traffic mix carries on one bus."""
    return sum(1000.0 / cycle_ms(m.name) for m in messages)


def traffic(codec: CanCodec, n: int) -> list[can.Message]:
    """The first ``n`` frames of the mix, in time order, each message at its cycle time and phase."""
    sources: list[_MessageSource] = []
    index = 0
    for message in mix(codec.db):
        sources.append(_MessageSource(codec, message, index))
        index += len(message.signals)
    # (due time, source number): each message starts at its own offset inside its first cycle.
    due = [(s.period * ((s.frame_id * 7919) % 1000) / 1000.0, i) for i, s in enumerate(sources)]
    heapq.heapify(due)
    frames: list[can.Message] = []
    while len(frames) < n:
        t, i = heapq.heappop(due)
        source = sources[i]
        frames.append(source.next_frame(EPOCH + t))
        heapq.heappush(due, (t + source.period, i))
    return frames


def batches(frames: Sequence[can.Message], size: int) -> list[Sequence[can.Message]]:
    return [frames[i : i + size] for i in range(0, len(frames), size)]


# -- references: decoding alone --------------------------------------------------------------------------


def cantools_decode(db: Any, pairs: Sequence[tuple[int, bytearray]]) -> float:
    """Seconds cantools takes to decode every frame: the floor of a cantools-based gateway."""
    decode = db.decode_message
    started = time.perf_counter()
    for frame_id, data in pairs:
        decode(frame_id, data, decode_choices=False)
    return time.perf_counter() - started


def codec_decode(codec: CanCodec, pairs: Sequence[tuple[int, bytearray]]) -> tuple[float, int]:
    """Seconds the gateway's codec takes to turn every frame into (topic, record) pairs, and the pairs."""
    decode = codec.decode
    samples = 0
    started = time.perf_counter()
    for frame_id, data in pairs:
        samples += len(decode(frame_id, data))
    return time.perf_counter() - started, samples


# -- the whole path: the gateway service on a bus ----------------------------------------------------------


class _Link:
    """The benchmark's side of the gateway's link: the in-memory transport, and the gateway once it runs."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()
        self.gateway: CanGateway | None = None


def gateway_class(link: _Link) -> type[CanGateway]:
    class BenchGateway(CanGateway):
        """The real gateway; its link is the benchmark's in-memory transport."""

        def open_transport(self) -> CanTransport:
            link.gateway = self
            return link.transport

    return BenchGateway


@dataclass(frozen=True)
class SaturatedRun:
    """One run of the whole path flat out: frames in, samples received and dropped, wall and CPU seconds."""

    #: Frames injected; each makes one sample (`main` checks it).
    frames: int
    #: Samples the subscriber took from its queue.
    received: int
    #: Samples the bus pushed to the subscriber that its full queue dropped (the bus counts them as
    #: pushed - received - queued: none of them is in ``received``).
    dropped: int
    seconds: float
    cpu: float

    @property
    def per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu / self.frames * 1e6

    @property
    def lost(self) -> int:
        """Frames whose samples never reached the subscriber (one sample per frame): those its queue dropped,
        those still queued when the run ended and those never published. ``dropped`` is among them already."""
        return self.frames - self.received


class _Progress:
    """Samples the subscriber has received; lets the injector wait for a count."""

    def __init__(self) -> None:
        self.received = 0
        self._want = math.inf
        self._event = trio.Event()

    def add(self, n: int) -> None:
        self.received += n
        if self.received >= self._want:
            self._event.set()

    async def wait_for(self, n: int) -> None:
        if self.received >= n:
            return
        self._want, self._event = n, trio.Event()
        await self._event.wait()
        self._want = math.inf


async def saturated(
    bus: Bus, transport: MemoryTransport, chunks: Sequence[Sequence[can.Message]]
) -> SaturatedRun:
    """Feed ``chunks`` to the gateway one batch at a time, each once the last one reached the subscriber.

    Each frame yields one sample (`main` checks it), so a batch is through once the samples received
    caught up with the frames injected. A batch whose samples stop coming for `STALL` seconds ends the
    run: the samples missing are counted as lost.
    """
    sub: Subscription[Any] = bus.client("bench.subscriber").subscribe("CAN.**", queue_size=QUEUE_SIZE)
    progress = _Progress()
    frames = sum(len(c) for c in chunks)
    inject = transport.inject
    ended = [0.0, 0.0]

    async def subscriber() -> None:
        add, receive_batch = progress.add, sub.receive_batch
        while progress.received < frames:
            add(len(await receive_batch()))
        ended[:] = [time.perf_counter(), time.process_time()]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        await trio.lowlevel.checkpoint()  # the subscriber waits for samples before the clock starts
        started, cpu_started = time.perf_counter(), time.process_time()
        injected = 0
        for chunk in chunks:
            inject(*chunk)
            injected += len(chunk)
            with trio.move_on_after(STALL) as waited:
                await progress.wait_for(injected)
            if waited.cancelled_caught:
                ended[:] = [time.perf_counter(), time.process_time()]
                nursery.cancel_scope.cancel()
                break
    stats = sub.statistics()
    sub.close()
    return SaturatedRun(frames, progress.received, stats.dropped, ended[0] - started, ended[1] - cpu_started)


@dataclass(frozen=True)
class PacedRun(SaturatedRun):
    """A run at a fixed frame rate on the real clock: the figures of a run, and each batch's lag."""

    #: Seconds from each batch's due time until the subscriber had all of it, in order.
    lags: list[float]


async def paced(
    bus: Bus, transport: MemoryTransport, frames: Sequence[can.Message], seconds: float
) -> PacedRun:
    """Inject the frames due every `PACED_TICK` at `PACED_FRAMES_PER_S`, for ``seconds`` of real time."""
    per_tick = round(PACED_FRAMES_PER_S * PACED_TICK)
    ticks = max(1, round(seconds / PACED_TICK))
    total = ticks * per_tick
    stream = [frames[i % len(frames)] for i in range(total)]  # the mix again if it is shorter
    sub: Subscription[Any] = bus.client("bench.paced").subscribe("CAN.**", queue_size=QUEUE_SIZE)
    due: list[float] = []
    lags: list[float] = []
    received = 0
    done = trio.Event()

    async def subscriber() -> None:
        nonlocal received
        receive_batch = sub.receive_batch
        while received < total:
            received += len(await receive_batch())
            now = trio.current_time()
            # A batch is through once every sample of it (and of those before it) arrived.
            while len(lags) < len(due) and received >= (len(lags) + 1) * per_tick:
                lags.append(now - due[len(lags)])
        done.set()

    inject = transport.inject
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        start = trio.current_time() + PACED_TICK
        started, cpu_started = time.perf_counter(), time.process_time()
        for k in range(ticks):
            at = start + k * PACED_TICK
            await trio.sleep_until(at)
            due.append(at)
            inject(*stream[k * per_tick : (k + 1) * per_tick])
        with trio.move_on_after(PACED_GRACE):
            await done.wait()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        nursery.cancel_scope.cancel()
    stats = sub.statistics()
    sub.close()
    return PacedRun(total, received, stats.dropped, seconds, cpu, lags=lags)


async def measure(
    frames: Sequence[can.Message],
    repeat: int,
    batch: int,
    seconds: float,
    profile_top: int,
) -> dict[str, Any]:
    """Start the gateway once, then the saturated runs, the paced run, and a profile if asked."""
    link = _Link()
    bus = Bus()
    config = GatewayConfig(
        database=DBC,
        network=NETWORK,
        strict=False,
        kernel_filters=False,
        status_period=1e6,  # no status samples on CAN.** while measuring
    )
    spec = ServiceSpec("can_gateway", gateway_class(link), config)
    supervisor = Supervisor([spec], policy=SupervisorPolicy(intensity=0, period=1.0), bus=bus)
    status = bus.client("bench.status").subscribe(status_topic(NETWORK).name, queue_size=16)
    chunks = batches(frames, batch)
    runs: list[SaturatedRun] = []
    profile: str | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        async for sample in status:  # ready is not up: the link opens after the service is ready
            if sample.value.state == "up":
                break
        status.close()
        gateway = link.gateway
        assert gateway is not None
        # A short untimed warm-up of the path.
        warm = frames[: min(len(frames), 10 * batch)]
        await saturated(bus, link.transport, batches(warm, batch))
        for _ in range(repeat):
            _collect()
            runs.append(await saturated(bus, link.transport, chunks))
        _collect()
        paced_run = await paced(bus, link.transport, frames, seconds)
        if profile_top:
            _collect()
            profiler = cProfile.Profile()
            profiler.enable()
            await saturated(bus, link.transport, chunks)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile_top)
            profile = out.getvalue()
        counters = gateway.status()
        supervisor.shutdown()
    return {"runs": runs, "paced": paced_run, "status": counters, "profile": profile}


# -- the whole benchmark ---------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _timed(fn: Callable[[], float], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        _collect()
        out.append(fn())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = _table.parser(__doc__, default_samples=DEFAULT_FRAMES)
    parser.add_argument(
        "--frames",
        dest="samples",
        type=_table.positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="frames of one run (the same as --samples / --size)",
    )
    parser.add_argument(
        "--batch",
        type=_table.positive_int,
        default=DEFAULT_BATCH,
        help="frames the transport hands the gateway at once (at most 512, as a drained socket)",
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=DEFAULT_SECONDS,
        help=f"real time of the paced run at {PACED_FRAMES_PER_S:,} frames/s",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="profile one more saturated run and print its K costliest functions to stderr",
    )
    args = parser.parse_args(argv)
    n, repeat, batch, seconds = args.samples, args.repeat, min(args.batch, 512), args.seconds
    # Service logs go to stderr, and only warnings: stdout is the table or the one JSON object.
    configure_logging(format="json", level="warning", stream=sys.stderr)

    db = load_database(DBC, strict=False)
    codec = CanCodec(db, NETWORK)
    frames = traffic(codec, n)
    pairs = [(m.arbitration_id, m.data) for m in frames]
    # The samples the gateway must deliver: what its codec makes of the frames (one per frame).
    _, expected = codec_decode(codec, pairs)
    if expected != len(frames):
        raise RuntimeError(f"{len(frames)} frames decode into {expected} samples, not one each")

    cantools_runs = _table.Runs(
        "frames/s", [n / s for s in _timed(lambda: cantools_decode(db, pairs), repeat)]
    )
    codec_runs = _table.Runs(
        "frames/s", [n / s for s in _timed(lambda: codec_decode(codec, pairs)[0], repeat)]
    )
    measured = trio.run(measure, frames, repeat, batch, seconds, max(args.profile, 0))
    runs: list[SaturatedRun] = measured["runs"]
    paced_run: PacedRun = measured["paced"]
    whole = _table.Runs("frames/s", [r.per_s for r in runs])
    cpu = _table.Runs("us", [r.cpu_us_per_frame for r in runs], higher_is_better=False)
    lost = sum(r.lost for r in runs)
    status = measured["status"]
    frame_errors = status.unknown_ids + status.wrong_lengths + status.undecodable + status.error_frames
    dropped_paced = paced_run.lost
    lag_max = max(paced_run.lags) * 1e3 if paced_run.lags else None
    lag_p50 = _table.percentile(paced_run.lags, 50) * 1e3 if paced_run.lags else None
    paced_load = paced_run.cpu / paced_run.seconds
    vs_cantools = _table.ratio(whole.best, cantools_runs.best)
    messages = mix(db)
    skipped = sorted(m.name for m in db.messages if m not in messages)
    per_bus = bus_load(messages)

    result: dict[str, Any] = {
        "benchmark": "can",
        "frames_per_s": whole.best,
        "cpu_us_per_frame": cpu.best,
        "cpu_frames_per_s": 1e6 / cpu.best,
        "codec_decode_frames_per_s": codec_runs.best,
        "cantools_decode_frames_per_s": cantools_runs.best,
        "gateway_vs_cantools_decode": vs_cantools,
        "dropped_at_8000_fps": dropped_paced,
        "max_lag_ms_at_8000_fps": lag_max,
        "p50_lag_ms_at_8000_fps": lag_p50,
        "cpu_load_at_8000_fps": paced_load,
        "paced_frames": paced_run.frames,
        "paced_seconds": paced_run.seconds,
        "dropped_saturated": lost,
        "frame_errors": frame_errors,
        "goal_frames_per_s": GOAL_FRAMES_PER_S,
        "goal_frames_per_s_met": whole.best >= GOAL_FRAMES_PER_S,
        "goal_no_drop_at_8000_fps_met": dropped_paced == 0,
        "figures": "best of the runs (highest rate, lowest CPU time); spread = (max - min) / median",
        "runs": {
            "frames_per_s": whole,
            "cpu_us_per_frame": cpu,
            "codec_decode_frames_per_s": codec_runs,
            "cantools_decode_frames_per_s": cantools_runs,
        },
        "spread_frames_per_s": whole.spread,
        "spread_cpu_us_per_frame": cpu.spread,
        "spread_codec_decode": codec_runs.spread,
        "spread_cantools_decode": cantools_runs.spread,
        "frames": n,
        "samples_per_run": expected,
        "repeat": repeat,
        "batch": batch,
        "paced_frames_per_s": PACED_FRAMES_PER_S,
        "paced_tick_ms": PACED_TICK * 1e3,
        "database": DBC.name,
        "database_messages": len(db.messages),
        "mix_messages": len(messages),
        "skipped_messages": skipped,
        "mix_frames_per_s_per_bus": per_bus,
        **_table.environment(
            trio=trio.__version__,
            cantools=_version("cantools"),
            python_can=_version("python-can"),
            attrs=_version("attrs"),
        ),
    }

    frames_per_s = functools.partial(_table.rate, unit=" frames/s")
    table = _table.Table(
        f"vwos CAN gateway, {DBC.name} ({len(messages)} of its {len(db.messages)} messages, "
        f"{per_bus:,.0f} frames/s per bus): best of {repeat} run{'s' if repeat > 1 else ''} of {n:,} "
        f"frames in batches of {batch}, Python {result['python']}",
        ["figure", "best", "median", "spread", "gateway / it"],
    )
    table.runs("gateway, whole path: frames -> subscriber", whole, fmt=frames_per_s)
    table.runs("gateway, whole path: CPU per frame", cpu, fmt=_table.micros)
    table.rule()
    table.runs(
        "CanCodec.decode alone",
        codec_runs,
        _table.times(_table.ratio(whole.best, codec_runs.best)),
        fmt=frames_per_s,
    )
    floor = "cantools decode_message alone (the floor)"
    table.runs(floor, cantools_runs, _table.times(vs_cantools), fmt=frames_per_s)
    table.rule()
    table.row(
        f"paced {PACED_FRAMES_PER_S:,} frames/s, {paced_run.seconds:.1f} s: dropped",
        f"{dropped_paced:,}",
        "",
        "",
    )
    table.row(
        "paced: lag due -> subscriber, max / p50",
        "-" if lag_max is None else f"{lag_max:.2f} ms",
        "-" if lag_p50 is None else f"{lag_p50:.2f} ms",
    )
    table.row("paced: CPU load", _table.percent(paced_load))
    table.note(
        "best: highest rate / lowest CPU time of the runs; spread: (max - min) / median; "
        "gateway / it: the whole path's rate over that one"
    )
    table.note(
        f"dropped flat out: {lost} samples (must be 0); frame errors: {frame_errors} (must be 0); "
        f"paced lag is from a batch's due time until the subscriber had all of it"
    )
    if skipped:
        table.note(f"left out of the traffic, cantools cannot decode them: {', '.join(skipped)}")
    table.goal(
        f">= {GOAL_FRAMES_PER_S:,} frames/s through the whole path (five saturated buses)",
        whole.best >= GOAL_FRAMES_PER_S,
        _table.rate(whole.best, " frames/s"),
    )
    table.goal(
        f"no dropped frame at {PACED_FRAMES_PER_S:,} frames/s",
        dropped_paced == 0,
        f"{dropped_paced} dropped of {paced_run.frames:,}",
    )
    _table.emit(args, result, table)
    if measured["profile"] is not None:
        sys.stderr.write(f"\ncProfile of one more flat-out run of {n:,} frames:\n{measured['profile']}")
    if lost or dropped_paced or frame_errors:
        print(
            f"error: {lost} samples lost flat out, {dropped_paced} frames lost at {PACED_FRAMES_PER_S} "
            f"frames/s, {frame_errors} frame errors",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
