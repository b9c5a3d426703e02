"""Subscriptions survive restart and kill -9 (sqlite backend, real processes).

Acks answered before a crash are kept, leases and their tokens outlive the
process, a webhook wake pending at the kill (with its retry schedule) is
delivered after the restart, and a pull-wake pending at the kill is announced
again. The journal is compacted often here, so replay runs over snapshots.
"""

from __future__ import annotations

from pathlib import Path

from .servers import ServerProcess, duralog_server, free_port
from .test_subscriptions import Api, wait_until
from .webhook_receiver import Receiver


def server_at(tmp_path: Path, port: int) -> ServerProcess:
    server = duralog_server("sqlite", data_dir=tmp_path / "data", port=port,
                            log_path=tmp_path / "server.log")
    server.env = {"DURALOG_SUBSCRIPTION_COMPACT_EVERY": "5", "DURALOG_WEBHOOK_RETRY_MAX": "1"}
    return server


def test_kill9_keeps_acks_leases_tokens_and_pending_wakes(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(free_port(), lambda body: (200, {"done": True}))  # down for now
    server = server_at(tmp_path, port).start()
    try:
        api = Api(server)
        api.stream("wake/p", body=[])
        assert api.sub("p", "PUT", {"type": "pull-wake", "pattern": "ev/*",
                                    "wake_stream": "wake/p",
                                    "lease_ttl_ms": 600_000}).status_code == 201
        api.sub("u", "PUT", {"type": "pull-wake", "pattern": "un/*", "wake_stream": "wake/p"})
        api.sub("h", "PUT", {"type": "webhook", "pattern": "hk/*",
                             "webhook": {"url": receiver.url}})
        kid = api.sub("h").json()["webhook"]["signing"]["kid"]
        api.stream("ev/1", body={"n": 1})
        wait_until(lambda: api.wakes("wake/p"), what="wake event")
        claim = api.sub("p", "POST", {"worker": "w1"}, "/claim").json()
        first_tail = claim["streams"][0]["tail_offset"]
        api.stream("ev/1", "POST", {"n": 2})
        beat = api.sub("p", "POST", {"wake_id": claim["wake_id"],
                                     "generation": claim["generation"],
                                     "acks": [{"stream": "ev/1", "offset": first_tail}]},
                       "/ack", token=claim["token"])
        assert beat.json() == {"ok": True, "next_wake": False}
        api.stream("hk/1", body={"n": 1})
        wait_until(lambda: api.sub("h").json()["status"] == "failed", what="a retry schedule")
        api.stream("un/1", body={"n": 1})
        server.kill()

        server = server_at(tmp_path, port).start()
        api = Api(server)
        assert api.acked("p")["ev/1"] == first_tail  # the answered ack survived
        busy = api.sub("p", "POST", {"worker": "w2"}, "/claim")
        assert busy.json()["error"]["current_holder"] == "w1"  # so did the lease
        receiver.start()  # the webhook pending at the kill is delivered now
        wait_until(lambda: api.acked("h").get("hk/1") == api.tail("hk/1"),
                   what="webhook wake delivered after restart")
        assert api.sub("h").json()["webhook"]["signing"]["kid"] == kid  # same key
        wait_until(lambda: any(w["subscription_id"] == "u" for w in api.wakes("wake/p")),
                   what="pull wake announced")
        claim_u = api.sub("u", "POST", {"worker": "w"}, "/claim")
        assert claim_u.status_code == 200 and claim_u.json()["streams"][0]["has_pending"]
        done = api.sub("p", "POST", {"wake_id": claim["wake_id"],
                                     "generation": claim["generation"],
                                     "acks": [{"stream": "ev/1", "offset": api.tail("ev/1")}],
                                     "done": True}, "/ack", token=claim["token"])
        assert done.json() == {"ok": True, "next_wake": False}  # the token outlived the process
        server.kill()

        server = server_at(tmp_path, port).start()
        api = Api(server)
        assert api.acked("p")["ev/1"] == api.tail("ev/1")
        assert api.sub("p", "POST", {"worker": "w3"}, "/claim").json()["error"]["code"] == \
            "NO_PENDING_WORK"
        assert api.acked("h")["hk/1"] == api.tail("hk/1")
        server.stop()  # and a clean stop keeps it all too
        server = server_at(tmp_path, port).start()
        api = Api(server)
        assert api.acked("p")["ev/1"] == api.tail("ev/1")
        assert sorted(api.c.get(f"{server.url}/v1/stream/__ds/subscriptions/u").json()
                      ["streams"][0]) == ["acked_offset", "link_type", "path"]
    finally:
        server.stop()
        receiver.stop()
