"""The task runner as a plain state machine: fed answers, it says which chunk goes next.

No actor and no thread: each test feeds the runner the Writer's answers,
computed by the real `WriterCore` on a real database, and looks at what the
runner asks for.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.connect import open_reader, open_writer
from sqlwarden.db.faults import LOCKED, backoff_s
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.effects import After, Effect, Reply, Report, Request, Tell
from sqlwarden.errors import TaskConflict, UnknownTask, WriteError
from sqlwarden.progress import ProgressBook
from sqlwarden.protocol import WRITER, NextChunk, ProgressEvent, RunChunk, SaveProgress, SaveTask
from sqlwarden.tasks.chunks import TaskPlan
from sqlwarden.tasks.runner import YIELD, TaskRunner
from sqlwarden.views import TaskView

from .support.device import held_write_lock

NUMS_YAML = """\
database: {{path: {db}, busy_timeout_ms: {busy_timeout_ms}}}
tables:
  nums:
    columns:
      id: {{type: integer, primary_key: true}}
      x: integer
tasks:
  double:
    table: nums
    set: {{x: "id * 2"}}
    where: "x IS NULL"
    min_rows: 250
    max_rows: 250
    yield_ms: 10
message_log: {{enabled: false}}
status: {{enabled: false}}
"""

Answered = Callable[[Any, Any, BaseException | None, float], list[Effect]]


class Bench:
    """A runner over a real database, with the real WriterCore answering its requests."""

    def __init__(self, tmp_path: Path, rows: int = 1000, *, busy_timeout_ms: int = 5000) -> None:
        self.config: Config = parse_config(
            NUMS_YAML.format(db=tmp_path / "nums.db", busy_timeout_ms=busy_timeout_ms),
            base_dir=tmp_path)
        plans = tuple(TaskPlan(t, self.config.table(t.table)) for t in self.config.tasks)
        conn = open_writer(self.config.database)
        apply_schema(conn, self.config)
        conn.executemany("INSERT INTO nums (id) VALUES (?)", [(i,) for i in range(1, rows + 1)])
        self.core = WriterCore(conn, self.config, clock=lambda: 0.0, tasks=plans)
        self.reader = open_reader(self.config.database)
        self.runner = TaskRunner(plans, run_id="run1", reader=self.reader, wall=lambda: 1e9)
        self.held: deque[Request] = deque()
        self.seen: list[Effect] = []

    def close(self) -> None:
        self.reader.close()
        self.core.conn.close()

    def feed(self, effects: list[Effect], *, hold_chunks: bool = False) -> None:
        """Perform `effects`: answer every request at once (chunks too, unless held)."""
        queue = deque(effects)
        while queue:
            effect = queue.popleft()
            self.seen.append(effect)
            if not isinstance(effect, Request):
                continue
            if hold_chunks and isinstance(effect.message, RunChunk):
                self.held.append(effect)
                continue
            queue.extend(self.answer(effect))

    def answer(self, request: Request) -> list[Effect]:
        assert request.to == WRITER
        try:
            if isinstance(request.message, RunChunk):
                result: Any = self.core.run_chunk(request.message)
            else:
                (result,) = self.core.commit_group([request.message])
                if isinstance(result, BaseException):
                    raise result
        except Exception as exc:
            return self.runner.answered(request.context, None, exc, 0.0)
        return self.runner.answered(request.context, result, None, 0.0)

    def release(self) -> None:
        """Answer the chunk held back."""
        self.feed(self.answer(self.held.popleft()))

    def take(self, kind: type) -> list[Any]:
        """The effects of `kind` seen since the last take (their messages, for requests)."""
        found = [e for e in self.seen if isinstance(e, kind)]
        self.seen = [e for e in self.seen if not isinstance(e, kind)]
        return found

    def chunks(self) -> list[RunChunk]:
        """The chunks asked for since the last look."""
        found = [e.message for e in self.seen
                 if isinstance(e, Request) and isinstance(e.message, RunChunk)]
        self.seen = [e for e in self.seen
                     if not (isinstance(e, Request) and isinstance(e.message, RunChunk))]
        return found

    def rows(self) -> list[tuple[int, int | None]]:
        return list(self.reader.execute("SELECT id, x FROM nums ORDER BY id"))


@contextmanager
def next_process(bench: Bench) -> Iterator[TaskRunner]:
    """A new runner on the database `bench` left, as the next process would make it."""
    plans = tuple(TaskPlan(t, bench.config.table(t.table)) for t in bench.config.tasks)
    reader = open_reader(bench.config.database)
    try:
        yield TaskRunner(plans, run_id="run2", reader=reader, wall=lambda: 2e9)
    finally:
        reader.close()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = Bench(tmp_path)
    yield made
    made.close()


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Bench]:
    """A bench whose Writer gives up on a held lock after 50 ms."""
    made = Bench(tmp_path, busy_timeout_ms=50)
    yield made
    made.close()


@contextmanager
def another_program_writing(bench: Bench) -> Iterator[None]:
    """Another process holds the database's write lock, as another program would."""
    with held_write_lock(bench.config.database.path):
        yield


