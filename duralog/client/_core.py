"""The client's sans-IO core: what to send, and what an answer means.

The sync (``_sync``) and async (``_async``) clients are thin drivers around
this module: they resolve headers, do the I/O and sleep; everything that
decides (request shapes, status mapping, read-mode state machines, retry
delays, producer batching) lives here once, so the twins cannot drift apart.
"""

from __future__ import annotations

import base64
import email.utils
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from ..protocol import headers as H
from ..protocol.offsets import START
from ..protocol.sse_reader import SSEEvent
from . import errors as E

LiveMode = Literal["long-poll", "sse", "auto"] | None
LIVE_MODES = (None, "long-poll", "sse", "auto")

# Requests and how they may be retried:
#   "safe"        GET/HEAD, close-only, PUT: repeating them cannot change the outcome (5.1, 5.3)
#   "idempotent"  producer appends: the server deduplicates (id, epoch, seq) (5.2.1)
#   "unsafe"      plain appends and DELETE: retried only when the request surely never
#                 reached the server (connect failures) or when the server said it did
#                 not apply it (429, 500, 503: duralog answers these before any write
#                 commits, PROTOCOL.md 12.5); a connection lost after the request went
#                 out, or a 502/504 from a proxy, may hide a success, so that error surfaces.
RetryKind = Literal["safe", "idempotent", "unsafe"]

JSON_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"
_EMPTY_JSON_ARRAY = re.compile(rb"\s*\[\s*\]\s*")


