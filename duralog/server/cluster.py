"""One leader per cluster for a sub-app whose state lives in one process (subscriptions).

With several server nodes over one database (the postgres backend), most of
the server is stateless between requests. The subscription manager is not:
it holds every subscription, lease and pending wake in memory (journaled to a
stream) and delivers webhooks. ``LeaderOnly`` runs such a sub-app on exactly
one node, the one holding the store's role lock (store/postgres/roles.py),
and every other node forwards the sub-app's requests to that node's URL
(``--advertise-url``). Appends on any node reach the leader's notifier through
the store's LISTEN connection, so the leader sees every change in the cluster.

When the leader goes away (killed, or it lost the database) its lock is
released and another node takes the role within about a second, replaying
the sub-app's state from the store. On a backend without roles (memory,
sqlite) the sub-app simply runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry

from ..protocol.errors import ProtocolError
from .config import Config
from .context import ServerContext
from .http import Disconnected, Receive, Request, Scope, Send, read_body

log = logging.getLogger("duralog.cluster")

#: Marks a request one node forwarded to another, so it is never forwarded twice.
FORWARDED = b"x-duralog-forwarded"
#: Seconds between attempts to take a free role, and how long a leader URL is cached.
CAMPAIGN_INTERVAL = 1.0
LEADER_CACHE = 1.0
_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
        b"te", b"trailer", b"upgrade", b"proxy-connection"}


def advertise_url(config: Config) -> str:
    """How other nodes reach this one: --advertise-url, or http://host:port."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    host = config.host if config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


class LeaderOnly:
    """``XApp(ctx)`` wrapper: the inner sub-app runs on the role's leader only."""

    def __init__(self, ctx: ServerContext, factory: Callable[[ServerContext], Any],
                 role: str) -> None:
        self.ctx = ctx
        self.factory = factory
        self.inner = factory(ctx)
        self.role = ctx.store.role(role, advertise_url(ctx.config))  # type: ignore[attr-defined]
        self.max_body = ctx.config.max_body_size
        self.running = False
        self._built_once = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leader: tuple[float, str | None] = (0.0, None)
        self._client: httpx.AsyncClient | None = None

    async def startup(self) -> None:
        self.role.on_lost = self._changed.set
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        await self._campaign_once()
        self._task = asyncio.create_task(self._campaign())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.running:
            self.running = False
            await self.inner.shutdown()
        await self.role.release()
        if self._client is not None:
            await self._client.aclose()

    async def _campaign(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), CAMPAIGN_INTERVAL)
            self._changed.clear()
            await self._campaign_once()

    async def _campaign_once(self) -> None:
        try:
            leading = await self.ctx.store.try_lead(self.role)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("cannot reach the database to lead %s: %s", self.role.name, exc)
            leading = False
        if leading and not self.running:
            if self._built_once:
                # A fresh instance replays its state from the store (metrics of the
                # first instance stay registered; this one's go to a private registry).
                self.inner = self.factory(dataclasses.replace(
                    self.ctx, metrics=CollectorRegistry(auto_describe=True)))
            self._built_once = True
            await self.inner.startup()
            self.running = True
            log.info("this node leads %s (%s)", self.role.name, self.role.url)
        elif not leading and self.running:
            # Another node may lead now: stop at once, never two leaders for long.
            self.running = False
            await self.inner.shutdown()
            log.warning("this node no longer leads %s", self.role.name)

    async def _leader_url(self) -> str | None:
        at, url = self._leader
        if url is None or time.monotonic() - at > LEADER_CACHE:
            url = await self.ctx.store.leader_url(self.role)  # type: ignore[attr-defined]
            self._leader = (time.monotonic(), url)
        return url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.running:
            # Every commit acknowledged before this request (on any node) reaches the
            # sub-app's observers first: a claim right after an append sees it.
            await self.ctx.store.sync()  # type: ignore[attr-defined]
            await self.inner(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", [])]
        url = None if any(k == FORWARDED for k, _ in headers) else await self._leader_url()
        if url is None or url == self.role.url:
            await _unavailable(send, f"no node leads {self.role.name} right now; retry")
            return
        try:
            # The leader applies the sub-app's own limit again; this one keeps a
            # forwarding node from buffering more than any such request may carry.
            body = await read_body(Request(scope, receive, ""), self.max_body)
        except Disconnected:
            return
        except ProtocolError as err:
            await _refuse(send, err.status, err.reason)
            return
        path = scope.get("raw_path") or (scope.get("root_path", "") + scope["path"]).encode()
        query = scope.get("query_string", b"")
        target = url + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        out = [(k, v) for k, v in headers if k.lower() not in _HOP]
        host = next((v for k, v in headers if k == b"host"), None)
        if host is not None:
            out.append((b"host", host))  # absolute URLs the leader writes name this origin
        out.append((FORWARDED, b"1"))
        assert self._client is not None
        try:
            async with self._client.stream(scope["method"], target, headers=out,
                                           content=body) as resp:
                data = b"".join([chunk async for chunk in resp.aiter_raw()])
        except httpx.HTTPError as exc:
            self._leader = (0.0, None)
            await _unavailable(send, f"the {self.role.name} leader ({url}) did not answer: "
                                     f"{type(exc).__name__}")
            return
        resp_headers = [(k.lower(), v) for k, v in resp.headers.raw
                        if k.lower() not in _HOP]
        resp_headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": resp_headers})
        await send({"type": "http.response.body", "body": data})


async def _unavailable(send: Send, message: str) -> None:
    await _refuse(send, 503, message, [(b"retry-after", b"1")])


async def _refuse(send: Send, status: int, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    code = "UNAVAILABLE" if status == 503 else "INVALID_REQUEST"
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
