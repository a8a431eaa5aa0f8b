"""Reading a recording that has no summary: its recorder was killed (``kill -9``, a crash, the power lost)
before it could write the summary and the footer. Its records are read in order, with the ``mcap``
package's `StreamReader`, up to the first one that is not whole (cut short, or a chunk that does not
decompress or fails its CRC); what they held is kept, and the bytes from there to the end of the file are
counted as lost.

A file read here is whole up to `Scan.end_offset`: each chunk is all or nothing, so every message read is
one the recorder wrote completely.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from services.record._json import RecordingError

__all__ = ["MAGIC", "Scan", "leading_metadata", "scan_messages"]

#: The bytes every MCAP file starts and ends with.
MAGIC: Final = b"\x89MCAP0\r\n"
#: The largest record (or decompressed chunk) a scan loads; a larger length is damage, not a MemoryError.
RECORD_LIMIT: Final = 256 * 2**20


class _CutShort(Exception):
    """A record goes on past the end of the file."""


class _Exact:
    """A file read exactly: a read past its end raises `_CutShort` (before reading) rather than returning
    less, so that a record cut short is never taken for a shorter one."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._size - self._pos
        if n > self._size - self._pos:
            raise _CutShort
        data = self._stream.read(n)
        if len(data) != n:  # the file shrank under us
            raise _CutShort
        self._pos += n
        return data

    def tell(self) -> int:
        return self._pos


class Scan:
    """What a scan of a file found. Filled in as `scan_messages` goes; complete once it is exhausted.

    ``end_offset`` is the end of the last whole record, ``lost_bytes`` what follows it; ``problem`` says
    why the scan stopped before the end of the file (None: it read the file to its end); ``footer`` is
    whether it reached the footer (a whole file whose summary was unusable)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.header: Any = None
        self.schemas: dict[int, Any] = {}
        self.channels: dict[int, Any] = {}
        self.counts: dict[int, int] = {}
        self.messages = 0
        self.start: int | None = None
        self.end: int | None = None
        self.chunks = 0
        self.compression: set[str] = set()
        self.metadata: dict[str, dict[str, str]] = {}
        self.end_offset = 0
        self.footer = False
        self.problem: str | None = None

    @property
    def lost_bytes(self) -> int:
        return self.size - self.end_offset

    def describe(self, reason: str) -> str:
        """One line: that the file has no (usable) summary, what was read and what was lost."""
        read = f"read its {self.chunks} whole chunk(s), {self.messages} messages"
        if self.lost_bytes == 0:
            return f"{self.path}: {reason}; {read}; nothing is lost"
        return f"{self.path}: {reason}; {read}; the last {self.lost_bytes} bytes are lost ({self.problem})"

    def _count(self, message: Any) -> None:
        self.counts[message.channel_id] = self.counts.get(message.channel_id, 0) + 1
        self.messages += 1
        t = message.log_time
        if self.start is None or t < self.start:
            self.start = t
        if self.end is None or t > self.end:
            self.end = t


class _Unreadable(Exception):
    """A record that is whole but cannot be read (a damaged chunk)."""


def scan_messages(path: Path, stream: IO[bytes], scan: Scan) -> Iterator[tuple[Any, Any, Any]]:
    """The (schema, channel, message) of each message of the file open as ``stream`` (at its start), in the
    order they were written, as far as the file is whole; fills in ``scan`` as it goes. `RecordingError` for
    a file that is not MCAP at all (no magic: an empty file, another format)."""
    from mcap.exceptions import InvalidMagic, McapError
    from mcap.records import Channel, Chunk, Footer, Header, Message, Metadata, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    exact = _Exact(stream, scan.size)
    if scan.size < len(MAGIC) or stream.read(len(MAGIC)) != MAGIC:
        what = "the file is empty" if scan.size == 0 else "it does not start as an MCAP file does"
        raise RecordingError(f"{path}: not an MCAP recording: {what}")
    stream.seek(0)
    scan.end_offset = len(MAGIC)
    records = StreamReader(exact, emit_chunks=True, record_size_limit=RECORD_LIMIT).records  # type: ignore[arg-type]
    try:
        for record in records:
            if isinstance(record, Chunk):
                if record.uncompressed_size > RECORD_LIMIT:
                    raise _Unreadable(f"a chunk of {record.uncompressed_size} bytes")
                try:
                    inner = breakup_chunk(record, validate_crc=True)
                except Exception as exc:  # zstd's errors, a CRC mismatch, a record cut short inside
                    raise _Unreadable(f"a damaged chunk: {_what(exc)}") from None
                schemas: dict[int, Any] = {}  # declared in this chunk: kept only if all of it is read
                channels: dict[int, Any] = {}
                found = []
                for item in inner:
                    if type(item) is Schema:
                        schemas[item.id] = item
                    elif type(item) is Channel:
                        channels[item.id] = item
                    elif type(item) is Message:
                        channel = channels.get(item.channel_id) or scan.channels.get(item.channel_id)
                        if channel is None:
                            raise _Unreadable(f"a message of channel {item.channel_id}, which none declared")
                        schema = schemas.get(channel.schema_id) or scan.schemas.get(channel.schema_id)
                        found.append((schema, channel, item))
                scan.schemas.update(schemas)
                scan.channels.update(channels)
                for _, _, message in found:
                    scan._count(message)
                scan.chunks += 1
                scan.compression.add(record.compression or "none")
                scan.end_offset = exact.tell()
                yield from found
                continue
            if isinstance(record, Message):  # an unchunked file
                channel = scan.channels.get(record.channel_id)
                if channel is None:
                    raise _Unreadable(f"a message of channel {record.channel_id}, which none declared")
                scan._count(record)
                scan.end_offset = exact.tell()
                yield scan.schemas.get(channel.schema_id), channel, record
                continue
            if isinstance(record, Header):
                scan.header = record
            elif isinstance(record, Schema):
                scan.schemas.setdefault(record.id, record)
            elif isinstance(record, Channel):
                scan.channels.setdefault(record.id, record)
            elif isinstance(record, Metadata):
                scan.metadata[record.name] = dict(record.metadata)
            elif isinstance(record, Footer):
                scan.footer = True
            scan.end_offset = exact.tell()
        scan.end_offset = exact.tell()  # the closing magic
    except _CutShort:
        scan.problem = f"a record cut short at byte {scan.end_offset}"
    except _Unreadable as exc:
        scan.problem = f"{exc} at byte {scan.end_offset}"
    except InvalidMagic:
        scan.problem = f"no closing magic at byte {scan.end_offset}"
    except (McapError, struct.error, ValueError, UnicodeDecodeError, MemoryError) as exc:
        scan.problem = f"an unreadable record at byte {scan.end_offset}: {_what(exc)}"


def leading_metadata(stream: IO[bytes], size: int) -> dict[str, dict[str, str]]:
    """The metadata records before the first chunk of the file open as ``stream`` (at its start): what a
    vwos recorder writes at the start of each file. Reads no further than the first chunk."""
    from mcap.records import Chunk, Footer, Metadata
    from mcap.stream_reader import StreamReader

    found: dict[str, dict[str, str]] = {}
    records = StreamReader(_Exact(stream, size), emit_chunks=True, record_size_limit=RECORD_LIMIT).records  # type: ignore[arg-type]
    try:
        for record in records:
            if isinstance(record, Metadata):
                found[record.name] = dict(record.metadata)
            elif isinstance(record, (Chunk, Footer)):
                break
    except Exception:  # a file cut short or damaged before its first chunk: what was found so far
        pass
    return found


def _what(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
