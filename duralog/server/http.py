"""HTTP plumbing shared by the server's handlers.

What one request looks like to a handler (``Request``), how answers and
errors are sent with the headers every response carries, how bodies are read
within the size limit, and the watcher that notices a live reader leaving.
No stream semantics here: those live in streams.py and live.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from ..protocol.errors import ProtocolError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXPOSE = (b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
          b"Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, "
          b"Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, "
          b"Content-Type, Content-Encoding, Vary, Stream-Retention-Bytes, "
          b"Stream-Retention-Seconds, Stream-Earliest-Offset")
ALLOW_HEADERS = (b"Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, "
                 b"Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, "
                 b"Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset, "
                 b"Stream-Retention-Bytes, Stream-Retention-Seconds")
METHODS = b"GET, POST, PUT, DELETE, HEAD, OPTIONS"
#: Set in the ASGI scope by the security layer (server/auth.py) when the answer needed
#: a token: the stream handler then makes public caching private (PROTOCOL.md 12.2).
PRIVATE_SCOPE_KEY = "duralog.private"
#: Bodies from this size up are joined in a thread (about 1 ms of copying on the loop).
JOIN_IN_THREAD_BYTES = 4 << 20


class Request:
    """What the handlers need of one HTTP request."""

    __slots__ = ("_query", "headers", "method", "name", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, name: str) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.name = name
        headers: dict[str, str] = {}
        repeated: dict[str, list[str]] | None = None
        for key, value in scope["headers"]:
            k = key.decode("latin-1").lower()
            v = value.decode("latin-1")
            if k in headers:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(k, [headers[k]]).append(v)
            else:
                headers[k] = v
        if repeated:
            # Repeated headers are joined as RFC 9110 5.3 allows; the parsers then
            # refuse what no single value could be. Joined once at the end: joining
            # as they came was quadratic (issue 9: a 74 s stall for 15,000 headers).
            for k, values in repeated.items():
                headers[k] = ", ".join(values)
        self.headers = headers
        self._query: list[tuple[str, str]] | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def query(self) -> list[tuple[str, str]]:
        if self._query is None:
            self._query = parse_qsl(self.scope.get("query_string", b"").decode("latin-1"),
                                    keep_blank_values=True)
        return self._query

    def query_one(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        if len(values) > 1:
            raise ProtocolError(400, f"query parameter {name!r} given more than once")
        return values[0] if values else None


class Disconnected(Exception):
    """The client went away while its request body was being read."""


class Responses:
    """Sends answers with the headers every response of this server carries."""

    __slots__ = ("base_headers",)

    def __init__(self, cors_origin: str) -> None:
        self.base_headers: Headers = [
            (b"access-control-allow-origin", cors_origin.encode()),
            (b"access-control-expose-headers", EXPOSE),
            # 12.7: browser security headers on every response.
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-resource-policy", b"cross-origin"),
        ]

    async def respond(self, send: Send, status: int, headers: Headers,
                      body: bytes = b"") -> None:
        all_headers = self.base_headers + headers
        all_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body})

    async def error(self, send: Send, err: ProtocolError) -> None:
        headers: Headers = [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"cache-control", b"no-store")]
        headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
        await self.respond(send, err.status, headers, err.reason.encode() + b"\n")

    async def preflight(self, send: Send) -> None:
        await self.respond(send, 204, [
            (b"access-control-allow-methods", METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", b"86400"),
        ])


async def read_body(req: Request, limit: int) -> bytes:
    """The whole request body, refused with 413 past ``limit`` bytes."""
    declared = req.header("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ProtocolError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ProtocolError(413, f"body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await req.receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    if size >= JOIN_IN_THREAD_BYTES:
        # bytes.join releases the GIL for large results: joining a 64 MiB body on the
        # loop held it for 50 to 80 ms (issue 9: no request holds the loop > 50 ms).
        return await asyncio.to_thread(b"".join, chunks)
    return b"".join(chunks)


def relative_path(scope: Scope) -> bytes:
    """The raw request path below ``root_path``, without the query."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    raw = raw.split(b"?", 1)[0]
    root = scope.get("root_path", "").encode("utf-8")
    if root and raw.startswith(root):
        raw = raw[len(root):]
    return raw


def accepts_gzip(value: str | None) -> bool:
    """RFC 9110 12.5.3: an explicit gzip entry wins over ``*``; q=0 means not acceptable."""
    if not value:
        return False
    star: bool | None = None
    for item in value.lower().split(","):
        token, _, params = item.strip().partition(";")
        token = token.strip()
        if token not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, number = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
        if token == "gzip":
            return q > 0
        star = q > 0
    return bool(star)


def etag_matches(header: str, etag: bytes) -> bool:
    """RFC 9110 13.1.2: weak comparison, any of a list, or *."""
    wanted = etag.decode()
    gz = wanted[:-1] + '-gz"'
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag in (wanted, gz):
            return True
    return False


class DisconnectWatcher:
    """Waits for stream changes while noticing a client that went away.

    One task per live request reads ASGI messages until ``http.disconnect``;
    it then resolves whatever the request is waiting on, so a departed reader
    wakes at once instead of holding its slot until the next timeout.
    """

    __slots__ = ("gone", "task", "waiting")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.waiting: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    async def wait(self, fut: asyncio.Future[None], timeout: float) -> bool:
        """Wait for ``fut`` (a stream change) or the client leaving; False on timeout."""
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
