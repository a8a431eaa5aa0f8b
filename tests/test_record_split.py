"""A split recording read, summarized and replayed as one: by its base name (``drive.mcap`` finds
``drive_0000.mcap``, ``drive_0001.mcap``, ...), its parts given one by one or by a glob; in order, its
timing continuous across the parts, ``--loop`` over all of them; parts out of order put in order with a
warning, a missing part, a part given twice or one of another recording refused in one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from record_kit import broker
from test_record import SPEED, check_file, node_reader, samples

from bus import Bus, NotAvailable, Sample
from services.record import RecordingError, RecordingWriter, bag_info, read_recording, replay
from vwos._cli import main as vwos_main

__all__ = ["broker", "check_file", "node_reader"]  # fixtures of record_kit and test_record, used here

TIMEOUT = 60


def split_recording(tmp_path: Path, name: str = "drive.mcap", n: int = 300) -> tuple[list[Any], list[Path]]:
    written = samples(n)[:-2]  # n / 10 s of bus time (without the last two, n s later)
    with RecordingWriter(tmp_path / name, split_duration=8.0, chunk_size=2_000, vehicle_id="WVW-S") as writer:
        writer.write_many(written)
    return written, writer.files


def _key(s: Any) -> tuple[Any, ...]:
    value = "nan" if s.value != s.value else s.value  # NaN is not equal to itself
    return (s.topic, s.seq, s.publisher, value, round(s.bus_time, 6))


def test_a_split_recording_reads_as_one_by_its_base_name_or_its_parts(
    tmp_path: Path, check_file: Any
) -> None:
    written, files = split_recording(tmp_path)
    assert [f.name for f in files] == [f"drive_{i:04d}.mcap" for i in range(4)]
    parts = check_file(*files)  # each part a valid MCAP file for the mcap package and @mcap/core
    expected = [_key(s) for s in written]
    by_base = [_key(s) for s in read_recording(tmp_path / "drive.mcap")]
    by_parts = [_key(s) for s in read_recording(files)]
    by_glob = [_key(s) for s in read_recording(sorted(tmp_path.glob("drive_*.mcap")))]
    assert by_base == by_parts == by_glob == expected
    info = bag_info(tmp_path / "drive.mcap")
    assert info.files == tuple(map(str, files))
    assert [p.path for p in info.parts] == list(map(str, files))
    assert info.messages == len(written) == sum(p.messages for p in parts)
    assert info.size == sum(f.stat().st_size for f in files)
    assert info.chunks == sum(p.chunks for p in parts)
    assert {(c.topic, c.type): c.messages for c in info.channels} == {
        ("Test.Speed", "float"): 300,
        ("Test.Fix", "test.record.Fix"): 100,
    }
    assert info.start == parts[0].start
    assert info.end == parts[-1].end
    assert info.metadata["vwos"]["recorded"] == str(len(written))  # the parts' counts added up
    assert info.metadata["vwos"]["vehicle_id"] == "WVW-S"
    assert (info.summary, info.lost_bytes, info.warnings) == (True, 0, ())
    assert bag_info(files[1]).files == (str(files[1]),)  # one part alone is one file


def test_a_not_available_sample_first_in_a_part_keeps_its_topics_type(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "na.mcap", split_duration=1.0) as writer:
        writer.write(Sample(SPEED.name, 1.0, 1.0, 1.0, "ecu", 1))
        writer.write(Sample(SPEED.name, NotAvailable("timeout"), 2.0, 2.0, "ecu", 2))  # a new part
    info = bag_info(tmp_path / "na.mcap")
    assert len(info.files) == 2
    assert [(c.topic, c.type, c.messages) for c in info.channels] == [(SPEED.name, "float", 2)]


def test_parts_given_out_of_order_are_put_in_order_with_a_warning(tmp_path: Path) -> None:
    written, files = split_recording(tmp_path)
    shuffled = [files[2], files[0], files[3], files[1]]
    info = bag_info(shuffled)
    assert info.files == tuple(map(str, files))
    (warning,) = info.warnings
    assert "given out of order" in warning
    assert [_key(s) for s in read_recording(shuffled)] == [_key(s) for s in written]
    later = [_key(s) for s in read_recording(files[2:])]  # the last parts only: no part is missing there
    assert later == [_key(s) for s in read_recording(files[2])] + [_key(s) for s in read_recording(files[3])]


def test_missing_doubled_foreign_and_unknown_parts(tmp_path: Path) -> None:
    _, files = split_recording(tmp_path)
    _, others = split_recording(tmp_path, "other.mcap")
    cases = {
        "part 1 is missing from the recording": [files[0], files[2]],
        "parts 1, 2 are missing from the recording": [files[0], files[3]],
        "given twice": [files[0], files[1], files[0]],
        "not a part of the recording": [files[0], others[1]],
        "no such file, nor the parts nothing_0000.mcap": [tmp_path / "nothing.mcap"],
        "is a directory": [tmp_path],
    }
    for message, paths in cases.items():
        with pytest.raises(RecordingError, match=message):
            bag_info(paths)
        with pytest.raises(RecordingError, match=message):
            list(read_recording(paths))
    files[1].unlink()  # the base name finds the parts that are there: one is missing between them
    with pytest.raises(RecordingError, match=f"part 1 is missing from the recording: {files[0]} is part 0"):
        bag_info(tmp_path / "drive.mcap")
    from mcap.writer import Writer

    foreign = tmp_path / "foreign.mcap"  # no vwos metadata: read in the order given, with a warning
    with foreign.open("wb") as stream:
        writer = Writer(stream)
        writer.start()
        writer.finish()  # type: ignore[no-untyped-call]
    info = bag_info([files[0], foreign])
    assert info.files == (str(files[0]), str(foreign))
    assert "cannot check that the files are the parts of one recording" in info.warnings[0]


def test_a_killed_last_part_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    written, files = split_recording(tmp_path)
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2])  # the recorder was killed while writing the last part
    info = bag_info(tmp_path / "drive.mcap")
    assert info.summary is False
    assert info.parts[-1].summary is False
    assert all(p.summary for p in info.parts[:-1])
    assert "recorded" not in info.metadata["vwos"]  # the last part's count was never written
    assert len(info.warnings) == 1
    assert "no summary" in info.warnings[0]
    got = [_key(s) for s in read_recording(tmp_path / "drive.mcap")]
    assert len(got) == info.messages < len(written)
    assert got == [_key(s) for s in written[: len(got)]]


async def test_replay_of_a_split_recording_is_one_timeline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    written, files = split_recording(tmp_path)
    assert len(files) == 4  # three boundaries to cross
    speeds = [s for s in written if s.topic == SPEED.name]
    span = speeds[-1].bus_time - speeds[0].bus_time
    the_bus = Bus()
    sub = the_bus.client("listener").subscribe(SPEED.name, queue_size=10_000)
    result = await replay(
        the_bus.client("replay"), tmp_path / "drive.mcap", [SPEED.name], rate=2.0, loops=2, loop=True
    )
    assert (result.published, result.loops) == (2 * len(speeds), 2)
    assert result.seconds == pytest.approx(2 * span / 2.0)
    got = sub.receive_batch_nowait()
    assert len(got) == 2 * len(speeds)
    t0 = got[0].bus_time
    for n, (g, w) in enumerate(zip(got, speeds + speeds, strict=True)):
        offset = (w.bus_time - speeds[0].bus_time) / 2.0 + (span / 2.0 if n >= len(speeds) else 0.0)
        assert g.bus_time - t0 == pytest.approx(offset, abs=1e-6), n  # no jump or pause at a part's start
        assert g.timestamp == pytest.approx(w.timestamp, abs=1e-6)


# -- the CLI ----------------------------------------------------------------------------------------------


def test_bag_info_of_a_split_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written, files = split_recording(tmp_path)
    assert vwos_main(["bag", "info", str(tmp_path / "drive.mcap")]) == 0
    text = capsys.readouterr().out
    assert "Files:        drive_0000.mcap\n              drive_0001.mcap\n" in text
    assert f"Messages:     {len(written)}\n" in text
    assert vwos_main(["bag", "info", "--json", str(files[1]), str(files[0])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == [str(files[0]), str(files[1])]
    assert [p["messages"] for p in data["parts"]] == [bag_info(f).messages for f in files[:2]]
    assert "out of order" in data["warnings"][0]
    assert vwos_main(["bag", "info", str(files[0]), str(files[2])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "part 1 is missing" in err


async def test_vwos_replay_takes_the_parts_and_patterns(broker: tuple[Bus, Path], tmp_path: Path) -> None:
    the_bus, socket = broker
    written, files = split_recording(tmp_path)
    listener = the_bus.client("listener").subscribe(SPEED.name, queue_size=10_000)
    env = {**os.environ, "VWOS_SOCKET": str(socket)}
    argv = [sys.executable, "-m", "vwos", "replay", str(files[1]), str(files[0]), SPEED.name]
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process([*argv, "--fast"], env=env, capture_stdout=True, capture_stderr=True)
    err = done.stderr.decode()
    assert err.count("\n") == 1
    assert "given out of order" in err
    speeds = [s for f in files[:2] for s in read_recording(f, [SPEED.name])]
    assert f"published {len(speeds)} samples" in done.stdout.decode()
    got = listener.receive_batch_nowait()
    assert [g.timestamp for g in got] == pytest.approx([s.timestamp for s in speeds])
    with trio.fail_after(TIMEOUT):
        bad = await trio.run_process(
            [sys.executable, "-m", "vwos", "replay", str(files[0]), str(files[3]), "--fast"],
            env=env,
            capture_stderr=True,
            check=False,
        )
    assert bad.returncode == 1
    assert bad.stderr.decode().count("\n") == 1
    assert "parts 1, 2 are missing" in bad.stderr.decode()
    assert len(written) > len(speeds)


def test_two_files_of_the_same_part_and_no_file_at_all(tmp_path: Path) -> None:
    _, files = split_recording(tmp_path)
    copy = tmp_path / "copy.mcap"
    copy.write_bytes(files[1].read_bytes())
    with pytest.raises(RecordingError, match=f"{files[1]} and {copy} are both part 1 of the recording"):
        bag_info([files[0], files[1], copy])
    with pytest.raises(RecordingError, match="no recording given"):
        bag_info([])
    with pytest.raises(RecordingError, match="no such file, nor the parts"):
        bag_info(tmp_path / "no" / "such" / "dir.mcap")


def test_parts_an_older_recording_left_behind_are_left_out(tmp_path: Path) -> None:
    _, old = split_recording(tmp_path)  # four parts
    written = samples(100)[:-2]  # a shorter recording to the same name: two parts
    with RecordingWriter(tmp_path / "drive.mcap", split_duration=8.0) as writer:
        writer.write_many(written)
    assert len(writer.files) == 2
    info = bag_info(tmp_path / "drive.mcap")
    assert info.files == tuple(map(str, writer.files))
    assert [w.split(":")[0] for w in info.warnings] == [str(old[2]), str(old[3])]
    assert all("left out, from another recording" in w for w in info.warnings)
    assert [_key(s) for s in read_recording(tmp_path / "drive.mcap")] == [_key(s) for s in written]
    with pytest.raises(RecordingError, match="not a part of the recording"):
        bag_info([*writer.files, old[2]])  # named by the caller: refused
