"""Poison records are rejected alone: each one lands in `_sw_rejects` with where it was
and why, its neighbours commit, and the next run does not meet it again."""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from sqlwarden.facade import Engine
from sqlwarden.sync.sources.mapping import RAW_KEEP

from .conftest import run_sqlwarden
from .support.loopback import send_json
from .test_sync_http import Upstream, http_config, stamp, table_rows
from .test_sync_ndjson import config_text, inbox, items, make_config, rejects, write_lines

#: A table whose columns take every kind of value a record can hold.
KINDS = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: {type: text, not_null: true}
      body: text
      n: integer
      x: real
      extra: any
      at: timestamp
"""

DEEP = 100_000


def neighbours_around(poison: str) -> list[str]:
    return ['{"id": 1, "name": "one", "n": 10, "x": 1.5}', poison,
            '{"id": 3, "name": "three", "n": 30, "x": 3.5}']


# (poison line, the words its reason must hold)
POISON = {
    "a lone surrogate": ('{"id": 2, "name": "\\ud800"}', ("name", "surrogate")),
    "a lone surrogate in any column": ('{"id": 2, "name": "two", "extra": "a\\udfffb"}',
                                       ("extra", "surrogate")),
    "a lone surrogate in a value of the wrong type": (
        '{"id": 2, "name": "two", "n": {"a": "\\ud800"}}', ("'n'", "expected an integer")),
    "an integer past 64 bits": ('{"id": 2, "name": "two", "n": 123456789012345678901234567890}',
                                ("'n'", "64 bits")),
    "an integer past 64 bits in any column": (
        '{"id": 2, "name": "two", "extra": 99999999999999999999}', ("extra", "64 bits")),
    "an integer past 64 bits as text": (
        '{"id": 2, "name": 123456789012345678901234567890}', ("'name'", "64 bits")),
    "1e300 as the key": ('{"id": 1e300, "name": "two"}', ("'id'", "64 bits")),
    "a key past 64 bits": ('{"id": 18446744073709551616, "name": "two"}', ("'id'", "64 bits")),
    "a fraction as the key": ('{"id": 2.5, "name": "two"}', ("'id'", "integer")),
    "1e400 as a real": ('{"id": 2, "name": "two", "x": 1e400}', ("'x'", "non-finite")),
    "1e400 as text": ('{"id": 2, "name": "two", "body": 1e400}', ("'body'", "non-finite")),
    "1e400 in an any column": ('{"id": 2, "name": "two", "extra": -1e400}',
                               ("'extra'", "non-finite")),
    "1e400 inside a nested value": ('{"id": 2, "name": "two", "extra": {"v": [1e400]}}',
                                    ("'extra'", "non-finite")),
    "1e400 as an integer": ('{"id": 2, "name": "two", "n": 1e400}', ("'n'", "non-finite")),
    "a number as a timestamp past any year": ('{"id": 2, "name": "two", "at": 1e300}',
                                              ("'at'", "out of range")),
    "a value nested 100,000 deep": (
        '{"id": 2, "name": "two", "extra": ' + "[" * DEEP + "]" * DEEP + "}",
        ("nested too deeply",)),
}


@pytest.mark.parametrize("case", list(POISON))
def test_a_poison_record_is_rejected_alone_and_not_met_again(tmp_path: Path,
                                                             case: str) -> None:
    poison, words = POISON[case]
    at = write_lines(inbox(tmp_path) / "a.ndjson", neighbours_around(poison))
    config = make_config(tmp_path, tables=KINDS)
    with Engine(config) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 2, 1), run.error
        assert [row[:2] for row in items(engine)] == [(1, "one"), (3, "three")]
        ((position, reason, raw, _),) = rejects(engine)
        assert position == f"a.ndjson:{at[1]}"
        for word in words:
            assert word in reason
        assert len(raw) <= RAW_KEEP + 200
        before = items(engine)
        again = engine.sync.run("files", timeout=60)
        assert (again.status, again.rows, again.rejects) == ("ok", 0, 0)
        assert len(rejects(engine)) == 1
        assert items(engine) == before


def test_a_poison_record_with_many_neighbours_leaves_the_whole_batch_committed(
        tmp_path: Path) -> None:
    lines = [json.dumps({"id": i, "name": f"item {i}", "n": i}) for i in range(1, 1001)]
    lines[400] = '{"id": 401, "name": "bad \\udc80 text"}'
    lines[700] = '{"id": 701, "name": "big", "n": 9223372036854775808}'
    at = write_lines(inbox(tmp_path) / "a.ndjson", lines)
    with Engine(make_config(tmp_path, tables=KINDS, extra="batch_rows: 500")) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 998, 2)
        assert [p for p, _, _, _ in rejects(engine)] == [f"a.ndjson:{at[400]}",
                                                         f"a.ndjson:{at[700]}"]
        assert {row[0] for row in items(engine)} == set(range(1, 1001)) - {401, 701}


def test_the_largest_and_smallest_64_bit_integers_are_stored(tmp_path: Path) -> None:
    write_lines(inbox(tmp_path) / "a.ndjson", [
        json.dumps({"id": 9223372036854775807, "name": "max", "n": -9223372036854775808}),
        json.dumps({"id": 1, "name": "float key", "x": 1e300, "n": 4.0})])
    with Engine(make_config(tmp_path, tables=KINDS)) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 2, 0)
        with engine.read() as conn:
            assert list(conn.execute("SELECT id, n, x FROM items ORDER BY id")) == [
                (1, 4, 1e300), (9223372036854775807, -9223372036854775808, None)]


def test_a_huge_record_the_database_refuses_is_kept_cut_short(tmp_path: Path) -> None:
    big = "y" * (RAW_KEEP * 4)
    write_lines(inbox(tmp_path) / "a.ndjson", neighbours_around(
        json.dumps({"id": 2, "name": "big", "body": big})[:-1] + ', "extra": "\\ud800"}'))
    with Engine(make_config(tmp_path, tables=KINDS)) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 2, 1)
        ((_, reason, raw, _),) = rejects(engine)
        assert "extra" in reason
        assert RAW_KEEP < len(raw) <= RAW_KEEP + 200 and "kept]" in raw


DEFAULTS = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: {type: text, not_null: true}
      state: {type: text, not_null: true, default: new}
      weight: {type: real, not_null: true, default: 1.5}
      tries: {type: integer, default: 3}
"""


