"""``YjsApp``: the Yjs Durable Streams protocol (YJS-PROTOCOL.md) as a sub-app.

Mounted by the server's composition at ``/v1/yjs``, it answers
``/{service}/docs/{docPath}`` (and ``?awareness=<name>`` on the same URL). A
document is a handful of ordinary streams (see ``paths``) reached only through
the Store interface, so it works on every backend, and the raw streams API can
read them for debugging.

The wire behaviour follows the protocol's reference server (npm
``@durable-streams/y-durable-streams`` 0.2.7). Notes and decisions of ours:

- A snapshot is named by the offset of the last update byte it holds, so its
  ``Stream-Next-Offset`` is that offset + 1, as in the spec's example and the
  reference server; with our byte-position offsets that is exactly where the
  first update after the snapshot starts.
- Updates are checked on the way in: whole lib0 frames, each a Yjs update
  pycrdt can decode; anything else is a 400 and is not stored (12.3), so one
  bad client cannot break a document for every reader.
- Errors always carry the JSON envelope of 10, also for producer refusals
  (403 ``FORBIDDEN``, 409 ``CONFLICT``, with the base protocol's headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlencode

from ..protocol import headers as H
from ..protocol.errors import ProtocolError
from ..protocol.offsets import format_offset, parse_offset
from ..protocol.state import AppendRequest, CreateRequest, StreamState
from .asgi import (
    METHODS,
    Disconnected,
    Receive,
    Request,
    Responder,
    Scope,
    Send,
    YjsError,
    doc_not_found,
    relative_path,
)
from .compaction import DEFAULT_THRESHOLD, OCTET, Compactor
from .framing import FramingError, split_frames
from .paths import DocStreams, PathError, check_name, normalize_doc_path, parse_snapshot_key
from .reads import ReadSettings, StreamReader, read_whole

AWARENESS_TTL = 3600  # 11: awareness streams live an hour past their last use
DEFAULT_AWARENESS = "default"
_VALIDATE_INLINE = 256 << 10  # larger bodies are checked in a worker thread


def validate_updates(body: bytes) -> None:
    """12.3: whole lib0 frames, each an update pycrdt can decode; YjsError(400) if not."""
    from pycrdt import Doc

    try:
        updates = split_frames(body)
    except FramingError as err:
        raise YjsError(400, f"body is not lib0-framed updates: {err}") from None
    for update in updates:
        try:
            Doc().apply_update(update)
        except ValueError:
            raise YjsError(400, "body holds a frame that is not a Yjs update") from None


class YjsApp:
    """The Yjs server: ``YjsApp(ctx)`` with the server's ``ServerContext`` (config, store,
    metrics registry, log). ``compaction_bytes`` and ``awareness_ttl`` default to
    ``config.yjs_compaction_bytes`` and ``config.yjs_awareness_ttl``."""

    def __init__(self, ctx: Any, *, compaction_bytes: int | None = None,
                 awareness_ttl: int | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store
        config = ctx.config
        self.log: logging.Logger = getattr(ctx, "log", None) or logging.getLogger("duralog.yjs")
        threshold = compaction_bytes or getattr(config, "yjs_compaction_bytes", None)
        self.compactor = Compactor(self.store, threshold or DEFAULT_THRESHOLD, self.log,
                                   getattr(ctx, "metrics", None))
        self.awareness_ttl = (awareness_ttl or getattr(config, "yjs_awareness_ttl", None)
                              or AWARENESS_TTL)
        self.max_body = config.max_body_size
        self.responder = Responder(config.cors_origin)
        self.closing = asyncio.Event()
        self.reader = StreamReader(self.store, self.responder, ReadSettings(
            config.chunk_size, config.long_poll_timeout, config.sse_max_duration),
            self.closing)

    # -- lifecycle -------------------------------------------------------------------
    async def startup(self) -> None:
        self.closing.clear()

    async def shutdown(self) -> None:
        self.closing.set()
        self.store.notifier.wake_all()  # live readers end now
        await self.compactor.shutdown()

    # -- ASGI --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        head = scope["method"] == "HEAD"
        try:
            await self._dispatch(scope, receive, send)
        except Disconnected:
            pass
        except YjsError as err:
            await self.responder.error(send, err, head=head)
        except ProtocolError as err:
            await self.responder.error(send, YjsError(err.status, err.reason,
                                                      headers=err.headers), head=head)
        except Exception:
            self.log.exception("yjs: unhandled error on %s %s", scope.get("method"),
                               scope.get("path"))
            with contextlib.suppress(Exception):
                await self.responder.error(send, YjsError(500, "Internal error"), head=head)

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

    def _route(self, scope: Scope) -> DocStreams:
        """``/{service}/docs/{docPath}`` -> the document's streams; 400 for a bad path (12.2)."""
        raw = relative_path(scope).lstrip(b"/")
        service, sep, rest = raw.partition(b"/")
        docs, sep2, doc_raw = rest.partition(b"/")
        if not sep or not sep2 or docs != b"docs" or not doc_raw:
            raise YjsError(400, "expected a path like /v1/yjs/{service}/docs/{docPath}")
        try:
            name = check_name(service.decode("latin-1"), "service name")
            return DocStreams(name, normalize_doc_path(doc_raw))
        except PathError as err:
            raise YjsError(400, f"Invalid document path: {err}") from None

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "OPTIONS":
            await self.responder.preflight(send)
            return
        streams = self._route(scope)
        req = Request(scope, receive)
        if method not in METHODS.split(", "):
            # 5: other methods are refused, with the spec's error code.
            raise YjsError(405, "Method not allowed", "INVALID_REQUEST", {"allow": METHODS})
        awareness = req.param("awareness")
        if awareness is not None:
            try:
                name = check_name(awareness, "awareness name")
            except PathError as err:
                raise YjsError(400, str(err)) from None
            await self._awareness(req, send, streams, name)
            return
        handler = {"GET": self._get, "HEAD": self._get, "POST": self._post,
                   "PUT": self._put, "DELETE": self._delete}[method]
        await handler(req, send, streams)

    def _doc(self, streams: DocStreams) -> StreamState:
        state = self.store.get(streams.updates)
        if state is None or state.soft_deleted:
            raise doc_not_found()
        return state

    # -- PUT: create a document (5.1) ------------------------------------------------
    async def _put(self, req: Request, send: Send, streams: DocStreams) -> None:
        content_type = req.header("content-type")
        if content_type and H.media_type(content_type) != OCTET:
            exists = self.store.get(streams.updates) is not None
            raise YjsError(409 if exists else 400,
                           "Yjs documents are application/octet-stream")
        ttl_raw = req.header(H.STREAM_TTL)
        expires_raw = req.header(H.STREAM_EXPIRES_AT)
        if ttl_raw is not None and expires_raw is not None:
            raise YjsError(400, "send Stream-TTL or Stream-Expires-At, not both")
        ttl = H.parse_ttl(ttl_raw) if ttl_raw is not None else None
        expires_ts = H.parse_expires_at(expires_raw) if expires_raw is not None else None
        body = await req.body(self.max_body)
        if body:
            await self._validate(body)
        try:
            state, created = await self.store.create(streams.updates, CreateRequest(
                content_type=OCTET, ttl=ttl, expires_at=expires_raw, expires_ts=expires_ts),
                body or None)
        except ProtocolError as err:
            if err.status == 409:
                raise YjsError(409, "document exists with a different configuration") from None
            raise
        # 5.1: the default awareness stream comes with the document.
        await self._ensure_awareness(streams, DEFAULT_AWARENESS)
        headers = [(b"stream-next-offset", state.next_offset.encode())]
        if created:
            await self.compactor.forget(streams)  # a document recreated at this path
            headers.append((b"location", self._location(req).encode()))
        await self.responder.respond(send, 201 if created else 200, headers)

    def _location(self, req: Request) -> str:
        host = req.header("host") or "{}:{}".format(*(req.scope.get("server")
                                                     or ("localhost", 80)))
        return f"{req.scope.get('scheme', 'http')}://{host}{req.full_path().decode('latin-1')}"

    async def _validate(self, body: bytes) -> None:
        if len(body) > _VALIDATE_INLINE:
            await asyncio.to_thread(validate_updates, body)
        else:
            validate_updates(body)

    # -- POST: append framed updates (5.5) -------------------------------------------
    async def _post(self, req: Request, send: Send, streams: DocStreams) -> None:
        producer = H.parse_producer(req.header(H.PRODUCER_ID), req.header(H.PRODUCER_EPOCH),
                                    req.header(H.PRODUCER_SEQ))
        body = await req.body(self.max_body)
        self._doc(streams)  # 5.5: 404 before anything else when there is no document
        if not body:
            raise YjsError(400, "empty body: POST lib0-framed updates")
        await self._validate(body)
        try:
            decision, state = await self.store.append(streams.updates, AppendRequest(
                payload=body, content_type=OCTET, producer=producer))
        except ProtocolError as err:
            if err.status in (404, 410):
                raise doc_not_found() from None
            raise
        if decision.error is not None:
            err = decision.error
            raise YjsError(err.status, err.reason, headers=err.headers)
        headers = [(k.encode(), v.encode()) for k, v in decision.headers.items()]
        headers.append((b"stream-next-offset", state.next_offset.encode()))
        await self.responder.respond(send, decision.status, headers)
        if decision.write:
            try:
                await self.compactor.after_append(streams, state)
            except Exception:  # the write is answered; compaction only waits for the next
                self.log.exception("yjs: could not schedule compaction of %s", streams.key)

    # -- GET / HEAD: snapshot discovery (5.2), snapshots (5.3), updates (5.4) ---------
    async def _get(self, req: Request, send: Send, streams: DocStreams) -> None:
        head = req.method == "HEAD"
        state = self._doc(streams)
        offset = req.param("offset")
        if offset == "snapshot":
            await self._discover(req, send, streams, state, head)
            return
        if offset is not None and offset.endswith("_snapshot"):
            await self._read_snapshot(send, streams, offset, head)
            return
        live = req.param("live")
        if live == "true":
            live = "long-poll"  # as the reference server: the server picks for updates
        if head:
            await self.responder.respond(send, 200, [
                (b"content-type", OCTET.encode()),
                (b"stream-next-offset", state.next_offset.encode()),
                (b"cache-control", b"no-store")], head=True)
            return
        await self.reader.serve(send, req.receive, state, offset, live, req.param("cursor"))

    async def _discover(self, req: Request, send: Send, streams: DocStreams,
                        state: StreamState, head: bool) -> None:
        info = await self.compactor.info(streams, state)
        target = f"{info.snapshot}_snapshot" if info.snapshot else "-1"
        query = [(k, v) for k, v in req.query if k != "offset"]
        query.append(("offset", target))
        location = req.full_path().decode("latin-1") + "?" + urlencode(query)
        # 5.2: a 307 to the snapshot in force, or to -1; cached briefly for reconnect storms.
        await self.responder.respond(send, 307, [
            (b"location", location.encode()),
            (b"cache-control", b"private, max-age=5")], head=head)

    async def _read_snapshot(self, send: Send, streams: DocStreams, offset: str,
                             head: bool) -> None:
        token = parse_snapshot_key(offset)
        snap = self.store.get(streams.snapshot(token)) if token else None
        if token is None or snap is None or snap.soft_deleted:
            # 10: deleted or never there; the client asks offset=snapshot again (8.3).
            raise YjsError(404, "Snapshot not found", "SNAPSHOT_NOT_FOUND")
        body = await read_whole(self.store, snap)
        # 5.3: read on right after the snapshot's last byte (compaction.snapshot_offset).
        await self.responder.respond(send, 200, [
            (b"content-type", OCTET.encode()),
            (b"stream-next-offset", format_offset(parse_offset(token) + 1).encode()),
            (b"cache-control", b"private, max-age=5")], body, head=head)

    # -- DELETE: the document and everything that hangs on it (5.9) --------------------
    async def _delete(self, req: Request, send: Send, streams: DocStreams) -> None:
        self._doc(streams)
        try:
            await self.store.delete(streams.updates)  # MUST
        except ProtocolError:
            raise doc_not_found() from None
        await self.compactor.forget(streams)
        await self._cascade(streams)
        await self.responder.respond(send, 204, [])

    async def _cascade(self, streams: DocStreams) -> None:
        """5.9 SHOULD: snapshots, index and awareness streams. Found by prefix, so orphans
        of a compaction cut short by a crash go too."""
        for state in self.store.list_states():
            if streams.owns(state.path):
                try:
                    await self.store.delete(state.path)
                except ProtocolError:
                    pass  # gone meanwhile
                except Exception:
                    self.log.exception("yjs: cascade delete of %s failed", state.path)

    # -- awareness (5.6-5.8, 5.10) ------------------------------------------------------
    async def _ensure_awareness(self, streams: DocStreams, name: str) -> bool:
        """Create an awareness stream with its TTL; True when it was created now."""
        try:
            _, created = await self.store.create(streams.awareness(name), CreateRequest(
                content_type=OCTET, ttl=self.awareness_ttl), None)
        except ProtocolError as err:
            if err.status != 409:
                raise
            return False
        return created

    async def _awareness(self, req: Request, send: Send, streams: DocStreams,
                         name: str) -> None:
        head = req.method == "HEAD"
        self._doc(streams)  # 5.8, 5.9: nothing of a missing document, awareness included
        path = streams.awareness(name)
        if req.method == "PUT":
            created = await self._ensure_awareness(streams, name)
            await self.responder.respond(send, 201 if created else 200, [])
            return
        if req.method == "POST":
            body = await req.body(self.max_body)
            if not body:
                raise YjsError(400, "empty body: POST lib0-framed awareness updates")
            # 5.7: recreate a stream that expired; 12.4: the bytes are not interpreted.
            for _ in range(3):
                if self.store.get(path) is None:
                    await self._ensure_awareness(streams, name)
                try:
                    _, state = await self.store.append(path, AppendRequest(
                        payload=body, content_type=OCTET))
                except ProtocolError as err:
                    if err.status in (404, 410):
                        continue  # expired or deleted between the two calls
                    raise
                await self.responder.respond(send, 204, [
                    (b"stream-next-offset", state.next_offset.encode())])
                return
            raise YjsError(503, "awareness stream keeps disappearing; retry")
        state = self.store.get(path)
        if state is None or state.soft_deleted:
            raise YjsError(404, "Awareness stream not found", "STREAM_NOT_FOUND")
        if req.method == "DELETE":
            await self.store.delete(path)
            await self.responder.respond(send, 204, [])
            return
        if head:
            await self.responder.respond(send, 200, [
                (b"content-type", OCTET.encode()),
                (b"stream-next-offset", state.next_offset.encode()),
                (b"cache-control", b"no-store")], head=True)
            return
        live = req.param("live")
        if live == "true":
            live = "sse"  # as the reference server: awareness is pushed
        await self.reader.serve(send, req.receive, state, req.param("offset"), live,
                                req.param("cursor"))
