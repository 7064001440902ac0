"""The made-up message log of a busy engine (`scripts/bench replay`): its two runs, the
facade's writes and polls, the backfill and the mirror's worker, on top of the
machinery in replay_sim.py and the source in replay_source.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from .replay_sim import (
    BACKFILL,
    FACADE,
    FTS,
    HANDLE_DELAY_US,
    MIRROR,
    OK_WRITE,
    PROGRESS,
    REPLAY_SEED,
    SYNC,
    WRITER,
    TaskState,
    jsonl,
    replay_fail,
)
from .replay_source import SourceSimulation

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
EXEC_ERROR_SHARE = 1 / 10_000
STATUS_POLL_US = 1_000_000
CLOCK_US = 5_000
#: Backfill: one chunk in flight, tasks taken in turn; a chunk's rows double from 100 up
#: to what fits CHUNK_TARGET_US, then CHUNK_YIELD_US until the next one.
CHUNK_TARGET_US = 12_000
CHUNK_ROW_US = 6
CHUNK_BASE_US = 300
CHUNK_YIELD_US = 30_000
CHUNKS_PER_S = 20
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


class ReplayLog(SourceSimulation):
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
        super().__init__(base, records, seed)
        self._draws: list[int] = []
        self._execs = [(jsonl({"sql": sql, "params": {"items": params}}), registry)
                       for sql, params, _, registry in REPLAY_EXECUTES]
        self._exec_weights = list(itertools.accumulate(w for _, _, w, _ in REPLAY_EXECUTES))
        self._errors = [jsonl({"type": "WriteError", "message": f"writer.execute failed: "
                               f"ConstraintError: {text}"}) for text in REPLAY_WRITE_ERRORS]
        self.outbox_pending = 0
        self.outbox_seq = 0
        self.mirror_number = 0
        self._verify: tuple[int, int] | None = None  # the facade's mirror.verify: corr, start
        self._tasks: list[TaskState] = []
        self._next_task = 0

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
        self._run_events()
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

    # --- backfill -----------------------------------------------------------------------

    def _backfill_start(self) -> None:
        plan = REPLAY_TASKS[min(len(self.runs), len(REPLAY_TASKS)) - 1]
        # Sized to end at about 85% of the run: the chunks a run has time for, shared.
        chunks = self._run_us / 1e6 * CHUNKS_PER_S * 0.85
        full = CHUNK_TARGET_US // CHUNK_ROW_US
        self._tasks = [TaskState(name, version, max(1_000, int(chunks * share) * full),
                             started_us=self.now, last_chunk_us=self.now)
                       for name, version, share in plan]
        self._next_task = 0
        for task in self._tasks:
            self.write(BACKFILL, "writer.task_state", jsonl({
                "task": task.name, "version": task.version, "fields": {"items": 15}}),
                300, OK_WRITE)
            self._task_event(task, 0, 0.0, "running")
        self._chunk()

    def _task_event(self, task: TaskState, rows: int, seconds: float, state: str) -> None:
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

    def _chunk_done(self, task: TaskState, last: int, processed: int, exhausted: bool) -> None:
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
