"""The ``file`` transport: each batch becomes one file in a directory, written atomically.

The default when no broker is configured: the batches pile up where another process (a sync job, a USB
export, a test) can pick them up, and ``vwos uplink inspect DIR`` can read them. A batch is written to a
hidden temporary name, flushed and fsync'ed, renamed to its final name and the directory fsync'ed: only
then does `FileTransport.publish` return (the acknowledgement). A reader never sees a partial file under a
final name; after a crash, at worst a ``.*.tmp-*`` file is left behind (never a final one), and the batch is
written again with the same name and content.

File names: ``<vehicle>_<stream>_<seq, 20 digits>.cbor`` -- ``vehicle`` percent-encoded to be a safe file
name, ``stream`` the outbox's stream id, ``seq`` zero-padded so that names sort in sequence order.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from pathlib import Path

import trio

from services.uplink._batch import BatchError, read_header
from services.uplink._transport import TransportError

__all__ = ["FileTransport", "batch_file_name"]

#: The suffix of a batch file.
SUFFIX = ".cbor"


def batch_file_name(vehicle_id: str, stream: str, seq: int) -> str:
    """The final file name of a batch."""
    vehicle = urllib.parse.quote(vehicle_id, safe="-") or "%00"
    if vehicle.startswith("."):  # never a hidden file (readers skip those: temporary files are hidden)
        vehicle = "%2E" + vehicle[1:]
    return f"{vehicle}_{urllib.parse.quote(stream, safe='')}_{seq:020d}{SUFFIX}"


class FileTransport:
    """Writes each batch as a file into ``directory`` (created if missing); ``fsync=False`` skips the
    fsyncs (tests, tmpfs), at the price of durability across a power loss."""

    name = "file"

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self._connected = False

    async def connect(self) -> None:
        """Create the directory if needed and check that it is writable."""
        try:
            await trio.to_thread.run_sync(self._prepare)
        except OSError as exc:
            raise TransportError(f"cannot use {self.directory} for batches: {exc.strerror or exc}") from None
        self._connected = True

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")

    async def publish(self, seq: int, payload: bytes) -> None:
        """Write the batch; returns once it is renamed into place (and synced, with ``fsync``)."""
        if not self._connected:
            raise TransportError("the file transport is not connected")
        try:
            header = read_header(payload)
        except BatchError as exc:
            raise TransportError(f"batch {seq} is not a valid batch: {exc}") from None
        if header.seq != seq:
            raise TransportError(f"batch {seq} carries seq {header.seq} in its envelope")
        target = self.directory / batch_file_name(header.vehicle_id, header.stream, seq)
        try:
            await trio.to_thread.run_sync(self._write, target, payload)
        except OSError as exc:
            raise TransportError(f"cannot write batch {seq} to {target}: {exc.strerror or exc}") from None

    def _write(self, target: Path, payload: bytes) -> None:
        temporary = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if self.fsync:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    async def close(self) -> None:
        """Nothing to release; `publish` needs `connect` again afterwards."""
        self._connected = False
