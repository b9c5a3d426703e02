"""The Python durable fetch (duralog.proxy.fetch) against a real proxy server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from duralog.proxy import (
    AsyncDurableFetch,
    DurableFetch,
    FetchError,
    FileStorage,
    MemoryStorage,
    SQLiteStorage,
)

from . import fake_upstream
from .proxy_support import SECRET, proxy_server
from .servers import ROOT, ServerProcess, ThreadedServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(fake_upstream.app) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = proxy_server(log_path=tmp_path_factory.mktemp("fetch") / "server.log").start()
    yield server
    server.stop()


def P(server: ServerProcess) -> str:
    return server.url + "/v1/proxy"


def text_bytes(n: int) -> bytes:
    return "".join(fake_upstream.token(i) for i in range(n)).encode()


def requests_made(upstream: ThreadedServer, rid: str) -> int:
    return int(httpx.get(upstream.url + "/count", params={"of": rid}).text)


def test_fetch_reads_the_upstream_body(proxy, upstream):
    storage = MemoryStorage()
    with DurableFetch(P(proxy), secret=SECRET, storage=storage) as fetcher:
        r = fetcher.fetch(upstream.url + "/v1/chat/completions?n=20&delay=5", json={"x": 1},
                          key="k1")
        assert r.content_type == "text/event-stream"
        body = r.read()
        assert body == httpx.post(upstream.url + "/v1/chat/completions?n=20").content
        assert r.outcome == "complete" and r.complete
        saved = storage.load("k1")
        assert saved is not None and saved["outcome"] == "complete"
        assert saved["offset"] == f"0000000000000000_{len(body):016d}"
        # The same key again: no new upstream request, nothing left to read.
        again = fetcher.fetch(upstream.url + "/never-called", key="k1")
        assert again.read() == b"" and again.outcome == "complete"


def test_upstream_error_raises_with_status(proxy, upstream):
    with DurableFetch(P(proxy), secret=SECRET) as fetcher, pytest.raises(FetchError) as err:
        fetcher.fetch(upstream.url + "/v1/chat/completions?status=503")
    assert err.value.status == 502 and err.value.upstream_status == 503
    assert b"fake upstream error" in err.value.body
    with DurableFetch(P(proxy), secret="wrong") as fetcher, pytest.raises(FetchError) as err:
        fetcher.fetch(upstream.url + "/text")
    assert err.value.code == "INVALID_SECRET"


class FlakyTransport(httpx.HTTPTransport):
    """A real transport that drops every third read request before it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.calls += 1
            if self.calls % 3 == 0:
                self.dropped += 1
                raise httpx.ReadError("connection dropped", request=request)
        return super().handle_request(request)


def test_drops_are_resumed_without_loss_or_repeat(proxy, upstream):
    transport = FlakyTransport()
    client = httpx.Client(transport=transport, timeout=30)
    with DurableFetch(P(proxy), secret=SECRET, client=client, backoff=0.01) as fetcher:
        r = fetcher.fetch(upstream.url + "/text?n=400&delay=3&id=drops", method="GET")
        body = b"".join(r.iter_bytes())
    assert transport.dropped >= 3
    assert body == text_bytes(400)
    assert requests_made(upstream, "drops") == 1


class AsyncFlakyTransport(httpx.AsyncHTTPTransport):
    """FlakyTransport's asyncio twin; ``every=1`` drops every read."""

    def __init__(self, every: int = 3) -> None:
        super().__init__()
        self.every = every
        self.calls = 0
        self.dropped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.calls += 1
            if self.calls % self.every == 0:
                self.dropped += 1
                raise httpx.ReadError("connection dropped", request=request)
        return await super().handle_async_request(request)


def test_async_drops_are_resumed_without_loss_or_repeat(proxy, upstream):
    async def main() -> bytes:
        transport = AsyncFlakyTransport()
        client = httpx.AsyncClient(transport=transport, timeout=30)
        async with AsyncDurableFetch(P(proxy), secret=SECRET, client=client,
                                     backoff=0.01) as fetcher:
            r = await fetcher.fetch(upstream.url + "/text?n=400&delay=3&id=adrops",
                                    method="GET")
            body = await r.read()
        assert transport.dropped >= 3
        return body

    assert asyncio.run(main()) == text_bytes(400)
    assert requests_made(upstream, "adrops") == 1


