"""Reading message logs back: files in order, damaged lines, filters, summary, timeline.

Everything here streams: records are read one line at a time and folded into
counters whose size depends on how many actors, message kinds and runs there
are, never on how long the log is. Handling times are kept as histograms with
buckets 1/100 of a decade wide, so percentiles are exact to about 2.3%.

A log is `messages.jsonl` plus its rotated files (`.1` newest ... `.N`
oldest, any of them gzip-compressed as `.N.gz`). Files are read oldest first,
ordered by the first sequence number each holds.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from sqlwarden.errors import ReplayError
from sqlwarden.msglog.log import RECORD_KINDS, ROTATED, file_last_seq
from sqlwarden.msglog.log import log_files as rotated_files

Record = dict[str, Any]

TORN = "torn last line (cut short by a crash?)"
NOT_A_RECORD = "not a message record (a key is missing or of the wrong type)"
#: Examples kept of damaged lines and errors (the counts are always complete).
EXAMPLES = 20


# --- files ------------------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
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


def _first_seq(path: Path) -> int | None:
    """The sequence number of the first readable record in `path`."""
    try:
        with _open(path) as handle:
            for raw in handle:
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
    firsts = {file: _first_seq(file) for file in files}
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


def read_records(files: Iterable[Path]) -> Iterator[Record | Damaged]:
    """Every line of `files` in order: a record, or `Damaged` for one that is not."""
    last_seq: int | None = None
    for path in files:
        offset = 0
        try:
            with _open(path) as handle:
                for number, raw in enumerate(handle, start=1):
                    start, offset = offset, offset + len(raw)
                    if not raw.strip():
                        continue
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        torn = not raw.endswith(b"\n")
                        yield Damaged(str(path), number, start,
                                      TORN if torn else "not a JSON record", last_seq)
                        continue
                    if not _is_record(record):
                        yield Damaged(str(path), number, start,
                                      NOT_A_RECORD, last_seq)
                        continue
                    last_seq = record["seq"]
                    yield record
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            yield Damaged(str(path), 0, offset, f"unreadable: {exc}", last_seq)


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


# --- summary ----------------------------------------------------------------------------


def _bucket(ms: float) -> int:
    return -1000 if ms <= 0.001 else round(math.log10(ms) * 100)


def _bucket_ms(bucket: int) -> float:
    return 0.0 if bucket == -1000 else 10 ** (bucket / 100)


def percentile(histogram: Counter[int], share: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(share * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return _bucket_ms(bucket)
    return None  # unreachable: the ranks add up to total


@dataclass(slots=True)
class KindStats:
    sent: int = 0
    asks: int = 0
    replies: int = 0
    errors: int = 0
    handling: Counter[int] = field(default_factory=Counter)


@dataclass(slots=True)
class RunStats:
    first_ts: str
    last_ts: str
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0


@dataclass(slots=True)
class ActorStats:
    sent: int = 0
    received: int = 0
    handled: int = 0
    errors: int = 0


class Summary:
    """Counts folded from records one at a time."""

    def __init__(self) -> None:
        self.records = 0
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.runs: dict[str, RunStats] = {}
        self.actors: dict[str, ActorStats] = {}
        self.kinds: dict[str, KindStats] = {}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.error_examples: list[Record] = []
        self.damaged = 0
        self.damaged_examples: list[Damaged] = []

    def _actor(self, name: str) -> ActorStats:
        stats = self.actors.get(name)
        if stats is None:
            stats = self.actors[name] = ActorStats()
        return stats

    def add(self, record: Record) -> None:
        self.records += 1
        ts, seq, run = record.get("ts", ""), record["seq"], record.get("run", "")
        if self.first_ts is None:
            self.first_ts, self.first_seq = ts, seq
        self.last_ts, self.last_seq = ts, seq
        stats = self.runs.get(run)
        if stats is None:
            stats = self.runs[run] = RunStats(first_ts=ts, last_ts=ts, first_seq=seq)
        stats.records += 1
        stats.last_ts, stats.last_seq = ts, seq
        kind = record["kind"]
        message = record.get("message", "?")
        per_kind = self.kinds.get(message)
        if per_kind is None:
            per_kind = self.kinds[message] = KindStats()
        if kind == "tell" or kind == "ask":
            per_kind.sent += 1
            if kind == "ask":
                per_kind.asks += 1
            self._actor(record.get("sender", "?")).sent += 1
            self._actor(record.get("receiver", "?")).received += 1
            return
        handler = self._actor(record.get("sender", "?"))
        handler.handled += 1
        duration = record.get("duration_ms")
        if duration is not None:
            per_kind.handling[_bucket(duration)] += 1
        if kind == "reply":
            per_kind.replies += 1
            return
        per_kind.errors += 1
        handler.errors += 1
        error = record.get("error") or {}
        self.errors[(message, str(error.get("type", "?")))] += 1
        if len(self.error_examples) < EXAMPLES:
            self.error_examples.append(record)

    def add_damaged(self, damaged: Damaged) -> None:
        self.damaged += 1
        if len(self.damaged_examples) < EXAMPLES:
            self.damaged_examples.append(damaged)

    # --- output -------------------------------------------------------------------------

    def as_dict(self, files: Sequence[Path] = ()) -> dict[str, Any]:
        return {
            "files": [str(f) for f in files],
            "records": self.records,
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "first_ts": self.first_ts, "last_ts": self.last_ts,
            "span_s": _span_s(self.first_ts, self.last_ts),
            "runs": {run: {"first_ts": r.first_ts, "last_ts": r.last_ts, "records": r.records,
                           "first_seq": r.first_seq, "last_seq": r.last_seq}
                     for run, r in self.runs.items()},
            "actors": {name: {"sent": a.sent, "received": a.received, "handled": a.handled,
                              "errors": a.errors} for name, a in sorted(self.actors.items())},
            "messages": {kind: {"sent": k.sent, "asks": k.asks, "replies": k.replies,
                                "errors": k.errors,
                                "p50_ms": _rounded(percentile(k.handling, 0.50)),
                                "p99_ms": _rounded(percentile(k.handling, 0.99))}
                         for kind, k in sorted(self.kinds.items())},
            "errors": [{"message": m, "type": t, "count": n}
                       for (m, t), n in self.errors.most_common()],
            "error_examples": [{"seq": r["seq"], "message": r.get("message"),
                                "error": r.get("error")} for r in self.error_examples],
            "damaged": self.damaged,
            "damaged_examples": [str(d) for d in self.damaged_examples],
        }

    def lines(self, files: Sequence[Path] = ()) -> list[str]:
        out = []
        if files:
            more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
            out.append(f"log: {files[-1]}{more}")
        if not self.records:
            out.append("no records")
        else:
            span = _span_s(self.first_ts, self.last_ts)
            out.append(f"{self.records:,} records, seq {self.first_seq}..{self.last_seq}, "
                       f"{self.first_ts} .. {self.last_ts} ({_duration(span)}), "
                       f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}")
            for run, r in self.runs.items():
                out.append(f"  run {run}: seq {r.first_seq}..{r.last_seq}, {r.records:,} "
                           f"records, {r.first_ts} .. {r.last_ts}")
            out.append("")
            width = max(len(n) for n in self.actors)
            out.append(f"{'actor':<{width}}  {'sent':>9}  {'received':>9}  {'handled':>9}  "
                       f"{'errors':>7}")
            for name, a in sorted(self.actors.items()):
                out.append(f"{name:<{width}}  {a.sent:>9,}  {a.received:>9,}  {a.handled:>9,}  "
                           f"{a.errors:>7,}")
            out.append("")
            width = max(len(n) for n in self.kinds)
            out.append(f"{'message':<{width}}  {'sent':>9}  {'asks':>9}  {'errors':>7}  "
                       f"{'p50 ms':>9}  {'p99 ms':>9}")
            for kind, k in sorted(self.kinds.items(), key=lambda item: -item[1].sent):
                out.append(f"{kind:<{width}}  {k.sent:>9,}  {k.asks:>9,}  {k.errors:>7,}  "
                           f"{_ms(percentile(k.handling, 0.50)):>9}  "
                           f"{_ms(percentile(k.handling, 0.99)):>9}")
        out.append("")
        if not self.errors:
            out.append("errors: none")
        else:
            out.append(f"errors: {sum(self.errors.values()):,}")
            for (message, kind), count in self.errors.most_common():
                out.append(f"  {count:>7,}  {message}  {kind}")
            for record in self.error_examples[:5]:
                error = record.get("error") or {}
                out.append(f"  seq {record['seq']}: {record.get('message')}: "
                           f"{error.get('type')}: {error.get('message')}")
        if self.damaged:
            out.append(f"damaged lines: {self.damaged:,} (skipped)")
            out.extend(f"  {d}" for d in self.damaged_examples)
        return out


def _span_s(first: str | None, last: str | None) -> float | None:
    if not first or not last:
        return None
    try:
        return round((datetime.fromisoformat(last) - datetime.fromisoformat(first))
                     .total_seconds(), 6)
    except ValueError:
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.3f} s"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + " h"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:,.1f}"


# --- timeline ---------------------------------------------------------------------------


_FOLLOW_BLOCK = 1 << 20
_ARROWS = {"tell": "->", "ask": "=>", "reply": "<-", "error": "<!"}
_FIELD_CHARS = 160


def timeline_line(record: Record) -> str:
    """One record as a line: time, seq, run, what went where, fields, duration."""
    kind = record["kind"]
    ts = str(record.get("ts", ""))
    clock = ts[11:26] if len(ts) >= 26 else ts
    fields = record.get("fields") or {}
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) > _FIELD_CHARS:
        text = text[:_FIELD_CHARS - 3] + "..."
    line = (f"{clock} {record['seq']:>8} {kind:<5} {record.get('sender', '?'):>9} "
            f"{_ARROWS.get(kind, '--')} {record.get('receiver', '?'):<9} "
            f"{record.get('message', '?')} #{record.get('corr')}")
    if kind in ("reply", "error") and record.get("duration_ms") is not None:
        line += f" {record['duration_ms']:.3f}ms"
    if kind == "error":
        error = record.get("error") or {}
        return f"{line} {error.get('type')}: {error.get('message')}"
    return f"{line} {text}" if fields else line


# --- follow -----------------------------------------------------------------------------


def follow(base: Path, emit: Callable[[Record | Damaged], None], *, last: int = 10,
           poll_s: float = 0.2, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Like `tail -f`: the last `last` records of the live file, then each new one.

    The file is read in blocks, so memory stays small whatever its size. On a
    rotation (the name now holds another, new file) the old file is read to
    its end first, then the new one from its start. Runs until `should_stop()`
    or Ctrl-C.
    """
    if not base.exists():
        raise ReplayError(f"{base}: no such message log")
    tail: deque[Record | Damaged] = deque(maxlen=last)
    reader = _LineReader(base)
    shown = 0  # the last seq emitted

    def show(item: Record | Damaged) -> None:
        nonlocal shown
        if isinstance(item, dict):
            shown = max(shown, item["seq"])
        emit(item)

    try:
        for item in reader.items():
            tail.append(item)
        for item in tail:
            show(item)
        while not should_stop():
            fresh = False
            for item in reader.items():
                show(item)
                fresh = True
            if fresh:
                continue
            if reader.replaced():
                for item in reader.items():  # what the old file got before it moved
                    show(item)
                reader.close()
                # Files rotated in and out since (more than one rotation between looks).
                for item in read_records(_newer_rotated(base, shown)):
                    if not isinstance(item, dict) or item["seq"] > shown:
                        show(item)
                reader = _LineReader(base)
                continue
            time.sleep(poll_s)
    finally:
        reader.close()


