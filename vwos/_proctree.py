"""Process trees on Linux: who belongs to an isolated service's run, and the supervisor as child subreaper.

The pure part (`owner`, `members`, `reapable`) works on a `Processes` view (the live one reads ``/proc``;
tests hand in a table), so the rules are tested without spawning anything. What the rules rest on:

- An isolated service's process (the *run's pid*) is started in a session of its own: its pid is its
  session and process group id. A process cannot join a session from outside, so a process whose session or
  process group is the run's pid descends from the run.
- Every process of a run inherits the run's *token* in its environment (``VWOS_RUN``): it survives
  ``setsid`` and double forks, though a process may clear its environment.
- While an isolated service runs, the supervisor is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process
  whose parent dies is reparented to the supervisor, not to init, so every process a run ever started
  descends from the run's process or from the supervisor.

The supervisor's own pid is ``me`` throughout.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import attrs

__all__ = [
    "ENV_RUN",
    "SUBREAPER",
    "LiveProcesses",
    "Proc",
    "Processes",
    "Verdict",
    "members",
    "owner",
    "reapable",
]

#: The environment variable that carries a run's token to every process of the run.
ENV_RUN: Final = "VWOS_RUN"
_ENV_KEY: Final = ENV_RUN.encode() + b"="
#: How far up an ancestry walk goes (far more than any real process tree is deep).
_MAX_DEPTH: Final = 4096
#: The most of a process's environment that is read looking for the token.
_MAX_ENVIRON: Final = 8 * 1024 * 1024


@attrs.frozen
class Proc:
    """One process: its parent, process group and session (-1: unknown), and whether it is a zombie."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    zombie: bool = False


class Processes(Protocol):
    """A view of the system's processes."""

    def stat(self, pid: int) -> Proc | None:
        """The process ``pid``, or None if there is none (or it cannot be seen)."""

    def token(self, pid: int) -> str | None:
        """The run token in the environment of ``pid``, or None (none, unreadable, or a zombie)."""

    def snapshot(self) -> dict[int, Proc]:
        """Every process that can be seen (empty if processes cannot be listed)."""


class Verdict(enum.Enum):
    """`owner`'s answer for a process that belongs to no live run."""

    #: Unrelated to the supervisor and its services: the configured authorize decides.
    STRANGER = "stranger"
    #: Related (a descendant of the supervisor, a process of a run that ended, a carrier of some run's token)
    #: but not provably of a live run: gets nothing.
    REFUSE = "refuse"
    #: Not there to be looked at: gone already (a zombie), hidden (``/proc`` mounted with ``hidepid``,
    #: another user's), or in another pid namespace (pid 0).
    UNSEEN = "unseen"


def owner(pid: int, runs: Mapping[int, str], me: int, processes: Processes) -> int | Verdict:
    """Which run the process ``pid`` belongs to: the run's pid, or a `Verdict`.

    ``runs`` maps each run's pid to its token. A process belongs to a run if it is the run's process (its
    own session leader, as it was started), in the run's session or process group, or descends from the
    run's process. A process that descends from the supervisor (``me``) without passing through a run's
    process (an orphan reparented to the subreaper, or a process the supervisor's own code started)
    belongs to the run whose token it carries, and to nothing (`Verdict.REFUSE`) if it carries none. Any
    other process is a `Verdict.STRANGER`, unless it carries a run token: then it came from a run but
    cannot be tied to a live one (`Verdict.REFUSE`). A process that cannot be seen is `Verdict.UNSEEN`.
    An ancestor that cannot be seen (another user's, under ``hidepid``) ends the walk: it is neither the
    supervisor nor a run's process, which are ours.
    """
    if pid == me:
        return Verdict.STRANGER  # the supervisor's own process: not under itself
    for _attempt in range(3):
        proc = processes.stat(pid)
        if proc is None or proc.zombie:
            return Verdict.UNSEEN
        if pid in runs:
            if proc.sid in (pid, -1) and proc.ppid in (me, -1):
                return pid
            return Verdict.REFUSE  # a run's pid, but not the process the supervisor started
        found = _ancestry(proc, runs, me, processes)
        if found is not _Walk.RETRY:
            break
    else:
        return Verdict.REFUSE  # its ancestors kept ending while we looked: cannot tell
    if isinstance(found, int):
        return found
    token = processes.token(pid)
    if found is _Walk.DESCENDS:
        for run, run_token in runs.items():
            if token == run_token:
                return run
        return Verdict.REFUSE
    return Verdict.STRANGER if token is None else Verdict.REFUSE


class _Walk(enum.Enum):
    DESCENDS = "descends from the supervisor"
    UNRELATED = "does not descend from the supervisor"
    RETRY = "an ancestor ended during the walk"


def _ancestry(proc: Proc, runs: Mapping[int, str], me: int, processes: Processes) -> int | _Walk:
    """Walk up from ``proc``: the pid of the run it belongs to by session, process group or ancestry, or
    whether it descends from the supervisor (``me``)."""
    for leader in (proc.sid, proc.pgid):
        if leader in runs:
            return leader
    seen = {proc.pid}
    current = proc
    while len(seen) < _MAX_DEPTH:
        parent = current.ppid
        if parent in runs:
            return parent
        if parent == me:
            return _Walk.DESCENDS
        if parent <= 1 or parent in seen:
            return _Walk.UNRELATED
        seen.add(parent)
        found = processes.stat(parent)
        if found is None:
            again = processes.stat(current.pid)
            if again is not None and again.ppid == parent:
                return _Walk.UNRELATED  # the parent is there (or it would have a new one), but hidden
            return _Walk.RETRY  # it ended meanwhile; its children have a new parent
        current = found
    return _Walk.UNRELATED


