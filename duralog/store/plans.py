"""Planning creates, deletes and expiries: which states and records change.

A plan is computed against the committed states and applied by the backend:
the memory store applies it at once; a durable store applies it inside one
transaction and publishes the new states only after the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.errors import ProtocolError
from ..protocol.headers import media_type
from ..protocol.offsets import format_offset
from ..protocol.state import (
    DEFAULT_CONTENT_TYPE,
    CreateRequest,
    StreamState,
    fork_expiry,
    same_config,
)


def gone_before(state: StreamState) -> ProtocolError:
    """410 for an offset before the earliest retained one (retention, PROTOCOL.md 4)."""
    return ProtocolError(410, "offset is before the earliest retained data", {
        EARLIEST_OFFSET_HEADER: format_offset(state.start)})


EARLIEST_OFFSET_HEADER = "stream-earliest-offset"

Lookup = Callable[[str], "StreamState | None"]
LookupId = Callable[[int], "StreamState | None"]


@dataclass(slots=True)
class Plan:
    """The outcome of an operation: states to store, records to add, streams to drop."""

    states: list[StreamState] = field(default_factory=list)
    records: list[tuple[int, int, bytes]] = field(default_factory=list)  # (id, end, data)
    dropped: list[StreamState] = field(default_factory=list)
    created: bool = False
    result: StreamState | None = None
    #: Registry changes this plan makes, as (operation, state): written in the
    #: same commit as the plan (store.registry).
    changes: list[tuple[str, StreamState]] = field(default_factory=list)


def plan_create(lookup: Lookup, path: str, req: CreateRequest, payload: bytes | None,
                prefix: bytes, new_id: int, now: float) -> Plan:
    """5.1 and 4.2. ``prefix`` is the inherited part of a sub-offset fork (or b"")."""
    existing = lookup(path)
    if existing is not None:
        if existing.soft_deleted:
            raise ProtocolError(409, "a deleted stream with live forks still holds this path")
        if not same_config(existing, req):
            raise ProtocolError(409, "stream exists with a different configuration")
        return Plan(result=existing)

    state = StreamState(id=new_id, path=path, content_type=req.content_type or "",
                        created_at=now, last_access=now, ttl=req.ttl,
                        expires_at=req.expires_at, expires_ts=req.expires_ts,
                        closed=req.closed, retention_bytes=req.retention_bytes,
                        retention_seconds=req.retention_seconds)
    plan = Plan(created=True, result=state)
    if req.forked_from is not None:
        source = lookup(req.forked_from)
        if source is None or (not source.soft_deleted and source.is_expired(now)):
            raise ProtocolError(404, "source stream not found")
        if source.soft_deleted:
            raise ProtocolError(409, "source stream is deleted")
        if req.content_type and media_type(req.content_type) != media_type(source.content_type):
            raise ProtocolError(409, "content type does not match the source stream's")
        fork_pos = source.tail if req.fork_pos is None else req.fork_pos
        if fork_pos > source.tail:
            raise ProtocolError(400, "Stream-Fork-Offset is beyond the source stream's tail")
        if fork_pos < source.start:
            raise gone_before(source)
        state.content_type = source.content_type
        state.ttl, state.expires_at, state.expires_ts = fork_expiry(req, source)
        state.source_id = source.id
        state.forked_from = req.forked_from
        state.fork_pos = fork_pos
        state.fork_sub = req.fork_sub
        state.tail = fork_pos
        # A fork reads the source's data that is still retained (retention).
        state.start = source.start
        if prefix:
            state.tail += len(prefix)
            plan.records.append((state.id, state.tail, prefix))
        # 4.2: forks start with fresh writer state; only the reference count moves.
        bumped = source.copy()
        bumped.refcount += 1
        plan.states.append(bumped)
    if not state.content_type:
        state.content_type = DEFAULT_CONTENT_TYPE
    if payload:
        state.tail += len(payload)
        plan.records.append((state.id, state.tail, payload))
    plan.states.append(state)
    plan.changes.append(("insert", state))
    return plan


def plan_delete(lookup_id: LookupId, state: StreamState) -> Plan:
    """5.4: drop a stream, or soft-delete it while forks read it; cascade up the chain."""
    plan = Plan()
    if state.refcount > 0:
        marked = state.copy()
        marked.soft_deleted = True
        plan.states.append(marked)
        plan.changes.append(("delete", marked))
        return plan
    plan.dropped.append(state)
    # A source dropped in the cascade below was recorded when it was soft-deleted.
    plan.changes.append(("delete", state))
    current = state
    while current.source_id is not None:
        parent = lookup_id(current.source_id)
        if parent is None:
            break
        parent = parent.copy()
        parent.refcount = max(0, parent.refcount - 1)
        if parent.refcount == 0 and parent.soft_deleted:
            # 4.2: the last fork is gone, so the deleted source goes too.
            plan.dropped.append(parent)
            current = parent
            continue
        plan.states.append(parent)
        break
    return plan
