"""The client across cut connections, server-side SSE closes, 503 and 429.

A small TCP proxy on 127.0.0.1 forwards to a real duralog server and cuts
connections after a random number of bytes (both directions), so requests
and responses die mid-flight. Readers must deliver every message exactly once
and in order; the idempotent producer must land every message exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from duralog.client import (
    AsyncDurableStream,
    ConnectionFailed,
    DurableStream,
    ProducerQueueFull,
    RateLimited,
    RetryPolicy,
    ServerError,
)

from .servers import ServerProcess, duralog_server, free_port

FAST_RETRY = RetryPolicy(max_attempts=60, initial_delay=0.002, max_delay=0.05)


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to an upstream port, misbehaving on purpose.

    ``cut``: (low, high) bytes; each connection is cut (both sockets closed)
    once it has carried a random number of bytes in that range, counted in
    both directions. ``reject``: the first ``reject_count`` connections get a
    canned HTTP response (for example a 503) instead of the server. ``log``
    keeps every byte sent by clients, to check the headers they carried.
    """

    def __init__(self, upstream_port: int, *, cut: tuple[int, int] | None = None,
                 reject: bytes | None = None, reject_count: int = 0, seed: int = 1,
                 drop_answer_to: bytes | None = None, drop_count: int = 0) -> None:
        self.upstream_port = upstream_port
        # Forward requests containing ``drop_answer_to`` (the first ``drop_count``)
        # but hang up instead of returning the server's answer: the request landed,
        # the client never hears it.
        self.drop_answer_to = drop_answer_to
        self.drop_count = drop_count
        self.dropped = 0
        self.cut = cut
        self.reject = reject
        self.reject_count = reject_count
        self.rng = random.Random(seed)
        self.port = free_port()
        self.connections = 0
        self.cuts = 0
        self.rejections: list[float] = []
        self.accept_times: list[float] = []
        self.log = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.accept_times.append(time.monotonic())
                rejecting = len(self.rejections) < self.reject_count and self.reject is not None
                if rejecting:
                    self.rejections.append(time.monotonic())
                budget = self.rng.randint(*self.cut) if self.cut else None
            if rejecting:
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._serve, args=(client, budget), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            client.recv(65536)
            client.sendall(self.reject or b"")
        except OSError:
            pass
        finally:
            client.close()

    def _serve(self, client: socket.socket, budget: int | None) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        state = {"left": budget, "closed": False}
        lock = threading.Lock()
        sent = bytearray()  # what the client sent on this connection

        def close_both() -> None:
            with lock:
                if state["closed"]:
                    return
                state["closed"] = True
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            try:
                while True:
                    data = src.recv(4096)
                    if not data:
                        break
                    cut_now = False
                    with lock:
                        if state["left"] is not None:
                            if len(data) >= state["left"]:
                                data = data[: state["left"]]
                                cut_now = True
                            state["left"] -= len(data)
                    if record:
                        sent.extend(data)
                        with self._lock:
                            self.log += data
                    elif self.drop_answer_to is not None and \
                            self.drop_answer_to in bytes(sent).lower():
                        with self._lock:
                            drop = self.dropped < self.drop_count
                            if drop:
                                self.dropped += 1
                                sent.clear()
                        if drop:
                            break
                    if data:
                        dst.sendall(data)
                    if cut_now:
                        with self._lock:
                            self.cuts += 1
                        break
            except OSError:
                pass
            close_both()

        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        pump(upstream, client, False)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A memory server with small read chunks, 1 s long-polls and SSE closed after 1.5 s,
    so a few hundred messages take many requests and several SSE connections."""
    log = tmp_path_factory.mktemp("tight") / "server.log"
    server = duralog_server("memory", log_path=log,
                            extra=["--chunk-size", "96", "--long-poll-timeout", "1"])
    server.env = {"DURALOG_SSE_MAX_DURATION": "1.5"}
    server.start()
    yield server
    server.stop()


def _fill(url: str, count: int) -> DurableStream:
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    for start in range(0, count, 7):
        stream.append_json(*({"i": i} for i in range(start, min(start + 7, count))))
    return stream


def _name() -> str:
    return f"res-{uuid.uuid4().hex[:12]}"


def test_catch_up_through_cuts_has_no_gap_or_duplicate(tight_server: ServerProcess) -> None:
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 300)
    proxy = ChaosProxy(tight_server.port, cut=(150, 2500), seed=11)
    try:
        reader = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY).read()
        got = [item["i"] for item in reader.json_items()]
    finally:
        proxy.stop()
    assert got == list(range(300))
    assert proxy.cuts > 3, "the proxy should have cut connections mid-read"


@pytest.mark.parametrize("live", ["sse", "long-poll", "auto"])
def test_live_read_through_cuts_while_writing(tight_server: ServerProcess, live: str) -> None:
    name = _name()
    direct = _fill(f"{tight_server.url}/v1/stream/{name}", 50)
    proxy = ChaosProxy(tight_server.port, cut=(200, 3000), seed=hash(live) & 0xFFFF)

    def writer() -> None:
        for i in range(50, 200, 10):
            direct.append_json(*({"i": j} for j in range(i, i + 10)))
            time.sleep(0.02)
        direct.close()

    thread = threading.Thread(target=writer)
    try:
        reader = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY).read(live=live)
        thread.start()
        got = [item["i"] for item in reader.json_items()]
    finally:
        thread.join()
        proxy.stop()
    assert got == list(range(200))
    assert reader.closed
    assert proxy.cuts > 0


def test_sse_reconnects_when_the_server_ends_the_connection(tight_server: ServerProcess) -> None:
    """5.8: the server closes SSE connections (here after 1.5 s); the client reconnects
    from the last control event's offset, carrying the cursor, and misses nothing."""
    name = _name()
    direct = _fill(f"{tight_server.url}/v1/stream/{name}", 5)
    proxy = ChaosProxy(tight_server.port)  # a plain relay that logs requests

    def writer() -> None:
        for i in range(5, 40):
            direct.append_json({"i": i})
            time.sleep(0.1)
        direct.close()

    thread = threading.Thread(target=writer)
    try:
        reader = DurableStream(f"{proxy.url}/v1/stream/{name}").read(live="sse")
        thread.start()
        got = [item["i"] for item in reader.json_items()]
    finally:
        thread.join()
        proxy.stop()
    assert got == list(range(40))
    requests = [line for line in bytes(proxy.log).split(b"\r\n") if line.startswith(b"GET ")]
    assert len(requests) >= 2, "3.5 s of writing should span several SSE connections"
    assert all(b"live=sse" in r for r in requests)
    assert any(b"cursor=" in r for r in requests[1:]), "reconnects echo the cursor (10.1)"


