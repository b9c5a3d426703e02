"""Live readers for the Postgres failure tests (tests/test_pg_cluster.py): long-poll or
SSE readers that keep following a stream through errors and reconnects."""

from __future__ import annotations

import json
import threading
import time

import httpx

from duralog.protocol.sse_reader import SSEReader


class LiveReader(threading.Thread):
    """Follows one stream from ``offset`` with long-polls or SSE, echoing cursors,
    resuming from the last offset it was given after any error; ``data`` is every byte
    received, in order. Errors are counted, never fatal: a node or the database may be
    away for a while, and the reader must get everything once they are back."""

    def __init__(self, url: str, offset: str, mode: str) -> None:
        super().__init__(daemon=True)
        self.url, self.offset, self.mode = url, offset, mode
        self.cursor: str | None = None
        self.data = bytearray()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.got = threading.Condition()

    def _received(self, body: bytes) -> None:
        with self.got:
            self.data += body
            self.got.notify_all()

    def wait_for(self, size: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.got:
            while len(self.data) < size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.got.wait(left)
        return True

    def run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            while not self.stop.is_set():
                try:
                    if self.mode == "sse":
                        self._sse(client)
                    else:
                        self._long_poll(client)
                except httpx.HTTPError as err:
                    self._error(f"{type(err).__name__}: {err}")

    def _error(self, what: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(what)
        time.sleep(0.1)

    def _params(self) -> dict[str, str]:
        params = {"offset": self.offset, "live": self.mode}
        if self.cursor:
            params["cursor"] = self.cursor
        return params

    def _long_poll(self, client: httpx.Client) -> None:
        r = client.get(self.url, params=self._params())
        if r.status_code not in (200, 204):
            self._error(f"HTTP {r.status_code}")
            return
        self.cursor = r.headers.get("stream-cursor", self.cursor)
        if r.status_code == 200 and r.content:
            self._received(r.content)
        self.offset = r.headers["stream-next-offset"]

    def _sse(self, client: httpx.Client) -> None:
        with client.stream("GET", self.url, params=self._params()) as r:
            if r.status_code != 200:
                self._error(f"HTTP {r.status_code}")
                return
            parser = SSEReader()
            pending: list[bytes] = []
            for chunk in r.iter_raw():
                for ev in parser.feed(chunk):
                    if ev.event == "data":
                        pending.append(ev.data.encode())
                    elif ev.event == "control":
                        # 5.8: data counts once its control event gives the offset after it.
                        control = json.loads(ev.data)
                        if pending:
                            self._received(b"".join(pending))
                            pending = []
                        self.offset = control["streamNextOffset"]
                        self.cursor = control.get("streamCursor", self.cursor)
                if self.stop.is_set():
                    return
