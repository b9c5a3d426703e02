"""Request and response plumbing for the Yjs sub-app: raw ASGI, JSON errors.

YJS-PROTOCOL.md 10: every error is ``{"error": {"code": ..., "message": ...}}``
with one of the spec's codes. Statuses the spec has no code for (a producer's
403 and 409, 413 for a body over the limit) get a code that names them.
"""

from __future__ import annotations

import orjson

from ..protocol.errors import ProtocolError
from ..server import http
from ..server.http import Disconnected, Headers, Message, Receive, Scope, Send, relative_path

__all__ = ["Disconnected", "Headers", "Message", "Receive", "Request", "Scope", "Send",
           "YjsError", "doc_not_found", "relative_path"]

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


class Request(http.Request):
    """The server's request view, with the Yjs error envelope for its refusals."""

    __slots__ = ()

    def __init__(self, scope: Scope, receive: Receive) -> None:
        super().__init__(scope, receive, "")

    def param(self, name: str) -> str | None:
        try:
            return self.query_one(name)
        except ProtocolError as err:
            raise YjsError(err.status, err.reason) from None

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
        try:
            return await http.read_body(self, limit)
        except ProtocolError as err:
            raise YjsError(err.status, err.reason) from None


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
