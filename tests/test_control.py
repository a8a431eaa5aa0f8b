"""The control plane and the commands that use it, against an in-process supervisor in mock time."""

from __future__ import annotations

import argparse
import enum
import io
import json
import logging
import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import pytest
import structlog
import trio
import trio.testing

import bus
from bus import Action, BusClient, Method, Topic, default_codec
from vwos import NoConfig, Service, ServiceContext, ServiceSpec
from vwos._cli import _parser
from vwos._cli_common import default_socket_path
from vwos._control import (
    CONTROL_ADMIN,
    CONTROL_OPERATE,
    CONTROL_READ,
    RESTART,
    START,
    STATUS,
    STOP,
    ControlError,
    ControlPlane,
    LogBuffer,
    ServiceRequest,
    StatusReply,
    convert_json,
    default_authorize,
)
from vwos._control_cli import (
    ControlCommand,
    _hidden_levels_note,
    cmd_bus_call,
    cmd_bus_echo,
    cmd_bus_hz,
    cmd_bus_list,
    cmd_bus_pub,
    cmd_logs,
    cmd_operate,
    cmd_status,
    cmd_top,
    run_control,
)
from vwos.testing import Harness, open_harness


class Gear(enum.Enum):
    P = "P"
    D = "D"


@default_codec.register(name="tests.control.Position")
@attrs.frozen
class Position:
    lat: float
    lon: float
    fix: bool = True


@default_codec.register(name="tests.control.LockRequest")
@attrs.frozen
class LockRequest:
    lock: bool
    door: str = "all"


SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400, max_age=0.5)
ODO = Topic("Vehicle.Odometer", float, unit="km")
GEAR = Topic("Vehicle.Gear", Gear)
POSITION = Topic("Vehicle.CurrentLocation", Position)
LOCK = Method("Body.Doors.Lock", LockRequest, str)
BROKEN = Method("Body.Broken", object, str)


class Speedo(Service[NoConfig]):
    """Publishes the speed at 10 Hz for 3 s, then stops publishing (so the topic goes stale)."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        speed = ctx.bus.publisher(SPEED)
        ctx.bus.declare(ODO)
        ctx.bus.declare(GEAR)
        ctx.bus.declare(POSITION)
        ctx.log.info("speedo up", hz=10)
        task_status.started()
        for i in range(30):
            speed.publish_nowait(50.0 + i)
            if i % 10 == 0:
                ctx.log.info("tick", i=i)
            await trio.sleep(0.1)
        await trio.sleep_forever()


class Doors(Service[NoConfig]):
    """Serves Body.Doors.Lock and a method whose handler raises."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def lock(request: LockRequest) -> str:
            await trio.lowlevel.checkpoint()
            return f"{request.door} {'locked' if request.lock else 'unlocked'}"

        async def broken(_: object) -> str:
            await trio.lowlevel.checkpoint()
            raise RuntimeError("actuator jammed")

        async with trio.open_nursery() as nursery:
            await nursery.start(ctx.bus.serve, LOCK, lock)
            await nursery.start(ctx.bus.serve, BROKEN, broken)
            task_status.started()


@pytest.fixture
def log_buffer() -> Iterator[LogBuffer]:
    """structlog configured with the ring buffer's processor (and no output), restored afterwards."""
    buffer = LogBuffer(capacity=50)
    saved = structlog.get_config()

    def drop(*_: Any) -> Any:
        raise structlog.DropEvent

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            buffer.processor,
            drop,
        ],
        cache_logger_on_first_use=False,
    )
    try:
        yield buffer
    finally:
        structlog.configure(**saved)


@asynccontextmanager
async def running(logs: LogBuffer | None = None) -> AsyncIterator[tuple[Harness, ControlPlane]]:
    async with open_harness(ServiceSpec("speedo", Speedo), ServiceSpec("doors", Doors)) as harness:
        plane = ControlPlane(harness.supervisor, logs=logs)
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            yield harness, plane
            nursery.cancel_scope.cancel()


async def invoke(command: ControlCommand, argv: list[str], client: BusClient) -> tuple[int, str, str]:
    args = _parser(extensions=False).parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = await run_control(command, client, args, out, err)
    return code, out.getvalue(), err.getvalue()


# -- status and operations --------------------------------------------------------------------------


