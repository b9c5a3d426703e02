"""``python -m bench.native_limits [uvicorn|granian|hypercorn ...]``: which of issue 9's
HTTP limits an ASGI server enforces, measured over raw sockets against duralog's app.

Each server runs duralog (memory backend) with its own settings for the limits
where it has one, timeouts set to 2 s so that the probes finish quickly:

- uvicorn: ``duralog serve`` (uvicorn + duralog's limits.py protocol);
- granian: ``--http1-header-read-timeout 2000`` (it has no body or send timeout);
- hypercorn: ``--read-timeout 2 --keep-alive 2`` (pip install hypercorn first: it
  is not a dependency).

Probes: a 9 KiB request line; 101 small header fields; 20 KiB of headers; one
16 MiB header (the answer, how much the server took before answering, RSS
growth); a request head that stops, one trickled a line every 0.5 s, a body
that stops, a 16 MiB response never read (each: closed within 8 s?). The
figures and the decision are in docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from tests.servers import ROOT, free_port

from .targets import process_tree, rss_bytes

WINDOW = 8.0


def command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "duralog", "serve", "--port", str(port), "--backend",
                "memory", "--header-timeout", "2", "--body-timeout", "2", "--send-timeout", "2"]
    if server == "granian":
        return [shutil.which("granian") or "granian", "--interface", "asgi", "--host",
                "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--no-access-log",
                "--http1-header-read-timeout", "2000", "--factory",
                "duralog.server.app:create_app"]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                "--worker-class", "uvloop", "--read-timeout", "2", "--keep-alive", "2",
                "duralog.server.app:create_app()"]
    raise SystemExit(f"unknown server {server!r}")


def status_of(port: int, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
        except OSError as err:
            return f"send failed ({type(err).__name__})"
        return first_line(s)


def first_line(s: socket.socket) -> str:
    out = b""
    try:
        while b"\r\n" not in out:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    except OSError as err:
        return f"{type(err).__name__}" if not out else out.split(b"\r\n")[0].decode()
    return out.split(b"\r\n")[0].decode(errors="replace") or "closed without an answer"


def huge_header(port: int, pids: list[int]) -> str:
    before = rss_bytes(pids)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"v" * (1 << 20)
            for _ in range(16):
                s.sendall(chunk)
                sent += len(chunk)
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass
        grown = (rss_bytes(pids) - before) >> 20
        answer = first_line(s)
    return f"{answer}; took {sent >> 20} MiB before answering; RSS +{grown} MiB"


def closed_within(port: int, head: bytes, then: Any = None) -> str:
    """Send ``head``, optionally keep going (``then(sock)``), and see whether the server
    closes the connection within WINDOW seconds."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=WINDOW) as s:
        s.sendall(head)
        if then is not None:
            then(s, t0)
        s.settimeout(max(0.1, WINDOW - (time.monotonic() - t0)))
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return f"closed after {time.monotonic() - t0:.1f} s"
        except TimeoutError:
            return f"still open after {WINDOW:.0f} s"
        except OSError as err:
            return f"reset after {time.monotonic() - t0:.1f} s ({type(err).__name__})"


def trickle(s: socket.socket, t0: float) -> None:
    i = 0
    try:
        while time.monotonic() - t0 < WINDOW - 0.5:
            s.sendall(b"X-T%d: v\r\n" % i)
            i += 1
            time.sleep(0.5)
    except OSError:
        pass


def unread_response(port: int) -> str:
    """GET a 16 MiB stream and never read: is the connection dropped within WINDOW?"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /v1/stream/big?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(WINDOW)
        got = 0
        s.settimeout(2)
        try:
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got += len(data)
                if got >= (16 << 20):
                    break
        except TimeoutError:
            return f"still open after {WINDOW:.0f} s"
        except OSError:
            pass
        return (f"dropped (client got {got >> 10} KiB of 16 MiB)" if got < (16 << 20)
                else "still open: whole response arrived once read")


def probe(server: str) -> dict[str, str]:
    port = free_port()
    env = {**os.environ, "DURALOG_BACKEND": "memory", "DURALOG_CHUNK_SIZE": "32MiB",
           "DURALOG_MAX_BODY_SIZE": "32MiB"}
    proc = subprocess.Popen(command(server, port), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1/stream"
        for _ in range(200):
            try:
                httpx.put(url + "/x", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        httpx.put(url + "/big", headers={"content-type": "application/octet-stream"})
        httpx.post(url + "/big", headers={"content-type": "application/octet-stream"},
                   content=os.urandom(16 << 20), timeout=60)
        pids = process_tree(proc.pid)
        out: dict[str, str] = {
            "9 KiB request line": status_of(
                port, b"GET /" + b"a" * (9 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            "101 header fields": status_of(port, b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\n"
                                           + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
                                           + b"\r\n"),
            "20 KiB of headers (10 fields)": status_of(
                port, b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 2048) for i in range(10)) + b"\r\n"),
            "one 16 MiB header": huge_header(port, pids),
        }
        slow: dict[str, str] = {}
        jobs = {
            "head stops half-way": lambda: closed_within(port, b"GET /v1/stream/x HTTP/1.1\r\n"),
            "head trickled, a line per 0.5 s": lambda: closed_within(
                port, b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\n", trickle),
            "body stops after 10 of 1000 bytes": lambda: closed_within(
                port, b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 1000\r\n\r\n" + b"a" * 10),
            "16 MiB response never read": lambda: unread_response(port),
        }
        threads = [threading.Thread(target=lambda k=k, f=f: slow.__setitem__(k, f()))
                   for k, f in jobs.items()]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out.update((k, slow[k]) for k in jobs)
        return out
    finally:
        # The server first, so that it stops its own workers; then whatever is left.
        left = process_tree(proc.pid)[1:]
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def main(argv: list[str]) -> int:
    for server in argv or ["uvicorn", "granian", "hypercorn"]:
        print(f"== {server}", flush=True)
        for k, v in probe(server).items():
            print(f"  {k:<36} {v}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
