"""`duralog` as a new user meets it: each test is a reproduction from issue 11.

Real subprocesses against a real server (the session's memory server), and
against a port nobody listens on. DURALOG_RETRY_SECONDS keeps the no-server
cases short; the behaviour is the same with the default 10 s.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from duralog.cli.progress import human_bytes

from .servers import ServerProcess, free_port
from .test_cli import duralog
from .test_client_resilience import ChaosProxy

QUICK = {"DURALOG_RETRY_SECONDS": "1.5"}


def name() -> str:
    return f"cliu-{uuid.uuid4().hex[:10]}"


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def run_on_pty(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    """Run with stderr on a terminal; its exit status and what it printed there."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "duralog", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, **env})
    os.close(follower)
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stdin = None
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout), seen.decode(errors="replace")


# -- nothing listening -------------------------------------------------------------


@pytest.mark.parametrize("json_mode", [True, False])
def test_write_with_nothing_listening_fails_with_one_line(json_mode: bool) -> None:
    args = ["write", "chat", "--url", nowhere()] + (["--json"] if json_mode else [])
    done = duralog(None, *args, stdin=b'{"a":1}\n', env=QUICK, timeout=60)
    assert done.returncode == 1
    assert "Connection refused" in one_line(done.stderr)


@pytest.mark.parametrize("command", [["read", "chat"], ["info", "chat"], ["ls"],
                                     ["create", "chat"], ["read", "chat", "--follow"]])
def test_every_command_gives_up_on_a_server_that_stays_down(command: list[str]) -> None:
    done = duralog(None, *command, "--url", nowhere(), env=QUICK, timeout=60)
    assert done.returncode == 1
    one_line(done.stderr)


def test_retrying_is_announced_on_a_terminal() -> None:
    status, text = run_on_pty(["info", "chat", "--url", nowhere()], QUICK)
    assert status == 1
    assert "retrying for up to 1.5 s" in text
    assert "Connection refused" in text
    # Piped, the notice stays out of the way: only the error line.
    piped = duralog(None, "info", "chat", "--url", nowhere(), env=QUICK)
    assert "retrying" not in one_line(piped.stderr)


def test_ctrl_c_ends_write_at_once_with_130_and_no_thread_noise() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "duralog", "write", "chat", "--json",
                             "--url", nowhere()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DURALOG_RETRY_SECONDS": "60"})
    proc.stdin.write(b'{"a":1}\n')  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stdin = None  # communicate() must not flush it again
    time.sleep(1.5)  # retrying by now
    proc.send_signal(signal.SIGINT)  # one press
    _, err = proc.communicate(timeout=15)  # generous; it retries for 60 s otherwise
    assert proc.returncode == 130
    text = err.decode()
    assert "Exception ignored" not in text and "Traceback" not in text
    assert "interrupted; 0 messages (0 B) stored" in text