async def test_status_json_and_text(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        await trio.sleep(2)
        client = h.bus.client("cli", CONTROL_READ)
        code, out, err = await invoke(cmd_status, ["status", "--json"], client)
        assert (code, err) == (0, "")
        data = json.loads(out)
        assert [s["name"] for s in data["services"]] == ["speedo", "doors"]
        assert {s["state"] for s in data["services"]} == {"running"}
        assert data["services"][0]["uptime"] == pytest.approx(2.0, abs=0.01)
        assert data["services"][0]["restarts"] == 0
        assert [s["incarnation"] for s in data["services"]] == [1, 1]
        assert data["supervisor_uptime"] == pytest.approx(2.0, abs=0.01)
        code, out, _ = await invoke(cmd_status, ["status"], client)
        assert code == 0
        header, speedo, doors = out.splitlines()
        assert header.split()[:4] == ["SERVICE", "STATE", "RESTARTS", "UPTIME"]
        assert speedo.split()[:4] == ["speedo", "running", "0", "2.0s"]
        assert doors.startswith("doors")


async def test_stop_start_restart_show_in_status(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_OPERATE)
        code, out, _ = await invoke(cmd_operate, ["stop", "speedo"], client)
        assert (code, out) == (0, "stop: speedo is stopped\n")
        assert h.status()["speedo"].state.value == "stopped"
        reply: StatusReply = await client.call(STATUS, None)
        assert reply.services[0].state == "stopped"
        assert reply.services[0].last_exit == "stopped"

        code, out, _ = await invoke(cmd_operate, ["start", "speedo", "--json"], client)
        assert code == 0
        assert json.loads(out)["service"]["state"] == "running"
        assert h.status()["speedo"].state.value == "running"

        await trio.sleep(5)
        code, out, _ = await invoke(cmd_operate, ["restart", "speedo", "--json"], client)
        assert code == 0
        row = json.loads(out)["service"]
        assert row["state"] == "running"
        assert row["uptime"] < 1.0  # a new run, not the 5 s old one
        assert row["restarts"] == 0  # an operator's restart is not counted


async def test_operations_settle_on_the_new_run_not_on_uptime(autojump_clock: trio.testing.MockClock) -> None:
    """A restart of a stopped service (no uptime to compare) and of one up for less than a poll settle as
    soon as the new run is ready: the control plane watches the run's incarnation, not its uptime."""
    async with running() as (h, plane):
        client = h.bus.client("cli", CONTROL_OPERATE)
        first = (await client.call(STATUS, None)).services[0]
        assert (first.name, first.state, first.incarnation) == ("speedo", "running", 1)

        stopped = await client.call(STOP, ServiceRequest("speedo"))
        assert (stopped.settled, stopped.service.state) == (True, "stopped")
        assert stopped.service.incarnation == 1

        began = trio.current_time()
        code, out, _ = await invoke(cmd_operate, ["restart", "speedo"], client)
        assert (code, out) == (0, "restart: speedo is running\n")
        assert trio.current_time() - began <= 2 * plane.poll_interval
        assert h.status()["speedo"].incarnation == 2

        began = trio.current_time()
        again = await client.call(RESTART, ServiceRequest("speedo"))  # up for less than one poll
        assert trio.current_time() - began <= 2 * plane.poll_interval
        assert (again.settled, again.service.state, again.service.incarnation) == (True, "running", 3)

        began = trio.current_time()
        running_already = await client.call(START, ServiceRequest("speedo"))
        assert trio.current_time() - began <= 2 * plane.poll_interval
        assert (running_already.settled, running_already.service.incarnation) == (True, 3)
        assert h.status()["speedo"].restarts == 0
        assert h.status()["doors"].incarnation == 1  # nobody else was touched


async def test_operating_an_unknown_service_fails_with_the_names(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (h, _):
        code, out, err = await invoke(cmd_operate, ["restart", "nope"], h.bus.client("cli", CONTROL_ADMIN))
        assert code == 1
        assert out == ""
        assert err == "vwos: no such service or group: 'nope' (there are: speedo, doors)\n"


# -- permissions ------------------------------------------------------------------------------------


async def test_read_permission_cannot_restart_or_publish(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        reader = h.bus.client("reader", CONTROL_READ)
        assert (await invoke(cmd_status, ["status"], reader))[0] == 0
        code, _, err = await invoke(cmd_operate, ["restart", "speedo"], reader)
        assert code == 1
        assert err == "vwos: permission denied: 'reader' may not call 'Vwos.Control.Operate.Restart'\n"
        assert h.status()["speedo"].restarts == 0
        code, _, err = await invoke(cmd_bus_pub, ["bus", "pub", "Vehicle.Odometer", "12"], reader)
        assert code == 1
        assert err == "vwos: permission denied: 'reader' may not publish 'Vehicle.Odometer'\n"
        assert h.bus.latest("Vehicle.Odometer") == []
        operator = h.bus.client("operator", CONTROL_OPERATE)
        code, _, err = await invoke(
            cmd_bus_call, ["bus", "call", "Body.Doors.Lock", '{"lock": true}'], operator
        )
        assert code == 1
        assert "may not call 'Body.Doors.Lock'" in err


def test_default_authorize_by_uid() -> None:
    authorize = default_authorize(admin_uids=(0,), operate_uids=(1000,), read_uids=(1001,))
    assert authorize((123, 0, 0), "cli") is CONTROL_ADMIN
    assert authorize((123, 1000, 1000), "cli") is CONTROL_OPERATE
    assert authorize((123, 1001, 1001), "cli") is CONTROL_READ
    assert authorize((123, 1002, 1002), "cli") is None
    assert authorize(object(), "cli") is None

    @attrs.frozen
    class Creds:
        uid: int

    anyone = default_authorize(admin_uids=(0,))
    assert anyone(Creds(4242), "cli") is CONTROL_READ
    assert anyone(Creds(0), "cli") is CONTROL_ADMIN
    assert CONTROL_READ.allows(Action.CALL, "Vwos.Control.Read.Status")
    assert not CONTROL_READ.allows(Action.PUBLISH, "Vehicle.Speed")
    assert not CONTROL_OPERATE.allows(Action.PUBLISH, "Vehicle.Speed")
    assert anyone(Creds(True), "cli") is None  # a bool is no uid


def test_default_authorize_reads_the_supervisor_s_uid_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default admins are root and the uid running the supervisor at the time, not at import."""
    monkeypatch.setattr(os, "getuid", lambda: 4321)
    authorize = default_authorize()
    assert authorize((1, 4321, 4321), "cli") is CONTROL_ADMIN
    assert authorize((1, 0, 0), "cli") is CONTROL_ADMIN
    assert authorize((1, 1000, 1000), "cli") is CONTROL_READ


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"read_uids": "all"}, "read_uids must be uids or \"any\", not 'all'"),
        ({"admin_uids": "0"}, "admin_uids must be uids"),
        ({"operate_uids": 1000}, "operate_uids must be an iterable of uids, not 1000"),
        ({"operate_uids": (1000, -1, "x")}, "operate_uids must hold uids \\(integers >= 0\\), not .*-1"),
        ({"admin_uids": (True,)}, "admin_uids must hold uids"),
    ],
)
def test_default_authorize_refuses_wrong_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        default_authorize(**kwargs)


# -- logs -------------------------------------------------------------------------------------------


async def test_logs_lines_n_and_follow(autojump_clock: trio.testing.MockClock, log_buffer: LogBuffer) -> None:
    async with running(log_buffer) as (h, _):
        await trio.sleep(1.5)
        client = h.bus.client("cli", CONTROL_READ)
        code, out, _ = await invoke(cmd_logs, ["logs", "speedo", "-n", "100"], client)
        assert code == 0
        texts = [line.split(None, 2)[2] for line in out.splitlines()]
        assert "speedo up hz=10" in texts
        assert "tick i=0" in texts
        assert "tick i=10" in texts
        assert all("doors" not in t for t in texts)
        code, out, _ = await invoke(cmd_logs, ["logs", "speedo", "-n", "1", "--json"], client)
        (last,) = [json.loads(line) for line in out.splitlines()]
        assert last["text"] == "tick i=10"
        assert last["level"] == "info"
        assert last["service"] == "speedo"

        follow_out = io.StringIO()
        args = _parser(extensions=False).parse_args(["logs", "speedo", "-n", "0", "-f"])
        with trio.move_on_after(2.0):
            await run_control(cmd_logs, client, args, follow_out, io.StringIO())
        followed = follow_out.getvalue()
        assert "tick i=20" in followed
        assert "tick i=10" not in followed

        code, _, err = await invoke(cmd_logs, ["logs", "ghost"], client)
        assert code == 1
        assert "no such service or group: 'ghost'" in err


async def test_logs_without_a_service_merges_every_service_in_time_order(
    autojump_clock: trio.testing.MockClock, log_buffer: LogBuffer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(log_buffer) as (h, _):
        await trio.sleep(1.5)
        client = h.bus.client("cli", CONTROL_READ)
        code, out, _ = await invoke(cmd_logs, ["logs", "-n", "1000"], client)
        assert code == 0
        rows = [line.split(None, 3) for line in out.splitlines()]
        assert {row[2] for row in rows} == {"speedo", "doors"}  # a column naming the service
        assert ["speedo", "speedo up hz=10"] in [row[2:] for row in rows]
        assert ["doors", "service ready"] in [row[2:] for row in rows]
        stamps = [row[0] for row in rows]
        assert stamps == sorted(stamps)
        expected = [
            (line.timestamp, line.text)
            for name in ("speedo", "doors")
            for line in log_buffer.read(name, lines=1000).lines
        ]
        assert len(rows) == len(expected)
        code, out, _ = await invoke(cmd_logs, ["logs", "-n", "3", "--json"], client)
        shown = [json.loads(line) for line in out.splitlines()]
        assert [(s["timestamp"], s["text"]) for s in shown] == sorted(expected)[-3:]
        assert all(s["service"] in ("speedo", "doors") for s in shown)

        follow_out = io.StringIO()
        args = _parser(extensions=False).parse_args(["logs", "-n", "0", "-f"])
        with trio.move_on_after(2.0):
            await run_control(cmd_logs, client, args, follow_out, io.StringIO())
        followed = [line.split(None, 3)[2:] for line in follow_out.getvalue().splitlines()]
        assert ["speedo", "tick i=20"] in followed
    assert capsys.readouterr().err == ""  # at debug (the fixture's level) nothing was hidden


async def test_logs_say_when_the_log_level_hid_lines(
    autojump_clock: trio.testing.MockClock, log_buffer: LogBuffer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervisor runs at "warning": the info lines were never logged, so never kept. Say so."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with running(log_buffer) as (h, _):
        await trio.sleep(1.5)
        client = h.bus.client("cli", CONTROL_READ)
        for argv in (["logs"], ["logs", "speedo"]):
            code, out, _ = await invoke(cmd_logs, argv, client)
            assert (code, out) == (0, "")
            assert capsys.readouterr().err == (
                "vwos: the supervisor logs at level 'warning': debug, info lines were never kept "
                "(run it with --log-level info to see them)\n"
            )
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    async with running(log_buffer) as (h, _):
        await trio.sleep(1.5)
        client = h.bus.client("cli", CONTROL_READ)
        code, out, _ = await invoke(cmd_logs, ["logs", "speedo"], client)
        assert "tick i=10" in out
        assert capsys.readouterr().err == ""  # at info with lines shown: nothing worth saying


def test_the_hidden_levels_note() -> None:
    assert _hidden_levels_note("debug", 0) is None
    assert _hidden_levels_note(None, 0) is None
    assert _hidden_levels_note("info", 3) is None
    assert _hidden_levels_note("info", 0) == (
        "the supervisor logs at level 'info': debug lines were never kept (run it with --log-level debug to "
        "see them)"
    )
    assert _hidden_levels_note("critical", 5) is not None


def test_log_buffer_ring_counts_missed_lines() -> None:
    buffer = LogBuffer(capacity=3)
    for i in range(5):
        buffer.add("a", "info", f"line {i}", timestamp=float(i))
    buffer.add("b", "info", "other")
    reply = buffer.read("a", lines=10)
    assert [line.text for line in reply.lines] == ["line 2", "line 3", "line 4"]
    assert (reply.cursor, reply.missed) == (5, 2)
    reply = buffer.read("a", lines=1, after=3)
    assert [line.text for line in reply.lines] == ["line 4"]
    assert reply.missed == 1
    assert buffer.read("a", after=5).lines == ()


# -- bus list, echo, pub, hz, call ------------------------------------------------------------------


async def test_bus_list_types_rates_and_staleness(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_READ)
        await trio.sleep(2.05)
        code, out, _ = await invoke(cmd_bus_list, ["bus", "list", "--json"], client)
        assert code == 0
        topics = {t["name"]: t for t in json.loads(out)["topics"]}
        speed = topics["Vehicle.Speed"]
        assert (speed["type"], speed["unit"]) == ("float", "km/h")
        assert speed["rate"] == pytest.approx(10.0, rel=0.1)
        assert speed["stale"] is False
        assert speed["latest"] == "70.0"
        assert topics["Vehicle.CurrentLocation"]["type"] == "Position"
        assert topics["Vehicle.Odometer"]["latest"] is None

        await trio.sleep(8)  # the speedo stopped publishing after 3 s, and the window is 5 s
        code, out, _ = await invoke(cmd_bus_list, ["bus", "list", "Vehicle.Speed"], client)
        header, line = out.splitlines()
        assert header.split()[:4] == ["TOPIC", "TYPE", "UNIT", "RATE/s"]
        assert line.split()[:4] == ["Vehicle.Speed", "float", "km/h", "0.0"]
        assert line.endswith("79.0  (stale)")


async def test_bus_echo_prints_samples(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_READ)
        code, out, _ = await invoke(
            cmd_bus_echo, ["bus", "echo", "Vehicle.*", "--count", "3", "--json"], client
        )
        assert code == 0
        samples = [json.loads(line) for line in out.splitlines()]
        assert len(samples) == 3
        assert [s["topic"] for s in samples] == ["Vehicle.Speed"] * 3
        assert [s["seq"] for s in samples] == [samples[0]["seq"] + i for i in range(3)]
        assert samples[0]["publisher"] == "speedo"
        code, out, _ = await invoke(
            cmd_bus_echo, ["bus", "echo", "Vehicle.Speed", "--count", "1", "--latest"], client
        )
        assert out.startswith("Vehicle.Speed = ")
        assert "(speedo #" in out


async def test_bus_pub_converts_and_refuses(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        admin = h.bus.client("cli", CONTROL_ADMIN)
        code, out, err = await invoke(cmd_bus_pub, ["bus", "pub", "Vehicle.Odometer", "12"], admin)
        assert (code, err) == (0, "")
        sample = h.bus.latest("Vehicle.Odometer")[0]
        assert sample.value == 12.0
        assert type(sample.value) is float
        assert out == "published Vehicle.Odometer = 12.0\n"
        code, out, err = await invoke(cmd_bus_pub, ["bus", "pub", "Vehicle.Odometer", "13", "--json"], admin)
        assert (code, err) == (0, "")
        shown = json.loads(out)
        sample = h.bus.latest("Vehicle.Odometer")[0]
        assert shown == {"topic": "Vehicle.Odometer", "value": 13.0, "timestamp": sample.timestamp}
        assert sample.value == 13.0

        code, _, _ = await invoke(
            cmd_bus_pub, ["bus", "pub", "Vehicle.CurrentLocation", '{"lat": 52.4, "lon": 10}'], admin
        )
        assert code == 0
        assert h.bus.latest("Vehicle.CurrentLocation")[0].value == Position(52.4, 10.0, True)
        assert (await invoke(cmd_bus_pub, ["bus", "pub", "Vehicle.Gear", "D"], admin))[0] == 0
        assert h.bus.latest("Vehicle.Gear")[0].value is Gear.D

        refusals = {
            ("Vehicle.Odometer", '"fast"'): 'vwos: Vehicle.Odometer: expected a number, got "fast"\n',
            ("Vehicle.Speed", "500"): "vwos: Vehicle.Speed: value 500.0 refused: above max 400 km/h\n",
            ("Vehicle.Nope", "1"): "vwos: Vehicle.Nope: no such topic is declared on the bus\n",
            ("Vehicle.Gear", "X"): "vwos: Vehicle.Gear: expected one of ['P', 'D'] (Gear), got \"X\"\n",
            ("Vehicle.CurrentLocation", '{"lat": 1}'): (
                "vwos: Vehicle.CurrentLocation: Position needs the field 'lon'\n"
            ),
            ("Vehicle.CurrentLocation", '{"lat": 1, "lon": 2, "alt": 3}'): (
                "vwos: Vehicle.CurrentLocation: Position has no field 'alt' (fields: lat, lon, fix)\n"
            ),
            ("Vehicle.Odometer", "{oops"): "vwos: the value '{oops' is not JSON: ",
            ("Vehicle.CurrentLocation", "[" * 200 + "]" * 200): (
                "vwos: Vehicle.CurrentLocation: nested more than 100 levels deep\n"
            ),
            ("Vehicle.CurrentLocation", "[" * 100_000 + "]" * 100_000): (
                "vwos: the value is nested too deeply to be read as JSON (200000 characters)\n"
            ),
        }
        for (topic, value), message in refusals.items():
            before = len(h.samples(topic))
            code, out, err = await invoke(cmd_bus_pub, ["bus", "pub", topic, value], admin)
            assert code == 1, (topic, value)
            assert out == ""
            assert err.startswith(message), err
            assert len(h.samples(topic)) == before


async def test_bus_hz_measures_rate_and_intervals(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_READ)
        await trio.sleep(0.05)  # windows between samples, not on them
        code, out, _ = await invoke(
            cmd_bus_hz, ["bus", "hz", "Vehicle.Speed", "--window", "1", "--count", "2", "--json"], client
        )
        assert code == 0
        first, second = (json.loads(line) for line in out.splitlines())
        assert second["rate"] == pytest.approx(10.0, rel=0.01)
        assert second["min"] == pytest.approx(0.1, rel=0.01)
        assert second["max"] == pytest.approx(0.1, rel=0.01)
        assert (first["samples"], second["samples"]) == (10, 10)
        assert first["mean"] == pytest.approx(0.1, rel=0.01)
        await trio.sleep(5)  # no more samples
        code, out, _ = await invoke(
            cmd_bus_hz, ["bus", "hz", "Vehicle.Speed", "--window", "1", "--count", "1"], client
        )
        assert out == "Vehicle.Speed: 0 samples in 1 s\n"
        with pytest.raises(SystemExit) as exited:  # the command line itself is refused (test_cli.py sweeps)
            await invoke(cmd_bus_hz, ["bus", "hz", "Vehicle.Speed", "--window", "0"], client)
        assert exited.value.code == 2


async def test_bus_call_converts_the_argument_and_reports_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (h, _):
        admin = h.bus.client("cli", CONTROL_ADMIN)
        code, out, _ = await invoke(
            cmd_bus_call, ["bus", "call", "Body.Doors.Lock", '{"lock": true, "door": "rear"}'], admin
        )
        assert (code, out) == (0, '"rear locked"\n')
        code, out, _ = await invoke(
            cmd_bus_call, ["bus", "call", "Body.Doors.Lock", '{"lock": false}', "--json"], admin
        )
        assert json.loads(out) == {"method": "Body.Doors.Lock", "result": "all unlocked"}
        code, out, err = await invoke(cmd_bus_call, ["bus", "call", "Body.Broken"], admin)
        assert code == 1
        assert err == "vwos: Body.Broken: handler raised RuntimeError: actuator jammed\n"
        code, _, err = await invoke(cmd_bus_call, ["bus", "call", "Body.Doors.Lock", '{"lock": 1}'], admin)
        assert code == 1
        assert err == "vwos: Body.Doors.Lock.lock: expected true or false, got 1\n"
        code, _, err = await invoke(cmd_bus_call, ["bus", "call", "Body.Nothing"], admin)
        assert code == 1
        assert err == "vwos: Body.Nothing: no such method is served on this bus\n"
        code, out, _ = await invoke(
            cmd_bus_call, ["bus", "call", "Vwos.Control.Read.Status", "--json"], admin
        )
        assert [s["name"] for s in json.loads(out)["result"]["services"]] == ["speedo", "doors"]


async def test_without_a_control_plane_the_commands_say_so(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(ServiceSpec("doors", Doors)) as h:
        code, _, err = await invoke(cmd_status, ["status"], h.bus.client("cli"))
        assert code == 3
        assert "does not serve the control interface" in err


# -- top --------------------------------------------------------------------------------------------


async def test_top_once(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_READ)
        await trio.sleep(2.05)
        code, out, _ = await invoke(cmd_top, ["top", "--once"], client)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].startswith("vwos top")
        assert any(line.split()[:2] == ["speedo", "running"] for line in lines)
        topic_header = next(i for i, line in enumerate(lines) if line.startswith("TOPIC"))
        busiest = lines[topic_header + 1].split()
        assert busiest[0] == "Vehicle.Speed"
        assert float(busiest[1]) == pytest.approx(10.0, rel=0.1)
        code, out, _ = await invoke(cmd_top, ["top", "--once", "--json", "--limit", "1"], client)
        frame = json.loads(out)
        assert [t["name"] for t in frame["topics"]] == ["Vehicle.Speed"]
        assert [s["name"] for s in frame["services"]] == ["speedo", "doors"]


class Terminal(io.StringIO):
    """Standard output as `vwos top` sees a terminal."""

    def isatty(self) -> bool:
        return True


async def test_top_without_a_terminal_prints_one_plain_frame_and_ends(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vwos top | less``, ``vwos top > file``: plain lines, no escape codes, no cbreak (even with a
    terminal on stdin), and it ends rather than redrawing into the pipe forever."""
    cbreaks: list[object] = []
    monkeypatch.setattr(tty, "setcbreak", lambda *args: cbreaks.append(args))
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with os.fdopen(slave, closefd=False) as keyboard:
            monkeypatch.setattr(sys, "stdin", keyboard)
            async with running() as (h, _):
                client = h.bus.client("cli", CONTROL_READ)
                await trio.sleep(2.05)
                started = trio.current_time()
                with trio.fail_after(10):
                    code, out, err = await invoke(cmd_top, ["top", "--interval", "1"], client)
                assert trio.current_time() - started < 1  # one frame, no waiting for the next
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    assert cbreaks == []
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("vwos top")
    assert sum(line.startswith("vwos top") for line in lines) == 1
    assert any(line.split()[:2] == ["speedo", "running"] for line in lines)
    assert "q or Ctrl-C quits" not in out


async def test_top_live_redraws_each_interval_until_q(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live view on a terminal (a pty here): cbreak mode, a frame per interval, `q` quits, and the
    terminal's mode is restored."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with os.fdopen(slave, closefd=False) as terminal:
            monkeypatch.setattr(sys, "stdin", terminal)
            async with running() as (h, _), trio.open_nursery() as nursery:
                client = h.bus.client("cli", CONTROL_READ)
                await trio.sleep(2.05)
                modes: list[bool] = []

                async def press_q() -> None:
                    await trio.sleep(3.5)  # frames at 0, 1, 2 and 3 s
                    modes.append(termios.tcgetattr(slave)[3] & termios.ICANON == 0)
                    os.write(master, b"q")

                nursery.start_soon(press_q)
                started = trio.current_time()
                screen = Terminal()
                with trio.fail_after(10):
                    args = _parser(extensions=False).parse_args(["top", "--interval", "1"])
                    code = await run_control(cmd_top, client, args, screen, io.StringIO())
                out = screen.getvalue()
                # Quit at once on a real clock; the mock clock may jump to the next frame before the
                # key is read.
                assert 3.5 <= trio.current_time() - started <= 4.0
        assert code == 0
        assert modes == [True]  # keys arrived one by one while it ran
        assert termios.tcgetattr(slave) == before
        frames = out.split("\x1b[H\x1b[2J")[1:]
        assert len(frames) in (4, 5)
        for frame in frames:
            assert frame.startswith("vwos top")
            assert frame.endswith("q or Ctrl-C quits\n")
            assert any(line.split()[:2] == ["speedo", "running"] for line in frame.splitlines())
    finally:
        os.close(master)
        os.close(slave)


async def test_top_live_json_without_a_terminal(autojump_clock: trio.testing.MockClock) -> None:
    """No terminal, so no keys: a JSON frame per interval until stopped (Ctrl-C)."""
    async with running() as (h, _):
        client = h.bus.client("cli", CONTROL_READ)
        await trio.sleep(2.05)
        out, err = io.StringIO(), io.StringIO()
        args = _parser(extensions=False).parse_args(["top", "--json", "--interval", "1"])
        with trio.move_on_after(2.5):
            await run_control(cmd_top, client, args, out, err)
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [round(f["supervisor_uptime"], 2) for f in frames] == [2.05, 3.05, 4.05]
    assert all([s["name"] for s in f["services"]] == ["speedo", "doors"] for f in frames)
    assert err.getvalue() == ""


# -- pieces -----------------------------------------------------------------------------------------


def test_convert_json_nested_and_containers() -> None:
    assert convert_json(tuple[int, ...], [1, 2]) == (1, 2)
    assert convert_json(int | None, None) is None
    assert convert_json(bytes, "0aff") == b"\x0a\xff"
    assert convert_json(Gear, "P") is Gear.P
    with pytest.raises(ControlError, match=r"value\[1\]: expected an integer, got true"):
        convert_json(list[int], [1, True])


@attrs.frozen
class _Trip:
    stops: list[Position]
    name: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.min_len(1))
    )
    counts: dict[str, int] = attrs.field(factory=dict)
    pair: tuple[int, str] = (0, "")
    mode: Literal["eco", "sport"] = "eco"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"stops": [{"lat": 1, "lon": 2}, {"lat": "x", "lon": 2}]},
            'trip.stops[1].lat: expected a number, got "x"',
        ),
        ({"stops": [], "counts": {"a": 1, "b": "c"}}, 'trip.counts.b: expected an integer, got "c"'),
        ({"stops": [], "name": ""}, "trip: _Trip refused the fields: Length of 'name' must be >= 1: 0"),
        ({"stops": [], "pair": [1]}, "trip.pair: expected an array of 2 items, got [1]"),
        ({"stops": [], "pair": [1, 2]}, "trip.pair[1]: expected a string, got 2"),
        ({"stops": [], "mode": "race"}, "trip.mode: expected one of ['eco', 'sport'], got \"race\""),
        ({"stops": [{"lat": 1}]}, "trip.stops[0]: Position needs the field 'lon'"),
        ({"stops": 3}, "trip.stops: expected a JSON array (list[Position]), got 3"),
        ([1], "trip: expected a JSON object with the fields of _Trip, got [1]"),
    ],
)
def test_convert_json_says_where_each_value_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(ControlError) as caught:
        convert_json(_Trip, data, "trip")
    assert str(caught.value) == message


