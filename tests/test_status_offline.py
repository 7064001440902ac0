"""`sqlwarden status` with no engine running reads the database file alone: besides the
tables and tasks it shows each source's last run and stored rejects, and the rows the
mirror could not take (how many, and the newest with table, key, reason and when)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlwarden.config import parse_config
from sqlwarden.facade import Engine

from .conftest import run_sqlwarden
from .support.mariadb import MirrorDb
from .test_mirror_quarantine import TABLES, settled
from .test_sync_ndjson import inbox, write_lines

#: How many quarantined rows the text output lists.
SHOWN = 5


def config_text(tmp_path: Path, dsn: str | None) -> str:
    mirror = "" if dsn is None else (
        f"mirror:\n  dsn: {dsn}\n  scope: dev1\n  poll_ms: 20\n  backoff_initial_s: 0.05\n"
        "  backoff_max_s: 0.5\n  connect_timeout_s: 5\n")
    return f"""\
database: {{path: {tmp_path / 'dev.db'}}}
tables:
{TABLES}{mirror}sources:
  files:
    kind: ndjson
    path: {tmp_path / 'inbox'}
    table: items
  idle:
    kind: ndjson
    path: {tmp_path / 'idle'}
    table: tags
message_log: {{path: {tmp_path / 'messages.jsonl'}}}
"""


def test_offline_status_shows_the_mirror_quarantine_and_each_sources_rejects(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    path = tmp_path / "sqlwarden.yaml"
    path.write_text(config_text(tmp_path, mirror_db.dsn))
    config = parse_config(path.read_text(), file=str(path), base_dir=tmp_path)
    write_lines(inbox(tmp_path) / "a.ndjson", [
        '{"id": 1, "name": "one"}', '{"id": 1e300, "name": "too big a key"}',
        '{"id": 2, "name": "two"}'])
    inbox(tmp_path, "idle")
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 2, 1), run.error
        engine.write_many("items", [(i, f"item {i}", 1.0, None) for i in range(10, 20)])
        for i in range(10, 17):
            engine.write("UPDATE items SET score = 1e999 WHERE id = ?", (i,))
        settled(engine, 7)

    done = run_sqlwarden("status", str(path), "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    quarantine = status["mirror"]["quarantine"]
    assert quarantine["count"] == 7
    assert {e["key"] for e in quarantine["recent"]} <= set(range(10, 17))
    assert len(quarantine["recent"]) == SHOWN
    for entry in quarantine["recent"]:
        assert entry["table"] == "items" and entry["at"] > 0
        assert "non-finite float in column score" in entry["reason"]
    files, idle = status["sources"]["files"], status["sources"]["idle"]
    assert files["rejects_stored"] == 1
    assert (files["last_run"]["status"], files["last_run"]["rows"]) == ("ok", 2)
    assert idle == {"rejects_stored": 0, "last_run": None}

    done = run_sqlwarden("status", str(path))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "mirror quarantine  7 rows the mirror could not take" in text
    assert f"mirror retry {path}" in text
    assert text.count("non-finite float in column score") == SHOWN
    assert "... and 2 more" in text
    lines = {line.split()[0]: line for line in text.splitlines()
             if line.startswith("  ") and line.split()[0] in ("files", "idle")}
    assert "last run ok (full)" in lines["files"] and "1 rejects stored" in lines["files"]
    assert "no run yet" in lines["idle"] and "0 rejects stored" in lines["idle"]


def test_offline_status_of_a_database_without_a_mirror_says_nothing_of_a_quarantine(
        tmp_path: Path) -> None:
    path = tmp_path / "sqlwarden.yaml"
    path.write_text(config_text(tmp_path, None))
    inbox(tmp_path)
    inbox(tmp_path, "idle")
    with Engine(parse_config(path.read_text(), file=str(path), base_dir=tmp_path)):
        pass
    done = run_sqlwarden("status", str(path), "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["mirror"] is None
    assert status["sources"] == {"files": {"rejects_stored": 0, "last_run": None},
                                 "idle": {"rejects_stored": 0, "last_run": None}}
    done = run_sqlwarden("status", str(path))
    assert "quarantine" not in done.stdout and "no run yet" in done.stdout
