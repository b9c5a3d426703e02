"""One writer transaction's view: shadow copies of the states it changes.

The writer thread evaluates each queued operation against a ``Batch``: shadow
copies over its committed states, changed with the same functions the memory
store uses. The batch collects what its transaction must write (records with
their checksums, stream rows, producer rows, registry events) and is thrown
away on rollback, so nothing uncommitted is ever seen.

A shadow shares its stream's producer table and records producer changes in
an overlay (``ChainMap``): copying a stream costs the same with 1 or 100,000
producers, and the writer folds the overlay into the table after the commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import ChainMap
from typing import Any

from ...protocol.errors import ProtocolError
from ...protocol.state import (
    AppendDecision,
    AppendRequest,
    StreamState,
    apply_append,
    decide_append,
)
from .. import registry as reg
from ..plans import Plan, plan_delete
from .schema import record_checksum

#: Appends larger than this are stored as several rows ("pieces"), so a read of
#: a slice of a large byte append loads only the pieces it needs.
PIECE = 256 << 10
#: Record kinds: a piece that starts an append, and one that continues into the next row.
HEAD = 1
MORE = 2

#: Rows per multi-row INSERT, at most (18 columns x 512 stays under SQLite's 32766 variables).
_MAX_ROWS_PER_INSERT = 512
#: Most blob bytes bound in one statement. The sqlite3 module copies bound blobs
#: while it holds the GIL: one INSERT of a 64 MiB append's 256 pieces held every
#: other thread, the event loop included, for 40 ms (issue 9: a 50 ms budget).
_MAX_BYTES_PER_INSERT = 4 << 20
_SQL_CACHE: dict[tuple[str, int], str] = {}


def insert_rows(con: sqlite3.Connection, head: str, width: int,
                rows: list[tuple[Any, ...]], blob: int | None = None) -> None:
    """Insert rows with as few statements as possible.

    ``executemany`` steps once per row, and the sqlite3 module releases the GIL
    around every step; each release lets the busy event loop take the GIL, and
    the writer then waits a switch interval to get it back. One multi-row
    INSERT per power of two keeps that to about log2(rows) waits per batch,
    while the statements stay few enough to be cached. ``blob``: the index of a
    bytes column whose total per statement is kept to ``_MAX_BYTES_PER_INSERT``.
    """
    i, n = 0, len(rows)
    while i < n:
        k = min(_MAX_ROWS_PER_INSERT, 1 << ((n - i).bit_length() - 1))
        if blob is not None:
            while k > 1 and sum(len(r[blob]) for r in rows[i:i + k]) > _MAX_BYTES_PER_INSERT:
                k >>= 1
        sql = _SQL_CACHE.get((head, k))
        if sql is None:
            group = f"({', '.join('?' * width)})"
            sql = _SQL_CACHE[head, k] = f"{head} VALUES {', '.join([group] * k)}"
        con.execute(sql, [x for row in rows[i:i + k] for x in row])
        i += k


def storage_error(exc: BaseException) -> ProtocolError:
    """A failed write, as the one-line 5xx the affected requests get."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == getattr(sqlite3, "SQLITE_FULL", 13):
        return ProtocolError(507, "insufficient storage: the disk or database is full")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ProtocolError(503, f"storage error, nothing was written: {reason}")


def record_rows(stream_id: int, end: int, payload: bytes, ts: float
                ) -> list[tuple[int, int, int, bytes, int, float]]:
    """The ``records`` rows of one append ending at ``end``, committed at ``ts``:
    (stream, end, kind, data, checksum, ts)."""
    n = len(payload)
    if n <= PIECE:
        return [(stream_id, end, HEAD, payload, record_checksum(stream_id, end, HEAD, payload),
                 ts)]
    start = end - n
    rows = []
    view = memoryview(payload)
    for off in range(0, n, PIECE):
        piece = bytes(view[off:off + PIECE])
        kind = (HEAD if off == 0 else 0) | (MORE if off + PIECE < n else 0)
        piece_end = start + off + len(piece)
        rows.append((stream_id, piece_end, kind, piece,
                     record_checksum(stream_id, piece_end, kind, piece), ts))
    return rows


class Batch:
    """One transaction's view: shadow copies over the writer's committed states."""

    __slots__ = (
        "access",
        "committed_by_id",
        "committed_by_path",
        "dropped",
        "nbytes",
        "next_id",
        "now",
        "paths",
        "producers",
        "records",
        "registry",
        "removed",
        "results",
        "states",
        "tails",
        "trims",
    )

    def __init__(self, by_id: dict[int, StreamState], by_path: dict[str, StreamState],
                 next_id: int, now: float, registry: str | None) -> None:
        self.committed_by_id = by_id
        self.committed_by_path = by_path
        self.now = now
        self.registry = registry
        self.states: dict[int, StreamState] = {}  # shadows changed in this batch
        self.paths: dict[str, StreamState | None] = {}  # path overlay; None: removed
        self.dropped: dict[int, StreamState] = {}
        self.records: list[tuple[int, int, int, bytes, int, float]] = []  # record_rows()
        self.tails: list[tuple[int, int, bytes | None]] = []  # for the cache; None: reset
        self.producers: set[tuple[int, str]] = set()
        self.access: dict[int, float] = {}
        self.trims: dict[int, int] = {}  # retention: stream id -> new start
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
        """The batch's private, mutable copy of ``state`` (O(1) in its producers)."""
        mine = self.states.get(state.id)
        if mine is not None:
            return mine
        mine = state.copy(share_producers=True)
        mine.producers = ChainMap({}, state.producers)
        self.states[mine.id] = mine
        self.paths[mine.path] = mine
        return mine

    # -- changes ----------------------------------------------------------------
    def add_payload(self, stream_id: int, end: int, payload: bytes) -> None:
        self.nbytes += len(payload)
        self.records.extend(record_rows(stream_id, end, payload, self.now))
        # Too big to cache (None): the cache restarts after it.
        self.tails.append((stream_id, end, payload if len(payload) <= PIECE else None))

    def append(self, state: StreamState, req: AppendRequest, now: float
               ) -> tuple[AppendDecision, StreamState]:
        """5.2: decide an append to ``state`` and, when accepted, apply it to the overlay."""
        shadow = self.shadow(state)
        decision = decide_append(shadow, req)
        if decision.write:
            if req.payload:
                self.add_payload(shadow.id, shadow.tail + len(req.payload), req.payload)
            apply_append(shadow, req, decision, now)
            if req.producer is not None and decision.producer_state is not None:
                self.producers.add((shadow.id, req.producer.id))
            # The shadow moves on with later appends of this batch; the answer
            # carries this append's own tail (the app prefers this header).
            decision.headers["stream-next-offset"] = shadow.next_offset
        return decision, shadow

    def apply(self, plan: Plan) -> None:
        """Apply a create/delete plan (store.plans) and its registry event to the overlay."""
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
        if plan.changes and self.registry is not None:
            self.record(plan.changes)

    def record(self, changes: list[tuple[str, StreamState]]) -> None:
        """Append registry events in this transaction: they commit with the change."""
        assert self.registry is not None
        registry = self.by_path(self.registry)
        payload = reg.changes_payload(changes, self.registry)
        if not payload or registry is None or not reg.can_record(registry):
            return
        shadow = self.shadow(registry)
        shadow.tail += len(payload)
        shadow.last_access = self.now
        self.add_payload(shadow.id, shadow.tail, payload)

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
