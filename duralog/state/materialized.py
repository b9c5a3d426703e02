"""MaterializedState: the in-memory view of a state stream (STATE-PROTOCOL.md 6).

Pure, no I/O. It mirrors @durable-streams/state 0.3.1's ``MaterializedState``
(src/materialized-state.ts), checked event for event by
tests/test_state_interop.py:

- entities live per type in insertion order (a JS ``Map``: an update keeps a
  key's place, a delete then insert moves it to the end);
- insert, update and upsert all store the value at type/key (6: insert
  "stores", update "replaces"; neither checks whether the key exists);
  delete removes it;
- any change event creates its type's map, even a delete of a key that was
  never there, so ``types`` lists that type (as in TS).

Where we differ from the TS class, on purpose: control events. Section 6
leaves them to "application logic (e.g., clear state on reset)"; the TS
``MaterializedState.apply`` has no branch for them (a control event passed to
it would create a map under the type ``undefined``), and the TS StreamDB
clears every collection on ``reset`` and ignores snapshot markers. We do what
the TS StreamDB does: ``reset`` clears, snapshot-start/-end change nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from .events import (
    _RFC3339,
    MISSING,
    ChangeEvent,
    ControlEvent,
    EventError,
    StateEvent,
    parse_event,
)
from .wire import UNSET, Raw, decode_chunk, decode_value

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SETS = frozenset(("insert", "update", "upsert"))


class _Rows(Mapping[str, Any]):
    """A read-only live view of one type's rows that decodes raw values on access."""

    __slots__ = ("_rows",)

    def __init__(self, rows: dict[str, Any]) -> None:
        self._rows = rows

    def __getitem__(self, key: str) -> Any:
        return _decoded(self._rows, key, self._rows[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _decoded(rows: dict[str, Any], key: str, value: Any) -> Any:
    # Values applied by apply_bytes stay raw JSON until first read.
    if value.__class__ is Raw:
        value = rows[key] = decode_value(value)
    return value


class MaterializedState:
    """Entities by type and key, built by applying events in stream order."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    # -- applying ---------------------------------------------------------------------
    def apply(self, event: StateEvent) -> None:
        """Apply one typed event (STATE-PROTOCOL.md 6)."""
        if isinstance(event, ControlEvent):
            if event.control == "reset":
                self._data.clear()
            return
        rows = self._data.get(event.type)
        if rows is None:
            rows = self._data[event.type] = {}
        if event.operation == "delete":
            rows.pop(event.key, None)
        else:
            rows[event.key] = event.value

    def apply_batch(self, events: Iterable[StateEvent]) -> None:
        for event in events:
            self.apply(event)

    def apply_bytes(self, data: bytes, offset: str | None = None) -> int:
        """Decode and apply one read chunk (a JSON array of messages): the fast
        path for catch-up reads. Values stay raw JSON until first read.

        Same checks and errors as ``apply_json`` (a malformed message raises
        ``EventError`` naming ``offset`` and its index; the messages before it
        stay applied). Returns how many messages were applied.
        """
        events = decode_chunk(data)
        if events is None:   # something is off: the precise path finds and names it
            return self.apply_json(loads(data), offset)
        rows_by_type = self._data
        last_type: str | None = None
        rows: dict[str, Any] = {}
        count = 0
        for count, event in enumerate(events):  # noqa: B007 (count is used after the loop)
            headers = event.headers
            op = headers.operation
            if op is UNSET:
                if headers.control is UNSET:
                    break   # neither change nor control
                if headers.control == "reset":
                    rows_by_type.clear()
                    last_type = None
                continue
            type_, key = event.type, event.key
            if key is UNSET or (
                    headers.timestamp is not UNSET and not _RFC3339.match(headers.timestamp)):
                break
            if type_ != last_type:   # runs of one type are common: one lookup per run
                if type_ is UNSET:
                    break
                got = rows_by_type.get(type_)
                if got is None:
                    got = rows_by_type[type_] = {}
                rows, last_type = got, type_
            if op == "delete":
                rows.pop(key, None)
            else:
                value = event.value
                if value is UNSET:
                    break
                # A copy: a view would keep the whole chunk's buffer alive.
                rows[key] = value.copy()
        else:
            return len(events)
        # events[count] is malformed: raise the precise error for it.
        parse_event(loads(data)[count], _where(count, offset))
        raise AssertionError("unreachable: the message was found malformed")

    def apply_json(self, items: Iterable[Any], offset: str | None = None) -> int:
        """Validate and apply decoded JSON messages (one read chunk) in one pass.

        The fast path for catch-up reads: the same checks as ``parse_event``
        without building event objects. A malformed message raises
        ``EventError`` naming ``offset`` and its index; the messages before it
        stay applied. Returns how many messages were applied.
        """
        data = self._data
        count = 0
        for item in items:
            try:
                headers = item["headers"]
                op = headers["operation"]
                type_ = item["type"]
                key = item["key"]
            except (KeyError, TypeError):
                self._slow(item, count, offset)  # raises a precise error, or it is a control
                count += 1
                continue
            if op.__class__ is not str or (op not in _SETS and op != "delete") or \
                    type_.__class__ is not str or \
                    key.__class__ is not str or not type_ or not key or len(headers) > 1:
                # Rare shapes (txid, timestamp, extra headers) and bad ones.
                event = self._slow(item, count, offset)
                if event is None:
                    count += 1
                    continue
            rows = data.get(type_)
            if rows is None:
                rows = data[type_] = {}
            if op == "delete":
                rows.pop(key, None)
            else:
                try:
                    rows[key] = item["value"]
                except KeyError:
                    raise EventError(f"an {op} must carry a value (STATE-PROTOCOL.md 4.1)",
                                     _where(count, offset)) from None
            count += 1
        return count

    def _slow(self, item: Any, index: int, offset: str | None) -> ChangeEvent | None:
        """Full validation of one message; applies a control event and returns
        None, returns a valid change for the caller to apply."""
        event = parse_event(item, _where(index, offset))
        if isinstance(event, ControlEvent):
            self.apply(event)
            return None
        return event

    # -- reading ----------------------------------------------------------------------
    def get(self, type: str, key: str, default: Any = None) -> Any:
        """The value at type/key, or ``default`` (TS: ``undefined``)."""
        rows = self._data.get(type)
        if rows is None or key not in rows:
            return default
        return _decoded(rows, key, rows[key])

    def view(self, type: str) -> Mapping[str, Any]:
        """A read-only live view of one type's entities (TS ``getType``)."""
        rows = self._data.get(type)
        return _EMPTY if rows is None else _Rows(rows)

    def clear(self) -> None:
        self._data.clear()

    @property
    def types(self) -> list[str]:
        """Type names in the order first seen (TS ``types``)."""
        return list(self._data)

    @property
    def type_count(self) -> int:
        return len(self._data)

    def __contains__(self, type_key: object) -> bool:
        if not isinstance(type_key, tuple) or len(type_key) != 2:
            return False
        rows = self._data.get(type_key[0])
        return rows is not None and type_key[1] in rows

    def __iter__(self) -> Iterator[tuple[str, str, Any]]:
        """(type, key, value) of every entity, types and keys in order."""
        for type_, rows in self._data.items():
            for key, value in list(rows.items()):
                yield type_, key, _decoded(rows, key, value)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._data.values())

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The whole state as ``{type: {key: value}}`` (order kept)."""
        return {type_: dict(_Rows(rows).items()) for type_, rows in self._data.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, Any]]) -> MaterializedState:
        state = cls()
        for type_, rows in data.items():
            state._data[type_] = dict(rows)
        return state

    def snapshot_events(self, *, offset: str | None = None) -> list[StateEvent]:
        """snapshot-start, one insert per entity, snapshot-end (4.2.1): replaying
        these into an empty state rebuilds this one (types without entities
        aside, which have nothing to insert)."""
        events: list[StateEvent] = [ControlEvent("snapshot-start", offset)]
        for type_, key, value in self:
            events.append(ChangeEvent(type_, key, "insert",
                                      None if value is MISSING else value))
        events.append(ControlEvent("snapshot-end", offset))
        return events


def loads(data: bytes) -> Any:
    """JSON text as Python values; integers beyond 64 bits (which orjson
    refuses) and the like go through the standard library."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _where(index: int, offset: str | None) -> str:
    if offset is None:
        return f"message {index}"
    return f"message {index} of the chunk read at offset {offset}"
