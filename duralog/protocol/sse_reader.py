"""An incremental Server-Sent Events reader (PROTOCOL.md 5.8).

``sse.parse_events`` splits a complete SSE text; a client reading a live
connection gets bytes in arbitrary pieces instead: a line, a multi-byte
character or a ``\\r\\n`` pair can be cut anywhere. ``SSEReader.feed`` takes
those pieces and returns the events completed so far, following the
WHATWG event-stream rules the protocol points to: lines end with CRLF, CR or
LF; ``data:`` lines of one event are joined with ``\\n``; one leading space
after the colon is dropped; comment lines (``:``) are ignored; an event is
dispatched at a blank line, and an unterminated event at end of input is
discarded (so a connection cut mid-event never yields half an event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


class SSEReader:
    """Feed bytes, get complete events. No I/O; one instance per connection."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0  # where the next line-end search starts
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        buf = self._buffer
        pos = max(self._scan_from, 0)
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf):
                # A lone CR at the end may be the first half of CRLF: wait for more.
                break
            line = bytes(buf[start:m.start()])
            start = pos = m.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buf[:start]
        self._scan_from = max(len(buf) - 1, 0) if buf.endswith(b"\r") else len(buf)
        return events

    def close(self) -> list[SSEEvent]:
        """End of input: a trailing lone CR ends its line; a pending event is dropped."""
        events: list[SSEEvent] = []
        if self._buffer.endswith(b"\r"):
            event = self._line(bytes(self._buffer[:-1]))
            if event is not None:
                events.append(event)
        self._buffer.clear()
        self._scan_from = 0
        self._reset()
        return events

    def _reset(self) -> None:
        self._event = ""
        self._data = []
        self._has_fields = False

    def _line(self, raw: bytes) -> SSEEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            if not self._data:
                self._reset()
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._reset()
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        self._has_fields = True
        return None
