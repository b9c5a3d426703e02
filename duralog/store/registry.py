"""The ``__registry__`` stream: creates and deletes as State Protocol change events.

Backends write a registry event inside the same commit as the change it
records (a create, a delete, an expiry, a soft delete), so after a crash the
registry and the stream table always agree. Everything here is pure: building
events from states, and working out which events a registry is missing
(startup repair of databases written by older versions, and ``duralog check``).

The event shapes are STATE-PROTOCOL.md change events, unchanged from earlier
versions: ``{"type": "stream", "key": path, "headers": {"operation": op}}`` and,
for inserts, ``"value": {"path", "contentType", "createdAt"}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from ..protocol.jsonmode import fragment, fragment_messages
from ..protocol.state import StreamState
from ..state import events

REGISTRY = "__registry__"
RESERVED = "__ds"
REGISTRY_CONTENT_TYPE = "application/json"


def change_event(operation: str, state: StreamState) -> dict[str, Any]:
    """The State Protocol change event for ``operation`` ("insert" or "delete").

    Built with duralog.state's event types, so every registry event is a valid
    STATE-PROTOCOL.md change event. A fork's insert also names its source
    (``forkedFrom``, the source's path), which HEAD does not echo (4.2) and tools
    such as the console show.
    """
    if operation != "insert":
        return events.delete("stream", state.path).to_json()
    value: dict[str, Any] = {"path": state.path, "contentType": state.content_type,
                             "createdAt": int(state.created_at * 1000)}
    if state.forked_from is not None:
        value["forkedFrom"] = state.forked_from
    return events.insert("stream", state.path, value).to_json()


def encode_events(events: Iterable[dict[str, Any]]) -> bytes:
    """The stored form (a JSON fragment) of one registry append holding ``events``."""
    return fragment([orjson.dumps(e) for e in events])


def listed(path: str, registry: str) -> bool:
    """Whether the registry lists ``path``: not itself, and not the server's own streams
    under the reserved ``__ds`` segment (PROTOCOL.md 6: subscription state, proxy
    bodies), which clients cannot reach as streams."""
    return path != registry and path.split("/", 1)[0] != RESERVED


def changes_payload(changes: Iterable[tuple[str, StreamState]], registry: str) -> bytes:
    """What to append to the registry for a plan's changes (b"": nothing)."""
    return encode_events(change_event(op, s) for op, s in changes if listed(s.path, registry))


def can_record(registry: StreamState | None) -> bool:
    """A registry that is missing, closed or deleted takes no events (nor fails a request)."""
    return registry is not None and not registry.closed and not registry.soft_deleted


def replay(fragments: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """The live entries a registry's stored fragments describe: path -> insert value."""
    live: dict[str, dict[str, Any]] = {}
    for frag in fragments:
        for raw in fragment_messages(frag):
            event = orjson.loads(raw)
            if not isinstance(event, dict) or event.get("type") != "stream":
                continue
            key = event.get("key")
            op = (event.get("headers") or {}).get("operation")
            if not isinstance(key, str):
                continue
            if op in ("insert", "update", "upsert"):
                live[key] = event.get("value") or {}
            elif op == "delete":
                live.pop(key, None)
    return live


def missing_events(live: dict[str, dict[str, Any]], streams: Iterable[StreamState],
                   registry: str) -> list[dict[str, Any]]:
    """Events that make a registry (replayed to ``live``) agree with ``streams``.

    ``streams`` are the streams that exist and are not deleted. A registry entry
    whose stream is gone gets a delete; a stream the registry lacks (or lists
    with another creation time: it was deleted and created again) gets an insert.
    """
    missing: list[dict[str, Any]] = []
    present: set[str] = set()
    for state in sorted(streams, key=lambda s: (s.created_at, s.id)):
        if not listed(state.path, registry):
            continue
        present.add(state.path)
        entry = live.get(state.path)
        want = change_event("insert", state)
        if entry == want["value"]:
            continue
        if entry is not None:
            missing.append(change_event("delete", state))
        missing.append(want)
    for path in live:
        if path not in present and path != registry:
            missing.append(events.delete("stream", path).to_json())
    return missing
