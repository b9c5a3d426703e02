"""Retention (an extension; PROTOCOL.md 4 allows dropping old data).

A property test drives both stores with random appends, forks and reads of a
stream with Stream-Retention-Bytes and compares every answer with a model;
server tests check the headers (PUT validation, HEAD echo), 410 with
Stream-Earliest-Offset, offset=-1, retention by age, and forks across a
trimmed range.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duralog.protocol.errors import ProtocolError
from duralog.protocol.offsets import format_offset
from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.store.base import Store
from duralog.store.memory import MemoryStore
from duralog.store.sqlite import SQLiteStore

from .servers import duralog_server, read_all

TEXT = "text/plain"


class Model:
    """What a stream with byte retention holds: appends as (start, data), and its start."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.appends: list[tuple[int, bytes]] = []
        self.start = 0
        self.tail = 0

    def append(self, data: bytes) -> None:
        self.appends.append((self.tail, data))
        self.tail += len(data)
        # Drop the oldest whole appends while over the limit, never the newest.
        kept = [a for a in self.appends if a[0] >= self.start]
        while self.tail - self.start > self.limit and len(kept) > 1:
            self.start = kept[1][0]
            kept = kept[1:]

    def read(self, pos: int) -> bytes | None:
        """The bytes from ``pos`` to the tail, or None for 410."""
        if pos < self.start:
            return None
        return b"".join(d for _, d in self.appends)[pos:]


async def read_from(store: Store, path: str, pos: int | None) -> bytes | int:
    state = store.get(path)
    assert state is not None
    if pos is None:
        pos = state.start  # offset=-1
    out = b""
    try:
        while pos < state.tail:
            chunk = await store.read(state, pos, 7)
            out += b"".join(chunk.parts)
            pos = chunk.next_pos
    except ProtocolError as err:
        assert err.headers["stream-earliest-offset"] == format_offset(state.start)
        return err.status
    return out


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("read"), st.integers(0, 400)),
    st.tuples(st.just("fork"), st.integers(0, 400)),
), min_size=1, max_size=40)


async def run_ops(store: Store, limit: int, steps: list[tuple[str, object]]) -> None:
    model = Model(limit)
    await store.start()
    try:
        await store.create("s", CreateRequest(content_type=TEXT, retention_bytes=limit), None)
        forks: list[tuple[str, bytes, int]] = []  # (path, expected bytes from its start, start)
        for i, (op, arg) in enumerate(steps):
            if op == "append":
                assert isinstance(arg, bytes)
                await store.append("s", AppendRequest(payload=arg, content_type=TEXT))
                model.append(arg)
                state = store.get("s")
                assert state is not None and (state.start, state.tail) == (model.start,
                                                                           model.tail)
            elif op == "read":
                assert isinstance(arg, int)
                pos = min(arg, model.tail)
                want = model.read(pos)
                got = await read_from(store, "s", pos)
                assert got == (410 if want is None else want), (pos, model.start)
                assert await read_from(store, "s", None) == model.read(model.start)
            else:
                # Fork at an append boundary at or after the start (or get 410 before it).
                assert isinstance(arg, int)
                bounds = [a[0] for a in model.appends] + [model.tail]
                fork_pos = min(bounds, key=lambda b: abs(b - arg))
                path = f"f{i}"
                req = CreateRequest(content_type=None, forked_from="s", fork_pos=fork_pos)
                if fork_pos < model.start:
                    with pytest.raises(ProtocolError) as info:
                        await store.create(path, req, None)
                    assert info.value.status == 410
                    continue
                await store.create(path, req, None)
                whole = model.read(model.start)
                assert whole is not None
                forks.append((path, whole[:fork_pos - model.start], model.start))
            # Forks keep what they reference, however far the source trims.
            for path, want, start in forks:
                assert await read_from(store, path, None) == want
                if start > 0:
                    assert await read_from(store, path, start - 1) == 410
    finally:
        await store.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 100), steps=ops)
def test_retention_matches_the_model_memory(limit: int, steps: list) -> None:
    asyncio.run(run_ops(MemoryStore(), limit, steps))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 100), steps=ops)
