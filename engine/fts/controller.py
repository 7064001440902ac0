"""The FTS deferral policy, as a state machine the FtsController actor feeds.

Sources catching up send `BeginCatchUp` and, in a `finally`, `EndCatchUp`.
The first large enough backlog defers FTS upkeep; later sources join the
same deferral (a count per source), and the last one to end restores it. A
deferral past `max_age_s` is restored anyway, so one stuck source cannot
keep search stale for everybody. At boot a persisted record belongs to a
process that is gone, so it is restored at once. A failed restore leaves
the triggers dropped and the record in place (it is one transaction), is
shown as `restore_failed`, and is retried with doubling backoff.

Every change is a request to the Writer; while one is in flight the
controller queues the next begin, end or restore, so it never acts on a
state the database does not have yet. The machine holds no connection and
no thread: `handle` and `answered` take the clock's reading and return the
effects to perform (`sqlwarden.effects`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlwarden.config import FtsDeferralConfig
from sqlwarden.effects import After, Cancel, Effects, Fail, Reply, Report, Request
from sqlwarden.errors import EngineStopped, UnexpectedMessage
from sqlwarden.protocol import (
    FTS,
    WRITER,
    BeginCatchUp,
    DeferFts,
    EndCatchUp,
    FtsTick,
    InspectFts,
    Message,
    RestoreFts,
    RestoreFtsNow,
    UpdateFtsDeferral,
)
from sqlwarden.views import (
    FtsDeferralView,
    FtsInspection,
    FtsLease,
    FtsRestoreResult,
    FtsView,
)

log = logging.getLogger(__name__)

#: The timer that fires `FtsTick` (the maximum age, or the next restore attempt).
TICK = "tick"


class FtsController:
    """Who is catching up, whether the triggers are live, and what to ask the Writer."""

    def __init__(self, settings: FtsDeferralConfig, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._wall = wall
        self.state = "starting"
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
        self._queue: deque[tuple[Message, Any]] = deque()
        # Asked to restore: answered with the view once the restore has ended.
        self._waiters: list[Any] = []

    # --- input --------------------------------------------------------------------------

    def handle(self, message: Message, waiter: Any, now: float) -> Effects:
        """A begin, end, restore request or tick; answered now or once the Writer has."""
        if not isinstance(message, (BeginCatchUp, EndCatchUp, RestoreFtsNow, FtsTick)):
            raise UnexpectedMessage(FTS, message)
        if self._busy or self.state == "starting":
            self._queue.append((message, waiter))
            if self.state == "starting" and not self._busy:
                return self._ask(InspectFts(), "inspected")
            return []
        return self._dispatch(message, waiter, now)

    def answered(self, context: Any, result: Any, error: BaseException | None,
                 now: float) -> Effects:
        """The Writer's answer to the request sent with `context`."""
        self._busy = False
        try:
            match context:
                case ("inspected",):
                    effects = self._inspected(result, error, now)
                case ("deferred", source, backlog, waiter):
                    effects = self._deferred(result, error, now, source, backlog, waiter)
                case ("saved", waiter, reply):
                    effects = self._saved(result, error, now, waiter, reply)
                case ("restored",):
                    effects = self._restored(result, error, now)
                case _:
                    raise UnexpectedMessage(FTS, context)
        except Exception as exc:  # a bug here must not leave the queued asks waiting
            effects = [Report("fts.answer", exc)]
        return effects + self._drain(now)

    def stop(self) -> Effects:
        """Refuse everything still waiting: the engine is stopping."""
        waiting = [*self._waiters, *(waiter for _, waiter in self._queue)]
        self._waiters.clear()
        self._queue.clear()
        return [Fail(waiter, EngineStopped(FTS)) for waiter in waiting]

    def view(self, now: float) -> FtsView:
        record = self._record
        retry_in = (max(self._retry_at - now, 0.0)
                    if self.state == "restore_failed" and self._retry_at is not None else None)
        return FtsView(state=self.state, sources=self._sorted_sources(),
                       since=record.started_at if record else None,
                       tables=record.tables if record else (), error=self._error,
                       attempts=self._attempts, retry_in_s=retry_in,
                       last_restore=self._last_restore, not_deferrable=self._not_deferrable)

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, message: Message, waiter: Any, now: float) -> Effects:
        match message:
            case BeginCatchUp(source=source, backlog_rows=backlog):
                return self._begin(source, backlog, waiter, now)
            case EndCatchUp(source=source):
                return self._end(source, waiter, now)
            case RestoreFtsNow(reason=reason):
                if self._record is None:
                    return [Reply(waiter, self.view(now))]
                self._sources.clear()
                return self._restore(reason, waiter)
            case FtsTick():
                return [*self._tick(now), Reply(waiter, None)]
            case _:
                raise UnexpectedMessage(FTS, message)

    def _drain(self, now: float) -> Effects:
        """Handle what queued while the Writer was busy, until it is busy again."""
        effects: Effects = []
        while self._queue and not self._busy:
            message, waiter = self._queue.popleft()
            try:
                effects += self._dispatch(message, waiter, now)
            except Exception as exc:
                effects.append(Fail(waiter, exc))
        return effects

    def _ask(self, message: Message, *context: Any) -> Effects:
        self._busy = True
        return [Request(WRITER, message, context)]

    # --- boot ---------------------------------------------------------------------------

    def _inspected(self, result: FtsInspection | None, error: BaseException | None,
                   now: float) -> Effects:
        self.state = "live"
        if error is not None:
            # Deferring will be tried (and fail or not) when a source asks.
            return self._failed("reading the FTS tables failed", error, InspectFts.kind)
        assert result is not None
        self._not_deferrable = tuple((t.name, t.problem) for t in result.tables
                                     if t.problem is not None)
        for name, problem in self._not_deferrable:
            log.info("FTS table %s will not be deferred: %s", name, problem)
        if result.deferral is None:
            return []
        # Whoever was catching up belongs to a process that is gone.
        self._record = result.deferral
        self._deferred_at = now
        self.state = "deferred"
        log.warning("FTS triggers of %s were left deferred since %s by an earlier run; "
                    "restoring", ", ".join(result.deferral.tables),
                    time.strftime("%Y-%m-%d %H:%M:%S",
                                  time.localtime(result.deferral.started_at)))
        return self._restore("boot", None)

    # --- begin and end ------------------------------------------------------------------

    def _begin(self, source: str, backlog: int, waiter: Any, now: float) -> Effects:
        if self._record is not None:
            others = [name for name in self._sorted_names() if name != source]
            self._sources[source] = self._sources.get(source, 0) + 1
            lease = FtsLease(source=source, deferred=True, tables=self._record.tables,
                             reason=f"joined the deferral of {', '.join(others)}" if others
                             else "joined the deferral in place")
            return self._save_record(waiter, lease)
        if not self.settings.enabled:
            return [Reply(waiter, FtsLease(source=source, deferred=False,
                                           reason="FTS deferral is disabled"))]
        if backlog < self.settings.threshold_rows:
            return [Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason=f"backlog of {backlog:,} rows is below threshold_rows "
                       f"({self.settings.threshold_rows:,})"))]
        return self._ask(DeferFts(sources=((source, 1),), started_at=self._wall()),
                         "deferred", source, backlog, waiter)

    def _deferred(self, result: FtsDeferralView | None, error: BaseException | None, now: float,
                  source: str, backlog: int, waiter: Any) -> Effects:
        if error is not None:
            return [Report(DeferFts.kind, error), Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason=f"deferring failed, triggers stay live: {error}"))]
        if result is None:
            return [Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason="no FTS table has triggers that can be deferred"))]
        self._record, self._sources = result, {source: 1}
        self._deferred_at = now
        self.state = "deferred"
        log.info("FTS triggers of %s deferred for %s (backlog %s rows)",
                 ", ".join(result.tables), source, f"{backlog:,}")
        return [After(self.settings.max_age_s, FtsTick(), TICK),
                Reply(waiter, FtsLease(source=source, deferred=True, tables=result.tables,
                                       reason=f"backlog of {backlog:,} rows"))]

    def _end(self, source: str, waiter: Any, now: float) -> Effects:
        if self._record is None or source not in self._sources:
            return [Reply(waiter, self.view(now))]
        self._sources[source] -= 1
        if self._sources[source] == 0:
            del self._sources[source]
        if not self._sources:
            return self._restore(f"{source} caught up", waiter)
        return self._save_record(waiter, None)

    def _save_record(self, waiter: Any, reply: Any) -> Effects:
        """Write the sources, last error and attempts into the persisted record; then
        answer `waiter` (with `reply`, or the view when None)."""
        return self._ask(UpdateFtsDeferral(sources=self._sorted_sources(),
                                           last_error=self._error, attempts=self._attempts),
                         "saved", waiter, reply)

    def _saved(self, result: FtsDeferralView | None, error: BaseException | None, now: float,
               waiter: Any, reply: Any) -> Effects:
        effects: Effects = []
        if error is not None:
            # The record's sources and error are informational (at boot every
            # source is gone whatever it says): report, do not fail the caller.
            effects.append(Report(UpdateFtsDeferral.kind, error))
        elif result is not None:
            self._record = result
        if waiter is not None:
            effects.append(Reply(waiter, reply if reply is not None else self.view(now)))
        return effects

    def _sorted_sources(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._sources.items()))

    def _sorted_names(self) -> list[str]:
        return [name for name, _ in self._sorted_sources()]

    # --- restore ------------------------------------------------------------------------

    def _restore(self, reason: str, waiter: Any) -> Effects:
        assert self._record is not None
        log.info("restoring FTS triggers of %s (%s)", ", ".join(self._record.tables), reason)
        self.state = "restoring"
        if waiter is not None:
            self._waiters.append(waiter)
        return self._ask(RestoreFts(rebuild_share=self.settings.rebuild_share,
                                    buffer_bytes=self.settings.restore_buffer_mb * 1024 * 1024),
                         "restored")

    def _restored(self, result: FtsRestoreResult | None, error: BaseException | None,
                  now: float) -> Effects:
        effects: Effects = []
        if error is not None:
            assert self._record is not None
            self.state = "restore_failed"
            self._attempts += 1
            delay = min(self.settings.retry_initial_s * 2 ** (self._attempts - 1),
                        self.settings.retry_max_s)
            self._retry_at = now + delay
            effects += self._failed(f"restoring FTS triggers of {', '.join(self._record.tables)} "
                                    f"failed (attempt {self._attempts}; retrying in "
                                    f"{delay:g}s)", error, RestoreFts.kind)
            effects.append(After(delay, FtsTick(), TICK))
            # Kept in the record too, so `sqlwarden fts status` shows it offline.
            effects += self._save_record(None, None)
        else:
            assert result is not None
            self._record, self._sources = None, {}
            self.state, self._error, self._attempts, self._retry_at = "live", None, 0, None
            self._last_restore = result
            effects.append(Cancel(TICK))
            for table in result.tables:
                log.info("FTS index %s restored by %s: %s of %s rows changed since the "
                         "deferral (%.0f ms)", table.fts, table.mode, f"{table.changed_rows:,}",
                         f"{table.table_rows:,}", result.duration_ms)
        waiters, self._waiters = self._waiters, []
        return effects + [Reply(waiter, self.view(now)) for waiter in waiters]

    def _failed(self, what: str, error: BaseException, kind: str) -> Effects:
        self._error = f"{what}: {error}"
        log.warning("%s", self._error)
        return [Report(kind, error)]

    # --- time ---------------------------------------------------------------------------

    def _tick(self, now: float) -> Effects:
        age = now - self._deferred_at
        if self.state == "deferred" and age >= self.settings.max_age_s:
            self._sources.clear()
            return self._restore(f"the deferral passed max_age_s "
                                 f"({self.settings.max_age_s:g}s)", None)
        retry_due = (self.state == "restore_failed" and not self._sources
                     and self._retry_at is not None)
        if retry_due and self._retry_at is not None and now >= self._retry_at:
            return self._restore("retry", None)
        if self.state == "deferred":
            return [After(self.settings.max_age_s - age, FtsTick(), TICK)]
        if retry_due and self._retry_at is not None:
            return [After(max(self._retry_at - now, 0.0), FtsTick(), TICK)]
        # With sources still catching up, the last one to end restores.
        return [Cancel(TICK)]
