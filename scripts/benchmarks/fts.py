"""`scripts/bench fts [--large-rows N] [--base-rows N] [--small-rows N] [--batch N]
                     [--repeat N] [--json PATH] [--workdir DIR]`

A catch-up into a table with an external-content FTS5 index, once with the
index's triggers live throughout (deferral disabled) and once inside
`engine.fts.catch_up` with deferral enabled, timed from the catch-up's start
until it has ended, so the deferred time includes dropping the triggers and
restoring them (rebuild and optimize, or re-indexing only the changed rows).
Both send the same rows the same way: `write_many(wait=False)` per batch, at
most 4 batches unanswered. (a) 300,000 rows into an empty table; (b) 10,000
rows into a table that already holds 1,000,000, each run on a fresh copy of
one base database built (untimed) once per bench. The text is made-up words
from a seeded 20,000-word vocabulary drawn Zipf-like. After each run the
triggers must be back, about 20 MATCH queries (common and rare words,
phrases, the rows just written) must give the same rowids for both variants,
and FTS5's integrity-check must pass; otherwise the bench exits 1. JSON
keys: large_live_s, large_deferred_s, large_speedup, small_live_s,
small_deferred_s, small_ratio (a contract; targets: large_speedup >= 3.5,
small_ratio <= 1.1), plus peak_rss_mb, params, the restores and the runs.

The catch-up runs, the base and the checks here serve `fts-share` too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.facade import Engine
from sqlwarden.futures import Future

from .common import (
    Result,
    add_output_options,
    alternating,
    batches,
    bench_fail,
    fresh_copy,
    in_workdir,
    make_config,
    met,
    peak_rss_mb,
    remove_database,
)
from .corpus import BODY_WORDS, TITLE_WORDS, VOCABULARY_SIZE, Corpus
from .fts_checks import (
    DOCS_FTS_YAML,
    DOCS_YAML,
    FTS_TABLE,
    Fingerprint,
    describe_restore,
    fingerprint_entry,
    integrity_problem,
    matching_rowids,
    restore_json,
    row_count,
    trigger_problem,
)

NAME = "fts"
HELP = ("a catch-up into an FTS-indexed table with its triggers live against the same with "
        "FTS deferral")
FTS_YAML = DOCS_YAML + DOCS_FTS_YAML + """
fts_deferral:
  enabled: {deferral}{deferral_options}
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
FTS_COLUMNS = ("id", "title", "body")
#: The name every catch-up is announced under.
FTS_SOURCE = "bench"
#: Write batches sent and not yet answered, at most.
FTS_IN_FLIGHT = 4
LARGE_SEED = 2
BASE_SEED = 3
SMALL_SEED = 4
LARGE_SPEEDUP_TARGET = 3.5
SMALL_RATIO_TARGET = 1.1
#: A match expression, and a rowid that must be among its hits (or None).
FtsQuery = tuple[str, int | None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--large-rows", type=int, default=300_000,
                        help="rows of catch-up into an empty table (default: %(default)s)")
    parser.add_argument("--base-rows", type=int, default=1_000_000,
                        help="rows already in the table for the small catch-up "
                        "(default: %(default)s)")
    parser.add_argument("--small-rows", type=int, default=10_000,
                        help="rows of the small catch-up (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2_000,
                        help="rows per write_many (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1)
    add_output_options(parser, NAME, workdir="where the databases go, kept there (default: a "
                       "temporary directory, removed afterwards)")


def usage_error(args: argparse.Namespace) -> str | None:
    if min(args.large_rows, args.base_rows, args.small_rows, args.batch, args.repeat) < 1:
        return "--large-rows, --base-rows, --small-rows, --batch and --repeat must be positive"
    return None


def fts_fail(message: str) -> SystemExit:
    return bench_fail("fts", message)


def fts_config(path: Path, *, deferral: bool, rebuild_share: float | None = None) -> Config:
    """The `docs` table with its FTS index; `rebuild_share`, when given, is set in
    `fts_deferral` (otherwise the engine's default applies)."""
    options = "" if rebuild_share is None else f"\n  rebuild_share: {rebuild_share!r}"
    return make_config(FTS_YAML, path, deferral=str(deferral).lower(), deferral_options=options)


def send_rows(engine: Engine, rows: Iterable[tuple[int, str, str]], batch: int) -> int:
    """`write_many(wait=False)` per batch, at most `FTS_IN_FLIGHT` unanswered; returns once
    every batch is committed. Returns the rows sent."""
    in_flight: deque[Future[Any]] = deque()
    sent = 0
    for chunk in batches(rows, batch):
        if len(in_flight) >= FTS_IN_FLIGHT:
            in_flight.popleft().get()
        in_flight.append(engine.write_many(FTS_TABLE, chunk, columns=FTS_COLUMNS, wait=False))
        sent += len(chunk)
    while in_flight:
        in_flight.popleft().get()
    return sent


def fts_queries(corpus: Corpus, rows: Sequence[tuple[int, str, str]]) -> list[FtsQuery]:
    """About 20 queries: single words from the most common to the rarest, column filters,
    boolean and NEAR combinations, a prefix, and 2-word phrases taken from rows
    this catch-up wrote (which must find those rows)."""
    w = corpus.words
    queries: list[FtsQuery] = [(f'"{w[rank]}"', None)
                               for rank in (0, 1, 4, 19, 99, 999, 4_999, 9_999, 19_998)]
    queries += [(f'title:"{w[2]}"', None), (f'"{w[0]}" AND "{w[49]}"', None),
                (f'"{w[3]}" NOT "{w[1]}"', None), (f'NEAR("{w[5]}" "{w[6]}", 3)', None),
                (f'{w[500][:3]}*', None)]
    for row in (rows[0], rows[len(rows) // 2], rows[-1]):
        title, body = row[1].split(), row[2].split()
        queries.append((f'"{body[10]} {body[11]}"', row[0]))
        queries.append((f'"{title[0]} {title[1]}"', row[0]))
    queries.append((f'title:"{rows[-1][1].split()[-1]}" AND body:"{rows[-1][2].split()[-1]}"',
                    rows[-1][0]))
    return queries


def check_fts(path: Path, queries: list[FtsQuery], table_rows: int) -> Fingerprint:
    """After the engine stopped: the triggers are back, the content has every row, the
    queries find the rows they must, and FTS5's integrity-check (with rank 1, which
    compares the index with the content table) passes. Returns the queries' results."""
    conn = apsw.Connection(str(path))
    try:
        problem = trigger_problem(conn)
        if problem is not None:
            raise fts_fail(f"{path.name}: {problem}")
        count = row_count(conn)
        if count != table_rows:
            raise fts_fail(f"{path.name}: {FTS_TABLE} holds {count:,} rows, expected "
                           f"{table_rows:,}")
        out = []
        for expr, must_find in queries:
            hits = matching_rowids(conn, expr)
            if must_find is not None and must_find not in hits:
                raise fts_fail(f"{path.name}: {expr} does not find row {must_find}")
            out.append(fingerprint_entry(expr, hits))
        problem = integrity_problem(conn)
        if problem is not None:
            raise fts_fail(f"{path.name}: integrity-check: {problem}")
    finally:
        conn.close()
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsRun:
    """One catch-up: how long it took, what the controller did, and what the index answers."""

    case: str  # large or small
    variant: str  # live or deferred
    seconds: float
    rows: int
    table_rows: int
    lease: str
    #: The restore's modes and size (deferred only).
    restore: dict[str, Any] | None
    fingerprint: Fingerprint
    check_s: float

    def as_json(self, *, best: bool) -> dict[str, Any]:
        return {"case": self.case, "variant": self.variant, "best": best,
                "seconds": round(self.seconds, 3), "rows": self.rows,
                "rows_s": round(self.rows / self.seconds, 1), "table_rows": self.table_rows,
                "lease": self.lease, "restore": self.restore, "check_s": round(self.check_s, 1)}


def run_fts(case: str, variant: str, path: Path, rows: Sequence[tuple[int, str, str]],
            batch: int, queries: list[FtsQuery], table_rows: int, *,
            rebuild_share: float | None = None) -> FtsRun:
    """Send `rows` inside `engine.fts.catch_up`, timed from the catch-up's start until it
    has ended (for `deferred` that includes dropping and restoring the triggers).
    `live` has deferral disabled: the same calls, with the triggers live throughout.
    Any other variant defers too (`fts-share` names its variants by restore mode), with
    `rebuild_share` set in the config when given."""
    deferral = variant != "live"
    with Engine(fts_config(path, deferral=deferral, rebuild_share=rebuild_share)) as engine:
        started = time.perf_counter()
        with engine.fts.catch_up(FTS_SOURCE, len(rows)) as lease:
            send_rows(engine, rows, batch)
        seconds = time.perf_counter() - started
        view = engine.fts.status()
        engine.checkpoint("truncate")
    if lease.deferred != deferral:
        raise fts_fail(f"{case} {variant}: the lease says deferred={lease.deferred} "
                       f"({lease.reason})")
    if view.state != "live":
        raise fts_fail(f"{case} {variant}: FTS state {view.state} after the catch-up "
                       f"({view.error})")
    restore = None
    if deferral:
        if view.last_restore is None:
            raise fts_fail(f"{case} deferred: no restore was recorded")
        restore = restore_json(view.last_restore)
    started = time.perf_counter()
    fingerprint = check_fts(path, queries, table_rows)
    return FtsRun(case=case, variant=variant, seconds=seconds, rows=len(rows),
                  table_rows=table_rows, lease=lease.reason, restore=restore,
                  fingerprint=fingerprint, check_s=time.perf_counter() - started)


def build_fts_base(path: Path, corpus: Corpus, rows: int, batch: int) -> dict[str, Any]:
    """The database the small catch-up lands in: `rows` rows written under one deferral
    (so indexed by one rebuild and optimize), then checkpointed and closed."""
    remove_database(path)
    started = time.perf_counter()
    with Engine(fts_config(path, deferral=True)) as engine:
        with engine.fts.catch_up("base", rows) as lease:
            send_rows(engine, corpus.rows(BASE_SEED, 1, rows), batch)
        view = engine.fts.status()
        engine.checkpoint("truncate")
    if not lease.deferred or view.state != "live" or view.last_restore is None:
        raise fts_fail(f"building the base: deferred={lease.deferred} ({lease.reason}), "
                       f"state {view.state} ({view.error})")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise fts_fail(f"building the base left {wal.stat().st_size:,} bytes in {wal.name}")
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 1),
            "mb": round(path.stat().st_size / 1024 / 1024, 1),
            "restore_mode": [t.mode for t in view.last_restore.tables]}


def best_fts(runs: list[FtsRun], case: str, variant: str) -> FtsRun:
    return min((r for r in runs if r.case == case and r.variant == variant),
               key=lambda r: r.seconds)


def compare_fts(runs: list[FtsRun], case: str) -> None:
    """Every run of `case` must have answered every query with the same rowids."""
    mine = [r for r in runs if r.case == case]
    reference = mine[0]
    for run in mine[1:]:
        for ref, got in zip(reference.fingerprint, run.fingerprint, strict=True):
            if ref != got:
                raise fts_fail(f"{case}: {ref[0]} matched {ref[1]:,} rows ({reference.variant}) "
                               f"against {got[1]:,} ({run.variant}), or different ones")


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_fts)


