"""A stop never waits out another program's lock, and what it prints is the database.

Each test runs the real command in a subprocess on real files. The lock is
held by another process (Python's own `sqlite3`; SQLite's locks never
conflict within one process), and the busy timeout is ten minutes: a stop
that waited it out even once would hang until the test's subprocess timeout
fails it. Nothing here measures time.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from sqlwarden.config import load_config
from sqlwarden.db.faults import LOCKED
from sqlwarden.db.lock import lock_path, read_holder
from sqlwarden.errors import WriteError
from sqlwarden.facade import Engine

from .conftest import (
    count_rows,
    read_only,
    run_sqlwarden,
    sqlwarden,
    sqlwarden_running,
    wait_until,
)
from .support.device import held_write_lock
from .support.mariadb import MirrorDb
from .test_cli import demo_config
from .test_lifecycle import mirror_config, mirror_rows, running, stop_when, told

#: Ten minutes: waiting it out is a hang, not a slow test.
BUSY_TIMEOUT_MS = 600_000
#: Far below the busy timeout, far above what a stop takes.
EXIT_TIMEOUT_S = 60

TASK_YAML = """\
database: {{path: {root}/nums.db, busy_timeout_ms: {busy}}}
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
    min_rows: 200
    max_rows: 200
    yield_ms: 20
message_log: {{path: {root}/messages.jsonl}}
"""


def task_config(root: Path, rows: int) -> Path:
    """A database of `rows` rows for the `double` task, which has not started."""
    path = root / "sw.yaml"
    path.write_text(TASK_YAML.format(root=root, busy=BUSY_TIMEOUT_MS))
    with Engine(load_config(path), start_tasks=False) as engine:
        engine.write_many("nums", [(i, None) for i in range(1, rows + 1)])
    return path


def unanswered(log: Path, kind: str) -> int:
    """Asks of `kind` in the message log not answered yet (one the Writer is stuck on)."""
    if not log.exists():
        return 0
    with log.open("rb") as lines:
        seen = Counter(json.loads(line)["kind"] for line in lines
                       if f'"{kind}"'.encode() in line)
    return seen["ask"] - seen["reply"] - seen["error"]


def task_row(db: Path) -> tuple[str, int, int]:
    """The task's status and rows processed, and the rows it changed, by the database."""
    conn = read_only(db)
    try:
        status, processed = conn.execute(
            "SELECT status, rows_processed FROM _sw_tasks WHERE name = 'double'").fetchone()
        changed = conn.execute("SELECT count(*) FROM nums WHERE x IS NOT NULL").fetchone()[0]
    finally:
        conn.close()
    return status, processed, changed


def processed_so_far(db: Path) -> int:
    conn = read_only(db)
    try:
        row = conn.execute("SELECT rows_processed FROM _sw_tasks WHERE name = 'double'"
                           ).fetchone()
    finally:
        conn.close()
    return 0 if row is None else int(row[0])


def printed_task(out: str) -> tuple[str, int]:
    found = re.search(r"^task double@1: (\w+), ([\d,]+) rows changed", out, re.M)
    assert found, out
    return found[1], int(found[2].replace(",", ""))


