"""Reading a document's or awareness stream's bytes: catch-up, long-poll, SSE.

YJS-PROTOCOL.md 5.4 and 5.6 pass reads through to the base protocol
(PROTOCOL.md 5.6-5.8). This module does that over the Store interface only
(``read``, the notifier, ``get``), so the Yjs sub-app needs nothing of the core
stream handlers and works on every backend. Both stream kinds are
``application/octet-stream``, so SSE data is always base64 (PROTOCOL.md 5.8).

Reads never cut an append in two (``whole=True``): a response ends on a frame
boundary, as on the reference server, whose messages are never split. Clients
such as the TypeScript provider decode each response on its own (7.3).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass

from ..protocol import cursor as cursors
from ..protocol import sse
from ..protocol.errors import ProtocolError
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.state import StreamState
from ..server.http import DisconnectWatcher
from ..store import Store
from .asgi import Headers, Receive, Responder, Send, YjsError

_SHARED_EVENT_BYTES = 8 << 20  # most bytes of encoded SSE events kept for sharing


@dataclass(slots=True)
class ReadSettings:
    chunk_size: int
    long_poll_timeout: float
    sse_max_duration: float


def start_position(offset: str | None, state: StreamState) -> int:
    """PROTOCOL.md 8: ``-1``, ``now`` or a token this server minted."""
    if offset is None or offset == START:
        return 0
    if offset == NOW:
        return state.tail
    try:
        pos = parse_offset(offset)
    except ProtocolError:
        raise YjsError(400, "invalid offset format") from None
    if pos > state.tail:
        raise YjsError(400, "offset is beyond the end of the stream")
    return pos


async def read_whole(store: Store, state: StreamState, start: int = 0,
                     end: int | None = None, chunk: int = 1 << 20) -> bytes:
    """Every byte of a stream from ``start`` to ``end`` (the tail by default)."""
    stop = state.tail if end is None else end
    parts: list[bytes] = []
    pos = start
    while pos < stop:
        got = await store.read(state, pos, min(chunk, stop - pos))
        if got.next_pos <= pos:
            break
        parts.extend(got.parts)
        pos = got.next_pos
    return b"".join(parts)


class StreamReader:
    """Serves GETs of one Store stream in the base protocol's three modes."""

    def __init__(self, store: Store, responder: Responder, settings: ReadSettings,
                 closing: asyncio.Event) -> None:
        self.store = store
        self.responder = responder
        self.settings = settings
        self.closing = closing
        self._events: dict[tuple[int, int, int], tuple[bytes, int]] = {}
        self._event_bytes = 0

    def _current(self, path: str, stream_id: int) -> StreamState | None:
        state = self.store.get(path)
        if state is None or state.id != stream_id or state.soft_deleted:
            return None
        return state

    async def serve(self, send: Send, receive: Receive, state: StreamState,
                    offset: str | None, live: str | None, cursor: str | None,
                    *, head: bool = False) -> None:
        if live not in (None, "long-poll", "sse"):
            raise YjsError(400, "live must be long-poll or sse")
        if live is not None and offset is None:
            raise YjsError(400, f"live={live} needs an offset")
        self.store.touch(state)  # PROTOCOL.md 5.1: reads slide a TTL (awareness)
        pos = start_position(offset, state)
        if live == "sse":
            await self._sse(send, receive, state, pos, cursor)
        elif live == "long-poll":
            await self._long_poll(send, receive, state, pos, cursor)
        else:
            await self._catch_up(send, state, pos, None, head=head)

    async def _catch_up(self, send: Send, state: StreamState, pos: int, cursor: str | None,
                        *, head: bool = False) -> None:
        chunk = await self.store.read(state, pos, self.settings.chunk_size, whole=True)
        up_to_date = chunk.next_pos >= state.tail
        headers: Headers = [
            (b"content-type", b"application/octet-stream"),
            (b"stream-next-offset", format_offset(chunk.next_pos).encode()),
            # PROTOCOL.md 10.1: bytes at a position never change; the empty tail does.
            (b"cache-control", b"public, max-age=60" if chunk.parts else b"no-store"),
        ]
        if up_to_date:
            headers.append((b"stream-up-to-date", b"true"))
        if cursor is not None:
            headers.append((b"stream-cursor", cursor.encode()))
        await self.responder.respond(send, 200, headers, b"".join(chunk.parts), head=head)

    async def _long_poll(self, send: Send, receive: Receive, state: StreamState, pos: int,
                         client_cursor: str | None) -> None:
        if pos < state.tail:
            await self._catch_up(send, state, pos, cursors.next_cursor(client_cursor))
            return
        deadline = time.monotonic() + self.settings.long_poll_timeout
        watcher = DisconnectWatcher(receive)
        path = state.path
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.closing.is_set():
                    break
                await watcher.wait(self.store.notifier.future(state.id), left)
                if watcher.gone:
                    return
                current = self._current(path, state.id)
                if current is None:
                    raise YjsError(404, "stream was deleted", "DOCUMENT_NOT_FOUND")
                state = current
                if pos < state.tail:
                    await self._catch_up(send, state, pos, cursors.next_cursor(client_cursor))
                    return
        finally:
            watcher.cancel()
        # 5.4: a timeout answers 204 with the tail and Stream-Up-To-Date.
        await self.responder.respond(send, 204, [
            (b"stream-next-offset", format_offset(pos).encode()),
            (b"stream-up-to-date", b"true"),
            (b"stream-cursor", cursors.next_cursor(client_cursor).encode()),
            (b"cache-control", b"no-store"),
        ])

    async def _data_event(self, state: StreamState, pos: int) -> tuple[bytes, int]:
        """The SSE data event from ``pos`` and the position after it.

        Every editor following a document asks for the same event after an append,
        so it is read and base64-encoded once and shared (fan-out is a wake-up, not
        a copy per reader); the control event after it is each reader's own.
        """
        key = (state.id, pos, state.tail)
        hit = self._events.get(key)
        if hit is not None:
            return hit
        chunk = await self.store.read(state, pos, self.settings.chunk_size, whole=True)
        payload = base64.b64encode(b"".join(chunk.parts)).decode("ascii")
        result = (sse.data_event(payload), chunk.next_pos)
        self._event_bytes += len(result[0])
        if self._event_bytes > _SHARED_EVENT_BYTES:
            self._events.clear()
            self._event_bytes = len(result[0])
        self._events[key] = result
        return result

    async def _sse(self, send: Send, receive: Receive, state: StreamState, pos: int,
                   client_cursor: str | None) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            *self.responder.base,
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            # PROTOCOL.md 5.8: binary data travels base64 and says so.
            (b"stream-sse-data-encoding", b"base64"),
        ]})
        deadline = time.monotonic() + self.settings.sse_max_duration
        keepalive = self.settings.long_poll_timeout
        watcher = DisconnectWatcher(receive)
        path = state.path
        announce = True
        try:
            while not watcher.gone:
                current = self._current(path, state.id)
                if current is None:
                    break  # deleted: end the stream; a reconnect gets 404
                state = current
                if pos < state.tail:
                    data_event, pos = await self._data_event(state, pos)
                    await send({"type": "http.response.body", "more_body": True,
                                "body": data_event + sse.control_event(
                                    format_offset(pos),
                                    cursor=cursors.next_cursor(client_cursor),
                                    up_to_date=pos >= state.tail, closed=False)})
                    announce = False
                    continue
                if announce:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse.control_event(
                                    format_offset(pos), cursor=cursors.next_cursor(client_cursor),
                                    up_to_date=True, closed=False)})
                    announce = False
                left = deadline - time.monotonic()
                if left <= 0 or self.closing.is_set():
                    break
                woke = await watcher.wait(self.store.notifier.future(state.id),
                                          min(left, keepalive))
                if not woke:
                    announce = True  # keep-alive: still up to date, fresh cursor
        finally:
            watcher.cancel()
        if not watcher.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
