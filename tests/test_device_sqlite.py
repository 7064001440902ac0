"""Other programs on the device write the engine's database with their own, older SQLite
(Python's `sqlite3` module here, and sqlite-utils on top of it): everything the engine
installs (outbox and FTS triggers, bookkeeping tables) runs there, their changes reach
the mirror, and search stays right."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import sqlite_utils

from sqlwarden.config import Config, parse_config
from sqlwarden.db.schema import apply_schema, outbox_trigger_sql
from sqlwarden.facade import Engine

from .support.mariadb import MirrorDb
from .support.mirror_driver import item
from .test_mirror import FAST, ITEMS, assert_mirror_equals_sqlite, wait_caught_up

#: Beside the mirror's items: a compound key (its outbox key is a JSON array) and a
#: table with an FTS index, both mirrored too.
TABLES = ITEMS + """\
  pairs:
    columns:
      dev: {type: text, not_null: true}
      n: {type: integer, not_null: true}
      v: text
    primary_key: [dev, n]
  notes:
    columns:
      id: {type: integer, primary_key: true}
      title: {type: text, not_null: true}
      body: text
    fts: [title, body]
"""


def device_config(tmp_path: Path, dsn: str) -> Config:
    options = "".join(f"  {key}: {value}\n" for key, value in FAST.items())
    data = tmp_path / "data"
    text = f"""\
database: {{path: {data / 'dev.db'}}}
tables:
{TABLES}mirror:
  dsn: {dsn}
  scope: dev1
{options}message_log: {{path: {data / 'messages.jsonl'}}}
"""
    return parse_config(text, file="device.yaml", base_dir=tmp_path)


@pytest.fixture
def device(tmp_path: Path, mirror_db: MirrorDb) -> Iterator[tuple[Engine, Path]]:
    """A running engine, caught up with its mirror, and the path of its database."""
    config = device_config(tmp_path, mirror_db.dsn)
    with Engine(config) as engine:
        engine.write_many("items", [item(i) for i in range(1, 21)])
        engine.write_many("notes", [(1, "pump north", "pressure low"),
                                    (2, "pump south", "all good")])
        wait_caught_up(engine)
        yield engine, config.database.path


@contextlib.contextmanager
def stdlib(path: Path) -> Iterator[sqlite3.Connection]:
    """Another program's connection: Python's own sqlite3 module, one transaction."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def search(engine: Engine, words: str) -> list[int]:
    with engine.read() as conn:
        return [r[0] for r in conn.execute(
            "SELECT rowid FROM notes_fts WHERE notes_fts MATCH ? ORDER BY rowid", (words,))]


def fts_is_sound(path: Path) -> None:
    conn = apsw.Connection(str(path))
    try:
        conn.execute("INSERT INTO notes_fts (notes_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def test_changes_written_through_pythons_sqlite3_reach_the_mirror(
        device: tuple[Engine, Path], mirror_db: MirrorDb) -> None:
    engine, path = device
    with stdlib(path) as conn:
        conn.executemany("INSERT INTO items (id, name, score, at, data) VALUES (?, ?, ?, ?, ?)",
                         [item(i) for i in range(21, 31)])
        conn.execute("UPDATE items SET name = 'renamed by sqlite3' WHERE id IN (3, 25)")
        conn.execute("UPDATE items SET id = 1000 WHERE id = 4")  # a key that moved
        conn.execute("DELETE FROM items WHERE id IN (5, 26)")
        conn.executemany("INSERT INTO pairs (dev, n, v) VALUES (?, ?, ?)",
                         [("a", 1, "x"), ("a", 2, "y"), ("b", 1, "z")])
        conn.execute("UPDATE pairs SET v = 'changed' WHERE dev = 'a' AND n = 2")
        conn.execute("DELETE FROM pairs WHERE dev = 'b'")
        at = [r[0] for r in conn.execute("SELECT at FROM _sw_outbox")]
    assert at and all(abs(a - time.time()) < 600 for a in at), at
    wait_caught_up(engine)
    assert assert_mirror_equals_sqlite(engine, mirror_db, "items") == 28
    assert assert_mirror_equals_sqlite(engine, mirror_db, "pairs") == 2


