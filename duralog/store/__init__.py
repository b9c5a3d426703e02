"""Storage backends behind one interface (store.base.Store)."""

from .base import ReadChunk, Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "ReadChunk", "Store", "open_store"]


def open_store(backend: str, data_dir: str | None = None, *, database_url: str = "",
               pool_size: int = 10) -> Store:
    """The store for a ``--backend`` name."""
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(data_dir or "./duralog-data")
    if backend == "postgres":
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ValueError(f"--backend postgres needs asyncpg ({exc}): "
                             "pip install 'duralog[postgres]'") from None
        if not database_url:
            raise ValueError("--backend postgres needs --database-url (or DURALOG_DATABASE_URL)")
        return PostgresStore(database_url, pool_size=pool_size)
    raise ValueError(f"unknown backend {backend!r} (choose memory, sqlite or postgres)")
