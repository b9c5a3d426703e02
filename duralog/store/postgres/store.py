"""PostgresStore: the node's side of the postgres backend (cache, reads, background work).

Each node keeps a cache of committed stream states (``_by_path``/``_by_id``, as
every backend does) so HEAD, live readers and sub-applications answer without
a round trip. Other nodes change the database too, so the cache is kept true
three ways: a request first calls ``fresh(path)``, which reads the row (and
its fork sources) from the database; the listener (listener.py) applies every
commit's NOTIFY; and decisions that change anything are made inside the
writer's transaction against locked rows (writer.py), never against the cache.
States only ever move forward in the cache (tail, start, closure, deletion),
so a slow read can never put an older state over a newer one.

Background work (expiry sweeps, retention by age, producer expiry, reclaiming
the records of dropped streams) runs on whichever node holds a session-level
advisory lock at that moment: once across the cluster, not once per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from ...protocol.errors import ProtocolError
from ...protocol.state import AppendDecision, AppendRequest, CreateRequest, StreamState
from ..base import WriterQueued
from ..sqlite.schema import state_from_row
from ..tails import TailCache
from .listener import Listener
from .reads import PgReads
from .roles import Role
from .schema import (
    CHANNEL,
    COLUMNS,
    LOCK_RECLAIM,
    LOCK_REGISTRY,
    LOCK_SWEEP,
    SchemaError,
    is_connection_error,
    migrate,
    storage_error,
)
from .writer import APPEND, CREATE, DELETE, EXPIRE, TRIM, PgWriter

log = logging.getLogger("duralog.postgres")

#: Sliding-TTL clocks moved by reads are written this often (seconds).
ACCESS_FLUSH_INTERVAL = 0.25
#: Records of dropped streams removed per reclaim step.
RECLAIM_STEP_ROWS = 5000

BY_PATH = f"SELECT {COLUMNS} FROM streams WHERE path = $1"
CHAIN_BY_PATH = f"""
WITH RECURSIVE chain AS (
    SELECT {COLUMNS} FROM streams WHERE path = $1
    UNION ALL
    SELECT {', '.join('s.' + c for c in COLUMNS.split(', '))}
    FROM streams s JOIN chain c ON s.id = c.source_id
) SELECT * FROM chain
"""
CHAIN_BY_IDS = CHAIN_BY_PATH.replace("WHERE path = $1", "WHERE id = ANY($1::bigint[])")


class PostgresStore(PgReads, PgWriter, WriterQueued):
    """Streams in one PostgreSQL database, shared by any number of nodes."""

    shared = True

    def __init__(self, dsn: str, *, pool_size: int = 10, pool_min: int = 0,
                 connect_timeout: float = 5.0, command_timeout: float = 30.0) -> None:
        super().__init__()
        self._init_writer()
        self.dsn = dsn
        self.pool_size = pool_size
        # No floor of idle connections (min 0): while the database is down asyncpg
        # would retry the floor in the background and log a traceback each time;
        # a request then opens what it needs, and a failure is its one-line 503.
        self.pool_min = min(pool_min, pool_size)
        self._connect_kwargs: dict[str, Any] = {"timeout": connect_timeout,
                                                "command_timeout": command_timeout}
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._touched: set[int] = set()
        self._expiring: set[int] = set()
        self._tails = TailCache()
        self._fetch_locks: dict[int, asyncio.Lock] = {}
        self._open = False
        self.commit_observer: Any = None
        self.counters = {"batches": 0, "ops": 0, "commits": 0, "checksum_errors": 0,
                         "read_errors": 0, "producers_dropped": 0, "streams_reclaimed": 0,
                         "sweeps": 0}

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self._open:
            return
        try:
            con = await asyncpg.connect(self.dsn, **self._connect_kwargs)
        except Exception as exc:
            raise SchemaError(f"cannot connect to the database: {exc}") from None
        try:
            meta = await migrate(con)
        finally:
            await con.close()
        self.instance_tag = meta["instance_tag"]
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_min, max_size=self.pool_size,
            server_settings={"application_name": "duralog"},
            max_inactive_connection_lifetime=60.0, **self._connect_kwargs)
        self._listener = Listener(self, self.dsn, self._connect_kwargs)
        await self._listener.start()
        await self._load_all()
        self._open = True
        self._writer_task = asyncio.create_task(self._run_writer())
        self._tasks.append(asyncio.create_task(self._flush_access_loop()))
        # Nodes starting together repair the registry one after the other: the
        # second finds nothing missing, so no event is written twice.
        async with self._pool.acquire() as lock:
            await lock.execute("SELECT pg_advisory_lock($1)", LOCK_REGISTRY)
            try:
                await self._load_all()
                repaired = await self._open_registry()
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", LOCK_REGISTRY)
        if repaired:
            log.warning("the registry disagreed with the streams; appended %d events", repaired)

    async def stop(self) -> None:
        if not self._open:
            return
        self._open = False
        self._queue_access()
        for task in self._tasks:
            task.cancel()
        # Let the writer finish what is queued and the batch it is in (its callers
        # get their answers), then stop it.
        for _ in range(500):
            if self._queue.empty() and not self._writing:
                break
            await asyncio.sleep(0.01)
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        err = ProtocolError(503, "the store is not open (server starting or stopping)")
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if op[3] is not None and not op[3].done():
                op[3].set_exception(err)
        if self._listener is not None:
            await self._listener.stop()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
        log.info("postgres store: %s", self.counters)
        await super().stop()

    # -- the cache of committed states ----------------------------------------------------
    def _cache_put(self, state: StreamState) -> None:
        """Put a committed state in the cache unless the cache knows a newer one."""
        current = self._by_id.get(state.id)
        if current is not None:
            if (state.tail < current.tail or state.start < current.start
                    or current.closed > state.closed
                    or current.soft_deleted > state.soft_deleted):
                return
            if current.last_access > state.last_access:
                state.last_access = current.last_access  # a read touched it meanwhile
            if not state.producers and current.producers:
                state.producers = current.producers
        self._by_id[state.id] = state
        self._by_path[state.path] = state

    def _drop_cached(self, state: StreamState) -> None:
        self._tails.drop(state.id)
        self._by_id.pop(state.id, None)
        current = self._by_path.get(state.path)
        if current is not None and current.id == state.id:
            del self._by_path[state.path]

    def _publish(self, states: list[StreamState], dropped: list[StreamState],
                 removed: list[StreamState],
                 tails: list[tuple[int, int, bytes | None]]) -> None:
        """After a local commit: make it visible, then wake readers."""
        gone = {s.id for s in dropped}
        for stream_id, end, data in tails:
            if stream_id not in gone:
                self._tails.add(stream_id, end, data)
        for state in dropped:
            self._drop_cached(state)
            self._expiring.discard(state.id)
        for state in states:
            self._cache_put(state)
        for state in (*dropped, *states):
            self.notifier.changed(state.id)
        if removed:
            self._removed(removed)  # 4: expiries are announced like deletes

    async def _load_all(self) -> None:
        assert self._pool is not None
        rows = await self._pool.fetch(f"SELECT {COLUMNS} FROM streams")
        seen: set[int] = set()
        for row in rows:
            state = state_from_row(tuple(row.values()))
            seen.add(state.id)
            self._cache_put(state)
        for state in list(self._by_id.values()):
            if state.id not in seen:
                self._drop_cached(state)

    async def resync(self) -> None:
        """After the listener was away: reload every row, wake every waiter (listener.py)."""
        before = {s.id: (s.tail, s.start, s.closed, s.soft_deleted) for s in self._by_id.values()}
        await self._load_all()
        after = {s.id: (s.tail, s.start, s.closed, s.soft_deleted) for s in self._by_id.values()}
        for sid in before.keys() | after.keys():
            if before.get(sid) != after.get(sid):
                self.notifier.changed(sid)
        self.notifier.wake_all()

    async def _load_ids(self, ids: list[int], notify: bool = False) -> None:
        if self._pool is None:
            return
        try:
            rows = await self._pool.fetch(CHAIN_BY_IDS, ids)
        except Exception as exc:  # a later request reads the row anyway
            log.warning("could not load streams %s: %s", ids[:5], exc)
            return
        for row in rows:
            self._cache_put(state_from_row(tuple(row.values())))
        if notify:
            for sid in ids:
                self.notifier.changed(sid)

    async def fresh(self, path: str) -> StreamState | None:
        """The database's state at ``path`` (and its fork sources), into the cache."""
        if self._pool is None:
            return self.get(path)
        try:
            row = await self._pool.fetchrow(BY_PATH, path)
            if row is None:
                current = self._by_path.get(path)
                if current is not None:
                    self._drop_cached(current)
                return None
            state = state_from_row(tuple(row.values()))
            if state.source_id is not None and state.source_id not in self._by_id:
                # A fork whose sources this node has not seen: read the whole chain.
                for r in await self._pool.fetch(CHAIN_BY_PATH, path):
                    self._cache_put(state_from_row(tuple(r.values())))
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError):
                raise await self._failed(exc) from None
            raise
        self._cache_put(state)
        return self.get(path)


    def _expire(self, state: StreamState) -> None:
        if state.id in self._expiring or not self._open:
            return
        self._expiring.add(state.id)
        fut = self._submit(EXPIRE, state.id, None)
        fut.add_done_callback(lambda f, sid=state.id: (
            self._expiring.discard(sid), f.cancelled() or f.exception()))

    def _queue_access(self) -> None:
        if not self._touched or self._pool is None:
            return
        touched, self._touched = self._touched, set()
        items = sorted((s.id, s.last_access) for i in touched
                       if (s := self._by_id.get(i)) is not None)
        if items:
            asyncio.get_running_loop().create_task(self._write_access(items))

    async def _write_access(self, items: list[tuple[int, float]]) -> None:
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=5) as con, con.transaction():
                await con.executemany("UPDATE streams SET last_access = GREATEST(last_access, $2) "
                                      "WHERE id = $1", items)
        except Exception as exc:  # the clock is advisory; try next time
            log.warning("could not store sliding-TTL clocks: %s", exc)
            self._touched.update(i for i, _ in items)

    async def _flush_access_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_INTERVAL)
            self._queue_access()

    # -- writes ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._open:
            raise ProtocolError(503, "the store is not open (server starting or stopping)")

    async def create(self, path: str, req: CreateRequest, payload: bytes | None
                     ) -> tuple[StreamState, bool]:
        self._check_open()
        if req.forked_from is not None:
            await self.fresh(req.forked_from)
        prefix = await self.create_prefix(path, req)
        result: tuple[StreamState, bool] = await self._submit(CREATE, path, (req, payload, prefix))
        return result

    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        self._check_open()
        result: tuple[AppendDecision, StreamState] = await self._submit(APPEND, path, req)
        return result

    async def delete(self, path: str) -> None:
        self._check_open()
        await self._submit(DELETE, path, None)

    # -- background work, once across the cluster -------------------------------------------
    @contextlib.asynccontextmanager
    async def _once(self, key: int) -> AsyncIterator[bool]:
        """Yields True on the one node that holds advisory lock ``key`` now."""
        assert self._pool is not None
        async with self._pool.acquire(timeout=5) as con:
            got = await con.fetchval("SELECT pg_try_advisory_lock($1)", key)
            try:
                yield bool(got)
            finally:
                if got:
                    await con.execute("SELECT pg_advisory_unlock($1)", key)

    async def sweep_expired(self) -> int:
        """4: remove expired streams, trim retention by age, drop old producer state
        (5.2.1) and reclaim dropped streams' records; on one node at a time."""
        if not self._open or self._pool is None:
            return 0
        self._queue_access()
        now = time.time()
        removed = 0
        try:
            async with self._once(LOCK_SWEEP) as leader:
                if leader:
                    self.counters["sweeps"] += 1
                    rows = await self._pool.fetch(
                        "SELECT id FROM streams WHERE soft_deleted = 0 AND ("
                        "expires_ts <= $1 OR (ttl IS NOT NULL AND last_access + ttl <= $1))",
                        now)
                    futs = [self._submit(EXPIRE, r[0], None) for r in rows]
                    aged = [r[0] for r in await self._pool.fetch(
                        "SELECT id FROM streams WHERE retention_seconds IS NOT NULL "
                        "AND soft_deleted = 0")]
                    if aged:
                        futs.append(self._submit(TRIM, aged, None))
                    await asyncio.gather(*futs, return_exceptions=True)
                    removed = len(rows)
                    await self._maybe_sweep_producers(now)
            async with self._once(LOCK_RECLAIM) as leader:
                if leader:
                    await self._reclaim()
        except Exception as exc:
            if not (is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError)):
                raise
            log.warning("background sweep skipped: %s", exc)
        return removed

    async def sweep_producers(self, cutoff: float) -> int:
        """5.2.1: drop producer state last used before ``cutoff``."""
        assert self._pool is not None
        status = await self._pool.execute("DELETE FROM producers WHERE last_used < $1", cutoff)
        dropped = int(status.split()[-1])
        for state in self._by_id.values():
            for key in [k for k, p in state.producers.items() if p.last_used < cutoff]:
                del state.producers[key]
        self.counters["producers_dropped"] += dropped
        return dropped

    async def _reclaim(self) -> None:
        """Remove the records of dropped streams, a bounded step per transaction."""
        assert self._pool is not None
        for stream_id in [r[0] for r in await self._pool.fetch(
                "SELECT stream FROM garbage LIMIT 64")]:
            while True:
                status = await self._pool.execute(
                    "DELETE FROM records WHERE ctid = ANY(ARRAY(SELECT ctid FROM records "
                    "WHERE stream = $1 LIMIT $2))", stream_id, RECLAIM_STEP_ROWS)
                if int(status.split()[-1]) < RECLAIM_STEP_ROWS:
                    break
            await self._pool.execute("DELETE FROM garbage WHERE stream = $1", stream_id)
            self.counters["streams_reclaimed"] += 1

    async def sync(self, timeout: float = 5.0) -> None:
        """Return once this node has applied every commit made (on any node) before the
        call: a NOTIFY barrier through the listener, which receives notifications in
        commit order. The subscription leader calls it before each control request, so
        an append acknowledged by another node is known before a claim that follows it."""
        listener = self._listener
        if listener is None or self._pool is None or listener.con is None:
            return
        token = secrets.token_hex(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        listener.barriers[token] = fut
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", CHANNEL, "sync:" + token)
            await asyncio.wait_for(fut, timeout)
        except Exception as exc:  # a barrier is best effort: the request goes on
            log.warning("sync barrier failed: %s", exc)
        finally:
            listener.barriers.pop(token, None)

    # -- cluster roles (store/postgres/roles.py, server/cluster.py) -------------------------
    def role(self, name: str, url: str) -> Role:
        """A role only one node of the cluster holds at a time (subscriptions)."""
        return Role(self.dsn, name, url, self._connect_kwargs)

    async def try_lead(self, role: Role) -> bool:
        """Take ``role`` if no node holds it; True while this node holds it."""
        return await role.try_lead(self._pool)

    async def leader_url(self, role: Role) -> str | None:
        if self._pool is None:
            return None
        try:
            return await role.leader_url(self._pool)
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError):
                raise await self._failed(exc) from None
            raise

    async def _failed(self, exc: BaseException) -> ProtocolError:
        """A request's database error as its one-line 503; after a broken connection
        the pool's idle connections are replaced (PostgreSQL probably restarted)."""
        if is_connection_error(exc) and self._pool is not None:
            await self._pool.expire_connections()
        return storage_error(exc)

    @property
    def listening(self) -> bool:
        """Whether this node's LISTEN connection is up (other nodes' commits reach it)."""
        listener = self._listener
        return (self._open and listener is not None and listener.con is not None
                and not listener.con.is_closed())

    def health_problem(self) -> str | None:
        """Why this node cannot serve now (for /readyz), or None."""
        if not self._open:
            return "the store is not open"
        listener = self._listener
        if listener is None or listener.con is None or listener.con.is_closed():
            return "the database is unreachable (reconnecting)"
        return None

    def stats(self) -> dict[str, int]:
        listener = self._listener
        return {"streams": len(self._by_id), "tail_cache_bytes": self._tails.nbytes,
                "tail_cache_streams": len(self._tails.tails), **self.counters,
                "listener_reconnects": listener.reconnects if listener else 0}
