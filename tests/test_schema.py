"""Schema: created on first start, unchanged on later ones, refused when unsafe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sqlwarden.cli import main
from sqlwarden.config import Config, parse_config
from sqlwarden.db.schema import ENGINE_SCHEMA_VERSION
from sqlwarden.errors import SchemaError
from sqlwarden.facade import Engine

from .conftest import files_under, read_only, site_row, sites_yaml


def master(path: Path) -> list[tuple[str, str, str]]:
    conn = read_only(path)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def search(path: Path, query: str, table: str = "sites_fts") -> list[int]:
    conn = read_only(path)
    try:
        return [r[0] for r in conn.execute(
            f"SELECT rowid FROM {table} WHERE {table} MATCH ? ORDER BY rowid", (query,))]
    finally:
        conn.close()


def test_first_start_creates_tables_indexes_fts_and_bookkeeping(config: Config) -> None:
    with Engine(config):
        pass
    names = {name for _, name, _ in master(config.database.path)}
    assert {"sites", "readings", "idx_sites_org_updated_at", "sites_fts", "sites_fts_ai",
            "sites_fts_ad", "sites_fts_au", "_sw_meta", "_sw_tasks", "_sw_sync_runs",
            "_sw_sync_files", "_sw_rejects"} <= names
    conn = read_only(config.database.path)
    assert conn.execute("SELECT value FROM _sw_meta WHERE key = 'schema_version'").fetchone() \
        == (str(ENGINE_SCHEMA_VERSION),)
    conn.close()


def test_schema_is_unchanged_by_later_starts(config: Config) -> None:
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(i) for i in range(1, 11)])
    first = master(config.database.path)
    for _ in range(2):
        with Engine(config):
            pass
    assert master(config.database.path) == first
    assert search(config.database.path, "pump") == list(range(1, 11))


def test_fts_follows_inserts_updates_and_deletes(engine: Engine, config: Config) -> None:
    engine.write_many("sites", [site_row(1, body="river pump"), site_row(2, body="lake valve")])
    engine.write("UPDATE sites SET body = 'lake pump' WHERE id = 2")
    engine.write("DELETE FROM sites WHERE id = 1")
    assert search(config.database.path, "pump") == [2]
    assert search(config.database.path, "river") == []
    assert search(config.database.path, "valve") == []


def _changed(tmp_path: Path, old: str, new: str) -> Config:
    text = sites_yaml(tmp_path)
    assert old in text
    return parse_config(text.replace(old, new), file="changed.yaml", base_dir=tmp_path)


@pytest.mark.parametrize(("old", "new", "words"), [
    pytest.param("value: real", "value: text", "readings.value is REAL in the database but "
                 "declared text", id="changed-type"),
    pytest.param("      note: text\n", "", "readings.note exists in the database but is not "
                 "declared", id="dropped-column"),
    pytest.param("      note: text\n", "      note: text\n      batch: {type: integer, "
                 "not_null: true}\n", "NOT NULL without a default", id="not-null-column-added"),
    pytest.param("value: real", "value: {type: real, not_null: true}", "readings.value is "
                 "nullable in the database but declared not_null: true", id="made-not-null"),
    pytest.param("site_id: {type: integer, not_null: true, references: sites.id}",
                 "site_id: {type: integer, not_null: true}", "foreign key",
                 id="dropped-reference"),
])
def test_an_unsafe_schema_change_is_refused_and_changes_nothing(
        tmp_path: Path, config: Config, capsys: pytest.CaptureFixture[str],
        old: str, new: str, words: str) -> None:
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        engine.write_many("readings", [(1, 1, 2.5, "ok")])
    changed = _changed(tmp_path, old, new)
    before = database_files(config)
    with pytest.raises(SchemaError, match=words):
        Engine(changed).start()
    path = tmp_path / "changed.yaml"
    path.write_text(sites_yaml(tmp_path).replace(old, new))
    assert main(["run", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert database_files(config) == before


def database_files(config: Config) -> dict[str, bytes]:
    return {name: data for name, data in files_under(config.database.path.parent).items()
            if not name.endswith(".jsonl")}


def test_a_new_nullable_column_is_added_and_old_rows_keep_their_data(
        tmp_path: Path, config: Config) -> None:
    with Engine(config) as engine:
        engine.write_many("readings", [], columns=None)
        engine.write_many("sites", [site_row(1)])
        engine.write_many("readings", [(1, 1, 2.5, "ok")])
    changed = _changed(tmp_path, "      note: text\n",
                       "      note: text\n      source: {type: text, default: manual}\n")
    with Engine(changed) as engine, engine.read() as conn:
        assert conn.execute("SELECT id, value, note, source FROM readings").fetchall() \
                == [(1, 2.5, "ok", "manual")]


def test_a_changed_fts_tokenizer_rebuilds_the_index_from_the_data(
        tmp_path: Path, config: Config) -> None:
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1, body="two pumps")])
    assert search(config.database.path, "pump") == []
    changed = _changed(tmp_path, "fts: [name, body]",
                       "fts: {columns: [name, body], tokenize: porter unicode61}")
    with Engine(changed):
        pass
    assert search(config.database.path, "pump") == [1]


def test_a_changed_index_is_rebuilt(tmp_path: Path, config: Config,
                                    make_config: Callable[..., Config]) -> None:
    with Engine(config):
        pass
    changed = _changed(tmp_path, "- [org, updated_at]",
                       "- {columns: [org, updated_at, name], name: idx_sites_org_updated_at}")
    with Engine(changed):
        pass
    sql = {name: s for _, name, s in master(config.database.path)}
    assert '"name"' in sql["idx_sites_org_updated_at"]
