"""The MySQL mirror against a real MariaDB server (tests/mariadb.py): live drain of the
outbox, range-checksum reconcile and verify, outages of either side, fleet scopes, and
what a user sees when the server or its settings are wrong."""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from sqlwarden.config import Config, parse_config
from sqlwarden.errors import MirrorError, MirrorUnavailable
from sqlwarden.facade import Engine
from sqlwarden.mirror.dialect import mariadb_real
from sqlwarden.protocol import MirrorStatus
from sqlwarden.replay.read import iter_records

from .conftest import files_under, kill_driver_when, read_only
from .support.mariadb import MirrorDb
from .support.mirror_driver import item

ITEMS = """\
  items:
    columns:
      id: {type: integer, primary_key: true}
      name: text
      score: real
      at: timestamp
      data: blob
"""

#: Quick polling and reconnects, so the tests wait as little as the engine allows.
FAST = {"poll_ms": 20, "backoff_initial_s": 0.05, "backoff_max_s": 0.5, "connect_timeout_s": 5}


# --- helpers ----------------------------------------------------------------------------


def config_text(tmp_path: Path, dsn: str, *, name: str = "dev", scope: str = "dev1",
                payload: str = "summary", **mirror: Any) -> str:
    options = {**FAST, **mirror}
    lines = "".join(f"  {key}: {value}\n" for key, value in options.items())
    data = tmp_path / name
    return f"""\
database: {{path: {data / 'dev.db'}}}
tables:
{ITEMS}
mirror:
  dsn: {dsn}
  scope: {scope}
{lines}message_log: {{path: {data / 'messages.jsonl'}, payload: {payload}}}
"""


def make_config(tmp_path: Path, dsn: str, **kwargs: Any) -> Config:
    return parse_config(config_text(tmp_path, dsn, **kwargs), file="test.yaml",
                        base_dir=tmp_path)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0,
             what: str | Callable[[], str] = "condition") -> None:
    """Poll `predicate` every 25 ms until it is true; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        time.sleep(0.025)


def holds_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Check that `predicate` stays true for `seconds` (something must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.025)


def mirror_status(engine: Engine) -> dict[str, Any]:
    status: dict[str, Any] = engine.status()["mirror"]
    return status


def shown(status: dict[str, Any]) -> str:
    keys = ("state", "error", "attempt", "reconciling", "reconciles", "drained_changes",
            "outbox")
    return ", ".join(f"{k}={status.get(k)!r}" for k in keys)


def is_caught_up(status: dict[str, Any]) -> bool:
    return (status["state"] == "up" and not status["reconciling"]
            and status["reconciles"] >= 1 and status["outbox"].get("depth") == 0)


def wait_caught_up(engine: Engine, timeout: float = 30.0) -> dict[str, Any]:
    """Until every local change is on the server: outbox empty, state up, no reconcile
    running (an outbox row is deleted only after its batch committed on the server)."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(mirror_status(engine))
        if seen["state"] == "failed":  # not retried until asked: it will not catch up
            raise AssertionError(f"the mirror failed instead of catching up ({shown(seen)})")
        return is_caught_up(seen)

    wait_for(done, timeout, lambda: f"the mirror to catch up ({shown(seen)})")
    return seen


def wait_mid_drain(engine: Engine, timeout: float = 30.0) -> dict[str, Any]:
    """Until the mirror has drained some changes and still holds more: the status then."""
    seen: dict[str, Any] = {}

    def mid_drain() -> bool:
        seen.update(mirror_status(engine))
        return seen["drained_changes"] > 0 and seen["outbox"]["depth"] > 0

    wait_for(mid_drain, timeout, lambda: f"the drain to be under way ({shown(seen)})")
    return seen


def wait_state(engine: Engine, *states: str, timeout: float = 30.0) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(mirror_status(engine))
        return seen["state"] in states

    wait_for(reached, timeout, lambda: f"mirror state {' or '.join(states)} ({shown(seen)})")
    return seen


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else value


