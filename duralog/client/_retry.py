"""When and how long to retry: which failures may be sent again, and the backoff.

Part of the client's sans-IO core (see ``_core``).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from . import errors as E

# Requests and how they may be retried:
#   "safe"        GET/HEAD, close-only, PUT: repeating them cannot change the outcome (5.1, 5.3)
#   "idempotent"  producer appends: the server deduplicates (id, epoch, seq) (5.2.1)
#   "unsafe"      plain appends and DELETE: retried only when the request surely never
#                 reached the server (connect failures) or when the server said it did
#                 not apply it (429, 500, 503: duralog answers these before any write
#                 commits, PROTOCOL.md 12.5); a connection lost after the request went
#                 out, or a 502/504 from a proxy, may hide a success, so that error surfaces.
RetryKind = Literal["safe", "idempotent", "unsafe"]


# ---------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for connection errors, 5xx and 429.

    ``max_attempts`` counts tries of one request, the first included (``None``:
    retry forever). Readers reset the count whenever a response makes progress,
    so a long-lived reader survives any number of separate outages. The delay
    before retry *n* is ``min(max_delay, initial_delay * multiplier**(n-1))``,
    scaled down by a random factor in ``[1 - jitter, 1]`` so that many clients
    cut off together do not come back together. A 429's or 503's ``Retry-After``
    replaces the computed delay (capped at ``max_retry_after``). ``max_elapsed``
    bounds the seconds spent retrying one request, from its first failure
    (``None``: no time bound); the budget ends at whichever limit comes first.
    ``initial_delay`` must be above 0: a zero delay is a hot loop against a
    failing server.
    """

    max_attempts: int | None = 8
    initial_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
                not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer >= 1 or None, "
                             f"not {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if self.initial_delay <= 0:
            raise ValueError(f"initial_delay must be above 0 seconds (0 retries in a hot "
                             f"loop), not {self.initial_delay!r}")
        if self.max_elapsed is not None and (
                not isinstance(self.max_elapsed, int | float) or self.max_elapsed <= 0):
            raise ValueError(f"max_elapsed must be a positive number of seconds or None, "
                             f"not {self.max_elapsed!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be >= initial_delay")
        if not isinstance(self.multiplier, int | float) or self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")

    def allows(self, attempt: int, elapsed: float = 0.0) -> bool:
        """Whether try number ``attempt`` (1-based) may still be made, ``elapsed``
        seconds after the request first failed."""
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return False
        return self.max_attempts is None or attempt <= self.max_attempts

    def delay(self, failures: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(failures - 1, 0))
        r = (rng or random).random()
        return base * (1 - self.jitter * r)


NO_RETRY = RetryPolicy(max_attempts=1)

# The idempotent producer's default budget per batch: generous (a server restart
# fits), but finite, so flush() and close() end with the error when the server
# stays down.
PRODUCER_RETRY = RetryPolicy(max_attempts=None, max_delay=5.0, max_elapsed=60.0)

# Called before each retry with the error and the seconds about to be waited
# (the CLI uses it to say "retrying" on a terminal).
RetryHook = Callable[[Exception, float], None]


class Backoff:
    """The retry budget of one request (or of a reader between two responses)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.since: float | None = None

    def next_delay(self, error: Exception) -> float | None:
        """Seconds to wait before trying again, or None when the budget is spent."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self.failures += 1
        if not self.policy.allows(self.failures + 1, now - self.since):
            return None
        hint = retry_after_of(error) if isinstance(error, E.DurableStreamError) else None
        return self.policy.delay(self.failures, hint)

    def reset(self) -> None:
        self.failures = 0
        self.since = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_of(error: E.DurableStreamError) -> float | None:
    if error.status in (429, 503):
        return parse_retry_after(error.headers.get("retry-after"))
    return None


def should_retry(kind: RetryKind, *, status: int | None, connect_failure: bool) -> bool:
    """Whether a failed request may be sent again, given how it may be retried."""
    if status is None:
        # No response. A failure before the connection was made cannot have reached
        # the server; any other may have (the answer was lost), so only requests that
        # are safe to repeat go again.
        return connect_failure or kind != "unsafe"
    if status in (429, 500, 503):
        # 12.5: refused before any work was done. duralog answers 500 and 503 only
        # before an append commits, so these are safe for plain appends too.
        return True
    if status >= 500:
        return kind != "unsafe"
    return False
