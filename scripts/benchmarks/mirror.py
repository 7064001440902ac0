"""`scripts/bench mirror [--rows N] [--ingest-seconds S] [--peer-rows N] [--repeat N]
                        [--json PATH] [--workdir DIR]`

The MySQL mirror against a private MariaDB server the bench starts in a
temporary directory (tests/support/mariadb.py) and stops at the end, user
and database `bench` with a random password. The device's table `registry`
(id, org, name, body of 100-150 bytes, updated_at with microseconds, score)
gets N rows (1,000,000 by default) from a config without the mirror section,
so no outbox triggers fire while it is filled. Each case runs in its own
process. `engine`: (a) an Engine on the config with the mirror adds the
triggers, and its first connect copies every row into the empty mirror;
`engine.mirror.reconcile` joins that run, whose own `seconds` give
cold_rows_s (the wall time from starting the Engine is shown too), and the
mirror must then hold N rows for the scope. (b) A new Engine on the same
config: its boot reconcile must find every range equal and skip the table;
its `seconds` are insync_check_s. (c) While that engine runs, 100 rows
every 50 ms (2,000 rows/s; 20 of each 100 update old ids) through
`engine.upsert(wait=False)` on a monotonic schedule for --ingest-seconds
(60), then until the outbox is empty; `engine.mirror.view()` is sampled
every second and lag_p99_ms is the largest of its `lag_p99_ms` (the p99
over the last 5,000 drained changes); a probe writes its own row once a
second and polls the server until it is there, as an outside check. A
verify must then find the mirror equal to SQLite. `raw`: a plain
mysql-connector-python loop (C extension) over the same rows read with
apsw, `executemany` of INSERT ... ON DUPLICATE KEY UPDATE per 1,000 rows
and a commit each, into an empty table made like the mirror's (so the
server computes its sw_digest too); its digest sum must equal the
mirror's. `peer`: `sqlite3mysql` (PyPI sqlite3-to-mysql, pip-installed into
the venv when missing; null with the reason when that fails) copying a
file with the first 200,000 rows (--peer-rows) into its own database,
upserting in chunks of 1,000, timed as a whole command. JSON keys:
cold_rows_s, raw_rows_s, vs_raw, peer_rows_s, vs_peer, insync_check_s,
insync_vs_cold, lag_p99_ms, peak_rss_mb (the engine process's VmHWM over
(a) to (c)) (a contract; targets: vs_raw >= 0.7, insync_vs_cold <= 0.05,
peak_rss_mb <= 150), plus everything else under `details`.

What the bench works on is in mirror_setup.py, the cases in mirror_cases.py.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

from .common import (
    ROOT,
    Result,
    add_output_options,
    alternating,
    fresh_copy,
    in_workdir,
    mark_best,
    met,
    remove_database,
    target,
)
from .mirror_cases import (
    INGEST_TICK_ROWS,
    INGEST_TICK_S,
    INGEST_TICK_UPDATES,
    RAW_BATCH,
    ensure_peer,
    run_mirror_case,
    run_peer,
)
from .mirror_setup import (
    MIRROR_BATCH,
    MIRROR_DATABASE,
    MIRROR_POLL_MS,
    MIRROR_RANGE_ROWS,
    MIRROR_SCOPE,
    MIRROR_TABLE,
    MIRROR_USER,
    PEER_DATABASE,
    RAW_TABLE,
    build_mirror_base,
    build_peer_db,
    mirror_config,
    mirror_fail,
    mirror_totals,
    reset_mirror_server,
)

NAME = "mirror"
HELP = ("the MySQL mirror against a private MariaDB: a cold reconcile against a plain "
        "connector loop and sqlite3mysql, a restart in sync, and the lag under a steady ingest")
MIRROR_CASES = ("engine", "raw", "peer")
PEER_ROWS = 200_000
VS_RAW_TARGET = 0.7
INSYNC_TARGET = 0.05
MIRROR_RSS_TARGET_MB = 150.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="rows in the device's table (default: %(default)s)")
    parser.add_argument("--ingest-seconds", type=float, default=60.0,
                        help="how long the steady ingest writes (default: %(default)s)")
    parser.add_argument("--peer-rows", type=int, default=PEER_ROWS,
                        help="rows sqlite3mysql copies, at most --rows; 0 leaves the peer out "
                        "(default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest counts (default: %(default)s)")
    add_output_options(parser, NAME, workdir="where the SQLite files go, kept there (default: "
                       "a temporary directory, removed afterwards; the server's always is)")


def usage_error(args: argparse.Namespace) -> str | None:
    if min(args.rows, args.repeat) < 1 or args.ingest_seconds <= 0 or args.peer_rows < 0:
        return "--rows, --repeat and --ingest-seconds must be positive, --peer-rows not negative"
    return None


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_mirror)


def _bench_mirror(args: argparse.Namespace, workdir: Path) -> Result:
    bench_started = time.perf_counter()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support.mariadb import MariaDB, available

    problem = available()
    if problem:
        raise mirror_fail(f"no private MariaDB server can run here: {problem}")
    password = secrets.token_urlsafe(18)
    os.environ["SW_MYSQL_PASSWORD"] = password
    base, run_db, peer_db = (workdir / "mirror-base.db", workdir / "mirror-run.db",
                             workdir / "mirror-peer.db")
    print(f"  building {args.rows:,} rows", file=sys.stderr)
    base_info = build_mirror_base(base, args.rows)
    peer_rows = min(args.peer_rows, args.rows)
    peer_tool, peer_problem = ((None, "left out with --peer-rows 0") if not peer_rows
                               else ensure_peer(workdir))
    if peer_tool is not None:
        build_peer_db(base, peer_db, peer_rows)
    runs: list[dict[str, Any]] = []
    server_version = ""
    try:
        with (tempfile.TemporaryDirectory(prefix="sqlwarden-bench-mariadb-") as tmp,
              MariaDB(Path(tmp)) as server):
            server.create_database(MIRROR_DATABASE, MIRROR_USER, password)
            for host in ("127.0.0.1", "localhost"):
                server.query(f"GRANT ALL PRIVILEGES ON `{PEER_DATABASE}`.* TO "
                             f"'{MIRROR_USER}'@'{host}'")
            (server_version,), = server.query("SELECT VERSION()")
            dsn = server.dsn(MIRROR_USER, MIRROR_DATABASE)
            config = mirror_config(base, dsn)
            for repeat in range(args.repeat):
                reset_mirror_server(server, config)
                fresh_copy(base, run_db)
                digests: dict[str, int] = {}
                for case in alternating(MIRROR_CASES, repeat):
                    if case == "peer":
                        if peer_tool is None:
                            continue
                        run = run_peer(peer_tool, peer_db, peer_rows, server, password, workdir)
                        if "error" in run:
                            peer_problem = run["error"]
                            print(f"  peer: {peer_problem}", file=sys.stderr)
                            continue
                        print(f"  peer: {run['seconds']:.2f} s, {run['rows_s']:,.0f} rows/s",
                              file=sys.stderr)
                    elif case == "engine":
                        run = run_mirror_case(case, run_db, dsn, args.rows, args)
                        digests[case] = run["mirror_digest_sum"]
                        print(f"  engine: cold {run['seconds']:.2f} s ({run['rows_s']:,.0f} "
                              f"rows/s, wall {run['wall_s']:.2f} s), in-sync check "
                              f"{run['insync']['seconds']:.2f} s, ingest lag p99 "
                              f"{run['ingest']['lag_p99_ms_max']:.0f} ms, peak RSS "
                              f"{run['peak_rss_mb']:.0f} MB", file=sys.stderr)
                    else:
                        run = run_mirror_case(case, base, dsn, args.rows, args)
                        count, digests[case] = mirror_totals(config, RAW_TABLE)
                        if count != args.rows:
                            raise mirror_fail(f"the raw table holds {count:,} rows, expected "
                                              f"{args.rows:,}")
                        print(f"  raw: {run['seconds']:.2f} s, {run['rows_s']:,.0f} rows/s",
                              file=sys.stderr)
                    run["repeat"] = repeat
                    runs.append(run)
                if digests["engine"] != digests["raw"]:
                    raise mirror_fail(f"the mirror's sum of sw_digest after the cold reconcile "
                                      f"({digests['engine']}) differs from the raw copy's "
                                      f"({digests['raw']}): the two copies differ")
                remove_database(run_db)
    finally:
        if args.workdir is None:
            for path in (base, run_db, peer_db):
                remove_database(path)
    best = mark_best(runs, lambda run: -run["rows_s"])
    engine, raw, peer = best["engine"], best["raw"], best.get("peer")
    cold_rows_s, raw_rows_s = engine["rows_s"], raw["rows_s"]
    peer_rows_s = None if peer is None else peer["rows_s"]
    insync_s = engine["insync"]["seconds"]
    return {
        "cold_rows_s": cold_rows_s,
        "raw_rows_s": raw_rows_s,
        "vs_raw": round(cold_rows_s / raw_rows_s, 3),
        "peer_rows_s": peer_rows_s,
        "vs_peer": None if peer_rows_s is None else round(cold_rows_s / peer_rows_s, 3),
        "insync_check_s": insync_s,
        "insync_vs_cold": round(insync_s / engine["seconds"], 4),
        "lag_p99_ms": engine["ingest"]["lag_p99_ms_max"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs if r["case"] == "engine"),
        "details": {
            "bench": "mirror",
            "cold": {key: engine[key] for key in ("seconds", "wall_s", "rows", "mirror_rows",
                                                  "driver")} | {"reconcile": engine["cold"]},
            "insync": engine["insync"],
            "ingest": engine["ingest"],
            "verify": engine["verify"],
            "raw": {key: raw[key] for key in ("seconds", "rows", "have_cext", "connection",
                                              "peak_rss_mb")},
            "peer": peer if peer is not None else {"skipped": peer_problem},
            "server": f"MariaDB {server_version} (private, 127.0.0.1)",
            "params": {"rows": args.rows, "peer_rows": peer_rows, "repeat": args.repeat,
                       "ingest_seconds": args.ingest_seconds,
                       "ingest_rows_s": INGEST_TICK_ROWS / INGEST_TICK_S,
                       "ingest_tick_rows": INGEST_TICK_ROWS, "ingest_tick_s": INGEST_TICK_S,
                       "ingest_tick_updates": INGEST_TICK_UPDATES,
                       "batch_rows": MIRROR_BATCH, "range_rows": MIRROR_RANGE_ROWS,
                       "poll_ms": MIRROR_POLL_MS, "raw_batch_rows": RAW_BATCH,
                       "scope": MIRROR_SCOPE, "base": base_info},
            "runs": runs,
            "wall_s": round(time.perf_counter() - bench_started, 1),
            "sqlite_version": apsw.sqlite_lib_version(),
        },
    }


def report(result: Result) -> None:
    details = result["details"]
    params, cold, insync, ingest = (details["params"], details["cold"], details["insync"],
                                    details["ingest"])
    raw, peer = details["raw"], details["peer"]
    base = params["base"]
    print(f"bench mirror: {params['rows']:,} rows of {MIRROR_TABLE} (body "
          f"{base['body_bytes']['min']}-{base['body_bytes']['max']} bytes, timestamps with "
          f"microseconds) into {details['server']}; batch_rows {params['batch_rows']:,}, "
          f"range_rows {params['range_rows']:,}, poll_ms {params['poll_ms']}; mysql connector "
          f"HAVE_CEXT {raw['have_cext']} (the mirror: {cold['driver']}); each case in its own "
          f"process, best of {params['repeat']}")
    print(f"{'case':<40} {'rows':>10} {'rows/s':>10} {'seconds':>9} {'peak RSS MB':>12}")
    print(f"{'engine cold reconcile (view.seconds)':<40} {cold['rows']:>10,} "
          f"{result['cold_rows_s']:>10,.0f} {cold['seconds']:>9.2f} "
          f"{result['peak_rss_mb']:>12.0f}")
    print(f"{'  wall from Engine start':<40} {'':>10} {'':>10} {cold['wall_s']:>9.2f}")
    print(f"{'raw (executemany, commit per 1,000)':<40} {raw['rows']:>10,} "
          f"{result['raw_rows_s']:>10,.0f} {raw['seconds']:>9.2f} {raw['peak_rss_mb']:>12.0f}")
    if result["peer_rows_s"] is None:
        print(f"{'peer (sqlite3mysql)':<40} not measured: {peer['skipped']}")
    else:
        print(f"{'peer (sqlite3mysql, -i update, -c 1000)':<40} {peer['rows']:>10,} "
              f"{result['peer_rows_s']:>10,.0f} {peer['seconds']:>9.2f} "
              f"{peer['peak_rss_mb']:>12.0f}")
    print(f"restart in sync: reconcile #{insync['number']} in {insync['seconds']:.2f} s (wall "
          f"from Engine start {insync['wall_s']:.2f} s), {insync['ranges']:,} ranges, "
          f"{insync['differing']} differing, skipped {insync['skipped']}, copied "
          f"{insync['copied']}, {insync['sqlite_read']:,} rows read from SQLite")
    print(f"steady ingest: {ingest['rows_sent']:,} rows ({ingest['new_rows']:,} new, "
          f"{ingest['updates']:,} updates) in {ingest['seconds']:.1f} s = "
          f"{ingest['rows_s']:,.0f} rows/s; outbox empty {ingest['drain_after_s']:.2f} s after "
          f"the last write; {ingest['drained_changes']:,} changes drained")
    probe = ingest["probe"]
    print(f"lag p99 {result['lag_p99_ms']:.1f} ms = the largest of {ingest['lag_samples']} "
          f"samples (one a second, and one after the drain) of the mirror's own p99 over its "
          f"last 5,000 drained changes (last {ingest['lag_p99_ms_last']:.1f} ms, max lag "
          f"{ingest['lag_max_ms']:.1f} ms); probe, write sent until readable on the server: "
          f"p50 {probe['p50_ms']:.0f} ms, p99 {probe['p99_ms']:.0f} ms, max "
          f"{probe['max_ms']:.0f} ms over {probe['count']} probes")
    vs_raw, insync_ratio, rss = result["vs_raw"], result["insync_vs_cold"], result["peak_rss_mb"]
    vs_peer = "n/a" if result["vs_peer"] is None else f"{result['vs_peer']:.1f}"
    print(f"vs raw {target(vs_raw, vs_raw >= VS_RAW_TARGET, f'>= {VS_RAW_TARGET}')}   vs peer "
          f"{vs_peer}   insync vs cold "
          f"{target(insync_ratio, insync_ratio <= INSYNC_TARGET, f'<= {INSYNC_TARGET}')}   "
          f"peak RSS {rss:.0f} MB (target <= {MIRROR_RSS_TARGET_MB:.0f}: "
          f"{met(rss <= MIRROR_RSS_TARGET_MB)})")
    print(f"checks: the mirror held {cold['mirror_rows']:,} rows after the cold reconcile with "
          f"the raw copy's digest sum; the restart skipped the table; after the ingest verify "
          f"found every range equal and {details['verify']['rows']:,} rows on both sides; "
          f"wall {details['wall_s']:.0f} s")
