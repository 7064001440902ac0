"""FTS indexes the engine did not make: adopted as they are or refused at start, a
catch-up defers only the FTS tables of what it writes, and other programs on an
older SQLite (Python's own `sqlite3`) keep writing through whatever is installed.

Python's `sqlite3` is a second SQLite library beside apsw's: in one process,
closing one's file handle drops the other's POSIX locks. So while an engine
runs, the other program is a subprocess, and this process looks through apsw.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import apsw
import pytest
import sqlite_utils

from sqlwarden.config import Config, parse_config
from sqlwarden.errors import SchemaError
from sqlwarden.facade import Engine
from sqlwarden.replay.read import iter_records

from .conftest import read_only, run_sqlwarden

WORDS = ("pump", "valve", "meter", "storm", "flood", "cable", "turbine", "gasket", "filter",
         "sensor", "alarm", "battery", "drift", "signal", "culvert", "reservoir")
#: Words written only by some rows, so a search that misses them is noticed.
RARE = ("kaleidoscope", "phoenix", "zephyr")
TERMS = (*WORDS[:6], *RARE, "pump AND valve", '"storm flood"', "turb*", "title:kaleidoscope")

DOCS = """\
  docs:
    strict: false
    columns:
      id: {{type: integer, primary_key: true}}
      title: text
      body: text
    fts: {fts}
"""
NOTES = """\
  notes:
    columns:
      id: {type: integer, primary_key: true}
      text: text
    fts: [text]
"""
ITEMS = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: text
"""


def feed_source(tmp_path: Path, table: str) -> str:
    return (f"  {table}_feed:\n    kind: ndjson\n    path: {tmp_path / (table + '_inbox')}\n"
            f"    table: {table}\n    batch_rows: 1000\n")


def make_config(tmp_path: Path, *, fts: str = "[title, body]", tables: str = "",
                sources: tuple[str, ...] = ("docs",)) -> Config:
    text = (f"database: {{path: {tmp_path / 'docs.db'}}}\n"
            "tables:\n" + DOCS.format(fts=fts) + tables
            + "sources:\n" + "".join(feed_source(tmp_path, t) for t in sources)
            + "fts_deferral:\n  threshold_rows: 1000\n"
            f"message_log: {{path: {tmp_path / 'messages.jsonl'}}}\n")
    (tmp_path / "docs.yaml").write_text(text)
    return parse_config(text, file=str(tmp_path / "docs.yaml"), base_dir=tmp_path)


def doc(rng: random.Random, i: int, rare: str = "") -> dict[str, Any]:
    return {"id": i, "title": " ".join(rng.choices(WORDS, k=3)),
            "body": " ".join([*rng.choices(WORDS, k=10), rare]).strip()}


def first_rows() -> list[dict[str, Any]]:
    rng = random.Random(16)
    return [doc(rng, i, RARE[1] if i % 97 == 0 else "") for i in range(1, 2001)]


def feed_records() -> list[dict[str, Any]]:
    """3,000 new rows and 100 rows indexed before, retitled."""
    rng = random.Random(61)
    new = [doc(rng, i, RARE[2] if i % 50 == 0 else "") for i in range(2001, 5001)]
    changed = [{**doc(rng, i), "title": f"{RARE[0]} {i}"} for i in range(1, 101)]
    return new + changed


def sqlite_utils_db(path: Path, *, columns: tuple[str, ...] = ("title", "body"),
                    **fts: Any) -> None:
    """A database as sqlite-utils makes one: rows inserted by it, then its FTS index."""
    db = sqlite_utils.Database(path)
    db["docs"].insert_all(first_rows(), pk="id")  # type: ignore[union-attr]
    db["docs"].enable_fts(list(columns), create_triggers=True, **fts)  # type: ignore[union-attr]
    db.close()


def write_feed(tmp_path: Path, table: str, records: list[dict[str, Any]]) -> None:
    inbox = tmp_path / f"{table}_inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "part-00.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))


