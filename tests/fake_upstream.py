"""A local fake upstream for the proxy and AI tests: OpenAI- and Anthropic-style SSE,
slow tokens, drops, errors, redirects, stalls, huge and binary bodies.

Raw ASGI, served by uvicorn in a thread (ThreadedServer) or a subprocess
(``python tests/fake_upstream.py PORT``). Query parameters shape each answer:
``n`` tokens, ``delay`` ms between them, ``drop`` (cut the connection after
that many tokens), ``status`` (answer with that error status).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qsl

Scope = dict[str, Any]


def token(i: int) -> str:
    return f"tok{i} "


def pattern(size: int) -> bytes:
    """Deterministic binary bytes (every byte value), for huge/binary bodies."""
    block = bytes(range(256)) * 256
    out = block * (size // len(block)) + block[: size % len(block)]
    return out


#: How many requests carried ?id=X (a test asks /count?of=X: was the model re-run?).
REQUESTS: dict[str, int] = {}


class Dropped(Exception):
    """Raised mid-body so uvicorn cuts the connection (what a network drop looks like)."""


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        m = await receive()
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks)


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    q = dict(parse_qsl(scope.get("query_string", b"").decode()))
    if "id" in q:
        REQUESTS[q["id"]] = REQUESTS.get(q["id"], 0) + 1
    if path == "/count":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(REQUESTS.get(q.get("of", ""), 0)
                                                              ).encode()})
        return
    body = await _read_body(receive)
    n = int(q.get("n", 5))
    delay = float(q.get("delay", 0)) / 1000
    drop = int(q["drop"]) if "drop" in q else None
    status = int(q.get("status", 200))

    async def start(code: int, ctype: str, extra: list[tuple[bytes, bytes]] | None = None
                    ) -> None:
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", ctype.encode()), *(extra or [])]})

    async def chunk(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def end() -> None:
        await send({"type": "http.response.body", "body": b""})

    if status != 200:
        size = int(q.get("size", 0))
        err = json.dumps({"error": {"message": "fake upstream error", "type": "fake"}}).encode()
        await start(status, "application/json")
        await send({"type": "http.response.body", "body": err + b" " * size})
        return
    if path == "/redirect":
        await start(302, "text/plain", [(b"location", q.get("to", "/echo").encode())])
        await send({"type": "http.response.body", "body": b"moved"})
        return
    if path == "/echo":
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}
        await start(200, "application/json")
        await send({"type": "http.response.body", "body": json.dumps({
            "method": scope["method"], "headers": headers,
            "body": body.decode("utf-8", "replace"), "query": q}).encode()})
        return
    if path == "/slow-headers":
        await asyncio.sleep(float(q.get("wait", 5)))
        await start(200, "text/plain")
        await send({"type": "http.response.body", "body": b"late"})
        return
    if path == "/stall":
        await start(200, "text/plain")
        await chunk(b"before-stall")
        await asyncio.sleep(float(q.get("wait", 3600)))
        await end()
        return
    if path == "/binary":
        size = int(q.get("size", 1 << 20))
        data = pattern(size)
        await start(200, "application/octet-stream")
        step = int(q.get("step", 65536))
        for i in range(0, len(data), step):
            await chunk(data[i:i + step])
            if delay:
                await asyncio.sleep(delay)
        await end()
        return
    if path == "/text":
        await start(200, "text/plain; charset=utf-8")
        for i in range(n):
            if drop is not None and i == drop:
                raise Dropped
            await chunk(token(i).encode())
            if delay:
                await asyncio.sleep(delay)
        await end()
        return
    if path == "/v1/chat/completions":
        await _openai(q, body, n, delay, drop, start, chunk, end)
        return
    if path == "/v1/messages":
        await _anthropic(n, delay, drop, start, chunk, end)
        return
    await start(404, "text/plain")
    await send({"type": "http.response.body", "body": b"no such fake route"})


async def _openai(q: dict[str, str], body: bytes, n: int, delay: float, drop: int | None,
                  start: Any, chunk: Any, end: Any) -> None:
    """OpenAI chat.completions streaming: data: {chunk}\\n\\n ... data: [DONE]."""
    await start(200, "text/event-stream")
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model"}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}]}
    await chunk(b"data: " + json.dumps(first).encode() + b"\n\n")
    for i in range(n):
        if drop is not None and i == drop:
            raise Dropped
        event = {**base, "choices": [{"index": 0, "delta": {"content": token(i)},
                                      "finish_reason": None}]}
        await chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        if delay:
            await asyncio.sleep(delay)
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}
    await chunk(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
    await end()


async def _anthropic(n: int, delay: float, drop: int | None, start: Any, chunk: Any,
                     end: Any) -> None:
    """Anthropic messages streaming: named events message_start ... message_stop."""
    await start(200, "text/event-stream")

    async def ev(name: str, data: dict[str, Any]) -> None:
        await chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    await ev("message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
        "model": "fake-model", "stop_reason": None, "usage": {"input_tokens": 3,
                                                              "output_tokens": 0}}})
    await ev("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
    for i in range(n):
        if drop is not None and i == drop:
            raise Dropped
        await ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": token(i)}})
        if delay:
            await asyncio.sleep(delay)
    await ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    await ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": n}})
    await ev("message_stop", {"type": "message_stop"})
    await end()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
