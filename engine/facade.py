"""The `Engine` facade: what a service embeds and what the CLI drives.

It builds the actors from a validated config, starts them in dependency
order, and stops them in reverse. Its methods are the edge of the actor
system: they `ask` and wait, and record every message on the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Literal, cast, overload

import apsw
import pykka

from sqlwarden.actors.backfill import BackfillActor
from sqlwarden.actors.bus import Bus
from sqlwarden.actors.fts import FtsControllerActor
from sqlwarden.actors.mirror import MirrorActor
from sqlwarden.actors.progress import ProgressActor
from sqlwarden.actors.sync import SyncActor
from sqlwarden.actors.writer import WriterActor
from sqlwarden.config import Config, TableConfig, TaskConfig, load_config, validate_task
from sqlwarden.db.connect import file_size
from sqlwarden.db.readers import ReaderPool
from sqlwarden.errors import (
    BadRowError,
    EngineError,
    EngineStopped,
    FtsError,
    MirrorError,
    NotReady,
    TaskError,
    WriteError,
)
from sqlwarden.fts import deferral as fts_sql
from sqlwarden.futures import Future, Timeout
from sqlwarden.mirror import session as mirror_sql
from sqlwarden.msglog.log import MessageLog, NullMessageLog
from sqlwarden.protocol import (
    BeginCatchUp,
    Checkpoint,
    ControlTask,
    EndCatchUp,
    Execute,
    ExecuteBatch,
    FtsStatus,
    FtsTick,
    InsertRows,
    Message,
    MirrorBoot,
    MirrorStatus,
    ProgressSnapshot,
    Reconcile,
    RestoreFtsNow,
    RunSource,
    SetMeta,
    StartTasks,
    Statement,
    SyncBoot,
    SyncStatus,
    TableChecksums,
    TasksStatus,
    UpsertRows,
    Verify,
    WaitSources,
    WaitTasks,
    WriterStatus,
)
from sqlwarden.redact import Redactor
from sqlwarden.statusd import StatusServer
from sqlwarden.supervisor import Failure, Supervisor
from sqlwarden.sync import runs as sync_sql
from sqlwarden.tasks.chunks import TaskPlan, read_task_rows
from sqlwarden.views import (
    CheckpointResult,
    FtsLease,
    FtsView,
    MirrorView,
    ProgressView,
    ReconcileView,
    Row,
    SourceView,
    SyncRunView,
    TaskView,
    WriteResult,
    WriterState,
)

FACADE = "facade"
#: How long stopping waits for an actor to commit what is queued and close.
STOP_TIMEOUT_S = 120.0
#: How long status waits for an actor's answer before saying it is busy.
STATUS_TIMEOUT_S = 2.0


class Engine:
    """An embedded sqlwarden engine; use as a context manager or call start/stop."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 tasks: Iterable[TaskConfig] = (), start_tasks: bool = True,
                 progress_clock: Callable[[], float] | None = None) -> None:
        """`tasks` adds chunked tasks declared in Python (a `call` may be a function).

        With `start_tasks=False` tasks wait for `engine.tasks.start()`: the
        CLI catches up its sources first. `progress_clock` replaces the
        clock the Progress actor rate-limits persistence with (for tests).
        """
        added: list[TaskConfig] = []
        for task in tasks:
            added.append(validate_task(task, dataclasses.replace(
                config, tasks=config.tasks + tuple(added))))
        if added:
            config = dataclasses.replace(config, tasks=config.tasks + tuple(added))
        self.config = config
        self._clock = clock
        self._progress_clock = progress_clock or clock
        self._start_tasks = start_tasks
        self._plans = tuple(TaskPlan(t, config.table(t.table)) for t in config.tasks)
        self._requirements = {name: plan.task for plan in self._plans
                              for name in (plan.task.name, plan.task.provides) if name}
        self.run_id = uuid.uuid4().hex[:12]
        self.tasks = Tasks(self)
        self.fts = Fts(self)
        self.sync = Sync(self)
        self.mirror = Mirror(self)
        self._fts_known: set[str] = set()
        self._tables = {t.name: t for t in config.tables}
        self._redactor = Redactor(config.secrets)
        self._state = "new"
        self._fatal: Failure | None = None
        self._stopped = threading.Event()
        self._actors: list[tuple[str, pykka.ActorRef[Any]]] = []
        self._log: MessageLog | None = None
        self._bus: Bus | None = None
        self._readers: ReaderPool | None = None
        self._status_server: StatusServer | None = None
        self.supervisor = Supervisor(redactor=self._redactor, on_fatal=self._on_fatal)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Engine:
        """Build an engine from a YAML config file (validated; nothing started yet)."""
        return cls(load_config(path), **kwargs)

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def state(self) -> str:
        """`new`, `running`, `failed` (a fatal error; stop it) or `stopped`."""
        return self._state

    @property
    def status_url(self) -> str | None:
        return self._status_server.url if self._status_server is not None else None

    @property
    def message_log_path(self) -> str | None:
        return str(self._log.path) if self._log is not None and self.config.message_log.enabled \
            else None

    def start(self) -> Engine:
        """Start the actors in dependency order; raises if any cannot start."""
        if self._state != "new":
            raise EngineError(f"the engine cannot start: it is {self._state}")
        log_config = self.config.message_log
        log_class = MessageLog if log_config.enabled else NullMessageLog
        self._log = log_class(log_config, self.config.message_log_path, redactor=self._redactor,
                              run=self.run_id)
        self._log.start()
        self._bus = Bus(self._log)
        try:
            # Bound first: a port that is taken must not leave a new database behind.
            if self.config.status.enabled:
                self._status_server = StatusServer(
                    self.config.status.host, self.config.status.port, status=self.status,
                    health=self.health, control=self._control_for_http,
                    fts_restore=lambda: fts_view_dict(self.fts.restore()),
                    sync_run=lambda name, mode: run_view_dict(self.sync.run(name, mode=mode)),
                    mirror_reconcile=lambda: reconcile_view_dict(self.mirror.reconcile()))
            self._start_actor(WriterActor, config=self.config, clock=self._clock,
                              tasks=self._plans)
            self._start_actor(ProgressActor, config=self.config, clock=self._progress_clock)
            self._start_actor(FtsControllerActor, config=self.config, clock=self._clock)
            self._start_actor(BackfillActor, config=self.config, plans=self._plans,
                              run_id=self.run_id, clock=self._clock)
            self._start_actor(SyncActor, config=self.config, run_id=self.run_id)
            if self.mirror.enabled:
                self._start_actor(MirrorActor, config=self.config)
            self._readers = ReaderPool(self.config.database)
            if self._status_server is not None:
                self._status_server.start()
            self._state = "running"
            self._ask("writer", SetMeta(key="run_id", value=self.run_id))
            # Where `sqlwarden task pause` finds this engine.
            self._ask("writer", SetMeta(key="status_url", value=self.status_url))
            # Boot recovery: a deferral left by an earlier run is restored before
            # start returns (a failure is kept in status and retried, never raised).
            self._ask("fts", FtsTick())
            # Runs a gone process left `running` are marked failed, then schedules armed.
            self._ask("sync", SyncBoot())
            if self.mirror.enabled:
                # Connects on its own thread; a server out of reach is a state, not an error.
                self._ask("mirror", MirrorBoot())
        except BaseException:
            self._shutdown()
            raise
        if self._start_tasks:
            self.tasks.start()
        return self

    def _start_actor(self, actor_class: Any, **kwargs: Any) -> None:
        assert self._bus is not None
        ready: Future[None] = Future()
        ref = actor_class.start(bus=self._bus, supervisor=self.supervisor, ready=ready, **kwargs)
        self._actors.append((actor_class.name, ref))
        # No timeout: setup may rebuild a large index, and on_start always answers.
        ready.get()
        self._bus.register(actor_class.name, ref)

    def stop(self) -> None:
        """Stop everything in reverse order; queued writes are committed first."""
        if self._state in ("new", "stopped"):
            return
        if self._state == "running":
            with contextlib.suppress(EngineError):
                self._ask("writer", SetMeta(key="status_url", value=None),
                          timeout=STOP_TIMEOUT_S)
        self._shutdown(checksums=self._state == "running")

    def _record_checksums(self) -> None:
        """End the log with every table's checksum, for `replay --reexecute` to compare.

        Only when the log keeps full payloads (a debugging setting): reading
        every row costs a moment at stop. Every other actor has stopped, so
        this is the state the log ends in.
        """
        log_config = self.config.message_log
        if not (log_config.enabled and log_config.payload == "full"):
            return
        with contextlib.suppress(EngineError):
            self._ask("writer", TableChecksums(), timeout=STOP_TIMEOUT_S)

    def _shutdown(self, *, checksums: bool = False) -> None:
        if self._status_server is not None:
            self._status_server.stop()
            self._status_server = None
        if self._readers is not None:
            self._readers.close()
        for name, ref in reversed(self._actors):
            if name == "writer" and checksums and ref.is_alive():
                self._record_checksums()
            if self._bus is not None:
                self._bus.unregister(name)
            if ref.is_alive():
                with contextlib.suppress(pykka.Timeout):
                    ref.stop(block=True, timeout=STOP_TIMEOUT_S)
        self._actors.clear()
        if self._log is not None:
            self._log.close()
        self._state = "stopped" if self._fatal is None else "failed"
        self._stopped.set()

    def _on_fatal(self, failure: Failure) -> None:
        # Runs on the failing actor's thread: note it; whoever waits stops us.
        self._fatal = failure
        self._state = "failed"
        self._stopped.set()

    def wait(self, stop: threading.Event | None = None, *, poll_s: float = 0.5) -> str:
        """Block until `stop` is set, the engine fails or is stopped; says which."""
        while not (stop is not None and stop.is_set()) and not self._stopped.wait(poll_s):
            pass
        if self._fatal is not None:
            return f"fatal failure in {self._fatal.actor}: {self._fatal.error}"
        return "stop requested" if stop is not None and stop.is_set() else "engine stopped"

    # --- writes -------------------------------------------------------------------------

    def write(self, sql: str, params: Sequence[Any] = ()) -> WriteResult:
        """Run one statement with positional `?` parameters; returns once committed."""
        result: WriteResult = self._ask("writer", Execute(sql=sql, params=_params(params)))
        return result

    def write_batch(self, statements: Iterable[str | tuple[str, Sequence[Any]]]) -> WriteResult:
        """Run several statements in one transaction: all commit, or none."""
        batch = tuple(Statement(sql=s, params=()) if isinstance(s, str)
                      else Statement(sql=s[0], params=_params(s[1])) for s in statements)
        result: WriteResult = self._ask("writer", ExecuteBatch(statements=batch))
        return result

    @overload
    def write_many(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
                   columns: Sequence[str] | None = None,
                   wait: Literal[True] = True) -> WriteResult: ...

    @overload
    def write_many(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
                   columns: Sequence[str] | None = None,
                   wait: Literal[False]) -> Future[WriteResult]: ...

    def write_many(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
                   columns: Sequence[str] | None = None,
                   wait: bool = True) -> WriteResult | Future[WriteResult]:
        """Insert rows (tuples in column order, or dicts) into a declared table.

        With `wait=False` returns a future at once; its `.get()` gives the
        result once committed, which lets several batches share a commit.
        """
        spec = self._table(table, "writer.insert_rows")
        cols, data = _rows(spec, rows, columns, "writer.insert_rows")
        return self._send("writer", InsertRows(table=table, columns=cols, rows=data), wait)

    @overload
    def upsert(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
               columns: Sequence[str] | None = None, key: Sequence[str] | None = None,
               wait: Literal[True] = True) -> WriteResult: ...

    @overload
    def upsert(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
               columns: Sequence[str] | None = None, key: Sequence[str] | None = None,
               wait: Literal[False]) -> Future[WriteResult]: ...

    def upsert(self, table: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], *,
               columns: Sequence[str] | None = None, key: Sequence[str] | None = None,
               wait: bool = True) -> WriteResult | Future[WriteResult]:
        """Insert rows, updating the other columns where the key (default: primary key) exists."""
        spec = self._table(table, "writer.upsert_rows")
        cols, data = _rows(spec, rows, columns, "writer.upsert_rows")
        conflict = tuple(key) if key is not None else spec.primary_key
        missing = [c for c in conflict if c not in cols]
        if missing:
            raise WriteError(f"upsert into {table}: the key column(s) {', '.join(missing)} "
                             "are not among the columns written", message_kind="writer.upsert_rows")
        return self._send("writer", UpsertRows(table=table, columns=cols, rows=data,
                                               key=conflict), wait)

    def checkpoint(self, mode: str = "passive") -> CheckpointResult:
        """Run a WAL checkpoint now (`passive`, `full`, `restart` or `truncate`)."""
        result: CheckpointResult = self._ask("writer", Checkpoint(mode=mode))
        return result

    # --- reads and status ---------------------------------------------------------------

    @contextmanager
    def read(self, timeout: float | None = None,
             requires: Iterable[str] = ()) -> Iterator[apsw.Connection]:
        """Borrow a read-only connection for the `with` block.

        `requires` names tasks (or what they `provides`) the read depends on,
        and `fts:<table>` for search results that must be fresh: while a task
        is not done, or that FTS table (or the table it indexes) has its
        triggers deferred, `NotReady` is raised instead of answering from
        partial data.
        """
        if self._readers is None or self._state != "running":
            raise EngineStopped("engine")
        requires = list(requires)
        fresh = [name for name in requires if name.startswith("fts:")]
        needed = [self._requirement(name) for name in requires if name not in fresh]
        with self._readers.lend(timeout) as conn:
            if fresh:
                _check_fresh(conn, fresh, self._fts_known)
            if needed:
                rows = read_task_rows(conn)
                for name, task in needed:
                    row = rows.get((task.name, task.version))
                    if row is None or row["status"] != "done":
                        raise NotReady(name, row["rows_processed"] if row else 0,
                                       row["rows_total"] if row else None,
                                       status=row["status"] if row else "pending")
            yield conn

    def _requirement(self, name: str) -> tuple[str, TaskConfig]:
        # `fts:` requirements are checked against the database, see `_check_fresh`.
        task = self._requirements.get(name)
        if task is None:
            known = ", ".join(sorted(self._requirements)) or "none"
            raise TaskError(f"nothing provides {name!r} (known: {known})", task=name)
        return name, task

    def writer_state(self) -> WriterState:
        """The Writer's counters (messages, transactions, WAL)."""
        state: WriterState = self._ask("writer", WriterStatus())
        return state

    def status(self) -> dict[str, Any]:
        """Everything worth knowing about the running engine, with secrets removed."""
        path = str(self.config.database.path)
        out: dict[str, Any] = {
            "state": self._state,
            "run_id": self.run_id,
            "database": {"path": path, "size_bytes": file_size(path),
                         "wal_bytes": file_size(path + "-wal")},
        }
        if self._state == "running":
            try:
                state: WriterState = self._ask("writer", WriterStatus(),
                                               timeout=STATUS_TIMEOUT_S)
                out["writer"] = dataclasses.asdict(state)
            except Timeout:
                out["writer"] = {"error": f"no answer within {STATUS_TIMEOUT_S}s (busy)"}
            except EngineError as exc:
                out["writer"] = {"error": str(exc)}
            out["writer"]["queue_depth"] = self.queue_depth("writer")
        if self._state == "running" and self._plans:
            out["tasks"] = self._task_status()
        if self._state == "running":
            out["fts"] = self._fts_status()
        if self._state == "running" and self.config.sources:
            out["sync"] = self._sync_status()
        if self._state == "running" and self.mirror.enabled:
            out["mirror"] = self._mirror_status()
        if self._readers is not None:
            out["readers"] = {"size": self._readers.size, "lent": self._readers.lent}
        if self._log is not None:
            out["message_log"] = {"path": self.message_log_path,
                                  "queued": self._log.queued,
                                  "write_errors": self._log.write_errors,
                                  "last_write_error": self._log.last_write_error}
        out["failures"] = {"total": self.supervisor.total,
                           "recent": [dataclasses.asdict(f)
                                      for f in self.supervisor.failures()]}
        if self._fatal is not None:
            out["fatal"] = dataclasses.asdict(self._fatal)
        return _redact(self._redactor, out)

    def _status_answers(self, *asks: tuple[str, Message]) -> tuple[Any, ...] | dict[str, str]:
        """The answers to `asks`, or, if one does not come in time, what went wrong."""
        try:
            return tuple(self._ask(receiver, message, timeout=STATUS_TIMEOUT_S)
                         for receiver, message in asks)
        except Timeout:
            return {"error": f"no answer within {STATUS_TIMEOUT_S}s (busy)"}
        except EngineError as exc:
            return {"error": str(exc)}

    def _task_status(self) -> list[dict[str, Any]] | dict[str, str]:
        answers = self._status_answers(("backfill", TasksStatus()),
                                       ("progress", ProgressSnapshot()))
        if isinstance(answers, dict):
            return answers
        views: tuple[TaskView, ...] = answers[0]
        progress: tuple[ProgressView, ...] = answers[1]
        live = {p.name: p for p in progress if p.scope == "task"}
        out = []
        for view in views:
            entry = dataclasses.asdict(view)
            seen = live.get(view.name)
            entry["rate_rows_s"] = seen.rate_rows_s if seen else None
            entry["eta_s"] = seen.eta_s if seen else None
            entry["progress_saved"] = seen.persisted if seen else 0
            entry["progress_save_failures"] = seen.persist_failures if seen else 0
            entry["last_progress_save_error"] = seen.last_persist_error if seen else None
            out.append(entry)
        return out

    def _fts_status(self) -> dict[str, Any]:
        answers = self._status_answers(("fts", FtsStatus()))
        return answers if isinstance(answers, dict) else fts_view_dict(answers[0])

    def _sync_status(self) -> list[dict[str, Any]] | dict[str, str]:
        answers = self._status_answers(("sync", SyncStatus()), ("progress", ProgressSnapshot()))
        if isinstance(answers, dict):
            return answers
        views: tuple[SourceView, ...] = answers[0]
        progress: tuple[ProgressView, ...] = answers[1]
        live = {p.name: p for p in progress if p.scope == "sync"}
        assert self._readers is not None
        with self._readers.lend(STATUS_TIMEOUT_S) as conn:
            rejects = sync_sql.reject_counts(conn)
        out = []
        for view in views:
            entry = source_view_dict(view)
            seen = live.get(view.name)
            running = view.current is not None and seen is not None
            entry["rate_rows_s"] = seen.rate_rows_s if running and seen else None
            entry["eta_s"] = seen.eta_s if running and seen else None
            entry["rejects_stored"] = rejects.get(view.name, 0)
            out.append(entry)
        return out

    def _mirror_status(self) -> dict[str, Any]:
        answers = self._status_answers(("mirror", MirrorStatus()))
        out: dict[str, Any] = (answers if isinstance(answers, dict)
                               else mirror_view_dict(answers[0]))
        assert self._readers is not None
        try:
            with self._readers.lend(STATUS_TIMEOUT_S) as conn:
                depth, oldest = mirror_sql.outbox_depth(conn)
        except (EngineError, apsw.Error) as exc:
            out["outbox"] = {"error": str(exc)}
        else:
            out["outbox"] = {"depth": depth, "oldest_age_s": None if oldest is None
                             else round(max(0.0, time.time() - oldest), 3)}
        return out

    def _control_for_http(self, name: str, action: str) -> dict[str, Any]:
        return dataclasses.asdict(self.tasks.control(name, action))

    def health(self) -> tuple[bool, list[str]]:
        """(steady, reasons): not steady while a required task (one that `provides`
        something) is under way, or while any task has failed."""
        reasons: list[str] = []
        if self._state != "running":
            reasons.append(f"engine is {self._state}")
            return False, reasons
        fts = self._fts_status()
        if fts.get("state") == "restore_failed":
            reasons.append(f"FTS index of {', '.join(fts['tables'])} is stale: {fts['error']}")
        tasks = self._task_status() if self._plans else []
        if isinstance(tasks, dict):
            return False, [*reasons, f"tasks: {tasks['error']}"]
        for task in tasks:
            ident = f"{task['name']}@{task['version']}"
            if task["status"] == "failed":
                reasons.append(f"task {ident} failed: {task['error']}")
            elif task["provides"] and task["status"] in ("pending", "running", "paused"):
                # Cancelled is a person's decision, not a state to wait out.
                reasons.append(f"task {ident} (provides {task['provides']}) is "
                               f"{task['status']}: {task['processed']:,} of "
                               f"{task['total'] if task['total'] is not None else '?'} rows")
            if task["last_progress_save_error"]:
                reasons.append(f"task {ident}: saving progress failed "
                               f"({task['progress_save_failures']} times so far): "
                               f"{task['last_progress_save_error']}")
        return not reasons, reasons

    # --- plumbing -----------------------------------------------------------------------

    def queue_depth(self, receiver: str = "writer") -> int:
        """Messages sent to `receiver` that it has not started handling yet."""
        return self._bus.depth(receiver) if self._bus is not None else 0

    def messages_sent(self, receiver: str = "writer") -> int:
        """Messages sent to `receiver` since the engine started."""
        return self._bus.sent(receiver) if self._bus is not None else 0

    def wait_for_sent(self, receiver: str, count: int, timeout: float | None = None) -> bool:
        """Block until `count` messages were sent to `receiver` (a barrier for tools and tests)."""
        self._require_running()
        assert self._bus is not None
        return self._bus.wait_for_sent(receiver, count, timeout)

    def ask(self, receiver: str, message: Message, timeout: float | None = None) -> Any:
        """Send any protocol message and wait for its answer (for tools and tests)."""
        return self._ask(receiver, message, timeout)

    def ask_later(self, receiver: str, message: Message) -> Future[Any]:
        """Send any protocol message; returns the future its answer goes to."""
        return self._send(receiver, message, False)

    def tell(self, receiver: str, message: Message) -> None:
        """Send any protocol message without waiting (for tools and tests)."""
        self._require_running()
        assert self._bus is not None
        self._bus.tell(FACADE, receiver, message)

    def _ask(self, receiver: str, message: Message, timeout: float | None = None) -> Any:
        return self._send(receiver, message, True, timeout)

    def _send(self, receiver: str, message: Message, wait: bool,
              timeout: float | None = None) -> Any:
        self._require_running()
        assert self._bus is not None
        future = self._bus.ask(FACADE, receiver, message)
        return future.get(timeout=timeout) if wait else future

    def _require_running(self) -> None:
        if self._state != "running" or self._bus is None:
            raise EngineStopped("engine")

    def _table(self, name: str, kind: str) -> TableConfig:
        try:
            return self._tables[name]
        except KeyError:
            raise WriteError(f"table {name!r} is not declared in the config",
                             message_kind=kind) from None


