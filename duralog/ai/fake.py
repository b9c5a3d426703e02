"""A fake model for examples and tests: OpenAI-shaped chunks, no API key.

``fake_openai_stream("Hello world", delay=0.01)`` yields chat-completion chunk
dicts the way ``openai`` streams them (a role chunk, one content delta per
word, a last chunk with ``finish_reason`` and ``usage``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


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
