"""Access control against real servers: the auth matrix of issue 9, CORS, Host, rate limits.

The matrix: every operation x every token state (a valid token of each single
scope, a token of every scope; for each single scope and for all three: a token
for other paths, expired, forged; a tampered token, an unknown static token,
none) x where the token travels (Authorization header, ``token`` query
parameter), on both backends. The expected answer comes from the scope table
in docs/security.md, not from the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from duralog.auth import mint_token

from .servers import ServerProcess, duralog_server

SECRET = "matrix-signing-secret-0123456789abcdef"
BACKEND_TOKEN = "w-backend-token-0123456789"
STATIC = {"read": "static-read-token-0123", "write": "static-write-token-0123",
          "admin": "static-admin-token-0123"}
AUTH_FILE = f"""
signing_secret = "{SECRET}"
[[token]]
name = "backend"
token = "{BACKEND_TOKEN}"
read = ["**"]
write = ["**"]
admin = ["**"]
""" + "".join(f"""
[[token]]
name = "static-{scope}"
token = "{value}"
{scope} = ["m/**"]
""" for scope, value in STATIC.items()) + """
[anonymous]
read = ["public/**"]
"""

OPERATIONS = ["create", "append", "close", "catch-up", "long-poll", "sse", "head", "delete",
              "fork", "registry"]
# docs/security.md: the scopes each operation needs (fork: admin on the new stream and
# read on its source).
NEEDS = {"create": {"write"}, "append": {"write"}, "close": {"write"},
         "catch-up": {"read"}, "long-poll": {"read"}, "sse": {"read"}, "head": {"read"},
         "delete": {"admin"}, "fork": {"admin", "read"}, "registry": {"read"}}
SUCCESS = {"create": 201, "append": 204, "close": 204, "catch-up": 200, "long-poll": 200,
           "sse": 200, "head": 200, "delete": 204, "fork": 201, "registry": 200}


def _token_states() -> dict[str, tuple[str | None, set[str], bool]]:
    """name -> (token, scopes it grants on m/**, whether it is valid at all)."""
    all_scopes = {"read", "write", "admin"}
    states: dict[str, tuple[str | None, set[str], bool]] = {}
    for scope in sorted(all_scopes):
        states[f"minted-{scope}"] = (mint_token(SECRET, **{scope: ["m/**"]}, ttl=3600),
                                     {scope}, True)
        states[f"static-{scope}"] = (STATIC[scope], {scope}, True)
        # The failing states for each single scope too, not only for a token of all
        # three: an expired or forged read token is refused like any other.
        states[f"wrong-scope-{scope}"] = (mint_token(SECRET, **{scope: ["other/**"]}),
                                          set(), True)
        states[f"expired-{scope}"] = (mint_token(SECRET, **{scope: ["m/**"]}, ttl=60,
                                                 now=time.time() - 3600), set(), False)
        states[f"forged-{scope}"] = (mint_token("another-secret-of-at-least-32-bytes!!",
                                                **{scope: ["m/**"]}), set(), False)
    every = {s: ["m/**"] for s in all_scopes}
    states["minted-all"] = (mint_token(SECRET, **every, ttl=3600), all_scopes, True)
    states["wrong-scope"] = (mint_token(SECRET, **{s: ["other/**"] for s in all_scopes}),
                             set(), True)
    states["expired"] = (mint_token(SECRET, **every, ttl=60, now=time.time() - 3600),
                         set(), False)
    forged = mint_token("another-secret-of-at-least-32-bytes!!", **every)
    states["forged"] = (forged, set(), False)
    good = mint_token(SECRET, **every)
    sig = good.rsplit(".", 1)[1]
    states["tampered"] = (mint_token(SECRET, read=["x"]).rsplit(".", 1)[0] + "." + sig,
                          set(), False)
    states["bad-static"] = ("static-read-token-0124", set(), False)
    states["missing"] = (None, set(), False)
    return states


TOKEN_STATES = _token_states()


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def auth_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"auth-{request.param}")
    auth = base / "auth.toml"
    auth.write_text(AUTH_FILE)
    server = duralog_server(request.param, data_dir=base / "data",
                            extra=["--auth", str(auth), "--long-poll-timeout", "2"],
                            log_path=base / "server.log").start()
    yield server
    server.stop()
    log = (base / "server.log").read_text(errors="replace")
    for token, _, _ in TOKEN_STATES.values():
        assert token is None or token not in log, "a token reached the server log"


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {BACKEND_TOKEN}"}


def _setup(client: httpx.Client, base: str, op: str) -> str:
    """A fresh stream under m/ with one message, and what the operation needs around it."""
    name = f"m/{op}-{uuid.uuid4().hex[:10]}"
    r = client.put(f"{base}/{name}", headers={**_admin(), "content-type": "text/plain"},
                   content=b"hello")
    assert r.status_code == 201, r.text
    return name


def _do(client: httpx.Client, base: str, op: str, name: str, token: str | None,
        where: str) -> httpx.Response:
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if token is not None:
        if where == "header":
            headers["authorization"] = f"Bearer {token}"
        else:
            params["token"] = token
    url = f"{base}/{name}"
    if op == "create":
        return client.put(f"{url}-new", headers={**headers, "content-type": "text/plain"},
                          params=params)
    if op == "append":
        return client.post(url, headers={**headers, "content-type": "text/plain"},
                           params=params, content=b" world")
    if op == "close":
        return client.post(url, headers={**headers, "stream-closed": "true"}, params=params)
    if op == "catch-up":
        return client.get(url, headers=headers, params={**params, "offset": "-1"})
    if op == "long-poll":
        return client.get(url, headers=headers,
                          params={**params, "offset": "-1", "live": "long-poll"})
    if op == "sse":
        with client.stream("GET", url, headers=headers,
                           params={**params, "offset": "-1", "live": "sse"}) as r:
            if r.status_code == 200:
                first = next(r.iter_raw())
                assert b"event: data" in first or b"event:" in first
            else:
                r.read()
            return r
    if op == "head":
        return client.head(url, headers=headers, params=params)
    if op == "delete":
        return client.delete(url, headers=headers, params=params)
    if op == "fork":
        return client.put(f"{url}-fork", params=params, headers={
            **headers, "stream-forked-from": f"/v1/stream/{name}"})
    if op == "registry":
        return client.get(f"{base}/__registry__", headers=headers,
                          params={**params, "offset": "-1"})
    raise AssertionError(op)


# A missing token travels nowhere: one case, not two.
CASES = [(state, where) for state in TOKEN_STATES for where in ("header", "query")
         if not (state == "missing" and where == "query")]


@pytest.mark.parametrize(("state", "where"), CASES)
def test_auth_matrix(auth_server: ServerProcess, state: str, where: str) -> None:
    token, scopes, valid = TOKEN_STATES[state]
    base = auth_server.url + "/v1/stream"
    checked = 0
    with httpx.Client(timeout=10) as client:
        for op in OPERATIONS:
            name = _setup(client, base, op)
            r = _do(client, base, op, name, token, where)
            if op == "registry":
                expected = 401 if (token is not None and not valid) else 200
                assert r.status_code == expected, (op, state, where, r.status_code, r.text)
                if r.status_code == 200:
                    keys = [e["key"] for e in r.json()]
                    # Only streams this token (or anyone) may read are listed.
                    if "read" in scopes:
                        assert name in keys
                    assert all((k.startswith("m/") and "read" in scopes)
                               or k.startswith("public/") for k in keys), keys
                    assert r.headers["cache-control"].startswith("private")
                checked += 1
                continue
            if not valid:
                expected = 401  # missing, expired, forged, unknown
            elif NEEDS[op] <= scopes:
                expected = SUCCESS[op]
            else:
                expected = 403  # a good token outside its scope
            assert r.status_code == expected, (op, state, where, r.status_code, r.text)
            if expected in (401, 403):
                assert "Bearer" in r.headers["www-authenticate"]
                if op != "head":
                    assert r.text.count("\n") == 1 and len(r.text) < 200, r.text
            if expected == 401 and token is not None:
                assert token not in r.text
            if r.status_code == 200 and op in ("catch-up", "long-poll"):
                # 12.2: an answer that needed a token is never cached publicly.
                assert not r.headers.get("cache-control", "").startswith("public")
            # Refused writes changed nothing.
            if expected >= 400 and op in ("append", "close", "delete"):
                check = client.get(f"{base}/{name}", headers=_admin(), params={"offset": "-1"})
                assert check.status_code == 200 and check.content == b"hello"
                assert "stream-closed" not in check.headers
            checked += 1
    assert checked == len(OPERATIONS)


def test_anonymous_read_is_public_and_cacheable(auth_server: ServerProcess) -> None:
    base = auth_server.url + "/v1/stream"
    with httpx.Client(timeout=10) as client:
        r = client.put(f"{base}/public/news", headers={**_admin(), "content-type": "text/plain"},
                       content=b"hi")
        assert r.status_code in (200, 201)
        r = client.get(f"{base}/public/news", params={"offset": "-1"})
        assert r.status_code == 200 and r.content == b"hi"
        assert r.headers["cache-control"].startswith("public")
        # Reading needs no token there, but writing still does.
        assert client.post(f"{base}/public/news", content=b"x",
                           headers={"content-type": "text/plain"}).status_code == 401
        # Private streams read with a token are not publicly cacheable.
        r = client.get(f"{base}/public/news", params={"offset": "-1"}, headers=_admin())
        assert r.headers["cache-control"].startswith("public")


def test_token_query_parameter_is_not_passed_on(auth_server: ServerProcess) -> None:
    """The token parameter is removed before the app parses the query: no 400 for an
    unknown or duplicated parameter, and the offset still counts."""
    base = auth_server.url + "/v1/stream"
    with httpx.Client(timeout=10) as client:
        name = _setup(client, base, "q")
        r = client.get(f"{base}/{name}?offset=-1&token={BACKEND_TOKEN}")
        assert r.status_code == 200 and r.content == b"hello"
        r = client.get(f"{base}/{name}?offset=-1&token=a&token=b")
        assert r.status_code == 400


def test_cors_with_auth(tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH_FILE)
    server = duralog_server("memory", extra=[
        "--auth", str(auth), "--cors-origins", "https://app.example,*"]).start()
    base = server.url + "/v1/stream"
    try:
        with httpx.Client(timeout=10) as client:
            pre = {"access-control-request-method": "DELETE"}
            r = client.options(f"{base}/m/x", headers={**pre, "origin": "https://evil.example"})
            assert r.status_code == 403
            assert "access-control-allow-origin" not in r.headers or \
                r.headers["access-control-allow-origin"] == "*"
            r = client.options(f"{base}/m/x", headers={**pre, "origin": "https://app.example"})
            assert r.status_code == 204
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            assert r.headers["access-control-allow-credentials"] == "true"
            assert "DELETE" in r.headers["access-control-allow-methods"]
            # A read preflight from anywhere is fine (public streams in browsers).
            r = client.options(f"{base}/public/x", headers={
                "access-control-request-method": "GET", "origin": "https://evil.example"})
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in r.headers
            # A write that skips the preflight (a "simple" request) is refused anyway,
            # even with a valid token.
            r = client.post(f"{base}/m/x", content=b"x", headers={
                **_admin(), "origin": "https://evil.example", "content-type": "text/plain"})
            assert r.status_code == 403
            r = client.put(f"{base}/m/cors", headers={
                **_admin(), "origin": "https://app.example", "content-type": "text/plain"})
            assert r.status_code == 201
            assert r.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        server.stop()


def test_cors_without_auth_stays_open(memory_server: ServerProcess) -> None:
    r = httpx.options(memory_server.url + "/v1/stream/x", headers={
        "origin": "https://any.example", "access-control-request-method": "DELETE"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "DELETE" in r.headers["access-control-allow-methods"]


def test_rate_limits(tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH_FILE.replace("[anonymous]", """[rate_limit]
per_token = { rate = 0.5, burst = 3 }
per_address = { rate = 0.5, burst = 12 }
[anonymous]"""))
    server = duralog_server("memory", extra=["--auth", str(auth)]).start()
    base = server.url + "/v1/stream"
    try:
        with httpx.Client(timeout=10) as client:
            statuses = [client.head(f"{base}/m/none", headers=_admin()).status_code
                        for _ in range(4)]
            assert statuses[:3] == [404, 404, 404]
            r = client.head(f"{base}/m/none", headers=_admin())
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            # Another token has its own budget...
            other = {"authorization": f"Bearer {STATIC['read']}"}
            assert client.head(f"{base}/m/none", headers=other).status_code == 404
            # ... but the address runs out after its burst of 12 (the start-up probe
            # and the requests above counted too).
            statuses = [client.get(f"{base}/public/x", params={"offset": "-1"}).status_code
                        for _ in range(12)]
            assert statuses[0] == 404 and statuses[-1] == 429, statuses
            r = client.get(f"{base}/public/x", params={"offset": "-1"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    finally:
        server.stop()


@pytest.mark.parametrize("raw", [
    b"GET /v1/stream/x HTTP/1.1\r\n\r\n",
    b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
def test_missing_or_repeated_host(memory_server: ServerProcess, raw: bytes) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", memory_server.port), timeout=5) as s:
        s.sendall(raw)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"x-content-type-options: nosniff" in answer


def test_allowed_hosts() -> None:
    server = duralog_server("memory", extra=["--allowed-hosts", "streams.example"]).start()
    try:
        r = httpx.put(server.url + "/v1/stream/h", headers={"host": "attacker.example"})
        assert r.status_code == 400 and "Host" in r.text
        r = httpx.put(server.url + "/v1/stream/h", headers={"host": "streams.example:4437"})
        assert r.status_code == 201
        assert r.headers["location"].startswith("http://streams.example:4437/")
    finally:
        server.stop()


def test_open_server_off_loopback_warns(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = duralog_server("memory", extra=["--host", "0.0.0.0"], log_path=log).start()
    server.stop()
    assert "WARNING: no --auth" in log.read_text()
    quiet = tmp_path / "quiet.log"
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH_FILE)
    server = duralog_server("memory", extra=["--host", "0.0.0.0", "--auth", str(auth)],
                            log_path=quiet).start()
    server.stop()
    assert "no --auth" not in quiet.read_text()
    local = tmp_path / "local.log"
    duralog_server("memory", log_path=local).start().stop()
    assert "no --auth" not in local.read_text()
