"""``python -m bench.stalls [memory|sqlite]``: worst event-loop stall per offender.

Starts a duralog server, runs each offender of issue 9 once while another
process sends HEADs back to back on its own connection, and prints the worst HEAD latency: how long
the event loop was held. Figures are in docs/security.md.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable

import httpx

from tests.servers import duralog_server
from tests.test_limits import HeadProbe

ZERO = "0000000000000000_0000000000000000"


def main(backend: str = "memory") -> None:
    srv = duralog_server(backend, data_dir=tempfile.mkdtemp(prefix="stalls-"),
                         extra=["--max-body-size", "128MiB"]).start()
    base = srv.url + "/v1/stream"

    def measure(name: str, fn: Callable[[], object]) -> None:
        # The prober is its own process (tests/head_probe.py): the server's stalls,
        # not this process's GIL while it builds or sends a large body.
        with HeadProbe(srv) as probe:
            t = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - t
            time.sleep(0.2)
        lat = probe.latencies
        print(f"{backend} {name}: {result} in {elapsed:.2f}s, worst HEAD "
              f"{max(lat) * 1000:.0f} ms ({len(lat)} probes)", flush=True)

    json = {"content-type": "application/json"}
    octets = {"content-type": "application/octet-stream"}
    text = {"content-type": "text/plain"}
    try:
        c = httpx.Client(timeout=120)
        c.put(base + "/probe")
        c.put(base + "/k", headers=json)
        flood = b"[" + b",".join([b"{}"] * (11 << 20)) + b"]"
        measure("append 33 MiB of {} (JSON)",
                lambda: c.post(base + "/k", headers=json, content=flood).status_code)
        # The largest body the default --max-body-size (64 MiB) lets in.
        flood64 = b"[" + b",".join([b"{}"] * ((64 << 20) // 3 - 1)) + b"]"
        measure("append 64 MiB of {} (JSON, the default --max-body-size)",
                lambda: c.post(base + "/k", headers=json, content=flood64).status_code)
        c.put(base + "/o", headers=octets)
        blob = os.urandom(64 << 20)
        measure("append 64 MiB octets",
                lambda: c.post(base + "/o", headers=octets, content=blob).status_code)
        c.put(base + "/t", headers=octets)
        c.post(base + "/t", headers=octets, content=os.urandom(1 << 20))
        measure("gzip catch-up of 1 MiB of random bytes", lambda: c.get(
            base + "/t", params={"offset": "-1"}, headers={"accept-encoding": "gzip"}
        ).status_code)
        c.put(base + "/j1", headers=json)
        c.post(base + "/j1", headers=json, content=b"[" + b",".join([b"1"] * 1_000_000) + b"]")
        measure("sub-offset fork 500000 of 1M", lambda: c.put(base + "/f", headers={
            "stream-forked-from": "/v1/stream/j1", "stream-fork-offset": ZERO,
            "stream-fork-sub-offset": "500000"}).status_code)
        c.put(base + "/nl", headers=text)
        c.post(base + "/nl", headers=text, content=b"\n" * (4 << 20))

        def sse() -> int:
            n = 0
            with c.stream("GET", base + "/nl", params={"offset": "-1", "live": "sse"}) as r:
                for chunk in r.iter_raw():
                    n += len(chunk)
                    if n >= 6 * (4 << 20):
                        break
            return r.status_code

        measure("SSE of 4 MiB of empty lines", sse)

        c.put(base + "/big", headers=octets)
        for _ in range(16):
            c.post(base + "/big", headers=octets, content=os.urandom(8 << 20))

        def slow_readers() -> str:
            """240 SSE readers of a 128 MiB binary stream connect at once, never read."""
            socks = []
            for _ in range(240):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", srv.port))
                s.sendall(b"GET /v1/stream/big?offset=-1&live=sse HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(s)
            time.sleep(5)
            for s in socks:
                s.close()
            return "240 readers"

        measure("240 slow SSE readers of 128 MiB connect at once", slow_readers)

        def many_headers() -> str:
            s = socket.create_connection(("127.0.0.1", srv.port))
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                for _ in range(15_000):
                    s.sendall(b"X-Rep: " + b"v" * 1000 + b"\r\n")
            except OSError:
                pass
            answer = s.recv(100)
            s.close()
            return answer[:12].decode()

        measure("15,000 x 1 KB headers", many_headers)
    finally:
        srv.stop()


if __name__ == "__main__":
    main(*sys.argv[1:2])
