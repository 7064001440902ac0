"""The mirror bench's cases. `engine` and `raw` each run in a fresh interpreter (the hidden
command `_mirror_case`, so each has its own peak memory); `peer` is sqlite3mysql's own
process, installed into the venv when missing.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.facade import Engine
from sqlwarden.futures import Future

from .common import (
    BackgroundThreads,
    Result,
    add_case_options,
    batches,
    finish_case,
    percentile,
    run_case,
    run_measured,
    vm_hwm_mb,
)
from .corpus import Corpus
from .mirror_setup import (
    MIRROR_BODY_WORDS,
    MIRROR_COLUMNS,
    MIRROR_POLL_MS,
    MIRROR_SCOPE,
    MIRROR_TABLE,
    MIRROR_USER,
    PEER_DATABASE,
    RAW_TABLE,
    bench_mysql,
    mirror_config,
    mirror_fail,
    mirror_totals,
    registry_row,
    sqlite_rows,
    table_check_dict,
)

#: The hidden command that runs the engine or the raw case in a fresh process.
CASE_COMMAND = "_mirror_case"
#: Rows per executemany and per commit in the raw loop, and per chunk for the peer.
RAW_BATCH = 1_000
PEER_PACKAGE = "sqlite3-to-mysql"
PEER_COMMAND = "sqlite3mysql"
INGEST_SEED = 7
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


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    add_case_options(parser, ("engine", "raw"))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--ingest-seconds", type=float, required=True)


def case_main(args: argparse.Namespace) -> Result:
    """One case, run in its own subprocess (`_mirror_case`); its result goes to `--out`."""
    if args.case == "engine":
        result = mirror_case_engine(args.db, args.dsn, args.rows, args.ingest_seconds)
    else:
        result = mirror_case_raw(args.db, args.dsn, args.rows)
    return finish_case(args, result)


def run_mirror_case(case: str, db: Path, dsn: str, rows: int,
                    args: argparse.Namespace) -> Result:
    """Run one case in a fresh Python process and return what it reported."""
    return run_case("mirror", CASE_COMMAND, case, db.with_suffix(f".{case}.result.json"),
                    ["--db", str(db), "--dsn", dsn, "--rows", str(rows),
                     "--ingest-seconds", str(args.ingest_seconds)])


class LagProbe(BackgroundThreads):
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
    ticks = max(1, round(seconds / INGEST_TICK_S))
    next_id = first_id
    in_flight: deque[Future[Any]] = deque()
    new_rows = updates = 0
    with LagProbe(engine, config) as probe:
        started = time.perf_counter()
        for tick in range(ticks):
            time.sleep(max(0.0, started + tick * INGEST_TICK_S - time.perf_counter()))
            bodies = list(corpus.word_rows(rng, INGEST_TICK_ROWS, MIRROR_BODY_WORDS))
            now = time.time()
            rows = []
            for i, words in enumerate(bodies):
                if i < INGEST_TICK_UPDATES:
                    row_id = rng.randrange(1, next_id)
                    updates += 1
                else:
                    row_id, next_id = next_id, next_id + 1
                    new_rows += 1
                rows.append(registry_row(rng, row_id, words, now))
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
    started = time.perf_counter()
    rows_read = source.execute(f"SELECT {', '.join(MIRROR_COLUMNS)} FROM {MIRROR_TABLE} "
                               "ORDER BY id")
    for batch in batches(((MIRROR_SCOPE, *row) for row in rows_read), RAW_BATCH):
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
    done = run_measured(command, log, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    output = log.read_text(errors="replace").strip()
    log.unlink()
    if done.returncode != 0:
        return {"error": f"{PEER_COMMAND} exited with status {done.returncode}: "
                         f"{output.splitlines()[-1] if output else 'no output'}"}
    (count,), = server.query(f"SELECT COUNT(*) FROM `{MIRROR_TABLE}`", database=PEER_DATABASE)
    if count != rows:
        return {"error": f"{PEER_COMMAND} wrote {count:,} rows, expected {rows:,}"}
    return {"case": "peer", "seconds": done.seconds, "rows": rows,
            "rows_s": round(rows / done.seconds, 1), "peak_rss_mb": round(done.peak_rss_mb, 1),
            "insert_method": "update", "chunk": RAW_BATCH,
            "connector": "pure Python (it asks for use_pure)"}
