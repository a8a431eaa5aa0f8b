"""The uplink's transport seam: the factory the service takes, and `MemoryTransport`, the far side a test
drives (httpx's MockTransport idea). No broker, no threads: trio's autojump clock throughout."""

from __future__ import annotations

import ast
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from services.uplink import (
    Campaign,
    FileTransport,
    MemoryTransport,
    MqttConfig,
    MqttTransport,
    TransportError,
    TransportFactory,
    Uplink,
    UplinkConfig,
    UplinkTransport,
    configured_transport,
)
from vwos import ServiceContext

ROOT = Path(__file__).parent.parent
CAMPAIGNS = (Campaign("all", ("**",)),)


def context(tmp_path: Path) -> ServiceContext:
    return ServiceContext(
        name="uplink",
        bus=None,  # type: ignore[arg-type]  # the factories never touch the bus
        log=structlog.get_logger(),
        state_dir=tmp_path,
        heartbeat=lambda: None,
    )


def test_every_transport_and_factory_has_the_shape_the_service_takes(tmp_path: Path) -> None:
    link = MemoryTransport()
    transports: list[UplinkTransport] = [link, FileTransport(tmp_path)]  # mypy checks the shapes
    factories: list[TransportFactory] = [link, configured_transport]
    assert [t.name for t in transports] == ["memory", "file"]
    assert len(factories) == 2
    uplink = Uplink(UplinkConfig(vehicle_id="car-1", campaigns=CAMPAIGNS))
    assert uplink.transport_factory is configured_transport
    assert Uplink(uplink.config, transport=link).transport_factory is link
    made = Uplink.with_transport(link)
    assert issubclass(made, Uplink)
    assert made.config_class is UplinkConfig
    assert made(uplink.config).transport_factory is link


