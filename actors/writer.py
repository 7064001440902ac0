"""The Writer: the only read-write connection to the database."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.base import DEFERRED, BaseActor
from engine.bus import Envelope
from engine.config import Config
from engine.errors import EngineStopped, UnexpectedMessage
from engine.protocol import (
    FOREGROUND_WRITES,
    Checkpoint,
    IdleCheck,
    InsertRows,
    Message,
    UpsertRows,
    WriterStatus,
)
from engine.schema import apply_schema
from engine.sqlite import new_database_undone_on_error, open_writer
from engine.writer import WriterCore

log = logging.getLogger(__name__)

#: A group commit closes at this many messages or rows even while more are
#: queued, so one transaction stays short and readers see progress.
MAX_GROUP_MESSAGES = 256
MAX_GROUP_ROWS = 50_000


class WriterActor(BaseActor):
    """Owns the read-write connection; commits queued foreground writes together."""

    name = "writer"

    def __init__(self, *, config: Config, clock: Callable[[], float] = time.monotonic,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self._clock = clock
        self._pending: list[Envelope] = []
        self._pending_rows = 0
        self._idle_timer: threading.Timer | None = None
        self.core: WriterCore | None = None

    def setup(self) -> None:
        with new_database_undone_on_error(self.config.database.path):
            conn = open_writer(self.config.database)
            try:
                report = apply_schema(conn, self.config)
            except BaseException:
                conn.close()
                raise
        for action in report.actions:
            log.info("schema: %s", action)
        self.core = WriterCore(conn, self.config, clock=self._clock)

    def teardown(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.core is not None:
            self._flush()
            self.core.conn.close()
            self.core = None

    def handle(self, message: Message, envelope: Envelope) -> Any:
        assert self.core is not None
        if isinstance(message, FOREGROUND_WRITES):
            self._pending.append(envelope)
            rows = len(message.rows) if isinstance(message, (InsertRows, UpsertRows)) else 1
            self._pending_rows += rows
            # Commit once nothing else is queued: writes that arrived while the
            # last transaction ran are already waiting, and join this one.
            if (self.bus.depth(self.name) == 0 or len(self._pending) >= MAX_GROUP_MESSAGES
                    or self._pending_rows >= MAX_GROUP_ROWS):
                self._flush()
            return DEFERRED
        self._flush()
        match message:
            case Checkpoint(mode=mode):
                return self.core.checkpoint(mode)
            case WriterStatus():
                return self.core.state()
            case IdleCheck():
                self._idle_timer = None
                if self.core.idle_check():
                    self._arm_idle_timer()
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def _flush(self) -> None:
        if not self._pending or self.core is None:
            return
        group, self._pending, self._pending_rows = self._pending, [], 0
        try:
            outcomes: list[Any] = self.core.commit_group([e.message for e in group])
        except Exception as exc:  # a bug; every sender still gets an answer
            outcomes = [exc] * len(group)
        for envelope, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.fail(envelope, outcome)
            else:
                self.bus.reply(envelope, outcome)
        # Senders have their answers; a checkpoint failure is the engine's problem.
        try:
            self.core.after_commit()
        except Exception as exc:  # reported, not raised
            self.supervisor.report(self.name, "writer.checkpoint", exc)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None or self.core is None or self.core.wal_frames == 0:
            return
        timer = threading.Timer(self.core.idle_after_s, self._send_idle_check)
        timer.daemon = True
        self._idle_timer = timer
        timer.start()

    def _send_idle_check(self) -> None:
        # The engine may have stopped while the timer ran.
        with contextlib.suppress(EngineStopped):
            self.bus.tell(self.name, self.name, IdleCheck())
