"""Live progress of every long job (tasks, source runs, mirror copies), kept cheaply.

Jobs report `ProgressEvent`s. A task's progress is saved to `_sw_tasks`
through the Writer at most once per `persist_interval_s`, plus one forced
save when the job ends, so bookkeeping never competes with the work it
describes. A save that fails is counted, reported and shown in status;
one that met a lock held elsewhere or a full disk is a wait, tried again
with the next save due.

`ProgressBook` is the Progress actor's state machine: fed events and the
Writer's answers, it returns the saves to ask for (`sqlwarden.effects`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlwarden.db.faults import wait_reason
from sqlwarden.effects import Effects, Report, Request
from sqlwarden.protocol import WRITER, ProgressEvent, SaveProgress
from sqlwarden.tasks.chunks import RateMeter
from sqlwarden.views import ProgressView

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Job:
    """What the book knows of one job."""

    event: ProgressEvent
    meter: RateMeter
    last_persist: float = float("-inf")
    in_flight: bool = False
    persisted: int = 0
    failures: int = 0
    last_error: str | None = None
    ended: bool = False


class ProgressBook:
    """Keeps the progress of every job and decides when a task's is saved."""

    def __init__(self, interval_s: float, *, wall: Callable[[], float] = time.time,
                 saved_at: float = float("-inf")) -> None:
        """`saved_at`: the clock reading every task is taken to have been saved at. A book
        built again after its actor went down passes the time it was built: its
        predecessor may have saved any task just before, and one save a second holds
        across the restart."""
        self.interval_s = interval_s
        self._wall = wall
        self._saved_at = saved_at
        self._jobs: dict[tuple[str, str], Job] = {}

    def event(self, event: ProgressEvent, now: float) -> Effects:
        """A job reports where it is; a task's progress is saved when it is due."""
        job = self._jobs.get((event.scope, event.name))
        if job is not None and job.ended and event.state != "running":
            return []  # the run has ended and its final state is saved
        if job is None or job.ended or event.processed < job.meter.rows:
            # A new run: its rate starts from nothing.
            previous = job
            job = Job(event=event, meter=RateMeter(now), last_persist=self._saved_at)
            if previous is not None:
                job.persisted, job.failures = previous.persisted, previous.failures
                job.last_error = previous.last_error
                if not previous.ended:
                    # Begun again without ending (its runner was rebuilt, say): the one
                    # save a second counts from the last save of the run before.
                    job.last_persist = previous.last_persist
            self._jobs[(event.scope, event.name)] = job
        job.meter.add(event.chunk_rows, event.chunk_s)
        job.meter.rows = event.processed
        job.event = event
        job.ended = event.terminal
        if event.scope != "task":
            return []
        due = now - job.last_persist >= self.interval_s and not job.in_flight
        return self._persist(job, now) if event.terminal or due else []

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        """The Writer's answer to a save."""
        job: Job = context
        job.in_flight = False
        if error is None:
            job.persisted += 1
            job.last_error = None  # the latest save worked; the count keeps the history
            return []
        reason = wait_reason(error)
        if reason is not None:
            # A lock held elsewhere or a full disk: nothing is wrong with the job, and the
            # task says what it waits for. The next save that is due tries again.
            log.info("progress of %s not saved yet: %s", job.event.name, reason)
            return []
        job.failures += 1
        job.last_error = str(error)
        log.warning("progress of %s not saved: %s", job.event.name, error)
        return [Report("writer.task_progress", error)]

    def views(self, now: float) -> tuple[ProgressView, ...]:
        return tuple(self._view(job, now) for job in self._jobs.values())

    def _persist(self, job: Job, now: float) -> Effects:
        event = job.event
        job.last_persist = now
        job.in_flight = True
        eta = None if event.terminal else job.meter.eta_s(now, event.total)
        return [Request(WRITER, SaveProgress(
            task=event.name, version=event.version, rate_rows_s=job.meter.rate(now), eta_s=eta,
            waiting=event.waiting, at=self._wall(), terminal=event.terminal, clock_s=now), job)]

    def _view(self, job: Job, now: float) -> ProgressView:
        event = job.event
        return ProgressView(
            scope=event.scope, name=event.name, version=event.version,
            processed=event.processed, total=event.total, state=event.state,
            waiting=event.waiting, rate_rows_s=job.meter.rate(now),
            eta_s=None if job.ended else job.meter.eta_s(now, event.total), error=event.error,
            persisted=job.persisted, persist_failures=job.failures,
            last_persist_error=job.last_error)
