"""docs/deploy.md's nginx configuration, run as written in front of a real server.

The server block is cut from the doc between its begin/end markers; only the
upstream port, the listen address and the certificate paths are replaced
(a throw-away self-signed certificate). Through nginx and TLS: Location names
the public https origin (forwarded headers from the allowed proxy), SSE and
long-poll answers arrive while the connection stays open, and nginx's request
id reaches the server's X-Request-Id.
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


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.fail("nginx is required (scripts/test installs it with apt-get)")
    base = tmp_path_factory.mktemp("nginx")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={PUBLIC}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server = duralog_server("memory", extra=["--forwarded-allow-ips", "127.0.0.1",
                                             "--long-poll-timeout", "20"]).start()
    port = free_port()
    for d in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / d).mkdir()
    conf = base / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {base}/nginx.pid;\nerror_log {base}/error.log warn;\nevents {{}}\n"
        + "http {\n  access_log off;\n"
        + "".join(f"  {d}_temp_path {base}/{d};\n".replace("client_temp", "client_body_temp")
                  for d in ("client", "proxy", "fastcgi", "uwsgi", "scgi"))
        + nginx_block(server.port, port, cert, key) + "}\n")
    proc = subprocess.Popen([nginx, "-p", str(base), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}{(base / 'error.log').read_text()}")
            try:
                httpx.get(url + "/healthz", verify=False, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url, server
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop()


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=False, timeout=httpx.Timeout(30.0),
                        headers={"host": PUBLIC})


def test_location_is_the_public_https_url(proxied: tuple[str, ServerProcess]) -> None:
    url, _ = proxied
    name = f"dep-{uuid.uuid4().hex[:8]}"
    with client(url) as c:
        r = c.put(PREFIX + name, headers={"content-type": "text/plain"}, content=b"a")
        assert r.status_code == 201
        assert r.headers["location"] == f"https://{PUBLIC}{PREFIX}{name}"
        # nginx's $request_id went upstream and came back as the request id
        rid = r.headers["x-request-id"]
        assert len(rid) == 32 and all(ch in "0123456789abcdef" for ch in rid)


def test_sse_and_long_poll_pass_through_live(proxied: tuple[str, ServerProcess]) -> None:
    url, server = proxied
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
