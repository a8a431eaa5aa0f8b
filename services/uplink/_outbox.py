"""The uplink's durable outbox: samples and formed batches in SQLite (WAL) until the cloud acknowledged them.

Synchronous and single-threaded (the service calls it from one thread at a time, e.g. through
``trio.to_thread.run_sync``); no trio, no network. See docs/uplink.md ("The outbox") for the guarantees:

* `Outbox.accept` stores many samples in one transaction: once it returns, they survive a process crash
  (``kill -9``) -- and with ``synchronous="full"`` a power loss too.
* `Outbox.next_batch` forms a batch (highest priority first, then oldest) in one transaction that inserts the
  batch and removes its samples from the store: a sample is always either stored or in exactly one formed
  batch. A formed batch keeps its ``seq`` and its bytes until `Outbox.ack`; after a restart it is returned
  again, first.
* A disk quota drops the oldest samples of the lowest priority first; samples past their ttl are dropped;
  both are counted by campaign and priority.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import cbor2

from bus import Codec, CodecError, default_codec
from services.uplink._batch import (
    DEFAULT_MAX_BATCH_BYTES,
    MIN_MAX_BATCH_BYTES,
    BatchBuilder,
    BatchError,
    SampleTooLargeError,
    prepare_value,
    to_us,
)
from services.uplink._campaign import Keep

__all__ = [
    "APPLICATION_ID",
    "CHUNK_SAMPLES",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "MovedAside",
    "Outbox",
    "OutboxError",
    "OutboxStatistics",
    "Row",
]

#: ``PRAGMA application_id`` of an outbox file ("vwOB"): how a file is recognised as one.
APPLICATION_ID: Final = 0x76774F42
#: ``PRAGMA user_version``: the layout of the tables. A file with a higher version is refused.
SCHEMA_VERSION: Final = 1
#: Samples are stored in chunks of at most this many (one row each), grouped by `Keep`.
CHUNK_SAMPLES: Final = 4096
#: Bytes counted against the quota for each stored row besides its blob (SQLite's own bookkeeping).
ROW_OVERHEAD: Final = 64

#: One sample as the service hands it over: ``(topic, value, timestamp_seconds, keep)``.
Row = tuple[str, object, float, Keep]

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT, WITHOUT ROWID;
CREATE TABLE topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE) STRICT;
CREATE TABLE groups (
    id INTEGER PRIMARY KEY,
    campaigns TEXT NOT NULL,
    priority INTEGER NOT NULL,
    ttl_us INTEGER
) STRICT;
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    grp INTEGER NOT NULL REFERENCES groups (id),
    priority INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    stale_us INTEGER,
    expires_us INTEGER,
    data BLOB NOT NULL
) STRICT;
CREATE INDEX chunks_order ON chunks (priority DESC, id);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,
    samples INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    expires_us INTEGER,
    groups TEXT NOT NULL,
    payload BLOB NOT NULL
) STRICT;
CREATE TABLE counters (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) STRICT, WITHOUT ROWID;
"""

_COUNTER_NAMES: Final = (
    "accepted",
    "acked_batches",
    "acked_samples",
    "dropped_quota",
    "dropped_ttl",
    "dropped_corrupt",
    "refused_oversize",
    "refused_unencodable",
)


