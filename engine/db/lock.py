"""One engine per database: a lock on `<database>.lock` that dies with its process.

`EngineLock.acquire` takes an exclusive `flock` on the lock file beside the
database before anything else of the engine touches the disk. The kernel
drops the lock when its process ends, however it ends (a SIGKILL too), so a
stale lock cannot outlive its engine. `flock` belongs to one open file
description, not to the process: a second `Engine` in the same process opens
the file again and is refused like another process would be (POSIX record
locks would let it through).

The lock file sits beside the database file itself: a database path that is
(or goes through) a symlink is resolved first, so two names for one file
share one lock.

The file holds who has the lock (pid, since when, status endpoint), one JSON
line, for the refusal to name. It is removed by its holder on release. Whoever
takes the lock checks, while holding it, that the path still names the file it
locked: one opened just before its holder removed it is stale, so it is opened
anew. Reading engines (`sqlwarden status`, readers) never take the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from sqlwarden.config.paths import link_problem
from sqlwarden.errors import DatabaseError

LOCK_SUFFIX = ".lock"


def lock_path(database: Path | str) -> Path:
    """The lock file of the database at `database`, beside the file a symlink names.

    One database reached by two names (`alias.db -> task.db`, a linked
    folder) has one lock: the path is resolved first, the way SQLite resolves
    it when it opens the file. A database not created yet resolves through
    its folder (and through a symlink that names the file to come). The
    user's symlinks are only read, never changed.
    """
    return Path(f"{os.path.realpath(database)}{LOCK_SUFFIX}")


class EngineLock:
    """The held lock of one running engine on one database."""

    def __init__(self, database: Path, path: Path, fd: int, created_dirs: list[Path]) -> None:
        self.database = database
        self.path = path
        self._fd: int | None = fd
        self._created_dirs = created_dirs
        self.since = time.time()

    @classmethod
    def acquire(cls, database: Path | str) -> EngineLock:
        """Take the lock, or raise `DatabaseError` naming the engine that holds it.

        A refusal creates and changes nothing: a held lock's file exists already.
        """
        database = Path(database)
        problem = link_problem(database)
        if problem is not None:
            raise DatabaseError(f"cannot use database path {database}: {problem}",
                                path=database)
        path = lock_path(database)
        created_dirs = []
        folder = path.parent
        while not os.path.lexists(folder):
            created_dirs.append(folder)
            folder = folder.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    # Never through a link: the lock file is written and removed.
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                                 0o644)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    raise DatabaseError(f"the engine's lock file {path} is a symbolic link; "
                                        "the engine does not write through it (remove the "
                                        "link)", path=database) from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    raise DatabaseError(_refusal(database, path), path=database) from None
                if _still_named(fd, path):
                    break
                os.close(fd)  # its holder removed it as we opened it: take the new one
        except OSError as exc:
            _remove_dirs(created_dirs)
            raise DatabaseError(f"cannot take the engine lock {path}: {exc.strerror or exc}",
                                path=database) from exc
        lock = cls(database, path, fd, created_dirs)
        lock.describe()
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def describe(self, *, endpoint: str | None = None) -> None:
        """Write who holds the lock (this process) for a refused engine to name."""
        if self._fd is None:
            return
        line = json.dumps({"pid": os.getpid(), "since": self.since, "endpoint": endpoint,
                           "database": str(self.database)}) + "\n"
        # Best effort: a full disk must not stop an engine that holds the lock.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, line.encode(), 0)

    def release(self) -> None:
        """Remove the file and let go; folders made for it go too if left empty."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Removed while still held: an engine that opened it meanwhile sees
            # the path no longer names it once it gets the lock, and opens anew.
            if _still_named(fd, self.path):
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(fd)
        _remove_dirs(self._created_dirs)


def read_holder(path: Path | str) -> dict[str, Any] | None:
    """What the lock file says about its holder; None if it cannot be read."""
    try:
        data = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _refusal(database: Path, path: Path) -> str:
    holder = read_holder(path) or {}
    resolved = Path(str(path).removesuffix(LOCK_SUFFIX))
    if str(resolved) != os.path.abspath(database):
        database = Path(f"{database} (that is {resolved})")
    parts = []
    if isinstance(holder.get("pid"), int):
        mine = " (this process)" if holder["pid"] == os.getpid() else ""
        parts.append(f"pid {holder['pid']}{mine}")
    if isinstance(holder.get("since"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(holder["since"])))
    if holder.get("endpoint"):
        parts.append(f"status at {holder['endpoint']}")
    who = f" ({', '.join(parts)})" if parts else ""
    return (f"another engine is running on database {database}{who}; one engine per "
            f"database (lock: {path})")


def _still_named(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)  # a link put there since names something else
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_dirs(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
