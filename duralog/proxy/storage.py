"""Where a durable fetch remembers its streams: key -> {url, offset, content type}.

Three kinds, one small interface (``load`` / ``save`` / ``delete``):
``MemoryStorage`` (a dict, for one process), ``FileStorage`` (one JSON file,
replaced atomically) and ``SQLiteStorage`` (a table, safe across processes).
The offset saved is the one after the last chunk the caller finished with,
so a resumed read neither skips nor repeats bytes the caller handled.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol


class FetchStorage(Protocol):
    def load(self, key: str) -> dict[str, Any] | None: ...

    def save(self, key: str, record: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...


class MemoryStorage:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    def load(self, key: str) -> dict[str, Any] | None:
        record = self._data.get(key)
        return dict(record) if record is not None else None

    def save(self, key: str, record: dict[str, Any]) -> None:
        self._data[key] = dict(record)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)


class FileStorage:
    """All records in one JSON file, rewritten atomically (write, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".fetch-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._read().get(key)

    def save(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            data = self._read()
            data[key] = record
            self._write(data)

    def delete(self, key: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(key, None) is not None:
                self._write(data)


class SQLiteStorage:
    """One row per key in a SQLite file (WAL), safe for several processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self.connection = sqlite3.connect(str(path), check_same_thread=False,
                                          isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS duralog_fetch "
                                "(key TEXT PRIMARY KEY, record TEXT NOT NULL)")

    def load(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.connection.execute("SELECT record FROM duralog_fetch WHERE key = ?",
                                          (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def save(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self.connection.execute("INSERT OR REPLACE INTO duralog_fetch VALUES (?, ?)",
                                    (key, json.dumps(record)))

    def delete(self, key: str) -> None:
        with self._lock:
            self.connection.execute("DELETE FROM duralog_fetch WHERE key = ?", (key,))

    def close(self) -> None:
        self.connection.close()
