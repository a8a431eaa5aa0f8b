"""Both bus clients are a `bus.BusHandle`: checked by mypy here, and at run time by the calls below."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from bus_sides import BusSide

import bus
from bus import (
    Bus,
    BusClient,
    BusHandle,
    PermissionDeniedError,
    Permissions,
    PublisherHandle,
    RemoteBusClient,
    Topic,
    TopicError,
)

LIMIT = 10  # seconds: every test ends within this, or fails

SPEED = Topic("Vehicle.Speed", float, min=0, max=400)


def _as_handles(local: BusClient, remote: RemoteBusClient) -> tuple[BusHandle, BusHandle]:
    """mypy --strict fails here if either client stops satisfying the protocol."""
    return local, remote


def _typed_publisher(handle: BusHandle) -> PublisherHandle[float]:
    return handle.publisher(SPEED)


async def test_an_in_process_client_is_used_through_the_protocol() -> None:
    handle: BusHandle = Bus().client("svc")
    _typed_publisher(handle).publish_nowait(12.5)
    sample = await handle.get(SPEED)
    assert sample is not None
    assert sample.value == 12.5
    assert not await handle.is_stale(SPEED)
    await handle.flush()
    handle.close()
    assert handle.closed


def test_the_protocol_is_public() -> None:
    assert bus.BusHandle is BusHandle
    assert "BusHandle" in bus.__all__
    assert "PublisherHandle" in bus.__all__


# -- one subscription, several names and patterns (on every client: the bus_side fixture) ----------------

GEAR = Topic("Vehicle.Gear", str, allowed=("P", "R", "N", "D"))
DOOR = Topic("Body.Door.IsOpen", bool)
OTHER = Topic("Cabin.Light", bool)


async def test_one_subscription_takes_several_names_and_patterns(bus_side: BusSide) -> None:
    with trio.fail_after(LIMIT):
        async with bus_side.client("reader") as reader, bus_side.client("writer") as writer:
            topics: tuple[Topic[Any], ...] = (SPEED, GEAR, DOOR, OTHER)
            for topic in topics:
                writer.declare(topic)
            await bus_side.settle(writer)
            with reader.subscribe(SPEED, "Vehicle.Gear", "Body.**", "Body.Door.IsOpen", queue_size=16) as sub:
                await bus_side.settle(reader)
                writer.publish_nowait(SPEED, 50.0)
                writer.publish_nowait(OTHER, True)  # matches none
                writer.publish_nowait(DOOR, True)  # matches two: delivered once
                writer.publish_nowait(GEAR, "D")
                got: list[Any] = []
                while len(got) < 3:
                    got += [(s.topic, s.value) for s in await sub.receive_batch()]
                await bus_side.settle(writer)
                await bus_side.settle(reader)
                with pytest.raises(trio.WouldBlock):
                    sub.receive_nowait()
                stats = sub.statistics()
    assert got == [("Vehicle.Speed", 50.0), ("Body.Door.IsOpen", True), ("Vehicle.Gear", "D")]
    assert sub.patterns == ("Vehicle.Speed", "Vehicle.Gear", "Body.**", "Body.Door.IsOpen")
    assert stats.pattern == "Vehicle.Speed, Vehicle.Gear, Body.**, Body.Door.IsOpen"
    assert (stats.capacity, stats.received, stats.dropped) == (16, 3, 0)


async def test_several_names_from_a_sequence_with_latest_values(bus_side: BusSide) -> None:
    with trio.fail_after(LIMIT):
        async with bus_side.client("reader") as reader, bus_side.client("writer") as writer:
            writer.publish_nowait(SPEED, 10.0)
            writer.publish_nowait(GEAR, "P")
            writer.publish_nowait(DOOR, False)
            await bus_side.settle(writer)
            with reader.subscribe(["Vehicle.*", "Body.Door.IsOpen"], latest=True) as sub:
                got: list[Any] = []
                while len(got) < 3:
                    got += [(s.topic, s.value) for s in await sub.receive_batch()]
    assert sorted(got) == [("Body.Door.IsOpen", False), ("Vehicle.Gear", "P"), ("Vehicle.Speed", 10.0)]


async def test_a_topic_declared_later_is_routed_once_to_a_subscription_of_several(
    bus_side: BusSide,
) -> None:
    with trio.fail_after(LIMIT):
        async with bus_side.client("reader") as reader, bus_side.client("writer") as writer:
            with reader.subscribe("Body.**", "Body.Door.IsOpen", "Body.*.IsOpen") as sub:
                await bus_side.settle(reader)
                writer.publish_nowait(DOOR, True)  # declared now, after the subscription
                first = await sub.receive()
                writer.publish_nowait(DOOR, False)
                second = await sub.receive()
                await bus_side.settle(writer)
                await bus_side.settle(reader)
                with pytest.raises(trio.WouldBlock):
                    sub.receive_nowait()
            await bus_side.settle(reader)
            # unsubscribed: the bus routes nothing more to it, by any of its names
            assert bus_side.bus.statistics().topics[0].subscribers == 0
    assert [(first.value, first.seq), (second.value, second.seq)] == [(True, 1), (False, 2)]


async def test_each_name_of_a_subscription_needs_the_permission(bus_side: BusSide) -> None:
    allowed = Permissions(subscribe=["Vehicle.**"], block=["Vehicle.Speed"])
    with trio.fail_after(LIMIT):
        async with bus_side.client("reader", allowed) as reader:
            with pytest.raises(PermissionDeniedError, match=r"may not subscribe 'Body\.\*\*'"):
                reader.subscribe("Vehicle.Speed", "Body.**")
            with pytest.raises(PermissionDeniedError, match="block"):
                reader.subscribe("Vehicle.Speed", "Vehicle.Gear", overflow="block")
            with reader.subscribe("Vehicle.Speed", overflow="block"):
                pass
            assert reader.statistics() == []  # nothing of the refused ones is left


async def test_bad_arguments_to_subscribe_are_refused_saying_which(bus_side: BusSide) -> None:
    async with bus_side.client("reader") as reader:
        with pytest.raises(TypeError, match="at least one"):
            reader.subscribe([])
        with pytest.raises(TypeError, match="argument 1 is a int"):
            reader.subscribe("Vehicle.Speed", 3)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="argument 2 is a bytes"):
            reader.subscribe(["A.b", "A.c", b"A.d"])  # type: ignore[list-item]
        with pytest.raises(TopicError, match="at most 256 names and patterns, not 257"):
            reader.subscribe([f"A.b{i}" for i in range(257)])
        with pytest.raises(TopicError):
            reader.subscribe("Vehicle.Speed", "Vehicle..Gear")
        assert reader.statistics() == []
        with reader.subscribe([f"A.b{i}" for i in range(256)]) as sub:
            assert len(sub.patterns) == 256
