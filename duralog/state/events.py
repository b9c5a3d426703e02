"""State Protocol messages: typed change and control events (STATE-PROTOCOL.md 4-5).

Pure: no I/O and no client imports, so the server's store layer can build
registry or presence events with it as well as the client side can.

``parse_event(obj)`` turns one decoded JSON message into a ``ChangeEvent`` or a
``ControlEvent`` and refuses malformed ones with ``EventError`` naming where
the message came from; ``event.to_json()`` gives the wire form back.

``upsert`` is accepted as an operation, as @durable-streams/state 0.3.1 does
(its ``Operation`` type and its schema helpers have it), although the
protocol's JSON Schema lists only insert, update and delete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Operation: TypeAlias = Literal["insert", "update", "delete", "upsert"]
ControlKind: TypeAlias = Literal["snapshot-start", "snapshot-end", "reset"]

OPERATIONS: frozenset[str] = frozenset(("insert", "update", "delete", "upsert"))
# STATE-PROTOCOL.md 4.1: insert and update MUST carry a value; the TS package's
# upsert helper always writes one too.
VALUE_REQUIRED: frozenset[str] = frozenset(("insert", "update", "upsert"))
CONTROLS: frozenset[str] = frozenset(("snapshot-start", "snapshot-end", "reset"))

# RFC 3339 date-time (STATE-PROTOCOL.md 5.1: headers.timestamp).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


class _Missing:
    """The absence of ``value`` / ``old_value`` (which differs from JSON null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class EventError(ValueError):
    """A message that is not a valid State Protocol event (STATE-PROTOCOL.md 9.1).

    ``where`` says where it was read (e.g. "message 3 of the chunk at offset
    0000_0042"), ``reason`` what is wrong with it.
    """

    def __init__(self, reason: str, where: str | None = None) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """An insert, update, delete or upsert of the entity ``type``/``key`` (4.1).

    ``value`` and ``old_value`` are ``MISSING`` when absent from the message.
    ``headers`` holds header fields beyond operation/txid/timestamp (the TS
    package writes ``from`` and ``offset`` there); they survive a round trip.
    """

    type: str
    key: str
    operation: Operation
    value: Any = MISSING
    old_value: Any = MISSING
    txid: str | None = None
    timestamp: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_change(self.type, self.key, self.operation, self.value, self.txid,
                     self.timestamp)

    def to_json(self) -> dict[str, Any]:
        """The wire form (STATE-PROTOCOL.md 5.1); absent fields stay absent."""
        out: dict[str, Any] = {"type": self.type, "key": self.key}
        if self.value is not MISSING:
            out["value"] = self.value
        if self.old_value is not MISSING:
            out["old_value"] = self.old_value
        headers: dict[str, Any] = dict(self.headers)
        headers["operation"] = self.operation
        if self.txid is not None:
            headers["txid"] = self.txid
        if self.timestamp is not None:
            headers["timestamp"] = self.timestamp
        out["headers"] = headers
        return out


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A snapshot-start, snapshot-end or reset signal (STATE-PROTOCOL.md 4.2)."""

    control: ControlKind
    offset: str | None = None

    def __post_init__(self) -> None:
        if self.control not in CONTROLS:
            raise EventError(f"headers.control must be one of snapshot-start, snapshot-end, "
                             f"reset, not {self.control!r}")
        if self.offset is not None and (not isinstance(self.offset, str) or not self.offset):
            raise EventError("headers.offset must be a non-empty string")

    def to_json(self) -> dict[str, Any]:
        headers: dict[str, Any] = {"control": self.control}
        if self.offset is not None:
            headers["offset"] = self.offset
        return {"headers": headers}


StateEvent: TypeAlias = ChangeEvent | ControlEvent


def check_change(type_: object, key: object, operation: object, value: object,
                 txid: object, timestamp: object) -> None:
    """Raise ``EventError`` unless these fields make a valid change (5.1)."""
    if not isinstance(type_, str) or not type_:
        raise EventError("type must be a non-empty string")
    if not isinstance(key, str) or not key:
        raise EventError("key must be a non-empty string")
    if operation not in OPERATIONS:
        raise EventError(f"headers.operation must be insert, update, delete or upsert, "
                         f"not {operation!r}")
    if value is MISSING and operation in VALUE_REQUIRED:
        raise EventError(f"an {operation} must carry a value (STATE-PROTOCOL.md 4.1)")
    if txid is not None and (not isinstance(txid, str) or not txid):
        raise EventError("headers.txid must be a non-empty string")
    if timestamp is not None and (not isinstance(timestamp, str)
                                  or not _RFC3339.match(timestamp)):
        raise EventError(f"headers.timestamp must be an RFC 3339 date-time, not {timestamp!r}")


def parse_event(obj: Any, where: str | None = None) -> StateEvent:
    """One decoded JSON message as a typed event; ``EventError`` if malformed.

    A message with ``headers.operation`` is a change, one with
    ``headers.control`` a control (the TS type guards decide the same way).
    """
    if not isinstance(obj, dict):
        raise EventError(f"an event must be a JSON object, not {type(obj).__name__}", where)
    headers = obj.get("headers")
    if not isinstance(headers, dict):
        raise EventError("headers must be a JSON object", where)
    if "operation" in headers:
        extra = {k: v for k, v in headers.items()
                 if k not in ("operation", "txid", "timestamp")}
        try:
            return ChangeEvent(obj.get("type"), obj.get("key"), headers["operation"],
                               obj.get("value", MISSING), obj.get("old_value", MISSING),
                               headers.get("txid"), headers.get("timestamp"), extra)
        except EventError as err:
            raise EventError(err.reason, where) from None
    if "control" in headers:
        try:
            return ControlEvent(headers["control"], headers.get("offset"))
        except EventError as err:
            raise EventError(err.reason, where) from None
    raise EventError("headers must hold an operation (a change) or a control", where)


def parse_events(items: Iterable[Any], offset: str | None = None) -> list[StateEvent]:
    """The messages of one read chunk as events; errors name the chunk's offset
    and the message's index in it."""
    out: list[StateEvent] = []
    for index, item in enumerate(items):
        out.append(parse_event(item, _where(index, offset)))
    return out


def _where(index: int, offset: str | None) -> str:
    if offset is None:
        return f"message {index}"
    return f"message {index} of the chunk read at offset {offset}"


# -- builders (no schema): handy for registry / presence streams ---------------------------

def insert(type: str, key: str, value: Any, *, txid: str | None = None,
           timestamp: str | None = None) -> ChangeEvent:
    return ChangeEvent(type, key, "insert", value, txid=txid, timestamp=timestamp)


def update(type: str, key: str, value: Any, *, old_value: Any = MISSING,
           txid: str | None = None, timestamp: str | None = None) -> ChangeEvent:
    return ChangeEvent(type, key, "update", value, old_value, txid=txid, timestamp=timestamp)


def upsert(type: str, key: str, value: Any, *, txid: str | None = None,
           timestamp: str | None = None) -> ChangeEvent:
    return ChangeEvent(type, key, "upsert", value, txid=txid, timestamp=timestamp)


def delete(type: str, key: str, *, old_value: Any = MISSING, txid: str | None = None,
           timestamp: str | None = None) -> ChangeEvent:
    return ChangeEvent(type, key, "delete", old_value=old_value, txid=txid,
                       timestamp=timestamp)


def snapshot_start(offset: str | None = None) -> ControlEvent:
    return ControlEvent("snapshot-start", offset)


def snapshot_end(offset: str | None = None) -> ControlEvent:
    return ControlEvent("snapshot-end", offset)


def reset(offset: str | None = None) -> ControlEvent:
    return ControlEvent("reset", offset)
