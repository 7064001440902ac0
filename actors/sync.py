"""The Sync actor: runs each source on its schedule and on request, one run at a time.

It routes messages to the schedule (`sqlwarden.sync.schedule`) and owns
what does I/O: a read-only connection (run planning, cursors, file
positions) and each run's pump thread, which reads the source and sends
batches straight to the Writer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import apsw

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config, SourceConfig
from sqlwarden.db.connect import open_reader
from sqlwarden.effects import Effects
from sqlwarden.errors import UnexpectedMessage
from sqlwarden.protocol import (
    SYNC,
    WRITER,
    EndSyncRun,
    Message,
    PumpEnded,
    PumpProgress,
    RunSource,
    SyncBoot,
    SyncStatus,
    SyncTick,
    WaitSources,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync import runs
from sqlwarden.sync.pump import Pump, stopped_note
from sqlwarden.sync.schedule import SourceState, SyncSchedule

log = logging.getLogger(__name__)

#: How long stopping waits for a run's thread to finish its batch in flight.
STOP_WAIT_S = 60.0


class SyncActor(BaseActor):
    """Feeds the schedule; owns the reader connection and the pump threads."""

    name = SYNC

    def __init__(self, *, config: Config, run_id: str,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.run_id = run_id
        self._wall = wall
        self._redactor = Redactor(config.secrets)
        self._reader: apsw.Connection | None = None
        self._pumps: dict[str, Pump] = {}
        self.schedule = self._schedule()

    def _schedule(self) -> SyncSchedule:
        return SyncSchedule(self.config.sources, run_id=self.run_id, reader=self._reader,
                            launch=self._launch, redactor=self._redactor, wall=self._wall)

    def setup(self) -> None:
        if self.config.sources:
            self._reader = open_reader(self.config.database)
            self.schedule = self._schedule()

    def teardown(self) -> None:
        effects = self.schedule.stop()
        for pump in self._pumps.values():
            pump.stop.set()
        for source in self.schedule.running():
            self._finish_on_stop(source)
        self.perform(effects)
        if self._reader is not None:
            self._reader.close()

    def handle(self, message: Message, envelope: Envelope) -> Any:
        now = self.scheduler.now()
        match message:
            case SyncBoot():
                self.perform(self.schedule.boot(envelope))
                return DEFERRED
            case RunSource(source=name, mode=mode, join=join):
                self.perform(self.schedule.run(name, mode, join, envelope, now))
                return DEFERRED
            case SyncTick(source=name, token=token):
                self.perform(self.schedule.tick(name, token, now))
                return None
            case SyncStatus():
                return self.schedule.views(now)
            case WaitSources(sources=names):
                self.perform(self.schedule.wait(names, envelope, now))
                return DEFERRED
            case PumpProgress():
                self.perform(self.schedule.progress(message))
                return None
            case PumpEnded():
                self._pumps.pop(message.source, None)
                self.perform(self.schedule.pump_ended(message))
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        return self.schedule.answered(context, result, error, self.scheduler.now())

    def _launch(self, source: SourceConfig, run: int, plan: runs.RunPlan) -> str | None:
        """Start a run's pump thread; why it could not start, or None."""
        assert self._reader is not None
        try:
            reader = runs.make_reader(self._reader, source, plan, self.config.tables)
        except Exception as exc:
            return str(exc)
        pump = Pump(source=source, run=run, reader=reader,
                         ask=lambda to, m: self.bus.ask(self.name, to, m),
                         tell=lambda to, m: self.bus.tell(self.name, to, m),
                         config=self.config, wall=self._wall)
        self._pumps[source.name] = pump
        pump.start()
        return None

    def _finish_on_stop(self, source: SourceState) -> None:
        """Wait for a run's thread, then record how the run ended (the Writer stops later)."""
        pump, run = self._pumps.get(source.name), source.run
        if pump is None or run is None:
            return
        if not pump.join(STOP_WAIT_S):
            log.warning("source %s: its reading thread did not stop in %.0fs",
                        source.name, STOP_WAIT_S)
            return
        ended = pump.ended
        status, error = "stopped", None
        note: str | None = stopped_note(ended.note if ended else None)
        if ended is not None and ended.error is not None:
            status, error = "failed", self._redactor.text(ended.error)
        elif ended is not None and not ended.stopped:
            status, note = "ok", ended.note  # it had read everything before the stop
        with contextlib.suppress(Exception):
            self.bus.ask(self.name, WRITER, EndSyncRun(
                run=run.id, status=status, ended_at=self._wall(), error=error,
                note=note)).get(timeout=STOP_WAIT_S)
