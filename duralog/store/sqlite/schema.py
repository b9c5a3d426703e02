"""The SQLite backend's file: schema, format migrations, row codecs, checksums.

Opening a data directory goes through ``open_database``:

* a missing file is created as a complete, empty database under a temporary
  name and renamed into place, so a zero-length ``duralog.sqlite3`` is never a
  new database: it is refused (a file lost its contents; starting empty would
  silently drop every stream);
* an older format is migrated in one transaction (format 1 -> 2 adds a
  checksum to every record, computed from the stored bytes, and a last-used
  time to every producer);
* a row that cannot be parsed stops startup with the file, the table and the row.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from ...protocol.state import StreamState

DB_NAME = "duralog.sqlite3"
FORMAT_VERSION = "2"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    tail INTEGER NOT NULL,
    ttl INTEGER,
    expires_at TEXT,
    expires_ts REAL,
    last_access REAL NOT NULL,
    closed INTEGER NOT NULL,
    closed_by TEXT,
    stream_seq TEXT,
    source_id INTEGER,
    forked_from TEXT,
    fork_pos INTEGER,
    fork_sub INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    soft_deleted INTEGER NOT NULL,
    retention_bytes INTEGER,
    retention_seconds INTEGER,
    start INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS producers (
    stream INTEGER NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, producer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    stream INTEGER NOT NULL,
    end_pos INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum INTEGER,
    ts REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, end_pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (
    stream INTEGER PRIMARY KEY
);
"""

#: Created after migrations (format 1 had no last_used column to index).
INDEXES = """
CREATE INDEX IF NOT EXISTS producers_last_used ON producers (last_used);
"""


class StoreFileError(RuntimeError):
    """The database file cannot be used as it is; the message names file and row."""


