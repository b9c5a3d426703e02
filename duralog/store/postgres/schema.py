"""The PostgreSQL backend's schema: versioned migrations, row codecs, error mapping.

Every node runs ``migrate`` at startup. It takes a transaction-scoped advisory
lock, so nodes starting together apply each migration once; applied versions
are rows of ``schema_migrations``. A database whose newest version is past
``LATEST`` was written by a newer duralog: the node refuses it with one line
rather than guess at a format it does not know.

Stream rows have the same columns, in the same order, as the SQLite backend's
(store/sqlite/schema.py), so both use one row codec and one record checksum.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg

from ...protocol.errors import ProtocolError

#: Advisory lock keys (one namespace per database): migrations, the registry
#: repair at startup, and each background job that must run once per cluster.
LOCK_MIGRATE = 0x6475726C01
LOCK_REGISTRY = 0x6475726C02
LOCK_SWEEP = 0x6475726C03
LOCK_RECLAIM = 0x6475726C04

#: The NOTIFY channel every commit announces its changed streams on (listener.py).
CHANNEL = "duralog_changes"

COLUMNS = ("id, path, content_type, created_at, tail, ttl, expires_at, expires_ts, "
           "last_access, closed, closed_by, stream_seq, source_id, forked_from, fork_pos, "
           "fork_sub, refcount, soft_deleted, retention_bytes, retention_seconds, start")

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "streams, producers, records, garbage, meta", """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE SEQUENCE stream_ids;
CREATE TABLE streams (
    id BIGINT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    tail BIGINT NOT NULL,
    ttl BIGINT,
    expires_at TEXT,
    expires_ts DOUBLE PRECISION,
    last_access DOUBLE PRECISION NOT NULL,
    closed INTEGER NOT NULL,
    closed_by TEXT,
    stream_seq TEXT,
    source_id BIGINT,
    forked_from TEXT,
    fork_pos BIGINT,
    fork_sub BIGINT NOT NULL,
    refcount INTEGER NOT NULL,
    soft_deleted INTEGER NOT NULL,
    retention_bytes BIGINT,
    retention_seconds BIGINT,
    start BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX streams_expiry ON streams (expires_ts) WHERE expires_ts IS NOT NULL;
CREATE TABLE producers (
    stream BIGINT NOT NULL,
    producer TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_used DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream, producer)
);
CREATE INDEX producers_last_used ON producers (last_used);
-- One row per append (appends over 256 KiB as several pieces, as in SQLite),
-- keyed by (stream, end position): a catch-up read is one index range scan.
CREATE TABLE records (
    stream BIGINT NOT NULL,
    end_pos BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    data BYTEA NOT NULL,
    checksum BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream, end_pos)
);
-- Payloads are stored as they came (JSON fragments, or bytes clients often
-- compressed already): no TOAST compression, out of line past ~2 KiB.
ALTER TABLE records ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE garbage (
    stream BIGINT PRIMARY KEY
);
"""),
]

LATEST = MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The database cannot be used by this version (one line, for the operator)."""


async def migrate(con: asyncpg.Connection) -> dict[str, str]:
    """Create or upgrade the schema (once across nodes); returns the meta table."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", LOCK_MIGRATE)
        await con.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                          "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                          "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > LATEST:
            raise SchemaError(
                f"the database schema is version {current}, newer than this duralog knows "
                f"({LATEST}): upgrade duralog on this node")
        for version, name, sql in MIGRATIONS:
            if version > current:
                await con.execute(sql)
                await con.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                  version, name)
        await con.execute("INSERT INTO meta VALUES ('instance_tag', $1) "
                          "ON CONFLICT (key) DO NOTHING", secrets.token_hex(4))
        rows = await con.fetch("SELECT key, value FROM meta")
    return {r["key"]: r["value"] for r in rows}


# -- errors ------------------------------------------------------------------------------
#: Errors after which the same transaction may succeed when run again (another
#: node took the same row or path at the same moment).
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError,
             asyncpg.exceptions.SerializationError,
             asyncpg.exceptions.UniqueViolationError)


def is_connection_error(exc: BaseException) -> bool:
    """PostgreSQL unreachable, restarting, or the connection dropped."""
    return isinstance(exc, (OSError, ConnectionError, TimeoutError,
                            asyncpg.exceptions.PostgresConnectionError,
                            asyncpg.exceptions.InterfaceError,
                            # "cannot switch to state ...": a connection that broke
                            # mid-operation (PostgreSQL went away under it).
                            asyncpg.exceptions.InternalClientError,
                            asyncpg.exceptions.CannotConnectNowError,
                            asyncpg.exceptions.AdminShutdownError,
                            asyncpg.exceptions.CrashShutdownError,
                            asyncpg.exceptions.TooManyConnectionsError))


def storage_error(exc: BaseException) -> ProtocolError:
    """A failed transaction as the one-line 503 its requests get: nothing was written
    (or, when the connection died during COMMIT, it is unknown; a 503 never acknowledges)."""
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return ProtocolError(507, "insufficient storage: the database is full")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if is_connection_error(exc):
        return ProtocolError(503, f"database unavailable, nothing was acknowledged: {reason}")
    return ProtocolError(503, f"storage error, nothing was written: {reason}")


def row_tuple(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if hasattr(row, "values") else tuple(row)