def sqlite_rows(source: Engine | Path, table: str) -> tuple[list[str], list[str],
                                                            list[tuple[Any, ...]]]:
    """(columns, key columns, rows in key order) of a SQLite table."""
    conn: Any
    with contextlib.ExitStack() as stack:
        if isinstance(source, Engine):
            conn = stack.enter_context(source.read())
        else:
            conn = read_only(source)
            stack.callback(conn.close)
        info = list(conn.execute(f'PRAGMA table_info("{table}")'))
        columns = [row[1] for row in info]
        key = [row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        names = ", ".join(f'"{c}"' for c in columns)
        order = ", ".join(f'"{c}"' for c in key)
        rows = [tuple(_plain(v) for v in row)
                for row in conn.execute(f'SELECT {names} FROM "{table}" ORDER BY {order}')]
    return columns, key, rows


def mirror_rows(mirror_db: MirrorDb, table: str, scope: str, columns: list[str],
                key: list[str]) -> list[tuple[Any, ...]]:
    names = ", ".join(f"`{c}`" for c in columns)
    order = ", ".join(f"`{c}`" for c in key)
    return [tuple(_plain(v) for v in row) for row in mirror_db.server.query(
        f"SELECT {names} FROM `{table}` WHERE sw_scope = %s ORDER BY {order}", (scope,),
        database=mirror_db.database)]


def assert_mirror_equals_sqlite(source: Engine | Path, mirror_db: MirrorDb,
                                table: str = "items", scope: str = "dev1") -> int:
    """Every row of `table` in SQLite equals the mirror's row for `scope`, value for value
    (floats exactly, text byte for byte, blobs as bytes); returns the row count."""
    columns, key, local = sqlite_rows(source, table)
    remote = mirror_rows(mirror_db, table, scope, columns, key)
    for i, (mine, theirs) in enumerate(zip(local, remote, strict=False)):
        same = len(mine) == len(theirs) and all(
            a == b and type(a) is type(b) for a, b in zip(mine, theirs, strict=True))
        assert same, (f"row {i} of {table} ({scope}) differs:\n  sqlite {mine!r:.300}\n"
                      f"  mirror {theirs!r:.300}")
    assert len(local) == len(remote), (
        f"{table} ({scope}): {len(local)} rows in SQLite, {len(remote)} in the mirror; "
        f"first extra: {(local[len(remote):] or remote[len(local):])[0]!r:.300}")
    return len(local)


def mirror_count(mirror_db: MirrorDb, scope: str = "dev1", table: str = "items") -> int:
    ((count,),) = mirror_db.server.query(f"SELECT count(*) FROM `{table}` WHERE sw_scope = %s",
                                         (scope,), database=mirror_db.database)
    return int(count)


def outbox_depth(path: Path) -> int:
    conn = read_only(path)
    try:
        return int(conn.execute("SELECT count(*) FROM _sw_outbox").fetchone()[0])
    finally:
        conn.close()


def records(config: Config, run: str | None = None) -> list[dict[str, Any]]:
    """The message log's records (of one engine run, if given)."""
    path = config.message_log_path
    if not path.exists():
        return []
    return [r for r in iter_records(path) if run is None or r["run"] == run]


def tells(config: Config, run: str, message: str, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in records(config, run) if r["kind"] == "tell" and r["message"] == message
            and all(r["fields"].get(k) == v for k, v in fields.items())]


def write_items(engine: Engine, ids: range, chunk: int = 2000) -> None:
    for start in range(ids.start, ids.stop, chunk):
        engine.write_many("items", [item(i) for i in range(start, min(ids.stop, start + chunk))])


def boot_reconciled(engine: Engine) -> None:
    """The first connect's reconcile has ended (so what follows goes through the drain)."""
    wait_for(lambda: engine.mirror.view().reconciles >= 1, 30, "the boot reconcile")


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- live drain -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bulk_ingest_reaches_the_mirror_value_for_value(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 20_001))
        status = wait_caught_up(engine)
        assert status["error"] is None
        assert status["drained_changes"] >= 20_000
        assert status["lag_p99_ms"] is not None
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 20_000
        # The awkward values are really in there, not dropped on the way.
        with engine.read() as conn:
            assert conn.execute("SELECT count(*) FROM items WHERE data = x''").get > 0
            assert conn.execute("SELECT count(*) FROM items WHERE name = ''").get > 0
            assert conn.execute("SELECT count(*) FROM items WHERE score = 1e20").get > 0
        emoji = mirror_db.server.query(
            "SELECT name FROM items WHERE id = 3", database=mirror_db.database)
        assert emoji == [("ünïcödé 😀🎉 3",)]
        check = engine.mirror.verify(timeout=30)
        assert check.in_sync and check.verify
        (table,) = check.tables
        assert (table.sqlite_rows, table.mirror_rows, table.differing) == (20_000, 20_000, 0)


