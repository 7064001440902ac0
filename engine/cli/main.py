"""The `sqlwarden` command.

Exit codes: 0 on success, 2 when the user's input is at fault (one line on
stderr, nothing changed), 1 on an internal failure. Set SQLWARDEN_DEBUG=1 to
see tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

from sqlwarden import __version__
from sqlwarden.config import Config, load_config
from sqlwarden.errors import EngineError

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

    task = commands.add_parser(
        "task", help="list chunked tasks, or pause, resume or cancel one",
        description="List the chunked tasks of CONFIG with their progress (read from the "
                    "database, so it works whether or not the engine runs), or pause, resume "
                    "or cancel one in the engine that `sqlwarden run CONFIG` is running. "
                    "Control goes through that engine's status endpoint, so it needs "
                    "status.enabled: true.")
    actions = task.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    listing = actions.add_parser("list", help="show every task with rate and ETA",
                                 description="Show every declared task: status, rows done "
                                             "of total, rate, ETA, attempts and last error.")
    listing.add_argument("config", metavar="CONFIG", help="the YAML config file")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=cmd_task_list)
    for action, text in (("pause", "stop sending chunks; resume later"),
                         ("resume", "continue a paused task, or retry a failed or "
                                    "cancelled one from its checkpoint"),
                         ("cancel", "stop between chunks; committed work stays")):
        control = actions.add_parser(action, help=text, description=f"{action.capitalize()} "
                                     f"task NAME in the running engine: {text}.")
        control.add_argument("config", metavar="CONFIG", help="the YAML config file")
        control.add_argument("name", metavar="NAME", help="the task's name")
        control.set_defaults(func=cmd_task_control, action=action)

    fts = commands.add_parser(
        "fts", help="show or restore the deferral of FTS upkeep",
        description="While a large catch-up runs, the engine drops the triggers that keep FTS "
                    "indexes up to date and restores them afterwards. Show that state, or "
                    "restore now.")
    fts_actions = fts.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    fts_actions.required = True
    fts_status = fts_actions.add_parser(
        "status", help="FTS tables, their triggers, and any deferral",
        description="Read CONFIG's database (read-only): every FTS5 table, the triggers that "
                    "maintain it, and the deferral record if one exists (since when, for "
                    "which sources). If an engine is running, its live state is shown too "
                    "(a failed restore and when it is retried).")
    fts_status.add_argument("config", metavar="CONFIG", help="the YAML config file")
    fts_status.add_argument("--json", action="store_true", help="print JSON instead of text")
    fts_status.set_defaults(func=cmd_fts_status)
    fts_restore = fts_actions.add_parser(
        "restore", help="recreate deferred FTS triggers and bring the index up to date",
        description="Restore deferred FTS triggers now, even while sources are catching up. "
                    "Asks the running engine when there is one (through its status endpoint); "
                    "otherwise starts the engine on CONFIG just long enough to restore. Exits "
                    "1 when the restore fails.")
    fts_restore.add_argument("config", metavar="CONFIG", help="the YAML config file")
    fts_restore.set_defaults(func=cmd_fts_restore)

    sync = commands.add_parser(
        "sync", help="run a source now, or show the history of source runs",
        description="Sources (ndjson directories, HTTP APIs, the demo generator) are caught "
                    "up by `run` and on their schedule. Run one now, or list past runs.")
    sync_actions = sync.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    sync_actions.required = True
    now = sync_actions.add_parser(
        "now", help="run one source now and wait for it",
        description="Run SOURCE now and print what it did. Asks the running engine when "
                    "there is one (through its status endpoint; a run already under way is "
                    "joined, never started twice); otherwise starts the engine on CONFIG for "
                    "this run only. Exits 1 when the run fails.")
    now.add_argument("config", metavar="CONFIG", help="the YAML config file")
    now.add_argument("source", metavar="SOURCE", help="the source's name")
    now.add_argument("--full", action="store_true",
                     help="an HTTP source refetches everything instead of what changed since "
                          "the newest stored row (other kinds read what is new either way)")
    now.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    now.set_defaults(func=cmd_sync_now)
    hist = sync_actions.add_parser(
        "history", help="past source runs, newest first, and the latest rejects",
        description="Read CONFIG's database (read-only): the runs in _sw_sync_runs (mode, "
                    "status, rows, rejects, error) and the latest records in _sw_rejects.")
    hist.add_argument("config", metavar="CONFIG", help="the YAML config file")
    hist.add_argument("--source", metavar="SOURCE", help="only this source")
    hist.add_argument("--limit", type=int, default=20, metavar="N",
                      help="show at most N runs (default 20)")
    hist.add_argument("--json", action="store_true", help="print JSON instead of a table")
    hist.set_defaults(func=cmd_sync_history)
    mirror = commands.add_parser(
        "mirror", help="reconcile or verify the MySQL mirror",
        description="The mirror copies the tables listed under `mirror:` to a MySQL-compatible "
                    "server, scoped by this device's `scope` value. Reconcile makes it equal "
                    "SQLite; verify compares and changes nothing.")
    mirror_actions = mirror.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    mirror_actions.required = True
    reconcile = mirror_actions.add_parser(
        "reconcile", help="make the mirror equal SQLite for this scope, and wait for it",
        description="Compare every mirrored table range by range (row count and checksum on "
                    "both sides), delete rows SQLite no longer has and copy only what differs. "
                    "Asks the running engine when there is one (a reconcile under way is "
                    "joined, never started twice); otherwise starts the engine on CONFIG for "
                    "this. Exits 1 when it fails, 3 when the server cannot be reached.")
    reconcile.add_argument("config", metavar="CONFIG", help="the YAML config file")
    reconcile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                           help="give up waiting after S seconds (default 3600)")
    reconcile.set_defaults(func=cmd_mirror_reconcile)
    verify = mirror_actions.add_parser(
        "verify", help="compare SQLite and the mirror; change nothing",
        description="Read CONFIG's database (read-only) and the mirror, and report per table "
                    "the key ranges whose row count or checksum differ. Creates and changes "
                    "nothing on either side. Exits 0 when in sync, 1 when something differs, "
                    "2 for a config or login problem, 3 when the server cannot be reached.")
    verify.add_argument("config", metavar="CONFIG", help="the YAML config file")
    verify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verify.set_defaults(func=cmd_mirror_verify)

    replay = commands.add_parser(
        "replay", help="read a message log: summary, timeline, protocol checks, HTML, re-run",
        description="Read the message log LOG (with its rotated files, plain or .gz) in "
                    "order, streaming, and print a summary: time span, runs, messages per "
                    "actor and per kind, handling time p50/p99 per kind, errors. Damaged "
                    "lines (a torn last line after a crash) are reported and skipped. "
                    "Filters narrow the summary, the timeline and the HTML.")
    replay.add_argument("logs", nargs="+", metavar="LOG",
                        help="a message log file (its rotated files come along) or any "
                             "rotated file")
    replay.add_argument("--actor", action="append", default=[], metavar="NAME",
                        help="only messages sent by or to this actor (repeatable)")
    replay.add_argument("--kind", action="append", default=[], metavar="KIND",
                        help="only this message kind, e.g. writer.chunk, or a prefix such "
                             "as mirror (repeatable)")
    replay.add_argument("--since", metavar="TIME", help="only records at or after TIME "
                        "(ISO-8601; UTC unless a zone is given)")
    replay.add_argument("--until", metavar="TIME", help="only records at or before TIME")
    replay.add_argument("--corr", type=int, metavar="N",
                        help="only the message with correlation id N and its answer")
    replay.add_argument("--run", metavar="ID", help="only records of this engine run")
    modes = replay.add_mutually_exclusive_group()
    modes.add_argument("--timeline", action="store_true",
                       help="print every (filtered) record as one line, in order")
    modes.add_argument("--follow", action="store_true",
                       help="print the last records of the live log, then each new one "
                            "as it is written (Ctrl-C ends)")
    modes.add_argument("--check", action="store_true",
                       help="check the protocol rules on the whole log; print each "
                            "violation with its rule and sequence numbers; exit 1 if any")
    modes.add_argument("--html", metavar="OUT",
                       help="write a self-contained HTML swimlane timeline to OUT")
    modes.add_argument("--reexecute", metavar="CONFIG",
                       help="re-apply the recorded writes (a log written with payload: "
                            "full) to a fresh database built from CONFIG and compare "
                            "per-table checksums with CONFIG's database; exit 1 if any "
                            "differs")
    replay.add_argument("--keep-db", metavar="PATH",
                        help="with --reexecute: leave the re-executed database at PATH (a "
                             "new file) instead of deleting it")
    replay.add_argument("--json", action="store_true",
                        help="print JSON instead of text (summary, check, reexecute)")
    replay.set_defaults(func=cmd_replay)
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
    except BrokenPipeError:
        # The reader of our output went away (`| head`): nothing more to say. Point
        # stdout at nothing, so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("SQLWARDEN_DEBUG"):
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set SQLWARDEN_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def _load(path: str) -> Config:
    """The config at `path`; with a mirror, its driver is loaded before anything else
    loads OpenSSL, so the connector's C extension can be used (see `mirror.driver`)."""
    config = load_config(path)
    if config.mirror is not None and config.mirror.enabled:
        from sqlwarden.mirror.driver import load_driver

        load_driver()
    return config


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- commands ---------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    tables = ", ".join(t.name for t in config.tables) or "none"
    sources = ", ".join(s.name for s in config.sources) or "none"
    print(f"{args.config}: OK")
    print(f"  database: {config.database.path}")
    print(f"  tables:   {tables}")
    print(f"  sources:  {sources}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_status

    config = _load(args.config)
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
    if status["tasks"]:
        print("tasks")
        _print_tasks(status["tasks"])
    deferral = status["fts_deferral"]
    if deferral is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deferral["since"]))
        print(f"FTS upkeep of {', '.join(deferral['tables'])} deferred since {since}; "
              f"the index is stale (see `{PROG} fts status`)")
    return 0


