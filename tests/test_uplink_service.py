"""The uplink service end to end: bus -> campaigns -> crash-safe outbox -> a transport: files, a memory
link the test drives (outages, held acknowledgements, restarts), or a real MQTT broker (only where the test
is about MQTT).

These run on the real clock (the outbox works in a worker thread, which an autojump clock would race
past), with short intervals and hard timeouts.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mqtt_broker
import pytest
import structlog
import tmpfs  # tests/ is on sys.path
import trio

from bus import Topic
from services.uplink import (
    Campaign,
    CampaignFilter,
    Keep,
    MemoryTransport,
    MqttConfig,
    Outbox,
    Row,
    Uplink,
    UplinkConfig,
    decode_batch,
    status_topic,
)
from services.uplink._service import _quota_bytes
from vwos import BackoffPolicy, ConfigError, ServiceContext, ServiceSpec, SupervisorPolicy, parse_config
from vwos._cli import main
from vwos.testing import open_harness

COUNTER = Topic("Test.Counter", int)
OTHER = Topic("Test.Other", int)
SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400)
FAST: dict[str, Any] = {"flush_interval": 0.01, "batch_delay": 0.05, "status_period": 0.1}


def samples_in(payloads: Iterable[bytes]) -> dict[str, list[Any]]:
    """Every sample of every distinct batch (duplicates by (stream, seq) dropped, as a receiver does)."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, list[Any]] = {}
    for payload in payloads:
        batch = decode_batch(payload)
        key = (batch.stream, batch.seq)
        if key in seen:
            continue
        seen.add(key)
        for sample in batch.samples:
            out.setdefault(sample.topic, []).append(sample.value)
    return out


def uplink(state: Path, **kwargs: Any) -> ServiceSpec:
    kwargs.setdefault("campaigns", (Campaign("all", ("Test.**", "Vehicle.**")),))
    return ServiceSpec("uplink", Uplink, UplinkConfig(vehicle_id="car-1", **(FAST | kwargs)))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_file_transport_delivers_every_sample_once(tmp_path: Path) -> None:
    out = tmp_path / "batches"
    with trio.fail_after(30):
        async with open_harness(uplink(tmp_path, directory=out), state_dir=tmp_path / "state") as car:
            for i in range(1, 20_001):
                car.publish(COUNTER, i)
                if i % 1000 == 0:
                    await trio.sleep(0.001)
            done = await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 20_000, timeout=20)
    assert done.value.dropped_before_outbox == 0
    got = samples_in(p.read_bytes() for p in sorted(out.iterdir()))
    assert got["Test.Counter"] == list(range(1, 20_001))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_campaign_modes_and_ttl_choose_what_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "batches"
    campaigns = (
        Campaign("changes", ("Test.Counter",), mode="change"),
        Campaign("speed", ("Vehicle.Speed",), mode="period", period=1.0),
    )
    with trio.fail_after(30):
        async with open_harness(uplink(tmp_path, directory=out, campaigns=campaigns)) as car:
            for value in (1, 1, 1, 2, 2, 3):
                car.publish(COUNTER, value)
            for _ in range(50):
                car.publish(SPEED, 50.0)  # within one period: one is kept
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 4, timeout=20)
    got = samples_in(p.read_bytes() for p in out.iterdir())
    assert got == {"Test.Counter": [1, 2, 3], "Vehicle.Speed": [50.0]}


async def test_a_clean_stop_keeps_what_was_collected_and_the_next_run_sends_it(tmp_path: Path) -> None:
    """In-process only: over the socket the samples published just before the stop are still in the
    socket then, never delivered to the service (what it was given is kept: the next tests)."""
    out, state = tmp_path / "batches", tmp_path / "state"
    spec = uplink(tmp_path, directory=out, batch_delay=60.0)  # nothing is sent in the first run
    with trio.fail_after(30):
        async with open_harness(spec, state_dir=state) as car:
            for i in range(1, 501):
                car.publish(COUNTER, i)
        assert not out.exists() or not list(out.iterdir())
        async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 500, timeout=20)
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(range(1, 501))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_clean_stop_keeps_what_no_collector_took_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine the stop may come before a collector ran: what the subscriptions still hold is
    stored too (it was lost: found by the full suite under load)."""
    out, state = tmp_path / "batches", tmp_path / "state"

    async def never_runs(*_: Any) -> None:
        await trio.sleep_forever()

    with trio.fail_after(30):
        with monkeypatch.context() as patch:
            patch.setattr(Uplink, "_collect", never_runs)
            async with open_harness(
                uplink(tmp_path, directory=out, batch_delay=60.0), state_dir=state
            ) as car:
                for i in range(1, 501):
                    car.publish(COUNTER, i)
                await trio.sleep(0.5)  # the collectors would have run by now; these do not
        async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 500, timeout=20)
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(range(1, 501))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_stop_while_a_flush_waits_for_the_outbox_keeps_its_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush took the collected rows and then waited for the outbox's lock; the stop cancelled the wait
    and the rows were gone (found by CI under load). The rows are taken only once the lock is held."""
    out, state = tmp_path / "batches", tmp_path / "state"

    async def holds_the_lock(self: Uplink) -> None:
        async with self._lock:
            await trio.sleep_forever()

    with trio.fail_after(30):
        with monkeypatch.context() as patch:
            patch.setattr(Uplink, "_keep_open", holds_the_lock)
            async with open_harness(
                uplink(tmp_path, directory=out, batch_delay=60.0), state_dir=state
            ) as car:
                for i in range(1, 501):
                    car.publish(COUNTER, i)
                await trio.sleep(0.5)  # the collectors ran and every flush waits for the lock
        async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 500, timeout=20)
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(range(1, 501))


