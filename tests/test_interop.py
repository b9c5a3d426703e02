"""Interop: the official clients write and read through duralog (issue 4).

Writers: the official TypeScript client (npm @durable-streams/client 0.2.7,
driven through tests/peers/ts-client.mjs in one Node process), the official
Python client (PyPI durable-streams 0.1.0, in process), raw HTTP (httpx) and
our own client (duralog.client). Readers: the three clients in each read mode
(catch-up, long-poll, SSE) and raw HTTP, which checks exact bytes, JSON and
protocol headers.

Every case runs against duralog (memory and sqlite backends) and against the
Node reference server (npm @durable-streams/server) as a control: a case that
fails on both points at the client or the case, one that fails on duralog only
points at us. docs/interop.md holds the resulting matrix.

The official Python client 0.1.0 predates stream closure and idempotent
producers: it has no close and no producer API, and it ignores Stream-Closed
(a long-poll reader of a closed stream keeps polling). Where a case needs
those, another writer does that step, and the case says so.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from durable_streams import DurableStream as PyStream
from durable_streams import DurableStreamError as PyError
from durable_streams import stream as py_stream

from duralog import client as dl

from .servers import ROOT, ServerProcess, duralog_server, reference_server

TS_PEER = ROOT / "tests/peers/ts-client.mjs"
READ_TIMEOUT = 15.0  # seconds a reader may take before the case fails
JSON_TYPE = "application/json"
# One connection pool for every Python-side request: a new httpx.Client costs ~50 ms
# (its TLS context), which adds up over hundreds of cases.
HTTP = httpx.Client(timeout=30.0)

# --------------------------------------------------------------------------
# Servers

SERVER_FIXTURES = {"duralog": "memory_server", "duralog-sqlite": "sqlite_server",
                   "reference": "ref_server"}


@pytest.fixture(params=list(SERVER_FIXTURES))
def target(request: pytest.FixtureRequest) -> ServerProcess:
    """duralog (memory, then sqlite backend), then the Node reference server as the control."""
    return request.getfixturevalue(SERVER_FIXTURES[request.param])


def new_url(server: ServerProcess, label: str) -> str:
    return f"{server.url}/v1/stream/interop/{label}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------
# The TypeScript client, in one long-lived Node process (tests/peers/ts-client.mjs serve)


class TsJob:
    """One request to the Node peer: its "ready" event (live reads) and its result."""

    def __init__(self, request_id: int, command: str) -> None:
        self.id = request_id
        self.command = command
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    def _next(self, deadline: float) -> dict[str, Any]:
        try:
            return self.events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"ts-client {self.command} did not answer in time") from None

    def wait_ready(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Block until a live read has caught up."""
        event = self._next(time.monotonic() + timeout)
        if event.get("event") != "ready":
            raise AssertionError(f"ts reader ended before it was ready: {event}")
        return event

    def result(self, timeout: float = READ_TIMEOUT + 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self._next(deadline)
            if event.get("event") == "result":
                return event["result"]


class TsPeer:
    """The official TypeScript client behind a JSON-lines pipe; requests run concurrently."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(TS_PEER), "serve"], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.jobs: dict[int, TsJob] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                job = self.jobs.get(event.get("id", -1))
                if job is not None:
                    job.events.put(event)

    def start(self, command: str, args: dict[str, Any]) -> TsJob:
        with self.lock:
            self.next_id += 1
            job = self.jobs[self.next_id] = TsJob(self.next_id, command)
            assert self.proc.stdin is not None and self.proc.poll() is None, "ts peer exited"
            self.proc.stdin.write(json.dumps({"id": job.id, "command": command,
                                              "args": args}) + "\n")
            self.proc.stdin.flush()
        return job

    def call(self, command: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        return self.start(command, args).result(timeout)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_PEER: TsPeer | None = None


@pytest.fixture(scope="module", autouse=True)
def ts_peer(node_available: None) -> Iterator[TsPeer]:
    global _PEER
    _PEER = TsPeer()
    yield _PEER
    _PEER.stop()
    _PEER = None


def ts(command: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Run one command in the TypeScript client; return its JSON result."""
    assert _PEER is not None
    return _PEER.call(command, args, timeout)


def ts_start(command: str, args: dict[str, Any]) -> TsJob:
    assert _PEER is not None
    return _PEER.start(command, args)


# --------------------------------------------------------------------------
# Python readers: the official client (py) and ours (dl)

LIVE = {"catchup": None, "long-poll": "long-poll", "sse": "sse"}


def in_thread(fn: Callable[[], Any], timeout: float = READ_TIMEOUT) -> Any:
    """Run a blocking client call with a deadline, so a hang fails the case instead of the run.
    The thread is a daemon: a reader stuck on a live response cannot hold up the exit."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as err:
            future.set_exception(err)
    threading.Thread(target=run, daemon=True).start()
    return future.result(timeout=timeout)


def py_read(url: str, mode: str, kind: str, *, offset: str = "-1",
            size: int | None = None) -> Any:
    """Read with the official Python client. Live modes stop after ``size`` items (JSON) or
    bytes, or when the server ends the response (SSE after closure) if ``size`` is None."""
    def run() -> Any:
        # 0.1.0 sends no offset unless given one, and live reads require it (PROTOCOL.md 5.7/5.8).
        live = LIVE[mode] or False
        with py_stream(url, live=live, offset=offset, timeout=READ_TIMEOUT, client=HTTP) as res:
            if kind == "json":
                if live is False:  # small streams here: one chunk, so read_json() is exact
                    return list(res.read_json())
                return _take(res.iter_json(), size)
            if live is False:
                # Iteration, not read_bytes(): that helper stops after the first chunk
                # (test_catchup_helpers_read_past_a_chunk).
                return _take_bytes(iter(res), None)
            if live == "sse":  # 0.1.0 reads SSE as text only (text/* and JSON streams)
                return _take_bytes((t.encode() for t in res.iter_text()), size)
            return _take_bytes(iter(res), size)
    return in_thread(run)


def dl_read(url: str, mode: str, kind: str, *, offset: str = "-1",
            size: int | None = None) -> Any:
    """Read with duralog.client; live modes stop after ``size`` or at the end of a closed stream."""
    def run() -> Any:
        with dl.DurableStream(url, client=HTTP) as stream, \
                stream.read(offset, live=LIVE[mode]) as reader:
            if kind == "json":
                return _take(reader.json_items(), size)
            return _take_bytes(reader.bytes(), size)
    return in_thread(run)


def _take(items: Iterator[Any], size: int | None) -> list[Any]:
    got: list[Any] = []
    for item in items:
        got.append(item)
        if size is not None and len(got) >= size:
            break
    return got


def _take_bytes(chunks: Iterator[bytes], size: int | None) -> bytes:
    data = b""
    for chunk in chunks:
        data += chunk
        if size is not None and len(data) >= size:
            break
    return data


# --------------------------------------------------------------------------
# Content written by each writer, read by each reader

JSON_MESSAGES: list[Any] = [
    {"n": 1, "text": "héllo wörld"},
    [1, 2, [3]],  # an array message: must survive the one-level flattening
    "plain string",
    42,
    3.5,
    True,
    {"nested": {"list": [1, {"b": None}], "emoji": "😀"}},
    {"quote": 'he said "hi"\n', "tab": "a\tb"},
]
# SSE carries text line by line: CR and CRLF come out as LF from both servers, so the
# text case uses LF only (see docs/interop.md).
TEXT_PARTS = ["first line\nsecond line é😀\n", "x" * 3000 + "\n", "\nlast part, no newline"]
BYTES_PARTS = [bytes(range(256)), bytes(range(255, -1, -1)) * 4, b"\x00" * 10 + b"\r\n\n\r"]

CONTENT_TYPES = {"json": JSON_TYPE, "text": "text/plain", "bytes": "application/octet-stream"}


def expected_of(kind: str) -> Any:
    if kind == "json":
        return JSON_MESSAGES
    if kind == "text":
        return "".join(TEXT_PARTS).encode()
    return b"".join(BYTES_PARTS)


def parts_of(kind: str) -> list[Any]:
    return TEXT_PARTS if kind == "text" else BYTES_PARTS


def write_ts(url: str, kind: str) -> None:
    if kind == "json":
        appends: list[Any] = [json.dumps(m) for m in JSON_MESSAGES]  # the client takes JSON text
    elif kind == "text":
        appends = list(TEXT_PARTS)
    else:
        appends = [{"b64": base64.b64encode(p).decode()} for p in BYTES_PARTS]
    # Fired without awaiting each one: the client batches them into fewer POSTs.
    res = ts("write", {"url": url, "contentType": CONTENT_TYPES[kind], "create": {},
                       "appends": appends, "concurrent": True})
    assert res["errors"] == [] and "error" not in res, res


def write_py(url: str, kind: str) -> None:
    if kind == "json":
        # Initial messages in the PUT (a JSON array, flattened like an append), then one
        # append per message.
        with PyStream.create(url, content_type=JSON_TYPE, body=JSON_MESSAGES[:2],
                             client=HTTP) as handle:
            for message in JSON_MESSAGES[2:]:
                handle.append(message)
        return
    with PyStream.create(url, content_type=CONTENT_TYPES[kind], client=HTTP) as handle:
        for part in parts_of(kind):
            handle.append(part)


def write_raw(url: str, kind: str) -> None:
    ct = {"content-type": CONTENT_TYPES[kind]}
    if kind == "json":
        r = HTTP.put(url, headers=ct, content=json.dumps(JSON_MESSAGES[:3]))
        assert r.status_code == 201, r.text
        r = HTTP.post(url, headers=ct, content=json.dumps(JSON_MESSAGES[3:6]))  # a batch
        assert r.status_code == 204, r.text
        for message in JSON_MESSAGES[6:]:
            r = HTTP.post(url, headers=ct, content=json.dumps(message))  # bare values
            assert r.status_code == 204, r.text
        return
    assert HTTP.put(url, headers=ct).status_code == 201
    for part in parts_of(kind):
        r = HTTP.post(url, headers=ct, content=part.encode() if isinstance(part, str) else part)
        assert r.status_code == 204, r.text


def write_dl(url: str, kind: str) -> None:
    with dl.DurableStream(url, client=HTTP) as stream:
        if kind == "json":
            stream.create(json=JSON_MESSAGES[:2])
            stream.append_json(*JSON_MESSAGES[2:6])  # one request, four messages
            for message in JSON_MESSAGES[6:]:
                stream.append_json(message)
            return
        stream.create(content_type=CONTENT_TYPES[kind])
        for part in parts_of(kind):
            stream.append(part)


WRITERS: dict[str, Callable[[str, str], None]] = {
    "ts": write_ts, "py": write_py, "raw": write_raw, "dl": write_dl}
MODES = ["catchup", "long-poll", "sse"]


@dataclass
class Written:
    url: str
    kind: str
    ts_results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ts_read(self, mode: str) -> dict[str, Any]:
        """The TS client reads in all three modes at once, the first time any is asked for."""
        if not self.ts_results:
            fmt = "json" if self.kind == "json" else "bytes"
            jobs = {m: ts_start("read", {"url": self.url, "live": LIVE[m] or False,
                                         "format": fmt, "count": len(expected_of(self.kind)),
                                         "timeoutMs": 10000})
                    for m in MODES}
            for m, job in jobs.items():
                self.ts_results[m] = job.result()
        return self.ts_results[mode]


@pytest.fixture(scope="module")
def written() -> Callable[[ServerProcess, str, str], Written]:
    """Streams written once per (server, kind, writer), shared by the reader cases."""
    cache: dict[tuple[str, str, str], Written] = {}

    def get(server: ServerProcess, kind: str, writer: str) -> Written:
        key = (server.url, kind, writer)
        if key not in cache:
            url = new_url(server, f"{kind}-by-{writer}")
            WRITERS[writer](url, kind)
            cache[key] = Written(url, kind)
        return cache[key]
    return get


READERS = [f"{client}-{mode}" for client in ("ts", "py", "dl") for mode in MODES] + ["raw"]
CONTENT_CASES = [(kind, reader) for kind in CONTENT_TYPES for reader in READERS
                 # 0.1.0 refuses SSE on binary streams (SSENotSupportedError): not applicable.
                 if not (kind == "bytes" and reader == "py-sse")]


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize(("kind", "reader"), CONTENT_CASES)
def test_content_roundtrip(target: ServerProcess, written: Callable[..., Written], kind: str,
                           writer: str, reader: str) -> None:
    """What one client wrote, every reader reads back exactly (JSON messages, text, bytes)."""
    w = written(target, kind, writer)
    expected = expected_of(kind)
    client, _, mode = reader.partition("-")
    if client == "ts":
        res = w.ts_read(mode)
        assert "error" not in res, res
        got = res["items"] if kind == "json" else base64.b64decode(res["b64"])
        assert got == expected
        if mode != "catchup":
            assert res["finishedBy"] == "data", res
    elif client in ("py", "dl"):
        size = None if mode == "catchup" else len(expected)
        read = py_read if client == "py" else dl_read
        assert read(w.url, mode, kind, size=size) == expected
    else:
        r = HTTP.get(w.url, params={"offset": "-1"})
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0].strip() == CONTENT_TYPES[kind]
        assert r.headers.get("stream-up-to-date") == "true"
        assert "stream-closed" not in r.headers
        if kind == "json":
            assert r.json() == expected
        else:
            assert r.content == expected
        assert HTTP.head(w.url).headers["stream-next-offset"] == r.headers["stream-next-offset"]


# --------------------------------------------------------------------------
# Live tail: readers wait at the tail, the writer appends, then closes

TAIL_MESSAGES = [{"seq": 1, "m": "first"}, {"seq": 2, "m": "second"}, {"seq": 3, "m": "last"}]


def tail_write(url: str, writer: str) -> None:
    """Append TAIL_MESSAGES to an open JSON stream, closing it with the last one where the
    writer can; the official Python client cannot, so a raw close-only POST follows it."""
    ct = {"content-type": JSON_TYPE}
    if writer == "ts":  # two appends, then append-and-close
        res = ts("write", {"url": url, "contentType": JSON_TYPE,
                           "appends": [json.dumps(m) for m in TAIL_MESSAGES[:2]],
                           "close": {"body": json.dumps(TAIL_MESSAGES[2])}})
        assert res["errors"] == [] and "closeError" not in res and "error" not in res, res
        assert res["head"]["streamClosed"] is True
    elif writer == "py":
        with PyStream(url, content_type=JSON_TYPE, client=HTTP) as handle:
            for m in TAIL_MESSAGES:
                handle.append(m)
        r = HTTP.post(url, headers={"stream-closed": "true"})
        assert r.status_code == 204 and r.headers.get("stream-closed") == "true"
    elif writer == "dl":
        with dl.DurableStream(url, client=HTTP) as stream:
            stream.append_json(*TAIL_MESSAGES[:2])
            assert stream.append_json(TAIL_MESSAGES[2], close=True).closed
    else:  # raw: two appends, then append-and-close
        for m in TAIL_MESSAGES[:2]:
            assert HTTP.post(url, headers=ct, content=json.dumps([m])).status_code == 204
        r = HTTP.post(url, headers={**ct, "stream-closed": "true"},
                       content=json.dumps([TAIL_MESSAGES[2]]))
        assert r.status_code == 204 and r.headers.get("stream-closed") == "true"


TAIL_READERS = [f"{client}-{mode}" for client in ("ts", "py", "dl")
                for mode in ("long-poll", "sse")]


@dataclass
class Tail:
    """One live-tail scenario: every reader parked at the tail, then one writer."""

    url: str
    tail: str  # the offset the readers start from
    results: dict[str, Any]
    final_head: httpx.Headers


def run_tail(server: ServerProcess, writer: str) -> Tail:
    url = new_url(server, f"tail-by-{writer}")
    r = HTTP.put(url, headers={"content-type": JSON_TYPE}, content=json.dumps(["before"]))
    assert r.status_code == 201
    tail = r.headers["stream-next-offset"]
    # TS joins with offset=now (the sentinel, PROTOCOL.md 8) and tells us when it is parked;
    # the Python readers start from the tail offset, so they cannot miss a write.
    ts_jobs = {mode: ts_start("read", {"url": url, "offset": "now", "live": mode,
                                       "format": "json", "untilClosed": True,
                                       "timeoutMs": READ_TIMEOUT * 1000})
               for mode in ("long-poll", "sse")}
    pool = ThreadPoolExecutor(max_workers=4)
    futures: dict[str, Future[Any]] = {}
    for mode in ("long-poll", "sse"):
        # Long-poll: 0.1.0 cannot see closure, so it stops on the count. SSE: the server must
        # end the response after the closing control event, which ends its iteration.
        size = len(TAIL_MESSAGES) if mode == "long-poll" else None
        futures[f"py-{mode}"] = pool.submit(py_read, url, mode, "json", offset=tail, size=size)
        # duralog.client stops by itself at the end of a closed stream, in every mode.
        futures[f"dl-{mode}"] = pool.submit(dl_read, url, mode, "json", offset=tail)
    results: dict[str, Any] = {}
    try:
        for mode, job in ts_jobs.items():
            try:
                results[f"ts-{mode}-ready"] = job.wait_ready()
            except AssertionError as err:
                results[f"ts-{mode}-ready"] = {"error": str(err)}
        time.sleep(0.3)  # let the live requests reach the servers and park
        tail_write(url, writer)
        for mode, job in ts_jobs.items():
            results[f"ts-{mode}"] = job.result()
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=READ_TIMEOUT + 5)
            except Exception as err:  # reported by that reader's case
                results[name] = err
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return Tail(url, tail, results, HTTP.head(url).headers)


@pytest.fixture(scope="module")
def tails() -> Callable[[ServerProcess, str], Tail]:
    cache: dict[tuple[str, str], Tail] = {}

    def get(server: ServerProcess, writer: str) -> Tail:
        if (server.url, writer) not in cache:
            cache[(server.url, writer)] = run_tail(server, writer)
        return cache[(server.url, writer)]
    return get


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("reader", TAIL_READERS)
def test_live_tail_then_eof(target: ServerProcess, tails: Callable[..., Tail], writer: str,
                            reader: str) -> None:
    """A live reader parked at the tail receives appends as they happen and, if the client
    knows closure, detects EOF and ends by itself."""
    t = tails(target, writer)
    assert t.final_head.get("stream-closed") == "true"
    got = t.results[reader]
    if isinstance(got, BaseException):
        raise got
    if reader.startswith("ts-"):
        ready = t.results[f"{reader}-ready"]
        assert ready.get("offset") == t.tail, ready  # offset=now joined at the tail
        assert "error" not in got, got
        assert got["items"] == TAIL_MESSAGES
        assert got["streamClosed"] is True, got
        assert got["sessionEnded"] is True, got  # EOF ended the session, no cancel needed
        assert got["offset"] == t.final_head["stream-next-offset"]
    else:
        assert got == TAIL_MESSAGES


@pytest.mark.parametrize("kind", ["text", "bytes"])
def test_live_sse_text_and_binary(target: ServerProcess, kind: str) -> None:
    """SSE on live text and binary streams: readers parked at the tail get each part as it is
    appended (text as UTF-8 lines, binary as base64), then EOF. The TS client catches up
    before it opens SSE, so only a reader parked at the tail exercises its SSE decoding."""
    url = new_url(target, f"sse-{kind}")
    ct = {"content-type": CONTENT_TYPES[kind]}
    r = HTTP.put(url, headers=ct)
    assert r.status_code == 201
    tail = r.headers["stream-next-offset"]
    job = ts_start("read", {"url": url, "offset": "now", "live": "sse", "format": "bytes",
                            "untilClosed": True, "timeoutMs": READ_TIMEOUT * 1000})
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {"dl": pool.submit(dl_read, url, "sse", kind, offset=tail)}
    if kind == "text":  # 0.1.0 refuses SSE on binary streams
        futures["py"] = pool.submit(py_read, url, "sse", kind, offset=tail)
    try:
        job.wait_ready()
        time.sleep(0.3)
        parts = [p.encode() if isinstance(p, str) else p for p in parts_of(kind)]
        for part in parts[:-1]:
            assert HTTP.post(url, headers=ct, content=part).status_code == 204
            time.sleep(0.05)  # separate SSE data events
        r = HTTP.post(url, headers={**ct, "stream-closed": "true"}, content=parts[-1])
        assert r.status_code == 204
        expected = b"".join(parts)
        res = job.result()
        assert "error" not in res, res
        assert base64.b64decode(res["b64"]) == expected
        assert res["streamClosed"] is True and res["sessionEnded"] is True, res
        for name, future in futures.items():
            assert future.result(timeout=READ_TIMEOUT + 5) == expected, name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_pretty_printed_json_through_sse(target: ServerProcess) -> None:
    """JSON appends with CRLF, tabs and leading spaces between tokens (a pretty-printing
    writer): however a server frames them in SSE data lines, every SSE reader must get the
    same messages back."""
    url = new_url(target, "pretty")
    ct = {"content-type": JSON_TYPE}
    r = HTTP.put(url, headers=ct)
    tail = r.headers["stream-next-offset"]
    job = ts_start("read", {"url": url, "offset": "now", "live": "sse", "format": "json",
                            "untilClosed": True, "timeoutMs": READ_TIMEOUT * 1000})
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {"py": pool.submit(py_read, url, "sse", "json", offset=tail),
               "dl": pool.submit(dl_read, url, "sse", "json", offset=tail)}
    try:
        job.wait_ready()
        time.sleep(0.3)
        body = b'[\r\n  {"a": 1,\r\n   "t": "x\\ny"},\r\n\t[1,\r\n 2]\r\n]'
        assert HTTP.post(url, headers=ct, content=body).status_code == 204
        r = HTTP.post(url, headers={**ct, "stream-closed": "true"}, content=b'  "last"  \r\n')
        assert r.status_code == 204
        expected = [{"a": 1, "t": "x\ny"}, [1, 2], "last"]
        assert HTTP.get(url).json() == expected
        res = job.result()
        assert res["items"] == expected and res["sessionEnded"] is True, res
        for name, future in futures.items():
            assert future.result(timeout=READ_TIMEOUT) == expected, name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_path_with_unicode_and_spaces(target: ServerProcess) -> None:
    """Stream paths are URL paths: percent-encoded UTF-8 and spaces mean the same stream to
    every client."""
    url = new_url(target, "näme with space:x~y")
    res = ts("write", {"url": url, "contentType": "text/plain", "create": {}, "appends": ["hé"]})
    assert res["errors"] == [] and "error" not in res, res
    assert HTTP.get(url).content == "hé".encode()
    assert py_read(url, "catchup", "text") == "hé".encode()
    assert dl_read(url, "catchup", "text") == "hé".encode()


@pytest.fixture(scope="module", params=["duralog", "reference"])
def short_poll_server(request: pytest.FixtureRequest, node_available: None,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose long-polls time out after 1 s (duralog memory backend, or the reference)."""
    if request.param == "duralog":
        log = tmp_path_factory.mktemp("short-poll") / "server.log"
        server = duralog_server("memory", extra=["--long-poll-timeout", "1"], log_path=log)
    else:
        server = reference_server(long_poll_ms=1000)
    server.start()
    yield server
    server.stop()


def test_long_poll_timeouts_then_data(short_poll_server: ServerProcess) -> None:
    """Long-polls that time out (204, Stream-Up-To-Date, cursor) are re-issued by every client,
    which then gets the data that comes later, once."""
    url = new_url(short_poll_server, "timeouts")
    r = HTTP.put(url, headers={"content-type": JSON_TYPE}, content=json.dumps(["old"]))
    tail = r.headers["stream-next-offset"]
    started = time.monotonic()
    r = HTTP.get(url, params={"offset": tail, "live": "long-poll"})
    assert 0.5 < time.monotonic() - started < 5
    assert r.status_code == 204
    assert r.headers.get("stream-up-to-date") == "true"
    assert r.headers.get("stream-next-offset") == tail
    assert r.headers.get("stream-cursor")

    job = ts_start("read", {"url": url, "offset": "now", "live": "long-poll", "format": "json",
                            "count": 1, "timeoutMs": READ_TIMEOUT * 1000})
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {"py": pool.submit(py_read, url, "long-poll", "json", offset=tail, size=1),
               "dl": pool.submit(dl_read, url, "long-poll", "json", offset=tail, size=1)}
    try:
        job.wait_ready()
        time.sleep(1.6)  # at least one timeout and re-poll for every reader
        assert HTTP.post(url, headers={"content-type": JSON_TYPE},
                         content=json.dumps(["new"])).status_code == 204
        res = job.result()
        assert res["items"] == ["new"] and res["finishedBy"] == "data", res
        for name, future in futures.items():
            assert future.result(timeout=READ_TIMEOUT) == ["new"], name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_content_type_with_parameters(target: ServerProcess) -> None:
    """A JSON stream created as 'application/json; charset=utf-8' is a JSON stream for every
    client: appends with or without the parameter are accepted and framed as messages."""
    url = new_url(target, "charset")
    res = ts("write", {"url": url, "contentType": "application/json; charset=utf-8",
                       "create": {}, "appends": [json.dumps({"a": 1})]})
    assert res["errors"] == [] and "error" not in res, res
    assert HTTP.post(url, headers={"content-type": JSON_TYPE}, content="[2]").status_code == 204
    with PyStream(url, content_type=JSON_TYPE, client=HTTP) as handle:
        handle.append(3)
    with dl.DurableStream(url, client=HTTP) as stream:
        stream.append_json(4)
    expected = [{"a": 1}, 2, 3, 4]
    assert HTTP.get(url).json() == expected
    assert ts("read", {"url": url, "live": "sse", "format": "json", "count": 4})["items"] \
        == expected
    assert py_read(url, "sse", "json", size=4) == expected
    assert dl_read(url, "sse", "json", size=4) == expected


def test_fork_read_by_clients(target: ServerProcess) -> None:
    """A fork (PROTOCOL.md 4.2, created with raw HTTP: the official clients have no fork API)
    reads as inherited data then its own, in the source's offset space; live readers of the
    fork wake for the fork's appends only, and see its closure."""
    ct = {"content-type": JSON_TYPE}
    source = new_url(target, "fork-source")
    HTTP.put(source, headers=ct, content='["a"]')
    middle = HTTP.head(source).headers["stream-next-offset"]
    assert HTTP.post(source, headers=ct, content='["b"]').status_code == 204
    fork = source + "-fork"
    r = HTTP.put(fork, headers={"stream-forked-from": source.split(target.url, 1)[1],
                                "stream-fork-offset": middle})
    assert r.status_code == 201, r.text
    tail = r.headers["stream-next-offset"]
    job = ts_start("read", {"url": fork, "offset": "now", "live": "sse", "format": "json",
                            "untilClosed": True, "timeoutMs": READ_TIMEOUT * 1000})
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {"py": pool.submit(py_read, fork, "long-poll", "json", offset=tail, size=1),
               "dl": pool.submit(dl_read, fork, "sse", "json", offset=tail)}
    try:
        assert job.wait_ready()["offset"] == tail
        time.sleep(0.3)
        assert HTTP.post(source, headers=ct, content='["c"]').status_code == 204  # not the fork's
        time.sleep(0.3)
        r = HTTP.post(fork, headers={**ct, "stream-closed": "true"}, content='["f1"]')
        assert r.status_code == 204
        res = job.result()
        assert res["items"] == ["f1"] and res["streamClosed"] and res["sessionEnded"], res
        for name, future in futures.items():
            assert future.result(timeout=READ_TIMEOUT) == ["f1"], name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert ts("read", {"url": fork, "live": False, "format": "json"})["items"] == ["a", "f1"]
    assert ts("read", {"url": fork, "live": False, "format": "json",
                       "offset": middle})["items"] == ["f1"]
    assert py_read(fork, "catchup", "json") == ["a", "f1"]
    assert dl_read(fork, "catchup", "json") == ["a", "f1"]
    assert HTTP.get(source).json() == ["a", "b", "c"]


# --------------------------------------------------------------------------
# Closure through the clients


def test_ts_close_semantics(target: ServerProcess) -> None:
    """TS append-and-close, append after close, idempotent close; raw and Python see EOF."""
    url = new_url(target, "close")
    res = ts("write", {"url": url, "contentType": JSON_TYPE, "create": {},
                       "appends": [json.dumps({"a": 1})], "close": {"body": json.dumps({"b": 2})},
                       "afterClose": json.dumps({"c": 3})})
    assert res["errors"] == [] and "closeError" not in res, res
    final = res["finalOffset"]
    assert res["head"] == {"offset": final, "streamClosed": True, "contentType": JSON_TYPE}
    # Refused with 409. Client 0.2.7 surfaces it as FetchError, not the StreamClosedError its
    # README promises for append() (the same against the reference server).
    assert res["afterClose"]["status"] == 409, res

    # Close-only is idempotent; close with a body on a closed stream is not.
    again = ts("write", {"url": url, "contentType": JSON_TYPE, "close": True})
    assert "closeError" not in again and again["finalOffset"] == final, again
    body_again = ts("write", {"url": url, "contentType": JSON_TYPE,
                              "close": {"body": json.dumps({"d": 4})}})
    assert body_again["closeError"]["status"] == 409, body_again  # FetchError, as above

    # Raw: the data, then the EOF signal in every mode at the tail (PROTOCOL.md 5.6-5.8).
    r = HTTP.get(url, params={"offset": "-1"})
    assert r.json() == [{"a": 1}, {"b": 2}]
    assert r.headers.get("stream-closed") == "true"
    r = HTTP.get(url, params={"offset": final})
    assert (r.status_code, r.json(), r.headers.get("stream-closed")) == (200, [], "true")
    started = time.monotonic()
    r = HTTP.get(url, params={"offset": final, "live": "long-poll"}, timeout=20)
    assert (r.status_code, r.headers.get("stream-closed")) == (204, "true")
    assert time.monotonic() - started < 5  # no waiting on a closed stream
    with HTTP.stream("GET", url, params={"offset": final, "live": "sse"}, timeout=20) as r:
        body = r.read().decode()  # returns only because the server ends the response
    controls = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    assert controls and controls[-1].get("streamClosed") is True

    # The Python clients read the data; their appends are refused with 409.
    assert py_read(url, "catchup", "json") == [{"a": 1}, {"b": 2}]
    with PyStream(url, content_type=JSON_TYPE, client=HTTP) as handle, \
            pytest.raises(PyError) as err:
        handle.append({"late": True})
    assert err.value.status == 409
    with dl.DurableStream(url, client=HTTP) as stream:
        reader = stream.read("-1", live="long-poll")
        assert list(reader.json_items()) == [{"a": 1}, {"b": 2}]
        assert reader.closed and reader.offset == final
        with pytest.raises(dl.StreamClosedError) as closed:
            stream.append_json({"late": True})
        assert closed.value.final_offset == final


def test_ts_create_closed_stream(target: ServerProcess) -> None:
    """A stream created closed with its whole content (TS create {closed, body}) reads as
    complete everywhere: live readers end at once, raw sees Stream-Closed."""
    url = new_url(target, "created-closed")
    res = ts("write", {"url": url, "contentType": JSON_TYPE,
                       "create": {"body": json.dumps({"only": "message"}), "closed": True}})
    assert "error" not in res and res["head"]["streamClosed"] is True, res
    for live in ("sse", "long-poll"):
        read = ts("read", {"url": url, "live": live, "format": "json", "untilClosed": True,
                           "timeoutMs": 10000})
        assert read["items"] == [{"only": "message"}], (live, read)
        assert read["streamClosed"] is True and read["sessionEnded"] is True, (live, read)
        assert dl_read(url, live, "json") == [{"only": "message"}]
    r = HTTP.get(url, params={"offset": "-1"})
    assert r.json() == [{"only": "message"}] and r.headers.get("stream-closed") == "true"
    assert py_read(url, "catchup", "json") == [{"only": "message"}]
    # The official Python client's SSE read ends when the server closes the response.
    assert py_read(url, "sse", "json") == [{"only": "message"}]


def test_binary_close_seen_by_ts_and_dl(target: ServerProcess) -> None:
    """EOF on a binary stream: TS long-poll and SSE (base64), duralog.client SSE."""
    url = new_url(target, "bytes-close")
    content = BYTES_PARTS[0] + b"\xff\x00end"
    res = ts("write", {"url": url, "contentType": "application/octet-stream", "create": {},
                       "appends": [{"b64": base64.b64encode(BYTES_PARTS[0]).decode()}],
                       "close": {"body": {"b64": base64.b64encode(b"\xff\x00end").decode()}}})
    assert res["errors"] == [] and "closeError" not in res, res
    for live in ("long-poll", "sse"):
        read = ts("read", {"url": url, "live": live, "format": "bytes", "untilClosed": True,
                           "timeoutMs": 10000})
        assert base64.b64decode(read["b64"]) == content, live
        assert read["streamClosed"] is True and read["sessionEnded"] is True, (live, read)
        assert dl_read(url, live, "bytes") == content
    assert HTTP.get(url).content == content


# --------------------------------------------------------------------------
# Idempotent producers (TS IdempotentProducer, duralog.client; Python 0.1.0 has none)

PRODUCED = [{"i": i, "pad": "p" * (i % 7)} for i in range(60)]


def check_closing_retry(url: str, producer_id: str, epoch: int, seq: int, final: Any) -> None:
    """A retry of the closing request is a duplicate; any other tuple is refused (5.2.1)."""
    closing = {"content-type": JSON_TYPE, "producer-id": producer_id,
               "producer-epoch": str(epoch), "producer-seq": str(seq), "stream-closed": "true"}
    retry = HTTP.post(url, headers=closing, content=json.dumps([final]))
    assert retry.status_code == 204 and retry.headers.get("stream-closed") == "true"
    other = HTTP.post(url, headers={**closing, "producer-seq": str(seq + 1)},
                       content=json.dumps([{"late": True}]))
    assert other.status_code == 409 and other.headers.get("stream-closed") == "true"


def test_ts_producer_pipelined_then_close(target: ServerProcess) -> None:
    """TS producer: small batches, five in flight, then close with a final message: every
    reader sees each message once, in order."""
    url = new_url(target, "ts-producer")
    assert HTTP.put(url, headers={"content-type": JSON_TYPE}).status_code == 201
    res = ts("produce", {"url": url, "contentType": JSON_TYPE, "producerId": "prod-1",
                         "messages": PRODUCED, "maxInFlight": 5, "lingerMs": 0,
                         "maxBatchBytes": 100, "close": True, "finalMessage": {"done": True}})
    assert res["errors"] == [] and "closeError" not in res, res
    expected = [*PRODUCED, {"done": True}]
    r = HTTP.get(url, params={"offset": "-1"})
    assert r.json() == expected
    assert r.headers.get("stream-closed") == "true"
    assert res["finalOffset"] == r.headers["stream-next-offset"]
    assert ts("read", {"url": url, "live": False, "format": "json"})["items"] == expected
    assert py_read(url, "catchup", "json") == expected
    assert dl_read(url, "sse", "json") == expected
    # The close used seq nextSeq-1 (the client counts up after each success).
    check_closing_retry(url, "prod-1", res["epoch"], res["nextSeq"] - 1, {"done": True})
    assert HTTP.get(url).json() == expected


def test_ts_producer_every_request_delivered_twice(target: ServerProcess) -> None:
    """Exactly once under retries: the TS producer's fetch delivers every POST twice (as when
    a response is lost and the request retried) with five batches in flight; the copy is a
    duplicate (204) and the stream holds each message once, in order."""
    url = new_url(target, "ts-producer-dup")
    assert HTTP.put(url, headers={"content-type": JSON_TYPE}).status_code == 201
    res = ts("produce", {"url": url, "contentType": JSON_TYPE, "producerId": "twice",
                         "messages": PRODUCED, "maxInFlight": 5, "lingerMs": 0,
                         "maxBatchBytes": 100, "close": True, "finalMessage": {"done": True},
                         "duplicatePosts": True})
    assert res["errors"] == [] and "closeError" not in res, res
    pairs = [tuple(p) for p in res["pairs"]]
    assert (200, 204) in pairs, pairs
    # A first copy that was accepted makes its copy a duplicate (200 -> 204), the closing
    # request included. (Out-of-order arrivals may 409 and be re-sent by the client.)
    assert all(second == 204 for first, second in pairs if first == 200), pairs
    expected = [*PRODUCED, {"done": True}]
    assert HTTP.get(url).json() == expected
    assert dl_read(url, "long-poll", "json") == expected  # ends at EOF


def test_live_readers_follow_a_pipelined_producer(target: ServerProcess) -> None:
    """Live readers of every client, parked at the tail, follow 300 messages a TS producer
    sends in small pipelined batches, then its close: all of them, once, in order."""
    url = new_url(target, "follow-producer")
    r = HTTP.put(url, headers={"content-type": JSON_TYPE})
    tail = r.headers["stream-next-offset"]
    messages = [{"n": n} for n in range(300)]
    jobs = {mode: ts_start("read", {"url": url, "offset": "now", "live": mode,
                                    "format": "json", "untilClosed": True,
                                    "timeoutMs": READ_TIMEOUT * 1000})
            for mode in ("long-poll", "sse")}
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {"py-sse": pool.submit(py_read, url, "sse", "json", offset=tail),
               "dl-sse": pool.submit(dl_read, url, "sse", "json", offset=tail),
               "dl-long-poll": pool.submit(dl_read, url, "long-poll", "json", offset=tail)}
    try:
        for job in jobs.values():
            job.wait_ready()
        time.sleep(0.3)
        res = ts("produce", {"url": url, "contentType": JSON_TYPE, "producerId": "fast",
                             "messages": messages, "maxInFlight": 5, "lingerMs": 1,
                             "maxBatchBytes": 200, "close": True})
        assert res["errors"] == [] and "closeError" not in res, res
        for mode, job in jobs.items():
            got = job.result()
            assert got["items"] == messages and got["sessionEnded"] is True, (mode, got)
        for name, future in futures.items():
            assert future.result(timeout=READ_TIMEOUT) == messages, name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_dl_producer_read_by_official_clients(target: ServerProcess) -> None:
    """duralog.client producer, pipelined, closing with a final message: the official clients
    read each message once, in order, and the TS client sees EOF."""
    url = new_url(target, "dl-producer")
    with dl.DurableStream(url, client=HTTP) as stream:
        stream.create(content_type=JSON_TYPE)
        producer = stream.producer("dl-prod", max_batch_bytes=100, linger=0.0, max_in_flight=5)
        for message in PRODUCED:
            producer.append_json(message)
        closed = producer.close_stream(json={"done": True})
    expected = [*PRODUCED, {"done": True}]
    read = ts("read", {"url": url, "live": "long-poll", "format": "json", "untilClosed": True,
                       "timeoutMs": 10000})
    assert read["items"] == expected
    assert read["streamClosed"] is True and read["sessionEnded"] is True, read
    assert read["offset"] == closed.next_offset
    assert py_read(url, "catchup", "json") == expected
    assert py_read(url, "sse", "json") == expected
    check_closing_retry(url, "dl-prod", producer.epoch, producer.next_seq - 1, {"done": True})


def test_producer_epochs_across_clients(target: ServerProcess) -> None:
    """Raw holds epoch 3; TS auto-claims 4; duralog.client auto-claims 5; a TS zombie at
    epoch 3 and a duralog.client zombie at 4 are fenced and write nothing."""
    url = new_url(target, "claim")
    ct = {"content-type": JSON_TYPE}
    assert HTTP.put(url, headers=ct).status_code == 201
    r = HTTP.post(url, headers={**ct, "producer-id": "p", "producer-epoch": "3",
                                 "producer-seq": "0"}, content=json.dumps(["raw at epoch 3"]))
    assert r.status_code == 200, r.text

    claimed = ts("produce", {"url": url, "contentType": JSON_TYPE, "producerId": "p",
                             "autoClaim": True, "messages": ["ts-1", "ts-2"]})
    assert claimed["errors"] == [] and claimed["epoch"] == 4, claimed

    with dl.DurableStream(url, client=HTTP) as stream:
        with stream.producer("p", auto_claim=True) as producer:
            producer.append_json("dl-1")
        assert producer.epoch == 5
        zombie_dl = stream.producer("p", epoch=4)
        zombie_dl.append_json("dl zombie")
        with pytest.raises(dl.ProducerFenced) as fenced:
            zombie_dl.close()  # flushes, raises the failure, stops the producer
        assert fenced.value.current_epoch == 5

    zombie_ts = ts("produce", {"url": url, "contentType": JSON_TYPE, "producerId": "p",
                               "epoch": 3, "messages": ["ts zombie"]})
    assert [e["name"] for e in zombie_ts["errors"]] == ["StaleEpochError"], zombie_ts
    assert zombie_ts["errors"][0]["currentEpoch"] == 5

    expected = ["raw at epoch 3", "ts-1", "ts-2", "dl-1"]
    assert HTTP.get(url).json() == expected
    assert ts("read", {"url": url, "live": False, "format": "json"})["items"] == expected
    assert py_read(url, "catchup", "json") == expected


def test_raw_producer_retries_read_once_by_clients(target: ServerProcess) -> None:
    """Raw producer requests with a retried (id, epoch, seq): the clients read no duplicate."""
    url = new_url(target, "dedup")
    ct = {"content-type": JSON_TYPE}
    assert HTTP.put(url, headers=ct).status_code == 201

    def send(seq: int, body: Any) -> httpx.Response:
        return HTTP.post(url, headers={**ct, "producer-id": "w", "producer-epoch": "0",
                                        "producer-seq": str(seq)}, content=json.dumps(body))

    first, second, retry = send(0, ["a"]), send(1, ["b", "c"]), send(1, ["b", "c"])
    assert (first.status_code, second.status_code, retry.status_code) == (200, 200, 204)
    assert retry.headers.get("producer-seq") == "1"
    gap = send(3, ["d"])
    assert gap.status_code == 409
    assert (gap.headers.get("producer-expected-seq"), gap.headers.get("producer-received-seq")) \
        == ("2", "3")
    expected = ["a", "b", "c"]
    assert ts("read", {"url": url, "live": False, "format": "json"})["items"] == expected
    assert py_read(url, "catchup", "json") == expected
    assert dl_read(url, "catchup", "json") == expected


# --------------------------------------------------------------------------
# Stream-Seq and offsets passed between clients


def test_stream_seq_across_clients(target: ServerProcess) -> None:
    """Stream-Seq from all clients: increasing values accepted, a regression refused (409)."""
    url = new_url(target, "seq")
    with PyStream.create(url, content_type=JSON_TYPE, client=HTTP) as handle:
        handle.append({"s": 1}, seq="0001")
        handle.append({"s": 2}, seq="0002")
        with pytest.raises(PyError) as err:
            handle.append({"s": "dup"}, seq="0002")
        assert err.value.status == 409
    res = ts("write", {"url": url, "contentType": JSON_TYPE,
                       "appends": [json.dumps({"s": 3}), json.dumps({"s": "old"})],
                       "seqs": ["0003", "0001"]})
    assert len(res["errors"]) == 1 and res["errors"][0]["status"] == 409, res
    with dl.DurableStream(url, client=HTTP) as stream:
        stream.append_json({"s": 4}, seq="0004")
        with pytest.raises(dl.StreamConflict):
            stream.append_json({"s": "old"}, seq="0003")
    assert HTTP.get(url).json() == [{"s": 1}, {"s": 2}, {"s": 3}, {"s": 4}]


def test_offsets_handed_between_clients(target: ServerProcess) -> None:
    """An offset one client got is a valid resume point for the others (offsets are opaque)."""
    url = new_url(target, "offsets")
    with PyStream.create(url, content_type=JSON_TYPE, client=HTTP) as handle:
        handle.append({"part": 1})
        middle = handle.append({"part": 2}).next_offset
        handle.append({"part": 3})
        assert handle.head().offset == HTTP.head(url).headers["stream-next-offset"]
    res = ts("read", {"url": url, "live": False, "format": "json", "offset": middle})
    assert res["items"] == [{"part": 3}]
    tail = res["offset"]
    assert dl_read(url, "catchup", "json", offset=middle) == [{"part": 3}]
    assert py_read(url, "catchup", "json", offset=tail) == []
    assert HTTP.get(url, params={"offset": tail}).json() == []
    ts("write", {"url": url, "contentType": JSON_TYPE, "appends": [json.dumps("new")]})
    assert py_read(url, "catchup", "json", offset=tail) == ["new"]
    assert py_read(url, "long-poll", "json", offset=tail, size=1) == ["new"]
    assert dl_read(url, "long-poll", "json", offset=tail, size=1) == ["new"]


# --------------------------------------------------------------------------
# Streaming bodies, large payloads, stream configuration and deletion


def test_ts_streamed_append_and_writable(target: ServerProcess) -> None:
    """TS appendStream (one POST, body streamed in parts with pauses) and writable() (an
    auto-claiming producer that closes the stream): the bytes arrive whole and in order."""
    url = new_url(target, "append-stream")
    parts = ["streamed é😀 part 1\n", "part 2\n" * 200, "part 3, the end"]
    res = ts("write", {"url": url, "contentType": "text/plain", "create": {},
                       "appendStream": {"parts": parts, "delayMs": 50}})
    assert res["errors"] == [] and "error" not in res, res
    assert HTTP.get(url).content == "".join(parts).encode()
    assert dl_read(url, "catchup", "text") == "".join(parts).encode()

    url = new_url(target, "writable")
    res = ts("write", {"url": url, "contentType": "text/plain", "create": {}, "pipe": parts})
    assert res["errors"] == [] and res["head"]["streamClosed"] is True, res
    r = HTTP.get(url)
    assert r.content == "".join(parts).encode() and r.headers.get("stream-closed") == "true"
    assert py_read(url, "sse", "text") == "".join(parts).encode()  # ends at EOF
    assert dl_read(url, "long-poll", "text") == "".join(parts).encode()


LARGE = bytes((i * 7919 + (i >> 8)) % 256 for i in range(3 * 1024 * 1024 + 123))


@pytest.mark.parametrize("writer", ["ts", "py"])
def test_large_binary_read_in_chunks(target: ServerProcess, writer: str) -> None:
    """3 MiB in one append; servers may answer a catch-up in several chunks, and every client
    must follow Stream-Next-Offset to the end and put the bytes back together."""
    url = new_url(target, f"large-{writer}")
    if writer == "ts":
        res = ts("write", {"url": url, "contentType": "application/octet-stream", "create": {},
                           "appends": [{"b64": base64.b64encode(LARGE).decode()}]})
        assert res["errors"] == [] and "error" not in res, res
    else:
        with PyStream.create(url, content_type="application/octet-stream", client=HTTP) as h:
            h.append(LARGE)
    first = HTTP.get(url, params={"offset": "-1"})
    if len(first.content) < len(LARGE):  # a partial chunk is not up to date (5.6)
        assert "stream-up-to-date" not in first.headers
        assert LARGE.startswith(first.content)
    # TS catch-up-only reads stop after the first chunk (test_ts_catchup_read_past_a_chunk);
    # a live read follows Stream-Next-Offset chunk by chunk.
    read = ts("read", {"url": url, "live": "long-poll", "format": "bytes", "count": len(LARGE),
                       "timeoutMs": 10000})
    assert base64.b64decode(read["b64"]) == LARGE
    assert read["upToDate"] is True
    assert py_read(url, "catchup", "bytes") == LARGE
    assert dl_read(url, "catchup", "bytes") == LARGE
    assert dl_read(url, "sse", "bytes", size=len(LARGE)) == LARGE  # base64 SSE


@pytest.mark.parametrize("kind", ["bytes", "json"])
@pytest.mark.parametrize("client", ["ts", "py"])
def test_catchup_helpers_read_past_a_chunk(request: pytest.FixtureRequest,
                                           target: ServerProcess, client: str,
                                           kind: str) -> None:
    """A catch-up-only read (live: false) must follow Stream-Next-Offset until
    Stream-Up-To-Date (PROTOCOL.md 5.6). The read-everything helpers of both official clients
    stop after the first response instead: TS 0.2.7 StreamResponse.body() (its
    StreamResponseState.shouldContinueLive is false whenever live === false) and Python 0.1.0
    read_bytes()/read_text()/read_json() (`if self._live is False: break`). duralog answers
    reads in ~1 MiB chunks (JSON: whole appends up to ~1 MiB), as 5.6 allows, so they get
    the first chunk only; the
    reference server never chunks, which hides the bug there. The iterating APIs of both
    clients (live reads, Python iteration) do follow the offsets: see the test above."""
    if request.node.callspec.params["target"] != "reference":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason=f"{client} official client: catch-up helper stops after "
                                "the first chunk (client bug, see docstring)"))
    url = new_url(target, f"catchup-chunks-{client}-{kind}")
    ct = {"content-type": CONTENT_TYPES[kind]}
    assert HTTP.put(url, headers=ct).status_code == 201
    if kind == "bytes":
        expected: Any = LARGE
        assert HTTP.post(url, headers=ct, content=LARGE).status_code == 204
    else:  # 3 MB of JSON in 30 appends
        expected = [{"i": i, "pad": "x" * 1000} for i in range(3000)]
        for k in range(0, 3000, 100):
            r = HTTP.post(url, headers=ct, content=json.dumps(expected[k:k + 100]))
            assert r.status_code == 204
    if client == "ts":
        read = ts("read", {"url": url, "live": False, "format": "bytes" if kind == "bytes"
                           else "json"})
        got = base64.b64decode(read["b64"]) if kind == "bytes" else read["items"]
    else:
        with py_stream(url, live=False, client=HTTP) as res:
            got = res.read_bytes() if kind == "bytes" else res.read_json()
    assert len(got) == len(expected)
    assert got == expected


