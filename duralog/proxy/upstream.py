"""Talking to upstreams: which client headers go there (PROXY-PROTOCOL.md 5), and
the HTTP clients that carry the requests."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpcore
import httpx

from .allowlist import Allowlist
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

    def __init__(self, config: ProxyConfig, transport: httpx.AsyncBaseTransport | None,
                 allowlist: Allowlist | None = None) -> None:
        self._config = config
        self._transport = transport
        self._allowlist = allowlist
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
            transport=self._transport or self._checked_transport(), trust_env=False,
            verify=self._tls)
        self._load[client] = 1
        return client

    def _checked_transport(self) -> httpx.AsyncHTTPTransport | None:
        """A transport whose connections go only where the allowlist lets them (12.1).

        The address is checked when the socket is opened, on the address it is
        opened to: a DNS answer that changes between the create-time check and the
        connection (DNS rebinding) cannot reach a private address. httpx takes no
        network backend, so its pool is replaced by one with ours (private API).
        """
        if self._allowlist is None:
            return None
        transport = httpx.AsyncHTTPTransport(verify=self._tls, limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=self.PER_CLIENT))
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._tls, max_connections=None,
            max_keepalive_connections=self.PER_CLIENT,
            network_backend=CheckedBackend(self._allowlist))
        return transport

    def give_back(self, client: httpx.AsyncClient | None) -> None:
        if client is not None and client in self._load:
            self._load[client] = max(0, self._load[client] - 1)

    async def aclose(self) -> None:
        clients, self._load = list(self._load), {}
        for client in clients:
            await client.aclose()


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens upstream sockets only to addresses the allowlist accepts for the host."""

    def __init__(self, allowlist: Allowlist,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allowlist = allowlist
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host!r}") from exc
            addresses = [ipaddress.ip_address(i[4][0].split("%", 1)[0]) for i in infos]
        allowed = [a for a in addresses if self.allowlist.address_allowed(host, a)]
        if not allowed:
            raise httpcore.ConnectError(f"{host!r} resolves to a non-public address")
        # TLS still names the host (SNI and certificate): httpcore passes the
        # origin's host to start_tls, not the address connected to.
        return await self.inner.connect_tcp(str(allowed[0]), port, timeout=timeout,
                                            local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not upstreams")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
