"""Every message actors exchange, as frozen dataclasses with stable dotted kinds.

Kinds are what the message log records and what the replay tool reads, so a
kind is never renamed; messages evolve by adding fields with defaults. Fields
hold tuples and other immutable values, never lists or dicts, so a message can
be read from another thread (the message log's) after it was sent.

Every message kind lives here, in one module of some 650 lines, by the house
rule: one place to read the whole protocol, grouped by receiving actor. What
the actors answer lives in `views`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sqlwarden.views import (
    FtsLease,
    FtsView,
    Row,
    SqlValue,
    TableCheck,
)

_KINDS: dict[str, type[Message]] = {}

#: The actors' names on the bus, as the message log records them.
WRITER = "writer"
PROGRESS = "progress"
FTS = "fts"
BACKFILL = "backfill"
SYNC = "sync"
MIRROR = "mirror"


class Message:
    """Base of all messages; subclasses set a unique dotted `kind`."""

    __slots__ = ()
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if not kind or "." not in kind:
            raise TypeError(f"{cls.__name__} needs a dotted kind such as 'writer.execute'")
        if kind in _KINDS and _KINDS[kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"message kind {kind!r} is already used by {_KINDS[kind].__name__}")
        _KINDS[kind] = cls


def message_kinds() -> dict[str, type[Message]]:
    """All registered message kinds."""
    return dict(_KINDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """One SQL statement and its bound parameters (a value, not a message)."""

    sql: str
    params: Row = ()


# --- Writer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute(Message):
    """Run one statement in its own transaction (or a group commit)."""

    kind: ClassVar[str] = "writer.execute"
    sql: str
    params: Row = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteBatch(Message):
    """Run several statements; all of them commit or none does."""

    kind: ClassVar[str] = "writer.batch"
    statements: tuple[Statement, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertRows(Message):
    """Insert rows into a declared table with multi-row statements."""

    kind: ClassVar[str] = "writer.insert_rows"
    table: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UpsertRows(Message):
    """Insert rows, updating the non-key columns of rows whose key exists."""

    kind: ClassVar[str] = "writer.upsert_rows"
    table: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Message):
    """Run a WAL checkpoint now: `passive`, `full`, `restart` or `truncate`."""

    kind: ClassVar[str] = "writer.checkpoint"
    mode: str = "passive"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStatus(Message):
    """Ask the Writer for its counters and WAL state."""

    kind: ClassVar[str] = "writer.status"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleCheck(Message):
    """Sent by the Writer's idle timer: checkpoint if no write came meanwhile."""

    kind: ClassVar[str] = "writer.idle_check"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMeta(Message):
    """Set (or with `value=None` delete) one key of the engine's `_sw_meta` table."""

    kind: ClassVar[str] = "writer.meta"
    key: str
    value: str | None = None


