"""Reading proxy streams (PROXY-PROTOCOL.md 4.2, 4.4): the base protocol's read path.

Proxy streams are ordinary streams; these handlers serve catch-up reads,
long-poll and SSE (PROTOCOL.md 5.6-5.8) through the Store interface alone, and
add what the proxy adds: ``Upstream-Content-Type`` and, once the stream is
closed, ``Proxy-Outcome`` (how the upstream body ended: ``complete``,
``aborted``, ``timeout``, ``error`` or ``interrupted`` by a server restart).
"""

from __future__ import annotations

import base64
import codecs
import time
from typing import TYPE_CHECKING

from ..protocol import cursor as cursors
from ..protocol import headers as H
from ..protocol import sse
from ..protocol.errors import ProtocolError
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.state import StreamState
from ..server import live
from ..server.http import DisconnectWatcher
from .asgi import Headers, Request, Send
from .errors import ProxyError

if TYPE_CHECKING:
    from .server import ProxyApp

import orjson


def _proxy_headers(app: ProxyApp, stream_id: str, state: StreamState, at_end: bool) -> Headers:
    out: Headers = []
    meta = app.meta.get(stream_id)
    if meta is not None and meta.upstream_content_type:
        out.append((b"upstream-content-type", meta.upstream_content_type.encode("latin-1")))
    if at_end and state.closed and meta is not None and meta.outcome:
        out.append((b"proxy-outcome", meta.outcome.encode()))
    return out


async def head(app: ProxyApp, send: Send, stream_id: str, state: StreamState) -> None:
    """4.4: the base protocol's HEAD (5.5) plus Upstream-Content-Type."""
    headers: Headers = [
        (b"content-type", state.content_type.encode()),
        (b"stream-next-offset", state.next_offset.encode()),
        (b"cache-control", b"no-store"),
        *_proxy_headers(app, stream_id, state, True),
    ]
    if state.closed:
        headers.append((b"stream-closed", b"true"))
    await app.respond(send, 200, headers, b"", head=True)


async def get(app: ProxyApp, req: Request, send: Send, stream_id: str,
              state: StreamState) -> None:
    offset = req.query.get("offset", START) or START
    live = req.query.get("live")
    cursor = req.query.get("cursor")
    if live not in (None, "long-poll", "sse"):
        raise ProxyError(400, "INVALID_REQUEST", "live must be long-poll or sse")
    try:
        pos = 0 if offset == START else state.tail if offset == NOW else parse_offset(offset)
    except ProtocolError:
        raise ProxyError(400, "INVALID_REQUEST", "malformed offset") from None
    if pos > state.tail:
        raise ProxyError(400, "INVALID_REQUEST", "offset is past the end of the stream")
    app.store.touch(state)
    if live == "sse":
        await _sse(app, req, send, stream_id, state, pos, cursor)
    elif live == "long-poll":
        await _long_poll(app, req, send, stream_id, state, pos, cursor)
    else:
        await _catch_up(app, send, stream_id, state, pos, None)


async def _catch_up(app: ProxyApp, send: Send, stream_id: str, state: StreamState, pos: int,
                    cursor: str | None) -> None:
    chunk = await app.store.read(state, pos, app.ctx.config.chunk_size, whole=False)
    up_to_date = chunk.next_pos >= state.tail
    headers: Headers = [
        (b"content-type", state.content_type.encode()),
        (b"stream-next-offset", format_offset(chunk.next_pos).encode()),
        # Reads are capability-URL protected: no shared cache may keep them (12.2).
        (b"cache-control", b"private, no-store"),
        *_proxy_headers(app, stream_id, state, up_to_date),
    ]
    if up_to_date:
        headers.append((b"stream-up-to-date", b"true"))
        if state.closed:
            headers.append((b"stream-closed", b"true"))
    if cursor is not None:
        headers.append((b"stream-cursor", cursor.encode()))
    await app.respond(send, 200, headers, b"".join(chunk.parts))


async def _long_poll(app: ProxyApp, req: Request, send: Send, stream_id: str,
                     state: StreamState, pos: int, client_cursor: str | None) -> None:
    if pos < state.tail:
        await _catch_up(app, send, stream_id, state, pos, cursors.next_cursor(client_cursor))
        return
    waited = await live.wait_past(app.store, req.receive, state, pos,
                                  app.ctx.config.long_poll_timeout, lambda: app.closing,
                                  lambda s: app.current(stream_id, s.id))
    if waited is None:
        return  # the client left
    state = waited
    if pos < state.tail:
        await _catch_up(app, send, stream_id, state, pos, cursors.next_cursor(client_cursor))
        return
    # PROTOCOL.md 5.7: a timeout, or a closed stream at its tail: 204.
    await app.respond(send, 204, live.at_tail_headers(state, pos, client_cursor)
                      + _proxy_headers(app, stream_id, state, True))


def _control(app: ProxyApp, stream_id: str, pos: int, cursor: str | None, up_to_date: bool,
             closed: bool) -> bytes:
    event = sse.control_event(format_offset(pos), cursor=cursor, up_to_date=up_to_date,
                              closed=closed)
    meta = app.meta.get(stream_id)
    if closed and meta is not None and meta.outcome:
        # The final control event says how the upstream body ended, as
        # Proxy-Outcome does for plain reads.
        fields = orjson.loads(event.split(b"data:", 1)[1])
        fields["proxyOutcome"] = meta.outcome
        event = b"event: control\ndata:" + orjson.dumps(fields) + b"\n\n"
    return event


async def _sse(app: ProxyApp, req: Request, send: Send, stream_id: str, state: StreamState,
               pos: int, client_cursor: str | None) -> None:
    # PROTOCOL.md 5.8: text streams as text, others as base64 (and say so).
    binary = not H.is_text_like(state.content_type)
    headers: Headers = [
        *app.base_headers,
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        *_proxy_headers(app, stream_id, state, False),
    ]
    if binary:
        headers.append((b"stream-sse-data-encoding", b"base64"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    config = app.ctx.config
    deadline = time.monotonic() + config.sse_max_duration
    watcher = DisconnectWatcher(req.receive)
    first = True
    try:
        while not watcher.gone:
            try:
                state = app.current(stream_id, state.id)
            except ProxyError:
                break  # deleted: end; a reconnect gets 404
            cursor = cursors.next_cursor(client_cursor)
            if pos < state.tail:
                chunk = await app.store.read(state, pos, config.chunk_size, whole=False)
                data = b"".join(chunk.parts)
                payload = (base64.b64encode(data).decode("ascii") if binary
                           else decoder.decode(data))
                pos = chunk.next_pos
                up_to_date = pos >= state.tail
                closed = state.closed and up_to_date
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse.data_event(payload) + _control(
                                app, stream_id, pos, cursor, up_to_date, closed)})
                first = False
                if closed:
                    break
                continue
            if state.closed or first:
                await send({"type": "http.response.body", "more_body": True,
                            "body": _control(app, stream_id, pos, cursor, True, state.closed)})
                first = False
                if state.closed:
                    break
            left = deadline - time.monotonic()
            if left <= 0 or app.closing:
                break
            woke = await watcher.wait(app.store.notifier.future(state.id),
                                      min(left, config.long_poll_timeout))
            if not woke:
                first = True  # keep-alive: up to date, fresh cursor
    finally:
        watcher.cancel()
    if not watcher.gone:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