def test_both_twins_give_up_after_the_retries_with_the_transport_error(proxy, upstream):
    """Reads that always drop: retried ``retries`` times, then the error itself."""

    class AlwaysDrops(httpx.HTTPTransport):
        calls = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                AlwaysDrops.calls += 1
                raise httpx.ReadError("connection dropped", request=request)
            return super().handle_request(request)

    with DurableFetch(P(proxy), secret=SECRET, retries=3, backoff=0.001,
                      client=httpx.Client(transport=AlwaysDrops(), timeout=30)) as fetcher:
        r = fetcher.fetch(upstream.url + "/text?n=3", method="GET")
        with pytest.raises(httpx.ReadError):
            r.read()
    assert AlwaysDrops.calls == 4  # the first try and three retries

    async def main() -> int:
        transport = AsyncFlakyTransport(every=1)
        async with AsyncDurableFetch(P(proxy), secret=SECRET, retries=3, backoff=0.001,
                                     client=httpx.AsyncClient(transport=transport,
                                                              timeout=30)) as fetcher:
            r = await fetcher.fetch(upstream.url + "/text?n=3", method="GET")
            with pytest.raises(httpx.ReadError):
                await r.read()
        return transport.calls

    assert asyncio.run(main()) == 4


def test_refusals_are_not_retried(proxy, upstream):
    """A 4xx on a read (here a pre-signed URL with a forged signature) raises at once."""
    with DurableFetch(P(proxy), secret=SECRET) as fetcher:
        r = fetcher.fetch(upstream.url + "/text?n=3", method="GET")
        r.stream_url = r.stream_url.replace("signature=", "signature=x")
        with pytest.raises(FetchError) as err:
            r.read()
    assert err.value.status == 401 and err.value.code == "SIGNATURE_INVALID"


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_process_restart_resumes_from_the_saved_offset(kind, proxy, upstream, tmp_path):
    """A consumer dies mid-body; a new process resumes: every byte once, one model call."""
    rid = f"restart-{kind}"
    url = upstream.url + f"/text?n=600&delay=4&id={rid}"
    out = tmp_path / "consumed.bin"
    if kind == "sqlite":
        db = tmp_path / "fetch.db"
        child = subprocess.run([sys.executable, "-m", "tests.fetch_child", P(proxy), url, str(db),
                                str(out), "3"], cwd=ROOT, capture_output=True, timeout=60)
        assert child.returncode == 9, child.stderr.decode()
        storage = SQLiteStorage(db)
    else:
        storage = FileStorage(tmp_path / "fetch.json")
        with DurableFetch(P(proxy), secret=SECRET, storage=storage) as first:
            response = first.fetch(url, method="GET", key="conversation-1")
            with open(out, "wb") as f:
                for i, chunk in enumerate(response.iter_bytes()):
                    f.write(chunk)
                    if i == 2:
                        break  # leaves without finishing: this chunk counts as handled
            # A new FileStorage object reads what the first one wrote, like a new process.
            storage = FileStorage(tmp_path / "fetch.json")
    consumed = out.read_bytes()
    assert 0 < len(consumed) < len(text_bytes(600))
    with DurableFetch(P(proxy), secret=SECRET, storage=storage) as fetcher:
        resumed = fetcher.resume("conversation-1")
        assert resumed is not None and resumed.resumed
        rest = resumed.read()
    if kind == "file":
        # `break` left the third chunk unsaved: at-least-once, it comes again.
        assert (consumed + rest).startswith(consumed)
        assert text_bytes(600).endswith(rest)
        assert len(consumed) + len(rest) >= len(text_bytes(600))
    else:
        assert consumed + rest == text_bytes(600)  # nothing lost, nothing repeated
    assert requests_made(upstream, rid) == 1  # the model ran once