def cmd_task_list(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_status

    config = _load(args.config)
    tasks = read_status(config)["tasks"]
    if args.json:
        print(json.dumps(tasks, indent=2))
    elif not tasks:
        print(f"{args.config}: no tasks declared")
    else:
        _print_tasks(tasks)
    return 0


def _print_tasks(tasks: list[dict[str, Any]]) -> None:
    width = max(len(t["task"]) for t in tasks)
    for t in tasks:
        done = f"{t['rows_processed']:,}"
        if t["rows_total"] is not None and t["status"] != "done":
            done += f" of {t['rows_total']:,}"
        line = f"  {t['task']:<{width}}  {t['status']:<11}  {done} rows"
        if t["status"] == "done":
            line += " changed"
        if t["status"] == "running":
            rate = t["rate_rows_s"]
            line += f", {rate:,.0f} rows/s" if rate else ", rate unknown"
            if t["eta_s"] is not None:
                line += f", ETA {_duration(t['eta_s'])}"
            if t["waiting"]:
                line += f" ({t['waiting']})"
        if t["attempts"] > 1:
            line += f", attempt {t['attempts']}"
        if t["error"]:
            line += f": {t['error']}"
        print(line)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


class NoEngine(EngineError):
    """No running engine answers for this database."""


class _Found(NamedTuple):
    """The engine running on a database: its status URL and the status it answered;
    or no URL and why not."""

    url: str | None
    status: dict[str, Any]
    why: str = ""


def _find_engine(config: Config) -> _Found:
    """Find the engine running on `config`'s database through the address it recorded."""
    import urllib.request

    from sqlwarden.db.status import running_engine

    found = running_engine(config)
    if found is None:
        return _Found(None, {}, f"no running engine with a status endpoint found for "
                                f"{config.database.path}; start one with `{PROG} run CONFIG`")
    url, run_id = found
    try:
        # The address may be stale, and the port taken by something else since.
        with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
            status = json.load(response)
    except (OSError, ValueError) as exc:
        return _Found(None, {}, f"no engine answers at {url} ({getattr(exc, 'reason', exc)}); "
                                "the last run may have ended without cleaning up")
    if not isinstance(status, dict) or status.get("run_id") != run_id:
        return _Found(None, {}, f"the engine at {url} is not the one running on "
                                f"{config.database.path}; the last run may have ended "
                                "without cleaning up")
    return _Found(url, status)


def _post_json(url: str) -> Any:
    import urllib.request

    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def cmd_task_control(args: argparse.Namespace) -> int:
    import urllib.error

    from sqlwarden.errors import TaskConflict, UnknownTask

    config = _load(args.config)
    names = [t.name for t in config.tasks]
    if args.name not in names:
        raise UnknownTask(f"unknown task {args.name!r} in {args.config} (declared: "
                          f"{', '.join(names) or 'none'})", task=args.name)
    url, _, why = _find_engine(config)
    if url is None:
        raise NoEngine(f"{why} (task control needs status.enabled: true)")
    try:
        view = _post_json(f"{url}/tasks/{args.name}/{args.action}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code in (400, 404, 409):  # the request was at fault
            raise TaskConflict(f"task {args.name}: {message}", task=args.name) from None
        raise EngineError(f"task {args.name}: {message}") from None
    except OSError as exc:
        raise NoEngine(f"no engine answers at {url} ({getattr(exc, 'reason', exc)}); the "
                       "last run may have ended without cleaning up") from None
    print(f"task {view['name']}@{view['version']}: {view['status']}, "
          f"{view['processed']:,} rows done")
    return 0


def cmd_fts_status(args: argparse.Namespace) -> int:
    import dataclasses

    from sqlwarden.db.status import read_fts

    config = _load(args.config)
    tables, deferral = read_fts(config)
    live = _find_engine(config).status.get("fts")
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
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deferral.started_at))
        sources = ", ".join(f"{s}" for s, _ in deferral.sources) or "no source (left behind)"
        print(f"deferral: since {since} ({_duration(time.time() - deferral.started_at)} ago), "
              f"for: {sources}")
        if deferral.last_error:
            print(f"  last restore failed ({deferral.attempts} attempts): {deferral.last_error}")
    if live is not None and "state" in live:
        line = f"engine: {live['state']}"
        if live.get("retry_in_s") is not None:
            line += f", next restore attempt in {_duration(live['retry_in_s'])}"
        if live.get("error"):
            line += f": {live['error']}"
        print(line)
    return 0


