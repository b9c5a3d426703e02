"""The Store interface, and what every backend shares.

A backend keeps each stream's ``StreamState`` (protocol.state) and its records:
one record per accepted append, keyed by (stream id, end position). Decisions
(idempotent create, producer fencing, closure) come from protocol.state, so
backends differ only in where records and state live and when they are durable.

Readers see committed data only: ``get`` returns the committed state, and
``wait`` wakes when a commit moves a stream's tail, closes it or deletes it.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from ..offload import fragment_prefix
from ..protocol.errors import ProtocolError
from ..protocol.headers import is_json
from ..protocol.state import AppendDecision, AppendRequest, CreateRequest, StreamState

UNBOUNDED = 1 << 62


@dataclass(slots=True)
class ReadChunk:
    """Committed bytes from a position: record payloads (byte streams may be sliced)."""

    parts: list[bytes]
    next_pos: int


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a stream's positions whose records belong to ``stream_id``."""

    stream_id: int
    lo: int
    hi: int


def scan_records(ends: list[int], datas: list[bytes], after: int, hi: int, budget: int
                 ) -> tuple[list[tuple[int, bytes]], bool]:
    """Records kept in memory as parallel lists (end positions, payloads): those with
    end in (after, hi], as (start, data), until ``budget`` bytes; and whether the
    budget stopped the scan."""
    i = bisect_right(ends, after)
    out: list[tuple[int, bytes]] = []
    n = len(ends)
    while i < n and ends[i] <= hi:
        data = datas[i]
        out.append((ends[i] - len(data), data))
        budget -= len(data)
        i += 1
        if budget <= 0:
            return out, True
    return out, False


#: A quiet stream forgets waiters that gave up once it has collected this many;
#: after a pass the bar doubles past the live ones, so passes cost O(1) per
#: registration however many readers wait.
PRUNE_AT = 1024


class _Waiters(list["asyncio.Future[None]"]):
    """The futures waiting on one stream, and when to next forget those that gave up."""

    limit = PRUNE_AT


