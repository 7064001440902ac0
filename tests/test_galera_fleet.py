"""A fleet of devices on a real 3-node MariaDB Galera cluster (tests/support/galera.py):
the node in use killed under the mirror and rejoining, a certification conflict with
another client, three devices through three nodes at once, and every host down at start.

Every node is read on its own: a node applies what another committed a moment later, so
the checks ask again until each node holds SQLite's rows (they never time anything)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlwarden.config import load_config
from sqlwarden.facade import Engine
from sqlwarden.mirror.driver import load_driver

from .conftest import ROOT, run_sqlwarden
from .support.galera import GaleraDb, GaleraNode
from .test_mirror import (
    boot_reconciled,
    closed_port,
    mirror_status,
    sqlite_rows,
    wait_caught_up,
    wait_for,
    wait_mid_drain,
    wait_state,
)
from .test_readme import fenced_blocks

TABLE = "readings"
#: Quick polling and reconnects, so the tests wait as little as the engine allows.
CONFIG = """\
database: {{path: {data}/dev.db}}
tables:
  readings:
    columns:
      id: {{type: integer, primary_key: true}}
      sensor: text
      updated_at: timestamp
      value: real
    indexes:
      - [updated_at]
mirror:
  dsn: {dsn}
  scope: {scope}
  hosts: [{hosts}]
  batch_rows: {batch_rows}
  poll_ms: 20
  connect_timeout_s: 2
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
message_log: {{path: {data}/messages.jsonl}}
status: {{enabled: false}}
"""


# --- helpers ----------------------------------------------------------------------------


def fleet_config(tmp_path: Path, galera_db: GaleraDb, hosts: list[str], *,
                 scope: str = "dev-a", batch_rows: int = 200) -> Path:
    """A device's config file (its own folder under `tmp_path`, named after its scope)."""
    data = tmp_path / scope
    data.mkdir(exist_ok=True)
    path = data / "sqlwarden.yaml"
    path.write_text(CONFIG.format(data=data, dsn=galera_db.dsn, scope=scope,
                                  hosts=", ".join(f'"{h}"' for h in hosts),
                                  batch_rows=batch_rows))
    return path


@contextlib.contextmanager
def device(path: Path) -> Iterator[Engine]:
    with Engine(load_config(path)) as engine:
        boot_reconciled(engine)
        yield engine


def reading(i: int, version: int = 0, *, device: str = "") -> tuple[Any, ...]:
    """Row `i` of `readings`; `version` changes every column but the key."""
    return (i, f"{device}sensor-{i % 7}-v{version}",
            f"2026-01-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}."
            f"{version:06d}Z", i / 4 + version)


def write_readings(engine: Engine, ids: range, version: int = 0, device: str = "") -> None:
    for start in range(ids.start, ids.stop, 1000):
        engine.write_many(TABLE, [reading(i, version, device=device)
                                  for i in range(start, min(ids.stop, start + 1000))])


def node_of(galera_db: GaleraDb, host_port: str) -> GaleraNode:
    return next(n for n in galera_db.cluster.nodes if n.host_port == host_port)


def node_rows(node: GaleraNode, database: str, scope: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in node.query(
        f"SELECT id, sensor, updated_at, value FROM `{TABLE}` WHERE sw_scope = %s ORDER BY id",
        (scope,), database=database)]


def assert_every_node_holds(galera_db: GaleraDb, scope: str,
                            rows: list[tuple[Any, ...]]) -> None:
    """Every running node comes to hold exactly `rows` for `scope`, row by row."""
    for node in galera_db.cluster.running:
        seen: list[list[tuple[Any, ...]]] = [[]]

        def holds(node: GaleraNode = node, seen: list[list[tuple[Any, ...]]] = seen) -> bool:
            seen[0] = node_rows(node, galera_db.database, scope)
            return seen[0] == rows

        def differs(node: GaleraNode = node, seen: list[list[tuple[Any, ...]]] = seen) -> str:
            extra = [r for r in seen[0] if r not in rows][:3]
            missing = [r for r in rows if r not in seen[0]][:3]
            return (f"node {node.index} to hold {len(rows)} rows of {scope} (it has "
                    f"{len(seen[0])}; missing {missing}, not in SQLite {extra})")

        wait_for(holds, 60, differs)


def local_rows(engine_or_path: Engine | Path) -> list[tuple[Any, ...]]:
    _, _, rows = sqlite_rows(engine_or_path, TABLE)
    return rows


# --- the node in use dies -----------------------------------------------------------------


