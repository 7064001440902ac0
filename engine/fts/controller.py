"""The FTS deferral policy, as a state machine the FtsController actor feeds.

Sources catching up send `BeginCatchUp` and, in a `finally`, `EndCatchUp`.
A source defers only the FTS tables that index the tables it writes (taken
from its config; a source the config does not know defers them all), so a
catch-up into a table without FTS defers nothing. The first large enough
backlog defers; later sources join the same deferral (a count per source),
or add their own FTS tables to it, and an FTS table is restored once the
last source that needs it has ended. A
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
from collections.abc import Callable, Mapping
from typing import Any

from sqlwarden.config import Config, FtsDeferralConfig, GeneratorSourceConfig
from sqlwarden.db import faults
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


def tables_written(config: Config) -> dict[str, tuple[str, ...]]:
    """The tables each configured source writes, by source name."""
    out: dict[str, tuple[str, ...]] = {}
    for source in config.sources:
        if isinstance(source, GeneratorSourceConfig):
            out[source.name] = (source.registry_table, source.observations_table)
        else:
            out[source.name] = (source.table,)
    return out


class FtsController:
    """Who is catching up, whether the triggers are live, and what to ask the Writer."""

    def __init__(self, settings: FtsDeferralConfig, *,
                 wall: Callable[[], float] = time.time,
                 writes: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.settings = settings
        self._wall = wall
        # Source name -> the tables it writes (from the config).
        self._writes = dict(writes or {})
        # Deferrable FTS table (lower-cased) -> the table it indexes (lower-cased), as
        # found at boot; None until then, or when that inspection failed.
        self._indexed: dict[str, str] | None = None
        # Each source catching up -> the FTS tables it needs deferred (None: all).
        self._wants: dict[str, frozenset[str] | None] = {}
        self.state = "starting"
        self._record: FtsDeferralView | None = None
        self._sources: dict[str, int] = {}
        self._deferred_at = 0.0
        self._error: str | None = None
        self._attempts = 0
        #: What the restore under retry waits for (a lock held elsewhere, a full disk).
        self._waiting_for: str | None = None
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
                case ("deferred", source, backlog, wants, waiter):
                    effects = self._deferred(result, error, now, source, backlog, wants,
                                             waiter)
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
                       last_restore=self._last_restore, not_deferrable=self._not_deferrable,
                       waiting_for=self._waiting_for)

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, message: Message, waiter: Any, now: float) -> Effects:
        match message:
            case BeginCatchUp(source=source, backlog_rows=backlog, tables=tables):
                return self._begin(source, backlog, tables, waiter, now)
            case EndCatchUp(source=source):
                return self._end(source, waiter, now)
            case RestoreFtsNow(reason=reason):
                if self._record is None:
                    return [Reply(waiter, self.view(now))]
                self._forget_sources()
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
        self._indexed = {t.name.lower(): t.source.lower() for t in result.tables
                         if t.problem is None and t.source is not None}
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

    def _begin(self, source: str, backlog: int, tables: tuple[str, ...], waiter: Any,
               now: float) -> Effects:
        tables = tables or self._writes.get(source, ())
        wants = self._fts_for(tables)
        if wants is not None and not wants:
            return [Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason=f"no FTS table that can be deferred indexes {', '.join(tables)}"))]
        refused = self._refusal(backlog)
        if self._record is None:
            if refused is not None:
                return [Reply(waiter, FtsLease(source=source, deferred=False, reason=refused))]
            return self._ask(DeferFts(sources=((source, 1),), started_at=self._wall(),
                                      tables=tables),
                             "deferred", source, backlog, wants, waiter)
        held = {name.lower() for name in self._record.tables}
        missing = (set(self._indexed or ()) if wants is None else set(wants)) - held
        if missing and refused is None:
            # Its own FTS tables join the deferral in place.
            sources = {**self._sources, source: self._sources.get(source, 0) + 1}
            return self._ask(DeferFts(sources=tuple(sorted(sources.items())),
                                      started_at=self._wall(), tables=tables),
                             "deferred", source, backlog, wants, waiter)
        if wants is not None and not wants & held:
            return [Reply(waiter, FtsLease(source=source, deferred=False,
                                           reason=refused or "nothing to defer"))]
        return self._join(source, wants, waiter)

    def _refusal(self, backlog: int) -> str | None:
        """Why a backlog does not defer anything, or None when it does."""
        if not self.settings.enabled:
            return "FTS deferral is disabled"
        if backlog < self.settings.threshold_rows:
            return (f"backlog of {backlog:,} rows is below threshold_rows "
                    f"({self.settings.threshold_rows:,})")
        return None

    def _fts_for(self, tables: tuple[str, ...]) -> frozenset[str] | None:
        """The deferrable FTS tables indexing `tables` (None: all, when unknown)."""
        if not tables or self._indexed is None:
            return None
        written = {name.lower() for name in tables}
        return frozenset(fts for fts, table in self._indexed.items() if table in written)

    def _join(self, source: str, wants: frozenset[str] | None, waiter: Any) -> Effects:
        assert self._record is not None
        others = [name for name in self._sorted_names() if name != source]
        self._sources[source] = self._sources.get(source, 0) + 1
        self._wants[source] = _union(self._wants.get(source, frozenset()), wants)
        lease = FtsLease(source=source, deferred=True, tables=self._leased(wants),
                         reason=f"joined the deferral of {', '.join(others)}" if others
                         else "joined the deferral in place")
        return self._save_record(waiter, lease)

    def _leased(self, wants: frozenset[str] | None) -> tuple[str, ...]:
        assert self._record is not None
        return tuple(name for name in self._record.tables
                     if wants is None or name.lower() in wants)

    def _deferred(self, result: FtsDeferralView | None, error: BaseException | None, now: float,
                  source: str, backlog: int, wants: frozenset[str] | None,
                  waiter: Any) -> Effects:
        if error is not None:
            return [Report(DeferFts.kind, error), Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason=f"deferring failed, triggers stay live: {error}"))]
        if result is None:
            held = {name.lower() for name in self._record.tables} if self._record else set()
            if self._record is not None and (wants is None or wants & held):
                return self._join(source, wants, waiter)
            return [Reply(waiter, FtsLease(
                source=source, deferred=False,
                reason="no FTS table has triggers that can be deferred"))]
        first = self._record is None
        self._record = result
        self._sources[source] = self._sources.get(source, 0) + 1
        self._wants[source] = _union(self._wants.get(source, frozenset()), wants)
        effects: Effects = []
        if first:
            self._deferred_at = now
            self.state = "deferred"
            effects.append(After(self.settings.max_age_s, FtsTick(), TICK))
        log.info("FTS triggers of %s deferred for %s (backlog %s rows)",
                 ", ".join(self._leased(wants)), source, f"{backlog:,}")
        return [*effects, Reply(waiter, FtsLease(source=source, deferred=True,
                                                 tables=self._leased(wants),
                                                 reason=f"backlog of {backlog:,} rows"))]

    def _end(self, source: str, waiter: Any, now: float) -> Effects:
        if self._record is None or source not in self._sources:
            return [Reply(waiter, self.view(now))]
        self._sources[source] -= 1
        if self._sources[source] == 0:
            del self._sources[source]
            self._wants.pop(source, None)
        if not self._sources:
            return self._restore(f"{source} caught up", waiter)
        needed: frozenset[str] | None = frozenset()
        for wants in self._wants.values():
            needed = _union(needed, wants)
        done = tuple(name for name in self._record.tables
                     if needed is not None and name.lower() not in needed)
        if done and self.state == "deferred":
            # No source still catching up writes what these index.
            return self._restore(f"{source} caught up", waiter, only=done)
        return self._save_record(waiter, None)

    def _forget_sources(self) -> None:
        self._sources.clear()
        self._wants.clear()

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

    def _restore(self, reason: str, waiter: Any, only: tuple[str, ...] = ()) -> Effects:
        """Restore the tables named in `only`, or every deferred one."""
        assert self._record is not None
        log.info("restoring FTS triggers of %s (%s)", ", ".join(only or self._record.tables),
                 reason)
        self.state = "restoring"
        if waiter is not None:
            self._waiters.append(waiter)
        return self._ask(RestoreFts(rebuild_share=self.settings.rebuild_share,
                                    buffer_bytes=self.settings.restore_buffer_mb * 1024 * 1024,
                                    tables=only, sources=self._sorted_sources() if only else ()),
                         "restored")

    def _restored(self, result: FtsRestoreResult | None, error: BaseException | None,
                  now: float) -> Effects:
        effects: Effects = []
        if error is not None:
            assert self._record is not None
            tables = ", ".join(self._record.tables)
            # A wait (`reason`: another program holds the lock, or the disk is full):
            # nothing was done (one transaction), and it goes again after the backoff every
            # wait takes. Not a failure: nothing is reported, and the record is not saved
            # (that would meet the same wait).
            reason = faults.wait_reason(error)
            self.state = "restore_failed"
            self._attempts += 1
            delay = (faults.backoff_s(self._attempts) if reason is not None
                     else min(self.settings.retry_initial_s * 2 ** (self._attempts - 1),
                              self.settings.retry_max_s))
            self._retry_at = now + delay
            retrying = f"(attempt {self._attempts}; retrying in {delay:g}s)"
            if reason is None:
                effects += self._failed(f"restoring FTS triggers of {tables} failed {retrying}",
                                        error, RestoreFts.kind)
            else:
                if self._waiting_for != reason:
                    log.warning("restoring FTS triggers of %s waits: %s; retrying with "
                                "backoff", tables, reason)
                self._error = f"restoring FTS triggers of {tables} waits: {reason} {retrying}"
            self._waiting_for = reason
            effects.append(After(delay, FtsTick(), TICK))
            if reason is None:
                # Kept in the record too, so `sqlwarden fts status` shows it offline.
                effects += self._save_record(None, None)
        elif result is not None and result.remaining is not None:
            # Some tables only: the others stay deferred for the sources still running.
            self._record, self.state, self._last_restore = result.remaining, "deferred", result
            self._log_restored(result)
        else:
            assert result is not None
            self._record = None
            self._forget_sources()
            self.state, self._error, self._attempts, self._retry_at = "live", None, 0, None
            self._waiting_for = None
            self._last_restore = result
            effects.append(Cancel(TICK))
            self._log_restored(result)
        waiters, self._waiters = self._waiters, []
        return effects + [Reply(waiter, self.view(now)) for waiter in waiters]

    def _log_restored(self, result: FtsRestoreResult) -> None:
        for table in result.tables:
            log.info("FTS index %s restored by %s: %s of %s rows changed since the "
                     "deferral (%.0f ms)", table.fts, table.mode, f"{table.changed_rows:,}",
                     f"{table.table_rows:,}", result.duration_ms)

    def _failed(self, what: str, error: BaseException, kind: str) -> Effects:
        self._error = f"{what}: {error}"
        log.warning("%s", self._error)
        return [Report(kind, error)]

    # --- time ---------------------------------------------------------------------------

    def _tick(self, now: float) -> Effects:
        age = now - self._deferred_at
        if self.state == "deferred" and age >= self.settings.max_age_s:
            self._forget_sources()
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


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Two sets of FTS tables together, None standing for all of them."""
    return None if a is None or b is None else a | b
