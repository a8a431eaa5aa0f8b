"""Isolated services: real child processes on a real clock, joined to the supervisor's bus over a socket.

Every test has a hard ``trio.fail_after``. The same `Worker` class runs in-process and isolated unchanged.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio

from bus import PeerCredentials, PermissionDeniedError, Permissions, Sample, Topic
from vwos import (
    ConfigError,
    Exit,
    Restart,
    Service,
    ServiceContext,
    ServiceSpec,
    ServiceStatus,
    State,
    Supervisor,
    configure_logging,
    parse_config,
)
from vwos._policy import BackoffPolicy

FAST = BackoffPolicy(initial=0.05, multiplier=1.0, max_delay=0.05, jitter=0.0)


@attrs.frozen
class Work:
    #: Publishes a counter on ``Test.<publish>.Count`` every 20 ms (the first one before it is ready).
    publish: str = ""
    #: Republishes every value of ``Test.<echo_from>.Count`` on ``Test.<publish>.Echo``.
    echo_from: str = ""
    #: What the first ``times`` runs do: run, no_heartbeat, ignore_stop, hog, deny.
    behaviour: str = "run"
    times: int = 1
    ready_after: float = 0.0
    hog_mb: int = 0


def count_topic(name: str) -> Topic[int]:
    return Topic(f"Test.{name}.Count", int)


def echo_topic(name: str) -> Topic[int]:
    return Topic(f"Test.{name}.Echo", int)


class Worker(Service[Work]):
    """Counts, echoes, heartbeats; leaves notes (pid, runs, what happened) in its state directory."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        work = self.config
        runs_file = ctx.state_dir / "runs"
        runs = int(runs_file.read_text()) + 1 if runs_file.exists() else 1
        runs_file.write_text(str(runs))
        (ctx.state_dir / "pid").write_text(str(os.getpid()))
        (ctx.state_dir / "log_level").write_text(str(ctx.log.get_effective_level()))
        behaviour = work.behaviour if runs <= work.times else "run"
        try:
            await trio.sleep(work.ready_after)
            counter = ctx.bus.publisher(ctx.bus.declare(count_topic(work.publish))) if work.publish else None
            if counter is not None:
                counter.publish_nowait(0)
            task_status.started()
            if behaviour == "hog":
                hog = [bytearray(1024 * 1024) for _ in range(work.hog_mb)]
                ctx.log.info("hogged", mib=len(hog))
            if behaviour == "deny":
                try:
                    ctx.bus.publish_nowait(ctx.bus.declare(Topic("Test.Denied.Count", int)), 1)
                except PermissionDeniedError:
                    (ctx.state_dir / "denied").write_text("yes")
                    raise
            async with trio.open_nursery() as nursery:
                if work.echo_from:
                    nursery.start_soon(_echo, ctx, work)
                n = 0
                while True:
                    n += 1
                    if counter is not None:
                        counter.publish_nowait(n)
                    if behaviour != "no_heartbeat":
                        ctx.heartbeat()
                    await trio.sleep(0.02)
        finally:
            if behaviour == "ignore_stop":
                (ctx.state_dir / "cancelled").write_text("yes")
                with trio.CancelScope(shield=True):
                    await trio.sleep(1000)


async def _echo(ctx: ServiceContext, work: Work) -> None:
    echo = ctx.bus.publisher(ctx.bus.declare(echo_topic(work.publish)))
    with ctx.bus.subscribe(count_topic(work.echo_from)) as samples:
        async for sample in samples:
            echo.publish_nowait(sample.value)


def worker(name: str, *, isolated: bool = False, **kwargs: Any) -> ServiceSpec:
    work = {k: kwargs.pop(k) for k in list(kwargs) if k in attrs.fields_dict(Work)}
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("start_timeout", 10.0)
    return ServiceSpec(name, Worker, Work(**work), isolated=isolated, **kwargs)


@asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        try:
            yield supervisor
        finally:
            supervisor.shutdown()


def row(supervisor: Supervisor, name: str) -> ServiceStatus:
    (found,) = [r for r in supervisor.status() if r.name == name]
    return found


async def until(predicate: Callable[[], bool], *, poll: float = 0.02) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(poll)


# -- the bus, both ways ------------------------------------------------------------------------------------


async def test_the_same_service_runs_in_process_and_isolated_on_one_bus(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [
                worker("iso", isolated=True, publish="Iso", echo_from="Local"),
                worker("local", publish="Local", echo_from="Iso"),
            ],
            state_dir=tmp_path,
        )
        seen: dict[str, Sample[Any]] = {}
        async with running(supervisor):
            with supervisor.bus.client("probe").subscribe("Test.**") as samples:
                async for sample in samples:
                    seen.setdefault(sample.topic, sample)
                    if len(seen) == 4:
                        break
        assert seen["Test.Iso.Count"].publisher == "iso"  # the isolated one, seen in-process
        assert seen["Test.Iso.Echo"].publisher == "iso"  # it received the in-process one's samples
        assert seen["Test.Local.Echo"].publisher == "local"  # and the in-process one received its samples
        assert int((tmp_path / "iso" / "pid").read_text()) != os.getpid()
        assert int((tmp_path / "local" / "pid").read_text()) == os.getpid()


