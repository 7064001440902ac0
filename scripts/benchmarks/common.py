"""What every benchmark uses: failures, configs and fixture databases, work folders, runs and
their best, cases in their own processes, peak memory, percentiles and the verdict words.

Nothing here knows a particular benchmark; a helper moves here once two benchmarks need it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import apsw

from sqlwarden.config import Config, parse_config
from sqlwarden.facade import Engine

T = TypeVar("T")
#: scripts/, which holds this package: on the path of every process that imports it.
SCRIPTS = Path(__file__).resolve().parent.parent
#: The repository: `tests.support.mariadb` (the private MariaDB server) is imported from there.
ROOT = SCRIPTS.parent
PACKAGE = __name__.rpartition(".")[0]
#: A benchmark's result as written to its JSON file; one run or case of it, likewise.
Result = dict[str, Any]


# --- failures and configs ------------------------------------------------------------------

def bench_fail(bench: str, message: str) -> SystemExit:
    """Ends the bench with exit status 1 and `message` (raise what this returns)."""
    return SystemExit(f"bench {bench}: FAILED: {message}")


def make_config(template: str, path: Path, **values: Any) -> Config:
    """`template` (YAML with a `{path}` field for the database) filled in with `path`
    made absolute and `values`, parsed with the database's folder as its base."""
    path = path.resolve()
    return parse_config(template.format(path=path, **values), base_dir=path.parent)


def make_schema(path: Path, config: Config) -> None:
    """A fresh database at `path` (`config`'s) with the schema a short-lived engine makes,
    so raw apsw code writes into the same tables as the engine."""
    remove_database(path)
    with Engine(config):
        pass


@contextmanager
def filling(path: Path, config: Config) -> Iterator[apsw.Connection]:
    """A fresh database with the engine's schema, open for raw apsw to fill in one
    transaction; committed, checkpointed (truncate) and closed when the block ends."""
    make_schema(path, config)
    conn = apsw.Connection(str(path))
    try:
        conn.pragma("synchronous", "off")  # a bench fixture: rebuilt, never recovered
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def fresh_copy(base: Path, path: Path) -> None:
    """`path` made a copy of the database `base` (which has no WAL: it was checkpointed)."""
    remove_database(path)
    shutil.copyfile(base, path)


def in_workdir(args: argparse.Namespace,
               bench: Callable[[argparse.Namespace, Path], Result]) -> Result:
    """Run `bench` in `--workdir` (kept) or else in a temporary directory (removed)."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="sqlwarden-bench-") as tmp:
        return bench(args, Path(tmp))


# --- runs ---------------------------------------------------------------------------------

def alternating(items: Sequence[T], repeat: int) -> Sequence[T]:
    """`items` on even repeats and reversed on odd ones, so that none of them always runs
    on a warm cache (or a warm server)."""
    return items if repeat % 2 == 0 else items[::-1]


def mark_best(runs: list[Result], rank: Callable[[Result], float]) -> dict[str, Result]:
    """The best run of each case (the lowest `rank`, the first of equals); marks every run
    `best` or not and rounds its `seconds` to the millisecond."""
    best: dict[str, Result] = {}
    for run in runs:
        if run["case"] not in best or rank(run) < rank(best[run["case"]]):
            best[run["case"]] = run
    for run in runs:
        run["best"] = any(run is b for b in best.values())
        run["seconds"] = round(run["seconds"], 3)
    return best


def best_of(runs: list[Result], key: str = "case") -> dict[str, Result]:
    """The runs of a written result that are marked best, by `key`: what a report prints."""
    return {run[key]: run for run in runs if run["best"]}


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class BackgroundThreads:
    """Starts `_threads` on enter; on exit stops them and raises the first error they hit."""

    _threads: tuple[threading.Thread, ...]
    _stop: threading.Event
    _error: BaseException | None

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc is None:
            raise self._error


# --- processes and memory -----------------------------------------------------------------

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def run_case(bench: str, command: str, case: str, out: Path, options: Sequence[str]) -> Result:
    """Run one case of `bench` in a fresh Python process, `python -m benchmarks COMMAND CASE
    OPTIONS --out OUT` (its output goes to ours), and return what it wrote to `out`."""
    out.unlink(missing_ok=True)
    # The child imports this package by name: `scripts/` goes first on its path, wherever
    # this process was started from.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), *([path] if path else [])])}
    command_line = [sys.executable, "-m", PACKAGE, command, case, *options, "--out", str(out)]
    done = subprocess.run(command_line, env=env, check=False)
    if done.returncode != 0 or not out.exists():
        raise bench_fail(bench, f"the {case} case exited with status {done.returncode} (its "
                         "output is above)")
    result: Result = json.loads(out.read_text())
    out.unlink()
    return result


def finish_case(args: argparse.Namespace, result: Result, **more: Any) -> Result:
    """In a case's own process: add its name and rows/s (and `more`) to `result` and write
    it to `--out` for the bench that started the process."""
    result.update(case=args.case, rows_s=round(args.rows / result["seconds"], 1), **more)
    args.out.write_text(json.dumps(result) + "\n")
    return result


@dataclass(frozen=True, slots=True)
class Measured:
    """A child process run from start to exit."""

    seconds: float
    returncode: int
    #: Its peak resident memory, from wait4's ru_maxrss.
    peak_rss_mb: float


def run_measured(command: Sequence[str], stdout: Path, **popen: Any) -> Measured:
    """Run `command` with its standard output into the file `stdout`, timed from its start
    until it exits; wait4 gives its own peak memory, not that of this process."""
    with stdout.open("wb") as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, **popen)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
    # Reaped by wait4: tell Popen, which would otherwise wait for it again.
    child.returncode = os.waitstatus_to_exitcode(status)
    return Measured(seconds, child.returncode, usage.ru_maxrss / 1024)


# --- printing -----------------------------------------------------------------------------

def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target(value: float, ok: bool, text: str) -> str:
    """`value` against its target: `0.812 (target >= 0.7: met)`."""
    return f"{value:.3f} (target {text}: {met(ok)})"


# --- command line -------------------------------------------------------------------------

def add_output_options(parser: argparse.ArgumentParser, name: str,
                       workdir: str | None = None) -> None:
    """`--json` (under var/bench/ by default) and, with its help text, `--workdir`."""
    parser.add_argument("--json", type=Path, default=Path(f"var/bench/{name}.json"),
                        help="where to write the JSON result (default: %(default)s)")
    if workdir is not None:
        parser.add_argument("--workdir", type=Path, default=None, help=workdir)


def add_case_options(parser: argparse.ArgumentParser, cases: Sequence[str]) -> None:
    """What every hidden case command takes: the case, its database and rows, and `--out`
    (which `run_case` passes and `finish_case` writes)."""
    parser.add_argument("case", choices=cases)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
