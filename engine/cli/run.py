"""`sqlwarden run`: the engine started, every source caught up, the tasks run, then served.

Progress bars while it catches up; a summary when it stops. SIGINT or
SIGTERM at any moment stops at the next boundary (a batch, a chunk, a range
of a reconcile, an FTS restore's transaction) and exits 0; the summary is
read from the database once the engine has stopped, so it counts what was
committed, never what was only read.
"""

from __future__ import annotations

import argparse
import threading
import time
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

    config = load_config(args.config)
    stop = threading.Event()
    # Held until the summary is printed: a signal at any moment is a stop, never a kill.
    with stop_on_signals(stop):
        return _run(config, args, stop)


def _run(config: Config, args: argparse.Namespace, stop: threading.Event) -> int:
    from sqlwarden.facade import Engine

    started = time.monotonic()
    sync_failed = tasks_failed = False
    interrupted: list[str] = []
    # Tasks start once the sources are caught up, so they see the data.
    engine = Engine(config, start_tasks=False)
    final: dict[str, Any] = {}
    engine.at_rest(lambda conn, writer: final.update(_committed(conn, config, engine.run_id,
                                                                writer, interrupted)))
    with engine:
        print(f"{PROG} {__version__}: database {config.database.path}")
        if engine.status_url:
            print(f"status at {engine.status_url}/status")
        for source in config.sources:
            if stop.is_set():
                break
            run = sync_with_bar(engine, source.name, "auto", stop, no_progress=args.no_progress)
            if run is None:
                interrupted.append(source.name)
                break
            sync_failed = sync_failed or run.status == "failed"
            print_run(run)
        if config.tasks and not stop.is_set():
            tasks_failed = _run_tasks(engine, stop, no_progress=args.no_progress)
        if engine.mirror.enabled and not stop.is_set():
            _catch_up_mirror(engine, stop)
        if not args.once and not stop.is_set():
            print("caught up; serving until SIGINT or SIGTERM")
            print(f"stopping: {engine.wait(stop)}")
        elif stop.is_set():
            print("stopping: stop requested")
    # Read while the engine stopped, once every batch in flight was committed or refused.
    seconds = time.monotonic() - started
    for line in final.get("interrupted", ()):
        print(line)
    _print_summary(config, engine, final, seconds)
    failed = engine.state == "failed"
    return 1 if failed or (args.once and (tasks_failed or sync_failed)) else 0


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
    if not views:
        views = engine.tasks.list()
    seconds = time.monotonic() - started
    for view in views:
        line = f"task {view.name}@{view.version}: {view.status}"
        if not view.ran_here:
            line += " in an earlier run"
        elif view.status in ("done", "running", "paused", "cancelled"):
            line += f", {view.processed:,} rows changed"
        if view.error:
            line += f": {view.error}"
        print(line)
    print(f"tasks {'stopped' if stop.is_set() else 'settled'} after {seconds:.1f}s")
    return any(v.status == "failed" for v in views)


def _catch_up_mirror(engine: Any, stop: threading.Event) -> None:
    """Wait for the boot reconcile and an empty outbox; say so in one line either way.

    It never asks for a reconcile: every connect runs one (the boot one), and
    asking after it ended would copy everything a second time. Both waits
    poll, so a stop request ends them at once; the reconcile itself stops
    at its next range when the engine stops.
    """
    from sqlwarden.errors import EngineStopped

    try:
        view = engine.mirror.view()
    except EngineStopped:  # the engine failed; the summary says why
        return
    while not stop.is_set() and engine.state == "running":
        view = engine.mirror.view()
        if view.state in ("down", "failed"):
            break
        if view.last_reconcile is not None and not view.reconciling:
            break
        stop.wait(POLL_S)
    if stop.is_set():
        print("mirror: stopped before the reconcile ended; the next start runs it")
        return
    reconciled = view.last_reconcile
    if view.state in ("down", "failed") or reconciled is None or reconciled.error is not None:
        error = reconciled.error if reconciled is not None and reconciled.error else view.error
        print(f"mirror: {view.state}: {error or 'no reconcile ran'}; changes wait "
              "in the outbox")
        return
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
        print(f"mirror: stopped with {depth if depth is not None else 'some'} changes in the "
              "outbox; they are sent after the next start")
    else:
        print(f"mirror: {view.state}: {view.error or 'no answer'}; {depth} changes wait "
              "in the outbox")


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
    from sqlwarden.sync.runs import last_run

    row = conn.execute(f"SELECT coalesce(sum(rows_written), 0) FROM {SYNC_RUNS_TABLE} "
                       "WHERE engine_run = ?", (run_id,)).fetchone()
    existing = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = {t.name: conn.execute(f"SELECT count(*) FROM {quote(t.name)}").fetchone()[0]
              if t.name in existing else None for t in config.tables}
    lines = []
    for name in interrupted:
        run = last_run(conn, name)
        if run is not None:
            lines.append(f"{name}: {run.status} after {run.rows:,} rows committed; the next "
                         "run goes on from there")
    return {"rows": int(row[0]) if row else 0, "tables": tables, "writer": writer,
            "interrupted": lines}


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
              f"{writer.transactions:,} transactions, {writer.checkpoints} checkpoints")
    print(f"  database       {size(file_size(path))}, WAL {size(file_size(path + '-wal'))}")
    for name, rows_in in final.get("tables", {}).items():
        rows_text = "missing" if rows_in is None else f"{rows_in:,} rows"
        print(f"  {name:<14} {rows_text}")
    if engine.state == "failed":
        print("  the engine failed: the rows above were not counted (see the message log)")
    failures = engine.supervisor.total
    if failures:
        print(f"  failures       {failures} (see `{PROG} status` and the message log)")
