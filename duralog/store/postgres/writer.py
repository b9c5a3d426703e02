"""Group commit: each node's writer task commits queued operations in shared transactions.

Operations (appends, creates, deletes, expiries, retention trims) queue on the
node; the writer task takes every operation waiting (a batch) and runs it in
ONE transaction:

1. lock the rows of every stream the batch names, with their fork sources
   and the registry, in id order (``SELECT ... FOR UPDATE``): concurrent
   batches on other nodes that touch the same streams wait here, and since
   every batch locks in the same order they cannot deadlock each other;
2. decide each operation against the locked rows (the database's truth, not
   this node's cache) with the functions every backend uses
   (protocol.state.decide_append/apply_append, store.plans) through the
   SQLite backend's ``Batch`` overlay, so all backends give the same answers;
3. write records (with checksums), stream rows, producer rows, the registry
   events, and a NOTIFY naming each changed stream, in one statement (one
   round trip; deletes and retention trims add theirs); then COMMIT.

Data, producer state, Stream-Seq, closure and the registry event thus commit
together (PROTOCOL.md 5.2.1), and appends to one stream through different
nodes serialize on its row: no gap, no duplicate. A batch that loses a race
(deadlock, a path created by another node meanwhile) runs again; one that
fails otherwise is retried one operation per transaction, so only what
cannot be written fails, with a one-line 503.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import ChainMap
from typing import TYPE_CHECKING, Any

import asyncpg

from ...protocol.errors import ProtocolError
from ...protocol.state import (
    AppendDecision,
    AppendRequest,
    CreateRequest,
    ProducerState,
    StreamState,
)
from ..base import StaleState
from ..plans import plan_create, plan_delete
from ..retention import trim_start
from ..sqlite.batch import MORE, Batch
from ..sqlite.schema import state_from_row, state_row
from .schema import CHANNEL, COLUMNS, RETRYABLE, is_connection_error, storage_error

log = logging.getLogger("duralog.postgres")

APPEND, CREATE, DELETE, EXPIRE, TRIM = range(5)

MAX_BATCH_OPS = 2048
MAX_BATCH_BYTES = 16 << 20
RETRIES = 8
#: NOTIFY payloads must stay under 8000 bytes.
NOTIFY_CHUNK = 7000

LOCK_SQL = f"""
WITH RECURSIVE chain(id, source_id) AS (
    SELECT id, source_id FROM streams WHERE path = ANY($1::text[]) OR id = ANY($2::bigint[])
    UNION
    SELECT s.id, s.source_id FROM streams s JOIN chain c ON s.id = c.source_id
)
SELECT {COLUMNS} FROM streams WHERE id IN (SELECT id FROM chain) ORDER BY id FOR UPDATE
"""
PRODUCERS_SQL = """
SELECT p.stream, p.producer, p.epoch, p.last_seq, p.last_used FROM producers p
JOIN unnest($1::bigint[], $2::text[]) AS w(stream, producer)
  ON p.stream = w.stream AND p.producer = w.producer
