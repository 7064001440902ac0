"""The Writer: atomic messages, bulk writes, group commit and WAL management."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.db.connect import open_writer
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.errors import BadRowError, WriteError
from sqlwarden.facade import Engine
from sqlwarden.protocol import Execute, InsertRows, UpsertRows
from sqlwarden.views import WriteResult

from .conftest import count_rows, site_row


def test_a_write_returns_once_committed(engine: Engine, config: Config) -> None:
    result = engine.write("INSERT INTO sites (id, org, name, updated_at) VALUES (?, ?, ?, ?)",
                          (7, "acme", "north", "2025-01-01T00:00:00Z"))
    assert (result.changes, result.last_rowid) == (1, 7)
    assert count_rows(config.database.path, "sites") == 1


def test_a_batch_commits_all_statements_or_none(engine: Engine, config: Config) -> None:
    ok = ("INSERT INTO sites (id, org, name, updated_at) VALUES (1, 'a', 'b', 'c')")
    duplicate = ("INSERT INTO sites (id, org, name, updated_at) VALUES (1, 'x', 'y', 'z')")
    with pytest.raises(WriteError, match=r"UNIQUE constraint failed: sites\.id"):
        engine.write_batch([ok, ("UPDATE sites SET org = ? WHERE id = 1", ("changed",)),
                            duplicate])
    assert count_rows(config.database.path, "sites") == 0
    assert engine.write_batch([ok, ("UPDATE sites SET org = ? WHERE id = 1", ("z",))]) \
        .changes == 2


@pytest.mark.parametrize("sql", [
    "COMMIT", "begin immediate", "END", "SAVEPOINT x", "ROLLBACK",
    "INSERT INTO sites (id, org, name, updated_at) VALUES (9, 'a', 'b', 'c'); COMMIT",
    "/* sneaky */ commit", "PRAGMA foreign_keys = OFF", "PRAGMA journal_mode = DELETE"])
def test_statements_that_would_break_the_writers_transaction_are_refused(
        engine: Engine, config: Config, sql: str) -> None:
    with pytest.raises(WriteError, match=r"not accepted|set by the engine"):
        engine.write(sql)
    with pytest.raises(WriteError, match=r"not accepted|set by the engine"):
        engine.write_batch([sql])
    assert count_rows(config.database.path, "sites") == 0
    # The engine's settings still hold: foreign keys are enforced.
    with pytest.raises(WriteError, match="FOREIGN KEY constraint failed"):
        engine.write_many("readings", [(1, 99, 1.0, None)])


def grouped(engine: Engine, config: Config, sends: Callable[[], list[Any]]) -> list[Any]:
    """Queue the sends while another connection holds the lock, so they commit as a group."""
    blocker = apsw.Connection(str(config.database.path))
    blocker.execute("BEGIN IMMEDIATE")
    try:
        before = engine.messages_sent("writer")
        futures = sends()
        assert engine.wait_for_sent("writer", before + len(futures), timeout=60)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    return futures


def sql_write(engine: Engine, sql: str) -> Any:
    return engine.ask_later("writer", Execute(sql=sql))


@pytest.mark.parametrize("culprit", [
    "INSERT OR ROLLBACK INTO sites (id, org, name, updated_at) VALUES (1, 'x', 'x', 'x')",
    "INSERT INTO sites (id, org, name, updated_at) VALUES (50, 'x', 'x', 'x'); COMMIT",
    "UPDATE sites SET org = 'boom' WHERE id = 1",
])
def test_a_message_that_ends_the_transaction_fails_alone_and_the_others_commit_once(
        make_config: Callable[..., Config], culprit: str) -> None:
    config = make_config(busy_timeout_ms=60_000)
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        engine.write("CREATE TRIGGER no_boom BEFORE UPDATE OF org ON sites "
                     "WHEN new.org = 'boom' BEGIN SELECT RAISE(ROLLBACK, 'no boom'); END")
        futures = grouped(engine, config, lambda: [
            engine.write_many("readings", [(1, 1, 1.0, "before")], wait=False),
            sql_write(engine, culprit),
            engine.write_many("readings", [(2, 1, 2.0, "after")], wait=False)])
        assert futures[0].get(timeout=60).changes == 1
        with pytest.raises(WriteError):
            futures[1].get(timeout=60)
        assert futures[2].get(timeout=60).changes == 1
        with engine.read() as conn:
            assert conn.execute("SELECT id, note FROM readings ORDER BY id").fetchall() == [
                (1, "before"), (2, "after")]
            assert conn.execute("SELECT id, org FROM sites").fetchall() == [(1, "acme")]
        state = engine.writer_state()
        assert state.failed_messages == 1 and state.rows_written == 3


def test_write_many_takes_tuples_lists_and_dicts(engine: Engine, config: Config) -> None:
    engine.write_many("sites", [site_row(1), list(site_row(2))])
    engine.write_many("sites", [{"id": 3, "org": "o", "name": "n", "updated_at": "t"}],
                      columns=["id", "org", "name", "updated_at"])
    assert count_rows(config.database.path, "sites") == 3


NOTES_YAML = """\
database: {{path: {db}}}
tables:
  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      title: {{type: text, not_null: true}}
      body: text
      status: {{type: text, not_null: true, default: new}}
      score: {{type: real, default: 1.5}}