def record_checksum(stream: int, end: int, kind: int, data: bytes) -> int:
    """BLAKE2b-64 (hashlib) of a record's key, kind and bytes, as a signed 64-bit int.

    The key is part of the hash, so bytes that moved to another row are caught
    too. BLAKE2b is stronger than CRC32C and needs no extra dependency.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(stream.to_bytes(8, "big", signed=True))
    h.update(end.to_bytes(8, "big", signed=True))
    h.update(bytes((kind & 0xFF,)))
    h.update(data)
    return int.from_bytes(h.digest(), "big", signed=True)


# -- stream rows ------------------------------------------------------------------
def state_row(s: StreamState) -> tuple[Any, ...]:
    closed_by = orjson.dumps(s.closed_by).decode() if s.closed_by is not None else None
    return (s.id, s.path, s.content_type, s.created_at, s.tail, s.ttl, s.expires_at,
            s.expires_ts, s.last_access, int(s.closed), closed_by, s.stream_seq, s.source_id,
            s.forked_from, s.fork_pos, s.fork_sub, s.refcount, int(s.soft_deleted),
            s.retention_bytes, s.retention_seconds, s.start)


_INT = (int,)
_NUM = (int, float)
_STR = (str,)
#: Expected types per column of ``streams``; None marks a nullable column.
_COLUMNS: list[tuple[str, tuple[type, ...], bool]] = [
    ("id", _INT, False), ("path", _STR, False), ("content_type", _STR, False),
    ("created_at", _NUM, False), ("tail", _INT, False), ("ttl", _INT, True),
    ("expires_at", _STR, True), ("expires_ts", _NUM, True), ("last_access", _NUM, False),
    ("closed", _INT, False), ("closed_by", _STR, True), ("stream_seq", _STR, True),
    ("source_id", _INT, True), ("forked_from", _STR, True), ("fork_pos", _INT, True),
    ("fork_sub", _INT, False), ("refcount", _INT, False), ("soft_deleted", _INT, False),
    ("retention_bytes", _INT, True), ("retention_seconds", _INT, True), ("start", _INT, False),
]


def state_from_row(r: tuple[Any, ...]) -> StreamState:
    """A stream row as a StreamState; ValueError says which column is wrong."""
    if len(r) != len(_COLUMNS):
        raise ValueError(f"{len(r)} columns, expected {len(_COLUMNS)}")
    for value, (name, types, nullable) in zip(r, _COLUMNS, strict=True):
        if value is None and nullable:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"column {name} holds {value!r}")
    if r[4] < 0 or not 0 <= r[20] <= r[4]:
        raise ValueError(f"columns tail, start hold {r[4]!r}, {r[20]!r}")
    closed_by = None
    if r[10] is not None:
        try:
            triple = orjson.loads(r[10])
        except orjson.JSONDecodeError:
            raise ValueError(f"column closed_by holds {r[10]!r}") from None
        if not (isinstance(triple, list) and len(triple) == 3):
            raise ValueError(f"column closed_by holds {r[10]!r}")
        closed_by = tuple(triple)
    return StreamState(
        id=r[0], path=r[1], content_type=r[2], created_at=r[3], tail=r[4], ttl=r[5],
        expires_at=r[6], expires_ts=r[7], last_access=r[8], closed=bool(r[9]),
        closed_by=closed_by,  # type: ignore[arg-type]
        stream_seq=r[11], source_id=r[12], forked_from=r[13], fork_pos=r[14],
        fork_sub=r[15], refcount=r[16], soft_deleted=bool(r[17]), retention_bytes=r[18],
        retention_seconds=r[19], start=r[20])


# -- opening ------------------------------------------------------------------------
def configure(con: sqlite3.Connection, path: Path) -> None:
    """Pragmas every connection of the store uses."""
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreFileError(f"{path}: could not switch to WAL mode ({mode})")
    # FULL: every commit fsyncs the WAL, so an acknowledged append survives a
    # power cut, not only a process crash.
    con.execute("PRAGMA synchronous=FULL")


def _create(path: Path) -> None:
    """A new, complete, empty database at ``path``, made elsewhere and renamed in."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        # Incremental vacuum can only be chosen before the first table exists.
        con.execute("PRAGMA auto_vacuum=INCREMENTAL")
        configure(con, tmp)
        con.executescript(SCHEMA + INDEXES)
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format", FORMAT_VERSION), ("instance_tag", secrets.token_hex(4)),
            ("next_id", "1")])
        con.execute("COMMIT")
    finally:
        con.close()  # checkpoints: the main file holds everything
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_database(path: Path, max_page_count: int | None = None) -> sqlite3.Connection:
    """The writer's connection to ``path``: created, checked and migrated as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create(path)
    elif path.stat().st_size == 0:
        raise StoreFileError(
            f"{path} is empty (0 bytes) but is not a new database (new databases are "
            "never empty): refusing to start rather than serve an empty store; restore "
            "the file from a backup, or remove it to start with no streams")
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                          timeout=30.0, cached_statements=256)
    try:
        configure(con, path)
        con.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache for the writer
        con.execute("PRAGMA journal_size_limit=67108864")
        # Many builds (Debian's among them) default to secure_delete=ON, which writes
        # zeros over every freed page: a delete then costs as much I/O as the data
        # it frees. FAST zeroes only what costs no extra I/O; freed pages go back
        # to the file system through incremental vacuum (docs/storage.md).
        con.execute("PRAGMA secure_delete=FAST")
        if max_page_count is not None:
            con.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            raise StoreFileError(f"{path} is a SQLite database without duralog's tables "
                                 "(not a duralog data file?): refusing to start")
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        fmt = meta.get("format")
        if fmt == "1":
            migrate_1_to_2(con)
        elif fmt != FORMAT_VERSION:
            raise StoreFileError(f"{path}: unknown storage format {fmt!r}")
        con.executescript(SCHEMA + INDEXES)
        for key in ("instance_tag", "next_id"):
            if key not in meta:
                raise StoreFileError(f"{path}: table meta has no {key!r} row")
    except sqlite3.DatabaseError as exc:
        con.close()
        raise StoreFileError(f"cannot open {path}: {exc}") from exc
    except BaseException:
        con.close()
        raise
    return con


def migrate_1_to_2(con: sqlite3.Connection, step: int = 1000) -> None:
    """Format 1 -> 2, in one transaction: checksums for every record (computed
    from the stored bytes, which is all we have), producer last-used times (set
    to now, so every producer gets a full --producer-ttl from the upgrade), and
    the retention columns (no retention, everything retained)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("ALTER TABLE records ADD COLUMN checksum INTEGER")
        con.execute("ALTER TABLE records ADD COLUMN ts REAL NOT NULL DEFAULT 0")
        con.execute("ALTER TABLE streams ADD COLUMN retention_bytes INTEGER")
        con.execute("ALTER TABLE streams ADD COLUMN retention_seconds INTEGER")
        con.execute("ALTER TABLE streams ADD COLUMN start INTEGER NOT NULL DEFAULT 0")
        con.execute("ALTER TABLE producers ADD COLUMN last_used REAL NOT NULL DEFAULT 0")
        con.execute("UPDATE producers SET last_used = ?", (time.time(),))
        last = (-1 << 62, -1 << 62)
        while True:
            rows = con.execute(
                "SELECT stream, end_pos, kind, data FROM records WHERE (stream, end_pos) > (?, ?) "
                "ORDER BY stream, end_pos LIMIT ?", (*last, step)).fetchall()
            if not rows:
                break
            con.executemany("UPDATE records SET checksum = ? WHERE stream = ? AND end_pos = ?",
                            [(record_checksum(s, e, k, d), s, e) for s, e, k, d in rows])
            last = (rows[-1][0], rows[-1][1])
        con.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT_VERSION,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def load(con: sqlite3.Connection, path: Path) -> tuple[dict[str, str], list[StreamState]]:
    """meta and every stream (with its producers); a bad row names file, table and row."""
    from ...protocol.state import ProducerState

    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    try:
        int(meta["next_id"])
    except ValueError:
        raise StoreFileError(f"{path}: table meta, row next_id: cannot parse "
                             f"{meta['next_id']!r}") from None
    states: dict[int, StreamState] = {}
    for row in con.execute("SELECT * FROM streams"):
        try:
            state = state_from_row(row)
        except ValueError as exc:
            raise StoreFileError(f"{path}: table streams, row id={row[0]!r}: cannot parse "
                                 f"({exc}); run `duralog check` for the whole file") from None
        states[state.id] = state
    for row in con.execute("SELECT stream, producer, epoch, last_seq, last_used FROM producers"):
        stream_id, producer, epoch, last_seq, last_used = row
        if not (isinstance(producer, str) and isinstance(epoch, int)
                and isinstance(last_seq, int) and isinstance(last_used, (int, float))):
            raise StoreFileError(f"{path}: table producers, row stream={stream_id!r} "
                                 f"producer={producer!r}: cannot parse {row!r}")
        state = states.get(stream_id)
        if state is not None:
            state.producers[producer] = ProducerState(epoch, last_seq, float(last_used))
    return meta, list(states.values())
