"""duralog.auth without a server: scope globs, the auth file, minted tokens, the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from duralog.auth import (
    AuthConfigError,
    Glob,
    RateLimit,
    RateLimiter,
    TokenError,
    mint_token,
    parse_auth,
    verify_token,
)

from .servers import ROOT

SECRET = "unit-signing-secret-0123456789abcdef"


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("chat/**", "chat/42", True),
    ("chat/**", "chat/42/typing", True),
    ("chat/**", "chat", True),
    ("chat/**", "chatroom/1", False),
    ("chat/**", "other/chat/1", False),
    ("chat/*", "chat/42", True),
    ("chat/*", "chat/42/x", False),
    ("chat/*", "chat", False),
    ("*/inbox", "alice/inbox", True),
    ("*/inbox", "alice/bob/inbox", False),
    ("**/inbox", "alice/bob/inbox", True),
    ("**", "anything/at/all", True),
    ("a/**/b/**/c", "a/x/b/y/z/c", True),
    ("a/**/b/**/c", "a/c/b", False),
    ("a/**/b/*/c", "a/b/b/q/c", True),
    ("exact", "exact", True),
    ("exact", "exactly", False),
])
def test_globs(pattern: str, path: str, expected: bool) -> None:
    assert Glob.parse(pattern).matches(path) is expected


@pytest.mark.parametrize("bad", ["", "/abs", "trail/", "a//b", "chat-*", "a/**x"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(AuthConfigError):
        Glob.parse(bad)


def test_glob_on_a_long_path_does_not_backtrack() -> None:
    """Many '**' against a long non-matching path: the greedy match visits each block once."""
    pattern = Glob.parse("/".join(["**", "a"] * 20) + "/**/zzz")
    path = "/".join(["a"] * 5000)
    assert pattern.matches(path) is False
    assert pattern.matches(path + "/zzz") is True


def test_auth_file_shape_from_the_issue() -> None:
    config = parse_auth('''
signing_secret = "at least 32 random bytes, really.."
[[token]]
name = "browser-reader"
token = "r-3f9c2d0000000000"
read = ["chat/**"]
[[token]]
name = "backend"
token = "w-81a7e00000000000"
read = ["**"]
write = ["**"]
admin = ["**"]
[anonymous]
read = ["public/**"]
''')
    reader = config.authenticate("r-3f9c2d0000000000")
    assert reader.name == "browser-reader"
    assert reader.grant.allows("read", "chat/42")
    assert not reader.grant.allows("read", "other")
    assert not reader.grant.allows("write", "chat/42")
    assert config.anonymous.allows("read", "public/x")
    with pytest.raises(TokenError):
        config.authenticate("r-3f9c2d0000000001")


@pytest.mark.parametrize(("text", "message"), [
    ('signing_secret = "short"', "at least 32"),
    ('[[token]]\nname = "a"\ntoken = "short"', "16 characters"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nread = "**"\n'
     '[[token]]\nname = "a"\ntoken = "0123456789abcdeX"', "used twice"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nreed = ["**"]', "unknown"),
    ("[anonymous]\nread = [1]", "list of path patterns"),
    ("[rate_limit]\nper_token = -1", "positive"),
    ("not toml ===", "TOML"),
])
def test_auth_file_errors(text: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        parse_auth(text)


def test_minted_tokens() -> None:
    token = mint_token(SECRET, read=["chat/42/**"], ttl=60, subject="u1")
    grant, subject = verify_token(SECRET, token)
    assert subject == "u1" and grant.allows("read", "chat/42/a")
    assert not grant.allows("write", "chat/42/a")
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, now=time.time() + 61)
    with pytest.raises(TokenError, match="signature"):
        verify_token("x" * 40, token)
    head, sig = token.rsplit(".", 1)
    with pytest.raises(TokenError):
        verify_token(SECRET, head + "." + sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB"))
    with pytest.raises(TokenError):
        verify_token(SECRET, "dl1.garbage")
    with pytest.raises(ValueError):
        mint_token("short", read=["**"])
    with pytest.raises(ValueError):
        mint_token(SECRET)


def test_rate_limiter_buckets() -> None:
    limiter = RateLimiter(RateLimit(rate=2.0, burst=2.0))
    assert limiter.check("a", now=0.0) == 0 and limiter.check("a", now=0.0) == 0
    assert limiter.check("a", now=0.0) == pytest.approx(0.5)
    assert limiter.check("b", now=0.0) == 0  # keys are independent
    assert limiter.check("a", now=1.0) == 0  # refilled


def test_token_command(tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(f'signing_secret = "{SECRET}"\n')
    out = subprocess.run([sys.executable, "-m", "duralog", "token", "--auth", str(auth),
                          "--read", "chat/42/**", "--ttl", "1h"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    grant, _ = verify_token(SECRET, out)
    assert grant.allows("read", "chat/42/x") and not grant.allows("read", "chat/43")
    bad = subprocess.run([sys.executable, "-m", "duralog", "token", "--auth", str(auth)],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "scope" in bad.stderr