def test_updates_of_old_rows_reach_the_mirror(tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 1001))
        wait_caught_up(engine)
        # Rows far from the newest; their `at` (an old timestamp) is left as it was.
        engine.write("UPDATE items SET name = ?, score = ? WHERE id = ?", ("five, again", 0.3, 5))
        engine.write("UPDATE items SET name = NULL, data = x'' WHERE id = ?", (500,))
        engine.write_batch([("UPDATE items SET score = score / 2 WHERE id BETWEEN ? AND ?",
                             (200, 260)),
                            ("UPDATE items SET data = ? WHERE id = ?", (b"\x00new\xff", 7))])
        engine.upsert("items", [{"id": 42, "name": "upserted 😀", "score": -2.5e-7,
                                 "at": "2026-01-01T00:00:05.123456Z", "data": None}])
        wait_caught_up(engine)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 1000
        assert mirror_db.server.query(
            "SELECT name, score, at FROM items WHERE sw_scope = 'dev1' AND id IN (5, 42) "
            "ORDER BY id", database=mirror_db.database) == [
            ("five, again", 0.3, item(5)[3]), ("upserted 😀", -2.5e-7,
                                               "2026-01-01T00:00:05.123456Z")]
        check = engine.mirror.verify(timeout=30)
        assert check.in_sync, check
        assert [t.skipped for t in check.tables] == [True]


def test_deletes_reach_the_mirror(tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 1001))
        wait_caught_up(engine)
        engine.write("DELETE FROM items WHERE id = ?", (1,))
        engine.write("DELETE FROM items WHERE id = ?", (1000,))
        engine.write("DELETE FROM items WHERE id = ?", (555,))
        engine.write("DELETE FROM items WHERE id BETWEEN ? AND ?", (100, 349))
        # Inserted and deleted again before the drain saw it: never reaches the mirror.
        engine.write_batch([("INSERT INTO items (id, name) VALUES (?, ?)", (5000, "brief")),
                            ("DELETE FROM items WHERE id = ?", (5000,))])
        status = wait_caught_up(engine)
        assert status["drained_deletes"] >= 253
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 1000 - 3 - 250
        assert mirror_count(mirror_db) == 747
        assert engine.mirror.verify(timeout=30).in_sync