# ---------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for connection errors, 5xx and 429.

    ``max_attempts`` counts tries of one request, the first included (``None``:
    retry forever). Readers reset the count whenever a response makes progress,
    so a long-lived reader survives any number of separate outages. The delay
    before retry *n* is ``min(max_delay, initial_delay * multiplier**(n-1))``,
    scaled down by a random factor in ``[1 - jitter, 1]`` so that many clients
    cut off together do not come back together. A 429's or 503's ``Retry-After``
    replaces the computed delay (capped at ``max_retry_after``). ``max_elapsed``
    bounds the seconds spent retrying one request, from its first failure
    (``None``: no time bound); the budget ends at whichever limit comes first.
    ``initial_delay`` must be above 0: a zero delay is a hot loop against a
    failing server.
    """

    max_attempts: int | None = 8
    initial_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
                not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer >= 1 or None, "
                             f"not {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if self.initial_delay <= 0:
            raise ValueError(f"initial_delay must be above 0 seconds (0 retries in a hot "
                             f"loop), not {self.initial_delay!r}")
        if self.max_elapsed is not None and (
                not isinstance(self.max_elapsed, int | float) or self.max_elapsed <= 0):
            raise ValueError(f"max_elapsed must be a positive number of seconds or None, "
                             f"not {self.max_elapsed!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be >= initial_delay")
        if not isinstance(self.multiplier, int | float) or self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")

    def allows(self, attempt: int, elapsed: float = 0.0) -> bool:
        """Whether try number ``attempt`` (1-based) may still be made, ``elapsed``
        seconds after the request first failed."""
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return False
        return self.max_attempts is None or attempt <= self.max_attempts

    def delay(self, failures: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(failures - 1, 0))
        r = (rng or random).random()
        return base * (1 - self.jitter * r)


NO_RETRY = RetryPolicy(max_attempts=1)

# The idempotent producer's default budget per batch: generous (a server restart
# fits), but finite, so flush() and close() end with the error when the server
# stays down.
PRODUCER_RETRY = RetryPolicy(max_attempts=None, max_delay=5.0, max_elapsed=60.0)

# Called before each retry with the error and the seconds about to be waited
# (the CLI uses it to say "retrying" on a terminal).
RetryHook = Callable[[Exception, float], None]


class Backoff:
    """The retry budget of one request (or of a reader between two responses)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.since: float | None = None

    def next_delay(self, error: Exception) -> float | None:
        """Seconds to wait before trying again, or None when the budget is spent."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self.failures += 1
        if not self.policy.allows(self.failures + 1, now - self.since):
            return None
        hint = retry_after_of(error) if isinstance(error, E.DurableStreamError) else None
        return self.policy.delay(self.failures, hint)

    def reset(self) -> None:
        self.failures = 0
        self.since = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def validate_timeout(timeout: float | None, name: str = "timeout") -> None:
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError(f"{name} must be a positive number of seconds or None, not {timeout!r}")


def validate_url(url: str) -> str:
    if not isinstance(url, str):
        raise ValueError(f"url must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an absolute http(s) URL, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("url must not carry a query or fragment: pass params= instead")
    return url


def validate_value_source(source: object, name: str) -> None:
    """Headers/params: a mapping of str -> str | callable, or a callable returning a mapping."""
    if source is None or callable(source):
        return
    if not isinstance(source, Mapping):
        raise ValueError(f"{name} must be a mapping or a callable, not {type(source).__name__}")
    for key, value in source.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name} keys must be non-empty strings, not {key!r}")
        if not (value is None or isinstance(value, str) or callable(value)):
            raise ValueError(f"{name}[{key!r}] must be a string or a callable, "
                             f"not {type(value).__name__}")


def merge_values(*parts: Mapping[str, str | None] | None) -> dict[str, str]:
    """Later mappings win; ``None`` values drop the key (a token provider may say 'none now')."""
    out: dict[str, str] = {}
    for part in parts:
        if not part:
            continue
        for key, value in part.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = str(value)
    return out


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's metadata, from HEAD or from a create (PROTOCOL.md 5.5, 5.1)."""

    url: str
    content_type: str
    next_offset: str
    closed: bool = False
    ttl: int | None = None
    expires_at: str | None = None
    created: bool | None = None  # on create: True for 201, False for 200 (already there)

    @property
    def tail_offset(self) -> str:
        return self.next_offset


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The answer to an append or close (PROTOCOL.md 5.2, 5.3)."""

    next_offset: str | None
    closed: bool = False
    duplicate: bool = False  # a producer retry the server had already applied (5.2.1)
    producer_epoch: int | None = None
    producer_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes read from a stream, and where to resume after them.

    ``offset`` is the Stream-Next-Offset after this chunk: pass it to ``read``
    later to continue without a gap or a repeat. For JSON streams ``data`` is a
    JSON array of the chunk's messages (9.1.5); ``json()`` gives the list.
    ``status`` and ``headers`` are those of the response that carried it (for
    SSE, of the SSE response).
    """

    data: bytes
    offset: str
    content_type: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False
    status: int = 200  # the HTTP status of the response this chunk came in
    headers: Mapping[str, str] = field(default_factory=dict)  # its headers, lower-case names

    def text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)

    def json(self) -> list[Any]:
        """The messages of a JSON-stream chunk (PROTOCOL.md 9.1.5)."""
        value = loads_json(self.data)
        if not isinstance(value, list):
            raise E.ProtocolViolation("a JSON-stream read did not answer a JSON array")
        return value


@dataclass(frozen=True, slots=True)
class JsonBatch:
    """The messages of one chunk of a JSON stream, and the offset after them."""

    items: list[Any]
    offset: str
    up_to_date: bool = False
    closed: bool = False


def loads_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the stdlib parser does not.
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            return json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise E.ProtocolViolation(f"invalid JSON from the server: {err}") from None


def dumps_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # Types orjson does not know (big ints, subclasses): the stdlib encoder.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_array(values: Iterable[Any]) -> bytes:
    """A POST body with one message per value: PROTOCOL.md 9.1.2 flattens one level."""
    return b"[" + b",".join(dumps_json(v) for v in values) + b"]"


def encode_body(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"append data must be bytes or str, not {type(data).__name__} "
                    f"(use append_json for JSON values)")


# ---------------------------------------------------------------------------
# Requests


