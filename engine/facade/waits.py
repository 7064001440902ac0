"""The steps of an engine's start that write, each waiting out what passes by itself.

Opening the database, applying the schema and the boot recovery each write.
While another program holds the database's write lock past the busy
timeout, or the filesystem is full, a step is tried again with a doubling
backoff (`db.faults.backoff_s`) until the cause goes, saying once what it
waits for; then the start goes on by itself. A stop asked for meanwhile (a
signal, `Engine.stop()` from another thread) or a deadline passed ends the
wait: the starter undoes what it did. Anything else a step raises is a real
failure and goes up at once.

Runs on the thread that starts the engine; the backoff is a timer on the
engine's scheduler, so a test stepping a `ManualScheduler` steps it too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlwarden.db.faults import backoff_s, wait_reason
from sqlwarden.errors import EngineStopped
from sqlwarden.futures import Timeout
from sqlwarden.scheduler import Scheduler

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a backoff looks whether a stop was asked for or the deadline passed: a
#: signal's handler can only set a flag, which nothing else would notice in time.
POLL_S = 0.1


class StartWaits:
    """Runs one start's steps; `reason` says what the step under way waits for."""

    def __init__(self, *, path: str | os.PathLike[str], scheduler: Scheduler,
                 stopped: Callable[[], bool], timeout_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        """`stopped()` is true once the start should end; `on_wait(reason)` is called when
        a wait begins (not on every retry); `timeout_s` bounds the whole start."""
        self._path = path
        self._scheduler = scheduler
        self._stopped = stopped
        self._on_wait = on_wait
        # A caller that says it itself (the CLI's one line) needs no warning beside it.
        self._level = logging.INFO if on_wait is not None else logging.WARNING
        self._timeout_s = timeout_s
        self._deadline = None if timeout_s is None else scheduler.now() + timeout_s
        #: What the step under way waits for; None while nothing stands in its way.
        self.reason: str | None = None

    def run(self, step: Callable[[], T], what: str) -> T:
        """`step()`'s result, once it has not met a wait; raises what it raised otherwise,
        `EngineStopped` when a stop came first, `Timeout` past the deadline."""
        attempt = 0
        while True:
            self.check()
            try:
                result = step()
            except Exception as exc:
                reason = wait_reason(exc, path=self._path)
                if reason is None:
                    raise
                attempt += 1
                self._waiting(reason, what, exc)
                self._back_off(backoff_s(attempt))
                continue
            if self.reason is not None:
                log.log(self._level, "start: %s no more; going on", self.reason)
                self.reason = None
            return result

    def check(self) -> None:
        """Raise `EngineStopped` if a stop was asked for, `Timeout` past the deadline."""
        if self._stopped():
            raise EngineStopped("engine")
        if self._deadline is not None and self._scheduler.now() >= self._deadline:
            error = Timeout(f"the engine did not start within {self._timeout_s:g}s"
                            + (f": it waits: {self.reason}" if self.reason else ""))
            error.waiting_for = self.reason
            raise error

    def _waiting(self, reason: str, what: str, exc: BaseException) -> None:
        if reason == self.reason:
            return
        self.reason = reason
        log.log(self._level, "start waits: %s (%s: %s); trying again with backoff", reason,
                what, exc)
        if self._on_wait is not None:
            self._on_wait(reason)

    def _back_off(self, delay_s: float) -> None:
        woke = threading.Event()
        timer = self._scheduler.call_later(delay_s, woke.set)
        try:
            while not woke.wait(POLL_S):
                self.check()
        finally:
            timer.cancel()
