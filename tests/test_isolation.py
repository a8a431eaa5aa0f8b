"""Isolated services: real child processes on a real clock, joined to the supervisor's bus over a socket.

Every test has a hard ``trio.fail_after``. The same `Worker` class runs in-process and isolated unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import structlog
import trio

from bus import PeerCredentials, PermissionDeniedError, Permissions, Sample, Topic, connect_unix
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
from vwos._isolation import IsolatedRuns, Run, _format_exception, _Lines, decode_payload
from vwos._policy import BackoffPolicy
from vwos._proctree import SUBREAPER, Proc, Verdict, members, reapable

FAST = BackoffPolicy(initial=0.05, multiplier=1.0, max_delay=0.05, jitter=0.0)


@attrs.frozen
class Work:
    #: Publishes a counter on ``Test.<publish>.Count`` every 20 ms (the first one before it is ready).
    publish: str = ""
    #: Republishes every value of ``Test.<echo_from>.Count`` on ``Test.<publish>.Echo``.
    echo_from: str = ""
    #: What the first ``times`` runs do: run, no_heartbeat, ignore_stop, hog, deny, raise, flood.
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
            if behaviour == "raise":
                _explode()
            if behaviour == "flood":
                os.write(2, b"{" + b"x" * (FLOOD - 2))  # one enormous line without a newline ...
                os.write(2, b"}\nafter the flood\n")  # ... and then a short one
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


FLOOD = 64 * 1024 * 1024


def _explode() -> None:
    found: dict[str, int] = {}
    try:
        found["missing"]
    except KeyError as exc:
        raise ValueError("boom") from exc


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


class FakeProcesses:
    """A process table for `IsolatedRuns`: pid -> (ppid, pgid, sid[, "Z"]) and pid -> token."""

    def __init__(self, table: dict[int, tuple[Any, ...]], tokens: dict[int, str]) -> None:
        self.table = {
            pid: Proc(pid, ppid=row[0], pgid=row[1], sid=row[2], zombie="Z" in row[3:])
            for pid, row in table.items()
        }
        self.tokens = tokens

    def stat(self, pid: int) -> Proc | None:
        return self.table.get(pid)

    def token(self, pid: int) -> str | None:
        return None if pid not in self.table or self.table[pid].zombie else self.tokens.get(pid)

    def snapshot(self) -> dict[int, Proc]:
        return dict(self.table)


ME = 100
#: The supervisor (100, in session 50); run A (200) and run B (300) with their processes; strangers.
TABLE: dict[int, tuple[Any, ...]] = {
    ME: (50, 50, 50),
    200: (ME, 200, 200),  # run A's own process: its own session, as the supervisor started it
    201: (200, 200, 200),  # A's child, in its process group
    202: (200, 202, 202),  # A's child in a session of its own
    203: (202, 202, 202),  # ... and its child
    204: (ME, 299, 299),  # A's double-forked daemon, reparented to the supervisor (the subreaper)
    205: (204, 299, 299),  # ... and its child
    206: (ME, 298, 298),  # an orphan reparented to us, without a token
    207: (206, 298, 298),  # ... and its child
    208: (ME, 50, 50),  # a process the supervisor's own code started (an in-process service's tool)
    209: (1, 209, 209),  # a stranger carrying A's token
    300: (ME, 300, 300),  # run B
    301: (ME, 301, 301),  # B's orphan, with B's token
    400: (1, 400, 400),  # a stranger: the CLI from a shell
    401: (400, 400, 400),  # ... and its child
    410: (411, 410, 410),  # a stranger whose parent we cannot see (another user's, under hidepid)
    500: (201, 200, 200, "Z"),  # a zombie in A's group: gone
    600: (1, 1, 1),  # a pid noted as a run whose process is not what the supervisor started
}
TOKENS = {200: "ta", 201: "ta", 202: "ta", 203: "ta", 204: "ta", 205: "ta", 209: "ta", 300: "tb", 301: "tb"}
LIMITED = Permissions(publish=("Test.**",))


def fake_runs() -> tuple[IsolatedRuns, Run, Run]:
    runs = IsolatedRuns(FakeProcesses(TABLE, TOKENS), me=lambda: ME)
    a = runs.start("a", 200, "ta", LIMITED)
    b = runs.start("b", 300, "tb", Permissions.NONE)
    runs.start("spoof", 600, "ts", Permissions.ALL)
    return runs, a, b


def test_every_process_of_a_run_is_that_run_s_and_nothing_else_is() -> None:
    runs, a, b = fake_runs()
    owners = {pid: runs.owner(pid) for pid in [*TABLE, 999]}
    assert [pid for pid, found in owners.items() if found is a] == [200, 201, 202, 203, 204, 205]
    assert [pid for pid, found in owners.items() if found is b] == [300, 301]
    assert [pid for pid, found in owners.items() if found is Verdict.STRANGER] == [ME, 400, 401, 410]
    refused = [pid for pid, found in owners.items() if found is Verdict.REFUSE]
    # the orphan without a token and its child, the supervisor's own tool, a stranger with a run's token,
    # the spoofed run
    assert refused == [206, 207, 208, 209, 600]
    assert [pid for pid, found in owners.items() if found is Verdict.UNSEEN] == [500, 999]  # zombie, absent


class Reparenting(FakeProcesses):
    """Process 420's parent 421 ends while it is looked at: 420 is reparented to the supervisor."""

    def __init__(self) -> None:
        super().__init__({ME: (50, 50, 50), 420: (421, 420, 420)}, {})
        self.reads = 0

    def stat(self, pid: int) -> Proc | None:
        if pid == 420:
            self.reads += 1
            return Proc(420, 421 if self.reads == 1 else ME, 420, 420)
        return super().stat(pid)