@pytest.mark.parametrize(
    "campaigns",
    [
        (Campaign("all", ("Test.**",)), Campaign("counter", ("Test.Counter",))),
        (Campaign("both", ("Test.Counter", "Test.**")),),
        (Campaign("all", ("Test.**",)), Campaign("changes", ("Test.*",), mode="change")),
    ],
    ids=["two-campaigns", "one-campaign", "every-and-change"],
)
@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_sample_matched_by_overlapping_patterns_is_stored_and_sent_once(
    tmp_path: Path, campaigns: tuple[Campaign, ...]
) -> None:
    out, state = tmp_path / "batches", tmp_path / "state"
    spec = uplink(tmp_path, directory=out, campaigns=campaigns)
    with trio.fail_after(30):
        async with open_harness(spec, state_dir=state) as car:
            for i in range(1, 1001):
                car.publish(COUNTER, i)
                car.publish(OTHER, -i)
            done = await car.expect(
                status_topic("uplink"), lambda s: s.sent_samples >= 2000 and s.stored_samples == 0, timeout=20
            )
    assert (done.value.accepted, done.value.sent_samples) == (2000, 2000)
    got = samples_in(p.read_bytes() for p in out.iterdir())
    assert got == {"Test.Counter": list(range(1, 1001)), "Test.Other": [-i for i in range(1, 1001)]}
    with Outbox(state / "uplink" / "outbox.sqlite", quota_bytes=1 << 30, vehicle_id="car-1") as box:
        stats = box.statistics()
    assert (stats.accepted, stats.stored_samples, stats.formed_samples) == (2000, 0, 0)  # no late copies


async def test_what_is_left_after_a_full_batch_waits_for_a_fuller_one(tmp_path: Path) -> None:
    """A third of a batch's worth stored starts sending at once; once less than that is left, the rest
    waits for a fuller batch, for at most batch_delay (here a minute), instead of going out small.
    In-process only: it needs every sample in one commit, and over the socket they arrive in several."""
    out = tmp_path / "batches"
    n = 16_000  # at 1 ms apart: one full batch of 128 KiB and about a tenth of another
    start = time.time() - n / 1000
    with trio.fail_after(30):
        async with open_harness(uplink(tmp_path, directory=out, batch_delay=60.0)) as car:
            for i in range(1, n + 1):  # all in one commit
                car.publish(COUNTER, i, timestamp=start + i / 1000)
            first = await car.expect(status_topic("uplink"), lambda s: s.sent_batches >= 1, timeout=20)
            await car.expect_none(
                status_topic("uplink"), lambda s: s.sent_batches > 1 or s.stored_samples == 0, within=0.5
            )
    status = first.value
    assert (status.accepted, status.sent_batches) == (n, 1)
    assert 0 < status.stored_samples < n // 4
    assert status.sent_samples + status.stored_samples == n
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(
        range(1, n - status.stored_samples + 1)
    )


def test_malformed_campaign_config_is_refused_at_its_key(tmp_path: Path) -> None:
    text = """
    [services.uplink]
    plugin = "uplink"
    [services.uplink.config]
    vehicle_id = "car-1"
    [[services.uplink.config.campaigns]]
    name = "speed"
    topics = ["Vehicle..Speed"]
    mode = "period"
    """
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), path=tmp_path / "vwos.toml")
    text_of = "\n".join(str(p) for p in info.value.problems)
    assert "services.uplink.config.campaigns[0]" in text_of
    assert "Vehicle..Speed" in text_of


def test_mqtt_transport_needs_its_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transport = 'mqtt' needs"):
        UplinkConfig(vehicle_id="car-1", campaigns=(Campaign("a", ("**",)),), transport="mqtt")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"campaigns": ()}, r"^at least one campaign is needed: \[\[services\.NAME\.config\.campaigns\]\]$"),
        (
            {"campaigns": (Campaign("a", ("X",)), Campaign("a", ("Y",)))},
            r"^campaign names must be unique: \['a', 'a'\]$",
        ),
        ({"vehicle_id": ""}, r"^'' must be 1-128 characters without"),
        (
            {"vehicle_id": "car/1"},
            r"^'car/1' must be 1-128 characters without '/', '\+', '#', spaces or NUL$",
        ),
        ({"vehicle_id": "car 1"}, r"^'car 1' must be"),
        ({"vehicle_id": "c" * 129}, r"must be 1-128 characters"),
    ],
)
def test_the_vehicle_id_and_campaigns_are_checked(changes: dict[str, Any], message: str) -> None:
    table: dict[str, Any] = {"vehicle_id": "car-1", "campaigns": (Campaign("a", ("**",)),), **changes}
    with pytest.raises(ValueError, match=message):
        UplinkConfig(**table)
    assert UplinkConfig(vehicle_id="c" * 128, campaigns=(Campaign("a", ("**",)),)).vehicle_id == "c" * 128


