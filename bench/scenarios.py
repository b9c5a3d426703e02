"""The benchmark scenarios. Each measures one target once and returns samples.

A sample is one figure (``value``) of one metric for one target in one round, plus
``info``: what else was seen (errors, client and server CPU, ...). The runner calls
every scenario once per round for every target, alternating the order of targets.
"""

from __future__ import annotations

import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import clients
from . import state as _state
from .httpraw import Client
from .targets import Target

MIB = 1 << 20


@dataclass
class Config:
    quick: bool = False
    rounds: int = 2
    wrk_duration: float = 8.0
    wrk_threads: int = 1
    connections: int = 32
    large_duration: float = 5.0
    large_connections: int = 4
    producers: int = 16
    catchup_mib: int = 256
    catchup_reads: int = 3
    latency_count: int = 1000
    latency_gap_ms: float = 1.0
    fanout_sizes: tuple[int, ...] = (1000, 10000)
    fanout_appends: int = 5
    fanout_gap_ms: float = 100.0
    fanout_rounds: int = 1  # a fan-out run is long and already has N x appends deliveries
    cdn_sizes: tuple[int, ...] = (1000, 10000)  # long-poll readers through nginx (bench/cdn.py)
    state_events: int = 1_000_000  # bench/state.py
    state_rows: int = 100_000
    subs_tenants: int = 1000  # x subs_per_tenant streams; subs_count / tenants match each
    subs_per_tenant: int = 100
    subs_count: int = 10_000
    subs_appends: int = 1000

    @classmethod
    def for_run(cls, quick: bool) -> Config:
        if not quick:
            return cls()
        return cls(quick=True, rounds=1, wrk_duration=2.0, large_duration=2.0,
                   catchup_mib=64, catchup_reads=2, latency_count=300,
                   fanout_sizes=(1000,), cdn_sizes=(1000,), fanout_appends=3, state_events=200_000,
                   state_rows=20_000, subs_tenants=100, subs_per_tenant=100, subs_count=1000,
                   subs_appends=300)


@dataclass
class Sample:
    scenario: str
    metric: str
    unit: str
    higher_is_better: bool
    value: float | None
    info: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    mode: str = ""
    round: int = 0


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


