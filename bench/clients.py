"""Load generators: wrk (request rates) and bench/live.mjs (latency, fan-out, producers).

Each runs as a child process; its CPU time comes from ``wait4``'s rusage so the
report can show whether the client, which shares the 2 cores, was saturated.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE / "lua"
LIVE = HERE / "live.mjs"


@dataclass
class ClientRun:
    out: dict[str, Any]
    wall: float
    cpu: float  # client user+sys seconds
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_pct(self) -> float:
        """Client CPU as a percentage of one core."""
        return 100.0 * self.cpu / self.wall if self.wall > 0 else 0.0


def _reap(proc: subprocess.Popen[bytes]) -> float:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def wrk(url: str, script: str, args: list[str], duration: float, connections: int,
        threads: int = 1, timeout: float = 10.0) -> ClientRun:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (python -m bench installs it with apt-get)")
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = [exe, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", f"{timeout:g}s", "-s", str(LUA / script), url, "--", *args]
    env = {**os.environ, "BENCH_LUA_DIR": str(LUA)}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_b, err_b = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    cpu = _reap(proc)
    wall = time.monotonic() - t0
    out = out_b.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("BENCHJSON "):
            return ClientRun(json.loads(line[len("BENCHJSON "):]), wall, cpu,
                             err_b.decode(errors="replace"))
    raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}):\n{out}\n"
                       f"{err_b.decode(errors='replace')}")


def live(args: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None = None,
         timeout: float = 600.0) -> ClientRun:
    """Run bench/live.mjs with a JSON job; it prints JSON lines. ``{"event": ...}`` lines
    are pauses: ``on_event`` runs (e.g. to read the server's RSS), then the script
    goes on. The last ``{"result": ...}`` line is the outcome."""
    t0 = time.monotonic()
    proc = subprocess.Popen(["node", str(LIVE), json.dumps(args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE.parent)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    result: dict[str, Any] | None = None
    deadline = t0 + timeout
    buf = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise RuntimeError(f"live client timed out after {timeout:.0f}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "event" in msg:
                    if on_event is not None:
                        on_event(msg)
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                elif "result" in msg:
                    result = msg["result"]
    finally:
        err = proc.stderr.read().decode(errors="replace")
        cpu = _reap(proc)
    wall = time.monotonic() - t0
    if result is None:
        raise RuntimeError(f"live client failed (exit {proc.returncode}): {err[-2000:]}")
    return ClientRun(result, wall, cpu, err)
