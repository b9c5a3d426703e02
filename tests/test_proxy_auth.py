"""The proxy's auth matrix with the security layer on (``--auth``): PROXY-PROTOCOL.md
7 and 9 with the shared secret, pre-signed URLs and the auth file's scoped tokens.

Every proxy operation (create, read, HEAD, DELETE, abort) x every credential
(the shared secret as header and query, a wrong one, the pre-signed URL valid /
expired / forged, tokens of each scope, a token for other paths, expired,
forged, in the ``token`` parameter, none). The expected answer comes from the
scope table in docs/proxy.md (create = write, read and HEAD = read, DELETE =
admin, on ``__ds/proxy/s/{id}``; abort: the pre-signed URL only, 4.3), not
from the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from duralog.auth import mint_token
from duralog.proxy.signing import sign

from . import fake_upstream
from .proxy_support import SECRET, create, proxy_server, read_until_closed
from .servers import ServerProcess, ThreadedServer

pytestmark = pytest.mark.timeout(180)

SIGNING = "auth-file-signing-secret-0123456789abcdef"
URL_KEY = "pre-signed-url-key-for-the-tests"
STATIC = "proxy-static-all-token-0123"
AUTH_FILE = f"""
signing_secret = "{SIGNING}"
[[token]]
name = "proxy-service"
token = "{STATIC}"
read = ["__ds/proxy/**"]
write = ["__ds/proxy/**"]
admin = ["__ds/proxy/**"]
[anonymous]
read = ["public/**"]
"""
PROXY_STREAMS = "__ds/proxy/s/*"

# name -> (kind, scopes a token grants on the proxy streams, where it travels)
CREDENTIALS: dict[str, tuple[str, frozenset[str]]] = {
    "secret-header": ("secret", frozenset()),
    "secret-query": ("secret", frozenset()),
    "secret-wrong": ("bad", frozenset()),
    "url": ("url", frozenset()),
    "url-expired": ("url-expired", frozenset()),
    "url-forged": ("url-forged", frozenset()),
    "token-read": ("token", frozenset({"read"})),
    "token-write": ("token", frozenset({"write"})),
    "token-admin": ("token", frozenset({"admin"})),
    "token-static-all": ("token", frozenset({"read", "write", "admin"})),
    "token-query-all": ("token", frozenset({"read", "write", "admin"})),
    "token-other-paths": ("token", frozenset()),
    "token-expired": ("bad", frozenset()),
    "token-forged": ("bad", frozenset()),
    "missing": ("none", frozenset()),
}
OPERATIONS = ["create", "read", "head", "delete", "abort"]
NEEDS = {"create": "write", "read": "read", "head": "read", "delete": "admin"}
SUCCESS = {"create": 201, "read": 200, "head": 200, "delete": 204, "abort": 204}


def expected(op: str, credential: str) -> tuple[int, str | None]:
    """(status, error code) per docs/proxy.md's table."""
    kind, scopes = CREDENTIALS[credential]
    signature_error = {"url-expired": "SIGNATURE_EXPIRED", "url-forged": "SIGNATURE_INVALID"}
    if op == "abort":  # 4.3, 9.2: the pre-signed URL only
        if kind == "url":
            return 204, None
        return 401, signature_error.get(kind, "MISSING_SIGNATURE")
    if op == "read" and kind == "url":
        return 200, None
    if op == "read" and kind in signature_error:
        return 401, signature_error[kind]
    if kind == "secret" or (kind == "token" and NEEDS[op] in scopes):
        return SUCCESS[op], None
    if kind == "token":
        return 403, "INSUFFICIENT_SCOPE"
    if kind == "bad":
        return 401, "INVALID_SECRET"
    # No service credential (none, or only pre-signed parameters on a service operation).
    return 401, "MISSING_SIGNATURE" if op == "read" else "MISSING_SECRET"


