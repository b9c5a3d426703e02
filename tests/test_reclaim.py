"""Reclaiming deleted streams' space: the small CI version of
``python -m bench.storage reclaim`` (the full one deletes 10,000 streams holding
1 GiB; docs/storage.md has its figures). Asserts outcomes, not speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .servers import ROOT


def test_deleted_streams_are_reclaimed_and_the_file_shrinks() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench.storage", "reclaim", "--streams", "400",
                          "--total", "16MiB", "--timeout", "120"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["reclaim_s"] is not None  # every deleted stream's records are gone
    assert figures["shrink_done_s"] is not None
    assert figures["db_bytes_after_reclaim"] < figures["db_bytes_full"] // 2
    assert figures["file_bytes_after_stop"] < 2 << 20
    assert "probe append: 204" in out.stderr  # appends kept working
