"""A fake model for examples and tests: no API key, no network beyond localhost.

``fake_openai_stream("Hello world", delay=0.01)`` yields chat-completion chunk
dicts the way ``openai`` streams them (a role chunk, one content delta per
word, a last chunk with ``finish_reason`` and ``usage``).

``python -m duralog.ai.fake --port 8001`` serves an OpenAI- and
Anthropic-compatible streaming API (``POST /v1/chat/completions``,
``POST /v1/messages``) whose answer repeats the last user message; the real
SDKs, pointed at it with any API key, stream from it. ``?delay=<ms>`` (or
the ``X-Fake-Delay-Ms`` header) slows each token down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


async def fake_openai_stream(text: str, *, delay: float = 0.0, fail_after: int | None = None
                             ) -> AsyncIterator[dict[str, Any]]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake"}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None}]}
    tokens = words(text)
    for i, token in enumerate(tokens):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("the fake model failed")
        if delay:
            await asyncio.sleep(delay)
        yield {**base, "choices": [{"index": 0, "delta": {"content": token},
                                    "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens),
                     "total_tokens": 5 + len(tokens)}}


def reply_to(request: dict[str, Any]) -> str:
    """What the fake model answers: the last user message, repeated back."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return f"You said: {content}"
    return "Hello from the fake model."


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fake model as an ASGI app (OpenAI and Anthropic streaming routes)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    query = dict(parse_qsl(scope.get("query_string", b"").decode()))
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    delay = float(query.get("delay") or headers.get("x-fake-delay-ms") or 0) / 1000
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = {}
    path = scope["path"]
    if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": "no such route"}'})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    text = reply_to(request)

    async def emit(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    if path == "/v1/chat/completions":
        async for chunk in fake_openai_stream(text, delay=delay):
            chunk["created"] = 0
            await emit(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await emit(b"data: [DONE]\n\n")
    else:
        tokens = words(text)

        async def event(name: str, data: dict[str, Any]) -> None:
            await emit(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode())

        await event("message_start", {"message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
            "model": "fake", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 0}}})
        await event("content_block_start", {"index": 0,
                                            "content_block": {"type": "text", "text": ""}})
        for token in tokens:
            if delay:
                await asyncio.sleep(delay)
            await event("content_block_delta", {"index": 0,
                                                "delta": {"type": "text_delta", "text": token}})
        await event("content_block_stop", {"index": 0})
        await event("message_delta", {"delta": {"stop_reason": "end_turn",
                                                "stop_sequence": None},
                                      "usage": {"output_tokens": len(tokens)}})
        await event("message_stop", {})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A fake OpenAI/Anthropic streaming API.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
