"""`sqlwarden run`: the engine started, every source caught up, the tasks run, then served.

Progress bars while it catches up; a summary when it stops. SIGINT or
SIGTERM at any moment stops at the next boundary (a batch, a chunk, a range
of a reconcile, an FTS restore's transaction) and exits 0; the summary is
read from the database once the engine has stopped, so it counts what was
committed, never what was only read.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlwarden import __version__
from sqlwarden.cli.output import PROG, progress_bar, size
from sqlwarden.cli.sync import print_run, sync_with_bar
from sqlwarden.config import Config, load_config

#: How often the waits of `run` look for a stop request or a change.
POLL_S = 0.2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run` to the command line."""
    run = commands.add_parser(
        "run", help="start the engine, catch up every source, then serve",
        description="Start the engine on CONFIG: create or check the schema, catch up every "
                    "configured source with a progress bar, then keep serving (status "
                    "endpoint, checkpoints) until SIGINT or SIGTERM. With --once, exit as "
                    "soon as the sources are caught up. A signal stops it at the next batch, "
                    "chunk or range; it exits 0 with a summary of what was committed.")
    run.add_argument("config", metavar="CONFIG", help="the YAML config file")
    run.add_argument("--once", action="store_true", help="exit when caught up")
    run.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from sqlwarden.facade import stop_on_signals

    # `call:` targets imported now, as check-config does: a missing one is a line, not a
    # task failing later.
    config = load_config(args.config, import_calls=True)
    stop = threading.Event()
    # Held until the summary is printed: a signal at any moment is a stop, never a kill.
    with stop_on_signals(stop):
        return _run(config, args, stop)


def _run(config: Config, args: argparse.Namespace, stop: threading.Event) -> int:
    from sqlwarden.facade import Engine

    started = time.monotonic()
    sync_failed = tasks_failed = False
    #: What the stop cut short, said at rest: "source:NAME", "tasks", "outbox".
    interrupted: list[str] = []
    # Tasks start once the sources are caught up, so they see the data.
    engine = Engine(config, start_tasks=False)
    final: dict[str, Any] = {}
    engine.at_rest(lambda conn, writer: final.update(_committed(conn, config, engine.run_id,
                                                                writer, interrupted)))
    if not start_engine(engine, stop):
        return 0
    try:
        print(f"{PROG} {__version__}: database {config.database.path}")
        if engine.status_url:
            print(f"status at {engine.status_url}/status")
        for source in config.sources:
            if stop.is_set():
                break
            run = sync_with_bar(engine, source.name, "auto", stop, no_progress=args.no_progress)
            if run is None:
                interrupted.append(f"source:{source.name}")
                break
            sync_failed = sync_failed or run.status == "failed"
            print_run(run)
        if config.tasks and not stop.is_set():
            tasks_failed = _run_tasks(engine, stop, no_progress=args.no_progress)
            if stop.is_set():
                interrupted.append("tasks")
        if engine.mirror.enabled and not stop.is_set() and _catch_up_mirror(engine, stop):
            interrupted.append("outbox")
        if not args.once and not stop.is_set():
            print("caught up; serving until SIGINT or SIGTERM")
            print(f"stopping: {engine.wait(stop)}")
        elif stop.is_set():
            print("stopping: stop requested")
    finally:
        engine.stop()
    # Read while the engine stopped, once every batch in flight was committed or refused.
    seconds = time.monotonic() - started
    for line in final.get("interrupted", ()):
        print(line)
    if "interrupted" not in final and interrupted:
        print("stopped: what was cut short could not be read back (see the message log)")
    _print_summary(config, engine, final, seconds)
    failed = engine.state == "failed"
    return 1 if failed or (args.once and (tasks_failed or sync_failed)) else 0


@contextlib.contextmanager
def engine_for_command(config: Config, *, prepare: Callable[[Any], None] | None = None,
                       ) -> Iterator[tuple[Any, threading.Event] | None]:
    """An engine a command starts for one job: `(engine, stop)` for the block, stopped at
    its end; None when a signal ended the start's wait (nothing changed, exit 0).

    SIGINT and SIGTERM set `stop` until the engine has stopped: a signal at any moment
    is a stop at the next boundary, never a kill. `prepare(engine)` runs before the
    start (an `at_rest` summary, say).
    """
    from sqlwarden.facade import Engine, stop_on_signals

    stop = threading.Event()
    engine = Engine(config, start_tasks=False)
    if prepare is not None:
        prepare(engine)
    with stop_on_signals(stop):
        if not start_engine(engine, stop):
            yield None
            return
        try:
            yield engine, stop
        finally:
            engine.stop()


