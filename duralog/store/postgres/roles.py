"""Cluster roles: work that one node of the cluster must do (subscriptions), and who does it.

A node leads a role while it holds a session-level advisory lock on a
connection of its own; PostgreSQL releases the lock the moment that connection
ends (the node died, was killed, or lost the database), so another node can
take over. The leader writes its URL in ``roles`` so the others can forward
the role's requests to it (server/cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger("duralog.postgres")

ROLES_SQL = """
CREATE TABLE IF NOT EXISTS roles (
    role TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL
)
"""


#: Whether some session holds the role's advisory lock (pg_locks shows a bigint key
#: as its high and low 32 bits in classid and objid, objsubid 1).
HELD_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_locks, (SELECT hashtext($1)::bigint AS k) key
               WHERE locktype = 'advisory' AND granted AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND classid = ((k >> 32) & 4294967295)::oid
                 AND objid = (k & 4294967295)::oid)
"""


class Role:
    """One role on this node: ``try_lead`` takes it if free; ``on_lost`` is called when a
    held role is lost (its connection ended)."""

    def __init__(self, dsn: str, name: str, url: str, connect_kwargs: dict[str, Any]) -> None:
        self.dsn = dsn
        self.name = name
        self.url = url
        self.connect_kwargs = connect_kwargs
        self.con: asyncpg.Connection | None = None
        self.on_lost: Callable[[], None] | None = None

    @property
    def leading(self) -> bool:
        return self.con is not None and not self.con.is_closed()

    async def try_lead(self, pool: asyncpg.Pool | None = None) -> bool:
        if self.leading:
            return True
        if pool is not None and await pool.fetchval(HELD_SQL, "duralog-role:" + self.name):
            return False  # another node leads: no connection opened to find that out
        con = await asyncpg.connect(self.dsn, server_settings={
            "application_name": f"duralog-role-{self.name}"}, **self.connect_kwargs)
        try:
            await con.execute(ROLES_SQL)
            got = await con.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                     "duralog-role:" + self.name)
            if not got:
                await con.close()
                return False
            await con.execute("INSERT INTO roles VALUES ($1, $2, $3) ON CONFLICT (role) DO "
                              "UPDATE SET url = EXCLUDED.url, since = EXCLUDED.since",
                              self.name, self.url, time.time())
        except BaseException:
            con.terminate()
            raise
        con.add_termination_listener(self._lost)
        self.con = con
        return True

    def _lost(self, _con: Any) -> None:
        self.con = None
        log.warning("lost the %s role (its database connection ended)", self.name)
        if self.on_lost is not None:
            self.on_lost()

    async def leader_url(self, pool: asyncpg.Pool) -> str | None:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            url: str | None = await pool.fetchval("SELECT url FROM roles WHERE role = $1",
                                                  self.name)
            return url
        return None

    async def release(self) -> None:
        con, self.con = self.con, None
        if con is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(con.close(), 2)
