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

import asyncio
import itertools
import logging
import os
import re
import sys
import time
from bisect import bisect_left
from collections.abc import Awaitable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

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


class _Histogram:
    """Bucket counts kept as plain numbers; exposed by ``ServerMetrics.collect``."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)),
                            cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class ServerMetrics:
    """The server's Prometheus metrics.

    Counted as plain numbers on the request path and turned into Prometheus
    families only when /metrics is scraped (``collect``): prometheus-client's
    own Counter and Histogram take a lock per update, which cost several
    microseconds per request (docs/benchmarks.md). Request-path numbers are
    changed on the event loop only; the commit histograms on the sqlite writer
    thread only; a scrape reads them, which the GIL keeps consistent enough for
    monotonic counters.
    """

    def __init__(self, registry: CollectorRegistry, store: Store) -> None:
        self.store = store
        self.requests: dict[tuple[str, int], int] = {}
        self.duration = _Histogram(_DURATION_BUCKETS)
        self.appends = 0
        self.append_bytes = 0
        self.read_bytes = 0
        self.live_readers = {"long-poll": 0, "sse": 0}
        self.commit_seconds = _Histogram(_COMMIT_BUCKETS)
        self.commit_batch_size = _Histogram(_BATCH_BUCKETS)
        self.store_errors = 0
        registry.register(self)
        if hasattr(store, "commit_observer"):
            store.commit_observer = self.observe_commit

    def observe_commit(self, seconds: float, operations: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch_size.observe(operations)

    def count_request(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        requests = self.requests
        if key in requests:
            requests[key] += 1
        elif len(requests) < 512:
            requests[key] = 1
        else:  # a client inventing methods cannot grow the label set without end
            other = ("other", status)
            requests[other] = requests.get(other, 0) + 1
        self.duration.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("duralog_http_requests", "HTTP requests answered",
                                       labels=["method", "status"])
        for (method, status), n in list(self.requests.items()):
            requests.add_metric([method, str(status)], n)
        yield requests
        yield self.duration.family("duralog_http_request_duration_seconds",
                                   "Time from request to the end of the response (live "
                                   "reads included)")
        yield CounterMetricFamily("duralog_appends", "Appends that wrote data (POST with a "
                                  "body)", value=self.appends)
        yield CounterMetricFamily("duralog_append_bytes", "Bytes of data appended",
                                  value=self.append_bytes)
        yield CounterMetricFamily("duralog_read_bytes", "Bytes of stream data sent to "
                                  "readers (catch-up, long-poll, SSE)", value=self.read_bytes)
        live = GaugeMetricFamily("duralog_live_readers", "Live readers connected now",
                                 labels=["mode"])
        for mode, n in self.live_readers.items():
            live.add_metric([mode], n)
        yield live
        yield GaugeMetricFamily("duralog_streams", "Streams that exist (the registry "
                                "included)", value=len(self.store.list_states()))
        yield self.commit_seconds.family("duralog_store_commit_seconds",
                                         "Duration of one sqlite transaction commit")
        yield self.commit_batch_size.family("duralog_store_commit_batch_size",
                                            "Operations committed in one sqlite transaction")
        yield CounterMetricFamily("duralog_store_errors", "Requests refused because the "
                                  "store failed (503, 507)", value=self.store_errors)


class ObserveLayer:
    """Wraps an ASGI app: request id, access line, request metrics."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None, access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access
        # Ids are a per-process random prefix and a counter: unique, and cheap.
        self._prefix = os.urandom(4).hex().encode()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = b""
        for key, value in scope["headers"]:  # ASGI: names are lower-case
            if key == b"x-request-id":
                if _REQUEST_ID.fullmatch(value):
                    rid = value
                break
        if not rid:
            rid = b"%s-%x" % (self._prefix, next(self._ids))
        seen = [0, 0]  # status, response bytes

        # A plain function returning send's awaitable: one coroutine frame less per
        # message than an ``async def`` wrapper (this runs twice per request).
        def observed_send(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.body":
                seen[1] += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                seen[0] = message["status"]
                # A new list: the app may reuse its header list.
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            return send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            status = seen[0] or CLIENT_GONE
            if self.metrics is not None:
                self.metrics.count_request(scope["method"], status, seconds)
            if self.access:
                _log_access(scope, status, seen[1], seconds, rid)


class AccessWriter:
    """Access lines straight to a file descriptor, in batches.

    Going through ``logging`` costs about 55 us a line (a record, a formatted
    time, a write and a flush each), which halved small-append throughput. This
    writer keeps what a line needs as one tuple per request and, every 50 ms,
    formats the batch (a time string made once a second) and writes it at once.
    ``duralog serve`` installs it; an embedding host keeps the ``duralog.access``
    logger.
    """

    def __init__(self, fmt: str, fd: int = 2, delay: float = 0.05) -> None:
        self.json = fmt == "json"
        self.fd = fd
        self.delay = delay
        self._pending: list[tuple[float, Scope, int, int, float, bytes]] = []
        self._second = -1
        self._stamp = b""
        self._scheduled = False

    def add(self, scope: Scope, status: int, size: int, seconds: float, rid: bytes) -> None:
        pending = self._pending
        pending.append((time.time(), scope, status, size, seconds, rid))
        if len(pending) >= 1024:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.delay, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop (a test calling directly): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        lines = [self._json_line(*p) if self.json else self._text_line(*p) for p in pending]
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # a closed stderr must not fail requests

    def _text_line(self, now: float, scope: Scope, status: int, size: int, seconds: float,
                   rid: bytes) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)).encode()
        client = scope.get("client")
        return b'%s,%03d INFO duralog.access: %s "%s %s" %d %dB %.1fms id=%s\n' % (
            self._stamp, int((now - second) * 1000), client[0].encode() if client else b"-",
            scope["method"].encode(), _logged_path(scope), status, size, seconds * 1000, rid)

    def _json_line(self, now: float, scope: Scope, status: int, size: int, seconds: float,
                   rid: bytes) -> bytes:
        message, fields = _access_fields(scope, status, size, seconds, rid)
        return orjson.dumps({"ts": round(now, 6), "level": "info", "logger": "duralog.access",
                             "message": message, **fields}) + b"\n"


