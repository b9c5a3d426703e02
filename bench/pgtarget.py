"""Postgres targets for ``python -m bench``: duralog nodes over one real PostgreSQL.

``duralog-postgres`` is one node; ``duralog-postgres-2`` is two nodes over the same
database behind a round-robin nginx (no cache: every request reaches a node), so a
load generator with one URL spreads its requests over both. The PostgreSQL is a
throw-away cluster from Debian's binaries (tests/pg.py: fsync on, synchronous
commit), started for the target and removed with it. The target's CPU and RSS
cover every process that serves: the nodes, PostgreSQL and the balancer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import targets as T


def _lb_conf(base: Path, nodes: list[int], port: int) -> str:
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in nodes)
    temps = "".join(f"  {d}_temp_path {base}/{d};\n" for d in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (("user root;\n" if os.geteuid() == 0 else "")
            + f"pid {base}/nginx.pid;\nerror_log {base}/error.log warn;\n"
            "worker_processes 1;\nevents { worker_connections 16384; }\n"
            f"http {{\n  access_log off;\n{temps}"
            f"  upstream nodes {{\n{servers}    keepalive 128;\n  }}\n"
            f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
            "    client_max_body_size 64m;\n"
            "    location / {\n      proxy_pass http://nodes;\n"
            "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
            "      proxy_set_header Host $host;\n      proxy_buffering off;\n"
            "      proxy_request_buffering off;\n      proxy_read_timeout 120s;\n    }\n"
            "  }\n}\n")


def start(spec: T.TargetSpec, name: str, log_dir: Path, long_poll_timeout: float) -> T.Target:
    sys.path.insert(0, str(T.ROOT))
    from tests.pg import PgServer  # the test suite's throw-away PostgreSQL

    pg = PgServer(max_connections=200).start()
    url = pg.create_database("bench")
    procs: list[subprocess.Popen[bytes]] = []
    cleanup = [pg.close]
    try:
        ports = []
        for k in range(spec.nodes):
            port = T.free_port()
            args = [sys.executable, "-m", "duralog", "serve", "--port", str(port),
                    "--backend", "postgres", "--database-url", url,
                    "--long-poll-timeout", str(long_poll_timeout), *spec.flags]
            log = open(log_dir / f"{name}-node{k}.log", "ab")  # noqa: SIM115 - the child keeps it
            procs.append(subprocess.Popen(args, cwd=T.ROOT, stdout=log, stderr=log,
                                          start_new_session=True))
            log.close()
            ports.append(port)
        for p, proc in zip(ports, procs, strict=True):
            T._wait_ready(f"http://127.0.0.1:{p}", proc, 30.0)
        nodes = [f"http://127.0.0.1:{p}" for p in ports]
        front = nodes[0]
        lb_pid: int | None = None
        if spec.nodes > 1:
            from .cdn import nginx_binary
            base = Path(tempfile.mkdtemp(prefix="bench-lb-"))
            for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (base / d).mkdir()
            lb_port = T.free_port()
            (base / "nginx.conf").write_text(_lb_conf(base, ports, lb_port))
            lb = subprocess.Popen([nginx_binary() or "nginx", "-p", str(base), "-c",
                                   str(base / "nginx.conf"), "-g", "daemon off;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
            procs.append(lb)
            lb_pid = lb.pid
            front = f"http://127.0.0.1:{lb_port}"
            T._wait_ready(front, lb, 30.0)
    except Exception:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pg.close()
        raise
    t = T.Target(spec, front, procs[0], None, str(log_dir / f"{name}-node0.log"), procs[0].pid,
                 long_poll_timeout=long_poll_timeout)
    t.nodes = nodes
    t.others = procs[1:]
    t.cleanup = cleanup
    t.extra_pids = [p for p in (pg._postmaster_pid(), lb_pid) if p is not None] + \
        [proc.pid for proc in procs[1:spec.nodes]]
    return t
