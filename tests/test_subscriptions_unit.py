"""Subscription building blocks without a server: URL rules (12.8), globs, keys, backoff."""

from __future__ import annotations

import asyncio
import random

import pytest

from duralog.server.subscriptions.delivery import backoff, pinned_request
from duralog.server.subscriptions.globs import GlobIndex, PathTrie, glob_match, split_path
from duralog.server.subscriptions.signing import Keyring, kid_for
from duralog.server.subscriptions.ssrf import UrlPolicy, UrlRejected


def fake_resolver(answers: dict[str, list[str]]):
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in answers:
            raise OSError("no such host")
        return answers[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


DNS = {"public.test": ["93.184.216.34"], "loop.test": ["127.0.0.1"],
       "private.test": ["10.0.0.1"], "mixed.test": ["93.184.216.34", "192.168.1.5"],
       "v6private.test": ["fd12::1"], "v6public.test": ["2606:4700::1111"],
       "metadata.test": ["169.254.169.254"], "mapped.test": ["::ffff:10.1.2.3"]}

ACCEPTED = [
    "http://127.0.0.1:8080/hook", "http://127.0.0.9/hook", "http://localhost:3000/x",
    "http://[::1]:9000/hook", "https://93.184.216.34/hook", "https://[2606:4700::1111]/h",
    "https://public.test/hook", "https://v6public.test/hook",
]
REFUSED = [
    "http://10.0.0.1/hook", "http://93.184.216.34/hook", "http://public.test/hook",
    "https://localhost/hook", "https://127.0.0.1/hook", "https://10.0.0.1/hook",
    "https://172.16.0.1/hook", "https://192.168.0.1/hook", "https://169.254.169.254/latest",
    "https://100.64.0.1/", "https://0.0.0.0/", "https://224.0.0.1/",
    "https://[::1]/hook", "https://[fe80::1]/hook", "https://[fd00::1]/hook",
    "https://[::ffff:10.0.0.1]/hook", "https://[::ffff:127.0.0.1]/hook",
    "https://[64:ff9b::a00:1]/hook", "https://[2002:a00:1::]/hook", "https://[::]/",
    "https://loop.test/hook", "https://private.test/hook", "https://mixed.test/hook",
    "https://v6private.test/hook", "https://metadata.test/hook", "https://mapped.test/hook",
    "https://user:pw@public.test/hook", "ftp://public.test/", "not a url", "",
    "https://" + "a" * 3000 + ".test/",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_webhook_urls_accepted(url: str) -> None:
    policy = UrlPolicy(resolver=fake_resolver(DNS))
    asyncio.run(policy.validate(url))
    target = asyncio.run(policy.target(url))
    assert target.address not in ("10.0.0.1",)


@pytest.mark.parametrize("url", REFUSED)
def test_webhook_urls_refused_at_delivery(url: str) -> None:
    policy = UrlPolicy(resolver=fake_resolver(DNS))
    with pytest.raises(UrlRejected):
        asyncio.run(policy.target(url))


def test_names_pointing_inside_are_refused_at_creation_too() -> None:
    policy = UrlPolicy(resolver=fake_resolver(DNS))
    for url in ("https://loop.test/h", "https://private.test/h", "https://metadata.test/h"):
        with pytest.raises(UrlRejected):
            asyncio.run(policy.validate(url))
    asyncio.run(policy.validate("https://unknown.test/h"))  # unresolvable yet: delivery retries


def test_delivery_connects_to_the_address_it_checked() -> None:
    """DNS rebinding: the name is resolved once per attempt and the request goes to that
    checked address; a later answer cannot redirect the connection."""
    answers = {"rebind.test": ["93.184.216.34"], "v6public.test": ["2606:4700::1111"]}
    policy = UrlPolicy(resolver=fake_resolver(answers))
    target = asyncio.run(policy.target("https://rebind.test:8443/hook?a=1"))
    url, headers, ext = pinned_request(target)
    assert url == "https://93.184.216.34:8443/hook?a=1"
    assert headers == {"host": "rebind.test:8443"} and ext == {"sni_hostname": "rebind.test"}
    answers["rebind.test"] = ["127.0.0.1"]  # the attacker flips the record
    with pytest.raises(UrlRejected):
        asyncio.run(policy.target("https://rebind.test:8443/hook"))
    local = asyncio.run(policy.target("http://localhost:7000/x"))
    assert pinned_request(local)[0] == "http://127.0.0.1:7000/x"  # never asks DNS
    v6 = asyncio.run(policy.target("https://v6public.test/h"))
    assert pinned_request(v6)[0] == "https://[2606:4700::1111]:443/h"


def test_allowlist() -> None:
    policy = UrlPolicy(["*.example.com", "https://exact.test/only/*"],
                       resolver=fake_resolver({"hooks.example.com": ["10.1.1.1"],
                                               "exact.test": ["93.184.216.34"],
                                               "meta.example.com": ["169.254.169.254"]}))
    # An allowlisted name may point at an internal receiver, never at metadata.
    assert asyncio.run(policy.target("https://hooks.example.com/h")).address == "10.1.1.1"
    asyncio.run(policy.target("https://exact.test/only/this"))
    for url in ("https://exact.test/other", "https://public.test/h",
                "https://meta.example.com/h", "http://hooks.example.com/h"):
        with pytest.raises(UrlRejected):
            asyncio.run(policy.target(url))


def test_glob_matching() -> None:
    cases = [("events/*", "events/a", True), ("events/*", "events/a/b", False),
             ("events/**", "events", True), ("events/**", "events/a/b/c", True),
             ("**", "x", True), ("**/z", "a/b/z", True), ("**/z", "a/z/b", False),
             ("a/**/b/**/c", "a/x/b/y/z/c", True), ("a/**/b/**/c", "a/c/b", False),
             ("*/x", "a/x", True), ("*/x", "x", False), ("lit%2A/x", "lit*/x", True)]
    for pattern, path, want in cases:
        assert glob_match(split_path(pattern), split_path(path)) is want, (pattern, path)
    evil = split_path("/".join(["**", "a"] * 32) + "/b")
    assert glob_match(evil, ["a"] * 200) is False  # linear: returns at once


def test_glob_index_touches_only_candidates() -> None:
    index = GlobIndex()
    for i in range(1000):
        index.add(f"s{i}", f"tenant-{i}/**")
    index.add("all", "**/audit")
    before = index.checks
    assert sorted(index.matches("tenant-7/x/audit")) == ["all", "s7"]
    assert index.checks - before == 2
    index.remove("s7")
    assert list(index.matches("tenant-7/x")) == []
    trie = PathTrie()
    for p in ("a/b", "a/c/d", "b/x"):
        trie.add(p)
    assert sorted(trie.under(["a"])) == ["a/b", "a/c/d"]
    trie.remove("a/c/d")
    assert sorted(trie.under([])) == ["a/b", "b/x"]


def test_keys_tokens_and_backoff() -> None:
    ring = Keyring()
    assert ring.ensure()
    kid = ring.active.kid
    assert kid == kid_for(ring.active.private) and kid.startswith("ds_")
    token = ring.token("s", 3, "w_1")
    assert ring.check_token(token, "s")[0] is None
    assert ring.check_token(token, "other")[0] == "TOKEN_INVALID"
    assert ring.check_token(token[:-2] + "xx", "s")[0] == "TOKEN_INVALID"
    ring.rotate()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [kid, ring.active.kid] != [kid, kid]
    restored = Keyring.from_json(ring.to_json())
    assert restored.check_token(token, "s")[0] is None
    rng = random.Random(1)
    delays = [backoff(n, 1.0, 60.0, rng) for n in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4
    assert all(48 <= d <= 72 for d in delays[7:])
