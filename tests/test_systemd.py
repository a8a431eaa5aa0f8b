"""sd_notify over a fake NOTIFY_SOCKET: what `vwos run` tells systemd, and the unit file we ship.

In-process tests run the supervisor and `tell_systemd` under trio's autojump MockClock (no real sleeps);
the end-to-end test runs ``vwos run`` as a real process with small real timings and hard timeouts.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog.testing
import trio
import trio.testing

from vwos import (
    BackoffPolicy,
    Service,
    ServiceContext,
    ServiceSpec,
    Supervisor,
    SupervisorGaveUp,
    SupervisorPolicy,
)
from vwos._supervisor import Phase
from vwos._systemd import SystemdNotifier, describe, tell_systemd

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "examples" / "systemd" / "vwos.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``, without blocking."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(5)


def fields(datagram: bytes) -> dict[str, str]:
    """An sd_notify datagram's ``KEY=value`` lines."""
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


# -- SystemdNotifier -------------------------------------------------------------------------------------


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    try:
        assert notifier.enabled
        assert notifier.watchdog_interval == 2.0
        assert notifier.ready("3 services running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 services running"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.watchdog("2 of 3 services running")
        assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=2 of 3 services running"
        assert notifier.status("starting")
        assert sock.recv(4096) == b"STATUS=starting"
        assert notifier.stopping("stopping")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    finally:
        notifier.close()


def test_abstract_namespace_address() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vwos-test-{os.getpid()}"
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"})
    try:
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        notifier.close()
        sock.close()


def test_outside_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("up")


def test_a_relative_notify_socket_is_ignored(tmp_path: Path) -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": "notify"}).enabled


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_interval is None


def test_a_vanished_notify_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.enabled
        assert not notifier.ready("up")
    finally:
        notifier.close()


def test_a_notify_socket_nobody_reads_never_blocks(notify_socket: tuple[str, socket.socket]) -> None:
    """The queue of a datagram socket is short (10): once it is full, messages are dropped, not waited on
    (the notifier runs on the event loop)."""
    path, sock = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(notifier.watchdog() for _ in range(100)))
    try:
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "sending blocked"
    finally:
        sock.close()  # unblocks a blocked sender, if the assertion above failed
        sender.join()
        notifier.close()
    assert results[0]
    assert not results[-1]


def test_unset_environment_hides_the_socket_from_child_processes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier(unset_environment=True)
    assert notifier.enabled
    assert notifier.watchdog_interval == 1.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


# -- the supervisor under systemd, in mock time --------------------------------------------------------


@attrs.frozen
class Plan:
    """What a test service does: each incarnation is ready ``ready_after`` s after it starts; the first
    ``fail_starts`` incarnations raise instead; with ``crash_after`` every incarnation raises that long
    after being ready; when stopped, it takes ``linger`` s to finish."""

    ready_at: list[float] = attrs.field(factory=list)  # mock times at which an incarnation was ready
    ready_after: float = 0.0
    fail_starts: int = 0
    crash_after: float | None = None
    linger: float = 0.0
    starts: list[float] = attrs.field(factory=list)


class Planned(Service[Plan]):
    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        plan = self.config
        plan.starts.append(trio.current_time())
        await trio.sleep(plan.ready_after)
        if len(plan.starts) <= plan.fail_starts:
            raise RuntimeError("not today")
        plan.ready_at.append(trio.current_time())
        task_status.started()
        try:
            if plan.crash_after is not None:
                await trio.sleep(plan.crash_after)
                raise RuntimeError("crashed")
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(plan.linger)


NO_JITTER = BackoffPolicy(initial=2.0, multiplier=1.0, jitter=0.0)


def planned(name: str, plan: Plan, **kwargs: Any) -> ServiceSpec:
    return ServiceSpec(name, Planned, plan, backoff=NO_JITTER, **kwargs)


