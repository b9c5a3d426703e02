"""``duralog check``: verify a data directory offline (and repair what can be)."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check", help="verify a SQLite data directory offline",
        description="Verify the durable store in a data directory: SQLite's integrity "
                    "check, every record's checksum, stream tails against records, fork "
                    "references, the registry against the streams, orphaned rows. Prints "
                    "each problem and a summary; exits 1 if problems remain. Run it while "
                    "no server uses the directory.")
    p.add_argument("--data-dir", help="the data directory (default ./duralog-data; "
                                      "DURALOG_DATA_DIR)")
    p.add_argument("--repair", action="store_true",
                   help="fix what can be fixed without inventing data (see docs/storage.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..store.sqlite.check import check

    data_dir = args.data_dir or os.environ.get("DURALOG_DATA_DIR") or "./duralog-data"
    report = check(data_dir, repair=args.repair)
    print(report.summary())
    return 1 if report.remaining else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace(data_dir=None, repair=False)))
