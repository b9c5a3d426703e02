"""A header-injecting TCP proxy: every request gets ``Authorization: Bearer <token>``.

For running clients that cannot send a token (the official conformance suite)
against a server with auth on (docs/security.md). One request per connection:
the proxy reads the request head, drops any ``Connection`` and
``Authorization`` fields, adds the token and ``Connection: close``, and then
pipes bytes both ways, so bodies and SSE stream through untouched.

    python tests/auth_proxy.py --listen 4438 --upstream 127.0.0.1:4437 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

MAX_HEAD = 64 << 10


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


def rewrite_head(head: bytes, token: str) -> bytes:
    """The request head with our token added, unless the client sent its own
    Authorization (the suite's subscription callbacks carry their wake token)."""
    lines = head.split(b"\r\n")
    fields = [line for line in lines[1:] if line]
    names = [line.split(b":", 1)[0].strip().lower() for line in fields]
    kept = [lines[0]] + [line for line, name in zip(fields, names, strict=True)
                         if name != b"connection"]
    if b"authorization" not in names:
        kept.append(b"Authorization: Bearer " + token.encode())
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n"


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                  upstream: tuple[str, int], token: str) -> None:
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_w.close()
        return
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.close()
        return
    up_w.write(rewrite_head(head[:-4], token))
    upload = asyncio.ensure_future(_pipe(client_r, up_w))
    await _pipe(up_r, client_w)  # the answer is over when the server closes (Connection: close)
    upload.cancel()
    for w in (up_w, client_w):
        with contextlib.suppress(Exception):
            w.close()


async def serve(listen: int, upstream: tuple[str, int], token: str,
                ready: asyncio.Event | None = None) -> None:
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, upstream, token), "127.0.0.1", listen, limit=MAX_HEAD)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the server")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(serve(args.listen, (host, int(port)), args.token))


if __name__ == "__main__":
    main()
