"""The recorder benchmark: samples/s that `vwos record`'s core records from a live bus over the socket,
beside the ``mcap`` writer alone writing the same JSON messages, measured in the same run.

* **record**: a child process serves a `bus.Bus` on a Unix socket (``serve_unix``) and publishes
  ``--samples`` floats on ``--topics`` float topics from an in-process client (``publish_nowait``, bursts
  of 256 per topic, like the CAN gateway inside the supervisor); this process joins with ``connect_unix``
  and records with `services.record.record_bus` into a `RecordingWriter` (zstd chunks) in a temporary
  directory. Timed from the "go" to the child until every sample is written and the file closed; the
  recorder's queue holds every sample, so drops (counted) must be 0. The figure is bounded by the
  publisher's own speed too (both processes share the machine's cores).
* **mcap bare**: the ``mcap`` package's ``Writer`` (same chunk size and compression) writing the same
  messages, encoded beforehand, through its public ``add_message``. The recorder adds its messages to the
  same Writer at a lower cost per message (services/record/_fastmcap.py: the same bytes), so it can come
  close to this figure, and the ratio is not bounded by 1.
* **replay**: `services.record.replay` of the recording into an in-process `bus.Bus` at ``rate=0``.

Each figure is the best of ``--repeat`` runs (median and spread reported). Usage:
``python bench/record.py [--json] [--samples N] [--repeat R] [--topics T]``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Python put bench/ first on sys.path, where bench/bus.py would shadow the bus package: project root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
import trio

import bus
from bench import _table
from services.record import RecordingWriter, record_bus, replay, sample_json
from vwos._runtime import tune_gc

#: Goals (docs/record.md): the recorder at least half the bare writer's rate, and at least this many/s.
GOAL_RATIO = 0.5
GOAL_PER_S = 200_000
BURST = 256
#: A run that has not finished by then is stuck.
RUN_TIMEOUT = 120.0


def _topics(n: int) -> list[bus.Topic[float]]:
    return [bus.Topic(f"Bench.Signal{i}", float, unit="x") for i in range(n)]


def _values(n: int) -> list[float]:
    return [round(i * 0.37 % 250.0, 2) for i in range(n)]


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


# -- the child: broker and publisher ---------------------------------------------------------------------


def _allow_all(peer: bus.PeerCredentials, name: str) -> bus.Permissions:
    return bus.Permissions.ALL


async def _child(path: str, n: int, topics: int) -> None:
    the_bus = bus.Bus()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: bus.serve_unix(the_bus, path, authorize=_allow_all, task_status=task_status)
        )
        client = the_bus.client("bench.publisher")
        publishers = [client.publisher(t) for t in _topics(topics)]
        values = _values(n)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        started = time.perf_counter()
        i = 0
        while i < n:
            for publisher in publishers:
                for value in values[i : i + BURST]:
                    publisher.publish_nowait(value)
                i += BURST
                if i >= n:
                    break
            await trio.lowlevel.checkpoint()
        print("sent", repr(time.perf_counter() - started), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()


# -- the measurements ----------------------------------------------------------------------------------


async def _record_once(scratch: Path, n: int, topics: int) -> tuple[float, int, int, float]:
    """(samples/s, dropped, bytes, the publisher's own samples/s) of one live recording."""
    sock = scratch / "bus.sock"
    out = scratch / "live.mcap"
    child = subprocess.Popen(  # noqa: ASYNC220 -- started before the timing, read through a thread
        [sys.executable, __file__, "--child", str(sock), str(n), str(topics)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        line = await trio.to_thread.run_sync(child.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the broker child did not start: {line!r}")
        async with bus.connect_unix(sock, "bench.recorder") as client:
            writer = RecordingWriter(out, patterns=["Bench.**"])
            stop = trio.Event()
            results: list[Any] = []

            async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                results.append(
                    await record_bus(
                        client, writer, ["Bench.**"], queue_size=n + 1024, stop=stop, task_status=task_status
                    )
                )

            with trio.fail_after(RUN_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(run)
                    await client.get(_topics(1)[0].name)  # a round trip: the SUBSCRIBE has been handled
                    gc.collect()
                    started = time.perf_counter()
                    child.stdin.write("go\n")
                    child.stdin.flush()
                    last, last_change = 0, time.perf_counter()
                    while writer.recorded + writer.dropped < n:
                        await trio.sleep(0.002)
                        if writer.recorded != last:
                            last, last_change = writer.recorded, time.perf_counter()
                        elif time.perf_counter() - last_change > 5.0:
                            break  # stalled: what did not arrive counts as dropped below
                    stop.set()
            elapsed = time.perf_counter() - started
            (result,) = results
        sent = (await trio.to_thread.run_sync(child.stdout.readline)).split()
        child.stdin.write("quit\n")
        child.stdin.flush()
        publish_rate = n / float(sent[1]) if len(sent) == 2 and sent[0] == "sent" else 0.0
        return result.recorded / elapsed, n - result.recorded, out.stat().st_size, publish_rate
    finally:
        with contextlib.suppress(OSError):
            child.kill()
        child.wait(timeout=10)


def _bare_once(n: int, topics: int) -> float:
    """Samples/s of the mcap Writer alone writing the recorder's messages (encoded beforehand)."""
    from mcap.writer import CompressionType, Writer

    names = [t.name for t in _topics(topics)]
    values = _values(n)
    messages = []
    for i, value in enumerate(values):
        topic = (i // BURST) % topics
        sample = bus.Sample(names[topic], value, 1.7e9 + i * 1e-5, 10.0 + i * 1e-5, "bench.publisher", i + 1)
        messages.append(
            (topic, sample_json(sample), int(sample.timestamp * 1e9), int(sample.bus_time * 1e9), i + 1)
        )
    stream = io.BytesIO()
    gc.collect()
    started = time.perf_counter()
    writer = Writer(stream, chunk_size=1024 * 1024, compression=CompressionType.ZSTD)
    writer.start(profile="", library="bench")
    schema = writer.register_schema("float", "jsonschema", b'{"type":"object"}')
    channels = [writer.register_channel(name, "json", schema) for name in names]
    add = writer.add_message
    for topic, data, log_time, publish_time, seq in messages:
        add(channels[topic], log_time, data, publish_time, seq)
    writer.finish()  # type: ignore[no-untyped-call]
    return n / (time.perf_counter() - started)


async def _replay_once(path: Path) -> float:
    the_bus = bus.Bus()
    client = the_bus.client("bench.replay")
    gc.collect()
    started = time.perf_counter()
    result = await replay(client, path, rate=0)
    return result.published / (time.perf_counter() - started)


async def _measure(args: Any) -> dict[str, Any]:
    record, bare, replays, dropped, sizes, publish = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="vwos-bench-record-") as tmp:
        for i in range(args.repeat):
            scratch = Path(tmp) / f"run{i}"
            scratch.mkdir()
            rate, lost, size, published = await _record_once(scratch, args.samples, args.topics)
            record.append(rate)
            publish.append(published)
            dropped.append(lost)
            sizes.append(size)
            bare.append(_bare_once(args.samples, args.topics))
            replays.append(await _replay_once(scratch / "live.mcap"))
    return {
        "record": _table.Runs("samples/s", record),
        "bare": _table.Runs("samples/s", bare),
        "replay": _table.Runs("samples/s", replays),
        "publish": _table.Runs("samples/s", publish),
        "dropped": max(dropped),
        "bytes_per_sample": min(sizes) / args.samples,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tune_gc()  # as `vwos run`, isolated services and `vwos record` do
    if argv and argv[0] == "--child":
        _quiet()
        trio.run(_child, argv[1], int(argv[2]), int(argv[3]))
        return 0
    parser = _table.parser(__doc__, default_samples=200_000, default_repeat=3)
    parser.add_argument("--topics", type=_table.positive_int, default=4, help="float topics published")
    args = parser.parse_args(argv)
    _quiet()
    m = trio.run(_measure, args)
    record, bare, replayed = m["record"], m["bare"], m["replay"]
    ratio = _table.ratio(record.best, bare.best)
    table = _table.Table(
        f"vwos record: {args.samples} float samples on {args.topics} topics, best of {args.repeat}",
        ["figure", "best", "median", "spread", "vs bare"],
    )
    table.runs("record from a live bus (socket)", record, _table.times(ratio))
    table.runs("mcap Writer alone (reference)", bare, "1.0x")
    published = m["publish"]
    table.runs(
        "the publisher alone (child)", published, _table.times(_table.ratio(published.best, bare.best))
    )
    table.runs(
        "replay into an in-process bus", replayed, _table.times(_table.ratio(replayed.best, bare.best))
    )
    table.note(f"{m['bytes_per_sample']:.1f} bytes per sample (zstd chunks); dropped: {m['dropped']}")
    table.goal(
        f"record >= {GOAL_RATIO}x the bare writer",
        ratio is not None and ratio >= GOAL_RATIO,
        _table.times(ratio),
    )
    table.goal(f"record >= {GOAL_PER_S:,}/s", record.best >= GOAL_PER_S, _table.rate(record.best))
    result = {
        "record_per_s": record.best,
        "mcap_bare_per_s": bare.best,
        "replay_per_s": replayed.best,
        "publish_per_s": m["publish"].best,
        "bytes_per_sample": m["bytes_per_sample"],
        "dropped": m["dropped"],
        "record_vs_bare": ratio,
        "runs": {"record": record, "mcap_bare": bare, "replay": replayed},
        "samples": args.samples,
        "topics": args.topics,
        **_table.environment(mcap=_version("mcap")),
    }
    _table.emit(args, result, table)
    return 0


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
