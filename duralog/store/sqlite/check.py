"""``duralog check``: verify a SQLite data directory offline, and repair what can be.

What is checked, in order (docs/storage.md, "Checking a data directory"):

1. the file itself: present, not empty, a SQLite database with duralog's tables;
2. ``PRAGMA integrity_check`` (SQLite's own b-tree and page checks);
3. every stream row parses;
4. every record's checksum (BLAKE2b-64 of key, kind and bytes);
5. each stream's records against its row: contiguous, from the stream's start
   (0, or its fork offset) to its tail;
6. fork references: every source exists, reference counts match the forks;
7. the registry against the streams;
8. orphaned rows: records and producer rows of streams that do not exist,
   garbage entries naming live streams, the id counter.

``repair`` fixes only what needs no invented data: unreachable records past a
tail are removed, reference counts recounted, soft-deleted streams nobody forks
are dropped, missing registry events appended, orphaned records queued for
removal, orphaned producer rows deleted, garbage entries naming live streams
removed (they would delete live data), the id counter raised. A failed
checksum, a gap in a stream, a missing fork source or a damaged page cannot be
repaired without inventing bytes: they are reported, and the server answers
500 (never wrong bytes) for reads that reach them.

It takes the data directory's lock (store/lock.py), so it refuses to run
while a server uses the directory.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ...protocol.offsets import format_offset
from ...protocol.state import StreamState
from .. import registry as reg
from ..lock import DataDirInUse, DirLock
from .batch import HEAD, MORE, record_rows
from .schema import DB_NAME, FORMAT_VERSION, record_checksum, state_from_row


@dataclass
class Finding:
    kind: str
    detail: str
    repairable: bool
    repaired: bool = False

    def line(self) -> str:
        status = "repaired" if self.repaired else ("repairable" if self.repairable
                                                   else "NOT repairable")
        return f"{self.kind}: {self.detail} [{status}]"


@dataclass
class Report:
    path: Path
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, detail: str, repairable: bool) -> Finding:
        finding = Finding(kind, detail, repairable)
        self.findings.append(finding)
        return finding

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    def summary(self) -> str:
        lines = [f"{f.line()}" for f in self.findings]
        counted = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        repaired = sum(f.repaired for f in self.findings)
        lines.append(f"{self.path}: checked {counted}; {len(self.findings)} problems found, "
                     f"{repaired} repaired, {len(self.remaining)} remaining")
        return "\n".join(lines)


def check(data_dir: str | Path, repair: bool = False) -> Report:
    path = Path(data_dir) / DB_NAME
    report = Report(path)
    if not path.exists():
        report.add("file", f"{path} does not exist", False)
        return report
    if path.stat().st_size == 0:
        report.add("file", f"{path} is empty (0 bytes): the server refuses it", False)
        return report
    lock = DirLock(path.parent)
    try:
        lock.acquire()  # a running server would change the file under the check
    except DataDirInUse as exc:
        report.add("file", f"{exc}: stop it before checking", False)
        return report
    try:
        _check_file(path, report, repair)
    finally:
        lock.release()
    return report


def _check_file(path: Path, report: Report, repair: bool) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            fmt = dict(con.execute("SELECT key, value FROM meta").fetchall()).get("format") \
                if "meta" in tables else None
        except sqlite3.DatabaseError as exc:
            report.add("file", f"{path} cannot be opened as a database: {exc}", False)
            return
        if fmt != FORMAT_VERSION:
            report.add("file", f"{path} has storage format {fmt!r}, expected "
                               f"{FORMAT_VERSION!r} (a server start migrates format 1)", False)
            return
        _Checker(con, report, repair).run()
    finally:
        con.close()


class _Checker:
    def __init__(self, con: sqlite3.Connection, report: Report, repair: bool) -> None:
        self.con = con
        self.report = report
        self.repair = repair
        self.states: dict[int, StreamState] = {}
        self.garbage: set[int] = set()

    def run(self) -> None:
        self.integrity()
        self.streams()
        if self.repair:
            self.con.execute("BEGIN IMMEDIATE")
        try:
            for step in (self.records, self.forks, self.orphans, self.registry):
                try:
                    step()
                except sqlite3.DatabaseError as exc:
                    # A damaged page: report it and go on with the other checks.
                    self.report.add(step.__name__, f"cannot be checked: {exc}", False)
            if self.repair:
                self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
                for f in self.report.findings:
                    f.repaired = False
            raise

    def fixed(self, finding: Finding) -> None:
        finding.repaired = self.repair and finding.repairable

    # -- 2: SQLite's own checks ----------------------------------------------------
    def integrity(self) -> None:
        try:
            rows = self.con.execute("PRAGMA integrity_check(100)").fetchall()
        except sqlite3.DatabaseError as exc:
            self.report.add("integrity", f"integrity_check failed: {exc}", False)
            return
        for (message,) in rows:
            if message != "ok":
                self.report.add("integrity", message, False)

    # -- 3: stream rows ------------------------------------------------------------------
    def streams(self) -> None:
        try:
            rows = self.con.execute("SELECT * FROM streams").fetchall()
            self.garbage = {r[0] for r in self.con.execute("SELECT stream FROM garbage")}
        except sqlite3.DatabaseError as exc:
            self.report.add("streams", f"table streams cannot be read: {exc}", False)
            return
        for row in rows:
            try:
                state = state_from_row(row)
            except ValueError as exc:
                self.report.add("streams", f"table streams, row id={row[0]!r}: cannot parse "
                                           f"({exc})", False)
                continue
            self.states[state.id] = state
        self.report.counts["streams"] = len(self.states)

    # -- 4 and 5: records and tails ---------------------------------------------------
    def records(self) -> None:
        report = self.report
        ends: dict[int, tuple[int, int]] = {}  # stream -> (first start, last end)
        gaps: dict[int, int] = {}
        past_tail: dict[int, int] = defaultdict(int)
        orphans: set[int] = set()
        n = nbytes = 0
        last_kind: dict[int, int] = {}
        try:
            cur = self.con.execute("SELECT stream, end_pos, kind, data, checksum FROM records "
                                   "ORDER BY stream, end_pos")
            for stream_id, end, kind, data, checksum in cur:
                n += 1
                nbytes += len(data) if isinstance(data, bytes) else 0
                state = self.states.get(stream_id)
                name = state.path if state is not None else f"#{stream_id}"
                if not isinstance(data, bytes) or checksum != record_checksum(
                        stream_id, end, kind, data):
                    start = end - len(data) if isinstance(data, bytes) else end
                    report.add("checksum", f"stream {name!r}: the record at offset "
                                           f"{format_offset(start)} failed its checksum", False)
                    data = data if isinstance(data, bytes) else b""
                if state is None:
                    if stream_id not in self.garbage:
                        orphans.add(stream_id)
                    continue
                start = end - len(data)
                if end > state.tail:
                    past_tail[stream_id] += 1
                    continue
                if end <= state.start:
                    continue  # dropped by retention, kept while forks read it
                if stream_id in ends:
                    prev_end = ends[stream_id][1]
                    if start != prev_end and stream_id not in gaps:
                        gaps[stream_id] = prev_end
                    if kind & HEAD and last_kind.get(stream_id, 0) & MORE:
                        gaps.setdefault(stream_id, prev_end)
                    ends[stream_id] = (ends[stream_id][0], end)
                else:
                    ends[stream_id] = (start, end)
                last_kind[stream_id] = kind
        except sqlite3.DatabaseError as exc:
            report.add("records", f"table records cannot be read past row {n}: {exc}", False)
        report.counts["records"] = n
        report.counts["record bytes"] = nbytes
        for stream_id, state in self.states.items():
            if stream_id in self.garbage:
                f = report.add("garbage", f"stream {state.path!r} is live but queued for "
                                          "removal", True)
                if self.repair:
                    self.con.execute("DELETE FROM garbage WHERE stream = ?", (stream_id,))
                self.fixed(f)
            base = max(state.fork_pos or 0, state.start)
            first, last = ends.get(stream_id, (base, base))
            if stream_id in past_tail:
                f = report.add("tail", f"stream {state.path!r}: {past_tail[stream_id]} "
                                       "unreachable records past its tail "
                                       f"{format_offset(state.tail)}", True)
                if self.repair:
                    self.con.execute("DELETE FROM records WHERE stream = ? AND end_pos > ?",
                                     (stream_id, state.tail))
                self.fixed(f)
            if first != base:
                report.add("tail", f"stream {state.path!r}: data from "
                                   f"{format_offset(base)} to {format_offset(first)} "
                                   "is missing", False)
            if stream_id in gaps:
                report.add("tail", f"stream {state.path!r}: data is missing after offset "
                                   f"{format_offset(gaps[stream_id])}", False)
            if last != state.tail:
                report.add("tail", f"stream {state.path!r}: its tail is "
                                   f"{format_offset(state.tail)} but its records end at "
                                   f"{format_offset(last)}", False)
        for stream_id in sorted(orphans):
            f = report.add("orphans", f"records of stream #{stream_id}, which does not exist",
                           True)
            if self.repair:
                self.con.execute("INSERT OR IGNORE INTO garbage VALUES (?)", (stream_id,))
            self.fixed(f)

    # -- 6: forks ---------------------------------------------------------------------
    def forks(self) -> None:
        children: dict[int, int] = defaultdict(int)
        for state in self.states.values():
            if state.source_id is None:
                continue
            if state.source_id not in self.states:
                self.report.add("forks", f"fork {state.path!r}: its source (stream "
                                         f"#{state.source_id}) does not exist", False)
                continue
            children[state.source_id] += 1
        for state in list(self.states.values()):
            actual = children.get(state.id, 0)
            if state.refcount != actual:
                f = self.report.add("forks", f"stream {state.path!r}: reference count "
                                             f"{state.refcount}, but {actual} forks", True)
                if self.repair:
                    self.con.execute("UPDATE streams SET refcount = ? WHERE id = ?",
                                     (actual, state.id))
                    state.refcount = actual
                self.fixed(f)
            if state.soft_deleted and actual == 0:
                f = self.report.add("forks", f"stream {state.path!r}: deleted, and no fork "
                                             "reads it any more", True)
                if self.repair:
                    self._drop(state)
                self.fixed(f)

    def _drop(self, state: StreamState) -> None:
        self.con.execute("DELETE FROM streams WHERE id = ?", (state.id,))
        self.con.execute("DELETE FROM producers WHERE stream = ?", (state.id,))
        self.con.execute("INSERT OR IGNORE INTO garbage VALUES (?)", (state.id,))
        self.states.pop(state.id, None)

    # -- 8: orphaned rows ---------------------------------------------------------------
    def orphans(self) -> None:
        ids = set(self.states)
        producers = [r[0] for r in self.con.execute("SELECT DISTINCT stream FROM producers")]
        for stream_id in producers:
            if stream_id not in ids:
                f = self.report.add("orphans", f"producer rows of stream #{stream_id}, "
                                               "which does not exist", True)
                if self.repair:
                    self.con.execute("DELETE FROM producers WHERE stream = ?", (stream_id,))
                self.fixed(f)
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        top = max(ids | self.garbage | {0})
        next_id = int(meta.get("next_id", "0"))
        if next_id <= top:
            f = self.report.add("meta", f"next_id {next_id} would reuse id {top}", True)
            if self.repair:
                self.con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'",
                                 (str(top + 1),))
            self.fixed(f)

    # -- 7: the registry -------------------------------------------------------------------
    def registry(self) -> None:
        registry = next((s for s in self.states.values() if s.path == reg.REGISTRY), None)
        if registry is None:
            return
        fragments: list[bytes] = []
        parts: list[bytes] = []
        for _end, kind, data in self.con.execute(
                "SELECT end_pos, kind, data FROM records WHERE stream = ? ORDER BY end_pos",
                (registry.id,)):
            parts.append(data)
            if not kind & MORE:
                fragments.append(b"".join(parts))
                parts = []
        try:
            live = reg.replay(fragments)
        except ValueError as exc:
            self.report.add("registry", f"the registry cannot be parsed: {exc}", False)
            return
        streams = [s for s in self.states.values() if not s.soft_deleted]
        events = reg.missing_events(live, streams, reg.REGISTRY)
        if not events:
            return
        keys = sorted({e["key"] for e in events})
        shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
        f = self.report.add("registry", f"{len(events)} events missing ({shown})",
                            reg.can_record(registry))
        if self.repair and f.repairable:
            payload = reg.encode_events(events)
            end = registry.tail + len(payload)
            self.con.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                                 record_rows(registry.id, end, payload, time.time()))
            self.con.execute("UPDATE streams SET tail = ? WHERE id = ?", (end, registry.id))
            registry.tail = end
        self.fixed(f)
