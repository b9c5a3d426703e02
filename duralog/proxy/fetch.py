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
``AsyncDurableFetch`` is the asyncio twin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
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
                       upstream_authorization: str | None) -> dict[str, Any]:
        h = {"Upstream-URL": url, "Upstream-Method": method.upper(), **(headers or {})}
        if upstream_authorization:
            h["Upstream-Authorization"] = upstream_authorization
        if self.secret:
            h["Authorization"] = f"Bearer {self.secret}"
        return {"url": self.proxy_url, "headers": h}

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


class DurableResponse(_ResponseBase):
    """The upstream body, read from the proxy stream with resume."""

    def __init__(self, fetcher: DurableFetch, key: str, record: dict[str, Any]) -> None:
        super().__init__(fetcher._core, key, record)
        self._client = fetcher.client

    def iter_bytes(self) -> Iterator[bytes]:
        """The body from the saved offset to its end. A chunk's offset is saved once
        the caller asks for the next one (at-least-once across a crash mid-chunk)."""
        attempt = 0
        while self.outcome is None:
            try:
                r = self._client.get(self._params())
            except httpx.TransportError:
                if attempt >= self._core.retries:
                    raise
                time.sleep(self._core.wait(attempt))
                attempt += 1
                continue
            if r.status_code >= 500 or r.status_code == 429:
                if attempt >= self._core.retries:
                    raise _error(r)
                time.sleep(self._core.wait(attempt))
                attempt += 1
                continue
            if r.status_code not in (200, 204):
                raise _error(r)
            attempt = 0
            next_offset = r.headers["stream-next-offset"]
            if r.status_code == 200 and r.content:
                yield r.content
            self.offset = next_offset
            if r.headers.get("stream-closed") == "true":
                self.outcome = r.headers.get("proxy-outcome", "complete")
            self._save()

    __iter__ = iter_bytes

    def iter_text(self) -> Iterator[str]:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in self.iter_bytes():
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def abort(self) -> None:
        """4.3: stop the upstream; what was written stays readable."""
        r = self._client.patch(_with(self.stream_url, action="abort"))
        if r.status_code != 204:
            raise _error(r)


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
        if key is not None:
            record = self._core.stored(key)
            if record is not None:
                return DurableResponse(self, key, record)
        req = self._core.create_request(url, method, headers, upstream_authorization)
        if json is not None:
            content = orjson.dumps(json)
            req["headers"].setdefault("Content-Type", "application/json")
        r = self.client.post(req["url"], headers=req["headers"], content=content)
        if r.status_code != 201:
            raise _error(r)
        record = {"url": r.headers["location"], "offset": START,
                  "content_type": r.headers.get("upstream-content-type")}
        key = key or r.headers["location"]
        self._core.storage.save(key, record)
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
        attempt = 0
        while self.outcome is None:
            try:
                r = await self._client.get(self._params())
            except httpx.TransportError:
                if attempt >= self._core.retries:
                    raise
                await asyncio.sleep(self._core.wait(attempt))
                attempt += 1
                continue
            if r.status_code >= 500 or r.status_code == 429:
                if attempt >= self._core.retries:
                    raise _error(r)
                await asyncio.sleep(self._core.wait(attempt))
                attempt += 1
                continue
            if r.status_code not in (200, 204):
                raise _error(r)
            attempt = 0
            next_offset = r.headers["stream-next-offset"]
            if r.status_code == 200 and r.content:
                yield r.content
            self.offset = next_offset
            if r.headers.get("stream-closed") == "true":
                self.outcome = r.headers.get("proxy-outcome", "complete")
            self._save()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_bytes()

    async def iter_text(self) -> AsyncIterator[str]:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in self.iter_bytes():
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    async def read(self) -> bytes:
        return b"".join([c async for c in self.iter_bytes()])

    async def abort(self) -> None:
        r = await self._client.patch(_with(self.stream_url, action="abort"))
        if r.status_code != 204:
            raise _error(r)


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
        if key is not None:
            record = self._core.stored(key)
            if record is not None:
                return AsyncDurableResponse(self, key, record)
        req = self._core.create_request(url, method, headers, upstream_authorization)
        if json is not None:
            content = orjson.dumps(json)
            req["headers"].setdefault("Content-Type", "application/json")
        r = await self.client.post(req["url"], headers=req["headers"], content=content)
        if r.status_code != 201:
            raise _error(r)
        record = {"url": r.headers["location"], "offset": START,
                  "content_type": r.headers.get("upstream-content-type")}
        key = key or r.headers["location"]
        self._core.storage.save(key, record)
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
