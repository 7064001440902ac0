"""Benchmarks for sqlwarden. Each prints a table and writes JSON.

    scripts/bench ingest [--rows N] [--batch N] [--repeat N] [--json PATH]
    scripts/bench backfill [--parents N] [--children N] [--repeat N] [--json PATH]
                           [--target-ms X] [--yield-ms Y]
    scripts/bench fts [--large-rows N] [--base-rows N] [--small-rows N] [--batch N]
                      [--repeat N] [--json PATH] [--workdir DIR]
    scripts/bench fts-share [--total N] [--shares S,S,...] [--batch N] [--repeat N]
                            [--json PATH] [--workdir DIR]
    scripts/bench sync [--rows N] [--files N] [--batch N] [--repeat N] [--json PATH]
                       [--workdir DIR]
    scripts/bench mirror [--rows N] [--ingest-seconds S] [--peer-rows N] [--repeat N]
                         [--json PATH] [--workdir DIR]
    scripts/bench replay [--records N] [--repeat N] [--json PATH] [--workdir DIR]

`ingest`: N rows through `Engine.write_many` (one call per batch, waiting for
each) against raw apsw `executemany` in transactions of the same size, on the
same table, in the same process. `raw` keeps SQLite's automatic checkpoints,
as plain apsw code would; `raw_tuned` uses the engine's checkpoint policy, so
`ratio_vs_tuned` shows what the actors, messages and log cost by themselves.
JSON keys: engine_rows_s, raw_rows_s, ratio, peak_rss_mb (a contract: kept
stable), plus raw_tuned_rows_s, ratio_vs_tuned and the individual runs.

`backfill`: a derived column (a parent's last child `observed_at`) filled in
on identical copies of one database, once as a single UPDATE through
`Engine.write` and once as a chunked task, each while a foreground writer
inserts one row every 10 ms into another table through `Engine.write_many`.
Foreground writes are sent on schedule even while earlier ones wait, and
each is timed from send until its commit is answered. Both variants must
leave the same `last_seen` values. JSON keys: single_wall_s, chunked_wall_s,
wall_ratio, single_fg_p99_ms, chunked_fg_p99_ms, chunked_fg_max_ms (a
contract), plus params and the individual runs.

`fts`: a catch-up into a table with an external-content FTS5 index, once
with the index's triggers live throughout (deferral disabled) and once inside
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

`fts-share`: the evidence for `fts_deferral.rebuild_share`, the share of a
table's rows changed during a deferral above which the restore rebuilds the
whole index instead of indexing only the changed rows. For each share s (by
default 0.2, 0.33, 0.5, 0.67, 0.8, 0.95) a base of (1 - s) * N rows (N =
--total, 250,000 by default) is built as for `fts` (b), then s * N new rows
are caught up into fresh copies of it the same way, once with
`rebuild_share: 0.0` (forcing a rebuild, which includes merging the index
into one segment) and once with `1.0` (forcing incremental). Only the
restore is timed: `last_restore.duration_ms` from `engine.fts.status()`,
whose mode must be the forced one. The same checks as `fts` run after each
restore, and both modes must answer the queries alike. JSON keys: points
(share, base_rows, new_rows, rebuild_s, incremental_s, plus faster and
ratio = rebuild_s / incremental_s), crossover_share (the smallest measured
share where rebuild_s <= 1.05 * incremental_s, or null), plus
rebuild_share_default, peak_rss_mb, params and the runs.

`sync`: N ndjson records (500,000 by default; seeded, split over 5 files
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

`mirror`: the MySQL mirror against a private MariaDB server the bench starts
in a temporary directory (tests/mariadb.py) and stops at the end, user and
database `bench` with a random password. The device's table `registry` (id,
org, name, body of 100-150 bytes, updated_at with microseconds, score) gets
N rows (1,000,000 by default) from a config without the mirror section, so
no outbox triggers fire while it is filled. Each case runs in its own
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

`replay`: `sqlwarden replay` over a made-up message log of a busy engine: N
records (1,000,000 by default; at least 20,000) from a seeded event
simulation of two engine runs (the second continues the seq), about 20,000
records a second of log time, rotated at 64 MB into messages.jsonl.3 ...
.1 and messages.jsonl. Mostly facade writer.execute asks, answered by a
Writer that takes asks in arrival order and joins foreground writes into
group commits; with them a source pumping writer.sync_batch asks (three
unanswered at most), a backfill of two tasks (one writer.chunk in flight,
progress saved at most once a second plus the terminal save), the mirror's
worker (a reconcile at boot, a verify halfway, outbox drains), status polls,
one FTS deferral and its restore, and a few failed writes. The log must pass
`--check` (untimed) before anything is timed. Two cases, each a fresh
interpreter timed from start to exit, peak RSS from wait4's ru_maxrss:
`summary` (`replay LOG --json`, which must count N records in seq 1..N, none
damaged) and `check` (`replay LOG --check --json`, which must exit 0 with no
violations). JSON keys: summary_msgs_s, check_msgs_s, peak_rss_mb (the
largest of the runs) (a contract; targets: both rates >= 100,000 msgs/s,
peak_rss_mb <= 100), plus the log, the mix, a 1,000-record baseline run and
the runs under `details`.
"""

from __future__ import annotations

# ruff: noqa: E402  (the driver loads before the other imports)
# isort: off
# First: the MySQL connector's C extension loads only before anything has loaded the
# system's OpenSSL (`hashlib` does, through `_hashlib`); see sqlwarden.mirror.driver.
from sqlwarden.mirror.driver import load_driver

load_driver()
# isort: on
import argparse
import hashlib
import heapq
import itertools
import json
import math
import os
import queue
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import apsw
import pykka

from sqlwarden.config import Config, FtsDeferralConfig, TaskConfig, parse_config
from sqlwarden.facade import Engine

#: The repository: `tests.mariadb` (the private MariaDB server) is imported from there.
ROOT = Path(__file__).resolve().parent.parent
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


def make_rows(count: int) -> list[tuple[Any, ...]]:
    return [(i, 1 + (i * 7919) % 5000, f"2025-01-01T{(i // 3600) % 24:02d}:"
             f"{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z", (i % 100000) / 100,
             UNITS[i % len(UNITS)]) for i in range(1, count + 1)]


