"""Keep a ``pycrdt.Doc`` in sync with a document on a Yjs Durable Streams server.

``AsyncYjsProvider`` (asyncio) and ``YjsProvider`` (blocking, runs the async one
on a private event loop thread) follow YJS-PROTOCOL.md 9:

1. ``PUT`` the document (idempotent, 5.1);
2. ``GET ?offset=snapshot`` and follow the 307 (5.2): load the snapshot and read
   on from its ``Stream-Next-Offset`` (5.3), or read from ``-1``; a snapshot that
   vanished in between (404, 8.3) sends us back to discovery;
3. follow the updates live (SSE or long-poll), applying each lib0 frame;
4. send every local change as one lib0 frame through an idempotent producer
   (PROTOCOL.md 5.2.1): a retried POST never applies twice;
5. optionally publish our awareness state (and a heartbeat) and apply the
   others' from ``?awareness=<name>`` read live from ``now`` (9.4).

Remote updates are applied in a transaction whose origin is this provider, so
they are not sent back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ..client import AsyncDurableStream, AsyncIdempotentProducer, DurableStreamError
from ..client import StreamNotFound as _NotFound
from .framing import FrameBuffer, FramingError, frame, iter_frames

log = logging.getLogger("duralog.yjs.provider")
OCTET = "application/octet-stream"
AWARENESS_HEARTBEAT = 15.0  # seconds, as the TypeScript provider
AWARENESS_OUTDATED = 30.0  # y-protocols: a state not renewed for this long is gone
AWARENESS_CHECK = 3.0  # how often outdated states are looked for


class SyncError(Exception):
    """The provider could not load or follow the document."""


class AsyncYjsProvider:
    """Sync ``doc`` with ``{base_url}/docs/{doc_id}`` (``base_url`` ends in the service:
    ``http://host:4437/v1/yjs/my-service``).

    ``async with AsyncYjsProvider(doc, url, "notes/today") as provider:`` connects
    and waits until the document is loaded; edits to ``doc`` are then sent and
    others' edits arrive by themselves. ``awareness`` (a ``pycrdt.Awareness`` of
    ``doc``) publishes and receives presence.
    """

    def __init__(self, doc: Any, base_url: str, doc_id: str, *, awareness: Any = None,
                 awareness_name: str = "default", live: str = "sse",
                 headers: dict[str, str] | None = None, producer_id: str | None = None,
                 lock: Any = None, timeout: float = 90.0,
                 awareness_heartbeat: float = AWARENESS_HEARTBEAT,
                 awareness_timeout: float = AWARENESS_OUTDATED,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if live not in ("sse", "long-poll"):
            raise ValueError("live must be 'sse' or 'long-poll'")
        self.doc = doc
        self.awareness = awareness
        self.doc_url = f"{base_url.rstrip('/')}/docs/{doc_id.strip('/')}"
        self.awareness_name = awareness_name
        self.live = live
        self.headers = dict(headers or {})
        self.producer_id = producer_id or f"py-{doc_id}-{doc.client_id}"
        self.timeout = timeout
        self.transport = transport  # an httpx transport of your own (proxies, TLS, tests)
        self.awareness_heartbeat = awareness_heartbeat
        self.awareness_timeout = awareness_timeout
        self.offset: str | None = None  # where the next read of updates starts
        self.synced = asyncio.Event()
        self.errors: list[Exception] = []
        self._lock = lock or contextlib.nullcontext()
        self._origin = random.randrange(1 << 30, 1 << 31)
        self._client: httpx.AsyncClient | None = None
        self._producer: AsyncIdempotentProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: list[bytes] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._awareness_sub: str | None = None
        self._awareness_dirty = asyncio.Event()
        self._on_remote: list[Callable[[], None]] = []
        self._resend_all = False
        self._frames = FrameBuffer()  # a frame a read cut short waits for the rest
        # Changes made before we connect are sent once we do.
        if doc.get_state() != b"\x00":
            self._backlog.append(doc.get_update())
        self._doc_sub = doc.observe(self._on_local)

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> AsyncYjsProvider:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def connect(self) -> None:
        """Create the document if needed, load it, and start following it."""
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.synced.clear()
        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers,
                                         transport=self.transport)
        try:
            resp = await self._client.put(self.doc_url, headers={"content-type": OCTET})
            if resp.status_code not in (200, 201, 409):
                raise SyncError(f"PUT {self.doc_url}: {resp.status_code} {resp.text}")
            if self.offset is None:
                await self._load()  # a reconnect resumes where it stopped instead
            stream = AsyncDurableStream(self.doc_url, content_type=OCTET, client=self._client)
            self._producer = AsyncIdempotentProducer(
                stream, self.producer_id, content_type=OCTET, auto_claim=True,
                on_error=self._producer_failed)
            if self._resend_all:
                with self._lock:
                    self._backlog = [self.doc.get_update()]
                self._resend_all = False
            for update in self._backlog:
                self._producer.append(frame(update))
            self._backlog.clear()
            self._tasks.append(asyncio.create_task(self._follow()))
            if self.awareness is not None:
                self._start_awareness()
            await self.synced.wait()
        except BaseException:
            await self._teardown()
            raise

    async def close(self) -> None:
        """Send what is pending, say goodbye on awareness, stop following."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.flush(self.timeout)
        if self.awareness is not None and self._client is not None:
            with contextlib.suppress(Exception):
                self.awareness.set_local_state(None)
                await self._post_awareness([self.awareness.client_id])
        await self._teardown()

    async def disconnect(self) -> None:
        """Stop without the goodbye; ``connect()`` again resumes (tests of reconnects)."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.flush(self.timeout)
        await self._teardown()

    def destroy(self) -> None:
        """Stop observing the document (after ``close``)."""
        with contextlib.suppress(Exception):
            self.doc.unobserve(self._doc_sub)

    async def _teardown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._awareness_sub is not None and self.awareness is not None:
            self.awareness.unobserve(self._awareness_sub)
            self._awareness_sub = None
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer._stop(), 5.0)
            except Exception:
                # A server that stays away: stop retrying. What it may have missed is
                # sent again as the whole document state on the next connect (applying
                # an update twice changes nothing in Yjs).
                for task in (producer._dispatcher, *producer._tasks):
                    task.cancel()
                self._resend_all = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def flush(self) -> None:
        """Wait until every local change so far is stored on the server."""
        if self._producer is not None:
            await self._producer.flush(self.timeout)

    def _producer_failed(self, exc: Exception) -> None:
        log.warning("yjs provider: sending to %s failed: %s", self.doc_url, exc)
        self.errors.append(exc)

    # -- loading (9.2) ------------------------------------------------------------------
    async def _load(self) -> None:
        assert self._client is not None
        for _ in range(10):
            resp = await self._client.get(self.doc_url, params={"offset": "snapshot"},
                                          follow_redirects=False)
            if resp.status_code == 404:
                raise SyncError(f"document {self.doc_url} does not exist")
            location = resp.headers.get("location") if resp.status_code == 307 else None
            target = httpx.URL(self.doc_url).join(location) if location else None
            offset = target.params.get("offset") if target is not None else "-1"
            if not offset or not offset.endswith("_snapshot"):
                self.offset = offset or "-1"
                return
            snap = await self._client.get(self.doc_url, params={"offset": offset})
            if snap.status_code == 404:
                continue  # 8.3: deleted by a newer compaction; discover again
            if snap.status_code != 200:
                raise SyncError(f"snapshot read: {snap.status_code} {snap.text}")
            self._apply_remote([snap.content])
            self.offset = snap.headers["stream-next-offset"]
            return
        raise SyncError("snapshot discovery kept pointing at missing snapshots")

    async def _follow(self) -> None:
        """Catch up from ``self.offset`` (then the document is synced), then follow live;
        reconnects on its own."""
        assert self._client is not None
        stream = AsyncDurableStream(self.doc_url, content_type=OCTET, client=self._client)
        while True:
            try:
                # A catch-up read ends once up to date, even with nothing new: that
                # is when the document is loaded.
                live = self.live if self.synced.is_set() else None
                reader = stream.read(self.offset or "-1", live=live)  # type: ignore[arg-type]
                async for chunk in reader:
                    if chunk.data:
                        self._apply_framed(chunk.data)
                    self.offset = chunk.offset
                    for callback in list(self._on_remote):
                        callback()
                self.offset = reader.offset
                if reader.up_to_date:
                    self.synced.set()
            except asyncio.CancelledError:
                raise
            except _NotFound as err:
                self.errors.append(err)
                self.synced.set()  # nothing more will come: wake waiters
                return
            except (DurableStreamError, httpx.HTTPError) as err:
                log.info("yjs provider: reading %s failed (%s); retrying", self.doc_url, err)
                await asyncio.sleep(0.5)

    def _apply_framed(self, data: bytes) -> None:
        try:
            updates = self._frames.feed(data)
        except FramingError as err:
            # 12.3: untrusted input; the server refuses such bytes, so this is a bug.
            self.errors.append(err)
            self._frames = FrameBuffer()
            return
        self._apply_remote(updates)

    def _apply_remote(self, updates: list[bytes]) -> None:
        with self._lock, self.doc.transaction(origin=self._origin):
            for update in updates:
                try:
                    self.doc.apply_update(update)
                except ValueError as err:
                    self.errors.append(err)

    def _on_local(self, event: Any) -> None:
        if event.transaction.origin() in (self._origin, hash(self._origin)):
            return  # came from the server
        update = event.update
        if not update or update == b"\x00\x00":
            return
        loop = self._loop
        if loop is not None and _running_loop() is not loop:
            loop.call_soon_threadsafe(self._send, update)  # an edit from another thread
        else:
            self._send(update)

    def _send(self, update: bytes) -> None:
        if self._producer is None:
            self._backlog.append(update)
            return
        try:
            self._producer.append(frame(update))
        except Exception as err:  # the producer failed for good; keep it for a reconnect
            self.errors.append(err)
            self._backlog.append(update)

    # -- awareness (9.4) ----------------------------------------------------------------
    def _start_awareness(self) -> None:
        self._awareness_sub = self.awareness.observe(self._on_awareness)
        self._awareness_dirty.set()
        self._tasks.append(asyncio.create_task(self._publish_awareness()))
        self._tasks.append(asyncio.create_task(self._follow_awareness()))

    def _on_awareness(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        if topic != "update" or change[1] != "local":
            return
        loop = self._loop
        if loop is not None and _running_loop() is not loop:
            loop.call_soon_threadsafe(self._awareness_dirty.set)
        else:
            self._awareness_dirty.set()

    async def _publish_awareness(self) -> None:
        """Send our state when it changes, and renew it every 15 s (a new clock, as
        y-protocols does: others drop a state not renewed for 30 s, and ignore a
        resend with the same clock). Also drops others' states not renewed for 30 s."""
        last_sent = 0.0
        loop = asyncio.get_running_loop()
        while True:
            changed = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._awareness_dirty.wait(),
                                       min(AWARENESS_CHECK, self.awareness_timeout / 4))
                changed = True
            self._awareness_dirty.clear()
            self._drop_outdated()
            local = self.awareness.get_local_state()
            due = loop.time() - last_sent >= self.awareness_heartbeat
            if local is None or not (changed or due):
                continue
            if not changed:
                with self._lock:
                    self.awareness.set_local_state(local)  # renewed: clock + 1
                self._awareness_dirty.clear()
            try:
                await self._post_awareness([self.awareness.client_id])
                last_sent = loop.time()
            except Exception as err:  # presence is best effort; the loop goes on
                log.info("yjs provider: awareness post failed: %s", err)

    def _drop_outdated(self) -> None:
        now = int(time.time() * 1000)
        gone = [client for client, meta in self.awareness.meta.items()
                if client != self.awareness.client_id and client in self.awareness.states
                and now - meta["lastUpdated"] >= self.awareness_timeout * 1000]
        if gone:
            with self._lock:
                self.awareness.remove_awareness_states(gone, "timeout")

    async def _post_awareness(self, clients: list[int]) -> None:
        assert self._client is not None
        body = frame(self.awareness.encode_awareness_update(clients))
        resp = await self._client.post(self.doc_url, params={"awareness": self.awareness_name},
                                       content=body, headers={"content-type": OCTET})
        if resp.status_code >= 400:
            raise SyncError(f"awareness POST: {resp.status_code} {resp.text}")

    async def _follow_awareness(self) -> None:
        assert self._client is not None
        stream = AsyncDurableStream(self.doc_url, content_type=OCTET, client=self._client,
                                    params={"awareness": self.awareness_name})
        offset = "now"
        while True:
            try:
                reader = stream.read(offset, live="sse")
                async for chunk in reader:
                    offset = chunk.offset
                    if not chunk.data:
                        continue
                    try:
                        for update in iter_frames(chunk.data):
                            with self._lock, contextlib.suppress(Exception):
                                # 12.4: presence is untrusted; a bad one is dropped.
                                self.awareness.apply_awareness_update(update, "server")
                    except FramingError:
                        pass
            except asyncio.CancelledError:
                raise
            except (DurableStreamError, httpx.HTTPError) as err:
                log.info("yjs provider: awareness read failed (%s); retrying", err)
                offset = "now"
                await asyncio.sleep(1.0)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class YjsProvider:
    """The blocking twin: ``with YjsProvider(doc, url, "notes/today") as provider:``.

    It runs an ``AsyncYjsProvider`` on a private event loop thread, so remote
    updates are applied from that thread. Edit the document inside
    ``with provider.transact():`` (the provider's lock and one pycrdt
    transaction), so a local edit and a remote update never interleave.
    """

    def __init__(self, doc: Any, base_url: str, doc_id: str, **options: Any) -> None:
        self.doc = doc
        self.lock = threading.RLock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="duralog-yjs-provider")
        self._thread.start()
        self._async: AsyncYjsProvider = self._call(self._make(doc, base_url, doc_id, options))

    async def _make(self, doc: Any, base_url: str, doc_id: str,
                    options: dict[str, Any]) -> AsyncYjsProvider:
        return AsyncYjsProvider(doc, base_url, doc_id, lock=self.lock, **options)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> YjsProvider:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def offset(self) -> str | None:
        return self._async.offset

    @property
    def errors(self) -> list[Exception]:
        return self._async.errors

    @property
    def awareness(self) -> Any:
        return self._async.awareness

    @contextlib.contextmanager
    def transact(self) -> Iterator[Any]:
        with self.lock, self.doc.transaction() as txn:
            yield txn

    def connect(self) -> None:
        self._call(self._async.connect())

    def flush(self) -> None:
        self._call(self._async.flush())

    def disconnect(self) -> None:
        self._call(self._async.disconnect())

    def close(self) -> None:
        try:
            self._call(self._async.close())
        finally:
            self._async.destroy()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
