"""The vcan harness (tests/vcan.py) against real SocketCAN: can-utils, python-can, link down/up, two links.

Each vcan test is one run (one User-Mode Linux boot where there is no native SocketCAN), so checks that can
share a run do. The link down/up test also pins down what python-can's socketcan bus does when the link goes
away, which the CAN gateway's reconnect logic relies on.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import vcan

ROOT = Path(__file__).resolve().parent.parent


def _lines(text: str, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]


# ------------------------------------------------------------------------------------------- with real vcan


@pytest.mark.vcan
def test_can_utils_on_two_interfaces(vcan_runner: vcan.VcanRunner) -> None:
    """cansend on vcan0 is seen by candump on vcan0; vcan1 is up too, and separate from vcan0."""
    result = vcan_runner(
        r"""
        set -euo pipefail
        ip -o link show type vcan | awk '{print "link:", $2, $3}'
        b0=$(vcan_receivers vcan0); b1=$(vcan_receivers vcan1)
        # Filters keep out traffic from anything else using the links (natively they are shared).
        candump -L -n 1 vcan0,123:7FF,456:7FF >"$TMPDIR/dump0" & p0=$!
        candump -L -n 1 vcan1,123:7FF,456:7FF >"$TMPDIR/dump1" & p1=$!
        vcan_wait_receivers vcan0 $((b0 + 1))
        vcan_wait_receivers vcan1 $((b1 + 1))
        cansend vcan1 456#CAFE       # first, so a candump on vcan0 that saw vcan1 would print it
        cansend vcan0 123#DEADBEEF
        wait $p0 $p1
        echo "dump0: $(cat "$TMPDIR/dump0")"
        echo "dump1: $(cat "$TMPDIR/dump1")"
        """,
        interfaces=("vcan0", "vcan1"),
        timeout=60,
    ).check()
    links = _lines(result.stdout, "link: ")
    assert any(line.startswith("vcan0: <") and ",UP" in line for line in links), result.describe()
    assert any(line.startswith("vcan1: <") and ",UP" in line for line in links), result.describe()
    [dump0] = _lines(result.stdout, "dump0: ")
    [dump1] = _lines(result.stdout, "dump1: ")
    assert dump0.split()[1:] == ["vcan0", "123#DEADBEEF"], result.describe()
    assert dump1.split()[1:] == ["vcan1", "456#CAFE"], result.describe()


@pytest.mark.vcan
def test_python_can_bus_talks_to_can_utils(vcan_runner: vcan.VcanRunner) -> None:
    """The test run's own interpreter and venv run in vcan; a python-can socketcan bus sends a frame that
    candump sees, and receives one that cansend sends."""
    script = textwrap.dedent(
        r"""
        set -euo pipefail
        base=$(vcan_receivers vcan0)
        candump -L -n 1 vcan0,1AB:7FF >"$TMPDIR/dump" &
        vcan_wait_receivers vcan0 $((base + 1))
        "$PYTHON" - <<'PY'
        import subprocess, sys
        import can, vwos

        print("prefix:", sys.prefix)
        print("vwos:", vwos.__file__)
        flt = [{"can_id": 0x18FEF100, "can_mask": 0x1FFFFFFF, "extended": True}]
        with can.Bus(interface="socketcan", channel="vcan0", can_filters=flt) as bus:
            bus.send(can.Message(arbitration_id=0x1AB, data=bytes(range(1, 9)), is_extended_id=False))
            subprocess.run(["cansend", "vcan0", "18FEF100#CAFEBABE"], check=True)
            msg = bus.recv(timeout=30)
            assert msg is not None, "nothing received"
            print("received:", hex(msg.arbitration_id), msg.is_extended_id, msg.data.hex(), msg.channel)
        PY
        wait
        echo "dump: $(cat "$TMPDIR/dump")"
        """
    )
    result = vcan_runner(script, timeout=90).check()
    assert _lines(result.stdout, "prefix: ") == [sys.prefix], result.describe()
    assert _lines(result.stdout, "vwos: ") == [str(ROOT / "vwos" / "__init__.py")], result.describe()
    assert _lines(result.stdout, "received: ") == ["0x18fef100 True cafebabe vcan0"], result.describe()
    [dump] = _lines(result.stdout, "dump: ")
    assert dump.split()[1:] == ["vcan0", "1AB#0102030405060708"], result.describe()


# Runs in the guest: how a python-can socketcan bus behaves when its link goes down and up again, or goes
# away. Prints one JSON object per observation: {"step": ..., "result": ...}.
_LINK_PROBE = r"""
import errno, json, subprocess, threading, time
import can

