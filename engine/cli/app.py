"""The `sqlwarden` command: the parser, `main()`, and the one place errors become exit codes.

Exit codes: 0 on success, 2 when the user's input is at fault (one line on
stderr, nothing changed), 1 on an internal failure. Set SQLWARDEN_DEBUG=1 to
see tracebacks. A command that starts an engine holds SIGINT and SIGTERM as a
stop (`facade.stop_on_signals`): it stops at the next boundary and exits 0;
elsewhere SIGINT interrupts, exiting 130. Each command group registers its own sub-commands from its
module (`run`, `status`, `tasks`, `fts`, `sync`, `mirror`, `replay`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from sqlwarden import __version__
from sqlwarden.cli import fts, mirror, replay, run, status, sync, tasks
from sqlwarden.cli.output import PROG, one_line, print_error
from sqlwarden.errors import EngineError


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage plus the error; one line is the house rule.
        raise _UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options and every command group's commands."""
    parser = _Parser(prog=PROG, description="Keep a device's SQLite database healthy while data "
                     "pours in.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) to stderr")
    # Sub-parsers of a `_Parser` are `_Parser`s, down to the actions of each group.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for group in (run, status, tasks, fts, sync, mirror, replay):
        group.register(commands)
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
        print_error(one_line(exc))
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
        print(f"{PROG}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set SQLWARDEN_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
