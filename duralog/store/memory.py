"""The memory backend: everything in process memory, gone on restart.

For tests and for servers that do not need durability. Every operation runs to
completion on the event loop without awaiting, so operations on one stream
(and one producer) are serialized for free (PROTOCOL.md 5.2.1).
"""

from __future__ import annotations

import itertools
import secrets
import time

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


class _Records:
    """One stream's records: end positions and payloads in parallel lists."""

    __slots__ = ("datas", "ends")

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.datas: list[bytes] = []


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
        for stream_id, end, data in plan.records:
            records = self._records.setdefault(stream_id, _Records())
            records.ends.append(end)
            records.datas.append(data)
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
        records = self._records.setdefault(state.id, _Records())
        state.tail += len(payload)
        records.ends.append(state.tail)
        records.datas.append(payload)

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
        return plan.result, plan.created

    async def append(self, path: str, req: AppendRequest) -> tuple[AppendDecision, StreamState]:
        state = self._live(path)
        decision = decide_append(state, req)
        if decision.write:
            if req.payload:
                records = self._records.setdefault(state.id, _Records())
                records.ends.append(state.tail + len(req.payload))
                records.datas.append(req.payload)
            apply_append(state, req, decision, time.time())
            self.notifier.changed(state.id)
        return decision, state

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
