"""Keys: the Ed25519 webhook signing keys and the HMAC key of wake tokens.

PROTOCOL.md 6.5 and 7.1: every webhook request carries
``Webhook-Signature: t=<unix seconds>,kid=<key id>,ed25519=<base64url sig>``,
an Ed25519 signature over ``<t>.<raw body>``; the public keys are published as
a JWK Set. A key's ``kid`` is ``ds_`` + its RFC 7638 JWK thumbprint, so it is
stable and derived from the key material. Rotation adds a key and makes it the
active one; retired keys stay published for ``PUBLISH_RETIRED`` seconds, well
past the receivers' replay window (7.1 suggests five minutes).

12.9: callback and claim tokens are HMAC-SHA256 signed, and name the
subscription, generation, wake and expiry. The HMAC key lives with the
signing keys in the subscription journal, so tokens survive a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLISH_RETIRED = 24 * 3600.0
TOKEN_LIFETIME = 3600  # seconds; a wake longer than this re-claims


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(slots=True)
class SigningKey:
    kid: str
    private: bytes  # 32-byte raw Ed25519 seed
    created_at: float
    retired_at: float | None = None

    @classmethod
    def generate(cls) -> SigningKey:
        seed = secrets.token_bytes(32)
        return cls(kid_for(seed), seed, time.time())

    def public_x(self) -> str:
        pub = Ed25519PrivateKey.from_private_bytes(self.private).public_key()
        return b64url(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig",
                "alg": "EdDSA", "x": self.public_x()}

    def to_json(self) -> dict[str, Any]:
        return {"kid": self.kid, "d": b64url(self.private), "created_at": self.created_at,
                "retired_at": self.retired_at}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SigningKey:
        return cls(raw["kid"], b64url_decode(raw["d"]), raw["created_at"], raw.get("retired_at"))


def kid_for(seed: bytes) -> str:
    """``ds_`` + the RFC 7638 thumbprint: SHA-256 of the required members, sorted, no spaces."""
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    x = b64url(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()
    return "ds_" + b64url(hashlib.sha256(canonical).digest())


class Keyring:
    """The signing keys (one active, retired ones still published) and the token key."""

    def __init__(self, keys: list[SigningKey] | None = None, token_key: bytes | None = None
                 ) -> None:
        self.keys: list[SigningKey] = keys or []
        self.token_key = token_key or b""

    @property
    def empty(self) -> bool:
        return not self.keys or not self.token_key

    def ensure(self) -> bool:
        """Create the first key and token key; True when something was created."""
        changed = False
        if not self.keys:
            self.keys.append(SigningKey.generate())
            changed = True
        if not self.token_key:
            self.token_key = secrets.token_bytes(32)
            changed = True
        return changed

    @property
    def active(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        now = time.time()
        for key in self.keys:
            if key.retired_at is None:
                key.retired_at = now
        self.keys.append(SigningKey.generate())
        self.prune(now)
        return self.keys[-1]

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.keys = [k for k in self.keys
                     if k.retired_at is None or now - k.retired_at < PUBLISH_RETIRED]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def sign(self, body: bytes, now: float | None = None) -> str:
        """The ``Webhook-Signature`` header value for ``body`` (7.1)."""
        t = int(time.time() if now is None else now)
        key = self.active
        sig = Ed25519PrivateKey.from_private_bytes(key.private).sign(f"{t}.".encode() + body)
        return f"t={t},kid={key.kid},ed25519={b64url(sig)}"

    # -- wake tokens (12.9) --------------------------------------------------------
    def token(self, sub_id: str, generation: int, wake_id: str) -> str:
        payload = b64url(orjson.dumps({"sub": sub_id, "gen": generation, "wake": wake_id,
                                       "exp": int(time.time()) + TOKEN_LIFETIME,
                                       "jti": secrets.token_hex(8)}))
        mac = hmac.new(self.token_key, payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{b64url(mac)}"

    def check_token(self, token: str, sub_id: str) -> tuple[str | None, dict[str, Any]]:
        """(error code or None, claims). Codes: TOKEN_INVALID, TOKEN_EXPIRED."""
        payload, _, mac = token.partition(".")
        if not payload or not mac:
            return "TOKEN_INVALID", {}
        want = hmac.new(self.token_key, payload.encode(), hashlib.sha256).digest()
        try:
            ok = hmac.compare_digest(b64url_decode(mac), want)
            claims = orjson.loads(b64url_decode(payload)) if ok else None
        except (ValueError, orjson.JSONDecodeError):
            return "TOKEN_INVALID", {}
        if not isinstance(claims, dict) or claims.get("sub") != sub_id:
            return "TOKEN_INVALID", {}
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp < time.time():
            return "TOKEN_EXPIRED", claims
        return None, claims

    def to_json(self) -> dict[str, Any]:
        return {"keys": [k.to_json() for k in self.keys], "token_key": b64url(self.token_key)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Keyring:
        return cls([SigningKey.from_json(k) for k in raw.get("keys", [])],
                   b64url_decode(raw.get("token_key", "")))
