"""nginx as a caching, collapsing edge (deploy/nginx-cdn.conf) and many long-poll readers
behind it.

Shared by tests/test_cdn.py and the ``cdn`` scenario of ``python -m bench``:

- ``render`` turns deploy/nginx-cdn.conf into a runnable nginx.conf, replacing only
  the upstream address, the listen address and the cache path (plus the main-context
  lines every local nginx needs: pid, error log, temp paths, connection limits).
- ``Nginx`` runs it in the foreground and stops it.
- ``collapse`` connects N long-poll readers (asyncio, raw sockets, one keep-alive
  connection each) to one stream, appends several times in a row and checks that
  every reader got every append, byte for byte, each following the next offset and
  cursor it was given (PROTOCOL.md 5.7, 10.1). It reports delivery latencies and how
  many reads reached the origin, from the origin's own request counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx-cdn.conf"

_UPSTREAM_LINE = "    server 127.0.0.1:4437;\n"
_LISTEN_LINE = "    listen 80;\n"
_CACHE_PATH = "/var/cache/nginx/duralog"


def render(upstreams: list[int], port: int, base: Path, connections: int = 4096,
           text: str | None = None) -> str:
    """deploy/nginx-cdn.conf as written, inside a main context for a local nginx."""
    block = CONF.read_text() if text is None else text
    for old in (_UPSTREAM_LINE, _LISTEN_LINE, _CACHE_PATH):
        if old not in block:
            raise ValueError(f"deploy/nginx-cdn.conf no longer has {old.strip()!r}")
    block = block.replace(_UPSTREAM_LINE, "".join(
        f"    server 127.0.0.1:{p};\n" for p in upstreams))
    block = block.replace(_LISTEN_LINE, f"    listen 127.0.0.1:{port} backlog=4096;\n")
    block = block.replace(_CACHE_PATH, str(base / "cache"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = connections + 64 if hard == resource.RLIM_INFINITY else min(hard, connections + 64)
    temps = "".join(f"  {d}_temp_path {base}/{d};\n" for d in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return ("user root;\n" if os.geteuid() == 0 else "") + (
        f"pid {base}/nginx.pid;\nerror_log {base}/error.log warn;\n"
        f"worker_processes 1;\nworker_rlimit_nofile {files};\n"
        f"events {{\n  worker_connections {connections};\n}}\n"
        f"http {{\n{_access_log(base)}{temps}" + block + "}\n")


def _access_log(base: Path) -> str:
    """Off, unless DURALOG_CDN_ACCESS_LOG is set (to see which requests hit the cache)."""
    if not os.environ.get("DURALOG_CDN_ACCESS_LOG"):
        return "  access_log off;\n"
    return ("  log_format cdn '$msec $upstream_cache_status $status $request_uri';\n"
            f"  access_log {base}/access.log cdn;\n")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)


class Nginx:
    """nginx in the foreground with the rendered deploy/nginx-cdn.conf."""

    def __init__(self, base: Path, upstreams: list[int], port: int,
                 connections: int = 4096) -> None:
        self.base = base
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        base.mkdir(parents=True, exist_ok=True)
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"):
            (base / d).mkdir(exist_ok=True)
        self.conf = base / "nginx.conf"
        self.conf.write_text(render(upstreams, port, base, connections))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is required (scripts/test installs it with apt-get)")
        self.proc = subprocess.Popen([binary, "-p", str(self.base), "-c", str(self.conf),
                                      "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}{self.error_log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # an answer (the reference has no /healthz): nginx is up
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not answer: {self.error_log()}") from None
                time.sleep(0.05)

    def error_log(self) -> str:
        p = self.base / "error.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_GET_LINE = re.compile(rb'^duralog_http_requests_total\{method="GET",status="(\d+)"\} (\S+)$',
                       re.M)


def origin_gets(origin: str) -> int:
    """GET requests the origin has answered (its /metrics counter), all statuses."""
    with urllib.request.urlopen(origin + "/metrics", timeout=10) as r:
        text = r.read()
    return int(sum(float(v) for _, v in _GET_LINE.findall(text)))


def _origin_gets(roots: list[str]) -> int | None:
    """GETs answered by all these nodes; None when one has no /metrics (the Node reference)."""
    try:
        return sum(origin_gets(root) for root in roots)
    except OSError:
        return None


# -- the readers ---------------------------------------------------------------------------
@dataclass
class _Reader:
    offset: str
    cursor: str | None = None
    data: bytearray = field(default_factory=bytearray)
    got_at: dict[int, float] = field(default_factory=dict)  # append index -> arrival
    requests: int = 0
    answers: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    waiting: bool = False  # a request is out and not answered yet
    cursors_seen: int = 0  # answers that carried a Stream-Cursor (it must always be there)


async def _response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            n = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            if n == 0:
                await r.readuntil(b"\r\n")
                break
            parts.append(await r.readexactly(n))
            await r.readexactly(2)
        return status, headers, b"".join(parts)
    return status, headers, await r.readexactly(int(headers.get("content-length", "0")))


_MARK = re.compile(rb"<(\d+)>")


async def _follow(reader: _Reader, host: str, port: int, path: str, stop: asyncio.Event,
                  on_data: Any) -> None:
    """One reader: long-poll after long-poll on one keep-alive connection, echoing the
    cursor and following Stream-Next-Offset; reconnects when the connection ends."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port, limit=1 << 20)
            r, w = conn
            # PROTOCOL.md 10.1: parameters in lexicographic order, the cursor echoed.
            query = (f"cursor={quote(reader.cursor)}&" if reader.cursor else "") + \
                f"live=long-poll&offset={quote(reader.offset)}"
            w.write(f"GET {path}?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            reader.requests += 1
            reader.waiting = True
            status, headers, body = await _response(r)
            reader.waiting = False
            now = time.perf_counter()
            reader.answers += 1
            if status not in (200, 204):
                raise RuntimeError(f"HTTP {status} {body[:100]!r}")
            if "stream-cursor" in headers:
                reader.cursors_seen += 1
                reader.cursor = headers["stream-cursor"]
            reader.offset = headers["stream-next-offset"]
            if body:
                reader.data += body
                for m in _MARK.findall(body):
                    reader.got_at.setdefault(int(m), now)
                on_data()
            if headers.get("connection", "").lower() == "close":
                w.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as err:
            reader.waiting = False
            if stop.is_set():
                break
            reader.errors += 1
            if len(reader.error_samples) < 3:
                reader.error_samples.append(f"{type(err).__name__}: {err}")
            if conn is not None:
                conn[1].close()
                conn = None
            await asyncio.sleep(0.2)
    if conn is not None:
        conn[1].close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _append(host: str, port: int, path: str, body: bytes) -> None:
    r, w = await asyncio.open_connection(host, port)
    w.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    status, _, text = await _response(r)
    w.close()
    if status not in (200, 204):
        raise RuntimeError(f"append: HTTP {status} {text[:200]!r}")


async def collapse(edge: str, origin: str, stream: str, readers: int, appends: int = 5,
                   gap_s: float = 0.2, size: int = 100, deliver_timeout: float = 60.0,
                   connect_batch: int = 500, nodes: list[str] | None = None) -> dict[str, Any]:
    """N long-poll readers on ``edge`` (nginx, or the origin itself for the comparison),
    appends through ``origin``; see the module docstring. The stream must exist (text/plain)
    and be empty. Origin requests are counted on ``nodes`` (base URLs; default: the origin),
    every node the edge may send requests to."""
    ehost, eport, prefix = _split(edge)
    ohost, oport, oprefix = _split(origin)
    path, opath = f"{prefix}/{stream}", f"{oprefix}/{stream}"
    roots = nodes or [f"http://{ohost}:{oport}"]
    tail_r, tail_w = await asyncio.open_connection(ohost, oport)
    tail_w.write(f"HEAD {opath} HTTP/1.1\r\nHost: {ohost}\r\nConnection: close\r\n\r\n".encode())
    _, head, _ = await _response(tail_r)
    tail_w.close()
    start = head["stream-next-offset"]
    stop = asyncio.Event()
    got = asyncio.Event()
    rs = [_Reader(start) for _ in range(readers)]
    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    for k in range(0, readers, connect_batch):
        batch = rs[k:k + connect_batch]
        tasks += [asyncio.create_task(_follow(r, ehost, eport, path, stop, got.set))
                  for r in batch]
        deadline = time.perf_counter() + 30
        while any(not r.waiting for r in batch) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
    connect_s = time.perf_counter() - t0
    # Sent is not yet read by the edge: give it a moment to take every request in.
    await asyncio.sleep(0.5 + readers / 5000)
    gets_before = await asyncio.to_thread(_origin_gets, roots)
    sent: list[float] = []
    expected = bytearray()
    per_append: list[float | None] = []
    for i in range(appends):
        deadline = time.perf_counter() + deliver_timeout
        while any(not r.waiting for r in rs) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(gap_s)
        body = (f"<{i}>".encode() + b"x" * size)[:max(size, 8)]
        expected += body
        sent.append(time.perf_counter())
        await _append(ohost, oport, opath, body)
        while time.perf_counter() < deadline:
            if all(i in r.got_at for r in rs):
                break
            got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 0.05)
        have = [r.got_at[i] for r in rs if i in r.got_at]
        per_append.append(max(have) - sent[i] if len(have) == len(rs) else None)
    # Every reader's next long-poll is out again (collapsed into one at the edge)
    # before the origin's counter is read, so the count is of whole rounds.
    deadline = time.perf_counter() + 10
    while any(not r.waiting for r in rs) and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    gets_after = await asyncio.to_thread(_origin_gets, roots)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    delays = [(r.got_at[i] - sent[i]) * 1000 for r in rs for i in range(appends)
              if i in r.got_at]
    complete = sum(1 for r in rs if bytes(r.data) == bytes(expected))
    missing = sum(1 for r in rs for i in range(appends) if i not in r.got_at)
    # The second metrics scrape counts the first one: those GETs are not a reader's.
    origin = None if gets_after is None or gets_before is None else \
        gets_after - gets_before - len(roots)
    return {
        "readers": readers, "appends": appends, "connect_s": round(connect_s, 2),
        "complete_readers": complete, "missing_deliveries": missing,
        "errors": sum(r.errors for r in rs),
        "error_samples": [s for r in rs for s in r.error_samples][:5],
        "answers_without_cursor": sum(r.answers - r.cursors_seen for r in rs),
        "origin_gets": origin,
        "origin_gets_per_append": None if origin is None else origin / appends,
        "delivery_ms": {"n": len(delays), "p50": _pct(delays, 0.5), "p90": _pct(delays, 0.9),
                        "p99": _pct(delays, 0.99), "max": max(delays, default=None)},
        "all_readers_ms": [None if x is None else round(x * 1000, 1) for x in per_append],
    }


def _split(url: str) -> tuple[str, int, str]:
    p = urlsplit(url)
    path = p.path.rstrip("/") or "/v1/stream"
    return p.hostname or "127.0.0.1", p.port or 80, path


def run_collapse(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``collapse`` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
        return uvloop.run(collapse(*args, **kwargs))
    except ImportError:
        return asyncio.run(collapse(*args, **kwargs))
