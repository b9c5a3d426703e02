"""A fake model upstream for the proxy benchmark: ``python -m bench.upstream PORT``.

``GET /tokens?n=N&gap=MS`` streams N lines ``<i>:<time_ns at send>\\n``, one per
gap, as ``text/plain``: the reader's clock minus the stamp is a token's latency.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any
from urllib.parse import parse_qsl


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    q = dict(parse_qsl(scope.get("query_string", b"").decode()))
    n, gap = int(q.get("n", 100)), float(q.get("gap", 10)) / 1000
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(n):
        await asyncio.sleep(gap)
        await send({"type": "http.response.body", "more_body": True,
                    "body": f"{i}:{time.time_ns()}\n".encode()})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http="httptools", backlog=4096)
