"""``duralog state STREAM``: a state stream's materialized state (STATE-PROTOCOL.md 6).

Prints one table per entity type on a terminal and one JSON document
(``{type: {key: value}}``) when piped or with ``--json``. ``--follow`` keeps it
current: the screen is redrawn (or a new JSON line printed) after every batch
that reached the stream's tail, so a transaction never shows half-applied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from typing import Any

import orjson

from ..client import DurableStream
from ..state.events import EventError
from ..state.materialized import MaterializedState
from .connect import add_connection_options, guarded, open_stream

MAX_COLUMNS = 8


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "state", help="show a state stream's materialized state",
        description="Materialize a State Protocol stream (insert/update/delete/upsert, "
                    "snapshots, reset) and print it: tables on a terminal, JSON when piped.")
    p.add_argument("stream", help="stream name (or full URL)")
    add_connection_options(p)
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep it current until the stream is closed")
    p.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    p.add_argument("--type", action="append", dest="types", metavar="TYPE",
                   help="only this entity type (repeatable)")
    p.set_defaults(run=guarded(run_state))


def run_state(args: argparse.Namespace) -> int:
    stream = open_stream(args, args.stream)
    as_json = args.json or not sys.stdout.isatty()
    state = MaterializedState()
    show: Callable[[MaterializedState], None] = (
        (lambda s: _print_json(s, args.types)) if as_json
        else (lambda s: _print_tables(s, args.types, clear=args.follow)))
    try:
        follow(stream, state, show, live=args.follow)
    except EventError as err:
        print(f"duralog state: {err}", file=sys.stderr)
        return 1
    return 0


def follow(stream: DurableStream, state: MaterializedState,
           show: Callable[[MaterializedState], None], *, live: bool) -> None:
    """Catch up and show; when ``live``, wait for more, catch up, show again,
    until the stream is closed."""
    offset = "-1"
    pending: list[tuple[bytes, str, str]] = []
    first = True
    while True:
        reader = stream.read(offset)
        for chunk in reader:
            pending.append((chunk.data, offset, chunk.offset))
            offset = chunk.offset
        for data, start, _ in pending:   # applied at the up-to-date boundary
            state.apply_bytes(data, start)
        if pending or first:
            show(state)
        pending.clear()
        first = False
        if not live or reader.closed:
            return
        poll = stream.read(offset, live="long-poll")
        try:
            chunk = next(iter(poll), None)
        finally:
            poll.close()
        if chunk is not None:
            pending.append((chunk.data, offset, chunk.offset))
            offset = chunk.offset


def _selected(state: MaterializedState, types: list[str] | None) -> dict[str, dict[str, Any]]:
    data = state.to_json()
    return {t: rows for t, rows in data.items() if not types or t in types}


def _print_json(state: MaterializedState, types: list[str] | None) -> None:
    sys.stdout.buffer.write(orjson.dumps(_selected(state, types)) + b"\n")
    sys.stdout.flush()


def _cell(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def render_tables(state: MaterializedState, types: list[str] | None = None) -> str:
    """Each type as a table: the key, then the values' fields (or the value)."""
    out: list[str] = []
    for type_, rows in _selected(state, types).items():
        out.append(f"{type_} ({len(rows)} {'row' if len(rows) == 1 else 'rows'})")
        fields: list[str] = []
        if rows and all(isinstance(v, dict) for v in rows.values()):
            for value in rows.values():
                fields.extend(f for f in value if f not in fields)
            fields = fields[:MAX_COLUMNS]
            header = ["key", *fields]
            table = [[key, *(_cell(v[f]) if f in v else "" for f in fields)]
                     for key, v in rows.items()]
        else:
            header = ["key", "value"]
            table = [[key, _cell(v)] for key, v in rows.items()]
        widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        out.append("  ".join("-" * w for w in widths))
        for row in table:
            out.append("  ".join(str(c).ljust(w) for c, w in
                                 zip(row, widths, strict=True)).rstrip())
        out.append("")
    if not out:
        out.append("(no entities)")
    return "\n".join(out).rstrip("\n")


def _print_tables(state: MaterializedState, types: list[str] | None, *, clear: bool) -> None:
    text = render_tables(state, types)
    if clear:
        sys.stdout.write("\x1b[H\x1b[2J")   # home, clear screen: redraw in place
        lines = shutil.get_terminal_size().lines
        text = "\n".join(text.splitlines()[: max(lines - 1, 1)])
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