def test_a_walk_starts_again_when_an_ancestor_ends_meanwhile() -> None:
    processes = Reparenting()
    runs = IsolatedRuns(processes, me=lambda: ME)
    # Seen again, it is under the supervisor now (the subreaper adopted it), without a token: nothing.
    assert runs.owner(420) is Verdict.REFUSE
    assert processes.reads == 3


def test_authorize_gives_a_run_s_processes_its_permissions_under_its_name_only() -> None:
    runs, a, _ = fake_runs()
    fallback_calls: list[int] = []

    def fallback(peer: PeerCredentials, name: str) -> Permissions:
        fallback_calls.append(peer.pid)
        return Permissions.ALL  # what default_authorize gives the supervisor's own uid

    def authorize(pid: int, name: str) -> Permissions | None:
        return runs.authorize(PeerCredentials(pid, os.getuid(), 0), name, fallback)

    for pid in (200, 201, 203, 204, 205):
        assert authorize(pid, "a") == LIMITED
        assert authorize(pid, "cli") is None  # never under another name, never the default
    for pid in (206, 207, 208, 209, 500, 600, 999):
        assert authorize(pid, "a") is None
        assert authorize(pid, "cli") is None
    assert fallback_calls == []
    assert authorize(400, "cli") == Permissions.ALL  # a stranger: the configured default decides
    assert fallback_calls == [400]
    # One we cannot see: another user's (hidepid) goes to the default, ours is gone: refused.
    assert runs.authorize(PeerCredentials(999, os.getuid() + 1, 0), "cli", fallback) == Permissions.ALL
    assert runs.authorize(PeerCredentials(0, os.getuid(), 0), "cli", fallback) is None  # another namespace
    assert fallback_calls == [400, 999]
    assert runs.authorize(PeerCredentials(400, 0, 0), "cli", None) is None  # and without one: refused
    runs.end(a)  # its process has ended: what is left of it gets nothing
    assert authorize(201, "a") is None
    runs.forget(a)
    assert authorize(201, "a") is None  # in the group of a run that is gone: not a stranger either


def test_members_of_a_run_and_the_zombies_that_are_ours_to_reap() -> None:
    table = FakeProcesses(TABLE, TOKENS)
    snapshot = table.snapshot()
    assert members(snapshot, 200, "ta", ME, table.token, adoptees_only=True) == {200, 201, 202, 203, 204, 205}
    assert members(snapshot, 300, "tb", ME, table.token, adoptees_only=True) == {300, 301}
    # without the subreaper, orphans go to init: every process with the token counts
    assert members(snapshot, 200, "ta", ME, table.token, adoptees_only=False) == {
        200,
        201,
        202,
        203,
        204,
        205,
        209,
    }
    zombies = {
        ME: (50, 50, 50),
        700: (ME, 298, 298, "Z"),  # reparented to us from another session: ours
        701: (ME, 50, 50, "Z"),  # in our session: maybe a fork of ours that its owner will reap
        702: (ME, 702, 702, "Z"),  # a session of its own: maybe ours (start_new_session), unless known
        703: (ME, 703, 703, "Z"),
        300: (ME, 300, 300, "Z"),  # a run's process: trio reaps it
        704: (1, 298, 298, "Z"),  # not our child at all
    }
    assert reapable(FakeProcesses(zombies, {}).snapshot(), ME, {703}, {300}) == [700, 703]


