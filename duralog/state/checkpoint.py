"""Checkpoints of a StreamDB: the applied offset and the rows, saved together.

A restart loads both and reads on from that offset, so nothing is replayed
from ``-1``, missed, or applied twice: the rows saved always belong to exactly
the offset saved with them.

- ``FileStateCheckpoint``: one JSON file, replaced atomically (write, fsync,
  rename). It holds the whole state, so it is written at most every
  ``interval`` seconds (and on close); any saved pair is consistent.
- ``SQLiteStateCheckpoint``: rows in a table, changed incrementally in one
  transaction with the offset per batch. ``on_batch(changes, connection)``
  hooks run in that transaction, so side effects written through the
  connection commit with the state (exactly once).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from .tables import AppliedBatch, StateCore

BatchHook = Callable[[AppliedBatch, sqlite3.Connection], None]


class StateCheckpoint(Protocol):
    def load(self, stream_url: str) -> tuple[str, dict[str, dict[str, Any]]] | None:
        """(offset, rows by collection and key), or None when nothing is saved."""

    def save(self, stream_url: str, core: StateCore, batch: AppliedBatch | None) -> None:
        """Record ``core``'s offset and rows; ``batch`` is what was just applied
        (None: a final save on close)."""

    def close(self) -> None: ...


def _check_url(saved: str | None, stream_url: str, where: str) -> None:
    if saved is not None and saved != stream_url:
        raise ValueError(f"{where} holds the state of {saved}, not of {stream_url}")


class FileStateCheckpoint:
    """Offset and state in one JSON file (see the module docstring)."""

    def __init__(self, path: str | Path, *, interval: float = 1.0) -> None:
        self.path = Path(path)
        self.interval = interval
        self._last_save = 0.0

    def load(self, stream_url: str) -> tuple[str, dict[str, dict[str, Any]]] | None:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        _check_url(data.get("stream"), stream_url, str(self.path))
        return data["offset"], data["collections"]

    def save(self, stream_url: str, core: StateCore, batch: AppliedBatch | None) -> None:
        now = time.monotonic()
        if batch is not None and now - self._last_save < self.interval:
            return
        with core.lock:   # offset and rows from the same moment
            body = orjson.dumps({"stream": stream_url, "offset": core.offset,
                                 "collections": core.dump_rows()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._last_save = now

    def close(self) -> None:
        pass


class SQLiteStateCheckpoint:
    """Offset and rows in SQLite, one transaction per applied batch."""

    def __init__(self, path: str | Path, *, on_batch: BatchHook | None = None) -> None:
        self.path = str(path)
        self.on_batch = on_batch
        # check_same_thread=False: the sync StreamDB saves from its follower thread.
        self.connection = sqlite3.connect(self.path, isolation_level=None,
                                          check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript("""
            CREATE TABLE IF NOT EXISTS state_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS state_rows (
                collection TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (collection, key));
        """)

    def load(self, stream_url: str) -> tuple[str, dict[str, dict[str, Any]]] | None:
        meta = dict(self.connection.execute("SELECT name, value FROM state_meta"))
        if "offset" not in meta:
            return None
        _check_url(meta.get("stream"), stream_url, self.path)
        rows: dict[str, dict[str, Any]] = {}
        for collection, key, value in self.connection.execute(
                "SELECT collection, key, value FROM state_rows ORDER BY rowid"):
            rows.setdefault(collection, {})[key] = orjson.loads(value)
        return meta["offset"], rows

    def save(self, stream_url: str, core: StateCore, batch: AppliedBatch | None) -> None:
        if batch is None:
            return   # every batch is already saved
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            for change in batch.changes:
                if change.operation == "delete":
                    conn.execute("DELETE FROM state_rows WHERE collection = ? AND key = ?",
                                 (change.collection, change.key))
                else:
                    dump = core.tables[change.collection].collection.dump(change.value)
                    conn.execute(
                        "INSERT INTO state_rows (collection, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
                        (change.collection, change.key, orjson.dumps(dump)))
            conn.executemany("INSERT OR REPLACE INTO state_meta (name, value) VALUES (?, ?)",
                             [("offset", core.offset), ("stream", stream_url)])
            if self.on_batch is not None:
                self.on_batch(batch, conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.connection.close()


def open_checkpoint(target: str | Path | StateCheckpoint | None) -> StateCheckpoint | None:
    """A path ending in .db / .sqlite / .sqlite3 is SQLite, another path a JSON file."""
    if target is None or not isinstance(target, str | Path):
        return target
    if Path(target).suffix in (".db", ".sqlite", ".sqlite3"):
        return SQLiteStateCheckpoint(target)
    return FileStateCheckpoint(target)
