"""The made-up message log's source and FTS deferral (`scripts/bench replay`): a source
pumping writer.sync_batch asks, three unanswered at most, with sync.pumped and
progress.event, and around the first run's catch-up one FTS deferral and its restore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .replay_sim import (
    FTS,
    HANDLE_DELAY_US,
    HANDLE_US,
    OK_WRITE,
    REPLAY_SEED,
    SYNC,
    Simulation,
    jsonl,
)

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


class SourceSimulation(Simulation):
    """The Sync actor running one ndjson source on a schedule, and the FTS actor deferring
    and restoring the index for its first, large run."""

    def __init__(self, base: Path, records: int, seed: int = REPLAY_SEED) -> None:
        super().__init__(base, records, seed)
        self.sync_run = 0
        self._sync_token = 0
        self._catchup = True
        self._deferred = False
        self._restore_ms: float | None = None
        self._lease: dict[str, Any] = {}
        self._sync_batches = self._sync_total = self._sync_sent = self._sync_rows = 0
        self._sync_in_flight = self._sync_pending = self._sync_read_at = 0
        self._sync_active = self._sync_reading = self._sync_blocked = False

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
