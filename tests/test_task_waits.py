"""A task outlives another program holding the database's write lock.

The other program is another process (Python's own `sqlite3`): SQLite's
locks are POSIX locks, which never conflict within one process, so only a
process of its own can keep the engine's Writer out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.faults import LOCKED, backoff_s
from sqlwarden.errors import WriteError
from sqlwarden.facade import Engine
from sqlwarden.scheduler import ManualScheduler
from sqlwarden.views import TaskView

from .conftest import read_only, table_digest, wait_until
from .support import device
from .support.device import held_write_lock

BUSY_TIMEOUT_MS = 300

WAITS_YAML = """\
database: {{path: {db}, busy_timeout_ms: {busy_timeout_ms}}}
tables:
  nums:
    columns:
      id: {{type: integer, primary_key: true}}
      x: integer
      note: text
tasks:
  double:
    table: nums
    set: {{x: "id * 2", note: "'n' || id"}}
    where: "x IS NULL"
    min_rows: 200
    max_rows: 200
    yield_ms: 20
message_log: {{path: {log}}}
"""

def waits_config(folder: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    text = WAITS_YAML.format(db=folder / "nums.db", log=folder / "messages.jsonl",
                             busy_timeout_ms=BUSY_TIMEOUT_MS)
    return parse_config(text, file="waits.yaml", base_dir=folder)


ROWS = 3000


def populated(folder: Path) -> Config:
    """A database with ROWS rows for the task to change, the task not started."""
    config = waits_config(folder)
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("nums", [(i, None, None) for i in range(1, ROWS + 1)])
    return config


class Watcher(device.Watcher):
    """Polls the task's status and the engine's health on a thread, keeping what it saw."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.statuses: set[str] = set()
        self.waiting_for: set[str | None] = set()
        self.health: list[str] = []

    def look(self) -> None:
        (view,) = self.engine.tasks.list()
        self.statuses.add(view.status)
        self.waiting_for.add(view.waiting_for)
        if view.waiting_for is not None:
            self.health.extend(self.engine.health()[1])


def test_a_task_waits_out_a_lock_held_by_another_process_and_finishes_by_itself(
        tmp_path: Path) -> None:
    control = populated(tmp_path / "control")
    with Engine(control) as engine:
        (view,) = engine.tasks.wait(timeout=120)
    assert view.status == "done"

    config = populated(tmp_path / "held")
    # The clock moves only when the test says: each yield and backoff ends on `advance`.
    time = ManualScheduler()

    def task() -> TaskView:
        (view,) = engine.tasks.list()
        return view

    def writer_waits() -> int:
        return engine.writer_state().waits

    with Engine(config, scheduler=time) as engine, Watcher(engine) as watcher:
        # The first chunk has run; the next waits for the yield to pass.
        wait_until(lambda: task().processed > 0, what="the first chunk")
        with held_write_lock(config.database.path):
            time.advance(1.0)
            wait_until(lambda: task().waiting_for == LOCKED,
                       what="the task to say it waits for the lock")
            assert f"task double@1 waits: {LOCKED}" in engine.health()[1]
            assert [p.waiting for p in engine.tasks.progress() if p.name == "double"] == [
                LOCKED]
            # The same chunk goes again after the backoff, and meets the lock again:
            # held for at least twice the busy timeout.
            met = writer_waits()
            time.advance(backoff_s(1))
            wait_until(lambda: writer_waits() > met, what="the chunk to meet the lock again")
            assert (task().status, task().waiting_for) == ("running", LOCKED)
            # A foreground write is refused after the busy timeout, saying why; the
            # caller decides whether to retry.
            with pytest.raises(WriteError, match="database locked by another process") as info:
                engine.write("INSERT INTO nums (id) VALUES (?)", (ROWS + 1,))
            assert info.value.waiting_for == LOCKED and info.value.retryable
            assert engine.writer_state().waiting_for == LOCKED
            watcher.look()

        def settled() -> bool:
            time.advance(60.0)  # whatever backoff or yield is armed, it passes
            return task().status in ("done", "failed", "cancelled")

        wait_until(settled, what="the task to finish by itself")
        view = task()
        writer = engine.writer_state()
    assert (view.status, view.error, view.waiting_for, view.processed) == (
        "done", None, None, ROWS)
    assert "failed" not in watcher.statuses
    assert LOCKED in watcher.waiting_for
    assert f"task double@1 waits: {LOCKED}" in watcher.health
    assert writer.waiting_for is None
    # The same table as the control that met no lock.
    assert table_digest(config.database.path, "nums") == table_digest(control.database.path,
                                                                       "nums")
    conn = read_only(config.database.path)
    try:
        assert conn.execute("SELECT status, error, rows_processed FROM _sw_tasks").fetchall() == [
            ("done", None, ROWS)]
    finally:
        conn.close()


def test_writes_queued_behind_a_lock_held_elsewhere_are_refused_saying_why_and_commit_nothing(
        tmp_path: Path) -> None:
    config = populated(tmp_path / "held")
    with Engine(config, start_tasks=False) as engine:
        with held_write_lock(config.database.path):
            futures = [engine.write_many("nums", [(ROWS + i, None, "late")], wait=False)
                       for i in range(1, 21)]
            errors = []
            for future in futures:
                with pytest.raises(WriteError) as info:
                    future.get(timeout=60)
                errors.append(info.value.waiting_for)
        assert errors == [LOCKED] * 20
        # Once the lock is gone the same writes go through.
        engine.write_many("nums", [(ROWS + i, None, "late") for i in range(1, 21)])
        assert engine.writer_state().waiting_for is None
    conn = read_only(config.database.path)
    try:
        assert conn.execute("SELECT count(*) FROM nums WHERE note = 'late'").fetchone() == (20,)
    finally:
        conn.close()
