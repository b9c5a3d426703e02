"""The ``yjs`` scenario: collaborative editing on one document (YJS-PROTOCOL.md).

1. 100 editors on one document: each follows the updates over SSE and, at
   random moments (about one update per editor per second), POSTs a framed Yjs
   update of its own; the delay from the POST to its arrival at each of the
   other editors is one delivery sample (p50, p99).
2. Compaction of a document of 100,000 updates (typed characters in ten
   paragraphs, map keys set, list items appended), in the bench process (the
   same for every target):
   the time of one compaction from nothing (replay into pycrdt, snapshot
   written) run by the server's own ``Compactor`` over a memory store, and
   the snapshot's size against the updates' size.
3. A new client loading that document from the server: through the snapshot
   (discovery, snapshot, the updates after it) versus replaying every update.

Only duralog serves /v1/yjs; other targets are skipped.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import random
import resource
import statistics
import time
import uuid
from typing import Any

import httpx

from .scenarios import Config, Sample, _CpuWatch
from .targets import ROOT, Target

EDITORS = 100
DURATION = 8.0
UPDATES = 100_000
OCTET = {"content-type": "application/octet-stream"}
RESULTS = ROOT / "bench" / "results"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


_GENERATED: dict[tuple[int, int], list[bytes]] = {}


def _typing(n: int, seed: int = 1) -> list[bytes]:
    """n updates of people writing: typing into one of ten paragraphs (mostly at the
    end), setting map keys, appending to a list. Made once per run and size."""
    import pycrdt

    from duralog.yjs.framing import frame_all, split_frames

    cached = _GENERATED.get((n, seed))
    if cached is not None:
        return cached
    # pycrdt takes about a millisecond per update at this size (minutes for 100k on a
    # busy machine), so the updates are kept between runs.
    path = RESULTS / f"yjs-updates-{n}-{seed}.bin"
    if path.exists():
        cached = _GENERATED[(n, seed)] = split_frames(path.read_bytes())
        return cached
    rng = random.Random(seed)
    doc = pycrdt.Doc()
    paragraphs = [doc.get(f"p{i}", type=pycrdt.Text) for i in range(10)]
    lengths = [0] * 10
    meta = doc.get("meta", type=pycrdt.Map)
    items = doc.get("items", type=pycrdt.Array)
    out: list[bytes] = []
    doc.observe(lambda e: out.append(e.update))
    for i in range(n):
        kind = rng.random()
        if kind < 0.6:
            p = rng.randrange(10)
            at = lengths[p] if rng.random() < 0.9 else rng.randrange(lengths[p] + 1)
            paragraphs[p].insert(at, rng.choice("abcdefghijklmnopqrstuvwxyz     "))
            lengths[p] += 1
        elif kind < 0.85:
            meta[f"k{rng.randrange(200)}"] = i
        else:
            items.append(i)
    _GENERATED[(n, seed)] = out
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame_all(out))
    return out


class _Http:
    """A bare HTTP/1.1 keep-alive connection: the client must cost far less than the
    server, or 100 editors in one Python process measure the client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, root: str) -> _Http:
        url = httpx.URL(root)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        return cls(reader, writer, f"{url.host}:{url.port}")

    async def post(self, path: str, body: bytes) -> int:
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                          f"Content-Type: application/octet-stream\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:") and int(line.split(b":")[1]):
                await self.reader.readexactly(int(line.split(b":")[1]))
        return status

    async def sse(self, path: str) -> Any:
        """Yield the payload of each SSE data event (de-chunked, still base64)."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                          f"Accept: text/event-stream\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n", 1)[0], head
        buf = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                return
            buf += (await self.reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if block.startswith(b"event: data"):
                    yield b"".join(line[5:] for line in block.split(b"\n")
                                   if line.startswith(b"data:"))

    def close(self) -> None:
        self.writer.close()


async def _editors(root: str, quick: bool) -> dict[str, Any]:
    from duralog.yjs.framing import frame, split_frames

    editors = 20 if quick else EDITORS
    duration = 3.0 if quick else DURATION
    path = f"/v1/yjs/bench/docs/editors-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=60) as client:
        tail = (await client.put(root + path)).headers["stream-next-offset"]
    sent: dict[bytes, tuple[int, float]] = {}
    latencies: list[float] = []
    received = [0] * editors
    ready = asyncio.Event()

    async def follow(me: int) -> None:
        conn = await _Http.open(root)
        try:
            async for data in conn.sse(f"{path}?offset={tail}&live=sse"):
                now = time.perf_counter()
                for update in split_frames(base64.b64decode(data)):
                    who, t0 = sent.get(update, (me, now))
                    received[me] += 1
                    if who != me:
                        latencies.append((now - t0) * 1000)
        finally:
            conn.close()

    async def connect_all() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(follow(i)) for i in range(editors)]
        await asyncio.sleep(1.0)  # the GETs are sent and parked as live readers
        ready.set()
        return tasks

    async def write(me: int, updates: list[bytes]) -> int:
        rng = random.Random(me)
        conn = await _Http.open(root)
        await ready.wait()
        n = 0
        deadline = time.perf_counter() + duration
        try:
            for update in updates:
                await asyncio.sleep(rng.expovariate(1.0))
                if time.perf_counter() > deadline:
                    break
                sent[update] = (me, time.perf_counter())
                status = await conn.post(path, frame(update))
                assert status == 204, status
                n += 1
        finally:
            conn.close()
        return n

    pool = _typing(editors * int(duration * 3), seed=7)
    readers = await connect_all()
    counts = await asyncio.gather(*(write(i, pool[i::editors]) for i in range(editors)))
    total = sum(counts)
    deadline = time.monotonic() + 30
    while min(received) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    async with httpx.AsyncClient(timeout=60) as client:
        await client.delete(root + path)
    return {"editors": editors, "updates": total, "deliveries": len(latencies),
            "missing": sum(total - r for r in received),
            "p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99),
            "mean": statistics.fmean(latencies) if latencies else None}


async def _compaction(updates: list[bytes]) -> dict[str, Any]:
    import pycrdt

    from duralog.protocol.state import AppendRequest, CreateRequest
    from duralog.store import MemoryStore
    from duralog.yjs.compaction import Compactor
    from duralog.yjs.framing import frame
    from duralog.yjs.paths import DocStreams

    store = MemoryStore()
    streams = DocStreams("bench", "compaction")
    await store.create(streams.updates, CreateRequest(content_type="application/octet-stream"),
                       None)
    for i in range(0, len(updates), 1000):
        await store.append(streams.updates, AppendRequest(
            payload=b"".join(frame(u) for u in updates[i:i + 1000])))
    compactor = Compactor(store, 1, logging.getLogger("bench"))
    state = store.get(streams.updates)
    assert state is not None
    info = await compactor.info(streams, state)
    t0 = time.perf_counter()
    assert await compactor.compact(streams, info) == "ok"
    seconds = time.perf_counter() - t0
    snap = store.get(streams.snapshot(info.snapshot or ""))
    assert snap is not None
    snapshot = b"".join((await store.read(snap, 0, snap.tail)).parts)
    t0 = time.perf_counter()
    pycrdt.Doc().apply_update(snapshot)  # what a client does with it
    apply_s = time.perf_counter() - t0
    return {"seconds": seconds, "snapshot_bytes": snap.tail, "updates_bytes": state.tail,
            "snapshot_apply_ms": round(apply_s * 1000, 1)}


async def _load(root: str, updates: list[bytes]) -> dict[str, Any]:
    import pycrdt

    from duralog.yjs.framing import FrameBuffer, frame

    url = f"{root}/v1/yjs/bench/docs/load-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=120) as client:
        await client.put(url)
        for i in range(0, len(updates), 2000):
            resp = await client.post(url, content=b"".join(frame(u) for u in updates[i:i + 2000]),
                                     headers=OCTET)
            assert resp.status_code == 204, resp.text
        # The server compacts in the background (every 1 MiB by default); wait for it.
        deadline = time.monotonic() + 60
        snapshot = "-1"
        while time.monotonic() < deadline:
            loc = (await client.get(url, params={"offset": "snapshot"})).headers["location"]
            snapshot = httpx.URL(url).join(loc).params["offset"]
            if snapshot.endswith("_snapshot"):
                break
            await asyncio.sleep(0.2)

        # What a new client does (9.2): discovery, the snapshot, the updates after it.
        t0 = time.perf_counter()
        fresh = pycrdt.Doc()
        frames = FrameBuffer()
        resp = await client.get(url, params={"offset": "snapshot"})
        offset = httpx.URL(url).join(resp.headers["location"]).params["offset"]
        after = 0
        if offset.endswith("_snapshot"):
            resp = await client.get(url, params={"offset": offset})
            fresh.apply_update(resp.content)
            offset = resp.headers["stream-next-offset"]
        while True:
            resp = await client.get(url, params={"offset": offset})
            for update in frames.feed(resp.content):
                fresh.apply_update(update)
                after += 1
            offset = resp.headers["stream-next-offset"]
            if resp.headers.get("stream-up-to-date") == "true":
                break
        via_snapshot = time.perf_counter() - t0

        t0 = time.perf_counter()
        replay = pycrdt.Doc()
        frames = FrameBuffer()
        offset = "-1"
        n = 0
        while True:
            resp = await client.get(url, params={"offset": offset})
            for update in frames.feed(resp.content):
                replay.apply_update(update)
                n += 1
            offset = resp.headers["stream-next-offset"]
            if resp.headers.get("stream-up-to-date") == "true":
                break
        full = time.perf_counter() - t0
        assert replay.get_state() == fresh.get_state()
        await client.delete(url)
    return {"snapshot_s": via_snapshot, "replay_s": full, "snapshot": snapshot,
            "updates_after_snapshot": after, "replayed_updates": n}


def yjs(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    if t.spec.kind != "duralog":
        return []
    root = t.url.rstrip("/")
    out: list[Sample] = []
    watch = _CpuWatch(t)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    gc.collect()
    gc.disable()  # the client's collector must not pause the readers we time
    try:
        ed = asyncio.run(_editors(root, cfg.quick))
    finally:
        gc.enable()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    info = {k: v for k, v in ed.items() if k not in ("p50", "p99")}
    info["server_cpu_pct"] = watch.pct()
    info["client_cpu_pct"] = round(100 * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime
                                          - cpu0.ru_stime) / (time.monotonic() - t0), 1)
    info["loadavg"] = os.getloadavg()[0]
    n = ed["editors"]
    out.append(Sample("yjs", f"{n} editors: delivery p50", "ms", False, ed["p50"], info))
    out.append(Sample("yjs", f"{n} editors: delivery p99", "ms", False, ed["p99"], info))
    count = 20_000 if cfg.quick else UPDATES
    updates = _typing(count)
    comp = asyncio.run(_compaction(updates))
    label = f"{count // 1000}k updates"
    out.append(Sample("yjs", f"compaction of {label}", "s", False, comp["seconds"], comp))
    out.append(Sample("yjs", f"snapshot size of {label}", "KiB", False,
                      comp["snapshot_bytes"] / 1024, comp))
    load = asyncio.run(_load(root, updates))
    out.append(Sample("yjs", f"load {label}: snapshot", "ms", False, load["snapshot_s"] * 1000,
                      load))
    out.append(Sample("yjs", f"load {label}: full replay", "ms", False, load["replay_s"] * 1000,
                      load))
    return out
