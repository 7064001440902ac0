"""The Backfill actor: runs chunked tasks, one chunk of background work at a time.

For each task it snapshots the key bound, counts what is eligible, then
sends the Writer one `RunChunk` at a time. The next chunk goes out only
after the last one's answer came back here as a message and the task's
`yield_ms` has passed, so foreground writes queued meanwhile run first.
Several tasks take turns, chunk by chunk. Counting and the final
verification run on this actor's own read-only connection, never on the
Writer's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Answer, Envelope
from sqlwarden.config import Config
from sqlwarden.db.connect import open_reader
from sqlwarden.errors import (
    EngineError,
    EngineStopped,
    TaskConflict,
    UnexpectedMessage,
    UnknownTask,
)
from sqlwarden.protocol import (
    ControlTask,
    Message,
    NextChunk,
    ProgressEvent,
    RunChunk,
    SaveTask,
    StartTasks,
    TasksStatus,
    WaitTasks,
)
from sqlwarden.tasks.chunks import (
    TERMINAL,
    ChunkSizer,
    TaskPlan,
    compile_check,
    count_eligible,
    first_unfinished,
    key_before,
    load_callable,
    read_task_rows,
    snapshot_bound,
)
from sqlwarden.views import ChunkResult, SqlValue, TaskView

log = logging.getLogger(__name__)

#: Walks over the key range before a task whose `where` still matches rows is
#: failed: a second pass picks up rows a foreground write made eligible again;
#: rows that survive a third are rows the change does not clear.
MAX_PASSES = 3
CONTROL_ACTIONS = ("pause", "resume", "cancel")


@dataclass(slots=True, eq=False)
class _Run:
    """What the actor knows of one task."""

    plan: TaskPlan
    status: str = "pending"
    processed: int = 0
    total: int | None = None
    checkpoint: SqlValue = None
    bound: SqlValue = None
    attempts: int = 0
    error: str | None = None
    waiting: str | None = None
    passes: int = 0
    active: bool = False  # running in this process, so its bound and counts are current
    ran_here: bool = False
    saving: int = 0
    #: Bumped by pause, cancel and start: a chunk answer from an older
    #: generation was refused or overtaken, and is not the task's failure.
    generation: int = 0
    last_chunk_at: float = 0.0
    sizer: ChunkSizer | None = None
    #: Control asks answered once the task's state is saved.
    replies: list[Envelope] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.task.name

    def view(self) -> TaskView:
        task = self.plan.task
        return TaskView(name=task.name, version=task.version, table=task.table,
                        status=self.status, processed=self.processed, total=self.total,
                        checkpoint=self.checkpoint, bound=self.bound, attempts=self.attempts,
                        error=self.error, waiting=self.waiting, provides=task.provides,
                        ran_here=self.ran_here)


class BackfillActor(BaseActor):
    """Owns the plan and cursor of every chunked task."""

    name = "backfill"

    def __init__(self, *, config: Config, plans: tuple[TaskPlan, ...], run_id: str,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.run_id = run_id
        self._clock = clock
        self._wall = wall
        self._runs = {plan.task.name: _Run(plan) for plan in plans}
        self._turns: deque[str] = deque(self._runs)
        self._in_flight: str | None = None
        self._timer: threading.Timer | None = None
        self._waiters: list[tuple[Envelope, tuple[str, ...]]] = []
        self._reader: apsw.Connection | None = None
        self._booted = False

    def setup(self) -> None:
        if self._runs:  # without tasks there is nothing to count or verify
            self._reader = open_reader(self.config.database)

    def teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        pending = [envelope for envelope, _ in self._waiters]
        for run in self._runs.values():
            pending += run.replies
            run.replies.clear()
        for envelope in pending:
            self.bus.fail(envelope, EngineStopped(self.name))
        self._waiters.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def handle(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case StartTasks():
                self._boot()
                return None
            case NextChunk():
                self._timer = None
                self._kick()
                return None
            case ControlTask(task=name, action=action):
                return self._control(self._run(name), action, envelope)
            case TasksStatus():
                return tuple(run.view() for run in self._runs.values())
            case WaitTasks(tasks=names):
                for name in names:
                    self._run(name)
                self._waiters.append((envelope, names))
                self._settle()
                return DEFERRED
            case _:
                raise UnexpectedMessage(self.name, message)

    def _run(self, name: str) -> _Run:
        run = self._runs.get(name)
        if run is None:
            known = ", ".join(self._runs) or "none"
            raise UnknownTask(f"unknown task {name!r} (declared: {known})", task=name)
        return run

    # --- boot and start -----------------------------------------------------------------

    def _boot(self) -> None:
        if self._reader is None or self._booted:
            self._kick()
            return
        self._booted = True
        rows = read_task_rows(self._reader)
        for run in self._runs.values():
            if run.ran_here:  # resumed by a person before the boot
                continue
            task = run.plan.task
            row = rows.get((task.name, task.version))
            if row is None:
                self._begin(run, fresh=True)
                continue
            run.status, run.checkpoint, run.bound = row["status"], row["checkpoint"], row["bound"]
            run.attempts, run.error = row["attempts"], row["error"]
            run.processed, run.total = row["rows_processed"], row["rows_total"]
            if run.status in ("done", "paused", "cancelled"):
                continue  # done never reruns; a person paused or cancelled the others
            if run.status == "running":
                log.warning("task %s was left running by run %s, which is gone; resuming from "
                            "checkpoint %r", task.ident, row["run_id"], run.checkpoint)
            elif run.status == "failed":
                log.warning("task %s failed in an earlier run (%s); retrying from checkpoint %r",
                            task.ident, run.error, run.checkpoint)
            self._begin(run, fresh=False)
        self._kick()

    def _begin(self, run: _Run, *, fresh: bool) -> None:
        """Check, snapshot and count a task, persist it as running, and queue its chunks."""
        assert self._reader is not None
        plan, task = run.plan, run.plan.task
        run.ran_here = True
        run.generation += 1
        if fresh:
            run.checkpoint = run.bound = None
        try:
            compile_check(self._reader, plan)
            if task.change == "call":
                load_callable(task)
            if fresh or run.bound is None:
                run.bound = snapshot_bound(self._reader, plan)
            run.total = count_eligible(self._reader, plan,
                                       None if task.where else run.checkpoint, run.bound)
        except (EngineError, apsw.Error) as exc:
            run.attempts += 1
            self._fail(run, str(exc) if isinstance(exc, EngineError)
                       else f"task {task.ident}: {exc}")
            return
        run.status, run.processed, run.error, run.waiting = "running", 0, None, None
        run.attempts += 1
        run.passes, run.active = 1, True
        run.sizer = ChunkSizer(task.target_ms, task.min_rows, task.max_rows)
        run.last_chunk_at = self._clock()
        self._save(run, status="running", tbl=task.table, change=task.change,
                   run_id=self.run_id, attempts=run.attempts, bound=run.bound,
                   checkpoint=run.checkpoint, rows_total=run.total, rows_processed=0,
                   started_at=self._wall(), ended_at=None, error=None, waiting=None,
                   rate_rows_s=None, eta_s=None)
        self._event(run)
        log.info("task %s: %s rows to do up to key %r", task.ident, run.total, run.bound)

    # --- chunks -------------------------------------------------------------------------

    def _kick(self) -> None:
        """Send the next chunk, unless one is in flight or a yield is running."""
        if self._in_flight is not None or self._timer is not None:
            return
        for _ in range(len(self._turns)):
            name = self._turns[0]
            self._turns.rotate(-1)
            run = self._runs[name]
            if run.status == "running" and run.active:
                assert run.sizer is not None
                task = run.plan.task
                chunk = RunChunk(task=task.name, version=task.version, run_id=self.run_id,
                                 after=run.checkpoint, bound=run.bound, rows=run.sizer.size)
                self.request("writer", chunk,
                             functools.partial(self._on_chunk, run, run.generation))
                self._in_flight = name
                return

    def _on_chunk(self, run: _Run, generation: int, answer: Answer) -> None:
        self._in_flight = None
        task = run.plan.task
        try:
            if answer.error is not None:
                if run.status == "running" and generation == run.generation:
                    self._fail(run, str(answer.error))
                else:  # refused because a pause or cancel was saved first: nothing committed
                    log.debug("task %s: chunk not run: %s", task.ident, answer.error)
                return
            result: ChunkResult = answer.result
            assert run.sizer is not None
            run.sizer.observe(result.scanned, result.duration_ms)
            now = self._clock()
            chunk_s, run.last_chunk_at = now - run.last_chunk_at, now
            if result.scanned:  # committed, whatever happened to the task meanwhile
                run.checkpoint = result.last
                run.processed += result.processed
            if run.status != "running" or generation != run.generation:
                return
            run.waiting = ("yielding to foreground writes" if result.yielded_to
                           else "WAL checkpoint" if result.checkpoint else None)
            self._event(run, chunk_rows=result.processed, chunk_s=chunk_s)
            if result.exhausted:
                self._verify(run)
        finally:
            self._next(task.yield_ms)

    def _next(self, yield_ms: float) -> None:
        if not any(r.status == "running" and r.active for r in self._runs.values()):
            return
        if yield_ms <= 0:
            with contextlib.suppress(EngineStopped):
                self.bus.tell(self.name, self.name, NextChunk())
            return
        timer = threading.Timer(yield_ms / 1000, self._send_next)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _send_next(self) -> None:
        with contextlib.suppress(EngineStopped):  # the engine stopped while we yielded
            self.bus.tell(self.name, self.name, NextChunk())

    def _verify(self, run: _Run) -> None:
        """Done only when no row at or below the bound is left to change."""
        assert self._reader is not None
        plan, task = run.plan, run.plan.task
        try:
            key, left = first_unfinished(self._reader, plan, run.checkpoint, run.bound)
            before = key_before(self._reader, plan, key) if left else None
        except EngineError as exc:
            self._fail(run, str(exc))
            return
        except apsw.Error as exc:
            self._fail(run, f"task {task.ident}: the verification query failed: {exc}")
            return
        if left == 0:
            self._finish(run, "done")
            return
        if run.passes >= MAX_PASSES:
            self._fail(run, f"task {task.ident}: {left:,} rows at or below key {run.bound!r} "
                            f"still match 'where' after {run.passes} passes (first key "
                            f"{key!r}); the change does not make them ineligible")
            return
        run.passes += 1
        run.checkpoint = before
        log.info("task %s: %s rows still eligible; pass %d starts at key %r", task.ident,
                 left, run.passes, key)
        self._save(run, checkpoint=run.checkpoint)

    # --- control ------------------------------------------------------------------------

    def _control(self, run: _Run, action: str, envelope: Envelope) -> Any:
        ident = run.plan.task.ident
        if action not in CONTROL_ACTIONS:
            raise TaskConflict(f"unknown action {action!r}; expected one of "
                            f"{', '.join(CONTROL_ACTIONS)}", task=run.name)
        if run.status == "done":
            raise TaskConflict(f"task {ident} is done; declare a new version to run it again",
                            task=run.name)
        if action == "pause":
            if run.status == "paused":
                return run.view()
            if run.status != "running":
                raise TaskConflict(f"task {ident} is {run.status}; only a running task can be "
                                "paused", task=run.name)
            run.status, run.waiting = "paused", "paused"
            run.generation += 1
            self._save(run, status="paused", waiting="paused")
            self._event(run)
        elif action == "resume":
            if run.status == "running":
                return run.view()
            if run.status == "paused" and run.active:
                run.status, run.waiting = "running", None
                run.last_chunk_at = self._clock()  # the pause is not chunk time
                self._save(run, status="running", waiting=None, run_id=self.run_id)
                self._event(run)
            else:
                self._begin(run, fresh=False)
            self._kick()
        else:
            if run.status == "cancelled":
                return run.view()
            self._finish(run, "cancelled")
        run.replies.append(envelope)
        return DEFERRED

    # --- state --------------------------------------------------------------------------

    def _fail(self, run: _Run, error: str) -> None:
        log.warning("%s", error)
        self._finish(run, "failed", error=error)

    def _finish(self, run: _Run, status: str, *, error: str | None = None) -> None:
        run.status, run.error, run.waiting, run.active = status, error, None, False
        run.generation += 1
        self._save(run, status=status, ended_at=self._wall(), error=error, waiting=None,
                   attempts=run.attempts, run_id=self.run_id)
        self._event(run, terminal=True)
        if status == "done":
            log.info("task %s: done, %s rows changed", run.plan.task.ident, run.processed)

    def _save(self, run: _Run, **fields: SqlValue) -> None:
        task = run.plan.task
        if "tbl" not in fields:
            # The first save of a task inserts its row, so it carries what a row needs.
            fields = {"tbl": task.table, "change": task.change, "status": run.status, **fields}
        run.saving += 1
        message = SaveTask(task=task.name, version=task.version, fields=tuple(fields.items()))
        self.request("writer", message, lambda answer: self._saved(run, answer))

    def _saved(self, run: _Run, answer: Answer) -> None:
        run.saving -= 1
        if answer.error is not None:
            # The task's state in the database is now behind; say so everywhere.
            self.supervisor.report(self.name, "writer.task_state", answer.error)
            run.error = f"saving the task state failed: {answer.error}"
        if run.saving == 0:
            replies, run.replies = run.replies, []
            for envelope in replies:
                self.bus.reply(envelope, run.view())
        self._settle()

    def _settle(self) -> None:
        """Answer the waiters whose tasks have all come to rest, with their state saved."""
        def at_rest(run: _Run) -> bool:
            return run.saving == 0 and (run.status in TERMINAL or run.status == "paused")

        still = []
        for envelope, names in self._waiters:
            runs = [self._runs[n] for n in names] if names else list(self._runs.values())
            if all(at_rest(r) for r in runs):
                self.bus.reply(envelope, tuple(r.view() for r in runs))
            else:
                still.append((envelope, names))
        self._waiters = still

    def _event(self, run: _Run, *, chunk_rows: int = 0, chunk_s: float = 0.0,
               terminal: bool = False) -> None:
        task = run.plan.task
        with contextlib.suppress(EngineStopped):
            self.bus.tell(self.name, "progress", ProgressEvent(
                scope="task", name=task.name, version=task.version, processed=run.processed,
                total=run.total, state=run.status, waiting=run.waiting, chunk_rows=chunk_rows,
                chunk_s=chunk_s, terminal=terminal, error=run.error))