def ip(*args):
    subprocess.run(["ip", "link", *args], check=True)

def attempt(step, call):
    try:
        value = call()
        result = {"ok": None if value is None else str(value.data.hex())}
    except Exception as e:
        cause = e.__cause__
        result = {
            "raised": type(e).__name__,
            "error_code": getattr(e, "error_code", None),
            "cause": type(cause).__name__ if cause else None,
            "errno": errno.errorcode.get(getattr(cause, "errno", None) or -1),
            "message": str(e),
        }
    print(json.dumps({"step": step, "result": result}), flush=True)

def frame(n):
    return can.Message(arbitration_id=0x7A0 + n, data=bytes([n]), is_extended_id=False)

def peer_send(data):  # cansend as the peer; our bus filters on 0x7AA
    subprocess.run(["cansend", "vcan0", f"7AA#{data}"], check=True)

flt = [{"can_id": 0x7AA, "can_mask": 0x7FF, "extended": False}]

# A: one bus through down and up.
with can.Bus(interface="socketcan", channel="vcan0", can_filters=flt) as bus:
    attempt("A send while up", lambda: bus.send(frame(1)))
    ip("set", "vcan0", "down")
    attempt("A recv 1 while down", lambda: bus.recv(timeout=1))
    attempt("A recv 2 while down", lambda: bus.recv(timeout=0.3))
    attempt("A send 1 while down", lambda: bus.send(frame(2)))
    attempt("A send 2 while down", lambda: bus.send(frame(3)))
    ip("set", "vcan0", "up")
    attempt("A send after up", lambda: bus.send(frame(4)))
    peer_send("A1")
    attempt("A recv after up", lambda: bus.recv(timeout=30))

# B: a recv blocked in another thread when the link goes down.
with can.Bus(interface="socketcan", channel="vcan0", can_filters=flt) as bus:
    thread = threading.Thread(target=attempt, args=("B blocked recv", lambda: bus.recv(timeout=30)))
    thread.start()
    time.sleep(1)
    ip("set", "vcan0", "down")
    thread.join()
    ip("set", "vcan0", "up")

# C: down and up again with no call in between.
with can.Bus(interface="socketcan", channel="vcan0", can_filters=flt) as bus:
    ip("set", "vcan0", "down")
    ip("set", "vcan0", "up")
    attempt("C send 1 after down+up", lambda: bus.send(frame(5)))
    attempt("C send 2 after down+up", lambda: bus.send(frame(6)))
    peer_send("C1")
    attempt("C recv after down+up", lambda: bus.recv(timeout=30))

# D: a bus opened while the link is down.
ip("set", "vcan0", "down")
with can.Bus(interface="socketcan", channel="vcan0", can_filters=flt) as bus:
    attempt("D send while down", lambda: bus.send(frame(7)))
    ip("set", "vcan0", "up")
    attempt("D send after up", lambda: bus.send(frame(8)))

# E: the interface deleted and created again (a USB adapter unplugged and plugged in).
ip("add", "dev", "vcantmp", "type", "vcan")
ip("set", "vcantmp", "up")
with can.Bus(interface="socketcan", channel="vcantmp") as bus:
    ip("del", "vcantmp")
    attempt("E send after delete", lambda: bus.send(frame(9)))
    attempt("E recv after delete", lambda: bus.recv(timeout=0.3))
    ip("add", "dev", "vcantmp", "type", "vcan")
    ip("set", "vcantmp", "up")
    attempt("E send after re-create", lambda: bus.send(frame(10)))
    with can.Bus(interface="socketcan", channel="vcantmp") as reopened:
        attempt("E send on a reopened bus", lambda: reopened.send(frame(11)))
