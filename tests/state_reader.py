"""A StreamDB reader process for the kill -9 test (tests/test_state_db.py).

    python -m tests.state_reader URL CHECKPOINT.db

Follows URL with a SQLite checkpoint until the stream is closed. In the
checkpoint's transaction it logs each applied batch's (start, end) offsets to
a table ``batches``: after any number of kills and restarts, the rows must
chain from -1 to the final offset with no gap (nothing missed) and no overlap
(nothing applied twice). Prints ``resumed <offset>`` at start and ``done`` at
the end.
"""

from __future__ import annotations

import sqlite3
import sys

from pydantic import BaseModel

from duralog.state import Collection, SQLiteStateCheckpoint, StateSchema, StreamDB
from duralog.state.tables import AppliedBatch


class Item(BaseModel):
    id: str
    n: int


class Counter(BaseModel):
    id: str
    value: int


SCHEMA = StateSchema({"items": Collection(type="item", model=Item, primary_key="id"),
                      "counters": Collection(type="counter", model=Counter, primary_key="id")})


def log_batch(batch: AppliedBatch, conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO batches (start, end_, events) VALUES (?, ?, ?)",
                 (batch.start, batch.end, batch.events))


def main() -> int:
    url, path = sys.argv[1], sys.argv[2]
    checkpoint = SQLiteStateCheckpoint(path, on_batch=log_batch)
    checkpoint.connection.execute(
        "CREATE TABLE IF NOT EXISTS batches (start TEXT, end_ TEXT, events INTEGER)")
    db = StreamDB(url, SCHEMA, checkpoint=checkpoint, live="long-poll")
    print("resumed", db.resumed_from, flush=True)
    db.start()
    db.join()
    print("done", db.offset, flush=True)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