def credential(name: str, sid: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query parameters) that carry ``name`` for stream ``sid``."""
    every = {"read": [PROXY_STREAMS], "write": [PROXY_STREAMS], "admin": [PROXY_STREAMS]}
    bearer = {
        "secret-header": SECRET,
        "secret-wrong": "not-the-secret-at-all",
        "token-read": mint_token(SIGNING, read=[PROXY_STREAMS]),
        "token-write": mint_token(SIGNING, write=[PROXY_STREAMS]),
        "token-admin": mint_token(SIGNING, admin=[PROXY_STREAMS]),
        "token-static-all": STATIC,
        "token-other-paths": mint_token(SIGNING, read=["m/**"], write=["m/**"],
                                        admin=["m/**"]),
        "token-expired": mint_token(SIGNING, **every, ttl=60, now=time.time() - 3600),
        "token-forged": mint_token("another-secret-of-at-least-32-bytes!!", **every),
    }
    if name in bearer:
        return {"Authorization": f"Bearer {bearer[name]}"}, {}
    if name == "secret-query":
        return {}, {"secret": SECRET}
    if name == "token-query-all":
        return {}, {"token": mint_token(SIGNING, **every)}
    if name.startswith("url"):
        assert sid is not None
        expires = int(time.time()) + 3600
        if name == "url-expired":
            expires = int(time.time()) - 10
        key = URL_KEY if name != "url-forged" else "some-other-key"
        return {}, {"expires": str(expires), "signature": sign(key.encode(), sid, expires)}
    return {}, {}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(fake_upstream.app) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("proxy-auth")
    auth = tmp / "auth.toml"
    auth.write_text(AUTH_FILE)
    server = proxy_server(log_path=tmp / "server.log", extra_args=("--auth", str(auth)),
                          DURALOG_PROXY_SIGNING_KEY=URL_KEY).start()
    yield server
    server.stop()


def _new_stream(proxy: ServerProcess, upstream: ThreadedServer) -> str:
    r = create(proxy.url, upstream.url + "/text?n=3", method="GET")
    assert r.status_code == 201, r.text
    read_until_closed(r.headers["location"])
    return urlsplit(r.headers["location"]).path.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def shared_stream(proxy: ServerProcess, upstream: ThreadedServer) -> str:
    return _new_stream(proxy, upstream)


def _code(r: httpx.Response) -> str | None:
    if r.request.method == "HEAD" or not r.content:
        return None
    return r.json()["error"]["code"]


# A create has no stream yet, so there is no pre-signed URL to try on it.
CASES = [(op, name) for op in OPERATIONS for name in CREDENTIALS
         if not (op == "create" and name.startswith("url"))]


@pytest.mark.parametrize(("op", "credential_name"), CASES)
def test_proxy_auth_matrix(proxy, upstream, shared_stream, op, credential_name):
    sid = _new_stream(proxy, upstream) if op == "delete" else shared_stream
    headers, params = credential(credential_name, sid)
    base = f"{proxy.url}/v1/proxy"
    if op == "create":
        r = httpx.post(base, params=params, timeout=30, headers={
            **headers, "Upstream-URL": upstream.url + "/text?n=2", "Upstream-Method": "GET"})
    elif op == "read":
        r = httpx.get(f"{base}/{sid}", params={**params, "offset": "-1"}, headers=headers)
    elif op == "head":
        r = httpx.head(f"{base}/{sid}", params=params, headers=headers)
    elif op == "delete":
        r = httpx.delete(f"{base}/{sid}", params=params, headers=headers)
    else:
        r = httpx.patch(f"{base}/{sid}", params={**params, "action": "abort"}, headers=headers)
    status, code = expected(op, credential_name)
    assert r.status_code == status, (r.status_code, r.text)
    if status >= 400 and op != "head":
        assert _code(r) == code, r.text
    if CREDENTIALS[credential_name][0] == "bad" and op != "abort":
        assert "invalid_token" in r.headers["www-authenticate"]
    if status == 403:
        assert "insufficient_scope" in r.headers["www-authenticate"]
    if op == "create" and status == 201:
        read_until_closed(r.headers["location"])  # the upstream call was made once, as asked
    if op == "delete":
        # A refused DELETE changes nothing; an allowed one removes the stream.
        _, url_params = credential("url", sid)
        after = httpx.get(f"{base}/{sid}", params={**url_params, "offset": "-1"})
        assert after.status_code == (404 if status == 204 else 200)
    if op == "read" and status == 200:
        assert r.content == "".join(fake_upstream.token(i) for i in range(3)).encode()


def test_the_secret_in_a_bearer_header_is_not_taken_for_a_token(proxy, upstream):
    """With --auth on, ``Authorization: Bearer <proxy secret>`` still works (the secret
    is tried first), and the read fallback (9.2) takes tokens through ``?token=``."""
    r = create(proxy.url, upstream.url + "/text?n=2", method="GET")
    assert r.status_code == 201
    sid = urlsplit(r.headers["location"]).path.rsplit("/", 1)[1]
    token = mint_token(SIGNING, read=[f"__ds/proxy/s/{sid}"])  # this one stream only
    ok = httpx.get(f"{proxy.url}/v1/proxy/{sid}", params={"token": token, "offset": "-1"})
    assert ok.status_code == 200
    other = _new_stream(proxy, upstream)
    no = httpx.get(f"{proxy.url}/v1/proxy/{other}", params={"token": token, "offset": "-1"})
    assert no.status_code == 403 and no.json()["error"]["code"] == "INSUFFICIENT_SCOPE"


@pytest.fixture(scope="module")
def tokens_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess,
                                                                           Path]]:
    tmp = tmp_path_factory.mktemp("proxy-tokens")
    auth = tmp / "auth.toml"
    auth.write_text(AUTH_FILE)
    log = tmp / "server.log"
    server = proxy_server(log_path=log, secret=None, extra_args=("--auth", str(auth))).start()
    yield server, log
    server.stop()


def test_with_auth_and_no_secret_the_proxy_is_not_open(tokens_only, upstream):
    """--auth without --proxy-secret: tokens are the only service auth; nothing is open."""
    server, log = tokens_only
    url = upstream.url + "/text?n=2"
    r = create(server.url, url, method="GET", secret=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "MISSING_SECRET"
    r = create(server.url, url, method="GET", secret=mint_token(SIGNING, read=[PROXY_STREAMS]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "INSUFFICIENT_SCOPE"
    writer = mint_token(SIGNING, write=[PROXY_STREAMS], read=[PROXY_STREAMS])
    r = create(server.url, url, method="GET", secret=writer)
    assert r.status_code == 201, r.text
    body, last = read_until_closed(r.headers["location"])
    assert last.headers["proxy-outcome"] == "complete"
    assert body == "".join(fake_upstream.token(i) for i in range(2)).encode()
    sid = urlsplit(r.headers["location"]).path.rsplit("/", 1)[1]
    assert httpx.head(f"{server.url}/v1/proxy/{sid}").status_code == 401
    h = httpx.head(f"{server.url}/v1/proxy/{sid}", headers={"Authorization": f"Bearer {writer}"})
    assert h.status_code == 200
    # No "open proxy" warning: the tokens guard it.
    assert "no service secret" not in log.read_text()


def test_open_proxy_warning_names_the_logger_once(tmp_path, upstream):
    """Without a secret or --auth the server warns, with one "duralog:" prefix."""
    log = tmp_path / "server.log"
    server = proxy_server(log_path=log, secret=None).start()
    try:
        r = create(server.url, upstream.url + "/text?n=1", method="GET", secret=None)
        assert r.status_code == 201  # open, as the warning says
    finally:
        server.stop()
    lines = [line for line in log.read_text().splitlines() if "no service secret" in line]
    assert len(lines) == 1, lines
    assert lines[0].count("duralog:") == 1, lines[0]
