"""`scripts/bench sync [--rows N] [--files N] [--batch N] [--repeat N] [--json PATH]
                      [--workdir DIR]`

N ndjson records (500,000 by default; seeded, split over 5 files
part-000.ndjson, ...) into table `docs` (id, title, body, score, updated;
an index on updated and an FTS5 index on [title, body]), three ways, each in
a fresh database whose schema the engine made, each in its own subprocess:
`sync` times `engine.sync.run` of an ndjson source (batch_rows 5,000, FTS
deferral at its defaults, so the FTS restore at the end is included), which
must end `ok` with N rows and no rejects; `naive` is what a user writes
today: apsw, `json.loads` per line, `executemany` of 1,000 rows per
transaction with the FTS triggers live; `limit` is the same loop into the
same table without any FTS index. Afterwards every database must hold N
rows, about 10 MATCH queries (terms, phrases, a prefix, AND) must give the
same rowids on the sync and naive databases, and FTS5's integrity-check must
pass on the sync one; otherwise the bench exits 1. JSON keys: sync_rows_s,
naive_rows_s, limit_rows_s, vs_naive (sync / naive), vs_limit (sync /
limit), peak_rss_mb (the sync subprocess's VmHWM; a contract; targets:
vs_naive >= 2.0, vs_limit >= 0.5, peak_rss_mb <= 200), plus the sync run's
FTS lease and restore, params and the runs.

Each case runs as the hidden command `_sync_case` in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.facade import Engine

from . import fts_checks
from .common import (
    Result,
    add_case_options,
    add_output_options,
    alternating,
    batches,
    bench_fail,
    best_of,
    finish_case,
    in_workdir,
    make_config,
    make_schema,
    mark_best,
    met,
    remove_database,
    run_case,
    target,
    vm_hwm_mb,
)
from .corpus import EPOCH, EQUIPMENT, STEP_S, VOCABULARY_SIZE, Corpus

NAME = "sync"
HELP = ("an ndjson source through engine.sync.run against the apsw loop a user writes, with "
        "and without FTS")
#: The hidden command that runs one case in a fresh process.
CASE_COMMAND = "_sync_case"
SYNC_YAML = fts_checks.DOCS_YAML + """
      score: real
      updated: {{type: timestamp, not_null: true}}
    indexes:
      - [updated]{fts}{sources}
message_log:
  path: {log}
status: {{enabled: false}}
"""
SYNC_SOURCE_YAML = """
sources:
  {name}:
    kind: ndjson
    table: docs
    path: {data}
    batch_rows: {batch}"""
SYNC_SOURCE = "files"
SYNC_CASES = ("sync", "naive", "limit")
SYNC_COLUMNS = ("id", "title", "body", "score", "updated")
#: Rows per transaction in the naive and limit loops.
NAIVE_BATCH = 1_000
SYNC_SEED = 5
SYNC_BODY_WORDS = 12
SYNC_SITES = 5_000
#: The sync run must end within this; a hang fails the bench instead.
SYNC_TIMEOUT_S = 3600.0
VS_NAIVE_TARGET = 2.0
VS_LIMIT_TARGET = 0.5
SYNC_RSS_TARGET_MB = 200.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=500_000,
                        help="ndjson records (default: %(default)s)")
    parser.add_argument("--files", type=int, default=5,
                        help="files the records are split over (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=5_000,
                        help="the source's batch_rows (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest counts (default: %(default)s)")
    add_output_options(parser, NAME, workdir="where the files and databases go, the last ones "
                       "kept there (default: a temporary directory, removed afterwards)")


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    add_case_options(parser, SYNC_CASES)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batch", type=int, required=True)


def usage_error(args: argparse.Namespace) -> str | None:
    if min(args.rows, args.files, args.batch, args.repeat) < 1:
        return "--rows, --files, --batch and --repeat must be positive"
    if args.files > args.rows:
        return "--files must not exceed --rows"
    return None


def sync_fail(message: str) -> SystemExit:
    return bench_fail("sync", message)


def sync_config(path: Path, *, fts: bool, data: Path | None = None, batch: int = 0) -> Config:
    """The `docs` table, with its FTS index when `fts`; with the ndjson source over `data`
    (`batch` rows per transaction) when given. FTS deferral is at the engine's defaults."""
    sources = ("" if data is None
               else SYNC_SOURCE_YAML.format(name=SYNC_SOURCE, data=data.resolve(), batch=batch))
    return make_config(SYNC_YAML, path, log=path.resolve().with_suffix(".jsonl"),
                       fts=fts_checks.DOCS_FTS_YAML if fts else "", sources=sources)


