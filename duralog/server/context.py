"""What every sub-application of the server is given: ``ServerContext``.

A sub-app (health, metrics, and later subscriptions, proxy, yjs, console) is
constructed as ``XApp(ctx)`` and reaches streams only through ``ctx.store``
(create / append / read / wait / notifier), so it works on every backend.
Its metrics register on ``ctx.metrics``, its log lines go to ``ctx.log``.
An absolute URL it writes takes its origin from
``forwarded.public_origin(scope, headers, ctx.config.forwarded_allow_ips)``, so
it is right behind a trusted reverse proxy too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from ..auth import AuthConfig
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
    # Set when the server begins to shut down: readiness turns 503, live readers
    # end, and a sub-app with long-lived responses should end them too.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # The loaded auth file (--auth), or None: for sub-apps that check credentials of
    # their own and accept its tokens too (the proxy's service auth, docs/proxy.md).
    auth: AuthConfig | None = None
