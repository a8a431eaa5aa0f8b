""" "Not available" on the bus: a sample that says its source has no valid value, told apart from no news."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from strategies import not_available_reasons

import bus
from bus import Bus, Codec, NotAvailable, Sample, StaleValueError, Topic, default_codec
from services.uplink import OpaqueValue, decode_batch, encode_batch
from vwos import Service, ServiceContext
from vwos.testing import ExpectationFailed, open_harness

LIMIT = 10  # seconds: every socket test ends within this, or fails


class Gear(enum.Enum):
    P = "P"
    D = "D"


@default_codec.register(name="test_not_available.Wheels")
@attrs.frozen
class Wheels:
    front: float | NotAvailable
    rear: int | NotAvailable | None = None


SPEED = Topic("Vehicle.Speed", float, unit="km/h", min=0, max=400, max_age=1.0)
WHEELS = Topic("Chassis.Wheels", Wheels)


# -- the value ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        SPEED,
        Topic("A.Int", int, min=0, max=3),
        Topic("A.Bool", bool),
        Topic("A.Str", str),
        Topic("A.Gear", Gear),
        Topic("A.Allowed", int, allowed=(1, 2)),
        WHEELS,
    ],
    ids=lambda t: t.name,
)
def test_every_topic_accepts_not_available(topic: Topic[Any]) -> None:
    value = NotAvailable("out_of_range")
    assert topic.check(value) is value


@pytest.mark.parametrize("reason", ["", "x" * 65, "two\nlines", 3, None])
def test_a_reason_is_a_short_printable_text(reason: Any) -> None:
    with pytest.raises(ValueError, match="NotAvailable reason must be a short printable str"):
        NotAvailable(reason)


@given(not_available_reasons())
def test_every_codec_round_trips_it(reason: str) -> None:
    for codec in (default_codec, Codec()):
        value = codec.decode(codec.encode(NotAvailable(reason)))
        assert value == NotAvailable(reason)
        assert type(value) is NotAvailable
    assert default_codec.type_name(NotAvailable) == "bus.NotAvailable"
    assert Codec().fingerprint(NotAvailable) == default_codec.fingerprint(NotAvailable)


@given(st.one_of(st.floats(allow_nan=False), not_available_reasons().map(NotAvailable)))
def test_a_record_field_may_hold_one(front: float | NotAvailable) -> None:
    value = Wheels(front, NotAvailable("e2e"))
    assert default_codec.decode(default_codec.encode(value)) == value


def test_a_field_that_does_not_allow_it_refuses_it() -> None:
    @attrs.frozen
    class Plain:
        x: float

    codec = Codec()
    codec.register(Plain, name="plain")
    with pytest.raises(bus.CodecError, match="x"):
        codec.encode(Plain(NotAvailable("x")))  # type: ignore[arg-type]


def test_sample_available_and_reason() -> None:
    ok = Sample("A.b", 1.0, 0.0, 0.0, "p", 1)
    gone = Sample("A.b", NotAvailable("not_available"), 0.0, 0.0, "p", 2)
    assert (ok.available, ok.reason) == (True, None)
    assert (gone.available, gone.reason) == (False, "not_available")
    assert str(gone.value) == "not available (not_available)"


# -- in-process -----------------------------------------------------------------------------------------


async def test_not_available_is_news_and_staleness_is_no_news(autojump_clock: trio.abc.Clock) -> None:
    the_bus = Bus()
    client = the_bus.client("ecu")
    assert await client.get(SPEED) is None  # never heard of
    client.publish_nowait(SPEED, 12.5)
    client.publish_nowait(SPEED, NotAvailable("out_of_range"))
    latest = await client.get(SPEED)
    assert latest is not None
    assert (latest.available, latest.reason, latest.seq) == (False, "out_of_range", 2)
    assert not await client.is_stale(SPEED)
    await trio.sleep(1.5)  # max_age is 1 s: now no news at all
    assert await client.is_stale(SPEED)
    with pytest.raises(StaleValueError):
        await client.get(SPEED)
    stale = await client.get(SPEED, allow_stale=True)
    assert stale is not None
    assert not stale.available
    client.publish_nowait(SPEED, NotAvailable("init"))  # a not-available sample is fresh news
    assert not await client.is_stale(SPEED)


async def test_subscribers_receive_it_in_order() -> None:
    the_bus = Bus()
    with the_bus.client("reader").subscribe("Vehicle.**") as samples:
        publisher = the_bus.client("ecu").publisher(SPEED)
        publisher.publish_nowait(1.0)
        publisher.publish_nowait(NotAvailable("not_available"))
        publisher.publish_nowait(2.0)
        got = [await samples.receive() for _ in range(3)]
    assert [(s.value, s.available) for s in got] == [
        (1.0, True),
        (NotAvailable("not_available"), False),
        (2.0, True),
    ]


async def test_a_refused_value_is_still_refused() -> None:
    with pytest.raises(bus.ValueRefusedError, match="above max 400"):
        Bus().client("ecu").publish_nowait(SPEED, 401.0)


# -- across the socket ----------------------------------------------------------------------------------


async def test_across_the_socket_in_runs_and_records(tmp_path: Path) -> None:
    the_bus = Bus()
    path = tmp_path / "bus.sock"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: bus.serve_unix(
                    the_bus, path, authorize=lambda c, n: bus.Permissions.ALL, task_status=task_status
                )
            )
            values: list[float | NotAvailable] = [float(i) for i in range(50)]
            values[7] = values[31] = NotAvailable("out_of_range")
            async with bus.connect_unix(path, "reader") as reader:
                with reader.subscribe("**") as samples:
                    async with bus.connect_unix(path, "ecu") as ecu:
                        speed = ecu.publisher(SPEED)
                        for value in values:  # one run in one PUBLISH: floats and not-availables mixed
                            speed.publish_nowait(value)
                        ecu.publish_nowait(WHEELS, Wheels(NotAvailable("e2e"), 3))
                        got: list[Sample[Any]] = []
                        while len(got) < 51:
                            got.extend(await samples.receive_batch())
                    latest = await reader.get(SPEED)
            nursery.cancel_scope.cancel()
    assert [s.value for s in got[:50]] == values
    assert [s.seq for s in got[:50]] == list(range(1, 51))
    assert got[50].value == Wheels(NotAvailable("e2e"), 3)
    assert latest is not None
    assert latest.available
    assert latest.value == 49.0


# -- the test kit ---------------------------------------------------------------------------------------


class Flaky(Service[None]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        ctx.bus.publish_nowait(SPEED, NotAvailable("init"))
        ctx.bus.publish_nowait(SPEED, 30.0)
        ctx.bus.publish_nowait(SPEED, NotAvailable("out_of_range"))
        await trio.sleep_forever()


@pytest.mark.usefixtures("vwos_bus_client")
async def test_the_kit_tells_them_apart(autojump_clock: trio.abc.Clock) -> None:
    async with open_harness(Flaky(None)) as h:
        # a condition never sees a not-available value (it would have to handle it), and matches 30.0
        first = await h.expect(SPEED, lambda v: v > 10)
        assert first.value == 30.0
        gone = await h.expect_not_available(SPEED, "out_of_range")
        assert gone.seq == 3
        with pytest.raises(ExpectationFailed, match=r"Vehicle.Speed not available \(e2e\)"):
            await h.expect_not_available(SPEED, "e2e", timeout=1.0)


# -- the uplink's batches -------------------------------------------------------------------------------


def test_a_batch_carries_it_and_a_decoder_without_the_codec_can_tell() -> None:
    data = encode_batch(
        "car",
        "s",
        1,
        [("Vehicle.Speed", 1.0, 3.5), ("Vehicle.Speed", 2.0, NotAvailable("not_available"))],
    )
    batch = decode_batch(data)
    assert [(s.value, s.available) for s in batch.samples] == [
        (3.5, True),
        (NotAvailable("not_available"), False),
    ]
    opaque = decode_batch(data, codec=None).samples[1]
    assert isinstance(opaque.value, OpaqueValue)
    assert opaque.value.type_name == "bus.NotAvailable"
    assert not opaque.available


def test_the_cli_shows_it() -> None:
    from vwos._control_cli import _sample_json, _sample_text

    sample = Sample("Vehicle.Speed", NotAvailable("out_of_range"), 1.0, 2.0, "can", 5)
    assert _sample_text(sample) == "Vehicle.Speed = not available (out_of_range)  (can #5)"
    shown = json.loads(_sample_json(sample))
    assert (shown["value"], shown["available"]) == ({"not_available": "out_of_range"}, False)
