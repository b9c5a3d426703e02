"""Shared fixtures: real servers in subprocesses (duralog per backend, the Node reference)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg import PgServer, unique_name
from .servers import ROOT, ServerProcess, duralog_server, reference_server


@pytest.fixture(scope="session")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A duralog server on the memory backend, shared by the session."""
    log = tmp_path_factory.mktemp("memory-server") / "server.log"
    server = duralog_server("memory", log_path=log).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A duralog server on the durable SQLite backend, shared by the session."""
    base = tmp_path_factory.mktemp("sqlite-server")
    server = duralog_server("sqlite", data_dir=base / "data", log_path=base / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite"])
def any_server(request: pytest.FixtureRequest) -> ServerProcess:
    """Each duralog backend in turn."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def node_available() -> None:
    if shutil.which("node") is None or not (ROOT / "node_modules/@durable-streams").is_dir():
        pytest.fail("node and the npm test peers are required: run "
                    "`npm install --no-audit --no-fund` first (./scripts/test does)")


@pytest.fixture(scope="session")
def ref_server(node_available: None) -> Iterator[ServerProcess]:
    """The Node reference server (npm @durable-streams/server), memory mode."""
    server = reference_server().start()
    yield server
    server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL (Debian's binaries) for the session, in a temporary directory
    (tests/pg.py). Missing PostgreSQL fails the tests that use it; nothing is skipped."""
    with PgServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """The URL of the session's PostgreSQL (its default database)."""
    return pg_server.dsn


@pytest.fixture
def pg_db(pg_server: PgServer) -> str:
    """The URL of a new, empty database of the session's PostgreSQL, for one test."""
    return pg_server.create_database(unique_name())
