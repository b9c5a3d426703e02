"""``duralog serve``: run the server."""

from __future__ import annotations

import argparse
import sys

from ..server.config import Config, parse_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the Durable Streams server",
        description="Run the server. Every flag can also be set with an environment "
                    "variable (DURALOG_PORT, DURALOG_BACKEND, ...); flags win.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; DURALOG_HOST)")
    p.add_argument("--port", type=int, help="port (default 4437; DURALOG_PORT)")
    p.add_argument("--backend", choices=["memory", "sqlite"],
                   help="storage: sqlite (durable, the default) or memory (DURALOG_BACKEND)")
    p.add_argument("--data-dir", help="where the durable backend keeps its files "
                                      "(default ./duralog-data; DURALOG_DATA_DIR)")
    p.add_argument("--long-poll-timeout", type=float, metavar="SECONDS",
                   help="how long a long-poll waits for data (default 30; "
                        "DURALOG_LONG_POLL_TIMEOUT)")
    p.add_argument("--chunk-size", type=parse_size, metavar="BYTES",
                   help="most bytes one catch-up read returns (default 1MiB; "
                        "DURALOG_CHUNK_SIZE)")
    p.add_argument("--max-body-size", type=parse_size, metavar="BYTES",
                   help="largest append accepted, larger gets 413 (default 64MiB; "
                        "DURALOG_MAX_BODY_SIZE)")
    p.add_argument("--webhook-allow", action="append", metavar="GLOB",
                   help="allow webhook URLs only to hosts (or URLs) matching GLOB; "
                        "repeatable (DURALOG_WEBHOOK_ALLOW, comma-separated)")
    p.add_argument("--webhook-timeout", type=float, metavar="SECONDS",
                   help="per-attempt webhook timeout (default 30; DURALOG_WEBHOOK_TIMEOUT)")
    p.add_argument("--webhook-retry-max", type=float, metavar="SECONDS",
                   help="longest delay between webhook retries (default 60; "
                        "DURALOG_WEBHOOK_RETRY_MAX)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import DuralogApp

    try:
        config = Config.from_env(
            host=args.host, port=args.port, backend=args.backend, data_dir=args.data_dir,
            long_poll_timeout=args.long_poll_timeout, chunk_size=args.chunk_size,
            max_body_size=args.max_body_size,
            webhook_allow=",".join(args.webhook_allow) if args.webhook_allow else None,
            webhook_timeout=args.webhook_timeout, webhook_retry_max=args.webhook_retry_max)
    except ValueError as err:
        print(f"duralog serve: {err}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    app = DuralogApp(config)
    where = config.data_dir if config.backend == "sqlite" else "memory"
    print(f"duralog: serving Durable Streams on http://{config.host}:{config.port}"
          f"{config.stream_prefix} ({config.backend}: {where})", file=sys.stderr, flush=True)
    _tune_gc()
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=2,
                loop="uvloop", http="httptools", backlog=4096,
                # No proxy-headers middleware and no Server header: less work per
                # request. A longer keep-alive, so a loaded server does not close a
                # connection whose next request is already waiting (docs/benchmarks.md).
                proxy_headers=False, server_header=False, timeout_keep_alive=30)
    return 0


def _tune_gc() -> None:
    """Thousands of live readers keep many objects alive; with the default thresholds
    the cyclic collector took about 15% of a fan-out (docs/benchmarks.md). Objects
    made at start-up are frozen out of collection, and collections run less often.
    Done here, not in the app, because a host application owns its process's GC."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


def _raise_fd_limit() -> None:
    """Each live reader holds a socket: allow as many as the hard limit permits."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
