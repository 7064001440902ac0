"""Source runs: their bookkeeping SQL, how a batch is applied, and the pump thread.

The Sync actor owns each source's schedule and run state; the I/O of a run
(files, HTTP) happens on a `Pump` thread, so the actor's handlers never wait
on it. The pump sends each batch to the Writer as a `SyncBatch` and keeps a
few in flight, so reading the next batch overlaps writing the last one.

The Writer applies a batch with `apply_batch` in one transaction: rows
upserted, rejects stored, file positions advanced and the run's counters
raised, all together. A batch names how many batches its run has committed
and where each file stood; if the database disagrees, it is refused. So a
batch is never applied twice, and none is applied after a gap.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import apsw

from sqlwarden.config import (
    Config,
    GeneratorSourceConfig,
    HttpSourceConfig,
    NdjsonSourceConfig,
    SourceConfig,
)
from sqlwarden.db.schema import REJECTS_TABLE, SYNC_FILES_TABLE, SYNC_RUNS_TABLE
from sqlwarden.db.sql import quote, upsert_sql
from sqlwarden.errors import EngineError, EngineStopped, SyncError
from sqlwarden.protocol import (
    BeginCatchUp,
    EndCatchUp,
    EndSyncRun,
    Message,
    PumpEnded,
    PumpProgress,
    ReapSyncRuns,
    Reject,
    StartSyncRun,
    SyncBatch,
)
from sqlwarden.sync.sources.base import Reader, SourceError
from sqlwarden.sync.sources.demo import cursor_of
from sqlwarden.sync.sources.generator import GeneratorReader
from sqlwarden.sync.sources.mapping import raw_text
from sqlwarden.sync.sources.ndjson import FileState, NdjsonReader
from sqlwarden.views import FtsLease, FtsView, SyncBatchResult, SyncRunView

#: Batches a pump keeps at the Writer at once.
IN_FLIGHT = 3
REAPED_ERROR = "process ended"
_RUN_COLUMNS = ("id, source, mode, status, reason, attempt, started_at, ended_at, "
                "rows_written, rejects, error, note")


# --- bookkeeping SQL (run by the Writer) ------------------------------------------------


def start_run(conn: apsw.Connection, message: StartSyncRun) -> int:
    conn.execute(
        f"INSERT INTO {SYNC_RUNS_TABLE} (source, mode, status, reason, attempt, engine_run, "
        "started_at, cursor) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
        (message.source, message.mode, message.reason, message.attempt, message.engine_run,
         message.started_at, message.cursor))
    return int(conn.last_insert_rowid())


def end_run(conn: apsw.Connection, message: EndSyncRun) -> int:
    conn.execute(
        f"UPDATE {SYNC_RUNS_TABLE} SET status = ?, ended_at = ?, error = ?, note = ? "
        "WHERE id = ? AND status = 'running'",
        (message.status, message.ended_at, message.error, message.note, message.run))
    return int(conn.changes())


def reap_runs(conn: apsw.Connection, message: ReapSyncRuns) -> int:
    """Runs left `running` by another engine (a process that is gone) become `failed`."""
    conn.execute(
        f"UPDATE {SYNC_RUNS_TABLE} SET status = 'failed', ended_at = ?, error = ? "
        "WHERE status = 'running' AND engine_run != ?",
        (message.ended_at, REAPED_ERROR, message.engine_run))
    return int(conn.changes())


def apply_batch(conn: apsw.Connection, message: SyncBatch,
                rows_per: Callable[[str, int], int]) -> SyncBatchResult:
    """Apply one batch inside the caller's transaction; raises `SyncError` if it does not fit.

    `rows_per(table, columns)` is how many rows one statement takes (see
    `engine.sql.rows_per_statement`).
    """
    row = conn.execute(f"SELECT batches, status FROM {SYNC_RUNS_TABLE} WHERE id = ?",
                       (message.run,)).fetchone()
    if row is None or row[1] != "running":
        raise SyncError(f"source {message.source}: run {message.run} is not running; batch "
                        "refused", source=message.source)
    if row[0] != message.seq:
        raise SyncError(f"source {message.source}: run {message.run} has committed {row[0]} "
                        f"batches, this one expects {message.seq}; refused so nothing is "
                        "written twice or after a gap", source=message.source)
    for pos in message.files:
        stored = conn.execute(f"SELECT position FROM {SYNC_FILES_TABLE} WHERE source = ? AND "
                              "file = ?", (message.source, pos.file)).fetchone()
        at = stored[0] if stored is not None else 0
        if at != pos.start:
            raise SyncError(f"source {message.source}: {pos.file} is recorded read to byte "
                            f"{at:,}, the batch starts at {pos.start:,}; refused",
                            source=message.source)
    rows = 0
    rejects = list(message.rejects)
    for part in message.tables:
        rows += _upsert(conn, part.table, part.columns, part.key, part.rows,
                        rows_per(part.table, len(part.columns)), rejects, message)
    if rejects:
        if message.on_reject == "fail":
            first = rejects[0]
            raise SyncError(f"source {message.source}: record at {first.position} rejected: "
                            f"{first.reason} (on_reject: fail)", source=message.source)
        conn.executemany(
            f"INSERT INTO {REJECTS_TABLE} (source, run, position, reason, raw, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(message.source, message.run, r.position, r.reason, r.raw, message.at)
             for r in rejects])
    for pos in message.files:
        conn.execute(
            f"INSERT INTO {SYNC_FILES_TABLE} (source, file, position, size, done, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, file) DO UPDATE SET "
            "position = excluded.position, size = excluded.size, done = excluded.done, "
            "updated_at = excluded.updated_at",
            (message.source, pos.file, pos.end, pos.size, int(pos.done), message.at))
    conn.execute(f"UPDATE {SYNC_RUNS_TABLE} SET batches = batches + 1, "
                 "rows_written = rows_written + ?, rejects = rejects + ? WHERE id = ?",
                 (rows, len(rejects), message.run))
    return SyncBatchResult(rows=rows, rejects=len(rejects))


def _upsert(conn: apsw.Connection, table: str, columns: tuple[str, ...], key: tuple[str, ...],
            rows: tuple[Any, ...], per: int, rejects: list[Reject], message: SyncBatch) -> int:
    """Upsert `rows`; returns how many were written (a row sent again unchanged is not).

    Rows the database refuses become rejects, or fail the batch under `on_reject: fail`.
    """
    try:
        written = 0
        with _savepoint(conn):
            for start in range(0, len(rows), per):
                chunk = rows[start:start + per]
                conn.execute(upsert_sql(table, columns, key, len(chunk), only_changed=True),
                             tuple(chain.from_iterable(chunk)))
                written += conn.changes()
        return written
    except apsw.ConstraintError as exc:
        if message.on_reject == "fail":
            raise SyncError(f"source {message.source}: the database refused a row of batch "
                            f"{message.seq} ({table}): {exc} (on_reject: fail)",
                            source=message.source) from exc
    # One row at a time, to keep what fits and reject only what does not.
    written = 0
    sql = upsert_sql(table, columns, key, 1, only_changed=True)
    for index, values in enumerate(rows):
        try:
            with _savepoint(conn):
                conn.execute(sql, values)
                written += conn.changes()
        except apsw.ConstraintError as exc:
            rejects.append(Reject(position=f"batch {message.seq} row {index} ({table})",
                                  reason=f"the database refused the row: {exc}",
                                  raw=raw_text(repr(dict(zip(columns, values, strict=True))))))
    return written


@contextlib.contextmanager
def _savepoint(conn: apsw.Connection) -> Any:
    conn.execute("SAVEPOINT sw_sync")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO sw_sync; RELEASE sw_sync")
        raise
    conn.execute("RELEASE sw_sync")


# --- reads (any connection) -------------------------------------------------------------


def run_view(row: tuple[Any, ...]) -> SyncRunView:
    (id_, source, mode, status, reason, attempt, started, ended, rows, rejects, error,
     note) = row
    return SyncRunView(id=id_, source=source, mode=mode, status=status, reason=reason,
                       attempt=attempt, started_at=started, ended_at=ended, rows=rows,
                       rejects=rejects, error=error, note=note)


def history(conn: apsw.Connection, source: str | None = None,
            limit: int = 20) -> list[SyncRunView]:
    """The newest runs first, of one source or all."""
    where, params = ("WHERE source = ?", (source,)) if source else ("", ())
    return [run_view(r) for r in conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM {SYNC_RUNS_TABLE} {where} ORDER BY id DESC LIMIT ?",
        (*params, limit))]


def last_run(conn: apsw.Connection, source: str, *, completed: bool = False,
             status: str | None = None, mode: str | None = None) -> SyncRunView | None:
    clauses, params = ["source = ?"], [source]
    if completed:
        clauses.append("status != 'running'")
    if status:
        clauses.append("status = ?")
        params.append(status)
    if mode:
        clauses.append("mode = ?")
        params.append(mode)
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM {SYNC_RUNS_TABLE} WHERE "
                       f"{' AND '.join(clauses)} ORDER BY id DESC LIMIT 1", params).fetchone()
    return run_view(row) if row is not None else None


def first_started(conn: apsw.Connection, source: str) -> float | None:
    value = conn.execute(f"SELECT min(started_at) FROM {SYNC_RUNS_TABLE} WHERE source = ?",
                         (source,)).get
    return None if value is None else float(value)


def reject_counts(conn: apsw.Connection) -> dict[str, int]:
    return dict(conn.execute(f"SELECT source, count(*) FROM {REJECTS_TABLE} GROUP BY source"))


def file_states(conn: apsw.Connection, source: str) -> dict[str, FileState]:
    return {name: FileState(position, size, bool(done)) for name, position, size, done in
            conn.execute(f"SELECT file, position, size, done FROM {SYNC_FILES_TABLE} "
                         "WHERE source = ?", (source,))}


def http_cursor(conn: apsw.Connection, source: HttpSourceConfig) -> str | None:
    """`MAX(updated)` of the target table: the newest change the database holds."""
    value = conn.execute(f"SELECT max({quote(source.updated)}) FROM "
                         f"{quote(source.table)}").get
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What a run will do: its mode and, for HTTP, the cursor it starts from."""

    mode: str
    cursor: str | None
    why: str


