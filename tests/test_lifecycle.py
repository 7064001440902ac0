"""`sqlwarden run` stopped by a signal at any moment: it exits 0, and its summary is the database.

Each test runs the real command in a subprocess on real files (and the real
MariaDB for the mirror), waits until the message log or the database shows
the moment it wants, then sends SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from sqlwarden.config import load_config
from sqlwarden.facade import Engine
from sqlwarden.fts.deferral import read_deferral
from sqlwarden.replay.read import Record, log_files, read_records

from .conftest import count_rows, read_only, run_sqlwarden, sqlwarden, wait_until
from .support.mariadb import MirrorDb
from .test_cli import demo_config

LOCAL_CONFIG = """\
database: {{path: {root}/data/dev.db}}
tables:
  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      text: text
message_log: {{path: {root}/data/{log}}}
"""
MIRROR_SECTION = """\
mirror:
  dsn: {dsn}
  scope: dev-life
  range_rows: {range_rows}
"""


def mirror_config(tmp_path: Path, mirror_db: MirrorDb, *, rows: int, range_rows: int) -> Path:
    """A config mirroring one table, its database filled with `rows` rows by an engine
    without the mirror (so the mirror starts empty and the first reconcile copies all)."""
    config = tmp_path / "sw.yaml"
    config.write_text(LOCAL_CONFIG.format(root=tmp_path, log="messages.jsonl")
                      + MIRROR_SECTION.format(dsn=mirror_db.dsn, range_rows=range_rows))
    # The fill's own log is kept apart: it is not part of what the tests count.
    local = tmp_path / "local.yaml"
    local.write_text(LOCAL_CONFIG.format(root=tmp_path, log="fill.jsonl"))
    with Engine(load_config(local)) as engine:
        for start in range(0, rows, 20_000):
            engine.write_many("notes", [(i, f"note {i}")
                                        for i in range(start, min(rows, start + 20_000))])
    return config


def records(log: Path) -> list[Record]:
    if not log.exists():
        return []
    return [r for r in read_records(log_files([log])) if isinstance(r, dict)]


def told(log: Path, kind: str) -> int:
    """How many times `kind` was sent, by the message log."""
    return sum(1 for r in records(log) if r["message"] == kind and r["kind"] in ("tell", "ask"))


def summary(out: str) -> dict[str, int]:
    """The row counts of the printed summary: `rows written` and one per table."""
    found: dict[str, int] = {}
    lines = out[out.index("\nsummary\n"):].splitlines()
    for line in lines:
        written = re.match(r"\s+rows written\s+([\d,]+) in", line)
        if written:
            found["rows written"] = int(written[1].replace(",", ""))
        table = re.match(r"\s+(\w+)\s+([\d,]+) rows$", line)
        if table:
            found[table[1]] = int(table[2].replace(",", ""))
    return found


def running(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> Callable[[], bool]:
    """`ready` that fails at once, with the command's last words, if the command ended."""

    def ready_while_running() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended first: {out[-2000:]} {err[-2000:]}")
        return ready()

    return ready_while_running


def stop_when(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str,
              sig: signal.Signals = signal.SIGTERM) -> tuple[str, str]:
    """Wait until `ready()` while `proc` runs, send `sig`, and return its output; a stop
    that hangs fails here."""
    try:
        wait_until(running(proc, ready), timeout_s=120, what=what)
        proc.send_signal(sig)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def mirror_rows(mirror_db: MirrorDb) -> int:
    rows = mirror_db.server.query("SELECT COUNT(*) FROM notes WHERE sw_scope = 'dev-life'",
                                  database=mirror_db.database)
    return int(rows[0][0])


