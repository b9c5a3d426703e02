"""``duralog serve`` with the Yjs sub-app, for the Yjs tests (real processes, so the
crash tests can kill -9 them)."""

from __future__ import annotations

from pathlib import Path

from .servers import ServerProcess, duralog_server


def yjs_server(backend: str = "memory", data_dir: str | Path | None = None,
               compaction_bytes: int | None = None, log_path: Path | None = None,
               env: dict[str, str] | None = None, awareness_ttl: int | None = None
               ) -> ServerProcess:
    extra = ["--long-poll-timeout", "5", "--log-level", "info"]
    if compaction_bytes is not None:
        extra += ["--yjs-compaction-bytes", str(compaction_bytes)]
    server = duralog_server(backend, data_dir=data_dir, extra=extra, log_path=log_path)
    server.env = dict(env or {})
    if awareness_ttl is not None:
        server.env["DURALOG_YJS_AWARENESS_TTL"] = str(awareness_ttl)
    return server
