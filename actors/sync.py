"""The Sync actor: runs each source on its schedule and on request, one run at a time.

A run starts with a `writer.sync_start` row in `_sw_sync_runs`; its reading
happens on a `Pump` thread that sends batches straight to the Writer and
reports back here. When it ends, the row gets its outcome and the source its
next run: after a failure that retrying can help, the next wait from
`retries`; after an HTTP 429 or 403 no retries, only the next scheduled run,
and not before `Retry-After`; otherwise `every` after this completion. A
second request while a source runs joins that run or is refused; it never
starts another.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import apsw

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Answer, Envelope
from sqlwarden.config import Config, SourceConfig
from sqlwarden.db.connect import open_reader
from sqlwarden.errors import EngineStopped, SyncBusy, UnexpectedMessage, UnknownSource
from sqlwarden.protocol import (
    EndSyncRun,
    Message,
    ProgressEvent,
    PumpEnded,
    PumpProgress,
    ReapSyncRuns,
    RunSource,
    StartSyncRun,
    SyncBoot,
    SyncStatus,
    SyncTick,
    WaitSources,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync import runs as sync
from sqlwarden.views import SourceView, SyncRunView

log = logging.getLogger(__name__)

#: How long stopping waits for a run's thread to finish its batch in flight.
STOP_WAIT_S = 60.0
MODES = ("auto", "full", "incremental")


@dataclass(slots=True, eq=False)
class _Source:
    config: SourceConfig
    state: str = "idle"  # idle | starting | running | retry_wait
    run: SyncRunView | None = None
    pump: sync.Pump | None = None
    last: SyncRunView | None = None
    total: int | None = None
    #: Failed runs in a row that retrying may fix; picks the next retry wait.
    attempt: int = 1
    next_at: float | None = None
    next_reason: str | None = None
    not_before: float | None = None
    timer: threading.Timer | None = None
    token: int = 0
    waiters: list[Envelope] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name


class SyncActor(BaseActor):
    """Owns every source's run state and schedule."""

    name = "sync"

    def __init__(self, *, config: Config, run_id: str,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.run_id = run_id
        self._wall = wall
        self._redactor = Redactor(config.secrets)
        self._sources = {s.name: _Source(s) for s in config.sources}
        self._waiters: list[tuple[Envelope, tuple[str, ...]]] = []
        self._reader: apsw.Connection | None = None
        self._stopping = False

    def setup(self) -> None:
        if self._sources:
            self._reader = open_reader(self.config.database)

    def teardown(self) -> None:
        self._stopping = True
        for source in self._sources.values():
            if source.timer is not None:
                source.timer.cancel()
            if source.pump is not None:
                source.pump.stop.set()
        for source in self._sources.values():
            self._finish_on_stop(source)
        for source in self._sources.values():
            for envelope in source.waiters:
                self.bus.fail(envelope, EngineStopped(self.name))
        for envelope, _ in self._waiters:
            self.bus.fail(envelope, EngineStopped(self.name))
        if self._reader is not None:
            self._reader.close()

    def _finish_on_stop(self, source: _Source) -> None:
        """Wait for a run's thread, then record how the run ended (the Writer stops later)."""
        pump, run = source.pump, source.run
        if pump is None or run is None:
            return
        if not pump.join(STOP_WAIT_S):
            log.warning("source %s: its reading thread did not stop in %.0fs",
                        source.name, STOP_WAIT_S)
            return
        ended = pump.ended
        status, error = "stopped", None
        note: str | None = sync.stopped_note(ended.note if ended else None)
        if ended is not None and ended.error is not None:
            status, error = "failed", self._redactor.text(ended.error)
        elif ended is not None and not ended.stopped:
            status, note = "ok", ended.note  # it had read everything before the stop
        with contextlib.suppress(Exception):
            self.bus.ask(self.name, "writer", EndSyncRun(
                run=run.id, status=status, ended_at=self._wall(), error=error,
                note=note)).get(timeout=STOP_WAIT_S)

    # --- messages -----------------------------------------------------------------------

    def handle(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case SyncBoot():
                self.request("writer", ReapSyncRuns(engine_run=self.run_id,
                                                    ended_at=self._wall()),
                             lambda answer: self._booted(envelope, answer))
                return DEFERRED
            case RunSource(source=name, mode=mode, join=join):
                source = self._source(name)
                if mode not in MODES:
                    raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
                if source.state in ("starting", "running"):
                    if not join:
                        assert source.run is not None or source.state == "starting"
                        raise SyncBusy(self._busy(source), source=name)
                    source.waiters.append(envelope)
                    return DEFERRED
                now = self._wall()
                if source.not_before is not None and now < source.not_before:
                    raise SyncBusy(f"source {name}: the upstream asked not to be called "
                                   f"before {_clock(source.not_before)} (Retry-After); "
                                   f"{source.not_before - now:.0f}s to go", source=name)
                source.waiters.append(envelope)
                self._begin(source, "request", mode)
                return DEFERRED
            case SyncTick(source=name, token=token):
                ticked = self._sources.get(name)
                if ticked is None or token != ticked.token:
                    return None  # a timer that was re-armed since
                ticked.timer = None
                if ticked.state not in ("starting", "running"):
                    self._begin(ticked, ticked.next_reason or "schedule", "auto")
                return None
            case SyncStatus():
                return tuple(self._view(s) for s in self._sources.values())
            case WaitSources(sources=names):
                for name in names:
                    self._source(name)
                if self._idle(names):
                    return tuple(self._view(self._sources[n]) for n in names or self._sources)
                self._waiters.append((envelope, names))
                return DEFERRED
            case PumpProgress():
                self._on_progress(message)
                return None
            case PumpEnded():
                self._on_pump_ended(message)
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def _source(self, name: str) -> _Source:
        source = self._sources.get(name)
        if source is None:
            known = ", ".join(self._sources) or "none are declared"
            raise UnknownSource(f"no source named {name!r} (sources: {known})", source=name)
        return source

    def _busy(self, source: _Source) -> str:
        run = source.run
        if run is None:
            return f"source {source.name} is starting a run already; join it or wait"
        return (f"source {source.name} is running already (run {run.id}, {run.mode}, started "
                f"{_clock(run.started_at)}, {run.rows:,} rows so far); join it or wait")

    # --- boot and schedule --------------------------------------------------------------

    def _booted(self, envelope: Envelope, answer: Answer) -> None:
        if answer.error is not None:
            self.fail(envelope, answer.error)
            return
        reaped = answer.result.changes
        if reaped:
            log.warning("marked %d source run(s) left running by a process that is gone as "
                        "failed", reaped)
        now = self._wall()
        for source in self._sources.values():
            assert self._reader is not None  # opened in setup when there are sources
            last = source.last = sync.last_run(self._reader, source.name, completed=True)
            cut_short = last is not None and (last.status == "stopped"
                                              or last.error == sync.REAPED_ERROR)
            self._schedule_after(source, last, now, resume=cut_short)
        self.bus.reply(envelope, reaped)

    def _schedule_after(self, source: _Source, last: SyncRunView | None, now: float, *,
                        resume: bool = False) -> None:
        """Arm the next scheduled run: `every` after the last completion (anchored there)."""
        every = source.config.every_s
        if every is None:
            self._arm(source, None, None)
            return
        if last is None or last.ended_at is None:
            due = now
        elif resume:
            due = now  # an interrupted run goes on at once
        else:
            due = last.ended_at + every
        if source.not_before is not None:
            due = max(due, source.not_before)
        self._arm(source, due, "resume" if resume else "schedule")

    def _arm(self, source: _Source, at: float | None, reason: str | None) -> None:
        if source.timer is not None:
            source.timer.cancel()
            source.timer = None
        source.token += 1
        source.next_at, source.next_reason = at, reason
        if at is None or self._stopping:
            return
        token = source.token
        timer = threading.Timer(max(0.0, at - self._wall()), self._tick, (source.name, token))
        timer.daemon = True
        source.timer = timer
        timer.start()

    def _tick(self, name: str, token: int) -> None:
        with contextlib.suppress(EngineStopped):
            self.bus.tell(self.name, self.name, SyncTick(source=name, token=token))

    # --- runs ---------------------------------------------------------------------------

    def _begin(self, source: _Source, reason: str, mode: str) -> None:
        assert self._reader is not None
        if source.timer is not None:
            source.timer.cancel()
            source.timer = None
        source.token += 1  # a timer already fired is stale now
        now = self._wall()
        try:
            plan = sync.plan_run(self._reader, source.config, mode, now)
        except Exception as exc:
            self._start_failed(source, exc)
            return
        source.state = "starting"
        attempt = source.attempt
        message = StartSyncRun(source=source.name, mode=plan.mode, reason=reason,
                               attempt=attempt, engine_run=self.run_id, started_at=now,
                               cursor=plan.cursor)
        self.request("writer", message,
                     lambda answer: self._started(source, message, plan, answer))

    def _started(self, source: _Source, message: StartSyncRun, plan: sync.RunPlan,
                 answer: Answer) -> None:
        if answer.error is not None:
            self._start_failed(source, answer.error)
            return
        run = SyncRunView(id=answer.result.last_rowid, source=source.name, mode=message.mode,
                          status="running", reason=message.reason, attempt=message.attempt,
                          started_at=message.started_at, ended_at=None, rows=0, rejects=0)
        source.run = run
        source.state = "running"
        source.total = None
        if self._stopping:
            return
        assert self._reader is not None
        try:
            reader = sync.make_reader(self._reader, source.config, plan)
        except Exception as exc:
            self._on_pump_ended(PumpEnded(source=source.name, run=run.id, rows=0, rejects=0,
                                          error=str(exc), failure="fatal"))
            return
        pump = sync.Pump(source=source.config, run=run.id, reader=reader,
                         ask=lambda to, m: self.bus.ask(self.name, to, m),
                         tell=lambda to, m: self.bus.tell(self.name, to, m),
                         config=self.config, wall=self._wall)
        source.pump = pump
        pump.start()

    def _start_failed(self, source: _Source, error: BaseException) -> None:
        source.state = "idle"
        log.error("source %s: the run could not start: %s", source.name, error)
        for envelope in source.waiters:
            self.fail(envelope, error)
        source.waiters = []
        self._schedule_after(source, source.last, self._wall())
        self._wake_waiters()

    def _on_progress(self, message: PumpProgress) -> None:
        source = self._sources.get(message.source)
        if source is None or source.run is None or source.run.id != message.run:
            return
        source.run = replace(source.run, rows=message.rows, rejects=message.rejects)
        source.total = message.total
        self.bus.tell(self.name, "progress", ProgressEvent(
            scope="sync", name=source.name, processed=message.rows, total=message.total,
            state="running", chunk_rows=message.batch_rows, chunk_s=message.batch_s))

    def _on_pump_ended(self, message: PumpEnded) -> None:
        source = self._sources.get(message.source)
        if source is None or source.run is None or source.run.id != message.run:
            return
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
        self.request("writer", end,
                     lambda answer: self._ended(source, run, message, answer))

    def _ended(self, source: _Source, run: SyncRunView, message: PumpEnded,
               answer: Answer) -> None:
        if answer.error is not None:
            log.error("source %s: the end of run %d was not recorded: %s", source.name,
                      run.id, answer.error)
            self.supervisor.report(self.name, "writer.sync_end", answer.error)
        source.pump = None
        source.run = None
        source.last = run
        source.state = "idle"
        now = self._wall()
        self.bus.tell(self.name, "progress", ProgressEvent(
            scope="sync", name=source.name, processed=run.rows, total=source.total,
            state=run.status, terminal=True, error=run.error))
        if run.status == "failed":
            log.warning("source %s: run %d failed: %s", source.name, run.id, run.error)
        self._after_run(source, run, message, now)
        for envelope in source.waiters:
            self.bus.reply(envelope, run)
        source.waiters = []
        self._wake_waiters()

    def _after_run(self, source: _Source, run: SyncRunView, message: PumpEnded,
                   now: float) -> None:
        retries = source.config.retries_s
        if run.status != "failed" or message.failure is None:
            source.attempt = 1
            self._schedule_after(source, run, now)
            return
        if message.failure == "rate_limited":
            source.attempt = 1
            wait = message.retry_after_s
            source.not_before = now + wait if wait else None
            self._schedule_after(source, run, now)
            return
        if message.failure == "retry" and source.attempt <= len(retries):
            wait = retries[source.attempt - 1]
            source.attempt += 1
            source.state = "retry_wait"
            self._arm(source, now + wait, "retry")
            return
        source.attempt = 1
        self._schedule_after(source, run, now)

    # --- views --------------------------------------------------------------------------

    def _idle(self, names: tuple[str, ...]) -> bool:
        return all(self._sources[n].state == "idle" for n in names or self._sources)

    def _wake_waiters(self) -> None:
        still = []
        for envelope, names in self._waiters:
            if self._idle(names):
                self.bus.reply(envelope, tuple(self._view(self._sources[n])
                                               for n in names or self._sources))
            else:
                still.append((envelope, names))
        self._waiters = still

    def _view(self, source: _Source) -> SourceView:
        not_before = source.not_before
        if not_before is not None and not_before <= self._wall():
            not_before = None
        return SourceView(name=source.name, kind=source.config.kind, state=source.state,
                          current=source.run, last=source.last, next_run_at=source.next_at,
                          next_reason=source.next_reason, not_before=not_before,
                          total=source.total)


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
