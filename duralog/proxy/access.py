"""Who may do what on the proxy (PROXY-PROTOCOL.md 7, 9).

Two kinds of credential:

- the pre-signed URL (7): reads (GET) and abort (PATCH), one stream each;
- service auth (9.1): create (POST), HEAD, DELETE, and reads as a fallback
  (9.2). Service auth is the shared secret (``--proxy-secret``, as
  ``Authorization: Bearer <secret>`` or ``?secret=``, like the reference
  proxy) and, when the server runs with an auth file (``--auth``), the
  security layer's scoped tokens (duralog/auth.py): a token is accepted when
  its grant covers the operation's scope on the proxy stream's path,
  ``__ds/proxy/s/{id}`` (the name the body is stored under):

  ============  ======  ==============================================
  operation     scope   why
  ============  ======  ==============================================
  POST create   write   creating a stream is ``write`` (PUT) in the
                        stream API; the id is new, so the pattern must
                        cover every id (``__ds/proxy/s/*``)
  GET read      read    as a stream read
  HEAD          read    as a stream HEAD
  DELETE        admin   as a stream DELETE (it also aborts the upstream)
  PATCH abort   none    4.3 and 9.2: the pre-signed URL only, never
                        service auth, so no token either
  ============  ======  ==============================================

Abort stays with the URL's holder, as the protocol requires; a service that
must stop a generation it did not start deletes it (admin).
"""

from __future__ import annotations

import hmac
from typing import Protocol

from ..auth import AuthConfig, RateLimiter, TokenError
from .asgi import Request
from .config import ProxyConfig
from .errors import ProxyError
from .signing import verify

STREAMS = "__ds/proxy/s/"  # where proxy bodies are stored; the path tokens are scoped on

# The scope a token needs for each proxy operation (see the module docstring).
CREATE, READ, HEAD, DELETE = "write", "read", "read", "admin"


def stream_path(stream_id: str) -> str:
    return STREAMS + stream_id


class ServiceAuth(Protocol):
    """A check for service credentials other than the shared secret.

    Given the request and the (scope, stream path) the operation needs: True to
    accept, None when the request carries no credential of this kind; a
    credential it refuses raises the ProxyError to answer (401, 403, 429)."""

    def __call__(self, req: Request, scope: str, path: str) -> bool | None: ...


class TokenAuth:
    """The auth file's tokens (static and minted) as proxy service auth.

    The token comes as the security layer takes it: ``Authorization: Bearer``,
    else a ``token`` query parameter. Refusals answer like the rest of the
    proxy (the 11 envelope) with the security layer's meaning: 401 for an
    unknown, forged or expired token, 403 for one outside its scope, 429 over
    the per-token rate limit. The ``[anonymous]`` grant applies too."""

    def __init__(self, auth: AuthConfig) -> None:
        self.auth = auth
        # Counted apart from the stream API's buckets (server/auth.py): the
        # proxy's paths are not the security layer's to count.
        self.limiter = RateLimiter(auth.token_rate) if auth.token_rate else None

    def __call__(self, req: Request, scope: str, path: str) -> bool | None:
        token = _bearer(req)
        if token is None:
            token = req.query.get("token") or None
        if token is None:
            return True if self.auth.anonymous.allows(scope, path) else None
        try:
            principal = self.auth.authenticate(token)
        except TokenError as err:
            raise ProxyError(401, "INVALID_SECRET", f"invalid token: {err}",
                             {"www-authenticate": 'Bearer error="invalid_token"'}) from None
        if self.limiter is not None:
            wait = self.limiter.check(principal.key)
            if wait > 0:
                raise ProxyError(429, "RATE_LIMITED", "too many requests; slow down",
                                 {"retry-after": str(max(1, int(wait + 0.999)))})
        if principal.grant.allows(scope, path) or self.auth.anonymous.allows(scope, path):
            return True
        raise ProxyError(403, "INSUFFICIENT_SCOPE",
                         f"token {principal.name!r} lacks {scope} access to {path!r}",
                         {"www-authenticate": 'Bearer error="insufficient_scope"'})


def _bearer(req: Request) -> str | None:
    auth = req.header("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


class Access:
    """The checks of 7.2 and 9 for one proxy."""

    def __init__(self, config: ProxyConfig, service_auth: ServiceAuth | None = None) -> None:
        self.config = config
        self.service_auth = service_auth

    @property
    def open(self) -> bool:
        """No service auth configured: service operations need no credential
        (docs/proxy.md says when that is acceptable)."""
        return self.config.secret is None and self.service_auth is None

    def _credentials(self, req: Request, scope: str, path: str) -> bool | None:
        """True when service credentials are present and good, False when present and
        wrong, None when absent. The hook may raise its own refusal."""
        given: list[str] = []
        if "secret" in req.query:
            given.append(req.query["secret"])
        bearer = _bearer(req)
        if bearer is not None:
            given.append(bearer)
        secret = self.config.secret
        if secret is not None and any(hmac.compare_digest(g.encode(), secret.encode())
                                      for g in given):
            return True
        if self.service_auth is not None:
            verdict = self.service_auth(req, scope, path)
            if verdict is not None:
                return verdict
        if not given:
            return None
        return self.open

    def service(self, req: Request, scope: str, path: str) -> None:
        """9.1: raise unless service auth allows ``scope`` on ``path``."""
        verdict = self._credentials(req, scope, path)
        if verdict:
            return
        if verdict is None:
            if self.open:
                return
            raise ProxyError(401, "MISSING_SECRET", "service authentication is required")
        raise ProxyError(401, "INVALID_SECRET", "service authentication is invalid")

    def stream(self, req: Request, stream_id: str, *, fallback: bool) -> None:
        """7.2 / 9.2: a pre-signed URL; for reads (``fallback``), service auth too."""
        expires, signature = req.query.get("expires"), req.query.get("signature")
        try:
            verify(self.config.key(), stream_id, expires, signature)
        except ProxyError as url_error:
            if not fallback:
                raise
            presigned = bool(expires or signature)
            try:
                verdict = self._credentials(req, READ, stream_path(stream_id))
            except ProxyError:
                if presigned:
                    raise url_error from None  # the URL it meant to use is what failed
                raise
            if verdict or (verdict is None and not presigned and self.open):
                return
            raise