def test_the_subreaper_is_counted_and_restored() -> None:
    assert SUBREAPER.is_set() is False
    SUBREAPER.acquire()
    SUBREAPER.acquire()
    assert SUBREAPER.is_set()
    assert SUBREAPER.active
    SUBREAPER.release()
    assert SUBREAPER.is_set()  # one user left
    SUBREAPER.release()
    assert SUBREAPER.is_set() is False
    assert not SUBREAPER.active


def test_the_supervisor_s_authorize_asks_its_runs_then_the_configured_default() -> None:
    supervisor = Supervisor(
        [worker("iso", isolated=True)],
        authorize=lambda peer, name: Permissions.NONE if name == "cli" else None,
    )
    me = PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    assert supervisor.authorize(me, "cli") == Permissions.NONE  # not under the supervisor: a stranger
    assert supervisor.authorize(me, "iso") is None  # no run of "iso": the default decides (None)
    gone = PeerCredentials(2**22 + 12345, 0, 0)  # beyond pid_max: not there
    assert supervisor.authorize(gone, "cli") is None


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
    """``await ctx.bus.get(...)`` works on both clients: the portable read of a latest value."""
    import bus as bus_module

    topic = bus_module.Topic("Test.Fetched", int)
    local = bus_module.Bus()
    client = local.client("in-process")
    client.publish_nowait(topic, 7)
    assert (await client.get(topic)) == local.latest("Test.Fetched")[0]
    assert not await client.is_stale(topic)
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
                sample = await remote.get(topic)
                stale = await remote.is_stale(topic)
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


# -- the whole process tree --------------------------------------------------------------------------------

#: A grandchild: leaves a file named after its pid beside ``argv[1]`` and sleeps; ignores SIGTERM if told.
SLEEPER = """
import os, signal, sys, time
if sys.argv[2] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + "-" + str(os.getpid()), "w").close()
time.sleep(1000)
"""

#: Starts a daemon the classic way: fork, setsid, fork again; the daemon (a SLEEPER) is nobody's child.
DAEMON = """
import os, sys
pid = os.fork()
if pid:
    os.waitpid(pid, 0)
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""


@attrs.frozen
class Tree:
    #: What each run does once its grandchildren are up: run, crash (after 0.1 s), return, ignore_term (its
    #: grandchildren and the service itself ignore SIGTERM).
    behaviour: str = "run"
    #: How many runs behave so (later ones run).
    times: int = 1000


class Spawner(Service[Tree]):
    """Starts three grandchildren per run: one in its process group, one in a session of its own, and a
    double-forked daemon. Each leaves ``pids/RUN-KIND-PID`` in the state directory."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        runs_file = ctx.state_dir / "runs"
        run = int(runs_file.read_text()) + 1 if runs_file.exists() else 1
        runs_file.write_text(str(run))
        (ctx.state_dir / "pid").write_text(str(os.getpid()))
        behaviour = self.config.behaviour if run <= self.config.times else "run"
        ignore = "1" if behaviour == "ignore_term" else "0"
        pids = ctx.state_dir / "pids"
        pids.mkdir(exist_ok=True)
        python = sys.executable
        keep = [
            await trio.lowlevel.open_process([python, "-c", SLEEPER, f"{pids}/{run}-group", ignore]),
            await trio.lowlevel.open_process(
                [python, "-c", SLEEPER, f"{pids}/{run}-session", ignore], start_new_session=True
            ),
        ]
        await trio.run_process([python, "-c", DAEMON, SLEEPER, f"{pids}/{run}-daemon", ignore])
        while len(list(pids.glob(f"{run}-*"))) < 3:  # noqa: ASYNC110 -- files, not a trio event
            await trio.sleep(0.01)
        task_status.started()
        if behaviour == "ignore_term":
            await trio.sleep(0.1)  # the ready report goes out
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            (ctx.state_dir / "blocking").touch()
            time.sleep(1000)  # noqa: ASYNC251 -- blocks its event loop on purpose
        if behaviour == "crash":
            await trio.sleep(0.1)
            raise RuntimeError(f"run {run} crashed")
        if behaviour == "run":
            await trio.sleep_forever()
        del keep