def test_producer_through_cuts_lands_everything_exactly_once(tight_server: ServerProcess) -> None:
    name = _name()
    url = f"{tight_server.url}/v1/stream/{name}"
    DurableStream(url).create(content_type="application/json")
    proxy = ChaosProxy(tight_server.port, cut=(120, 1500), seed=7)
    errors: list[Exception] = []
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                               content_type="application/json")
        producer = stream.producer("chaos-writer", max_batch_bytes=60, linger=0.001,
                                   max_in_flight=4, on_error=errors.append,
                                   retry=RetryPolicy(max_attempts=200, initial_delay=0.002,
                                                     max_delay=0.05))
        for i in range(400):
            producer.append_json({"i": i})
        producer.flush(timeout=120)
        producer.close()
    finally:
        proxy.stop()
    assert errors == []
    got = [item["i"] for item in DurableStream(url).read_json()]
    assert got == list(range(400))
    assert proxy.cuts > 3
    assert producer.next_seq > 10, "small batches: many sequence numbers"


def test_async_producer_and_sse_through_cuts(tight_server: ServerProcess) -> None:
    name = _name()
    url = f"{tight_server.url}/v1/stream/{name}"
    DurableStream(url).create(content_type="text/plain")
    proxy = ChaosProxy(tight_server.port, cut=(150, 2000), seed=5)
    lines = [f"line {i}\n" for i in range(250)]

    async def main() -> str:
        async with AsyncDurableStream(f"{proxy.url}/v1/stream/{name}",
                                      retry=FAST_RETRY) as stream:
            producer = await stream.producer("async-chaos", max_batch_bytes=40,
                                             linger=0.001, max_in_flight=3,
                                             retry=RetryPolicy(max_attempts=200,
                                                               initial_delay=0.002,
                                                               max_delay=0.05))

            async def read() -> str:
                return "".join([t async for t in stream.read(live="sse").text()])

            reading = asyncio.create_task(read())
            for line in lines:
                producer.append(line)
            await producer.close_stream()
            return await asyncio.wait_for(reading, 120)

    try:
        text = asyncio.run(main())
    finally:
        proxy.stop()
    assert text == "".join(lines)
    assert DurableStream(url).read_all().decode() == "".join(lines)
    assert proxy.cuts > 0


