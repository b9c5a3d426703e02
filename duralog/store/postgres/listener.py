"""Cross-node live reads: one LISTEN connection per node, fanned into local waiters.

Every commit NOTIFYs (in its own transaction, so only committed changes are
announced) the streams it changed as ``id:tail:start:flags`` entries. The
listener applies each to this node's cache of committed states and calls
``notifier.changed`` (waking long-poll and SSE readers, and telling
subscription observers), exactly as a local commit does.

When the listener connection is lost (PostgreSQL restarted, the backend was
terminated, the network broke) notifications sent meanwhile are lost with it.
So after reconnecting the node reloads the stream table and wakes every
waiter: a reader whose stream moved sees the new tail, the others wait again.
No wake is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from ...protocol.state import StreamState
from .schema import CHANNEL

log = logging.getLogger("duralog.postgres")

#: Seconds between checks that the listener connection is alive, and between
#: reconnect attempts while PostgreSQL is unreachable.
CHECK_INTERVAL = 0.5
#: How the listener connection shows in pg_stat_activity (request connections: "duralog").
APP_NAME = "duralog-listener"


def parse_entry(entry: str) -> tuple[int, int, int, str] | None:
    try:
        sid, tail, start, flags = entry.split(":", 3)
        return int(sid), int(tail), int(start), flags
    except ValueError:
        return None


class Listener:
    """The node's LISTEN connection and its reconnect loop (owned by PostgresStore)."""

    if TYPE_CHECKING:
        from .store import PostgresStore

    def __init__(self, store: PostgresStore, dsn: str, connect_kwargs: dict[str, Any]) -> None:
        self.store = store
        self.dsn = dsn
        self.connect_kwargs = connect_kwargs
        self.con: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.reconnects = 0
        #: Barriers this node waits for (store.sync): token -> future.
        self.barriers: dict[str, asyncio.Future[None]] = {}
        self._loading: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.con is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.con.close(), 2)
            self.con = None

    async def _connect(self) -> None:
        con = await asyncpg.connect(self.dsn, server_settings={"application_name": APP_NAME},
                                    **self.connect_kwargs)
        con.add_termination_listener(lambda _con: self._lost.set())
        await con.add_listener(CHANNEL, self._on_notify)
        self.con = con
        self._lost.clear()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), CHECK_INTERVAL)
            con = self.con
            if con is not None and not con.is_closed() and not self._lost.is_set():
                continue
            log.warning("the LISTEN connection was lost; reconnecting")
            if con is not None:
                con.terminate()
            self.con = None
            while True:
                try:
                    await self._connect()
                    # Anything committed while we were away was announced to nobody:
                    # reload, then wake every waiter to look again.
                    await self.store.resync()
                    break
                except Exception as exc:  # keep trying
                    log.warning("reconnecting the LISTEN connection failed: %s", exc)
                    if self.con is not None:
                        self.con.terminate()
                        self.con = None
                    await asyncio.sleep(CHECK_INTERVAL)
            self.reconnects += 1
            log.warning("the LISTEN connection is back; waiters woken")

    def _on_notify(self, _con: Any, _pid: int, _channel: str, payload: str) -> None:
        store = self.store
        unknown: list[int] = []
        for entry in payload.split():
            if entry.startswith("sync:"):
                self._barrier(entry[5:])
                continue
            parsed = parse_entry(entry)
            if parsed is None:
                continue
            sid, tail, start, flags = parsed
            current = store._by_id.get(sid)
            if "x" in flags:
                if current is not None:
                    store._drop_cached(current)
                    store.notifier.changed(sid)
                continue
            if current is None:
                unknown.append(sid)
                continue
            closed, deleted = "c" in flags, "d" in flags
            if (current.tail, current.start, current.closed, current.soft_deleted) == (
                    tail, start, closed, deleted):
                continue  # this node's own commit, already published
            if (tail < current.tail or start < current.start or current.closed > closed
                    or current.soft_deleted > deleted):
                continue  # older than what this node already knows
            updated: StreamState = current.copy(share_producers=True)
            updated.tail, updated.start = tail, start
            updated.closed, updated.soft_deleted = closed, deleted
            store._cache_put(updated)
            store.notifier.changed(sid)
        if unknown:
            # Streams created on another node: fetch their rows, then announce them.
            task = asyncio.get_running_loop().create_task(store._load_ids(unknown, notify=True))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)

    def _barrier(self, token: str) -> None:
        """A barrier's NOTIFY arrived: everything committed before it has been applied
        once the loads it started are done (PostgreSQL delivers notifications of
        different transactions in the order the transactions committed; NOTIFY docs)."""
        fut = self.barriers.pop(token, None)
        if fut is None or fut.done():
            return
        if not self._loading:
            fut.set_result(None)
            return
        pending = list(self._loading)

        async def after_loads() -> None:
            await asyncio.gather(*pending, return_exceptions=True)
            if not fut.done():
                fut.set_result(None)
        asyncio.get_running_loop().create_task(after_loads())
