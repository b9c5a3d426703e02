"""The subscription journal: subscription state kept in the store itself.

Every backend keeps streams, so subscription state is a stream too: an
internal, server-written JSON stream ``__ds/state-<n>`` holding a log of
events (a subscription's head record, link upserts, acks, deletes, the keys).
Paths under ``__ds`` are routed to the control APIs (PROTOCOL.md 6), so no
client can read or write it, and the server never lists it in the registry.

Events are absolute ("this link's acked offset is X"), so replaying an event
twice changes nothing. Writes are grouped: callers queue events, one writer
appends everything queued as one record, then resolves the callers' futures,
so an answered ack is durable (the append returned) at the cost of one store
append per batch, not per event.

Compaction: after ``compact_every`` events (and once the log is longer than
the snapshot it started from) the writer takes a snapshot of the
whole state, creates ``__ds/state-<n+1>`` with it as its initial content (one
atomic create), switches to it and deletes the old stream. At start-up the
highest-numbered journal wins and older ones (an interrupted compaction) are
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ...protocol.errors import ProtocolError
from ...protocol.state import AppendRequest, CreateRequest
from ...store import Store

PREFIX = "__ds/state-"
JSON = "application/json"


class Journal:
    def __init__(self, store: Store, log: logging.Logger,
                 snapshot: Callable[[], list[dict[str, Any]]], compact_every: int = 20_000
                 ) -> None:
        self.store = store
        self.log = log
        self.snapshot = snapshot
        self.compact_every = compact_every
        self.path = PREFIX + "1"
        self._queue: list[tuple[bytes, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._since_snapshot = 0  # events in the current journal
        self._snapshot_size = 0  # of which the snapshot it started with
        self.compactions = 0

    # -- start-up ------------------------------------------------------------------
    async def load(self) -> list[dict[str, Any]]:
        """The events of the newest journal, oldest first (creating one if none)."""
        journals = []
        for state in self.store.list_states():
            if state.path.startswith(PREFIX) and state.path[len(PREFIX):].isdigit():
                journals.append((int(state.path[len(PREFIX):]), state.path))
        journals.sort()
        if not journals:
            await self.store.create(self.path, CreateRequest(content_type=JSON), None)
            return []
        self.path = journals[-1][1]
        for _, old in journals[:-1]:
            with contextlib.suppress(ProtocolError):
                await self.store.delete(old)
        state = self.store.get(self.path)
        assert state is not None
        pos, parts = 0, []
        while pos < state.tail:
            chunk = await self.store.read(state, pos, 1 << 20, whole=True)
            if chunk.next_pos <= pos:
                break
            parts.extend(chunk.parts)
            pos = chunk.next_pos
        events = orjson.loads(b"[" + b",".join(parts) + b"]") if parts else []
        self._since_snapshot = len(events)
        return events

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- writing -------------------------------------------------------------------
    def post(self, event: dict[str, Any]) -> None:
        """Queue an event; it is written soon (for state that can be rebuilt)."""
        self._queue.append((orjson.dumps(event), None))
        self._wake.set()

    async def write(self, event: dict[str, Any]) -> None:
        """Queue an event and return once it is stored (before answering a client)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((orjson.dumps(event), fut))
        self._wake.set()
        await fut

    async def flush(self) -> None:
        await self.write({"e": "noop"})

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._append(batch)
            # At least compact_every new events, and the log at least as long again
            # as its snapshot, so a large state is not rewritten after every batch.
            grown = self._since_snapshot - self._snapshot_size
            if grown >= max(self.compact_every, self._snapshot_size):
                try:
                    await self.compact()
                except Exception:  # pragma: no cover - logged; the old journal stays
                    self.log.exception("subscription journal compaction failed")
            if self._closing and not self._queue:
                return

    async def _append(self, batch: list[tuple[bytes, asyncio.Future[None] | None]]) -> None:
        payload = b",".join(data for data, _ in batch)
        try:
            await self.store.append(self.path, AppendRequest(payload=payload, content_type=JSON))
        except Exception as err:
            self.log.error("subscription journal append failed: %s", err)
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(ProtocolError(503, "subscription state not stored"))
            return
        self._since_snapshot += len(batch)
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def compact(self) -> None:
        """Write the whole state to a fresh journal and drop the old one."""
        events = self.snapshot()
        number = int(self.path[len(PREFIX):]) + 1
        new = f"{PREFIX}{number}"
        payload = b",".join(orjson.dumps(e) for e in events) or None
        await self.store.create(new, CreateRequest(content_type=JSON), payload)
        old, self.path = self.path, new
        self._since_snapshot = self._snapshot_size = len(events)
        self.compactions += 1
        with contextlib.suppress(ProtocolError):
            await self.store.delete(old)
