"""Random State Protocol event sequences for the interop and property tests."""

from __future__ import annotations

import random
from typing import Any

TYPES = ["user", "note", "flag", "presence"]
# Keys that trip naive JS objects (we compare against a JS Map) and non-ASCII text.
KEYS = ["1", "2", "3", "user:7", "__proto__", "constructor", "a b", "ü", "toString", "0"]


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**31), 2**31)
    if kind == 3:
        return rng.choice([0.5, -2.25, 1e-3, 3.0e10, 0.1])
    if kind == 4:
        return rng.choice(["", "x", "héllo", "line\nbreak", "\u2028", "😀"])
    if kind == 5:
        return [value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["id", "name", "n", "__proto__", "nested"]): value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def headers(rng: random.Random, operation: str) -> dict[str, Any]:
    h: dict[str, Any] = {"operation": operation}
    if rng.random() < 0.2:
        h["txid"] = f"tx-{rng.randrange(1000)}"
    if rng.random() < 0.1:
        h["timestamp"] = "2025-01-15T10:30:00Z"
    return h


def sequence(rng: random.Random, length: int | None = None) -> list[dict[str, Any]]:
    """Inserts, updates, deletes, upserts over several types, with resets and
    snapshots (snapshot-start, inserts of live keys, snapshot-end) mixed in."""
    events: list[dict[str, Any]] = []
    live: dict[tuple[str, str], Any] = {}
    for _ in range(length if length is not None else rng.randrange(1, 60)):
        roll = rng.random()
        t, k = rng.choice(TYPES), rng.choice(KEYS)
        if roll < 0.03:
            events.append({"headers": {"control": "reset"}})
            live.clear()
        elif roll < 0.06:
            events.append({"headers": {"control": "snapshot-start", "offset": "0_0"}})
            for (st, sk) in list(live)[: rng.randrange(len(live) + 1)]:
                v = value(rng)
                live[(st, sk)] = v
                events.append({"type": st, "key": sk, "value": v,
                               "headers": {"operation": "insert"}})
            events.append({"headers": {"control": "snapshot-end"}})
        elif roll < 0.35:
            v = value(rng)
            live[(t, k)] = v
            events.append({"type": t, "key": k, "value": v, "headers": headers(rng, "insert")})
        elif roll < 0.6:
            v = value(rng)
            e: dict[str, Any] = {"type": t, "key": k, "value": v,
                                 "headers": headers(rng, "update")}
            if (t, k) in live and rng.random() < 0.5:
                e["old_value"] = live[(t, k)]
            live[(t, k)] = v
            events.append(e)
        elif roll < 0.8:
            v = value(rng)
            live[(t, k)] = v
            events.append({"type": t, "key": k, "value": v, "headers": headers(rng, "upsert")})
        else:
            e = {"type": t, "key": k, "headers": headers(rng, "delete")}
            if rng.random() < 0.3:
                e["value"] = None
            if (t, k) in live and rng.random() < 0.5:
                e["old_value"] = live[(t, k)]
            live.pop((t, k), None)
            events.append(e)
    return events
