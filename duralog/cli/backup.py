"""``duralog backup``: an online copy of a sqlite data directory."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backup", help="copy a data directory while the server runs",
        description="Copy the database of a sqlite data directory into DEST, a new data "
                    "directory, consistently while a server is writing to it (SQLite's "
                    "backup API). Restore: stop the server and serve DEST (or copy it in "
                    "place of the old directory).")
    p.add_argument("--data-dir", default=None,
                   help="the data directory to copy (default ./duralog-data; "
                        "DURALOG_DATA_DIR)")
    p.add_argument("dest", metavar="DEST", help="a new directory to write the copy into")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..store.backup import backup

    data_dir = args.data_dir or os.environ.get("DURALOG_DATA_DIR") or "./duralog-data"
    try:
        result = backup(data_dir, args.dest)
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        path = getattr(exc, "filename", None)
        print(f"duralog backup: {reason}" + (f": {path}" if path else ""), file=sys.stderr)
        return 1
    except Exception as exc:  # sqlite3.Error and the like: one line, not a traceback
        print(f"duralog backup: --data-dir {data_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {result.streams} streams ({result.size} bytes) to {result.path}")
    return 0
