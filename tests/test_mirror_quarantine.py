"""Mirror quarantine against the real MariaDB: a value the mirror cannot hold or the server
refuses is set aside alone, named by its key, shown in status, /metrics and `mirror verify`;
every other row and table keeps mirroring; the row goes when it is fixed or retried."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine

from .conftest import run_sqlwarden
from .support.mariadb import MirrorDb
from .test_mirror import (
    FAST,
    assert_mirror_equals_sqlite,
    boot_reconciled,
    mirror_rows,
    sqlite_rows,
    wait_for,
)

TABLES = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: text
      score: real
      at: timestamp
    indexes:
      - [name]
      - [at, score]
  tags:
    columns:
      tag: {type: text, primary_key: true}
      note: text
"""


def config_text(tmp_path: Path, dsn: str | None, *, status: bool = False) -> str:
    mirror = "" if dsn is None else (
        f"mirror:\n  dsn: {dsn}\n  scope: dev1\n"
        + "".join(f"  {key}: {value}\n" for key, value in FAST.items()))
    return f"""\
database: {{path: {tmp_path / 'dev.db'}}}
tables:
{TABLES}{mirror}status: {{enabled: {str(status).lower()}, port: 0}}
message_log: {{path: {tmp_path / 'messages.jsonl'}}}
"""


def make_config(tmp_path: Path, dsn: str | None, *, status: bool = False) -> Config:
    return parse_config(config_text(tmp_path, dsn, status=status), file="test.yaml",
                        base_dir=tmp_path)


def quarantine(engine: Engine) -> dict[str, Any]:
    found: dict[str, Any] = engine.status()["mirror"]["quarantine"]
    return found


