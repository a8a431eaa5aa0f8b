"""The outbox's planning (services/uplink/_plan.py) on its own: no SQLite, no files, plain data in and out.

The outbox's own tests (tests/test_uplink_core.py) cover the same decisions through the store; these pin
the pure functions down where a store would hide which one decided.
"""

from __future__ import annotations

import ast
import zlib
from collections.abc import Iterator
from pathlib import Path

from bus import default_codec
from services.uplink import BatchBuilder, Keep, _plan, decode_batch
from services.uplink._plan import (
    CHUNK_SAMPLES,
    ROW_OVERHEAD,
    Row,
    _Chunk,
    _decode_chunk,
    _encode_chunk,
    _Group,
    _halves,
    consume,
    fill,
    gather,
    plan_accept,
)

T0 = 1_700_000_000.0
BUILDER = BatchBuilder("car-1", "0123456789abcdef", max_bytes=4096)


def test_plan_accept_groups_chunks_and_refuses_with_reasons() -> None:
    a, b = Keep(("a",)), Keep(("b",), priority=3)
    rows: list[Row] = [("Known", float(i), T0 + i, a) for i in range(CHUNK_SAMPLES + 10)]
    rows += [
        ("New.One", 1.0, T0, b),
        (7, 1.0, T0, b),  # type: ignore[list-item]  # a topic that is not a str
        ("New.Two", 2.0, float("nan"), b),  # a timestamp that is no number of microseconds
        ("New.Two", 3.0, 1e300, b),  # beyond the range of timestamps
        ("New.Two", object(), T0, b),  # not encodable
        ("New.Two", "x" * 10_000, T0, b),  # larger than any batch of 4 KiB
        ("New.Two", 4.0, T0 + 1, b),
    ]
    plan = plan_accept(rows, {"Known": 5}, {5: "Known"}, BUILDER, default_codec)
    assert plan is not None
    chunks, new_topics, refused = plan
    assert new_topics == [(6, "New.One"), (7, "New.Two")]  # ids after the known ones, in order
    assert [(c.keep, len(c.tids)) for c in chunks] == [(a, CHUNK_SAMPLES), (a, 10), (b, 2)]
    assert chunks[2].tids == [6, 7]
    assert chunks[2].values == [1.0, 4.0]
    assert _decode_chunk(chunks[0].data, zlib.crc32(chunks[0].data))[0] == [5] * CHUNK_SAMPLES
    assert [(topic, counter) for topic, counter, _ in refused] == [
        ("7", "refused_unencodable"),
        ("New.Two", "refused_unencodable"),
        ("New.Two", "refused_unencodable"),
        ("New.Two", "refused_oversize"),
        ("New.Two", "refused_unencodable"),  # the range is checked per group, after the others
    ]
    assert "topic must be a str" in refused[0][2]
    assert "bad timestamp nan" in refused[1][2]
    assert "beyond +-" in refused[4][2]
    assert plan_accept([], {}, {}, BUILDER, default_codec) is None


def test_the_planning_imports_no_sqlite() -> None:
    tree = ast.parse(Path(_plan.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "sqlite3" not in imported
    assert "services.uplink._outbox" not in imported


def test_halves_split_in_order_down_to_a_floor() -> None:
    keep = Keep(("a",))
    plan = plan_accept([("T", float(i), T0, keep) for i in range(200)], {}, {}, BUILDER, default_codec)
    assert plan is not None
    (chunk,) = plan[0]
    first, second = _halves([chunk])
    assert [len(p[0].tids) for p in (first, second)] == [100, 100]
    assert first[0].values + second[0].values == chunk.values
    assert _halves(first) == []  # 100 samples: below two pieces of the floor (64)
    assert _halves([]) == []
    assert _halves([chunk, chunk, chunk]) == [[chunk], [chunk, chunk]]


StoredRow = tuple[int, int, int, int, int | None, bytes, int | None]


def _row(cid: int, group: _Group, times: list[int], values: list[float]) -> StoredRow:
    data = _encode_chunk([1] * len(times), times, values)
    stale = None if group.ttl_us is None else min(times) + group.ttl_us
    return (cid, group.id, len(times), len(data) + ROW_OVERHEAD, stale, data, zlib.crc32(data))


def test_gather_fill_and_consume_form_a_batch_without_a_store() -> None:
    forever, short = _Group(1, ("a",), 5, None), _Group(2, ("b",), 0, 1_000_000)
    now_us = 10_000_000
    stored: list[StoredRow] = [
        _row(1, forever, [1_000, 2_000, 3_000], [1.0, 2.0, 3.0]),
        (2, 1, 2, 99, None, b"not cbor", 0),  # damaged: dropped whole, counted
        _row(3, short, [8_000_000, 9_500_000], [4.0, 5.0]),  # the first is past its ttl at now_us
    ]
    read: list[int] = []

    def rows() -> Iterator[StoredRow]:
        for row in stored:
            read.append(row[0])
            yield row

    chunks, candidates = gather(rows(), {1: forever, 2: short}, {1: "T"}, now_us, budget=1 << 20)
    assert read == [1, 2, 3]
    assert [(c.id, c.corrupt, c.expired) for c in chunks] == [(1, False, 0), (2, True, 2), (3, False, 1)]
    assert candidates == [("T", 1_000, 1.0), ("T", 2_000, 2.0), ("T", 3_000, 3.0), ("T", 9_500_000, 5.0)]
    payload, taken, refused = fill(BUILDER, 42, candidates)
    assert (taken, refused) == (4, 0)
    batch = decode_batch(payload)
    assert (batch.seq, [s.value for s in batch.samples]) == (42, [1.0, 2.0, 3.0, 5.0])
    ends, groups, expires = consume(chunks, refused, taken)
    assert ends == [3, 0, 1]  # every sample of chunks 1 and 3 leaves the store; the damaged one is dropped
    assert groups == {1: 3, 2: 1}
    assert expires is None  # a sample without a ttl is in the batch

    # A small budget stops reading the store; only the second half of the last chunk's samples fit.
    read.clear()
    chunks, candidates = gather(rows(), {1: forever, 2: short}, {1: "T"}, now_us, budget=1)
    assert read == [1]
    _, taken, _ = fill(BUILDER, 1, candidates[:2])
    assert consume(chunks, 0, taken) == ([2], {1: 2}, None)
    only_short = [_Chunk(3, short, [1], [9_500_000], [5.0], 100)]
    assert consume(only_short, 0, 1) == ([1], {2: 1}, 9_500_000 + 1_000_000)


def test_fill_refuses_the_candidates_too_large_for_any_batch() -> None:
    huge = ("T", 0, "x" * 10_000)
    payload, taken, refused = fill(BUILDER, 1, [huge, huge, ("T", 1, 1.0), ("T", 2, 2.0)])
    assert (taken, refused) == (2, 2)
    assert [s.value for s in decode_batch(payload).samples] == [1.0, 2.0]
    assert fill(BUILDER, 1, [huge]) == (b"", 0, 1)
    assert fill(BUILDER, 1, []) == (b"", 0, 0)
