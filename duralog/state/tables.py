"""Typed tables of a StreamDB and the atomic batch apply behind them (no I/O).

``StateCore`` buffers the messages of a state stream until the reader is up to
date, then applies the buffer in one step under a lock, so no reader ever sees
part of a transaction (an append is atomic on the server, PROTOCOL.md 5.2, and
an up-to-date read ends after whole appends). This is also when the TS StreamDB
commits (src/stream-db.ts markUpToDate). The sync and async StreamDB (db.py)
drive it; it keeps rows as pydantic models, indexes, seen txids and the change
notices of each batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .events import _RFC3339, ChangeEvent, ControlEvent, parse_event
from .materialized import loads
from .schema import Collection, StateSchema, js_string
from .wire import UNSET, WireEvent, decode_chunk, decode_value

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("duralog.state")


@dataclass(frozen=True, slots=True)
class Change:
    """What one applied batch did to one row: the net effect, once per key.

    ``operation`` is insert (the row is new), update or delete; ``value`` is the
    row after the batch (None after a delete), ``previous`` the row before it.
    """

    collection: str
    key: str
    operation: Literal["insert", "update", "delete"]
    value: Any
    previous: Any


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """One atomic apply: the offsets it spans, its events, txids and changes."""

    start: str
    end: str
    events: int
    txids: frozenset[str]
    changes: list[Change]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A change whose value failed its collection's model (STATE-PROTOCOL.md 7:
    rejected and logged; other rows and types go on)."""

    collection: str
    key: str
    offset: str
    reason: str


