"""Unit tests of the proxy's parts: allowlist globs (6, 12.1), signing (7), batching (8.2)."""

from __future__ import annotations

import asyncio

import pytest

from duralog.protocol.state import CreateRequest
from duralog.proxy.allowlist import Allowlist, parse_upstream_url
from duralog.proxy.config import ProxyConfig
from duralog.proxy.errors import ProxyError
from duralog.proxy.pipe import Pipe
from duralog.proxy.signing import sign, verify
from duralog.store import MemoryStore


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://localhost:3000/v1/chat", True),
    ("http://localhost:8080/a/b/c", True),
    ("http://LOCALHOST:1/x", True),
    ("http://localhost.evil.com:1/x", False),
    ("http://localhost/x", False),  # no port: `:*` needs the colon
    ("https://api.example.com/api/v1/chat/completions", True),
    ("https://a.b.example.com/api/v1/x", True),  # reference syntax: `*` is any non-/ run
    ("https://example.com/api/v1/x", False),
    ("https://api.example.com/api/v2/x", False),
    ("https://api.example.com.evil.org/api/v1/x", False),
    ("https://api.openai.com/v1/chat/completions", True),
    ("https://api.openai.com/v1/", True),
])
def test_allowlist_globs(url: str, allowed: bool) -> None:
    allow = Allowlist(["http://localhost:*/**", "https://*.example.com/api/v1/**",
                       "https://api.openai.com/v1/**"])
    assert (allow.match(url) is not None) is allowed


@pytest.mark.parametrize("url", [
    "https://evil.test#.example.com/api/v1/x",
    "https://evil.test?.example.com/api/v1/x",
    "https://evil.test\\.example.com/api/v1/x",
    "https://api.example.com@evil.test/api/v1/x",
    "https://evil.test/.example.com/api/v1/x",
])
def test_allowlist_cannot_be_fooled_by_url_text(url: str) -> None:
    allow = Allowlist(["https://*.example.com/api/v1/**"])
    canonical = parse_upstream_url(url)
    assert canonical is None or allow.match(canonical) is None, canonical


def test_empty_allowlist_refuses_everything() -> None:
    assert Allowlist([]).match("https://api.openai.com/v1/chat") is None


def test_private_addresses_need_a_literal_pattern() -> None:
    async def check(patterns: list[str], url: str, private: bool = False) -> str | None:
        allow = Allowlist(patterns, private)
        rule = allow.match(url)
        assert rule is not None
        return await allow.check_address(url, rule)

    run = asyncio.run
    assert run(check(["http://127.0.0.1:*/**"], "http://127.0.0.1:9/x")) is None
    assert run(check(["http://localhost:*/**"], "http://localhost:9/x")) is None
    assert run(check(["http://*:*/**"], "http://127.0.0.1:9/x")) is not None
    assert run(check(["http://*:*/**"], "http://10.1.2.3:9/x")) is not None
    assert run(check(["http://*:*/**"], "http://169.254.169.254:80/latest")) is not None
    assert run(check(["http://*:*/**"], "http://[::1]:9/x")) is not None
    assert run(check(["http://local*:*/**"], "http://localhost:9/x")) is not None
    assert run(check(["http://*:*/**"], "http://10.1.2.3:9/x", private=True)) is None
    assert run(check(["http://*:*/**"], "http://8.8.8.8:9/x")) is None


def test_upstream_url_shape() -> None:
    assert parse_upstream_url("https://api.example.com/v1") is not None
    for bad in ("ftp://x/y", "/relative", "http://", "http://u:p@host/x", "http://h:99999/",
                "http://h/a b"):
        assert parse_upstream_url(bad) is None, bad


def test_signatures() -> None:
    key = b"k"
    sig = sign(key, "abc", 2_000_000_000)
    verify(key, "abc", "2000000000", sig, now=1_000_000_000)
    for sid, exp, s, code in [("abd", "2000000000", sig, "SIGNATURE_INVALID"),
                              ("abc", "2000000001", sig, "SIGNATURE_INVALID"),
                              ("abc", None, sig, "MISSING_SIGNATURE"),
                              ("abc", "2000000000", None, "MISSING_SIGNATURE"),
                              ("abc", "-5", sig, "SIGNATURE_INVALID")]:
        with pytest.raises(ProxyError) as err:
            verify(key, sid, exp, s, now=1_000_000_000)
        assert err.value.code == code
    with pytest.raises(ProxyError) as err:
        verify(key, "abc", "2000000000", sig, now=2_000_000_001)
    assert err.value.code == "SIGNATURE_EXPIRED"


class _Response:
    """Shaped like an httpx.Response being streamed: chunks, then the end."""

    def __init__(self, chunks: list[bytes], gate: asyncio.Event | None = None) -> None:
        self.chunks = chunks
        self.gate = gate
        self.closed = False

    async def aiter_bytes(self):
        for i, c in enumerate(self.chunks):
            if self.gate is not None and i == 1:
                await self.gate.wait()
            yield c

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("linger", [0.0, 0.02])
def test_pipe_batches_small_chunks_up_to_4k(linger: float) -> None:
    async def main() -> tuple[list[int], bytes, str | None]:
        store = MemoryStore()
        await store.start()
        await store.create("s", CreateRequest(content_type="text/plain"), None)
        sizes: list[int] = []
        real = store.append

        async def counting(path, req):
            sizes.append(len(req.payload))
            return await real(path, req)

        store.append = counting  # type: ignore[method-assign]
        gate = asyncio.Event()
        chunks = [b"x" * 100 for _ in range(200)]
        ended: list[str] = []

        async def on_end(outcome: str) -> None:
            ended.append(outcome)

        pipe = Pipe(store, "s", _Response(chunks, gate), ProxyConfig(batch_linger=linger),
                    on_end)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the first chunk goes out alone, at once
        gate.set()
        await pipe.wait()
        state = store.get("s")
        assert state is not None
        data = b"".join((await store.read(state, 0, 1 << 20)).parts)
        return sizes, data, ended[0] if ended else None

    sizes, data, outcome = asyncio.run(main())
    assert outcome == "complete"
    assert data == b"x" * 20000
    payloads = [s for s in sizes if s]
    assert payloads[0] == 100
    assert all(s <= 4096 + 100 for s in payloads)
    assert len(payloads) < 20  # 200 chunks became a few appends


