"""Online backup of a sqlite data directory, consistent while a server writes.

SQLite's backup API copies the database as of one read transaction: in WAL
mode that transaction does not block the server's writer, and the copy holds
exactly the appends committed when it began (each append is one commit, so no
append is ever half in a backup). The copy is written beside the destination
and renamed into place, so a crash never leaves a partial database at DEST.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .sqlite import DB_NAME


@dataclass(slots=True)
class BackupResult:
    path: Path
    streams: int
    size: int


def backup(data_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> BackupResult:
    """Copy the database under ``data_dir`` into the new data directory ``dest_dir``."""
    source = Path(data_dir) / DB_NAME
    if not source.is_file():
        raise FileNotFoundError(2, "no duralog database here", str(source))
    dest = Path(dest_dir)
    target = dest / DB_NAME
    if target.exists():
        raise FileExistsError(17, "already holds a database; back up into a new directory",
                              str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    partial = dest / (DB_NAME + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30.0)
    try:
        out = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, under one read transaction.
            src.backup(out, pages=-1)
            check = out.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"the copy failed its integrity check: {check}")
            streams = out.execute("SELECT count(*) FROM streams WHERE soft_deleted = 0"
                                  ).fetchone()[0]
        finally:
            out.close()
    finally:
        src.close()
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return BackupResult(target, streams, target.stat().st_size)
