"""One owner per data directory: an OS file lock held while a store is open.

``flock`` on ``<data dir>/duralog.lock``: the kernel drops it when the owner
exits, however it exits (kill -9 included), so no lock is ever stale. flock
locks belong to an open file, so a second store in the same process is refused
too, which protects embedded use as well as ``duralog serve``. The file holds
the owner's PID so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "duralog.lock"


class DataDirInUse(RuntimeError):
    """Another process (or store) owns the data directory."""


class DirLock:
    __slots__ = ("_fd", "data_dir", "path")

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory",
                                     str(self.data_dir))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "a process that has not written its pid yet"
            raise DataDirInUse(f"data directory {self.data_dir} is in use by another duralog "
                               f"({who})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: removing it would let a third process lock a new inode
        # while a second still waits on the old one.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
