"""The `sqlwarden` command.

Exit codes: 0 on success, 2 when the user's input is at fault (one line on
stderr, nothing changed), 1 on an internal failure. Set SQLWARDEN_DEBUG=1 to
see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from engine import __version__
from engine.config import Config, load_config
from engine.errors import EngineError

PROG = "sqlwarden"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage plus the error; one line is the house rule.
        raise _UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Keep a device's SQLite database healthy while data "
                     "pours in.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except EngineError as exc:
        if os.environ.get("SQLWARDEN_DEBUG"):
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if exc.user_error else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SQLWARDEN_DEBUG"):
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set SQLWARDEN_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- commands ---------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tables = ", ".join(t.name for t in config.tables) or "none"
    sources = ", ".join(s.name for s in config.sources) or "none"
    print(f"{args.config}: OK")
    print(f"  database: {config.database.path}")
    print(f"  tables:   {tables}")
    print(f"  sources:  {sources}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from engine.dbstatus import read_status

    config = load_config(args.config)
    status = read_status(config)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    db = status["database"]
    print(f"database  {db['path']}")
    print(f"  size    {_size(db['size_bytes'])}   WAL {_size(db['wal_bytes'])}   "
          f"engine schema {db['schema_version'] or '-'}")
    print("tables")
    width = max((len(n) for n in status["tables"]), default=5)
    for name, info in status["tables"].items():
        rows = "missing" if info.get("missing") else f"{info['rows']:,} rows"
        print(f"  {name:<{width}}  {rows}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.demo import ingest, remaining
    from engine.facade import Engine, stop_on_signals

    config = load_config(args.config)
    stop = threading.Event()
    started = time.monotonic()
    total_rows = 0
    with stop_on_signals(stop), Engine(config) as engine:
        print(f"{PROG} {__version__}: database {config.database.path}")
        if engine.status_url:
            print(f"status at {engine.status_url}/status")
        for source in config.sources:
            if stop.is_set():
                break
            todo = remaining(engine, source)
            bar = _progress(f"{source.name}", todo, disabled=args.no_progress)
            try:
                report = ingest(engine, source, on_rows=bar.update, stop=stop)
            finally:
                bar.close()
            total_rows += report.rows
            state = "caught up" if report.caught_up else "stopped early"
            print(f"{source.name}: {report.rows:,} rows in {report.seconds:.1f}s, {state}")
        if not args.once and not stop.is_set():
            print("caught up; serving until SIGINT or SIGTERM")
            reason = engine.wait(stop)
            print(f"stopping: {reason}")
        _print_summary(config, engine.status(), total_rows, time.monotonic() - started)
        failed = engine.state == "failed"
    return 1 if failed else 0


def _print_summary(config: Config, status: dict[str, Any], rows: int, seconds: float) -> None:
    from engine.dbstatus import read_status

    tables = read_status(config)["tables"]
    db = status["database"]
    writer = status.get("writer", {})
    rate = rows / seconds if seconds > 0 else 0.0
    print("summary")
    print(f"  rows written   {rows:,} in {seconds:.1f}s ({rate:,.0f} rows/s)")
    if "transactions" in writer:
        print(f"  writer         {writer['messages']:,} messages in "
              f"{writer['transactions']:,} transactions, {writer['checkpoints']} checkpoints")
    print(f"  database       {_size(db['size_bytes'])}, WAL {_size(db['wal_bytes'])}")
    for name, info in tables.items():
        rows_text = "missing" if info["rows"] is None else f"{info['rows']:,} rows"
        print(f"  {name:<14} {rows_text}")
    failures = status["failures"]["total"]
    if failures:
        print(f"  failures       {failures} (see `{PROG} status` and the message log)")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _progress(label: str, total: int, *, disabled: bool) -> Any:
    from tqdm import tqdm

    # tqdm switches itself off when stderr is not a terminal (disable=None).
    return tqdm(total=total, desc=label, unit="rows", unit_scale=True, dynamic_ncols=True,
                disable=True if disabled else None, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
