"""Storage measurements: ``python -m bench.storage producers|reclaim [options]``.

These measure one duralog server on its own (no reference server to compare
with), so they live beside the comparative scenarios of ``python -m bench``:

* ``producers``: append p50/p90 on a stream with no producers and on one with
  N producers (default 100,000) that each appended once, per backend.
* ``steps``: in process, the duration of each reclaim step (what an append
  can wait behind) while 1,000 streams of 100 KiB are reclaimed.
* ``reclaim``: create S streams holding B bytes in all (default 10,000 and
  1 GiB) on the SQLite backend, delete them all, and follow the background
  reclaim: streams and bytes reclaimed per second, and the file size before,
  after the deletes and once reclaiming is done.

Each prints one JSON line of figures (and progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.httpraw import Conn, split_url  # noqa: E402
from tests.servers import duralog_server  # noqa: E402

DB = "duralog.sqlite3"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _many(client: httpx.AsyncClient, requests: list[tuple[str, str, dict, bytes]],
                concurrency: int = 64) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        while queue:
            method, url, headers, body = queue.pop()
            r = await client.request(method, url, headers=headers, content=body)
            if r.status_code >= 300:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _append_times(url: str, n: int, first_seq: int) -> list[float]:
    """n producer appends, one at a time; the seconds each took (as a client sees it)."""
    host, port, path = split_url(url)
    times = []
    with Conn(host, port) as conn:
        for seq in range(first_seq, first_seq + n):
            t0 = time.perf_counter()
            r = conn.request("POST", path, b"x" * 100, {
                "Content-Type": "text/plain", "Producer-Id": "timed",
                "Producer-Epoch": "0", "Producer-Seq": str(seq)})
            times.append(time.perf_counter() - t0)
            assert r.status == 200, r.status
    return times


def producers(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {"producers": args.producers, "appends": args.appends}
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            server = duralog_server(backend, data_dir=Path(tmp) / "data").start()
            try:
                base = server.url + "/v1/stream/"
                for name in ("none", "many"):
                    httpx.put(base + name, headers={"content-type": "text/plain"})
                _log(f"{backend}: {args.producers} producers append once to 'many'...")
                t0 = time.monotonic()
                _seed(base + "many", args.producers)
                _log(f"  seeded in {time.monotonic() - t0:.1f} s")
                figures: dict[str, list[float]] = {}
                for rnd in range(args.rounds):
                    for name in (("none", "many") if rnd % 2 == 0 else ("many", "none")):
                        times = _append_times(base + name, args.appends, rnd * args.appends)
                        figures.setdefault(name, []).extend(times)
                for name, times in figures.items():
                    q = statistics.quantiles(times, n=10)
                    results[f"{backend}_{name}_p50_ms"] = round(statistics.median(times) * 1e3, 3)
                    results[f"{backend}_{name}_p90_ms"] = round(q[8] * 1e3, 3)
            finally:
                server.stop()
    return results


def _seed(url: str, n: int, threads: int = 16) -> None:
    """n producers append once each, on raw keep-alive connections (httpraw), so the
    client is not the bottleneck."""
    host, port, path = split_url(url)

    def run(lo: int) -> None:
        with Conn(host, port) as conn:
            for i in range(lo, n, threads):
                r = conn.request("POST", path, b"s", {
                    "Content-Type": "text/plain", "Producer-Id": f"p{i}",
                    "Producer-Epoch": "0", "Producer-Seq": "0"})
                if r.status != 200:
                    raise RuntimeError(f"seed append: {r.status}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))


def _requests(base: str, method: str, n: int, body: bytes, threads: int = 16) -> None:
    """``method`` on streams s0..s<n-1>, from ``threads`` raw keep-alive connections."""
    host, port, path = split_url(base)

    def run(lo: int) -> None:
        with Conn(host, port) as conn:
            for i in range(lo, n, threads):
                r = conn.request(method, f"{path}s{i}", body, {"Content-Type": "text/plain"})
                if r.status >= 300:
                    raise RuntimeError(f"{method} s{i}: {r.status}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))


def _db_figures(path: Path) -> tuple[int, int, int]:
    """(database bytes, streams waiting in garbage, free pages) read beside the server.

    The database size is its page count as a reader sees it (the WAL included):
    the main file itself only shrinks when the WAL is checkpointed into it."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as con:
        garbage = con.execute("SELECT count(*) FROM garbage").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    return pages * page_size, garbage, free


