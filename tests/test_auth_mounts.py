"""Access control on the mounted layers, with an auth file, against a real server.

The auth file guards the stream root (subscription control APIs included) and
/metrics; a Yjs document is guarded like a stream of its path
(`yjs/{service}/docs/{doc}`); the subscription endpoints that carry their own
wake token (callback, ack, release) and the public JWKS are left to their own
rules, as are the console's static files and the health probes
(docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from duralog.auth import mint_token

from .servers import ServerProcess, duralog_server

SECRET = "mounts-signing-secret-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("auth-mounts")
    auth = base / "auth.toml"
    auth.write_text(f'signing_secret = "{SECRET}"\n[[token]]\nname = "admin"\n'
                    f'token = "{ADMIN}"\nread = ["**"]\nwrite = ["**"]\nadmin = ["**"]\n')
    proc = duralog_server("memory", log_path=base / "server.log",
                          extra=["--auth", str(auth)]).start()
    yield proc
    proc.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_yjs_documents_need_the_scope_of_their_path(server: ServerProcess) -> None:
    doc = f"{server.url}/v1/yjs/svc/docs/notes/today"
    reader = mint_token(SECRET, read=["yjs/svc/docs/notes/**"], ttl=600)
    writer = mint_token(SECRET, read=["yjs/svc/**"], write=["yjs/svc/**"], ttl=600)
    elsewhere = mint_token(SECRET, read=["yjs/other/**"], write=["yjs/other/**"], ttl=600)
    assert httpx.put(doc).status_code == 401
    assert httpx.put(doc, headers=bearer(reader)).status_code == 403
    assert httpx.put(doc, headers=bearer(elsewhere)).status_code == 403
    assert httpx.put(doc, headers=bearer(writer)).status_code == 201
    assert httpx.get(doc, params={"offset": "-1"}).status_code == 401
    assert httpx.get(doc, params={"offset": "-1"}, headers=bearer(reader)).status_code == 200
    assert httpx.get(doc, params={"offset": "-1"},
                     headers=bearer(elsewhere)).status_code == 403
    assert httpx.delete(doc, headers=bearer(writer)).status_code == 403  # admin deletes
    assert httpx.delete(doc, headers=bearer(ADMIN)).status_code == 204


def test_subscription_control_needs_admin_but_wake_tokens_pass(server: ServerProcess) -> None:
    root = f"{server.url}/v1/stream/__ds"
    body = {"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/pool"}
    httpx.put(f"{server.url}/v1/stream/wake/pool",
              headers={"content-type": "application/json", **bearer(ADMIN)})
    assert httpx.put(f"{root}/subscriptions/s1", json=body).status_code == 401
    writer = mint_token(SECRET, read=["**"], write=["**"], ttl=600)
    assert httpx.put(f"{root}/subscriptions/s1", json=body,
                     headers=bearer(writer)).status_code == 403
    created = httpx.put(f"{root}/subscriptions/s1", json=body, headers=bearer(ADMIN))
    assert created.status_code == 201, created.text
    # The JWKS is public (PROTOCOL.md 6.5).
    assert httpx.get(f"{root}/jwks.json").status_code == 200
    # An ack carries the claim's own token, which the auth file does not know: the
    # subscription answers it (here: no such claim), not the auth layer's 401.
    ack = httpx.post(f"{root}/subscriptions/s1/ack", json={"generation": 1, "acks": []},
                     headers=bearer("not-an-auth-file-token"))
    assert "invalid token" not in ack.text
    assert ack.headers["content-type"].startswith("application/json"), ack.text


def test_console_and_probes_are_open_metrics_need_admin(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/", headers={"accept": "text/html"}).status_code == 200
    assert httpx.get(server.url + "/console/app.js").status_code == 200
    info = httpx.get(server.url + "/console/info").json()
    assert info["auth"] is True and info["dataDir"] is None
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/metrics", headers=bearer(ADMIN)).status_code == 200


def test_console_in_a_browser_says_what_401_means_and_works_with_a_token(
        server: ServerProcess, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from .test_console import CHROMIUM, CHROMIUM_ARGS

    httpx.put(f"{server.url}/v1/stream/private-chat", headers={
        "content-type": "application/json", **bearer(ADMIN)})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.locator("#notice", has_text="needs a token").wait_for()
        page.fill("#token", ADMIN)
        page.click("#token-form button")
        page.locator("#stream-rows tr", has_text="private-chat").wait_for()
        # A read-only token may look but not write: the 403 is said as such.
        reader = mint_token(SECRET, read=["**"], ttl=600)
        page.fill("#token", reader)
        page.click("#token-form button")
        page.goto(f"{server.url}/#/s/private-chat")
        page.locator("#s-status", has_text="live").wait_for()
        page.fill("#s-input", '{"n": 1}')
        page.keyboard.press("Enter")
        page.locator("#s-result", has_text="not allowed").wait_for()
        browser.close()
