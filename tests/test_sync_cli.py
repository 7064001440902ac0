"""`sqlwarden sync now|history`: with and without a running engine, and bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from sqlwarden.config import load_config
from sqlwarden.db.status import read_sync, running_engine

from .conftest import count_rows, files_under, run_sqlwarden, sqlwarden, wait_until

CONFIG = """\
database: {{path: {root}/data/test.db}}
tables:
  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      text: {{type: text, not_null: true}}
sources:
  inbox:
    kind: ndjson
    table: notes
    path: {root}/inbox
status: {{enabled: {status}, port: 0}}
message_log: {{path: {root}/data/messages.jsonl}}
"""


def setup(tmp_path: Path, *, status: bool = False) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    lines = [json.dumps({"id": i, "text": f"note {i}"}) for i in range(1, 41)]
    lines.insert(7, '{"id": 99}')  # no text: rejected
    (inbox / "a.ndjson").write_text("\n".join(lines) + "\n")
    config = tmp_path / "sw.yaml"
    config.write_text(CONFIG.format(root=tmp_path, status=str(status).lower()))
    return config


def test_sync_now_without_an_engine_runs_the_source_and_history_lists_it(
        tmp_path: Path) -> None:
    config = setup(tmp_path)
    done = run_sqlwarden("sync", "now", str(config), "inbox", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "inbox: 40 rows in" in done.stdout and "1 records rejected" in done.stdout
    assert count_rows(tmp_path / "data" / "test.db", "notes") == 40
    again = run_sqlwarden("sync", "now", str(config), "inbox", "--no-progress")
    assert "inbox: 0 rows in" in again.stdout

    history = run_sqlwarden("sync", "history", str(config))
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "source", "mode", "status"]
    assert lines[1].split()[1:4] == ["inbox", "incremental", "ok"]
    assert lines[2].split()[1:4] == ["inbox", "full", "ok"]
    assert "inbox a.ndjson:" in history.stdout and "'text'" in history.stdout
    as_json = json.loads(run_sqlwarden("sync", "history", str(config), "--json").stdout)
    assert [r["rows"] for r in as_json["runs"]] == [0, 40]
    assert [r["rejects"] for r in as_json["runs"]] == [0, 1]


def test_sync_now_asks_the_running_engine(tmp_path: Path) -> None:
    config = setup(tmp_path, status=True)
    server = sqlwarden("run", str(config), "--no-progress")
    try:
        db = tmp_path / "data" / "test.db"
        loaded = load_config(config)
        # Serving: its address is recorded, and the start-up catch-up has ended.
        wait_until(lambda: running_engine(loaded) is not None and bool(read_sync(
            loaded, None, 5)[0]) and read_sync(loaded, None, 5)[0][0].status == "ok",
            what="the engine to serve")
        (tmp_path / "inbox" / "b.ndjson").write_text('{"id": 500, "text": "late"}\n')
        done = run_sqlwarden("sync", "now", str(config), "inbox")
        assert done.returncode == 0, done.stderr
        assert "asked the running engine" in done.stdout and "inbox: 1 rows in" in done.stdout
        assert count_rows(db, "notes") == 41
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0


def test_bad_sync_input_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    config = setup(tmp_path)
    before = files_under(tmp_path)
    unknown = run_sqlwarden("sync", "now", str(config), "outbox")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "sqlwarden: error: unknown source 'outbox' in " + str(config)
        + " (declared: inbox)"]
    missing = run_sqlwarden("sync", "history", str(config))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr
    usage = run_sqlwarden("sync", "now", str(config))
    assert usage.returncode == 2 and "SOURCE" in usage.stderr
    assert files_under(tmp_path) == before
