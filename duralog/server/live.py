"""Live reads: long-poll (PROTOCOL.md 5.7) and SSE (5.8).

Readers wait on the store's notifier (a wake-up per append, not a copy per
reader) while a ``DisconnectWatcher`` notices clients that leave. ``closing``
is set at shutdown so every waiting reader ends with its normal answer.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import time
from collections.abc import Callable

from ..protocol import cursor as cursors
from ..protocol import headers as H
from ..protocol import jsonmode, sse
from ..protocol.errors import ProtocolError
from ..protocol.offsets import format_offset
from ..protocol.state import StreamState
from ..store import Store
from .config import Config
from .http import DisconnectWatcher, Headers, Receive, Request, Responses, Send
from .observe import ServerMetrics
from .streams import StreamOps

#: Most bytes of encoded SSE events kept for sharing between readers (4 MiB: a dozen
#: catch-up events of binary data; fan-out at the tail shares small ones).
SSE_SHARED_BYTES = 4 << 20
#: Most stream bytes one SSE data event carries (issue 9, part 4). Encoding grows
#: data: base64 by 4/3, a text line break into "\ndata:" (6x for empty lines). A
#: whole 1 MiB chunk of empty lines was 6 MiB of event built in one go, 40 to 200 ms
#: of the loop; a quarter of that is a few ms, and a slow reader holds at most one
#: such event (341 KiB for binary data) besides what the socket took.
SSE_STEP = 256 << 10


async def wait_past(store: Store, receive: Receive, state: StreamState, pos: int,
                    timeout: float, closing: Callable[[], bool],
                    current: Callable[[StreamState], StreamState]) -> StreamState | None:
    """The long-poll wait (PROTOCOL.md 5.7): until the stream has bytes past ``pos``, is
    closed, ``timeout`` seconds pass or the server is ``closing``. Returns the stream's
    latest state (the caller answers with data, or 204 at the tail), or None if the
    client left. ``current`` re-reads the state after each wake-up and raises if the
    stream is gone. Shared by the stream API and mounts that serve streams of their
    own (the proxy)."""
    deadline = time.monotonic() + timeout
    watcher = DisconnectWatcher(receive)
    try:
        while not state.closed:
            left = deadline - time.monotonic()
            if left <= 0 or closing():
                break
            await watcher.wait(store.notifier.future(state.id), left)
            if watcher.gone:
                return None
            state = current(state)
            if pos < state.tail:
                break
    finally:
        watcher.cancel()
    return state


def at_tail_headers(state: StreamState, pos: int, client_cursor: str | None) -> Headers:
    """5.7: the 204 of a long-poll that timed out, or reached a closed stream's tail."""
    headers: Headers = [
        (b"stream-next-offset", format_offset(pos).encode()),
        (b"stream-up-to-date", b"true"),
        (b"cache-control", b"no-store"),
    ]
    if state.closed:
        headers.append((b"stream-closed", b"true"))
    else:
        headers.append((b"stream-cursor", cursors.next_cursor(client_cursor).encode()))
    return headers