ip("del", "vcantmp")
print("probe: done")
"""


def _enetdown(message: str) -> dict[str, Any]:
    return {
        "raised": "CanOperationError",
        "error_code": errno.ENETDOWN,
        "cause": "OSError",
        "errno": "ENETDOWN",
        "message": f"{message}: Network is down [Error Code {errno.ENETDOWN}]",
    }


@pytest.mark.vcan
def test_link_down_and_up_seen_by_python_can(vcan_runner: vcan.VcanRunner, tmp_path: Path) -> None:
    """``ip link set vcan0 down`` / ``up`` work, and a python-can bus sees the link go down like this:

    - the first call after the link went down (recv or send, even one already blocked in recv) raises
      ``can.CanOperationError`` (error_code ENETDOWN, ``__cause__`` an OSError with errno ENETDOWN): the
      kernel's pending socket error, reported once;
    - while the link stays down, every send raises the same, but recv just times out (returns None);
    - after ``up`` the same bus sends and receives again: no reopen needed. But if nothing consumed the
      pending error while the link was down, the first call after ``up`` still raises it (once);
    - if the interface is deleted, send raises ENXIO and recv ENODEV; once it is created again, the old bus
      keeps failing (it is bound to the old interface index): only a reopened bus works.
    """
    probe = tmp_path / "link_probe.py"
    probe.write_text(_LINK_PROBE)
    result = vcan_runner(f'set -euo pipefail\n"$PYTHON" {probe}\n', timeout=90).check()
    assert _lines(result.stdout, "probe: ") == ["done"], result.describe()
    observations = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    seen = {o["step"]: o["result"] for o in observations}
    ok: dict[str, Any] = {"ok": None}
    recv_down = _enetdown("Error receiving")
    send_down = _enetdown("Failed to transmit")
    expected = {
        "A send while up": ok,
        "A recv 1 while down": recv_down,
        "A recv 2 while down": ok,
        "A send 1 while down": send_down,
        "A send 2 while down": send_down,
        "A send after up": ok,
        "A recv after up": {"ok": "a1"},
        "B blocked recv": recv_down,
        "C send 1 after down+up": send_down,
        "C send 2 after down+up": ok,
        "C recv after down+up": {"ok": "c1"},
        "D send while down": send_down,
        "D send after up": ok,
        "E send after delete": {
            "raised": "CanOperationError",
            "error_code": errno.ENXIO,
            "cause": "OSError",
            "errno": "ENXIO",
            "message": f"Failed to transmit: No such device or address [Error Code {errno.ENXIO}]",
        },
        "E recv after delete": {
            "raised": "CanOperationError",
            "error_code": errno.ENODEV,
            "cause": "OSError",
            "errno": "ENODEV",
            "message": f"Error receiving: No such device [Error Code {errno.ENODEV}]",
        },
        "E send after re-create": {
            "raised": "CanOperationError",
            "error_code": errno.ENXIO,
            "cause": "OSError",
            "errno": "ENXIO",
            "message": f"Failed to transmit: No such device or address [Error Code {errno.ENXIO}]",
        },
        "E send on a reopened bus": ok,
    }
    assert seen == expected, result.describe()


@pytest.mark.vcan
def test_script_environment_output_and_timeout(vcan_runner: vcan.VcanRunner, tmp_path: Path) -> None:
    """The script runs in ``cwd`` with ``env``, its stdout and stderr come back apart, and a script that
    outlives its timeout is stopped with exit status 124 (the guest's status reaches the host)."""
    result = vcan_runner(
        r"""
        echo "mode: $VCAN_MODE"
        echo "cwd: $PWD"
        echo "greeting: $GREETING"
        echo "interfaces: $VCAN_INTERFACES"
        echo "to stderr" >&2
        sleep 600
        echo "not reached"
        """,
        cwd=tmp_path,
        env={"GREETING": "hello 'vcan' $world"},
        timeout=3,
    )
    assert result.returncode == 124, result.describe()
    assert _lines(result.stdout, "mode: ") == [result.how], result.describe()
    assert _lines(result.stdout, "cwd: ") == [str(tmp_path)], result.describe()
    assert _lines(result.stdout, "greeting: ") == ["hello 'vcan' $world"], result.describe()
    assert _lines(result.stdout, "interfaces: ") == ["vcan0"], result.describe()
    assert "not reached" not in result.stdout
    assert result.stderr.strip() == "to stderr", result.describe()
    assert result.seconds < 3 + vcan.KILL_AFTER + vcan.BOOT_ALLOWANCE
    assert not result.workdir.exists() or os.environ.get("VWOS_VCAN_KEEP")


def _processes_mentioning(text: str) -> list[int]:
    """The pids of processes whose command line or environment contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            except OSError:
                continue
            if text.encode() in blob:
                found.append(int(proc.name))
    return found


@pytest.mark.vcan
def test_a_run_that_overruns_is_killed_whole(
    vcan_runner: vcan.VcanRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that outlives its hard limit (here a script that ignores TERM, with the allowance for the boot
    made negative) raises VcanError, and leaves no process behind: not UML, not the script."""
    monkeypatch.setattr(vcan, "BOOT_ALLOWANCE", 1 - vcan.KILL_AFTER)
    monkeypatch.setattr(vcan, "NATIVE_ALLOWANCE", 1 - vcan.KILL_AFTER)
    with pytest.raises(vcan.VcanError, match=r"did not finish within 3 s; killed") as caught:
        vcan_runner("trap '' TERM\nsleep 600\n", timeout=2)
    workdir = str(caught.value).partition("(work directory ")[2].partition(")")[0]
    assert workdir.startswith(tempfile.gettempdir()), str(caught.value)
    assert _processes_mentioning(workdir) == []
    assert not Path(workdir).exists()


# ------------------------------------------------------------------------------------- without booting vcan


def test_ci_session_problem() -> None:
    assert vcan.ci_session_problem(selected=0, ran=0) is None
    assert vcan.ci_session_problem(selected=3, ran=1) is None
    problem = vcan.ci_session_problem(selected=2, ran=0)
    assert problem is not None
    assert "2 vcan test(s) were selected but none ran" in problem


def test_ci_requires_vcan() -> None:
    assert vcan.ci_requires_vcan({"CI": "true"})
    assert vcan.ci_requires_vcan({"CI": "True"})
    assert not vcan.ci_requires_vcan({"CI": "false"})
    assert not vcan.ci_requires_vcan({})


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="bad interface name"):
        vcan.run_in_vcan("true", interfaces=("vcan0; reboot",))
    with pytest.raises(ValueError, match="bad environment variable name"):
        vcan.run_in_vcan("true", env={"A B": "x"})


