"""Both bus clients are a `bus.BusHandle`: checked by mypy here, and at run time by the calls below."""

from __future__ import annotations

import bus
from bus import Bus, BusClient, BusHandle, PublisherHandle, RemoteBusClient, Topic

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
