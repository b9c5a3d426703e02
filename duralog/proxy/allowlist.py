"""Upstream URL allowlist and SSRF checks (PROXY-PROTOCOL.md 6, 12.1).

Syntax (6 leaves it to us; we follow the reference proxy's globs): a pattern is
a whole URL where ``*`` matches any run of characters except ``/`` (so a host
label, ``:*`` any port, one path segment), ``**`` matches anything including
``/`` (``/**`` any path below), ``?`` one character except ``/``, and a
backslash escapes the next character. Matching ignores case and trailing
slashes of the URL. An empty list refuses every URL.

12.1: a URL that matches is still refused when its host resolves to a private,
loopback, link-local or otherwise non-public address, unless the pattern that
matched names that host literally (``http://localhost:*/**``,
``http://10.0.0.7/**``) or the operator allowed private addresses outright.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

_HOST = re.compile(r"[a-z0-9.-]+")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*" and pattern[i + 1:i + 2] == "*":
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    regex: re.Pattern[str]
    literal_host: str | None  # the host, when the pattern names it without wildcards


def _literal_host(pattern: str) -> str | None:
    try:
        host = urlsplit(pattern.replace("*", "0")).hostname
    except ValueError:
        return None
    rest = pattern.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host is None or "*" in rest or "?" in rest:
        return None
    return host.lower()


class Allowlist:
    def __init__(self, patterns: list[str], allow_private: bool = False) -> None:
        self.rules = [Rule(p, glob_to_regex(p), _literal_host(p)) for p in patterns]
        self.allow_private = allow_private
        self._literal_hosts = {r.literal_host for r in self.rules if r.literal_host}

    def address_allowed(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                        ) -> bool:
        """12.1: may a connection for ``host`` go to ``address``? Public addresses yes;
        others only for hosts some pattern names literally, or when allowed outright."""
        if address.is_global and not address.is_multicast:
            return True
        return self.allow_private or host.lower() in self._literal_hosts

    def match(self, url: str) -> Rule | None:
        """The first rule the URL matches, or None. An empty list matches nothing (6)."""
        normalized = url.rstrip("/")
        for rule in self.rules:
            if rule.regex.match(normalized) or rule.regex.match(url):
                return rule
        return None

    async def check_address(self, url: str, rule: Rule) -> str | None:
        """12.1: None when the host's addresses may be reached, else the reason."""
        host = urlsplit(url).hostname or ""
        if self.allow_private or (rule.literal_host is not None
                                  and rule.literal_host == host.lower()):
            return None
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, None, type=socket.SOCK_STREAM)
            except OSError:
                return f"upstream host {host!r} does not resolve"
            addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        for address in addresses:
            if not address.is_global or address.is_multicast:
                return f"upstream host {host!r} resolves to a non-public address"
        return None


def parse_upstream_url(url: str) -> str | None:
    """4.1: an absolute http(s) URL with a host, in the canonical form that is both
    matched against the allowlist and fetched, or None.

    Rebuilding it from its parsed parts (no user info, no fragment) means a
    pattern cannot be satisfied by text the request never goes to, such as
    ``https://evil.test#.example.com/api/v1/``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    if any(ch in url for ch in "\r\n\t ") or parts.username is not None or "@" in parts.netloc:
        return None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        host = f"[{host}]"
    elif not _HOST.fullmatch(host):
        return None  # only letters, digits, dots and dashes: no text a parser could misread
    canonical = f"{parts.scheme.lower()}://{host}"
    if port is not None:
        canonical += f":{port}"
    canonical += parts.path or "/"
    if parts.query:
        canonical += "?" + parts.query
    return canonical
