"""The rest of the device, for tests: another program holding the database's write lock,
and a small filesystem that fills up.

The lock holder is a process of its own, as another program on the device is: two
SQLite libraries in one process (apsw's and Python's own `sqlite3`) never see each
other's POSIX locks, so a connection in a thread of the test would block nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

#: Python's own sqlite3 takes the write lock, says so, and keeps it until told (a line
#: on stdin). It tries again at once rather than through SQLite's busy timeout, which
#: backs off to 100 ms sleeps and can miss every gap between an engine's commits.
HOLDER = """\
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
deadline = time.monotonic() + 60
while True:
    try:
        conn.execute("BEGIN IMMEDIATE")
        break
    except sqlite3.OperationalError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.0002)
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class LockHolder:
    """Another process holding `BEGIN IMMEDIATE` on the database at `path` until `release()`."""

    def __init__(self, path: Path | str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the lock holder did not get the lock: {line!r} {err}")
        self.since = time.monotonic()

    def held_s(self) -> float:
        """How long the lock has been held."""
        return time.monotonic() - self.since

    def hold_for(self, seconds: float) -> None:
        """Return once the lock has been held `seconds` in all. How long the other program
        keeps it is part of the scenario (longer than a busy timeout), not a wait on the
        engine, so this sleeps."""
        time.sleep(max(0.0, seconds - self.held_s()))

    def release(self) -> None:
        """Let go of the lock and wait for the process to end (again: nothing happens)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            if self.proc.wait(timeout=30) != 0:
                raise AssertionError(f"the lock holder failed: {self.proc.stderr.read()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def held_write_lock(path: Path | str) -> Iterator[LockHolder]:
    """Another process holds the database's write lock inside the block."""
    holder = LockHolder(path)
    try:
        yield holder
        holder.release()
    finally:
        holder.kill()


class NoTmpfs(Exception):
    """A small filesystem cannot be mounted here (not root, or mount refused)."""


@contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (`3m`) mounted on the empty folder `where` for the block.

    Raises `NoTmpfs` when it cannot be mounted (mounting needs root; CI runs as root).
    """
    if os.geteuid() != 0:
        raise NoTmpfs("mounting a small tmpfs needs root (CI runs the tests as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise NoTmpfs(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave_bytes: int) -> None:
    """Write a filler file at `path` that leaves about `leave_bytes` free on its filesystem."""
    with open(path, "wb") as out:
        out.write(b"\0" * max(0, free_bytes(path.parent) - leave_bytes))


class Watcher:
    """Calls `look()` on a thread every 10 ms for the `with` block, to keep what a test
    saw while something waited (subclasses say what to look at and keep)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def look(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            self._stop.wait(0.01)
