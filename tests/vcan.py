"""Run shell scripts against real SocketCAN virtual CAN (``vcan0``, ``vcan1``, ...), with can-utils as peers.

Natively when this kernel has SocketCAN and we are root (the harness creates the interfaces and brings them
up); otherwise inside User-Mode Linux: Debian's ``user-mode-linux`` package ships a kernel that runs as an
ordinary process, with the CAN and vcan modules. It boots with this machine's whole filesystem as its root
(hostfs), so the guest runs this very interpreter and virtualenv, and can-utils, unchanged. A boot takes
about two seconds; system calls inside the guest are slow, so use it to prove behaviour, not to time it.

Public names
    `run_in_vcan` runs a bash script with the interfaces up and returns a `VcanResult`.
    `vcan_unavailable_reason` says why vcan tests cannot run here (``None`` when they can); the
    ``vcan_runner`` fixture in ``conftest.py`` skips (or, under ``CI=true``, fails) with it.
    `native_vcan_available` and `uml_available` are its two halves. `VcanError` is raised when the harness
    itself fails (the guest did not boot, or did not finish in time); a failing script is not an error: read
    ``returncode``. `VcanRunner` is the type of the fixture (``run_in_vcan`` itself).
CI
    `ci_requires_vcan` (``CI=true``) and `ci_session_problem` are the policy ``conftest.py`` applies: in CI
    the vcan tests never skip, and a session that selected some but ran none fails.

Inside the script
    ``$PYTHON`` is this interpreter (its ``bin`` directory is first on ``PATH``, so ``python`` works too);
    the working directory is the caller's (``cwd``); ``$VCAN_INTERFACES`` lists the interfaces;
    ``$VCAN_MODE`` is ``native`` or ``uml``; ``$TMPDIR`` is scratch space (in the guest, a private tmpfs).
    The guest sees the host's whole file system, so files travel both ways through any host path that is not
    under /proc, /sys, /dev or /run (the guest mounts its own there), e.g. the test's ``tmp_path``. Two bash
    functions are defined: ``vcan_receivers IFACE`` prints how many CAN receivers are registered on IFACE,
    and ``vcan_wait_receivers IFACE N [SECONDS]`` waits until there are at least N, so a script can start
    ``candump &`` and send only once it listens::

        base=$(vcan_receivers vcan0)
        candump -n 1 vcan0 >"$TMPDIR/dump" &
        vcan_wait_receivers vcan0 $((base + 1))
        cansend vcan0 123#DEADBEEF
        wait

Environment knobs
    ``VWOS_VCAN_MODE`` = ``auto`` (default: native when possible, else UML), ``native`` or ``uml``;
    ``VWOS_VCAN_KEEP=1`` keeps the work directory (its path is in `VcanResult.workdir`);
    ``VWOS_UML_KERNEL`` is the UML kernel (default ``/usr/bin/linux.uml``; its modules must be in
    ``/usr/lib/uml/modules/<its version>``);
    ``VWOS_UML_TMPDIR`` is where User-Mode Linux keeps the guest's memory file (default: ``/dev/shm`` when
    it is tmpfs, large enough and not ``noexec``, else the temporary directory).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import attrs

__all__ = [
    "VcanError",
    "VcanResult",
    "VcanRunner",
    "ci_requires_vcan",
    "ci_session_problem",
    "native_vcan_available",
    "run_in_vcan",
    "uml_available",
    "vcan_unavailable_reason",
]

UML_KERNEL = Path("/usr/bin/linux.uml")  # VWOS_UML_KERNEL overrides it
UML_MODULES = Path("/usr/lib/uml/modules")
#: Kernel modules loaded in the guest (modprobe pulls in their dependencies: can, can-dev).
UML_MODULES_TO_LOAD = ("can-raw", "can-bcm", "vcan")
#: The guest mounts its own file systems here, hiding the host's: host paths under them are invisible.
GUEST_PRIVATE_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/run"))
#: How long a boot, the module loading and the power-off may take beyond the script's own timeout.
BOOT_ALLOWANCE = 60.0
#: The same for a native run (only process start-up and clean-up).
NATIVE_ALLOWANCE = 30.0
#: Grace between ``timeout``'s TERM and its KILL, for the script's processes.
KILL_AFTER = 5
CAN_UTILS = ("cansend", "candump", "cangen")
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Mode = Literal["native", "uml"]

_IFACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEM_RE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)

# Bash functions for the scripts (sourced through BASH_ENV). Receivers are counted in /proc/net/can, where
# every CAN_RAW/BCM filter registered on a device is one line naming the device.
_SCRIPT_LIB = r"""
vcan_receivers() {
    cat /proc/net/can/rcvlist_* 2>/dev/null | awk -v d="$1" '$1 == d { n++ } END { print n + 0 }'
}
vcan_wait_receivers() {
    local deadline=$(( $(date +%s) + ${3:-30} ))
    while [ "$(vcan_receivers "$1")" -lt "$2" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "vcan_wait_receivers: fewer than $2 receivers on $1 after ${3:-30} s" >&2
            return 1
        fi
        sleep 0.05
    done
}
"""


class VcanError(RuntimeError):
    """The harness failed: vcan is unavailable, the guest did not boot or did not finish in time."""


@attrs.frozen
class VcanResult:
    """What a script did. ``returncode`` 124 means the script ran out of time (coreutils ``timeout``; 137
    if it ignored TERM and had to be killed)."""

    how: Mode
    returncode: int
    stdout: str
    stderr: str
    #: The guest's kernel console and set-up log ("" natively): where to look when something is odd.
    console: str
    #: Wall-clock seconds, boot and power-off included.
    seconds: float
    #: The work directory (already deleted unless ``VWOS_VCAN_KEEP=1``).
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """Everything about the run, for an assertion message."""
        parts = [f"vcan script ({self.how}, {self.seconds:.1f} s) exited with {self.returncode}"]
        parts.append(f"--- stdout ---\n{self.stdout.rstrip()}")
        parts.append(f"--- stderr ---\n{self.stderr.rstrip()}")
        if self.console:
            parts.append(f"--- console (last lines) ---\n{_tail(self.console, 40)}")
        return "\n".join(parts)

    def check(self) -> VcanResult:
        """Return self if the script succeeded, else raise AssertionError with `describe`."""
        if not self.ok:
            raise AssertionError(self.describe())
        return self


# --------------------------------------------------------------------------------------------- availability


def _mode_setting() -> str:
    mode = os.environ.get("VWOS_VCAN_MODE", "auto").strip().lower() or "auto"
    if mode not in {"auto", "native", "uml"}:
        raise VcanError(f"VWOS_VCAN_MODE={mode!r}: expected auto, native or uml")
    return mode


@functools.cache
def _native_reason() -> str | None:
    """Why native vcan cannot be used here (None when it can); may create vcan0 when root."""
    if not hasattr(socket, "AF_CAN"):
        return "this Python has no socket.AF_CAN"
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except OSError as e:
        return f"no SocketCAN in this kernel (AF_CAN socket: {e.strerror})"
    try:
        _ensure_native_interface("vcan0", bring_up=False)
    except VcanError as e:
        return str(e)
    return None


def native_vcan_available() -> bool:
    """True if this kernel has SocketCAN (an AF_CAN socket can be made) and ``vcan0`` exists or was just
    created (``ip link add``, as root)."""
    return _native_reason() is None


def _interface_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _ensure_native_interface(name: str, *, bring_up: bool) -> None:
    if not _interface_exists(name):
        if os.geteuid() != 0:
            raise VcanError(f"no interface {name}, and only root can create it")
        if shutil.which("ip") is None:
            raise VcanError(f"no interface {name}, and no `ip` (iproute2) to create it")
        if shutil.which("modprobe"):
            subprocess.run(["modprobe", "vcan"], capture_output=True, check=False, timeout=30)
        done = subprocess.run(
            ["ip", "link", "add", "dev", name, "type", "vcan"], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0 and not _interface_exists(name):
            raise VcanError(f"cannot create {name}: ip link add: {done.stderr.strip()}")
    if bring_up:
        done = subprocess.run(["ip", "link", "set", "up", name], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise VcanError(f"cannot bring {name} up: {done.stderr.strip()}")


def _uml_kernel() -> Path:
    return Path(os.environ.get("VWOS_UML_KERNEL") or UML_KERNEL)


@functools.cache
def _uml_kernel_version(kernel: Path) -> str:
    """The version of the UML kernel (``linux.uml --version`` prints it and exits at once)."""
    try:
        done = subprocess.run(
            [str(kernel), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VcanError(f"{kernel} --version failed: {e}") from e
    version = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not version or not re.fullmatch(r"[0-9][\w.+~-]*", version[0]):
        raise VcanError(f"{kernel} --version printed {done.stdout!r} (exit {done.returncode})")
    return version[0]


def _parse_mem(mem: str) -> int:
    m = _MEM_RE.fullmatch(mem.strip())
    if m is None:
        raise ValueError(f"mem={mem!r}: expected a size such as 512M or 1G")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def _memory_dir_problem(path: Path, size: int) -> str | None:
    try:
        st = os.statvfs(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if st.f_flag & os.ST_NOEXEC:
        return f"{path} is mounted noexec"
    if st.f_flag & os.ST_RDONLY or not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    free = st.f_bavail * st.f_frsize
    if free < size:
        return f"{path} has {free >> 20} MiB free, the guest needs {size >> 20} MiB"
    return None


def _uml_memory_dir(size: int) -> tuple[Path | None, str]:
    """Where UML should keep the guest's memory file (its TMPDIR), or None and why nowhere will do.

    UML maps a file of ``mem`` bytes executable; /dev/shm is the fast choice, but in containers it is often
    64 MiB or noexec (the guest then dies of SIGBUS, or does not start)."""
    override = os.environ.get("VWOS_UML_TMPDIR")
    candidates = [Path(override)] if override else [Path("/dev/shm"), Path(tempfile.gettempdir())]
    problems = []
    for path in candidates:
        problem = _memory_dir_problem(path, size)
        if problem is None:
            return path, ""
        problems.append(problem)
    return None, "; ".join(problems)


DEFAULT_MEM = "512M"


#: The machines (``platform.machine()``) Debian builds its ``user-mode-linux`` package for: amd64 only.
UML_MACHINES = frozenset({"x86_64", "amd64"})


def uml_available(*, machine: str | None = None) -> str | None:
    """None if User-Mode Linux can run vcan here, else why not (what to install or fix). ``machine`` is
    ``platform.machine()`` unless given: where Debian has no ``user-mode-linux`` (arm64, the Raspberry Pi),
    the reason says so instead of naming a package that cannot be installed."""
    kernel = _uml_kernel()
    if not kernel.is_file() or not os.access(kernel, os.X_OK):
        machine = platform.machine() if machine is None else machine
        if machine.lower() not in UML_MACHINES:
            return (
                f"no {kernel}: Debian builds user-mode-linux for amd64 only, not for this {machine} machine "
                "(here vcan tests run natively only: as root, on a kernel with the vcan module)"
            )
        return f"no {kernel} (apt-get install user-mode-linux)"
    try:
        version = _uml_kernel_version(kernel)
    except VcanError as e:
        return str(e)
    modules = UML_MODULES / version
    if not (modules / "modules.dep").is_file():
        return f"no kernel modules for the UML kernel {version} in {modules} (reinstall user-mode-linux)"
    for name, where in (("vcan", "drivers/net/can"), ("can-raw", "net/can"), ("can", "net/can")):
        if not any((modules / "kernel" / where).glob(f"{name}.ko*")):
            return f"the UML kernel {version} has no {name} module in {modules / 'kernel' / where}"
    missing = [
        tool for tool in ("bash", "ip", "modprobe", "timeout", "mount", "awk") if _guest_which(tool) is None
    ]
    if missing:
        return (
            f"the guest needs {', '.join(missing)} (apt-get install bash iproute2 kmod coreutils mount mawk)"
        )
    memory_dir, why = _uml_memory_dir(_parse_mem(DEFAULT_MEM))
    if memory_dir is None:
        return f"no place for the UML guest's memory ({why}); set VWOS_UML_TMPDIR to a roomy exec directory"
    return None


def _guest_which(tool: str) -> str | None:
    return shutil.which(tool, path=STANDARD_PATH)


def _mode_or_reason() -> tuple[Mode | None, str]:
    setting = _mode_setting()
    native_why = _native_reason()
    if native_why is None and os.geteuid() != 0:
        native_why = "native vcan needs root (the harness creates interfaces and sets them up and down)"
    if setting in {"auto", "native"} and native_why is None:
        return "native", ""
    if setting == "native":
        return None, f"VWOS_VCAN_MODE=native, but {native_why}"
    uml_why = uml_available()
    if uml_why is None:
        return "uml", ""
    if setting == "uml":
        return None, f"VWOS_VCAN_MODE=uml, but {uml_why}"
    return None, f"no native vcan ({native_why}) and no User-Mode Linux ({uml_why})"


def vcan_unavailable_reason() -> str | None:
    """None if vcan scripts can run here (natively or in UML, with can-utils), else why not."""
    mode, why = _mode_or_reason()
    if mode is None:
        return why
    missing = [tool for tool in CAN_UTILS if _guest_which(tool) is None]
    if missing:
        return f"no {', '.join(missing)} (apt-get install can-utils)"
    return None


def ci_requires_vcan(environ: Mapping[str, str] = os.environ) -> bool:
    """True under CI (``CI=true``, as GitHub Actions, GitLab and most others set it): vcan tests must run."""
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def ci_session_problem(selected: int, ran: int) -> str | None:
    """Under CI, why the session must fail: ``selected`` vcan tests, of which ``ran`` passed with vcan."""
    if selected and not ran:
        return (
            f"CI=true: {selected} vcan test(s) were selected but none ran against vcan "
            "(the vcan tests must not be skipped in CI: ./dev test installs user-mode-linux on amd64, kmod, "
            "iproute2 and can-utils)"
        )
    return None


# ---------------------------------------------------------------------------------------------------- running


class VcanRunner(Protocol):
    """The signature of `run_in_vcan` (what the ``vcan_runner`` fixture returns)."""

    def __call__(
        self,
        script: str,
        *,
        timeout: float = ...,
        interfaces: Iterable[str] = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | os.PathLike[str] | None = ...,
        mem: str = ...,
    ) -> VcanResult: ...


def run_in_vcan(
    script: str,
    *,
    timeout: float = 120,
    interfaces: Iterable[str] = ("vcan0",),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    mem: str = DEFAULT_MEM,
) -> VcanResult:
    """Run ``script`` under bash with the vcan ``interfaces`` up; see the module's docstring.

    ``timeout`` bounds the script (it then gets TERM, KILL 5 s later, and ``returncode`` 124); the boot and
    power-off get `BOOT_ALLOWANCE` more (natively `NATIVE_ALLOWANCE`), after which the guest (natively the
    script's process group) is killed and VcanError raised. ``env`` adds
    variables (natively to this process's environment; in the guest to a minimal one). ``mem`` is the UML
    guest's memory.
    """
    ifaces = tuple(interfaces)
    for name in ifaces:
        if not _IFACE_RE.fullmatch(name):
            raise ValueError(f"bad interface name {name!r}")
    extra = dict(env or {})
    for key in extra:
        if not _ENV_NAME_RE.fullmatch(key):
            raise ValueError(f"bad environment variable name {key!r}")
    workdir_cwd = Path(cwd if cwd is not None else os.getcwd()).resolve()
    mode, why = _mode_or_reason()
    if mode is None:
        raise VcanError(why)
    keep = os.environ.get("VWOS_VCAN_KEEP", "") not in {"", "0"}
    work = Path(tempfile.mkdtemp(prefix="vwos-vcan-", dir=_host_temp_base()))
    try:
        (work / "lib.sh").write_text(_SCRIPT_LIB)
        (work / "script.sh").write_text(script)
        started = time.monotonic()
        if mode == "native":
            returncode, console = _run_native(work, timeout, ifaces, extra, workdir_cwd)
        else:
            returncode, console = _run_uml(work, timeout, ifaces, extra, workdir_cwd, mem)
        return VcanResult(
            how=mode,
            returncode=returncode,
            stdout=_read(work / "stdout"),
            stderr=_read(work / "stderr"),
            console=console,
            seconds=time.monotonic() - started,
            workdir=work,
        )
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _host_temp_base() -> Path:
    """A temporary directory the guest sees too: not under a directory the guest mounts its own over."""
    base = Path(tempfile.gettempdir()).resolve()
    if any(base.is_relative_to(private) for private in GUEST_PRIVATE_DIRS):
        return Path("/var/tmp")
    return base


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _script_env(work: Path, ifaces: tuple[str, ...], mode: Mode) -> dict[str, str]:
    return {
        "PYTHON": sys.executable,
        "VCAN_INTERFACES": " ".join(ifaces),
        "VCAN_MODE": mode,
        "BASH_ENV": str(work / "lib.sh"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


def _kill_group(proc: subprocess.Popen[bytes], *, patience: float = 5.0) -> None:
    """SIGKILL the process group ``proc`` leads, reap ``proc``, and wait (a bounded while) for the rest.

    Dying is not instant: UML's ptraced helper processes, orphaned when the UML kernel process dies, take a
    moment to go; a zombie that nobody reaps would count as left over too, hence the bound."""
    deadline = time.monotonic() + patience
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        if proc.returncode is None:
            proc.wait()
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if proc.returncode is None:
        proc.wait()


def _wait_bounded(proc: subprocess.Popen[bytes], limit: float, what: str, diagnostics: Path) -> int:
    """Wait for ``proc`` (a session leader); on expiry kill its whole process group and raise. Either way,
    nothing it started outlives it (background candumps, UML's helper processes)."""
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise VcanError(
            f"{what} did not finish within {limit:g} s; killed (work directory {diagnostics.parent})\n"
            f"{_tail(_read(diagnostics), 40)}"
        ) from None
    finally:
        _kill_group(proc)


def _run_native(
    work: Path, timeout: float, ifaces: tuple[str, ...], extra: dict[str, str], cwd: Path
) -> tuple[int, str]:
    for name in ifaces:
        _ensure_native_interface(name, bring_up=True)
    env = dict(os.environ)
    env["PATH"] = f"{_venv_bin()}:{env.get('PATH', STANDARD_PATH)}"
    env.update(_script_env(work, ifaces, "native"))
    env.update(extra)
    command = ["timeout", "-k", str(KILL_AFTER), f"{timeout:g}", "bash", str(work / "script.sh")]
    with (work / "stdout").open("wb") as out, (work / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        returncode = _wait_bounded(
            proc, timeout + KILL_AFTER + NATIVE_ALLOWANCE, "the vcan script", work / "stderr"
        )
    return returncode, ""


# The guest's init (run by /bin/sh as PID 1): set up, run the script, record its exit status on the host's
# file system (UML's own exit code does not carry it), power off. Values are substituted shell-quoted.
_INIT = """#!/bin/sh
# Written by tests/vcan.py: the init of a User-Mode Linux guest that runs one vcan test script.
W={work}
export PATH={path}
exec >"$W/setup.log" 2>&1
finish() {{
    echo "$1" >"$W/status.tmp" && mv "$W/status.tmp" "$W/status"
    sync
    echo o >/proc/sysrq-trigger
    poweroff -f
    exit 1 # init exiting panics the guest kernel, which also ends UML
}}
fail() {{ echo "vcan harness: $*"; finish "setup failed: $*"; }}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount /run"
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/shm /dev/pts /run/tmp /run/modroot/lib/modules || fail "mkdir"
chmod 1777 /run/tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "mount /dev/shm"
mount -t devpts devpts /dev/pts || fail "mount /dev/pts"
mount --bind {modules} /run/modroot/lib/modules || fail "bind-mount {modules}"
modprobe -d /run/modroot -a {kmods} || fail "modprobe {kmods}"
ip link set lo up || fail "ip link set lo up"
for i in {ifaces}; do
    ip link add dev "$i" type vcan && ip link set up "$i" || fail "cannot create $i"
done
cd {cwd} || fail "cd {cwd}"
echo "vcan harness: running the script"
env -i {env} timeout -k {kill_after} {timeout} /bin/bash "$W/script.sh" </dev/null >"$W/stdout" 2>"$W/stderr"
finish "$?"
"""


def _run_uml(
    work: Path, timeout: float, ifaces: tuple[str, ...], extra: dict[str, str], cwd: Path, mem: str
) -> tuple[int, str]:
    for path in (cwd, work):
        if any(path.is_relative_to(private) for private in GUEST_PRIVATE_DIRS):
            raise VcanError(
                f"{path} is not visible in the UML guest (it mounts its own /proc /sys /dev /run)"
            )
    memory_dir, why = _uml_memory_dir(_parse_mem(mem))
    if memory_dir is None:
        raise VcanError(f"no place for the UML guest's {mem} of memory: {why}")
    guest_env = {
        "PATH": f"{_venv_bin()}:{STANDARD_PATH}",
        "HOME": str(work / "home"),
        "LANG": "C.UTF-8",
        "TMPDIR": "/run/tmp",
        **_script_env(work, ifaces, "uml"),
        **extra,
    }
    (work / "home").mkdir()
    q = shlex.quote
    init = work / "init"
    init.write_text(
        _INIT.format(
            work=q(str(work)),
            path=q(STANDARD_PATH),
            modules=q(str(UML_MODULES)),
            kmods=" ".join(UML_MODULES_TO_LOAD),
            ifaces=" ".join(ifaces),
            cwd=q(str(cwd)),
            env=" ".join(q(f"{k}={v}") for k, v in guest_env.items()),
            kill_after=KILL_AFTER,
            timeout=f"{timeout:g}",
        )
    )
    init.chmod(0o755)
    command = [
        str(_uml_kernel()),
        f"mem={mem}",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={init}",
        "con=null",
        "con0=null,fd:1",  # the guest's console: kernel messages, into console.log
        f"uml_dir={work}",  # its pid file and management socket (default: ~/.uml, left behind if killed)
        "umid=vwos-vcan",
    ]
    host_env = {k: v for k, v in os.environ.items() if k not in {"TMP", "TEMP"}}
    host_env["TMPDIR"] = str(memory_dir)
    console_log = work / "console.log"
    with console_log.open("wb") as console:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=work,  # UML looks for a disk image ./root_fs: let it look in an empty directory
            env=host_env,
            start_new_session=True,
        )
        _wait_bounded(proc, timeout + KILL_AFTER + BOOT_ALLOWANCE, "the UML guest", console_log)
    console_text = _read(console_log) + "\n--- guest set-up log ---\n" + _read(work / "setup.log")
    status = _read(work / "status").strip()
    if not status:
        raise VcanError(f"the UML guest wrote no exit status\n{_tail(console_text, 60)}")
    if not status.isdigit():
        raise VcanError(f"UML guest: {status}\n{_tail(console_text, 60)}")
    return int(status), console_text
