"""Server-side compaction of Yjs documents (YJS-PROTOCOL.md 8) with pycrdt.

When a document's updates since its last snapshot pass the threshold, one
background task per document (single flight) replays the snapshot and the
updates up to the current tail into a fresh ``pycrdt.Doc``, writes the state
as a new snapshot stream, appends an index entry that points to it, and only
then removes older snapshots. Writers and readers never wait on it: the replay
runs in a worker thread, and the Store calls it makes are ordinary ones.

Crash safety (8.2) comes from the order of durable steps:

1. the snapshot stream is created with its content in one ``create`` (it either
   exists whole or not at all);
2. the index entry is appended; from here on ``offset=snapshot`` names it;
3. older snapshot streams are deleted.

A kill before 2 leaves the previous snapshot (or none) in force and at most an
orphan snapshot, removed by the next compaction's step 3; a kill after 2 leaves
the new one in force. Discovery also skips index entries whose snapshot is
gone, so a document always loads to the same content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..protocol import jsonmode
from ..protocol.errors import ProtocolError
from ..protocol.offsets import format_offset, parse_offset
from ..protocol.state import AppendRequest, CreateRequest, StreamState
from ..store import Store
from .framing import FramingError, iter_frames
from .paths import DocStreams, doc_of_updates_path, parse_snapshot_key
from .reads import read_whole

DEFAULT_THRESHOLD = 1 << 20  # 11: 1 MB of updates since the last snapshot
MAX_CACHED_DOCS = 50_000
OCTET = "application/octet-stream"
_JSON = "application/json"


@dataclass(slots=True)
class DocInfo:
    """What the server remembers of one document between requests."""

    updates_id: int  # the updates stream's Store id: a recreated document is another
    snapshot: str | None  # offset of the snapshot in force (its last byte), None before one
    task: asyncio.Task[None] | None = None

    @property
    def snapshot_pos(self) -> int:
        """Where the updates after the snapshot start (see ``snapshot_offset``)."""
        return parse_offset(self.snapshot) + 1 if self.snapshot else 0


def snapshot_offset(end: int) -> str:
    """The offset that names a snapshot of the updates before ``end``: the position of
    their last byte. YJS-PROTOCOL.md 5.3's example (snapshot 4782, Stream-Next-Offset
    4783) and the reference server use "snapshot offset + 1" as the place to read on;
    with byte positions that is exactly ``end``, where the next update starts."""
    return format_offset(end - 1)


def replay(snapshot: bytes, updates: bytes) -> tuple[bytes, int, int]:
    """The state of ``snapshot`` plus the framed ``updates``, as one Yjs update.

    Returns (snapshot bytes, updates applied, updates refused). An update pycrdt
    cannot decode is skipped and counted: the server validates updates when they
    arrive, so only bytes written around it (the raw streams API) can be bad.
    """
    from pycrdt import Doc

    doc: Doc = Doc()
    if snapshot:
        doc.apply_update(snapshot)
    applied = refused = 0
    try:
        for update in iter_frames(updates):
            try:
                doc.apply_update(update)
                applied += 1
            except ValueError:
                refused += 1
    except FramingError:
        refused += 1
    return doc.get_update(), applied, refused


class Metrics:
    """Compaction and document metrics on the server's registry (prometheus-client)."""

    def __init__(self, registry: Any, count_documents: Callable[[], int]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.compactions = Counter(
            "duralog_yjs_compactions", "Yjs compactions, by result", ["result"],
            registry=registry)
        self.duration = Histogram(
            "duralog_yjs_compaction_duration_seconds", "Time one Yjs compaction took",
            registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                        30, 60))
        self.bytes_in = Counter(
            "duralog_yjs_compaction_input_bytes", "Bytes of updates folded into snapshots",
            registry=registry)
        self.bytes_out = Counter(
            "duralog_yjs_snapshot_bytes", "Bytes of snapshots written", registry=registry)
        self.documents = Gauge("duralog_yjs_documents", "Yjs documents on this server",
                               registry=registry)
        self.documents.set_function(count_documents)


def _step_delay() -> float:
    """Test hook: seconds to pause between compaction steps, so a crash test can land a
    kill inside each of them (DURALOG_YJS_COMPACTION_STEP_DELAY; 0 in production)."""
    try:
        return float(os.environ.get("DURALOG_YJS_COMPACTION_STEP_DELAY", "0") or 0)
    except ValueError:
        return 0.0


