"""The proxy's Prometheus metrics (duralog_proxy_*), on the server's registry."""

from __future__ import annotations

from typing import Any


class ProxyMetrics:
    """duralog_proxy_* on the server's registry (none when it has no registry)."""

    def __init__(self, registry: Any) -> None:
        self.enabled = registry is not None
        if not self.enabled:
            return
        from prometheus_client import Counter

        self._created = Counter("duralog_proxy_streams_created",
                                "Proxy streams created", registry=registry)
        self._ended = Counter("duralog_proxy_streams_ended", "Proxy streams ended, by outcome",
                              ["outcome"], registry=registry)
        self._bytes = Counter("duralog_proxy_upstream_bytes",
                              "Upstream body bytes written to proxy streams", registry=registry)

    def created(self) -> None:
        if self.enabled:
            self._created.inc()

    def ended(self, outcome: str) -> None:
        if self.enabled:
            self._ended.labels(outcome).inc()

    def piped(self, n: int) -> None:
        if self.enabled:
            self._bytes.inc(n)
