"""A progress line on stderr for `duralog write`: what the server acknowledged, and how fast.

The counts come from a callable (the producer's landed bytes and messages),
so the line shows what was sent and stored, not what was read from stdin.
A ticker thread redraws it twice a second on a terminal (a new line
every 5 s into a file); ``done`` prints the final line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

Counts = Callable[[], tuple[int, int]]  # (bytes, messages) acknowledged so far


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Progress:
    def __init__(self, counts: Counts, *, enabled: bool) -> None:
        self.counts = counts
        self.enabled = enabled
        self.started = time.monotonic()
        self.terminal = sys.stderr.isatty()
        # Redrawn in place on a terminal; a line every few seconds into a log.
        self.interval = 0.5 if self.terminal else 5.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._tick, name="duralog-progress",
                                            daemon=True)
            self._thread.start()

    def line(self) -> str:
        sent, messages = self.counts()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (f"sent {human_bytes(sent)}, {messages} message{'s' * (messages != 1)} "
                f"in {elapsed:.1f} s ({human_bytes(sent / elapsed)}/s)")

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            if self.terminal:
                print(f"\r{self.line()}\033[K", end="", file=sys.stderr, flush=True)
            else:
                print(self.line(), file=sys.stderr, flush=True)

    def done(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        prefix = "\r" if self.terminal else ""
        suffix = "\033[K" if self.terminal else ""
        print(f"{prefix}{self.line()}{suffix}", file=sys.stderr, flush=True)
