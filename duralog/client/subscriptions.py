"""Subscription workers (PROTOCOL.md 6-7): manage subscriptions, receive webhooks,
run pull-wake loops. Sync and asyncio flavours, on httpx.

    from duralog.client.subscriptions import Subscriptions, PullWorker

    subs = Subscriptions("http://127.0.0.1:4437")
    subs.create("indexer", type="pull-wake", pattern="events/*", wake_stream="wake/pool")
    PullWorker(subs, "indexer", "worker-1", handle).run()

- ``Subscriptions`` / ``AsyncSubscriptions``: create, get, delete, membership,
  claim, ack (heartbeat or done), release, callback, JWKS, and reading a
  stream from an acked offset.
- ``PullWorker`` / ``AsyncPullWorker`` (in subscription_workers.py): claim,
  read each pending stream from its acked offset, hand it to your function,
  ack (a heartbeat per stream), finish with ``done``; release on error; sleep
  on the wake stream between.
- ``WebhookReceiver`` (subscription_workers.py): an ASGI app for Starlette or FastAPI that verifies
  ``Webhook-Signature`` against the server's JWKS (cached, refetched for an
  unknown key id) within a replay window, and hands your function the wake.
- ``verify_signature``: the check itself, for other frameworks.

Works against any Durable Streams server with subscriptions: duralog and the
Node reference server. See docs/subscriptions.md.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "AlreadyClaimed", "AsyncPullWorker", "AsyncSubscriptions", "Claim", "Fenced", "JwksCache",
    "PullWorker", "SignatureError", "StreamLink", "SubscriptionError", "Subscriptions", "Wake",
    "WebhookReceiver", "verify_signature",
]


class SubscriptionError(Exception):
    """The server refused: ``status``, ``code`` (e.g. FENCED) and the error body."""

    def __init__(self, status: int, code: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {body.get('message', '')}")
        self.status = status
        self.code = code
        self.body = body


class AlreadyClaimed(SubscriptionError):
    """Another worker holds the lease (``body["current_holder"]``)."""


class Fenced(SubscriptionError):
    """The wake is stale: a newer generation exists, or the lease expired."""


class SignatureError(Exception):
    """A webhook whose signature, key or timestamp does not check out."""


def _error(response: httpx.Response) -> SubscriptionError:
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {"message": response.text}
    code = body.get("code", "HTTP_ERROR")
    cls = {"ALREADY_CLAIMED": AlreadyClaimed, "FENCED": Fenced}.get(code, SubscriptionError)
    return cls(response.status_code, code, body)


@dataclass(slots=True)
class StreamLink:
    path: str
    link_type: str
    acked_offset: str
    tail_offset: str | None = None
    has_pending: bool = False

    @classmethod
    def of(cls, raw: dict[str, Any]) -> StreamLink:
        return cls(raw["path"], raw.get("link_type", "glob"), raw["acked_offset"],
                   raw.get("tail_offset"), bool(raw.get("has_pending")))


@dataclass(slots=True)
class Claim:
    """A pull-wake claim (7.2): the lease on one wake."""

    subscription_id: str
    wake_id: str
    generation: int
    token: str
    streams: list[StreamLink]
    lease_ttl_ms: int

    @property
    def pending(self) -> list[StreamLink]:
        return [s for s in self.streams if s.has_pending]


@dataclass(slots=True)
class Wake:
    """A webhook wake (7.1), as the receiver got it."""

    subscription_id: str
    wake_id: str
    generation: int
    streams: list[StreamLink]
    callback_url: str
    callback_token: str
    raw: dict[str, Any]

    @property
    def pending(self) -> list[StreamLink]:
        return [s for s in self.streams if s.has_pending]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Wake:
        return cls(raw["subscription_id"], raw["wake_id"], raw["generation"],
                   [StreamLink.of(s) for s in raw.get("streams", [])], raw["callback_url"],
                   raw["callback_token"], raw)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_signature(raw_body: bytes, header: str | None, jwks: dict[str, Any], *,
                     tolerance: float = 300, now: float | None = None) -> str:
    """Check a ``Webhook-Signature`` (7.1, 12.10); returns the key id or raises."""
    if not header:
        raise SignatureError("no Webhook-Signature header")
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t, kid, sig = fields["t"], fields["kid"], _b64(fields["ed25519"])
        stamp = int(t)
    except (KeyError, ValueError) as err:
        raise SignatureError(f"malformed Webhook-Signature: {err}") from None
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        raise SignatureError("timestamp outside the replay window")
    key = next((k for k in jwks.get("keys", []) if k.get("kid") == kid), None)
    if key is None:
        raise SignatureError(f"unknown key id {kid}")
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise SignatureError("key is not Ed25519")
    try:
        Ed25519PublicKey.from_public_bytes(_b64(key["x"])).verify(sig, f"{t}.".encode()
                                                                  + raw_body)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify") from None
    return kid


class JwksCache:
    """The server's JWK Set, kept ``ttl`` seconds and refetched for an unknown kid
    (at most every ``min_refetch`` seconds, so bad requests cannot hammer the server)."""

    def __init__(self, url: str, ttl: float = 300, min_refetch: float = 10) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refetch = min_refetch
        self._jwks: dict[str, Any] = {"keys": []}
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    def _stale(self, kid: str | None) -> bool:
        age = time.monotonic() - self._at
        known = kid is None or any(k.get("kid") == kid for k in self._jwks["keys"])
        return age > self.ttl or (not known and age > self.min_refetch)

    def get(self, kid: str | None = None) -> dict[str, Any]:
        if self._stale(kid):
            self._jwks = httpx.get(self.url, timeout=10).raise_for_status().json()
            self._at = time.monotonic()
        return self._jwks

    async def aget(self, kid: str | None = None) -> dict[str, Any]:
        async with self._lock:
            if self._stale(kid):
                async with httpx.AsyncClient(timeout=10) as client:
                    self._jwks = (await client.get(self.url)).raise_for_status().json()
                self._at = time.monotonic()
        return self._jwks


def _kid(header: str | None) -> str | None:
    for part in (header or "").split(","):
        if part.startswith("kid="):
            return part[4:]
    return None


class _Paths:
    def __init__(self, server_url: str, stream_prefix: str) -> None:
        self.root = server_url.rstrip("/") + "/" + stream_prefix.strip("/") + "/"

    def sub(self, sub_id: str, suffix: str = "") -> str:
        return f"{self.root}__ds/subscriptions/{quote(sub_id, safe='')}{suffix}"

    def stream(self, path: str) -> str:
        return self.root + quote(path.strip("/"), safe="/")

    @staticmethod
    def body(type: str, pattern: str | None, streams: list[str] | None,
             webhook_url: str | None, wake_stream: str | None, lease_ttl_ms: int | None,
             description: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type}
        for key, value in (("pattern", pattern), ("streams", streams),
                           ("wake_stream", wake_stream), ("lease_ttl_ms", lease_ttl_ms),
                           ("description", description)):
            if value is not None:
                body[key] = value
        if webhook_url is not None:
            body["webhook"] = {"url": webhook_url}
        return body


def _ok(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise _error(response)
    return response


def _fence_body(wake_id: str, generation: int, acks: dict[str, str] | None,
                done: bool | None) -> dict[str, Any]:
    body: dict[str, Any] = {"wake_id": wake_id, "generation": generation}
    if acks:
        body["acks"] = [{"stream": s, "offset": o} for s, o in acks.items()]
    if done is not None:
        body["done"] = done
    return body


def _decode(response: httpx.Response) -> list[Any] | bytes:
    if response.headers.get("content-type", "").startswith("application/json"):
        return orjson.loads(response.content) if response.content else []
    return response.content


def _claim(sub_id: str, raw: dict[str, Any]) -> Claim:
    return Claim(sub_id, raw["wake_id"], raw["generation"], raw["token"],
                 [StreamLink.of(s) for s in raw.get("streams", [])], raw["lease_ttl_ms"])


class Subscriptions:
    """The control API of one server, blocking."""

    def __init__(self, server_url: str, *, stream_prefix: str = "/v1/stream/",
                 headers: dict[str, str] | None = None, client: httpx.Client | None = None
                 ) -> None:
        self.paths = _Paths(server_url, stream_prefix)
        self.client = client or httpx.Client(timeout=60, headers=headers)

    def close(self) -> None:
        self.client.close()

    def create(self, sub_id: str, *, type: str, pattern: str | None = None,
               streams: list[str] | None = None, webhook_url: str | None = None,
               wake_stream: str | None = None, lease_ttl_ms: int | None = None,
               description: str | None = None) -> dict[str, Any]:
        """6.2: create, or re-confirm the same configuration (409 if it differs)."""
        body = _Paths.body(type, pattern, streams, webhook_url, wake_stream, lease_ttl_ms,
                           description)
        return _ok(self.client.put(self.paths.sub(sub_id), json=body)).json()

    def get(self, sub_id: str) -> dict[str, Any]:
        return _ok(self.client.get(self.paths.sub(sub_id))).json()

    def delete(self, sub_id: str) -> None:
        _ok(self.client.delete(self.paths.sub(sub_id)))

    def add_streams(self, sub_id: str, streams: list[str]) -> None:
        _ok(self.client.post(self.paths.sub(sub_id, "/streams"), json={"streams": streams}))

    def remove_stream(self, sub_id: str, path: str) -> None:
        _ok(self.client.delete(self.paths.sub(sub_id, "/streams/" + quote(path, safe=""))))

    def jwks(self) -> dict[str, Any]:
        return _ok(self.client.get(self.paths.root + "__ds/jwks.json")).json()

    def claim(self, sub_id: str, worker: str) -> Claim | None:
        """7.2: the lease on the pending wake; None when there is no pending work."""
        r = self.client.post(self.paths.sub(sub_id, "/claim"), json={"worker": worker})
        if r.status_code == 409 and r.json().get("error", {}).get("code") == "NO_PENDING_WORK":
            return None
        return _claim(sub_id, _ok(r).json())

    def ack(self, claim: Claim, acks: dict[str, str] | None = None, done: bool = False
            ) -> bool:
        """7.2: ack offsets (a heartbeat) or finish (``done``); returns ``next_wake``."""
        r = self.client.post(self.paths.sub(claim.subscription_id, "/ack"),
                             json=_fence_body(claim.wake_id, claim.generation, acks, done),
                             headers={"authorization": f"Bearer {claim.token}"})
        return bool(_ok(r).json().get("next_wake"))

    def release(self, claim: Claim) -> None:
        _ok(self.client.post(self.paths.sub(claim.subscription_id, "/release"),
                             json=_fence_body(claim.wake_id, claim.generation, None, None),
                             headers={"authorization": f"Bearer {claim.token}"}))

    def callback(self, wake: Wake, acks: dict[str, str] | None = None, done: bool = False
                 ) -> bool:
        """7.1: the asynchronous answer to a webhook wake."""
        r = self.client.post(wake.callback_url,
                             json=_fence_body(wake.wake_id, wake.generation, acks, done),
                             headers={"authorization": f"Bearer {wake.callback_token}"})
        return bool(_ok(r).json().get("next_wake"))

    def read(self, path: str, offset: str, until: str | None = None
             ) -> tuple[list[Any] | bytes, str]:
        """A stream from ``offset`` (exclusive, as acks are inclusive) up to ``until``
        or its tail: (JSON messages or bytes, the offset to ack)."""
        items: list[Any] = []
        data = b""
        json_mode = False
        while True:
            r = _ok(self.client.get(self.paths.stream(path), params={"offset": offset}))
            chunk = _decode(r)
            if isinstance(chunk, list):
                json_mode = True
                items.extend(chunk)
            else:
                data += chunk
            offset = r.headers.get("stream-next-offset", offset)
            if r.headers.get("stream-up-to-date") == "true" or (until and offset >= until):
                return (items if json_mode else data), offset


class AsyncSubscriptions:
    """The control API of one server, asyncio (same methods as ``Subscriptions``)."""

    def __init__(self, server_url: str, *, stream_prefix: str = "/v1/stream/",
                 headers: dict[str, str] | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        self.paths = _Paths(server_url, stream_prefix)
        self.client = client or httpx.AsyncClient(timeout=60, headers=headers)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def create(self, sub_id: str, *, type: str, pattern: str | None = None,
                     streams: list[str] | None = None, webhook_url: str | None = None,
                     wake_stream: str | None = None, lease_ttl_ms: int | None = None,
                     description: str | None = None) -> dict[str, Any]:
        body = _Paths.body(type, pattern, streams, webhook_url, wake_stream, lease_ttl_ms,
                           description)
        return _ok(await self.client.put(self.paths.sub(sub_id), json=body)).json()

    async def get(self, sub_id: str) -> dict[str, Any]:
        return _ok(await self.client.get(self.paths.sub(sub_id))).json()

    async def delete(self, sub_id: str) -> None:
        _ok(await self.client.delete(self.paths.sub(sub_id)))

    async def add_streams(self, sub_id: str, streams: list[str]) -> None:
        _ok(await self.client.post(self.paths.sub(sub_id, "/streams"),
                                   json={"streams": streams}))

    async def remove_stream(self, sub_id: str, path: str) -> None:
        _ok(await self.client.delete(self.paths.sub(sub_id, "/streams/"
                                                    + quote(path, safe=""))))

    async def jwks(self) -> dict[str, Any]:
        return _ok(await self.client.get(self.paths.root + "__ds/jwks.json")).json()

    async def claim(self, sub_id: str, worker: str) -> Claim | None:
        r = await self.client.post(self.paths.sub(sub_id, "/claim"), json={"worker": worker})
        if r.status_code == 409 and r.json().get("error", {}).get("code") == "NO_PENDING_WORK":
            return None
        return _claim(sub_id, _ok(r).json())

    async def ack(self, claim: Claim, acks: dict[str, str] | None = None, done: bool = False
                  ) -> bool:
        r = await self.client.post(
            self.paths.sub(claim.subscription_id, "/ack"),
            json=_fence_body(claim.wake_id, claim.generation, acks, done),
            headers={"authorization": f"Bearer {claim.token}"})
        return bool(_ok(r).json().get("next_wake"))

    async def release(self, claim: Claim) -> None:
        _ok(await self.client.post(
            self.paths.sub(claim.subscription_id, "/release"),
            json=_fence_body(claim.wake_id, claim.generation, None, None),
            headers={"authorization": f"Bearer {claim.token}"}))

    async def callback(self, wake: Wake, acks: dict[str, str] | None = None,
                       done: bool = False) -> bool:
        r = await self.client.post(wake.callback_url,
                                   json=_fence_body(wake.wake_id, wake.generation, acks, done),
                                   headers={"authorization": f"Bearer {wake.callback_token}"})
        return bool(_ok(r).json().get("next_wake"))

    async def read(self, path: str, offset: str, until: str | None = None
                   ) -> tuple[list[Any] | bytes, str]:
        items: list[Any] = []
        data = b""
        json_mode = False
        while True:
            r = _ok(await self.client.get(self.paths.stream(path), params={"offset": offset}))
            chunk = _decode(r)
            if isinstance(chunk, list):
                json_mode = True
                items.extend(chunk)
            else:
                data += chunk
            offset = r.headers.get("stream-next-offset", offset)
            if r.headers.get("stream-up-to-date") == "true" or (until and offset >= until):
                return (items if json_mode else data), offset


from .subscription_workers import AsyncPullWorker, PullWorker, WebhookReceiver  # noqa: E402
