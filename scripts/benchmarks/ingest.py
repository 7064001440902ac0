"""`scripts/bench ingest [--rows N] [--batch N] [--repeat N] [--json PATH]`

N rows through `Engine.write_many` (one call per batch, waiting for each)
against raw apsw `executemany` in transactions of the same size, on the same
table, in the same process. `raw` keeps SQLite's automatic checkpoints, as
plain apsw code would; `raw_tuned` uses the engine's checkpoint policy, so
`ratio_vs_tuned` shows what the actors, messages and log cost by themselves.
JSON keys: engine_rows_s, raw_rows_s, ratio, peak_rss_mb (a contract: kept
stable), plus raw_tuned_rows_s, ratio_vs_tuned and the individual runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.facade import Engine

from .common import Result, add_output_options, alternating, make_config, make_schema, peak_rss_mb

NAME = "ingest"
HELP = "Engine.write_many against raw apsw executemany"
TABLE_YAML = """
database:
  path: {path}
  wal_threshold_mb: 64
tables:
  observations:
    columns:
      id: {{type: integer, primary_key: true}}
      registry_id: {{type: integer, not_null: true}}
      observed_at: {{type: timestamp, not_null: true}}
      value: real
      unit: {{type: text, not_null: true}}
    indexes:
      - [registry_id, observed_at]
message_log:
  path: {log}
"""
UNITS = ("kPa", "degC", "mm", "m3/h", "ppm", "V", "A", "%RH")
Rows = list[tuple[Any, ...]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=2)
    add_output_options(parser, NAME)


def usage_error(args: argparse.Namespace) -> str | None:
    if args.rows < 1 or args.batch < 1 or args.repeat < 1:
        return "--rows, --batch and --repeat must be positive"
    return None


def make_rows(count: int) -> Rows:
    return [(i, 1 + (i * 7919) % 5000, f"2025-01-01T{(i // 3600) % 24:02d}:"
             f"{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z", (i % 100000) / 100,
             UNITS[i % len(UNITS)]) for i in range(1, count + 1)]


def run_raw(workdir: Path, rows: Rows, batch: int) -> float:
    """Raw apsw: executemany, one transaction per batch, SQLite's auto-checkpoint."""
    return _raw(workdir, rows, batch, tuned=False)


def run_raw_tuned(workdir: Path, rows: Rows, batch: int) -> float:
    """Raw apsw with the engine's checkpoint policy (RESTART past the WAL threshold)."""
    return _raw(workdir, rows, batch, tuned=True)


def _raw(workdir: Path, rows: Rows, batch: int, *, tuned: bool) -> float:
    path = workdir / "raw.db"
    config = make_config(TABLE_YAML, path, log=workdir / "raw.jsonl")
    # Same schema as the engine's.
    make_schema(path, config)
    conn = apsw.Connection(str(path))
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "normal")
    conn.pragma("foreign_keys", True)
    threshold = int(config.database.wal_threshold_mb * 1024 * 1024)
    frames = [0]
    if tuned:
        conn.pragma("wal_autocheckpoint", 0)
        conn.pragma("journal_size_limit", threshold)
        conn.set_wal_hook(lambda _c, _d, pages: frames.__setitem__(0, pages) or apsw.SQLITE_OK)
    page_size = int(conn.pragma("page_size"))
    sql = "INSERT INTO observations (id, registry_id, observed_at, value, unit) VALUES (?,?,?,?,?)"
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[start:start + batch])
        conn.execute("COMMIT")
        if tuned and frames[0] * page_size > threshold:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
            frames[0] = 0
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def run_engine(workdir: Path, rows: Rows, batch: int) -> float:
    """The engine: one `write_many` per batch, each waited for."""
    config = make_config(TABLE_YAML, workdir / "engine.db", log=workdir / "engine.jsonl")
    with Engine(config) as engine:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            engine.write_many("observations", rows[start:start + batch])
        elapsed = time.perf_counter() - started
    return elapsed


def run(args: argparse.Namespace) -> Result:
    rows = make_rows(args.rows)
    best: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    variants: dict[str, Callable[[Path, Rows, int], float]] = {
        "raw": run_raw, "raw_tuned": run_raw_tuned, "engine": run_engine}
    for repeat in range(args.repeat):
        for name in alternating(tuple(variants), repeat):
            with tempfile.TemporaryDirectory(prefix="sqlwarden-bench-") as tmp:
                seconds = variants[name](Path(tmp), rows, args.batch)
            runs.append({"variant": name, "seconds": round(seconds, 4),
                         "rows_s": round(args.rows / seconds, 1)})
            best[name] = min(best.get(name, float("inf")), seconds)
    engine_rows_s = args.rows / best["engine"]
    raw_rows_s = args.rows / best["raw"]
    tuned_rows_s = args.rows / best["raw_tuned"]
    return {
        "bench": "ingest",
        "rows": args.rows,
        "batch_rows": args.batch,
        "repeat": args.repeat,
        "engine_rows_s": round(engine_rows_s, 1),
        "raw_rows_s": round(raw_rows_s, 1),
        "ratio": round(engine_rows_s / raw_rows_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "raw_tuned_rows_s": round(tuned_rows_s, 1),
        "ratio_vs_tuned": round(engine_rows_s / tuned_rows_s, 3),
        "runs": runs,
        "sqlite_version": apsw.sqlite_lib_version(),
    }


def report(result: Result) -> None:
    print(f"bench ingest: {result['rows']:,} rows in batches of {result['batch_rows']:,}, "
          f"best of {result['repeat']}")
    print(f"{'variant':<10} {'rows/s':>12} {'seconds':>9}")
    for name, key in (("raw apsw", "raw_rows_s"), ("raw tuned", "raw_tuned_rows_s"),
                      ("engine", "engine_rows_s")):
        print(f"{name:<10} {result[key]:>12,.0f} {result['rows'] / result[key]:>9.2f}")
    print(f"ratio {result['ratio']:.3f} (target >= 0.8)   ratio vs tuned "
          f"{result['ratio_vs_tuned']:.3f}   peak RSS {result['peak_rss_mb']:.0f} MB")