def test_convert_json_builds_nested_records_and_refuses_what_json_cannot_make() -> None:
    trip = convert_json(_Trip, {"stops": [{"lat": 1, "lon": 2.5}], "counts": {"a": 1}, "pair": [3, "x"]})
    assert trip == _Trip([Position(1.0, 2.5)], None, {"a": 1}, (3, "x"))
    assert type(trip.stops[0].lat) is float
    assert convert_json(frozenset[int], [1, 2, 2]) == frozenset({1, 2})
    assert convert_json(dict[str, Any], {"k": [1, {"x": None}]}) == {"k": [1, {"x": None}]}
    for tp, data, message in [
        (complex, 1, "value: values of type complex cannot be made from JSON"),
        (int | str, 1.5, "value: expected int or str, got 1.5"),
        (None, 1, "value: expected null, got 1"),
        (bytes, "zz", 'value: expected a hex string (bytes), got "zz"'),
        (list[Any], _nested(101), "value: nested more than 100 levels deep"),
    ]:
        with pytest.raises(ControlError) as caught:
            convert_json(tp, data)
        assert str(caught.value) == message
    assert convert_json(list[Any], _nested(100)) == _nested(100)


def _nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


class Count(enum.Enum):
    ONE = 1


@attrs.frozen
class NonNegative:
    x: int = attrs.field(validator=attrs.validators.ge(0))