def test_a_batch_larger_than_the_mqtt_message_size_is_refused_at_load_time() -> None:
    campaigns = (Campaign("a", ("**",)),)
    mqtt = MqttConfig(host="broker.example", max_message_size=2048)
    with pytest.raises(
        ValueError,
        match=r"^max_batch_bytes = 131072 is more than mqtt\.max_message_size = 2048: .*"
        r"set max_batch_bytes to at most 2048",
    ):
        UplinkConfig(
            vehicle_id="car-1", campaigns=campaigns, transport="mqtt", max_batch_bytes=131072, mqtt=mqtt
        )
    fits = UplinkConfig(
        vehicle_id="car-1", campaigns=campaigns, transport="mqtt", max_batch_bytes=2048, mqtt=mqtt
    )
    assert fits.mqtt is not None
    assert fits.max_batch_bytes == fits.mqtt.max_message_size == 2048  # equal is fine
    unused = UplinkConfig(vehicle_id="car-1", campaigns=campaigns, transport="file", mqtt=mqtt)
    assert unused.max_batch_bytes == 131072  # the file transport has no message size


def test_a_batch_limit_below_the_outbox_minimum_is_refused_at_load_time() -> None:
    campaigns = (Campaign("a", ("**",)),)
    with pytest.raises(ValueError, match=r"^must be at least 1024 bytes, not 1023$"):
        UplinkConfig(vehicle_id="car-1", campaigns=campaigns, max_batch_bytes=1023)
    assert UplinkConfig(vehicle_id="car-1", campaigns=campaigns, max_batch_bytes=1024).max_batch_bytes == 1024


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            "max_batch_bytes = 100",
            "services.uplink.config.max_batch_bytes: must be at least 1024 bytes, not 100",
        ),
        (
            'transport = "mqtt"\n[services.uplink.config.mqtt]\nhost = "broker.example"\n'
            "max_message_size = 2048",
            "services.uplink.config: max_batch_bytes = 131072 is more than mqtt.max_message_size = 2048",
        ),
    ],
    ids=["below-minimum", "over-message-size"],
)
def test_batch_size_problems_are_refused_at_their_key(tmp_path: Path, settings: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.format(settings=settings), path=tmp_path / "vwos.toml")
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problem in problems[0]


CONFIG = """
[services.uplink]
plugin = "uplink"
[services.uplink.config]
vehicle_id = "car-1"
{settings}
[[services.uplink.config.campaigns]]
name = "all"
topics = ["**"]
"""


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ("quota_mb = inf", ".quota_mb: expected a number of MB from 0.25 to 1048576, not inf"),
        ("quota_mb = nan", ".quota_mb: expected a number of MB from 0.25 to 1048576, not nan"),
        ("quota_mb = 1e-9", ".quota_mb: expected a number of MB from 0.25 to 1048576, not 1e-09"),
        ("quota_mb = -1", ".quota_mb: expected a number of MB from 0.25 to 1048576, not -1"),
        ("quota_mb = 0", ".quota_mb: expected a number of MB from 0.25 to 1048576, not 0"),
        ("quota_mb = 1e300", ".quota_mb: expected a number of MB from 0.25 to 1048576, not 1e+300"),
        (
            "quota_mb = 0.5\nmax_batch_bytes = 1048576",
            ".quota_mb: quota_mb = 0.5 is less than four batches of max_batch_bytes = 1,048,576 (4 MB), the "
            "least the outbox holds",
        ),
        (
            "max_batch_bytes = 67108864",  # the largest batch, and the default quota of 64 MB
            # quota_mb left at its default: the problem is the table's, and says which key to change
            ": quota_mb = 64 is less than four batches of max_batch_bytes = 67,108,864 (256 MB)",
        ),
        (
            "max_batch_bytes = 9223372036854775807",
            ".max_batch_bytes: must be at most 67108864 bytes (what a reader decodes)",
        ),
        ("queue_size = 0", ".queue_size: expected a number of samples from 1 to 10,000,000, not 0"),
        ("queue_size = -1", ".queue_size: expected a number of samples from 1 to 10,000,000, not -1"),
        ("queue_size = 1_000_000_000_000", ".queue_size: expected a number of samples from 1 to 10,000,000"),
        ("flush_interval = nan", ".flush_interval: expected a number of seconds > 0 and at most 1000000000"),
        ("batch_delay = inf", ".batch_delay: expected a number of seconds > 0 and at most 1000000000"),
        ("status_period = 0", ".status_period: expected a number of seconds > 0 and at most 1000000000"),
        (
            'transport = "mqtt"\n[services.uplink.config.mqtt]\nhost = "broker.example"\n'
            "connect_timeout = 1e12",
            ".mqtt.connect_timeout: expected a number of seconds > 0 and at most 1000000000, got 1000000000",
        ),
        (
            'transport = "mqtt"\n[services.uplink.config.mqtt]\nhost = "broker.example"\nack_timeout = inf',
            ".mqtt.ack_timeout: expected a number of seconds > 0 and at most 1000000000, got inf",
        ),
    ],
)
def test_absurd_uplink_settings_are_refused_by_vwos_check(
    tmp_path: Path, settings: str, problem: str
) -> None:
    """Each of these passed `vwos check` and then failed when the uplink started (an OverflowError, the
    outbox refusing its quota, a socket timeout out of time_t's range) or never did its job."""
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.format(settings=settings), path=tmp_path / "vwos.toml")
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert f"vwos.toml: services.uplink.config{problem}" in problems[0]


