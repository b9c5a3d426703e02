"""`duralog state STREAM`, run as a real subprocess against a real server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import uuid

from duralog.client import DurableStream
from duralog.state import events as ev

from .servers import ServerProcess


def run(server: ServerProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "DURALOG_URL": server.url}
    return subprocess.run([sys.executable, "-m", "duralog", "state", *args],
                          capture_output=True, env=env, timeout=timeout)


def make(server: ServerProcess) -> tuple[str, DurableStream]:
    name = f"state-cli-{uuid.uuid4().hex[:10]}"
    stream = DurableStream(f"{server.url}/v1/stream/{name}")
    stream.create(content_type="application/json")
    return name, stream


def test_piped_prints_json(memory_server: ServerProcess) -> None:
    name, stream = make(memory_server)
    stream.append_json(ev.insert("user", "1", {"name": "Ada", "age": 36}).to_json(),
                       ev.insert("user", "2", {"name": "Bob"}).to_json(),
                       ev.upsert("config", "theme", "dark").to_json(),
                       ev.delete("user", "2").to_json())
    out = run(memory_server, name)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"user": {"1": {"name": "Ada", "age": 36}},
                                      "config": {"theme": "dark"}}
    only = run(memory_server, name, "--type", "config")
    assert json.loads(only.stdout) == {"config": {"theme": "dark"}}


def test_tables_on_a_terminal(memory_server: ServerProcess) -> None:
    name, stream = make(memory_server)
    stream.append_json(ev.insert("user", "1", {"name": "Ada", "age": 36}).to_json(),
                       ev.insert("user", "2", {"name": "Bob"}).to_json(),
                       ev.insert("config", "theme", "dark").to_json())
    leader, follower = pty.openpty()
    env = {**os.environ, "DURALOG_URL": memory_server.url}
    proc = subprocess.run([sys.executable, "-m", "duralog", "state", name], stdout=follower,
                          stderr=subprocess.PIPE, env=env, timeout=30)
    os.close(follower)
    text = os.read(leader, 65536).decode().replace("\r\n", "\n")
    os.close(leader)
    assert proc.returncode == 0, proc.stderr
    lines = text.splitlines()
    assert lines[0] == "user (2 rows)"
    assert lines[1].split() == ["key", "name", "age"]
    assert lines[3].split() == ["1", "Ada", "36"] and lines[4].split() == ["2", "Bob"]
    assert "config (1 row)" in lines and lines[-1].split() == ["theme", "dark"]


def test_follow_until_closed(memory_server: ServerProcess) -> None:
    name, stream = make(memory_server)
    stream.append_json(ev.insert("flag", "a", True).to_json())
    env = {**os.environ, "DURALOG_URL": memory_server.url}
    proc = subprocess.Popen([sys.executable, "-m", "duralog", "state", name, "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"flag": {"a": True}}
    stream.append_json(ev.insert("flag", "b", False).to_json(), ev.delete("flag", "a").to_json())
    assert json.loads(proc.stdout.readline()) == {"flag": {"b": False}}
    stream.close()
    assert proc.wait(30) == 0
    assert proc.stdout.read() == b""


def test_malformed_event_is_one_line_error(memory_server: ServerProcess) -> None:
    name, stream = make(memory_server)
    stream.append_json({"type": "user", "key": "1", "headers": {"operation": "insert"}})
    out = run(memory_server, name)
    assert out.returncode == 1
    err = out.stderr.decode().strip()
    assert err.startswith("duralog state: message 0 of the chunk read at offset -1")
    assert "must carry a value" in err and "\n" not in err
    missing = run(memory_server, "no-such-stream")
    assert missing.returncode == 1 and b"404" in missing.stderr
