"""The test kit's two bus clients: services run on in-process handles, or on handles over the bus socket
(``vwos_bus_client``), and behave the same on both."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing

import bus
from bus import PermissionDeniedError, Permissions, Topic
from vwos import NoConfig, Service, ServiceContext, ServiceSpec, Supervisor
from vwos.testing import open_harness

pytestmark = pytest.mark.usefixtures("vwos_bus_client")

PING = Topic("Test.Ping", int)
PONG = Topic("Test.Pong", int)

#: What each run of `Echo` saw, by service name (a module global: the supervisor constructs the service).
SEEN: dict[str, Any] = {}


class Echo(Service[NoConfig]):
    """Subscribes to Test.Ping, says it is ready, and answers each ping on Test.Pong."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        SEEN[ctx.name] = type(ctx.bus)
        pong = ctx.bus.publisher(PONG)
        with ctx.bus.subscribe(PING) as pings:
            task_status.started()
            async for sample in pings:
                await pong.publish(sample.value)


class PingsAtOnce(Service[NoConfig]):
    """Publishes one ping the moment it starts (after `Echo` is ready), then is ready itself."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await ctx.bus.publisher(PING).publish(7)
        task_status.started()
        await trio.sleep_forever()


async def test_each_service_gets_the_kind_of_handle_the_fixture_names(
    vwos_bus_client: str, autojump_clock: trio.testing.MockClock
) -> None:
    SEEN.clear()
    async with open_harness(Echo(NoConfig())) as car:
        car.publish(PING, 1)
        assert (await car.expect(PONG)).value == 1
    expected = bus.RemoteBusClient if vwos_bus_client == "socket" else bus.BusClient
    assert SEEN["echo"] is expected


async def test_ready_means_the_subscriptions_are_in_place(autojump_clock: trio.testing.MockClock) -> None:
    """A service that starts ``after`` another publishes at once; the one it starts after has subscribed
    before it said ready, so it sees the sample -- over the socket too, where a subscription takes effect
    only once the broker has handled it (ready waits for a SYNC round trip)."""
    for _ in range(20):
        async with open_harness(
            ServiceSpec("echo", Echo, NoConfig()),
            ServiceSpec("pinger", PingsAtOnce, NoConfig(), after=("echo",)),
        ) as car:
            assert (await car.expect(PONG, timeout=1)).value == 7


class Squatter(Service[NoConfig]):
    """Tries to publish outside its permissions, and reports what happened on Test.Pong."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            ctx.bus.publisher(PING)
        except PermissionDeniedError:
            await ctx.bus.publisher(PONG).publish(-1)
        task_status.started()
        await trio.sleep_forever()


async def test_a_service_has_exactly_its_own_permissions(autojump_clock: trio.testing.MockClock) -> None:
    narrow = Permissions(publish=("Test.Pong",))
    async with open_harness(ServiceSpec("squatter", Squatter, NoConfig(), permissions=narrow)) as car:
        assert (await car.expect(PONG)).value == -1
        assert car.samples(PING) == []


async def test_over_the_socket_only_our_services_names_are_let_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(
        [ServiceSpec("echo", Echo, NoConfig(), permissions=Permissions(subscribe=("Test.*",)))],
        service_bus="socket",
        loop_block=None,
    )
    me = bus.PeerCredentials(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    assert supervisor.authorize(me, "echo") == Permissions(subscribe=("Test.*",))
    assert supervisor.authorize(me, "intruder") is None
    assert Supervisor([], loop_block=None).authorize(me, "echo") is None  # in-process: no socket clients
    with pytest.raises(ValueError, match="service_bus must be 'in_process' or 'socket', not 'pipe'"):
        Supervisor([], service_bus="pipe")  # type: ignore[arg-type]