def _newer_rotated(base: Path, shown: int) -> list[Path]:
    """Rotated files of `base` that hold records after seq `shown`, oldest first."""
    newer: list[Path] = []
    for file in reversed(rotated_files(base)[:-1] if base.exists() else rotated_files(base)):
        last = file_last_seq(file)
        if last is not None and last <= shown:
            break  # this one and every older one was shown
        newer.insert(0, file)
        first = _first_seq(file)
        if first is None or first <= shown:
            break
    return newer


class _LineReader:
    """Whole lines appended to one open file, read in blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.pending = b""
        self.number = 0

    def items(self) -> Iterator[Record | Damaged]:
        while True:
            block = self.handle.read(_FOLLOW_BLOCK)
            if not block:
                return
            *lines, self.pending = (self.pending + block).split(b"\n")
            for raw in lines:
                self.number += 1
                item = _parse_line(raw, str(self.path), self.number)
                if item is not None:
                    yield item

    def replaced(self) -> bool:
        """Whether the name now holds another file (rotated) or a shorter one (truncated)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # between the rename and the new file; look again later
        return now.st_ino != self.inode or now.st_size < self.handle.tell()

    def close(self) -> None:
        self.handle.close()


def _parse_line(raw: bytes, file: str, number: int) -> Record | Damaged | None:
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return Damaged(file, number, 0, "not a JSON record", None)
    if not _is_record(record):
        return Damaged(file, number, 0, NOT_A_RECORD, None)
    return record
