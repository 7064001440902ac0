"""The FtsController actor: the only component that changes FTS triggers.

It routes messages to the deferral policy (`sqlwarden.fts.controller`) and
performs what the policy decides: requests to the Writer, answers, the
maximum-age and retry timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config
from sqlwarden.effects import Effects
from sqlwarden.fts.controller import FtsController, tables_written
from sqlwarden.protocol import FTS, FtsStatus, Message


class FtsControllerActor(BaseActor):
    """Feeds the deferral policy; owns nothing but its state."""

    name = FTS

    def __init__(self, *, config: Config, wall: Callable[[], float] = time.time,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.controller = FtsController(config.fts_deferral, wall=wall,
                                        writes=tables_written(config))

    def teardown(self) -> None:
        self.perform(self.controller.stop())

    def handle(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, FtsStatus):
            return self.controller.view(self.scheduler.now())
        self.perform(self.controller.handle(message, envelope, self.scheduler.now()))
        return DEFERRED

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        return self.controller.answered(context, result, error, self.scheduler.now())
