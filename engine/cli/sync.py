"""`sqlwarden sync`: a source run now, or the history of source runs.

Also what `run` shares with it: one source run with a progress bar
(`sync_with_bar`) and what a run did, in a few lines (`print_run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
from typing import Any

from sqlwarden.cli.client import EngineRefused, engine_if_running
from sqlwarden.cli.fts import print_fts_after
from sqlwarden.cli.output import (
    PROG,
    duration,
    local_time,
    progress_bar,
    unknown_name,
    whole_number,
)
from sqlwarden.config import Config, load_config
from sqlwarden.errors import EngineError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sync now` and `sync history` to the command line."""
    sync = commands.add_parser(
        "sync", help="run a source now, or show the history of source runs",
        description="Sources (ndjson directories, HTTP APIs, the demo generator) are caught "
                    "up by `run` and on their schedule. Run one now, or list past runs.")
    actions = sync.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    now = actions.add_parser(
        "now", help="run one source now and wait for it",
        description="Run SOURCE now and print what it did. Asks the running engine when "
                    "there is one (through its status endpoint; a run already under way is "
                    "joined, never started twice); otherwise starts the engine on CONFIG for "
                    "this run only. Exits 1 when the run fails; SIGINT or SIGTERM stops it at "
                    "the next batch and it exits 0, saying what was committed.")
    now.add_argument("config", metavar="CONFIG", help="the YAML config file")
    now.add_argument("source", metavar="SOURCE", help="the source's name")
    now.add_argument("--full", action="store_true",
                     help="an HTTP source refetches everything instead of what changed since "
                          "the newest stored row (other kinds read what is new either way)")
    now.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    now.set_defaults(func=cmd_sync_now)
    history = actions.add_parser(
        "history", help="past source runs, newest first, and the latest rejects",
        description="Read CONFIG's database (read-only): the runs in _sw_sync_runs (mode, "
                    "status, rows, rejects, error) and the latest records in _sw_rejects.")
    history.add_argument("config", metavar="CONFIG", help="the YAML config file")
    history.add_argument("--source", metavar="SOURCE", help="only this source")
    history.add_argument("--limit", type=whole_number(1, 1_000_000), default=20, metavar="N",
                         help="show at most N runs (1 to 1,000,000; default 20)")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(func=cmd_sync_history)


def cmd_sync_now(args: argparse.Namespace) -> int:
    from sqlwarden.errors import SyncBusy
    from sqlwarden.views import SyncRunView

    config = load_config(args.config)
    _check_source(config, args.source, args.config)
    mode = "full" if args.full else "auto"
    engine = engine_if_running(config)
    if engine is not None:
        try:
            run = engine.post(f"/sync/{args.source}", {"mode": mode})
        except EngineRefused as exc:
            if exc.request_at_fault:
                raise SyncBusy(f"source {args.source}: {exc.message}",
                               source=args.source) from None
            raise EngineError(f"source {args.source}: {exc.message}") from None
        print(f"asked the running engine at {engine.url}")
        print_run(SyncRunView(**{f.name: run[f.name] for f in dataclasses.fields(SyncRunView)
                                 if f.name in run}))
        return 1 if run["status"] == "failed" else 0
    from sqlwarden.cli.run import engine_for_command, stopped_run_lines

    # What a stop left of the run is read once the engine has stopped, from the database.
    left: list[str] = []

    def at_rest(local: Any) -> None:
        local.at_rest(lambda conn, _writer: left.extend(
            stopped_run_lines(conn, args.source, local.run_id)))

    with engine_for_command(config, prepare=at_rest) as started:
        if started is None:
            return 0
        local, stop = started
        view = sync_with_bar(local, args.source, mode, stop, no_progress=args.no_progress)
    if view is None:
        # Stopped as asked, at a batch boundary: a clean stop, not a failure.
        for line in left or [f"{args.source}: stopped before the run ended; the next run "
                             "goes on from there"]:
            print(line)
        return 0
    print_run(view)
    return 1 if view.status == "failed" else 0


def cmd_sync_history(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_sync

    config = load_config(args.config)
    if args.source is not None:
        _check_source(config, args.source, args.config)
    runs, rejects = read_sync(config, args.source, args.limit)
    if args.json:
        print(json.dumps({"runs": [dataclasses.asdict(r) for r in runs],
                          "rejects": [dict(r) for r in rejects]}, indent=2))
        return 0
    if not runs:
        print("no source runs recorded yet")
    else:
        print(f"{'run':>5}  {'source':<12} {'mode':<11} {'status':<8} {'started':<19} "
              f"{'took':>7} {'rows':>10} {'rejects':>8}  error / note")
    for run in runs:
        took = duration(run.ended_at - run.started_at) if run.ended_at else "-"
        text = run.error or run.note or ""
        print(f"{run.id:>5}  {run.source:<12} {run.mode:<11} {run.status:<8} "
              f"{local_time(run.started_at):<19} {took:>7} {run.rows:>10,} {run.rejects:>8,}  "
              f"{text}")
    if rejects:
        print(f"latest rejects ({len(rejects)} shown):")
        for reject in rejects:
            print(f"  {reject['source']} {reject['position']}: {reject['reason']}")
    return 0


def _check_source(config: Config, name: str, file: str) -> None:
    from sqlwarden.errors import UnknownSource

    names = [s.name for s in config.sources]
    if name not in names:
        raise UnknownSource(unknown_name("source", name, names, file), source=name)


def sync_with_bar(engine: Any, name: str, mode: str, stop: threading.Event, *,
                  no_progress: bool) -> Any:
    """Run one source with a progress bar; None when stopped first."""
    handle = engine.sync.run_later(name, mode=mode)
    bar = progress_bar(name, 0, disabled=no_progress)
    try:
        while not stop.is_set():
            try:
                return handle.result(timeout=0.25)
            except TimeoutError:
                pass
            for progress in engine.tasks.progress():
                if progress.scope == "sync" and progress.name == name:
                    if progress.total and bar.total != progress.total:
                        bar.total = progress.total
                        bar.refresh()
                    bar.update(progress.processed - bar.n)
    finally:
        bar.close()
    return None


def print_run(run: Any) -> None:
    """What a source run did, in a few lines."""
    lease = run.fts_lease
    if lease is not None and lease.deferred:
        print(f"{run.source}: FTS upkeep of {', '.join(lease.tables)} was deferred during the "
              f"catch-up ({lease.reason})")
    if run.fts_after is not None:
        print_fts_after(run.fts_after)
    for line in run_lines(run):
        print(line)


def run_lines(run: Any) -> list[str]:
    """What a run did (rows, outcome, note, error): `print_run` without its FTS lines."""
    seconds = (run.ended_at or run.started_at) - run.started_at
    line = (f"{run.source}: {run.rows:,} rows in {seconds:.1f}s, "
            f"{'caught up' if run.status == 'ok' else run.status} ({run.mode} run {run.id})")
    if run.rejects:
        line += f", {run.rejects:,} records rejected (see `{PROG} sync history`)"
    lines = [line]
    if run.note:
        lines.append(f"{run.source}: {run.note}")
    if run.error:
        lines.append(f"{run.source}: error: {run.error}")
    return lines
