"""A full disk under the database: writes refused saying so, nothing half-done, and
everything goes on by itself once there is room again.

The database lives on a small tmpfs the test mounts (as root; CI runs as root),
the message log outside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlwarden.config import Config, parse_config
from sqlwarden.db.connect import open_writer
from sqlwarden.db.faults import DISK_FULL
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.errors import WriteError
from sqlwarden.facade import Engine
from sqlwarden.futures import Future
from sqlwarden.protocol import InsertRows

from .conftest import read_only, wait_until
from .support.device import fill

FULL_YAML = """\
database:
  path: {db}
  busy_timeout_ms: 300
  checkpoint_idle_ms: 100
tables:
  docs:
    columns:
      id: {{type: integer, primary_key: true}}
      body: {{type: text, not_null: true}}
      size: integer
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      body: {{type: text, not_null: true}}
tasks:
  measure:
    table: docs
    set: {{size: "length(body)", body: "body || ' measured'"}}
    where: "size IS NULL"
    min_rows: 100
    max_rows: 100
    yield_ms: 0
message_log: {{path: {log}}}
"""

DOCS = 2000
BATCH = 50
TEXT = "x" * 300


def full_config(disk: Path, outside: Path) -> Config:
    text = FULL_YAML.format(db=disk / "full.db", log=outside / "messages.jsonl")
    return parse_config(text, file="full.yaml", base_dir=outside)


def check(config: Config) -> tuple[str, int, int]:
    """(integrity_check, items rows, docs rows measured), read by another connection."""
    conn = read_only(config.database.path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").get
        items = conn.execute("SELECT count(*) FROM items").get
        measured = conn.execute("SELECT count(*) FROM docs WHERE size IS NOT NULL "
                                "AND body LIKE '% measured'").get
        return integrity, items, measured
    finally:
        conn.close()


def test_a_full_disk_refuses_writes_whole_and_everything_resumes_once_space_is_freed(
        small_disk: Path, tmp_path: Path) -> None:
    config = full_config(small_disk, tmp_path)
    filler = small_disk / "filler"
    acknowledged = 0
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("docs", [(i, TEXT, None) for i in range(1, DOCS + 1)])
        engine.checkpoint("truncate")
        fill(filler, leave_bytes=256 * 1024)

        # Ingest until the disk is full: a refused batch says so, and is a wait.
        refused: WriteError | None = None
        next_id = 1
        for _ in range(1000):
            try:
                engine.write_many("items", [(next_id + i, TEXT) for i in range(BATCH)])
            except WriteError as exc:
                refused = exc
                break
            acknowledged += BATCH
            next_id += BATCH
        assert refused is not None, "the disk never filled"
        assert refused.waiting_for == DISK_FULL and refused.retryable
        assert "disk full" in str(refused)
        assert engine.writer_state().waiting_for == DISK_FULL

        # Writes queued together meet the full disk together: each one is either
        # committed whole or refused whole.
        futures: list[Future[Any]] = []
        for _ in range(10):
            futures.append(engine.write_many(
                "items", [(next_id + i, TEXT) for i in range(BATCH)], wait=False))
            next_id += BATCH
        for future in futures:
            try:
                future.get(timeout=60)
            except WriteError as exc:
                assert exc.waiting_for == DISK_FULL
            else:
                acknowledged += BATCH

        # A task started now waits for room instead of failing.
        engine.tasks.start()
        wait_until(lambda: engine.tasks.list()[0].waiting_for == DISK_FULL,
                   what="the task to say it waits for room")
        assert f"task measure@1 waits: {DISK_FULL}" in engine.health()[1]
        (view,) = engine.tasks.list()
        assert (view.status, view.error) == ("running", None)

        # Nothing is corrupted, and what was acknowledged is exactly what is there.
        integrity, items, _ = check(config)
        assert (integrity, items) == ("ok", acknowledged)
        assert engine.state == "running"

        # Room again: the task finishes by itself, and writes go through.
        filler.unlink()
        (view,) = engine.tasks.wait(timeout=120)
        assert (view.status, view.error, view.waiting_for, view.processed) == (
            "done", None, None, DOCS)
        engine.write_many("items", [(next_id + i, TEXT) for i in range(BATCH)])
        acknowledged += BATCH
        result = engine.checkpoint("truncate")
        assert result.waiting_for is None and not result.busy
        assert engine.writer_state().waiting_for is None
        # Waits are not failures: nothing reached the supervisor, the engine runs on.
        status = engine.status()
        assert (status["state"], status["failures"]["recent"]) == ("running", [])
    assert check(config) == ("ok", acknowledged, DOCS)
    # The message log lived outside the full disk and kept every message.
    assert (tmp_path / "messages.jsonl").stat().st_size > 0


def test_a_checkpoint_that_meets_a_full_disk_answers_and_is_tried_again_at_the_next_pause(
        small_disk: Path, tmp_path: Path) -> None:
    config = full_config(small_disk, tmp_path)
    conn = open_writer(config.database)
    apply_schema(conn, config)
    now = [0.0]
    core = WriterCore(conn, config, clock=lambda: now[0])
    try:
        fill(small_disk / "filler", leave_bytes=256 * 1024)
        outcomes: list[Any] = []
        for start in range(0, 100_000, BATCH):
            (outcome,) = core.commit_group([InsertRows(
                table="items", columns=("id", "body"),
                rows=tuple((start + i, TEXT) for i in range(BATCH)))])
            outcomes.append(outcome)
            if isinstance(outcome, WriteError):
                break
        assert isinstance(outcomes[-1], WriteError)
        assert outcomes[-1].waiting_for == DISK_FULL
        # Every committed frame is in the WAL; the database file cannot grow to take them.
        now[0] += 60
        result = core.checkpoint("passive")
        assert result.waiting_for == DISK_FULL
        assert core.idle_check() is True  # still waiting: the idle timer comes back
        assert (core.state().waiting_for, core.wal_frames > 0) == (DISK_FULL, True)

        (small_disk / "filler").unlink()
        assert core.idle_check() is False
        assert (core.state().waiting_for, core.wal_frames) == (None, 0)
        assert conn.execute("SELECT count(*) FROM items").get == BATCH * (len(outcomes) - 1)
        assert conn.execute("PRAGMA integrity_check").get == "ok"
    finally:
        conn.close()
