"""Stored reconcile ranges (`_sw_mirror_ranges`): SQLite's side of a reconcile is kept,
so the next one reads only the key ranges that changed since, and never trusts a
stored range that could be stale. Counted in rows read from SQLite, against a real
MariaDB (tests/mariadb.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine
from sqlwarden.views import TableCheck

from .support.mariadb import MirrorDb
from .support.mirror_driver import item
from .test_mirror import (
    FAST,
    ITEMS,
    assert_mirror_equals_sqlite,
    boot_reconciled,
    make_config,
    mirror_count,
    wait_caught_up,
    write_items,
)

TAGS = """\
  tags:
    columns:
      id: {type: integer, primary_key: true}
      name: {type: text, unique: true}
"""

READINGS = """\
  readings:
    columns:
      device: text
      n: integer
      value: real
    primary_key: [device, n]
"""


def only(result: Any) -> TableCheck:
    assert result.error is None, result.error
    (check,) = result.tables
    assert isinstance(check, TableCheck)
    return check


def config_with(tmp_path: Path, dsn: str | None, tables: str, *, range_rows: int = 100,
                scope: str = "dev1") -> Config:
    """A config with `tables`, mirrored to `dsn` (not mirrored when None)."""
    data = tmp_path / "dev"
    mirror = ""
    if dsn is not None:
        options = "".join(f"  {k}: {v}\n" for k, v in {**FAST, "range_rows": range_rows}.items())
        mirror = f"mirror:\n  dsn: {dsn}\n  scope: {scope}\n{options}"
    text = f"database: {{path: {data / 'dev.db'}}}\ntables:\n{tables}{mirror}"
    return parse_config(text, file="test.yaml", base_dir=tmp_path)


def settled(engine: Engine) -> TableCheck:
    """Everything drained, then one reconcile (which stores the ranges); its check."""
    wait_caught_up(engine)
    return only(engine.mirror.reconcile(timeout=30))


def test_a_restart_in_sync_reads_no_rows_and_a_change_rereads_only_its_range(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 1001))
        first = settled(engine)
        # The drained inserts made the stored range of the empty table stale: read whole.
        assert (first.sqlite_read, first.ranges, first.skipped) == (1000, 10, True)

    with Engine(config) as engine:
        boot = only(engine.mirror.reconcile(timeout=30))
        assert (boot.sqlite_rows, boot.mirror_rows, boot.ranges) == (1000, 1000, 10)
        assert (boot.sqlite_read, boot.skipped) == (0, True)

        # An old row changes: only its range (ids 101..200) is read again.
        engine.write("UPDATE items SET name = 'changed' WHERE id = 150")
        after_update = settled(engine)
        assert (after_update.sqlite_read, after_update.skipped) == (100, True)

        # Drift on the server in a range SQLite did not change: the range differs,
        # so its rows are read to repair it, and only those.
        mirror_db.server.query("UPDATE items SET name = 'drift' WHERE sw_scope = 'dev1' "
                               "AND id = 777", (), mirror_db.database)
        found = only(engine.mirror.verify(timeout=30))
        assert (found.differing, found.sqlite_read) == (1, 100)
        assert found.ranges_shown == ((700, 800, 100, 100),)
        repaired = only(engine.mirror.reconcile(timeout=30))
        assert (repaired.differing, repaired.copied, repaired.deleted) == (1, 1, 0)
        assert repaired.sqlite_read == 100
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 1000
        again = only(engine.mirror.reconcile(timeout=30))
        assert (again.sqlite_read, again.skipped) == (0, True)


def test_changes_pending_in_the_outbox_at_start_are_read_again(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 501))
        settled(engine)
    # Another program changes the file while no engine runs: the triggers record it.
    conn = apsw.Connection(str(config.database.path))
    conn.execute("UPDATE items SET name = 'offline' WHERE id IN (42, 342)")
    conn.execute("DELETE FROM items WHERE id = 343")
    conn.close()

    with Engine(config) as engine:
        boot = only(engine.mirror.reconcile(timeout=30))
        # Two of five ranges hold pending changes; the boot reconcile repairs them.
        assert (boot.sqlite_read, boot.differing) == (199, 2)
        assert (boot.copied, boot.deleted) == (2, 1)
        wait_caught_up(engine)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 499


def test_a_row_deleted_past_the_outbox_is_found_by_the_row_count(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = config_with(tmp_path, mirror_db.dsn, TAGS)
    with Engine(config) as engine:
        boot_reconciled(engine)
        engine.write_many("tags", [(i, f"tag {i}") for i in range(1, 501)])
        settled(engine)
    # INSERT OR REPLACE on a unique column deletes the row holding the name; without
    # recursive triggers (SQLite's default) no delete trigger fires for it.
    conn = apsw.Connection(str(config.database.path))
    conn.execute("INSERT OR REPLACE INTO tags (id, name) VALUES (900, 'tag 7')")
    conn.close()

    with Engine(config) as engine:
        boot = only(engine.mirror.reconcile(timeout=30))
        # The range of id 7 still matches the mirror, but the stored ranges now add up
        # to 501 rows while SQLite has 500: something bypassed the outbox, so the
        # whole table is read (after the ranges already read).
        assert boot.sqlite_read >= 500
        assert (boot.copied, boot.deleted) == (1, 1)
        # The drain then sent id 900's pending change, so its range is read once more.
        assert settled(engine).sqlite_read == 100
        assert assert_mirror_equals_sqlite(engine, mirror_db, table="tags") == 500
        again = only(engine.mirror.reconcile(timeout=30))
        assert (again.sqlite_read, again.skipped) == (0, True)


def test_a_table_mirrored_again_is_read_whole(tmp_path: Path, mirror_db: MirrorDb) -> None:
    mirrored = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(mirrored) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 301))
        settled(engine)
    # The same database without the mirror: no triggers, so these changes are not
    # recorded anywhere.
    local = config_with(tmp_path, None, ITEMS)
    with Engine(local) as engine:
        engine.write("UPDATE items SET name = 'unmirrored' WHERE id = 5")
        engine.write("DELETE FROM items WHERE id = 250")

    with Engine(mirrored) as engine:
        boot = only(engine.mirror.reconcile(timeout=30))
        assert boot.sqlite_read == 299
        assert (boot.copied, boot.deleted) == (1, 1)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 299


def test_compound_keys_keep_their_ranges(tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = config_with(tmp_path, mirror_db.dsn, READINGS)
    rows = [(device, n, n / 8) for device in ("a", "b", "c") for n in range(1, 201)]
    with Engine(config) as engine:
        boot_reconciled(engine)
        engine.write_many("readings", rows)
        first = settled(engine)
        assert (first.sqlite_read, first.ranges) == (600, 6)

    with Engine(config) as engine:
        boot = only(engine.mirror.reconcile(timeout=30))
        assert (boot.sqlite_read, boot.skipped, boot.ranges) == (0, True, 6)
        # ("b", 150) is in the fourth range of 100 keys: above ("b", 100), up to ("b", 200).
        engine.write("UPDATE readings SET value = -1 WHERE device = 'b' AND n = 150")
        changed = settled(engine)
        assert (changed.sqlite_read, changed.skipped) == (100, True)
        mirror_db.server.query("DELETE FROM readings WHERE sw_scope = 'dev1' AND device = 'c' "
                               "AND n = 7", (), mirror_db.database)
        repaired = only(engine.mirror.reconcile(timeout=30))
        assert (repaired.differing, repaired.copied, repaired.sqlite_read) == (1, 1, 100)
        assert assert_mirror_equals_sqlite(engine, mirror_db, table="readings") == 600
        assert mirror_count(mirror_db, table="readings") == 600


def test_appended_and_deleted_rows_reread_only_their_ranges(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 401))
        settled(engine)
        engine.write_many("items", [item(i) for i in (401, 402)])
        engine.write("DELETE FROM items WHERE id = 10")
        wait_caught_up(engine)
        check = only(engine.mirror.reconcile(timeout=30))
        # Range 1..100 (the delete) and the open last range (the inserts) were read.
        assert check.sqlite_read == 99 + 102
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 401
