"""Prometheus metrics of subscriptions, registered on the server's registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from .manager import Manager


class SubscriptionMetrics:
    def __init__(self, registry: CollectorRegistry, manager: Manager) -> None:
        self.wakes = Counter("duralog_subscription_wakes_total",
                             "Wakes issued (new generations)", registry=registry)
        self.deliveries = Counter("duralog_subscription_deliveries_total",
                                  "Webhook requests answered 2xx", registry=registry)
        self.failures = Counter("duralog_subscription_delivery_failures_total",
                                "Webhook attempts that failed (error, timeout, non-2xx, "
                                "refused address)", registry=registry)
        self.lease_expiries = Counter("duralog_subscription_lease_expiries_total",
                                      "Leases that ran out before done or release",
                                      registry=registry)
        backlog = Gauge("duralog_subscription_retry_backlog",
                        "Webhook subscriptions waiting for a retry", registry=registry)
        backlog.set_function(lambda: sum(1 for s in manager.subs.values()
                                         if s.status == "failed"))
        count = Gauge("duralog_subscriptions", "Subscriptions", registry=registry)
        count.set_function(lambda: len(manager.subs))