def test_the_node_in_use_killed_mid_drain_leaves_every_node_equal_after_it_rejoins(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    config = fleet_config(tmp_path, galera_db, galera_db.hosts, batch_rows=25)
    database = tmp_path / "dev-a" / "dev.db"
    victim = galera_db.cluster.nodes[0]
    with device(config) as engine:
        write_readings(engine, range(1, 5001))
        seen = wait_mid_drain(engine)
        assert seen["node"] == victim.host_port
        victim.kill()

        # Local writes go on while the mirror moves.
        write_readings(engine, range(5001, 5501))
        engine.write("UPDATE readings SET sensor = 'changed during the failover' "
                     "WHERE id % 97 = 0")
        engine.write("DELETE FROM readings WHERE id BETWEEN 2000 AND 2099")
        moved = wait_caught_up(engine, timeout=60)
        assert moved["node"] in galera_db.hosts[1:]
        assert moved["failovers"] >= 1
        # A failover costs at most one reconcile beyond the boot's.
        assert moved["reconciles"] <= 2
        assert moved["error"] is None

        victim.start()  # rejoins the cluster and catches up (IST)
        write_readings(engine, range(5501, 5601))
        engine.write("DELETE FROM readings WHERE id = 3")
        after = wait_caught_up(engine)
        assert after["node"] == moved["node"]  # the mirror stays where it went
    rows = local_rows(database)
    assert len(rows) == 5600 - 100 - 1
    assert_every_node_holds(galera_db, "dev-a", rows)

    verify = run_sqlwarden("mirror", "verify", str(config))
    assert verify.returncode == 0, verify.stderr
    assert f"{TABLE}: {len(rows):,} rows in SQLite, {len(rows):,} in the mirror; in sync" in (
        verify.stdout)


def test_the_node_in_use_partitioned_off_is_left_for_another_and_nothing_is_lost(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    # `gmcast.isolate` cuts the node off the group's network: it stays up, but alone it is
    # a non-primary component and answers 1047 to every statement, as after a partition.
    config = fleet_config(tmp_path, galera_db, galera_db.hosts, batch_rows=25)
    database = tmp_path / "dev-a" / "dev.db"
    victim = galera_db.cluster.nodes[0]
    try:
        with device(config) as engine:
            write_readings(engine, range(1, 3001))
            seen = wait_mid_drain(engine)
            assert seen["node"] == victim.host_port
            victim.query("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
            write_readings(engine, range(3001, 3501))
            moved = wait_caught_up(engine, timeout=60)
            assert moved["node"] in galera_db.hosts[1:]
            assert moved["failovers"] >= 1
            assert moved["reconciles"] <= 2  # at most one beyond the boot's
            assert moved["error"] is None
            victim.query("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
            galera_db.cluster.wait_synced(3)  # back in the group, caught up
    finally:
        if galera_db.cluster.nodes[0].running and len(galera_db.cluster.running) == 3:
            with contextlib.suppress(Exception):
                victim.query("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
    rows = local_rows(database)
    assert len(rows) == 3500
    assert_every_node_holds(galera_db, "dev-a", rows)
    verify = run_sqlwarden("mirror", "verify", str(config))
    assert verify.returncode == 0, verify.stderr


# --- a certification conflict ---------------------------------------------------------------


class OtherClient:
    """Another program updating the same mirrored rows in a hot loop through another node:
    each of its commits is a write set the engine's transactions certify against."""

    def __init__(self, galera_db: GaleraDb, node: GaleraNode, scope: str, ids: range) -> None:
        self._conn = load_driver().connect(
            host=node.host, port=node.port, user=galera_db.user, password=galera_db.password,
            database=galera_db.database, autocommit=True)
        self._sql = (f"UPDATE `{TABLE}` SET sensor = 'the other client', value = value + 1 "
                     f"WHERE sw_scope = %s AND id BETWEEN %s AND %s")
        self._params = (scope, ids.start, ids.stop - 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-other-client")
        self.commits = 0
        #: Its own statements that lost a conflict (1213) or a lock wait (1205).
        self.lost = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        cursor = self._conn.cursor()
        try:
            while not self._stop.is_set():
                try:
                    cursor.execute(self._sql, self._params)
                    self.commits += 1
                except Exception as exc:
                    if getattr(exc, "errno", None) not in (1213, 1205):
                        raise
                    self.lost += 1
        except BaseException as exc:
            self.error = exc
        finally:
            cursor.close()

    def __enter__(self) -> OtherClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def test_a_certification_conflict_with_another_client_is_retried_without_loss(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    hosts = galera_db.hosts  # the engine writes through node 0
    config = fleet_config(tmp_path, galera_db, hosts)
    hot = range(1, 21)
    with device(config) as engine:
        write_readings(engine, range(1, 201))
        wait_caught_up(engine)
        assert mirror_status(engine)["node"] == hosts[0]
        rounds = 0
        with OtherClient(galera_db, galera_db.cluster.nodes[1], "dev-a", hot) as other:
            # Each round changes the hot rows locally and lets the mirror send them, while
            # the other client keeps committing the same rows on node 1.
            while mirror_status(engine)["transaction_retries"] < 3 and rounds < 400:
                rounds += 1
                engine.write("UPDATE readings SET value = ?, sensor = ? WHERE id BETWEEN ? "
                             "AND ?", (rounds, f"round {rounds}", hot.start, hot.stop - 1))
                wait_for(lambda: mirror_status(engine)["outbox"]["depth"] == 0, 30,
                         "the round to be sent")
        assert other.error is None, other.error
        assert other.commits > 0
        status = mirror_status(engine)
        assert status["transaction_retries"] >= 1, (
            f"no conflict reached the engine in {rounds} rounds ({other.commits} commits "
            f"and {other.lost} lost conflicts on the other client)")
        assert status["state"] == "up" and status["reconciles_failed"] == 0
        assert status["quarantine"]["count"] == 0

        # The other client has stopped: the engine's last write of the hot rows wins.
        engine.write("UPDATE readings SET sensor = 'the last word' WHERE id BETWEEN ? AND ?",
                     (hot.start, hot.stop - 1))
        wait_caught_up(engine)
        rows = local_rows(engine)
        verify = engine.mirror.verify(timeout=60)
        assert verify.in_sync, verify
    assert len(rows) == 200
    assert all(r[1] == "the last word" for r in rows[:20])
    assert_every_node_holds(galera_db, "dev-a", rows)


# --- three devices through three nodes ------------------------------------------------------


def readme_fleet_queries() -> list[str]:
    """The SELECTs of the README's "A fleet of devices" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### A fleet of devices", 1)[1].split("\n## ", 1)[0]
    return [b.text for b in fenced_blocks(section)
            if b.lang == "sql" and not b.text.lstrip().startswith("CREATE")]


def test_three_devices_through_three_nodes_never_touch_each_others_rows(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    hosts = galera_db.hosts
    scopes = ["dev-0", "dev-1", "dev-2"]
    configs = [fleet_config(tmp_path, galera_db, hosts[i:] + hosts[:i], scope=scope)
               for i, scope in enumerate(scopes)]
    with contextlib.ExitStack() as stack:
        engines = [stack.enter_context(device(c)) for c in configs]
        # The same ids on every device, with different contents, written at once.
        writers = [threading.Thread(target=write_readings, args=(e, range(1, 1501)),
                                    kwargs={"version": i, "device": f"{scopes[i]}/"})
                   for i, e in enumerate(engines)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        engines[1].write("DELETE FROM readings WHERE id > 1400")
        engines[2].write("UPDATE readings SET value = -1 WHERE id % 10 = 0")
        statuses = [wait_caught_up(e) for e in engines]
        assert [s["node"] for s in statuses] == hosts  # device i on node i
        assert [s["failovers"] for s in statuses] == [0, 0, 0]
        expected = {scope: local_rows(e) for scope, e in zip(scopes, engines, strict=True)}
        newest = {scope: max(rows, key=lambda r: (r[2], r[0]))
                  for scope, rows in expected.items()}
    assert [len(expected[s]) for s in scopes] == [1500, 1400, 1500]
    for scope in scopes:
        assert_every_node_holds(galera_db, scope, expected[scope])
    counts = galera_db.cluster.query(
        f"SELECT sw_scope, COUNT(*) FROM `{TABLE}` GROUP BY sw_scope ORDER BY sw_scope",
        database=galera_db.database)
    assert counts == [("dev-0", 1500), ("dev-1", 1400), ("dev-2", 1500)]

    # The README's latest-row-per-device queries answer one row per device: its newest.
    queries = readme_fleet_queries()
    assert len(queries) == 2
    for sql in queries:
        answer = galera_db.cluster.query(sql, database=galera_db.database)
        assert [tuple(r) for r in answer] == [(s, *newest[s]) for s in scopes], sql


# --- every host down --------------------------------------------------------------------------


def test_an_engine_whose_every_host_is_down_writes_locally_and_catches_up_when_one_returns(
        tmp_path: Path, galera_db: GaleraDb) -> None:
    cluster = galera_db.cluster
    gone = cluster.nodes[2]
    gone.kill()
    cluster.wait_synced(2)  # the other two carry on as the cluster
    config = fleet_config(tmp_path, galera_db, [gone.host_port, f"127.0.0.1:{closed_port()}"])
    with Engine(load_config(config)) as engine:
        down = wait_state(engine, "down")
        assert down["node"] is None
        assert down["waiting_for"] == "mirror server unavailable"
        assert gone.host_port in down["error"] and "\n" not in down["error"]

        write_readings(engine, range(1, 301))
        engine.write("DELETE FROM readings WHERE id > 250")
        assert len(local_rows(engine)) == 250
        assert mirror_status(engine)["outbox"]["depth"] == 300
        assert mirror_status(engine)["state"] == "down"

        gone.start()  # rejoins the two others and is Synced
        up = wait_caught_up(engine, timeout=60)
        assert up["node"] == gone.host_port
        rows = local_rows(engine)
    assert_every_node_holds(galera_db, "dev-a", rows)

