"""One device of the fleet bench, run as the hidden command `_fleet_device` in a process of
its own: an Engine on its own SQLite file and scope, mirroring (through `hosts:` when the
bench gives them), that waits for the bench's go, ingests steadily and reports.

While it runs it appends one JSON line a `SAMPLE_S` to `--samples`: the wall time and its
mirror's view (`node`, `failovers`, `state`, `last_drain_at`, `drained_changes`,
`lag_p99_ms`, `lag_max_ms`), so the bench sees which node each device is on and when it
drained last. The first line is `{"ready": WALL}` once the boot reconcile has ended. At the
end it writes its result (`--out`): the ingest, the drain, a verify of its scope and its
peak memory.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from sqlwarden.config import Config
from sqlwarden.facade import Engine
from sqlwarden.futures import Future

from .common import BackgroundThreads, Result, bench_fail, make_config, vm_hwm_mb
from .corpus import Corpus
from .mirror_setup import iso_micro

CASE_COMMAND = "_fleet_device"
FLEET_TABLE = "readings"
FLEET_YAML = """
database:
  path: {path}
tables:
  readings:
    columns:
      id: {{type: integer, primary_key: true}}
      sensor: text
      updated_at: timestamp
      value: real
      body: text
    indexes:
      - [updated_at]
mirror:
  dsn: {dsn}
  scope: {scope}{hosts}
  batch_rows: {batch}
  poll_ms: {poll_ms}
  connect_timeout_s: 2
  backoff_initial_s: 0.2
  backoff_max_s: 2
message_log: {{enabled: false}}
status: {{enabled: false}}
"""
FLEET_BATCH = 1_000
FLEET_POLL_MS = 100
#: The ingest writes one upsert a tick; `UPDATE_SHARE` of its rows are ids written before.
TICK_S = 0.1
UPDATE_SHARE = 0.2
BODY_WORDS = 16
#: Upserts sent and not yet answered, at most (2 s of writes): sends stay on schedule.
IN_FLIGHT = 20
SAMPLE_S = 0.1
READY_TIMEOUT_S = 180.0
GO_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 600.0
VERIFY_TIMEOUT_S = 600.0


def device_config(db: Path, dsn: str, scope: str, hosts: list[str]) -> Config:
    """The device's config: one table, mirrored to `dsn` for `scope`, over `hosts` when
    given (the password from $SW_MYSQL_PASSWORD)."""
    listed = "" if not hosts else "\n  hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]"
    return make_config(FLEET_YAML, db, dsn=dsn, scope=scope, hosts=listed, batch=FLEET_BATCH,
                       poll_ms=FLEET_POLL_MS)


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--hosts", default="", help="comma-separated host:port, or empty")
    parser.add_argument("--scope", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--go", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)


def fleet_fail(message: str) -> SystemExit:
    return bench_fail("fleet", message)


def case_main(args: argparse.Namespace) -> Result:
    """The device's whole life; its result goes to `--out`."""
    hosts = [h for h in args.hosts.split(",") if h]
    config = device_config(args.db, args.dsn, args.scope, hosts)
    with args.samples.open("a", buffering=1) as samples, Engine(config) as engine:
        _wait(lambda: engine.mirror.view().state == "up"
              and engine.mirror.view().reconciles >= 1, READY_TIMEOUT_S,
              lambda: f"the mirror's first connect ({engine.mirror.view().error})")
        samples.write(json.dumps({"ready": time.time()}) + "\n")
        _wait(args.go.exists, GO_TIMEOUT_S, lambda: "the bench's go")
        with Sampler(engine, samples):
            ingest = steady_ingest(engine, args.rate, args.seconds, args.seed)
            drained_at = wait_drained(engine)
        started = time.perf_counter()
        verify = engine.mirror.verify(timeout=VERIFY_TIMEOUT_S)
        verify_s = time.perf_counter() - started
        view = engine.mirror.view()
        with engine.read() as conn:
            (rows,), = conn.execute(f"SELECT count(*) FROM {FLEET_TABLE}")
    (table,) = verify.tables
    result: Result = {
        "scope": args.scope, "hosts": hosts, "ingest": ingest, "drained_at": drained_at,
        "verify": {"in_sync": verify.in_sync, "error": verify.error,
                   "sqlite_rows": table.sqlite_rows, "mirror_rows": table.mirror_rows,
                   "differing": table.differing, "seconds": round(verify_s, 3)},
        "rows": int(rows), "node": view.node, "failovers": view.failovers,
        "transaction_retries": view.transaction_retries, "reconciles": view.reconciles,
        "reconciles_failed": view.reconciles_failed, "driver": view.driver,
        "peak_rss_mb": round(vm_hwm_mb(), 1),
    }
    args.out.write_text(json.dumps(result) + "\n")
    return result


