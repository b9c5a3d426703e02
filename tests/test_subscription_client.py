"""The Python subscription workers (duralog.client.subscriptions) against our server
and against the Node reference server (npm @durable-streams/server)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

from duralog.client.subscriptions import (
    AsyncPullWorker,
    AsyncSubscriptions,
    Claim,
    PullWorker,
    SubscriptionError,
    Subscriptions,
    Wake,
    WebhookReceiver,
)

from .servers import ServerProcess, ThreadedServer
from .test_subscriptions import wait_until


@pytest.fixture(params=["duralog", "reference"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    return request.getfixturevalue("memory_server" if request.param == "duralog"
                                   else "ref_server")


def setup(server: ServerProcess) -> tuple[str, Subscriptions]:
    uid = uuid.uuid4().hex[:8]
    httpx.put(f"{server.url}/v1/stream/wake-{uid}", json=[],
              headers={"content-type": "application/json"})
    return uid, Subscriptions(server.url)


def append(server: ServerProcess, path: str, value: Any, create: bool = False) -> None:
    method = "PUT" if create else "POST"
    r = httpx.request(method, f"{server.url}/v1/stream/{path}", json=value)
    assert r.status_code < 300, r.text


def acked_at_tail(subs: Subscriptions, server: ServerProcess, sub_id: str) -> bool:
    links = subs.get(sub_id)["streams"]
    return all(link["acked_offset"] == httpx.head(
        f"{server.url}/v1/stream/{link['path']}").headers["stream-next-offset"]
        for link in links) and bool(links)


def test_sync_pull_worker(server: ServerProcess) -> None:
    uid, subs = setup(server)
    subs.create(f"pw-{uid}", type="pull-wake", pattern=f"{uid}/*", wake_stream=f"wake-{uid}",
                lease_ttl_ms=5000)
    assert subs.create(f"pw-{uid}", type="pull-wake", pattern=f"{uid}/*",
                       wake_stream=f"wake-{uid}", lease_ttl_ms=5000)["id"] == f"pw-{uid}"
    with pytest.raises(SubscriptionError) as conflict:
        subs.create(f"pw-{uid}", type="pull-wake", pattern="other/*", wake_stream="w")
    assert conflict.value.code == "SUBSCRIPTION_ALREADY_EXISTS"
    seen: list[tuple[str, Any]] = []

    def handle(path: str, messages: Any, claim: Claim) -> None:
        seen.extend((path, m) for m in messages)

    append(server, f"{uid}/a", {"n": 1}, create=True)
    append(server, f"{uid}/b", {"n": 2}, create=True)
    worker = PullWorker(subs, f"pw-{uid}", "w1", handle, wake_stream=f"wake-{uid}",
                        idle_wait=2)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(seen) >= 2, what="first messages")
        append(server, f"{uid}/a", {"n": 3})
        wait_until(lambda: (f"{uid}/a", {"n": 3}) in seen, what="a later message")
        wait_until(lambda: acked_at_tail(subs, server, f"pw-{uid}"), what="acks at the tail")
    finally:
        stop.set()
        thread.join(30)
    assert sorted(seen, key=str) == sorted([(f"{uid}/a", {"n": 1}), (f"{uid}/b", {"n": 2}),
                                            (f"{uid}/a", {"n": 3})], key=str)
    subs.delete(f"pw-{uid}")


def test_async_pull_worker(server: ServerProcess) -> None:
    uid, _ = setup(server)

    async def run() -> None:
        subs = AsyncSubscriptions(server.url)
        await subs.create(f"apw-{uid}", type="pull-wake", streams=[f"{uid}/x"],
                          wake_stream=f"wake-{uid}")
        seen: list[Any] = []

        async def handle(path: str, messages: Any, claim: Claim) -> None:
            seen.extend(messages)

        worker = AsyncPullWorker(subs, f"apw-{uid}", "aw", handle, wake_stream=f"wake-{uid}",
                                 idle_wait=2)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.to_thread(append, server, f"{uid}/x", [{"i": 1}, {"i": 2}], True)
        for _ in range(600):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(append, server, f"{uid}/x", {"i": 3})
        for _ in range(600):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)
        assert seen == [{"i": 1}, {"i": 2}, {"i": 3}]
        await subs.delete(f"apw-{uid}")
        await subs.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_webhook_receiver_sync_done_and_async_callback(server: ServerProcess,
                                                       framework: str) -> None:
    uid, subs = setup(server)
    wakes: list[Wake] = []
    mode = {"done": True}

    def on_wake(wake: Wake) -> bool:
        wakes.append(wake)
        return mode["done"]

    receiver = WebhookReceiver(on_wake, jwks_url=f"{server.url}/v1/stream/__ds/jwks.json")
    if framework == "starlette":
        host: Any = Starlette(routes=[Mount("/hooks", app=receiver)])
    else:
        host = FastAPI()
        host.mount("/hooks", receiver)
    with ThreadedServer(host) as web:
        hook = f"{web.url}/hooks/"
        # An unsigned or tampered request is refused.
        assert httpx.post(hook, json={"subscription_id": "x"}).status_code == 401
        subs.create(f"wh-{uid}", type="webhook", pattern=f"{uid}/*", webhook_url=hook)
        append(server, f"{uid}/a", {"n": 1}, create=True)
        wait_until(lambda: wakes, what="a verified wake")
        assert wakes[0].subscription_id == f"wh-{uid}"
        wait_until(lambda: acked_at_tail(subs, server, f"wh-{uid}"), what="sync done ack")
        mode["done"] = False  # now answer later, through the callback
        append(server, f"{uid}/a", {"n": 2})
        wait_until(lambda: len(wakes) >= 2, what="second wake")
        wake = wakes[1]
        tail = next(s.tail_offset for s in wake.streams if s.path == f"{uid}/a")
        assert tail is not None
        assert subs.callback(wake, {f"{uid}/a": tail}, done=True) is False
        assert acked_at_tail(subs, server, f"wh-{uid}")
        subs.delete(f"wh-{uid}")


def test_receiver_follows_a_key_rotation(memory_server: ServerProcess) -> None:
    server = memory_server
    uid, subs = setup(server)
    wakes: list[Wake] = []
    receiver = WebhookReceiver(lambda w: wakes.append(w) or True,
                               jwks_url=f"{server.url}/v1/stream/__ds/jwks.json")
    assert receiver.cache is not None
    receiver.cache.min_refetch = 0
    with ThreadedServer(Starlette(routes=[Mount("/h", app=receiver)])) as web:
        subs.create(f"rk-{uid}", type="webhook", streams=[f"{uid}/r"],
                    webhook_url=f"{web.url}/h/")
        append(server, f"{uid}/r", {"n": 1}, create=True)
        wait_until(lambda: wakes, what="first wake")
        wait_until(lambda: acked_at_tail(subs, server, f"rk-{uid}"), what="first ack")
        httpx.post(f"{server.url}/v1/stream/__ds/keys/rotate")
        append(server, f"{uid}/r", {"n": 2})
        wait_until(lambda: len(wakes) >= 2, what="a wake signed with the new key")
    subs.delete(f"rk-{uid}")


def test_docs_examples_run(tmp_path: Any) -> None:
    """docs/subscriptions.md: every example runs as written (on a fresh server)."""
    import re
    import subprocess
    import sys

    from .servers import ROOT, duralog_server, free_port

    doc = (ROOT / "docs/subscriptions.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 5
    server = duralog_server("memory", log_path=tmp_path / "server.log").start()
    try:
        outputs = []
        for block in blocks:
            code = block.replace("http://127.0.0.1:4437", server.url)
            code = code.replace("8000", str(free_port()))
            result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, f"{block}\n{result.stderr}"
            outputs.append(result.stdout)
    finally:
        server.stop()
    assert "('orders/1', 'glob')" in outputs[0] and "('audit/log', 'explicit')" in outputs[0]
    assert outputs[1].splitlines() == ["chat/42 hello", "chat/42 again"]
    assert outputs[2].strip() == "alerts/disk [{'level': 'high'}]"
    assert outputs[3].strip() == "woken for ['signups/ada']"
    assert outputs[4].strip() == "next wake: False"
