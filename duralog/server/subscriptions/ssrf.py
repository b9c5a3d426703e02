"""Webhook URL rules (PROTOCOL.md 6.2 and 12.8: SSRF prevention).

- ``https://`` is required; plain ``http://`` only to a literal loopback host
  (``localhost``, ``127.0.0.0/8``, ``[::1]``), the development exception the
  conformance suite uses. ``http://localhost`` is connected to 127.0.0.1 without
  asking DNS, so a hosts file cannot point it elsewhere.
- An https URL must not name a private (RFC 1918, unique-local), loopback,
  link-local, multicast, reserved, unspecified, shared (100.64/10) or cloud
  metadata address, IPv6 included (IPv4-mapped and NAT64 forms are unwrapped).
- A name is resolved at delivery time, every answer is checked, and the request
  goes to the checked address (Host header and TLS server name keep the
  name), so a DNS answer that changes between check and connect (rebinding)
  cannot reach a private address. Creation also resolves once and refuses a
  name that already points inside.
- ``--webhook-allow`` globs (``hooks.example.com``, ``*.example.com``, or whole
  URLs like ``https://hooks.example.com/*``), when given, are an allowlist: a
  URL must match one. A host the operator allowlisted by name may resolve to a
  private address (an internal receiver), never to a metadata address.

The resolver is a hook (``Resolver``) so tests can give fake answers without
any traffic off the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_CHARS = 2048
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRejected(ValueError):
    """A webhook URL the rules refuse; the message says which rule."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_metadata(ip: IPAddress) -> bool:
    return _unwrap(ip) in _METADATA


def is_public(ip: IPAddress) -> bool:
    """An address a webhook may reach without the operator saying so."""
    inner = _unwrap(ip)
    if inner in _METADATA or (isinstance(inner, ipaddress.IPv4Address) and inner in _SHARED):
        return False
    return inner.is_global and not (inner.is_multicast or inner.is_reserved
                                    or inner.is_loopback or inner.is_link_local
                                    or inner.is_private or inner.is_unspecified)


def is_loopback_literal(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook request really goes: the checked address and the URL parts."""

    url: SplitResult
    host: str  # the URL's host (name or literal), for Host and TLS SNI
    port: int
    address: str  # the checked IP the connection goes to


class UrlPolicy:
    """Validates webhook URLs and picks the address to connect to."""

    def __init__(self, allow: list[str] | None = None, resolver: Resolver | None = None
                 ) -> None:
        self.allow = [a.strip() for a in (allow or []) if a.strip()]
        self.resolver: Resolver = resolver or system_resolver

    def _allowlisted(self, url: str, host: str) -> bool:
        for pattern in self.allow:
            subject = url if "://" in pattern else host
            if fnmatchcase(subject, pattern.lower() if "://" not in pattern else pattern):
                return True
        return False

    def parse(self, raw: str) -> tuple[SplitResult, str, int, bool]:
        """Syntax and literal-address rules: (parts, host, port, allowlisted)."""
        if not isinstance(raw, str) or not raw or len(raw) > MAX_URL_CHARS:
            raise UrlRejected("webhook.url must be a URL of at most 2048 characters")
        try:
            url = urlsplit(raw)
            host = (url.hostname or "").lower()
            port = url.port
        except ValueError:
            raise UrlRejected("webhook.url must be a valid URL") from None
        if url.scheme not in ("http", "https") or not host:
            raise UrlRejected("webhook.url must be an http(s) URL with a host")
        if url.username is not None or url.password is not None:
            raise UrlRejected("webhook.url must not carry credentials")
        if port is None:
            port = 443 if url.scheme == "https" else 80
        allowed = self._allowlisted(raw, host)
        if self.allow and not allowed:
            raise UrlRejected("webhook.url is not on this server's webhook allowlist")
        if url.scheme == "http":
            if not is_loopback_literal(host):
                raise UrlRejected("http webhook URLs are only allowed for localhost, "
                                  "127.0.0.x or [::1]; use https")
            return url, host, port, allowed
        if host == "localhost":
            raise UrlRejected("localhost webhook URLs must use http (development only)")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return url, host, port, allowed
        if is_metadata(ip) or not (is_public(ip) or allowed):
            raise UrlRejected("webhook.url must not target private, loopback, link-local "
                              "or metadata addresses")
        return url, host, port, allowed

    def check_address(self, address: str, allowed: bool) -> IPAddress:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if is_metadata(ip) or not (is_public(ip) or allowed):
            raise UrlRejected(f"webhook host resolves to a refused address ({ip})")
        return ip

    async def target(self, raw: str) -> Target:
        """The address to connect to for ``raw``, after every rule (at delivery)."""
        url, host, port, allowed = self.parse(raw)
        if url.scheme == "http":
            address = "127.0.0.1" if host == "localhost" else host
            return Target(url, host, port, address)
        try:
            ipaddress.ip_address(host)
            return Target(url, host, port, host)
        except ValueError:
            pass
        try:
            answers = await asyncio.wait_for(self.resolver(host, port), 10)
        except (OSError, TimeoutError) as err:
            raise UrlRejected(f"webhook host {host} does not resolve: {err}") from None
        if not answers:
            raise UrlRejected(f"webhook host {host} does not resolve")
        # Every answer must pass: a name that mixes a public and a private address
        # is refused, rather than trusting whichever one a later lookup returns.
        checked = [self.check_address(a, allowed) for a in answers]
        return Target(url, host, port, str(checked[0]))

    async def validate(self, raw: str) -> None:
        """At creation: the syntax rules, and a name must not already resolve inside."""
        url, host, port, allowed = self.parse(raw)
        if url.scheme == "https":
            try:
                ipaddress.ip_address(host)
                return
            except ValueError:
                pass
            try:
                answers = await asyncio.wait_for(self.resolver(host, port), 5)
            except (OSError, TimeoutError):
                return  # not resolvable yet: delivery checks again and retries
            for address in answers:
                self.check_address(address, allowed)
