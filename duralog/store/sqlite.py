"""The durable backend: one SQLite database in WAL mode, written by one thread.

How an append reaches the disk (docs/storage.md has the long version):

1. ``append()`` runs on the event loop. It checks that the stream exists, puts
   an operation on the writer's queue and awaits a future.
2. The writer thread takes every operation waiting in the queue (a batch) and
   evaluates each against *shadow copies* of the committed states, with the
   same functions the memory store uses (protocol.state.decide_append and
   apply_append, store.plans.plan_create and plan_delete), so both backends
   give the same answers. Operations run in queue order, which serializes
   each (stream, producer) pair as PROTOCOL.md 5.2.1 asks.
3. The whole batch is written in ONE transaction: records, stream rows (tail,
   closure, Stream-Seq, expiry), producer state and the id counter. With
   ``synchronous=FULL`` the commit fsyncs the WAL once for the batch (group
   commit). Data and producer state therefore move together (PROTOCOL.md
   5.2.1, atomicity): after a crash a retried producer batch is a duplicate,
   never a second copy.
4. After the commit the writer hands the new states to the event loop
   (``call_soon_threadsafe``), which swaps them in, appends the new records to
   the tail cache, resolves the futures and wakes live readers. Readers
   therefore only ever see committed data, and an acknowledgement means the
   bytes are on disk.

If the transaction fails (disk full, I/O error) it is rolled back, the shadows
are dropped, and the batch's operations are retried one per transaction so
that only those that cannot be written fail (507 or 503). Reads keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from ..protocol.errors import ProtocolError
from ..protocol.state import (
    AppendDecision,
    AppendRequest,
    CreateRequest,
    ProducerState,
    StreamState,
    apply_append,
    decide_append,
)
from .base import Store, scan_records
from .lock import DirLock
from .plans import Plan, plan_create, plan_delete

log = logging.getLogger("duralog.sqlite")

DB_NAME = "duralog.sqlite3"
FORMAT_VERSION = "1"

#: Appends larger than this are stored as several rows ("pieces"), so a read of
#: a slice of a large byte append loads only the pieces it needs.
PIECE = 256 << 10
#: Record kinds: a piece that starts an append, and one that continues into the next row.
HEAD = 1
MORE = 2

#: Most operations one transaction takes; bounds the latency a batch adds.
MAX_BATCH_OPS = 4096
#: Most payload bytes one transaction takes (one op may exceed it on its own).
MAX_BATCH_BYTES = 32 << 20

#: The tail cache: recent records of each stream, so live readers do not read disk.
TAIL_CACHE_STREAM = 256 << 10  # per stream
TAIL_CACHE_TOTAL = 64 << 20  # all streams together (least recently written go first)

#: Sliding-TTL last-access times are written at most this often (seconds); a
#: crash may lose at most about this much of a stream's idle clock.
ACCESS_FLUSH_INTERVAL = 1.0

#: Reclaiming space of deleted streams: bytes of records removed per step, and
#: pages given back to the file system per step of incremental vacuum.
GC_STEP_BYTES = 4 << 20
VACUUM_STEP_PAGES = 2048

READER_THREADS = 4

_SCHEMA = """
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
    soft_deleted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS producers (
    stream INTEGER NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, producer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    stream INTEGER NOT NULL,
    end_pos INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream, end_pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (
    stream INTEGER PRIMARY KEY
);
"""

#: Rows per multi-row INSERT, at most (18 columns x 512 stays under SQLite's 32766 variables).
_MAX_ROWS_PER_INSERT = 512

# Operation kinds on the writer's queue.
_APPEND, _CREATE, _DELETE, _EXPIRE, _ACCESS, _STOP = range(6)


def _row(s: StreamState) -> tuple[Any, ...]:
    closed_by = orjson.dumps(s.closed_by).decode() if s.closed_by is not None else None
    return (s.id, s.path, s.content_type, s.created_at, s.tail, s.ttl, s.expires_at,
            s.expires_ts, s.last_access, int(s.closed), closed_by, s.stream_seq, s.source_id,
            s.forked_from, s.fork_pos, s.fork_sub, s.refcount, int(s.soft_deleted))


def _state_from_row(r: tuple[Any, ...]) -> StreamState:
    closed_by = tuple(orjson.loads(r[10])) if r[10] is not None else None
    return StreamState(
        id=r[0], path=r[1], content_type=r[2], created_at=r[3], tail=r[4], ttl=r[5],
        expires_at=r[6], expires_ts=r[7], last_access=r[8], closed=bool(r[9]),
        closed_by=closed_by,  # type: ignore[arg-type]
        stream_seq=r[11], source_id=r[12], forked_from=r[13], fork_pos=r[14],
        fork_sub=r[15], refcount=r[16], soft_deleted=bool(r[17]))


def _insert_rows(con: sqlite3.Connection, head: str, width: int,
                 rows: list[tuple[Any, ...]]) -> None:
    """Insert rows with as few statements as possible.

    ``executemany`` steps once per row, and the sqlite3 module releases the GIL
    around every step; each release lets the busy event loop take the GIL, and
    the writer then waits a switch interval to get it back. One multi-row
    INSERT per power of two keeps that to about log2(rows) waits per batch,
    while the statements stay few enough to be cached.
    """
    i, n = 0, len(rows)
    while i < n:
        k = min(_MAX_ROWS_PER_INSERT, 1 << ((n - i).bit_length() - 1))
        sql = _SQL_CACHE.get((head, k))
        if sql is None:
            group = f"({', '.join('?' * width)})"
            sql = _SQL_CACHE[head, k] = f"{head} VALUES {', '.join([group] * k)}"
        con.execute(sql, [x for row in rows[i:i + k] for x in row])
        i += k


_SQL_CACHE: dict[tuple[str, int], str] = {}


def _storage_error(exc: BaseException) -> ProtocolError:
    """A failed write, as the one-line 5xx the affected requests get."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == getattr(sqlite3, "SQLITE_FULL", 13):
        return ProtocolError(507, "insufficient storage: the disk or database is full")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ProtocolError(503, f"storage error, nothing was written: {reason}")


class _Tail:
    """One stream's most recent whole appends: every record with end > ``start``."""

    __slots__ = ("datas", "ends", "size", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.size = 0


class _Batch:
    """One transaction's view: shadow copies over the writer's committed states."""

    __slots__ = (
        "access",
        "committed_by_id",
        "committed_by_path",
        "dropped",
        "nbytes",
        "next_id",
        "paths",
        "producers",
        "records",
        "removed",
        "results",
        "states",
        "tails",
    )

    def __init__(self, by_id: dict[int, StreamState], by_path: dict[str, StreamState],
                 next_id: int) -> None:
        self.committed_by_id = by_id
        self.committed_by_path = by_path
        self.states: dict[int, StreamState] = {}  # shadows changed in this batch
        self.paths: dict[str, StreamState | None] = {}  # path overlay; None: removed
        self.dropped: dict[int, StreamState] = {}
        self.records: list[tuple[int, int, int, bytes]] = []  # (stream, end, kind, data)
        self.tails: list[tuple[int, int, bytes | None]] = []  # for the cache; None: reset
        self.producers: set[tuple[int, str]] = set()
        self.access: dict[int, float] = {}
        self.removed: list[StreamState] = []  # expired streams, for Store._removed
        self.results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]] = []
        self.next_id = next_id
        self.nbytes = 0

    # -- lookups through the overlay ------------------------------------------
    def by_path(self, path: str) -> StreamState | None:
        if path in self.paths:
            return self.paths[path]
        return self.committed_by_path.get(path)

    def by_id(self, stream_id: int) -> StreamState | None:
        if stream_id in self.dropped:
            return None
        state = self.states.get(stream_id)
        return state if state is not None else self.committed_by_id.get(stream_id)

    def shadow(self, state: StreamState) -> StreamState:
        """The batch's private, mutable copy of ``state``."""
        mine = self.states.get(state.id)
        if mine is not None:
            return mine
        mine = state.copy()
        self.states[mine.id] = mine
        self.paths[mine.path] = mine
        return mine

    # -- changes ----------------------------------------------------------------
    def add_payload(self, stream_id: int, end: int, payload: bytes) -> None:
        n = len(payload)
        self.nbytes += n
        start = end - n
        if n <= PIECE:
            self.records.append((stream_id, end, HEAD, payload))
            self.tails.append((stream_id, end, payload))
            return
        view = memoryview(payload)
        for off in range(0, n, PIECE):
            piece = bytes(view[off:off + PIECE])
            kind = (HEAD if off == 0 else 0) | (MORE if off + PIECE < n else 0)
            self.records.append((stream_id, start + off + len(piece), kind, piece))
        self.tails.append((stream_id, end, None))  # too big to cache: the cache restarts after it

    def apply(self, plan: Plan) -> None:
        """Apply a create/delete plan (store.plans) to the overlay."""
        for state in plan.states:
            self.states[state.id] = state
            self.paths[state.path] = state
        for stream_id, end, data in plan.records:
            self.add_payload(stream_id, end, data)
        for state in plan.dropped:
            self.dropped[state.id] = state
            self.states.pop(state.id, None)
            current = self.by_path(state.path)
            if current is not None and current.id == state.id:
                self.paths[state.path] = None

    def get(self, path: str, now: float) -> StreamState | None:
        """Store.get inside the batch: an expired stream is removed first (4)."""
        state = self.by_path(path)
        if state is not None and not state.soft_deleted and state.is_expired(now):
            self.expire(state)
            return self.by_path(path) if state.refcount else None
        return state

    def expire(self, state: StreamState) -> None:
        self.apply(plan_delete(self.by_id, state))
        self.removed.append(state)

    def live(self, path: str, now: float) -> StreamState:
        state = self.get(path, now)
        if state is None:
            raise ProtocolError(404, "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "stream was deleted")
        return state


class SQLiteStore(Store):
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
        self._tails: OrderedDict[int, _Tail] = OrderedDict()
        self._tail_bytes = 0
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
        self.counters = {"batches": 0, "ops": 0, "commits": 0}
        # One owner per data directory (store/lock.py).
        self._dir_lock = DirLock(self.data_dir)
        # Called on the writer thread after each commit with (seconds, operations);
        # the server's metrics hook in here (server/observe.py).
        self.commit_observer: Callable[[float, int], None] | None = None

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
        self._queue.put((_STOP, None, None, fut))
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
        con.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit fsyncs the WAL, so an acknowledged append survives a
        # power cut, not only a process crash.
        con.execute("PRAGMA synchronous=FULL")
        return con

    def _open_and_load(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                              timeout=30.0, cached_statements=256)
        # Incremental vacuum can only be chosen before the first table exists.
        con.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch to WAL mode ({mode})")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache for the writer
        con.execute("PRAGMA journal_size_limit=67108864")
        if self._max_page_count is not None:
            con.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
        con.executescript(_SCHEMA)
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if "format" in meta and meta["format"] != FORMAT_VERSION:
            raise RuntimeError(f"{self.path}: unknown storage format {meta['format']!r}")
        if "instance_tag" not in meta:
            meta = {"format": FORMAT_VERSION, "instance_tag": secrets.token_hex(4),
                    "next_id": "1"}
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            con.execute("COMMIT")
        self.instance_tag = meta["instance_tag"]
        self._next_id = int(meta["next_id"])
        for row in con.execute("SELECT * FROM streams"):
            state = _state_from_row(row)
            self._w_by_id[state.id] = state
            self._w_by_path[state.path] = state
        for stream_id, producer, epoch, last_seq in con.execute("SELECT * FROM producers"):
            state = self._w_by_id.get(stream_id)
            if state is not None:
                state.producers[producer] = ProducerState(epoch, last_seq)
        self._by_id = dict(self._w_by_id)
        self._by_path = dict(self._w_by_path)
        self._gc_pending = con.execute("SELECT 1 FROM garbage LIMIT 1").fetchone() is not None
        return con

    # -- state (event loop side) -------------------------------------------------
    def get(self, path: str) -> StreamState | None:
        # 4: an expired stream is gone at once; its removal is committed by the
        # writer (queued here), exactly as the memory store's get() would leave it.
        state = self._by_path.get(path)
        if state is not None and not state.soft_deleted and state.is_expired(time.time()):
            self._expire(state)
            if not state.refcount:
                return None
            marked = state.copy()
            marked.soft_deleted = True
            return marked
        return state

    def touch(self, state: StreamState) -> None:
        if state.ttl is not None:
            state.last_access = time.time()
            self._touched.add(state.id)

    def _expire(self, state: StreamState) -> None:
        if state.id in self._expiring or not self._open:
            return
        self._expiring.add(state.id)
        self._queue.put((_EXPIRE, state.id, None, None))

    async def sweep_expired(self) -> int:
        """4: remove every expired stream in the background; returns how many."""
        now = time.time()
        expired = [s for s in list(self._by_path.values())
                   if not s.soft_deleted and s.is_expired(now) and s.id not in self._expiring]
        if not expired or not self._open:
            return 0
        futs = []
        for state in expired:
            self._expiring.add(state.id)
            fut = asyncio.get_running_loop().create_future()
            self._queue.put((_EXPIRE, state.id, None, fut))
            futs.append(fut)
        await asyncio.gather(*futs, return_exceptions=True)
        return len(expired)

    def _queue_access(self) -> None:
        """Persist sliding-TTL clocks that reads moved (lazily, see ACCESS_FLUSH_INTERVAL)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        items = [(s.id, s.last_access) for i in touched if (s := self._by_id.get(i)) is not None]
        if items:
            self._queue.put((_ACCESS, items, None, None))

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
        return await self._submit(_CREATE, path, (req, payload, prefix))

    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        self._live(path)  # fail fast; the writer checks again against committed state
        return await self._submit(_APPEND, path, req)

    async def delete(self, path: str) -> None:
        self._live(path)
        await self._submit(_DELETE, path, None)

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
            tail = self._tails.pop(state.id, None)
            if tail is not None:
                self._tail_bytes -= tail.size
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
        cache = self._tails
        for stream_id, end, data in tails:
            tail = cache.get(stream_id)
            if data is None:
                if tail is not None:
                    self._tail_bytes -= tail.size
                cache[stream_id] = _Tail(end)
                continue
            if tail is None:
                tail = cache[stream_id] = _Tail(end - len(data))
            else:
                cache.move_to_end(stream_id)
            tail.ends.append(end)
            tail.datas.append(data)
            tail.size += len(data)
            self._tail_bytes += len(data)
            if tail.size > TAIL_CACHE_STREAM:
                # Drop the older half at once, so trimming costs O(1) per append.
                keep = TAIL_CACHE_STREAM // 2
                size, i = tail.size, 0
                while size > keep and i < len(tail.datas) - 1:
                    size -= len(tail.datas[i])
                    i += 1
                if i == 0:
                    continue
                tail.start = tail.ends[i - 1]
                self._tail_bytes -= tail.size - size
                tail.size = size
                del tail.ends[:i]
                del tail.datas[:i]
        while self._tail_bytes > TAIL_CACHE_TOTAL and cache:
            _, evicted = cache.popitem(last=False)
            self._tail_bytes -= evicted.size

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
        """Records with end in (after, hi], read in bounded steps (reader thread)."""
        con = self._reader()
        cur = con.execute("SELECT end_pos, kind, data FROM records "
                          "WHERE stream = ? AND end_pos > ? AND end_pos <= ? ORDER BY end_pos",
                          (stream_id, after, hi))
        out: list[tuple[int, bytes]] = []
        full = False
        try:
            if whole:
                # Reassemble whole appends; pieces of an append that began before
                # ``after`` are skipped, as the base read skips such records.
                parts: list[bytes] | None = None
                for end, kind, data in cur:
                    if kind & HEAD:
                        parts = [data]
                    elif parts is None:
                        continue
                    else:
                        parts.append(data)
                    if not kind & MORE:
                        joined = parts[0] if len(parts) == 1 else b"".join(parts)
                        parts = None
                        out.append((end - len(joined), joined))
                        budget -= len(joined)
                        if budget <= 0:
                            full = True
                            break
            else:
                for end, _kind, data in cur:
                    out.append((end - len(data), data))
                    budget -= len(data)
                    if budget <= 0:
                        full = True
                        break
        finally:
            cur.close()
        return out, full

    # -- the writer thread -----------------------------------------------------------
    def _run_writer(self) -> None:
        q = self._queue
        last_gc = time.monotonic()
        while True:
            try:
                first = q.get(timeout=0.2) if self._gc_pending else q.get()
            except queue.Empty:
                self._collect_garbage()
                continue
            ops = [first]
            nbytes = 0
            stop = first[0] == _STOP
            while not stop and len(ops) < MAX_BATCH_OPS and nbytes < MAX_BATCH_BYTES:
                try:
                    op = q.get_nowait()
                except queue.Empty:
                    break
                ops.append(op)
                if op[0] == _APPEND:
                    nbytes += len(op[2].payload)
                elif op[0] == _STOP:
                    stop = True
            self.counters["batches"] += 1
            self.counters["ops"] += len(ops)
            try:
                self._run_batch(ops)
            except BaseException:  # pragma: no cover - a bug; keep serving
                log.exception("writer batch failed")
                err = ProtocolError(503, "internal storage error, nothing was written")
                self._hand_over(None, [(op[3], None, err) for op in ops], [])
            if stop:
                return
            if self._gc_pending and time.monotonic() - last_gc > 1.0:
                # Under constant load the queue is never idle: reclaim a step anyway.
                self._collect_garbage()
                last_gc = time.monotonic()

    def _run_batch(self, ops: list[tuple[Any, ...]], split_on_error: bool = True) -> None:
        batch = _Batch(self._w_by_id, self._w_by_path, self._next_id)
        expired: list[int] = []
        now = time.time()
        try:
            for op in ops:
                kind = op[0]
                try:
                    if kind == _APPEND:
                        value: Any = self._do_append(batch, op[1], op[2], now)
                    elif kind == _CREATE:
                        value = self._do_create(batch, op[1], *op[2], now)
                    elif kind == _DELETE:
                        state = batch.live(op[1], now)
                        batch.apply(plan_delete(batch.by_id, state))
                        value = None
                    elif kind == _EXPIRE:
                        expired.append(op[1])
                        state = batch.by_id(op[1])
                        if state is not None and not state.soft_deleted and state.is_expired(now):
                            batch.expire(state)
                        value = None
                    elif kind == _ACCESS:
                        for stream_id, last_access in op[1]:
                            batch.access[stream_id] = last_access
                        value = None
                    else:  # _STOP
                        value = None
                except ProtocolError as err:
                    batch.results.append((op[3], None, err))
                    continue
                batch.results.append((op[3], value, None))
            self._commit(batch)
        except Exception as exc:
            self._rollback()
            if split_on_error and len(ops) > 1:
                # Retry one operation per transaction: only those that cannot be
                # written fail, and each sees the committed state of the others.
                for op in ops:
                    self._run_batch([op], split_on_error=False)
                return
            if not isinstance(exc, sqlite3.Error):
                log.exception("writer failed on %s", ops[0][0])
            err = _storage_error(exc) if isinstance(exc, sqlite3.Error) else ProtocolError(
                503, "internal storage error, nothing was written")
            self._hand_over(None, [(op[3], None, err) for op in ops], expired)
            return
        # Committed: the shadows become the writer's committed view, then the loop's.
        self._next_id = batch.next_id
        for state in batch.dropped.values():
            self._w_by_id.pop(state.id, None)
            current = self._w_by_path.get(state.path)
            if current is not None and current.id == state.id:
                del self._w_by_path[state.path]
        for state in batch.states.values():
            self._w_by_id[state.id] = state
            self._w_by_path[state.path] = state
        if batch.dropped:
            self._gc_pending = True
        self._hand_over(batch, batch.results, expired)

    def _hand_over(self, batch: _Batch | None, results: list[Any], expired: list[int]) -> None:
        loop = self._loop
        assert loop is not None
        states = list(batch.states.values()) if batch is not None else []
        dropped = list(batch.dropped.values()) if batch is not None else []
        tails = batch.tails if batch is not None else []
        if batch is not None and batch.dropped:
            tails = [t for t in tails if t[0] not in batch.dropped]
        # A closed loop (RuntimeError) means nobody is waiting for these answers.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._publish, states, dropped, tails, results, expired,
                                      batch.removed if batch is not None else [])

    def _do_append(self, batch: _Batch, path: str, req: AppendRequest, now: float
                   ) -> tuple[AppendDecision, StreamState]:
        state = batch.live(path, now)
        shadow = batch.shadow(state)
        decision = decide_append(shadow, req)
        if decision.write:
            if req.payload:
                batch.add_payload(shadow.id, shadow.tail + len(req.payload), req.payload)
            apply_append(shadow, req, decision, now)
            if req.producer is not None and decision.producer_state is not None:
                batch.producers.add((shadow.id, req.producer.id))
            # The shadow moves on with later appends of this batch; the answer
            # carries this append's own tail (the app prefers this header).
            decision.headers["stream-next-offset"] = shadow.next_offset
        return decision, shadow

    def _do_create(self, batch: _Batch, path: str, req: CreateRequest, payload: bytes | None,
                   prefix: bytes, now: float) -> tuple[StreamState, bool]:
        batch.get(path, now)  # an expired stream at this path goes first
        if req.forked_from is not None:
            batch.get(req.forked_from, now)
        plan = plan_create(batch.by_path, path, req, payload, prefix, batch.next_id, now)
        if plan.created:
            batch.next_id += 1
        batch.apply(plan)
        assert plan.result is not None
        return plan.result, plan.created

    def _commit(self, batch: _Batch) -> None:
        con = self._con
        assert con is not None
        dropped = batch.dropped
        states = batch.states
        if not (states or dropped or batch.access) and batch.next_id == self._next_id:
            return  # nothing to write (refusals, duplicates): nothing to wait for
        started = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        records = batch.records
        if dropped and records:
            records = [r for r in records if r[0] not in dropped]
        if records:
            _insert_rows(con, "INSERT INTO records", 4, records)
        for stream_id in dropped:
            # The stream row goes now; its records are removed in the background
            # (ids are never reused, so leftover records are unreachable).
            con.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
            con.execute("DELETE FROM producers WHERE stream = ?", (stream_id,))
            con.execute("INSERT OR IGNORE INTO garbage VALUES (?)", (stream_id,))
        if states:
            _insert_rows(con, "INSERT OR REPLACE INTO streams", 18,
                         [_row(s) for s in states.values()])
        if batch.producers:
            rows = []
            for stream_id, producer_id in batch.producers:
                state = states.get(stream_id)
                if state is None:
                    continue
                p = state.producers[producer_id]
                rows.append((stream_id, producer_id, p.epoch, p.last_seq))
            _insert_rows(con, "INSERT OR REPLACE INTO producers", 4, rows)
        if batch.access:
            con.executemany("UPDATE streams SET last_access = max(last_access, ?) WHERE id = ?",
                            [(t, i) for i, t in batch.access.items() if i not in dropped])
        if batch.next_id != self._next_id:
            con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(batch.next_id),))
        con.execute("COMMIT")
        self.counters["commits"] += 1
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - started, len(batch.results))

    def _rollback(self) -> None:
        con = self._con
        if con is not None and con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")

    def _collect_garbage(self) -> None:
        """Remove records of dropped streams a step at a time, then give space back."""
        con = self._con
        assert con is not None
        try:
            row = con.execute("SELECT stream FROM garbage LIMIT 1").fetchone()
            if row is not None:
                stream_id = row[0]
                first = con.execute("SELECT min(end_pos) FROM records WHERE stream = ?",
                                    (stream_id,)).fetchone()[0]
                con.execute("BEGIN IMMEDIATE")
                if first is None:
                    con.execute("DELETE FROM garbage WHERE stream = ?", (stream_id,))
                else:
                    con.execute("DELETE FROM records WHERE stream = ? AND end_pos <= ?",
                                (stream_id, first + GC_STEP_BYTES))
                con.execute("COMMIT")
                return
            free = con.execute("PRAGMA freelist_count").fetchone()[0]
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            if free >= 256 and free * 8 >= pages:
                # Incremental vacuum: hand free pages back to the file system, a
                # bounded step at a time so appends never wait long behind it.
                # executescript steps the pragma to completion; execute() would free
                # one page per call, since the pragma returns no rows.
                con.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
                return
            self._gc_pending = False
        except sqlite3.Error as exc:
            self._rollback()
            log.warning("reclaiming space failed (will retry): %s", exc)

    # -- introspection for tests and tools ------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {"streams": len(self._by_id), "tail_cache_bytes": self._tail_bytes,
                "tail_cache_streams": len(self._tails), **self.counters}

