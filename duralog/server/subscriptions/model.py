"""Subscriptions as data: the request schema, the records, and their errors.

PROTOCOL.md 6.1-6.3: a subscription has a configuration (hashed for
idempotent re-creation), one link per stream (glob or explicit, with its
acked offset), and delivery state: generation, current wake, lease holder,
lease expiry and retry schedule. Everything here is plain data that the
journal can write and replay; timers and tasks live in the manager.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...protocol.offsets import ZERO, is_offset_token
from .globs import MAX_PATTERN_CHARS, MAX_PATTERN_SEGMENTS, split_path

DEFAULT_LEASE_TTL_MS = 30_000  # 6.2
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
MAX_ID_CHARS = 256
MAX_STREAMS_PER_REQUEST = 1_000
MAX_PATH_CHARS = 1024
MAX_DESCRIPTION_CHARS = 4096
MAX_WORKER_CHARS = 256
MAX_ACKS = 10_000
RESERVED = "__ds"

# Status of each error code, as the reference server answers them.
ERROR_STATUS = {
    "INVALID_REQUEST": 400, "SUBSCRIPTION_NOT_FOUND": 404,
    "SUBSCRIPTION_ALREADY_EXISTS": 409, "WEBHOOK_URL_REJECTED": 400,
    "TOKEN_INVALID": 401, "TOKEN_EXPIRED": 401, "FORBIDDEN": 403, "FENCED": 409,
    "ALREADY_CLAIMED": 409, "NO_PENDING_WORK": 409, "INVALID_OFFSET": 409,
    "METHOD_NOT_ALLOWED": 405, "PAYLOAD_TOO_LARGE": 413, "UNAVAILABLE": 503,
}


class SubscriptionError(Exception):
    """An answer other than success: ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra
        self.status = ERROR_STATUS[code]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def invalid(message: str) -> SubscriptionError:
    return SubscriptionError("INVALID_REQUEST", message)


def normalize_path(path: str) -> str:
    return path.strip("/")


