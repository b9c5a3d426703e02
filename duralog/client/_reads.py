"""The read state machine: catch-up, long-poll and SSE reads (PROTOCOL.md 5.6-5.8).

Part of the client's sans-IO core (see ``_core``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Literal

from ..protocol import headers as H
from ..protocol.offsets import START
from ..protocol.sse_reader import SSEEvent
from . import errors as E
from ._wire import (
    _EMPTY_JSON_ARRAY,
    OCTET_STREAM,
    Chunk,
    Request,
    _require_offset,
    loads_json,
)

LiveMode = Literal["long-poll", "sse", "auto"] | None
LIVE_MODES = (None, "long-poll", "sse", "auto")


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
