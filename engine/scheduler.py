"""Time for the whole engine: one scheduler on one monotonic clock.

Every timer an actor needs (the yield between two chunks, the Writer's idle
checkpoint, the FTS deferral's maximum age and restore retries, a source's
next run, the mirror's poll and reconnect backoff) is a call on this
scheduler, which the actor base turns into a message to the actor itself.
Deadlines are points on a monotonic clock, so a wall clock that jumps (a
device without a real-time clock that learns the date after booting) moves
no deadline.

`Scheduler` runs due calls on a thread of its own. `ManualScheduler` has no
thread and no real time: a test moves its clock with `advance`, which runs
what fell due, so a test steps time instead of waiting for it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timer:
    """A call waiting for its time; `cancel` keeps it from running."""

    __slots__ = ("callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Calls functions at points on a monotonic clock, from one thread of its own.

    A call must be quick (actors' calls only send a message); one that raises
    is logged and the others still run.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def now(self) -> float:
        """The scheduler's clock, in seconds; only differences mean anything."""
        return self.clock()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `delay_s` seconds have passed (at once when <= 0)."""
        return self.call_at(self.now() + max(0.0, delay_s), callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once the clock reads `when`."""
        timer = Timer(when, next(self._seq), callback)
        with self._changed:
            if self._stopped:
                timer.cancel()
                return timer
            heapq.heappush(self._heap, timer)
            self._changed.notify()
            self._started()
        return timer

    def stop(self) -> None:
        """Drop every waiting call and end the thread; later calls are refused."""
        with self._changed:
            self._stopped = True
            self._heap.clear()
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def pending(self) -> int:
        """Calls waiting and not cancelled."""
        with self._changed:
            return sum(not t.cancelled for t in self._heap)

    def _started(self) -> None:
        """Start the thread that runs due calls, once (called holding the lock)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlwarden-scheduler",
                                            daemon=True)
            self._thread.start()

    def _due(self) -> Timer | None:
        """The earliest call if it is due, taken off the heap (called holding the lock)."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        if self._heap and self._heap[0].when <= self.clock():
            return heapq.heappop(self._heap)
        return None

    def _next_due(self) -> Timer | None:
        """The next call, once it is due; None once stopped."""
        with self._changed:
            while not self._stopped:
                timer = self._due()
                if timer is not None:
                    return timer
                self._changed.wait(self._heap[0].when - self.clock() if self._heap else None)
            return None

    def _run(self) -> None:
        while (timer := self._next_due()) is not None:
            _call(timer)


class ManualScheduler(Scheduler):
    """A scheduler whose clock moves only when `advance` is called; for tests.

    It has no thread: due calls run on the thread that calls `advance`, in
    deadline order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(clock=lambda: self._now)

    def advance(self, seconds: float = 0.0) -> int:
        """Move the clock on by `seconds` and run what fell due; returns how many ran."""
        with self._changed:
            self._now += seconds
        ran = 0
        while True:
            with self._changed:
                timer = self._due()
            if timer is None:
                return ran
            _call(timer)
            ran += 1

    def _started(self) -> None:
        pass  # `advance` runs what is due


def _call(timer: Timer) -> None:
    if timer.cancelled:
        return
    try:
        timer.callback()
    except Exception:  # one bad call must not stop every timer of the engine
        log.exception("a scheduled call failed")
