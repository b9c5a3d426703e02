"""``python -m bench.observe``: what the access log and metrics cost per append.

The wrk figures of ``python -m bench --only appends --targets duralog-memory,
duralog-memory-bare`` include the HTTP server and the client, and on a shared
machine they move by more than the few percent this layer costs. This drives
``DuralogApp`` (memory backend) in process with 100-byte appends and reports
the best of several runs of CPU time per append (``time.process_time``), with
the access log and metrics on, each alone, and both off. The access log is
written to /dev/null through the same writer ``duralog serve`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from duralog.server import Config, DuralogApp, observe

_SCOPE: dict[str, Any] = {
    "type": "http", "method": "POST", "path": "/v1/stream/b", "raw_path": b"/v1/stream/b",
    "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 4437), "scheme": "http",
    "headers": [(b"host", b"127.0.0.1:4437"), (b"content-type", b"application/octet-stream"),
                (b"content-length", b"100")],
}


async def _noop_send(message: Any) -> None:
    pass


async def _per_append_us(app: DuralogApp, n: int) -> float:
    message = {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    started = time.process_time()
    for _ in range(n):
        await app(_SCOPE, receive, _noop_send)
    return (time.process_time() - started) / n * 1e6


async def _main(n: int, runs: int, fmt: str) -> dict[str, float]:
    observe.configure_logging("warning", fmt, True)
    assert observe._writer is not None
    observe._writer.fd = os.open(os.devnull, os.O_WRONLY)
    variants = {
        "both on": Config(backend="memory"),
        "access log only": Config(backend="memory", metrics=False),
        "metrics only": Config(backend="memory", access_log=False),
        "both off": Config(backend="memory", access_log=False, metrics=False),
    }
    apps = {name: DuralogApp(config) for name, config in variants.items()}
    for app in apps.values():
        await app.startup()
        put = {**_SCOPE, "method": "PUT"}

        async def empty() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        await app(put, empty, _noop_send)
    best: dict[str, float] = {}
    for _ in range(runs):  # interleaved, so a noisy moment hurts every variant alike
        for name, app in apps.items():
            best[name] = min(best.get(name, float("inf")), await _per_append_us(app, n))
    for app in apps.values():
        await app.shutdown()
    return best


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--appends", type=int, default=5000, help="appends per run (default 5000)")
    p.add_argument("--runs", type=int, default=7, help="runs per variant, best kept (default 7)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    args = p.parse_args()
    best = asyncio.run(_main(args.appends, args.runs, args.log_format))
    off = best["both off"]
    print(f"CPU per 100 B append in DuralogApp (memory), best of {args.runs} x "
          f"{args.appends}, access log as {args.log_format}:")
    for name, us in best.items():
        print(f"  {name:16} {us:6.2f} us  (+{us - off:.2f} us)")


if __name__ == "__main__":
    main()
