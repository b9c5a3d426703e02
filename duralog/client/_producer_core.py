"""The idempotent producer without I/O: batching, sequence numbers, epochs, the queue
bound (PROTOCOL.md 5.2.1). Part of the client's sans-IO core (see ``_core``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..protocol import headers as H
from . import errors as E
from ._retry import retry_after_of, should_retry
from ._wire import AppendResult, Request, append_request, append_result, error_for

# ---------------------------------------------------------------------------
# The idempotent producer (5.2.1)


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """Validated settings of an idempotent producer."""

    producer_id: str
    epoch: int = 0
    auto_claim: bool = False
    max_batch_bytes: int = 1 << 20
    linger: float = 0.005
    max_in_flight: int = 5
    # Backpressure: messages queued or in flight, in bytes and in count. When full,
    # append blocks until batches land ("block") or raises ProducerQueueFull ("raise").
    max_queue_bytes: int = 64 << 20
    max_queue_items: int = 100_000
    on_full: Literal["block", "raise"] = "block"

    def __post_init__(self) -> None:
        if not isinstance(self.producer_id, str) or not self.producer_id:
            raise ValueError("producer_id must be a non-empty string (PROTOCOL.md 5.2.1)")
        for name in ("epoch",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    0 <= value <= H.MAX_SAFE_INTEGER):
                raise ValueError(f"{name} must be an integer in 0..2**53-1, not {value!r}")
        if not isinstance(self.max_batch_bytes, int) or self.max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be an integer >= 1, "
                             f"not {self.max_batch_bytes!r}")
        if not isinstance(self.linger, int | float) or self.linger < 0:
            raise ValueError(f"linger must be a number of seconds >= 0, not {self.linger!r}")
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an integer >= 1, "
                             f"not {self.max_in_flight!r}")
        for name in ("max_queue_bytes", "max_queue_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if self.on_full not in ("block", "raise"):
            raise ValueError(f"on_full must be 'block' or 'raise', not {self.on_full!r}")


@dataclass(slots=True)
class Batch:
    """One producer request: its body, and the (epoch, seq) it travels under."""

    body: bytes
    count: int
    epoch: int
    seq: int
    close: bool = False
    transmissions: int = 0  # how many times it was sent under the current (epoch, seq)
    size: int = 0  # bytes of its messages, as queued (for the queue bound)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do after a producer response.

    kind: "ok" (done), "retry" (same request again after a delay), "claim" (the
    batch moved to a new epoch: send again now), "wait" (an earlier batch has not
    landed yet: wait for ``wait_for`` seqs, then send again), "fail" (give up).
    """

    kind: Literal["ok", "retry", "claim", "wait", "fail"]
    result: AppendResult | None = None
    error: E.DurableStreamError | None = None
    wait_for: range = range(0)
    retry_after: float | None = None


