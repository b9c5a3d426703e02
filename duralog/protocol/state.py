"""A stream's state and the rules that change it (PROTOCOL.md 4, 5.1-5.4).

Every backend keeps a ``StreamState`` per stream and asks the functions here
what an operation means; the backend only decides where bytes and state are
kept. That is how the memory, SQLite and later backends agree on every answer.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

from .errors import ProtocolError
from .headers import Producer, media_type
from .offsets import format_offset

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(slots=True)
class ProducerState:
    epoch: int
    last_seq: int
    #: When an append last moved this producer's state (for --producer-ttl, 5.2.1).
    last_used: float = 0.0


@dataclass(slots=True)
class StreamState:
    """What the server knows about one stream, apart from its bytes."""

    id: int  # internal id, never reused by a backend; keys the stream's records
    path: str
    content_type: str
    created_at: float
    tail: int = 0  # position after the last committed byte
    ttl: int | None = None
    expires_at: str | None = None  # as the client sent it, echoed on HEAD
    expires_ts: float | None = None
    last_access: float = 0.0
    closed: bool = False
    closed_by: tuple[str, int, int] | None = None  # producer triple that closed it
    stream_seq: str | None = None
    producers: MutableMapping[str, ProducerState] = field(default_factory=dict)
    source_id: int | None = None  # fork: the stream whose data it inherits
    forked_from: str | None = None  # fork: the source's path, as given
    fork_pos: int | None = None  # fork: inherited data ends here
    fork_sub: int = 0
    refcount: int = 0  # forks that inherit from this stream
    soft_deleted: bool = False
    # Retention (an extension; PROTOCOL.md 4 lets servers drop old data): the
    # newest data kept, by bytes and by age; None keeps everything.
    retention_bytes: int | None = None
    retention_seconds: int | None = None
    start: int = 0  # earliest retained position; reads before it answer 410

    @property
    def next_offset(self) -> str:
        return format_offset(self.tail)

    def is_expired(self, now: float) -> bool:
        """4: an absolute expiry, or a sliding TTL since the last read or write."""
        if self.expires_ts is not None and now >= self.expires_ts:
            return True
        return self.ttl is not None and now >= self.last_access + self.ttl

    def copy(self, *, share_producers: bool = False) -> StreamState:
        """A copy; its producer table is a copy too unless ``share_producers``.

        A durable backend that records producer changes separately shares the
        table, so copying a stream costs the same with 1 or 100,000 producers.
        """
        clone = StreamState(**{name: getattr(self, name) for name in self.__slots__})
        if not share_producers:
            clone.producers = {k: ProducerState(v.epoch, v.last_seq, v.last_used)
                               for k, v in self.producers.items()}
        return clone


# ---------------------------------------------------------------------------
# Create (5.1, 4.2)


@dataclass(slots=True)
class CreateRequest:
    content_type: str | None  # None: a fork that inherits its source's type
    ttl: int | None = None
    expires_at: str | None = None
    expires_ts: float | None = None
    closed: bool = False
    forked_from: str | None = None
    fork_pos: int | None = None  # None: the source's tail
    fork_sub: int = 0
    retention_bytes: int | None = None
    retention_seconds: int | None = None


def same_config(state: StreamState, req: CreateRequest) -> bool:
    """5.1, 4.2: a repeated PUT matches when type, expiry, closure and fork agree."""
    wanted_type = req.content_type or (state.content_type if req.forked_from else None)
    if media_type(wanted_type or DEFAULT_CONTENT_TYPE) != media_type(state.content_type):
        return False
    if req.forked_from != state.forked_from:
        return False
    if (req.retention_bytes, req.retention_seconds) != (state.retention_bytes,
                                                         state.retention_seconds):
        return False
    if req.forked_from is not None:
        if req.fork_pos is not None and req.fork_pos != state.fork_pos:
            return False
        if req.fork_sub != state.fork_sub:
            return False
        # A fork may have inherited its expiry; a repeat of the same request matches.
        if req.ttl is None and req.expires_ts is None:
            return req.closed == state.closed
    if req.ttl != state.ttl or req.expires_ts != state.expires_ts:
        return False
    return req.closed == state.closed


def fork_expiry(req: CreateRequest, source: StreamState) -> tuple[int | None, str | None,
                                                                    float | None]:
    """4.2: a fork's own TTL or expiry wins; otherwise it inherits the source's."""
    if req.ttl is not None:
        return req.ttl, None, None
    if req.expires_ts is not None:
        return None, req.expires_at, req.expires_ts
    if source.ttl is not None:
        return source.ttl, None, None
    return None, source.expires_at, source.expires_ts


# ---------------------------------------------------------------------------
# Append and close (5.2, 5.2.1, 5.3)


@dataclass(slots=True)
class AppendRequest:
    payload: bytes  # what to store: raw bytes, or a JSON fragment; b"" to close only
    content_type: str | None = None
    stream_seq: str | None = None
    producer: Producer | None = None
    close: bool = False
    # False: the store may make the bytes readable once written but before they are
    # flushed to stable storage (sqlite: a commit without fsync, which survives the
    # process being killed but not a power cut). Only the server's own writes use it
    # (the proxy's body batches, docs/proxy.md); client appends are always synced.
    sync: bool = True
    #: The stream the caller prepared this append for (its id), or None. A backend
    #: whose view may lag the database (postgres, several nodes) refuses with
    #: store.base.StaleState when the path now names another stream.
    stream_id: int | None = None


@dataclass(slots=True)
class AppendDecision:
    """What an append does. ``write`` is false for refusals and idempotent repeats."""

    status: int
    write: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    producer_state: ProducerState | None = None
    error: ProtocolError | None = None


def _closed_refusal(state: StreamState) -> ProtocolError:
    # 5.2: a 409 for a closed stream carries Stream-Closed and the final offset.
    return ProtocolError(409, "stream is closed", {
        "stream-closed": "true", "stream-next-offset": state.next_offset})


def decide_append(state: StreamState, req: AppendRequest) -> AppendDecision:
    """Check an append against the stream, in the spec's order of precedence.

    5.2 error precedence: closed, then content type, then sequence. Producer
    checks (5.2.1) come before Stream-Seq, as in the reference server.
    """
    producer = req.producer
    if state.closed:
        if producer is not None and state.closed_by == (producer.id, producer.epoch,
                                                        producer.seq):
            # 5.2.1: a retry of the request that closed the stream.
            return AppendDecision(204, headers={
                "stream-closed": "true", "stream-next-offset": state.next_offset,
                "producer-epoch": str(producer.epoch), "producer-seq": str(producer.seq)})
        if not req.payload and req.close and producer is None:
            # 5.2: close-only requests are idempotent.
            return AppendDecision(204, headers={
                "stream-closed": "true", "stream-next-offset": state.next_offset})
        return AppendDecision(409, error=_closed_refusal(state))

    if req.payload and req.content_type is not None and (
            media_type(req.content_type) != media_type(state.content_type)):
        return AppendDecision(409, error=ProtocolError(
            409, f"content type does not match the stream's ({state.content_type})"))

    new_producer_state: ProducerState | None = None
    if producer is not None:
        current = state.producers.get(producer.id)
        if current is None:
            if producer.seq != 0:
                return _gap(0, producer.seq)
            new_producer_state = ProducerState(producer.epoch, 0)
        elif producer.epoch < current.epoch:
            # 5.2.1: zombie fencing.
            return AppendDecision(403, error=ProtocolError(
                403, "stale producer epoch", {"producer-epoch": str(current.epoch)}))
        elif producer.epoch > current.epoch:
            if producer.seq != 0:
                return AppendDecision(400, error=ProtocolError(
                    400, "a new producer epoch must start at Producer-Seq 0"))
            new_producer_state = ProducerState(producer.epoch, 0)
        elif producer.seq <= current.last_seq:
            # 5.2.1: a duplicate; the data is already in the stream.
            return AppendDecision(204, headers={
                "producer-epoch": str(producer.epoch),
                "producer-seq": str(current.last_seq)})
        elif producer.seq == current.last_seq + 1:
            new_producer_state = ProducerState(producer.epoch, producer.seq)
        else:
            return _gap(current.last_seq + 1, producer.seq)

    if req.stream_seq is not None and state.stream_seq is not None and (
            req.stream_seq.encode() <= state.stream_seq.encode()):
        # 5.2: Stream-Seq compares byte-wise and must strictly increase.
        return AppendDecision(409, error=ProtocolError(
            409, "Stream-Seq is not greater than the last one"))

    headers: dict[str, str] = {}
    if producer is not None:
        headers["producer-epoch"] = str(producer.epoch)
        headers["producer-seq"] = str(producer.seq)
    if req.close:
        headers["stream-closed"] = "true"
    status = 200 if producer is not None and req.payload else 204
    return AppendDecision(status, write=True, headers=headers,
                          producer_state=new_producer_state)


def _gap(expected: int, received: int) -> AppendDecision:
    return AppendDecision(409, error=ProtocolError(409, "producer sequence gap", {
        "producer-expected-seq": str(expected), "producer-received-seq": str(received)}))


def apply_append(state: StreamState, req: AppendRequest, decision: AppendDecision,
                 now: float) -> None:
    """Change ``state`` as an accepted append does (the bytes are the backend's job)."""
    state.tail += len(req.payload)
    if req.stream_seq is not None:
        state.stream_seq = req.stream_seq
    if req.producer is not None and decision.producer_state is not None:
        decision.producer_state.last_used = now
        state.producers[req.producer.id] = decision.producer_state
    if req.close:
        state.closed = True
        if req.producer is not None:
            state.closed_by = (req.producer.id, req.producer.epoch, req.producer.seq)
    state.last_access = now
