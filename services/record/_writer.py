"""The MCAP writer of a recording: samples to messages, one channel per topic and type, one JSON Schema per
type, zstd chunks, the metadata record, and splitting into numbered files by size or duration."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Final

from bus import Codec, NotAvailable, Sample, default_codec
from services.record._fastmcap import MessageAdder, message_adder
from services.record._json import RecordingError, float_encoder, float_tail, sample_json, type_key
from services.record._schema import SCHEMA_ENCODING, sample_schema, schemas_of

__all__ = ["METADATA_NAME", "PROFILE", "RecordingWriter"]

#: The name of the metadata record vwos writes into every file.
METADATA_NAME: Final = "vwos"
#: The MCAP header's profile (a JSON recording of vwos bus samples).
PROFILE: Final = ""
_MESSAGE_ENCODING: Final = "json"
_NS: Final = 1_000_000_000


def _version() -> str:
    try:
        return importlib.metadata.version("vwos")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vwos runs from a checkout
        return "unknown"


def _ns(seconds: float) -> int:
    """Seconds as MCAP's nanoseconds (unsigned 64 bits: a negative or non-finite time is 0)."""
    if not seconds > 0 or not math.isfinite(seconds):
        return 0
    return min(int(seconds * _NS), 2**64 - 1)


def _close_quietly(stream: IO[bytes]) -> None:
    """Close a file whose last flush may fail again (a full disk), the file descriptor included."""
    with contextlib.suppress(OSError):
        stream.close()
    raw = getattr(stream, "raw", None)
    if raw is not None and not raw.closed:
        with contextlib.suppress(OSError):
            raw.close()


class _Channel:
    __slots__ = ("encode_float", "id", "key", "publisher", "tail")

    def __init__(self, channel_id: int, key: str | None) -> None:
        self.id = channel_id
        self.key = key
        #: The publisher whose floats `encode_float` encodes (None: not a float channel yet), and the end
        #: of their messages after the value (`float_tail`).
        self.publisher: str | None = None
        self.encode_float: Any = None
        self.tail = ""


