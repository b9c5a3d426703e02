"""The store's live-reader wake-ups, without a server."""

from __future__ import annotations

import asyncio

from duralog.store.base import PRUNE_AT, Notifier


def test_changed_wakes_every_waiter_of_that_stream_only() -> None:
    async def run() -> None:
        notifier = Notifier()
        mine = [notifier.future(1) for _ in range(3)]
        other = notifier.future(2)
        notifier.changed(1)
        assert all(f.done() for f in mine)
        assert not other.done()
        # the woken futures are forgotten: a second change wakes nobody new
        again = notifier.future(1)
        notifier.changed(1)
        assert again.done()

    asyncio.run(run())


def test_waiters_that_gave_up_are_forgotten_and_live_ones_kept() -> None:
    async def run() -> None:
        notifier = Notifier()
        live = [notifier.future(7) for _ in range(3000)]
        for _ in range(5 * PRUNE_AT):
            notifier.future(7).cancel()  # a long-poll that timed out
        waiting = notifier._waiters[7]
        # bounded by the live readers, not by every poll that ever waited
        assert len(waiting) <= 2 * (len(live) + PRUNE_AT)
        notifier.changed(7)
        assert all(f.done() and not f.cancelled() for f in live)

    asyncio.run(run())
