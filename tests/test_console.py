"""The web console in a real browser: Debian's Chromium, headless, driven by
Playwright for Python, against a real `duralog serve`.

Each test does what a person would do on the page and checks the result both
on the page and over HTTP. Screenshots land in the test's temporary directory;
with DURALOG_UPDATE_SCREENSHOTS=1 they also replace docs/console/*.png.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import playwright.sync_api as playwright_api
import pytest

from .servers import ROOT, ServerProcess, duralog_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed root CI machine with no network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("console")
    proc = duralog_server("memory", log_path=base / "server.log",
                          extra=["--long-poll-timeout", "5"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required: scripts/test installs it")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"the page threw: {errors}"


def new_page(browser: object, **options: object) -> object:
    return browser.new_context(viewport={"width": 1280, "height": 800}, **options).new_page()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put(server: ServerProcess, name: str, content_type: str = "application/json") -> None:
    r = httpx.put(f"{server.url}/v1/stream/{name}", headers={"content-type": content_type})
    assert r.status_code in (200, 201), r.text


def post(server: ServerProcess, name: str, body: bytes,
         content_type: str = "application/json") -> httpx.Response:
    r = httpx.post(f"{server.url}/v1/stream/{name}", content=body,
                   headers={"content-type": content_type}, timeout=30)
    assert r.status_code in (200, 204), r.text
    return r


def messages(server: ServerProcess, name: str) -> list[object]:
    r = httpx.get(f"{server.url}/v1/stream/{name}", params={"offset": "-1"})
    assert r.status_code == 200
    return r.json()


def rows(pg: object) -> list[str]:
    return pg.locator("#s-list .row").all_inner_texts()


def wait_rows(pg: object, text: str, timeout: float = 10_000) -> None:
    pg.locator("#s-list .row", has_text=text).first.wait_for(timeout=timeout)


def shot(pg: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    pg.screenshot(path=str(path))
    if os.environ.get("DURALOG_UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "console"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / f"{name}.png")


def test_root_serves_the_page_to_browsers_and_json_to_api_clients(server: ServerProcess) -> None:
    html = httpx.get(server.url + "/", headers={"accept": "text/html"})
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["content-security-policy"]
    assert httpx.get(server.url + "/").json()["server"] == "duralog"
    info = httpx.get(server.url + "/console/info").json()
    assert info["backend"] == "memory" and info["streamPrefix"] == "/v1/stream/"
    assert httpx.get(server.url + "/console/nope.js").status_code == 404
    assert httpx.post(server.url + "/console/info").status_code == 405


def test_no_console_flag_turns_the_page_off(tmp_path: Path) -> None:
    proc = duralog_server("memory", extra=["--no-console"]).start()
    try:
        r = httpx.get(proc.url + "/console/app.js")
        assert r.status_code == 404
        assert httpx.get(proc.url + "/", headers={"accept": "text/html"}).json()["server"]
    finally:
        proc.stop()


def test_create_write_and_follow_live_in_a_second_page(
        server: ServerProcess, page: object, browser: object, tmp_path: Path) -> None:
    name = unique("chat")
    page.goto(server.url + "/")
    page.click("#new-stream")
    page.fill("#create-form input[name=name]", name)
    page.select_option("#create-form select[name=type]", "application/json")
    page.click("#create-form button[value=ok]")
    page.wait_for_url(f"**/#/s/{name}**")
    page.locator("#s-status", has_text="live").wait_for()

    follower = new_page(browser)
    follower.goto(f"{server.url}/#/s/{name}")
    follower.locator("#s-status", has_text="live").wait_for()

    page.fill("#s-input", '{"role": "user", "text": "hello"}')
    page.keyboard.press("Enter")
    page.locator("#s-result", has_text="stored").wait_for()
    wait_rows(follower, '"text":"hello"')

    # Shift+Enter is a newline, not a send; bad JSON is refused before sending.
    page.fill("#s-input", "not json")
    page.keyboard.press("Shift+Enter")
    assert page.input_value("#s-input") == "not json\n"
    page.keyboard.press("Enter")
    page.locator("#s-result", has_text="Not JSON").wait_for()
    assert messages(server, name) == [{"role": "user", "text": "hello"}]
    follower.context.close()

    # A text stream reads as a log.
    log = unique("log")
    page.goto(server.url + "/")
    page.click("#new-stream")
    page.fill("#create-form input[name=name]", log)
    page.select_option("#create-form select[name=type]", "text/plain")
    page.click("#create-form button[value=ok]")
    page.wait_for_url(f"**/#/s/{log}**")
    page.locator("#s-status", has_text="live").wait_for()
    page.fill("#s-input", "first line")
    page.keyboard.press("Enter")
    wait_rows(page, "first line")
    post(server, log, b"second ", "text/plain")
    post(server, log, b"line\n", "text/plain")
    wait_rows(page, "second line")
    r = httpx.get(f"{server.url}/v1/stream/{log}", params={"offset": "-1"})
    assert r.text == "first line\nsecond line\n"
    shot(page, tmp_path, "text-log")


def test_refresh_resumes_at_the_same_offset_with_nothing_repeated(
        server: ServerProcess, page: object) -> None:
    name = unique("resume")
    put(server, name)
    post(server, name, b'[{"n": 1}, {"n": 2}, {"n": 3}]')
    page.goto(f"{server.url}/#/s/{name}")
    wait_rows(page, '"n":3')
    post(server, name, b'{"n": 4}')
    wait_rows(page, '"n":4')
    tail = httpx.head(f"{server.url}/v1/stream/{name}").headers["stream-next-offset"]
    page.wait_for_function("tail => location.hash.includes('offset=' + tail)", arg=tail)

    page.reload()
    page.locator("#s-status", has_text="live").wait_for()
    assert page.locator("#s-resumed").is_visible()
    post(server, name, b'{"n": 5}')
    wait_rows(page, '"n":5')
    texts = rows(page)
    assert len(texts) == 1 and '"n":5' in texts[0], texts

    # The same link in a new page (a shared link) resumes there too.
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    wait_rows(page, '"n":5')
    assert len(rows(page)) == 1


def test_long_poll_mode_and_a_restart_of_the_server_mid_follow(
        tmp_path: Path, page: object) -> None:
    data = tmp_path / "data"
    proc = duralog_server("sqlite", data_dir=data).start()
    try:
        name = unique("lp")
        put(proc, name)
        page.goto(f"{proc.url}/#/s/{name}?live=long-poll")
        page.locator("#s-status", has_text="long-poll").wait_for()
        post(proc, name, b'{"before": true}')
        wait_rows(page, "before")
        proc.stop()
        page.locator("#s-status", has_text="reconnecting").wait_for(timeout=15_000)
        proc.start()
        post(proc, name, b'{"after": true}')
        wait_rows(page, "after", timeout=20_000)
        assert len(rows(page)) == 2
    finally:
        proc.stop()


def test_binary_stream_shows_a_hex_and_ascii_dump(server: ServerProcess, page: object,
                                                   tmp_path: Path) -> None:
    name = unique("bin")
    put(server, name, "application/octet-stream")
    post(server, name, bytes(range(20)), "application/octet-stream")
    post(server, name, b"duralog!", "application/octet-stream")
    page.goto(f"{server.url}/#/s/{name}")
    wait_rows(page, "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f")
    # The second row: four bytes of the first append, then the second append's.
    wait_rows(page, "10 11 12 13 64 75 72 61 6c 6f 67 21")
    assert any("....duralog!" in t for t in rows(page))
    page.click("#s-inspect")
    page.locator("#s-meta", has_text="28 B").wait_for()
    shot(page, tmp_path, "hex")


def test_fork_close_and_delete_from_the_page(server: ServerProcess, page: object) -> None:
    name = unique("src")
    put(server, name)
    post(server, name, b'[{"a": 1}, {"a": 2}]')
    fork = name + "-fork"
    page.goto(f"{server.url}/#/s/{name}")
    wait_rows(page, '"a":2')
    page.click("#s-fork")
    page.fill("#fork-form input[name=name]", fork)
    page.click("#fork-form button[value=ok]")
    page.wait_for_url(f"**/#/s/{fork}**")
    wait_rows(page, '"a":2', timeout=20_000)
    # HEAD does not name a fork's source (4.2); the registry's insert does.
    assert "stream-forked-from" not in httpx.head(f"{server.url}/v1/stream/{fork}").headers
    inserts = [e for e in messages(server, "__registry__")
               if e["key"] == fork and e["headers"]["operation"] == "insert"]
    assert inserts[-1]["value"]["forkedFrom"] == name
    page.click("#s-inspect")
    page.locator("#s-meta", has_text=f"Forked from{name}").wait_for()
    page.click("#s-inspect")

    page.click("#s-close")
    page.locator("#s-status", has_text="closed").wait_for()
    assert httpx.head(f"{server.url}/v1/stream/{fork}").headers["stream-closed"] == "true"

    page.click("#s-delete")
    page.locator("#confirm-dialog", has_text=f"Delete {fork}?").wait_for()
    page.click("#confirm-dialog button[value=ok]")
    page.wait_for_url("**/#/")
    assert httpx.head(f"{server.url}/v1/stream/{fork}").status_code == 404
    assert httpx.head(f"{server.url}/v1/stream/{name}").status_code == 200


def test_the_stream_list_is_live_and_filters(server: ServerProcess, page: object,
                                             tmp_path: Path) -> None:
    page.goto(server.url + "/")
    name = unique("listed")
    put(server, name)
    row = page.locator("#stream-rows tr", has_text=name)
    row.wait_for()
    post(server, name, b'{"x": "0123456789"}')
    page.fill("#filter", name)
    # The list redraws on the next frame: wait for it rather than count at once.
    page.wait_for_function("() => document.querySelectorAll('#stream-rows tr').length === 1")
    shot(page, tmp_path, "streams")
    httpx.delete(f"{server.url}/v1/stream/{name}")
    row.wait_for(state="detached")
    page.fill("#filter", "")

    # Delete from the list asks first; Cancel keeps the stream.
    other = unique("keep")
    put(server, other)
    page.locator("#stream-rows tr", has_text=other).wait_for()
    page.click(f"button[aria-label='Delete {other}']")
    page.click("#confirm-dialog button[value=cancel]")
    assert httpx.head(f"{server.url}/v1/stream/{other}").status_code == 200


def test_presence_between_two_pages(server: ServerProcess, browser: object) -> None:
    name = unique("room")
    put(server, name)
    alice = new_page(browser)
    bob = new_page(browser)
    try:
        alice.goto(f"{server.url}/#/s/{name}")
        bob.goto(f"{server.url}/#/s/{name}")
        bob.locator("#s-presence", has_text="1 other viewing").wait_for(timeout=15_000)
        alice.locator("#s-presence", has_text="1 other viewing").wait_for(timeout=15_000)
        alice.fill("#s-input", "")
        alice.type("#s-input", "{")
        bob.locator("#s-presence", has_text="typing").wait_for(timeout=15_000)
        # What the reference Test UI reads: presence events keyed by session id.
        events = messages(server, "__presence__")
        mine = [e for e in events if e.get("value", {}).get("streamPath") == name]
        assert {e["type"] for e in mine} == {"presence"}
        assert all(e["key"] == e["value"]["sessionId"] for e in mine)
        assert any(e["value"]["isTyping"] for e in mine)
    finally:
        alice.context.close()
        bob.context.close()


def test_100000_messages_stay_responsive_while_1000_per_second_arrive(
        server: ServerProcess, page: object, tmp_path: Path) -> None:
    name = unique("big")
    put(server, name)
    batch = b"[" + b",".join(b'{"i":%d,"text":"message number %d"}' % (i, i)
                             for i in range(10_000)) + b"]"
    for _ in range(10):
        post(server, name, batch)
    page.goto(f"{server.url}/#/s/{name}")
    page.locator("#s-count", has_text="100,000 messages").wait_for(timeout=60_000)
    page.locator("#s-status", has_text="live").wait_for()
    # Virtualized: only the rows in view are in the DOM.
    assert page.locator("#s-list .row").count() < 120

    stop = threading.Event()
    sent = [0]

    def writer() -> None:  # 1,000 messages a second, in 20 appends of 50
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() and sent[0] < 6_000:
                body = b"[" + b",".join(b'{"live":%d}' % (sent[0] + k) for k in range(50)) + b"]"
                client.post(f"{server.url}/v1/stream/{name}", content=body,
                            headers={"content-type": "application/json"})
                sent[0] += 50
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # Input latency: from each keydown to the next frame the page paints.
        page.evaluate("""() => {
            window.__latencies = [];
            document.getElementById('s-input').addEventListener('keydown', (e) => {
                const t = e.timeStamp;
                requestAnimationFrame(() => window.__latencies.push(performance.now() - t));
            });
        }""")
        page.click("#s-input")
        page.keyboard.type("responsive while busy", delay=40)
        page.locator("#s-list").evaluate("el => { el.scrollTop = el.scrollHeight / 2 }")
        page.keyboard.type(" and scrolled", delay=40)
    finally:
        stop.set()
        thread.join()
    latencies = sorted(page.evaluate("window.__latencies"))
    assert len(latencies) == len("responsive while busy and scrolled")
    median = latencies[len(latencies) // 2]
    print(f"console input latency with 100,000+ messages and 1,000/s arriving: "
          f"median {median:.1f} ms, max {latencies[-1]:.1f} ms")
    assert median < 100, latencies
    total = 100_000 + sent[0]
    page.locator("#s-count", has_text=f"{total:,} messages").wait_for(timeout=30_000)
    shot(page, tmp_path, "big-stream")


def test_screenshots_light_dark_and_phone(server: ServerProcess, browser: object,
                                          tmp_path: Path) -> None:
    name = unique("screens")
    put(server, name)
    post(server, name, b'[{"role": "user", "text": "What is a durable stream?"},'
                       b'{"role": "assistant", "text": "An append-only log at a URL.",'
                       b' "usage": {"tokens": 12}}]')
    for scheme in ("light", "dark"):
        pg = new_page(browser, color_scheme=scheme)
        pg.goto(server.url + "/")
        pg.locator("#stream-rows tr", has_text=name).wait_for()
        shot(pg, tmp_path, f"streams-{scheme}")
        pg.goto(f"{server.url}/#/s/{name}")
        wait_rows(pg, "assistant")
        pg.locator(".row .fold").nth(1).click()
        pg.click("#s-inspect")
        pg.locator("#s-meta", has_text="Next offset").wait_for()
        shot(pg, tmp_path, f"stream-{scheme}")
        pg.context.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    phone.goto(f"{server.url}/#/s/{name}")
    wait_rows(phone, "assistant")
    # Nothing wider than the screen: the page does not scroll sideways.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shot(phone, tmp_path, "stream-phone")
    phone.context.close()
