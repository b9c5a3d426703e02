"""Composition: which sub-application serves which path, and the app's lifecycle.

``DuralogApp`` is the Durable Streams server as one ASGI application. It routes
each request by path:

- the mount table (``MOUNTS`` below) first, longest prefix first: health and
  metrics now, and the control APIs under ``<stream prefix>__ds``, ``/v1/proxy``,
  ``/v1/yjs`` and the console at ``/`` as those layers land;
- then the stream root (``config.stream_prefix``) to the stream operations
  (streams.py) and live reads (live.py);
- anything else is a 404 naming where streams live.

A mounted sub-app is built as ``XApp(ctx)`` from a ``ServerContext``, has
``async startup()``/``shutdown()`` and is called with ``scope["path"]`` relative
to its prefix and ``scope["root_path"]`` extended by it. The app speaks raw
ASGI (no framework underneath) so it can run under any ASGI server or be
mounted in a Starlette or FastAPI application under a prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry

from .. import offload
from ..auth import load_auth
from ..protocol.errors import ProtocolError
from ..protocol.paths import stream_name
from ..proxy.mount import proxy_app
from ..store import Store, open_store
from .auth import secure
from .config import Config
from .console import ConsoleApp
from .context import ServerContext
from .health import HealthApp, MetricsApp, ReadyApp
from .http import (
    METHODS,
    ASGIApp,
    Disconnected,
    Receive,
    Request,
    Responses,
    Scope,
    Send,
    relative_path,
)
from .live import LiveReads
from .observe import ObserveLayer, ServerMetrics
from .store_metrics import StoreCollector
from .streams import REGISTRY, StreamOps, name_is_registry
from .subscriptions import SubscriptionsApp

log = logging.getLogger("duralog")

RESERVED = "__ds"  # PROTOCOL.md 6: control APIs live under this first segment

__all__ = ["REGISTRY", "RESERVED", "DuralogApp", "SubApp", "create_app", "name_is_registry"]


class SubApp(Protocol):
    """What a mounted sub-application provides (see the module docstring)."""

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


def _yjs_app(ctx: ServerContext) -> SubApp:
    from ..yjs.server import YjsApp

    return YjsApp(ctx)


# The mount table: path prefix (relative to the app's root), sub-app factory, and
# whether the configuration turns it on. ``{streams}`` stands for
# config.stream_prefix without its final slash. These paths are outside the
# stream root (or in its reserved __ds segment, PROTOCOL.md 6), so they never
# collide with a stream name.
def _subscriptions_app(ctx: ServerContext) -> SubApp:
    """Subscriptions run on one node of a cluster (server/cluster.py); alone, here."""
    if hasattr(ctx.store, "role"):
        from .cluster import LeaderOnly

        return LeaderOnly(ctx, SubscriptionsApp, "subscriptions")
    return SubscriptionsApp(ctx)


MOUNTS: list[tuple[str, Callable[[ServerContext], SubApp], Callable[[Config], bool]]] = [
    ("/healthz", HealthApp, lambda config: True),
    ("/readyz", ReadyApp, lambda config: True),
    ("/metrics", MetricsApp, lambda config: True),
    ("{streams}/__ds", _subscriptions_app, lambda config: True),  # PROTOCOL.md 6-7
    # PROXY-PROTOCOL.md; mounted always, answering 404 unless enabled (--proxy). Its
    # service auth is --proxy-secret and, with --auth, the scoped tokens (ctx.auth).
    ("/v1/proxy", proxy_app, lambda config: True),
    # YJS-PROTOCOL.md (--yjs, on by default; pycrdt loads only when mounted).
    ("/v1/yjs", _yjs_app, lambda config: config.yjs),
    # The web console: only paths nothing else serves.
    ("/", ConsoleApp, lambda config: config.console),
]


class DuralogApp:
    """The Durable Streams server as an ASGI application."""

    def __init__(self, config: Config | None = None, store: Store | None = None) -> None:
        self.config = config or Config.from_env()
        self.store = store or open_store(self.config.backend, self.config.data_dir,
                                         database_url=self.config.database_url,
                                         pool_size=self.config.pg_pool_size)
        # The store writes each registry event in the commit of the change it records.
        self.store.registry = REGISTRY if self.config.registry else None
        self.store.producer_ttl = self.config.producer_ttl
        # The auth file is loaded once: the security layer and the sub-apps that accept
        # its tokens (the proxy's service auth) share it, minted-token cache included.
        auth = load_auth(self.config.auth) if self.config.auth else None
        self.ctx = ServerContext(self.config, self.store, CollectorRegistry(auto_describe=True),
                                 log, auth=auth)
        self.ctx.metrics.register(StoreCollector(self.store))
        self._started = False
        self._start_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.metrics = (ServerMetrics(self.ctx.metrics, self.store) if self.config.metrics
                        else None)
        self.http = Responses(self.config.cors_origin)
        self.streams = StreamOps(self.config, self.store, self.http, self.metrics)
        self.live = LiveReads(self.config, self.store, self.http, self.streams, self.ctx.closing,
                              self.metrics)
        self.streams.live = self.live
        # Cross-cutting layers wrap the composed app once, outermost last.
        # Host, CORS, rate limits and access control (server/auth.py) inside the
        # access log and metrics, so refusals are logged and counted too.
        self._entry: ASGIApp = secure(self._http, self.config, self.ctx.auth)
        if self.config.access_log or self.metrics is not None:
            self._entry = ObserveLayer(self._entry, self.metrics, self.config.access_log)
        root = self.config.stream_prefix.rstrip("/")
        mounts = [(prefix.replace("{streams}", root), factory(self.ctx))
                  for prefix, factory, enabled in MOUNTS if enabled(self.config)]
        # Longest prefix first, so a mount inside another (or inside the stream
        # root) wins; "/" (the console) only serves what nothing else does.
        self._mounts = sorted((m for m in mounts if m[0] != "/"), key=lambda m: -len(m[0]))
        self._fallback = next((app for prefix, app in mounts if prefix == "/"), None)

    # -- lifecycle ---------------------------------------------------------
    async def startup(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self.store.start()  # creates (and repairs) the registry
            self.ctx.closing.clear()
            for _, app in self._sub_apps():
                await app.startup()
            self._sweeper = asyncio.create_task(self._sweep_loop())
            self._started = True

    async def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        self.begin_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for _, app in reversed(self._sub_apps()):
            await app.shutdown()
        await self.store.stop()
        offload.shutdown()

    def begin_shutdown(self) -> None:
        """Readiness turns 503 and every live reader gets its normal end now (live.py).

        ``duralog serve`` calls this on SIGINT/SIGTERM before its server waits for
        open responses to finish; ``shutdown`` calls it too."""
        self.live.begin_shutdown()

    def _sub_apps(self) -> list[tuple[str, SubApp]]:
        apps = list(self._mounts)
        if self._fallback is not None:
            apps.append(("/", self._fallback))
        return apps

    async def _sweep_loop(self) -> None:
        """Expired streams are removed in the background, not only when touched (4)."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                sweep = getattr(self.store, "sweep_expired", None)
                if sweep is not None:
                    await sweep()
            except Exception:  # pragma: no cover - logged, the loop goes on
                log.exception("sweeping expired streams failed")

    # -- ASGI ----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                await self.startup()
            await self._entry(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._dispatch(scope, receive, send)
        except Disconnected:
            pass
        except ProtocolError as err:
            if err.status >= 500:
                # 503/507 come from the store: nothing was written (store/sqlite.py).
                log.error("%s %s: %d %s", scope.get("method"), scope.get("path"), err.status,
                          err.reason)
                if self.metrics is not None and err.status in (503, 507):
                    self.metrics.store_errors += 1
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("refused %s %s: %d %s", scope.get("method"), scope.get("path"),
                          err.status, err.reason)
            await self.http.error(send, err)
        except Exception:
            # A bug must still answer like the server: one line, security headers (12.7).
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            with contextlib.suppress(Exception):
                await self.http.error(send, ProtocolError(500, "internal server error"))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = relative_path(scope)
        for prefix, app in self._mounts:
            p = prefix.encode()
            if raw == p or raw.startswith(p + b"/"):
                await app(_child_scope(scope, prefix), receive, send)
                return
        prefix = self.config.stream_prefix.encode()
        method = scope["method"]
        if not raw.startswith(prefix):
            if method == "OPTIONS":
                await self.http.preflight(send)
                return
            if self._fallback is not None:
                await self._fallback(_child_scope(scope, ""), receive, send)
                return
            if raw in (b"/", b"") and method in ("GET", "HEAD"):
                await self.http.respond(send, 200, [(b"content-type", b"application/json")],
                                        orjson.dumps({"server": "duralog",
                                                      "streams": self.config.stream_prefix}))
                return
            raise ProtocolError(404, f"no streams here; streams live under "
                                     f"{self.config.stream_prefix}")
        name = stream_name(raw[len(prefix):])
        if method == "OPTIONS":
            await self.http.preflight(send)
            return
        if name.split("/", 1)[0] == RESERVED:
            raise ProtocolError(404, "no such control API (the __ds prefix is reserved)")
        if name == REGISTRY and method in ("POST", "DELETE"):
            raise ProtocolError(403, "the registry stream is written by the server only")
        req = Request(scope, receive, name)
        ops = self.streams
        if method == "GET":
            await ops.get(req, send)
        elif method == "POST":
            await ops.post(req, send)
        elif method == "PUT":
            await ops.put(req, send)
        elif method == "HEAD":
            await ops.head(req, send)
        elif method == "DELETE":
            await ops.delete(req, send)
        else:
            raise ProtocolError(405, f"method {method} is not allowed on a stream",
                                {"allow": METHODS.decode()})


def _child_scope(scope: Scope, prefix: str) -> Scope:
    """The scope a sub-app mounted at ``prefix`` sees: its own path, a longer root_path."""
    root = scope.get("root_path", "")
    path: str = scope["path"]
    if root and path.startswith(root):
        path = path[len(root):]
    child = dict(scope)
    child["path"] = path[len(prefix):] if prefix else path
    child["root_path"] = root + prefix
    return child


def create_app(config: Config | None = None, **overrides: Any) -> DuralogApp:
    """An app from the environment and keyword overrides (``backend="memory"``, ...)."""
    if config is None:
        config = Config.from_env(**overrides)
    return DuralogApp(config)
