"""The task runner: which chunk of which task goes next, as a state machine.

For each task it snapshots the key bound, counts what is eligible, then asks
the Writer for one `RunChunk` at a time. The next chunk goes out only after
the last one's answer came back and the task's `yield_ms` has passed, so
foreground writes queued meanwhile run first. Several tasks take turns,
chunk by chunk. Counting and the final verification read through the
connection the Backfill actor owns and lends here, never the Writer's.

A task is `done` only when no row at or below its bound still matches its
`where`; a second pass picks up rows a foreground write made eligible again,
and rows that survive a third fail the task. Pause and cancel stop between
chunks; a chunk answered after them was committed but is no longer the
task's business. Every state change is saved through the Writer
(`SaveTask`), and a control ask is answered once its state is saved (or
its save met a wait, which the task's `waiting_for` then shows).

A lock held by another process or a full disk is a wait, not a failure
(`sqlwarden.db.faults`): the chunk that met it committed nothing, so the
task stays running, says what it waits for, and sends the same chunk again
after a doubling backoff; a save that met it is sent again (merged with any
later one) before the next chunk. Only what retrying cannot fix (a
constraint, bad SQL, a failed verification) fails a task.

The runner holds no thread: each method takes the monotonic clock's
reading and returns the effects to perform (`sqlwarden.effects`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

from sqlwarden.db.faults import backoff_s, wait_reason
from sqlwarden.effects import After, Effects, Fail, Reply, Report, Request, Tell
from sqlwarden.errors import EngineError, EngineStopped, TaskConflict, UnknownTask
from sqlwarden.protocol import (
    BACKFILL,
    PROGRESS,
    WRITER,
    NextChunk,
    ProgressEvent,
    RunChunk,
    SaveTask,
)
from sqlwarden.tasks.chunks import (
    TERMINAL,
    ChunkSizer,
    TaskPlan,
    chunk_name,
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
#: The timer that ends a yield between two chunks.
YIELD = "yield"


@dataclass(slots=True, eq=False)
class TaskRun:
    """What the runner knows of one task."""

    plan: TaskPlan
    status: str = "pending"
    processed: int = 0
    total: int | None = None
    checkpoint: SqlValue = None
    bound: SqlValue = None
    attempts: int = 0
    error: str | None = None
    waiting: str | None = None
    #: What the last chunk met and waits out (a lock held elsewhere, a full disk).
    chunk_wait: str | None = None
    #: What the last failed save met, while its fields wait in `unsaved`.
    save_wait: str | None = None
    passes: int = 0
    active: bool = False  # running in this process, so its bound and counts are current
    ran_here: bool = False
    #: The database has a row for this task (read when the runner recovered), and the
    #: run that wrote it last.
    recorded: bool = False
    left_by: str | None = None
    saving: int = 0
    #: Fields of saves that met a wait and were not set again by a later save: the
    #: next save carries them.
    unsaved: dict[str, SqlValue] = field(default_factory=dict)
    #: The last save that set each field, so a failed save never undoes a later one.
    field_seq: dict[str, int] = field(default_factory=dict)
    save_seq: int = 0
    #: Bumped by pause, cancel and start: a chunk answer from an older
    #: generation was refused or overtaken, and is not the task's failure.
    generation: int = 0
    last_chunk_at: float = 0.0
    sizer: ChunkSizer | None = None
    #: Control asks answered once the task's state is saved.
    replies: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.task.name

    def view(self) -> TaskView:
        task = self.plan.task
        return TaskView(name=task.name, version=task.version, table=task.table,
                        status=self.status, processed=self.processed, total=self.total,
                        checkpoint=self.checkpoint, bound=self.bound, attempts=self.attempts,
                        error=self.error, waiting=self.waiting, provides=task.provides,
                        ran_here=self.ran_here, waiting_for=self.chunk_wait or self.save_wait)


class TaskRunner:
    """Owns the plan and cursor of every chunked task; one chunk in flight at a time."""

    def __init__(self, plans: tuple[TaskPlan, ...], *, run_id: str,
                 reader: apsw.Connection | None, wall: Callable[[], float] = time.time) -> None:
        """`reader` is a read-only connection (None only when there are no tasks)."""
        self.run_id = run_id
        self._reader = reader
        self._wall = wall
        self._runs = {plan.task.name: TaskRun(plan) for plan in plans}
        self._turns: deque[str] = deque(self._runs)
        self._in_flight: str | None = None
        self._yielding = False
        #: Waits met in a row (by chunks and saves), for the backoff; 0 after a chunk commits.
        self._faults = 0
        #: Set when the chunk just answered met a wait: the pause before the next one.
        self._backoff: float | None = None
        self._waiters: list[tuple[Any, tuple[str, ...]]] = []
        self._recovered = False
        self._booted = False

    # --- input --------------------------------------------------------------------------

    def start(self, now: float) -> Effects:
        """Recover task rows left by earlier runs and start what should run."""
        if self._reader is None or self._booted:
            return self._kick()
        self._booted = True
        self._recover()
        effects: Effects = []
        for run in self._runs.values():
            if run.ran_here:  # a person resumed or cancelled it before the start
                continue
            task = run.plan.task
            if not run.recorded:
                effects += self._begin(run, now, fresh=True)
                continue
            if run.status in ("done", "paused", "cancelled"):
                continue  # done never reruns; a person paused or cancelled the others
            if run.status == "running":
                # A stop (or a crash) between chunks leaves a task running: either way
                # it goes on from the last chunk that committed.
                log.info("task %s was running when run %s ended; resuming from checkpoint %r",
                         task.ident, run.left_by, run.checkpoint)
            elif run.status == "failed":
                log.warning("task %s failed in an earlier run (%s); retrying from checkpoint %r",
                            task.ident, run.error, run.checkpoint)
            effects += self._begin(run, now, fresh=False)
        return effects + self._kick()

    def _recover(self) -> None:
        """Read what earlier runs saved of each task, once.

        Done before anything acts on a task, so a control asked for before the start
        (`start_tasks=False`) sees that a task is done, and not a blank one.
        """
        if self._recovered or self._reader is None:
            return
        self._recovered = True
        rows = read_task_rows(self._reader)
        for run in self._runs.values():
            task = run.plan.task
            row = rows.get((task.name, task.version))
            if row is None:
                continue
            run.recorded = True
            run.status, run.checkpoint, run.bound = row["status"], row["checkpoint"], row["bound"]
            run.attempts, run.error = row["attempts"], row["error"]
            run.processed, run.total = row["rows_processed"], row["rows_total"]
            run.left_by = row["run_id"]

    def next_chunk(self) -> Effects:
        """The yield (or the backoff after a wait) has passed: saves that met a wait go
        again first, then the next chunk."""
        self._yielding = False
        effects: Effects = []
        for run in self._runs.values():
            if run.unsaved:
                effects += self._save(run)
        return effects + self._kick()

    def control(self, name: str, action: str, waiter: Any, now: float) -> Effects:
        """Pause, resume or cancel a task; `waiter` is answered once the state is saved.

        Raises `UnknownTask` or `TaskConflict` for a request that does not apply.
        """
        run = self.run(name)
        self._recover()
        ident = run.plan.task.ident
        if action not in CONTROL_ACTIONS:
            raise TaskConflict(f"unknown action {action!r}; expected one of "
                               f"{', '.join(CONTROL_ACTIONS)}", task=run.name)
        if run.status == "done":
            raise TaskConflict(f"task {ident} is done; declare a new version to run it again",
                               task=run.name)
        effects: Effects = []
        if action == "pause":
            if run.status == "paused":
                return [Reply(waiter, run.view())]
            if run.status != "running":
                raise TaskConflict(f"task {ident} is {run.status}; only a running task can be "
                                   "paused", task=run.name)
            run.status, run.waiting, run.chunk_wait = "paused", "paused", None
            run.generation += 1
            effects += self._save(run, status="paused", waiting="paused")
            effects += self._event(run)
        elif action == "resume":
            if run.status == "running":
                return [Reply(waiter, run.view())]
            if run.status == "paused" and run.active:
                run.status, run.waiting = "running", None
                run.last_chunk_at = now  # the pause is not chunk time
                effects += self._save(run, status="running", waiting=None, run_id=self.run_id)
                effects += self._event(run)
            else:
                effects += self._begin(run, now, fresh=False)
            effects += self._kick()
        else:
            if run.status == "cancelled":
                return [Reply(waiter, run.view())]
            effects += self._finish(run, "cancelled")
        run.replies.append(waiter)
        return effects

    def wait(self, names: tuple[str, ...], waiter: Any) -> Effects:
        """Answer `waiter` once the tasks (all when empty) are at rest with their state saved."""
        for name in names:
            self.run(name)
        self._recover()
        self._waiters.append((waiter, names))
        return self._settle()

    def answered(self, context: Any, result: Any, error: BaseException | None,
                 now: float) -> Effects:
        """The Writer's answer to a chunk or a save sent with `context`."""
        match context:
            case ("chunk", name, generation):
                return self._on_chunk(self._runs[name], generation, result, error, now)
            case ("saved", name, seq, SaveTask() as message):
                return self._saved(self._runs[name], seq, message, error)
            case _:
                raise ValueError(f"no request was sent with context {context!r}")

    def views(self) -> tuple[TaskView, ...]:
        self._recover()
        return tuple(run.view() for run in self._runs.values())

    def run(self, name: str) -> TaskRun:
        run = self._runs.get(name)
        if run is None:
            known = ", ".join(self._runs) or "none"
            raise UnknownTask(f"unknown task {name!r} (declared: {known})", task=name)
        return run

    def stop(self) -> Effects:
        """Refuse every ask still waiting: the engine is stopping."""
        waiting = [waiter for waiter, _ in self._waiters]
        for run in self._runs.values():
            waiting += run.replies
            run.replies.clear()
        self._waiters.clear()
        return [Fail(waiter, EngineStopped(BACKFILL)) for waiter in waiting]

    # --- start --------------------------------------------------------------------------

    def _begin(self, run: TaskRun, now: float, *, fresh: bool) -> Effects:
        """Check, snapshot and count a task, save it as running, and queue its chunks."""
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
            return self._fail(run, str(exc) if isinstance(exc, EngineError)
                              else f"task {task.ident}: {exc}")
        run.status, run.processed, run.error, run.waiting = "running", 0, None, None
        run.chunk_wait = None
        run.attempts += 1
        run.passes, run.active = 1, True
        run.sizer = ChunkSizer(task.target_ms, task.min_rows, task.max_rows)
        run.last_chunk_at = now
        log.info("task %s: %s rows to do up to key %r", task.ident, run.total, run.bound)
        return self._save(run, status="running", tbl=task.table, change=task.change,
                          run_id=self.run_id, attempts=run.attempts, bound=run.bound,
                          checkpoint=run.checkpoint, rows_total=run.total, rows_processed=0,
                          started_at=self._wall(), ended_at=None, error=None, waiting=None,
                          rate_rows_s=None, eta_s=None) + self._event(run)

    # --- chunks -------------------------------------------------------------------------

    def _kick(self) -> Effects:
        """Send the next chunk, unless one is in flight or a yield is running."""
        if self._in_flight is not None or self._yielding:
            return []
        for _ in range(len(self._turns)):
            name = self._turns[0]
            self._turns.rotate(-1)
            run = self._runs[name]
            if run.status == "running" and run.active:
                assert run.sizer is not None
                task = run.plan.task
                self._in_flight = name
                chunk = RunChunk(task=task.name, version=task.version, run_id=self.run_id,
                                 after=run.checkpoint, bound=run.bound, rows=run.sizer.size)
                return [Request(WRITER, chunk, ("chunk", name, run.generation))]
        return []

    def _on_chunk(self, run: TaskRun, generation: int, result: ChunkResult | None,
                  error: BaseException | None, now: float) -> Effects:
        self._in_flight = None
        self._backoff = None
        try:
            effects = self._chunk_done(run, generation, result, error, now)
        except Exception as exc:  # a bug here must not leave the tasks without a next chunk
            effects = [Report(RunChunk.kind, exc)]
        pause_s = run.plan.task.yield_ms / 1000
        if self._backoff is not None:  # a wait never cuts the yield short
            pause_s = max(pause_s, self._backoff)
        return effects + self._next(pause_s)

    def _chunk_done(self, run: TaskRun, generation: int, result: ChunkResult | None,
                    error: BaseException | None, now: float) -> Effects:
        task = run.plan.task
        if error is not None:
            reason = wait_reason(error)
            if reason is None and run.unsaved and run.save_wait is not None:
                # The task's row is behind (a save met the wait and goes again before the
                # next chunk), which is why the Writer refused the chunk: not its failure.
                reason = run.save_wait
            if reason is not None:
                # Nothing of the chunk committed, whoever's it was: the same chunk goes
                # again after the backoff, as the cause is the database's, not the task's.
                return self._wait(run, reason) if (run.status == "running"
                                                   and generation == run.generation) else []
            if run.status == "running" and generation == run.generation:
                return self._fail(run, str(error))
            # Refused because a pause or cancel was saved first: nothing committed.
            log.debug("task %s: chunk not run: %s", task.ident, error)
            return []
        assert result is not None and run.sizer is not None
        self._faults = 0
        if run.chunk_wait is not None:
            log.info("task %s goes on: no longer waits (%s)", task.ident, run.chunk_wait)
            run.chunk_wait = None
        run.sizer.observe(result.scanned, result.duration_ms)
        chunk_s, run.last_chunk_at = now - run.last_chunk_at, now
        if result.scanned:  # committed, whatever happened to the task meanwhile
            run.checkpoint = result.last
            run.processed += result.processed
        if run.status != "running" or generation != run.generation:
            return []
        run.waiting = ("yielding to foreground writes" if result.yielded_to
                       else "WAL checkpoint" if result.checkpoint else None)
        effects = self._event(run, chunk_rows=result.processed, chunk_s=chunk_s)
        if result.exhausted:
            effects += self._verify(run)
        return effects

    def _wait(self, run: TaskRun, reason: str) -> Effects:
        """The chunk met a transient fault: stay running and say why; `_on_chunk` sends
        the same chunk again (its checkpoint did not move) after the backoff."""
        self._faults += 1
        self._backoff = backoff_s(self._faults)
        if run.chunk_wait != reason:
            log.warning("task %s waits: %s; %s goes again in %.1f s and then with a "
                        "doubling backoff", run.plan.task.ident, reason,
                        chunk_name(run.checkpoint), self._backoff)
        run.chunk_wait = run.waiting = reason
        return self._event(run)

    def _next(self, pause_s: float) -> Effects:
        if not any((r.status == "running" and r.active) or r.unsaved
                   for r in self._runs.values()):
            return []
        if pause_s <= 0:
            return [Tell(BACKFILL, NextChunk())]
        self._yielding = True
        return [After(pause_s, NextChunk(), YIELD)]

    def _verify(self, run: TaskRun) -> Effects:
        """Done only when no row at or below the bound is left to change."""
        assert self._reader is not None
        plan, task = run.plan, run.plan.task
        try:
            key, left = first_unfinished(self._reader, plan, run.checkpoint, run.bound)
            before = key_before(self._reader, plan, key) if left else None
        except EngineError as exc:
            return self._fail(run, str(exc))
        except apsw.Error as exc:
            reason = wait_reason(exc)
            if reason is not None:
                # The next chunk at the checkpoint finds nothing left and verifies again.
                return self._wait(run, reason)
            return self._fail(run, f"task {task.ident}: the verification query failed: {exc}")
        if left == 0:
            return self._finish(run, "done")
        if run.passes >= MAX_PASSES:
            return self._fail(run, f"task {task.ident}: {left:,} rows at or below key "
                                   f"{run.bound!r} still match 'where' after {run.passes} "
                                   f"passes (first key {key!r}); the change does not make them "
                                   "ineligible")
        run.passes += 1
        run.checkpoint = before
        log.info("task %s: %s rows still eligible; pass %d starts at key %r", task.ident,
                 left, run.passes, key)
        return self._save(run, checkpoint=run.checkpoint)

    # --- state --------------------------------------------------------------------------

    def _fail(self, run: TaskRun, error: str) -> Effects:
        log.warning("%s", error)
        return self._finish(run, "failed", error=error)

    def _finish(self, run: TaskRun, status: str, *, error: str | None = None) -> Effects:
        run.status, run.error, run.waiting, run.active = status, error, None, False
        run.chunk_wait = None
        run.generation += 1
        if status == "done":
            log.info("task %s: done, %s rows changed", run.plan.task.ident, run.processed)
        return self._save(run, status=status, ended_at=self._wall(), error=error, waiting=None,
                          attempts=run.attempts, run_id=self.run_id) + self._event(
            run, terminal=True)

    def _save(self, run: TaskRun, **fields: SqlValue) -> Effects:
        task = run.plan.task
        # Fields whose save met a wait go with this one; what it sets itself is newer.
        fields, run.unsaved = {**run.unsaved, **fields}, {}
        if "tbl" not in fields:
            # The first save of a task inserts its row, so it carries what a row needs.
            fields = {"tbl": task.table, "change": task.change, "status": run.status, **fields}
        run.saving += 1
        run.save_seq += 1
        for name in fields:
            run.field_seq[name] = run.save_seq
        message = SaveTask(task=task.name, version=task.version, fields=tuple(fields.items()))
        return [Request(WRITER, message, ("saved", run.name, run.save_seq, message))]

    def _saved(self, run: TaskRun, seq: int, message: SaveTask,
               error: BaseException | None) -> Effects:
        run.saving -= 1
        effects: Effects = []
        reason = wait_reason(error) if error is not None else None
        if reason is not None:
            # Nothing was saved; the fields no later save has set go again, first
            # thing after the backoff (before the task's next chunk).
            run.unsaved.update((name, value) for name, value in message.fields
                               if run.field_seq.get(name) == seq)
            if run.save_wait is None:
                log.warning("task %s: saving its state waits: %s; it is saved again "
                            "with a doubling backoff", run.plan.task.ident, reason)
            run.save_wait = reason
            effects += self._retry_saves()
        elif error is not None:
            # The task's state in the database is now behind; say so everywhere.
            effects.append(Report("writer.task_state", error))
            run.error = f"saving the task state failed: {error}"
        elif not run.unsaved:
            run.save_wait = None
        if run.saving == 0:
            # A save that met a wait is answered too, its `waiting_for` saying so: a
            # person's pause must not hang while another program holds the lock.
            replies, run.replies = run.replies, []
            effects += [Reply(waiter, run.view()) for waiter in replies]
        return effects + self._settle()

    def _retry_saves(self) -> Effects:
        """Make sure `next_chunk` comes (it sends the unsaved fields again) after a backoff."""
        self._faults += 1
        if self._in_flight is not None or self._yielding:
            return []  # the chunk's answer or the running timer leads there anyway
        self._yielding = True
        return [After(backoff_s(self._faults), NextChunk(), YIELD)]

    def _settle(self) -> Effects:
        """Answer the waiters whose tasks have all come to rest, with their state saved."""
        def at_rest(run: TaskRun) -> bool:
            return (run.saving == 0 and not run.unsaved
                    and (run.status in TERMINAL or run.status == "paused"))

        effects: Effects = []
        still = []
        for waiter, names in self._waiters:
            runs = [self._runs[n] for n in names] if names else list(self._runs.values())
            if all(at_rest(r) for r in runs):
                effects.append(Reply(waiter, tuple(r.view() for r in runs)))
            else:
                still.append((waiter, names))
        self._waiters = still
        return effects

    def _event(self, run: TaskRun, *, chunk_rows: int = 0, chunk_s: float = 0.0,
               terminal: bool = False) -> Effects:
        task = run.plan.task
        return [Tell(PROGRESS, ProgressEvent(
            scope="task", name=task.name, version=task.version, processed=run.processed,
            total=run.total, state=run.status, waiting=run.waiting, chunk_rows=chunk_rows,
            chunk_s=chunk_s, terminal=terminal, error=run.error))]
