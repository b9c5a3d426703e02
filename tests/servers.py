"""Starting real servers for tests: duralog in a subprocess, and the Node reference."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server running in a child process; ``url`` is its base URL (no trailing slash)."""

    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.args}")
            try:
                httpx.get(self.url + "/v1/stream/__probe__", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s: {self.args}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_all(url: str) -> bytes:
    """A whole stream, following Stream-Next-Offset (catch-up reads are chunked)."""
    parts, offset = [], "-1"
    with httpx.Client(timeout=30) as client:
        while True:
            r = client.get(url, params={"offset": offset})
            assert r.status_code == 200, r.text
            parts.append(r.content)
            offset = r.headers["stream-next-offset"]
            if r.headers.get("stream-up-to-date") == "true":
                return b"".join(parts)


def duralog_server(backend: str = "memory", data_dir: str | Path | None = None,
                   port: int | None = None, extra: list[str] | None = None,
                   log_path: Path | None = None) -> ServerProcess:
    port = port or free_port()
    args = [sys.executable, "-m", "duralog", "serve", "--port", str(port), "--backend", backend]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    return ServerProcess(args + (extra or []), port, log_path=log_path)


def reference_server(data_dir: str | Path | None = None, port: int | None = None,
                     long_poll_ms: int = 30000) -> ServerProcess:
    port = port or free_port()
    args = ["node", str(ROOT / "tests/peers/reference-server.mjs"), str(port)]
    if data_dir is not None:
        args.append(str(data_dir))
    return ServerProcess(args, port, env={"REF_LONG_POLL_TIMEOUT_MS": str(long_poll_ms)})


class ThreadedServer:
    """uvicorn serving an in-process ASGI app in a thread, on a free port (for settings
    and mounts that only exist in code)."""

    def __init__(self, app: object) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"
