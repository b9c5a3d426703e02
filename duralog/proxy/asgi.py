"""Small ASGI plumbing the proxy's handlers share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class Request:
    __slots__ = ("headers", "method", "path", "query", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope.get("path", "")
        self.headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            k = key.decode("latin-1").lower()
            v = value.decode("latin-1")
            self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
        self.query: dict[str, str] = {}
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                              keep_blank_values=True):
            self.query.setdefault(k, v)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Disconnected(Exception):
    pass


class DisconnectWatcher:
    """Waits on a stream change while noticing a client that left (so a departed
    live reader frees its slot at once, not at its next timeout)."""

    __slots__ = ("gone", "task", "waiting")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.waiting: asyncio.Future[None] | None = None
        self.task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    async def wait(self, fut: asyncio.Future[None], timeout: float) -> bool:
        if self.gone:
            return True
        self.waiting = fut
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        finally:
            self.waiting = None
        return True

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()
