"""The ``state`` scenario: materializing a State Protocol stream (duralog.state).

Fills a JSON stream with ``state_events`` change events over ``state_rows``
distinct keys (inserts, then updates and some deletes), then measures:

- catch-up + materialize: read from -1 with the duralog client and apply each
  chunk with ``MaterializedState.apply_json`` (the issue's >= 500,000 events/s);
- apply only: the same chunks already in memory (parsing and applying);
- StreamDB.sync(): the typed path (pydantic models, change notices);
- memory per row of a StreamDB and of a MaterializedState (tracemalloc).
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
import uuid
from typing import Any

import orjson

from duralog.client import DurableStream
from duralog.state import Collection, MaterializedState, StateSchema, StreamDB

from .targets import Target

BATCH = 5000  # events per append while filling


def _event(i: int, rows: int) -> dict[str, Any]:
    k = i % rows
    op = "insert" if i < rows else ("delete" if i % 97 == 0 else "update")
    e: dict[str, Any] = {"type": "user", "key": f"u{k}", "headers": {"operation": op}}
    if op != "delete":
        e["value"] = {"id": f"u{k}", "name": f"user {k}", "n": i, "active": i % 2 == 0}
    return e


def _fill(t: Target, events: int, rows: int) -> str:
    url = f"{t.base}/bench-state-{uuid.uuid4().hex[:8]}"
    stream = DurableStream(url, timeout=120)
    stream.create(content_type="application/json")
    for start in range(0, events, BATCH):
        body = orjson.dumps([_event(i, rows) for i in range(start, min(events, start + BATCH))])
        stream.append(body)
    stream.close_client()
    return url


def _schema() -> StateSchema:
    from pydantic import BaseModel

    class User(BaseModel):
        id: str
        name: str
        n: int
        active: bool

    return StateSchema({"users": Collection(type="user", model=User, primary_key="id")})


def state(t: Target, cfg: Any, rnd: int) -> list[Any]:
    from .scenarios import Sample

    if t.spec.kind == "reference":
        return []   # a client-side figure: measured once, against our server
    events, rows = cfg.state_events, cfg.state_rows
    key = f"state-{events}-{rows}"
    if key not in t.cache:
        t0 = time.perf_counter()
        t.cache[key] = (_fill(t, events, rows), time.perf_counter() - t0)
    url, fill_s = t.cache[key]
    stream = DurableStream(url, timeout=120)

    # 1. catch-up read + materialize (what a reader starting from -1 does).
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    state = MaterializedState()
    applied = 0
    chunks: list[tuple[bytes, str]] = []
    offset = "-1"
    for chunk in stream.read("-1"):
        applied += state.apply_bytes(chunk.data, offset)
        chunks.append((chunk.data, offset))
        offset = chunk.offset
    catchup_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    info: dict[str, Any] = {"events": applied,
                            "events_per_client_cpu_s": round(applied / cpu_s),
                            "load": [round(x, 1) for x in os.getloadavg()],
                            "rows": len(state), "chunks": len(chunks),
                            "stream_mb": round(sum(len(c) for c, _ in chunks) / 1e6, 1),
                            "fill_s": round(fill_s, 1)}
    if applied != events:
        info["error"] = f"applied {applied} events, expected {events}"
    out = [Sample("state", "catch-up read + materialize", "events/s", True,
                  applied / catchup_s, dict(info))]

    # 2. apply only (JSON parse + apply_json of chunks already read).
    t0, c0 = time.perf_counter(), time.process_time()
    again = MaterializedState()
    for data, off in chunks:
        again.apply_bytes(data, off)
    out.append(Sample("state", "parse + apply (in memory)", "events/s", True,
                      events / (time.perf_counter() - t0),
                      {"events": events,
                       "events_per_cpu_s": round(events / (time.process_time() - c0))}))

    # 3. StreamDB.sync(): typed rows (pydantic), one atomic batch.
    schema = _schema()
    db = StreamDB(url, schema)
    t0, c0 = time.perf_counter(), time.process_time()
    n = db.sync()
    out.append(Sample("state", "StreamDB.sync (pydantic rows)", "events/s", True,
                      n / (time.perf_counter() - t0),
                      {"events": n, "rows": len(db.users),
                       "events_per_client_cpu_s": round(n / (time.process_time() - c0))}))
    db.close()
    del db, again

    # 4. Memory per row (tracemalloc: what stays allocated after the catch-up).
    if rnd == 0:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        db = StreamDB(url, schema)
        db.sync()
        gc.collect()
        db_bytes = tracemalloc.get_traced_memory()[0] - base
        db_rows = len(db.users)
        db.close()
        del db
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        ms = MaterializedState()
        for data, off in chunks:
            ms.apply_bytes(data, off)
        gc.collect()
        raw_bytes = tracemalloc.get_traced_memory()[0] - base
        for _ in ms:   # values decoded, as after reading them all
            pass
        gc.collect()
        ms_bytes = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        out.append(Sample("state", "MaterializedState memory per row (values unread)",
                          "bytes", False, raw_bytes / max(len(ms), 1),
                          {"rows": len(ms), "total_mb": round(raw_bytes / 1e6, 1)}))
        out.append(Sample("state", "StreamDB memory per row", "bytes", False,
                          db_bytes / max(db_rows, 1), {"rows": db_rows,
                                                        "total_mb": round(db_bytes / 1e6, 1)}))
        out.append(Sample("state", "MaterializedState memory per row (values read)", "bytes",
                          False,
                          ms_bytes / max(len(ms), 1), {"rows": len(ms),
                                                        "total_mb": round(ms_bytes / 1e6, 1)}))
    stream.close_client()
    return out
