"""The outbox's planning: what to store and what a batch takes, as plain data and functions, no SQLite.

The outbox (``_outbox.py``) keeps the SQL and the bookkeeping; this module decides: how an accept's rows
become chunks (`plan_accept`: grouped by `Keep`, topic ids, values prepared and checked, bad samples
refused with their reason), how chunks are split when the disk is too full for one write (`_halves`),
the chunk encoding (`_encode_chunk`, `_decode_chunk`), and how a batch is formed from stored chunks
(`gather` the candidates, `fill` the batch, `consume` the chunks). Testable without a database.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import cbor2

from bus import Codec, CodecError
from services.uplink._batch import BatchBuilder, BatchError, SampleTooLargeError, prepare_value
from services.uplink._campaign import Keep

__all__ = ["CHUNK_SAMPLES", "ROW_OVERHEAD", "Row", "consume", "fill", "gather", "plan_accept"]

#: Samples are stored in chunks of at most this many (one row each), grouped by `Keep`.
CHUNK_SAMPLES: Final = 4096
#: Bytes counted in ``stored_bytes`` for each stored row besides its blob (SQLite's own bookkeeping).
ROW_OVERHEAD: Final = 64
#: Timestamps and ttls in microseconds stay within this (about 73,000 years), so that SQLite's 64-bit
#: integers hold their sums.
_MAX_US: Final = 1 << 61
#: One sample as the service hands it over: ``(topic, value, timestamp_seconds, keep)``.
Row = tuple[str, object, float, Keep]


@attrs.frozen
class _Group:
    id: int
    campaigns: tuple[str, ...]
    priority: int
    ttl_us: int | None


@attrs.frozen
class _NewChunk:
    """A chunk of an accept, encoded, not yet stored."""

    keep: Keep
    tids: list[int]
    times: list[int]
    values: list[Any]
    data: bytes


def _new_chunk(keep: Keep, tids: list[int], times: list[int], values: list[Any]) -> _NewChunk:
    return _NewChunk(keep, tids, times, values, _encode_chunk(tids, times, values))


#: The smallest piece an accept is split into when the disk has no room for the WAL of a larger one.
_MIN_SPLIT: Final = 64


def _halves(chunks: list[_NewChunk]) -> list[list[_NewChunk]]:
    """``chunks`` in two parts, in order (a single chunk split in two); [] if too small to split."""
    if len(chunks) > 1:
        middle = len(chunks) // 2
        return [chunks[:middle], chunks[middle:]]
    if not chunks or len(chunks[0].tids) < 2 * _MIN_SPLIT:
        return []
    c = chunks[0]
    m = len(c.tids) // 2
    return [
        [_new_chunk(c.keep, c.tids[:m], c.times[:m], c.values[:m])],
        [_new_chunk(c.keep, c.tids[m:], c.times[m:], c.values[m:])],
    ]


class _Chunk:
    """A chunk being consumed while a batch is formed."""

    __slots__ = ("bytes", "corrupt", "expired", "group", "id", "tids", "times", "values")

    def __init__(
        self, id: int, group: _Group, tids: list[int], times: list[int], values: list[Any], size: int
    ) -> None:
        self.id = id
        self.group = group
        self.tids = tids
        self.times = times
        self.values = values
        self.bytes = size
        #: Samples dropped because they are past their ttl.
        self.expired = 0
        #: The chunk could not be decoded: it is dropped whole (``expired`` holds its sample count).
        self.corrupt = False


def _encode_chunk(tids: list[int], times: list[int], values: list[Any]) -> bytes:
    return cbor2.dumps([tids, times, values])


def _decode_chunk(data: bytes, crc: int | None = None) -> tuple[list[int], list[int], list[Any]]:
    if crc is not None and zlib.crc32(data) != crc:
        raise ValueError("the chunk's CRC-32 does not match its bytes")
    item = cbor2.loads(data)
    if type(item) is not list or len(item) != 3:
        raise ValueError("a chunk is an array of 3 columns")
    tids, times, values = item
    if not (type(tids) is list and type(times) is list and type(values) is list):
        raise ValueError("a chunk's columns are arrays")
    if not len(tids) == len(times) == len(values) > 0:
        raise ValueError("a chunk's columns differ in length or are empty")
    return tids, times, values


def plan_accept(
    rows: Iterable[Row],
    topic_ids: Mapping[str, int],
    topic_names: Mapping[int, str],
    builder: BatchBuilder,
    codec: Codec,
    types: dict[str, set[str]] | None = None,
) -> tuple[list[_NewChunk], list[tuple[int, str]], list[tuple[str, str, str]]] | None:
    """What an accept of ``rows`` stores: its chunks (grouped by `Keep`, encoded, at most `CHUNK_SAMPLES`
    each), the topics it names for the first time ``(id, name)`` (ids after the known ``topic_names``), and
    the samples it refuses ``(topic, counter, reason)``; None if there is nothing at all. With ``types``,
    the names of the registered types each topic's values hold are added to ``types[topic]``."""
    groups: dict[Keep, tuple[list[int], list[int], list[Any]]] = {}
    new_ids: dict[str, int] = {}  # joins topic_ids only once committed
    new_topics: list[tuple[int, str]] = []
    refused: list[tuple[str, str, str]] = []
    next_tid = max(topic_names, default=0) + 1
    for topic, value, timestamp, keep in rows:
        columns = groups.get(keep)
        if columns is None:
            columns = groups[keep] = ([], [], [])
        tid = topic_ids.get(topic)
        if tid is None:
            tid = new_ids.get(topic)
            if tid is None:
                if type(topic) is not str:
                    refused.append((str(topic), "refused_unencodable", f"topic must be a str, not {topic!r}"))
                    continue
                tid = new_ids[topic] = next_tid
                new_topics.append((next_tid, topic))
                next_tid += 1
        try:
            t_us = round(timestamp * 1_000_000)  # its range is checked per group below
            if type(value) is not float:
                noted = None
                if types is not None:
                    noted = types.get(topic)
                    if noted is None:
                        noted = types[topic] = set()
                value = prepare_value(value, codec, noted)
                builder.check(topic, value)
        except BatchError as exc:
            refused.append((topic, "refused_oversize", str(exc)))
            continue
        except CodecError as exc:
            refused.append((topic, "refused_unencodable", str(exc)))
            continue
        except (TypeError, ValueError, OverflowError) as exc:
            refused.append((topic, "refused_unencodable", f"bad timestamp {timestamp!r} ({exc})"))
            continue
        columns[0].append(tid)
        columns[1].append(t_us)
        columns[2].append(value)
    for columns in groups.values():
        times = columns[1]
        if times and (min(times) < -_MAX_US or max(times) > _MAX_US):  # rare: not checked per sample
            _refuse_out_of_range(columns, topic_names, new_topics, refused)
    if not groups and not refused:
        return None
    # The chunks, encoded once, before the transaction.
    chunks: list[_NewChunk] = []
    for keep, (tids, times, values) in groups.items():
        for start in range(0, len(tids), CHUNK_SAMPLES):
            end = start + CHUNK_SAMPLES
            chunks.append(_new_chunk(keep, tids[start:end], times[start:end], values[start:end]))
    return chunks, new_topics, refused


