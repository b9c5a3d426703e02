"""``python -m bench.loopwatch serve [duralog serve flags]``: find what holds the loop.

Runs ``duralog serve`` with a sampler thread that looks at the main thread's
stack every millisecond. While the event loop waits for I/O (uvloop), the main
thread's innermost Python frame is the asyncio runner's; any stretch longer
than ``LOOPWATCH_MS`` (default 30) in which it is not is written to
``LOOPWATCH_OUT`` (default ./loopwatch.txt) with its most frequent stacks.

A stretch is "the loop never went idle", which may be many short callbacks in a
row (a body arriving at full speed) as well as one long one; the stacks tell
which. It is how the stalls in docs/security.md were found. The sampler needs
the GIL, so a C call that holds it shows as one long sample.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback
from types import FrameType

LIMIT = float(os.environ.get("LOOPWATCH_MS", "30")) / 1000
OUT = os.environ.get("LOOPWATCH_OUT", "loopwatch.txt")


def _idle(frame: FrameType) -> bool:
    return frame.f_code.co_filename.endswith(os.path.join("asyncio", "runners.py"))


def _sample(main: int) -> None:
    start: float | None = None
    stacks: collections.Counter[str] = collections.Counter()
    with open(OUT, "a") as out:
        while True:
            time.sleep(0.001)
            frame = sys._current_frames().get(main)
            if frame is None:
                continue
            now = time.perf_counter()
            if _idle(frame):
                if start is not None and now - start > LIMIT:
                    out.write(f"=== loop busy for {1000 * (now - start):.0f} ms "
                              f"(at {time.strftime('%H:%M:%S')})\n")
                    for stack, n in stacks.most_common(3):
                        out.write(f"--- {n} samples\n{stack}\n")
                    out.flush()
                start = None
                stacks.clear()
            else:
                if start is None:
                    start = now
                stacks["".join(traceback.format_list(traceback.extract_stack(frame)[-8:]))] += 1


def main() -> int:
    from duralog.cli import main as cli

    threading.Thread(target=_sample, args=(threading.main_thread().ident,),
                     daemon=True).start()
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
