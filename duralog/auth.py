"""Access control for duralog: the auth file, scope globs and signed tokens.

Pure code (no server, no sockets) so an application server can import it to
mint tokens for its users without pulling in the server: ``duralog.auth.mint_token``.

PROTOCOL.md 12.1 leaves the mechanism to the implementation and says it MUST
prevent unauthorized creation, modification and deletion. duralog uses bearer
tokens with three scopes over stream-path globs:

- ``read``: GET (catch-up, long-poll, SSE) and HEAD;
- ``write``: create (PUT), append and close (POST);
- ``admin``: DELETE, forks, and control APIs (``__ds/...``, subscriptions).

Two kinds of token: static ones named in the auth file (compared in constant
time), and minted ones: ``dl1.<payload>.<signature>``, an HMAC-SHA256 over a
small JSON payload with the scopes and an expiry, signed with the file's
``signing_secret``. Minted tokens are stateless: the server needs no database
to check them, only the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import tomllib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

SCOPES = ("read", "write", "admin")
MIN_SECRET_BYTES = 32
MAX_TOKEN_BYTES = 8192  # longer bearer values are refused before any work
_MINTED_PREFIX = "dl1."
_MAX_PATTERN_SEGMENTS = 64
_DECISIONS_KEPT = 4096  # per grant
_MINTED_KEPT = 10_000  # verified minted tokens remembered until they expire


class AuthConfigError(ValueError):
    """The auth file is malformed; the message names the field."""


class TokenError(Exception):
    """A presented token is not valid (unknown, forged, expired or malformed)."""


# -- scope globs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Glob:
    """A stream-path pattern: ``*`` is one whole segment, ``**`` any number (zero or more).

    Matching splits the pattern at its ``**`` segments into fixed-length blocks
    and places each block at its leftmost fit. That greedy choice is exact for
    this pattern language (a block of fixed length never needs to move right to
    let a later block fit), so a match costs at most path length x pattern
    length segment comparisons and never backtracks.
    """

    text: str
    # The segments between '**'s; the first block is anchored at the start of the
    # path and the last at its end (with no '**', one block anchored at both).
    blocks: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Glob:
        if not isinstance(text, str) or not text or text.startswith("/") or text.endswith("/"):
            raise AuthConfigError(f"scope pattern {text!r} must be a relative stream path")
        segments = text.split("/")
        if len(segments) > _MAX_PATTERN_SEGMENTS:
            raise AuthConfigError(f"scope pattern {text!r} has too many segments")
        blocks: list[tuple[str, ...]] = []
        current: list[str] = []
        for seg in segments:
            if seg == "":
                raise AuthConfigError(f"scope pattern {text!r} has an empty segment")
            if seg == "**":
                blocks.append(tuple(current))
                current = []
            elif "*" in seg and seg != "*":
                raise AuthConfigError(
                    f"scope pattern {text!r}: '*' and '**' must be whole segments")
            else:
                current.append(seg)
        blocks.append(tuple(current))
        return cls(text, tuple(blocks))

    def matches(self, path: str) -> bool:
        segs = path.split("/")
        blocks = self.blocks
        if len(blocks) == 1:
            return len(segs) == len(blocks[0]) and _block_at(blocks[0], segs, 0)
        first, last = blocks[0], blocks[-1]
        if len(segs) < len(first) + len(last):
            return False
        if not _block_at(first, segs, 0):
            return False
        end = len(segs) - len(last)
        if not _block_at(last, segs, end):
            return False
        pos = len(first)
        for block in blocks[1:-1]:
            if not block:
                continue
            found = -1
            for start in range(pos, end - len(block) + 1):
                if _block_at(block, segs, start):
                    found = start
                    break
            if found < 0:
                return False
            pos = found + len(block)
        return True


def _block_at(block: Sequence[str], segs: Sequence[str], start: int) -> bool:
    return all(want in ("*", segs[start + i]) for i, want in enumerate(block))


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token (or anonymous access) may do: globs per scope."""

    read: tuple[Glob, ...] = ()
    write: tuple[Glob, ...] = ()
    admin: tuple[Glob, ...] = ()
    # Decisions already made: busy streams are checked again and again.
    _seen: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False,
                                               hash=False, repr=False)

    def allows(self, scope: str, path: str) -> bool:
        key = (scope, path)
        seen = self._seen.get(key)
        if seen is not None:
            return seen
        globs: tuple[Glob, ...] = getattr(self, scope)
        allowed = any(g.matches(path) for g in globs)
        if len(self._seen) >= _DECISIONS_KEPT:
            self._seen.clear()
        self._seen[key] = allowed
        return allowed

    @property
    def empty(self) -> bool:
        return not (self.read or self.write or self.admin)

    @classmethod
    def from_patterns(cls, read: Iterable[str] = (), write: Iterable[str] = (),
                      admin: Iterable[str] = ()) -> Grant:
        return cls(tuple(Glob.parse(p) for p in read), tuple(Glob.parse(p) for p in write),
                   tuple(Glob.parse(p) for p in admin))

    def patterns(self) -> dict[str, list[str]]:
        return {s: [g.text for g in getattr(self, s)] for s in SCOPES}


