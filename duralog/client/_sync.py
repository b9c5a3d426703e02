"""The blocking client: ``DurableStream`` and its ``Reader``.

All protocol decisions come from ``_core``; this module only does I/O on an
``httpx.Client``, sleeps between retries, and runs a reader's requests on a
helper thread. The producer is in ``_sync_producer``.
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from ..protocol.offsets import START
from ..protocol.sse_reader import SSEReader
from . import _core as C
from . import errors as E
from ._sync_producer import IdempotentProducer

HeaderValue = str | Callable[[], str | None] | None
ValueSource = Mapping[str, HeaderValue] | Callable[[], Mapping[str, str | None]] | None

_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _resolve(source: ValueSource) -> dict[str, str | None]:
    """Evaluate headers/params given as values or functions (called on every request)."""
    if source is None:
        return {}
    mapping = source() if callable(source) else source
    return {k: (v() if callable(v) else v) for k, v in mapping.items()}


class DurableStream:
    """A handle on one stream URL: create, append, close, delete, head, fork, read.

    ``headers`` and ``params`` may hold plain values or zero-argument functions;
    functions run on every request (reads, writes, retries and reconnects), so a
    token provider can refresh credentials. ``retry`` governs retries of
    connection errors, 5xx and 429; ``timeout`` is per network operation.
    ``on_retry(error, delay)`` runs before each retry (to tell a user, or log).
    """

    def __init__(self, url: str, *, headers: ValueSource = None, params: ValueSource = None,
                 content_type: str | None = None, retry: C.RetryPolicy | None = None,
                 timeout: float | None = 90.0, client: httpx.Client | None = None,
                 on_retry: C.RetryHook | None = None) -> None:
        self.url = C.validate_url(url)
        C.validate_value_source(headers, "headers")
        C.validate_value_source(params, "params")
        C.validate_timeout(timeout)
        if retry is not None and not isinstance(retry, C.RetryPolicy):
            raise ValueError("retry must be a RetryPolicy")
        self.headers = headers
        self.params = params
        self.content_type = content_type
        self.retry = retry or C.RetryPolicy()
        self.timeout = timeout
        self.on_retry = on_retry
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------
    def close_client(self) -> None:
        """Release the HTTP connections (when this handle created its own client)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> DurableStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_client()

    def __repr__(self) -> str:
        return f"DurableStream({self.url!r})"

    def _sibling(self, url: str) -> DurableStream:
        """A handle on another stream of the same server, sharing client and options."""
        return DurableStream(url, headers=self.headers, params=self.params, retry=self.retry,
                             timeout=self.timeout, client=self._client, on_retry=self.on_retry)

    def _notify_retry(self, error: Exception, delay: float) -> None:
        if self.on_retry is not None:
            self.on_retry(error, delay)

    # -- HTTP ------------------------------------------------------------------------
    def _build(self, req: C.Request) -> httpx.Request:
        headers = C.merge_values(_resolve(self.headers), req.headers)
        params = C.sorted_params(C.merge_values(_resolve(self.params)), req.params)
        return self._client.build_request(req.method, req.url, headers=headers, params=params,
                                          content=req.content)

    def _exchange(self, req: C.Request, *, stream: bool = False) -> httpx.Response:
        """One try: a response of any status, or ConnectionFailed."""
        try:
            return self._client.send(self._build(req), stream=stream)
        except httpx.TransportError as exc:
            raise E.ConnectionFailed(f"{req.method} {req.url}: {type(exc).__name__}: {exc}",
                                     url=req.url, method=req.method,
                                     connect_failure=isinstance(exc, _CONNECT_FAILURES)) from exc

    def _send(self, req: C.Request, policy: C.RetryPolicy | None = None) -> httpx.Response:
        """Send with retries; the response (status < 400), or the mapped error."""
        backoff = C.Backoff(policy or self.retry)
        while True:
            try:
                resp = self._exchange(req)
            except E.ConnectionFailed as err:
                if not C.should_retry(req.retry, status=None,
                                      connect_failure=err.connect_failure):
                    raise
                error: E.DurableStreamError = err
            else:
                if resp.status_code < 400:
                    return resp
                error = C.error_for(req.method, req.url, resp.status_code, resp.headers,
                                    resp.content)
                if not C.should_retry(req.retry, status=resp.status_code,
                                      connect_failure=False):
                    raise error
            delay = backoff.next_delay(error)
            if delay is None:
                raise error
            self._notify_retry(error, delay)
            time.sleep(delay)

    def _known_content_type(self) -> str:
        if self.content_type is None:
            self.content_type = self.head().content_type
        return self.content_type

    # -- operations ------------------------------------------------------------------
    def create(self, *, content_type: str | None = None, ttl: int | None = None,
               expires_at: str | None = None, closed: bool = False,
               body: bytes | str | None = None, json: Any = C.MISSING_JSON,
               forked_from: str | DurableStream | None = None, fork_offset: str | None = None,
               fork_sub_offset: int | None = None) -> C.StreamInfo:
        """PUT: create the stream, or confirm it exists with this config (PROTOCOL.md 5.1).

        ``json=[...]`` gives initial messages of a JSON stream. With ``forked_from``
        the new stream forks another stream of the same server (4.2).
        """
        content = C.initial_body(body, json)
        if json is not C.MISSING_JSON and content_type is None:
            content_type = C.JSON_TYPE
        source = None
        if forked_from is not None:
            source = C.fork_source(forked_from.url if isinstance(forked_from, DurableStream)
                                   else forked_from, self.url)
        req = C.create_request(self.url, content_type=content_type, ttl=ttl,
                               expires_at=expires_at, closed=closed, body=content,
                               forked_from=source, fork_offset=fork_offset,
                               fork_sub_offset=fork_sub_offset)
        resp = self._send(req)
        info = C.info_from(self.url, resp.headers, resp.status_code, "PUT")
        self.content_type = info.content_type
        return info

    def fork(self, target_url: str, *, offset: str | None = None, sub_offset: int | None = None,
             content_type: str | None = None, ttl: int | None = None,
             expires_at: str | None = None) -> DurableStream:
        """Create a fork of this stream at ``target_url`` (PROTOCOL.md 4.2); its handle."""
        fork = self._sibling(target_url)
        fork.create(content_type=content_type, ttl=ttl, expires_at=expires_at,
                    forked_from=self.url, fork_offset=offset, fork_sub_offset=sub_offset)
        return fork

    def head(self) -> C.StreamInfo:
        """HEAD: tail offset, closure, TTL, expiry, content type (PROTOCOL.md 5.5)."""
        resp = self._send(C.Request("HEAD", self.url))
        info = C.info_from(self.url, resp.headers)
        self.content_type = info.content_type
        return info

    def exists(self) -> bool:
        try:
            self.head()
        except E.StreamNotFound:
            return False
        return True

    def append(self, data: bytes | str, *, close: bool = False, seq: str | None = None,
               content_type: str | None = None) -> C.AppendResult:
        """POST bytes (PROTOCOL.md 5.2); ``close=True`` appends and closes atomically.

        A plain append is retried when the server cannot have applied it (no
        connection made; 429, 500 or 503, which duralog answers before any write
        commits). After a connection cut once the request went out, or a 502/504
        from a proxy, it is not retried: it may have landed. Use ``producer()``
        for appends that are retried safely in every case.
        """
        body = C.encode_body(data)
        req = C.append_request(self.url, body, close=close, seq=seq,
                               content_type=content_type or self._known_content_type())
        resp = self._send(req)
        return C.append_result(resp.headers, resp.status_code)

    def append_json(self, *values: Any, close: bool = False,
                    seq: str | None = None) -> C.AppendResult:
        """Append each value as one message of a JSON stream (PROTOCOL.md 9.1.2)."""
        if not values and not close:
            raise ValueError("append_json needs at least one value (9.1.3: no empty appends)")
        body = C.json_array(values) if values else b""
        req = C.append_request(self.url, body, close=close, seq=seq, content_type=C.JSON_TYPE)
        resp = self._send(req)
        return C.append_result(resp.headers, resp.status_code)

    def close(self, data: bytes | str | None = None) -> C.AppendResult:
        """Close the stream (PROTOCOL.md 5.3), optionally with a final append (5.2)."""
        if data is None:
            req = C.append_request(self.url, b"", close=True, content_type=C.OCTET_STREAM)
            resp = self._send(req)
            return C.append_result(resp.headers, resp.status_code)
        return self.append(data, close=True)

    def delete(self) -> None:
        """DELETE the stream (PROTOCOL.md 5.4)."""
        self._send(C.Request("DELETE", self.url, retry="unsafe"))

    # -- reads -------------------------------------------------------------------------
    def read(self, offset: str = START, *, live: C.LiveMode = None,
             cursor: str | None = None, timeout: float | None = None) -> Reader:
        """Read from ``offset`` ('-1', 'now' or a saved offset).

        ``live``: None reads what is there and stops; "long-poll" and "sse" follow
        the stream live; "auto" catches up, then follows live. Every mode stops at
        the end of a closed stream. ``timeout``: the most seconds to wait for each
        next chunk before ``TimeoutError`` (None: no bound).
        """
        return Reader(self, C.ReadState(self.url, offset, live, cursor, self.content_type),
                      timeout)

    def read_all(self, offset: str = START) -> bytes:
        """Everything from ``offset`` to the current tail, as bytes."""
        return b"".join(self.read(offset).bytes())

    def read_json(self, offset: str = START) -> list[Any]:
        """Every message of a JSON stream from ``offset`` to the current tail."""
        return list(self.read(offset).json_items())

    # -- producer ---------------------------------------------------------------------------
    def producer(self, producer_id: str, **options: Any) -> IdempotentProducer:
        """An idempotent, batching, pipelined producer (PROTOCOL.md 5.2.1)."""
        return IdempotentProducer(self, producer_id, **options)


