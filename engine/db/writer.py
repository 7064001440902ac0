"""What the Writer does with its connection, as plain code a test can drive.

`WriterCore` owns no thread: the Writer actor calls it. It commits a group of
foreground writes in one transaction, each message all-or-nothing (see
`commit_group`), keeps a sender's SQL from ending that transaction, picks
the shape of bulk statements per table (see `engine.sql.rows_per_statement`),
and manages the WAL: PASSIVE checkpoints when idle, RESTART once the WAL
passes the configured threshold, TRUNCATE when readers let it grow past
twice that.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from itertools import chain
from typing import Any, cast

import apsw

from sqlwarden.config import Config, TableConfig
from sqlwarden.db.checksum import table_checksum
from sqlwarden.db.connect import (
    file_size,
    no_busy_wait,
    savepoint,
    transaction,
    variable_limit,
)
from sqlwarden.db.faults import wait_reason
from sqlwarden.db.rules import (
    EngineObjects,
    Preparing,
    pragma_refusal,
    refusal,
    statement_refusal,
    trigger_refusal,
)
from sqlwarden.db.schema import (
    META_TABLE,
    MIRROR_QUARANTINE_TABLE,
    MIRROR_RANGES_TABLE,
    OUTBOX_TABLE,
)
from sqlwarden.db.sql import insert_sql, rows_per_statement, upsert_sql
from sqlwarden.db.values import bad_row, bad_rowid
from sqlwarden.errors import (
    BadRowError,
    EngineError,
    FtsError,
    TaskError,
    UnexpectedMessage,
    WriteError,
)
from sqlwarden.fts import deferral as fts
from sqlwarden.protocol import (
    DeferFts,
    EndSyncRun,
    Execute,
    ExecuteBatch,
    InsertRows,
    Message,
    OutboxDrained,
    QuarantineMirrorRows,
    ReapSyncRuns,
    RestoreFts,
    RunChunk,
    SaveMirrorRanges,
    SaveProgress,
    SaveTask,
    SetMeta,
    StartSyncRun,
    SyncBatch,
    UpdateFtsDeferral,
    UpsertRows,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync import runs as sync
from sqlwarden.tasks.chunks import (
    SAVE_PROGRESS_SQL,
    TaskPlan,
    chunk_name,
    load_callable,
    run_chunk,
    save_task_sql,
)
from sqlwarden.views import (
    CheckpointResult,
    ChecksumsResult,
    ChunkResult,
    FtsDeferralView,
    FtsInspection,
    FtsRestoreResult,
    SyncBatchResult,
    WriteResult,
    WriterState,
)

CHECKPOINT_MODES = {
    "passive": apsw.SQLITE_CHECKPOINT_PASSIVE,
    "full": apsw.SQLITE_CHECKPOINT_FULL,
    "restart": apsw.SQLITE_CHECKPOINT_RESTART,
    "truncate": apsw.SQLITE_CHECKPOINT_TRUNCATE,
}


class _TransactionEnded(Exception):
    """A message ended the group's transaction; the group runs again without it."""


class _Guarded:
    """The Writer's connection as a sender's SQL sees it: always prepared under the rules.

    SQLite asks the authorizer only while preparing, and apsw reuses a
    prepared statement by its text: a sender's statement with the text of
    one the engine ran unguarded (`DELETE FROM _sw_meta WHERE key = ?`) would
    skip every rule. So statements run through this bypass the cache
    (measured: under 1 us more per statement). The engine's own statements
    inside a guarded block (a chunk's checkpoint update) run unguarded.
    SQLite does not ask the authorizer about VACUUM: each statement is looked
    at once SQLite has cut it from the text, before it runs
    (`rules.statement_refusal`, through the cursor's exec trace).

    Not an `apsw.Cursor` subclass installed as the connection's cursor
    factory: that put every cursor of the Writer through Python, and the
    factory closure tied the connection into a reference cycle with its
    `WriterCore`; a CI run crashed (SIGSEGV) in the factory while the cycle
    collector ran. Here each cursor is a plain one, made, traced and dropped.
    """

    def __init__(self, core: WriterCore) -> None:
        self._core = core

    def execute(self, statements: str, bindings: Any = None) -> apsw.Cursor:
        core = self._core
        if statements in core._trusted:
            core._guarding = False
            try:
                return core.conn.execute(statements, bindings)
            finally:
                core._guarding = True
        return self._cursor().execute(statements, bindings, can_cache=False)

    def executemany(self, statements: str, sequenceofbindings: Any) -> apsw.Cursor:
        return self._cursor().executemany(statements, sequenceofbindings, can_cache=False)

    def changes(self) -> int:
        return int(self._core.conn.changes())

    def _cursor(self) -> apsw.Cursor:
        cursor = self._core.conn.cursor()
        self._core._preparing = Preparing()
        # Also called for statements the caller steps to after `execute` returns.
        cursor.exec_trace = self._core._check_statement
        return cursor