class Recorder(SystemdNotifier):
    """A notifier on the fake notify socket that reads every message back off it as it is sent (so that
    its queue never fills) and notes it with its mock time."""

    def __init__(self, notify_socket: tuple[str, socket.socket], watchdog_usec: int = 2_000_000) -> None:
        path, self._listener = notify_socket
        super().__init__({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(watchdog_usec)})
        self.sent: list[tuple[float, dict[str, str]]] = []

    def notify(self, **fields_: str | int) -> bool:
        assert super().notify(**fields_), "the fake notify socket is gone"
        (datagram,) = drain(self._listener)
        self.sent.append((trio.current_time(), fields(datagram)))
        assert self.sent[-1][1] == {key: str(value) for key, value in fields_.items()}
        return True

    def times(self, key: str) -> list[float]:
        return [t for t, f in self.sent if key in f]


@pytest.fixture
def recorder(notify_socket: tuple[str, socket.socket]) -> Iterator[Callable[[int], Recorder]]:
    """``recorder(watchdog_usec)``: a `Recorder` on the fake notify socket, closed after the test."""
    made: list[Recorder] = []

    def make(watchdog_usec: int = 2_000_000) -> Recorder:
        made.append(Recorder(notify_socket, watchdog_usec))
        return made[-1]

    yield make
    for notifier in made:
        notifier.close()


