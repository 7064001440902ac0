"""FTS deferral: search results after a deferred catch-up equal those of a
database that kept its triggers, on every path and after every crash point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.endpoint_token import read_token, token_path
from sqlwarden.errors import FtsError, NotReady
from sqlwarden.facade import Engine
from sqlwarden.fts.deferral import CAPTURE_PREFIX, read_deferral
from sqlwarden.replay.read import iter_records
from sqlwarden.scheduler import ManualScheduler

from .conftest import ROOT, read_only, run_sqlwarden, wait_until
from .support.fts_driver import doc

#: Terms, phrases, prefixes, boolean and column queries; rows changed during
#: the deferral are among the hits of several.
QUERIES = (
    "pump", "valve", "station", "sensor", "harbor", "canal", '"pump station"',
    '"north valve"', "stat*", "gam*", "pump AND valve", "pump NOT valve", "sensor OR canal",
    "title:pump", "body:river", "NEAR(pump valve, 3)", "kaleidoscope", "obsolete", "phoenix",
    '"replaced marker"', "retitled", "zuab", "zubc", "tank pipe", "epilogue",
)

DECLARED = """\
database:
  path: {db}
  checkpoint_idle_ms: 600000
  wal_threshold_mb: 256
{tables}
fts_deferral:
  enabled: {enabled}
  threshold_rows: 1000
  rebuild_share: {share}
  restore_buffer_mb: 1
  max_age_s: 600
  retry_initial_s: 1
  retry_max_s: 8
"""

DOCS_TABLE = """\
tables:
  docs:
    columns:
      id: {type: integer, primary_key: true}
      title: {type: text, not_null: true}
      body: text
    fts: [title, body]
