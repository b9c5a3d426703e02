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

Timeouts are checked by one sweep per server (twice per shortest timeout, at
most once a second) rather than a timer per request: a timer armed and
cancelled per request cost a measurable share of a 100-byte append. The hot
path only bumps counters; the sweep notices when a connection has been in the
same phase (head, body) without progress for longer than its timeout. Field
counts, sizes and the Host rule are checked once the head is complete, which is
safe because the head was capped by bytes as it arrived.
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
        self._refusal: tuple[int, str] | None = None
        # What the sweep watches: the phase (0 none, 1 head arriving, 2 body wanted),
        # progress counters, and when it last saw them change.
        self._phase = 1
        self._requests = 0
        self._body_chunks = 0
        self._seen: tuple[int, int, int] = (1, 0, 0)
        self._since = 0.0
        self._send_deadline = 0.0
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

    # -- deadlines ----------------------------------------------------------------------
    def _ensure_sweep(self) -> None:
        # One sweep per server (its state holds the set of open connections).
        state = self.server_state
        if not getattr(state, "duralog_sweep", False):
            state.duralog_sweep = True  # type: ignore[attr-defined]
            self.loop.call_later(self._sweep_interval(), self._sweep, self.loop,
                                 self.connections)

    @classmethod
    def _sweep_interval(cls) -> float:
        return min(1.0, cls.header_timeout / 2, cls.body_timeout / 2, cls.send_timeout / 2)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for conn in list(connections):
            if isinstance(conn, LimitedHttpToolsProtocol):
                conn._check(now)
        loop.call_later(cls._sweep_interval(), cls._sweep, loop, connections)

    def _check(self, now: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._send_deadline and now >= self._send_deadline:
            transport.abort()
            return
        seen = (self._phase, self._requests, self._body_chunks)
        if seen != self._seen or not seen[0]:
            self._seen, self._since = seen, now
            return
        if seen[0] == 1 and now - self._since >= self.header_timeout:
            self._reject(408, "request header not received in time")
        elif seen[0] == 2 and now - self._since >= self.body_timeout:
            if self.flow is not None and self.flow.read_paused:
                self._since = now  # the app is not reading: the stall is ours
            else:
                transport.close()

    def _reject(self, status: int, reason: str) -> None:
        """Answer (unless a response already started) and close.

        The write side is shut first and the rest of the request is read and dropped
        for a moment: closing a socket with unread input sends a reset, which can
        destroy the answer before the client reads it.
        """
        self._phase = 0
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
        self._since = self.loop.time()
        self._ensure_sweep()

    def data_received(self, data: bytes) -> None:
        if self._closed_by_us:
            return  # refused: drop the rest of the request
        if self._overloaded:
            self._reject(503, "server is at its connection limit; try again later")
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._phase = 1
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
        parser = self.parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._reject(*(self._refusal or (400, "invalid HTTP request")))

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
            self._reject(*(self._refusal or (400, "invalid HTTP request")))

    def send_400_response(self, msg: str) -> None:
        self._reject(400, msg)

    # -- parser callbacks -------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_request_line:
            self._refusal = (414, "request line is too long")
            raise _Refused
        self.url += url

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(headers) > self.max_header_fields:
            self._refusal = (431, f"more than {self.max_header_fields} request header fields")
            raise _Refused
        if self._head_bytes > self.max_header_bytes and sum(
                len(n) + len(v) + _PER_FIELD_OVERHEAD for n, v in headers
        ) > self.max_header_bytes:
            self._refusal = (431, f"request header fields are larger than "
                                  f"{self.max_header_bytes} bytes")
            raise _Refused
        hosts = 0
        for name, _ in headers:
            if name == b"host":  # uvicorn lower-cases names in on_header
                hosts += 1
        if hosts != 1 and (hosts > 1 or self.parser.get_http_version() != "1.0"):
            # RFC 9112 3.2: an HTTP/1.1 request carries exactly one Host.
            self._refusal = (400, "a request needs exactly one Host header")
            raise _Refused
        self._in_head = False
        self._head_bytes = self._url_bytes = 0
        self._requests += 1
        self._phase = 2  # until on_message_complete: the body is wanted
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_chunks += 1
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = 0
        self._in_head = True  # a pipelined next request is counted from its first byte
        super().on_message_complete()

    # -- unread responses ---------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._send_deadline:
            self._send_deadline = self.loop.time() + self.send_timeout

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_deadline = 0.0
