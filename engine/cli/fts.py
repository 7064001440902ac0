"""`sqlwarden fts`: the deferral of FTS upkeep shown, or restored now.

Also how the end of a catch-up left FTS upkeep (`print_fts_after`), which a
source run prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from sqlwarden.cli.client import engine_if_running
from sqlwarden.cli.output import duration, local_time
from sqlwarden.config import load_config


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fts status` and `fts restore` to the command line."""
    fts = commands.add_parser(
        "fts", help="show or restore the deferral of FTS upkeep",
        description="While a large catch-up runs, the engine drops the triggers that keep FTS "
                    "indexes up to date and restores them afterwards. Show that state, or "
                    "restore now.")
    actions = fts.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    status = actions.add_parser(
        "status", help="FTS tables, their triggers, and any deferral",
        description="Read CONFIG's database (read-only): every FTS5 table, the triggers that "
                    "maintain it, and the deferral record if one exists (since when, for "
                    "which sources). If an engine is running, its live state is shown too "
                    "(a failed restore and when it is retried).")
    status.add_argument("config", metavar="CONFIG", help="the YAML config file")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=cmd_fts_status)
    restore = actions.add_parser(
        "restore", help="recreate deferred FTS triggers and bring the index up to date",
        description="Restore deferred FTS triggers now, even while sources are catching up. "
                    "Asks the running engine when there is one (through its status endpoint); "
                    "otherwise starts the engine on CONFIG just long enough to restore. Exits "
                    "1 when the restore fails.")
    restore.add_argument("config", metavar="CONFIG", help="the YAML config file")
    restore.set_defaults(func=cmd_fts_restore)


def cmd_fts_status(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_fts

    config = load_config(args.config)
    tables, deferral = read_fts(config)
    engine = engine_if_running(config)
    live = engine.status.get("fts") if engine is not None else None
    if args.json:
        print(json.dumps({"tables": [dataclasses.asdict(t) for t in tables],
                          "deferral": dataclasses.asdict(deferral) if deferral else None,
                          "engine": live}, indent=2))
        return 0
    if not tables:
        print(f"{config.database.path}: no FTS5 tables")
    for t in tables:
        kind = {"external": f"external content of {t.source}", "own": "holds its own text",
                "contentless": "contentless"}[t.kind]
        state = "DEFERRED" if t.deferred else "live" if t.triggers else "no triggers"
        print(f"  {t.name}  ({kind})  {state}")
        if t.triggers:
            print(f"    triggers: {', '.join(t.triggers)}")
        if t.deferred:
            print(f"    saved triggers: {', '.join(t.saved_triggers)}; rows up to "
                  f"rowid {t.hwm} were indexed when deferred")
        if t.problem:
            print(f"    not deferrable: {t.problem}")
    if deferral is None:
        print("deferral: none; every FTS index is up to date")
    else:
        sources = ", ".join(f"{s}" for s, _ in deferral.sources) or "no source (left behind)"
        print(f"deferral: since {local_time(deferral.started_at)} "
              f"({duration(time.time() - deferral.started_at)} ago), for: {sources}")
        if deferral.last_error:
            print(f"  last restore failed ({deferral.attempts} attempts): {deferral.last_error}")
    if live is not None and "state" in live:
        line = f"engine: {live['state']}"
        if live.get("retry_in_s") is not None:
            line += f", next restore attempt in {duration(live['retry_in_s'])}"
        if live.get("error"):
            line += f": {live['error']}"
        print(line)
    return 0


def cmd_fts_restore(args: argparse.Namespace) -> int:
    from sqlwarden.cli.run import engine_for_command
    from sqlwarden.config import StatusConfig
    from sqlwarden.db.connect import open_reader
    from sqlwarden.facade import fts_view_dict

    config = load_config(args.config)
    open_reader(config.database).close()  # refuses, changing nothing, if there is no database
    engine = engine_if_running(config)
    if engine is not None:
        print(f"asking the engine at {engine.url}")
        view = engine.post("/fts/restore")
    else:
        # Starting the engine restores a persisted deferral (boot recovery). A signal
        # is a stop, never a kill: the restore is one transaction, which it waits for.
        quiet = dataclasses.replace(config, status=StatusConfig(enabled=False))
        with engine_for_command(quiet) as started:
            if started is None:
                return 0
            view = fts_view_dict(started[0].fts.restore())
    last = view.get("last_restore")
    if view["state"] == "restore_failed":
        print(f"FTS restore failed: {view['error']}")
        return 1
    if view["state"] != "live":
        print(f"FTS upkeep is {view['state']}")
        return 1
    if last and last["tables"]:
        for table in last["tables"]:
            print(f"{table['fts']}: restored by {table['mode']} ({table['changed_rows']:,} of "
                  f"{table['table_rows']:,} rows changed) in {last['duration_ms'] / 1000:.2f}s")
    else:
        print("nothing was deferred; every FTS index is up to date")
    return 0


def print_fts_after(view: Any) -> None:
    """What the end of a catch-up did to FTS upkeep: restored, still deferred, or failed."""
    if view.state == "restore_failed":
        print(f"FTS: restoring failed, retrying: {view.error}")
    elif view.state in ("deferred", "restoring"):
        print(f"FTS: still deferred for {', '.join(s for s, _ in view.sources)}")
    elif view.last_restore is not None and view.last_restore.tables:
        for table in view.last_restore.tables:
            print(f"FTS: {table.fts} restored by {table.mode} "
                  f"({table.changed_rows:,} of {table.table_rows:,} rows changed) in "
                  f"{view.last_restore.duration_ms / 1000:.2f}s")
