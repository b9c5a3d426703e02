"""Durable fetch: a request through the proxy whose response body survives drops
and restarts (PROXY-PROTOCOL.md 4.1-4.3, client side).

``DurableFetch.fetch(url, ...)`` sends the request to the proxy (one upstream
request, ever, per key), then reads the proxy stream from the pre-signed URL.
The stream URL and the offset after the last chunk the caller finished with
are kept in a ``FetchStorage`` (memory, a JSON file or SQLite). After a
network drop the reader retries from that offset; after a process restart,
``fetch`` with the same ``key`` (or ``resume(key)``) continues from it instead
of calling the upstream again. (The TypeScript durable fetch re-reads from
the start; a resumed read here repeats nothing the caller already handled.)
``AsyncDurableFetch`` is the asyncio twin; the twins only do the I/O, over one
sans-IO core (``_Core`` and ``_ResponseBase._steps``, as duralog.client does).
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson

from ..protocol.offsets import START
from .storage import FetchStorage, MemoryStorage

__all__ = ["AsyncDurableFetch", "AsyncDurableResponse", "DurableFetch", "DurableResponse",
           "FetchError"]


class FetchError(Exception):
    """The proxy refused (``code`` from PROXY-PROTOCOL.md 11), or the upstream failed
    (``upstream_status`` and ``body`` on a 502)."""

    def __init__(self, status: int, code: str | None, message: str,
                 upstream_status: int | None = None, body: bytes = b"") -> None:
        super().__init__(f"{status} {code or ''} {message}".strip())
        self.status = status
        self.code = code
        self.upstream_status = upstream_status
        self.body = body


def _error(r: httpx.Response) -> FetchError:
    upstream = r.headers.get("upstream-status")
    if upstream is not None:
        return FetchError(r.status_code, "UPSTREAM_ERROR", "upstream answered an error",
                          int(upstream), r.content)
    code, message = None, r.text.strip()
    try:
        err = orjson.loads(r.content)["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return FetchError(r.status_code, code, message)


def _with(url: str, **params: str) -> httpx.URL:
    return httpx.URL(url).copy_merge_params(params)


def _expires(url: str) -> int | None:
    values = parse_qs(urlsplit(url).query).get("expires")
    return int(values[0]) if values and values[0].isdigit() else None


# What the read loop asks its driver for (see _ResponseBase._steps).
_GET, _SLEEP, _CHUNK = "get", "sleep", "chunk"


class _Core:
    """What the twins share: the create request, the record, and read bookkeeping."""

    def __init__(self, proxy_url: str, secret: str | None, storage: FetchStorage | None,
                 retries: int, backoff: float, live: str) -> None:
        self.proxy_url = proxy_url.rstrip("/")
        self.secret = secret
        self.storage = storage if storage is not None else MemoryStorage()
        self.retries = retries
        self.backoff = backoff
        self.live = live

    def create_request(self, url: str, method: str, headers: dict[str, str] | None,
                       upstream_authorization: str | None, content: bytes | str | None,
                       json: Any) -> dict[str, Any]:
        """The keyword arguments of the create POST (4.1)."""
        h = {"Upstream-URL": url, "Upstream-Method": method.upper(), **(headers or {})}
        if upstream_authorization:
            h["Upstream-Authorization"] = upstream_authorization
        if self.secret:
            h["Authorization"] = f"Bearer {self.secret}"
        if json is not None:
            content = orjson.dumps(json)
            h.setdefault("Content-Type", "application/json")
        return {"url": self.proxy_url, "headers": h, "content": content}

    def created(self, r: httpx.Response, key: str | None) -> tuple[str, dict[str, Any]]:
        """The key and the saved record of a create's answer (FetchError unless 201)."""
        if r.status_code != 201:
            raise _error(r)
        record = {"url": r.headers["location"], "offset": START,
                  "content_type": r.headers.get("upstream-content-type")}
        key = key or r.headers["location"]
        self.storage.save(key, record)
        return key, record

    def stored(self, key: str) -> dict[str, Any] | None:
        record = self.storage.load(key)
        if record is None:
            return None
        expires = _expires(record["url"])
        if expires is not None and expires < time.time():
            self.storage.delete(key)  # the capability is gone; so is the stream, soon
            return None
        return record

    def wait(self, attempt: int) -> float:
        return min(5.0, self.backoff * (2 ** attempt))