async def test_a_service_after_an_isolated_one_starts_once_it_is_ready(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [
                worker("iso", isolated=True, publish="Iso", ready_after=0.3),
                worker("local", publish="Local", after=("iso",)),
            ],
            state_dir=tmp_path,
        )
        started = trio.current_time()
        async with running(supervisor):
            # The in-process one leaves its pid file when it starts: by then the isolated one is ready.
            assert (tmp_path / "local" / "pid").exists()
            assert row(supervisor, "iso").state is State.RUNNING
            assert trio.current_time() - started >= 0.3
            assert [r.restarts for r in supervisor.status()] == [0, 0]


# -- faults ------------------------------------------------------------------------------------------------


async def test_kill_9_restarts_only_that_service_and_nobody_else_notices(tmp_path: Path) -> None:
    with trio.fail_after(20):
        supervisor = Supervisor(
            [
                worker("victim", isolated=True, publish="Victim"),
                worker("other", isolated=True, publish="Other"),
                worker("local", publish="Local"),
            ],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            victim = int((tmp_path / "victim" / "pid").read_text())
            with supervisor.bus.client("probe").subscribe("Test.*.Count", queue_size=1000) as samples:
                os.kill(victim, signal.SIGKILL)
                await until(lambda: row(supervisor, "victim").restarts == 1)
                await until(lambda: row(supervisor, "victim").state is State.RUNNING)
                killed = row(supervisor, "victim")
                await trio.sleep(0.2)
                after: set[str] = set()
                while True:
                    try:
                        after.add(samples.receive_nowait().publisher)
                    except trio.WouldBlock:
                        break
        assert killed.last_exit is Exit.ERROR
        assert killed.last_error == "killed by SIGKILL"
        assert int((tmp_path / "victim" / "pid").read_text()) != victim
        assert after == {"victim", "other", "local"}  # all of them kept publishing
        assert row(supervisor, "other").restarts == 0
        assert row(supervisor, "local").restarts == 0


async def test_a_sigterm_from_outside_restarts_the_service_and_says_so(tmp_path: Path) -> None:
    """Someone else's SIGTERM stops the child cleanly (exit status 0), but the supervisor did not ask for
    it: a failure, restarted, whose reason says what happened rather than "exited with code 0"."""
    with trio.fail_after(20):
        supervisor = Supervisor(
            [worker("victim", isolated=True, publish="Victim"), worker("local", publish="Local")],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            victim = int((tmp_path / "victim" / "pid").read_text())
            os.kill(victim, signal.SIGTERM)
            await until(lambda: row(supervisor, "victim").restarts == 1)
            await until(lambda: row(supervisor, "victim").state is State.RUNNING)
            terminated = row(supervisor, "victim")
        assert terminated.last_exit is Exit.ERROR
        assert terminated.last_error == "stopped from outside the supervisor (SIGTERM)"
        assert int((tmp_path / "victim" / "pid").read_text()) != victim
        assert row(supervisor, "local").restarts == 0


async def test_the_memory_limit_is_enforced_and_reported(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [
                worker(
                    "hog",
                    isolated=True,
                    behaviour="hog",
                    hog_mb=256,
                    memory_limit_mb=128,
                    restart=Restart.TEMPORARY,
                ),
            ],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            await until(lambda: row(supervisor, "hog").state is State.EXITED)
            status = row(supervisor, "hog")
        assert status.last_exit is Exit.ERROR
        assert status.last_error == "memory limit of 128 MiB reached"


async def test_the_watchdog_restarts_an_isolated_service_that_stops_heartbeating(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [worker("iso", isolated=True, behaviour="no_heartbeat", watchdog=0.5)], state_dir=tmp_path
        )
        async with running(supervisor):
            first = int((tmp_path / "iso" / "pid").read_text())
            await until(lambda: row(supervisor, "iso").restarts == 1)
            await until(lambda: row(supervisor, "iso").state is State.RUNNING)
            await trio.sleep(1.0)  # the second run heartbeats: no further restart
            status = row(supervisor, "iso")
        assert status.last_exit is Exit.WATCHDOG
        assert status.restarts == 1
        assert int((tmp_path / "iso" / "pid").read_text()) != first


async def test_a_stop_timeout_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [worker("stubborn", isolated=True, behaviour="ignore_stop", stop_timeout=0.5)],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            pid = int((tmp_path / "stubborn" / "pid").read_text())
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        assert (tmp_path / "stubborn" / "cancelled").exists()  # it got SIGTERM and cancelled its service
        assert 0.5 <= took < 3.0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        assert row(supervisor, "stubborn").state is State.STOPPED


async def test_an_isolated_service_has_exactly_its_permissions(tmp_path: Path) -> None:
    with trio.fail_after(15):
        supervisor = Supervisor(
            [
                worker(
                    "limited",
                    isolated=True,
                    publish="Allowed",
                    behaviour="deny",
                    restart=Restart.TEMPORARY,
                    permissions=Permissions(publish=("Test.Allowed.**",)),
                ),
            ],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            await until(lambda: row(supervisor, "limited").state is State.EXITED)
            status = row(supervisor, "limited")
        assert (tmp_path / "limited" / "denied").exists()
        assert status.last_exit is Exit.ERROR
        assert status.last_error is not None
        assert status.last_error.startswith("PermissionDeniedError")


# -- plumbing ----------------------------------------------------------------------------------------------


def test_an_isolated_service_needs_a_picklable_config() -> None:
    with pytest.raises(ValueError, match="picklable"):
        Supervisor([ServiceSpec("x", Worker, lambda: None, isolated=True)])


def test_a_memory_limit_needs_isolation() -> None:
    with pytest.raises(ValueError, match="isolated"):
        ServiceSpec("x", Worker, Work(), memory_limit_mb=64)
    assert ServiceSpec("x", Worker, Work(), isolated=True, memory_limit_mb=64).memory_limit_mb == 64


def test_authorize_grants_a_child_its_own_permissions_only() -> None:
    limited = Permissions(publish=("Test.**",))
    supervisor = Supervisor(
        [worker("iso", isolated=True, permissions=limited)],
        authorize=lambda peer, name: Permissions.NONE if name == "cli" else None,
    )
    supervisor._pids[4242] = "iso"
    peer = PeerCredentials
    assert supervisor.authorize(peer(4242, 0, 0), "iso") == limited
    assert supervisor.authorize(peer(4242, 0, 0), "other") is None  # a child is only itself
    assert supervisor.authorize(peer(1, 0, 0), "iso") is None  # another process cannot be a service
    assert supervisor.authorize(peer(1, 0, 0), "cli") == Permissions.NONE  # delegated


def test_the_config_file_says_isolated_and_sets_a_memory_limit(tmp_path: Path) -> None:
    config = parse_config(
        '[services.a]\nplugin = "test_isolation:Worker"\nisolated = true\nmemory_limit_mb = 256\n'
        '[services.b]\nplugin = "test_isolation:Worker"\n',
        path=tmp_path / "vwos.toml",
    )
    assert (config.service("a").isolated, config.service("a").memory_limit_mb) == (True, 256)
    assert (config.service("b").isolated, config.service("b").memory_limit_mb) == (False, None)
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[services.a]\nplugin = "test_isolation:Worker"\nmemory_limit_mb = 0\n'
            '[services.b]\nplugin = "test_isolation:Worker"\nmemory_limit_mb = 64\n',
            path=tmp_path / "vwos.toml",
        )
    messages = [str(p) for p in info.value.problems]
    assert any("services.a.memory_limit_mb: expected a number of MiB >= 1" in m for m in messages), messages
    assert any("services.b.memory_limit_mb: a memory limit needs a process of its own" in m for m in messages)


async def test_latest_values_read_the_same_way_in_process_and_isolated(tmp_path: Path) -> None:
    """``await ctx.bus.fetch(...)`` works on both clients: the portable read of a latest value."""
    import bus as bus_module

    topic = bus_module.Topic("Test.Fetched", int)
    local = bus_module.Bus()
    client = local.client("in-process")
    client.publish_nowait(topic, 7)
    assert (await client.fetch(topic)) == client.get(topic)
    assert not await client.fetch_is_stale(topic)
    path = tmp_path / "b.sock"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    bus_module.serve_unix,
                    local,
                    path,
                    authorize=lambda peer, name: bus_module.Permissions.ALL,
                )
            )
            async with bus_module.connect_unix(path, "remote") as remote:
                sample = await remote.fetch(topic)
                stale = await remote.fetch_is_stale(topic)
            nursery.cancel_scope.cancel()
    assert sample is not None
    assert sample.value == 7
    assert not stale


async def test_an_isolated_service_logs_at_the_supervisors_level(tmp_path: Path) -> None:
    """The child filters its log lines at the supervisor's level itself: lines the supervisor would drop
    are never rendered, piped and parsed."""
    configure_logging(format="json", level="warning", stream=io.StringIO())
    try:
        with trio.fail_after(15):
            supervisor = Supervisor([worker("quiet", isolated=True)], state_dir=tmp_path)
            async with running(supervisor):
                await until(lambda: (tmp_path / "quiet" / "log_level").exists())
        assert int((tmp_path / "quiet" / "log_level").read_text()) == logging.WARNING
    finally:
        structlog.reset_defaults()