class Reader:
    """An iterator of ``Chunk``s, retrying and reconnecting from the last offset delivered.

    ``offset`` is where to resume after what was delivered so far; ``closed``
    turns true at the stream's end; ``up_to_date`` when the reader had caught up
    at its last response; ``status`` and ``headers`` are those of the last
    response (a long-poll that timed out is a 204, PROTOCOL.md 5.7).

    The HTTP requests run on a helper thread, one chunk ahead of the caller,
    so that waiting for the next chunk can be bounded and ended: ``timeout``
    is the most seconds ``next()`` waits before raising ``TimeoutError`` (the
    reader stays usable), ``close()`` may be called from any thread and ends
    the iteration within a fraction of a second, and Ctrl-C interrupts at once.
    A reader dropped without ``close()`` stops its thread when it is collected.
    """

    def __init__(self, stream: DurableStream, state: C.ReadState,
                 timeout: float | None = None) -> None:
        C.validate_timeout(timeout)
        self._stream = stream
        self._timeout = timeout
        # The helper thread holds the pump, never the reader, so an abandoned
        # reader is collected and its __del__ stops the thread.
        self._pump = _ReadPump(stream, state)
        self._finished = False
        self._view = self._pump.snapshot()

    offset = property(lambda self: self._view["offset"])
    cursor = property(lambda self: self._view["cursor"])
    closed = property(lambda self: self._view["closed"])
    up_to_date = property(lambda self: self._view["up_to_date"])
    content_type = property(lambda self: self._view["content_type"])
    status = property(lambda self: self._view["status"])
    headers = property(lambda self: self._view["headers"])

    def __iter__(self) -> Reader:
        return self

    def __next__(self) -> C.Chunk:
        pump = self._pump
        if self._finished or pump.stopped.is_set():
            self._finished = True
            raise StopIteration
        pump.start()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            wait = _POLL
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            try:
                kind, value, view = pump.queue.get(timeout=wait)
            except queue.Empty:
                if pump.stopped.is_set():
                    self._finished = True
                    raise StopIteration from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no data from {self._stream.url} within "
                                       f"{self._timeout} s") from None
                continue
            self._view = view
            if kind == "chunk":
                if value is None:
                    continue  # a response without data: only the view moved
                return value
            self._finished = True
            if kind == "end":
                raise StopIteration
            raise value

    def close(self) -> None:
        """Stop reading and drop the connection. Safe from any thread."""
        self._pump.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._pump.stop()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- views -----------------------------------------------------------------------------
    def bytes(self) -> Iterator[bytes]:
        for chunk in self:
            yield chunk.data

    def text(self, encoding: str = "utf-8") -> Iterator[str]:
        """Text, decoded incrementally: a character cut between chunks arrives whole."""
        decoder = codecs.getincrementaldecoder(encoding)()
        for chunk in self:
            piece = decoder.decode(chunk.data)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def json_batches(self) -> Iterator[C.JsonBatch]:
        for chunk in self:
            yield C.JsonBatch(chunk.json(), chunk.offset, chunk.up_to_date, chunk.closed)

    def json_items(self) -> Iterator[Any]:
        """Each message of a JSON stream. ``reader.offset`` moves past a chunk's
        messages when the last of them is handed over."""
        for chunk in self:
            yield from chunk.json()