"""

#: Databases the engine did not create: the triggers are adopted as they are.
ADOPTED = {
    "external": """
        CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT);
        CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, content='docs',
                                                 content_rowid='id');
        CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
        END;
        CREATE TRIGGER docs_au AFTER UPDATE ON docs BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;""",
    "own": """
        CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT);
        CREATE VIRTUAL TABLE docs_fts USING fts5(title, body);
        CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
          DELETE FROM docs_fts WHERE rowid = old.id;
        END;
        CREATE TRIGGER docs_au AFTER UPDATE ON docs BEGIN
          UPDATE docs_fts SET rowid = new.id, title = new.title, body = new.body
          WHERE rowid = old.id;
        END;""",
    # Rows with an id divisible by 7 are left out of the index; comments in the
    # headers; two update triggers that must keep their firing order (SQLite
    # fires the newest first, so the delete, created last, runs before the insert).
    "filtered": """
        CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT);
        CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, content='docs',
                                                 content_rowid='id');
        CREATE TRIGGER docs_ai -- indexed rows only
          AFTER INSERT ON docs WHEN new.id % 7 <> 0 BEGIN
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        CREATE TRIGGER docs_ad AFTER DELETE ON docs WHEN old.id % 7 <> 0 BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
        END;
        CREATE TRIGGER docs_u2_insert AFTER UPDATE ON docs WHEN new.id % 7 <> 0 BEGIN
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        CREATE TRIGGER /* fires first */ docs_u1_delete AFTER UPDATE ON docs
          WHEN old.id % 7 <> 0 BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
        END;""",
}


def docs_config(folder: Path, *, enabled: bool = True, share: float = 0.5,
                declared: bool = True) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    text = DECLARED.format(db=folder / "docs.db", enabled=str(enabled).lower(), share=share,
                           tables=DOCS_TABLE if declared else "")
    (folder / "docs.yaml").write_text(text)
    return parse_config(text, file=str(folder / "docs.yaml"), base_dir=folder)


def adopt(folder: Path, kind: str, **kwargs: Any) -> Config:
    config = docs_config(folder, declared=False, **kwargs)
    conn = apsw.Connection(str(config.database.path))
    conn.execute(ADOPTED[kind])
    conn.close()
    return config


def insert(engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    sql = "INSERT INTO docs (id, title, body) VALUES (?, ?, ?)"
    for start in range(0, len(rows), 500):
        engine.write_batch([(sql, row) for row in rows[start:start + 500]])


def load(engine: Engine) -> None:
    """2,000 indexed rows; 1..300 mention 'obsolete'; id 1990 is a hole."""
    insert(engine, [doc(i, marker="obsolete" if i <= 300 else "")
                    for i in range(1, 2001) if i != 1990])


def catch_up(engine: Engine) -> None:
    """New rows, and every kind of change to rows that were indexed before."""
    insert(engine, [doc(i) for i in range(2001, 5001)])
    engine.write("UPDATE docs SET body = replace(body, 'obsolete', 'kaleidoscope') "
                 "WHERE id <= 100")
    engine.write("UPDATE docs SET title = 'retitled ' || title WHERE id BETWEEN 101 AND 150")
    engine.write("DELETE FROM docs WHERE id BETWEEN 151 AND 200")
    engine.write("DELETE FROM docs WHERE id BETWEEN 2001 AND 2050")
    engine.write_batch([("INSERT OR REPLACE INTO docs (id, title, body) "
                         "VALUES (?, 'replaced marker', 'replaced marker text')", (i,))
                        for i in range(201, 211)])
    insert(engine, [doc(i, marker="phoenix") for i in range(151, 161)])
    engine.write("UPDATE docs SET id = 9000 WHERE id = 211")
    insert(engine, [doc(1990, marker="phoenix")])
    engine.write("UPDATE docs SET body = body WHERE id BETWEEN 300 AND 310")
    engine.write("DELETE FROM docs WHERE id = 9000")


def afterwards(engine: Engine) -> None:
    """Updates once the triggers are back: they must fire as they did before."""
    engine.write("UPDATE docs SET body = body || ' epilogue' WHERE id BETWEEN 400 AND 420")


def search(path: Path) -> dict[str, list[int]]:
    conn = read_only(path)
    try:
        return {q: [r[0] for r in conn.execute(
            "SELECT rowid FROM docs_fts WHERE docs_fts MATCH ? ORDER BY rowid", (q,))]
            for q in QUERIES}
    finally:
        conn.close()


def assert_index_sound(path: Path) -> None:
    """FTS5's own check that the index matches the content (raises if not)."""
    conn = apsw.Connection(str(path))
    try:
        kind = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'docs_fts'").get
        check = ("INSERT INTO docs_fts(docs_fts, rank) VALUES ('integrity-check', 1)"
                 if "content=" in str(kind) else
                 "INSERT INTO docs_fts(docs_fts) VALUES ('integrity-check')")
        conn.execute(check)
    finally:
        conn.close()


def objects(path: Path) -> dict[str, str]:
    conn = read_only(path)
    try:
        return {name: sql for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('trigger', 'table') "
            "AND (name LIKE 'docs%' OR name LIKE '\\_sw\\_fts\\_%' ESCAPE '\\')")}
    finally:
        conn.close()


def record(path: Path) -> Any:
    conn = read_only(path)
    try:
        return read_deferral(conn)
    finally:
        conn.close()


def assert_record_and_triggers_agree(path: Path, saved: dict[str, str]) -> bool:
    """The record exists exactly when the saved triggers are absent; returns deferred."""
    deferral, present = record(path), objects(path)
    mine = {n for n in present if n.startswith(CAPTURE_PREFIX)}
    triggers = {n for n in saved if n in present}
    if deferral is None:
        assert triggers == set(saved) and not mine, present
        assert {n: present[n] for n in saved} == saved, "restored from the snapshot verbatim"
        return False
    assert not triggers, present
    # Capture triggers exist while deferred, unless the table was empty then.
    assert bool(mine) == any(t.capture for t in deferral.tables), present
    assert {n for t in deferral.tables for n, _ in t.triggers} == set(saved)
    return True


def control(tmp_path: Path, build: Callable[[Engine], None], *, kind: str | None = None
            ) -> dict[str, list[int]]:
    """The same writes on a database that keeps its FTS triggers throughout."""
    folder = tmp_path / "control"
    config = (adopt(folder, kind, enabled=False) if kind
              else docs_config(folder, enabled=False))
    with Engine(config) as engine:
        build(engine)
    if kind != "filtered":  # a partial index differs from its content by design
        assert_index_sound(config.database.path)
    return search(config.database.path)


