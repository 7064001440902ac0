"""The FtsController actor: the only component that changes FTS triggers.

It routes messages to the deferral policy (`sqlwarden.fts.controller`) and
performs what the policy decides: requests to the Writer, answers, the
maximum-age and retry timer.

When it stops (or goes down) in the middle of a begin or end, the source
asking is answered as if nothing was deferred, and carries on: a deferral
that did commit is in the database, and the next controller (the successor
after a restart, or the next start) restores it as soon as it boots.
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
from sqlwarden.protocol import FTS, BeginCatchUp, EndCatchUp, FtsStatus, Message
from sqlwarden.views import FtsLease


class FtsControllerActor(BaseActor):
    """Feeds the deferral policy; owns nothing but its state."""

    name = FTS

    def __init__(self, *, config: Config, wall: Callable[[], float] = time.time,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.controller = FtsController(config.fts_deferral, wall=wall,
                                        writes=tables_written(config))

    def teardown(self) -> None:
        pass  # every ask it holds is answered after this, through `unanswered`

    def unanswered(self, message: Message) -> Any:
        match message:
            case BeginCatchUp(source=source):
                return FtsLease(source=source, deferred=False,
                                reason="the FTS controller stopped before deferring; FTS "
                                       "upkeep stays live")
            case EndCatchUp():
                return self.controller.view(self.scheduler.now())
        return super().unanswered(message)

    def handle(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, FtsStatus):
            return self.controller.view(self.scheduler.now())
        self.perform(self.controller.handle(message, envelope, self.scheduler.now()))
        return DEFERRED

    def answered(self, context: Any, result: Any, error: BaseException | None) -> Effects:
        return self.controller.answered(context, result, error, self.scheduler.now())
