"""`sqlwarden replay LOG --reexecute CONFIG`: a device's writes reproduced from its log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine
from sqlwarden.replay.read import iter_records, log_files
from sqlwarden.replay.reexecute import reexecute

from .conftest import (
    GENERATOR_TABLES,
    LAST_SEEN_TASK,
    count_rows,
    read_only,
    run_sqlwarden,
    table_digest,
)

DEVICE_YAML = """\
database:
  path: {root}/data/device.db
  checkpoint_idle_ms: 600000
tables:
{generator_tables}  orgs:
    columns:
      name: {{type: text, primary_key: true}}
      first_site: {{type: integer, not_null: true}}
  notes:
    columns:
      id: {{type: integer, primary_key: true}}
      title: text
      score: real
      payload: blob
tasks:
{last_seen_task}    min_rows: 40
    max_rows: 40
  units:
    table: observations
    call: sqlwarden.sync.sources.demo:ucum_units
    reads: [unit]
    writes: [unit]
    where: "unit IN ('degC', '%RH')"
    min_rows: 500
    max_rows: 500
  org_directory:
    table: registry
    sql: >-
      INSERT INTO orgs (name, first_site)
      SELECT org, min(id) FROM registry WHERE id > :lo AND id <= :hi GROUP BY org
      ON CONFLICT (name) DO NOTHING
    where: "org NOT IN (SELECT name FROM orgs)"
    min_rows: 60
    max_rows: 60
sources:
  demo:
    kind: generator
    registry_rows: 300
    observation_rows: 3000
    batch_rows: 500
    seed: 3
fts_deferral:
  threshold_rows: 100
message_log:
  path: {root}/data/messages.jsonl
  payload: {payload}
