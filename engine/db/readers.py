"""Read-only connections lent one thread at a time.

In WAL mode readers never wait for the writer; what they must not do is keep
a read transaction open after they are done, because a reader pinned to an
old snapshot stops checkpoints from resetting the WAL. A connection coming
back to the pool is therefore rolled back before anyone else gets it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import apsw

from sqlwarden.config import DatabaseConfig
from sqlwarden.db.connect import open_reader
from sqlwarden.errors import EngineStopped


class ReaderPool:
    """At most `size` read-only connections, each lent to one borrower at a time.

    One condition guards all state, and every change that could let a waiter
    go on (a connection back, one discarded, a failed open, the pool closing)
    notifies it.
    """

    def __init__(self, db: DatabaseConfig, *, size: int | None = None,
                 give_up: Callable[[], bool] | None = None) -> None:
        """`give_up()` true (the engine stops) ends a read's wait for a lock at once."""
        self._db = db
        self._give_up = give_up
        self._size = size or db.readers
        self._idle: list[apsw.Connection] = []
        self._opened = 0
        self._lent = 0
        self._closed = False
        self._waiting = 0
        self._changed = threading.Condition()

    @property
    def size(self) -> int:
        return self._size

    @property
    def lent(self) -> int:
        """Connections borrowed right now."""
        return self._lent

    @contextmanager
    def lend(self, timeout: float | None = None) -> Iterator[apsw.Connection]:
        """Borrow a read-only connection; waits while all of them are lent."""
        conn = self._acquire(timeout)
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self, timeout: float | None) -> apsw.Connection:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closed:
                    raise EngineStopped("reader pool")
                if self._idle:
                    self._lent += 1
                    return self._idle.pop()
                if self._opened < self._size:
                    self._opened += 1
                    self._lent += 1
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no reader free within {timeout}s "
                                       f"({self._size} lent)")
                self._waiting += 1
                self._changed.notify_all()
                try:
                    self._changed.wait(remaining)
                finally:
                    self._waiting -= 1
        try:
            return open_reader(self._db, give_up=self._give_up)
        except BaseException:
            self._forget(None)
            raise

    def _release(self, conn: apsw.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except apsw.Error:
            self._forget(conn)
            return
        with self._changed:
            self._lent -= 1
            if self._closed:
                conn.close()
                self._opened -= 1
            else:
                self._idle.append(conn)
            self._changed.notify()

    def _forget(self, conn: apsw.Connection | None) -> None:
        """A lent connection is gone (closed, or never opened): make room for another."""
        if conn is not None:
            conn.close()
        with self._changed:
            self._lent -= 1
            self._opened -= 1
            self._changed.notify()

    def wait_for_waiters(self, count: int, timeout: float | None = None) -> bool:
        """Block until `count` borrowers wait for a connection (a barrier for tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting >= count, timeout)

    def close(self) -> None:
        """Close idle connections now; lent ones close when they come back."""
        with self._changed:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._opened -= len(self._idle)
            self._idle.clear()
            self._changed.notify_all()