"""
_STREAM_TYPES = ("bigint", "text", "text", "float8", "bigint", "bigint", "text", "float8",
                 "float8", "int", "text", "text", "bigint", "text", "bigint", "bigint", "int",
                 "int", "bigint", "bigint", "bigint")
WRITE_SQL = (
    "WITH rec AS (INSERT INTO records (stream, end_pos, kind, data, checksum, ts) "
    "SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::bytea[], "
    "$5::bigint[], $6::float8[])), "
    f"st AS (INSERT INTO streams ({COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i + 7}::{t}[]" for i, t in enumerate(_STREAM_TYPES))
    + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS.split(", ")[1:]) + "), "
    "pr AS (INSERT INTO producers (stream, producer, epoch, last_seq, last_used) "
    "SELECT * FROM unnest($28::bigint[], $29::text[], $30::bigint[], $31::bigint[], "
    "$32::float8[]) ON CONFLICT (stream, producer) DO UPDATE SET epoch = EXCLUDED.epoch, "
    "last_seq = EXCLUDED.last_seq, last_used = EXCLUDED.last_used) "
    "SELECT count(pg_notify($33, n)) FROM unnest($34::text[]) AS n")


def notify_entry(state: StreamState, dropped: bool = False) -> str:
    """``id:tail:start:flags`` (flags: c closed, d soft-deleted, x dropped)."""
    flags = ("c" if state.closed else "") + ("d" if state.soft_deleted else "") + (
        "x" if dropped else "")
    return f"{state.id}:{state.tail}:{state.start}:{flags}"


class PgWriter:
    """The writer half of PostgresStore (mixed in); runs on the event loop."""

    if TYPE_CHECKING:
        _pool: asyncpg.Pool | None
        registry: str | None
        counters: dict[str, int]

        def _publish(self, states: list[StreamState], dropped: list[StreamState],
                     removed: list[StreamState],
                     tails: list[tuple[int, int, bytes | None]]) -> None: ...

    def _init_writer(self) -> None:
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._writing = False  # a batch is in its transaction
        self._committing = False  # ... and its COMMIT has been (or is being) sent

    def _submit(self, kind: int, a: Any, b: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((kind, a, b, fut))
        return fut

    async def _run_writer(self) -> None:
        q = self._queue
        while True:
            first = await q.get()
            ops = [first]
            nbytes = 0
            while len(ops) < MAX_BATCH_OPS and nbytes < MAX_BATCH_BYTES and not q.empty():
                op = q.get_nowait()
                ops.append(op)
                if op[0] == APPEND:
                    nbytes += len(op[2].payload)
            self.counters["batches"] += 1
            self.counters["ops"] += len(ops)
            self._writing = True
            try:
                await self._run_batch(ops, split=True)
            except Exception:  # pragma: no cover - a bug; keep serving
                log.exception("writer batch failed")
                err = ProtocolError(503, "internal storage error, nothing was written")
                for op in ops:
                    _answer(op[3], None, err)
            finally:
                self._writing = False

    async def _run_batch(self, ops: list[tuple[Any, ...]], split: bool) -> None:
        for attempt in itertools.count():
            try:
                batch = await self._transaction(ops)
            except RETRYABLE as exc:
                if attempt < RETRIES:
                    await asyncio.sleep(0.001 * (attempt + 1))
                    continue
                error: BaseException = exc
            except ProtocolError as exc:
                error = exc
            except Exception as exc:
                if is_connection_error(exc) and self._pool is not None:
                    # PostgreSQL restarted or a connection broke: the pool's other idle
                    # connections are likely dead too; open fresh ones from now on.
                    await self._pool.expire_connections()
                    if attempt == 0 and not self._committing:
                        # COMMIT was never sent, so nothing of this batch can have been
                        # written: run it once more on a new connection.
                        continue
                if not is_connection_error(exc) and not isinstance(exc, asyncpg.PostgresError):
                    log.exception("writer failed")
                if split and len(ops) > 1 and not is_connection_error(exc):
                    for op in ops:
                        await self._run_batch([op], split=False)
                    return
                error = exc
            else:
                self._publish(list(batch.states.values()), list(batch.dropped.values()),
                              batch.removed, batch.tails)
                for fut, value, err in batch.results:
                    _answer(fut, value, err)
                return
            if isinstance(error, ProtocolError):
                err = error
            elif self._committing and is_connection_error(error):
                # The connection died with COMMIT on its way: PostgreSQL may or may not
                # have committed. Not an acknowledgement either way; a producer's
                # retry (5.2.1) is deduplicated if it had.
                err = ProtocolError(503, "database connection lost during commit: the "
                                         "write may or may not be stored; retry (with "
                                         "Producer-Id for exactly once)")
            else:
                err = storage_error(error)
            if not isinstance(error, ProtocolError):
                log.error("commit failed: %s", err.reason)
            for op in ops:
                _answer(op[3], None, err)
            return

    async def _transaction(self, ops: list[tuple[Any, ...]]) -> Batch:
        assert self._pool is not None
        now = time.time()
        paths: set[str] = set()
        ids: list[int] = []
        creates = 0
        names_registry = False
        for kind, a, b, _ in ops:
            if kind in (APPEND, CREATE, DELETE):
                paths.add(a)
            else:
                ids.extend(a if kind == TRIM else [a])
            if kind == CREATE:
                creates += 1
                if b[0].forked_from is not None:
                    paths.add(b[0].forked_from)
            if kind in (CREATE, DELETE, EXPIRE):
                # Appends leave the registry's row alone, so appends to different
                # streams never wait for each other (an expired stream an append
                # meets is removed by an EXPIRE of its own, with its event).
                names_registry = True
        if names_registry and self.registry is not None:
            paths.add(self.registry)
        self._committing = False
        unsynced = all(op[0] == APPEND and not op[2].sync for op in ops)
        async with self._pool.acquire(timeout=10) as con, con.transaction():
            started = time.perf_counter()
            if unsynced:
                # Nothing but the server's own unsynced appends (the proxy's body
                # batches, AppendRequest.sync): the commit does not wait for the WAL
                # flush (readable at once; a PostgreSQL crash may lose the last ones).
                await con.execute("SET LOCAL synchronous_commit TO off")
            rows = await con.fetch(LOCK_SQL, list(paths), ids)
            by_id: dict[int, StreamState] = {}
            by_path: dict[str, StreamState] = {}
            for row in rows:
                state = state_from_row(tuple(row.values()))
                by_id[state.id] = state
                by_path[state.path] = state
            wanted = {(by_path[a].id, b.producer.id) for kind, a, b, _ in ops
                      if kind == APPEND and b.producer is not None and a in by_path}
            if wanted:
                sids, pids = zip(*wanted, strict=True)
                for r in await con.fetch(PRODUCERS_SQL, list(sids), list(pids)):
                    by_id[r[0]].producers[r[1]] = ProducerState(r[2], r[3], r[4])
            new_ids: list[int] = []
            if creates:
                new_ids = [r[0] for r in await con.fetch(
                    "SELECT nextval('stream_ids') FROM generate_series(1, $1)", creates)]
            batch = Batch(by_id, by_path, 0, now, self.registry)
            for op in ops:
                kind, a, b, fut = op
                try:
                    value: Any = None
                    if kind == APPEND:
                        value = _do_append(batch, a, b, now)
                    elif kind == CREATE:
                        value = _do_create(batch, a, *b, new_ids, now)
                    elif kind == DELETE:
                        batch.apply(plan_delete(batch.by_id, batch.live(a, now)))
                    elif kind == EXPIRE:
                        state = batch.by_id(a)
                        if state is not None and not state.soft_deleted and state.is_expired(
                                max(now, b or 0.0)):
                            batch.expire(state)
                    else:  # TRIM
                        for stream_id in a:
                            state = batch.by_id(stream_id)
                            if state is not None and not state.soft_deleted:
                                await _trim(con, batch, state)
                except ProtocolError as err:
                    batch.results.append((fut, None, err))
                    continue
                batch.results.append((fut, value, None))
            for state in list(batch.states.values()):
                if state.retention_bytes is not None and not state.soft_deleted:
                    await _trim(con, batch, state)
            await _write(con, batch)
            self._committing = True  # leaving the block sends COMMIT
        self.counters["commits"] += 1
        observer = getattr(self, "commit_observer", None)
        if observer is not None:
            observer(time.perf_counter() - started, len(batch.results))
        for state in batch.states.values():
            producers = state.producers
            if isinstance(producers, ChainMap):
                table = dict(producers.maps[1])
                table.update(producers.maps[0])
                state.producers = table
        return batch


def _answer(fut: asyncio.Future[Any] | None, value: Any, err: BaseException | None) -> None:
    if fut is None or fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


def _do_append(batch: Batch, path: str, req: AppendRequest, now: float
               ) -> tuple[AppendDecision, StreamState]:
    state = batch.by_path(path)
    if state is None or (not state.soft_deleted and state.is_expired(now)):
        raise ProtocolError(404, "stream not found")
    if state.soft_deleted:
        raise ProtocolError(410, "stream was deleted")
    if req.stream_id is not None and req.stream_id != state.id:
        raise StaleState()
    return batch.append(state, req, now)


def _do_create(batch: Batch, path: str, req: CreateRequest, payload: bytes | None,
               prefix: bytes, new_ids: list[int], now: float) -> tuple[StreamState, bool]:
    batch.get(path, now)  # an expired stream at this path goes first (4)
    if req.forked_from is not None:
        batch.get(req.forked_from, now)
    plan = plan_create(batch.by_path, path, req, payload, prefix, new_ids[-1], now)
    if plan.created:
        new_ids.pop()
    batch.apply(plan)
    assert plan.result is not None
    return plan.result, plan.created


async def _trim(con: asyncpg.Connection, batch: Batch, state: StreamState) -> None:
    """Retention (store/retention.py): the committed appends, then this batch's."""
    rows = await con.fetch("SELECT end_pos, ts FROM records WHERE stream = $1 AND end_pos > $2 "
                           "AND kind & $3 = 0 ORDER BY end_pos", state.id, state.start, MORE)
    pending = ((r[1], r[5]) for r in batch.records if r[0] == state.id and not r[2] & MORE)
    new = trim_start(state, itertools.chain(((r[0], r[1]) for r in rows), pending), batch.now)
    if new > state.start:
        shadow = batch.shadow(state)
        shadow.start = new
        batch.trims[state.id] = new


