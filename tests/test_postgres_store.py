"""PostgresStore against a real PostgreSQL, through the Store interface (no server).

The schema and its migration record, large appends stored as pieces and read
back whole or sliced, paged catch-up reads, checksums (a damaged row is never
served), forks, retention, two stores over one database seeing each other's
commits, and group commit (concurrent appends share transactions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from duralog.protocol.errors import ProtocolError
from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.store.postgres import PostgresStore
from duralog.store.postgres.schema import LATEST
from duralog.store.sqlite.batch import PIECE

TEXT = "text/plain"


def run(pg_db: str, body: Callable[..., Awaitable[Any]], stores: int = 1) -> Any:
    async def main() -> Any:
        opened = [PostgresStore(pg_db) for _ in range(stores)]
        for store in opened:
            store.registry = "__registry__"
            await store.start()
        try:
            return await body(*opened)
        finally:
            for store in opened:
                await store.stop()
    return asyncio.run(main())


async def read_all(store: PostgresStore, path: str, budget: int = 1 << 20) -> bytes:
    state = await store.fresh(path)
    assert state is not None
    pos, parts = state.start, []
    while pos < state.tail:
        chunk = await store.read(state, pos, budget)
        parts.extend(chunk.parts)
        assert chunk.next_pos > pos
        pos = chunk.next_pos
    return b"".join(parts)


def test_schema_is_created_and_recorded(pg_db: str) -> None:
    async def body(store: PostgresStore) -> None:
        con = await asyncpg.connect(pg_db)
        try:
            versions = [r[0] for r in await con.fetch("SELECT version FROM schema_migrations")]
            tag = await con.fetchval("SELECT value FROM meta WHERE key = 'instance_tag'")
        finally:
            await con.close()
        assert versions == list(range(1, LATEST + 1))
        assert store.instance_tag == tag
    run(pg_db, body)
    run(pg_db, body)  # a second start migrates nothing and keeps the instance tag


def test_large_appends_pieces_and_paged_reads(pg_db: str) -> None:
    big = bytes(range(256)) * ((3 * PIECE) // 256 + 7)  # four pieces

    async def body(store: PostgresStore) -> None:
        await store.create("b", CreateRequest(content_type=TEXT), None)
        small = [f"<{i}>".encode() for i in range(300)]
        for data in small:
            await store.append("b", AppendRequest(payload=data, content_type=TEXT))
        await store.append("b", AppendRequest(payload=big, content_type=TEXT))
        want = b"".join(small) + big
        assert await read_all(store, "b") == want
        assert await read_all(store, "b", budget=1000) == want  # many paged reads
        state = store.get("b")
        assert state is not None
        # A slice from inside the big append, as a byte stream allows.
        start = len(b"".join(small)) + PIECE + 5
        chunk = await store.read(state, start, 100)
        assert b"".join(chunk.parts) == want[start:start + 100]
    run(pg_db, body)


def test_damaged_record_is_never_served(pg_db: str) -> None:
    async def body(writer: PostgresStore, store: PostgresStore) -> None:
        # Written through one store, read through another: the reader's tail cache
        # does not hold the record, so it comes from the database.
        await writer.create("d", CreateRequest(content_type=TEXT), b"good data")
        con = await asyncpg.connect(pg_db)
        try:
            await con.execute("UPDATE records SET data = 'evil data' WHERE end_pos = 9")
        finally:
            await con.close()
        state = await store.fresh("d")
        assert state is not None
        with pytest.raises(ProtocolError) as err:
            await store.read(state, 0, 1 << 20)
        assert err.value.status == 500
        assert "failed its checksum" in err.value.reason
        assert store.counters["checksum_errors"] == 1
    run(pg_db, body, stores=2)


def test_forks_and_soft_delete(pg_db: str) -> None:
    async def body(store: PostgresStore) -> None:
        await store.create("src", CreateRequest(content_type=TEXT), b"hello ")
        await store.create("f", CreateRequest(content_type=None, forked_from="src"), None)
        await store.append("f", AppendRequest(payload=b"fork", content_type=TEXT))
        await store.append("src", AppendRequest(payload=b"source", content_type=TEXT))
        assert await read_all(store, "f") == b"hello fork"
        assert await read_all(store, "src") == b"hello source"
        await store.delete("src")  # a fork still reads it: soft-deleted (4.2)
        src = await store.fresh("src")
        assert src is not None and src.soft_deleted
        assert await read_all(store, "f") == b"hello fork"
        await store.delete("f")  # the last fork goes, and the source with it
        assert await store.fresh("src") is None
        assert await store.fresh("f") is None
    run(pg_db, body)


def test_retention_by_bytes(pg_db: str) -> None:
    async def body(store: PostgresStore) -> None:
        await store.create("r", CreateRequest(content_type=TEXT, retention_bytes=10), None)
        for i in range(10):
            await store.append("r", AppendRequest(payload=f"{i:04d}".encode(), content_type=TEXT))
        state = await store.fresh("r")
        assert state is not None and state.tail == 40
        assert state.start == 32  # the newest appends up to 10 bytes, whole
        assert await read_all(store, "r") == b"00080009"
    run(pg_db, body)


def test_two_stores_one_database(pg_db: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.create("x", CreateRequest(content_type=TEXT), b"1")
        assert (await b.fresh("x")) is not None
        sid = b.get("x").id  # type: ignore[union-attr]

        async def until_tail(n: int) -> None:
            # Wakes may come early (they are hints); each must come within 30 s, and
            # b's cache must reach the tail through LISTEN/NOTIFY alone.
            while b.get("x").tail < n:  # type: ignore[union-attr]
                assert await b.wait(sid, 30)
        waiter = asyncio.ensure_future(until_tail(2))
        await asyncio.sleep(0.1)
        await a.append("x", AppendRequest(payload=b"2", content_type=TEXT))
        await waiter
        # Concurrent appends through both stores: every one lands once.
        reqs = [(a if i % 2 else b).append("x", AppendRequest(payload=b"z", content_type=TEXT))
                for i in range(200)]
        results = await asyncio.gather(*reqs)
        ends = sorted(int(d.headers["stream-next-offset"].split("_")[1]) for d, _ in results)
        assert ends == list(range(3, 203))  # no gap, no duplicate
        assert await read_all(a, "x") == b"12" + b"z" * 200
    run(pg_db, body, stores=2)


def test_group_commit_shares_transactions(pg_db: str) -> None:
    async def body(store: PostgresStore) -> None:
        for i in range(20):
            await store.create(f"g{i}", CreateRequest(content_type=TEXT), None)
        before = store.counters["commits"]
        await asyncio.gather(*[
            store.append(f"g{i % 20}", AppendRequest(payload=b"x", content_type=TEXT))
            for i in range(400)])
        commits = store.counters["commits"] - before
        assert commits < 400  # the 400 appends were not committed one per transaction
        for i in range(20):
            assert await read_all(store, f"g{i}") == b"x" * 20
    run(pg_db, body)


def test_append_prepared_for_a_replaced_stream_is_refused(pg_db: str) -> None:
    """Another node deleted and re-created the path: an append prepared for the old
    stream (from a cached state) is refused with StaleState, never written into the
    new stream (whose content type may differ)."""
    from duralog.store.base import StaleState

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.create("r", CreateRequest(content_type=TEXT), b"old")
        old = await b.fresh("r")
        assert old is not None
        await a.delete("r")
        await a.create("r", CreateRequest(content_type="application/json"), None)
        with pytest.raises(StaleState):
            await b.append("r", AppendRequest(payload=b"x", content_type=TEXT,
                                              stream_id=old.id))
        new = await b.fresh("r")
        assert new is not None and new.id != old.id and new.tail == 0
    run(pg_db, body, stores=2)


def test_tail_cache_keeps_only_gapless_runs() -> None:
    from duralog.store.tails import TailCache

    cache = TailCache()
    cache.add(1, 3, b"abc")
    cache.add(1, 5, b"de")
    tail = cache.get(1)
    assert tail is not None and (tail.start, tail.ends) == (0, [3, 5])
    cache.add(1, 5, b"de")  # known already: nothing changes
    assert tail.ends == [3, 5]
    cache.add(1, 9, b"xy")  # starts at 7, not 5: another node's records in between
    tail = cache.get(1)
    assert tail is not None and (tail.start, tail.ends, tail.datas) == (7, [9], [b"xy"])
    cache.add(1, 1 << 20, None)  # too large to keep: the entry restarts after it
    tail = cache.get(1)
    assert tail is not None and (tail.start, tail.ends) == (1 << 20, [])
    cache.drop(1)
    assert cache.get(1) is None and cache.nbytes == 0


def test_background_sweep_reclaims_and_drops_old_producers(pg_db: str) -> None:
    from duralog.protocol.headers import Producer

    async def body(store: PostgresStore) -> None:
        await store.create("gone", CreateRequest(content_type=TEXT), b"x" * 1000)
        gone = store.get("gone")
        assert gone is not None
        await store.create("kept", CreateRequest(content_type=TEXT), None)
        await store.append("kept", AppendRequest(payload=b"p", content_type=TEXT,
                                                 producer=Producer("w", 0, 0)))
        await store.delete("gone")
        store.producer_ttl = 0.0  # every producer is old
        store._producers_swept = 0.0
        await store.sweep_expired()
        con = await asyncpg.connect(pg_db)
        try:
            assert await con.fetchval("SELECT count(*) FROM records WHERE stream = $1",
                                      gone.id) == 0
            assert await con.fetchval("SELECT count(*) FROM garbage") == 0
            assert await con.fetchval("SELECT count(*) FROM producers") == 0
        finally:
            await con.close()
        assert store.counters["streams_reclaimed"] == 1
        assert store.counters["producers_dropped"] == 1
    run(pg_db, body)
