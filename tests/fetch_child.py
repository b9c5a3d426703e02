"""A process that starts a durable fetch, consumes some chunks, then dies (kill -9 style).

``python -m tests.fetch_child PROXY UPSTREAM_URL SQLITE_PATH OUT_FILE CHUNKS`` (from the
repository's root, so ``tests`` is importable)
"""

from __future__ import annotations

import os
import sys

from duralog.proxy import DurableFetch, SQLiteStorage
from tests.proxy_support import SECRET

proxy, upstream, db, out, chunks = sys.argv[1:6]
fetcher = DurableFetch(proxy, secret=SECRET, storage=SQLiteStorage(db))
response = fetcher.fetch(upstream, method="GET", key="conversation-1")
with open(out, "ab") as f:
    for i, chunk in enumerate(response.iter_bytes()):
        if i >= int(chunks):
            # Dies as the next chunk arrives, before handling it (asking for it saved
            # the offset after the chunks handled so far): no cleanup at all.
            os._exit(9)
        f.write(chunk)  # the caller's work for this chunk, done
        f.flush()
        os.fsync(f.fileno())
print("finished without dying", file=sys.stderr)
