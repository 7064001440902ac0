"""Source runs: their bookkeeping SQL, how a run is planned, and how a batch is applied.

A run's reading happens on a pump thread (`pump`), which sends each batch to
the Writer as a `SyncBatch`; when and why a run starts is the schedule's
business (`schedule`).

The Writer applies a batch with `apply_batch` in one transaction: rows
upserted, rejects stored, file positions advanced and the run's counters
raised, all together. A batch names how many batches its run has committed
and where each file stood; if the database disagrees, it is refused. So a
batch is never applied twice, and none is applied after a gap. A row the
database or the driver refuses (a constraint, a STRICT type, an integer past
64 bits, a lone surrogate) becomes a reject at its record's position, and the
rest of the batch commits with the positions past it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import apsw

from sqlwarden.config import (
    GeneratorSourceConfig,
    HttpSourceConfig,
    NdjsonSourceConfig,
    SourceConfig,
    TableConfig,
)
from sqlwarden.db.schema import REJECTS_TABLE, SYNC_FILES_TABLE, SYNC_RUNS_TABLE
from sqlwarden.db.sql import quote, upsert_sql
from sqlwarden.errors import SyncError
from sqlwarden.protocol import (
    EndSyncRun,
    ReapSyncRuns,
    Reject,
    StartSyncRun,
    SyncBatch,
    TableRows,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync.sources.base import Reader
from sqlwarden.sync.sources.demo import cursor_of
from sqlwarden.sync.sources.generator import GeneratorReader
from sqlwarden.sync.sources.mapping import (
    key_text,
    raw_text,
    storable,
    unstorable,
    with_column_defaults,
)
from sqlwarden.sync.sources.ndjson import FileState, NdjsonReader
from sqlwarden.views import SyncBatchResult, SyncRunView

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
                rows_per: Callable[[str, int], int],
                redactor: Redactor | None = None) -> SyncBatchResult:
    """Apply one batch inside the caller's transaction; raises `SyncError` if it does not fit.

    `rows_per(table, columns)` is how many rows one statement takes (see
    `engine.sql.rows_per_statement`). `redactor` takes the config's secrets out of
    every reject before it is stored or reported: a record is whatever the source
    held, which may be a secret (a file that was the engine's own environment).
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
    rows = accepted = 0
    rejects = list(message.rejects)
    for part in message.tables:
        refused = len(rejects)
        rows += _upsert(conn, part, rows_per(part.table, len(part.columns)), rejects, message)
        accepted += len(part.rows) - (len(rejects) - refused)
    if redactor is not None:
        rejects = [_redacted(redactor, r) for r in rejects]
    if rejects and message.on_reject == "fail":
        first = rejects[0]
        raise SyncError(f"source {message.source}: record at {first.position} rejected: "
                        f"{first.reason} (on_reject: fail)", source=message.source)
    # A record already rejected (a refetch meets it again) is not stored or counted again.
    rejects = [r for r in rejects if _store_reject(conn, message, r)]
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
    shown = f"{rejects[0].position}: {rejects[0].reason}" if rejects else None
    return SyncBatchResult(rows=rows, rejects=len(rejects), accepted=accepted,
                           first_reject=shown)


#: The note `mapping.raw_text` ends a record cut to its first bytes with.
_CUT_NOTE = re.compile(r"\.\.\.\[[\d,]+ bytes in all; the first [\d,]+ kept\]\Z")


def _redacted_raw(redactor: Redactor, raw: str) -> str:
    """A rejected record's text without secrets, also one its cut ran through."""
    cut = _CUT_NOTE.search(raw)
    if cut is None:
        return redactor.text(raw)
    return redactor.cut_text(raw[:cut.start()]) + cut.group()


def _redacted(redactor: Redactor, reject: Reject) -> Reject:
    """`reject` with the secrets out of every text it holds (raw, reason, position, key)."""
    text = redactor.text
    cursor = text(reject.cursor) if isinstance(reject.cursor, str) else reject.cursor
    return replace(reject, position=text(reject.position), reason=text(reject.reason),
                   raw=_redacted_raw(redactor, reject.raw),
                   record=None if reject.record is None else text(reject.record),
                   cursor=cursor)


def _store_reject(conn: apsw.Connection, message: SyncBatch, reject: Reject) -> bool:
    """Store `reject` unless the same record was rejected with the same raw text; True if new."""
    record = reject.position if reject.record is None else reject.record
    cursor = reject.cursor if unstorable(reject.cursor) is None else None
    conn.execute(
        f"INSERT INTO {REJECTS_TABLE} (source, run, position, reason, raw, at, record, cursor) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, record, raw) DO NOTHING",
        (message.source, message.run, storable(reject.position), storable(reject.reason),
         storable(reject.raw), message.at, storable(record), cursor))
    return bool(conn.changes())


#: What one row can cause, and only that row: a constraint, a value a STRICT column
#: does not take, one too big, or one that cannot be bound at all (an integer past
#: 64 bits, text with a lone surrogate). Anything else (a lock, a full disk, a
#: missing table) is the batch's failure, not a row's.
ROW_ERRORS = (apsw.ConstraintError, apsw.MismatchError, apsw.TooBigError, OverflowError,
              UnicodeEncodeError)


def _upsert(conn: apsw.Connection, part: TableRows, per: int, rejects: list[Reject],
            message: SyncBatch) -> int:
    """Upsert `part.rows`; returns how many were written (a row sent again unchanged is not).

    Rows the database refuses become rejects, or fail the batch under `on_reject: fail`.
    A refused statement is split in halves until the rows it refuses stand alone, so
    one bad row among thousands costs a few statements, not one per row.
    """
    rows = part.rows

    def write(lo: int, hi: int) -> int:
        written = 0
        with _savepoint(conn):
            for start in range(lo, hi, per):
                chunk = rows[start:min(hi, start + per)]
                conn.execute(upsert_sql(part.table, part.columns, part.key, len(chunk),
                                        only_changed=True),
                             tuple(chain.from_iterable(chunk)))
                written += conn.changes()
        return written

    return _isolate(write, 0, len(rows), part, rejects, message) if rows else 0


def _isolate(write: Callable[[int, int], int], lo: int, hi: int, part: TableRows,
             rejects: list[Reject], message: SyncBatch) -> int:
    """`write(lo, hi)`, halving a refused range until each refused row stands alone.

    Not a closure calling itself in `_upsert`: that is a reference cycle, which kept
    every batch's rows alive until the cycle collector ran (RSS grew with the run).
    """
    try:
        return write(lo, hi)
    except ROW_ERRORS as exc:
        if hi - lo > 1:
            mid = (lo + hi) // 2
            return (_isolate(write, lo, mid, part, rejects, message)
                    + _isolate(write, mid, hi, part, rejects, message))
        reject = _refused(part, lo, exc, message)
        if message.on_reject == "fail":
            raise SyncError(f"source {message.source}: record at {reject.position} "
                            f"rejected: {reject.reason} (on_reject: fail)",
                            source=message.source) from exc
        rejects.append(reject)
        return 0


def _refused(part: TableRows, index: int, exc: BaseException, message: SyncBatch) -> Reject:
    """The reject for row `index` of `part`, which the database (or binding) refused."""
    values = part.rows[index]
    position = (f"{part.origin}{part.offsets[index]}" if len(part.offsets) == len(part.rows)
                else f"batch {message.seq} row {index} ({part.table})")
    reason = f"the database refused the row: {exc}"
    if isinstance(exc, (OverflowError, UnicodeEncodeError)):
        for column, value in zip(part.columns, values, strict=True):
            why = unstorable(value)
            if why is not None:
                reason = f"column {column!r}: {why}"
                break
    record = cursor = None
    if part.updated is not None:
        # An API record's place on a page shifts from run to run: its key says which it is.
        record = key_text([values[part.columns.index(c)] for c in part.key])
        value = values[part.columns.index(part.updated)] if part.updated in part.columns \
            else None
        cursor = value if isinstance(value, (str, int, float)) else None
    return Reject(position=position, reason=reason,
                  raw=raw_text(repr(dict(zip(part.columns, values, strict=True)))),
                  record=record, cursor=cursor)


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
    """The newest change the database holds: `MAX(updated)` of the target table, or of
    the source's rejects when a rejected record is newer than every stored row.

    Without the rejects, a rejected newest change would be fetched again by every
    run, and all the changes since the newest stored row with it.
    """
    stored = conn.execute(f"SELECT max({quote(source.updated)}) FROM "
                          f"{quote(source.table)}").get
    rejected = conn.execute(f"SELECT max(cursor) FROM {REJECTS_TABLE} WHERE source = ?",
                            (source.name,)).get
    value = stored if rejected is None else rejected if stored is None else (
        max(stored, rejected) if _comparable(stored, rejected) else stored)
    return None if value is None else str(value)


def _comparable(a: Any, b: Any) -> bool:
    """Both text or both numbers: a reject's cursor of another type says nothing here."""
    numbers = (int, float)
    return (isinstance(a, str) and isinstance(b, str)) or (
        isinstance(a, numbers) and isinstance(b, numbers))


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


def make_reader(conn: apsw.Connection, source: SourceConfig, plan: RunPlan,
                tables: Sequence[TableConfig] = ()) -> Reader:
    """The reader for a run (file positions and cursors read from `conn`).

    `tables` are the declared tables: a mapped source's optional fields take
    their columns' defaults from them.
    """
    if isinstance(source, (NdjsonSourceConfig, HttpSourceConfig)):
        table = next((t for t in tables if t.name == source.table), None)
        source = replace(source, fields=with_column_defaults(source.fields, table))
    if isinstance(source, NdjsonSourceConfig):
        return NdjsonReader(source, file_states(conn, source.name))
    if isinstance(source, HttpSourceConfig):
        # Only here: the HTTP reader loads urllib.request and with it ssl.
        from sqlwarden.sync.sources.http import HttpReader

        return HttpReader(source, since=plan.cursor)
    assert isinstance(source, GeneratorSourceConfig)
    return GeneratorReader(source, cursor_of(conn, source))
