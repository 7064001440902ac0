"""SQL sent to the engine (`engine.write`, a task's SQL) cannot touch what the engine owns:
its `_sw_*` tables, its triggers, the FTS indexes it keeps; nor ATTACH, DETACH, VACUUM,
load extensions, checkpoint or set the PRAGMAs the engine relies on. The engine's own
triggers keep firing for the writes it accepts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from sqlwarden.config import Config, TaskConfig, parse_config
from sqlwarden.errors import WriteError
from sqlwarden.facade import Engine

from .conftest import read_only


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rules_config(tmp_path: Path) -> Config:
    # The mirror's server is out of reach: its changes stay in the outbox, where
    # the tests look for them.
    data = tmp_path / "data"
    text = f"""\
database: {{path: {data / 'dev.db'}}}
tables:
  sites:
    columns:
      id: {{type: integer, primary_key: true}}
      name: {{type: text, not_null: true}}
      body: text
    fts: [name, body]
  readings:
    columns:
      id: {{type: integer, primary_key: true}}
      site_id: integer
      value: real
mirror:
  dsn: mysql://nobody:${{SW_MYSQL_PASSWORD}}@127.0.0.1:{closed_port()}/nothing
  scope: dev1
  tables: [readings]
  backoff_initial_s: 30
  connect_timeout_s: 1
