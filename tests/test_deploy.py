"""docs/deploy.md's nginx and Caddy configurations, run as written in front of a
real server.

Each block is cut from the doc between its begin/end markers; only the
upstream port, the listen address and the certificate are replaced (a
throw-away self-signed certificate for nginx, Caddy's internal CA instead of
ACME). Through nginx and TLS: Location names
the public https origin (forwarded headers from the allowed proxy), SSE and
long-poll answers arrive while the connection stays open, and nginx's request
id (nginx) reaches the server's X-Request-Id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from duralog.protocol.sse import parse_events

from .servers import ROOT, ServerProcess, duralog_server, free_port

pytestmark = pytest.mark.timeout(120)

PREFIX = "/v1/stream/"
PUBLIC = "streams.example.com"


def nginx_block(upstream_port: int, listen_port: int, cert: Path, key: Path) -> str:
    doc = (ROOT / "docs/deploy.md").read_text()
    block = doc.split("# duralog-nginx-begin\n", 1)[1].split("# duralog-nginx-end", 1)[0]
    replacements = {
        "server 127.0.0.1:4437;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{listen_port} ssl http2;",
        f"/etc/ssl/certs/{PUBLIC}.pem": str(cert),
        f"/etc/ssl/private/{PUBLIC}.key": str(key),
    }
    for old, new in replacements.items():
        assert old in block, f"docs/deploy.md no longer has {old!r}"
        block = block.replace(old, new)
    return block


def caddy_config(upstream_port: int, listen_port: int, base: Path) -> str:
    doc = (ROOT / "docs/deploy.md").read_text()
    block = doc.split("# duralog-caddy-begin\n", 1)[1].split("# duralog-caddy-end", 1)[0]
    replacements = {
        f"{PUBLIC} {{": f"https://{PUBLIC}:{listen_port} {{\n    bind 127.0.0.1\n"
                       "    tls internal",
        "reverse_proxy 127.0.0.1:4437 {": f"reverse_proxy 127.0.0.1:{upstream_port} {{",
    }
    for old, new in replacements.items():
        assert old in block, f"docs/deploy.md no longer has {old!r}"
        block = block.replace(old, new)
    # A local CA instead of ACME, kept in the test's directory, no admin endpoint.
    return ("{\n    admin off\n    skip_install_trust\n    auto_https disable_redirects\n"
            "    grace_period 1s\n"
            f"    default_sni {PUBLIC}\n    storage file_system {base}/storage\n}}\n" + block)


def _start_nginx(base: Path, upstream: int, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.fail("nginx is required (scripts/test installs it with apt-get)")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={PUBLIC}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    for d in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / d).mkdir()
    conf = base / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {base}/nginx.pid;\nerror_log {base}/error.log warn;\nevents {{}}\n"
        + "http {\n  access_log off;\n"
        + "".join(f"  {d}_temp_path {base}/{d};\n".replace("client_temp", "client_body_temp")
                  for d in ("client", "proxy", "fastcgi", "uwsgi", "scgi"))
        + nginx_block(upstream, port, cert, key) + "}\n")
    return subprocess.Popen([nginx, "-p", str(base), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _start_caddy(base: Path, upstream: int, port: int) -> subprocess.Popen[bytes]:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is required (scripts/test installs it with apt-get)")
    conf = base / "Caddyfile"
    conf.write_text(caddy_config(upstream, port, base))
    env = {**os.environ, "HOME": str(base), "XDG_DATA_HOME": str(base / "data"),
           "XDG_CONFIG_HOME": str(base / "config")}
    return subprocess.Popen([caddy, "run", "--config", str(conf), "--adapter", "caddyfile"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def proxied(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, ServerProcess, str]]:
    base = tmp_path_factory.mktemp(request.param)
    server = duralog_server("memory", extra=["--forwarded-allow-ips", "127.0.0.1",
                                             "--long-poll-timeout", "20"]).start()
    port = free_port()
    start = _start_nginx if request.param == "nginx" else _start_caddy
    proc = start(base, server.port, port)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                log = base / "error.log"
                raise RuntimeError(f"{request.param} exited: {err}"
                                   f"{log.read_text() if log.exists() else ''}")
            try:
                httpx.get(url + "/healthz", verify=False, timeout=1,
                          headers={"host": PUBLIC})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url, server, request.param
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.stop()


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=False, timeout=httpx.Timeout(30.0),
                        headers={"host": PUBLIC})


def test_location_is_the_public_https_url(proxied: tuple[str, ServerProcess, str]) -> None:
    url, _, proxy = proxied
    name = f"dep-{uuid.uuid4().hex[:8]}"
    with client(url) as c:
        r = c.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"a")
        assert r.status_code == 201
        assert r.headers["location"] == f"https://{PUBLIC}{PREFIX}{name}"
        rid = r.headers["x-request-id"]
        if proxy == "nginx":
            # nginx's $request_id went upstream and came back as the request id
            assert len(rid) == 32 and all(ch in "0123456789abcdef" for ch in rid)
        else:
            assert rid


def test_sse_and_long_poll_pass_through_live(proxied: tuple[str, ServerProcess, str]) -> None:
    url, server, _ = proxied
    name = f"dep-{uuid.uuid4().hex[:8]}"
    with client(url) as c:
        tail = c.put(PREFIX + name, headers={"content-type": "text/plain"}
                     ).headers["stream-next-offset"]

        def append_later(data: bytes) -> None:
            time.sleep(0.5)
            httpx.post(server.url + PREFIX + name, content=data,
                       headers={"content-type": "text/plain"})

        # SSE: the first events must arrive while the response is still open
        with c.stream("GET", PREFIX + name, params={"offset": tail, "live": "sse"}) as r:
            assert r.status_code == 200
            threading.Thread(target=append_later, args=(b"hello",)).start()
            seen = ""
            started = time.monotonic()
            for chunk in r.iter_text():
                seen += chunk
                if "hello" in seen:
                    break
                assert time.monotonic() - started < 15, seen
        events = parse_events(seen)
        assert ("data", "hello") in events
        assert json.loads(next(d for n, d in events if n == "control"))["upToDate"] is True

        # long-poll: waits at the tail, then answers with what was appended
        offset = c.head(PREFIX + name).headers["stream-next-offset"]
        threading.Thread(target=append_later, args=(b" world",)).start()
        r = c.get(PREFIX + name, params={"offset": offset, "live": "long-poll"})
        assert r.status_code == 200
        assert r.content == b" world"


def test_systemd_unit_parses(tmp_path: Path) -> None:
    """The unit in docs/deploy.md, checked by systemd's own parser (offline)."""
    analyze = shutil.which("systemd-analyze")
    duralog = shutil.which("duralog")
    if analyze is None or duralog is None:
        pytest.skip("systemd-analyze or the duralog command is not installed here")
    doc = (ROOT / "docs/deploy.md").read_text()
    unit = doc.split("```ini\n", 1)[1].split("```", 1)[0]
    assert "ExecStart=/usr/local/bin/duralog serve" in unit
    good = tmp_path / "duralog.service"
    good.write_text(unit.replace("/usr/local/bin/duralog", duralog))
    done = subprocess.run([analyze, "verify", str(good)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # the check notices a mistake (so its silence above means something)
    bad = tmp_path / "bad.service"
    bad.write_text(good.read_text().replace("KillSignal=SIGTERM",
                                            "KillSignal=SIGTERM\nKilSignal=x"))
    done = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert "KilSignal" in done.stderr
