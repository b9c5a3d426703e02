"""Nothing stalls the event loop (issue 9, part 4), measured from outside.

Each test runs an offender against a real server while ``HeadProbe`` sends HEADs
back to back on another connection; the worst HEAD must stay under
``DURALOG_STALL_LIMIT_MS`` (default 500 ms: the issue's target is 100 ms, and
this box is shared; figures in docs/security.md). Sizes are CI-sized;
``DURALOG_STALL_SCALE=4`` runs them at the issue's sizes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from .servers import ServerProcess, duralog_server
from .test_limits import STALL_LIMIT, HeadProbe, rss_kib

SCALE = int(os.environ.get("DURALOG_STALL_SCALE", "1"))
ZERO = "0000000000000000_0000000000000000"


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"stalls-{request.param}")
    srv = duralog_server(request.param, data_dir=base / "data", log_path=base / "server.log",
                         extra=["--max-body-size", "256MiB"]).start()
    yield srv
    srv.stop()


def test_big_json_body_of_empty_objects(server: ServerProcess) -> None:
    """The issue's 32 MiB of ``{}`` (8 MiB here, x SCALE): validated off the loop."""
    url = server.url + "/v1/stream/json-flood"
    body = b"[" + b",".join([b"{}"] * ((8 << 20) * SCALE // 3)) + b"]"
    json = {"content-type": "application/json"}
    with httpx.Client(timeout=120) as client:
        assert client.put(url, headers=json).status_code == 201
        before = rss_kib(server)
        with HeadProbe(server) as probe:
            r = client.post(url, headers=json, content=body)
            time.sleep(0.2)
        assert r.status_code == 204, r.text
        grown = rss_kib(server) - before
        bad = client.post(url, headers=json, content=body[:-1] + b",]")
        assert bad.status_code == 400
    assert probe.worst < STALL_LIMIT, probe.worst
    # The parse happens in a worker process: the server holds the body, a few copies
    # at most, not the gigabyte of Python objects.
    assert grown < 6 * len(body) // 1024, f"RSS grew {grown} KiB for {len(body)} bytes"


def test_sub_offset_fork_into_a_million_messages(server: ServerProcess) -> None:
    url = server.url + "/v1/stream/million"
    json = {"content-type": "application/json"}
    body = b"[" + b",".join([b"1"] * 1_000_000) + b"]"
    with httpx.Client(timeout=120) as client:
        assert client.put(url, headers=json).status_code == 201
        assert client.post(url, headers=json, content=body).status_code == 204
        with HeadProbe(server) as probe:
            r = client.put(url + "-fork", headers={
                "stream-forked-from": "/v1/stream/million", "stream-fork-offset": ZERO,
                "stream-fork-sub-offset": "500000"})
            time.sleep(0.2)
        assert r.status_code == 201, r.text
    assert probe.worst < STALL_LIMIT, probe.worst


def test_slow_sse_readers_hold_one_chunk_and_cost_nothing_once_gone(
        server: ServerProcess) -> None:
    """Readers of a big binary stream that never read: each holds at most one encoded
    chunk (1 MiB of data is 1.33 MiB of base64); when they leave, the server stops
    encoding for them at once."""
    url = server.url + "/v1/stream/sse-backlog"
    octets = {"content-type": "application/octet-stream"}
    readers = 20 * SCALE
    with httpx.Client(timeout=120) as client:
        assert client.put(url, headers=octets).status_code == 201
        for _ in range(4 * SCALE):
            client.post(url, headers=octets, content=os.urandom(8 << 20))
        # Warm the store's own caches (sqlite's mapped pages) so they are not counted.
        offset = "-1"
        while True:
            r = client.get(url, params={"offset": offset})
            offset = r.headers["stream-next-offset"]
            if r.headers.get("stream-up-to-date") == "true":
                break
    time.sleep(0.5)
    before = rss_kib(server)
    socks = []
    for _ in range(readers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /v1/stream/sse-backlog?offset=-1&live=sse HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    time.sleep(2)
    # The encoded events shared between readers are bounded to 16 MiB in all
    # (live.py, _SSE_SHARED_BYTES): not a per-reader cost.
    per_reader = (rss_kib(server) - before - (16 << 10)) / readers
    with HeadProbe(server) as probe:
        time.sleep(0.2)
        for s in socks:
            s.close()
        time.sleep(1.5)
    # memory: one encoded chunk (1.33 MiB) and framing, measured 1.5 MiB. sqlite reads
    # in threads, and after the earlier tests of this module it measured 2.8 MiB per
    # reader (1.5 MiB on a fresh server); the extra is not explained yet (allocator
    # arenas of the reading threads are the suspect), so its bound is looser.
    bound = 2 * 1024 if server.args[server.args.index("--backend") + 1] == "memory" else 3 * 1024
    assert per_reader < bound, f"{per_reader:.0f} KiB per slow reader"
    assert probe.worst < STALL_LIMIT, probe.worst


def test_sse_of_many_empty_lines(server: ServerProcess) -> None:
    """Text SSE frames each line apart: 4 MiB of empty lines (4 chunks of a million
    lines each) used to hold the loop for about a second per chunk."""
    url = server.url + "/v1/stream/sse-lines"
    text = {"content-type": "text/plain"}
    with httpx.Client(timeout=120) as client:
        assert client.put(url, headers=text).status_code == 201
        assert client.post(url, headers=text, content=b"\n" * (4 << 20)).status_code == 204
        with HeadProbe(server) as probe:
            time.sleep(0.1)
            with client.stream("GET", url, params={"offset": "-1", "live": "sse"}) as r:
                got = 0  # each empty line arrives as "data:\n", six bytes
                for chunk in r.iter_raw():
                    got += len(chunk)
                    if got >= 6 * (4 << 20):
                        break
            time.sleep(0.1)
    assert got >= 6 * (4 << 20)
    assert probe.worst < STALL_LIMIT, probe.worst
