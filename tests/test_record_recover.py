"""Recordings whose recorder was killed (``kill -9``, a crash, the power lost): no summary, maybe a record cut
short at the end. `bag_info` and `read_recording` give every whole chunk, say that the file has no summary
and how many bytes at its end were lost, and never crash; the recorder flushes every second so that a kill
loses little. Each cut file is also read by npm's ``@mcap/core`` (`partial_reader`): it must find the same
messages and leave the same bytes unread."""

from __future__ import annotations

import functools
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from record_kit import broker, until, vwos_command
from test_record import node_reader, read_with_node, samples

from bus import Bus, Topic
from services.record import RecordingError, RecordingWriter, bag_info, read_recording, record_bus
from vwos._cli import main as vwos_main

__all__ = ["broker", "node_reader"]  # fixtures of record_kit and of test_record (through `partial_reader`)

SPEED = Topic("Recover.Speed", float, unit="km/h")
TIMEOUT = 60

PARTIAL_READER = r"""
const fs = require('fs');
const { McapStreamReader } = require('@mcap/core');
const fzstd = require('fzstd');
const out = [];
for (const file of process.argv.slice(2)) {
  const reader = new McapStreamReader({
    validateCrcs: true,
    decompressHandlers: { zstd: (buf, size) => fzstd.decompress(buf, new Uint8Array(Number(size))) },
  });
  reader.append(fs.readFileSync(file));
  const channels = {}, counts = {};
  let messages = 0, error = null;
  try {
    for (let rec; (rec = reader.nextRecord()) !== undefined; ) {
      if (rec.type === 'Channel') channels[rec.id] = rec.topic;
      else if (rec.type === 'Message') {
        counts[channels[rec.channelId]] = (counts[channels[rec.channelId]] || 0) + 1;
        messages++;
      }
    }
  } catch (e) { error = String(e); }
  out.push({ file, messages, counts, remaining: reader.bytesRemaining(), done: reader.done(), error });
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="session")
def partial_reader(node_reader: Path) -> Path:
    """A node script reading as much of each MCAP file as @mcap/core's stream reader can."""
    script = node_reader.with_name("read_partial_mcap.cjs")
    script.write_text(PARTIAL_READER)
    return script


# -- a whole recording, and where its chunks end ------------------------------------------------------


@functools.cache
def whole_recording() -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """A recording with small chunks, and for each chunk (its end offset, its message count): by the mcap
    package's own seeking reader and chunk decoder, not by the code under test."""
    from mcap.reader import SeekingReader
    from mcap.records import Chunk, Message
    from mcap.stream_reader import breakup_chunk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whole.mcap"
        with RecordingWriter(path, chunk_size=3_000, vehicle_id="WVW-K") as writer:
            writer.write_many(samples(150))
        data = path.read_bytes()
        chunks = []
        with path.open("rb") as stream:
            summary = SeekingReader(stream).get_summary()
            assert summary is not None
            for index in summary.chunk_indexes:
                stream.seek(index.chunk_start_offset + 9)
                from mcap.data_stream import ReadDataStream

                chunk = Chunk.read(ReadDataStream(stream))
                n = sum(type(r) is Message for r in breakup_chunk(chunk, validate_crc=True))
                chunks.append((index.chunk_start_offset + index.chunk_length, n))
    return data, tuple(chunks)


def whole_samples() -> list[Any]:
    data, _ = whole_recording()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whole.mcap"
        path.write_bytes(data)
        return list(read_recording(path))


def expected_messages(cut: int) -> int:
    _, chunks = whole_recording()
    return sum(n for end, n in chunks if end <= cut)


