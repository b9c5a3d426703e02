"""The blocking client: ``DurableStream``, its ``Reader`` and ``IdempotentProducer``.

All protocol decisions come from ``_core``; this module only does I/O on an
``httpx.Client``, sleeps between retries, and runs producer batches on threads.
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import httpx

from ..protocol.offsets import START
from ..protocol.sse_reader import SSEReader
from . import _core as C
from . import errors as E

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

        Plain appends are not idempotent: after a connection cut that may have
        reached the server they are not retried. Use ``producer()`` for appends
        that are retried safely.
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
    """

    _POLL = 0.1  # seconds between checks for close() while waiting

    def __init__(self, stream: DurableStream, state: C.ReadState,
                 timeout: float | None = None) -> None:
        C.validate_timeout(timeout)
        self._stream = stream
        self._state = state
        self._timeout = timeout
        self._queue: queue.Queue[tuple[str, Any, dict[str, Any]]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._resp: httpx.Response | None = None  # the open SSE response, to abort on close
        self._view = self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        s = self._state
        return {"offset": s.offset, "cursor": s.cursor, "closed": s.closed,
                "up_to_date": s.up_to_date, "content_type": s.content_type,
                "status": s.status, "headers": s.headers}

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
        if self._finished or self._stop.is_set():
            self._finished = True
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="duralog-reader",
                                            daemon=True)
            self._thread.start()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            wait = self._POLL
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            try:
                kind, value, view = self._queue.get(timeout=wait)
            except queue.Empty:
                if self._stop.is_set():
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
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Wake the helper thread out of a blocking socket read (closing the
            # response from another thread would not).
            with contextlib.suppress(Exception):
                sock = resp.extensions["network_stream"].get_extra_info("socket")
                sock.shutdown(socket.SHUT_RDWR)

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

    # -- the helper thread -------------------------------------------------------------------
    def _put(self, kind: str, value: Any) -> bool:
        item = (kind, value, self._snapshot())
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._POLL)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for chunk in self._chunks():
                if not self._put("chunk", chunk):
                    return
            self._put("end", None)
        except BaseException as exc:  # handed to the caller's thread
            if not self._stop.is_set():
                self._put("error", exc)

    def _chunks(self) -> Iterator[C.Chunk | None]:
        """Chunks, and None after a response that carried no data."""
        state = self._state
        stream = self._stream
        backoff = C.Backoff(stream.retry)
        while not state.done and not self._stop.is_set():
            req = state.next_request()
            try:
                if req.stream:
                    for chunk in self._sse(req):
                        backoff.reset()
                        yield chunk
                    if self._stop.is_set():
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
                if self._stop.is_set():
                    return
                if not err.retryable:
                    raise
                delay = backoff.next_delay(err)
                if delay is None:
                    raise
                stream._notify_retry(err, delay)
                if self._stop.wait(delay):
                    return

    def _sse(self, req: C.Request) -> Iterator[C.Chunk]:
        state = self._state
        if state.content_type is None:
            # SSE answers text/event-stream; how to frame the data (JSON arrays or
            # text) depends on the stream's own type, so learn it once (5.5).
            state.content_type = self._stream._known_content_type()
        resp = self._stream._exchange(req, stream=True)
        self._resp = resp
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
            self._resp = None
            resp.close()


