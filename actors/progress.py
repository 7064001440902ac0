"""The Progress actor: live progress of every long job, persisted cheaply.

Jobs report `ProgressEvent`s. Task progress is written to `_sw_tasks`
through the Writer at most once per `persist_interval_s` per task, plus one
forced write when the job ends, so bookkeeping never competes with the work
it describes. A write that fails is counted, reported and shown in status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlwarden.actors.base import BaseActor
from sqlwarden.actors.bus import Answer, Envelope
from sqlwarden.config import Config
from sqlwarden.errors import UnexpectedMessage
from sqlwarden.protocol import Message, ProgressEvent, ProgressSnapshot, SaveProgress
from sqlwarden.tasks.chunks import RateMeter
from sqlwarden.views import ProgressView

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Job:
    event: ProgressEvent
    meter: RateMeter
    last_persist: float = float("-inf")
    in_flight: bool = False
    persisted: int = 0
    failures: int = 0
    last_error: str | None = None
    ended: bool = False


class ProgressActor(BaseActor):
    """Keeps the progress of every job and persists that of tasks."""

    name = "progress"

    def __init__(self, *, config: Config, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval_s = config.progress.persist_interval_s
        self._clock = clock
        self._wall = wall
        self._jobs: dict[tuple[str, str], _Job] = {}

    def handle(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case ProgressEvent():
                self._on_event(message)
                return None
            case ProgressSnapshot():
                now = self._clock()
                return tuple(self._view(job, now) for job in self._jobs.values())
            case _:
                raise UnexpectedMessage(self.name, message)

    def _on_event(self, event: ProgressEvent) -> None:
        now = self._clock()
        job = self._jobs.get((event.scope, event.name))
        if job is not None and job.ended and event.state != "running":
            return  # the run has ended and its final state is saved
        if job is None or job.ended or event.processed < job.meter.rows:
            # A new run: its rate starts from nothing.
            previous = job
            job = _Job(event=event, meter=RateMeter(now))
            if previous is not None:
                job.persisted, job.failures = previous.persisted, previous.failures
                job.last_error = previous.last_error
            self._jobs[(event.scope, event.name)] = job
        job.meter.add(event.chunk_rows, event.chunk_s)
        job.meter.rows = event.processed
        job.event = event
        job.ended = event.terminal
        if event.scope != "task":
            return
        due = now - job.last_persist >= self.interval_s and not job.in_flight
        if event.terminal or due:
            self._persist(job, now)

    def _persist(self, job: _Job, now: float) -> None:
        event = job.event
        job.last_persist = now
        job.in_flight = True
        rate = job.meter.rate(now)
        message = SaveProgress(task=event.name, version=event.version, rate_rows_s=rate,
                               eta_s=None if event.terminal else job.meter.eta_s(now,
                                                                                 event.total),
                               waiting=event.waiting, at=self._wall(), terminal=event.terminal,
                               clock_s=now)
        self.request("writer", message, lambda answer: self._persisted(job, answer))

    def _persisted(self, job: _Job, answer: Answer) -> None:
        job.in_flight = False
        if answer.error is None:
            job.persisted += 1
            job.last_error = None  # the latest save worked; the count keeps the history
            return
        job.failures += 1
        job.last_error = str(answer.error)
        log.warning("progress of %s not saved: %s", job.event.name, answer.error)
        self.supervisor.report(self.name, "writer.task_progress", answer.error)

    def _view(self, job: _Job, now: float) -> ProgressView:
        event = job.event
        return ProgressView(
            scope=event.scope, name=event.name, version=event.version,
            processed=event.processed, total=event.total, state=event.state,
            waiting=event.waiting, rate_rows_s=job.meter.rate(now),
            eta_s=None if job.ended else job.meter.eta_s(now, event.total), error=event.error,
            persisted=job.persisted, persist_failures=job.failures,
            last_persist_error=job.last_error)