def _params(params: Sequence[Any]) -> Row:
    if isinstance(params, (Mapping, str, bytes)):
        raise WriteError(f"parameters must be a sequence for positional '?' placeholders, not "
                         f"{type(params).__name__}", message_kind="writer.execute")
    return tuple(params)


def _rows(spec: TableConfig, rows: Iterable[Sequence[Any] | Mapping[str, Any]],
          columns: Sequence[str] | None, kind: str) -> tuple[tuple[str, ...], tuple[Row, ...]]:
    cols = tuple(columns) if columns is not None else spec.column_names
    unknown = [c for c in cols if c not in spec.column_names]
    if unknown:
        raise WriteError(f"table {spec.name} has no column(s) {', '.join(unknown)}",
                         message_kind=kind)
    data = tuple(rows)
    if all(type(row) is tuple for row in data):
        return cols, cast(tuple[Row, ...], data)
    out: list[Row] = []
    for i, row in enumerate(data):
        if isinstance(row, tuple):
            out.append(row)
        elif isinstance(row, Mapping):
            try:
                out.append(tuple(row[c] for c in cols))
            except KeyError as exc:
                raise BadRowError(f"{kind}: row {i} has no value for column {exc.args[0]!r}",
                                  message_kind=kind, row_index=i) from None
        elif isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise BadRowError(f"{kind}: row {i} is {type(row).__name__}, expected a tuple, "
                              "list or dict", message_kind=kind, row_index=i)
        else:
            out.append(tuple(row))
    return cols, tuple(out)


