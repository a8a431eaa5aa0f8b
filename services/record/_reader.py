"""Reading one recording file: its samples back as bus values (`read_recording`) and its summary
(`bag_info`); a file without a summary (its recorder was killed) is read by a scan (`_scan`) up to its
first incomplete record; a file that is not MCAP, or whose chunks are damaged, gives one `RecordingError`
naming the file and what is wrong. Several files as one: `_parts`."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs

from bus import Codec, CodecError, NotAvailable, Sample, TypeSchema, default_codec, matches
from services.record._json import RecordingError, from_json
from services.record._scan import MAGIC, Scan, leading_metadata, scan_messages
from services.record._schema import TYPE_KEY, value_expr

__all__ = ["BagInfo", "ChannelInfo", "bag_info", "read_recording"]

#: The largest record a reader loads (a corrupt length beyond it is an error, not a MemoryError).
_RECORD_LIMIT: Final = 256 * 2**20
_NS: Final = 1e9
#: Why a file is scanned: it does not end as a whole MCAP file does.
_UNFINISHED: Final = "it has no summary (its recorder did not finish it: killed, crashed or the power lost)"


@contextmanager
def _reader(path: Path) -> Iterator[Any]:
    from mcap.exceptions import McapError
    from mcap.reader import SeekingReader

    try:
        with open(path, "rb") as stream:
            try:
                yield SeekingReader(stream, record_size_limit=_RECORD_LIMIT)
            except RecordingError:
                raise
            except (McapError, struct.error, EOFError, ValueError, KeyError, IndexError, MemoryError) as exc:
                raise RecordingError(f"{path}: not a readable MCAP recording: {_what(exc)}") from None
            except Exception as exc:  # zstandard's errors, what else a corrupt file makes the reader raise
                raise RecordingError(f"{path}: not a readable MCAP recording: {_what(exc)}") from None
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None


def _what(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _whole(file: Path) -> tuple[Any, Any, dict[str, dict[str, str]]] | str:
    """The header, summary and metadata of a whole MCAP file (one that ends with its footer and the closing
    magic, with a readable summary); else why not, as text (the file is then read by a scan).
    `RecordingError` for a file that cannot be opened or is not MCAP at all."""
    from mcap.reader import SeekingReader

    try:
        with open(file, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size == 0 or stream.read(len(MAGIC)) != MAGIC:
                what = "the file is empty" if size == 0 else "it does not start as an MCAP file does"
                raise RecordingError(f"{file}: not an MCAP recording: {what}")
            stream.seek(max(0, size - len(MAGIC)))
            if size < 2 * len(MAGIC) or stream.read(len(MAGIC)) != MAGIC:
                return _UNFINISHED
            stream.seek(0)
            try:
                reader = SeekingReader(stream, record_size_limit=_RECORD_LIMIT)
                header = reader.get_header()
                summary = reader.get_summary()
                if summary is None or summary.statistics is None:
                    return "it has no summary section"
                metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
            except Exception as exc:  # the mcap reader's, struct's, what else a damaged summary raises
                return f"its summary is unreadable ({_what(exc)})"
    except OSError as exc:
        raise RecordingError(f"{file}: {exc.strerror or exc}") from None
    return header, summary, metadata


def file_metadata(file: Path) -> dict[str, dict[str, str]]:
    """The metadata records of a file by name: a whole file's (the last of each name), else those written
    before its first chunk (a killed recorder's file). Cheap: no chunk is decompressed."""
    whole = _whole(file)
    if not isinstance(whole, str):
        return whole[2]
    try:
        with open(file, "rb") as stream:
            return leading_metadata(stream, os.fstat(stream.fileno()).st_size)
    except OSError as exc:
        raise RecordingError(f"{file}: {exc.strerror or exc}") from None


@contextmanager
def _scanning(file: Path) -> Iterator[tuple[Scan, Iterator[tuple[Any, Any, Any]]]]:
    try:
        with open(file, "rb") as stream:
            scan = Scan(file, os.fstat(stream.fileno()).st_size)
            yield scan, scan_messages(file, stream, scan)
    except OSError as exc:
        raise RecordingError(f"{file}: {exc.strerror or exc}") from None


@attrs.frozen
class ChannelInfo:
    """One channel of a recording: a topic and the type of its values there."""

    id: int
    topic: str
    type: str
    message_encoding: str
    schema_encoding: str
    messages: int


@attrs.frozen
class BagInfo:
    """What `bag_info` says of a recording (times in seconds: ``start``/``end`` of the source timestamps;
    None for an empty recording).

    ``summary`` is False for a file read without its summary (its recorder was killed: see `bag_info`);
    ``lost_bytes`` counts the bytes at the end that could not be read, and ``warnings`` says so in words.
    For a split recording read as one, ``files`` are its parts in order and ``parts`` their own summaries;
    the other fields are the whole's."""

    path: str
    size: int
    messages: int
    start: float | None
    end: float | None
    compression: tuple[str, ...]
    chunks: int
    channels: tuple[ChannelInfo, ...]
    metadata: Mapping[str, Mapping[str, str]]
    library: str
    profile: str
    summary: bool = True
    lost_bytes: int = 0
    warnings: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    parts: tuple[BagInfo, ...] = ()

    @property
    def duration(self) -> float:
        """Seconds from the first to the last source timestamp."""
        return 0.0 if self.start is None or self.end is None else self.end - self.start

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data (`vwos bag info --json`)."""
        data = {
            "path": self.path,
            "files": list(self.files or (self.path,)),
            "size": self.size,
            "messages": self.messages,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "compression": list(self.compression),
            "chunks": self.chunks,
            "library": self.library,
            "profile": self.profile,
            "summary": self.summary,
            "lost_bytes": self.lost_bytes,
            "warnings": list(self.warnings),
            "channels": [attrs.asdict(c) for c in self.channels],
            "metadata": {k: dict(v) for k, v in self.metadata.items()},
        }
        if self.parts:
            data["parts"] = [p.to_json() for p in self.parts]
        return data


def bag_info(path: str | os.PathLike[str]) -> BagInfo:
    """The summary of the recording at ``path``. A file without a summary (its recorder was killed before
    it finished the file) is read chunk by chunk instead: what it holds up to its first incomplete record,
    with ``summary`` False, the bytes lost at its end in ``lost_bytes`` and a line in ``warnings`` (so is a
    file whose summary is damaged). `RecordingError` if it cannot be opened or is not an MCAP file."""
    file = Path(path)
    whole = _whole(file)
    if isinstance(whole, str):
        return _scanned_info(file, whole)
    header, summary, metadata = whole
    stats = summary.statistics
    channels = tuple(
        ChannelInfo(
            id=c.id,
            topic=c.topic,
            type=summary.schemas[c.schema_id].name if c.schema_id in summary.schemas else "",
            message_encoding=c.message_encoding,
            schema_encoding=(summary.schemas[c.schema_id].encoding if c.schema_id in summary.schemas else ""),
            messages=stats.channel_message_counts.get(c.id, 0),
        )
        for c in sorted(summary.channels.values(), key=lambda c: (c.topic, c.id))
    )
    empty = stats.message_count == 0
    return BagInfo(
        path=str(file),
        size=file.stat().st_size,
        messages=stats.message_count,
        start=None if empty else stats.message_start_time / _NS,
        end=None if empty else stats.message_end_time / _NS,
        compression=tuple(sorted({c.compression or "none" for c in summary.chunk_indexes})),
        chunks=len(summary.chunk_indexes),
        channels=channels,
        metadata=metadata,
        library=header.library,
        profile=header.profile,
        files=(str(file),),
    )


def _scanned_info(file: Path, reason: str) -> BagInfo:
    with _scanning(file) as (scan, messages):
        for _ in messages:
            pass
    channels = tuple(
        ChannelInfo(
            id=c.id,
            topic=c.topic,
            type=scan.schemas[c.schema_id].name if c.schema_id in scan.schemas else "",
            message_encoding=c.message_encoding,
            schema_encoding=scan.schemas[c.schema_id].encoding if c.schema_id in scan.schemas else "",
            messages=scan.counts.get(c.id, 0),
        )
        for c in sorted(scan.channels.values(), key=lambda c: (c.topic, c.id))
    )
    return BagInfo(
        path=str(file),
        size=scan.size,
        messages=scan.messages,
        start=None if scan.start is None else scan.start / _NS,
        end=None if scan.end is None else scan.end / _NS,
        compression=tuple(sorted(scan.compression)),
        chunks=scan.chunks,
        channels=channels,
        metadata=scan.metadata,
        library=scan.header.library if scan.header is not None else "",
        profile=scan.header.profile if scan.header is not None else "",
        summary=False,
        lost_bytes=scan.lost_bytes,
        warnings=(scan.describe(reason),),
        files=(str(file),),
    )


class _ChannelDecoder:
    """Decodes one channel's messages back to samples."""

    def __init__(self, file: Path, topic: str, schema: Any, codec: Codec) -> None:
        where = f"{file}: channel {topic}"
        try:
            document = json.loads(schema.data) if schema is not None else {}
            described = document.get(TYPE_KEY, {}) if type(document) is dict else {}
            key = described.get("type")
            wires = described.get("schemas", [])
            schemas = [TypeSchema.from_wire(w) for w in wires] if type(wires) is list else []
        except (ValueError, CodecError, AttributeError) as exc:
            raise RecordingError(f"{where}: its schema is not a vwos sample schema: {exc}") from None
        if key is not None and type(key) is not str:
            raise RecordingError(f"{where}: its schema names no type")
        self.where = where
        self.key: str | None = key
        self.schemas = {s.name: s for s in schemas}
        self.expr = value_expr(key) if key is not None and not key.startswith("?") else "any"
        self.codec = codec
        if schemas:
            codec.learn(schemas)  # ignored for the types registered here: their classes win

    def _resolve(self, value: Any) -> Any:
        """A registered class's instance if this process has the class, else the Record/EnumMember."""
        try:
            resolved = self.codec.decode(self.codec.encode(value))
        except CodecError as exc:
            raise RecordingError(f"{self.where}: {exc}") from None
        # Still a Record or EnumMember: no class here; keep the one built by the schema (tuples stay tuples)
        return value if type(resolved) is type(value) else resolved

    def value(self, data: Any) -> Any:
        return from_json(data, self.expr, self.schemas, self.where, resolve=self._resolve)


def read_recording(
    path: str | os.PathLike[str], patterns: Sequence[str] = (), *, codec: Codec = default_codec
) -> Iterator[Sample[Any]]:
    """The samples of the recording at ``path`` (of the topics ``patterns`` match; all without), in the
    order they were recorded, as `bus.Sample`s: values of types registered with ``codec`` as their
    classes, other records as `bus.Record`, not-available samples as `bus.NotAvailable`. Raises
    `RecordingError` (naming the file, and the channel and message where it is one) for a file that is not
    a whole vwos recording. A file without a summary (its recorder was killed) gives the samples of its
    whole chunks and ends quietly where it was cut short: `bag_info` says how much was lost."""
    file = Path(path)
    whole = _whole(file)
    if isinstance(whole, str):
        with _scanning(file) as (_, messages):
            yield from _samples(file, messages, patterns, codec)
        return
    with _reader(file) as reader:
        yield from _samples(file, reader.iter_messages(log_time_order=False), patterns, codec)


def _samples(
    file: Path, messages: Iterator[tuple[Any, Any, Any]], patterns: Sequence[str], codec: Codec
) -> Iterator[Sample[Any]]:
    decoders: dict[int, _ChannelDecoder | None] = {}
    for index, (schema, channel, message) in enumerate(messages):
        if channel.id not in decoders:
            wanted = not patterns or any(matches(p, channel.topic) for p in patterns)
            decoder = _ChannelDecoder(file, channel.topic, schema, codec) if wanted else None
            decoders[channel.id] = decoder
        decoder = decoders[channel.id]
        if decoder is None:
            continue
        yield _sample(decoder, channel.topic, message, index)


def _sample(decoder: _ChannelDecoder, topic: str, message: Any, index: int) -> Sample[Any]:
    try:
        data = json.loads(message.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{decoder.where}, message {index}: not JSON: {exc}") from None
    if type(data) is not dict:
        raise RecordingError(f"{decoder.where}, message {index}: a sample is a JSON object")
    publisher = data.get("publisher", "")
    seq = data.get("seq", message.sequence)
    if type(publisher) is not str or type(seq) is not int:
        raise RecordingError(f"{decoder.where}, message {index}: publisher or seq of the wrong type")
    if data.get("available", True) is False:
        try:
            value: Any = NotAvailable(data.get("reason"))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise RecordingError(f"{decoder.where}, message {index}: {exc}") from None
    else:
        try:
            value = decoder.value(data.get("value"))
        except RecordingError as exc:
            raise RecordingError(f"message {index} of {exc}") from None
    return Sample(topic, value, message.log_time / _NS, message.publish_time / _NS, publisher, seq)
