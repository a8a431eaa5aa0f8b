"""The dashboard: what a frame shows, the closing words, and the service reading the bus in mock time."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from dashboard import WIDTH, Dashboard, DashboardConfig, Snapshot, closing_words, render_line, render_panel
from demo_signals import (
    AUTO_LOCK_COMMANDS,
    AUTO_LOCK_STATE,
    CURRENT_GEAR,
    DOOR_LOCKED,
    DOOR_OPEN,
    ENGINE_SPEED,
    FUEL_LEVEL,
    GEAR_LEVER,
    SPEED,
    TIRE_LOW,
    TIRE_PRESSURE,
    TRIP_DISTANCE,
)

from services.can import LinkStatus
from services.uplink import UplinkStatus, status_topic
from vwos import ServiceSpec
from vwos.testing import open_harness

# Each test runs twice: the services get in-process bus clients, then clients over the bus socket.
pytestmark = pytest.mark.usefixtures("vwos_bus_client")


def status(accepted: int, batches: int, samples: int, stored: int, transport: str = "file") -> UplinkStatus:
    return UplinkStatus(
        connected=True,
        transport=transport,
        last_error="",
        accepted=accepted,
        stored_samples=stored,
        stored_bytes=100,
        sent_batches=batches,
        sent_samples=samples,
        dropped_quota=0,
        dropped_ttl=0,
        refused=0,
        dropped_before_outbox=0,
    )


SNAPSHOT = Snapshot(
    uptime=75.0,
    services=(("vehicle", "running"), ("gateway", "running"), ("uplink", "backoff")),
    speed=52.34,
    rpm=1820.0,
    lever=3,
    gear=4,
    fuel_level=11.95,
    fuel_rate=2.41,
    tyres=(("FL", 240.5), ("FR", 241.0), ("RL", 195.5), ("RR", None)),
    locked=True,
    auto_lock="locked",
    lock_commands=1,
    trip_km=0.82,
    trip_s=77.0,
    trip_speed=38.5,
    trip_consumption=6.1,
    trip_fuel=0.05,
    warnings=("low fuel", "low tyre pressure RL"),
    uplink=status(accepted=1500, batches=12, samples=1400, stored=40),
    uplink_baseline=status(accepted=500, batches=2, samples=450, stored=50),
)


def test_the_panel_shows_the_car_and_what_the_uplink_did_since_the_start() -> None:
    lines = render_panel(SNAPSHOT, title="demo", network="demo")
    text = "\n".join(lines)
    assert "up 0:01:15" in lines[0]
    assert "● vehicle  ● gateway  ○ uplink (backoff)" in text
    assert "52.3 km/h" in text
    assert "gear D4" in text
    assert "1820 rpm" in text
    assert "11.95 %" in text
    assert "RL 195.5 ▼" in text  # the warned tyre is marked
    assert "FL 240.5   FR 241.0" in text
    assert "RR --" in text  # no reading
    assert "locked, closed · auto lock locked (1 command sent)" in text
    assert "0.82 km in 0:01:17 · 38.5 km/h average · 6.1 l/100km" in text
    assert "low fuel, low tyre pressure RL" in text
    # Since the dashboard started, not since the outbox was made.
    assert "1,000 samples accepted · 10 batches (950 samples) shipped" in text
    assert "40 pending" in text
    assert max(len(line) for line in lines) <= WIDTH + 2
    assert "\x1b[" not in text  # no colour unless asked


def test_a_long_list_of_services_wraps_and_colour_is_only_on_request() -> None:
    many = attrs.evolve(SNAPSHOT, services=tuple((f"service-{i}", "running") for i in range(12)))
    lines = render_panel(many, title="demo", network="demo")
    rows = [line for line in lines if "service-" in line]
    assert len(rows) > 1
    assert all(len(row) <= WIDTH for row in rows)
    coloured = "\n".join(render_panel(many, title="demo", network="demo", color=True))
    assert "\x1b[32m●\x1b[0m service-0" in coloured


def test_an_empty_snapshot_shows_dashes_not_errors() -> None:
    text = "\n".join(render_panel(Snapshot(uptime=0.0), title="demo", network="demo"))
    assert "speed          -- " in text
    assert "(no control plane)" in text
    line = render_line(Snapshot(uptime=0.0))
    assert line.startswith("[0:00:00] speed -- --")


def test_the_plain_line() -> None:
    line = render_line(SNAPSHOT)
    assert line.startswith("[0:01:15] speed 52.3 km/h D4 1820 rpm | fuel 11.95 % 2.41 l/h")
    assert "| doors locked, closed, auto lock locked |" in line
    assert "| warnings: low fuel, low tyre pressure RL |" in line
    assert "1,000 samples accepted" in line
    assert line.endswith("| services 2/3 running")


def test_closing_words_say_where_the_batches_are_and_how_to_read_them(tmp_path: Path) -> None:
    outgoing = tmp_path / "demo" / "outgoing"
    outgoing.mkdir(parents=True)
    for seq in (1, 2, 3):
        (outgoing / f"CAR_0123456789abcdef_{seq:020d}.cbor").write_bytes(b"x")
    (outgoing / ".hidden.tmp-1").write_bytes(b"x")
    words = "\n".join(closing_words(SNAPSHOT, outgoing, cwd=tmp_path))
    assert "The demo ran for 0:01:15." in words
    assert "The uplink shipped 10 batches (950 samples) over file; 40 samples left in its outbox" in words
    assert "3 batch files are in demo/outgoing/" in words
    assert "vwos uplink inspect demo/outgoing --summary" in words
    elsewhere = "\n".join(closing_words(SNAPSHOT, outgoing, cwd=tmp_path / "other"))
    assert f"vwos uplink inspect {outgoing} --summary" in elsewhere
    mqtt = attrs.evolve(SNAPSHOT, uplink=status(1, 1, 1, 0, transport="mqtt"), uplink_baseline=None)
    words = "\n".join(closing_words(mqtt, None))
    assert "went to the MQTT broker" in words
    assert "mosquitto_sub -h localhost -t 'vwos/+/batches'" in words


async def test_the_service_reads_the_bus_and_says_goodbye(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    out = io.StringIO()

    class Captured(Dashboard):
        pass

    Captured.out = out  # the harness makes the instance: the class says where it writes
    config = DashboardConfig(style="lines", line_interval=5.0, batches=tmp_path)
    uplink = status_topic("uplink")
    measurements: list[tuple[Any, Any]] = [
        (SPEED, 88.0),
        (ENGINE_SPEED, 2100.0),
        (GEAR_LEVER, 3),
        (CURRENT_GEAR, 5),
        (FUEL_LEVEL, 40.0),
        (TRIP_DISTANCE, 3.25),
    ]
    measurements += [(topic, 240.0) for topic in TIRE_PRESSURE.values()]
    for door in DOOR_LOCKED:
        measurements += [(DOOR_LOCKED[door], True), (DOOR_OPEN[door], door == "FR")]
    events: list[tuple[Any, Any]] = [
        (AUTO_LOCK_STATE, "locked"),
        (AUTO_LOCK_COMMANDS, 1),
        (TIRE_LOW["RR"], True),
    ]
    async with open_harness(ServiceSpec("dashboard", Captured, config)) as car:
        car.publish(uplink, status(accepted=100, batches=1, samples=90, stored=10))
        for topic, value in events:  # once
            car.publish(topic, value)
        for _ in range(7):  # measurements: all the time
            for topic, value in measurements:
                car.publish(topic, value)
            await trio.sleep(1.0)
        car.publish(uplink, status(accepted=400, batches=5, samples=380, stored=20))
        await trio.sleep(3.5)  # the measurements have stopped: stale after 2 s
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("[")]
    assert [line[:10] for line in lines] == ["[0:00:00] ", "[0:00:05] ", "[0:00:10] "]
    second, third = lines[1:]
    assert "speed 88.0 km/h D5 2100 rpm | fuel 40.00 %" in second
    assert "trip 3.25 km" in second
    assert "doors locked, open: FR, auto lock locked" in second
    assert "warnings: low tyre pressure RR" in second
    assert "uplink file · 0 samples accepted · 0 batches (0 samples) shipped, 10 pending" in second
    assert "services --" in second  # no control plane in the test kit
    assert "speed -- --" in third  # stale
    assert "doors --" in third
    assert "warnings: low tyre pressure RR" in third  # an event stays until it changes
    assert "uplink file · 300 samples accepted · 4 batches (290 samples) shipped, 20 pending" in third
    assert re.search(r"The demo ran for 0:00:1\d\.", text)
    assert "The uplink shipped 4 batches (290 samples) over file" in text
    assert f"0 batch files are in {tmp_path}/" in text
    assert "\x1b" not in text


def link(state: str, reason: str = "", received: int = 0, unknown: int = 0) -> LinkStatus:
    return LinkStatus(
        state=state,
        reason=reason,
        mode="thread",
        frames_received=received,
        frames_sent=1,
        unknown_ids=unknown,
        wrong_lengths=0,
        undecodable=0,
        error_frames=0,
        bus_off=0,
        reconnects=0,
    )


def test_the_can_link_and_how_to_make_a_missing_vcan() -> None:
    up = attrs.evolve(SNAPSHOT, link=link("up", received=1234, unknown=2))
    assert " CAN demo    up (thread) · 1,234 frames in · 1 sent · 2 bad" in render_panel(
        up, title="t", network="demo"
    )
    assert "| CAN up (thread) |" in render_line(up)
    down = attrs.evolve(SNAPSHOT, link=link("down", "vcan0: no such network interface"))
    text = "\n".join(render_panel(down, title="t", network="demo"))
    assert (
        "DOWN: vcan0: no such network interface (make it: sudo ip link add dev vcan0 type vcan && "
        "sudo ip link set up vcan0)" in text
    )
    assert "| CAN DOWN: vcan0: no such network interface" in render_line(down)