def _aborted(r: httpx.Response) -> None:
    if r.status_code != 204:
        raise _error(r)


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class _ResponseBase:
    def __init__(self, core: _Core, key: str, record: dict[str, Any]) -> None:
        self._core = core
        self.key = key
        self.stream_url: str = record["url"]
        self.content_type: str | None = record.get("content_type")
        self.offset: str = record.get("offset", START)
        #: How the upstream body ended, once read to the end: complete, aborted,
        #: timeout, error, or interrupted (the proxy restarted mid-body).
        self.outcome: str | None = record.get("outcome")
        self.resumed = record.get("offset", START) != START

    @property
    def complete(self) -> bool:
        return self.outcome == "complete"

    def _save(self) -> None:
        self._core.storage.save(self.key, {"url": self.stream_url, "offset": self.offset,
                                           "content_type": self.content_type,
                                           "outcome": self.outcome})

    def _params(self) -> httpx.URL:
        return _with(self.stream_url, offset=self.offset, live=self._core.live)

    def _abort_url(self) -> httpx.URL:
        return _with(self.stream_url, action="abort")  # 4.3

    def _steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The read loop, without I/O (the twins drive it): yields ``(_GET, url)`` and is
        sent the response or the transport error, ``(_SLEEP, seconds)`` before a retry,
        ``(_CHUNK, bytes)`` for the caller. A chunk's offset is saved once the driver
        asks for the step after it (at-least-once across a crash mid-chunk)."""
        attempt = 0
        while self.outcome is None:
            r = yield _GET, self._params()
            if isinstance(r, Exception) or r.status_code >= 500 or r.status_code == 429:
                if attempt >= self._core.retries:
                    raise r if isinstance(r, Exception) else _error(r)
                yield _SLEEP, self._core.wait(attempt)
                attempt += 1
                continue
            if r.status_code not in (200, 204):
                raise _error(r)
            attempt = 0
            next_offset = r.headers["stream-next-offset"]
            if r.status_code == 200 and r.content:
                yield _CHUNK, r.content
            self.offset = next_offset
            if r.headers.get("stream-closed") == "true":
                self.outcome = r.headers.get("proxy-outcome", "complete")
            self._save()


class DurableResponse(_ResponseBase):
    """The upstream body, read from the proxy stream with resume."""

    def __init__(self, fetcher: DurableFetch, key: str, record: dict[str, Any]) -> None:
        super().__init__(fetcher._core, key, record)
        self._client = fetcher.client

    def iter_bytes(self) -> Iterator[bytes]:
        """The body from the saved offset to its end. A chunk's offset is saved once
        the caller asks for the next one (at-least-once across a crash mid-chunk)."""
        steps = _Steps(self._steps())
        for kind, arg in steps:
            if kind == _GET:
                try:
                    steps.result = self._client.get(arg)
                except httpx.TransportError as exc:
                    steps.result = exc
            elif kind == _SLEEP:
                time.sleep(arg)
            else:
                yield arg

    __iter__ = iter_bytes

    def iter_text(self) -> Iterator[str]:
        decoder = _decoder()
        for chunk in self.iter_bytes():
            if text := decoder.decode(chunk):
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def abort(self) -> None:
        """4.3: stop the upstream; what was written stays readable."""
        _aborted(self._client.patch(self._abort_url()))


class _Steps:
    """Drives a ``_steps`` generator: iterate for its steps; set ``result`` to what a
    ``_GET`` step got (the response or the transport error) before the next one."""

    def __init__(self, steps: Generator[tuple[str, Any], Any, None]) -> None:
        self.steps = steps
        self.result: Any = None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            step = next(self.steps)
            while True:
                yield step
                result, self.result = self.result, None
                step = self.steps.send(result)
        except StopIteration:
            return


class DurableFetch:
    """Requests through a durable proxy, with bodies that resume (blocking twin)."""

    def __init__(self, proxy_url: str, *, secret: str | None = None,
                 storage: FetchStorage | None = None, client: httpx.Client | None = None,
                 retries: int = 8, backoff: float = 0.1, live: str = "long-poll") -> None:
        self._core = _Core(proxy_url, secret, storage, retries, backoff, live)
        self.client = client or httpx.Client(timeout=httpx.Timeout(90.0, connect=10.0))

    def fetch(self, url: str, *, method: str = "POST", headers: dict[str, str] | None = None,
              content: bytes | str | None = None, json: Any = None, key: str | None = None,
              upstream_authorization: str | None = None) -> DurableResponse:
        """Start (or, for a ``key`` seen before, resume) a proxied request."""
        record = self._core.stored(key) if key is not None else None
        if record is None:
            req = self._core.create_request(url, method, headers, upstream_authorization,
                                            content, json)
            key, record = self._core.created(self.client.post(**req), key)
        assert key is not None
        return DurableResponse(self, key, record)

    def resume(self, key: str) -> DurableResponse | None:
        record = self._core.stored(key)
        return DurableResponse(self, key, record) if record is not None else None

    def forget(self, key: str) -> None:
        self._core.storage.delete(key)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DurableFetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDurableResponse(_ResponseBase):
    def __init__(self, fetcher: AsyncDurableFetch, key: str, record: dict[str, Any]) -> None:
        super().__init__(fetcher._core, key, record)
        self._client = fetcher.client

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        steps = _Steps(self._steps())
        for kind, arg in steps:
            if kind == _GET:
                try:
                    steps.result = await self._client.get(arg)
                except httpx.TransportError as exc:
                    steps.result = exc
            elif kind == _SLEEP:
                await asyncio.sleep(arg)
            else:
                yield arg

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_bytes()

    async def iter_text(self) -> AsyncIterator[str]:
        decoder = _decoder()
        async for chunk in self.iter_bytes():
            if text := decoder.decode(chunk):
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail

    async def read(self) -> bytes:
        return b"".join([c async for c in self.iter_bytes()])

    async def abort(self) -> None:
        _aborted(await self._client.patch(self._abort_url()))


class AsyncDurableFetch:
    """The asyncio twin of DurableFetch."""

    def __init__(self, proxy_url: str, *, secret: str | None = None,
                 storage: FetchStorage | None = None, client: httpx.AsyncClient | None = None,
                 retries: int = 8, backoff: float = 0.1, live: str = "long-poll") -> None:
        self._core = _Core(proxy_url, secret, storage, retries, backoff, live)
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(90.0, connect=10.0))

    async def fetch(self, url: str, *, method: str = "POST",
                    headers: dict[str, str] | None = None, content: bytes | str | None = None,
                    json: Any = None, key: str | None = None,
                    upstream_authorization: str | None = None) -> AsyncDurableResponse:
        record = self._core.stored(key) if key is not None else None
        if record is None:
            req = self._core.create_request(url, method, headers, upstream_authorization,
                                            content, json)
            key, record = self._core.created(await self.client.post(**req), key)
        assert key is not None
        return AsyncDurableResponse(self, key, record)

    async def resume(self, key: str) -> AsyncDurableResponse | None:
        record = self._core.stored(key)
        return AsyncDurableResponse(self, key, record) if record is not None else None

    def forget(self, key: str) -> None:
        self._core.storage.delete(key)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncDurableFetch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
