"""The mirror's SQLite side: what it reads from the device's database.

The mirror reads through its own read-only connection: the outbox of
pending changes, the current rows of keys, a table's rows cut into key
ranges with their digests, and the ranges a past reconcile stored
(`_sw_mirror_ranges`). Only the Writer changes the database: drained
outbox rows and stored ranges go to it as messages.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import apsw

from sqlwarden.config import Config, TableConfig
from sqlwarden.db.connect import open_peek
from sqlwarden.db.schema import MIRROR_RANGES_TABLE, OUTBOX_TABLE
from sqlwarden.db.sql import column_list, quote
from sqlwarden.mirror.dialect import mariadb_real, sqlite_canonical
from sqlwarden.mirror.ranges import Cutter, Key, KeyRange, key_of, range_shape, row_digest

#: Keys per `IN (...)` list when reading rows from SQLite.
_IN_KEYS = 500


def open_mirror_reader(config: Config) -> apsw.Connection:
    """A read-only connection with `sw_real`, the canonical text of a real."""
    conn = open_peek(config.database)
    conn.create_scalar_function("sw_real", cast(Any, mariadb_real), 1, deterministic=True)
    return conn


@contextmanager
def snapshot(conn: apsw.Connection) -> Iterator[None]:
    """One read transaction: everything read inside sees the same database state."""
    conn.execute("BEGIN DEFERRED -- sqlwarden mirror")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT -- sqlwarden mirror")


def outbox_depth(conn: apsw.Connection) -> tuple[int, float | None]:
    """Pending outbox rows and when the oldest was recorded."""
    row = conn.execute(f"SELECT count(*), min(at) FROM {OUTBOX_TABLE}").fetchone()
    assert row is not None
    return int(row[0]), row[1]


def has_table(conn: apsw.Connection, name: str) -> bool:
    """Whether the database has `name` yet (an older engine's may not have every table)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                        (name,)).fetchone() is not None


def rows_by_keys(conn: apsw.Connection, table: TableConfig,
                 keys: Sequence[Key]) -> list[tuple[Any, ...]]:
    """Current rows of `keys` (those that exist), in no particular order."""
    cols = column_list(table.column_names)
    pk = table.primary_key
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), _IN_KEYS):
        chunk = keys[start:start + _IN_KEYS]
        if len(pk) == 1:
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {cols} FROM {quote(table.name)} WHERE {quote(pk[0])} IN ({marks})"
            params: list[Any] = [k[0] for k in chunk]
        else:
            row = "(" + ",".join("?" * len(pk)) + ")"
            sql = (f"SELECT {cols} FROM {quote(table.name)} WHERE ({column_list(pk)}) IN "
                   f"(VALUES {','.join([row] * len(chunk))})")
            params = [v for k in chunk for v in k]
        out.extend(conn.execute(sql, params))
    return out


def range_where(table: TableConfig, low: Key | None, high: Key | None) -> tuple[str, list[Any]]:
    """`WHERE` keys above `low` and up to `high` (row values: SQLite uses the index)."""
    names = column_list(table.primary_key)
    marks = ", ".join("?" * len(table.primary_key))
    parts: list[str] = []
    params: list[Any] = []
    if low is not None:
        parts.append(f"({names}) > ({marks})")
        params.extend(low)
    if high is not None:
        parts.append(f"({names}) <= ({marks})")
        params.extend(high)
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def read_ranges(conn: apsw.Connection, table: TableConfig, low: Key | None, high: Key | None,
                size: int, *, skip: Container[Key] = frozenset()) -> Iterator[KeyRange]:
    """SQLite's rows above `low` up to `high`, as ranges of `size` keys with their rows;
    keys in `skip` (quarantined: the mirror does not hold them) are left out."""
    width = len(table.primary_key)
    where, params = range_where(table, low, high)
    cursor = conn.execute(
        f"SELECT {column_list(table.primary_key)}, {sqlite_canonical(table)} "
        f"FROM {quote(table.name)} {where} ORDER BY {column_list(table.primary_key)}", params)
    cutter = Cutter(size, low, keep_rows=True)
    for row in cursor:
        key = row[:width]
        if skip and key in skip:
            continue
        done = cutter.add(key, row_digest(row[width]))
        if done is not None:
            yield done
    yield from cutter.finish(high)


class StoredRanges:
    """The ranges a reconcile stored for each table, read through the mirror's reader."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        # A read-only verify may meet a database no engine of this version opened.
        self.available = has_table(conn, MIRROR_RANGES_TABLE)
        #: Range bounds by table: (ords, highs of all but the last range).
        self._bounds: dict[str, tuple[list[int], list[Key]]] = {}

    def forget(self, table: str | None = None) -> None:
        """Drop cached bounds (of one table, or all): its ranges are stored anew."""
        if table is None:
            self._bounds.clear()
        else:
            self._bounds.pop(table, None)

    def ranges(self, table: TableConfig) -> list[KeyRange] | None:
        """The stored ranges, those with pending changes marked unknown; None when unusable."""
        if not self.available:
            return None
        shape = range_shape(table)
        ranges: list[KeyRange] = []
        low: Key | None = None
        rows = list(self.conn.execute(
            f"SELECT hi, rows, digest, shape FROM {MIRROR_RANGES_TABLE} WHERE tbl = ? "
            "ORDER BY ord", (table.name,)))
        for i, (hi, count, digest, stored_shape) in enumerate(rows):
            high = None if hi is None else key_of(table, hi)
            last = i == len(rows) - 1
            if (stored_shape != shape or (high is None) != last
                    or (low is not None and high is not None and not low < high)):
                return None
            ranges.append(KeyRange(low=low, high=high, rows=count, digest=digest))
            low = high
        if not ranges:
            return None
        highs = [cast(Key, r.high) for r in ranges[:-1]]
        for (stored,) in self.conn.execute(f"SELECT k FROM {OUTBOX_TABLE} WHERE tbl = ?",
                                           (table.name,)):
            ranges[bisect_left(highs, key_of(table, stored))].digest = None
        return ranges

    def holding(self, table: TableConfig, keys: Sequence[Key]) -> list[int]:
        """`ord` of the stored ranges that hold any of `keys`.

        The bounds are read once per stored set: only the mirror stores
        ranges, and clearing a digest leaves the bounds as they are.
        """
        if not self.available:
            return []
        bounds = self._bounds.get(table.name)
        if bounds is None:
            rows = list(self.conn.execute(
                f"SELECT ord, hi FROM {MIRROR_RANGES_TABLE} WHERE tbl = ? ORDER BY ord",
                (table.name,)))
            if not rows or any(hi is None for _, hi in rows[:-1]):
                bounds = ([], [])  # none, or unusable: the next reconcile reads it whole
            else:
                bounds = ([o for o, _ in rows], [key_of(table, hi) for _, hi in rows[:-1]])
            self._bounds[table.name] = bounds
        ords, highs = bounds
        if not ords:
            return []
        return [ords[i] for i in sorted({bisect_left(highs, key) for key in keys})]
