"""The footprint benchmark: resident memory and cold-start time of ``vwos run``, beside a bare interpreter.

Each run spawns ``vwos run CONFIG`` (the venv's ``vwos`` console script, what a systemd unit runs) with a
fake ``NOTIFY_SOCKET`` (an AF_UNIX datagram socket bound in a temporary directory) and measures:

* **seconds to ready**: from just before the process is spawned to the ``READY=1`` datagram, which
  ``vwos run`` sends once every service is up (``vwos/_systemd.py``): interpreter start, imports, config
  and plugin loading, and every service's start-up, in start order;
* **RSS** of the supervisor process (``VmRSS`` in ``/proc/PID/status``) at ready and after ``--settle``
  seconds of running, split into anonymous pages (``RssAnon``: the heap, Python's objects) and file pages
  (``RssFile``: the interpreter's and extension modules' code, shared libraries such as OpenSSL), its peak
  (``VmHWM``) and its proportional share (``Pss`` in ``smaps_rollup``: shared library pages divided among
  the processes that map them); and, separately, the RSS of its child processes (isolated services)
  summed, after the settle period;
* then SIGTERM, and the seconds until it has exited (it must exit 0).

Beside it, measured the same way in the same invocation (spawn to a ``READY=1`` datagram, then RSS):
``python -c pass`` (a bare interpreter that sends ``READY=1`` through the C ``_socket`` module, which costs
nothing measurable), ``python -c "import trio"`` and ``python -c "import vwos._cli"`` (what ``vwos`` imports
before it reads the config). The rounds interleave the four programs, after one untimed warm-up round: the
figures are for a warm page cache (the files were read before), as on a device that has booted before —
a first start after power-on also waits for the storage.

Every program reads its bytecode from a private ``PYTHONPYCACHEPREFIX`` that the warm-up round fills (and
``PYTHONDONTWRITEBYTECODE`` is unset for them): an installed system has bytecode for every module, while a
source tree being edited (or an environment with ``PYTHONDONTWRITEBYTECODE=1``) would recompile the changed
modules at every start, which is not what is being measured.

The config's directory is copied (without hidden entries and ``__pycache__``) into a temporary directory
and run there, and whatever a run creates in it (state, outgoing batches) is removed before the next run:
every run starts from the same empty state, and the source tree is not touched. The goals are issue 13's
(DESIGN.md: "small footprint, fast start"): supervisor RSS < 40 MiB and seconds to ready < 0.5 s, judged
on the medians (they were 60 MiB and 1.5 s). The CPU seconds the supervisor used until ready (user +
system, ``/proc/PID/stat``) are reported beside the wall time: other processes on the machine change them
far less.

Usage: ``python bench/footprint.py [--json] [--config FILE] [--repeat R] [--settle S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Python put bench/ first on sys.path, where bench/bus.py would shadow the bus package: project root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _table

ROOT = Path(__file__).resolve().parents[1]

DEMO_CONFIG = ROOT / "examples" / "demo" / "vwos.toml"
FALLBACK_CONFIG = ROOT / "examples" / "overspeed" / "vwos.toml"
GOAL_RSS_MIB = 40.0
GOAL_SECONDS_TO_READY = 0.5
DEFAULT_REPEAT = 5
DEFAULT_SETTLE = 2.0
#: A program that is not ready by then is hung, not slow.
DEFAULT_TIMEOUT = 60.0
MIB = 1024 * 1024

#: A bare interpreter's way to say READY=1: the C socket module, no Python-level import.
_SAY_READY = (
    "import _socket, os; "
    "s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM); "
    "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); "
    "os.read(0, 1)"  # then wait for stdin to close
)
#: The references: label -> the Python code run with ``python -c``.
REFERENCES = {
    "python -c pass": "pass",
    'python -c "import trio"': "import trio",
    'python -c "import vwos._cli"': "import vwos._cli",
}


class BenchError(Exception):
    """A program did not start, did not become ready, or did not stop cleanly."""


@dataclass(frozen=True)
class Measured:
    """One run of one program."""

    seconds_to_ready: float
    cpu_seconds_to_ready: float
    rss_at_ready_mib: float
    rss_mib: float
    hwm_mib: float
    rss_anon_mib: float
    rss_file_mib: float
    pss_mib: float | None
    children: int
    children_rss_mib: float
    seconds_to_stop: float | None


# -- /proc ---------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (VmRSS, VmHWM, ...), in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def proc_pss(pid: int) -> int | None:
    """``Pss`` of ``/proc/PID/smaps_rollup`` in bytes (None where the kernel has no smaps_rollup)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (``/proc/PID/stat``): unlike wall time, hardly changed
    by other processes competing for the cores."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, utime 14
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren ...), from ``/proc/*/stat``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def rss_of(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # exited meanwhile
            total += proc_status(pid).get("VmRSS", 0)
    return total


# -- one run of one program ------------------------------------------------------------------------------


def measure(
    argv: Sequence[str],
    *,
    cwd: Path,
    settle: float,
    timeout: float,
    stop_with_sigterm: bool,
    log: IO[str],
    pycache: Path,
) -> Measured:
    """Spawn ``argv`` with a fake NOTIFY_SOCKET, wait for READY=1, measure, stop it. Bytecode is read from
    (and, on the first run, written to) ``pycache``."""
    with tempfile.TemporaryDirectory(prefix="vwos-fp-") as tmp:  # short: a socket path has ~100 bytes
        notify = os.path.join(tmp, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        listener.bind(notify)
        env = {**os.environ, "NOTIFY_SOCKET": notify, "PYTHONPYCACHEPREFIX": str(pycache)}
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        log.seek(0)
        log.truncate()
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL if stop_with_sigterm else subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            seconds_to_ready = _wait_ready(listener, proc, started, timeout, log)
            at_ready = proc_status(proc.pid)
            cpu_at_ready = cpu_seconds(proc.pid)
            if settle > 0:
                time.sleep(settle)
            if proc.poll() is not None:
                raise BenchError(f"exited with {proc.returncode} while running{_tail(log)}")
            status = proc_status(proc.pid)
            pss = proc_pss(proc.pid)
            children = descendants(proc.pid)
            children_rss = rss_of(children)
            stop_started = time.perf_counter()
            if stop_with_sigterm:
                proc.send_signal(signal.SIGTERM)
            else:
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"did not stop within {timeout:g} s{_tail(log)}") from None
            seconds_to_stop = time.perf_counter() - stop_started
            if returncode != 0:
                raise BenchError(f"exited with {returncode} when stopped{_tail(log)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            listener.close()
    return Measured(
        seconds_to_ready=seconds_to_ready,
        cpu_seconds_to_ready=cpu_at_ready,
        rss_at_ready_mib=at_ready["VmRSS"] / MIB,
        rss_mib=status["VmRSS"] / MIB,
        hwm_mib=status["VmHWM"] / MIB,
        rss_anon_mib=status.get("RssAnon", 0) / MIB,
        rss_file_mib=status.get("RssFile", 0) / MIB,
        pss_mib=None if pss is None else pss / MIB,
        children=len(children),
        children_rss_mib=children_rss / MIB,
        seconds_to_stop=seconds_to_stop if stop_with_sigterm else None,
    )


def _wait_ready(
    listener: socket.socket, proc: subprocess.Popen[bytes], started: float, timeout: float, log: IO[str]
) -> float:
    """Seconds from ``started`` to the READY=1 datagram; fails if the process exits or time runs out."""
    while True:
        elapsed = time.perf_counter() - started
        if elapsed > timeout:
            raise BenchError(f"no READY=1 within {timeout:g} s{_tail(log)}")
        # Short waits: notice a process that exited without saying READY=1.
        listener.settimeout(min(0.05, timeout - elapsed))
        try:
            datagram = listener.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                raise BenchError(f"exited with {proc.returncode} before READY=1{_tail(log)}") from None
            continue
        if b"READY=1" in datagram.split(b"\n"):
            return time.perf_counter() - started


def _tail(log: IO[str], lines: int = 15) -> str:
    log.flush()
    log.seek(0)
    text = log.read().strip().splitlines()[-lines:]
    return (":\n  " + "\n  ".join(text)) if text else " (no output)"


# -- the config in a scratch directory -------------------------------------------------------------------


class ScratchConfig:
    """A copy of the config's directory (without hidden entries and ``__pycache__``) whose run products
    are removed by `reset`: every run starts from the same state."""

    def __init__(self, config: Path, root: Path) -> None:
        self.directory = root / "config"
        shutil.copytree(
            config.parent,
            self.directory,
            ignore=lambda _dir, names: [n for n in names if n.startswith(".") or n == "__pycache__"],
        )
        self.path = self.directory / config.name
        self._original = set(os.listdir(self.directory))

    def reset(self) -> None:
        """Remove what the previous run created (keeps ``__pycache__``: plugins' bytecode, as installed)."""
        for name in set(os.listdir(self.directory)) - self._original - {"__pycache__"}:
            target = self.directory / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()


def vwos_command() -> list[str]:
    """The venv's ``vwos`` console script (what a unit's ExecStart runs), else ``python -m vwos``."""
    script = Path(sys.executable).parent / "vwos"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "vwos"]


def choose_config(requested: Path | None) -> tuple[Path, str | None]:
    """The config to measure, and a note when the default had to fall back."""
    if requested is not None:
        return requested.resolve(), None
    if DEMO_CONFIG.is_file():
        return DEMO_CONFIG, None
    return FALLBACK_CONFIG, (
        f"{DEMO_CONFIG.relative_to(ROOT)} does not exist (yet): measuring "
        f"{FALLBACK_CONFIG.relative_to(ROOT)} instead"
    )


# -- the whole benchmark ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"the vwos config to run (default: {DEMO_CONFIG.relative_to(ROOT)}, "
        f"else {FALLBACK_CONFIG.relative_to(ROOT)} while the demo has none)",
    )
    parser.add_argument(
        "--repeat", "--size", type=_table.positive_int, default=DEFAULT_REPEAT, help="measured runs"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE,
        help="seconds vwos runs after READY=1 before its RSS is read again",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds a program may take to start or stop"
    )
    args = parser.parse_args(argv)
    if args.settle < 0:
        parser.error(f"--settle must be >= 0, not {args.settle:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config, fallback = choose_config(args.config)
    if fallback is not None:
        print(f"footprint: {fallback}", file=sys.stderr)
    if not config.is_file():
        print(f"footprint: no such config: {config}", file=sys.stderr)
        return 2
    vwos = vwos_command()
    programs: dict[str, list[str]] = {
        label: [sys.executable, "-c", f"{code}\n{_SAY_READY}"] for label, code in REFERENCES.items()
    }
    runs: dict[str, list[Measured]] = {"vwos": [], **{label: [] for label in REFERENCES}}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="vwos-footprint-") as tmp,
            open(Path(tmp) / "program.log", "w+") as log,
        ):
            scratch = ScratchConfig(config, Path(tmp))
            bus_socket = Path(tmp) / "vwos.sock"
            pycache = Path(tmp) / "pycache"  # filled by the warm-up round
            for round_ in range(args.repeat + 1):  # round 0: the untimed warm-up
                for label, program in programs.items():
                    measured = measure(
                        program,
                        cwd=ROOT,
                        settle=0,
                        timeout=args.timeout,
                        stop_with_sigterm=False,
                        log=log,
                        pycache=pycache,
                    )
                    if round_:
                        runs[label].append(measured)
                scratch.reset()
                measured = measure(
                    [*vwos, "run", str(scratch.path), "--log-format", "json", "--socket", str(bus_socket)],
                    cwd=scratch.directory,
                    settle=args.settle if round_ else 0,
                    timeout=args.timeout,
                    stop_with_sigterm=True,
                    log=log,
                    pycache=pycache,
                )
                if round_:
                    runs["vwos"].append(measured)
    except BenchError as exc:
        print(f"footprint: {exc}", file=sys.stderr)
        return 1

    report(args, config, fallback, vwos, runs)
    return 0


def _runs(values: Sequence[float], unit: str) -> _table.Runs:
    return _table.Runs(unit, values, higher_is_better=False)


def report(
    args: argparse.Namespace,
    config: Path,
    fallback: str | None,
    vwos: Sequence[str],
    runs: dict[str, list[Measured]],
) -> None:
    ours = runs["vwos"]
    ready = _runs([m.seconds_to_ready for m in ours], "s")
    cpu = _runs([m.cpu_seconds_to_ready for m in ours], "s")
    rss_anon = _runs([m.rss_anon_mib for m in ours], "MiB")
    rss_file = _runs([m.rss_file_mib for m in ours], "MiB")
    rss = _runs([m.rss_mib for m in ours], "MiB")
    rss_at_ready = _runs([m.rss_at_ready_mib for m in ours], "MiB")
    hwm = _runs([m.hwm_mib for m in ours], "MiB")
    pss_values = [m.pss_mib for m in ours if m.pss_mib is not None]
    pss = _runs(pss_values, "MiB") if pss_values else None
    children = max(m.children for m in ours)
    children_rss = _runs([m.children_rss_mib for m in ours], "MiB")
    stop = _runs([m.seconds_to_stop or 0.0 for m in ours], "s")
    refs = {
        label: (
            _runs([m.seconds_to_ready for m in runs[label]], "s"),
            _runs([m.rss_at_ready_mib for m in runs[label]], "MiB"),
        )
        for label in REFERENCES
    }
    bare_ready, bare_rss = refs["python -c pass"]
    relative_config = str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config)
    rss_met = rss.median < GOAL_RSS_MIB
    ready_met = ready.median < GOAL_SECONDS_TO_READY

    result: dict[str, Any] = {
        "benchmark": "footprint",
        "config": relative_config,
        "config_fallback": fallback,
        "command": [*vwos, "run", "CONFIG"],
        "seconds_to_ready": ready.median,
        "seconds_to_ready_best": ready.best,
        "cpu_seconds_to_ready": cpu.median,
        "rss_mib": rss.median,
        "rss_at_ready_mib": rss_at_ready.median,
        "hwm_mib": hwm.median,
        "rss_anon_mib": rss_anon.median,
        "rss_file_mib": rss_file.median,
        "pss_mib": None if pss is None else pss.median,
        "children": children,
        "children_rss_mib": children_rss.median,
        "total_rss_mib": rss.median + children_rss.median,
        "seconds_to_stop": stop.median,
        "bare_python_seconds_to_ready": bare_ready.median,
        "bare_python_rss_mib": bare_rss.median,
        "import_trio_seconds_to_ready": refs['python -c "import trio"'][0].median,
        "import_trio_rss_mib": refs['python -c "import trio"'][1].median,
        "import_vwos_cli_seconds_to_ready": refs['python -c "import vwos._cli"'][0].median,
        "import_vwos_cli_rss_mib": refs['python -c "import vwos._cli"'][1].median,
        "vwos_vs_bare_python_rss": _table.ratio(rss.median, bare_rss.median),
        "vwos_vs_bare_python_seconds": _table.ratio(ready.median, bare_ready.median),
        "goal_rss_mib": GOAL_RSS_MIB,
        "goal_seconds_to_ready": GOAL_SECONDS_TO_READY,
        "goal_rss_met": rss_met,
        "goal_seconds_to_ready_met": ready_met,
        "figures": "medians of the runs (best = lowest, spread = (max - min) / median in runs)",
        "runs": {
            "seconds_to_ready": ready,
            "cpu_seconds_to_ready": cpu,
            "rss_mib": rss,
            "rss_anon_mib": rss_anon,
            "rss_file_mib": rss_file,
            "rss_at_ready_mib": rss_at_ready,
            "hwm_mib": hwm,
            "pss_mib": pss,
            "children_rss_mib": children_rss,
            "seconds_to_stop": stop,
            **{f"{label} seconds_to_ready": r for label, (r, _) in refs.items()},
            **{f"{label} rss_mib": m for label, (_, m) in refs.items()},
        },
        "repeat": args.repeat,
        "settle_seconds": args.settle,
        "bytecode": "cached: a private PYTHONPYCACHEPREFIX filled by an untimed warm-up round",
        **_table.environment(trio=importlib.metadata.version("trio")),
    }

    table = _table.Table(
        f"vwos footprint: `vwos run {relative_config}` beside a bare interpreter, {args.repeat} "
        f"run{'s' if args.repeat > 1 else ''} each (interleaved, after a warm-up), Python {result['python']}",
        ["figure", "best", "median", "spread", "vs bare python"],
    )

    def row(label: str, runs_: _table.Runs, unit: str, bare: float | None = None) -> None:
        def show(value: float | None) -> str:
            return "-" if value is None else (f"{value:.3f} s" if unit == "s" else f"{value:.1f} MiB")

        versus = "" if bare is None else _table.times(_table.ratio(runs_.median, bare))
        table.runs(label, runs_, versus, fmt=show)

    row("vwos: spawn -> READY=1 (all services up)", ready, "s", bare_ready.median)
    row("vwos: CPU seconds (user + system) to READY=1", cpu, "s")
    row("vwos: RSS at READY=1", rss_at_ready, "MiB", bare_rss.median)
    row(f"vwos: RSS after {args.settle:g} s running", rss, "MiB", bare_rss.median)
    row(f"vwos: of which anonymous (heap, RssAnon) after {args.settle:g} s", rss_anon, "MiB")
    row(f"vwos: of which file pages (code, libraries, RssFile) after {args.settle:g} s", rss_file, "MiB")
    row("vwos: peak RSS (VmHWM)", hwm, "MiB", bare_rss.median)
    if pss is not None:
        row(f"vwos: PSS after {args.settle:g} s running", pss, "MiB")
    if children:
        row(f"isolated services: {children} processes, RSS summed", children_rss, "MiB")
    row("vwos: SIGTERM -> exited (0)", stop, "s")
    table.rule()
    for label, (ready_runs, rss_runs) in refs.items():
        row(f"{label}: spawn -> READY=1", ready_runs, "s", bare_ready.median)
        row(f"{label}: RSS", rss_runs, "MiB", bare_rss.median)
    table.note(
        "best: lowest of the runs; spread: (max - min) / median; vs bare python: median over the median of "
        "`python -c pass`"
    )
    table.note(f"command: {' '.join(vwos)} run CONFIG --socket ... (a copy of {relative_config})")
    if fallback is not None:
        table.note(fallback)
    if children:
        table.note(
            f"isolated services run in processes of their own: supervisor + children = "
            f"{rss.median + children_rss.median:.1f} MiB RSS"
        )
    table.goal(f"RSS < {GOAL_RSS_MIB:g} MiB (median)", rss_met, f"{rss.median:.1f} MiB")
    table.goal(
        f"spawn -> all services ready < {GOAL_SECONDS_TO_READY:g} s (median)",
        ready_met,
        f"{ready.median:.3f} s",
    )
    _table.emit(args, result, table)


if __name__ == "__main__":
    sys.exit(main())