def saved_triggers(path: Path) -> dict[str, str]:
    return {n: sql for n, sql in objects(path).items()
            if sql.startswith("CREATE TRIGGER") and not n.startswith(CAPTURE_PREFIX)}


# --- a deferred catch-up, both restore paths, engine-made and adopted tables ---------


@pytest.mark.parametrize(("kind", "share", "mode"), [
    (None, 0.0, "rebuild"), (None, 1.0, "incremental"),
    ("external", 0.0, "rebuild"), ("external", 1.0, "incremental"),
    ("own", 0.0, "rebuild"), ("own", 1.0, "incremental"),
    ("filtered", 0.0, "rebuild"), ("filtered", 1.0, "incremental"),
], ids=["declared-rebuild", "declared-incremental", "adopted-external-rebuild",
        "adopted-external-incremental", "adopted-own-rebuild", "adopted-own-incremental",
        "adopted-filtered-rebuild", "adopted-filtered-incremental"])
def test_a_deferred_catch_up_searches_like_a_database_that_kept_its_triggers(
        tmp_path: Path, kind: str | None, share: float, mode: str) -> None:
    expected = control(tmp_path, lambda e: (load(e), catch_up(e), afterwards(e)), kind=kind)
    folder = tmp_path / "deferred"
    config = adopt(folder, kind, share=share) if kind else docs_config(folder, share=share)
    path = config.database.path
    with Engine(config) as engine:
        load(engine)
        saved = saved_triggers(path)
        assert len(saved) == (4 if kind == "filtered" else 3)
        with engine.fts.catch_up("test", backlog_rows=3000) as lease:
            assert lease.deferred and lease.tables == ("docs_fts",)
            assert assert_record_and_triggers_agree(path, saved)
            catch_up(engine)
            with pytest.raises(NotReady, match="fts:docs is not ready: deferred"), \
                    engine.read(requires=["fts:docs"]):
                pass
            status = engine.status()["fts"]
            assert (status["state"], status["tables"], status["sources"]) == (
                "deferred", ["docs_fts"], {"test": 1})
            assert status["since"] is not None
        view = engine.fts.status()
        afterwards(engine)
        with engine.read(requires=["fts:docs", "fts:docs_fts"]) as conn:
            # 1,999 loaded, 3,000 new, 100 deleted, 10 + 1 inserted again, 1 moved and deleted
            assert conn.execute("SELECT count(*) FROM docs").get == 1999 + 3000 - 100 + 11 - 1
    assert view.state == "live" and view.last_restore is not None
    [restored] = view.last_restore.tables
    assert restored.mode == mode
    assert not assert_record_and_triggers_agree(path, saved)
    got = search(path)
    assert got == expected
    assert sum(map(len, got.values())) > 10_000
    if kind == "filtered":
        # A partial index cannot pass integrity-check (it differs from the content by design).
        assert got["kaleidoscope"] == [i for i in range(1, 101) if i % 7]
        return
    assert_index_sound(path)
    # The comparison is not vacuous: changed rows are found by their new text only.
    assert got["kaleidoscope"] == list(range(1, 101))
    assert not set(got["obsolete"]) & set(range(1, 101)) and got["obsolete"]
    assert got['"replaced marker"'] == list(range(201, 211))
    assert set(got["phoenix"]) == {*range(151, 161), 1990}


def test_a_column_added_while_deferred_does_not_keep_the_restore_failing(
        tmp_path: Path) -> None:
    config = docs_config(tmp_path, share=0.95)  # incremental: it reads the captured rows
    with Engine(config) as engine:
        load(engine)
        assert engine.fts.begin_catch_up("gone", 50_000).deferred
        catch_up(engine)
    # The next config adds a column: the start adds it, then restores.
    text = (tmp_path / "docs.yaml").read_text().replace("      body: text\n",
                                                         "      body: text\n      extra: text\n")
    with Engine(parse_config(text, file="docs.yaml", base_dir=tmp_path)) as engine:
        view = engine.fts.status()
    assert view.state == "live", view.error
    assert view.last_restore is not None
    assert view.last_restore.tables[0].mode == "incremental"
    assert search(config.database.path) == control(tmp_path, lambda e: (load(e), catch_up(e)))


