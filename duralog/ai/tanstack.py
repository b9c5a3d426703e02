"""TanStack AI chat sessions, as npm ``@durable-streams/tanstack-ai-transport`` 0.0.9 reads them.

A session is one JSON stream per conversation that is never closed: each turn
appends the user's messages as echo chunks (``TEXT_MESSAGE_START`` /
``TEXT_MESSAGE_CONTENT`` / ``TEXT_MESSAGE_END`` with ``model: "client"``),
then the assistant's chunks (``RUN_STARTED``, ``TEXT_MESSAGE_*``,
``RUN_FINISHED`` or ``RUN_ERROR``). Stored content chunks carry ``delta``
only (the transport's ``sanitizeChunkForStorage``). The client's
``durableStreamConnection`` POSTs ``{messages, data}`` to your endpoint (we
answer 202, or 200 in await mode) and subscribes with SSE: first a
``MESSAGES_SNAPSHOT`` built from the catch-up, then live chunks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import httpx

from ..client import AsyncDurableStream
from .events import Event, normalize
from .responses import background, stream_response
from .writer import JSON, write_json_messages

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls"}


def _now() -> int:
    return int(time.time() * 1000)


def echo_chunks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A client message as the chunks the session stream stores for it."""
    mid = message.get("id") or str(uuid.uuid4())
    role = message.get("role") if message.get("role") in ("assistant", "system", "tool") \
        else "user"
    text = "".join(p.get("content") if isinstance(p.get("content"), str) else
                   p.get("text") if isinstance(p.get("text"), str) else ""
                   for p in message.get("parts") or [] if p.get("type") == "text")
    ts = _now()
    chunks: list[dict[str, Any]] = [{"type": "TEXT_MESSAGE_START", "messageId": mid,
                                     "role": role, "model": "client", "timestamp": ts}]
    if text:
        chunks.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": text,
                       "model": "client", "timestamp": ts})
    chunks.append({"type": "TEXT_MESSAGE_END", "messageId": mid, "model": "client",
                   "timestamp": ts})
    return chunks


async def session_chunks(events: AsyncIterable[Event], *, message_id: str | None = None,
                         model: str = "model") -> AsyncIterator[dict[str, Any]]:
    """Neutral events as the assistant's chunks of one run."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    mid = message_id or f"msg-{uuid.uuid4().hex[:12]}"
    yield {"type": "RUN_STARTED", "runId": run_id, "model": model, "timestamp": _now()}
    yield {"type": "TEXT_MESSAGE_START", "messageId": mid, "role": "assistant", "model": model,
           "timestamp": _now()}
    async for event in events:
        kind = event.get("type")
        if kind == "text":
            yield {"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": event["text"],
                   "model": model, "timestamp": _now()}
        elif kind in ("finish", "error"):
            yield {"type": "TEXT_MESSAGE_END", "messageId": mid, "model": model,
                   "timestamp": _now()}
            if kind == "error":
                yield {"type": "RUN_ERROR", "runId": run_id, "model": model,
                       "timestamp": _now(), "error": {"message": event.get("message", "")}}
                return
            done: dict[str, Any] = {"type": "RUN_FINISHED", "runId": run_id, "model": model,
                                    "timestamp": _now(),
                                    "finishReason": _FINISH.get(event.get("reason") or "stop",
                                                                event.get("reason") or "stop")}
            if event.get("usage"):
                done["usage"] = event["usage"]
            yield done
            return


async def start_turn(stream_url: str, new_messages: list[dict[str, Any]], *,
                     client: httpx.AsyncClient | None = None) -> AsyncDurableStream:
    """Make sure the session exists and append the user's messages (echo chunks)."""
    stream = AsyncDurableStream(stream_url, content_type=JSON, client=client)
    await stream.create(content_type=JSON)  # idempotent: the session may exist
    echoes = [chunk for message in new_messages for chunk in echo_chunks(message)]
    if echoes:
        await stream.append_json(*echoes)
    return stream


