"""A duralog server with the Yjs sub-app, for the Yjs tests.

``YjsServer`` runs ``python -m tests.yjs_support`` in a subprocess: the core
stream app and ``YjsApp`` over one store, composed the way the server's mount
table does it (the prefix stripped from ``path`` and added to ``root_path``).
Real processes, so the crash tests can kill -9 them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .servers import ServerProcess, free_port

PREFIX = "/v1/yjs"


class Composed:
    """The core app plus YjsApp at /v1/yjs, sharing one store."""

    def __init__(self, backend: str, data_dir: str | None, compaction_bytes: int | None,
                 awareness_ttl: int = 3600, **config: Any) -> None:
        from prometheus_client import CollectorRegistry

        from duralog.server.app import DuralogApp
        from duralog.server.config import Config
        from duralog.yjs.server import YjsApp

        cfg = Config.from_env(backend=backend, data_dir=data_dir, **config)
        self.core = DuralogApp(cfg)
        self.metrics = CollectorRegistry()
        ctx = SimpleNamespace(config=cfg, store=self.core.store, metrics=self.metrics,
                              log=logging.getLogger("duralog.yjs"))
        self.yjs = YjsApp(ctx, compaction_bytes=compaction_bytes, awareness_ttl=awareness_ttl)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await self.core.startup()
            await self.yjs.startup()
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await self.yjs.shutdown()
            await self.core.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == PREFIX or path.startswith(PREFIX + "/")):
            scope = dict(scope, path=path[len(PREFIX):],
                         root_path=scope.get("root_path", "") + PREFIX)
            await self.yjs(scope, receive, send)
            return
        if scope["type"] == "http" and path == "/metrics":
            from prometheus_client import generate_latest

            body = generate_latest(self.metrics)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.core(scope, receive, send)


def yjs_server(backend: str = "memory", data_dir: str | Path | None = None,
               compaction_bytes: int | None = None, log_path: Path | None = None,
               env: dict[str, str] | None = None, awareness_ttl: int | None = None
               ) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "tests.yjs_support", "--port", str(port),
            "--backend", backend]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if compaction_bytes is not None:
        args += ["--compaction-bytes", str(compaction_bytes)]
    if awareness_ttl is not None:
        args += ["--awareness-ttl", str(awareness_ttl)]
    return ServerProcess(args, port, env=env or {}, log_path=log_path)


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", default="memory")
    p.add_argument("--data-dir")
    p.add_argument("--compaction-bytes", type=int)
    p.add_argument("--awareness-ttl", type=int, default=3600)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    app = Composed(args.backend, args.data_dir, args.compaction_bytes, args.awareness_ttl,
                   long_poll_timeout=5.0)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                lifespan="on", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