def _refuse_out_of_range(
    columns: tuple[list[int], list[int], list[Any]],
    topic_names: Mapping[int, str],
    new_topics: list[tuple[int, str]],
    refused: list[tuple[str, str, str]],
) -> None:
    """Take the samples whose timestamp is beyond `_MAX_US` out of ``columns``, into ``refused``."""
    names = {**topic_names, **dict(new_topics)}
    tids, times, values = columns
    keep = [i for i, t in enumerate(times) if -_MAX_US <= t <= _MAX_US]
    for i, t in enumerate(times):
        if not -_MAX_US <= t <= _MAX_US:
            reason = f"bad timestamp {t / 1e6!r} (beyond +-{_MAX_US / 1e6:.0f} s)"
            refused.append((names[tids[i]], "refused_unencodable", reason))
    columns[0][:] = [tids[i] for i in keep]
    columns[1][:] = [times[i] for i in keep]
    columns[2][:] = [values[i] for i in keep]


def gather(
    stored: Iterable[tuple[int, int, int, int, int | None, bytes, int | None]],
    groups: Mapping[int, _Group],
    names: Mapping[int, str],
    now_us: int,
    budget: int,
) -> tuple[list[_Chunk], list[tuple[str, int, Any]]]:
    """The chunks a batch is formed from, and their samples ``(topic, timestamp_us, value)`` in order.

    ``stored`` yields chunk rows ``(id, group, count, bytes, stale_us, data, crc)`` in the order batches take
    them (highest priority first, then oldest); it is read only as far as needed, until the samples' bytes
    pass ``budget``. Samples past their ttl at ``now_us`` are left out (counted in `_Chunk.expired`); a
    chunk that cannot be decoded is marked corrupt, whole.
    """
    chunks: list[_Chunk] = []
    candidates: list[tuple[str, int, Any]] = []
    estimate = 0.0
    for cid, gid, count, size, stale_us, data, crc in stored:
        group = groups[gid]
        try:
            tids, times, values = _decode_chunk(data, crc)
            if len(tids) != count:
                raise ValueError("sample count differs from the chunk's row")
            chunk_candidates = [(names[t], ts, v) for t, ts, v in zip(tids, times, values, strict=True)]
        except Exception:
            damaged = _Chunk(cid, group, [], [], [], size)
            damaged.corrupt, damaged.expired = True, count
            chunks.append(damaged)
            continue
        chunk = _Chunk(cid, group, tids, times, values, size)
        if stale_us is not None and stale_us < now_us:
            ttl_us = group.ttl_us
            assert ttl_us is not None
            keep_index = [i for i, ts in enumerate(times) if ts + ttl_us >= now_us]
            chunk.expired = count - len(keep_index)
            chunk.tids = [tids[i] for i in keep_index]
            chunk.times = [times[i] for i in keep_index]
            chunk.values = [values[i] for i in keep_index]
            chunk_candidates = [chunk_candidates[i] for i in keep_index]
        chunks.append(chunk)
        candidates += chunk_candidates
        estimate += (size - ROW_OVERHEAD) * len(chunk_candidates) / count
        if estimate > budget:
            break
    return chunks, candidates