def test_retention_matches_the_model_sqlite(limit: int, steps: list) -> None:
    tmp = tempfile.mkdtemp()
    try:
        asyncio.run(run_ops(SQLiteStore(Path(tmp) / "data"), limit, steps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Over HTTP


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_headers_410_and_offset_minus_one(backend: str, tmp_path: Path) -> None:
    server = duralog_server(backend, data_dir=tmp_path / "data").start()
    try:
        base = server.url + "/v1/stream/"
        text = {"content-type": TEXT}
        for bad in ("0", "-1", "x", "1.5"):
            r = httpx.put(base + "bad", headers={**text, "stream-retention-bytes": bad})
            assert r.status_code == 400, (bad, r.status_code)
        r = httpx.put(base + "log", headers={**text, "stream-retention-bytes": "10"})
        assert r.status_code == 201
        # A repeat PUT must match the retention too (5.1: same configuration).
        assert httpx.put(base + "log", headers={**text, "stream-retention-bytes": "10"}
                         ).status_code == 200
        assert httpx.put(base + "log", headers=text).status_code == 409
        offsets = []
        for i in range(5):
            r = httpx.post(base + "log", content=f"line{i}\n".encode(), headers=text)
            offsets.append(r.headers["stream-next-offset"])
        head = httpx.head(base + "log")
        assert head.headers["stream-retention-bytes"] == "10"
        # Each append is 6 bytes: the newest one and nothing before (12 > 10).
        assert head.headers["stream-earliest-offset"] == offsets[3]
        assert read_all(base + "log") == b"line4\n"
        r = httpx.get(base + "log", params={"offset": offsets[0]})
        assert r.status_code == 410
        assert r.headers["stream-earliest-offset"] == offsets[3]
        assert "stream-earliest-offset" in r.headers["access-control-expose-headers"].lower()
        r = httpx.get(base + "log", params={"offset": offsets[3]})
        assert (r.status_code, r.content) == (200, b"line4\n")
        # Offsets never change: the next append ends where it would have anyway.
        r = httpx.post(base + "log", content=b"line5\n", headers=text)
        assert int(r.headers["stream-next-offset"][17:]) == 36
    finally:
        server.stop()


def test_retention_by_age_and_forks_across_a_trimmed_range(tmp_path: Path) -> None:
    server = duralog_server("sqlite", data_dir=tmp_path / "data")
    server.env = {"DURALOG_SWEEP_INTERVAL": "0.2"}
    server.start()
    try:
        base = server.url + "/v1/stream/"
        text = {"content-type": TEXT}
        assert httpx.put(base + "aged", headers={**text, "stream-retention-seconds": "1"}
                         ).status_code == 201
        assert httpx.head(base + "aged").headers["stream-retention-seconds"] == "1"
        httpx.post(base + "aged", content=b"old\n", headers=text)
        assert httpx.put(base + "fork", headers={"stream-forked-from": "/v1/stream/aged"}
                         ).status_code == 201
        r = httpx.post(base + "aged", content=b"new\n", headers=text)
        tail = r.headers["stream-next-offset"]
        # Both appends get older than a second; the sweep drops them (no timing asserted:
        # we wait for it, however long the machine takes).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if httpx.head(base + "aged").headers.get("stream-earliest-offset") == tail:
                break
            time.sleep(0.1)
        assert httpx.head(base + "aged").headers["stream-earliest-offset"] == tail
        assert read_all(base + "aged") == b""
        r = httpx.get(base + "aged", params={"offset": format_offset(4)})
        assert r.status_code == 410 and r.headers["stream-earliest-offset"] == tail
        # The fork still reads what it inherited, across the source's trimmed range.
        assert read_all(base + "fork") == b"old\n"
        server.kill()
        server.start()
        assert read_all(base + "fork") == b"old\n"
        assert httpx.get(base + "aged", params={"offset": "-1"}).content == b""
        fork_at = tail
        # A fork at a dropped offset is refused.
        r = httpx.put(base + "late", headers={"stream-forked-from": "/v1/stream/aged",
                                              "stream-fork-offset": format_offset(0)})
        assert r.status_code == 410 and r.headers["stream-earliest-offset"] == fork_at
    finally:
        server.stop()



@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_reader_holding_an_old_snapshot_gets_410_not_a_skip(kind: str, tmp_path: Path
                                                             ) -> None:
    """Live readers keep the state they started with; once retention moves the start
    past their position, the next read answers 410 instead of skipping data."""
    async def main() -> None:
        store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "d")
        await store.start()
        try:
            await store.create("s", CreateRequest(content_type=TEXT, retention_bytes=4), None)
            await store.append("s", AppendRequest(payload=b"aaaa", content_type=TEXT))
            snapshot = store.get("s")
            assert snapshot is not None and snapshot.start == 0
            await store.append("s", AppendRequest(payload=b"bbbb", content_type=TEXT))
            with pytest.raises(ProtocolError) as info:
                await store.read(snapshot, 0, 100)
            assert info.value.status == 410
            assert info.value.headers["stream-earliest-offset"] == format_offset(4)
        finally:
            await store.stop()

    asyncio.run(main())