def sync_files(data: Path) -> list[Path]:
    return sorted(data.glob("part-*.ndjson"))


def write_ndjson(data: Path, corpus: Corpus, rows: int, files: int) -> dict[str, Any]:
    """`rows` records with ids 1..rows over `files` files part-000.ndjson, ..., streamed:
    a title like "site 123 pump", a body of 12 words drawn as `Corpus` draws them, a
    score and an `updated` timestamp. The same for the same arguments."""
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    started = time.perf_counter()
    rng = random.Random(SYNC_SEED)
    per_file = -(-rows // files)
    written = 0
    for index in range(files):
        first, last = index * per_file + 1, min(rows, (index + 1) * per_file)
        bodies = corpus.word_rows(rng, last + 1 - first, SYNC_BODY_WORDS)
        with (data / f"part-{index:03d}.ndjson").open("w", encoding="utf-8") as out:
            for record_id, body in enumerate(bodies, start=first):
                at = time.gmtime(EPOCH + record_id * STEP_S)
                out.write(json.dumps({
                    "id": record_id,
                    "title": f"site {rng.randint(1, SYNC_SITES)} {rng.choice(EQUIPMENT)}",
                    "body": " ".join(body),
                    "score": round(rng.uniform(0, 100), 3),
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", at),
                }, separators=(",", ":")) + "\n")
                written += 1
    assert written == rows
    return {"files": files, "mb": round(sum(p.stat().st_size for p in sync_files(data))
                                        / 1024 / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def sync_queries(corpus: Corpus) -> list[str]:
    """About 10 MATCH expressions: single terms (title words, common to rare body words),
    phrases, a prefix and ANDs."""
    w = corpus.words
    return ['"pump"', '"valve"', *(f'"{w[rank]}"' for rank in (0, 19, 999, 9_999)),
            '"site 42"', f'"{w[0]} {w[1]}"', "pum*", f'"pump" AND "{w[9]}"',
            f'title:"valve" AND "{w[2]}"']


# --- the cases, each in its own process ------------------------------------------------------

def case_main(args: argparse.Namespace) -> Result:
    """One case, run in its own subprocess (`_sync_case`); its result goes to `--out`."""
    if args.case == "sync":
        result = sync_case_sync(args.db, args.data, args.rows, args.batch)
    else:
        result = sync_case_naive(args.db, args.data, args.rows, fts=args.case == "naive")
    return finish_case(args, result, peak_rss_mb=round(vm_hwm_mb(), 1))


def sync_case_sync(db: Path, data: Path, rows: int, batch: int) -> dict[str, Any]:
    """`engine.sync.run` of the ndjson source into a fresh database; only the run is timed."""
    remove_database(db)
    with Engine(sync_config(db, fts=True, data=data, batch=batch)) as engine:
        started = time.perf_counter()
        run = engine.sync.run(SYNC_SOURCE, timeout=SYNC_TIMEOUT_S)
        seconds = time.perf_counter() - started
    if run.status != "ok":
        raise sync_fail(f"the sync run ended {run.status} after {run.rows:,} rows: {run.error}")
    if run.rows != rows or run.rejects:
        raise sync_fail(f"the sync run wrote {run.rows:,} rows with {run.rejects:,} rejects, "
                        f"expected {rows:,} and none")
    lease = None if run.fts_lease is None else {"deferred": run.fts_lease.deferred,
                                                "reason": run.fts_lease.reason}
    after = run.fts_after
    restore = None
    if after is not None and after.last_restore is not None:
        restore = fts_checks.restore_json(after.last_restore)
    return {"seconds": seconds, "rows": run.rows, "mode": run.mode, "note": run.note,
            "fts_lease": lease, "fts_state": None if after is None else after.state,
            "restore": restore}


def sync_case_naive(db: Path, data: Path, rows: int, *, fts: bool) -> dict[str, Any]:
    """The loop a user writes: `json.loads` per line, `executemany` per 1,000 rows, one
    transaction each, into the schema the engine made (with or without its FTS index)."""
    make_schema(db, sync_config(db, fts=fts))
    conn = apsw.Connection(str(db))
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "normal")
    sql = f"INSERT INTO docs ({', '.join(SYNC_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"

    def records() -> Iterator[tuple[Any, ...]]:
        for path in sync_files(data):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    yield (record["id"], record["title"], record["body"], record["score"],
                           record["updated"])

    written = 0
    started = time.perf_counter()
    for batch in batches(records(), NAIVE_BATCH):
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        written += len(batch)
    seconds = time.perf_counter() - started
    conn.close()
    if written != rows:
        raise sync_fail(f"the {'naive' if fts else 'limit'} loop read {written:,} records, "
                        f"expected {rows:,}")
    return {"seconds": seconds, "rows": written}


def run_sync_case(case: str, db: Path, data: Path, args: argparse.Namespace) -> Result:
    """Run one case in a fresh Python process and return what it reported."""
    return run_case(NAME, CASE_COMMAND, case, db.with_suffix(".result.json"),
                    ["--db", str(db), "--data", str(data), "--rows", str(args.rows),
                     "--batch", str(args.batch)])


# --- the bench ----------------------------------------------------------------------------

def check_sync(dbs: dict[str, Path], rows: int, queries: list[str]) -> dict[str, Any]:
    """Every database holds `rows` rows; the sync database has its FTS triggers back,
    answers every query as the naive one does (with at least one hit each) and passes
    FTS5's integrity-check."""
    started = time.perf_counter()
    fingerprints: dict[str, fts_checks.Fingerprint] = {}
    for case, path in dbs.items():
        conn = apsw.Connection(str(path))
        try:
            count = fts_checks.row_count(conn)
            if count != rows:
                raise sync_fail(f"the {case} database holds {count:,} rows in "
                                f"{fts_checks.FTS_TABLE}, expected {rows:,}")
            if case == "limit":
                continue
            problem = fts_checks.trigger_problem(conn)
            if problem is not None:
                raise sync_fail(f"the {case} database's {problem}")
            fingerprints[case] = fts_checks.fingerprint(conn, queries)
            if case == "sync" and (problem := fts_checks.integrity_problem(conn)) is not None:
                raise sync_fail(f"integrity-check on the sync database: {problem}")
        finally:
            conn.close()
    for ref, got in zip(fingerprints["naive"], fingerprints["sync"], strict=True):
        if ref != got:
            raise sync_fail(f"{ref[0]} matched {got[1]:,} rows on the sync database against "
                            f"{ref[1]:,} on the naive one, or different ones")
        if not ref[1]:
            raise sync_fail(f"{ref[0]} matched no row: the query checks nothing")
    return {"check_s": round(time.perf_counter() - started, 1),
            "hits": {expr: hits for expr, hits, _ in fingerprints["sync"]}}


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_sync)


def _bench_sync(args: argparse.Namespace, workdir: Path) -> Result:
    corpus = Corpus()
    data = workdir / "sync-data"
    data_info = write_ndjson(data, corpus, args.rows, args.files)
    queries = sync_queries(corpus)
    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for repeat in range(args.repeat):
        dbs = {case: workdir / f"sync-{case}.db" for case in SYNC_CASES}
        try:
            for case in alternating(SYNC_CASES, repeat):
                run = run_sync_case(case, dbs[case], data, args)
                runs.append(run)
                print(f"  {case}: {run['seconds']:.2f} s, {run['rows_s']:,.0f} rows/s, peak RSS "
                      f"{run['peak_rss_mb']:.0f} MB", file=sys.stderr)
            checks = check_sync(dbs, args.rows, queries)
        finally:
            if args.workdir is None or repeat < args.repeat - 1:
                for path in dbs.values():
                    remove_database(path)
                    path.with_suffix(".jsonl").unlink(missing_ok=True)
    best = mark_best(runs, lambda run: -run["rows_s"])
    sync_rows_s, naive_rows_s = best["sync"]["rows_s"], best["naive"]["rows_s"]
    limit_rows_s = best["limit"]["rows_s"]
    return {
        "bench": "sync",
        "sync_rows_s": sync_rows_s,
        "naive_rows_s": naive_rows_s,
        "limit_rows_s": limit_rows_s,
        "vs_naive": round(sync_rows_s / naive_rows_s, 3),
        "vs_limit": round(sync_rows_s / limit_rows_s, 3),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs if r["case"] == "sync"),
        "sync_run": {key: best["sync"][key] for key in ("mode", "note", "fts_lease",
                                                        "fts_state", "restore")},
        "params": {"rows": args.rows, "files": args.files, "batch_rows": args.batch,
                   "naive_batch_rows": NAIVE_BATCH, "repeat": args.repeat,
                   "vocabulary": VOCABULARY_SIZE, "body_words": SYNC_BODY_WORDS,
                   "data": data_info, "queries": len(queries), "check_s": checks["check_s"],
                   "hits": checks["hits"]},
        "runs": runs,
        "sqlite_version": apsw.sqlite_lib_version(),
    }


