"""A real PostgreSQL for tests: Debian's server binaries, a throw-away cluster.

``PgServer`` runs ``initdb`` in a new temporary directory and starts ``postgres``
on a free TCP port on 127.0.0.1 (its unix socket lives in the same directory),
and removes everything on ``stop``. PostgreSQL refuses to run as root; when the
tests run as root (CI does), the cluster belongs to the unprivileged
``postgres`` user that Debian's package creates, and every server binary runs
as that user (``runuser``).

fsync stays on: the crash tests must see what a real deployment sees. A missing
PostgreSQL is a failure, never a skip (scripts/test installs the package).

    with PgServer() as pg:
        url = pg.create_database("t1")   # postgresql://duralog@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .servers import free_port

USER = "duralog"  # the cluster's superuser (trust authentication, local only)


def pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb; AssertionError if none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        raise AssertionError("PostgreSQL is required: no /usr/lib/postgresql/*/bin/initdb "
                             "(scripts/test installs Debian's postgresql package)")
    return Path(found[-1]).parent


class PgServer:
    """A PostgreSQL cluster in a temporary directory; see the module docstring."""

    def __init__(self, *, max_connections: int = 300) -> None:
        self.bindir = pg_bindir()
        self.port = free_port()
        self.max_connections = max_connections
        self.base = Path(tempfile.mkdtemp(prefix="duralog-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise AssertionError("running as root needs the `postgres` system user "
                                     "(Debian's postgresql package creates it)") from None
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.base, 0o700)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self._run(["mkdir", "-p", str(self.sock)])
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])

    # -- helpers ----------------------------------------------------------------
    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(self._as_user + cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    @property
    def dsn(self) -> str:
        """The URL of the default ``postgres`` database."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PgServer:
        args = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.sock), "-c", "listen_addresses=127.0.0.1",
                "-c", f"max_connections={self.max_connections}",
                "-c", "fsync=on", "-c", "synchronous_commit=on",
                "-c", "shared_buffers=64MB", "-c", "max_wal_size=256MB",
                "-c", "log_min_messages=warning", "-c", "log_line_prefix=%m [%p] "]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            if self._as_user:
                # The log file belongs to root; the child inherits the open descriptor.
                self.proc = subprocess.Popen(self._as_user + args, stdout=log, stderr=log,
                                             start_new_session=True)
            else:
                self.proc = subprocess.Popen(args, stdout=log, stderr=log,
                                             start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port), "-U", USER, "-d", "postgres"],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections within {timeout}s:\n"
                           f"{self.log_path.read_text()[-3000:]}")

    def _postmaster_pid(self) -> int | None:
        """The postmaster's pid (runuser forks it, so not always ``proc.pid``)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def signal(self, sig: int) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server: "fast" (SIGINT: roll back, checkpoint, exit) or
        "immediate" (SIGQUIT: no checkpoint, crash recovery on the next start)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- databases ------------------------------------------------------------------
    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output (unaligned, tuples only)."""
        proc = subprocess.run([str(self.bindir.parent / "bin" / "psql"), "-X", "-q", "-A", "-t",
                               "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                               "-d", database, "-v", "ON_ERROR_STOP=1", "-c", statement],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)


_counter = 0


def unique_name(prefix: str = "t") -> str:
    global _counter
    _counter += 1
    return f"{prefix}_{os.getpid()}_{_counter}"
