"""Prometheus metrics of the store: integrity errors, reclaiming, producer expiry.

Read from the store's counters at scrape time (a custom collector), so the
store itself does not depend on prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..store import Store


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        counters: dict[str, int] = getattr(self.store, "counters", {})
        errors = CounterMetricFamily(
            "duralog_store_integrity_errors", "Stored data that could not be served: records that "
            "failed their checksum, and pages that could not be read (500 answers).",
            labels=["kind"])
        errors.add_metric(["checksum"], counters.get("checksum_errors", 0))
        errors.add_metric(["unreadable"], counters.get("read_errors", 0))
        yield errors
        yield CounterMetricFamily(
            "duralog_store_producers_dropped", "Producer states dropped after --producer-ttl "
            "of disuse (PROTOCOL.md 5.2.1).", value=counters.get("producers_dropped", 0))
        yield CounterMetricFamily(
            "duralog_store_streams_reclaimed", "Deleted or expired streams whose records "
            "were removed from disk.", value=counters.get("streams_reclaimed", 0))