def spawner(name: str = "tree", **kwargs: Any) -> ServiceSpec:
    tree = {k: kwargs.pop(k) for k in list(kwargs) if k in attrs.fields_dict(Tree)}
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("start_timeout", 10.0)
    return ServiceSpec(name, Spawner, Tree(**tree), isolated=True, **kwargs)


def grandchildren(state_dir: Path, run: int | None = None) -> dict[int, str]:
    """The grandchildren the service started (of one run, or all): pid -> RUN-KIND."""
    found = {}
    for path in (state_dir / "pids").glob("*-*-*" if run is None else f"{run}-*-*"):
        prefix, _, pid = path.name.rpartition("-")
        found[int(pid)] = prefix
    return found


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def survivors(tag: str) -> list[str]:
    """Every live process whose command line mentions ``tag``, and every zombie child of ours that nobody
    reaped: what must not be left once a service's run is over."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            left.append(f"{entry} (an unreaped zombie of ours)")
        elif state != "Z" and tag.encode() in cmdline:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            left.append(f"{entry}: {text[-80:]}")
    return left


async def test_stopping_an_isolated_service_stops_its_whole_process_tree(tmp_path: Path) -> None:
    with trio.fail_after(20):
        supervisor = Supervisor([spawner(stop_timeout=2.0)], state_dir=tmp_path)
        async with running(supervisor):
            found = grandchildren(tmp_path / "tree")
            assert sorted(found.values()) == ["1-daemon", "1-group", "1-session"]
            assert len(survivors(str(tmp_path))) == 3
            # The daemon's parent exited: it was reparented to us (the subreaper), not to init.
            (daemon,) = [pid for pid, kind in found.items() if kind == "1-daemon"]
            assert parent_of(daemon) == os.getpid()
            assert SUBREAPER.is_set()
        assert survivors(str(tmp_path)) == []
        assert row(supervisor, "tree").state is State.STOPPED
        assert not SUBREAPER.is_set()  # only while isolated services run


async def test_the_tree_is_stopped_when_the_service_crashes_or_returns(tmp_path: Path) -> None:
    with trio.fail_after(20):
        supervisor = Supervisor(
            [
                spawner("crash", behaviour="crash", times=1),
                spawner("done", behaviour="return", restart=Restart.TRANSIENT),
            ],
            state_dir=tmp_path,
        )
        async with running(supervisor):
            await until(lambda: row(supervisor, "crash").restarts == 1)
            await until(lambda: row(supervisor, "crash").state is State.RUNNING)
            await until(lambda: row(supervisor, "done").state is State.EXITED)
            left = survivors(str(tmp_path))
            assert len(grandchildren(tmp_path / "crash", 1)) == 3
            assert len(grandchildren(tmp_path / "done", 1)) == 3
            # Only the second run of "crash" has grandchildren now: the first run's and "done"'s are gone.
            assert sorted(left) == sorted(survivors(str(tmp_path / "crash" / "pids" / "2-")))
            assert len(left) == 3
            assert row(supervisor, "crash").last_error == "RuntimeError: run 1 crashed"
        assert survivors(str(tmp_path)) == []


async def test_the_tree_is_stopped_after_kill_9_of_the_service(tmp_path: Path) -> None:
    with trio.fail_after(20):
        supervisor = Supervisor([spawner()], state_dir=tmp_path)
        async with running(supervisor):
            os.kill(int((tmp_path / "tree" / "pid").read_text()), signal.SIGKILL)
            await until(lambda: row(supervisor, "tree").restarts == 1)
            await until(lambda: row(supervisor, "tree").state is State.RUNNING)
            assert len(grandchildren(tmp_path / "tree", 1)) == 3
            assert survivors(str(tmp_path / "tree" / "pids" / "1-")) == []
            assert len(survivors(str(tmp_path))) == 3  # the second run's
            assert row(supervisor, "tree").last_error == "killed by SIGKILL"
        assert survivors(str(tmp_path)) == []


async def test_three_restarts_leave_no_orphans(tmp_path: Path) -> None:
    with trio.fail_after(30):
        supervisor = Supervisor([spawner(behaviour="crash", times=3)], state_dir=tmp_path)
        async with running(supervisor):
            await until(lambda: row(supervisor, "tree").restarts == 3)
            await until(lambda: row(supervisor, "tree").state is State.RUNNING)
            assert len(grandchildren(tmp_path / "tree")) == 12
            assert len(survivors(str(tmp_path))) == 3  # the fourth run's
        assert survivors(str(tmp_path)) == []


async def test_a_tree_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    """The service blocks its event loop with SIGTERM ignored, and so do its grandchildren: SIGKILL for all
    once the stop timeout has run out."""
    with trio.fail_after(20):
        supervisor = Supervisor([spawner(behaviour="ignore_term", stop_timeout=0.5)], state_dir=tmp_path)
        async with running(supervisor):
            await until(lambda: (tmp_path / "tree" / "blocking").exists())
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        assert 0.5 <= took < 3.0
        assert survivors(str(tmp_path)) == []
        assert row(supervisor, "tree").state is State.STOPPED


# -- what a service's own processes may do on the bus ------------------------------------------------------

#: Connects to the bus socket ``argv[1]`` as ``argv[2]``, tries to publish Vehicle.Speed and to stop the
#: service "victim" through the control plane, and writes what happened to ``argv[3]`` as JSON.
HELPER = """
import json, os, sys, trio
from bus import BrokerRefusedError, PermissionDeniedError, Topic, connect_unix
from vwos._control import STOP, ServiceRequest

