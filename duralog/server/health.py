"""The health and metrics endpoints: ``/healthz``, ``/readyz``, ``/metrics``.

Each is a sub-app mounted by app.py (outside the stream prefix, so these
paths never name a stream).
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .context import ServerContext
from .http import Receive, Scope, Send

_TEXT = b"text/plain; charset=utf-8"
#: Free bytes below which the data directory counts as full (not ready).
MIN_FREE = 1 << 20


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
    """200 when the store accepts writes, 503 with a one-line reason when not.

    For a store with files (sqlite): the database file must still be the one the
    store opened, and its directory's file system must have ``MIN_FREE`` bytes
    left (an append on a full disk fails with 507). A store with a
    ``health_problem()`` (postgres: its database connection) is asked too. Not
    ready either while the
    server shuts down, so a load balancer stops sending it requests.
    """

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self._inode: tuple[int, int] | None = None

    async def startup(self) -> None:
        path = getattr(self.ctx.store, "path", None)
        if path is not None:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                self._inode = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        if self.ctx.closing.is_set():
            return "shutting down"
        store_problem = getattr(self.ctx.store, "health_problem", None)
        if store_problem is not None and (found := store_problem()) is not None:
            return str(found)  # postgres: the database is unreachable
        data_dir = getattr(self.ctx.store, "data_dir", None)
        path = getattr(self.ctx.store, "path", None)
        if path is not None:
            try:
                st = os.stat(path)
            except OSError as exc:
                return f"database {path} is gone ({exc.strerror})"
            if self._inode is not None and (st.st_dev, st.st_ino) != self._inode:
                return f"database {path} was replaced since the server opened it"
        if data_dir is not None:
            try:
                fs = os.statvfs(data_dir)
            except OSError as exc:
                return f"data directory {data_dir} is unreachable ({exc.strerror})"
            free = fs.f_bavail * fs.f_frsize
            if free < MIN_FREE:
                return f"disk full: {free} bytes free under {data_dir}"
        return None

    async def get(self, send: Send) -> None:
        problem = self.problem()
        if problem is None:
            await _answer(send, 200, b"ready\n")
        else:
            await _answer(send, 503, f"not ready: {problem}\n".encode())


class MetricsApp(_Endpoint):
    """Prometheus text exposition of ``ctx.metrics`` (404 with ``--no-metrics``)."""

    async def get(self, send: Send) -> None:
        if not self.ctx.config.metrics:
            await _answer(send, 404, b"metrics are off (--no-metrics)\n")
            return
        await _answer(send, 200, generate_latest(self.ctx.metrics),
                      CONTENT_TYPE_LATEST.encode())
