"""The asyncio client: ``AsyncDurableStream``, ``AsyncReader``, ``AsyncIdempotentProducer``.

The twin of ``_sync``: same core, same names, ``await`` where I/O happens.
Header and param functions may be plain or ``async``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from ..protocol.offsets import START
from ..protocol.sse_reader import SSEReader
from . import _core as C
from . import errors as E

AsyncHeaderValue = str | Callable[[], str | None] | Callable[[], Awaitable[str | None]] | None
AsyncValueSource = (Mapping[str, AsyncHeaderValue]
                    | Callable[[], Mapping[str, str | None]]
                    | Callable[[], Awaitable[Mapping[str, str | None]]] | None)

_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


async def _value(value: Any) -> Any:
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


async def _resolve(source: AsyncValueSource) -> dict[str, str | None]:
    """Evaluate headers/params given as values, functions or coroutine functions."""
    if source is None:
        return {}
    mapping = await _value(source) if callable(source) else source
    return {k: await _value(v) for k, v in mapping.items()}


class AsyncDurableStream:
    """The asyncio twin of ``DurableStream``; see there for the semantics."""

    def __init__(self, url: str, *, headers: AsyncValueSource = None,
                 params: AsyncValueSource = None, content_type: str | None = None,
                 retry: C.RetryPolicy | None = None, timeout: float | None = 90.0,
                 client: httpx.AsyncClient | None = None,
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
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose_client(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncDurableStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose_client()

    def __repr__(self) -> str:
        return f"AsyncDurableStream({self.url!r})"

    def _sibling(self, url: str) -> AsyncDurableStream:
        return AsyncDurableStream(url, headers=self.headers, params=self.params,
                                  retry=self.retry, timeout=self.timeout, client=self._client,
                                  on_retry=self.on_retry)

    def _notify_retry(self, error: Exception, delay: float) -> None:
        if self.on_retry is not None:
            self.on_retry(error, delay)

    # -- HTTP ------------------------------------------------------------------------
    async def _build(self, req: C.Request) -> httpx.Request:
        headers = C.merge_values(await _resolve(self.headers), req.headers)
        params = C.sorted_params(C.merge_values(await _resolve(self.params)), req.params)
        return self._client.build_request(req.method, req.url, headers=headers, params=params,
                                          content=req.content)

    async def _exchange(self, req: C.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return await self._client.send(await self._build(req), stream=stream)
        except httpx.TransportError as exc:
            raise E.ConnectionFailed(f"{req.method} {req.url}: {type(exc).__name__}: {exc}",
                                     url=req.url, method=req.method,
                                     connect_failure=isinstance(exc, _CONNECT_FAILURES)) from exc

    async def _send(self, req: C.Request, policy: C.RetryPolicy | None = None) -> httpx.Response:
        backoff = C.Backoff(policy or self.retry)
        while True:
            try:
                resp = await self._exchange(req)
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
            await asyncio.sleep(delay)

    async def _known_content_type(self) -> str:
        if self.content_type is None:
            self.content_type = (await self.head()).content_type
        return self.content_type

    # -- operations ------------------------------------------------------------------
    async def create(self, *, content_type: str | None = None, ttl: int | None = None,
                     expires_at: str | None = None, closed: bool = False,
                     body: bytes | str | None = None, json: Any = C.MISSING_JSON,
                     forked_from: str | AsyncDurableStream | None = None,
                     fork_offset: str | None = None,
                     fork_sub_offset: int | None = None) -> C.StreamInfo:
        content = C.initial_body(body, json)
        if json is not C.MISSING_JSON and content_type is None:
            content_type = C.JSON_TYPE
        source = None
        if forked_from is not None:
            source = C.fork_source(forked_from.url if isinstance(forked_from, AsyncDurableStream)
                                   else forked_from, self.url)
        req = C.create_request(self.url, content_type=content_type, ttl=ttl,
                               expires_at=expires_at, closed=closed, body=content,
                               forked_from=source, fork_offset=fork_offset,
                               fork_sub_offset=fork_sub_offset)
        resp = await self._send(req)
        info = C.info_from(self.url, resp.headers, resp.status_code, "PUT")
        self.content_type = info.content_type
        return info

    async def fork(self, target_url: str, *, offset: str | None = None,
                   sub_offset: int | None = None, content_type: str | None = None,
                   ttl: int | None = None, expires_at: str | None = None) -> AsyncDurableStream:
        fork = self._sibling(target_url)
        await fork.create(content_type=content_type, ttl=ttl, expires_at=expires_at,
                          forked_from=self.url, fork_offset=offset, fork_sub_offset=sub_offset)
        return fork

    async def head(self) -> C.StreamInfo:
        resp = await self._send(C.Request("HEAD", self.url))
        info = C.info_from(self.url, resp.headers)
        self.content_type = info.content_type
        return info

    async def exists(self) -> bool:
        try:
            await self.head()
        except E.StreamNotFound:
            return False
        return True

    async def append(self, data: bytes | str, *, close: bool = False, seq: str | None = None,
                     content_type: str | None = None) -> C.AppendResult:
        body = C.encode_body(data)
        req = C.append_request(self.url, body, close=close, seq=seq,
                               content_type=content_type or await self._known_content_type())
        resp = await self._send(req)
        return C.append_result(resp.headers, resp.status_code)

    async def append_json(self, *values: Any, close: bool = False,
                          seq: str | None = None) -> C.AppendResult:
        if not values and not close:
            raise ValueError("append_json needs at least one value (9.1.3: no empty appends)")
        body = C.json_array(values) if values else b""
        req = C.append_request(self.url, body, close=close, seq=seq, content_type=C.JSON_TYPE)
        resp = await self._send(req)
        return C.append_result(resp.headers, resp.status_code)

    async def close(self, data: bytes | str | None = None) -> C.AppendResult:
        if data is None:
            req = C.append_request(self.url, b"", close=True, content_type=C.OCTET_STREAM)
            resp = await self._send(req)
            return C.append_result(resp.headers, resp.status_code)
        return await self.append(data, close=True)

    async def delete(self) -> None:
        await self._send(C.Request("DELETE", self.url, retry="unsafe"))

    def read(self, offset: str = START, *, live: C.LiveMode = None,
             cursor: str | None = None) -> AsyncReader:
        return AsyncReader(self, C.ReadState(self.url, offset, live, cursor, self.content_type))

    async def read_all(self, offset: str = START) -> bytes:
        return b"".join([piece async for piece in self.read(offset).bytes()])

    async def read_json(self, offset: str = START) -> list[Any]:
        return [item async for item in self.read(offset).json_items()]

    async def producer(self, producer_id: str, **options: Any) -> AsyncIdempotentProducer:
        content_type = options.pop("content_type", None) or await self._known_content_type()
        return AsyncIdempotentProducer(self, producer_id, content_type=content_type, **options)


class AsyncReader:
    """The asyncio twin of ``Reader``: ``async for chunk in reader``."""

    def __init__(self, stream: AsyncDurableStream, state: C.ReadState) -> None:
        self._stream = stream
        self._state = state
        self._gen: AsyncIterator[C.Chunk] | None = None

    offset = property(lambda self: self._state.offset)
    cursor = property(lambda self: self._state.cursor)
    closed = property(lambda self: self._state.closed)
    up_to_date = property(lambda self: self._state.up_to_date)
    content_type = property(lambda self: self._state.content_type)
    status = property(lambda self: self._state.status)  # of the last response (204: timed out)
    headers = property(lambda self: self._state.headers)

    def __aiter__(self) -> AsyncIterator[C.Chunk]:
        if self._gen is None:
            self._gen = self._chunks()
        return self._gen

    async def __anext__(self) -> C.Chunk:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def bytes(self) -> AsyncIterator[bytes]:
        async for chunk in self:
            yield chunk.data

    async def text(self, encoding: str = "utf-8") -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder(encoding)()
        async for chunk in self:
            piece = decoder.decode(chunk.data)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    async def json_batches(self) -> AsyncIterator[C.JsonBatch]:
        async for chunk in self:
            yield C.JsonBatch(chunk.json(), chunk.offset, chunk.up_to_date, chunk.closed)

    async def json_items(self) -> AsyncIterator[Any]:
        async for chunk in self:
            for item in chunk.json():
                yield item

    async def _chunks(self) -> AsyncIterator[C.Chunk]:
        state = self._state
        stream = self._stream
        backoff = C.Backoff(stream.retry)
        while not state.done:
            req = state.next_request()
            try:
                if req.stream:
                    async for chunk in self._sse(req):
                        backoff.reset()
                        yield chunk
                    if not state.on_sse_end() and not state.done:
                        raise E.ConnectionFailed(f"GET {req.url}: SSE ended without events",
                                                 url=req.url, method="GET")
                else:
                    resp = await stream._exchange(req)
                    try:
                        if resp.status_code >= 400:
                            raise C.error_for("GET", req.url, resp.status_code, resp.headers,
                                              resp.content)
                        chunk = state.on_response(resp.status_code, resp.headers, resp.content)
                    finally:
                        await resp.aclose()
                    backoff.reset()
                    if chunk is not None:
                        yield chunk
                    continue
                backoff.reset()
            except E.DurableStreamError as err:
                if not err.retryable:
                    raise
                delay = backoff.next_delay(err)
                if delay is None:
                    raise
                stream._notify_retry(err, delay)
                await asyncio.sleep(delay)

    async def _sse(self, req: C.Request) -> AsyncIterator[C.Chunk]:
        state = self._state
        if state.content_type is None:
            # SSE answers text/event-stream; how to frame the data (JSON arrays or
            # text) depends on the stream's own type, so learn it once (5.5).
            state.content_type = await self._stream._known_content_type()
        resp = await self._stream._exchange(req, stream=True)
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise C.error_for("GET", req.url, resp.status_code, resp.headers, resp.content)
            state.on_sse_open(resp.headers)
            parser = SSEReader()
            try:
                async for piece in resp.aiter_bytes():
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
            await resp.aclose()


class AsyncIdempotentProducer:
    """The asyncio twin of ``IdempotentProducer``.

    ``append`` is a plain method (queue and return); ``flush``, ``close`` and
    ``close_stream`` are coroutines. Create it inside a running event loop,
    usually with ``await stream.producer(...)``. A plain method cannot wait,
    so at the queue bound ``append`` raises ``ProducerQueueFull``; ``await
    producer.room()`` first waits until there is room (the blocking behaviour).
    """

    def __init__(self, stream: AsyncDurableStream, producer_id: str, *, content_type: str,
                 epoch: int = 0, auto_claim: bool = False, max_batch_bytes: int = 1 << 20,
                 linger: float = 0.005, max_in_flight: int = 5,
                 on_error: Callable[[Exception], None] | None = None,
                 retry: C.RetryPolicy | None = None, max_queue_bytes: int = 64 << 20,
                 max_queue_items: int = 100_000) -> None:
        options = C.ProducerOptions(producer_id, epoch, auto_claim, max_batch_bytes, linger,
                                    max_in_flight, max_queue_bytes, max_queue_items, "raise")
        if retry is not None and not isinstance(retry, C.RetryPolicy):
            raise ValueError("retry must be a RetryPolicy")
        self._stream = stream
        self._retry = retry or C.PRODUCER_RETRY
        self._core = C.ProducerCore(options, content_type)
        self._on_error = on_error
        self._changed = asyncio.Event()  # set on every state change; waiters re-check
        self._in_flight = 0
        self._error: Exception | None = None
        self._forcing = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    epoch = property(lambda self: self._core.epoch)
    next_seq = property(lambda self: self._core.next_seq)
    last_offset = property(lambda self: self._core.last_offset)
    error = property(lambda self: self._error)
    sent_messages = property(lambda self: self._core.sent_messages)
    sent_bytes = property(lambda self: self._core.sent_bytes)

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_until(self, predicate: Callable[[], bool],
                          timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not predicate():
            self._changed.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return predicate()
        return True

    def append(self, data: bytes | str) -> None:
        entry = C.encode_body(data)
        if not entry:
            raise ValueError("cannot append an empty message")
        self._add(entry)

    def append_json(self, value: Any) -> None:
        self._add(C.dumps_json(value))

    def _add(self, entry: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._stopping:
            raise RuntimeError("the producer is closed")
        if not self._core.has_room(len(entry)):
            raise E.ProducerQueueFull(
                f"producer queue full ({self._core.queued_items} messages, "
                f"{self._core.queued_bytes} bytes not yet landed)", url=self._stream.url)
        self._core.add(entry, time.monotonic())
        self._notify()

    async def room(self, size: int = 1) -> None:
        """Wait until a message of ``size`` bytes fits the queue bound; raise the
        producer's error if it failed meanwhile."""
        self._forcing += 1
        self._notify()
        try:
            await self._wait_until(lambda: self._error is not None
                                   or self._core.has_room(size))
        finally:
            self._forcing -= 1
        if self._error is not None:
            raise self._error

    async def flush(self, timeout: float | None = None) -> None:
        self._forcing += 1
        self._notify()
        try:
            done = await self._wait_until(
                lambda: self._error is not None
                or (not self._core.pending and self._in_flight == 0), timeout)
        finally:
            self._forcing -= 1
        if self._error is not None:
            raise self._error
        if not done:
            raise TimeoutError("producer flush timed out")

    async def close(self) -> None:
        try:
            if not self._dispatcher.done():
                await self.flush()
        finally:
            await self._stop()

    async def close_stream(self, final: bytes | str | None = None, *,
                           json: Any = C.MISSING_JSON) -> C.AppendResult:
        if self._core.closed_result is not None:
            # Our close already landed: the same answer, nothing sent (5.2.1 closure).
            return self._core.closed_result
        try:
            await self.flush()
            if json is not C.MISSING_JSON:
                entry: bytes | None = C.dumps_json(json)
            else:
                entry = None if final is None else C.encode_body(final)
            batch = self._core.close_batch(entry)
            self._in_flight += 1
            return await self._deliver(batch)
        finally:
            await self._stop()

    async def __aenter__(self) -> AsyncIdempotentProducer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        self._notify()
        await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dispatch(self) -> None:
        core = self._core
        while True:
            now = time.monotonic()
            can = core.can_dispatch(self._in_flight)
            if self._error is None and can and core.ready(now, self._forcing > 0
                                                          or self._stopping):
                batch = core.take_batch()
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._run_batch(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            if self._stopping and self._in_flight == 0 and (
                    not core.pending or self._error is not None):
                return
            wait = core.linger_left(now) if can and self._error is None else None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _run_batch(self, batch: C.Batch) -> None:
        try:
            await self._deliver(batch)
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)

    async def _deliver(self, batch: C.Batch) -> C.AppendResult:
        core = self._core
        stream = self._stream
        backoff = C.Backoff(self._retry)
        try:
            while True:
                req = core.request(stream.url, batch)
                batch.transmissions += 1
                try:
                    resp = await stream._exchange(req)
                except E.ConnectionFailed as err:
                    outcome = C.Outcome("retry", error=err)
                else:
                    outcome = core.outcome(batch, resp.status_code, resp.headers, resp.content,
                                           stream.url)
                if outcome.kind == "ok":
                    assert outcome.result is not None
                    core.landed(batch, outcome.result)
                    core.release(batch)
                    self._in_flight -= 1
                    self._notify()
                    return outcome.result
                if outcome.kind == "claim":
                    continue
                if outcome.kind == "wait":
                    epoch, wanted = batch.epoch, outcome.wait_for
                    await self._wait_until(lambda e=epoch, w=wanted: self._error is not None
                                           or core.landed_all(e, w))
                    if self._error is not None:
                        raise self._error
                    continue
                if outcome.kind == "retry":
                    assert outcome.error is not None
                    delay = backoff.next_delay(outcome.error)
                    if delay is not None:
                        stream._notify_retry(outcome.error, delay)
                        await asyncio.sleep(delay)
                        continue
                assert outcome.error is not None
                raise outcome.error
        except Exception as exc:
            if self._error is None:
                self._error = exc
            core.release(batch)
            self._in_flight -= 1
            self._notify()
            raise