class Compactor:
    """Knows each document's snapshot and runs its compactions, one at a time."""

    def __init__(self, store: Store, threshold: int, log: logging.Logger,
                 registry: Any = None) -> None:
        self.store = store
        self.threshold = threshold
        self.log = log
        self.docs: dict[str, DocInfo] = {}
        self.metrics = Metrics(registry, self.count_documents) if registry is not None else None
        self.step_delay = _step_delay()

    def count_documents(self) -> int:
        return sum(1 for s in self.store.list_states() if doc_of_updates_path(s.path))

    # -- the snapshot in force ---------------------------------------------------
    async def index_entries(self, streams: DocStreams) -> list[dict[str, Any]]:
        state = self.store.get(streams.index)
        if state is None or state.soft_deleted:
            return []
        parts: list[bytes] = []
        pos = 0
        while pos < state.tail:
            chunk = await self.store.read(state, pos, 1 << 20)
            if chunk.next_pos <= pos:
                break
            parts.extend(chunk.parts)
            pos = chunk.next_pos
        entries = orjson.loads(jsonmode.wrap(parts)) if parts else []
        return [e for e in entries if isinstance(e, dict)]

    def _snapshot_exists(self, streams: DocStreams, token: str) -> bool:
        state = self.store.get(streams.snapshot(token))
        return state is not None and not state.soft_deleted

    async def info(self, streams: DocStreams, updates: StreamState) -> DocInfo:
        """The document's info, loading the snapshot in force from its index when needed."""
        info = self.docs.get(streams.key)
        if info is not None and info.updates_id == updates.id and (
                info.snapshot is None or self._snapshot_exists(streams, info.snapshot)):
            return info
        snapshot = None
        for entry in reversed(await self.index_entries(streams)):
            token = entry.get("snapshotOffset")
            # An entry whose snapshot is gone (deleted around us) is skipped: an older
            # one, or the updates from the start, still load the same content.
            if (isinstance(token, str) and parse_snapshot_key(token + "_snapshot")
                    and parse_offset(token) < updates.tail
                    and self._snapshot_exists(streams, token)):
                snapshot = token
                break
        if info is not None and info.updates_id == updates.id:
            info.snapshot = snapshot  # in place: a running compaction holds this object
        else:
            if len(self.docs) >= MAX_CACHED_DOCS:
                # Forget idle documents (their index tells us again when needed), so
                # the memory kept does not grow with every document ever touched.
                self.docs = {k: v for k, v in self.docs.items() if v.task is not None}
            info = DocInfo(updates.id, snapshot)
            self.docs[streams.key] = info
        return info

    # -- triggering ----------------------------------------------------------------
    async def after_append(self, streams: DocStreams, updates: StreamState) -> None:
        """8.1: start a compaction once the updates since the snapshot pass the threshold."""
        info = await self.info(streams, updates)
        if info.task is not None or updates.tail - info.snapshot_pos < self.threshold:
            return
        info.task = asyncio.get_running_loop().create_task(self._run(streams, info))

    async def _run(self, streams: DocStreams, info: DocInfo) -> None:
        started = time.perf_counter()
        result = "error"
        try:
            result = await self.compact(streams, info)
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        except Exception:
            # 8.4: logged; the next append past the threshold tries again.
            self.log.exception("yjs compaction of %s failed", streams.key)
        finally:
            info.task = None
            if self.metrics is not None:
                self.metrics.compactions.labels(result).inc()
                if result == "ok":
                    self.metrics.duration.observe(time.perf_counter() - started)

    async def _pause(self) -> None:
        if self.step_delay:
            await asyncio.sleep(self.step_delay)
        # Test hook: while this file exists, compactions hold here (tests show that
        # writes and reads go on meanwhile without depending on timing).
        gate = os.environ.get("DURALOG_YJS_COMPACTION_GATE")
        while gate and os.path.exists(gate):
            await asyncio.sleep(0.05)

    async def compact(self, streams: DocStreams, info: DocInfo) -> str:
        """8.2: one compaction. Returns "ok", or "gone" when the document went away."""
        updates = self._current_updates(streams, info)
        if updates is None:
            return "gone"
        start = info.snapshot_pos
        end = updates.tail  # 8.4: the snapshot covers exactly the bytes before this
        if end <= start:
            return "nothing"  # nothing new since the snapshot in force
        old = None
        if info.snapshot is not None:
            old_state = self.store.get(streams.snapshot(info.snapshot))
            if old_state is not None and not old_state.soft_deleted:
                old = await read_whole(self.store, old_state)
        data = await read_whole(self.store, updates, start, end)
        await self._pause()
        snapshot, applied, refused = await asyncio.to_thread(replay, old or b"", data)
        if refused:
            self.log.warning("yjs compaction of %s skipped %d undecodable updates",
                             streams.key, refused)
        if self._current_updates(streams, info) is None:
            return "gone"
        token = snapshot_offset(end)
        try:
            await self.store.create(streams.snapshot(token), CreateRequest(content_type=OCTET),
                                    snapshot)
        except ProtocolError as err:
            if err.status != 409:
                raise
            # A snapshot at this offset already exists from a compaction a crash cut
            # short; it holds the same content. Use it.
        await self._pause()
        if self._current_updates(streams, info) is None:
            return "gone"
        await self._append_index(streams, {"snapshotOffset": token,
                                           "createdAt": int(time.time() * 1000)})
        info.snapshot = token
        await self._pause()
        # 8.2 step 6: only now the older snapshots go (and orphans of earlier crashes).
        for state in self.store.list_states():
            if state.path.startswith(streams.snapshots_prefix) and (
                    state.path != streams.snapshot(token)):
                with contextlib.suppress(ProtocolError):  # already gone
                    await self.store.delete(state.path)
        if self.metrics is not None:
            self.metrics.bytes_in.inc(len(data))
            self.metrics.bytes_out.inc(len(snapshot))
        self.log.info("yjs compacted %s: %d updates, %d bytes -> %d byte snapshot at %s",
                      streams.key, applied, len(data), len(snapshot), token)
        return "ok"

    def _current_updates(self, streams: DocStreams, info: DocInfo) -> StreamState | None:
        state = self.store.get(streams.updates)
        if state is None or state.soft_deleted or state.id != info.updates_id:
            return None
        return state

    async def _append_index(self, streams: DocStreams, entry: dict[str, Any]) -> None:
        state = self.store.get(streams.index)
        if state is None:
            await self.store.create(streams.index, CreateRequest(content_type=_JSON), None)
        await self.store.append(streams.index, AppendRequest(
            payload=orjson.dumps(entry), content_type=_JSON))

    # -- document gone -------------------------------------------------------------
    async def forget(self, streams: DocStreams) -> None:
        """Stop a running compaction of a document being deleted, and drop what we know."""
        info = self.docs.pop(streams.key, None)
        if info is not None and info.task is not None:
            info.task.cancel()
            await asyncio.gather(info.task, return_exceptions=True)

    async def shutdown(self) -> None:
        tasks = [i.task for i in self.docs.values() if i.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.docs.clear()