def test_a_small_backlog_keeps_the_triggers_live(tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    with Engine(config) as engine:
        saved = saved_triggers(config.database.path)
        lease = engine.fts.begin_catch_up("small", 999)
        assert not lease.deferred and "below threshold_rows (1,000)" in lease.reason
        assert saved_triggers(config.database.path) == saved
        view = engine.fts.end_catch_up("small")
    assert view.state == "live" and view.last_restore is None


def test_two_overlapping_sources_keep_the_triggers_dropped_until_both_end(
        tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    path = config.database.path
    with Engine(config) as engine:
        saved = saved_triggers(path)
        assert engine.fts.begin_catch_up("a", 50_000).deferred
        # A second source joins whatever its own backlog: the triggers are down anyway.
        joined = engine.fts.begin_catch_up("b", 10)
        assert joined.deferred and joined.reason == "joined the deferral of a"
        insert(engine, [doc(i) for i in range(1, 1001)])
        after_a = engine.fts.end_catch_up("a")
        assert (after_a.state, after_a.sources) == ("deferred", (("b", 1),))
        assert assert_record_and_triggers_agree(path, saved)
        assert record(path).sources == (("b", 1),)
        insert(engine, [doc(i) for i in range(1001, 2001)])
        after_b = engine.fts.end_catch_up("b")
        assert after_b.state == "live"
        # An end from a source that never began changes nothing.
        assert engine.fts.end_catch_up("stranger").state == "live"
    assert not assert_record_and_triggers_agree(path, saved)
    assert search(path) == control(tmp_path, lambda e: insert(e, [doc(i)
                                                                   for i in range(1, 2001)]))


def test_the_maximum_age_forces_a_restore_and_a_fresh_backlog_defers_again(
        tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    path = config.database.path
    time = ManualScheduler()
    with Engine(config, scheduler=time) as engine:
        saved = saved_triggers(path)
        assert engine.fts.begin_catch_up("stuck", 50_000).deferred
        insert(engine, [doc(i) for i in range(1, 501)])
        time.advance(599)
        assert engine.fts.status().state == "deferred"
        time.advance(1)  # the deferral reaches max_age_s: its timer fires
        # The stuck source's own end arrives later; it waits for the restore, and is a no-op.
        view = engine.fts.end_catch_up("stuck")
        assert view.state == "live" and view.last_restore is not None
        assert not assert_record_and_triggers_agree(path, saved)
        assert engine.fts.begin_catch_up("next", 50_000).deferred
        engine.fts.end_catch_up("next")
    restores = [r for r in iter_records(config.message_log_path)
                if (r["kind"], r["message"]) == ("ask", "writer.fts_restore")]
    assert len(restores) == 2
    assert search(path) == control(tmp_path, lambda e: insert(e, [doc(i)
                                                                   for i in range(1, 501)]))


def test_a_failing_boot_restore_leaves_the_engine_running_and_says_why(
        tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    path = config.database.path
    with Engine(config) as engine:
        saved = saved_triggers(path)
        assert engine.fts.begin_catch_up("crashed", 50_000).deferred
        insert(engine, [doc(i) for i in range(1, 1001)])
    # Stopped without ending: as after a crash. Then the table changes under the
    # snapshot: its insert trigger names a column that no longer exists.
    conn = apsw.Connection(str(path))
    raw = conn.execute("SELECT value FROM _sw_meta WHERE key = 'fts_deferral'").get
    broken = raw.replace("new.\\\"body\\\"", "new.\\\"summary\\\"")
    assert broken != raw
    conn.execute("UPDATE _sw_meta SET value = ? WHERE key = 'fts_deferral'", (broken,))
    conn.close()

    time = ManualScheduler()
    with Engine(config, scheduler=time) as engine:
        view = engine.fts.status()
        assert view.state == "restore_failed" and "no such column" in (view.error or "")
        assert (view.attempts, view.retry_in_s) == (1, 1.0)
        steady, reasons = engine.health()
        assert not steady and any("FTS index of docs_fts is stale" in r for r in reasons)
        # Local writes go on; fresh search is refused rather than answered stale.
        insert(engine, [doc(i) for i in range(1001, 1101)])
        with pytest.raises(NotReady, match="restore_failed"), \
                engine.read(requires=["fts:docs"]):
            pass
        assert assert_record_and_triggers_agree(path, saved)
        assert "no such column" in record(path).last_error
        # Retried with doubling backoff.
        time.advance(1.0)
        view = engine.fts.end_catch_up("nobody")  # answered once the retry has ended
        assert (view.state, view.attempts, view.retry_in_s) == ("restore_failed", 2, 2.0)
        # Once the cause is fixed, a restore on request succeeds.
        fix = apsw.Connection(str(path))
        fix.set_busy_timeout(10_000)
        fix.execute("UPDATE _sw_meta SET value = ? WHERE key = 'fts_deferral'", (raw,))
        fix.close()
        view = engine.fts.restore()
        assert view.state == "live" and view.error is None
    assert not assert_record_and_triggers_agree(path, saved)
    assert search(path) == control(tmp_path, lambda e: insert(e, [doc(i)
                                                                   for i in range(1, 1101)]))


def test_reads_name_an_fts_table_that_exists(tmp_path: Path) -> None:
    with Engine(docs_config(tmp_path)) as engine:
        with engine.read(requires=["fts:docs_fts"]) as conn:
            assert conn.execute("SELECT count(*) FROM docs").get == 0
        with pytest.raises(FtsError, match=r"no FTS table is called 'nope'.*docs_fts"), \
                engine.read(requires=["fts:nope"]):
            pass


def test_a_trigger_that_does_more_than_index_is_never_dropped(tmp_path: Path) -> None:
    config = docs_config(tmp_path, declared=False)
    conn = apsw.Connection(str(config.database.path))
    conn.execute(ADOPTED["external"].replace(
        "INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);\n"
        "        END;\n        CREATE TRIGGER docs_ad",
        "INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);\n"
        "          INSERT INTO audit VALUES (new.id);\n        END;\n"
        "        CREATE TRIGGER docs_ad") + "CREATE TABLE audit (id INTEGER);")
    conn.close()
    with Engine(config) as engine:
        lease = engine.fts.begin_catch_up("bulk", 50_000)
        view = engine.fts.status()
        engine.fts.end_catch_up("bulk")
    assert not lease.deferred
    assert "docs_ai also writes to audit" in dict(view.not_deferrable)["docs_fts"]
    assert {"docs_ai", "docs_ad", "docs_au"} <= set(objects(config.database.path))


# --- crashes ----------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["after-drop", "mid-catch-up", "mid-restore"])
def test_a_catch_up_killed_at_any_point_recovers_at_the_next_boot(
        tmp_path: Path, point: str) -> None:
    config = docs_config(tmp_path / "db")
    path = config.database.path
    with Engine(config) as engine:
        load(engine)
    saved = saved_triggers(path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fts_driver", str(tmp_path / "db" / "docs.yaml"),
         "10001", "60000"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().split() == ["deferred", "True"]
        if point != "after-drop":
            proc.stdin.write("go\n")
            proc.stdin.flush()
            until = "batch 3" if point == "mid-catch-up" else "ending"
            while (line := proc.stdout.readline().strip()) != until:
                assert line, "the driver ended early"
        if point == "mid-restore":
            wal = Path(str(path) + "-wal")
            before = wal.stat().st_size
            # The restore is one transaction: pages it writes spill into the WAL
            # before its commit. Kill once they do.
            wait_until(lambda: wal.stat().st_size > before + 1_000_000 or proc.poll() is not None,
                       what="the restore to write")
        assert proc.poll() is None, "killed while still running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert assert_record_and_triggers_agree(path, saved), "the deferral outlived the process"
    if point == "after-drop":
        assert record(path).sources == (("driver", 1),)

    with Engine(config) as engine:
        view = engine.fts.status()
        with engine.read(requires=["fts:docs"]) as conn:
            rows = list(conn.execute("SELECT id, title, body FROM docs ORDER BY id"))
    assert view.state == "live" and view.last_restore is not None
    assert not assert_record_and_triggers_agree(path, saved)
    assert_index_sound(path)
    if point == "mid-restore":
        assert len(rows) == 2000 - 1 - 50 + 60_000
    expected = control(tmp_path, lambda e: insert(e, [tuple(r) for r in rows]))
    assert search(path) == expected
    assert any(expected.values())


# --- command line and endpoint ----------------------------------------------------------


def test_the_cli_shows_and_restores_a_deferral_left_behind(tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    yaml_path = str(tmp_path / "docs.yaml")
    for action in ("status", "restore"):  # no database yet: one line, nothing created
        refused = run_sqlwarden("fts", action, yaml_path)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.strip().endswith("does not exist (has the engine run yet?)")
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not config.database.path.exists()
    with Engine(config) as engine:
        engine.fts.begin_catch_up("gone", 50_000)
        insert(engine, [doc(i) for i in range(1, 301)])
    shown = run_sqlwarden("fts", "status", yaml_path)
    assert shown.returncode == 0, shown.stderr
    assert "docs_fts  (external content of docs)  DEFERRED" in shown.stdout
    assert "deferral: since" in shown.stdout and "for: gone" in shown.stdout
    overview = run_sqlwarden("status", yaml_path)
    assert "FTS upkeep of docs_fts deferred since" in overview.stdout
    as_json = json.loads(run_sqlwarden("fts", "status", yaml_path, "--json").stdout)
    assert as_json["deferral"]["tables"][0]["fts"] == "docs_fts"

    restored = run_sqlwarden("fts", "restore", yaml_path)
    assert restored.returncode == 0, restored.stderr
    assert "docs_fts: restored by" in restored.stdout
    assert record(config.database.path) is None
    again = run_sqlwarden("fts", "restore", yaml_path)
    assert "nothing was deferred" in again.stdout
    assert "deferral: none" in run_sqlwarden("fts", "status", yaml_path).stdout
    assert search(config.database.path) == control(
        tmp_path, lambda e: insert(e, [doc(i) for i in range(1, 301)]))


def test_the_endpoint_restores_and_exports_the_state(tmp_path: Path) -> None:
    docs_config(tmp_path)
    text = (tmp_path / "docs.yaml").read_text() + "status:\n  enabled: true\n  port: 0\n"
    (tmp_path / "web.yaml").write_text(text)
    config = parse_config(text, file="web.yaml", base_dir=tmp_path)
    with Engine(config) as engine:
        engine.fts.begin_catch_up("web", 50_000)
        # The CLI finds this engine and shows its live state beside the database's.
        shown = run_sqlwarden("fts", "status", str(tmp_path / "web.yaml"))
        assert "for: web" in shown.stdout and "engine: deferred" in shown.stdout
        with urllib.request.urlopen(f"{engine.status_url}/metrics") as response:
            metrics = response.read().decode()
        assert 'sqlwarden_fts_state{state="deferred"} 1.0' in metrics
        assert "sqlwarden_fts_deferred_tables 1.0" in metrics
        token = read_token(token_path(config.database.path))
        request = urllib.request.Request(f"{engine.status_url}/fts/restore", data=b"",
                                         method="POST", headers={"X-Sqlwarden-Token": token})
        with urllib.request.urlopen(request) as response:
            body = json.load(response)
        assert body["state"] == "live" and body["last_restore"]["tables"][0]["fts"] == "docs_fts"


def test_a_damaged_deferral_record_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = docs_config(tmp_path)
    with Engine(config):
        pass
    conn = apsw.Connection(str(config.database.path))
    conn.execute("INSERT INTO _sw_meta (key, value) VALUES ('fts_deferral', '{broken')")
    conn.close()
    yaml_path = str(tmp_path / "docs.yaml")
    for done in (run_sqlwarden("run", yaml_path, "--once", "--no-progress"),
                 run_sqlwarden("fts", "status", yaml_path)):
        assert done.returncode in (1, 2)
        [line] = done.stderr.strip().splitlines()
        assert "the FTS deferral record in _sw_meta (key 'fts_deferral') cannot be read" in line
