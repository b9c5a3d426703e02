"""Several duralog nodes over one PostgreSQL database, behind nginx round-robin.

``pg_nodes(url, n)`` starts ``n`` ``duralog serve --backend postgres`` processes
on one database; ``RoundRobin(ports)`` runs nginx in front of them with a
minimal configuration: every request goes to the next node in turn (no
stickiness, no retries on another node), responses are passed on unbuffered
(long-poll and SSE arrive as they are written). Used by the two-node
conformance run and the cross-node tests (tests/test_postgres_cluster.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from .servers import ServerProcess, duralog_server, free_port


def pg_node(url: str, log_path: Path | None = None, extra: list[str] | None = None,
            env: dict[str, str] | None = None) -> ServerProcess:
    """One duralog node on the postgres backend (not started)."""
    node = duralog_server("postgres", extra=["--database-url", url, *(extra or [])],
                          log_path=log_path)
    node.env.update(env or {})
    return node


def pg_nodes(url: str, n: int, base: Path, extra: list[str] | None = None,
             env: dict[str, str] | None = None) -> list[ServerProcess]:
    """``n`` started nodes over the database at ``url``; logs in ``base``/node<i>.log."""
    nodes = []
    try:
        for i in range(n):
            nodes.append(pg_node(url, base / f"node{i}.log", extra, env).start())
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        raise AssertionError("nginx is required (scripts/test installs it with apt-get)")
    return nginx


class RoundRobin:
    """nginx on a free port, round-robin over ``ports`` on 127.0.0.1."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="duralog-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        base = self.base
        servers = "".join(f"    server 127.0.0.1:{p};\n" for p in self.ports)
        temp = "".join(f"  {d}_temp_path {base}/{d};\n"
                       for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (("user root;\n" if os.geteuid() == 0 else "")
                + f"pid {base}/nginx.pid;\nerror_log {base}/error.log warn;\n"
                + "worker_processes 1;\nevents { worker_connections 4096; }\n"
                + "http {\n  access_log off;\n" + temp
                + f"  upstream duralog {{\n{servers}    keepalive 32;\n  }}\n"
                + f"  server {{\n    listen 127.0.0.1:{self.port};\n"
                + "    client_max_body_size 0;\n"
                + "    location / {\n"
                + "      proxy_pass http://duralog;\n"
                + "      proxy_http_version 1.1;\n"
                + "      proxy_set_header Connection \"\";\n"
                + "      proxy_set_header Host $http_host;\n"
                + "      proxy_buffering off;\n"
                + "      proxy_request_buffering off;\n"
                + "      proxy_read_timeout 120s;\n"
                + "      proxy_next_upstream off;\n"
                + "    }\n  }\n}\n")

    def start(self, timeout: float = 20.0) -> RoundRobin:
        conf = self.base / "nginx.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([nginx_binary(), "-p", str(self.base), "-c", str(conf),
                                      "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                httpx.get(self.url + "/v1/stream/__probe__", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)
