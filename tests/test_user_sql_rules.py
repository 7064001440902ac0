"""SQL sent to the engine (`engine.write`, a task's SQL) cannot touch what the engine owns:
its `_sw_*` tables, its triggers, the FTS indexes it keeps; nor ATTACH, DETACH, VACUUM or
load extensions. The engine's own triggers keep firing for the writes it accepts."""

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
    ("VACUUM", "VACUUM"),
    ("VACUUM INTO '{tmp}/copy.db'", "VACUUM"),
    ("SELECT load_extension('{tmp}/evil.so')", "load_extension"),
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
