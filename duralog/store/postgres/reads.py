"""Reads for the postgres backend: the tail cache first, then the database in pages.

``PgReads`` is mixed into PostgresStore. A read at a stream's tail is served
from the node's tail cache (tails.py) when it holds the range; otherwise the
records come from the database, a page of rows at a time, every row's
checksum verified (the SQLite backend's checksum), until the read's budget is
met: a catch-up read never loads more of a stream than it answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg

from ...protocol.errors import ProtocolError
from ...protocol.offsets import format_offset
from ..base import scan_records
from ..sqlite.batch import HEAD
from ..sqlite.batch import MORE as _MORE
from ..sqlite.schema import record_checksum
from ..tails import TailCache
from .schema import is_connection_error

log = logging.getLogger("duralog.postgres")

#: Rows the first query of a read fetches; later pages are sized from the rows
#: seen so far to fill the rest of the budget (at most READ_MAX_ROWS), so a read
#: fetches about what it answers whether appends are 100 bytes or 256 KiB.
READ_FIRST_ROWS = 16
READ_MAX_ROWS = 4096


class CorruptRecord(Exception):
    def __init__(self, stream_id: int, start: int, reason: str) -> None:
        super().__init__(reason)
        self.stream_id, self.start, self.reason = stream_id, start, reason


class PgReads:
    """The read half of PostgresStore."""

    if TYPE_CHECKING:
        from ...protocol.state import StreamState

        _pool: asyncpg.Pool | None
        _tails: TailCache
        _fetch_locks: dict[int, asyncio.Lock]
        _by_id: dict[int, StreamState]
        counters: dict[str, int]

        async def _failed(self, exc: BaseException) -> ProtocolError: ...

    async def _read_records(self, stream_id: int, lo: int, hi: int, pos: int,
                            budget: int, whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        after = max(pos, lo)
        tail = self._tails.get(stream_id)
        if tail is None or after < tail.start:
            # Catch-up behind the cached tail: straight from the database; it seeds
            # the cache only for a stream that has none (tails.py).
            return await self._db_read(stream_id, after, hi, budget, whole, tail is None)
        if tail.end >= hi:
            return scan_records(tail.ends, tail.datas, after, hi, budget)
        # Newer records than the cache holds (another node committed them): one
        # reader of this stream fetches them, the others then read them from memory.
        lock = self._fetch_locks.get(stream_id)
        if lock is None:
            lock = self._fetch_locks[stream_id] = asyncio.Lock()
        try:
            async with lock:
                tail = self._tails.get(stream_id)
                if tail is not None and after >= tail.start and tail.end >= hi:
                    return scan_records(tail.ends, tail.datas, after, hi, budget)
                return await self._db_read(stream_id, after, hi, budget, whole, True)
        finally:
            if not lock.locked():
                self._fetch_locks.pop(stream_id, None)

    async def _db_read(self, stream_id: int, after: int, hi: int, budget: int, whole: bool,
                       populate: bool) -> tuple[list[tuple[int, bytes]], bool]:
        """Records with end in (after, hi], fetched a page of rows at a time until the
        budget is met: a catch-up read never loads more of a stream than it answers."""
        if self._pool is None:
            raise ProtocolError(503, "the store is not open (server starting or stopping)")
        out: list[tuple[int, bytes]] = []
        parts: list[bytes] | None = None
        cache = self._tails
        limit, seen_rows, seen_bytes = READ_FIRST_ROWS, 0, 0
        try:
            async with self._pool.acquire(timeout=10) as con:
                while True:
                    rows = await con.fetch(
                        "SELECT end_pos, kind, data, checksum FROM records WHERE stream = $1 "
                        "AND end_pos > $2 AND end_pos <= $3 ORDER BY end_pos LIMIT $4",
                        stream_id, after, hi, limit)
                    seen_rows += len(rows)
                    seen_bytes += sum(len(r[2]) for r in rows)
                    for end, kind, data, checksum in rows:
                        if checksum != record_checksum(stream_id, end, kind, data):
                            raise CorruptRecord(stream_id, end - len(data), "failed its checksum")
                        after = end
                        if populate:
                            if kind == HEAD:  # a whole append in one row
                                cache.add(stream_id, end, data)
                            elif not kind & _MORE:  # the last piece of a large append
                                cache.add(stream_id, end, None, start=end)
                        if whole:
                            # Reassemble an append stored as pieces; pieces of an append
                            # that began before the read's start are skipped.
                            if kind & HEAD:
                                parts = [data]
                            elif parts is None:
                                continue
                            else:
                                parts.append(data)
                            if kind & _MORE:
                                continue
                            data = parts[0] if len(parts) == 1 else b"".join(parts)
                            parts = None
                        out.append((end - len(data), data))
                        budget -= len(data)
                        if budget <= 0 and parts is None:
                            return out, True
                    if len(rows) < limit:
                        return out, False
                    average = max(1, seen_bytes // max(1, seen_rows))
                    limit = max(1, min(READ_MAX_ROWS, budget // average + 1))
                    if parts is not None:  # inside a large append: take its pieces on
                        limit = max(limit, READ_FIRST_ROWS)
        except CorruptRecord as exc:
            raise self._corrupt(exc) from None
        except ProtocolError:
            raise
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError):
                raise await self._failed(exc) from None
            raise

    def _corrupt(self, exc: CorruptRecord) -> ProtocolError:
        state = self._by_id.get(exc.stream_id)
        name = state.path if state is not None else f"#{exc.stream_id}"
        text = (f"stored data of stream {name!r} at offset {format_offset(exc.start)} "
                f"{exc.reason}; nothing was served")
        log.error("%s", text)
        self.counters["checksum_errors"] += 1
        return ProtocolError(500, text)
