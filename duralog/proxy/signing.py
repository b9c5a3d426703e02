"""Pre-signed URLs (PROXY-PROTOCOL.md 7).

``signature`` is base64url(HMAC-SHA256(key, "<stream id>:<expires>")), unpadded:
bound to one stream (7.3) and one expiry, compared in constant time (7.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from .errors import ProxyError


def sign(key: bytes, stream_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{stream_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(key: bytes, stream_id: str, expires: str | None, signature: str | None,
           now: float | None = None) -> None:
    """Raise the 7.2 / 11.2 error for a missing, invalid or expired signature."""
    if not expires or not signature:
        raise ProxyError(401, "MISSING_SIGNATURE", "pre-signed URL parameters are missing")
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        raise ProxyError(401, "SIGNATURE_INVALID", "pre-signed URL signature is invalid")
    expected = sign(key, stream_id, int(expires))
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise ProxyError(401, "SIGNATURE_INVALID", "pre-signed URL signature is invalid")
    # Checked after the signature, so an expiry cannot be probed without a valid URL.
    if int(expires) < (time.time() if now is None else now):
        raise ProxyError(401, "SIGNATURE_EXPIRED", "pre-signed URL has expired")
