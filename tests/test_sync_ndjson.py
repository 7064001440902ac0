"""The ndjson source: a directory of `.ndjson`/`.jsonl` files read once, line by line,
with bad records kept as rejects, resumable mid-file after a crash."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine
from sqlwarden.fts.deferral import read_deferral
from sqlwarden.sync.sources.mapping import RAW_KEEP

from .conftest import kill_driver_when, read_only, table_digest

ITEMS = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: {type: text, not_null: true}
      body: text
"""

BIG = 5 * 1024 * 1024


def config_text(tmp_path: Path, *, extra: str = "", tables: str = ITEMS, table: str = "items",
                db: str = "data", inbox: str = "inbox", tail: str = "") -> str:
    return f"""\
database: {{path: {tmp_path / db / 'test.db'}}}
tables:
{tables}
sources:
  files:
    kind: ndjson
    path: {tmp_path / inbox}
    table: {table}
{textwrap.indent(textwrap.dedent(extra), '    ')}
{tail}
message_log: {{path: {tmp_path / db / 'messages.jsonl'}}}
"""


def make_config(tmp_path: Path, **kwargs: Any) -> Config:
    return parse_config(config_text(tmp_path, **kwargs), file="test.yaml", base_dir=tmp_path)


def inbox(tmp_path: Path, name: str = "inbox") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rec(i: int | str, name: str | None, body: str | None = None) -> str:
    record: dict[str, Any] = {"id": i}
    if name is not None:
        record["name"] = name
    if body is not None:
        record["body"] = body
    return json.dumps(record, ensure_ascii=False)


def write_lines(path: Path, lines: list[str], *, newline_at_end: bool = True) -> list[int]:
    """Write `lines` to `path`; returns the byte offset of each line."""
    data = bytearray()
    offsets = []
    for i, line in enumerate(lines):
        offsets.append(len(data))
        data += line.encode()
        if i < len(lines) - 1 or newline_at_end:
            data += b"\n"
    path.write_bytes(bytes(data))
    return offsets


