"""What every sub-application of the server is given: ``ServerContext``.

A sub-app (health, metrics, and later subscriptions, proxy, yjs, console) is
constructed as ``XApp(ctx)`` and reaches streams only through ``ctx.store``
(create / append / read / wait / notifier), so it works on every backend.
Its metrics register on ``ctx.metrics``, its log lines go to ``ctx.log``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ..store import Store
from .config import Config


@dataclass(slots=True)
class ServerContext:
    config: Config
    store: Store
    # One registry per app (not prometheus-client's global one), so two apps in
    # one process, as in tests or a host mounting two, never clash.
    metrics: CollectorRegistry
    log: logging.Logger