@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_ctrl_c_ends_read_follow_with_130(memory_server: ServerProcess, live: str) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain")
    proc = subprocess.Popen([sys.executable, "-m", "duralog", "read", s, "--follow",
                             "--live", live], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DURALOG_URL": memory_server.url})
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert "Traceback" not in err.decode() and "Exception ignored" not in err.decode()


# -- writing -----------------------------------------------------------------------


def test_progress_counts_what_was_sent_with_a_rate_in_every_mode(
        memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--json")
    lines = [json.dumps({"n": i, "pad": "x" * 200}).encode() for i in range(20_000)]
    done = duralog(memory_server, "write", s, "--json", "--progress",
                   stdin=b"\n".join(lines) + b"\n", timeout=120)
    assert done.returncode == 0, done.stderr
    last = done.stderr.decode().strip().splitlines()[-1]
    sent = sum(len(line) for line in lines)
    assert last.startswith(f"sent {human_bytes(sent)}, 20000 messages in "), last
    assert last.endswith("/s)")

    b = name()
    duralog(memory_server, "create", b)
    data = os.urandom(3 * 1024 * 1024 + 5)
    done = duralog(memory_server, "write", b, "--progress", stdin=data, timeout=120)
    assert done.returncode == 0, done.stderr
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"sent {human_bytes(len(data))}, "), last
    assert last.endswith("/s)")

    done = duralog(memory_server, "write", s, "--json", "--progress", '{"a":1}', "[1,2]")
    assert done.returncode == 0, done.stderr
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("sent 12 B, 2 messages in "), last


def test_progress_is_shown_on_a_terminal_by_default(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain")
    status, text = run_on_pty(["write", s, "hello"], {"DURALOG_URL": memory_server.url})
    assert status == 0
    assert "sent 5 B, 1 message in " in text
    quiet = duralog(memory_server, "write", s, "again")  # piped: nothing on stderr
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_bad_json_line_says_what_was_stored(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--json")
    done = duralog(memory_server, "write", s, "--json",
                   stdin=b'{"a":1}\nnot json\n{"b":2}\n')
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "line 2 of stdin is not JSON" in line
    assert "1 message (7 B) stored" in line
    assert "nothing after line 1 was sent" in line
    offset = httpx.head(f"{memory_server.url}/v1/stream/{s}").headers["stream-next-offset"]
    assert f"next offset {offset}" in line
    assert duralog(memory_server, "read", s).stdout == b'{"a":1}\n'


def test_append_to_a_closed_stream_says_it_is_closed(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain", "--closed")
    for stdin in (None, b"piped"):
        args = ["write", s] + (["more"] if stdin is None else [])
        done = duralog(memory_server, *args, stdin=stdin)
        assert done.returncode == 1
        line = one_line(done.stderr)
        assert "stream is closed" in line
        assert "different configuration" not in line


# -- naming streams and servers ----------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:notaport", "http://127.0.0.1:99999",
                                 "http://:4437", "ftp://127.0.0.1:4437"])
def test_bad_url_is_one_line_exit_2(url: str) -> None:
    done = duralog(None, "read", "chat", "--url", url)
    assert done.returncode == 2
    assert "--url" in one_line(done.stderr)


@pytest.mark.parametrize("suffix", ["/v1/stream", "/v1/stream/"])
def test_url_with_the_stream_root_is_accepted(memory_server: ServerProcess,
                                              suffix: str) -> None:
    s = name()
    done = duralog(None, "create", s, "--url", memory_server.url + suffix)
    assert done.returncode == 0, done.stderr
    assert f"{memory_server.url}/v1/stream/{s} " in done.stdout.decode()
    assert httpx.head(f"{memory_server.url}/v1/stream/{s}").status_code == 200


def test_dot_segments_are_refused(memory_server: ServerProcess) -> None:
    target = name()
    for bad in (f"a/../{target}", f"./{target}", f"a//{target}"):
        done = duralog(memory_server, "create", bad)
        assert done.returncode == 2
        assert "segment" in one_line(done.stderr)
    assert httpx.head(f"{memory_server.url}/v1/stream/{target}").status_code == 404


def test_fork_of_a_missing_source_names_the_source(memory_server: ServerProcess) -> None:
    source, target = name(), name()
    done = duralog(memory_server, "fork", source, target)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "source stream not found" in line
    assert line.rstrip().endswith(f"/v1/stream/{source}")
    assert target not in line


def test_stream_url_and_auth_of_the_protocol_cli(memory_server: ServerProcess) -> None:
    proxy = ChaosProxy(memory_server.port)
    try:
        s = name()
        env = {"STREAM_URL": f"{proxy.url}/v1/stream", "STREAM_AUTH": "Bearer from-env"}
        done = duralog(None, "create", s, env=env)
        assert done.returncode == 0, done.stderr
        assert b"authorization: bearer from-env\r\n" in bytes(proxy.log).lower()
        # A bare token gets the Bearer scheme; --auth wins over STREAM_AUTH.
        duralog(None, "info", s, "--auth", "flagtoken", env=env)
        assert b"authorization: bearer flagtoken\r\n" in bytes(proxy.log).lower()
        duralog(None, "info", s, env={**env, "DURALOG_TOKEN": "dt"})
        assert b"authorization: bearer dt\r\n" in bytes(proxy.log).lower()
        duralog(None, "info", s, "--token", "tt", env=env)
        assert b"authorization: bearer tt\r\n" in bytes(proxy.log).lower()
        # DURALOG_URL comes before STREAM_URL.
        other = name()
        done = duralog(None, "create", other,
                       env={"DURALOG_URL": memory_server.url, "STREAM_URL": nowhere()})
        assert done.returncode == 0, done.stderr
    finally:
        proxy.stop()


# -- what commands show ------------------------------------------------------------


def test_info_and_ls_show_size(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain", "--data", "x" * 2048)
    info = duralog(memory_server, "info", s)
    assert "size: 2048 bytes (2.0 KiB)" in info.stdout.decode()
    assert json.loads(duralog(memory_server, "info", s, "--json").stdout)["size"] == 2048
    rows = [line.split("\t") for line in duralog(memory_server, "ls").stdout.decode().splitlines()]
    assert [s, "text/plain", "2.0 KiB"] in rows
    listed = {e["path"]: e for e in json.loads(duralog(memory_server, "ls", "--json").stdout)}
    assert listed[s]["size"] == 2048


# -- help and argument errors ------------------------------------------------------


@pytest.mark.parametrize("command", ["create", "write", "read", "info", "close", "fork",
                                     "delete", "ls"])
def test_help_has_examples_and_positional_help(command: str) -> None:
    done = duralog(None, command, "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "examples:\n  duralog " in text or "examples:\n  tail " in text
    if command not in ("ls",):
        positional = text.split("positional arguments:")[1].split("options:")[0]
        for line in positional.strip().splitlines():
            if line.startswith("  ") and not line.startswith("    "):
                assert len(line.split()) > 1, f"no help for {line.strip()}"


def test_read_help_names_the_real_default_live_mode() -> None:
    text = " ".join(duralog(None, "read", "--help").stdout.decode().split())
    assert "then SSE for text and JSON streams, long-poll for binary ones" in text


def test_serve_argument_errors() -> None:
    bogus = duralog(None, "serve", "--bogus")
    assert bogus.returncode == 2
    assert bogus.stderr.decode().startswith("usage: duralog serve")
    size = duralog(None, "serve", "--chunk-size", "abc")
    assert size.returncode == 2
    assert "'abc' is not a size" in size.stderr.decode()
    assert "parse_size" not in size.stderr.decode()
    port = duralog(None, "serve", "--backend", "memory", env={"DURALOG_PORT": "4k"},
                   timeout=30)
    assert port.returncode == 2
    assert "DURALOG_PORT='4k'" in one_line(port.stderr)


def test_ls_on_a_server_without_a_registry_says_so(ref_server: ServerProcess) -> None:
    done = duralog(ref_server, "ls")
    assert done.returncode == 1
    assert "keeps no stream registry" in one_line(done.stderr)


def test_a_busy_server_is_retried_and_announced(memory_server: ServerProcess) -> None:
    s = name()
    duralog(memory_server, "create", s, "--content-type", "text/plain")
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n"
            b"connection: close\r\n\r\nstarting\n")
    proxy = ChaosProxy(memory_server.port, reject=busy, reject_count=2)
    try:
        status, text = run_on_pty(["write", s, "hello", "--url", proxy.url], QUICK)
        assert status == 0, text
        assert "the server answered 503" in text  # the first request is a HEAD: no body
        assert "retrying for up to 1.5 s" in text
        assert len(proxy.rejections) == 2
    finally:
        proxy.stop()
    assert duralog(memory_server, "read", s).stdout == b"hello"  # once
