"""StreamDB and AsyncStreamDB: a state stream followed live as typed tables.

    db = StreamDB("http://127.0.0.1:4437/v1/stream/app", schema, checkpoint="app.db")
    db.preload()                      # caught up; now followed in the background
    db.users.get("u1"); db.users.where(team="core"); db.await_txid(txid)

Reads go through the duralog client (catch-up, then live). Each chunk's
messages are buffered and applied in one step when the reader is up to date
(tables.StateCore), then the checkpoint is saved, txid waiters are woken and
change callbacks run. Like the TS StreamDB (src/stream-db.ts), rows are
validated by their collection's model, the key field is set from the event
key, unknown types are ignored and ``reset`` empties every table. A malformed
message stops the DB; ``error`` holds the EventError and waiters get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import AsyncDurableStream, DurableStream, LiveMode
from .checkpoint import StateCheckpoint, open_checkpoint
from .schema import StateSchema
from .tables import Change, Rejected, StateCore, Table

CheckpointTarget = str | Path | StateCheckpoint | None


class _Base:
    """What both twins share: tables as attributes, reads, callbacks."""

    _core: StateCore
    _url: str
    _checkpoint: StateCheckpoint | None

    def _setup(self, url: str, schema: StateSchema, checkpoint: CheckpointTarget) -> None:
        self._url = url
        self.schema = schema
        self._core = StateCore(schema)
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._checkpoint = open_checkpoint(checkpoint)
        self.error: BaseException | None = None
        self.ready = False
        if self._checkpoint is not None:
            saved = self._checkpoint.load(url)
            if saved is not None:
                self._core.restore(*saved)
        self.resumed_from = self._core.offset

    @property
    def collections(self) -> dict[str, Table[Any]]:
        """Tables by collection name (``db["users"]`` too; ``db.users`` when the
        name is not one of the DB's own attributes)."""
        return dict(self._core.tables)

    def __getattr__(self, name: str) -> Table[Any]:
        core = self.__dict__.get("_core")
        if core is not None and name in core.tables:
            return core.tables[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Table[Any]:
        return self._core.tables[name]

    @property
    def offset(self) -> str:
        """The stream offset the tables reflect (after the last applied batch)."""
        return self._core.offset

    @property
    def rejected(self) -> list[Rejected]:
        """Recent changes whose values failed their model (STATE-PROTOCOL.md 7)."""
        return list(self._core.rejected)

    @property
    def applied_events(self) -> int:
        return self._core.applied_events

    def on_change(self, callback: Callable[[list[Change]], None]) -> Callable[[], None]:
        """``callback(changes)`` after every batch that changed rows. Per
        collection or per key: ``db.<collection>.on_change(cb, key=...)``."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Every table's rows as JSON values, by collection and key."""
        return self._core.dump_rows()

    def _signal(self) -> None:
        """Wake whoever waits for a batch (preload, await_txid)."""

    def _feed(self, data: bytes, offset: str, up_to_date: bool) -> None:
        if self._take(data, offset, up_to_date) is not None:
            self._signal()

    def _flush(self) -> None:
        if self._core.pending:
            self._feed(b"", self._core.pending[-1][1], True)

    def _read_offset(self) -> str:
        """Where reading goes on: after the buffered chunks, else after the state."""
        return self._core.pending[-1][1] if self._core.pending else self._core.offset

    def _take(self, data: bytes, offset: str, up_to_date: bool) -> set[str] | None:
        """Feed one chunk; returns the txids applied when a batch committed."""
        batch = self._core.receive(data, offset, up_to_date)
        if batch is None:
            return None
        if self._checkpoint is not None:
            self._checkpoint.save(self._url, self._core, batch)
        self._core.notify(batch.changes, self._listeners)
        return set(batch.txids)


async def _follow(db: _Base, stream: AsyncDurableStream, live: LiveMode,
                  caught_up: Callable[[], None]) -> None:
    """Catch up, then follow live; shared by both twins (the sync one runs it
    on an event loop in its thread, so ``close`` can cancel a blocked read).

    A catch-up read ends exactly when the server said up-to-date, even when
    that last answer was empty (the client yields no empty chunks), so the
    buffer is applied there; SSE control events carry upToDate with the data
    they follow; a long-poll answer is followed by a catch-up."""
    while True:
        reader = stream.read(db._read_offset())
        async for chunk in reader:
            db._feed(chunk.data, chunk.offset, chunk.up_to_date)
        db._flush()
        caught_up()
        if reader.closed or live is None:
            return
        if live in ("sse", "auto"):
            async for chunk in stream.read(db._read_offset(), live="sse"):
                db._feed(chunk.data, chunk.offset, chunk.up_to_date)
            db._flush()
            return
        poll = stream.read(db._read_offset(), live="long-poll")
        try:
            first = await anext(aiter(poll), None)
        finally:
            await poll.aclose()
        if first is not None:
            db._feed(first.data, first.offset, first.up_to_date)


class StreamDB(_Base):
    """Follows a state stream in a background thread (see the module docstring).

    ``stream``: a URL or a ``DurableStream`` (its headers, params, retry and
    timeout are reused by the DB's own connections). ``checkpoint``: a path
    (.db/.sqlite: SQLite, else a JSON file) or a checkpoint object.
    """

    def __init__(self, stream: str | DurableStream, schema: StateSchema, *,
                 checkpoint: CheckpointTarget = None, live: LiveMode = "auto") -> None:
        if isinstance(stream, DurableStream):
            self._options: dict[str, Any] = {
                "headers": stream.headers, "params": stream.params, "retry": stream.retry,
                "timeout": stream.timeout}
            url = stream.url
        else:
            self._options = {}
            url = stream
        self._stream = DurableStream(url, **self._options)
        self._live = live
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._setup(self._stream.url, schema, checkpoint)

    def sync(self) -> int:
        """Catch up once in this thread (no live follow); returns events applied."""
        if self._thread is not None:
            raise RuntimeError("sync() reads in the calling thread: not while following")
        before = self._core.applied_events
        for chunk in self._stream.read(self._read_offset()):
            self._feed(chunk.data, chunk.offset, chunk.up_to_date)
        self._flush()
        self._caught_up()
        return self._core.applied_events - before

    def start(self) -> None:
        """Follow the stream live in a background thread (once)."""
        if self._thread is None:
            started = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(started,),
                                            name="duralog-streamdb", daemon=True)
            self._thread.start()
            started.wait()

    def _run(self, started: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            stream = AsyncDurableStream(self._url, **self._options)
            self._task = loop.create_task(_follow(self, stream, self._live, self._caught_up))
            started.set()
            try:
                loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                if not self._stopping:
                    self.error = exc
            finally:
                loop.run_until_complete(stream.aclose_client())
        finally:
            started.set()
            loop.close()
            self._signal()

    def _caught_up(self) -> None:
        with self._cond:
            self.ready = True
            self._cond.notify_all()

    def _signal(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def preload(self, timeout: float | None = None) -> None:
        """Start following and wait until the tables are caught up."""
        self.start()
        self._wait(lambda: self.ready, timeout, "preload")

    def await_txid(self, txid: str, timeout: float = 5.0) -> None:
        """Wait until a batch carrying ``txid`` is applied (read-your-writes)."""
        self.start()
        self._wait(lambda: txid in self._core.seen_txids, timeout, f"txid {txid}")

    def _wait(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not done():
                if self.error is not None:
                    raise self.error
                if self._stopping or (self._thread is not None
                                      and not self._thread.is_alive()):
                    raise RuntimeError(f"the StreamDB stopped before {what}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"timed out waiting for {what}")
                self._cond.wait(left if left is not None else 1.0)

    def join(self, timeout: float | None = None) -> None:
        """Wait until following ends: the stream was closed and fully applied
        (or the DB failed: ``error``)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop following, save a final checkpoint, release connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):   # the loop may just have finished
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(10)
        self._stream.close_client()
        if self._checkpoint is not None:
            self._checkpoint.save(self._url, self._core, None)
            self._checkpoint.close()

    def __enter__(self) -> StreamDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamDB(_Base):
    """The asyncio twin of ``StreamDB``: a task follows the stream."""

    def __init__(self, stream: str | AsyncDurableStream, schema: StateSchema, *,
                 checkpoint: CheckpointTarget = None, live: LiveMode = "auto") -> None:
        if isinstance(stream, AsyncDurableStream):
            self._stream = AsyncDurableStream(stream.url, headers=stream.headers,
                                              params=stream.params, retry=stream.retry,
                                              timeout=stream.timeout)
        else:
            self._stream = AsyncDurableStream(stream)
        self._live = live
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._stopping = False
        self._setup(self._stream.url, schema, checkpoint)

    async def sync(self) -> int:
        """Catch up once (no live follow); returns events applied."""
        if self._task is not None:
            raise RuntimeError("sync() reads itself: not while following")
        before = self._core.applied_events
        await _follow(self, self._stream, None, self._caught_up)
        return self._core.applied_events - before

    def _caught_up(self) -> None:
        self.ready = True
        self._signal()

    def start(self) -> None:
        if self._task is None:
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def preload(self, timeout: float | None = None) -> None:
        self.start()
        await self._wait(lambda: self.ready, timeout, "preload")

    async def await_txid(self, txid: str, timeout: float = 5.0) -> None:
        self.start()
        await self._wait(lambda: txid in self._core.seen_txids, timeout, f"txid {txid}")

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self.error is not None:
                raise self.error
            if self._stopping:
                raise RuntimeError("the StreamDB is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            assert self._changed is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _run(self) -> None:
        try:
            await _follow(self, self._stream, self._live, self._caught_up)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if not self._stopping:
                self.error = exc
        finally:
            self._signal()

    async def join(self) -> None:
        """Wait until following ends (the stream closed, or ``error``)."""
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._signal()
        await self._stream.aclose_client()
        if self._checkpoint is not None:
            self._checkpoint.save(self._url, self._core, None)
            self._checkpoint.close()

    async def __aenter__(self) -> AsyncStreamDB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