async def run_until(supervisor: Supervisor, notifier: SystemdNotifier, stop_at: float) -> None:
    """Run ``supervisor`` with `tell_systemd` (started first, as ``vwos run`` does), shut it down at
    ``stop_at`` mock seconds."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tell_systemd, supervisor, notifier)
        nursery.start_soon(supervisor.run)
        await trio.sleep_until(stop_at)
        supervisor.shutdown("test over")


async def test_ready_only_once_the_slow_service_is_up_then_watchdog_then_stopping(
    autojump_clock: trio.testing.MockClock, recorder: Callable[[int], Recorder]
) -> None:
    quick, slow, last = Plan(), Plan(ready_after=5.0), Plan(ready_after=0.5)
    supervisor = Supervisor(
        [planned("quick", quick), planned("slow", slow, after=("quick",)), planned("last", last)]
    )
    notifier = recorder(2_000_000)  # WatchdogSec=2: WATCHDOG=1 every second
    await run_until(supervisor, notifier, stop_at=15.0)

    assert slow.ready_at == [5.0]
    assert last.ready_at == [0.5]  # "last" starts after nothing: at once, beside "quick"
    first = notifier.sent[0]
    assert first == (0.0, {"STATUS": "starting 3 services"})
    (ready_time,) = notifier.times("READY")
    assert ready_time == 5.0  # not a moment before the slow service is up
    ready = next(f for _, f in notifier.sent if "READY" in f)
    assert ready == {"READY": "1", "STATUS": "3 of 3 services running"}
    pings = notifier.times("WATCHDOG")
    assert pings[0] == ready_time  # nothing before READY=1: the watchdog only counts from there
    assert len(pings) == 10  # 5, 6, ..., 14
    assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(pings))
    assert notifier.sent[-1] == (15.0, {"STOPPING": "1", "STATUS": "stopping: test over"})
    assert phase_of(supervisor) == "stopped"


async def test_a_service_that_fails_to_start_does_not_hold_ready_back(
    autojump_clock: trio.testing.MockClock, recorder: Callable[[int], Recorder]
) -> None:
    # READY=1 once the first start of every service has been decided: a service whose first start failed
    # is in its restart policy's hands, and must not keep systemd from seeing vwos up (it would kill it).
    flaky = Plan(ready_after=1.0, fail_starts=1)  # raises at t=1, backoff 2 s, restarted at 3, ready at 4
    supervisor = Supervisor([planned("steady", Plan()), planned("flaky", flaky)])
    notifier = recorder(2_000_000)
    await run_until(supervisor, notifier, stop_at=6.0)

    assert flaky.starts == [0.0, 3.0]
    assert flaky.ready_at == [4.0]
    assert notifier.times("READY") == [1.0]
    ready = next(f for _, f in notifier.sent if "READY" in f)
    assert ready["STATUS"] == "1 of 2 services running (flaky: backoff)"
    assert min(notifier.times("WATCHDOG")) == 1.0
    statuses = [f["STATUS"] for _, f in notifier.sent if "STATUS" in f]
    assert "2 of 2 services running, 1 restart" in statuses  # the STATUS follows the restart


async def test_told_to_stop_while_starting_never_ready(
    autojump_clock: trio.testing.MockClock, recorder: Callable[[int], Recorder]
) -> None:
    slow = Plan(ready_after=10.0)
    supervisor = Supervisor([planned("slow", slow)])
    notifier = recorder(2_000_000)
    await run_until(supervisor, notifier, stop_at=3.0)

    assert slow.ready_at == []
    assert notifier.sent == [
        (0.0, {"STATUS": "starting 1 service"}),
        (3.0, {"STOPPING": "1", "STATUS": "stopping: test over"}),
    ]


async def test_giving_up_stops_the_watchdog_and_says_why(
    autojump_clock: trio.testing.MockClock, recorder: Callable[[int], Recorder]
) -> None:
    steady = Plan(linger=3.0)  # stopping it takes 3 s
    crashy = Plan(crash_after=1.0)  # ready at 0, raises at 1; restarted at 3, raises at 4: gives up
    supervisor = Supervisor(
        [planned("steady", steady), planned("crashy", crashy, critical=True)],
        policy=SupervisorPolicy(intensity=1, period=60.0),
    )
    notifier = recorder(500_000)  # WATCHDOG=1 every 0.25 s
    with pytest.RaisesGroup(SupervisorGaveUp):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tell_systemd, supervisor, notifier)
            await supervisor.run()
    assert trio.current_time() == 7.0  # gave up at 4, then stopped "steady" for 3 s

    assert crashy.ready_at == [0.0, 3.0]
    assert notifier.times("READY") == [0.0]
    stopping_time, stopping = notifier.sent[-1]  # the last word: no WATCHDOG=1 while it stops
    assert stopping_time == 4.0
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("stopping: gave up: ")
    assert "crashy" in stopping["STATUS"]
    pings = notifier.times("WATCHDOG")
    assert any(1.0 < t < 3.0 for t in pings)  # a service in backoff is no reason to stop the watchdog
    statuses = [f["STATUS"] for _, f in notifier.sent if "WATCHDOG" in f and "STATUS" in f]
    assert statuses[0] == "1 of 2 services running (crashy: backoff)"  # the STATUS follows the changes
    assert statuses[-1] == "2 of 2 services running, 1 restart"
    assert phase_of(supervisor) == "stopped"
    assert supervisor.stop_reason is not None
    assert supervisor.stop_reason.startswith("gave up: ")


async def test_an_unresponsive_supervisor_gets_no_watchdog_pings(
    autojump_clock: trio.testing.MockClock,
    recorder: Callable[[int], Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor = Supervisor([planned("quick", Plan())])
    real_probe = supervisor.probe

    async def stuck_after_5s() -> bool:
        if trio.current_time() >= 5.0:
            await trio.sleep_forever()  # what a probe of a stuck event loop does: no answer
        return await real_probe()

    monkeypatch.setattr(supervisor, "probe", stuck_after_5s)
    notifier = recorder(2_000_000)
    with structlog.testing.capture_logs() as logs:
        await run_until(supervisor, notifier, stop_at=12.0)

    pings = notifier.times("WATCHDOG")
    assert pings == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert notifier.sent[-1][1]["STOPPING"] == "1"
    withheld = [e for e in logs if e["event"] == "supervisor unresponsive: WATCHDOG=1 withheld"]
    assert len(withheld) >= 6  # one for each missed ping between 5 and 12 s


def phase_of(supervisor: Supervisor) -> Phase:
    """``supervisor.phase``, read afresh (mypy would keep the value an earlier assert narrowed it to)."""
    return supervisor.phase


async def test_probe_and_phases(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor([planned("slow", Plan(ready_after=2.0))])
    assert phase_of(supervisor) == "new"
    assert not await supervisor.probe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(1.0)
        assert phase_of(supervisor) == "starting"
        assert not await supervisor.probe()
        await supervisor.wait_phase("up")
        assert trio.current_time() == 2.0
        assert phase_of(supervisor) == "up"
        assert await supervisor.probe()
        assert describe(supervisor) == "1 of 1 service running"
        supervisor.shutdown("enough")
        assert phase_of(supervisor) == "stopping"
        assert supervisor.stop_reason == "enough"
        assert not await supervisor.probe()
        await supervisor.wait_phase("stopped")
    assert phase_of(supervisor) == "stopped"
    with pytest.raises(RuntimeError, match="runs once"):
        await supervisor.run()


async def test_a_probe_pending_when_the_supervisor_is_cancelled_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor([planned("quick", Plan())])
    scope = trio.CancelScope()

    async def run_supervisor(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await supervisor.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_supervisor)
        scope.cancel()
        assert phase_of(supervisor) == "up"  # the cancellation has not reached its event loop yet
        with trio.fail_after(1):
            assert not await supervisor.probe()  # answered while it stops, not left hanging
    assert phase_of(supervisor) == "stopped"
    assert supervisor.stop_reason == "cancelled"


# -- end to end: `vwos run` under a fake systemd ---------------------------------------------------------

PLUGINS = """
import json
import os
import time