def test_503_is_retried_and_429_retry_after_is_honoured(tight_server: ServerProcess) -> None:
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 3)
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n"
            b"connection: close\r\n\r\nbusy\n")
    proxy = ChaosProxy(tight_server.port, reject=busy, reject_count=3)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY)
        assert stream.read_json() == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert len(proxy.rejections) == 3
    finally:
        proxy.stop()

    slow = (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 5\r\n"
            b"connection: close\r\n\r\nslow\n")
    proxy = ChaosProxy(tight_server.port, reject=slow, reject_count=1)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY)
        assert stream.head().next_offset
        # The retry came no sooner than Retry-After said (a lower bound only).
        assert proxy.accept_times[1] - proxy.rejections[0] >= 0.9
    finally:
        proxy.stop()


def test_errors_after_retries_run_out_carry_status_and_reason(
        tight_server: ServerProcess) -> None:
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    body = b"down for maintenance\nsecond line\n"
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body))
    proxy = ChaosProxy(tight_server.port, reject=busy, reject_count=100)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}",
                               retry=RetryPolicy(max_attempts=3, initial_delay=0.001))
        with pytest.raises(ServerError):
            stream.head()
        assert len(proxy.rejections) == 3  # max_attempts counts the first try
        with pytest.raises(ServerError) as info:
            stream.read_json()
        assert info.value.status == 503
        assert info.value.reason == "down for maintenance"
        assert info.value.url == f"{proxy.url}/v1/stream/{name}"
        assert "503" in str(info.value)
    finally:
        proxy.stop()


def test_text_cut_inside_characters_arrives_whole(tight_server: ServerProcess) -> None:
    """96-byte read chunks split two- and three-byte characters; text() joins them,
    through cut connections too."""
    name = _name()
    text = "é" * 150 + "✓" * 70 + "end"
    DurableStream(f"{tight_server.url}/v1/stream/{name}").create(
        content_type="text/plain", body=text, closed=True)
    proxy = ChaosProxy(tight_server.port, cut=(200, 2000), seed=3)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY)
        chunks = list(stream.read())
        assert len(chunks) > 3
        assert "".join(stream.read().text()) == text
        assert "".join(stream.read(live="sse").text()) == text
    finally:
        proxy.stop()


def test_rate_limit_that_never_lifts_raises_rate_limited(tight_server: ServerProcess) -> None:
    slow = (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\ncontent-length: 12\r\n"
            b"connection: close\r\n\r\nslow down\r\n\r\n")
    proxy = ChaosProxy(tight_server.port, reject=slow, reject_count=100)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{_name()}",
                               retry=RetryPolicy(max_attempts=2, initial_delay=0.001))
        with pytest.raises(RateLimited) as info:
            stream.append("x", content_type="text/plain")  # 429: retried even when unsafe
        assert info.value.status == 429 and info.value.retry_after == 0
        assert info.value.reason == "slow down"
        assert len(proxy.rejections) == 2
    finally:
        proxy.stop()