def plan_run(conn: apsw.Connection, source: SourceConfig, requested: str,
             now: float) -> RunPlan:
    """Pick the run's mode: `full` for a first run or when a full refetch is due."""
    if isinstance(source, HttpSourceConfig):
        cursor = http_cursor(conn, source)
        if requested == "full":
            return RunPlan("full", None, "requested")
        if cursor is None:
            return RunPlan("full", None, "the table is empty")
        if requested == "incremental" or source.full_every_s is None:
            return RunPlan("incremental", cursor, "since the newest stored change")
        # Anchored at the last full refetch that succeeded or, before there is one,
        # at the first run: an interrupted first catch-up goes on from the data.
        full = last_run(conn, source.name, status="ok", mode="full")
        anchor = full.ended_at if full is not None else first_started(conn, source.name)
        if anchor is None or now - anchor >= source.full_every_s:
            return RunPlan("full", None, "a full refetch is due (full_every)")
        return RunPlan("incremental", cursor, "since the newest stored change")
    if isinstance(source, NdjsonSourceConfig):
        # Files are read from their recorded positions whatever is asked.
        started = bool(file_states(conn, source.name))
        return RunPlan("incremental" if started else "full", None,
                       "new lines" if started else "first read of the directory")
    reg, obs = cursor_of(conn, source)
    mode = "incremental" if (reg or obs) else "full"
    return RunPlan(mode, None, "from the first missing id")