class Notifier:
    """Wake-ups for live readers of a stream.

    A reader waits on a future of its own (``future(id)``); ``changed(id)``
    resolves every future registered for the stream and forgets them. A reader
    that gives up (a timeout, a client gone) just drops its future: cancelling
    it touches no other reader. No bytes are copied per reader; readers of the
    same tail then read the same stored records.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: dict[int, _Waiters] = {}

    def future(self, stream_id: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(stream_id)
        if waiters is None:
            waiters = self._waiters[stream_id] = _Waiters()
        elif len(waiters) >= waiters.limit:
            waiters[:] = [w for w in waiters if not w.done()]
            waiters.limit = max(PRUNE_AT, 2 * len(waiters))
        waiters.append(fut)
        return fut

    def changed(self, stream_id: int) -> None:
        waiters = self._waiters.pop(stream_id, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def wake_all(self) -> None:
        for stream_id in list(self._waiters):
            self.changed(stream_id)


class Store(ABC):
    """Streams by path (relative to the stream root), with their state and records."""

    #: Changes when the store's identity changes; part of every ETag so a
    #: recreated store never answers 304 for another store's bytes.
    instance_tag: str = "0"

    def __init__(self) -> None:
        self.notifier = Notifier()
        #: Called with each stream the store removes on its own (expiry), so the
        #: server can record it (the registry) like a DELETE.
        self.removal_listeners: list[Callable[[StreamState], None]] = []
        self._by_path: dict[str, StreamState] = {}
        self._by_id: dict[int, StreamState] = {}

    def _removed(self, states: list[StreamState]) -> None:
        for state in states:
            for listener in self.removal_listeners:
                listener(state)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open files and start background work."""

    async def stop(self) -> None:
        """Flush and close. Live readers are woken so they can finish."""
        self.notifier.wake_all()

    # -- state -------------------------------------------------------------
    # Backends keep the committed states in ``_by_path`` and ``_by_id`` and
    # replace entries only once what they describe is stored.
    def _state(self, path: str) -> StreamState | None:
        """The committed state at ``path``, expired or not."""
        return self._by_path.get(path)

    def _state_by_id(self, stream_id: int) -> StreamState | None:
        return self._by_id.get(stream_id)

    def all_states(self) -> list[StreamState]:
        """Every stream the store holds, soft-deleted and expired ones included."""
        return list(self._by_path.values())

    def list_states(self) -> list[StreamState]:
        """Every live stream: not soft-deleted, not expired."""
        now = time.time()
        return [s for s in self.all_states() if not s.soft_deleted and not s.is_expired(now)]

    def get(self, path: str) -> StreamState | None:
        """The committed state at ``path``, or None. Expired streams are gone (4)."""
        state = self._state(path)
        if state is not None and not state.soft_deleted and state.is_expired(time.time()):
            self._expire(state)
            return self._state(path) if state.refcount else None
        return state

    def touch(self, state: StreamState) -> None:
        """5.1: reads and writes slide a TTL; HEAD does not."""
        if state.ttl is not None:
            state.last_access = time.time()

    @abstractmethod
    def _expire(self, state: StreamState) -> None:
        """Remove an expired stream now (soft-delete it when forks still read it).

        Backends call ``_removed([state])`` once it is gone.
        """

    async def sweep_expired(self) -> int:
        """Remove every expired stream (4); returns how many. Run in the background."""
        now = time.time()
        expired = [s for s in self.all_states() if not s.soft_deleted and s.is_expired(now)]
        for state in expired:
            self._expire(state)
        return len(expired)

    # -- writes ------------------------------------------------------------
    @abstractmethod
    async def create(self, path: str, req: CreateRequest, payload: bytes | None
                     ) -> tuple[StreamState, bool]:
        """5.1: create, or confirm an identical stream. Returns (state, created).

        ``payload`` is the initial content, already in stored form (a JSON
        fragment for JSON streams), or None.
        """

    @abstractmethod
    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        """5.2: decide and, when accepted, commit. Returns the decision and the state after."""

    @abstractmethod
    async def delete(self, path: str) -> None:
        """5.4: delete (soft-delete while forks exist). ProtocolError for 404/410."""

    # -- reads -------------------------------------------------------------
    def segments(self, state: StreamState) -> list[Segment]:
        """4.2: the stretches a (possibly forked) stream reads from, in order."""
        chain: list[Segment] = []
        hi = UNBOUNDED
        current: StreamState | None = state
        while current is not None:
            lo = current.fork_pos or 0
            chain.append(Segment(current.id, lo, hi))
            if current.source_id is None:
                break
            hi = min(hi, lo)
            current = self._state_by_id(current.source_id)
        chain.reverse()
        return chain

    @abstractmethod
    async def _read_records(self, stream_id: int, lo: int, hi: int, pos: int,
                            budget: int, whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        """Records of one stream with end in (max(pos, lo), hi], as (start, data).

        Stops once ``budget`` bytes are gathered (at least one record). Returns
        the records and whether it stopped for the budget.
        """

    async def read(self, state: StreamState, pos: int, max_bytes: int,
                   *, whole: bool | None = None) -> ReadChunk:
        """Committed data from ``pos``, at most ``max_bytes`` (at least one record).

        Byte streams may start or stop inside a record; JSON records are never
        cut, because a fragment is only meaningful whole.
        """
        if whole is None:
            whole = is_json(state.content_type)
        parts: list[bytes] = []
        next_pos = pos
        budget = max_bytes
        tail = state.tail
        for seg in self.segments(state):
            seg_end = min(seg.hi, tail)
            if seg_end <= next_pos:
                continue
            records, stopped = await self._read_records(
                seg.stream_id, seg.lo, seg_end, next_pos, budget, whole)
            for start, data in records:
                end = start + len(data)
                if start < next_pos:
                    if whole:
                        # An offset inside a JSON append: that append is skipped whole.
                        next_pos = end
                        continue
                    data = data[next_pos - start:]
                if not whole and len(data) > budget:
                    data = data[:budget]
                    end = next_pos + budget
                parts.append(data)
                budget -= len(data)
                next_pos = end
                if budget <= 0:
                    return ReadChunk(parts, next_pos)
            if stopped:
                return ReadChunk(parts, next_pos)
            if next_pos < seg_end and not whole:
                # A fork inherits up to an offset inside one of the source's appends
                # (a chunked read can hand out such offsets): the covering record
                # ends past this stretch, so take its head up to the boundary.
                covering, _ = await self._read_records(
                    seg.stream_id, seg_end, UNBOUNDED, seg_end, 1, False)
                if covering and covering[0][0] <= next_pos:
                    start, data = covering[0]
                    piece = data[next_pos - start:seg_end - start][:budget]
                    parts.append(piece)
                    budget -= len(piece)
                    next_pos += len(piece)
                    if budget <= 0:
                        return ReadChunk(parts, next_pos)
            if next_pos < seg_end:
                # Still short: a fork made at an offset the server never issued
                # (8 leaves it undefined). Step over the gap so readers always move.
                next_pos = seg_end
        return ReadChunk(parts, max(next_pos, pos))

    async def wait(self, stream_id: int, timeout: float) -> bool:
        """Wait until the stream changes (append, close, delete); False on timeout."""
        fut = self.notifier.future(stream_id)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        return True

    # -- helpers for backends ----------------------------------------------
    async def create_prefix(self, path: str, req: CreateRequest) -> bytes:
        """4.2: what a sub-offset fork about to be created at ``path`` inherits, or b"".

        The inherited part of the source's next append is committed data, immutable
        by position, so a backend may read it before it decides on the create;
        the decision (plan_create) still checks the source and the offset.
        """
        if req.forked_from is None or not req.fork_sub:
            return b""
        source = self.get(req.forked_from)
        if source is None or source.soft_deleted:
            return b""
        pos = source.tail if req.fork_pos is None else req.fork_pos
        if pos > source.tail or self.get(path) is not None:
            return b""
        return await self.fork_prefix(source, pos, req.fork_sub)

    async def fork_prefix(self, source: StreamState, fork_pos: int, sub: int) -> bytes:
        """4.2: the part of the source's next append that a sub-offset fork inherits."""
        chunk = await self.read(source, fork_pos, 1, whole=True)
        if not chunk.parts:
            raise ProtocolError(400, "Stream-Fork-Sub-Offset points past the source's data")
        first = chunk.parts[0]
        if is_json(source.content_type):
            return await fragment_prefix(first, sub)
        if sub > len(first):
            raise ProtocolError(400, "Stream-Fork-Sub-Offset is past the next append")
        return first[:sub]
