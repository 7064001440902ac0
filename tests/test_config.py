"""Config: valid files parse into frozen dataclasses; broken ones fail with one clear line."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlwarden.cli import main
from sqlwarden.config import load_config, parse_config
from sqlwarden.config.yamldoc import parse_yaml
from sqlwarden.errors import ConfigError

from .conftest import ROOT, files_under

GOOD_TABLE = """\
tables:
  sites:
    columns:
      id: {type: integer, primary_key: true}
      name: text
"""


TASKS = ("database: {path: x.db}\n" + GOOD_TABLE
         + "      code: {type: text, unique: true}\n"
         + "      slug: {type: text, unique: true, not_null: true}\n" + "tasks:\n  t:\n")


def test_the_demo_config_is_valid() -> None:
    config = load_config(ROOT / "configs" / "demo.yaml", check_paths=False)
    assert [t.name for t in config.tables] == ["registry", "observations", "orgs"]
    assert [t.name for t in config.tasks] == ["registry_last_seen", "observation_units",
                                              "org_directory"]
    registry = config.table("registry")
    assert registry.fts is not None and registry.fts.columns == ("name", "body")
    assert config.sources[0].observation_rows >= 200_000


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = parse_config(f"database: {{path: {tmp_path / 'x.db'}}}\n" + GOOD_TABLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.database.busy_timeout_ms = 1  # type: ignore[misc]


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text("database: {path: ../data/x.db}\n")
    config = load_config(path)
    assert config.database.path == tmp_path / "data" / "x.db"
    assert config.message_log_path == tmp_path / "data" / "x.db.messages.jsonl"


def test_environment_variables_are_interpolated_with_defaults_and_types(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        database:
          path: ${SW_DIR}/x.db
          busy_timeout_ms: ${SW_TIMEOUT}
          readers: ${SW_UNSET:-3}
        status:
          port: ${SW_PORT}
        """)
    config = parse_config(text, environ={"SW_DIR": str(tmp_path), "SW_TIMEOUT": "250",
                                         "SW_PORT": "8080"}, check_paths=False)
    assert config.database.path == tmp_path / "x.db"
    assert config.database.busy_timeout_ms == 250
    assert config.database.readers == 3
    assert config.status.port == 8080
    # A quoted reference stays text, and the port must be an integer.
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_config(text.replace("${SW_PORT}", '"${SW_PORT}"'), environ={
            "SW_DIR": str(tmp_path), "SW_TIMEOUT": "250", "SW_PORT": "8080"},
            check_paths=False)


def test_values_under_secret_keys_are_remembered_as_secrets() -> None:
    doc = parse_yaml("mirror:\n  password: ${SW_PW}\n  user: ${SW_USER}\n", file="c.yaml",
                     environ={"SW_PW": "hunter2", "SW_USER": "bob"})
    assert doc.secrets == frozenset({"hunter2"})


MIRRORED = ("database: {path: x.db}\n" + GOOD_TABLE
            + "      score: real\n      at: timestamp\n"
            + "mirror:\n  dsn: mysql://sw:${SW_DB_PASSWORD}@db.example:3307/fleet\n"
            + "  scope: dev-17\n")


def test_a_mirror_section_is_parsed_and_its_password_kept_secret() -> None:
    config = parse_config(MIRRORED, file="c.yaml", environ={"SW_DB_PASSWORD": "s3cr:t@x"},
                          check_paths=False)
    mirror = config.mirror
    assert mirror is not None
    assert (mirror.dsn.user, mirror.dsn.password, mirror.dsn.host, mirror.dsn.port,
            mirror.dsn.database) == ("sw", "s3cr:t@x", "db.example", 3307, "fleet")
    assert mirror.tables == ("sites",) and mirror.scope == "dev-17"
    assert "s3cr:t@x" in config.secrets
    assert "s3cr" not in repr(config.mirror) and "s3cr" not in mirror.dsn.where


@pytest.mark.parametrize(("change", "words"), [
    pytest.param(("mysql://sw:${SW_DB_PASSWORD}@db.example:3307/fleet", "mysql//sw:hunter2@db/f"),
                 "expected a DSN of the form", id="malformed-dsn"),
    pytest.param(("db.example:3307", "db.example:99999"), "port '99999'", id="bad-port"),
    pytest.param(("  scope: dev-17\n", "  scope: dev-17\n  tables: [sites, nosuch]\n"),
                 "table 'nosuch' is not declared", id="unknown-table"),
    pytest.param(("  scope: dev-17\n", ""), "missing required key 'scope'", id="no-scope"),
    pytest.param(("      at: timestamp\n", "      at: any\n"), "has type 'any'", id="any-column"),
    pytest.param(("  scope: dev-17\n", "  scope: dev-17\n  scope_column: name\n"),
                 "already has a column 'name'", id="scope-column-clash"),
    pytest.param(("  scope: dev-17\n", "  scope: dev-17\n  backoff_initial_s: 10\n"
                                        "  backoff_max_s: 5\n"),
                 "backoff_max_s (5) is less than", id="backoff-order"),
])
def test_a_bad_mirror_section_names_the_key_and_never_the_password(
        change: tuple[str, str], words: str) -> None:
    text = MIRRORED.replace(*change)
    assert text != MIRRORED
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="c.yaml", environ={"SW_DB_PASSWORD": "hunter2"},
                     check_paths=False)
    message = str(info.value)
    assert words in message and "mirror" in message and "\n" not in message
    assert "hunter2" not in message


