"""The CAN gateway benchmark: frames through the whole receive path, beside opendbc's CANParser and cantools'
bare decode loop, on the same frames in the same run.

Traffic is a realistic mix of the messages of a CAN database: ``--dbc PATH`` (``--no-strict`` for files
with overlapping signals), by default the real Volkswagen MQB database ``../shared/dbc/vw_mqb.dbc`` (loaded
with ``strict=False``). Every message that cantools encodes and decodes is sent at its cycle time (the
database's; else a typical MQB one, `CYCLE_MS`: ``vw_mqb.dbc`` has none; else 100 ms) with random values
valid for the database (seeded: the same frames every run): raw values inside each signal's [minimum,
maximum] (taken in raw space; what its bits carry where it declares no range), drifting like a car's,
counters counting, flags and enumerations changing now and then, multiplexed messages through their pages;
checksums are opendbc's where it knows the database's algorithm (so the frames are valid for its checks),
else random. Messages longer than 8 bytes are CAN FD frames. All of it before anything is timed.

Measured in one run, each rate the best of ``--repeat`` runs (the median and the run-to-run spread too):

* the whole path, frames/s: the real `CanGateway` service under a `vwos.Supervisor`, its link a
  `MemoryTransport` fed batches of ``--batch`` frames the way a drained socket delivers them; each frame is
  checked, decoded (cantools, then an attrs record) and published as a typed sample on
  ``CAN.<network>.<Message>``; one subscriber on ``CAN.**`` reads them with ``receive_batch``. The next
  batch arrives once every sample of the last one reached the subscriber; the run is done when every
  sample arrived. Also CPU µs per frame (``time.process_time`` over the timed part). Nothing may be
  dropped: samples received must equal samples expected and the subscriber's drop count must be 0.
  The gateway checks end-to-end protection where the database has it (`e2e_configs`; ``--no-e2e``: not),
  the traffic's counters and CRCs filled by the gateway's own protectors; no frame may fail.
* opendbc's ``CANParser.update`` over the same frames in the same batches (PyPI ``opendbc``, the bench
  extra): its own DBC parser reads the same file; it checks checksums and counters where it knows the
  file's algorithm (``vw_mqb*``: Volkswagen's CRC8), into per-message value dicts. Frames it rejects are
  counted (must be 0). Without opendbc (Python >= 3.13 has no release of it) it is reported as not measured.
* ``CanCodec.decode`` alone over the same frames: the gateway's decoding without trio or the bus.
* cantools' bare decode loop over the same frames (each frame's message's ``decode``,
  ``decode_choices=False``): the floor of any cantools-based gateway.
* a paced run at 8,000 frames/s (the most a classic 1 Mbit/s CAN bus carries) for ``--seconds`` of real
  time: every 10 ms the 80 frames due are injected (``trio.sleep_until`` on the real clock). Reports the
  frames whose samples never reached the subscriber (must be 0), the lag from a batch's due time until
  the subscriber had all of it (max and p50), and the CPU load.

Usage: ``python bench/can.py [--json] [--dbc PATH [--no-strict]] [--no-e2e] [--frames N] [--repeat R]
[--batch B] [--seconds S] [--profile K]``.
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
import random
import re
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
    E2E,
    CanCodec,
    CanDatabaseError,
    CanGateway,
    CanTransport,
    E2EConfigError,
    FrameError,
    GatewayConfig,
    MemoryTransport,
    bind_e2e,
    find_e2e_signals,
    load_database,
    status_topic,
)
from vwos import ServiceSpec, Supervisor, SupervisorPolicy, configure_logging

DEFAULT_DBC = Path(__file__).resolve().parents[2] / "shared" / "dbc" / "vw_mqb.dbc"
NETWORK = "bench"
GOAL_FRAMES_PER_S = 40_000
#: The whole path against opendbc's CANParser on the same frames (the CAN gateway issue's goal).
GOAL_VS_OPENDBC = 1.5
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


def cycle_ms(message: Any) -> int:
    """The cycle time (ms) the benchmark sends ``message`` (a cantools message) at: the database's, else
    `CYCLE_MS` (MQB's), else 1000 for network management, else `DEFAULT_CYCLE_MS`."""
    if message.cycle_time:
        return max(1, int(message.cycle_time))
    name: str = message.name
    if name in CYCLE_MS:
        return CYCLE_MS[name]
    return 1000 if name.startswith(RARE_PREFIXES) else DEFAULT_CYCLE_MS


def _collect() -> None:
    """Start every run from the same heap: no garbage of the previous run to collect on our time."""
    gc.collect()


# -- traffic ---------------------------------------------------------------------------------------------

#: Signals named like alive counters count up by one per frame of their message (opendbc checks MQB's).
_COUNTER = re.compile(r"(?:^|_)(?:COUNTER|CNT|BZ|ALIVE)$|counter$", re.IGNORECASE)
#: Signals named like checksums get opendbc's checksum where it knows the database's algorithm.
_CHECKSUM = re.compile(r"(?:^|_)(?:CRC\d*|CHK)$|che?c?ksum$", re.IGNORECASE)
#: The seed of the traffic's random values: every run of the benchmark measures the same frames.
SEED = 12


def raw_bounds(signal: Any) -> tuple[float, float]:
    """The raw values a signal may take: what its bits carry, within its declared [minimum, maximum] (taken
    in raw space, so a value decoded from them is in range), or all its bits carry where it declares none
    (or a range its bits cannot reach)."""
    if signal.is_float:
        low: float = -1e3 if signal.minimum is None else float(signal.minimum)
        high: float = 1e3 if signal.maximum is None else float(signal.maximum)
        return (low, high) if low <= high else (-1e3, 1e3)
    bits_low = -(1 << (signal.length - 1)) if signal.is_signed else 0
    bits_high = (1 << (signal.length - 1)) - 1 if signal.is_signed else (1 << signal.length) - 1
    ends = [
        (float(v) - signal.offset) / signal.scale for v in (signal.minimum, signal.maximum) if v is not None
    ]
    if len(ends) < 2 or not signal.scale:
        return bits_low, bits_high
    tolerance = 1e-9 * max(1.0, *(abs(e) for e in ends))
    low, high = math.ceil(min(ends) - tolerance), math.floor(max(ends) + tolerance)
    low, high = max(low, bits_low), min(high, bits_high)
    return (low, high) if low <= high else (bits_low, bits_high)


class _SignalWalk:
    """Successive raw values of one signal, always inside its `raw_bounds`: random, and like a car's (a
    value drifts rather than jumps; a flag or an enumeration changes now and then)."""

    def __init__(self, signal: Any, rng: random.Random) -> None:
        self.name: str = signal.name
        self.rng = rng
        self.integer = not signal.is_float
        self.low, self.high = raw_bounds(signal)
        span = self.high - self.low
        self.choices = [
            raw for raw in (signal.choices or {}) if isinstance(raw, int) and self.low <= raw <= self.high
        ]
        if self.integer and _COUNTER.search(self.name) and span >= 1:
            self.kind = "counter"
        elif self.integer and _CHECKSUM.search(self.name):
            self.kind = "checksum"  # random, unless opendbc's algorithm fills it (`_Checksums`)
        elif self.choices:
            self.kind = "choice"
        elif self.integer and span <= 1:
            self.kind = "flag"
        else:
            self.kind = "value"
        self.step = span * 0.01
        self.value = self.low + rng.random() * span
        self.start = rng.randrange(0, 1 << 16)  # where a counter starts

    def next(self, k: int) -> float:
        """The raw value in the ``k``-th frame of its message."""
        rng, low, high = self.rng, self.low, self.high
        if self.kind == "counter":
            return low + (self.start + k) % int(high - low + 1)
        if self.kind == "checksum":
            return rng.randint(int(low), int(high))
        if self.kind == "choice":
            if k == 0 or rng.random() < 0.02:
                self.value = rng.choice(self.choices)
            return self.value
        if self.kind == "flag":
            if rng.random() < 0.02:
                self.value = high if self.value == low else low
            return round(self.value)
        value = self.value + rng.gauss(0.0, 1.0) * self.step  # a random walk, reflected at the ends
        if value < low:
            value = min(2 * low - value, high)
        elif value > high:
            value = max(2 * high - value, low)
        self.value = value
        return min(max(round(value), int(low)), int(high)) if self.integer else value


class _Checksums:
    """opendbc's checksums of the database's messages, where opendbc knows the algorithm (it chooses it by
    the file's name: ``vw_mqb*`` is Volkswagen's CRC8 with a per-message data id). With them the frames are
    valid for opendbc's `CANParser`, which checks them (and the counters) on every frame."""

    def __init__(self, dbc: Any) -> None:
        self.dbc = dbc

    def signal(self, address: int) -> Any | None:
        message = self.dbc.addr_to_msg.get(address)
        if message is None:
            return None
        return next((s for s in message.sigs.values() if s.calc_checksum is not None), None)


def opendbc_address(message: Any) -> int:
    """The address opendbc files a message under: the DBC's id, with bit 31 for an extended one."""
    return int(message.frame_id) | (0x80000000 if message.is_extended_frame else 0)


def is_fd(message: Any) -> bool:
    """CAN FD: declared so, or longer than 8 bytes (no classic frame is)."""
    return bool(message.is_fd) or message.length > 8


class _MessageSource:
    """Successive frames of one message: every signal's next raw value, encoded by cantools."""

    def __init__(
        self,
        message: Any,
        rng: random.Random,
        checksum: Any | None = None,
        protect: Callable[[Any, bytes], bytes] | None = None,
    ) -> None:
        self.message = message
        self.name: str = message.name
        self.frame_id: int = message.frame_id
        self.period = cycle_ms(message) / 1000.0
        self.rng = rng
        self.walks = [_SignalWalk(s, rng) for s in message.signals]
        self.count = 0
        self.checksum = checksum
        self.protect = protect
        self.fd = is_fd(message)

    def _pick_pages(self, nodes: list[Any], values: dict[str, float], k: int) -> None:
        """Set each multiplexer of ``nodes`` to one of its pages: the top one cycles with ``k``, nested ones
        at random."""
        for node in nodes:
            if isinstance(node, str):
                continue
            for mux, branches in node.items():
                pages = sorted(branches)
                page = pages[k % len(pages)] if nodes is self.message.signal_tree else self.rng.choice(pages)
                values[mux] = page
                self._pick_pages(branches[page], values, k)

    def data(self, k: int) -> bytes:
        values = {w.name: w.next(k) for w in self.walks}
        if self.message.is_multiplexed():
            self._pick_pages(self.message.signal_tree, values, k)
        encode = self.message.encode
        data = bytes(encode(values, scaling=False, padding=False, strict=False))
        if self.checksum is not None:
            values[self.checksum.name] = self.checksum.calc_checksum(
                opendbc_address(self.message), self.checksum, bytearray(data)
            )
            data = bytes(encode(values, scaling=False, padding=False, strict=False))
        if self.protect is not None:
            data = self.protect(self.message, data)
        return data

    def next_frame(self, timestamp: float) -> can.Message:
        data = self.data(self.count)
        self.count += 1
        return can.Message(
            timestamp=timestamp,
            arbitration_id=self.frame_id,
            data=data,
            is_extended_id=bool(self.message.is_extended_frame),
            is_fd=self.fd,
            dlc=len(data),
        )


def why_left_out(message: Any) -> str | None:
    """Why the traffic leaves ``message`` out (None: it does not): cantools must encode its frames and
    decode them again. Not so PLA_01 of ``vw_mqb.dbc``: its signals overlap (hence ``strict=False``) and
    cantools 45 neither decodes nor encodes it; on a car the gateway counts its frames ``undecodable``."""
    try:
        data = _MessageSource(message, random.Random(SEED)).data(0)
        message.decode(data, decode_choices=False)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(". ")
    return None


def mix(db: Any) -> list[Any]:
    """The messages of the traffic: every message of the database that cantools encodes and decodes."""
    return [m for m in db.messages if why_left_out(m) is None]


def bus_load(messages: Sequence[Any]) -> float:
    """Frames per second the traffic mix carries on one bus."""
    return sum(1000.0 / cycle_ms(m) for m in messages)


def traffic(
    messages: Sequence[Any],
    n: int,
    *,
    checksums: _Checksums | None = None,
    protect: Callable[[Any, bytes], bytes] | None = None,
) -> list[can.Message]:
    """The first ``n`` frames of the mix, in time order, each message at its cycle time and phase, with
    random values valid for the database (seeded: the same frames every run)."""
    rng = random.Random(SEED)
    sources = [
        _MessageSource(
            m, rng, None if checksums is None else checksums.signal(opendbc_address(m)), protect=protect
        )
        for m in messages
    ]
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


def cantools_decode(decoders: Sequence[tuple[Callable[..., Any], bytearray]]) -> float:
    """Seconds cantools takes to decode every frame (each with its message's ``decode``, found before the
    clock starts; ``db.decode_message`` would mix up a standard and an extended id of the same number):
    the floor of a cantools-based gateway."""
    started = time.perf_counter()
    for decode, data in decoders:
        decode(data, decode_choices=False)
    return time.perf_counter() - started


@dataclass
class Opendbc:
    """opendbc's `CANParser` set up for the traffic (a reference measured on the same frames), or why not."""

    #: Makes a fresh parser (its counter state starts anew each run); None if opendbc is not there.
    parser: Callable[[], Any] | None
    #: Why it is not measured ("" when it is).
    unavailable: str = ""
    checksums: _Checksums | None = None
    #: Messages of the mix opendbc knows, and those it checks (a checksum or a counter).
    messages: int = 0
    checked: int = 0
    #: Signals of those messages as cantools and as opendbc read them (opendbc skips what its parser
    #: does not match).
    signals: int = 0
    opendbc_signals: int = 0
    version: str | None = None


def setup_opendbc(path: Path, messages: Sequence[Any]) -> Opendbc:
    """opendbc's CANParser for ``messages`` of the database at ``path``.

    opendbc takes a DBC by name (a file in its own ``opendbc/dbc``) or by path: given a path, it reads the
    file itself and takes its name (the file's stem) to choose the checksum algorithm, so
    ``../shared/dbc/vw_mqb.dbc`` gets Volkswagen MQB's CRC8 and counter checks, and ``Model3CAN.dbc`` none.
    Messages are named to it by address (bit 31 set for extended ids), each with its cycle's frequency.
    """
    try:
        from opendbc.can.dbc import DBC
        from opendbc.can.parser import CANParser
    except Exception as exc:  # not installed (Python >= 3.13: opendbc has no wheel), or broken
        return Opendbc(None, f"opendbc is not importable ({type(exc).__name__}: {exc})")
    dbc = DBC(str(path))
    known = [m for m in messages if opendbc_address(m) in dbc.addr_to_msg]
    if not known:
        return Opendbc(None, f"opendbc knows none of the {len(messages)} messages in {path.name}")
    wanted = [(opendbc_address(m), 1000.0 / cycle_ms(m)) for m in known]
    ours = {opendbc_address(m): m for m in known}
    theirs = [dbc.addr_to_msg[a] for a in ours]
    checked = sum(
        any(s.calc_checksum is not None or s.type == 1 for s in msg.sigs.values()) for msg in theirs
    )
    return Opendbc(
        lambda: CANParser(str(path), wanted, 0),
        checksums=_Checksums(dbc),
        messages=len(known),
        checked=checked,
        signals=sum(len(m.signals) for m in known),
        opendbc_signals=sum(len(msg.sigs) for msg in theirs),
        version=_version("opendbc"),
    )


def opendbc_updates(frames: Sequence[can.Message], batch: int) -> list[list[tuple[int, list[Any]]]]:
    """The frames as `CANParser.update` takes them: per batch, (nanoseconds, [(address, data, bus)])."""
    out = []
    for chunk in batches(frames, batch):
        nanos = int(chunk[-1].timestamp * 1e9)
        out.append(
            [
                (
                    nanos,
                    [
                        (m.arbitration_id | (0x80000000 if m.is_extended_id else 0), bytes(m.data), 0)
                        for m in chunk
                    ],
                )
            ]
        )
    return out


def opendbc_decode(make: Callable[[], Any], updates: Sequence[Any]) -> tuple[float, float]:
    """Seconds opendbc's CANParser takes over every batch (a fresh parser, made before the clock starts):
    wall-clock and CPU (``time.process_time``, as the whole path's CPU per frame)."""
    parser = make()
    update = parser.update
    started, cpu_started = time.perf_counter(), time.process_time()
    for entry in updates:
        update(entry)
    return time.perf_counter() - started, time.process_time() - cpu_started


def opendbc_rejected(make: Callable[[], Any], frames: Sequence[can.Message]) -> int:
    """Frames opendbc's CANParser did not take (a failed checksum or counter check, or a message it does
    not know), fed one at a time, untimed: 0 means it did its whole work on every frame."""
    parser = make()
    rejected = 0
    for m in frames:
        address = m.arbitration_id | (0x80000000 if m.is_extended_id else 0)
        if address not in parser.update([(int(m.timestamp * 1e9), [(address, bytes(m.data), 0)])]):
            rejected += 1
    return rejected


def codec_decode(codec: CanCodec, pairs: Sequence[tuple[int, bytearray, bool]]) -> tuple[float, int]:
    """Seconds the gateway's codec takes to turn every frame into (topic, record) pairs, and the pairs."""
    decode = codec.decode
    samples = 0
    started = time.perf_counter()
    for frame_id, data, extended in pairs:
        samples += len(decode(frame_id, data, extended))
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


def _replay(gateway: CanGateway) -> None:
    """The same traffic comes again: its alive counters start over, as after a gap in the link (the
    gateway's E2E checks take the next counter as it is)."""
    gateway.reset_e2e()


async def measure(
    frames: Sequence[can.Message],
    repeat: int,
    batch: int,
    seconds: float,
    profile_top: int,
    gateway_options: dict[str, Any],
    before_each: Callable[[], None] = lambda: None,
    paced_frames: Sequence[can.Message] = (),
) -> dict[str, Any]:
    """Start the gateway once, then the saturated runs (each after ``before_each``: the references), the
    paced run, and a profile if asked. ``gateway_options`` are its `GatewayConfig` (the database,
    strictness, FD, E2E)."""
    link = _Link()
    bus = Bus()
    config = GatewayConfig(
        network=NETWORK,
        kernel_filters=False,
        status_period=1e6,  # no status samples on CAN.** while measuring
        **gateway_options,
    )
    spec = ServiceSpec("can_gateway", gateway_class(link), config)
    # No blocked-loop watch: the references run between the saturated runs, holding the loop on purpose.
    policy = SupervisorPolicy(intensity=0, period=1.0)
    supervisor = Supervisor([spec], policy=policy, bus=bus, loop_block=None)
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
            before_each()
            _replay(gateway)
            _collect()
            runs.append(await saturated(bus, link.transport, chunks))
        _replay(gateway)
        _collect()
        paced_run = await paced(bus, link.transport, paced_frames or frames, seconds)
        if profile_top:
            _replay(gateway)
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


# -- E2E on our side ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class E2ESetup:
    """The gateway's end-to-end checks for the traffic's protected messages, and the ``protect`` that fills
    their counters and CRCs the way those checks expect."""

    #: Added to the gateway's `GatewayConfig`: the E2E checks for the database's protected messages.
    gateway_options: dict[str, Any]
    #: ``protect(message, data) -> data``: the frame with its alive counter and CRC filled in (counting by
    #: one per frame of the message).
    protect: Callable[[Any, bytes], bytes]
    #: Messages it protects, by name.
    messages: tuple[str, ...]


def _mqb_data_ids() -> dict[int, list[int]]:
    """Volkswagen's per-message magic bytes (the MQB data ids), as opendbc lists them; none without it."""
    try:
        from opendbc.car.volkswagen.mqbcan import VOLKSWAGEN_MQB_MEB_CONSTANTS
    except Exception:
        return {}
    return {int(k): [int(b) for b in v] for k, v in VOLKSWAGEN_MQB_MEB_CONSTANTS.items()}


def e2e_configs(db: Any, path: Path) -> list[E2E]:
    """The E2E checks a car would configure for ``db``: for a Volkswagen MQB database (``vw_mqb*``, as
    opendbc tells them), ``vw_mqb`` on every message with a CRC and a counter whose magic bytes are known
    (opendbc's list); otherwise ``tesla`` on messages with a ``*Checksum`` and a ``*Counter`` (Model 3).
    Those that do not bind to their message are left out."""
    configs: list[E2E] = []
    mqb = path.name.startswith("vw_mqb")
    data_ids = _mqb_data_ids() if mqb else {}
    for message in db.messages:
        crc, counter = find_e2e_signals(message)
        if crc is None or counter is None:
            continue
        if mqb:
            ids = data_ids.get(message.frame_id)
            if ids is None or message.is_extended_frame:
                continue
            config = E2E(message=message.name, profile="vw_mqb", data_id=ids)
        elif crc.lower().endswith("checksum"):
            config = E2E(message=message.name, profile="tesla")
        else:
            continue
        try:
            config.bind(message)
        except E2EConfigError:
            continue
        configs.append(config)
    return configs


def e2e_setup(db: Any, path: Path) -> E2ESetup:
    """The gateway's E2E checks for ``db`` (read from ``path``), configured as a car would configure them
    (`e2e_configs`), and a ``protect`` that fills the frames the way the simulator and ``Send`` do."""
    configs = e2e_configs(db, path)
    protectors = {name: p.protector() for name, p in bind_e2e(configs, db).items()}

    def protect(message: Any, data: bytes) -> bytes:
        protector = protectors.get(message.name)
        return data if protector is None else protector.protect(data)

    return E2ESetup({"e2e": tuple(configs)}, protect, tuple(c.message for c in configs))


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
    parser.add_argument(
        "--dbc",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"the CAN database of the traffic (default: {DEFAULT_DBC.name} from ../shared, loaded with "
        "strict=False)",
    )
    parser.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        default=None,
        help="load --dbc with strict=False (real-world files with overlapping signals need it)",
    )
    parser.add_argument(
        "--e2e",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway's E2E checks on for the database's protected messages (default; see e2e_configs)",
    )
    args = parser.parse_args(argv)
    n, repeat, batch, seconds = args.samples, args.repeat, min(args.batch, 512), args.seconds
    path: Path = DEFAULT_DBC if args.dbc is None else args.dbc
    strict: bool = (args.dbc is not None) if args.strict is None else args.strict
    # Service logs go to stderr, and only warnings: stdout is the table or the one JSON object.
    configure_logging(format="json", level="warning", stream=sys.stderr)

    try:
        db = load_database(path, strict=strict)
        e2e = e2e_setup(db, path) if args.e2e else None
    except CanDatabaseError as exc:
        hint = " (real-world files often need --no-strict)" if strict and "strict" in str(exc) else ""
        print(
            f"error: {str(exc).replace(' (real-world files often need strict = false)', '')}{hint}",
            file=sys.stderr,
        )
        return 2
    messages = mix(db)
    if not messages:
        print(f"error: {path}: cantools encodes and decodes none of its messages", file=sys.stderr)
        return 2
    left_out = {m.name: why for m in db.messages if (why := why_left_out(m)) is not None}
    reference = setup_opendbc(path, messages)
    protect = None if e2e is None else e2e.protect
    frames = traffic(messages, n, checksums=reference.checksums, protect=protect)
    # The paced run's frames: the same mix, long enough not to come round again (its alive counters would
    # jump where it does, and the E2E checks would rightly fail those frames).
    paced_total = max(1, round(seconds / PACED_TICK)) * round(PACED_FRAMES_PER_S * PACED_TICK)
    paced_frames = (
        traffic(messages, paced_total, checksums=reference.checksums, protect=protect)
        if paced_total > n and protect is not None
        else frames
    )
    fd = any(m.is_fd for m in frames)
    codec = CanCodec(db, NETWORK)
    pairs = [(m.arbitration_id, m.data, m.is_extended_id) for m in frames]
    # The samples the gateway must deliver: what its codec makes of the frames (one per frame).
    try:
        _, expected = codec_decode(codec, pairs)
    except FrameError as exc:
        print(f"error: the gateway's codec refuses a frame cantools decodes: {exc}", file=sys.stderr)
        return 1
    if expected != len(frames):
        print(f"error: {len(frames)} frames decode into {expected} samples, not one each", file=sys.stderr)
        return 1
    by_key = {(m.frame_id, bool(m.is_extended_frame)): m for m in messages}
    decoders = [(by_key[m.arbitration_id, m.is_extended_id].decode, m.data) for m in frames]

    # The references run in turn with the whole path's runs (each repeat: cantools, the codec, opendbc,
    # then a saturated run of the gateway), so that a machine that slows down or speeds up meanwhile
    # (other work on it) shifts them alike.
    seconds_of: dict[str, list[float]] = {"cantools": [], "codec": [], "opendbc": [], "opendbc_cpu": []}
    make = reference.parser
    updates = [] if make is None else opendbc_updates(frames, batch)

    def references() -> None:
        _collect()
        seconds_of["cantools"].append(cantools_decode(decoders))
        _collect()
        seconds_of["codec"].append(codec_decode(codec, pairs)[0])
        if make is not None:
            _collect()
            wall, cpu_seconds = opendbc_decode(make, updates)
            seconds_of["opendbc"].append(wall)
            seconds_of["opendbc_cpu"].append(cpu_seconds)

    rejected = None if make is None else opendbc_rejected(make, frames)
    gateway_options: dict[str, Any] = {"database": path, "strict": strict, "fd": fd}
    if e2e is not None:
        gateway_options |= e2e.gateway_options
    # The traffic is the benchmark's input, not the gateway's state: out of the garbage collector's sight
    # (a car's gateway does not hold 100,000 frames, whose scans would slow every figure down with n).
    gc.collect()
    gc.freeze()
    measured = trio.run(
        measure,
        frames,
        repeat,
        batch,
        seconds,
        max(args.profile, 0),
        gateway_options,
        references,
        paced_frames,
    )
    cantools_runs = _table.Runs("frames/s", [n / t for t in seconds_of["cantools"]])
    codec_runs = _table.Runs("frames/s", [n / t for t in seconds_of["codec"]])
    opendbc_runs = None if make is None else _table.Runs("frames/s", [n / t for t in seconds_of["opendbc"]])
    opendbc_cpu = (
        None
        if make is None
        else _table.Runs("us", [t / n * 1e6 for t in seconds_of["opendbc_cpu"]], higher_is_better=False)
    )
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
    opendbc_best = None if opendbc_runs is None else opendbc_runs.best
    vs_opendbc = _table.ratio(whole.best, opendbc_best)
    # CPU per frame, theirs over ours: less moved than wall-clock rates by other work on the machine.
    vs_opendbc_cpu = None if opendbc_cpu is None else _table.ratio(opendbc_cpu.best, cpu.best)
    goal_vs_opendbc = None if vs_opendbc is None else vs_opendbc >= GOAL_VS_OPENDBC
    per_bus = bus_load(messages)
    our_e2e = e2e is not None and bool(e2e.messages)

    result: dict[str, Any] = {
        "benchmark": "can",
        "frames_per_s": whole.best,
        "cpu_us_per_frame": cpu.best,
        "cpu_frames_per_s": 1e6 / cpu.best,
        "codec_decode_frames_per_s": codec_runs.best,
        "cantools_decode_frames_per_s": cantools_runs.best,
        "opendbc_frames_per_s": opendbc_best,
        "gateway_vs_cantools_decode": vs_cantools,
        "gateway_vs_opendbc": vs_opendbc,
        "opendbc_cpu_us_per_frame": None if opendbc_cpu is None else opendbc_cpu.best,
        "gateway_vs_opendbc_cpu": vs_opendbc_cpu,
        "dropped_at_8000_fps": dropped_paced,
        "max_lag_ms_at_8000_fps": lag_max,
        "p50_lag_ms_at_8000_fps": lag_p50,
        "cpu_load_at_8000_fps": paced_load,
        "paced_frames": paced_run.frames,
        "paced_seconds": paced_run.seconds,
        "dropped_saturated": lost,
        "frame_errors": frame_errors,
        "e2e": our_e2e,
        "e2e_failures": status.e2e_failures,
        "e2e_messages": [] if e2e is None else list(e2e.messages),
        "opendbc_unavailable": reference.unavailable or None,
        "opendbc_messages": reference.messages if reference.parser else None,
        "opendbc_checked_messages": reference.checked if reference.parser else None,
        "opendbc_rejected_frames": rejected,
        "opendbc_signals": reference.opendbc_signals if reference.parser else None,
        "cantools_signals": sum(len(m.signals) for m in messages),
        "goal_frames_per_s": GOAL_FRAMES_PER_S,
        "goal_frames_per_s_met": whole.best >= GOAL_FRAMES_PER_S,
        "goal_no_drop_at_8000_fps_met": dropped_paced == 0,
        "goal_vs_opendbc": GOAL_VS_OPENDBC,
        "goal_vs_opendbc_met": goal_vs_opendbc,
        "figures": "best of the runs (highest rate, lowest CPU time); spread = (max - min) / median",
        "runs": {
            "frames_per_s": whole,
            "cpu_us_per_frame": cpu,
            "codec_decode_frames_per_s": codec_runs,
            "cantools_decode_frames_per_s": cantools_runs,
            "opendbc_frames_per_s": opendbc_runs,
            "opendbc_cpu_us_per_frame": opendbc_cpu,
        },
        "spread_frames_per_s": whole.spread,
        "spread_cpu_us_per_frame": cpu.spread,
        "spread_codec_decode": codec_runs.spread,
        "spread_cantools_decode": cantools_runs.spread,
        "spread_opendbc": None if opendbc_runs is None else opendbc_runs.spread,
        "frames": n,
        "samples_per_run": expected,
        "repeat": repeat,
        "batch": batch,
        "paced_frames_per_s": PACED_FRAMES_PER_S,
        "paced_tick_ms": PACED_TICK * 1e3,
        "database": path.name,
        "database_path": str(path),
        "strict": strict,
        "fd": fd,
        "database_messages": len(db.messages),
        "mix_messages": len(messages),
        "skipped_messages": sorted(left_out),
        "mix_frames_per_s_per_bus": per_bus,
        **_table.environment(
            trio=trio.__version__,
            cantools=_version("cantools"),
            python_can=_version("python-can"),
            attrs=_version("attrs"),
            opendbc=reference.version,
        ),
    }

    frames_per_s = functools.partial(_table.rate, unit=" frames/s")
    table = _table.Table(
        f"vwos CAN gateway, {path.name} ({len(messages)} of its {len(db.messages)} messages, "
        f"{per_bus:,.0f} frames/s per bus): best of {repeat} run{'s' if repeat > 1 else ''} of {n:,} "
        f"frames in batches of {batch}, Python {result['python']}",
        ["figure", "best", "median", "spread", "gateway / it"],
    )
    checks = "with E2E checks" if our_e2e else "no E2E checks"
    table.runs(f"gateway, whole path: frames -> subscriber ({checks})", whole, fmt=frames_per_s)
    table.runs("gateway, whole path: CPU per frame", cpu, fmt=_table.micros)
    table.rule()
    if opendbc_runs is not None:
        what = (
            f"checksums + counters of {reference.checked} messages"
            if reference.checked
            else "no checks known for this file"
        )
        table.runs(
            f"opendbc CANParser.update ({what})", opendbc_runs, _table.times(vs_opendbc), fmt=frames_per_s
        )
        assert opendbc_cpu is not None
        table.runs("opendbc: CPU per frame", opendbc_cpu, _table.times(vs_opendbc_cpu), fmt=_table.micros)
    else:
        table.row("opendbc CANParser.update", "-", "-", "-", "-")
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
        "gateway / it: the whole path's rate over that one (for CPU: its CPU per frame over the whole path's)"
    )
    table.note(
        f"dropped flat out: {lost} samples (must be 0); frame errors: {frame_errors} (must be 0); "
        f"paced lag is from a batch's due time until the subscriber had all of it"
    )
    if opendbc_runs is not None:
        table.note(
            f"opendbc {reference.version}: the same frames, in the same batches, by CANParser.update into "
            f"its value dicts (no typed samples, no subscriber); it knows {reference.messages} of the "
            f"{len(messages)} messages and reads {reference.opendbc_signals} of their "
            f"{reference.signals} signals; frames it rejected: {rejected} (must be 0)"
        )
    else:
        table.note(f"opendbc not measured: {reference.unavailable}")
    if not our_e2e:
        table.note("the gateway checks no E2E here (--no-e2e)")
    else:
        table.note(
            f"the gateway checks E2E on {len(e2e.messages) if e2e else 0} messages; frames that failed: "
            f"{status.e2e_failures} (must be 0)"
        )
    if left_out:
        table.note(
            f"left out of the traffic, cantools cannot encode or decode them: {', '.join(sorted(left_out))}"
        )
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
    table.goal(
        f"whole path >= {GOAL_VS_OPENDBC}x opendbc's CANParser"
        + ("" if our_e2e or not reference.checked else " (ours without E2E checks, opendbc with)"),
        goal_vs_opendbc,
        f"{_table.times(vs_opendbc)}; in CPU per frame {_table.times(vs_opendbc_cpu)}",
    )
    _table.emit(args, result, table)
    if measured["profile"] is not None:
        sys.stderr.write(f"\ncProfile of one more flat-out run of {n:,} frames:\n{measured['profile']}")
    if lost or dropped_paced or frame_errors or rejected:
        print(
            f"error: {lost} samples lost flat out, {dropped_paced} frames lost at {PACED_FRAMES_PER_S} "
            f"frames/s, {frame_errors} frame errors, {rejected or 0} frames rejected by opendbc",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
