"""Proxy settings (PROXY-PROTOCOL.md 6, 7.4, 8.1, 8.2), with their environment variables."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field


@dataclass(slots=True)
class ProxyConfig:
    """What the proxy needs beyond the server's Config.

    ``allow`` holds upstream URL globs (allowlist.py); an empty list refuses every
    upstream (6). ``secret`` is the service secret (9.1) and, unless
    ``signing_key`` is set, also keys the pre-signed URLs (7.2); with neither,
    a random key is made per process, so URLs do not survive a restart.
    """

    enabled: bool = False
    allow: list[str] = field(default_factory=list)
    secret: str | None = None
    signing_key: str | None = None
    url_ttl: int = 24 * 3600  # 7.4: pre-signed URLs last 24 h by default
    header_timeout: float = 60.0  # 8.1: upstream response headers
    body_timeout: float = 600.0  # 8.1: inactivity between body chunks
    batch_bytes: int = 4096  # 8.2: most bytes gathered into one append
    batch_linger: float = 0.0  # 8.2: extra wait for more bytes (seconds, at most 0.05)
    # fsync each body batch before readers see it (sqlite). Off: batches are readable
    # once written (they survive a crash of the server, not a power cut) and the
    # closing append, synced, makes the whole body durable (docs/proxy.md).
    sync_batches: bool = False
    error_body_limit: int = 64 << 10  # 12.3: upstream error bodies are cut here
    max_request_body: int = 16 << 20  # request bodies forwarded upstream
    allow_private: bool = False  # 12.1: private addresses only when a pattern names them

    def key(self) -> bytes:
        if self.signing_key is None:
            self.signing_key = self.secret or secrets.token_urlsafe(32)
        return self.signing_key.encode()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ProxyConfig:
        """Defaults, then DURALOG_PROXY* variables, then explicit (non-None) overrides."""
        env = os.environ if environ is None else environ
        config = cls()
        if env.get("DURALOG_PROXY", "").lower() in ("1", "true", "yes", "on"):
            config.enabled = True
        if env.get("DURALOG_PROXY_ALLOW"):
            config.allow = split_allow(env["DURALOG_PROXY_ALLOW"])
        config.secret = env.get("DURALOG_PROXY_SECRET") or None
        config.signing_key = env.get("DURALOG_PROXY_SIGNING_KEY") or None
        if env.get("DURALOG_PROXY_SYNC_BATCHES", "").lower() in ("1", "true", "yes", "on"):
            config.sync_batches = True
        for name, conv in (("header_timeout", float), ("body_timeout", float),
                           ("url_ttl", int), ("batch_bytes", int), ("batch_linger", float)):
            raw = env.get(f"DURALOG_PROXY_{name.upper()}")
            if raw:
                setattr(config, name, conv(raw))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("proxy timeouts must be positive")
        if self.batch_bytes < 1:
            raise ValueError("proxy batch size must be at least 1 byte")
        if not 0 <= self.batch_linger <= 0.05:
            raise ValueError("proxy batch linger must be 0-0.05 s (PROXY-PROTOCOL.md 8.2)")
        if self.url_ttl < 1:
            raise ValueError("pre-signed URL lifetime must be positive")


def split_allow(text: str) -> list[str]:
    """``--proxy-allow`` / DURALOG_PROXY_ALLOW: globs separated by commas or spaces."""
    return [p for p in text.replace(",", " ").split() if p]
