"""`sqlwarden run`: the engine started, every source caught up, the tasks run, then served.

Progress bars while it catches up; a summary when it stops.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from sqlwarden import __version__
from sqlwarden.cli.output import PROG, one_line, progress_bar, size
from sqlwarden.cli.sync import print_run, sync_with_bar
from sqlwarden.config import Config, load_config


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run` to the command line."""
    run = commands.add_parser(
        "run", help="start the engine, catch up every source, then serve",
        description="Start the engine on CONFIG: create or check the schema, catch up every "
                    "configured source with a progress bar, then keep serving (status "
                    "endpoint, checkpoints) until SIGINT or SIGTERM. With --once, exit as "
                    "soon as the sources are caught up.")
    run.add_argument("config", metavar="CONFIG", help="the YAML config file")
    run.add_argument("--once", action="store_true", help="exit when caught up")
    run.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from sqlwarden.facade import Engine, stop_on_signals

    config = load_config(args.config)
    stop = threading.Event()
    started = time.monotonic()
    total_rows = 0
    sync_failed = False
    # Tasks start once the sources are caught up, so they see the data.
    with stop_on_signals(stop), Engine(config, start_tasks=False) as engine:
        print(f"{PROG} {__version__}: database {config.database.path}")
        if engine.status_url:
            print(f"status at {engine.status_url}/status")
        for source in config.sources:
            if stop.is_set():
                break
            run = sync_with_bar(engine, source.name, "auto", stop, no_progress=args.no_progress)
            if run is None:
                break
            total_rows += run.rows
            sync_failed = sync_failed or run.status == "failed"
            print_run(run)
        tasks_failed = False
        if config.tasks and not stop.is_set():
            tasks_failed = _run_tasks(engine, stop, no_progress=args.no_progress)
        if engine.mirror.enabled and not stop.is_set():
            _catch_up_mirror(engine, stop)
        if not args.once and not stop.is_set():
            print("caught up; serving until SIGINT or SIGTERM")
            reason = engine.wait(stop)
            print(f"stopping: {reason}")
        _print_summary(config, engine.status(), total_rows, time.monotonic() - started)
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
    print(f"tasks settled in {seconds:.1f}s")
    return any(v.status == "failed" for v in views)


def _catch_up_mirror(engine: Any, stop: threading.Event) -> None:
    """Wait for the boot reconcile and an empty outbox; say so in one line either way."""
    from sqlwarden.errors import MirrorError

    try:
        view = engine.mirror.reconcile(timeout=None)
    except MirrorError as exc:
        print(f"mirror: {one_line(exc)}")
        return
    copied = sum(t.copied for t in view.tables)
    deleted = sum(t.deleted for t in view.tables)
    print(f"mirror: reconciled in {view.seconds:.2f}s (copied {copied:,}, deleted {deleted:,})")
    depth = None
    while not stop.is_set():
        mirror = engine.status().get("mirror", {})
        depth = mirror.get("outbox", {}).get("depth")
        if depth == 0 or mirror.get("state") in ("down", "failed"):
            break
        stop.wait(0.2)
    if depth == 0:
        print("mirror: caught up (outbox empty)")
    else:
        print(f"mirror: {mirror.get('state')}: {mirror.get('error')}; {depth} changes wait "
              "in the outbox")


def _print_summary(config: Config, status: dict[str, Any], rows: int, seconds: float) -> None:
    from sqlwarden.db.status import read_status

    tables = read_status(config)["tables"]
    db = status["database"]
    writer = status.get("writer", {})
    rate = rows / seconds if seconds > 0 else 0.0
    print("summary")
    print(f"  rows written   {rows:,} in {seconds:.1f}s ({rate:,.0f} rows/s)")
    if "transactions" in writer:
        print(f"  writer         {writer['messages']:,} messages in "
              f"{writer['transactions']:,} transactions, {writer['checkpoints']} checkpoints")
    print(f"  database       {size(db['size_bytes'])}, WAL {size(db['wal_bytes'])}")
    for name, info in tables.items():
        rows_text = "missing" if info["rows"] is None else f"{info['rows']:,} rows"
        print(f"  {name:<14} {rows_text}")
    failures = status["failures"]["total"]
    if failures:
        print(f"  failures       {failures} (see `{PROG} status` and the message log)")