def start_engine(engine: Any, stop: threading.Event) -> bool:
    """Start the engine, saying once on stderr when it waits (another program holds the
    database's write lock, the disk is full); False when a signal ended the wait.

    Shared by every command that starts an engine of its own."""
    from sqlwarden.errors import EngineStopped

    def waiting(reason: str) -> None:
        print(f"{PROG}: waiting: {reason}", file=sys.stderr, flush=True)

    try:
        engine.start(stop=stop, on_wait=waiting)
    except EngineStopped:
        if not stop.is_set():
            raise
        # Start undid what it had begun: the database is as it was.
        print("stopping: stop requested before the engine had started; nothing changed")
        return False
    return True


def _run_tasks(engine: Any, stop: threading.Event, *, no_progress: bool) -> bool:
    """Start the tasks and draw a bar per running one until all rest; True if any failed."""
    started = time.monotonic()
    engine.tasks.start()
    bars: dict[str, Any] = {}
    views: Any = ()
    while not stop.is_set():
        try:
            views = engine.tasks.wait(timeout=0.25)
            break
        except TimeoutError:
            pass
        for progress in engine.tasks.progress():
            if progress.scope != "task" or progress.state != "running":
                continue
            bar = bars.get(progress.name)
            if bar is None:
                bar = bars[progress.name] = progress_bar(f"{progress.name}@{progress.version}",
                                                         progress.total or 0,
                                                         disabled=no_progress)
            bar.update(progress.processed - bar.n)
            if progress.waiting:
                bar.set_postfix_str(progress.waiting, refresh=False)
    for bar in bars.values():
        bar.close()
    seconds = time.monotonic() - started
    if stop.is_set():
        # A chunk may still be committing: what each task did is read once the engine has
        # stopped (`_task_lines`), so the numbers are the database's.
        print(f"tasks stopped after {seconds:.1f}s")
        return False
    if not views:
        views = engine.tasks.list()
    for view in views:
        line = f"task {view.name}@{view.version}: {view.status}"
        if not view.ran_here:
            line += " in an earlier run"
        elif view.status in ("done", "running", "paused", "cancelled"):
            line += f", {view.processed:,} rows changed"
        if view.error:
            line += f": {view.error}"
        print(line)
    print(f"tasks settled after {seconds:.1f}s")
    return any(v.status == "failed" for v in views)


def _catch_up_mirror(engine: Any, stop: threading.Event) -> bool:
    """Wait for the boot reconcile and an empty outbox; say so in one line either way.

    It never asks for a reconcile: every connect runs one (the boot one), and
    asking after it ended would copy everything a second time. Both waits
    poll, so a stop request ends them at once; the reconcile itself stops
    at its next range when the engine stops. True when a stop cut the drain
    short: what is left in the outbox is said at rest (`_committed`).
    """
    from sqlwarden.errors import EngineStopped

    try:
        view = engine.mirror.view()
    except EngineStopped:  # the engine failed; the summary says why
        return False
    while not stop.is_set() and engine.state == "running":
        view = engine.mirror.view()
        if view.state in ("down", "failed"):
            break
        if view.last_reconcile is not None and not view.reconciling:
            break
        stop.wait(POLL_S)
    if stop.is_set():
        print("mirror: stopped before the reconcile ended; the next start runs it")
        return False
    reconciled = view.last_reconcile
    if view.state in ("down", "failed") or reconciled is None or reconciled.error is not None:
        error = reconciled.error if reconciled is not None and reconciled.error else view.error
        print(f"mirror: {view.state}: {error or 'no reconcile ran'}; changes wait "
              "in the outbox")
        return False
    copied = sum(t.copied for t in reconciled.tables)
    deleted = sum(t.deleted for t in reconciled.tables)
    print(f"mirror: reconciled in {reconciled.seconds:.2f}s (copied {copied:,}, "
          f"deleted {deleted:,})")
    depth: int | None = None
    while not stop.is_set() and engine.state == "running":
        view = engine.mirror.view()
        depth = _outbox_depth(engine)
        if depth == 0 or view.state in ("down", "failed"):
            break
        stop.wait(POLL_S)
    if depth == 0:
        print("mirror: caught up (outbox empty)")
    elif stop.is_set():
        return True  # a batch may still be on its way: the outbox is counted at rest
    else:
        print(f"mirror: {view.state}: {view.error or 'no answer'}; "
              f"{'some' if depth is None else f'{depth:,}'} changes wait in the outbox")
    return False


def _outbox_depth(engine: Any) -> int | None:
    from sqlwarden.errors import EngineError
    from sqlwarden.mirror.local import outbox_depth

    try:
        with engine.read(timeout=2.0) as conn:
            return outbox_depth(conn)[0]
    except EngineError:
        return None


