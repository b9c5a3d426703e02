"""Reading model events back, live, with resume from a saved offset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..client import AsyncDurableStream
from ..protocol.offsets import START
from .events import Event, is_final


class AsyncEventReader:
    """Events of a stream from ``offset``, following it live until its final event.

    ``offset`` is, at any time, where to resume so that nothing already handed
    out is repeated: it moves past a batch once its last event was taken.
    """

    def __init__(self, url: str, offset: str = START, *, live: str = "sse",
                 stream: AsyncDurableStream | None = None) -> None:
        self.stream = stream or AsyncDurableStream(url)
        self.offset = offset
        self.live = live
        self.final: Event | None = None

    async def __aiter__(self) -> AsyncIterator[Event]:
        reader = self.stream.read(self.offset, live=self.live)  # type: ignore[arg-type]
        try:
            async for batch in reader.json_batches():
                for event in batch.items:
                    if isinstance(event, dict) and is_final(event):
                        self.final = event
                    yield event
                self.offset = batch.offset
                if batch.closed:
                    break
        finally:
            await reader.aclose()

    async def text(self) -> AsyncIterator[str]:
        async for event in self:
            if event.get("type") == "text":
                yield event["text"]


def read_events(url: str, offset: str = START, **options: Any) -> AsyncEventReader:
    return AsyncEventReader(url, offset, **options)


async def read_text(url: str, offset: str = START) -> tuple[str, Event | None]:
    """All the text of a (finished or live) generation, and its final event."""
    reader = AsyncEventReader(url, offset)
    parts = [t async for t in reader.text()]
    return "".join(parts), reader.final
