"""CPU-heavy JSON work off the event loop (issue 9: nothing may stall the loop).

orjson holds the GIL for a whole parse, so a thread does not help: a 32 MiB body
of ``{}`` objects took 2.4 s of the loop in one call. Bodies and fragments from
``OFFLOAD_BYTES`` up are parsed in a worker process instead; smaller ones (a few
milliseconds at most) stay inline, where they cost less than the hand-off.

The worker runs the very same functions of ``protocol/jsonmode.py``, so what is
accepted or refused does not depend on the size. It sends back only a verdict
(or, for a fork, the inherited prefix), never the parsed value.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .protocol import jsonmode
from .protocol.errors import ProtocolError

OFFLOAD_BYTES = 256 << 10
_WORKERS = 1
_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        # spawn, not fork: the server process has threads (the sqlite writer) and an
        # event loop that a forked child must not inherit.
        _pool = ProcessPoolExecutor(_WORKERS, mp_context=multiprocessing.get_context("spawn"))
    return _pool


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def _guarded(fn, *args):  # type: ignore[no-untyped-def]
    """Runs in the worker: a ProtocolError comes back as a value (it does not pickle)."""
    try:
        return ("ok", fn(*args))
    except ProtocolError as err:
        return ("error", err.status, err.reason)


def _verdict(body: bytes, allow_empty: bool) -> bool:
    """True when append_fragment would store something (False: an empty PUT batch)."""
    return jsonmode.append_fragment(body, allow_empty=allow_empty) is not None


async def _run(fn, *args):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(_executor(), _guarded, fn, *args)
    except BrokenProcessPool:  # a worker died (OOM killer): start afresh next time
        shutdown()
        raise ProtocolError(503, "JSON validation worker failed; try again") from None
    if result[0] == "error":
        raise ProtocolError(result[1], result[2])
    return result[1]


async def append_fragment(body: bytes, *, allow_empty: bool) -> bytes | None:
    """jsonmode.append_fragment, off the loop for large bodies."""
    if len(body) < OFFLOAD_BYTES:
        return jsonmode.append_fragment(body, allow_empty=allow_empty)
    if not await _run(_verdict, body, allow_empty):
        return None
    # Valid: the fragment is a slice of the body, no parse needed (jsonmode 9.1.2).
    text = body.strip(jsonmode.WHITESPACE)
    return text[1:-1].strip(jsonmode.WHITESPACE) if text[:1] == b"[" else text


async def fragment_prefix(frag: bytes, count: int) -> bytes:
    """jsonmode.fragment_prefix, off the loop for large fragments."""
    if len(frag) < OFFLOAD_BYTES:
        return jsonmode.fragment_prefix(frag, count)
    return await _run(jsonmode.fragment_prefix, frag, count)
