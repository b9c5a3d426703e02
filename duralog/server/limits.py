"""HTTP limits and timeouts for ``duralog serve`` (uvicorn with httptools).

uvicorn's httptools protocol enforces none of these, and httptools buffers a
header value until it ends, so ``LimitedHttpToolsProtocol`` subclasses it and
keeps uvloop + httptools (the fast path measured in docs/benchmarks.md):

- the request head (request line + header block) is counted *as bytes arrive*,
  before httptools buffers them: a request line over ``max_request_line`` gets
  414, a header block over ``max_header_bytes`` or ``max_header_fields`` 431;
- a request head that has not fully arrived within ``header_timeout`` (counted
  from the connection, or from the first byte of a keep-alive request): 408 and
  close;
- a request body that makes no progress for ``body_timeout`` while the app
  wants it: close;
- a response the client leaves unread for ``send_timeout`` (the transport's
  write buffer stays above its high-water mark): close;
- past ``max_connections`` open connections a new one gets a fast 503;
- every answer written here carries the security headers of PROTOCOL.md 12.7,
  the parser's own 400 included.

Each timer is a single ``loop.call_later`` per connection phase, so the cost per
request is a handful of attribute updates.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .config import Config

_SECURITY = (b"x-content-type-options: nosniff\r\n"
             b"cross-origin-resource-policy: cross-origin\r\n")
# CRLFs, colons and spaces between fields: slack on top of name + value bytes.
_PER_FIELD_OVERHEAD = 4


class _Refused(Exception):
    pass


def error_response(status: int, reason: str) -> bytes:
    """A complete close-delimited answer: status line, security headers, one-line body."""
    body = reason.encode("ascii", "replace") + b"\n"
    return b"".join([
        STATUS_LINE[status], _SECURITY,
        b"content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n",
        b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body])


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with duralog's limits; configure with ``configure``."""

    max_header_bytes = 16 << 10
    max_header_fields = 100
    max_request_line = 8 << 10
    header_timeout = 10.0
    body_timeout = 30.0
    send_timeout = 60.0
    max_connections = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the first byte of a request and its last header
        self._head_bytes = 0
        self._url_bytes = 0
        self._field_bytes = 0
        self._fields = 0
        self._hosts = 0
        self._refusal: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._send_timer: asyncio.TimerHandle | None = None
        self._overloaded = False
        self._closed_by_us = False

    @classmethod
    def configure(cls, config: Config, max_connections: int) -> type[LimitedHttpToolsProtocol]:
        """A subclass bound to these settings (uvicorn takes a protocol class)."""
        return type("DuralogHttpProtocol", (cls,), {
            "max_header_bytes": config.max_header_bytes,
            "max_header_fields": config.max_header_fields,
            "max_request_line": config.max_request_line,
            "header_timeout": config.header_timeout,
            "body_timeout": config.body_timeout,
            "send_timeout": config.send_timeout,
            "max_connections": max_connections,
        })

    # -- timers ---------------------------------------------------------------------
    def _arm(self, kind: str, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_kind = kind
        self._timer = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._timer_kind == "head":
            self._reject(408, "request header not received in time")
        elif self._timer_kind == "body":
            if self.flow is not None and self.flow.read_paused:
                # The app is not reading: the stall is ours, not the client's.
                self._arm("body", self.body_timeout)
                return
            self.transport.close()

    def _reject(self, status: int, reason: str) -> None:
        """Answer (unless a response already started) and close.

        The write side is shut first and the rest of the request is read and dropped
        for a moment: closing a socket with unread input sends a reset, which can
        destroy the answer before the client reads it.
        """
        self._disarm()
        if self._closed_by_us or self.transport is None or self.transport.is_closing():
            return
        self._closed_by_us = True
        cycle = self.cycle  # the previous request's, on a keep-alive connection
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(error_response(status, reason))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)
        else:
            self.transport.close()

    # -- connection -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            # Answer as soon as the request starts arriving, then close: a fast 503
            # instead of a connection that hangs or an empty reply (fd exhaustion).
            self._overloaded = True
        self._arm("head", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closed_by_us:
            return  # refused: drop the rest of the request
        if self._overloaded:
            self._reject(503, "server is at its connection limit; try again later")
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._timer is None:
                self._arm("head", self.header_timeout)
            room = self.max_request_line + self.max_header_bytes + (
                self.max_header_fields * _PER_FIELD_OVERHEAD) + 64 - self._head_bytes
            if len(data) > room:
                # Feed only what fits: the limit is decided before the rest is buffered.
                # (A long URL is refused by on_url first: llhttp reports partial spans
                # at the end of every feed, so the URL is counted as it arrives.)
                head, rest = data[:room], data[room:]
                self._feed(head)
                if self._closed_by_us:
                    return
                if self._in_head:
                    self._reject(431, "request header fields are too large")
                    return
                if rest:
                    self.data_received(rest)
                return
            self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._reject(*self._refusal)
            else:
                self._reject(400, "invalid HTTP request")

    def send_400_response(self, msg: str) -> None:
        self._reject(400, msg)

    # -- parser callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._url_bytes = self._field_bytes = self._fields = self._hosts = 0
        if self._timer is None or self._timer_kind != "head":
            self._arm("head", self.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_request_line:
            self._refusal = (414, "request line is too long")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 4 and name.lower() == b"host":
            self._hosts += 1
        self._fields += 1
        self._field_bytes += len(name) + len(value) + _PER_FIELD_OVERHEAD
        if self._fields > self.max_header_fields:
            self._refusal = (431, f"more than {self.max_header_fields} request header fields")
            raise _Refused
        if self._field_bytes > self.max_header_bytes:
            self._refusal = (431, f"request header fields are larger than "
                                  f"{self.max_header_bytes} bytes")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._hosts != 1 and (self._hosts > 1 or self.parser.get_http_version() != "1.0"):
            # RFC 9112 3.2: an HTTP/1.1 request carries exactly one Host.
            self._refusal = (400, "a request needs exactly one Host header")
            raise _Refused
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._arm("body", self.body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._timer_kind == "body":
            self._arm("body", self.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True  # a pipelined next request is counted from its first byte
        super().on_message_complete()

    # -- unread responses ---------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_expired(self) -> None:
        self._send_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
