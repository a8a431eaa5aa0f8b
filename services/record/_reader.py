"""Reading a recording: its samples back as bus values (`read_recording`) and its summary (`bag_info`);
a file that is not a whole MCAP recording gives one `RecordingError` naming the file and what is wrong."""

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
from services.record._schema import TYPE_KEY, value_expr

__all__ = ["BagInfo", "ChannelInfo", "bag_info", "read_recording"]

#: The largest record a reader loads (a corrupt length beyond it is an error, not a MemoryError).
_RECORD_LIMIT: Final = 256 * 2**20
_NS: Final = 1e9


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
    """What `bag_info` says of a recording (times in seconds: ``start``/``end`` of the source timestamps,
    ``bus_start``/``bus_end`` of bus time; None for an empty recording)."""

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

    @property
    def duration(self) -> float:
        """Seconds from the first to the last source timestamp."""
        return 0.0 if self.start is None or self.end is None else self.end - self.start

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data (`vwos bag info --json`)."""
        return {
            "path": self.path,
            "size": self.size,
            "messages": self.messages,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "compression": list(self.compression),
            "chunks": self.chunks,
            "library": self.library,
            "profile": self.profile,
            "channels": [attrs.asdict(c) for c in self.channels],
            "metadata": {k: dict(v) for k, v in self.metadata.items()},
        }


def bag_info(path: str | os.PathLike[str]) -> BagInfo:
    """The summary of the recording at ``path``; `RecordingError` if it is not a whole MCAP file."""
    file = Path(path)
    with _reader(file) as reader:
        header = reader.get_header()
        summary = reader.get_summary()
        if summary is None or summary.statistics is None:
            raise RecordingError(f"{file}: the MCAP file has no summary (is it still being written?)")
        stats = summary.statistics
        metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
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
    a whole vwos recording."""
    file = Path(path)
    decoders: dict[int, _ChannelDecoder | None] = {}
    with _reader(file) as reader:
        for index, (schema, channel, message) in enumerate(reader.iter_messages(log_time_order=False)):
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
