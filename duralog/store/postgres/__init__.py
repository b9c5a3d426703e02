"""The postgres backend: many server nodes over one PostgreSQL database.

Any number of ``duralog serve --backend postgres`` processes over one database
behave as one server (docs/storage.md, "PostgreSQL"):

* writes: each node's writer task commits queued operations in shared
  transactions (group commit). A transaction locks the rows of the streams it
  changes and decides from them, then writes data, producer state,
  Stream-Seq, closure, the registry event and a NOTIFY together (writer.py);
* reads: records are rows keyed by (stream, end position), read a page at a
  time up to the answer's size, every checksum verified (store.py);
* freshness: requests read their stream's row first (``Store.fresh``); every
  node's LISTEN connection applies other nodes' commits to its cache and
  wakes its live readers, and after a lost connection it reloads and wakes
  them all (listener.py);
* background work runs under advisory locks, once across the cluster (store.py);
* the schema is created and migrated at startup, versioned in
  ``schema_migrations``; a newer schema than the node knows is refused (schema.py).

Needs asyncpg: ``pip install 'duralog[postgres]'``.
"""

from .schema import SchemaError
from .store import PostgresStore

__all__ = ["PostgresStore", "SchemaError"]
