"""The proxy's error envelope (PROXY-PROTOCOL.md 11)."""

from __future__ import annotations

import orjson


class ProxyError(Exception):
    """A refusal: HTTP status, an 11.x error code and a one-line message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        # 11: {"error": {"code": ..., "message": ...}}
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})