async def _write(con: asyncpg.Connection, batch: Batch) -> None:
    dropped = batch.dropped
    states = batch.states
    records = batch.records
    if dropped and records:
        records = [r for r in records if r[0] not in dropped]
    for stream_id, start in batch.trims.items():
        trimmed = states.get(stream_id)
        if trimmed is None or trimmed.refcount:
            continue  # retention: forks keep what they reference
        await con.execute("DELETE FROM records WHERE stream = $1 AND end_pos <= $2",
                          stream_id, start)
        records = [r for r in records if r[0] != stream_id or r[1] > start]
    if dropped:
        gone = list(dropped)
        # The rows go now; records are reclaimed in the background (ids are never reused).
        await con.execute("DELETE FROM streams WHERE id = ANY($1::bigint[])", gone)
        await con.execute("DELETE FROM producers WHERE stream = ANY($1::bigint[])", gone)
        await con.execute("INSERT INTO garbage SELECT unnest($1::bigint[]) "
                          "ON CONFLICT DO NOTHING", gone)
    producer_rows = []
    for stream_id, producer_id in batch.producers:
        state = states.get(stream_id)
        if state is not None:
            p = state.producers[producer_id]
            producer_rows.append((stream_id, producer_id, p.epoch, p.last_seq, p.last_used))
    entries = [notify_entry(s) for s in states.values()]
    entries += [notify_entry(s, dropped=True) for s in dropped.values()]
    chunks: list[str] = []
    chunk: list[str] = []
    size = 0
    for entry in entries:
        if size + len(entry) > NOTIFY_CHUNK:
            chunks.append(" ".join(chunk))
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry) + 1
    if chunk:
        chunks.append(" ".join(chunk))
    # One statement, one round trip: records, stream rows, producer rows and the
    # NOTIFY (transactional: delivered at COMMIT, or never; listener.py).
    await con.execute(WRITE_SQL, *_columns(records, 6), *_columns(
        [state_row(s) for s in states.values()], 21), *_columns(producer_rows, 5),
        CHANNEL, chunks)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column (for unnest)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]
