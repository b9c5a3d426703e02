"""The proxy sub-app: PROXY-PROTOCOL.md over the Store interface.

Mounted by the server's composition at ``/v1/proxy`` (it sees paths relative
to that prefix). Proxy streams are ordinary byte streams under the reserved
``__ds/proxy/`` names, which the stream API refuses to serve, so they are
reached only through this app and its pre-signed URLs. A small JSON stream,
``__ds/proxy/index``, keeps what a restart must know: each stream's upstream
content type and how its body ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from ..protocol import jsonmode
from ..protocol.errors import ProtocolError
from ..protocol.headers import is_json, is_text_like, is_valid_content_type
from ..protocol.state import AppendRequest, CreateRequest, StreamState
from ..store import Store
from . import reads
from .access import CREATE, DELETE, HEAD, STREAMS, Access, ServiceAuth, stream_path
from .allowlist import Allowlist, parse_upstream_url
from .asgi import Disconnected, Headers, Receive, Request, Scope, Send
from .config import ProxyConfig
from .errors import ProxyError
from .metrics import ProxyMetrics
from .pipe import INTERRUPTED, Pipe
from .signing import sign
from .upstream import UpstreamClients, upstream_headers

INDEX = "__ds/proxy/index"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # 4.1 Upstream-Method

_EXPOSE = (b"Location, Upstream-Content-Type, Upstream-Status, Proxy-Outcome, "
           b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
           b"Stream-SSE-Data-Encoding, Content-Type")
_ALLOW_HEADERS = (b"Upstream-URL, Upstream-Method, Upstream-Authorization, Content-Type, "
                  b"Authorization, Accept")
_ALLOW_METHODS = b"GET, POST, HEAD, PATCH, DELETE, OPTIONS"


class Context(Protocol):
    """What the proxy uses of the server's ServerContext."""

    config: Any
    store: Store
    metrics: Any
    log: logging.Logger


@dataclass(slots=True)
class Meta:
    upstream_content_type: str | None
    outcome: str | None = None


