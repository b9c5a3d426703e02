"""What goes on the wire: results, request shapes, the status -> exception map.

Part of the client's sans-IO core (see ``_core``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..protocol import headers as H
from . import errors as E
from ._retry import RetryKind, parse_retry_after

JSON_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"
_EMPTY_JSON_ARRAY = re.compile(rb"\s*\[\s*\]\s*")



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