"""

TABLES = ("registry", "observations", "orgs", "notes")


def device(tmp_path: Path, payload: str = "full") -> tuple[Path, Config]:
    """The config file of a device whose engine logs `payload`, and the config it holds."""
    path = tmp_path / "device.yaml"
    path.write_text(DEVICE_YAML.format(generator_tables=GENERATOR_TABLES,
                                       last_seen_task=LAST_SEEN_TASK, root=tmp_path,
                                       payload=payload))
    return path, parse_config(path.read_text(), file=str(path), base_dir=tmp_path)


def first_run(config: Config) -> None:
    """Foreground writes of every value type, a deferred catch-up, chunked tasks to done."""
    with Engine(config, start_tasks=False) as engine:
        engine.write("INSERT INTO notes (id, title, score, payload) VALUES (?, ?, ?, ?)",
                     (1, "first", 1.5, b"\x00\x01\x02"))
        engine.write_many("notes", [(2, "second", None, None), (3, None, -0.25, b"\xff" * 9),
                                    (4, "fourth", 2.0, b"")])
        engine.upsert("notes", [(2, "second, revised", 3.75, b"\x10"),
                                (6, "x" * 300, 1e-300, bytes(range(256)))])
        engine.write("DELETE FROM notes WHERE id = ?", (4,))
        run = engine.sync.run("demo")
        assert run.status == "ok" and run.rows == 3300
        assert run.fts_lease is not None and run.fts_lease.deferred
        engine.tasks.start()
        views = engine.tasks.wait(timeout=120)
        assert {v.name: v.status for v in views} == {"last_seen": "done", "units": "done",
                                                     "org_directory": "done"}
        assert all(v.processed > 0 for v in views)


def second_run(config: Config) -> None:
    """Another engine on the same database and log: boot recovery, more writes."""
    with Engine(config) as engine:
        engine.write("UPDATE notes SET score = score * 2 WHERE id = ?", (1,))
        engine.upsert("notes", [(5, "fifth", 0.1, b"five")])
        engine.write("UPDATE registry SET body = 'rewritten' WHERE id = 7")
        assert engine.sync.run("demo").status == "ok"
        engine.tasks.wait(timeout=120)


def replay(config_path: Path, config: Config, *extra: str) -> Any:
    return run_sqlwarden("replay", str(config.message_log_path), "--reexecute",
                         str(config_path), *extra)


def table_lines(stdout: str) -> dict[str, list[str]]:
    """The per-table lines: name, replay rows, live rows, checksums, verdict."""
    return {words[0]: words[1:] for words in map(str.split, stdout.splitlines())
            if words and words[0] in TABLES and words[-1] in ("same", "DIFFERS")}


def assert_reproduced(config_path: Path, config: Config) -> str:
    done = replay(config_path, config)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = table_lines(done.stdout)
    assert set(lines) == set(TABLES), done.stdout
    for table, (replay_rows, live_rows, *_, verdict) in lines.items():
        live = count_rows(config.database.path, table)
        assert verdict == "same", done.stdout
        assert int(live_rows.replace(",", "")) == live
        assert int(replay_rows.replace(",", "")) == live
    assert "failed to re-apply: none" in done.stdout
    assert "answers that differ" not in done.stdout
    return str(done.stdout)


def test_a_run_with_writes_a_deferred_catch_up_and_tasks_is_reproduced(tmp_path: Path) -> None:
    config_path, config = device(tmp_path)
    first_run(config)
    assert count_rows(config.database.path, "notes") == 4
    assert count_rows(config.database.path, "orgs") > 0

    out = assert_reproduced(config_path, config)
    for kind in ("writer.execute", "writer.insert_rows", "writer.upsert_rows",
                 "writer.sync_batch", "writer.fts_defer", "writer.fts_restore",
                 "writer.chunk", "writer.task_state"):
        assert kind in out
    assert "note:" not in out

    as_json = json.loads(replay(config_path, config, "--json").stdout)
    assert as_json["matches"] and as_json["failures"] == 0
    assert as_json["applied"]["writer.chunk"] >= 3
    assert {t["table"]: t["live_rows"] for t in as_json["tables"]} == {
        table: count_rows(config.database.path, table) for table in TABLES}


def test_two_engine_runs_in_one_log_are_reproduced(tmp_path: Path) -> None:
    config_path, config = device(tmp_path)
    first_run(config)
    second_run(config)
    assert count_rows(config.database.path, "notes") == 5

    out = assert_reproduced(config_path, config)
    assert "2 runs" in out


def test_a_row_changed_behind_the_engine_makes_its_table_differ(tmp_path: Path) -> None:
    config_path, config = device(tmp_path)
    first_run(config)
    conn = apsw.Connection(str(config.database.path))
    try:
        conn.execute("UPDATE notes SET score = 1.5000001 WHERE id = 1")
    finally:
        conn.close()

    done = replay(config_path, config)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = table_lines(done.stdout)
    assert lines["notes"][-1] == "DIFFERS"
    assert lines["notes"][0] == lines["notes"][1] == "4"  # same rows, other values
    assert all(lines[t][-1] == "same" for t in TABLES if t != "notes")
    assert "1 of 4 tables differ from the live database" in done.stdout


def test_a_summary_log_is_refused_in_one_line(tmp_path: Path) -> None:
    config_path, config = device(tmp_path, payload="summary")
    with Engine(config, start_tasks=False) as engine:
        engine.write_many("notes", [(1, "first", 1.0, b"\x01")])

    done = replay(config_path, config)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sqlwarden: error: ") and "payload: full" in line


def test_a_missing_log_is_refused_in_one_line(tmp_path: Path) -> None:
    config_path, _ = device(tmp_path)
    done = run_sqlwarden("replay", str(tmp_path / "nowhere.jsonl"), "--reexecute",
                         str(config_path))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "no such message log" in line


def test_a_log_without_its_beginning_says_so_and_reports_what_failed(tmp_path: Path) -> None:
    config_path, config = device(tmp_path)
    first_run(config)
    # Cut the log where the catch-up's first batch is sent: the run it belongs to
    # was started in the part that is gone.
    log = config.message_log_path
    lines = log.read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines)
               if json.loads(line)["message"] == "writer.sync_batch")
    log.write_bytes(b"".join(lines[cut:]))

    done = replay(config_path, config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"note: the log starts at seq {cut + 1}, not 1" in done.stdout
    assert "began before the log" in done.stdout
    assert "failed to re-apply: 6" in done.stdout  # every batch of the catch-up
    assert "writer.sync_batch: SyncError: source demo: run 1 is not running" in done.stdout
    assert "answers that differ from the log:" in done.stdout
    lines_by_table = table_lines(done.stdout)
    assert lines_by_table["observations"][:2] == ["0", "3,000"]
    assert lines_by_table["observations"][-1] == "DIFFERS"


def test_the_fresh_database_can_be_kept_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    _, config = device(tmp_path)
    first_run(config)
    with open(config.message_log_path, "ab") as log:
        log.write(b'{"seq": 999999, "kind": "te')  # a crash in mid-line
    kept = tmp_path / "replayed" / "device.db"

    result = reexecute(log_files([config.message_log_path]), config, keep=kept)
    assert result.matches and result.failures == 0
    assert result.damaged == 1 and "torn last line" in "\n".join(result.lines())
    for table in TABLES:
        assert table_digest(kept, table) == table_digest(config.database.path, table)
    conn = read_only(kept)
    try:
        # The FTS index was restored after the catch-up, as on the device.
        hits = conn.execute("SELECT count(*) FROM registry_fts WHERE registry_fts "
                            "MATCH 'site'").get
        assert hits == 300
    finally:
        conn.close()


def test_the_checksums_recorded_at_stop_stand_in_for_a_missing_live_database(
        tmp_path: Path) -> None:
    config_path, config = device(tmp_path)
    first_run(config)
    second_run(config)
    recorded = [r for r in iter_records(config.message_log_path)
                if r["message"] == "writer.checksums" and r["kind"] == "reply"]
    assert len(recorded) == 2  # one at each stop
    # The device's database is gone; the log still says what it held.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.database.path}{suffix}").unlink(missing_ok=True)

    done = replay(config_path, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is missing; nothing to compare with" in done.stdout
    seqs = [r["seq"] for r in recorded]
    for seq in seqs:
        assert f"checksums recorded at seq {seq} " in done.stdout
    assert done.stdout.count(f"all {len(TABLES)} tables same") == 2

    # A log whose recorded checksum disagrees with the replay is reported.
    path = config.message_log_path
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record["seq"] == seqs[-1]:
            for table in record["fields"]["tables"]:
                if table["table"] == "notes":
                    table["rows"] += 1
            lines[i] = json.dumps(record) + "\n"
    path.write_text("".join(lines))
    changed = replay(config_path, config)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "  notes: 6 rows recorded" in changed.stdout
    assert "DIFFERS" in changed.stdout
