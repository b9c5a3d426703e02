"""Subscriptions (PROTOCOL.md 6-7) beyond the official suite, against real servers.

Webhook receivers are real HTTP servers in this process (tests/webhook_receiver.py);
servers run in subprocesses so kill -9 is a real crash.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .servers import ServerProcess, duralog_server, free_port
from .webhook_receiver import Receiver

SUBS = "/v1/stream/__ds/subscriptions"


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def verify(raw: bytes, header: str, jwks: dict[str, Any]) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    key = next((k for k in jwks["keys"] if k["kid"] == fields["kid"]), None)
    if key is None:
        return False
    x = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    sig = base64.urlsafe_b64decode(fields["ed25519"] + "=" * (-len(fields["ed25519"]) % 4))
    try:
        Ed25519PublicKey.from_public_bytes(x).verify(sig, fields["t"].encode() + b"." + raw)
    except Exception:
        return False
    return abs(time.time() - int(fields["t"])) < 300


def start(backend: str, tmp_path: Path, **env: str) -> ServerProcess:
    server = duralog_server(backend, data_dir=tmp_path / "data",
                            log_path=tmp_path / "server.log")
    server.env = {f"DURALOG_{k.upper()}": v for k, v in env.items()}
    return server.start()


class Api:
    def __init__(self, server: ServerProcess) -> None:
        self.base = server.url
        self.c = httpx.Client(timeout=30)

    def sub(self, sub_id: str, method: str = "GET", body: Any = None, suffix: str = "",
            token: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.c.request(method, f"{self.base}{SUBS}/{sub_id}{suffix}", json=body,
                              headers=headers)

    def stream(self, path: str, method: str = "PUT", body: Any = None) -> httpx.Response:
        return self.c.request(method, f"{self.base}/v1/stream/{path}", json=body)

    def acked(self, sub_id: str) -> dict[str, str]:
        return {s["path"]: s["acked_offset"] for s in self.sub(sub_id).json()["streams"]}

    def tail(self, path: str) -> str:
        return self.c.head(f"{self.base}/v1/stream/{path}").headers["stream-next-offset"]

    def wakes(self, path: str) -> list[dict[str, Any]]:
        return self.c.get(f"{self.base}/v1/stream/{path}", params={"offset": "-1"}).json()


@pytest.fixture
def receiver() -> Any:
    r = Receiver(free_port()).start()
    yield r
    r.stop()


def test_webhook_wake_is_signed_and_done_acks_the_snapshot(tmp_path: Path,
                                                           receiver: Receiver) -> None:
    receiver.respond = lambda body: (200, {"done": True})
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        r = api.sub("s1", "PUT", {"type": "webhook", "pattern": "events/*",
                                  "webhook": {"url": receiver.url}})
        assert r.status_code == 201, r.text
        jwks = api.c.get(r.json()["webhook"]["signing"]["jwks_url"]).json()
        api.stream("events/a", body={"n": 1})
        got = receiver.wait_for(lambda reqs: len(reqs) >= 1)[0]
        assert verify(got["raw"], got["headers"]["webhook-signature"], jwks)
        assert not verify(got["raw"] + b" ", got["headers"]["webhook-signature"], jwks)
        assert got["body"]["subscription_id"] == "s1" and got["body"]["generation"] == 1
        wait_until(lambda: api.acked("s1").get("events/a") == api.tail("events/a"))
        api.stream("events/a", "POST", {"n": 2})
        second = receiver.wait_for(lambda reqs: len(reqs) >= 2)[1]
        assert second["body"]["generation"] == 2
        assert second["body"]["wake_id"] != got["body"]["wake_id"]
        wait_until(lambda: api.acked("s1").get("events/a") == api.tail("events/a"))
    finally:
        server.stop()


def test_callback_fences_stale_wakes_and_wakes_again(tmp_path: Path, receiver: Receiver
                                                     ) -> None:
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        api.sub("cb", "PUT", {"type": "webhook", "streams": ["jobs/x"],
                              "webhook": {"url": receiver.url}})
        api.stream("jobs/x", body={"n": 1})
        wake = receiver.wait_for(lambda reqs: len(reqs) >= 1)[0]["body"]
        cb = wake["callback_url"]
        tail = wake["streams"][0]["tail_offset"]
        ack = {"wake_id": wake["wake_id"], "generation": wake["generation"],
               "acks": [{"stream": "jobs/x", "offset": tail}]}
        assert api.c.post(cb, json=ack).status_code == 401  # no token
        bad = api.c.post(cb, json=ack, headers={"authorization": "Bearer nope.nope"})
        assert bad.json()["error"]["code"] == "TOKEN_INVALID"
        auth = {"authorization": f"Bearer {wake['callback_token']}"}
        stale = api.c.post(cb, json={**ack, "generation": wake["generation"] - 1}, headers=auth)
        assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")
        far = "0000000000000000_0000000099999999"
        beyond = api.c.post(cb, json={**ack, "acks": [{"stream": "jobs/x", "offset": far}]},
                            headers=auth)
        assert (beyond.status_code, beyond.json()["error"]["code"]) == (409, "INVALID_OFFSET")
        heartbeat = api.c.post(cb, json=ack, headers=auth)  # no done: extends the lease
        assert heartbeat.json() == {"ok": True, "next_wake": False}
        assert api.acked("cb")["jobs/x"] == tail
        api.stream("jobs/x", "POST", {"n": 2})
        done = api.c.post(cb, json={**ack, "acks": [], "done": True}, headers=auth)
        assert done.json() == {"ok": True, "next_wake": True}  # 7.1: new events, new wake
        again = receiver.wait_for(lambda reqs: len(reqs) >= 2)[1]["body"]
        assert again["generation"] == wake["generation"] + 1
        replay = api.c.post(cb, json={**ack, "done": True}, headers=auth)
        assert replay.json()["error"]["code"] == "FENCED"
        api.sub("cb", "DELETE")
        gone = api.c.post(cb, json={"wake_id": again["wake_id"],
                                    "generation": again["generation"], "done": True},
                          headers={"authorization": f"Bearer {again['callback_token']}"})
        assert (gone.status_code, gone.json()["error"]["code"]) == (404,
                                                                    "SUBSCRIPTION_NOT_FOUND")
    finally:
        server.stop()


def test_globs_membership_and_backfill(tmp_path: Path) -> None:
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        api.stream("wake/w", body=[])
        for path in ("a/x", "a/b/y", "a/b/c/z", "b/x"):
            api.stream(path, body={"old": True})
        api.sub("deep", "PUT", {"type": "pull-wake", "pattern": "a/**", "wake_stream": "wake/w"})
        api.sub("one", "PUT", {"type": "pull-wake", "pattern": "a/*/y", "wake_stream": "wake/w"})
        deep = api.sub("deep").json()["streams"]
        assert sorted(s["path"] for s in deep) == ["a/b/c/z", "a/b/y", "a/x"]
        # 6.2: backfilled at the tail, so history is not pending.
        assert all(s["acked_offset"] == api.tail(s["path"]) for s in deep)
        assert [s["path"] for s in api.sub("one").json()["streams"]] == ["a/b/y"]
        assert api.sub("one", "POST", {"streams": ["b/x", "b/x"]}, "/streams").status_code == 204
        assert api.sub("one", "POST", {"streams": ["a/b/y"]}, "/streams").status_code == 204
        links = {s["path"]: s["link_type"] for s in api.sub("one").json()["streams"]}
        assert links == {"a/b/y": "explicit", "b/x": "explicit"}
        # Removing the explicit link keeps the glob link (6.1).
        assert api.sub("one", "DELETE", suffix="/streams/a%2Fb%2Fy").status_code == 204
        assert api.sub("one", "DELETE", suffix="/streams/b%2Fx").status_code == 204
        assert api.sub("one", "DELETE", suffix="/streams/b%2Fx").status_code == 204
        links = {s["path"]: s["link_type"] for s in api.sub("one").json()["streams"]}
        assert links == {"a/b/y": "glob"}
        api.stream("a/new", body={"n": 1})  # discovered by its first append
        assert api.acked("deep")["a/new"] == "0000000000000000_0000000000000000"
        claimed = api.c.post(f"{server.url}{SUBS}/deep/claim", json={"worker": "w"}).json()
        pending = {s["path"]: s["has_pending"] for s in claimed["streams"]}
        assert pending == {"a/new": True, "a/x": False, "a/b/y": False, "a/b/c/z": False}
        assert claimed["streams"][0]["path"] == "a/new"  # pending streams come first
    finally:
        server.stop()


BAD: list[tuple[str, str, Any, int, str]] = [
    ("PUT", "", b"{not json", 400, "INVALID_REQUEST"),
    ("PUT", "", [], 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "carrier-pigeon", "pattern": "x/*"}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "webhook", "pattern": "x/*"}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "webhook", "pattern": "x/*", "webhook": {"url": 5}}, 400,
     "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "pattern": "x/*"}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "wake_stream": "w"}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "pattern": "x/*", "wake_stream": "w",
                 "lease_ttl_ms": 999}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "pattern": "x/*", "wake_stream": "w",
                 "lease_ttl_ms": 600_001}, 400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "pattern": "/".join(["**"] * 65), "wake_stream": "w"},
     400, "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "streams": ["s"] * 1001, "wake_stream": "w"}, 400,
     "INVALID_REQUEST"),
    ("PUT", "", {"type": "pull-wake", "streams": [7], "wake_stream": "w"}, 400,
     "INVALID_REQUEST"),
    ("PUT", "", {"type": "webhook", "pattern": "x/*",
                 "webhook": {"url": "http://169.254.169.254/latest"}}, 400,
     "WEBHOOK_URL_REJECTED"),
    ("PUT", "", {"type": "webhook", "pattern": "x/*",
                 "webhook": {"url": "https://[fd00::1]/hook"}}, 400, "WEBHOOK_URL_REJECTED"),
    ("PUT", "", {"type": "webhook", "pattern": "x/*",
                 "webhook": {"url": "ftp://example.com/"}}, 400, "WEBHOOK_URL_REJECTED"),
    # A different configuration under an existing id.
    ("PUT", "", {"type": "pull-wake", "pattern": "other/*", "wake_stream": "w"}, 409,
     "SUBSCRIPTION_ALREADY_EXISTS"),
    ("POST", "/streams", {"streams": []}, 400, "INVALID_REQUEST"),
    ("POST", "/streams", {"streams": ["__ds/x"]}, 400, "INVALID_REQUEST"),
    ("POST", "/claim", {"worker": ""}, 400, "INVALID_REQUEST"),
    ("POST", "/claim", {"worker": "w"}, 409, "NO_PENDING_WORK"),
    ("POST", "/ack", {"wake_id": "w_x", "generation": 1}, 401, "TOKEN_INVALID"),
    ("POST", "/release", {"wake_id": "w_x", "generation": 1}, 401, "TOKEN_INVALID"),
    ("POST", "/callback", {"wake_id": "w_x", "generation": 1}, 401, "TOKEN_INVALID"),
    ("POST", "/frobnicate", {}, 404, "SUBSCRIPTION_NOT_FOUND"),
    ("PATCH", "", {}, 405, "METHOD_NOT_ALLOWED"),
]


def test_bad_input_is_refused_with_the_code_and_changes_nothing(tmp_path: Path) -> None:
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        api.stream("w", body=[])
        good = {"type": "pull-wake", "pattern": "x/*", "wake_stream": "w"}
        assert api.sub("bad", "PUT", good).status_code == 201
        before = api.sub("bad").json()
        for method, suffix, body, status, code in BAD:
            content = body if isinstance(body, bytes) else httpx.Request(
                "PUT", "http://x", json=body).content
            # New configurations go to an unused id (an existing id answers 409 first).
            target = "fresh" if method == "PUT" and status != 409 else "bad"
            r = api.c.request(method, f"{server.url}{SUBS}/{target}{suffix}", content=content,
                              headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), \
                (method, suffix, body if not isinstance(body, dict) else list(body), r.text)
        assert api.sub("fresh").status_code == 404
        assert api.sub("bad").json() == before
        big = api.c.put(f"{server.url}{SUBS}/huge", content=b"[" + b"1," * (1 << 20) + b"1]")
        assert (big.status_code, big.json()["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
        assert api.c.get(f"{server.url}/v1/stream/__ds/state-1").status_code == 404
        assert api.c.put(f"{server.url}/v1/stream/__ds/x").status_code == 404
        # A pathological glob stays cheap: matching is linear in pattern x path.
        slow = {"type": "pull-wake", "pattern": "/".join(["**", "a"] * 30) + "/b",
                "wake_stream": "w"}
        assert api.sub("glob", "PUT", slow).status_code == 201
        t0 = time.monotonic()
        api.stream("/".join(["a"] * 60), body={"x": 1})
        assert api.sub("glob").status_code == 200
        assert time.monotonic() - t0 < 20  # generous: exponential matching would not finish
    finally:
        server.stop()


def test_lease_expiry_rewakes_and_fences_the_old_holder(tmp_path: Path) -> None:
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        api.stream("wake/l", body=[])
        api.sub("lease", "PUT", {"type": "pull-wake", "pattern": "q/*", "wake_stream": "wake/l",
                                 "lease_ttl_ms": 1000})
        api.stream("q/1", body={"n": 1})
        wait_until(lambda: api.wakes("wake/l"), what="first wake event")
        claim = api.sub("lease", "POST", {"worker": "slow"}, "/claim").json()
        busy = api.sub("lease", "POST", {"worker": "other"}, "/claim")
        assert busy.json()["error"] == {"code": "ALREADY_CLAIMED", "current_holder": "slow",
                                        "generation": claim["generation"],
                                        "message": "another worker holds the lease"}
        wait_until(lambda: any(w["generation"] > claim["generation"]
                               for w in api.wakes("wake/l")), what="a re-wake after expiry")
        late = api.sub("lease", "POST", {"wake_id": claim["wake_id"],
                                         "generation": claim["generation"], "done": True},
                       "/ack", token=claim["token"])
        assert (late.status_code, late.json()["error"]["code"]) == (409, "FENCED")
        second = api.sub("lease", "POST", {"worker": "other"}, "/claim")
        assert second.status_code == 200 and second.json()["generation"] > claim["generation"]
        metrics = api.c.get(f"{server.url}/metrics").text
        assert "duralog_subscription_lease_expiries_total 1.0" in metrics
    finally:
        server.stop()


def test_slow_receiver_does_not_delay_a_fast_one(tmp_path: Path, receiver: Receiver) -> None:
    gate = threading.Event()
    slow = Receiver(free_port(), lambda body: (gate.wait(60), (200, {"done": True}))[1]).start()
    receiver.respond = lambda body: (200, {"done": True})
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        # More slow subscriptions than an endpoint has delivery slots.
        for i in range(6):
            api.sub(f"slow{i}", "PUT", {"type": "webhook", "pattern": "load/*",
                                         "webhook": {"url": slow.url}})
        api.sub("fast", "PUT", {"type": "webhook", "pattern": "load/*",
                                "webhook": {"url": receiver.url}})
        api.stream("load/1", body={"n": 1})
        slow.wait_for(lambda reqs: len(reqs) >= 4)
        # The fast receiver is served while every slow slot is still blocked.
        receiver.wait_for(lambda reqs: len(reqs) >= 1)
        wait_until(lambda: api.acked("fast")["load/1"] == api.tail("load/1"))
        assert not gate.is_set() and len(slow.requests) == 4
        gate.set()
        wait_until(lambda: all(api.acked(f"slow{i}")["load/1"] == api.tail("load/1")
                               for i in range(6)), what="the slow ones to finish")
    finally:
        gate.set()
        server.stop()
        slow.stop()


def test_receiver_down_then_back_gets_every_wake(tmp_path: Path) -> None:
    """CI runs a short outage; DURALOG_SUBS_OUTAGE_SECONDS=180 runs the 3-minute one."""
    outage = float(os.environ.get("DURALOG_SUBS_OUTAGE_SECONDS", "3"))
    port = free_port()
    receiver = Receiver(port, lambda body: (200, {"done": True}))
    # Backoff capped at 60 s as in production for the long run; short in CI.
    server = start("sqlite", tmp_path, webhook_retry_max="60" if outage > 60 else "1")
    try:
        api = Api(server)
        api.sub("down", "PUT", {"type": "webhook", "pattern": "jobs/*",
                                "webhook": {"url": receiver.url}})
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < outage:
            api.stream(f"jobs/{n}", body={"n": n})
            api.stream(f"jobs/{n}", "POST", {"n": n, "again": True})
            n += 1
            time.sleep(max(0.2, outage / 10))
        status = api.sub("down").json()["status"]
        assert status == "failed"  # 6.3: a retry is scheduled
        receiver.start()
        wait_until(lambda: all(api.acked("down").get(f"jobs/{i}") == api.tail(f"jobs/{i}")
                               for i in range(n)), timeout=120 + outage,
                   what="every stream acked after the receiver came back")
        assert api.sub("down").json()["status"] == "active"
    finally:
        server.stop()
        receiver.stop()


def test_key_rotation_keeps_the_old_key_published(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = lambda body: (200, {"done": True})
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        api.sub("rot", "PUT", {"type": "webhook", "streams": ["r/1"],
                               "webhook": {"url": receiver.url}})
        api.stream("r/1", body={"n": 1})
        first = receiver.wait_for(lambda reqs: len(reqs) >= 1)[0]
        old_kid = api.sub("rot").json()["webhook"]["signing"]["kid"]
        rotated = api.c.post(f"{server.url}/v1/stream/__ds/keys/rotate").json()
        assert rotated["kid"] != old_kid and rotated["kid"].startswith("ds_")
        jwks = api.c.get(f"{server.url}/v1/stream/__ds/jwks.json").json()
        assert {k["kid"] for k in jwks["keys"]} == {old_kid, rotated["kid"]}
        assert verify(first["raw"], first["headers"]["webhook-signature"], jwks)
        wait_until(lambda: api.acked("rot")["r/1"] == api.tail("r/1"))
        api.stream("r/1", "POST", {"n": 2})
        second = receiver.wait_for(lambda reqs: len(reqs) >= 2)[1]
        assert f"kid={rotated['kid']}," in second["headers"]["webhook-signature"]
        assert verify(second["raw"], second["headers"]["webhook-signature"], jwks)
        assert api.sub("rot").json()["webhook"]["signing"]["kid"] == rotated["kid"]
    finally:
        server.stop()


def test_cli_keys_and_webhook_allowlist(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = duralog_server("memory", log_path=tmp_path / "server.log",
                            extra=["--webhook-allow", "*.example.com",
                                   "--webhook-allow", "http://127.0.0.1:*/ok/*"]).start()
    try:
        api = Api(server)
        cmd = [sys.executable, "-m", "duralog", "keys"]
        listed = subprocess.run([*cmd, "list", "--url", server.url], capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0 and listed.stdout.count('"kid"') == 1
        rotated = subprocess.run([*cmd, "rotate", "--url", server.url], capture_output=True,
                                 text=True, timeout=60)
        assert rotated.returncode == 0 and rotated.stdout.startswith("active key: ds_")
        assert len(api.c.get(f"{server.url}/v1/stream/__ds/jwks.json").json()["keys"]) == 2
        refused = api.sub("al", "PUT", {"type": "webhook", "streams": ["a"],
                                        "webhook": {"url": "http://127.0.0.1:9/hook"}})
        assert refused.json()["error"]["code"] == "WEBHOOK_URL_REJECTED"
        assert api.sub("al", "PUT", {"type": "webhook", "streams": ["a"],
                                     "webhook": {"url": "http://127.0.0.1:9/ok/x"}}
                       ).status_code == 201
    finally:
        server.stop()


def test_webhook_lease_expiry_rewakes_and_deleted_streams_unlink(tmp_path: Path,
                                                                 receiver: Receiver) -> None:
    server = start("memory", tmp_path)
    try:
        api = Api(server)
        # The receiver answers {} and never calls back: the lease runs out (7.3).
        api.sub("lazy", "PUT", {"type": "webhook", "pattern": "lz/*",
                                "webhook": {"url": receiver.url}, "lease_ttl_ms": 1000})
        api.stream("lz/1", body={"n": 1})
        reqs = receiver.wait_for(lambda reqs: len(reqs) >= 2)
        assert reqs[1]["body"]["generation"] == reqs[0]["body"]["generation"] + 1
        assert reqs[1]["body"]["wake_id"] != reqs[0]["body"]["wake_id"]
        first = reqs[0]["body"]
        stale = api.c.post(first["callback_url"], json={
            "wake_id": first["wake_id"], "generation": first["generation"], "done": True},
            headers={"authorization": f"Bearer {first['callback_token']}"})
        assert stale.json()["error"]["code"] == "FENCED"
        # A deleted stream leaves the glob's links; an explicit link stays, from zero.
        api.sub("lazy", "POST", {"streams": ["lz/2"]}, "/streams")
        api.stream("lz/2", body={"n": 1})
        api.stream("lz/1", "DELETE")
        api.stream("lz/2", "DELETE")
        links = {s["path"]: s for s in api.sub("lazy").json()["streams"]}
        assert "lz/1" not in links
        assert links["lz/2"]["link_type"] == "explicit"
        assert links["lz/2"]["acked_offset"] == "0000000000000000_0000000000000000"
    finally:
        server.stop()
