"""The uplink's durable outbox: samples and formed batches in SQLite (WAL) until the cloud acknowledged them.

This module's one job is the store: the SQL, the transactions, the quota and the disk, the counters and the
high-water mark. What to store and what a batch takes -- chunks, refusals, candidates, filling -- is decided
by the pure planning functions of ``_plan.py``, which it calls.

Synchronous; the service calls it from one thread at a time (e.g. through ``trio.to_thread.run_sync``),
while `Outbox.statistics` may be read from any thread at any time. No trio, no network. See docs/uplink.md
("The outbox") for the guarantees:

* `Outbox.accept` stores many samples in one transaction: once it returns, they survive a process crash
  (``kill -9``) -- and with ``synchronous="full"`` a power loss too.
* `Outbox.next_batch` forms a batch (highest priority first, then oldest) in one transaction that inserts the
  batch and removes its samples from the store: a sample is always either stored or in exactly one formed
  batch. A formed batch keeps its ``seq`` and its bytes until `Outbox.ack`; after a restart it is returned
  again, first.
* The quota bounds the outbox's files on disk -- the database, its WAL and its high-water mark -- and so
  does the free space of the disk: to make room, the oldest samples of the lowest priority are evicted;
  what still cannot be stored is refused. A full disk or an I/O error never raises out of `accept`: it is
  counted, and `OutboxStatistics.storage` says so. Samples past their ttl are dropped. All of it is counted
  by campaign and priority.
* Damage is found and counted, never silent: each chunk and batch carries a CRC-32; a high-water mark
  written beside the database after every commit tells, at the next open, how many accepted samples a
  damaged WAL (or a replaced file) lost, and keeps a ``seq`` from ever being reused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import secrets
import sqlite3
import struct
import zlib
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
    to_us,
)
from services.uplink._campaign import Keep
from services.uplink._plan import (
    _MAX_US,
    CHUNK_SAMPLES,
    ROW_OVERHEAD,
    Row,
    _decode_chunk,
    _encode_chunk,
    _Group,
    _halves,
    _NewChunk,
    consume,
    fill,
    gather,
    plan_accept,
)

__all__ = [
    "APPLICATION_ID",
    "CHUNK_SAMPLES",
    "MAX_QUOTA_BYTES",
    "MIN_QUOTA_BYTES",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "Damage",
    "MovedAside",
    "Outbox",
    "OutboxError",
    "OutboxStatistics",
    "OutboxStorageError",
    "Row",
    "StorageState",
    "min_quota_bytes",
]

#: ``PRAGMA application_id`` of an outbox file ("vwOB"): how a file is recognised as one.
APPLICATION_ID: Final = 0x76774F42
#: ``PRAGMA user_version``: the layout of the tables. A file with a higher version is refused; version 1
#: (no CRC columns) is upgraded in place when opened.
SCHEMA_VERSION: Final = 3
#: The smallest quota of any outbox: the schema, a WAL, the high-water mark and some room for data.
MIN_QUOTA_BYTES: Final = 256 * 1024
#: The largest quota (SQLite's own limit with 4 KiB pages is 16 TiB).
MAX_QUOTA_BYTES: Final = 1 << 40
#: The WAL's share of the quota: at most this fraction (and between 16 and 1,024 pages).
_WAL_SHARE: Final = 8
_WAL_MIN_PAGES: Final = 16
_WAL_MAX_PAGES: Final = 1024
#: Bytes of the quota set aside for the high-water mark file (one block).
_MARK_RESERVE: Final = 4096
#: Pages kept free beyond what a write needs, so that acknowledgements and counters always find one.
_SPARE_PAGES: Final = 4

#: How the outbox's storage is doing, as of its last write: ``ok``; ``quota`` -- the store is at the
#: quota: an accept like the last one would evict samples (until batches sent make room); ``disk_full`` --
#: the disk (not the quota) is what limits: samples were evicted or refused for want of space, or a write
#: failed for it; ``error`` -- the last write failed otherwise (an I/O error, a read-only file system, a
#: damaged file).
StorageState = Literal["ok", "quota", "disk_full", "error"]


def min_quota_bytes(max_batch_bytes: int) -> int:
    """The smallest quota for batches of up to ``max_batch_bytes``: at least four batches' worth (one formed
    and waiting for its acknowledgement, the samples of the next ones) and `MIN_QUOTA_BYTES`."""
    return max(MIN_QUOTA_BYTES, 4 * max_batch_bytes)


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
    data BLOB NOT NULL,
    crc INTEGER
) STRICT;
CREATE INDEX chunks_order ON chunks (priority DESC, id);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,
    samples INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    expires_us INTEGER,
    groups TEXT NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER
) STRICT;
CREATE TABLE counters (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE types (name TEXT PRIMARY KEY, schema BLOB NOT NULL) STRICT, WITHOUT ROWID;
CREATE TABLE topic_types (
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (topic, type)
) STRICT, WITHOUT ROWID;
"""

#: Version 1 had no CRCs: the columns are added (NULL: written before checksums, checked by decoding only).
_UPGRADE_1_TO_2: Final = (
    "ALTER TABLE chunks ADD COLUMN crc INTEGER",
    "ALTER TABLE batches ADD COLUMN crc INTEGER",
)
#: Version 2 kept no schemas: the tables are added (empty: values stored before travel without schemas).
_UPGRADE_2_TO_3: Final = (
    "CREATE TABLE IF NOT EXISTS types (name TEXT PRIMARY KEY, schema BLOB NOT NULL) STRICT, WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS topic_types "
    "(topic TEXT NOT NULL, type TEXT NOT NULL, PRIMARY KEY (topic, type)) STRICT, WITHOUT ROWID",
)