@pytest.mark.parametrize(
    ("tp", "data", "expected"),
    [
        (None, None, None),
        (int | str, "a", "a"),
        (Literal["a", "b"], "b", "b"),
        (tuple[int, str], [1, "a"], (1, "a")),
        (frozenset[int], [1, 2], frozenset({1, 2})),
        (dict[str, int], {"a": 1}, {"a": 1}),
        (float, 2, 2.0),
        (Count, 1, Count.ONE),  # an enum by value, too
        (Position, {"lat": 1.0, "lon": 2.0}, Position(1.0, 2.0)),  # a field with a default may be left out
        (Any, {"z": [1]}, {"z": [1]}),
        (list, [1, "a"], [1, "a"]),  # a bare list: of anything
    ],
)
def test_convert_json_builds_each_supported_type(tp: Any, data: Any, expected: Any) -> None:
    got = convert_json(tp, data)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("tp", "data", "message"),
    [
        (None, 1, "value: expected null, got 1"),
        (int | None, "a", 'value: expected int or None, got "a"'),
        (Literal["a", "b"], "c", "value: expected one of ['a', 'b'], got \"c\""),
        (list[int], {}, "value: expected a JSON array (list[int]), got {}"),
        (tuple[int, str], [1], "value: expected an array of 2 items, got [1]"),
        (dict[str, int], [], "value: expected a JSON object, got []"),
        (dict[str, int], {"a": "x"}, 'value.a: expected an integer, got "x"'),
        (list["int"], [1], "value[0]: values of type 'int' cannot be made from JSON"),
        (bool, 1, "value: expected true or false, got 1"),
        (int, 1.5, "value: expected an integer, got 1.5"),
        (float, True, "value: expected a number, got true"),
        (str, 3, "value: expected a string, got 3"),
        (bytes, "zz", 'value: expected a hex string (bytes), got "zz"'),
        (bytes, 3, "value: expected a hex string (bytes), got 3"),
        (Count, 1.0, "value: expected one of ['ONE'] (Count), got 1.0"),
        (Position, [], "value: expected a JSON object with the fields of Position, got []"),
        (Position, {"lat": 1.0}, "value: Position needs the field 'lon'"),
        (
            Position,
            {"lat": 1.0, "lon": 2.0, "alt": 3},
            "value: Position has no field 'alt' (fields: lat, lon, fix)",
        ),
        (NonNegative, {"x": -1}, "value: NonNegative refused the fields: 'x' must be >= 0: -1"),
        (complex, 1, "value: values of type complex cannot be made from JSON"),
    ],
)
def test_convert_json_says_where_and_what_was_expected(tp: Any, data: Any, message: str) -> None:
    with pytest.raises(ControlError) as info:
        convert_json(tp, data)
    assert str(info.value) == message


