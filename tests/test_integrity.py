"""Detected corruption and `duralog check`, on real servers and real damaged files.

Each test damages a data directory the way disks and people do (a flipped bit
in a record, a zero-length file, a file of zeros, a garbage page, an
unparsable row, a truncated WAL) and checks the exact documented behaviour
(docs/storage.md, "What is detected"): damaged bytes are never served, the
answer or the startup error names the file, stream, offset or row, and
`duralog check` finds the fault; `--repair` fixes what it claims to.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from duralog.store.sqlite import DB_NAME
from duralog.store.sqlite.schema import record_checksum

from .servers import ROOT, ServerProcess, duralog_server, read_all

TEXT = {"content-type": "text/plain"}
PAGE = 4096


def server_on(data_dir: Path, tmp_path: Path) -> ServerProcess:
    return duralog_server("sqlite", data_dir=data_dir,
                          log_path=tmp_path / "server.log").start()


def run_check(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "duralog", "check", "--data-dir",
                           str(data_dir), *extra], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def fill(data_dir: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    """Two streams: "victim" holds a recognisable 64 KiB, "bystander" some text."""
    marker = b"MARKER" + random.randbytes(8).hex().encode()
    victim = (marker + b"." * 1000) * 64
    server = server_on(data_dir, tmp_path)
    try:
        base = server.url + "/v1/stream/"
        assert httpx.put(base + "victim", content=victim, headers=TEXT).status_code == 201
        assert httpx.put(base + "bystander", content=b"fine", headers=TEXT).status_code == 201
    finally:
        server.stop()  # a clean stop checkpoints the WAL into the main file
    return marker, victim


def db(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "server.log").read_text(errors="replace")


def test_flipped_bit_in_a_record_is_never_served(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    marker, victim = fill(data_dir, tmp_path)
    raw = bytearray(db(data_dir).read_bytes())
    at = raw.index(marker, raw.index(marker) + 1) + 8  # inside the record's bytes
    raw[at] ^= 0x04
    db(data_dir).write_bytes(bytes(raw))

    server = server_on(data_dir, tmp_path)
    try:
        base = server.url + "/v1/stream/"
        r = httpx.get(base + "victim", params={"offset": "-1"})
        assert r.status_code == 500
        assert "victim" in r.text and "0000000000000000_0000000000000000" in r.text
        assert "checksum" in r.text and "\n" not in r.text.strip()
        assert victim[:100] not in r.content
        assert read_all(base + "bystander") == b"fine"  # the rest keeps working
        assert "failed its checksum" in log_text(tmp_path)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'duralog_store_integrity_errors_total{kind="checksum"} 1.0' in metrics
    finally:
        server.stop()
    out = run_check(data_dir)
    assert out.returncode == 1
    assert "checksum: stream 'victim'" in out.stdout
    # A failed checksum cannot be repaired without inventing bytes; --repair says so.
    out = run_check(data_dir, "--repair")
    assert out.returncode == 1 and "NOT repairable" in out.stdout


def test_zero_length_file_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fill(data_dir, tmp_path)
    db(data_dir).write_bytes(b"")
    with pytest.raises(RuntimeError):
        server_on(data_dir, tmp_path)
    text = log_text(tmp_path)
    assert str(db(data_dir)) in text and "is empty (0 bytes)" in text
    assert db(data_dir).stat().st_size == 0  # left as it was for the operator
    out = run_check(data_dir)
    assert out.returncode == 1 and "is empty" in out.stdout


def test_new_database_is_never_zero_length(tmp_path: Path) -> None:
    """A fresh directory starts (the new file is complete before it gets its name)."""
    data_dir = tmp_path / "data"
    server = server_on(data_dir, tmp_path)
    server.stop()
    assert db(data_dir).stat().st_size > 0
    assert run_check(data_dir).returncode == 0


def test_file_of_zeros_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fill(data_dir, tmp_path)
    size = db(data_dir).stat().st_size
    db(data_dir).write_bytes(bytes(size))
    with pytest.raises(RuntimeError):
        server_on(data_dir, tmp_path)
    text = log_text(tmp_path)
    assert str(db(data_dir)) in text and "not a database" in text
    out = run_check(data_dir)
    assert out.returncode == 1 and "cannot be opened" in out.stdout


def test_garbage_page_answers_500_and_check_finds_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    marker, victim = fill(data_dir, tmp_path)
    raw = bytearray(db(data_dir).read_bytes())
    # A page in the middle of the record (an overflow page only "victim" uses).
    page = (raw.index(marker) + 32 * 1022) // PAGE
    assert raw[page * PAGE:(page + 1) * PAGE].count(marker) >= 3
    raw[page * PAGE:(page + 1) * PAGE] = random.randbytes(PAGE)
    db(data_dir).write_bytes(bytes(raw))

    server = server_on(data_dir, tmp_path)
    try:
        base = server.url + "/v1/stream/"
        r = httpx.get(base + "victim", params={"offset": "-1"})
        assert r.status_code == 500, r.status_code
        assert "victim" in r.text and "\n" not in r.text.strip()
        assert victim[:100] not in r.content
        # records is a WITHOUT ROWID b-tree: a seek compares whole keys, so a read of
        # a neighbouring stream may touch the damaged page too. Either way it gets
        # its own bytes or a 500 naming it, never other bytes.
        r = httpx.get(base + "bystander", params={"offset": "-1"})
        assert (r.status_code, r.content) == (200, b"fine") or (
            r.status_code == 500 and "bystander" in r.text), (r.status_code, r.text)
        assert httpx.head(base + "bystander").status_code == 200
    finally:
        server.stop()
    out = run_check(data_dir)
    assert out.returncode == 1
    assert "integrity:" in out.stdout or "checksum:" in out.stdout or "records:" in out.stdout


def test_unparsable_row_stops_startup_naming_file_and_row(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fill(data_dir, tmp_path)
    with closing(sqlite3.connect(db(data_dir))) as con:
        (stream_id,) = con.execute("SELECT id FROM streams WHERE path='victim'").fetchone()
        con.execute("UPDATE streams SET tail = 'many' WHERE id = ?", (stream_id,))
        con.commit()
    with pytest.raises(RuntimeError):
        server_on(data_dir, tmp_path)
    text = log_text(tmp_path)
    assert f"{db(data_dir)}: table streams, row id={stream_id}: cannot parse" in text
    out = run_check(data_dir)
    assert out.returncode == 1 and f"row id={stream_id}: cannot parse" in out.stdout


def test_truncated_wal_loses_only_its_transactions(tmp_path: Path) -> None:
    """A torn WAL tail loses the transactions in it; everything before stays whole."""
    data_dir = tmp_path / "data"
    server = server_on(data_dir, tmp_path)
    url = server.url + "/v1/stream/log"
    acked: list[bytes] = []
    try:
        assert httpx.put(url, headers=TEXT).status_code == 201
        with httpx.Client(timeout=10) as client:
            for i in range(200):
                line = f"line {i:05d} ".encode() + b"#" * 50 + b"\n"
                assert client.post(url, content=line, headers=TEXT).status_code == 204
                acked.append(line)
    finally:
        server.kill()  # no checkpoint: the appends live in the WAL
    wal = data_dir / (DB_NAME + "-wal")
    size = wal.stat().st_size
    assert size > 100 * PAGE
    with open(wal, "r+b") as f:
        f.truncate(size - size // 3)
    server = server_on(data_dir, tmp_path)
    try:
        got = read_all(server.url + "/v1/stream/log")
    finally:
        server.stop()
    # A prefix of what was acknowledged, whole appends only, nothing else.
    assert got == b"".join(acked[:got.count(b"\n")])
    assert 0 < got.count(b"\n") < len(acked)
    assert run_check(data_dir).returncode == 0


def test_check_repairs_what_it_claims(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fill(data_dir, tmp_path)
    server = server_on(data_dir, tmp_path)
    try:
        base = server.url + "/v1/stream/"
        assert httpx.put(base + "src", content=b"abc", headers=TEXT).status_code == 201
        assert httpx.put(base + "fork", headers={"stream-forked-from": "/v1/stream/src"}
                         ).status_code == 201
        r = httpx.post(base + "bystander", content=b"!", headers={
            **TEXT, "producer-id": "p", "producer-epoch": "0", "producer-seq": "0"})
        assert r.status_code == 200
    finally:
        server.stop()
    assert run_check(data_dir).returncode == 0
    with closing(sqlite3.connect(db(data_dir))) as con:
        (victim,) = con.execute("SELECT id FROM streams WHERE path='victim'").fetchone()
        (bystander,) = con.execute("SELECT id FROM streams WHERE path='bystander'").fetchone()
        # A stream row lost without its records, producers or registry event...
        con.execute("DELETE FROM streams WHERE id = ?", (bystander,))
        # ...a wrong reference count, records past a tail, a garbage entry naming a
        # live stream (which would delete its data), and a stale id counter.
        con.execute("UPDATE streams SET refcount = 5 WHERE path = 'src'")
        con.execute("INSERT INTO records VALUES (?, 1000000, 1, x'00', ?, 0)",
                    (victim, record_checksum(victim, 1000000, 1, b"\0")))
        con.execute("INSERT INTO garbage VALUES (?)", (victim,))
        con.execute("UPDATE meta SET value = '1' WHERE key = 'next_id'")
        con.commit()
    out = run_check(data_dir)
    assert out.returncode == 1
    for kind in ("orphans: records of stream", "orphans: producer rows", "forks:",
                 "tail: stream 'victim'", "garbage: stream 'victim'", "meta: next_id",
                 "registry: 1 events missing ('bystander')"):
        assert kind in out.stdout, (kind, out.stdout)
    assert "NOT repairable" not in out.stdout
    out = run_check(data_dir, "--repair")
    assert out.returncode == 0, out.stdout
    out = run_check(data_dir)
    assert out.returncode == 0 and "0 problems found" in out.stdout, out.stdout
    server = server_on(data_dir, tmp_path)
    try:
        base = server.url + "/v1/stream/"
        assert httpx.head(base + "bystander").status_code == 404
        assert read_all(base + "fork") == b"abc"
        assert httpx.head(base + "victim").status_code == 200
        assert len(read_all(base + "victim")) == 64 * 1022
    finally:
        server.stop()


def test_format_1_database_is_migrated_with_checksums(tmp_path: Path) -> None:
    """A database written by format 1 (no checksums, no producer times) is upgraded
    in place: every record gets a checksum of its stored bytes, reads verify them."""
    import asyncio

    from duralog.protocol.headers import Producer
    from duralog.protocol.state import AppendRequest
    from duralog.store.sqlite import SQLiteStore

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with closing(sqlite3.connect(db(data_dir))) as con:
        con.executescript("""
            PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE streams (id INTEGER PRIMARY KEY, path TEXT NOT NULL,
                content_type TEXT NOT NULL, created_at REAL NOT NULL, tail INTEGER NOT NULL,
                ttl INTEGER, expires_at TEXT, expires_ts REAL, last_access REAL NOT NULL,
                closed INTEGER NOT NULL, closed_by TEXT, stream_seq TEXT, source_id INTEGER,
                forked_from TEXT, fork_pos INTEGER, fork_sub INTEGER NOT NULL,
                refcount INTEGER NOT NULL, soft_deleted INTEGER NOT NULL);
            CREATE TABLE producers (stream INTEGER NOT NULL, producer TEXT NOT NULL,
                epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                PRIMARY KEY (stream, producer)) WITHOUT ROWID;
            CREATE TABLE records (stream INTEGER NOT NULL, end_pos INTEGER NOT NULL,
                kind INTEGER NOT NULL, data BLOB NOT NULL,
                PRIMARY KEY (stream, end_pos)) WITHOUT ROWID;
            CREATE TABLE garbage (stream INTEGER PRIMARY KEY);
            INSERT INTO meta VALUES ('format', '1'), ('instance_tag', 'abcd1234'),
                                    ('next_id', '2');
            INSERT INTO streams VALUES (1, 'old', 'text/plain', 1.0, 11, NULL, NULL, NULL,
                                        1.0, 0, NULL, NULL, NULL, NULL, NULL, 0, 0, 0);
            INSERT INTO producers VALUES (1, 'p', 0, 1);
            INSERT INTO records VALUES (1, 5, 1, X'68656c6c6f'), (1, 11, 1, X'20776f726c64');
        """)

    async def main() -> None:
        store = SQLiteStore(data_dir)
        await store.start()
        try:
            state = store.get("old")
            assert state is not None and store.instance_tag == "abcd1234"
            chunk = await store.read(state, 0, 1 << 20)
            assert b"".join(chunk.parts) == b"hello world"
            d, _ = await store.append("old", AppendRequest(
                payload=b"!", content_type="text/plain", producer=Producer("p", 0, 1)))
            assert not d.write  # the producer state came through: a duplicate
        finally:
            await store.stop()

    asyncio.run(main())
    with closing(sqlite3.connect(db(data_dir))) as con:
        assert con.execute("SELECT value FROM meta WHERE key='format'").fetchone() == ("2",)
        rows = con.execute("SELECT stream, end_pos, kind, data, checksum FROM records").fetchall()
        assert all(c == record_checksum(s, e, k, d) for s, e, k, d, c in rows)
        assert con.execute("SELECT last_used > 0 FROM producers").fetchall() == [(1,)]
    assert run_check(data_dir).returncode == 0


def test_check_refuses_a_directory_a_server_is_using(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = server_on(data_dir, tmp_path)
    try:
        out = run_check(data_dir)
        assert out.returncode == 1 and "in use by another duralog" in out.stdout
    finally:
        server.stop()
    assert run_check(data_dir).returncode == 0