def fill(
    builder: BatchBuilder, seq: int, candidates: Sequence[tuple[str, int, Any]]
) -> tuple[bytes, int, int]:
    """The batch ``seq`` of as many ``candidates`` as fit, in order: ``(payload, taken, refused)`` -- the
    first ``refused`` candidates are too large for any batch (each alone), the next ``taken`` are in it."""
    taken = refused = 0
    payload = b""
    while refused < len(candidates):
        try:
            payload, taken = builder.fill(seq, candidates[refused:])
            break
        except SampleTooLargeError:
            refused += 1
    return payload, taken, refused


def consume(
    chunks: Sequence[_Chunk], refused: int, taken: int
) -> tuple[list[int], dict[int, int], int | None]:
    """How a batch formed by `fill` consumes ``chunks``: per chunk, the end of its samples taken out of the
    store (its samples before that end leave it: refused or in the batch; 0 for a corrupt chunk); the batch's
    samples per group id; and when its last sample expires, in microseconds (None: one of them never does;
    -1 if the batch is empty)."""
    # The candidates [0, refused) leave the store unsent, [refused, refused + taken) go in the batch.
    position = 0
    batch_groups: dict[int, int] = {}
    expires: int | None = -1
    ends: list[int] = []
    for chunk in chunks:
        if chunk.corrupt:
            ends.append(0)
            continue
        count = len(chunk.tids)
        first = min(max(refused - position, 0), count)  # this chunk's first sample in the batch
        last = min(max(refused + taken - position, 0), count)  # and the end of its samples there
        position += count
        if last > first:
            group = chunk.group
            batch_groups[group.id] = batch_groups.get(group.id, 0) + last - first
            if group.ttl_us is None or expires is None:
                expires = None
            else:
                expires = max(expires, max(chunk.times[first:last]) + group.ttl_us)
        ends.append(last)
    return ends, batch_groups, expires
