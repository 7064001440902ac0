"""What the mirror waits out, against the real MariaDB: another program holding the
database's write lock during a drain, and a server away, are waits that say what they
wait for and end by themselves; only what no retry fixes fails the mirror; status counts
completed and failed reconciles apart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine

from .support.device import held_write_lock
from .support.mariadb import MirrorDb
from .test_mirror import (
    FAST,
    assert_mirror_equals_sqlite,
    boot_reconciled,
    closed_port,
    wait_caught_up,
    wait_for,
    wait_state,
)

BUSY_TIMEOUT_MS = 300
LOCKED = "database locked by another process"


def make_config(tmp_path: Path, dsn: str) -> Config:
    options = "".join(f"  {key}: {value}\n" for key, value in FAST.items())
    return parse_config(f"""\
database: {{path: {tmp_path / 'dev.db'}, busy_timeout_ms: {BUSY_TIMEOUT_MS}}}
tables:
  items:
    columns:
      id: {{type: integer, primary_key: true}}
      name: text
mirror:
  dsn: {dsn}
  scope: dev1
{options}message_log: {{path: {tmp_path / 'messages.jsonl'}}}
""", file="test.yaml", base_dir=tmp_path)


def blocked_on_the_server(mirror_db: MirrorDb) -> bool:
    """Whether a statement waits for the global read lock the test holds."""
    rows = mirror_db.server.query("SELECT count(*) FROM information_schema.PROCESSLIST "
                                  "WHERE STATE IN ('Waiting for global read lock', "
                                  "'Waiting for backup lock')")
    return bool(rows[0][0])


def test_a_lock_held_by_another_program_during_a_drain_is_waited_out(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn)
    with Engine(config) as engine:
        boot_reconciled(engine)
        # Hold the server's writes, so the drain is known to be mid-batch when the
        # database gets locked: its outbox rows are deleted after the lock is taken.
        server = mirror_db.server.admin(mirror_db.database)
        cursor = server.cursor()
        cursor.execute("FLUSH TABLES WITH READ LOCK")
        unlocked = False
        try:
            engine.write_many("items", [(i, f"item {i}") for i in range(1, 201)])
            wait_for(lambda: blocked_on_the_server(mirror_db), 30, "the drain to reach the server")
            with held_write_lock(config.database.path):
                locked_at = time.monotonic()
                cursor.execute("UNLOCK TABLES")
                unlocked = True
                seen = waited_out(engine, locked_at)
        finally:
            if not unlocked:
                cursor.execute("UNLOCK TABLES")
            cursor.close()
            server.close()
        assert seen["state"] == "up"
        done = wait_caught_up(engine)
        assert done["waiting_for"] is None
        # It went on from where it stood: no reconnect, no second reconcile.
        assert (done["reconciles"], done["reconciles_failed"], done["attempt"]) == (1, 0, 0)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 200
        assert engine.health()[0]


def waited_out(engine: Engine, locked_at: float) -> dict[str, Any]:
    """While the lock is held: the mirror says it waits for it, and is not failed."""
    seen: dict[str, Any] = {}

    def waiting() -> bool:
        seen.update(engine.status()["mirror"])
        return seen["waiting_for"] == LOCKED

    wait_for(waiting, 30, lambda: f"the mirror to wait for the lock ({seen})")
    assert seen["state"] == "up" and seen["error"] is None
    assert seen["outbox"]["depth"] == 200
    ok, reasons = engine.health()
    assert not ok and f"mirror waits: {LOCKED}" in reasons
    # The other program keeps the lock for twice the busy timeout in all.
    wait_for(lambda: time.monotonic() - locked_at >= 2 * BUSY_TIMEOUT_MS / 1000, 30,
             "the lock to be held for twice the busy timeout")
    seen = engine.status()["mirror"]
    assert seen["waiting_for"] == LOCKED
    return seen


def test_a_server_away_is_a_wait_that_says_so(tmp_path: Path, mirror_db: MirrorDb) -> None:
    dsn = f"mysql://nobody:${{SW_MYSQL_PASSWORD}}@127.0.0.1:{closed_port()}/nothing"
    with Engine(make_config(tmp_path, dsn)) as engine:
        seen = wait_state(engine, "down")
        assert seen["waiting_for"] == "mirror server unavailable"
        assert "mirror waits: mirror server unavailable" in engine.health()[1]


def test_failed_and_completed_reconciles_are_counted_apart(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        boot_reconciled(engine)
        engine.write_many("items", [(i, f"item {i}") for i in range(1, 11)])
        wait_caught_up(engine)
        mirror_db.server.query("DROP TABLE items", database=mirror_db.database)
        try:
            engine.mirror.reconcile(timeout=30)
        except Exception as exc:  # the mirror table is gone: no retry fixes that
            assert "items" in str(exc) and "1146" in str(exc)
        else:
            raise AssertionError("a reconcile of a dropped mirror table succeeded")
        failed = engine.status()["mirror"]
        assert (failed["state"], failed["reconciles"], failed["reconciles_failed"]) == (
            "failed", 1, 1)
        assert failed["waiting_for"] is None and "items" in failed["error"]
        # Asked again: the connect creates the table, and the reconcile fills it.
        view = engine.mirror.reconcile(timeout=30)
        assert sum(t.copied for t in view.tables) == 10
        after = engine.status()["mirror"]
        assert (after["state"], after["reconciles"], after["reconciles_failed"]) == ("up", 2, 1)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 10
