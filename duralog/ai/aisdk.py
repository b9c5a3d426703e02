"""Vercel AI SDK UI message chunks, as npm ``@durable-streams/aisdk-transport`` 0.0.7 reads them.

The transport's client POSTs the chat to your endpoint, takes the stream URL
from ``Location`` (or ``{"streamUrl"}``) and reads the stream with SSE as a
JSON stream: one UI message chunk per JSON message (``start``, ``text-start``,
``text-delta``..., ``text-end``, ``finish``), in the shapes ``ai`` 6 validates.
The stream is closed when the message is done. Its ``reconnectToStream``
asks ``GET {api}/{chatId}/stream``: 204 when no generation is in flight,
otherwise the stream URL again (it then reads from the start).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import httpx

from ..client import AsyncDurableStream
from ..client.errors import StreamNotFound
from .events import Event, normalize
from .responses import stream_response
from .writer import write_json_messages

# ai 6's finishReason enum, from OpenAI's and Anthropic's reasons.
_FINISH = {"stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "length": "length",
           "max_tokens": "length", "content_filter": "content-filter",
           "content-filter": "content-filter", "tool_calls": "tool-calls",
           "tool_use": "tool-calls", "tool-calls": "tool-calls", "error": "error"}


def finish_reason(reason: str | None) -> str:
    return _FINISH.get(reason or "stop", "other")


async def ui_chunks(events: AsyncIterable[Event], message_id: str | None = None
                    ) -> AsyncIterator[dict[str, Any]]:
    """Neutral events as UI message chunks: one text part per message."""
    yield {"type": "start", "messageId": message_id or f"msg-{uuid.uuid4().hex}"}
    yield {"type": "start-step"}
    text_id: str | None = None
    async for event in events:
        kind = event.get("type")
        if kind == "text":
            if text_id is None:
                text_id = f"text-{uuid.uuid4().hex[:8]}"
                yield {"type": "text-start", "id": text_id}
            yield {"type": "text-delta", "id": text_id, "delta": event["text"]}
        elif kind in ("finish", "error"):
            if text_id is not None:
                yield {"type": "text-end", "id": text_id}
            if kind == "error":
                yield {"type": "error", "errorText": event.get("message", "error")}
                return
            yield {"type": "finish-step"}
            finish: dict[str, Any] = {"type": "finish",
                                      "finishReason": finish_reason(event.get("reason"))}
            if event.get("usage"):
                finish["messageMetadata"] = {"usage": event["usage"]}
            yield finish
            return
        elif isinstance(kind, str) and kind.startswith("data-"):
            yield event  # your own data parts pass through


async def write_aisdk(target: str | AsyncDurableStream,
                      source: Iterable[Any] | AsyncIterable[Any], *,
                      message_id: str | None = None, linger: float = 0.005,
                      max_batch_bytes: int = 4096, create: bool = True,
                      client: httpx.AsyncClient | None = None) -> str | None:
    """Write a model stream as UI message chunks and close the stream; the final offset."""
    return await write_json_messages(target, ui_chunks(normalize(source), message_id),
                                     linger=linger, max_batch_bytes=max_batch_bytes,
                                     create=create, client=client)


async def aisdk_response(source: Iterable[Any] | AsyncIterable[Any], *, write_url: str,
                         read_url: str | None = None, mode: str = "immediate",
                         message_id: str | None = None, **options: Any) -> Any:
    """The endpoint's answer in one call (a Starlette/FastAPI Response): 201 and the
    writing in the background, or with ``mode="await"`` 200 once it is written."""
    # The stream exists before the answer goes out, so the client's first read finds it.
    await AsyncDurableStream(write_url, client=options.get("client")).create(
        content_type="application/json")
    writer = write_aisdk(write_url, source, message_id=message_id, create=False, **options)
    return await stream_response(writer, read_url or write_url, mode=mode)


async def aisdk_reconnect_response(stream_url: str | None, *, read_url: str | None = None,
                                   client: httpx.AsyncClient | None = None) -> Any:
    """``GET {api}/{chatId}/stream``: 204 unless that chat's stream is still being
    written (it exists and is not closed), else 200 with Location and streamUrl."""
    from starlette.responses import JSONResponse, Response

    if stream_url is None:
        return Response(status_code=204)
    try:
        info = await AsyncDurableStream(stream_url, client=client).head()
    except StreamNotFound:
        return Response(status_code=204)
    if info.closed:
        return Response(status_code=204)
    url = read_url or stream_url
    return JSONResponse({"streamUrl": url}, headers={"Location": url,
                                                     "Cache-Control": "no-store"})


async def read_ui_chunks(url: str, offset: str = "-1") -> AsyncIterator[dict[str, Any]]:
    """UI message chunks from a stream (ours, or one the npm helpers wrote), live."""
    reader = AsyncDurableStream(url).read(offset, live="sse")
    try:
        async for item in reader.json_items():
            yield item
    finally:
        await reader.aclose()


async def read_ui_message(url: str) -> tuple[str, dict[str, Any] | None]:
    """The text of the assistant message in a UI chunk stream, and its finish chunk."""
    text: list[str] = []
    finish = None
    async for chunk in read_ui_chunks(url):
        if chunk.get("type") == "text-delta":
            text.append(chunk["delta"])
        elif chunk.get("type") in ("finish", "error"):
            finish = chunk
    return "".join(text), finish
