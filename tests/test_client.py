"""The blocking client against real servers: ours (memory) and the Node reference.

Every protocol test runs against both, so a pass means the client speaks the
protocol (PROTOCOL.md 5), not just duralog's dialect of it.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from duralog.client import (
    BadRequest,
    Chunk,
    DurableStream,
    DurableStreamError,
    RetryPolicy,
    StreamClosedError,
    StreamConflict,
    StreamNotFound,
)
from duralog.client._core import ReadState
from duralog.protocol.sse_reader import SSEReader

from .servers import ServerProcess
from .test_client_resilience import ChaosProxy


@pytest.fixture(params=["memory_server", "ref_server"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    return request.getfixturevalue(request.param)


@pytest.fixture
def url(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream/client-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stream(url: str) -> Iterator[DurableStream]:
    with DurableStream(url) as s:
        yield s


def _later(seconds: float, fn, *args) -> threading.Thread:  # type: ignore[no-untyped-def]
    def run() -> None:
        time.sleep(seconds)
        fn(*args)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# create / head / delete (5.1, 5.4, 5.5)


def test_create_is_idempotent_and_head_reports_metadata(stream: DurableStream) -> None:
    info = stream.create(content_type="text/plain", ttl=3600)
    assert info.created is True
    assert info.content_type.startswith("text/plain")
    again = stream.create(content_type="text/plain", ttl=3600)
    assert again.created is False  # 5.1: same config -> 200
    head = stream.head()
    assert head.ttl == 3600 and head.expires_at is None
    assert head.closed is False
    assert head.next_offset == info.next_offset
    with pytest.raises(StreamConflict) as err:
        stream.create(content_type="application/json")  # 5.1: other config -> 409
    assert err.value.status == 409


def test_create_with_expiry_closed_and_initial_body(stream: DurableStream) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = stream.create(content_type="text/plain", expires_at=expires, closed=True,
                         body="all of it")
    assert info.closed
    head = stream.head()
    assert head.closed and head.expires_at is not None and head.ttl is None
    assert stream.read_all() == b"all of it"
    reader = stream.read(live="sse")
    assert [c.data for c in reader] == [b"all of it"]
    assert reader.closed


def test_ttl_and_expires_at_together_are_refused_before_sending(stream: DurableStream) -> None:
    with pytest.raises(ValueError):
        stream.create(ttl=10, expires_at="2030-01-01T00:00:00Z")


def test_delete_then_not_found(stream: DurableStream) -> None:
    stream.create(content_type="text/plain")
    assert stream.exists()
    stream.delete()
    assert not stream.exists()
    with pytest.raises(StreamNotFound) as err:
        stream.read_all()
    assert err.value.status == 404 and err.value.url == stream.url
    with pytest.raises(StreamNotFound):
        stream.delete()


# ---------------------------------------------------------------------------
# append / close / catch-up reads (5.2, 5.3, 5.6)


def test_append_and_read_back_with_resumable_offsets(stream: DurableStream) -> None:
    stream.create(content_type="application/octet-stream")
    first = stream.append(b"hello ")
    second = stream.append(b"world")
    assert first.next_offset is not None and second.next_offset is not None
    assert first.next_offset < second.next_offset  # 8: lexicographic order
    assert stream.read_all() == b"hello world"
    assert stream.read_all(first.next_offset) == b"world"  # resume from a saved offset
    assert stream.read_all(second.next_offset) == b""
    chunks = list(stream.read())
    assert chunks[-1].offset == second.next_offset == stream.head().next_offset
    assert all(isinstance(c, Chunk) and c.data for c in chunks)


def test_read_from_now_skips_history(stream: DurableStream) -> None:
    stream.create(content_type="text/plain")
    stream.append("old")
    reader = stream.read("now")
    assert list(reader) == []
    assert reader.up_to_date and not reader.closed
    assert reader.offset == stream.head().next_offset


def test_json_messages_batches_and_items(stream: DurableStream) -> None:
    stream.create(content_type="application/json", json=[{"n": 0}])
    stream.append_json({"n": 1}, [2, 3])  # 9.1.2: each value one message
    stream.append(b'[{"n": 4}, {"n": 5}]')  # raw body: the server flattens one level
    assert stream.read_json() == [{"n": 0}, {"n": 1}, [2, 3], {"n": 4}, {"n": 5}]
    batches = list(stream.read().json_batches())
    assert [i for b in batches for i in b.items] == stream.read_json()
    assert batches[-1].offset == stream.head().next_offset
    middle = stream.append_json("x").next_offset
    assert middle is not None
    assert stream.read_json(batches[-1].offset) == ["x"]


def test_close_append_and_close_and_closed_errors(stream: DurableStream) -> None:
    stream.create(content_type="text/plain")
    stream.append("a")
    result = stream.close("b")  # 5.2: append-and-close is atomic
    assert result.closed
    assert stream.head().closed
    assert stream.close().closed  # 5.3: close-only is idempotent
    with pytest.raises(StreamClosedError) as err:
        stream.append("c")
    assert err.value.status == 409
    assert err.value.final_offset == stream.head().next_offset
    assert isinstance(err.value, StreamConflict)
    assert stream.read_all() == b"ab"


def test_stream_seq_regression_is_a_conflict(stream: DurableStream) -> None:
    stream.create(content_type="text/plain")
    stream.append("1", seq="0002")
    with pytest.raises(StreamConflict):
        stream.append("2", seq="0001")  # 5.2: Stream-Seq must increase
    stream.append("3", seq="0003")
    assert stream.read_all() == b"13"


def test_malformed_offset_is_a_bad_request_with_reason(stream: DurableStream) -> None:
    stream.create(content_type="text/plain")
    with pytest.raises(BadRequest) as err:
        stream.read_all("not-an-offset")
    assert err.value.status == 400
    assert isinstance(err.value, DurableStreamError)


# ---------------------------------------------------------------------------
# live reads (5.7, 5.8)


@pytest.mark.parametrize("live", ["long-poll", "sse", "auto"])
def test_live_read_sees_new_data_and_ends_at_close(stream: DurableStream, live: str) -> None:
    stream.create(content_type="application/json")
    stream.append_json("before")

    def write() -> None:
        stream.append_json("one")
        stream.append_json("two", "three")
        stream.close()

    reader = stream.read(live=live)
    thread = _later(0.3, write)
    items = list(reader.json_items())
    thread.join()
    assert items == ["before", "one", "two", "three"]
    assert reader.closed  # 5.7/5.8: Stream-Closed is EOF
    assert reader.offset == stream.head().next_offset


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_live_read_from_now_gets_only_the_future(stream: DurableStream, live: str) -> None:
    stream.create(content_type="text/plain")
    stream.append("past|")
    reader = stream.read("now", live=live)
    thread = _later(0.3, stream.close, "future")
    assert b"".join(reader.bytes()) == b"future"
    thread.join()


def test_binary_sse_is_base64_decoded(stream: DurableStream) -> None:
    payload = bytes(range(256)) * 3
    stream.create(content_type="application/octet-stream")
    stream.append(payload[:300])
    thread = _later(0.2, stream.close, payload[300:])
    got = b"".join(stream.read(live="sse").bytes())
    thread.join()
    assert got == payload


def test_sse_text_stream_keeps_line_breaks_and_unicode(stream: DurableStream,
                                                       server: ServerProcess) -> None:
    text = "héllo\nwörld\n\nend ✓"
    if "serve" in server.args:
        # A line that starts with a space: SSE readers strip one space after "data:",
        # so a server must send one extra. Ours does; the Node reference 0.3.7 sends
        # "data:" + line and loses that space, so this case runs against ours only.
        text += "\n  indented"
    stream.create(content_type="text/plain; charset=utf-8", body=text, closed=True)
    assert "".join(stream.read(live="sse").text()) == text
    assert "".join(stream.read().text()) == text


def test_a_saved_offset_resumes_a_live_read(stream: DurableStream) -> None:
    stream.create(content_type="application/json")
    stream.append_json(1, 2)
    reader = stream.read(live="sse")
    first = next(iter(reader))
    reader.close()
    stream.append_json(3)
    stream.close()
    assert stream.read(first.offset, live="sse").json_items().__next__() == 3
    assert list(stream.read(first.offset, live="long-poll").json_items()) == [3]


# ---------------------------------------------------------------------------
# fork (4.2)


def test_fork_at_an_offset_and_sub_offset(stream: DurableStream, url: str) -> None:
    stream.create(content_type="application/json")
    after_ab = stream.append_json("a", "b").next_offset
    stream.append_json("c", "d")
    fork = stream.fork(url + "-fork", offset=after_ab)
    assert fork.read_json() == ["a", "b"]
    fork.append_json("f")
    assert fork.read_json() == ["a", "b", "f"]
    assert stream.read_json() == ["a", "b", "c", "d"]  # the source is untouched
    sub = stream.fork(url + "-sub", offset=after_ab, sub_offset=1)
    assert sub.read_json() == ["a", "b", "c"]  # 4.2: one message past the anchor
    whole = DurableStream(url + "-whole")
    whole.create(forked_from=stream)  # default: the source's tail
    assert whole.read_json() == ["a", "b", "c", "d"]
    assert whole.head().content_type.startswith("application/json")
    with pytest.raises(StreamNotFound):
        DurableStream(url + "-orphan").create(forked_from=url + "-missing")


# ---------------------------------------------------------------------------
# headers and params: values or functions, on every request


def test_header_and_param_functions_run_on_every_request(server: ServerProcess) -> None:
    proxy = ChaosProxy(server.port)  # a relay that records what clients send
    calls = {"n": 0}

    def token() -> str:
        calls["n"] += 1
        return f"tok-{calls['n']}"

    try:
        name = f"hdr-{uuid.uuid4().hex[:10]}"
        s = DurableStream(f"{proxy.url}/v1/stream/{name}",
                          headers={"x-token": token, "x-static": "s"},
                          params={"tenant": lambda: f"t{calls['n']}"})
        s.create(content_type="application/json")
        s.append_json(1)
        reader = s.read(live="long-poll")
        thread = _later(0.3, s.close)
        assert list(reader.json_items()) == [1]
        thread.join()
    finally:
        proxy.stop()
    log = bytes(proxy.log).decode("latin-1")
    tokens = [line.split(":", 1)[1].strip() for line in log.split("\r\n")
              if line.lower().startswith("x-token:")]
    # Bodies are not followed by CRLF, so find request lines anywhere in the log.
    requests = re.findall(r"(?:GET|PUT|POST|HEAD|DELETE) \S+ HTTP/1\.1", log)
    assert len(tokens) == len(requests) >= 4
    assert len(set(tokens)) == len(tokens), "a fresh value on every request"
    assert log.lower().count("x-static: s") == len(requests)
    gets = [r for r in requests if r.startswith("GET")]
    assert all("tenant=t" in r for r in gets)
    # 10.1: query keys in lexicographic order; the cursor echoed on later long-polls.
    for r in gets:
        target = r.split(" ")[1]
        keys = [kv.split("=")[0] for kv in target.split("?", 1)[1].split("&")]
        assert keys == sorted(keys)
    assert any("cursor=" in r for r in gets[1:])


# ---------------------------------------------------------------------------
# options are validated when given


@pytest.mark.parametrize("kwargs", [
    {"max_attempts": 0}, {"initial_delay": -1}, {"max_delay": -0.5},
    {"initial_delay": 2, "max_delay": 1}, {"multiplier": 0.5}, {"jitter": 1.5},
    {"initial_delay": 0}, {"initial_delay": 0.0, "max_delay": 0}, {"max_elapsed": 0},
])
def test_bad_retry_options_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"url": "not a url"}, {"url": "ftp://x/y"}, {"url": "http://h/s?offset=1"},
    {"timeout": 0}, {"timeout": -3}, {"headers": ["x"]}, {"headers": {"x": 3}},
    {"params": "a=b"}, {"retry": {"max_attempts": 3}},
])
def test_bad_stream_options_raise_value_error(kwargs: dict) -> None:
    options = {"url": "http://127.0.0.1:9/v1/stream/x", **kwargs}
    with pytest.raises(ValueError):
        DurableStream(options.pop("url"), **options)


def test_bad_read_and_producer_options_raise_value_error() -> None:
    s = DurableStream("http://127.0.0.1:9/v1/stream/x", content_type="text/plain")
    with pytest.raises(ValueError):
        s.read(live="websocket")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        s.read("")
    for bad in ({"max_batch_bytes": 0}, {"linger": -1}, {"max_in_flight": 0},
                {"epoch": -1}, {"epoch": 2**53}):
        with pytest.raises(ValueError):
            s.producer("p", **bad)
    with pytest.raises(ValueError):
        s.producer("")
    with pytest.raises(ValueError):
        s.append(b"")  # 5.2: an empty append is not an append


# ---------------------------------------------------------------------------
# sans-IO pieces


def test_sse_reader_survives_every_split_point() -> None:
    wire = (b": comment\r\nevent: data\r\ndata: [\r\ndata: {\"k\":\"v\"}\r\ndata: ]\r\n\r\n"
            b"event: control\ndata:{\"streamNextOffset\":\"0_5\",\"upToDate\":true}\n\n"
            b"event: data\rdata:  two spaces\r\r"
            b"event: data\ndata: cut off")  # no blank line: never dispatched
    whole = SSEReader()
    expected = whole.feed(wire) + whole.close()
    assert [(e.event, e.data) for e in expected] == [
        ("data", '[\n{"k":"v"}\n]'),
        ("control", '{"streamNextOffset":"0_5","upToDate":true}'),
        ("data", " two spaces"),
    ]
    for cut in range(1, len(wire)):
        reader = SSEReader()
        events = reader.feed(wire[:cut]) + reader.feed(wire[cut:]) + reader.close()
        assert events == expected, cut
    byte_by_byte = SSEReader()
    events = [e for i in range(len(wire)) for e in byte_by_byte.feed(wire[i:i + 1])]
    assert events + byte_by_byte.close() == expected


def test_read_state_holds_data_until_its_control_event() -> None:
    from duralog.protocol.sse_reader import SSEEvent

    state = ReadState("http://h/s", live="sse", content_type="application/json")
    state.on_sse_open({"content-type": "text/event-stream"})
    assert state.on_sse_event(SSEEvent("data", "[1,2]")) is None
    assert state.offset == "-1"  # not confirmed yet
    # The connection drops here: a reconnect starts again from -1, the data is dropped.
    assert state.on_sse_end() is True
    state.on_sse_open({"content-type": "text/event-stream"})
    state.on_sse_event(SSEEvent("data", "[1,2]"))
    chunk = state.on_sse_event(SSEEvent("control", '{"streamNextOffset":"A","streamCursor":"7"}'))
    assert chunk is not None and chunk.json() == [1, 2] and chunk.offset == "A"
    assert state.next_request().params == {"offset": "A", "live": "sse", "cursor": "7"}
    state.on_sse_event(SSEEvent("control", '{"streamNextOffset":"A","streamClosed":true}'))
    assert state.done and state.closed


def test_retry_delays_grow_are_capped_and_jittered() -> None:
    import random

    policy = RetryPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(3)
    for failures, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)]:
        delays = [policy.delay(failures, rng=rng) for _ in range(50)]
        assert all(cap * 0.5 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert policy.delay(1, retry_after=7) == 7
    from duralog.client._core import parse_retry_after

    assert parse_retry_after("3") == 3
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
