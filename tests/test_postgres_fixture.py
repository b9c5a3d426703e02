"""The test PostgreSQL itself (tests/pg.py): real, durable settings, unprivileged."""

from __future__ import annotations

from .pg import PgServer


def test_fixture_runs_a_real_durable_postgres(pg_server: PgServer, pg_db: str) -> None:
    name = pg_db.rsplit("/", 1)[1]
    assert pg_server.sql("SHOW fsync", name) == "on"
    assert pg_server.sql("SHOW synchronous_commit", name) == "on"
    assert int(pg_server.sql("SHOW max_connections", name)) >= 200
    # Never root: PostgreSQL refuses it, and the crash tests need real file ownership.
    assert pg_server.sql("SELECT current_setting('data_directory')", name) == str(pg_server.data)
    assert pg_server.sql("SELECT version()", name).startswith("PostgreSQL ")
