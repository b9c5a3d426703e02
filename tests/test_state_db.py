"""StreamDB / AsyncStreamDB against a real duralog server, and the writer.

- transactions are atomic to StreamDB readers under concurrent writers;
- await_txid, change callbacks, indexes, predicates;
- resume from a checkpoint after kill -9 of a reader process, nothing missed
  or applied twice (DURALOG_STATE_KILL_ROUNDS kills, default 3).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from duralog.client import DurableStream
from duralog.state import (
    AsyncStreamDB,
    Change,
    Collection,
    EventError,
    MaterializedState,
    StateSchema,
    StateWriter,
    StreamDB,
)
from duralog.state.writer import AsyncStateWriter
from tests.servers import ROOT


class Member(BaseModel):
    id: str
    group: str
    team: str = ""


class Flag(BaseModel):
    id: str
    on: bool


SCHEMA = StateSchema({"members": Collection(type="member", model=Member, primary_key="id"),
                      "flags": Collection(type="flag", model=Flag, primary_key="id")})
KILL_ROUNDS = int(os.environ.get("DURALOG_STATE_KILL_ROUNDS", "3"))


def new_stream(server: Any, name: str) -> DurableStream:
    stream = DurableStream(f"{server.url}/v1/stream/{name}-{uuid.uuid4().hex}")
    stream.create(content_type="application/json")
    return stream


@pytest.mark.parametrize("server", ["memory_server", "sqlite_server", "ref_server"])
def test_transactions_are_atomic_under_concurrent_writers(
        server: str, request: pytest.FixtureRequest) -> None:
    stream = new_stream(request.getfixturevalue(server), "atomic")
    writers, txs, size = 4, 25, 8
    db = StreamDB(stream, SCHEMA)
    db.members.create_index("group")
    torn: list[str] = []
    batches: list[list[Change]] = []

    def check(changes: list[Change]) -> None:
        batches.append(changes)
        for group in {c.value.group for c in changes if c.value is not None}:
            n = len(db.members.where(group=group))
            if n != size:
                torn.append(f"callback saw {n}/{size} of {group}")

    db.on_change(check)
    db.preload(timeout=30)
    stop = threading.Event()

    def poll() -> None:   # a reader thread looking while batches apply
        while not stop.is_set():
            counts: dict[str, int] = {}
            for m in db.members:
                counts[m.group] = counts.get(m.group, 0) + 1
            torn.extend(f"poll saw {n}/{size} of {g}" for g, n in counts.items() if n != size)

    def write(w: int) -> None:
        with StateWriter(stream.url, producer_id=f"w{w}", linger=0.0) as writer:
            for t in range(txs):
                group = f"w{w}-t{t}"
                writer.commit(SCHEMA.members.insert(Member(id=f"{group}-{i}", group=group))
                              for i in range(size))

    poller = threading.Thread(target=poll)
    poller.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 60
    while len(db.members) < writers * txs * size and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    poller.join()
    db.close()
    assert len(db.members) == writers * txs * size
    assert torn == []
    assert sum(len(b) for b in batches) == writers * txs * size
    # The stream holds each transaction once, its events adjacent (one append).
    items = stream.read_json()
    assert len(items) == writers * txs * size
    for start in range(0, len(items), size):
        txids = {item["headers"]["txid"] for item in items[start:start + size]}
        assert len(txids) == 1


def test_await_txid_callbacks_indexes_and_filters(memory_server: Any) -> None:
    stream = new_stream(memory_server, "txid")
    with StreamDB(stream, SCHEMA) as db, StateWriter(stream, producer_id="tx") as writer:
        db.members.create_index("team")
        seen: list[tuple[str, str]] = []
        one: list[Change] = []
        db.members.on_change(lambda c: seen.append((c.operation, c.key)))
        db.members.on_change(one.append, key="m2")
        db.preload(timeout=30)
        txid = writer.commit([SCHEMA.members.insert(Member(id="m1", group="g", team="a")),
                              SCHEMA.members.insert(Member(id="m2", group="g", team="b")),
                              SCHEMA.flags.upsert(Flag(id="dark", on=True))])
        db.await_txid(txid, timeout=30)
        assert txid in db._core.seen_txids
        assert db.members.get("m1") == Member(id="m1", group="g", team="a")
        assert db.flags["dark"].on is True
        assert [m.id for m in db.members.where(team="b")] == ["m2"]
        assert [m.id for m in db.members.filter(lambda m: m.team < "b")] == ["m1"]
        txid2 = writer.commit([SCHEMA.members.update(Member(id="m2", group="g", team="a")),
                               SCHEMA.members.delete("m1")])
        db.await_txid(txid2, timeout=30)
        assert [m.id for m in db.members.where(team="a")] == ["m2"]
        assert db.members.where(team="b") == [] and "m1" not in db.members
        assert seen == [("insert", "m1"), ("insert", "m2"), ("update", "m2"), ("delete", "m1")]
        assert [c.operation for c in one] == ["insert", "update"]
        assert one[1].previous.team == "b"
        with pytest.raises(TimeoutError):
            db.await_txid("never-written", timeout=0.3)
        writer.reset()
        writer.flush()
        deadline = time.monotonic() + 30
        while len(db.members) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(db.members) == 0 and len(db.flags) == 0
        assert db.offset == stream.head().next_offset


def test_invalid_values_are_rejected_and_malformed_events_stop_the_db(
        memory_server: Any) -> None:
    stream = new_stream(memory_server, "bad")
    stream.append_json({"type": "member", "key": "x", "value": {"group": 5},
                        "headers": {"operation": "insert"}},
                       {"type": "member", "key": "y", "value": {"group": "ok"},
                        "headers": {"operation": "insert"}},
                       {"type": "other", "key": "z", "value": 1,
                        "headers": {"operation": "insert"}})
    db = StreamDB(stream, SCHEMA)
    db.sync()
    assert [m.id for m in db.members] == ["y"]   # the key field comes from the event key
    assert [(r.collection, r.key) for r in db.rejected] == [("members", "x")]
    offset = db.offset
    stream.append_json({"type": "member", "key": "w", "value": {"group": "g"},
                        "headers": {"operation": "insert"}},
                       {"type": "member", "headers": {"operation": "insert"}})
    with pytest.raises(EventError, match=f"message 1 of the chunk read from offset {offset}"):
        db.sync()
    assert "w" not in db.members and db.offset == offset   # nothing of the bad batch applied
    db.close()


def test_file_checkpoint_resumes_without_replaying(memory_server: Any, tmp_path: Path) -> None:
    stream = new_stream(memory_server, "file-cp")
    path = tmp_path / "state.json"
    with StateWriter(stream) as writer:
        writer.commit(SCHEMA.members.insert(Member(id=f"m{i}", group="g")) for i in range(5))
    db = StreamDB(stream, SCHEMA, checkpoint=path)
    assert db.sync() == 5
    db.close()
    stream.append_json(SCHEMA.members.delete("m0").to_json())
    again = StreamDB(stream, SCHEMA, checkpoint=path)
    assert again.resumed_from == db.offset and len(again.members) == 5
    assert again.sync() == 1      # only the new event was read
    assert again.members.keys() == ["m1", "m2", "m3", "m4"]
    again.close()
    other = DurableStream(f"{stream.url}-other")
    with pytest.raises(ValueError, match="holds the state of"):
        StreamDB(other, SCHEMA, checkpoint=path)


def test_resume_after_kill_9_nothing_missed_or_applied_twice(
        sqlite_server: Any, tmp_path: Path) -> None:
    stream = new_stream(sqlite_server, "kill9")
    checkpoint = tmp_path / "reader.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    total = 600
    done_writing = threading.Event()

    def write() -> None:
        rng = random.Random(9)
        with StateWriter(stream.url, producer_id="k9", linger=0.001) as writer:
            for i in range(total):
                events = [writer_event for writer_event in (
                    _item(i), _counter(i))]
                writer.commit(events)
                if rng.random() < 0.1:
                    time.sleep(0.01)
            writer.flush()
        stream.close()
        done_writing.set()

    def start_reader() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tests.state_reader", stream.url,
                                 str(checkpoint)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    writer = threading.Thread(target=write)
    writer.start()
    resumed: list[str] = []
    rng = random.Random(1)
    for _ in range(KILL_ROUNDS):
        proc = start_reader()
        assert proc.stdout is not None
        resumed.append(proc.stdout.readline().split()[1])
        time.sleep(rng.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    writer.join()
    proc = start_reader()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    resumed.append(out.split()[1])
    assert resumed[0] == "-1"
    assert any(r != "-1" for r in resumed[1:]), resumed   # restarts did not start over

    conn = sqlite3.connect(checkpoint)
    chain = conn.execute("SELECT start, end_, events FROM batches ORDER BY rowid").fetchall()
    expected_start = "-1"
    for start, end, _ in chain:
        assert start == expected_start, f"batch {start}..{end} does not follow {expected_start}"
        expected_start = end
    assert expected_start == stream.head().next_offset
    assert sum(n for _, _, n in chain) == 2 * total   # every event applied exactly once

    # The checkpointed rows are the materialized stream.
    truth = MaterializedState()
    truth.apply_json(stream.read_json())
    rows = {(c, k): v for c, k, v in conn.execute(
        "SELECT collection, key, json(value) FROM state_rows")}
    assert len(rows) == total + 1
    import json
    assert json.loads(rows[("counters", "c")]) == truth.get("counter", "c") == {
        "id": "c", "value": total - 1}
    assert all(json.loads(rows[("items", f"i{i}")]) == {"id": f"i{i}", "n": i}
               for i in range(total))


def _item(i: int) -> Any:
    from duralog.state import events as ev
    return ev.insert("item", f"i{i}", {"id": f"i{i}", "n": i})


def _counter(i: int) -> Any:
    from duralog.state import events as ev
    return ev.upsert("counter", "c", {"id": "c", "value": i})


def test_async_stream_db_and_writer(memory_server: Any) -> None:
    url = new_stream(memory_server, "async").url

    async def main() -> None:
        async with AsyncStreamDB(url, SCHEMA) as db:
            await db.preload(timeout=30)
            changes: list[list[Change]] = []
            db.on_change(changes.append)
            writer = await AsyncStateWriter.open(url, producer_id="aw")
            async with writer.transaction() as tx:
                tx.append(SCHEMA.members.insert(Member(id="a", group="g")),
                          SCHEMA.members.insert(Member(id="b", group="g")))
            await db.await_txid(tx.txid, timeout=30)
            assert db.members.keys() == ["a", "b"]
            assert [len(c) for c in changes] == [2]       # one batch, both rows
            await writer.close()
            with pytest.raises(TimeoutError):
                await db.await_txid("nope", timeout=0.2)
        again = AsyncStreamDB(url, SCHEMA)
        assert await again.sync() == 2
        await again.close()

    asyncio.run(main())


def test_docs_examples_run(memory_server: Any, tmp_path: Path) -> None:
    """docs/state.md: every Python example runs as written."""
    import re

    doc = (ROOT / "docs/state.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 4
    suffix = uuid.uuid4().hex[:8]
    outputs = []
    for block in blocks:
        code = block.replace("http://127.0.0.1:4437", memory_server.url)
        code = re.sub(r"/v1/stream/([\w-]+)", rf"/v1/stream/\1-{suffix}", code)
        code = code.replace("/tmp/app-state.db", str(tmp_path / "app-state.db"))
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env={**os.environ,
                                                            "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "['Ada', 'Grace']" in outputs[0] and "['Grace H.']" in outputs[0]
    assert "True 0" in outputs[1]
    assert outputs[3].splitlines() == ["102 -> 4", "True"]


def test_async_stream_db_resumes_from_a_sqlite_checkpoint(memory_server: Any,
                                                         tmp_path: Path) -> None:
    stream = new_stream(memory_server, "async-cp")
    with StateWriter(stream) as writer:
        writer.commit(SCHEMA.flags.insert(Flag(id=f"f{i}", on=i % 2 == 0)) for i in range(6))
    path = tmp_path / "async.db"

    async def main() -> tuple[str, int, int]:
        db = AsyncStreamDB(stream.url, SCHEMA, checkpoint=path)
        first = await db.sync()
        await db.close()
        stream.append_json(SCHEMA.flags.delete("f0").to_json())
        again = AsyncStreamDB(stream.url, SCHEMA, checkpoint=path)
        resumed = again.resumed_from
        await again.preload(timeout=30)
        n = len(again.flags)
        await again.close()
        assert resumed == db.offset
        return resumed, first, n

    resumed, first, n = asyncio.run(main())
    assert resumed != "-1" and first == 6 and n == 5
