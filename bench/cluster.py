"""Scenarios past one node: cross-node latency (two nodes over one PostgreSQL) and
fan-out through the nginx edge of deploy/nginx-cdn.conf (bench/cdn.py).

- ``crossnode``: append through node A, live reader (long-poll, SSE) on node B, one
  append at a time (bench/live.mjs's latency job with ``read_base``). Only targets
  with two or more nodes (``duralog-postgres-2``) have it.
- ``cdn``: N long-poll readers of one stream through nginx in front of the target,
  appends at the origin: delivery latency, and origin GET requests per append from
  the origin's /metrics (none for the reference, which has no /metrics).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from . import cdn as _cdn
from . import clients
from .httpraw import Client, split_url
from .targets import Target, free_port


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def crossnode(t: Target, cfg: Any, rnd: int) -> list[Any]:
    from .scenarios import Sample

    if len(t.nodes) < 2:
        return []
    a, b = t.nodes[0] + "/v1/stream", t.nodes[1] + "/v1/stream"
    out = []
    for mode in ("long-poll", "sse"):
        stream = _name("x1")
        with Client(a) as c:
            c.create(stream, "text/plain")
        run = clients.live({"op": "latency", "base": a, "read_base": b, "stream": stream,
                            "mode": mode, "count": cfg.latency_count, "warmup": 20,
                            "gap_ms": cfg.latency_gap_ms, "size": 100})
        r = run.out
        lat = r["latency_ms"]
        info = {"n": lat["n"], "p90_ms": lat["p90"], "max_ms": lat["max"],
                "append_ack_p50_ms": r["append_ack_ms"]["p50"],
                "append_ack_p99_ms": r["append_ack_ms"]["p99"],
                "missing": r["missing"], "errors": r["errors"],
                "error_samples": r["error_samples"], "client_cpu_pct": round(run.cpu_pct, 1)}
        out.append(Sample("crossnode", f"{mode} append on A -> reader on B p50", "ms", False,
                          lat["p50"], info))
        out.append(Sample("crossnode", f"{mode} append on A -> reader on B p99", "ms", False,
                          lat["p99"], {"samples_ms": r["samples_ms"]}))
        with Client(a) as c:
            c.delete(stream)
    return out


def cdn(t: Target, cfg: Any, rnd: int) -> list[Any]:
    from .scenarios import Sample

    nodes = t.nodes or [t.url]
    ports = [split_url(u)[1] for u in nodes]
    origin = nodes[0]
    out = []
    for n in cfg.cdn_sizes:
        base = Path(tempfile.mkdtemp(prefix="bench-cdn-"))
        stream = _name("cdn")
        with Client(origin + "/v1/stream") as c:
            c.create(stream, "text/plain")
        label = f"long-poll x{n} via nginx"
        try:
            with _cdn.Nginx(base, ports, free_port(), connections=n + 1024) as edge:
                r = _cdn.run_collapse(edge.url + "/v1/stream", origin + "/v1/stream", stream,
                                      n, appends=cfg.fanout_appends, gap_s=0.2, nodes=nodes)
        except Exception as err:  # one failure must not end the run
            out.append(Sample("cdn", f"{label}: delivery p50", "ms", False, None,
                              {"error": f"{type(err).__name__}: {err}"[-500:]}))
            continue
        d = r["delivery_ms"]
        errors = r["errors"] + r["missing_deliveries"] + (n - r["complete_readers"])
        info = {k: r[k] for k in ("readers", "appends", "connect_s", "complete_readers",
                                  "missing_deliveries", "errors", "error_samples",
                                  "origin_gets", "all_readers_ms")}
        info.update(delivery_p90_ms=d["p90"], delivery_max_ms=d["max"], deliveries=d["n"])
        out.append(Sample("cdn", f"{label}: origin GETs per append", "req", False,
                          r["origin_gets_per_append"], info))
        out.append(Sample("cdn", f"{label}: delivery p50", "ms", False, d["p50"]))
        out.append(Sample("cdn", f"{label}: delivery p99", "ms", False, d["p99"]))
        out.append(Sample("cdn", f"{label}: errors", "count", False, float(errors)))
        with Client(origin + "/v1/stream") as c:
            c.delete(stream)
        time.sleep(0.5)
    return out
