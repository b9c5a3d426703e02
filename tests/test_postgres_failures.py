"""PostgreSQL going away under a node (issue 13, "Failures"): requests that cannot
commit answer 503 with one line (never a false acknowledgement, never a 500), the
node reconnects by itself once the database is back, and a live reader waiting
across the outage is woken by the next append."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from .pg import PgServer
from .pg_cluster import pg_nodes
from .servers import read_all

TEXT = {"content-type": "text/plain"}


def test_database_restart_503_then_recovery(tmp_path: Path) -> None:
    with PgServer() as pg:
        url = pg.create_database("outage")
        (node,) = pg_nodes(url, 1, tmp_path, extra=["--long-poll-timeout", "60"])
        try:
            s = node.url + "/v1/stream/o"
            assert httpx.put(s, headers=TEXT, content=b"a").status_code == 201
            tail = httpx.head(s).headers["stream-next-offset"]
            got: list[httpx.Response] = []
            reader = threading.Thread(target=lambda: got.append(httpx.get(
                s, params={"offset": tail, "live": "long-poll"}, timeout=120)))
            reader.start()
            time.sleep(0.3)

            pg.stop("fast")
            for method, kwargs in [("POST", {"headers": TEXT, "content": b"lost"}),
                                   ("PUT", {"headers": TEXT}), ("GET", {}), ("HEAD", {}),
                                   ("DELETE", {})]:
                r = httpx.request(method, s if method != "PUT" else s + "-new", timeout=60,
                                  **kwargs)
                assert r.status_code == 503, (method, r.status_code, r.text)
                if method != "HEAD":
                    assert len(r.text.strip().splitlines()) == 1, r.text
            assert node.proc is not None and node.proc.poll() is None  # still serving
            deadline = time.monotonic() + 10  # the listener notices within a second
            while (ready := httpx.get(node.url + "/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "/readyz did not notice the outage"
                time.sleep(0.1)
            assert "database is unreachable" in ready.text

            pg.start()
            deadline = time.monotonic() + 30
            while True:  # the pool reconnects by itself: the first requests may still fail
                r = httpx.post(s, headers=TEXT, content=b"b", timeout=30)
                if r.status_code == 204:
                    break
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline, "the node did not reconnect"
                time.sleep(0.2)
            deadline = time.monotonic() + 10
            while httpx.get(node.url + "/readyz").status_code != 200:
                assert time.monotonic() < deadline, "/readyz did not recover"
                time.sleep(0.1)
            reader.join(90)
            # The reader that waited across the outage was woken by the append.
            assert got and got[0].status_code == 200 and got[0].content == b"b", got
            # Nothing unacknowledged was written: the refused append is not there.
            assert read_all(s) == b"ab"
        finally:
            node.stop()
        log = (tmp_path / "node0.log").read_text()
        for bad in ("unhandled error", "Traceback", "RuntimeWarning"):
            assert bad not in log, log[-3000:]


def test_restarts_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Eight idempotent producers append through two nodes while PostgreSQL restarts
    twice (immediate: crash recovery; then fast). A 503 is never an acknowledgement;
    each producer retries a refused append (through the other node) until it is
    acknowledged; in the end every append is in the stream exactly once."""
    from collections import Counter

    with PgServer() as pg:
        url = pg.create_database("load")
        a, b = pg_nodes(url, 2, tmp_path, extra=["--no-access-log"])
        try:
            httpx.put(a.url + "/v1/stream/s", headers=TEXT)
            sent: list[str] = []
            refused: list[int] = []
            stop = time.monotonic() + 6

            def producer(k: int) -> None:
                seq = 0
                with httpx.Client(timeout=60) as client:
                    while time.monotonic() < stop:
                        data, tries = f"<{k}.{seq}>", 0
                        while True:
                            node = (a, b)[(seq + tries) % 2]
                            try:
                                r = client.post(node.url + "/v1/stream/s", content=data,
                                                headers={**TEXT, "producer-id": f"p{k}",
                                                         "producer-epoch": "0",
                                                         "producer-seq": str(seq)})
                                if r.status_code in (200, 204):
                                    break
                                assert r.status_code == 503, (r.status_code, r.text)
                                refused.append(seq)
                            except httpx.TransportError:
                                pass
                            tries += 1
                            assert tries < 600, "the nodes did not recover"
                            time.sleep(0.05)
                        sent.append(data)
                        seq += 1

            threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            pg.restart("immediate")
            time.sleep(1.0)
            pg.restart("fast")
            for t in threads:
                t.join(120)
            counts = Counter(read_all(b.url + "/v1/stream/s").decode()
                             .replace("><", ">\n<").split("\n"))
            assert refused, "the restarts refused nothing: they did not happen under load"
            assert sorted(counts) == sorted(sent)
            assert all(n == 1 for n in counts.values())
        finally:
            a.stop()
            b.stop()
