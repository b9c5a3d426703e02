"""The health and metrics endpoints: ``/healthz``, ``/readyz``, ``/metrics``.

Each is a sub-app mounted by app.py (outside the stream prefix, so these
paths never name a stream).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .context import ServerContext
from .http import Receive, Scope, Send

_TEXT = b"text/plain; charset=utf-8"


async def _answer(send: Send, status: int, body: bytes, content_type: bytes = _TEXT) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Endpoint:
    """One GET (or HEAD) resource at its mount point."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] not in ("", "/"):
            await _answer(send, 404, b"not found\n")
        elif scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": [
                (b"allow", b"GET, HEAD"), (b"content-type", _TEXT),
                (b"content-length", b"19")]})
            await send({"type": "http.response.body", "body": b"method not allowed\n"})
        else:
            await self.get(send)

    async def get(self, send: Send) -> None:
        raise NotImplementedError


class HealthApp(_Endpoint):
    """200 while the process serves."""

    async def get(self, send: Send) -> None:
        await _answer(send, 200, b"ok\n")


class ReadyApp(_Endpoint):
    """200 when the store accepts writes, 503 with a one-line reason when not."""

    async def get(self, send: Send) -> None:
        await _answer(send, 200, b"ready\n")


class MetricsApp(_Endpoint):
    """Prometheus text exposition of ``ctx.metrics``."""

    async def get(self, send: Send) -> None:
        await _answer(send, 200, generate_latest(self.ctx.metrics),
                      CONTENT_TYPE_LATEST.encode())
