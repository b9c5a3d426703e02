"""Recovery of the subscription manager: journal replay, snapshots, reconciliation.

``Manager`` (manager.py) inherits these. Replay applies journal events
(journal.py) in order; every event is absolute, so a replay over a snapshot
and the events written after it gives the same state. Reconciliation then
matches the links with the streams that exist, re-arms lease timers, resumes
webhook deliveries and re-announces pull wakes that were pending at a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...protocol.offsets import ZERO
from .model import RESERVED, Link, Subscription
from .signing import Keyring

if TYPE_CHECKING:
    from .manager import Manager

    _Base = Manager
else:
    _Base = object


class Recovery(_Base):
    def _replay(self, e: dict[str, Any]) -> None:
        kind = e.get("e")
        if kind == "keys":
            self.keys = Keyring.from_json(e)
        elif kind == "head":
            sub = self.subs.get(e["id"])
            if sub is None or sub.config_hash != e["hash"] or sub.created_at != e["created_at"]:
                self._drop(e["id"])
                self._add(Subscription.from_head(e))
            else:
                sub.apply_head(e)
        elif kind == "links":
            sub = self.subs.get(e["id"])
            if sub is not None:
                for path, explicit, glob, acked in e["links"]:
                    self._set_link(sub, Link(path, explicit, glob, acked))
        elif kind == "unlink":
            sub = self.subs.get(e["id"])
            if sub is not None:
                self._unlink(sub, e["path"])
        elif kind == "acks":
            sub = self.subs.get(e["id"])
            if sub is not None:
                for path, offset in e["acks"].items():
                    link = sub.links.get(path)
                    if link is not None:
                        link.acked = offset
        elif kind == "del":
            self._drop(e["id"])


    def snapshot(self) -> list[dict[str, Any]]:
        """The whole state as events (compaction, journal.py)."""
        events: list[dict[str, Any]] = [{"e": "keys", **self.keys.to_json()}]
        for sub in self.subs.values():
            events.append({"e": "head", **sub.head_record()})
            if sub.links:
                events.append({"e": "links", "id": sub.id, "links": sub.links_record()})
        return events


    def _reconcile(self) -> None:
        """After replay: links match the streams that exist, timers run, wakes resume."""
        for state in self.store.list_states():
            path = state.path
            if path.split("/", 1)[0] == RESERVED:
                continue
            self.ids[state.id] = path
            self.paths.add(path)
            for sub_id in self.index.matches(path):
                sub = self.subs[sub_id]
                if path not in sub.links and self._glob_candidate(sub, path):
                    # Created after the last journaled link: linked before its appends.
                    self._set_link(sub, Link(path, glob=True, acked=ZERO))
                    self.journal.post({"e": "links", "id": sub.id,
                                       "links": sub.links_record([sub.links[path]])})
        for sub in list(self.subs.values()):
            for path in [p for p, ln in sub.links.items() if self.store.get(p) is None]:
                link = sub.links[path]
                if link.glob and not link.explicit:
                    self._unlink(sub, path)
                    self.journal.post({"e": "unlink", "id": sub.id, "path": path})
            if sub.lease_until is not None:
                self._arm_lease(sub)  # fires at once when it ran out while we were down
            if sub.wake_id is not None:
                if sub.config.type == "webhook":
                    self.delivery.wake(sub)
                elif sub.holder is None:
                    # The wake event may not have reached the wake stream before a crash.
                    self._spawn(self._write_wake_event(sub, next(iter(sub.snapshot), "")))
            elif sub.holder is None and self.has_pending(sub):
                self._trigger_next(sub)