class _CpuWatch:
    """Server CPU over a measurement, as % of one core."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.cpu0 = target.cpu()
        self.t0 = time.monotonic()

    def pct(self) -> float | None:
        cpu1 = self.target.cpu()
        if self.cpu0 is None or cpu1 is None:
            return None
        return round(100.0 * (cpu1 - self.cpu0) / (time.monotonic() - self.t0), 1)


def _wrk_info(run: clients.ClientRun, watch: _CpuWatch) -> dict[str, Any]:
    o = run.out
    return {
        "requests": o["requests"],
        "errors": o["status_errors"] + o["connect_errors"] + o["read_errors"]
        + o["write_errors"] + o["timeouts"],
        "latency_p50_ms": o["latency_p50_us"] / 1000, "latency_p99_ms": o["latency_p99_us"] / 1000,
        "client_cpu_pct": round(run.cpu_pct, 1), "server_cpu_pct": watch.pct(),
    }


def _rate(run: clients.ClientRun) -> float:
    return run.out["requests"] / (run.out["duration_us"] / 1e6)


# -- 1. small appends ------------------------------------------------------------------
def small_appends(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    stream = _name("s1")
    with Client(t.base) as c:
        c.create(stream, "application/octet-stream")
    watch = _CpuWatch(t)
    run = clients.wrk(f"{t.base}/{stream}", "post.lua", ["application/octet-stream", "bytes:100"],
                      cfg.wrk_duration, cfg.connections, cfg.wrk_threads)
    info = _wrk_info(run, watch)
    with Client(t.base) as c:
        c.delete(stream)
    return [Sample("appends", "100 B appends, 32 conns", "appends/s", True, _rate(run), info)]


# -- 2. batched JSON ---------------------------------------------------------------------
def batched_json(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    out = []
    stream = _name("s2")
    with Client(t.base) as c:
        c.create(stream, "application/json")
    watch = _CpuWatch(t)
    run = clients.wrk(f"{t.base}/{stream}", "post.lua", ["application/json", "json:100:100"],
                      cfg.wrk_duration, cfg.connections, cfg.wrk_threads)
    info = _wrk_info(run, watch)
    out.append(Sample("batched", "JSON 100x100 B per POST, 32 conns", "msgs/s", True,
                      _rate(run) * 100, info))
    with Client(t.base) as c:
        c.delete(stream)

    stream = _name("s2p")
    with Client(t.base) as c:
        c.create(stream, "application/json")
    watch = _CpuWatch(t)
    prun = clients.live({"op": "produce", "base": t.base, "stream": stream,
                         "producers": cfg.producers, "duration_s": cfg.wrk_duration,
                         "batch": 100, "msg_size": 100})
    r = prun.out
    out.append(Sample("batched", f"JSON 100x100 B, {cfg.producers} idempotent producers",
                      "msgs/s", True, r["messages_per_s"] if r["requests"] else None, {
                          "requests": r["requests"], "errors": r["errors"],
                          "error_samples": r["error_samples"],
                          "latency_p50_ms": r["request_ms"]["p50"],
                          "latency_p99_ms": r["request_ms"]["p99"],
                          "client_cpu_pct": round(prun.cpu_pct, 1),
                          "server_cpu_pct": watch.pct()}))
    with Client(t.base) as c:
        c.delete(stream)
    return out


# -- 3. large appends ----------------------------------------------------------------------
def large_appends(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    stream = _name("s3")
    with Client(t.base) as c:
        c.create(stream, "application/octet-stream")
    watch = _CpuWatch(t)
    run = clients.wrk(f"{t.base}/{stream}", "post.lua",
                      ["application/octet-stream", f"bytes:{MIB}"], cfg.large_duration,
                      cfg.large_connections, 1, timeout=30.0)
    info = _wrk_info(run, watch)
    with Client(t.base, timeout=120) as c:
        c.delete(stream)  # the memory backends would keep gigabytes otherwise
    return [Sample("large", f"1 MiB appends, {cfg.large_connections} conns", "MB/s", True,
                   _rate(run) * MIB / 1e6, info)]


# -- 4. catch-up reads -------------------------------------------------------------------
def _fill(t: Target, stream: str, mib: int) -> str:
    body = b"y" * MIB
    with Client(t.base, timeout=120) as c:
        c.create(stream, "application/octet-stream")
        tail = ""
        for _ in range(mib):
            tail = c.append(stream, body, "application/octet-stream").header(
                "stream-next-offset") or ""
    return tail


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _read_all(t: Target, stream: str) -> tuple[int, int, float]:
    """Read from -1 to the end following Stream-Next-Offset: (bytes, requests, seconds)."""
    size = requests = 0
    offset = "-1"
    with Client(t.base, timeout=120) as c:
        t0 = time.perf_counter()
        while True:
            r = c.call("GET", stream, query=f"offset={offset}", keep_body=False)
            requests += 1
            if r.status != 200:
                raise RuntimeError(f"catch-up read: HTTP {r.status}")
            size += r.size
            nxt = r.header("stream-next-offset")
            if r.header("stream-up-to-date") == "true" or not nxt or nxt == offset:
                break
            offset = nxt
        return size, requests, time.perf_counter() - t0


def catch_up(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    key = f"catchup-{cfg.catchup_mib}"
    if key not in t.cache:
        stream = _name("s4")
        t0 = time.perf_counter()
        _fill(t, stream, cfg.catchup_mib)
        t.cache[key] = (stream, time.perf_counter() - t0)
    stream, fill_s = t.cache[key]
    watch = _CpuWatch(t)
    rates, info = [], {}
    me0, wall0 = _self_cpu(), time.monotonic()
    for _ in range(cfg.catchup_reads):
        size, requests, secs = _read_all(t, stream)
        if size != cfg.catchup_mib * MIB:
            info["error"] = f"read {size} bytes, expected {cfg.catchup_mib * MIB}"
        rates.append(size / secs / 1e6)
        info["requests_per_read"] = requests
    info.update(server_cpu_pct=watch.pct(),
                client_cpu_pct=round(100 * (_self_cpu() - me0) / (time.monotonic() - wall0), 1),
                reads_mb_s=[round(r) for r in rates],
                fill_s=round(fill_s, 2), client="python raw socket, recv_into")
    out = [Sample("catchup", f"read {cfg.catchup_mib} MiB from -1", "MB/s", True,
                  sorted(rates)[len(rates) // 2], info)]

    # Repeat reads of unchanged data: If-None-Match -> 304.
    small = _name("s4e")
    with Client(t.base) as c:
        c.create(small, "application/octet-stream")
        c.append(small, b"z" * 4096, "application/octet-stream")
        first = c.call("GET", small, query="offset=-1")
        etag = first.header("etag")
        again = c.call("GET", small, query="offset=-1", headers={"If-None-Match": etag or ""})
    if not etag or again.status != 304:
        out.append(Sample("catchup", "repeat read, If-None-Match -> 304, 32 conns", "req/s",
                          True, None, {"error": f"no 304 (etag={etag!r}, got {again.status})"}))
        return out
    watch = _CpuWatch(t)
    try:
        run = clients.wrk(f"{t.base}/{small}?offset=-1", "get.lua", [etag],
                          cfg.wrk_duration / 2, cfg.connections, cfg.wrk_threads)
    except RuntimeError as err:
        out.append(Sample("catchup", "repeat read, If-None-Match -> 304, 32 conns", "req/s",
                          True, None, {"error": str(err)}))
        return out
    out.append(Sample("catchup", "repeat read, If-None-Match -> 304, 32 conns", "req/s", True,
                      _rate(run), _wrk_info(run, watch)))
    return out


# -- 5. end-to-end latency -------------------------------------------------------------------
def latency(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    out = []
    for mode in ("long-poll", "sse"):
        stream = _name("s5")
        with Client(t.base) as c:
            c.create(stream, "text/plain")
        watch = _CpuWatch(t)
        run = clients.live({"op": "latency", "base": t.base, "stream": stream, "mode": mode,
                            "count": cfg.latency_count, "warmup": 20,
                            "gap_ms": cfg.latency_gap_ms, "size": 100})
        r = run.out
        lat = r["latency_ms"]
        info = {"n": lat["n"], "p90_ms": lat["p90"], "max_ms": lat["max"],
                "append_ack_p50_ms": r["append_ack_ms"]["p50"],
                "append_ack_p99_ms": r["append_ack_ms"]["p99"],
                "missing": r["missing"], "errors": r["errors"],
                "error_samples": r["error_samples"],
                "client_cpu_pct": round(run.cpu_pct, 1), "server_cpu_pct": watch.pct()}
        out.append(Sample("latency", f"{mode} append->delivered p50", "ms", False, lat["p50"],
                          info))
        out.append(Sample("latency", f"{mode} append->delivered p99", "ms", False, lat["p99"],
                          {"samples_ms": r["samples_ms"]}))
        with Client(t.base) as c:
            c.delete(stream)
    return out


# -- 6. fan-out --------------------------------------------------------------------------
def fanout(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    out = []
    for n in cfg.fanout_sizes:
        for mode in ("sse", "long-poll"):
            t.restart()
            stream = _name("s6")
            with Client(t.base) as c:
                c.create(stream, "text/plain")
            time.sleep(0.5)
            rss0 = t.rss()
            rss: dict[str, int | None] = {}

            def on_event(msg: dict[str, Any], rss: dict[str, int | None] = rss) -> None:
                rss[msg["event"]] = t.rss()

            watch = _CpuWatch(t)
            try:
                run = clients.live({"op": "fanout", "base": t.base, "stream": stream,
                                    "mode": mode, "readers": n, "appends": cfg.fanout_appends,
                                    "gap_ms": cfg.fanout_gap_ms, "size": 100,
                                    "connect_batch": 250, "deliver_timeout_ms": 30000},
                                   on_event, timeout=600)
            except RuntimeError as err:
                out.append(Sample("fanout", f"{mode} x{n}: delivery p50", "ms", False, None,
                                  {"error": str(err)[-500:]}))
                continue
            r = run.out
            errors = r["errors"] + r["missing"] + r["connect_timeouts"]
            per_conn = None
            peak = max((v for v in rss.values() if v is not None), default=None)
            if rss0 is not None and peak is not None:
                per_conn = (peak - rss0) / n / 1024
            info = {"readers": n, "appends": r["appends"], "connect_s": round(r["connect_s"], 2),
                    "all_readers_p50_ms": r["all_readers_ms"]["p50"],
                    "all_readers_p99_ms": r["all_readers_ms"]["p99"],
                    "delivery_p90_ms": r["delivery_ms"]["p90"], "deliveries": r["delivery_ms"]["n"],
                    "missing": r["missing"], "errors": r["errors"],
                    "errors_connecting": r["errors_connecting"],
                    "errors_measuring": r["errors_measuring"],
                    "error_samples": r["error_samples"],
                    "rss_before_mib": rss0 and round(rss0 / MIB, 1),
                    "rss_peak_mib": peak and round(peak / MIB, 1),
                    "client_cpu_pct": round(run.cpu_pct, 1), "server_cpu_pct": watch.pct()}
            d = r["delivery_ms"]
            label = f"{mode} x{n}"
            out.append(Sample("fanout", f"{label}: delivery p50", "ms", False, d["p50"], info))
            out.append(Sample("fanout", f"{label}: delivery p99", "ms", False, d["p99"]))
            out.append(Sample("fanout", f"{label}: all readers have it, p99", "ms", False,
                              r["all_readers_ms"]["p99"]))
            out.append(Sample("fanout", f"{label}: server RSS per reader", "KiB", False,
                              per_conn and round(per_conn, 1)))
            out.append(Sample("fanout", f"{label}: errors", "count", False, float(errors)))
            with Client(t.base) as c:
                c.delete(stream)
            time.sleep(0.5)
    return out


# -- 7. subscriptions ----------------------------------------------------------------------
def _concurrently(requests: list[tuple[str, str, Any]], limit: int = 32) -> int:
    """Send (method, url, json) requests, ``limit`` at a time; returns how many failed."""
    import asyncio

    import httpx

    async def go() -> int:
        failed = 0
        sem = asyncio.Semaphore(limit)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=limit)) as client:
            async def one(method: str, url: str, body: Any) -> None:
                nonlocal failed
                async with sem:
                    r = await client.request(method, url, json=body)
                    failed += r.status_code >= 300
            for i in range(0, len(requests), 2000):
                await asyncio.gather(*(one(*r) for r in requests[i:i + 2000]))
        return failed

    return asyncio.run(go())


def _append_latencies(t: Target, paths: list[str], count: int) -> list[float]:
    import random

    import httpx

    rng = random.Random(7)
    out = []
    body = b'{"payload":"' + b"x" * 80 + b'"}'
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
        for i in range(count + 50):
            url = f"{t.base}/v1/stream/{rng.choice(paths)}"
            t0 = time.perf_counter()
            r = client.post(url, content=body)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code >= 300:
                raise RuntimeError(f"append failed: {r.status_code} {r.text[:200]}")
            if i >= 50:  # warm-up
                out.append(elapsed)
    return out


def subscriptions(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    """Append latency to random streams among 100,000 with 0, then 10,000 pull-wake
    subscriptions (10 per tenant prefix, so each append matches 10 of them)."""
    t.restart()
    tenants, per_tenant, subs = cfg.subs_tenants, cfg.subs_per_tenant, cfg.subs_count
    tag = uuid.uuid4().hex[:6]
    root = f"{t.base}/v1/stream"
    paths = [f"b{tag}t{i}/s{k}" for i in range(tenants) for k in range(per_tenant)]
    wake = f"b{tag}wake"
    t0 = time.monotonic()
    failed = _concurrently([("PUT", f"{root}/{wake}", [])]
                           + [("PUT", f"{root}/{p}", []) for p in paths])
    setup_streams = time.monotonic() - t0
    out = []
    for n in (0, subs):
        if n:
            t0 = time.monotonic()
            failed += _concurrently([
                ("PUT", f"{root}/__ds/subscriptions/b{tag}-{j}",
                 {"type": "pull-wake", "pattern": f"b{tag}t{j % tenants}/*",
                  "wake_stream": wake}) for j in range(n)])
            setup_subs = time.monotonic() - t0
        lat = sorted(_append_latencies(t, paths, cfg.subs_appends))
        info = {"streams": len(paths), "subscriptions": n, "appends": len(lat),
                "p90_ms": round(lat[int(len(lat) * 0.9)], 3),
                "setup_streams_s": round(setup_streams, 1), "setup_failures": failed,
                **({"setup_subscriptions_s": round(setup_subs, 1)} if n else {})}
        out.append(Sample("subscriptions", f"append p50, {n} subscriptions", "ms", False,
                          round(lat[len(lat) // 2], 3), info))
        out.append(Sample("subscriptions", f"append p99, {n} subscriptions", "ms", False,
                          round(lat[int(len(lat) * 0.99)], 3)))
    return out


SCENARIOS: dict[str, Callable[[Target, Config, int], list[Sample]]] = {
    "appends": small_appends,
    "batched": batched_json,
    "large": large_appends,
    "catchup": catch_up,
    "latency": latency,
    "fanout": fanout,
    "state": _state.state,
    "subscriptions": subscriptions,
}

# The proxy scenario lives in its own module (it needs an upstream of its own).
from .proxy import proxy  # noqa: E402

SCENARIOS["proxy"] = proxy

def _yjs(t: Target, cfg: Config, rnd: int) -> list[Sample]:
    from .yjs import yjs  # pycrdt and the Yjs client load only for this scenario

    return yjs(t, cfg, rnd)


SCENARIOS["yjs"] = _yjs

# Past one node: cross-node latency and fan-out through the nginx edge.
from .cluster import cdn, crossnode  # noqa: E402

SCENARIOS["crossnode"] = crossnode
SCENARIOS["cdn"] = cdn
