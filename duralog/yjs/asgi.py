"""Request and response plumbing for the Yjs sub-app: raw ASGI, JSON errors.

YJS-PROTOCOL.md 10: every error is ``{"error": {"code": ..., "message": ...}}``
with one of the spec's codes. Statuses the spec has no code for (a producer's
403 and 409, 413 for a body over the limit) get a code that names them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

EXPOSE = (b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
          b"Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, "
          b"Producer-Received-Seq, Location, Content-Type, Cache-Control")
ALLOW_HEADERS = (b"Authorization, Content-Type, Producer-Id, Producer-Epoch, Producer-Seq, "
                 b"Stream-TTL, Stream-Expires-At")
METHODS = "GET, HEAD, POST, PUT, DELETE"

#: 10: the spec's code for each status; the rest name what happened.
_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
          405: "INVALID_REQUEST", 409: "CONFLICT", 410: "OFFSET_EXPIRED",
          413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED", 500: "INTERNAL_ERROR",
          503: "UNAVAILABLE"}


class YjsError(Exception):
    """An answer other than success: status, spec error code, one-line message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "INVALID_REQUEST")
        self.message = message
        self.headers = headers or {}


def doc_not_found() -> YjsError:
    return YjsError(404, "Document does not exist", "DOCUMENT_NOT_FOUND")


class Disconnected(Exception):
    """The client went away while we read its body."""


class Request:
    __slots__ = ("headers", "method", "query", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            k = key.decode("latin-1").lower()
            v = value.decode("latin-1")
            self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
        self.query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        if len(values) > 1:
            raise YjsError(400, f"query parameter {name!r} given more than once")
        return values[0] if values else None

    def full_path(self) -> bytes:
        """The request path as the client sent it (prefixes included), still encoded."""
        scope = self.scope
        root = scope.get("root_path", "").encode()
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        raw = raw.split(b"?", 1)[0]
        if root and not raw.startswith(root):
            raw = root + raw
        return raw

    async def body(self, limit: int) -> bytes:
        declared = self.header("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise YjsError(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise YjsError(413, f"body is larger than the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise YjsError(413, f"body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def relative_path(scope: Scope) -> bytes:
    """The still-encoded path below this sub-app's mount point."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    raw = raw.split(b"?", 1)[0]
    root = scope.get("root_path", "").encode("utf-8")
    if root and raw.startswith(root):
        raw = raw[len(root):]
    return raw


class Responder:
    """Sends answers with the headers every Yjs response carries."""

    def __init__(self, cors_origin: str) -> None:
        self.base: Headers = [
            (b"access-control-allow-origin", cors_origin.encode()),
            (b"access-control-expose-headers", EXPOSE),
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-resource-policy", b"cross-origin"),
        ]

    async def respond(self, send: Send, status: int, headers: Headers,
                      body: bytes = b"", *, head: bool = False) -> None:
        all_headers = self.base + headers
        all_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def error(self, send: Send, err: YjsError, *, head: bool = False) -> None:
        headers: Headers = [(b"content-type", b"application/json"),
                            (b"cache-control", b"no-store")]
        headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
        body = orjson.dumps({"error": {"code": err.code, "message": err.message}})
        await self.respond(send, err.status, headers, body, head=head)

    async def preflight(self, send: Send) -> None:
        await self.respond(send, 204, [
            (b"access-control-allow-methods", METHODS.encode() + b", OPTIONS"),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", b"86400"),
        ])
