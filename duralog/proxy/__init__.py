"""The durable proxy (PROXY-PROTOCOL.md): the server sub-app and the Python durable fetch.

``server.ProxyApp`` forwards a request to an allowed upstream, answers 201
with a pre-signed URL as soon as the upstream's headers arrive, and pipes the
body into an ordinary durable stream in the background, through the Store
interface only. ``DurableFetch`` / ``AsyncDurableFetch`` are the client side:
the upstream bytes of a proxied request, resumed from the last offset read
after a drop or a process restart.
"""

from .config import ProxyConfig
from .fetch import (
           AsyncDurableFetch,
           AsyncDurableResponse,
           DurableFetch,
           DurableResponse,
           FetchError,
)
from .storage import FetchStorage, FileStorage, MemoryStorage, SQLiteStorage
from .transport import AsyncDurableTransport, DurableTransport

__all__ = ["AsyncDurableFetch", "AsyncDurableResponse", "AsyncDurableTransport",
           "DurableFetch", "DurableResponse", "DurableTransport", "FetchError", "FetchStorage",
           "FileStorage", "MemoryStorage", "ProxyConfig", "SQLiteStorage"]