#: Set by ``configure_logging`` (the CLI); None: access lines go through logging.
_writer: AccessWriter | None = None


def flush_access_log() -> None:
    if _writer is not None:
        _writer.flush()


def _log_access(scope: Scope, status: int, size: int, seconds: float, rid: bytes) -> None:
    if _writer is not None:
        _writer.add(scope, status, size, seconds, rid)
    elif access_log.isEnabledFor(logging.INFO):
        message, fields = _access_fields(scope, status, size, seconds, rid)
        access_log.info(message, extra={"fields": fields})


def _logged_path(scope: Scope) -> bytes:
    """The raw path, percent-encoded as sent (so no control character reaches a log),
    and the query with credential-like values masked."""
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    if b"?" in path:
        path = path.split(b"?", 1)[0]
    query = scope.get("query_string")
    if query:
        path += b"?" + _mask_query(query)
    return path


def _access_fields(scope: Scope, status: int, size: int, seconds: float, rid: bytes
                   ) -> tuple[str, dict[str, Any]]:
    client = scope.get("client")
    method = scope["method"]
    path = _logged_path(scope).decode("latin-1")
    request_id = rid.decode("ascii")
    message = (f'{client[0] if client else "-"} "{method} {path}" {status} {size}B '
               f'{seconds * 1000:.1f}ms id={request_id}')
    return message, {"method": method, "path": path, "status": status, "bytes": size,
                     "duration_ms": round(seconds * 1000, 3), "request_id": request_id,
                     "client": client[0] if client else None}


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
    global _writer
    _writer = AccessWriter(fmt) if access else None
    # uvicorn's own access log is off (this layer writes ours); its other loggers
    # propagate to the root handler above.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True

