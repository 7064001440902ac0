"""Reading message logs back: files in order, records, damaged lines, filters.

A log is `messages.jsonl` plus its rotated files (`.1` newest ... `.N`
oldest, any of them gzip-compressed as `.N.gz`). Files are read oldest first,
ordered by the first sequence number each holds, one line at a time, so a
reader's memory does not depend on how long the log is. Every part of
`sqlwarden replay` reads through `read_records`; the small text helpers the
reports share sit at the end.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from sqlwarden.errors import ReplayError
from sqlwarden.msglog.log import RECORD_KINDS, ROTATED
from sqlwarden.msglog.log import log_files as rotated_files

Record = dict[str, Any]

TORN = "torn last line (cut short by a crash?)"
NOT_A_RECORD = "not a message record (a key is missing or of the wrong type)"
#: The longest line read as a record; a longer one is a damaged line, read past in
#: pieces (a record with a full payload of a large batch stays well below this).
MAX_LINE_BYTES = 32 * 1024 * 1024
#: Examples kept of damaged lines and errors (the counts are always complete).
EXAMPLES = 20

_T = TypeVar("_T")


# --- files ------------------------------------------------------------------------------


def open_log_file(path: Path) -> IO[bytes]:
    """One file of a log for reading, plain or gzip-compressed."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    try:
        return open(path, "rb")
    except FileNotFoundError:
        # A rotated file the engine compressed since it was listed.
        packed = path.with_name(path.name + ".gz")
        if ROTATED.match(path.name) is None or not packed.exists():
            raise
        return cast(IO[bytes], gzip.open(packed, "rb"))


def first_seq(path: Path) -> int | None:
    """The sequence number of the first readable record in `path`."""
    try:
        with open_log_file(path) as handle:
            for raw, _ in bounded_lines(handle):
                if raw is None:
                    continue
                try:
                    seq = json.loads(raw).get("seq")
                except (ValueError, AttributeError):
                    continue
                if isinstance(seq, int):
                    return seq
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return None


def log_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files of the logs named, oldest first.

    A name may be a log's current file (its rotated files come along) or any
    one file. Raises `ReplayError` when a name matches nothing.
    """
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        one = ROTATED.match(path.name) is not None and path.is_file()
        found = [path] if one else rotated_files(path)
        if not found:
            raise ReplayError(f"{path}: no such message log")
        for file in found:
            if file not in files:
                files.append(file)
    firsts = {file: first_seq(file) for file in files}
    # Ordered by the first record's seq; files with none keep their place at the end.
    return sorted(files, key=lambda f: (firsts[f] is None, firsts[f] or 0))


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damaged:
    """A line that is not a message record: where it is and what is wrong."""

    file: str
    line: int
    offset: int
    reason: str
    after_seq: int | None

    def __str__(self) -> str:
        after = "" if self.after_seq is None else f" (after seq {self.after_seq})"
        return f"{self.file}:{self.line} (byte {self.offset}): {self.reason}{after}"


def bounded_lines(handle: IO[bytes], limit: int | None = None
                  ) -> Iterator[tuple[bytes | None, int]]:
    """Each line of `handle` with its length in bytes, newline included.

    A line longer than `limit` (default `MAX_LINE_BYTES`) comes as
    `(None, length)`: it is read past in pieces and never held whole, so a
    log inflating to one endless line cannot take the reader's memory.
    """
    most = MAX_LINE_BYTES if limit is None else limit
    readline = handle.readline
    while raw := readline(most + 1):
        if len(raw) <= most or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        length = len(raw)
        while not raw.endswith(b"\n") and (raw := readline(1 << 20)):
            length += len(raw)
        yield None, length


def too_long(limit: int | None = None) -> str:
    """Why a line past the cap is damaged."""
    return f"longer than {MAX_LINE_BYTES if limit is None else limit:,} bytes (not read)"


def read_records(files: Iterable[Path]) -> Iterator[Record | Damaged]:
    """Every line of `files` in order: a record, or `Damaged` for one that is not."""
    last_seq: int | None = None
    for path in files:
        name, offset = str(path), 0
        try:
            with open_log_file(path) as handle:
                for number, (raw, length) in enumerate(bounded_lines(handle), start=1):
                    start, offset = offset, offset + length
                    if raw is None:
                        yield Damaged(name, number, start, too_long(), last_seq)
                        continue
                    item = parse_line(raw, name, number, start, last_seq)
                    if type(item) is dict:
                        last_seq = item["seq"]
                    if item is not None:
                        yield item
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            yield Damaged(str(path), 0, offset, f"unreadable: {exc}", last_seq)


def parse_line(raw: bytes, file: str, number: int, offset: int = 0,
               after_seq: int | None = None, *, split: bool = False) -> Record | Damaged | None:
    """One line of a log: its record, `Damaged` when it is not one, None when blank.

    A line read whole ends with its newline, and one without it is the last of a
    file, cut short (torn); lines `split` from a block of text have none to check.
    (Called once per line of a whole log: keep it lean.)
    """
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        torn = not split and not raw.endswith(b"\n")
        return Damaged(file, number, offset, TORN if torn else "not a JSON record", after_seq)
    if not _is_record(record):
        return Damaged(file, number, offset, NOT_A_RECORD, after_seq)
    return cast(Record, record)


_NUMBER = (int, float)


def _is_record(record: Any) -> bool:
    """Whether every key the tool reads is there (or optional) with the right type."""
    get = record.get if type(record) is dict else None
    if (get is None or type(get("seq")) is not int or get("kind") not in RECORD_KINDS
            or type(get("ts")) is not str or type(get("sender")) is not str
            or type(get("receiver")) is not str or type(get("message")) is not str
            or type(get("fields", {})) is not dict or type(get("run", "")) is not str):
        return False
    corr, duration, error = get("corr"), get("duration_ms"), get("error")
    return ((corr is None or type(corr) is int)
            and (duration is None or (type(duration) in _NUMBER and math.isfinite(duration)))
            and (error is None or type(error) is dict))


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Every record of the log at `path` (with its rotated files), oldest first.

    The strict reader: a torn last line is skipped, any other damaged line
    raises `ValueError` naming its file and line.
    """
    for item in read_records(rotated_files(path)):
        if isinstance(item, dict):
            yield item
        elif item.reason != TORN:
            raise ValueError(f"{item.file}:{item.line}: {item.reason}")


