"""HTTP limits and timeouts of ``duralog serve``, over raw sockets (issue 9, part 3).

The server runs with short timeouts (1-2 s instead of 10/30/60) so the suite stays
fast; the defaults are the same code with other numbers. While an offender runs,
a HEAD on another connection must still answer: the stall bound asserted is
``DURALOG_STALL_LIMIT_MS`` (default 500 ms, generous for a shared 2-core box;
the issue's target is 100 ms and `python -m bench` style measurements are in
docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from .servers import ROOT, ServerProcess, duralog_server

T = TypeVar("T")

#: The issue's check: a concurrent HEAD answers within 100 ms while an offender runs.
STALL_LIMIT = float(os.environ.get("DURALOG_STALL_LIMIT_MS", "100")) / 1000
#: This machine is shared (2 cores, other test runs): a HEAD can also wait for a
#: core that another process holds. So a stall check takes the best of up to
#: ATTEMPTS runs of its offender: a server that really holds its loop fails all of
#: them, a neighbour's burst does not fail the test.
ATTEMPTS = int(os.environ.get("DURALOG_STALL_ATTEMPTS", "3"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("limits") / "server.log"
    srv = duralog_server("memory", log_path=log, extra=[
        "--header-timeout", "1", "--body-timeout", "1", "--send-timeout", "2",
        "--max-connections", "200", "--chunk-size", "16MiB"]).start()
    yield srv
    srv.stop()


def connect(server: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    return s


def read_answer(s: socket.socket) -> bytes:
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def exchange(server: ServerProcess, data: bytes) -> bytes:
    with connect(server) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        return read_answer(s)


def rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class HeadProbe:
    """HEADs on their own connection, back to back, while something else runs.

    The prober is a separate process (tests/head_probe.py): in a thread of the test
    process it measured the test's own GIL holds too (building or sending a large
    body), not only the server's."""

    def __init__(self, server: ServerProcess) -> None:
        httpx.put(server.url + "/v1/stream/probe-target", timeout=60)
        self.latencies: list[float] = []
        self._args = [sys.executable, "-m", "tests.head_probe", "127.0.0.1", str(server.port),
                      "/v1/stream/probe-target"]
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HeadProbe:
        self._proc = subprocess.Popen(self._args, cwd=ROOT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # the prober is connected and probing before the offender starts
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=60)
        assert self._proc.returncode == 0, f"HEAD prober failed: {out!r}"
        self.latencies = json.loads(out)

    @property
    def worst(self) -> float:
        return max(self.latencies)


def probed(server: ServerProcess, offend: Callable[[int], T]) -> tuple[T, float]:
    """``offend(attempt)`` under a HeadProbe, up to ATTEMPTS times until the worst HEAD
    is under STALL_LIMIT: the last result and the best attempt's worst HEAD (s)."""
    best = float("inf")
    for attempt in range(ATTEMPTS):
        with HeadProbe(server) as probe:
            result = offend(attempt)
            time.sleep(0.1)
        best = min(best, probe.worst)
        if best < STALL_LIMIT:
            break
    return result, best


