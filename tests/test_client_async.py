"""The asyncio client against real servers: ours (memory) and the Node reference."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from duralog.client import (
    AsyncDurableStream,
    StreamClosedError,
    StreamConflict,
    StreamNotFound,
)

from .servers import ServerProcess
from .test_client_resilience import ChaosProxy


@pytest.fixture(params=["memory_server", "ref_server"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    return request.getfixturevalue(request.param)


@pytest.fixture
def url(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream/async-{uuid.uuid4().hex[:12]}"


def run(fn: Callable[[AsyncDurableStream], Awaitable[Any]], url: str, **options: Any) -> Any:
    async def main() -> Any:
        async with AsyncDurableStream(url, **options) as stream:
            return await fn(stream)

    return asyncio.run(main())


def test_create_append_head_read(url: str) -> None:
    async def body(s: AsyncDurableStream) -> None:
        info = await s.create(content_type="application/json", ttl=600)
        assert info.created
        assert (await s.create(content_type="application/json", ttl=600)).created is False
        first = await s.append_json({"a": 1})
        await s.append(b'[{"b": 2}, {"c": 3}]')
        head = await s.head()
        assert head.ttl == 600 and not head.closed
        assert await s.read_json() == [{"a": 1}, {"b": 2}, {"c": 3}]
        assert await s.read_json(first.next_offset) == [{"b": 2}, {"c": 3}]
        reader = s.read("now")
        assert [c async for c in reader] == []
        assert reader.offset == head.next_offset
        with pytest.raises(StreamConflict):
            await s.create(content_type="text/plain")

    run(body, url)


@pytest.mark.parametrize("live", ["long-poll", "sse", "auto"])
def test_live_reads_end_at_close(url: str, live: str) -> None:
    async def body(s: AsyncDurableStream) -> None:
        await s.create(content_type="text/plain")
        await s.append("a")

        async def write() -> None:
            await asyncio.sleep(0.2)
            await s.append("b")
            await s.close("c")

        writer = asyncio.create_task(write())
        reader = s.read(live=live)
        text = "".join([t async for t in reader.text()])
        await writer
        assert text == "abc"
        assert reader.closed
        assert reader.offset == (await s.head()).next_offset

    run(body, url)


def test_binary_sse_and_closed_errors(url: str) -> None:
    payload = bytes(range(256)) * 2

    async def body(s: AsyncDurableStream) -> None:
        await s.create(content_type="application/octet-stream", body=payload[:100])
        await s.close(payload[100:])
        assert b"".join([c async for c in s.read(live="sse").bytes()]) == payload
        with pytest.raises(StreamClosedError) as err:
            await s.append(b"more")
        assert err.value.final_offset == (await s.head()).next_offset

    run(body, url)


def test_fork_delete_and_not_found(url: str) -> None:
    async def body(s: AsyncDurableStream) -> None:
        await s.create(content_type="application/json")
        mid = (await s.append_json(1, 2)).next_offset
        await s.append_json(3)
        fork = await s.fork(url + "-f", offset=mid)
        assert await fork.read_json() == [1, 2]
        await fork.delete()
        assert not await fork.exists()
        with pytest.raises(StreamNotFound) as err:
            await fork.read_json()
        assert err.value.status == 404

    run(body, url)


def test_async_header_functions_run_on_every_request(server: ServerProcess) -> None:
    proxy = ChaosProxy(server.port)
    counter = {"n": 0}

    async def token() -> str:
        await asyncio.sleep(0)
        counter["n"] += 1
        return f"Bearer t{counter['n']}"

    def sync_param() -> str:
        return "p"

    name = f"async-hdr-{uuid.uuid4().hex[:8]}"

    async def body(s: AsyncDurableStream) -> None:
        await s.create(content_type="text/plain")
        await s.append("x")
        await s.close()
        assert [c.data async for c in s.read(live="sse")] == [b"x"]

    try:
        run(body, f"{proxy.url}/v1/stream/{name}",
            headers={"authorization": token}, params={"tenant": sync_param})
    finally:
        proxy.stop()
    log = bytes(proxy.log).decode("latin-1")
    requests = re.findall(r"(?:GET|PUT|POST|HEAD) \S+ HTTP/1\.1", log)
    tokens = re.findall(r"(?i)authorization: (Bearer t\d+)", log)
    assert len(requests) == len(tokens) == counter["n"] >= 4
    assert len(set(tokens)) == len(tokens)
    assert all("tenant=p" in r for r in requests)
