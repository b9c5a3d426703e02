"""The durable proxy (PROXY-PROTOCOL.md) through real HTTP: a proxy server in a
subprocess, a fake upstream (tests/fake_upstream.py) in a thread."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from duralog.proxy.signing import sign

from . import fake_upstream
from .proxy_support import SECRET, at, create, proxy_server, read_until_closed
from .servers import ServerProcess, ThreadedServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(fake_upstream.app) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("proxy") / "server.log"
    server = proxy_server(log_path=log).start()
    yield server
    server.stop()


def text_bytes(n: int) -> bytes:
    return "".join(fake_upstream.token(i) for i in range(n)).encode()


def error_code(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# -- 4.1 create, 4.2 read ---------------------------------------------------------------


def test_create_answers_201_with_presigned_location(proxy, upstream):
    r = create(proxy.url, upstream.url + "/v1/chat/completions?n=3")
    assert r.status_code == 201, r.text
    assert r.content == b""
    loc = r.headers["location"]
    assert re.fullmatch(re.escape(proxy.url) + r"/v1/proxy/[0-9a-f-]{36}\?expires=\d+"
                        r"&signature=[A-Za-z0-9_-]+", loc), loc
    expires = int(query(loc)["expires"])
    assert abs(expires - (time.time() + 24 * 3600)) < 120  # 7.4: 24 h by default
    assert r.headers["upstream-content-type"] == "text/event-stream"
    body, last = read_until_closed(loc)
    expected = httpx.post(upstream.url + "/v1/chat/completions?n=3").content
    assert body == expected
    assert last.headers["upstream-content-type"] == "text/event-stream"
    assert last.headers["proxy-outcome"] == "complete"


def test_201_comes_before_the_body_is_consumed(proxy, upstream):
    """4.1: the 201 must not wait for the body (here 200 tokens 20 ms apart = 4 s)."""
    start = time.monotonic()
    r = create(proxy.url, upstream.url + "/text?n=200&delay=20")
    assert r.status_code == 201
    assert time.monotonic() - start < 3.5
    first = httpx.get(at(r.headers["location"], {"offset": "-1"}))
    assert first.headers.get("stream-closed") is None  # still piping
    body, _ = read_until_closed(r.headers["location"])
    assert body == text_bytes(200)


def test_catch_up_long_poll_and_sse_reads(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=30&delay=10")
    loc = r.headers["location"]
    body, _ = read_until_closed(loc, live="long-poll")
    assert body == text_bytes(30)
    sse = httpx.get(at(loc, {"offset": "-1", "live": "sse"}), timeout=30)
    assert sse.status_code == 200
    assert sse.headers["upstream-content-type"].startswith("text/plain")
    events = [e for e in sse.text.split("\n\n") if e]
    data = "".join(line[5:] for e in events if e.startswith("event: data")
                   for line in e.split("\n")[1:])
    assert data == text_bytes(30).decode()
    assert '"streamClosed":true' in events[-1] and '"proxyOutcome":"complete"' in events[-1]
    # offset=now and a mid offset work as in the base protocol
    tail = httpx.get(at(loc, {"offset": "now"}))
    assert tail.content == b"" and tail.headers["stream-closed"] == "true"
    mid = httpx.get(at(loc, {"offset": "0000000000000000_0000000000000005"}))
    assert mid.content == text_bytes(30)[5:]


def test_binary_and_huge_bodies_round_trip(proxy, upstream):
    size = 8 << 20
    r = create(proxy.url, upstream.url + f"/binary?size={size}", method="GET")
    assert r.headers["upstream-content-type"] == "application/octet-stream"
    body, _ = read_until_closed(r.headers["location"])
    assert body == fake_upstream.pattern(size)
    sse = httpx.get(at(r.headers["location"], {"offset": "-1", "live": "sse"}), timeout=60)
    assert sse.headers["stream-sse-data-encoding"] == "base64"


# -- 4.1 errors, 6, 11 --------------------------------------------------------------------


def test_request_validation_errors(proxy, upstream):
    h = {"Authorization": f"Bearer {SECRET}"}
    r = httpx.post(proxy.url + "/v1/proxy", headers={**h, "Upstream-Method": "GET"})
    assert r.status_code == 400 and error_code(r) == "MISSING_UPSTREAM_URL"
    r = httpx.post(proxy.url + "/v1/proxy", headers={**h, "Upstream-URL": upstream.url})
    assert r.status_code == 400 and error_code(r) == "MISSING_UPSTREAM_METHOD"
    r = create(proxy.url, upstream.url + "/text", method="TRACE")
    assert r.status_code == 400 and error_code(r) == "INVALID_UPSTREAM_METHOD"
    r = create(proxy.url, "ftp://127.0.0.1/x", method="GET")
    assert r.status_code == 400 and error_code(r) == "INVALID_UPSTREAM_URL"


def test_allowlist_and_ssrf(proxy, upstream):
    port = urlsplit(upstream.url).port
    r = create(proxy.url, "http://example.com/x", method="GET")
    assert r.status_code == 403 and error_code(r) == "UPSTREAM_NOT_ALLOWED"
    # Matches the wildcard pattern http://local*:*/**, but resolves to loopback (12.1).
    r = create(proxy.url, f"http://localhost:{port}/text", method="GET")
    assert r.status_code == 403 and error_code(r) == "UPSTREAM_NOT_ALLOWED"
    assert "non-public" in r.json()["error"]["message"]


def test_redirects_are_refused(proxy, upstream):
    r = create(proxy.url, upstream.url + "/redirect?to=" + upstream.url + "/echo",
               method="GET")
    assert r.status_code == 400 and error_code(r) == "REDIRECT_NOT_ALLOWED"


def test_upstream_errors_answer_502_with_status_and_capped_body(proxy, upstream):
    r = create(proxy.url, upstream.url + "/v1/chat/completions?status=429")
    assert r.status_code == 502
    assert r.headers["upstream-status"] == "429"
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["message"] == "fake upstream error"
    big = create(proxy.url, upstream.url + "/x?status=500&size=500000", method="GET")
    assert big.status_code == 502 and big.headers["upstream-status"] == "500"
    assert 0 < len(big.content) <= 64 << 10  # 12.3


def test_header_timeout_is_504(proxy, upstream):
    r = create(proxy.url, upstream.url + "/slow-headers?wait=10", method="GET")
    assert r.status_code == 504 and error_code(r) == "UPSTREAM_TIMEOUT"


def test_body_inactivity_timeout_flushes_and_closes(proxy, upstream):
    r = create(proxy.url, upstream.url + "/stall?wait=30", method="GET")
    assert r.status_code == 201
    body, last = read_until_closed(r.headers["location"])
    assert body == b"before-stall"
    assert last.headers["proxy-outcome"] == "timeout"


def test_upstream_drop_mid_body_keeps_what_arrived(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=50&drop=10&delay=5", method="GET")
    body, last = read_until_closed(r.headers["location"])
    assert body == text_bytes(10)
    assert last.headers["proxy-outcome"] == "error"


# -- 5 headers ------------------------------------------------------------------------------


def test_headers_forwarded_and_filtered(proxy, upstream):
    r = create(proxy.url, upstream.url + "/echo", method="PUT", body=b'{"x": 1}', headers={
        "Content-Type": "application/json", "X-Custom": "kept",
        "Upstream-Authorization": "Bearer upstream-key", "Upstream-Extra": "dropped",
        "Proxy-Authorization": "Basic x", "TE": "trailers", "Keep-Alive": "timeout=5",
        "Connection": "keep-alive, X-Hop", "X-Hop": "named by Connection"})
    assert r.status_code == 201, r.text
    assert r.headers["upstream-content-type"] == "application/json"
    body, _ = read_until_closed(r.headers["location"])
    import json

    echo = json.loads(body)
    h = echo["headers"]
    assert echo["method"] == "PUT" and echo["body"] == '{"x": 1}'
    assert h["authorization"] == "Bearer upstream-key"  # 5.1
    assert h["x-custom"] == "kept" and h["content-type"] == "application/json"
    assert h["host"] == urlsplit(upstream.url).netloc
    for gone in ("proxy-authorization", "te", "keep-alive", "upstream-url", "upstream-method",
                 "upstream-authorization", "upstream-extra", "x-hop"):
        assert gone not in h, gone
    assert SECRET not in str(h)


# -- 4.3 abort, 4.4 head, 4.5 delete ----------------------------------------------------------


def test_abort_during_piping(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=2000&delay=10", method="GET")
    loc = r.headers["location"]
    first = httpx.get(at(loc, {"offset": "-1", "live": "long-poll"}), timeout=30)
    assert first.status_code == 200
    # Service auth is not enough to abort (4.3, 9.2).
    sid = urlsplit(loc).path.rsplit("/", 1)[1]
    no = httpx.patch(f"{proxy.url}/v1/proxy/{sid}?action=abort",
                     headers={"Authorization": f"Bearer {SECRET}"})
    assert no.status_code == 401 and error_code(no) == "MISSING_SIGNATURE"
    bad = httpx.patch(loc + "&action=stop")
    assert bad.status_code == 400 and error_code(bad) == "INVALID_ACTION"
    a = httpx.patch(loc + "&action=abort")
    assert a.status_code == 204
    body, last = read_until_closed(loc)
    assert last.headers["proxy-outcome"] == "aborted"
    assert 0 < len(body) < len(text_bytes(2000))
    assert text_bytes(2000).startswith(body)
    again = httpx.patch(loc + "&action=abort")  # idempotent
    assert again.status_code == 204
    assert read_until_closed(loc)[0] == body


def test_head_needs_service_auth(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=3", method="GET")
    loc = r.headers["location"]
    read_until_closed(loc)
    sid = urlsplit(loc).path.rsplit("/", 1)[1]
    h = httpx.head(f"{proxy.url}/v1/proxy/{sid}", headers={"Authorization": f"Bearer {SECRET}"})
    assert h.status_code == 200
    assert h.headers["upstream-content-type"].startswith("text/plain")
    assert h.headers["stream-closed"] == "true"
    assert h.headers["stream-next-offset"] == f"0000000000000000_{len(text_bytes(3)):016d}"
    assert httpx.head(loc).status_code == 401  # a pre-signed URL is not enough (7.3)
    assert httpx.head(f"{proxy.url}/v1/proxy/{sid}?secret=wrong").status_code == 401
    missing = httpx.head(f"{proxy.url}/v1/proxy/nope-{sid}?secret={SECRET}")
    assert missing.status_code == 404


def test_delete(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=2000&delay=10", method="GET")
    loc = r.headers["location"]
    sid = urlsplit(loc).path.rsplit("/", 1)[1]
    assert httpx.delete(loc).status_code == 401  # pre-signed URLs cannot delete
    d = httpx.delete(f"{proxy.url}/v1/proxy/{sid}", params={"secret": SECRET})
    assert d.status_code == 204
    gone = httpx.get(loc)
    assert gone.status_code == 404 and error_code(gone) == "STREAM_NOT_FOUND"
    again = httpx.delete(f"{proxy.url}/v1/proxy/{sid}", params={"secret": SECRET})
    assert again.status_code == 204  # idempotent


# -- 7, 9 auth ------------------------------------------------------------------------------


def test_auth_matrix(proxy, upstream):
    url = upstream.url + "/text?n=2"
    r = create(proxy.url, url, method="GET", secret=None)
    assert r.status_code == 401 and error_code(r) == "MISSING_SECRET"
    r = create(proxy.url, url, method="GET", secret="wrong")
    assert r.status_code == 401 and error_code(r) == "INVALID_SECRET"
    r = httpx.post(proxy.url + "/v1/proxy", params={"secret": SECRET},
                   headers={"Upstream-URL": url, "Upstream-Method": "GET"})
    assert r.status_code == 201  # ?secret= works as well as Bearer
    loc = r.headers["location"]
    read_until_closed(loc)
    sid = urlsplit(loc).path.rsplit("/", 1)[1]
    q = query(loc)
    base = f"{proxy.url}/v1/proxy/{sid}"
    assert httpx.get(loc).status_code == 200
    r = httpx.get(base)
    assert r.status_code == 401 and error_code(r) == "MISSING_SIGNATURE"
    r = httpx.get(base, params={"expires": q["expires"], "signature": q["signature"] + "x"})
    assert r.status_code == 401 and error_code(r) == "SIGNATURE_INVALID"
    r = httpx.get(base, params={"expires": str(int(q["expires"]) + 1),
                                "signature": q["signature"]})
    assert r.status_code == 401 and error_code(r) == "SIGNATURE_INVALID"
    past = int(time.time()) - 10
    r = httpx.get(base, params={"expires": past, "signature": sign(SECRET.encode(), sid, past)})
    assert r.status_code == 401 and error_code(r) == "SIGNATURE_EXPIRED"
    # Bound to one stream (7.3): this signature does not open another stream.
    other = create(proxy.url, url, method="GET").headers["location"]
    osid = urlsplit(other).path.rsplit("/", 1)[1]
    r = httpx.get(f"{proxy.url}/v1/proxy/{osid}", params=q)
    assert r.status_code == 401 and error_code(r) == "SIGNATURE_INVALID"
    # 9.2: reads fall back to service auth.
    assert httpx.get(base, params={"secret": SECRET}).status_code == 200
    assert httpx.get(base, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200


# -- 10 CORS, routes, isolation ---------------------------------------------------------------


def test_cors(proxy, upstream):
    r = httpx.options(proxy.url + "/v1/proxy", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "upstream-url, x-api-key"})
    assert r.status_code == 204
    allow = r.headers["access-control-allow-headers"].lower()
    for name in ("upstream-url", "upstream-method", "upstream-authorization", "x-api-key"):
        assert name in allow
    assert "PATCH" in r.headers["access-control-allow-methods"]
    created = create(proxy.url, upstream.url + "/text?n=1", method="GET")
    expose = created.headers["access-control-expose-headers"].lower()
    for name in ("location", "upstream-content-type", "upstream-status", "stream-next-offset",
                 "stream-closed", "stream-up-to-date", "stream-cursor"):
        assert name in expose
    assert created.headers["access-control-allow-origin"] == "*"


def test_routes_and_isolation(proxy, upstream):
    r = httpx.get(proxy.url + "/v1/proxy/a/b", params={"secret": SECRET})
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = httpx.get(proxy.url + "/v1/proxy", params={"secret": SECRET})
    assert r.status_code == 405
    loc = create(proxy.url, upstream.url + "/text?n=1", method="GET").headers["location"]
    sid = urlsplit(loc).path.rsplit("/", 1)[1]
    # The stored stream is not reachable (or writable) through the stream API.
    assert httpx.get(f"{proxy.url}/v1/stream/__ds/proxy/s/{sid}").status_code == 404
    assert httpx.post(f"{proxy.url}/v1/stream/__ds/proxy/s/{sid}", content=b"x").status_code \
        == 404


# -- resumption and load ------------------------------------------------------------------------


def test_client_cut_mid_stream_resumes_without_loss_or_repeat(proxy, upstream):
    r = create(proxy.url, upstream.url + "/text?n=300&delay=5", method="GET")
    loc = r.headers["location"]
    got = b""
    offset = "-1"
    cuts = 0
    while True:
        # Take a few events, then drop the connection abruptly.
        with httpx.Client(timeout=30) as client, client.stream(
                "GET", at(loc, {"offset": offset, "live": "sse"})) as resp:
            events = 0
            buf = ""
            closed = False
            for text in resp.iter_text():
                buf += text
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    lines = block.split("\n")
                    if lines[0] == "event: data":
                        pending = "\n".join(line[5:] for line in lines[1:])
                    elif lines[0] == "event: control":
                        import json

                        ctl = json.loads(lines[1][5:])
                        got += pending.encode()
                        pending = ""
                        offset = ctl["streamNextOffset"]
                        events += 1
                        closed = bool(ctl.get("streamClosed"))
                if closed or events >= 3:
                    break
        if closed:
            break
        cuts += 1
    assert cuts >= 2
    assert got == text_bytes(300)


def test_100_concurrent_generations(proxy, upstream):
    async def one(client: httpx.AsyncClient, i: int) -> bytes:
        r = await client.post(proxy.url + "/v1/proxy", headers={
            "Upstream-URL": upstream.url + f"/v1/messages?n=20&delay=10&i={i}",
            "Upstream-Method": "POST", "Authorization": f"Bearer {SECRET}"},
            content=b'{"stream": true}')
        assert r.status_code == 201, r.text
        loc, offset, parts = r.headers["location"], "-1", []
        while True:
            g = await client.get(at(loc, {"offset": offset, "live": "long-poll"}))
            assert g.status_code in (200, 204)
            parts.append(g.content)
            offset = g.headers["stream-next-offset"]
            if g.headers.get("stream-closed") == "true":
                assert g.headers["proxy-outcome"] == "complete"
                return b"".join(parts)

    async def main() -> list[bytes]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    expected = httpx.post(upstream.url + "/v1/messages?n=20").content
    results = asyncio.run(main())
    assert len(results) == 100 and all(body == expected for body in results)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_server_restart_mid_generation_closes_as_interrupted(how, upstream, tmp_path):
    data = tmp_path / "data"
    server = proxy_server("sqlite", data, log_path=tmp_path / "server.log").start()
    try:
        r = create(server.url, upstream.url + "/text?n=5000&delay=10", method="GET")
        loc = r.headers["location"]
        first = httpx.get(at(loc, {"offset": "-1", "live": "long-poll"}), timeout=30)
        assert first.status_code == 200
        time.sleep(0.3)
        # Everything readable just before the stop: body batches are committed without
        # an fsync (docs/proxy.md), which must survive the server being killed.
        seen = httpx.get(at(loc, {"offset": "-1"}), timeout=30).content
        server.kill() if how == "kill" else server.stop()
        server = proxy_server("sqlite", data, log_path=tmp_path / "server.log",
                              port=server.port).start()
        body, last = read_until_closed(loc)  # the same pre-signed URL still works
        assert last.headers["proxy-outcome"] == "interrupted"
        assert len(body) >= len(seen) >= len(first.content)
        assert body.startswith(seen)
        assert text_bytes(5000).startswith(body)
    finally:
        server.stop()


def test_proxy_is_off_unless_enabled(memory_server):
    r = httpx.post(memory_server.url + "/v1/proxy", headers={"Upstream-URL": "http://x/",
                                                              "Upstream-Method": "GET"})
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    assert "--proxy" in r.json()["error"]["message"]


def test_proxy_metrics(proxy, upstream):
    loc = create(proxy.url, upstream.url + "/text?n=2", method="GET").headers["location"]
    read_until_closed(loc)
    text = httpx.get(proxy.url + "/metrics").text
    assert "duralog_proxy_streams_created_total" in text
    assert 'duralog_proxy_streams_ended_total{outcome="complete"}' in text


@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_official_ts_client_reads_a_proxy_stream(live, proxy, upstream, node_available):
    """The pre-signed URL is an ordinary stream URL to the official TypeScript client
    (which the TypeScript durable fetch reads with): it keeps our query parameters."""
    import json
    import subprocess

    from .servers import ROOT

    loc = create(proxy.url, upstream.url + "/text?n=100&delay=5", method="GET").headers[
        "location"]
    args = {"url": loc, "live": live, "format": "bytes", "untilClosed": True,
            "timeoutMs": 60000}
    out = subprocess.run(["node", "tests/peers/ts-client.mjs", "read", json.dumps(args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    import base64

    data = base64.b64decode(result["b64"]) if "b64" in result else result["text"].encode()
    assert data == text_bytes(100)
