"""Fixtures' helpers for the proxy tests: a fake upstream and proxy servers."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from .servers import ServerProcess, free_port

SECRET = "s3cret-for-tests"
ALLOW = "http://127.0.0.1:*/**,http://local*:*/**"


def proxy_server(backend: str = "memory", data_dir: Path | str = "/nonexistent",
                 log_path: Path | None = None, port: int | None = None,
                 secret: str | None = SECRET, extra_args: tuple[str, ...] = (),
                 **env: str) -> ServerProcess:
    """``duralog serve --proxy`` in a subprocess (short timeouts from the environment)."""
    port = port or free_port()
    args = [sys.executable, "-m", "duralog", "serve", "--port", str(port), "--backend", backend,
            "--data-dir", str(data_dir), "--proxy", "--proxy-allow", ALLOW, *extra_args]
    if secret is not None:
        args += ["--proxy-secret", secret]
    # Short enough for the timeout tests, long enough for 100 creates on a busy machine.
    base = {"DURALOG_PROXY_HEADER_TIMEOUT": "5", "DURALOG_PROXY_BODY_TIMEOUT": "3"}
    return ServerProcess(args, port, env={**base, **env}, log_path=log_path)


def create(proxy: str, upstream: str, method: str = "POST", body: bytes = b"",
           headers: dict[str, str] | None = None, secret: str | None = SECRET) -> httpx.Response:
    h = {"Upstream-URL": upstream, "Upstream-Method": method}
    if secret is not None:
        h["Authorization"] = f"Bearer {secret}"
    h.update(headers or {})
    return httpx.post(proxy + "/v1/proxy", headers=h, content=body, timeout=30)


def at(url: str, params: dict[str, object] | None = None) -> httpx.URL:
    """``url`` with ``params`` added to its query (httpx's params= would replace it)."""
    return httpx.URL(url).copy_merge_params(params or {})


def read_until_closed(location: str, live: str = "long-poll", offset: str = "-1",
                      timeout: float = 60) -> tuple[bytes, httpx.Response]:
    """Every byte from ``offset`` to the close, and the last response."""
    parts = []
    with httpx.Client(timeout=timeout) as client:
        while True:
            r = client.get(at(location, {"offset": offset, "live": live}))
            assert r.status_code in (200, 204), (r.status_code, r.text)
            if r.status_code == 200:
                parts.append(r.content)
            offset = r.headers["stream-next-offset"]
            if r.headers.get("stream-closed") == "true":
                return b"".join(parts), r
