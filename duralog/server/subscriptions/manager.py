"""The subscription manager: links, wakes, leases and fencing (PROTOCOL.md 6-7).

The manager owns every subscription in memory and journals each change
(journal.py), so all of it survives a restart. It learns of appends through
the store's notifier (an observer called with the stream id after each
commit), looks up the subscriptions that can care about that stream (the glob
index by literal prefix, and the explicit/glob links by path) and wakes the
idle ones with pending work (7): a new generation, a new wake id, and then a
webhook delivery (delivery.py) or a wake event appended to the wake stream.

Acks, claims, callbacks and releases are journaled durably before they are
answered; wake bookkeeping that can be recomputed (which streams are pending)
is journaled without waiting. At start-up the journal is replayed, links are
reconciled with the streams that exist, expired leases are expired, wakes
that were pending at a crash are delivered again, and idle subscriptions with
pending work are woken.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from ...protocol.offsets import ZERO, format_offset, parse_offset
from ...protocol.state import AppendRequest
from ..context import ServerContext
from ..streams import REGISTRY
from .delivery import Delivery
from .globs import GlobIndex, PathTrie, glob_match, literal_prefix, split_path
from .journal import Journal
from .metrics import SubscriptionMetrics
from .model import (
    RESERVED,
    Link,
    Subscription,
    SubscriptionConfig,
    SubscriptionError,
    parse_acks,
)
from .recovery import Recovery
from .signing import Keyring
from .ssrf import UrlPolicy, UrlRejected

WAKE_STREAMS = 1000  # most idle streams listed with a wake


def _pos(offset: str) -> int:
    return -1 if offset == "-1" else parse_offset(offset)


class Manager(Recovery):
    def __init__(self, ctx: ServerContext, policy: UrlPolicy, *,
                 retry_base: float = 1.0, retry_max: float = 60.0,
                 attempt_timeout: float = 30.0, endpoint_concurrency: int = 4) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.log = ctx.log
        self.policy = policy
        self.subs: dict[str, Subscription] = {}
        self.index = GlobIndex()
        self.by_path: dict[str, set[str]] = {}  # stream path -> ids of subscriptions linking it
        self.ids: dict[int, str] = {}  # stream id -> path of every stream seen (deletes)
        self.paths = PathTrie()  # every application stream, for backfill by prefix
        self.keys = Keyring()
        self.journal = Journal(self.store, self.log, self.snapshot)
        self.metrics = SubscriptionMetrics(ctx.metrics, self)
        self.delivery = Delivery(self, retry_base=retry_base, retry_max=retry_max,
                                 attempt_timeout=attempt_timeout,
                                 endpoint_concurrency=endpoint_concurrency)
        self._lease_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False
        #: links examined by ``_on_change`` (tests count work with it)
        self.link_checks = 0

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        for event in await self.journal.load():
            self._replay(event)
        self.journal.start()
        if self.keys.ensure():
            await self.journal.write({"e": "keys", **self.keys.to_json()})
        self.store.notifier.observers.append(self._on_change)
        self.started = True
        self._reconcile()

    async def stop(self) -> None:
        self.started = False
        if self._on_change in self.store.notifier.observers:
            self.store.notifier.observers.remove(self._on_change)
        for handle in self._lease_timers.values():
            handle.cancel()
        self._lease_timers.clear()
        await self.delivery.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.journal.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- journal -------------------------------------------------------------------------
    def _post_head(self, sub: Subscription) -> None:
        self.journal.post({"e": "head", **sub.head_record()})

    async def _write_head(self, sub: Subscription, acks: dict[str, str] | None = None) -> None:
        if acks:
            self.journal.post({"e": "acks", "id": sub.id, "acks": acks})
        await self.journal.write({"e": "head", **sub.head_record()})

    # -- in-memory structure -----------------------------------------------------------
    def _add(self, sub: Subscription) -> None:
        self.subs[sub.id] = sub
        if sub.config.pattern:
            self.index.add(sub.id, sub.config.pattern)

    def _drop(self, sub_id: str) -> Subscription | None:
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            return None
        self.index.remove(sub_id)
        for path in sub.links:
            holders = self.by_path.get(path)
            if holders is not None:
                holders.discard(sub_id)
                if not holders:
                    del self.by_path[path]
        handle = self._lease_timers.pop(sub_id, None)
        if handle is not None:
            handle.cancel()
        return sub

    def _set_link(self, sub: Subscription, link: Link) -> None:
        if not (link.explicit or link.glob):
            self._unlink(sub, link.path)
            return
        sub.links[link.path] = link
        self.by_path.setdefault(link.path, set()).add(sub.id)

    def _unlink(self, sub: Subscription, path: str) -> None:
        if sub.links.pop(path, None) is not None:
            holders = self.by_path.get(path)
            if holders is not None:
                holders.discard(sub.id)
                if not holders:
                    del self.by_path[path]

    # -- streams ---------------------------------------------------------------------
    def tail(self, path: str) -> int:
        state = self.store.get(path)
        if state is None or state.soft_deleted:
            return 0
        return state.tail

    def pending(self, sub: Subscription, link: Link) -> bool:
        return self.tail(link.path) > _pos(link.acked)

    def has_pending(self, sub: Subscription) -> bool:
        return any(self.pending(sub, link) for link in sub.links.values())

    def stream_infos(self, sub: Subscription, limit: int = WAKE_STREAMS
                     ) -> list[dict[str, Any]]:
        """7.1/7.2: the streams of a wake or claim. Every pending stream is listed; the
        others only while the list stays within ``limit`` (a ``**`` subscription may
        link 100,000 streams, and a wake must not carry them all)."""
        pending, idle = [], []
        for link in sub.links.values():
            tail = self.tail(link.path)
            has = tail > _pos(link.acked)
            (pending if has else idle).append(
                {"path": link.path, "link_type": link.link_type, "acked_offset": link.acked,
                 "tail_offset": format_offset(tail), "has_pending": has})
        return pending + idle[:max(0, limit - len(pending))]

    def _glob_candidate(self, sub: Subscription, path: str) -> bool:
        # A subscription never wakes on its own wake events, and patterns leave out
        # the server-written registry (it can still be linked explicitly).
        return path != sub.config.wake_stream and path != REGISTRY

    def _on_change(self, stream_id: int) -> None:
        """Notifier observer: a stream was appended to, created, closed or deleted."""
        try:
            self._changed(stream_id)
        except Exception:  # pragma: no cover - must never break the store's commit path
            self.log.exception("subscriptions: handling a change of stream %d failed",
                               stream_id)

    def _changed(self, stream_id: int) -> None:
        state = self.store.state_by_id(stream_id)
        if state is None or state.soft_deleted:
            path = self.ids.pop(stream_id, None)
            if path is not None and self.store.get(path) is None:
                self.paths.remove(path)
                self._stream_gone(path)
            return
        path = state.path
        if stream_id not in self.ids:
            if path.split("/", 1)[0] == RESERVED:
                return
            self.ids[stream_id] = path
            self.paths.add(path)
        for sub_id in self.index.matches(path):
            sub = self.subs[sub_id]
            link = sub.links.get(path)
            if link is None and self._glob_candidate(sub, path):
                # 6.2: a stream found by a matching append is linked before that append.
                link = Link(path, glob=True, acked=ZERO)
                self._set_link(sub, link)
                self.journal.post({"e": "links", "id": sub.id,
                                   "links": sub.links_record([link])})
            elif link is not None and not link.glob:
                link.glob = True
                self.journal.post({"e": "links", "id": sub.id,
                                   "links": sub.links_record([link])})
        holders = self.by_path.get(path)
        if not holders:
            return
        for sub_id in list(holders):
            self.link_checks += 1
            sub = self.subs[sub_id]
            if sub.wake_id is None and sub.holder is None:
                link = sub.links[path]
                if state.tail > _pos(link.acked):
                    self._create_wake(sub, path)

    def _stream_gone(self, path: str) -> None:
        """A linked stream was deleted: glob links go; explicit links start over at zero."""
        for sub_id in list(self.by_path.get(path, ())):
            sub = self.subs[sub_id]
            link = sub.links[path]
            if link.explicit:
                link.glob = False
                link.acked = ZERO
                self._set_link(sub, link)
                self.journal.post({"e": "links", "id": sub.id,
                                   "links": sub.links_record([link])})
            else:
                self._unlink(sub, path)
                self.journal.post({"e": "unlink", "id": sub.id, "path": path})

    # -- wakes -------------------------------------------------------------------------
    def _create_wake(self, sub: Subscription, trigger: str) -> None:
        """7: a new generation and wake for pending work, then deliver it."""
        sub.generation += 1
        sub.wake_id = "w_" + secrets.token_hex(12)
        sub.snapshot = {ln.path: format_offset(self.tail(ln.path))
                        for ln in sub.links.values() if self.pending(sub, ln)}
        self.metrics.wakes.inc()
        if sub.config.type == "webhook":
            self._extend_lease(sub)  # 7.3: a webhook lease starts when the wake is issued
            self._post_head(sub)
            self.delivery.wake(sub)
        else:
            self._post_head(sub)
            self._spawn(self._write_wake_event(sub, trigger))

    async def _write_wake_event(self, sub: Subscription, trigger: str) -> None:
        """7.2: a wake event on the application's wake stream."""
        path = sub.config.wake_stream
        assert path is not None
        state = self.store.get(path)
        if state is None or state.soft_deleted:
            self.log.warning("subscription %s: wake stream %s does not exist", sub.id, path)
            return
        event = orjson.dumps({"type": "wake", "subscription_id": sub.id, "stream": trigger,
                              "generation": sub.generation, "ts": int(time.time() * 1000)})
        json_stream = state.content_type.split(";")[0].strip().lower() == "application/json"
        try:
            await self.store.append(path, AppendRequest(
                payload=event if json_stream else event + b"\n",
                content_type=state.content_type))
        except Exception as err:
            self.log.warning("subscription %s: wake event not written to %s: %s",
                             sub.id, path, err)

    def _trigger_next(self, sub: Subscription) -> bool:
        for link in sub.links.values():
            if self.pending(sub, link):
                self._create_wake(sub, link.path)
                return True
        return False

    def _clear_wake(self, sub: Subscription) -> None:
        sub.wake_id = None
        sub.holder = None
        sub.snapshot = {}
        sub.lease_until = None
        handle = self._lease_timers.pop(sub.id, None)
        if handle is not None:
            handle.cancel()

    def _extend_lease(self, sub: Subscription) -> None:
        sub.lease_until = time.time() + sub.config.lease_ttl_ms / 1000
        self._arm_lease(sub)

    def _arm_lease(self, sub: Subscription) -> None:
        handle = self._lease_timers.pop(sub.id, None)
        if handle is not None:
            handle.cancel()
        if sub.lease_until is None:
            return
        delay = max(0.0, sub.lease_until - time.time())
        self._lease_timers[sub.id] = asyncio.get_running_loop().call_later(
            delay, self._lease_expired, sub.id)

    def _lease_expired(self, sub_id: str) -> None:
        """7.3: clear the holder and wake; re-wake when work is pending."""
        self._lease_timers.pop(sub_id, None)
        sub = self.subs.get(sub_id)
        if sub is None or sub.lease_until is None:
            return
        if sub.lease_until > time.time():  # extended meanwhile
            self._arm_lease(sub)
            return
        self.metrics.lease_expiries.inc()
        self._clear_wake(sub)
        if not self._trigger_next(sub):
            self._post_head(sub)

    def delivered(self, sub: Subscription, wake_id: str, done: bool) -> None:
        """delivery.py: the receiver answered 2xx for ``wake_id``."""
        if sub.retry_count or sub.status != "active":
            sub.status = "active"
            sub.retry_count = 0
            sub.next_attempt_at = None
            self._post_head(sub)
        if done and sub.wake_id == wake_id and self.subs.get(sub.id) is sub:
            # 7.1: {"done": true} acks the wake's snapshot and releases the lease.
            acks = {}
            for path, tail in sub.snapshot.items():
                link = sub.links.get(path)
                if link is not None and _pos(tail) > _pos(link.acked):
                    link.acked = tail
                    acks[path] = tail
            if acks:
                self.journal.post({"e": "acks", "id": sub.id, "acks": acks})
            self._clear_wake(sub)
            if not self._trigger_next(sub):
                self._post_head(sub)

    # -- the control API (6) -------------------------------------------------------------
    async def put(self, sub_id: str, config: SubscriptionConfig, base_url: str
                  ) -> tuple[Subscription, bool]:
        digest = config.hash()
        existing = self.subs.get(sub_id)
        if existing is not None:
            if existing.config_hash != digest:
                raise SubscriptionError("SUBSCRIPTION_ALREADY_EXISTS", "subscription already "
                                        "exists with a different configuration")
            return existing, False
        if config.webhook_url is not None:
            try:
                await self.policy.validate(config.webhook_url)
            except UrlRejected as err:
                raise SubscriptionError("WEBHOOK_URL_REJECTED", str(err)) from None
            if sub_id in self.subs:  # created while we resolved the name
                return await self.put(sub_id, config, base_url)
        now = datetime.now(UTC)
        sub = Subscription(sub_id, config, digest,
                           now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                           base_url)
        self._add(sub)
        # 6.2: existing streams are linked at their current tail (no replay of history).
        for path in config.streams:
            self._set_link(sub, Link(path, explicit=True, acked=format_offset(self.tail(path))))
        if config.pattern:
            pattern = split_path(config.pattern)
            for path in list(self.paths.under(literal_prefix(pattern))):
                if not self._glob_candidate(sub, path) or not glob_match(pattern,
                                                                         split_path(path)):
                    continue
                if path in sub.links:
                    sub.links[path].glob = True
                else:
                    self._set_link(sub, Link(path, glob=True,
                                             acked=format_offset(self.tail(path))))
        self.journal.post({"e": "head", **sub.head_record()})
        await self.journal.write({"e": "links", "id": sub.id, "links": sub.links_record()})
        return sub, True

    def get(self, sub_id: str) -> Subscription:
        sub = self.subs.get(sub_id)
        if sub is None:
            raise SubscriptionError("SUBSCRIPTION_NOT_FOUND", "subscription not found")
        return sub

    async def delete(self, sub_id: str) -> None:
        """6.3: a tombstone; later callbacks, acks and releases for it fail."""
        if self._drop(sub_id) is not None:
            self.delivery.forget(sub_id)
            await self.journal.write({"e": "del", "id": sub_id})

    async def add_streams(self, sub_id: str, paths: list[str]) -> None:
        sub = self.get(sub_id)
        changed = []
        for path in paths:
            link = sub.links.get(path)
            if link is None:
                link = Link(path, explicit=True, acked=format_offset(self.tail(path)))
            elif link.explicit:
                continue  # 6.4: idempotent
            else:
                link.explicit = True
            self._set_link(sub, link)
            changed.append(link)
        if changed:
            await self.journal.write({"e": "links", "id": sub.id,
                                      "links": sub.links_record(changed)})

    async def remove_stream(self, sub_id: str, path: str) -> None:
        sub = self.get(sub_id)
        link = sub.links.get(path)
        if link is None or not link.explicit:
            return  # 6.4: idempotent
        link.explicit = False
        if link.glob:
            self._set_link(sub, link)
            await self.journal.write({"e": "links", "id": sub.id,
                                      "links": sub.links_record([link])})
        else:
            self._unlink(sub, path)
            await self.journal.write({"e": "unlink", "id": sub.id, "path": path})

    # -- delivery control (7.1-7.3) -----------------------------------------------------
    def _fence(self, sub: Subscription, token: str, body: Any) -> None:
        """7.3: the token, its generation, and the request's generation and wake id."""
        code, claims = self.keys.check_token(token, sub.id)
        if code is not None:
            raise SubscriptionError(code, "token expired" if code == "TOKEN_EXPIRED"
                                    else "token invalid")
        if not isinstance(body, dict):
            raise SubscriptionError("INVALID_REQUEST", "request body must be a JSON object")
        generation = body.get("generation")
        if (sub.wake_id is None or claims.get("gen") != sub.generation
                or claims.get("wake") != sub.wake_id or generation != sub.generation
                or isinstance(generation, bool) or body.get("wake_id") != sub.wake_id):
            raise SubscriptionError("FENCED", "wake generation is stale")

    def _apply_acks(self, sub: Subscription, body: Any) -> dict[str, str]:
        acks = parse_acks(body)
        for path, offset in acks:  # all checked before any applies
            link = sub.links.get(path)
            if link is None:
                raise SubscriptionError("INVALID_OFFSET", f"ack names {path!r}, which is not "
                                        "a stream of this subscription")
            if offset == "-1":
                raise SubscriptionError("INVALID_OFFSET", "ack offset must not be -1")
            if _pos(offset) < _pos(link.acked):
                raise SubscriptionError("INVALID_OFFSET", "ack offset regresses the cursor")
            if _pos(offset) > self.tail(path):
                raise SubscriptionError("INVALID_OFFSET", "ack offset is beyond the tail")
        applied = {}
        for path, offset in acks:
            sub.links[path].acked = offset
            applied[path] = offset
        return applied

    async def _finish(self, sub: Subscription, body: Any, acks: dict[str, str]) -> bool:
        next_wake = False
        if body.get("done") is True:
            self._clear_wake(sub)
            next_wake = self._trigger_next(sub)
        else:
            self._extend_lease(sub)
        await self._write_head(sub, acks)
        return next_wake

    async def callback(self, sub_id: str, token: str, body: Any) -> dict[str, Any]:
        sub = self.get(sub_id)
        self._fence(sub, token, body)
        acks = self._apply_acks(sub, body)
        return {"ok": True, "next_wake": await self._finish(sub, body, acks)}

    def _pull(self, sub_id: str) -> Subscription:
        sub = self.get(sub_id)
        if sub.config.type != "pull-wake":
            raise SubscriptionError("INVALID_REQUEST", "subscription is not pull-wake")
        return sub

    async def claim(self, sub_id: str, worker: str) -> dict[str, Any]:
        sub = self._pull(sub_id)
        if sub.holder is not None:
            raise SubscriptionError("ALREADY_CLAIMED", "another worker holds the lease",
                                    current_holder=sub.holder, generation=sub.generation)
        if sub.wake_id is None:
            if not self.has_pending(sub):
                raise SubscriptionError("NO_PENDING_WORK", "subscription has no pending work")
            self._trigger_next(sub)
        sub.holder = worker
        self._extend_lease(sub)  # 7.3: a pull-wake lease starts at the claim
        await self._write_head(sub)
        assert sub.wake_id is not None
        return {"wake_id": sub.wake_id, "generation": sub.generation,
                "token": self.keys.token(sub.id, sub.generation, sub.wake_id),
                "streams": self.stream_infos(sub), "lease_ttl_ms": sub.config.lease_ttl_ms}

    async def ack(self, sub_id: str, token: str, body: Any) -> dict[str, Any]:
        sub = self._pull(sub_id)
        self._fence(sub, token, body)
        if sub.holder is None:
            raise SubscriptionError("FENCED", "the wake is not claimed")
        acks = self._apply_acks(sub, body)
        return {"ok": True, "next_wake": await self._finish(sub, body, acks)}

    async def release(self, sub_id: str, token: str, body: Any) -> None:
        sub = self._pull(sub_id)
        self._fence(sub, token, body)
        if sub.holder is None:
            raise SubscriptionError("FENCED", "the wake is not claimed")
        self._clear_wake(sub)
        self._trigger_next(sub)  # 7.2: pending work gets another wake event
        await self._write_head(sub)

    async def rotate_keys(self) -> str:
        key = self.keys.rotate()
        await self.journal.write({"e": "keys", **self.keys.to_json()})
        return key.kid

    # -- answers -----------------------------------------------------------------------
    def serialize(self, sub: Subscription, base_url: str) -> dict[str, Any]:
        c = sub.config
        webhook = None
        if c.webhook_url is not None:
            webhook = {"url": c.webhook_url,
                       "signing": {"alg": "ed25519", "kid": self.keys.active.kid,
                                   "jwks_url": base_url + "/jwks.json"}}
        return {"id": sub.id, "subscription_id": sub.id, "type": c.type, "pattern": c.pattern,
                "streams": [{"path": ln.path, "link_type": ln.link_type,
                             "acked_offset": ln.acked} for ln in sub.links.values()],
                "webhook": webhook, "wake_stream": c.wake_stream,
                "lease_ttl_ms": c.lease_ttl_ms, "created_at": sub.created_at,
                "status": sub.status, "description": c.description,
                "generation": sub.generation}
