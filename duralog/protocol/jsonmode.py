"""JSON mode (PROTOCOL.md 9.1).

An append to an ``application/json`` stream is validated and one level of array
is flattened (9.1.2). One append is stored as one *fragment*: its messages
joined by commas. A read answers ``[`` + fragments joined by commas + ``]``
(9.1.5) without parsing anything again, which keeps catch-up reads of JSON
streams as cheap as byte streams.

The server stores a fragment as the client wrote it (``append_fragment``): the
inside of a batch array, or the single value, trimmed of surrounding white
space. Validation is the only parse; numbers keep every digit and keys their
order. ``split_messages`` yields the messages one by one, in compact form, for
the rare callers that need them apart (a fork inside an append, 4.2).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .errors import ProtocolError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# orjson reads an integer past 64 bits as a float, silently losing digits; a body
# with a run of 19+ digits takes the exact (slower) path instead.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _loads(body: bytes) -> tuple[Any, bool]:
    """Parse JSON; the flag says whether orjson did (it is exact only up to 64 bits)."""
    if _LONG_DIGITS.search(body) is None:
        try:
            return orjson.loads(body), True
        except orjson.JSONDecodeError:
            pass
    try:
        text = body.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant), False
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(400, "body is not valid JSON") from None


WHITESPACE = _WHITESPACE = b" \t\r\n"  # RFC 8259 2: the only insignificant white space


# The deepest nesting an append may have. orjson writes at most 254 levels, and a
# fork inside an append (4.2) writes its messages again: anything accepted here must
# be writable there, so the limit is the writer's.
MAX_DEPTH = 254
_TOO_DEEP = f"JSON is nested deeper than {MAX_DEPTH} levels"


def _validate(body: bytes) -> Any:
    """The parsed body, or ProtocolError(400): orjson first, the exact parser if it refuses."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ProtocolError(400, "body is not valid JSON") from None
    # Counting brackets is a C-speed scan; only a body with enough of them to be too
    # deep pays for the exact check (writing it once).
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    try:
        orjson.dumps(value)
    except TypeError as err:
        if "Recursion" in str(err):
            raise ProtocolError(400, _TOO_DEEP) from None
        # Another reason (an integer past 64 bits): measure the nesting directly.
        if _depth(value) > MAX_DEPTH:
            raise ProtocolError(400, _TOO_DEEP) from None


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict)
                                                   else item))
    return deepest


def append_fragment(body: bytes, *, allow_empty: bool) -> bytes | None:
    """The fragment one append stores, or None for an empty batch on a PUT (9.1.3).

    9.1.2: a top-level array is a batch of messages, so its inside is the
    fragment; any other value is one message.
    """
    value = _validate(body)
    text = body.strip(_WHITESPACE)
    if isinstance(value, list):
        if not value:
            if allow_empty:
                return None
            raise ProtocolError(400, "empty JSON array: an append needs at least one message")
        return text[1:-1].strip(_WHITESPACE)
    return text


def _dumps(value: Any, fast: bool) -> bytes:
    # A message stored before the depth limit existed may still be too deep: a 400,
    # never a 500, on every path that writes it again.
    if fast:
        try:
            return orjson.dumps(value)
        except TypeError:
            raise ProtocolError(400, _TOO_DEEP) from None
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        raise ProtocolError(400, _TOO_DEEP) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a \ud800-style escape: a lone surrogate has no UTF-8
        raise ProtocolError(400, "body is not valid JSON: lone UTF-16 surrogate") from None


def split_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """The messages one append stores, each as compact JSON.

    ``allow_empty`` is true for the body of a PUT, where ``[]`` creates an empty
    stream (9.1.3); a POST of ``[]`` is refused.
    """
    value, fast = _loads(body)
    if isinstance(value, list):
        if not value:
            if allow_empty:
                return []
            raise ProtocolError(400, "empty JSON array: an append needs at least one message")
        return [_dumps(item, fast) for item in value]
    return [_dumps(value, fast)]


def fragment(messages: list[bytes]) -> bytes:
    """The stored form of one append: its messages joined by commas."""
    return b",".join(messages)


def wrap(fragments: list[bytes]) -> bytes:
    """A read's body: every message of the fragments as one JSON array (9.1.5)."""
    return b"[" + b",".join(fragments) + b"]"


def fragment_prefix(frag: bytes, count: int) -> bytes:
    """The stored form of the first ``count`` messages of a fragment (a fork inside an
    append, 4.2), or ProtocolError(400) if it has fewer.

    One parse and one write of the kept messages, both in C: writing each message
    apart cost seconds for a million-message append (issue 9).
    """
    value, fast = _loads(b"[" + frag + b"]")
    if count > len(value):
        raise ProtocolError(400, "Stream-Fork-Sub-Offset is past the next append")
    kept = value[:count]
    if fast:
        try:
            return orjson.dumps(kept)[1:-1]
        except TypeError:
            raise ProtocolError(400, _TOO_DEEP) from None
    return b",".join(_dumps(item, fast) for item in kept)


def fragment_messages(frag: bytes) -> list[bytes]:
    """The messages of one stored fragment (used to fork inside an append, 4.2)."""
    value, fast = _loads(b"[" + frag + b"]")
    return [_dumps(item, fast) for item in value]
