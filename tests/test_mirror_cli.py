"""`sqlwarden mirror reconcile|verify` and `run --once` with a mirror, against real MariaDB."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

from sqlwarden.config import load_config
from sqlwarden.db.status import running_engine
from sqlwarden.facade import Engine

from .conftest import files_under, run_sqlwarden, sqlwarden, sqlwarden_running, wait_until
from .support.hostile import assert_no_secret, assert_refused
from .support.mariadb import MirrorDb

CONFIG = """\
database: {{path: {root}/data/dev.db}}
tables:
  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      text: text
      at: timestamp
mirror:
  dsn: {dsn}
  scope: dev-cli
  range_rows: 50
status: {{enabled: {status}, port: 0}}
"""


def setup(tmp_path: Path, mirror_db: MirrorDb, *, status: bool = False,
          dsn: str | None = None) -> Path:
    config = tmp_path / f"sw-{status}.yaml"
    config.write_text(CONFIG.format(root=tmp_path, dsn=dsn or mirror_db.dsn,
                                    status=str(status).lower()))
    return config


def mirror_count(mirror_db: MirrorDb) -> int:
    rows = mirror_db.server.query("SELECT COUNT(*) FROM notes WHERE sw_scope = 'dev-cli'",
                                  database=mirror_db.database)
    return int(rows[0][0])


def fill(config: Path, rows: int) -> None:
    """Create the database with `rows` rows (an engine that also mirrors them)."""
    with Engine(load_config(config)) as engine:
        engine.write_many("notes", [(i, f"note {i}", f"2026-01-01T00:00:{i % 60:02d}.5Z")
                                    for i in range(rows)])


def test_verify_reports_drift_and_reconcile_repairs_it(tmp_path: Path,
                                                       mirror_db: MirrorDb) -> None:
    config = setup(tmp_path, mirror_db)
    fill(config, 300)
    once = run_sqlwarden("run", str(config), "--once", "--no-progress")
    assert once.returncode == 0, once.stderr
    assert "mirror: caught up (outbox empty)" in once.stdout
    assert mirror_count(mirror_db) == 300

    clean = run_sqlwarden("mirror", "verify", str(config))
    assert clean.returncode == 0, clean.stderr
    assert "notes: 300 rows in SQLite, 300 in the mirror; in sync" in clean.stdout

    mirror_db.server.query("UPDATE notes SET text = 'edited behind our back' WHERE id = 120",
                           database=mirror_db.database)
    mirror_db.server.query("INSERT INTO notes (sw_scope, id, text) VALUES ('dev-cli', 9999, "
                           "'orphan')", database=mirror_db.database)
    drift = run_sqlwarden("mirror", "verify", str(config))
    assert drift.returncode == 1, drift.stderr
    assert "2 of 6 key ranges differ" in drift.stdout
    assert "keys from after 99 up to 149" in drift.stdout
    assert mirror_count(mirror_db) == 301  # verify changed nothing

    fixed = run_sqlwarden("mirror", "reconcile", str(config))
    assert fixed.returncode == 0, fixed.stderr
    assert "copied 1, deleted 1" in fixed.stdout
    assert mirror_count(mirror_db) == 300
    again = run_sqlwarden("mirror", "verify", str(config))
    assert again.returncode == 0 and "in sync" in again.stdout


def test_reconcile_asks_the_running_engine(tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = setup(tmp_path, mirror_db, status=True)
    fill(config, 40)
    server = sqlwarden("run", str(config), "--no-progress")
    try:
        loaded = load_config(config)
        wait_until(lambda: running_engine(loaded) is not None, what="the engine to serve")
        done = run_sqlwarden("mirror", "reconcile", str(config))
        assert done.returncode == 0, done.stderr
        assert "asked the running engine" in done.stdout
        assert "notes: 40 rows in SQLite, 40 in the mirror; in sync" in done.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0


def test_bad_mirror_input_is_one_line_and_changes_nothing(tmp_path: Path,
                                                          mirror_db: MirrorDb) -> None:
    config = setup(tmp_path, mirror_db)
    fill(config, 5)
    before = data_files(tmp_path)
    closed = setup(tmp_path, mirror_db, status=True,
                   dsn=mirror_db.dsn.replace(f":{mirror_db.server.port}/", ":1/"))
    unreachable = run_sqlwarden("mirror", "verify", str(closed))
    assert unreachable.returncode == 3
    assert unreachable.stderr.strip().splitlines() == [unreachable.stderr.strip()]
    assert "127.0.0.1:1" in unreachable.stderr and "2003" in unreachable.stderr

    wrong = setup(tmp_path, mirror_db, dsn=mirror_db.dsn.replace("${SW_MYSQL_PASSWORD}",
                                                                 "not-the-password"))
    denied = run_sqlwarden("mirror", "verify", str(wrong))
    assert_login_refused(denied)

    plain = tmp_path / "plain.yaml"
    plain.write_text(f"database: {{path: {tmp_path}/data/dev.db}}\n")
    none = run_sqlwarden("mirror", "reconcile", str(plain))
    assert none.returncode == 2 and "no enabled `mirror:` section" in none.stderr
    assert data_files(tmp_path) == before

    # A login problem is 2 for every mirror command, also for a reconcile that starts
    # the engine (whose local database it may then touch; the mirror it cannot).
    refused = run_sqlwarden("mirror", "reconcile", str(wrong), "--timeout", "120")
    assert_login_refused(refused)


def test_a_refused_login_is_exit_2_for_mirror_retry_and_for_asking_a_running_engine(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = setup(tmp_path, mirror_db)
    fill(config, 5)
    wrong_dsn = mirror_db.dsn.replace("${SW_MYSQL_PASSWORD}", "not-the-password")
    wrong = setup(tmp_path, mirror_db, dsn=wrong_dsn)
    before = data_files(tmp_path)

    # No engine running: `mirror retry` tries the login first and queues nothing.
    retry = run_sqlwarden("mirror", "retry", str(wrong))
    assert_login_refused(retry)
    assert data_files(tmp_path) == before

    # A running engine whose mirror is failed on the login: both commands say 2, not 3.
    serving = setup(tmp_path, mirror_db, status=True, dsn=wrong_dsn)
    loaded = load_config(serving)
    with sqlwarden_running("run", str(serving), "--no-progress") as proc:
        def mirror_failed() -> bool:
            found = running_engine(loaded)
            if found is None:
                return False
            with urllib.request.urlopen(f"{found[0]}/status", timeout=10) as answer:
                return bool(json.load(answer)["mirror"]["state"] == "failed")
        wait_until(mirror_failed, what="the engine's mirror to fail on the login")
        for args in (("mirror", "retry", str(serving)),
                     ("mirror", "reconcile", str(serving), "--timeout", "60")):
            asked = run_sqlwarden(*args)
            assert_login_refused(asked)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def assert_login_refused(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 2 with one line naming errno 1045, and the wrong password in no output."""
    assert_refused(done, 2, "1045")
    assert_no_secret("not-the-password", texts=(done.stdout, done.stderr))


def data_files(root: Path) -> dict[str, bytes]:
    """Everything under `root` but the config files a test writes."""
    return {name: data for name, data in files_under(root).items()
            if not name.endswith(".yaml")}
