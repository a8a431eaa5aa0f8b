"""`vwos record` and `vwos replay` as commands: real processes against a broker on a Unix socket in a
temporary directory, each with a hard timeout."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import attrs
import hypothesis
import hypothesis.strategies as st
import trio
from record_kit import allow_all, broker, until, vwos_command

import bus
from bus import Bus, NotAvailable, Sample, Topic
from services.record import RecordingWriter, bag_info, from_json, read_recording, record_bus, sample_json

__all__ = ["broker"]  # record_kit's fixture, used here

SPEED = Topic("Cli.Speed", float, unit="km/h")


@bus.default_codec.register(name="cli.Pos")
@attrs.frozen
class Pos:
    x: float
    y: float


GEAR = Topic("Cli.Gear", str)
TIMEOUT = 60


async def test_vwos_record_until_sigint_then_vwos_replay(broker: tuple[Bus, Path], tmp_path: Path) -> None:
    the_bus, socket = broker
    out = tmp_path / "drive.mcap"
    client = the_bus.client("car")
    speed, gear = client.publisher(SPEED), client.publisher(GEAR)
    env = {**os.environ, "VWOS_SOCKET": str(socket)}
    log_out, log_err = tmp_path / "record.out", tmp_path / "record.err"
    with trio.fail_after(TIMEOUT), log_out.open("wb") as stdout, log_err.open("wb") as stderr:
        recorder = await trio.lowlevel.open_process(
            vwos_command("record", str(out), "Cli.**", "--vehicle-id", "WVW-7"),
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            await until(lambda: any(s.client == "vwos-record" for s in the_bus.statistics().subscriptions))
            for i in range(500):
                speed.publish_nowait(float(i))
                if i % 100 == 0:
                    gear.publish_nowait(f"D{i // 100}")
                await trio.sleep(0.001)
            speed.publish_nowait(NotAvailable("e2e"))
            await trio.sleep(0.5)
            recorder.send_signal(signal.SIGINT)
            await recorder.wait()
        finally:
            if recorder.returncode is None:
                recorder.kill()
                await recorder.wait()
    assert recorder.returncode == 0, log_err.read_text()
    assert "recorded 506 samples (0 dropped)" in log_out.read_text()
    info = bag_info(out)
    assert info.metadata["vwos"]["vehicle_id"] == "WVW-7"
    assert {c.topic: c.messages for c in info.channels} == {"Cli.Speed": 501, "Cli.Gear": 5}

    listener = the_bus.client("listener").subscribe("Cli.**", queue_size=10_000)
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            vwos_command("replay", str(out), "Cli.Gear", "--fast"),
            env=env,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert b"published 5 samples" in done.stdout
    got = [s.value for s in listener.receive_batch_nowait()]
    assert got == ["D0", "D1", "D2", "D3", "D4"]


async def test_commands_say_in_one_line_what_is_wrong(tmp_path: Path) -> None:
    missing = tmp_path / "no.sock"
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            vwos_command("record", str(tmp_path / "x.mcap"), "--socket", str(missing), "--duration", "1"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 1
        assert done.stderr.decode().count("\n") == 1
        assert f"cannot connect to the bus at {missing}" in done.stderr.decode()
        bad = await trio.run_process(
            vwos_command("record", str(tmp_path / "x.mcap"), "Bad..Pattern"), capture_stderr=True, check=False
        )
        assert bad.returncode == 2
        assert "not a topic pattern" in bad.stderr.decode()
        assert b"Traceback" not in bad.stderr


async def test_a_bus_error_during_replay_is_one_line(broker: tuple[Bus, Path], tmp_path: Path) -> None:
    _, socket = broker
    path = tmp_path / "fix.mcap"
    with RecordingWriter(path) as writer:  # a record type the vwos process has no class for
        writer.write(Sample("Cli.Fix", Pos(1.0, 2.0), 1.0, 1.0, "p", 1))
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            vwos_command("replay", str(path), "--fast", "--socket", str(socket)),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.count("\n") == 1, err
    assert "Cli.Fix: no such topic is declared on the bus" in err


async def test_a_lost_broker_ends_the_recording_with_the_file_closed(tmp_path: Path) -> None:
    the_bus = Bus()
    socket = tmp_path / "bus.sock"
    out = tmp_path / "lost.mcap"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as outer:
            broker_scope = trio.CancelScope()

            async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with broker_scope:
                    await bus.serve_unix(the_bus, socket, authorize=allow_all, task_status=task_status)

            await outer.start(serve)
            car = the_bus.client("car").publisher(SPEED)
            async with bus.connect_unix(socket, "recorder") as client:
                writer = RecordingWriter(out)

                results = []
                async with trio.open_nursery() as nursery:

                    async def record() -> None:
                        results.append(await record_bus(client, writer, ["Cli.**"]))

                    nursery.start_soon(record)
                    await trio.sleep(0.2)
                    for i in range(100):
                        car.publish_nowait(float(i))
                    await until(lambda: writer.recorded == 100)
                    broker_scope.cancel()  # the broker goes away
    (result,) = results
    assert (result.ended, result.recorded) == ("closed", 100)
    assert bag_info(out).messages == 100  # closed properly: the summary is there


@hypothesis.given(
    value=st.one_of(
        st.floats(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=50),
        st.binary(max_size=50),
        st.booleans(),
    )
)
def test_scalars_survive_the_json_form(value: Any) -> None:
    key = {float: "float", int: "int", str: "str", bytes: "bytes", bool: "bool"}[type(value)]
    data = json.loads(sample_json(Sample("A", value, 1.0, 1.0, "p", 1)))
    back = from_json(data["value"], key, {})
    if type(value) is float and math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value
        assert type(back) is type(value)


def test_read_recording_filters_by_pattern(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "a.mcap") as writer:
        writer.write_many([Sample(f"T.{c}", 1.0, 1.0, 1.0, "p", 1) for c in "abc"])
    assert [s.topic for s in read_recording(tmp_path / "a.mcap", ["T.b", "T.c"])] == ["T.b", "T.c"]
