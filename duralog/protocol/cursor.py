"""Server-generated cursors for CDN collapsing (PROTOCOL.md 10.1).

Time is cut into fixed intervals counted from an epoch; the cursor is the
interval number. When a client echoes a cursor that is not behind the current
interval, the answer jumps ahead by a random 1-3600 s so cursors never repeat
and cached empty long-poll answers cannot loop.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

DEFAULT_EPOCH = datetime(2024, 10, 9, tzinfo=UTC).timestamp()
DEFAULT_INTERVAL = 20


def current_interval(now: float | None = None, interval: int = DEFAULT_INTERVAL,
                     epoch: float = DEFAULT_EPOCH) -> int:
    t = time.time() if now is None else now
    return int((t - epoch) // interval)


def next_cursor(client_cursor: str | None, now: float | None = None,
                interval: int = DEFAULT_INTERVAL, epoch: float = DEFAULT_EPOCH,
                rng: random.Random | None = None) -> str:
    """The cursor to return on a live response, given the one the client echoed."""
    current = current_interval(now, interval, epoch)
    if not client_cursor:
        return str(current)
    try:
        echoed = int(client_cursor)
    except ValueError:
        return str(current)
    if echoed < current:
        return str(current)
    jitter_seconds = (rng or random).randint(1, 3600)
    return str(echoed + max(1, -(-jitter_seconds // interval)))