async def main(path, name, out):
    result = {"pid": os.getpid(), "token": "VWOS_RUN" in os.environ}
    try:
        async with connect_unix(path, name) as client:
            result["publish"] = list(client.permissions.publish)
            try:
                client.publish_nowait(Topic("Vehicle.Speed", float), 120.0)
                result["speed"] = "published"
            except PermissionDeniedError:
                result["speed"] = "denied"
            try:
                await client.call(STOP, ServiceRequest("victim", wait=0.0), timeout=5.0)
                result["stop"] = "stopped"
            except PermissionDeniedError:
                result["stop"] = "denied"
    except BrokerRefusedError:
        result["refused"] = True
    with open(out + ".tmp", "w") as file:
        json.dump(result, file)
    os.rename(out + ".tmp", out)

trio.run(main, *sys.argv[1:4])
"""

#: DAEMON, but the daemon's environment loses VWOS_RUN (DAEMON_SCRUB=1): a daemon that covers its tracks.
SCRUBBING_DAEMON = DAEMON.replace(
    'os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])',
    'env = {k: v for k, v in os.environ.items() if k != "VWOS_RUN"}\n'
    'os.execve(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]], env)',
)


@attrs.frozen
class Attack:
    socket: str


class Attacker(Service[Attack]):
    """Starts helpers that try the bus as the service and as "cli": in its process group, as a
    double-forked daemon, and as a daemon that clears its environment."""

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        out = ctx.state_dir / "results"
        out.mkdir(exist_ok=True)
        python = sys.executable
        async with trio.open_nursery() as nursery:
            for name in (ctx.name, "cli"):
                args = [HELPER, self.config.socket, name]
                nursery.start_soon(partial(trio.run_process, [python, "-c", *args, f"{out}/group-{name}"]))
                await trio.run_process([python, "-c", DAEMON, *args, f"{out}/daemon-{name}"])
                await trio.run_process([python, "-c", SCRUBBING_DAEMON, *args, f"{out}/scrubbed-{name}"])
            task_status.started()
            await trio.sleep_forever()


async def test_a_service_s_own_processes_get_at_most_its_permissions(tmp_path: Path) -> None:
    """An isolated service allowed to publish Test.** only starts processes that try to publish
    Vehicle.Speed and to stop another service through the control plane (which same-uid peers may, by
    the configured default): as the service they get its permissions, under any other name nothing;
    a daemon that cleared its environment, and a process the supervisor's process started, get nothing."""
    from vwos._control import CONTROL_ADMIN, ControlPlane, default_authorize

    socket_dir = Path(tempfile.mkdtemp(prefix="vwos-t-"))  # short: a socket path has ~100 bytes at most
    socket = socket_dir / "bus.sock"
    try:
        with trio.fail_after(30):
            supervisor = Supervisor(
                [
                    ServiceSpec(
                        "attacker",
                        Attacker,
                        Attack(str(socket)),
                        isolated=True,
                        permissions=Permissions(publish=("Test.**",)),
                        restart=Restart.TEMPORARY,
                    ),
                    worker("victim"),
                ],
                state_dir=tmp_path,
                socket_path=socket,
                authorize=default_authorize(),
            )
            results = tmp_path / "attacker" / "results"
            async with running(supervisor), trio.open_nursery() as nursery:
                await nursery.start(ControlPlane(supervisor).run)
                # a process the supervisor's own process starts (here: the test's), as "cli"
                args = [sys.executable, "-c", HELPER, str(socket), "cli", str(tmp_path / "ours")]
                await trio.run_process(args)
                await until(lambda: len(list(results.glob("*-*"))) == 6)
                # and the supervisor's process itself, a stranger: the configured default (admin, same uid)
                async with connect_unix(socket, "cli") as admin:
                    granted = admin.permissions
                victim = row(supervisor, "victim")
                nursery.cancel_scope.cancel()
        found = {path.name: json.loads(path.read_text()) for path in results.iterdir()}
        ours = json.loads((tmp_path / "ours").read_text())
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert victim.state is State.RUNNING
    assert granted == CONTROL_ADMIN
    for how in ("group", "daemon"):
        assert found[f"{how}-attacker"]["token"]
        assert found[f"{how}-attacker"]["publish"] == ["Test.**"], how  # the service's, no more
        assert found[f"{how}-attacker"]["speed"] == "denied", how
        assert found[f"{how}-attacker"]["stop"] == "denied", how
        assert found[f"{how}-cli"] == {"pid": found[f"{how}-cli"]["pid"], "token": True, "refused": True}, how
    for name in ("attacker", "cli"):
        assert not found[f"scrubbed-{name}"]["token"]
        assert found[f"scrubbed-{name}"].get("refused"), name
    assert ours.get("refused")