def cmd_fts_restore(args: argparse.Namespace) -> int:
    import dataclasses

    from sqlwarden.config import StatusConfig
    from sqlwarden.db.connect import open_reader
    from sqlwarden.facade import Engine, fts_view_dict

    config = _load(args.config)
    open_reader(config.database).close()  # refuses, changing nothing, if there is no database
    url = _find_engine(config).url
    if url is not None:
        print(f"asking the engine at {url}")
        view = _post_json(f"{url}/fts/restore")
    else:
        # Starting the engine restores a persisted deferral (boot recovery).
        quiet = dataclasses.replace(config, status=StatusConfig(enabled=False))
        with Engine(quiet, start_tasks=False) as engine:
            view = fts_view_dict(engine.fts.restore())
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


def cmd_run(args: argparse.Namespace) -> int:
    from sqlwarden.facade import Engine, stop_on_signals

    config = _load(args.config)
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
            run = _sync_with_bar(engine, source.name, "auto", stop, no_progress=args.no_progress)
            if run is None:
                break
            total_rows += run.rows
            sync_failed = sync_failed or run.status == "failed"
            _print_run(run)
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


def _catch_up_mirror(engine: Any, stop: threading.Event) -> None:
    """Wait for the boot reconcile and an empty outbox; say so in one line either way."""
    from sqlwarden.errors import MirrorError

    try:
        view = engine.mirror.reconcile(timeout=None)
    except MirrorError as exc:
        print(f"mirror: {_one_line(exc)}")
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


