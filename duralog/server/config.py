"""Server settings, with their environment variables and defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

DEFAULT_PORT = 4437  # PROTOCOL.md 13.1


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    backend: str = "sqlite"
    data_dir: str = "./duralog-data"
    #: --backend postgres: the database (postgresql://user@host:port/db) and the
    #: most connections each node's pool opens (the listener takes one more).
    database_url: str = ""
    pg_pool_size: int = 10
    #: How the other nodes of a cluster reach this one (server/cluster.py); empty:
    #: http://<host>:<port>.
    advertise_url: str = ""
    long_poll_timeout: float = 30.0  # seconds a long-poll (or SSE keep-alive) waits
    chunk_size: int = 1 << 20  # most bytes one catch-up read answers
    max_body_size: int = 64 << 20  # larger appends get 413
    sse_max_duration: float = 60.0  # PROTOCOL.md 5.8: SSE connections close about every 60 s
    stream_prefix: str = "/v1/stream/"
    cors_origin: str = "*"
    compression: bool = True
    sweep_interval: float = 5.0  # seconds between background sweeps of expired streams
    registry: bool = True
    #: PROTOCOL.md 5.2.1: producer state unused this long (seconds) is dropped, so a
    #: retry older than this is no longer recognised as a duplicate.
    producer_ttl: float = 7 * 86400.0
    #: Retention for streams created without Stream-Retention-* headers; 0: keep all.
    retention_bytes: int = 0
    retention_seconds: int = 0
    access_log: bool = True  # one line per request on the duralog.access logger
    metrics: bool = True  # request and store metrics (served at /metrics)
    log_format: str = "text"  # text or json (one JSON object per line)
    # Peers (IPs or CIDRs, comma separated, or *) whose X-Forwarded-Proto/-Host and
    # Forwarded headers are believed when the server writes absolute URLs.
    forwarded_allow_ips: str = ""
    console: bool = True  # the web console at / (duralog/console)
    yjs: bool = True  # serve YJS-PROTOCOL.md at /v1/yjs
    yjs_compaction_bytes: int = 1 << 20  # YJS-PROTOCOL.md 8.1: updates since a snapshot
    yjs_awareness_ttl: int = 3600  # YJS-PROTOCOL.md 11: seconds presence streams outlive use
    # Subscriptions (PROTOCOL.md 6-7): webhook allowlist globs (comma-separated, 12.8),
    # per-attempt timeout, retry backoff bounds and concurrent attempts per endpoint.
    webhook_allow: str = ""
    webhook_timeout: float = 30.0
    webhook_retry_base: float = 1.0
    webhook_retry_max: float = 60.0
    webhook_concurrency: int = 4
    subscription_compact_every: int = 20_000  # journal events between snapshots
    # Security (docs/security.md). An empty auth means no access control.
    auth: str = ""  # path of the auth file (TOML): tokens, scopes, signing secret, rate limits
    cors_origins: str = "*"  # comma-separated browser origins; * = any (with auth: reads)
    allowed_hosts: str = "*"  # comma-separated Host values answered; others get 400
    # HTTP limits, enforced by duralog.server.limits under `duralog serve`.
    max_header_bytes: int = 16 << 10  # request header block larger: 431
    max_header_fields: int = 100  # more header fields: 431
    max_request_line: int = 8 << 10  # longer request line: 414
    header_timeout: float = 10.0  # seconds for a request's header block to arrive
    body_timeout: float = 30.0  # seconds a request body may stall between reads
    send_timeout: float = 60.0  # seconds a client may leave a response unread
    max_connections: int = 0  # open connections; past it a fast 503 (0: from the fd limit)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Config:
        """Defaults, then ``DURALOG_<NAME>`` variables, then explicit overrides."""
        env = os.environ if environ is None else environ
        config = cls()
        for f in fields(cls):
            raw = env.get(f"DURALOG_{f.name.upper()}")
            if raw is not None and raw != "":
                setattr(config, f.name, _convert(f.name, raw, getattr(config, f.name)))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if self.backend not in ("memory", "sqlite", "postgres"):
            raise ValueError(f"backend must be memory, sqlite or postgres, not {self.backend!r}")
        if self.backend == "postgres" and not self.database_url:
            raise ValueError("--backend postgres needs --database-url (or DURALOG_DATABASE_URL)")
        if self.pg_pool_size < 1:
            raise ValueError("pg-pool-size must be at least 1")
        for name in ("long_poll_timeout", "sse_max_duration", "sweep_interval", "producer_ttl",
                     "webhook_timeout", "webhook_retry_base", "webhook_retry_max",
                     "header_timeout", "body_timeout", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        for name in ("retention_bytes", "retention_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be 0 (keep all) or positive")
        for name in ("chunk_size", "max_body_size", "yjs_compaction_bytes",
                     "yjs_awareness_ttl", "webhook_concurrency", "subscription_compact_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1 byte")
        for name in ("max_header_bytes", "max_header_fields", "max_request_line"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if self.max_connections < 0:
            raise ValueError("max-connections must not be negative")
        if not (self.stream_prefix.startswith("/") and self.stream_prefix.endswith("/")):
            raise ValueError("stream prefix must start and end with '/'")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {self.log_format!r}")
        from .forwarded import parse_allowed

        parse_allowed(self.forwarded_allow_ips)  # a bad entry fails at start, not per request


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if name == "port":
            return int(raw)  # a port is a number, not a size: "4k" is a mistake
        if isinstance(default, int):
            return parse_size(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"DURALOG_{name.upper()}={raw!r} is not a valid value") from None
    return raw


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``65536``, ``64k``, ``16MiB`` -> bytes."""
    s = text.strip().lower()
    digits = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(digits):].strip()
    if not digits or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(digits) * _UNITS[unit]
