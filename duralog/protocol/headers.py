"""Header names and the parsing of header values (PROTOCOL.md 4.1, 5.1, 5.2, 5.2.1).

Every parser either returns a typed value or raises ProtocolError(400) with a
one-line reason naming the header, so the server never has to guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from .errors import ProtocolError

STREAM_TTL = "stream-ttl"
STREAM_EXPIRES_AT = "stream-expires-at"
STREAM_SEQ = "stream-seq"
STREAM_CURSOR = "stream-cursor"
STREAM_NEXT_OFFSET = "stream-next-offset"
STREAM_UP_TO_DATE = "stream-up-to-date"
STREAM_CLOSED = "stream-closed"
STREAM_FORKED_FROM = "stream-forked-from"
STREAM_FORK_OFFSET = "stream-fork-offset"
STREAM_FORK_SUB_OFFSET = "stream-fork-sub-offset"
STREAM_SSE_DATA_ENCODING = "stream-sse-data-encoding"
PRODUCER_ID = "producer-id"
PRODUCER_EPOCH = "producer-epoch"
PRODUCER_SEQ = "producer-seq"
PRODUCER_EXPECTED_SEQ = "producer-expected-seq"
PRODUCER_RECEIVED_SEQ = "producer-received-seq"

# 5.2.1: epochs and sequence numbers stay within JavaScript's safe integers.
MAX_SAFE_INTEGER = 2**53 - 1
# Longest Stream-Seq / Producer-Id we keep; longer values are refused, not truncated.
MAX_TOKEN_LENGTH = 1024

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def is_true(value: str | None) -> bool:
    """4.1: a presence flag counts only when its value is exactly ``true``, any case."""
    return value is not None and value.lower() == "true"


def parse_ttl(value: str) -> int:
    """5.1: a non-negative decimal integer: no sign, no leading zeros, no fraction."""
    if len(value) > 15 or not _DECIMAL.fullmatch(value):
        raise ProtocolError(400, "Stream-TTL must be a non-negative integer number of seconds")
    return int(value)


def parse_expires_at(value: str) -> float:
    """5.1: an RFC 3339 timestamp with a time zone; returns Unix seconds."""
    if not _RFC3339.fullmatch(value):
        raise ProtocolError(400, "Stream-Expires-At must be an RFC 3339 timestamp")
    text = value.replace("t", "T").replace(" ", "T")
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ProtocolError(400, "Stream-Expires-At must be an RFC 3339 timestamp") from None


def parse_non_negative(value: str, name: str, limit: int = MAX_SAFE_INTEGER) -> int:
    if len(value) > 16 or not value.isascii() or not value.isdigit():
        raise ProtocolError(400, f"{name} must be a non-negative integer")
    number = int(value)
    if number > limit:
        raise ProtocolError(400, f"{name} must be at most {limit}")
    return number


@dataclass(frozen=True, slots=True)
class Producer:
    """The idempotent producer triple of one request (5.2.1)."""

    id: str
    epoch: int
    seq: int


def parse_producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    """5.2.1: all three producer headers together, or none."""
    if pid is None and epoch is None and seq is None:
        return None
    if pid is None or epoch is None or seq is None:
        raise ProtocolError(
            400, "Producer-Id, Producer-Epoch and Producer-Seq must be sent together"
        )
    if pid == "":
        raise ProtocolError(400, "Producer-Id must not be empty")
    if len(pid) > MAX_TOKEN_LENGTH:
        raise ProtocolError(400, f"Producer-Id is longer than {MAX_TOKEN_LENGTH} characters")
    return Producer(pid, parse_non_negative(epoch, "Producer-Epoch"),
                    parse_non_negative(seq, "Producer-Seq"))


def parse_stream_seq(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_TOKEN_LENGTH:
        raise ProtocolError(400, f"Stream-Seq is longer than {MAX_TOKEN_LENGTH} characters")
    return value


@lru_cache(maxsize=256)
def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def media_type(content_type: str | None) -> str:
    """The bare media type, lower-cased, without parameters (for comparisons)."""
    if not content_type:
        return ""
    return _media_type(content_type)


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
# Issue 9 / PROTOCOL.md 12.4: a stored Content-Type is echoed on every read, so it is
# short and plain: visible ASCII and spaces, echoed byte for byte.
MAX_CONTENT_TYPE = 256
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")


def is_plain_header_value(content_type: str) -> bool:
    """At most MAX_CONTENT_TYPE characters, all visible ASCII or spaces."""
    return (len(content_type) <= MAX_CONTENT_TYPE
            and _VISIBLE_ASCII.fullmatch(content_type) is not None)


def is_valid_content_type(content_type: str) -> bool:
    return is_plain_header_value(content_type) and bool(
        _MEDIA_TYPE.fullmatch(media_type(content_type)))


def is_json(content_type: str | None) -> bool:
    return media_type(content_type) == "application/json"


def is_text_like(content_type: str | None) -> bool:
    """5.8: text/* and application/json travel as UTF-8 text in SSE; the rest as base64."""
    mt = media_type(content_type)
    return mt.startswith("text/") or mt == "application/json"
