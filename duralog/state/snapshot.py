"""Compaction: a materialized state written as a snapshot to a new stream.

``write_snapshot(state, target)`` creates ``target`` as a JSON stream holding
snapshot-start, one insert per entity and snapshot-end (STATE-PROTOCOL.md
4.2.1), in one append, so a reader of the new stream never sees half of it.
With ``reset_stream`` it then appends a reset control message (4.2.2) to the
old stream, telling its live readers to clear their state; they continue on
the new stream, whose name they learn as the application decides (a naming
convention, a pointer stream: docs/state.md shows the pattern).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..client import AppendResult, DurableStream
from .events import ControlEvent
from .materialized import MaterializedState


def snapshot_body(state: MaterializedState | dict[str, dict[str, Any]],
                  offset: str | None = None) -> bytes:
    """The snapshot's messages as one JSON array (the body of one append)."""
    if not isinstance(state, MaterializedState):
        state = MaterializedState.from_json(state)
    return orjson.dumps([e.to_json() for e in state.snapshot_events(offset=offset)])


def write_snapshot(state: MaterializedState | dict[str, dict[str, Any]],
                   target: str | DurableStream, *, offset: str | None = None,
                   reset_stream: str | DurableStream | None = None) -> AppendResult:
    """Create ``target`` holding the snapshot; optionally mark ``reset_stream``.

    ``offset``: the source offset the snapshot reflects, recorded in the
    markers' ``headers.offset`` (snapshot-start, snapshot-end and the reset).
    """
    handle = target if isinstance(target, DurableStream) else DurableStream(target)
    handle.create(content_type="application/json")
    result = handle.append(snapshot_body(state, offset))
    if reset_stream is not None:
        old = reset_stream if isinstance(reset_stream, DurableStream) \
            else DurableStream(reset_stream)
        old.append_json(ControlEvent("reset", offset).to_json())
    return result