async def test_the_configured_factory_makes_what_the_config_names(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    files = UplinkConfig(vehicle_id="car-1", campaigns=CAMPAIGNS)
    async with configured_transport(files, ctx) as transport:
        assert isinstance(transport, FileTransport)
        assert transport.directory == tmp_path / "outgoing"
    there = UplinkConfig(vehicle_id="car-1", campaigns=CAMPAIGNS, directory=tmp_path / "there")
    async with configured_transport(there, ctx) as transport:
        assert isinstance(transport, FileTransport)
        assert transport.directory == tmp_path / "there"
    mqtt = UplinkConfig(
        vehicle_id="car-1",
        campaigns=CAMPAIGNS,
        transport="mqtt",
        mqtt=MqttConfig(host="broker.example"),
        max_batch_bytes=4096,
    )
    async with configured_transport(mqtt, ctx) as transport:
        assert isinstance(transport, MqttTransport)
        assert transport.topic == "vwos/car-1/batches"
    async with MemoryTransport()(mqtt, ctx) as transport:  # the memory transport ignores the config
        assert isinstance(transport, MemoryTransport)


async def test_memory_delivers_once_connected_and_in_order(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    with pytest.raises(TransportError, match="not connected"):
        await link.publish(1, b"early")
    async with link(None, None) as transport:
        assert transport is link
        await link.connect()
        assert repr(link) == "<MemoryTransport connected, 0 delivered, 0 waiting>"
        assert link.connects == 1
        await link.publish(1, b"one")
        await link.publish(2, b"two")
        await link.publish(2, b"two")  # sent again: delivered again (at least once)
    assert not link.connected  # leaving the factory's context closes the link
    assert link.delivered == [(1, b"one"), (2, b"two"), (2, b"two")]
    assert link.payloads == [b"one", b"two", b"two"]
    with pytest.raises(TransportError, match="closed"):
        await link.publish(3, b"three")
    assert (link.publishes, link.failures) == (5, 2)


async def test_an_outage_fails_connect_and_the_publish_in_flight(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    await link.connect()
    link.hold_acks()
    outcome: list[str] = []

    async def send() -> None:
        try:
            await link.publish(7, b"x")
            outcome.append("acknowledged")
        except TransportError as exc:
            outcome.append(str(exc))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await link.wait_waiting(1)
            assert link.waiting == 1
            assert outcome == []
            link.go_down("no network")
        assert outcome == ["no network"]
        assert link.waiting == 0
        with pytest.raises(TransportError, match=r"^no network$"):
            await link.connect()
        with pytest.raises(TransportError, match=r"^no network$"):
            await link.publish(7, b"x")
        link.come_up()
        await link.connect()
        link.release()
        await link.publish(7, b"x")
    assert link.delivered == [(7, b"x")]
    assert (link.connects, link.failures) == (2, 2)


async def test_acknowledgements_held_back_are_released_one_by_one(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    await link.connect()
    link.hold_acks()
    done: list[int] = []

    async def send(seq: int) -> None:
        await link.publish(seq, bytes([seq]))
        done.append(seq)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for seq in (1, 2, 3):
                nursery.start_soon(send, seq)
            await link.wait_waiting(3)
            await trio.sleep(1)
            assert done == []
            assert link.delivered == []
            link.release(1)
            await link.wait_delivered(1)
            await trio.sleep(1)
            assert len(done) == 1
            assert link.waiting == 2
            link.release()  # all, and no more holding
        assert sorted(done) == [1, 2, 3]
        await link.publish(4, b"\x04")  # at once
    assert [seq for seq, _ in link.delivered][-1] == 4


async def test_queued_publish_failures_lose_the_link(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    await link.connect()
    link.fail_publishes(2, "quota exceeded")
    for _ in range(2):
        with pytest.raises(TransportError, match=r"^quota exceeded$"):
            await link.publish(1, b"x")
        assert not link.connected  # a failed publish loses the link: the service connects again
        await link.connect()
    await link.publish(1, b"x")
    assert link.delivered == [(1, b"x")]
    assert link.failures == 2


async def test_a_huge_failure_count_costs_no_memory(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    tracemalloc.start()
    try:
        link.fail_publishes(10**12, "down for good")
        link.fail_publishes(1, "then this")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
    for _ in range(3):
        await link.connect()
        with pytest.raises(TransportError, match="down for good"):
            await link.publish(1, b"x")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda t: t.fail_publishes(0), "count must be an int >= 1, not 0"),
        (lambda t: t.fail_publishes(True), "count must be an int >= 1, not True"),
        (lambda t: t.fail_publishes(1, ""), "reason must be a non-empty str"),
        (lambda t: t.release(-1), "count must be an int >= 1, not -1"),
        (lambda t: t.release(2.5), "count must be an int >= 1, not 2.5"),
        (lambda t: t.go_down(""), "reason must be a non-empty str"),
        (lambda t: t.go_down(None), "reason must be a non-empty str"),
    ],
)
def test_the_far_side_refuses_nonsense_and_keeps_its_state(call: Any, error: str) -> None:
    link = MemoryTransport()
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        call(link)
    assert repr(link) == "<MemoryTransport up, 0 delivered, 0 waiting>"


async def test_publish_refuses_wrong_types(autojump_clock: trio.abc.Clock) -> None:
    link = MemoryTransport()
    await link.connect()
    with pytest.raises(TypeError, match="seq must be an int >= 0, not -1"):
        await link.publish(-1, b"x")
    with pytest.raises(TypeError, match="payload must be bytes, not str"):
        await link.publish(1, "x")  # type: ignore[arg-type]
    assert link.delivered == []
    assert link.connected


def test_the_uplink_imports_no_private_module_of_another_package() -> None:
    """services/uplink uses bus and vwos through their public names only (bus._pattern was one)."""
    for path in sorted((ROOT / "services" / "uplink").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for module in modules:
                parts = module.split(".")
                if parts[0] in ("bus", "vwos") and any(p.startswith("_") for p in parts[1:]):
                    pytest.fail(f"{path.relative_to(ROOT)} imports {module}, a private module of {parts[0]}")
