"""The ASGI application.

One class, ``DuralogApp``, turns HTTP requests into protocol operations on a
``Store`` and protocol answers back into HTTP. It speaks raw ASGI (no framework
underneath) so it can run under any ASGI server or be mounted in a Starlette
or FastAPI application under a prefix.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import gzip
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..protocol import cursor as cursors
from ..protocol import headers as H
from ..protocol import jsonmode, sse
from ..protocol.errors import ProtocolError
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.paths import stream_name
from ..protocol.state import AppendRequest, CreateRequest, StreamState
from ..store import Store, open_store
from .config import Config

log = logging.getLogger("duralog")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

REGISTRY = "__registry__"
RESERVED = "__ds"  # PROTOCOL.md 6: control APIs live under this first segment

_EXPOSE = (b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
           b"Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, "
           b"Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, "
           b"Content-Type, Content-Encoding, Vary")
_ALLOW_HEADERS = (b"Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, "
                  b"Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, "
                  b"Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset")
_METHODS = b"GET, POST, PUT, DELETE, HEAD, OPTIONS"
_COMPRESS_MIN = 1024
# 10.1: catch-up data is cacheable; shared streams may be cached publicly.
_CACHEABLE = b"public, max-age=60, stale-while-revalidate=300"
_SSE_SHARED_BYTES = 16 << 20  # most bytes of encoded SSE events kept for sharing


class _Request:
    """What the handlers need of one HTTP request."""

    __slots__ = ("_query", "headers", "method", "name", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, name: str) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.name = name
        self.headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            k = key.decode("latin-1").lower()
            v = value.decode("latin-1")
            # Repeated headers are joined as RFC 9110 5.3 allows; the parsers then
            # refuse what no single value could be.
            self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
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


class _Disconnected(Exception):
    pass


class DuralogApp:
    """The Durable Streams server as an ASGI application."""

    def __init__(self, config: Config | None = None, store: Store | None = None) -> None:
        self.config = config or Config.from_env()
        self.store = store or open_store(self.config.backend, self.config.data_dir)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # Encoded SSE data events shared by readers at the same position (see _sse_data).
        self._sse_events: dict[tuple[int, int, int], tuple[bytes, int]] = {}
        self._sse_event_bytes = 0
        self._base_headers: Headers = [
            (b"access-control-allow-origin", self.config.cors_origin.encode()),
            (b"access-control-expose-headers", _EXPOSE),
            # 12.7: browser security headers on every response.
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-resource-policy", b"cross-origin"),
        ]

    # -- lifecycle ---------------------------------------------------------
    async def startup(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self.store.start()
            self.store.removal_listeners.append(self._on_removed)
            if self.config.registry and self.store.get(REGISTRY) is None:
                await self.store.create(REGISTRY, CreateRequest(content_type="application/json"),
                                        None)
            self._closing.clear()
            self._sweeper = asyncio.create_task(self._sweep_loop())
            self._started = True

    async def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.store.stop()

    async def _sweep_loop(self) -> None:
        """Expired streams are removed in the background, not only when touched (4)."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                sweep = getattr(self.store, "sweep_expired", None)
                if sweep is not None:
                    await sweep()
            except Exception:  # pragma: no cover - logged, the loop goes on
                log.exception("sweeping expired streams failed")

    # -- ASGI ----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                await self.startup()
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._dispatch(scope, receive, send)
        except _Disconnected:
            pass
        except ProtocolError as err:
            await self._error(send, err)
        except Exception:
            # A bug must still answer like the server: one line, security headers (12.7).
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            with contextlib.suppress(Exception):
                await self._error(send, ProtocolError(500, "internal server error"))

    def _relative_path(self, scope: Scope) -> bytes:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw.split(b"?", 1)[0]
        root = scope.get("root_path", "").encode("utf-8")
        if root and raw.startswith(root):
            raw = raw[len(root):]
        return raw

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = self._relative_path(scope)
        prefix = self.config.stream_prefix.encode()
        method = scope["method"]
        if not raw.startswith(prefix):
            if method == "OPTIONS":
                await self._preflight(send)
                return
            if raw in (b"/", b"") and method in ("GET", "HEAD"):
                await self._respond(send, 200, [(b"content-type", b"application/json")],
                                    orjson.dumps({"server": "duralog",
                                                  "streams": self.config.stream_prefix}))
                return
            raise ProtocolError(404, f"no streams here; streams live under "
                                     f"{self.config.stream_prefix}")
        name = stream_name(raw[len(prefix):])
        if method == "OPTIONS":
            await self._preflight(send)
            return
        if name.split("/", 1)[0] == RESERVED:
            raise ProtocolError(404, "no such control API (the __ds prefix is reserved)")
        if name == REGISTRY and method in ("POST", "DELETE"):
            raise ProtocolError(403, "the registry stream is written by the server only")
        req = _Request(scope, receive, name)
        if method == "GET":
            await self._get(req, send)
        elif method == "POST":
            await self._post(req, send)
        elif method == "PUT":
            await self._put(req, send)
        elif method == "HEAD":
            await self._head(req, send)
        elif method == "DELETE":
            await self._delete(req, send)
        else:
            raise ProtocolError(405, f"method {method} is not allowed on a stream",
                                {"allow": _METHODS.decode()})

    # -- responses -----------------------------------------------------------
    async def _respond(self, send: Send, status: int, headers: Headers,
                       body: bytes = b"") -> None:
        all_headers = self._base_headers + headers
        all_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, err: ProtocolError) -> None:
        headers: Headers = [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"cache-control", b"no-store")]
        headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
        await self._respond(send, err.status, headers, err.reason.encode() + b"\n")

    async def _preflight(self, send: Send) -> None:
        await self._respond(send, 204, [
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-allow-headers", _ALLOW_HEADERS),
            (b"access-control-max-age", b"86400"),
        ])

    # -- bodies --------------------------------------------------------------
    async def _body(self, req: _Request) -> bytes:
        limit = self.config.max_body_size
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
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(413, f"body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- PUT: create (5.1) and fork (4.2) --------------------------------------
    async def _put(self, req: _Request, send: Send) -> None:
        ttl_raw = req.header(H.STREAM_TTL)
        expires_raw = req.header(H.STREAM_EXPIRES_AT)
        if ttl_raw is not None and expires_raw is not None:
            raise ProtocolError(400, "send Stream-TTL or Stream-Expires-At, not both")
        ttl = H.parse_ttl(ttl_raw) if ttl_raw is not None else None
        expires_ts = H.parse_expires_at(expires_raw) if expires_raw is not None else None

        forked_from_raw = req.header(H.STREAM_FORKED_FROM)
        fork_offset_raw = req.header(H.STREAM_FORK_OFFSET)
        fork_sub_raw = req.header(H.STREAM_FORK_SUB_OFFSET)
        forked_from = None
        if forked_from_raw is not None:
            forked_from = self._source_name(forked_from_raw)
        elif fork_offset_raw is not None or fork_sub_raw is not None:
            raise ProtocolError(400, "Stream-Fork-Offset and Stream-Fork-Sub-Offset need "
                                     "Stream-Forked-From")
        fork_pos = None
        if fork_offset_raw is not None:
            try:
                fork_pos = parse_offset(fork_offset_raw)
            except ProtocolError:
                raise ProtocolError(400, "Stream-Fork-Offset is not a valid offset") from None
        fork_sub = 0
        if fork_sub_raw is not None:
            fork_sub = H.parse_non_negative(fork_sub_raw, "Stream-Fork-Sub-Offset")

        content_type = req.header("content-type")
        if content_type is not None and not content_type.strip():
            content_type = None
        if content_type is not None and not H.is_valid_content_type(content_type):
            raise ProtocolError(400, "Content-Type is not a valid media type")
        if name_is_registry(req.name) and content_type is not None and not H.is_json(
                content_type):
            raise ProtocolError(409, "the registry stream is application/json")

        body = await self._body(req)

        effective_type = content_type
        if forked_from is not None and effective_type is None:
            source = self.store.get(forked_from)
            effective_type = source.content_type if source is not None else None
        payload: bytes | None = None
        if body:
            if H.is_json(effective_type):
                payload = jsonmode.append_fragment(body, allow_empty=True)
            else:
                payload = body

        create = CreateRequest(
            content_type=content_type if (content_type or forked_from) else
            "application/octet-stream",
            ttl=ttl, expires_at=expires_raw, expires_ts=expires_ts,
            closed=H.is_true(req.header(H.STREAM_CLOSED)),
            forked_from=forked_from, fork_pos=fork_pos, fork_sub=fork_sub)
        state, created = await self.store.create(req.name, create, payload)
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", state.next_offset.encode()),
        ]
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        if created:
            # 5.1: Location names the stream that was created.
            headers.append((b"location", self._location(req).encode()))
            await self._record_registry("insert", state)
        await self._respond(send, 201 if created else 200, headers)

    def _source_name(self, value: str) -> str:
        """4.2: Stream-Forked-From is a path on this server; map it to a stream name."""
        raw = value.strip().encode("utf-8", "surrogateescape")
        if b"://" in raw:
            raise ProtocolError(400, "Stream-Forked-From must be a path on this server")
        raw = raw.split(b"?", 1)[0]
        prefix = self.config.stream_prefix.encode()
        index = raw.find(prefix)
        if index < 0:
            raise ProtocolError(404, "source stream not found")
        return stream_name(raw[index + len(prefix):])

    def _location(self, req: _Request) -> str:
        scope = req.scope
        host = req.header("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
        scheme = scope.get("scheme", "http")
        path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("root_path") and not path.startswith(scope["root_path"].encode()):
            path = scope["root_path"].encode() + path
        return f"{scheme}://{host}{path.decode('latin-1')}"

    # -- POST: append and close (5.2, 5.3) -------------------------------------
    async def _post(self, req: _Request, send: Send) -> None:
        close = H.is_true(req.header(H.STREAM_CLOSED))
        producer = H.parse_producer(req.header(H.PRODUCER_ID), req.header(H.PRODUCER_EPOCH),
                                    req.header(H.PRODUCER_SEQ))
        stream_seq = H.parse_stream_seq(req.header(H.STREAM_SEQ))
        content_type = req.header("content-type")
        body = await self._body(req)
        if not body and not close:
            raise ProtocolError(400, "empty body: an append needs data (or Stream-Closed: "
                                     "true to close)")
        state = self._live_state(req.name)
        self.store.touch(state)
        if body and not content_type:
            raise ProtocolError(400, "Content-Type is required on an append with a body")
        payload = body
        if body and not state.closed:
            if H.media_type(content_type) != H.media_type(state.content_type):
                raise ProtocolError(409, "content type does not match the stream's "
                                         f"({state.content_type})")
            if H.is_json(state.content_type):
                payload = jsonmode.append_fragment(body, allow_empty=False)
                assert payload is not None
        decision, state = await self.store.append(req.name, AppendRequest(
            payload=payload, content_type=content_type, stream_seq=stream_seq,
            producer=producer, close=close))
        if decision.error is not None:
            raise decision.error
        headers: Headers = [(k.encode(), v.encode()) for k, v in decision.headers.items()]
        if decision.write and b"stream-next-offset" not in dict(headers):
            headers.append((b"stream-next-offset", state.next_offset.encode()))
        await self._respond(send, decision.status, headers)

    # -- HEAD (5.5) ------------------------------------------------------------
    async def _head(self, req: _Request, send: Send) -> None:
        state = self._live_state(req.name)
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", state.next_offset.encode()),
            (b"cache-control", b"no-store"),  # 5.5: tail and closure go stale at once
            (b"etag", self._etag(state, START, state.next_offset, state.closed)),
        ]
        if state.ttl is not None:
            headers.append((b"stream-ttl", str(state.ttl).encode()))
        if state.expires_at is not None:
            headers.append((b"stream-expires-at", state.expires_at.encode()))
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        all_headers = self._base_headers + headers
        await send({"type": "http.response.start", "status": 200, "headers": all_headers})
        await send({"type": "http.response.body", "body": b""})

    # -- DELETE (5.4) ----------------------------------------------------------
    async def _delete(self, req: _Request, send: Send) -> None:
        state = self._live_state(req.name)
        await self.store.delete(req.name)
        await self._record_registry("delete", state)
        await self._respond(send, 204, [])

    def _live_state(self, name: str) -> StreamState:
        state = self.store.get(name)
        if state is None:
            raise ProtocolError(404, "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "stream was deleted")
        return state

    # -- GET: catch-up (5.6), long-poll (5.7), SSE (5.8) -----------------------
    async def _get(self, req: _Request, send: Send) -> None:
        offset = req.query_one("offset")
        live = req.query_one("live")
        client_cursor = req.query_one("cursor")
        if live is not None and live not in ("long-poll", "sse"):
            raise ProtocolError(400, "live must be long-poll or sse")
        if offset == "":
            raise ProtocolError(400, "offset is empty")
        if live is not None and offset is None:
            raise ProtocolError(400, f"live={live} needs an offset")
        state = self._live_state(req.name)
        self.store.touch(state)  # 5.1: live reads slide the TTL when they begin
        if offset is None or offset == START:
            pos = 0
        elif offset == NOW:
            pos = state.tail
        else:
            pos = parse_offset(offset)
            if pos > state.tail:
                raise ProtocolError(400, "offset is beyond the end of the stream")
        if live == "sse":
            await self._sse(req, send, state, pos, client_cursor)
        elif live == "long-poll":
            await self._long_poll(req, send, state, pos, client_cursor)
        elif offset == NOW:
            await self._now(send, state)
        else:
            await self._catch_up(req, send, state, pos, offset or START, None)

    async def _now(self, send: Send, state: StreamState) -> None:
        """8: offset=now without live: nothing, the tail, and no caching."""
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", state.next_offset.encode()),
            (b"stream-up-to-date", b"true"),
            (b"cache-control", b"no-store"),
        ]
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        await self._respond(send, 200, headers, b"[]" if H.is_json(state.content_type) else b"")

    async def _catch_up(self, req: _Request, send: Send, state: StreamState, pos: int,
                        start_token: str, cursor: str | None) -> None:
        chunk = await self.store.read(state, pos, self.config.chunk_size)
        up_to_date = chunk.next_pos >= state.tail
        # 5.6: Stream-Closed only once the reader has everything there will ever be.
        closed = state.closed and up_to_date
        next_offset = format_offset(chunk.next_pos)
        etag = self._etag(state, start_token, next_offset, closed)
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", next_offset.encode()),
        ]
        if up_to_date:
            headers.append((b"stream-up-to-date", b"true"))
        if closed:
            headers.append((b"stream-closed", b"true"))
        if cursor is not None:
            headers.append((b"stream-cursor", cursor.encode()))
        headers.append((b"cache-control", self._cache_control(state, bool(chunk.parts))))
        is_json = H.is_json(state.content_type)
        # The body's size, without building it: a 304 needs no body at all.
        size = sum(map(len, chunk.parts)) + (len(chunk.parts) + 1 if is_json else 0)
        compress = (self.config.compression and size >= _COMPRESS_MIN
                    and _accepts_gzip(req.header("accept-encoding")))
        sent_etag = etag[:-1] + b'-gz"' if compress else etag
        if compress:
            headers.append((b"vary", b"accept-encoding"))
        inm = req.header("if-none-match")
        if inm is not None and _etag_matches(inm, etag):
            # 10.1: a repeat read of unchanged data costs no body. RFC 9110 15.4.5: the
            # 304 carries the ETag and Vary the 200 would have carried.
            await self._respond(send, 304, [(b"etag", sent_etag), *headers[1:]])
            return
        if is_json:
            body = jsonmode.wrap(chunk.parts)
        else:
            body = chunk.parts[0] if len(chunk.parts) == 1 else b"".join(chunk.parts)
        if compress:
            body = gzip.compress(body, compresslevel=5)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"etag", sent_etag))
        await self._respond(send, 200, headers, body)

    def _cache_control(self, state: StreamState, has_data: bool) -> bytes:
        """10.1: data is immutable by position, so it may be cached; an empty answer at
        the tail changes with the next append, so it must not be."""
        if not has_data:
            return b"no-store"
        if state.ttl is not None or state.expires_ts is not None:
            # The stream may disappear; keep caches from outliving it by much.
            left = state.ttl if state.ttl is not None else int(
                max(0.0, (state.expires_ts or 0) - time.time()))
            return f"public, max-age={min(60, left)}".encode()
        return _CACHEABLE

    def _etag(self, state: StreamState, start: str, end: str, closed: bool) -> bytes:
        """10.1: {stream id}:{start}:{end}, with :c once closed so closure is never hidden."""
        suffix = ":c" if closed else ""
        return f'"{self.store.instance_tag}.{state.id}:{start}:{end}{suffix}"'.encode()

    def _current(self, name: str, stream_id: int) -> StreamState | None:
        state = self.store.get(name)
        if state is None or state.id != stream_id or state.soft_deleted:
            return None
        return state

    async def _long_poll(self, req: _Request, send: Send, state: StreamState, pos: int,
                         client_cursor: str | None) -> None:
        cursor = cursors.next_cursor(client_cursor)
        if pos < state.tail:
            # 5.7: data already there (including a fork's inherited range) comes at once.
            await self._catch_up(req, send, state, pos, format_offset(pos), cursor)
            return
        deadline = time.monotonic() + self.config.long_poll_timeout
        watcher = _DisconnectWatcher(req.receive)
        try:
            while not state.closed:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    break
                await watcher.wait(self.store.notifier.future(state.id), left)
                if watcher.gone:
                    return
                current = self._current(req.name, state.id)
                if current is None:
                    raise ProtocolError(404, "stream was deleted")
                state = current
                if pos < state.tail:
                    await self._catch_up(req, send, state, pos, format_offset(pos),
                                         cursors.next_cursor(client_cursor))
                    return
        finally:
            watcher.cancel()
        # 5.7: a timeout, or a closed stream at its tail: 204 with the tail.
        headers: Headers = [
            (b"stream-next-offset", format_offset(pos).encode()),
            (b"stream-up-to-date", b"true"),
            (b"cache-control", b"no-store"),
        ]
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        else:
            headers.append((b"stream-cursor", cursors.next_cursor(client_cursor).encode()))
        await self._respond(send, 204, headers)

    async def _sse(self, req: _Request, send: Send, state: StreamState, pos: int,
                   client_cursor: str | None) -> None:
        binary = not H.is_text_like(state.content_type)
        is_json = H.is_json(state.content_type)
        headers = [
            *self._base_headers,
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        if binary:
            # 5.8: binary streams travel as base64, and say so.
            headers.append((b"stream-sse-data-encoding", b"base64"))
        encoding = "json" if is_json else "base64" if binary else "text"
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + self.config.sse_max_duration
        keepalive = self.config.long_poll_timeout
        watcher = _DisconnectWatcher(req.receive)
        first = True
        try:
            while not watcher.gone:
                current = self._current(req.name, state.id)
                if current is None:
                    break  # deleted: end the stream; a reconnect gets 404
                state = current
                if pos < state.tail:
                    data_event, pos = await self._sse_data(state, pos, encoding, decoder)
                    up_to_date = pos >= state.tail
                    closed = state.closed and up_to_date
                    await send({"type": "http.response.body", "more_body": True,
                                 "body": data_event + sse.control_event(
                                     format_offset(pos), cursor=cursors.next_cursor(client_cursor),
                                     up_to_date=up_to_date, closed=closed)})
                    first = False
                    if closed:
                        break
                    continue
                if state.closed or first:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse.control_event(
                                    format_offset(pos), cursor=cursors.next_cursor(client_cursor),
                                    up_to_date=True, closed=state.closed)})
                    first = False
                    if state.closed:
                        break
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    break
                woke = await watcher.wait(self.store.notifier.future(state.id),
                                          min(left, keepalive))
                if not woke and time.monotonic() < deadline:
                    # Keep-alive: still up to date, with a fresh cursor.
                    first = True
        finally:
            watcher.cancel()
        if not watcher.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sse_data(self, state: StreamState, pos: int, encoding: str,
                        decoder: codecs.IncrementalDecoder) -> tuple[bytes, int]:
        """The next data event from ``pos`` and the position after it.

        Every reader of a stream's tail asks for the same event after an append,
        so the encoded event is kept and shared (fan-out costs one read and one
        encoding, not one per reader). A text reader whose decoder holds part of
        a character has bytes of its own and is served apart.
        """
        shareable = encoding != "text" or decoder.getstate() == (b"", 0)
        key = (state.id, pos, state.tail)
        if shareable:
            hit = self._sse_events.get(key)
            if hit is not None:
                return hit
        chunk = await self.store.read(state, pos, self.config.chunk_size)
        if encoding == "json":
            payload = jsonmode.wrap(chunk.parts).decode("utf-8")
        elif encoding == "base64":
            payload = base64.b64encode(b"".join(chunk.parts)).decode("ascii")
        else:
            payload = decoder.decode(b"".join(chunk.parts))
        result = (sse.data_event(payload), chunk.next_pos)
        if shareable and (encoding != "text" or decoder.getstate() == (b"", 0)):
            self._sse_event_bytes += len(result[0])
            if self._sse_event_bytes > _SSE_SHARED_BYTES:
                self._sse_events.clear()
                self._sse_event_bytes = len(result[0])
            self._sse_events[key] = result
        return result

    # -- registry ----------------------------------------------------------------
    def _on_removed(self, state: StreamState) -> None:
        """A stream the store expired on its own is recorded like a DELETE."""
        if self._started:
            task = asyncio.get_running_loop().create_task(self._record_registry("delete", state))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _record_registry(self, operation: str, state: StreamState) -> None:
        """Record creates and deletes in __registry__ as State Protocol changes."""
        if not self.config.registry or name_is_registry(state.path):
            return
        event: dict[str, Any] = {"type": "stream", "key": state.path,
                                 "headers": {"operation": operation}}
        if operation == "insert":
            event["value"] = {"path": state.path, "contentType": state.content_type,
                              "createdAt": int(state.created_at * 1000)}
        try:
            registry = self.store.get(REGISTRY)
            if registry is None:
                await self.store.create(REGISTRY, CreateRequest(content_type="application/json"),
                                        None)
            await self.store.append(REGISTRY, AppendRequest(
                payload=orjson.dumps(event), content_type="application/json"))
        except ProtocolError as err:  # a closed or deleted registry must not fail the request
            log.warning("registry not updated for %s: %s", state.path, err.reason)


def name_is_registry(name: str) -> bool:
    return name == REGISTRY


def _accepts_gzip(value: str | None) -> bool:
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


def _etag_matches(header: str, etag: bytes) -> bool:
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


class _DisconnectWatcher:
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


def create_app(config: Config | None = None, **overrides: Any) -> DuralogApp:
    """An app from the environment and keyword overrides (``backend="memory"``, ...)."""
    if config is None:
        config = Config.from_env(**overrides)
    return DuralogApp(config)
