"""Talking to upstreams: which client headers go there (PROXY-PROTOCOL.md 5), and
the HTTP clients that carry the requests."""

from __future__ import annotations

import httpx

from .asgi import Request
from .config import ProxyConfig

# 5.2: hop-by-hop headers, and what the proxy itself consumes or replaces.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "trailer", "transfer-encoding", "upgrade"})
# Accept-Encoding too, as the reference proxy does: the proxy asks for what it can
# decode and stores the decoded body, so readers get the bytes Upstream-Content-Type
# describes whatever encoding they could handle themselves.
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "content-length", "accept-encoding"}


def upstream_headers(req: Request) -> dict[str, str]:
    """5.1 / 5.2: what the upstream gets of the client's headers."""
    named = {h.strip().lower() for h in (req.header("connection") or "").split(",")}
    headers = {k: v for k, v in req.headers.items()
               if k not in NOT_FORWARDED and not k.startswith("upstream-")
               and k not in named}
    auth = req.header("upstream-authorization")
    if auth:
        headers["authorization"] = auth
    return headers


class UpstreamClients:
    """Upstream HTTP clients, each carrying at most ``PER_CLIENT`` requests at once.

    One httpx client for every upstream call would do, but its connection pool
    scans all its connections on every request and response (O(n) each): with a
    thousand bodies being piped, that cost ran the server (docs/benchmarks.md).
    Small shards keep keep-alive and make each scan short.
    """

    PER_CLIENT = 32

    def __init__(self, config: ProxyConfig, transport: httpx.AsyncBaseTransport | None) -> None:
        self._config = config
        self._transport = transport
        self._load: dict[httpx.AsyncClient, int] = {}
        # One TLS context for all shards: building one loads the CA store (slow).
        self._tls = httpx.create_ssl_context()

    def take(self) -> httpx.AsyncClient:
        for client, load in self._load.items():
            if load < self.PER_CLIENT:
                self._load[client] = load + 1
                return client
        client = httpx.AsyncClient(
            follow_redirects=False,  # 6.1: never follow a redirect
            timeout=httpx.Timeout(None, connect=self._config.header_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.PER_CLIENT),
            transport=self._transport, trust_env=False, verify=self._tls)
        self._load[client] = 1
        return client

    def give_back(self, client: httpx.AsyncClient | None) -> None:
        if client is not None and client in self._load:
            self._load[client] = max(0, self._load[client] - 1)

    async def aclose(self) -> None:
        clients, self._load = list(self._load), {}
        for client in clients:
            await client.aclose()
