"""The demo source: deterministic records, a cursor taken from the data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import apsw
import pytest

from sqlwarden.config import GeneratorSourceConfig, load_config
from sqlwarden.facade import Engine
from sqlwarden.sync.sources.demo import DemoGenerator, complete, cursor

from .conftest import ROOT, count_rows, read_only, run_sqlwarden, table_digest


def test_records_are_pure_functions_of_seed_and_id() -> None:
    source = GeneratorSourceConfig(name="d", registry_rows=100, observation_rows=1000, seed=5)
    one, two = DemoGenerator(source), DemoGenerator(source)
    assert [one.registry_row(i) for i in (1, 50, 100)] == [two.registry_row(i)
                                                           for i in (1, 50, 100)]
    assert one.observation_row(777) == two.observation_row(777)
    other = DemoGenerator(GeneratorSourceConfig(name="d", registry_rows=100,
                                                observation_rows=1000, seed=6))
    assert other.registry_row(1) != one.registry_row(1)


def test_an_observation_only_references_registry_rows_written_before_it() -> None:
    gen = DemoGenerator(GeneratorSourceConfig(name="d", registry_rows=70, observation_rows=1000))
    needed = [gen.registry_needed(j) for j in range(1, 1001)]
    assert needed == sorted(needed) and needed[-1] == 70 and needed[0] >= 1
    assert all(gen.observation_row(j)[1] <= needed[j - 1] for j in range(1, 1001))


def demo_engine(path: Path, source: GeneratorSourceConfig) -> Engine:
    """An engine on the demo's tables, at `path`, fed by `source` (its tasks not started)."""
    config = load_config(ROOT / "configs" / "demo.yaml", check_paths=False)
    database = dataclasses.replace(config.database, path=path)
    return Engine(dataclasses.replace(config, database=database, sources=(source,)),
                  start_tasks=False)


def test_a_stopped_ingest_resumes_from_the_data_to_the_same_result(tmp_path: Path) -> None:
    small = GeneratorSourceConfig(name="demo", registry_rows=300, observation_rows=60_000,
                                  batch_rows=500, seed=11)
    results = []
    for run in ("interrupted", "straight"):
        path = tmp_path / run / "d.db"
        if run == "interrupted":
            stop_after_batches(path, small, batches=4)
        with demo_engine(path, small) as engine:
            done = engine.sync.run("demo")
            assert done.status == "ok" and complete(engine, small)
        results.append(path)
    for table in ("registry", "observations"):
        assert count_rows(results[0], table) == count_rows(results[1], table)
        assert table_digest(results[0], table) == table_digest(results[1], table)


def stop_after_batches(path: Path, source: GeneratorSourceConfig, *, batches: int) -> None:
    """Start a run, stop the engine once `batches` batches were sent to the Writer."""
    with demo_engine(path, source) as engine:
        sent = engine.messages_sent("writer")
        engine.sync.run_later("demo")
        # start row, then the batches; the engine stops with the run under way
        assert engine.wait_for_sent("writer", sent + 1 + batches, timeout=30)
    with demo_engine(path, source) as engine:
        (last,) = engine.sync.history("demo")
        assert last.status == "stopped" and 0 < last.rows < source.observation_rows
        assert 0 < cursor(engine, source)[1] < source.observation_rows


def test_the_embedded_default_ingests_at_least_200k_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLWARDEN_DATA", str(tmp_path))
    done = run_sqlwarden("run", str(ROOT / "configs" / "demo.yaml"), "--once")
    assert done.returncode == 0, done.stderr
    db = tmp_path / "demo.db"
    rows = count_rows(db, "registry") + count_rows(db, "observations")
    assert rows >= 200_000
    assert f"demo: {rows:,} rows" in done.stdout
    # The catch-up deferred FTS upkeep and restored it, and says so.
    assert "demo: FTS upkeep of registry_fts was deferred during the catch-up" in done.stdout
    assert "FTS: registry_fts restored by rebuild (20,000 of 20,000 rows changed)" in done.stdout
    conn = read_only(db)
    assert conn.execute("SELECT count(*) FROM registry_fts WHERE registry_fts MATCH 'pump'") \
        .fetchone()[0] > 0
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                        "AND name LIKE 'registry_fts_a_'").fetchone()[0] == 3
    conn.close()
    check = apsw.Connection(str(db))  # FTS5's own check that the index matches the rows
    check.execute("INSERT INTO registry_fts(registry_fts, rank) VALUES ('integrity-check', 1)")
    check.close()


def test_a_hole_left_by_a_failed_batch_is_found_and_filled(tmp_path: Path) -> None:
    small = GeneratorSourceConfig(name="demo", registry_rows=100, observation_rows=5000,
                                  batch_rows=500, seed=2)
    paths = []
    for run in ("holed", "straight"):
        path = tmp_path / run / "d.db"
        with demo_engine(path, small) as engine:
            assert engine.sync.run("demo").status == "ok" and complete(engine, small)
            if run == "holed":
                # What a batch that failed while later ones committed leaves behind.
                engine.write("DELETE FROM observations WHERE id BETWEEN 1501 AND 2000")
                assert cursor(engine, small) == (100, 1500)
                assert not complete(engine, small)
                again = engine.sync.run("demo")
                # From the hole on; rows after it are sent again but unchanged.
                assert again.status == "ok" and again.rows == 500 and complete(engine, small)
        paths.append(path)
    assert table_digest(paths[0], "observations") == table_digest(paths[1], "observations")
