"""``python -m bench.authcost [memory|sqlite] [ROUNDS]``: what access control costs.

Issue 9: "small appends and fan-out with auth on lose at most 5% against auth
off". One run starts both servers (``duralog-<backend>`` and ``+auth``, whose
auth file gives the bench token every scope; both get the same
``Authorization`` header, so they differ only in what the server does with it)
and measures them side by side: in each round both servers take the same load
*at the same time*, so a busy neighbour on this shared machine slows both
alike. Rounds repeat; the figure kept is the median over rounds of the per-round
ratio (on / off), for:

- appends/s: 100 B appends, wrk, 32 connections per server;
- server CPU per append (us, from /proc: the steadier figure on a loaded box);
- fan-out: long-poll and SSE readers of one stream, appends 100 ms apart:
  server CPU per delivered message and the p99 of "all readers have it".

The figures are in docs/security.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import clients
from . import targets as T
from .httpraw import Client
from .run import raise_fd_limit
from .scenarios import _name

DURATION = float(os.environ.get("AUTHCOST_SECONDS", "5"))
READERS = int(os.environ.get("AUTHCOST_READERS", "500"))
APPENDS = int(os.environ.get("AUTHCOST_APPENDS", "20"))


def _both(fn: Any, targets: list[T.Target]) -> list[dict[str, float]]:
    """fn(target) for both targets at once (threads: each call waits on a subprocess)."""
    out: list[dict[str, float]] = [{} for _ in targets]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = fn(targets[i])
        except BaseException as err:  # re-raised below, after both finished
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return out


def appends(t: T.Target) -> dict[str, float]:
    stream = _name("auth-a")
    with Client(t.base) as c:
        c.create(stream, "application/octet-stream")
    cpu0 = t.cpu()
    run = clients.wrk(f"{t.base}/{stream}", "post.lua", ["application/octet-stream", "bytes:100"],
                      DURATION, 32, 1)
    cpu = (t.cpu() or 0) - (cpu0 or 0)
    with Client(t.base) as c:
        c.delete(stream)
    o = run.out
    errors = (o["status_errors"] + o["connect_errors"] + o["read_errors"] + o["write_errors"]
              + o["timeouts"])
    if errors:
        raise RuntimeError(f"{t.name}: {errors} wrk errors")
    return {"appends/s": o["requests"] / (o["duration_us"] / 1e6),
            "server CPU us/append": 1e6 * cpu / o["requests"]}


def fanout(mode: str) -> Any:
    def run(t: T.Target) -> dict[str, float]:
        stream = _name("auth-f")
        with Client(t.base) as c:
            c.create(stream, "text/plain")
        cpu0 = t.cpu()
        r = clients.live({"op": "fanout", "base": t.base, "stream": stream, "mode": mode,
                          "readers": READERS, "appends": APPENDS, "gap_ms": 100, "size": 100,
                          "connect_batch": 250, "deliver_timeout_ms": 30000}, timeout=600).out
        cpu = (t.cpu() or 0) - (cpu0 or 0)
        with Client(t.base) as c:
            c.delete(stream)
        bad = r["errors"] + r["missing"] + r["connect_timeouts"]
        if bad:
            raise RuntimeError(f"{t.name} {mode}: {bad} errors or missing deliveries")
        # CPU over the whole run, connecting included, per delivered message.
        return {f"{mode} x{READERS}: server CPU us/delivery": 1e6 * cpu / r["delivery_ms"]["n"],
                f"{mode} x{READERS}: all readers have it p99 ms": r["all_readers_ms"]["p99"]}
    return run


def main(argv: list[str]) -> int:
    backend = argv[0] if argv else "memory"
    rounds = int(argv[1]) if len(argv) > 1 else 5
    base = f"duralog-{backend}" if backend == "memory" else "duralog-sqlite"
    os.environ["BENCH_AUTHORIZATION"] = f"Bearer {T.BENCH_TOKEN}"
    raise_fd_limit()
    log_dir = Path(tempfile.mkdtemp(prefix="authcost-"))
    targets = [T.start(base, log_dir), T.start(base + "+auth", log_dir)]
    per_round: dict[str, list[tuple[float, float]]] = {}
    try:
        for rnd in range(rounds):
            for fn in (appends, fanout("long-poll"), fanout("sse")):
                off, on = _both(fn, targets)
                for key in off:
                    per_round.setdefault(key, []).append((off[key], on[key]))
                    print(f"round {rnd + 1}: {key}: off {off[key]:,.1f} on {on[key]:,.1f}",
                          flush=True)
    finally:
        for t in targets:
            t.stop()
    print(f"\n{base}, {rounds} rounds, both servers loaded at once; median of per-round "
          "ratios (on/off), and of each side:")
    for key, pairs in per_round.items():
        ratio = statistics.median(on / off for off, on in pairs)
        better = "higher" if key.endswith("/s") else "lower"
        cost = (1 - ratio) if better == "higher" else (ratio - 1)
        print(f"  {key:<48} off {statistics.median(p[0] for p in pairs):>10,.1f}  "
              f"on {statistics.median(p[1] for p in pairs):>10,.1f}  on/off {ratio:.3f}  "
              f"auth costs {cost * 100:+.1f}% ({better} is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
