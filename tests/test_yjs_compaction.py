"""Compaction (YJS-PROTOCOL.md 8): single flight, never in the way, and crash safety.

The crash test kills a real server process (SQLite backend) with SIGKILL at
random moments while updates stream in and compactions run back to back, then
restarts it and checks that the document loads to the content of every
acknowledged update, from the snapshot and from a full replay alike.
DURALOG_YJS_CRASH_ROUNDS sets the number of kills (3 by default; run 20+
before a release).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pycrdt
from prometheus_client import CollectorRegistry

from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.store import MemoryStore
from duralog.yjs.compaction import Compactor
from duralog.yjs.framing import frame, split_frames
from duralog.yjs.paths import DocStreams

from .test_yjs_server import OCTET, discover, load, make_updates, text_of
from .yjs_support import yjs_server


def test_one_compaction_per_document_at_a_time() -> None:
    import logging

    async def run() -> None:
        store = MemoryStore()
        registry = CollectorRegistry()
        compactor = Compactor(store, 100, logging.getLogger("test"), registry)
        compactor.step_delay = 0.2
        streams = DocStreams("svc", "doc")
        await store.create(streams.updates, CreateRequest(content_type="application/octet-stream"),
                           None)
        updates, text = make_updates(20)
        state = None
        for update in updates:
            _, state = await store.append(streams.updates, AppendRequest(payload=frame(update)))
        assert state is not None
        await asyncio.gather(*(compactor.after_append(streams, state) for _ in range(25)))
        info = compactor.docs[streams.key]
        first_task = info.task
        assert first_task is not None
        for _ in range(10):  # more triggers while it runs start nothing new
            await compactor.after_append(streams, state)
            assert info.task is first_task
        await first_task
        done = registry.get_sample_value("duralog_yjs_compactions_total", {"result": "ok"})
        assert done == 1
        assert info.snapshot is not None
        snaps = [s.path for s in store.list_states() if s.path.startswith(streams.snapshots_prefix)]
        assert snaps == [streams.snapshot(info.snapshot)]
        snapshot = b"".join((await store.read(store.get(snaps[0]), 0, 1 << 20)).parts)
        assert text_of(b"", snapshot=snapshot) == text
        # Below the threshold again: nothing starts.
        await compactor.after_append(streams, store.get(streams.updates))
        assert info.task is None

    asyncio.run(run())


def test_writers_and_readers_do_not_wait_for_compaction(tmp_path: Path) -> None:
    """A compaction held at its first step (a test gate file) blocks nobody."""
    gate = tmp_path / "gate"
    gate.touch()
    server = yjs_server("memory", compaction_bytes=300, log_path=tmp_path / "server.log",
                        env={"DURALOG_YJS_COMPACTION_GATE": str(gate)}).start()
    try:
        url = f"{server.url}/v1/yjs/svc/docs/slow"
        httpx.put(url)
        updates, text = make_updates(40)

        def count(result: str) -> float:
            metrics = httpx.get(f"{server.url}/metrics").text
            for line in metrics.splitlines():
                if line.startswith(f'duralog_yjs_compactions_total{{result="{result}"}}'):
                    return float(line.split()[-1])
            return 0.0

        for update in updates:
            assert httpx.post(url, content=frame(update), headers=OCTET).status_code == 204
        assert text_of(httpx.get(url, params={"offset": "-1"}).content) == text
        tail = httpx.head(url).headers["stream-next-offset"]
        long_poll = httpx.get(url, params={"offset": tail, "live": "long-poll"}, timeout=30)
        assert long_poll.status_code == 204
        # All of the above happened while the compaction was held: none has finished.
        assert discover(url) == "-1" and count("ok") == 0
        gate.unlink()
        deadline = time.monotonic() + 60
        while count("ok") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count("ok") >= 1
        assert load(url) == text
    finally:
        server.stop()


def _contains(stored: bytes, acked: list[bytes]) -> bool:
    """Whether the stored updates hold every acknowledged one (insert-only test data)."""
    have = pycrdt.Doc()
    for update in split_frames(stored):
        have.apply_update(update)
    want = pycrdt.Doc()
    for update in acked:
        want.apply_update(update)
    missing = want.get_update(have.get_state())
    return missing == b"\x00\x00"


def test_kill_during_compaction_leaves_a_document_that_loads(tmp_path: Path) -> None:
    rounds = int(os.environ.get("DURALOG_YJS_CRASH_ROUNDS", "3"))
    rng = random.Random(int(os.environ.get("DURALOG_YJS_CRASH_SEED", time.time_ns() % 10**6)))
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    pending: list[bytes] = []
    doc.observe(lambda e: pending.append(e.update))
    acked: list[bytes] = []
    for round_no in range(rounds):
        server = yjs_server("sqlite", data_dir=data, compaction_bytes=300, log_path=log, env={
            "DURALOG_YJS_COMPACTION_STEP_DELAY": str(rng.choice([0, 0.01, 0.05]))}).start()
        url = f"{server.url}/v1/yjs/svc/docs/crash/doc"
        assert httpx.put(url).status_code in (200, 201)
        stop = threading.Event()

        def write(url: str = url, stop: threading.Event = stop, round_no: int = round_no) -> None:
            with httpx.Client(timeout=5) as client:
                i = 0
                while not stop.is_set():
                    text.insert(rng.randrange(len(text) + 1), f"<{round_no}.{i}>")
                    update = pending.pop()
                    i += 1
                    try:
                        resp = client.post(url, content=frame(update), headers=OCTET)
                    except httpx.HTTPError:
                        return  # killed: this one may or may not be stored
                    if resp.status_code == 204:
                        acked.append(update)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(rng.uniform(0.3, 2.0))
        server.kill()
        stop.set()
        writer.join(10)
        server = yjs_server("sqlite", data_dir=data, compaction_bytes=300, log_path=log).start()
        url = f"{server.url}/v1/yjs/svc/docs/crash/doc"
        try:
            stored = httpx.get(url, params={"offset": "-1"}, timeout=30).content
            assert _contains(stored, acked), f"round {round_no}: an acknowledged update is lost"
            assert load(url) == text_of(stored), f"round {round_no}: snapshot load differs"
        finally:
            server.stop()
    # The index holds one entry per finished compaction, across all the rounds.
    server = yjs_server("sqlite", data_dir=data, log_path=log).start()
    try:
        index = httpx.get(f"{server.url}/v1/stream/yjs/svc/docs/crash/doc/.index",
                          params={"offset": "-1"}).json()
    finally:
        server.stop()
    assert len(index) >= 1, "no compaction ever finished: the test proves nothing"
    print(f"{rounds} kills, {len(index)} compactions finished, {len(acked)} updates acknowledged")


def test_idle_documents_are_forgotten_past_the_cache_limit(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import logging

    from duralog.yjs import compaction

    monkeypatch.setattr(compaction, "MAX_CACHED_DOCS", 3)

    async def run() -> None:
        store = MemoryStore()
        compactor = Compactor(store, 1 << 20, logging.getLogger("test"))
        for i in range(7):
            streams = DocStreams("svc", f"d{i}")
            state, _ = await store.create(streams.updates, CreateRequest(
                content_type="application/octet-stream"), None)
            await compactor.info(streams, state)
            assert len(compactor.docs) <= 3
        assert "svc/d6" in compactor.docs

    asyncio.run(run())
