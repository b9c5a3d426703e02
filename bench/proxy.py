"""The ``proxy`` scenario: latency the durable proxy adds per token, and many
proxied streams at once (duralog targets only; the reference has no proxy).

Per token: a fake upstream (bench/upstream.py) stamps each token with the
time it was sent; the same client reads it once directly from the upstream
and once through the proxy (create, then an SSE read of the pre-signed URL).
The added latency is the proxied percentile minus the direct one.
Concurrency: N proxied generations at once (20 tokens, 50 ms apart, each),
every one read to its end with long-poll; all must complete with their bytes.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from .scenarios import Config, Sample, _CpuWatch
from .targets import ROOT, Target, free_port


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _stamps(text: str, now_ns: int, out: list[float]) -> str:
    """Latencies (ms) of the complete lines in ``text``; returns the unfinished tail."""
    *lines, tail = text.split("\n")
    for line in lines:
        if line:
            out.append((now_ns - int(line.split(":", 1)[1])) / 1e6)
    return tail


async def _direct(upstream: str, n: int, gap: float) -> list[float]:
    lat: list[float] = []
    async with httpx.AsyncClient(timeout=60) as c, c.stream(
            "GET", f"{upstream}/tokens?n={n}&gap={gap}") as r:
        tail = ""
        async for text in r.aiter_text():
            tail = _stamps(tail + text, time.time_ns(), lat)
    return lat


async def _proxied(base: str, upstream: str, n: int, gap: float) -> list[float]:
    lat: list[float] = []
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(f"{base}/v1/proxy", headers={
            "Upstream-URL": f"{upstream}/tokens?n={n}&gap={gap}", "Upstream-Method": "GET"})
        r.raise_for_status()
        url = httpx.URL(r.headers["location"]).copy_merge_params({"offset": "-1",
                                                                  "live": "sse"})
        tail, buf = "", ""
        async with c.stream("GET", url) as s:
            async for text in s.aiter_text():
                now = time.time_ns()
                buf += text
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    if block.startswith("event: data"):
                        data = "\n".join(line[5:] for line in block.split("\n")[1:])
                        tail = _stamps(tail + data, now, lat)
                    elif '"streamClosed":true' in block:
                        return lat
    return lat


async def _many(base: str, upstream: str, count: int) -> dict[str, Any]:
    per = 25  # httpx pools scan every connection per request: small shards
    creates: list[float] = []
    errors: list[str] = []
    expected = 20

    async def one(c: httpx.AsyncClient) -> bool:
        t0 = time.perf_counter()
        r = await c.post(f"{base}/v1/proxy", headers={
            "Upstream-URL": f"{upstream}/tokens?n={expected}&gap=50", "Upstream-Method": "GET"})
        creates.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 201:
            errors.append(f"create {r.status_code}")
            return False
        loc, offset, body = r.headers["location"], "-1", b""
        while True:
            g = await c.get(httpx.URL(loc).copy_merge_params({"offset": offset,
                                                             "live": "long-poll"}))
            if g.status_code not in (200, 204):
                errors.append(f"read {g.status_code}")
                return False
            body += g.content
            offset = g.headers["stream-next-offset"]
            if g.headers.get("stream-closed") == "true":
                ok = body.count(b"\n") == expected and g.headers.get("proxy-outcome") == "complete"
                if not ok:
                    errors.append("incomplete body")
                return ok

    clients = [httpx.AsyncClient(timeout=120) for _ in range(0, count, per)]
    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(clients[i // per]) for i in range(count)),
                                       return_exceptions=True)
    finally:
        wall = time.perf_counter() - t0
        for c in clients:
            await c.aclose()
    done = sum(1 for r in results if r is True)
    errors += [f"{type(r).__name__}" for r in results if isinstance(r, BaseException)]
    return {"completed": done, "wall_s": round(wall, 2), "create_p50_ms": _pct(creates, 0.5),
            "create_p99_ms": _pct(creates, 0.99), "errors": len(errors),
            "error_samples": sorted(set(errors))[:5]}


def proxy(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    if t.spec.kind != "duralog":
        return []
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(port)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{upstream}/tokens?n=0", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        n = 200 if cfg.quick else 500
        direct = asyncio.run(_direct(upstream, n, 10))
        watch = _CpuWatch(t)
        proxied = asyncio.run(_proxied(t.url.rstrip("/"), upstream, n, 10))
        cpu = watch.pct()
        count = 200 if cfg.quick else 1000
        many = asyncio.run(_many(t.url.rstrip("/"), upstream, count))
    finally:
        up.terminate()
        up.wait(10)
    d50, d99 = _pct(direct, 0.5), _pct(direct, 0.99)
    p50, p99 = _pct(proxied, 0.5), _pct(proxied, 0.99)
    info = {"tokens": len(proxied), "direct_p50_ms": round(d50, 3),
            "direct_p99_ms": round(d99, 3), "proxied_p50_ms": round(p50, 3),
            "proxied_p99_ms": round(p99, 3), "proxied_mean_ms": round(statistics.mean(proxied), 3),
            "server_cpu_pct": cpu, "missing": n - len(proxied)}
    return [
        Sample("proxy", "latency added per token p50", "ms", False, round(p50 - d50, 3), info),
        Sample("proxy", "latency added per token p99", "ms", False, round(p99 - d99, 3), info),
        Sample("proxy", f"{count} concurrent proxied streams completed", "streams", True,
               many["completed"], many),
        Sample("proxy", f"{count} concurrent proxied streams wall time", "s", False,
               many["wall_s"], many),
    ]