# -- what a child says -------------------------------------------------------------------------------------


@asynccontextmanager
async def captured_log(format: Literal["console", "json"]) -> AsyncIterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(format=format, level="info", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("format", ["json", "console"])
async def test_a_service_s_exception_reaches_the_log_with_its_whole_traceback(
    tmp_path: Path, format: Literal["console", "json"]
) -> None:
    with trio.fail_after(15):
        async with captured_log(format) as out:
            supervisor = Supervisor(
                [worker("x", isolated=True, behaviour="raise", restart=Restart.TEMPORARY)], state_dir=tmp_path
            )
            async with running(supervisor):
                await until(lambda: row(supervisor, "x").state is State.EXITED)
                status = row(supervisor, "x")
    assert status.last_error == "ValueError: boom"  # the status keeps the one-line summary
    text = out.getvalue()
    if format == "json":
        (failed,) = [r for line in text.splitlines() if (r := json.loads(line))["event"] == "service failed"]
        assert failed["service"] == "x"
        assert failed["level"] == "error"
        text = failed["exception"]
    assert "Traceback (most recent call last):" in text
    assert f'File "{__file__}"' in text
    assert ", in _explode\n" in text
    assert 'found["missing"]' in text  # the source line, as Python shows it
    assert "KeyError: 'missing'" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert text.rstrip().endswith("ValueError: boom") or "ValueError: boom\n" in text
    assert "ExceptionGroup" not in text  # the service's own exception, not the nursery's group around it


async def test_one_enormous_stderr_line_costs_bounded_memory(tmp_path: Path) -> None:
    """A child writes 64 MiB to stderr without a newline: the supervisor keeps 256 KiB of it and counts
    the rest, its memory does not follow the line, and the next line is relayed as usual."""
    with trio.fail_after(30):
        async with captured_log("json") as out:
            supervisor = Supervisor(
                [worker("x", isolated=True, behaviour="flood", restart=Restart.TEMPORARY)], state_dir=tmp_path
            )
            tracemalloc.start()
            try:
                async with running(supervisor):
                    await until(lambda: "after the flood" in out.getvalue(), poll=0.05)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    (flood,) = [r for r in records if r.get("event") == "stderr" and "dropped_bytes" in r]
    assert len(flood["line"]) == 256 * 1024
    assert flood["dropped_bytes"] == FLOOD - 256 * 1024
    assert [r["line"] for r in records if r.get("event") == "stderr" and "dropped_bytes" not in r] == [
        "after the flood"
    ]
    assert peak < 24 * 1024 * 1024, peak  # (it was above 128 MiB: the whole line, and copies of it)


class _Chunks(trio.abc.ReceiveStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        pass


async def test_lines_cut_long_lines_in_linear_time_and_bounded_memory() -> None:
    mib = b"x" * 1024 * 1024
    lines = _Lines(_Chunks([b"short\nlong:", *[mib] * 200, b"end\nlast without newline"]), 1000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        got = [await lines.next() for _ in range(4)]
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [
        (b"short", 0),
        (b"long:" + b"x" * 995, 200 * 1024 * 1024 + 3 - 995),
        (b"last without newline", 0),
        None,
    ]
    assert peak < 4 * 1024 * 1024, peak
    assert took < 5.0  # generous; quadratic buffering took minutes
    exact = _Lines(_Chunks([b"a" * 10 + b"\n" + b"b" * 11 + b"\n\n"]), 10)
    assert [await exact.next() for _ in range(4)] == [(b"a" * 10, 0), (b"b" * 10, 1), (b"", 0), None]


async def test_a_child_whose_supervisor_is_gone_stops_its_process_group(tmp_path: Path) -> None:
    """The supervisor is the test here: it starts the child as run_isolated does, then closes its stdin
    as a dying supervisor would. The child stops the service and its process group; the processes that
    left the group are the service manager's to stop (systemd kills the whole cgroup)."""
    from bus import Bus, serve_unix
    from vwos._isolation import ENV_SYS_PATH, ChildPayload, encode_payload

    socket_dir = Path(tempfile.mkdtemp(prefix="vwos-t-"))
    socket = socket_dir / "bus.sock"
    state = tmp_path / "tree"
    state.mkdir()
    payload = ChildPayload("tree", Spawner, Tree(), str(socket), str(state), None)
    paths = [p for p in sys.path if isinstance(p, str)]
    env = {**os.environ, ENV_SYS_PATH: json.dumps(paths), "PYTHONPATH": os.pathsep.join(paths)}
    found: dict[int, str] = {}
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(serve_unix, Bus(), socket, authorize=lambda p, n: Permissions.ALL)
                )
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "vwos._child"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
                assert process.stdin is not None
                assert process.stdout is not None
                await process.stdin.send_all(encode_payload(payload))
                lines = _Lines(process.stdout, 65536)
                while (line := await lines.next()) is not None and b'"ready"' not in line[0]:
                    pass
                found = grandchildren(state)
                await process.stdin.aclose()  # the supervisor is gone
                await process.wait()
                nursery.cancel_scope.cancel()
        alive = {kind for pid, kind in found.items() if is_alive(pid)}
        assert process.returncode == 0
        assert alive == {"1-session", "1-daemon"}  # the group's one is gone; these left the group
    finally:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(socket_dir, ignore_errors=True)


# -- the payload on the child's stdin, and relayed tracebacks -------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", EOFError, "no payload on stdin"),
        (b"\x00\x00\x00", EOFError, "no payload on stdin"),
        (b"\x00" * 7 + b"\x10" + b"short", EOFError, "truncated payload on stdin"),
        (
            len(pickle.dumps(3)).to_bytes(8, "big") + pickle.dumps(3),
            TypeError,
            "expected a ChildPayload, got int",
        ),
    ],
)
def test_a_payload_that_is_missing_cut_short_or_of_another_type_is_refused(
    data: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        decode_payload(io.BytesIO(data).read)


def test_a_relayed_exception_in_the_dict_tracebacks_shape_is_laid_out_as_python_does() -> None:
    assert _format_exception("Traceback ...\nKeyError: 'x'") == "Traceback ...\nKeyError: 'x'"
    shaped = [
        "not an entry",
        {
            "exc_type": "KeyError",
            "exc_value": "'x'",
            "frames": [{"filename": "svc.py", "lineno": 7, "name": "run"}, "not a frame"],
        },
    ]
    assert _format_exception(shaped) == (
        "Traceback (most recent call last):\n  File \"svc.py\", line 7, in run\nKeyError: 'x'"
    )