def _check_fresh(conn: apsw.Connection, names: list[str], known: set[str]) -> None:
    """Raise `NotReady` if a named FTS table (or the table it indexes) is deferred.

    `known` keeps the FTS tables (and the tables they index) seen so far, so the
    schema is read again only for a name not seen yet.
    """
    deferral = fts_sql.read_deferral(conn)
    for name in names:
        table = name.removeprefix("fts:")
        if deferral is not None and deferral.covers(table):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deferral.started_at))
            status = "restore_failed" if deferral.last_error else "deferred"
            raise NotReady(name, 0, None, status=status,
                           detail=f"the FTS index has not been updated since {since}")
        if table.lower() not in known:
            indexes = fts_sql.find_indexes(conn)
            known.update(i.name.lower() for i in indexes)
            known.update(i.source.lower() for i in indexes if i.source)
            if table.lower() not in known:
                listed = ", ".join(sorted(i.name for i in indexes)) or "none"
                raise FtsError(f"{name}: no FTS table is called {table!r} or indexes it "
                               f"(FTS tables: {listed})")


def run_view_dict(run: SyncRunView) -> dict[str, Any]:
    """A run as plain data, with the FTS answers summarised."""
    out = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)
           if f.name not in ("fts_lease", "fts_after")}
    lease = run.fts_lease
    out["fts_deferred"] = bool(lease and lease.deferred)
    return out


