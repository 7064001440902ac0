"""`sqlwarden task`: the chunked tasks listed, or one paused, resumed or cancelled.

Listing reads the database, so it works whether or not an engine runs;
control asks the running engine through its status endpoint (`client`).
"""

from __future__ import annotations

import argparse
import json

from sqlwarden.cli.client import EngineRefused, find_engine
from sqlwarden.cli.output import print_tasks, unknown_name
from sqlwarden.config import load_config
from sqlwarden.errors import EngineError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `task list`, `task pause`, `task resume` and `task cancel` to the command line."""
    task = commands.add_parser(
        "task", help="list chunked tasks, or pause, resume or cancel one",
        description="List the chunked tasks of CONFIG with their progress (read from the "
                    "database, so it works whether or not the engine runs), or pause, resume "
                    "or cancel one in the engine that `sqlwarden run CONFIG` is running. "
                    "Control goes through that engine's status endpoint, so it needs "
                    "status.enabled: true.")
    actions = task.add_subparsers(dest="action", metavar="ACTION")
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


def cmd_task_list(args: argparse.Namespace) -> int:
    from sqlwarden.db.status import read_status

    config = load_config(args.config)
    tasks = read_status(config)["tasks"]
    if args.json:
        print(json.dumps(tasks, indent=2))
    elif not tasks:
        print(f"{args.config}: no tasks declared")
    else:
        print_tasks(tasks)
    return 0


def cmd_task_control(args: argparse.Namespace) -> int:
    from sqlwarden.errors import TaskConflict, UnknownTask

    config = load_config(args.config)
    names = [t.name for t in config.tasks]
    if args.name not in names:
        raise UnknownTask(unknown_name("task", args.name, names, args.config), task=args.name)
    engine = find_engine(config, needed_for="task control needs status.enabled: true")
    try:
        view = engine.post(f"/tasks/{args.name}/{args.action}")
    except EngineRefused as exc:
        if exc.request_at_fault:
            raise TaskConflict(f"task {args.name}: {exc.message}", task=args.name) from None
        raise EngineError(f"task {args.name}: {exc.message}") from None
    print(f"task {view['name']}@{view['version']}: {view['status']}, "
          f"{view['processed']:,} rows done")
    return 0