class Table(Generic[M]):
    """The current rows of one collection, by key, in stream order.

    Reads take the database lock, so they see the state between two batches,
    never inside one. Iteration yields a snapshot list of the rows.
    """

    def __init__(self, name: str, collection: Collection[M], lock: threading.RLock) -> None:
        self.name = name
        self.collection = collection
        self._lock = lock
        self._rows: dict[str, M] = {}
        self._indexes: dict[str, dict[Hashable, dict[str, None]]] = {}
        self._listeners: list[tuple[str | None, Callable[[Change], None]]] = []

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str, default: M | None = None) -> M | None:
        with self._lock:
            return self._rows.get(key, default)

    def __getitem__(self, key: str) -> M:
        with self._lock:
            return self._rows[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._rows

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def __iter__(self) -> Iterator[M]:
        return iter(self.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._rows)

    def values(self) -> list[M]:
        with self._lock:
            return list(self._rows.values())

    def items(self) -> list[tuple[str, M]]:
        with self._lock:
            return list(self._rows.items())

    def filter(self, predicate: Callable[[M], bool]) -> list[M]:
        """Rows for which ``predicate(row)`` is true, in stream order."""
        with self._lock:
            return [row for row in self._rows.values() if predicate(row)]

    def where(self, **fields: Any) -> list[M]:
        """Rows whose fields equal the given values; an indexed field is looked
        up in its index instead of scanning."""
        with self._lock:
            keys: Iterable[str] | None = None
            rest = dict(fields)
            for name in list(rest):
                index = self._indexes.get(name)
                if index is not None:
                    hit = index.get(_hashable(rest.pop(name)), {})
                    keys = hit if keys is None else [k for k in keys if k in hit]
            rows = (self._rows.values() if keys is None
                    else [self._rows[k] for k in keys])
            return [row for row in rows
                    if all(getattr(row, f, None) == v for f, v in rest.items())]

    def create_index(self, field: str) -> None:
        """Keep an index on ``field`` so ``where(field=...)`` needs no scan."""
        if field not in self.collection.model.model_fields:
            raise ValueError(f"{self.collection.model.__name__} has no field {field!r}")
        with self._lock:
            index: dict[Hashable, dict[str, None]] = {}
            for key, row in self._rows.items():
                index.setdefault(_hashable(getattr(row, field)), {})[key] = None
            self._indexes[field] = index

    # -- change callbacks -----------------------------------------------------------------
    def on_change(self, callback: Callable[[Change], None],
                  key: str | None = None) -> Callable[[], None]:
        """Call ``callback(change)`` after each batch that changed a row (only
        row ``key`` if given). Returns a function that unsubscribes."""
        entry = (key, callback)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    # -- writes (StateCore only, under the lock) -------------------------------------------
    def _set(self, key: str, row: M) -> None:
        old = self._rows.get(key)
        self._rows[key] = row
        for field, index in self._indexes.items():
            if old is not None:
                _unindex(index, _hashable(getattr(old, field)), key)
            index.setdefault(_hashable(getattr(row, field)), {})[key] = None

    def _delete(self, key: str) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            for field, index in self._indexes.items():
                _unindex(index, _hashable(getattr(old, field)), key)

    def _clear(self) -> None:
        self._rows.clear()
        for index in self._indexes.values():
            index.clear()


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


def _unindex(index: dict[Hashable, dict[str, None]], value: Hashable, key: str) -> None:
    keys = index.get(value)
    if keys is not None:
        keys.pop(key, None)
        if not keys:
            del index[value]


class StateCore:
    """Buffering, the atomic apply, txids and change notices of one StreamDB."""

    def __init__(self, schema: StateSchema) -> None:
        self.schema = schema
        self.lock = threading.RLock()
        self.tables: dict[str, Table[Any]] = {
            name: Table(name, collection, self.lock)
            for name, collection in schema.collections.items()}
        self._by_type = {c.type: self.tables[name] for name, c in schema.collections.items()}
        self.offset = "-1"             # where the applied state ends
        self.pending: list[tuple[bytes, str]] = []
        self.seen_txids: set[str] = set()
        self.rejected: list[Rejected] = []
        self.applied_events = 0

    def restore(self, offset: str, rows: dict[str, dict[str, Any]]) -> None:
        """Load a checkpoint: rows as JSON values by collection and key."""
        with self.lock:
            for table in self.tables.values():
                table._clear()
            for name, by_key in rows.items():
                table = self.tables.get(name)
                if table is None:
                    continue
                for key, value in by_key.items():
                    table._set(key, table.collection.model.model_validate(value))
            self.offset = offset
            self.pending.clear()

    def receive(self, data: bytes, offset: str, up_to_date: bool) -> AppliedBatch | None:
        """Take one read chunk (a JSON array of messages); at an up-to-date
        boundary apply everything buffered and return what was applied."""
        self.pending.append((data, offset))
        if not up_to_date:
            return None
        return self.apply_pending()

    def _decode(self, data: bytes, start: str) -> list[Any]:
        """A chunk's events: msgspec structs when they are well formed (the fast
        path), else typed events, or EventError naming the bad message."""
        if not data:
            return []
        events = decode_chunk(data)
        if events is not None and all(_well_formed(e) for e in events):
            return events
        return [parse_event(item, f"message {i} of the chunk read from offset {start}")
                for i, item in enumerate(loads(data))]

    def apply_pending(self) -> AppliedBatch:
        before: dict[tuple[str, str], Any] = {}
        txids: set[str] = set()
        first = start = self.offset
        count = 0
        # Decode the whole buffer first: a malformed message raises before
        # anything of the batch is applied (the state stays at the last batch).
        parsed: list[tuple[list[Any], str]] = []
        for data, end in self.pending:
            parsed.append((self._decode(data, start), start))
            start = end
        with self.lock:
            for events, chunk_start in parsed:
                for event in events:
                    if event.__class__ is WireEvent:
                        self._apply_wire(event, before, txids, chunk_start)
                    else:
                        self._apply_one(event, before, txids, chunk_start)
                count += len(events)
            self.applied_events += count
            self.pending.clear()
            self.offset = start
            changes = self._changes(before)
            self.seen_txids |= txids
        return AppliedBatch(first, start, count, frozenset(txids), changes)

    def _apply_wire(self, event: WireEvent, before: dict[tuple[str, str], Any],
                    txids: set[str], offset: str) -> None:
        """``_apply_one`` for a well-formed msgspec struct (values raw JSON)."""
        headers = event.headers
        op = headers.operation
        if op is UNSET:
            if headers.control == "reset":
                self._reset(before)
            return
        if headers.txid is not UNSET:
            txids.add(headers.txid)
        table = self._by_type.get(event.type)
        if table is None:
            return
        key = event.key
        slot = (table.name, key)
        if slot not in before:
            before[slot] = table._rows.get(key)
        if op == "delete":
            table._delete(key)
            return
        collection = table.collection
        try:
            row = collection.model.model_validate_json(event.value)
        except ValidationError:
            row = None   # the dict path below names the problem
        if row is None or js_string(getattr(row, collection.primary_key)) != key:
            # The TS StreamDB sets the key field from the event key: do it on a dict.
            self._set_value(table, key, decode_value(event.value), offset)
            return
        table._set(key, row)

    def _reset(self, before: dict[tuple[str, str], Any]) -> None:
        # As the TS StreamDB on reset: truncate every table.
        for table in self.tables.values():
            for key, row in table._rows.items():
                before.setdefault((table.name, key), row)
            table._clear()

    def _apply_one(self, event: ChangeEvent | ControlEvent, before: dict[tuple[str, str], Any],
                   txids: set[str], offset: str) -> None:
        if isinstance(event, ControlEvent):
            if event.control == "reset":
                self._reset(before)
            return
        if event.txid is not None:            # TS collects txids of unknown types too
            txids.add(event.txid)
        table = self._by_type.get(event.type)
        if table is None:
            return                            # not in our schema: ignored, as in TS
        slot = (table.name, event.key)
        if slot not in before:
            before[slot] = table._rows.get(event.key)
        if event.operation == "delete":
            table._delete(event.key)
            return
        self._set_value(table, event.key, event.value, offset)

    def _set_value(self, table: Table[Any], key: str, value: Any, offset: str) -> None:
        if isinstance(value, dict):
            # TS StreamDB sets the primary key field from the event key.
            value = {**value, table.collection.primary_key: key}
        try:
            row = table.collection.model.model_validate(value)
        except ValidationError as err:
            reason = "; ".join(e["msg"] for e in err.errors())
            log.warning("state: %s/%s at offset %s rejected: %s", table.collection.type, key,
                        offset, reason)
            self.rejected.append(Rejected(table.name, key, offset, reason))
            del self.rejected[:-1000]
            return
        table._set(key, row)

    def _changes(self, before: dict[tuple[str, str], Any]) -> list[Change]:
        changes: list[Change] = []
        for (name, key), previous in before.items():
            now = self.tables[name]._rows.get(key)
            if previous is None and now is None:
                continue
            if previous is None:
                changes.append(Change(name, key, "insert", now, None))
            elif now is None:
                changes.append(Change(name, key, "delete", None, previous))
            elif now is not previous:
                changes.append(Change(name, key, "update", now, previous))
        return changes

    def notify(self, changes: list[Change],
               listeners: list[Callable[[list[Change]], None]]) -> None:
        """Run change callbacks (outside the lock); a failing callback is logged."""
        for change in changes:
            for key, callback in list(self.tables[change.collection]._listeners):
                if key is None or key == change.key:
                    _call(callback, change)
        if changes:
            for callback in list(listeners):
                _call(callback, changes)

    def dump_rows(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {name: {key: table.collection.dump(row) for key, row in table._rows.items()}
                    for name, table in self.tables.items()}


def _well_formed(event: WireEvent) -> bool:
    """What the msgspec structs cannot check (STATE-PROTOCOL.md 4.1, 5.1)."""
    headers = event.headers
    op = headers.operation
    if op is UNSET:
        return headers.control is not UNSET
    return (event.type is not UNSET and event.key is not UNSET
            and (op == "delete" or event.value is not UNSET)
            and (headers.timestamp is UNSET or _RFC3339.match(headers.timestamp) is not None))


def _call(callback: Callable[[Any], None], arg: Any) -> None:
    try:
        callback(arg)
    except Exception:
        log.exception("state: a change callback failed")
