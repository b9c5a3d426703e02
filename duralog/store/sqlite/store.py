"""SQLiteStore: the event-loop side of the durable backend, and reads from disk.

The writer thread (writer.py) commits; this side queues operations, publishes
committed states, keeps the tail cache and reads older records from disk on a
pool of reader threads, verifying every record's checksum (schema.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...protocol.errors import ProtocolError
from ...protocol.offsets import format_offset
from ...protocol.state import AppendDecision, AppendRequest, CreateRequest, StreamState
from ..base import WriterQueued, scan_records
from ..lock import DirLock
from ..tails import TailCache
from .batch import HEAD, MORE
from .schema import DB_NAME, configure, load, open_database, record_checksum
from .writer import ACCESS, APPEND, CREATE, DELETE, EXPIRE, PRODUCERS, STOP, TRIM, Writer

log = logging.getLogger("duralog.sqlite")

#: Sliding-TTL last-access times are written at most this often (seconds); a
#: crash may lose at most about this much of a stream's idle clock.
ACCESS_FLUSH_INTERVAL = 1.0

READER_THREADS = 4


class CorruptRecord(Exception):
    """A record read from disk failed its checksum or could not be read."""

    def __init__(self, stream_id: int, start: int, reason: str) -> None:
        super().__init__(reason)
        self.stream_id = stream_id
        self.start = start
        self.reason = reason



class SQLiteStore(Writer, WriterQueued):
    """Streams in one SQLite file under ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str], *,
                 max_page_count: int | None = None) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self._max_page_count = max_page_count
        if self._max_page_count is None and os.environ.get("DURALOG_SQLITE_MAX_PAGES"):
            # A hard cap on the database size in 4 KiB pages; appends past it get 507.
            self._max_page_count = int(os.environ["DURALOG_SQLITE_MAX_PAGES"])
        # Published (committed) states; owned by the event loop thread.
        # The writer's committed view; owned by the writer thread. Both views share
        # the StreamState objects, which nobody mutates once committed (except
        # last_access, which only moves forward).
        self._w_by_path: dict[str, StreamState] = {}
        self._w_by_id: dict[int, StreamState] = {}
        self._next_id = 1
        self._tails = TailCache()
        self._touched: set[int] = set()
        self._expiring: set[int] = set()
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._con: sqlite3.Connection | None = None
        self._readers = threading.local()
        self._reader_cons: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._open = False
        self._gc_pending = False
        self._gc_retry_at = 0.0
        # One owner per data directory (store/lock.py).
        self._dir_lock = DirLock(self.data_dir)
        # Called on the writer thread after each commit with (seconds, operations);
        # the server's metrics hook in here (server/observe.py).
        self.commit_observer: Callable[[float, int], None] | None = None
        self.counters = {"batches": 0, "ops": 0, "commits": 0, "checksum_errors": 0,
                         "read_errors": 0, "producers_dropped": 0,
                         "streams_reclaimed": 0}

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        if self._open:
            return
        self._loop = asyncio.get_running_loop()
        self._dir_lock.acquire()
        try:
            self._con = await asyncio.to_thread(self._open_and_load)
        except sqlite3.Error as exc:
            self._dir_lock.release()
            # Opening may have to replay the WAL, which needs room on a full disk.
            raise RuntimeError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._dir_lock.release()
            raise
        self._pool = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="duralog-read")
        self._open = True
        self._writer = threading.Thread(target=self._run_writer, name="duralog-writer",
                                        daemon=True)
        self._writer.start()
        self._flusher = asyncio.create_task(self._flush_access_loop())
        repaired = await self._open_registry()
        if repaired:
            log.warning("%s: the registry disagreed with the streams; appended %d events",
                        self.path, repaired)

    async def stop(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._queue_access()
        fut = asyncio.get_running_loop().create_future()
        self._queue.put((STOP, None, None, fut))
        assert self._writer is not None
        await asyncio.to_thread(self._writer.join)
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True)
        with self._reader_lock:
            for con in self._reader_cons:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            self._reader_cons.clear()
        if self._con is not None:
            # The last connection to close checkpoints the WAL into the main file.
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None
        log.info("sqlite writer: %s", self.counters)
        self._dir_lock.release()
        await super().stop()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                              timeout=30.0)
        configure(con, self.path)
        return con

    def _open_and_load(self) -> sqlite3.Connection:
        con = open_database(self.path, self._max_page_count)
        try:
            meta, states = load(con, self.path)
            self._gc_pending = con.execute("SELECT 1 FROM garbage LIMIT 1").fetchone() is not None
        except BaseException:
            con.close()
            raise
        self._make_reserve()
        self.instance_tag = meta["instance_tag"]
        self._next_id = int(meta["next_id"])
        for state in states:
            self._w_by_id[state.id] = state
            self._w_by_path[state.path] = state
        self._by_id = dict(self._w_by_id)
        self._by_path = dict(self._w_by_path)
        return con

    # -- state (event loop side) -------------------------------------------------

    def _expire(self, state: StreamState) -> None:
        if state.id in self._expiring or not self._open:
            return
        self._expiring.add(state.id)
        self._queue.put((EXPIRE, state.id, None, None))

    async def sweep_expired(self) -> int:
        """4: remove every expired stream in the background; returns how many.

        Also trims streams with retention by age, and drops producer state
        unused for ``producer_ttl`` (5.2.1).
        """
        now = time.time()
        if not self._open:
            return 0
        aged = [s.id for s in list(self._by_id.values())
                if s.retention_seconds is not None and not s.soft_deleted]
        if aged:
            await self._submit(TRIM, aged, None)
        await self._maybe_sweep_producers(now)
        expired = [s for s in list(self._by_path.values())
                   if not s.soft_deleted and s.is_expired(now) and s.id not in self._expiring]
        if not expired or not self._open:
            return 0
        futs = []
        for state in expired:
            self._expiring.add(state.id)
            fut = asyncio.get_running_loop().create_future()
            self._queue.put((EXPIRE, state.id, None, fut))
            futs.append(fut)
        await asyncio.gather(*futs, return_exceptions=True)
        return len(expired)

    async def sweep_producers(self, cutoff: float) -> int:
        """5.2.1: drop producer state last used before ``cutoff`` (in the writer)."""
        dropped: int = await self._submit(PRODUCERS, cutoff, None)
        self.counters["producers_dropped"] += dropped
        return dropped

    def _queue_access(self) -> None:
        """Persist sliding-TTL clocks that reads moved (lazily, see ACCESS_FLUSH_INTERVAL)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        items = [(s.id, s.last_access) for i in touched if (s := self._by_id.get(i)) is not None]
        if items:
            self._queue.put((ACCESS, items, None, None))

    async def _flush_access_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_INTERVAL)
            self._queue_access()

    # -- writes (event loop side) -------------------------------------------------
    def _submit(self, kind: int, a: Any, b: Any) -> asyncio.Future[Any]:
        if not self._open:
            raise ProtocolError(503, "the store is not open (server starting or stopping)")
        assert self._loop is not None
        fut = self._loop.create_future()
        self._queue.put((kind, a, b, fut))
        return fut

    async def create(self, path: str, req: CreateRequest, payload: bytes | None
                     ) -> tuple[StreamState, bool]:
        prefix = await self.create_prefix(path, req)
        return await self._submit(CREATE, path, (req, payload, prefix))

    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        self._live(path)  # fail fast; the writer checks again against committed state
        return await self._submit(APPEND, path, req)

    async def delete(self, path: str) -> None:
        self._live(path)
        await self._submit(DELETE, path, None)

    def _live(self, path: str) -> StreamState:
        state = self.get(path)
        if state is None:
            raise ProtocolError(404, "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "stream was deleted")
        return state

    def _publish(self, states: list[StreamState], dropped: list[StreamState],
                 tails: list[tuple[int, int, bytes | None]],
                 results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]],
                 expired: list[int], removed: list[StreamState]) -> None:
        """On the event loop, after a commit: make the batch visible, then answer."""
        by_id, by_path = self._by_id, self._by_path
        changed: set[int] = set()
        for state in dropped:
            by_id.pop(state.id, None)
            current = by_path.get(state.path)
            if current is not None and current.id == state.id:
                del by_path[state.path]
            self._tails.drop(state.id)
            changed.add(state.id)
        for state in states:
            old = by_id.get(state.id)
            if old is not None and old.last_access > state.last_access:
                state.last_access = old.last_access  # a read touched it meanwhile
            by_id[state.id] = state
            by_path[state.path] = state
            changed.add(state.id)
        if tails:
            self._cache(tails)
        for stream_id in expired:
            self._expiring.discard(stream_id)
        for fut, value, error in results:
            if fut is None or fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
        notify = self.notifier.changed
        for stream_id in changed:
            notify(stream_id)
        if removed:
            self._removed(removed)  # 4: expiries are announced like deletes

    def _cache(self, tails: list[tuple[int, int, bytes | None]]) -> None:
        add = self._tails.add
        for stream_id, end, data in tails:
            add(stream_id, end, data)

    # -- reads ---------------------------------------------------------------------
    async def _read_records(self, stream_id: int, lo: int, hi: int, pos: int,
                            budget: int, whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        after = max(pos, lo)
        tail = self._tails.get(stream_id)
        if tail is not None and after >= tail.start:
            # Live readers near the tail: served from memory, no disk, no thread.
            return scan_records(tail.ends, tail.datas, after, hi, budget)
        if not self._open or self._pool is None:
            raise ProtocolError(503, "the store is not open (server starting or stopping)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._disk_read, stream_id, after, hi,
                                          budget, whole)

    def _reader(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._readers, "con", None)
        if con is None:
            con = self._connect()
            con.execute("PRAGMA query_only=1")
            self._readers.con = con
            with self._reader_lock:
                self._reader_cons.append(con)
        return con

    def _disk_read(self, stream_id: int, after: int, hi: int, budget: int,
                   whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        """Records with end in (after, hi], read in bounded steps (reader thread).

        Every row's checksum is verified; a record that fails is never served.
        """
        try:
            return self._disk_read_rows(stream_id, after, hi, budget, whole)
        except CorruptRecord as exc:
            raise self._corrupt(exc) from None
        except sqlite3.DatabaseError as exc:
            # A damaged page ("database disk image is malformed") and the like.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise self._corrupt(CorruptRecord(stream_id, after, f"unreadable: {reason}"),
                                "read_errors") from None

    def _corrupt(self, exc: CorruptRecord, counter: str = "checksum_errors") -> ProtocolError:
        state = self._by_id.get(exc.stream_id)
        name = state.path if state is not None else f"#{exc.stream_id}"
        text = (f"stored data of stream {name!r} at offset {format_offset(exc.start)} "
                f"{exc.reason}; nothing was served")
        log.error("%s (%s)", text, self.path)
        self.counters[counter] += 1
        return ProtocolError(500, text)

    def _disk_read_rows(self, stream_id: int, after: int, hi: int, budget: int,
                        whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        con = self._reader()
        cur = con.execute("SELECT end_pos, kind, data, checksum FROM records "
                          "WHERE stream = ? AND end_pos > ? AND end_pos <= ? ORDER BY end_pos",
                          (stream_id, after, hi))
        out: list[tuple[int, bytes]] = []
        full = False
        parts: list[bytes] | None = None
        try:
            for end, kind, data, checksum in cur:
                if (not isinstance(data, bytes)
                        or checksum != record_checksum(stream_id, end, kind, data)):
                    start = end - len(data) if isinstance(data, bytes) else end
                    raise CorruptRecord(stream_id, start, "failed its checksum")
                if whole:
                    # Reassemble whole appends; pieces of an append that began before
                    # ``after`` are skipped, as the base read skips such records.
                    if kind & HEAD:
                        parts = [data]
                    elif parts is None:
                        continue
                    else:
                        parts.append(data)
                    if kind & MORE:
                        continue
                    data = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts = None
                out.append((end - len(data), data))
                budget -= len(data)
                if budget <= 0:
                    full = True
                    break
        finally:
            cur.close()
        return out, full

    # -- introspection for tests and tools ------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {"streams": len(self._by_id), "tail_cache_bytes": self._tails.nbytes,
                "tail_cache_streams": len(self._tails.tails), **self.counters}

