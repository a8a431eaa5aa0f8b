"""Condition campaigns (FleetWise's condition-based collection): a trigger over signals releases a
pre-trigger ring and opens a post-trigger window. The filter alone, then the service end to end."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import RemoteError, Topic
from services.uplink import (
    Campaign,
    CampaignFilter,
    StateTemplate,
    StateTracker,
    UplinkConfig,
    decode_batch,
    fetch_state_method,
    status_topic,
)
from vwos import ConfigError, ServiceSpec, parse_config
from vwos.testing import open_harness

SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400)
ABS = Topic("Vehicle.ADAS.ABS.IsEngaged", bool)
ACCEL = Topic("Vehicle.Acceleration.Longitudinal", float)


def braking(**kwargs: Any) -> Campaign:
    kwargs.setdefault("pre_trigger", 2.0)
    kwargs.setdefault("post_trigger", 1.0)
    return Campaign(
        "hard-braking",
        ("Vehicle.Acceleration.*",),
        condition="Vehicle.Speed > 130 and Vehicle.ADAS.ABS.IsEngaged",
        **kwargs,
    )


def feed(filt: CampaignFilter, samples: list[tuple[float, str, Any]]) -> list[tuple[str, Any, float]]:
    """Every row the filter stores, in store order: (topic, value, bus time = timestamp)."""
    stored: list[tuple[str, Any, float]] = []
    for t, topic, value in samples:
        keep = filt.keep(topic, value, t, None, t)
        released = filt.take_released()
        stored.extend((row[0], row[1], row[2]) for row in released)
        if keep is not None:
            stored.append((topic, value, t))
    return stored


def test_a_firing_releases_the_pre_trigger_window_and_keeps_the_post_trigger_window() -> None:
    filt = CampaignFilter([braking()])
    assert filt.patterns == ("Vehicle.Acceleration.*", "Vehicle.ADAS.ABS.IsEngaged", "Vehicle.Speed")
    accel = [(t / 2, ACCEL.name, -t / 2) for t in range(21)]  # every 0.5 s for 10 s
    events = [(4.99, SPEED.name, 140.0), (5.0, ABS.name, True), (7.0, ABS.name, False)]
    stored = feed(filt, sorted(accel + events))
    times = [t for topic, _, t in stored]
    assert all(topic == ACCEL.name for topic, _, _ in stored)  # the condition's topics are not collected
    assert times == [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]  # 2 s before the firing at 5.0, 1 s after
    assert filt.fired("hard-braking") == 1
    assert filt.window_dropped == 0


def test_a_condition_that_stays_true_fires_once_and_a_new_edge_after_min_interval_again() -> None:
    filt = CampaignFilter([braking(min_interval=10.0, pre_trigger=0.0, post_trigger=0.0)])
    samples = [(0.0, SPEED.name, 140.0)]
    for t in range(1, 30):
        samples.append((float(t), ABS.name, t not in (3, 4, 15)))  # edges at 1, 5 (too soon) and 16
        samples.append((float(t), ACCEL.name, float(t)))
    stored = feed(filt, samples)
    assert filt.fired("hard-braking") == 2
    assert [t for _, _, t in stored] == [1.0, 16.0]  # post_trigger 0: the sample at the firing time


def test_a_full_ring_drops_its_oldest_and_counts() -> None:
    filt = CampaignFilter([braking(window_samples=3, pre_trigger=100.0, post_trigger=0.0)])
    samples = [(float(t), ACCEL.name, float(t)) for t in range(10)]
    samples += [(10.0, SPEED.name, 150.0), (10.0, ABS.name, True)]
    stored = feed(filt, samples)
    assert [v for _, v, _ in stored] == [7.0, 8.0, 9.0]
    assert filt.window_dropped == 7


def test_a_not_available_signal_is_unknown_and_does_not_fire() -> None:
    from bus import NotAvailable

    filt = CampaignFilter([braking()])
    feed(filt, [(0.0, SPEED.name, NotAvailable("sna")), (0.1, ABS.name, True)])
    assert filt.fired("hard-braking") == 0


def test_a_campaign_with_a_condition_and_one_without_share_samples_without_losing_any() -> None:
    every = Campaign("all-accel", ("Vehicle.Acceleration.*",))
    filt = CampaignFilter([every, braking(pre_trigger=1.0, post_trigger=0.0)])
    stored = feed(
        filt,
        [(0.0, ACCEL.name, 1.0), (0.5, ACCEL.name, 2.0), (1.0, SPEED.name, 200.0), (1.0, ABS.name, True)],
    )
    # Both samples went out live for "all-accel", and once more, released, for "hard-braking".
    assert [(v, t) for _, v, t in stored] == [(1.0, 0.0), (2.0, 0.5), (1.0, 0.0), (2.0, 0.5)]


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"condition": "Vehicle.Speed >"}, "at column 16"),
        ({"condition": "__import__('os')"}, "the only functions"),
        ({"condition": 3}, "expected"),
        ({"pre_trigger": 5.0}, "only apply to a campaign with a condition"),
        ({"condition": "V.A", "pre_trigger": -1.0}, "pre_trigger must be seconds"),
        ({"condition": "V.A", "post_trigger": math.inf}, "post_trigger must be seconds"),
        ({"condition": "V.A", "trigger_mode": "often"}, "expected one of 'rising_edge', 'always'"),
        ({"condition": "V.A", "window_samples": 0}, "window_samples must be"),
    ],
)
def test_bad_condition_campaigns_are_refused_at_their_key(
    tmp_path: Path, table: dict[str, Any], words: str
) -> None:
    lines = [
        f"{key} = {json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else 'inf'}"
        for key, value in table.items()
    ]
    text = "\n".join(
        [
            "[services.uplink]",
            'plugin = "uplink"',
            "[services.uplink.config]",
            'vehicle_id = "car-1"',
            "[[services.uplink.config.campaigns]]",
            'name = "c"',
            'topics = ["A.**"]',
            *lines,
        ]
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=tmp_path / "vwos.toml")
    problems = "\n".join(str(p) for p in caught.value.problems)
    assert words in problems
    assert "services.uplink.config.campaigns[0]" in problems


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 0.5), st.sampled_from(["speed", "abs", "accel"]), st.booleans()), max_size=80
    ),
    st.floats(0, 3),
    st.floats(0, 3),
    st.floats(0, 2),
    st.integers(1, 20),
)
def test_every_kept_sample_lies_in_a_window_around_a_firing(
    steps: list[tuple[float, str, bool]], pre: float, post: float, interval: float, cap: int
) -> None:
    filt = CampaignFilter(
        [braking(pre_trigger=pre, post_trigger=post, min_interval=interval, window_samples=cap)]
    )
    now, samples = 0.0, []
    for dt, which, flag in steps:
        now += dt
        if which == "speed":
            samples.append((now, SPEED.name, 140.0 if flag else 100.0))
        elif which == "abs":
            samples.append((now, ABS.name, flag))
        else:
            samples.append((now, ACCEL.name, float(len(samples))))  # the value tells samples apart
    firings: list[float] = []
    stored: list[float] = []
    values: list[float] = []
    for t, topic, value in samples:
        before = filt.fired("hard-braking")
        keep = filt.keep(topic, value, t, None, t)
        if filt.fired("hard-braking") > before:
            firings.append(t)
        released = filt.take_released()
        assert len(released) <= cap
        stored.extend(row[2] for row in released)
        values.extend(row[1] for row in released)
        if keep is not None:
            stored.append(t)
            values.append(value)
    for t in stored:
        assert any(f - pre <= t <= f + post for f in firings)
    assert len(values) == len(set(values))  # no sample stored twice by one campaign


def uplink_spec(out: Path) -> ServiceSpec:
    from services.uplink import Uplink

    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(braking(pre_trigger=1.0, post_trigger=0.5),),
        directory=out,
        flush_interval=0.01,
        batch_delay=0.05,
        status_period=0.1,
    )
    return ServiceSpec("uplink", Uplink, config)


async def test_the_service_ships_the_window_around_a_hard_braking(tmp_path: Path) -> None:
    out = tmp_path / "batches"
    with trio.fail_after(30):
        async with open_harness(uplink_spec(out), state_dir=tmp_path / "state") as car:
            car.publish(SPEED, 150.0)
            for i in range(40):  # 4 s at 10 Hz; the ABS engages after 2 s
                car.publish(ACCEL, -float(i))
                if i == 20:
                    car.publish(ABS, True)
                await trio.sleep(0.1)
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples >= 10, timeout=20)
    values = sorted(
        -typing.cast(float, s.value)
        for p in out.iterdir()
        for s in decode_batch(p.read_bytes()).samples
        if s.topic == ACCEL.name
    )
    # About 1 s before and 0.5 s after sample 20 (real clock: a sample or so either way).
    assert 9 <= values[0] <= 11
    assert 24 <= values[-1] <= 26
    assert values == list(range(int(values[0]), int(values[-1]) + 1))


# -- last known state ---------------------------------------------------------------------------------------


def test_an_on_change_template_stores_changes_and_a_snapshot_every_latest_value() -> None:
    tracker = StateTracker([StateTemplate("body", ("Vehicle.Body.**",))])
    rows = [
        tracker.observe(t, v, ts)
        for t, v, ts in [
            ("Vehicle.Body.Door", True, 1.0),
            ("Vehicle.Body.Door", True, 2.0),
            ("Vehicle.Body.Trunk", False, 3.0),
            ("Vehicle.Speed", 3.0, 4.0),
        ]
    ]
    assert [[(r[0], r[1], r[2]) for r in rs] for rs in rows] == [
        [("Vehicle.Body.Door", True, 1.0)],
        [],
        [("Vehicle.Body.Trunk", False, 3.0)],
        [],
    ]
    snapshot = tracker.snapshot(tracker.index("body"))
    assert [(r[0], r[1], r[2]) for r in snapshot] == [
        ("Vehicle.Body.Door", True, 2.0),
        ("Vehicle.Body.Trunk", False, 3.0),
    ]
    assert {r[3].campaigns for r in snapshot} == {("state:body",)}
    with pytest.raises(KeyError, match="no state template 'nope'"):
        tracker.index("nope")


def test_a_template_cannot_grow_without_bound_on_a_busy_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.uplink._state as state

    monkeypatch.setattr(state, "MAX_TOPICS", 3)
    tracker = StateTracker([StateTemplate("all", ("**",), update="periodic", period=1.0)])
    for i in range(10):
        tracker.observe(f"T.N{i}", i, 0.0)
    assert len(tracker.snapshot(0)) == 3
    assert tracker.overflow == 7


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"update": "periodic"}, "needs a period"),
        ({"period": 1.0}, "period is only for update 'periodic'"),
        ({"update": "periodic", "period": 0.0}, "period must be seconds > 0"),
        ({"update": "sometimes"}, "update must be"),
        ({"ttl": -1.0}, "ttl must be a positive"),
    ],
)
def test_bad_templates_say_what_is_wrong(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        StateTemplate("t", ("A.**",), **kwargs)


async def test_the_service_ships_periodic_state_and_state_on_request(tmp_path: Path) -> None:
    from services.uplink import Uplink

    out = tmp_path / "batches"
    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(Campaign("none", ("Nothing.Here",)),),
        state_templates=(
            StateTemplate("drive", ("Vehicle.Speed",), update="periodic", period=0.5),
            StateTemplate("abs", ("Vehicle.ADAS.**",)),
        ),
        directory=out,
        flush_interval=0.01,
        batch_delay=0.05,
        status_period=0.1,
    )
    with trio.fail_after(30):
        async with open_harness(ServiceSpec("uplink", Uplink, config), state_dir=tmp_path / "state") as car:
            car.publish(SPEED, 88.0)  # published once, shipped every half second
            for engaged in (True, True, False):
                car.publish(ABS, engaged)
            await trio.sleep(1.3)
            stored = await car.client.call(fetch_state_method("uplink"), "abs")
            assert stored == 1
            with pytest.raises(RemoteError, match="no state template 'nope'"):
                await car.client.call(fetch_state_method("uplink"), "nope")
            await car.expect(status_topic("uplink"), lambda s: s.sent_samples >= 5, timeout=20)
    got: dict[str, list[Any]] = {}
    for p in sorted(out.iterdir()):
        for s in decode_batch(p.read_bytes()).samples:
            got.setdefault(s.topic, []).append(s.value)
    assert got["Vehicle.Speed"][:2] == [88.0, 88.0]  # at 0.5 s and 1.0 s, unchanged
    assert got["Vehicle.ADAS.ABS.IsEngaged"] == [True, False, False]  # two changes, then the request


def test_the_config_check_knows_what_the_uplink_subscribes_publishes_and_serves() -> None:
    from services.uplink import Uplink

    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(braking(),),
        state_templates=(StateTemplate("lks", ("Vehicle.TraveledDistance",)),),
    )
    names = Uplink.bus_names(config)
    assert names is not None
    assert names.subscribe == (
        "Vehicle.Acceleration.*",
        "Vehicle.ADAS.ABS.IsEngaged",
        "Vehicle.Speed",
        "Vehicle.TraveledDistance",
    )
    assert names.publish == ("Uplink.*.Status",)
    assert names.serve == ("Uplink.*.FetchState",)
    plain = Uplink.bus_names(UplinkConfig(vehicle_id="car-1", campaigns=(Campaign("a", ("A.**",)),)))
    assert plain is not None
    assert plain.serve == ()


async def test_an_uplink_not_allowed_to_serve_fetch_state_ships_its_data_without_it(tmp_path: Path) -> None:
    from bus import NoSuchMethodError, Permissions
    from services.uplink import Uplink

    out = tmp_path / "batches"
    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(Campaign("speed", ("Vehicle.Speed",)),),
        state_templates=(StateTemplate("lks", ("Vehicle.Speed",)),),
        directory=out,
        flush_interval=0.01,
        batch_delay=0.05,
        status_period=0.1,
    )
    narrow = Permissions(subscribe=("Vehicle.**",), publish=("Uplink.**",))  # no serve
    spec = ServiceSpec("uplink", Uplink, config, permissions=narrow)
    with trio.fail_after(30):
        async with open_harness(spec, state_dir=tmp_path / "state") as car:
            car.publish(SPEED, 42.0)
            done = await car.expect(status_topic("uplink"), lambda s: s.sent_samples >= 2, timeout=20)
            with pytest.raises(NoSuchMethodError):
                await car.client.call(fetch_state_method("uplink"), "lks")
    assert done.value.sent_samples >= 2  # the campaign's sample and the template's change
