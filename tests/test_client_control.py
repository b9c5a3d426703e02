"""Control over reads and writes: response status and headers, bounded and
stoppable sync reads, the producer's closing twice and its queue bound.

Against real servers in subprocesses: duralog (memory) and the Node reference,
both with 1 s long-polls so a timed-out long-poll (204) comes quickly.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

from duralog.client import AsyncDurableStream, DurableStream, ProducerQueueFull

from .servers import ServerProcess, duralog_server, reference_server


@pytest.fixture(scope="module", params=["duralog", "reference"])
def quick_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    if request.param == "duralog":
        server = duralog_server("memory", extra=["--long-poll-timeout", "1"])
    else:
        request.getfixturevalue("node_available")
        server = reference_server(long_poll_ms=1000)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def url(quick_server: ServerProcess) -> str:
    return f"{quick_server.url}/v1/stream/ctl-{uuid.uuid4().hex[:12]}"


def test_chunks_and_reader_expose_status_and_headers(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    stream.append_json({"a": 1})
    reader = stream.read()
    chunk = next(reader)
    assert chunk.status == 200
    assert chunk.headers["stream-next-offset"] == chunk.offset
    assert chunk.headers["content-type"].startswith("application/json")
    assert reader.status == 200 and reader.headers["stream-next-offset"] == reader.offset

    # A long-poll with nothing new times out on the server: 204 (PROTOCOL.md 5.7).
    # The reader's timeout hands control back; its status says what came last.
    live = stream.read(reader.offset, live="long-poll", timeout=3)
    with pytest.raises(TimeoutError):
        next(live)
    assert live.status == 204
    assert live.headers["stream-next-offset"] == reader.offset
    assert live.up_to_date
    # The reader stays usable after a timeout.
    stream.append_json({"a": 2})
    chunk = next(live)
    assert chunk.json() == [{"a": 2}] and chunk.status == 200
    live.close()

    sse = stream.read(reader.offset, live="sse")
    chunk = next(sse)
    assert chunk.status == 200 and sse.headers["content-type"].startswith("text/event-stream")
    sse.close()


def test_async_reader_exposes_status_and_headers(url: str) -> None:
    async def main() -> None:
        async with AsyncDurableStream(url) as stream:
            await stream.create(content_type="text/plain")
            await stream.append("hi")
            reader = stream.read()
            chunks = [c async for c in reader]
            assert [c.status for c in chunks] == [200]
            assert reader.status == 200
            assert reader.headers["stream-next-offset"] == chunks[-1].offset

    asyncio.run(main())


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_sync_live_read_on_an_idle_stream_closes_from_another_thread(url: str,
                                                                     live: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="text/plain")
    reader = stream.read("now", live=live)
    got: list[object] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(reader)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(1.5)
    assert thread.is_alive()  # idle stream: the read is waiting
    reader.close()  # from this thread while the other one is inside next()
    thread.join(10)  # generous; a stuck read would wait for ever (SSE) or 30 s
    assert not thread.is_alive()
    assert errors == [] and got == []
    with pytest.raises(StopIteration):
        next(reader)
    reader.close()  # closing twice is harmless


def test_reader_timeout_must_be_positive(url: str) -> None:
    with pytest.raises(ValueError):
        DurableStream(url).read(timeout=0)


def test_producer_close_stream_twice_returns_the_same_final_offset(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    producer = stream.producer("closer")
    producer.append_json({"n": 1})
    first = producer.close_stream()
    second = producer.close_stream()
    assert first.closed and second == first
    assert stream.head().next_offset == first.next_offset
    producer.close()  # and a plain close after that is fine too

    async def main() -> None:
        other = url + "-async"
        async with AsyncDurableStream(other) as s:
            await s.create(content_type="application/json")
            p = await s.producer("closer")
            p.append_json({"n": 1})
            a = await p.close_stream()
            b = await p.close_stream()
            assert a.closed and a == b

    asyncio.run(main())


def test_producer_queue_bound_blocks_then_everything_lands_once(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    with stream.producer("bounded", max_queue_items=5, max_queue_bytes=200,
                         max_batch_bytes=64) as producer:
        for i in range(300):
            producer.append_json({"i": i})
            assert producer._core.queued_items <= 5
            assert producer._core.queued_bytes <= 200
    assert stream.read_json() == [{"i": i} for i in range(300)]


def test_producer_queue_bound_raises_when_told(url: str) -> None:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    producer = stream.producer("raiser", on_full="raise", max_queue_items=2, linger=30)
    producer.append_json(1)
    producer.append_json(2)
    with pytest.raises(ProducerQueueFull):
        producer.append_json(3)
    producer.close()
    assert stream.read_json() == [1, 2]
    with pytest.raises(ValueError):
        stream.producer("x", on_full="drop")
    with pytest.raises(ValueError):
        stream.producer("x", max_queue_bytes=0)


def test_a_dropped_live_reader_stops_its_thread(url: str) -> None:
    import gc

    stream = DurableStream(url)
    stream.create(content_type="text/plain", body="x")

    def helpers() -> int:
        return sum(t.name == "duralog-reader" and t.is_alive() for t in threading.enumerate())

    before = helpers()
    reader = stream.read(live="sse")
    assert next(reader).data == b"x"  # now waiting live on an idle stream
    assert helpers() == before + 1
    del reader
    gc.collect()
    for _ in range(100):  # generous: the thread notices within a poll interval
        if helpers() == before:
            break
        threading.Event().wait(0.1)
    assert helpers() == before


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_ctrl_c_interrupts_a_blocking_live_read_at_once(url: str, live: str) -> None:
    import signal
    import subprocess
    import sys

    DurableStream(url).create(content_type="text/plain")
    code = (f"from duralog.client import DurableStream\n"
            f"print('reading', flush=True)\n"
            f"for chunk in DurableStream({url!r}).read('now', live={live!r}):\n"
            f"    pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"reading\n"
    threading.Event().wait(1.0)  # inside the live read by now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)  # generous: a stuck read never ends (SSE)
    assert b"KeyboardInterrupt" in err
    assert proc.returncode != 0