class ProxyApp:
    """PROXY-PROTOCOL.md as an ASGI sub-application."""

    def __init__(self, ctx: Context, config: ProxyConfig | None = None, *,
                 service_auth: ServiceAuth | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.log = getattr(ctx, "log", None) or logging.getLogger("duralog.proxy")
        self.config = config or ProxyConfig.from_env(enabled=True)
        self.allowlist = Allowlist(self.config.allow, self.config.allow_private)
        self.access = Access(self.config, service_auth)
        self.meta: dict[str, Meta] = {}
        self.pipes: dict[str, Pipe] = {}
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport = transport
        self.client: UpstreamClients | None = None
        origin = getattr(ctx.config, "cors_origin", "*")
        self.base_headers: Headers = [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-expose-headers", _EXPOSE),
            (b"x-content-type-options", b"nosniff"),
        ]
        self._metrics = ProxyMetrics(getattr(ctx, "metrics", None))

    # -- lifecycle -----------------------------------------------------------
    async def startup(self) -> None:
        self.closing = False
        self.client = UpstreamClients(self.config, self._transport, self.allowlist)
        # The first client imports httpcore's backends (seconds on a busy machine):
        # pay that at start-up, not in the first proxied request.
        self.client.give_back(self.client.take())
        await self._load_index()
        await self._recover()
        if self._on_removed not in self.store.removal_listeners:
            self.store.removal_listeners.append(self._on_removed)

    async def shutdown(self) -> None:
        """The server is stopping: cut every upstream, flush, and mark the streams
        interrupted (what a restart would find anyway)."""
        self.closing = True
        pipes = list(self.pipes.values())
        for pipe in pipes:
            pipe.stop(INTERRUPTED)
        for pipe in pipes:
            await pipe.wait(5.0)
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _load_index(self) -> None:
        state = self.store.get(INDEX)
        if state is None:
            await self.store.create(INDEX, CreateRequest(content_type="application/json"), None)
            return
        pos = 0
        while pos < state.tail:
            chunk = await self.store.read(state, pos, 1 << 20, whole=True)
            for frag in chunk.parts:
                for message in jsonmode.fragment_messages(frag):
                    self._apply(orjson.loads(message))
            if chunk.next_pos <= pos:
                break
            pos = chunk.next_pos

    def _apply(self, record: dict[str, Any]) -> None:
        sid = record.get("id")
        if not isinstance(sid, str):
            return
        if record.get("deleted"):
            self.meta.pop(sid, None)
        elif "outcome" in record:
            meta = self.meta.setdefault(sid, Meta(None))
            meta.outcome = record["outcome"]
        else:
            self.meta[sid] = Meta(record.get("uct"))

    async def _record(self, record: dict[str, Any]) -> None:
        self._apply(record)
        try:
            await self.store.append(INDEX, AppendRequest(payload=orjson.dumps(record),
                                                         content_type="application/json"))
        except ProtocolError as err:
            self.log.warning("proxy index not updated: %s", err.reason)

    async def _recover(self) -> None:
        """A stream left open by a stopped server lost its upstream: close it, marked
        ``interrupted``, so readers end instead of waiting forever."""
        for state in self.store.list_states():
            if not state.path.startswith(STREAMS) or state.closed:
                continue
            sid = state.path[len(STREAMS):]
            if sid in self.pipes:
                continue
            await self._finish(sid, INTERRUPTED)

    def _on_removed(self, state: StreamState) -> None:
        """A proxy stream the store expired (its URL expired a minute before) is
        forgotten like a DELETE, so the proxy's memory does not grow without end."""
        if not state.path.startswith(STREAMS):
            return
        sid = state.path[len(STREAMS):]
        if self.meta.pop(sid, None) is not None and not self.closing:
            task = asyncio.get_running_loop().create_task(
                self._record({"id": sid, "deleted": True}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, sid: str, outcome: str) -> None:
        # Outcome first, close second: whoever sees the close can read the outcome.
        await self._record({"id": sid, "outcome": outcome})
        with contextlib.suppress(ProtocolError):
            await self.store.append(STREAMS + sid, AppendRequest(payload=b"", close=True))
        self._metrics.ended(outcome)

    # -- ASGI ------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.client is None:
            await self.startup()
        try:
            await self._dispatch(Request(scope, receive), send)
        except Disconnected:
            pass
        except ProxyError as err:
            await self.error(send, err)
        except ProtocolError as err:
            await self.error(send, ProxyError(err.status, "INVALID_REQUEST", err.reason))
        except Exception:
            self.log.exception("proxy: unhandled error on %s %s", scope.get("method"),
                               scope.get("path"))
            with contextlib.suppress(Exception):
                await self.error(send, ProxyError(500, "INTERNAL_ERROR", "internal error"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, req: Request, send: Send) -> None:
        path = req.path.strip("/")
        if req.method == "OPTIONS":
            await self._preflight(req, send)  # 10.1
            return
        if path == "":
            if req.method != "POST":
                raise ProxyError(405, "METHOD_NOT_ALLOWED", "POST creates a proxy stream",
                                 {"allow": "POST, OPTIONS"})
            await self._create(req, send)
            return
        if "/" in path or not _valid_id(path):
            raise ProxyError(404, "NOT_FOUND", "no such route")
        sid = path
        if req.method in ("GET", "HEAD"):
            if req.method == "GET":
                self.access.stream(req, sid, fallback=True)  # 4.2, 9.2
            else:
                self.access.service(req, HEAD, stream_path(sid))  # 4.4: service auth only
            state = self._state(sid)
            if req.method == "GET":
                await reads.get(self, req, send, sid, state)
            else:
                await reads.head(self, send, sid, state)
        elif req.method == "PATCH":
            self.access.stream(req, sid, fallback=False)  # 4.3: pre-signed URL only
            await self._abort(req, send, sid)
        elif req.method == "DELETE":
            self.access.service(req, DELETE, stream_path(sid))  # 4.5
            await self._delete(send, sid)
        else:
            raise ProxyError(405, "METHOD_NOT_ALLOWED", f"{req.method} is not allowed here",
                             {"allow": "GET, HEAD, PATCH, DELETE, OPTIONS"})

    # -- responses -------------------------------------------------------------------
    async def respond(self, send: Send, status: int, headers: Headers, body: bytes = b"",
                      *, head: bool = False) -> None:
        all_headers = self.base_headers + headers
        if not head:
            all_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def error(self, send: Send, err: ProxyError) -> None:
        headers: Headers = [(b"content-type", b"application/json"),
                            (b"cache-control", b"no-store")]
        headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
        await self.respond(send, err.status, headers, err.body())

    async def _preflight(self, req: Request, send: Send) -> None:
        # 10.2: the proxy headers, plus whatever else the page asks to send
        # ("all other headers are forwarded", 4.1).
        asked = req.header("access-control-request-headers")
        allow = _ALLOW_HEADERS + (b", " + asked.encode("latin-1") if asked else b"")
        await self.respond(send, 204, [
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", allow),
            (b"access-control-max-age", b"86400"),
        ])

    # -- streams -------------------------------------------------------------------------
    def _state(self, sid: str) -> StreamState:
        state = self.store.get(STREAMS + sid)
        if state is None or state.soft_deleted:
            raise ProxyError(404, "STREAM_NOT_FOUND", "no such proxy stream")
        return state

    def current(self, sid: str, stream_id: int) -> StreamState:
        state = self._state(sid)
        if state.id != stream_id:
            raise ProxyError(404, "STREAM_NOT_FOUND", "the proxy stream was deleted")
        return state

    # -- create (4.1) ---------------------------------------------------------------------
    async def _create(self, req: Request, send: Send) -> None:
        # The id is chosen first: a token must cover the new stream's path (access.py).
        sid = str(uuid.uuid4())
        self.access.service(req, CREATE, stream_path(sid))
        url = req.header("upstream-url")
        if not url:
            raise ProxyError(400, "MISSING_UPSTREAM_URL", "Upstream-URL header is required")
        method = req.header("upstream-method")
        if not method:
            raise ProxyError(400, "MISSING_UPSTREAM_METHOD", "Upstream-Method header is required")
        if method.upper() not in METHODS:
            raise ProxyError(400, "INVALID_UPSTREAM_METHOD",
                             "Upstream-Method must be GET, POST, PUT, PATCH or DELETE")
        canonical = parse_upstream_url(url)
        if canonical is None:
            raise ProxyError(400, "INVALID_UPSTREAM_URL",
                             "Upstream-URL must be an absolute http(s) URL")
        url = canonical
        rule = self.allowlist.match(url)  # 6
        if rule is None:
            raise ProxyError(403, "UPSTREAM_NOT_ALLOWED", "Upstream-URL is not in the allowlist")
        refusal = await self.allowlist.check_address(url, rule)  # 12.1
        if refusal is not None:
            raise ProxyError(403, "UPSTREAM_NOT_ALLOWED", refusal)
        body = await self._body(req)
        response = await self._send_upstream(req, method.upper(), url, body)
        status = response.status_code
        if 300 <= status < 400:
            await self._close_upstream(response)
            raise ProxyError(400, "REDIRECT_NOT_ALLOWED", "Proxy cannot follow redirects")  # 6.1
        if not 200 <= status < 300:
            await self._upstream_error(send, response)
            return
        await self._start(req, send, response, sid)

    async def _body(self, req: Request) -> bytes:
        limit = self.config.max_request_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProxyError(413, "PAYLOAD_TOO_LARGE",
                                 f"request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _send_upstream(self, req: Request, method: str, url: str,
                             body: bytes) -> httpx.Response:
        assert self.client is not None
        client = self.client.take()
        try:
            request = client.build_request(method, url, content=body or None,
                                           headers=upstream_headers(req))
            async with asyncio.timeout(self.config.header_timeout):  # 8.1
                response = await client.send(request, stream=True)
        except BaseException as exc:
            self.client.give_back(client)
            if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
                raise ProxyError(504, "UPSTREAM_TIMEOUT",
                                 "upstream did not answer within the header timeout") from None
            if isinstance(exc, (httpx.HTTPError, OSError)):
                raise ProxyError(502, "UPSTREAM_ERROR",
                                 f"upstream request failed: {type(exc).__name__}") from None
            raise
        # The shard is given back when the response is done (_close_upstream, pipe end).
        response.extensions["duralog_client"] = client
        return response

    async def _upstream_error(self, send: Send, response: httpx.Response) -> None:
        """4.1: 502 with Upstream-Status and the upstream body, cut at the limit (12.3)."""
        limit = self.config.error_body_limit
        body = bytearray()
        try:
            async with asyncio.timeout(self.config.header_timeout):
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= limit:
                        break
        except (TimeoutError, httpx.HTTPError, OSError):
            pass
        finally:
            await self._close_upstream(response)
        headers: Headers = [(b"upstream-status", str(response.status_code).encode()),
                            (b"cache-control", b"no-store")]
        ctype = response.headers.get("content-type")
        if ctype:
            headers.append((b"content-type", ctype.encode("latin-1")))
        await self.respond(send, 502, headers, bytes(body[:limit]))

    async def _start(self, req: Request, send: Send, response: httpx.Response,
                     sid: str) -> None:
        upstream_type = response.headers.get("content-type")
        expires = int(time.time()) + self.config.url_ttl
        try:
            await self.store.create(STREAMS + sid, CreateRequest(
                content_type=_stream_type(upstream_type),
                expires_at=_rfc3339(expires + 60), expires_ts=float(expires + 60)), None)
        except ProtocolError as err:
            await self._close_upstream(response)
            raise ProxyError(502, "STORAGE_ERROR", f"could not create the stream: {err.reason}"
                             ) from None
        await self._record({"id": sid, "uct": upstream_type})

        async def ended(outcome: str) -> None:
            self.pipes.pop(sid, None)
            if self.client is not None:
                self.client.give_back(response.extensions.get("duralog_client"))
            await self._finish(sid, outcome)

        self.pipes[sid] = Pipe(self.store, STREAMS + sid, response, self.config, ended,
                               self._metrics.piped)
        self._metrics.created()
        location = f"{_base_url(req)}/{sid}?expires={expires}&signature=" \
                   f"{sign(self.config.key(), sid, expires)}"
        headers: Headers = [(b"location", location.encode())]
        if upstream_type:
            headers.append((b"upstream-content-type", upstream_type.encode("latin-1")))
        await self.respond(send, 201, headers)  # 4.1: no body

    async def _close_upstream(self, response: httpx.Response) -> None:
        await response.aclose()
        if self.client is not None:
            self.client.give_back(response.extensions.get("duralog_client"))

    # -- abort (4.3) and delete (4.5) ---------------------------------------------------
    async def _abort(self, req: Request, send: Send, sid: str) -> None:
        if req.query.get("action") != "abort":
            raise ProxyError(400, "INVALID_ACTION", "the only action is abort")
        self._state(sid)
        pipe = self.pipes.get(sid)
        if pipe is not None:
            pipe.stop("aborted")
            await pipe.wait()  # 8.3: buffered data is written before we answer
        await self.respond(send, 204, [])  # idempotent

    async def _delete(self, send: Send, sid: str) -> None:
        pipe = self.pipes.get(sid)
        if pipe is not None:
            pipe.stop("aborted")
            await pipe.wait()
        with contextlib.suppress(ProtocolError):  # 4.5: deleting what is not there: 204
            await self.store.delete(STREAMS + sid)
        if sid in self.meta:
            await self._record({"id": sid, "deleted": True})
        await self.respond(send, 204, [])


def _valid_id(sid: str) -> bool:
    return 0 < len(sid) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in sid)


def _stream_type(upstream_type: str | None) -> str:
    """The stored stream is a byte stream: text types keep their type (SSE reads then
    carry text), anything else, JSON included, is stored as octet-stream so the
    base protocol's JSON mode never reframes upstream bytes."""
    if upstream_type and is_valid_content_type(upstream_type) and is_text_like(
            upstream_type) and not is_json(upstream_type):
        return upstream_type
    return "application/octet-stream"


def _rfc3339(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _base_url(req: Request) -> str:
    scope = req.scope
    host = req.header("host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")
