"""The engine's parts as callers meet them: `engine.tasks`, `.fts`, `.sync`, `.mirror`.

Each is a thin set of asks to one actor, waiting for the answer; a run
asked for without waiting is a `RunHandle`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlwarden import views
from sqlwarden.errors import EngineStopped, MirrorError
from sqlwarden.futures import Future, Timeout
from sqlwarden.protocol import (
    BeginCatchUp,
    ControlTask,
    EndCatchUp,
    FtsStatus,
    ProgressSnapshot,
    QuarantineMirrorRows,
    Reconcile,
    RestoreFtsNow,
    RunSource,
    StartTasks,
    SyncStatus,
    TasksStatus,
    Verify,
    WaitSources,
    WaitTasks,
)
from sqlwarden.sync import runs as sync_sql

if TYPE_CHECKING:
    from sqlwarden.facade.engine import Engine


class Tasks:
    """`engine.tasks`: start, watch and control the chunked tasks."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiting: dict[tuple[str, ...], Future[Any]] = {}
        #: Told to start: a restarted Backfill actor is told again.
        self.started = False

    def start(self) -> None:
        """Recover task rows left by earlier runs and start what should run."""
        self._engine.tell("backfill", StartTasks())
        self.started = True

    def list(self) -> tuple[views.TaskView, ...]:
        """Every task, as the Backfill actor sees it now."""
        found: tuple[views.TaskView, ...] = self._engine.ask("backfill", TasksStatus())
        return found

    def progress(self) -> tuple[views.ProgressView, ...]:
        """Live progress (rate, ETA, waiting reason) of every job."""
        found: tuple[views.ProgressView, ...] = self._engine.ask("progress", ProgressSnapshot())
        return found

    def pause(self, name: str) -> views.TaskView:
        """Stop sending chunks after the one running; returns once the state is saved."""
        return self.control(name, "pause")

    def resume(self, name: str) -> views.TaskView:
        """Continue a paused task, or retry a failed or cancelled one from its checkpoint."""
        return self.control(name, "resume")

    def cancel(self, name: str) -> views.TaskView:
        """Stop between chunks; what was committed stays committed and visible."""
        return self.control(name, "cancel")

    def control(self, name: str, action: str) -> views.TaskView:
        view: views.TaskView = self._engine.ask("backfill", ControlTask(task=name, action=action))
        return view

    def wait(self, *names: str, timeout: float | None = None) -> tuple[views.TaskView, ...]:
        """Block until the tasks (all by default) are done, failed, cancelled or paused.

        Raises `TimeoutError` after `timeout` seconds; calling again with the
        same names goes on waiting for the same answer.
        """
        future = self._waiting.get(names)
        if future is None:
            future = self._waiting[names] = self._engine.ask_later("backfill",
                                                                   WaitTasks(tasks=names))
        try:
            found: tuple[views.TaskView, ...] = waited(future, timeout,
                                                       "tasks not settled")
        except Timeout:
            raise
        except BaseException:
            del self._waiting[names]  # answered, with an error
            raise
        del self._waiting[names]
        return found


