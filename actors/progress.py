"""The Progress actor: routes job progress to the progress book (`sqlwarden.progress`)
and performs the saves it decides on."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlwarden.actors.base import BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config
from sqlwarden.effects import Effects
from sqlwarden.errors import UnexpectedMessage
from sqlwarden.progress import ProgressBook
from sqlwarden.protocol import PROGRESS, Message, ProgressEvent, ProgressSnapshot


class ProgressActor(BaseActor):
    """Keeps the progress of every job and persists that of tasks."""

    name = PROGRESS

    def __init__(self, *, config: Config, clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        """`clock` rate-limits saves (the scheduler's clock unless a test gives its own)."""
        super().__init__(**kwargs)
        self._clock = clock or self.scheduler.now
        # Built again after going down: progress resumes from the next event of each
        # job, saved no sooner than a second after its predecessor's last save.
        self.book = ProgressBook(config.progress.persist_interval_s, wall=wall,
                                 saved_at=self._clock() if self.incarnation else float("-inf"))

    def handle(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case ProgressEvent():
                self.perform(self.book.event(message, self._clock()))
                return None
            case ProgressSnapshot():
                return self.book.views(self._clock())
            case _:
                raise UnexpectedMessage(self.name, message)

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        return self.book.answered(context, result, error)
