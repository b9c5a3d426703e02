"""Client exceptions: one hierarchy, each carrying the status, the URL and the server's reason.

``DurableStreamError`` is the root, so ``except DurableStreamError`` catches
everything this package raises about a stream (network failures after the
retries ran out included). Subclasses name the conditions callers branch on.
"""

from __future__ import annotations

from collections.abc import Mapping


class DurableStreamError(Exception):
    """A request about a stream failed.

    ``status`` is the HTTP status (``None`` when no response arrived), ``url``
    the request URL, ``reason`` the server's one-line explanation (the first
    line of its error body), ``headers`` the response headers (lower-case names).
    """

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 reason: str = "", headers: Mapping[str, str] | None = None,
                 method: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url
        self.reason = reason
        self.method = method
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Worth retrying the same request later: rate limits and server-side failures."""
        return self.status is not None and (self.status == 429 or self.status >= 500)


class BadRequest(DurableStreamError):
    """400: the server refused the request as malformed (PROTOCOL.md 5)."""


class Unauthorized(DurableStreamError):
    """401: credentials missing or refused (PROTOCOL.md 11.2 leaves auth to extensions)."""


class Forbidden(DurableStreamError):
    """403 outside the idempotent producer: not allowed."""


class ProducerFenced(Forbidden):
    """403 with Producer-Epoch: a newer epoch owns this producer id (PROTOCOL.md 5.2.1)."""

    def __init__(self, message: str, *, current_epoch: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.current_epoch = current_epoch


class StreamNotFound(DurableStreamError):
    """404: no stream at this URL (or no fork source, PROTOCOL.md 4.2)."""


class StreamGone(DurableStreamError):
    """410: the stream is soft-deleted, or the offset is before retained data (5.6)."""


class StreamConflict(DurableStreamError):
    """409: the stream exists with another configuration, or the write conflicts (5.1, 5.2)."""


class StreamClosedError(StreamConflict):
    """409 with Stream-Closed: the stream is closed, appends are refused (PROTOCOL.md 5.2).

    ``final_offset`` is the closed stream's tail, as the server reported it.
    """

    def __init__(self, message: str, *, final_offset: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.final_offset = final_offset


class SequenceGap(StreamConflict):
    """409 with Producer-Expected-Seq: batches went missing (PROTOCOL.md 5.2.1)."""

    def __init__(self, message: str, *, expected_seq: int | None = None,
                 received_seq: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.expected_seq = expected_seq
        self.received_seq = received_seq


class PayloadTooLarge(DurableStreamError):
    """413: the append is larger than the server accepts."""


class RateLimited(DurableStreamError):
    """429 after the retries ran out; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(DurableStreamError):
    """5xx after the retries ran out."""


class ConnectionFailed(DurableStreamError):
    """No usable response: connection refused or cut, timeouts (after the retries ran out).

    ``connect_failure`` is true when no connection was made, so the request
    surely never reached the server.
    """

    def __init__(self, message: str, *, connect_failure: bool = False, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.connect_failure = connect_failure

    @property
    def retryable(self) -> bool:
        return True


class ProducerQueueFull(DurableStreamError):
    """An idempotent producer's queue is at its bound (``max_queue_bytes`` or
    ``max_queue_items``) and it was told to raise rather than block (``on_full="raise"``)."""


class ProtocolViolation(DurableStreamError):
    """The server answered something the protocol does not allow (a missing offset, ...)."""


class SchemaError(DurableStreamError):
    """A typed stream's item failed validation (on append or on read); ``offset`` says where."""

    def __init__(self, message: str, *, offset: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.offset = offset


__all__ = [
    "BadRequest",
    "ConnectionFailed",
    "DurableStreamError",
    "Forbidden",
    "PayloadTooLarge",
    "ProducerFenced",
    "ProducerQueueFull",
    "ProtocolViolation",
    "RateLimited",
    "SchemaError",
    "SequenceGap",
    "ServerError",
    "StreamClosedError",
    "StreamConflict",
    "StreamGone",
    "StreamNotFound",
    "Unauthorized",
]
