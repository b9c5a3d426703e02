"""The Python provider (duralog.yjs.provider) against a real server: loading through a
snapshot, following live, offline edits and reconnects sent exactly once, awareness,
the blocking twin, and docs/yjs.md's examples."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pycrdt
import pytest

from duralog.yjs.framing import split_frames
from duralog.yjs.provider import AsyncYjsProvider, YjsProvider

from .servers import ROOT, ServerProcess
from .yjs_support import yjs_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("yjs-provider") / "server.log"
    proc = yjs_server("memory", compaction_bytes=500, log_path=log).start()
    yield proc
    proc.stop()


def base(server: ServerProcess) -> str:
    return f"{server.url}/v1/yjs/svc"


def new_id() -> str:
    return f"prov/{uuid.uuid4().hex[:10]}"


async def until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def stored_frames(server: ServerProcess, doc_id: str) -> list[bytes]:
    url = f"{base(server)}/docs/{doc_id}"
    return split_frames(httpx.get(url, params={"offset": "-1"}).content)


def test_load_through_snapshot_then_follow_live(server: ServerProcess) -> None:
    doc_id = new_id()

    async def run() -> None:
        writer_doc = pycrdt.Doc()
        async with AsyncYjsProvider(writer_doc, base(server), doc_id) as writer:
            text = writer_doc.get("text", type=pycrdt.Text)
            for i in range(80):
                text += f"line {i}\n"
            await writer.flush()
            url = f"{base(server)}/docs/{doc_id}"
            loc = ""
            for _ in range(200):  # wait for a compaction (500-byte threshold)
                loc = httpx.get(url, params={"offset": "snapshot"}).headers["location"]
                if "_snapshot" in loc:
                    break
                await asyncio.sleep(0.05)
            assert "_snapshot" in loc
            reader_doc = pycrdt.Doc()
            async with AsyncYjsProvider(reader_doc, base(server), doc_id,
                                        live="long-poll") as reader:
                got = reader_doc.get("text", type=pycrdt.Text)
                assert str(got) == str(text)  # loaded on connect
                assert reader.offset is not None and reader.offset >= loc.split("=")[-1][:33]
                text += "live!"
                await until(lambda: str(got) == str(text))

    asyncio.run(run())


def test_offline_edits_and_reconnects_are_sent_exactly_once(server: ServerProcess) -> None:
    doc_id = new_id()

    async def run() -> None:
        doc = pycrdt.Doc()
        local: list[bytes] = []
        doc.observe(lambda e: local.append(e.update))
        arr = doc.get("array", type=pycrdt.Array)
        arr.append("made before connecting")
        provider = AsyncYjsProvider(doc, base(server), doc_id)
        await provider.connect()
        for round_no in range(3):
            for i in range(10):
                arr.append(f"{round_no}.{i}")
            await provider.disconnect()
            arr.append(f"offline {round_no}")  # sent after the next connect
            await provider.connect()
        await provider.flush()
        frames = stored_frames(server, doc_id)
        # Every local transaction is stored once: no retry or reconnect duplicated one.
        assert sorted(frames) == sorted(local)
        other = pycrdt.Doc()
        async with AsyncYjsProvider(other, base(server), doc_id):
            assert other.get("array", type=pycrdt.Array).to_py() == arr.to_py()
        await provider.close()
        assert not provider.errors

    asyncio.run(run())


def test_awareness_is_published_read_and_removed(server: ServerProcess) -> None:
    doc_id = new_id()

    async def run() -> None:
        d1, d2 = pycrdt.Doc(), pycrdt.Doc()
        a1, a2 = pycrdt.Awareness(d1), pycrdt.Awareness(d2)
        async with AsyncYjsProvider(d2, base(server), doc_id, awareness=a2) as p2:
            p1 = AsyncYjsProvider(d1, base(server), doc_id, awareness=a1)
            await p1.connect()
            a1.set_local_state({"user": "ada", "cursor": 3})
            await until(lambda: a2.states.get(d1.client_id) == {"user": "ada", "cursor": 3})
            a2.set_local_state({"user": "bob"})
            await until(lambda: a1.states.get(d2.client_id) == {"user": "bob"})
            await p1.close()  # says goodbye: its state goes away for the others
            await until(lambda: d1.client_id not in a2.states)
            assert not p2.errors

    asyncio.run(run())


def test_blocking_provider(server: ServerProcess) -> None:
    doc_id = new_id()
    d1, d2 = pycrdt.Doc(), pycrdt.Doc()
    with YjsProvider(d1, base(server), doc_id) as p1, \
            YjsProvider(d2, base(server), doc_id, live="long-poll") as p2:
        with p1.transact():
            d1.get("map", type=pycrdt.Map)["a"] = 1
        with p2.transact():
            d2.get("map", type=pycrdt.Map)["b"] = 2
        p1.flush()
        p2.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with p1.lock, p2.lock:
                m1 = d1.get("map", type=pycrdt.Map).to_py()
                m2 = d2.get("map", type=pycrdt.Map).to_py()
            if m1 == m2 == {"a": 1, "b": 2}:
                break
            time.sleep(0.05)
        assert m1 == m2 == {"a": 1, "b": 2}


def test_a_refused_document_path_is_an_error(server: ServerProcess) -> None:
    from duralog.yjs.provider import SyncError

    async def run() -> None:
        doc = pycrdt.Doc()
        provider = AsyncYjsProvider(doc, base(server), "bad..path")
        with pytest.raises(SyncError):
            await provider.connect()

    asyncio.run(run())


def test_docs_examples_run(server: ServerProcess, tmp_path: Path) -> None:
    doc = (ROOT / "docs/yjs.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    suffix = uuid.uuid4().hex[:8]
    for block in blocks:
        code = block.replace("http://127.0.0.1:4437", server.url)
        code = re.sub(r'"(notes/[\w-]+)"', rf'"\1-{suffix}"', code)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{block}\n{result.stderr}"


def test_changes_the_server_missed_while_gone_are_sent_after_reconnect(tmp_path: Path) -> None:
    from .servers import free_port

    port = free_port()
    data = tmp_path / "data"

    def start() -> ServerProcess:
        proc = yjs_server("sqlite", data_dir=data, log_path=tmp_path / "server.log")
        proc.port = port
        proc.args[proc.args.index("--port") + 1] = str(port)
        return proc.start()

    server = start()

    async def run() -> None:
        nonlocal server
        doc = pycrdt.Doc()
        text = doc.get("text", type=pycrdt.Text)
        provider = AsyncYjsProvider(doc, base(server), "gone/doc", timeout=2.0)
        await provider.connect()
        text += "before "
        await provider.flush()
        server.kill()
        text += "while-gone"  # the producer cannot deliver this
        await provider.disconnect()  # gives up after the flush timeout
        server = start()
        await provider.connect()
        await provider.flush()
        other = pycrdt.Doc()
        async with AsyncYjsProvider(other, base(server), "gone/doc"):
            assert str(other.get("text", type=pycrdt.Text)) == "before while-gone"
        await provider.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_a_snapshot_gone_before_it_is_read_sends_the_provider_back_to_discovery(
        server: ServerProcess) -> None:
    """8.3: the first snapshot read answers 404 SNAPSHOT_NOT_FOUND (as when a newer
    compaction deleted it in between); the provider asks offset=snapshot again."""
    doc_id = new_id()
    url = f"{base(server)}/docs/{doc_id}"
    httpx.put(url)
    writer = pycrdt.Doc()
    text = writer.get("text", type=pycrdt.Text)
    updates: list[bytes] = []
    writer.observe(lambda e: updates.append(e.update))
    for i in range(60):
        text += f"{i};"
    from duralog.yjs.framing import frame

    for update in updates:
        httpx.post(url, content=frame(update), headers={"content-type": "application/octet-stream"})
    seen: list[str] = []

    class GoneOnce(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            offset = request.url.params.get("offset", "")
            seen.append(offset)
            if offset.endswith("_snapshot") and seen.count(offset) == 1:
                return httpx.Response(404, json={"error": {"code": "SNAPSHOT_NOT_FOUND",
                                                           "message": "Snapshot not found"}})
            return await self.inner.handle_async_request(request)

    async def run() -> None:
        for _ in range(200):
            if "_snapshot" in httpx.get(url, params={"offset": "snapshot"}).headers["location"]:
                break
            await asyncio.sleep(0.05)
        doc = pycrdt.Doc()
        async with AsyncYjsProvider(doc, base(server), doc_id, transport=GoneOnce(),
                                    live="long-poll"):
            assert str(doc.get("text", type=pycrdt.Text)) == str(text)
        assert seen.count("snapshot") == 2
        assert any(o.endswith("_snapshot") for o in seen)

    asyncio.run(run())


def test_awareness_is_renewed_and_outdated_states_go(server: ServerProcess) -> None:
    """Our state gets a new clock every heartbeat (others drop states not renewed within
    their timeout and ignore a resend with the same clock); a peer that vanished without
    a goodbye is dropped after the timeout. Here: heartbeat 0.5 s, timeout 2 s."""
    doc_id = new_id()
    fast = {"awareness_heartbeat": 0.5, "awareness_timeout": 2.0}

    async def run() -> None:
        d1, d2 = pycrdt.Doc(), pycrdt.Doc()
        a1, a2 = pycrdt.Awareness(d1), pycrdt.Awareness(d2)
        a1.set_local_state({"user": "ada"})
        async with AsyncYjsProvider(d2, base(server), doc_id, awareness=a2, **fast):
            p1 = AsyncYjsProvider(d1, base(server), doc_id, awareness=a1, **fast)
            await p1.connect()
            await until(lambda: d1.client_id in a2.states)
            clock = a2.meta[d1.client_id]["clock"]
            await asyncio.sleep(4)  # twice the timeout: still there, renewed
            assert a2.states.get(d1.client_id) == {"user": "ada"}
            assert a2.meta[d1.client_id]["clock"] > clock
            await p1.disconnect()  # gone without a goodbye
            await until(lambda: d1.client_id not in a2.states)

    asyncio.run(run())