def _sync_with_bar(engine: Any, name: str, mode: str, stop: threading.Event, *,
                   no_progress: bool) -> Any:
    """Run one source with a progress bar; None when stopped first."""
    handle = engine.sync.run_later(name, mode=mode)
    bar = _progress(name, 0, disabled=no_progress)
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


def _print_run(run: Any) -> None:
    """What a source run did, in a few lines."""
    lease = run.fts_lease
    if lease is not None and lease.deferred:
        print(f"{run.source}: FTS upkeep of {', '.join(lease.tables)} was deferred during the "
              f"catch-up ({lease.reason})")
    if run.fts_after is not None:
        _print_fts_after(run.fts_after)
    seconds = (run.ended_at or run.started_at) - run.started_at
    line = (f"{run.source}: {run.rows:,} rows in {seconds:.1f}s, "
            f"{'caught up' if run.status == 'ok' else run.status} ({run.mode} run {run.id})")
    if run.rejects:
        line += f", {run.rejects:,} records rejected (see `{PROG} sync history`)"
    print(line)
    if run.note:
        print(f"{run.source}: {run.note}")
    if run.error:
        print(f"{run.source}: error: {run.error}")


def cmd_sync_now(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse

    from sqlwarden.errors import SyncBusy
    from sqlwarden.views import SyncRunView

    config = _load(args.config)
    _check_source(config, args.source, args.config)
    mode = "full" if args.full else "auto"
    found = _find_engine(config)
    if found.url is not None:
        query = urllib.parse.urlencode({"mode": mode})
        try:
            run = _post_json(f"{found.url}/sync/{args.source}?{query}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code in (400, 404, 409):
                raise SyncBusy(f"source {args.source}: {message}", source=args.source) from None
            raise EngineError(f"source {args.source}: {message}") from None
        print(f"asked the running engine at {found.url}")
        _print_run(SyncRunView(**{f.name: run[f.name] for f in dataclasses.fields(SyncRunView)
                                  if f.name in run}))
        return 1 if run["status"] == "failed" else 0
    from sqlwarden.facade import Engine, stop_on_signals

    stop = threading.Event()
    with stop_on_signals(stop), Engine(config, start_tasks=False) as engine:
        run = _sync_with_bar(engine, args.source, mode, stop, no_progress=args.no_progress)
    if run is None:
        print(f"{args.source}: stopped before the run ended; the next run resumes")
        return 130
    _print_run(run)
    return 1 if run.status == "failed" else 0


def _mirror_config(config: Config, file: str) -> None:
    from sqlwarden.errors import ConfigError

    if config.mirror is None or not config.mirror.enabled:
        raise ConfigError("there is no enabled `mirror:` section", file=file)


def _print_checks(tables: Sequence[Any], *, verb: str) -> None:
    for t in tables:
        if t.skipped:
            what = "in sync"
        elif verb == "verify":
            what = f"{t.differing} of {t.ranges} key ranges differ"
        else:
            what = (f"{t.differing} of {t.ranges} key ranges differed: copied {t.copied:,}, "
                    f"deleted {t.deleted:,}")
        print(f"  {t.table}: {t.sqlite_rows:,} rows in SQLite, {t.mirror_rows:,} in the mirror; "
              f"{what} ({t.seconds:.2f}s, {t.sqlite_read:,} rows read from SQLite)")
        for after, upto, mine, theirs in t.ranges_shown:
            low = "start" if after is None else f"after {after!r}"
            high = "end" if upto is None else f"up to {upto!r}"
            print(f"    keys from {low} {high}: {mine:,} rows in SQLite, {theirs:,} in the mirror")
        if t.differing > len(t.ranges_shown):
            print(f"    ... and {t.differing - len(t.ranges_shown)} more ranges")


def cmd_mirror_reconcile(args: argparse.Namespace) -> int:
    import urllib.error

    from sqlwarden.errors import MirrorError, MirrorUnavailable
    from sqlwarden.views import ReconcileView, TableCheck

    config = _load(args.config)
    _mirror_config(config, args.config)
    found = _find_engine(config)
    if found.url is not None:
        try:
            out = _post_json(f"{found.url}/mirror/reconcile")
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            print(f"{PROG}: error: {message}", file=sys.stderr)
            return 3 if exc.code == 503 else 1
        print(f"asked the running engine at {found.url}")
        view = ReconcileView(number=out["number"], verify=False, seconds=out["seconds"],
                             tables=tuple(TableCheck(**{**t, "ranges_shown": tuple(
                                 tuple(r) for r in t["ranges_shown"])}) for t in out["tables"]))
    else:
        from sqlwarden.facade import Engine

        with Engine(config, start_tasks=False) as engine:
            try:
                view = engine.mirror.reconcile(timeout=args.timeout)
            except MirrorUnavailable as exc:
                print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
                return 3
            except (MirrorError, TimeoutError) as exc:
                print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
                return 1
    if args.json:
        from sqlwarden.facade import reconcile_view_dict

        print(json.dumps(reconcile_view_dict(view), indent=2, default=str))
        return 0
    print(f"reconcile {view.number} of {config.mirror.dsn.where if config.mirror else ''} "
          f"took {view.seconds:.2f}s")
    _print_checks(view.tables, verb="reconcile")
    return 0


def cmd_mirror_verify(args: argparse.Namespace) -> int:
    from sqlwarden.errors import MirrorError
    from sqlwarden.mirror.session import MirrorSession, outbox_depth, table_check

    config = _load(args.config)
    _mirror_config(config, args.config)
    assert config.mirror is not None
    session = MirrorSession(config)
    started = time.monotonic()
    try:
        session.open(create=False)
        reports = session.reconcile(apply=False)
        assert session.reader is not None
        depth = outbox_depth(session.reader)[0] if session.has_outbox() else 0
    except MirrorError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 3 if exc.retryable else 2
    finally:
        session.close()
    checks = [table_check(r) for r in reports]
    differs = any(c.differing for c in checks)
    if args.json:
        print(json.dumps({"in_sync": not differs, "outbox_depth": depth,
                          "seconds": round(time.monotonic() - started, 3),
                          "tables": [dataclasses.asdict(c) for c in checks]},
                         indent=2, default=str))
        return 1 if differs else 0
    print(f"verify of {config.mirror.dsn.where} (scope {config.mirror.scope!r}) took "
          f"{time.monotonic() - started:.2f}s")
    _print_checks(checks, verb="verify")
    if depth:
        print(f"  {depth:,} changes are still in the outbox; a running engine sends them "
              "shortly, so some differences may be only those")
    print("in sync" if not differs else "the mirror differs from SQLite; run "
          f"`{PROG} mirror reconcile {args.config}` to repair it")
    return 1 if differs else 0


def _check_source(config: Config, name: str, file: str) -> None:
    from sqlwarden.errors import UnknownSource

    names = [s.name for s in config.sources]
    if name not in names:
        raise UnknownSource(f"unknown source {name!r} in {file} (declared: "
                            f"{', '.join(names) or 'none'})", source=name)


def cmd_sync_history(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_sync

    config = _load(args.config)
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
        took = _duration(run.ended_at - run.started_at) if run.ended_at else "-"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
        text = run.error or run.note or ""
        print(f"{run.id:>5}  {run.source:<12} {run.mode:<11} {run.status:<8} {started:<19} "
              f"{took:>7} {run.rows:>10,} {run.rejects:>8,}  {text}")
    if rejects:
        print(f"latest rejects ({len(rejects)} shown):")
        for reject in rejects:
            print(f"  {reject['source']} {reject['position']}: {reject['reason']}")
    return 0


def _print_fts_after(view: Any) -> None:
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
                bar = bars[progress.name] = _progress(f"{progress.name}@{progress.version}",
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


# --- replay ------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlwarden.errors import ReplayError
    from sqlwarden.replay.read import Filter, log_files, parse_time, read_records

    chosen = Filter(actors=frozenset(args.actor), kinds=frozenset(args.kind),
                    since=None if args.since is None else parse_time(args.since, "--since"),
                    until=None if args.until is None else parse_time(args.until, "--until"),
                    corr=args.corr, run=args.run)
    if (args.check or args.reexecute) and chosen.active:
        raise ReplayError("--check and --reexecute read the whole log; drop the filters "
                          "(--actor, --kind, --since, --until, --corr, --run)")
    if args.keep_db and not args.reexecute:
        raise ReplayError("--keep-db goes with --reexecute")
    if args.follow:
        return _replay_follow(args, chosen)
    files = log_files(args.logs)
    if args.check:
        return _replay_check(files, json_out=args.json)
    if args.html:
        from sqlwarden.replay.html import write_html

        report = write_html(files, Path(args.html), chosen)
        print(report.line())
        return 0
    if args.reexecute:
        from sqlwarden.replay.reexecute import reexecute

        result = reexecute(files, load_config(args.reexecute), keep=args.keep_db)
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            print("\n".join(result.lines()))
        return 0 if result.matches else 1
    from sqlwarden.replay.read import Summary, timeline_line

    summary = Summary()
    for item in read_records(files):
        if isinstance(item, dict):
            if chosen(item):
                summary.add(item)
                if args.timeline:
                    print(timeline_line(item))
        else:
            summary.add_damaged(item)
            if args.timeline:
                print(f"damaged line skipped: {item}", file=sys.stderr)
    if args.timeline:
        return 0
    if args.json:
        print(json.dumps(summary.as_dict(files), indent=2))
    else:
        print("\n".join(summary.lines(files)))
    return 0


def _replay_check(files: Sequence[Any], *, json_out: bool) -> int:
    from sqlwarden.replay.check import Checker
    from sqlwarden.replay.read import read_records

    checker = Checker()
    add, damaged = checker.add, checker.damaged
    for item in read_records(files):
        if isinstance(item, dict):
            add(item)
        else:
            damaged(item)
    checker.finish()
    if json_out:
        print(json.dumps(checker.as_dict(), indent=2))
    else:
        print("\n".join(checker.lines()))
    return 1 if checker.total else 0


def _replay_follow(args: argparse.Namespace, chosen: Any) -> int:
    from pathlib import Path

    from sqlwarden.errors import ReplayError
    from sqlwarden.replay.read import follow, timeline_line

    if len(args.logs) != 1:
        raise ReplayError("--follow takes one LOG (the live file)")

    def emit(item: Any) -> None:
        if isinstance(item, dict):
            if chosen(item):
                print(timeline_line(item), flush=True)
        else:
            print(f"damaged line skipped: {item}", file=sys.stderr, flush=True)

    try:
        follow(Path(args.logs[0]), emit)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