def run_raw(workdir: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Raw apsw: executemany, one transaction per batch, SQLite's auto-checkpoint."""
    return _raw(workdir, rows, batch, tuned=False)


def run_raw_tuned(workdir: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Raw apsw with the engine's checkpoint policy (RESTART past the WAL threshold)."""
    return _raw(workdir, rows, batch, tuned=True)


def _raw(workdir: Path, rows: list[tuple[Any, ...]], batch: int, *, tuned: bool) -> float:
    path = workdir / "raw.db"
    config = parse_config(TABLE_YAML.format(path=path, log=workdir / "raw.jsonl"),
                          base_dir=workdir)
    # Same schema as the engine's: let a short-lived engine create it.
    with Engine(config):
        pass
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


def run_engine(workdir: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    """The engine: one `write_many` per batch, each waited for."""
    config = parse_config(TABLE_YAML.format(path=workdir / "engine.db",
                                            log=workdir / "engine.jsonl"), base_dir=workdir)
    with Engine(config) as engine:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            engine.write_many("observations", rows[start:start + batch])
        elapsed = time.perf_counter() - started
    return elapsed


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    rows = make_rows(args.rows)
    best: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    variants: dict[str, Callable[[Path, list[tuple[Any, ...]], int], float]] = {
        "raw": run_raw, "raw_tuned": run_raw_tuned, "engine": run_engine}
    for repeat in range(args.repeat):
        # Alternate the order so neither variant always runs on a warm cache.
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
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


def print_ingest(result: dict[str, Any]) -> None:
    print(f"bench ingest: {result['rows']:,} rows in batches of {result['batch_rows']:,}, "
          f"best of {result['repeat']}")
    print(f"{'variant':<10} {'rows/s':>12} {'seconds':>9}")
    for name, key in (("raw apsw", "raw_rows_s"), ("raw tuned", "raw_tuned_rows_s"),
                      ("engine", "engine_rows_s")):
        print(f"{name:<10} {result[key]:>12,.0f} {result['rows'] / result[key]:>9.2f}")
    print(f"ratio {result['ratio']:.3f} (target >= 0.8)   ratio vs tuned "
          f"{result['ratio_vs_tuned']:.3f}   peak RSS {result['peak_rss_mb']:.0f} MB")


# --- backfill ---------------------------------------------------------------------------

BACKFILL_YAML = """
database:
  path: {path}
tables:
  parent:
    columns:
      id: {{type: integer, primary_key: true}}
      name: text
      last_seen: text
  child:
    columns:
      id: {{type: integer, primary_key: true}}
      parent_id: {{type: integer, references: parent.id}}
      observed_at: text
    indexes:
      - [parent_id, observed_at]
  fg:
    columns:
      id: {{type: integer, primary_key: true}}
      at: text
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
LAST_SEEN = "(SELECT max(observed_at) FROM child WHERE child.parent_id = parent.id)"
STILL_TO_DO = ("last_seen IS NULL AND "
               "EXISTS (SELECT 1 FROM child WHERE child.parent_id = parent.id)")
SINGLE_UPDATE = f"UPDATE parent SET last_seen = {LAST_SEEN} WHERE {STILL_TO_DO}"
TASK_NAME = "last_seen"
#: Every fifth parent gets no child, so the EXISTS filter has rows to skip.
ORPHAN_EVERY = 5
FG_INTERVAL_S = 0.010
#: The chunked task must end well within this; a hang fails the bench instead.
TASK_TIMEOUT_S = 3600.0
BACKFILL_DIR = Path("var/bench")
FG_P99_TARGET_MS = 25.0
#: The task settings the bench runs by default. Measured on 1M parents, 2 CPUs: the
#: engine's defaults (50, 5) keep the foreground p99 near 17 ms but take 1.6x the
#: single UPDATE, as each of ~57 chunks then waits 5-6 ms; with no yield the Writer
#: still runs queued foreground writes before each chunk, and 10 ms chunks bound
#: their wait (p99 ~10 ms, 1.2x). Counting and verifying cost ~0.3x on their own.
TASK_DEFAULTS = {f.name: f.default for f in fields(TaskConfig)}
# The engine's defaults, so the bench measures what a user gets.
BACKFILL_TARGET_MS = TASK_DEFAULTS["target_ms"]
BACKFILL_YIELD_MS = TASK_DEFAULTS["yield_ms"]
WALL_RATIO_TARGET = 1.3


def backfill_config(path: Path) -> Config:
    path = path.resolve()
    return parse_config(BACKFILL_YAML.format(path=path), base_dir=path.parent)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def populate(path: Path, parents: int, children: int) -> None:
    """Build the base database: the engine makes the schema, raw apsw fills it."""
    remove_database(path)
    with Engine(backfill_config(path)):
        pass
    conn = apsw.Connection(str(path))
    conn.pragma("synchronous", "off")  # a bench fixture: rebuilt, never recovered
    conn.pragma("cache_size", -512 * 1024)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO parent (id, name, last_seen) VALUES (?, ?, NULL)",
                     ((i, f"parent {i}") for i in range(1, parents + 1)))
    conn.executemany("INSERT INTO child (id, parent_id, observed_at) VALUES (?, ?, ?)",
                     child_rows(parents, children))
    conn.execute("COMMIT")
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    conn.close()


def child_rows(parents: int, children: int) -> Iterator[tuple[int, int, str]]:
    """Children spread over the parents that are not orphans, in no key order."""
    per_block = ORPHAN_EVERY - 1
    with_children = parents // ORPHAN_EVERY * per_block + parents % ORPHAN_EVERY
    epoch = 1_735_689_600  # 2025-01-01T00:00:00Z
    for i in range(1, children + 1):
        k = (i * 2_654_435_761) % with_children
        parent_id = k // per_block * ORPHAN_EVERY + k % per_block + 1
        at = time.gmtime(epoch + (i * 104_729) % (90 * 86_400))
        yield i, parent_id, time.strftime("%Y-%m-%dT%H:%M:%SZ", at)


def last_seen_digest(path: Path) -> tuple[str, int]:
    """(sha256 over every parent's id and last_seen, rows with a last_seen)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    digest, filled = hashlib.sha256(), 0
    for parent_id, last_seen in conn.execute("SELECT id, last_seen FROM parent ORDER BY id"):
        digest.update(f"{parent_id}\t{last_seen}\n".encode())
        filled += last_seen is not None
    conn.close()
    return digest.hexdigest(), filled


#: A foreground write in flight: when it was sent, and the future its commit answers.
Sent = tuple[float, pykka.Future[Any]]


class _Threads:
    """Starts `_threads` on enter; on exit stops them and raises the first error they hit."""

    _threads: tuple[threading.Thread, ...]
    _stop: threading.Event
    _error: BaseException | None

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc is None:
            raise self._error


class ForegroundWriter(_Threads):
    """Inserts one row into `fg` every `interval_s` through the engine, timing each commit.

    Sends are open loop: a write goes out on schedule even while earlier ones
    wait behind a long transaction, so a stall shows in every write it holds
    up, not only in the first. A second thread takes the answers in order and
    notes when each arrived.
    """

    def __init__(self, engine: Engine, interval_s: float = FG_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._sent: queue.SimpleQueue[Sent | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = (threading.Thread(target=self._send, name="bench-fg-send"),
                         threading.Thread(target=self._collect, name="bench-fg-collect"))
        #: (sent at, latency), both in seconds on the perf_counter clock.
        self.samples: list[tuple[float, float]] = []

    def latencies_ms(self, start: float, end: float) -> list[float]:
        """Latencies of the writes sent between `start` and `end`."""
        return [latency * 1000 for sent, latency in self.samples if start <= sent <= end]

    def _send(self) -> None:
        due = time.perf_counter()
        try:
            while not self._stop.is_set():
                sent = time.perf_counter()
                future = self._engine.write_many("fg", [(f"{time.time():.3f}",)],
                                                 columns=("at",), wait=False)
                self._sent.put((sent, future))
                due += self._interval_s
                self._stop.wait(max(0.0, due - time.perf_counter()))
        except BaseException as exc:
            self._error = exc
        finally:
            self._sent.put(None)

    def _collect(self) -> None:
        while (item := self._sent.get()) is not None:
            sent, future = item
            try:
                future.get()
            except BaseException as exc:
                self._error = self._error or exc
            self.samples.append((sent, time.perf_counter() - sent))


@dataclass(frozen=True, slots=True, kw_only=True)
class BackfillRun:
    """One variant's run: its wall time, foreground latencies and result."""

    variant: str
    wall_s: float
    fg_ms: list[float]
    digest: str
    filled: int
    chunks: int | None = None

    def as_json(self, *, best: bool) -> dict[str, Any]:
        return {"variant": self.variant, "best": best, "wall_s": round(self.wall_s, 3),
                "fg_writes": len(self.fg_ms), "fg_p50_ms": round(percentile(self.fg_ms, 50), 2),
                "fg_p99_ms": round(percentile(self.fg_ms, 99), 2),
                "fg_max_ms": round(max(self.fg_ms, default=0.0), 2),
                "chunks": self.chunks, "filled": self.filled}


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def run_single(path: Path, args: argparse.Namespace) -> BackfillRun:
    """The whole change as one UPDATE, sent through `Engine.write`."""
    with Engine(backfill_config(path)) as engine, ForegroundWriter(engine) as fg:
        started = time.perf_counter()
        engine.write(SINGLE_UPDATE)
        ended = time.perf_counter()
    digest, filled = last_seen_digest(path)
    return BackfillRun(variant="single", wall_s=ended - started,
                       fg_ms=fg.latencies_ms(started, ended), digest=digest, filled=filled)


def run_chunked(path: Path, args: argparse.Namespace) -> BackfillRun:
    """The same change as a chunked task, from `tasks.start()` until `tasks.wait()` answers."""
    task = TaskConfig(name=TASK_NAME, table="parent", updates=(("last_seen", LAST_SEEN),),
                      where=STILL_TO_DO, target_ms=args.target_ms, yield_ms=args.yield_ms)
    with (Engine(backfill_config(path), tasks=[task], start_tasks=False) as engine,
          ForegroundWriter(engine) as fg):
        # The Backfill actor tells Progress once as a task starts, once per chunk and
        # once as it ends: counting those messages counts chunks without reaching in.
        events_before = engine.messages_sent("progress")
        started = time.perf_counter()
        engine.tasks.start()
        (view,) = engine.tasks.wait(TASK_NAME, timeout=TASK_TIMEOUT_S)
        ended = time.perf_counter()
        chunks = engine.messages_sent("progress") - events_before - 2
    if view.status != "done":
        raise RuntimeError(f"the backfill task ended {view.status}: {view.error}")
    digest, filled = last_seen_digest(path)
    return BackfillRun(variant="chunked", wall_s=ended - started,
                       fg_ms=fg.latencies_ms(started, ended), digest=digest, filled=filled,
                       chunks=chunks)


def bench_backfill(args: argparse.Namespace) -> dict[str, Any]:
    BACKFILL_DIR.mkdir(parents=True, exist_ok=True)
    base, work = BACKFILL_DIR / "backfill-base.db", BACKFILL_DIR / "backfill-run.db"
    started = time.perf_counter()
    populate(base, args.parents, args.children)
    populate_s = time.perf_counter() - started
    variants: dict[str, Callable[[Path, argparse.Namespace], BackfillRun]] = {
        "single": run_single, "chunked": run_chunked}
    runs: list[BackfillRun] = []
    for repeat in range(args.repeat):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            remove_database(work)
            shutil.copy(base, work)
            try:
                runs.append(variants[name](work, args))
            finally:
                remove_database(work)
    digests = {run.digest for run in runs}
    if len(digests) != 1:
        raise RuntimeError("the variants left different last_seen values: "
                           + ", ".join(f"{r.variant} {r.digest[:12]}" for r in runs))
    best = {name: min((r for r in runs if r.variant == name), key=lambda r: r.wall_s)
            for name in variants}
    single, chunked = best["single"], best["chunked"]
    return {
        "bench": "backfill",
        "single_wall_s": round(single.wall_s, 3),
        "chunked_wall_s": round(chunked.wall_s, 3),
        "wall_ratio": round(chunked.wall_s / single.wall_s, 3),
        "single_fg_p99_ms": round(percentile(single.fg_ms, 99), 2),
        "chunked_fg_p99_ms": round(percentile(chunked.fg_ms, 99), 2),
        "chunked_fg_max_ms": round(max(chunked.fg_ms, default=0.0), 2),
        "params": {"parents": args.parents, "children": args.children,
                   "orphans": args.parents - single.filled, "repeat": args.repeat,
                   "target_ms": args.target_ms, "yield_ms": args.yield_ms,
                   "chunks": chunked.chunks, "fg_interval_ms": FG_INTERVAL_S * 1000,
                   "populate_s": round(populate_s, 1), "digest": single.digest},
        "runs": [run.as_json(best=run is single or run is chunked) for run in runs],
        "sqlite_version": apsw.sqlite_lib_version(),
    }


def print_backfill(result: dict[str, Any]) -> None:
    params = result["params"]
    print(f"bench backfill: {params['parents']:,} parents ({params['orphans']:,} without "
          f"children), {params['children']:,} children; target_ms {params['target_ms']:g}, "
          f"yield_ms {params['yield_ms']:g}; best wall of {params['repeat']}, with the "
          "latencies of foreground writes sent during that same run")
    best = {run["variant"]: run for run in result["runs"] if run["best"]}
    print(f"{'variant':<8} {'wall s':>8} {'fg p50 ms':>10} {'fg p99 ms':>10} {'fg max ms':>10} "
          f"{'fg writes':>10} {'chunks':>7}")
    for name in ("single", "chunked"):
        run = best[name]
        chunks = "" if run["chunks"] is None else f"{run['chunks']:,}"
        print(f"{name:<8} {run['wall_s']:>8.2f} {run['fg_p50_ms']:>10.1f} "
              f"{run['fg_p99_ms']:>10.1f} {run['fg_max_ms']:>10.1f} {run['fg_writes']:>10,} "
              f"{chunks:>7}")
    ratio, p99 = result["wall_ratio"], result["chunked_fg_p99_ms"]
    print(f"wall ratio {ratio:.3f} (target <= {WALL_RATIO_TARGET}: "
          f"{'met' if ratio <= WALL_RATIO_TARGET else 'NOT met'})   chunked fg p99 {p99:.1f} ms "
          f"(target <= {FG_P99_TARGET_MS:g}: {'met' if p99 <= FG_P99_TARGET_MS else 'NOT met'})")


# --- fts ----------------------------------------------------------------------------------

FTS_YAML = """
database:
  path: {path}
tables:
  docs:
    columns:
      id: {{type: integer, primary_key: true}}
      title: {{type: text, not_null: true}}
      body: text
    fts:
      columns: [title, body]
fts_deferral:
  enabled: {deferral}{deferral_options}
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
FTS_TABLE = "docs"
FTS_INDEX = "docs_fts"
FTS_TRIGGERS = ("docs_fts_ai", "docs_fts_ad", "docs_fts_au")
FTS_COLUMNS = ("id", "title", "body")
#: The name every catch-up is announced under.
FTS_SOURCE = "bench"
#: Write batches sent and not yet answered, at most.
FTS_IN_FLIGHT = 4
VOCABULARY_SIZE = 20_000
TITLE_WORDS = 8
BODY_WORDS = 40
#: Rows drawn per `random.choices` call; part of what makes the text (keep it fixed).
DRAW_ROWS = 1_000
SYLLABLES = tuple(c + v for c in "bdfghjklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai",
                                                               "ou"))
VOCABULARY_SEED = 1
LARGE_SEED = 2
BASE_SEED = 3
SMALL_SEED = 4
LARGE_SPEEDUP_TARGET = 3.5
SMALL_RATIO_TARGET = 1.1


def bench_fail(bench: str, message: str) -> SystemExit:
    """Ends the bench with exit status 1 and `message` (raise what this returns)."""
    return SystemExit(f"bench {bench}: FAILED: {message}")


def fts_fail(message: str) -> SystemExit:
    return bench_fail("fts", message)


class Corpus:
    """Deterministic made-up text: a vocabulary built from syllables, words drawn Zipf-like
    (the word of rank r with weight 1/r), 8 to a title and 40 to a body."""

    def __init__(self, seed: int = VOCABULARY_SEED, size: int = VOCABULARY_SIZE) -> None:
        rng = random.Random(seed)
        words: dict[str, None] = {}
        while len(words) < size:
            words.setdefault("".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))), None)
        #: By rank: words[0] is the most common.
        self.words = list(words)
        self.cum_weights = list(itertools.accumulate(1 / rank for rank in range(1, size + 1)))

    def rows(self, seed: int, first_id: int, count: int) -> Iterator[tuple[int, str, str]]:
        """`count` rows (id, title, body) with ids from `first_id`; the same for the same seed."""
        rng = random.Random(seed)
        per_row = TITLE_WORDS + BODY_WORDS
        for start in range(0, count, DRAW_ROWS):
            n = min(DRAW_ROWS, count - start)
            drawn = rng.choices(self.words, cum_weights=self.cum_weights, k=n * per_row)
            for i in range(n):
                words = drawn[i * per_row:(i + 1) * per_row]
                yield (first_id + start + i, " ".join(words[:TITLE_WORDS]),
                       " ".join(words[TITLE_WORDS:]))


def fts_config(path: Path, *, deferral: bool, rebuild_share: float | None = None) -> Config:
    """The `docs` table with its FTS index; `rebuild_share`, when given, is set in
    `fts_deferral` (otherwise the engine's default applies)."""
    path = path.resolve()
    options = "" if rebuild_share is None else f"\n  rebuild_share: {rebuild_share!r}"
    return parse_config(FTS_YAML.format(path=path, deferral=str(deferral).lower(),
                                        deferral_options=options), base_dir=path.parent)


def send_rows(engine: Engine, rows: Iterable[tuple[int, str, str]], batch: int) -> int:
    """`write_many(wait=False)` per batch, at most `FTS_IN_FLIGHT` unanswered; returns once
    every batch is committed. Returns the rows sent."""
    in_flight: deque[pykka.Future[Any]] = deque()
    sent = 0
    it = iter(rows)
    while chunk := list(itertools.islice(it, batch)):
        if len(in_flight) >= FTS_IN_FLIGHT:
            in_flight.popleft().get()
        in_flight.append(engine.write_many(FTS_TABLE, chunk, columns=FTS_COLUMNS, wait=False))
        sent += len(chunk)
    while in_flight:
        in_flight.popleft().get()
    return sent


#: A match expression, and a rowid that must be among its hits (or None).
FtsQuery = tuple[str, int | None]
#: Per query: the expression, how many rowids it matched, sha256 over them in order.
Fingerprint = tuple[tuple[str, int, str], ...]


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
        triggers = {name for name, in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
            (FTS_TABLE,))}
        if triggers != set(FTS_TRIGGERS):
            raise fts_fail(f"{path.name}: triggers on {FTS_TABLE} are {sorted(triggers)}, "
                           f"expected {list(FTS_TRIGGERS)}")
        (count,), = conn.execute(f"SELECT count(*) FROM {FTS_TABLE}")
        if count != table_rows:
            raise fts_fail(f"{path.name}: {FTS_TABLE} holds {count:,} rows, expected "
                           f"{table_rows:,}")
        out = []
        for expr, must_find in queries:
            hits = [rowid for rowid, in conn.execute(
                f"SELECT rowid FROM {FTS_INDEX} WHERE {FTS_INDEX} MATCH ? ORDER BY rowid",
                (expr,))]
            if must_find is not None and must_find not in hits:
                raise fts_fail(f"{path.name}: {expr} does not find row {must_find}")
            digest = hashlib.sha256(",".join(map(str, hits)).encode()).hexdigest()
            out.append((expr, len(hits), digest))
        try:
            conn.execute(f"INSERT INTO {FTS_INDEX} ({FTS_INDEX}, rank) "
                         "VALUES ('integrity-check', 1)")
        except apsw.Error as exc:
            raise fts_fail(f"{path.name}: integrity-check: {exc}") from exc
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
        result = view.last_restore
        if result is None:
            raise fts_fail(f"{case} deferred: no restore was recorded")
        restore = {"duration_ms": round(result.duration_ms, 1),
                   "tables": [{"fts": t.fts, "mode": t.mode, "changed_rows": t.changed_rows,
                               "table_rows": t.table_rows} for t in result.tables]}
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


def bench_fts(args: argparse.Namespace) -> dict[str, Any]:
    return in_workdir(args, _bench_fts)


def in_workdir(args: argparse.Namespace,
               bench: Callable[[argparse.Namespace, Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `bench` in `--workdir` (kept) or else in a temporary directory (removed)."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="sqlwarden-bench-") as tmp:
        return bench(args, Path(tmp))


def _bench_fts(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    corpus = Corpus()
    variants = ("live", "deferred")
    runs: list[FtsRun] = []
    run_path = workdir / "fts-run.db"

    def each(case: str, run: Callable[[str], FtsRun]) -> None:
        for repeat in range(args.repeat):
            # Alternate the order so neither variant always runs on a warm cache.
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
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
        remove_database(run_path)
        shutil.copyfile(base, run_path)
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


def print_fts(result: dict[str, Any]) -> None:
    params = result["params"]
    print(f"bench fts: (a) {params['large_rows']:,} rows into an empty table, (b) "
          f"{params['small_rows']:,} rows into one holding {params['base_rows']:,}; batches of "
          f"{params['batch_rows']:,}, {params['in_flight']} in flight; best of {params['repeat']}")
    best = {(run["case"], run["variant"]): run for run in result["runs"] if run["best"]}
    print(f"{'case':<9} {'variant':<9} {'seconds':>9} {'rows/s':>10}  restore")
    for case, label in (("large", "(a) large"), ("small", "(b) small")):
        for variant in ("live", "deferred"):
            run = best[case, variant]
            restore = ""
            if run["restore"] is not None:
                restore = ", ".join(
                    f"{t['mode']} ({t['changed_rows']:,} of {t['table_rows']:,} rows)"
                    for t in run["restore"]["tables"])
                restore += f" in {run['restore']['duration_ms'] / 1000:.2f} s"
            print(f"{label:<9} {variant:<9} {run['seconds']:>9.2f} {run['rows_s']:>10,.0f}  "
                  f"{restore}")
    speedup, ratio = result["large_speedup"], result["small_ratio"]
    print(f"large speedup {speedup:.3f} (target >= {LARGE_SPEEDUP_TARGET}: "
          f"{'met' if speedup >= LARGE_SPEEDUP_TARGET else 'NOT met'})   small ratio "
          f"{ratio:.3f} (target <= {SMALL_RATIO_TARGET}: "
          f"{'met' if ratio <= SMALL_RATIO_TARGET else 'NOT met'})   peak RSS "
          f"{result['peak_rss_mb']:.0f} MB")
    print(f"checks: {params['queries']} queries gave the same rowids live and deferred, "
          "integrity-check passed on every run")


# --- fts-share ----------------------------------------------------------------------------

#: The shares of the table changed during the deferral, measured by default.
FTS_SHARES = (0.2, 1 / 3, 0.5, 2 / 3, 0.8, 0.95)
#: Rows in the table after each catch-up, by default (base rows + new rows).
FTS_SHARE_TOTAL = 250_000
#: The variants: each forces its restore mode through `fts_deferral.rebuild_share`.
FTS_SHARE_MODES = {"rebuild": 0.0, "incremental": 1.0}
#: The crossover is the first share at which rebuild_s <= incremental_s * this.
CROSSOVER_TOLERANCE = 1.05
FTS_DEFERRAL_DEFAULTS = FtsDeferralConfig()


def share_points(total: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """(base rows, new rows) per share: `total` rows after the catch-up, `share` of them new."""
    points = []
    for share in shares:
        new_rows = round(total * share)
        points.append((total - new_rows, new_rows))
    return points


def bench_fts_share(args: argparse.Namespace) -> dict[str, Any]:
    return in_workdir(args, _bench_fts_share)


def _bench_fts_share(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
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
                # Alternate the order so neither mode always runs on a warm cache.
                for mode in modes if (index + repeat) % 2 == 0 else modes[::-1]:
                    remove_database(run_path)
                    shutil.copyfile(base, run_path)
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


def print_fts_share(result: dict[str, Any]) -> None:
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


def parse_shares(text: str) -> tuple[float, ...]:
    """`--shares`: comma-separated shares, each above 0 and below 1."""
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not shares or not all(0 < share < 1 for share in shares):
        raise argparse.ArgumentTypeError(f"each share must be above 0 and below 1: {text!r}")
    return shares


# --- sync ---------------------------------------------------------------------------------

SYNC_YAML = """
database:
  path: {path}
tables:
  docs:
    columns:
      id: {{type: integer, primary_key: true}}
      title: {{type: text, not_null: true}}
      body: text
      score: real
      updated: {{type: timestamp, not_null: true}}
    indexes:
      - [updated]{fts}{sources}
message_log:
  path: {log}
status: {{enabled: false}}
"""
SYNC_FTS_YAML = """
    fts:
      columns: [title, body]"""
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
EQUIPMENT = ("pump", "valve", "tank", "meter", "well", "pumphouse", "sensor", "gate")
SYNC_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
SYNC_STEP_S = 12
#: The sync run must end within this; a hang fails the bench instead.
SYNC_TIMEOUT_S = 3600.0
VS_NAIVE_TARGET = 2.0
VS_LIMIT_TARGET = 0.5
SYNC_RSS_TARGET_MB = 200.0


def sync_fail(message: str) -> SystemExit:
    return bench_fail("sync", message)


def sync_config(path: Path, *, fts: bool, data: Path | None = None, batch: int = 0) -> Config:
    """The `docs` table, with its FTS index when `fts`; with the ndjson source over `data`
    (`batch` rows per transaction) when given. FTS deferral is at the engine's defaults."""
    path = path.resolve()
    sources = ("" if data is None
               else SYNC_SOURCE_YAML.format(name=SYNC_SOURCE, data=data.resolve(), batch=batch))
    return parse_config(SYNC_YAML.format(path=path, log=path.with_suffix(".jsonl"),
                                         fts=SYNC_FTS_YAML if fts else "", sources=sources),
                        base_dir=path.parent)


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
        with (data / f"part-{index:03d}.ndjson").open("w", encoding="utf-8") as out:
            for start in range(first, last + 1, DRAW_ROWS):
                n = min(DRAW_ROWS, last + 1 - start)
                drawn = rng.choices(corpus.words, cum_weights=corpus.cum_weights,
                                    k=n * SYNC_BODY_WORDS)
                lines = []
                for i in range(n):
                    record_id = start + i
                    at = time.gmtime(SYNC_EPOCH + record_id * SYNC_STEP_S)
                    lines.append(json.dumps({
                        "id": record_id,
                        "title": f"site {rng.randint(1, SYNC_SITES)} {rng.choice(EQUIPMENT)}",
                        "body": " ".join(drawn[i * SYNC_BODY_WORDS:(i + 1) * SYNC_BODY_WORDS]),
                        "score": round(rng.uniform(0, 100), 3),
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", at),
                    }, separators=(",", ":")))
                out.write("\n".join(lines) + "\n")
                written += n
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


def vm_hwm_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def sync_case(args: argparse.Namespace) -> dict[str, Any]:
    """One case, run in its own subprocess (`_sync_case`); its result goes to `--out`."""
    if args.case == "sync":
        result = sync_case_sync(args.db, args.data, args.rows, args.batch)
    else:
        result = sync_case_naive(args.db, args.data, args.rows, fts=args.case == "naive")
    result.update(case=args.case, rows_s=round(args.rows / result["seconds"], 1),
                  peak_rss_mb=round(vm_hwm_mb(), 1))
    args.out.write_text(json.dumps(result) + "\n")
    return result


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
        restore = {"duration_ms": round(after.last_restore.duration_ms, 1),
                   "tables": [{"fts": t.fts, "mode": t.mode, "changed_rows": t.changed_rows,
                               "table_rows": t.table_rows} for t in after.last_restore.tables]}
    return {"seconds": seconds, "rows": run.rows, "mode": run.mode, "note": run.note,
            "fts_lease": lease, "fts_state": None if after is None else after.state,
            "restore": restore}


def sync_case_naive(db: Path, data: Path, rows: int, *, fts: bool) -> dict[str, Any]:
    """The loop a user writes: `json.loads` per line, `executemany` per 1,000 rows, one
    transaction each, into the schema the engine made (with or without its FTS index)."""
    remove_database(db)
    with Engine(sync_config(db, fts=fts)):
        pass
    conn = apsw.Connection(str(db))
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "normal")
    sql = f"INSERT INTO docs ({', '.join(SYNC_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
    written = 0
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        batch.clear()

    started = time.perf_counter()
    for path in sync_files(data):
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                batch.append((record["id"], record["title"], record["body"], record["score"],
                              record["updated"]))
                if len(batch) >= NAIVE_BATCH:
                    written += len(batch)
                    flush()
    if batch:
        written += len(batch)
        flush()
    seconds = time.perf_counter() - started
    conn.close()
    if written != rows:
        raise sync_fail(f"the {'naive' if fts else 'limit'} loop read {written:,} records, "
                        f"expected {rows:,}")
    return {"seconds": seconds, "rows": written}


def run_sync_case(case: str, db: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh Python process and return what it reported."""
    out = db.with_suffix(".result.json")
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "_sync_case", case,
               "--db", str(db), "--data", str(data), "--rows", str(args.rows),
               "--batch", str(args.batch), "--out", str(out)]
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not out.exists():
        raise sync_fail(f"the {case} case exited with status {done.returncode} (its output "
                        "is above)")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


def sync_fingerprint(conn: apsw.Connection, queries: list[str]) -> Fingerprint:
    """Per query: how many rowids it matched and sha256 over them in order."""
    out = []
    for expr in queries:
        hits = [rowid for rowid, in conn.execute(
            f"SELECT rowid FROM {FTS_INDEX} WHERE {FTS_INDEX} MATCH ? ORDER BY rowid", (expr,))]
        out.append((expr, len(hits), hashlib.sha256(",".join(map(str, hits)).encode())
                    .hexdigest()))
    return tuple(out)


def check_sync(dbs: dict[str, Path], rows: int, queries: list[str]) -> dict[str, Any]:
    """Every database holds `rows` rows; the sync database has its FTS triggers back,
    answers every query as the naive one does (with at least one hit each) and passes
    FTS5's integrity-check."""
    started = time.perf_counter()
    fingerprints: dict[str, Fingerprint] = {}
    for case, path in dbs.items():
        conn = apsw.Connection(str(path))
        try:
            (count,), = conn.execute(f"SELECT count(*) FROM {FTS_TABLE}")
            if count != rows:
                raise sync_fail(f"the {case} database holds {count:,} rows in {FTS_TABLE}, "
                                f"expected {rows:,}")
            if case == "limit":
                continue
            triggers = {name for name, in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                (FTS_TABLE,))}
            if triggers != set(FTS_TRIGGERS):
                raise sync_fail(f"the {case} database's triggers on {FTS_TABLE} are "
                                f"{sorted(triggers)}, expected {list(FTS_TRIGGERS)}")
            fingerprints[case] = sync_fingerprint(conn, queries)
            if case == "sync":
                try:
                    conn.execute(f"INSERT INTO {FTS_INDEX} ({FTS_INDEX}, rank) "
                                 "VALUES ('integrity-check', 1)")
                except apsw.Error as exc:
                    raise sync_fail(f"integrity-check on the sync database: {exc}") from exc
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


def bench_sync(args: argparse.Namespace) -> dict[str, Any]:
    return in_workdir(args, _bench_sync)


def _bench_sync(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    corpus = Corpus()
    data = workdir / "sync-data"
    data_info = write_ndjson(data, corpus, args.rows, args.files)
    queries = sync_queries(corpus)
    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for repeat in range(args.repeat):
        dbs = {case: workdir / f"sync-{case}.db" for case in SYNC_CASES}
        try:
            # Alternate the order so no case always runs on a warm cache.
            for case in SYNC_CASES if repeat % 2 == 0 else SYNC_CASES[::-1]:
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
    best = {case: max((r for r in runs if r["case"] == case), key=lambda r: r["rows_s"])
            for case in SYNC_CASES}
    for run in runs:
        run["best"] = any(run is b for b in best.values())
        run["seconds"] = round(run["seconds"], 3)
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


def print_sync(result: dict[str, Any]) -> None:
    params = result["params"]
    print(f"bench sync: {params['rows']:,} ndjson records in {params['files']} files "
          f"({params['data']['mb']:.0f} MB) into docs with an FTS5 index on [title, body]; "
          f"sync batches of {params['batch_rows']:,}, naive and limit "
          f"{params['naive_batch_rows']:,} per transaction; each case in its own process, "
          f"best of {params['repeat']}")
    best = {run["case"]: run for run in result["runs"] if run["best"]}
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
        fts += ", restored by " + ", ".join(
            f"{t['mode']} ({t['changed_rows']:,} of {t['table_rows']:,} rows)"
            for t in restore["tables"]) + f" in {restore['duration_ms'] / 1000:.2f} s"
    print(f"sync run: mode {sync_run['mode']}, {fts}")

    def target(value: float, ok: bool, text: str) -> str:
        return f"{value:.3f} (target {text}: {'met' if ok else 'NOT met'})"

    vs_naive, vs_limit, rss = result["vs_naive"], result["vs_limit"], result["peak_rss_mb"]
    print(f"vs naive {target(vs_naive, vs_naive >= VS_NAIVE_TARGET, f'>= {VS_NAIVE_TARGET}')}"
          f"   vs limit {target(vs_limit, vs_limit >= VS_LIMIT_TARGET, f'>= {VS_LIMIT_TARGET}')}"
          f"   peak RSS {rss:.0f} MB (target <= {SYNC_RSS_TARGET_MB:.0f}: "
          f"{'met' if rss <= SYNC_RSS_TARGET_MB else 'NOT met'})")
    print(f"checks: {params['rows']:,} rows in every database, {params['queries']} queries gave "
          "the same rowids on the sync and naive databases, integrity-check passed on the sync "
          "database")


# --- mirror -------------------------------------------------------------------------------

MIRROR_YAML = """
database:
  path: {path}
tables:
  registry:
    columns:
      id: {{type: integer, primary_key: true}}
      org: text
      name: text
      body: text
      updated_at: timestamp
      score: real{mirror}
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
MIRROR_SECTION_YAML = """
mirror:
  dsn: {dsn}
  scope: {scope}
  batch_rows: {batch}
  range_rows: {range_rows}
  poll_ms: {poll_ms}"""
MIRROR_TABLE = "registry"
MIRROR_COLUMNS = ("id", "org", "name", "body", "updated_at", "score")
MIRROR_SCOPE = "bench-device"
MIRROR_BATCH = 1_000
MIRROR_RANGE_ROWS = 10_000
MIRROR_POLL_MS = 100
#: The database and user the mirror writes to; the raw loop writes to `RAW_TABLE` there,
#: the peer to its own database (it names its table after SQLite's).
MIRROR_DATABASE = "bench"
MIRROR_USER = "bench"
RAW_TABLE = "registry_raw"
PEER_DATABASE = "bench_peer"
MIRROR_CASES = ("engine", "raw", "peer")
#: Rows per executemany and per commit in the raw loop, and per chunk for the peer.
RAW_BATCH = 1_000
PEER_ROWS = 200_000
PEER_PACKAGE = "sqlite3-to-mysql"
PEER_COMMAND = "sqlite3mysql"
MIRROR_SEED = 6
INGEST_SEED = 7
MIRROR_BODY_WORDS = 24
MIRROR_BODY_BYTES = (100, 150)
MIRROR_ORGS = 40
#: The share of rows without a score.
SCORE_NULL_SHARE = 0.02
#: Steady ingest: `INGEST_TICK_ROWS` rows per upsert, one every `INGEST_TICK_S` (2,000
#: rows/s), `INGEST_TICK_UPDATES` of them existing ids, the rest new ones.
INGEST_TICK_ROWS = 100
INGEST_TICK_S = 0.05
INGEST_TICK_UPDATES = 20
#: Upserts sent and not yet answered, at most (2 s of writes): sends stay on schedule.
INGEST_IN_FLIGHT = 40
LAG_SAMPLE_S = 1.0
#: The probe polls the mirror this often for the row it wrote.
PROBE_POLL_S = 0.005
PROBE_TIMEOUT_S = 60.0
MIRROR_TIMEOUT_S = 3600.0
DRAIN_TIMEOUT_S = 600.0
VS_RAW_TARGET = 0.7
INSYNC_TARGET = 0.05
MIRROR_RSS_TARGET_MB = 150.0


def mirror_fail(message: str) -> SystemExit:
    return bench_fail("mirror", message)


def mirror_config(path: Path, dsn: str | None = None) -> Config:
    """The `registry` table; mirrored to `dsn` when given (its password comes from
    $SW_MYSQL_PASSWORD when the config is parsed)."""
    path = path.resolve()
    mirror = "" if dsn is None else MIRROR_SECTION_YAML.format(
        dsn=dsn, scope=MIRROR_SCOPE, batch=MIRROR_BATCH, range_rows=MIRROR_RANGE_ROWS,
        poll_ms=MIRROR_POLL_MS)
    return parse_config(MIRROR_YAML.format(path=path, mirror=mirror), base_dir=path.parent)


def iso_micro(at: float) -> str:
    """`at` (Unix seconds) as ISO-8601 UTC text with microseconds."""
    whole = int(at)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{int((at - whole) * 1_000_000):06d}Z")


def registry_row(rng: random.Random, row_id: int, words: Sequence[str],
                 at: float) -> tuple[Any, ...]:
    """(id, org, name, body, updated_at, score): a body of 100 to 150 bytes cut from
    `words`, `at` with microseconds, a score with a full double's digits (or NULL)."""
    return (row_id, f"org-{rng.randrange(MIRROR_ORGS):02d}", f"{rng.choice(EQUIPMENT)} {row_id}",
            " ".join(words)[:rng.randint(*MIRROR_BODY_BYTES)], iso_micro(at),
            None if rng.random() < SCORE_NULL_SHARE else rng.uniform(-50.0, 1_000.0))


def registry_rows(corpus: Corpus, count: int) -> Iterator[tuple[Any, ...]]:
    """Rows with ids 1..count, 12 s apart from 2026-01-01; the same every time."""
    rng = random.Random(MIRROR_SEED)
    width = MIRROR_BODY_WORDS
    for start in range(0, count, DRAW_ROWS):
        n = min(DRAW_ROWS, count - start)
        drawn = rng.choices(corpus.words, cum_weights=corpus.cum_weights, k=n * width)
        for i in range(n):
            row_id = start + i + 1
            yield registry_row(rng, row_id, drawn[i * width:(i + 1) * width],
                               SYNC_EPOCH + row_id * SYNC_STEP_S + rng.random())


def build_mirror_base(path: Path, rows: int) -> dict[str, Any]:
    """The device's database: the engine makes the schema from a config without the mirror
    section (so no outbox triggers and no outbox rows), raw apsw fills it in one
    transaction, then it is checkpointed and closed."""
    remove_database(path)
    started = time.perf_counter()
    with Engine(mirror_config(path)):
        pass
    conn = apsw.Connection(str(path))
    conn.pragma("synchronous", "off")  # a bench fixture: rebuilt, never recovered
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO {MIRROR_TABLE} ({', '.join(MIRROR_COLUMNS)}) "
                     "VALUES (?, ?, ?, ?, ?, ?)", registry_rows(Corpus(), rows))
    conn.execute("COMMIT")
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    (shortest, mean, longest, no_score), = conn.execute(
        f"SELECT min(length(body)), avg(length(body)), max(length(body)), "
        f"sum(score IS NULL) FROM {MIRROR_TABLE}")
    conn.close()
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 1),
            "mb": round(path.stat().st_size / 1024 / 1024, 1),
            "body_bytes": {"min": shortest, "mean": round(mean, 1), "max": longest},
            "null_scores": no_score}


def build_peer_db(base: Path, path: Path, rows: int) -> None:
    """A fresh SQLite file holding only the table (as the engine declared it) and its
    first `rows` rows by id: what the peer tool copies."""
    remove_database(path)
    conn = apsw.Connection(str(path))
    try:
        conn.execute("ATTACH ? AS base", (str(base),))
        (sql,), = conn.execute("SELECT sql FROM base.sqlite_master WHERE type = 'table' "
                               "AND name = ?", (MIRROR_TABLE,))
        conn.execute(sql)
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO main.{MIRROR_TABLE} SELECT * FROM base.{MIRROR_TABLE} "
                     "ORDER BY id LIMIT ?", (rows,))
        conn.execute("COMMIT")
        conn.execute("DETACH base")
    finally:
        conn.close()


def bench_mysql(config: Config, *, autocommit: bool) -> Any:
    """A plain mysql.connector connection to the mirror's database, as user code opens it
    (the C extension where there is one: `engine` was imported first)."""
    import mysql.connector

    assert config.mirror is not None
    dsn = config.mirror.dsn
    return mysql.connector.connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                   password=dsn.password, database=dsn.database,
                                   charset="utf8mb4", collation="utf8mb4_bin",
                                   autocommit=autocommit)


def mirror_totals(config: Config, table: str = MIRROR_TABLE) -> tuple[int, int]:
    """(rows, sum of sw_digest) of this scope's rows in `table` on the server."""
    conn = bench_mysql(config, autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT COUNT(*), COALESCE(SUM(sw_digest), 0) FROM `{table}` "
                       "WHERE sw_scope = %s", (MIRROR_SCOPE,))
        (count, digest), = cursor.fetchall()
        cursor.close()
    finally:
        conn.close()
    return int(count), int(digest)


def sqlite_rows(engine: Engine) -> int:
    with engine.read() as conn:
        (count,), = conn.execute(f"SELECT count(*) FROM {MIRROR_TABLE}")
    return int(count)


def table_check_dict(view: Any) -> dict[str, Any]:
    """The one table's TableCheck of a ReconcileView, as JSON."""
    (table,) = view.tables
    return {"number": view.number, "seconds": view.seconds, "sqlite_rows": table.sqlite_rows,
            "mirror_rows": table.mirror_rows, "ranges": table.ranges,
            "differing": table.differing, "copied": table.copied, "deleted": table.deleted,
            "skipped": table.skipped, "sqlite_read": table.sqlite_read}


class LagProbe(_Threads):
    """Once a second, upserts one row of its own (negative ids, so never one the ingest
    writes) and polls the server every 5 ms until the mirror has it: the lag from
    sending the write until the row can be read on the server, measured outside the
    engine. A second thread samples `engine.mirror.view()` once a second."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self._engine = engine
        self._config = config
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = (threading.Thread(target=self._probe, name="bench-lag-probe"),
                         threading.Thread(target=self._sample, name="bench-lag-sample"))
        self._started = time.perf_counter()
        #: Lags measured by the probe, in ms.
        self.probe_ms: list[float] = []
        #: (seconds since start, lag_p99_ms, lag_max_ms, drained_changes) per view sample.
        self.samples: list[tuple[float, float | None, float | None, int]] = []

    def sample(self) -> None:
        view = self._engine.mirror.view()
        self.samples.append((round(time.perf_counter() - self._started, 2), view.lag_p99_ms,
                             view.lag_max_ms, view.drained_changes))

    def _sample(self) -> None:
        try:
            while not self._stop.wait(LAG_SAMPLE_S):
                self.sample()
        except BaseException as exc:
            self._error = self._error or exc

    def _probe(self) -> None:
        rng = random.Random(INGEST_SEED + 1)
        words = ["probe"] * MIRROR_BODY_WORDS
        conn = bench_mysql(self._config, autocommit=True)
        try:
            cursor = conn.cursor()
            probe_id = 0
            while not self._stop.wait(LAG_SAMPLE_S):
                probe_id -= 1
                row = registry_row(rng, probe_id, words, time.time())
                sent = time.perf_counter()
                self._engine.upsert(MIRROR_TABLE, [row], wait=False)
                while True:
                    cursor.execute(f"SELECT 1 FROM `{MIRROR_TABLE}` WHERE sw_scope = %s AND "
                                   "id = %s", (MIRROR_SCOPE, probe_id))
                    if cursor.fetchall():
                        break
                    if time.perf_counter() - sent > PROBE_TIMEOUT_S:
                        raise mirror_fail(f"probe row {probe_id} was not in the mirror "
                                          f"{PROBE_TIMEOUT_S:.0f} s after it was written")
                    time.sleep(PROBE_POLL_S)
                self.probe_ms.append((time.perf_counter() - sent) * 1000)
            cursor.close()
        except BaseException as exc:
            self._error = self._error or exc
        finally:
            conn.close()


def steady_ingest(engine: Engine, config: Config, first_id: int,
                  seconds: float) -> dict[str, Any]:
    """`INGEST_TICK_ROWS` rows every `INGEST_TICK_S` through `engine.upsert(wait=False)`
    for `seconds`, on a monotonic schedule (sends stay on time while earlier writes
    wait), new ids and updates of old ones; then waits until the outbox is empty."""
    corpus = Corpus()
    rng = random.Random(INGEST_SEED)
    width = MIRROR_BODY_WORDS
    ticks = max(1, round(seconds / INGEST_TICK_S))
    next_id = first_id
    in_flight: deque[pykka.Future[Any]] = deque()
    new_rows = updates = 0
    with LagProbe(engine, config) as probe:
        started = time.perf_counter()
        for tick in range(ticks):
            time.sleep(max(0.0, started + tick * INGEST_TICK_S - time.perf_counter()))
            drawn = rng.choices(corpus.words, cum_weights=corpus.cum_weights,
                                k=INGEST_TICK_ROWS * width)
            now = time.time()
            rows = []
            for i in range(INGEST_TICK_ROWS):
                if i < INGEST_TICK_UPDATES:
                    row_id = rng.randrange(1, next_id)
                    updates += 1
                else:
                    row_id, next_id = next_id, next_id + 1
                    new_rows += 1
                rows.append(registry_row(rng, row_id, drawn[i * width:(i + 1) * width], now))
            in_flight.append(engine.upsert(MIRROR_TABLE, rows, wait=False))
            while len(in_flight) > INGEST_IN_FLIGHT:
                in_flight.popleft().get()
        while in_flight:
            in_flight.popleft().get()
        written = time.perf_counter()
        while True:
            outbox = engine.status()["mirror"]["outbox"]
            if "error" in outbox:
                raise mirror_fail(f"the outbox depth could not be read: {outbox['error']}")
            if outbox["depth"] == 0:
                break
            if time.perf_counter() - written > DRAIN_TIMEOUT_S:
                raise mirror_fail(f"the outbox still held {outbox['depth']:,} changes "
                                  f"{DRAIN_TIMEOUT_S:.0f} s after the last write")
            time.sleep(0.02)
        drained = time.perf_counter()
        # The worker tells its actor about a batch after the Writer deleted its outbox
        # rows: give that last message a moment before the final sample.
        time.sleep(2 * MIRROR_POLL_MS / 1000)
        probe.sample()
    p99s = [p99 for _, p99, _, _ in probe.samples if p99 is not None]
    maxes = [most for _, _, most, _ in probe.samples if most is not None]
    if not p99s:
        raise mirror_fail("the mirror reported no drain during the steady ingest")
    sent = new_rows + updates
    # The last write goes out one tick before the schedule's end.
    elapsed = max(written - started, ticks * INGEST_TICK_S)
    return {
        "seconds": round(elapsed, 3), "ticks": ticks, "rows_sent": sent,
        "new_rows": new_rows, "updates": updates, "rows_s": round(sent / elapsed, 1),
        "drain_after_s": round(drained - written, 3),
        "lag_p99_ms_max": max(p99s), "lag_p99_ms_last": p99s[-1],
        "lag_max_ms": max(maxes, default=None), "lag_samples": len(p99s),
        "drained_changes": probe.samples[-1][3],
        "probe": {"count": len(probe.probe_ms),
                  "p50_ms": round(percentile(probe.probe_ms, 50), 1),
                  "p99_ms": round(percentile(probe.probe_ms, 99), 1),
                  "max_ms": round(max(probe.probe_ms, default=0.0), 1)},
        "samples": [list(s) for s in probe.samples],
        "next_id": next_id,
    }


def mirror_case_engine(db: Path, dsn: str, rows: int, ingest_s: float) -> dict[str, Any]:
    """(a) cold reconcile into an empty mirror, (b) restart with the mirror in sync,
    (c) steady ingest with the live drain, all in this process."""
    config = mirror_config(db, dsn)
    # (a) The first connect runs the reconcile; reconcile() joins it.
    started = time.perf_counter()
    with Engine(config) as engine:
        cold = engine.mirror.reconcile(timeout=MIRROR_TIMEOUT_S)
        cold_wall = time.perf_counter() - started
        driver = engine.mirror.view().driver
    if cold.error is not None:
        raise mirror_fail(f"the cold reconcile failed: {cold.error}")
    cold_table = table_check_dict(cold)
    if cold_table["copied"] != rows or cold_table["sqlite_rows"] != rows:
        raise mirror_fail(f"the cold reconcile copied {cold_table['copied']:,} of "
                          f"{cold_table['sqlite_rows']:,} rows, expected {rows:,}")
    mirror_rows, digest = mirror_totals(config)
    if mirror_rows != rows:
        raise mirror_fail(f"after the cold reconcile the mirror holds {mirror_rows:,} rows for "
                          f"scope {MIRROR_SCOPE}, expected {rows:,}")
    # (b) and (c): a new engine on the same config, then the ingest while it runs.
    started = time.perf_counter()
    with Engine(config) as engine:
        insync = engine.mirror.reconcile(timeout=MIRROR_TIMEOUT_S)
        insync_wall = time.perf_counter() - started
        if insync.error is not None:
            raise mirror_fail(f"the in-sync reconcile failed: {insync.error}")
        insync_table = table_check_dict(insync)
        if not insync_table["skipped"] or insync_table["copied"] or insync_table["deleted"]:
            raise mirror_fail(f"the restart's reconcile found {insync_table['differing']:,} of "
                              f"{insync_table['ranges']:,} ranges differing and copied "
                              f"{insync_table['copied']:,} rows (deleted "
                              f"{insync_table['deleted']:,}); expected the table skipped")
        ingest = steady_ingest(engine, config, rows + 1, ingest_s)
        peak_rss = vm_hwm_mb()
        # Untimed checks: every change reached the mirror, and nothing else.
        started = time.perf_counter()
        verify = engine.mirror.verify(timeout=MIRROR_TIMEOUT_S)
        verify_s = time.perf_counter() - started
        table_rows = sqlite_rows(engine)
    if verify.error is not None or not verify.in_sync:
        raise mirror_fail(f"after the ingest drained, verify found {table_check_dict(verify)}")
    final_rows, _ = mirror_totals(config)
    if final_rows != table_rows:
        raise mirror_fail(f"after the ingest the mirror holds {final_rows:,} rows, SQLite "
                          f"{table_rows:,}")
    return {"seconds": cold.seconds, "rows": rows, "wall_s": round(cold_wall, 3),
            "cold": cold_table, "mirror_rows": mirror_rows, "mirror_digest_sum": digest,
            "insync": {**insync_table, "wall_s": round(insync_wall, 3)},
            "ingest": ingest, "driver": driver,
            "verify": {**table_check_dict(verify), "wall_s": round(verify_s, 3),
                       "rows": table_rows},
            "peak_rss_mb": round(peak_rss, 1)}


def mirror_case_raw(db: Path, dsn: str, rows: int) -> dict[str, Any]:
    """The loop a user writes: apsw reads the rows in key order, mysql.connector's
    `executemany` of INSERT ... ON DUPLICATE KEY UPDATE per 1,000 rows, a commit each,
    into an empty table built like the mirror's."""
    import mysql.connector

    print(f"  raw: mysql.connector {mysql.connector.__version__}, HAVE_CEXT "
          f"{mysql.connector.HAVE_CEXT}", file=sys.stderr)
    if not mysql.connector.HAVE_CEXT:
        raise mirror_fail("mysql.connector has no C extension here (HAVE_CEXT is False)")
    conn = bench_mysql(mirror_config(db, dsn), autocommit=False)
    columns = ("sw_scope", *MIRROR_COLUMNS)
    sql = (f"INSERT INTO `{RAW_TABLE}` ({', '.join(f'`{c}`' for c in columns)}) VALUES "
           f"({', '.join(['%s'] * len(columns))}) ON DUPLICATE KEY UPDATE "
           + ", ".join(f"`{c}` = VALUES(`{c}`)" for c in MIRROR_COLUMNS[1:]))
    source = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    cursor = conn.cursor()
    written = 0
    batch: list[tuple[Any, ...]] = []
    started = time.perf_counter()
    for row in source.execute(f"SELECT {', '.join(MIRROR_COLUMNS)} FROM {MIRROR_TABLE} "
                              "ORDER BY id"):
        batch.append((MIRROR_SCOPE, *row))
        if len(batch) >= RAW_BATCH:
            cursor.executemany(sql, batch)
            conn.commit()
            written += len(batch)
            batch = []
    if batch:
        cursor.executemany(sql, batch)
        conn.commit()
        written += len(batch)
    seconds = time.perf_counter() - started
    cursor.close()
    connection = type(conn).__name__
    conn.close()
    source.close()
    if written != rows:
        raise mirror_fail(f"the raw loop read {written:,} rows, expected {rows:,}")
    return {"seconds": seconds, "rows": written, "have_cext": True, "connection": connection,
            "peak_rss_mb": round(vm_hwm_mb(), 1)}


def mirror_case(args: argparse.Namespace) -> dict[str, Any]:
    """One case, run in its own subprocess (`_mirror_case`); its result goes to `--out`."""
    if args.case == "engine":
        result = mirror_case_engine(args.db, args.dsn, args.rows, args.ingest_seconds)
    else:
        result = mirror_case_raw(args.db, args.dsn, args.rows)
    result.update(case=args.case, rows_s=round(args.rows / result["seconds"], 1))
    args.out.write_text(json.dumps(result) + "\n")
    return result


def run_mirror_case(case: str, db: Path, dsn: str, rows: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh Python process and return what it reported."""
    out = db.with_suffix(f".{case}.result.json")
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "_mirror_case", case,
               "--db", str(db), "--dsn", dsn, "--rows", str(rows),
               "--ingest-seconds", str(args.ingest_seconds), "--out", str(out)]
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not out.exists():
        raise mirror_fail(f"the {case} case exited with status {done.returncode} (its output "
                          "is above)")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


def ensure_peer(workdir: Path) -> tuple[Path | None, str | None]:
    """The peer's command, installed into this venv with pip when missing (pinning what the
    project already runs on, so the install never changes the engine's libraries), or
    (None, why not)."""
    tool = Path(sys.executable).parent / PEER_COMMAND
    if tool.exists():
        return tool, None
    import importlib.metadata as metadata

    pins = []
    for requirement in metadata.requires("sqlwarden") or []:
        if "extra ==" in requirement:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name is None:
            continue
        try:
            pins.append(f"{name[0]}=={metadata.version(name[0])}")
        except metadata.PackageNotFoundError:
            continue
    constraints = workdir / "peer-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    print(f"  installing {PEER_PACKAGE} into {Path(sys.executable).parent.parent} for the peer "
          "case", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version"
                           "-check", PEER_PACKAGE, "-c", str(constraints)],
                          capture_output=True, text=True, check=False)
    constraints.unlink()
    if done.returncode != 0 or not tool.exists():
        lines = [line for line in done.stderr.splitlines()
                 if line.strip() and not line.startswith("WARNING: Location")]
        return None, (f"pip install {PEER_PACKAGE} failed with status {done.returncode}: "
                      f"{lines[-1] if lines else 'no message'}")
    return tool, None


def run_peer(tool: Path, db: Path, rows: int, server: Any, password: str,
             workdir: Path) -> dict[str, Any]:
    """`sqlite3mysql` copying the peer file into its own database: wall time of the whole
    command (it creates its table too), upserting in chunks of 1,000 rows."""
    log = workdir / "mirror-peer.log"
    command = [str(tool), "--sqlite-file", str(db), "--mysql-database", PEER_DATABASE,
               "--mysql-user", MIRROR_USER, "--mysql-password", password,
               "--mysql-host", server.host, "--mysql-port", str(server.port),
               "--mysql-insert-method", "update", "--chunk", str(RAW_BATCH),
               "--without-foreign-keys", "--quiet"]
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text(errors="replace").strip()
    log.unlink()
    if proc.returncode != 0:
        return {"error": f"{PEER_COMMAND} exited with status {proc.returncode}: "
                         f"{output.splitlines()[-1] if output else 'no output'}"}
    (count,), = server.query(f"SELECT COUNT(*) FROM `{MIRROR_TABLE}`", database=PEER_DATABASE)
    if count != rows:
        return {"error": f"{PEER_COMMAND} wrote {count:,} rows, expected {rows:,}"}
    return {"case": "peer", "seconds": seconds, "rows": rows, "rows_s": round(rows / seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "insert_method": "update",
            "chunk": RAW_BATCH, "connector": "pure Python (it asks for use_pure)"}


def reset_mirror_server(server: Any, config: Config) -> None:
    """Empty mirror, raw and peer tables: the mirror's table is dropped (the engine makes
    it), the raw one made like it, and the peer's database made anew."""
    from sqlwarden.mirror.dialect import create_table_sql

    assert config.mirror is not None
    server.query(f"DROP TABLE IF EXISTS `{MIRROR_TABLE}`, `{RAW_TABLE}`",
                 database=MIRROR_DATABASE)
    raw = replace(config.table(MIRROR_TABLE), name=RAW_TABLE)
    server.query(create_table_sql(raw, config.mirror), database=MIRROR_DATABASE)
    server.query(f"DROP DATABASE IF EXISTS `{PEER_DATABASE}`")
    server.query(f"CREATE DATABASE `{PEER_DATABASE}` CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_bin")


def bench_mirror(args: argparse.Namespace) -> dict[str, Any]:
    return in_workdir(args, _bench_mirror)


def _bench_mirror(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bench_started = time.perf_counter()
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
                remove_database(run_db)
                shutil.copyfile(base, run_db)
                digests: dict[str, int] = {}
                # Alternate the order so no case always runs on a warm server.
                for case in MIRROR_CASES if repeat % 2 == 0 else MIRROR_CASES[::-1]:
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
    best = {case: max((r for r in runs if r["case"] == case), key=lambda r: r["rows_s"])
            for case in MIRROR_CASES if any(r["case"] == case for r in runs)}
    for run in runs:
        run["best"] = any(run is b for b in best.values())
        run["seconds"] = round(run["seconds"], 3)
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


def print_mirror(result: dict[str, Any]) -> None:
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

    def target(value: float, ok: bool, text: str) -> str:
        return f"{value:.3f} (target {text}: {'met' if ok else 'NOT met'})"

    vs_raw, insync_ratio, rss = result["vs_raw"], result["insync_vs_cold"], result["peak_rss_mb"]
    vs_peer = "n/a" if result["vs_peer"] is None else f"{result['vs_peer']:.1f}"
    print(f"vs raw {target(vs_raw, vs_raw >= VS_RAW_TARGET, f'>= {VS_RAW_TARGET}')}   vs peer "
          f"{vs_peer}   insync vs cold "
          f"{target(insync_ratio, insync_ratio <= INSYNC_TARGET, f'<= {INSYNC_TARGET}')}   "
          f"peak RSS {rss:.0f} MB (target <= {MIRROR_RSS_TARGET_MB:.0f}: "
          f"{'met' if rss <= MIRROR_RSS_TARGET_MB else 'NOT met'})")
    print(f"checks: the mirror held {cold['mirror_rows']:,} rows after the cold reconcile with "
          f"the raw copy's digest sum; the restart skipped the table; after the ingest verify "
          f"found every range equal and {details['verify']['rows']:,} rows on both sides; "
          f"wall {details['wall_s']:.0f} s")


# --- replay -------------------------------------------------------------------------------

REPLAY_RECORDS = 1_000_000
#: Fewer leave no room for two runs' boots and stops.
REPLAY_MIN_RECORDS = 20_000
REPLAY_SEED = 8
REPLAY_CASES = ("summary", "check")
REPLAY_MSGS_TARGET = 100_000
REPLAY_RSS_TARGET_MB = 100.0
#: Rotate as `message_log.max_mb: 64` does.
REPLAY_FILE_BYTES = 64 * 1024 * 1024
#: Records of the log `baseline` runs the summary over: interpreter start and imports.
REPLAY_BASELINE_RECORDS = 1_000
REPLAY_EPOCH_US = 1_795_000_000_000_000  # 2026-11-18T09:46:40Z
#: The Progress actor's monotonic clock (`clock_s` of its saves) at REPLAY_EPOCH_US.
REPLAY_MONOTONIC_S = 86_412.25
#: Records per second of log time the mix is tuned to (most are facade writes).
REPLAY_RATE = 20_000
#: The first engine run writes this share of the records; the second continues the seq.
REPLAY_FIRST_RUN_SHARE = 0.6
#: The second run stops this many records before the end: what is in flight is answered,
#: then facade writes, one at a time, make the count exact.
REPLAY_STOP_MARGIN = 2_000
REPLAY_RESTART_US = 1_500_000
#: The simulated engine, in microseconds of log time. Facade writer.execute asks arrive
#: at random, one every EXEC_US on average; the Writer answers in arrival order, joining
#: consecutive foreground writes into one group commit.
EXEC_US = 104
EXEC_WRITE_US = 18
COMMIT_US = 250
GROUP_MAX = 500
EXEC_ERROR_SHARE = 1 / 10_000
PICKUP_US = 15
HANDLE_DELAY_US = 30
HANDLE_US = 20
STATUS_POLL_US = 1_000_000
CLOCK_US = 5_000
#: The source: batches of SYNC_ROWS read in SYNC_READ_US, at most SYNC_WINDOW unanswered;
#: the first run's first sync run catches up a backlog under FTS deferral.
SYNC_SOURCE_NAME = "plant_feed"
SYNC_ROWS = 1_000
SYNC_READ_US = 25_000
SYNC_WINDOW = 3
SYNC_BATCH_US = (4_000, 8_000)  # FTS deferred, live
SYNC_EVERY_US = 2_000_000
SYNC_CATCHUP_SHARE = 0.45
SYNC_RUN_BATCHES = (5, 25)
FTS_RESTORE_US = 300_000
#: Backfill: one chunk in flight, tasks taken in turn; a chunk's rows double from 100 up
#: to what fits CHUNK_TARGET_US, then CHUNK_YIELD_US until the next one.
CHUNK_TARGET_US = 12_000
CHUNK_ROW_US = 6
CHUNK_BASE_US = 300
CHUNK_YIELD_US = 30_000
CHUNKS_PER_S = 20
PROGRESS_SAVE_US = 1_000_000
#: The mirror's worker: a reconcile at boot, a verify asked halfway, outbox drains of at
#: most DRAIN_MAX changes, polling every DRAIN_POLL_US when the outbox is empty.
MIRROR_CONNECT_US = 40_000
RECONCILE_US = 900_000
VERIFY_US = 1_200_000
DRAIN_MAX = 1_000
DRAIN_POLL_US = 100_000
DRAIN_APPLY_US = 2_000
DRAIN_ENTRY_US = 15
REPLAY_TASKS = ((("registry_last_seen", 1, 0.35), ("observation_units", 1, 0.5)),
                (("org_directory", 1, 0.35), ("registry_last_seen", 2, 0.5)))
#: (sql, bound parameters, weight, changes a registry row: an outbox entry for the mirror)
REPLAY_EXECUTES = (
    ("UPDATE registry SET body = ?, updated_at = ? WHERE id = ?", 3, 5, True),
    ("INSERT INTO observations (registry_id, observed_at, value, unit) VALUES (?, ?, ?, ?)",
     4, 8, False),
    ("UPDATE registry SET last_seen = ? WHERE id = ?", 2, 3, True),
    ("DELETE FROM observations WHERE registry_id = ? AND observed_at < ?", 2, 1, False),
    ("INSERT INTO orgs (name, first_site) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", 2, 1,
     False),
)
REPLAY_WRITE_ERRORS = ("UNIQUE constraint failed: orgs.name",
                       "NOT NULL constraint failed: observations.unit",
                       "FOREIGN KEY constraint failed")
FACADE, WRITER, SYNC, FTS, BACKFILL, PROGRESS, MIRROR = (
    "facade", "writer", "sync", "fts", "backfill", "progress", "mirror")
OK_WRITE = '{"changes":1,"last_rowid":0}'


def replay_fail(message: str) -> SystemExit:
    return bench_fail("replay", message)


def jsonl(value: Any) -> str:
    """`value` as the message log writes it: compact, not ASCII-escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RotatingFiles:
    """Lines into a message log's files as `MessageLog` rotates them: a file is full when the
    next line would take it past `max_bytes`. Closed, the newest is `base`, the one before
    `base.1`, and so on."""

    def __init__(self, base: Path, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.parts: list[Path] = []
        self.bytes = 0
        self._size = 0
        self._file = self._open()

    def _open(self) -> Any:
        self.parts.append(self.base.with_name(f"{self.base.name}.part{len(self.parts)}"))
        self._size = 0
        return open(self.parts[-1], "wb", buffering=1 << 20)

    def write(self, line: str) -> None:
        data = line.encode()
        if self._size and self._size + len(data) > self.max_bytes:
            self._file.close()
            self._file = self._open()
        self._file.write(data)
        self._size += len(data)
        self.bytes += len(data)

    def close(self) -> list[Path]:
        """Close the last file and give every file its rotated name; returns them oldest first."""
        self._file.close()
        files = []
        for age, part in enumerate(reversed(self.parts)):
            files.append(self.base if age == 0 else self.base.with_name(f"{self.base.name}.{age}"))
            part.rename(files[-1])
        return files[::-1]


@dataclass(slots=True)
class _Job:
    """An ask waiting at the simulated Writer, and what its answer will be."""

    corr: int
    sender: str
    message: str
    service_us: int
    answer: str
    then: Callable[[], None] | None = None
    #: A foreground write: consecutive ones commit together.
    group: bool = False
    #: The `error` of the error record that answers it, when it fails.
    error: str | None = None


@dataclass(slots=True)
class _Task:
    name: str
    version: int
    bound: int
    after: int | None = None
    processed: int = 0
    rows: int = 100
    started_us: int = 0
    last_chunk_us: int = 0
    last_save_us: int | None = None


class ReplayLog:
    """A busy engine's message log, made up: exactly `records` records, the same each time.

    An event simulation of the actors in two engine runs (the second continues the seq):
    facade writer.execute asks answered by a Writer that takes asks in arrival order and
    joins consecutive foreground writes into one commit; a source pumping writer.sync_batch
    asks, three unanswered at most, with sync.pumped and progress.event; a backfill of two
    tasks taken in turn, one writer.chunk in flight, progress saved at most once a second
    plus the terminal save; the mirror's worker (a reconcile at boot, a verify asked
    halfway, writer.outbox_drained asks and mirror.drained tells); status polls; one FTS
    deferral and its restore around the first run's catch-up; a few failed writes.
    """

    def __init__(self, base: Path, records: int, seed: int = REPLAY_SEED) -> None:
        self.files = RotatingFiles(base, REPLAY_FILE_BYTES)
        self.records = records
        self.rng = random.Random(seed)
        self.seq = 0
        self.now = REPLAY_EPOCH_US
        self.last_ts = 0
        self.runs: list[str] = []
        self.run = ""
        self._sec = -1
        self._prefix = ""
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._corr = itertools.count(1)
        self._queue: deque[_Job] = deque()
        self._writer_busy = False
        self.stopping = False
        self._stop_at = 0
        self._run_us = 0
        self._draws: list[int] = []
        self._execs = [(jsonl({"sql": sql, "params": {"items": params}}), registry)
                       for sql, params, _, registry in REPLAY_EXECUTES]
        self._exec_weights = list(itertools.accumulate(w for _, _, w, _ in REPLAY_EXECUTES))
        self._errors = [jsonl({"type": "WriteError", "message": f"writer.execute failed: "
                               f"ConstraintError: {text}"}) for text in REPLAY_WRITE_ERRORS]
        self.rowid = 5_000_000
        self.writer_messages = 0
        self.transactions = 0
        self.failed = 0
        self.outbox_pending = 0
        self.outbox_seq = 0
        self.mirror_number = 0
        self._verify: tuple[int, int] | None = None  # the facade's mirror.verify: corr, start
        self.sync_run = 0
        self._sync_token = 0
        self._catchup = True
        self._deferred = False
        self._restore_ms: float | None = None
        self._tasks: list[_Task] = []
        self._next_task = 0
        self._lease: dict[str, Any] = {}
        self._sync_batches = self._sync_total = self._sync_sent = self._sync_rows = 0
        self._sync_in_flight = self._sync_pending = self._sync_read_at = 0
        self._sync_active = self._sync_reading = self._sync_blocked = False

    # --- records ------------------------------------------------------------------------

    def _emit(self, kind: str, sender: str, receiver: str, message: str, payload: str,
              corr: int, started: int | None = None, error: str | None = None) -> None:
        self.seq += 1
        ts = self.now if self.now > self.last_ts else self.last_ts + 1
        self.now = self.last_ts = ts
        sec, micro = divmod(ts, 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        line = (f'{{"seq":{self.seq},"ts":"{self._prefix}.{micro:06d}+00:00","run":"{self.run}",'
                f'"kind":"{kind}","sender":"{sender}","receiver":"{receiver}",'
                f'"message":"{message}","fields":{payload},"corr":{corr}')
        if started is not None:
            line += f',"duration_ms":{round((ts - started) / 1000, 3)!r}'
        if error is not None:
            line += f',"error":{error}'
        self.files.write(line + "}\n")

    def tell(self, sender: str, receiver: str, message: str, payload: str = "{}") -> int:
        corr = next(self._corr)
        self._emit("tell", sender, receiver, message, payload, corr)
        return corr

    def ask(self, sender: str, receiver: str, message: str, payload: str = "{}") -> int:
        corr = next(self._corr)
        self._emit("ask", sender, receiver, message, payload, corr)
        return corr

    def reply(self, handler: str, sender: str, message: str, corr: int, payload: str,
              started: int) -> None:
        self._emit("reply", handler, sender, message, payload, corr, started)

    def later(self, delay_us: int, then: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay_us, next(self._order), then))

    def handle(self, handler: str, sender: str, message: str, corr: int, answer: str = "{}",
               work: Callable[[], None] | None = None) -> None:
        """`handler` handles the message soon: `work` (which may send), then the reply."""
        def run() -> None:
            started = self.now
            if work is not None:
                work()
            self.now += HANDLE_US
            self.reply(handler, sender, message, corr, answer, started)
        self.later(HANDLE_DELAY_US, run)

    def notify(self, sender: str, receiver: str, message: str, payload: str = "{}",
               work: Callable[[], None] | None = None) -> None:
        """A tell, handled and answered soon."""
        corr = self.tell(sender, receiver, message, payload)
        self.handle(receiver, sender, message, corr, work=work)

    # --- the Writer ---------------------------------------------------------------------

    def write(self, sender: str, message: str, payload: str, service_us: int, answer: str,
              then: Callable[[], None] | None = None, *, group: bool = False,
              error: str | None = None) -> None:
        """Ask the Writer; it answers in arrival order (which keeps rule 2)."""
        corr = self.ask(sender, WRITER, message, payload)
        self._queue.append(_Job(corr, sender, message, service_us, answer, then, group, error))
        if not self._writer_busy:
            self._writer_busy = True
            self.later(PICKUP_US, self._writer_start)

    def _writer_start(self) -> None:
        queue = self._queue
        jobs = [queue.popleft()]
        service = jobs[0].service_us
        if jobs[0].group:
            service += COMMIT_US
            while queue and queue[0].group and len(jobs) < GROUP_MAX:
                jobs.append(queue.popleft())
                service += jobs[-1].service_us
        started = self.now
        self.later(service, lambda: self._writer_done(jobs, started))

    def _writer_done(self, jobs: list[_Job], started: int) -> None:
        self.transactions += 1
        for job in jobs:
            self.writer_messages += 1
            if job.error is None:
                self._emit("reply", WRITER, job.sender, job.message, job.answer, job.corr,
                           started)
            else:
                self.failed += 1
                self._emit("error", WRITER, job.sender, job.message, "{}", job.corr, started,
                           job.error)
            if job.then is not None:
                job.then()
        if self._queue:
            self.later(PICKUP_US, self._writer_start)
        else:
            self._writer_busy = False

    def _writer_status(self) -> str:
        return jsonl({"messages": self.writer_messages, "transactions": self.transactions,
                      "rows_written": self.writer_messages * 3, "failed_messages": self.failed,
                      "wal_frames": 4_000 + self.seq % 12_000, "wal_file_bytes": 67_108_864,
                      "wal_threshold_bytes": 67_108_864, "checkpoints": self.transactions // 900,
                      "forced_checkpoints": self.transactions // 900, "busy_checkpoints": 0,
                      "page_size": 4096, "variable_limit": 32766})

    # --- runs ---------------------------------------------------------------------------

    def generate(self) -> list[Path]:
        """Write the log; returns its files, oldest first."""
        first = max(1, round(self.records * REPLAY_FIRST_RUN_SHARE))
        try:
            self._engine_run(first)
            self.now += REPLAY_RESTART_US
            self._engine_run(self.records - REPLAY_STOP_MARGIN)
            self._top_up()
        finally:
            files = self.files.close()
        return files

    def _engine_run(self, stop_at: int) -> None:
        """One engine run from boot until everything is answered, stopping at seq `stop_at`."""
        self.run = f"{self.rng.getrandbits(48):012x}"
        self.runs.append(self.run)
        self._corr = itertools.count(1)
        self.stopping = False
        self._stop_at = stop_at
        self._run_us = max(1, stop_at - self.seq) * 1_000_000 // REPLAY_RATE
        self._boot()
        while self._events:
            when, _, then = heapq.heappop(self._events)
            if when > self.now:
                self.now = when
            then()
        # Timers that found the run stopping fired later than its last record.
        self.now = self.last_ts
        if self._queue or self._deferred or self._verify is not None:
            raise replay_fail("the generator ended a run with work in flight (a bug in the "
                              "generator)")

    def _top_up(self) -> None:
        """Facade writes one at a time until the log holds exactly `records` records."""
        left = self.records - self.seq
        if left < 0:
            raise replay_fail(f"the generator's last run wrote {-left:,} records too many; "
                              "raise REPLAY_STOP_MARGIN")
        payload, _ = self._execs[1]
        while left >= 2:
            self.now += 60 + self.rng.randrange(80)
            corr = self.ask(FACADE, WRITER, "writer.execute", payload)
            self.now += 40
            started = self.now - 30
            self.rowid += 1
            self.reply(WRITER, FACADE, "writer.execute", corr,
                       f'{{"changes":1,"last_rowid":{self.rowid}}}', started)
            left -= 2
        if left:
            # The Writer's idle timer fires as the log is read: its reply is not written yet.
            self.now += 1_000_000
            self.tell(WRITER, WRITER, "writer.idle_check")

    def _clock(self) -> None:
        if self.seq >= self._stop_at:
            self.stopping = True
        else:
            self.later(CLOCK_US, self._clock)

    def _boot(self) -> None:
        """As `Engine.start` does: meta, FTS boot check, sync boot, mirror, tasks."""
        def meta_url() -> None:
            self.write(FACADE, "writer.meta", jsonl({"key": "status_url",
                                                     "value": "http://127.0.0.1:8765/"}),
                       150, OK_WRITE, fts_tick)

        def fts_tick() -> None:
            corr = self.ask(FACADE, FTS, "fts.tick")
            started = self.now

            def answered() -> None:
                self.reply(FTS, FACADE, "fts.tick", corr, "{}", started)
                sync_boot()
            self.write(FTS, "writer.fts_inspect", "{}", 600,
                       '{"tables":{"items":1},"deferral":null}', answered)

        def sync_boot() -> None:
            corr = self.ask(FACADE, SYNC, "sync.boot")
            started = self.now

            def answered() -> None:
                self.reply(SYNC, FACADE, "sync.boot", corr, '{"value":0}', started)
                mirror_boot()
            self.write(SYNC, "writer.sync_reap", jsonl({"engine_run": self.run,
                                                        "ended_at": self.now / 1e6}),
                       150, '{"changes":0,"last_rowid":0}', answered)

        def mirror_boot() -> None:
            corr = self.ask(FACADE, MIRROR, "mirror.boot")
            self.handle(MIRROR, FACADE, "mirror.boot", corr, work=lambda: self.later(
                MIRROR_CONNECT_US, self._mirror_up))
            self.later(HANDLE_DELAY_US * 3, running)

        def running() -> None:
            self.notify(FACADE, BACKFILL, "backfill.start", work=self._backfill_start)
            self.later(50, self._facade_write)
            self.later(200, self._sync_tick)
            self.later(STATUS_POLL_US, self._status_poll)
            self.later(self._run_us // 2, self._facade_verify)
            self._clock()

        self.write(FACADE, "writer.meta", jsonl({"key": "run_id", "value": self.run}), 250,
                   OK_WRITE, meta_url)

    # --- facade -------------------------------------------------------------------------

    def _facade_write(self) -> None:
        if self.stopping:
            return
        if not self._draws:
            self._draws = self.rng.choices(range(len(self._execs)),
                                           cum_weights=self._exec_weights, k=4096)
        which = self._draws.pop()
        payload, registry = self._execs[which]
        rng = self.rng
        if rng.random() < EXEC_ERROR_SHARE:
            self.write(FACADE, "writer.execute", payload, EXEC_WRITE_US, "", group=True,
                       error=self._errors[self.seq % len(self._errors)])
        else:
            if which == 1:
                self.rowid += 1
            changes = (self.seq % 4) if which == 3 else int(which != 4 or self.seq % 3 == 0)
            self.write(FACADE, "writer.execute", payload, EXEC_WRITE_US,
                       f'{{"changes":{changes},"last_rowid":{self.rowid}}}',
                       self._outboxed if registry else None, group=True)
        self.later(int(rng.expovariate(1 / EXEC_US)) + 1, self._facade_write)

    def _outboxed(self) -> None:
        self.outbox_pending += 1

    def _status_poll(self) -> None:
        if self.stopping:
            return
        corr = self.ask(FACADE, PROGRESS, "progress.snapshot")
        self.handle(PROGRESS, FACADE, "progress.snapshot", corr,
                    jsonl({"value": {"items": 1 + len(self._tasks)}}))
        self.write(FACADE, "writer.status", "{}", 40, self._writer_status())
        self.later(STATUS_POLL_US, self._status_poll)

    def _facade_verify(self) -> None:
        if self.stopping:
            return
        self._verify = (self.ask(FACADE, MIRROR, "mirror.verify"), self.now)

    # --- sync ---------------------------------------------------------------------------

    def _sync_tick(self) -> None:
        if self.stopping:
            return
        self._sync_token += 1
        self.notify(SYNC, SYNC, "sync.tick", jsonl({"source": SYNC_SOURCE_NAME,
                                                     "token": self._sync_token}),
                    work=self._sync_start)

    def _sync_start(self) -> None:
        self.sync_run += 1
        if self._catchup:
            seconds = self._run_us / 1e6 * SYNC_CATCHUP_SHARE
            self._sync_batches = max(3, int(seconds * 1e6 / SYNC_READ_US))
        else:
            self._sync_batches = self.rng.randint(*SYNC_RUN_BATCHES)
        self._sync_total = self._sync_batches * SYNC_ROWS
        self.write(SYNC, "writer.sync_start", jsonl({
            "source": SYNC_SOURCE_NAME, "mode": "full" if self._catchup else "incremental",
            "reason": "schedule",
            "attempt": 1, "engine_run": self.run, "started_at": self.now / 1e6,
            "cursor": f"part-{self.sync_run:05d}.ndjson:0"}),
            200, jsonl({"changes": 1, "last_rowid": self.sync_run}), self._sync_lease)

    def _sync_lease(self) -> None:
        corr = self.ask(SYNC, FTS, "fts.begin", jsonl({"source": SYNC_SOURCE_NAME,
                                                       "backlog_rows": self._sync_total}))
        defer = self._catchup and not self.stopping
        self._catchup = False
        lease = {"source": SYNC_SOURCE_NAME, "deferred": defer,
                 "reason": f"backlog of {self._sync_total:,} rows" if defer else
                 f"backlog of {self._sync_total:,} rows is below threshold_rows",
                 "tables": ["registry_fts"] if defer else []}
        self._lease = lease

        def run() -> None:
            started = self.now

            def leased() -> None:
                self.reply(FTS, SYNC, "fts.begin", corr, jsonl(lease), started)
                self.later(HANDLE_DELAY_US, self._sync_pump)
            if defer:
                self._deferred = True
                sources = jsonl({"sources": {"items": 1}, "started_at": self.now / 1e6})
                answer = sources[:-1] + (',"tables":["registry_fts"],"hwm":{"items":1},'
                                         '"last_error":null,"attempts":0}')
                self.write(FTS, "writer.fts_defer", sources, 1_300, answer, leased)
            else:
                self.now += HANDLE_US
                leased()
        self.later(HANDLE_DELAY_US, run)

    def _sync_pump(self) -> None:
        self._sync_sent = 0
        self._sync_rows = 0
        self._sync_in_flight = 0
        self._sync_pending = 0
        self._sync_blocked = False
        self._sync_active = True
        self._sync_reading = True
        self._sync_read_at = self.now
        self.later(SYNC_READ_US, self._sync_read)

    def _sync_more(self) -> bool:
        return not self.stopping and self._sync_sent < self._sync_batches

    def _sync_read(self) -> None:
        self._sync_reading = False
        if not self._sync_more():
            self._sync_maybe_end()
        elif self._sync_in_flight >= SYNC_WINDOW:
            self._sync_blocked = True
        else:
            self._sync_send()

    def _sync_send(self) -> None:
        self._sync_in_flight += 1
        self._sync_pending += 1
        payload = jsonl({"source": SYNC_SOURCE_NAME, "run": self.sync_run,
                        "seq": self._sync_sent, "tables": {"items": 1}, "rejects": [],
                        "files": {"items": 1}, "on_reject": "keep", "at": self.now / 1e6})
        service = SYNC_BATCH_US[0 if self._deferred else 1] + self.rng.randrange(1_500)
        self.write(SYNC, "writer.sync_batch", payload, service,
                   f'{{"rows":{SYNC_ROWS},"rejects":0}}', self._sync_answered, group=True)
        self._sync_sent += 1
        if self._sync_more():
            self._sync_reading = True
            self.later(SYNC_READ_US + self.rng.randrange(5_000), self._sync_read)

    def _sync_answered(self) -> None:
        self._sync_in_flight -= 1
        self.later(400, self._sync_pumped)
        if self._sync_blocked:
            self._sync_blocked = False
            if self._sync_more():
                self._sync_send()

    def _sync_pumped(self) -> None:
        self._sync_pending -= 1
        self._sync_rows += SYNC_ROWS
        batch_s = (self.now - self._sync_read_at) / 1e6
        self._sync_read_at = self.now
        rows, total = self._sync_rows, self._sync_total
        self.notify(SYNC, SYNC, "sync.pumped", jsonl({
            "source": SYNC_SOURCE_NAME, "run": self.sync_run, "rows": rows, "rejects": 0,
            "batch_rows": SYNC_ROWS, "batch_s": batch_s, "total": total}),
            work=lambda: self._progress(SYNC, None, {
                "scope": "sync", "name": SYNC_SOURCE_NAME, "version": 0, "processed": rows,
                "total": total, "state": "running", "waiting": None, "chunk_rows": SYNC_ROWS,
                "chunk_s": batch_s, "terminal": False, "error": None}))
        self._sync_maybe_end()

    def _sync_maybe_end(self) -> None:
        if (self._sync_active and not self._sync_pending and not self._sync_in_flight
                and not self._sync_reading and not self._sync_blocked
                and not self._sync_more()):
            self._sync_active = False
            self._sync_release()

    def _fts_view(self) -> str:
        restore = (None if self._restore_ms is None
                   else {"tables": {"items": 1}, "duration_ms": self._restore_ms})
        return jsonl({"state": "live", "sources": [], "since": None, "tables": [],
                      "error": None, "attempts": 0, "retry_in_s": None,
                      "last_restore": restore, "not_deferrable": []})

    def _sync_release(self) -> None:
        corr = self.ask(SYNC, FTS, "fts.end", jsonl({"source": SYNC_SOURCE_NAME}))

        def run() -> None:
            started = self.now

            def released() -> None:
                self.reply(FTS, SYNC, "fts.end", corr, self._fts_view(), started)
                self.later(HANDLE_DELAY_US, self._sync_end)
            if self._deferred:
                self._restore_ms = (FTS_RESTORE_US + self.rng.randrange(50_000)) / 1000.3
                answer = jsonl({"tables": {"items": 1}, "duration_ms": self._restore_ms})

                def restored() -> None:
                    self._deferred = False
                    released()
                self.write(FTS, "writer.fts_restore", '{"rebuild_share":0.95,'
                           '"buffer_bytes":16777216}', int(self._restore_ms * 1000) + 40,
                           answer, restored)
            else:
                self.now += HANDLE_US
                released()
        self.later(HANDLE_DELAY_US, run)

    def _sync_end(self) -> None:
        stopped = self._sync_sent < self._sync_batches
        status = "stopped" if stopped else "ok"
        rows = self._sync_rows
        payload = jsonl({"source": SYNC_SOURCE_NAME, "run": self.sync_run, "rows": rows,
                        "rejects": 0, "error": None, "failure": None, "retry_after_s": None,
                        "note": None, "stopped": stopped, "fts_lease": self._lease,
                        "fts_after": json.loads(self._fts_view())})

        def run() -> None:
            note = (f"FTS upkeep of registry_fts deferred ({self._lease['reason']})"
                    if self._lease["deferred"] else None)
            self.write(SYNC, "writer.sync_end", jsonl({
                "run": self.sync_run, "status": status, "ended_at": self.now / 1e6,
                "error": None, "note": note}), 200, OK_WRITE, self._sync_ended)
            self._progress(SYNC, None, {
                "scope": "sync", "name": SYNC_SOURCE_NAME, "version": 0, "processed": rows,
                "total": self._sync_total, "state": status, "waiting": None, "chunk_rows": 0,
                "chunk_s": 0.0, "terminal": True, "error": None})
        self.notify(SYNC, SYNC, "sync.pump_end", payload, work=run)

    def _sync_ended(self) -> None:
        if not self.stopping:
            self.later(SYNC_EVERY_US, self._sync_tick)

    # --- progress -----------------------------------------------------------------------

    def _progress(self, sender: str, task: _Task | None, event: dict[str, Any]) -> None:
        """Tell the Progress actor; for a task it saves the progress at most once a second,
        and the terminal event always."""
        def work() -> None:
            if task is None:
                return
            now = self.now
            if not (event["terminal"] or task.last_save_us is None
                    or now - task.last_save_us >= PROGRESS_SAVE_US):
                return
            rate = (event["processed"] / max(1e-3, (now - task.started_us) / 1e6)
                    if event["processed"] else None)
            left = event["total"] - event["processed"]
            task.last_save_us = now
            self.write(PROGRESS, "writer.task_progress", jsonl({
                "task": task.name, "version": task.version, "rate_rows_s": rate,
                "eta_s": None if event["terminal"] or not rate else left / rate,
                "waiting": None, "at": now / 1e6, "terminal": event["terminal"],
                "clock_s": (now - REPLAY_EPOCH_US) / 1e6 + REPLAY_MONOTONIC_S}),
                120, OK_WRITE)
        self.notify(sender, PROGRESS, "progress.event", jsonl(event), work=work)

    # --- backfill -----------------------------------------------------------------------

    def _backfill_start(self) -> None:
        plan = REPLAY_TASKS[min(len(self.runs), len(REPLAY_TASKS)) - 1]
        # Sized to end at about 85% of the run: the chunks a run has time for, shared.
        chunks = self._run_us / 1e6 * CHUNKS_PER_S * 0.85
        full = CHUNK_TARGET_US // CHUNK_ROW_US
        self._tasks = [_Task(name, version, max(1_000, int(chunks * share) * full),
                             started_us=self.now, last_chunk_us=self.now)
                       for name, version, share in plan]
        self._next_task = 0
        for task in self._tasks:
            self.write(BACKFILL, "writer.task_state", jsonl({
                "task": task.name, "version": task.version, "fields": {"items": 15}}),
                300, OK_WRITE)
            self._task_event(task, 0, 0.0, "running")
        self._chunk()

    def _task_event(self, task: _Task, rows: int, seconds: float, state: str) -> None:
        self._progress(BACKFILL, task, {
            "scope": "task", "name": task.name, "version": task.version,
            "processed": task.processed, "total": task.bound, "state": state, "waiting": None,
            "chunk_rows": rows, "chunk_s": seconds, "terminal": state == "done",
            "error": None})

    def _chunk(self) -> None:
        if self.stopping or not self._tasks:
            return
        task = self._tasks[self._next_task % len(self._tasks)]
        self._next_task += 1
        after = task.after or 0
        last = min(task.bound, after + task.rows)
        scanned = last - after
        processed = scanned if task.name != "observation_units" else scanned * 3 // 10
        exhausted = last >= task.bound
        service = CHUNK_BASE_US + scanned * CHUNK_ROW_US + self.rng.randrange(800)
        answer = jsonl({"after": task.after, "last": last, "scanned": scanned,
                        "processed": processed, "exhausted": exhausted,
                        "duration_ms": service / 1043.7, "yielded_to": len(self._queue),
                        "checkpoint": None})
        payload = jsonl({"task": task.name, "version": task.version, "run_id": self.run,
                        "after": task.after, "bound": task.bound, "rows": task.rows})
        self.write(BACKFILL, "writer.chunk", payload, service, answer,
                   lambda: self._chunk_done(task, last, processed, exhausted))

    def _chunk_done(self, task: _Task, last: int, processed: int, exhausted: bool) -> None:
        task.after = last
        task.processed += processed
        task.rows = min(task.rows * 2, CHUNK_TARGET_US // CHUNK_ROW_US)
        seconds = (self.now - task.last_chunk_us) / 1e6
        task.last_chunk_us = self.now
        self._task_event(task, processed, seconds, "done" if exhausted else "running")
        if exhausted:
            self._tasks.remove(task)
            self.write(BACKFILL, "writer.task_state", jsonl({
                "task": task.name, "version": task.version, "fields": {"items": 6}}),
                300, OK_WRITE)
        if self._tasks and not self.stopping:
            self.later(CHUNK_YIELD_US, self._backfill_next)

    def _backfill_next(self) -> None:
        if not self.stopping:
            self.notify(BACKFILL, BACKFILL, "backfill.next", work=self._chunk)

    # --- mirror -------------------------------------------------------------------------

    def _mirror_up(self) -> None:
        self.notify(MIRROR, MIRROR, "mirror.up", '{"driver":"mysql-connector (C extension)",'
                    '"server":"MariaDB 11.4.2"}')
        self._reconcile(verify=False)

    def _reconcile(self, *, verify: bool) -> None:
        self.mirror_number += 1
        number = self.mirror_number
        self.notify(MIRROR, MIRROR, "mirror.reconcile_begun",
                    jsonl({"number": number, "verify": verify}))
        started = self.now

        def ended() -> None:
            view = jsonl({"number": number, "verify": verify, "tables": {"items": 1},
                          "error": None, "seconds": round((self.now - started) / 1e6, 3)})

            def answer_verify() -> None:
                if verify and self._verify is not None:
                    corr, asked = self._verify
                    self._verify = None
                    self.reply(MIRROR, FACADE, "mirror.verify", corr, view, asked)
            self.notify(MIRROR, MIRROR, "mirror.reconciled", view, work=answer_verify)
            self.later(200, self._mirror_poll)

        if verify:
            self.later(VERIFY_US + self.rng.randrange(100_000), ended)
        else:
            self.later(RECONCILE_US + self.rng.randrange(100_000), lambda: self.write(
                MIRROR, "writer.mirror_ranges", '{"table":"registry","shape":"5d0c3a1e:212",'
                '"ranges":{"items":101}}', 2_500, '{"changes":101,"last_rowid":0}', ended))

    def _mirror_poll(self) -> None:
        if self._verify is not None:
            if not self.stopping:
                self._reconcile(verify=True)
                return
            corr, asked = self._verify
            self._verify = None
            self._emit("error", MIRROR, FACADE, "mirror.verify", "{}", corr, asked,
                       '{"type":"EngineStopped","message":"the engine is stopping: mirror '
                       'no longer accepts messages"}')
        if self.stopping:
            return
        entries = min(self.outbox_pending, DRAIN_MAX)
        if not entries:
            self.later(DRAIN_POLL_US, self._mirror_poll)
            return
        self.outbox_pending -= entries
        self.outbox_seq += entries
        upto = self.outbox_seq
        self.later(DRAIN_APPLY_US + entries * DRAIN_ENTRY_US,
                   lambda: self._mirror_drained(entries, upto))

    def _mirror_drained(self, entries: int, upto: int) -> None:
        stale = 1 + upto % 4
        payload = f'{{"upto_seq":{upto},"stale_ranges":{{"items":{stale}}}}}'

        def drained() -> None:
            p50 = round(6 + entries * 0.02 + self.rng.random() * 4, 1)
            self.notify(MIRROR, MIRROR, "mirror.drained", jsonl({
                "entries": entries, "upserts": entries, "deletes": 0, "upto_seq": upto,
                "lag_p50_ms": p50, "lag_p99_ms": round(p50 * 3.1, 1),
                "lag_max_ms": round(p50 * 4.7, 1)}))
            self.later(100, self._mirror_poll)
        self.write(MIRROR, "writer.outbox_drained", payload, 300 + entries * 3,
                   f'{{"changes":{entries + stale},"last_rowid":{self.rowid}}}', drained)


def write_replay_log(base: Path, records: int) -> dict[str, Any]:
    """Generate the log into `base`'s directory (emptied first); what was made, and how fast."""
    if base.parent.exists():
        shutil.rmtree(base.parent)
    base.parent.mkdir(parents=True)
    started = time.perf_counter()
    log = ReplayLog(base, records)
    files = log.generate()
    seconds = time.perf_counter() - started
    if log.seq != records:
        raise replay_fail(f"the generator wrote {log.seq:,} records, expected {records:,}")
    span_s = (log.last_ts - REPLAY_EPOCH_US) / 1e6
    return {"records": records, "bytes": log.files.bytes,
            "mb": round(log.files.bytes / 1024 / 1024, 1),
            "files": [{"name": f.name, "mb": round(f.stat().st_size / 1024 / 1024, 1)}
                      for f in files],
            "runs": log.runs, "span_s": round(span_s, 3),
            "records_per_log_s": round(records / span_s),
            "generator_s": round(seconds, 2), "generator_records_s": round(records / seconds)}


def run_replay_case(case: str, base: Path, out: Path) -> dict[str, Any]:
    """`python -m sqlwarden replay LOG --json` (summary) or with `--check`, in a fresh
    interpreter: wall time, peak RSS (ru_maxrss from wait4), exit status and the parsed
    output."""
    command = [sys.executable, "-m", "sqlwarden", "replay", str(base), "--json"]
    if case == "check":
        command.append("--check")
    with out.open("wb") as stdout:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    try:
        output = json.loads(out.read_text())
    except ValueError:
        raise replay_fail(f"`replay {'--check' if case == 'check' else '--json'}` exited "
                          f"{child.returncode} without JSON output (its stderr is above)"
                          ) from None
    finally:
        out.unlink(missing_ok=True)
    return {"case": case, "seconds": seconds, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit": child.returncode, "output": output}


def replay_lines(files: Sequence[Path], seqs: set[int]) -> list[str]:
    """The log lines holding records `seqs`, as written."""
    found = []
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                seq = int(raw[7:raw.index(b",")])
                if seq in seqs:
                    found.append(raw.decode().rstrip())
    return found


def check_replay_summary(run: dict[str, Any], records: int, files: int) -> None:
    output = run["output"]
    got = (output["records"], output["first_seq"], output["last_seq"], output["damaged"],
           len(output["files"]))
    if run["exit"] != 0 or got != (records, 1, records, 0, files):
        raise replay_fail(f"the summary exited {run['exit']} and counted {got[0]:,} records, "
                          f"seq {got[1]}..{got[2]}, {got[3]:,} damaged lines, {got[4]} files; "
                          f"expected {records:,} records, seq 1..{records}, none damaged, "
                          f"{files} files")


def check_replay_check(run: dict[str, Any], records: int, files: Sequence[Path]) -> None:
    output = run["output"]
    if run["exit"] == 0 and output["violations"] == 0 and output["records"] == records:
        return
    shown = output.get("shown", [])[:5]
    lines = replay_lines(files, {seq for v in shown for seq in v["seqs"]})
    raise replay_fail(
        f"--check exited {run['exit']} with {output['violations']:,} violations in "
        f"{output['records']:,} records (expected none in {records:,}); per rule "
        f"{output['per_rule']}:\n" + "\n".join(
            f"  rule {v['rule']} at seq {v['seqs']}: {v['text']}" for v in shown)
        + "\nrecords:\n" + "\n".join(f"  {line}" for line in lines))


def bench_replay(args: argparse.Namespace) -> dict[str, Any]:
    return in_workdir(args, _bench_replay)


def _bench_replay(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = workdir / "replay-log" / "messages.jsonl"
    out = workdir / "replay-output.json"
    log = write_replay_log(base, args.records)
    files = log_files_of(base)
    print(f"  generated {log['records']:,} records, {log['mb']:,.0f} MB in "
          f"{plural(len(files), 'file')}, in {log['generator_s']:.1f} s", file=sys.stderr)
    # Untimed: the log must be valid before anything is timed (and is then cached).
    validation = run_replay_case("check", base, out)
    check_replay_check(validation, args.records, files)
    baseline_base = workdir / "replay-baseline" / "messages.jsonl"
    baseline_base.parent.mkdir(parents=True, exist_ok=True)
    with files[0].open("rb") as source:
        baseline_base.write_bytes(b"".join(itertools.islice(source, REPLAY_BASELINE_RECORDS)))
    baseline = run_replay_case("summary", baseline_base, out)
    shutil.rmtree(baseline_base.parent)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeat):
        for case in REPLAY_CASES if repeat % 2 == 0 else REPLAY_CASES[::-1]:
            run = run_replay_case(case, base, out)
            if case == "summary":
                check_replay_summary(run, args.records, len(files))
            else:
                check_replay_check(run, args.records, files)
            run["msgs_s"] = round(args.records / run["seconds"], 1)
            runs.append(run)
            print(f"  {case}: {run['seconds']:.2f} s, {run['msgs_s']:,.0f} msgs/s, peak "
                  f"RSS {run['peak_rss_mb']:.0f} MB", file=sys.stderr)
    best = {case: min((r for r in runs if r["case"] == case), key=lambda r: r["seconds"])
            for case in REPLAY_CASES}
    summary = best["summary"]["output"]
    for run in runs:
        run["best"] = any(run is b for b in best.values())
        run["seconds"] = round(run["seconds"], 3)
        del run["output"]
    return {
        "summary_msgs_s": best["summary"]["msgs_s"],
        "check_msgs_s": best["check"]["msgs_s"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "details": {
            "bench": "replay",
            "summary_s": best["summary"]["seconds"],
            "check_s": best["check"]["seconds"],
            "baseline": {"records": REPLAY_BASELINE_RECORDS,
                         "seconds": round(baseline["seconds"], 3),
                         "peak_rss_mb": baseline["peak_rss_mb"]},
            "log": log,
            "mix": {kind: m["sent"] for kind, m in sorted(
                summary["messages"].items(), key=lambda item: -item[1]["sent"])},
            "errors": sum(e["count"] for e in summary["errors"]),
            "notes": validation["output"]["notes"],
            "command": "python -m sqlwarden replay LOG --json [--check]",
            "params": {"records": args.records, "repeat": args.repeat,
                       "file_mb": REPLAY_FILE_BYTES // 1024 // 1024, "seed": REPLAY_SEED},
            "runs": runs,
            "python": sys.version.split()[0],
        },
    }


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def log_files_of(base: Path) -> list[Path]:
    """`base` and its rotated files, oldest first (as the generator named them)."""
    rotated = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, base]


def print_replay(result: dict[str, Any]) -> None:
    details = result["details"]
    log, params = details["log"], details["params"]
    print(f"bench replay: {log['records']:,} records ({log['mb']:,.0f} MB in "
          f"{plural(len(log['files']), 'file')} of at most {params['file_mb']} MB, "
          f"{len(log['runs'])} runs, {log['span_s']:.1f} s of log time, "
          f"{plural(details['errors'], 'error')}) generated in {log['generator_s']:.1f} s; "
          f"each case in its own process, best of {params['repeat']}")
    best = {run["case"]: run for run in details["runs"] if run["best"]}
    labels = {"summary": "summary (replay LOG --json)", "check": "check (replay LOG --check)"}
    print(f"{'case':<30} {'records':>10} {'seconds':>9} {'msgs/s':>10} {'peak RSS MB':>12}")
    for case in REPLAY_CASES:
        run = best[case]
        print(f"{labels[case]:<30} {log['records']:>10,} {run['seconds']:>9.2f} "
              f"{run['msgs_s']:>10,.0f} {run['peak_rss_mb']:>12.0f}")
    baseline = details["baseline"]
    print(f"{'  baseline (summary, ' + format(baseline['records'], ',') + ')':<30} "
          f"{baseline['records']:>10,} {baseline['seconds']:>9.2f} {'':>10} "
          f"{baseline['peak_rss_mb']:>12.0f}")

    def target(name: str, value: float) -> str:
        ok = value >= REPLAY_MSGS_TARGET
        return (f"{name} {value:,.0f} msgs/s (target >= {REPLAY_MSGS_TARGET:,}: "
                f"{'met' if ok else 'NOT met'})")

    rss = result["peak_rss_mb"]
    print(f"{target('summary', result['summary_msgs_s'])}   "
          f"{target('check', result['check_msgs_s'])}   peak RSS {rss:.0f} MB (target <= "
          f"{REPLAY_RSS_TARGET_MB:.0f}: {'met' if rss <= REPLAY_RSS_TARGET_MB else 'NOT met'})")
    print(f"checks: the summary counted {log['records']:,} records, seq 1..{log['records']}, "
          f"in {plural(len(log['files']), 'file')}, none damaged; --check found no violations")



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = parser.add_subparsers(dest="name", metavar="NAME", required=True)
    ingest = names.add_parser("ingest", help="Engine.write_many against raw apsw executemany")
    ingest.add_argument("--rows", type=int, default=1_000_000)
    ingest.add_argument("--batch", type=int, default=1_000)
    ingest.add_argument("--repeat", type=int, default=2)
    ingest.add_argument("--json", type=Path, default=Path("var/bench/ingest.json"),
                        help="where to write the JSON result (default: %(default)s)")
    backfill = names.add_parser("backfill", help="a chunked backfill task against one UPDATE, "
                                "under a steady foreground writer")
    backfill.add_argument("--parents", type=int, default=1_000_000)
    backfill.add_argument("--children", type=int, default=3_000_000)
    backfill.add_argument("--repeat", type=int, default=3)
    backfill.add_argument("--target-ms", type=float, default=BACKFILL_TARGET_MS,
                          help="the task's chunk duration target (default: %(default)s)")
    backfill.add_argument("--yield-ms", type=float, default=BACKFILL_YIELD_MS,
                          help="the task's pause between chunks (default: %(default)s)")
    backfill.add_argument("--json", type=Path, default=Path("var/bench/backfill.json"),
                          help="where to write the JSON result (default: %(default)s)")
    fts = names.add_parser("fts", help="a catch-up into an FTS-indexed table with its triggers "
                           "live against the same with FTS deferral")
    fts.add_argument("--large-rows", type=int, default=300_000,
                     help="rows of catch-up into an empty table (default: %(default)s)")
    fts.add_argument("--base-rows", type=int, default=1_000_000,
                     help="rows already in the table for the small catch-up "
                     "(default: %(default)s)")
    fts.add_argument("--small-rows", type=int, default=10_000,
                     help="rows of the small catch-up (default: %(default)s)")
    fts.add_argument("--batch", type=int, default=2_000,
                     help="rows per write_many (default: %(default)s)")
    fts.add_argument("--repeat", type=int, default=1)
    fts.add_argument("--json", type=Path, default=Path("var/bench/fts.json"),
                     help="where to write the JSON result (default: %(default)s)")
    fts.add_argument("--workdir", type=Path, default=None,
                     help="where the databases go, kept there (default: a temporary "
                     "directory, removed afterwards)")
    share = names.add_parser("fts-share", help="FTS restore by rebuild against incremental "
                             "at several shares of the table changed: the evidence for "
                             "fts_deferral.rebuild_share")
    share.add_argument("--total", type=int, default=FTS_SHARE_TOTAL,
                       help="rows in the table after each catch-up, base plus new "
                       "(default: %(default)s)")
    share.add_argument("--shares", type=parse_shares, default=FTS_SHARES,
                       help="comma-separated shares of the table that are new rows "
                       "(default: 0.2,0.33,0.5,0.67,0.8,0.95)")
    share.add_argument("--batch", type=int, default=2_000,
                       help="rows per write_many (default: %(default)s)")
    share.add_argument("--repeat", type=int, default=1,
                       help="runs per mode and share; the fastest restore counts "
                       "(default: %(default)s)")
    share.add_argument("--json", type=Path, default=Path("var/bench/fts-share.json"),
                       help="where to write the JSON result (default: %(default)s)")
    share.add_argument("--workdir", type=Path, default=None,
                       help="where the databases go, the last base kept there (default: a "
                       "temporary directory, removed afterwards)")
    sync = names.add_parser("sync", help="an ndjson source through engine.sync.run against "
                            "the apsw loop a user writes, with and without FTS")
    sync.add_argument("--rows", type=int, default=500_000,
                      help="ndjson records (default: %(default)s)")
    sync.add_argument("--files", type=int, default=5,
                      help="files the records are split over (default: %(default)s)")
    sync.add_argument("--batch", type=int, default=5_000,
                      help="the source's batch_rows (default: %(default)s)")
    sync.add_argument("--repeat", type=int, default=1,
                      help="runs per case; the fastest counts (default: %(default)s)")
    sync.add_argument("--json", type=Path, default=Path("var/bench/sync.json"),
                      help="where to write the JSON result (default: %(default)s)")
    sync.add_argument("--workdir", type=Path, default=None,
                      help="where the files and databases go, the last ones kept there "
                      "(default: a temporary directory, removed afterwards)")
    # One `sync` case in a fresh process (not listed: `sync` runs it).
    case = names.add_parser("_sync_case")
    case.add_argument("case", choices=SYNC_CASES)
    case.add_argument("--db", type=Path, required=True)
    case.add_argument("--data", type=Path, required=True)
    case.add_argument("--rows", type=int, required=True)
    case.add_argument("--batch", type=int, required=True)
    case.add_argument("--out", type=Path, required=True)
    mirror = names.add_parser("mirror", help="the MySQL mirror against a private MariaDB: a "
                              "cold reconcile against a plain connector loop and sqlite3mysql, "
                              "a restart in sync, and the lag under a steady ingest")
    mirror.add_argument("--rows", type=int, default=1_000_000,
                        help="rows in the device's table (default: %(default)s)")
    mirror.add_argument("--ingest-seconds", type=float, default=60.0,
                        help="how long the steady ingest writes (default: %(default)s)")
    mirror.add_argument("--peer-rows", type=int, default=PEER_ROWS,
                        help="rows sqlite3mysql copies, at most --rows; 0 leaves the peer out "
                        "(default: %(default)s)")
    mirror.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest counts (default: %(default)s)")
    mirror.add_argument("--json", type=Path, default=Path("var/bench/mirror.json"),
                        help="where to write the JSON result (default: %(default)s)")
    mirror.add_argument("--workdir", type=Path, default=None,
                        help="where the SQLite files go, kept there (default: a temporary "
                        "directory, removed afterwards; the server's always is)")
    replay = names.add_parser("replay", help="sqlwarden replay's summary and --check over a "
                              "generated busy engine's message log")
    replay.add_argument("--records", type=int, default=REPLAY_RECORDS,
                        help="records in the generated log (default: %(default)s)")
    replay.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest counts (default: %(default)s)")
    replay.add_argument("--json", type=Path, default=Path("var/bench/replay.json"),
                        help="where to write the JSON result (default: %(default)s)")
    replay.add_argument("--workdir", type=Path, default=None,
                        help="where the log goes, kept there (default: a temporary "
                        "directory, removed afterwards)")
    # One `mirror` case in a fresh process (not listed: `mirror` runs it).
    mirror_one = names.add_parser("_mirror_case")
    mirror_one.add_argument("case", choices=("engine", "raw"))
    mirror_one.add_argument("--db", type=Path, required=True)
    mirror_one.add_argument("--dsn", required=True)
    mirror_one.add_argument("--rows", type=int, required=True)
    mirror_one.add_argument("--ingest-seconds", type=float, required=True)
    mirror_one.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.name == "_sync_case":
        sync_case(args)
        return 0
    if args.name == "_mirror_case":
        mirror_case(args)
        return 0
    if args.name == "ingest":
        if args.rows < 1 or args.batch < 1 or args.repeat < 1:
            parser.error("--rows, --batch and --repeat must be positive")
        result = bench_ingest(args)
        print_ingest(result)
    elif args.name == "fts":
        if min(args.large_rows, args.base_rows, args.small_rows, args.batch, args.repeat) < 1:
            parser.error("--large-rows, --base-rows, --small-rows, --batch and --repeat must "
                         "be positive")
        result = bench_fts(args)
        print_fts(result)
    elif args.name == "fts-share":
        if min(args.total, args.batch, args.repeat) < 1:
            parser.error("--total, --batch and --repeat must be positive")
        threshold = FTS_DEFERRAL_DEFAULTS.threshold_rows
        if any(base < 1 or new < threshold
               for base, new in share_points(args.total, args.shares)):
            parser.error(f"--total too small for --shares: every point needs a base row and "
                         f"at least {threshold:,} new rows (fts_deferral.threshold_rows)")
        result = bench_fts_share(args)
        print_fts_share(result)
    elif args.name == "sync":
        if min(args.rows, args.files, args.batch, args.repeat) < 1:
            parser.error("--rows, --files, --batch and --repeat must be positive")
        if args.files > args.rows:
            parser.error("--files must not exceed --rows")
        result = bench_sync(args)
        print_sync(result)
    elif args.name == "replay":
        if args.records < REPLAY_MIN_RECORDS or args.repeat < 1:
            parser.error(f"--records must be at least {REPLAY_MIN_RECORDS:,} and --repeat "
                         "positive")
        result = bench_replay(args)
        print_replay(result)
    elif args.name == "mirror":
        if min(args.rows, args.repeat) < 1 or args.ingest_seconds <= 0 or args.peer_rows < 0:
            parser.error("--rows, --repeat and --ingest-seconds must be positive, --peer-rows "
                         "not negative")
        result = bench_mirror(args)
        print_mirror(result)
    else:
        if args.parents < 1 or args.children < 1 or args.repeat < 1:
            parser.error("--parents, --children and --repeat must be positive")
        if args.target_ms <= 0 or args.yield_ms < 0:
            parser.error("--target-ms must be positive and --yield-ms not negative")
        result = bench_backfill(args)
        print_backfill(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
