"""The client side of the crash test: appends while the server is killed and restarted.

Run as ``python -m tests.crash_writer URL STREAM JOURNAL STOPFILE``. Two threads
append newline-terminated records to one text/plain stream until STOPFILE exists:

- ``P`` records: plain POSTs, never retried. A 2xx is journaled with the offset
  the server gave; a connection error or 5xx is journaled as an unknown outcome.
- ``Q`` records: an idempotent producer (PROTOCOL.md 5.2.1) that retries the
  same (epoch, seq) after connection errors and 5xx until it gets an answer.
  200 is journaled with its offset; 204 means the server already had it (a
  commit whose answer the crash swallowed).

Every record's content is a function of its kind and number (``record()``), so
the checker can tell a complete record from a torn or foreign one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import httpx

PRODUCER_ID = "crash-writer"


def record(kind: str, n: int) -> bytes:
    filler = hashlib.sha256(f"{kind}{n}".encode()).hexdigest()[: 8 + n % 48]
    return f"{kind}{n:07d}:{filler}\n".encode()


class Journal:
    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, **entry: object) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def plain_writer(url: str, journal: Journal, stop: Path) -> None:
    n = 0
    with httpx.Client(timeout=5.0) as client:
        while not stop.exists():
            try:
                r = client.post(url, content=record("P", n),
                                headers={"content-type": "text/plain"})
            except httpx.HTTPError as exc:
                journal.write(k="P", n=n, st="unknown", why=type(exc).__name__)
                time.sleep(0.02)
            else:
                if 200 <= r.status_code < 300:
                    journal.write(k="P", n=n, st=r.status_code,
                                  off=r.headers["stream-next-offset"])
                else:
                    journal.write(k="P", n=n, st="unknown", why=str(r.status_code))
                    time.sleep(0.02)
            n += 1


def producer_writer(url: str, journal: Journal, stop: Path) -> None:
    seq = 0
    with httpx.Client(timeout=5.0) as client:
        while not stop.exists():
            headers = {"content-type": "text/plain", "producer-id": PRODUCER_ID,
                       "producer-epoch": "0", "producer-seq": str(seq)}
            retries = 0
            while True:
                try:
                    r = client.post(url, content=record("Q", seq), headers=headers)
                except httpx.HTTPError:
                    retries += 1
                    time.sleep(0.02)
                    continue
                if r.status_code >= 500:
                    retries += 1
                    time.sleep(0.02)
                    continue
                break
            if r.status_code == 200:
                journal.write(k="Q", n=seq, st=200, off=r.headers["stream-next-offset"],
                              retries=retries)
            elif r.status_code == 204:
                journal.write(k="Q", n=seq, st=204, retries=retries)
            else:
                journal.write(k="Q", n=seq, st=r.status_code, body=r.text[:200])
                return  # a refusal is a bug the checker reports
            seq += 1


def main(argv: list[str]) -> int:
    url, stream, journal_path, stop_path = argv
    journal = Journal(Path(journal_path))
    stop = Path(stop_path)
    target = f"{url}/v1/stream/{stream}"
    threads = [threading.Thread(target=fn, args=(target, journal, stop))
               for fn in (plain_writer, producer_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