def report(result: Result) -> None:
    params = result["params"]
    print(f"bench sync: {params['rows']:,} ndjson records in {params['files']} files "
          f"({params['data']['mb']:.0f} MB) into docs with an FTS5 index on [title, body]; "
          f"sync batches of {params['batch_rows']:,}, naive and limit "
          f"{params['naive_batch_rows']:,} per transaction; each case in its own process, "
          f"best of {params['repeat']}")
    best = best_of(result["runs"])
    labels = {"sync": "engine.sync.run", "naive": "naive (apsw, FTS triggers live)",
              "limit": "limit (apsw, no FTS)"}
    print(f"{'case':<32} {'rows/s':>10} {'seconds':>9} {'peak RSS MB':>12}")
    for case in SYNC_CASES:
        run = best[case]
        print(f"{labels[case]:<32} {run['rows_s']:>10,.0f} {run['seconds']:>9.2f} "
              f"{run['peak_rss_mb']:>12.0f}")
    sync_run = result["sync_run"]
    lease, restore = sync_run["fts_lease"], sync_run["restore"]
    fts = "no FTS lease" if lease is None else (
        f"FTS {'deferred' if lease['deferred'] else 'live'} ({lease['reason']})")
    if restore is not None:
        fts += ", restored by " + fts_checks.describe_restore(restore)
    print(f"sync run: mode {sync_run['mode']}, {fts}")
    vs_naive, vs_limit, rss = result["vs_naive"], result["vs_limit"], result["peak_rss_mb"]
    print(f"vs naive {target(vs_naive, vs_naive >= VS_NAIVE_TARGET, f'>= {VS_NAIVE_TARGET}')}"
          f"   vs limit {target(vs_limit, vs_limit >= VS_LIMIT_TARGET, f'>= {VS_LIMIT_TARGET}')}"
          f"   peak RSS {rss:.0f} MB (target <= {SYNC_RSS_TARGET_MB:.0f}: "
          f"{met(rss <= SYNC_RSS_TARGET_MB)})")
    print(f"checks: {params['rows']:,} rows in every database, {params['queries']} queries gave "
          "the same rowids on the sync and naive databases, integrity-check passed on the sync "
          "database")