def members(
    table: Mapping[int, Proc],
    run: int,
    token: str,
    me: int,
    token_of: Callable[[int], str | None],
    *,
    adoptees_only: bool,
) -> set[int]:
    """The live processes of the run whose pid is ``run`` (its own process included while it lives).

    Those in its session or process group, those reparented to the supervisor that carry its token (with
    ``adoptees_only``; else every process that carries it: without the subreaper, orphans go to init), and
    every descendant of any of them. Zombies are left out: they need reaping, not killing.
    """
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    roots = [p.pid for p in table.values() if run in (p.pid, p.pgid, p.sid)]
    candidates: Iterable[int] = children.get(me, ()) if adoptees_only else table
    roots += [
        pid for pid in candidates if pid not in (me, run) and not table[pid].zombie and token_of(pid) == token
    ]
    found: set[int] = set()
    stack = roots
    while stack:
        pid = stack.pop()
        if pid in found or pid == me:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return {pid for pid in found if not table[pid].zombie}


def reapable(table: Mapping[int, Proc], me: int, known: set[int], spared: set[int]) -> list[int]:
    """The zombie children of the supervisor that are its to reap: orphans reparented to it.

    A process the supervisor forked itself is in the supervisor's session or a session of its own
    (``setsid`` makes the caller its leader); whoever forked it reaps it, and reaping it here would steal
    its exit status. A zombie child in any other session was reparented to us. One in a session of its own
    is reaped only if it is ``known`` (seen alive as a member of a run); ``spared`` (the runs' own processes,
    which trio reaps) never.
    """
    mine = table.get(me)
    my_sid = mine.sid if mine is not None else os.getsid(0)
    return [
        p.pid
        for p in table.values()
        if p.zombie
        and p.ppid == me
        and p.pid not in spared
        and (p.sid not in (my_sid, p.pid) or p.pid in known)
    ]


# -- the live view -------------------------------------------------------------------------------------------


class LiveProcesses:
    """The system's processes, from ``/proc``; without it, what ``getsid``/``getpgid`` tell (no parents)."""

    def __init__(self, root: str = "/proc") -> None:
        self._root = root
        self.available = os.path.exists(f"{root}/self/stat")

    def stat(self, pid: int) -> Proc | None:
        if pid <= 0:
            return None
        if not self.available:
            try:
                return Proc(pid, -1, os.getpgid(pid), os.getsid(pid))
            except OSError:
                return None
        try:
            with open(f"{self._root}/{pid}/stat", "rb") as file:
                data = file.read(4096)
        except OSError:
            return None
        return _parse_stat(pid, data)

    def token(self, pid: int) -> str | None:
        if not self.available or pid <= 0:
            return None
        try:
            with open(f"{self._root}/{pid}/environ", "rb") as file:
                data = file.read(_MAX_ENVIRON)
        except OSError:
            return None
        for entry in data.split(b"\0"):
            if entry.startswith(_ENV_KEY):
                return entry[len(_ENV_KEY) :].decode("ascii", "replace")
        return None

    def snapshot(self) -> dict[int, Proc]:
        if not self.available:
            return {}
        table = {}
        try:
            entries = os.listdir(self._root)
        except OSError:
            return {}
        for entry in entries:
            if entry.isdigit():
                proc = self.stat(int(entry))
                if proc is not None:
                    table[proc.pid] = proc
        return table


def _parse_stat(pid: int, data: bytes) -> Proc | None:
    """``/proc/PID/stat``: ``pid (comm) state ppid pgrp session ...``; the command may hold any byte."""
    end = data.rfind(b")")
    fields = data[end + 2 :].split()
    if end < 0 or len(fields) < 4:
        return None
    try:
        ppid, pgid, sid = int(fields[1]), int(fields[2]), int(fields[3])
    except ValueError:
        return None
    return Proc(pid, ppid, pgid, sid, zombie=fields[0] in (b"Z", b"X"))


# -- the child subreaper -------------------------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37


def _prctl(option: int, arg: Any) -> int | None:
    """``prctl(option, arg, 0, 0, 0)``; None where there is none (not Linux, no such libc function)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover -- a libc without prctl
        return None
    zero = ctypes.c_ulong(0)
    result: int = function(option, arg, zero, zero, zero)
    return result


class _Subreaper:
    """Makes this process a child subreaper while anything uses it (a count), then restores what it was.

    Linux only; elsewhere, or if ``prctl`` fails, `active` stays False and nothing else changes.
    """

    def __init__(self) -> None:
        self._users = 0
        self._set_by_us = False
        #: Whether this process is a child subreaper (by us or from before).
        self.active = False

    @staticmethod
    def is_set() -> bool | None:
        """Whether this process is a child subreaper now (None: cannot tell, not Linux)."""
        value = ctypes.c_int(0)
        if _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value)) != 0:
            return None
        return bool(value.value)

    def acquire(self) -> None:
        self._users += 1
        if self._users > 1:
            return
        was = self.is_set()
        if was is None:
            return
        self.active = was or _prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1)) == 0
        self._set_by_us = self.active and not was

    def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users > 0:
            return
        if self._set_by_us:
            _prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(0))
        self._set_by_us = self.active = False


#: The process-wide subreaper switch (one per process, shared by every supervisor in it).
SUBREAPER: Final = _Subreaper()
