"""The idempotent producer, checkpointed consumers and pydantic-typed streams.

Producer tests run against our server and the Node reference (PROTOCOL.md
5.2.1 behaviour must be the same on both).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from duralog.client import (
    AsyncCheckpointedConsumer,
    AsyncDurableStream,
    CheckpointedConsumer,
    DurableStream,
    FileCheckpoint,
    ProducerFenced,
    SchemaError,
    SQLiteCheckpoint,
    StreamClosedError,
)
from duralog.client.typed import AsyncTypedStream, TypedStream

from .servers import ROOT, ServerProcess, duralog_server


@pytest.fixture(params=["memory_server", "ref_server"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    return request.getfixturevalue(request.param)


@pytest.fixture
def url(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream/extras-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------
# idempotent producer (5.2.1)


def test_producer_batches_pipelines_and_keeps_order(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    with stream.producer("writer-1", max_batch_bytes=200, linger=0.002,
                         max_in_flight=4) as producer:
        for i in range(500):
            producer.append_json({"i": i})
    assert [m["i"] for m in stream.read_json()] == list(range(500))
    assert producer.next_seq > 10  # many batches, each with its own Producer-Seq
    assert producer.last_offset == stream.head().next_offset


def test_producer_byte_stream_concatenates_and_close_stream(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="text/plain")
    producer = stream.producer("writer-b", linger=0.001, max_batch_bytes=64)
    for i in range(100):
        producer.append(f"{i},")
    result = producer.close_stream("end")
    assert result.closed
    assert stream.read_all() == ("".join(f"{i}," for i in range(100)) + "end").encode()
    assert stream.head().closed


def test_restarted_producer_fences_the_zombie(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    old = stream.producer("svc", epoch=0)
    old.append_json("from epoch 0")
    old.flush()
    new = stream.producer("svc", epoch=1)  # a restart bumps the epoch
    new.append_json("from epoch 1")
    new.flush()
    old.append_json("zombie write")
    with pytest.raises(ProducerFenced) as err:
        old.flush()  # 5.2.1: a stale epoch gets 403 and the server's epoch
    assert err.value.current_epoch == 1 and err.value.status == 403
    with pytest.raises(ProducerFenced):
        old.append_json("still fenced")  # a failed producer refuses more work
    old._stop()
    new.close()
    assert stream.read_json() == ["from epoch 0", "from epoch 1"]


def test_auto_claim_takes_the_next_epoch(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    for epoch in (0, 3):
        p = stream.producer("ephemeral", epoch=epoch)
        p.append_json(f"e{epoch}")
        p.close()
    # A fresh process without saved state: epoch 0 is stale (server is at 3).
    fresh = stream.producer("ephemeral", auto_claim=True)
    for i in range(20):
        fresh.append_json(i)
    fresh.close()
    assert fresh.epoch == 4  # 5.2.1 auto-claim: the server's epoch + 1
    assert stream.read_json() == ["e0", "e3", *range(20)]


def test_auto_claim_does_not_lose_data_to_a_stale_same_epoch(url: str) -> None:
    """Beyond the official clients: an earlier incarnation at the same epoch left
    seqs 0..n behind, so the first batch of a fresh producer looks like a duplicate
    (204) and would be dropped silently; auto-claim moves to the next epoch instead."""
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    first = stream.producer("lambda", auto_claim=True, linger=0)
    for i in range(5):
        first.append_json(f"first-{i}")
        first.flush()
    first.close()
    second = stream.producer("lambda", auto_claim=True)
    second.append_json("second")
    second.close()
    assert stream.read_json()[-1] == "second"
    assert second.epoch == first.epoch + 1


def test_producer_reports_a_closed_stream(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    stream.close()
    errors: list[Exception] = []
    producer = stream.producer("late", on_error=errors.append)
    producer.append_json("too late")
    with pytest.raises(StreamClosedError):
        producer.flush()
    producer._stop()
    assert len(errors) == 1 and isinstance(errors[0], StreamClosedError)


def test_async_producer_pipelines(url: str) -> None:
    async def main() -> list[int]:
        async with AsyncDurableStream(url) as stream:
            await stream.create(content_type="application/json")
            producer = await stream.producer("async-writer", max_batch_bytes=100,
                                             max_in_flight=3)
            for i in range(300):
                producer.append_json(i)
            await producer.flush()
            await producer.close_stream(json="done")
            return await stream.read_json()

    assert asyncio.run(main()) == [*range(300), "done"]


# ---------------------------------------------------------------------------
# checkpointed consumers


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A memory server whose catch-up reads return about 24 bytes: many chunks."""
    log = tmp_path_factory.mktemp("small-chunks") / "server.log"
    server = duralog_server("memory", log_path=log, extra=["--chunk-size", "24"]).start()
    yield server
    server.stop()


