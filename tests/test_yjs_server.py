"""The Yjs server (YJS-PROTOCOL.md) over HTTP: one test per spec behaviour.

Every test talks to a real server process (core streams + YjsApp over one
store) on a free port.
"""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections.abc import Iterator

import httpx
import pycrdt
import pytest

from duralog.protocol.offsets import format_offset
from duralog.yjs.framing import frame, split_frames

from .servers import ServerProcess
from .yjs_support import yjs_server

OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("yjs") / "server.log"
    proc = yjs_server("memory", log_path=log, awareness_ttl=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def compacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("yjs-compact") / "server.log"
    proc = yjs_server("sqlite", data_dir=log.parent / "data", compaction_bytes=400,
                      log_path=log).start()
    yield proc
    proc.stop()


_counter = iter(range(10**6))


def doc_url(server: ServerProcess, name: str | None = None) -> str:
    return f"{server.url}/v1/yjs/svc/docs/{name or f'doc-{next(_counter)}-{time.time_ns()}'}"


def make_updates(n: int, seed: str = "x") -> tuple[list[bytes], str]:
    """n Yjs updates (one insert each) and the text they produce."""
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    for i in range(n):
        text.insert(len(text) if i % 2 else 0, f"{seed}{i};")
    return updates, str(text)


def text_of(*parts: bytes, snapshot: bytes = b"") -> str:
    doc = pycrdt.Doc()
    if snapshot:
        doc.apply_update(snapshot)
    for part in parts:
        for update in split_frames(part):
            doc.apply_update(update)
    return str(doc.get("text", type=pycrdt.Text))


def error_code(resp: httpx.Response) -> str:
    assert resp.headers["content-type"] == "application/json", resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def raw(server: ServerProcess, method: str, path: str) -> tuple[int, bytes]:
    """A request with the path exactly as written (httpx would resolve dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- paths (4, 12.2) ----------------------------------------------------------------

def test_paths_with_slashes_work(server: ServerProcess) -> None:
    url = doc_url(server, f"project-{time.time_ns()}/chapter-1/draft")
    assert httpx.put(url).status_code == 201
    updates, text = make_updates(3)
    assert httpx.post(url, content=b"".join(map(frame, updates)), headers=OCTET).status_code == 204
    assert text_of(httpx.get(url, params={"offset": "-1"}).content) == text


def test_double_slashes_collapse_to_one_document(server: ServerProcess) -> None:
    name = f"a{time.time_ns()}"
    status, _ = raw(server, "PUT", f"/v1/yjs/svc/docs/{name}//b/")
    assert status == 201
    assert httpx.put(f"{server.url}/v1/yjs/svc/docs/{name}/b").status_code == 200


@pytest.mark.parametrize("path", [
    "x/../y", "x/./y", "..", ".", "x/..", "%2e%2e/y", "x/%2E%2E", "x/%2e/y", "x/%2e",
    "a.b", "a%20b", "caf%C3%A9", "a:b", "a%00b", "%ff",
])
def test_bad_document_paths_are_refused(server: ServerProcess, path: str) -> None:
    for method in ("PUT", "GET", "POST", "DELETE"):
        status, body = raw(server, method, f"/v1/yjs/svc/docs/{path}")
        assert status == 400, (method, path, body)
        assert b'"INVALID_REQUEST"' in body


def test_document_path_length_limit(server: ServerProcess) -> None:
    assert httpx.put(doc_url(server, "p" * 256)).status_code in (200, 201)
    resp = httpx.put(doc_url(server, "p" * 257))
    assert resp.status_code == 400 and error_code(resp) == "INVALID_REQUEST"


def test_bad_service_and_route(server: ServerProcess) -> None:
    for path in ("/v1/yjs/s.v/docs/a", "/v1/yjs/svc/notdocs/a", "/v1/yjs/svc/docs/",
                 "/v1/yjs/svc", "/v1/yjs/"):
        status, body = raw(server, "GET", path)
        assert status == 400 and b"INVALID_REQUEST" in body, path


# -- create (5.1) -------------------------------------------------------------------

def test_put_creates_then_confirms_then_conflicts(server: ServerProcess) -> None:
    url = doc_url(server)
    first = httpx.put(url, headers=OCTET)
    assert first.status_code == 201
    assert first.headers["location"] == url
    assert first.headers["stream-next-offset"] == format_offset(0)
    again = httpx.put(url)
    assert again.status_code == 200 and again.headers["stream-next-offset"] == format_offset(0)
    other = httpx.put(url, headers={"stream-ttl": "60"})
    assert other.status_code == 409 and error_code(other) == "CONFLICT"
    json_type = httpx.put(url, headers={"content-type": "application/json"})
    assert json_type.status_code == 409
    fresh = httpx.put(doc_url(server), headers={"content-type": "application/json"})
    assert fresh.status_code == 400 and error_code(fresh) == "INVALID_REQUEST"


# -- writes (5.5, 7) ------------------------------------------------------------------

def test_post_to_missing_document_is_404(server: ServerProcess) -> None:
    updates, _ = make_updates(1)
    resp = httpx.post(doc_url(server), content=frame(updates[0]), headers=OCTET)
    assert resp.status_code == 404 and error_code(resp) == "DOCUMENT_NOT_FOUND"


def test_posts_are_stored_as_sent_with_increasing_offsets(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    updates, text = make_updates(6)
    bodies = [frame(updates[0]), b"".join(map(frame, updates[1:4])), frame(updates[4]),
              frame(updates[5])]
    offsets = []
    for body in bodies:
        resp = httpx.post(url, content=body, headers=OCTET)
        assert resp.status_code == 204, resp.text
        offsets.append(resp.headers["stream-next-offset"])
    assert offsets == sorted(offsets) and len(set(offsets)) == 4
    read = httpx.get(url, params={"offset": "-1"})
    assert read.content == b"".join(bodies)
    assert read.headers["stream-next-offset"] == offsets[-1]
    assert text_of(read.content) == text
    middle = httpx.get(url, params={"offset": offsets[1]})
    assert middle.content == b"".join(bodies[2:])


def test_bad_update_bodies_are_refused_and_not_stored(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    for body in (b"", b"\x05abc", b"\x03abc", frame(b"not an update"),
                 frame(make_updates(1)[0][0]) + b"\x09"):
        resp = httpx.post(url, content=body, headers=OCTET)
        assert resp.status_code == 400 and error_code(resp) == "INVALID_REQUEST", body
    assert httpx.get(url, params={"offset": "-1"}).content == b""


def test_producer_retries_apply_once(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    updates, _ = make_updates(2)
    headers = {**OCTET, "producer-id": "p1", "producer-epoch": "0", "producer-seq": "0"}
    first = httpx.post(url, content=frame(updates[0]), headers=headers)
    assert first.status_code == 200 and first.headers["producer-seq"] == "0"
    retry = httpx.post(url, content=frame(updates[0]), headers=headers)
    assert retry.status_code == 204
    gap = httpx.post(url, content=frame(updates[1]), headers={**headers, "producer-seq": "5"})
    assert gap.status_code == 409 and error_code(gap) == "CONFLICT"
    assert gap.headers["producer-expected-seq"] == "1"
    assert httpx.get(url, params={"offset": "-1"}).content == frame(updates[0])


# -- reads (5.4) ----------------------------------------------------------------------

def test_reads_refuse_bad_offsets(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    for offset in ("abc", "12", format_offset(99), "0000000000000001_0000000000000000"):
        resp = httpx.get(url, params={"offset": offset})
        assert resp.status_code == 400 and error_code(resp) == "INVALID_REQUEST", offset
    missing = httpx.get(doc_url(server), params={"offset": "-1"})
    assert missing.status_code == 404 and error_code(missing) == "DOCUMENT_NOT_FOUND"


def test_long_poll_waits_for_an_update(server: ServerProcess) -> None:
    url = doc_url(server)
    tail = httpx.put(url).headers["stream-next-offset"]
    updates, _ = make_updates(1)
    timer = threading.Timer(0.5, lambda: httpx.post(url, content=frame(updates[0]),
                                                    headers=OCTET))
    timer.start()
    resp = httpx.get(url, params={"offset": tail, "live": "long-poll"}, timeout=30)
    timer.join()
    assert resp.status_code == 200 and resp.content == frame(updates[0])
    assert resp.headers["stream-cursor"]


def test_long_poll_times_out_with_204(server: ServerProcess) -> None:
    url = doc_url(server)
    tail = httpx.put(url).headers["stream-next-offset"]
    resp = httpx.get(url, params={"offset": tail, "live": "long-poll"}, timeout=30)
    assert resp.status_code == 204
    assert resp.headers["stream-up-to-date"] == "true"
    assert resp.headers["stream-next-offset"] == tail


def sse_events(url: str, params: dict[str, str], until: int, timeout: float = 15
               ) -> tuple[httpx.Headers, list[tuple[str, str]]]:
    from duralog.protocol.sse import parse_events

    text = ""
    with httpx.stream("GET", url, params=params, timeout=timeout) as resp:
        assert resp.status_code == 200
        for piece in resp.iter_text():
            text += piece
            events = parse_events(text.rsplit("\n\n", 1)[0] + "\n\n")
            if len(events) >= until:
                return resp.headers, events
    raise AssertionError(f"SSE ended early: {text!r}")


def test_sse_sends_base64_data_and_control_events(server: ServerProcess) -> None:
    import orjson

    url = doc_url(server)
    httpx.put(url)
    updates, _ = make_updates(2)
    body = b"".join(map(frame, updates))
    tail = httpx.post(url, content=body, headers=OCTET).headers["stream-next-offset"]
    headers, events = sse_events(url, {"offset": "-1", "live": "sse"}, 2)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["stream-sse-data-encoding"] == "base64"
    assert events[0][0] == "data" and base64.b64decode(events[0][1]) == body
    control = orjson.loads(events[1][1])
    assert events[1][0] == "control" and control["streamNextOffset"] == tail
    assert control["upToDate"] is True and control["streamCursor"]


# -- snapshots (5.2, 5.3, 8) -------------------------------------------------------------

def test_discovery_without_snapshot_redirects_to_start(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    resp = httpx.get(url, params={"offset": "snapshot", "x": "1"})
    assert resp.status_code == 307
    assert resp.headers["cache-control"] == "private, max-age=5"
    location = httpx.URL(url).join(resp.headers["location"])
    assert location.path == httpx.URL(url).path
    assert location.params["offset"] == "-1" and location.params["x"] == "1"
    missing = httpx.get(doc_url(server), params={"offset": "snapshot"})
    assert missing.status_code == 404 and error_code(missing) == "DOCUMENT_NOT_FOUND"


def test_unknown_snapshots_are_404(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    for offset in (f"{format_offset(0)}_snapshot", "junk_snapshot", "_snapshot"):
        resp = httpx.get(url, params={"offset": offset})
        assert resp.status_code == 404 and error_code(resp) == "SNAPSHOT_NOT_FOUND", offset


def discover(url: str) -> str:
    resp = httpx.get(url, params={"offset": "snapshot"})
    assert resp.status_code == 307
    return httpx.URL(url).join(resp.headers["location"]).params["offset"]


def wait_for_snapshot(url: str, not_this: str | None = None, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        offset = discover(url)
        if offset.endswith("_snapshot") and offset != not_this:
            return offset
        time.sleep(0.05)
    raise AssertionError("no new snapshot")


def load(url: str) -> str:
    """What a new client sees: the snapshot (if any), then the updates after it."""
    offset = discover(url)
    snapshot = b""
    if offset.endswith("_snapshot"):
        resp = httpx.get(url, params={"offset": offset})
        assert resp.status_code == 200
        snapshot = resp.content
        offset = resp.headers["stream-next-offset"]
    rest = httpx.get(url, params={"offset": offset})
    return text_of(rest.content, snapshot=snapshot)


def test_compaction_at_threshold_snapshot_reads_and_old_snapshot_deletion(
        compacting: ServerProcess) -> None:
    url = doc_url(compacting)
    httpx.put(url)
    updates, text = make_updates(60)
    # Below the threshold (400 bytes): no snapshot.
    sent = 0
    i = 0
    while sent + len(frame(updates[i])) < 400:
        sent += len(frame(updates[i]))
        httpx.post(url, content=frame(updates[i]), headers=OCTET)
        i += 1
    time.sleep(0.3)
    assert discover(url) == "-1"
    for update in updates[i:30]:
        httpx.post(url, content=frame(update), headers=OCTET)
    first = wait_for_snapshot(url)
    snap = httpx.get(url, params={"offset": first})
    assert snap.status_code == 200 and snap.headers["content-type"] == "application/octet-stream"
    # Named by the offset of its last byte; reading goes on right after it (5.3).
    last = int(first.removesuffix("_snapshot").split("_")[1])
    assert snap.headers["stream-next-offset"] == format_offset(last + 1)
    # The snapshot holds exactly the updates before that.
    before = httpx.get(url, params={"offset": "-1"}).content[:last + 1]
    assert text_of(b"", snapshot=snap.content) == text_of(before)
    for update in updates[30:]:
        httpx.post(url, content=frame(update), headers=OCTET)
    second = wait_for_snapshot(url, not_this=first)
    assert second > first
    gone = httpx.get(url, params={"offset": first})
    assert gone.status_code == 404 and error_code(gone) == "SNAPSHOT_NOT_FOUND"
    assert load(url) == text
    raw_snapshot = f"{compacting.url}/v1/stream/yjs/svc/docs/{httpx.URL(url).path.split('/')[-1]}"
    assert httpx.head(f"{raw_snapshot}/.snapshots/{first}").status_code == 404
    # The newest snapshot is kept (a later compaction may have replaced `second`
    # already on a slow machine: the rule is that the current one exists).
    current = discover(url)
    assert current.endswith("_snapshot") and current >= second
    assert httpx.head(f"{raw_snapshot}/.snapshots/{current}").status_code == 200
    metrics = httpx.get(f"{compacting.url}/metrics").text
    assert 'duralog_yjs_compactions_total{result="ok"}' in metrics


# -- awareness (5.6-5.8, 5.10) --------------------------------------------------------------

def test_awareness_lifecycle(server: ServerProcess) -> None:
    url = doc_url(server)
    missing = httpx.put(url, params={"awareness": "cursors"})
    assert missing.status_code == 404 and error_code(missing) == "DOCUMENT_NOT_FOUND"
    httpx.put(url)
    # Created with the document.
    now = httpx.get(url, params={"awareness": "default", "offset": "now"})
    assert now.status_code == 200 and now.content == b""
    assert httpx.put(url, params={"awareness": "cursors"}).status_code == 201
    assert httpx.put(url, params={"awareness": "cursors"}).status_code == 200
    post = httpx.post(url, params={"awareness": "cursors"}, content=b"\x02hi", headers=OCTET)
    assert post.status_code == 204 and post.headers["stream-next-offset"]
    # Named streams are separate.
    assert httpx.get(url, params={"awareness": "default", "offset": "-1"}).content == b""
    assert httpx.get(url, params={"awareness": "cursors", "offset": "-1"}).content == b"\x02hi"
    # POST to a stream nobody created makes it.
    auto = httpx.post(url, params={"awareness": "presence"}, content=b"\x01p", headers=OCTET)
    assert auto.status_code == 204
    assert httpx.delete(url, params={"awareness": "cursors"}).status_code == 204
    again = httpx.delete(url, params={"awareness": "cursors"})
    assert again.status_code == 404 and error_code(again) == "STREAM_NOT_FOUND"
    read = httpx.get(url, params={"awareness": "cursors", "offset": "-1"})
    assert read.status_code == 404 and error_code(read) == "STREAM_NOT_FOUND"
    # The document is untouched.
    assert httpx.get(url, params={"offset": "-1"}).status_code == 200
    bad = httpx.get(url, params={"awareness": "no.dots", "offset": "-1"})
    assert bad.status_code == 400 and error_code(bad) == "INVALID_REQUEST"


def test_awareness_concurrent_posts_to_a_new_stream_all_succeed(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    results: list[int] = []

    def post(i: int) -> None:
        results.append(httpx.post(url, params={"awareness": "crowd"}, content=bytes([1, i]),
                                  headers=OCTET).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [204] * 8
    assert len(httpx.get(url, params={"awareness": "crowd", "offset": "-1"}).content) == 16


def test_awareness_broadcast_over_sse(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    timer = threading.Timer(0.5, lambda: httpx.post(
        url, params={"awareness": "default"}, content=b"\x03abc", headers=OCTET))
    timer.start()
    _, events = sse_events(url, {"awareness": "default", "offset": "now", "live": "sse"}, 3)
    timer.join()
    assert events[0][0] == "control"
    assert events[1] == ("data", base64.b64encode(b"\x03abc").decode())


def test_awareness_expires_and_post_recreates(server: ServerProcess) -> None:
    """The module's server gives awareness streams a 2 s TTL (3600 s by default)."""
    url = doc_url(server)
    httpx.put(url)
    httpx.post(url, params={"awareness": "default"}, content=b"\x01a", headers=OCTET)
    time.sleep(3)
    gone = httpx.get(url, params={"awareness": "default", "offset": "-1"})
    assert gone.status_code == 404 and error_code(gone) == "STREAM_NOT_FOUND"
    back = httpx.post(url, params={"awareness": "default"}, content=b"\x01b", headers=OCTET)
    assert back.status_code == 204
    assert httpx.get(url, params={"awareness": "default", "offset": "-1"}).content == b"\x01b"


# -- delete (5.9) --------------------------------------------------------------------------

def test_delete_cascades(compacting: ServerProcess) -> None:
    name = f"del-{time.time_ns()}"
    url = doc_url(compacting, name)
    httpx.put(url)
    httpx.put(url, params={"awareness": "cursors"})
    updates, _ = make_updates(40)
    for update in updates:
        httpx.post(url, content=frame(update), headers=OCTET)
    snapshot = wait_for_snapshot(url)
    raw_base = f"{compacting.url}/v1/stream/yjs/svc/docs/{name}"
    owned = [f"{raw_base}/.updates", f"{raw_base}/.index", f"{raw_base}/.snapshots/{snapshot}",
             f"{raw_base}/.awareness/default", f"{raw_base}/.awareness/cursors"]
    assert [httpx.head(u).status_code for u in owned] == [200] * 5
    assert httpx.delete(url).status_code == 204
    assert [httpx.head(u).status_code for u in owned] == [404] * 5
    for method, params in (("GET", {"offset": "-1"}), ("GET", {"offset": "snapshot"}),
                           ("POST", {}), ("DELETE", {}),
                           ("POST", {"awareness": "default"}),
                           ("GET", {"awareness": "default", "offset": "-1"}),
                           ("PUT", {"awareness": "default"})):
        resp = httpx.request(method, url, params=params, content=frame(updates[0])
                             if method == "POST" else None, headers=OCTET)
        assert resp.status_code == 404 and error_code(resp) == "DOCUMENT_NOT_FOUND", (
            method, params)
    fresh = httpx.put(url)
    assert fresh.status_code == 201
    assert httpx.get(url, params={"offset": "-1"}).content == b""
    assert discover(url) == "-1"


# -- methods and errors (5, 10) ---------------------------------------------------------------

def test_other_methods_are_405(server: ServerProcess) -> None:
    url = doc_url(server)
    httpx.put(url)
    for params in ({}, {"awareness": "default"}):
        for method in ("PATCH", "TRACE", "PROPFIND"):
            resp = httpx.request(method, url, params=params)
            assert resp.status_code == 405 and error_code(resp) == "INVALID_REQUEST"
    options = httpx.options(url)
    assert options.status_code == 204 and "access-control-allow-methods" in options.headers


def test_head_of_document(server: ServerProcess) -> None:
    url = doc_url(server)
    assert httpx.head(url).status_code == 404
    tail = httpx.put(url).headers["stream-next-offset"]
    resp = httpx.head(url)
    assert resp.status_code == 200 and resp.headers["stream-next-offset"] == tail




def test_reads_never_cut_a_frame(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With 1000-byte read chunks and 600-byte appends, every answer still holds whole
    frames (the TypeScript provider decodes each answer on its own, 7.3)."""
    from duralog.yjs.framing import FrameBuffer

    log = tmp_path_factory.mktemp("yjs-chunks") / "server.log"
    proc = yjs_server("memory", log_path=log)
    proc.args += ["--chunk-size", "1000"]
    proc.start()
    try:
        url = doc_url(proc)
        httpx.put(url)
        doc = pycrdt.Doc()
        text = doc.get("text", type=pycrdt.Text)
        bodies = []
        for i in range(6):
            before = doc.get_state()
            text += f"{i}" * 580
            bodies.append(frame(doc.get_update(before)))
            assert httpx.post(url, content=bodies[-1], headers=OCTET).status_code == 204
        offset, answers = "-1", []
        while True:
            resp = httpx.get(url, params={"offset": offset})
            answers.append(resp.content)
            offset = resp.headers["stream-next-offset"]
            if resp.headers.get("stream-up-to-date") == "true":
                break
        assert len(answers) >= 3
        assert b"".join(answers) == b"".join(bodies)
        for answer in answers:
            split_frames(answer)  # raises on a cut frame
        _, events = sse_events(url, {"offset": "-1", "live": "sse"}, 2 * len(answers))
        for name, data in events:
            if name == "data":
                split_frames(base64.b64decode(data))
        assert text_of(b"".join(answers)) == str(text)
    finally:
        proc.stop()
    # And a client reading from a server that does cut frames can join the pieces.
    buffer = FrameBuffer()
    whole = b"".join(bodies)
    got = [u for i in range(0, len(whole), 7) for u in buffer.feed(whole[i:i + 7])]
    assert got == [split_frames(b)[0] for b in bodies] and buffer.pending == 0


def test_lib0_varuint_examples() -> None:
    """7.1: 0 -> 00, 127 -> 7f, 128 -> 80 01, 300 -> ac 02."""
    from duralog.yjs.framing import FramingError, read_var_uint, write_var_uint

    for value, encoded in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"),
                           (300, b"\xac\x02"), (2**35 + 5, write_var_uint(2**35 + 5))):
        assert write_var_uint(value) == encoded
        assert read_var_uint(encoded, 0) == (value, len(encoded))
    with pytest.raises(FramingError):
        read_var_uint(b"\x80", 0)
    with pytest.raises(FramingError):
        split_frames(b"\x05ab")


def test_no_yjs_flag_leaves_the_endpoints_out(tmp_path_factory: pytest.TempPathFactory) -> None:
    from .servers import duralog_server

    log = tmp_path_factory.mktemp("no-yjs") / "server.log"
    proc = duralog_server("memory", extra=["--no-yjs"], log_path=log).start()
    try:
        resp = httpx.put(f"{proc.url}/v1/yjs/svc/docs/a")
        assert resp.status_code == 404
        assert "duralog_yjs" not in httpx.get(f"{proc.url}/metrics").text
    finally:
        proc.stop()


def test_documents_gauge(server: ServerProcess) -> None:
    def documents() -> float:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("duralog_yjs_documents "):
                return float(line.split()[-1])
        raise AssertionError("no duralog_yjs_documents metric")

    before = documents()
    url = doc_url(server)
    httpx.put(url)
    assert documents() == before + 1
    httpx.delete(url)
    assert documents() == before
