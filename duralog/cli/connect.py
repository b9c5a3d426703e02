"""How the client commands reach a server: URL, credentials, retries, errors.

The server is ``--url``, else ``DURALOG_URL``, else ``STREAM_URL`` (the name
the protocol's own CLI uses), else http://127.0.0.1:4437. A base URL ending in
``/v1/stream`` is accepted as well (that is how ``STREAM_URL`` is usually set).
Credentials: ``--token`` or ``DURALOG_TOKEN`` is sent as ``Authorization:
Bearer <token>``; ``--auth`` or ``STREAM_AUTH`` is a whole Authorization value
(``Bearer abc``), and a bare token there gets the ``Bearer`` scheme too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..client import DurableStream, DurableStreamError, RetryPolicy, StreamClosedError

DEFAULT_URL = "http://127.0.0.1:4437"
STREAM_ROOT = "/v1/stream/"
RETRY_SECONDS = 10.0  # how long a command keeps trying an unreachable server


class CliError(Exception):
    """A usage problem found before any request: printed as one line, exit 2."""


class DataError(Exception):
    """Bad input found after some of it was stored: one line, exit 1."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, metavar="URL",
                        help=f"server base URL (default $DURALOG_URL, then $STREAM_URL, "
                             f"then {DEFAULT_URL})")
    parser.add_argument("--token", default=None,
                        help="bearer token, sent as 'Authorization: Bearer TOKEN' "
                             "(default $DURALOG_TOKEN)")
    parser.add_argument("--auth", default=None, metavar="VALUE",
                        help="a whole Authorization header value, e.g. 'Bearer abc' "
                             "(default $STREAM_AUTH)")


def _check_url(raw: str, source: str) -> tuple[str, str, str]:
    """(scheme, netloc, path) of an http(s) URL, or CliError in one line."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"{source} must be an http:// or https:// URL, not {raw!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        raise CliError(f"{source} has a bad port {port!r}: use a number 1-65535, "
                       f"as in http://127.0.0.1:4437") from None
    if not parts.hostname:
        raise CliError(f"{source} has no host name: {raw!r}")
    if parts.query or parts.fragment:
        raise CliError(f"{source} must not have a query or fragment: {raw!r}")
    return parts.scheme, parts.netloc, parts.path


def base_url(args: argparse.Namespace) -> str:
    """The server's base URL, without the /v1/stream root."""
    candidates = [(args.url, "--url"), (os.environ.get("DURALOG_URL"), "DURALOG_URL"),
                  (os.environ.get("STREAM_URL"), "STREAM_URL"), (DEFAULT_URL, "the default")]
    value, source = next((v, s) for v, s in candidates if v)
    scheme, netloc, path = _check_url(value, source)
    path = path.rstrip("/")
    if path.endswith(STREAM_ROOT.rstrip("/")):
        path = path[: -len(STREAM_ROOT.rstrip("/"))]
    return urlunsplit((scheme, netloc, path, "", ""))


def stream_url(args: argparse.Namespace, name: str) -> str:
    """A full URL as given, or the name under the server's stream root."""
    if name.startswith(("http://", "https://")):
        _check_url(name, "the stream URL")
        return name
    trimmed = name.strip("/")
    if not trimmed:
        raise CliError("a stream name is required")
    segments = trimmed.split("/")
    if any(seg in (".", "..") for seg in segments):
        # HTTP clients and proxies resolve dot segments (RFC 3986 5.2.4), so
        # `a/../b` would silently name the stream `b`.
        raise CliError(f"stream name {name!r} has a '.' or '..' segment; "
                       f"name the stream directly")
    if any(not seg for seg in segments):
        raise CliError(f"stream name {name!r} has an empty segment ('//')")
    return base_url(args) + STREAM_ROOT + quote(trimmed, safe="/")


def authorization(args: argparse.Namespace) -> str | None:
    """The Authorization header value, if any credentials were given."""
    if getattr(args, "token", None):
        return f"Bearer {args.token}"
    if getattr(args, "auth", None):
        return _auth_value(args.auth)
    if os.environ.get("DURALOG_TOKEN"):
        return f"Bearer {os.environ['DURALOG_TOKEN']}"
    if os.environ.get("STREAM_AUTH"):
        return _auth_value(os.environ["STREAM_AUTH"])
    return None


def _auth_value(value: str) -> str:
    value = value.strip()
    return value if " " in value else f"Bearer {value}"


def retry_policy() -> RetryPolicy:
    """Retry an unreachable or busy server for DURALOG_RETRY_SECONDS (default 10)."""
    raw = os.environ.get("DURALOG_RETRY_SECONDS")
    seconds = RETRY_SECONDS
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            raise CliError(f"DURALOG_RETRY_SECONDS must be a number, not {raw!r}") from None
        if seconds <= 0:
            raise CliError("DURALOG_RETRY_SECONDS must be above 0")
    return RetryPolicy(max_attempts=None, initial_delay=0.1, max_delay=2.0,
                       max_elapsed=seconds)


class RetryNotice:
    """Says once, on a terminal, that the command is retrying (else it looks hung)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, error: Exception, delay: float) -> None:
        if self.shown or not self.enabled:
            return
        self.shown = True
        status = error.status if isinstance(error, DurableStreamError) else None
        if status is not None:
            reason = getattr(error, "reason", "") or "busy"
            what = f"the server answered {status}: {reason}"
        else:
            what = f"no answer yet: {str(error).rpartition(': ')[2] or type(error).__name__}"
        budget = retry_policy().max_elapsed
        print(f"duralog {self.command}: {what}; retrying for up to {budget:g} s, "
              f"Ctrl-C to stop", file=sys.stderr, flush=True)


def open_stream(args: argparse.Namespace, name: str) -> DurableStream:
    auth = authorization(args)
    return DurableStream(stream_url(args, name),
                         headers={"Authorization": auth} if auth else None,
                         retry=retry_policy(), on_retry=RetryNotice(args.command))


_STATUS_REASONS = {401: "not authorized (give --token or DURALOG_TOKEN)",
                   403: "forbidden", 404: "stream not found", 410: "stream was deleted",
                   409: "conflict", 413: "body too large"}


def describe(err: DurableStreamError) -> str:
    """One line: what went wrong, the status, the URL."""
    if isinstance(err, StreamClosedError):
        final = f", final offset {err.final_offset}" if err.final_offset else ""
        return f"stream is closed: no more appends (409{final}): {err.url}"
    if err.status is None:
        return err.message
    reason = err.reason or _STATUS_REASONS.get(err.status, "request failed")
    return f"{reason} ({err.status}): {err.url}"


def guarded(func: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    """Turn failures into one line on stderr: exit 2 for usage, 1 for the rest,
    130 for Ctrl-C (like a shell)."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except CliError as err:
            print(f"duralog {args.command}: {err}", file=sys.stderr)
            return 2
        except DataError as err:
            print(f"duralog {args.command}: {err}", file=sys.stderr)
            return 1
        except DurableStreamError as err:
            print(f"duralog {args.command}: {describe(err)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"duralog {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # The reader of our stdout went away (`| head`): not an error. Point
            # stdout at /dev/null so the interpreter's final flush stays quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    wrapper.__doc__ = func.__doc__
    return wrapper