def _numbers(url: str, count: int, per_append: int = 3) -> DurableStream:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    for start in range(0, count, per_append):
        stream.append_json(*range(start, min(start + per_append, count)))
    return stream


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_checkpointed_consumer_resumes_without_gap_or_duplicate(
        small_chunks: ServerProcess, tmp_path: Path, kind: str) -> None:
    url = f"{small_chunks.url}/v1/stream/cp-{uuid.uuid4().hex[:10]}"
    stream = _numbers(url, 30)

    def checkpoint() -> FileCheckpoint | SQLiteCheckpoint:
        if kind == "file":
            return FileCheckpoint(tmp_path / "offset.txt")
        return SQLiteCheckpoint(tmp_path / "offsets.db", name="numbers")

    seen: list[int] = []
    consumer = CheckpointedConsumer(stream, checkpoint())
    for batch in consumer.json_batches():
        seen.extend(batch.items)
        if len(seen) >= 12:
            consumer.commit()  # save before leaving the loop
            break
    assert seen == list(range(len(seen))) and 12 <= len(seen) < 30
    stream.append_json(*range(30, 40))
    # "Restart": a new consumer object, a new checkpoint object on the same storage.
    again = CheckpointedConsumer(DurableStream(url), checkpoint())
    rest = list(again.json_items())
    assert seen + rest == list(range(40))
    assert checkpoint().load() == stream.head().next_offset


def test_auto_commit_redelivers_the_chunk_being_handled(small_chunks: ServerProcess,
                                                        tmp_path: Path) -> None:
    url = f"{small_chunks.url}/v1/stream/cp-{uuid.uuid4().hex[:10]}"
    stream = _numbers(url, 60)
    cp = FileCheckpoint(tmp_path / "o")
    handled: list[list[int]] = []
    for batch in CheckpointedConsumer(stream, cp).json_batches():
        handled.append(batch.items)
        if len(handled) == 2:
            break  # as if processing chunk 2 crashed: it was not committed
    redelivered = [b.items for b in CheckpointedConsumer(stream, cp).json_batches()]
    assert redelivered[0] == handled[1]  # at-least-once: the unfinished chunk again
    flat = [i for b in handled[:1] + redelivered for i in b]
    assert flat == list(range(60))