def test_plain_append_is_not_resent_after_the_request_may_have_landed(
        tight_server: ServerProcess) -> None:
    """A connection dropped after the request went out may hide a success: a plain
    append (not idempotent) must not be sent twice; HEAD (safe) is retried."""
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    proxy = ChaosProxy(tight_server.port, reject=b"", reject_count=2)  # read, then hang up
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                               content_type="application/json")
        with pytest.raises(ConnectionFailed):
            stream.append_json({"i": 1})
        assert len(proxy.rejections) == 1
        assert stream.head().next_offset  # second rejection, then through
        assert len(proxy.rejections) == 2
    finally:
        proxy.stop()


@pytest.mark.parametrize("status", [500, 503, 429])
def test_plain_append_is_retried_after_500_503_429_and_lands_once(
        tight_server: ServerProcess, status: int) -> None:
    """A 500, 503 or 429 means the server did not apply the append (docs/client.md):
    the client sends it again, and the stream holds it exactly once."""
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    reason = {500: b"Internal Server Error", 503: b"Service Unavailable",
              429: b"Too Many Requests"}[status]
    canned = (b"HTTP/1.1 %d %s\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n"
              % (status, reason))
    proxy = ChaosProxy(tight_server.port, reject=canned, reject_count=2)
    retries: list[tuple[Exception, float]] = []
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                               content_type="application/json",
                               on_retry=lambda err, delay: retries.append((err, delay)))
        result = stream.append_json({"i": 1})
        assert result.next_offset
        assert len(proxy.rejections) == 2
        assert [getattr(err, "status", None) for err, _ in retries] == [status, status]
    finally:
        proxy.stop()
    got = DurableStream(f"{tight_server.url}/v1/stream/{name}").read_json()
    assert got == [{"i": 0}, {"i": 1}]


def test_plain_append_honours_retry_after_of_a_503(tight_server: ServerProcess) -> None:
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    busy = (b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 5\r\n"
            b"connection: close\r\n\r\nbusy\n")
    proxy = ChaosProxy(tight_server.port, reject=busy, reject_count=1)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                               content_type="application/json")
        stream.append_json({"i": 1})
        # The second try came no sooner than Retry-After said (a lower bound only).
        assert proxy.accept_times[1] - proxy.rejections[0] >= 0.9
    finally:
        proxy.stop()
    assert DurableStream(f"{tight_server.url}/v1/stream/{name}").read_json() == [
        {"i": 0}, {"i": 1}]


def test_plain_append_is_not_retried_after_a_502(tight_server: ServerProcess) -> None:
    """A 502 comes from a proxy in front: the server behind it may have applied
    the append, so a plain append surfaces it instead of risking a duplicate."""
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    bad = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbad\n"
    proxy = ChaosProxy(tight_server.port, reject=bad, reject_count=1)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                               content_type="application/json")
        with pytest.raises(ServerError) as info:
            stream.append_json({"i": 1})
        assert info.value.status == 502
        assert len(proxy.rejections) == 1
    finally:
        proxy.stop()


