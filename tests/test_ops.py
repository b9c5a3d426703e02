"""Operating the server, over real processes: one owner per data directory, startup
errors, clean shutdown on signals, the access log, metrics, readiness, forwarded
headers, and the online backup (issue 8).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from duralog.protocol.sse import parse_events

from .servers import ROOT, ServerProcess, duralog_server, free_port, read_all

pytestmark = pytest.mark.timeout(120)

PREFIX = "/v1/stream/"
ENV = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "duralog", "serve", *args]


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A `duralog serve` expected to refuse to start."""
    return subprocess.run(serve_cmd(*args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def unique() -> str:
    return f"ops-{uuid.uuid4().hex[:10]}"


def metrics(url: str) -> dict[str, float]:
    """The /metrics samples as {'name{labels}': value} (no _created series)."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if "_created" not in key:
                out[key] = float(value)
    return out


# ---------------------------------------------------------------------------
# one owner per data directory


def test_second_server_on_the_same_dir_refuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    owner = duralog_server("sqlite", data_dir=data).start()
    try:
        name = unique()
        httpx.put(owner.url + PREFIX + name, content=b"kept", headers={
            "content-type": "text/plain"})
        second = run_serve("--port", str(free_port()), "--backend", "sqlite",
                           "--data-dir", str(data))
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert str(data) in lines[0]
        assert owner.proc is not None and f"pid {owner.proc.pid}" in lines[0]
        assert "serving" not in second.stderr + second.stdout
        # the owner was not disturbed
        assert read_all(owner.url + PREFIX + name) == b"kept"
    finally:
        owner.stop()


def test_kill_9_of_the_owner_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = duralog_server("sqlite", data_dir=data).start()
    name = unique()
    assert httpx.put(first.url + PREFIX + name, content=b"acked",
                     headers={"content-type": "text/plain"}).status_code == 201
    first.kill()
    # the kernel dropped the lock with the process: a new owner starts at once
    second = duralog_server("sqlite", data_dir=data).start(timeout=10)
    try:
        assert read_all(second.url + PREFIX + name) == b"acked"
    finally:
        second.stop()


def test_two_embedded_stores_on_one_dir(tmp_path: Path) -> None:
    from duralog.store.lock import DataDirInUse
    from duralog.store.sqlite import SQLiteStore

    async def main() -> None:
        a = SQLiteStore(tmp_path / "d")
        b = SQLiteStore(tmp_path / "d")
        await a.start()
        try:
            with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
                await b.start()
        finally:
            await a.stop()
        await b.start()  # released by stop: the next owner may open it
        await b.stop()

    asyncio.run(main())


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "serving" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_startup_errors_are_one_line_naming_the_data_dir(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    _one_line_error(run_serve("--port", "0", "--data-dir", str(a_file)),
                    "--data-dir", str(a_file), "not a directory")

    newer = tmp_path / "newer"
    newer.mkdir()
    con = sqlite3.connect(newer / "duralog.sqlite3")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', '999'), ('instance_tag', 'x')")
    con.commit()
    con.close()
    _one_line_error(run_serve("--port", "0", "--data-dir", str(newer)),
                    "--data-dir", str(newer), "format")

    # An unwritable directory: a read-only mount for root (who may write anywhere
    # else), a directory without write permission for anyone else.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:
        _one_line_error(run_serve("--port", "0", "--data-dir", str(locked / "sub")),
                        "--data-dir", str(locked / "sub"), "Permission denied")
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(locked)], capture_output=True, text=True, timeout=20)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs for the unwritable case: "
                    f"{mounted.stderr.strip()}")
    try:
        _one_line_error(run_serve("--port", "0", "--data-dir", str(locked / "sub")),
                        "--data-dir", str(locked / "sub"), "Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(locked)], capture_output=True, timeout=20)


def test_busy_port_is_one_line_and_no_banner(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve("--port", str(port), "--backend", "sqlite",
                           "--data-dir", str(tmp_path / "d"))
    _one_line_error(result, f"127.0.0.1:{port}")
    # the store it opened was closed again: the directory is free for the next owner
    duralog_server("sqlite", data_dir=tmp_path / "d").start().stop()


def test_port_0_banner_names_the_real_port(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve_cmd("--port", "0", "--backend", "memory"), cwd=ROOT,
                                env=ENV, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        banner = ""
        while time.monotonic() < deadline and "serving" not in banner:
            time.sleep(0.05)
            banner = log.read_text()
        url = banner.split("serving Durable Streams on ", 1)[1].split()[0]
        assert ":0/" not in url
        # the port was bound before the banner named it: it answers at once
        assert httpx.get(url.replace(PREFIX, "/healthz"), timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# ---------------------------------------------------------------------------
# clean shutdown


async def _readers(url: str, name: str, tail: str, n: int
                   ) -> tuple[list[asyncio.Task[httpx.Response]], list[asyncio.Task[str]],
                              httpx.AsyncClient]:
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=httpx.Limits(
        max_connections=2 * n + 10, max_keepalive_connections=0))

    async def poll() -> httpx.Response:
        return await client.get(url + PREFIX + name, params={"offset": tail,
                                                             "live": "long-poll"})

    async def sse() -> str:
        async with client.stream("GET", url + PREFIX + name,
                                 params={"offset": tail, "live": "sse"}) as r:
            assert r.status_code == 200
            return (await r.aread()).decode()

    polls = [asyncio.create_task(poll()) for _ in range(n)]
    sses = [asyncio.create_task(sse()) for _ in range(n)]
    return polls, sses, client


def _wait_for_readers(url: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metrics(url)
        if (m.get('duralog_live_readers{mode="long-poll"}') == n
                and m.get('duralog_live_readers{mode="sse"}') == n):
            return
        time.sleep(0.1)
    raise AssertionError(f"readers did not all connect: {metrics(url)}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_every_live_reader_normally(tmp_path: Path, signum: int) -> None:
    n = 100 if signum == signal.SIGTERM else 10
    log = tmp_path / "server.log"
    server = duralog_server("sqlite", data_dir=tmp_path / "data", log_path=log,
                            extra=["--long-poll-timeout", "60"]).start()
    name = unique()
    put = httpx.put(server.url + PREFIX + name, content=b"abc",
                    headers={"content-type": "text/plain"})
    tail = put.headers["stream-next-offset"]

    async def main() -> tuple[list[httpx.Response], list[str], float]:
        polls, sses, client = await _readers(server.url, name, tail, n)
        try:
            await asyncio.to_thread(_wait_for_readers, server.url, n)
            assert server.proc is not None
            sent = time.monotonic()
            server.proc.send_signal(signum)
            code = await asyncio.to_thread(server.proc.wait, 10)
            elapsed = time.monotonic() - sent
            assert code == 0
            return (list(await asyncio.gather(*polls)), list(await asyncio.gather(*sses)),
                    elapsed)
        finally:
            await client.aclose()

    polls, sses, elapsed = asyncio.run(main())
    assert elapsed < 5.0, f"exit took {elapsed:.2f}s"
    for r in polls:  # 5.7: the normal timeout answer at the tail
        assert r.status_code == 204
        assert r.headers["stream-next-offset"] == tail
        assert r.headers["stream-up-to-date"] == "true"
    for text in sses:  # 5.8: the response ends after a control event
        events = parse_events(text)
        assert events and events[-1][0] == "control", text
        last = json.loads(events[-1][1])
        assert last["streamNextOffset"] == tail and last["upToDate"] is True
    stderr = log.read_text()
    assert "Traceback" not in stderr
    assert "Cancel" not in stderr  # uvicorn never had to cancel a request


def test_in_flight_append_finishes_and_second_signal_exits_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = duralog_server("sqlite", data_dir=data).start()
    name = unique()
    httpx.put(server.url + PREFIX + name, headers={"content-type": "text/plain"})
    assert server.proc is not None
    # An append whose body is still arriving when SIGTERM comes must finish: 204,
    # committed, there after a restart.
    body = b"in-flight append"
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST {PREFIX}{name} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n"
                  f"content-length: {len(body)}\r\n\r\n".encode() + body[:5])
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        s.sendall(body[5:])
        s.settimeout(10)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 204"), answer
    assert server.proc.wait(10) == 0
    again = duralog_server("sqlite", data_dir=data).start()
    try:
        assert read_all(again.url + PREFIX + name) == body
        # A client that never finishes its body holds the graceful wait; a second
        # signal ends the process at once.
        s = socket.create_connection(("127.0.0.1", again.port))
        s.sendall(f"POST {PREFIX}{name} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n"
                  f"content-length: 100\r\n\r\nstuck".encode())
        time.sleep(0.2)
        assert again.proc is not None
        again.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert again.proc.poll() is None  # still waiting for the stuck request
        sent = time.monotonic()
        again.proc.send_signal(signal.SIGINT)
        code = again.proc.wait(5)
        assert time.monotonic() - sent < 1.0
        assert code != 0
        s.close()
    finally:
        again.kill()


# ---------------------------------------------------------------------------
# access log


def _sequence(url: str, name: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        c.put(PREFIX + name, content=b"hello", headers={"content-type": "text/plain",
                                                         "x-request-id": "client-id-1"})
        c.post(PREFIX + name, content=b" world secret-body",
               headers={"content-type": "text/plain", "authorization": "Bearer tok-SECRET"})
        c.get(PREFIX + name, params={"offset": "-1", "token": "tok-SECRET"})
        c.get(PREFIX + name + "-missing")


def _access_records(log: Path, name: str, fmt: str) -> list[dict[str, object]]:
    records = []
    for line in log.read_text().splitlines():
        if fmt == "json":
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("logger") == "duralog.access" and name in rec["path"]:
                records.append(rec)
        elif "duralog.access" in line and name in line:
            records.append({"line": line})
    return records


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "server.log"
    server = duralog_server("memory", log_path=log, extra=["--log-format", fmt]).start()
    name = unique()
    try:
        r = httpx.get(server.url + "/healthz", headers={"x-request-id": "bad id!"})
        assert r.headers["x-request-id"] != "bad id!"  # not a plain token: replaced
        _sequence(server.url, name)
    finally:
        server.stop()
    text = log.read_text()
    assert "tok-SECRET" not in text and "secret-body" not in text
    records = _access_records(log, name, fmt)
    assert len(records) == 4, text
    if fmt == "json":
        # every line on stderr is one JSON object: the banner and the log lines too
        lines = [line for line in text.splitlines() if line.strip()]
        objects = [json.loads(line) for line in lines]  # raises on a line that is not JSON
        assert any("serving Durable Streams" in o["message"] for o in objects)
        assert any(o["logger"] == "duralog" and "shutting down" in o["message"]
                   for o in objects)
        assert [(r["method"], r["status"]) for r in records] == [
            ("PUT", 201), ("POST", 204), ("GET", 200), ("GET", 404)]
        assert records[0]["request_id"] == "client-id-1"
        assert records[2]["bytes"] == len(b"hello world secret-body")
        assert records[2]["path"] == f"{PREFIX}{name}?offset=-1&token=***"
        for r in records:
            assert r["duration_ms"] >= 0 and r["client"] == "127.0.0.1"
            assert r["level"] == "info"
        assert len({r["request_id"] for r in records}) == 4
    else:
        lines = [str(r["line"]) for r in records]
        assert f'"PUT {PREFIX}{name}" 201 0B' in lines[0] and "id=client-id-1" in lines[0]
        assert f'"POST {PREFIX}{name}" 204 0B' in lines[1]
        assert f'"GET {PREFIX}{name}?offset=-1&token=***" 200 23B' in lines[2]
        assert f'"GET {PREFIX}{name}-missing" 404' in lines[3]
        assert all("ms id=" in line for line in lines)


def test_no_access_log_and_debug_reasons(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = duralog_server("memory", log_path=log,
                            extra=["--no-access-log", "--log-level", "debug"]).start()
    name = unique()
    try:
        r = httpx.get(server.url + PREFIX + name)
        assert r.status_code == 404
    finally:
        server.stop()
    text = log.read_text()
    assert "duralog.access" not in text
    # a refused request is logged at debug with its reason
    assert f"refused GET {PREFIX}{name}: 404 stream not found" in text


# ---------------------------------------------------------------------------
# health and metrics


def test_metrics_move_by_exactly_the_workload(tmp_path: Path) -> None:
    server = duralog_server("sqlite", data_dir=tmp_path / "data").start()
    try:
        url = server.url
        before = metrics(url)
        names = [unique() for _ in range(3)]
        with httpx.Client(base_url=url, timeout=10) as c:
            for name in names:
                assert c.put(PREFIX + name, headers={"content-type": "text/plain"}
                             ).status_code == 201
            appended = 0
            for i in range(5):
                data = b"x" * (10 * (i + 1))
                appended += len(data)
                assert c.post(PREFIX + names[i % 3], content=data,
                              headers={"content-type": "text/plain"}).status_code == 204
            read = sum(len(c.get(PREFIX + n, params={"offset": "-1"}).content) for n in names)
            assert c.get(PREFIX + "no-such-" + names[0]).status_code == 404
        after = metrics(url)
        healthz = httpx.get(url + "/healthz")
        assert healthz.status_code == 200
    finally:
        server.stop()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("duralog_appends_total") == 5
    assert delta("duralog_append_bytes_total") == appended == 150
    assert delta("duralog_read_bytes_total") == read == 150
    assert delta("duralog_streams") == 3
    assert delta('duralog_http_requests_total{method="PUT",status="201"}') == 3
    assert delta('duralog_http_requests_total{method="POST",status="204"}') == 5
    # three reads, and the first scrape (counted once its answer was sent)
    assert delta('duralog_http_requests_total{method="GET",status="200"}') == 3 + 1
    assert delta('duralog_http_requests_total{method="GET",status="404"}') == 1
    assert delta("duralog_http_request_duration_seconds_count") == 3 + 5 + 4 + 1
    # 3 creates (each with its registry event in the same commit) and 5 appends were
    # each a commit of their own (requests one at a time); last-access flushes may
    # add commits of their own.
    assert delta("duralog_store_commit_seconds_count") >= 8
    assert delta("duralog_store_commit_batch_size_sum") >= 8
    assert delta("duralog_store_errors_total") == 0


def test_no_metrics_flag(tmp_path: Path) -> None:
    server = duralog_server("memory", extra=["--no-metrics"]).start()
    try:
        assert httpx.get(server.url + "/metrics").status_code == 404
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_health_paths_are_not_streams(memory_server: ServerProcess) -> None:
    url = memory_server.url
    # a stream may be called healthz or metrics: it lives under the stream root
    for name in ("healthz", "readyz", "metrics"):
        r = httpx.put(url + PREFIX + name + "-" + unique(), content=b"x",
                      headers={"content-type": "text/plain"})
        assert r.status_code == 201
    assert httpx.post(url + "/healthz", content=b"x").status_code == 405
    assert httpx.get(url + "/readyz").text == "ready\n"


def test_readyz_when_the_database_is_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = duralog_server("sqlite", data_dir=data).start()
    try:
        assert httpx.get(server.url + "/readyz").status_code == 200
        (data / "duralog.sqlite3").rename(data / "moved-away")
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503
        assert r.text.startswith("not ready: database") and "gone" in r.text
        assert httpx.get(server.url + "/healthz").status_code == 200
        (data / "moved-away").rename(data / "duralog.sqlite3")
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_readyz_on_a_full_disk(small_tmpfs: Path, tmp_path: Path) -> None:
    data = small_tmpfs / "data"
    log = tmp_path / "server.log"
    server = duralog_server("sqlite", data_dir=data, log_path=log).start()
    filler = small_tmpfs / "filler"
    try:
        url = server.url
        name = unique()
        httpx.put(url + PREFIX + name, content=b"before", headers={"content-type": "text/plain"})
        assert httpx.get(url + "/readyz").status_code == 200
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503
        assert r.text.startswith("not ready: disk full") and str(data) in r.text
        assert httpx.get(url + "/healthz").status_code == 200
        before = metrics(url).get("duralog_store_errors_total", 0.0)
        big = httpx.post(url + PREFIX + name, content=b"y" * (1 << 20),
                         headers={"content-type": "text/plain"}, timeout=30)
        assert big.status_code == 507, big.text  # nothing fits: refused, nothing written
        assert metrics(url)["duralog_store_errors_total"] == before + 1
        # the storage error is logged at error level, with its reason
        assert f"ERROR duralog: POST {PREFIX}{name}: 507 insufficient storage" in log.read_text()
        filler.unlink()
        assert httpx.get(url + "/readyz").status_code == 200
        ok = httpx.post(url + PREFIX + name, content=b" after",
                        headers={"content-type": "text/plain"})
        assert ok.status_code == 204
        assert read_all(url + PREFIX + name) == b"before after"
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# forwarded headers


def test_forwarded_headers_only_from_allowed_addresses(tmp_path: Path) -> None:
    trusted = duralog_server("memory", extra=["--forwarded-allow-ips", "127.0.0.1"]).start()
    other = duralog_server("memory", extra=["--forwarded-allow-ips", "10.1.2.3, 192.168.0.0/16"]
                           ).start()
    try:
        xf = {"x-forwarded-proto": "https", "x-forwarded-host": "streams.example.com",
              "content-type": "text/plain"}
        name = unique()
        r = httpx.put(trusted.url + PREFIX + name, headers=xf)
        assert r.headers["location"] == f"https://streams.example.com{PREFIX}{name}"
        name = unique()
        r = httpx.put(trusted.url + PREFIX + name, headers={
            "forwarded": 'for=1.2.3.4;proto=https;host="ex.org:8443", for=5.6.7.8',
            "content-type": "text/plain"})
        assert r.headers["location"] == f"https://ex.org:8443{PREFIX}{name}"
        # from an address not in the list the headers are ignored
        name = unique()
        r = httpx.put(other.url + PREFIX + name, headers=xf)
        assert r.headers["location"] == f"{other.url}{PREFIX}{name}"
    finally:
        trusted.stop()
        other.stop()
    # the environment variable works too; a bad entry refuses to start
    env_server = ServerProcess(serve_cmd("--port", str(port := free_port()),
                                         "--backend", "memory"), port,
                               env={"DURALOG_FORWARDED_ALLOW_IPS": "*"}).start()
    try:
        name = unique()
        r = httpx.put(env_server.url + PREFIX + name, headers=xf)
        assert r.headers["location"] == f"https://streams.example.com{PREFIX}{name}"
    finally:
        env_server.stop()
    bad = run_serve("--port", "0", "--backend", "memory", "--forwarded-allow-ips", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr


# ---------------------------------------------------------------------------
# backup


def test_online_backup_restores_the_same_bytes(tmp_path: Path) -> None:
    live = duralog_server("sqlite", data_dir=tmp_path / "live").start()
    stop = threading.Event()
    busy = unique()
    record = 16
    try:
        url = live.url
        streams = {unique(): ("text/plain", b"hello backup"),
                   unique(): ("application/json", b'[{"a":1},{"b":[2,3]}]'),
                   unique(): ("application/octet-stream", bytes(range(256)) * 40)}
        for name, (ctype, body) in streams.items():
            assert httpx.put(url + PREFIX + name, content=body,
                             headers={"content-type": ctype}).status_code == 201
        httpx.put(url + PREFIX + busy, headers={"content-type": "text/plain"})

        def writer() -> None:  # appends go on during the backup
            with httpx.Client(timeout=10) as c:
                i = 0
                while not stop.is_set():
                    c.post(url + PREFIX + busy, content=f"{i:015d}\n".encode(),
                           headers={"content-type": "text/plain"})
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.3)
        done = subprocess.run([sys.executable, "-m", "duralog", "backup", "--data-dir",
                               str(tmp_path / "live"), str(tmp_path / "copy")], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "backed up" in done.stdout
        time.sleep(0.2)
        stop.set()
        t.join(10)
        originals = {name: read_all(url + PREFIX + name) for name in streams}
        busy_live = read_all(url + PREFIX + busy)
        again = subprocess.run([sys.executable, "-m", "duralog", "backup", "--data-dir",
                                str(tmp_path / "live"), str(tmp_path / "copy")], cwd=ROOT,
                               env=ENV, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already holds" in again.stderr
    finally:
        stop.set()
        live.stop()
    restored = duralog_server("sqlite", data_dir=tmp_path / "copy").start()
    try:
        for name, (ctype, _body) in streams.items():
            assert originals[name] == read_all(restored.url + PREFIX + name)
            r = httpx.get(restored.url + PREFIX + name, params={"offset": "-1"})
            assert r.headers["content-type"] == ctype
        # the busy stream: a prefix of what the live server holds, whole appends only
        busy_copy = read_all(restored.url + PREFIX + busy)
        assert busy_live.startswith(busy_copy)
        assert len(busy_copy) % record == 0
        assert 0 < len(busy_copy) < len(busy_live)
    finally:
        restored.stop()
