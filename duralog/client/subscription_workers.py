"""Workers for subscriptions: the pull-wake loop and the webhook receiver.

``PullWorker`` (threads) and ``AsyncPullWorker`` (asyncio) run PROTOCOL.md 7.2:
claim the subscription, read each pending stream from its acked offset, call
your function, ack that stream's offset (which also extends the lease), and
finish with ``done``. While your function runs, a heartbeat keeps the lease
(every third of ``lease_ttl_ms``). An error releases the claim so another
worker can take the wake; a lost lease (``Fenced``) drops the wake, whose work
the server hands out again. Between wakes the worker long-polls the wake
stream, so it sleeps without polling the control API.

``WebhookReceiver`` is an ASGI app (mount it in Starlette or FastAPI) for 7.1:
it verifies ``Webhook-Signature`` against the JWKS, calls your function with
the ``Wake``, and answers ``{"done": true}`` when the function returns True
(the server then acks the wake's snapshot), or ``{}`` when the function will
answer later through ``AsyncSubscriptions.callback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from .subscriptions import (
    AlreadyClaimed,
    AsyncSubscriptions,
    Claim,
    Fenced,
    JwksCache,
    SignatureError,
    Subscriptions,
    Wake,
    verify_signature,
)

Handler = Callable[[str, Any, Claim], None]
AsyncHandler = Callable[[str, Any, Claim], Awaitable[None]]


class PullWorker:
    """A blocking pull-wake worker: ``handler(path, messages_or_bytes, claim)``."""

    def __init__(self, subs: Subscriptions, subscription_id: str, worker: str,
                 handler: Handler, *, wake_stream: str | None = None,
                 idle_wait: float = 30.0) -> None:
        self.subs = subs
        self.subscription_id = subscription_id
        self.worker = worker
        self.handler = handler
        self.wake_stream = wake_stream
        self.idle_wait = idle_wait
        self._offset = "now"

    def run_once(self) -> bool:
        """Claim and process one wake; False when there was nothing to claim."""
        try:
            claim = self.subs.claim(self.subscription_id, self.worker)
        except AlreadyClaimed:
            return False
        if claim is None:
            return False
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(claim, stop), daemon=True)
        beat.start()
        try:
            for link in claim.pending:
                data, offset = self.subs.read(link.path, link.acked_offset, link.tail_offset)
                self.handler(link.path, data, claim)
                self.subs.ack(claim, {link.path: offset})
            stop.set()
            self.subs.ack(claim, done=True)
        except Fenced:
            return True  # the lease is gone; the server wakes someone again
        except BaseException:
            stop.set()
            with contextlib.suppress(Exception):
                self.subs.release(claim)
            raise
        finally:
            stop.set()
            beat.join()
        return True

    def _heartbeat(self, claim: Claim, stop: threading.Event) -> None:
        while not stop.wait(claim.lease_ttl_ms / 3000):
            try:
                self.subs.ack(claim)
            except Exception:
                return

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set: drain the wakes, then sleep on the wake stream."""
        stop = stop or threading.Event()
        while not stop.is_set():
            while not stop.is_set() and self.run_once():
                pass
            if stop.is_set():
                return
            if self.wake_stream is None:
                stop.wait(1.0)
                continue
            try:
                r = self.subs.client.get(self.subs.paths.stream(self.wake_stream),
                                         params={"offset": self._offset, "live": "long-poll"},
                                         timeout=self.idle_wait + 10)
                self._offset = r.headers.get("stream-next-offset", self._offset)
            except httpx.HTTPError:
                stop.wait(1.0)


class AsyncPullWorker:
    """The asyncio pull-wake worker: ``await handler(path, messages_or_bytes, claim)``."""

    def __init__(self, subs: AsyncSubscriptions, subscription_id: str, worker: str,
                 handler: AsyncHandler, *, wake_stream: str | None = None,
                 idle_wait: float = 30.0) -> None:
        self.subs = subs
        self.subscription_id = subscription_id
        self.worker = worker
        self.handler = handler
        self.wake_stream = wake_stream
        self.idle_wait = idle_wait
        self._offset = "now"

    async def run_once(self) -> bool:
        try:
            claim = await self.subs.claim(self.subscription_id, self.worker)
        except AlreadyClaimed:
            return False
        if claim is None:
            return False
        beat = asyncio.get_running_loop().create_task(self._heartbeat(claim))
        try:
            for link in claim.pending:
                data, offset = await self.subs.read(link.path, link.acked_offset,
                                                    link.tail_offset)
                await self.handler(link.path, data, claim)
                await self.subs.ack(claim, {link.path: offset})
            beat.cancel()
            await self.subs.ack(claim, done=True)
        except Fenced:
            return True
        except BaseException:
            beat.cancel()
            with contextlib.suppress(Exception):
                await self.subs.release(claim)
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return True

    async def _heartbeat(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(claim.lease_ttl_ms / 3000)
            try:
                await self.subs.ack(claim)
            except Exception:
                return

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            while not stop.is_set() and await self.run_once():
                pass
            if stop.is_set():
                return
            if self.wake_stream is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            poll = asyncio.ensure_future(self.subs.client.get(
                self.subs.paths.stream(self.wake_stream),
                params={"offset": self._offset, "live": "long-poll"},
                timeout=self.idle_wait + 10))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(BaseException):
                    await poll
                return
            try:
                r = poll.result()
                self._offset = r.headers.get("stream-next-offset", self._offset)
            except httpx.HTTPError:
                await asyncio.sleep(1.0)


WakeHandler = Callable[[Wake], "bool | Awaitable[bool | None] | None"]


class WebhookReceiver:
    """ASGI app receiving webhook wakes: verify, then ``handler(wake)``.

    ``jwks_url`` (cached) or a fixed ``jwks`` dict gives the server's keys;
    ``subscriptions`` limits which subscription ids are accepted (12.10).
    """

    def __init__(self, handler: WakeHandler, *, jwks_url: str | None = None,
                 jwks: dict[str, Any] | None = None, tolerance: float = 300,
                 subscriptions: set[str] | None = None, max_body: int = 16 << 20) -> None:
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url or jwks")
        self.handler = handler
        self.cache = JwksCache(jwks_url) if jwks_url else None
        self.jwks = jwks
        self.tolerance = tolerance
        self.subscriptions = subscriptions
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "POST only"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _answer(send, 413, {"error": "body too large"})
                return
            if not message.get("more_body"):
                break
        header = None
        for key, value in scope["headers"]:
            if key == b"webhook-signature":
                header = value.decode("latin-1")
        try:
            jwks = self.jwks
            if self.cache is not None:
                from .subscriptions import _kid
                jwks = await self.cache.aget(_kid(header))
            assert jwks is not None
            verify_signature(body, header, jwks, tolerance=self.tolerance)
            wake = Wake.of(orjson.loads(body))
        except SignatureError as err:
            await _answer(send, 401, {"error": str(err)})
            return
        except (ValueError, KeyError, TypeError):
            await _answer(send, 400, {"error": "not a wake"})
            return
        if self.subscriptions is not None and wake.subscription_id not in self.subscriptions:
            await _answer(send, 403, {"error": "unexpected subscription"})
            return
        result = self.handler(wake)
        if inspect.isawaitable(result):
            result = await result
        await _answer(send, 200, {"done": True} if result is True else {})


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
