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

            pg.start()
            deadline = time.monotonic() + 30
            while True:  # the pool reconnects by itself: the first requests may still fail
                r = httpx.post(s, headers=TEXT, content=b"b", timeout=30)
                if r.status_code == 204:
                    break
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline, "the node did not reconnect"
                time.sleep(0.2)
            reader.join(90)
            # The reader that waited across the outage was woken by the append.
            assert got and got[0].status_code == 200 and got[0].content == b"b", got
            # Nothing unacknowledged was written: the refused append is not there.
            assert read_all(s) == b"ab"
        finally:
            node.stop()
        log = (tmp_path / "node0.log").read_text()
        assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