def test_an_unknown_key_suggests_the_closest_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"database:\n  path: {tmp_path / 'x.db'}\n  busy_timeot_ms: 5\n",
                     file="c.yaml")
    assert str(info.value) == ("c.yaml:3: database.busy_timeot_ms: unknown key 'busy_timeot_ms' "
                               "(did you mean 'busy_timeout_ms'?); expected one of: path, "
                               "journal_mode, synchronous, busy_timeout_ms, wal_threshold_mb, "
                               "checkpoint_idle_ms, readers")


def _unwritable_dir(tmp_path: Path) -> str:
    if os.geteuid() == 0:
        # Root may write anywhere a mode bit forbids; /sys refuses even root.
        return "/sys/sqlwarden-test"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return str(locked)


# Each case: (config text, line, key path, words the message must contain).
# `{tmp}` is the test's folder; `{locked}` a folder nobody may write into.
BROKEN = [
    pytest.param("database:\n  path: [unclosed\n", 3, "", "invalid YAML", id="yaml-syntax"),
    pytest.param("database:\n  path: x.db\n   readers: 2\n", 3, "", "invalid YAML",
                 id="yaml-indentation"),
    pytest.param("\x00\x01binary", None, "", "invalid YAML: unacceptable character",
                 id="control-characters"),
    pytest.param("", None, "", "the config is empty", id="empty-file"),
    pytest.param("- database\n- tables\n", 1, "", "expected a mapping, got a list",
                 id="top-level-list"),
    pytest.param("databse:\n  path: x.db\n", 1, "databse", "did you mean 'database'",
                 id="unknown-section"),
    pytest.param("mirror: {}\ndatabase: {path: x.db}\n", 1, "mirror",
                 "missing required key 'dsn'", id="mirror-without-dsn"),
    pytest.param(GOOD_TABLE, 1, "", "missing required key 'database'", id="no-database"),
    pytest.param("database:\n  journal_mode: wal\n", 1, "database",
                 "missing required key 'path'", id="missing-database-path"),
    pytest.param("database:\n  path: x.db\n  busy_timeout_ms: soon\n", 3,
                 "database.busy_timeout_ms", "expected an integer, got text 'soon'",
                 id="wrong-type"),
    pytest.param("database:\n  path: x.db\n  readers: 0\n", 3, "database.readers",
                 "at least 1", id="out-of-range"),
    pytest.param("database:\n  path: x.db\n  journal_mode: wall\n", 3, "database.journal_mode",
                 "did you mean 'wal'", id="bad-choice"),
    pytest.param("database:\n  path: x.db\n  path: y.db\n", 3, "database.path", "duplicate key",
                 id="duplicate-key"),
    pytest.param('database: {path: x.db}\ntables:\n  \'a"; DROP TABLE x; --\':\n'
                 '    columns: {id: integer}\n    primary_key: id\n', 3,
                 'tables.a"; DROP TABLE x; --', "is not allowed", id="unsafe-table-name"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      \"id) ; DROP\": integer\n    primary_key: id\n", 5,
                 "tables.sites.columns.id) ; DROP", "is not allowed", id="unsafe-column-name"),
    pytest.param("database: {path: x.db}\ntables:\n  _sw_tasks:\n    columns: {id: integer}\n"
                 "    primary_key: id\n", 3, "tables._sw_tasks", "prefix", id="reserved-name"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: varchar\n    primary_key: id\n", 5, "tables.sites.columns.id",
                 "expected one of integer, real, text", id="unknown-column-type"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: {type: integer, not_nul: true}\n    primary_key: id\n", 5,
                 "tables.sites.columns.id.not_nul", "did you mean 'not_null'",
                 id="unknown-column-key"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n      id: integer\n",
                 3, "tables.sites", "expected a primary key", id="no-primary-key"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "    indexes:\n      - [nmae]\n", 8,
                 "tables.sites.indexes[0][0]", "did you mean 'name'", id="index-unknown-column"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n      size: integer\n"
                 "    fts: [size]\n", 7, "tables.sites.fts", "only text columns",
                 id="fts-on-a-number"),
    pytest.param("database: {path: x.db}\ntables:\n  readings:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n"
                 "      site_id: {type: integer, references: site.id}\n", 6,
                 "tables.readings.columns.site_id", "not declared", id="reference-unknown-table"),
    pytest.param("database:\n  path: ${SW_TEST_SURELY_UNSET}/x.db\n", 2, "database.path",
                 "environment variable SW_TEST_SURELY_UNSET is not set", id="unset-variable"),
    pytest.param("database:\n  path: {locked}/x.db\n", 2, "database.path", "not writable",
                 id="unwritable-directory"),
    pytest.param("database:\n  path: {tmp}\n", 2, "database.path", "is not a regular file",
                 id="path-is-a-directory"),
    pytest.param("database: {path: x.db}\nmessage_log:\n  payload: everything\n", 3,
                 "message_log.payload", "expected one of summary, full", id="bad-payload"),
    pytest.param("database: {path: x.db}\nstatus:\n  port: 70000\n", 3, "status.port",
                 "at most 65535", id="port-out-of-range"),
    pytest.param("database: {path: x.db}\nsources:\n  feed:\n    kind: ftp\n", 4,
                 "sources.feed.kind", "expected one of ndjson, http, generator",
                 id="unknown-source-kind"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  api:\n    kind: http\n"
                 "    table: sites\n", 8, "sources.api", "missing required key 'url'",
                 id="http-without-url"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  api:\n    kind: http\n"
                 "    table: sites\n    url: ftp://x\n", 11, "sources.api.url",
                 "expected an http:// or https:// URL", id="http-bad-url"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  api:\n    kind: http\n"
                 "    table: sites\n    url: http://h/x\n", 8, "sources.api",
                 "the cursor column 'updated' is not mapped", id="http-no-cursor-column"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  f:\n    kind: ndjson\n"
                 "    table: sites\n    path: in\n    fields: {nme: name}\n", 12,
                 "sources.f.fields.nme", "has no column 'nme' (did you mean 'name'?)",
                 id="ndjson-unknown-column"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  f:\n    kind: ndjson\n"
                 "    table: sites\n    path: in\n    fields: {name: title}\n", 8, "sources.f",
                 "key column id is not mapped", id="ndjson-key-not-mapped"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  f:\n    kind: ndjson\n"
                 "    table: sites\n    path: in\n    every: soon\n", 12, "sources.f.every",
                 "expected a duration such as 30s", id="bad-duration"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  f:\n    kind: ndjson\n"
                 "    table: sites\n    path: in\n    on_reject: skip\n", 12,
                 "sources.f.on_reject", "expected one of keep, fail", id="bad-on-reject"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "sources:\n  f:\n    kind: ndjson\n"
                 "    table: nope\n    path: in\n", 10, "sources.f.table",
                 "table 'nope' is not declared", id="source-unknown-table"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "    indexes:\n"
                 "      - {columns: [name], name: sites}\n", 8, "tables.sites.indexes[0]",
                 "already used by table 'sites'", id="index-named-like-a-table"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "    fts: [name]\n"
                 "  sites_fts_ai:\n    columns: {id: {type: integer, primary_key: true}}\n", 7,
                 "tables.sites.fts", "already used by table 'sites_fts_ai'",
                 id="table-named-like-an-fts-trigger"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n      rank: text\n"
                 "    fts: [rank]\n", 7, "tables.sites.fts", "'rank'",
                 id="fts-column-named-rank"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "    fts:\n      columns: [name]\n"
                 "      tokenize: unicode62\n", 9, "tables.sites.fts.tokenize",
                 "did you mean 'unicode61'", id="unknown-tokenizer"),
    pytest.param("database: {path: x.db}\n" + GOOD_TABLE + "  notes:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n"
                 "      site_name: {type: text, references: sites.name}\n", 10,
                 "tables.notes.columns.site_name", "neither the primary key",
                 id="reference-to-a-non-unique-column"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n"
                 "      size: {type: integer, default: big}\n", 6,
                 "tables.sites.columns.size.default", "must be an integer",
                 id="default-of-the-wrong-type"),
    pytest.param("database: {path: x.db}\ntables:\n  sites:\n    columns:\n"
                 "      id: {type: integer, primary_key: true}\n      rowid: integer\n", 6,
                 "tables.sites.columns.rowid", "name for the rowid", id="column-named-rowid"),
    # Lines below count from a header of 8 lines; TASKS is longer.
    *[pytest.param(TASKS + body, line + TASKS.count("\n") - 8, key_path, words,
                   id=f"task-{name}")
      for name, body, line, key_path, words in (
        ("unknown-table", "    table: site\n    set: {name: upper(name)}\n", 9, "tasks.t.table",
         "table 'site' is not declared (did you mean 'sites'?)"),
        ("unknown-column", "    table: sites\n    set: {nme: upper(name)}\n", 10,
         "tasks.t.set", "table 'sites' has no column 'nme' (did you mean 'name'?)"),
        ("two-changes", "    table: sites\n    set: {name: upper(name)}\n    sql: x :lo :hi\n",
         11, "tasks.t.sql", "exactly one of 'set', 'call' or 'sql'; found set and sql"),
        ("no-change", "    table: sites\n", 8, "tasks.t", "exactly one of 'set', 'call' or"),
        ("sql-without-range", "    table: sites\n    sql: DELETE FROM sites\n", 10,
         "tasks.t.sql", "must use :lo and :hi"),
        ("changes-the-key", "    table: sites\n    set: {id: id + 1}\n", 10, "tasks.t.set",
         "is the key chunks are cut along"),
        ("key-not-unique", "    table: sites\n    key: name\n    set: {name: upper(name)}\n",
         10, "tasks.t.key", "column 'name' is not unique"),
        ("key-may-be-null", "    table: sites\n    key: code\n    set: {name: upper(name)}\n",
         10, "tasks.t.key", "column 'code' may be NULL"),
        ("sql-with-a-text-key", "    table: sites\n    key: slug\n    sql: x :lo :hi\n", 10,
         "tasks.t.key", "an 'sql' task needs a numeric key"),
        ("bad-callable", "    table: sites\n    call: not a path\n    writes: [name]\n", 10,
         "tasks.t.call", "expected 'module:function'"),
        ("callable-without-writes", "    table: sites\n    call: mod:fn\n", 10, "tasks.t.call",
         "must list the columns it writes"),
        ("rows-backwards", "    table: sites\n    set: {name: upper(name)}\n    min_rows: 10\n"
         "    max_rows: 5\n", 12, "tasks.t.max_rows", "max_rows (5) is below min_rows (10)"),
        ("negative-yield", "    table: sites\n    set: {name: upper(name)}\n    yield_ms: -1\n",
         11, "tasks.t.yield_ms", "at least 0"),
        ("unknown-key", "    table: sites\n    set: {name: upper(name)}\n    wher: x\n", 11,
         "tasks.t.wher", "did you mean 'where'"),
      )],
    pytest.param(TASKS + "    table: sites\n    set: {name: upper(name)}\n    provides: p\n"
                 "  u:\n    table: sites\n    set: {name: lower(name)}\n    provides: p\n", 17,
                 "tasks.u.provides", "'p' is already provided by task 't'",
                 id="task-provides-twice"),
    pytest.param("database: {path: x.db}\nprogress: {persist_interval_s: 0.1}\n", 2,
                 "progress.persist_interval_s", "at least 1.0", id="progress-too-often"),
    pytest.param("database: {path: x.db}\nfts_deferral: {rebuild_share: 1.5}\n", 2,
                 "fts_deferral.rebuild_share", "at most 1.0", id="fts-share-above-one"),
    pytest.param("database: {path: x.db}\nfts_deferral: {threshold_rows: -1}\n", 2,
                 "fts_deferral.threshold_rows", "at least 1", id="fts-negative-threshold"),
    pytest.param("database: {path: x.db}\nfts_deferral: {retry_initial_s: 60, "
                 "retry_max_s: 10}\n", 2, "fts_deferral.retry_max_s", "less than",
                 id="fts-retry-cap-below-start"),
    pytest.param("database: {path: x.db}\nfts_deferral: {max_age: 10}\n", 2,
                 "fts_deferral.max_age", "max_age_s", id="fts-misspelt-key"),
]


@pytest.mark.parametrize(("text", "line", "key_path", "words"), BROKEN)
def test_a_broken_config_fails_with_one_line_naming_where_and_creates_nothing(
        tmp_path: Path, write_file: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str],
        text: str, line: int | None, key_path: str, words: str) -> None:
    text = text.replace("{tmp}", str(tmp_path)).replace("{locked}", _unwritable_dir(tmp_path))
    path = write_file(text, "broken.yaml")
    before = files_under(tmp_path)
    for command in (["check-config", str(path)], ["run", str(path), "--once"],
                    ["status", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        where = f"{path}:{line}" if line is not None else str(path)
        assert where in err
        if key_path:
            assert f": {key_path}: " in err
        assert words in err
        assert "Traceback" not in err
    assert files_under(tmp_path) == before


def test_a_valid_config_is_reported_ok(write_file: Callable[[str, str], Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_file(f"database: {{path: {tmp_path / 'x.db'}}}\n" + GOOD_TABLE)
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "sites" in out
    assert not (tmp_path / "x.db").exists()
