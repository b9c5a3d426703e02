"""Writing model events to a durable stream, batched, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import httpx

from ..client import AsyncDurableStream
from .events import Event, is_final, normalize

JSON = "application/json"


def stream_of(target: str | AsyncDurableStream, client: httpx.AsyncClient | None = None
              ) -> AsyncDurableStream:
    if isinstance(target, AsyncDurableStream):
        return target
    return AsyncDurableStream(target, content_type=JSON, client=client)


async def write_json_messages(target: str | AsyncDurableStream,
                              messages: AsyncIterator[dict[str, Any]], *,
                              final: bool = True, create: bool = True, linger: float = 0.005,
                              max_batch_bytes: int = 4096,
                              client: httpx.AsyncClient | None = None) -> str | None:
    """Append each message (one JSON message per event) through an idempotent
    producer: batched by ``linger`` seconds or ``max_batch_bytes``, retried
    without duplicates. With ``final``, the last message is written together with
    the close, so readers see the end and the stream's last event at once.
    Returns the final offset.
    """
    stream = stream_of(target, client)
    if create:
        await stream.create(content_type=JSON)
    producer = await stream.producer(f"duralog-ai-{uuid.uuid4().hex[:12]}", content_type=JSON,
                                     linger=linger, max_batch_bytes=max_batch_bytes)
    last: dict[str, Any] | None = None
    try:
        async for message in messages:
            if last is not None:
                producer.append_json(last)
            last = message
        if final:
            result = await producer.close_stream(json=last) if last is not None else \
                await producer.close_stream()
            return result.next_offset
        if last is not None:
            producer.append_json(last)
        await producer.close()
        return producer.last_offset
    except BaseException:
        await producer.close()
        raise


async def write_events(target: str | AsyncDurableStream,
                       source: Iterable[Any] | AsyncIterable[Any], *, create: bool = True,
                       linger: float = 0.005, max_batch_bytes: int = 4096,
                       client: httpx.AsyncClient | None = None) -> Event:
    """Write a model stream as neutral events (events.py) and close the stream.

    Returns the final event (finish reason and usage, or the error).
    """
    final: Event = {}

    async def events() -> AsyncIterator[Event]:
        nonlocal final
        async for event in normalize(source):
            if is_final(event):
                final = event
            yield event

    await write_json_messages(target, events(), create=create, linger=linger,
                              max_batch_bytes=max_batch_bytes, client=client)
    return final


def write_events_sync(url: str, source: Iterable[Any], **options: Any) -> Event:
    """``write_events`` for blocking code (a sync SDK stream, a script)."""
    return asyncio.run(write_events(url, source, **options))