def test_a_server_that_stays_down() -> None:
    """Nothing listens: every operation gives up after its retry budget with
    ConnectionFailed, the producer's flush and close included."""
    url = f"http://127.0.0.1:{free_port()}/v1/stream/{_name()}"
    budget = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)
    retries: list[float] = []
    stream = DurableStream(url, retry=budget, content_type="application/json",
                           on_retry=lambda err, delay: retries.append(delay))
    with pytest.raises(ConnectionFailed):
        stream.append_json({"i": 1})
    assert len(retries) == 2  # three tries: two retries, then the error
    with pytest.raises(ConnectionFailed):
        stream.head()
    with pytest.raises(ConnectionFailed):
        stream.read_json()
    with pytest.raises(ConnectionFailed):
        list(stream.read(live="sse"))

    producer = stream.producer("down", retry=RetryPolicy(max_attempts=None, initial_delay=0.01,
                                                         max_delay=0.05, max_elapsed=1.0))
    producer.append_json({"i": 1})
    with pytest.raises(ConnectionFailed):
        producer.flush()
    with pytest.raises(ConnectionFailed):
        producer.close()
    with pytest.raises(ConnectionFailed):
        producer.append_json({"i": 2})  # a failed producer refuses more

    # A bounded queue that raises: fills up while nothing lands.
    full = stream.producer("down-raise", on_full="raise", max_queue_items=3, linger=10,
                           retry=RetryPolicy(max_attempts=None, initial_delay=0.01,
                                             max_delay=0.05, max_elapsed=60.0))
    for i in range(3):
        full.append_json({"i": i})
    with pytest.raises(ProducerQueueFull):
        full.append_json({"i": 3})
    full.abort()

    # A bounded queue that blocks: append waits, then raises the producer's error
    # once the retry budget is spent.
    blocking = stream.producer("down-block", max_queue_bytes=10,
                               retry=RetryPolicy(max_attempts=None, initial_delay=0.01,
                                                 max_delay=0.05, max_elapsed=1.0))
    blocking.append_json({"i": 0, "pad": "xxxx"})
    with pytest.raises(ConnectionFailed):
        blocking.append_json({"i": 1, "pad": "xxxx"})
    blocking.abort()


def test_async_plain_append_retried_and_server_down(tight_server: ServerProcess) -> None:
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 1)
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n"
            b"connection: close\r\n\r\nbusy\n")
    proxy = ChaosProxy(tight_server.port, reject=busy, reject_count=2)
    down = f"http://127.0.0.1:{free_port()}/v1/stream/{name}"

    async def main() -> None:
        async with AsyncDurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY,
                                      content_type="application/json") as stream:
            await stream.append_json({"i": 1})
        async with AsyncDurableStream(down, content_type="application/json",
                                      retry=RetryPolicy(max_attempts=2,
                                                        initial_delay=0.01)) as gone:
            with pytest.raises(ConnectionFailed):
                await gone.append_json({"i": 1})
            producer = await gone.producer(
                "down", retry=RetryPolicy(max_attempts=None, initial_delay=0.01,
                                          max_delay=0.05, max_elapsed=1.0),
                max_queue_items=2)
            producer.append_json({"i": 1})
            producer.append_json({"i": 2})
            with pytest.raises(ProducerQueueFull):
                producer.append_json({"i": 3})
            with pytest.raises(ConnectionFailed):
                await producer.room()
            with pytest.raises(ConnectionFailed):
                await producer.close()

    try:
        asyncio.run(main())
        assert len(proxy.rejections) == 2
    finally:
        proxy.stop()
    assert DurableStream(f"{tight_server.url}/v1/stream/{name}").read_json() == [
        {"i": 0}, {"i": 1}]


def test_producer_close_whose_answer_was_lost_counts_as_closed(
        tight_server: ServerProcess) -> None:
    """The close reaches the server but its answer never comes back: the retried
    close is answered as a duplicate (or 409 closed), and both count as success.
    A second close_stream sends nothing and returns the same final offset."""
    name = _name()
    _fill(f"{tight_server.url}/v1/stream/{name}", 2)
    proxy = ChaosProxy(tight_server.port, drop_answer_to=b"stream-closed: true", drop_count=1)
    try:
        stream = DurableStream(f"{proxy.url}/v1/stream/{name}", retry=FAST_RETRY)
        producer = stream.producer("closer", retry=FAST_RETRY)
        producer.append_json({"i": 2})
        result = producer.close_stream()
        assert proxy.dropped == 1
        assert result.closed and result.next_offset
        before = len(proxy.log)
        again = producer.close_stream()
        assert again == result
        assert len(proxy.log) == before  # nothing sent the second time
    finally:
        proxy.stop()
    info = DurableStream(f"{tight_server.url}/v1/stream/{name}").head()
    assert info.closed and info.next_offset == result.next_offset