async def append_run(stream: AsyncDurableStream, source: Iterable[Any] | AsyncIterable[Any],
                     *, message_id: str | None = None, model: str = "model",
                     linger: float = 0.005, max_batch_bytes: int = 4096) -> str | None:
    """The assistant's run, appended to the (open) session stream."""
    return await write_json_messages(
        stream, session_chunks(normalize(source), message_id=message_id, model=model),
        final=False, create=False, linger=linger, max_batch_bytes=max_batch_bytes)


async def append_turn(stream_url: str, new_messages: list[dict[str, Any]],
                      source: Iterable[Any] | AsyncIterable[Any], *,
                      client: httpx.AsyncClient | None = None, **options: Any) -> str | None:
    """One whole turn of a session: the echoed user messages, then the assistant's run."""
    stream = await start_turn(stream_url, new_messages, client=client)
    return await append_run(stream, source, **options)


async def tanstack_session_response(source: Iterable[Any] | AsyncIterable[Any], *,
                                    stream_url: str, new_messages: list[dict[str, Any]],
                                    mode: str = "immediate", **options: Any) -> Any:
    """The send endpoint's answer in one call: 202 and the turn written in the
    background, or 200 once written (``mode="await"``); no body, as the transport expects."""
    from starlette.responses import Response

    # As the npm helper does: the user's messages are in the stream before we answer.
    stream = await start_turn(stream_url, new_messages, client=options.pop("client", None))
    writer = append_run(stream, source, **options)
    if mode == "await":
        await writer
        return Response(status_code=200, headers={"Cache-Control": "no-store"})
    background(writer)
    return Response(status_code=202, headers={"Cache-Control": "no-store"})


async def tanstack_stream_response(source: Iterable[Any] | AsyncIterable[Any], *,
                                   write_url: str, read_url: str | None = None,
                                   mode: str = "immediate", model: str = "model",
                                   **options: Any) -> Any:
    """``toDurableStreamResponse``'s contract: one run per stream, closed at its end."""
    await AsyncDurableStream(write_url, client=options.get("client")).create(content_type=JSON)
    writer = write_json_messages(write_url, session_chunks(normalize(source), model=model),
                                 create=False, **options)
    return await stream_response(writer, read_url or write_url, mode=mode)


def apply_chunks(messages: list[dict[str, Any]], chunks: Iterable[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """The session's messages after ``chunks`` (what the transport's snapshot holds)."""
    out = [dict(m, parts=list(m.get("parts", []))) for m in messages]

    def index_of(mid: str, role: str) -> int:
        for i, m in enumerate(out):
            if m.get("id") == mid:
                return i
        out.append({"id": mid, "role": "assistant" if role == "tool" else role, "parts": []})
        return len(out) - 1

    for chunk in chunks:
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if kind == "MESSAGES_SNAPSHOT":
            out = [dict(m, parts=list(m.get("parts", []))) for m in chunk.get("messages", [])]
        elif kind == "TEXT_MESSAGE_START" and isinstance(chunk.get("messageId"), str):
            index_of(chunk["messageId"], chunk.get("role", "assistant"))
        elif kind == "TEXT_MESSAGE_CONTENT" and isinstance(chunk.get("messageId"), str):
            m = out[index_of(chunk["messageId"], "assistant")]
            delta = chunk.get("delta") if isinstance(chunk.get("delta"), str) else \
                chunk.get("content", "") if isinstance(chunk.get("content"), str) else ""
            texts = [i for i, p in enumerate(m["parts"]) if p.get("type") == "text"]
            if texts:
                part = m["parts"][texts[-1]]
                m["parts"][texts[-1]] = dict(part, content=part.get("content", "") + delta)
            else:
                m["parts"].append({"type": "text", "content": delta})
    return out


async def read_session(stream_url: str, offset: str = "-1") -> tuple[list[dict[str, Any]], str]:
    """The session's messages as they stand now (catch-up), and the offset to follow from."""
    stream = AsyncDurableStream(stream_url)
    chunks: list[dict[str, Any]] = []
    reader = stream.read(offset)
    last = offset
    try:
        async for batch in reader.json_batches():
            chunks.extend(batch.items)
            last = batch.offset
    finally:
        await reader.aclose()
    return apply_chunks([], chunks), last