message_log: {{path: {data / 'messages.jsonl'}}}
"""
    return parse_config(text, file="rules.yaml", base_dir=tmp_path)


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("SW_MYSQL_PASSWORD", "unused")
    return rules_config(tmp_path)


@pytest.fixture
def filled(rules: Config) -> Iterator[Engine]:
    """A running engine with two sites (indexed) and two readings (mirrored)."""
    with Engine(rules) as engine:
        engine.write_many("sites", [(1, "north pump", "pressure low"),
                                    (2, "south pump", "all good")])
        engine.write_many("readings", [(1, 1, 2.5), (2, 2, 3.5)])
        yield engine


def outbox(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.read() as conn:
        return [tuple(r) for r in conn.execute("SELECT tbl, k, op FROM _sw_outbox ORDER BY seq")]


def search(engine: Engine, words: str) -> list[int]:
    with engine.read() as conn:
        return [r[0] for r in conn.execute(
            "SELECT rowid FROM sites_fts WHERE sites_fts MATCH ? ORDER BY rowid", (words,))]


def triggers(engine: Engine) -> list[str]:
    with engine.read() as conn:
        return [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")]


FORBIDDEN = [
    ("DELETE FROM _sw_outbox", "_sw_outbox"),
    ("UPDATE _sw_tasks SET status = 'done'", "_sw_tasks"),
    ("INSERT INTO _sw_meta (key, value) VALUES ('schema_version', '99')", "_sw_meta"),
    ("DROP TABLE _sw_outbox", "_sw_outbox"),
    ("ALTER TABLE _sw_outbox ADD COLUMN extra", "_sw_outbox"),
    ("CREATE INDEX outbox_at ON _sw_outbox (at)", "_sw_outbox"),
    ("DROP INDEX _sw_outbox_key", "_sw_outbox"),
    ("CREATE TABLE _sw_mine (a)", "_sw_mine"),
    ("CREATE TRIGGER refill AFTER DELETE ON _sw_outbox BEGIN SELECT 1; END", "_sw_outbox"),
    ("DROP TRIGGER sites_fts_ai", "sites_fts_ai"),
    ("DROP TRIGGER _sw_outbox_readings_ai", "_sw_outbox_readings_ai"),
    ("DROP TABLE readings", "_sw_outbox_readings_"),
    ("DROP TABLE sites_fts", "sites_fts"),
    ("INSERT INTO sites_fts (sites_fts) VALUES ('delete-all')", "sites_fts"),
    ("DELETE FROM sites_fts_data", "sites_fts_data"),
    ("UPDATE sqlite_sequence SET seq = 0", "sqlite_sequence"),
    ("ATTACH DATABASE '{tmp}/other.db' AS other", "ATTACH"),
    ("DETACH DATABASE other", "DETACH"),
    # SQLite would refuse these inside a transaction anyway; the engine says why first.
    ("VACUUM", "VACUUM is not accepted"),
    ("VACUUM INTO '{tmp}/copy.db'", "VACUUM is not accepted"),
    ("/* tidy up */ -- first\n vacuum main", "VACUUM is not accepted"),
    ("INSERT INTO readings (id, site_id, value) VALUES (9, 1, 1.0); VACUUM",
     "VACUUM is not accepted"),
    ("PRAGMA writable_schema = ON", "writable_schema"),
    ("PRAGMA schema_version = 99", "schema_version"),
    ("PRAGMA wal_checkpoint", "wal_checkpoint"),
    ("PRAGMA main.wal_checkpoint(TRUNCATE)", "wal_checkpoint"),
    ("PRAGMA journal_mode = DELETE", "journal_mode"),
    ("PRAGMA ignore_check_constraints = ON", "ignore_check_constraints"),
    ("PRAGMA defer_foreign_keys = ON", "defer_foreign_keys"),
    ("PRAGMA legacy_alter_table = ON", "legacy_alter_table"),
    ("PRAGMA max_page_count = 1", "max_page_count"),
    ("PRAGMA foreign_keys = OFF", "foreign_keys"),
    ("SELECT load_extension('{tmp}/evil.so')", "load_extension"),
    ("ATTACH DATABASE '{tmp}/oth' || 'er.db' AS other",
     "ATTACH of another database file is not accepted"),
    # A declared table keeps its declared name and columns.
    ("ALTER TABLE sites RENAME TO sites2",
     "ALTER TABLE sites RENAME TO is not accepted: sites is declared in the config"),
    ("ALTER TABLE readings RENAME TO readings2", "ALTER TABLE readings RENAME TO"),
    ("ALTER TABLE readings RENAME COLUMN value TO v", "ALTER TABLE readings RENAME COLUMN"),
    ("ALTER TABLE readings DROP COLUMN value", "ALTER TABLE readings DROP COLUMN value"),
    # TEMP objects would stay on the Writer's connection after the message.
    ("CREATE TEMP TRIGGER t AFTER INSERT ON main.sites BEGIN SELECT 1; END",
     "creating TEMP trigger t is not accepted"),
    ("CREATE TEMP VIEW v AS SELECT 1", "creating TEMP view v is not accepted"),
    ("CREATE TEMPORARY TABLE scratch (a)", "creating TEMP table scratch is not accepted"),
    ("CREATE TABLE temp.scratch (a)", "creating TEMP table scratch is not accepted"),
    ("CREATE VIRTUAL TABLE temp.f USING fts5(a)", "creating TEMP table f is not accepted"),
]


@pytest.mark.parametrize(("sql", "named"), FORBIDDEN, ids=[sql for sql, _ in FORBIDDEN])
def test_sql_sent_to_the_engine_cannot_touch_what_the_engine_owns(
        filled: Engine, tmp_path: Path, sql: str, named: str) -> None:
    before = (outbox(filled), triggers(filled), search(filled, "pump"))
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(WriteError) as refused:
        filled.write(sql.format(tmp=tmp_path))
    message = str(refused.value)
    assert named in message and "\n" not in message, message
    assert (outbox(filled), triggers(filled), search(filled, "pump")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files, "no file was made"
    # The engine goes on as before.
    filled.write("INSERT INTO readings (id, site_id, value) VALUES (3, 1, 4.5)")
    assert outbox(filled)[-1] == ("readings", 3, "upsert")


def test_a_refused_statement_in_a_batch_commits_nothing_of_the_batch(filled: Engine) -> None:
    with pytest.raises(WriteError, match="_sw_outbox"):
        filled.write_batch(["INSERT INTO readings (id, site_id, value) VALUES (9, 1, 1.0)",
                            "DELETE FROM _sw_outbox WHERE tbl = 'readings'"])
    with filled.read() as conn:
        assert conn.execute("SELECT count(*) FROM readings WHERE id = 9").fetchone()[0] == 0
    assert len(outbox(filled)) == 2


def test_a_statement_with_the_very_text_the_engine_runs_is_still_checked(
        filled: Engine) -> None:
    # The engine ran this text itself at start (its run id); a cached statement
    # must not let a sender's copy past the rules.
    engine_sql = ("INSERT INTO _sw_meta (key, value) VALUES (?, ?) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    with pytest.raises(WriteError, match="_sw_meta"):
        filled.write(engine_sql, ("run_id", "forged"))
    with filled.read() as conn:
        run = conn.execute("SELECT value FROM _sw_meta WHERE key = 'run_id'").fetchone()[0]
    assert run == filled.run_id


def test_the_engines_settings_hold_after_refused_pragmas(filled: Engine) -> None:
    for sql in ("PRAGMA journal_mode = DELETE", "PRAGMA foreign_keys = OFF",
                "PRAGMA ignore_check_constraints = ON", "PRAGMA wal_checkpoint(TRUNCATE)"):
        with pytest.raises(WriteError, match="is not accepted"):
            filled.write(sql)
    with filled.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Foreign keys are still enforced on the engine's connection.
    filled.write("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    filled.write("CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent (id))")
    with pytest.raises(WriteError, match="FOREIGN KEY"):
        filled.write("INSERT INTO child (id, p) VALUES (1, 42)")


# Reading a setting, a comment that names VACUUM, EXPLAIN: none of these change anything.
ALLOWED = [
    "PRAGMA journal_mode",
    "PRAGMA schema_version",
    "PRAGMA wal_autocheckpoint",
    "PRAGMA user_version = 3",
    "PRAGMA integrity_check",
    "EXPLAIN VACUUM",
    "/* VACUUM */ INSERT INTO readings (id, site_id, value) VALUES (20, 1, 0.5) -- VACUUM",
    "INSERT INTO readings (id, site_id, value) VALUES (21, 1, 0.5); /* then */ SELECT 'VACUUM'",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_sql_that_only_reads_settings_or_names_vacuum_in_a_comment_is_accepted(
        filled: Engine, sql: str) -> None:
    result = filled.write(sql)  # refused, it would raise WriteError
    with filled.read() as conn:
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    # What it asked for was done: its row is there, the setting it may change changed.
    inserts = sql.count("INSERT INTO readings")
    assert (readings, result.changes if inserts else 0) == (2 + inserts, inserts)
    assert user_version == (3 if "user_version = 3" in sql else 0)


def test_reading_the_engines_tables_stays_allowed(filled: Engine) -> None:
    result = filled.write("INSERT INTO readings (id, site_id, value) "
                          "SELECT 10 + count(*), 1, 0.0 FROM _sw_outbox")
    assert result.changes == 1


def test_writes_into_indexed_and_mirrored_tables_still_fire_the_engines_triggers(
        filled: Engine) -> None:
    filled.write("INSERT INTO sites (id, name, body) VALUES (3, 'east pump', 'valve stuck')")
    filled.write_batch(["UPDATE sites SET body = 'valve fixed' WHERE id = 3",
                        "DELETE FROM sites WHERE id = 1",
                        "UPDATE readings SET value = 9.5 WHERE id = 1",
                        "DELETE FROM readings WHERE id = 2",
                        "INSERT OR REPLACE INTO readings (id, site_id, value) VALUES (5, 3, 1.0)"])
    assert search(filled, "pump") == [2, 3]
    assert search(filled, "fixed") == [3]
    assert search(filled, "stuck") == []
    assert outbox(filled) == [("readings", 1, "upsert"), ("readings", 2, "delete"),
                              ("readings", 5, "upsert")]


def test_a_trigger_someone_added_may_not_write_the_engines_tables(filled: Engine) -> None:
    # Creating it is allowed (it is on a user's table); what its body does is not.
    filled.write("CREATE TRIGGER wipe AFTER INSERT ON readings BEGIN DELETE FROM _sw_outbox; END")
    with pytest.raises(WriteError, match="trigger wipe may not delete from _sw_outbox"):
        filled.write("INSERT INTO readings (id, site_id, value) VALUES (7, 1, 1.0)")
    # Not through the engine's own writes either, which fire it too.
    with pytest.raises(WriteError, match="trigger wipe may not delete from _sw_outbox"):
        filled.write_many("readings", [(8, 1, 1.0)])
    assert len(outbox(filled)) == 2
    filled.write("DROP TRIGGER wipe")
    filled.write_many("readings", [(8, 1, 1.0)])
    assert outbox(filled)[-1] == ("readings", 8, "upsert")


# --- task SQL ---------------------------------------------------------------------------


TASK_FORBIDDEN = [
    ("DELETE FROM _sw_outbox WHERE :lo < :hi", "_sw_outbox"),
    ("UPDATE _sw_tasks SET checkpoint = :hi WHERE :lo < :hi", "_sw_tasks"),
    ("INSERT INTO sites_fts (sites_fts) SELECT 'delete-all' WHERE :lo < :hi", "sites_fts"),
    # A task's statement must use :lo and :hi; these ignore them.
    ("ATTACH DATABASE '{tmp}/other' || substr(:lo, 1, 0) || substr(:hi, 1, 0) || '.db' AS o",
     "ATTACH"),
    ("SELECT load_extension('{tmp}/evil.so') WHERE :lo < :hi", "load_extension"),
    ("VACUUM INTO '{tmp}/other' || substr(:lo, 1, 0) || substr(:hi, 1, 0) || '.db'",
     "VACUUM is not accepted"),
]


@pytest.mark.parametrize(("sql", "named"), TASK_FORBIDDEN, ids=[s for s, _ in TASK_FORBIDDEN])
def test_a_tasks_sql_cannot_touch_what_the_engine_owns_and_only_the_task_fails(
        rules: Config, tmp_path: Path, sql: str, named: str) -> None:
    task = TaskConfig(name="sneaky", table="readings", sql=sql.format(tmp=tmp_path),
                      where="value IS NOT NULL", min_rows=10, max_rows=10)
    with Engine(rules, tasks=[task], start_tasks=False) as engine:
        engine.write_many("readings", [(i, 1, float(i)) for i in range(1, 6)])
        before = (outbox(engine), triggers(engine))
        engine.tasks.start()
        [view] = engine.tasks.wait(timeout=60)
        assert view.status == "failed"
        assert named in (view.error or ""), view.error
        assert "the first chunk failed" in (view.error or "") and "None" not in (view.error or "")
        assert (outbox(engine), triggers(engine)) == before
        assert engine.state == "running"
        engine.write("INSERT INTO readings (id, site_id, value) VALUES (6, 1, 6.0)")
    assert not (tmp_path / "other.db").exists()


def test_a_task_over_a_mirrored_table_still_records_its_changes_for_the_mirror(
        rules: Config) -> None:
    task = TaskConfig(name="move", table="readings", updates=(("site_id", "2"),),
                      where="site_id = 1", min_rows=2, max_rows=2)
    with Engine(rules, tasks=[task], start_tasks=False) as engine:
        engine.write_many("readings", [(i, 1, float(i)) for i in range(1, 6)])
        engine.tasks.start()
        [view] = engine.tasks.wait(timeout=60)
        assert view.status == "done", view.error
        with engine.read() as conn:
            sites = [r[0] for r in conn.execute("SELECT site_id FROM readings ORDER BY id")]
        assert sites == [2, 2, 2, 2, 2]
        assert {k for _, k, _ in outbox(engine)} == {1, 2, 3, 4, 5}
    conn = read_only(rules.database.path)
    try:
        (checkpoint,) = conn.execute("SELECT checkpoint FROM _sw_tasks").fetchone()
    finally:
        conn.close()
    assert checkpoint == 5


def test_the_triggers_of_an_adopted_fts_index_are_the_engines_too(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    db = sqlite_utils.Database(path)
    db.table("docs").insert_all([{"id": 1, "title": "pump", "body": "pressure low"}], pk="id")
    db.table("docs").enable_fts(["title", "body"], create_triggers=True)
    db.close()
    config = parse_config(f"""\
