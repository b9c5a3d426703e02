"""The Host rule of issue 9 (RFC 9112 3.2, ``--allowed-hosts``) with duralog embedded.

``duralog serve`` refuses a missing or repeated Host in its HTTP layer
(server/limits.py; tests/test_auth.py). Mounted in someone else's ASGI server
that layer is not there, so the security layer enforces the rule itself: here
through plain ASGI calls (every HTTP version a server may report) and through
uvicorn's stock server with duralog mounted in Starlette, over raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from duralog.server import Config, DuralogApp

from .servers import ThreadedServer

pytestmark = pytest.mark.timeout(60)

ALLOWED = "streams.example, 127.0.0.1"


async def _call(app: DuralogApp, headers: list[tuple[bytes, bytes]],
                http_version: str = "1.1") -> tuple[int, bytes]:
    sent: list[dict] = []
    pending = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    path = "/v1/stream/h"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": http_version,
             "method": "PUT", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
    await asyncio.wait_for(app(scope, receive, send), 10)  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], body


def _statuses(allowed: str, cases: list[tuple[list[tuple[bytes, bytes]], str]]) -> list[int]:
    async def run() -> list[int]:
        app = DuralogApp(Config(backend="memory", allowed_hosts=allowed))
        try:
            out = []
            for headers, version in cases:
                status, body = await _call(app, headers, version)
                if status == 400:
                    assert b"Host" in body, body
                out.append(status)
            return out
        finally:
            await app.shutdown()
    return asyncio.run(run())


def test_asgi_host_rules_with_a_host_list() -> None:
    h = b"host"
    statuses = _statuses(ALLOWED, [
        ([(h, b"streams.example")], "1.1"),           # listed: created
        ([(h, b"STREAMS.example:8443")], "1.1"),      # listed, any case, with a port
        ([(h, b"attacker.example")], "1.1"),          # not listed
        ([(h, b"streams.example.attacker.example")], "1.1"),
        ([], "1.1"),                                  # missing on HTTP/1.1
        ([], "1.0"),                                  # missing: nothing to check the list against
        ([], "2"),
        ([(h, b"streams.example"), (h, b"streams.example")], "1.1"),  # repeated
        ([(h, b"streams.example"), (h, b"attacker.example")], "2"),
    ])
    assert statuses == [201, 200, 400, 400, 400, 400, 400, 400, 400], statuses


def test_asgi_host_rules_with_every_host_allowed() -> None:
    h = b"host"
    statuses = _statuses("*", [
        ([(h, b"anything.example")], "1.1"),
        ([], "1.1"),                                  # RFC 9112 3.2: HTTP/1.1 needs Host
        ([], "1.0"),                                  # HTTP/1.0 had no such rule
        ([], "2"),                                    # HTTP/2 may carry only :authority
        ([(h, b"a"), (h, b"b")], "1.1"),
    ])
    assert statuses == [201, 400, 200, 200, 400], statuses


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    data: Path = tmp_path_factory.mktemp("hosts-embedded")
    streams = DuralogApp(Config(backend="memory", data_dir=str(data), allowed_hosts=ALLOWED))
    app = Starlette(routes=[Mount("/streams", app=streams)])
    with ThreadedServer(app) as srv:
        yield srv


def _raw(srv: ThreadedServer, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(head)
        out = b""
        while b"\r\n\r\n" not in out:
            data = s.recv(65536)
            if not data:
                break
            out += data
        return out


@pytest.mark.parametrize(("host_lines", "status"), [
    (b"Host: streams.example\r\n", b"201"),
    (b"Host: attacker.example\r\n", b"400"),
    (b"", b"400"),
    (b"Host: streams.example\r\nHost: streams.example\r\n", b"400"),
])
def test_mounted_under_stock_uvicorn(mounted: ThreadedServer, host_lines: bytes,
                                     status: bytes) -> None:
    """uvicorn itself passes all four on; duralog's layer answers them."""
    answer = _raw(mounted, b"PUT /streams/v1/stream/m HTTP/1.1\r\n" + host_lines
                  + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    if status == b"400":
        assert b"x-content-type-options: nosniff" in answer.lower()