def test_consumer_survives_a_killed_process(small_chunks: ServerProcess,
                                            tmp_path: Path) -> None:
    """A real restart: a child process consumes with a SQLite checkpoint and stores what
    it handled in the same transaction; it is killed (SIGKILL) mid-stream; a second
    run finishes. Together they handled every message exactly once."""
    url = f"{small_chunks.url}/v1/stream/cp-{uuid.uuid4().hex[:10]}"
    _numbers(url, 200, per_append=1)
    db = tmp_path / "consumer.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from duralog.client import CheckpointedConsumer, DurableStream, SQLiteCheckpoint
        cp = SQLiteCheckpoint({str(db)!r}, name="c")
        cp.connection.execute("CREATE TABLE IF NOT EXISTS seen (n INTEGER)")
        consumer = CheckpointedConsumer(DurableStream({url!r}), cp, auto_commit=False)
        handled = 0
        for chunk in consumer:
            for n in chunk.json():
                cp.connection.execute("INSERT INTO seen VALUES (?)", (n,))
            consumer.commit()  # one transaction: results and offset together
            handled += 1
            if sys.argv[1] == "crash" and handled == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        print("done")
    """)
    first = subprocess.run([sys.executable, "-c", script, "crash"], cwd=ROOT,
                           capture_output=True, timeout=60)
    assert first.returncode == -9
    second = subprocess.run([sys.executable, "-c", script, "finish"], cwd=ROOT,
                            capture_output=True, timeout=60)
    assert second.returncode == 0, second.stderr
    import sqlite3

    rows = [r[0] for r in sqlite3.connect(db).execute("SELECT n FROM seen ORDER BY rowid")]
    assert rows == list(range(200))


def test_async_checkpointed_consumer(small_chunks: ServerProcess, tmp_path: Path) -> None:
    url = f"{small_chunks.url}/v1/stream/cp-{uuid.uuid4().hex[:10]}"
    _numbers(url, 40)

    async def run(limit: int | None) -> list[int]:
        seen: list[int] = []
        async with AsyncDurableStream(url) as stream:
            consumer = AsyncCheckpointedConsumer(stream, FileCheckpoint(tmp_path / "a"))
            async for batch in consumer.json_batches():
                seen.extend(batch.items)
                if limit is not None and len(seen) >= limit:
                    consumer.commit()
                    break
        return seen

    first = asyncio.run(run(4))
    second = asyncio.run(run(None))
    assert 4 <= len(first) < 40
    assert first + second == list(range(40))


# ---------------------------------------------------------------------------
# typed streams


class Event(BaseModel):
    kind: str
    n: int


def test_typed_stream_validates_on_append_and_read(url: str) -> None:
    typed = TypedStream(url, Event)
    typed.create(initial=[Event(kind="start", n=0)])
    typed.append(Event(kind="a", n=1), {"kind": "b", "n": "2"})  # dicts are validated too
    with pytest.raises(SchemaError):
        typed.append({"kind": "c"})  # missing n: nothing is sent
    items = list(typed.read())
    assert items == [Event(kind="start", n=0), Event(kind="a", n=1), Event(kind="b", n=2)]
    assert all(isinstance(i, Event) for i in items)
    # A message that does not fit the model, written by someone else:
    typed.stream.append_json({"kind": "bad", "n": "not a number"})
    reader = typed.read()
    with pytest.raises(SchemaError) as err:
        list(reader)
    assert err.value.offset is not None


def test_typed_producer_and_live_read(url: str) -> None:
    typed = TypedStream(url, Event)
    typed.create()
    with typed.producer("typed-writer") as producer:
        for n in range(10):
            producer.append(Event(kind="tick", n=n))
        with pytest.raises(SchemaError):
            producer.append({"kind": "tick"})
    typed.stream.close()
    batches = list(typed.read(live="sse").batches())
    assert [e.n for b in batches for e in b.items] == list(range(10))
    assert batches[-1].offset == typed.stream.head().next_offset


def test_async_typed_stream(url: str) -> None:
    async def main() -> list[Event]:
        typed = AsyncTypedStream(url, Event)
        await typed.create()
        await typed.append(Event(kind="x", n=1), close=True)
        return [e async for e in typed.read(live="long-poll")]

    assert asyncio.run(main()) == [Event(kind="x", n=1)]


# ---------------------------------------------------------------------------
# docs/client.md: every example runs


def test_docs_examples_run(memory_server: ServerProcess, tmp_path: Path) -> None:
    doc = (ROOT / "docs/client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 6
    suffix = uuid.uuid4().hex[:8]
    for block in blocks:
        code = block.replace("http://127.0.0.1:4437", memory_server.url)
        # Fresh stream names and checkpoint files per run, so the suite can repeat.
        code = re.sub(r"/v1/stream/(\w+)", rf"/v1/stream/\1-{suffix}", code)
        code = code.replace("/tmp/events.offset", str(tmp_path / "events.offset"))
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{block}\n{result.stderr}"
    assert "[9.5, 3.0]" in result.stdout