def make_reader(conn: apsw.Connection, source: SourceConfig, plan: RunPlan) -> Reader:
    """The reader for a run (file positions and cursors read from `conn`)."""
    if isinstance(source, NdjsonSourceConfig):
        return NdjsonReader(source, file_states(conn, source.name))
    if isinstance(source, HttpSourceConfig):
        # Only here: the HTTP reader loads urllib.request and with it ssl.
        from sqlwarden.sync.sources.http import HttpReader

        return HttpReader(source, since=plan.cursor)
    assert isinstance(source, GeneratorSourceConfig)
    return GeneratorReader(source, cursor_of(conn, source))


# --- the pump ---------------------------------------------------------------------------


def resident_mb() -> float:
    """This process's resident memory now, in MB."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Ask = Callable[[str, Message], Any]
Tell = Callable[[str, Message], None]


class Pump:
    """Runs one source run on its own thread: read, send batches, end the FTS lease.

    It reports each committed batch to the Sync actor (`PumpProgress`) and,
    once every batch it sent is answered, how the run ended (`PumpEnded`).
    """

    def __init__(self, *, source: SourceConfig, run: int, reader: Reader, ask: Ask,
                 tell: Tell, config: Config, wall: Callable[[], float] = time.time,
                 memory_mb: Callable[[], float] = resident_mb) -> None:
        self.source = source
        self.run = run
        self.reader = reader
        self._ask = ask
        self._tell = tell
        self._fts = config.fts_deferral
        self._wall = wall
        self._memory_mb = memory_mb
        self.stop = threading.Event()
        self.rows = 0
        self.rejects = 0
        self.total: int | None = None
        self.lease: FtsLease | None = None
        self.fts_after: FtsView | None = None
        self.ended: PumpEnded | None = None
        #: True when `stop` ended the run before the source was read to its end.
        self.interrupted = False
        self._seq = 0
        self._thread = threading.Thread(target=self._main, name=f"sync-{source.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self._run()
        except BaseException as exc:  # every way out is reported to the actor
            error = exc
        ended = self._ended(error)
        self.ended = ended
        with contextlib.suppress(EngineStopped):
            self._tell("sync", ended)

    def _ended(self, error: BaseException | None) -> PumpEnded:
        failure = None
        retry_after = None
        text = None
        if isinstance(error, SourceError):
            failure, retry_after, text = error.failure, error.retry_after_s, str(error)
        elif isinstance(error, SyncError):
            failure, text = "fatal", str(error)
        elif isinstance(error, EngineStopped):
            failure, text = "retry", f"the engine stopped: {error}"
        elif isinstance(error, EngineError):
            failure, text = "retry", str(error)
        elif error is not None:
            failure, text = "retry", f"{type(error).__name__}: {error}"
        return PumpEnded(source=self.source.name, run=self.run, rows=self.rows,
                         rejects=self.rejects, error=text, failure=failure,
                         retry_after_s=retry_after, note=self.reader.note,
                         stopped=self.interrupted and error is None,
                         fts_lease=self.lease, fts_after=self.fts_after)

    def _run(self) -> None:
        backlog = self.reader.backlog()
        self.total = backlog.rows
        self._progress(0, 0.0)
        if backlog.rows is not None:
            self._maybe_defer(backlog.rows)
        in_flight: deque[tuple[Any, int, float]] = deque()
        primary: BaseException | None = None
        read = 0  # records read so far
        try:
            for prepared in self.reader.batches():
                if self.stop.is_set():
                    self.interrupted = True
                    break
                self._check_memory()
                read += prepared.rows + len(prepared.rejects)
                if self.lease is None and backlog.rows is None:
                    # The backlog shows itself as pages arrive.
                    self._maybe_defer(read)
                message = SyncBatch(source=self.source.name, run=self.run, seq=self._seq,
                                    tables=tuple(prepared.tables),
                                    rejects=tuple(prepared.rejects),
                                    files=tuple(prepared.files),
                                    on_reject=self.source.on_reject, at=self._wall())
                self._seq += 1
                in_flight.append((self._ask("writer", message), prepared.rows,
                                  time.perf_counter()))
                while len(in_flight) >= IN_FLIGHT:
                    self._settle(in_flight.popleft())
        except BaseException as exc:
            primary = exc
            raise
        finally:
            # Whatever happened, learn what every batch sent did before ending. The
            # error that ended the loop stays the run's error: the batches after a
            # failed one are refused (they would leave a gap), which says nothing new.
            first_error: BaseException | None = None
            while in_flight:
                try:
                    self._settle(in_flight.popleft())
                except BaseException as exc:
                    first_error = first_error or exc
            try:
                if self.lease is not None:
                    self.fts_after = self._ask("fts", EndCatchUp(source=self.source.name)).get()
            except BaseException as exc:
                first_error = first_error or exc
            if first_error is not None and primary is None:
                raise first_error

    def _maybe_defer(self, rows: int) -> None:
        if self._fts.enabled and rows >= self._fts.threshold_rows and self.lease is None:
            self.lease = self._ask("fts", BeginCatchUp(source=self.source.name,
                                                       backlog_rows=rows)).get()

    def _settle(self, item: tuple[Any, int, float]) -> None:
        future, _, sent_at = item
        result: SyncBatchResult = future.get()
        self.rows += result.rows
        self.rejects += result.rejects
        self._progress(result.rows, time.perf_counter() - sent_at)

    def _progress(self, batch_rows: int, batch_s: float) -> None:
        with contextlib.suppress(EngineStopped):
            self._tell("sync", PumpProgress(source=self.source.name, run=self.run,
                                            rows=self.rows, rejects=self.rejects,
                                            batch_rows=batch_rows, batch_s=batch_s,
                                            total=self.total))

    def _check_memory(self) -> None:
        limit = self.source.memory_limit_mb
        used = self._memory_mb()
        if used > limit:
            raise SourceError(f"memory guard: the process uses {used:,.0f} MB, over "
                              f"memory_limit_mb {limit:,} for source {self.source.name}; "
                              "the run stopped")


def stopped_note(note: str | None) -> str:
    return "stopped with the engine" + (f"; {note}" if note else "")