# --- filters ----------------------------------------------------------------------------


def parse_time(text: str, what: str) -> str:
    """A user's time as the log writes it (UTC ISO-8601 with microseconds)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{what} {text!r}: not a time; use ISO-8601 such as "
                          "2026-11-21T06:19:01 (UTC unless it names a zone)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """Which records to show; everything when nothing is set."""

    actors: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    since: str | None = None
    until: str | None = None
    corr: int | None = None
    run: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.actors or self.kinds or self.since or self.until
                    or self.corr is not None or self.run)

    def __call__(self, record: Record) -> bool:
        if self.actors and record.get("sender") not in self.actors \
                and record.get("receiver") not in self.actors:
            return False
        if self.kinds and not _kind_matches(record.get("message", ""), self.kinds):
            return False
        ts = record.get("ts", "")
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts > self.until:
            return False
        if self.corr is not None and record.get("corr") != self.corr:
            return False
        return not (self.run is not None and record.get("run") != self.run)


def _kind_matches(kind: str, wanted: frozenset[str]) -> bool:
    # `writer` matches every writer.* message; `writer.chunk` just that one.
    return kind in wanted or kind.partition(".")[0] in wanted


# --- shared by the reports --------------------------------------------------------------


def keep_example(examples: list[_T], item: _T, most: int = EXAMPLES) -> None:
    """Keep `item` while fewer than `most` are kept; the count beside them stays complete."""
    if len(examples) < most:
        examples.append(item)


def cut(text: str, limit: int, mark: str = "...") -> str:
    """`text`, or its start ending in `mark` when it is longer than `limit` characters."""
    return text if len(text) <= limit else text[:limit - len(mark)] + mark


def files_line(files: Sequence[Path]) -> str:
    """The log a report read, as its first line: the newest file and how many more."""
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    return f"log: {files[-1]}{more}"



def damaged_lines(count: int, examples: Sequence[Damaged]) -> list[str]:
    """A report's lines on the damaged lines it skipped: none when there were none."""
    if not count:
        return []
    return [f"damaged lines: {count:,} (skipped)", *(f"  {d}" for d in examples)]
