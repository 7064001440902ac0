"""`scripts/bench fts-share [--total N] [--shares S,S,...] [--batch N] [--repeat N]
                           [--json PATH] [--workdir DIR]`

The evidence for `fts_deferral.rebuild_share`, the share of a table's rows
changed during a deferral above which the restore rebuilds the whole index
instead of indexing only the changed rows. For each share s (by default 0.2,
0.33, 0.5, 0.67, 0.8, 0.95) a base of (1 - s) * N rows (N = --total, 250,000
by default) is built as for `fts` (b), then s * N new rows are caught up into
fresh copies of it the same way, once with `rebuild_share: 0.0` (forcing a
rebuild, which includes merging the index into one segment) and once with
`1.0` (forcing incremental). Only the restore is timed:
`last_restore.duration_ms` from `engine.fts.status()`, whose mode must be
the forced one. The same checks as `fts` run after each restore, and both
modes must answer the queries alike. JSON keys: points (share, base_rows,
new_rows, rebuild_s, incremental_s, plus faster and ratio = rebuild_s /
incremental_s), crossover_share (the smallest measured share where
rebuild_s <= 1.05 * incremental_s, or null), plus rebuild_share_default,
peak_rss_mb, params and the runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import FtsDeferralConfig

from .common import (
    Result,
    add_output_options,
    alternating,
    fresh_copy,
    in_workdir,
    peak_rss_mb,
    remove_database,
)
from .corpus import BODY_WORDS, TITLE_WORDS, VOCABULARY_SIZE, Corpus
from .fts import (
    FTS_IN_FLIGHT,
    SMALL_SEED,
    FtsRun,
    build_fts_base,
    compare_fts,
    fts_fail,
    fts_queries,
    run_fts,
)

NAME = "fts-share"
HELP = ("FTS restore by rebuild against incremental at several shares of the table changed: "
        "the evidence for fts_deferral.rebuild_share")
#: The shares of the table changed during the deferral, measured by default.
FTS_SHARES = (0.2, 1 / 3, 0.5, 2 / 3, 0.8, 0.95)
#: Rows in the table after each catch-up, by default (base rows + new rows).
FTS_SHARE_TOTAL = 250_000
#: The variants: each forces its restore mode through `fts_deferral.rebuild_share`.
FTS_SHARE_MODES = {"rebuild": 0.0, "incremental": 1.0}
#: The crossover is the first share at which rebuild_s <= incremental_s * this.
CROSSOVER_TOLERANCE = 1.05
FTS_DEFERRAL_DEFAULTS = FtsDeferralConfig()


def parse_shares(text: str) -> tuple[float, ...]:
    """`--shares`: comma-separated shares, each above 0 and below 1."""
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not shares or not all(0 < share < 1 for share in shares):
        raise argparse.ArgumentTypeError(f"each share must be above 0 and below 1: {text!r}")
    return shares


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total", type=int, default=FTS_SHARE_TOTAL,
                        help="rows in the table after each catch-up, base plus new "
                        "(default: %(default)s)")
    parser.add_argument("--shares", type=parse_shares, default=FTS_SHARES,
                        help="comma-separated shares of the table that are new rows "
                        "(default: 0.2,0.33,0.5,0.67,0.8,0.95)")
    parser.add_argument("--batch", type=int, default=2_000,
                        help="rows per write_many (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per mode and share; the fastest restore counts "
                        "(default: %(default)s)")
    add_output_options(parser, NAME, workdir="where the databases go, the last base kept "
                       "there (default: a temporary directory, removed afterwards)")


def usage_error(args: argparse.Namespace) -> str | None:
    if min(args.total, args.batch, args.repeat) < 1:
        return "--total, --batch and --repeat must be positive"
    threshold = FTS_DEFERRAL_DEFAULTS.threshold_rows
    if any(base < 1 or new < threshold for base, new in share_points(args.total, args.shares)):
        return (f"--total too small for --shares: every point needs a base row and at least "
                f"{threshold:,} new rows (fts_deferral.threshold_rows)")
    return None


def share_points(total: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """(base rows, new rows) per share: `total` rows after the catch-up, `share` of them new."""
    points = []
    for share in shares:
        new_rows = round(total * share)
        points.append((total - new_rows, new_rows))
    return points


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_fts_share)


def _bench_fts_share(args: argparse.Namespace, workdir: Path) -> Result:
    bench_started = time.perf_counter()
    corpus = Corpus()
    modes = tuple(FTS_SHARE_MODES)
    base, run_path = workdir / "fts-share-base.db", workdir / "fts-share-run.db"
    runs: list[FtsRun] = []
    best: list[FtsRun] = []
    points: list[dict[str, Any]] = []
    for index, (base_rows, new_rows) in enumerate(share_points(args.total, args.shares)):
        table_rows = base_rows + new_rows
        share = round(new_rows / table_rows, 3)
        case = f"share {share:.2f}"
        base_info = build_fts_base(base, corpus, base_rows, args.batch)
        new = list(corpus.rows(SMALL_SEED, base_rows + 1, new_rows))
        queries = fts_queries(corpus, new)
        fastest: dict[str, FtsRun] = {}
        try:
            for repeat in range(args.repeat):
                for mode in alternating(modes, index + repeat):
                    fresh_copy(base, run_path)
                    try:
                        run = run_fts(case, mode, run_path, new, args.batch, queries, table_rows,
                                      rebuild_share=FTS_SHARE_MODES[mode])
                    finally:
                        remove_database(run_path)
                    seconds = check_share_run(run, mode, new_rows, table_rows)
                    runs.append(run)
                    if mode not in fastest or seconds < share_restore_s(fastest[mode]):
                        fastest[mode] = run
                    print(f"  {case} ({base_rows:,} + {new_rows:,} rows) {mode}: restore "
                          f"{seconds:.2f} s", file=sys.stderr)
        finally:
            if args.workdir is None:
                remove_database(base)
        compare_fts(runs, case)
        new.clear()
        best += fastest.values()
        rebuild_s = share_restore_s(fastest["rebuild"])
        incremental_s = share_restore_s(fastest["incremental"])
        points.append({"share": share, "base_rows": base_rows, "new_rows": new_rows,
                       "rebuild_s": round(rebuild_s, 3),
                       "incremental_s": round(incremental_s, 3),
                       "faster": "rebuild" if rebuild_s < incremental_s else "incremental",
                       "ratio": round(rebuild_s / incremental_s, 3),
                       "base_build_s": base_info["seconds"]})
    crossover = next((p["share"] for p in sorted(points, key=lambda p: p["share"])
                      if p["rebuild_s"] <= p["incremental_s"] * CROSSOVER_TOLERANCE), None)
    return {
        "bench": "fts-share",
        "points": points,
        "crossover_share": crossover,
        "rebuild_share_default": FTS_DEFERRAL_DEFAULTS.rebuild_share,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "wall_s": round(time.perf_counter() - bench_started, 1),
        "params": {"total_rows": args.total, "shares": list(args.shares),
                   "batch_rows": args.batch, "in_flight": FTS_IN_FLIGHT, "repeat": args.repeat,
                   "modes": FTS_SHARE_MODES, "crossover_tolerance": CROSSOVER_TOLERANCE,
                   "restore_buffer_mb": FTS_DEFERRAL_DEFAULTS.restore_buffer_mb,
                   "vocabulary": VOCABULARY_SIZE, "title_words": TITLE_WORDS,
                   "body_words": BODY_WORDS},
        "runs": [run.as_json(best=any(run is b for b in best)) for run in runs],
        "sqlite_version": apsw.sqlite_lib_version(),
    }


def share_restore_s(run: FtsRun) -> float:
    """The restore's own time (`last_restore.duration_ms`), in seconds."""
    if run.restore is None:
        raise fts_fail(f"{run.case} {run.variant}: no restore was recorded")
    return float(run.restore["duration_ms"]) / 1000


