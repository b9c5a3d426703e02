"""Stream names from request paths (PROTOCOL.md 12.2: no path traversal).

A stream name is the part of the URL path after the stream prefix, decoded.
Names that could mean something else on a file system or to a proxy are
refused rather than normalized: ``.`` and ``..`` segments, empty segments,
encoded slashes, backslashes, NUL and other control characters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from .errors import ProtocolError

MAX_NAME_BYTES = 1024
_FORBIDDEN_ESCAPES = (b"%2f", b"%5c", b"%00")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
# RFC 3986 2.1: '%' starts exactly two hex digits. Anything else is refused, not
# passed through: otherwise `x%zz` and `x%25zz` would name the same stream.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


@lru_cache(maxsize=4096)
def stream_name(raw: bytes) -> str:
    """The stream name for a raw (still percent-encoded) path tail.

    Cached: every request names a stream, and busy streams are named again and
    again. Refusals raise, and exceptions are not cached.
    """
    if not raw:
        raise ProtocolError(404, "no stream name in the path")
    if b"%" in raw and _BAD_ESCAPE.search(raw):
        raise ProtocolError(400, "stream name has an invalid percent-escape")
    lowered = raw.lower()
    for escape in _FORBIDDEN_ESCAPES:
        if escape in lowered:
            raise ProtocolError(400, "stream name contains an encoded slash, backslash or NUL")
    decoded = unquote_to_bytes(raw)
    if len(decoded) > MAX_NAME_BYTES:
        raise ProtocolError(414, f"stream name is longer than {MAX_NAME_BYTES} bytes")
    try:
        name = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(400, "stream name is not valid UTF-8") from None
    if _FORBIDDEN_CHARS.search(name):
        raise ProtocolError(400, "stream name contains a control character or backslash")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise ProtocolError(400, "stream name has an empty, '.' or '..' segment")
    return name


def source_stream_name(value: str, stream_prefix: str) -> str:
    """4.2: Stream-Forked-From is a path on this server; the stream name it names.

    Shared by the fork handler and the access-control layer, so both read the
    same source from the same header.
    """
    raw = value.strip().encode("utf-8", "surrogateescape")
    if b"://" in raw:
        raise ProtocolError(400, "Stream-Forked-From must be a path on this server")
    raw = raw.split(b"?", 1)[0]
    prefix = stream_prefix.encode()
    index = raw.find(prefix)
    if index < 0:
        raise ProtocolError(404, "source stream not found")
    return stream_name(raw[index + len(prefix):])
