"""Retention: which whole appends to drop from the front of a stream.

An extension beyond the other Durable Streams servers (PROTOCOL.md 4 lets a
server drop old data and answer 410 for offsets before the earliest retained
one). A stream created with ``Stream-Retention-Bytes`` keeps its newest appends
up to that many bytes (always at least its newest append, whole); one created
with ``Stream-Retention-Seconds`` drops appends older than that. Data is
dropped from the front in whole appends and offsets never change: the stream's
``start`` (earliest retained position) moves forward, reads before it answer
410 with ``Stream-Earliest-Offset``, and ``offset=-1`` reads from it.

A stream that forks still read keeps its records on disk (only its own
``start`` moves): the forks keep what they reference. The records go once no
fork reads them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.state import StreamState


def has_retention(state: StreamState) -> bool:
    return state.retention_bytes is not None or state.retention_seconds is not None


def trim_start(state: StreamState, appends: Iterable[tuple[int, float]], now: float) -> int:
    """The stream's new earliest retained position.

    ``appends`` are (end position, commit time) of the stream's own whole appends
    in order (those ending at or before ``state.start`` are skipped). Both are
    non-decreasing, so the scan stops at the first append that stays.
    """
    new = state.start
    if not has_retention(state):
        return new
    cutoff = now - state.retention_seconds if state.retention_seconds is not None else None
    limit = state.retention_bytes
    bounds: Iterable[tuple[int, float]] = appends
    if state.fork_pos is not None and state.fork_pos > new:
        # A fork's inherited data ends at its fork offset, inherited at creation.
        bounds = _chain([(state.fork_pos, state.created_at)], appends)
    for end, ts in bounds:
        if end <= new:
            continue
        by_bytes = limit is not None and state.tail - new > limit and end < state.tail
        by_age = cutoff is not None and ts < cutoff
        if not (by_bytes or by_age):
            break
        new = end
    return new


def _chain(first: list[tuple[int, float]], rest: Iterable[tuple[int, float]]
           ) -> Iterable[tuple[int, float]]:
    yield from first
    yield from rest
