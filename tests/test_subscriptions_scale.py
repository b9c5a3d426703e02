"""Scale: 10,000 subscriptions over 100,000 streams; an append costs work in
proportion to the subscriptions matching its stream, not to all of them.

Counts work (pattern checks and link checks), never time.
"""

from __future__ import annotations

import asyncio

import orjson

from duralog.protocol.state import AppendRequest, CreateRequest
from duralog.server.app import DuralogApp
from duralog.server.config import Config
from duralog.server.subscriptions import SubscriptionsApp
from duralog.server.subscriptions.model import parse_config

TENANTS, PER_TENANT, SUBS = 1000, 100, 10_000


def test_append_work_is_proportional_to_matching_subscriptions() -> None:
    async def run() -> None:
        app = DuralogApp(Config(backend="memory", registry=False))
        await app.startup()
        store = app.store
        subs = next(a for _, a in app._mounts if isinstance(a, SubscriptionsApp)).manager
        try:
            json_type = CreateRequest(content_type="application/json")
            await store.create("wake", json_type, None)
            for t in range(TENANTS):
                for k in range(PER_TENANT):
                    await store.create(f"t{t}/s{k}", json_type, None)
            def body(i: int) -> dict[str, str]:
                glob = "*" if i < SUBS // 2 else "**"
                return {"type": "pull-wake", "pattern": f"t{i % TENANTS}/{glob}",
                        "wake_stream": "wake"}

            for chunk in range(0, SUBS, 500):  # concurrent creates share journal appends
                await asyncio.gather(*(subs.put(f"sub{i}", parse_config(body(i)),
                                                "http://x/v1/stream/__ds")
                                       for i in range(chunk, chunk + 500)))
            assert len(subs.subs) == SUBS
            # Backfill linked each subscription to its tenant's 100 streams only.
            assert all(len(s.links) == PER_TENANT for s in subs.subs.values())

            def work() -> int:
                return subs.index.checks + subs.link_checks

            before = work()
            await store.append("t7/s3", AppendRequest(payload=orjson.dumps({"n": 1}),
                                                      content_type="application/json"))
            matching = [s for s in subs.subs.values() if s.generation == 1]
            assert sorted(s.id for s in matching) == sorted(
                f"sub{i}" for i in range(SUBS) if i % TENANTS == 7)
            assert work() - before == 2 * len(matching)  # 10 pattern + 10 link checks
            before = work()
            await store.create("elsewhere/x", json_type, orjson.dumps({"n": 1}))
            await store.append("elsewhere/x", AppendRequest(payload=b"1",
                                                            content_type="application/json"))
            assert work() - before == 0
            # A subscription over everything: a claim lists the pending stream first and
            # stops at 1,000 streams instead of carrying all 100,001.
            await subs.put("wide", parse_config({"type": "pull-wake", "pattern": "**",
                                                 "wake_stream": "wake"}), "http://x")
            assert len(subs.subs["wide"].links) == TENANTS * PER_TENANT + 1
            await store.append("t9/s9", AppendRequest(payload=b"2",
                                                      content_type="application/json"))
            claim = await subs.claim("wide", "w")
            assert len(claim["streams"]) == 1000
            assert claim["streams"][0]["path"] == "t9/s9" and claim["streams"][0]["has_pending"]
        finally:
            await app.shutdown()

    asyncio.run(run())