def settled(engine: Engine, count: int) -> dict[str, Any]:
    """Until the outbox is empty and `count` rows are quarantined; the mirror's status."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(engine.status()["mirror"])
        assert seen["state"] != "failed", f"the mirror failed: {seen['error']}"
        return seen["outbox"]["depth"] == 0 and seen["quarantine"]["count"] == count

    wait_for(done, 30, lambda: f"{count} quarantined rows and an empty outbox "
                               f"(state {seen.get('state')}, outbox {seen.get('outbox')}, "
                               f"quarantine {seen.get('quarantine')})")
    return seen


def mirror_keys(mirror_db: MirrorDb, table: str, key: str) -> list[Any]:
    return [row[0] for row in mirror_rows(mirror_db, table, "dev1", [key], [key])]


def assert_mirror_equals_sqlite_but(engine: Engine, mirror_db: MirrorDb, table: str,
                                    missing: Any) -> None:
    """The mirror holds every row of `table` SQLite holds, value for value, but `missing`."""
    columns, key, local = sqlite_rows(engine, table)
    remote = mirror_rows(mirror_db, table, "dev1", columns, key)
    assert [r for r in local if r[0] != missing] == remote
    assert any(r[0] == missing for r in local)


@pytest.fixture
def config_file(tmp_path: Path, mirror_db: MirrorDb) -> Path:
    path = tmp_path / "test.yaml"
    path.write_text(config_text(tmp_path, mirror_db.dsn, status=True))
    return path


TAG_800 = "k" * 800
POISONS = {
    # name: (SQL that writes the poison row, its table and key, what the reason says,
    #        SQL that fixes it locally)
    "infinite real": ("INSERT INTO items (id, name, score) VALUES (5, 'five', 1e999)",
                      "items", 5, "non-finite float in column score",
                      "UPDATE items SET score = 1.5 WHERE id = 5"),
    "800-character text key": (f"INSERT INTO tags (tag, note) VALUES ('{TAG_800}', 'long')",
                               "tags", TAG_800, "text key in column tag is 800 characters; "
                               "the mirror column holds 703",
                               # Cut to 700: what an index holds still mirrors.
                               "UPDATE tags SET tag = substr(tag, 1, 700)"),
    "over-long timestamp": ("INSERT INTO items (id, name, at) VALUES "
                            f"(5, 'five', '2026-01-01T00:00:00.{'1' * 80}Z')",
                            "items", 5, "timestamp text in column at is 101 characters; "
                            "the mirror column holds 64",
                            "UPDATE items SET at = '2026-01-01T00:00:00.123456Z' WHERE id = 5"),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poison_value_is_quarantined_by_key_and_every_other_row_keeps_mirroring(
        tmp_path: Path, mirror_db: MirrorDb, poison: str) -> None:
    write, table, key, reason, fix = POISONS[poison]
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        boot_reconciled(engine)
        engine.write_many("items", [(i, f"item {i}", i / 4, None) for i in range(1, 5)])
        engine.write(write)
        # Rows of both tables after it, in the same drain or the next.
        engine.write_many("items", [(i, f"item {i}", i / 4, None) for i in range(6, 40)])
        engine.write_many("tags", [(f"tag {i}", None) for i in range(20)])
        seen = settled(engine, 1)
        assert seen["state"] == "up" and seen["error"] is None
        (entry,) = seen["quarantine"]["recent"]
        assert (entry["table"], entry["key"]) == (table, key)
        assert reason in entry["reason"]
        assert_mirror_equals_sqlite_but(engine, mirror_db, table, key)
        other = "tags" if table == "items" else "items"
        assert assert_mirror_equals_sqlite(engine, mirror_db, other) > 0

        # A reconcile neither fails on it nor copies it again and again.
        for _ in range(2):
            view = engine.mirror.reconcile(timeout=30)
            assert view.in_sync and all(t.copied == 0 for t in view.tables)

        engine.write(fix)
        settled(engine, 0)
        assert_mirror_equals_sqlite(engine, mirror_db, "items")
        assert_mirror_equals_sqlite(engine, mirror_db, "tags")
        if table == "tags":
            assert max(len(k) for k in mirror_keys(mirror_db, "tags", "tag")) == 700


def test_a_key_as_long_as_an_index_holds_mirrors(tmp_path: Path, mirror_db: MirrorDb) -> None:
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        boot_reconciled(engine)
        engine.write_many("tags", [("é" * 703, "accented"), ("z" * 703, None)])
        settled(engine, 0)
        assert assert_mirror_equals_sqlite(engine, mirror_db, "tags") == 2


def test_status_metrics_and_verify_show_the_quarantined_row(
        tmp_path: Path, mirror_db: MirrorDb, config_file: Path) -> None:
    config = make_config(tmp_path, mirror_db.dsn, status=True)
    with Engine(config) as engine:
        boot_reconciled(engine)
        engine.write_many("items", [(i, f"item {i}", 1.0, None) for i in range(1, 10)])
        engine.write("UPDATE items SET score = -1e999 WHERE id = 7")
        settled(engine, 1)
        assert engine.status_url is not None
        with urllib.request.urlopen(f"{engine.status_url}/status", timeout=10) as response:
            shown = json.load(response)["mirror"]["quarantine"]
        assert shown["count"] == 1 and shown["recent"][0]["key"] == 7
        with urllib.request.urlopen(f"{engine.status_url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert "sqlwarden_mirror_quarantined_rows 1.0" in metrics.splitlines()

        done = run_sqlwarden("mirror", "verify", str(config_file))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "1 rows are quarantined" in done.stdout
    assert "items key 7" in done.stdout and "non-finite float in column score" in done.stdout
    assert "in sync except for the quarantined rows" in done.stdout


def test_rows_the_server_refuses_are_found_alone_and_sent_again_on_request(
        tmp_path: Path, mirror_db: MirrorDb, config_file: Path) -> None:
    config = make_config(tmp_path, mirror_db.dsn, status=True)
    with Engine(config) as engine:
        boot_reconciled(engine)
        # Someone narrowed the column on the server: it refuses longer names.
        mirror_db.server.query("ALTER TABLE items MODIFY name VARCHAR(8)",
                               database=mirror_db.database)
        engine.write_many("items", [(i, "x" * (20 if i in (13, 77) else 5), 1.0, None)
                                    for i in range(1, 101)])
        seen = settled(engine, 2)
        assert sorted(e["key"] for e in seen["quarantine"]["recent"]) == [13, 77]
        assert all("Data too long for column 'name'" in e["reason"]
                   for e in seen["quarantine"]["recent"])
        assert len(mirror_keys(mirror_db, "items", "id")) == 98

        # Widened again (the index on `name` has no prefix now, so not to LONGTEXT).
        mirror_db.server.query("ALTER TABLE items MODIFY name VARCHAR(255) CHARACTER SET "
                               "utf8mb4 COLLATE utf8mb4_bin NULL", database=mirror_db.database)
        done = run_sqlwarden("mirror", "retry", str(config_file))
        assert done.returncode == 0, done.stderr
        assert "2 quarantined rows are queued to be sent again" in done.stdout
        settled(engine, 0)
        assert assert_mirror_equals_sqlite(engine, mirror_db, "items") == 100


def test_a_poison_row_met_by_the_first_copy_is_quarantined_and_not_copied_again(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    # The rows are there before the mirror is configured: the boot reconcile copies them.
    with Engine(make_config(tmp_path, None)) as engine:
        engine.write_many("items", [(i, f"item {i}", 2.0, None) for i in range(1, 500)])
        engine.write("UPDATE items SET score = 1e999 WHERE id = 250")
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        boot_reconciled(engine)
        seen = settled(engine, 1)
        assert seen["reconciles"] == 1 and seen["reconciles_failed"] == 0
        assert seen["quarantine"]["recent"][0]["key"] == 250
        assert_mirror_equals_sqlite_but(engine, mirror_db, "items", 250)
        view = engine.mirror.reconcile(timeout=30)
        assert view.in_sync and sum(t.copied for t in view.tables) == 0
    # The next start checks the stored ranges and finds them equal.
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        boot_reconciled(engine)
        last = engine.mirror.view().last_reconcile
        assert last is not None and last.in_sync
        assert sum(t.sqlite_read for t in last.tables) == 0


def test_mirror_reconcile_run_alone_says_which_rows_it_quarantined(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    with Engine(make_config(tmp_path, None)) as engine:
        engine.write_many("items", [(i, f"item {i}", 2.0, None) for i in range(1, 20)])
        engine.write("UPDATE items SET score = 1e999 WHERE id = 11")
    config_file = tmp_path / "test.yaml"
    config_file.write_text(config_text(tmp_path, mirror_db.dsn))
    done = run_sqlwarden("mirror", "reconcile", str(config_file), "--timeout", "120")
    assert done.returncode == 0, done.stderr
    # The command's table says what was copied; the row set aside only the warning names.
    assert "quarantined items key 11" in done.stderr
    assert "non-finite float in column score" in done.stderr


def test_declared_indexes_exist_on_the_mirror_with_the_scope_first_and_come_back_at_start(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn)
    names = [index.name for index in config.table("items").indexes]

    def indexes() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for row in mirror_db.server.query("SHOW INDEX FROM items", database=mirror_db.database):
            found.setdefault(row[2], []).append(row[4])
        return found

    with Engine(config) as engine:
        boot_reconciled(engine)
    shown = indexes()
    assert shown[names[0]] == ["sw_scope", "name"]
    assert shown[names[1]] == ["sw_scope", "at", "score"]
    mirror_db.server.query(f"ALTER TABLE items DROP INDEX `{names[0]}`",
                           database=mirror_db.database)
    with Engine(config) as engine:
        boot_reconciled(engine)
    assert indexes()[names[0]] == ["sw_scope", "name"]
