"""The proxy's entry in the server's mount table (server/app.py MOUNTS)."""

from __future__ import annotations

from typing import Any

from .config import ProxyConfig
from .errors import ProxyError


class DisabledProxy:
    """What /v1/proxy answers when the proxy is off: 404 with the envelope (11.5)."""

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        err = ProxyError(404, "NOT_FOUND", "the proxy is not enabled (duralog serve --proxy)")
        body = err.body()
        await send({"type": "http.response.start", "status": 404, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"access-control-allow-origin", b"*")]})
        await send({"type": "http.response.body", "body": body})


def proxy_app(ctx: Any) -> Any:
    """ProxyApp(ctx) when DURALOG_PROXY (or ``duralog serve --proxy``) enables it.

    With an auth file (``--auth``, ``ctx.auth``), its scoped tokens are service
    auth as well as the shared secret (access.py has the scope per operation)."""
    config = ProxyConfig.from_env()
    if not config.enabled:
        return DisabledProxy()
    from .access import TokenAuth
    from .server import ProxyApp

    auth = getattr(ctx, "auth", None)
    if config.secret is None and auth is None:
        # The log format already names the logger ("duralog: ..."): no prefix here.
        ctx.log.warning("the proxy has no service secret (--proxy-secret) and no --auth: "
                        "anyone who can reach it may create proxy streams to allowed upstreams")
    return ProxyApp(ctx, config, service_auth=TokenAuth(auth) if auth is not None else None)
