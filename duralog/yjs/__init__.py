"""Yjs on Durable Streams (YJS-PROTOCOL.md), on pycrdt.

- ``duralog.yjs.server.YjsApp``: the server sub-app mounted at ``/v1/yjs``
  (documents, snapshots, awareness, compaction).
- ``duralog.yjs.provider``: keeps a ``pycrdt.Doc`` in sync with a server
  document (``YjsProvider`` blocking, ``AsyncYjsProvider`` asyncio).
- ``duralog.yjs.framing``: the lib0 framing both sides use.

See docs/yjs.md.
"""

from __future__ import annotations

from .framing import frame, split_frames

__all__ = ["frame", "split_frames"]
