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
import logging
import time
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from ..offload import fragment_prefix
from ..protocol.errors import ProtocolError
from ..protocol.headers import is_json
from ..protocol.state import AppendDecision, AppendRequest, CreateRequest, StreamState
from . import registry as reg
from .plans import gone_before

UNBOUNDED = 1 << 62

log = logging.getLogger("duralog.store")

#: PROTOCOL.md 5.2.1 (producer state cleanup): producer state unused for this
#: long is dropped; a producer that comes back later is treated as new.
DEFAULT_PRODUCER_TTL = 7 * 86400.0
#: How often the background sweep looks for expired producer state (seconds).
PRODUCER_SWEEP_INTERVAL = 60.0


class StaleState(ProtocolError):
    """The stream at a path is not the one an append was prepared for (another node
    deleted and re-created it): look the path up again (``fresh``) and redo."""

    def __init__(self) -> None:
        super().__init__(503, "the stream changed while the append was prepared; retry")


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

    __slots__ = ("_waiters", "observers")

    def __init__(self) -> None:
        self._waiters: dict[int, _Waiters] = {}
        #: Called with the stream id after every committed change (append, create,
        #: close, delete), on the event loop; must be quick and must not raise.
        #: Subscriptions (PROTOCOL.md 7) learn of appends this way on every backend.
        self.observers: list[Callable[[int], None]] = []

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
        self._resolve(stream_id)
        for observer in self.observers:
            observer(stream_id)

    def _resolve(self, stream_id: int) -> None:
        waiters = self._waiters.pop(stream_id, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def wake_all(self) -> None:
        for stream_id in list(self._waiters):
            self._resolve(stream_id)


class Store(ABC):
    """Streams by path (relative to the stream root), with their state and records."""

    #: Changes when the store's identity changes; part of every ETag so a
    #: recreated store never answers 304 for another store's bytes.
    instance_tag: str = "0"

    def __init__(self) -> None:
        self.notifier = Notifier()
        #: The registry stream's path, or None for no registry. Set before start();
        #: the store then writes each create/delete event in the same commit.
        self.registry: str | None = None
        #: Seconds of disuse after which a producer's state is dropped (5.2.1).
        self.producer_ttl: float = DEFAULT_PRODUCER_TTL
        self._producers_swept = 0.0
        #: Called with each stream the store removes on its own (expiry), after the
        #: commit (the registry event is already part of it; this is for observers).
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

    def state_by_id(self, stream_id: int) -> StreamState | None:
        """The committed state with this id (what a notifier observer is told), or None."""
        return self._by_id.get(stream_id)

    def all_states(self) -> list[StreamState]:
        """Every stream the store holds, soft-deleted and expired ones included."""
        return list(self._by_path.values())

    def list_states(self) -> list[StreamState]:
        """Every live stream: not soft-deleted, not expired."""
        now = time.time()
        return [s for s in self.all_states() if not s.soft_deleted and not s.is_expired(now)]

    async def fresh(self, path: str) -> StreamState | None:
        """``get``, after making sure the answer is the database's current truth.

        Requests call this first. A backend whose database other server nodes
        write too (postgres) reads the stream's row here and updates its cache;
        a single-process backend's cache is the truth, so this is ``get``.
        """
        return self.get(path)

    #: Whether ``get`` may lag the database (other processes write it too). When
    #: False, ``fresh`` is ``get`` and the cache is the truth.
    shared = False

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
        """Remove every expired stream (4); returns how many. Run in the background.

        Also drops producer state older than ``producer_ttl`` (5.2.1), at most
        once every PRODUCER_SWEEP_INTERVAL seconds.
        """
        now = time.time()
        expired = [s for s in self.all_states() if not s.soft_deleted and s.is_expired(now)]
        for state in expired:
            self._expire(state)
        await self._maybe_sweep_producers(now)
        return len(expired)

    async def _maybe_sweep_producers(self, now: float) -> None:
        if now - self._producers_swept >= PRODUCER_SWEEP_INTERVAL:
            self._producers_swept = now
            await self.sweep_producers(now - self.producer_ttl)

    async def sweep_producers(self, cutoff: float) -> int:
        """Drop producer state last used before ``cutoff``; returns how many entries."""
        dropped = 0
        for state in self.all_states():
            old = [k for k, p in state.producers.items() if p.last_used < cutoff]
            for key in old:
                del state.producers[key]
            dropped += len(old)
        return dropped

    # -- the registry ------------------------------------------------------
    async def _open_registry(self) -> int:
        """Create the registry if it is missing, then repair it; returns events appended.

        A registry that disagrees with the stream table (a database written by
        a version that committed registry events separately) gets the missing
        events appended, so it lists exactly the streams that exist.
        """
        name = self.registry
        if name is None:
            return 0
        state = self.get(name)
        if state is None:
            state, _ = await self.create(name, CreateRequest(
                content_type=reg.REGISTRY_CONTENT_TYPE), None)
        if not reg.can_record(state):
            return 0
        fragments: list[bytes] = []
        pos = state.start
        try:
            while pos < state.tail:
                chunk = await self.read(state, pos, 1 << 20, whole=True)
                fragments.extend(chunk.parts)
                if chunk.next_pos <= pos:
                    break
                pos = chunk.next_pos
            live = reg.replay(fragments)
        except (ProtocolError, ValueError) as exc:
            # Damaged registry data: serve the streams anyway; `duralog check` reports it.
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc)
            log.error("cannot verify the registry against the streams: %s", reason)
            return 0
        streams = [s for s in self.all_states() if not s.soft_deleted]
        events = reg.missing_events(live, streams, name)
        if events:
            await self.append(name, AppendRequest(payload=reg.encode_events(events),
                                                  content_type=reg.REGISTRY_CONTENT_TYPE))
        return len(events)

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
        current = self._state_by_id(state.id)
        if current is not None and current.start > state.start:
            state = current  # retention moved the start since this reader's snapshot
        if pos < state.start:
            raise gone_before(state)  # retention dropped it (store/retention.py)
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


class WriterQueued(Store):
    """What the backends whose changes commit on a writer (sqlite, postgres) share:
    an expired stream leaves ``get`` at once while its removal is queued to the
    writer, and sliding-TTL clocks are collected to be written in the background."""

    _touched: set[int]

    def get(self, path: str) -> StreamState | None:
        # 4: an expired stream is gone at once; its removal is committed by the
        # writer (queued by _expire), exactly as the memory store's get() leaves it.
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
