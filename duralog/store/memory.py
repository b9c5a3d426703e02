"""The memory backend: everything in process memory, gone on restart.

For tests and for servers that do not need durability. Every operation runs to
completion on the event loop without awaiting, so operations on one stream
(and one producer) are serialized for free (PROTOCOL.md 5.2.1).
"""

from __future__ import annotations

import itertools
import secrets
import time
from bisect import bisect_right

from ..protocol.errors import ProtocolError
from ..protocol.state import (
    AppendDecision,
    AppendRequest,
    CreateRequest,
    StreamState,
    apply_append,
    decide_append,
)
from . import registry as reg
from .base import Store, scan_records
from .plans import Plan, plan_create, plan_delete
from .retention import trim_start


class _Records:
    """One stream's records: end positions, payloads and commit times in parallel lists."""

    __slots__ = ("datas", "ends", "times")

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.times: list[float] = []

    def add(self, end: int, data: bytes, now: float) -> None:
        self.ends.append(end)
        self.datas.append(data)
        self.times.append(now)


class MemoryStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.instance_tag = secrets.token_hex(4)
        self._records: dict[int, _Records] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        await self._open_registry()

    def _apply(self, plan: Plan) -> None:
        """Apply a plan and its registry event at once (nothing can interleave)."""
        for state in plan.states:
            self._by_path[state.path] = state
            self._by_id[state.id] = state
        now = time.time()
        for stream_id, end, data in plan.records:
            self._records.setdefault(stream_id, _Records()).add(end, data, now)
        for state in plan.dropped:
            if self._by_path.get(state.path) is self._by_id.get(state.id):
                self._by_path.pop(state.path, None)
            self._by_id.pop(state.id, None)
            self._records.pop(state.id, None)
        for state in (*plan.states, *plan.dropped):
            self.notifier.changed(state.id)
        if plan.changes and self.registry is not None:
            registry = self._by_path.get(self.registry)
            payload = reg.changes_payload(plan.changes, self.registry)
            if payload and registry is not None and reg.can_record(registry):
                self._write(registry, payload)
                registry.last_access = time.time()
                self.notifier.changed(registry.id)

    def _write(self, state: StreamState, payload: bytes) -> None:
        state.tail += len(payload)
        self._records.setdefault(state.id, _Records()).add(state.tail, payload, time.time())

    def _expire(self, state: StreamState) -> None:
        self._apply(plan_delete(self._state_by_id, state))
        self._removed([state])

    async def create(self, path: str, req: CreateRequest, payload: bytes | None
                     ) -> tuple[StreamState, bool]:
        prefix = await self.create_prefix(path, req)
        self.get(path)  # drop an expired stream at this path first
        if req.forked_from is not None:
            self.get(req.forked_from)
        plan = plan_create(self._state, path, req, payload, prefix, next(self._ids), time.time())
        self._apply(plan)
        assert plan.result is not None
        if plan.created and plan.result.retention_bytes is not None:
            self._trim(plan.result, time.time())  # an initial body over the limit
        return plan.result, plan.created

    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        state = self._live(path)
        decision = decide_append(state, req)
        if decision.write:
            now = time.time()
            if req.payload:
                self._records.setdefault(state.id, _Records()).add(
                    state.tail + len(req.payload), req.payload, now)
            apply_append(state, req, decision, now)
            if state.retention_bytes is not None:
                self._trim(state, now)
            self.notifier.changed(state.id)
        return decision, state

    def _trim(self, state: StreamState, now: float) -> None:
        """Retention: move the start past dropped appends; free them unless forks read them."""
        records = self._records.get(state.id)
        if records is None:
            return
        first = bisect_right(records.ends, state.start)
        appends = ((records.ends[i], records.times[i]) for i in range(first, len(records.ends)))
        new = trim_start(state, appends, now)
        if new <= state.start:
            return
        state.start = new
        if state.refcount == 0:
            k = bisect_right(records.ends, new)
            del records.ends[:k], records.datas[:k], records.times[:k]
        self.notifier.changed(state.id)

    async def sweep_expired(self) -> int:
        now = time.time()
        for state in self.all_states():
            if state.retention_seconds is not None and not state.soft_deleted:
                self._trim(state, now)
        return await super().sweep_expired()

    async def delete(self, path: str) -> None:
        state = self._live(path)
        self._apply(plan_delete(self._state_by_id, state))

    def _live(self, path: str) -> StreamState:
        state = self.get(path)
        if state is None:
            raise ProtocolError(404, "stream not found")
        if state.soft_deleted:
            raise ProtocolError(410, "stream was deleted")
        return state

    async def _read_records(self, stream_id: int, lo: int, hi: int, pos: int,
                            budget: int, whole: bool) -> tuple[list[tuple[int, bytes]], bool]:
        records = self._records.get(stream_id)
        if records is None:
            return [], False
        return scan_records(records.ends, records.datas, max(pos, lo), hi, budget)