#: Types every codec knows: their schemas need not travel.
_EVERY_CODEC_KNOWS: Final = frozenset({"bus.NotAvailable"})

_COUNTER_NAMES: Final = (
    "accepted",
    "acked_batches",
    "acked_samples",
    "dropped_quota",
    "dropped_ttl",
    "dropped_corrupt",
    "dropped_storage",
    "lost_damaged",
    "refused_oversize",
    "refused_unencodable",
)

_NO_ROOM: Final = "database or disk is full (the disk has no room for the WAL of this write)"

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26


class OutboxError(Exception):
    """The outbox file cannot be used (it names the file and says why)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class OutboxStorageError(OutboxError):
    """A write or read failed in the storage itself: the disk is full, an I/O error, a damaged file.

    ``kind`` is ``"full"``, ``"io"`` or ``"corrupt"``. Nothing was lost by it: the operation can be tried
    again later (``corrupt``: after closing and opening the outbox again, which moves a damaged file aside).
    """

    def __init__(self, path: Path, message: str, *, kind: Literal["full", "io", "corrupt"]) -> None:
        super().__init__(path, message)
        self.kind = kind


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
class Damage:
    """What the outbox found damaged when it was opened (the service logs it as a warning).

    ``lost_samples`` were accepted and are no longer there: commits a damaged WAL lost, or everything a
    replaced (moved aside, deleted) file held; ``corrupt_samples`` were in chunks or formed batches whose
    CRC-32 did not match, and were dropped. Both are counted (``lost_damaged``, ``dropped_corrupt``).
    """

    lost_samples: int
    corrupt_samples: int
    detail: str

    def __str__(self) -> str:
        return self.detail


@attrs.frozen
class OutboxStatistics:
    """What an outbox holds and what it has done (counters persist across restarts), as of its last commit."""

    path: Path
    stream: str
    quota_bytes: int
    #: Samples stored and not yet in a formed batch.
    stored_samples: int
    #: Bytes of the stored samples and formed batches (rows, blobs and payloads): the data, not the files.
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
    #: Samples evicted to make room (the oldest of the lowest priority): the quota was reached, or the disk
    #: was full.
    dropped_quota: int
    dropped_ttl: int
    #: Samples lost to a damaged chunk or formed batch (its CRC-32 did not match, or it could not be decoded).
    dropped_corrupt: int
    #: Samples that could not be stored at all: refused because nothing was left to evict, the disk was
    #: full, or the storage failed (an I/O error).
    dropped_storage: int
    #: Samples accepted earlier and lost to damage found at open (a damaged WAL, a replaced file).
    lost_damaged: int
    refused_oversize: int
    refused_unencodable: int
    dropped_quota_by_campaign: Mapping[str, int]
    dropped_quota_by_priority: Mapping[int, int]
    dropped_ttl_by_campaign: Mapping[str, int]
    dropped_ttl_by_priority: Mapping[int, int]
    #: How the storage is doing (see `StorageState`), and the last storage error ("" once a write succeeded).
    storage: StorageState = "ok"
    storage_error: str = ""
    #: The outbox's files on disk after its last write (database, WAL, high-water mark), and what they may
    #: take: the quota, or less when the disk has less room.
    disk_bytes: int = 0
    disk_budget: int = 0


@attrs.frozen
class _Limits:
    """The page budget of the database for one write, from the quota and the free space of the disk."""

    #: The most pages the database may have (``PRAGMA max_page_count``; never below its current size).
    max_pages: int
    #: The WAL is checkpointed and truncated once it is larger than this.
    wal_bytes: int
    #: What the outbox's files may take now, and whether the disk (rather than the quota) is what limits.
    budget: int
    disk_bound: bool
    #: Whether the write's WAL fits on the disk at all.
    fits: bool = True


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _kind(exc: sqlite3.Error) -> Literal["full", "io", "corrupt"]:
    code = _code(exc)
    if code == _SQLITE_FULL or (code == 0 and "full" in str(exc)):
        return "full"
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in str(exc):
        return "corrupt"
    return "io"


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- the high-water mark ------------------------------------------------------------------------------------

#: One slot of the mark file: magic, generation, stream, next seq, accepted, held samples; then its CRC-32.
_MARK: Final = struct.Struct("<8sQ16sQQQ")
_MARK_MAGIC: Final = b"vwOBmark"
#: Two slots, written alternately, in different sectors: a torn write spoils one, never both.
_MARK_SLOT: Final = 512


@attrs.frozen
class _MarkRecord:
    generation: int
    stream: str
    next_seq: int
    accepted: int
    held: int


def _read_mark(path: Path) -> _MarkRecord | Literal["damaged"] | None:
    """The newest intact slot of the mark file; None if there is no file; "damaged" if no slot is intact."""
    try:
        with path.open("rb") as f:
            data = f.read(2 * _MARK_SLOT)
    except FileNotFoundError:
        return None
    except OSError:
        return "damaged"
    best: _MarkRecord | None = None
    for offset in (0, _MARK_SLOT):
        slot = data[offset : offset + _MARK.size + 4]
        if len(slot) < _MARK.size + 4:
            continue
        body, (crc,) = slot[: _MARK.size], struct.unpack("<I", slot[_MARK.size :])
        if zlib.crc32(body) != crc:
            continue
        magic, generation, stream, next_seq, accepted, held = _MARK.unpack(body)
        if magic != _MARK_MAGIC:
            continue
        record = _MarkRecord(generation, stream.decode("ascii", "replace"), next_seq, accepted, held)
        if best is None or record.generation > best.generation:
            best = record
    return "damaged" if best is None else best


class Outbox:
    """The durable store-and-forward queue of the uplink, in one SQLite file (WAL mode).

    ``quota_bytes`` bounds the outbox's files on disk (the database, its WAL, the high-water mark; at least
    `min_quota_bytes` of ``max_batch_bytes``); ``max_batch_bytes`` bounds each batch; ``compress``
    zlib-compresses batch bodies. ``synchronous`` is ``"normal"`` (a commit survives a process crash; a
    power loss may undo the last commits but never corrupts the file) or ``"full"`` (a commit survives a
    power loss too; each commit waits for an fsync).

    A file that is not a usable outbox (garbage, another application's database, a newer schema, failing
    SQLite's quick check) is never deleted: with ``on_unusable="move_aside"`` (the default) it is renamed
    to ``<name>.unusable-<UTC time>`` (with its ``-wal`` file), a fresh outbox starts and `moved_aside`
    says so, for the service to log; with ``"raise"``, `OutboxError` is raised. A file in use by another
    process always raises `OutboxError`; so does a file that cannot be opened or written at all
    (`OutboxStorageError`: permissions, a full disk, I/O errors). Damage found at open is in `damage`.
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
        if max_batch_bytes < MIN_MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be at least {MIN_MAX_BATCH_BYTES}, not {max_batch_bytes}")
        smallest = min_quota_bytes(max_batch_bytes)
        if not smallest <= quota_bytes <= MAX_QUOTA_BYTES:
            raise ValueError(
                f"quota_bytes must be from {smallest:,} (four batches of {max_batch_bytes:,} bytes, and at "
                f"least {MIN_QUOTA_BYTES:,}) to {MAX_QUOTA_BYTES:,}, not {quota_bytes:,}"
            )
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.vehicle_id = vehicle_id
        self.max_batch_bytes = max_batch_bytes
        self.compress = compress
        self.synchronous = synchronous
        self.codec = codec
        #: Set when an unusable file was moved aside at open (the service should log it as a warning).
        self.moved_aside: MovedAside | None = None
        #: Set when damage was found at open: samples lost or dropped (the service should log it).
        self.damage: Damage | None = None
        self._closed = False
        self._broken = ""
        self._path_str = str(self.path)
        self._wal = f"{self.path}-wal"
        self._mark_path = Path(f"{self.path}-mark")
        self._mark_fd: int | None = None
        self._mark_generation = 0
        self._pending: defaultdict[tuple[str, str], int] | None = None
        #: Topics new in an accept, inserted with the first of its transactions that commits.
        self._pending_topics: list[tuple[int, str]] = []
        #: (topic, type name, schema map) new in an accept, stored likewise.
        self._pending_types: list[tuple[str, str, Any]] = []
        #: Counts that could not be committed yet (the storage failed): added to the next commit.
        self._unsaved: defaultdict[tuple[str, str], int] = defaultdict(int)
        #: Pages the last accept needed, and whether fewer are free now (the next one will evict).
        self._last_need = _SPARE_PAGES
        self._near_full = False
        self._failure: tuple[Literal["full", "io", "corrupt"], str] | None = None
        self._max_pages = 0
        self._disk_bound = False
        self._disk_no_room = False
        self._wal_peak = 0
        self._disk_bytes = 0
        self._disk_budget = quota_bytes
        self._snapshot: OutboxStatistics | None = None
        self._db = self._open(on_unusable)
        try:
            self._page_size: int = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._load()
            self._builder = BatchBuilder(
                vehicle_id, self.stream, max_bytes=max_batch_bytes, compress=compress
            )
            self._builder.schemas_for = self._schemas_for
            self._check_damage()
            self._fit_quota()
            self._refresh()
        except sqlite3.DatabaseError as exc:  # reading it, or counting damage found (a write), failed
            self._release()  # the lock, and the mark's file
            kind = _kind(exc)
            raise OutboxStorageError(
                self.path, f"cannot open it: {exc}", kind="io" if kind == "corrupt" else kind
            ) from None
        except BaseException:
            self._release()
            raise

    # -- opening --------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            # One process owns an outbox: the lock is taken now and held until close (or the process dies).
            # In exclusive locking mode SQLite keeps the WAL index in memory: there is no -shm file.
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal mode is {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
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
                    kind = _kind(exc)
                    raise OutboxStorageError(
                        self.path, f"cannot open it: {exc}", kind="io" if kind == "corrupt" else kind
                    ) from None
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
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in (*(_UPGRADE_1_TO_2 if version == 1 else ()), *_UPGRADE_2_TO_3):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
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
            if db.in_transaction:
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
        #: The schemas (wire maps) of the registered types stored values hold, and which topics hold which.
        self._schemas: dict[str, Any] = {}
        for name, blob in db.execute("SELECT name, schema FROM types"):
            with contextlib.suppress(Exception):  # a damaged row: its values travel without their schema
                self._schemas[name] = cbor2.loads(blob)
        self._topic_types: dict[str, set[str]] = {}
        for topic, type_name in db.execute("SELECT topic, type FROM topic_types"):
            self._topic_types.setdefault(topic, set()).add(type_name)
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
        counters: dict[tuple[str, str], int] = {
            (name, key): value for name, key, value in db.execute("SELECT name, key, value FROM counters")
        }
        for counter, n in self._unsaved.items():
            counters[counter] = counters.get(counter, 0) + n
        self._counters = counters

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(self.path, "the outbox is closed")
        if self._broken:
            raise OutboxStorageError(
                self.path, f"the outbox must be opened again: {self._broken}", kind="corrupt"
            )

    # -- damage found at open -------------------------------------------------------------------------------

    def _check_damage(self) -> None:
        """Compare the database with the high-water mark, and check every chunk's and batch's CRC-32."""
        notes: list[str] = []
        lost = corrupt = 0
        mark = _read_mark(self._mark_path)
        accepted = self._counters.get(("accepted", ""), 0)
        bump_seq = 0
        if mark == "damaged":
            notes.append(
                f"its high-water mark {self._mark_path} is damaged: losses since the last open cannot be "
                "checked this time"
            )
        elif mark is not None:
            self._mark_generation = mark.generation
            if mark.stream != self.stream:
                lost = mark.held
                how = "moved aside" if self.moved_aside is not None else "replaced or deleted"
                notes.append(
                    f"the outbox file was {how}: the {mark.held:,} samples stream {mark.stream} held are "
                    f"not in this one (stream {self.stream})"
                )
            else:
                if mark.accepted > accepted:
                    lost = mark.accepted - accepted
                    notes.append(
                        f"{lost:,} accepted samples are missing: the last commits before a crash were lost "
                        f"(a damaged or truncated WAL: {accepted:,} of the {mark.accepted:,} samples "
                        "accepted so far are recorded)"
                    )
                if mark.next_seq > self._next_seq:
                    bump_seq = mark.next_seq
                    notes.append(
                        f"batches up to seq {mark.next_seq - 1} were formed but are missing: the next batch "
                        f"gets seq {mark.next_seq}, so that no seq is used twice"
                    )
        elif self.moved_aside is not None:
            notes.append("how many samples the unusable file held is unknown (it had no high-water mark)")
        corrupt_chunks = self._corrupt_rows("SELECT id, grp, count, bytes, crc, data FROM chunks")
        corrupt_batches = self._corrupt_rows("SELECT seq, groups, samples, bytes, crc, payload FROM batches")
        if lost or corrupt_chunks or corrupt_batches or bump_seq > self._next_seq:
            with self._transaction():
                if lost:
                    self._count("lost_damaged", lost)
                for cid, gid, count, size in corrupt_chunks:
                    self._delete_chunk(cid, count, size)
                    self._count("dropped_corrupt", count, self._groups.get(gid))
                    corrupt += count
                for seq, groups, samples, size in corrupt_batches:
                    self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                    self._forget_batch(samples, size)
                    self._count_batch_groups("dropped_corrupt", groups, samples)
                    corrupt += samples
                if bump_seq > self._next_seq:
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (bump_seq,))
            if bump_seq > self._next_seq:
                self._next_seq = bump_seq
            if corrupt_chunks or corrupt_batches:
                where = " and ".join(
                    f"{n} {what}{'' if n == 1 else 'es' if what.endswith('batch') else 's'}"
                    for n, what in ((len(corrupt_chunks), "chunk"), (len(corrupt_batches), "formed batch"))
                    if n
                )
                notes.append(
                    f"{corrupt:,} samples in {where} were damaged (their CRC-32 did not match) and were "
                    "dropped"
                )
        else:
            self._write_mark()
        if notes:
            self.damage = Damage(lost, corrupt, f"outbox {self.path}: " + "; ".join(notes))

    def _corrupt_rows(self, query: str) -> list[tuple[Any, Any, int, int]]:
        """The rows of ``query`` (key, group(s), samples, bytes, crc, blob) whose blob does not match its
        CRC-32 (a chunk from before checksums: that cannot be decoded)."""
        bad = []
        for key, group, samples, size, crc, blob in self._db.execute(query):
            if crc is not None:
                damaged = zlib.crc32(blob) != crc
            elif query.endswith("chunks"):
                try:
                    damaged = len(_decode_chunk(blob)[0]) != samples
                except Exception:
                    damaged = True
            else:
                damaged = False  # a batch from before checksums: the receiver's decoder checks it
            if damaged:
                bad.append((key, group, samples, size))
        return bad

    # -- the disk budget ------------------------------------------------------------------------------------

    def _limits(self, need: int) -> _Limits:
        """The page budget of a write of about ``need`` pages: the quota's, or less if the disk has less room.

        Disk space is counted as SQLite uses it: until a checkpoint, a written page takes room twice, as a
        frame in the WAL and at its place in the database file. So the database may grow only as far as the
        disk can also hold the WAL at its largest for this write, and a write whose WAL does not fit even
        without growth does not fit at all (``fits``): committed, it could never be checkpointed.
        """
        ps = self._page_size
        db = self._db
        page_count: int = db.execute("PRAGMA page_count").fetchone()[0]
        db_file, wal_file = _file_size(str(self.path)), _file_size(self._wal)
        try:
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = self.quota_bytes
        room = db_file + wal_file + free  # what the database and its WAL can take on this disk
        budget = min(self.quota_bytes, room)
        frames = min(_WAL_MAX_PAGES, max(_WAL_MIN_PAGES, budget // _WAL_SHARE // (ps + 24)))
        wal_bytes = 32 + frames * (ps + 24)
        # The WAL when this write commits: what it may hold before a checkpoint, and the write's frames.
        wal_at_commit = max(wal_file, 32 + (frames // 2 + need) * (ps + 24))
        by_disk = (room - _MARK_RESERVE - wal_at_commit) // ps
        by_quota = (self.quota_bytes - wal_bytes - _MARK_RESERVE) // ps
        max_pages = max(page_count, min(by_quota, by_disk))
        if max_pages != self._max_pages:
            db.execute(f"PRAGMA max_page_count = {max_pages}")
            db.execute(f"PRAGMA wal_autocheckpoint = {frames // 2}")
            db.execute(f"PRAGMA journal_size_limit = {wal_bytes}")
            self._max_pages = max_pages
        self._disk_bound = by_disk < by_quota
        self._disk_no_room = by_disk <= page_count
        return _Limits(max_pages, wal_bytes, budget, self._disk_bound, by_disk >= page_count)

    def _free_pages(self, limits: _Limits) -> int:
        db = self._db
        page_count: int = db.execute("PRAGMA page_count").fetchone()[0]
        freelist: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        return limits.max_pages - page_count + freelist

    def _pages_for(self, sizes: Iterable[int]) -> int:
        """About how many pages rows with blobs of ``sizes`` bytes take (overflow pages and a leaf share)."""
        usable = self._page_size - 4
        return sum(-(-size // usable) + 1 for size in sizes) + _SPARE_PAGES

    def _after_write(self, limits: _Limits) -> None:
        """Keep the WAL within its share: checkpoint and truncate it when one write made it larger."""
        wal = _file_size(self._wal)
        self._wal_peak = max(self._wal_peak, wal)
        if wal > limits.wal_bytes:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.DatabaseError as exc:
                self._note_failure(exc)
            wal = _file_size(self._wal)
        self._disk_bytes = _file_size(str(self._path_str)) + wal + _file_size(str(self._mark_path))
        self._disk_budget = limits.budget
        with contextlib.suppress(sqlite3.Error):
            # Whether the next accept like the last one would evict: not once nothing is stored, and a
            # burst larger than a quarter of the store (it evicted to fit) counts no more than that, or
            # the state would say "quota" even once everything has been sent and the store is empty.
            self._near_full = self._stored_samples > 0 and self._free_pages(limits) < min(
                self._last_need, limits.max_pages // 4
            )

    def _fit_quota(self) -> None:
        """At open: a database larger than the quota now allows (a lowered quota; a WAL that grew past it
        before WAL was counted) is brought back within it: the oldest samples are evicted, the file is
        compacted (VACUUM). A failure leaves it as it is, larger, but never lets it grow."""
        try:
            limits = self._limits(_SPARE_PAGES)
            page_count: int = self._db.execute("PRAGMA page_count").fetchone()[0]
            target = (self.quota_bytes - limits.wal_bytes - _MARK_RESERVE) // self._page_size
            if page_count <= target:
                self._after_write(limits)
                return
            squeezed = attrs.evolve(limits, max_pages=target)
            with self._transaction():
                self._make_room(_SPARE_PAGES, squeezed, None)
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._max_pages = 0
            self._after_write(self._limits(_SPARE_PAGES))
        except sqlite3.DatabaseError as exc:
            self._note_failure(exc)

    def _make_room(self, need: int, limits: _Limits, now_us: int | None) -> bool:
        """Within a transaction: evict the oldest samples of the lowest priority until ``need`` pages are
        free under the page limit (those past their ttl first, with ``now_us``). True if it evicted any."""
        free = self._free_pages(limits)
        if free >= need:
            return False
        if now_us is not None:
            self._purge_expired(now_us)
            free = self._free_pages(limits)
        usable = self._page_size - 4
        evicted = False
        while free < need:
            victims = self._db.execute(
                "SELECT id, grp, count, bytes FROM chunks ORDER BY priority, id LIMIT 32"
            ).fetchall()
            if not victims:
                break  # only formed batches are left: they are never evicted
            for cid, gid, count, size in victims:
                group = self._groups[gid]
                pages = -(-size // usable)
                deficit = need - free
                evicted = True
                if pages <= deficit + 1 or count == 1:
                    self._delete_chunk(cid, count, size)
                    self._count("dropped_quota", count, group)
                else:
                    row = self._db.execute("SELECT data, crc FROM chunks WHERE id = ?", (cid,)).fetchone()
                    try:
                        tids, times, values = _decode_chunk(row[0], row[1])
                    except Exception:
                        self._drop_corrupt(cid, count, size, group)
                    else:
                        # Its oldest samples; a chunk's size is about proportional to its sample count.
                        drop = min(count - 1, max(1, math.ceil(count * (deficit + 1) / pages)))
                        self._count("dropped_quota", drop, group)
                        self._rewrite_chunk(cid, group, tids[drop:], times[drop:], values[drop:], count, size)
                free = self._free_pages(limits)
                if free >= need:
                    break
        return evicted

    # -- transactions ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on any failure it is rolled back and the in-memory state reloaded."""
        self._check_open()
        db = self._db
        changes_before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        pending = self._pending = defaultdict(int)
        try:
            yield
            for counter, n in self._unsaved.items():
                pending[counter] += n
            if pending:
                db.executemany(
                    "INSERT INTO counters (name, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value",
                    [(name, key, n) for (name, key), n in pending.items()],
                )
            db.execute("COMMIT")
        except BaseException:
            self._pending = None
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._load()
            except sqlite3.Error as exc:  # the state in memory is unknown now: only a reopen can tell
                self._broken = f"after a failed write, the outbox could not be read back ({exc})"
            raise
        self._pending = None
        counters = dict(self._counters)  # a new dict: statistics() may be reading the old one
        for counter, n in pending.items():
            counters[counter] = counters.get(counter, 0) + n
        for counter, n in self._unsaved.items():
            counters[counter] -= n  # already in self._counters; now committed, and in pending too
        self._unsaved.clear()
        self._counters = counters
        if db.total_changes != changes_before:
            self._failure = None  # a write went through: the storage works again
        self._write_mark()

    def _count(self, name: str, n: int, group: _Group | None = None) -> None:
        pending = self._pending
        assert pending is not None, "counters change inside transactions only"
        self._add(pending, name, n, group)

    @staticmethod
    def _add(
        counters: defaultdict[tuple[str, str], int], name: str, n: int, group: _Group | None = None
    ) -> None:
        if not n:
            return
        counters[(name, "")] += n
        if group is not None:
            for campaign in group.campaigns:
                counters[(name, f"campaign:{campaign}")] += n
            counters[(name, f"priority:{group.priority}")] += n

    def _count_unsaved(self, name: str, n: int, group: _Group | None = None) -> None:
        """Count what happened though nothing could be committed: kept, and committed with the next write."""
        if not n:
            return
        added: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._add(added, name, n, group)
        counters = dict(self._counters)
        for counter, k in added.items():
            self._unsaved[counter] += k
            counters[counter] = counters.get(counter, 0) + k
        self._counters = counters

    def _count_batch_groups(self, name: str, groups: str, samples: int) -> None:
        try:
            by_group = [(self._groups.get(gid), n) for gid, n in json.loads(groups)]
        except Exception:
            by_group = [(None, samples)]
        for group, n in by_group:
            self._count(name, n, group)

    def _group_id(self, keep: Keep) -> int:
        gid = self._group_ids.get(keep)
        if gid is None:
            ttl_us = None if keep.ttl is None else max(1, round(min(keep.ttl, _MAX_US / 1e6) * 1_000_000))
            cursor = self._db.execute(
                "INSERT INTO groups (campaigns, priority, ttl_us) VALUES (?, ?, ?)",
                (json.dumps(list(keep.campaigns)), keep.priority, ttl_us),
            )
            gid = cursor.lastrowid
            assert gid is not None
            self._groups[gid] = _Group(gid, keep.campaigns, keep.priority, ttl_us)
            self._group_ids[keep] = gid
        return gid

    # -- storage failures -----------------------------------------------------------------------------------

    def _note_failure(self, exc: sqlite3.Error) -> Literal["full", "io", "corrupt"]:
        kind = _kind(exc)
        self._failure = (kind, str(exc))
        return kind

    def _storage_error(self, exc: sqlite3.Error, what: str) -> OutboxStorageError:
        kind = self._note_failure(exc)
        self._refresh()
        return OutboxStorageError(self.path, f"{what}: {exc}", kind=kind)

    def _storage_state(self) -> tuple[StorageState, str]:
        if self._broken:
            return "error", self._broken
        if self._failure is not None:
            kind, message = self._failure
            if kind == "full":
                return ("disk_full" if self._disk_bound else "quota"), message
            return "error", message
        if self._disk_bound and (self._disk_no_room or self._near_full):
            return "disk_full", ""  # the disk leaves the outbox no room to grow
        return ("quota" if self._near_full else "ok"), ""

    # -- the high-water mark --------------------------------------------------------------------------------

    def _write_mark(self) -> None:
        """Record the committed state beside the database (not in it: a damaged WAL cannot take it along).

        Written after every commit, without an fsync: a mark older than the database is harmless (nothing
        is reported lost); only one newer than the database -- commits the database lost -- is a finding.
        """
        self._mark_generation += 1
        body = _MARK.pack(
            _MARK_MAGIC,
            self._mark_generation,
            self.stream.encode("ascii", "replace")[:16].ljust(16, b"?"),
            self._next_seq,
            self._counters.get(("accepted", ""), 0),
            self._stored_samples + self._formed_samples,
        )
        record = body + struct.pack("<I", zlib.crc32(body))
        try:
            if self._mark_fd is None:
                self._mark_fd = os.open(self._mark_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._mark_fd, record, (self._mark_generation % 2) * _MARK_SLOT)
        except OSError:
            pass  # a mark behind the database is harmless; the next commit writes it again

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
        others are stored. To make room (the quota, or the disk's free space), the oldest samples of the
        lowest priority are evicted first (counted; those past their ttl go first if ``now``, wall-clock
        seconds, is given). If the samples still cannot be stored -- nothing left to evict, the disk full,
        an I/O error -- they are dropped and counted in ``dropped_storage``, and `statistics` says why: a
        storage failure never raises (only a damaged file does, `OutboxStorageError`: open it again).
        """
        self._check_open()
        noted: dict[str, set[str]] = {}
        plan = plan_accept(rows, self._topic_ids, self._topic_names, self._builder, self.codec, noted)
        if plan is None:
            return 0
        chunks, new_topics, refused = plan
        self._pending_types = self._new_types(noted)
        for _, counter, _ in refused:  # committed with the next write that succeeds
            self._count_unsaved(counter, 1)
        now_us = None if now is None else to_us(now)
        self._pending_topics = new_topics
        stored = lost = 0
        refused_by: tuple[Literal["full", "io", "corrupt"], str] | None = None
        # One transaction, if it fits; on a disk too full for the WAL of all of it, smaller ones: halves
        # (down to chunks of _MIN_SPLIT samples), so that the newest samples can still be stored in the room
        # that evicting the oldest makes.
        parts = [chunks]
        while parts:
            part = parts.pop(0)
            got, failure = self._accept_part(part, now_us)
            if failure is None:
                stored += got
                continue
            kind = _kind(failure)
            if kind == "full" and not self._broken and (halves := _halves(part)):
                parts[:0] = halves
                continue
            for chunk in part:
                group = _Group(0, chunk.keep.campaigns, chunk.keep.priority, None)
                self._count_unsaved("dropped_storage", len(chunk.tids), group)
                lost += len(chunk.tids)
            if refused_by is None or kind != "full":
                refused_by = kind, str(failure)
            if kind == "corrupt" or self._broken:
                break  # the file is damaged: nothing more can be stored in it
        if refused_by is not None:
            # Until a later write succeeds.
            self._failure = refused_by[0], f"{lost:,} samples could not be stored: {refused_by[1]}"
            if refused_by[0] == "full":
                # A failed write may have left the WAL longer: give that room back to the disk.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                with contextlib.suppress(sqlite3.Error):
                    self._after_write(self._limits(_SPARE_PAGES))
        self._refresh()
        if on_refused is not None:
            for topic, _, reason in refused:
                on_refused(topic, reason)
        if self._broken or (refused_by is not None and refused_by[0] == "corrupt"):
            reason = self._broken or (self._failure[1] if self._failure else "")
            raise OutboxStorageError(self.path, f"cannot store samples: {reason}", kind="corrupt")
        return stored

    def _accept_part(self, chunks: list[_NewChunk], now_us: int | None) -> tuple[int, sqlite3.Error | None]:
        """Store ``chunks`` in one transaction, making room first (and again, for more, if SQLite still
        finds the store full): the number of samples stored, or the failure (nothing stored, or counted)."""
        count = sum(len(c.tids) for c in chunks)
        need = self._pages_for(len(c.data) for c in chunks)
        failure: sqlite3.Error | None = None
        limits: _Limits | None = None
        self._last_need = need
        for attempt in range(2):
            try:
                limits = self._limits(need << attempt)
                if not limits.fits:  # committed, its WAL could never be checkpointed: do not even try
                    failure = sqlite3.OperationalError(_NO_ROOM)
                    break
                with self._transaction():
                    if self._pending_topics:
                        self._db.executemany(
                            "INSERT INTO topics (id, name) VALUES (?, ?)", self._pending_topics
                        )
                        for tid, topic in self._pending_topics:  # a rollback reloads both from the database
                            self._topic_names[tid] = topic
                            self._topic_ids[topic] = tid
                    if self._pending_types:
                        self._store_types(self._pending_types)
                    if chunks:
                        self._make_room(need << attempt, limits, now_us)
                    rows_out = []
                    added_bytes = 0
                    for chunk in chunks:
                        gid = self._group_id(chunk.keep)
                        ttl_us = self._groups[gid].ttl_us
                        stale = expires = None
                        if ttl_us is not None:
                            stale, expires = min(chunk.times) + ttl_us, max(chunk.times) + ttl_us
                        size = len(chunk.data) + ROW_OVERHEAD
                        priority, n, data = chunk.keep.priority, len(chunk.tids), chunk.data
                        rows_out.append((gid, priority, n, size, stale, expires, data, zlib.crc32(data)))
                        added_bytes += size
                    self._db.executemany(
                        "INSERT INTO chunks (grp, priority, count, bytes, stale_us, expires_us, data, crc) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        rows_out,
                    )
                    self._stored_samples += count
                    self._chunk_bytes += added_bytes
                    self._count("accepted", count)
                self._pending_topics = []
                self._pending_types = []
                failure = None
                break
            except sqlite3.DatabaseError as exc:
                failure = exc
                if self._broken or _kind(exc) != "full":
                    break
        if limits is not None:
            self._after_write(limits)
        return (count, None) if failure is None else (0, failure)

    def _delete_chunk(self, cid: int, count: int, size: int) -> None:
        self._db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        self._stored_samples -= count
        self._chunk_bytes -= size

    def _drop_corrupt(self, cid: int, count: int, size: int, group: _Group | None = None) -> None:
        self._delete_chunk(cid, count, size)
        self._count("dropped_corrupt", count, group)

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
        """Replace a chunk's samples by the (non-empty) given ones; returns its new size.

        Deleted and inserted again with the same id (so it keeps its place): an UPDATE would need room for
        the new blob before it frees the old one, which a store at its page limit does not have.
        """
        data = _encode_chunk(tids, times, values)
        size = len(data) + ROW_OVERHEAD
        stale = expires = None
        if group.ttl_us is not None:
            stale, expires = min(times) + group.ttl_us, max(times) + group.ttl_us
        self._db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        self._db.execute(
            "INSERT INTO chunks (id, grp, priority, count, bytes, stale_us, expires_us, data, crc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, group.id, group.priority, len(tids), size, stale, expires, data, zlib.crc32(data)),
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
        instead of being sent; so is one whose bytes are damaged (its CRC-32 does not match). Forming is one
        transaction: the batch is stored and its samples leave the store together.

        Raises `OutboxStorageError` if the storage fails (nothing is lost: try again later).
        """
        self._check_open()
        try:
            return self._next_batch(to_us(now), after)
        except sqlite3.DatabaseError as exc:
            raise self._storage_error(exc, "cannot form a batch") from None
        finally:
            self._refresh()

    def _next_batch(self, now_us: int, after: int | None) -> tuple[int, bytes] | None:
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
                payload, crc = self._db.execute(
                    "SELECT payload, crc FROM batches WHERE seq = ?", (seq,)
                ).fetchone()
                if crc is None or zlib.crc32(payload) == crc:
                    return seq, bytes(payload)
                reason = "dropped_corrupt"
            else:
                reason = "dropped_ttl"
            with self._transaction():
                self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                self._count_batch_groups(reason, groups, samples)
            self._forget_batch(samples, size)
        # Forming never evicts (it would evict what it is about to send): the samples it takes free the
        # room the batch needs, and accepts keep a few pages spare. If even so there is none (a store full of
        # formed batches), it raises, and is tried again once acknowledgements have made room.
        limits = self._limits(2 * self._pages_for([self.max_batch_bytes]))
        formed = self._form(now_us)
        self._after_write(limits)
        return formed

    def _forget_batch(self, samples: int, size: int) -> None:
        self._formed -= 1
        self._formed_samples -= samples
        self._formed_bytes -= size

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
            cursor = self._db.execute(
                "SELECT id, grp, count, bytes, stale_us, data, crc FROM chunks ORDER BY priority DESC, id"
            )
            chunks, candidates = gather(cursor, self._groups, names, now_us, budget)
            cursor.close()
            seq = self._next_seq
            payload, taken, refused = fill(self._builder, seq, candidates)
            self._count("refused_oversize", refused)
            ends, batch_groups, expires = consume(chunks, refused, taken)
            for chunk, last in zip(chunks, ends, strict=True):
                if chunk.corrupt:
                    self._drop_corrupt(chunk.id, chunk.expired, chunk.bytes, chunk.group)
                    continue
                count = len(chunk.tids)
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
                    "INSERT INTO batches (seq, samples, bytes, expires_us, groups, payload, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        taken,
                        size,
                        expires,
                        json.dumps(sorted(batch_groups.items())),
                        payload,
                        zlib.crc32(payload),
                    ),
                )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                formed = seq, payload
                # Counted now, so that the mark written at the commit already knows the batch and its seq.
                self._next_seq = seq + 1
                self._formed += 1
                self._formed_samples += taken
                self._formed_bytes += size
        return formed, refused

    # -- schemas: what a reader needs to decode the stored values -------------------------------------------

    def _new_types(self, noted: dict[str, set[str]]) -> list[tuple[str, str, Any]]:
        """(topic, type, schema map) for the types ``noted`` on topics that were not known to hold them,
        with the types their fields reach."""
        new: list[tuple[str, str, Any]] = []
        for topic, names in noted.items():
            known = self._topic_types.get(topic, set())
            for name in names - known - _EVERY_CODEC_KNOWS:
                try:
                    schemas = self.codec.schemas(name)
                except CodecError:  # a type the codec cannot describe: its values travel without a schema
                    continue
                new.extend((topic, schema.name, schema.to_wire()) for schema in schemas)
        return new

    def _store_types(self, pending: list[tuple[str, str, Any]]) -> None:
        """Store ``pending`` types in the current transaction (a rollback reloads them from the database)."""
        self._db.executemany(
            "INSERT OR IGNORE INTO topic_types (topic, type) VALUES (?, ?)", [(t, n) for t, n, _ in pending]
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO types (name, schema) VALUES (?, ?)",
            [(n, cbor2.dumps(wire, canonical=True)) for _, n, wire in pending],
        )
        for topic, name, wire in pending:
            self._topic_types.setdefault(topic, set()).add(name)
            self._schemas[name] = wire

    def _schemas_for(self, topics: list[str]) -> list[Any]:
        """The schema maps a batch of ``topics`` carries (those of the types their stored values hold)."""
        if not self._topic_types:
            return []
        names: set[str] = set()
        for topic in topics:
            found = self._topic_types.get(topic)
            if found:
                names |= found
        return [self._schemas[n] for n in sorted(names) if n in self._schemas]

    def ack(self, seq: int) -> bool:
        """The batch ``seq`` was acknowledged: delete it. False if there is no such formed batch (already
        acknowledged: acknowledging twice is harmless). Raises `OutboxStorageError` if the storage fails
        (the batch stays: acknowledge it again later)."""
        self._check_open()
        try:
            row = self._db.execute("SELECT samples, bytes FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            samples, size = row
            for attempt in range(2):
                limits = self._limits(_SPARE_PAGES)
                try:
                    with self._transaction():
                        if attempt:
                            self._make_room(_SPARE_PAGES, limits, None)
                        self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                        self._count("acked_batches", 1)
                        self._count("acked_samples", samples)
                    break
                except sqlite3.DatabaseError as exc:
                    if attempt or _kind(exc) != "full" or self._broken:
                        raise
            self._forget_batch(samples, size)
            self._after_write(limits)
            return True
        except sqlite3.DatabaseError as exc:
            raise self._storage_error(exc, f"cannot acknowledge batch {seq}") from None
        finally:
            self._refresh()

    def formed(self) -> list[int]:
        """The seqs of the formed, unacknowledged batches, oldest first."""
        self._check_open()
        return [seq for (seq,) in self._db.execute("SELECT seq FROM batches ORDER BY seq")]

    # -- statistics and closing -----------------------------------------------------------------------------

    @staticmethod
    def _breakdown(counters: Mapping[tuple[str, str], int], name: str, kind: str) -> dict[str, int]:
        prefix = f"{kind}:"
        return {
            key[len(prefix) :]: value
            for (counter, key), value in sorted(counters.items())
            if counter == name and key.startswith(prefix) and value
        }

    @property
    def unformed_bytes(self) -> int:
        """Bytes of the stored samples not yet formed into a batch (what the next batch can take)."""
        snapshot = self._snapshot
        return 0 if snapshot is None else snapshot.stored_bytes - snapshot.formed_bytes

    def _refresh(self) -> None:
        """Take the snapshot `statistics` returns: built here, in the one thread that changes the outbox,
        and swapped in whole, so that a reader in another thread never sees a half-made change."""
        counters = self._counters  # replaced (never changed in place) at each commit

        def counter(name: str) -> int:
            return counters.get((name, ""), 0)

        def by_priority(name: str) -> dict[int, int]:
            return {int(k): v for k, v in self._breakdown(counters, name, "priority").items()}

        storage, error = self._storage_state()
        self._snapshot = OutboxStatistics(
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
            dropped_storage=counter("dropped_storage"),
            lost_damaged=counter("lost_damaged"),
            refused_oversize=counter("refused_oversize"),
            refused_unencodable=counter("refused_unencodable"),
            dropped_quota_by_campaign=self._breakdown(counters, "dropped_quota", "campaign"),
            dropped_quota_by_priority=by_priority("dropped_quota"),
            dropped_ttl_by_campaign=self._breakdown(counters, "dropped_ttl", "campaign"),
            dropped_ttl_by_priority=by_priority("dropped_ttl"),
            storage=storage,
            storage_error=error,
            disk_bytes=self._disk_bytes,
            disk_budget=self._disk_budget,
        )

    def statistics(self) -> OutboxStatistics:
        """What the outbox holds and has done, as of its last write (the counters persist across restarts).

        Safe to call from any thread while another uses the outbox: it returns a snapshot.
        """
        snapshot = self._snapshot
        assert snapshot is not None
        return snapshot

    def _release(self) -> None:
        try:
            self._db.close()
        finally:
            if self._mark_fd is not None:
                fd, self._mark_fd = self._mark_fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Close the file and release its lock (idempotent, and never raises for a storage failure).
        Nothing is lost by not calling it: every commit is already durable."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
