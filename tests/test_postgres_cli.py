"""`duralog serve --backend postgres` settings: the URL from the flag or
DURALOG_DATABASE_URL, and one-line refusals (no URL, no database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from .pg import PgServer, unique_name
from .servers import ServerProcess, free_port


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "duralog", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_postgres_needs_a_database_url() -> None:
    proc = serve("--backend", "postgres", env={"DURALOG_DATABASE_URL": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "duralog serve: --backend postgres needs --database-url (or DURALOG_DATABASE_URL)"]


def test_unreachable_database_is_one_line() -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none"
    proc = serve("--backend", "postgres", "--database-url", url)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot connect to the database" in lines[0]
    assert "secret" not in lines[0]  # the password is never printed


def test_database_url_from_the_environment(pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.create_database(unique_name("env"))
    port = free_port()
    node = ServerProcess([sys.executable, "-m", "duralog", "serve", "--port", str(port),
                          "--backend", "postgres"], port,
                         env={"DURALOG_DATABASE_URL": url, "DURALOG_PG_POOL_SIZE": "3"},
                         log_path=tmp_path / "node.log").start()
    try:
        assert httpx.put(node.url + "/v1/stream/e").status_code == 201
    finally:
        node.stop()
    assert pg_server.sql("SELECT count(*) FROM streams WHERE path = 'e'",
                         url.rsplit("/", 1)[1]) == "1"
    assert "(postgres: postgresql://duralog@" in (tmp_path / "node.log").read_text()