def test_run_once_with_a_mirror_reconciles_exactly_once(tmp_path: Path,
                                                        mirror_db: MirrorDb) -> None:
    config = mirror_config(tmp_path, mirror_db, rows=3_000, range_rows=200)
    done = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "mirror: reconciled in" in done.stdout and "copied 3,000" in done.stdout
    assert "mirror: caught up (outbox empty)" in done.stdout
    log = tmp_path / "data" / "messages.jsonl"
    assert told(log, "mirror.reconcile_begun") == 1
    assert told(log, "mirror.reconciled") == 1
    assert mirror_rows(mirror_db) == 3_000


def test_sigterm_during_the_boot_reconcile_stops_at_a_range_and_exits_0(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    rows = 100_000
    config = mirror_config(tmp_path, mirror_db, rows=rows, range_rows=50)
    log = tmp_path / "data" / "messages.jsonl"
    proc = sqlwarden("run", str(config), "--once", "--no-progress")
    out, err = stop_when(proc, lambda: told(log, "mirror.reconcile_begun") > 0,
                         "the boot reconcile to begin")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "mirror: stopped before the reconcile ended" in out
    assert summary(out) == {"rows written": 0, "notes": count_rows(tmp_path / "data" / "dev.db",
                                                                  "notes")}
    assert summary(out)["notes"] == rows
    # It stopped between ranges: the reconcile never ended, and what it copied is whole
    # ranges (the next start finishes the job).
    assert told(log, "mirror.reconciled") == 0
    copied = mirror_rows(mirror_db)
    assert copied < rows and copied % 50 == 0
    again = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "mirror: caught up (outbox empty)" in again.stdout
    assert mirror_rows(mirror_db) == rows


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_sync_batch_exits_0_with_the_committed_rows_in_the_summary(
        tmp_path: Path, sig: signal.Signals) -> None:
    path = demo_config(tmp_path, registry=5_000, observations=150_000)
    db = tmp_path / "demo.db"

    def committed() -> int:
        try:
            return count_rows(db, "observations")
        except apsw.Error:  # not created yet
            return 0

    proc = sqlwarden("run", str(path), "--once", "--no-progress")
    out, err = stop_when(proc, lambda: committed() >= 20_000, "20,000 committed observations",
                         sig)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "demo: stopped after" in out and "the next run goes on from there" in out
    counts = {table: count_rows(db, table) for table in ("registry", "observations", "orgs")}
    assert counts["observations"] < 150_000  # it did stop mid-ingest
    assert summary(out) == {"rows written": counts["registry"] + counts["observations"],
                            **counts}
    conn = read_only(db)
    try:
        (status, written), = conn.execute("SELECT status, rows_written FROM _sw_sync_runs")
    finally:
        conn.close()
    assert (status, written) == ("stopped", counts["registry"] + counts["observations"])


def test_sigterm_during_an_fts_restore_waits_for_it_and_exits_0(tmp_path: Path) -> None:
    # Enough rows that the restore takes a while (about 2 us a row here).
    path = demo_config(tmp_path, registry=250_000, observations=1_000)
    db = tmp_path / "demo.db"
    log = tmp_path / "messages.jsonl"

    def restoring() -> bool:
        # The restore's transaction was asked of the Writer and has not been answered.
        if not log.exists():
            return False
        with log.open("rb") as lines:
            sent = Counter(json.loads(line)["kind"] for line in lines
                           if b'"writer.fts_restore"' in line)
        return sent["ask"] > sent["reply"] + sent["error"]

    proc = sqlwarden("run", str(path), "--once", "--no-progress")
    out, err = stop_when(proc, restoring, "the FTS restore to start")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    conn = read_only(db)
    try:
        # The restore committed whole: the triggers are back, nothing is deferred, and
        # search finds every registry row.
        assert read_deferral(conn) is None
        triggers = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'registry'")}
        assert triggers
        assert conn.execute("SELECT count(*) FROM registry_fts WHERE registry_fts MATCH 'site'"
                            ).fetchone()[0] == count_rows(db, "registry")
    finally:
        conn.close()
    assert summary(out)["registry"] == count_rows(db, "registry")