def test_request_line_limit(server: ServerProcess) -> None:
    ok = exchange(server, b"GET /v1/stream/" + b"a" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 404")
    long = exchange(server, b"GET /" + b"a" * (8 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long.startswith(b"HTTP/1.1 414"), long[:100]
    assert b"x-content-type-options: nosniff" in long


def _headers(count: int, size: int) -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(count))


def test_header_field_count(server: ServerProcess) -> None:
    ok = exchange(server, b"HEAD /v1/stream/nope HTTP/1.1\r\nHost: x\r\n" + _headers(98, 10)
                  + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 404"), ok[:100]
    many = exchange(server, b"HEAD / HTTP/1.1\r\nHost: x\r\n" + _headers(101, 10) + b"\r\n")
    assert many.startswith(b"HTTP/1.1 431"), many[:100]


def test_header_block_size(server: ServerProcess) -> None:
    ok = exchange(server, b"HEAD /v1/stream/nope HTTP/1.1\r\nHost: x\r\n" + _headers(15, 1000)
                  + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 404"), ok[:100]
    big = exchange(server, b"HEAD / HTTP/1.1\r\nHost: x\r\n" + _headers(17, 1000) + b"\r\n")
    assert big.startswith(b"HTTP/1.1 431"), big[:100]
    one = exchange(server, b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 200_000
                   + b"\r\n\r\n")
    assert one.startswith(b"HTTP/1.1 431"), one[:100]


def test_huge_headers_are_refused_before_buffering(server: ServerProcess) -> None:
    """One 16 MiB header and four unterminated 32 MiB headers at once: each is refused
    early, RSS stays put, and HEADs keep answering meanwhile."""
    before = rss_kib(server)
    answers: list[bytes] = []

    def offend(size: int, terminate: bool) -> None:
        with connect(server) as s:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                chunk = b"v" * (1 << 20)
                for _ in range(size >> 20):
                    s.sendall(chunk)
                if terminate:
                    s.sendall(b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            answers.append(read_answer(s))

    def attempt(_: int) -> list[bytes]:
        answers.clear()
        threads = [threading.Thread(target=offend, args=(16 << 20, True))]
        threads += [threading.Thread(target=offend, args=(32 << 20, False)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return list(answers)

    got, worst = probed(server, attempt)
    assert len(got) == 5
    assert all(a.startswith(b"HTTP/1.1 431") for a in got), [a[:40] for a in got]
    grown = rss_kib(server) - before
    assert grown < 20 << 10, f"RSS grew by {grown} KiB"
    assert worst < STALL_LIMIT, worst


def test_many_headers_do_not_stall(server: ServerProcess) -> None:
    """The issue's 8,000-15,000 repeated 1 KB headers: refused at field 101, no stall."""
    def offend(attempt: int) -> bytes:
        with connect(server) as s:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                for _ in range(15_000):
                    s.sendall(b"X-Rep: " + b"v" * 1000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return read_answer(s)

    answer, worst = probed(server, offend)
    assert answer.startswith(b"HTTP/1.1 431")
    assert worst < STALL_LIMIT, worst


def _closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    s.settimeout(seconds)
    try:
        return True, read_answer_strict(s)
    except TimeoutError:
        return False, b""


def read_answer_strict(s: socket.socket) -> bytes:
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out


@pytest.mark.parametrize("opening", [b"", b"GET /v1/str", b"GET / HTTP/1.1\r\nHost: x\r\n"])
def test_header_timeout(server: ServerProcess, opening: bytes) -> None:
    with connect(server) as s:
        s.sendall(opening)
        closed, answer = _closed_within(s, 5)
    assert closed, "a connection without a complete request head was held"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:60]


def test_trickled_headers_time_out(server: ServerProcess) -> None:
    """A byte every 100 ms keeps the socket busy but the head never completes in time."""
    with connect(server) as s:
        started = time.monotonic()
        closed = False
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"v" * 100:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            closed, _ = _closed_within(s, 5)
        assert closed and time.monotonic() - started < 8


def test_body_stall(server: ServerProcess) -> None:
    with connect(server) as s:
        s.sendall(b"PUT /v1/stream/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 100\r\n\r\n0123456789")
        closed, _ = _closed_within(s, 5)
    assert closed
    # The half-sent create never happened.
    assert httpx.head(server.url + "/v1/stream/stalled").status_code == 404


def test_unread_response_is_dropped(server: ServerProcess) -> None:
    url = server.url + "/v1/stream/big-unread"
    httpx.put(url, headers={"content-type": "application/octet-stream"},
              content=os.urandom(12 << 20))
    with connect(server, rcvbuf=4096) as s:
        s.sendall(b"GET /v1/stream/big-unread?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(4)  # send timeout is 2 s
        got = read_answer_strict(s)
    # More than the kernel's socket buffers hold (4 MiB here): the rest waited in the
    # server, which gave up on this reader after the send timeout.
    assert len(got) < (12 << 20), len(got)


def test_parser_errors_carry_security_headers(server: ServerProcess) -> None:
    answer = exchange(server, b"GARBAGE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"x-content-type-options: nosniff" in answer
    assert b"cross-origin-resource-policy: cross-origin" in answer


def test_max_connections_fast_503() -> None:
    srv = duralog_server("memory", extra=["--max-connections", "20",
                                          "--header-timeout", "30"]).start()
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            held.append(connect(srv))
        time.sleep(0.2)
        with connect(srv) as s:
            started = time.monotonic()
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_answer(s)
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 503"), answer[:60]
        assert elapsed < 5
        for s in held:
            s.close()
        held.clear()
        time.sleep(0.3)
        assert httpx.head(srv.url + "/").status_code == 200
    finally:
        for s in held:
            s.close()
        srv.stop()
