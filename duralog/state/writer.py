"""StateWriter and AsyncStateWriter: state events appended through the
idempotent producer (PROTOCOL.md 5.2.1), so a retried append is never stored
twice.

A transaction is one append: its events are queued as one producer entry,
which the producer always sends whole in one request, and the server stores an
append atomically, so every reader sees all of a transaction or none of it.
Each change of a transaction carries its txid (STATE-PROTOCOL.md 4.1,
``headers.txid``), which ``StreamDB.await_txid`` waits for.

Upserts: the protocol's JSON Schema (state-protocol.schema.json) allows only
insert, update and delete. By default the writer sends an upsert as an
``insert``, which every reader materializes the same way (section 6: insert
stores the value at type/key; the TS StreamDB turns an insert of an existing
key into an update). ``upsert_as="upsert"`` keeps the TS helpers' wire form.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any, Literal

import orjson

from ..client import AsyncDurableStream, AsyncIdempotentProducer, DurableStream
from .events import ChangeEvent, ControlEvent, StateEvent

UpsertAs = Literal["insert", "upsert"]


def new_txid() -> str:
    return str(uuid.uuid4())


def encode(events: Iterable[StateEvent], txid: str | None = None,
           upsert_as: UpsertAs = "insert") -> bytes:
    """Events as the comma-separated JSON values of one producer entry.

    The producer sends a JSON stream's queued entries as ``[e1,e2,...]``
    (PROTOCOL.md 9.1.2: the server flattens one array level into messages), so
    an entry ``a,b,c`` lands as three messages of the same request."""
    parts: list[bytes] = []
    for event in events:
        if isinstance(event, ChangeEvent):
            if txid is not None:
                event = replace(event, txid=txid)
            if event.operation == "upsert" and upsert_as == "insert":
                event = replace(event, operation="insert")
        elif not isinstance(event, ControlEvent):
            raise TypeError(f"not a state event: {event!r}")
        parts.append(orjson.dumps(event.to_json()))
    if not parts:
        raise ValueError("a transaction needs at least one event")
    return b",".join(parts)


class Transaction:
    """Events collected by ``writer.transaction()``; appended together on exit."""

    def __init__(self, txid: str) -> None:
        self.txid = txid
        self.events: list[StateEvent] = []

    def append(self, *events: StateEvent) -> None:
        self.events.extend(events)


class _EventWriter:
    """What both writers share: events encoded into one append each; the
    producer queues the append (its ``append`` does not block in either twin)."""

    _producer: Any
    upsert_as: UpsertAs

    def append(self, *events: StateEvent, txid: str | None = None) -> str | None:
        """Queue events as one atomic append. With several change events and
        no txid, a fresh txid is stamped on all of them; returns the txid used."""
        if txid is None and sum(isinstance(e, ChangeEvent) for e in events) > 1:
            txid = new_txid()
        self._producer.append(encode(events, txid, self.upsert_as))
        if txid is None and len(events) == 1 and isinstance(events[0], ChangeEvent):
            return events[0].txid
        return txid

    def commit(self, events: Iterable[StateEvent], txid: str | None = None) -> str:
        """One transaction: the events with one txid (given or new), appended whole."""
        txid = txid or new_txid()
        self._producer.append(encode(list(events), txid, self.upsert_as))
        return txid

    def reset(self, offset: str | None = None) -> None:
        """Append a reset control message (STATE-PROTOCOL.md 4.2.2)."""
        self._producer.append(encode([ControlEvent("reset", offset)]))

    @property
    def last_offset(self) -> str | None:
        return self._producer.last_offset


class StateWriter(_EventWriter):
    """Appends state events to a JSON stream through an idempotent producer.

    ``producer_id`` should be stable across restarts of one writer (the
    producer's epoch is claimed automatically); by default a fresh one.
    """

    def __init__(self, stream: str | DurableStream, *, producer_id: str | None = None,
                 upsert_as: UpsertAs = "insert", **producer_options: Any) -> None:
        self.stream = stream if isinstance(stream, DurableStream) else DurableStream(stream)
        self.upsert_as = upsert_as
        producer_options.setdefault("auto_claim", True)
        producer_options.setdefault("content_type", "application/json")
        self._producer = self.stream.producer(producer_id or f"state-{uuid.uuid4()}",
                                              **producer_options)

    @contextmanager
    def transaction(self, txid: str | None = None) -> Iterator[Transaction]:
        """``with writer.transaction() as tx: tx.append(...)``: appended on exit
        (nothing is appended if the block raises)."""
        tx = Transaction(txid or new_txid())
        yield tx
        if tx.events:
            self.commit(tx.events, tx.txid)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued landed; raises the first failure."""
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> StateWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._producer.__exit__(exc_type, *rest)


class AsyncStateWriter(_EventWriter):
    """The asyncio twin of ``StateWriter``; create it with ``await AsyncStateWriter.open(...)``."""

    def __init__(self, stream: AsyncDurableStream, producer: AsyncIdempotentProducer,
                 upsert_as: UpsertAs = "insert") -> None:
        self.stream = stream
        self.upsert_as = upsert_as
        self._producer = producer

    @classmethod
    async def open(cls, stream: str | AsyncDurableStream, *, producer_id: str | None = None,
                   upsert_as: UpsertAs = "insert", **producer_options: Any) -> AsyncStateWriter:
        handle = stream if isinstance(stream, AsyncDurableStream) else AsyncDurableStream(stream)
        producer_options.setdefault("auto_claim", True)
        producer_options.setdefault("content_type", "application/json")
        producer = await handle.producer(producer_id or f"state-{uuid.uuid4()}",
                                         **producer_options)
        return cls(handle, producer, upsert_as)

    @asynccontextmanager
    async def transaction(self, txid: str | None = None) -> Any:
        tx = Transaction(txid or new_txid())
        yield tx
        if tx.events:
            self.commit(tx.events, tx.txid)

    async def flush(self, timeout: float | None = None) -> None:
        await self._producer.flush(timeout)

    async def close(self) -> None:
        await self._producer.close()

    async def __aenter__(self) -> AsyncStateWriter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self._producer.__aexit__(exc_type, *rest)
