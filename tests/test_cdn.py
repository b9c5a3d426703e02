"""deploy/nginx-cdn.conf, run as written (only ports and paths replaced, see
bench/cdn.py's ``render``) with real nginx in front of a real duralog server.

What the edge must do (PROTOCOL.md 10): serve repeated catch-up reads from its cache,
collapse many long-poll readers of one stream into about one origin request per
append, never cache what the server marks uncacheable (HEAD, offset=now, empty
answers at the tail), and pass SSE through live, unbuffered and not serialized
behind a cache lock. Origin requests are counted with the server's own
``duralog_http_requests_total``.

The collapse test runs 1,000 readers; DURALOG_CDN_READERS=10000 runs more.
"""

from __future__ import annotations

import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import cdn

from .servers import ServerProcess, duralog_server, free_port

pytestmark = pytest.mark.timeout(600)

READERS = int(os.environ.get("DURALOG_CDN_READERS", "1000"))


def _raise_fd_limit(want: int) -> None:
    """Every reader holds a socket in this process, and nginx (a child) one per reader."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"{READERS} readers need {want} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    _raise_fd_limit(READERS + 2048)
    base = tmp_path_factory.mktemp("cdn")
    server = duralog_server("memory", log_path=base / "server.log").start()
    nginx = cdn.Nginx(base / "nginx", [server.port], free_port(), connections=READERS + 1024)
    try:
        nginx.start()
        yield server, nginx.url
    finally:
        nginx.stop()
        server.stop()


def _stream(server: ServerProcess) -> tuple[str, str]:
    name = f"cdn-{uuid.uuid4().hex[:8]}"
    r = httpx.put(f"{server.url}/v1/stream/{name}", headers={"content-type": "text/plain"})
    assert r.status_code == 201
    return name, f"/v1/stream/{name}"


def _gets(server: ServerProcess) -> int:
    return cdn.origin_gets(server.url)


def test_catch_up_reads_are_served_from_the_cache(edge: tuple[ServerProcess, str]) -> None:
    server, url = edge
    _, path = _stream(server)
    for part in (b"one ", b"two ", b"three"):
        httpx.post(server.url + path, content=part, headers={"content-type": "text/plain"})
    with httpx.Client(base_url=url, timeout=30) as c:
        before = _gets(server)
        answers = [c.get(path, params={"offset": "-1"}) for _ in range(5)]
        after = _gets(server)
        assert all(r.status_code == 200 and r.content == b"one two three" for r in answers)
        assert [r.headers["x-cache-status"] for r in answers] == ["MISS"] + ["HIT"] * 4
        # One origin request for five reads (the second scrape counts the first).
        assert after - before - 1 == 1
        # 10.1: the empty answer at the tail changes with the next append: never cached.
        tail = answers[0].headers["stream-next-offset"]
        before = _gets(server)
        empty = [c.get(path, params={"offset": tail}) for _ in range(3)]
        after = _gets(server)
        assert all(r.content == b"" and r.headers["cache-control"] == "no-store" for r in empty)
        assert after - before - 1 == 3
        httpx.post(server.url + path, content=b"!", headers={"content-type": "text/plain"})
        r = c.get(path, params={"offset": tail})
        assert r.content == b"!"


def test_head_and_offset_now_are_never_cached(edge: tuple[ServerProcess, str]) -> None:
    server, url = edge
    _, path = _stream(server)
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(3):
            httpx.post(server.url + path, content=b"x" * (i + 1),
                       headers={"content-type": "text/plain"})
            tail = httpx.head(server.url + path).headers["stream-next-offset"]
            # 5.5: HEAD is the live tail; the edge must not turn it into a GET or cache it.
            h = c.head(path)
            assert h.status_code == 200
            assert h.headers["stream-next-offset"] == tail
            assert h.headers["cache-control"] == "no-store"
            assert h.headers["x-cache-status"] == "BYPASS"
            # 8: offset=now is the tail at the time of asking.
            now = c.get(path, params={"offset": "now"})
            assert now.headers["stream-next-offset"] == tail
            assert now.headers["x-cache-status"] == "BYPASS"


def test_sse_passes_through_live_and_side_by_side(edge: tuple[ServerProcess, str]) -> None:
    """Two SSE readers of the same URL both see an append while their responses stay
    open: SSE is neither buffered nor queued behind a cache lock."""
    server, url = edge
    _, path = _stream(server)
    tail = httpx.head(server.url + path).headers["stream-next-offset"]
    seen: list[list[bytes]] = [[], []]
    ready = threading.Barrier(3, timeout=30)

    def read(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c, \
                c.stream("GET", path, params={"offset": tail, "live": "sse"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            it = r.iter_raw()
            seen[k].append(next(it))  # the first control event: connected
            ready.wait()
            for chunk in it:
                seen[k].append(chunk)
                if b"hello through the edge" in b"".join(seen[k]):
                    return

    threads = [threading.Thread(target=read, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    httpx.post(server.url + path, content=b"hello through the edge",
               headers={"content-type": "text/plain"})
    for t in threads:
        t.join(30)
    assert all(b"hello through the edge" in b"".join(s) for s in seen), seen


def _report(label: str, result: dict[str, object]) -> None:
    d = result["delivery_ms"]
    assert isinstance(d, dict)
    print(f"\n{label}: {result['readers']} readers, {result['appends']} appends, "
          f"{result['origin_gets_per_append']:.1f} origin GETs per append, delivery p50 "
          f"{d['p50']:.1f} ms p99 {d['p99']:.1f} ms max {d['max']:.1f} ms; "
          f"all readers per append (ms) {result['all_readers_ms']}")


def test_long_polls_collapse_into_one_origin_request_per_append(
        edge: tuple[ServerProcess, str], record_property: pytest.RecordProperty) -> None:
    server, url = edge
    name, _ = _stream(server)
    result = cdn.run_collapse(url + "/v1/stream", server.url + "/v1/stream", name, READERS,
                              appends=5, gap_s=0.2)
    _report("through nginx", result)
    record_property("cdn_collapse", result)
    # Every reader got every append, in order, byte for byte, following its offsets
    # and the cursors it was given (and every answer carried one: 5.7).
    assert result["errors"] == 0, result["error_samples"]
    assert result["missing_deliveries"] == 0
    assert result["complete_readers"] == READERS
    assert result["answers_without_cursor"] == 0
    # The bound: at most 3 origin requests per append, for any number of readers.
    assert result["origin_gets_per_append"] <= 3, result


def test_without_the_cache_every_reader_reaches_the_origin(
        edge: tuple[ServerProcess, str], record_property: pytest.RecordProperty) -> None:
    """The comparison: the same readers straight at the origin cost one request each per
    append (the server's wake-up fan-out, but a request per reader all the same)."""
    server, _ = edge
    name, _ = _stream(server)
    n = min(READERS, 1000)
    result = cdn.run_collapse(server.url + "/v1/stream", server.url + "/v1/stream", name, n,
                              appends=5, gap_s=0.2)
    _report("straight at the origin", result)
    record_property("origin_direct", result)
    assert result["errors"] == 0, result["error_samples"]
    assert result["complete_readers"] == n
    # Each reader waits again before the next append, so each append answers each reader.
    assert result["origin_gets_per_append"] >= n


def test_the_shipped_config_is_what_runs(tmp_path: Path) -> None:
    """Only the upstream, the listen address and the cache path differ from the file."""
    text = (cdn.ROOT / "deploy/nginx-cdn.conf").read_text()
    rendered = cdn.render([4001, 4002], 8080, tmp_path)
    for line in text.splitlines():
        if line.strip() in ("server 127.0.0.1:4437;", "listen 80;") or \
                "/var/cache/nginx/duralog" in line:
            continue
        assert line in rendered.splitlines(), line
    assert "server 127.0.0.1:4001;" in rendered and "server 127.0.0.1:4002;" in rendered
    # The edge settings the collapse depends on are in the shipped file itself.
    for directive in ("proxy_cache_lock on;", "proxy_cache_min_uses 0;",
                      "proxy_cache_convert_head off;", "proxy_buffering off;",
                      'proxy_cache_key "$scheme://$host$request_uri";'):
        assert directive in text, directive


def test_a_long_poll_from_offset_now_is_not_cacheable(edge: tuple[ServerProcess, str]) -> None:
    """PROTOCOL.md 8: `now` is the tail when the reader asks. A cached answer would hand a
    later reader data appended before it asked, so the server marks it no-store (and the
    shipped edge does not even look: X-Cache-Status BYPASS)."""
    server, url = edge
    _, path = _stream(server)
    for base in (server.url, url):
        got: dict[str, httpx.Response] = {}

        def poll(base: str = base, got: dict[str, httpx.Response] = got) -> None:
            got["r"] = httpx.get(base + path, params={"live": "long-poll", "offset": "now"},
                                 timeout=30)

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)
        httpx.post(server.url + path, content=b"new", headers={"content-type": "text/plain"})
        t.join(30)
        r = got["r"]
        assert r.status_code == 200 and r.content == b"new"
        assert r.headers["cache-control"] == "no-store"
        if base == url:
            assert r.headers["x-cache-status"] == "BYPASS"
