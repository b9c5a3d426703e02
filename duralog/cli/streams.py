"""The client commands: create, write, read, info, close, fork, delete, ls.

Each talks to a server through ``duralog.client``. A stream is named either by
its name under the server's stream root (``chat/42``) or by a full URL. The
server is ``--url`` or ``DURALOG_URL`` (default http://127.0.0.1:4437).
Failures print one line on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

import orjson

from ..client import DurableStream, DurableStreamError, StreamInfo

DEFAULT_URL = "http://127.0.0.1:4437"
STREAM_ROOT = "/v1/stream/"
REGISTRY = "__registry__"
WRITE_BLOCK = 1 << 20  # bytes per append when writing a byte stream from stdin
JSON_BATCH = 1000  # messages per append when writing JSON lines from stdin


class CliError(Exception):
    """A usage problem found before any request: printed as one line, exit 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help=f"server base URL (default $DURALOG_URL or {DEFAULT_URL})")

    p = subparsers.add_parser("create", parents=[common], help="create a stream")
    p.add_argument("stream", help="stream name (or full URL)")
    p.add_argument("--content-type", help="content type (default application/octet-stream)")
    p.add_argument("--json", action="store_true", help="an application/json stream")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", type=int, metavar="SECONDS", help="sliding time to live")
    expiry.add_argument("--expires-at", metavar="RFC3339", help="absolute expiry time")
    p.add_argument("--closed", action="store_true", help="create it closed")
    p.add_argument("--data", help="initial content")
    p.set_defaults(run=run_create)

    p = subparsers.add_parser(
        "write", parents=[common], help="append to a stream (arguments or stdin)",
        description="Append the arguments (one append each), or stdin when there are none. "
                    "With --json each argument, or each line of stdin, is one JSON message.")
    p.add_argument("stream")
    p.add_argument("data", nargs="*", help="what to append; stdin when omitted")
    p.add_argument("--json", action="store_true", help="the data are JSON messages")
    p.add_argument("--content-type", help="content type of the data (default: the stream's)")
    p.add_argument("--close", action="store_true", help="close the stream after writing")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line on stderr when piping a large input")
    p.set_defaults(run=run_write)

    p = subparsers.add_parser("read", parents=[common], help="read a stream",
                              description="Print a stream's content from an offset. JSON "
                              "messages are pretty-printed on a terminal and one per line "
                              "when piped.")
    p.add_argument("stream")
    p.add_argument("--from", dest="offset", default="-1",
                   help="offset to start from: -1 (start), now, or a saved offset")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep reading live until the stream is closed")
    p.add_argument("--live", choices=["sse", "long-poll"],
                   help="live mode when following (default: catch up, then long-poll)")
    p.add_argument("--raw", action="store_true", help="print bytes as stored (no JSON formatting)")
    p.add_argument("--print-offset", action="store_true",
                   help="print the offset to resume from on stderr at the end")
    p.set_defaults(run=run_read)

    p = subparsers.add_parser("info", parents=[common], help="show a stream's metadata")
    p.add_argument("stream")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_info)

    p = subparsers.add_parser("close", parents=[common], help="close a stream")
    p.add_argument("stream")
    p.add_argument("data", nargs="?", help="a final append, made atomically with the close")
    p.set_defaults(run=run_close)

    p = subparsers.add_parser("fork", parents=[common], help="fork a stream")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--offset", help="where the fork diverges (default: the source's tail)")
    p.add_argument("--sub-offset", type=int, help="messages or bytes past --offset to inherit")
    p.set_defaults(run=run_fork)

    p = subparsers.add_parser("delete", parents=[common], help="delete a stream")
    p.add_argument("stream")
    p.set_defaults(run=run_delete)

    p = subparsers.add_parser("ls", parents=[common], help="list streams (from the registry)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_ls)


# -- plumbing -------------------------------------------------------------------


def _base_url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("DURALOG_URL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, not {url!r}")
    return url.rstrip("/")


def stream_url(args: argparse.Namespace, name: str) -> str:
    """A full URL as given, or the name under the server's stream root."""
    if name.startswith(("http://", "https://")):
        return name
    if not name.strip("/"):
        raise CliError("a stream name is required")
    return _base_url(args) + STREAM_ROOT + quote(name.strip("/"), safe="/")


def _open(args: argparse.Namespace, name: str) -> DurableStream:
    return DurableStream(stream_url(args, name))


def _guarded(func: Any) -> Any:
    """Turn client errors into one line on stderr and exit status 1."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except CliError as err:
            print(f"duralog {args.command}: {err}", file=sys.stderr)
            return 2
        except DurableStreamError as err:
            print(f"duralog {args.command}: {_describe(err)}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # The reader of our stdout went away (`| head`): not an error. Point
            # stdout at /dev/null so the interpreter's final flush stays quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return wrapper


_STATUS_REASONS = {404: "stream not found", 410: "stream was deleted",
                   409: "conflict", 403: "forbidden", 413: "body too large"}


def _describe(err: DurableStreamError) -> str:
    """One line: the server's reason (or what the status means), the status, the URL."""
    if err.status is None:
        return err.message
    reason = err.reason or _STATUS_REASONS.get(err.status, "request failed")
    return f"{reason} ({err.status}): {err.url}"


# -- commands -------------------------------------------------------------------


@_guarded
def run_create(args: argparse.Namespace) -> int:
    content_type = "application/json" if args.json else args.content_type
    if args.json and args.content_type and args.content_type != "application/json":
        raise CliError("--json and --content-type disagree")
    body = args.data.encode() if args.data is not None else None
    if args.ttl is not None and args.ttl < 0:
        raise CliError("--ttl must not be negative")
    info = _open(args, args.stream).create(
        content_type=content_type, ttl=args.ttl, expires_at=args.expires_at,
        closed=args.closed, body=body)
    state = "created" if info.created else "exists"
    print(f"{state}: {info.url} ({info.content_type}, next offset {info.next_offset}"
          f"{', closed' if info.closed else ''})")
    return 0


@_guarded
def run_write(args: argparse.Namespace) -> int:
    stream = _open(args, args.stream)
    content_type = "application/json" if args.json else args.content_type
    if args.data:
        last = None
        for i, item in enumerate(args.data):
            close = args.close and i == len(args.data) - 1
            if args.json:
                try:
                    value = orjson.loads(item)
                except orjson.JSONDecodeError:
                    raise CliError(f"not JSON: {item[:60]!r}") from None
                last = stream.append_json(value, close=close)
            else:
                last = stream.append(item.encode(), close=close, content_type=content_type)
        if last is not None and last.next_offset:
            print(last.next_offset)
        return 0
    if sys.stdin.isatty():
        raise CliError("nothing to write: give data as arguments or pipe it to stdin")
    return _write_stdin(args, stream, content_type)


def _write_stdin(args: argparse.Namespace, stream: DurableStream,
                 content_type: str | None) -> int:
    """Pipe stdin through an idempotent producer: batched, retried, never duplicated."""
    if content_type is not None:
        stream.content_type = content_type
    source: BinaryIO = sys.stdin.buffer
    progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())
    producer = stream.producer(f"duralog-cli-{uuid.uuid4()}")
    try:
        if args.json:
            for message in _json_lines(source):
                producer.append_json(message)
                progress.add(len(message) + 1)
        else:
            while block := source.read(WRITE_BLOCK):
                producer.append(block)
                progress.add(len(block))
        producer.flush()
    finally:
        producer.close()
        progress.done()
    if args.close:
        stream.close()
    if producer.last_offset:
        print(producer.last_offset)
    return 0


def _json_lines(source: BinaryIO) -> Iterator[Any]:
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            raise CliError(f"line {number} of stdin is not JSON") from None


class _Progress:
    """A one-line byte counter on stderr for large piped inputs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sent = 0
        self.shown = 0

    def add(self, n: int) -> None:
        self.sent += n
        if self.enabled and self.sent - self.shown >= WRITE_BLOCK:
            self.shown = self.sent
            print(f"\rsent {_human(self.sent)}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.shown:
            print(f"\rsent {_human(self.sent)}", file=sys.stderr, flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@_guarded
def run_read(args: argparse.Namespace) -> int:
    stream = _open(args, args.stream)
    live = (args.live or "auto") if args.follow else None
    if args.live and not args.follow:
        raise CliError("--live needs --follow")
    pretty = sys.stdout.isatty() and not args.raw
    out = sys.stdout.buffer
    offset = args.offset
    reader = stream.read(offset, live=live)
    try:
        for chunk in reader:
            offset = chunk.offset
            if not chunk.data:
                continue
            if chunk.content_type.split(";")[0].strip().lower() == "application/json" \
                    and not args.raw:
                for item in chunk.json():
                    if pretty:
                        out.write(orjson.dumps(item, option=orjson.OPT_INDENT_2) + b"\n")
                    else:
                        out.write(orjson.dumps(item) + b"\n")
            else:
                out.write(chunk.data)
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        if args.print_offset:
            print(f"offset: {offset}", file=sys.stderr)
    return 0


def _info_dict(info: StreamInfo) -> dict[str, Any]:
    return {"url": info.url, "content_type": info.content_type,
            "next_offset": info.next_offset, "closed": info.closed, "ttl": info.ttl,
            "expires_at": info.expires_at}


@_guarded
def run_info(args: argparse.Namespace) -> int:
    info = _open(args, args.stream).head()
    fields = _info_dict(info)
    if args.json:
        print(orjson.dumps(fields).decode())
        return 0
    for key, value in fields.items():
        if value is not None:
            print(f"{key}: {str(value).lower() if isinstance(value, bool) else value}")
    return 0


@_guarded
def run_close(args: argparse.Namespace) -> int:
    stream = _open(args, args.stream)
    result = stream.close(args.data.encode() if args.data is not None else None)
    print(f"closed: {stream.url} (final offset {result.next_offset})")
    return 0


@_guarded
def run_fork(args: argparse.Namespace) -> int:
    if args.sub_offset is not None and args.sub_offset < 0:
        raise CliError("--sub-offset must not be negative")
    source = _open(args, args.source)
    fork = source.fork(stream_url(args, args.target), offset=args.offset,
                       sub_offset=args.sub_offset)
    info = fork.head()
    print(f"forked: {fork.url} from {source.url} (next offset {info.next_offset})")
    return 0


@_guarded
def run_delete(args: argparse.Namespace) -> int:
    stream = _open(args, args.stream)
    stream.delete()
    print(f"deleted: {stream.url}")
    return 0


@_guarded
def run_ls(args: argparse.Namespace) -> int:
    """Replay the registry's State Protocol changes into the current set of streams."""
    registry = _open(args, REGISTRY)
    streams: dict[str, dict[str, Any]] = {}
    for event in registry.read("-1").json_items():
        if not isinstance(event, dict) or event.get("type") != "stream":
            continue
        operation = (event.get("headers") or {}).get("operation")
        key = event.get("key")
        if not isinstance(key, str):
            continue
        if operation in ("insert", "update") and isinstance(event.get("value"), dict):
            streams[key] = event["value"]
        elif operation == "delete":
            streams.pop(key, None)
    if args.json:
        print(orjson.dumps(sorted(streams.values(), key=lambda v: str(v.get("path")))).decode())
        return 0
    for name in sorted(streams):
        print(f"{name}\t{streams[name].get('contentType', '')}")
    return 0