@pytest.mark.parametrize(
    "settings",
    [
        "quota_mb = 0.25\nmax_batch_bytes = 65536",
        "quota_mb = 1048576",
        "quota_mb = 4\nmax_batch_bytes = 1048576",
        "queue_size = 1",
    ],
)
def test_uplink_settings_at_their_bounds_pass_and_the_outbox_opens_with_them(
    tmp_path: Path, settings: str
) -> None:
    config = parse_config(CONFIG.format(settings=settings), path=tmp_path / "vwos.toml")
    cfg = config.services[0].config
    assert isinstance(cfg, UplinkConfig)
    Outbox(  # what the service opens with these settings: no ValueError at start
        tmp_path / "o.sqlite",
        quota_bytes=_quota_bytes(cfg.quota_mb),
        vehicle_id="V",
        max_batch_bytes=cfg.max_batch_bytes,
    ).close()


def test_vwos_check_refuses_an_infinite_quota_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vwos.toml"
    path.write_text(CONFIG.format(settings="quota_mb = inf"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path.name}: services.uplink.config.quota_mb: expected a number of MB from 0.25" in err
    assert "Traceback" not in err


# -- storage faults ------------------------------------------------------------------------------------


QUICK_RECONNECT = BackoffPolicy(initial=0.05, multiplier=2.0, max_delay=0.2, jitter=0.0)


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_full_disk_never_stops_the_uplink_and_it_drains_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    """The attacker's case: the state dir on a full disk, quota_mb = 0.5. The uplink keeps running, evicts
    the oldest, counts and reports every loss on its status topic, drains once there is space and a link,
    and releases the outbox when it stops: the next incarnation opens it at once."""
    out, state = tmp_path / "batches", small_disk / "state"
    out.write_text("not a directory yet")  # no link at first: everything stays in the outbox
    spec = uplink(tmp_path, directory=out, quota_mb=0.5, reconnect=QUICK_RECONNECT)
    n = 150_000
    with trio.fail_after(60):
        async with open_harness(spec, state_dir=state) as car:
            for i in range(1, n + 1):
                car.publish(COUNTER, i)
                if i % 1000 == 0:
                    await trio.sleep(0.002)
            full = await car.expect(
                status_topic("uplink"), lambda s: s.storage == "disk_full" and s.dropped_quota > 0, timeout=20
            )
            assert full.value.connected is False
            tmpfs.resize(small_disk, 16 << 20)  # space returns
            out.unlink()  # and a link
            for i in range(n + 1, n + 5001):
                car.publish(COUNTER, i)
            done = await car.expect(
                status_topic("uplink"),
                # Every sample handled (stored or counted as dropped) and sent: stored_bytes counts the
                # formed batches too, so it is 0 once the last one is acknowledged, not when it is formed.
                lambda s: (
                    s.storage == "ok"
                    and s.accepted + s.dropped_storage + s.dropped_before_outbox == n + 5000
                    and s.stored_bytes == 0
                    and s.connected
                ),
                timeout=30,
            )
            assert car.status()["uplink"].restarts == 0
        # Stopped: the outbox was closed; the next incarnation opens it at once and finds nothing lost.
        async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
            again = await car.expect(status_topic("uplink"), lambda s: s.storage == "ok", timeout=10)
            assert again.value.storage_error == ""
    status = done.value
    got = samples_in(p.read_bytes() for p in sorted(out.iterdir()))["Test.Counter"]
    assert got == sorted(got)
    assert got[-5000:] == list(range(n + 1, n + 5001))  # the newest all arrived
    lost = status.dropped_quota + status.dropped_storage + status.dropped_before_outbox
    assert len(got) + lost == n + 5000  # and every other sample is accounted for


@pytest.mark.usefixtures("vwos_bus_client")
async def test_restarted_on_a_full_disk_with_samples_pending_the_next_incarnation_opens_at_once(
    tmp_path: Path, small_disk: Path
) -> None:
    """The attacker's sequence: samples collected and not yet committed, the disk full, the uplink
    restarted. Before: the flush in run's finally raised "database or disk is full", the outbox was never
    closed, the next incarnation found it "in use by another process" and the supervisor gave up. Now the
    flush counts what it cannot store, the outbox is closed, the next incarnation opens it and runs on the
    full disk, and stores and sends again once there is room."""
    out, state = tmp_path / "batches", small_disk / "state"
    spec = uplink(tmp_path, directory=out, quota_mb=0.5, flush_interval=0.2)
    with trio.fail_after(60):
        async with open_harness(spec, state_dir=state) as car:
            for i in range(1, 2001):
                car.publish(COUNTER, i)
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 2000, timeout=20)
            filler = tmpfs.fill(small_disk)
            for i in range(2001, 4001):
                car.publish(COUNTER, i)
            await trio.sleep(0.05)  # collected, not yet committed (the next flush is up to 0.2 s away)
            first = car.status()["uplink"].incarnation
            car.supervisor.restart_service("uplink")
            await car.expect(  # a status sample seen once the new incarnation runs
                status_topic("uplink"),
                lambda _: (
                    (row := car.status()["uplink"]).incarnation > first and row.state.value == "running"
                ),
                timeout=20,
            )
            await trio.sleep(0.3)  # three status periods of the new incarnation
            again = car.samples(status_topic("uplink"))[-1].value
            assert again.storage == "disk_full", again  # its outbox is open (else: "error", why)
            assert again.storage_error == ""
            row = car.status()["uplink"]
            assert (row.state.value, row.incarnation, row.last_error) == ("running", first + 1, None)
            filler.unlink()  # room again
            for i in range(4001, 5001):
                car.publish(COUNTER, i)
            await car.expect(
                status_topic("uplink"), lambda s: s.sent_samples >= 3000 and s.stored_bytes == 0, timeout=20
            )
    got = samples_in(p.read_bytes() for p in sorted(out.iterdir()))["Test.Counter"]
    assert got[:2000] == list(range(1, 2001))
    assert got[-1000:] == list(range(4001, 5001))  # the newest, after the disk had room again