def reclaim(args: argparse.Namespace) -> dict[str, object]:
    per = args.total // args.streams
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        data = Path(tmp) / "data"
        server = duralog_server("sqlite", data_dir=data).start()
        try:
            base = server.url + "/v1/stream/"
            body = b"r" * per
            _log(f"creating {args.streams} streams of {per} bytes...")
            t0 = time.monotonic()
            _requests(base, "PUT", args.streams, body)
            created_s = time.monotonic() - t0
            size_full, _, _ = _db_figures(data / DB)
            _log(f"  {created_s:.1f} s; file {size_full / 2**20:.0f} MiB; deleting...")
            httpx.put(base + "probe", headers={"content-type": "text/plain"})
            t0 = time.monotonic()
            _requests(base, "DELETE", args.streams, b"")
            deleted = time.monotonic()
            _, waiting, _ = _db_figures(data / DB)
            _log(f"  deletes answered in {deleted - t0:.1f} s; reclaiming...")
            reclaimed_at = None
            shrunk_at = None
            size = size_full
            while time.monotonic() - t0 < args.timeout:
                size, garbage, free = _db_figures(data / DB)
                now = time.monotonic()
                if reclaimed_at is None and garbage == 0:
                    reclaimed_at = now
                if reclaimed_at is not None and free * 8 * 4096 < size:
                    shrunk_at = now
                    break
                time.sleep(0.05)
            # Appends meanwhile still answer (reclaiming runs between batches).
            r = httpx.post(base + "probe", content=b"x", headers={"content-type": "text/plain"})
            _log(f"  probe append: {r.status_code}")
        finally:
            server.stop()
        size_stopped = (data / DB).stat().st_size
    # Counted from the first DELETE (reclaiming overlaps the delete requests), so
    # the rates are lower bounds.
    reclaim_s = (reclaimed_at - t0) if reclaimed_at else None
    return {
        "streams": args.streams, "total_bytes": per * args.streams,
        "create_s": round(created_s, 2),
        "delete_requests_s": round(deleted - t0, 2),
        "reclaim_s": round(reclaim_s, 2) if reclaim_s else None,
        "streams_per_s": round(args.streams / reclaim_s) if reclaim_s else None,
        "mib_per_s": round(per * args.streams / 2**20 / reclaim_s, 1) if reclaim_s else None,
        "shrink_done_s": round(shrunk_at - t0, 2) if shrunk_at else None,
        # The background rate alone: streams still waiting when the last DELETE was
        # answered, and how fast they went.
        "waiting_after_deletes": waiting,
        "streams_per_s_after_deletes": round(waiting / (reclaimed_at - deleted))
        if reclaimed_at and reclaimed_at > deleted and waiting else None,
        "mib_per_s_after_deletes": round(waiting * per / 2**20 / (reclaimed_at - deleted), 1)
        if reclaimed_at and reclaimed_at > deleted and waiting else None,
        "db_bytes_full": size_full, "db_bytes_after_reclaim": size,
        "file_bytes_after_stop": size_stopped,
    }


def steps(args: argparse.Namespace) -> dict[str, object]:
    """Time each reclaim step in process: the longest an append can wait behind one."""
    from duralog.protocol.state import CreateRequest
    from duralog.store.sqlite import SQLiteStore

    async def run(data: Path) -> list[float]:
        store = SQLiteStore(data)
        await store.start()
        body = b"r" * (args.total // args.streams)
        await asyncio.gather(*(store.create(f"s{i}", CreateRequest(content_type="text/plain"),
                                            body) for i in range(args.streams)))
        times: list[float] = []
        step = store._collect_garbage

        def timed() -> None:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

        store._collect_garbage = timed  # type: ignore[method-assign]
        await asyncio.gather(*(store.delete(f"s{i}") for i in range(args.streams)))
        while store._gc_pending:
            await asyncio.sleep(0.05)
        await store.stop()
        return [t for t in times if t > 0.002]  # the last, empty checks are not steps

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        times = asyncio.run(run(Path(tmp) / "data"))
    return {"streams": args.streams, "total_bytes": args.total, "steps": len(times),
            "step_ms_min": round(min(times) * 1e3, 1),
            "step_ms_p50": round(statistics.median(times) * 1e3, 1),
            "step_ms_max": round(max(times) * 1e3, 1)}


def _size(text: str) -> int:
    from duralog.server.config import parse_size

    return parse_size(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("producers")
    p.add_argument("--producers", type=int, default=100_000)
    p.add_argument("--appends", type=int, default=500, help="timed appends per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--backends", nargs="+", default=["sqlite", "memory"])
    r = sub.add_parser("reclaim")
    r.add_argument("--streams", type=int, default=10_000)
    r.add_argument("--total", type=_size, default=1 << 30)
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--tmp", default=None, help="where the data directory goes")
    t = sub.add_parser("steps")
    t.add_argument("--streams", type=int, default=1000)
    t.add_argument("--total", type=_size, default=100 << 20)
    t.add_argument("--tmp", default=None)
    args = parser.parse_args(argv)
    figures = {"producers": producers, "reclaim": reclaim, "steps": steps}[args.what](args)
    print(json.dumps({"measure": args.what, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
