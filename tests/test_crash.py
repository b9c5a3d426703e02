"""Crash safety of the SQLite backend: SIGKILL the server while clients append.

A writer process (tests/crash_writer.py) appends plain POSTs and idempotent
producer appends to one stream. The server is killed with SIGKILL at random
moments and restarted on the same data directory. After every restart the
stream is read back and checked against what the writer was told:

- every append that got a 2xx is present exactly once, in order, ending at the
  Stream-Next-Offset it was given (an acknowledgement means durable);
- every record in the stream is complete (nothing half-written);
- producer records are never duplicated: a retry after a crash is recognised
  (PROTOCOL.md 5.2.1, atomicity), and their sequence numbers have no gaps.

The figures are printed for the record (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .crash_writer import record
from .servers import ROOT, ServerProcess, duralog_server, free_port, read_all

# 20 by default; DURALOG_CRASH_KILLS=200 for a longer run (about 2 s per kill).
KILLS = max(20, int(os.environ.get("DURALOG_CRASH_KILLS", "20")))
_LINE = re.compile(rb"([PQ])(\d{7}):([0-9a-f]*)")


@dataclass
class Figures:
    kills: int = 0
    checks: int = 0
    acked_checked: int = 0
    losses: int = 0
    duplicates: int = 0
    misplaced: int = 0
    torn: int = 0
    out_of_order: int = 0
    unknown_outcomes: int = 0
    unknown_present: int = 0
    producer_retries_deduplicated: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def read_journal(path: Path) -> list[dict]:
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break  # a line being written right now; the next check reads it
    return entries


def position(token: str) -> int:
    return int(token.split("_")[1])


def check(data: bytes, journal: list[dict], fig: Figures, final: bool = False) -> None:
    """Compare the stream with the journal; count every kind of violation."""
    fig.checks += 1
    where: dict[tuple[str, int], list[int]] = {}
    order: dict[str, list[int]] = {"P": [], "Q": []}
    pos = 0
    lines = data.split(b"\n")
    if lines[-1] != b"":
        fig.torn += 1
        fig.problem(f"stream does not end at a record boundary: {lines[-1][:40]!r}")
    for line in lines[:-1]:
        pos += len(line) + 1
        m = _LINE.fullmatch(line)
        if m is None or record(m.group(1).decode(), int(m.group(2))) != line + b"\n":
            fig.torn += 1
            fig.problem(f"torn or foreign record at {pos}: {line[:40]!r}")
            continue
        key = (m.group(1).decode(), int(m.group(2)))
        where.setdefault(key, []).append(pos)
        order[key[0]].append(key[1])
    for key, positions in where.items():
        if len(positions) > 1:
            fig.duplicates += len(positions) - 1
            fig.problem(f"{key} appears {len(positions)} times")
    for kind, numbers in order.items():
        if numbers != sorted(numbers):
            fig.out_of_order += 1
            fig.problem(f"{kind} records out of order")
    q = order["Q"]
    if q != list(range(len(q))):
        fig.problem("producer sequence has gaps or repeats")
        fig.out_of_order += 1
    acked = 0
    for entry in journal:
        key = (entry["k"], entry["n"])
        positions = where.get(key, [])
        if entry["st"] == "unknown":
            if final:
                fig.unknown_outcomes += 1
                fig.unknown_present += len(positions) == 1
            continue
        if not isinstance(entry["st"], int) or entry["st"] >= 300:
            fig.problem(f"writer got a refusal: {entry}")
            fig.losses += 1
            continue
        acked += 1
        if final and entry.get("retries"):
            fig.producer_retries_deduplicated += entry["st"] == 204
        if not positions:
            fig.losses += 1
            fig.problem(f"acknowledged {key} is missing")
        elif "off" in entry and positions[0] != position(entry["off"]):
            fig.misplaced += 1
            fig.problem(f"{key} ends at {positions[0]}, acknowledged at {entry['off']}")
    fig.acked_checked = max(fig.acked_checked, acked)


@pytest.mark.timeout(240 + 3 * KILLS)
def test_sigkill_loses_no_acknowledged_append_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random()
    data_dir = tmp_path / "data"
    journal = tmp_path / "journal.jsonl"
    stop = tmp_path / "stop"
    server: ServerProcess = duralog_server("sqlite", data_dir=data_dir, port=free_port(),
                                           log_path=tmp_path / "server.log")
    server.start()
    stream_url = f"{server.url}/v1/stream/crash"
    assert httpx.put(stream_url, headers={"content-type": "text/plain"}).status_code == 201
    writer = subprocess.Popen([sys.executable, "-m", "tests.crash_writer", server.url, "crash",
                               str(journal), str(stop)], cwd=ROOT)
    fig = Figures()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.8))
            server.kill()
            fig.kills += 1
            acked_before_kill = read_journal(journal)
            time.sleep(rng.uniform(0.0, 0.2))
            server.start()
            check(read_all(stream_url), acked_before_kill, fig)
        time.sleep(0.5)
    finally:
        stop.touch()
        try:
            writer.wait(30)
        finally:
            if writer.poll() is None:
                writer.kill()
    try:
        check(read_all(stream_url), read_journal(journal), fig, final=True)
    finally:
        server.stop()
    print(f"\ncrash test: {fig.kills} SIGKILLs, {fig.checks} checks, "
          f"{fig.acked_checked} acknowledged appends checked, {fig.losses} lost, "
          f"{fig.duplicates} duplicated, {fig.misplaced} at a wrong offset, "
          f"{fig.torn} torn, {fig.out_of_order} out of order; "
          f"{fig.unknown_outcomes} appends with unknown outcome ({fig.unknown_present} of them "
          f"committed), {fig.producer_retries_deduplicated} producer retries answered as "
          f"duplicates")
    assert fig.problems == []
    assert fig.kills >= 20
    assert fig.acked_checked > 100  # the writer really wrote between kills
    assert fig.losses == fig.duplicates == fig.misplaced == fig.torn == fig.out_of_order == 0
