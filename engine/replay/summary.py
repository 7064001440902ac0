"""`sqlwarden replay LOG`: the summary of a log, folded from its records one at a time.

Counts per run, per actor and per message kind, errors, and damaged lines.
Their size depends on how many actors, message kinds and runs there are,
never on how long the log is. Handling times are kept as histograms with
buckets 1/100 of a decade wide, so percentiles are exact to about 2.3%.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlwarden.replay.read import Damaged, Record, damaged_lines, files_line, keep_example

# --- handling times ---------------------------------------------------------------------


def _bucket(ms: float) -> int:
    return -1000 if ms <= 0.001 else round(math.log10(ms) * 100)


def _bucket_ms(bucket: int) -> float:
    return 0.0 if bucket == -1000 else 10 ** (bucket / 100)


def percentile(histogram: Counter[int], share: float) -> float | None:
    """The handling time (ms) below which `share` of the histogram's answers fall."""
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


# --- counts -----------------------------------------------------------------------------


@dataclass(slots=True)
class KindStats:
    """One message kind: how often it was sent, asked, answered and failed."""

    sent: int = 0
    asks: int = 0
    replies: int = 0
    errors: int = 0
    handling: Counter[int] = field(default_factory=Counter)


@dataclass(slots=True)
class RunStats:
    """One engine run: its first and last record."""

    first_ts: str
    last_ts: str
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0


@dataclass(slots=True)
class ActorStats:
    """One actor: messages it sent, received, handled, and the errors it answered."""

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
        keep_example(self.error_examples, record)

    def add_damaged(self, damaged: Damaged) -> None:
        self.damaged += 1
        keep_example(self.damaged_examples, damaged)

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
            out.append(files_line(files))
        if not self.records:
            out.append("no records")
        else:
            out.extend(self._count_lines())
        out.append("")
        out.extend(self._error_lines())
        return out

    def _count_lines(self) -> list[str]:
        span = _span_s(self.first_ts, self.last_ts)
        out = [f"{self.records:,} records, seq {self.first_seq}..{self.last_seq}, "
               f"{self.first_ts} .. {self.last_ts} ({_duration(span)}), "
               f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"]
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
        return out

    def _error_lines(self) -> list[str]:
        out = []
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
        out.extend(damaged_lines(self.damaged, self.damaged_examples))
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
