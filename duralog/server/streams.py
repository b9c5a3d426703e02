"""Stream operations: PUT (create, fork), POST (append, close), HEAD, DELETE, and
the start of every GET with its catch-up answer (PROTOCOL.md 5.1-5.6, 8).

Live reads (long-poll and SSE) are handed to live.py once the request has been
checked; they come back here for the catch-up answer when data is there.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from typing import Protocol

from .. import offload
from ..protocol import headers as H
from ..protocol import jsonmode
from ..protocol.errors import ProtocolError
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.paths import source_stream_name
from ..protocol.state import AppendRequest, CreateRequest, StreamState
from ..store import Store
from ..store.base import StaleState
from ..store.plans import EARLIEST_OFFSET_HEADER, gone_before
from ..store.registry import REGISTRY
from .config import Config
from .forwarded import public_origin
from .http import (
    PRIVATE_SCOPE_KEY,
    Headers,
    Request,
    Responses,
    Send,
    accepts_gzip,
    etag_matches,
    read_body,
)
from .observe import ServerMetrics

log = logging.getLogger("duralog")

_COMPRESS_MIN = 1024
_COMPRESS_IN_THREAD = 64 << 10
#: Retention request headers (an extension; README "Retention").
RETENTION_BYTES = "stream-retention-bytes"
RETENTION_SECONDS = "stream-retention-seconds"
# 10.1: catch-up data is cacheable; shared streams may be cached publicly.
_CACHEABLE = b"public, max-age=60, stale-while-revalidate=300"


class LiveReader(Protocol):
    async def read(self, req: Request, send: Send, state: StreamState, pos: int, mode: str,
                   client_cursor: str | None) -> None: ...


class StreamOps:
    """The stream operations of PROTOCOL.md 5 on one ``Store``."""

    def __init__(self, config: Config, store: Store, http: Responses,
                 metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.store = store
        self.http = http
        self.metrics = metrics
        self.live: LiveReader | None = None  # set by the composition (app.py)

    # -- PUT: create (5.1) and fork (4.2) --------------------------------------
    async def put(self, req: Request, send: Send) -> None:
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

        body = await read_body(req, self.config.max_body_size)

        effective_type = content_type
        if forked_from is not None and effective_type is None:
            source = await self.store.fresh(forked_from)
            effective_type = source.content_type if source is not None else None
        payload: bytes | None = None
        if body:
            if H.is_json(effective_type):
                payload = await offload.append_fragment(body, allow_empty=True)
            else:
                payload = body

        retention_bytes, retention_seconds = self._retention(req)
        create = CreateRequest(
            content_type=content_type if (content_type or forked_from) else
            "application/octet-stream",
            ttl=ttl, expires_at=expires_raw, expires_ts=expires_ts,
            closed=H.is_true(req.header(H.STREAM_CLOSED)),
            forked_from=forked_from, fork_pos=fork_pos, fork_sub=fork_sub,
            retention_bytes=retention_bytes, retention_seconds=retention_seconds)
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
        await self.http.respond(send, 201 if created else 200, headers)

    def _retention(self, req: Request) -> tuple[int | None, int | None]:
        """Stream-Retention-Bytes / -Seconds (an extension, README), or the server's
        defaults (--retention-bytes, --retention-seconds; 0 keeps everything)."""
        values: list[int | None] = []
        for header, default in ((RETENTION_BYTES, self.config.retention_bytes),
                                (RETENTION_SECONDS, self.config.retention_seconds)):
            raw = req.header(header)
            if raw is None:
                values.append(default or None)
                continue
            value = H.parse_non_negative(raw, header.title())
            if value == 0:
                raise ProtocolError(400, f"{header.title()} must be a positive integer")
            values.append(value)
        return values[0], values[1]

    def _source_name(self, value: str) -> str:
        """4.2: Stream-Forked-From is a path on this server; map it to a stream name.
        (The access-control layer reads the same header with the same function.)"""
        return source_stream_name(value, self.config.stream_prefix)

    def _location(self, req: Request) -> str:
        scope = req.scope
        # Behind a trusted proxy, the scheme and host the client used (forwarded.py).
        origin = public_origin(scope, req.headers, self.config.forwarded_allow_ips)
        path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("root_path") and not path.startswith(scope["root_path"].encode()):
            path = scope["root_path"].encode() + path
        return f"{origin}{path.decode('latin-1')}"

    # -- POST: append and close (5.2, 5.3) -------------------------------------
    async def post(self, req: Request, send: Send) -> None:
        close = H.is_true(req.header(H.STREAM_CLOSED))
        producer = H.parse_producer(req.header(H.PRODUCER_ID), req.header(H.PRODUCER_EPOCH),
                                    req.header(H.PRODUCER_SEQ))
        stream_seq = H.parse_stream_seq(req.header(H.STREAM_SEQ))
        content_type = req.header("content-type")
        if content_type is not None and not H.is_plain_header_value(content_type):
            raise ProtocolError(400, f"Content-Type must be at most {H.MAX_CONTENT_TYPE} "
                                     "bytes of visible ASCII")
        body = await read_body(req, self.config.max_body_size)
        if not body and not close:
            raise ProtocolError(400, "empty body: an append needs data (or Stream-Closed: "
                                     "true to close)")
        # The cached state saves a database round trip on a shared store (postgres):
        # the append is decided against the database anyway, and one prepared for
        # a stream another node has since replaced is refused (StaleState) and
        # prepared again from the database's state.
        state = self.store.get(req.name) if self.store.shared else None
        cached = state is not None and not state.soft_deleted
        if not cached:
            state = await self.live_state(req.name)
        if body and not content_type:
            raise ProtocolError(400, "Content-Type is required on an append with a body")
        while True:
            assert state is not None
            self.store.touch(state)
            try:
                payload = await self._append_payload(state, body, content_type)
                decision, state = await self.store.append(req.name, AppendRequest(
                    payload=payload, content_type=content_type, stream_seq=stream_seq,
                    producer=producer, close=close, stream_id=state.id if cached else None))
            except (StaleState, ProtocolError) as err:
                if not cached or not (isinstance(err, StaleState) or err.status == 409):
                    raise
                cached = False
                state = await self.live_state(req.name)
                continue
            break
        if decision.error is not None:
            raise decision.error
        if self.metrics is not None and decision.write and payload:
            self.metrics.appends += 1
            self.metrics.append_bytes += len(payload)
        headers: Headers = [(k.encode(), v.encode()) for k, v in decision.headers.items()]
        if decision.write and b"stream-next-offset" not in dict(headers):
            headers.append((b"stream-next-offset", state.next_offset.encode()))
        await self.http.respond(send, decision.status, headers)

    def _waiting_at_cached_tail(self, name: str, offset: str | None) -> StreamState | None:
        """A live read at the tail this node knows, on a shared store whose commit feed
        is connected: the cached state will do (no database round trip). If other
        nodes committed past it, their NOTIFYs are on the way and wake this reader;
        anything else (an older or newer offset, -1, now) reads the database first."""
        if not self.store.shared or offset is None or offset in (START, NOW):
            return None
        if not getattr(self.store, "listening", False):
            return None
        state = self.store.get(name)
        if state is None or state.soft_deleted:
            return None
        try:
            pos = parse_offset(offset)
        except ProtocolError:
            return None
        return state if pos == state.tail else None

    async def _append_payload(self, state: StreamState, body: bytes,
                              content_type: str | None) -> bytes:
        """What an append stores: the body, or its JSON fragment (5.2)."""
        if body and not state.closed:
            if H.media_type(content_type) != H.media_type(state.content_type):
                raise ProtocolError(409, "content type does not match the stream's "
                                         f"({state.content_type})")
            if H.is_json(state.content_type):
                payload = await offload.append_fragment(body, allow_empty=False)
                assert payload is not None
                return payload
        return body

    # -- HEAD (5.5) ------------------------------------------------------------
    async def head(self, req: Request, send: Send) -> None:
        state = await self.live_state(req.name)
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", state.next_offset.encode()),
            (b"cache-control", b"no-store"),  # 5.5: tail and closure go stale at once
            (b"etag", self.etag(state, START, state.next_offset, state.closed)),
        ]
        if state.ttl is not None:
            headers.append((b"stream-ttl", str(state.ttl).encode()))
        if state.expires_at is not None:
            headers.append((b"stream-expires-at", state.expires_at.encode()))
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        if state.retention_bytes is not None:
            headers.append((RETENTION_BYTES.encode(), str(state.retention_bytes).encode()))
        if state.retention_seconds is not None:
            headers.append((RETENTION_SECONDS.encode(), str(state.retention_seconds).encode()))
        if state.start or state.retention_bytes or state.retention_seconds:
            headers.append((EARLIEST_OFFSET_HEADER.encode(),
                            format_offset(state.start).encode()))
        all_headers = self.http.base_headers + headers
        await send({"type": "http.response.start", "status": 200, "headers": all_headers})
        await send({"type": "http.response.body", "body": b""})

    # -- DELETE (5.4) ----------------------------------------------------------
    async def delete(self, req: Request, send: Send) -> None:
        await self.live_state(req.name)
        await self.store.delete(req.name)
        await self.http.respond(send, 204, [])

    async def live_state(self, name: str) -> StreamState:
        # fresh(): with several server nodes another one may have changed the stream.
        state = await self.store.fresh(name)
        if state is None:
            raise ProtocolError(404, "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "stream was deleted")
        return state

    # -- GET: catch-up (5.6), long-poll (5.7), SSE (5.8) -----------------------
    async def get(self, req: Request, send: Send) -> None:
        offset = req.query_one("offset")
        live = req.query_one("live")
        client_cursor = req.query_one("cursor")
        if live is not None and live not in ("long-poll", "sse"):
            raise ProtocolError(400, "live must be long-poll or sse")
        if offset == "":
            raise ProtocolError(400, "offset is empty")
        if live is not None and offset is None:
            raise ProtocolError(400, f"live={live} needs an offset")
        state = self._waiting_at_cached_tail(req.name, offset) if live is not None else None
        if state is None:
            state = await self.live_state(req.name)
        self.store.touch(state)  # 5.1: live reads slide the TTL when they begin
        if offset is None or offset == START:
            pos = state.start  # retention: -1 is the earliest retained data
        elif offset == NOW:
            pos = state.tail
        else:
            pos = parse_offset(offset)
            if pos > state.tail:
                raise ProtocolError(400, "offset is beyond the end of the stream")
            if pos < state.start:
                raise gone_before(state)  # PROTOCOL.md 4: dropped by retention
        if live is not None:
            assert self.live is not None, "the composition wires live reads in"
            await self.live.read(req, send, state, pos, live, client_cursor)
        elif offset == NOW:
            await self.now(send, state)
        else:
            await self.catch_up(req, send, state, pos, offset or START, None)

    async def now(self, send: Send, state: StreamState) -> None:
        """8: offset=now without live: nothing, the tail, and no caching."""
        headers: Headers = [
            (b"content-type", state.content_type.encode()),
            (b"stream-next-offset", state.next_offset.encode()),
            (b"stream-up-to-date", b"true"),
            (b"cache-control", b"no-store"),
        ]
        if state.closed:
            headers.append((b"stream-closed", b"true"))
        await self.http.respond(send, 200, headers, b"[]" if H.is_json(state.content_type) else b"")

    async def catch_up(self, req: Request, send: Send, state: StreamState, pos: int,
                        start_token: str, cursor: str | None) -> None:
        chunk = await self.store.read(state, pos, self.config.chunk_size)
        up_to_date = chunk.next_pos >= state.tail
        # 5.6: Stream-Closed only once the reader has everything there will ever be.
        closed = state.closed and up_to_date
        next_offset = format_offset(chunk.next_pos)
        etag = self.etag(state, start_token, next_offset, closed)
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
        if req.query_one("offset") == NOW:
            # PROTOCOL.md 8: offset=now names the tail at the time of asking; a long-poll
            # answer to it must not be served from a cache to a reader who asks later.
            cache = b"no-store"
        else:
            cache = self._cache_control(state, bool(chunk.parts))
        if req.scope.get(PRIVATE_SCOPE_KEY) and cache.startswith(b"public"):
            # PROTOCOL.md 12.2: an answer that needed a token is for that client only
            # (the security layer says so; server/auth.py).
            cache = b"private" + cache[6:]
        headers.append((b"cache-control", cache))
        is_json = H.is_json(state.content_type)
        # The body's size, without building it: a 304 needs no body at all.
        size = sum(map(len, chunk.parts)) + (len(chunk.parts) + 1 if is_json else 0)
        compress = (self.config.compression and size >= _COMPRESS_MIN
                    and accepts_gzip(req.header("accept-encoding")))
        sent_etag = etag[:-1] + b'-gz"' if compress else etag
        if compress:
            headers.append((b"vary", b"accept-encoding"))
        inm = req.header("if-none-match")
        if inm is not None and etag_matches(inm, etag):
            # 10.1: a repeat read of unchanged data costs no body. RFC 9110 15.4.5: the
            # 304 carries the ETag and Vary the 200 would have carried.
            await self.http.respond(send, 304, [(b"etag", sent_etag), *headers[1:]])
            return
        if is_json:
            body = jsonmode.wrap(chunk.parts)
        else:
            body = chunk.parts[0] if len(chunk.parts) == 1 else b"".join(chunk.parts)
        if compress:
            if len(body) >= _COMPRESS_IN_THREAD:
                # zlib releases the GIL: in a thread, the loop goes on. On the loop, 1 MiB
                # of random bytes took 90 ms and of JSON 76 ms (issue 9: 50 ms at most).
                body = await asyncio.to_thread(gzip.compress, body, 5)
            else:
                body = gzip.compress(body, compresslevel=5)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"etag", sent_etag))
        await self.http.respond(send, 200, headers, body)
        if self.metrics is not None:
            self.metrics.read_bytes += chunk.next_pos - pos

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

    def etag(self, state: StreamState, start: str, end: str, closed: bool) -> bytes:
        """10.1: {stream id}:{start}:{end}, with :c once closed so closure is never hidden."""
        suffix = ":c" if closed else ""
        return f'"{self.store.instance_tag}.{state.id}:{start}:{end}{suffix}"'.encode()

    def current(self, name: str, stream_id: int) -> StreamState | None:
        state = self.store.get(name)
        if state is None or state.id != stream_id or state.soft_deleted:
            return None
        return state


def name_is_registry(name: str) -> bool:
    return name == REGISTRY
