"""The control API's HTTP surface (PROTOCOL.md 6 and 7), below ``{streams}/__ds``.

::

    GET    /jwks.json                          6.5  the webhook signing keys
    PUT    /subscriptions/:id                  6.2  create or re-confirm
    GET    /subscriptions/:id                  6.3
    DELETE /subscriptions/:id                  6.3  204
    POST   /subscriptions/:id/streams          6.4  add explicit links, 204
    DELETE /subscriptions/:id/streams/:path    6.4  :path percent-encoded, 204
    POST   /subscriptions/:id/callback         7.1  bearer: the wake's callback token
    POST   /subscriptions/:id/claim            7.2
    POST   /subscriptions/:id/ack              7.2  bearer: the claim token
    POST   /subscriptions/:id/release          7.2  bearer: the claim token, 204
    POST   /keys/rotate                        duralog: a new signing key

Errors are ``{"error": {"code": ..., "message": ...}}`` with the reference
server's codes and statuses (model.ERROR_STATUS). Every request first passes
``authorize`` (the hook where scopes plug in: control APIs, claim included,
need ``admin``; callback, ack and release carry their own wake token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from ...protocol.errors import ProtocolError
from ..http import Receive, Request, Responses, Scope, Send, read_body, relative_path
from .manager import Manager
from .model import (
    MAX_WORKER_CHARS,
    SubscriptionError,
    check_id,
    check_stream_path,
    invalid,
    parse_config,
)

MAX_BODY = 1 << 20
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
CONTROL_METHODS = b"GET, PUT, POST, DELETE, OPTIONS"

#: ``authorize(scope, need)`` -> None to allow, or a SubscriptionError to refuse.
#: ``need`` is "admin" for the control APIs (claim included) and "wake-token" for
#: callback, ack and release. The default allows everything (auth is off).
Authorizer = Callable[[Scope, str], Awaitable[SubscriptionError | None]]


async def allow_all(scope: Scope, need: str) -> SubscriptionError | None:
    return None


class Routes:
    def __init__(self, manager: Manager, http: Responses) -> None:
        self.m = manager
        self.http = http
        self.authorize: Authorizer = allow_all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._route(scope, receive)
        except SubscriptionError as err:
            status, body, headers = err.status, err.body(), []
        except ProtocolError as err:
            code = {413: "PAYLOAD_TOO_LARGE", 503: "UNAVAILABLE"}.get(err.status,
                                                                     "INVALID_REQUEST")
            status, body, headers = err.status, {"error": {"code": code,
                                                           "message": err.reason}}, []
        if body is None:
            await self.http.respond(send, status, [(b"cache-control", b"no-store"), *headers])
        else:
            await self.http.respond(send, status, headers or JSON_HEADERS, orjson.dumps(body))

    async def _route(self, scope: Scope, receive: Receive
                     ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        method = scope["method"]
        raw = relative_path(scope)
        if method == "OPTIONS":
            return 204, None, [(b"access-control-allow-methods", CONTROL_METHODS),
                               (b"access-control-allow-headers",
                                b"Content-Type, Authorization"),
                               (b"access-control-max-age", b"86400")]
        if raw == b"/jwks.json":  # 6.5: public, like the keys it lists
            self._method(method, "GET")
            return 200, self.m.keys.jwks(), [(b"content-type", b"application/jwk-set+json"),
                                             (b"cache-control", b"public, max-age=300")]
        if raw == b"/keys/rotate":
            self._method(method, "POST")
            await self._authorize(scope, "admin")
            return 200, {"kid": await self.m.rotate_keys(), **self.m.keys.jwks()}, []
        parts = raw.split(b"/")
        if len(parts) < 3 or parts[0] != b"" or parts[1] != b"subscriptions" or not parts[2]:
            raise SubscriptionError("SUBSCRIPTION_NOT_FOUND",
                                    "no such Durable Streams control route")
        sub_id = check_id(unquote(parts[2].decode("latin-1")))
        rest = parts[3:]
        req = Request(scope, receive, sub_id)
        action = rest[0].decode("latin-1") if rest else ""
        if action in ("callback", "ack", "release") and len(rest) == 1:
            self._method(method, "POST")
            await self._authorize(scope, "wake-token")
            token = _bearer(req)
            body = await _json(req)
            if action == "callback":
                return 200, await self.m.callback(sub_id, token, body), []
            if action == "ack":
                return 200, await self.m.ack(sub_id, token, body), []
            await self.m.release(sub_id, token, body)
            return 204, None, []
        await self._authorize(scope, "admin")
        if not rest:
            return await self._base(scope, req, method, sub_id)
        if action == "streams" and len(rest) == 1:
            self._method(method, "POST")
            body = await _json(req)
            streams = body.get("streams") if isinstance(body, dict) else None
            if not isinstance(streams, list) or not streams or len(streams) > 1000:
                raise invalid("streams must be a non-empty array of at most 1000 paths")
            await self.m.add_streams(sub_id, [check_stream_path(s) for s in streams])
            return 204, None, []
        if action == "streams":
            self._method(method, "DELETE")
            # 6.4: the path arrives percent-encoded and may contain slashes.
            path = unquote(b"/".join(rest[1:]).decode("latin-1"))
            await self.m.remove_stream(sub_id, check_stream_path(path, "stream path"))
            return 204, None, []
        if action == "claim" and len(rest) == 1:
            self._method(method, "POST")
            body = await _json(req)
            worker = body.get("worker") if isinstance(body, dict) else None
            if not isinstance(worker, str) or not worker or len(worker) > MAX_WORKER_CHARS:
                raise invalid(f"worker must be a non-empty string of at most "
                              f"{MAX_WORKER_CHARS} characters")
            return 200, await self.m.claim(sub_id, worker), []
        raise SubscriptionError("SUBSCRIPTION_NOT_FOUND", "no such Durable Streams control route")

    async def _base(self, scope: Scope, req: Request, method: str, sub_id: str
                    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        base = _base_url(scope)
        if method == "PUT":
            config = parse_config(await _json(req))
            sub, created = await self.m.put(sub_id, config, base)
            return (201 if created else 200), self.m.serialize(sub, base), []
        if method == "GET":
            return 200, self.m.serialize(self.m.get(sub_id), base), []
        if method == "DELETE":
            await self.m.delete(sub_id)
            return 204, None, []
        raise SubscriptionError("METHOD_NOT_ALLOWED", f"{method} is not allowed here")

    async def _authorize(self, scope: Scope, need: str) -> None:
        refusal = await self.authorize(scope, need)
        if refusal is not None:
            raise refusal

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise SubscriptionError("METHOD_NOT_ALLOWED", f"{method} is not allowed here; "
                                    f"use {allowed}")


def _bearer(req: Request) -> str:
    value = req.header("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SubscriptionError("TOKEN_INVALID", "missing or malformed Authorization header")
    return token.strip()


async def _json(req: Request) -> Any:
    body = await read_body(req, MAX_BODY)
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid("invalid JSON body") from None


def _base_url(scope: Scope) -> str:
    """Where this mount is, as the client addressed it: callback and JWKS URLs use it."""
    host = None
    for key, value in scope.get("headers", []):
        if key == b"host":
            host = value.decode("latin-1")
            break
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"
