"""The console sub-app, mounted at ``/``: the page, its assets, and server facts.

It serves only what no other mount does (app.py tries it last):

- ``/`` (and ``/index.html``) with ``Accept: text/html``: the console page. An
  API client asking for ``/`` without wanting HTML gets the one line of JSON
  it always got, so nothing that probed the root changes.
- ``/console/<asset>``: the page's CSS and JavaScript, by name from a fixed list.
- ``/console/info``: version, backend, data directory, start time, stream
  prefix and whether metrics and auth are on, for the page's server panel.

Anything else is the same one-line 404 as before (raised, so the composition
answers it like every other refusal).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from .. import __version__
from ..console import STATIC
from ..protocol.errors import ProtocolError
from .context import ServerContext
from .http import Receive, Scope, Send

_TYPES = {".html": b"text/html; charset=utf-8", ".css": b"text/css; charset=utf-8",
          ".js": b"text/javascript; charset=utf-8", ".svg": b"image/svg+xml"}

# The page loads nothing from elsewhere and runs no inline script (PROTOCOL.md 12.7's
# headers, plus a policy that keeps an injected string from ever becoming code).
_PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class ConsoleApp:
    """Serves the console's static files and ``/console/info``."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.started_at = time.time()
        # The JSON answers carry the CORS header every API answer of the server does.
        self._cors = [(b"access-control-allow-origin", ctx.config.cors_origin.encode())]
        self._assets: dict[str, tuple[bytes, bytes, bytes]] = {}
        for item in STATIC.iterdir():
            suffix = "." + item.name.rsplit(".", 1)[-1]
            if item.is_file() and suffix in _TYPES:
                body = item.read_bytes()
                etag = b'"' + hashlib.blake2b(body, digest_size=8).hexdigest().encode() + b'"'
                self._assets[item.name] = (body, _TYPES[suffix], etag)

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] or "/"
        method: str = scope["method"]
        mine = path in ("/", "/index.html", "/console/info") or (
            path.startswith("/console/") and path[9:] in self._assets)
        if not mine:
            raise ProtocolError(404, f"no streams here; streams live under "
                                     f"{self.ctx.config.stream_prefix}")
        if method not in ("GET", "HEAD"):
            raise ProtocolError(405, f"method {method} is not allowed here",
                                {"allow": "GET, HEAD"})
        if path in ("/", "/index.html"):
            if path == "/" and not _wants_html(scope):
                await _send(send, 200, orjson.dumps({
                    "server": "duralog", "streams": self.ctx.config.stream_prefix}),
                    [(b"content-type", b"application/json"), *self._cors], method)
                return
            await self._asset(scope, send, "index.html")
        elif path == "/console/info":
            await _send(send, 200, orjson.dumps(self.info()),
                        [(b"content-type", b"application/json"),
                         (b"cache-control", b"no-store"), *self._cors], method)
        else:
            await self._asset(scope, send, path[9:])

    def info(self) -> dict[str, Any]:
        config = self.ctx.config
        return {
            "server": "duralog",
            "version": __version__,
            "backend": config.backend,
            # With access control on, anyone may load the page: keep the server's
            # filesystem layout to operators (docs/console.md).
            "dataDir": (config.data_dir if config.backend != "memory"
                        and not getattr(config, "auth", None) else None),
            "startedAt": int(self.started_at * 1000),
            "streamPrefix": config.stream_prefix,
            "metrics": bool(getattr(config, "metrics", True)),
            "auth": bool(getattr(config, "auth", None)),
        }

    async def _asset(self, scope: Scope, send: Send, name: str) -> None:
        body, content_type, etag = self._assets[name]
        headers = [(b"content-type", content_type), (b"etag", etag),
                   (b"cache-control", b"no-cache")]
        for key, value in scope.get("headers", []):
            if key == b"if-none-match" and etag in value:
                await _send(send, 304, b"", headers, "HEAD")
                return
        await _send(send, 200, body, headers, scope["method"])


def _wants_html(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"accept":
            return b"text/html" in value
    return False


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                method: str) -> None:
    all_headers = [*_PAGE_HEADERS, *headers, (b"content-length", str(len(body)).encode())]
    if not any(k == b"content-type" for k, _ in headers):
        all_headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
