"""``duralog keys``: the webhook signing keys of a running server (PROTOCOL.md 6.5).

``duralog keys list`` prints the published JWK Set; ``duralog keys rotate``
makes a new key the active one. The old key stays published (24 hours), so
receivers can still verify deliveries signed before the rotation. The key
lives in the server's store, so the server must be running; with auth on,
``--token`` (or DURALOG_TOKEN) must carry the ``admin`` scope.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
import orjson

DEFAULT_URL = "http://127.0.0.1:4437"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="list or rotate the webhook signing keys",
                              description=__doc__.split("\n\n", 1)[1])
    p.add_argument("action", choices=["list", "rotate"])
    p.add_argument("--url", default=None,
                   help=f"server base URL (default $DURALOG_URL or {DEFAULT_URL})")
    p.add_argument("--prefix", default="/v1/stream/", help="the server's stream root")
    p.add_argument("--token", default=None, help="bearer token (default $DURALOG_TOKEN)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    base = (args.url or os.environ.get("DURALOG_URL") or DEFAULT_URL).rstrip("/")
    root = f"{base}/{args.prefix.strip('/')}/__ds"
    token = args.token or os.environ.get("DURALOG_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        if args.action == "rotate":
            r = httpx.post(f"{root}/keys/rotate", headers=headers, timeout=30)
        else:
            r = httpx.get(f"{root}/jwks.json", headers=headers, timeout=30)
    except httpx.HTTPError as err:
        print(f"duralog keys: {base}: {err}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        print(f"duralog keys: {r.status_code} {r.text.strip()}", file=sys.stderr)
        return 1
    body = r.json()
    if args.action == "rotate":
        print(f"active key: {body['kid']}")
    print(orjson.dumps({"keys": body["keys"]}, option=orjson.OPT_INDENT_2).decode())
    return 0
