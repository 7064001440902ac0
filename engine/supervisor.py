"""Failures reach someone: actors report here, status shows it, the engine decides.

Two kinds of report. A failure an actor handled (an error handed to an asker,
a tell that failed) is recorded and shown. An actor that fails unexpectedly
(a handler raised something no caller was told to expect, or the actor died)
is down: the Writer going down stops the engine, as does a fatal SQLite
error anywhere; any other actor is restarted after a backoff that doubles
with each failure in a row (`faults.backoff_s`), and is rebuilt from its
state in the database. What happened goes to status and the message log.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import apsw

from sqlwarden.db.faults import backoff_s
from sqlwarden.errors import EngineError
from sqlwarden.protocol import WRITER, ActorFailed, ActorRestarted, Message
from sqlwarden.redact import Redactor

#: SQLite failures after which the writer connection cannot be trusted.
FATAL_SQLITE_ERRORS = (apsw.CorruptError, apsw.NotADBError, apsw.IOError, apsw.CantOpenError)
_KEPT = 100
#: Actors that are never restarted: the Writer owns the only read-write connection and
#: what it had queued; after it goes down nothing can be written, so the engine stops.
NOT_RESTARTED = frozenset({WRITER})
#: An actor that stayed up this long since its last failure starts its backoff afresh.
BACKOFF_RESET_S = 60.0


class ActorDied(EngineError):
    """An actor stopped without the engine asking it to."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One failure an actor reported."""

    actor: str
    message_kind: str
    error_type: str
    error: str
    at: float
    fatal: bool
    #: The actor went down and is restarted after this many seconds.
    restart_in_s: float | None = None


class Supervisor:
    """Records failures reported by actors; stops the engine on a fatal one and has the
    engine restart any other actor that went down."""

    def __init__(self, *, redactor: Redactor | None = None, clock: Callable[[], float] = time.time,
                 on_fatal: Callable[[Failure], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._redactor = redactor or Redactor()
        self._clock = clock
        self._monotonic = monotonic
        self._on_fatal = on_fatal
        #: `(actor, delay_s)`: the engine restarts `actor` in `delay_s` seconds.
        self.on_restart: Callable[[str, float], None] | None = None
        #: Where `ActorFailed` and `ActorRestarted` go (the message log).
        self.on_event: Callable[[Message], None] | None = None
        self._lock = threading.Lock()
        self._recent: deque[Failure] = deque(maxlen=_KEPT)
        self.total = 0
        self._restarts: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._last_down: dict[str, float] = {}
        self._restarting: set[str] = set()

    def report(self, actor: str, message_kind: str, error: BaseException) -> Failure:
        """Record a failure; called from the failing actor's thread."""
        failure = self._record(actor, message_kind, error, fatal=is_fatal(error))
        if failure.fatal and self._on_fatal is not None:
            self._on_fatal(failure)
        return failure

    def restartable(self, actor: str) -> bool:
        """Whether `actor` is restarted when it goes down (every actor but the Writer)."""
        return actor not in NOT_RESTARTED

    def actor_down(self, actor: str, error: BaseException, message_kind: str = "actor", *,
                   record: bool = True) -> Failure:
        """`actor` failed unexpectedly and has stopped: stop the engine, or restart it later.

        Called from the failing actor's thread (or the one that tried to restart it;
        `record=False` when that failure was already recorded).
        """
        fatal = not self.restartable(actor) or is_fatal(error)
        delay: float | None = None
        with self._lock:
            now = self._monotonic()
            if now - self._last_down.get(actor, -math.inf) > BACKOFF_RESET_S:
                self._attempts[actor] = 0
            self._last_down[actor] = now
            if not fatal:
                self._attempts[actor] += 1
                delay = backoff_s(self._attempts[actor])
                self._restarting.add(actor)
            upcoming = self._restarts[actor] + 1
        failure = self._record(actor, message_kind, error, fatal=fatal, restart_in_s=delay,
                               count=record)
        self._emit(ActorFailed(actor=actor, error_type=failure.error_type, error=failure.error,
                               fatal=fatal, restarts=0 if fatal else upcoming,
                               restart_in_s=delay))
        if fatal:
            if self._on_fatal is not None:
                self._on_fatal(failure)
        elif self.on_restart is not None and delay is not None:
            self.on_restart(actor, delay)
        return failure

    def restarted(self, actor: str) -> None:
        """The engine has `actor` running again, rebuilt and back on the bus."""
        with self._lock:
            self._restarts[actor] += 1
            self._restarting.discard(actor)
            count = self._restarts[actor]
        self._emit(ActorRestarted(actor=actor, restarts=count))

    def restarts(self) -> dict[str, int]:
        """How many times each actor was restarted."""
        with self._lock:
            return dict(self._restarts)

    def restarting(self) -> tuple[str, ...]:
        """The actors that are down and wait for their restart."""
        with self._lock:
            return tuple(sorted(self._restarting))

    def failures(self) -> tuple[Failure, ...]:
        """The most recent failures, oldest first."""
        with self._lock:
            return tuple(self._recent)

    def _record(self, actor: str, message_kind: str, error: BaseException, *, fatal: bool,
                restart_in_s: float | None = None, count: bool = True) -> Failure:
        failure = Failure(actor=actor, message_kind=message_kind,
                          error_type=type(error).__name__,
                          error=self._redactor.text(str(error)), at=self._clock(),
                          fatal=fatal, restart_in_s=restart_in_s)
        if count:
            with self._lock:
                self._recent.append(failure)
                self.total += 1
        return failure

    def _emit(self, message: Message) -> None:
        if self.on_event is not None:
            self.on_event(message)


def is_fatal(error: BaseException) -> bool:
    """True for errors after which the engine must stop rather than carry on."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, FATAL_SQLITE_ERRORS):
            return True
        cause = cause.__cause__
    return False


def is_unexpected(error: BaseException) -> bool:
    """True for a handler's error no caller was told to expect: a bug, or a state the
    actor cannot trust any more. `EngineError`s are the protocol's answers, and a
    `ValueError` is a request's bad argument; anything else takes the actor down."""
    return not isinstance(error, (EngineError, ValueError))
