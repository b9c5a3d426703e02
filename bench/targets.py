"""The servers a benchmark runs against: start, probe, measure (RSS, CPU) and stop them.

A target is one server configuration: duralog on uvicorn or granian with the memory or
sqlite backend, the Node reference in memory or dataDir (file) mode, or any URL.
Each has a *mode* (``memory`` or ``durable``) so that duralog can be compared with the
reference in the same mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .httpraw import Conn, split_url

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # "duralog" | "reference" | "url"
    mode: str  # "memory" | "durable"
    server: str  # "uvicorn" | "granian" | "hypercorn" | "node" | "external"
    flags: tuple[str, ...] = ()  # extra `duralog serve` flags
    auth: bool = False  # run with an auth file; clients send BENCH_TOKEN
    backend: str = ""  # "" = by mode (memory or sqlite); "postgres": bench/pgtarget.py
    nodes: int = 1  # postgres: nodes over one database (more than one: behind nginx)


SPECS: dict[str, TargetSpec] = {s.name: s for s in [
    TargetSpec("duralog-memory", "duralog", "memory", "uvicorn"),
    TargetSpec("duralog-sqlite", "duralog", "durable", "uvicorn"),
    TargetSpec("ref-memory", "reference", "memory", "node"),
    TargetSpec("ref-datadir", "reference", "durable", "node"),
    TargetSpec("granian-memory", "duralog", "memory", "granian"),
    TargetSpec("granian-sqlite", "duralog", "durable", "granian"),
    # Not a dependency: pip install hypercorn to run these (docs/security.md, the
    # HTTP server choice).
    TargetSpec("hypercorn-memory", "duralog", "memory", "hypercorn"),
    TargetSpec("hypercorn-sqlite", "duralog", "durable", "hypercorn"),
    # The same servers without the access log and metrics layer (docs/benchmarks.md:
    # what observability costs): compare with duralog-memory / duralog-sqlite.
    TargetSpec("duralog-memory-bare", "duralog", "memory", "uvicorn",
               ("--no-access-log", "--no-metrics")),
    TargetSpec("duralog-sqlite-bare", "duralog", "durable", "uvicorn",
               ("--no-access-log", "--no-metrics")),
    TargetSpec("duralog-memory+auth", "duralog", "memory", "uvicorn", auth=True),
    TargetSpec("duralog-sqlite+auth", "duralog", "durable", "uvicorn", auth=True),
    # One node, and two nodes behind a round-robin nginx, over one PostgreSQL.
    TargetSpec("duralog-postgres", "duralog", "durable", "uvicorn", backend="postgres"),
    TargetSpec("duralog-postgres-2", "duralog", "durable", "uvicorn", backend="postgres",
               nodes=2),
]}
# The bearer token every bench client sends when an auth target is in the run; the
# +auth targets accept it with every scope (docs/security.md).
BENCH_TOKEN = "bench-token-with-every-scope-0123456789"
AUTH_FILE = f"""[[token]]
name = "bench"
token = "{BENCH_TOKEN}"
read = ["**"]
write = ["**"]
admin = ["**"]
"""
DEFAULT_TARGETS = ["duralog-memory", "ref-memory", "duralog-sqlite", "ref-datadir"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (granian runs the app in a worker process)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the given processes (their threads included)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass
class Target:
    """A running (or external) server."""

    spec: TargetSpec
    url: str
    proc: subprocess.Popen[bytes] | None = None
    data_dir: str | None = None
    log_path: str | None = None
    pid: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # per-target state of scenarios
    long_poll_timeout: float = 30.0
    nodes: list[str] = field(default_factory=list)  # several nodes: each one's URL
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)  # more processes
    cleanup: list[Any] = field(default_factory=list)  # callables run by stop()
    extra_pids: list[int] = field(default_factory=list)  # also serving (a database, ...)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base(self) -> str:
        """The stream namespace: stream URLs are ``{base}/{name}``."""
        return self.url if split_url(self.url)[2] not in ("", "/") else self.url + "/v1/stream"

    def pids(self) -> list[int]:
        if self.pid is None:
            return []
        return [p for root in (self.pid, *self.extra_pids) for p in process_tree(root)]

    def rss(self) -> int | None:
        return rss_bytes(self.pids()) if self.pid is not None else None

    def cpu(self) -> float | None:
        return cpu_seconds(self.pids()) if self.pid is not None else None

    def restart(self) -> None:
        """A fresh server (new process, empty data): RSS per connection is only
        meaningful in a process whose allocator has not grown for earlier work."""
        if self.proc is None or self.log_path is None:
            return  # an external server: nothing to restart
        self.stop()
        fresh = start(self.spec.name, Path(self.log_path).parent, self.long_poll_timeout)
        self.url, self.proc, self.data_dir, self.pid = fresh.url, fresh.proc, fresh.data_dir, \
            fresh.pid
        self.nodes, self.others, self.cleanup, self.extra_pids = \
            fresh.nodes, fresh.others, fresh.cleanup, fresh.extra_pids
        self.cache.clear()

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        for proc in self.others:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.others = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        for fn in self.cleanup:
            fn()
        self.cleanup = []


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    host, port, path = split_url(url)
    probe = (path.rstrip("/") if path not in ("", "/") else "/v1/stream") + "/__probe__"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with Conn(host, port, timeout=1.0) as c:
                c.request("GET", probe)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not answer within {timeout}s")


def spec_for(name: str) -> TargetSpec:
    """``duralog-memory``, or ``duralog-memory@/path/to/tree`` to run another checkout
    of duralog (an A/B test of a change) under the same configuration."""
    base, _, tree = name.partition("@")
    spec = SPECS[base]
    if tree:
        if spec.kind != "duralog":
            raise ValueError(f"only duralog targets take @TREE, not {base}")
        spec = dataclasses.replace(spec, name=name)
    return spec


def start(name: str, log_dir: Path, long_poll_timeout: float = 30.0,
          extra_env: dict[str, str] | None = None) -> Target:
    spec = spec_for(name)
    if spec.backend == "postgres":
        from . import pgtarget
        return pgtarget.start(spec, name, log_dir, long_poll_timeout)
    tree = Path(name.partition("@")[2] or ROOT).resolve()
    port = free_port()
    data_dir = (tempfile.mkdtemp(prefix=f"bench-{name.partition('@')[0]}-")
                if spec.mode == "durable" else None)
    env = {**os.environ, **(extra_env or {})}
    if spec.kind == "duralog":
        # The proxy scenario's upstream runs on this machine (bench/proxy.py).
        env.setdefault("DURALOG_PROXY", "1")
        env.setdefault("DURALOG_PROXY_ALLOW", "http://127.0.0.1:*/**")
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    if spec.server == "uvicorn":
        args = [sys.executable, "-m", "duralog", "serve", "--port", str(port),
                "--backend", "memory" if spec.mode == "memory" else "sqlite",
                "--long-poll-timeout", str(long_poll_timeout)]
        if data_dir:
            args += ["--data-dir", data_dir]
        if spec.auth:
            auth = log_dir / "auth.toml"
            auth.write_text(AUTH_FILE)
            args += ["--auth", str(auth)]
        args += list(spec.flags)
    elif spec.server == "granian":
        env["DURALOG_BACKEND"] = "memory" if spec.mode == "memory" else "sqlite"
        env["DURALOG_LONG_POLL_TIMEOUT"] = str(long_poll_timeout)
        if data_dir:
            env["DURALOG_DATA_DIR"] = data_dir
        granian = shutil.which("granian") or "granian"
        args = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
                "--backlog", "4096",
                # granian caps concurrent requests per worker at backlog/workers by
                # default: 10,000 live readers need more.
                "--backpressure", "65536", "--factory", "duralog.server.app:create_app"]
    elif spec.server == "hypercorn":
        env["DURALOG_BACKEND"] = "memory" if spec.mode == "memory" else "sqlite"
        env["DURALOG_LONG_POLL_TIMEOUT"] = str(long_poll_timeout)
        if data_dir:
            env["DURALOG_DATA_DIR"] = data_dir
        args = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                "--worker-class", "uvloop", "--backlog", "4096", "--log-level", "warning",
                "duralog.server.app:create_app()"]
    elif spec.server == "node":
        env["REF_LONG_POLL_TIMEOUT_MS"] = str(int(long_poll_timeout * 1000))
        args = ["node", str(ROOT / "tests/peers/reference-server.mjs"), str(port)]
        if data_dir:
            args.append(data_dir)
    else:
        raise ValueError(f"cannot start {name}")
    log_path = log_dir / f"{name.replace('/', '_')}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(args, cwd=tree, env=env, stdout=log, stderr=log,
                            start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, 30.0)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return Target(spec, url, proc, data_dir, str(log_path), proc.pid,
                  long_poll_timeout=long_poll_timeout)


def external(url: str, mode: str = "memory", pid: int | None = None) -> Target:
    _wait_ready(url.rstrip("/"), None, 5.0)
    return Target(TargetSpec("url", "url", mode, "external"), url.rstrip("/"), pid=pid)
