"""Interop: Node (yjs + the official @durable-streams/y-durable-streams provider) and
our Python providers edit the same documents through our server at the same time.

Random inserts and deletes in a text, a map and an array, with reconnects, on
a server whose compaction threshold is tiny, so snapshots are written while the
edits go on. Every replica must converge to the content of the server's
updates replayed in full, and a new client loading through the snapshot must
see the same.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pycrdt
import pytest

from duralog.yjs.framing import split_frames
from duralog.yjs.provider import AsyncYjsProvider, YjsProvider

from .servers import ROOT, ServerProcess
from .yjs_support import yjs_server

pytestmark = pytest.mark.usefixtures("node_available")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("yjs-interop") / "server.log"
    proc = yjs_server("memory", compaction_bytes=1024, log_path=log).start()
    yield proc
    proc.stop()


def content(doc: pycrdt.Doc) -> dict[str, Any]:
    return {"text": str(doc.get("text", type=pycrdt.Text)),
            "map": doc.get("map", type=pycrdt.Map).to_py() or {},
            "array": doc.get("array", type=pycrdt.Array).to_py() or []}


def server_content(url: str) -> dict[str, Any]:
    doc = pycrdt.Doc()
    for update in split_frames(httpx.get(url, params={"offset": "-1"}, timeout=30).content):
        doc.apply_update(update)
    return content(doc)


def edit(doc: pycrdt.Doc, rng: random.Random, tag: str) -> None:
    text = doc.get("text", type=pycrdt.Text)
    m = doc.get("map", type=pycrdt.Map)
    arr = doc.get("array", type=pycrdt.Array)
    kind = rng.randrange(6)
    if kind in (0, 1):
        text.insert(rng.randrange(len(text) + 1), f"{tag} ")
    elif kind == 2 and len(text):
        at = rng.randrange(len(text))
        del text[at:min(len(text), at + 1 + rng.randrange(4))]
    elif kind == 3:
        m[f"k{rng.randrange(20)}"] = tag
    elif kind == 4 and len(m) and rng.random() < 0.3:
        del m[rng.choice(list(m.keys()))]
    elif len(arr) and rng.random() < 0.3:
        del arr[rng.randrange(len(arr))]
    else:
        arr.insert(rng.randrange(len(arr) + 1), tag)


async def python_editor(base: str, doc_id: str, seed: int, ops: int, live: str,
                        reconnects: int) -> tuple[pycrdt.Doc, AsyncYjsProvider]:
    rng = random.Random(seed)
    doc = pycrdt.Doc()
    awareness = pycrdt.Awareness(doc)
    awareness.set_local_state({"user": f"py-{seed}"})
    provider = AsyncYjsProvider(doc, base, doc_id, awareness=awareness, live=live)
    await provider.connect()
    every = ops // (reconnects + 1) if reconnects else ops + 1
    for i in range(ops):
        edit(doc, rng, f"p{seed}.{i}")
        if (i + 1) % every == 0 and i + 1 < ops:
            await provider.disconnect()
            # Edits while disconnected are sent after the reconnect.
            edit(doc, rng, f"p{seed}.{i}off")
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            await provider.connect()
        await asyncio.sleep(rng.uniform(0, 0.015))
    await provider.flush()
    return doc, provider


def sync_editor(base: str, doc_id: str, seed: int, ops: int, out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    doc = pycrdt.Doc()
    provider = YjsProvider(doc, base, doc_id, live="long-poll")
    provider.connect()
    for i in range(ops):
        with provider.transact():
            edit(doc, rng, f"s{seed}.{i}")
        time.sleep(rng.uniform(0, 0.015))
    provider.flush()
    out["doc"], out["provider"] = doc, provider


class NodeEditor:
    def __init__(self, base: str, doc_id: str, seed: int, ops: int, live: str,
                 reconnects: int) -> None:
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "tests/peers/yjs-editor.mjs"), base, doc_id, str(seed),
             str(ops), live, str(reconnects)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def wait_done(self, timeout: float = 120) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "done":
            self.proc.kill()
            raise AssertionError(f"node editor: {line!r} {self.proc.stderr.read()}")

    def dump(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def quit(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def node_content(dump: dict[str, Any]) -> dict[str, Any]:
    return {"text": dump["text"], "map": dump["map"], "array": dump["array"]}


def compactions(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('duralog_yjs_compactions_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("round_no", [1, 2])
def test_node_and_python_editors_converge(server: ServerProcess, round_no: int) -> None:
    base = f"{server.url}/v1/yjs/svc"
    doc_id = f"interop/round-{round_no}-{time.time_ns()}"
    url = f"{base}/docs/{doc_id}"
    before = compactions(server)
    ops = 60
    nodes = [NodeEditor(base, doc_id, 100 * round_no + k, ops, live, 2)
             for k, live in enumerate(("sse", "long-poll"))]
    sync_out: dict[str, Any] = {}
    sync_thread = threading.Thread(target=sync_editor,
                                   args=(base, doc_id, 300 + round_no, ops, sync_out))
    sync_thread.start()

    started = time.monotonic()

    def phase(name: str) -> None:  # shown with -s, and in the output of a failure
        print(f"[round {round_no} +{time.monotonic() - started:.1f}s] {name}")

    async def run() -> None:
        py_editors = await asyncio.gather(
            python_editor(base, doc_id, 200 + round_no, ops, "sse", 2),
            python_editor(base, doc_id, 210 + round_no, ops, "long-poll", 2))
        phase("python editors done")
        for node in nodes:
            await asyncio.to_thread(node.wait_done)
        phase("node editors done")
        await asyncio.to_thread(sync_thread.join, 120)
        phase("blocking editor done")
        deadline = time.monotonic() + 60
        while True:
            expected = await asyncio.to_thread(server_content, url)
            py_ok = all(content(doc) == expected for doc, _ in py_editors)
            sync_ok = content(sync_out["doc"]) == expected
            dumps = [await asyncio.to_thread(node.dump) for node in nodes]
            node_ok = all(node_content(d) == expected for d in dumps)
            if (py_ok and sync_ok and node_ok) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        phase(f"converged: python {py_ok}, blocking {sync_ok}, node {node_ok}")
        assert py_ok, [content(doc) for doc, _ in py_editors] + [expected]
        assert sync_ok
        assert node_ok, (dumps, expected)
        assert not any(d["errors"] for d in dumps), dumps
        assert all(not p.errors for _, p in py_editors), [p.errors for _, p in py_editors]
        assert expected["text"] or expected["array"]
        # Presence: Node editors see the Python editors' awareness states (at the
        # latest with the 15 s heartbeat, if a state went out before a Node editor's
        # awareness reader, which starts from "now", was live).
        wanted = {f"py-{200 + round_no}", f"py-{210 + round_no}"}
        deadline = time.monotonic() + 40
        while True:
            users = {s.get("user") for d in dumps for s in d["others"] if s}
            if wanted <= users or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
            dumps = [await asyncio.to_thread(node.dump) for node in nodes]
        phase("presence seen" if wanted <= users else "presence NOT seen")
        assert wanted <= users, users
        # Compactions ran during the edits, and a new client loads the same content
        # through the snapshot.
        assert await asyncio.to_thread(compactions, server) > before
        fresh = pycrdt.Doc()
        async with AsyncYjsProvider(fresh, base, doc_id) as provider:
            assert provider.offset is not None
            assert content(fresh) == expected
        for _, provider in py_editors:
            await provider.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        for node in nodes:
            node.quit()
        if "provider" in sync_out:
            sync_out["provider"].close()
        loop.close()


def test_python_provider_sees_node_presence(server: ServerProcess) -> None:
    """y-protocols awareness updates from the TypeScript provider decode in pycrdt."""
    base = f"{server.url}/v1/yjs/svc"
    doc_id = f"interop/aware-{time.time_ns()}"

    async def run() -> None:
        doc = pycrdt.Doc()
        awareness = pycrdt.Awareness(doc)
        async with AsyncYjsProvider(doc, base, doc_id, awareness=awareness):
            node = NodeEditor(base, doc_id, 7, 0, "sse", 0)
            try:
                await asyncio.to_thread(node.wait_done)
                await asyncio.sleep(0.5)  # our awareness reader is live from "now"
                assert node.proc.stdin is not None and node.proc.stdout is not None
                node.proc.stdin.write('aware {"user": "node-presence", "color": "#f00"}\n')
                node.proc.stdin.flush()
                assert (await asyncio.to_thread(node.proc.stdout.readline)).strip() == "ok"
                deadline = time.monotonic() + 20
                wanted = {"user": "node-presence", "color": "#f00"}
                while wanted not in awareness.states.values():
                    assert time.monotonic() < deadline, awareness.states
                    await asyncio.sleep(0.05)
                # And the other way: the Node provider sees ours.
                awareness.set_local_state({"user": "python-presence"})
                while True:
                    dump = await asyncio.to_thread(node.dump)
                    if {"user": "python-presence"} in dump["others"]:
                        break
                    assert time.monotonic() < deadline, dump["others"]
                    await asyncio.sleep(0.1)
            finally:
                await asyncio.to_thread(node.quit)

    asyncio.run(run())
