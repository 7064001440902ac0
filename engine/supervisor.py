"""Failures reach someone: actors report here, status shows it, the engine decides."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import apsw

from sqlwarden.redact import Redactor

#: SQLite failures after which the writer connection cannot be trusted.
FATAL_SQLITE_ERRORS = (apsw.CorruptError, apsw.NotADBError, apsw.IOError, apsw.CantOpenError)
_KEPT = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One failure an actor reported."""

    actor: str
    message_kind: str
    error_type: str
    error: str
    at: float
    fatal: bool


class Supervisor:
    """Records failures reported by actors and stops the engine on a fatal one."""

    def __init__(self, *, redactor: Redactor | None = None, clock: Callable[[], float] = time.time,
                 on_fatal: Callable[[Failure], None] | None = None) -> None:
        self._redactor = redactor or Redactor()
        self._clock = clock
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._recent: deque[Failure] = deque(maxlen=_KEPT)
        self.total = 0

    def report(self, actor: str, message_kind: str, error: BaseException) -> Failure:
        """Record a failure; called from the failing actor's thread."""
        failure = Failure(actor=actor, message_kind=message_kind,
                          error_type=type(error).__name__,
                          error=self._redactor.text(str(error)), at=self._clock(),
                          fatal=is_fatal(error))
        with self._lock:
            self._recent.append(failure)
            self.total += 1
        if failure.fatal and self._on_fatal is not None:
            self._on_fatal(failure)
        return failure

    def failures(self) -> tuple[Failure, ...]:
        """The most recent failures, oldest first."""
        with self._lock:
            return tuple(self._recent)


def is_fatal(error: BaseException) -> bool:
    """True for errors after which the engine must stop rather than carry on."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, FATAL_SQLITE_ERRORS):
            return True
        cause = cause.__cause__
    return False