# --- background work --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunChunk(Message):
    """One chunk of a task: change the rows with keys in (`after`, next `rows` keys],
    capped at `bound`, and advance the task's checkpoint, in one transaction."""

    kind: ClassVar[str] = "writer.chunk"
    task: str
    version: int
    run_id: str
    after: SqlValue
    bound: SqlValue
    rows: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveTask(Message):
    """Insert or update a task's row in `_sw_tasks` (the columns named in `fields`)."""

    kind: ClassVar[str] = "writer.task_state"
    task: str
    version: int
    fields: tuple[tuple[str, SqlValue], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveProgress(Message):
    """Persist a task's rate, ETA and waiting reason (rate-limited by the Progress actor)."""

    kind: ClassVar[str] = "writer.task_progress"
    task: str
    version: int
    rate_rows_s: float | None
    eta_s: float | None
    waiting: str | None
    at: float
    terminal: bool = False
    #: The Progress actor's own clock (monotonic) when it decided to save: what the
    #: once-a-second limit is kept by, and what `replay --check` judges it by.
    clock_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferFts(Message):
    """Drop the FTS maintenance triggers and persist the deferral record, in one transaction."""

    kind: ClassVar[str] = "writer.fts_defer"
    sources: tuple[tuple[str, int], ...]
    started_at: float
    #: Defer only the FTS tables indexing these tables (empty: every FTS table). With a
    #: deferral already in place, the tables it lacks join it.
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreFts(Message):
    """Recreate the deferred triggers, bring the indexes up to date and clear the record."""

    kind: ClassVar[str] = "writer.fts_restore"
    rebuild_share: float
    buffer_bytes: int
    #: Restore only these FTS tables (empty: all); the rest stay deferred, for `sources`.
    tables: tuple[str, ...] = ()
    sources: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateFtsDeferral(Message):
    """Change the persisted record's sources, or note a failed restore in it."""

    kind: ClassVar[str] = "writer.fts_update"
    sources: tuple[tuple[str, int], ...]
    last_error: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectFts(Message):
    """Read the FTS tables, their triggers and the deferral record (`FtsInspection`)."""

    kind: ClassVar[str] = "writer.fts_inspect"


@dataclass(frozen=True, slots=True, kw_only=True)
class TableRows:
    """Rows for one table in a `SyncBatch`, upserted on `key`.

    Where each row came from, for a reject if the database refuses it: row `i`
    is at `origin` followed by `offsets[i]` (`a.ndjson:` and a byte offset,
    `page 3 item ` and an index); without offsets, its place in the batch.
    """

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    rows: tuple[Row, ...]
    origin: str = ""
    offsets: tuple[int, ...] = ()
    #: The column of each row's change time when the source's cursor comes from it
    #: (HTTP): a row the database refuses is then known by its key and that value
    #: (see `Reject.record`), not by its place on a page.
    updated: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FilePosition:
    """How far a batch read one source file: from byte `start` (what the database
    must hold now) to byte `end` (what it holds after this batch)."""

    file: str
    start: int
    end: int
    size: int
    done: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """A source record that failed mapping or validation, kept with where it came from."""

    position: str
    reason: str
    raw: str
    #: What the record is from run to run when its position is not (an API's pages
    #: shift): its key upstream as JSON, or "" when not even that could be read (the
    #: raw text tells it then). None: the position says it (a file and an offset). A
    #: reject of the same record with the same raw text is stored once.
    record: str | None = None
    #: The record's own cursor value (its `updated` column), when that could be read:
    #: the next incremental run of an HTTP source starts from the newest of its rows
    #: and its rejects, so a rejected newest change is not fetched again and again.
    cursor: str | int | float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartSyncRun(Message):
    """Record a new `running` row in `_sw_sync_runs`; answered with its id as `last_rowid`."""

    kind: ClassVar[str] = "writer.sync_start"
    source: str
    mode: str
    reason: str
    attempt: int
    engine_run: str
    started_at: float
    cursor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncBatch(Message):
    """One write transaction of a source run: its rows, rejects and file positions.

    Applied only if the run has committed exactly `seq` batches and every file
    is where `start` says, so a batch is never applied twice or after a gap.
    """

    kind: ClassVar[str] = "writer.sync_batch"
    source: str
    run: int
    seq: int
    tables: tuple[TableRows, ...] = ()
    rejects: tuple[Reject, ...] = ()
    files: tuple[FilePosition, ...] = ()
    #: `keep` turns rows the database refuses into rejects; `fail` fails the batch.
    on_reject: str = "keep"
    at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EndSyncRun(Message):
    """Record how a run ended: `ok`, `failed` or `stopped`."""

    kind: ClassVar[str] = "writer.sync_end"
    run: int
    status: str
    ended_at: float
    error: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReapSyncRuns(Message):
    """Boot: runs left `running` by an engine that is gone become `failed`."""

    kind: ClassVar[str] = "writer.sync_reap"
    engine_run: str
    ended_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxDrained(Message):
    """The mirror has committed the outbox rows up to `upto_seq`; delete them."""

    kind: ClassVar[str] = "writer.outbox_drained"
    upto_seq: int
    #: (table, ord) of stored mirror ranges holding drained keys: their digests are stale
    stale_ranges: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveMirrorRanges(Message):
    """Replace a table's stored reconcile ranges (SQLite's side, read in one snapshot).

    Each range is (hi, rows, digest): `hi` the last key (a JSON array for a
    compound key, None for the last range, open above).
    """

    kind: ClassVar[str] = "writer.mirror_ranges"
    table: str
    shape: str
    ranges: tuple[tuple[Any, int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineMirrorRows(Message):
    """Record rows the mirror could not send, and forget those it since sent.

    `add` holds (table, key, reason, at), `clear` (table, key): keys as
    `_sw_outbox.k` holds them. With `retry`, every quarantined key is put
    back in the outbox (as of `at`), so the mirror tries it again.
    """

    kind: ClassVar[str] = "writer.mirror_quarantine"
    add: tuple[tuple[str, Any, str, float], ...] = ()
    clear: tuple[tuple[str, Any], ...] = ()
    retry: bool = False
    at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TableChecksums(Message):
    """Checksum every declared table as committed now (a read; changes nothing).

    The engine asks this at stop when the message log keeps full payloads, so
    the log ends with the state `sqlwarden replay --reexecute` must reproduce.
    """

    kind: ClassVar[str] = "writer.checksums"


#: Messages the Writer may commit together in one transaction.
FOREGROUND_WRITES: tuple[type[Message], ...] = (Execute, ExecuteBatch, InsertRows, UpsertRows,
                                                SyncBatch)

#: Small bookkeeping writes; they join group commits like foreground writes.
BOOKKEEPING_WRITES: tuple[type[Message], ...] = (SaveTask, SaveProgress, SetMeta, StartSyncRun,
                                                 EndSyncRun, ReapSyncRuns, OutboxDrained,
                                                 SaveMirrorRanges, QuarantineMirrorRows)

#: Every message that changes the database; only the Writer may receive these
#: (protocol rule 1, checked on message logs by `sqlwarden replay --check`).
DATABASE_WRITES: tuple[type[Message], ...] = (*FOREGROUND_WRITES, *BOOKKEEPING_WRITES, RunChunk,
                                              DeferFts, RestoreFts, UpdateFtsDeferral,
                                              Checkpoint)


# --- Backfill ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTasks(Message):
    """Boot: recover task rows left by an earlier run and start what should run."""

    kind: ClassVar[str] = "backfill.start"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlTask(Message):
    """Pause, resume or cancel one task; answered with its `TaskView` afterwards."""

    kind: ClassVar[str] = "backfill.control"
    task: str
    action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NextChunk(Message):
    """Sent by the Backfill's yield timer: the pause between chunks is over."""

    kind: ClassVar[str] = "backfill.next"


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksStatus(Message):
    """Ask the Backfill for a `TaskView` of every task."""

    kind: ClassVar[str] = "backfill.status"


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitTasks(Message):
    """Answered once every named task (all when empty) is done, failed, cancelled or paused."""

    kind: ClassVar[str] = "backfill.wait"
    tasks: tuple[str, ...] = ()


# --- FtsController ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BeginCatchUp(Message):
    """A source is about to write `backlog_rows` rows; defer FTS upkeep if that is many.

    Answered with an `FtsLease`. The sender calls `EndCatchUp` when done, in a
    `finally`, whether or not the lease says deferred.
    """

    kind: ClassVar[str] = "fts.begin"
    source: str
    backlog_rows: int
    #: The tables the source writes; only FTS tables indexing them are deferred. Empty:
    #: the controller takes them from the source's config (an unknown source defers all).
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndCatchUp(Message):
    """A source has finished; the last one to finish restores. Answered with an `FtsView`."""

    kind: ClassVar[str] = "fts.end"
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreFtsNow(Message):
    """Restore now, whatever sources are still catching up (boot, CLI, maximum age)."""

    kind: ClassVar[str] = "fts.restore"
    reason: str = "requested"


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsTick(Message):
    """Sent by the controller's timer: check the deferral's age and retry a failed restore."""

    kind: ClassVar[str] = "fts.tick"


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsStatus(Message):
    """Ask the controller for an `FtsView`."""

    kind: ClassVar[str] = "fts.status"


# --- Sync -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncBoot(Message):
    """Boot: reap runs a gone process left `running`, then arm every source's schedule."""

    kind: ClassVar[str] = "sync.boot"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSource(Message):
    """Run a source now; answered with its `SyncRunView` when the run ends.

    While the source runs already, the ask joins that run (`join`) or is
    refused. `mode` is `auto` (what the schedule would pick), `full` or
    `incremental`.
    """

    kind: ClassVar[str] = "sync.run"
    source: str
    mode: str = "auto"
    join: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTick(Message):
    """Sent by a source's timer: its scheduled run or retry is due."""

    kind: ClassVar[str] = "sync.tick"
    source: str
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStatus(Message):
    """Ask for a `SourceView` of every source."""

    kind: ClassVar[str] = "sync.status"


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitSources(Message):
    """Answered once every named source (all when empty) has no run and no retry pending."""

    kind: ClassVar[str] = "sync.wait"
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PumpProgress(Message):
    """From a run's reader thread: another batch is committed."""

    kind: ClassVar[str] = "sync.pumped"
    source: str
    run: int
    rows: int
    rejects: int
    batch_rows: int
    batch_s: float
    total: int | None = None
    #: Set while the run waits out a lock held elsewhere or a full disk; None once a
    #: batch commits again.
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PumpEnded(Message):
    """From a run's reader thread: it has stopped, and every batch it sent is answered.

    `failure` says what kind of error ended it: `retry` (worth retrying),
    `rate_limited` (wait `retry_after_s`, no retries) or `fatal`.
    """

    kind: ClassVar[str] = "sync.pump_end"
    source: str
    run: int
    rows: int
    rejects: int
    error: str | None = None
    failure: str | None = None
    retry_after_s: float | None = None
    note: str | None = None
    stopped: bool = False
    fts_lease: FtsLease | None = None
    fts_after: FtsView | None = None


# --- Mirror -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorBoot(Message):
    """Boot: connect to the server; the first successful connect runs one reconcile."""

    kind: ClassVar[str] = "mirror.boot"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconcile(Message):
    """Reconcile every mirrored table; answered with a `ReconcileView`.

    Single flight: an ask that arrives while a reconcile runs (or is about to)
    gets that reconcile's result; none is ever started twice at once.
    """

    kind: ClassVar[str] = "mirror.reconcile"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verify(Message):
    """Compare every mirrored table, changing nothing; answered with a `ReconcileView`."""

    kind: ClassVar[str] = "mirror.verify"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorStatus(Message):
    """Ask for a `MirrorView`."""

    kind: ClassVar[str] = "mirror.status"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorStep(Message):
    """The Mirror actor to itself: do the next unit of work (a connect, one range of a
    reconcile, one outbox batch); a step whose `token` is not the latest is stale."""

    kind: ClassVar[str] = "mirror.step"
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorUp(Message):
    """Mirror to itself: connected, and the mirror tables are in place."""

    kind: ClassVar[str] = "mirror.up"
    driver: str
    server: str
    #: The "host:port" connected to (None: the DSN's socket).
    node: str | None = None
    #: Whether this connect needs a reconcile: False only when the server is known to hold
    #: everything the mirror sent before it lost its last connection.
    reconcile: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorDown(Message):
    """Mirror to itself: the server cannot be used; `retry_in_s` None: not retried."""

    kind: ClassVar[str] = "mirror.down"
    error: str
    retryable: bool
    attempt: int
    retry_in_s: float | None
    #: Reconciles begun so far; asks waiting for a later one fail.
    started: int
    #: What the mirror waits for meanwhile (None: a failure no retry fixes).
    waiting_for: str | None = None
    #: The server's error number, when it gave one (1045: access denied, say).
    errno: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileBegun(Message):
    """Mirror to itself: reconcile number `number` starts (`verify`: changing nothing)."""

    kind: ClassVar[str] = "mirror.reconcile_begun"
    number: int
    verify: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconciled(Message):
    """Mirror to itself: reconcile (or verify) number `number` ended."""

    kind: ClassVar[str] = "mirror.reconciled"
    number: int
    verify: bool = False
    tables: tuple[TableCheck, ...] = ()
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Drained(Message):
    """Mirror to itself: one outbox batch is on the server and deleted locally."""

    kind: ClassVar[str] = "mirror.drained"
    entries: int
    upserts: int
    deletes: int
    upto_seq: int
    #: Over the last few thousand drained changes: time from change to server commit.
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float


# --- Progress ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent(Message):
    """Where a long job is: rows done out of total, its state and, if waiting, why.

    `chunk_rows` rows were done in the last `chunk_s` seconds (0 for events
    that report a state change only). `terminal` marks the last event of a run.
    """

    kind: ClassVar[str] = "progress.event"
    scope: str
    name: str
    version: int = 0
    processed: int
    total: int | None
    state: str
    waiting: str | None = None
    chunk_rows: int = 0
    chunk_s: float = 0.0
    terminal: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressSnapshot(Message):
    """Ask the Progress actor for a `ProgressView` of every job it has heard of."""

    kind: ClassVar[str] = "progress.snapshot"


# --- Supervisor (recorded in the message log; no actor receives them) -------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorFailed(Message):
    """An actor failed unexpectedly (a handler raised something unexpected, or it died).

    The Writer's failure stops the engine (`fatal`); any other actor is
    restarted after `restart_in_s`, its `restarts`-th restart.
    """

    kind: ClassVar[str] = "supervisor.actor_failed"
    actor: str
    error_type: str
    error: str
    fatal: bool = False
    restarts: int = 0
    restart_in_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorRestarted(Message):
    """The supervisor rebuilt `actor` from its state in the database and put it on the bus."""

    kind: ClassVar[str] = "supervisor.actor_restarted"
    actor: str
    restarts: int