def check_stream_path(raw: Any, what: str = "streams") -> str:
    if not isinstance(raw, str):
        raise invalid(f"{what} must contain only strings")
    path = normalize_path(raw)
    if not path or len(path) > MAX_PATH_CHARS:
        raise invalid(f"{what} entries must be non-empty paths of at most "
                      f"{MAX_PATH_CHARS} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise invalid(f"{what} entries must not contain control characters")
    if path.split("/", 1)[0] == RESERVED:
        raise invalid(f"{what} entries must not name the reserved __ds prefix")
    return path


def check_id(sub_id: str) -> str:
    if not sub_id or len(sub_id) > MAX_ID_CHARS or any(
            ord(c) < 0x20 or c in "/\x7f" for c in sub_id):
        raise invalid(f"subscription id must be 1-{MAX_ID_CHARS} printable characters "
                      "without '/'")
    return sub_id


@dataclass(slots=True)
class SubscriptionConfig:
    """What a PUT asks for (6.2), validated and normalized."""

    type: str
    pattern: str | None
    streams: list[str]
    webhook_url: str | None
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None

    def hash(self) -> str:
        """6.2: the hash of the normalized configuration, for idempotent re-confirmation."""
        canonical = {"type": self.type, "pattern": self.pattern,
                     "streams": sorted(set(self.streams)),
                     "webhook": {"url": self.webhook_url} if self.webhook_url else None,
                     "wake_stream": self.wake_stream, "lease_ttl_ms": self.lease_ttl_ms,
                     "description": self.description}
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_config(value: Any) -> SubscriptionConfig:
    """6.2's request body, or INVALID_REQUEST naming the first problem."""
    if not isinstance(value, dict):
        raise invalid("request body must be a JSON object")
    kind = value.get("type")
    if kind not in ("webhook", "pull-wake"):
        raise invalid('type must be "webhook" or "pull-wake"')
    pattern = value.get("pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise invalid("pattern must be a string")
    pattern = normalize_path(pattern) if pattern else None
    if pattern is not None:
        if len(pattern) > MAX_PATTERN_CHARS or len(split_path(pattern)) > MAX_PATTERN_SEGMENTS:
            raise invalid(f"pattern must be at most {MAX_PATTERN_CHARS} characters and "
                          f"{MAX_PATTERN_SEGMENTS} segments")
        if pattern.split("/", 1)[0] == RESERVED:
            raise invalid("pattern must not cover the reserved __ds prefix")
    raw_streams = value.get("streams")
    if raw_streams is None:
        raw_streams = []
    if not isinstance(raw_streams, list):
        raise invalid("streams must be an array of stream paths")
    if len(raw_streams) > MAX_STREAMS_PER_REQUEST:
        raise invalid(f"streams must list at most {MAX_STREAMS_PER_REQUEST} paths")
    streams = list(dict.fromkeys(check_stream_path(s) for s in raw_streams))
    if pattern is None and not streams:
        raise invalid("at least one of pattern or streams is required")
    lease = value.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
    if (not isinstance(lease, int) or isinstance(lease, bool)
            or not MIN_LEASE_TTL_MS <= lease <= MAX_LEASE_TTL_MS):
        raise invalid("lease_ttl_ms must be an integer from 1000 to 600000")
    webhook_url = None
    if kind == "webhook":
        hook = value.get("webhook")
        if not isinstance(hook, dict) or not isinstance(hook.get("url"), str) or not hook["url"]:
            raise invalid("webhook subscriptions require webhook.url")
        webhook_url = hook["url"]
    wake = value.get("wake_stream")
    if wake is not None and not isinstance(wake, str):
        raise invalid("wake_stream must be a string")
    wake_stream = check_stream_path(wake, "wake_stream") if wake else None
    if kind == "pull-wake" and wake_stream is None:
        raise invalid("pull-wake subscriptions require wake_stream")
    description = value.get("description")
    if description is not None and (not isinstance(description, str)
                                    or len(description) > MAX_DESCRIPTION_CHARS):
        raise invalid(f"description must be a string of at most {MAX_DESCRIPTION_CHARS} "
                      "characters")
    return SubscriptionConfig(kind, pattern, streams, webhook_url, wake_stream, lease,
                              description)


@dataclass(slots=True)
class Link:
    """6.1: one stream of a subscription."""

    path: str
    explicit: bool = False
    glob: bool = False
    acked: str = ZERO

    @property
    def link_type(self) -> str:
        return "explicit" if self.explicit else "glob"  # 6.1: explicit wins


@dataclass(slots=True)
class Subscription:
    id: str
    config: SubscriptionConfig
    config_hash: str
    created_at: str
    base_url: str  # scheme://host + the __ds mount, as the creating request saw it
    links: dict[str, Link] = field(default_factory=dict)
    generation: int = 0
    wake_id: str | None = None
    snapshot: dict[str, str] = field(default_factory=dict)  # path -> tail at the wake
    holder: str | None = None
    lease_until: float | None = None  # wall-clock seconds
    status: str = "active"
    retry_count: int = 0
    next_attempt_at: float | None = None  # wall-clock seconds

    # -- journal records ---------------------------------------------------------
    def head_record(self) -> dict[str, Any]:
        """Everything but the links (which are journaled one by one)."""
        c = self.config
        return {"id": self.id, "type": c.type, "pattern": c.pattern, "streams": c.streams,
                "webhook_url": c.webhook_url, "wake_stream": c.wake_stream,
                "lease_ttl_ms": c.lease_ttl_ms, "description": c.description,
                "hash": self.config_hash, "created_at": self.created_at,
                "base_url": self.base_url, "generation": self.generation,
                "wake_id": self.wake_id, "snapshot": self.snapshot, "holder": self.holder,
                "lease_until": self.lease_until, "status": self.status,
                "retry_count": self.retry_count, "next_attempt_at": self.next_attempt_at}

    def apply_head(self, r: dict[str, Any]) -> None:
        self.generation = r["generation"]
        self.wake_id = r["wake_id"]
        self.snapshot = dict(r["snapshot"])
        self.holder = r["holder"]
        self.lease_until = r["lease_until"]
        self.status = r["status"]
        self.retry_count = r["retry_count"]
        self.next_attempt_at = r["next_attempt_at"]

    @classmethod
    def from_head(cls, r: dict[str, Any]) -> Subscription:
        config = SubscriptionConfig(r["type"], r["pattern"], list(r["streams"]),
                                    r["webhook_url"], r["wake_stream"], r["lease_ttl_ms"],
                                    r["description"])
        sub = cls(r["id"], config, r["hash"], r["created_at"], r["base_url"])
        sub.apply_head(r)
        return sub

    def links_record(self, links: list[Link] | None = None) -> list[list[Any]]:
        return [[ln.path, ln.explicit, ln.glob, ln.acked]
                for ln in (self.links.values() if links is None else links)]


def parse_acks(value: Any) -> list[tuple[str, str]]:
    acks = value.get("acks") if isinstance(value, dict) else None
    if acks is None:
        return []
    if not isinstance(acks, list) or len(acks) > MAX_ACKS:
        raise invalid(f"acks must be an array of at most {MAX_ACKS} entries")
    out = []
    for ack in acks:
        if not isinstance(ack, dict):
            raise invalid("each ack must be an object with stream and offset")
        stream = ack.get("stream", ack.get("path"))
        offset = ack.get("offset")
        if not isinstance(stream, str) or not isinstance(offset, str):
            raise invalid("each ack must be an object with stream and offset")
        if offset != "-1" and not is_offset_token(offset):
            raise SubscriptionError("INVALID_OFFSET", "ack offset is not an offset this "
                                    "server issued")
        out.append((normalize_path(stream), offset))
    return out
