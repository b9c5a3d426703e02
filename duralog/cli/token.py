"""``duralog token``: mint a short-lived, scoped bearer token (docs/security.md)."""

from __future__ import annotations

import argparse
import os
import re
import sys

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 15m, 1h)")
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "token", help="mint a scoped, expiring bearer token",
        description="Print a token signed with the auth file's signing_secret. The server "
                    "checks it without any database. Patterns: '*' is one path segment, "
                    "'**' any number.")
    p.add_argument("--auth", metavar="FILE",
                   help="auth file holding signing_secret (default: DURALOG_AUTH)")
    p.add_argument("--read", action="append", default=[], metavar="PATTERN",
                   help="streams the token may read (repeatable)")
    p.add_argument("--write", action="append", default=[], metavar="PATTERN",
                   help="streams it may create, append to and close (repeatable)")
    p.add_argument("--admin", action="append", default=[], metavar="PATTERN",
                   help="streams it may delete and fork into (repeatable)")
    p.add_argument("--ttl", type=parse_duration, default=3600.0, metavar="DURATION",
                   help="how long the token is valid (default 1h)")
    p.add_argument("--subject", help="who the token is for (its rate-limit key)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..auth import AuthConfigError, load_auth, mint_token

    path = args.auth or os.environ.get("DURALOG_AUTH")
    if not path:
        print("duralog token: give --auth FILE (or set DURALOG_AUTH)", file=sys.stderr)
        return 2
    try:
        config = load_auth(path)
        if config.signing_secret is None:
            raise AuthConfigError(f"{path} has no signing_secret")
        token = mint_token(config.signing_secret, read=args.read, write=args.write,
                           admin=args.admin, ttl=args.ttl, subject=args.subject)
    except (AuthConfigError, ValueError) as err:
        print(f"duralog token: {err}", file=sys.stderr)
        return 2
    print(token)
    return 0