def schema(path: Path) -> list[tuple[str, str, str]]:
    conn = read_only(path)
    try:
        return sorted(conn.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
    finally:
        conn.close()


def triggers(path: Path) -> dict[str, str]:
    return {name: sql for kind, name, sql in schema(path) if kind == "trigger"}


def integrity_check(path: Path, fts: str = "docs_fts") -> None:
    """FTS5's own check that the index matches its content (raises when it does not)."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def sqlite_utils_search(path: Path) -> dict[str, list[tuple[int, str]]]:
    """What sqlite-utils' own search finds, as (rowid, title) in rowid order."""
    db = sqlite_utils.Database(path)
    try:
        table = db["docs"]
        return {term: [(row["rowid"], row["title"]) for row in table.search(  # type: ignore[union-attr]
            term, order_by="rowid")] for term in TERMS}
    finally:
        db.close()


def other_program(path: Path, sql: str) -> str:
    """Run `sql` through Python's own `sqlite3` in another process; its SQLite version."""
    script = ("import sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
              "conn.executescript(sys.argv[2])\n"
              "conn.close()\n"
              "print(sqlite3.sqlite_version)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path), sql], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def engine_search(engine: Engine) -> dict[str, list[tuple[int, str]]]:
    with engine.read(requires=["fts:docs"]) as conn:
        return {term: [(row[0], row[1]) for row in conn.execute(
            "SELECT docs.id, docs.title FROM docs_fts JOIN docs ON docs.id = docs_fts.rowid "
            "WHERE docs_fts MATCH ? ORDER BY docs.id", (term,))] for term in TERMS}


# --- adoption ---------------------------------------------------------------------------


def test_an_index_made_by_sqlite_utils_is_adopted_and_searches_like_sqlite_utils_after_a_catch_up(
        tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.database.path
    sqlite_utils_db(path)
    theirs = triggers(path)
    assert set(theirs) == {"docs_ai", "docs_ad", "docs_au"}
    write_feed(tmp_path, "docs", feed_records())
    with Engine(config) as engine:
        # Adopted: no second trigger set, theirs untouched.
        assert triggers(path) == theirs
        run = engine.sync.run("docs_feed", timeout=120)
        assert (run.status, run.rows) == ("ok", 3100)
        assert run.fts_lease is not None and run.fts_lease.deferred
        assert run.fts_lease.tables == ("docs_fts",)
        assert run.fts_after is not None and run.fts_after.state == "live"
        found = engine_search(engine)
    # Their own triggers were the ones deferred and restored, verbatim.
    assert triggers(path) == theirs
    integrity_check(path)

    # The same rows written by sqlite-utils alone, triggers live throughout.
    control = tmp_path / "control.db"
    sqlite_utils_db(control)
    db = sqlite_utils.Database(control)
    db["docs"].upsert_all(feed_records(), pk="id")  # type: ignore[union-attr]
    db.close()
    expected = sqlite_utils_search(control)
    assert sqlite_utils_search(path) == expected
    assert {t: [(i, title) for i, title in rows] for t, rows in found.items()} == expected
    assert len(expected["kaleidoscope"]) == 100 and len(expected["title:kaleidoscope"]) == 100
    assert expected["zephyr"] and expected["phoenix"]
    # sqlite-utils keeps working on the adopted database.
    db = sqlite_utils.Database(path)
    db["docs"].insert({"id": 9001, "title": "late phoenix", "body": "x"})  # type: ignore[union-attr]
    assert [r["id"] for r in db["docs"].search("late")] == [9001]  # type: ignore[union-attr]
    db.close()
    integrity_check(path)


def test_an_index_that_an_earlier_version_doubled_is_repaired_at_start(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.database.path
    sqlite_utils_db(path)
    theirs = triggers(path)
    # What the engine used to do: its own trigger set beside theirs, every row indexed twice.
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TRIGGER docs_fts_ai AFTER INSERT ON docs BEGIN
          INSERT INTO docs_fts (rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        CREATE TRIGGER docs_fts_ad AFTER DELETE ON docs BEGIN
          INSERT INTO docs_fts (docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
        END;
        INSERT INTO docs (id, title, body) VALUES (5000, 'doubled phoenix', 'twice');
    """)
    conn.close()
    with pytest.raises(apsw.CorruptError):
        integrity_check(path)
    with Engine(config) as engine, engine.read(requires=["fts:docs"]) as read:
        assert read.execute("SELECT rowid FROM docs_fts WHERE docs_fts MATCH 'doubled'"
                            ).fetchall() == [(5000,)]
    assert triggers(path) == theirs
    integrity_check(path)


NOT_ADOPTABLE: dict[str, tuple[dict[str, Any], str, str]] = {
    "columns": ({"columns": ("title",)}, "[title, body]",
                "it indexes (title) but fts declares (title, body)"),
    "tokenizer": ({"tokenize": "porter"}, "[title, body]",
                  "its tokenizer is porter but fts declares unicode61 (the default)"),
    "other-name": ({}, "{columns: [title, body], name: docs_search}",
                   "FTS table docs_fts already indexes it (content=docs); declare "
                   "`fts: {name: docs_fts, ...}` to adopt it"),
}


@pytest.mark.parametrize("case", list(NOT_ADOPTABLE))
def test_an_index_that_cannot_be_adopted_is_refused_at_start_with_one_line(
        tmp_path: Path, case: str) -> None:
    made, declared, why = NOT_ADOPTABLE[case]
    config = make_config(tmp_path, fts=declared)
    path = config.database.path
    sqlite_utils_db(path, **made)
    before, found = schema(path), sqlite_utils_search(path)
    with pytest.raises(SchemaError) as refused:
        Engine(config).start()
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and message.startswith("table docs: ")
    assert why in message and "docs_fts" in message
    # Nothing changed: no trigger, no table of the engine's, the same search.
    assert schema(path) == before
    assert sqlite_utils_search(path) == found
    if case == "columns":
        done = run_sqlwarden("run", str(tmp_path / "docs.yaml"), "--once", "--no-progress")
        assert done.returncode != 0
        [line] = done.stderr.strip().splitlines()
        assert why in line
        assert schema(path) == before


def test_an_index_that_stores_its_own_text_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.database.path
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT, body TEXT);
        CREATE VIRTUAL TABLE docs_fts USING fts5(title, body);
        CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
          INSERT INTO docs_fts (rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
    """)
    conn.close()
    before = schema(path)
    with pytest.raises(SchemaError, match=r"docs_fts .*cannot be adopted: it stores its own "
                                          r"copy of the text"):
        Engine(config).start()
    assert schema(path) == before


# --- which catch-up defers what -----------------------------------------------------------


def fts_asks(config: Config) -> list[dict[str, Any]]:
    return [r for r in iter_records(config.message_log_path)
            if r["kind"] == "ask" and r["message"] in ("writer.fts_defer", "writer.fts_restore")]


def test_a_catch_up_defers_only_the_fts_tables_of_the_table_it_writes(tmp_path: Path) -> None:
    config = make_config(tmp_path, tables=NOTES + ITEMS, sources=("docs", "notes", "items"))
    path = config.database.path
    sqlite_utils_db(path)
    write_feed(tmp_path, "items", [{"id": i, "name": f"item {i}"} for i in range(1, 3001)])
    with Engine(config) as engine:
        live = triggers(path)
        assert {"docs_ai", "notes_fts_ai"} <= set(live)
        # A table without FTS: nothing deferred, the Writer never asked.
        run = engine.sync.run("items_feed", timeout=120)
        assert (run.status, run.rows) == ("ok", 3000)
        assert run.fts_lease is not None and not run.fts_lease.deferred
        assert "no FTS table that can be deferred indexes items" in run.fts_lease.reason
        assert fts_asks(config) == []
        lease = engine.fts.begin_catch_up("items_feed", 50_000)
        status = engine.status()["fts"]
        assert not lease.deferred and (status["state"], status["tables"]) == ("live", [])
        assert triggers(path) == live
        engine.fts.end_catch_up("items_feed")

        # docs: only its own FTS table; notes keeps its triggers.
        lease = engine.fts.begin_catch_up("docs_feed", 50_000)
        assert lease.deferred and lease.tables == ("docs_fts",)
        assert engine.status()["fts"]["tables"] == ["docs_fts"]
        assert {"notes_fts_ai", "notes_fts_ad", "notes_fts_au"} <= set(triggers(path))
        assert "docs_ai" not in triggers(path)
        # notes joins with its own table; docs ending restores docs_fts alone.
        lease = engine.fts.begin_catch_up("notes_feed", 50_000)
        assert lease.deferred and lease.tables == ("notes_fts",)
        assert engine.fts.status().tables == ("docs_fts", "notes_fts")
        engine.write_batch([("INSERT INTO docs (id, title, body) VALUES (?, ?, ?)",
                             (i, "phoenix rises", "late")) for i in range(3001, 3101)]
                           + [("INSERT INTO notes (id, text) VALUES (?, ?)",
                               (i, "zephyr note")) for i in range(1, 101)])
        view = engine.fts.end_catch_up("docs_feed")
        assert (view.state, view.tables, view.sources) == ("deferred", ("notes_fts",),
                                                             (("notes_feed", 1),))
        assert view.last_restore is not None
        assert [t.fts for t in view.last_restore.tables] == ["docs_fts"]
        assert triggers(path)["docs_ai"] == live["docs_ai"]
        assert "notes_fts_ai" not in triggers(path)
        view = engine.fts.end_catch_up("notes_feed")
        assert view.state == "live" and view.tables == ()
        assert triggers(path) == live
        with engine.read(requires=["fts:docs", "fts:notes"]) as conn:
            assert conn.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH "
                                "'rises'").fetchone() == (100,)
            assert conn.execute("SELECT count(*) FROM notes_fts WHERE notes_fts MATCH "
                                "'zephyr'").fetchone() == (100,)
    integrity_check(path)
    integrity_check(path, "notes_fts")
    deferred = [r for r in fts_asks(config) if r["message"] == "writer.fts_defer"]
    assert len(deferred) == 2
    # A table joining the deferral in place and one restored alone keep protocol rule 3.
    checked = run_sqlwarden("replay", str(config.message_log_path), "--check", timeout_s=60)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines()[-1].startswith("no violations in ")


# --- another program on an older SQLite ---------------------------------------------------


@pytest.mark.parametrize("made_by", ["sqlite-utils", "engine"])
def test_writes_through_python_sqlite3_live_and_deferred_are_found_after_restore(
        tmp_path: Path, made_by: str) -> None:
    config = make_config(tmp_path)
    path = config.database.path
    if made_by == "sqlite-utils":
        sqlite_utils_db(path)
    else:
        with Engine(config) as engine:
            engine.write_batch([("INSERT INTO docs (id, title, body) VALUES (?, ?, ?)",
                                 (row["id"], row["title"], row["body"]))
                                for row in first_rows()])
    with Engine(config) as engine:
        # Live: the FTS triggers run inside the other program's SQLite.
        version = other_program(path, """
            INSERT INTO docs (id, title, body) VALUES (6001, 'live zephyr', 'another program');
            UPDATE docs SET body = 'kaleidoscope live' WHERE id = 1;
            DELETE FROM docs WHERE id = 2;""")
        assert tuple(map(int, version.split("."))) < (3, 42)  # older than the engine's own
        lease = engine.fts.begin_catch_up("docs_feed", 50_000)
        assert lease.deferred
        # Deferred: new rows, and changes to indexed rows through the capture triggers.
        inserts = "".join(f"INSERT INTO docs (id, title, body) VALUES ({i}, "
                          "'deferred zephyr', 'pump');" for i in range(7001, 7201))
        other_program(path, f"""
            BEGIN;
            {inserts}
            UPDATE docs SET title = 'kaleidoscope retitled' WHERE id BETWEEN 10 AND 59;
            DELETE FROM docs WHERE id BETWEEN 60 AND 79;
            UPDATE docs SET id = 8000 WHERE id = 80;
            COMMIT;""")
        view = engine.fts.end_catch_up("docs_feed")
        assert view.state == "live" and view.last_restore is not None
        assert view.last_restore.tables[0].mode == "incremental"
        # And live again afterwards.
        other_program(path, "UPDATE docs SET body = 'phoenix after' WHERE id = 100;")
        with engine.read(requires=["fts:docs"]) as conn:
            def ids(term: str) -> list[int]:
                return [r[0] for r in conn.execute(
                    "SELECT rowid FROM docs_fts WHERE docs_fts MATCH ? ORDER BY rowid",
                    (term,))]

            def containing(word: str) -> list[int]:
                return [r[0] for r in conn.execute(
                    "SELECT id FROM docs WHERE ' ' || title || ' ' || body || ' ' "
                    "LIKE ? ORDER BY id", (f"% {word} %",))]

            for word in ("zephyr", "kaleidoscope", "phoenix", "pump", "valve", "retitled"):
                assert ids(word) == containing(word), word
            assert ids("zephyr") == [6001, *range(7001, 7201)]
            assert ids("kaleidoscope") == [1, *range(10, 60)]
            assert 2 not in ids("pump OR valve OR meter OR storm")
            assert 8000 in ids("pump OR valve OR meter OR storm")
    integrity_check(path)
