"""Piping an upstream body into a durable stream (PROXY-PROTOCOL.md 8.1-8.3).

Two tasks per proxied response: the pump reads the upstream body (with the
8.1 inactivity timeout) into a queue; the writer appends what the queue holds.
Batching (8.2.1): whatever arrived while the previous append was committing is
written as one append of up to ``batch_bytes``; an idle pipe writes a chunk at
once, so batching never adds latency to a lone token (``batch_linger`` can add
a wait of up to 50 ms for more bytes). Every ending flushes the buffer first
(8.2.2-8.2.4, 8.3), then records the outcome, then closes the stream, so a
reader that sees the close can already read how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httpx

from ..protocol.errors import ProtocolError
from ..protocol.state import AppendRequest
from ..store import Store
from .config import ProxyConfig

COMPLETE = "complete"
ABORTED = "aborted"
TIMEOUT = "timeout"
ERROR = "error"
INTERRUPTED = "interrupted"  # the server stopped (or restarted) mid-body


class _End:
    __slots__ = ("outcome",)

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome


class Pipe:
    """One upstream response being written to one stream."""

    def __init__(self, store: Store, path: str, response: httpx.Response, config: ProxyConfig,
                 on_end: Callable[[str], Awaitable[None]],
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.path = path
        self.response = response
        self.config = config
        self.on_end = on_end
        self.on_bytes = on_bytes
        self.queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
        self.outcome: str | None = None
        self._stop_reason: str | None = None
        self.pump = asyncio.ensure_future(self._pump())
        self.writer = asyncio.ensure_future(self._write())

    async def _pump(self) -> None:
        end = COMPLETE
        try:
            it = self.response.aiter_bytes().__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.config.body_timeout):
                        chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                if chunk:
                    self.queue.put_nowait(chunk)
        except TimeoutError:
            end = TIMEOUT  # 8.1: body inactivity
        except asyncio.CancelledError:
            end = self._stop_reason or ABORTED
        except (httpx.HTTPError, OSError):
            end = ERROR  # 8.2.3: the upstream connection failed mid-body
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self.response.aclose())
            self.queue.put_nowait(_End(end))

    async def _write(self) -> None:
        outcome = ERROR
        buf = bytearray()
        try:
            while True:
                item = await self.queue.get()
                end: _End | None = None
                if isinstance(item, _End):
                    end = item
                else:
                    buf += item
                    # Whatever else is already here joins this append (8.2.1).
                    while len(buf) < self.config.batch_bytes and not self.queue.empty():
                        more = self.queue.get_nowait()
                        if isinstance(more, _End):
                            end = more
                            break
                        buf += more
                    if end is None and self.config.batch_linger > 0:
                        end = await self._linger(buf)
                if buf:
                    # Unsynced unless asked (config.sync_batches): a token is readable
                    # as soon as it is written, not after an fsync; the close that ends
                    # every pipe is a synced append, which flushes the body before it.
                    await self.store.append(self.path, AppendRequest(
                        payload=bytes(buf), sync=self.config.sync_batches))
                    if self.on_bytes is not None:
                        self.on_bytes(len(buf))
                    buf.clear()
                if end is not None:
                    outcome = end.outcome
                    break
        except ProtocolError:
            # 8.2.3: a storage error (or the stream was deleted under us).
            outcome = ERROR
            self.pump.cancel()
        except asyncio.CancelledError:
            outcome = self._stop_reason or ABORTED
            self.pump.cancel()
        self.outcome = outcome
        await self.on_end(outcome)

    async def _linger(self, buf: bytearray) -> _End | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.batch_linger
        while len(buf) < self.config.batch_bytes:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    item = await self.queue.get()
            except TimeoutError:
                return None
            if isinstance(item, _End):
                return item
            buf += item
        return None

    def stop(self, reason: str) -> None:
        """Cut the upstream (8.3): what was read so far is still written, then the end."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.pump.cancel()

    async def wait(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.writer)

    @property
    def done(self) -> bool:
        return self.writer.done()
