"""What an fsync per commit costs one small append on the SQLite store, in process.

``python -m bench.append_sync [--count N] [--rounds R]``: appends of ~10 bytes,
10 ms apart (the pace of tokens), to one stream of a fresh SQLiteStore,
synced (``synchronous=FULL``, every client append) and unsynced
(``AppendRequest(sync=False)``, the proxy's body batches), alternating; prints
the time from ``append()`` to its return (commit and hand-over to the loop).
This is the part of the proxy's per-token latency that the store adds
(docs/benchmarks.md, scenario 8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.store.sqlite import SQLiteStore


async def _run(sync: bool, count: int, gap: float) -> list[float]:
    with tempfile.TemporaryDirectory() as data:
        store = SQLiteStore(data)
        await store.start()
        try:
            await store.create("p", CreateRequest(content_type="text/plain"), None)
            lat = []
            for i in range(count):
                t0 = time.perf_counter()
                await store.append("p", AppendRequest(payload=b"token %d " % i, sync=sync))
                lat.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(gap)
        finally:
            await store.stop()
    return sorted(lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for sync in (True, False):
            lat = asyncio.run(_run(sync, args.count, 0.01))
            n = len(lat)
            print(f"{'synced  ' if sync else 'unsynced'} p50 {lat[n // 2]:.2f}  "
                  f"p90 {lat[int(n * 0.9)]:.2f}  p99 {lat[int(n * 0.99)]:.2f} ms")


if __name__ == "__main__":
    main()