class ProducerCore:
    """Batching, sequence numbers, epochs and auto-claim, without I/O or threads.

    Drivers call ``add`` for each message, ``take_batch`` when ``ready`` says a
    batch should go (and ``can_dispatch`` allows one more in flight), send
    ``request(batch)``, and feed the answer to ``outcome``.
    """

    def __init__(self, options: ProducerOptions, content_type: str) -> None:
        self.options = options
        self.content_type = content_type
        self.json_mode = H.is_json(content_type)
        self.epoch = options.epoch
        self.next_seq = 0
        # Auto-claim: until a first batch lands we do not know our epoch, so only one
        # batch travels at a time; after that, batches are pipelined (5.2.1).
        self.claimed = not options.auto_claim
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.first_pending_at: float | None = None
        self.completed: set[int] = set()  # seqs of the current epoch that landed
        self.pruned_below = 0  # seqs below this landed and were dropped from the set
        self.last_offset: str | None = None
        self.sent_messages = 0
        self.sent_bytes = 0  # bytes of the messages that landed
        # Messages queued or in flight: what the queue bound counts.
        self.queued_bytes = 0
        self.queued_items = 0
        # The answer to our close (5.2.1 closure): a second close returns it, sending nothing.
        self.closed_result: AppendResult | None = None

    # -- batching ------------------------------------------------------------------
    def has_room(self, size: int) -> bool:
        """Whether one more message of ``size`` bytes fits the queue bound. An empty
        queue takes any message, so one larger than the bound is not refused forever."""
        if self.queued_items == 0:
            return True
        return (self.queued_items < self.options.max_queue_items
                and self.queued_bytes + size <= self.options.max_queue_bytes)

    def add(self, entry: bytes, now: float) -> None:
        if self.first_pending_at is None:
            self.first_pending_at = now
        self.pending.append(entry)
        self.pending_bytes += len(entry)
        self.queued_bytes += len(entry)
        self.queued_items += 1

    def release(self, batch: Batch) -> None:
        """A batch landed or failed for good: its messages leave the queue bound."""
        if batch.close:
            return  # a close's final message never entered the queue
        self.queued_bytes -= batch.size
        self.queued_items -= batch.count

    def ready(self, now: float, force: bool) -> bool:
        if not self.pending:
            return False
        if force or self.pending_bytes >= self.options.max_batch_bytes:
            return True
        assert self.first_pending_at is not None
        return now - self.first_pending_at >= self.options.linger

    def linger_left(self, now: float) -> float | None:
        if not self.pending or self.first_pending_at is None:
            return None
        return max(0.0, self.options.linger - (now - self.first_pending_at))

    def can_dispatch(self, in_flight: int) -> bool:
        if not self.claimed:
            return in_flight == 0
        return in_flight < self.options.max_in_flight

    def _body(self, entries: list[bytes]) -> bytes:
        if self.json_mode:
            # 9.1.2: one array per request, flattened by the server into messages.
            return b"[" + b",".join(entries) + b"]"
        return b"".join(entries)

    def take_batch(self) -> Batch:
        """The pending messages as the next batch (at most about max_batch_bytes)."""
        taken: list[bytes] = []
        size = 0
        while self.pending and (not taken or size + len(self.pending[0])
                                <= self.options.max_batch_bytes):
            entry = self.pending.pop(0)
            taken.append(entry)
            size += len(entry)
        self.pending_bytes -= size
        self.first_pending_at = self.first_pending_at if self.pending else None
        batch = Batch(self._body(taken), len(taken), self.epoch, self.next_seq, size=size)
        self.next_seq += 1
        return batch

    def close_batch(self, final: bytes | None) -> Batch:
        """A close (with an optional final message) as the next seq (5.2.1 closure)."""
        body = b"" if final is None else self._body([final])
        batch = Batch(body, 0 if final is None else 1, self.epoch, self.next_seq, close=True)
        self.next_seq += 1
        return batch

    def request(self, url: str, batch: Batch) -> Request:
        return append_request(url, batch.body, content_type=self.content_type,
                              close=batch.close,
                              producer=(self.options.producer_id, batch.epoch, batch.seq))

    # -- answers ---------------------------------------------------------------------
    def outcome(self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes,
                url: str) -> Outcome:
        hdrs = {k.lower(): v for k, v in headers.items()}
        if batch.close and status == 409 and batch.transmissions > 1 and H.is_true(
                hdrs.get(H.STREAM_CLOSED)):
            # A close sent again after its answer was lost: the stream is closed, by
            # our first transmission (a server that does not deduplicate the close
            # answers 409 Stream-Closed). The close landed (5.2.1 closure, 5.3).
            return Outcome("ok", result=AppendResult(hdrs.get(H.STREAM_NEXT_OFFSET), closed=True))
        if status < 300:
            if (status == 204 and batch.body and not self.claimed and batch.transmissions == 1
                    and self.options.auto_claim):
                # Auto-claim: the very first transmission of our first batch was
                # called a duplicate, so the server holds state of an earlier
                # incarnation at this epoch; writing under it would drop our data.
                # Take the next epoch instead (5.2.1 auto-claim flow).
                return self._claim(batch, self.epoch + 1)
            result = append_result(hdrs, status, producer_data=bool(batch.body))
            return Outcome("ok", result=result)
        error = error_for("POST", url, status, hdrs, body)
        if isinstance(error, E.ProducerFenced):
            if self.options.auto_claim and not self.claimed:
                # 5.2.1 auto-claim: the server's epoch + 1, starting again at seq 0.
                current = error.current_epoch if error.current_epoch is not None else self.epoch
                return self._claim(batch, current + 1)
            return Outcome("fail", error=error)
        if isinstance(error, E.SequenceGap):
            expected = error.expected_seq
            if expected is not None and expected < batch.seq and batch.epoch == self.epoch:
                # Pipelined requests can arrive out of order (5.2.1 concurrency): wait
                # for the earlier seqs to land, then send this one again.
                return Outcome("wait", wait_for=range(expected, batch.seq))
            return Outcome("fail", error=error)
        if should_retry("idempotent", status=status, connect_failure=False):
            return Outcome("retry", error=error, retry_after=retry_after_of(error))
        return Outcome("fail", error=error)

    def _claim(self, batch: Batch, new_epoch: int) -> Outcome:
        if new_epoch > H.MAX_SAFE_INTEGER:
            return Outcome("fail", error=E.ProducerFenced("producer epoch exhausted"))
        self.epoch = new_epoch
        batch.epoch = new_epoch
        batch.seq = 0
        batch.transmissions = 0
        self.next_seq = 1
        self.completed = set()
        self.pruned_below = 0
        return Outcome("claim")

    def landed(self, batch: Batch, result: AppendResult) -> None:
        if batch.epoch == self.epoch:
            self.completed.add(batch.seq)
            # Keep the set small: seqs far below the newest are never waited for.
            if len(self.completed) > 4 * self.options.max_in_flight + 16:
                floor = batch.seq - 2 * self.options.max_in_flight - 8
                self.completed = {s for s in self.completed if s >= floor}
                self.pruned_below = max(self.pruned_below, floor)
        self.claimed = True
        self.sent_messages += batch.count
        self.sent_bytes += batch.size
        if batch.close:
            self.closed_result = result
        if result.next_offset and (self.last_offset is None
                                   or result.next_offset > self.last_offset):
            self.last_offset = result.next_offset

    def landed_all(self, epoch: int, seqs: range) -> bool:
        if epoch != self.epoch:
            return False
        return all(s in self.completed or s < self.pruned_below for s in seqs)
