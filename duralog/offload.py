"""CPU-heavy JSON work off the event loop (issue 9: nothing may stall the loop).

orjson holds the GIL for a whole parse, so a thread does not help: a 32 MiB body
of ``{}`` objects took 2.4 s of the loop in one call. Bodies and fragments from
``OFFLOAD_BYTES`` up are parsed in a worker process instead; smaller ones (a few
milliseconds at most) stay inline, where they cost less than the hand-off.

The worker runs the very same functions of ``protocol/jsonmode.py``, so what is
accepted or refused does not depend on the size. It sends back only a verdict
(or, for a fork, the inherited prefix), never the parsed value. Bodies from
``FILE_BYTES`` up travel through a file in tmpfs instead of a pickle, and the
worker answers where the stored fragment lies in it (issue 9: a pickle, and a
slice of the body, are copies made while holding the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
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


def _span_file(name: str, allow_empty: bool) -> tuple[int, int] | None:
    """In the worker: validate the body in file ``name``; where its fragment lies in it
    ([start, end) byte positions), or None for an empty PUT batch."""
    with open(name, "rb") as f:
        body = f.read()
    frag = jsonmode.append_fragment(body, allow_empty=allow_empty)
    if frag is None:
        return None
    ws = jsonmode.WHITESPACE
    start, end = len(body) - len(body.lstrip(ws)), len(body.rstrip(ws))
    if body[start:start + 1] == b"[":  # a batch: its inside (jsonmode 9.1.2)
        inner = body[start + 1:end - 1]
        start, end = start + 1 + len(inner) - len(inner.lstrip(ws)), start + 1 + len(
            inner.rstrip(ws))
    return start, end


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def _read_span(name: str, start: int, end: int) -> bytes:
    """The bytes [start, end) of file ``name``; run in a thread. ``os.pread`` copies with
    the GIL released, where slicing the body on the loop copied 64 MiB holding it."""
    fd = os.open(name, os.O_RDONLY)
    try:
        parts = []
        while start < end:
            part = os.pread(fd, end - start, start)
            if not part:
                raise OSError("JSON body file ended early")
            parts.append(part)
            start += len(part)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # join releases it too


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
    if len(body) >= FILE_BYTES:
        try:
            fd, name = tempfile.mkstemp(prefix="duralog-json-", dir=_SHM)
        except OSError:
            fd = -1  # no room for a file: the pickle below, slower for the loop but sound
        if fd >= 0:
            try:
                # The name goes in any case, even if this request is cancelled while
                # the thread still writes (the open file then lives until it closes).
                await asyncio.to_thread(_write_file, fd, body)
                written = True
            except OSError:  # tmpfs full (a container's 64 MiB /dev/shm): the pickle
                written = False
            try:
                if written:
                    span = await _run(_span_file, name, allow_empty)
                    if span is None:
                        return None
                    return await asyncio.to_thread(_read_span, name, *span)
            finally:
                # In a thread too: unlinking frees the file's pages, 56 ms for 64 MiB
                # of tmpfs on the loop. Not awaited, so it also runs on cancellation.
                asyncio.get_running_loop().run_in_executor(None, _unlink, name)
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
