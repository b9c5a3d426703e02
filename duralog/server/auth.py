"""The security layer: Host checks, CORS policy, rate limits and access control.

``SecurityLayer`` wraps the composed application once (DESIGN.md: cross-cutting
layers wrap the app, no handler repeats them). Per request it:

1. checks ``Host`` (RFC 9112 3.2: exactly one on HTTP/1.1; ``--allowed-hosts``);
2. applies the CORS policy (``--cors-origins``): preflights are answered here;
   with auth on, only listed origins get credentials and write methods;
3. rate-limits per client address and per token (PROTOCOL.md 12.5: 429);
4. with an auth file, finds the token (``Authorization: Bearer`` or a ``token``
   query parameter, which is removed before the app sees the query) and checks
   its scope for the operation (PROTOCOL.md 12.1): 401 without a valid token,
   403 outside its scope;
5. marks responses that needed a token ``Cache-Control: private`` (12.2: shared
   caches must not serve them to others) and filters the registry stream down
   to the streams the token may read.

Tokens never reach a log line: reasons name the token's *name* at most.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import orjson

from ..auth import AuthConfig, Principal, RateLimiter, TokenError
from ..protocol.errors import ProtocolError
from ..protocol.paths import source_stream_name, stream_name
from .http import PRIVATE_SCOPE_KEY

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REGISTRY = "__registry__"
RESERVED = "__ds"  # PROTOCOL.md 6: control APIs
_YJS_ROOT = b"/v1/yjs/"  # YJS-PROTOCOL.md documents (duralog/yjs)
_YJS_SCOPES = {"GET": "read", "HEAD": "read", "PUT": "write", "POST": "write"}
_DECISIONS_KEPT = 8192
_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_ALL_METHODS = b"GET, POST, PUT, DELETE, HEAD, OPTIONS"
_READ_METHODS = b"GET, HEAD, OPTIONS"
_ALLOW_HEADERS = (b"Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, "
                  b"Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, "
                  b"Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset")
# PROTOCOL.md 12.7: on every response, this layer's own refusals included.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"),
                    (b"cross-origin-resource-policy", b"cross-origin")]


def split_list(value: str | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (the form of --cors-origins and --allowed-hosts)."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class SecurityLayer:
    """ASGI middleware; see the module docstring. ``auth=None`` means no access control."""

    def __init__(self, app: ASGIApp, *, stream_prefix: str = "/v1/stream/",
                 auth: AuthConfig | None = None, cors_origins: list[str] | None = None,
                 allowed_hosts: list[str] | None = None) -> None:
        self.app = app
        self.prefix = stream_prefix.encode()
        self.auth = auth
        origins = cors_origins if cors_origins is not None else ["*"]
        self.any_origin = "*" in origins
        self.origins = frozenset(o.encode().lower() for o in origins if o != "*")
        hosts = allowed_hosts if allowed_hosts is not None else ["*"]
        self.any_host = "*" in hosts
        self.hosts = frozenset(h.lower().encode() for h in hosts if h != "*")
        self.token_limiter = (RateLimiter(auth.token_rate)
                              if auth is not None and auth.token_rate else None)
        self.address_limiter = (RateLimiter(auth.address_rate)
                                if auth is not None and auth.address_rate else None)
        self._decided: dict[tuple[Any, ...], tuple[bool, str, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: bytes | None = None
        try:
            host, origin, authorization, forked_from = self._scan_headers(scope)
            self._check_host(host, scope.get("http_version", "1.1"))
            method: str = scope["method"]
            if method == "OPTIONS" and origin is not None and self._governs(scope):
                await self._preflight(scope, origin, send)
                return
            if origin is not None and method in _WRITE_METHODS and not self._may_write_from(
                    origin):
                raise _Refusal(403, "this origin may not send write requests")
            if self.address_limiter is not None:
                self._limit(self.address_limiter, "addr:" + _client(scope))
            private, registry_filter = False, None
            if self.auth is not None:
                private, registry_filter = self._decide(scope, method, authorization,
                                                        forked_from)
        except _Refusal as refusal:
            await self._refuse(send, refusal, origin)
            return
        except ProtocolError as err:
            await self._refuse(send, _Refusal(err.status, err.reason), origin)
            return
        if registry_filter is not None:
            # The filtered body differs per token: no gzip, no validators to reuse.
            scope["headers"] = [(k, v) for k, v in scope["headers"]
                                if k.lower() not in (b"accept-encoding", b"if-none-match")]
            send = _RegistryFilter(send, registry_filter).send
        cors = not self.any_origin or (origin is not None and origin.lower() in self.origins)
        if private:
            if not cors and self._stream_root(scope):
                # The stream handler makes its own caching private on this flag
                # (streams.py): no per-message rewriting of the answer's headers, which
                # cost a third of what auth adds per request (issue 9: at most 5%).
                scope[PRIVATE_SCOPE_KEY] = True
            else:
                send = _HeaderRewriter(send, True, self._cors_headers(origin)).send
        elif cors:
            send = _HeaderRewriter(send, False, self._cors_headers(origin)).send
        await self.app(scope, receive, send)

    # -- checks ---------------------------------------------------------------------
    def _stream_root(self, scope: Scope) -> bool:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        root = scope.get("root_path", "").encode()
        if root and raw.startswith(root):
            raw = raw[len(root):]
        return raw.startswith(self.prefix)

    def _governs(self, scope: Scope) -> bool:
        """Paths this layer's CORS and access rules cover: the stream root and /metrics.
        Other mounts (the proxy, the console) answer their own preflights."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        root = scope.get("root_path", "").encode()
        if root and raw.startswith(root):
            raw = raw[len(root):]
        return raw.startswith(self.prefix) or raw.startswith(b"/metrics")

    @staticmethod
    def _scan_headers(scope: Scope) -> tuple[list[bytes], bytes | None, bytes | None,
                                             bytes | None]:
        hosts: list[bytes] = []
        origin = authorization = forked_from = None
        for key, value in scope["headers"]:
            k = key.lower()
            if k == b"host":
                hosts.append(value)
            elif k == b"origin":
                origin = value
            elif k == b"authorization":
                if authorization is not None:
                    raise _Refusal(400, "more than one Authorization header")
                authorization = value
            elif k == b"stream-forked-from":
                forked_from = value
        if len(hosts) > 1:
            raise _Refusal(400, "a request needs exactly one Host header")
        return hosts, origin, authorization, forked_from

    def _check_host(self, hosts: list[bytes], http_version: str) -> None:
        """RFC 9112 3.2 and ``--allowed-hosts``, here and not only in server/limits.py:
        embedded in another ASGI server (uvicorn passes a request without Host on), the
        rule still holds. Without Host: 400 on HTTP/1.1, which requires it; HTTP/1.0
        and HTTP/2 (``:authority``, RFC 9113 8.3.1, which servers need not turn into
        Host) pass only while every host is allowed: a list can't be checked against
        nothing."""
        if not hosts:
            if http_version == "1.1" or not self.any_host:
                raise _Refusal(400, "a request needs exactly one Host header")
            return
        if self.any_host:
            return
        host = hosts[0].lower()
        if host in self.hosts:
            return
        bare = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        if bare not in self.hosts:
            raise _Refusal(400, "Host is not one this server answers to")

    def _may_write_from(self, origin: bytes) -> bool:
        if origin.lower() in self.origins:
            return True
        # Without access control any origin may write (the default, as before);
        # with it, only listed origins: a page elsewhere must not act for a user.
        return self.auth is None and self.any_origin

    def _limit(self, limiter: RateLimiter, key: str) -> None:
        wait = limiter.check(key)
        if wait > 0:
            raise _Refusal(429, "too many requests; slow down",
                           [(b"retry-after", str(max(1, int(wait + 0.999))).encode())])

    def _decide(self, scope: Scope, method: str, authorization: bytes | None,
                forked_from: bytes | None) -> tuple[bool, Callable[[str], bool] | None]:
        """_authorize, remembering what it allowed: a client sends the same token for the
        same stream request after request (the appends benchmark: 18 us -> 2 us of the
        layer per request). Refusals are never remembered, expiry is rechecked."""
        key = None
        if (authorization is not None and forked_from is None
                and b"token=" not in scope.get("query_string", b"")):
            key = (authorization, method, scope.get("raw_path") or scope["path"],
                   scope.get("root_path", ""))
            hit = self._decided.get(key)
            if hit is not None and hit[2] > time.time():
                if self.token_limiter is not None:
                    self._limit(self.token_limiter, hit[1])
                return hit[0], None
        private, registry_filter, principal = self._authorize(scope, method, authorization,
                                                              forked_from)
        if key is not None and registry_filter is None and principal is not None:
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = (private, principal.key, principal.expires)
        return private, registry_filter

    def _authorize(self, scope: Scope, method: str, authorization: bytes | None,
                   forked_from: bytes | None
                   ) -> tuple[bool, Callable[[str], bool] | None, Principal | None]:
        """Raise 401/403 unless allowed. Returns whether the answer is private, for a
        registry read by a token that may not read it all which paths it may list, and
        who asked."""
        assert self.auth is not None
        needs = self._needs(scope, method, forked_from)
        if not needs:
            return False, None, None  # not ours to guard: its own rules apply
        token = self._take_token(scope, authorization)
        anonymous = self.auth.anonymous
        public = all(anonymous.allows(s, p) for s, p in needs)
        if token is None and public:
            return False, None, None
        principal: Principal | None = None
        if token is not None:
            try:
                principal = self.auth.authenticate(token)
            except TokenError as err:
                raise _Refusal(401, f"invalid token: {err}",
                               [(b"www-authenticate", b'Bearer error="invalid_token"')]) from None
            if self.token_limiter is not None:
                self._limit(self.token_limiter, principal.key)
        grant = principal.grant if principal is not None else anonymous
        missing = [(s, p) for s, p in needs
                   if not (grant.allows(s, p) or anonymous.allows(s, p))]
        if missing:
            scope_name, path = missing[0]
            if (needs == [("read", REGISTRY)] and method in ("GET", "HEAD")
                    and (principal is not None or anonymous.read)):
                # The registry lists only the streams this token may read.
                if _query_value(scope, b"live") == "sse":
                    raise _Refusal(403, "SSE on the registry needs read access to all of "
                                        "it; use catch-up or long-poll reads")
                return True, lambda path: grant.allows("read", path) or anonymous.allows(
                    "read", path), principal
            if principal is None:
                raise _Refusal(401, "this request needs a bearer token",
                               [(b"www-authenticate", b"Bearer")])
            raise _Refusal(403, f"token {principal.name!r} lacks {scope_name} access to "
                                f"{path!r}",
                           [(b"www-authenticate", b'Bearer error="insufficient_scope"')])
        # Anything readable without a token may be cached publicly; the rest is private.
        # Only reads carry caching headers worth rewriting.
        return not public and method in ("GET", "HEAD"), None, principal

    def _take_token(self, scope: Scope, authorization: bytes | None) -> str | None:
        token: str | None = None
        if authorization is not None:
            scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _Refusal(401, "Authorization must be 'Bearer <token>'",
                               [(b"www-authenticate", b"Bearer")])
            token = value.strip()
        query: bytes = scope.get("query_string", b"")
        if b"token=" in query:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            values = [v for k, v in pairs if k == "token"]
            if values:
                if len(values) > 1:
                    raise _Refusal(400, "query parameter 'token' given more than once")
                if token is None:
                    token = values[0]
                # The app (and anything that logs its query) never sees the token.
                scope["query_string"] = urlencode(
                    [(k, v) for k, v in pairs if k != "token"]).encode("latin-1")
        return token

    def _needs(self, scope: Scope, method: str,
               forked_from: bytes | None) -> list[tuple[str, str]]:
        """The (scope, stream path) pairs this request needs (docs/security.md has the table)."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        raw = raw.split(b"?", 1)[0]
        root = scope.get("root_path", "").encode()
        if root and raw.startswith(root):
            raw = raw[len(root):]
        if not raw.startswith(self.prefix):
            if raw == b"/metrics" or raw.startswith(b"/metrics/"):
                return [("admin", RESERVED + "/metrics")]
            if raw.startswith(_YJS_ROOT) and method != "OPTIONS":
                # A Yjs document's streams are yjs/{service}/docs/{docPath}/...
                # (docs/yjs.md), so the document is guarded like a stream of that path.
                path = "yjs/" + unquote(raw[len(_YJS_ROOT):].decode("latin-1")).strip("/")
                return [(_YJS_SCOPES.get(method, "admin"), path)]
            # The health probes, the console's static files, and mounts with their own
            # access rules (the proxy's --proxy-secret, PROXY-PROTOCOL.md) are not
            # governed by the auth file.
            return []
        rest = raw[len(self.prefix):]
        if rest.split(b"/", 1)[0] == RESERVED.encode():
            # Control APIs carry stream paths percent-encoded inside their own path
            # (PROTOCOL.md 6: `streams/a%2Fb`), which stream_name refuses; the control
            # API checks its own path, this layer only needs its segments.
            parts = rest.decode("latin-1").split("/")
            name = "/".join(parts)
            if name == RESERVED + "/jwks.json" and method in ("GET", "HEAD"):
                return []  # PROTOCOL.md 6.5: the webhook keys are public
            if (method == "POST" and len(parts) == 4 and parts[1] == "subscriptions"
                    and parts[3] in ("callback", "ack", "release")):
                return []  # 7.1, 7.2: these carry the wake's own bearer token
            return [("admin", name)]
        name = stream_name(rest)
        if method in ("GET", "HEAD"):
            return [("read", name)]
        if method == "OPTIONS":
            return []
        if method == "PUT" and forked_from is not None:
            source = source_stream_name(forked_from.decode("utf-8", "surrogateescape"),
                                        self.prefix.decode())
            return [("admin", name), ("read", source)]
        if method in ("PUT", "POST"):
            return [("write", name)]
        return [("admin", name)]

    # -- answers --------------------------------------------------------------------
    def _cors_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        if origin is None:
            return [(b"access-control-allow-origin", b"*")] if self.any_origin else []
        if origin.lower() in self.origins:
            headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            if self.auth is not None:
                headers.append((b"access-control-allow-credentials", b"true"))
            return headers
        return [(b"access-control-allow-origin", b"*")] if self.any_origin else []

    async def _preflight(self, scope: Scope, origin: bytes, send: Send) -> None:
        listed = origin.lower() in self.origins
        if not (listed or self.any_origin):
            raise _Refusal(403, "this origin is not allowed")
        methods = _ALL_METHODS if self._may_write_from(origin) else _READ_METHODS
        wanted = b""
        for key, value in scope["headers"]:
            if key.lower() == b"access-control-request-method":
                wanted = value.strip().upper()
        if wanted and wanted not in methods.split(b", "):
            await self._refuse(send, _Refusal(403, "this origin may not send write requests"),
                               origin)
            return
        headers = [*SECURITY_HEADERS, *self._cors_headers(origin),
                   (b"access-control-allow-methods", methods),
                   (b"access-control-allow-headers", _ALLOW_HEADERS),
                   (b"access-control-max-age", b"86400"),
                   (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, send: Send, refusal: _Refusal, origin: bytes | None) -> None:
        body = refusal.reason.encode() + b"\n"
        headers = [*SECURITY_HEADERS, *self._cors_headers(origin),
                   (b"content-type", b"text/plain; charset=utf-8"),
                   (b"cache-control", b"no-store"), *refusal.headers,
                   (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _query_value(scope: Scope, name: bytes) -> str | None:
    query: bytes = scope.get("query_string", b"")
    if name not in query:
        return None
    for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if k == name.decode():
            return v
    return None


class _HeaderRewriter:
    """Rewrites response headers: CORS for this origin, and public caching made private."""

    __slots__ = ("_cors", "_private", "_send")

    def __init__(self, send: Send, private: bool, cors: list[tuple[bytes, bytes]]) -> None:
        self._send, self._private, self._cors = send, private, cors

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = []
            for k, v in message.get("headers", []):
                lk = k.lower()
                if lk in (b"access-control-allow-origin", b"access-control-allow-credentials"):
                    continue
                if self._private and lk == b"cache-control" and v.startswith(b"public"):
                    v = b"private" + v[len(b"public"):]
                headers.append((k, v))
            headers.extend(self._cors)
            message = {**message, "headers": headers}
        await self._send(message)


class _RegistryFilter:
    """Buffers a registry read (one chunk at most) and keeps the events of readable streams."""

    __slots__ = ("_body", "_may_read", "_send", "_start")

    def __init__(self, send: Send, may_read: Callable[[str], bool]) -> None:
        self._send = send
        self._start: Message | None = None
        self._body: list[bytes] = []
        self._may_read = may_read

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] != "http.response.body" or self._start is None:
            await self._send(message)
            return
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._body)
        start = self._start
        if start["status"] == 200 and body.startswith(b"["):
            try:
                events = orjson.loads(body)
                body = orjson.dumps([e for e in events if isinstance(e, dict)
                                     and isinstance(e.get("key"), str)
                                     and self._may_read(e["key"])])
            except orjson.JSONDecodeError:
                body = b"[]"
        headers = [(k, b"private, no-store" if k.lower() == b"cache-control" else v)
                   for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-length", b"etag")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def secure(app: ASGIApp, config: Any, auth: AuthConfig | None = None) -> SecurityLayer:
    """Wrap ``app`` in the security layer configured by a ``Config`` (loads the auth file
    unless the caller passes it, already loaded, as ``auth``)."""
    from ..auth import load_auth

    if auth is None and config.auth:
        auth = load_auth(config.auth)
    return SecurityLayer(app, stream_prefix=config.stream_prefix, auth=auth,
                         cors_origins=split_list(config.cors_origins) or ["*"],
                         allowed_hosts=split_list(config.allowed_hosts) or ["*"])
