"""The command line, `scripts/bench NAME [options]`: one sub-command per benchmark module,
the hidden ones that run a single case in a process of its own, and the JSON file at the
end. `python -m benchmarks` runs `main`.
"""

from __future__ import annotations

import argparse
import json
from typing import Protocol

from . import (
    backfill,
    fleet,
    fleet_device,
    fts,
    fts_share,
    ingest,
    mirror,
    mirror_cases,
    replay,
    sync,
)
from .common import Result


class Benchmark(Protocol):
    """A benchmark module; its docstring is what `scripts/bench NAME --help` shows."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def usage_error(self, args: argparse.Namespace) -> str | None: ...

    def run(self, args: argparse.Namespace) -> Result: ...

    def report(self, result: Result) -> None: ...


class CaseCommand(Protocol):
    """A module with a hidden command that runs one case of its benchmark in a fresh process."""

    CASE_COMMAND: str

    def add_case_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def case_main(self, args: argparse.Namespace) -> Result: ...


#: In the order `scripts/bench --help` lists them.
BENCHMARKS: tuple[Benchmark, ...] = (ingest, backfill, fts, fts_share, sync, mirror, fleet,
                                     replay)
CASE_COMMANDS: tuple[CaseCommand, ...] = (sync, mirror_cases, fleet_device)


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as overview

    parser = argparse.ArgumentParser(prog="scripts/bench", description=overview,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = parser.add_subparsers(dest="name", metavar="NAME", required=True)
    for bench in BENCHMARKS:
        bench.add_arguments(names.add_parser(
            bench.NAME, help=bench.HELP, description=bench.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter))
    # Without help, so not listed: each is started by the benchmark that owns it.
    for module in CASE_COMMANDS:
        module.add_case_arguments(names.add_parser(module.CASE_COMMAND))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for module in CASE_COMMANDS:
        if args.name == module.CASE_COMMAND:
            module.case_main(args)
            return 0
    bench = {bench.NAME: bench for bench in BENCHMARKS}[args.name]
    problem = bench.usage_error(args)
    if problem is not None:
        parser.error(problem)
    result = bench.run(args)
    bench.report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0
