"""A minimal blocking HTTP/1.1 client on a raw socket.

Used for set-up (create, fill, delete streams) and for catch-up reads, where the
client must not be the bottleneck: bodies are received with ``recv_into`` into one
reusable buffer and only counted unless the caller asks to keep them. It handles
``Content-Length`` and chunked bodies and nothing else (no TLS, no redirects).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

_SCRATCH = 1 << 20


def split_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    size: int  # body bytes received (also when the body was not kept)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Conn:
    """One keep-alive connection."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.scratch = bytearray(_SCRATCH)
        self.view = memoryview(self.scratch)

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None, keep_body: bool = True) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        auth = os.environ.get("BENCH_AUTHORIZATION")
        if auth:
            lines.append(f"Authorization: {auth}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if len(body) > 65536:
            self.sock.sendall(head)
            self.sock.sendall(body)
        else:
            self.sock.sendall(head + body)
        return self._response(method, keep_body)

    # -- receiving -------------------------------------------------------------
    def _fill(self) -> None:
        n = self.sock.recv_into(self.view)
        if n == 0:
            raise ConnectionError("server closed the connection")
        self.buf += self.view[:n]

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def _exactly(self, n: int, keep: bool) -> bytes:
        """Take n body bytes: first from the buffer, then straight from the socket."""
        out: list[bytes] = []
        take = min(n, len(self.buf))
        if take:
            if keep:
                out.append(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take
        while n > 0:
            got = self.sock.recv_into(self.view, min(n, _SCRATCH))
            if got == 0:
                raise ConnectionError("server closed the connection mid-body")
            if keep:
                out.append(bytes(self.view[:got]))
            n -= got
        return b"".join(out)

    def _response(self, method: str, keep: bool) -> Response:
        status_line = self._line()
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b"", 0)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            size = 0
            while True:
                n = int(self._line().split(b";", 1)[0], 16)
                if n == 0:
                    while self._line():  # trailers
                        pass
                    break
                parts.append(self._exactly(n, keep))
                size += n
                self._line()
            return Response(status, headers, b"".join(parts), size)
        length = int(headers.get("content-length", "0"))
        return Response(status, headers, self._exactly(length, keep), length)


class Client:
    """Requests against one stream namespace (``http://host:port/v1/stream``)."""

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        host, port, path = split_url(base)
        self.prefix = path.rstrip("/")
        self.conn = Conn(host, port, timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, stream: str, body: bytes = b"", query: str = "",
             headers: dict[str, str] | None = None, keep_body: bool = True) -> Response:
        path = f"{self.prefix}/{stream}" + (f"?{query}" if query else "")
        return self.conn.request(method, path, body, headers, keep_body)

    def create(self, stream: str, content_type: str) -> Response:
        r = self.call("PUT", stream, headers={"Content-Type": content_type})
        if r.status not in (200, 201):
            raise RuntimeError(f"creating {stream}: HTTP {r.status} {r.body[:200]!r}")
        return r

    def append(self, stream: str, body: bytes, content_type: str) -> Response:
        r = self.call("POST", stream, body, headers={"Content-Type": content_type})
        if r.status not in (200, 204):
            raise RuntimeError(f"appending to {stream}: HTTP {r.status} {r.body[:200]!r}")
        return r

    def delete(self, stream: str) -> None:
        self.call("DELETE", stream)
