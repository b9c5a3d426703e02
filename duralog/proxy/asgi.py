"""Small ASGI plumbing the proxy's handlers share."""

from __future__ import annotations

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