class LiveReads:
    """Long-poll and SSE readers of one ``Store``."""

    def __init__(self, config: Config, store: Store, http: Responses, ops: StreamOps,
                 closing: asyncio.Event, metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.store = store
        self.http = http
        self.ops = ops
        self.closing = closing
        self.metrics = metrics
        # Encoded SSE data events shared by readers at the same position (see _sse_data).
        self._sse_events: dict[tuple[int, int, int], tuple[bytes, int]] = {}
        self._sse_event_bytes = 0
        # Events being read and encoded now, for readers that ask for the same one.
        self._sse_pending: dict[tuple[int, int, int], asyncio.Future[None]] = {}

    async def read(self, req: Request, send: Send, state: StreamState, pos: int, mode: str,
                   client_cursor: str | None) -> None:
        metrics = self.metrics
        if metrics is None:
            if mode == "sse":
                await self._sse(req, send, state, pos, client_cursor)
            else:
                await self._long_poll(req, send, state, pos, client_cursor)
            return
        readers = metrics.live_readers
        readers[mode] += 1
        try:
            if mode == "sse":
                await self._sse(req, send, state, pos, client_cursor)
            else:
                await self._long_poll(req, send, state, pos, client_cursor)
        finally:
            readers[mode] -= 1

    def begin_shutdown(self) -> None:
        """Every waiting reader ends now with its normal answer: a long-poll its 204 at
        the tail (5.7), an SSE reader a last control event (5.8), then the end."""
        self.closing.set()
        self.store.notifier.wake_all()

    async def _long_poll(self, req: Request, send: Send, state: StreamState, pos: int,
                         client_cursor: str | None) -> None:
        cursor = cursors.next_cursor(client_cursor)
        if pos < state.tail:
            # 5.7: data already there (including a fork's inherited range) comes at once.
            await self.ops.catch_up(req, send, state, pos, format_offset(pos), cursor)
            return
        def current(state: StreamState) -> StreamState:
            now = self.ops.current(req.name, state.id)
            if now is None:
                raise ProtocolError(404, "stream was deleted")
            return now

        waited = await wait_past(self.store, req.receive, state, pos,
                                 self.config.long_poll_timeout, self.closing.is_set, current)
        if waited is None:
            return  # the client left
        state = waited
        if pos < state.tail:
            await self.ops.catch_up(req, send, state, pos, format_offset(pos),
                                    cursors.next_cursor(client_cursor))
            return
        await self.http.respond(send, 204, at_tail_headers(state, pos, client_cursor))

    async def _sse(self, req: Request, send: Send, state: StreamState, pos: int,
                   client_cursor: str | None) -> None:
        binary = not H.is_text_like(state.content_type)
        is_json = H.is_json(state.content_type)
        headers = [
            *self.http.base_headers,
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
        watcher = DisconnectWatcher(req.receive)
        first = True
        behind = False  # the last event left more to send: a catch-up in several chunks
        try:
            while not watcher.gone:
                current = self.ops.current(req.name, state.id)
                if current is None:
                    break  # deleted: end the stream; a reconnect gets 404
                state = current
                if pos < state.start:
                    break  # retention dropped what this reader had not read: a reconnect gets 410
                if pos < state.tail:
                    if behind:
                        # Catching up over many chunks (issue 9): an empty write waits
                        # until the client has taken the last chunk (the server's flow
                        # control), so a slow reader holds one encoded chunk, not two;
                        # and yielding lets the disconnect watcher see a reader that
                        # left, which then stops costing work at once.
                        await send({"type": "http.response.body", "body": b"",
                                    "more_body": True})
                        await asyncio.sleep(0)
                        if watcher.gone:
                            break
                    before = pos
                    data_event, pos = await self._sse_data(state, pos, encoding, decoder)
                    if self.metrics is not None:
                        self.metrics.read_bytes += pos - before
                    up_to_date = pos >= state.tail
                    behind = not up_to_date
                    closed = state.closed and up_to_date
                    await send({"type": "http.response.body", "more_body": True,
                                 "body": data_event + sse.control_event(
                                     format_offset(pos), cursor=cursors.next_cursor(client_cursor),
                                     up_to_date=up_to_date, closed=closed)})
                    first = False
                    if closed or self.closing.is_set():
                        break  # at shutdown: that control event was the last one
                    continue
                just_sent = state.closed or first
                if just_sent:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse.control_event(
                                    format_offset(pos), cursor=cursors.next_cursor(client_cursor),
                                    up_to_date=True, closed=state.closed)})
                    first = False
                    if state.closed:
                        break
                left = deadline - time.monotonic()
                if self.closing.is_set():
                    if not just_sent:
                        # Shutdown: a last control event, so the client knows where to
                        # resume (5.8), then the end of the response.
                        await send({"type": "http.response.body", "more_body": True,
                                    "body": sse.control_event(
                                        format_offset(pos),
                                        cursor=cursors.next_cursor(client_cursor),
                                        up_to_date=True, closed=False)})
                    break
                if left <= 0:
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
        if not shareable:
            return await self._sse_encode(state, pos, encoding, decoder, False, key)
        while True:
            hit = self._sse_events.get(key)
            if hit is not None:
                return hit
            pending = self._sse_pending.get(key)
            if pending is None:
                break
            # Another reader is reading and encoding this very event (a store that
            # reads in threads, like sqlite, lets many readers miss the cache at
            # once: 240 readers starting together encoded the same event 240 times
            # and held the loop 100-500 ms in all). Wait for it, then look again;
            # if it was not kept (it failed, or the cache was cleared), go ahead.
            await asyncio.wait([pending])
        done = asyncio.get_running_loop().create_future()
        self._sse_pending[key] = done
        try:
            return await self._sse_encode(state, pos, encoding, decoder, True, key)
        finally:
            del self._sse_pending[key]
            done.set_result(None)

    async def _sse_encode(self, state: StreamState, pos: int, encoding: str,
                          decoder: codecs.IncrementalDecoder, shareable: bool,
                          key: tuple[int, int, int]) -> tuple[bytes, int]:
        chunk = await self.store.read(state, pos, min(self.config.chunk_size, SSE_STEP))
        if encoding == "json":
            payload = jsonmode.wrap(chunk.parts).decode("utf-8")
        elif encoding == "base64":
            payload = base64.b64encode(b"".join(chunk.parts)).decode("ascii")
        else:
            payload = decoder.decode(b"".join(chunk.parts))
        result = (sse.data_event(payload), chunk.next_pos)
        if shareable and (encoding != "text" or decoder.getstate() == (b"", 0)):
            self._sse_event_bytes += len(result[0])
            if self._sse_event_bytes > SSE_SHARED_BYTES:
                self._sse_events.clear()
                self._sse_event_bytes = len(result[0])
            self._sse_events[key] = result
        return result