class _FakeDisk:
    """``os.statvfs`` for the directory ``under``: a disk of ``size`` bytes holding only the outbox's files
    (the real one elsewhere). A full disk without mounting one: `size` can shrink and grow as a test goes."""

    def __init__(self, under: Path, size: int) -> None:
        self.under, self.size = under, size
        self.real = os.statvfs

    def __call__(self, path: Any) -> Any:
        if not Path(path).is_relative_to(self.under):
            return self.real(path)
        used = sum(p.stat().st_size for p in self.under.rglob("outbox.sqlite*") if p.is_file())
        free = max(0, self.size - used)
        return types.SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_full_disk_under_the_real_supervisor_without_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same fault injected: the disk's free space as the outbox sees it (os.statvfs) shrinks to
    little, then to nothing, then grows back. Under the real Supervisor (open_harness; intensity 0: a
    single crash would end the test) the uplink never fails, reports each state, and drains."""
    out, state = tmp_path / "batches", tmp_path / "state"
    out.write_text("no link yet")
    disk = _FakeDisk(state, 400_000)
    monkeypatch.setattr(os, "statvfs", disk)
    spec = uplink(tmp_path, directory=out, reconnect=QUICK_RECONNECT)  # quota_mb 64: the disk is the limit
    offered = 0

    async def offer(n: int) -> None:
        nonlocal offered
        for _ in range(n // 1000):
            for i in range(offered + 1, offered + 1001):
                car.publish(COUNTER, i)
            offered += 1000
            await trio.sleep(0.02)

    with trio.fail_after(60):
        async with open_harness(spec, state_dir=state) as car:
            await offer(60_000)
            little = await car.expect(
                status_topic("uplink"), lambda s: s.storage == "disk_full" and s.dropped_quota > 0
            )
            assert little.value.dropped_storage == 0  # the oldest made room for the newest
            assert 0 < little.value.disk_bytes <= little.value.disk_budget <= 400_000
            # Occupancy near 1: the oldest go one chunk at a time. A flush on a loaded machine may carry
            # many samples and evict more at once, so the claim is that the disk fills again, not that
            # every snapshot is near full.
            near_full = False
            for _ in range(40):
                await offer(1000)
                near_full = any(
                    s.value.storage == "disk_full" and s.value.disk_bytes > 0.8 * s.value.disk_budget
                    for s in car.samples(status_topic("uplink"))
                    if s.available
                )
                if near_full:
                    break
            assert near_full, [s.value.disk_bytes for s in car.samples(status_topic("uplink"))][-10:]
            disk.size = 0  # someone took the rest: not even the WAL of a write fits
            await offer(5_000)
            none = await car.expect(
                status_topic("uplink"), lambda s: s.storage == "disk_full" and s.dropped_storage > 0
            )
            assert "could not be stored" in none.value.storage_error
            disk.size = 1 << 40  # space returns
            out.unlink()  # and a link
            await offer(5_000)
            done = await car.expect(
                status_topic("uplink"),
                lambda s: (
                    s.storage == "ok"
                    and s.accepted + s.dropped_storage + s.dropped_before_outbox == offered
                    and s.stored_bytes == 0
                ),
                timeout=30,
            )
            assert car.status()["uplink"].restarts == 0
    status = done.value
    got = samples_in(p.read_bytes() for p in sorted(out.iterdir()))["Test.Counter"]  # in seq order
    assert got == sorted(got)
    assert got[-5000:] == list(range(offered - 4999, offered + 1))  # everything after space returned
    assert len(got) + status.dropped_quota + status.dropped_storage + status.dropped_before_outbox == offered


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_failing_flush_at_stop_still_releases_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[int] = []

    async def broken_flush(self: Uplink) -> None:
        if self._pending:
            raised.append(len(self._pending))
            raise RuntimeError("the flush at stop failed")

    monkeypatch.setattr(Uplink, "_flush", broken_flush)
    state = tmp_path / "state"
    spec = uplink(tmp_path, directory=tmp_path / "batches", flush_interval=10.0)  # no flush before the stop
    with trio.fail_after(30):
        async with open_harness(spec, state_dir=state) as car:
            car.publish(COUNTER, 1)
            await trio.sleep(0.1)
    assert raised == [1]  # the flush in run's finally raised
    started = time.perf_counter()
    with Outbox(state / "uplink" / "outbox.sqlite", quota_bytes=1 << 30, vehicle_id="car-1") as box:
        assert time.perf_counter() - started < 2  # at once, not "in use by another process"
        assert box.statistics().stored_samples == 0


@pytest.mark.usefixtures("vwos_bus_client")
async def test_an_outbox_that_cannot_be_opened_is_reported_and_opened_once_it_can(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / "uplink" / "outbox.sqlite"
    holder = Outbox(path, quota_bytes=1 << 30, vehicle_id="car-1")  # someone else holds it
    out = tmp_path / "batches"
    try:
        with trio.fail_after(30):
            async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
                for i in range(1, 101):
                    car.publish(COUNTER, i)
                down = await car.expect(
                    status_topic("uplink"), lambda s: s.storage == "error" and s.dropped_storage == 100
                )
                assert "in use by another process" in down.value.storage_error
                holder.close()
                await car.expect(status_topic("uplink"), lambda s: s.storage == "ok", timeout=10)
                for i in range(101, 201):
                    car.publish(COUNTER, i)
                await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 100, timeout=10)
    finally:
        holder.close()
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(range(101, 201))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_samples_lost_with_a_replaced_outbox_file_are_on_the_status_topic(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / "uplink" / "outbox.sqlite"
    keep = CampaignFilter((Campaign("all", ("Test.**",)),)).keep
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="car-1") as box:
        k = keep("Test.Counter", 0, 0.0)
        assert k is not None
        box.accept([("Test.Counter", i, 1.7e9 + i, k) for i in range(500)])
    path.unlink()  # the database is gone; its high-water mark beside it remembers 500 samples
    with trio.fail_after(30):
        async with open_harness(uplink(tmp_path, directory=tmp_path / "out"), state_dir=state) as car:
            status = await car.expect(status_topic("uplink"), lambda s: s.dropped_damaged > 0)
    assert status.value.dropped_damaged == 500


# -- the link: a memory transport the test drives (no broker) ---------------------------------------------


def linked(link: MemoryTransport, state: Path, **kwargs: Any) -> ServiceSpec:
    """The uplink publishing through ``link``."""
    spec = uplink(state, **kwargs)
    return ServiceSpec(spec.name, Uplink.with_transport(link), spec.config, stop_timeout=10)


@pytest.mark.usefixtures("vwos_bus_client")
async def test_link_down_mid_stream_then_up_again_loses_nothing(tmp_path: Path) -> None:
    """The far side goes away mid-stream -- with a batch waiting for its acknowledgement -- and comes back:
    every sample arrives (the batch in flight is sent again), and the uplink never crashes (intensity 0)."""
    link = MemoryTransport()
    spec = linked(link, tmp_path, reconnect=QUICK_RECONNECT)
    with trio.fail_after(60):
        async with open_harness(spec, policy=SupervisorPolicy(intensity=0, period=1.0)) as car:
            for i in range(1, 30_001):
                car.publish(COUNTER, i)
                if i % 500 == 0:
                    await trio.sleep(0.005)
                if i == 10_000:
                    link.hold_acks()
                    await link.wait_waiting(1)  # a batch in flight
                    link.go_down("the broker went away")
                    link.release()
                if i == 20_000:
                    await car.expect(status_topic("uplink"), lambda s: not s.connected and bool(s.last_error))
                    await trio.sleep(0.5)
                    link.come_up()
            status = await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 30_000, timeout=30)
        batches = status.value.sent_batches
        received = await link.wait_delivered(batches)
    assert samples_in(received)["Test.Counter"] == list(range(1, 30_001))
    assert status.value.transport == "memory"
    assert link.failures >= 1
    assert link.connects >= 2


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_batch_leaves_the_outbox_only_once_acknowledged(tmp_path: Path) -> None:
    """One batch at a time: while its acknowledgement is held back nothing else is published and the
    outbox holds every sample; once released, all of them are sent."""
    link = MemoryTransport()
    link.hold_acks()
    state = tmp_path / "state"
    with trio.fail_after(30):
        async with open_harness(linked(link, tmp_path), state_dir=state) as car:
            for i in range(1, 20_001):
                car.publish(COUNTER, i)
            await link.wait_waiting(1)
            await car.expect(status_topic("uplink"), lambda s: s.accepted == 20_000)
            await trio.sleep(0.3)  # several batch_delays: still the one batch in flight, nothing sent
            held = car.samples(status_topic("uplink"))[-1].value
            assert link.waiting == 1
            assert link.delivered == []
            assert (held.sent_batches, held.sent_samples, held.stored_samples) == (0, 0, 20_000)
            link.release()
            done = await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 20_000, timeout=20)
    assert done.value.sent_batches == len(link.delivered) >= 2
    seqs = [seq for seq, _ in link.delivered]
    assert seqs == sorted(set(seqs))  # in order, none sent twice
    assert samples_in(link.payloads)["Test.Counter"] == list(range(1, 20_001))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_restart_sends_again_the_batch_whose_acknowledgement_was_lost(tmp_path: Path) -> None:
    """The service restarted while a batch waits for its acknowledgement: the next incarnation connects to
    the same far side and sends that batch again first, with the same seq; nothing is lost or doubled."""
    link = MemoryTransport()
    link.hold_acks()
    state = tmp_path / "state"
    with trio.fail_after(30):
        async with open_harness(linked(link, tmp_path), state_dir=state) as car:
            for i in range(1, 1001):
                car.publish(COUNTER, i)
            await link.wait_waiting(1)
            first = car.status()["uplink"].incarnation
            car.supervisor.restart_service("uplink")
            await car.expect(
                status_topic("uplink"),
                lambda _: car.status()["uplink"].incarnation > first and link.waiting == 1,
                timeout=20,
            )
            assert link.delivered == []  # the first try was cancelled with its incarnation
            assert link.connects == 2
            link.release()
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 1000, timeout=20)
    assert [seq for seq, _ in link.delivered] == [1]
    assert samples_in(link.payloads)["Test.Counter"] == list(range(1, 1001))


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_link_that_refuses_to_connect_is_on_the_status_topic_and_loses_nothing(
    tmp_path: Path,
) -> None:
    link = MemoryTransport()
    link.go_down("connection refused by the broker: not authorized")
    state = tmp_path / "state"
    spec = linked(link, tmp_path, reconnect=QUICK_RECONNECT)
    with trio.fail_after(30):
        async with open_harness(spec, state_dir=state) as car:
            for i in range(1, 1001):
                car.publish(COUNTER, i)
            refused = await car.expect(
                status_topic("uplink"), lambda s: bool(s.last_error) and s.accepted == 1000, timeout=20
            )
            assert refused.value.last_error == "connection refused by the broker: not authorized"
            assert (refused.value.connected, refused.value.sent_samples) == (False, 0)
            assert refused.value.stored_samples == 1000  # all kept for when the link takes us
            link.come_up()
            done = await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 1000, timeout=20)
    assert done.value.connected
    assert samples_in(link.payloads)["Test.Counter"] == list(range(1, 1001))


PRODUCER = """
import attrs, trio
from bus import Topic
from vwos import Service