Outcome = WriteResult | SyncBatchResult | EngineError


class WriterCore:
    """Runs write messages and checkpoints on the one read-write connection."""

    def __init__(self, conn: apsw.Connection, config: Config, *,
                 clock: Callable[[], float] = time.monotonic,
                 tasks: Sequence[TaskPlan] = ()) -> None:
        self.conn = conn
        self.config = config
        self.tasks = {plan.task.name: plan for plan in tasks}
        self._callables: dict[str, Callable[..., object]] = {}
        self._clock = clock
        self._db_path = str(config.database.path)
        self._wal_path = self._db_path + "-wal"
        self.variable_limit = variable_limit(conn)
        self._indexed = {t.name: has_secondary_index(t) for t in config.tables}
        self.page_size = int(conn.pragma("page_size"))
        self.wal_threshold_bytes = int(config.database.wal_threshold_mb * 1024 * 1024)
        self.idle_after_s = config.database.checkpoint_idle_ms / 1000
        self.wal_frames = 0
        self.messages = 0
        self.transactions = 0
        self.rows_written = 0
        self.failed_messages = 0
        self.checkpoints = 0
        self.forced_checkpoints = 0
        self.busy_checkpoints = 0
        #: What the last transaction or checkpoint waited for; None after a success.
        self.waiting_for: str | None = None
        self.waits = 0
        self.last_write_at = clock()
        self._guarding = False
        self._refused: str | None = None
        self._owned = EngineObjects.of(config, conn)
        #: What the guarded statement being prepared did so far (see `rules.Preparing`).
        self._preparing = Preparing()
        #: The engine's own statements inside a guarded block (a chunk's checkpoint).
        self._trusted = frozenset(plan.checkpoint_sql for plan in tasks)
        conn.set_wal_hook(self._on_wal_commit)
        conn.authorizer = self._authorize
        self._guarded = _Guarded(self)
        #: Takes the config's secrets out of source rejects before they are stored.
        self._redactor = Redactor(config.secrets)

    def close(self) -> None:
        """Close the connection, first dropping the hooks that point back at this core.

        The authorizer and WAL hook are bound methods: left in place they tie
        the connection and the core into a cycle only the cycle collector
        frees, on whichever thread it happens to run.
        """
        self.conn.authorizer = None
        self.conn.set_wal_hook(None)
        self.conn.close()

    def _on_wal_commit(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        # Runs inside COMMIT: only note the size here, checkpoint afterwards.
        self.wal_frames = pages
        return apsw.SQLITE_OK

    # --- writes -------------------------------------------------------------------------

    def commit_group(self, messages: Sequence[Message]) -> list[Outcome]:
        """Apply `messages` in one transaction, each all-or-nothing.

        Returns one outcome per message, in order: its `WriteResult`, or the
        error that rolled it back. If the transaction itself cannot begin or
        commit, every message gets that error. Checkpoints are not run here:
        the caller answers the senders first, then calls `after_commit`.

        The group first runs without savepoints: a savepoint copies each page
        it first touches into a statement journal (measured: 15% of bulk
        insert time). Only when a message fails is the whole transaction
        rolled back and the group run again with one savepoint per message,
        so the failure stays that message's own. Nothing was committed in
        between, so the group still takes effect exactly once.
        """
        try:
            with transaction(self.conn):
                outcomes: list[Outcome] = [self.apply(m) for m in messages]
        except Exception as exc:
            if self._met(exc) is not None:
                # A lock held elsewhere or a full disk is no message's own fault:
                # running the group again message by message would only meet it
                # again (a lock for another whole busy timeout). Nothing committed.
                self.failed_messages += len(messages)
                return [as_engine_error(m, exc, path=self._db_path) for m in messages]
            if len(messages) > 1:
                return self._commit_isolated(messages)
            outcomes = [as_engine_error(messages[0], exc, path=self._db_path)]
            self.failed_messages += 1
            return outcomes
        self._committed(messages, outcomes)
        return outcomes

    def _commit_isolated(self, messages: Sequence[Message]) -> list[Outcome]:
        # A message may end the whole transaction, not just its savepoint
        # (INSERT OR ROLLBACK, RAISE(ROLLBACK) in a trigger, a full disk):
        # it fails alone, and the group runs again without it.
        culprits: dict[int, Outcome] = {}
        while True:
            outcomes = dict(culprits)
            try:
                with transaction(self.conn):
                    for i, message in enumerate(messages):
                        if i in outcomes:
                            continue
                        try:
                            with savepoint(self.conn):
                                outcomes[i] = self.apply(message)
                        except Exception as exc:
                            outcomes[i] = as_engine_error(message, exc, path=self._db_path)
                        if not self.conn.in_transaction:
                            culprits[i] = (outcomes[i] if isinstance(outcomes[i], EngineError)
                                           else _ended_transaction(message))
                            raise _TransactionEnded
            except _TransactionEnded:
                continue
            except Exception as exc:  # BEGIN or COMMIT failed: nothing committed
                self._met(exc)
                failed: list[Outcome] = [
                    culprits.get(i, as_engine_error(m, exc, path=self._db_path))
                    for i, m in enumerate(messages)]
                self.failed_messages += len(failed)
                return failed
            ordered = [outcomes[i] for i in range(len(messages))]
            self._committed(messages, ordered)
            return ordered

    def _committed(self, messages: Sequence[Message], outcomes: Sequence[Outcome]) -> None:
        self.transactions += 1
        self.waiting_for = None
        self.messages += len(messages)
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, EngineError):
                self.failed_messages += 1
            elif isinstance(message, (InsertRows, UpsertRows)):
                self.rows_written += len(message.rows)
            elif isinstance(outcome, SyncBatchResult):
                self.rows_written += outcome.rows
        self.last_write_at = self._clock()

    def apply(self, message: Message) -> WriteResult | SyncBatchResult:
        """Run one write message inside the caller's transaction."""
        match message:
            case Execute(sql=sql, params=params):
                with self._guard(message):
                    self._guarded.execute(sql, params).fetchall()
                return WriteResult(changes=self.conn.changes(),
                                   last_rowid=self.conn.last_insert_rowid())
            case ExecuteBatch(statements=statements):
                changes = 0
                with self._guard(message):
                    for statement in statements:
                        self._guarded.execute(statement.sql, statement.params).fetchall()
                        changes += self.conn.changes()
                return WriteResult(changes=changes, last_rowid=self.conn.last_insert_rowid())
            case InsertRows(table=table, columns=columns):
                return self._bulk(message, lambda n: insert_sql(table, columns, n))
            case UpsertRows(table=table, columns=columns, key=key):
                return self._bulk(message, lambda n: upsert_sql(table, columns, key, n))
            case SaveTask(task=task, version=version, fields=fields):
                names = [name for name, _ in fields]
                self.conn.execute(save_task_sql(names),
                                  (task, version, *(value for _, value in fields)))
                return WriteResult(changes=self.conn.changes())
            case SaveProgress():
                self.conn.execute(
                    SAVE_PROGRESS_SQL,
                    (message.rate_rows_s, message.eta_s, message.waiting, message.at,
                     message.task, message.version))
                if self.conn.changes() != 1:
                    # Progress that lands nowhere must not look saved.
                    raise TaskError(f"no _sw_tasks row for {message.task}@{message.version}; "
                                    "progress not saved", task=message.task)
                return WriteResult(changes=1)
            case SyncBatch():
                return sync.apply_batch(self.conn, message, self._rows_per, self._redactor)
            case StartSyncRun():
                run = sync.start_run(self.conn, message)
                return WriteResult(changes=1, last_rowid=run)
            case EndSyncRun():
                return WriteResult(changes=sync.end_run(self.conn, message))
            case ReapSyncRuns():
                return WriteResult(changes=sync.reap_runs(self.conn, message))
            case OutboxDrained(upto_seq=upto, stale_ranges=stale):
                # One transaction: a drained change never leaves its range's digest standing.
                self.conn.executemany(f"UPDATE {MIRROR_RANGES_TABLE} SET digest = NULL "
                                      "WHERE tbl = ? AND ord = ?", stale)
                self.conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE seq <= ?", (upto,))
                return WriteResult(changes=self.conn.changes())
            case SaveMirrorRanges(table=table, shape=shape, ranges=ranges):
                self.conn.execute(f"DELETE FROM {MIRROR_RANGES_TABLE} WHERE tbl = ?", (table,))
                self.conn.executemany(
                    f"INSERT INTO {MIRROR_RANGES_TABLE} (tbl, ord, hi, rows, digest, shape) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(table, i, hi, rows, digest, shape)
                     for i, (hi, rows, digest) in enumerate(ranges)])
                return WriteResult(changes=len(ranges))
            case QuarantineMirrorRows(add=add, clear=clear, retry=retry, at=at):
                self.conn.executemany(f"DELETE FROM {MIRROR_QUARANTINE_TABLE} "
                                      "WHERE tbl = ? AND k = ?", clear)
                self.conn.executemany(
                    f"INSERT INTO {MIRROR_QUARANTINE_TABLE} (tbl, k, reason, at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (tbl, k) DO UPDATE SET "
                    "reason = excluded.reason, at = excluded.at", add)
                changes = len(add) + len(clear)
                if retry:
                    # A key already pending is tried with that change anyway.
                    self.conn.execute(
                        f"INSERT OR IGNORE INTO {OUTBOX_TABLE} (tbl, k, op, at) "
                        f"SELECT tbl, k, 'upsert', ? FROM {MIRROR_QUARANTINE_TABLE}", (at,))
                    row = self.conn.execute(
                        f"SELECT count(*) FROM {MIRROR_QUARANTINE_TABLE}").fetchone()
                    changes = int(row[0]) if row is not None else 0
                return WriteResult(changes=changes)
            case SetMeta(key=key, value=None):
                self.conn.execute(f"DELETE FROM {META_TABLE} WHERE key = ?", (key,))
                return WriteResult(changes=self.conn.changes())
            case SetMeta(key=key, value=value):
                self.conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?) "
                                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                  (key, value))
                return WriteResult(changes=self.conn.changes())
            case _:
                raise UnexpectedMessage("writer", message)

    # --- background chunks --------------------------------------------------------------

    def run_chunk(self, message: RunChunk, *, yielded_to: int = 0) -> ChunkResult:
        """Run one chunk of a task in its own transaction; raises `TaskError` on failure.

        A chunk that met a lock held by another process or a full disk
        committed nothing; its `TaskError` keeps the cause and says what it
        waits for (`waiting_for`), so the task retries the same chunk later.
        """
        plan = self.tasks.get(message.task)
        ident = f"{message.task}@{message.version}"
        if plan is None or plan.task.version != message.version:
            raise TaskError(f"task {ident} is not declared", task=message.task)
        started = time.perf_counter()
        try:
            fn = self._callable(plan) if plan.select_sql[0] else None
            with transaction(self.conn), self._guard(message):
                # The task's SQL is a sender's too (`_Guarded`); only the shape is apsw's.
                outcome = run_chunk(cast("apsw.Connection", self._guarded), plan,
                                    run_id=message.run_id,
                                    after=message.after, bound=message.bound,
                                    rows=message.rows, fn=fn)
        except Exception as exc:
            self.failed_messages += 1
            reason = self._met(exc)
            if isinstance(exc, TaskError):
                raise
            error = TaskError(f"task {ident}: {chunk_name(message.after)} "
                              f"{'waits, ' + reason if reason else 'failed'}: {exc}",
                              task=message.task)
            error.waiting_for = reason
            error.retryable = reason is not None
            raise error from exc
        duration_ms = (time.perf_counter() - started) * 1000
        self.transactions += 1
        self.waiting_for = None
        self.messages += 1
        self.last_write_at = self._clock()
        return ChunkResult(after=message.after, last=outcome.last, scanned=outcome.scanned,
                           processed=outcome.processed, exhausted=outcome.exhausted,
                           duration_ms=duration_ms, yielded_to=yielded_to)

    def _callable(self, plan: TaskPlan) -> Callable[..., object]:
        fn = self._callables.get(plan.task.name)
        if fn is None:
            fn = self._callables[plan.task.name] = load_callable(plan.task)
        return fn

    @contextmanager
    def _guard(self, message: Message) -> Iterator[None]:
        """Run a sender's own SQL with the authorizer refusing what would break the group."""
        self._refused = None
        self._guarding = True
        try:
            yield
        except apsw.Error as exc:
            # A refusal fails the statement's prepare at once (an AuthError, or an
            # SQLError for a function), so a reason noted here is this error's.
            if self._refused is None:
                raise
            raise WriteError(f"{message.kind}: {self._refused}",
                             message_kind=message.kind) from exc
        finally:
            self._guarding = False

    def _check_statement(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        # Runs before each guarded statement runs (apsw's exec trace); False stops it
        # with `ExecTraceAbort`, which `_guard` turns into the reason.
        self._preparing = Preparing()  # the next statement's prepare starts afresh
        why = statement_refusal(sql)
        if why is None:
            return True
        self._refused = why
        return False

    def _authorize(self, code: int, first: str | None, second: str | None,
                   database: str | None, trigger: str | None) -> int:
        # Runs while SQLite prepares a statement; cheap when not guarding.
        if trigger is not None:
            why = trigger_refusal(self._owned, code, first, trigger)
            if why is None:
                return apsw.SQLITE_OK
            if not self._guarding:
                # The engine's own write fired someone's trigger: say why it failed.
                raise WriteError(why, message_kind="writer.authorize")
            self._refused = why
            return apsw.SQLITE_DENY
        if not self._guarding:
            return apsw.SQLITE_OK
        why = refusal(self._owned, code, first, second, database, preparing=self._preparing)
        if why is not None:
            self._refused = why
            return apsw.SQLITE_DENY
        self._preparing.note(self._owned, code, first, second)
        if code in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            self._refused = ("transaction statements are not accepted; each message is "
                             "already one transaction")
            return apsw.SQLITE_DENY
        if code == apsw.SQLITE_PRAGMA and first is not None:
            why = pragma_refusal(first, second)
            if why is not None:
                self._refused = why
                return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    def _rows_per(self, table: str, width: int) -> int:
        # Multi-row statements even into indexed tables: a source's batches are
        # written while its reading thread parses the next ones, and one
        # statement per row would hand the GIL over once per row (measured:
        # `scripts/bench sync` reached 105k rows/s with one-row statements,
        # counted with RETURNING, against 155k with these).
        return rows_per_statement(self.variable_limit, width, indexed=False)

    def _bulk(self, message: InsertRows | UpsertRows, sql_for: Callable[[int], str]) -> WriteResult:
        rows, width = message.rows, len(message.columns)
        if set(map(len, rows)) - {width}:
            index = next(i for i, row in enumerate(rows) if len(row) != width)
            raise BadRowError(f"{message.kind}: row {index} has {len(rows[index])} values, "
                              f"expected {width}", message_kind=message.kind, row_index=index)
        # A key-only upsert skips rows that exist, so only per-statement
        # counts say how many it wrote; every other bulk write writes each row.
        skips_rows = isinstance(message, UpsertRows) and set(message.columns) <= set(message.key)
        per = rows_per_statement(self.variable_limit, width,
                                 indexed=self._indexed.get(message.table, True) and not skips_rows)
        try:
            if per == 1:
                self.conn.executemany(sql_for(1), rows)
                changes = len(rows)
            else:
                changes = 0
                for start in range(0, len(rows), per):
                    chunk = rows[start:start + per]
                    self.conn.execute(sql_for(len(chunk)), tuple(chain.from_iterable(chunk)))
                    changes += self.conn.changes()
        except (OverflowError, UnicodeEncodeError, apsw.MismatchError) as exc:
            # apsw cannot bind an integer past 64 bits (or a lone surrogate), and
            # SQLite says only "datatype mismatch" for a rowid it cannot take: name
            # the row and column. The caller's transaction or savepoint undoes the rest.
            error = self._bad_row(message, exc)
            if error is None:
                raise
            raise error from exc
        return WriteResult(changes=changes, last_rowid=self.conn.last_insert_rowid())

    def _bad_row(self, message: InsertRows | UpsertRows, exc: Exception) -> BadRowError | None:
        if not isinstance(exc, apsw.MismatchError):
            return bad_row(message.kind, message.columns, message.rows, text=True)
        spec = next((t for t in self.config.tables if t.name == message.table), None)
        if spec is None or spec.rowid_alias is None:
            return None
        return bad_rowid(message.kind, message.columns, message.rows, spec.rowid_alias)

    # --- FTS deferral -------------------------------------------------------------------

    def fts_defer(self, message: DeferFts) -> FtsDeferralView | None:
        """Drop FTS triggers and persist the record in one transaction (None: nothing to defer)."""
        try:
            with transaction(self.conn):
                deferral = fts.defer(self.conn, message.sources, message.started_at,
                                     content=message.tables)
        except Exception as exc:
            self._met(exc)
            raise _fts_error("deferring FTS triggers", exc, path=self._db_path) from exc
        if deferral is None:
            return None
        self._wrote_ddl()
        return deferral_view(deferral)

    def fts_restore(self, message: RestoreFts) -> FtsRestoreResult:
        """Recreate the triggers, catch the indexes up and clear the record: one transaction."""
        started = time.perf_counter()
        try:
            with transaction(self.conn):
                deferral = fts.read_deferral(self.conn)
                restored, left = ((), None) if deferral is None else fts.restore(
                    self.conn, deferral, rebuild_share=message.rebuild_share,
                    buffer_bytes=message.buffer_bytes, only=message.tables,
                    sources=message.sources if message.tables else None)
        except Exception as exc:
            self._met(exc)
            raise _fts_error("restoring FTS triggers", exc, path=self._db_path) from exc
        if deferral is not None:
            self._wrote_ddl()
        return FtsRestoreResult(
            tables=restored,
            duration_ms=(time.perf_counter() - started) * 1000,
            remaining=deferral_view(left) if left is not None else None)

    def fts_update(self, message: UpdateFtsDeferral) -> FtsDeferralView | None:
        """Rewrite the record's sources and last error; None when there is no record."""
        with transaction(self.conn):
            deferral = fts.read_deferral(self.conn)
            if deferral is None:
                return None
            deferral = dataclasses.replace(deferral, sources=message.sources,
                                           last_error=message.last_error,
                                           attempts=message.attempts)
            fts.write_deferral(self.conn, deferral)
        self._wrote_ddl()
        return deferral_view(deferral)

    def fts_inspect(self) -> FtsInspection:
        with transaction(self.conn):
            tables, deferral = fts.table_states(self.conn)
        return FtsInspection(tables=tables,
                             deferral=deferral_view(deferral) if deferral is not None else None)

    def _wrote_ddl(self) -> None:
        self.transactions += 1
        self.waiting_for = None
        self.messages += 1
        self.last_write_at = self._clock()

    # --- WAL ----------------------------------------------------------------------------

    def after_commit(self) -> str | None:
        """Force a checkpoint once the WAL passes the threshold (call after a commit).

        RESTART lets the next commit reuse the WAL from its start without
        shrinking the file (measured: TRUNCATE at every threshold costs a
        quarter of bulk-insert throughput, as the file is cut and regrown).
        A WAL past twice the threshold means readers kept checkpoints from
        finishing; TRUNCATE then gives the space back once they let go.
        """
        wal_bytes = self.wal_frames * self.page_size
        if wal_bytes > 2 * self.wal_threshold_bytes:
            self.checkpoint("truncate", forced=True)
            return "truncate"
        if wal_bytes > self.wal_threshold_bytes:
            self.checkpoint("restart", forced=True)
            return "restart"
        return None

    def idle_check(self) -> bool:
        """Checkpoint if writes have paused long enough; True if still waiting for a pause."""
        if self.wal_frames == 0:
            return False
        if self._clock() - self.last_write_at < self.idle_after_s:
            return True
        # A checkpoint that met a full disk (the database file cannot grow) or a
        # lock is tried again at the next pause, not given up.
        return self.checkpoint("passive").waiting_for is not None

    def checkpoint(self, mode: str = "passive", *, forced: bool = False) -> CheckpointResult:
        """Run a checkpoint; RESTART and TRUNCATE never wait for readers.

        A lock held by another process or a full disk is an answer
        (`waiting_for`), never an exception: the WAL keeps every committed
        frame, so the checkpoint can wait for the next try.
        """
        if mode not in CHECKPOINT_MODES:
            raise WriteError(f"unknown checkpoint mode {mode!r}; expected one of "
                             f"{', '.join(CHECKPOINT_MODES)}", message_kind="writer.checkpoint")
        waits_for_readers = mode in ("full", "restart", "truncate")
        busy = False
        waiting_for: str | None = None
        frames = done = 0
        try:
            # Waiting for a reader to let go would stall every queued write.
            with no_busy_wait(self.conn) if waits_for_readers else nullcontext():
                frames, done = self.conn.wal_checkpoint(mode=CHECKPOINT_MODES[mode])
        except apsw.BusyError:
            busy = True
        except apsw.Error as exc:
            waiting_for = self._met(exc)
            if waiting_for is None:
                raise
        self.checkpoints += 1
        self.forced_checkpoints += forced
        self.busy_checkpoints += busy
        if not busy and waiting_for is None:
            # A completed checkpoint lets the next commit start the WAL over.
            self.wal_frames = 0 if mode == "truncate" or frames == done else frames
            self.waiting_for = None
        return CheckpointResult(mode=mode, wal_frames=frames, checkpointed_frames=done,
                                wal_file_bytes=self.wal_file_bytes(), busy=busy,
                                waiting_for=waiting_for)

    def wal_file_bytes(self) -> int:
        return file_size(self._wal_path)

    def checksums(self) -> ChecksumsResult:
        """Every declared table's checksum, as committed now."""
        return ChecksumsResult(tables=tuple(table_checksum(self.conn, table)
                                            for table in self.config.tables))

    def state(self) -> WriterState:
        return WriterState(
            messages=self.messages, transactions=self.transactions,
            rows_written=self.rows_written, failed_messages=self.failed_messages,
            wal_frames=self.wal_frames, wal_file_bytes=self.wal_file_bytes(),
            wal_threshold_bytes=self.wal_threshold_bytes, checkpoints=self.checkpoints,
            forced_checkpoints=self.forced_checkpoints, busy_checkpoints=self.busy_checkpoints,
            page_size=self.page_size, variable_limit=self.variable_limit,
            waiting_for=self.waiting_for, waits=self.waits,
        )

    def _met(self, exc: BaseException) -> str | None:
        """Note a lock held elsewhere or a full disk for status; what it waits for, or None."""
        reason = wait_reason(exc, path=self._db_path)
        if reason is not None:
            self.waiting_for = reason
            self.waits += 1
        return reason


def deferral_view(deferral: fts.Deferral) -> FtsDeferralView:
    return FtsDeferralView(sources=deferral.sources, started_at=deferral.started_at,
                           tables=tuple(t.fts for t in deferral.tables),
                           hwm=tuple((t.fts, t.hwm) for t in deferral.tables),
                           last_error=deferral.last_error, attempts=deferral.attempts)


def _fts_error(what: str, exc: Exception, *, path: str | None = None) -> FtsError:
    """Name the failure; it rolled back, so triggers and record still agree."""
    if isinstance(exc, FtsError):
        return exc
    error = FtsError(f"{what} failed and was rolled back: {exc}")
    # A lock held elsewhere or a full disk: the controller may simply try again.
    error.waiting_for = wait_reason(exc, path=path)
    error.retryable = error.waiting_for is not None
    return error


def _ended_transaction(message: Message) -> WriteError:
    return WriteError(f"{message.kind}: the statement ended the transaction; nothing it "
                      "asked for was committed", message_kind=message.kind)


def has_secondary_index(table: TableConfig) -> bool:
    """True when inserting a row also updates another b-tree than the table's own."""
    return bool(table.indexes or table.fts is not None or table.rowid_alias is None
                or any(c.unique for c in table.columns))


def as_engine_error(message: Message, exc: BaseException, *,
                    path: str | None = None) -> EngineError:
    """Turn what a write raised into the `EngineError` its sender receives.

    A lock held by another process or a full disk (on the filesystem of
    the database at `path`) makes it retryable, saying what it waits for.
    """
    if isinstance(exc, EngineError):
        return exc
    target = getattr(message, "table", None)
    what = f"{message.kind} into {target}" if target else message.kind
    reason = wait_reason(exc, path=path)
    # Say what it waits for in status's words too; SQLite's own text for a
    # full disk ("database or disk is full") does not.
    error = WriteError(f"{what} failed{f' ({reason})' if reason else ''}: {exc}",
                       message_kind=message.kind, sqlite_error=type(exc).__name__,
                       waiting_for=reason)
    error.__cause__ = exc
    return error