def _bench_fts(args: argparse.Namespace, workdir: Path) -> Result:
    corpus = Corpus()
    variants = ("live", "deferred")
    runs: list[FtsRun] = []
    run_path = workdir / "fts-run.db"

    def each(case: str, run: Callable[[str], FtsRun]) -> None:
        for repeat in range(args.repeat):
            for variant in alternating(variants, repeat):
                try:
                    runs.append(run(variant))
                finally:
                    remove_database(run_path)
                print(f"  {case} {variant}: {runs[-1].seconds:.2f} s", file=sys.stderr)

    # (a) a large catch-up into an empty table.
    large = list(corpus.rows(LARGE_SEED, 1, args.large_rows))
    large_queries = fts_queries(corpus, large)
    each("large", lambda variant: run_fts("large", variant, run_path, large, args.batch,
                                          large_queries, args.large_rows))
    compare_fts(runs, "large")
    large.clear()  # the memory, before the base is built

    # (b) a small catch-up into a table that already holds many rows, on copies of one base.
    base = workdir / "fts-base.db"
    base_info = build_fts_base(base, corpus, args.base_rows, args.batch)
    small = list(corpus.rows(SMALL_SEED, args.base_rows + 1, args.small_rows))
    small_queries = fts_queries(corpus, small)

    def small_run(variant: str) -> FtsRun:
        fresh_copy(base, run_path)
        return run_fts("small", variant, run_path, small, args.batch, small_queries,
                       args.base_rows + args.small_rows)

    try:
        each("small", small_run)
    finally:
        if args.workdir is None:
            remove_database(base)
    compare_fts(runs, "small")

    best = {(case, variant): best_fts(runs, case, variant)
            for case in ("large", "small") for variant in variants}
    large_live, large_deferred = best["large", "live"], best["large", "deferred"]
    small_live, small_deferred = best["small", "live"], best["small", "deferred"]
    return {
        "bench": "fts",
        "large_live_s": round(large_live.seconds, 3),
        "large_deferred_s": round(large_deferred.seconds, 3),
        "large_speedup": round(large_live.seconds / large_deferred.seconds, 3),
        "small_live_s": round(small_live.seconds, 3),
        "small_deferred_s": round(small_deferred.seconds, 3),
        "small_ratio": round(small_deferred.seconds / small_live.seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "params": {"large_rows": args.large_rows, "base_rows": args.base_rows,
                   "small_rows": args.small_rows, "batch_rows": args.batch,
                   "in_flight": FTS_IN_FLIGHT, "repeat": args.repeat,
                   "vocabulary": VOCABULARY_SIZE, "title_words": TITLE_WORDS,
                   "body_words": BODY_WORDS, "queries": len(large_queries), "base": base_info},
        "restore": {"large": large_deferred.restore, "small": small_deferred.restore},
        "runs": [run.as_json(best=any(run is b for b in best.values())) for run in runs],
        "sqlite_version": apsw.sqlite_lib_version(),
    }


def report(result: Result) -> None:
    params = result["params"]
    print(f"bench fts: (a) {params['large_rows']:,} rows into an empty table, (b) "
          f"{params['small_rows']:,} rows into one holding {params['base_rows']:,}; batches of "
          f"{params['batch_rows']:,}, {params['in_flight']} in flight; best of {params['repeat']}")
    best = {(run["case"], run["variant"]): run for run in result["runs"] if run["best"]}
    print(f"{'case':<9} {'variant':<9} {'seconds':>9} {'rows/s':>10}  restore")
    for case, label in (("large", "(a) large"), ("small", "(b) small")):
        for variant in ("live", "deferred"):
            run = best[case, variant]
            restore = "" if run["restore"] is None else describe_restore(run["restore"])
            print(f"{label:<9} {variant:<9} {run['seconds']:>9.2f} {run['rows_s']:>10,.0f}  "
                  f"{restore}")
    speedup, ratio = result["large_speedup"], result["small_ratio"]
    print(f"large speedup {speedup:.3f} (target >= {LARGE_SPEEDUP_TARGET}: "
          f"{met(speedup >= LARGE_SPEEDUP_TARGET)})   small ratio "
          f"{ratio:.3f} (target <= {SMALL_RATIO_TARGET}: "
          f"{met(ratio <= SMALL_RATIO_TARGET)})   peak RSS "
          f"{result['peak_rss_mb']:.0f} MB")
    print(f"checks: {params['queries']} queries gave the same rowids live and deferred, "
          "integrity-check passed on every run")