database: {{path: {path}}}
tables:
  docs:
    columns:
      id: {{type: integer, primary_key: true}}
      title: text
      body: text
    fts: [title, body]
    strict: false
message_log: {{enabled: false}}
""", file="docs.yaml", base_dir=tmp_path)
    with Engine(config) as engine:
        with pytest.raises(WriteError, match=r"dropping trigger docs_ai .*keeps the FTS index"):
            engine.write("DROP TRIGGER docs_ai")
        engine.write("INSERT INTO docs (id, title, body) VALUES (2, 'tank', 'pressure high')")
        with engine.read() as conn:
            found = [r[0] for r in conn.execute(
                "SELECT rowid FROM docs_fts WHERE docs_fts MATCH 'pressure' ORDER BY rowid")]
    assert found == [1, 2]


def test_refusals_name_what_was_refused_in_plain_words(filled: Engine, tmp_path: Path) -> None:
    with pytest.raises(WriteError) as attach:
        filled.write(f"ATTACH DATABASE '{tmp_path}/oth' || 'er.db' AS other")
    with pytest.raises(WriteError) as rename:
        filled.write("ALTER TABLE sites RENAME TO sites2")
    for refused in (attach, rename):
        assert "None" not in str(refused.value) and "sqlite_sequence" not in str(refused.value)
    assert str(rename.value).startswith("writer.execute: ALTER TABLE sites RENAME TO is not "
                                        "accepted: sites is declared in the config")


def test_a_refused_temp_trigger_leaves_later_writes_to_its_table_working(
        filled: Engine) -> None:
    with pytest.raises(WriteError, match="creating TEMP trigger audit is not accepted"):
        filled.write("CREATE TEMP TRIGGER audit AFTER INSERT ON main.sites "
                     "BEGIN DELETE FROM _sw_outbox; END")
    filled.write("INSERT INTO sites (id, name, body) VALUES (3, 'east pump', 'valve stuck')")
    filled.write_many("sites", [(4, "west pump", "fine")])
    assert search(filled, "pump") == [1, 2, 3, 4]


def test_a_declared_table_may_gain_a_column(filled: Engine) -> None:
    filled.write("ALTER TABLE sites ADD COLUMN colour TEXT")
    filled.write("UPDATE sites SET colour = 'red' WHERE id = 1")
    filled.write("INSERT INTO sites (id, name, body) VALUES (3, 'east pump', 'valve stuck')")
    assert search(filled, "pump") == [1, 2, 3]


def test_a_senders_own_autoincrement_table_can_be_renamed_and_dropped(filled: Engine) -> None:
    # SQLite keeps such a table's counter in sqlite_sequence and moves it along itself.
    filled.write("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT)")
    filled.write("INSERT INTO notes (text) VALUES ('first')")
    filled.write("ALTER TABLE notes RENAME TO memos")
    assert filled.write("INSERT INTO memos (text) VALUES ('second')").last_rowid == 2
    with filled.read() as conn:
        sequences = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    assert sequences["memos"] == 2 and "notes" not in sequences
    outbox_seq = sequences["_sw_outbox"]
    filled.write("DROP TABLE memos")
    # The rename opened nothing for the statements after it.
    for sql in (["ALTER TABLE readings_copy RENAME TO copy2",
                 "UPDATE sqlite_sequence SET seq = 0"],
                ["CREATE TABLE gone (id INTEGER PRIMARY KEY AUTOINCREMENT)",
                 "DROP TABLE gone; DELETE FROM sqlite_sequence"]):
        filled.write("CREATE TABLE readings_copy (id INTEGER PRIMARY KEY AUTOINCREMENT)")
        with pytest.raises(WriteError, match="sqlite_sequence is not accepted"):
            filled.write_batch(sql)
        filled.write("DROP TABLE readings_copy")
    with filled.read() as conn:
        sequences = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    assert sequences == {"_sw_outbox": outbox_seq}


def test_a_trigger_someone_added_may_not_write_sqlite_sequence(filled: Engine) -> None:
    filled.write("CREATE TRIGGER renumber AFTER INSERT ON readings "
                 "BEGIN UPDATE sqlite_sequence SET seq = 0; END")
    with pytest.raises(WriteError, match="trigger renumber may not update sqlite_sequence"):
        filled.write("INSERT INTO readings (id, site_id, value) VALUES (7, 1, 1.0)")
    filled.write("DROP TRIGGER renumber")
    filled.write("INSERT INTO readings (id, site_id, value) VALUES (7, 1, 1.0)")


def test_a_tasks_sql_that_does_not_compile_is_named_as_the_tasks_sql(rules: Config) -> None:
    task = TaskConfig(name="typo", table="readings",
                      sql="UPDATE readings SET nope = 1 WHERE id > :lo AND id <= :hi",
                      where="value IS NOT NULL", min_rows=10, max_rows=10)
    with Engine(rules, tasks=[task], start_tasks=False) as engine:
        engine.write_many("readings", [(1, 1, 1.0)])
        engine.tasks.start()
        [view] = engine.tasks.wait(timeout=60)
    assert view.status == "failed"
    assert "task typo@1: the task's sql does not compile: no such column: nope" in (
        view.error or ""), view.error
