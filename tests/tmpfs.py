"""A small, really full file system for storage-fault tests: a tmpfs of a few hundred KiB in a test's tmp dir.

`small_tmpfs(directory, size)` mounts a tmpfs of ``size`` bytes on ``directory`` (created) and unmounts it
when the context ends, whatever happens (lazily, if a test left a file open). Mounting needs root on Linux;
`tmpfs_unavailable_reason` says why it cannot be done here (``None`` when it can): the tests skip with that
reason, or fail under ``CI=true`` (conftest's ``skip_or_fail``), where everything must run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _mount(size: int, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _umount(directory: Path) -> None:
    done = subprocess.run(["umount", str(directory)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:  # something still has a file open there: detach it now, freed when closed
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30, check=False)


@functools.cache
def tmpfs_unavailable_reason() -> str | None:
    """Why a small tmpfs cannot be mounted here, or None."""
    if not sys.platform.startswith("linux"):
        return f"a small tmpfs needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "mounting a small tmpfs (a really full disk) needs root; run the tests as root (CI does)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount and umount are not installed (apt-get install mount)"
    probe = Path(tempfile.mkdtemp(prefix="vwos-tmpfs-probe-"))
    try:
        done = _mount(64 * 1024, probe)
        if done.returncode != 0:
            return f"cannot mount a tmpfs here: {(done.stderr or done.stdout).strip()}"
        _umount(probe)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return None


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes on ``directory`` (created if missing); unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    done = _mount(size, directory)
    if done.returncode != 0:
        raise RuntimeError(f"mount tmpfs on {directory}: {(done.stderr or done.stdout).strip()}")
    try:
        yield directory
    finally:
        _umount(directory)


def resize(directory: Path, size: int) -> None:
    """Give the tmpfs mounted on ``directory`` a new size (more space "returns")."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(directory)], check=True, capture_output=True, timeout=30
    )


def fill(directory: Path, name: str = "filler") -> Path:
    """Fill the file system of ``directory`` to its last byte with one file (delete it to free the space)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while os.write(fd, block):
                    pass
    finally:
        os.close(fd)
    return path