def run_to_rest(bench: Bench) -> None:
    """Let every yield and backoff pass until no more chunks go."""
    while bench.take(After):
        bench.feed(bench.runner.next_chunk())


def test_each_chunk_goes_after_the_last_is_answered_and_the_yield_has_passed(
        bench: Bench) -> None:
    bench.feed(bench.runner.start(now=0.0))
    sent = bench.chunks()
    assert [(c.after, c.bound, c.rows) for c in sent] == [(None, 1000, 250)]
    afters = [sent[0].after]
    for _ in range(10):
        yields = bench.take(After)
        if not yields:
            break
        # One chunk answered: a yield of yield_ms, and no chunk until it has passed.
        assert yields == [After(0.01, NextChunk(), YIELD)] and bench.chunks() == []
        bench.feed(bench.runner.next_chunk())
        afters += [c.after for c in bench.chunks()]
    # The fourth chunk reaches the bound; the verification finds nothing eligible.
    assert afters == [None, 250, 500, 750]
    (view,) = bench.runner.views()
    assert (view.status, view.processed, view.total, view.checkpoint) == ("done", 1000, 1000,
                                                                           1000)
    assert bench.rows() == [(i, 2 * i) for i in range(1, 1001)]
    saves = [e.message for e in bench.take(Request) if isinstance(e.message, SaveTask)]
    assert dict(saves[-1].fields)["status"] == "done"
    progress = [e.message for e in bench.take(Tell) if isinstance(e.message, ProgressEvent)]
    assert progress[-1].terminal and progress[-1].processed == 1000


def test_pause_stops_between_chunks_and_resume_goes_on_from_the_checkpoint(
        bench: Bench) -> None:
    bench.feed(bench.runner.start(now=0.0), hold_chunks=True)
    bench.release()  # the first chunk commits, then the yield
    assert bench.take(After) == [After(0.01, NextChunk(), YIELD)]
    bench.feed(bench.runner.next_chunk(), hold_chunks=True)
    assert [c.after for c in bench.chunks()] == [None, 250] and len(bench.held) == 1
    bench.feed(bench.runner.control("double", "pause", "asker", now=1.0), hold_chunks=True)
    # Answered once the paused state is saved.
    assert [e.result.status for e in bench.take(Reply)] == ["paused"]
    # The Writer runs the chunk after the save, and refuses it: nothing more commits,
    # and nothing more goes.
    bench.release()
    assert bench.chunks() == [] and bench.take(After) == []
    (view,) = bench.runner.views()
    assert (view.status, view.processed, view.checkpoint, view.error) == ("paused", 250, 250,
                                                                          None)
    assert sum(x is not None for _, x in bench.rows()) == 250

    bench.feed(bench.runner.control("double", "resume", "asker", now=2.0), hold_chunks=True)
    assert [c.after for c in bench.chunks()] == [250]
    assert [e.result.status for e in bench.take(Reply)] == ["running"]


