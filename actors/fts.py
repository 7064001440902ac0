"""The FtsController: the only component that changes FTS triggers.

Sources catching up send `BeginCatchUp` and, in a `finally`, `EndCatchUp`.
The first large enough backlog defers FTS upkeep; later sources join the
same deferral (a count per source), and the last one to end restores it. A
deferral past `max_age_s` is restored anyway, so one stuck source cannot
keep search stale for everybody. At boot a persisted record belongs to a
process that is gone, so it is restored at once. A failed restore leaves
the triggers dropped and the record in place (it is one transaction), is
shown as `restore_failed`, and is retried with doubling backoff.

Every change goes to the Writer as a message; while one is in flight the
controller queues the next begin, end or restore, so it never acts on a
state the database does not have yet.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Answer, Envelope
from sqlwarden.config import Config
from sqlwarden.errors import EngineStopped, UnexpectedMessage
from sqlwarden.protocol import (
    BeginCatchUp,
    DeferFts,
    EndCatchUp,
    FtsStatus,
    FtsTick,
    InspectFts,
    Message,
    RestoreFts,
    RestoreFtsNow,
    UpdateFtsDeferral,
)
from sqlwarden.views import FtsDeferralView, FtsInspection, FtsLease, FtsRestoreResult, FtsView

log = logging.getLogger(__name__)


class FtsControllerActor(BaseActor):
    """Keeps the deferral state: who is catching up, and whether the triggers are live."""

    name = "fts"

    def __init__(self, *, config: Config, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = config.fts_deferral
        self._clock = clock
        self._wall = wall
        self._state = "starting"
        self._record: FtsDeferralView | None = None
        self._sources: dict[str, int] = {}
        self._deferred_at = 0.0
        self._error: str | None = None
        self._attempts = 0
        self._retry_at: float | None = None
        self._last_restore: FtsRestoreResult | None = None
        self._not_deferrable: tuple[tuple[str, str], ...] = ()
        # A Writer request is in flight; begin/end/restore/tick wait in `_queue`.
        self._busy = False
        self._queue: deque[Envelope] = deque()
        # Asked to restore: answered with the view once the restore has ended.
        self._waiters: list[Envelope] = []
        self._timer: threading.Timer | None = None

    def teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for envelope in [*self._waiters, *self._queue]:
            with contextlib.suppress(Exception):  # answer every one, whatever one does
                self.bus.fail(envelope, EngineStopped(self.name))
        self._waiters.clear()
        self._queue.clear()

    def handle(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, FtsStatus):
            return self.view()
        if not isinstance(message, (BeginCatchUp, EndCatchUp, RestoreFtsNow, FtsTick)):
            raise UnexpectedMessage(self.name, message)
        if self._busy or self._state == "starting":
            self._queue.append(envelope)
            if self._state == "starting" and not self._busy:
                self._boot()
            return DEFERRED
        return self._dispatch(message, envelope)

    def _dispatch(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case BeginCatchUp(source=source, backlog_rows=backlog):
                return self._begin(source, backlog, envelope)
            case EndCatchUp(source=source):
                return self._end(source, envelope)
            case RestoreFtsNow(reason=reason):
                if self._record is None:
                    return self.view()
                self._sources.clear()
                return self._restore(reason, envelope)
            case FtsTick():
                self._tick()
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def _drain(self) -> None:
        """Handle what queued while the Writer was busy, until it is busy again."""
        while self._queue and not self._busy:
            envelope = self._queue.popleft()
            try:
                result = self._dispatch(envelope.message, envelope)
            except Exception as exc:
                self.fail(envelope, exc)
                continue
            if result is not DEFERRED:
                self.bus.reply(envelope, result)

    def _ask_writer(self, message: Message, then: Callable[[Answer], None]) -> None:
        """Send `message` to the Writer; `then` runs with its answer. Raises if it cannot
        be sent (the Writer has stopped), leaving the controller free."""

        def done(answer: Answer) -> None:
            self._busy = False
            try:
                then(answer)
            finally:
                self._drain()

        self.request("writer", message, done)
        self._busy = True

    # --- boot ---------------------------------------------------------------------------

    def _boot(self) -> None:
        self._ask_writer(InspectFts(), self._inspected)

    def _inspected(self, answer: Answer) -> None:
        self._state = "live"
        if answer.error is not None:
            # Deferring will be tried (and fail or not) when a source asks.
            self._failed("reading the FTS tables failed", answer.error, InspectFts.kind)
            return
        found: FtsInspection = answer.result
        self._not_deferrable = tuple((t.name, t.problem) for t in found.tables
                                     if t.problem is not None)
        for name, problem in self._not_deferrable:
            log.info("FTS table %s will not be deferred: %s", name, problem)
        if found.deferral is not None:
            # Whoever was catching up belongs to a process that is gone.
            self._record = found.deferral
            self._deferred_at = self._clock()
            self._state = "deferred"
            log.warning("FTS triggers of %s were left deferred since %s by an earlier run; "
                        "restoring", ", ".join(found.deferral.tables),
                        time.strftime("%Y-%m-%d %H:%M:%S",
                                      time.localtime(found.deferral.started_at)))
            self._restore("boot", None)

    # --- begin and end ------------------------------------------------------------------

    def _begin(self, source: str, backlog: int, envelope: Envelope) -> Any:
        if self._record is not None:
            others = [name for name in self._record_sources() if name != source]
            self._sources[source] = self._sources.get(source, 0) + 1
            lease = FtsLease(source=source, deferred=True, tables=self._record.tables,
                             reason=f"joined the deferral of {', '.join(others)}" if others
                             else "joined the deferral in place")
            self._persist_sources(envelope, lease)
            return DEFERRED
        if not self.settings.enabled:
            return FtsLease(source=source, deferred=False, reason="FTS deferral is disabled")
        if backlog < self.settings.threshold_rows:
            return FtsLease(source=source, deferred=False,
                            reason=f"backlog of {backlog:,} rows is below threshold_rows "
                                   f"({self.settings.threshold_rows:,})")

        def deferred(answer: Answer) -> None:
            if answer.error is not None:
                self.supervisor.report(self.name, DeferFts.kind, answer.error)
                self.bus.reply(envelope, FtsLease(
                    source=source, deferred=False,
                    reason=f"deferring failed, triggers stay live: {answer.error}"))
                return
            record: FtsDeferralView | None = answer.result
            if record is None:
                self.bus.reply(envelope, FtsLease(
                    source=source, deferred=False,
                    reason="no FTS table has triggers that can be deferred"))
                return
            self._record, self._sources = record, {source: 1}
            self._deferred_at = self._clock()
            self._state = "deferred"
            self._arm(self.settings.max_age_s)
            log.info("FTS triggers of %s deferred for %s (backlog %s rows)",
                     ", ".join(record.tables), source, f"{backlog:,}")
            self.bus.reply(envelope, FtsLease(source=source, deferred=True, tables=record.tables,
                                              reason=f"backlog of {backlog:,} rows"))

        self._ask_writer(DeferFts(sources=((source, 1),), started_at=self._wall()), deferred)
        return DEFERRED

    def _end(self, source: str, envelope: Envelope) -> Any:
        if self._record is None or source not in self._sources:
            return self.view()
        self._sources[source] -= 1
        if self._sources[source] == 0:
            del self._sources[source]
        if not self._sources:
            return self._restore(f"{source} caught up", envelope)
        self._persist_sources(envelope, None)
        return DEFERRED

    def _persist_sources(self, envelope: Envelope, reply: Any) -> None:
        self._save_record(lambda: self.bus.reply(envelope,
                                                 reply if reply is not None else self.view()))

    def _save_record(self, then: Callable[[], None] | None = None) -> None:
        """Write the sources, last error and attempts into the persisted record."""
        def saved(answer: Answer) -> None:
            if answer.error is not None:
                # The record's sources and error are informational (at boot every
                # source is gone whatever it says): report, do not fail the caller.
                self.supervisor.report(self.name, UpdateFtsDeferral.kind, answer.error)
            elif answer.result is not None:
                self._record = answer.result
            if then is not None:
                then()

        self._ask_writer(UpdateFtsDeferral(sources=self._sorted_sources(), last_error=self._error,
                                           attempts=self._attempts), saved)

    def _sorted_sources(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._sources.items()))

    def _record_sources(self) -> list[str]:
        return [name for name, _ in self._sorted_sources()]

    # --- restore ------------------------------------------------------------------------

    def _restore(self, reason: str, envelope: Envelope | None) -> Any:
        assert self._record is not None
        tables = ", ".join(self._record.tables)

        def restored(answer: Answer) -> None:
            if answer.error is not None:
                self._state = "restore_failed"
                self._attempts += 1
                delay = min(self.settings.retry_initial_s * 2 ** (self._attempts - 1),
                            self.settings.retry_max_s)
                self._retry_at = self._clock() + delay
                self._failed(f"restoring FTS triggers of {tables} failed (attempt "
                             f"{self._attempts}; retrying in {delay:g}s)", answer.error,
                             RestoreFts.kind)
                self._arm(delay)
                # Kept in the record too, so `sqlwarden fts status` shows it offline.
                self._save_record()
            else:
                result: FtsRestoreResult = answer.result
                self._record, self._sources = None, {}
                self._state, self._error, self._attempts, self._retry_at = "live", None, 0, None
                self._last_restore = result
                self._disarm()
                for table in result.tables:
                    log.info("FTS index %s restored by %s: %s of %s rows changed since the "
                             "deferral (%.0f ms)", table.fts, table.mode,
                             f"{table.changed_rows:,}", f"{table.table_rows:,}",
                             result.duration_ms)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                self.bus.reply(waiter, self.view())

        self._ask_writer(RestoreFts(rebuild_share=self.settings.rebuild_share,
                                    buffer_bytes=self.settings.restore_buffer_mb * 1024 * 1024),
                         restored)
        # Only once sent: a restore that could not be asked for changes no state.
        log.info("restoring FTS triggers of %s (%s)", tables, reason)
        self._state = "restoring"
        if envelope is not None:
            self._waiters.append(envelope)
        return DEFERRED

    def _failed(self, what: str, error: BaseException, kind: str) -> None:
        self._error = f"{what}: {error}"
        log.warning("%s", self._error)
        self.supervisor.report(self.name, kind, error)

    # --- time ---------------------------------------------------------------------------

    def _tick(self) -> None:
        # Whoever sent this tick (the timer, or start), the next one is armed below.
        self._disarm()
        now = self._clock()
        if self._state == "deferred" and now - self._deferred_at >= self.settings.max_age_s:
            self._sources.clear()
            self._restore(f"the deferral passed max_age_s ({self.settings.max_age_s:g}s)", None)
        elif (self._state == "restore_failed" and not self._sources
              and self._retry_at is not None and now >= self._retry_at):
            self._restore("retry", None)
        elif self._state == "deferred":
            self._arm(self.settings.max_age_s - (now - self._deferred_at))
        elif self._state == "restore_failed" and not self._sources and self._retry_at is not None:
            self._arm(max(self._retry_at - now, 0.0))
        # With sources still catching up, the last one to end restores.

    def _arm(self, delay_s: float) -> None:
        self._disarm()
        timer = threading.Timer(max(delay_s, 0.0), self._send_tick)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send_tick(self) -> None:
        with contextlib.suppress(EngineStopped):  # the engine stopped meanwhile
            self.bus.tell(self.name, self.name, FtsTick())

    # --- status -------------------------------------------------------------------------

    def view(self) -> FtsView:
        record = self._record
        retry_in = (max(self._retry_at - self._clock(), 0.0)
                    if self._state == "restore_failed" and self._retry_at is not None else None)
        return FtsView(state=self._state, sources=self._sorted_sources(),
                       since=record.started_at if record else None,
                       tables=record.tables if record else (), error=self._error,
                       attempts=self._attempts, retry_in_s=retry_in,
                       last_restore=self._last_restore, not_deferrable=self._not_deferrable)
