"""The HTTP contract the TypeScript transports' server helpers follow, in Starlette.

``toDurableStreamResponse`` in both npm packages answers the POST that starts
a generation with 201, ``Location: <stream URL>`` and ``{"streamUrl": ...}``
while the writing goes on in the background ("immediate" mode), or, in
"await" mode, with 200, the same Location and ``{"streamUrl", "finalOffset"}``
once the stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("duralog.ai")

#: Writers running in the background, kept referenced until they finish.
_BACKGROUND: set[asyncio.Task[Any]] = set()


def background(coro: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _BACKGROUND.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("durable stream write failed", exc_info=t.exception())

    task.add_done_callback(done)
    return task


async def stream_response(writer: Awaitable[str | None], read_url: str, *,
                          mode: str = "immediate") -> Any:
    from starlette.responses import JSONResponse

    if mode == "await":
        final_offset = await writer
        return JSONResponse({"streamUrl": read_url, "finalOffset": final_offset or ""},
                            status_code=200, headers={"Location": read_url})
    if mode != "immediate":
        raise ValueError("mode is 'immediate' or 'await'")
    background(writer)
    return JSONResponse({"streamUrl": read_url}, status_code=201, headers={
        "Location": read_url, "Cache-Control": "no-store",
        "Access-Control-Expose-Headers": "Location"})
