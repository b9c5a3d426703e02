"""Server behaviour the official conformance suite does not cover.

The __registry__ stream, chunk-size bounded catch-up, gzip, ETag/304 details,
CORS and browser security headers, `duralog serve` configuration (flags and
DURALOG_* variables), TTL sliding on GET but not HEAD, the SSE maximum
duration and the long-poll timeout flag.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from duralog.protocol.sse import parse_events
from duralog.server.app import DuralogApp
from duralog.server.config import DEFAULT_PORT, Config

from .servers import ROOT, ServerProcess, ThreadedServer, duralog_server, free_port

pytestmark = pytest.mark.timeout(120)

PREFIX = "/v1/stream/"
TIMEOUT = httpx.Timeout(10.0)
BACKENDS = ["memory", "sqlite"]


def unique(prefix: str = "it") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, httpx.Client]]:
    cache: dict[str, httpx.Client] = {}
    yield cache
    for c in cache.values():
        c.close()


def client_for(clients: dict[str, httpx.Client], server: ServerProcess) -> httpx.Client:
    if server.url not in clients:
        clients[server.url] = httpx.Client(base_url=server.url, timeout=TIMEOUT)
    return clients[server.url]


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, clients: dict[str, httpx.Client]) -> httpx.Client:
    return client_for(clients, request.getfixturevalue(f"{request.param}_server"))


def read_all(client: httpx.Client, path: str, offset: str = "-1",
             headers: dict[str, str] | None = None) -> tuple[list[httpx.Response], str]:
    """Catch-up reads following Stream-Next-Offset until Stream-Up-To-Date."""
    responses = []
    for _ in range(10_000):
        r = client.get(path, params={"offset": offset}, headers=headers)
        assert r.status_code == 200, r.text
        responses.append(r)
        offset = r.headers["stream-next-offset"]
        if r.headers.get("stream-up-to-date") == "true":
            return responses, offset
    raise AssertionError("never up to date")


# ---------------------------------------------------------------------------
# __registry__


def registry_events(client: httpx.Client) -> list[dict]:
    responses, _ = read_all(client, PREFIX + "__registry__")
    events: list[dict] = []
    for r in responses:
        assert r.headers["content-type"].startswith("application/json")
        events.extend(r.json())
    return events


def test_registry_records_creates_and_deletes_in_order(client: httpx.Client) -> None:
    a, b = unique("reg-a"), unique("reg-b")
    assert client.put(PREFIX + a, headers={"content-type": "text/plain"}).status_code == 201
    assert client.put(PREFIX + b, headers={"content-type": "application/json"}).status_code == 201
    # an idempotent re-create is not a second insert
    assert client.put(PREFIX + a, headers={"content-type": "text/plain"}).status_code == 200
    assert client.delete(PREFIX + a).status_code == 204

    mine = [e for e in registry_events(client) if e.get("key") in (a, b)]
    assert [(e["key"], e["headers"]["operation"]) for e in mine] == [
        (a, "insert"), (b, "insert"), (a, "delete")]
    for event in mine:
        assert event["type"] == "stream"
    insert_a, insert_b, _ = mine
    assert insert_a["value"]["contentType"] == "text/plain"
    assert insert_b["value"]["contentType"] == "application/json"


def test_registry_records_forks(client: httpx.Client) -> None:
    src, fork = unique("reg-src"), unique("reg-fork")
    client.put(PREFIX + src, headers={"content-type": "text/plain"}, content=b"abc")
    r = client.put(PREFIX + fork, headers={"stream-forked-from": PREFIX + src})
    assert r.status_code == 201
    keys = [e["key"] for e in registry_events(client)
            if e["headers"]["operation"] == "insert"]
    assert src in keys and fork in keys
    assert keys.index(src) < keys.index(fork)


def test_registry_records_expiry_as_delete(client: httpx.Client) -> None:
    # An expired stream is gone (4): the registry must not list it as live forever.
    name = unique("reg-ttl")
    r = client.put(PREFIX + name, headers={"content-type": "text/plain", "stream-ttl": "1"})
    assert r.status_code == 201
    time.sleep(1.5)
    assert client.head(PREFIX + name).status_code == 404
    # the removal may be committed in the background: allow it a few seconds
    deadline = time.monotonic() + 8
    while True:
        ops = [e["headers"]["operation"] for e in registry_events(client)
               if e.get("key") == name]
        if ops != ["insert"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ops == ["insert", "delete"]


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_clients_cannot_write_the_registry(client: httpx.Client, method: str) -> None:
    client.put(PREFIX + unique(), headers={"content-type": "text/plain"})
    before = client.head(PREFIX + "__registry__").headers["stream-next-offset"]
    forged = json.dumps({"type": "stream", "key": "forged", "value": {},
                         "headers": {"operation": "insert"}})
    r = client.request(method, PREFIX + "__registry__", content=forged,
                       headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    head = client.head(PREFIX + "__registry__")
    assert head.status_code == 200
    assert head.headers["stream-next-offset"] == before
    assert all(e.get("key") != "forged" for e in registry_events(client))


def test_registry_is_json_and_not_recorded_in_itself(client: httpx.Client) -> None:
    client.put(PREFIX + unique(), headers={"content-type": "text/plain"})
    head = client.head(PREFIX + "__registry__")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("application/json")
    assert all(e.get("key") != "__registry__" for e in registry_events(client))


# ---------------------------------------------------------------------------
# Servers with small limits: chunk size and long-poll timeout flags

CHUNK = 1000
LONG_POLL = 1.0
MAX_BODY = 8000


@pytest.fixture(scope="module", params=BACKENDS)
def small_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"small-{request.param}")
    server = duralog_server(request.param, data_dir=base / "data", log_path=base / "server.log",
                            extra=["--chunk-size", str(CHUNK),
                                   "--long-poll-timeout", str(LONG_POLL),
                                   "--max-body-size", str(MAX_BODY)]).start()
    yield server
    server.stop()


@pytest.fixture
def small(small_server: ServerProcess, clients: dict[str, httpx.Client]) -> httpx.Client:
    return client_for(clients, small_server)


def test_chunked_catch_up_of_bytes(small: httpx.Client) -> None:
    data = bytes((i * 7 + i // 256) % 256 for i in range(10 * 1024))
    name = unique()
    # a big initial body and a few appends of odd sizes
    small.put(PREFIX + name, headers={"content-type": "application/octet-stream"},
              content=data[:6000])
    for lo, hi in ((6000, 6001), (6001, 8500), (8500, len(data))):
        r = small.post(PREFIX + name, headers={"content-type": "application/octet-stream"},
                       content=data[lo:hi])
        assert r.status_code == 204
    responses, tail = read_all(small, PREFIX + name)
    assert b"".join(r.content for r in responses) == data
    assert len(responses) >= len(data) // CHUNK
    assert all(len(r.content) <= CHUNK for r in responses)
    # Stream-Up-To-Date only on the last piece (5.6)
    assert [r.headers.get("stream-up-to-date") for r in responses[:-1]] == [None] * (
        len(responses) - 1)
    assert responses[-1].headers["stream-up-to-date"] == "true"
    assert tail == small.head(PREFIX + name).headers["stream-next-offset"]
    # offsets strictly increase, and lexicographic order agrees (8)
    offsets = [r.headers["stream-next-offset"] for r in responses]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_fork_at_an_offset_inside_an_append(small: httpx.Client) -> None:
    # A chunked read hands out offsets inside one append (5.6); a fork made there must
    # inherit exactly the bytes before it (4.2), part of that append included.
    source, fork = unique(), unique()
    data = os.urandom(2 * CHUNK + 123)
    small.put(PREFIX + source, headers={"content-type": "application/octet-stream"},
              content=data)
    first = small.get(PREFIX + source, params={"offset": "-1"})
    middle = first.headers["stream-next-offset"]
    assert first.content == data[:CHUNK]
    r = small.put(PREFIX + fork, headers={"stream-forked-from": PREFIX + source,
                                          "stream-fork-offset": middle})
    assert r.status_code == 201
    small.post(PREFIX + fork, headers={"content-type": "application/octet-stream"},
               content=b"own")
    responses, _ = read_all(small, PREFIX + fork)
    assert b"".join(r.content for r in responses) == data[:CHUNK] + b"own"


def test_chunked_catch_up_of_a_closed_stream(small: httpx.Client) -> None:
    name = unique()
    data = os.urandom(3 * CHUNK + 17)
    small.put(PREFIX + name, headers={"content-type": "application/octet-stream",
                                      "stream-closed": "true"}, content=data)
    responses, tail = read_all(small, PREFIX + name)
    assert b"".join(r.content for r in responses) == data
    # 5.6: Stream-Closed only once the reader has reached the final offset
    assert [r.headers.get("stream-closed") for r in responses] == [None] * (
        len(responses) - 1) + ["true"]
    eof = small.get(PREFIX + name, params={"offset": tail})
    assert eof.status_code == 200 and eof.content == b""
    assert eof.headers["stream-closed"] == "true"


def test_chunked_catch_up_of_json_keeps_messages_whole(small: httpx.Client) -> None:
    name = unique()
    small.put(PREFIX + name, headers={"content-type": "application/json"})
    messages = [{"i": i, "pad": "x" * (37 + i % 50)} for i in range(120)]
    for i in range(0, len(messages), 4):
        r = small.post(PREFIX + name, headers={"content-type": "application/json"},
                       content=json.dumps(messages[i:i + 4]))
        assert r.status_code == 204
    responses, _ = read_all(small, PREFIX + name)
    assert len(responses) > 1
    got: list[dict] = []
    for r in responses:
        page = r.json()  # every piece is a complete JSON array (9.1.5)
        assert isinstance(page, list) and page
        got.extend(page)
    assert got == messages


def _sse_events(client: httpx.Client, path: str) -> list[tuple[str, str]]:
    with client.stream("GET", path, params={"offset": "-1", "live": "sse"}) as r:
        assert r.status_code == 200
        encoding = r.headers.get("stream-sse-data-encoding")
        events = parse_events(r.read().decode())
    assert events and events[-1][0] == "control"
    assert json.loads(events[-1][1])["streamClosed"] is True
    return [(encoding or "", d) for n, d in events if n == "data"]


def test_sse_in_chunks_keeps_multibyte_text_whole(small: httpx.Client) -> None:
    # 5.8: text travels as UTF-8 text; a chunk boundary inside a character must not
    # turn it into replacement characters.
    name = unique()
    text = ("\u00e9\u20ac\U0001f600" * 400)  # 2, 3 and 4 byte characters; > CHUNK bytes
    small.put(PREFIX + name, headers={"content-type": "text/plain; charset=utf-8",
                                      "stream-closed": "true"}, content=text.encode())
    data = _sse_events(small, PREFIX + name)
    assert len(data) > 1
    assert "".join(d for _, d in data) == text


def test_sse_in_chunks_base64_per_event(small: httpx.Client) -> None:
    name = unique()
    raw = os.urandom(2 * CHUNK + 333)
    small.put(PREFIX + name, headers={"content-type": "application/octet-stream",
                                      "stream-closed": "true"}, content=raw)
    data = _sse_events(small, PREFIX + name)
    assert len(data) > 1
    decoded = b""
    for encoding, payload in data:
        assert encoding == "base64"
        text = payload.replace("\n", "").replace("\r", "")
        assert len(text) % 4 == 0  # 5.8: each event is valid base64 on its own
        decoded += base64.b64decode(text, validate=True)
    assert decoded == raw


def test_long_poll_timeout_flag(small: httpx.Client) -> None:
    name = unique()
    put = small.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"x")
    tail = put.headers["stream-next-offset"]
    started = time.monotonic()
    # the default timeout is 30 s; a 10 s client timeout shows the flag is honoured
    r = small.get(PREFIX + name, params={"offset": tail, "live": "long-poll"},
                  timeout=httpx.Timeout(10.0))
    elapsed = time.monotonic() - started
    assert r.status_code == 204
    assert elapsed >= LONG_POLL * 0.9  # it did wait
    assert r.content == b""
    assert r.headers["stream-next-offset"] == tail
    assert r.headers["stream-up-to-date"] == "true"
    assert r.headers["stream-cursor"].isdigit()
    assert "stream-closed" not in r.headers


# ---------------------------------------------------------------------------
# JSON numbers


def test_json_big_numbers_round_trip_exactly(client: httpx.Client) -> None:
    # 9.1: the server stores messages; it must not change them. Integers past 64 bits
    # must come back digit for digit, not as a rounded float.
    name = unique()
    client.put(PREFIX + name, headers={"content-type": "application/json"})
    big = "123456789012345678901234567890"
    body = f'[{big}, {{"id": 18446744073709551616}}, -9223372036854775809, 1.5e300]'
    r = client.post(PREFIX + name, headers={"content-type": "application/json"}, content=body)
    assert r.status_code == 204
    text = client.get(PREFIX + name, params={"offset": "-1"}).text
    assert big in text
    assert "18446744073709551616" in text
    assert "-9223372036854775809" in text
    assert json.loads(text) == [int(big), {"id": 18446744073709551616},
                                -9223372036854775809, 1.5e300]


# ---------------------------------------------------------------------------
# gzip


def _raw(client: httpx.Client, path: str, params: dict[str, str],
         headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    with client.stream("GET", path, params=params, headers=headers) as r:
        raw = b"".join(r.iter_raw())
    return r, raw


def test_gzip_when_accepted(client: httpx.Client) -> None:
    name = unique()
    data = b"durable streams " * 1000
    client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=data)
    r, raw = _raw(client, PREFIX + name, {"offset": "-1"}, {"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in r.headers["vary"].lower()
    assert len(raw) < len(data)
    assert gzip.decompress(raw) == data
    gz_etag = r.headers["etag"]

    plain, raw_plain = _raw(client, PREFIX + name, {"offset": "-1"},
                            {"accept-encoding": "identity"})
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers
    assert raw_plain == data
    # two representations, two strong validators (RFC 9110 8.8.3)
    assert plain.headers["etag"] != gz_etag

    # a 304 for the compressed representation's validator; RFC 9110 15.4.5: it carries
    # the ETag and Vary the 200 would have carried, so caches can freshen what they hold
    again = client.get(PREFIX + name, params={"offset": "-1"},
                       headers={"accept-encoding": "gzip", "if-none-match": gz_etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == gz_etag
    assert "accept-encoding" in again.headers.get("vary", "").lower()


@pytest.mark.parametrize("accept", ["gzip;q=0", "br", "", "identity, gzip;q=0", "*, gzip;q=0",
                                    "gzip;q=0, *"])
def test_no_gzip_unless_accepted(client: httpx.Client, accept: str) -> None:
    name = unique()
    data = b"0123456789" * 500
    client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=data)
    r, raw = _raw(client, PREFIX + name, {"offset": "-1"}, {"accept-encoding": accept})
    assert r.status_code == 200
    assert r.headers.get("content-encoding") in (None, "identity")
    assert raw == data


def test_gzip_json_stream(client: httpx.Client) -> None:
    name = unique()
    messages = [{"n": i, "text": "hello"} for i in range(200)]
    client.put(PREFIX + name, headers={"content-type": "application/json"},
               content=json.dumps(messages))
    r, raw = _raw(client, PREFIX + name, {"offset": "-1"}, {"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw)) == messages


# ---------------------------------------------------------------------------
# ETag and 304 (10.1)


def test_etag_304_variants(client: httpx.Client) -> None:
    name = unique()
    client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"abc")
    first = client.get(PREFIX + name, params={"offset": "-1"})
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')

    def status(inm: str) -> int:
        r = client.get(PREFIX + name, params={"offset": "-1"}, headers={"if-none-match": inm})
        if r.status_code == 304:
            assert r.content == b""
            assert r.headers["etag"] == etag
        return r.status_code

    assert status(etag) == 304
    assert status("*") == 304
    assert status(f'"nope", {etag}') == 304
    assert status(f'{etag},"nope"') == 304
    assert status(f"W/{etag}") == 304  # If-None-Match uses the weak comparison
    assert status('"nope"') == 200
    assert status('"nope", W/"other"') == 200
    assert status(etag[:-1] + 'x"') == 200

    # new data: the same URL now means more bytes, the old validator no longer matches
    client.post(PREFIX + name, headers={"content-type": "text/plain"}, content=b"def")
    r = client.get(PREFIX + name, params={"offset": "-1"}, headers={"if-none-match": etag})
    assert r.status_code == 200 and r.content == b"abcdef"
    assert r.headers["etag"] != etag


def test_etag_changes_on_close(client: httpx.Client) -> None:
    name = unique()
    put = client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"abc")
    tail = put.headers["stream-next-offset"]
    at_tail = client.get(PREFIX + name, params={"offset": tail})
    etag = at_tail.headers["etag"]
    assert client.post(PREFIX + name, headers={"stream-closed": "true"}).status_code == 204
    # 10.1: closing must change the ETag so a 304 cannot hide the EOF
    r = client.get(PREFIX + name, params={"offset": tail}, headers={"if-none-match": etag})
    assert r.status_code == 200
    assert r.headers["stream-closed"] == "true"
    assert r.headers["etag"] != etag


def test_etag_not_shared_between_streams(client: httpx.Client) -> None:
    a, b = unique(), unique()
    for n in (a, b):
        client.put(PREFIX + n, headers={"content-type": "text/plain"}, content=b"same")
    etag_a = client.get(PREFIX + a, params={"offset": "-1"}).headers["etag"]
    r = client.get(PREFIX + b, params={"offset": "-1"}, headers={"if-none-match": etag_a})
    assert r.status_code == 200 and r.content == b"same"


def test_etag_not_shared_after_recreate(client: httpx.Client) -> None:
    name = unique()
    client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"one")
    etag = client.get(PREFIX + name, params={"offset": "-1"}).headers["etag"]
    client.delete(PREFIX + name)
    client.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"two")
    r = client.get(PREFIX + name, params={"offset": "-1"}, headers={"if-none-match": etag})
    assert r.status_code == 200 and r.content == b"two"


# ---------------------------------------------------------------------------
# CORS and browser security headers (12.7)

REQUEST_HEADERS = ["if-none-match", "content-type", "stream-seq", "stream-ttl",
                   "stream-expires-at", "stream-closed", "producer-id", "producer-epoch",
                   "producer-seq", "stream-forked-from", "stream-fork-offset",
                   "stream-fork-sub-offset", "authorization"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD"])
def test_cors_preflight(client: httpx.Client, method: str) -> None:
    r = client.options(PREFIX + unique(), headers={
        "origin": "https://app.example",
        "access-control-request-method": method,
        "access-control-request-headers": ", ".join(REQUEST_HEADERS),
    })
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] in ("*", "https://app.example")
    methods = {m.strip().upper() for m in r.headers["access-control-allow-methods"].split(",")}
    assert method in methods or "*" in methods
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert "*" in allowed or set(REQUEST_HEADERS) <= allowed, set(REQUEST_HEADERS) - allowed


def test_cors_exposes_protocol_headers(client: httpx.Client) -> None:
    name = unique()
    r = client.put(PREFIX + name, headers={"content-type": "text/plain", "origin": "https://x"})
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    for header in ("stream-next-offset", "stream-cursor", "stream-up-to-date", "stream-closed",
                   "etag", "producer-epoch", "producer-seq", "producer-expected-seq",
                   "producer-received-seq", "stream-sse-data-encoding", "location"):
        assert header in exposed, header


def _check_security_headers(r: httpx.Response) -> None:
    assert r.headers.get("x-content-type-options") == "nosniff", (r.request.method, r.status_code)
    assert r.headers.get("cross-origin-resource-policy") in (
        "cross-origin", "same-site", "same-origin"), (r.request.method, r.status_code)
    assert "access-control-allow-origin" in r.headers


def test_security_headers_on_every_response(client: httpx.Client) -> None:
    name = unique()
    seen: list[httpx.Response] = []

    def go(method: str, path: str, **kw: object) -> httpx.Response:
        r = client.request(method, path, **kw)  # type: ignore[arg-type]
        seen.append(r)
        return r

    ct = {"content-type": "text/plain"}
    assert go("PUT", PREFIX + name, headers=ct, content=b"abc").status_code == 201
    assert go("PUT", PREFIX + name, headers=ct).status_code == 200
    assert go("PUT", PREFIX + name, headers={"content-type": "application/json"}
              ).status_code == 409
    assert go("POST", PREFIX + name, headers=ct, content=b"d").status_code == 204
    assert go("POST", PREFIX + name, headers=ct).status_code == 400
    got = go("GET", PREFIX + name, params={"offset": "-1"})
    assert got.status_code == 200
    assert go("GET", PREFIX + name, params={"offset": "-1"},
              headers={"if-none-match": got.headers["etag"]}).status_code == 304
    assert go("GET", PREFIX + name, params={"offset": "now"}).status_code == 200
    assert go("GET", PREFIX + name, params={"offset": "zzz"}).status_code == 400
    assert go("HEAD", PREFIX + name).status_code == 200
    assert go("OPTIONS", PREFIX + name).status_code in (200, 204)
    assert go("PATCH", PREFIX + name).status_code == 405
    assert go("GET", PREFIX + unique()).status_code == 404
    assert go("HEAD", PREFIX + unique()).status_code == 404
    assert go("GET", "/").status_code == 200
    assert go("GET", "/elsewhere").status_code == 404
    assert go("PUT", PREFIX + "a/../b".replace("/", "%2F")).status_code == 400
    assert go("POST", PREFIX + name, headers={"stream-closed": "true"}).status_code == 204
    assert go("POST", PREFIX + name, headers=ct, content=b"late").status_code == 409
    tail = got.headers["stream-next-offset"]
    with client.stream("GET", PREFIX + name, params={"offset": tail, "live": "sse"}) as sse:
        assert sse.status_code == 200
        sse.read()
        seen.append(sse)
    lp = go("GET", PREFIX + name, params={"offset": tail, "live": "long-poll"})
    assert lp.status_code == 204
    assert go("DELETE", PREFIX + name).status_code == 204
    assert go("DELETE", PREFIX + name).status_code == 404
    for r in seen:
        _check_security_headers(r)


def test_security_headers_on_413(small: httpx.Client) -> None:
    name = unique()
    small.put(PREFIX + name, headers={"content-type": "text/plain"})
    r = small.post(PREFIX + name, headers={"content-type": "text/plain"},
                   content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413
    _check_security_headers(r)


# ---------------------------------------------------------------------------
# `duralog serve`: defaults, DURALOG_* variables, flags win


def test_config_defaults() -> None:
    assert DEFAULT_PORT == 4437  # PROTOCOL.md 13.1
    config = Config.from_env({})
    assert config.port == 4437
    assert config.host == "127.0.0.1"
    assert config.backend == "sqlite"


def test_config_from_env_and_overrides() -> None:
    env = {"DURALOG_PORT": "5000", "DURALOG_BACKEND": "memory", "DURALOG_MAX_BODY_SIZE": "64k",
           "DURALOG_CHUNK_SIZE": "1MiB", "DURALOG_LONG_POLL_TIMEOUT": "2.5"}
    config = Config.from_env(env)
    assert (config.port, config.backend, config.max_body_size, config.chunk_size,
            config.long_poll_timeout) == (5000, "memory", 65536, 1 << 20, 2.5)
    config = Config.from_env(env, port=6000, chunk_size=10)
    assert (config.port, config.chunk_size, config.backend) == (6000, 10, "memory")
    for bad in ({"DURALOG_PORT": "abc"}, {"DURALOG_BACKEND": "oracle"},
                {"DURALOG_PORT": "70000"}, {"DURALOG_CHUNK_SIZE": "0"}):
        with pytest.raises(ValueError):
            Config.from_env(bad)


def _serve(args: list[str], env: dict[str, str], port: int, tmp: Path) -> ServerProcess:
    server = ServerProcess([sys.executable, "-m", "duralog", "serve", *args], port,
                           env={**env}, log_path=tmp / "server.log")
    # ServerProcess merges os.environ under env; make sure no stray DURALOG_* leaks in
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("DURALOG_")}
    try:
        server.start()
    finally:
        os.environ.update(saved)
    return server


def test_serve_from_environment(tmp_path: Path) -> None:
    port = free_port()
    server = _serve([], {"DURALOG_PORT": str(port), "DURALOG_BACKEND": "memory",
                         "DURALOG_MAX_BODY_SIZE": "100", "DURALOG_CHUNK_SIZE": "10",
                         "DURALOG_DATA_DIR": str(tmp_path / "unused")}, port, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            name = unique()
            assert c.put(PREFIX + name, headers={"content-type": "text/plain"},
                         content=b"a" * 100).status_code == 201
            r = c.post(PREFIX + name, headers={"content-type": "text/plain"},
                       content=b"b" * 101)
            assert r.status_code == 413  # DURALOG_MAX_BODY_SIZE
            first = c.get(PREFIX + name, params={"offset": "-1"})
            assert first.content == b"a" * 10  # DURALOG_CHUNK_SIZE
        assert not (tmp_path / "unused").exists()  # DURALOG_BACKEND=memory: no files
    finally:
        server.stop()


def test_serve_flags_override_environment(tmp_path: Path) -> None:
    env_port, flag_port = free_port(), free_port()
    server = _serve(["--port", str(flag_port), "--backend", "memory", "--max-body-size", "1000",
                     "--chunk-size", "300"],
                    {"DURALOG_PORT": str(env_port), "DURALOG_BACKEND": "sqlite",
                     "DURALOG_DATA_DIR": str(tmp_path / "sqlite-data"),
                     "DURALOG_MAX_BODY_SIZE": "100", "DURALOG_CHUNK_SIZE": "10"},
                    flag_port, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            name = unique()
            r = c.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"c" * 900)
            assert r.status_code == 201  # --max-body-size beat DURALOG_MAX_BODY_SIZE
            assert len(c.get(PREFIX + name, params={"offset": "-1"}).content) == 300
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{env_port}/", timeout=1.0)
        # --backend memory beat DURALOG_BACKEND=sqlite: nothing written to the data dir
        assert not (tmp_path / "sqlite-data").exists() or not any(
            (tmp_path / "sqlite-data").iterdir())
    finally:
        server.stop()


def test_serve_refuses_bad_environment() -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DURALOG_")},
           "DURALOG_PORT": "not-a-port", "DURALOG_BACKEND": "memory"}
    proc = subprocess.run([sys.executable, "-m", "duralog", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "DURALOG_PORT" in proc.stderr


# ---------------------------------------------------------------------------
# TTL: GET slides it, HEAD does not (5.1)


def test_head_does_not_slide_ttl_but_get_does(client: httpx.Client) -> None:
    ttl = 4
    headed, read = unique("ttl-head"), unique("ttl-get")
    for name in (headed, read):
        r = client.put(PREFIX + name, headers={"content-type": "text/plain",
                                               "stream-ttl": str(ttl)}, content=b"t")
        assert r.status_code == 201
    created = time.monotonic()
    time.sleep(ttl / 2)
    assert client.head(PREFIX + headed).status_code == 200
    assert client.get(PREFIX + read, params={"offset": "-1"}).status_code == 200
    touched = time.monotonic()
    # past the original expiry, well inside the slid one
    time.sleep(max(0.0, created + ttl + 0.8 - time.monotonic()))
    assert time.monotonic() < touched + ttl, "the machine stalled; timing meaningless"
    assert client.head(PREFIX + headed).status_code == 404
    head = client.head(PREFIX + read)
    assert head.status_code == 200
    assert head.headers["stream-ttl"] == str(ttl)


# ---------------------------------------------------------------------------
# In-process uvicorn (for settings without a flag)


def test_sse_closes_after_max_duration() -> None:
    config = Config(backend="memory", sse_max_duration=1.5, long_poll_timeout=0.5)
    with ThreadedServer(DuralogApp(config)) as srv, httpx.Client(
            base_url=srv.url, timeout=httpx.Timeout(10.0)) as c:
        name = unique()
        c.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"hi")
        started = time.monotonic()
        with c.stream("GET", PREFIX + name, params={"offset": "-1", "live": "sse"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            text = r.read().decode()  # returns only once the server ends the response
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5 * 0.9
        events = parse_events(text)
        assert events[0] == ("data", "hi")
        controls = [json.loads(d) for n, d in events if n == "control"]
        assert controls, text
        last = controls[-1]
        # not an EOF: the stream is open, the client reconnects from streamNextOffset
        assert "streamClosed" not in last
        assert last["streamCursor"].isdigit()
        assert last["streamNextOffset"] == c.head(PREFIX + name).headers["stream-next-offset"]


def test_sse_max_duration_does_not_cut_long_poll_or_data() -> None:
    # data appended while an SSE reader waits arrives before the duration ends the stream
    config = Config(backend="memory", sse_max_duration=3.0, long_poll_timeout=1.0)
    with ThreadedServer(DuralogApp(config)) as srv, httpx.Client(
            base_url=srv.url, timeout=httpx.Timeout(10.0)) as c:
        name = unique()
        tail = c.put(PREFIX + name, headers={"content-type": "text/plain"}).headers[
            "stream-next-offset"]

        def later() -> None:
            time.sleep(0.5)
            c.post(PREFIX + name, headers={"content-type": "text/plain"}, content=b"late")

        writer = threading.Thread(target=later)
        with c.stream("GET", PREFIX + name, params={"offset": tail, "live": "sse"}) as r:
            writer.start()
            text = r.read().decode()
        writer.join()
        assert ("data", "late") in parse_events(text)
