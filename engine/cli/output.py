"""What the command groups print alike: the program's name, error lines, durations,
sizes, times, progress bars and the task table."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

PROG = "sqlwarden"


def one_line(exc: BaseException) -> str:
    """An error's text on one line, whatever newlines its message holds."""
    return " ".join(str(exc).split())


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number from `low` to `high`, or one line saying the range.

    `int()` alone takes `99999999999999999999999`, which later overflows what
    SQLite can bind (an OverflowError, not a user's mistake named)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({low:,} to {high:,})")
        return value
    return parse


def seconds_within(low: float, high: float) -> Callable[[str], float]:
    """An argparse `type`: a finite number of seconds above `low`, at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range (more than {low:g} and at most {high:g} seconds)")
        return value
    return parse


def print_error(text: str) -> None:
    """`sqlwarden: error: TEXT` on stderr, the one line a failed command prints."""
    print(f"{PROG}: error: {text}", file=sys.stderr)


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def size(n: int) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def local_time(epoch_s: float) -> str:
    """A Unix time as the local date and time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))


def progress_bar(label: str, total: int, *, disabled: bool) -> Any:
    """A tqdm bar on stderr counting rows."""
    from tqdm import tqdm

    # tqdm switches itself off when stderr is not a terminal (disable=None).
    return tqdm(total=total, desc=label, unit="rows", unit_scale=True, dynamic_ncols=True,
                disable=True if disabled else None, file=sys.stderr)


def print_tasks(tasks: list[dict[str, Any]]) -> None:
    """One line per task of a status read: state, rows done, rate, ETA, error."""
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
                line += f", ETA {duration(t['eta_s'])}"
            if t["waiting"]:
                line += f" ({t['waiting']})"
        if t["attempts"] > 1:
            line += f", attempt {t['attempts']}"
        if t["error"]:
            line += f": {t['error']}"
        print(line)


def unknown_name(kind: str, name: str, declared: list[str], file: str) -> str:
    """Why `name` is refused: it is not among the `kind`s `file` declares."""
    return (f"unknown {kind} {name!r} in {file} (declared: "
            f"{', '.join(declared) or 'none'})")
