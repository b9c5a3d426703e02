"""Observability: the access log and metrics layer, the metric set, log setup.

``ObserveLayer`` wraps the composed app once (app.py); no handler logs or
counts requests itself. Per request it keeps a request id (the client's
``X-Request-Id`` when it is a plain token, else a new one) and sends it back,
writes one access line (method, path, status, response bytes, duration, id)
on the ``duralog.access`` logger, and counts the request in
``duralog_http_requests_total``/``duralog_http_request_duration_seconds``.
Tokens and bodies are never logged: the line has the path and a query string
whose credential-like values are masked, nothing else of the request.

``ServerMetrics`` is the metric set, registered on ``ServerContext.metrics``;
handlers and the store report into it (appends, bytes read, live readers,
sqlite commits through ``commit_observer``).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..store import Store
from .http import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("duralog.access")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Query parameters whose values may be credentials: never written to a log.
_SECRET_PARAMS = frozenset({b"token", b"access_token", b"auth", b"authorization", b"key",
                            b"api_key", b"apikey", b"secret", b"password", b"signature",
                            b"sig", b"jwt"})
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0, 60.0)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Status recorded for a request whose client left before any answer (nginx's 499).
CLIENT_GONE = 499


class ServerMetrics:
    """The server's Prometheus metrics, on one registry."""

    def __init__(self, registry: CollectorRegistry, store: Store) -> None:
        self.requests = Counter("duralog_http_requests", "HTTP requests answered",
                                ["method", "status"], registry=registry)
        self.duration = Histogram("duralog_http_request_duration_seconds",
                                  "Time from request to the end of the response (live reads "
                                  "included)", buckets=_DURATION_BUCKETS, registry=registry)
        self.appends = Counter("duralog_appends", "Appends that wrote data (POST with a body)",
                               registry=registry)
        self.append_bytes = Counter("duralog_append_bytes", "Bytes of data appended",
                                    registry=registry)
        self.read_bytes = Counter("duralog_read_bytes",
                                  "Bytes of stream data sent to readers (catch-up, long-poll, "
                                  "SSE)", registry=registry)
        self.live_readers = Gauge("duralog_live_readers", "Live readers connected now",
                                  ["mode"], registry=registry)
        self.streams = Gauge("duralog_streams", "Streams that exist (the registry included)",
                             registry=registry)
        self.streams.set_function(lambda: len(store.list_states()))
        self.commit_seconds = Histogram("duralog_store_commit_seconds",
                                        "Duration of one sqlite transaction commit",
                                        buckets=_COMMIT_BUCKETS, registry=registry)
        self.commit_batch_size = Histogram("duralog_store_commit_batch_size",
                                           "Operations committed in one sqlite transaction",
                                           buckets=_BATCH_BUCKETS, registry=registry)
        self.store_errors = Counter("duralog_store_errors",
                                    "Requests refused because the store failed (503, 507)",
                                    registry=registry)
        self._children: dict[tuple[str, int], Any] = {}
        self.long_poll_readers = self.live_readers.labels("long-poll")
        self.sse_readers = self.live_readers.labels("sse")
        if hasattr(store, "commit_observer"):
            store.commit_observer = self.observe_commit

    def observe_commit(self, seconds: float, operations: int) -> None:
        # Runs on the sqlite writer thread; prometheus-client metrics are thread-safe.
        self.commit_seconds.observe(seconds)
        self.commit_batch_size.observe(operations)

    def count_request(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 512:
                method = "other"  # a client inventing methods cannot grow the label set
            child = self._children[key] = self.requests.labels(method, str(status))
        child.inc()
        self.duration.observe(seconds)


class ObserveLayer:
    """Wraps an ASGI app: request id, access line, request metrics."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None, access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access
        # Ids are a per-process random prefix and a counter: unique, and cheap.
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id" or key.lower() == b"x-request-id":
                if _REQUEST_ID.fullmatch(value):
                    rid = value
                break
        if not rid:
            rid = f"{self._prefix}-{next(self._ids):x}".encode()
        status = 0
        size = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                # A copy: the app may reuse its header list.
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", rid)]}
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            if not status:
                status = CLIENT_GONE
            if self.metrics is not None:
                self.metrics.count_request(scope["method"], status, seconds)
            if self.access and access_log.isEnabledFor(logging.INFO):
                _log_access(scope, status, size, seconds, rid)


def _log_access(scope: Scope, status: int, size: int, seconds: float, rid: bytes) -> None:
    # The raw path: percent-encoded as sent, so no control character reaches the log.
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    path = path.split(b"?", 1)[0]
    query = scope.get("query_string", b"")
    if query:
        path += b"?" + _mask_query(query)
    client = scope.get("client")
    fields = {
        "method": scope["method"],
        "path": path.decode("latin-1"),
        "status": status,
        "bytes": size,
        "duration_ms": round(seconds * 1000, 3),
        "request_id": rid.decode("ascii"),
        "client": client[0] if client else None,
    }
    access_log.info('%s "%s %s" %d %dB %.1fms id=%s', fields["client"] or "-",
                    fields["method"], fields["path"], status, size, seconds * 1000,
                    fields["request_id"], extra={"fields": fields})


def _mask_query(query: bytes) -> bytes:
    parts = []
    for item in query.split(b"&"):
        key, eq, _ = item.partition(b"=")
        if eq and key.lower() in _SECRET_PARAMS:
            item = key + b"=***"
        parts.append(item)
    return b"&".join(parts)


# -- log setup (the CLI calls this; an embedding host configures its own logging) --


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and any ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str, fmt: str, access: bool) -> None:
    """Log lines to stderr at ``level``, as text or JSON; access lines when ``access``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Access lines are info records; they follow --access-log, not --log-level.
    access_log.setLevel(logging.INFO if access else logging.CRITICAL + 1)
    # uvicorn's own access log is off (this layer writes ours); its other loggers
    # propagate to the root handler above.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


LogHook = Callable[[], None]