def _wait(done: Any, timeout_s: float, what: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise fleet_fail(f"timed out after {timeout_s:.0f} s waiting for {what()}")
        time.sleep(0.05)


class Sampler(BackgroundThreads):
    """Every `SAMPLE_S`, the mirror's view as one JSON line (see the module's doc)."""

    def __init__(self, engine: Engine, out: IO[str]) -> None:
        self._engine = engine
        self._out = out
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = (threading.Thread(target=self._run, name="bench-fleet-sample"),)

    def sample(self) -> None:
        view = self._engine.mirror.view()
        self._out.write(json.dumps({
            "t": time.time(), "node": view.node, "failovers": view.failovers, "state": view.state,
            "last_drain_at": view.last_drain_at, "drained": view.drained_changes,
            "lag_p99_ms": view.lag_p99_ms, "lag_max_ms": view.lag_max_ms,
            "reconciles": view.reconciles}) + "\n")

    def _run(self) -> None:
        try:
            while not self._stop.wait(SAMPLE_S):
                self.sample()
            self.sample()
        except BaseException as exc:
            self._error = self._error or exc


def steady_ingest(engine: Engine, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """`rate` rows a second for `seconds`, one upsert a `TICK_S` on a monotonic schedule
    through `engine.upsert(wait=False)` (sends stay on time while earlier writes wait);
    `UPDATE_SHARE` of each tick's rows update earlier ids, the rest are new."""
    corpus = Corpus()
    rng = random.Random(seed)
    ticks = max(1, round(seconds / TICK_S))
    next_id = 1
    sent = new_rows = updates = 0
    behind_max = 0.0
    in_flight: deque[Future[Any]] = deque()
    started = time.perf_counter()
    for tick in range(ticks):
        due = started + tick * TICK_S
        now = time.perf_counter()
        behind_max = max(behind_max, now - due)
        time.sleep(max(0.0, due - now))
        count = round(rate * TICK_S * (tick + 1)) - sent
        at = time.time()
        rows = []
        for i, words in enumerate(corpus.word_rows(rng, count, BODY_WORDS)):
            if next_id > 1 and i < count * UPDATE_SHARE:
                row_id = rng.randrange(1, next_id)
                updates += 1
            else:
                row_id, next_id = next_id, next_id + 1
                new_rows += 1
            rows.append((row_id, f"sensor-{rng.randrange(16):02d}", iso_micro(at),
                         rng.uniform(-40.0, 120.0), " ".join(words)))
        sent += count
        if rows:
            in_flight.append(engine.upsert(FLEET_TABLE, rows, wait=False))
        while len(in_flight) > IN_FLIGHT:
            in_flight.popleft().get()
    while in_flight:
        in_flight.popleft().get()
    elapsed = max(time.perf_counter() - started, ticks * TICK_S)
    return {"seconds": round(elapsed, 3), "rows_sent": sent, "new_rows": new_rows,
            "updates": updates, "rows_s": round(sent / elapsed, 1),
            "behind_schedule_max_s": round(behind_max, 3), "written_at": time.time()}


def wait_drained(engine: Engine) -> float:
    """Wait until the outbox is empty; the wall time it was first seen empty."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        outbox = engine.status()["mirror"]["outbox"]
        if "error" in outbox:
            raise fleet_fail(f"the outbox depth could not be read: {outbox['error']}")
        if outbox["depth"] == 0:
            return time.time()
        if time.monotonic() > deadline:
            raise fleet_fail(f"the outbox still held {outbox['depth']:,} changes "
                             f"{DRAIN_TIMEOUT_S:.0f} s after the last write")
        time.sleep(0.1)
