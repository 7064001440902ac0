"""Key ranges: how a reconcile cuts a table, and what it found, as plain values.

A table's keys are cut into consecutive ranges of about `range_rows` keys;
each range carries its row count and the sum of its rows' digests, which
both sides compute from the same canonical encoding (`dialect`). Nothing
here reads a database.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlwarden.config import TableConfig
from sqlwarden.mirror.dialect import sqlite_canonical
from sqlwarden.views import TableCheck

Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeDiff:
    """One key range whose count or digest differs between SQLite and the mirror."""

    low: Key | None  # exclusive; None: from the first key
    high: Key | None  # inclusive; None: to the last key
    sqlite_rows: int
    mirror_rows: int


@dataclass(slots=True, kw_only=True)
class TableReport:
    """What a reconcile or verify found and did for one table."""

    table: str
    sqlite_rows: int = 0
    mirror_rows: int = 0
    ranges: int = 0
    differing: list[RangeDiff] = field(default_factory=list)
    copied: int = 0
    deleted: int = 0
    skipped: bool = False
    seconds: float = 0.0
    sqlite_read: int = 0


@dataclass(slots=True, kw_only=True)
class KeyRange:
    """Keys of one table above `low` (None: from the first) up to `high` (None: open)."""

    low: Key | None
    high: Key | None
    rows: int = 0
    #: sum of the rows' digests; None when not known (a stored range gone stale)
    digest: int | None = 0
    #: (key, row digest) in key order as read from SQLite; None when not read
    chunk: list[tuple[Key, int]] | None = None


class Cutter:
    """Cuts a key-ordered stream of (key, digest) into ranges of `size` rows.

    The last range reaches the caller's upper bound, so keys the mirror has
    past SQLite's last one are inside a range; it is never a needless empty
    range after a full one.
    """

    def __init__(self, size: int, low: Key | None, *, keep_rows: bool) -> None:
        self.size = size
        self.keep_rows = keep_rows
        self.current = KeyRange(low=low, high=None, chunk=[] if keep_rows else None)
        self.ready: KeyRange | None = None

    def add(self, key: Key, digest: int) -> KeyRange | None:
        """Take the next row; returns a range once it is known not to be the last."""
        current = self.current
        current.rows += 1
        current.digest += digest  # type: ignore[operator]  # never None while cutting
        if current.chunk is not None:
            current.chunk.append((key, digest))
        if current.rows < self.size:
            return None
        done, self.ready = self.ready, current
        current.high = key
        self.current = KeyRange(low=key, high=None, chunk=[] if self.keep_rows else None)
        return done

    def finish(self, high: Key | None) -> list[KeyRange]:
        if self.ready is not None and not self.current.rows:
            self.ready.high = high
            return [self.ready]
        self.current.high = high
        return [r for r in (self.ready, self.current) if r is not None]


def row_digest(canonical: str) -> int:
    """CRC32 of a row's canonical encoding, as the server's `sw_digest` computes it."""
    return zlib.crc32(canonical.encode("utf-8", "surrogatepass"))


def range_shape(table: TableConfig) -> str:
    """Names the key and row encoding stored digests were computed with."""
    text = f"{','.join(table.primary_key)}|{sqlite_canonical(table)}"
    return f"{zlib.crc32(text.encode()):08x}:{len(text)}"


def stored_key(table: TableConfig, key: Key | None) -> Any:
    """A key as `_sw_mirror_ranges.hi` and the outbox hold it (JSON for compound keys)."""
    if key is None:
        return None
    return key[0] if len(table.primary_key) == 1 else json.dumps(list(key))


def key_of(table: TableConfig, stored: Any) -> Key:
    """The key tuple of a stored key (`stored_key`'s inverse)."""
    if len(table.primary_key) == 1:
        return (stored,)
    return tuple(json.loads(stored))


def merged(ranges: Iterable[KeyRange], size: int) -> list[KeyRange]:
    """`ranges` without their rows, neighbours joined while they fit in `size` rows."""
    out: list[KeyRange] = []
    for r in ranges:
        assert r.digest is not None
        last = out[-1] if out else None
        if last is not None and last.rows + r.rows <= size:
            assert last.digest is not None
            last.high, last.rows, last.digest = r.high, last.rows + r.rows, last.digest + r.digest
        else:
            out.append(KeyRange(low=r.low, high=r.high, rows=r.rows, digest=r.digest))
    return out


def shown(key: Key | None) -> Any:
    """A key as status shows it: the value itself for a one-column key."""
    if key is None:
        return None
    return key[0] if len(key) == 1 else list(key)


def table_check(report: TableReport, shown_ranges: int = 20) -> TableCheck:
    """A report as the message log and callers see it, with the first differing ranges."""
    return TableCheck(
        table=report.table, sqlite_rows=report.sqlite_rows, mirror_rows=report.mirror_rows,
        ranges=report.ranges, differing=len(report.differing), copied=report.copied,
        deleted=report.deleted, skipped=report.skipped, seconds=round(report.seconds, 3),
        sqlite_read=report.sqlite_read,
        ranges_shown=tuple((shown(d.low), shown(d.high), d.sqlite_rows, d.mirror_rows)
                           for d in report.differing[:shown_ranges]))


def percentile(ordered: Sequence[float], share: float) -> float:
    """The value at `share` (0..1) of an ordered sequence; 0 when empty."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