def check_share_run(run: FtsRun, mode: str, new_rows: int, table_rows: int) -> float:
    """The restore ran in the forced `mode` over the expected rows; returns its seconds."""
    seconds = share_restore_s(run)
    assert run.restore is not None
    tables = run.restore["tables"]
    if len(tables) != 1 or tables[0]["mode"] != mode:
        raise fts_fail(f"{run.case}: forcing {mode} restored "
                       f"{[t['mode'] for t in tables]}")
    if (tables[0]["changed_rows"], tables[0]["table_rows"]) != (new_rows, table_rows):
        raise fts_fail(f"{run.case} {mode}: the restore saw {tables[0]['changed_rows']:,} "
                       f"changed of {tables[0]['table_rows']:,} rows, expected {new_rows:,} "
                       f"of {table_rows:,}")
    return seconds


def report(result: Result) -> None:
    params = result["params"]
    print(f"bench fts-share: the restore after catching up new rows under FTS deferral, "
          f"{params['total_rows']:,} rows in the table afterwards; rebuild forced with "
          f"rebuild_share 0.0, incremental with 1.0; restore time only, best of "
          f"{params['repeat']}")
    print(f"{'share':>5} {'base rows':>10} {'new rows':>10} {'rebuild s':>10} "
          f"{'incr s':>8}  {'faster':<11} {'rebuild/incr':>12}")
    for p in result["points"]:
        print(f"{p['share']:>5.2f} {p['base_rows']:>10,} {p['new_rows']:>10,} "
              f"{p['rebuild_s']:>10.2f} {p['incremental_s']:>8.2f}  {p['faster']:<11} "
              f"{p['ratio']:>12.2f}")
    crossover = result["crossover_share"]
    tolerance = round((CROSSOVER_TOLERANCE - 1) * 100)
    print(f"crossover share (rebuild within {tolerance}% of incremental): "
          f"{'none measured' if crossover is None else f'{crossover:.2f}'}   default "
          f"rebuild_share {result['rebuild_share_default']}   peak RSS "
          f"{result['peak_rss_mb']:.0f} MB   wall {result['wall_s']:.0f} s")
    print("checks: every restore ran in its forced mode, both modes gave the same rowids, "
          "integrity-check passed on every run")