# -- the auth file ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``rate`` requests per second on average, bursts of ``burst``."""

    rate: float
    burst: float


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's name (never its value) and its grant."""

    name: str
    grant: Grant
    key: str  # rate-limit key: the static token's name, or a minted token's subject/hash
    expires: float = math.inf  # a minted token's expiry (Unix seconds)


@dataclass
class AuthConfig:
    """The parsed auth file."""

    tokens: dict[bytes, Principal] = field(default_factory=dict)  # sha256(token) -> principal
    anonymous: Grant = field(default_factory=Grant)
    signing_secret: bytes | None = None
    token_rate: RateLimit | None = None
    address_rate: RateLimit | None = None
    # Minted tokens already verified -> (principal, expiry): a browser presents the
    # same token on every request; checking its signature once is enough.
    _minted: OrderedDict[str, tuple[Principal, float]] = field(
        default_factory=OrderedDict, repr=False)

    def authenticate(self, token: str, now: float | None = None) -> Principal:
        """The principal for a bearer value, or TokenError (the reason never holds the token)."""
        raw = token.encode("utf-8", "surrogateescape")
        if not raw or len(raw) > MAX_TOKEN_BYTES:
            raise TokenError("malformed token")
        if token.startswith(_MINTED_PREFIX):
            if self.signing_secret is None:
                raise TokenError("minted tokens are not accepted: no signing_secret")
            t = time.time() if now is None else now
            known = self._minted.get(token)
            if known is not None:
                if t < known[1]:
                    return known[0]
                del self._minted[token]
            grant, subject, expires = _verify(self.signing_secret, token, t)
            key = subject or "minted:" + hashlib.sha256(raw).hexdigest()[:16]
            principal = Principal(subject or "minted", grant, key, expires)
            self._minted[token] = (principal, expires)
            if len(self._minted) > _MINTED_KEPT:
                self._minted.popitem(last=False)
            return principal
        # Looked up by SHA-256 digest, never by the value: the comparison time then
        # depends on how many leading bytes of the *digest* match, which a guesser
        # cannot steer, so nothing about a real token leaks through timing.
        principal = self.tokens.get(hashlib.sha256(raw).digest())
        if principal is None:
            raise TokenError("unknown token")
        return principal


def _patterns(table: dict[str, object], scope: str, where: str) -> list[str]:
    value = table.get(scope, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"{where}.{scope} must be a list of path patterns")
    return value


def _grant(table: dict[str, object], where: str) -> Grant:
    try:
        return Grant.from_patterns(*(_patterns(table, s, where) for s in SCOPES))
    except AuthConfigError as err:
        raise AuthConfigError(f"{where}: {err}") from None


def _rate(value: object, where: str) -> RateLimit | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate, burst = float(value), float(value)
    elif isinstance(value, dict):
        rate = value.get("rate")
        burst = value.get("burst", rate)
        if not isinstance(rate, (int, float)) or not isinstance(burst, (int, float)):
            raise AuthConfigError(f"{where} needs numbers: rate (per second) and burst")
        rate, burst = float(rate), float(burst)
    else:
        raise AuthConfigError(f"{where} must be a number or {{rate = N, burst = M}}")
    if not (rate > 0 and burst >= 1 and math.isfinite(rate) and math.isfinite(burst)):
        raise AuthConfigError(f"{where}: rate must be positive and burst at least 1")
    return RateLimit(rate, burst)


