"""The Writer: the only read-write connection to the database."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Envelope
from sqlwarden.config import Config
from sqlwarden.db.connect import new_database_undone_on_error, open_writer
from sqlwarden.db.faults import wait_reason
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.errors import DatabaseError, EngineStopped, UnexpectedMessage
from sqlwarden.protocol import (
    BOOKKEEPING_WRITES,
    FOREGROUND_WRITES,
    Checkpoint,
    DeferFts,
    IdleCheck,
    InsertRows,
    InspectFts,
    Message,
    RestoreFts,
    RunChunk,
    SyncBatch,
    TableChecksums,
    UpdateFtsDeferral,
    UpsertRows,
    WriterStatus,
)
from sqlwarden.tasks.chunks import TaskPlan

log = logging.getLogger(__name__)

#: A group commit closes at this many messages or rows even while more are
#: queued, so one transaction stays short and readers see progress.
MAX_GROUP_MESSAGES = 256
MAX_GROUP_ROWS = 50_000
_GROUPED = FOREGROUND_WRITES + BOOKKEEPING_WRITES


class WriterActor(BaseActor):
    """Owns the read-write connection; commits queued foreground writes together.

    Background chunks run one at a time and after foreground work: a chunk
    that arrives while other messages are queued waits (in `_chunk`) until
    those are handled, so a foreground write never waits behind more than
    the one chunk already running.
    """

    name = "writer"

    def __init__(self, *, config: Config, tasks: tuple[TaskPlan, ...] = (),
                 give_up: Callable[[], bool] | None = None, **kwargs: Any) -> None:
        """`give_up()` true (the engine stops) ends a wait for another program's lock at
        once: the write fails as a wait, instead of after the busy timeout."""
        super().__init__(**kwargs)
        self.config = config
        self._give_up = give_up
        self._tasks = tasks
        self._chunk: Envelope | None = None
        self._chunk_yielded_to = 0
        self._flushed_since_chunk = False
        self._pending: list[Envelope] = []
        self._pending_rows = 0
        self._idle_armed = False
        self.core: WriterCore | None = None

    def setup(self) -> None:
        path = self.config.database.path
        try:
            with new_database_undone_on_error(path):
                conn = open_writer(self.config.database, give_up=self._give_up)
                try:
                    report = apply_schema(conn, self.config)
                except BaseException:
                    conn.close()
                    raise
        except Exception as exc:
            # Another program holds the write lock, or the disk is full: nothing was
            # applied (one transaction), and the engine's start tries again later.
            reason = wait_reason(exc, path=path)
            if reason is None:
                raise
            error = DatabaseError(f"cannot start on database {path}: {reason} ({exc})",
                                  path=path)
            error.waiting_for, error.retryable = reason, True
            raise error from exc
        for action in report.actions:
            log.info("schema: %s", action)
        self.core = WriterCore(conn, self.config, clock=self.scheduler.now, tasks=self._tasks)

    def teardown(self) -> None:
        if self._chunk is not None:
            chunk, self._chunk = self._chunk, None
            self.bus.fail(chunk, EngineStopped(self.name))
        if self.core is not None:
            self._flush()
            self.core.close()
            self.core = None

    def handle(self, message: Message, envelope: Envelope) -> Any:
        assert self.core is not None
        try:
            return self._handle(message, envelope)
        finally:
            if self._chunk is not None and not self._pending:
                self._run_chunk()

    def _handle(self, message: Message, envelope: Envelope) -> Any:
        assert self.core is not None
        if isinstance(message, _GROUPED):
            self._pending.append(envelope)
            rows = (len(message.rows) if isinstance(message, (InsertRows, UpsertRows))
                    else sum(len(t.rows) for t in message.tables)
                    if isinstance(message, SyncBatch) else 1)
            self._pending_rows += rows
            if self._chunk is not None and isinstance(message, FOREGROUND_WRITES):
                self._chunk_yielded_to += 1
            # Commit once nothing else is queued: writes that arrived while the
            # last transaction ran are already waiting, and join this one.
            if (self.bus.depth(self.name) == 0 or len(self._pending) >= MAX_GROUP_MESSAGES
                    or self._pending_rows >= MAX_GROUP_ROWS):
                self._flush()
            return DEFERRED
        self._flush()
        if isinstance(message, RunChunk):
            if self._chunk is not None:
                raise UnexpectedMessage(self.name, message)  # one chunk at a time
            # Whatever is queued behind the chunk goes first; `handle` runs the
            # chunk once a message leaves nothing pending.
            self._chunk, self._chunk_yielded_to = envelope, 0
            self._flushed_since_chunk = False
            return DEFERRED
        match message:
            case Checkpoint(mode=mode):
                return self.core.checkpoint(mode)
            case WriterStatus():
                return self.core.state()
            case TableChecksums():
                return self.core.checksums()
            case DeferFts():
                return self._after(self.core.fts_defer(message))
            case RestoreFts():
                return self._after(self.core.fts_restore(message))
            case UpdateFtsDeferral():
                return self._after(self.core.fts_update(message))
            case InspectFts():
                return self.core.fts_inspect()
            case IdleCheck():
                self._idle_armed = False
                if self.core.idle_check():
                    self._arm_idle_timer()
                return None
            case _:
                raise UnexpectedMessage(self.name, message)

    def _after(self, result: Any) -> Any:
        """Checkpoint if the WAL grew past its threshold, then answer with `result`."""
        assert self.core is not None
        try:
            self.core.after_commit()
        except Exception as exc:  # reported, not raised; the write is committed
            self.supervisor.report(self.name, "writer.checkpoint", exc)
        self._arm_idle_timer()
        return result

    def _flush(self) -> None:
        if not self._pending or self.core is None:
            return
        group, self._pending, self._pending_rows = self._pending, [], 0
        self._flushed_since_chunk = True
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

    def _run_chunk(self) -> None:
        assert self.core is not None and self._chunk is not None
        if self.bus.depth(self.name) > 0 and not self._flushed_since_chunk:
            return  # queued messages first; they end in a flush that runs the chunk
        envelope, self._chunk = self._chunk, None
        assert isinstance(envelope.message, RunChunk)
        try:
            result = self.core.run_chunk(envelope.message, yielded_to=self._chunk_yielded_to)
        except Exception as exc:
            self.fail(envelope, exc)
            return
        try:
            mode = self.core.after_commit()
        except Exception as exc:  # reported, not raised; the chunk is committed
            self.supervisor.report(self.name, "writer.checkpoint", exc)
            mode = None
        self.bus.reply(envelope, dataclasses.replace(result, checkpoint=mode))
        self._arm_idle_timer()

    def fail(self, envelope: Envelope, error: BaseException) -> None:
        """Answer a message that failed; a wait goes to its asker alone.

        A lock held by another process or a full disk is the asker's to wait
        out (it retries with backoff), not a failure of the engine: even when
        SQLite reported the full disk as an I/O error, which the supervisor
        would otherwise take for a broken connection and stop the engine.
        """
        if envelope.is_ask and wait_reason(error, path=self.config.database.path) is not None:
            self.bus.fail(envelope, error)
        else:
            super().fail(envelope, error)

    def _arm_idle_timer(self) -> None:
        if self._idle_armed or self.core is None or self.core.wal_frames == 0:
            return
        self._idle_armed = True
        self.later("idle", self.core.idle_after_s, IdleCheck())
