"""The `duralog` command, run as a real subprocess against a real server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from .servers import ServerProcess


def duralog(server: ServerProcess | None, *args: str, stdin: bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {**os.environ, **(env or {})}
    if server is not None:
        base["DURALOG_URL"] = server.url
    return subprocess.run([sys.executable, "-m", "duralog", *args], input=stdin,
                          capture_output=True, env=base, timeout=timeout)


def name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def test_create_write_read_json_piped(memory_server: ServerProcess) -> None:
    s = name()
    assert duralog(memory_server, "create", s, "--json").returncode == 0
    done = duralog(memory_server, "write", s, "--json", '{"a":1}', "[1,2]")
    assert done.returncode == 0, done.stderr
    out = duralog(memory_server, "read", s)
    assert out.returncode == 0
    # Piped: one compact message per line.
    assert out.stdout.decode().splitlines() == ['{"a":1}', "[1,2]"]


def test_read_pretty_prints_json_on_a_terminal(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--json")
    duralog(memory_server, "write", s, "--json", '{"a":{"b":1}}')
    leader, follower = pty.openpty()
    env = {**os.environ, "DURALOG_URL": memory_server.url}
    proc = subprocess.run([sys.executable, "-m", "duralog", "read", s], stdout=follower,
                          stderr=subprocess.PIPE, env=env, timeout=30)
    os.close(follower)
    text = os.read(leader, 65536).decode()
    os.close(leader)
    assert proc.returncode == 0
    assert '  "a": {\n' in text.replace("\r\n", "\n")


def test_write_stdin_bytes_large(memory_server: ServerProcess) -> None:
    s = name()
    assert duralog(memory_server, "create", s).returncode == 0
    data = os.urandom(3 * 1024 * 1024 + 17)
    done = duralog(memory_server, "write", s, stdin=data, timeout=60)
    assert done.returncode == 0, done.stderr
    got = duralog(memory_server, "read", s, timeout=60)
    assert got.stdout == data


def test_write_stdin_json_lines(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--json")
    lines = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(2500))
    assert duralog(memory_server, "write", s, "--json", stdin=lines).returncode == 0
    out = duralog(memory_server, "read", s).stdout.decode().splitlines()
    assert [json.loads(line)["n"] for line in out] == list(range(2500))


def test_write_stdin_rejects_bad_json_line(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--json")
    done = duralog(memory_server, "write", s, "--json", stdin=b'{"ok":1}\nnot json\n')
    assert done.returncode != 0
    assert b"line 2" in done.stderr
    assert len(done.stderr.decode().strip().splitlines()) == 1


def test_info_close_and_append_after_close(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain", "--ttl", "600")
    duralog(memory_server, "write", s, "hello")
    assert duralog(memory_server, "close", s, " bye").returncode == 0
    info = json.loads(duralog(memory_server, "info", s, "--json").stdout)
    assert info["closed"] is True
    assert info["ttl"] == 600
    assert info["content_type"] == "text/plain"
    assert duralog(memory_server, "read", s).stdout == b"hello bye"
    late = duralog(memory_server, "write", s, "more")
    assert late.returncode == 1
    assert b"closed" in late.stderr


def test_read_follow_until_closed(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain")
    for live in ("sse", "long-poll"):
        reader = subprocess.Popen(
            [sys.executable, "-m", "duralog", "read", s, "--follow", "--live", live],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "DURALOG_URL": memory_server.url})
        if live == "sse":
            time.sleep(1.0)
            duralog(memory_server, "write", s, "one,")
            duralog(memory_server, "close", s, "two")
        out, err = reader.communicate(timeout=30)
        assert reader.returncode == 0, err
        assert out == b"one,two"


def test_read_from_saved_offset(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain")
    duralog(memory_server, "write", s, "abc")
    first = duralog(memory_server, "read", s, "--print-offset")
    offset = first.stderr.decode().strip().removeprefix("offset: ")
    duralog(memory_server, "write", s, "def")
    assert duralog(memory_server, "read", s, "--from", offset).stdout == b"def"


def test_fork_delete_and_ls(memory_server: ServerProcess) -> None:
    a, b = name(), name()
    duralog(memory_server, "create", a, "--content-type", "text/plain", "--data", "base")
    assert duralog(memory_server, "fork", a, b).returncode == 0
    duralog(memory_server, "write", b, "+fork")
    assert duralog(memory_server, "read", b).stdout == b"base+fork"
    listed = json.loads(duralog(memory_server, "ls", "--json").stdout)
    paths = {entry["path"] for entry in listed}
    assert {a, b} <= paths
    assert duralog(memory_server, "delete", b).returncode == 0
    listed = {entry["path"] for entry in json.loads(duralog(memory_server, "ls", "--json").stdout)}
    assert b not in listed and a in listed


def test_errors_are_one_line_and_nonzero(memory_server: ServerProcess) -> None:
    missing = duralog(memory_server, "info", name())
    assert missing.returncode == 1
    assert missing.stderr.decode().count("\n") == 1
    assert "not found" in missing.stderr.decode()
    nowhere = duralog(None, "info", "x", "--url", "http://127.0.0.1:9")
    assert nowhere.returncode == 1
    assert nowhere.stderr.decode().count("\n") == 1
    bad = duralog(None, "info", "x", "--url", "ftp://example")
    assert bad.returncode == 2


def test_url_flag_wins_over_environment(memory_server: ServerProcess) -> None:
    s = name()
    out = duralog(None, "create", s, "--url", memory_server.url,
                  env={"DURALOG_URL": "http://127.0.0.1:9"})
    assert out.returncode == 0, out.stderr
    assert httpx.head(f"{memory_server.url}/v1/stream/{s}").status_code == 200


@pytest.mark.parametrize("args", [["read"], ["write"], ["fork", "a"], ["bogus"]])
def test_usage_errors(args: list[str]) -> None:
    assert duralog(None, *args).returncode == 2