def parse_auth(text: str) -> AuthConfig:
    """An AuthConfig from the TOML text of an auth file (format in docs/security.md)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AuthConfigError(f"auth file is not valid TOML: {err}") from None
    known = {"signing_secret", "token", "anonymous", "rate_limit"}
    unknown = set(data) - known
    if unknown:
        raise AuthConfigError(f"unknown key(s) in auth file: {', '.join(sorted(unknown))}")
    config = AuthConfig()
    secret = data.get("signing_secret")
    if secret is not None:
        if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
            raise AuthConfigError(f"signing_secret must be at least {MIN_SECRET_BYTES} bytes")
        config.signing_secret = secret.encode()
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise AuthConfigError("token must be an array of tables ([[token]])")
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"token[{i}]"
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where} must be a table")
        extra = set(entry) - {"name", "token", *SCOPES}
        if extra:
            raise AuthConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        name, value = entry.get("name"), entry.get("token")
        if not isinstance(name, str) or not name:
            raise AuthConfigError(f"{where} needs a name")
        if name in names:
            raise AuthConfigError(f"{where}: name {name!r} is used twice")
        names.add(name)
        if not isinstance(value, str) or len(value) < 16:
            raise AuthConfigError(f"{where} ({name}): token must be at least 16 characters")
        if value.startswith(_MINTED_PREFIX):
            raise AuthConfigError(f"{where} ({name}): a static token must not start with "
                                  f"{_MINTED_PREFIX!r}")
        digest = hashlib.sha256(value.encode()).digest()
        if digest in config.tokens:
            raise AuthConfigError(f"{where} ({name}): the same token value is used twice")
        config.tokens[digest] = Principal(name, _grant(entry, where), "token:" + name)
    anonymous = data.get("anonymous", {})
    if not isinstance(anonymous, dict) or set(anonymous) - set(SCOPES):
        raise AuthConfigError("anonymous must be a table of read / write / admin patterns")
    config.anonymous = _grant(anonymous, "anonymous")
    limits = data.get("rate_limit", {})
    if not isinstance(limits, dict) or set(limits) - {"per_token", "per_address"}:
        raise AuthConfigError("rate_limit takes per_token and per_address")
    config.token_rate = _rate(limits.get("per_token"), "rate_limit.per_token")
    config.address_rate = _rate(limits.get("per_address"), "rate_limit.per_address")
    return config


def load_auth(path: str | Path) -> AuthConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise AuthConfigError(f"cannot read auth file {path}: {err.strerror}") from None
    return parse_auth(text)


# -- minted tokens ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"signing secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def mint_token(secret: str | bytes, *, read: Iterable[str] = (), write: Iterable[str] = (),
               admin: Iterable[str] = (), ttl: float = 3600.0, subject: str | None = None,
               now: float | None = None) -> str:
    """A signed, stateless bearer token with these scopes, valid for ``ttl`` seconds.

    ``secret`` is the auth file's ``signing_secret``. ``subject`` (optional) names
    the user; the server uses it as the token's rate-limit key and never logs
    the token itself.
    """
    grant = Grant.from_patterns(read, write, admin)  # refuses malformed patterns now
    if grant.empty:
        raise ValueError("a token needs at least one scope pattern")
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    issued = time.time() if now is None else now
    payload: dict[str, object] = {"exp": int(issued + ttl)}
    for scope, pats in grant.patterns().items():
        if pats:
            payload[scope] = pats
    if subject is not None:
        payload["sub"] = subject
    body = _b64(orjson.dumps(payload))
    sig = hmac.new(_secret_bytes(secret), (_MINTED_PREFIX + body).encode(),
                   hashlib.sha256).digest()
    return f"{_MINTED_PREFIX}{body}.{_b64(sig)}"


def verify_token(secret: str | bytes, token: str,
                 now: float | None = None) -> tuple[Grant, str | None]:
    """The grant and subject of a minted token; TokenError if forged, expired or malformed."""
    grant, subject, _ = _verify(secret, token, time.time() if now is None else now)
    return grant, subject


def _verify(secret: str | bytes, token: str, now: float) -> tuple[Grant, str | None, float]:
    if len(token) > MAX_TOKEN_BYTES or not token.startswith(_MINTED_PREFIX):
        raise TokenError("malformed token")
    signed, _, sig_text = token.rpartition(".")
    body = signed[len(_MINTED_PREFIX):]
    try:
        sig = _unb64(sig_text)
    except (ValueError, TypeError):
        raise TokenError("malformed token") from None
    expected = hmac.new(_secret_bytes(secret), signed.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise TokenError("bad token signature")
    try:
        payload = orjson.loads(_unb64(body))
        exp = payload["exp"]
        grant = Grant.from_patterns(*(payload.get(s, []) for s in SCOPES))
    except (ValueError, TypeError, KeyError, AuthConfigError):
        raise TokenError("malformed token") from None
    if not isinstance(exp, int) or now >= exp:
        raise TokenError("token expired")
    subject = payload.get("sub")
    return grant, subject if isinstance(subject, str) else None, float(exp)


# -- rate limiting (PROTOCOL.md 12.5) ---------------------------------------------------


class RateLimiter:
    """Token buckets by key, at most ``max_keys`` of them (least recently used go first)."""

    def __init__(self, limit: RateLimit, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, now: float | None = None) -> float:
        """0 when the request may go ahead (and is counted), else seconds to wait."""
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.limit.burst, t))
        tokens = min(self.limit.burst, tokens + (t - last) * self.limit.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, t)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, t)
            wait = (1 - tokens) / self.limit.rate
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
