"""The client commands: create, write, read, info, close, fork, delete, ls.

Each talks to a server through ``duralog.client``. A stream is named either by
its name under the server's stream root (``chat/42``) or by a full URL; the
server and credentials come from ``connect`` (flags, then environment).
Failures print one line on stderr and exit non-zero (2: usage, 1: the request
failed, 130: interrupted).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from ..client import DurableStream, DurableStreamError, StreamInfo, StreamNotFound
from .connect import (
    CliError,
    DataError,
    add_connection_options,
    guarded,
    open_stream,
    stream_url,
)
from .progress import Progress, human_bytes

REGISTRY = "__registry__"
WRITE_BLOCK = 1 << 20  # bytes per append when writing a byte stream from stdin
_OFFSET = re.compile(r"[0-9]{16}_([0-9]{16})")  # duralog's offsets: <epoch>_<byte position>

_STREAM_HELP = "stream name under the server's /v1/stream/ (like chat or chat/42), or a full URL"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common)

    def command(name: str, help: str, description: str, *examples: str
                ) -> argparse.ArgumentParser:
        return subparsers.add_parser(
            name, parents=[common], help=help, description=textwrap.fill(description, 79),
            epilog=_examples(*examples), formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("create", "create a stream",
                "Create a stream (PUT). Creating it again with the same settings is fine.",
                "duralog create chat --json",
                "duralog create logs --content-type text/plain --ttl 3600",
                "duralog create notes --data 'first line' --closed")
    p.add_argument("stream", help=_STREAM_HELP)
    p.add_argument("--content-type", help="content type (default application/octet-stream)")
    p.add_argument("--json", action="store_true", help="an application/json stream")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", type=int, metavar="SECONDS", help="sliding time to live")
    expiry.add_argument("--expires-at", metavar="RFC3339", help="absolute expiry time")
    p.add_argument("--closed", action="store_true", help="create it closed")
    p.add_argument("--data", help="initial content")
    p.set_defaults(run=run_create)

    p = command("write", "append to a stream (arguments or stdin)",
                "Append the arguments (one append each), or stdin when there are none. With "
                "--json each argument, or each line of stdin, is one JSON message. Stdin goes "
                "through an idempotent producer: batched, retried, never stored twice.",
                "duralog write chat --json '{\"role\":\"user\",\"text\":\"hi\"}'",
                "duralog write chat --json < messages.ndjson",
                "tail -f app.log | duralog write logs",
                "duralog write notes 'last words' --close")
    p.add_argument("stream", help=_STREAM_HELP)
    p.add_argument("data", nargs="*", help="what to append; stdin when omitted")
    p.add_argument("--json", action="store_true", help="the data are JSON messages")
    p.add_argument("--content-type", help="content type of the data (default: the stream's)")
    p.add_argument("--close", action="store_true", help="close the stream after writing")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show progress on stderr even when it is not a terminal")
    shown.add_argument("--no-progress", action="store_true",
                       help="no progress on stderr (shown by default on a terminal)")
    p.set_defaults(run=run_write)

    p = command("read", "read a stream",
                "Print a stream's content from an offset. JSON messages are pretty-printed "
                "on a terminal and one per line when piped.",
                "duralog read chat",
                "duralog read chat --follow            # live, until the stream is closed",
                "duralog read chat --from now -f       # only what comes next",
                "duralog read chat --print-offset 2>offset.txt")
    p.add_argument("stream", help=_STREAM_HELP)
    p.add_argument("--from", dest="offset", default="-1", metavar="OFFSET",
                   help="offset to start from: -1 (start), now, or a saved offset")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep reading live until the stream is closed")
    p.add_argument("--live", choices=["sse", "long-poll"],
                   help="live mode when following (default: catch up, then SSE for text "
                        "and JSON streams, long-poll for binary ones)")
    p.add_argument("--raw", action="store_true", help="print bytes as stored (no JSON formatting)")
    p.add_argument("--print-offset", action="store_true",
                   help="print the offset to resume from on stderr at the end")
    p.set_defaults(run=run_read)

    p = command("info", "show a stream's metadata",
                "Show a stream's content type, tail offset, size, closure and expiry (HEAD).",
                "duralog info chat", "duralog info chat --json")
    p.add_argument("stream", help=_STREAM_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_info)

    p = command("close", "close a stream",
                "Close a stream: no more appends; readers see its end.",
                "duralog close chat", "duralog close notes 'the end'")
    p.add_argument("stream", help=_STREAM_HELP)
    p.add_argument("data", nargs="?", help="a final append, made atomically with the close")
    p.set_defaults(run=run_close)

    p = command("fork", "fork a stream",
                "Create TARGET as a fork of SOURCE: it shares SOURCE's content up to the "
                "fork point, then goes its own way.",
                "duralog fork chat chat-b",
                "duralog fork chat chat-b --offset 0000000000000000_0000000000000042")
    p.add_argument("source", help="the stream to fork (" + _STREAM_HELP + ")")
    p.add_argument("target", help="the new stream (same server)")
    p.add_argument("--offset", help="where the fork diverges (default: the source's tail)")
    p.add_argument("--sub-offset", type=int, help="messages or bytes past --offset to inherit")
    p.set_defaults(run=run_fork)

    p = command("delete", "delete a stream", "Delete a stream and its content.",
                "duralog delete chat-b")
    p.add_argument("stream", help=_STREAM_HELP)
    p.set_defaults(run=run_delete)

    p = command("ls", "list streams (from the registry)",
                "List the server's streams with content type and size (duralog servers "
                "keep a registry stream, __registry__).",
                "duralog ls", "duralog ls --json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_ls)


def size_of(offset: str) -> int | None:
    """Bytes stored, read off a duralog offset (other servers' offsets are opaque)."""
    m = _OFFSET.fullmatch(offset)
    return int(m.group(1)) if m else None


# -- commands -------------------------------------------------------------------


@guarded
def run_create(args: argparse.Namespace) -> int:
    content_type = "application/json" if args.json else args.content_type
    if args.json and args.content_type and args.content_type != "application/json":
        raise CliError("--json and --content-type disagree")
    body = args.data.encode() if args.data is not None else None
    if args.ttl is not None and args.ttl < 0:
        raise CliError("--ttl must not be negative")
    info = open_stream(args, args.stream).create(
        content_type=content_type, ttl=args.ttl, expires_at=args.expires_at,
        closed=args.closed, body=body)
    state = "created" if info.created else "exists"
    print(f"{state}: {info.url} ({info.content_type}, next offset {info.next_offset}"
          f"{', closed' if info.closed else ''})")
    return 0


def _progress_wanted(args: argparse.Namespace) -> bool:
    return args.progress or (not args.no_progress and sys.stderr.isatty())


@guarded
def run_write(args: argparse.Namespace) -> int:
    stream = open_stream(args, args.stream)
    content_type = "application/json" if args.json else args.content_type
    if args.data:
        return _write_args(args, stream, content_type)
    if sys.stdin.isatty():
        raise CliError("nothing to write: give data as arguments or pipe it to stdin")
    return _write_stdin(args, stream, content_type)


def _write_args(args: argparse.Namespace, stream: DurableStream,
                content_type: str | None) -> int:
    bodies: list[bytes] = []
    for item in args.data:
        if args.json:
            try:
                orjson.loads(item)
            except orjson.JSONDecodeError:
                raise CliError(f"not JSON: {item[:60]!r}") from None
        bodies.append(item.encode())
    counts = [0, 0]
    progress = Progress(lambda: (counts[0], counts[1]), enabled=_progress_wanted(args))
    last = None
    try:
        for i, body in enumerate(bodies):
            close = args.close and i == len(bodies) - 1
            if args.json:
                last = stream.append(b"[" + body + b"]", close=close,
                                     content_type="application/json")
            else:
                last = stream.append(body, close=close, content_type=content_type)
            counts[0] += len(body)
            counts[1] += 1
    finally:
        progress.done()
    if last is not None and last.next_offset:
        print(last.next_offset)
    return 0


def _write_stdin(args: argparse.Namespace, stream: DurableStream,
                 content_type: str | None) -> int:
    """Pipe stdin through an idempotent producer: batched, retried, never duplicated."""
    if content_type is not None:
        stream.content_type = content_type
    source: BinaryIO = sys.stdin.buffer
    # The command's retry budget, not the producer's minute: a server that stays
    # down ends the command with its error as any other command would.
    producer = stream.producer(f"duralog-cli-{uuid.uuid4()}", retry=stream.retry)
    progress = Progress(lambda: (producer.sent_bytes, producer.sent_messages),
                        enabled=_progress_wanted(args))
    try:
        if args.json:
            for number, line in _lines(source):
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError as err:
                    producer.flush()  # what came before is stored: say so exactly
                    raise DataError(
                        f"line {number} of stdin is not JSON ({err}); stopped there: "
                        f"{_stored(producer)}, nothing after line {number - 1} "
                        f"was sent") from None
                producer.append(line)  # the line as given: one JSON message
        else:
            while block := source.read(WRITE_BLOCK):
                producer.append(block)
        producer.flush()
    except KeyboardInterrupt:
        producer.abort()
        progress.done()
        print(f"duralog write: interrupted; {_stored(producer)}", file=sys.stderr)
        return 130
    except BaseException:
        producer.abort()
        progress.done()
        raise
    producer.close()
    progress.done()
    result_offset = producer.last_offset
    if args.close:
        result_offset = stream.close().next_offset or result_offset
    if result_offset:
        print(result_offset)
    return 0


def _stored(producer: Any) -> str:
    n = producer.sent_messages
    where = f", next offset {producer.last_offset}" if producer.last_offset else ""
    return (f"{n} message{'s' * (n != 1)} ({human_bytes(producer.sent_bytes)}) "
            f"stored{where}")


def _lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(source, 1):
        line = line.strip()
        if line:
            yield number, line


@guarded
def run_read(args: argparse.Namespace) -> int:
    stream = open_stream(args, args.stream)
    live = (args.live or "auto") if args.follow else None
    if args.live and not args.follow:
        raise CliError("--live needs --follow")
    pretty = sys.stdout.isatty() and not args.raw
    out = sys.stdout.buffer
    reader = stream.read(args.offset, live=live)
    try:
        for chunk in reader:
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
    finally:
        reader.close()
        if args.print_offset:
            print(f"offset: {reader.offset}", file=sys.stderr)
    return 0


def _info_dict(info: StreamInfo) -> dict[str, Any]:
    return {"url": info.url, "content_type": info.content_type,
            "next_offset": info.next_offset, "size": size_of(info.next_offset),
            "closed": info.closed, "ttl": info.ttl, "expires_at": info.expires_at}


@guarded
def run_info(args: argparse.Namespace) -> int:
    info = open_stream(args, args.stream).head()
    fields = _info_dict(info)
    if args.json:
        print(orjson.dumps(fields).decode())
        return 0
    for key, value in fields.items():
        if key == "size" and value is not None:
            value = f"{value} bytes ({human_bytes(value)})" if value >= 1024 else f"{value} bytes"
        if value is not None:
            print(f"{key}: {str(value).lower() if isinstance(value, bool) else value}")
    return 0


@guarded
def run_close(args: argparse.Namespace) -> int:
    stream = open_stream(args, args.stream)
    result = stream.close(args.data.encode() if args.data is not None else None)
    print(f"closed: {stream.url} (final offset {result.next_offset})")
    return 0


@guarded
def run_fork(args: argparse.Namespace) -> int:
    if args.sub_offset is not None and args.sub_offset < 0:
        raise CliError("--sub-offset must not be negative")
    source = open_stream(args, args.source)
    target_url = stream_url(args, args.target)
    try:
        fork = source.fork(target_url, offset=args.offset, sub_offset=args.sub_offset)
    except StreamNotFound as err:
        # PROTOCOL.md 4.2: a fork whose source does not exist is a 404 on the PUT
        # of the target; the missing stream is the source.
        raise DataError(f"source stream not found ({err.status}): {source.url}") from None
    info = fork.head()
    print(f"forked: {fork.url} from {source.url} (next offset {info.next_offset})")
    return 0


@guarded
def run_delete(args: argparse.Namespace) -> int:
    stream = open_stream(args, args.stream)
    stream.delete()
    print(f"deleted: {stream.url}")
    return 0


@guarded
def run_ls(args: argparse.Namespace) -> int:
    """Replay the registry's State Protocol changes into the current set of streams,
    then ask each for its size (HEAD)."""
    registry = open_stream(args, REGISTRY)
    streams: dict[str, dict[str, Any]] = {}
    try:
        events = list(registry.read("-1").json_items())
    except StreamNotFound:
        raise DataError(f"this server keeps no stream registry ({registry.url}), so it "
                        f"cannot list its streams (duralog servers do)") from None
    for event in events:
        if not isinstance(event, dict) or event.get("type") != "stream":
            continue
        operation = (event.get("headers") or {}).get("operation")
        key = event.get("key")
        if not isinstance(key, str):
            continue
        if operation in ("insert", "update") and isinstance(event.get("value"), dict):
            streams[key] = dict(event["value"])
        elif operation == "delete":
            streams.pop(key, None)
    for key, value in streams.items():
        try:
            info = open_stream(args, key).head()
        except DurableStreamError:
            value["size"] = None  # gone meanwhile, or not readable
            continue
        value["size"] = size_of(info.next_offset)
        value["closed"] = info.closed
    if args.json:
        print(orjson.dumps(sorted(streams.values(), key=lambda v: str(v.get("path")))).decode())
        return 0
    for name in sorted(streams):
        size = streams[name].get("size")
        shown = "-" if size is None else human_bytes(size)
        closed = "\tclosed" if streams[name].get("closed") else ""
        print(f"{name}\t{streams[name].get('contentType', '')}\t{shown}{closed}")
    return 0