_POLL = 0.1  # seconds between checks for close() while a reader waits


class _ReadPump:
    """A reader's helper thread: does the requests, hands chunks over a queue of one."""

    def __init__(self, stream: DurableStream, state: C.ReadState) -> None:
        self.stream = stream
        self.state = state
        self.queue: queue.Queue[tuple[str, Any, dict[str, Any]]] = queue.Queue(maxsize=1)
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.resp: httpx.Response | None = None  # the open SSE response, to abort on stop

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {"offset": s.offset, "cursor": s.cursor, "closed": s.closed,
                "up_to_date": s.up_to_date, "content_type": s.content_type,
                "status": s.status, "headers": s.headers}

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="duralog-reader", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        resp = self.resp
        if resp is not None:
            # Wake the thread out of a blocking socket read (closing the response
            # from another thread would not).
            with contextlib.suppress(Exception):
                sock = resp.extensions["network_stream"].get_extra_info("socket")
                sock.shutdown(socket.SHUT_RDWR)

    def put(self, kind: str, value: Any) -> bool:
        item = (kind, value, self.snapshot())
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for chunk in self.chunks():
                if not self.put("chunk", chunk):
                    return
            self.put("end", None)
        except BaseException as exc:  # handed to the caller's thread
            if not self.stopped.is_set():
                self.put("error", exc)

    def chunks(self) -> Iterator[C.Chunk | None]:
        """Chunks, and None after a response that carried no data."""
        state = self.state
        stream = self.stream
        backoff = C.Backoff(stream.retry)
        while not state.done and not self.stopped.is_set():
            req = state.next_request()
            try:
                if req.stream:
                    for chunk in self.sse(req):
                        backoff.reset()
                        yield chunk
                    if self.stopped.is_set():
                        return
                    if not state.on_sse_end() and not state.done:
                        # The server ended the connection without a word: back off.
                        raise E.ConnectionFailed(f"GET {req.url}: SSE ended without events",
                                                 url=req.url, method="GET")
                else:
                    resp = stream._exchange(req)
                    try:
                        if resp.status_code >= 400:
                            raise C.error_for("GET", req.url, resp.status_code, resp.headers,
                                              resp.content)
                        chunk = state.on_response(resp.status_code, resp.headers, resp.content)
                    finally:
                        resp.close()
                    backoff.reset()
                    yield chunk
                    continue
                backoff.reset()
            except E.DurableStreamError as err:
                if self.stopped.is_set():
                    return
                if not err.retryable:
                    raise
                delay = backoff.next_delay(err)
                if delay is None:
                    raise
                stream._notify_retry(err, delay)
                if self.stopped.wait(delay):
                    return

    def sse(self, req: C.Request) -> Iterator[C.Chunk]:
        state = self.state
        if state.content_type is None:
            # SSE answers text/event-stream; how to frame the data (JSON arrays or
            # text) depends on the stream's own type, so learn it once (5.5).
            state.content_type = self.stream._known_content_type()
        resp = self.stream._exchange(req, stream=True)
        self.resp = resp
        try:
            if resp.status_code >= 400:
                resp.read()
                raise C.error_for("GET", req.url, resp.status_code, resp.headers, resp.content)
            state.on_sse_open(resp.headers)
            parser = SSEReader()
            try:
                for piece in resp.iter_bytes():
                    for event in parser.feed(piece):
                        chunk = state.on_sse_event(event)
                        if chunk is not None:
                            yield chunk
                        if state.done:
                            return
                for event in parser.close():
                    chunk = state.on_sse_event(event)
                    if chunk is not None:
                        yield chunk
            except httpx.TransportError as exc:
                raise E.ConnectionFailed(f"GET {req.url}: SSE connection lost: {exc}",
                                         url=req.url, method="GET") from exc
        finally:
            self.resp = None
            resp.close()
