"""The SQLite backend's writer thread: batches, one transaction each, and reclaiming.

``Writer`` is mixed into ``SQLiteStore``; everything here runs on the writer
thread, which owns the writer connection and the writer's committed view
(``_w_by_id``/``_w_by_path``). See the package docstring for the commit path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import ChainMap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...protocol.errors import ProtocolError
from ...protocol.state import (
    AppendDecision,
    AppendRequest,
    CreateRequest,
    StreamState,
)
from ..plans import plan_create, plan_delete
from ..retention import trim_start
from .batch import MORE, Batch, insert_rows, storage_error
from .schema import state_row

log = logging.getLogger("duralog.sqlite")

#: Most operations one transaction takes; bounds the latency a batch adds.
MAX_BATCH_OPS = 4096
#: Most payload bytes one transaction takes (one op may exceed it on its own).
MAX_BATCH_BYTES = 32 << 20

#: Reclaiming space of deleted streams: record bytes removed per step, streams
#: finished per step, and pages given back to the file system per vacuum step.
GC_STEP_BYTES = 4 << 20
GC_STEP_STREAMS = 512
VACUUM_STEP_PAGES = 2048
#: Under constant load the queue is never idle: one reclaim step this often (s).
GC_BUSY_INTERVAL = 0.25
#: Quiet time (s) after the last operation before idle reclaiming starts.
GC_IDLE = 0.05
#: Room kept aside so that a DELETE can be written on a full disk (it frees space).
RESERVE_BYTES = 8 << 20
RESERVE_NAME = "duralog.reserve"

# Operation kinds on the writer's queue.
APPEND, CREATE, DELETE, EXPIRE, ACCESS, PRODUCERS, TRIM, STOP = range(8)


class Writer:
    """The writer-thread half of SQLiteStore."""

    if TYPE_CHECKING:
        _con: sqlite3.Connection | None
        _queue: queue.SimpleQueue[tuple[Any, ...]]
        _loop: asyncio.AbstractEventLoop | None
        _w_by_id: dict[int, StreamState]
        _w_by_path: dict[str, StreamState]
        _next_id: int
        _gc_pending: bool
        _gc_retry_at: float
        data_dir: Path
        registry: str | None
        counters: dict[str, int]
        commit_observer: Callable[[float, int], None] | None
        _writer: threading.Thread | None

        def _publish(self, *args: Any) -> None: ...

    def _run_writer(self) -> None:
        q = self._queue
        last_gc = last_op = time.monotonic()
        while True:
            if self._gc_pending:
                # Idle with space to reclaim: reclaim steps back to back until an
                # operation arrives (each step is one short transaction). Requests
                # that keep coming (a burst of deletes) go first: the queue must
                # have been quiet for GC_IDLE before a step. After a failed step,
                # wait a second.
                now = time.monotonic()
                wait = max(self._gc_retry_at - now, last_op + GC_IDLE - now)
                try:
                    first = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                except queue.Empty:
                    self._collect_garbage()
                    continue
            else:
                first = q.get()
            last_op = time.monotonic()
            ops = [first]
            nbytes = 0
            stop = first[0] == STOP
            while not stop and len(ops) < MAX_BATCH_OPS and nbytes < MAX_BATCH_BYTES:
                try:
                    op = q.get_nowait()
                except queue.Empty:
                    break
                ops.append(op)
                if op[0] == APPEND:
                    nbytes += len(op[2].payload)
                elif op[0] == STOP:
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
            if self._gc_pending and time.monotonic() - last_gc > GC_BUSY_INTERVAL:
                # Under constant load the queue is never idle: reclaim a step anyway.
                self._collect_garbage()
                last_gc = time.monotonic()

    def _run_batch(self, ops: list[tuple[Any, ...]], split_on_error: bool = True) -> None:
        now = time.time()
        batch = Batch(self._w_by_id, self._w_by_path, self._next_id, now, self.registry)
        expired: list[int] = []
        try:
            for op in ops:
                kind = op[0]
                try:
                    if kind == APPEND:
                        value: Any = self._do_append(batch, op[1], op[2], now)
                    elif kind == CREATE:
                        value = self._do_create(batch, op[1], *op[2], now)
                    elif kind == DELETE:
                        state = batch.live(op[1], now)
                        batch.apply(plan_delete(batch.by_id, state))
                        value = None
                    elif kind == EXPIRE:
                        expired.append(op[1])
                        state = batch.by_id(op[1])
                        if state is not None and not state.soft_deleted and state.is_expired(now):
                            batch.expire(state)
                        value = None
                    elif kind == ACCESS:
                        for stream_id, last_access in op[1]:
                            batch.access[stream_id] = last_access
                        value = None
                    elif kind == PRODUCERS:
                        value = self._drop_producers(op[1])
                    elif kind == TRIM:
                        for stream_id in op[1]:
                            state = batch.by_id(stream_id)
                            if state is not None and not state.soft_deleted:
                                self._trim(batch, state)
                        value = None
                    else:  # STOP
                        value = None
                except ProtocolError as err:
                    batch.results.append((op[3], None, err))
                    continue
                batch.results.append((op[3], value, None))
            for state in list(batch.states.values()):
                if state.retention_bytes is not None and not state.soft_deleted:
                    self._trim(batch, state)  # retention by size, after this batch's appends
            # A batch of nothing but unsynced appends (the proxy's body batches) commits
            # without the fsync; any other operation in it makes it a synced commit,
            # which also flushes every unsynced commit before it (the WAL is in order).
            self._commit(batch, sync=not all(op[0] == APPEND and not op[2].sync
                                             for op in ops))
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
            elif (ops[0][0] in (DELETE, EXPIRE) and storage_error(exc).status == 507
                  and self._release_reserve()):
                # A delete frees space, so it must work on a full disk: the reserve
                # file gives its transaction (and the reclaiming after it) room.
                self._run_batch(ops, split_on_error=False)
                return
            err = storage_error(exc) if isinstance(exc, sqlite3.Error) else ProtocolError(
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
            producers = state.producers
            if isinstance(producers, ChainMap):
                # Fold the batch's producer changes into the shared table (O(changes)).
                table = producers.maps[1]
                table.update(producers.maps[0])
                state.producers = table
            self._w_by_id[state.id] = state
            self._w_by_path[state.path] = state
        if batch.dropped:
            self._gc_pending = True
        self._hand_over(batch, batch.results, expired)

    def _hand_over(self, batch: Batch | None, results: list[Any], expired: list[int]) -> None:
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

    def _do_append(self, batch: Batch, path: str, req: AppendRequest, now: float
                   ) -> tuple[AppendDecision, StreamState]:
        return batch.append(batch.live(path, now), req, now)

    def _do_create(self, batch: Batch, path: str, req: CreateRequest, payload: bytes | None,
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

    def _commit(self, batch: Batch, sync: bool = True) -> None:
        con = self._con
        assert con is not None
        dropped = batch.dropped
        states = batch.states
        if not (states or dropped or batch.access) and batch.next_id == self._next_id:
            return  # nothing to write (refusals, duplicates): nothing to wait for
        started = time.perf_counter()
        if not sync:
            # WAL mode: NORMAL writes the commit to the WAL without an fsync (readable,
            # safe from a crash of this process, not from a power cut). The connection
            # goes back to FULL (schema.py) after the commit, or in _rollback.
            con.execute("PRAGMA synchronous=NORMAL")
        self._write_batch(con, batch)
        if not sync:
            con.execute("PRAGMA synchronous=FULL")
        self.counters["commits"] += 1
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - started, len(batch.results))

    def _write_batch(self, con: sqlite3.Connection, batch: Batch) -> None:
        """The batch's rows in one transaction (the caller rolls back on an error)."""
        dropped = batch.dropped
        states = batch.states
        con.execute("BEGIN IMMEDIATE")
        records = batch.records
        if dropped and records:
            records = [r for r in records if r[0] not in dropped]
        for stream_id, start in batch.trims.items():
            trimmed = states.get(stream_id)
            if trimmed is None or trimmed.refcount:
                continue  # retention: forks keep what they reference
            con.execute("DELETE FROM records WHERE stream = ? AND end_pos <= ?",
                        (stream_id, start))
            records = [r for r in records if r[0] != stream_id or r[1] > start]
        if records:
            insert_rows(con, "INSERT INTO records", 6, records, blob=3)
        for stream_id in dropped:
            # The stream row goes now; its records are removed in the background
            # (ids are never reused, so leftover records are unreachable).
            con.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
            con.execute("DELETE FROM producers WHERE stream = ?", (stream_id,))
            con.execute("INSERT OR IGNORE INTO garbage VALUES (?)", (stream_id,))
        if states:
            insert_rows(con, "INSERT OR REPLACE INTO streams", 21,
                         [state_row(s) for s in states.values()])
        if batch.producers:
            rows = []
            for stream_id, producer_id in batch.producers:
                state = states.get(stream_id)
                if state is None:
                    continue
                p = state.producers[producer_id]
                rows.append((stream_id, producer_id, p.epoch, p.last_seq, p.last_used))
            insert_rows(con, "INSERT OR REPLACE INTO producers", 5, rows)
        if batch.access:
            con.executemany("UPDATE streams SET last_access = max(last_access, ?) WHERE id = ?",
                            [(t, i) for i, t in batch.access.items() if i not in dropped])
        if batch.next_id != self._next_id:
            con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(batch.next_id),))
        con.execute("COMMIT")

    def _rollback(self) -> None:
        con = self._con
        if con is not None and con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        if con is not None:
            with contextlib.suppress(sqlite3.Error):
                con.execute("PRAGMA synchronous=FULL")  # after an unsynced batch failed

    def _collect_garbage(self) -> None:
        """One reclaim step: remove records of dropped streams (up to GC_STEP_BYTES of
        positions and GC_STEP_STREAMS streams per transaction), then give free
        pages back to the file system (incremental vacuum), then restore the reserve."""
        con = self._con
        assert con is not None
        try:
            ids = [r[0] for r in con.execute("SELECT stream FROM garbage LIMIT ?",
                                             (GC_STEP_STREAMS,))]
            if ids:
                budget = GC_STEP_BYTES
                con.execute("BEGIN IMMEDIATE")
                for stream_id in ids:
                    first, last = con.execute(
                        "SELECT min(end_pos), max(end_pos) FROM records WHERE stream = ?",
                        (stream_id,)).fetchone()
                    if first is not None:
                        # Bytes held: positions from the first record's start to the end
                        # (length() reads a row's header, not its overflow pages).
                        (head,) = con.execute(
                            "SELECT length(data) FROM records WHERE stream = ? AND end_pos = ?",
                            (stream_id, first)).fetchone()
                        size = last - first + head
                        if size > budget:
                            con.execute("DELETE FROM records WHERE stream = ? AND end_pos <= ?",
                                        (stream_id, first + budget))
                            break
                        con.execute("DELETE FROM records WHERE stream = ?", (stream_id,))
                        budget -= size
                    con.execute("DELETE FROM garbage WHERE stream = ?", (stream_id,))
                    self.counters["streams_reclaimed"] += 1
                    if budget <= 0:
                        break
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
            self._make_reserve()
        except sqlite3.Error as exc:
            self._rollback()
            log.warning("reclaiming space failed (will retry): %s", exc)
            self._gc_retry_at = time.monotonic() + 1.0

    # -- the reserve: room for a DELETE on a full disk ---------------------------------
    def _make_reserve(self) -> None:
        path = self.data_dir / RESERVE_NAME
        if path.exists():
            return
        tmp = path.with_name(RESERVE_NAME + ".new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            # No room even for the reserve: try again after the next reclaim.
            tmp.unlink(missing_ok=True)
            log.warning("cannot keep %s (%s); a DELETE on a full disk may fail", path, exc)

    def _release_reserve(self) -> bool:
        """Give the reserve's room back to the file system; False if there was none."""
        path = self.data_dir / RESERVE_NAME
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk full: released %s so a delete can free space", path)
        self._gc_pending = True  # recreate it once reclaiming is done
        return True

    def _trim(self, batch: Batch, state: StreamState) -> None:
        """Retention (store/retention.py): move the stream's start past dropped appends.

        The appends are the committed ones (from disk, from the start on) and then
        this batch's; the scan stops at the first append that stays.
        """
        con = self._con
        assert con is not None
        cur = con.execute("SELECT end_pos, ts FROM records WHERE stream = ? AND end_pos > ? "
                          "AND kind & ? = 0 ORDER BY end_pos", (state.id, state.start, MORE))
        pending = ((r[1], r[5]) for r in batch.records if r[0] == state.id and not r[2] & MORE)
        try:
            new = trim_start(state, itertools.chain(cur, pending), batch.now)
        finally:
            cur.close()
        if new > state.start:
            shadow = batch.shadow(state)
            shadow.start = new
            batch.trims[state.id] = new

    def _drop_producers(self, cutoff: float) -> int:
        """5.2.1: drop producer state last used before ``cutoff``, in its own transaction.

        Runs between batches, so no shadow holds a producer overlay. The index on
        ``last_used`` makes this cost O(expired), not O(producers).
        """
        con = self._con
        assert con is not None
        rows = con.execute("SELECT stream, producer FROM producers WHERE last_used < ?",
                           (cutoff,)).fetchall()
        if not rows:
            return 0
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("DELETE FROM producers WHERE last_used < ?", (cutoff,))
            con.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        for stream_id, producer in rows:
            state = self._w_by_id.get(stream_id)
            if state is not None:
                p = state.producers.get(producer)
                if p is not None and p.last_used < cutoff:
                    del state.producers[producer]
        return len(rows)
