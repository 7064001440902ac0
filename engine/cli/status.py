"""`sqlwarden check-config` and `sqlwarden status`: a config validated, a database read."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlwarden.cli.output import PROG, local_time, print_tasks, size
from sqlwarden.config import load_config


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check-config` and `status` to the command line."""
    check = commands.add_parser(
        "check-config", help="validate a config file and change nothing",
        description="Parse and validate CONFIG. Prints a summary and exits 0 when it is valid; "
                    "prints one line naming the file, line and key and exits 2 when not.")
    check.add_argument("config", metavar="CONFIG", help="the YAML config file")
    check.set_defaults(func=cmd_check_config)

    status = commands.add_parser(
        "status", help="show tables and sizes from the database",
        description="Read the status of CONFIG's database from the file itself (read-only), "
                    "so it works while another process runs the engine.")
    status.add_argument("config", metavar="CONFIG", help="the YAML config file")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, import_calls=True)
    tables = ", ".join(t.name for t in config.tables) or "none"
    sources = ", ".join(s.name for s in config.sources) or "none"
    print(f"{args.config}: OK")
    print(f"  database: {config.database.path}")
    print(f"  tables:   {tables}")
    print(f"  sources:  {sources}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_status

    config = load_config(args.config)
    status = read_status(config)
    live = _running_mirror(config) if status["mirror"] is not None else None
    if live is not None:
        status["mirror"]["running"] = live
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    db = status["database"]
    print(f"database  {db['path']}")
    print(f"  size    {size(db['size_bytes'])}   WAL {size(db['wal_bytes'])}   "
          f"engine schema {db['schema_version'] or '-'}")
    print("tables")
    width = max((len(n) for n in status["tables"]), default=5)
    for name, info in status["tables"].items():
        rows = "missing" if info.get("missing") else f"{info['rows']:,} rows"
        print(f"  {name:<{width}}  {rows}")
    if status["tasks"]:
        print("tasks")
        print_tasks(status["tasks"])
    if status["sources"]:
        print("sources")
        _print_sources(status["sources"])
    deferral = status["fts_deferral"]
    if deferral is not None:
        print(f"FTS upkeep of {', '.join(deferral['tables'])} deferred since "
              f"{local_time(deferral['since'])}; the index is stale (see `{PROG} fts status`)")
    if status["mirror"] is not None:
        if live is not None:
            where = f" on {live['node']}" if live.get("node") else ""
            print(f"mirror  {live.get('state')}{where}   {live.get('failovers') or 0:,} "
                  f"failovers   {live.get('transaction_retries') or 0:,} transactions retried")
        _print_quarantine(status["mirror"]["quarantine"], args.config)
    return 0


def _running_mirror(config: Any) -> dict[str, Any] | None:
    """The mirror as the engine running on this database sees it; None without one."""
    from sqlwarden.cli.client import engine_if_running

    engine = engine_if_running(config)
    mirror = (engine.status.get("mirror") or {}) if engine is not None else {}
    if not isinstance(mirror, dict) or "state" not in mirror:
        return None
    return {key: mirror.get(key) for key in ("state", "node", "failovers",
                                            "transaction_retries")}


def _print_sources(sources: dict[str, Any]) -> None:
    width = max(len(n) for n in sources)
    for name, info in sources.items():
        run = info["last_run"]
        last = "no run yet" if run is None else (
            f"last run {run['status']} ({run['mode']}) {local_time(run['started_at'])}, "
            f"{run['rows']:,} rows")
        print(f"  {name:<{width}}  {last}   {info['rejects_stored']:,} rejects stored")
        if run is not None and run["error"]:
            print(f"  {'':<{width}}  {run['error']}")


def _print_quarantine(quarantine: dict[str, Any], config: str) -> None:
    held, recent = quarantine["count"], quarantine["recent"]
    if not held:
        print("mirror quarantine  none")
        return
    print(f"mirror quarantine  {held:,} rows the mirror could not take (sent again when they "
          f"change, or now with `{PROG} mirror retry {config}`)")
    for entry in recent:
        print(f"  {entry['table']} key {entry['key']!r} since {local_time(entry['at'])}: "
              f"{entry['reason']}")
    if held > len(recent):
        print(f"  ... and {held - len(recent):,} more")
