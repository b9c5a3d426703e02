"""Input rules of issue 9 (part 5) against real servers on both backends.

Content-Type is short visible ASCII and echoed byte for byte; invalid
percent-escapes in a stream path are refused; JSON deeper than the server
accepts gets a 400 on append and on the fork path that writes messages again.
"""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from duralog.protocol.jsonmode import MAX_DEPTH

from .servers import ServerProcess

ZERO = "0000000000000000_0000000000000000"


def _raw(server: ServerProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("path", ["x%zz", "x%", "x%4", "x%G0", "a/b%2", "%%41"])
def test_invalid_percent_escapes(any_server: ServerProcess, path: str) -> None:
    answer = _raw(any_server, f"PUT /v1/stream/{path} HTTP/1.1\r\nHost: x\r\n"
                              f"Content-Length: 0\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]


def test_escaped_percent_is_its_own_stream(any_server: ServerProcess) -> None:
    name = f"pct-{uuid.uuid4().hex[:8]}%25zz"
    r = httpx.put(f"{any_server.url}/v1/stream/{name}")
    assert r.status_code == 201
    raw = _raw(any_server, f"HEAD /v1/stream/{name[:-4]}%zz HTTP/1.1\r\nHost: x\r\n\r\n"
               .encode())
    assert raw.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("content_type", [
    "text/plain; x=" + "a" * 300,  # longer than 256 bytes
    "text/plain; x=\u00ff",  # not ASCII (sent as the byte 0xFF)
    "text/plain; x=\ta",  # a control character
])
def test_bad_content_types(any_server: ServerProcess, content_type: str) -> None:
    name = f"ct-{uuid.uuid4().hex[:8]}"
    request = (f"PUT /v1/stream/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
               f"Content-Type: {content_type}\r\n\r\n").encode("latin-1")
    assert _raw(any_server, request).startswith(b"HTTP/1.1 400")
    assert httpx.head(f"{any_server.url}/v1/stream/{name}").status_code == 404


def test_content_type_echoed_byte_for_byte(any_server: ServerProcess) -> None:
    name = f"ct-{uuid.uuid4().hex[:8]}"
    content_type = "Text/Plain;  Charset=\"UTF-8\" ; x=" + "a" * 200
    assert len(content_type) <= 256
    r = httpx.put(f"{any_server.url}/v1/stream/{name}", headers={"content-type": content_type})
    assert r.status_code == 201
    for method in ("HEAD", "GET"):
        r = httpx.request(method, f"{any_server.url}/v1/stream/{name}",
                          params={"offset": "-1"} if method == "GET" else None)
        assert r.headers.raw and dict(
            (k.lower(), v) for k, v in r.headers.raw)[b"content-type"] == content_type.encode()


def _nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"[1]" + b"}" * (depth - 1)


def test_json_depth_limit_on_append_and_fork(any_server: ServerProcess) -> None:
    base = f"{any_server.url}/v1/stream/depth-{uuid.uuid4().hex[:8]}"
    json = {"content-type": "application/json"}
    assert httpx.put(base, headers=json).status_code == 201
    r = httpx.post(base, headers=json, content=_nested(MAX_DEPTH + 1))
    assert r.status_code == 400 and "nested" in r.text
    # The deepest accepted message can be forked into, message by message (4.2).
    deepest = _nested(MAX_DEPTH - 1)
    r = httpx.post(base, headers=json, content=b"[" + deepest + b"," + deepest + b"]")
    assert r.status_code == 204, r.text
    r = httpx.put(base + "-fork", headers={"stream-forked-from": httpx.URL(base).path,
                                           "stream-fork-offset": ZERO,
                                           "stream-fork-sub-offset": "1"})
    assert r.status_code == 201, r.text
    r = httpx.get(base + "-fork", params={"offset": "-1"})
    assert r.status_code == 200
    assert len(r.json()) == 1


def test_sub_offset_fork_into_a_big_append(any_server: ServerProcess) -> None:
    """The issue's million-message append, forked at message 500,000: the inherited
    messages are exactly the first half."""
    base = f"{any_server.url}/v1/stream/bigfork-{uuid.uuid4().hex[:8]}"
    json = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        assert client.put(base, headers=json).status_code == 201
        body = b"[" + b",".join(b"%d" % i for i in range(1_000_000)) + b"]"
        assert client.post(base, headers=json, content=body).status_code == 204
        r = client.put(base + "-f", headers={"stream-forked-from": httpx.URL(base).path,
                                             "stream-fork-offset": ZERO,
                                             "stream-fork-sub-offset": "500000"})
        assert r.status_code == 201, r.text
        r = client.get(base + "-f", params={"offset": "-1"})
        assert r.json() == list(range(500_000))
