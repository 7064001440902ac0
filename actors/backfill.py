"""The Backfill actor: runs chunked tasks, one chunk of background work at a time.

It owns a read-only connection (for counting and verification, never the
Writer's) and routes messages to the task runner (`sqlwarden.tasks.runner`),
performing what the runner decides: chunks and saves asked of the Writer,
progress told to the Progress actor, the yield between chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import apsw

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config
from sqlwarden.db.connect import open_reader
from sqlwarden.effects import Effects
from sqlwarden.errors import UnexpectedMessage
from sqlwarden.protocol import (
    BACKFILL,
    ControlTask,
    Message,
    NextChunk,
    StartTasks,
    TasksStatus,
    WaitTasks,
)
from sqlwarden.tasks.chunks import TaskPlan
from sqlwarden.tasks.runner import TaskRunner


class BackfillActor(BaseActor):
    """Owns the task runner and the connection it reads through."""

    name = BACKFILL

    def __init__(self, *, config: Config, plans: tuple[TaskPlan, ...], run_id: str,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self._plans = plans
        self._run_id = run_id
        self._wall = wall
        self._reader: apsw.Connection | None = None
        self.runner = TaskRunner(plans, run_id=run_id, reader=None, wall=wall)

    def setup(self) -> None:
        if self._plans:  # without tasks there is nothing to count or verify
            self._reader = open_reader(self.config.database)
            self.runner = TaskRunner(self._plans, run_id=self._run_id, reader=self._reader,
                                     wall=self._wall)

    def teardown(self) -> None:
        self.perform(self.runner.stop())
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def handle(self, message: Message, envelope: Envelope) -> Any:
        now = self.scheduler.now()
        match message:
            case StartTasks():
                self.perform(self.runner.start(now))
                return None
            case NextChunk():
                self.perform(self.runner.next_chunk())
                return None
            case ControlTask(task=name, action=action):
                self.perform(self.runner.control(name, action, envelope, now))
                return DEFERRED
            case TasksStatus():
                return self.runner.views()
            case WaitTasks(tasks=names):
                self.perform(self.runner.wait(names, envelope))
                return DEFERRED
            case _:
                raise UnexpectedMessage(self.name, message)

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        return self.runner.answered(context, result, error, self.scheduler.now())
