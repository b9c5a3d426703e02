"""Two duralog nodes over one real PostgreSQL (tests/pg.py), under failures.

- kill -9 of one node under write load, many rounds: every acknowledged append is
  present exactly once and untorn (the checker of tests/test_crash.py), and the
  other node answers every request throughout;
- a PostgreSQL fast restart (``pg_ctl restart -m fast``: SIGINT to the postmaster)
  under write load and with live readers: appends that could not commit answer 503
  and every 2xx append is present afterwards, the nodes reconnect by themselves,
  and long-poll and SSE readers on the other node resume and get every append;

Cross-node delivery itself is tests/test_postgres_nodes.py's; its latency is a
benchmark (``python -m bench --only crossnode``).

CI runs a few rounds; DURALOG_PG_CRASH_KILLS and DURALOG_PG_RESTARTS run more.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .pg import PgServer
from .pg_cluster import pg_node as node
from .pg_readers import LiveReader
from .servers import ROOT, read_all
from .test_crash import Figures, check, read_journal

KILLS = max(3, int(os.environ.get("DURALOG_PG_CRASH_KILLS", "6")))
RESTARTS = max(1, int(os.environ.get("DURALOG_PG_RESTARTS", "2")))


class Prober(threading.Thread):
    """Keeps using one node: a HEAD of the crash stream, an append to a stream of its
    own and a catch-up read of it, every 50 ms; every failure is kept."""

    def __init__(self, base: str, watched: str) -> None:
        super().__init__(daemon=True)
        self.base, self.watched = base, watched
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        own = f"{self.base}/v1/stream/probe-{random.randrange(1 << 30)}"
        with httpx.Client(timeout=10) as c:
            c.put(own, headers={"content-type": "text/plain"})
            n = 0
            while not self.stop.is_set():
                try:
                    h = c.head(self.watched)
                    a = c.post(own, content=b"p%d\n" % n, headers={"content-type": "text/plain"})
                    r = c.get(own, params={"offset": "-1"})
                    if h.status_code != 200 or a.status_code not in (200, 204) or \
                            r.status_code != 200 or not r.content.endswith(b"p%d\n" % n):
                        self.failures.append(f"HEAD {h.status_code} POST {a.status_code} "
                                             f"GET {r.status_code}")
                    else:
                        self.ok += 1
                except httpx.HTTPError as err:
                    self.failures.append(f"{type(err).__name__}: {err}")
                n += 1
                time.sleep(0.05)


def _writer(url: str, stream: str, journal: Path, stop: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.crash_writer", url, stream,
                             str(journal), str(stop)], cwd=ROOT)


def _end(writer: subprocess.Popen[bytes], stop: Path) -> None:
    stop.touch()
    try:
        writer.wait(60)
    finally:
        if writer.poll() is None:
            writer.kill()


def _summary(label: str, fig: Figures) -> str:
    return (f"{label}: {fig.checks} checks, {fig.acked_checked} acknowledged appends "
            f"checked, {fig.losses} lost, {fig.duplicates} duplicated, {fig.misplaced} at a "
            f"wrong offset, {fig.torn} torn, {fig.out_of_order} out of order; "
            f"{fig.unknown_outcomes} appends with unknown outcome ({fig.unknown_present} "
            f"committed), {fig.producer_retries_deduplicated} producer retries answered as "
            f"duplicates")


@pytest.mark.timeout(300 + 10 * KILLS)
def test_kill9_of_one_node_loses_nothing_and_the_other_keeps_serving(
        pg_db: str, tmp_path: Path) -> None:
    rng = random.Random()
    a = node(pg_db, log_path=tmp_path / "a.log")
    b = node(pg_db, log_path=tmp_path / "b.log").start()
    a.start()
    stream = "crash"
    on_b = f"{b.url}/v1/stream/{stream}"
    assert httpx.put(on_b, headers={"content-type": "text/plain"}).status_code == 201
    journal, stop = tmp_path / "journal.jsonl", tmp_path / "stop"
    writer = _writer(a.url, stream, journal, stop)  # writes through the node that dies
    prober = Prober(b.url, on_b)
    prober.start()
    fig = Figures()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.0))
            a.kill()
            fig.kills += 1
            acked = read_journal(journal)
            # While A is dead, B has everything A acknowledged.
            check(read_all(on_b), acked, fig)
            time.sleep(rng.uniform(0.0, 0.3))
            a.start()
        time.sleep(0.5)
    finally:
        _end(writer, stop)
        prober.stop.set()
        prober.join(15)
    try:
        final_b = read_all(on_b)
        check(final_b, read_journal(journal), fig, final=True)
        assert read_all(f"{a.url}/v1/stream/{stream}") == final_b
    finally:
        a.stop()
        b.stop()
    print(f"\n{_summary(f'postgres, kill -9 of node A x{fig.kills}', fig)}; node B answered "
          f"{prober.ok} probes with {len(prober.failures)} failures")
    assert fig.problems == []
    assert fig.acked_checked > 50  # the writer really wrote between kills
    assert fig.losses == fig.duplicates == fig.misplaced == fig.torn == fig.out_of_order == 0
    assert prober.failures == []
    assert prober.ok > 10


@pytest.mark.timeout(600)
def test_postgres_fast_restart_under_load(tmp_path: Path) -> None:
    """Its own PostgreSQL, since the test restarts it."""
    with PgServer() as pg:
        url = pg.create_database("restart")
        a = node(url, log_path=tmp_path / "a.log", extra=["--long-poll-timeout", "5"]).start()
        b = node(url, log_path=tmp_path / "b.log", extra=["--long-poll-timeout", "5"]).start()
        stream = "restart"
        on_a, on_b = f"{a.url}/v1/stream/{stream}", f"{b.url}/v1/stream/{stream}"
        try:
            r = httpx.put(on_a, headers={"content-type": "text/plain"})
            assert r.status_code == 201
            start = r.headers["stream-next-offset"]
            httpx.put(f"{a.url}/v1/stream/ping", headers={"content-type": "text/plain"})
            readers = [LiveReader(on_b, start, "long-poll"), LiveReader(on_b, start, "sse")]
            for rd in readers:
                rd.start()
            journal, stop = tmp_path / "journal.jsonl", tmp_path / "stop"
            writer = _writer(a.url, stream, journal, stop)
            acked_after: list[int] = []
            try:
                for _ in range(RESTARTS):
                    time.sleep(1.5)
                    pg.restart("fast")  # pg_ctl restart -m fast: SIGINT, then start again
                    n = len(read_journal(journal))
                    # The nodes were not restarted: appends through both succeed again.
                    _until_ok(f"{a.url}/v1/stream/ping", 60)
                    _until_ok(f"{b.url}/v1/stream/ping", 60)
                    time.sleep(1.0)
                    acked_after.append(sum(
                        1 for e in read_journal(journal)[n:] if isinstance(e["st"], int)
                        and e["st"] < 300))
            finally:
                _end(writer, stop)
            final = read_all(on_a)
            assert read_all(on_b) == final
            entries = read_journal(journal)
            fig = Figures()
            check(final, entries, fig, final=True)
            refusals = sorted({e.get("why") for e in entries if e["st"] == "unknown"})
            for rd in readers:
                rd.wait_for(len(final), 60)
                rd.stop.set()
            print(f"\n{_summary(f'postgres fast restart x{RESTARTS}', fig)}; plain appends "
                  f"without an acknowledgement: {refusals}; acknowledged after each restart: "
                  f"{acked_after}; reader errors (long-poll, SSE): "
                  f"{[len(rd.errors) for rd in readers]}")
            assert fig.problems == []
            assert fig.losses == fig.duplicates == fig.misplaced == fig.torn == 0
            # A request that could not commit says so with 503, never a 500 or a hang
            # turned into an acknowledgement (connection errors would be "ConnectError").
            assert set(refusals) <= {"503"}, refusals
            assert all(n > 0 for n in acked_after)
            for rd in readers:
                assert bytes(rd.data) == final, (rd.mode, len(rd.data), len(final),
                                                 rd.errors[:5])
            assert a.proc is not None and a.proc.poll() is None
            assert b.proc is not None and b.proc.poll() is None
        finally:
            a.stop()
            b.stop()


def _until_ok(stream_url: str, timeout: float) -> None:
    """Appends to ``stream_url`` until an append is acknowledged (the node reconnected)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(stream_url, content=b"ping\n", headers={"content-type": "text/plain"},
                           timeout=10)
            if r.status_code in (200, 204):
                return
            last = f"HTTP {r.status_code} {r.text.strip()}"
        except httpx.HTTPError as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.1)
    raise AssertionError(f"{stream_url}: no acknowledged append within {timeout}s ({last})")