def _pytest_this_file(test: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one test of this file in a child pytest, where vcan is made unavailable on purpose."""
    child_env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    child_env |= {"VWOS_VCAN_MODE": "uml", "VWOS_UML_KERNEL": "/nonexistent/linux.uml", **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"{__file__}::{test}"],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_vcan_a_vcan_test_is_skipped_with_the_reason() -> None:
    done = _pytest_this_file("test_can_utils_on_two_interfaces", {})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout, done.stdout
    assert "VWOS_VCAN_MODE=uml, but no /nonexistent/linux.uml" in done.stdout, done.stdout


def test_without_vcan_under_ci_a_vcan_test_fails_and_so_does_the_session() -> None:
    done = _pytest_this_file("test_can_utils_on_two_interfaces", {"CI": "true"})
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "1 error" in done.stdout, done.stdout
    assert "vcan tests must run under CI=true, but: VWOS_VCAN_MODE=uml" in done.stdout, done.stdout
    assert "1 vcan test(s) were selected but none ran against vcan" in done.stdout, done.stdout


def test_where_debian_has_no_user_mode_linux_the_reason_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """arm64 (the Raspberry Pi): no package to install, so the reason must not tell to apt-get it."""
    monkeypatch.setenv("VWOS_UML_KERNEL", "/nonexistent/linux.uml")
    arm = vcan.uml_available(machine="aarch64")
    assert arm is not None
    assert "Debian builds user-mode-linux for amd64 only, not for this aarch64 machine" in arm
    assert "natively only: as root, on a kernel with the vcan module" in arm
    assert "apt-get install" not in arm
    assert (
        vcan.uml_available(machine="x86_64") == "no /nonexistent/linux.uml (apt-get install user-mode-linux)"
    )


def test_without_user_mode_linux_on_arm64_a_vcan_test_is_skipped_with_that_reason() -> None:
    """What `./dev test` does on a Raspberry Pi without native vcan: the vcan tests skip, saying why."""
    wrapper = (
        "import platform, sys, pytest; platform.machine = lambda: 'aarch64'; "
        "sys.exit(pytest.main(sys.argv[1:]))"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    child_env |= {"VWOS_VCAN_MODE": "uml", "VWOS_UML_KERNEL": "/nonexistent/linux.uml"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            "-p",
            "no:cacheprovider",
            "-rs",
            f"{__file__}::test_can_utils_on_two_interfaces",
        ],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout, done.stdout
    assert "Debian builds user-mode-linux for amd64 only, not for this aarch64 machine" in done.stdout