def source_view_dict(view: SourceView) -> dict[str, Any]:
    out = {f.name: getattr(view, f.name) for f in dataclasses.fields(view)}
    out["current"] = run_view_dict(view.current) if view.current else None
    out["last"] = run_view_dict(view.last) if view.last else None
    return out


def fts_view_dict(view: FtsView) -> dict[str, Any]:
    """An `FtsView` as plain JSON-able data, for status output."""
    out = dataclasses.asdict(view)
    out["sources"] = dict(view.sources)
    out["tables"] = list(view.tables)
    out["not_deferrable"] = dict(view.not_deferrable)
    return out


def _redact(redactor: Redactor, value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(redactor, v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(redactor, v, key) for v in value]
    return redactor.value(key, value)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Set `stop` on SIGINT or SIGTERM for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Tasks:
    """`engine.tasks`: start, watch and control the chunked tasks."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiting: dict[tuple[str, ...], Future[Any]] = {}

    def start(self) -> None:
        """Recover task rows left by earlier runs and start what should run."""
        self._engine.tell("backfill", StartTasks())

    def list(self) -> tuple[TaskView, ...]:
        """Every task, as the Backfill actor sees it now."""
        views: tuple[TaskView, ...] = self._engine.ask("backfill", TasksStatus())
        return views

    def progress(self) -> tuple[ProgressView, ...]:
        """Live progress (rate, ETA, waiting reason) of every job."""
        views: tuple[ProgressView, ...] = self._engine.ask("progress", ProgressSnapshot())
        return views

    def pause(self, name: str) -> TaskView:
        """Stop sending chunks after the one running; returns once the state is saved."""
        return self.control(name, "pause")

    def resume(self, name: str) -> TaskView:
        """Continue a paused task, or retry a failed or cancelled one from its checkpoint."""
        return self.control(name, "resume")

    def cancel(self, name: str) -> TaskView:
        """Stop between chunks; what was committed stays committed and visible."""
        return self.control(name, "cancel")

    def control(self, name: str, action: str) -> TaskView:
        view: TaskView = self._engine.ask("backfill", ControlTask(task=name, action=action))
        return view

    def wait(self, *names: str, timeout: float | None = None) -> tuple[TaskView, ...]:
        """Block until the tasks (all by default) are done, failed, cancelled or paused.

        Raises `TimeoutError` after `timeout` seconds; calling again with the
        same names goes on waiting for the same answer.
        """
        future = self._waiting.get(names)
        if future is None:
            future = self._waiting[names] = self._engine.ask_later("backfill",
                                                                   WaitTasks(tasks=names))
        try:
            views: tuple[TaskView, ...] = future.get(timeout=timeout)
        except Timeout:
            raise Timeout(f"tasks not settled within {timeout}s") from None
        except BaseException:
            del self._waiting[names]  # answered, with an error
            raise
        del self._waiting[names]
        return views


class Fts:
    """`engine.fts`: FTS deferral around bulk catch-ups, and its state."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def begin_catch_up(self, source: str, backlog_rows: int) -> FtsLease:
        """Say `source` is about to write `backlog_rows` rows; FTS upkeep is deferred if
        that reaches the threshold. Always pair with `end_catch_up` in a `finally`."""
        lease: FtsLease = self._engine.ask("fts", BeginCatchUp(source=source,
                                                               backlog_rows=backlog_rows))
        return lease

    def end_catch_up(self, source: str) -> FtsView:
        """`source` is done; when it was the last one, the triggers are restored first."""
        view: FtsView = self._engine.ask("fts", EndCatchUp(source=source))
        return view

    @contextmanager
    def catch_up(self, source: str, backlog_rows: int) -> Iterator[FtsLease]:
        """`begin_catch_up` for the `with` block, `end_catch_up` however it ends."""
        lease = self.begin_catch_up(source, backlog_rows)
        try:
            yield lease
        finally:
            self.end_catch_up(source)

    def status(self) -> FtsView:
        view: FtsView = self._engine.ask("fts", FtsStatus())
        return view

    def restore(self) -> FtsView:
        """Restore now, even while sources are catching up; returns once it has ended."""
        view: FtsView = self._engine.ask("fts", RestoreFtsNow(reason="requested"))
        return view


class Mirror:
    """`engine.mirror`: reconcile or verify the MySQL mirror, and read its state."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def enabled(self) -> bool:
        mirror = self._engine.config.mirror
        return mirror is not None and mirror.enabled

    def _require(self) -> None:
        if not self.enabled:
            raise MirrorError("the config has no enabled mirror section")

    def reconcile(self, timeout: float | None = None) -> ReconcileView:
        """Make the mirror equal SQLite for this scope; joins a reconcile under way.

        Raises `MirrorUnavailable` when the server is out of reach (the
        reconcile then runs on the next successful connect), `MirrorError`
        when it fails, `TimeoutError` when it has not ended within `timeout`.
        """
        self._require()
        try:
            view: ReconcileView = self._engine.ask_later("mirror", Reconcile()).get(
                timeout=timeout)
        except Timeout:
            raise Timeout(f"the reconcile has not ended within {timeout}s") from None
        return view

    def verify(self, timeout: float | None = None) -> ReconcileView:
        """Compare SQLite and the mirror range by range, changing nothing."""
        self._require()
        try:
            view: ReconcileView = self._engine.ask_later("mirror", Verify()).get(
                timeout=timeout)
        except Timeout:
            raise Timeout(f"the verify has not ended within {timeout}s") from None
        return view

    def status(self) -> dict[str, Any]:
        """The mirror's state, as `status()["mirror"]` shows it."""
        self._require()
        return self._engine.status().get("mirror", {})

    def view(self) -> MirrorView:
        self._require()
        view: MirrorView = self._engine.ask("mirror", MirrorStatus())
        return view


def reconcile_view_dict(view: ReconcileView) -> dict[str, Any]:
    out = dataclasses.asdict(view)
    out["in_sync"] = view.in_sync
    return out


def mirror_view_dict(view: MirrorView) -> dict[str, Any]:
    out = dataclasses.asdict(view)
    if view.last_reconcile is not None:
        out["last_reconcile"] = reconcile_view_dict(view.last_reconcile)
    return out


class RunHandle:
    """A source run asked for and not yet ended."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> SyncRunView:
        """The ended run; raises `TimeoutError` if it has not ended within `timeout`."""
        try:
            view: SyncRunView = self._future.get(timeout=timeout)
        except Timeout:
            raise Timeout(f"the run has not ended within {timeout}s") from None
        return view


class Sync:
    """`engine.sync`: run sources now, watch them, read their history."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def run(self, source: str, *, mode: str = "auto", join: bool = True,
            timeout: float | None = None) -> SyncRunView:
        """Run `source` now and return its run once it has ended.

        While it runs already this joins that run (or, with `join=False`,
        raises `SyncBusy`). `mode` is `auto`, `full` or `incremental`.
        """
        return self.run_later(source, mode=mode, join=join).result(timeout)

    def run_later(self, source: str, *, mode: str = "auto", join: bool = True) -> RunHandle:
        """`run` without waiting: a handle whose `result()` is the `SyncRunView`."""
        return RunHandle(self._engine.ask_later("sync", RunSource(source=source, mode=mode,
                                                                  join=join)))

    def status(self) -> tuple[SourceView, ...]:
        views: tuple[SourceView, ...] = self._engine.ask("sync", SyncStatus())
        return views

    def wait(self, *sources: str, timeout: float | None = None) -> tuple[SourceView, ...]:
        """Block until the sources (all by default) have no run and no retry pending."""
        try:
            views: tuple[SourceView, ...] = self._engine.ask_later(
                "sync", WaitSources(sources=sources)).get(timeout=timeout)
        except Timeout:
            raise Timeout(f"sources not idle within {timeout}s") from None
        return views

    def history(self, source: str | None = None, limit: int = 20) -> list[SyncRunView]:
        """The newest runs first, from `_sw_sync_runs`."""
        with self._engine.read() as conn:
            return sync_sql.history(conn, source, limit)
