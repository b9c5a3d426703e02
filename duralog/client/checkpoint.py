"""Consumers that remember where they are, across process restarts.

PROTOCOL.md 8 asks clients to keep the offsets they reached so they can resume.
A ``CheckpointedConsumer`` reads from the offset saved in a ``Checkpoint`` (a
file, or a row in SQLite) and saves the offset after each chunk once the
caller is done with it. With ``auto_commit`` (the default), a chunk's offset
is saved when the caller asks for the next chunk, i.e. after the loop body
ran for it; leaving the loop with ``break`` or an exception does not save
the chunk being handled, so it is delivered again after a restart
(at-least-once). Call ``commit()`` to save explicitly, for example before a
``break``. ``SQLiteCheckpoint.connection`` lets the caller store its results
in the same transaction as the offset, which makes processing exactly-once.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol.offsets import START
from . import _core as C

if TYPE_CHECKING:
    from ._async import AsyncDurableStream
    from ._sync import DurableStream


class Checkpoint(Protocol):
    def load(self) -> str | None: ...

    def save(self, offset: str) -> None: ...


class FileCheckpoint:
    """The offset in a small text file, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> str | None:
        try:
            text = self.path.read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def save(self, offset: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(offset + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        except OSError:
            pass
        finally:
            os.close(dir_fd)


class SQLiteCheckpoint:
    """Named offsets in a SQLite table (``duralog_checkpoints``), one row per consumer."""

    def __init__(self, path: str | os.PathLike[str], name: str = "default") -> None:
        if not name:
            raise ValueError("checkpoint name must not be empty")
        self.name = name
        self.connection = sqlite3.connect(os.fspath(path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self.connection:
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS duralog_checkpoints ("
                " name TEXT PRIMARY KEY, offset TEXT NOT NULL)")

    def load(self) -> str | None:
        with self._lock:
            row = self.connection.execute(
                "SELECT offset FROM duralog_checkpoints WHERE name = ?", (self.name,)).fetchone()
        return row[0] if row else None

    def save(self, offset: str) -> None:
        """Save and commit, together with anything else pending on ``connection``."""
        with self._lock, self.connection:
            self.connection.execute(
                "INSERT INTO duralog_checkpoints (name, offset) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                (self.name, offset))

    def close(self) -> None:
        self.connection.close()


class _ConsumerBase:
    def __init__(self, checkpoint: Checkpoint, live: C.LiveMode, start: str,
                 auto_commit: bool) -> None:
        C.validate_read(start, live)
        if not hasattr(checkpoint, "load") or not hasattr(checkpoint, "save"):
            raise ValueError("checkpoint must have load() and save(offset)")
        self.checkpoint = checkpoint
        self.live = live
        self.start = start
        self.auto_commit = auto_commit
        self.delivered: str | None = None  # offset after the last chunk handed out
        self.committed: str | None = checkpoint.load()

    @property
    def resume_offset(self) -> str:
        return self.committed or self.start

    def commit(self, offset: str | None = None) -> None:
        """Save ``offset`` (default: the end of the last chunk handed out)."""
        target = offset or self.delivered
        if target is not None and target != self.committed:
            self.checkpoint.save(target)
            self.committed = target


class CheckpointedConsumer(_ConsumerBase):
    """Reads ``stream`` from its checkpoint; see the module docstring for commit rules."""

    def __init__(self, stream: DurableStream, checkpoint: Checkpoint, *,
                 live: C.LiveMode = None, start: str = START, auto_commit: bool = True) -> None:
        super().__init__(checkpoint, live, start, auto_commit)
        self.stream = stream

    def __iter__(self) -> Iterator[C.Chunk]:
        reader = self.stream.read(self.resume_offset, live=self.live)
        try:
            for chunk in reader:
                if self.auto_commit:
                    self.commit()  # the previous chunk was handled: the caller came back
                self.delivered = chunk.offset
                yield chunk
            if self.auto_commit:
                self.commit()
        finally:
            reader.close()

    def json_batches(self) -> Iterator[C.JsonBatch]:
        for chunk in self:
            yield C.JsonBatch(chunk.json(), chunk.offset, chunk.up_to_date, chunk.closed)

    def json_items(self) -> Iterator[Any]:
        for chunk in self:
            yield from chunk.json()


class AsyncCheckpointedConsumer(_ConsumerBase):
    """The asyncio twin of ``CheckpointedConsumer`` (checkpoint I/O stays blocking: it is
    one small write per chunk)."""

    def __init__(self, stream: AsyncDurableStream, checkpoint: Checkpoint, *,
                 live: C.LiveMode = None, start: str = START, auto_commit: bool = True) -> None:
        super().__init__(checkpoint, live, start, auto_commit)
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[C.Chunk]:
        reader = self.stream.read(self.resume_offset, live=self.live)
        try:
            async for chunk in reader:
                if self.auto_commit:
                    self.commit()
                self.delivered = chunk.offset
                yield chunk
            if self.auto_commit:
                self.commit()
        finally:
            await reader.aclose()

    async def json_batches(self) -> AsyncIterator[C.JsonBatch]:
        async for chunk in self:
            yield C.JsonBatch(chunk.json(), chunk.offset, chunk.up_to_date, chunk.closed)

    async def json_items(self) -> AsyncIterator[Any]:
        async for chunk in self:
            for item in chunk.json():
                yield item