def test_create_config_and_delete_across_clients(target: ServerProcess) -> None:
    """PUT is idempotent for the same configuration and refused for another; TTL and expiry
    round-trip; a stream deleted by one client is gone for all."""
    url = new_url(target, "config")
    res = ts("write", {"url": url, "contentType": "text/plain", "create": {"ttlSeconds": 3600}})
    assert "createError" not in res, res
    head = HTTP.head(url)
    assert head.headers.get("stream-ttl") == "3600"
    assert head.headers["content-type"].startswith("text/plain")
    # Same configuration again: 200, from either client.
    again = ts("write", {"url": url, "contentType": "text/plain", "create": {"ttlSeconds": 3600}})
    assert "createError" not in again, again
    PyStream.create(url, content_type="text/plain", ttl_seconds=3600, client=HTTP).close()
    with dl.DurableStream(url, client=HTTP) as stream:
        assert stream.create(content_type="text/plain", ttl=3600).created is False  # 200
    # Another content type: 409 from either client.
    other = ts("write", {"url": url, "contentType": JSON_TYPE, "create": {"ttlSeconds": 3600}})
    assert other["createError"]["status"] == 409, other
    with pytest.raises(PyError) as err:
        PyStream.create(url, content_type=JSON_TYPE, ttl_seconds=3600, client=HTTP)
    assert err.value.status == 409

    expiring = new_url(target, "expires")
    at = "2099-01-02T03:04:05Z"
    PyStream.create(expiring, content_type="text/plain", expires_at=at, client=HTTP).close()
    stamp = HTTP.head(expiring).headers.get("stream-expires-at", "")
    assert stamp.replace(".000", "").replace("+00:00", "Z") == at

    assert ts("delete", {"url": url}) == {"deleted": True}
    assert HTTP.head(url).status_code == 404
    assert ts("head", {"url": url})["exists"] is False
    assert ts("read", {"url": url, "live": False})["error"]["status"] == 404
    with pytest.raises(PyError) as err:
        py_read(url, "catchup", "text")
    assert err.value.status == 404
    with pytest.raises(dl.StreamNotFound):
        dl_read(url, "catchup", "text")