def test_a_chunk_the_writer_refuses_fails_the_task_and_answers_its_waiters(
        bench: Bench) -> None:
    bench.feed(bench.runner.start(now=0.0), hold_chunks=True)
    bench.feed(bench.runner.wait((), "waiter"))
    assert bench.take(Reply) == []  # not at rest yet
    chunk = bench.held.popleft()
    bench.feed(bench.runner.answered(chunk.context, None, RuntimeError("disk I/O error"), 0.5))
    (answer,) = bench.take(Reply)
    assert answer.waiter == "waiter"
    (view,) = answer.result
    assert isinstance(view, TaskView)
    assert (view.status, view.error) == ("failed", "disk I/O error")
    assert bench.take(After) == []  # nothing more goes


def test_control_names_a_declared_task_and_a_done_task_stays_done(bench: Bench) -> None:
    with pytest.raises(UnknownTask, match=r"unknown task 'triple' \(declared: double\)"):
        bench.runner.control("triple", "pause", "asker", now=0.0)
    bench.feed(bench.runner.start(now=0.0))
    while bench.take(After):
        bench.feed(bench.runner.next_chunk())
    assert bench.runner.views()[0].status == "done"
    with pytest.raises(TaskConflict, match="is done; declare a new version"):
        bench.runner.control("double", "resume", "asker", now=0.0)


def test_a_task_left_running_by_a_gone_process_resumes_from_its_checkpoint(
        tmp_path: Path) -> None:
    first = Bench(tmp_path)
    try:
        first.feed(first.runner.start(now=0.0), hold_chunks=True)
        first.release()  # one chunk committed; then the process is gone
    finally:
        first.close()
    # The same database, a new runner: it reads the task row and goes on.
    with next_process(first) as again:
        effects = again.start(now=0.0)
    chunks = [e.message for e in effects if isinstance(e, Request)
              and isinstance(e.message, RunChunk)]
    assert [(c.after, c.run_id) for c in chunks] == [(250, "run2")]


def test_a_done_task_stays_done_when_controlled_before_the_tasks_start(tmp_path: Path) -> None:
    first = Bench(tmp_path)
    try:
        first.feed(first.runner.start(now=0.0))
        while first.take(After):
            first.feed(first.runner.next_chunk())
        assert first.runner.views()[0].status == "done"
    finally:
        first.close()
    # An engine built with start_tasks=False: a person acts before the start.
    with next_process(first) as again:
        assert again.views()[0].status == "done"
        with pytest.raises(TaskConflict, match="is done"):
            again.control("double", "cancel", "asker", now=0.0)
        effects = again.start(now=0.0)
    assert [e for e in effects if isinstance(e, Request)] == []


def test_a_chunk_that_meets_a_lock_held_elsewhere_goes_again_after_a_backoff(
        quick: Bench) -> None:
    quick.feed(quick.runner.start(now=0.0), hold_chunks=True)
    quick.release()  # the first chunk commits
    quick.take(After)
    quick.feed(quick.runner.next_chunk(), hold_chunks=True)
    (first,) = quick.chunks()[1:]
    with another_program_writing(quick):
        quick.release()
        # Not failed: still running, saying why, and the same chunk goes after a backoff.
        assert quick.take(After) == [After(backoff_s(1), NextChunk(), YIELD)]
        (view,) = quick.runner.views()
        assert (view.status, view.waiting_for, view.error, view.checkpoint) == (
            "running", LOCKED, None, 250)
        progress = [e.message for e in quick.take(Tell) if isinstance(e.message, ProgressEvent)]
        assert progress[-1].waiting == LOCKED and progress[-1].state == "running"
        quick.feed(quick.runner.next_chunk(), hold_chunks=True)
        (again,) = quick.chunks()
        assert again == first
        quick.release()
        # Still held: the backoff doubles.
        assert quick.take(After) == [After(backoff_s(2), NextChunk(), YIELD)]
    quick.feed(quick.runner.next_chunk())
    run_to_rest(quick)
    (view,) = quick.runner.views()
    assert (view.status, view.waiting_for, view.processed) == ("done", None, 1000)
    assert quick.rows() == [(i, 2 * i) for i in range(1, 1001)]


