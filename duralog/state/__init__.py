"""duralog.state: the Durable Streams State Protocol (STATE-PROTOCOL.md) in Python.

Typed change and control events (``events``), schemas of pydantic-typed
collections with event builders (``schema``), a pure ``MaterializedState``
that materializes exactly as npm @durable-streams/state's does
(``materialized``), ``StreamDB`` / ``AsyncStreamDB`` following a stream live
as typed tables with checkpoints (``db``), ``StateWriter`` appending
transactions through the idempotent producer (``writer``) and snapshot
compaction (``snapshot``). ``events`` and ``materialized`` import neither the
client nor pydantic, so the server side can build events with them.

See docs/state.md for the guide.
"""

from __future__ import annotations

from typing import Any

from .events import (
    MISSING,
    ChangeEvent,
    ControlEvent,
    EventError,
    Operation,
    StateEvent,
    parse_event,
    parse_events,
)
from .materialized import MaterializedState

__all__ = [
    "MISSING",
    "AsyncStateWriter",
    "AsyncStreamDB",
    "Change",
    "ChangeEvent",
    "Collection",
    "ControlEvent",
    "EventError",
    "FileStateCheckpoint",
    "MaterializedState",
    "Operation",
    "SQLiteStateCheckpoint",
    "StateEvent",
    "StateSchema",
    "StateSchemaError",
    "StateWriter",
    "StreamDB",
    "Table",
    "parse_event",
    "parse_events",
    "write_snapshot",
]

# The layers that need pydantic or the client load on first use, so that
# `from duralog.state import ChangeEvent` stays light (the server imports it).
_LAZY = {
    "Collection": "schema", "StateSchema": "schema", "StateSchemaError": "schema",
    "StreamDB": "db", "AsyncStreamDB": "db",
    "Change": "tables", "Table": "tables",
    "FileStateCheckpoint": "checkpoint", "SQLiteStateCheckpoint": "checkpoint",
    "StateWriter": "writer", "AsyncStateWriter": "writer",
    "write_snapshot": "snapshot",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