def test_async_fetch_and_abort(proxy, upstream):
    async def main() -> tuple[bytes, str | None, bytes]:
        async with AsyncDurableFetch(P(proxy), secret=SECRET) as fetcher:
            whole = await (await fetcher.fetch(upstream.url + "/v1/messages?n=30",
                                               json={"stream": True})).read()
            r = await fetcher.fetch(upstream.url + "/text?n=3000&delay=10", method="GET")
            got = b""
            async for chunk in r:
                got += chunk
                if len(got) > 50:
                    await r.abort()
            return whole, r.outcome, got

    whole, outcome, got = asyncio.run(main())
    assert whole == httpx.post(upstream.url + "/v1/messages?n=30").content
    assert outcome == "aborted"
    assert text_bytes(3000).startswith(got) and len(got) < len(text_bytes(3000))


def test_storages_round_trip(tmp_path):
    for storage in (MemoryStorage(), FileStorage(tmp_path / "f.json"),
                    SQLiteStorage(tmp_path / "s.db")):
        assert storage.load("a") is None
        storage.save("a", {"url": "u", "offset": "o"})
        assert storage.load("a") == {"url": "u", "offset": "o"}
        storage.delete("a")
        assert storage.load("a") is None


def test_expired_records_are_not_resumed(tmp_path):
    storage = MemoryStorage()
    storage.save("old", {"url": "http://x/v1/proxy/id?expires=1&signature=s", "offset": "-1"})
    with DurableFetch("http://127.0.0.1:9", storage=storage) as fetcher:
        assert fetcher.resume("old") is None
    assert storage.load("old") is None


# -- docs/proxy.md: every Python example runs ---------------------------------------------------


def test_docs_examples_run(proxy, tmp_path):
    import re

    from duralog.ai import fake

    doc = (ROOT / "docs/proxy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 4
    outputs = []
    with ThreadedServer(fake.app) as model:
        for block in blocks:
            code = (block.replace("http://127.0.0.1:4437", proxy.url)
                    .replace("http://127.0.0.1:8001", model.url)
                    .replace("dev-secret", SECRET)
                    .replace("/tmp/fetches.json", str(tmp_path / "fetches.json")))
            result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, f"{block}\n{result.stderr}"
            outputs.append(result.stdout)
    assert outputs[0].startswith("text/event-stream\n")
    assert '"content": "hello "' in outputs[0] and "data: [DONE]" in outputs[0]
    assert outputs[0].endswith("complete\n")
    assert outputs[1] == "True b'' complete\n"
    assert outputs[2] == "aborted\n"
    assert outputs[3] == "You said: through the proxy\n"


# -- the SDKs through the proxy (httpx transports) ------------------------------------------------


def test_openai_sdk_through_the_durable_transport(proxy, upstream):
    openai = pytest.importorskip("openai")
    from duralog.proxy.transport import AsyncDurableTransport, DurableTransport

    async def main() -> str:
        transport = AsyncDurableTransport(P(proxy), secret=SECRET)
        client = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="sk-upstream",
                                    http_client=httpx.AsyncClient(transport=transport))
        stream = await client.chat.completions.create(
            model="fake", stream=True, messages=[{"role": "user", "content": "x"}],
            extra_query={"n": "12", "delay": "5"})
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="fake", stream=True, messages=[{"role": "user", "content": "x"}],
                extra_query={"status": "429"})
        return text

    assert asyncio.run(main()) == text_bytes(12).decode()
    client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-upstream",
                           http_client=httpx.Client(transport=DurableTransport(
                               P(proxy), secret=SECRET)))
    stream = client.chat.completions.create(model="fake", stream=True, messages=[
        {"role": "user", "content": "x"}], extra_query={"n": "7"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        text_bytes(7).decode()


def test_upstream_sees_the_sdk_key_not_the_proxy_secret(proxy, upstream):
    from duralog.proxy.transport import DurableTransport

    with httpx.Client(transport=DurableTransport(P(proxy), secret=SECRET)) as client:
        r = client.post(upstream.url + "/echo", headers={"Authorization": "Bearer sk-up",
                                                         "X-Sdk": "1"}, json={"a": 1})
    echo = r.json()
    assert echo["headers"]["authorization"] == "Bearer sk-up"
    assert echo["headers"]["x-sdk"] == "1" and echo["body"] == '{"a":1}'
