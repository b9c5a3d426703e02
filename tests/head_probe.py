"""A HEAD prober in its own process: ``python -m tests.head_probe HOST PORT PATH``.

Sends HEADs back to back on one keep-alive connection until its stdin closes,
then prints the latencies (seconds, one JSON list). Running apart from the test
keeps the test's own work (building and sending a 64 MiB body holds the test
process's GIL for tens of ms) out of what is measured: the server's stalls.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def main(host: str, port: int, path: str) -> None:
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    request = f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not stop.is_set():
            t = time.perf_counter()
            s.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = s.recv(65536)
                if not data:
                    raise SystemExit("server closed the probe connection")
                answer += data
            if not answer.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"probe got {answer[:40]!r}")
            latencies.append(time.perf_counter() - t)
            time.sleep(0.005)
    print(json.dumps(latencies), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
