"""duralog.ai: model streams into durable streams and back, against a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from duralog.ai import normalize, read_events, read_text, write_events, write_events_sync
from duralog.ai.aisdk import read_ui_message, write_aisdk
from duralog.ai.fake import fake_openai_stream, words
from duralog.ai.tanstack import read_session

from .servers import ROOT, ServerProcess, duralog_server, free_port

pytestmark = pytest.mark.timeout(120)
REPLY = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = duralog_server("memory", log_path=tmp_path_factory.mktemp("ai") / "s.log").start()
    yield s
    s.stop()


def url(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream/ai-{uuid.uuid4().hex}"


def ns(**kw):  # an SDK-shaped object (attribute access, like the pydantic models)
    return SimpleNamespace(**kw)


def openai_sdk_chunks():
    """Objects shaped like openai.types.chat.ChatCompletionChunk."""
    def chunk(content=None, reason=None, usage=None):
        return ns(id="c", object="chat.completion.chunk", usage=usage,
                  choices=[ns(index=0, delta=ns(content=content, role=None),
                              finish_reason=reason)])
    yield chunk("")
    for w in words(REPLY):
        yield chunk(w)
    yield chunk(None, "length")
    yield ns(id="c", object="chat.completion.chunk", choices=[],
             usage=ns(prompt_tokens=4, completion_tokens=9, total_tokens=13))


async def anthropic_sdk_events():
    """Objects shaped like anthropic's RawMessageStreamEvent union."""
    yield ns(type="message_start", message=ns(id="m", usage=ns(input_tokens=4, output_tokens=0)))
    yield ns(type="content_block_start", index=0, content_block=ns(type="text", text=""))
    for w in words(REPLY):
        yield ns(type="content_block_delta", index=0, delta=ns(type="text_delta", text=w))
    yield ns(type="content_block_stop", index=0)
    yield ns(type="message_delta", delta=ns(stop_reason="end_turn"), usage=ns(output_tokens=9))
    yield ns(type="message_stop")


def test_openai_shaped_sdk_stream(server):
    u = url(server)
    final = write_events_sync(u, openai_sdk_chunks())
    assert final == {"type": "finish", "reason": "length",
                     "usage": {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}}
    text, end = asyncio.run(read_text(u))
    assert text == REPLY and end == final
    info = httpx.head(u)
    assert info.headers["stream-closed"] == "true"


def test_anthropic_shaped_sdk_stream_and_plain_iterators(server):
    async def main() -> None:
        u = url(server)
        final = await write_events(u, anthropic_sdk_events())
        assert final["reason"] == "end_turn"
        assert final["usage"] == {"input_tokens": 4, "output_tokens": 9}
        assert (await read_text(u))[0] == REPLY
        u2 = url(server)
        await write_events(u2, iter(["a", "b", b"c", {"type": "tool", "name": "x"}]))
        events = [e async for e in read_events(u2)]
        assert events == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                          {"type": "text", "text": "c"}, {"type": "tool", "name": "x"},
                          {"type": "finish", "reason": "stop"}]

    asyncio.run(main())


def test_model_error_is_the_final_event(server):
    u = url(server)
    final = asyncio.run(write_events(u, fake_openai_stream(REPLY, fail_after=3)))
    assert final == {"type": "error", "message": "the fake model failed"}
    text, end = asyncio.run(read_text(u))
    assert text == "".join(words(REPLY)[:3]) and end == final


def test_tokens_are_batched_and_readers_resume(server):
    """200 tokens 1 ms apart go out in far fewer appends; a reader cut anywhere
    resumes from its offset with nothing lost or repeated."""
    u = url(server)

    async def slow():
        for i in range(200):
            yield f"t{i} "
            await asyncio.sleep(0.001)

    async def main() -> list[str]:
        httpx.put(u, headers={"content-type": "application/json"})
        writer = asyncio.create_task(write_events(u, slow(), linger=0.005))
        got: list[dict] = []
        reader = read_events(u)
        mark_offset, mark_count = "-1", 0
        async for event in reader:
            if reader.offset != mark_offset:  # everything before this event is saved
                mark_offset, mark_count = reader.offset, len(got)
            got.append(event)
            if len(got) >= 30:
                break  # a cut mid-batch
        kept = got[:mark_count]
        async for event in read_events(u, mark_offset):
            kept.append(event)
        await writer
        return [e["text"] for e in kept if e["type"] == "text"]

    kept = asyncio.run(main())
    assert kept == [f"t{i} " for i in range(200)]
    events = httpx.get(u, params={"offset": "-1"}).json()
    assert len(events) == 201  # every token is its own event, plus the finish
    # Fewer appends than events: an SSE read sends one data event per stored append.
    sse = httpx.get(u, params={"offset": "-1", "live": "sse"}, timeout=30).text
    assert sse.count("event: data") < 150


