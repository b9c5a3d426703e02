"""The tail cache: the newest records of each stream, in memory, for live readers.

Records never change once committed (a position names the same bytes forever;
ids are never reused), so a store may keep any committed record it has seen.
A stream's entry holds every record whose end is past ``start``, in order,
with no hole; a record that does not follow the last one starts the entry
afresh. Live readers near the tail then read from memory, not from disk or
the database.

The sqlite store adds what its writer commits. The postgres store adds its own
commits and the records its readers fetched (other nodes' commits: when a
commit wakes many readers of one stream, one fetches and the others read here).
Only whole appends up to one piece (256 KiB) are kept, never pieces of larger
appends, so reads that need whole appends (JSON) can be served from here too.
"""

from __future__ import annotations

from collections import OrderedDict

#: Per stream, and for all streams together (least recently extended go first).
TAIL_CACHE_STREAM = 256 << 10
TAIL_CACHE_TOTAL = 64 << 20


class Tail:
    """One stream's newest records: every record with end > ``start``."""

    __slots__ = ("datas", "ends", "size", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.size = 0

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else self.start


class TailCache:
    def __init__(self) -> None:
        self.tails: OrderedDict[int, Tail] = OrderedDict()
        self.nbytes = 0

    def get(self, stream_id: int) -> Tail | None:
        return self.tails.get(stream_id)

    def drop(self, stream_id: int) -> None:
        tail = self.tails.pop(stream_id, None)
        if tail is not None:
            self.nbytes -= tail.size

    def add(self, stream_id: int, end: int, data: bytes | None, start: int | None = None) -> None:
        """Record ``data`` ending at ``end`` (``start``: where it begins, for a piece or
        an append too large to keep, given as ``data`` None)."""
        begin = end - len(data) if data is not None else (end if start is None else start)
        tail = self.tails.get(stream_id)
        if tail is not None and end <= tail.end:
            return  # already known
        if tail is None or begin != tail.end:
            self.drop(stream_id)
            tail = self.tails[stream_id] = Tail(begin)
        else:
            self.tails.move_to_end(stream_id)
        if data is None:
            # Not kept: the entry restarts after it.
            self.nbytes -= tail.size
            tail.start, tail.ends, tail.datas, tail.size = end, [], [], 0
            return
        tail.ends.append(end)
        tail.datas.append(data)
        tail.size += len(data)
        self.nbytes += len(data)
        if tail.size > TAIL_CACHE_STREAM:
            # Drop the older half at once, so trimming costs O(1) per append.
            keep = TAIL_CACHE_STREAM // 2
            size, i = tail.size, 0
            while size > keep and i < len(tail.datas) - 1:
                size -= len(tail.datas[i])
                i += 1
            if i:
                tail.start = tail.ends[i - 1]
                self.nbytes -= tail.size - size
                tail.size = size
                del tail.ends[:i]
                del tail.datas[:i]
        while self.nbytes > TAIL_CACHE_TOTAL and self.tails:
            _, evicted = self.tails.popitem(last=False)
            self.nbytes -= evicted.size
