"""The client-facing origin behind a reverse proxy.

A proxy that terminates TLS tells the server the scheme and host the client
used (``X-Forwarded-Proto``/``X-Forwarded-Host``, or RFC 7239 ``Forwarded``).
Those headers are believed only from peers listed in ``forwarded_allow_ips``;
from anyone else they are ignored, so a client cannot make the server write
URLs that point elsewhere.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from .http import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def parse_allowed(spec: str) -> tuple[bool, tuple[Network, ...]]:
    """``"10.0.0.1, 192.168.0.0/16"`` -> (trust everyone?, networks)."""
    everyone = False
    networks: list[Network] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            everyone = True
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"forwarded-allow-ips: {item!r} is not an IP address or "
                             f"network") from None
    return everyone, tuple(networks)


def _trusted(scope: Scope, spec: str) -> bool:
    everyone, networks = parse_allowed(spec)
    if everyone:
        return True
    if not networks:
        return False
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


def _forwarded_pairs(value: str) -> dict[str, str]:
    """RFC 7239 4: the first element (the proxy nearest the client) of Forwarded."""
    first = value.split(",", 1)[0]
    pairs: dict[str, str] = {}
    for part in first.split(";"):
        key, sep, val = part.strip().partition("=")
        if sep:
            pairs[key.strip().lower()] = val.strip().strip('"')
    return pairs


def _clean_host(value: str) -> str | None:
    host = value.split(",", 1)[0].strip()
    # A host[:port] or [v6]:port, nothing that could break out of a URL.
    if not host or any(c in host for c in "/\\?#@ \t\"'<>") or len(host) > 255:
        return None
    return host


def public_origin(scope: Scope, headers: dict[str, str], spec: str) -> str:
    """``scheme://host`` as the client sees this server (headers: lower-case names)."""
    scheme = scope.get("scheme", "http")
    host = headers.get("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
    if spec and _trusted(scope, spec):
        fwd = headers.get("forwarded")
        if fwd:
            pairs = _forwarded_pairs(fwd)
            proto, fhost = pairs.get("proto"), pairs.get("host")
        else:
            proto = headers.get("x-forwarded-proto")
            fhost = headers.get("x-forwarded-host")
        if proto:
            proto = proto.split(",", 1)[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        if fhost:
            cleaned = _clean_host(fhost)
            if cleaned:
                host = cleaned
    return f"{scheme}://{host}"
