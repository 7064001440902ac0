"""`Engine`: what a service embeds and what the CLI drives.

It builds the actors from a validated config, starts them in dependency
order, and stops them in reverse. Its methods are the edge of the actor
system: they `ask` and wait, and record every message on the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

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
from sqlwarden.db.lock import EngineLock
from sqlwarden.db.readers import ReaderPool
from sqlwarden.errors import (
    EngineError,
    EngineStopped,
    FtsError,
    NotReady,
    TaskError,
    WriteError,
)
from sqlwarden.facade import rows as rows_mod
from sqlwarden.facade import status as status_mod
from sqlwarden.facade.parts import Fts, Mirror, Sync, Tasks
from sqlwarden.facade.waits import StartWaits
from sqlwarden.fts.deferral import read_deferral
from sqlwarden.fts.indexes import find_indexes
from sqlwarden.futures import Future
from sqlwarden.mirror.driver import load_driver
from sqlwarden.mirror.state import ViewBoard
from sqlwarden.msglog.log import MessageLog, NullMessageLog
from sqlwarden.protocol import (
    Checkpoint,
    Execute,
    ExecuteBatch,
    FtsTick,
    InsertRows,
    Message,
    MirrorBoot,
    SetMeta,
    StartTasks,
    Statement,
    SyncBoot,
    TableChecksums,
    UpsertRows,
    WriterStatus,
)
from sqlwarden.redact import Redactor, guard_logs
from sqlwarden.scheduler import Scheduler
from sqlwarden.supervisor import Failure, Supervisor
from sqlwarden.tasks.chunks import TaskPlan, read_task_rows
from sqlwarden.views import (
    CheckpointResult,
    WriteResult,
    WriterState,
)

if TYPE_CHECKING:
    from sqlwarden.endpoint_token import TokenFile
    from sqlwarden.statusd import StatusServer

log = logging.getLogger(__name__)

FACADE = "facade"
#: How long stopping waits for an actor to commit what is queued and close.
STOP_TIMEOUT_S = 120.0
#: How long status waits for an actor's answer before saying it is busy.
STATUS_TIMEOUT_S = 2.0


class Engine:
    """An embedded sqlwarden engine; use as a context manager or call start/stop."""

    def __init__(self, config: Config, *, scheduler: Scheduler | None = None,
                 tasks: Iterable[TaskConfig] = (), start_tasks: bool = True,
                 progress_clock: Callable[[], float] | None = None) -> None:
        """`tasks` adds chunked tasks declared in Python (a `call` may be a function).

        With `start_tasks=False` tasks wait for `engine.tasks.start()`: the
        CLI catches up its sources first. `scheduler` keeps the engine's time
        (every timer, on one monotonic clock); a test passes a
        `ManualScheduler` to step time instead of waiting. `progress_clock`
        replaces the clock the Progress actor rate-limits persistence with.
        """
        added: list[TaskConfig] = []
        for task in tasks:
            added.append(validate_task(task, dataclasses.replace(
                config, tasks=config.tasks + tuple(added))))
        if added:
            config = dataclasses.replace(config, tasks=config.tasks + tuple(added))
        self.config = config
        # The engine stops the scheduler it made; one passed in is the caller's.
        self._own_scheduler = scheduler is None
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self._progress_clock = progress_clock  # None: the scheduler's clock
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
        # The engine's Python logs too: an exception's text may quote a secret.
        guard_logs(self._redactor)
        self._state = "new"
        self._fatal: Failure | None = None
        self._stopped = threading.Event()
        self._actors: list[tuple[str, pykka.ActorRef[Any], float]] = []
        self._log: MessageLog | None = None
        self._bus: Bus | None = None
        self._readers: ReaderPool | None = None
        self._status_server: StatusServer | None = None
        #: The control token's file while the status endpoint serves (see `endpoint_token`).
        self._token_file: TokenFile | None = None
        self._lock: EngineLock | None = None
        self._at_rest: list[Callable[[apsw.Connection, WriterState | None], None]] = []
        #: The Mirror's latest view, read without asking it (see `ViewBoard`).
        self.mirror_board: ViewBoard | None = None
        self.supervisor = Supervisor(redactor=self._redactor, on_fatal=self._on_fatal)
        self.supervisor.on_restart = self._restart_later
        #: How each actor was built, to build it again when it goes down (see `_restart`).
        self._specs: dict[str, tuple[Any, dict[str, Any]]] = {}
        #: Held while actors are started or stopped: a restart never races the stop.
        self._lifecycle = threading.Lock()
        self._stopping = False
        #: While `start` runs: its thread, its waits, and the stop asked for meanwhile.
        self._start_thread: threading.Thread | None = None
        self._start_waits: StartWaits | None = None
        self._start_abort = threading.Event()
        self._start_ended = threading.Event()
        self._start_stop: threading.Event | None = None
        #: Set as a stop begins: a write or read meeting another program's lock gives up
        #: at once (a wait the next start recovers from) instead of after the busy timeout.
        self._halting = threading.Event()

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

    @property
    def waiting_for(self) -> str | None:
        """While `start` waits (a lock another program holds, a full disk): what for."""
        waits = self._start_waits
        return waits.reason if waits is not None and self._start_thread is not None else None

    def start(self, *, stop: threading.Event | None = None, timeout: float | None = None,
              on_wait: Callable[[str], None] | None = None) -> Engine:
        """Start the actors in dependency order and run the boot recovery.

        A step that writes and meets a wait (another program holds the
        database's write lock past the busy timeout, the disk is full) is
        tried again with backoff until the cause goes, then start goes on by
        itself; `on_wait(reason)` is called when such a wait begins, and
        `waiting_for` says what it waits for meanwhile. `stop` being set, or
        `stop()` called from another thread, ends the wait: what start did is
        undone (the engine lock too) and `EngineStopped` is raised. After
        `timeout` seconds (None: no limit) it gives up with `Timeout`. Any
        other error fails the start at once, undone the same way.
        """
        if self._state != "new":
            raise EngineError(f"the engine cannot start: it is {self._state}")
        # One engine per database, before anything touches the disk: a refused
        # start leaves no file behind and changes nothing.
        self._lock = EngineLock.acquire(self.config.database.path)
        waits = self._start_waits = StartWaits(
            path=self.config.database.path, scheduler=self.scheduler, timeout_s=timeout,
            on_wait=on_wait, stopped=lambda: self._start_abort.is_set() or (
                stop is not None and stop.is_set()))
        self._start_thread = threading.current_thread()
        self._start_stop = stop
        log_config = self.config.message_log
        log_class = MessageLog if log_config.enabled else NullMessageLog
        try:
            self._log = log_class(log_config, self.config.message_log_path,
                                  redactor=self._redactor, run=self.run_id)
            self._log.start()
            self._bus = Bus(self._log)
            bus = self._bus
            self.supervisor.on_event = lambda message: bus.note(
                "supervisor", getattr(message, "actor", FACADE), message)
            if self.mirror.enabled:
                # Before the status endpoint's modules load OpenSSL: the connector's C
                # extension needs its own (see `mirror.driver`).
                load_driver()
            # Bound first: a port that is taken must not leave a new database behind.
            if self.config.status.enabled:
                from sqlwarden.endpoint_token import TokenFile, new_token, token_path
                from sqlwarden.statusd import StatusServer

                # Written only now the engine lock is held: a refused start makes none.
                token, token_file = new_token(), token_path(self.config.database.path)
                # A client quoting it (in a task name, say) must not put it in a log.
                self._redactor.add(token)
                self._status_server = StatusServer(
                    self.config.status.host, self.config.status.port, status=self.status,
                    health=self.health, token=token, token_file=str(token_file),
                    control=self._control_for_http,
                    fts_restore=lambda: status_mod.fts_view_dict(self.fts.restore()),
                    sync_run=lambda name, mode: status_mod.run_view_dict(
                        self.sync.run(name, mode=mode)),
                    mirror_reconcile=lambda: status_mod.reconcile_view_dict(
                        self.mirror.reconcile()),
                    mirror_retry=lambda: {"queued": self.mirror.retry_quarantined()})
                self._token_file = TokenFile.write(token_file, token)
            # Opening the database (WAL) and applying the schema write: a wait is
            # waited out here, each attempt one transaction that commits whole or not.
            waits.run(lambda: self._start_actor(WriterActor, config=self.config,
                                                tasks=self._plans, give_up=self._giving_up),
                      "opening the database")
            self._start_actor(ProgressActor, config=self.config, clock=self._progress_clock)
            self._start_actor(FtsControllerActor, config=self.config)
            self._start_actor(BackfillActor, config=self.config, plans=self._plans,
                              run_id=self.run_id)
            self._start_actor(SyncActor, config=self.config, run_id=self.run_id)
            if self.mirror.enabled:
                assert self.config.mirror is not None
                self.mirror_board = ViewBoard()
                self._start_actor(MirrorActor, config=self.config, board=self.mirror_board)
            self._readers = ReaderPool(self.config.database, give_up=self._giving_up)
            if self._status_server is not None:
                self._status_server.start()
                self._lock.describe(endpoint=self.status_url)
            self._state = "running"
            waits.run(lambda: self._ask("writer", SetMeta(key="run_id", value=self.run_id)),
                      "recording the run")
            # Where `sqlwarden task pause` finds this engine.
            waits.run(lambda: self._ask("writer", SetMeta(key="status_url",
                                                          value=self.status_url)),
                      "recording the status endpoint")
            # Boot recovery: a deferral left by an earlier run is restored before
            # start returns (a failure is kept in status and retried, never raised).
            self._ask("fts", FtsTick())
            # Runs a gone process left `running` are marked failed, then schedules armed.
            waits.run(lambda: self._ask("sync", SyncBoot()), "reaping sync runs")
            if self.mirror.enabled:
                # Connects in its first step; a server out of reach is a state, not an error.
                self._ask("mirror", MirrorBoot())
            waits.check()  # a stop asked for during the last step
        except BaseException:
            self._shutdown(undo_start=True)
            raise
        finally:
            self._start_thread = None
            self._start_stop = None
            self._start_ended.set()
        if self._start_tasks:
            self.tasks.start()
        return self

    def _start_actor(self, actor_class: Any, **kwargs: Any) -> None:
        assert self._bus is not None
        self._specs[actor_class.name] = (actor_class, kwargs)
        ready: Future[None] = Future()
        ref = actor_class.start(bus=self._bus, supervisor=self.supervisor,
                                scheduler=self.scheduler, ready=ready, **kwargs)
        entry = (actor_class.name, ref, actor_class.stop_timeout_s)
        self._actors.append(entry)
        # No timeout: setup may rebuild a large index, and on_start always answers.
        try:
            ready.get()
        except BaseException:
            # Its setup failed and it stops itself; a start that tries again builds anew.
            self._actors.remove(entry)
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=actor_class.stop_timeout_s)
            raise
        self._bus.register(actor_class.name, ref)

    def stop(self) -> None:
        """Stop everything in reverse order; queued writes are committed first.

        Called from another thread while `start` waits, it ends that wait and
        returns once the start is undone.

        It never waits out `busy_timeout_ms`: from its first step a write or read
        meeting another program's lock gives up at once, failing as a wait. What
        could not be recorded so (a sync run's end, a task's last save) the next
        start recovers, as after a crash.
        """
        starting = self._start_thread
        if starting is not None:
            self._start_abort.set()
            if starting is threading.current_thread():
                return  # a signal handler on the starting thread: start unwinds itself
            self._start_ended.wait()
        if self._state in ("new", "stopped"):
            return
        self._halting.set()
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

    def _giving_up(self) -> bool:
        """Whether a wait for another program's lock should end now: the engine stops, or
        its start was asked to (see `connect.BusyWait`)."""
        stop = self._start_stop
        return (self._halting.is_set() or self._start_abort.is_set()
                or (stop is not None and stop.is_set()))

    def _shutdown(self, *, checksums: bool = False, undo_start: bool = False) -> None:
        self._halting.set()
        with self._lifecycle:  # waits for a restart under way; none starts after this
            self._stopping = True
        if self._bus is not None:  # no restart comes now: what waits for one is answered
            self._bus.release(None, EngineStopped("engine"))
        if self._status_server is not None:
            self._status_server.stop()
            self._status_server = None
        if self._token_file is not None:
            # Only the file this run wrote; a stale one would be harmless (replaced at start).
            self._token_file.remove()
            self._token_file = None
        for name, ref, stop_timeout_s in reversed(self._actors):
            if name == "writer" and checksums and ref.is_alive():
                self._record_checksums()
                self._call_at_rest()
            if name == "writer" and self._readers is not None:
                # Before the Writer closes: the last connection to close removes the WAL.
                self._readers.close()
            if self._bus is not None:
                self._bus.unregister(name)
            if ref.is_alive():
                with contextlib.suppress(pykka.Timeout):
                    ref.stop(block=True, timeout=stop_timeout_s)
        self._actors.clear()
        if self._bus is not None:  # one that went down while the others stopped
            self._bus.release(None, EngineStopped("engine"))
        if self._readers is not None:
            self._readers.close()
        if self._own_scheduler:
            self.scheduler.stop()
        if self._log is not None:
            self._log.close()
            if undo_start:  # a refused start leaves no message log it made behind
                self._log.discard_created()
        if self._lock is not None:
            # Last: the Writer has closed the database by now.
            self._lock.release()
        self._state = "stopped" if self._fatal is None else "failed"
        self._stopped.set()

    def at_rest(self, fn: Callable[[apsw.Connection, WriterState | None], None]) -> None:
        """Have `fn(conn, writer)` called while the engine stops, once every actor but the
        Writer has stopped and the Writer has committed what was queued.

        `conn` is a read-only connection that sees the database as this run leaves
        it, `writer` the Writer's last counters: what the CLI's summary reads, so it
        counts what was committed. Called on the stopping thread, after a clean run
        only (not after a fatal failure); an error it raises is reported to the
        supervisor.
        """
        self._at_rest.append(fn)

    def _call_at_rest(self) -> None:
        if not self._at_rest or self._readers is None:
            return
        try:
            # A barrier too: the Writer answers after what was queued before it.
            writer: WriterState | None = self._ask("writer", WriterStatus(),
                                                   timeout=STOP_TIMEOUT_S)
        except EngineError:
            writer = None
        for fn in self._at_rest:
            try:
                with self._readers.lend(STOP_TIMEOUT_S) as conn:
                    fn(conn, writer)
            except Exception as exc:
                self.supervisor.report(FACADE, "at_rest", exc)

    # --- supervision --------------------------------------------------------------------

    def _restart_later(self, name: str, delay_s: float) -> None:
        """The supervisor's decision: restart `name` in `delay_s` (on the failing thread)."""
        def start_thread() -> None:
            # Its own thread: the new actor's setup must not hold up the scheduler.
            threading.Thread(target=self._restart, args=(name,), daemon=True,
                             name=f"sqlwarden-restart-{name}").start()

        try:
            self.scheduler.call_later(delay_s, start_thread)
        except RuntimeError:  # the scheduler has stopped: so has the engine
            if self._bus is not None:
                self._bus.release(name, EngineStopped(name))

    def _restart(self, name: str) -> None:
        """Build `name` again from its spec; its setup and boot message recover its state
        from the database, as at a start. Put on the bus only once it is ready, and only
        once every request its predecessor sent is answered (a chunk or a deferral it
        left at the Writer is in the database before the successor reads it: never two
        runners at once). What was held for it on the bus follows its boot message."""
        bus = self._bus
        if bus is not None and not bus.wait_answered(name, STOP_TIMEOUT_S):
            log.warning("%s: requests of the actor that went down are still unanswered "
                        "after %.0f s; restarting it anyway", name, STOP_TIMEOUT_S)
        with self._lifecycle:
            if self._state == "new" and not self._stopping:
                # Still starting (a long boot restore, say): try once it is running.
                self._restart_later(name, 0.5)
                return
            if self._stopping or self._state != "running" or bus is None:
                if bus is not None:
                    bus.release(name, EngineStopped(name))
                return
            actor_class, kwargs = self._specs[name]
            ready: Future[None] = Future()
            ref = actor_class.start(bus=bus, supervisor=self.supervisor,
                                    scheduler=self.scheduler, ready=ready,
                                    incarnation=self.supervisor.restarts().get(name, 0) + 1,
                                    **kwargs)
            try:
                ready.get(timeout=STOP_TIMEOUT_S)
            except Exception as exc:  # its setup failed (and was reported): try again later
                if ref.is_alive():
                    ref.stop(block=False)
                # What waits for it is answered: the next attempt may fail the same way.
                bus.release(name, exc)
                self.supervisor.actor_down(name, exc, "start", record=False)
                return
            self._actors = [(n, ref if n == name else r, t) for n, r, t in self._actors]
            boot = self._boot_message(name)
            bus.register(name, ref, first=None if boot is None else (FACADE, boot))
        self.supervisor.restarted(name)

    def _boot_message(self, name: str) -> Message | None:
        """What a freshly built actor is told to recover (the same as at a start)."""
        match name:
            case "fts":
                return FtsTick()
            case "sync":
                return SyncBoot()
            case "mirror":
                return MirrorBoot()
            case "backfill":
                return StartTasks() if self.tasks.started else None
        return None

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
        """Run one statement with positional `?` parameters; returns once committed.

        A non-finite float or an integer outside signed 64 bits among `params`
        is refused before it is sent (`WriteError` naming the parameter).
        """
        result: WriteResult = self._ask("writer", Execute(sql=sql, params=rows_mod.params(params)))
        return result

    def write_batch(self, statements: Iterable[str | tuple[str, Sequence[Any]]]) -> WriteResult:
        """Run several statements in one transaction: all commit, or none."""
        batch = tuple(Statement(sql=s, params=()) if isinstance(s, str)
                      else Statement(sql=s[0], params=rows_mod.params(
                          s[1], kind="writer.batch", statement=i))
                      for i, s in enumerate(statements))
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
        cols, data = rows_mod.insert_rows(spec, rows, columns)
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
        cols, data = rows_mod.upsert_rows(spec, rows, columns)
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

    def status(self) -> dict[str, Any]:
        """Everything worth knowing about the running engine, with secrets removed."""
        return status_mod.engine_status(self)

    def health(self) -> tuple[bool, list[str]]:
        """(steady, reasons): not steady while a required task (one that `provides`
        something) is under way, or while any task has failed."""
        return status_mod.engine_health(self)

    def writer_state(self) -> WriterState:
        """The Writer's counters (messages, transactions, WAL)."""
        state: WriterState = self._ask("writer", WriterStatus())
        return state

    def _control_for_http(self, name: str, action: str) -> dict[str, Any]:
        return dataclasses.asdict(self.tasks.control(name, action))

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


def _check_fresh(conn: apsw.Connection, names: list[str], known: set[str]) -> None:
    """Raise `NotReady` if a named FTS table (or the table it indexes) is deferred.

    `known` keeps the FTS tables (and the tables they index) seen so far, so the
    schema is read again only for a name not seen yet.
    """
    deferral = read_deferral(conn)
    for name in names:
        table = name.removeprefix("fts:")
        if deferral is not None and deferral.covers(table):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deferral.started_at))
            status = "restore_failed" if deferral.last_error else "deferred"
            raise NotReady(name, 0, None, status=status,
                           detail=f"the FTS index has not been updated since {since}")
        if table.lower() not in known:
            indexes = find_indexes(conn)
            known.update(i.name.lower() for i in indexes)
            known.update(i.source.lower() for i in indexes if i.source)
            if table.lower() not in known:
                listed = ", ".join(sorted(i.name for i in indexes)) or "none"
                raise FtsError(f"{name}: no FTS table is called {table!r} or indexes it "
                               f"(FTS tables: {listed})")


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