class RecordingWriter:
    """Writes bus samples to an MCAP file (``path``), or to numbered files when it splits.

    ``write(sample)`` / ``write_many(samples)`` record; `count_dropped` counts samples that never arrived;
    `close` writes the metadata and the summary. Each topic gets one channel per type its samples have had
    (a topic whose type changes gets a second channel, of the same topic name); a `bus.NotAvailable` goes to
    the topic's current channel. ``split_size`` (bytes) and ``split_duration`` (seconds of bus time) start
    a new file ``STEM_0001.mcap``, ``STEM_0002.mcap``... (the first is ``STEM_0000.mcap``); without them the
    recording is the one file ``path``. The split by size happens at the first chunk boundary past it.
    ``metadata`` is added to the ``vwos`` metadata record beside the version, patterns and counts.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        patterns: Sequence[str] = ("**",),
        vehicle_id: str | None = None,
        split_size: int | None = None,
        split_duration: float | None = None,
        chunk_size: int = 1024 * 1024,
        codec: Codec = default_codec,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if split_size is not None and split_size <= 0:
            raise RecordingError(f"split_size must be a positive number of bytes, not {split_size}")
        if split_duration is not None and not split_duration > 0:
            raise RecordingError(f"split_duration must be positive seconds, not {split_duration}")
        self.path = Path(path)
        self.patterns = tuple(patterns)
        self.vehicle_id = vehicle_id
        self.split_size = split_size
        self.split_duration = split_duration
        self.chunk_size = min(chunk_size, split_size) if split_size else chunk_size
        self.codec = codec
        self.extra_metadata = dict(metadata or {})
        #: The files written so far, in order.
        self.files: list[Path] = []
        #: Samples recorded (all files) and counted as dropped.
        self.recorded = 0
        #: Samples that could not be recorded (a value the JSON form cannot hold: nested too deep, of a
        #: type it does not know); counted in `dropped` too.
        self.refused = 0
        #: Samples missing by their topics' seq numbers (a gap between two recorded samples of a topic).
        self.missed = 0
        self._counted = 0
        self._last_seq: dict[str, int] = {}
        self._file_recorded = 0
        self._writer: Any = None
        self._stream: IO[bytes] | None = None
        self._channels: dict[tuple[str, str | None], _Channel] = {}
        self._current: dict[str, _Channel] = {}
        #: Each topic's type (its last), across the files of a split recording.
        self._last_keys: dict[str, str] = {}
        self._schemas: dict[str | None, int] = {}
        self._first_bus_time: float | None = None
        self._closed = False
        #: Names this recording in each file's metadata (``recording_id``): the parts of one split recording
        #: have the same.
        self.recording_id = uuid.uuid4().hex
        self._open_next()

    # -- files ----------------------------------------------------------------------------------------

    def _next_path(self) -> Path:
        if self.split_size is None and self.split_duration is None:
            return self.path
        suffix = self.path.suffix or ".mcap"
        return self.path.with_name(f"{self.path.stem}_{len(self.files):04d}{suffix}")

    def _open_next(self) -> None:
        from mcap.writer import CompressionType, Writer

        path = self._next_path()
        try:
            self._stream = open(path, "wb")  # noqa: SIM115 -- closed by _finish_file
        except OSError as exc:
            raise RecordingError(f"{path}: cannot write the recording: {exc.strerror or exc}") from None
        self.files.append(path)
        self._writer = Writer(self._stream, chunk_size=self.chunk_size, compression=CompressionType.ZSTD)
        self._add: MessageAdder = message_adder(self._writer)
        try:
            self._writer.start(profile=PROFILE, library=f"vwos {_version()}")
            # What is known at the start, on disk at once: a file whose recorder is killed still says what
            # it is (the metadata record at the end, with the counts, supersedes this one).
            self._writer.add_metadata(METADATA_NAME, self._metadata(final=False))
            self._stream.flush()
        except OSError as exc:
            _close_quietly(self._stream)
            self._stream = self._writer = None
            self._closed = True
            raise self._write_error(exc) from None
        self._channels.clear()
        self._current.clear()
        self._schemas.clear()
        self._first_bus_time = None
        self._file_recorded = 0

    def _metadata(self, *, final: bool = True) -> dict[str, str]:
        data = {"vwos_version": _version(), "patterns": json.dumps(list(self.patterns))}
        if final:
            data["recorded"] = str(self._file_recorded)
            data["dropped"] = str(self.dropped)
            data["refused"] = str(self.refused)
        data["file_index"] = str(len(self.files) - 1)
        data["recording_id"] = self.recording_id
        data.update(self.extra_metadata)
        if self.vehicle_id is not None:
            data["vehicle_id"] = self.vehicle_id
        return data

    def _finish_file(self) -> None:
        writer, stream = self._writer, self._stream
        self._writer = self._stream = None
        if writer is None or stream is None:
            return
        try:
            writer.add_metadata(METADATA_NAME, self._metadata())
            writer.finish()
        except OSError as exc:
            raise self._write_error(exc) from None
        finally:
            _close_quietly(stream)

    def _write_error(self, exc: OSError) -> RecordingError:
        return RecordingError(f"{self.files[-1]}: cannot write the recording: {exc.strerror or exc}")

    def _maybe_split(self, bus_time: float) -> None:
        if self._first_bus_time is None:
            self._first_bus_time = bus_time
            return
        if self._file_recorded == 0:
            return
        over_time = self.split_duration is not None and bus_time - self._first_bus_time >= self.split_duration
        assert self._stream is not None
        over_size = self.split_size is not None and self._stream.tell() >= self.split_size
        if over_time or over_size:
            self._finish_file()
            self._open_next()
            self._first_bus_time = bus_time

    # -- channels -------------------------------------------------------------------------------------

    def _schema_id(self, key: str | None) -> int:
        schema_id = self._schemas.get(key)
        if schema_id is None:
            data = sample_schema(key, schemas_of(key, self.codec) if key is not None else [])
            schema_id = self._writer.register_schema(key or "unknown", SCHEMA_ENCODING, data)
            self._schemas[key] = schema_id
        return schema_id

    def _channel(self, topic: str, key: str | None) -> _Channel:
        if key is None:  # not available: the topic's channel as it is (its type's in an earlier part)
            current = self._current.get(topic)
            if current is not None:
                return current
            key = self._last_keys.get(topic)
        else:
            self._last_keys[topic] = key
        channel = self._channels.get((topic, key))
        if channel is None:
            channel_id = self._writer.register_channel(
                topic, _MESSAGE_ENCODING, self._schema_id(key), {"type": key or "unknown"}
            )
            channel = _Channel(channel_id, key)
            self._channels[(topic, key)] = channel
        self._current[topic] = channel
        return channel

    # -- samples --------------------------------------------------------------------------------------

    def write(self, sample: Sample[Any]) -> None:
        """Record one sample."""
        self.write_many((sample,))

    def write_many(self, samples: Iterable[Sample[Any]]) -> None:
        """Record samples, in order. `RecordingError` if the file cannot be written (a full disk): the
        recording is closed then, what was written before the last chunk kept."""
        if self._closed:
            raise RecordingError("the recording is closed")
        try:
            self._write_many(samples)
        except OSError as exc:
            self._closed = True
            stream, self._stream, self._writer = self._stream, None, None
            if stream is not None:
                _close_quietly(stream)
            raise self._write_error(exc) from None

    def _write_many(self, samples: Iterable[Sample[Any]]) -> None:
        splits = self.split_size is not None or self.split_duration is not None
        channels = self._current
        add = self._add
        codec = self.codec
        last_seq = self._last_seq
        missed = 0
        n = 0
        for sample in samples:
            topic, value, timestamp, bus_time, publisher, seq = sample
            if splits:
                self._maybe_split(bus_time)
                add = self._add
                channels = self._current
            last = last_seq.get(topic)
            if last is not None and seq > last + 1:
                missed += seq - last - 1
            last_seq[topic] = seq
            channel = channels.get(topic)
            if (
                type(value) is float
                and channel is not None
                and channel.publisher == publisher
                and value - value == 0.0  # finite
            ):  # the hot path: a finite float of the topic's publisher, its message built here
                data = f'{{"value":{value!r}{channel.tail}{seq}}}'.encode()
            else:
                key = type_key(value, codec) if type(value) is not NotAvailable else None
                if channel is None or (key is not None and channel.key != key):
                    channel = self._channel(topic, key)
                if key == "float" and type(value) is float:
                    if channel.publisher != publisher:
                        channel.publisher = publisher
                        channel.encode_float = float_encoder(publisher)
                        channel.tail = float_tail(publisher)
                    data = channel.encode_float(value, seq)
                else:
                    try:
                        data = sample_json(sample, codec)
                    except RecordingError:  # a value JSON cannot hold: counted, the recording goes on
                        self.refused += 1
                        continue
            # (seconds to nanoseconds inline for the times of this century; _ns for the rest)
            log_time = int(timestamp * 1e9) if 0.0 < timestamp < 4e9 else _ns(timestamp)
            publish_time = int(bus_time * 1e9) if 0.0 < bus_time < 4e9 else _ns(bus_time)
            add(channel.id, log_time, data, publish_time, seq & 0xFFFFFFFF)
            n += 1
            if splits:
                self._file_recorded += 1
                self.recorded += 1
        self.missed += missed
        if not splits:
            self._file_recorded += n
            self.recorded += n

    def flush(self) -> None:
        """End the chunk being built and hand everything written so far to the operating system (not
        fsync'd): what a ``kill -9`` of the recorder cannot lose from then on. `record_bus` calls it every
        ``flush_interval`` seconds. Compression works per chunk: flushing very often costs size."""
        if self._closed or self._writer is None or self._stream is None:
            return
        try:
            self._writer.flush()
        except OSError as exc:
            self._closed = True
            stream, self._stream, self._writer = self._stream, None, None
            _close_quietly(stream)
            raise self._write_error(exc) from None

    def _dup_fd(self) -> int | None:
        """A duplicate of the current file's descriptor, for an fsync in another thread (None: closed)."""
        if self._stream is None:
            return None
        try:
            return os.dup(self._stream.fileno())
        except (OSError, ValueError):
            return None

    def count_dropped(self, n: int) -> None:
        """Say that at least ``n`` samples never reached the recording (a subscription's own count)."""
        self._counted = max(self._counted, n)

    @property
    def dropped(self) -> int:
        """Samples that never reached the recording: the larger of `missed` (seq gaps) and the count given
        to `count_dropped`, plus `refused` (written into each file's metadata)."""
        return max(self.missed, self._counted) + self.refused

    def close(self) -> list[Path]:
        """Write the metadata and the summary, close the file; the files written. Idempotent."""
        if not self._closed:
            self._closed = True
            self._finish_file()
        return list(self.files)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
