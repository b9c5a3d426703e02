"""The blocking idempotent producer (PROTOCOL.md 5.2.1): batches on a dispatcher
thread, sends them from a small pool, retries them under the same (id, epoch, seq).

The decisions (batching, sequencing, epochs, the queue bound) are in
``_producer_core``; this module is threads and waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _core as C
from . import errors as E

if TYPE_CHECKING:
    from ._sync import DurableStream


class IdempotentProducer:
    """Fire-and-forget appends, batched, pipelined and deduplicated (PROTOCOL.md 5.2.1).

    ``append`` queues a message and returns at once. Messages are sent in
    batches when ``max_batch_bytes`` is reached or ``linger`` seconds passed;
    up to ``max_in_flight`` batches travel at once, each with its own
    Producer-Seq. Failed batches are retried with the same (id, epoch, seq), so
    the server drops any copy it already has. With ``auto_claim`` a producer
    that lost its epoch (a restart) takes the server's epoch + 1. ``flush``
    waits until everything queued has landed and raises the first failure.

    Messages queued or in flight are bounded by ``max_queue_bytes`` and
    ``max_queue_items``: at the bound ``append`` blocks until batches land
    (``on_full="block"``) or raises ``ProducerQueueFull`` (``on_full="raise"``).
    A batch is retried within ``retry`` (by default for up to a minute); once
    that budget is spent the producer fails: ``append``, ``flush`` and
    ``close`` raise the error.
    """

    def __init__(self, stream: DurableStream, producer_id: str, *, epoch: int = 0,
                 auto_claim: bool = False, max_batch_bytes: int = 1 << 20,
                 linger: float = 0.005, max_in_flight: int = 5,
                 content_type: str | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 retry: C.RetryPolicy | None = None, max_queue_bytes: int = 64 << 20,
                 max_queue_items: int = 100_000, on_full: str = "block") -> None:
        options = C.ProducerOptions(producer_id, epoch, auto_claim, max_batch_bytes, linger,
                                    max_in_flight, max_queue_bytes, max_queue_items,
                                    on_full)  # type: ignore[arg-type]
        if retry is not None and not isinstance(retry, C.RetryPolicy):
            raise ValueError("retry must be a RetryPolicy")
        self._stream = stream
        self._retry = retry or C.PRODUCER_RETRY
        self._core = C.ProducerCore(options, content_type or stream._known_content_type())
        self._on_error = on_error
        self._cond = threading.Condition()
        self._in_flight = 0
        self._error: Exception | None = None
        self._forcing = 0
        self._stopping = False
        self._stopped = False
        self._aborted = threading.Event()  # set when stopping on an exception: no more retries
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="duralog-producer")
        self._dispatcher = threading.Thread(target=self._dispatch, name="duralog-producer",
                                            daemon=True)
        self._dispatcher.start()

    @property
    def epoch(self) -> int:
        return self._core.epoch

    @property
    def next_seq(self) -> int:
        return self._core.next_seq

    @property
    def last_offset(self) -> str | None:
        """The largest Stream-Next-Offset an accepted batch returned."""
        return self._core.last_offset

    @property
    def error(self) -> Exception | None:
        return self._error

    @property
    def sent_messages(self) -> int:
        """Messages that landed (duplicates the server dropped included once)."""
        return self._core.sent_messages

    @property
    def sent_bytes(self) -> int:
        """Bytes of the messages that landed."""
        return self._core.sent_bytes

    # -- queueing -----------------------------------------------------------------------
    def append(self, data: bytes | str) -> None:
        """Queue bytes (or text); one message of a JSON stream must be JSON text."""
        entry = C.encode_body(data)
        if not entry:
            raise ValueError("cannot append an empty message")
        self._add(entry)

    def append_json(self, value: Any) -> None:
        """Queue one JSON value as one message."""
        self._add(C.dumps_json(value))

    def _add(self, entry: bytes) -> None:
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stopping:
                    raise RuntimeError("the producer is closed")
                if self._core.has_room(len(entry)):
                    break
                if self._core.options.on_full == "raise":
                    raise E.ProducerQueueFull(
                        f"producer queue full ({self._core.queued_items} messages, "
                        f"{self._core.queued_bytes} bytes not yet landed)", url=self._stream.url)
                # Full: send what is queued now, and wait for batches to land.
                self._forcing += 1
                self._cond.notify_all()
                try:
                    self._cond.wait(0.5)
                finally:
                    self._forcing -= 1
            self._core.add(entry, time.monotonic())
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait until it landed; raise the first failure."""
        with self._cond:
            self._forcing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(
                    lambda: self._error is not None
                    or (not self._core.pending and self._in_flight == 0), timeout)
            finally:
                self._forcing -= 1
            if self._error is not None:
                raise self._error
            if not done:
                raise TimeoutError("producer flush timed out")

    def close(self) -> None:
        """Flush, then stop the producer's threads (the stream stays open)."""
        try:
            if not self._stopped:
                self.flush()
        finally:
            self._stop()

    def close_stream(self, final: bytes | str | None = None, *,
                     json: Any = C.MISSING_JSON) -> C.AppendResult:
        """Flush, then close the stream with producer headers, optionally appending
        a final message in the same step (5.2.1 closure); the producer stops."""
        if self._core.closed_result is not None:
            # Our close already landed: the same answer, nothing sent (5.2.1 closure).
            return self._core.closed_result
        try:
            self.flush()
            if json is not C.MISSING_JSON:
                entry: bytes | None = C.dumps_json(json)
            else:
                entry = None if final is None else C.encode_body(final)
            with self._cond:
                batch = self._core.close_batch(entry)
                self._in_flight += 1
            return self._deliver(batch)
        finally:
            self._stop()

    def __enter__(self) -> IdempotentProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop at once: messages not yet landed are dropped, retries end (Ctrl-C)."""
        with self._cond:
            if self._error is None:
                self._error = RuntimeError("the producer was aborted")
        self._aborted.set()
        self._stop()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._dispatcher.join()
        self._executor.shutdown(wait=True)
        self._stopped = True

    # -- threads ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        core = self._core
        with self._cond:
            while True:
                now = time.monotonic()
                can = core.can_dispatch(self._in_flight)
                if self._error is None and can and core.ready(
                        now, self._forcing > 0 or self._stopping):
                    batch = core.take_batch()
                    self._in_flight += 1
                    self._executor.submit(self._run_batch, batch)
                    continue
                if self._stopping and self._in_flight == 0 and (
                        not core.pending or self._error is not None):
                    return
                wait = core.linger_left(now) if can and self._error is None else None
                self._cond.wait(wait)

    def _run_batch(self, batch: C.Batch) -> None:
        try:
            self._deliver(batch)
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)

    def _deliver(self, batch: C.Batch) -> C.AppendResult:
        """Send one batch until it lands or fails for good; keeps in-flight counts."""
        core = self._core
        stream = self._stream
        backoff = C.Backoff(self._retry)
        try:
            while True:
                with self._cond:
                    req = core.request(stream.url, batch)
                    batch.transmissions += 1
                try:
                    resp = stream._exchange(req)
                except E.ConnectionFailed as err:
                    outcome = C.Outcome("retry", error=err)
                else:
                    with self._cond:
                        outcome = core.outcome(batch, resp.status_code, resp.headers,
                                               resp.content, stream.url)
                if outcome.kind == "ok":
                    assert outcome.result is not None
                    with self._cond:
                        core.landed(batch, outcome.result)
                        core.release(batch)
                        self._in_flight -= 1
                        self._cond.notify_all()
                    return outcome.result
                if outcome.kind == "claim":
                    continue
                if outcome.kind == "wait":
                    with self._cond:
                        epoch = batch.epoch
                        self._cond.wait_for(lambda e=epoch, w=outcome.wait_for:
                                            self._error is not None or core.landed_all(e, w))
                        if self._error is not None:
                            raise self._error
                    continue
                if outcome.kind == "retry" and not self._aborted.is_set():
                    assert outcome.error is not None
                    delay = backoff.next_delay(outcome.error)
                    if delay is not None:
                        stream._notify_retry(outcome.error, delay)
                        if not self._aborted.wait(delay):
                            continue
                assert outcome.error is not None
                raise outcome.error
        except Exception as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
                core.release(batch)
                self._in_flight -= 1
                self._cond.notify_all()
            raise