def items(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.read() as conn:
        return list(conn.execute("SELECT id, name, body FROM items ORDER BY id"))


def rejects(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.read() as conn:
        return list(conn.execute("SELECT position, reason, raw, run FROM _sw_rejects "
                                 "ORDER BY id"))


def files(engine: Engine) -> dict[str, tuple[int, int, int]]:
    with engine.read() as conn:
        return {name: (position, size, done) for name, position, size, done in conn.execute(
            "SELECT file, position, size, done FROM _sw_sync_files ORDER BY file")}


# --- one directory, three runs ----------------------------------------------------------


def test_each_line_is_read_once_bad_ones_rejected_and_a_partial_last_line_waited_on(
        tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    a_at = write_lines(folder / "a.ndjson", [
        rec(1, "one", "first"),
        rec(2, "twö"),                     # not ASCII: offsets are bytes
        '{"id": 3, "name": ',              # not JSON
        rec(4, None, "no name"),           # a required field missing
        "",                                # a blank line: nothing
        rec("abc", "wrong id"),            # a wrong type
        rec(5, "five", "last of a"),
    ])
    big = "x" * BIG
    write_lines(folder / "b.jsonl", [rec(10, "ten"), rec(11, "big", big), rec(12, "twelve"),
                                     '{"id": 13, "name": "thir'], newline_at_end=False)
    config = make_config(tmp_path)
    path = config.database.path
    with Engine(config) as engine:
        first = engine.sync.run("files", timeout=60)
        assert (first.status, first.mode, first.rows, first.rejects) == ("ok", "full", 6, 3)
        assert [row[0] for row in items(engine)] == [1, 2, 5, 10, 11, 12]
        assert items(engine)[1] == (2, "twö", None)
        with engine.read() as conn:
            assert conn.execute("SELECT length(body) FROM items WHERE id = 11").get == BIG
        stored = rejects(engine)
        assert [(position, run) for position, _, _, run in stored] == [
            (f"a.ndjson:{a_at[2]}", first.id), (f"a.ndjson:{a_at[3]}", first.id),
            (f"a.ndjson:{a_at[5]}", first.id)]
        reasons = [reason for _, reason, _, _ in stored]
        assert reasons[0].startswith("not valid JSON")
        assert reasons[1] == "field 'name' (column name) is missing"
        assert "column id" in reasons[2] and "expected an integer" in reasons[2]
        assert [raw for _, _, raw, _ in stored] == [
            '{"id": 3, "name": ', rec(4, None, "no name"), rec("abc", "wrong id")]
        (last,) = engine.sync.history("files")
        assert last.id == first.id and last.status == "ok"
        assert last.note is not None and "incomplete last line in b.jsonl" in last.note
        b_size = (folder / "b.jsonl").stat().st_size
        partial = len('{"id": 13, "name": "thir')
        assert files(engine) == {"a.ndjson": ((folder / "a.ndjson").stat().st_size,
                                              (folder / "a.ndjson").stat().st_size, 1),
                                 "b.jsonl": (b_size - partial, b_size, 0)}

        # The writer finishes the line and adds one more.
        with (folder / "b.jsonl").open("a") as f:
            f.write('teen"}\n' + rec(14, "fourteen") + "\n")
        second = engine.sync.run("files", timeout=60)
        assert (second.status, second.mode, second.rows, second.rejects) == (
            "ok", "incremental", 2, 0)
        assert second.note is None
        assert [row[:2] for row in items(engine)][-2:] == [(13, "thirteen"), (14, "fourteen")]
        assert len(rejects(engine)) == 3
        assert {name: (position == size, done) for name, (position, size, done)
                in files(engine).items()} == {"a.ndjson": (True, 1), "b.jsonl": (True, 1)}
        before = table_digest(path, "items")

        third = engine.sync.run("files", timeout=60)
        assert (third.status, third.rows, third.rejects) == ("ok", 0, 0)
        assert table_digest(path, "items") == before
        assert [r.rows for r in engine.sync.history("files")] == [0, 2, 6]


def test_an_older_files_unterminated_last_line_is_read_once_a_newer_file_exists(
        tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    write_lines(folder / "a.ndjson", [rec(1, "one"), rec(2, "two, unterminated")],
                newline_at_end=False)
    b_at = write_lines(folder / "b.ndjson", [rec(3, "three"), '{"id": 4, "name": "cut'],
                       newline_at_end=False)
    write_lines(folder / "c.ndjson", [rec(5, "five")])
    with Engine(make_config(tmp_path)) as engine:
        run = engine.sync.run("files", timeout=30)
        assert (run.status, run.rows, run.rejects) == ("ok", 4, 1)
        assert run.note is None
        assert [row[:2] for row in items(engine)] == [
            (1, "one"), (2, "two, unterminated"), (3, "three"), (5, "five")]
        ((position, reason, raw, _),) = rejects(engine)
        assert position == f"b.ndjson:{b_at[1]}"
        assert reason.startswith("the last line of a file that has no newline: not valid JSON")
        assert raw == '{"id": 4, "name": "cut'
        assert all(position == size and done for position, size, done
                   in files(engine).values())
        assert len(files(engine)) == 3

        # A late unterminated line in an older file: newer files exist (though they have
        # nothing new), so it is read as it is.
        with (folder / "a.ndjson").open("a") as f:
            f.write("\n" + rec(6, "late, unterminated"))
        late = engine.sync.run("files", timeout=30)
        assert (late.status, late.rows, late.rejects, late.note) == ("ok", 1, 0, None)
        assert items(engine)[-1][:2] == (6, "late, unterminated")
        position, size, done = files(engine)["a.ndjson"]
        assert position == size and done


def test_a_line_past_max_record_mb_is_rejected_and_the_lines_after_it_are_read(
        tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    # 5 MB spans several read blocks; 1.5 MB may fit in one block with the line before.
    at = write_lines(folder / "a.ndjson", [
        rec(1, "one"), rec(2, "huge", "y" * BIG), rec(3, "three"),
        rec(4, "large", "z" * (3 * 1024 * 1024 // 2)), rec(5, "five")])
    with Engine(make_config(tmp_path, extra="max_record_mb: 1")) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 3, 2)
        assert [row[0] for row in items(engine)] == [1, 3, 5]
        stored = rejects(engine)
        assert [position for position, _, _, _ in stored] == [f"a.ndjson:{at[1]}",
                                                             f"a.ndjson:{at[3]}"]
        for (_, reason, raw, _), head in zip(stored, ('{"id": 2, "name": "huge"',
                                                      '{"id": 4, "name": "large"'), strict=True):
            assert "max_record_mb" in reason and "(1 MB)" in reason
            assert raw.startswith(head)
            assert RAW_KEEP < len(raw) <= RAW_KEEP + 200
            assert "bytes in all" in raw[RAW_KEEP:]
        ((position, size, done),) = files(engine).values()
        assert position == size and done


def nameless_eighth(tmp_path: Path, records: int) -> tuple[Config, list[int]]:
    """A source failing on rejects, batches of 5, whose record 8 of `records` has no name;
    returns its config and where each line starts."""
    lines = [rec(i, f"item {i}") for i in range(1, records + 1)]
    lines[7] = rec(8, None, "nameless")
    at = write_lines(inbox(tmp_path) / "a.ndjson", lines)
    return make_config(tmp_path, extra="on_reject: fail\nbatch_rows: 5"), at


def test_on_reject_fail_fails_the_run_at_the_bad_record(tmp_path: Path) -> None:
    config, at = nameless_eighth(tmp_path, 12)
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=30)
        assert run.status == "failed" and run.rows == 5
        assert run.error is not None
        assert f"a.ndjson:{at[7]}" in run.error
        assert "field 'name' (column name) is missing" in run.error
        assert "on_reject: fail" in run.error
        # The first batch committed; nothing of the batch with the bad record did.
        assert [row[0] for row in items(engine)] == [1, 2, 3, 4, 5]
        assert rejects(engine) == []
        assert files(engine)["a.ndjson"][0] == at[5]
        (last,) = engine.sync.history("files")
        assert (last.id, last.status, last.error, last.rows) == (run.id, "failed", run.error, 5)


def test_on_reject_fail_names_the_bad_record_when_more_batches_follow(
        tmp_path: Path) -> None:
    config, at = nameless_eighth(tmp_path, 40)
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=30)
        assert run.status == "failed" and run.rows == 5
        assert [row[0] for row in items(engine)] == [1, 2, 3, 4, 5]
        assert run.error is not None and f"a.ndjson:{at[7]}" in run.error


PARENTS = """\
  parents:
    columns:
      id: {type: integer, primary_key: true}
      name: text
  children:
    columns:
      id: {type: integer, primary_key: true}
      parent_id: {type: integer, not_null: true, references: parents.id}
      label: text
"""


def test_rows_the_database_refuses_become_rejects_and_the_rest_commit(tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    at = write_lines(folder / "a.ndjson", [
        json.dumps({"id": i, "parent_id": p, "label": f"c{i}"})
        for i, p in ((1, 1), (2, 9), (3, 2), (4, 8), (5, 1))])
    config = make_config(tmp_path, tables=PARENTS, table="children")
    with Engine(config) as engine:
        engine.write("INSERT INTO parents (id, name) VALUES (1, 'p1'), (2, 'p2')")
        run = engine.sync.run("files", timeout=30)
        assert (run.status, run.rows, run.rejects) == ("ok", 3, 2)
        with engine.read() as conn:
            assert list(conn.execute("SELECT id, parent_id FROM children ORDER BY id")) == [
                (1, 1), (3, 2), (5, 1)]
        stored = rejects(engine)
        assert len(stored) == 2
        for (position, reason, raw, _), parent, line in zip(stored, (9, 8), (1, 3),
                                                            strict=True):
            assert position == f"a.ndjson:{at[line]}"
            assert "the database refused the row" in reason
            assert "FOREIGN KEY constraint failed" in reason
            assert f"'parent_id': {parent}" in raw


def test_on_reject_fail_with_a_row_the_database_refuses_fails_without_retrying(
        tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    write_lines(folder / "a.ndjson", [json.dumps({"id": i, "parent_id": p})
                                      for i, p in ((1, 1), (2, 9), (3, 1))])
    config = make_config(tmp_path, tables=PARENTS, table="children", extra="on_reject: fail")
    with Engine(config) as engine:
        engine.write("INSERT INTO parents (id, name) VALUES (1, 'p1')")
        run = engine.sync.run("files", timeout=30)
        assert run.status == "failed" and run.rows == 0
        assert run.error is not None and "FOREIGN KEY constraint failed" in run.error
        (view,) = engine.sync.status()
        assert (view.state, view.next_reason) == ("idle", None), "a retry cannot help"
        assert "on_reject: fail" in run.error


def test_the_memory_guard_fails_the_run(tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    write_lines(folder / "a.ndjson", [rec(i, f"item {i}") for i in range(1, 11)])
    config = make_config(tmp_path, extra="memory_limit_mb: 1\nretries: []")
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=30)
        assert run.status == "failed"
        assert run.error is not None and run.error.startswith("memory guard")
        assert "memory_limit_mb 1" in run.error
        (last,) = engine.sync.history("files")
        assert (last.status, last.error) == ("failed", run.error)
        assert items(engine) == []


def test_the_schedule_is_anchored_at_the_last_completion(tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    write_lines(folder / "a.ndjson", [rec(i, f"item {i}") for i in range(1, 4)])
    config = make_config(tmp_path, extra="every: 1h")
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=30)
        assert run.status == "ok"
        last = engine.sync.history("files")[0]
        assert last.ended_at is not None
        (view,) = engine.sync.status()
        assert view.state == "idle" and view.next_reason == "schedule"
        assert view.next_run_at == last.ended_at + 3600
    # A restart keeps the anchor: the next run is an hour after that completion.
    with Engine(config) as engine:
        (view,) = engine.sync.status()
        assert engine.sync.history("files")[0].id == last.id
        assert view.next_run_at == last.ended_at + 3600


# --- a crash mid-run --------------------------------------------------------------------

DOCS = """\
  docs:
    columns:
      id: {type: integer, primary_key: true}
      title: {type: text, not_null: true}
      body: text
      n: integer
    fts: [title, body]
"""
WORDS = ("pump", "valve", "meter", "storm", "flood", "cable", "turbine", "gasket", "filter",
         "sensor", "alarm", "battery", "drift", "signal", "culvert", "reservoir")
RECORDS = 200_000
FILES = 4


def write_feed(folder: Path) -> None:
    """RECORDS deterministic records over FILES files, ids 1..RECORDS."""
    rng = random.Random(20260301)
    per = RECORDS // FILES
    for f in range(FILES):
        lines = []
        for i in range(f * per + 1, (f + 1) * per + 1):
            title = " ".join(rng.choices(WORDS, k=3))
            body = " ".join(rng.choices(WORDS, k=12))
            lines.append(json.dumps({"id": i, "title": title, "body": body, "n": i % 97}))
        (folder / f"part-{f:02d}.ndjson").write_text("\n".join(lines) + "\n")


def last_run_state(path: Path) -> tuple[str, int] | None:
    """(status, rows_written) of the newest run, read from outside the process."""
    if not path.exists():
        return None
    try:
        conn = read_only(path)
    except apsw.Error:
        return None
    try:
        row = conn.execute("SELECT status, rows_written FROM _sw_sync_runs "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    except apsw.Error:
        return None
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


def test_a_run_killed_mid_file_resumes_where_its_last_batch_committed(tmp_path: Path) -> None:
    folder = inbox(tmp_path, "feed")
    write_feed(folder)
    extra = "batch_rows: 2000"
    (tmp_path / "data").mkdir()
    yaml_path = tmp_path / "data" / "sync.yaml"
    yaml_path.write_text(config_text(tmp_path, tables=DOCS, table="docs", inbox="feed",
                                     extra=extra))
    config = parse_config(yaml_path.read_text(), file=str(yaml_path), base_dir=tmp_path)
    path = config.database.path

    def mid_run() -> bool:
        state = last_run_state(path)
        # Past the first file, so one file is done and another is read part way.
        return (state is not None and state[0] == "running"
                and RECORDS // FILES < state[1] < RECORDS)

    kill_driver_when("sync_driver", yaml_path, "files", ready=mid_run,
                     what="the run to commit batches past the first file")
    killed_state = last_run_state(path)
    assert killed_state is not None and killed_state[0] == "running"
    assert 0 < killed_state[1] < RECORDS
    conn = read_only(path)
    try:
        # The killed run had deferred FTS upkeep (its backlog passed the threshold).
        assert read_deferral(conn) is not None
    finally:
        conn.close()

    with Engine(config) as engine:
        (killed,) = engine.sync.history("files")
        assert (killed.status, killed.error) == ("failed", "process ended")
        assert killed.rows == killed_state[1]
        # The recorded positions are whole lines, as many as the rows committed.
        positions = files(engine)
        assert positions["part-00.ndjson"][0] == positions["part-00.ndjson"][1]
        assert sum((folder / name).read_bytes()[:position].count(b"\n")
                   for name, (position, _, _) in positions.items()) == killed.rows
        resumed = engine.sync.run("files", timeout=120)
        assert (resumed.status, resumed.mode, resumed.rejects) == ("ok", "incremental", 0)
        # Every record was written once: by the killed run's batches or by this one.
        assert killed.rows + resumed.rows == RECORDS
        with engine.read() as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT id), min(id), max(id) "
                                "FROM docs").fetchone() == (RECORDS, RECORDS, 1, RECORDS)
        assert all(position == size and done for position, size, done
                   in files(engine).values())
        assert engine.fts.status().state == "live"

    control = make_config(tmp_path, tables=DOCS, table="docs", inbox="feed", db="control",
                          extra=extra)
    with Engine(control) as engine:
        straight = engine.sync.run("files", timeout=120)
        assert (straight.status, straight.rows) == ("ok", RECORDS)
    assert table_digest(path, "docs") == table_digest(control.database.path, "docs")
    conn = apsw.Connection(str(path))
    try:
        conn.execute("INSERT INTO docs_fts(docs_fts, rank) VALUES ('integrity-check', 1)")
        hits = conn.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH "
                            "'culvert AND turbine'").get
    finally:
        conn.close()
    conn = apsw.Connection(str(control.database.path))
    try:
        assert conn.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH "
                            "'culvert AND turbine'").get == hits > 0
    finally:
        conn.close()
