"""``python -m bench.sidebyside A B [ROUNDS]``: two servers compared side by side.

Made for issue 9's "small appends and fan-out with auth on lose at most 5%
against auth off" (``duralog-memory duralog-memory+auth``: the +auth server's
auth file gives the bench token every scope; both get the same
``Authorization`` header, so they differ only in what the server does with
it), and used for the HTTP server choice too (``duralog-memory granian-memory``,
``duralog-memory hypercorn-memory``). One run starts both and measures them
side by side: in each round both servers take the same load *at the same time*,
so a busy neighbour on this shared machine slows both alike. ``A A`` (the same
target twice) shows the method's own noise. Rounds repeat; the figure kept is
the median over rounds of the per-round ratio (B / A), for:

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
    stream = _name("side-a")
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
        stream = _name("side-f")
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
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    names = argv[:2]
    rounds = int(argv[2]) if len(argv) > 2 else 5
    for n in names:
        T.spec_for(n)  # unknown names fail here, before anything starts
    os.environ["BENCH_AUTHORIZATION"] = f"Bearer {T.BENCH_TOKEN}"
    raise_fd_limit()
    log_dir = Path(tempfile.mkdtemp(prefix="sidebyside-"))
    targets = [T.start(names[0], log_dir)]
    # The same target twice (an A/A run): a second server of the same spec.
    targets.append(T.start(names[1], log_dir))
    per_round: dict[str, list[tuple[float, float]]] = {}
    try:
        for rnd in range(rounds):
            for fn in (appends, fanout("long-poll"), fanout("sse")):
                # Alternate which one each thread starts first.
                pair = targets if rnd % 2 == 0 else targets[::-1]
                got = _both(fn, pair)
                a, b = got if rnd % 2 == 0 else got[::-1]
                for key in a:
                    per_round.setdefault(key, []).append((a[key], b[key]))
                    print(f"round {rnd + 1}: {key}: A {a[key]:,.1f} B {b[key]:,.1f}", flush=True)
    finally:
        for t in targets:
            t.stop()
    print(f"\nA = {names[0]}, B = {names[1]}; {rounds} rounds, both loaded at once; "
          "median of each side and of the per-round ratios B/A:")
    for key, pairs in per_round.items():
        ratio = statistics.median(b / a for a, b in pairs)
        better = "higher" if key.endswith("/s") else "lower"
        cost = (1 - ratio) if better == "higher" else (ratio - 1)
        print(f"  {key:<48} A {statistics.median(p[0] for p in pairs):>10,.1f}  "
              f"B {statistics.median(p[1] for p in pairs):>10,.1f}  B/A {ratio:.3f}  "
              f"B loses {cost * 100:+.1f}% ({better} is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