@dataclass(slots=True)
class Request:
    """One HTTP request, before headers/params from the user are merged in."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    retry: RetryKind = "safe"
    stream: bool = False  # SSE: read the body incrementally


def sorted_params(user: Mapping[str, str], protocol: Mapping[str, str]) -> list[tuple[str, str]]:
    """Protocol params win over user ones; keys in lexicographic order (PROTOCOL.md 10.1)."""
    merged = {**user, **protocol}
    return sorted(merged.items())


def create_request(url: str, *, content_type: str | None, ttl: int | None,
                   expires_at: str | None, closed: bool, body: bytes | None,
                   forked_from: str | None = None, fork_offset: str | None = None,
                   fork_sub_offset: int | None = None) -> Request:
    """PUT (5.1), or a fork (4.2) when ``forked_from`` is a source path."""
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["content-type"] = content_type
    elif forked_from is None:
        headers["content-type"] = OCTET_STREAM
    if ttl is not None and expires_at is not None:
        raise ValueError("give ttl or expires_at, not both (PROTOCOL.md 5.1)")
    if ttl is not None:
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
            raise ValueError(f"ttl must be a non-negative integer of seconds, not {ttl!r}")
        headers[H.STREAM_TTL] = str(ttl)
    if expires_at is not None:
        headers[H.STREAM_EXPIRES_AT] = expires_at
    if closed:
        headers[H.STREAM_CLOSED] = "true"
    if forked_from is not None:
        headers[H.STREAM_FORKED_FROM] = forked_from
        if fork_offset is not None:
            headers[H.STREAM_FORK_OFFSET] = fork_offset
        if fork_sub_offset is not None:
            if not isinstance(fork_sub_offset, int) or fork_sub_offset < 0:
                raise ValueError(f"sub_offset must be a non-negative integer, "
                                 f"not {fork_sub_offset!r}")
            headers[H.STREAM_FORK_SUB_OFFSET] = str(fork_sub_offset)
    elif fork_offset is not None or fork_sub_offset is not None:
        raise ValueError("fork offsets need forked_from")
    return Request("PUT", url, headers, content=body, retry="safe")


def append_request(url: str, body: bytes, *, content_type: str, close: bool = False,
                   seq: str | None = None, producer: tuple[str, int, int] | None = None
                   ) -> Request:
    """POST (5.2); with ``close`` it is append-and-close, or close-only on an empty body (5.3)."""
    headers: dict[str, str] = {}
    if body:
        headers["content-type"] = content_type
    if close:
        headers[H.STREAM_CLOSED] = "true"
    if seq is not None:
        headers[H.STREAM_SEQ] = seq
    if producer is not None:
        pid, epoch, pseq = producer
        headers[H.PRODUCER_ID] = pid
        headers[H.PRODUCER_EPOCH] = str(epoch)
        headers[H.PRODUCER_SEQ] = str(pseq)
    if not body and not close:
        raise ValueError("an append needs data (PROTOCOL.md 5.2: empty bodies only close)")
    # A close-only request is idempotent (5.2); producer requests are deduplicated (5.2.1).
    kind: RetryKind = "idempotent" if producer else ("safe" if not body else "unsafe")
    return Request("POST", url, headers, content=body, retry=kind)


def source_path(source_url: str, target_url: str) -> str:
    """Stream-Forked-From is the source's path on the same server (PROTOCOL.md 4.2)."""
    src, dst = urlsplit(source_url), urlsplit(target_url)
    if (src.scheme, src.netloc) != (dst.scheme, dst.netloc):
        raise ValueError("a fork's source must be on the same server (PROTOCOL.md 4.2)")
    return src.path


# ---------------------------------------------------------------------------
# Responses


