"""`sqlwarden replay`: a message log summarised, as a timeline, followed, checked, drawn
as HTML or re-executed (the work is in `sqlwarden.replay`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlwarden.cli.output import whole_number
from sqlwarden.config import load_config


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `replay` to the command line."""
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
    replay.add_argument("--corr", type=whole_number(0, 2**63 - 1), metavar="N",
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


def cmd_replay(args: argparse.Namespace) -> int:
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
        _show(result, json_out=args.json)
        return 0 if result.matches else 1
    from sqlwarden.replay.summary import Summary
    from sqlwarden.replay.timeline import timeline_line

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
    _show(summary, files, json_out=args.json)
    return 0


def _show(report: Any, *args: Any, json_out: bool) -> None:
    """A report as JSON (its `as_dict`) or as text (its `lines`), given `args`."""
    if json_out:
        print(json.dumps(report.as_dict(*args), indent=2))
    else:
        print("\n".join(report.lines(*args)))


def _replay_check(files: Sequence[Path], *, json_out: bool) -> int:
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
    _show(checker, json_out=json_out)
    return 1 if checker.total else 0


def _replay_follow(args: argparse.Namespace, chosen: Any) -> int:
    from sqlwarden.errors import ReplayError
    from sqlwarden.replay.timeline import follow, timeline_line

    if len(args.logs) != 1:
        raise ReplayError("--follow takes one LOG (the live file)")
    live = Path(args.logs[0])
    if live.exists() and not live.is_file():
        # A FIFO or a device (/dev/zero) never ends and is no log: reading it would
        # only grow memory.
        raise ReplayError(f"{live}: --follow reads a regular file (the live log), not "
                          "a device, FIFO or folder")

    def emit(item: Any) -> None:
        if isinstance(item, dict):
            if chosen(item):
                print(timeline_line(item), flush=True)
        else:
            print(f"damaged line skipped: {item}", file=sys.stderr, flush=True)

    try:
        follow(live, emit)
    except KeyboardInterrupt:
        return 0
    return 0