def test_expired_proxy_streams_are_forgotten() -> None:
    """A proxy stream removed by the store's expiry leaves the proxy's memory too."""
    import logging
    import time
    from types import SimpleNamespace

    from duralog.proxy.server import STREAMS, Meta, ProxyApp
    from duralog.server.config import Config

    async def main() -> tuple[bool, bool]:
        store = MemoryStore()
        await store.start()
        ctx = SimpleNamespace(config=Config(), store=store, metrics=None,
                              log=logging.getLogger("t"))
        app = ProxyApp(ctx, ProxyConfig(enabled=True, allow=[]))
        await app.startup()
        await store.create(STREAMS + "abc", CreateRequest(
            content_type="text/plain", expires_ts=time.time() + 0.05), None)
        await app._record({"id": "abc", "uct": "text/plain"})
        assert app.meta["abc"] == Meta("text/plain")
        await asyncio.sleep(0.1)
        await store.sweep_expired()
        await asyncio.sleep(0.05)
        gone = "abc" not in app.meta
        await app.shutdown()
        # A restart reads the index: the deletion was recorded.
        again = ProxyApp(ctx, ProxyConfig(enabled=True, allow=[]))
        await again.startup()
        await again.shutdown()
        return gone, "abc" not in again.meta

    assert asyncio.run(main()) == (True, True)


def test_service_auth_hook_accepts_other_credentials() -> None:
    """The hook the security layer's scoped tokens plug into (9.1): the shared secret
    is tried first, then the hook, which is told the scope and the stream path the
    operation needs; it accepts (True), refuses (raises) or does not apply (None)."""
    import logging
    from types import SimpleNamespace

    import httpx

    from duralog.proxy.errors import ProxyError
    from duralog.proxy.server import ProxyApp
    from duralog.server.config import Config

    from .servers import ThreadedServer

    asked: list[tuple[str, str]] = []

    def scoped(req, scope, path):
        asked.append((scope, path))
        token = req.header("authorization")
        if token == "Bearer scoped-ok":
            return True
        if token in ("Bearer scoped-bad", "Bearer other"):
            raise ProxyError(401, "INVALID_SECRET", "unknown token")
        return None

    store = MemoryStore()
    ctx = SimpleNamespace(config=Config(), store=store, metrics=None,
                          log=logging.getLogger("t"))
    app = ProxyApp(ctx, ProxyConfig(enabled=True, allow=[], secret="shh"), service_auth=scoped)

    async def lifespan_app(scope, receive, send):
        if scope["type"] == "lifespan":
            await store.start()
        await app(scope, receive, send)

    def post(auth: str | None) -> httpx.Response:
        headers = {"Upstream-URL": "https://x.test/", "Upstream-Method": "GET"}
        if auth is not None:
            headers["Authorization"] = auth
        return httpx.post(server.url, headers=headers)

    with ThreadedServer(lifespan_app) as server:
        # Authorized (by the hook or the secret): the request goes on to the allowlist.
        assert post("Bearer scoped-ok").json()["error"]["code"] == "UPSTREAM_NOT_ALLOWED"
        scope, path = asked[-1]
        assert scope == "write" and path.startswith("__ds/proxy/s/")  # create = write
        before = len(asked)
        assert post("Bearer shh").json()["error"]["code"] == "UPSTREAM_NOT_ALLOWED"
        assert len(asked) == before  # the secret decided; the hook was not asked
        assert post("Bearer scoped-bad").json()["error"]["code"] == "INVALID_SECRET"
        assert post("Bearer other").json()["error"]["code"] == "INVALID_SECRET"
        assert post(None).json()["error"]["code"] == "MISSING_SECRET"
        # HEAD needs read, DELETE admin, on the stream's own path.
        httpx.delete(server.url + "/abc", headers={"Authorization": "Bearer scoped-ok"})
        assert asked[-1] == ("admin", "__ds/proxy/s/abc")
        httpx.head(server.url + "/abc", headers={"Authorization": "Bearer scoped-ok"})
        assert asked[-1] == ("read", "__ds/proxy/s/abc")


def test_connections_are_checked_on_the_address_they_open() -> None:
    """12.1 at connect time (against DNS rebinding): the socket itself is refused."""
    import socket

    import httpcore

    from duralog.proxy.upstream import CheckedBackend

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def connect(patterns: list[str], host: str) -> bool:
        backend = CheckedBackend(Allowlist(patterns))
        try:
            stream = await backend.connect_tcp(host, port, timeout=5)
        except httpcore.ConnectError:
            return False
        await stream.aclose()
        return True

    try:
        assert asyncio.run(connect(["http://*:*/**"], "localhost")) is False
        assert asyncio.run(connect(["http://*:*/**"], "127.0.0.1")) is False
        assert asyncio.run(connect(["http://localhost:*/**"], "localhost")) is True
        assert asyncio.run(connect(["http://127.0.0.1:*/**"], "127.0.0.1")) is True
    finally:
        listener.close()