def sync_run(db: Path) -> tuple[str, int, str | None]:
    conn = read_only(db)
    try:
        status, rows, error = conn.execute(
            "SELECT status, rows_written, error FROM _sw_sync_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return status, rows, error


def committed_rows(db: Path) -> int:
    try:
        return count_rows(db, "observations")
    except apsw.Error:  # not created yet
        return 0


def printed_committed(out: str, source: str = "demo") -> int:
    found = re.search(rf"^{source}: stopped after ([\d,]+) rows committed", out, re.M)
    assert found, out
    return int(found[1].replace(",", ""))


# --- a task ---------------------------------------------------------------------------


def test_sigterm_while_another_program_holds_the_lock_during_a_task_exits_0_without_waiting(
        tmp_path: Path) -> None:
    config = task_config(tmp_path, 20_000)
    db, log = tmp_path / "nums.db", tmp_path / "messages.jsonl"
    with sqlwarden_running("run", str(config), "--once", "--no-progress") as proc:
        wait_until(running(proc, lambda: processed_so_far(db) >= 1_000), timeout_s=120,
                   what="the task to change 1,000 rows")
        with held_write_lock(db):
            # A chunk is at the Writer and cannot commit: it waits in the busy handler.
            out, err = stop_when(proc, lambda: unanswered(log, "writer.chunk") > 0,
                                 "a chunk to meet the lock")
            status, processed, changed = task_row(db)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # The summary is the database: the chunk that met the lock committed nothing.
    assert printed_task(out) == (status, processed) == ("running", changed)
    assert 0 < processed < 20_000
    assert "the next start goes on from its checkpoint" in out
    # The next start goes on from the checkpoint and finishes by itself.
    again = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert again.returncode == 0, again.stderr
    status, _, changed = task_row(db)
    assert (status, changed) == ("done", 20_000)
    conn = read_only(db)
    try:
        assert conn.execute("SELECT count(*) FROM nums WHERE x = id * 2").fetchone()[0] == 20_000
    finally:
        conn.close()


def test_the_task_line_after_a_sigterm_mid_task_is_what_the_database_holds(
        tmp_path: Path) -> None:
    config = task_config(tmp_path, 40_000)
    db = tmp_path / "nums.db"
    proc = sqlwarden("run", str(config), "--once", "--no-progress")
    out, err = stop_when(proc, lambda: processed_so_far(db) >= 2_000,
                         "the task to change 2,000 rows")
    assert proc.returncode == 0, err
    status, processed, changed = task_row(db)
    assert printed_task(out) == (status, processed) == ("running", changed)
    assert changed < 40_000  # it did stop mid-task


def in_thread(fn: Callable[[], object], what: str) -> object:
    """`fn()` on a thread of its own; fails, rather than hangs, if it never ends."""
    result: list[object] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(EXIT_TIMEOUT_S)
    assert not thread.is_alive(), f"{what} did not end: the process is frozen"
    if errors:
        raise errors[0]
    return result[0]


def test_a_write_waiting_for_another_programs_lock_freezes_no_other_thread_and_ends_at_stop(
        tmp_path: Path) -> None:
    config = task_config(tmp_path, 100)
    db = tmp_path / "nums.db"
    engine = Engine(load_config(config), start_tasks=False).start()
    try:
        with held_write_lock(db):
            pending = engine.write_many("nums", [(101, None)], wait=False)
            # The Writer has taken it and waits in the busy handler.
            wait_until(lambda: engine.queue_depth("writer") == 0 and not pending.done(),
                       what="the Writer to wait for the lock")

            def read() -> int:
                with engine.read() as conn:
                    return int(conn.execute("SELECT count(*) FROM nums").fetchone()[0])

            # Other threads go on meanwhile: the wait does not hold the GIL.
            assert in_thread(read, "a read beside the waiting write") == 100
            assert not pending.done()
            # A stop ends the wait at once; the write is refused as a wait.
            in_thread(engine.stop, "the stop")
            with pytest.raises(WriteError) as refused:
                pending.get(timeout=0)
            assert refused.value.waiting_for == LOCKED
    finally:
        engine.stop()
    assert count_rows(db, "nums") == 100


# --- sync now -------------------------------------------------------------------------


#: Enough that a run is still under way when the test steps in (some 80,000 rows/s here).
OBSERVATIONS = 400_000


def locked_demo(tmp_path: Path) -> Path:
    """The demo config with the ten-minute busy timeout."""
    path = demo_config(tmp_path, registry=5_000, observations=OBSERVATIONS)
    text = path.read_text()
    assert "busy_timeout_ms: 5000" in text
    path.write_text(text.replace("busy_timeout_ms: 5000", f"busy_timeout_ms: {BUSY_TIMEOUT_MS}"))
    return path


def test_sync_now_stopped_by_sigterm_exits_0_and_says_what_it_committed(tmp_path: Path) -> None:
    path = locked_demo(tmp_path)
    db = tmp_path / "demo.db"
    proc = sqlwarden("sync", "now", str(path), "demo", "--no-progress")
    out, err = stop_when(proc, lambda: committed_rows(db) >= 10_000,
                         "10,000 committed observations")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    status, rows, _ = sync_run(db)
    assert status == "stopped"
    assert printed_committed(out) == rows == count_rows(db, "registry") + count_rows(
        db, "observations")
    assert count_rows(db, "observations") < OBSERVATIONS
    assert "the next run goes on from there" in out


def test_sync_now_stopped_while_another_program_holds_the_lock_exits_0_and_says_so(
        tmp_path: Path) -> None:
    path = locked_demo(tmp_path)
    db, log = tmp_path / "demo.db", tmp_path / "messages.jsonl"
    with sqlwarden_running("sync", "now", str(path), "demo", "--no-progress") as proc:
        wait_until(running(proc, lambda: committed_rows(db) >= 5_000), timeout_s=120,
                   what="5,000 committed observations")
        with held_write_lock(db):
            out, err = stop_when(proc, lambda: unanswered(log, "writer.sync_batch") > 0,
                                 "a batch to meet the lock")
            committed = count_rows(db, "registry") + count_rows(db, "observations")
            status, rows, _ = sync_run(db)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # Its end could not be written; it says so, and what it committed is the database's.
    assert (status, rows) == ("running", committed)
    assert printed_committed(out) == committed
    assert "could not be recorded while the database was locked" in out
    # The next run ends it as it ends a crashed one, and goes on from the committed rows.
    again = run_sqlwarden("sync", "now", str(path), "demo", "--no-progress")
    assert again.returncode == 0, again.stderr
    conn = read_only(db)
    try:
        runs = conn.execute("SELECT status, error FROM _sw_sync_runs ORDER BY id").fetchall()
    finally:
        conn.close()
    assert runs == [("failed", "process ended"), ("ok", None)]
    assert count_rows(db, "observations") == OBSERVATIONS
    assert count_rows(db, "registry") == 5_000


# --- the mirror's drain ---------------------------------------------------------------


def outbox(db: Path) -> int:
    return count_rows(db, "_sw_outbox")


def filled_outbox(tmp_path: Path, mirror_db: MirrorDb, rows: int) -> Path:
    """A mirrored database whose outbox holds `rows` changes another program made (the
    mirror has none of them yet); the busy timeout is ten minutes."""
    config = mirror_config(tmp_path, mirror_db, rows=0, range_rows=10_000)
    text = config.read_text()
    assert "dev.db}" in text
    config.write_text(text.replace("dev.db}", f"dev.db, busy_timeout_ms: {BUSY_TIMEOUT_MS}}}"))
    first = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert first.returncode == 0, first.stderr
    # Another program writes the mirrored table: its triggers fill the outbox.
    other = sqlite3.connect(tmp_path / "data" / "dev.db")
    with other:
        other.executemany("INSERT INTO notes (id, text) VALUES (?, ?)",
                          ((i, f"note {i}") for i in range(rows)))
    other.close()
    assert outbox(tmp_path / "data" / "dev.db") == rows
    return config


class Lines:
    """The command's stdout, line by line as it comes (the command runs unbuffered)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout or ()),
                                        daemon=True)
        self._reader.start()

    def said(self, start: str) -> bool:
        return any(line.startswith(start) for line in self.lines)

    def text(self) -> str:
        self._reader.join(timeout=EXIT_TIMEOUT_S)
        return "".join(self.lines)


def stop_mid_drain(proc: subprocess.Popen[str], lines: Lines) -> tuple[str, str]:
    """SIGTERM, then the output; a stop that hangs fails here."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return lines.text(), proc.stderr.read()


def printed_outbox(out: str) -> tuple[int, int]:
    """The outbox of the `mirror: stopped with` line and of the summary."""
    stopped = re.search(r"^mirror: stopped with ([\d,]+) changes in the outbox", out, re.M)
    summary = re.search(r"^\s+mirror outbox\s+([\d,]+) changes to send$", out, re.M)
    assert stopped and summary, out
    return int(stopped[1].replace(",", "")), int(summary[1].replace(",", ""))


def test_the_outbox_printed_after_a_sigterm_mid_drain_is_what_the_database_holds(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    rows = 100_000
    config = filled_outbox(tmp_path, mirror_db, rows)
    db = tmp_path / "data" / "dev.db"
    proc = sqlwarden("run", str(config), "--once", "--no-progress",
                     env={"PYTHONUNBUFFERED": "1"})
    lines = Lines(proc)
    # The command said the reconcile ended, and the drain has begun.
    wait_until(running(proc, lambda: lines.said("mirror: reconciled in")
                       and 0 < outbox(db) < rows),
               timeout_s=120, what="the drain to be under way after the boot reconcile")
    out, err = stop_mid_drain(proc, lines)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    left = outbox(db)
    assert 0 < left < rows  # it did stop mid-drain
    assert printed_outbox(out) == (left, left)
    assert f"mirror: stopped with {left:,} changes" in out


def test_sigterm_mid_drain_while_another_program_holds_the_lock_exits_0_without_waiting(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    rows = 100_000
    config = filled_outbox(tmp_path, mirror_db, rows)
    db, log = tmp_path / "data" / "dev.db", tmp_path / "data" / "messages.jsonl"
    proc = sqlwarden("run", str(config), "--no-progress", env={"PYTHONUNBUFFERED": "1"})
    lines = Lines(proc)
    try:
        wait_until(running(proc, lambda: lines.said("mirror: reconciled in")
                           and outbox(db) < rows),
                   timeout_s=120, what="the drain to be under way after the boot reconcile")
        with held_write_lock(db):
            # A drained batch waits at the Writer to leave the outbox.
            wait_until(running(proc, lambda: unanswered(log, "writer.outbox_drained") > 0),
                       what="a drained batch to meet the lock")
            out, err = stop_mid_drain(proc, lines)
            left = outbox(db)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert printed_outbox(out) == (left, left)
    # What was sent and not yet taken out of the outbox is sent again: the next start
    # catches up.
    again = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "mirror: caught up (outbox empty)" in again.stdout
    assert outbox(db) == 0
    assert mirror_rows(mirror_db) == rows


# --- starting, and the other commands that start an engine ------------------------------


def test_sigterm_while_the_start_waits_for_another_programs_lock_exits_0_changing_nothing(
        tmp_path: Path) -> None:
    config = task_config(tmp_path, 100)
    db = tmp_path / "nums.db"

    def starting() -> bool:
        holder = read_holder(lock_path(db)) or {}
        return holder.get("pid") == proc.pid

    with held_write_lock(db):
        proc = sqlwarden("run", str(config), "--once", "--no-progress")
        # The engine lock is the start's first step; opening the database follows.
        out, err = stop_when(proc, starting, "the start to take the engine lock")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stop requested before the engine had started; nothing changed" in out
    assert processed_so_far(db) == 0


def test_mirror_reconcile_stopped_by_sigterm_exits_0_at_a_range(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    rows = 100_000
    config = mirror_config(tmp_path, mirror_db, rows=rows, range_rows=50)
    log = tmp_path / "data" / "messages.jsonl"
    proc = sqlwarden("mirror", "reconcile", str(config))
    out, err = stop_when(proc, lambda: told(log, "mirror.reconcile_begun") > 0,
                         "the reconcile to begin")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "mirror: stopped before the reconcile ended" in out
    copied = mirror_rows(mirror_db)
    assert copied % 50 == 0 and copied < rows  # whole ranges

