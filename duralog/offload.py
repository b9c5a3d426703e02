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
import os
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .protocol import jsonmode
from .protocol.errors import ProtocolError

OFFLOAD_BYTES = 256 << 10
#: Bodies from this size up reach the worker through a file, not a pickle (below).
FILE_BYTES = 4 << 20
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
_WORKERS = 1
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def _noop() -> None:
    return None


def _executor() -> ProcessPoolExecutor:
    """The pool, with its worker started. Called in a thread, never on the loop:
    creating the pool imports multiprocessing's modules and the first submit spawns
    the worker (fork_exec and pickling its start-up data), about 80 ms of the loop
    measured on the first large JSON body (issue 9, a 50 ms stall budget)."""
    global _pool
    with _lock:
        if _pool is None:
            # spawn, not fork: the server process has threads (the sqlite writer) and
            # an event loop that a forked child must not inherit.
            pool = ProcessPoolExecutor(_WORKERS, mp_context=multiprocessing.get_context("spawn"))
            pool.submit(_noop)
            _pool = pool
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


def _verdict_file(name: str, allow_empty: bool) -> bool:
    with open(name, "rb") as f:
        return _verdict(f.read(), allow_empty)


def _write_file(fd: int, body: bytes) -> None:
    """``body`` into the open file ``fd``, then closed; run in a thread.

    Why a file (tmpfs where there is one) and not the pool's pickle: pickling
    copies the body while holding the GIL, in one C call; 33 MiB held the event
    loop for 30 to 45 ms (issue 9). ``os.write`` releases the GIL while the
    kernel copies."""
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view[:1 << 20]):]
    finally:
        os.close(fd)


async def _run(fn, *args):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    pool = _pool if _pool is not None else await asyncio.to_thread(_executor)
    try:
        result = await loop.run_in_executor(pool, _guarded, fn, *args)
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
    if len(body) < FILE_BYTES:
        valid = await _run(_verdict, body, allow_empty)
    else:
        fd, name = tempfile.mkstemp(prefix="duralog-json-", dir=_SHM)
        try:
            # The name goes in any case, even if this request is cancelled while
            # the thread still writes (the open file then lives until it closes).
            await asyncio.to_thread(_write_file, fd, body)
            valid = await _run(_verdict_file, name, allow_empty)
        finally:
            os.unlink(name)
    if not valid:
        return None
    # Valid: the fragment is a slice of the body, no parse needed (jsonmode 9.1.2).
    text = body.strip(jsonmode.WHITESPACE)
    return text[1:-1].strip(jsonmode.WHITESPACE) if text[:1] == b"[" else text


async def fragment_prefix(frag: bytes, count: int) -> bytes:
    """jsonmode.fragment_prefix, off the loop for large fragments."""
    if len(frag) < OFFLOAD_BYTES:
        return jsonmode.fragment_prefix(frag, count)
    return await _run(jsonmode.fragment_prefix, frag, count)