COUNTER = Topic("Test.Counter", int)

@attrs.frozen
class CounterConfig:
    rate: float = 20000.0
    count: int = 1000000

class Counter(Service[CounterConfig]):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        publish = ctx.bus.publisher(COUNTER).publish_nowait
        task_status.started()
        burst = max(1, int(self.config.rate / 100))
        i = 0
        while i < self.config.count:
            for _ in range(burst):
                i += 1
                publish(i)
            await trio.sleep(0.01)
"""


def _config(tmp_path: Path, *, producer: bool) -> Path:
    config = tmp_path / ("run.toml" if producer else "drain.toml")
    config.write_text(
        textwrap.dedent(
            f"""
            [supervisor]
            python_path = ["."]
            state_dir = "state"
            [services.uplink]
            plugin = "uplink"
            [services.producer]
            plugin = "producer:Counter"
            enabled = {str(producer).lower()}
            after = ["uplink"]
            [services.uplink.config]
            vehicle_id = "car-1"
            transport = "file"
            directory = "batches"
            flush_interval = 0.02
            batch_delay = 0.05
            [[services.uplink.config.campaigns]]
            name = "all"
            topics = ["Test.**"]
            """
        )
    )
    return config


def _batch_files(directory: Path, count: int, timeout: float) -> list[Path]:
    """The batch files in ``directory`` (temporary ones left out), once there are at least ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(directory.glob("*.cbor")) if directory.is_dir() else []
        if len(files) >= count:
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(files)} batch files in {directory} after {timeout} s, not {count}")
        time.sleep(0.05)


