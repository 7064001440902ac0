"""Each source's schedule and run state, as a state machine the Sync actor feeds.

A run starts with a `writer.sync_start` row in `_sw_sync_runs`; its reading
happens on a pump thread the actor launches, which sends batches straight
to the Writer and reports back (`PumpProgress`, `PumpEnded`). When a run
ends, its row gets the outcome and the source its next run: after a failure
that retrying can help, the next wait from `retries`; after an HTTP 429 or
403 no retries, only the next scheduled run, and not before `Retry-After`;
otherwise `every` after this completion. A second request while a source
runs joins that run or is refused; it never starts another.

A run's start or end row that cannot be written for a reason that passes by
itself (the database locked by another program, a full disk) is a wait, not
a failure: the request goes again after a backoff, the source says what it
waits for, and whoever asked for the run keeps waiting for it. (The pump
waits out such faults for its batches the same way.)

Deadlines are points on the scheduler's monotonic clock. The wall clock is
read only where the database keeps wall times (when the last run ended) and
to show times to people; a next run is never further away than `every`, so
a wall clock that is behind at boot (a device without a real-time clock)
cannot postpone a schedule, and one that jumps later moves no deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import apsw

from sqlwarden.config import SourceConfig
from sqlwarden.db import faults
from sqlwarden.effects import After, Cancel, Effects, Fail, Reply, Report, Request, Tell
from sqlwarden.errors import EngineStopped, SyncBusy, UnknownSource
from sqlwarden.protocol import (
    PROGRESS,
    SYNC,
    WRITER,
    EndSyncRun,
    ProgressEvent,
    PumpEnded,
    PumpProgress,
    ReapSyncRuns,
    StartSyncRun,
    SyncTick,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync import runs
from sqlwarden.views import SourceView, SyncRunView

log = logging.getLogger(__name__)

MODES = ("auto", "full", "incremental")
#: Starts a run's reading (a pump thread): `(source, run id, plan)`; returns None
#: once started, or why it could not start.
Launch = Callable[[SourceConfig, int, runs.RunPlan], str | None]


@dataclass(slots=True, eq=False)
class SourceState:
    """What the schedule knows of one source."""

    config: SourceConfig
    state: str = "idle"  # idle | starting | running | retry_wait
    run: SyncRunView | None = None
    last: SyncRunView | None = None
    total: int | None = None
    #: Failed runs in a row that retrying may fix; picks the next retry wait.
    attempt: int = 1
    #: The next run, on the monotonic clock, and why it is due.
    due: float | None = None
    due_reason: str | None = None
    #: The next run as a wall time, for people (status, `sync status`), and the
    #: (wall, monotonic) readings it was worked out at.
    due_shown: float | None = None
    shown_at: tuple[float, float] = (0.0, 0.0)
    #: The upstream asked not to be called before this (monotonic clock).
    not_before: float | None = None
    #: Bumped whenever the timer is re-armed: a tick with an older token is stale.
    token: int = 0
    waiters: list[Any] = field(default_factory=list)
    #: What the source's run waits out now (a lock held elsewhere, a full disk).
    waiting_for: str | None = None
    #: Writes of the run's start or end row that met a wait in a row (the backoff).
    waits: int = 0
    #: The start or end row's request, sent again when the timer fires.
    resend: Request | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def timer(self) -> str:
        return f"source:{self.config.name}"


class SyncSchedule:
    """Owns every source's run state and schedule; one run per source at a time."""

    def __init__(self, sources: tuple[SourceConfig, ...], *, run_id: str,
                 reader: apsw.Connection | None, launch: Launch, redactor: Redactor,
                 wall: Callable[[], float] = time.time) -> None:
        """`reader` is a read-only connection (None only when there are no sources)."""
        self.run_id = run_id
        self._reader = reader
        self._launch = launch
        self._redactor = redactor
        self._wall = wall
        self._sources = {s.name: SourceState(s) for s in sources}
        self._waiters: list[tuple[Any, tuple[str, ...]]] = []
        self._stopping = False

    # --- input --------------------------------------------------------------------------

    def boot(self, waiter: Any) -> Effects:
        """Mark runs a gone process left `running` as failed, then arm every schedule."""
        return [Request(WRITER, ReapSyncRuns(engine_run=self.run_id, ended_at=self._wall()),
                        ("reaped", waiter))]

    def run(self, name: str, mode: str, join: bool, waiter: Any, now: float) -> Effects:
        """Run a source now; `waiter` is answered with the run once it has ended.

        Raises `UnknownSource`, `SyncBusy` or `ValueError` for a request that
        cannot be served.
        """
        source = self.source(name)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if source.state in ("starting", "running"):
            if not join:
                raise SyncBusy(self._busy(source), source=name)
            source.waiters.append(waiter)
            return []
        if source.not_before is not None and now < source.not_before:
            wait = source.not_before - now
            raise SyncBusy(f"source {name}: the upstream asked not to be called before "
                           f"{_clock(self._wall() + wait)} (Retry-After); {wait:.0f}s to go",
                           source=name)
        source.waiters.append(waiter)
        return self._begin(source, "request", mode, now)

    def tick(self, name: str, token: int, now: float) -> Effects:
        """A source's timer fired: run it, unless the tick is stale or it runs already."""
        source = self._sources.get(name)
        if source is None or token != source.token:
            return []  # a timer that was re-armed since
        if source.resend is not None:
            resend, source.resend = source.resend, None
            return [resend]
        if source.state in ("starting", "running"):
            return []
        return self._begin(source, source.due_reason or "schedule", "auto", now)

    def wait(self, names: tuple[str, ...], waiter: Any, now: float) -> Effects:
        """Answer `waiter` once the sources (all when empty) have no run and no retry due."""
        for name in names:
            self.source(name)
        if self._idle(names):
            return [Reply(waiter, self._views(names, now))]
        self._waiters.append((waiter, names))
        return []

    def progress(self, message: PumpProgress) -> Effects:
        source = self._running(message.source, message.run)
        if source is None or source.run is None:
            return []
        source.run = replace(source.run, rows=message.rows, rejects=message.rejects)
        source.total = message.total
        source.waiting_for = message.waiting_for
        return [Tell(PROGRESS, ProgressEvent(
            scope="sync", name=source.name, processed=message.rows, total=message.total,
            state="running", waiting=message.waiting_for, chunk_rows=message.batch_rows,
            chunk_s=message.batch_s))]

    def pump_ended(self, message: PumpEnded) -> Effects:
        """A run's reading has ended: record its outcome, then schedule what comes next."""
        source = self._running(message.source, message.run)
        if source is None or source.run is None:
            return []
        error = self._redactor.text(message.error) if message.error else None
        status = "ok" if error is None and not message.stopped else (
            "stopped" if error is None else "failed")
        note = self._redactor.text(message.note) if message.note else None
        # The run's view carries the lease itself; the history row has only its note.
        saved_note = note
        if message.fts_lease is not None and message.fts_lease.deferred:
            deferred = (f"FTS upkeep of {', '.join(message.fts_lease.tables)} deferred "
                        f"({message.fts_lease.reason})")
            saved_note = f"{note}; {deferred}" if note else deferred
        end = EndSyncRun(run=message.run, status=status, ended_at=self._wall(), error=error,
                         note=saved_note)
        run = replace(source.run, status=status, ended_at=end.ended_at, rows=message.rows,
                      rejects=message.rejects, error=error, note=note,
                      fts_lease=message.fts_lease, fts_after=message.fts_after)
        source.waiting_for = None
        return [Request(WRITER, end, ("ended", source.name, run, message, end))]

    def answered(self, context: Any, result: Any, error: BaseException | None,
                 now: float) -> Effects:
        """The Writer's answer to a request sent with `context`."""
        match context:
            case ("reaped", waiter):
                return self._reaped(waiter, result, error, now)
            case ("started", name, message, plan):
                source = self._sources[name]
                return (self._wait_again(source, error, Request(WRITER, message, context), now)
                        or self._started(source, message, plan, result, error, now))
            case ("ended", name, run, message, end):
                source = self._sources[name]
                return (self._wait_again(source, error, Request(WRITER, end, context), now)
                        or self._ended(source, run, message, error, now))
            case _:
                raise ValueError(f"no request was sent with context {context!r}")

    def _wait_again(self, source: SourceState, error: BaseException | None, again: Request,
                    now: float) -> Effects:
        """When `error` is a wait, arm the timer that sends `again` after a backoff;
        otherwise nothing (the answer is handled as it is)."""
        reason = faults.wait_reason(error) if error is not None else None
        if reason is None or self._stopping:
            source.waits, source.waiting_for = 0, None
            if source.due_reason == "waiting":
                source.due = source.due_reason = source.due_shown = None
            return []
        source.waits += 1
        if source.waits == 1:
            log.warning("source %s: its run waits: %s", source.name, reason)
        source.waiting_for, source.resend = reason, again
        return self._arm(source, now + faults.backoff_s(source.waits), "waiting", now)

    def views(self, now: float) -> tuple[SourceView, ...]:
        return self._views((), now)

    def source(self, name: str) -> SourceState:
        source = self._sources.get(name)
        if source is None:
            known = ", ".join(self._sources) or "none are declared"
            raise UnknownSource(f"no source named {name!r} (sources: {known})", source=name)
        return source

    def _running(self, name: str, run: int) -> SourceState | None:
        """The source whose run under way is `run` (None for a report of another run)."""
        source = self._sources.get(name)
        if source is None or source.run is None or source.run.id != run:
            return None
        return source

    def running(self) -> list[SourceState]:
        """Sources with a run under way (for stopping them)."""
        return [s for s in self._sources.values() if s.run is not None]

    def stop(self) -> Effects:
        """Disarm every timer and refuse every ask still waiting: the engine is stopping."""
        self._stopping = True
        effects: Effects = [Cancel(s.timer) for s in self._sources.values()]
        for source in self._sources.values():
            effects += [Fail(w, EngineStopped(SYNC)) for w in source.waiters]
            source.waiters = []
        effects += [Fail(w, EngineStopped(SYNC)) for w, _ in self._waiters]
        self._waiters = []
        return effects

    # --- boot and schedule --------------------------------------------------------------

    def _reaped(self, waiter: Any, result: Any, error: BaseException | None,
                now: float) -> Effects:
        if error is not None:
            return [Fail(waiter, error)]
        reaped = result.changes
        if reaped:
            log.warning("marked %d source run(s) left running by a process that is gone as "
                        "failed", reaped)
        effects: Effects = []
        for source in self._sources.values():
            assert self._reader is not None  # opened when there are sources
            last = source.last = runs.last_run(self._reader, source.name, completed=True)
            cut_short = last is not None and (last.status == "stopped"
                                              or last.error == runs.REAPED_ERROR)
            effects += self._schedule_after(source, last, now, resume=cut_short)
        return [*effects, Reply(waiter, reaped)]

    def _schedule_after(self, source: SourceState, last: SyncRunView | None, now: float, *,
                        resume: bool = False) -> Effects:
        """Arm the next scheduled run: `every` after the last completion (anchored there)."""
        every = source.config.every_s
        if every is None:
            return self._arm(source, None, None, now)
        wall = self._wall()
        shown: float | None = None
        if last is None or last.ended_at is None or resume:
            delay = 0.0  # a first run, or an interrupted one, goes on at once
        else:
            shown = last.ended_at + every
            delay = shown - wall
            if delay > every:
                log.warning("source %s: its last run ended %.0fs after the wall clock's now; "
                            "the clock is behind, so the next run is %gs from now", source.name,
                            delay - every, every)
                delay, shown = every, None
        due = now + max(delay, 0.0)
        if source.not_before is not None and source.not_before > due:
            due, shown = source.not_before, None
        return self._arm(source, due, "resume" if resume else "schedule", now, shown)

    def _arm(self, source: SourceState, due: float | None, reason: str | None, now: float,
             shown: float | None = None) -> Effects:
        """Arm the source's timer for `due` (None: disarm); `shown` is `due` as a wall time
        where the caller knows it exactly."""
        source.token += 1
        source.due, source.due_reason = due, reason
        wall = self._wall()
        source.shown_at = (wall, now)
        source.due_shown = (shown if shown is not None or due is None
                            else wall + max(due - now, 0.0))
        if due is None or self._stopping:
            return [Cancel(source.timer)]
        return [After(max(0.0, due - now), SyncTick(source=source.name, token=source.token),
                      source.timer)]

    # --- runs ---------------------------------------------------------------------------

    def _begin(self, source: SourceState, reason: str, mode: str, now: float) -> Effects:
        assert self._reader is not None
        effects: Effects = [Cancel(source.timer)]
        source.token += 1  # a timer already fired is stale now
        started_at = self._wall()
        try:
            plan = runs.plan_run(self._reader, source.config, mode, started_at)
        except Exception as exc:
            return effects + self._start_failed(source, exc, now)
        source.state = "starting"
        message = StartSyncRun(source=source.name, mode=plan.mode, reason=reason,
                               attempt=source.attempt, engine_run=self.run_id,
                               started_at=started_at, cursor=plan.cursor)
        return [*effects, Request(WRITER, message, ("started", source.name, message, plan))]

    def _started(self, source: SourceState, message: StartSyncRun, plan: runs.RunPlan,
                 result: Any, error: BaseException | None, now: float) -> Effects:
        if error is not None:
            return self._start_failed(source, error, now)
        run = SyncRunView(id=result.last_rowid, source=source.name, mode=message.mode,
                          status="running", reason=message.reason, attempt=message.attempt,
                          started_at=message.started_at, ended_at=None, rows=0, rejects=0)
        source.run, source.state, source.total = run, "running", None
        if self._stopping:
            return []
        problem = self._launch(source.config, run.id, plan)
        if problem is not None:
            return self.pump_ended(PumpEnded(source=source.name, run=run.id, rows=0, rejects=0,
                                             error=problem, failure="fatal"))
        return []

    def _start_failed(self, source: SourceState, error: BaseException, now: float) -> Effects:
        source.state = "idle"
        log.error("source %s: the run could not start: %s", source.name, error)
        effects: Effects = [Fail(w, error) for w in source.waiters]
        source.waiters = []
        config = source.config
        if config.every_s is None:
            effects += self._arm(source, None, None, now)
        else:
            # Not at once, even when a run is overdue: the next start would fail alike.
            wait = config.retries_s[0] if config.retries_s else config.every_s
            effects += self._arm(source, now + wait, "retry", now)
        return effects + self._wake_waiters(now)

    def _ended(self, source: SourceState, run: SyncRunView, message: PumpEnded,
               error: BaseException | None, now: float) -> Effects:
        effects: Effects = []
        if error is not None:
            log.error("source %s: the end of run %d was not recorded: %s", source.name,
                      run.id, error)
            effects.append(Report("writer.sync_end", error))
        source.run, source.last, source.state = None, run, "idle"
        effects.append(Tell(PROGRESS, ProgressEvent(
            scope="sync", name=source.name, processed=run.rows, total=source.total,
            state=run.status, terminal=True, error=run.error)))
        if run.status == "failed":
            log.warning("source %s: run %d failed: %s", source.name, run.id, run.error)
        effects += self._after_run(source, run, message, now)
        effects += [Reply(w, run) for w in source.waiters]
        source.waiters = []
        return effects + self._wake_waiters(now)

    def _after_run(self, source: SourceState, run: SyncRunView, message: PumpEnded,
                   now: float) -> Effects:
        retries = source.config.retries_s
        if run.status != "failed" or message.failure is None:
            source.attempt = 1
            return self._schedule_after(source, run, now)
        if message.failure == "rate_limited":
            source.attempt = 1
            wait = message.retry_after_s
            source.not_before = now + wait if wait else None
            return self._schedule_after(source, run, now)
        if message.failure == "retry" and source.attempt <= len(retries):
            wait = retries[source.attempt - 1]
            source.attempt += 1
            source.state = "retry_wait"
            return self._arm(source, now + wait, "retry", now)
        source.attempt = 1
        return self._schedule_after(source, run, now)

    # --- views --------------------------------------------------------------------------

    def _busy(self, source: SourceState) -> str:
        run = source.run
        if run is None:
            return f"source {source.name} is starting a run already; join it or wait"
        return (f"source {source.name} is running already (run {run.id}, {run.mode}, started "
                f"{_clock(run.started_at)}, {run.rows:,} rows so far); join it or wait")

    def _idle(self, names: tuple[str, ...]) -> bool:
        return all(self._sources[n].state == "idle" for n in names or self._sources)

    def _wake_waiters(self, now: float) -> Effects:
        effects: Effects = []
        still = []
        for waiter, names in self._waiters:
            if self._idle(names):
                effects.append(Reply(waiter, self._views(names, now)))
            else:
                still.append((waiter, names))
        self._waiters = still
        return effects

    def _views(self, names: tuple[str, ...], now: float) -> tuple[SourceView, ...]:
        return tuple(self._view(self._sources[n], now) for n in names or self._sources)

    def _view(self, source: SourceState, now: float) -> SourceView:
        wall = self._wall()
        next_at = source.due_shown
        shown_wall, shown_now = source.shown_at
        if next_at is not None and source.due is not None and abs(
                (wall - shown_wall) - (now - shown_now)) > 1.0:
            # The wall clock jumped since the run was armed; the deadline did not move.
            next_at = wall + max(source.due - now, 0.0)
        not_before = source.not_before
        shown_not_before = (wall + not_before - now
                            if not_before is not None and not_before > now else None)
        return SourceView(name=source.name, kind=source.config.kind, state=source.state,
                          current=source.run, last=source.last, next_run_at=next_at,
                          next_reason=source.due_reason, not_before=shown_not_before,
                          total=source.total, waiting_for=source.waiting_for)


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
