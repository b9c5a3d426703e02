"""Unit tests of the sans-IO protocol core (duralog.protocol), without a socket.

Each test names the PROTOCOL.md section it checks. The core is pure functions
and small dataclasses, so these run in milliseconds.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duralog.protocol import cursor, jsonmode, sse
from duralog.protocol.errors import ProtocolError
from duralog.protocol.headers import (
    MAX_SAFE_INTEGER,
    Producer,
    is_json,
    is_text_like,
    is_true,
    is_valid_content_type,
    media_type,
    parse_expires_at,
    parse_non_negative,
    parse_producer,
    parse_stream_seq,
    parse_ttl,
)
from duralog.protocol.offsets import (
    NOW,
    START,
    ZERO,
    format_offset,
    is_offset_token,
    parse_offset,
)
from duralog.protocol.paths import MAX_NAME_BYTES, stream_name
from duralog.protocol.state import (
    AppendDecision,
    AppendRequest,
    CreateRequest,
    ProducerState,
    StreamState,
    apply_append,
    decide_append,
    fork_expiry,
    same_config,
)

# ---------------------------------------------------------------------------
# Offsets (8)


def test_zero_offset_is_the_start_token() -> None:
    assert format_offset(0) == ZERO
    assert parse_offset(ZERO) == 0


@pytest.mark.parametrize("position", [0, 1, 9, 10, 255, 4096, 10**9, 10**16 - 1])
def test_offset_round_trip(position: int) -> None:
    token = format_offset(position)
    assert parse_offset(token) == position
    assert is_offset_token(token)


def test_offsets_sort_lexicographically_like_positions() -> None:
    # 8: offsets are lexicographically sortable; string order must equal numeric order.
    rng = random.Random(7)
    positions = sorted({rng.randrange(0, 10**16) for _ in range(500)} | {0, 1, 9, 10, 99, 100})
    tokens = [format_offset(p) for p in positions]
    assert sorted(tokens) == tokens
    assert len(set(tokens)) == len(tokens)  # 8: unique


def test_offset_tokens_avoid_reserved_characters_and_sentinels() -> None:
    # 8: no , & = ? / in a token, never the sentinels -1 or now, reasonably short.
    for position in (0, 1, 12345, 10**16 - 1):
        token = format_offset(position)
        assert not set(token) & set(",&=?/")
        assert token not in (START, NOW)
        assert len(token) < 256


@pytest.mark.parametrize("token", [
    "", "-1", "now", "0", "123", "abc", "1_2",
    "0000000000000000_000000000000000",  # 15 digits
    "0000000000000000_00000000000000000",  # 17 digits
    "0000000000000000-0000000000000001",
    "0000000000000000_000000000000000a",
    "0000000000000001_0000000000000000",  # an epoch this server never minted
    " 0000000000000000_0000000000000000",
    "0000000000000000_0000000000000000\n",
    "0000000000000000_+000000000000001",
    "0000000000000000_" + "\u0660" * 15 + "\u0661",  # Arabic-Indic digits are not ASCII digits
    "0000000000000000_" + "\uff10" * 15 + "\uff11",  # full-width digits
])
def test_malformed_offsets_are_refused(token: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_offset(token)
    assert info.value.status == 400
    assert not is_offset_token(token)


# ---------------------------------------------------------------------------
# Headers: Stream-TTL (5.1)


@pytest.mark.parametrize(("value", "seconds"), [("0", 0), ("1", 1), ("3600", 3600),
                                                ("86400", 86400)])
def test_ttl_accepts_plain_decimal(value: str, seconds: int) -> None:
    assert parse_ttl(value) == seconds


@pytest.mark.parametrize("value", [
    "+3600", "03600", "3600.0", "3.6e3", "-1", "abc", "", " 3600", "3600 ", "0x10", "00",
    "1_000", "\uff13\uff16\uff10\uff10", "\u0663",
])
def test_ttl_rejects_everything_else(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_ttl(value)
    assert info.value.status == 400
    assert "Stream-TTL" in info.value.reason


# ---------------------------------------------------------------------------
# Headers: Stream-Expires-At (5.1, RFC 3339)


@pytest.mark.parametrize(("value", "expected"), [
    ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2030-01-01T00:00:00z", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2030-01-01t00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2030-01-01T02:00:00+02:00", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2029-12-31T19:00:00-05:00", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2030-01-01T05:30:00+05:30", datetime(2030, 1, 1, tzinfo=UTC)),
    ("2030-01-01T00:00:00.250Z", datetime(2030, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),
])
def test_expires_at_accepts_rfc3339(value: str, expected: datetime) -> None:
    assert parse_expires_at(value) == pytest.approx(expected.timestamp())


@pytest.mark.parametrize("value", [
    "", "tomorrow", "1893456000", "2030-01-01", "2030-01-01T00:00:00",  # no zone
    "2030-01-01 00:00", "2030-13-01T00:00:00Z", "2030-02-30T00:00:00Z",
    "2030-01-01T25:00:00Z", "2030-01-01T00:00:00+0100", "2030-01-01T00:00:00Z ",
    "Tue, 01 Jan 2030 00:00:00 GMT", "\uff12\uff10\uff13\uff10-01-01T00:00:00Z",
])
def test_expires_at_rejects_non_rfc3339(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_expires_at(value)
    assert info.value.status == 400


# ---------------------------------------------------------------------------
# Headers: Stream-Closed (4.1)


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "tRuE"])
def test_stream_closed_true_any_case(value: str) -> None:
    assert is_true(value)


@pytest.mark.parametrize("value", [None, "", "false", "yes", "1", "on", " true", "true ",
                                   "truee", "t"])
def test_stream_closed_other_values_are_absent(value: str | None) -> None:
    assert not is_true(value)


# ---------------------------------------------------------------------------
# Headers: producer triple (5.2.1), Stream-Seq (5.2)


def test_producer_none_when_no_header() -> None:
    assert parse_producer(None, None, None) is None


def test_producer_parses_the_triple() -> None:
    assert parse_producer("p-1", "3", "7") == Producer("p-1", 3, 7)
    limit = str(MAX_SAFE_INTEGER)
    assert parse_producer("p", limit, limit) == Producer("p", MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)


@pytest.mark.parametrize("triple", [
    ("p", None, None), (None, "0", None), (None, None, "0"),
    ("p", "0", None), ("p", None, "0"), (None, "0", "0"),
])
def test_producer_headers_all_or_none(triple: tuple[str | None, ...]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_producer(*triple)
    assert info.value.status == 400


def test_producer_id_must_not_be_empty() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_producer("", "0", "0")
    assert info.value.status == 400


@pytest.mark.parametrize("number", [
    "", "-1", "+1", "1.0", "1e3", "abc", " 1", "0x1", "\u0661",
    str(MAX_SAFE_INTEGER + 1), str(2**64), "9" * 40,
])
@pytest.mark.parametrize("which", ["epoch", "seq"])
def test_producer_numbers_must_be_safe_non_negative_integers(number: str, which: str) -> None:
    epoch, seq = (number, "0") if which == "epoch" else ("0", number)
    with pytest.raises(ProtocolError) as info:
        parse_producer("p", epoch, seq)
    assert info.value.status == 400


def test_parse_non_negative_limit() -> None:
    assert parse_non_negative("0", "X") == 0
    assert parse_non_negative(str(MAX_SAFE_INTEGER), "X") == MAX_SAFE_INTEGER
    with pytest.raises(ProtocolError):
        parse_non_negative(str(MAX_SAFE_INTEGER + 1), "X")


def test_stream_seq_is_opaque_but_bounded() -> None:
    assert parse_stream_seq(None) is None
    assert parse_stream_seq("000123-abc") == "000123-abc"
    with pytest.raises(ProtocolError) as info:
        parse_stream_seq("x" * 100_000)
    assert info.value.status == 400


def test_media_type_helpers() -> None:
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert is_json("application/json;charset=utf-8")
    assert not is_json("application/ndjson")
    assert is_text_like("text/plain") and is_text_like("application/json")
    assert not is_text_like("application/octet-stream")
    assert is_valid_content_type("text/plain; charset=utf-8")
    for bad in ("", "text", "text/", "/plain", "text/plain/x", "te xt/plain"):
        assert not is_valid_content_type(bad)


# ---------------------------------------------------------------------------
# JSON mode (9.1)


def _messages(body: bytes, *, allow_empty: bool = False) -> list[object]:
    return [json.loads(m) for m in jsonmode.split_messages(body, allow_empty=allow_empty)]


@pytest.mark.parametrize(("body", "expected"), [
    # the examples of 9.1.2, verbatim
    (b'{"event": "created"}', [{"event": "created"}]),
    (b'[{"event": "a"}, {"event": "b"}]', [{"event": "a"}, {"event": "b"}]),
    (b"[[1,2], [3,4]]", [[1, 2], [3, 4]]),
    (b"[[[1,2,3]]]", [[[1, 2, 3]]]),
    # scalars are messages too
    (b"1", [1]), (b'"s"', ["s"]), (b"null", [None]), (b"true", [True]),
    (b"[null, 0, false, \"\"]", [None, 0, False, ""]),
    (b"[[]]", [[]]), (b"[{}]", [{}]),
])
def test_one_level_flattening(body: bytes, expected: list[object]) -> None:
    assert _messages(body) == expected


def test_messages_are_stored_compact() -> None:
    assert jsonmode.split_messages(b'[ { "a" : 1 } ,\n [ 1 , 2 ] ]', allow_empty=False) == [
        b'{"a":1}', b"[1,2]"]


def test_empty_array_refused_on_post_allowed_on_put() -> None:
    # 9.1.3
    with pytest.raises(ProtocolError) as info:
        jsonmode.split_messages(b"[]", allow_empty=False)
    assert info.value.status == 400
    with pytest.raises(ProtocolError):
        jsonmode.split_messages(b" [ ] ", allow_empty=False)
    assert jsonmode.split_messages(b"[]", allow_empty=True) == []


@pytest.mark.parametrize("body", [
    b"", b"   ", b"{", b"[1,2", b"{'a': 1}", b"[1,]", b"{\"a\":1}}", b"undefined",
    b"NaN", b"[NaN]", b"Infinity", b"[-Infinity]", b'{"a": NaN}',
    b"\xff\xfe", b'"\xc3\x28"', b"1 2", b"// c\n1", b"[1] x",
])
def test_invalid_json_refused(body: bytes) -> None:
    # 9.1.4: invalid JSON is a 400, never a crash of another kind.
    with pytest.raises(ProtocolError) as info:
        jsonmode.split_messages(body, allow_empty=False)
    assert info.value.status == 400


@pytest.mark.parametrize("body", [
    b'"\\ud800"', b'["\\udc00"]', b'{"k": "a\\ud83d"}', b'{"\\udfff": 1}',
])
def test_lone_surrogate_escapes_are_refused_or_kept_not_crashing(body: bytes) -> None:
    # A JSON string escape for a lone UTF-16 surrogate cannot become UTF-8. The append
    # must be refused with 400 (or stored in an escaped form); anything else means a 500.
    try:
        messages = jsonmode.split_messages(body, allow_empty=False)
    except ProtocolError as err:
        assert err.status == 400
    else:
        for message in messages:
            message.decode("utf-8")
            json.loads(message)


def test_huge_integers_survive_exactly() -> None:
    big = 2**70 + 1  # past 64 bits: orjson refuses it, the fallback must keep it exact
    messages = jsonmode.split_messages(f'[{big}, {{"n": -{big}}}]'.encode(), allow_empty=False)
    assert messages == [str(big).encode(), f'{{"n":-{big}}}'.encode()]


def test_deeply_nested_json_does_not_crash() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    try:
        jsonmode.split_messages(deep, allow_empty=False)
    except ProtocolError as err:
        assert err.status == 400


def test_unicode_kept() -> None:
    body = '{"t": "h\u00e9 \u2603 \U0001f600"}'.encode()
    (message,) = jsonmode.split_messages(body, allow_empty=False)
    assert json.loads(message) == {"t": "h\u00e9 \u2603 \U0001f600"}


def test_wrap_and_fragments() -> None:
    # 9.1.5: a read is one array of every message of the fragments.
    f1 = jsonmode.fragment(jsonmode.split_messages(b'[{"a":1},{"b":2}]', allow_empty=False))
    f2 = jsonmode.fragment(jsonmode.split_messages(b"3", allow_empty=False))
    assert json.loads(jsonmode.wrap([f1, f2])) == [{"a": 1}, {"b": 2}, 3]
    assert jsonmode.wrap([]) == b"[]"
    assert jsonmode.fragment_messages(f1) == [b'{"a":1}', b'{"b":2}']


# ---------------------------------------------------------------------------
# SSE framing (5.8)


def _frame_then_parse(payload: str) -> list[tuple[str, str]]:
    return sse.parse_events(sse.data_event(payload).decode())


@pytest.mark.parametrize("payload", [
    "plain", "", "two\nlines", "cr\rline", "crlf\r\nline", "\n", "\r\n\r\n",
    "trailing newline\n", "\n\nleading",
    # injection attempts: a payload must never produce an event of its own
    "x\n\nevent: control\ndata: {\"streamClosed\":true}\n\n",
    "x\r\revent: control\rdata: evil\r\r",
    "x\r\n\r\nevent: control\r\ndata: evil\r\n\r\n",
    "id: 5\nretry: 1\n: comment\nevent: nope",
    " leading space", "  two spaces", "line\n space after newline", "\t tab",
    "data: looks like a field", ":colon first",
])
def test_sse_payload_round_trips_as_one_event(payload: str) -> None:
    events = _frame_then_parse(payload)
    normalized = payload.replace("\r\n", "\n").replace("\r", "\n")
    assert events == [("data", normalized)]


def test_sse_frame_lines_all_are_data_lines() -> None:
    frame = sse.data_event("a\r\nb\rc\nd\n\nevent: control").decode()
    assert frame.endswith("\n\n")
    lines = frame[:-2].split("\n")
    assert lines[0] == "event: data"
    assert all(line.startswith("data:") for line in lines[1:])
    assert "\r" not in frame


def test_leading_space_survives_a_spec_parser() -> None:
    # An SSE parser strips exactly one space after the colon (WHATWG event stream
    # interpretation), so a payload line starting with a space must get one extra.
    def whatwg_data(frame: str) -> str:
        data = []
        for line in frame.split("\n"):
            if line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
        return "\n".join(data)

    for payload in (" x", "  y", "a\n b", " "):
        assert whatwg_data(sse.data_event(payload).decode()) == payload


def test_control_event_fields() -> None:
    open_event = sse.control_event("O1", cursor="42", up_to_date=True, closed=False)
    ((name, data),) = sse.parse_events(open_event.decode())
    assert name == "control"
    assert json.loads(data) == {"streamNextOffset": "O1", "streamCursor": "42", "upToDate": True}

    behind = sse.control_event("O1", cursor="42", up_to_date=False, closed=False)
    assert json.loads(sse.parse_events(behind.decode())[0][1]) == {
        "streamNextOffset": "O1", "streamCursor": "42"}

    closed = sse.control_event("O2", cursor="42", up_to_date=True, closed=True)
    fields = json.loads(sse.parse_events(closed.decode())[0][1])
    assert fields["streamClosed"] is True and fields["streamNextOffset"] == "O2"
    assert "streamCursor" not in fields


def test_parse_events_several_and_comments() -> None:
    text = (": keep-alive\n\n"
            "event: data\ndata: [1]\n\n"
            "event: control\r\ndata: {}\r\n\r\n"
            "data: no name\n\n")
    assert sse.parse_events(text) == [("data", "[1]"), ("control", "{}"), ("message", "no name")]


def test_base64_payload_is_single_line_safe() -> None:
    raw = bytes(range(256)) * 4
    encoded = base64.b64encode(raw).decode()
    ((_, data),) = _frame_then_parse(encoded)
    assert base64.b64decode(data.replace("\n", "")) == raw


# ---------------------------------------------------------------------------
# Cursors (10.1)


def test_cursor_is_current_interval_without_echo() -> None:
    now = cursor.DEFAULT_EPOCH + 20 * 1000 + 5
    assert cursor.next_cursor(None, now=now) == "1000"
    assert cursor.next_cursor("", now=now) == "1000"
    assert cursor.current_interval(now) == 1000


def test_cursor_never_goes_backwards_over_time() -> None:
    previous = -1
    for step in range(0, 2000, 7):
        value = int(cursor.next_cursor(None, now=cursor.DEFAULT_EPOCH + step))
        assert value >= previous
        previous = value


def test_old_echo_gets_the_current_interval() -> None:
    now = cursor.DEFAULT_EPOCH + 20 * 1000
    assert cursor.next_cursor("999", now=now) == "1000"
    assert cursor.next_cursor("0", now=now) == "1000"


@pytest.mark.parametrize("echo", [1000, 1001, 5000])
def test_echo_at_or_ahead_gets_a_strictly_greater_cursor(echo: int) -> None:
    now = cursor.DEFAULT_EPOCH + 20 * 1000 + 3
    rng = random.Random(1)
    for _ in range(200):
        value = int(cursor.next_cursor(str(echo), now=now, rng=rng))
        # jitter is 1-3600 s: at least one interval, at most 3600/20 intervals ahead
        assert echo < value <= echo + 3600 // cursor.DEFAULT_INTERVAL


@pytest.mark.parametrize("echo", ["abc", "1.5", "1e9", "0x10", "9" * 5000])
def test_garbage_echo_is_treated_as_no_echo(echo: str) -> None:
    now = cursor.DEFAULT_EPOCH + 20 * 1000
    assert cursor.next_cursor(echo, now=now) == "1000"


# ---------------------------------------------------------------------------
# Stream state: append decisions (5.2, 5.2.1, 5.3)


def _state(**kw: object) -> StreamState:
    base: dict[str, object] = {"id": 1, "path": "s", "content_type": "text/plain",
                               "created_at": 0.0}
    base.update(kw)
    return StreamState(**base)  # type: ignore[arg-type]


def _append(payload: bytes = b"x", **kw: object) -> AppendRequest:
    kw.setdefault("content_type", "text/plain")
    return AppendRequest(payload=payload, **kw)  # type: ignore[arg-type]


def test_plain_append_accepted() -> None:
    decision = decide_append(_state(), _append(b"hello"))
    assert (decision.status, decision.write, decision.error) == (204, True, None)


def test_closed_beats_content_type_and_seq() -> None:
    # 5.2 error precedence: closed first, so the client gets Stream-Closed.
    state = _state(closed=True, tail=5, stream_seq="b")
    decision = decide_append(state, _append(b"x", content_type="application/json",
                                            stream_seq="a"))
    assert decision.status == 409 and not decision.write
    assert decision.error is not None
    assert decision.error.headers["stream-closed"] == "true"
    assert decision.error.headers["stream-next-offset"] == format_offset(5)


def test_content_type_beats_seq() -> None:
    state = _state(stream_seq="b")
    decision = decide_append(state, _append(b"x", content_type="application/json",
                                            stream_seq="a"))
    assert decision.status == 409 and decision.error is not None
    assert "stream-closed" not in decision.error.headers
    assert "content type" in decision.error.reason


def test_content_type_compared_without_parameters() -> None:
    state = _state(content_type="text/plain; charset=utf-8")
    assert decide_append(state, _append(b"x", content_type="TEXT/PLAIN")).write


def test_stream_seq_must_strictly_increase_bytewise() -> None:
    state = _state(stream_seq="b")
    for regress in ("a", "b", "B", "ab"):
        assert decide_append(state, _append(stream_seq=regress)).status == 409
    for forward in ("c", "ba", "b0"):
        assert decide_append(state, _append(stream_seq=forward)).write
    # byte-wise, not numeric: "10" < "9"
    assert decide_append(_state(stream_seq="9"), _append(stream_seq="10")).status == 409


def test_first_stream_seq_accepted_and_recorded() -> None:
    state = _state()
    req = _append(stream_seq="a")
    decision = decide_append(state, req)
    apply_append(state, req, decision, now=1.0)
    assert state.stream_seq == "a"
    assert decide_append(state, _append(stream_seq="a")).status == 409


def _producer_state(epoch: int, last_seq: int) -> StreamState:
    return _state(producers={"p": ProducerState(epoch, last_seq)})


def test_new_producer_must_start_at_zero() -> None:
    ok = decide_append(_state(), _append(producer=Producer("p", 0, 0)))
    assert ok.status == 200 and ok.write
    assert ok.headers == {"producer-epoch": "0", "producer-seq": "0"}
    assert ok.producer_state == ProducerState(0, 0)
    gap = decide_append(_state(), _append(producer=Producer("p", 0, 3)))
    assert gap.status == 409 and gap.error is not None
    assert gap.error.headers == {"producer-expected-seq": "0", "producer-received-seq": "3"}


def test_new_producer_any_epoch_at_seq_zero() -> None:
    decision = decide_append(_state(), _append(producer=Producer("p", 7, 0)))
    assert decision.status == 200 and decision.producer_state == ProducerState(7, 0)


def test_stale_epoch_is_fenced() -> None:
    decision = decide_append(_producer_state(5, 3), _append(producer=Producer("p", 4, 4)))
    assert decision.status == 403 and decision.error is not None
    assert decision.error.headers == {"producer-epoch": "5"}


def test_new_epoch_must_start_at_zero() -> None:
    bad = decide_append(_producer_state(5, 3), _append(producer=Producer("p", 6, 1)))
    assert bad.status == 400 and not bad.write
    good = decide_append(_producer_state(5, 3), _append(producer=Producer("p", 6, 0)))
    assert good.status == 200 and good.producer_state == ProducerState(6, 0)


@pytest.mark.parametrize("seq", [0, 2, 3])
def test_duplicate_is_idempotent_success(seq: int) -> None:
    decision = decide_append(_producer_state(1, 3), _append(producer=Producer("p", 1, seq)))
    assert decision.status == 204 and not decision.write
    assert decision.headers == {"producer-epoch": "1", "producer-seq": "3"}


def test_next_seq_accepted() -> None:
    decision = decide_append(_producer_state(1, 3), _append(producer=Producer("p", 1, 4)))
    assert decision.status == 200 and decision.write
    assert decision.producer_state == ProducerState(1, 4)


def test_seq_gap_conflict() -> None:
    decision = decide_append(_producer_state(1, 3), _append(producer=Producer("p", 1, 6)))
    assert decision.status == 409 and decision.error is not None
    assert decision.error.headers == {"producer-expected-seq": "4", "producer-received-seq": "6"}


def test_producers_are_independent() -> None:
    state = _producer_state(1, 3)
    decision = decide_append(state, _append(producer=Producer("q", 0, 0)))
    assert decision.status == 200


def test_producer_duplicate_checked_before_stream_seq() -> None:
    # a retried batch must be deduplicated, not refused for its (already recorded) Stream-Seq
    state = _state(producers={"p": ProducerState(0, 0)}, stream_seq="a")
    decision = decide_append(state, _append(producer=Producer("p", 0, 0), stream_seq="a"))
    assert decision.status == 204


def test_close_only_is_idempotent() -> None:
    state = _state(tail=4)
    req = _append(b"", content_type=None, close=True)
    first = decide_append(state, req)
    assert first.status == 204 and first.write and first.headers["stream-closed"] == "true"
    apply_append(state, req, first, now=2.0)
    assert state.closed and state.tail == 4
    again = decide_append(state, _append(b"", content_type=None, close=True))
    assert again.status == 204 and not again.write
    assert again.headers == {"stream-closed": "true", "stream-next-offset": format_offset(4)}


def test_close_only_ignores_content_type() -> None:
    # 5.2: an empty body is never refused for its Content-Type
    state = _state()
    decision = decide_append(state, _append(b"", content_type="application/json", close=True))
    assert decision.write and decision.status == 204


def test_append_and_close_on_closed_stream_conflicts() -> None:
    state = _state(closed=True)
    decision = decide_append(state, _append(b"more", close=True))
    assert decision.status == 409 and decision.error is not None
    assert decision.error.headers["stream-closed"] == "true"


def test_producer_close_retry_is_deduplicated() -> None:
    state = _state()
    req = _append(b"final", producer=Producer("p", 0, 0), close=True)
    decision = decide_append(state, req)
    assert decision.status == 200 and decision.write
    apply_append(state, req, decision, now=3.0)
    assert state.closed and state.closed_by == ("p", 0, 0)
    retry = decide_append(state, _append(b"final", producer=Producer("p", 0, 0), close=True))
    assert retry.status == 204 and not retry.write
    assert retry.headers["stream-closed"] == "true"
    other = decide_append(state, _append(b"final", producer=Producer("p", 0, 1), close=True))
    assert other.status == 409 and other.error is not None
    assert other.error.headers["stream-closed"] == "true"


def test_apply_append_moves_tail_and_producer_state() -> None:
    state = _state(ttl=10, last_access=0.0)
    req = _append(b"abc", producer=Producer("p", 2, 0), stream_seq="s1")
    decision = decide_append(state, req)
    apply_append(state, req, decision, now=42.0)
    assert state.tail == 3
    assert state.next_offset == format_offset(3)
    assert state.producers["p"] == ProducerState(2, 0, last_used=42.0)
    assert state.stream_seq == "s1"
    assert state.last_access == 42.0
    assert not state.closed
    req2 = _append(b"de", producer=Producer("p", 2, 1))
    apply_append(state, req2, decide_append(state, req2), now=43.0)
    assert state.tail == 5 and state.producers["p"] == ProducerState(2, 1, last_used=43.0)


def test_refused_decision_changes_nothing_when_not_applied() -> None:
    state = _producer_state(1, 3)
    before = state.copy()
    decide_append(state, _append(producer=Producer("p", 0, 9)))
    assert state.producers == before.producers and state.tail == before.tail


def test_state_copy_is_deep_for_producers() -> None:
    state = _producer_state(1, 1)
    clone = state.copy()
    clone.producers["p"].last_seq = 99
    assert state.producers["p"].last_seq == 1


def test_expiry() -> None:
    assert not _state().is_expired(1e12)
    assert _state(ttl=10, last_access=100.0).is_expired(110.0)
    assert not _state(ttl=10, last_access=100.0).is_expired(109.9)
    assert _state(expires_ts=50.0).is_expired(50.0)
    assert not _state(expires_ts=50.0).is_expired(49.0)


# ---------------------------------------------------------------------------
# Create: idempotent config match (5.1) and fork expiry (4.2)


def test_same_config() -> None:
    state = _state(content_type="text/plain", ttl=60)
    assert same_config(state, CreateRequest(content_type="text/plain", ttl=60))
    assert same_config(state, CreateRequest(content_type="TEXT/PLAIN; charset=utf-8", ttl=60))
    assert not same_config(state, CreateRequest(content_type="text/plain"))
    assert not same_config(state, CreateRequest(content_type="text/plain", ttl=61))
    assert not same_config(state, CreateRequest(content_type="application/json", ttl=60))
    assert not same_config(state, CreateRequest(content_type="text/plain", ttl=60, closed=True))
    closed = _state(closed=True)
    assert same_config(closed, CreateRequest(content_type="text/plain", closed=True))
    assert not same_config(closed, CreateRequest(content_type="text/plain"))


def test_same_config_default_content_type() -> None:
    state = _state(content_type="application/octet-stream")
    assert same_config(state, CreateRequest(content_type=None))


@pytest.mark.parametrize(("source", "request_kw", "expected"), [
    ({}, {}, (None, None, None)),
    ({}, {"ttl": 5}, (5, None, None)),
    ({}, {"expires_at": "E", "expires_ts": 9.0}, (None, "E", 9.0)),
    ({"ttl": 30}, {}, (30, None, None)),
    ({"ttl": 30}, {"ttl": 5}, (5, None, None)),
    ({"ttl": 30}, {"expires_at": "E", "expires_ts": 9.0}, (None, "E", 9.0)),
    ({"expires_at": "S", "expires_ts": 7.0}, {}, (None, "S", 7.0)),
    ({"expires_at": "S", "expires_ts": 7.0}, {"ttl": 5}, (5, None, None)),
    ({"expires_at": "S", "expires_ts": 7.0}, {"expires_at": "E", "expires_ts": 9.0},
     (None, "E", 9.0)),
])
def test_fork_expiry_table(source: dict[str, object], request_kw: dict[str, object],
                           expected: tuple[object, object, object]) -> None:
    # 4.2: the nine rows of the fork TTL/expiry table.
    req = CreateRequest(content_type=None, forked_from="src", **request_kw)  # type: ignore[arg-type]
    assert fork_expiry(req, _state(**source)) == expected


def test_decision_defaults() -> None:
    decision = AppendDecision(204)
    assert decision.headers == {} and decision.error is None and not decision.write


# ---------------------------------------------------------------------------
# Paths (12.2)


@pytest.mark.parametrize(("raw", "name"), [
    (b"a", "a"), (b"a/b/c", "a/b/c"), (b"caf%C3%A9", "caf\u00e9"), (b"a%20b", "a b"),
    (b"..a", "..a"), (b"a..", "a.."), (b"a.b", "a.b"), (b"...", "..."), (b"a%3Fb", "a?b"),
    (b"x" * MAX_NAME_BYTES, "x" * MAX_NAME_BYTES),
])
def test_valid_stream_names(raw: bytes, name: str) -> None:
    assert stream_name(raw) == name


@pytest.mark.parametrize("raw", [
    b"..", b".", b"a/..", b"../a", b"a/../b", b"a/./b", b"./a", b"a/.",
    b"%2e%2e", b"%2E%2E/a", b"a/%2e", b"a/.%2e/b",
    b"a//b", b"/a", b"a/",
    b"a%2Fb", b"a%2fb", b"a%5Cb", b"a%5cb", b"a\\b", b"a%00b", b"a%00",
    b"a%01b", b"a%0Ab", b"a%0db", b"a%1Fb", b"a%7Fb", b"a\tb",
    b"%ff", b"a%C3", b"%C0%AF", b"%ED%A0%80",  # invalid UTF-8 (overlong, surrogate)
])
def test_refused_stream_names(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        stream_name(raw)
    assert 400 <= info.value.status < 500


def test_empty_name_is_not_found() -> None:
    with pytest.raises(ProtocolError) as info:
        stream_name(b"")
    assert info.value.status == 404


def test_over_long_names() -> None:
    with pytest.raises(ProtocolError) as info:
        stream_name(b"x" * (MAX_NAME_BYTES + 1))
    assert info.value.status == 414
    # the limit counts decoded bytes: each %C3%A9 is two bytes
    with pytest.raises(ProtocolError):
        stream_name(b"%C3%A9" * (MAX_NAME_BYTES // 2 + 1))


# ---------------------------------------------------------------------------
# Properties (hypothesis): parsers either answer or raise ProtocolError, nothing else

_fast = settings(max_examples=150, deadline=None)
_big_ints = st.integers(min_value=2**63, max_value=2**200) | st.integers(max_value=-(2**63) - 1,
                                                                      min_value=-(2**200))


@_fast
@given(st.integers(min_value=0, max_value=10**16 - 1), st.integers(min_value=0,
                                                                    max_value=10**16 - 1))
def test_offset_order_property(a: int, b: int) -> None:
    ta, tb = format_offset(a), format_offset(b)
    assert parse_offset(ta) == a
    assert (ta < tb) == (a < b)


@_fast
@given(st.text(max_size=40))
def test_header_parsers_only_raise_protocol_errors(value: str) -> None:
    for parse in (parse_ttl, parse_expires_at, parse_offset,
                  lambda v: parse_producer("p", v, "0"), lambda v: parse_producer("p", "0", v),
                  lambda v: parse_non_negative(v, "X"), parse_stream_seq):
        try:
            parse(value)
        except ProtocolError as err:
            assert err.status == 400 and err.reason and "\n" not in err.reason


@_fast
@given(st.binary(max_size=60))
def test_stream_name_only_raises_protocol_errors(raw: bytes) -> None:
    try:
        name = stream_name(raw)
    except ProtocolError as err:
        assert 400 <= err.status < 500
    else:
        segments = name.split("/")
        assert all(s not in ("", ".", "..") for s in segments)
        assert not any(ord(c) < 0x20 or c in "\x7f\\" for c in name)


@_fast
@given(st.one_of(st.binary(max_size=80),
                 st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 # JSON escapes of UTF-16 surrogates, paired or not
                 st.lists(st.integers(0xD800, 0xDFFF), min_size=1, max_size=3)
                 .map(lambda cs: ('"' + "".join(f"\\u{c:04x}" for c in cs) + '"').encode()),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats(
                     allow_nan=False, allow_infinity=False) | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.text(max_size=4), c, max_size=3), max_leaves=10)
                 .map(lambda v: json.dumps(v).encode())))
def test_json_split_only_raises_protocol_errors(body: bytes) -> None:
    try:
        messages = jsonmode.split_messages(body, allow_empty=False)
    except ProtocolError as err:
        assert err.status == 400
        return
    # whatever is stored reads back as valid JSON, one array of the messages
    wrapped = jsonmode.wrap([jsonmode.fragment(messages)])
    assert len(json.loads(wrapped.decode("utf-8"))) == len(messages)


@_fast
@given(st.recursive(st.none() | st.booleans() | st.integers() | _big_ints | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.text(max_size=4), c, max_size=3), max_leaves=10))
def test_json_messages_keep_their_value(value: object) -> None:
    # 9.1.2: one level of array is a batch; anything else is one message, kept as sent
    messages = [json.loads(m) for m in
                jsonmode.split_messages(json.dumps(value).encode(), allow_empty=True)]
    assert messages == (value if isinstance(value, list) else [value])


@_fast
@given(st.text(max_size=200))
def test_sse_round_trip_property(payload: str) -> None:
    events = sse.parse_events(sse.data_event(payload).decode())
    assert events == [("data", payload.replace("\r\n", "\n").replace("\r", "\n"))]


@_fast
@given(st.text(max_size=30), st.integers(min_value=0, max_value=10**6))
def test_cursor_property(echo: str, seconds: int) -> None:
    now = cursor.DEFAULT_EPOCH + seconds
    current = cursor.current_interval(now)
    value = int(cursor.next_cursor(echo, now=now))
    assert value >= current
    try:
        echoed = int(echo)
    except ValueError:
        return
    if echoed >= current:
        assert value > echoed
