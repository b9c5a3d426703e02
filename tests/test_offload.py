"""duralog/offload.py gives the same answers as protocol/jsonmode.py at every size.

Small bodies are checked inline, larger ones in a worker process, the largest
handed over through a file (or, when the file cannot be written, pickled). The
thresholds are lowered here so that each path runs on small inputs (the worker
is a real spawned process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from duralog import offload
from duralog.protocol import jsonmode
from duralog.protocol.errors import ProtocolError

BODIES = [b'  [ {"a":1} , 2 ,"x" ]  \n', b"[1]", b'{"a": [1,2]}', b' "str" ', b"[]", b" [ ] ",
          b"[1,]", b"[\n\t1\r\n]", b"[" * 300 + b"]" * 300, b"[1] [2]", b"", b"nul"]


@pytest.fixture(params=["pickled", "file", "file-system-full"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(offload, "OFFLOAD_BYTES", 0)
    monkeypatch.setattr(offload, "FILE_BYTES", 1 << 30 if request.param == "pickled" else 0)
    if request.param == "file-system-full":
        def full(fd: int, body: bytes) -> None:
            import os
            os.close(fd)
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(offload, "_write_file", full)
    yield request.param
    offload.shutdown()


def _answer(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except ProtocolError as err:
        return ("refused", err.status)


def test_same_answers_as_inline(path: str) -> None:
    async def run() -> int:
        n = 0
        for body in BODIES:
            for allow_empty in (True, False):
                want = _answer(lambda b=body, a=allow_empty: jsonmode.append_fragment(
                    b, allow_empty=a))
                try:
                    got = await offload.append_fragment(body, allow_empty=allow_empty)
                except ProtocolError as err:
                    got = ("refused", err.status)
                assert got == want, (path, body[:40], allow_empty, got, want)
                n += 1
        return n

    assert asyncio.run(run()) == 2 * len(BODIES)