def test_a_log_buffer_holds_at_least_one_line() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, not 0"):
        LogBuffer(capacity=0)


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            bus.NoSuchMethodError("Vwos.Control.Status"),
            3,
            "the supervisor does not serve the control interface (Vwos.Control.Status)",
        ),
        (bus.NoSuchMethodError("Body.Doors.Lock"), 1, str(bus.NoSuchMethodError("Body.Doors.Lock"))),
        (
            bus.CallTimeoutError("Vwos.Control.Status", 5.0),
            3,
            "the supervisor did not answer in time (Vwos.Control.Status): is it stuck?",
        ),
        (bus.CallTimeoutError("Body.Doors.Lock", 5.0), 1, str(bus.CallTimeoutError("Body.Doors.Lock", 5.0))),
        (bus.UnknownTopicError("Vehicle.Nope"), 1, str(bus.UnknownTopicError("Vehicle.Nope"))),
        (bus.TopicError("bad pattern 'a..b'"), 2, "bad pattern 'a..b'"),
        (
            bus.RemoteError("Body.Doors.Lock", "RuntimeError", "jammed"),
            1,
            str(bus.RemoteError("Body.Doors.Lock", "RuntimeError", "jammed")),
        ),
        (
            bus.RemoteError("Vwos.Control.Start", "ControlError", "no such service: 'x'"),
            1,
            "no such service: 'x'",
        ),
    ],
)
async def test_run_control_turns_each_bus_error_into_one_line_and_an_exit_code(
    error: Exception, code: int, message: str
) -> None:
    async def command(client: Any, args: argparse.Namespace, out: Any) -> int:
        await trio.lowlevel.checkpoint()
        raise error

    err = io.StringIO()
    assert await run_control(command, None, argparse.Namespace(), io.StringIO(), err) == code
    assert err.getvalue() == f"vwos: {message}\n"