@hypothesis.settings(max_examples=150)
@hypothesis.given(data=st.data())
def test_a_file_cut_anywhere_gives_every_whole_chunk(data: st.DataObject) -> None:
    whole, chunks = whole_recording()
    cut = data.draw(st.integers(min_value=8, max_value=len(whole) - 1), label="cut")
    full = whole_samples()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.mcap"
        path.write_bytes(whole[:cut])
        info = bag_info(path)
        got = list(read_recording(path))
    n = expected_messages(cut)
    assert info.messages == len(got) == n
    assert got == full[:n]  # in order, nothing made up, the values as they were written
    assert info.summary is False
    assert info.size == cut
    last_whole = max((end for end, _ in chunks if end <= cut), default=8)
    assert 0 <= info.lost_bytes <= cut - last_whole
    assert info.chunks == sum(1 for end, _ in chunks if end <= cut)
    (warning,) = info.warnings
    assert str(path) in warning
    assert "no summary" in warning
    assert "\n" not in warning
    if chunks[0][0] <= cut:  # the metadata written at the start is there
        assert info.metadata["vwos"]["vehicle_id"] == "WVW-K"
        assert "recording_id" in info.metadata["vwos"]


def test_node_reads_as_much_of_a_cut_file_as_we_do(tmp_path: Path, partial_reader: Path) -> None:
    whole, chunks = whole_recording()
    cuts = set(range(8, len(whole), max(1, len(whole) // 80)))
    for end, _ in chunks:
        cuts.update({end - 1, end, end + 1})
    cuts.update({len(whole) - 9, len(whole) - 8, len(whole) - 1})
    files = []
    for cut in sorted(c for c in cuts if 8 <= c < len(whole)):
        path = tmp_path / f"cut_{cut}.mcap"
        path.write_bytes(whole[:cut])
        files.append(path)
    for path, seen in zip(files, read_with_node(partial_reader, files), strict=True):
        info = bag_info(path)
        assert seen["error"] is None, (path, seen)
        assert seen["messages"] == info.messages == expected_messages(info.size), path
        assert seen["counts"] == {c.topic: c.messages for c in info.channels if c.messages}, path
        assert seen["remaining"] == info.lost_bytes, path
        assert seen["done"] is False


def test_a_power_loss_tail_of_zeros_and_a_damaged_last_chunk(tmp_path: Path, partial_reader: Path) -> None:
    whole, chunks = whole_recording()
    end, _ = chunks[3]
    zeros = tmp_path / "zeros.mcap"  # the file system grew the file, the data never reached the disk
    zeros.write_bytes(whole[:end] + bytes(4096))
    info = bag_info(zeros)
    assert info.messages == expected_messages(end)
    assert info.lost_bytes >= 4096
    damaged = tmp_path / "damaged.mcap"  # the last chunk written, but torn
    data = bytearray(whole[: chunks[4][0]])
    data[chunks[4][0] - 40] ^= 0xFF
    damaged.write_bytes(bytes(data))
    info = bag_info(damaged)
    assert info.messages == expected_messages(chunks[3][0]) == len(list(read_recording(damaged)))
    assert "damaged chunk" in info.warnings[0]
    assert info.lost_bytes == len(data) - chunks[3][0] - _message_index_bytes(whole, chunks[3][0], chunks)
    seen = read_with_node(partial_reader, [damaged])[0]
    assert seen["messages"] == info.messages  # node stops at the same chunk (its CRC)
    assert seen["error"] is not None


def _message_index_bytes(whole: bytes, chunk_end: int, chunks: tuple[tuple[int, int], ...]) -> int:
    """The message index records between the end of a chunk and the start of the next one."""
    from mcap.reader import SeekingReader

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whole.mcap"
        path.write_bytes(whole)
        with path.open("rb") as stream:
            summary = SeekingReader(stream).get_summary()
            assert summary is not None
            for index in summary.chunk_indexes:
                if index.chunk_start_offset + index.chunk_length == chunk_end:
                    return int(index.message_index_length)
    raise AssertionError("no such chunk")


def test_files_that_are_not_mcap_at_all_are_refused(tmp_path: Path) -> None:
    for name, data in {"empty": b"", "short": b"\x89MCA", "other": b"PK\x03\x04" + bytes(100)}.items():
        path = tmp_path / f"{name}.mcap"
        path.write_bytes(data)
        with pytest.raises(RecordingError, match=f"{path}: not an MCAP recording"):
            bag_info(path)
        with pytest.raises(RecordingError, match=f"{path}: not an MCAP recording"):
            list(read_recording(path))


def test_hostile_lengths_and_long_junk_cost_little(tmp_path: Path) -> None:
    import tracemalloc

    whole, chunks = whole_recording()
    end = chunks[0][0]
    huge = tmp_path / "huge.mcap"  # a record that says it is 2**40 bytes long
    huge.write_bytes(whole[:end] + b"\x06" + (2**40).to_bytes(8, "little") + bytes(64))
    junk = tmp_path / "junk.mcap"  # megabytes of records of no known kind
    junk.write_bytes(whole[:end] + bytes(2_000_000))
    for path in (huge, junk):
        tracemalloc.start()
        started = time.perf_counter()
        info = bag_info(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert info.messages == expected_messages(end)
        assert info.lost_bytes == path.stat().st_size - end
        assert elapsed < 20
        assert peak < 50 * 2**20


# -- the CLI ----------------------------------------------------------------------------------------------


def test_bag_info_says_in_one_line_that_a_file_has_no_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, chunks = whole_recording()
    cut = chunks[2][0] + 100
    path = tmp_path / "killed.mcap"
    path.write_bytes(whole[:cut])
    assert vwos_main(["bag", "info", str(path)]) == 0
    text = capsys.readouterr().out
    (warning,) = [line for line in text.splitlines() if line.startswith("Warning:")]
    assert "it has no summary" in warning
    assert "bytes are lost" in warning
    assert f"Messages:     {expected_messages(cut)}" in text
    assert vwos_main(["bag", "info", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"] is False
    assert data["lost_bytes"] == bag_info(path).lost_bytes > 0
    assert data["messages"] == expected_messages(cut)
    assert vwos_main(["bag", "info", "--json", str(tmp_path / "whole.mcap")]) == 1  # missing: still an error
    assert "no such file" in capsys.readouterr().err


# -- the recorder's flushes -----------------------------------------------------------------------------


async def test_the_recorder_flushes_every_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    the_bus = Bus()
    for interval, name in ((1.0, "flushed.mcap"), (None, "unflushed.mcap")):
        path = tmp_path / name
        writer = RecordingWriter(path)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status, w=writer, s=stop, i=interval: record_bus(
                    the_bus.client("rec"),
                    w,
                    ["Recover.**"],
                    stop=s,
                    flush_interval=i,
                    task_status=task_status,
                )
            )
            speed = the_bus.client("car").publisher(SPEED)
            for i in range(100):
                speed.publish_nowait(float(i))
                await trio.sleep(0.001)
            await trio.sleep(1.5)
            info = bag_info(path)  # while the recorder runs, as if it were killed now
            if interval is None:
                assert info.messages == 0  # the chunk is still in memory
            else:
                assert info.messages == 100
                assert info.lost_bytes == 0  # the file ends where a chunk's indexes end
            assert info.summary is False
            stop.set()
        info = bag_info(path)
        assert (info.summary, info.messages, info.warnings) == (True, 100, ())
    with pytest.raises(RecordingError, match="flush_interval"):
        await record_bus(the_bus.client("rec"), RecordingWriter(tmp_path / "x.mcap"), flush_interval=0)


# -- kill -9 of a real `vwos record` --------------------------------------------------------------------


def _messages(path: Path) -> int:
    try:
        return bag_info(path).messages
    except RecordingError:  # not even the magic yet
        return -1


async def test_kill_9_of_vwos_record_keeps_what_it_flushed(
    broker: tuple[Bus, Path], tmp_path: Path, partial_reader: Path
) -> None:
    the_bus, socket = broker
    out = tmp_path / "drive.mcap"
    speed = the_bus.client("car").publisher(SPEED)
    env = {**os.environ, "VWOS_SOCKET": str(socket)}
    with trio.fail_after(TIMEOUT), (tmp_path / "record.err").open("wb") as stderr:
        recorder = await trio.lowlevel.open_process(
            vwos_command("record", str(out), "Recover.**", "--vehicle-id", "WVW-9"), env=env, stderr=stderr
        )
        try:
            await until(
                lambda: any(s.client == "vwos-record" for s in the_bus.statistics().subscriptions), poll=0.05
            )
            for i in range(300):
                speed.publish_nowait(float(i))
                await trio.sleep(0.001)
            await until(
                lambda: _messages(out) == 300, poll=0.05
            )  # flushed within a second, the recorder still running
            for i in range(300, 400):  # and these while it is being killed: some may be lost
                speed.publish_nowait(float(i))
            recorder.send_signal(signal.SIGKILL)
            await recorder.wait()
        finally:
            if recorder.returncode is None:
                recorder.kill()
                await recorder.wait()
    assert recorder.returncode == -signal.SIGKILL
    info = bag_info(out)
    assert info.summary is False
    assert 300 <= info.messages <= 400
    assert info.metadata["vwos"]["vehicle_id"] == "WVW-9"  # from the start of the file
    assert "recorded" not in info.metadata["vwos"]  # the counts at the end were never written
    back = list(read_recording(out))
    assert [s.value for s in back] == [float(i) for i in range(info.messages)]
    assert [s.seq for s in back] == list(range(1, info.messages + 1))
    (seen,) = read_with_node(partial_reader, [out])
    assert (seen["messages"], seen["remaining"], seen["error"]) == (info.messages, info.lost_bytes, None)

    listener = the_bus.client("listener").subscribe("Recover.**", queue_size=1_000)
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            vwos_command("replay", str(out), "--fast"), env=env, capture_stdout=True, capture_stderr=True
        )
    err = done.stderr.decode()
    assert err.count("\n") == 1
    assert "it has no summary" in err
    assert f"published {info.messages} samples" in done.stdout.decode()
    assert [s.value for s in listener.receive_batch_nowait()] == [float(i) for i in range(info.messages)]


def test_an_unchunked_file_and_chunks_no_recorder_writes(tmp_path: Path) -> None:
    from mcap.data_stream import RecordBuilder
    from mcap.records import Chunk, Message
    from mcap.writer import Writer

    path = tmp_path / "unchunked.mcap"  # another tool's file: messages outside chunks
    with path.open("wb") as stream:
        writer = Writer(stream, use_chunking=False)
        writer.start()
        schema = writer.register_schema(
            "float", "jsonschema", b'{"x-vwos": {"type": "float", "schemas": []}}'
        )
        channel = writer.register_channel("A", "json", schema)
        for i in range(10):
            data = json.dumps({"value": float(i), "available": True, "publisher": "p", "seq": i + 1}).encode()
            writer.add_message(channel, i + 1, data, i + 1, i + 1)
        writer.finish()  # type: ignore[no-untyped-call]
    whole = path.read_bytes()
    cut = tmp_path / "unchunked_cut.mcap"
    cut.write_bytes(whole[: len(whole) // 2])
    info = bag_info(cut)
    got = [s.value for s in read_recording(cut)]
    assert 0 < info.messages == len(got) < 10
    assert got == [float(i) for i in range(len(got))]
    assert (info.chunks, info.summary) == (0, False)

    def chunk(records: bytes, size: int | None = None) -> bytes:
        builder = RecordBuilder()
        Chunk(
            compression="",
            data=records,
            message_start_time=0,
            message_end_time=0,
            uncompressed_crc=0,
            uncompressed_size=len(records) if size is None else size,
        ).write(builder)
        return bytes(builder.end())  # type: ignore[no-untyped-call]

    orphan = RecordBuilder()  # a message whose channel no record declares
    Message(channel_id=7, log_time=1, data=b"{}", publish_time=1, sequence=1).write(orphan)
    whole_data, chunks = whole_recording()
    head = whole_data[: chunks[0][0]]
    for name, tail, problem in (
        ("orphan", chunk(bytes(orphan.end())), "channel 7, which none declared"),  # type: ignore[no-untyped-call]
        ("huge", chunk(b"", size=2**40), f"a chunk of {2**40} bytes"),
    ):
        odd = tmp_path / f"{name}.mcap"
        odd.write_bytes(head + tail)
        info = bag_info(odd)
        assert info.messages == expected_messages(chunks[0][0])
        assert info.lost_bytes == len(tail)
        assert problem in info.warnings[0]
