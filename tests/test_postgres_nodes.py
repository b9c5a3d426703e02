"""Two duralog nodes over one PostgreSQL, talked to directly (issue 13).

Concurrent appends to one stream through both nodes (no gap, no duplicate),
producer state shared by the nodes, cross-node wakes of long-poll and SSE
readers, no lost wake across a lost LISTEN connection, background work done
once (each expired stream's registry event written once), and a schema newer
than the node knows refused with one line.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from .pg import PgServer, unique_name
from .pg_cluster import pg_nodes
from .servers import ServerProcess, read_all

TEXT = {"content-type": "text/plain"}


@pytest.fixture
def nodes(pg_server: PgServer, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    url = pg_server.create_database(unique_name("nodes"))
    started = pg_nodes(url, 2, tmp_path, extra=["--long-poll-timeout", "30"],
                       env={"DURALOG_SWEEP_INTERVAL": "0.5"})
    yield started
    for node in started:
        node.stop()


def stream(node: ServerProcess, name: str) -> str:
    return f"{node.url}/v1/stream/{name}"


def test_concurrent_appends_through_two_nodes_no_gap_no_duplicate(
        nodes: list[ServerProcess]) -> None:
    a, b = nodes
    assert httpx.put(stream(a, "s"), headers=TEXT).status_code == 201
    n = 300

    def append(i: int) -> tuple[int, str]:
        node = nodes[i % 2]
        r = httpx.post(stream(node, "s"), headers=TEXT, content=f"<{i}>".encode(), timeout=60)
        assert r.status_code == 204, r.text
        return i, r.headers["stream-next-offset"]

    with ThreadPoolExecutor(16) as pool:
        acks = list(pool.map(append, range(n)))
    body = read_all(stream(b, "s")).decode()
    # Every acknowledged append exactly once, whole (no gap, no duplicate, no tear).
    pieces = body.replace("><", ">\n<").split("\n")
    assert sorted(pieces) == sorted(f"<{i}>" for i in range(n))
    assert len(body) == sum(len(f"<{i}>") for i in range(n))
    # Each answer's offset is where that append ends in the stream both nodes serve.
    for i, offset in acks:
        end = int(offset.split("_")[1])
        assert body[end - len(f"<{i}>"):end] == f"<{i}>"
    assert len({o for _, o in acks}) == n
    assert httpx.head(stream(a, "s")).headers["stream-next-offset"] == \
        httpx.head(stream(b, "s")).headers["stream-next-offset"]


def test_one_producer_through_both_nodes(nodes: list[ServerProcess]) -> None:
    """5.2.1: producer state lives in the database, so a retry on the other node is a
    duplicate and a gap is refused there too."""
    a, b = nodes
    httpx.put(stream(a, "p"), headers=TEXT)

    def send(node: ServerProcess, seq: int, data: bytes) -> httpx.Response:
        return httpx.post(stream(node, "p"), content=data, headers={
            **TEXT, "producer-id": "w", "producer-epoch": "0", "producer-seq": str(seq)})

    assert send(a, 0, b"x").status_code == 200
    assert send(b, 0, b"x").status_code == 204  # the retry, through the other node
    assert send(b, 1, b"y").status_code == 200
    assert send(a, 3, b"z").status_code == 409  # a gap, seen from the other node
    assert read_all(stream(a, "p")) == b"xy"


def test_create_delete_seen_at_once_by_the_other_node(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    for i in range(20):
        name = f"c{i}"
        assert httpx.put(stream(a, name), headers=TEXT, content=b"1").status_code == 201
        assert httpx.head(stream(b, name)).status_code == 200
        assert httpx.post(stream(b, name), headers=TEXT, content=b"2").status_code == 204
        assert httpx.get(stream(a, name), params={"offset": "-1"}).content == b"12"
        assert httpx.delete(stream(a, name)).status_code == 204
        assert httpx.get(stream(b, name), params={"offset": "-1"}).status_code == 404
        assert httpx.put(stream(b, name), headers=TEXT, content=b"3").status_code == 201
        assert httpx.get(stream(a, name), params={"offset": "-1"}).content == b"3"


def _long_poll(url: str, offset: str, out: list[httpx.Response]) -> None:
    out.append(httpx.get(url, params={"offset": offset, "live": "long-poll"}, timeout=60))


def test_cross_node_wake_long_poll_and_sse(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    created = httpx.put(stream(a, "w"), headers=TEXT)
    tail = created.headers["stream-next-offset"]
    got: list[httpx.Response] = []
    waiter = threading.Thread(target=_long_poll, args=(stream(b, "w"), tail, got))
    waiter.start()
    time.sleep(0.5)  # let the reader reach its wait on node B
    assert httpx.post(stream(a, "w"), headers=TEXT, content=b"hello").status_code == 204
    waiter.join(60)
    # The server's long-poll timeout is 30 s: a 200 with the data means B was woken.
    assert got and got[0].status_code == 200 and got[0].content == b"hello"

    events: list[str] = []
    with httpx.stream("GET", stream(b, "w"), params={"offset": got[0].headers[
            "stream-next-offset"], "live": "sse"}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:  # the first control event: the reader is up to date
            if line.startswith("data:") and "upToDate" in line:
                break
        assert httpx.post(stream(a, "w"), headers=TEXT, content=b"again").status_code == 204
        for line in lines:
            if line.startswith("data:") and "again" in line:
                events.append(line)
                break
    assert events == ["data:again"]


def _terminate_listeners(pg: PgServer, database: str) -> int:
    out = pg.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                 f"application_name = 'duralog-listener' AND datname = '{database}'")
    return int(out)


def test_lost_listener_connection_loses_no_wake(pg_server: PgServer, tmp_path: Path) -> None:
    database = unique_name("listen")
    url = pg_server.create_database(database)
    a, b = pg_nodes(url, 2, tmp_path, extra=["--long-poll-timeout", "30"])
    try:
        for round_ in range(3):
            name = f"l{round_}"
            tail = httpx.put(stream(a, name), headers=TEXT).headers["stream-next-offset"]
            got: list[httpx.Response] = []
            waiter = threading.Thread(target=_long_poll, args=(stream(b, name), tail, got))
            waiter.start()
            time.sleep(0.3)
            _wait_for_listeners(pg_server, database)
            # Both nodes' LISTEN connections die and cannot come back (the database
            # takes no new connections) until the append has committed: its NOTIFY
            # reaches nobody, so only the re-check after reconnecting can wake B.
            pg_server.sql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            try:
                assert _terminate_listeners(pg_server, database) == 2
                r = httpx.post(stream(a, name), headers=TEXT, content=f"r{round_}".encode())
                assert r.status_code == 204, r.text  # A's pooled connection still works
                time.sleep(0.5)
                assert got == []  # nobody woke B yet
            finally:
                pg_server.sql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            waiter.join(60)
            assert got and got[0].status_code == 200, got
            assert got[0].content == f"r{round_}".encode()
        _wait_for_listeners(pg_server, database)  # and they came back once more
    finally:
        a.stop()
        b.stop()


def _wait_for_listeners(pg: PgServer, database: str) -> None:
    """Until both nodes have their LISTEN connection (again)."""
    deadline = time.monotonic() + 20
    while _count_listeners(pg, database) < 2:
        assert time.monotonic() < deadline, "the listeners did not reconnect"
        time.sleep(0.05)


def _count_listeners(pg: PgServer, database: str) -> int:
    return int(pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                      f"'duralog-listener' AND datname = '{database}'"))


def test_expiry_runs_once_across_nodes(nodes: list[ServerProcess]) -> None:
    """Both nodes sweep every 0.5 s and both see the expired streams; each expiry is
    committed once: one delete event per stream in the registry."""
    b = nodes[1]
    names = [f"e{i}" for i in range(10)]
    for i, name in enumerate(names):
        node = nodes[i % 2]
        assert httpx.put(stream(node, name), headers={**TEXT, "stream-ttl": "1"}).status_code \
            == 201
    deadline = time.monotonic() + 30
    while any(httpx.head(stream(n, name)).status_code != 404 for n in nodes for name in names):
        assert time.monotonic() < deadline, "expired streams are still served"
        time.sleep(0.2)
    time.sleep(1.5)  # several more sweeps on both nodes
    registry = read_all(stream(b, "__registry__"))
    events = orjson.loads(b"[" + registry + b"]") if registry[:1] != b"[" else orjson.loads(
        registry)
    for name in names:
        ops = [e["headers"]["operation"] for e in events if e.get("key") == name]
        assert ops == ["insert", "delete"], (name, ops)


def test_schema_newer_than_known_is_refused(pg_server: PgServer, tmp_path: Path) -> None:
    database = unique_name("future")
    url = pg_server.create_database(database)
    node = pg_nodes(url, 1, tmp_path)[0]
    node.stop()
    pg_server.sql("INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')",
                  database)
    proc = subprocess.run([sys.executable, "-m", "duralog", "serve", "--port", "0",
                           "--backend", "postgres", "--database-url", url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "schema is version 999, newer than this duralog knows" in lines[0]


def test_subscriptions_move_to_another_node_when_their_leader_dies(
        pg_server: PgServer, tmp_path: Path) -> None:
    """One node runs subscriptions (server/cluster.py); the other forwards to it. When
    that node is killed (kill -9), the survivor takes the role and serves the same
    subscription, replayed from the database."""
    database = unique_name("subs")
    url = pg_server.create_database(database)
    nodes = pg_nodes(url, 2, tmp_path)
    try:
        a, b = nodes
        assert httpx.put(stream(a, "wakes"), headers={"content-type": "application/json"},
                         content=b"[]").status_code == 201
        sub = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wakes",
               "lease_ttl_ms": 1000}
        for node in nodes:  # created through one node, re-confirmed through the other
            r = httpx.put(f"{node.url}/v1/stream/__ds/subscriptions/s1", json=sub)
            assert r.status_code in (200, 201), r.text
        leader_url = pg_server.sql("SELECT url FROM roles WHERE role = 'subscriptions'",
                                   database)
        leader = next(n for n in nodes if n.url == leader_url)
        survivor = b if leader is a else a
        leader.kill()
        deadline = time.monotonic() + 20
        while True:
            r = httpx.get(f"{survivor.url}/v1/stream/__ds/subscriptions/s1", timeout=10)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text  # while no node leads: retry
            assert time.monotonic() < deadline, "no node took over subscriptions"
            time.sleep(0.2)
        assert r.json()["pattern"] == "events/*"
        assert pg_server.sql("SELECT url FROM roles WHERE role = 'subscriptions'",
                             database) == survivor.url
    finally:
        for node in nodes:
            node.stop()
