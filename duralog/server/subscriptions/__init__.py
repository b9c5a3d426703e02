"""Subscriptions (PROTOCOL.md 6 and 7): webhooks and pull-wake, persisted in the store.

The sub-application mounted at ``{streams}/__ds``:

- ``routes``: the control API's HTTP surface and its error codes;
- ``manager``: links, wakes, generations, leases, fencing, reconciliation;
- ``delivery``: signed webhook POSTs, retries with backoff, per-endpoint limits;
- ``journal``: subscription state as an internal stream, replayed at start-up;
- ``signing``: the Ed25519 JWKS keys and the HMAC wake tokens;
- ``ssrf``: webhook URL rules (12.8) and the resolve-then-connect target;
- ``globs``: pattern matching and the prefix index that keeps appends cheap;
- ``model``: the request schema and the records.
"""

from __future__ import annotations

from ..context import ServerContext
from ..http import Receive, Responses, Scope, Send
from .manager import Manager
from .routes import Authorizer, Routes
from .ssrf import Resolver, UrlPolicy

__all__ = ["Authorizer", "Manager", "SubscriptionsApp"]


class SubscriptionsApp:
    """``XApp(ctx)`` per the composition contract (server/app.py)."""

    def __init__(self, ctx: ServerContext, resolver: Resolver | None = None) -> None:
        c = ctx.config
        allow = [a for a in getattr(c, "webhook_allow", "").split(",") if a.strip()]
        self.policy = UrlPolicy(allow, resolver)
        self.manager = Manager(
            ctx, self.policy, retry_base=getattr(c, "webhook_retry_base", 1.0),
            retry_max=getattr(c, "webhook_retry_max", 60.0),
            attempt_timeout=getattr(c, "webhook_timeout", 30.0),
            endpoint_concurrency=getattr(c, "webhook_concurrency", 4))
        self.manager.journal.compact_every = getattr(c, "subscription_compact_every", 20_000)
        self.routes = Routes(self.manager, Responses(c.cors_origin))
        self.ctx = ctx

    async def startup(self) -> None:
        # Subscription state that cannot be read (a damaged journal: duralog check says
        # what) takes subscriptions down, not the server: streams go on being served
        # and the control API answers 503 with the reason.
        self.failure: str | None = None
        try:
            await self.manager.start()
        except Exception as exc:
            self.failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.ctx.log.error("subscriptions are unavailable: %s", self.failure)

    async def shutdown(self) -> None:
        await self.manager.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.manager.started:
            from .model import SubscriptionError

            failure = getattr(self, "failure", None)
            err = SubscriptionError("UNAVAILABLE", f"subscriptions are unavailable: {failure}"
                                    if failure else "subscriptions are starting or stopped")
            import orjson
            await self.routes.http.respond(send, err.status, [(b"content-type",
                                                               b"application/json")],
                                           orjson.dumps(err.body()))
            return
        await self.routes(scope, receive, send)
