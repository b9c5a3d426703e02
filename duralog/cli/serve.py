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
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument("--auth", metavar="FILE",
                     help="auth file (TOML): bearer tokens and their scopes, a signing secret, "
                          "rate limits; without it anyone can read and write (DURALOG_AUTH)")
    sec.add_argument("--cors-origins", metavar="LIST",
                     help="comma-separated origins browsers may call from (default *; with "
                          "--auth only listed origins may write; DURALOG_CORS_ORIGINS)")
    sec.add_argument("--allowed-hosts", metavar="LIST",
                     help="comma-separated Host values to answer, others get 400 (default *; "
                          "DURALOG_ALLOWED_HOSTS)")
    sec.add_argument("--max-connections", type=int, metavar="N",
                     help="open connections; past it new ones get a fast 503 (default: from "
                          "the file-descriptor limit; DURALOG_MAX_CONNECTIONS)")
    sec.add_argument("--header-timeout", type=float, metavar="SECONDS",
                     help="time for a request's headers to arrive (default 10)")
    sec.add_argument("--body-timeout", type=float, metavar="SECONDS",
                     help="time a request body may stall (default 30)")
    sec.add_argument("--send-timeout", type=float, metavar="SECONDS",
                     help="time a client may leave a response unread (default 60)")
    sec.add_argument("--max-header-bytes", type=parse_size, metavar="BYTES",
                     help="request header block limit, larger gets 431 (default 16KiB)")
    sec.add_argument("--max-header-fields", type=int, metavar="N",
                     help="request header field limit, more gets 431 (default 100)")
    sec.add_argument("--max-request-line", type=parse_size, metavar="BYTES",
                     help="request line limit, longer gets 414 (default 8KiB)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import DuralogApp
    from ..server.limits import LimitedHttpToolsProtocol

    try:
        config = Config.from_env(
            host=args.host, port=args.port, backend=args.backend, data_dir=args.data_dir,
            long_poll_timeout=args.long_poll_timeout, chunk_size=args.chunk_size,
            max_body_size=args.max_body_size, auth=args.auth, cors_origins=args.cors_origins,
            allowed_hosts=args.allowed_hosts, max_connections=args.max_connections,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            send_timeout=args.send_timeout, max_header_bytes=args.max_header_bytes,
            max_header_fields=args.max_header_fields, max_request_line=args.max_request_line)
        app = DuralogApp(config)  # wraps itself in the security layer (server/auth.py)
    except ValueError as err:
        print(f"duralog serve: {err}", file=sys.stderr)
        return 2
    limit = _raise_fd_limit()
    # Keep some descriptors for the store, logs and the listening socket.
    max_connections = config.max_connections or max(64, limit - 128)
    protocol = LimitedHttpToolsProtocol.configure(config, max_connections)
    if not config.auth and not _is_loopback(config.host):
        print(f"duralog: WARNING: no --auth and listening on {config.host}: anyone who can "
              f"reach this port can read, write and delete every stream "
              f"(docs/security.md)", file=sys.stderr, flush=True)
    where = config.data_dir if config.backend == "sqlite" else "memory"
    print(f"duralog: serving Durable Streams on http://{config.host}:{config.port}"
          f"{config.stream_prefix} ({config.backend}: {where})", file=sys.stderr, flush=True)
    _tune_gc()
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=2,
                loop="uvloop", http=protocol, backlog=4096,
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


def _raise_fd_limit() -> int:
    """Each live reader holds a socket: allow as many as the hard limit permits.
    Returns the limit in force."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 1024


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