async def test_run_control_lets_a_bug_through() -> None:
    async def command(client: Any, args: argparse.Namespace, out: Any) -> int:
        await trio.lowlevel.checkpoint()
        raise KeyError("a bug")

    err = io.StringIO()
    with pytest.raises(KeyError):
        await run_control(command, None, argparse.Namespace(), io.StringIO(), err)
    assert err.getvalue() == ""


def test_socket_path_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VWOS_SOCKET", "/tmp/x.sock")
    assert default_socket_path() == "/tmp/x.sock"
    monkeypatch.delenv("VWOS_SOCKET")
    monkeypatch.setattr("os.getuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket_path() == "/run/user/1000/vwos.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == "/tmp/vwos-1000/vwos.sock"
    monkeypatch.setattr("os.getuid", lambda: 0)
    assert default_socket_path() == "/run/vwos/vwos.sock"


def test_control_types_cross_the_codec() -> None:
    reply = StatusReply((), 1.5)
    assert default_codec.decode(default_codec.encode(reply)) == reply


def _explode() -> None:
    raise KeyError("missing")


@pytest.mark.parametrize("format", ["console", "json"])
def test_a_service_s_exception_is_kept_with_its_traceback_for_vwos_logs(
    format: Literal["console", "json"],
) -> None:
    from vwos import configure_logging

    buffer = LogBuffer(capacity=10)
    saved = structlog.get_config()
    try:
        configure_logging(format=format, stream=io.StringIO(), extra_processors=[buffer.processor])
        try:
            _explode()
        except KeyError as exc:
            structlog.get_logger().error(
                "service failed", service="x", error="KeyError: 'missing'", exc_info=exc
            )
    finally:
        structlog.configure(**saved)
    (line,) = buffer.read("x").lines
    first, *rest = line.text.splitlines()
    assert first == "service failed error=\"KeyError: 'missing'\""
    trace = "\n".join(rest)
    assert trace.startswith("Traceback (most recent call last):")
    assert ", in _explode" in trace
    assert trace.endswith("KeyError: 'missing'")


def test_the_log_buffer_renders_an_exception_that_was_not_rendered_before_it() -> None:
    buffer = LogBuffer(capacity=10)
    try:
        _explode()
    except KeyError as exc:
        buffer.processor(None, "error", {"event": "service failed", "service": "x", "exc_info": exc})
    (line,) = buffer.read("x").lines
    assert "Traceback (most recent call last):" in line.text
    assert line.text.rstrip().endswith("KeyError: 'missing'")


class _Flaky(Service[NoConfig]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(0.5)
        raise RuntimeError("sensor unplugged")


async def test_status_shows_a_failed_unit_and_why_and_restart_revives_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from vwos import GroupSpec, SupervisorPolicy

    specs = [
        ServiceSpec("speedo", Speedo),
        ServiceSpec("flaky", _Flaky, group="sensors", intensity=1, period=100, revive_after=600.0),
    ]
    policy = SupervisorPolicy(intensity=3, period=100)
    async with open_harness(*specs, policy=policy, groups=[GroupSpec("sensors")]) as h:
        plane = ControlPlane(h.supervisor)
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            await trio.sleep(30)
            client = h.bus.client("cli", CONTROL_OPERATE)
            code, out, err = await invoke(cmd_status, ["status", "--json"], client)
            assert (code, err) == (0, "")
            data = json.loads(out)
            flaky = {s["name"]: s for s in data["services"]}["flaky"]
            assert flaky["state"] == "failed"
            assert flaky["group"] == "sensors"
            assert "RuntimeError: sensor unplugged" in flaky["reason"]
            assert 500 < flaky["revive_in"] <= 600
            assert [g["name"] for g in data["groups"]] == ["sensors"]
            assert {s["name"]: s for s in data["services"]}["speedo"]["state"] == "running"
            code, out, _ = await invoke(cmd_status, ["status"], client)
            line = next(line for line in out.splitlines() if line.startswith("flaky"))
            assert line.split()[1] == "failed"
            assert "RuntimeError: sensor unplugged" in line
            assert "revive in" in line
            assert any(line.startswith("GROUP") for line in out.splitlines())
            code, out, _ = await invoke(cmd_operate, ["restart", "flaky"], client)
            assert code == 0
            await trio.sleep(0.1)
            assert h.status()["flaky"].state.value == "running"  # revived with a fresh budget
            nursery.cancel_scope.cancel()


@default_codec.register(name="tests.control.Wide")
@attrs.frozen
class Wide:
    pressure: float
    flags: tuple[bool, ...]
    note: str


async def test_bus_list_keeps_its_columns_for_long_names_and_shows_records_whole_at_their_resolution(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Long names widened their column and pushed the rest out of line; records were cut off with "...";
    a scaled signal showed binary noise (50.480000000000004)."""
    long_name = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Sensor.Temperature.Raw"
    wide = Topic("Vehicle.Wide", Wide)
    async with running() as (h, _):
        feeder = h.bus.client("feeder")
        feeder.publish_nowait(Topic(long_name, float), 5048 * 0.01)
        feeder.publish_nowait(wide, Wide(2.1 * 3, (True, False, True), "x" * 80))
        client = h.bus.client("cli", CONTROL_READ)
        code, out, _ = await invoke(cmd_bus_list, ["bus", "list", "Vehicle.**"], client)
    assert code == 0
    lines = out.splitlines()
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(starts) == 1, lines  # the TYPE column starts at one offset on every row
    row = next(line for line in lines if line.startswith(long_name))
    assert row.endswith("  50.48")
    wide_row = next(line for line in lines if line.startswith("Vehicle.Wide "))
    assert wide_row.endswith(f"Wide(pressure=6.3, flags=(True, False, True), note='{'x' * 80}')")