message_log: {{enabled: false}}
status: {{enabled: false}}
"""


def test_dict_rows_may_leave_out_nullable_and_defaulted_columns(tmp_path: Path) -> None:
    config = parse_config(NOTES_YAML.format(db=tmp_path / "notes.db"), base_dir=tmp_path)
    with Engine(config) as engine:
        engine.write_many("notes", [{"title": "a"}, {"id": 7, "title": "b", "body": "x",
                                                     "status": "done"}])
        engine.upsert("notes", [{"id": 7, "title": "b2"}])  # body and status stay
        with engine.read() as conn:
            assert conn.execute("SELECT * FROM notes ORDER BY id").fetchall() == [
                (1, "a", None, "new", 1.5), (7, "b2", "x", "done", 1.5)]
        with pytest.raises(BadRowError, match="row 1 names other columns than row 0 "
                                              r"\(differing: body\)"):
            engine.upsert("notes", [{"id": 1, "title": "c"}, {"id": 2, "title": "d", "body": ""}])
        with pytest.raises(BadRowError, match=r"row 0 names column\(s\) colour, which table "
                                              "notes does not have"):
            engine.write_many("notes", [{"title": "e", "colour": "red"}])
        with pytest.raises(BadRowError, match="row 0 has no value for column 'title', which is "
                                              "NOT NULL without a default"):
            engine.write_many("notes", [{"id": 9}])
        # An upsert fills nothing in: a column it writes comes from every row.
        with pytest.raises(BadRowError, match="row 1 is a list among dicts"):
            engine.upsert("notes", [{"id": 7, "title": "b3"}, [1, "a", None, "new", 1.5]])
        with pytest.raises(BadRowError, match="row 0 has no value for column 'score', and an "
                                              "upsert writes every column it names"):
            engine.upsert("notes", [{"id": 7, "title": "b3"}], columns=["id", "title", "score"])
        with engine.read() as conn:
            assert conn.execute("SELECT * FROM notes ORDER BY id").fetchall() == [
                (1, "a", None, "new", 1.5), (7, "b2", "x", "done", 1.5)]


def test_a_bad_row_fails_its_whole_message_and_names_the_row(engine: Engine,
                                                             config: Config) -> None:
    rows = [site_row(i) for i in range(1, 1200)]
    rows[1100] = rows[1100][:3]
    with pytest.raises(BadRowError, match="row 1100 has 3 values, expected 5"):
        engine.write_many("sites", rows)
    with pytest.raises(BadRowError, match="row 0 has no value for column 'org'"):
        engine.write_many("sites", [{"id": 1}])
    with pytest.raises(WriteError, match="not declared"):
        engine.write_many("nowhere", [(1,)])
    with pytest.raises(WriteError, match="no column"):
        engine.write_many("sites", [(1,)], columns=["idd"])
    assert count_rows(config.database.path, "sites") == 0


def test_a_type_mismatch_in_a_strict_table_is_refused(engine: Engine, config: Config) -> None:
    with pytest.raises(WriteError, match="cannot store TEXT value in REAL column"):
        engine.write_many("sites", [site_row(1)])
        engine.write_many("readings", [(1, 1, "not a number", None)])
    assert count_rows(config.database.path, "readings") == 0


def test_upsert_updates_existing_rows_and_inserts_new_ones(engine: Engine,
                                                           config: Config) -> None:
    engine.write_many("sites", [site_row(1, body="old text"), site_row(2)])
    result = engine.upsert("sites", [site_row(1, body="new text"), site_row(3)])
    assert result.changes == 2
    with engine.read() as conn:
        assert conn.execute("SELECT id, body FROM sites ORDER BY id").fetchall() == [
            (1, "new text"), (2, "pump station number 2"), (3, "pump station number 3")]
        hits = conn.execute("SELECT rowid FROM sites_fts WHERE sites_fts MATCH 'old'").fetchall()
        assert hits == []


def traced_bulk(config: Config, message: InsertRows | UpsertRows, *,
                variable_limit: int | None = None) -> tuple[WriteResult, list[str]]:
    """Run one bulk message on a fresh Writer core; return its result and the SQL run."""
    conn = open_writer(config.database)
    try:
        apply_schema(conn, config)
        conn.execute("INSERT INTO sites (id, org, name, updated_at) VALUES (1, 'a', 'b', 'c')")
        if variable_limit is not None:
            conn.limit(apsw.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
        core = WriterCore(conn, config)
        statements: list[str] = []
        conn.exec_trace = lambda _cursor, sql, _bindings: statements.append(sql) or True
        [outcome] = core.commit_group([message])
        conn.exec_trace = None
    finally:
        conn.close()
    assert isinstance(outcome, WriteResult), outcome
    return outcome, [s for s in statements if s.startswith("INSERT")]


def test_bulk_statements_are_sized_by_the_connections_variable_limit(config: Config) -> None:
    rows = tuple((i, 1, float(i), None) for i in range(1, 8))
    result, inserts = traced_bulk(config, InsertRows(
        table="readings", columns=("id", "site_id", "value", "note"), rows=rows),
        variable_limit=12)
    assert result.changes == 7
    # 12 variables hold three rows of four values: 3 + 3 + 1 rows.
    assert [s.count("(?,?,?,?)") for s in inserts] == [3, 3, 1]


def test_a_table_with_secondary_indexes_gets_one_row_per_statement(config: Config) -> None:
    rows = tuple(site_row(i) for i in range(2, 12))
    result, inserts = traced_bulk(config, InsertRows(
        table="sites", columns=("id", "org", "name", "body", "updated_at"), rows=rows))
    assert result.changes == 10
    assert {s.count("(?,?,?,?,?)") for s in inserts} == {1}


def test_a_key_only_upsert_counts_only_the_rows_it_added(tmp_path: Path) -> None:
    config = parse_config(f"database: {{path: {tmp_path / 'k.db'}}}\n"
                          "tables:\n  tags:\n    columns:\n"
                          "      id: {type: integer, primary_key: true}\n      label: text\n")
    with Engine(config) as engine:
        engine.write_many("tags", [(1, "one")])
        result = engine.upsert("tags", [(1,), (2,), (3,)], columns=["id"])
        assert result.changes == 2
        with engine.read() as conn:
            assert conn.execute("SELECT id, label FROM tags ORDER BY id").fetchall() == [
                (1, "one"), (2, None), (3, None)]


def test_a_passive_checkpoint_runs_once_writes_pause(config: Config) -> None:
    now = [1000.0]
    conn = open_writer(config.database)
    try:
        apply_schema(conn, config)
        core = WriterCore(conn, config, clock=lambda: now[0])
        core.commit_group([InsertRows(table="sites", columns=(
            "id", "org", "name", "body", "updated_at"), rows=(site_row(1),))])
        assert core.wal_frames > 0
        now[0] += config.database.checkpoint_idle_ms / 1000 / 2
        assert core.idle_check() is True
        assert core.checkpoints == 0
        now[0] += config.database.checkpoint_idle_ms / 1000
        assert core.idle_check() is False
        assert core.checkpoints == 1 and core.wal_frames == 0
    finally:
        conn.close()


def test_writes_queued_while_a_transaction_runs_commit_together(
        make_config: Callable[..., Config]) -> None:
    config = make_config(busy_timeout_ms=60_000)
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        base = engine.writer_state()
        # Another connection holds the write lock, so the Writer's first
        # transaction waits while the other threads' writes queue behind it.
        blocker = apsw.Connection(str(config.database.path))
        blocker.set_busy_timeout(60_000)
        blocker.execute("BEGIN IMMEDIATE")
        threads_n, per_thread = 4, 25
        start = threading.Barrier(threads_n)
        errors: list[BaseException] = []

        def writer(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    engine.write("INSERT INTO readings (site_id, value) VALUES (1, ?)",
                                 (t * 1000 + i,))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        sent = engine.messages_sent("writer")
        for thread in threads:
            thread.start()
        # Every thread's first write is sent while none can commit.
        assert engine.wait_for_sent("writer", sent + threads_n, timeout=60)
        blocker.execute("COMMIT")
        blocker.close()
        for thread in threads:
            thread.join()
        state = engine.writer_state()
    assert errors == []
    messages = state.messages - base.messages
    transactions = state.transactions - base.transactions
    assert messages == threads_n * per_thread
    assert transactions < messages
    assert count_rows(config.database.path, "readings") == threads_n * per_thread


def test_a_failing_write_in_a_group_fails_alone(make_config: Callable[..., Config]) -> None:
    config = make_config(busy_timeout_ms=60_000)
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        first, bad, good = grouped(engine, config, lambda: [
            engine.write_many("readings", [(1, 1, 1.0, "a")], wait=False),
            engine.write_many("readings", [(2, 99, 2.0, "no such site")], wait=False),
            engine.write_many("readings", [(3, 1, 3.0, "c")], wait=False)])
        first.get()
        with pytest.raises(WriteError, match="FOREIGN KEY constraint failed"):
            bad.get()
        good.get()
        with engine.read() as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id")] == [1, 3]


def test_writes_queued_behind_a_held_lock_commit_in_at_most_two_transactions(
        make_config: Callable[..., Config]) -> None:
    config = make_config(busy_timeout_ms=60_000)
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        base = engine.writer_state()
        futures = grouped(engine, config, lambda: [
            engine.write_many("readings", [(i, 1, float(i), None)], wait=False)
            for i in range(1, 51)])
        assert [f.get(timeout=60).changes for f in futures] == [1] * 50
        state = engine.writer_state()
    # The first write may have begun its transaction alone; the rest wait and share one.
    assert state.messages - base.messages == 50
    assert state.transactions - base.transactions <= 2


def test_named_parameters_are_refused_with_a_clear_message(engine: Engine) -> None:
    with pytest.raises(WriteError, match="must be a sequence"):
        engine.write("UPDATE sites SET org = :org", {"org": "x"})  # type: ignore[arg-type]


def test_status_answers_while_the_writer_is_stuck_behind_a_lock(
        make_config: Callable[..., Config]) -> None:
    config = make_config(busy_timeout_ms=60_000)
    with Engine(config) as engine:
        blocker = apsw.Connection(str(config.database.path))
        blocker.execute("BEGIN IMMEDIATE")
        try:
            # Queued before the status ask, so the Writer is busy with it first.
            stuck = engine.write_many("sites", [site_row(1)], wait=False)
            status = engine.status()
            assert "no answer within" in status["writer"]["error"]
            assert status["state"] == "running"
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert stuck.get(timeout=60).changes == 1


def wal_size(config: Config) -> int:
    try:
        return os.path.getsize(str(config.database.path) + "-wal")
    except FileNotFoundError:
        return 0


def test_a_forced_checkpoint_shrinks_the_wal_once_a_long_lived_reader_lets_go(
        make_config: Callable[..., Config]) -> None:
    config = make_config(wal_threshold_mb=0.25)
    threshold = 256 * 1024
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        text = "x" * 400
        with engine.read() as reader:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM readings").fetchone() == (0,)
            for batch in range(20):
                engine.write_many("readings", [(batch * 100 + i, 1, float(i), text)
                                               for i in range(1, 101)])
            held = engine.writer_state()
            grown = wal_size(config)
            # The reader still sees its snapshot, and the WAL could not be reset.
            assert reader.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        assert grown > 2 * threshold
        assert held.busy_checkpoints > 0
        engine.write_many("readings", [(5000, 1, 1.0, "after")])
        after = engine.writer_state()
        assert after.forced_checkpoints > held.forced_checkpoints
        assert wal_size(config) < threshold
        assert count_rows(config.database.path, "readings") == 2001


def test_an_explicit_checkpoint_reports_what_it_did(engine: Engine) -> None:
    engine.write_many("sites", [site_row(i) for i in range(1, 50)])
    result = engine.checkpoint("truncate")
    assert not result.busy and result.wal_file_bytes == 0
    with pytest.raises(WriteError, match="unknown checkpoint mode"):
        engine.checkpoint("sometimes")


def test_status_reports_the_writer_and_the_wal(engine: Engine, config: Config,
                                               tmp_path: Path) -> None:
    engine.write_many("sites", [site_row(i) for i in range(1, 20)])
    status = engine.status()
    assert status["state"] == "running"
    writer = status["writer"]
    assert writer["rows_written"] == 19 and writer["transactions"] >= 1
    assert writer["variable_limit"] >= 999
    assert writer["wal_file_bytes"] == status["database"]["wal_bytes"] > 0
    assert writer["queue_depth"] == 0