class IdempotentProducer:
    """Fire-and-forget appends, batched, pipelined and deduplicated (PROTOCOL.md 5.2.1).

    ``append`` queues a message and returns at once. Messages are sent in
    batches when ``max_batch_bytes`` is reached or ``linger`` seconds passed;
    up to ``max_in_flight`` batches travel at once, each with its own
    Producer-Seq. Failed batches are retried with the same (id, epoch, seq), so
    the server drops any copy it already has. With ``auto_claim`` a producer
    that lost its epoch (a restart) takes the server's epoch + 1. ``flush``
    waits until everything queued has landed and raises the first failure.

    Messages queued or in flight are bounded by ``max_queue_bytes`` and
    ``max_queue_items``: at the bound ``append`` blocks until batches land
    (``on_full="block"``) or raises ``ProducerQueueFull`` (``on_full="raise"``).
    A batch is retried within ``retry`` (by default for up to a minute); once
    that budget is spent the producer fails: ``append``, ``flush`` and
    ``close`` raise the error.
    """

    def __init__(self, stream: DurableStream, producer_id: str, *, epoch: int = 0,
                 auto_claim: bool = False, max_batch_bytes: int = 1 << 20,
                 linger: float = 0.005, max_in_flight: int = 5,
                 content_type: str | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 retry: C.RetryPolicy | None = None, max_queue_bytes: int = 64 << 20,
                 max_queue_items: int = 100_000, on_full: str = "block") -> None:
        options = C.ProducerOptions(producer_id, epoch, auto_claim, max_batch_bytes, linger,
                                    max_in_flight, max_queue_bytes, max_queue_items,
                                    on_full)  # type: ignore[arg-type]
        if retry is not None and not isinstance(retry, C.RetryPolicy):
            raise ValueError("retry must be a RetryPolicy")
        self._stream = stream
        self._retry = retry or C.PRODUCER_RETRY
        self._core = C.ProducerCore(options, content_type or stream._known_content_type())
        self._on_error = on_error
        self._cond = threading.Condition()
        self._in_flight = 0
        self._error: Exception | None = None
        self._forcing = 0
        self._stopping = False
        self._stopped = False
        self._aborted = threading.Event()  # set when stopping on an exception: no more retries
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="duralog-producer")
        self._dispatcher = threading.Thread(target=self._dispatch, name="duralog-producer",
                                            daemon=True)
        self._dispatcher.start()

    @property
    def epoch(self) -> int:
        return self._core.epoch

    @property
    def next_seq(self) -> int:
        return self._core.next_seq

    @property
    def last_offset(self) -> str | None:
        """The largest Stream-Next-Offset an accepted batch returned."""
        return self._core.last_offset

    @property
    def error(self) -> Exception | None:
        return self._error

    @property
    def sent_messages(self) -> int:
        """Messages that landed (duplicates the server dropped included once)."""
        return self._core.sent_messages

    @property
    def sent_bytes(self) -> int:
        """Bytes of the messages that landed."""
        return self._core.sent_bytes

    # -- queueing -----------------------------------------------------------------------
    def append(self, data: bytes | str) -> None:
        """Queue bytes (or text); one message of a JSON stream must be JSON text."""
        entry = C.encode_body(data)
        if not entry:
            raise ValueError("cannot append an empty message")
        self._add(entry)

    def append_json(self, value: Any) -> None:
        """Queue one JSON value as one message."""
        self._add(C.dumps_json(value))

    def _add(self, entry: bytes) -> None:
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stopping:
                    raise RuntimeError("the producer is closed")
                if self._core.has_room(len(entry)):
                    break
                if self._core.options.on_full == "raise":
                    raise E.ProducerQueueFull(
                        f"producer queue full ({self._core.queued_items} messages, "
                        f"{self._core.queued_bytes} bytes not yet landed)", url=self._stream.url)
                # Full: send what is queued now, and wait for batches to land.
                self._forcing += 1
                self._cond.notify_all()
                try:
                    self._cond.wait(0.5)
                finally:
                    self._forcing -= 1
            self._core.add(entry, time.monotonic())
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait until it landed; raise the first failure."""
        with self._cond:
            self._forcing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(
                    lambda: self._error is not None
                    or (not self._core.pending and self._in_flight == 0), timeout)
            finally:
                self._forcing -= 1
            if self._error is not None:
                raise self._error
            if not done:
                raise TimeoutError("producer flush timed out")

    def close(self) -> None:
        """Flush, then stop the producer's threads (the stream stays open)."""
        try:
            if not self._stopped:
                self.flush()
        finally:
            self._stop()

    def close_stream(self, final: bytes | str | None = None, *,
                     json: Any = C.MISSING_JSON) -> C.AppendResult:
        """Flush, then close the stream with producer headers, optionally appending
        a final message in the same step (5.2.1 closure); the producer stops."""
        if self._core.closed_result is not None:
            # Our close already landed: the same answer, nothing sent (5.2.1 closure).
            return self._core.closed_result
        try:
            self.flush()
            if json is not C.MISSING_JSON:
                entry: bytes | None = C.dumps_json(json)
            else:
                entry = None if final is None else C.encode_body(final)
            with self._cond:
                batch = self._core.close_batch(entry)
                self._in_flight += 1
            return self._deliver(batch)
        finally:
            self._stop()

    def __enter__(self) -> IdempotentProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop at once: messages not yet landed are dropped, retries end (Ctrl-C)."""
        with self._cond:
            if self._error is None:
                self._error = RuntimeError("the producer was aborted")
        self._aborted.set()
        self._stop()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._dispatcher.join()
        self._executor.shutdown(wait=True)
        self._stopped = True

    # -- threads ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        core = self._core
        with self._cond:
            while True:
                now = time.monotonic()
                can = core.can_dispatch(self._in_flight)
                if self._error is None and can and core.ready(
                        now, self._forcing > 0 or self._stopping):
                    batch = core.take_batch()
                    self._in_flight += 1
                    self._executor.submit(self._run_batch, batch)
                    continue
                if self._stopping and self._in_flight == 0 and (
                        not core.pending or self._error is not None):
                    return
                wait = core.linger_left(now) if can and self._error is None else None
                self._cond.wait(wait)

    def _run_batch(self, batch: C.Batch) -> None:
        try:
            self._deliver(batch)
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)

    def _deliver(self, batch: C.Batch) -> C.AppendResult:
        """Send one batch until it lands or fails for good; keeps in-flight counts."""
        core = self._core
        stream = self._stream
        backoff = C.Backoff(self._retry)
        try:
            while True:
                with self._cond:
                    req = core.request(stream.url, batch)
                    batch.transmissions += 1
                try:
                    resp = stream._exchange(req)
                except E.ConnectionFailed as err:
                    outcome = C.Outcome("retry", error=err)
                else:
                    with self._cond:
                        outcome = core.outcome(batch, resp.status_code, resp.headers,
                                               resp.content, stream.url)
                if outcome.kind == "ok":
                    assert outcome.result is not None
                    with self._cond:
                        core.landed(batch, outcome.result)
                        core.release(batch)
                        self._in_flight -= 1
                        self._cond.notify_all()
                    return outcome.result
                if outcome.kind == "claim":
                    continue
                if outcome.kind == "wait":
                    with self._cond:
                        epoch = batch.epoch
                        self._cond.wait_for(lambda e=epoch, w=outcome.wait_for:
                                            self._error is not None or core.landed_all(e, w))
                        if self._error is not None:
                            raise self._error
                    continue
                if outcome.kind == "retry" and not self._aborted.is_set():
                    assert outcome.error is not None
                    delay = backoff.next_delay(outcome.error)
                    if delay is not None:
                        stream._notify_retry(outcome.error, delay)
                        if not self._aborted.wait(delay):
                            continue
                assert outcome.error is not None
                raise outcome.error
        except Exception as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
                core.release(batch)
                self._in_flight -= 1
                self._cond.notify_all()
            raise