def test_a_chunk_that_breaks_a_constraint_fails_the_task_without_a_retry(bench: Bench) -> None:
    bench.core.conn.execute("CREATE TRIGGER no_big BEFORE UPDATE ON nums WHEN new.x > 1000 "
                            "BEGIN SELECT RAISE(ABORT, 'x too big'); END")
    bench.feed(bench.runner.start(now=0.0))
    run_to_rest(bench)
    (view,) = bench.runner.views()
    assert view.status == "failed" and "x too big" in (view.error or "")
    assert view.waiting_for is None
    # Chunks up to the bad one committed; the failed one did not.
    assert [x for _, x in bench.rows()].count(None) == 500


def test_a_task_started_while_the_database_is_locked_saves_its_state_and_runs_once_free(
        quick: Bench) -> None:
    with another_program_writing(quick):
        quick.feed(quick.runner.start(now=0.0))
        quick.feed(quick.runner.wait((), "waiter"))
        # Its running state could not be saved, nor its chunk run: both go again.
        (view,) = quick.runner.views()
        assert (view.status, view.waiting_for, view.error) == ("running", LOCKED, None)
        assert len(quick.take(After)) == 1
        quick.feed(quick.runner.next_chunk())
        (retry,) = quick.take(After)
        assert retry.delay_s > backoff_s(1)
        assert quick.take(Reply) == []
    saves_before = len([e for e in quick.take(Request) if isinstance(e.message, SaveTask)])
    quick.feed(quick.runner.next_chunk())
    run_to_rest(quick)
    (answer,) = quick.take(Reply)
    assert [(v.status, v.waiting_for, v.processed) for v in answer.result] == [
        ("done", None, 1000)]
    assert saves_before >= 1
    saved = quick.reader.execute("SELECT status, run_id, rows_processed, error FROM _sw_tasks"
                                 ).fetchall()
    assert saved == [("done", "run1", 1000, None)]


def test_a_chunk_refused_because_the_task_state_is_not_saved_yet_goes_again_after_the_save(
        quick: Bench) -> None:
    with another_program_writing(quick):
        # The save of the running state meets the lock; the chunk is sent meanwhile.
        quick.feed(quick.runner.start(now=0.0), hold_chunks=True)
    # The lock is gone before the chunk runs: the Writer refuses it, as the task's row
    # does not say running yet. That is the unsaved state's doing, not the task's.
    quick.release()
    (view,) = quick.runner.views()
    assert (view.status, view.error, view.waiting_for) == ("running", None, LOCKED)
    # After the backoff the state is saved first, then the same chunk goes again.
    assert [a.delay_s for a in quick.take(After)] == [backoff_s(2)]
    effects = quick.runner.next_chunk()
    assert [type(e.message) for e in effects if isinstance(e, Request)] == [SaveTask, RunChunk]
    quick.feed(effects)
    run_to_rest(quick)
    (view,) = quick.runner.views()
    assert (view.status, view.processed, view.waiting_for) == ("done", 1000, None)


def test_a_progress_save_that_meets_a_lock_is_a_wait_not_a_failure() -> None:
    book = ProgressBook(1.0, wall=lambda: 1e9)
    event = ProgressEvent(scope="task", name="double", version=1, processed=10, total=100,
                          state="running", waiting=LOCKED, chunk_rows=10, chunk_s=0.1)
    (save,) = book.event(event, now=0.0)
    assert isinstance(save, Request) and isinstance(save.message, SaveProgress)
    locked = WriteError("writer.task_progress failed", message_kind="writer.task_progress",
                        waiting_for=LOCKED)
    assert book.answered(save.context, None, locked) == []  # nothing for the supervisor
    (view,) = book.views(now=0.5)
    assert (view.waiting, view.persist_failures, view.last_persist_error) == (LOCKED, 0, None)
    # A real failure is still counted and reported.
    (save,) = book.event(dataclasses.replace(event, processed=20), now=2.0)
    (report,) = book.answered(save.context, None, WriteError("no such row",
                                                             message_kind="x"))
    assert isinstance(report, Report)
    assert book.views(now=2.5)[0].persist_failures == 1
