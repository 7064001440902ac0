"""Read-only connections lent one thread at a time.

In WAL mode readers never wait for the writer; what they must not do is keep
a read transaction open after they are done, because a reader pinned to an
old snapshot stops checkpoints from resetting the WAL. A connection coming
back to the pool is therefore rolled back before anyone else gets it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from engine.config import DatabaseConfig
from engine.errors import EngineStopped
from engine.sqlite import open_reader


class ReaderPool:
    """At most `size` read-only connections, each lent to one borrower at a time."""

    def __init__(self, db: DatabaseConfig, *, size: int | None = None) -> None:
        self._db = db
        self._size = size or db.readers
        self._idle: queue.LifoQueue[apsw.Connection] = queue.LifoQueue()
        self._opened = 0
        self._lent = 0
        self._lock = threading.Lock()
        self._closed = False

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
        with self._lock:
            if self._closed:
                raise EngineStopped("reader pool")
            self._lent += 1
            may_open = self._idle.empty() and self._opened < self._size
            if may_open:
                self._opened += 1
        if may_open:
            try:
                return open_reader(self._db)
            except BaseException:
                with self._lock:
                    self._opened -= 1
                    self._lent -= 1
                raise
        try:
            return self._idle.get(timeout=timeout)
        except queue.Empty:
            with self._lock:
                self._lent -= 1
            raise TimeoutError(f"no reader free within {timeout}s "
                               f"({self._size} lent)") from None

    def _release(self, conn: apsw.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except apsw.Error:
            conn.close()
            with self._lock:
                self._opened -= 1
                self._lent -= 1
            return
        with self._lock:
            self._lent -= 1
            if self._closed:
                conn.close()
                self._opened -= 1
                return
        self._idle.put(conn)

    def close(self) -> None:
        """Close idle connections now; lent ones close when they come back."""
        with self._lock:
            self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            conn.close()
            with self._lock:
                self._opened -= 1
