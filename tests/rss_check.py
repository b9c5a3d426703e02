"""Memory bound of large reads on the SQLite backend.

Writes SIZE MiB to one stream of a fresh ``--backend sqlite`` server, then reads
it back from offset -1 to the end in catch-up chunks while sampling the
server's resident set size (VmRSS) after every response. Reads are served from
disk in bounded pieces, so the peak must stay far below the stream's size.

    python -m tests.rss_check [SIZE_MIB]      # default 1024 (1 GiB)

tests/test_sqlite_store.py runs it (1 GiB when DURALOG_RSS_MIB is unset).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

from .servers import duralog_server

APPEND = 4 << 20  # bytes per POST


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run(size_mib: int, data_dir: Path) -> dict[str, float]:
    server = duralog_server("sqlite", data_dir=data_dir).start()
    assert server.proc is not None
    pid = server.proc.pid
    url = server.url + "/v1/stream/huge"
    octet = {"content-type": "application/octet-stream"}
    block = bytes(range(256)) * (APPEND // 256)
    total = size_mib << 20
    peak = 0.0
    try:
        with httpx.Client(timeout=120) as client:
            assert client.put(url, headers=octet).status_code == 201
            t0 = time.monotonic()
            written = 0
            while written < total:
                r = client.post(url, content=block, headers=octet)
                assert r.status_code == 204, r.text
                written += len(block)
            write_s = time.monotonic() - t0
            after_write = rss_mib(pid)
            t1 = time.monotonic()
            offset, read = "-1", 0
            while True:
                r = client.get(url, params={"offset": offset})
                assert r.status_code == 200
                body = r.content
                # Spot-check content: position p holds byte p % 256.
                if body:
                    assert body[0] == read % 256 and body[-1] == (read + len(body) - 1) % 256
                read += len(body)
                peak = max(peak, rss_mib(pid))
                offset = r.headers["stream-next-offset"]
                if r.headers.get("stream-up-to-date") == "true":
                    break
            read_s = time.monotonic() - t1
    finally:
        server.stop()
    assert read == written
    return {"size_mib": size_mib, "write_s": round(write_s, 1), "read_s": round(read_s, 1),
            "rss_after_write_mib": round(after_write, 1),
            "peak_rss_during_read_mib": round(peak, 1)}


def main(argv: list[str]) -> int:
    size = int(argv[0]) if argv else 1024
    with tempfile.TemporaryDirectory() as tmp:
        result = run(size, Path(tmp) / "data")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