def test_sigkill_of_the_supervisor_mid_stream_loses_no_accepted_sample(tmp_path: Path) -> None:
    (tmp_path / "producer.py").write_text(textwrap.dedent(PRODUCER))
    out = tmp_path / "batches"
    run = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(_config(tmp_path, producer=True))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _batch_files(out, 5, timeout=30)  # mid-stream: batches are flowing
        time.sleep(0.3)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    assert run.returncode == -signal.SIGKILL
    drain = subprocess.run(
        [sys.executable, "-m", "vwos", "run", str(_config(tmp_path, producer=False)), "--duration", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert drain.returncode == 0, drain.stderr
    with Outbox(
        tmp_path / "state" / "uplink" / "outbox.sqlite", quota_bytes=1 << 30, vehicle_id="car-1"
    ) as box:
        stats = box.statistics()
    assert stats.stored_samples == 0
    assert stats.formed_batches == 0
    # A batch sent again overwrites its file (same name, same bytes): one file per acknowledged batch.
    files = _batch_files(out, stats.acked_batches, timeout=20)
    assert len(files) == stats.acked_batches
    counters = samples_in(p.read_bytes() for p in files)["Test.Counter"]
    # Every accepted sample arrived exactly once (after dropping re-sent batches), in order: the accepted
    # samples are a prefix of what was published, since collection and commits keep bus order.
    assert stats.accepted > 5_000
    assert counters == list(range(1, stats.accepted + 1))


# -- a real broker -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("vwos_bus_client")
async def test_wrong_password_is_a_clear_error_and_loses_nothing(
    tmp_path: Path, make_mosquitto: mqtt_broker.BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_mosquitto(users={"car-1": "right"})
    monkeypatch.setenv("VWOS_TEST_MQTT_PASSWORD", "wrong")
    mqtt = MqttConfig(
        host=broker.host, port=broker.port, username="car-1", password_env="VWOS_TEST_MQTT_PASSWORD"
    )
    state = tmp_path / "state"
    with trio.fail_after(30):
        async with open_harness(uplink(tmp_path, transport="mqtt", mqtt=mqtt), state_dir=state) as car:
            for i in range(1, 1001):
                car.publish(COUNTER, i)
            refused = await car.expect(
                status_topic("uplink"), lambda s: bool(s.last_error) and s.accepted == 1000, timeout=20
            )
    assert "not authorized" in refused.value.last_error or "bad user name" in refused.value.last_error
    assert "wrong" not in refused.value.last_error  # the password is never shown
    assert refused.value.sent_samples == 0
    with Outbox(state / "uplink" / "outbox.sqlite", quota_bytes=1 << 30, vehicle_id="car-1") as box:
        stats = box.statistics()
    assert stats.stored_samples + stats.formed_samples == 1000  # all kept for when the password is fixed


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_damaged_chunk_found_at_start_is_logged_and_on_the_status_topic(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / "uplink" / "outbox.sqlite"
    keep = CampaignFilter((Campaign("all", ("Test.**",)),)).keep("Test.Counter", 0, 0.0)
    assert keep is not None
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="car-1") as box:
        for start in range(0, 900, 300):
            box.accept([("Test.Counter", i, 1.7e9 + i, keep) for i in range(start, start + 300)])
    db = sqlite3.connect(path)  # a flipped byte in the first chunk, its CRC as it was
    try:
        (data,) = db.execute("SELECT data FROM chunks ORDER BY id LIMIT 1").fetchone()
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x55
        db.execute("UPDATE chunks SET data = ? WHERE id = (SELECT min(id) FROM chunks)", (bytes(damaged),))
        db.commit()
    finally:
        db.close()
    out = tmp_path / "out"
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with open_harness(uplink(tmp_path, directory=out), state_dir=state) as car:
            status = await car.expect(
                status_topic("uplink"), lambda s: s.dropped_damaged > 0 and s.stored_bytes == 0
            )
    assert status.value.dropped_damaged == 300
    assert status.value.sent_samples == 600
    warnings = [e for e in logs if e["event"] == "outbox damage found at open: samples were lost"]
    assert len(warnings) == 1, logs
    assert warnings[0]["corrupt_samples"] == 300
    assert "300 samples in 1 chunk were damaged" in warnings[0]["detail"]
    assert samples_in(p.read_bytes() for p in out.iterdir())["Test.Counter"] == list(range(300, 900))


# -- the status topic while a worker thread writes ------------------------------------------------------


@pytest.mark.usefixtures("vwos_bus_client")
async def test_status_is_consistent_while_a_worker_thread_accepts_new_counter_keys(tmp_path: Path) -> None:
    """`Uplink.status` runs in trio's thread while the outbox works in a worker thread. Here the worker
    accepts, evicts (a small quota: new per-campaign counter keys at every call), forms and acknowledges
    as fast as it can while the trio thread reads and publishes the status without a pause: every status
    adds up and nothing raises ("dictionary changed size during iteration" would end the service)."""
    instances: list[Uplink] = []

    class Probe(Uplink):
        async def run(
            self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            instances.append(self)
            await super().run(ctx, task_status=task_status)

    link = MemoryTransport()
    link.hold_acks()
    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(Campaign("all", ("Test.**",)),),
        quota_mb=0.25,
        max_batch_bytes=65536,
        flush_interval=0.01,
        batch_delay=0.05,
        status_period=0.01,
    )
    spec = ServiceSpec("uplink", Probe.with_transport(link), config)
    problems: list[str] = []
    with trio.fail_after(180):  # a hang guard: under coverage on a busy machine the hammer took > 60 s
        async with open_harness(spec, state_dir=tmp_path / "state"):
            (probe,) = instances
            outbox = probe.outbox
            assert outbox is not None

            # The hammer stops by a deadline well inside the hang guard: the service must outlive this
            # thread, which uses the service's outbox (closing it under the thread would crash SQLite).
            deadline = time.monotonic() + 60.0

            def hammer() -> None:
                rng = random.Random(13)
                for k in range(120):
                    if time.monotonic() > deadline:
                        break
                    keep = Keep((f"c{k}",), k % 7)  # a new campaign: new counter keys once it is evicted
                    rows: list[Row] = [("Test.Other", rng.random(), 1.7e9 + k, keep) for _ in range(5000)]
                    probe._accept(outbox, rows)
                    if k % 5 == 0:
                        outbox.next_batch(time.time())  # formed, never acknowledged (the link is held)

            reads = 0
            async with probe._lock:  # as the service's own outbox calls: one thread at a time uses it
                worker_done = trio.Event()

                async def work() -> None:
                    try:
                        await trio.to_thread.run_sync(hammer)
                    finally:
                        worker_done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(work)
                    while not worker_done.is_set():
                        try:
                            s = probe.status()
                            probe._publish_status()
                        except Exception as exc:  # whatever it is, the test reports it
                            problems.append(repr(exc))
                            break
                        held = s.stored_samples + s.sent_samples + s.dropped_quota + s.dropped_ttl
                        if held != s.accepted:
                            problems.append(f"accepted {s.accepted}, accounted {held}")
                        reads += 1
                        await trio.lowlevel.checkpoint()
            final = probe.status()
    assert not problems, problems[:5]
    assert reads > 100  # the reads really overlapped the writes
    assert final.accepted > 0
    assert final.dropped_quota > 0  # the quota evicted: counter keys were added while status was read
