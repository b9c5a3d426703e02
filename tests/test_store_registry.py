"""The registry and producer state at the store level, on both backends.

Registry events are written by the store inside the commit of the change they
record (create, delete, expiry, soft delete, cascade); a registry that
disagrees with the stream table is repaired at startup. Producer state costs
O(1) per append in the number of producers, and expires after --producer-ttl.
The tests drive the real stores in process (the SQLite one on a real file).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

import duralog.protocol.state as state_module
from duralog.protocol.headers import Producer
from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.store import registry as reg
from duralog.store.base import Store
from duralog.store.memory import MemoryStore
from duralog.store.sqlite import DB_NAME, SQLiteStore

JSON = "application/json"
TEXT = "text/plain"


def make(kind: str, tmp_path: Path, registry: bool = True) -> Store:
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "data")
    store.registry = reg.REGISTRY if registry else None
    return store


async def registry_live(store: Store) -> dict[str, dict]:
    state = store.get(reg.REGISTRY)
    assert state is not None
    parts: list[bytes] = []
    pos = 0
    while pos < state.tail:
        chunk = await store.read(state, pos, 1 << 20, whole=True)
        parts.extend(chunk.parts)
        pos = chunk.next_pos
    return reg.replay(parts)


def live_paths(store: Store) -> set[str]:
    return {s.path for s in store.list_states() if s.path != reg.REGISTRY}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_registry_records_every_change_with_it(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        store = make(kind, tmp_path)
        await store.start()
        try:
            for name in ("a", "b", "c"):
                await store.create(name, CreateRequest(content_type=TEXT), b"x")
            # A fork keeps its deleted source as a soft-deleted stream (4.2).
            await store.create("f", CreateRequest(content_type=None, forked_from="a"), None)
            await store.delete("a")  # soft delete
            await store.delete("b")
            await store.create("t", CreateRequest(content_type=TEXT,
                                                  expires_ts=time.time() + 0.3), None)
            assert set(await registry_live(store)) == {"c", "f", "t"}
            await asyncio.sleep(0.4)
            await store.sweep_expired()  # expiry
            for _ in range(50):
                if store._state("t") is None:
                    break
                await asyncio.sleep(0.05)
            await store.delete("f")  # cascade: drops the soft-deleted "a" too
            assert store._state("a") is None
            live = await registry_live(store)
            assert set(live) == live_paths(store) == {"c"}
            assert live["c"]["contentType"] == TEXT
        finally:
            await store.stop()
        if kind == "sqlite":
            again = make(kind, tmp_path)
            await again.start()
            try:
                assert set(await registry_live(again)) == live_paths(again) == {"c"}
                # Nothing needed repairing: every event committed with its change.
                assert await again._open_registry() == 0
            finally:
                await again.stop()

    asyncio.run(main())


def test_registry_is_repaired_at_startup(tmp_path: Path) -> None:
    """A database whose registry missed events (as older versions could leave it)."""
    async def main() -> None:
        store = make("sqlite", tmp_path, registry=False)
        await store.start()
        await store.create(reg.REGISTRY, CreateRequest(content_type=JSON), None)
        for name in ("kept", "gone"):
            await store.create(name, CreateRequest(content_type=TEXT), None)
        # The registry lists a stream that no longer exists, and misses both above.
        stale = reg.encode_events([{"type": "stream", "key": "ghost",
                                    "headers": {"operation": "insert"}, "value": {}}])
        await store.append(reg.REGISTRY, AppendRequest(payload=stale, content_type=JSON))
        await store.delete("gone")
        await store.stop()

        store = make("sqlite", tmp_path)
        await store.start()
        try:
            live = await registry_live(store)
            assert set(live) == live_paths(store) == {"kept"}
            assert await store._open_registry() == 0  # repaired once, agrees since
        finally:
            await store.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------
# Producer state


def seed_producers(data_dir: Path, stream_path: str, count: int, last_used: float) -> None:
    """Give a stream ``count`` producers directly in the database (fast setup)."""
    with closing(sqlite3.connect(data_dir / DB_NAME)) as con:
        (stream_id,) = con.execute("SELECT id FROM streams WHERE path = ?",
                                   (stream_path,)).fetchone()
        con.executemany("INSERT INTO producers VALUES (?, ?, 0, 0, ?)",
                        ((stream_id, f"p{i}", last_used) for i in range(count)))
        con.commit()


class Counted(state_module.ProducerState):
    """ProducerState that counts its constructions (copies of a producer table show up)."""

    made = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        Counted.made += 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


async def append_work(store: Store, path: str, seq: int) -> tuple[int, int]:
    """(ProducerState objects made, rows the writer changed) for one producer append."""
    before_rows = store._con.total_changes if isinstance(store, SQLiteStore) else 0
    Counted.made = 0
    decision, _ = await store.append(path, AppendRequest(
        payload=b"y", content_type=TEXT, producer=Producer("writer", 0, seq)))
    assert decision.write, decision
    rows = store._con.total_changes - before_rows if isinstance(store, SQLiteStore) else 0
    return Counted.made, rows


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_append_work_does_not_grow_with_producers(kind: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An append touches one producer's state: the same work with 0 or 100,000 producers."""
    monkeypatch.setattr(state_module, "ProducerState", Counted)
    n = 100_000

    async def main() -> list[tuple[int, int]]:
        store = make(kind, tmp_path, registry=False)
        await store.start()
        await store.create("few", CreateRequest(content_type=TEXT), None)
        await store.create("many", CreateRequest(content_type=TEXT), None)
        if kind == "memory":
            many = store.get("many")
            assert many is not None
            many.producers.update({f"p{i}": Counted(0, 0, time.time()) for i in range(n)})
        else:
            await store.stop()
            seed_producers(tmp_path / "data", "many", n, time.time())
            store = make(kind, tmp_path, registry=False)
            await store.start()
        try:
            work = []
            for path in ("few", "many"):
                for seq in range(3):
                    work.append(await append_work(store, path, seq))
            return work
        finally:
            await store.stop()

    work = asyncio.run(main())
    few, many = work[:3], work[3:]
    assert few == many, (few, many)
    # One new ProducerState per accepted append, and (sqlite) a handful of rows:
    # the record, the stream row and the producer row.
    assert all(made == 1 for made, _ in many)
    if kind == "sqlite":
        assert all(rows <= 3 for _, rows in many), many


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_unused_producer_state_expires(kind: str, tmp_path: Path) -> None:
    """5.2.1: after --producer-ttl the producer is treated as new."""
    async def main() -> None:
        store = make(kind, tmp_path, registry=False)
        store.producer_ttl = 3600
        await store.start()
        try:
            await store.create("s", CreateRequest(content_type=TEXT), None)
            for seq in range(2):
                d, _ = await store.append("s", AppendRequest(
                    payload=b"a", content_type=TEXT, producer=Producer("old", 0, seq)))
                assert d.write
            await store.append("s", AppendRequest(
                payload=b"b", content_type=TEXT, producer=Producer("fresh", 0, 0)))
            # Nothing is older than an hour yet.
            assert await store.sweep_producers(time.time() - 3600) == 0
            state = store.get("s")
            assert state is not None
            state_old = state.producers["old"]
            state_old.last_used -= 7200  # "old" was last used two hours ago
            if isinstance(store, SQLiteStore):
                store._con.execute("UPDATE producers SET last_used = last_used - 7200 "
                                   "WHERE producer = 'old'")
            assert await store.sweep_producers(time.time() - 3600) == 1
            # "old" starts over: seq 0 is new data, not a duplicate; "fresh" is kept.
            d, _ = await store.append("s", AppendRequest(
                payload=b"c", content_type=TEXT, producer=Producer("old", 0, 0)))
            assert d.write and d.status == 200
            d, _ = await store.append("s", AppendRequest(
                payload=b"b", content_type=TEXT, producer=Producer("fresh", 0, 0)))
            assert not d.write and d.status == 204
        finally:
            await store.stop()
        if isinstance(store, SQLiteStore):
            with closing(sqlite3.connect(tmp_path / "data" / DB_NAME)) as con:
                rows = con.execute("SELECT producer, last_seq FROM producers").fetchall()
            assert sorted(rows) == [("fresh", 0), ("old", 0)]

    asyncio.run(main())