def _committed(conn: Any, config: Config, run_id: str, writer: Any,
               interrupted: list[str]) -> dict[str, Any]:
    """What this run committed, read from the database as the engine leaves it."""
    from sqlwarden.db.schema import SYNC_RUNS_TABLE
    from sqlwarden.db.sql import quote
    from sqlwarden.mirror.local import outbox_depth

    row = conn.execute(f"SELECT coalesce(sum(rows_written), 0) FROM {SYNC_RUNS_TABLE} "
                       "WHERE engine_run = ?", (run_id,)).fetchone()
    existing = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = {t.name: conn.execute(f"SELECT count(*) FROM {quote(t.name)}").fetchone()[0]
              if t.name in existing else None for t in config.tables}
    outbox = outbox_depth(conn)[0] if config.mirror is not None and config.mirror.enabled \
        else None
    lines = []
    for what in interrupted:
        if what.startswith("source:"):
            lines.extend(stopped_run_lines(conn, what.removeprefix("source:"), run_id))
        elif what == "tasks":
            lines.extend(_task_lines(conn, config, run_id))
        elif what == "outbox" and outbox is not None:
            lines.append(f"mirror: stopped with {outbox:,} changes in the outbox; they are "
                         "sent after the next start")
    return {"rows": int(row[0]) if row else 0, "tables": tables, "writer": writer,
            "outbox": outbox, "interrupted": lines}


def stopped_run_lines(conn: Any, source: str, run_id: str) -> list[str]:
    """What a source run that a stop cut short left, read from `_sw_sync_runs` at rest."""
    from sqlwarden.cli.sync import run_lines
    from sqlwarden.db.schema import SYNC_RUNS_TABLE
    from sqlwarden.fts.deferral import read_deferral
    from sqlwarden.sync.runs import history

    mine = conn.execute(f"SELECT max(id) FROM {SYNC_RUNS_TABLE} WHERE source = ? AND "
                        "engine_run = ?", (source, run_id)).fetchone()[0]
    run = next((r for r in history(conn, source, limit=1) if r.id == mine), None)
    if run is None:
        return [f"{source}: stopped before its run began; nothing was written"]
    committed = f"{source}: stopped after {run.rows:,} rows committed"
    if run.status == "stopped":
        lines = [f"{committed}; the next run goes on from there"]
    elif run.status == "running":
        # Its end row met another program's lock while the engine stopped, and a stop
        # does not wait for it: the next start ends the run as it ends a crashed one.
        lines = [f"{committed}; the run's end could not be recorded while the database was "
                 f"locked (the next start marks run {run.id} failed: process ended); the "
                 "next run goes on from there"]
    else:  # it had ended (read everything, or failed) before the stop reached it
        lines = run_lines(run)
    deferral = read_deferral(conn)
    if deferral is not None:
        # The catch-up's restore did not happen (or met the lock): boot recovery does it.
        lines.append(f"FTS: upkeep of {', '.join(t.fts for t in deferral.tables)} is still "
                     "deferred; the next start restores it")
    return lines


def _task_lines(conn: Any, config: Config, run_id: str) -> list[str]:
    """Each task as a stop left it, read from `_sw_tasks` at rest."""
    from sqlwarden.tasks.chunks import read_task_rows

    rows = read_task_rows(conn)
    lines = []
    for task in config.tasks:
        row = rows.get((task.name, task.version))
        line = f"task {task.name}@{task.version}: "
        if row is None:
            lines.append(line + "not started")
            continue
        line += row["status"]
        if row["run_id"] != run_id:
            line += " in an earlier run"
        elif row["status"] in ("done", "running", "paused", "cancelled"):
            line += f", {row['rows_processed']:,} rows changed"
            if row["status"] == "running":
                line += "; the next start goes on from its checkpoint"
        if row["error"]:
            line += f": {row['error']}"
        lines.append(line)
    return lines


def _print_summary(config: Config, engine: Any, final: dict[str, Any],
                   seconds: float) -> None:
    from sqlwarden.db.connect import file_size

    path = str(config.database.path)
    print("summary")
    if "rows" in final:
        rows = final["rows"]
        rate = rows / seconds if seconds > 0 else 0.0
        print(f"  rows written   {rows:,} in {seconds:.1f}s ({rate:,.0f} rows/s)")
    writer = final.get("writer")
    if writer is not None:
        print(f"  writer         {writer.messages:,} messages in "
              f"{writer.transactions:,} transactions, {writer.checkpoints:,} checkpoints")
    print(f"  database       {size(file_size(path))}, WAL {size(file_size(path + '-wal'))}")
    for name, rows_in in final.get("tables", {}).items():
        rows_text = "missing" if rows_in is None else f"{rows_in:,} rows"
        print(f"  {name:<14} {rows_text}")
    if final.get("outbox") is not None:
        print(f"  mirror outbox  {final['outbox']:,} changes to send")
    if engine.state == "failed":
        print("  the engine failed: the rows above were not counted (see the message log)")
    failures = engine.supervisor.total
    if failures:
        print(f"  failures       {failures} (see `{PROG} status` and the message log)")
