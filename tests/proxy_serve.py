"""Run duralog's stream API with the proxy sub-app at /v1/proxy, in a subprocess.

``python tests/proxy_serve.py PORT BACKEND DATA_DIR`` with the proxy settings
from DURALOG_PROXY_* variables. A tiny composition that mirrors the server's
mount table, so the proxy is tested through real HTTP on every backend.
"""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from duralog.proxy import ProxyConfig
from duralog.proxy.server import ProxyApp
from duralog.server.app import DuralogApp
from duralog.server.config import Config
from duralog.store import open_store

PREFIX = "/v1/proxy"


class Composition:
    def __init__(self, config: Config, proxy_config: ProxyConfig) -> None:
        store = open_store(config.backend, config.data_dir)
        self.streams = DuralogApp(config, store)
        ctx = SimpleNamespace(config=config, store=store, metrics=CollectorRegistry(),
                              log=logging.getLogger("duralog.proxy"))
        self.proxy = ProxyApp(ctx, proxy_config)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.streams.startup()
                    await self.proxy.startup()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.proxy.shutdown()
                    await self.streams.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope.get("path", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            scope = dict(scope, path=path[len(PREFIX):],
                         root_path=scope.get("root_path", "") + PREFIX)
            await self.proxy(scope, receive, send)
            return
        await self.streams(scope, receive, send)


def main() -> None:
    import uvicorn

    port, backend, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = Config.from_env(port=port, backend=backend, data_dir=data_dir)
    app = Composition(config, ProxyConfig.from_env(enabled=True))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                timeout_graceful_shutdown=2, loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
