"""What actors answer: plain frozen values for callers, status and the message log.

A message (`sqlwarden.protocol`) asks for something; the values here are what
comes back, and what `Engine` methods return. Like messages, they hold tuples
and other immutable values, so they can be logged from another thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: SQLite values as bound parameters.
SqlValue = None | int | float | str | bytes
Row = tuple[SqlValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TableCheck:
    """One table's part of a reconcile or verify."""

    table: str
    sqlite_rows: int
    mirror_rows: int
    ranges: int
    differing: int
    copied: int
    deleted: int
    skipped: bool
    seconds: float
    #: Rows read from SQLite: ranges unchanged since the last reconcile are not read again
    sqlite_read: int = 0
    #: The first differing ranges: (after, upto, sqlite rows, mirror rows)
    ranges_shown: tuple[tuple[Any, Any, int, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResult:
    """What a write changed; returned once it is committed."""

    changes: int
    last_rowid: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointResult:
    """The outcome of a checkpoint; `busy` when readers kept it from finishing."""

    mode: str
    wal_frames: int
    checkpointed_frames: int
    wal_file_bytes: int
    busy: bool = False
    #: Set when the checkpoint could not run for a lock held elsewhere or a full disk.
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterState:
    """The Writer's counters, for status and for tests that count."""

    messages: int
    transactions: int
    rows_written: int
    failed_messages: int
    wal_frames: int
    wal_file_bytes: int
    wal_threshold_bytes: int
    checkpoints: int
    forced_checkpoints: int
    busy_checkpoints: int
    page_size: int
    variable_limit: int
    #: What the last transaction or checkpoint waited for (a lock held by another
    #: process, a full disk); None once one has succeeded since.
    waiting_for: str | None = None
    #: Transactions and checkpoints that met such a wait so far.
    waits: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkResult:
    """What one chunk did; `last` is the new checkpoint, `exhausted` when no key was left."""

    after: SqlValue
    last: SqlValue
    scanned: int
    processed: int
    exhausted: bool
    duration_ms: float
    #: Foreground messages handled ahead of this chunk while it waited in the Writer.
    yielded_to: int = 0
    #: The checkpoint mode the Writer ran right after the chunk, if any.
    checkpoint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskView:
    """A task as the Backfill actor sees it."""

    name: str
    version: int
    table: str
    status: str
    processed: int
    total: int | None
    checkpoint: SqlValue
    bound: SqlValue
    attempts: int
    error: str | None
    waiting: str | None
    provides: str | None
    #: False when this engine has not run the task (done or cancelled before it started).
    ran_here: bool = False
    #: While a chunk or a save of the task waits out a transient fault, what it waits
    #: for ("database locked by another process", "disk full"); the task stays running.
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsTableView:
    """One FTS table: its kind, the triggers present now and, while deferred, the
    saved ones and the rowid up to which the index was up to date."""

    name: str
    kind: str
    source: str | None
    triggers: tuple[str, ...]
    #: Why its triggers cannot be deferred (None while they are).
    problem: str | None
    deferred: bool = False
    saved_triggers: tuple[str, ...] = ()
    hwm: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsDeferralView:
    """The persisted deferral record: which sources, since when, which tables."""

    sources: tuple[tuple[str, int], ...]
    started_at: float
    tables: tuple[str, ...]
    hwm: tuple[tuple[str, int | None], ...]
    last_error: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TableChecksum:
    """A table's row count and SHA-256 of its rows in primary-key order."""

    table: str
    rows: int
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChecksumsResult:
    tables: tuple[TableChecksum, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsInspection:
    """What `InspectFts` found."""

    tables: tuple[FtsTableView, ...]
    deferral: FtsDeferralView | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsRestored:
    """One table's restore: `rebuild` or `incremental`, rows changed since the deferral."""

    fts: str
    mode: str
    changed_rows: int
    table_rows: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsRestoreResult:
    tables: tuple[FtsRestored, ...]
    duration_ms: float
    #: What stays deferred after a restore of some tables only (None: nothing).
    remaining: FtsDeferralView | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsLease:
    """The answer to `BeginCatchUp`: whether FTS upkeep is deferred for this source, and why."""

    source: str
    deferred: bool
    reason: str
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsView:
    """The controller's state: `live`, `deferred`, `restoring` or `restore_failed`."""

    state: str
    sources: tuple[tuple[str, int], ...]
    #: Unix time the deferral began (None while live).
    since: float | None
    tables: tuple[str, ...]
    error: str | None
    attempts: int
    #: Seconds until the next restore attempt, after a failure.
    retry_in_s: float | None
    last_restore: FtsRestoreResult | None
    #: FTS tables whose triggers cannot be deferred, with the reason.
    not_deferrable: tuple[tuple[str, str], ...] = ()
    #: While a restore is retried because of a wait: what for (see `db.faults`).
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressView:
    """Live progress of one job, with its rate and ETA."""

    scope: str
    name: str
    version: int
    processed: int
    total: int | None
    state: str
    waiting: str | None
    rate_rows_s: float | None
    eta_s: float | None
    error: str | None
    persisted: int
    persist_failures: int
    last_persist_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncBatchResult:
    """What a `SyncBatch` committed: rows written and rejects stored (the database's too)."""

    rows: int
    rejects: int
    #: Rows that went in, written or already equal (`rows` counts only those written).
    accepted: int = 0
    #: The batch's first reject as "position: reason", when it has one.
    first_reject: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRunView:
    """One run of a source, as `_sw_sync_runs` and the Sync actor know it."""

    id: int
    source: str
    mode: str
    status: str
    reason: str
    attempt: int
    started_at: float
    ended_at: float | None
    rows: int
    rejects: int
    error: str | None = None
    note: str | None = None
    #: From the FtsController, when the run announced a catch-up.
    fts_lease: FtsLease | None = None
    fts_after: FtsView | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceView:
    """A source's state: `idle`, `running` or `retry_wait`, its runs and what comes next."""

    name: str
    kind: str
    state: str
    current: SyncRunView | None
    last: SyncRunView | None
    #: Unix time of the next scheduled run or retry (None: on request only).
    next_run_at: float | None
    next_reason: str | None
    #: Upstream asked not to be called before this Unix time (Retry-After).
    not_before: float | None
    total: int | None = None
    #: What the run waits out before going on ("database locked by another process",
    #: "disk full"), while it does.
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileView:
    """The outcome of a reconcile or verify."""

    number: int
    verify: bool
    tables: tuple[TableCheck, ...]
    seconds: float
    error: str | None = None

    @property
    def in_sync(self) -> bool:
        return self.error is None and all(t.differing == 0 for t in self.tables)


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorView:
    """The mirror as its actor sees it (outbox depth is added by the facade)."""

    state: str
    server: str
    scope: str
    tables: tuple[str, ...]
    driver: str | None = None
    server_version: str | None = None
    error: str | None = None
    attempt: int = 0
    retry_at: float | None = None
    reconciling: bool = False
    reconciles: int = 0
    last_reconcile: ReconcileView | None = None
    drained_changes: int = 0
    drained_upserts: int = 0
    drained_deletes: int = 0
    last_drain_at: float | None = None
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    #: Reconciles that failed (`reconciles` counts those that completed).
    reconciles_failed: int = 0
    #: What the mirror waits for: the server, or the local database (locked, disk full).
    waiting_for: str | None = None
    #: The server's error number for the last failure (1045: the login was refused),
    #: so a command can tell a config problem from a server away.
    errno: int | None = None
    #: The "host:port" of the server in use (None while not connected).
    node: str | None = None
    #: Times the mirror moved to another host after losing the one it used.
    failovers: int = 0
    #: Mirror transactions rolled back and sent again whole after a deadlock, a lock wait
    #: timeout or a cluster's certification conflict.
    transaction_retries: int = 0
