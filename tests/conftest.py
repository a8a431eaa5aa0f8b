"""Fixtures and hooks shared by the test suite. Keep each concern in its own delimited section."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import hypothesis
import pytest
import vcan  # tests/ is on sys.path (pytest's default "prepend" import mode)

# ==================================================================================== hypothesis
# No per-example deadline: property tests check behaviour, not speed (bench/ does), and under coverage on a
# loaded machine an example of a SQLite- or codec-heavy test can take longer than hypothesis's 200 ms,
# which failed CI runs that were otherwise green.
hypothesis.settings.register_profile("vwos", deadline=None)
hypothesis.settings.load_profile("vwos")

# ==================================================================================== vcan (real SocketCAN)
# A test that needs real SocketCAN is marked ``@pytest.mark.vcan`` and takes the ``vcan_runner`` fixture
# (tests/vcan.py's ``run_in_vcan``: natively, or inside User-Mode Linux). Where vcan cannot run, such a
# test is skipped with the reason, except under ``CI=true``, where it fails: CI must never skip them
# silently. Under CI the session also fails if vcan tests were selected and none of them ran against vcan.
_VCAN_RAN = ("vcan", "ran")  # a user property the fixture leaves on the report of a test it served


def skip_or_fail(reason: str, *, ci_message: str | None = None) -> NoReturn:
    """Skip the test for ``reason``; under CI (``CI=true``), where everything must run, fail it instead."""
    if vcan.ci_requires_vcan():
        pytest.fail(ci_message or reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def vcan_runner(request: pytest.FixtureRequest) -> vcan.VcanRunner:
    """``run_in_vcan``; skips the test (fails it under ``CI=true``) if vcan cannot run here."""
    if request.node.get_closest_marker("vcan") is None:
        pytest.fail("a test that uses vcan_runner must be marked @pytest.mark.vcan", pytrace=False)
    reason = vcan.vcan_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason, ci_message=f"vcan tests must run under CI=true, but: {reason}")
    request.node.user_properties.append(_VCAN_RAN)
    return vcan.run_in_vcan


class _VcanCiGuard:
    """Under CI: fail the session if vcan tests were selected but none of them ran against vcan."""

    def __init__(self) -> None:
        self.selected: set[str] = set()
        self.ran: set[str] = set()
        self.problem: str | None = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.selected.update(item.nodeid for item in session.items if item.get_closest_marker("vcan"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "vcan" not in report.keywords:
            return
        self.selected.add(report.nodeid)
        if report.when == "call" and report.passed and _VCAN_RAN in report.user_properties:
            self.ran.add(report.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if session.config.option.collectonly or hasattr(session.config, "workerinput"):
            return  # nothing runs; or an xdist worker, whose controller sees every report
        if not vcan.ci_requires_vcan():
            return
        self.problem = vcan.ci_session_problem(len(self.selected), len(self.ran))
        if self.problem is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.problem is not None:
            terminalreporter.section("vcan", sep="=", red=True, bold=True)
            terminalreporter.line(self.problem, red=True)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_VcanCiGuard(), "vwos-vcan-ci-guard")


# ============================================================================ end of vcan (real SocketCAN)


# ==================================================================================== ../shared (test data)
# Real-world data the project does not copy into itself (DESIGN.md): the VW MQB CAN database lives in
# ../shared beside the checkout, as it does in CI. Without it those tests are skipped with the reason,
# except under CI=true, where they fail.
SHARED = Path(__file__).resolve().parents[2] / "shared"
MQB_DBC = SHARED / "dbc" / "vw_mqb.dbc"


def require_shared_file(path: Path) -> Path:
    """``path`` if it exists; else skip the test (fail it under ``CI=true``) saying what is missing."""
    if not path.is_file():
        skip_or_fail(f"{path} is missing: these tests need the project's ../shared beside the checkout")
    return path


@pytest.fixture
def mqb_dbc() -> Path:
    """The VW MQB database from ../shared (opendbc's vw_mqb.dbc, loaded with strict=False)."""
    return require_shared_file(MQB_DBC)


# ======================================================================= mosquitto (a real MQTT broker)
# Tests of the uplink's MQTT transport talk to a real broker: Debian's mosquitto on free loopback ports,
# started per test with ``make_mosquitto()`` and always stopped afterwards (tests/mqtt_broker.py); the test
# PKI (a CA, server and client certificates, an unrelated CA) is made once per session with openssl.
# Without mosquitto, mosquitto-clients or openssl those tests are skipped with the reason, except under
# CI=true, where they fail.

import mqtt_broker  # noqa: E402 -- this section's helper module (tests/ is on sys.path)


def _require_mosquitto() -> None:
    reason = mqtt_broker.mosquitto_unavailable_reason()
    if reason is not None:
        skip_or_fail(f"MQTT tests need Debian's mosquitto, mosquitto-clients and openssl; {reason}")


@pytest.fixture(scope="session")
def mqtt_pki(tmp_path_factory: pytest.TempPathFactory) -> mqtt_broker.Certificates:
    """The session's test PKI (PEM files): CA, server (127.0.0.1, localhost) and client certificates."""
    _require_mosquitto()
    return mqtt_broker.make_certificates(tmp_path_factory.mktemp("mqtt-pki"), client_cn="car-1")


@pytest.fixture
def make_mosquitto(tmp_path: Path, mqtt_pki: mqtt_broker.Certificates) -> Iterator[mqtt_broker.BrokerFactory]:
    """``make_mosquitto(users=..., require_certificate=...)`` starts a broker; all stop after the test."""
    factory = mqtt_broker.BrokerFactory(tmp_path, mqtt_pki)
    try:
        yield factory
    finally:
        factory.close()


# ================================================================ end of mosquitto (a real MQTT broker)


# ========================================================================= the control socket of vwos run
# `vwos run` serves the bus and the control plane on $VWOS_SOCKET (docs/control.md). Every test gets a short
# path of its own (a Unix socket path must fit in 108 bytes), inherited by the processes it starts, so no
# test ever touches the machine's real /run/vwos/vwos.sock or another test's supervisor.
@pytest.fixture(autouse=True)
def _own_vwos_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="vws"))
    monkeypatch.setenv("VWOS_SOCKET", str(directory / "vwos.sock"))
    try:
        yield directory / "vwos.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ==================================================================================== a really full disk
# ``small_disk``: a 256 KiB tmpfs (tests/tmpfs.py), unmounted after the test; skipped where a tmpfs
# cannot be mounted, failed under ``CI=true``.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a really full disk), unmounted after the test."""
    import tmpfs

    reason = tmpfs.tmpfs_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason, ci_message=f"storage-fault tests must run under CI=true, but: {reason}")
    with tmpfs.small_tmpfs(tmp_path / "disk", 256 * 1024) as disk:
        yield disk


# ===================================================================== bus handles: in-process and socket
# A service sees a `bus.BusHandle`; the same test runs against every client, as anyio runs each test on
# every backend: a test that takes ``bus_side`` runs twice, with handles made in-process (``bus.client``)
# and over a Unix socket (``connect_unix`` to a broker on a tmp path serving the same ``bus_side.bus``).
import bus_sides  # noqa: E402 -- this section's helper module (tests/ is on sys.path)


@pytest.fixture(params=["in_process", "socket"])
async def bus_side(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[bus_sides.BusSide]:
    """The bus a test runs against, once in-process and once over the socket (see `bus_sides.BusSide`)."""
    async with bus_sides.open_bus_side(request.param, tmp_path / "bus.sock") as side:
        yield side


# ============================================================== end of bus handles: in-process and socket
