"""A webhook receiver for tests: a real HTTP server in a thread that records requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Records each POST (raw body, headers, parsed JSON); answers ``respond(body)``.

    ``respond`` returns (status, answer dict) and may block (a slow receiver).
    ``start()``/``stop()`` can be called again on the same port (a receiver that
    goes down and comes back).
    """

    def __init__(self, port: int, respond: Callable[[dict[str, Any]], tuple[int, Any]]
                 | None = None) -> None:
        self.port = port
        self.respond = respond or (lambda body: (200, {}))
        self.requests: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = json.loads(raw)
                with outer.cond:
                    outer.requests.append({"raw": raw, "body": body,
                                           "headers": dict(self.headers.items())})
                    outer.cond.notify_all()
                status, answer = outer.respond(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met; got {len(self.requests)}"
                                         " requests")
                self.cond.wait(left)
            return list(self.requests)
