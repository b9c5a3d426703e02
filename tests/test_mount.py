"""DuralogApp mounted under a prefix inside a FastAPI and a Starlette application.

Each host app is served by a real uvicorn server in a thread on a free port.
Streams then live under /streams/v1/stream/...: create, append, catch-up,
long-poll and SSE must work there, Location and Stream-Forked-From must carry
the prefix, and the host app's own routes must keep working.

Starlette runs no lifespan for mounted apps, so the Starlette case relies on
DuralogApp starting itself on its first request; it uses the SQLite backend,
which cannot answer anything unless it was started. The FastAPI case shows the
explicit wiring through the host's lifespan (the snippet for the README).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from duralog.protocol.sse import parse_events
from duralog.server import Config, DuralogApp

from .servers import ThreadedServer

pytestmark = pytest.mark.timeout(120)

MOUNT = "/streams"
STREAMS = MOUNT + "/v1/stream/"
LONG_POLL = 2.0


# ---------------------------------------------------------------------------
# The two host applications


def fastapi_host(data_dir: Path) -> tuple[FastAPI, DuralogApp]:
    # -- the README snippet -------------------------------------------------
    streams = DuralogApp(Config(backend="sqlite", data_dir=str(data_dir),
                                long_poll_timeout=LONG_POLL))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await streams.startup()  # Starlette does not run a mounted app's lifespan
        yield
        await streams.shutdown()

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    app.mount("/streams", streams)
    # ------------------------------------------------------------------------
    return app, streams


def starlette_host(data_dir: Path) -> tuple[Starlette, DuralogApp]:
    streams = DuralogApp(Config(backend="sqlite", data_dir=str(data_dir),
                                long_poll_timeout=LONG_POLL))

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "starlette"})

    # no lifespan wiring at all: DuralogApp must start itself on its first request
    app = Starlette(routes=[Route("/hello", hello), Mount("/streams", app=streams)])
    return app, streams


@pytest.fixture(scope="module", params=["fastapi", "starlette"])
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[str, str, DuralogApp]]:
    data_dir = tmp_path_factory.mktemp(f"mount-{request.param}")
    build = fastapi_host if request.param == "fastapi" else starlette_host
    app, streams = build(data_dir)
    with ThreadedServer(app) as srv:
        yield request.param, srv.url, streams


@pytest.fixture(scope="module")
def client(host: tuple[str, str, DuralogApp]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host[1], timeout=httpx.Timeout(10.0)) as c:
        yield c


def unique() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------


def test_host_routes_still_work(host: tuple[str, str, DuralogApp], client: httpx.Client) -> None:
    r = client.get("/hello")
    assert r.status_code == 200
    assert r.json() == {"hello": "world" if host[0] == "fastapi" else "starlette"}
    assert client.get("/nothing-here").status_code == 404
    # the stream API is not reachable without the prefix
    assert client.put("/v1/stream/" + unique(), content=b"x").status_code == 404


def test_create_append_read_under_prefix(host: tuple[str, str, DuralogApp],
                                         client: httpx.Client) -> None:
    name = unique()
    r = client.put(STREAMS + name, headers={"content-type": "text/plain"}, content=b"hello ")
    assert r.status_code == 201, r.text
    # 5.1: Location is the URL the client used, prefix included
    assert r.headers["location"] == f"{host[1]}{STREAMS}{name}"
    r = client.post(STREAMS + name, headers={"content-type": "text/plain"}, content=b"world")
    assert r.status_code == 204
    r = client.get(STREAMS + name, params={"offset": "-1"})
    assert r.status_code == 200
    assert r.content == b"hello world"
    assert r.headers["stream-up-to-date"] == "true"
    head = client.head(STREAMS + name)
    assert head.headers["stream-next-offset"] == r.headers["stream-next-offset"]
    # nested names keep their slashes, and the prefix is not part of the name
    nested = f"{unique()}/a/b"
    r = client.put(STREAMS + nested, headers={"content-type": "application/json"},
                   content=b'[{"x":1}]')
    assert r.status_code == 201
    assert r.headers["location"] == f"{host[1]}{STREAMS}{nested}"
    assert client.get(STREAMS + nested, params={"offset": "-1"}).json() == [{"x": 1}]
    assert client.delete(STREAMS + name).status_code == 204
    assert client.head(STREAMS + name).status_code == 404


def test_registry_names_are_relative_to_the_stream_root(client: httpx.Client) -> None:
    name = unique()
    client.put(STREAMS + name, headers={"content-type": "text/plain"})
    events = client.get(STREAMS + "__registry__", params={"offset": "-1"}).json()
    keys = [e["key"] for e in events]
    assert name in keys
    assert not any(k.startswith(("/", "streams")) for k in keys)


def test_fork_under_prefix(host: tuple[str, str, DuralogApp], client: httpx.Client) -> None:
    src, fork = unique(), unique()
    put = client.put(STREAMS + src, headers={"content-type": "text/plain"}, content=b"abc")
    offset = put.headers["stream-next-offset"]
    client.post(STREAMS + src, headers={"content-type": "text/plain"}, content=b"def")
    # 4.2: Stream-Forked-From is the source URL's path, and here that path has the prefix
    r = client.put(STREAMS + fork, headers={"stream-forked-from": STREAMS + src,
                                            "stream-fork-offset": offset})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{host[1]}{STREAMS}{fork}"
    assert r.headers["content-type"] == "text/plain"
    client.post(STREAMS + fork, headers={"content-type": "text/plain"}, content=b"XYZ")
    assert client.get(STREAMS + fork, params={"offset": "-1"}).content == b"abcXYZ"
    assert client.get(STREAMS + src, params={"offset": "-1"}).content == b"abcdef"
    # an idempotent repeat of the same fork request
    again = client.put(STREAMS + fork, headers={"stream-forked-from": STREAMS + src,
                                                "stream-fork-offset": offset})
    assert again.status_code == 200
    missing = client.put(STREAMS + unique(),
                         headers={"stream-forked-from": STREAMS + unique()})
    assert missing.status_code == 404


def test_long_poll_under_prefix(client: httpx.Client) -> None:
    name = unique()
    tail = client.put(STREAMS + name, headers={"content-type": "text/plain"}).headers[
        "stream-next-offset"]
    result: dict[str, httpx.Response] = {}

    def poll() -> None:
        result["r"] = client.get(STREAMS + name, params={"offset": tail, "live": "long-poll"})

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    client.post(STREAMS + name, headers={"content-type": "text/plain"}, content=b"woke")
    poller.join(15)
    r = result["r"]
    # the append woke the poll (a timeout would be a 204 with no body)
    assert r.status_code == 200
    assert r.content == b"woke"
    assert r.headers["stream-cursor"].isdigit()
    # and at the new tail, nothing arrives: 204 after the configured timeout
    timeout = client.get(STREAMS + name, params={"offset": r.headers["stream-next-offset"],
                                                 "live": "long-poll"})
    assert timeout.status_code == 204
    assert timeout.headers["stream-up-to-date"] == "true"


def test_sse_under_prefix(client: httpx.Client) -> None:
    name = unique()
    client.put(STREAMS + name, headers={"content-type": "application/json"},
               content=b'[{"n":1},{"n":2}]')

    def close_later() -> None:
        time.sleep(0.3)
        client.post(STREAMS + name, headers={"content-type": "application/json",
                                             "stream-closed": "true"}, content=b'{"n":3}')

    closer = threading.Thread(target=close_later)
    with client.stream("GET", STREAMS + name, params={"offset": "-1", "live": "sse"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        closer.start()
        text = r.read().decode()  # the server ends the response after streamClosed
    closer.join()
    events = parse_events(text)
    data = [m for name_, d in events if name_ == "data" for m in json.loads(d)]
    assert data == [{"n": 1}, {"n": 2}, {"n": 3}]
    last = json.loads([d for n, d in events if n == "control"][-1])
    assert last["streamClosed"] is True


def test_security_headers_and_errors_under_prefix(client: httpx.Client) -> None:
    for r in (client.get(STREAMS + unique()),
              client.get(MOUNT + "/elsewhere"),
              client.put(STREAMS + "a%2Fb", content=b"x")):
        assert 400 <= r.status_code < 500
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.text.strip()


def test_lazy_start_without_lifespan(tmp_path: Path) -> None:
    """A Starlette host never sends lifespan events to a mount; the first request starts it."""
    app, streams = starlette_host(tmp_path / "data")
    with ThreadedServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10.0) as c:
        assert c.get("/hello").status_code == 200
        # uvicorn ran the host's lifespan, yet the mount was not started by it
        assert not streams._started
        name = unique()
        # several first requests at once: the app must start exactly once
        results: list[int] = []

        def create(i: int) -> None:
            r = c.put(f"{STREAMS}{name}-{i}", headers={"content-type": "text/plain"},
                      content=str(i).encode())
            results.append(r.status_code)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert results == [201] * 5
        for i in range(5):
            assert c.get(f"{STREAMS}{name}-{i}", params={"offset": "-1"}).content == \
                str(i).encode()
        assert streams._started
    # the data went to the durable store the mount started by itself
    assert any((tmp_path / "data").iterdir())


def test_health_and_metrics_under_prefix(client: httpx.Client) -> None:
    assert client.get(MOUNT + "/healthz").text == "ok\n"
    assert client.get(MOUNT + "/readyz").status_code == 200
    client.put(STREAMS + unique(), headers={"content-type": "text/plain"})
    metrics = client.get(MOUNT + "/metrics")
    assert metrics.status_code == 200
    assert 'duralog_http_requests_total{method="PUT",status="201"}' in metrics.text
    # the host's own namespace is untouched
    assert client.get("/healthz").status_code == 404