def test_a_key_swap_with_the_row_count_unchanged_reaches_the_mirror(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        boot_reconciled(engine)
        write_items(engine, range(1, 1001))
        wait_caught_up(engine)
        # Row B goes, row C (an old timestamp, a key inside B's range) comes: same count.
        old = item(300)
        engine.write_batch([("DELETE FROM items WHERE id = ?", (310,)),
                            ("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                             (1310, "swapped in", 0.1, old[3], b"c"))])
        # A key changed in place.
        engine.write("UPDATE items SET id = ? WHERE id = ?", (2000, 20))
        wait_caught_up(engine)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 1000
        ids = {row[0] for row in mirror_db.server.query(
            "SELECT id FROM items WHERE sw_scope = 'dev1'", database=mirror_db.database)}
        assert {1310, 2000} <= ids and not {20, 310} & ids
        assert engine.mirror.verify(timeout=30).in_sync


# --- reconcile and verify ---------------------------------------------------------------


def test_verify_finds_drift_made_on_the_server_and_reconcile_repairs_it(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    db = mirror_db.database
    query = mirror_db.server.query
    with Engine(config) as engine:
        boot_reconciled(engine)
        # Even ids only: odd ones are free for orphans inside a range.
        engine.write_many("items", [item(i) for i in range(2, 2001, 2)])
        wait_caught_up(engine)
        # Behind the engine's back: an edit, a delete, an orphan past the last key, and a
        # key swap that leaves its range's count as it was.
        query("UPDATE items SET name = 'edited' WHERE sw_scope = 'dev1' AND id = 150", (), db)
        query("DELETE FROM items WHERE sw_scope = 'dev1' AND id = 420", (), db)
        query("INSERT INTO items (sw_scope, id, name) VALUES ('dev1', 5001, 'orphan')", (), db)
        query("DELETE FROM items WHERE sw_scope = 'dev1' AND id = 1402", (), db)
        query("INSERT INTO items (sw_scope, id, name) VALUES ('dev1', 1401, 'swap')", (), db)

        found = engine.mirror.verify(timeout=30)
        assert found.verify and not found.in_sync
        (check,) = found.tables
        # Ten full ranges; the last is open above, so an orphan past SQLite's last key shows.
        assert (check.sqlite_rows, check.mirror_rows, check.ranges) == (1000, 1000, 10)
        assert check.differing == 4
        assert (check.copied, check.deleted, check.skipped) == (0, 0, False)
        # (after, upto, sqlite rows, mirror rows): the swap's range has equal counts.
        assert list(check.ranges_shown) == [
            (None, 200, 100, 100), (400, 600, 100, 99), (1400, 1600, 100, 100),
            (1800, None, 100, 101)]
        # A verify changes nothing.
        assert query("SELECT name FROM items WHERE sw_scope = 'dev1' AND id IN (150, 5001) "
                      "ORDER BY id", (), db) == [("edited",), ("orphan",)]
        assert mirror_count(mirror_db) == 1000

        fixed = engine.mirror.reconcile(timeout=30)
        assert not fixed.verify and fixed.error is None
        (repair,) = fixed.tables
        assert repair.differing == 4
        assert (repair.copied, repair.deleted) == (3, 2)
        assert assert_mirror_equals_sqlite(engine, mirror_db) == 1000

        again = engine.mirror.reconcile(timeout=30)
        assert again.number == fixed.number + 1
        assert all(t.skipped and t.differing == 0 and t.copied == t.deleted == 0
                   for t in again.tables), again
        assert engine.mirror.verify(timeout=30).in_sync


def reconcile_together(engine: Engine, count: int) -> tuple[list[threading.Thread],
                                                           list[Any]]:
    """`count` threads that ask for a reconcile at the same moment (started)."""
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def ask(i: int) -> None:
        barrier.wait()
        try:
            results[i] = engine.mirror.reconcile(timeout=60)
        except Exception as exc:  # reported by `joined`
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def joined(threads: list[threading.Thread], results: list[Any]) -> list[Any]:
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a reconcile ask got no answer in 60s"
    assert not any(r is None or isinstance(r, BaseException) for r in results), results
    return results


def test_three_reconciles_asked_together_during_the_boot_reconcile_share_it(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, range_rows=100)
    with Engine(config) as engine:
        write_items(engine, range(1, 3001))
        wait_caught_up(engine)
    # Drift on the server, and a transaction holding that row: the next boot reconcile
    # finds the range, then waits for the lock, so it is surely still running when asked.
    server, db = mirror_db.server, mirror_db.database
    server.query("UPDATE items SET name = 'drift' WHERE sw_scope = 'dev1' AND id = 1500", (),
                 db)
    locker = server.admin(db)
    try:
        cursor = locker.cursor()
        cursor.execute("START TRANSACTION")
        cursor.execute("SELECT id FROM items WHERE sw_scope = 'dev1' AND id = 1500 FOR UPDATE")
        cursor.fetchall()
        with Engine(config) as engine:
            def asked() -> int:
                return sum(1 for r in records(config, engine.run_id)
                           if r["kind"] == "ask" and r["message"] == "mirror.reconcile")

            try:
                wait_for(lambda: bool(tells(config, engine.run_id, "mirror.reconcile_begun")),
                         30, "the boot reconcile to begin")
                threads, results = reconcile_together(engine, 3)
                wait_for(lambda: asked() == 3, 30, "the three asks in the message log")
                # The actor may be waiting for the lock inside one range: a status asked
                # now is answered between two ranges, with the reconcile still running.
                status = engine.ask_later("mirror", MirrorStatus())
            finally:
                cursor.execute("ROLLBACK")
            view = status.get(timeout=60)
            assert (view.state, view.reconciling, view.reconciles) == ("reconciling", True, 0)
            first = joined(threads, results)
            assert [r.number for r in first] == [1, 1, 1]
            assert first[0] == first[1] == first[2]
            (table,) = first[0].tables
            assert (table.differing, table.copied, table.deleted) == (1, 1, 0)
            assert mirror_status(engine)["reconciles"] == 1

            # Three more at once with nothing running: each gets a result, and no more
            # reconciles run than were asked for.
            numbers = [r.number for r in joined(*reconcile_together(engine, 3))]
            reconciles = mirror_status(engine)["reconciles"]
            assert min(numbers) >= 2 and max(numbers) == reconciles <= 4
            run = engine.run_id
        assert_mirror_equals_sqlite(config.database.path, mirror_db)
    finally:
        locker.close()
    begun = tells(config, run, "mirror.reconcile_begun", verify=False)
    assert [r["fields"]["number"] for r in begun] == list(range(1, reconciles + 1))
    assert len(tells(config, run, "mirror.reconciled", verify=False)) == reconciles


def test_two_scopes_share_a_table_and_never_touch_each_others_rows(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    one = make_config(tmp_path, mirror_db.dsn, name="one", scope="dev1")
    two = make_config(tmp_path, mirror_db.dsn, name="two", scope="dev2")
    query, db = mirror_db.server.query, mirror_db.database
    with Engine(one) as first, Engine(two) as second:
        boot_reconciled(first)
        boot_reconciled(second)
        # The same ids on both devices, with different contents.
        first.write_many("items", [item(i) for i in range(1, 401)])
        second.write_many("items", [(i, f"second {i}", i / 4, None, None)
                                    for i in range(1, 301)])
        first.write("DELETE FROM items WHERE id = ?", (7,))
        wait_caught_up(first)
        wait_caught_up(second)
        assert assert_mirror_equals_sqlite(first, mirror_db, scope="dev1") == 399
        assert assert_mirror_equals_sqlite(second, mirror_db, scope="dev2") == 300
        assert query("SELECT name FROM items WHERE sw_scope = 'dev2' AND id = 7", (), db) == [
            ("second 7",)]

        # An orphan of dev2's: dev1's reconcile neither sees nor deletes it.
        query("INSERT INTO items (sw_scope, id, name) VALUES ('dev2', 9999, 'orphan')", (), db)
        view = first.mirror.reconcile(timeout=30)
        (table,) = view.tables
        assert (table.mirror_rows, table.deleted, table.copied, table.skipped) == (399, 0, 0,
                                                                                 True)
        assert query("SELECT name FROM items WHERE sw_scope = 'dev2' AND id = 9999", (),
                     db) == [("orphan",)]
        assert not second.mirror.verify(timeout=30).in_sync
        (theirs,) = second.mirror.reconcile(timeout=30).tables
        assert (theirs.deleted, theirs.copied) == (1, 0)
        assert assert_mirror_equals_sqlite(second, mirror_db, scope="dev2") == 300
        assert assert_mirror_equals_sqlite(first, mirror_db, scope="dev1") == 399


# --- outages ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_server_killed_mid_drain_catches_up_after_one_reconcile(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn, batch_rows=20)
    server = mirror_db.server
    try:
        with Engine(config) as engine:
            boot_reconciled(engine)
            write_items(engine, range(1, 10_001))
            seen = wait_mid_drain(engine)
            assert seen["reconciles"] == 1
            server.kill()
            down = wait_state(engine, "down")
            assert down["error"] and "\n" not in down["error"]
            depth = down["outbox"]["depth"]
            assert depth > 0

            # Local writes go on while the server is gone.
            write_items(engine, range(20_001, 20_501))
            engine.write("UPDATE items SET name = 'changed while down' WHERE id % 97 = 0")
            engine.write("DELETE FROM items WHERE id BETWEEN ? AND ?", (9000, 9099))
            engine.write("DELETE FROM items WHERE id = ?", (3,))
            during = mirror_status(engine)
            assert during["state"] == "down"
            assert during["outbox"]["depth"] >= depth + 500
            assert during["reconciles"] == 1

            server.start()
            status = wait_caught_up(engine)
            assert status["reconciles"] == 2 and status["error"] is None
            assert assert_mirror_equals_sqlite(engine, mirror_db) == 10_000 + 500 - 101
            run = engine.run_id
    finally:
        if not server.running:
            server.start()
    ups = tells(config, run, "mirror.up")
    assert len(ups) == 2
    assert tells(config, run, "mirror.down")
    reconciled = tells(config, run, "mirror.reconciled", verify=False)
    assert [r["fields"]["number"] for r in reconciled] == [1, 2]
    assert [r["fields"]["error"] for r in reconciled] == [None, None]
    assert reconciled[0]["seq"] < ups[1]["seq"] < reconciled[1]["seq"]


def test_a_server_restarted_while_the_mirror_is_idle_is_reconnected(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    config = make_config(tmp_path, mirror_db.dsn)
    server = mirror_db.server
    try:
        with Engine(config) as engine:
            boot_reconciled(engine)
            write_items(engine, range(1, 101))
            wait_caught_up(engine)
            # Gone while nothing was in flight: the drain's next batch finds out.
            server.kill()
            write_items(engine, range(101, 201))
            status = wait_state(engine, "down", timeout=10)
            one_line(status["error"])
            server.start()
            status = wait_caught_up(engine)
            assert status["reconciles"] == 2
            assert assert_mirror_equals_sqlite(engine, mirror_db) == 200
    finally:
        if not server.running:
            server.start()


@pytest.mark.slow
def test_an_engine_killed_mid_drain_is_caught_up_by_the_next_one(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    rows = 5000
    yaml_path = tmp_path / "mirror.yaml"
    yaml_path.write_text(config_text(tmp_path, mirror_db.dsn, batch_rows=10))
    config = parse_config(yaml_path.read_text(), file=str(yaml_path), base_dir=tmp_path)
    path = config.database.path

    def sqlite_count() -> int:
        try:
            conn = read_only(path)
        except apsw.Error:
            return 0
        try:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
        except apsw.Error:
            return 0
        finally:
            conn.close()

    kill_driver_when("mirror_driver", yaml_path, rows, 1000,
                     ready=lambda: sqlite_count() == rows and mirror_count(mirror_db) > 0,
                     what="all rows in SQLite and some in the mirror")
    before = mirror_count(mirror_db)
    assert 0 < before < rows, f"{before} of {rows} rows mirrored when killed"
    assert outbox_depth(path) > 0

    with Engine(config) as engine:
        status = wait_caught_up(engine)
        last = status["last_reconcile"]
        assert last is not None and last["number"] == 1 and last["error"] is None
        (table,) = last["tables"]
        # What the killed engine had sent is kept; the rest is copied once.
        assert table["deleted"] == 0
        assert table["mirror_rows"] + table["copied"] == rows
        assert table["mirror_rows"] >= before
        assert assert_mirror_equals_sqlite(engine, mirror_db) == rows
    assert outbox_depth(path) == 0
    assert_mirror_equals_sqlite(path, mirror_db)


# --- what a user sees when something is wrong -------------------------------------------


def one_line(text: str | None) -> str:
    assert text, "expected an error"
    assert "\n" not in text and "Traceback" not in text, text
    return text


def writes_work(engine: Engine) -> None:
    engine.write_many("items", [item(i) for i in range(1, 51)])
    engine.write("UPDATE items SET name = 'still writable' WHERE id = 2")
    engine.write("DELETE FROM items WHERE id = 3")
    with engine.read() as conn:
        assert conn.execute("SELECT count(*) FROM items").get == 49
        assert conn.execute("SELECT name FROM items WHERE id = 2").get == "still writable"
    assert mirror_status(engine)["outbox"]["depth"] == 50


def test_status_answers_while_the_mirror_waits_on_a_server_that_says_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_MYSQL_PASSWORD", "unused-password")
    # Takes the connection and never sends the server's greeting: the mirror's connect
    # waits inside one step, for up to connect_timeout_s.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        port = int(silent.getsockname()[1])
        dsn = f"mysql://nobody:${{SW_MYSQL_PASSWORD}}@127.0.0.1:{port}/nothing"
        with Engine(make_config(tmp_path, dsn, connect_timeout_s=60)) as engine:
            accepted, _ = silent.accept()
            with accepted:
                # The actor is held by the connect; status and the view do not wait for it.
                status = mirror_status(engine)
                assert (status["state"], status["error"]) == ("connecting", None)
                assert engine.mirror.view().state == "connecting"
                writes_work(engine)
            # Hung up on: the connect fails, and the mirror is down, retrying.
            assert wait_state(engine, "down")["attempt"] >= 1


def test_a_server_out_of_reach_is_a_state_and_the_engine_keeps_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_MYSQL_PASSWORD", "unused-password")
    port = closed_port()
    dsn = f"mysql://nobody:${{SW_MYSQL_PASSWORD}}@127.0.0.1:{port}/nothing"
    with Engine(make_config(tmp_path, dsn, backoff_initial_s=0.2, backoff_max_s=1)) as engine:
        status = wait_state(engine, "down")
        error = one_line(status["error"])
        assert f"127.0.0.1:{port}" in error and "2003" in error
        assert status["attempt"] >= 1 and status["retry_at"] is not None
        writes_work(engine)
        started = time.monotonic()
        with pytest.raises(MirrorUnavailable) as raised:
            engine.mirror.reconcile(timeout=10)
        assert time.monotonic() - started < 5
        assert f"127.0.0.1:{port}" in one_line(str(raised.value))
        with pytest.raises(MirrorError):
            engine.mirror.verify(timeout=10)
        assert mirror_status(engine)["state"] == "down"


def test_a_wrong_password_fails_the_mirror_until_asked_again(
        tmp_path: Path, mirror_db: MirrorDb, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_MYSQL_PASSWORD", "not-the-password")
    with Engine(make_config(tmp_path, mirror_db.dsn)) as engine:
        status = wait_state(engine, "failed")
        error = one_line(status["error"])
        assert "Access denied" in error and "1045" in error
        assert mirror_db.user in error
        assert status["retry_at"] is None
        attempt = status["attempt"]
        # Not retried on its own (a retry would come every 50 ms here) ...
        holds_for(lambda: mirror_status(engine)["attempt"] == attempt, 0.3,
                  "a fatal error was retried without being asked")
        writes_work(engine)
        # ... but when a reconcile is asked for.
        with pytest.raises(MirrorError, match="Access denied"):
            engine.mirror.reconcile(timeout=10)
        wait_for(lambda: mirror_status(engine)["attempt"] == attempt + 1, 10,
                 "one more attempt after the ask")
        assert mirror_status(engine)["state"] == "failed"


def test_a_missing_database_fails_the_mirror_naming_it(
        tmp_path: Path, mirror_db: MirrorDb) -> None:
    missing = f"{mirror_db.database}_gone"
    # The user may use it, but it does not exist: the server says 1049, not 1044.
    for host in ("127.0.0.1", "localhost"):
        mirror_db.server.query(f"GRANT ALL PRIVILEGES ON `{missing}`.* TO "
                               f"'{mirror_db.user}'@'{host}'")
    dsn = mirror_db.server.dsn(mirror_db.user, missing)
    with Engine(make_config(tmp_path, dsn)) as engine:
        status = wait_state(engine, "failed")
        error = one_line(status["error"])
        assert "1049" in error and missing in error
        writes_work(engine)
        with pytest.raises(MirrorError, match=missing):
            engine.mirror.reconcile(timeout=10)


def test_the_password_is_never_shown(tmp_path: Path, mirror_db: MirrorDb,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    wrong = "wr@ng:p%ss/w#rd?x=1 " + mirror_db.password[::-1]
    monkeypatch.setenv("SW_WRONG_PASSWORD", wrong)
    good = make_config(tmp_path, mirror_db.dsn, name="good", payload="full")
    bad = make_config(tmp_path, mirror_db.server.dsn(mirror_db.user, mirror_db.database,
                                                     "${SW_WRONG_PASSWORD}"),
                      name="bad", payload="full")
    seen: list[str] = [repr(good), repr(bad), repr(good.mirror), repr(bad.mirror)]
    with Engine(good) as ok, Engine(bad) as failing:
        boot_reconciled(ok)
        ok.write_many("items", [item(i) for i in range(1, 101)])
        wait_caught_up(ok)
        seen.append(json.dumps(ok.mirror.reconcile(timeout=30), default=str))
        status = wait_state(failing, "failed")
        assert "Access denied" in status["error"]
        with pytest.raises(MirrorError) as raised:
            failing.mirror.reconcile(timeout=10)
        seen += [str(raised.value), repr(raised.value)]
        with pytest.raises(MirrorError) as raised:
            failing.mirror.verify(timeout=10)
        seen += [str(raised.value), repr(raised.value)]
        for engine in (ok, failing):
            seen.append(json.dumps(engine.status(), default=str))
            seen.append(repr(engine.mirror.view()))
    out, err = capsys.readouterr()
    seen += [out, err, caplog.text]
    assert "Access denied" in caplog.text
    text = "\n".join(seen)
    files = {**{f"good/{k}": v for k, v in files_under(tmp_path / "good").items()},
             **{f"bad/{k}": v for k, v in files_under(tmp_path / "bad").items()}}
    assert any(name.endswith("messages.jsonl") for name in files)
    assert b"Access denied" in files["bad/messages.jsonl"]
    for secret in (mirror_db.password, wrong):
        assert secret not in text
        for name, data in files.items():
            assert secret.encode() not in data, f"the password is in {name}"


@pytest.mark.parametrize("value", ["text", "blob-as-text", "infinity"])
def test_a_row_the_mirror_cannot_send_never_leaves_it_silently_stuck(
        tmp_path: Path, mirror_db: MirrorDb, value: str) -> None:
    config = make_config(tmp_path, mirror_db.dsn)
    with Engine(config) as engine:
        boot_reconciled(engine)
        engine.write_many("items", [item(i) for i in range(1, 11)])
        wait_caught_up(engine)
        # Text that is not UTF-8 (another program wrote it, or a cast from a blob), or a
        # real the server cannot hold.
        if value == "text":
            engine.write("UPDATE items SET name = CAST(x'ff41' AS TEXT) WHERE id = 4")
        elif value == "blob-as-text":
            engine.write("INSERT INTO items (id, name) VALUES (11, CAST(x'c328' AS TEXT))")
        else:  # SQLite keeps it (the API refuses inf as a parameter); a MySQL DOUBLE cannot
            engine.write("UPDATE items SET score = 1e999 WHERE id = 4")
        seen: dict[str, Any] = {}

        def settled() -> bool:
            seen.update(mirror_status(engine))
            return seen["outbox"]["depth"] == 0 or seen["state"] in ("failed", "down")

        wait_for(settled, 5, lambda: "the change to be sent or the mirror to say why not "
                                     f"({shown(seen)})")
        if seen["state"] in ("failed", "down"):
            one_line(seen["error"])
            # Asking for a reconcile gets an answer, not silence.
            with pytest.raises(MirrorError):
                engine.mirror.reconcile(timeout=10)
        engine.write("UPDATE items SET name = 'writable' WHERE id = 1")


def test_a_write_costs_the_same_however_long_the_outbox_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server out of reach: every change waits in the outbox, as in a long outage.
    monkeypatch.setenv("SW_MYSQL_PASSWORD", "unused-password")
    dsn = f"mysql://nobody:${{SW_MYSQL_PASSWORD}}@127.0.0.1:{closed_port()}/nothing"
    config = make_config(tmp_path, dsn, backoff_initial_s=5, backoff_max_s=5)
    with Engine(config) as engine:
        write_items(engine, range(1, 3001), chunk=3000)
    path = config.database.path
    assert outbox_depth(path) == 3000

    conn = apsw.Connection(str(path))
    try:
        def steps(sql: str, params: tuple[Any, ...]) -> int:
            """SQLite VM steps of one statement (its triggers included), rolled back."""
            counted: list[int] = []

            def profile(event: dict[str, Any]) -> None:
                if event["sql"] == sql:
                    counted.append(event["stmt_status"]["SQLITE_STMTSTATUS_VM_STEP"])

            conn.execute("SAVEPOINT measure")
            conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, profile)
            try:
                conn.execute(sql, params)
            finally:
                conn.trace_v2(0, None)
                conn.execute("ROLLBACK TO measure")
                conn.execute("RELEASE measure")
            (count,) = counted
            return count

        statements = [("INSERT INTO items (id, name) VALUES (?, ?)", (9001, "new")),
                      ("UPDATE items SET name = ? WHERE id = ?", ("changed", 1500)),
                      ("DELETE FROM items WHERE id = ?", (1501,))]
        with_backlog = [steps(sql, params) for sql, params in statements]
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM _sw_outbox")
            without = [steps(sql, params) for sql, params in statements]
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    for (sql, _), full, empty in zip(statements, with_backlog, without, strict=True):
        assert full <= 2 * empty + 100, (
            f"{sql!r}: {full} SQLite VM steps with 3000 changes pending, {empty} with none; "
            "the outbox trigger scans the outbox instead of using its (tbl, k) index")


# --- the canonical encoding -------------------------------------------------------------


def doubles(count: int, seed: int = 20260101) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < count:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    for exp in (-17, -16, -15, -14, -5, -4, 0, 14, 15, 16, 17):
        for mantissa in (1.0, 1.5, 9.999999999999998, 1.2345678901234567, 5.0, 9.5):
            values += [mantissa * 10.0 ** exp, -mantissa * 10.0 ** exp]
    for power in (14, 15, 16, 17):
        edge = 10 ** power
        values += [float(edge - 1), float(edge), float(edge + 1), edge - 0.5, edge + 0.5,
                   edge * 0.999999, edge * 1.000001, float(edge + 2), float(edge - 2)]
    values += [float(i) for i in range(-20, 21)]
    values += [float(rng.randint(-10 ** 18, 10 ** 18)) for _ in range(200)]
    values += [rng.uniform(-1e-14, 1e-14) for _ in range(100)]
    values += [0.1, 0.2, 0.3, 1 / 3, 2 / 3, 5e-324, 2.2250738585072014e-308,
               1.7976931348623157e308, 2.0 ** 53, 2.0 ** 53 + 2, 2.0 ** 63, 123.0, 1e20]
    return values


def test_mariadb_real_prints_doubles_as_the_server_does(mirror_db: MirrorDb) -> None:
    values = doubles(3000)
    conn = mirror_db.server.admin(mirror_db.database)
    try:
        cursor = conn.cursor()
        cursor.execute("CREATE TABLE doubles (i INT PRIMARY KEY, d DOUBLE NOT NULL)")
        cursor.executemany("INSERT INTO doubles VALUES (%s, %s)", list(enumerate(values)))
        cursor.execute("SELECT i, d, CONCAT(d) FROM doubles ORDER BY i")
        printed = cursor.fetchall()
    finally:
        conn.close()
    assert len(printed) == len(values)
    wrong = [(values[i], text, mariadb_real(values[i])) for i, stored, text in printed
             if stored != values[i] or mariadb_real(values[i]) != text]
    assert not wrong, f"{len(wrong)} of {len(values)} differ (value, server, ours): {wrong[:10]}"
