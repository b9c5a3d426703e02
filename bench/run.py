"""``python -m bench``: run the benchmark scenarios against duralog and the Node reference.

Every scenario starts all the targets, then measures them in rounds, alternating the
order (A B C D, then D C B A, ...) so that the drift of a shared, noisy machine hits
ours and the reference alike; the figure kept is the median over rounds. The table
compares each of our targets with the reference in the same mode (memory or durable).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import report
from . import targets as T
from .scenarios import SCENARIOS, Config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCS_CHARTS = ROOT / "docs" / "bench"


def ensure_tools(need_node: bool) -> None:
    """Install what the run needs and is missing: wrk, npm peers, matplotlib."""
    if shutil.which("wrk") is None:
        print("installing wrk (apt-get)...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    if need_node and not (ROOT / "node_modules" / "@durable-streams" / "server").is_dir():
        print("installing npm peers (npm install)...", flush=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=ROOT, check=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing the bench extra (matplotlib, granian, py-spy)...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[bench]"],
                       check=True)


def raise_fd_limit(want: int = 65536) -> int:
    """10,000 live readers need 10,000 sockets on each side; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise hard
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), "node": node,
            "loadavg_start": os.getloadavg()}


def _print_sample(s: dict[str, Any]) -> None:
    i = s["info"]
    extra = []
    for key in ("client_cpu_pct", "server_cpu_pct"):
        if i.get(key) is not None:
            extra.append(f"{key.split('_')[0]} cpu {i[key]:.0f}%")
    if i.get("errors"):
        extra.append(f"errors {i['errors']}")
    if i.get("error"):
        extra.append(f"error: {str(i['error'])[:120]}")
    v = s["value"]
    shown = "n/a" if v is None else (f"{v:,.1f}" if v < 1000 else f"{v:,.0f}")
    print(f"    {s['target']:<16} {s['metric']:<48} {shown:>12} {s['unit']:<10} "
          f"{' '.join(extra)}", flush=True)


def run(args: argparse.Namespace) -> int:
    cfg = Config.for_run(args.quick)
    if args.rounds:
        cfg.rounds = cfg.fanout_rounds = args.rounds
    if args.duration:
        cfg.wrk_duration = cfg.large_duration = args.duration
    if args.fanout_sizes:
        cfg.fanout_sizes = tuple(int(x) for x in args.fanout_sizes.split(","))
    if args.cdn_sizes:
        cfg.cdn_sizes = tuple(int(x) for x in args.cdn_sizes.split(","))
    names = list(SCENARIOS) if not args.only else args.only.split(",")
    for n in names:
        if n not in SCENARIOS:
            print(f"unknown scenario {n!r}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
    target_names: list[str] = [] if args.url else (args.targets.split(",") if args.targets
                                                   else list(T.DEFAULT_TARGETS))
    for n in target_names:
        if n.partition("@")[0] not in T.SPECS:
            print(f"unknown target {n!r}; choose from {', '.join(T.SPECS)}", file=sys.stderr)
            return 2
    if any(T.spec_for(n).auth for n in target_names):
        # Every client sends the token, to every target: auth on and off then differ
        # only in what the server does with it.
        os.environ["BENCH_AUTHORIZATION"] = f"Bearer {T.BENCH_TOKEN}"
    if not args.no_install:
        ensure_tools(need_node=True)
    fds = raise_fd_limit()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / f"{stamp}-logs"
    log_dir.mkdir()
    info = machine()
    info["fd_limit"] = fds
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_gib']} GiB, "
          f"load {info['loadavg_start']}; fd limit {fds}", flush=True)
    print(f"config: {dataclasses.asdict(cfg)}", flush=True)
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for scenario in names:
        print(f"== {scenario}", flush=True)
        running: list[T.Target] = []
        try:
            if args.url:
                running.append(T.external(args.url, args.url_mode, args.url_pid))
            for n in target_names:
                running.append(T.start(n, log_dir))
            rounds = cfg.fanout_rounds if scenario in ("fanout", "cdn") else cfg.rounds
            for rnd in range(rounds):
                order = running if rnd % 2 == 0 else list(reversed(running))
                print(f"  round {rnd + 1}/{rounds}: {' '.join(t.name for t in order)}",
                      flush=True)
                for t in order:
                    try:
                        got = SCENARIOS[scenario](t, cfg, rnd)
                    except Exception as err:  # one failure must not end the run
                        traceback.print_exc()
                        got = []
                        samples.append({"scenario": scenario, "metric": "(failed)",
                                        "unit": "", "higher_is_better": True, "value": None,
                                        "info": {"error": f"{type(err).__name__}: {err}"},
                                        "target": t.name, "kind": t.spec.kind,
                                        "mode": t.spec.mode, "round": rnd})
                        _print_sample(samples[-1])
                    for s in got:
                        d = dataclasses.asdict(s)
                        d.update(target=t.name, kind=t.spec.kind, mode=t.spec.mode, round=rnd)
                        samples.append(d)
                        _print_sample(d)
                    if not t.alive():
                        print(f"  !! {t.name} died; log: {t.log_path}", flush=True)
                        break
        finally:
            for t in running:
                t.stop()
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = round(time.monotonic() - t_start, 1)
    agg = report.aggregate(samples)
    rows = report.comparisons(agg)
    print()
    print(report.table(rows))
    result = {"stamp": stamp, "argv": sys.argv[1:], "machine": info,
              "config": dataclasses.asdict(cfg), "targets": target_names or [args.url],
              "rows": rows, "aggregate": agg, "samples": samples}
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    (RESULTS / ("latest-quick.json" if args.quick else "latest.json")).write_text(
        json.dumps(result, indent=1))
    (RESULTS / f"{stamp}.md").write_text(report.table(rows, markdown=True) + "\n")
    charts_dir = Path(args.charts) if args.charts else (
        DOCS_CHARTS if not (args.quick or args.url or args.only) else RESULTS / f"{stamp}-charts")
    try:
        written = report.charts(agg, samples, charts_dir,
                                title_suffix=" (quick)" if args.quick else "")
        shown = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written]
        print(f"\ncharts: {', '.join(shown)}")
    except ImportError:
        print("\nmatplotlib is missing: no charts (pip install -e '.[bench]')")
    print(f"results: {out.relative_to(ROOT)} (+ .md table); wall {info['wall_s']} s; "
          f"load {info['loadavg_start']} -> {info['loadavg_end']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short smoke run (about 3 minutes)")
    p.add_argument("--only", metavar="SCENARIOS",
                   help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--targets", metavar="LIST",
                   help=f"comma-separated targets (default {','.join(T.DEFAULT_TARGETS)}; "
                        f"all: {','.join(T.SPECS)}); a duralog target may name another "
                        "checkout: duralog-memory@/tmp/exp")
    p.add_argument("--url", help="benchmark this server instead (base URL, streams under "
                                 "/v1/stream/ unless the URL has a path)")
    p.add_argument("--url-mode", default="memory", choices=["memory", "durable"],
                   help="what the --url server is, for the goals (default memory)")
    p.add_argument("--url-pid", type=int, help="pid of the --url server, to read its RSS/CPU")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 2, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per wrk measurement")
    p.add_argument("--fanout-sizes", help="comma-separated reader counts (default 1000,10000)")
    p.add_argument("--cdn-sizes", help="comma-separated long-poll reader counts through nginx "
                                       "(default 1000,10000)")
    p.add_argument("--charts", help="where to write PNG charts (default docs/bench for a "
                                    "full default run, else next to the results)")
    p.add_argument("--no-install", action="store_true", help="do not install missing tools")
    return run(p.parse_args(argv))