import trio

from vwos import Service

DELAY = {delay!r}


class Quick(Service[None]):
    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep_forever()


class Slow(Service[None]):
    '''Ready DELAY seconds after it starts; notes when (CLOCK_MONOTONIC, shared by all processes) and
    whether it saw systemd's variables.'''

    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        await trio.sleep(DELAY)
        seen = {{"ready_at": time.monotonic(), "pid": os.getpid(), "env": os.environ.get("NOTIFY_SOCKET")}}
        (ctx.state_dir / "ready.json").write_text(json.dumps(seen))
        task_status.started()
        await trio.sleep_forever()
"""

CONFIG = """
[supervisor]
python_path = ["."]
state_dir = "state"

[services.quick]
plugin = "sd_plugins:Quick"

[services.slow]
plugin = "sd_plugins:Slow"
after = ["quick"]
isolated = true      # a child process: it must not inherit NOTIFY_SOCKET

[services.last]
plugin = "sd_plugins:Quick"
after = ["slow"]
"""

#: The slow service's start-up, and systemd's WatchdogSec (WATCHDOG=1 every half of it).
SLOW_DELAY = 1.0
WATCHDOG_USEC = 400_000
#: Every wait on the real process ends by then.
HARD_TIMEOUT = 30.0


@pytest.mark.parametrize("address", ["path", "abstract"])
def test_vwos_run_under_a_fake_systemd(tmp_path: Path, address: str) -> None:
    (tmp_path / "sd_plugins.py").write_text(textwrap.dedent(PLUGINS.format(delay=SLOW_DELAY)))
    config = tmp_path / "vwos.toml"
    config.write_text(CONFIG)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if address == "path":
        notify_address = str(tmp_path / "notify")
        sock.bind(notify_address)
    else:
        name = f"vwos-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        notify_address = f"@{name}"
    env = {**os.environ, "NOTIFY_SOCKET": notify_address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    received: list[tuple[float, dict[str, str]]] = []
    deadline = time.monotonic() + HARD_TIMEOUT

    def receive_until(key: str, count: int = 1) -> None:
        while sum(1 for _, f in received if key in f) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {key} within {HARD_TIMEOUT} s: {received}"
            sock.settimeout(remaining)
            try:
                datagram = sock.recv(4096)
            except TimeoutError:
                continue
            received.append((time.monotonic(), fields(datagram)))

    stderr = (tmp_path / "stderr").open("w+")
    spawned = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwos", "run", str(config), "--log-format", "json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )
    try:
        receive_until("READY")
        receive_until("WATCHDOG", count=3)
        proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING")
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        # It has exited: whatever it sent after STOPPING=1 is waiting on the socket now.
        received.extend((time.monotonic(), fields(datagram)) for datagram in drain(sock))
    finally:
        proc.kill()
        proc.wait()
        sock.close()
        stderr.seek(0)
        log = stderr.read()
        stderr.close()
    assert returncode == 0, log
    assert stopping_is_the_last_word(received)

    seen = json.loads((tmp_path / "state" / "slow" / "ready.json").read_text())
    assert seen["pid"] != proc.pid  # it really ran in a child process ...
    assert seen["env"] is None  # ... which did not inherit the notify socket
    keys = [next(iter(f)) for _, f in received]
    assert received[0][1] == {"STATUS": "starting 3 services"}
    ready_time, ready = next((t, f) for t, f in received if "READY" in f)
    assert ready == {"READY": "1", "STATUS": "3 of 3 services running"}
    assert ready_time >= seen["ready_at"]  # READY=1 only after the slow service was ready
    assert ready_time - spawned >= SLOW_DELAY
    assert keys.index("READY") < keys.index("WATCHDOG")  # no ping before READY=1
    # WATCHDOG=1 kept coming (their cadence is checked in mock time above, not on this shared machine).
    assert keys.count("WATCHDOG") >= 3
    stopping = received[-1][1]  # STOPPING=1 is the last word, no ping after it
    assert stopping == {"STOPPING": "1", "STATUS": "stopping: SIGTERM received"}
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert events[-1] == "supervisor stopped"


def stopping_is_the_last_word(received: list[tuple[float, dict[str, str]]]) -> bool:
    """One STOPPING=1, and nothing after it (``received`` holds everything the process sent)."""
    keys = [next(iter(f)) for _, f in received]
    return keys.count("STOPPING") == 1 and keys[-1] == "STOPPING"


# -- the example unit file ---------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> every value given to it, in order (systemd allows repeated
    keys: ``SystemCallFilter=`` lines add up, an empty value resets). Comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: a setting before any section"
        key, equals, value = line.partition("=")
        assert equals, f"line {number}: not KEY=value: {raw!r}"
        assert key.strip().isidentifier(), f"line {number}: not a setting's name: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    """The value of a setting given once."""
    assert key in section, f"{key}= is missing"
    (value,) = section[key]
    return value


def test_the_unit_file_runs_vwos_as_a_hardened_notify_service() -> None:
    unit = read_unit(UNIT)
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "WatchdogSec").rstrip("s").isdigit()
    assert one(service, "Restart") == "on-failure"
    argv = shlex.split(one(service, "ExecStart"))
    assert Path(argv[0]).is_absolute()
    assert Path(argv[0]).name == "vwos"
    assert argv[1:] == ["run", "/etc/vwos/vwos.toml", "--socket", "/run/vwos/vwos.sock"]
    assert one(service, "RuntimeDirectory") == "vwos"  # /run/vwos, for the socket
    assert one(service, "StateDirectory") == "vwos"
    assert one(service, "User") not in ("", "root", "0")
    for hardening in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one(service, hardening) == "yes", hardening
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "CapabilityBoundingSet") == ""
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_CAN",
        "AF_NETLINK",
        "AF_INET",
        "AF_INET6",
    }
    assert service["SystemCallFilter"][0] == "@system-service"
    assert all(value.startswith("~") for value in service["SystemCallFilter"][1:])  # then only deny lists
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_file(tmp_path: Path) -> None:
    """systemd's own parser accepts every line (the ExecStart binary pointed at this venv's vwos)."""
    vwos = Path(sys.executable).parent / "vwos"
    if not vwos.exists():
        pytest.skip("the vwos console script is not installed beside this interpreter")
    text = UNIT.read_text()
    argv = shlex.split(one(read_unit(UNIT)["Service"], "ExecStart"))
    unit = tmp_path / "vwos.service"
    unit.write_text(text.replace(f"ExecStart={argv[0]} ", f"ExecStart={vwos} "))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown or misspelt settings are warnings, not errors: none of those either.
    assert "Unknown key" not in output, output
    assert "Unknown lvalue" not in output, output
    assert "Failed to parse" not in output, output