def test_an_indexed_table_written_through_pythons_sqlite3_keeps_search_right(
        device: tuple[Engine, Path], mirror_db: MirrorDb) -> None:
    engine, path = device
    with stdlib(path) as conn:
        conn.execute("INSERT INTO notes (id, title, body) VALUES (3, 'pump east', 'valve stuck')")
        conn.execute("UPDATE notes SET body = 'valve fixed' WHERE id = 3")
        conn.execute("DELETE FROM notes WHERE id = 1")
        # REPLACE deletes the old row without firing delete triggers unless the
        # writer turns recursive triggers on (the README says so; sqlite-utils does).
        conn.execute("PRAGMA recursive_triggers = ON")
        conn.execute("INSERT OR REPLACE INTO notes (id, title, body) VALUES (2, 'tank', 'dry')")
    assert search(engine, "pump") == [3]
    assert search(engine, "fixed") == [3]
    assert search(engine, "stuck OR pressure OR good") == []
    assert search(engine, "tank dry") == [2]
    wait_caught_up(engine)
    assert assert_mirror_equals_sqlite(engine, mirror_db, "notes") == 2
    engine.stop()
    fts_is_sound(path)


def test_sqlite_utils_writes_reach_the_mirror_and_the_index(
        device: tuple[Engine, Path], mirror_db: MirrorDb) -> None:
    engine, path = device
    db = sqlite_utils.Database(path)
    try:
        db.table("items").insert({"id": 100, "name": "from sqlite-utils", "score": 1.5})
        db.table("items").upsert({"id": 2, "name": "upserted"}, pk="id")
        db.table("items").delete(6)
        db.table("pairs").insert_all([{"dev": "c", "n": i, "v": str(i)} for i in range(3)])
        db.table("notes").insert({"id": 7, "title": "generator", "body": "fuel low"})
        db.table("notes").update(7, {"body": "fuel full"})
    finally:
        db.close()
    assert search(engine, "fuel full") == [7]
    assert search(engine, "low") == [1]
    wait_caught_up(engine)
    assert assert_mirror_equals_sqlite(engine, mirror_db, "items") == 20
    assert assert_mirror_equals_sqlite(engine, mirror_db, "pairs") == 3
    assert assert_mirror_equals_sqlite(engine, mirror_db, "notes") == 3


# --- upgrading a database whose triggers an older engine made ---------------------------


def offline(tmp_path: Path) -> Config:
    # Never started: only the schema is applied, so the server need not exist.
    return device_config(tmp_path, "mysql://nobody:pw@127.0.0.1:1/nothing")


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(str(path))
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_outbox_triggers_an_older_engine_made_are_replaced_keeping_pending_changes(
        tmp_path: Path) -> None:
    config = offline(tmp_path)
    path = config.database.path
    path.parent.mkdir(parents=True)
    conn = apsw.Connection(str(path))
    try:
        apply_schema(conn, config)
        # As the engine before this one left them: the triggers call unixepoch('subsec'),
        # a change is pending and the last reconcile's digests are stored.
        for table in ("items", "pairs"):
            for name, sql in outbox_trigger_sql(config.table(table),
                                                now="unixepoch('subsec')").items():
                conn.execute(f'DROP TRIGGER "{name}"; {sql}')
        conn.execute("INSERT INTO items (id, name) VALUES (1, 'pending')")
        conn.execute("INSERT INTO _sw_mirror_ranges (tbl, ord, hi, rows, digest, shape) "
                     "VALUES ('items', 0, NULL, 0, 12345, 'v1')")
        report = apply_schema(conn, config)
    finally:
        conn.close()
    assert "created mirror outbox trigger _sw_outbox_items_ai" in report.actions
    assert not any("unixepoch" in sql for (sql,) in rows(
        path, "SELECT sql FROM sqlite_master WHERE type = 'trigger'"))
    assert rows(path, "SELECT tbl, k, op FROM _sw_outbox") == [("items", 1, "upsert")]
    # Every change went through the old triggers: the digests still hold.
    assert rows(path, "SELECT tbl, digest FROM _sw_mirror_ranges") == [("items", 12345)]
    with stdlib(path) as other:
        other.execute("INSERT INTO items (id, name) VALUES (2, 'from sqlite3')")
    assert rows(path, "SELECT k FROM _sw_outbox ORDER BY seq") == [(1,), (2,)]


def test_a_missing_outbox_trigger_still_makes_the_stored_digests_stale(tmp_path: Path) -> None:
    config = offline(tmp_path)
    path = config.database.path
    path.parent.mkdir(parents=True)
    conn = apsw.Connection(str(path))
    try:
        apply_schema(conn, config)
        conn.execute('DROP TRIGGER "_sw_outbox_items_au"')
        conn.execute("INSERT INTO _sw_mirror_ranges (tbl, ord, hi, rows, digest, shape) "
                     "VALUES ('items', 0, NULL, 0, 12345, 'v1')")
        apply_schema(conn, config)
    finally:
        conn.close()
    assert rows(path, "SELECT count(*) FROM _sw_mirror_ranges") == [(0,)]
