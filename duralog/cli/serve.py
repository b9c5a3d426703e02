"""``duralog serve``: run the server.

The process owns its lifecycle rather than leaving it to ``uvicorn.run``: the
store is opened (and the data directory locked) before anything is printed, the
socket is bound before the banner names it, and SIGINT/SIGTERM end live readers
with their normal answers before uvicorn waits for open responses, then close
the store; exit 0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from .. import __version__
from ..server.config import Config, parse_size

log = logging.getLogger("duralog")

#: Seconds uvicorn waits for open responses after a signal; live readers end at
#: once, so this only bounds a slow client or a very large response.
GRACEFUL_SECONDS = 3.0


def size(text: str) -> int:
    """A byte size for argparse (``parse_size`` with an error message argparse shows)."""
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give bytes, or a number with k, MiB, G...") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the Durable Streams server",
        description="Run the server. Every flag can also be set with an environment "
                    "variable (DURALOG_PORT, DURALOG_BACKEND, ...); flags win.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; DURALOG_HOST)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (default 4437; "
                                            "DURALOG_PORT)")
    p.add_argument("--backend", choices=["memory", "sqlite", "postgres"],
                   help="storage: sqlite (durable, the default), memory, or postgres (many "
                        "nodes over one database; DURALOG_BACKEND)")
    p.add_argument("--database-url", metavar="URL",
                   help="--backend postgres: the database, postgresql://user:pass@host:5432/db "
                        "(DURALOG_DATABASE_URL)")
    p.add_argument("--pg-pool-size", type=int, metavar="N",
                   help="--backend postgres: most database connections this node opens for "
                        "requests, plus one for LISTEN (default 10; DURALOG_PG_POOL_SIZE)")
    p.add_argument("--advertise-url", metavar="URL",
                   help="--backend postgres: how the other nodes reach this one, to forward "
                        "subscription requests to the node that runs them (default "
                        "http://HOST:PORT; DURALOG_ADVERTISE_URL)")
    p.add_argument("--data-dir", help="where the durable backend keeps its files; one "
                                      "server per directory (default ./duralog-data; "
                                      "DURALOG_DATA_DIR)")
    p.add_argument("--long-poll-timeout", type=float, metavar="SECONDS",
                   help="how long a long-poll waits for data (default 30; "
                        "DURALOG_LONG_POLL_TIMEOUT)")
    p.add_argument("--chunk-size", type=size, metavar="BYTES",
                   help="most bytes one catch-up read returns (default 1MiB; "
                        "DURALOG_CHUNK_SIZE)")
    p.add_argument("--max-body-size", type=size, metavar="BYTES",
                   help="largest append accepted, larger gets 413 (default 64MiB; "
                        "DURALOG_MAX_BODY_SIZE)")
    p.add_argument("--yjs", action=argparse.BooleanOptionalAction, default=None,
                   help="serve the Yjs protocol at /v1/yjs (default on; DURALOG_YJS)")
    p.add_argument("--yjs-compaction-bytes", type=size, metavar="BYTES",
                   help="compact a Yjs document once this many bytes of updates arrived "
                        "since its last snapshot (default 1MiB; DURALOG_YJS_COMPACTION_BYTES)")
    p.add_argument("--producer-ttl", type=float, metavar="SECONDS",
                   help="drop idempotent-producer state unused this long; a retry older "
                        "than this is no longer recognised as a duplicate (default 604800, "
                        "7 days; DURALOG_PRODUCER_TTL)")
    p.add_argument("--retention-bytes", type=parse_size, metavar="BYTES",
                   help="keep at most this much of each stream created without "
                        "Stream-Retention-Bytes (default 0: keep all; DURALOG_RETENTION_BYTES)")
    p.add_argument("--retention-seconds", type=int, metavar="SECONDS",
                   help="drop appends older than this from streams created without "
                        "Stream-Retention-Seconds (default 0: keep all; "
                        "DURALOG_RETENTION_SECONDS)")
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
    p.add_argument("--console", action=argparse.BooleanOptionalAction, default=None,
                   help="serve the web console at / (default on; DURALOG_CONSOLE)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="least severe log lines written to stderr: info adds startup facts, "
                        "debug adds every refused request with its reason (default warning; "
                        "DURALOG_LOG_LEVEL)")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="log lines as text or one JSON object per line (default text; "
                        "DURALOG_LOG_FORMAT)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=None,
                   help="one line per request with method, path, status, bytes, duration "
                        "and request id (default on; DURALOG_ACCESS_LOG)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=None,
                   help="Prometheus metrics at /metrics (default on; DURALOG_METRICS)")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="comma-separated addresses or networks (or *) of reverse proxies "
                        "whose X-Forwarded-Proto/-Host and Forwarded headers are trusted "
                        "for Location and other absolute URLs (default none; "
                        "DURALOG_FORWARDED_ALLOW_IPS)")
    p.add_argument("--proxy", action="store_true", default=None,
                   help="serve the durable proxy at /v1/proxy (DURALOG_PROXY=1; docs/proxy.md)")
    p.add_argument("--proxy-allow", metavar="GLOBS",
                   help="upstream URLs the proxy may call, globs separated by commas, e.g. "
                        "'https://api.openai.com/v1/**' (none: every upstream is refused; "
                        "DURALOG_PROXY_ALLOW)")
    p.add_argument("--proxy-secret", metavar="SECRET",
                   help="service secret for creating and managing proxy streams, as ?secret= "
                        "or a Bearer token (DURALOG_PROXY_SECRET)")
    p.add_argument("--webhook-allow", action="append", metavar="GLOB",
                   help="allow webhook URLs only to hosts (or URLs) matching GLOB; "
                        "repeatable (DURALOG_WEBHOOK_ALLOW, comma-separated)")
    p.add_argument("--webhook-timeout", type=float, metavar="SECONDS",
                   help="per-attempt webhook timeout (default 30; DURALOG_WEBHOOK_TIMEOUT)")
    p.add_argument("--webhook-retry-max", type=float, metavar="SECONDS",
                   help="longest delay between webhook retries (default 60; "
                        "DURALOG_WEBHOOK_RETRY_MAX)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = Config.from_env(
            host=args.host, port=args.port, backend=args.backend, data_dir=args.data_dir,
            database_url=args.database_url, pg_pool_size=args.pg_pool_size,
            advertise_url=args.advertise_url,
            long_poll_timeout=args.long_poll_timeout, chunk_size=args.chunk_size,
            max_body_size=args.max_body_size, access_log=args.access_log,
            metrics=args.metrics, log_format=args.log_format,
            forwarded_allow_ips=args.forwarded_allow_ips, console=args.console,
            auth=args.auth, cors_origins=args.cors_origins,
            allowed_hosts=args.allowed_hosts, max_connections=args.max_connections,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            send_timeout=args.send_timeout, max_header_bytes=args.max_header_bytes,
            max_header_fields=args.max_header_fields, max_request_line=args.max_request_line,
            producer_ttl=args.producer_ttl, retention_bytes=args.retention_bytes,
            retention_seconds=args.retention_seconds, yjs=args.yjs,
            yjs_compaction_bytes=args.yjs_compaction_bytes,
            webhook_allow=",".join(args.webhook_allow) if args.webhook_allow else None,
            webhook_timeout=args.webhook_timeout, webhook_retry_max=args.webhook_retry_max)
    except ValueError as err:
        print(f"duralog serve: {err}", file=sys.stderr)
        return 2
    level = args.log_level or os.environ.get("DURALOG_LOG_LEVEL") or "warning"
    if level not in ("critical", "error", "warning", "info", "debug"):
        print(f"duralog serve: DURALOG_LOG_LEVEL={level!r} is not a log level", file=sys.stderr)
        return 2
    from ..server.observe import configure_logging

    configure_logging(level, config.log_format, config.access_log)
    _proxy_settings(args)
    limit = _raise_fd_limit()
    # Keep some descriptors for the store, logs and the listening socket.
    max_connections = config.max_connections or max(64, limit - 128)
    if not config.auth and not _is_loopback(config.host):
        print(f"duralog: WARNING: no --auth and listening on {config.host}: anyone who can "
              f"reach this port can read, write and delete every stream "
              f"(docs/security.md)", file=sys.stderr, flush=True)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(_serve(config, level, max_connections))
    return uvloop.run(_serve(config, level, max_connections))


async def _serve(config: Config, level: str, max_connections: int) -> int:
    import uvicorn

    from ..server.app import DuralogApp
    from ..server.limits import LimitedHttpToolsProtocol
    from ..server.observe import flush_access_log

    try:
        app = DuralogApp(config)
        await app.startup()
    except Exception as exc:
        print(f"duralog serve: {_startup_error(config, exc)}", file=sys.stderr, flush=True)
        return 1
    try:
        sock = _bind(config.host, config.port)
    except OSError as exc:
        print(f"duralog serve: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        await app.shutdown()
        return 1
    host, port = sock.getsockname()[:2]
    where = (os.path.abspath(config.data_dir) if config.backend == "sqlite"
             else _redact(config.database_url) if config.backend == "postgres" else "memory")
    url = f"http://{_url_host(host)}:{port}{config.stream_prefix}"
    banner = f"serving Durable Streams on {url} ({config.backend}: {where})"
    if config.log_format == "json":  # one JSON object per line, the banner too
        import orjson

        print(orjson.dumps({"ts": round(time.time(), 6), "level": "info", "logger": "duralog",
                            "message": banner, "url": url}).decode(),
              file=sys.stderr, flush=True)
    else:
        print(f"duralog: {banner}", file=sys.stderr, flush=True)
    log.info("duralog %s started: backend=%s data_dir=%s address=%s:%d pid=%d", __version__,
             config.backend, where, host, port, os.getpid())

    server: Any = _server(uvicorn.Config(
        app, log_level=level, log_config=None, access_log=False, lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SECONDS, backlog=4096,
        # httptools with duralog's HTTP limits and timeouts (server/limits.py).
        http=LimitedHttpToolsProtocol.configure(config, max_connections),
        # No proxy-headers middleware (forwarded.py does what we need, for the
        # addresses allowed) and no Server header: less work per request. A longer
        # keep-alive, so a loaded server does not close a connection whose next
        # request is already waiting (docs/benchmarks.md).
        proxy_headers=False, server_header=False, timeout_keep_alive=30))
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            os._exit(128 + signum)  # the second signal: no more waiting
        log.warning("%s: shutting down (a second signal exits at once)",
                    signal.Signals(signum).name)
        app.begin_shutdown()  # live readers get their normal end now
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    _tune_gc()
    try:
        await server.serve(sockets=[sock])
    finally:
        await app.shutdown()  # in-flight appends are done: close the store
        flush_access_log()
    log.info("duralog stopped")
    return 0


def _server(config: object) -> object:
    """uvicorn's server without its own signal handling (``_serve`` installs ours:
    uvicorn's re-raises the signal after shutdown, which would end the process
    with the signal instead of exit 0)."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    return Server(config)  # type: ignore[arg-type]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)  # accepting from now on: the banner may name the port
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _startup_error(config: Config, exc: BaseException) -> str:
    """One line naming what failed; for the durable backend, --data-dir and its path."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.filename:
            reason = f"{reason}: {exc.filename}"
    else:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if config.backend == "sqlite":
        return f"--data-dir {config.data_dir}: {reason}"
    if config.backend == "postgres":
        return f"--database-url {_redact(config.database_url)}: {reason}"
    return f"cannot start: {reason}"


def _redact(url: str) -> str:
    """A database URL without its password, for banners and error lines."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _proxy_settings(args: argparse.Namespace) -> None:
    """The proxy sub-app reads its settings from DURALOG_PROXY_* (duralog.proxy.config);
    flags win, so they are written there before the app is built."""
    import os

    if getattr(args, "proxy", None):
        os.environ["DURALOG_PROXY"] = "1"
    if getattr(args, "proxy_allow", None):
        os.environ["DURALOG_PROXY_ALLOW"] = args.proxy_allow
    if getattr(args, "proxy_secret", None):
        os.environ["DURALOG_PROXY_SECRET"] = args.proxy_secret


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