class Fts:
    """`engine.fts`: FTS deferral around bulk catch-ups, and its state."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def begin_catch_up(self, source: str, backlog_rows: int) -> views.FtsLease:
        """Say `source` is about to write `backlog_rows` rows; FTS upkeep is deferred if
        that reaches the threshold. Always pair with `end_catch_up` in a `finally`."""
        lease: views.FtsLease = self._engine.ask("fts", BeginCatchUp(source=source,
                                                               backlog_rows=backlog_rows))
        return lease

    def end_catch_up(self, source: str) -> views.FtsView:
        """`source` is done; when it was the last one, the triggers are restored first."""
        view: views.FtsView = self._engine.ask("fts", EndCatchUp(source=source))
        return view

    @contextmanager
    def catch_up(self, source: str, backlog_rows: int) -> Iterator[views.FtsLease]:
        """`begin_catch_up` for the `with` block, `end_catch_up` however it ends."""
        lease = self.begin_catch_up(source, backlog_rows)
        try:
            yield lease
        finally:
            self.end_catch_up(source)

    def status(self) -> views.FtsView:
        view: views.FtsView = self._engine.ask("fts", FtsStatus())
        return view

    def restore(self) -> views.FtsView:
        """Restore now, even while sources are catching up; returns once it has ended."""
        view: views.FtsView = self._engine.ask("fts", RestoreFtsNow(reason="requested"))
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

    def reconcile(self, timeout: float | None = None) -> views.ReconcileView:
        """Make the mirror equal SQLite for this scope; joins a reconcile under way.

        Raises `MirrorUnavailable` when the server is out of reach (the
        reconcile then runs on the next successful connect), `MirrorError`
        when it fails, `TimeoutError` when it has not ended within `timeout`.
        """
        self._require()
        view: views.ReconcileView = waited(self._engine.ask_later("mirror", Reconcile()),
                                           timeout, "the reconcile has not ended")
        return view

    def retry_quarantined(self) -> int:
        """Send every quarantined row again: each goes back in the outbox, leaves the
        quarantine once it is on the server, or stays with the new reason. Returns how
        many rows are tried again."""
        self._require()
        result: views.WriteResult = self._engine.ask(
            "writer", QuarantineMirrorRows(retry=True, at=time.time()))
        return result.changes

    def verify(self, timeout: float | None = None) -> views.ReconcileView:
        """Compare SQLite and the mirror range by range, changing nothing."""
        self._require()
        view: views.ReconcileView = waited(self._engine.ask_later("mirror", Verify()),
                                           timeout, "the verify has not ended")
        return view

    def status(self) -> dict[str, Any]:
        """The mirror's state, as `status()["mirror"]` shows it."""
        self._require()
        return self._engine.status().get("mirror", {})

    def view(self) -> views.MirrorView:
        """The mirror's state as its actor last put it up (answered at once, even while
        the mirror waits on its server)."""
        self._require()
        board = self._engine.mirror_board
        if board is None or board.view is None or self._engine.state != "running":
            raise EngineStopped("engine")
        return board.view


class RunHandle:
    """A source run asked for and not yet ended."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> views.SyncRunView:
        """The ended run; raises `TimeoutError` if it has not ended within `timeout`."""
        view: views.SyncRunView = waited(self._future, timeout, "the run has not ended")
        return view


class Sync:
    """`engine.sync`: run sources now, watch them, read their history."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def run(self, source: str, *, mode: str = "auto", join: bool = True,
            timeout: float | None = None) -> views.SyncRunView:
        """Run `source` now and return its run once it has ended.

        While it runs already this joins that run (or, with `join=False`,
        raises `SyncBusy`). `mode` is `auto`, `full` or `incremental`.
        """
        return self.run_later(source, mode=mode, join=join).result(timeout)

    def run_later(self, source: str, *, mode: str = "auto", join: bool = True) -> RunHandle:
        """`run` without waiting: a handle whose `result()` is the `views.SyncRunView`."""
        return RunHandle(self._engine.ask_later("sync", RunSource(source=source, mode=mode,
                                                                  join=join)))

    def status(self) -> tuple[views.SourceView, ...]:
        found: tuple[views.SourceView, ...] = self._engine.ask("sync", SyncStatus())
        return found

    def wait(self, *sources: str, timeout: float | None = None) -> tuple[views.SourceView, ...]:
        """Block until the sources (all by default) have no run and no retry pending."""
        found: tuple[views.SourceView, ...] = waited(
            self._engine.ask_later("sync", WaitSources(sources=sources)), timeout,
            "sources not idle")
        return found

    def history(self, source: str | None = None, limit: int = 20) -> list[views.SyncRunView]:
        """The newest runs first, from `_sw_sync_runs`."""
        with self._engine.read() as conn:
            return sync_sql.history(conn, source, limit)


def waited(future: Future[Any], timeout: float | None, what: str) -> Any:
    """`future`'s answer; a `Timeout` that says what did not happen in time."""
    try:
        return future.get(timeout=timeout)
    except Timeout:
        raise Timeout(f"{what} within {timeout}s") from None
