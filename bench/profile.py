"""``python -m bench.profile``: where does duralog spend its time under a scenario's load?

Starts duralog (uvicorn or granian, memory or sqlite), attaches ``py-spy record``
to it while a scenario's load runs, then prints the functions with the most samples
(own time and inclusive time) from py-spy's collapsed stacks, and writes a flame
graph (SVG) next to them in bench/results/profile-*/. A ``py-spy dump`` taken in the
middle of the load is saved too.

    python -m bench.profile --load appends --target duralog-memory --duration 10
    python -m bench.profile --load fanout --readers 1000
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import clients
from . import targets as T
from .httpraw import Client
from .run import RESULTS, raise_fd_limit


def _load(kind: str, t: T.Target, seconds: float, readers: int) -> str:
    stream = f"bench-prof-{int(time.time())}"
    with Client(t.base) as c:
        c.create(stream, "text/plain" if kind in ("latency", "fanout") else
                 "application/json" if kind == "batched" else "application/octet-stream")
    if kind == "appends":
        run = clients.wrk(f"{t.base}/{stream}", "post.lua", ["application/octet-stream",
                                                              "bytes:100"], seconds, 32)
        return f"wrk: {run.out['requests'] / (run.out['duration_us'] / 1e6):,.0f} req/s"
    if kind == "batched":
        run = clients.wrk(f"{t.base}/{stream}", "post.lua", ["application/json",
                                                              "json:100:100"], seconds, 32)
        return f"wrk: {100 * run.out['requests'] / (run.out['duration_us'] / 1e6):,.0f} msg/s"
    if kind == "catchup":
        from .scenarios import _fill, _read_all
        big = stream + "-big"
        _fill(t, big, 256)
        rates = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            size, _, secs = _read_all(t, big)
            rates.append(f"{size / secs / 1e6:.0f}")
        return f"catch-up reads of 256 MiB: {', '.join(rates)} MB/s (the fill is profiled too)"
    if kind == "latency":
        results = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for mode in ("sse", "long-poll"):
                run = clients.live({"op": "latency", "base": t.base, "stream": stream,
                                    "mode": mode, "count": 500, "warmup": 10, "gap_ms": 1,
                                    "size": 100})
                lat = run.out["latency_ms"]
                results.append(f"{mode} p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms")
        return "; ".join(results)
    if kind == "fanout":
        out = []
        for mode in ("sse", "long-poll"):
            run = clients.live({"op": "fanout", "base": t.base, "stream": stream, "mode": mode,
                                "readers": readers, "appends": 10, "gap_ms": 100, "size": 100,
                                "connect_batch": 250, "deliver_timeout_ms": 30000})
            d = run.out["delivery_ms"]
            out.append(f"{mode} x{readers}: p50 {d['p50']:.0f} ms p99 {d['p99']:.0f} ms")
        return "; ".join(out)
    raise ValueError(kind)


_IDLE = ("epoll_pwait", "epoll_wait", "_queue_SimpleQueue_get", "PyThread_acquire_lock_timed",
         "Condition.wait", "select (")


def summarize(collapsed: Path, top: int) -> str:
    """Own and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_s)
        if any(mark in stack for mark in _IDLE):
            idle += n  # a thread waiting for work or for I/O: not where time goes
            continue
        total += n
        frames = [f for f in stack.split(";") if f]
        # the first frame is the thread/process name
        names = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                 + ")" if " (" in f else f for f in frames[1:]]
        if names:
            own[names[-1]] += n
        for name in set(names):
            incl[name] += n
    if not total:
        return f"{idle} samples, all idle"
    lines = [f"{total} busy samples ({idle} idle ones left out: threads waiting in "
             "epoll or on a queue/lock)", "", f"top {top} by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", f"top {top} by inclusive time:"]
    # Frames on every stack (the event loop, runpy, ...) say nothing: leave them out.
    busy = [(name, n) for name, n in incl.most_common() if n < 0.9 * total]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in busy[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", default="appends", choices=["appends", "batched", "catchup",
                                                         "latency", "fanout"])
    p.add_argument("--target", default="duralog-memory",
                   choices=[n for n, s in T.SPECS.items() if s.kind == "duralog"])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--readers", type=int, default=1000, help="fan-out readers")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--no-native", action="store_true", help="without py-spy --native")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    raise_fd_limit()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"profile-{stamp}-{args.load}-{args.target}"
    out.mkdir(parents=True)
    t = T.start(args.target, out)
    try:
        pid = max(t.pids())  # granian: the worker (the newest process of the tree)
        base = ["py-spy", "record", "--pid", str(pid), "--rate", str(args.rate)]
        # --native needs to pause the process per sample; without it, do not pause.
        base.append("--nonblocking" if args.no_native else "--native")
        budget = args.duration * (3 if args.load == "fanout" else 1) + 30
        raw = subprocess.Popen([*base, "--format", "raw", "-o", str(out / "collapsed.txt"),
                                "--duration", str(int(budget))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        dump: list[str] = []

        def take_dump() -> None:
            time.sleep(args.duration / 2)
            r = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True,
                               text=True)
            dump.append(r.stdout + r.stderr)

        th = threading.Thread(target=take_dump, daemon=True)
        th.start()
        t0 = time.monotonic()
        outcome = _load(args.load, t, args.duration, args.readers)
        load_s = time.monotonic() - t0
        th.join(timeout=30)
        raw.send_signal(2)  # SIGINT: py-spy writes what it has
        _, err = raw.communicate(timeout=60)
        (out / "dump.txt").write_text("".join(dump))
        collapsed = out / "collapsed.txt"
        if not collapsed.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)
            return 1
        text = summarize(collapsed, args.top)
        (out / "summary.txt").write_text(f"load: {outcome} ({load_s:.1f} s)\n\n{text}\n")
        print(f"load: {outcome} ({load_s:.1f} s)\n\n{text}\n\nfiles: {out}")
    finally:
        t.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