def test_aisdk_chunks_written_and_read(server):
    u = url(server)
    asyncio.run(write_aisdk(u, fake_openai_stream(REPLY), message_id="m1"))
    chunks = httpx.get(u, params={"offset": "-1"}).json()
    assert chunks[0] == {"type": "start", "messageId": "m1"}
    assert [c["type"] for c in chunks[1:3]] == ["start-step", "text-start"]
    assert chunks[-1]["type"] == "finish" and chunks[-1]["finishReason"] == "stop"
    assert chunks[-1]["messageMetadata"]["usage"]["total_tokens"] == 14
    text, finish = asyncio.run(read_ui_message(u))
    assert text == REPLY and finish == chunks[-1]


def test_python_reads_what_the_npm_helpers_wrote(server, node_available):
    a, s = url(server), url(server)
    out = subprocess.run(["node", "tests/peers/ai-writers.mjs", a, s], cwd=ROOT,
                         capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["aisdkStatus"] == 200 and result["sessionStatus"] == 200
    text, finish = asyncio.run(read_ui_message(a))
    assert text == "Written by the npm helpers." and finish == {"type": "finish",
                                                                "finishReason": "stop"}
    messages, _ = asyncio.run(read_session(s))
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["parts"] == [{"type": "text", "content": "hi from node"}]
    assert messages[1]["parts"] == [{"type": "text", "content": "Written by the npm helpers."}]


@pytest.fixture(scope="module")
def chat_app(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ServerProcess]:
    port = free_port()
    app = ServerProcess([sys.executable, "-m", "uvicorn", "tests.ai_app:app", "--port",
                         str(port), "--log-level", "warning"], port,
                        env={"DURALOG_URL": server.url, "AI_APP_DELAY": "0.03"},
                        log_path=tmp_path_factory.mktemp("app") / "app.log").start()
    yield app
    app.stop()


def test_aisdk_transport_reads_our_chat_live_and_after_reconnect(chat_app, node_available):
    out = subprocess.run(["node", "tests/peers/aisdk-client.mjs", chat_app.url + "/api/chat"],
                         cwd=ROOT, capture_output=True, timeout=90, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    from .ai_app import REPLY as APP_REPLY

    assert r["liveTypes"][:3] == ["start", "start-step", "text-start"]
    assert r["reconnectNull"] is False  # still in flight: the endpoint gave the stream
    assert r["text"] == APP_REPLY and r["role"] == "assistant"
    assert r["first"] == "start" and r["last"] == "finish"
    assert r["afterNull"] is True  # finished: 204, the transport returns null


def test_tanstack_transport_reads_our_session_live_and_after_reconnect(chat_app, server,
                                                                       node_available):
    sid = uuid.uuid4().hex
    out = subprocess.run(["node", "tests/peers/tanstack-client.mjs",
                          f"{chat_app.url}/api/session/{sid}",
                          f"{server.url}/v1/stream/sessions/{sid}"],
                         cwd=ROOT, capture_output=True, timeout=90, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    from .ai_app import REPLY as APP_REPLY

    assert r["firstType"] == "MESSAGES_SNAPSHOT" and r["sawFinish"] is True
    assert r["liveRoles"] == ["user", "assistant"] and r["liveText"] == APP_REPLY
    assert r["snapshotRoles"] == ["user", "assistant"]
    assert r["snapshotUser"] == "hello there" and r["snapshotText"] == APP_REPLY


def test_normalize_rejects_unknown_items():
    async def main() -> list[dict]:
        return [e async for e in normalize([1.5])]

    events = asyncio.run(main())
    assert events[-1]["type"] == "error" and "float" in events[-1]["message"]


# -- the real SDKs, pointed at the package's fake model ----------------------------------------


@pytest.fixture(scope="module")
def fake_model() -> Iterator[str]:
    from duralog.ai import fake

    from .servers import ThreadedServer

    with ThreadedServer(fake.app) as s:
        yield s.url


def test_real_openai_sdk_stream(server, fake_model):
    openai = pytest.importorskip("openai")

    async def main() -> tuple[dict, str, dict | None]:
        client = openai.AsyncOpenAI(base_url=fake_model + "/v1", api_key="sk-fake")
        stream = await client.chat.completions.create(
            model="fake", stream=True, messages=[{"role": "user", "content": "hi there"}])
        u = url(server)
        final = await write_events(u, stream)
        text, end = await read_text(u)
        return final, text, end

    final, text, end = asyncio.run(main())
    assert text == "You said: hi there"
    assert final["type"] == "finish" and final["reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 4 and end == final


def test_real_anthropic_sdk_stream(server, fake_model):
    anthropic = pytest.importorskip("anthropic")

    async def main() -> tuple[dict, str]:
        client = anthropic.AsyncAnthropic(base_url=fake_model, api_key="sk-fake")
        stream = await client.messages.create(
            model="fake", max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "hello claude"}])
        u = url(server)
        final = await write_events(u, stream)
        return final, (await read_text(u))[0]

    final, text = asyncio.run(main())
    assert text == "You said: hello claude"
    assert final == {"type": "finish", "reason": "end_turn",
                     "usage": {"input_tokens": 5, "output_tokens": 4}}


def test_real_openai_sync_sdk_stream(server, fake_model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake_model + "/v1", api_key="sk-fake")
    stream = client.chat.completions.create(
        model="fake", stream=True, messages=[{"role": "user", "content": "sync please"}])
    u = url(server)
    final = write_events_sync(u, stream)
    assert final["reason"] == "stop"
    assert asyncio.run(read_text(u))[0] == "You said: sync please"


# -- docs/ai.md: every Python example runs -------------------------------------------------------


def test_docs_examples_run(server, fake_model, tmp_path):
    import re

    doc = (ROOT / "docs/ai.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 4
    suffix = uuid.uuid4().hex[:8]

    def adapt(code: str) -> str:
        code = code.replace("http://127.0.0.1:4437", server.url)
        code = code.replace("http://127.0.0.1:8001", fake_model)
        return re.sub(r"/v1/stream/answers/(\d+)", rf"/v1/stream/answers-{suffix}/\1", code)

    outputs = []
    for block in blocks[:3]:
        result = subprocess.run([sys.executable, "-c", adapt(block)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "Durable tokens survive refreshes\n" in outputs[0]
    assert "'reason': 'stop'" in outputs[0]
    assert "'reason': 'end_turn'" in outputs[1] and "You said: hi from anthropic" in outputs[1]
    lines = outputs[2].splitlines()
    assert lines[0] == "{'type': 'text', 'text': 'one '}"
    assert lines[-1].startswith("{'type': 'finish'")
    texts = "".join(eval(line)["text"] for line in lines if "'text'" in line)
    assert texts.startswith("one ") and texts.endswith("six")

    # The FastAPI app: saved as chat_app.py and served, as the block says.
    (tmp_path / "chat_app.py").write_text(blocks[3])
    port = free_port()
    app = ServerProcess([sys.executable, "-m", "uvicorn", "chat_app:app", "--port", str(port),
                         "--app-dir", str(tmp_path)], port, env={"DURALOG_URL": server.url},
                        log_path=tmp_path / "app.log").start()
    try:
        r = httpx.post(app.url + "/api/chat", json={"id": "c1", "trigger": "submit-message",
                                                    "messages": [{"id": "u", "role": "user",
                                                                  "parts": [{"type": "text",
                                                                             "text": "why?"}]}]})
        assert r.status_code == 201 and r.json() == {"streamUrl": r.headers["location"]}
        assert httpx.get(app.url + "/api/chat/c1/stream").status_code == 200  # in flight
        text, finish = asyncio.run(read_ui_message(r.headers["location"]))
        assert text == "You asked: why?" and finish["finishReason"] == "stop"
        assert httpx.get(app.url + "/api/chat/c1/stream").status_code == 204  # done
        s = httpx.post(app.url + "/api/sessions/s1", json={"messages": [
            {"id": "u1", "role": "user", "parts": [{"type": "text", "content": "and now?"}]}]})
        assert s.status_code == 202
        session = f"{server.url}/v1/stream/sessions/s1"
        for _ in range(100):
            messages, _ = asyncio.run(read_session(session))
            if len(messages) == 2 and messages[1]["parts"] and \
                    messages[1]["parts"][0]["content"] == "You asked: and now?":
                break
            time.sleep(0.05)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["parts"][0]["content"] == "You asked: and now?"
    finally:
        app.stop()