def _reason(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                for key in ("error", "message", "reason", "detail"):
                    if isinstance(value.get(key), str):
                        return value[key][:300]
        except ValueError:
            pass
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def error_for(method: str, url: str, status: int, headers: Mapping[str, str],
              body: bytes) -> E.DurableStreamError:
    """The exception for an error response (status >= 400)."""
    reason = _reason(body)
    hdrs = {k.lower(): v for k, v in headers.items()}
    message = f"{method} {url}: {status}" + (f" {reason}" if reason else "")
    kw: dict[str, Any] = {"status": status, "url": url, "reason": reason, "headers": hdrs,
                          "method": method}
    closed = H.is_true(hdrs.get(H.STREAM_CLOSED))
    if status == 400:
        return E.BadRequest(message, **kw)
    if status == 401:
        return E.Unauthorized(message, **kw)
    if status == 403:
        if H.PRODUCER_EPOCH in hdrs:
            return E.ProducerFenced(message, current_epoch=_int_or_none(hdrs[H.PRODUCER_EPOCH]),
                                    **kw)
        return E.Forbidden(message, **kw)
    if status == 404:
        return E.StreamNotFound(message, **kw)
    if status == 409:
        if closed:
            return E.StreamClosedError(message, final_offset=hdrs.get(H.STREAM_NEXT_OFFSET), **kw)
        if H.PRODUCER_EXPECTED_SEQ in hdrs:
            return E.SequenceGap(message,
                                 expected_seq=_int_or_none(hdrs.get(H.PRODUCER_EXPECTED_SEQ)),
                                 received_seq=_int_or_none(hdrs.get(H.PRODUCER_RECEIVED_SEQ)),
                                 **kw)
        return E.StreamConflict(message, **kw)
    if status == 410:
        return E.StreamGone(message, **kw)
    if status == 413:
        return E.PayloadTooLarge(message, **kw)
    if status == 429:
        return E.RateLimited(message, retry_after=parse_retry_after(hdrs.get("retry-after")),
                             **kw)
    if status >= 500:
        return E.ServerError(message, **kw)
    return E.DurableStreamError(message, **kw)


def retry_after_of(error: E.DurableStreamError) -> float | None:
    if error.status in (429, 503):
        return parse_retry_after(error.headers.get("retry-after"))
    return None


def should_retry(kind: RetryKind, *, status: int | None, connect_failure: bool) -> bool:
    """Whether a failed request may be sent again, given how it may be retried."""
    if status is None:
        # No response. A failure before the connection was made cannot have reached
        # the server; any other may have (the answer was lost), so only requests that
        # are safe to repeat go again.
        return connect_failure or kind != "unsafe"
    if status in (429, 500, 503):
        # 12.5: refused before any work was done. duralog answers 500 and 503 only
        # before an append commits, so these are safe for plain appends too.
        return True
    if status >= 500:
        return kind != "unsafe"
    return False


def _require_offset(method: str, url: str, headers: Mapping[str, str]) -> str:
    offset = headers.get(H.STREAM_NEXT_OFFSET)
    if not offset:
        raise E.ProtocolViolation(f"{method} {url}: the response has no Stream-Next-Offset",
                                  url=url, method=method)
    return offset


def info_from(url: str, headers: Mapping[str, str], status: int | None = None,
              method: str = "HEAD") -> StreamInfo:
    ttl = headers.get(H.STREAM_TTL)
    return StreamInfo(
        url=url,
        content_type=headers.get("content-type") or OCTET_STREAM,
        next_offset=_require_offset(method, url, headers),
        closed=H.is_true(headers.get(H.STREAM_CLOSED)),
        ttl=int(ttl) if ttl and ttl.isdigit() else None,
        expires_at=headers.get(H.STREAM_EXPIRES_AT),
        created=None if status is None else status == 201,
    )


def append_result(headers: Mapping[str, str], status: int, *,
                  producer_data: bool = False) -> AppendResult:
    """``producer_data``: the request was a producer append with a body, where
    5.2.1 answers 200 for new data and 204 for a duplicate."""
    return AppendResult(
        next_offset=headers.get(H.STREAM_NEXT_OFFSET),
        closed=H.is_true(headers.get(H.STREAM_CLOSED)),
        duplicate=producer_data and status == 204,
        producer_epoch=_int_or_none(headers.get(H.PRODUCER_EPOCH)),
        producer_seq=_int_or_none(headers.get(H.PRODUCER_SEQ)),
    )


# ---------------------------------------------------------------------------
# Reads (5.6, 5.7, 5.8)


def validate_read(offset: str, live: object) -> None:
    if live not in LIVE_MODES:
        raise ValueError(f"live must be one of None, 'long-poll', 'sse', 'auto', not {live!r}")
    if not isinstance(offset, str) or not offset:
        raise ValueError(f"offset must be a non-empty string ('-1', 'now' or a saved offset), "
                         f"not {offset!r}")


class ReadState:
    """Where a reader is, and what it asks next.

    ``offset`` is always the position after the last chunk handed to the
    caller: a retry or an SSE reconnect restarts there, so nothing is skipped
    or seen twice. A chunk is handed over only once it is complete (a whole
    response body; for SSE a data event *and* the control event after it that
    carries its end offset).
    """

    def __init__(self, url: str, offset: str = START, live: LiveMode = None,
                 cursor: str | None = None, content_type: str | None = None) -> None:
        validate_read(offset, live)
        self.url = url
        self.offset = offset
        self.live = live
        self.cursor = cursor
        self.content_type = content_type
        self.up_to_date = False
        self.closed = False
        self.done = False
        # "auto" catches up with plain reads, then goes live (SSE for text and
        # JSON, long-poll for binary streams, which SSE would base64-encode).
        self.phase: LiveMode = None if live == "auto" else live
        self._sse_base64 = False
        self._sse_data: list[str] = []
        self._sse_events = 0
        # The last response: a long-poll that timed out is a 204 (5.7).
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    # -- requests --------------------------------------------------------------
    def next_request(self) -> Request:
        params = {"offset": self.offset}
        if self.phase is not None:
            params["live"] = self.phase
            if self.cursor:
                params["cursor"] = self.cursor  # 10.1: echo the cursor on live reads
        return Request("GET", self.url, params=params, retry="safe", stream=self.phase == "sse")

    # -- plain and long-poll responses -----------------------------------------
    def on_response(self, status: int, headers: Mapping[str, str], body: bytes) -> Chunk | None:
        """A complete catch-up or long-poll answer (status < 400)."""
        if status == 304:
            raise E.ProtocolViolation(f"GET {self.url}: unexpected 304", status=304, url=self.url)
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        if self.content_type is None and status == 200:
            self.content_type = headers.get("content-type")
        next_offset = _require_offset("GET", self.url, headers)
        self.cursor = headers.get(H.STREAM_CURSOR) or self.cursor
        closed = H.is_true(headers.get(H.STREAM_CLOSED))
        up_to_date = H.is_true(headers.get(H.STREAM_UP_TO_DATE)) or closed
        data = body if status == 200 else b""
        if H.is_json(self.content_type) and _EMPTY_JSON_ARRAY.fullmatch(data):
            data = b""
        self.offset = next_offset
        self.up_to_date = up_to_date
        self._note_end(closed, up_to_date)
        if not data:
            return None
        return Chunk(data, next_offset, self.content_type or OCTET_STREAM, self.cursor,
                     up_to_date, closed, status, self.headers)

    def _note_end(self, closed: bool, up_to_date: bool) -> None:
        if closed:
            # 5.6/5.7/5.8: Stream-Closed is the definitive EOF.
            self.closed = True
            self.done = True
        elif up_to_date and self.phase is None:
            if self.live is None:
                self.done = True  # a catch-up read ends once caught up
            elif self.live == "auto":
                self.phase = "sse" if H.is_text_like(self.content_type) else "long-poll"

    # -- SSE ------------------------------------------------------------------------
    def on_sse_open(self, headers: Mapping[str, str]) -> None:
        ctype = headers.get("content-type", "")
        if H.media_type(ctype) != "text/event-stream":
            raise E.ProtocolViolation(
                f"GET {self.url}: SSE answered {ctype or 'no content type'}, "
                f"not text/event-stream", url=self.url, method="GET")
        # 5.8: binary streams' data events are base64; the header says so.
        self._sse_base64 = headers.get(H.STREAM_SSE_DATA_ENCODING, "").lower() == "base64"
        self.status = 200
        self.headers = {k.lower(): v for k, v in headers.items()}
        self._sse_data = []
        self._sse_events = 0

    def on_sse_event(self, event: SSEEvent) -> Chunk | None:
        self._sse_events += 1
        if event.event == "data":
            self._sse_data.append(event.data)
            return None
        if event.event != "control":
            return None  # unknown event types are ignored (11.1 extensibility)
        try:
            control = loads_json(event.data)
        except E.ProtocolViolation:
            raise E.ProtocolViolation(f"GET {self.url}: control event is not JSON",
                                      url=self.url) from None
        if not isinstance(control, dict) or not isinstance(
                control.get("streamNextOffset"), str):
            raise E.ProtocolViolation(f"GET {self.url}: control event without streamNextOffset",
                                      url=self.url)
        data = self._sse_payload()
        self._sse_data = []
        closed = control.get("streamClosed") is True
        up_to_date = control.get("upToDate") is True or closed
        self.offset = control["streamNextOffset"]
        if isinstance(control.get("streamCursor"), str):
            self.cursor = control["streamCursor"]
        self.up_to_date = up_to_date
        self._note_end(closed, up_to_date)
        if not data:
            return None
        return Chunk(data, self.offset, self.content_type or OCTET_STREAM, self.cursor,
                     up_to_date, closed, self.status or 200, self.headers)

    def _sse_payload(self) -> bytes:
        if not self._sse_data:
            return b""
        if self._sse_base64:
            # 5.8: drop the line breaks between data lines, then decode.
            try:
                return b"".join(base64.b64decode(re.sub(r"[\r\n]", "", d), validate=True)
                                for d in self._sse_data)
            except ValueError:  # binascii.Error is a ValueError
                raise E.ProtocolViolation(f"GET {self.url}: SSE data is not valid base64",
                                          url=self.url) from None
        if H.is_json(self.content_type):
            parts = [d.strip() for d in self._sse_data]
            parts = [p for p in parts if not _EMPTY_JSON_ARRAY.fullmatch(p.encode())]
            if len(parts) <= 1:
                return parts[0].encode("utf-8") if parts else b""
            # Several data events before one control event: one array of all messages.
            inner = [p[1:-1].strip() for p in parts if p.startswith("[") and p.endswith("]")]
            if len(inner) != len(parts):
                raise E.ProtocolViolation(f"GET {self.url}: SSE data of a JSON stream is not "
                                          f"a JSON array", url=self.url)
            return ("[" + ",".join(inner) + "]").encode("utf-8")
        return "".join(self._sse_data).encode("utf-8")

    def on_sse_end(self) -> bool:
        """The server ended the SSE response. True when it said anything at all.

        5.8: without ``streamClosed`` the client reconnects from the last control
        event's offset; data events not yet confirmed by a control event are
        dropped (they will be sent again from that offset).
        """
        self._sse_data = []
        return self._sse_events > 0


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


# ---------------------------------------------------------------------------
# Small shared helpers of the twins


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING_JSON: Any = _Missing()


def initial_body(body: bytes | str | None, json_messages: Any) -> bytes | None:
    """A PUT's body: raw bytes, or ``json=[...]`` messages (``[]`` is an empty stream, 9.1.3)."""
    if json_messages is not MISSING_JSON:
        if body is not None:
            raise ValueError("give body or json, not both")
        if not isinstance(json_messages, list | tuple):
            raise ValueError("json= takes a list of messages")
        return json_array(json_messages)
    if body is None:
        return None
    return encode_body(body)


def fork_source(source: str, target_url: str) -> str:
    """A fork source given as a URL (same server) or already as a path."""
    if source.startswith("/"):
        return source
    return source_path(validate_url(source), target_url)
