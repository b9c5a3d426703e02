"""README.md's curl walkthrough and docs/cli.md's session run as written, against a real
server."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

from .servers import ROOT, ServerProcess


def test_curl_walkthrough_runs_as_written(memory_server: ServerProcess) -> None:
    assert shutil.which("curl"), "the README walkthrough needs curl"
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The protocol with curl, step by step"):]
    script = re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    script = script.replace("http://127.0.0.1:4437", memory_server.url)
    script = script.replace("/walkthrough", f"/walkthrough-{uuid.uuid4().hex[:8]}")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    out = done.stdout.replace("\r\n", "\n")
    assert done.stderr == "", done.stderr
    assert "HTTP/1.1 201 Created" in out
    assert out.count("HTTP/1.1 204 No Content") == 2  # the append, the delete
    assert '\n[{"n":1}]\n[{"n":2}]\n' in out  # catch-up, then resumed from the saved offset
    assert '\n[{"n":3}]\n' in out  # the long-poll that waited
    assert 'event: data\ndata:[{"n":1},{"n":2},{"n":3}]' in out.replace("data: ", "data:")
    assert "event: control" in out


def test_cli_doc_session_runs_as_written(memory_server: ServerProcess, tmp_path: Path) -> None:
    doc = (ROOT / "docs/cli.md").read_text()
    script = re.search(r"```sh\n(.*?)```", doc, re.S).group(1)  # type: ignore[union-attr]
    script = script.replace("http://127.0.0.1:4437", memory_server.url)
    script = re.sub(r"\bdemo\b", f"demo{uuid.uuid4().hex[:8]}", script)
    done = subprocess.run(["sh", "-c", "set -e\n" + script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert '{"n":1}' in lines and '{"n":4}' in lines
    assert "refused: exit 1" in lines
    assert "stream is closed" in done.stderr
    assert any(line.startswith("size: ") for line in lines)