class OutboxError(Exception):
    """The outbox file cannot be used (it names the file and says why)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@attrs.frozen
class MovedAside:
    """An unusable outbox file that was moved aside (not deleted) so that a fresh outbox could start."""

    original: Path
    moved_to: Path
    reason: str

    def __str__(self) -> str:
        return (
            f"outbox {self.original} is unusable ({self.reason}); it was moved aside to {self.moved_to} "
            "and a new, empty outbox was started"
        )


@attrs.frozen
class OutboxStatistics:
    """What an outbox holds and what it has done (counters persist across restarts)."""

    path: Path
    stream: str
    quota_bytes: int
    #: Samples stored and not yet in a formed batch.
    stored_samples: int
    #: Bytes counted against the quota: stored samples and formed batches (rows, blobs and payloads).
    stored_bytes: int
    #: Formed batches waiting for their acknowledgement, their samples and payload bytes.
    formed_batches: int
    formed_samples: int
    formed_bytes: int
    #: The seq the next formed batch gets.
    next_seq: int
    accepted: int
    acked_batches: int
    acked_samples: int
    dropped_quota: int
    dropped_ttl: int
    #: Samples lost to a damaged chunk (it could not be decoded; should never happen).
    dropped_corrupt: int
    refused_oversize: int
    refused_unencodable: int
    dropped_quota_by_campaign: Mapping[str, int]
    dropped_quota_by_priority: Mapping[int, int]
    dropped_ttl_by_campaign: Mapping[str, int]
    dropped_ttl_by_priority: Mapping[int, int]


@attrs.frozen
class _Group:
    id: int
    campaigns: tuple[str, ...]
    priority: int
    ttl_us: int | None


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


def _decode_chunk(data: bytes) -> tuple[list[int], list[int], list[Any]]:
    item = cbor2.loads(data)
    if type(item) is not list or len(item) != 3:
        raise ValueError("a chunk is an array of 3 columns")
    tids, times, values = item
    if not (type(tids) is list and type(times) is list and type(values) is list):
        raise ValueError("a chunk's columns are arrays")
    if not len(tids) == len(times) == len(values) > 0:
        raise ValueError("a chunk's columns differ in length or are empty")
    return tids, times, values


class Outbox:
    """The durable store-and-forward queue of the uplink, in one SQLite file (WAL mode).

    ``quota_bytes`` bounds what is stored (samples and formed batches); ``max_batch_bytes`` bounds each
    batch; ``compress`` zlib-compresses batch bodies. ``synchronous`` is ``"normal"`` (a commit survives a
    process crash; a power loss may undo the last commits but never corrupts the file) or ``"full"`` (a
    commit survives a power loss too; each commit waits for an fsync).

    A file that is not a usable outbox (garbage, another application's database, a newer schema, failing
    SQLite's quick check) is never deleted: with ``on_unusable="move_aside"`` (the default) it is renamed
    to ``<name>.unusable-<UTC time>`` (with its ``-wal`` file), a fresh outbox starts and `moved_aside`
    says so, for the service to log; with ``"raise"``, `OutboxError` is raised. A file in use by another
    process always raises `OutboxError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        quota_bytes: int,
        vehicle_id: str,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        compress: bool = True,
        synchronous: Literal["normal", "full"] = "normal",
        on_unusable: Literal["move_aside", "raise"] = "move_aside",
        codec: Codec = default_codec,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        if on_unusable not in ("move_aside", "raise"):
            raise ValueError(f"on_unusable must be 'move_aside' or 'raise', not {on_unusable!r}")
        if quota_bytes <= 0:
            raise ValueError(f"quota_bytes must be positive, not {quota_bytes}")
        if max_batch_bytes < MIN_MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be at least {MIN_MAX_BATCH_BYTES}, not {max_batch_bytes}")
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.vehicle_id = vehicle_id
        self.max_batch_bytes = max_batch_bytes
        self.compress = compress
        self.synchronous = synchronous
        self.codec = codec
        #: Set when an unusable file was moved aside at open (the service should log it as a warning).
        self.moved_aside: MovedAside | None = None
        self._closed = False
        self._db = self._open(on_unusable)
        self._pending: defaultdict[tuple[str, str], int] | None = None
        try:
            self._load()
            self._builder = BatchBuilder(
                vehicle_id, self.stream, max_bytes=max_batch_bytes, compress=compress
            )
        except BaseException:
            self._db.close()  # releases the lock
            raise

    # -- opening --------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            # One process owns an outbox: the lock is taken now and held until close (or the process dies).
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal mode is {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("PRAGMA journal_size_limit = 67108864")
            db.execute("BEGIN EXCLUSIVE")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _open(self, on_unusable: str) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(self.path, f"cannot create its directory: {exc}") from None
        db, problem = self._try_open()
        if db is not None:
            return db
        if on_unusable == "raise":
            raise OutboxError(self.path, f"not a usable outbox: {problem}")
        self.moved_aside = self._move_aside(problem)
        db, problem = self._try_open()
        if db is None:  # pragma: no cover - a fresh file is always usable
            raise OutboxError(self.path, f"a new outbox is unusable too: {problem}")
        return db

    def _try_open(self) -> tuple[sqlite3.Connection | None, str]:
        """The connection to a usable outbox (created if the file is new or missing), or why it is unusable.

        Raises `OutboxError` if another process holds the file, or it cannot be opened or written at all
        (permissions, I/O errors, a full disk): moving it aside would not help, and it may be fine.
        """
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            problem = self._check_or_create(db)
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            message = str(exc)
            if isinstance(exc, sqlite3.OperationalError):
                if "locked" in message or "busy" in message:
                    raise OutboxError(self.path, f"in use by another process ({exc})") from None
                if "no such table" not in message and "no such column" not in message:
                    raise OutboxError(self.path, f"cannot open it: {exc}") from None
            # SQLITE_NOTADB, SQLITE_CORRUPT, missing tables: the content is unusable.
            return None, f"not a usable SQLite database ({exc})"
        if problem is not None:
            db.close()
            return None, problem
        return db, ""

    def _check_or_create(self, db: sqlite3.Connection) -> str | None:
        """None if ``db`` is a usable outbox (creating it if the file is new), else why it is not."""
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            self._create(db)
            return None
        if app_id != APPLICATION_ID:
            return (
                f"not a vwos outbox (SQLite application_id is {app_id:#x}, an outbox has {APPLICATION_ID:#x})"
            )
        if version > SCHEMA_VERSION:
            return (
                f"written by a newer vwos (outbox schema version {version}; this vwos reads versions up to "
                f"{SCHEMA_VERSION})"
            )
        if version < 1:
            return f"unknown outbox schema version {version}"
        check = [row[0] for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            return "SQLite's quick_check failed: " + "; ".join(str(c) for c in check[:3])
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        stream, next_seq = meta.get("stream"), meta.get("next_seq")
        if type(stream) is not str or type(next_seq) is not int or next_seq < 1:
            return f"its meta table is damaged (stream {stream!r}, next_seq {next_seq!r})"
        return None

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("stream", secrets.token_hex(8)),
                    ("next_seq", 1),
                    ("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
                ],
            )
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _move_aside(self, reason: str) -> MovedAside:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.unusable-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.unusable-{stamp}-{n}")
        try:
            os.replace(self.path, target)
            for suffix in ("-wal", "-shm", "-journal"):
                companion = Path(f"{self.path}{suffix}")
                if companion.exists():
                    os.replace(companion, Path(f"{target}{suffix}"))
        except OSError as exc:
            raise OutboxError(
                self.path, f"not a usable outbox ({reason}), and it could not be moved aside: {exc}"
            ) from None
        return MovedAside(self.path, target, reason)

    def _load(self) -> None:
        """(Re)read the in-memory state from the database."""
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.stream: str = meta["stream"]
        self._next_seq: int = meta["next_seq"]
        self._topic_ids: dict[str, int] = {}
        self._topic_names: dict[int, str] = {}
        for tid, name in db.execute("SELECT id, name FROM topics"):
            self._topic_ids[name] = tid
            self._topic_names[tid] = name
        self._groups: dict[int, _Group] = {}
        self._group_ids: dict[Keep, int] = {}
        for gid, campaigns, priority, ttl_us in db.execute(
            "SELECT id, campaigns, priority, ttl_us FROM groups"
        ):
            group = _Group(gid, tuple(json.loads(campaigns)), priority, ttl_us)
            self._groups[gid] = group
            ttl = None if ttl_us is None else ttl_us / 1_000_000
            self._group_ids[Keep(group.campaigns, priority, ttl)] = gid
        row = db.execute("SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0) FROM chunks").fetchone()
        self._stored_samples: int = row[0]
        self._chunk_bytes: int = row[1]
        row = db.execute(
            "SELECT count(*), coalesce(sum(samples), 0), coalesce(sum(bytes), 0) FROM batches"
        ).fetchone()
        self._formed: int = row[0]
        self._formed_samples: int = row[1]
        self._formed_bytes: int = row[2]
        self._counters: dict[tuple[str, str], int] = {
            (name, key): value for name, key, value in db.execute("SELECT name, key, value FROM counters")
        }

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(self.path, "the outbox is closed")

    # -- transactions ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on any failure it is rolled back and the in-memory state reloaded."""
        self._check_open()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        pending = self._pending = defaultdict(int)
        try:
            yield
            if pending:
                db.executemany(
                    "INSERT INTO counters (name, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value",
                    [(name, key, n) for (name, key), n in pending.items()],
                )
            db.execute("COMMIT")
        except BaseException:
            self._pending = None
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._load()
            raise
        self._pending = None
        for counter, n in pending.items():
            self._counters[counter] = self._counters.get(counter, 0) + n

    def _count(self, name: str, n: int, group: _Group | None = None) -> None:
        pending = self._pending
        assert pending is not None, "counters change inside transactions only"
        if not n:
            return
        pending[(name, "")] += n
        if group is not None:
            for campaign in group.campaigns:
                pending[(name, f"campaign:{campaign}")] += n
            pending[(name, f"priority:{group.priority}")] += n

    def _group_id(self, keep: Keep) -> int:
        gid = self._group_ids.get(keep)
        if gid is None:
            ttl_us = None if keep.ttl is None else max(1, round(keep.ttl * 1_000_000))
            cursor = self._db.execute(
                "INSERT INTO groups (campaigns, priority, ttl_us) VALUES (?, ?, ?)",
                (json.dumps(list(keep.campaigns)), keep.priority, ttl_us),
            )
            gid = cursor.lastrowid
            assert gid is not None
            self._groups[gid] = _Group(gid, keep.campaigns, keep.priority, ttl_us)
            self._group_ids[keep] = gid
        return gid

    # -- accepting ------------------------------------------------------------------------------------------

    def accept(
        self,
        rows: Iterable[Row],
        *,
        now: float | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> int:
        """Store ``rows`` (``(topic, value, timestamp, keep)``) in one transaction; the number stored.

        When it returns, the samples are committed: the durable "accepted" point. A sample that cannot be
        stored -- too large for a batch on its own, a value the codec cannot encode, a timestamp that is not
        a finite number -- is refused: counted, reported to ``on_refused(topic, reason)`` and left out; the
        others are stored. If the quota is then exceeded, the oldest samples of the lowest priority are
        dropped (counted; those past their ttl first if ``now``, wall-clock seconds, is given).
        """
        self._check_open()
        groups: dict[Keep, tuple[list[int], list[int], list[Any]]] = {}
        topic_ids = self._topic_ids
        new_ids: dict[str, int] = {}  # joins topic_ids only once committed
        new_topics: list[tuple[int, str]] = []
        refused: list[tuple[str, str, str]] = []
        builder = self._builder
        codec = self.codec
        next_tid = max(self._topic_names, default=0) + 1
        for topic, value, timestamp, keep in rows:
            columns = groups.get(keep)
            if columns is None:
                columns = groups[keep] = ([], [], [])
            tid = topic_ids.get(topic)
            if tid is None:
                tid = new_ids.get(topic)
                if tid is None:
                    if type(topic) is not str:
                        refused.append(
                            (str(topic), "refused_unencodable", f"topic must be a str, not {topic!r}")
                        )
                        continue
                    tid = new_ids[topic] = next_tid
                    new_topics.append((next_tid, topic))
                    next_tid += 1
            try:
                t_us = round(timestamp * 1_000_000)
                if type(value) is not float:
                    value = prepare_value(value, codec)
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
        if not groups and not refused:
            return 0
        stored = 0
        with self._transaction():
            if new_topics:
                self._db.executemany("INSERT INTO topics (id, name) VALUES (?, ?)", new_topics)
                for tid, topic in new_topics:  # a rollback reloads both from the database
                    self._topic_names[tid] = topic
                    topic_ids[topic] = tid
            added_samples, added_bytes = 0, 0
            rows_out = []
            for keep, (tids, times, values) in groups.items():
                if not tids:
                    continue
                gid = self._group_id(keep)
                ttl_us = self._groups[gid].ttl_us
                for start in range(0, len(tids), CHUNK_SAMPLES):
                    end = start + CHUNK_SAMPLES
                    chunk_times = times[start:end]
                    data = _encode_chunk(tids[start:end], chunk_times, values[start:end])
                    size = len(data) + ROW_OVERHEAD
                    stale = expires = None
                    if ttl_us is not None:
                        stale, expires = min(chunk_times) + ttl_us, max(chunk_times) + ttl_us
                    rows_out.append((gid, keep.priority, len(chunk_times), size, stale, expires, data))
                    added_samples += len(chunk_times)
                    added_bytes += size
            self._db.executemany(
                "INSERT INTO chunks (grp, priority, count, bytes, stale_us, expires_us, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows_out,
            )
            self._stored_samples += added_samples
            self._chunk_bytes += added_bytes
            stored = added_samples
            self._count("accepted", stored)
            for _, counter, _ in refused:
                self._count(counter, 1)
            if self._chunk_bytes + self._formed_bytes > self.quota_bytes:
                if now is not None:
                    self._purge_expired(to_us(now))
                self._enforce_quota()
        if on_refused is not None:
            for topic, _, reason in refused:
                on_refused(topic, reason)
        return stored

    def _enforce_quota(self) -> None:
        """Drop the oldest samples of the lowest priority until the stored bytes fit the quota."""
        excess = self._chunk_bytes + self._formed_bytes - self.quota_bytes
        while excess > 0:
            # A page of victims at a time, without their blobs (only a chunk to trim is read).
            page = self._db.execute(
                "SELECT id, grp, count, bytes FROM chunks ORDER BY priority, id LIMIT 32"
            ).fetchall()
            if not page:
                return  # only formed batches are left: they are never dropped for the quota
            for cid, gid, count, size in page:
                if excess <= 0:
                    return
                group = self._groups[gid]
                if size - ROW_OVERHEAD <= excess or count == 1:
                    self._delete_chunk(cid, count, size)
                    self._count("dropped_quota", count, group)
                    excess -= size
                    continue
                (data,) = self._db.execute("SELECT data FROM chunks WHERE id = ?", (cid,)).fetchone()
                try:
                    tids, times, values = _decode_chunk(data)
                except Exception:
                    self._drop_corrupt(cid, count, size)
                    excess -= size
                    continue
                # Trim the chunk's oldest samples; its size is about proportional to its sample count.
                per_sample = max(1.0, (size - ROW_OVERHEAD) / count)
                while excess > 0:
                    drop = min(count, max(1, math.ceil(excess / per_sample)))
                    self._count("dropped_quota", drop, group)
                    if drop == count:
                        self._delete_chunk(cid, count, size)
                        excess -= size
                        break
                    tids, times, values = tids[drop:], times[drop:], values[drop:]
                    new_size = self._rewrite_chunk(cid, group, tids, times, values, count, size)
                    excess -= size - new_size
                    count, size = count - drop, new_size

    def _delete_chunk(self, cid: int, count: int, size: int) -> None:
        self._db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        self._stored_samples -= count
        self._chunk_bytes -= size

    def _drop_corrupt(self, cid: int, count: int, size: int) -> None:
        self._delete_chunk(cid, count, size)
        self._count("dropped_corrupt", count)

    def _rewrite_chunk(
        self,
        cid: int,
        group: _Group,
        tids: list[int],
        times: list[int],
        values: list[Any],
        old_count: int,
        old_size: int,
    ) -> int:
        """Replace a chunk's samples by the (non-empty) given ones; returns its new size."""
        data = _encode_chunk(tids, times, values)
        size = len(data) + ROW_OVERHEAD
        stale = expires = None
        if group.ttl_us is not None:
            stale, expires = min(times) + group.ttl_us, max(times) + group.ttl_us
        self._db.execute(
            "UPDATE chunks SET count = ?, bytes = ?, stale_us = ?, expires_us = ?, data = ? WHERE id = ?",
            (len(tids), size, stale, expires, data, cid),
        )
        self._stored_samples += len(tids) - old_count
        self._chunk_bytes += size - old_size
        return size

    def _purge_expired(self, now_us: int) -> None:
        """Drop stored chunks whose every sample is past its ttl (partly expired ones go when formed)."""
        expired = self._db.execute(
            "SELECT id, grp, count, bytes FROM chunks WHERE expires_us < ?", (now_us,)
        ).fetchall()
        for cid, gid, count, size in expired:
            self._delete_chunk(cid, count, size)
            self._count("dropped_ttl", count, self._groups[gid])

    # -- forming and acknowledging batches ------------------------------------------------------------------

    def next_batch(self, now: float, *, after: int | None = None) -> tuple[int, bytes] | None:
        """The batch to send next, ``(seq, payload)``, or None if there is nothing to send.

        The oldest formed, unacknowledged batch (with a seq above ``after``, if given: the service passes
        the last seq it has in flight to pipeline several); else a new batch formed from the stored samples,
        highest priority first, then oldest, leaving out (and counting) those past their ttl at ``now``
        (wall-clock seconds). A formed batch whose every sample is past its ttl is dropped (and counted)
        instead of being sent. Forming is one transaction: the batch is stored and its samples leave the
        store together.
        """
        self._check_open()
        now_us = to_us(now)
        while True:
            row = self._db.execute(
                "SELECT seq, expires_us, samples, bytes, groups FROM batches "
                "WHERE seq > ? ORDER BY seq LIMIT 1",
                (-1 if after is None else after,),
            ).fetchone()
            if row is None:
                break
            seq, expires_us, samples, size, groups = row
            if expires_us is None or expires_us >= now_us:
                payload = self._db.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()[0]
                return seq, bytes(payload)
            with self._transaction():
                self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                for gid, n in json.loads(groups):
                    self._count("dropped_ttl", n, self._groups.get(gid))
            self._formed -= 1
            self._formed_samples -= samples
            self._formed_bytes -= size
        return self._form(now_us)

    def _form(self, now_us: int) -> tuple[int, bytes] | None:
        while True:
            formed, refused = self._form_once(now_us)
            if formed is not None or not refused:
                return formed
            # Only samples too large for the batch size were found (it was lowered since they were
            # accepted): they are dropped and counted; form again from what is left.

    def _form_once(self, now_us: int) -> tuple[tuple[int, bytes] | None, int]:
        """One formation transaction: the batch formed (if any), and how many samples were refused."""
        names = self._topic_names
        budget = 2 * self.max_batch_bytes
        formed: tuple[int, bytes] | None = None
        taken = refused = 0
        with self._transaction():
            self._purge_expired(now_us)
            chunks: list[_Chunk] = []
            candidates: list[tuple[str, int, Any]] = []
            estimate = 0.0
            cursor = self._db.execute(
                "SELECT id, grp, count, bytes, stale_us, data FROM chunks ORDER BY priority DESC, id"
            )
            for cid, gid, count, size, stale_us, data in cursor:
                group = self._groups[gid]
                try:
                    tids, times, values = _decode_chunk(data)
                    if len(tids) != count:
                        raise ValueError("sample count differs from the chunk's row")
                    chunk_candidates = [
                        (names[t], ts, v) for t, ts, v in zip(tids, times, values, strict=True)
                    ]
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
            cursor.close()
            seq = self._next_seq
            payload = b""
            while refused < len(candidates):
                try:
                    payload, taken = self._builder.fill(seq, candidates[refused:])
                    break
                except SampleTooLargeError:
                    refused += 1
            self._count("refused_oversize", refused)
            # The candidates [0, refused) leave the store unsent, [refused, refused + taken) go in the batch.
            position = 0
            batch_groups: dict[int, int] = {}
            expires: int | None = -1
            for chunk in chunks:
                if chunk.corrupt:
                    self._drop_corrupt(chunk.id, chunk.expired, chunk.bytes)
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
                self._count("dropped_ttl", chunk.expired, chunk.group)
                original = count + chunk.expired
                if last == count:
                    self._delete_chunk(chunk.id, original, chunk.bytes)
                elif last or chunk.expired:
                    self._rewrite_chunk(
                        chunk.id,
                        chunk.group,
                        chunk.tids[last:],
                        chunk.times[last:],
                        chunk.values[last:],
                        original,
                        chunk.bytes,
                    )
            if taken:
                size = len(payload) + ROW_OVERHEAD
                self._db.execute(
                    "INSERT INTO batches (seq, samples, bytes, expires_us, groups, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, taken, size, expires, json.dumps(sorted(batch_groups.items())), payload),
                )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                formed = seq, payload
        if formed is not None:
            self._next_seq = formed[0] + 1
            self._formed += 1
            self._formed_samples += taken
            self._formed_bytes += len(formed[1]) + ROW_OVERHEAD
        return formed, refused

    def ack(self, seq: int) -> bool:
        """The batch ``seq`` was acknowledged: delete it. False if there is no such formed batch (already
        acknowledged: acknowledging twice is harmless)."""
        self._check_open()
        row = self._db.execute("SELECT samples, bytes FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return False
        samples, size = row
        with self._transaction():
            self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._count("acked_batches", 1)
            self._count("acked_samples", samples)
        self._formed -= 1
        self._formed_samples -= samples
        self._formed_bytes -= size
        return True

    def formed(self) -> list[int]:
        """The seqs of the formed, unacknowledged batches, oldest first."""
        self._check_open()
        return [seq for (seq,) in self._db.execute("SELECT seq FROM batches ORDER BY seq")]

    # -- statistics and closing -----------------------------------------------------------------------------

    def _breakdown(self, name: str, kind: str) -> dict[str, int]:
        prefix = f"{kind}:"
        return {
            key[len(prefix) :]: value
            for (counter, key), value in sorted(self._counters.items())
            if counter == name and key.startswith(prefix) and value
        }

    @property
    def unformed_bytes(self) -> int:
        """Bytes of the stored samples not yet formed into a batch (what the next batch can take)."""
        return self._chunk_bytes

    def statistics(self) -> OutboxStatistics:
        """What the outbox holds and has done (the drop and refusal counts persist across restarts)."""
        total = self._counters.get

        def counter(name: str) -> int:
            return total((name, ""), 0)

        return OutboxStatistics(
            path=self.path,
            stream=self.stream,
            quota_bytes=self.quota_bytes,
            stored_samples=self._stored_samples,
            stored_bytes=self._chunk_bytes + self._formed_bytes,
            formed_batches=self._formed,
            formed_samples=self._formed_samples,
            formed_bytes=self._formed_bytes,
            next_seq=self._next_seq,
            accepted=counter("accepted"),
            acked_batches=counter("acked_batches"),
            acked_samples=counter("acked_samples"),
            dropped_quota=counter("dropped_quota"),
            dropped_ttl=counter("dropped_ttl"),
            dropped_corrupt=counter("dropped_corrupt"),
            refused_oversize=counter("refused_oversize"),
            refused_unencodable=counter("refused_unencodable"),
            dropped_quota_by_campaign=self._breakdown("dropped_quota", "campaign"),
            dropped_quota_by_priority={
                int(k): v for k, v in self._breakdown("dropped_quota", "priority").items()
            },
            dropped_ttl_by_campaign=self._breakdown("dropped_ttl", "campaign"),
            dropped_ttl_by_priority={
                int(k): v for k, v in self._breakdown("dropped_ttl", "priority").items()
            },
        )

    def close(self) -> None:
        """Close the file (idempotent). Nothing is lost by not calling it: every commit is already durable."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
