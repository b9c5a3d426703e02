"""httpx transports that send every request through the durable proxy.

Give one to an SDK's HTTP client and its streaming calls become durable with
no other change: the request goes to the proxy once, and the response body
the SDK parses is read from the proxy stream, resumed from the last offset
after a dropped connection.

    from openai import AsyncOpenAI
    client = AsyncOpenAI(http_client=httpx.AsyncClient(
        transport=AsyncDurableTransport("http://127.0.0.1:4437/v1/proxy", secret="...")))

The SDK's ``Authorization`` goes upstream as ``Upstream-Authorization``; the
proxy's own secret is sent as the proxy's Authorization. An upstream error
(PROXY-PROTOCOL.md 4.1: 502 with ``Upstream-Status``) comes back as the
upstream's own status and body, so the SDK raises what it would have raised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from .fetch import AsyncDurableFetch, DurableFetch, FetchError

# Headers of the SDK's request that describe the request to the proxy, not upstream.
_OWN = {"host", "content-length", "authorization", "connection", "accept-encoding",
        "transfer-encoding"}


def _split(request: httpx.Request) -> tuple[dict[str, str], str | None]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _OWN}
    return headers, request.headers.get("authorization")


def _error_response(err: FetchError, request: httpx.Request) -> httpx.Response:
    if err.upstream_status is None:
        raise httpx.HTTPError(f"durable proxy refused the request: {err}") from err
    ctype = "application/json" if err.body[:1] in (b"{", b"[") else "text/plain"
    return httpx.Response(err.upstream_status, headers={"content-type": ctype},
                          content=err.body, request=request)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class AsyncDurableTransport(httpx.AsyncBaseTransport):
    def __init__(self, proxy_url: str, *, secret: str | None = None,
                 fetcher: AsyncDurableFetch | None = None) -> None:
        self.fetcher = fetcher or AsyncDurableFetch(proxy_url, secret=secret)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers, auth = _split(request)
        try:
            response = await self.fetcher.fetch(
                str(request.url), method=request.method, headers=headers,
                content=await request.aread(), upstream_authorization=auth)
        except FetchError as err:
            return _error_response(err, request)
        return httpx.Response(200, headers={"content-type": response.content_type or
                                            "application/octet-stream"},
                              stream=_AsyncBody(response.iter_bytes()), request=request)

    async def aclose(self) -> None:
        await self.fetcher.aclose()


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


class DurableTransport(httpx.BaseTransport):
    """The blocking twin of AsyncDurableTransport."""

    def __init__(self, proxy_url: str, *, secret: str | None = None,
                 fetcher: DurableFetch | None = None) -> None:
        self.fetcher = fetcher or DurableFetch(proxy_url, secret=secret)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers, auth = _split(request)
        try:
            response = self.fetcher.fetch(str(request.url), method=request.method,
                                          headers=headers, content=request.read(),
                                          upstream_authorization=auth)
        except FetchError as err:
            return _error_response(err, request)
        return httpx.Response(200, headers={"content-type": response.content_type or
                                            "application/octet-stream"},
                              stream=_SyncBody(response.iter_bytes()), request=request)

    def close(self) -> None:
        self.fetcher.close()
