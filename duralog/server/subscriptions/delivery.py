"""Webhook delivery (PROTOCOL.md 7.1): signed POSTs, retries, bounded concurrency.

One delivery loop per subscription with a wake in flight. An attempt signs
the body (signing.py), resolves and checks the URL (ssrf.py), and POSTs to the
checked address under a per-attempt timeout. A 2xx answer resets the retry
state; ``{"done": true}`` acks the wake's snapshot (manager.delivered). A
failure schedules the next attempt with exponential backoff from 1 s to 60 s
and 20% jitter; ``next_attempt_at`` and the retry count are journaled, so a
restarted server keeps the schedule (7.1).

Attempts to one endpoint (scheme, host, port) share a semaphore of
``endpoint_concurrency`` slots, and there is no global limit: a dead or slow
endpoint holds only its own slots and never delays another endpoint's wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

from .ssrf import Target, UrlRejected

if TYPE_CHECKING:
    from .manager import Manager
    from .model import Subscription

MAX_ANSWER = 64 << 10


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry ``attempt`` (1-based): base * 2^(n-1), capped, +-20% jitter."""
    delay = min(base * (2 ** max(0, attempt - 1)), cap)
    jitter = delay * 0.2 * ((rng or random).random() * 2 - 1)
    return max(0.0, delay + jitter)


def pinned_request(target: Target) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and extensions that connect to the checked address, not a new lookup.

    The URL names the address; Host and the TLS server name keep the original
    host, so virtual hosting and certificate checks work as for the name.
    """
    url = target.url
    address = f"[{target.address}]" if ":" in target.address else target.address
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    default = 443 if url.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    host_header = host if target.port == default else f"{host}:{target.port}"
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = target.host
    return f"{url.scheme}://{address}:{target.port}{path}", {"host": host_header}, extensions


class Delivery:
    def __init__(self, manager: Manager, *, retry_base: float, retry_max: float,
                 attempt_timeout: float, endpoint_concurrency: int) -> None:
        self.m = manager
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.attempt_timeout = attempt_timeout
        self.endpoint_concurrency = endpoint_concurrency
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._client: httpx.AsyncClient | None = None

    def wake(self, sub: Subscription) -> None:
        """Make sure a loop delivers ``sub``'s current wake."""
        task = self._loops.get(sub.id)
        if task is not None and not task.done():
            return
        self._loops[sub.id] = asyncio.get_running_loop().create_task(self._loop(sub.id))

    def forget(self, sub_id: str) -> None:
        task = self._loops.pop(sub_id, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._loops.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No proxies from the environment and no redirects: either would send the
            # request somewhere the address check never saw (12.8).
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                             limits=httpx.Limits(max_connections=None))
        return self._client

    async def _loop(self, sub_id: str) -> None:
        try:
            while True:
                sub = self.m.subs.get(sub_id)
                if sub is None or sub.wake_id is None:
                    return
                wait = (sub.next_attempt_at or 0) - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # the state may have changed while we slept
                wake_id = sub.wake_id
                ok, done = await self._attempt(sub)
                if self.m.subs.get(sub_id) is not sub:
                    return
                if ok:
                    self.m.metrics.deliveries.inc()
                    self.m.delivered(sub, wake_id, done)
                    if sub.wake_id is not None and sub.wake_id != wake_id:
                        continue  # a newer wake is waiting to go out
                    return
                self.m.metrics.failures.inc()
                sub.retry_count += 1
                sub.status = "failed"  # 6.3: failed while a retry is scheduled
                sub.next_attempt_at = time.time() + backoff(sub.retry_count, self.retry_base,
                                                            self.retry_max)
                self.m._post_head(sub)
        finally:
            if self._loops.get(sub_id) is asyncio.current_task():
                del self._loops[sub_id]

    def body(self, sub: Subscription) -> bytes:
        assert sub.wake_id is not None
        callback = (f"{sub.base_url}/subscriptions/{quote(sub.id, safe='')}/callback")
        return orjson.dumps({
            "subscription_id": sub.id, "wake_id": sub.wake_id, "generation": sub.generation,
            "streams": self.m.stream_infos(sub), "callback_url": callback,
            "callback_token": self.m.keys.token(sub.id, sub.generation, sub.wake_id)})

    async def _attempt(self, sub: Subscription) -> tuple[bool, bool]:
        """(answered 2xx, answered {"done": true})."""
        url = sub.config.webhook_url
        assert url is not None
        try:
            target = await self.m.policy.target(url)
        except UrlRejected as err:
            self.m.log.warning("subscription %s: webhook not sent: %s", sub.id, err)
            return False, False
        body = self.body(sub)
        headers = {"content-type": "application/json",
                   "webhook-signature": self.m.keys.sign(body)}
        request_url, host, extensions = pinned_request(target)
        headers.update(host)
        key = f"{target.url.scheme}://{target.host}:{target.port}"
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.endpoint_concurrency)
        try:
            async with slots, asyncio.timeout(self.attempt_timeout):
                request = self.client().build_request("POST", request_url, content=body,
                                                      headers=headers, extensions=extensions)
                response = await self.client().send(request, stream=True)
                try:
                    answer = b""
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) > MAX_ANSWER:
                            break
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError, OSError) as err:
            self.m.log.info("subscription %s: webhook attempt failed: %r", sub.id, err)
            return False, False
        if not 200 <= response.status_code < 300:
            self.m.log.info("subscription %s: webhook answered %d", sub.id,
                            response.status_code)
            return False, False
        done = False
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(answer)
            done = isinstance(parsed, dict) and parsed.get("done") is True
        return True, done
