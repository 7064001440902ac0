"""Which SQLite failures are waits, and what they wait for.

A lock held by another program past the busy timeout, or a filesystem with
no room left, goes away by itself: whoever met it retries with backoff and
says meanwhile what it waits for, in the words status and `/healthz` use.
Everything else (a constraint, bad SQL, a failed verification) is a real
failure. Errors are classified by their SQLite result code (apsw's class),
never by message text.
"""

from __future__ import annotations

import errno as errnos
import os

import apsw

from sqlwarden.errors import EngineError

#: What status says while another process holds the database's write lock.
LOCKED = "database locked by another process"
#: What status says while the filesystem holding the database (or the log) is full.
DISK_FULL = "disk full"

#: Backoff between retries of a wait: doubling from the first, capped.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def wait_reason(exc: BaseException | None, *, path: str | os.PathLike[str] | None = None
                ) -> str | None:
    """What `exc` waits for, or None when retrying cannot fix it.

    Follows `__cause__` (an `EngineError` raised from an apsw error keeps
    the original as its cause) and honours an `EngineError` that already
    says what it waits for (`waiting_for`). A write that meets ENOSPC in the
    middle of a page can surface as an I/O error rather than SQLITE_FULL;
    given the database `path`, an I/O error on a filesystem with no room
    left counts as a full disk too.
    """
    seen = 0
    while exc is not None and seen < 16:
        seen += 1
        reason = getattr(exc, "waiting_for", None)
        if isinstance(exc, EngineError) and isinstance(reason, str):
            return reason
        if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
            return LOCKED
        if isinstance(exc, apsw.FullError):
            return DISK_FULL
        if isinstance(exc, OSError) and exc.errno in (errnos.ENOSPC, errnos.EDQUOT):
            return DISK_FULL
        if isinstance(exc, apsw.IOError) and path is not None and no_room(path):
            return DISK_FULL
        exc = exc.__cause__
    return None


def no_room(path: str | os.PathLike[str], *, below_bytes: int = 1 << 20) -> bool:
    """True when the filesystem holding `path` has less than `below_bytes` free."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < below_bytes


def backoff_s(attempt: int, *, first_s: float = BACKOFF_FIRST_S,
              cap_s: float = BACKOFF_MAX_S) -> float:
    """The wait before retry number `attempt` (1-based): doubling, capped."""
    return min(cap_s, first_s * (2 ** max(0, min(attempt - 1, 30))))
