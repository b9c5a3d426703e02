"""Storage backends behind one interface (store.base.Store)."""

from .base import ReadChunk, Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "ReadChunk", "Store", "open_store"]


def open_store(backend: str, data_dir: str | None = None) -> Store:
    """The store for a ``--backend`` name."""
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(data_dir or "./duralog-data")
    raise ValueError(f"unknown backend {backend!r} (choose memory or sqlite)")