def test_a_missing_field_whose_column_has_a_default_takes_the_default(tmp_path: Path) -> None:
    write_lines(inbox(tmp_path) / "a.ndjson", [
        '{"id": 1, "name": "given", "state": "old", "weight": 2.0, "tries": 0}',
        '{"id": 2, "name": "missing"}',
        '{"id": 3, "name": "nulls", "state": null, "weight": null}'])
    with Engine(make_config(tmp_path, tables=DEFAULTS)) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 3, 0), rejects(engine)
        with engine.read() as conn:
            assert list(conn.execute(
                "SELECT id, name, state, weight, tries FROM items ORDER BY id")) == [
                (1, "given", "old", 2.0, 0), (2, "missing", "new", 1.5, 3),
                (3, "nulls", "new", 1.5, 3)]


# --- a run where nothing goes in ----------------------------------------------------------


def test_a_run_that_rejects_every_record_fails_with_the_first_reason(tmp_path: Path) -> None:
    lines = [json.dumps({"id": i, "body": "nameless"}) for i in range(1, 2001)]
    at = write_lines(inbox(tmp_path) / "a.ndjson", lines)
    with Engine(make_config(tmp_path, tables=KINDS, extra="batch_rows: 500")) as engine:
        run = engine.sync.run("files", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("failed", 0, 2000)
        assert run.error is not None and "every record" in run.error
        assert f"a.ndjson:{at[0]}" in run.error
        assert "field 'name' (column name) is missing" in run.error
        (last,) = engine.sync.history("files")
        assert (last.status, last.error) == ("failed", run.error)
        # The rejects are kept and passed: the next run has nothing new and is ok.
        again = engine.sync.run("files", timeout=60)
        assert (again.status, again.rejects) == ("ok", 0)


def test_sync_now_exits_1_when_every_record_is_rejected(tmp_path: Path) -> None:
    folder = inbox(tmp_path)
    write_lines(folder / "a.ndjson", ['{"id": 1, "n": 1}', '{"id": 2, "name": "\\ud800"}'])
    (tmp_path / "data").mkdir()
    yaml_path = tmp_path / "sw.yaml"
    yaml_path.write_text(config_text(tmp_path, tables=KINDS))
    done = run_sqlwarden("sync", "now", str(yaml_path), "files", "--no-progress")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout and "every record" in done.stdout
    assert "field 'name' (column name) is missing" in done.stdout


# --- the HTTP source ------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def test_a_poison_record_on_an_api_page_is_rejected_alone(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    for i in range(1, 8):
        upstream.put(i, stamp(i))
    upstream.records[3]["name"] = "bad \ud800 name"
    upstream.records[5]["id"] = 1e300
    config = http_config(tmp_path, upstream.url, fts_enabled=False)
    with Engine(config) as engine:
        run = engine.sync.run("api", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 5, 2), run.error
        assert [row[0] for row in table_rows(engine)] == [1, 2, 4, 6, 7]
        with engine.read() as conn:
            stored = sorted(conn.execute("SELECT position, reason FROM _sw_rejects"))
        assert [p for p, _ in stored] == ["page 1 item 2", "page 1 item 4"]
        assert "surrogate" in stored[0][1] and "name" in stored[0][1]
        assert "64 bits" in stored[1][1] and "'id'" in stored[1][1]
        before = table_rows(engine)
        again = engine.sync.run("api", timeout=60)
        assert (again.status, again.rejects) == ("ok", 0)
        assert table_rows(engine) == before
        with engine.read() as conn:
            assert conn.execute("SELECT count(*) FROM _sw_rejects").fetchone()[0] == 2


class RawPages(Upstream):
    """An API that answers each request with the next of `pages`, as they are."""

    def __init__(self, *pages: bytes) -> None:
        super().__init__()
        self.pages = deque(pages)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        send_json(handler, 200, self.pages.popleft() if self.pages else b'{"data": []}')


def api_record(i: int, extra: str = "") -> str:
    return (f'{{"id": {i}, "name": "item {i}", "body": "text {i}"{extra}, '
            f'"updated": "{stamp(i)}"}}')


def test_a_record_on_an_api_page_nested_too_deeply_is_rejected_alone(tmp_path: Path) -> None:
    deep = api_record(2, ', "tags": ' + "[" * DEEP + "]" * DEEP)
    page = f'{{"total": 3, "data": [{api_record(1)}, {deep}, {api_record(3)}], "more": null}}'
    api = RawPages(page.encode(), f'{{"data": [{api_record(3)}]}}'.encode())
    try:
        with Engine(http_config(tmp_path, api.url, fts_enabled=False)) as engine:
            run = engine.sync.run("api", timeout=60)
            assert (run.status, run.rows, run.rejects) == ("ok", 2, 1), run.error
            assert [row[0] for row in table_rows(engine)] == [1, 3]
            with engine.read() as conn:
                ((position, reason, raw),) = conn.execute(
                    "SELECT position, reason, raw FROM _sw_rejects")
            assert position == "page 1 item 1" and "nested too deeply" in reason
            assert raw.startswith('{"id": 2') and len(raw) <= RAW_KEEP + 200
            again = engine.sync.run("api", timeout=60)
            assert (again.status, again.rows, again.rejects) == ("ok", 0, 0)
    finally:
        api.close()


# (how the newest record upstream is spoiled, the words its reason holds)
NEWEST_POISON = {
    "text the database cannot take": ({"name": "bad \ud800 name"}, "surrogate"),
    "a required field missing": ({"name": None}, "'name'"),
    "a key past 64 bits": ({"id": 18446744073709551616}, "64 bits"),
}


def reject_rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.read() as conn:
        return [(p, r) for p, r in conn.execute("SELECT position, reason FROM _sw_rejects "
                                                "ORDER BY id")]


@pytest.mark.parametrize("case", list(NEWEST_POISON))
def test_a_rejected_newest_change_upstream_is_not_met_again_by_later_runs(
        tmp_path: Path, upstream: Upstream, case: str) -> None:
    spoiled, word = NEWEST_POISON[case]
    for i in range(1, 6):
        upstream.put(i, stamp(i))
    upstream.records[5].update(spoiled)
    with Engine(http_config(tmp_path, upstream.url, fts_enabled=False)) as engine:
        first = engine.sync.run("api", timeout=60)
        assert (first.status, first.rows, first.rejects) == ("ok", 4, 1), first.error
        [(position, reason)] = reject_rows(engine)
        assert position == "page 1 item 4" and word in reason
        before = table_rows(engine)
        for _ in range(2):
            again = engine.sync.run("api", timeout=60)
            assert (again.status, again.mode, again.rows, again.rejects) == (
                "ok", "incremental", 0, 0), again.error
            # The cursor moved past the reject: only it comes back (the cursor is inclusive).
            assert upstream.requests[-1]["since"] == stamp(5)
        assert reject_rows(engine) == [(position, reason)]
        assert table_rows(engine) == before
        full = engine.sync.run("api", mode="full", timeout=60)
        assert (full.status, full.rows, full.rejects) == ("ok", 0, 0), full.error
        assert "since" not in upstream.requests[-1]
        assert reject_rows(engine) == [(position, reason)]
        assert table_rows(engine) == before


def test_after_a_rejected_newest_change_new_and_fixed_records_still_come_in(
        tmp_path: Path, upstream: Upstream) -> None:
    for i in range(1, 4):
        upstream.put(i, stamp(i))
    upstream.records[3]["name"] = None
    with Engine(http_config(tmp_path, upstream.url, fts_enabled=False)) as engine:
        assert engine.sync.run("api", timeout=60).rejects == 1
        upstream.put(4, stamp(4))
        upstream.put(3, stamp(5))  # fixed upstream, so changed anew
        run = engine.sync.run("api", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 2, 0), run.error
        assert [row[0] for row in table_rows(engine)] == [1, 2, 3, 4]
        # Spoiled again in another way: a new reject, the stored row stays as it was.
        upstream.put(3, stamp(6), text="x")
        upstream.records[3]["id"] = 3.5
        upstream.put(5, stamp(7))
        run = engine.sync.run("api", timeout=60)
        assert (run.status, run.rows, run.rejects) == ("ok", 1, 1), run.error
        assert len(reject_rows(engine)) == 2
        assert [row[:2] for row in table_rows(engine)] == [
            (1, "item 1"), (2, "item 2"), (3, "item 3"), (4, "item 4"), (5, "item 5")]


def test_a_record_spoiled_past_its_key_is_known_by_its_raw_text(
        tmp_path: Path, upstream: Upstream) -> None:
    for i in range(1, 4):
        upstream.put(i, stamp(i))
    upstream.records[2]["id"] = "two"
    upstream.records[2]["updated"] = "yesterday"
    with Engine(http_config(tmp_path, upstream.url, fts_enabled=False)) as engine:
        for mode in ("auto", "full", "full"):
            run = engine.sync.run("api", mode=mode, timeout=60)
            assert run.status == "ok", run.error
        assert len(reject_rows(engine)) == 1
        assert [row[0] for row in table_rows(engine)] == [1, 3]


def test_a_database_an_older_engine_wrote_keeps_its_rejects_and_stores_each_once_after(
        tmp_path: Path, upstream: Upstream) -> None:
    config = http_config(tmp_path, upstream.url, fts_enabled=False)
    config.database.path.parent.mkdir(parents=True)
    older = sqlite3.connect(config.database.path)
    # `_sw_rejects` as an older engine made it, holding the same reject twice.
    older.execute("CREATE TABLE _sw_rejects (id INTEGER PRIMARY KEY, source TEXT NOT NULL, "
                  "run INTEGER, position TEXT NOT NULL, reason TEXT NOT NULL, "
                  "raw TEXT NOT NULL, at REAL NOT NULL) STRICT")
    older.executemany("INSERT INTO _sw_rejects (source, run, position, reason, raw, at) "
                      "VALUES ('api', 1, 'page 1 item 1', 'old', '{}', 0)", [(), ()])
    older.commit()
    older.close()
    for i in range(1, 4):
        upstream.put(i, stamp(i))
    upstream.records[3]["name"] = None
    with Engine(config) as engine:
        for _ in range(3):
            assert engine.sync.run("api", timeout=60).status == "ok"
        assert [p for p, _ in reject_rows(engine)] == ["page 1 item 1", "page 1 item 1",
                                                       "page 1 item 2"]
