"""What the mirror does over its two connections, as plain code the Mirror actor's worker runs.

`MirrorSession` holds one MySQL connection and one read-only SQLite
connection. It creates the mirror tables, drains the outbox, and reconciles
or verifies whole tables:

- Drain: the oldest `batch_rows` outbox rows and the current rows of their
  keys are read in one SQLite read transaction; a key whose row exists is
  upserted, one whose row is gone is deleted, all in one MySQL transaction.
  The caller then asks the Writer to delete the outbox rows up to the
  batch's last sequence number. A key changed again meanwhile got a new,
  higher sequence number, so it stays pending. A crash anywhere repeats a
  batch, which the upserts and deletes make harmless.
- Reconcile: a table's keys are cut into consecutive ranges of about
  `range_rows` keys, and each range's (row count, sum of row digests) is
  compared with the same pair computed by the server over the same key range
  for this scope. Only a range that differs is looked at row by row: the two
  sorted streams of (key, digest) are merged, keys the mirror has and SQLite
  does not are deleted, and rows missing or different are copied. Memory
  stays bounded by one range. An empty mirror skips the comparison and
  copies straight.
- SQLite's side is stored (`_sw_mirror_ranges`, through the Writer) when a
  reconcile ends, and only ranges that changed since are read again: every
  change passes through the outbox, and the Writer clears a range's digest in
  the transaction that deletes a drained change of it, so a range with a
  digest and no pending change is as it was. A restart in sync reads no rows
  from SQLite. Stored ranges that do not add up to the table's row count are
  distrusted and the table is read whole.
- Verify: the same comparison, changing nothing on the server.

Every statement to the server names this engine's scope value, so engines
sharing a central database never read or touch each other's rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import zlib
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import apsw

from sqlwarden.config import Config, MirrorConfig, TableConfig
from sqlwarden.db.connect import open_reader
from sqlwarden.db.schema import MIRROR_RANGES_TABLE, OUTBOX_TABLE
from sqlwarden.db.sql import column_list, quote
from sqlwarden.errors import EngineStopped, MirrorError
from sqlwarden.mirror.dialect import (
    DIGEST_COLUMN,
    Literals,
    connect,
    create_table_sql,
    delete_statements,
    expected_columns,
    key_after,
    key_params,
    key_upto,
    mariadb_real,
    mq,
    mysql_error,
    sqlite_canonical,
    upsert_statements,
)
from sqlwarden.mirror.driver import driver_name
from sqlwarden.protocol import (
    Drained,
    Message,
    MirrorDown,
    MirrorUp,
    OutboxDrained,
    ProgressEvent,
    ReconcileBegun,
    Reconciled,
    SaveMirrorRanges,
)
from sqlwarden.redact import Redactor
from sqlwarden.views import TableCheck

log = logging.getLogger(__name__)

Key = tuple[Any, ...]
#: The Mirror actor's name on the bus.
ACTOR = "mirror"
#: Keys per `IN (...)` list when reading rows from SQLite.
_IN_KEYS = 500
#: Outbox batches a verify sends first, so pending changes do not count as drift.
VERIFY_DRAIN_BATCHES = 100
#: Rows copied per MySQL transaction during a reconcile.
_COPY_COMMIT_ROWS = 20_000


class Stopped(Exception):
    """The engine is stopping; the reconcile ends where it is (it is safe to repeat)."""


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainBatch:
    """Outbox rows read in one snapshot, with the current rows of their keys."""

    upto_seq: int
    entries: int
    #: table -> rows that exist now (upserted) and keys that do not (deleted)
    upserts: dict[str, list[tuple[Any, ...]]]
    deletes: dict[str, list[Key]]
    #: when each drained change was recorded (Unix seconds)
    changed_at: list[float]
    #: (table, ord) of stored ranges with a digest that hold drained keys
    stale_ranges: tuple[tuple[str, int], ...] = ()


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


class _Cutter:
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


def range_shape(table: TableConfig) -> str:
    """Names the key and row encoding stored digests were computed with."""
    text = f"{','.join(table.primary_key)}|{sqlite_canonical(table)}"
    return f"{zlib.crc32(text.encode()):08x}:{len(text)}"


def _stored_key(table: TableConfig, key: Key | None) -> Any:
    """A key as `_sw_mirror_ranges.hi` holds it (as the outbox holds keys)."""
    if key is None:
        return None
    return key[0] if len(table.primary_key) == 1 else json.dumps(list(key))


def _merged(ranges: Iterable[KeyRange], size: int) -> list[KeyRange]:
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


def _shown(key: Key | None) -> Any:
    if key is None:
        return None
    return key[0] if len(key) == 1 else list(key)


# --- SQLite side ------------------------------------------------------------------------


def open_mirror_reader(config: Config) -> apsw.Connection:
    """A read-only connection with `sw_real`, the canonical text of a real."""
    conn = open_reader(config.database)
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


def _key_of(table: TableConfig, stored: Any) -> Key:
    """The key tuple of an outbox row's `k` (a json array for compound keys)."""
    if len(table.primary_key) == 1:
        return (stored,)
    return tuple(json.loads(stored))


def _rows_by_keys(conn: apsw.Connection, table: TableConfig,
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


def _sqlite_range_where(table: TableConfig, low: Key | None,
                        high: Key | None) -> tuple[str, list[Any]]:
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


# --- the session ------------------------------------------------------------------------


class MirrorSession:
    """One MySQL connection and one SQLite reader, used from a single thread."""

    def __init__(self, config: Config, *, redactor: Redactor | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_progress: Callable[[str, int, int | None], None] | None = None,
                 on_ranges: Callable[[SaveMirrorRanges], None] | None = None) -> None:
        """`on_ranges` stores SQLite's side of a reconciled table (the worker asks the
        Writer); without it nothing is stored, as for a read-only verify."""
        if config.mirror is None:
            raise MirrorError("the config has no mirror section")
        self.config = config
        self.mirror: MirrorConfig = config.mirror
        self.tables = [config.table(name) for name in self.mirror.tables]
        self.redactor = redactor or Redactor(config.secrets)
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.on_ranges = on_ranges
        self.conn: Any = None
        self.reader: apsw.Connection | None = None
        self.literals: Literals | None = None
        self.driver = driver_name()
        self.server_version = ""
        self.ranges_table = False
        #: Stored range bounds by table: (ords, highs of all but the last range).
        self._bounds: dict[str, tuple[list[int], list[Key]]] = {}
        #: Mirror tables not on the server (only when opened with `create=False`).
        self.missing: set[str] = set()

    @property
    def where(self) -> str:
        return self.mirror.dsn.where

    def error(self, exc: BaseException, what: str) -> MirrorError:
        return mysql_error(exc, where=f"mirror {self.where}: {what}", redactor=self.redactor)

    # --- connection ---------------------------------------------------------------------

    def open(self, *, create: bool = True) -> None:
        """Connect, and create (or with `create=False` only look for) the mirror tables.

        Raises `MirrorError`. Tables missing without `create` are taken as empty.
        """
        try:
            self.conn = connect(self.mirror.dsn, timeout_s=self.mirror.connect_timeout_s)
            self.server_version = str(self.conn.server_info)
        except Exception as exc:
            self.close()
            raise self.error(exc, "connect") from None
        self.literals = Literals(self.conn)
        try:
            self.ensure_tables(create=create)
        except Exception as exc:
            self.close()
            raise self.error(exc, "creating the mirror tables") from None
        self._bounds.clear()
        if self.reader is None:
            self.reader = open_mirror_reader(self.config)
            # A read-only verify may meet a database no engine of this version opened.
            self.ranges_table = self.reader.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?",
                (MIRROR_RANGES_TABLE,)).fetchone() is not None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection has nothing to close
                conn.close()
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()

    def _cursor(self) -> Any:
        return self.conn.cursor()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._cursor()
        try:
            cursor.execute(sql, tuple(params))
            return list(cursor.fetchall()) if cursor.with_rows else []
        finally:
            cursor.close()

    def ensure_tables(self, *, create: bool = True) -> None:
        self.missing = set()
        for table in self.tables:
            if create:
                self._query(create_table_sql(table, self.mirror))
            found = [r[0] for r in self._query(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (self.mirror.dsn.database, table.name))]
            want = expected_columns(table, self.mirror)
            if not found and not create:
                self.missing.add(table.name)
                continue
            if [c.lower() for c in found] != [c.lower() for c in want]:
                raise MirrorError(
                    f"mirror table {table.name} has columns ({', '.join(found)}) but the "
                    f"config needs ({', '.join(want)}); alter or drop it on the server",
                    table=table.name)
        self.conn.commit()

    # --- drain --------------------------------------------------------------------------

    def read_batch(self) -> DrainBatch | None:
        """The oldest outbox rows and their current rows, or None when nothing is pending."""
        assert self.reader is not None
        by_name = {t.name: t for t in self.tables}
        with snapshot(self.reader):
            pending = list(self.reader.execute(
                f"SELECT seq, tbl, k, at FROM {OUTBOX_TABLE} ORDER BY seq LIMIT ?",
                (self.mirror.batch_rows,)))
            if not pending:
                return None
            keys: dict[str, list[Key]] = {}
            for _, name, stored, _ in pending:
                table = by_name.get(name)
                if table is not None:  # a table no longer mirrored: nothing to send
                    keys.setdefault(name, []).append(_key_of(table, stored))
            upserts: dict[str, list[tuple[Any, ...]]] = {}
            deletes: dict[str, list[Key]] = {}
            stale: list[tuple[str, int]] = []
            for name, wanted in keys.items():
                table = by_name[name]
                rows = _rows_by_keys(self.reader, table, wanted)
                positions = [table.column_names.index(c) for c in table.primary_key]
                present = {tuple(row[i] for i in positions) for row in rows}
                upserts[name] = rows
                deletes[name] = [k for k in wanted if k not in present]
                stale.extend((name, i) for i in self._ranges_holding(table, wanted))
        return DrainBatch(upto_seq=pending[-1][0], entries=len(pending), upserts=upserts,
                          deletes=deletes, changed_at=[row[3] for row in pending],
                          stale_ranges=tuple(stale))

    def apply_batch(self, batch: DrainBatch) -> None:
        """Write one drain batch to the server in one transaction."""
        assert self.literals is not None
        cursor = None
        try:
            cursor = self._cursor()
            for table in self.tables:
                for sql in delete_statements(table, self.mirror, self.literals,
                                             batch.deletes.get(table.name, []),
                                             self.mirror.batch_rows):
                    cursor.execute(sql)
                for sql in upsert_statements(table, self.mirror, self.literals,
                                             batch.upserts.get(table.name, []),
                                             self.mirror.batch_rows):
                    cursor.execute(sql)
            self.conn.commit()
        except Exception as exc:
            self._rollback()
            raise self.error(exc, "drain") from None
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # gone: the server rolled back for us
            self.conn.rollback()

    # --- reconcile and verify -----------------------------------------------------------

    def reconcile(self, *, apply: bool = True) -> list[TableReport]:
        """Compare every mirrored table; with `apply`, make the mirror equal SQLite."""
        reports = []
        for table in self.tables:
            start = time.monotonic()
            try:
                # A fresh read view per table: an open transaction would keep showing
                # the server as the previous reconcile saw it (REPEATABLE READ).
                self.conn.commit()
                report = self._table(table, apply=apply)
                self.conn.commit()
            except (MirrorError, Stopped):
                self._rollback()
                raise
            except apsw.Error as exc:
                self._rollback()
                raise MirrorError(f"reading {table.name} from SQLite: {exc}",
                                  table=table.name) from None
            except Exception as exc:
                self._rollback()
                raise self.error(exc, f"reconciling {table.name}") from None
            report.seconds = time.monotonic() - start
            reports.append(report)
        return reports

    def _check_stop(self) -> None:
        if self.should_stop():
            raise Stopped()

    def has_outbox(self) -> bool:
        """Whether the database has an outbox yet (an older engine's may not)."""
        assert self.reader is not None
        return self.reader.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                                   (OUTBOX_TABLE,)).fetchone() is not None

    def _mirror_has_rows(self, table: TableConfig) -> bool:
        if table.name in self.missing:
            return False
        return bool(self._query(
            f"SELECT 1 FROM {mq(table.name)} WHERE {mq(self.mirror.scope_column)} = %s LIMIT 1",
            (self.mirror.scope,)))

    def _table(self, table: TableConfig, *, apply: bool) -> TableReport:
        assert self.reader is not None
        report = TableReport(table=table.name)
        with snapshot(self.reader):
            row = self.reader.execute(f"SELECT count(*) FROM {quote(table.name)}").fetchone()
            total = int(row[0]) if row is not None else 0
            report.sqlite_rows = total
            if not self._mirror_has_rows(table):
                ranges = self._copy_all(table, report, apply=apply)
            else:
                stored = self._stored_ranges(table)
                ranges = self._compare(table, report, stored, apply=apply)
                if stored is not None and sum(r.rows for r in ranges) != total:
                    # Rows changed without passing through the outbox: trust nothing
                    # stored and read the whole table.
                    log.warning("mirror: the stored ranges of %s do not add up to its %d rows; "
                                "reading the whole table", table.name, total)
                    report.ranges, report.mirror_rows = 0, 0
                    report.differing.clear()
                    ranges = self._compare(table, report, None, apply=apply)
            self._store(table, ranges)
        report.skipped = not report.differing
        return report

    def _store(self, table: TableConfig, ranges: list[KeyRange]) -> None:
        if self.on_ranges is None or not self.ranges_table:
            return
        self._bounds.pop(table.name, None)
        self.on_ranges(SaveMirrorRanges(
            table=table.name, shape=range_shape(table),
            ranges=tuple((_stored_key(table, r.high), r.rows, cast(int, r.digest))
                         for r in _merged(ranges, self.mirror.range_rows))))

    def _copy_all(self, table: TableConfig, report: TableReport, *,
                  apply: bool) -> list[KeyRange]:
        """Copy every row into an empty mirror table (with `apply`), reading SQLite on
        another thread while the server writes; returns SQLite's ranges."""
        assert self.reader is not None and self.literals is not None
        size, total = self.mirror.range_rows, report.sqlite_rows
        report.ranges = max(1, -(-total // size))
        if total:
            report.differing.append(RangeDiff(low=None, high=None, sqlite_rows=total,
                                              mirror_rows=0))
        report.sqlite_read = total
        if not apply or not total:
            read = []
            for r in self._read_ranges(table, None, None):
                r.chunk = None
                read.append(r)
            return read
        pk = table.primary_key
        width = len(pk)
        source = self.reader.execute(
            f"SELECT {column_list(pk)}, {sqlite_canonical(table)}, "
            f"{column_list(table.column_names)} FROM {quote(table.name)} "
            f"ORDER BY {column_list(pk)}")
        cutter = _Cutter(size, None, keep_rows=False)
        ranges: list[KeyRange] = []

        def rows() -> Iterator[tuple[Any, ...]]:
            crc = zlib.crc32
            for row in source:
                done = cutter.add(row[:width], crc(row[width].encode("utf-8", "surrogatepass")))
                if done is not None:
                    ranges.append(done)
                yield row[width + 1:]
            ranges.extend(cutter.finish(None))

        statements = upsert_statements(table, self.mirror, self.literals, rows(),
                                       self.mirror.batch_rows)
        per_commit = max(1, _COPY_COMMIT_ROWS // self.mirror.batch_rows)
        cursor = self._cursor()
        try:
            for i, sql in enumerate(_ahead(statements), start=1):
                cursor.execute(sql)
                if i % per_commit == 0:
                    self.conn.commit()
                    self._progress(table.name, min(total, i * self.mirror.batch_rows), total)
                    self._check_stop()
            self.conn.commit()
        finally:
            cursor.close()
        self._progress(table.name, total, total)
        report.copied = total
        return ranges

    def _progress(self, name: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(name, done, total)

    # --- SQLite's side of the ranges ----------------------------------------------------

    def _stored_ranges(self, table: TableConfig) -> list[KeyRange] | None:
        """The stored ranges, those with pending changes marked unknown; None when unusable."""
        assert self.reader is not None
        if not self.ranges_table:
            return None
        shape = range_shape(table)
        ranges: list[KeyRange] = []
        low: Key | None = None
        rows = list(self.reader.execute(
            f"SELECT hi, rows, digest, shape FROM {MIRROR_RANGES_TABLE} WHERE tbl = ? "
            "ORDER BY ord", (table.name,)))
        for i, (hi, count, digest, stored_shape) in enumerate(rows):
            high = None if hi is None else _key_of(table, hi)
            last = i == len(rows) - 1
            if (stored_shape != shape or (high is None) != last
                    or (low is not None and high is not None and not low < high)):
                return None
            ranges.append(KeyRange(low=low, high=high, rows=count, digest=digest))
            low = high
        if not ranges:
            return None
        highs = [cast(Key, r.high) for r in ranges[:-1]]
        for (stored,) in self.reader.execute(f"SELECT k FROM {OUTBOX_TABLE} WHERE tbl = ?",
                                             (table.name,)):
            ranges[bisect_left(highs, _key_of(table, stored))].digest = None
        return ranges

    def _ranges_holding(self, table: TableConfig, keys: Sequence[Key]) -> list[int]:
        """`ord` of the stored ranges that hold any of `keys`.

        The bounds are read once per stored set: only this session stores
        ranges, and clearing a digest leaves the bounds as they are.
        """
        assert self.reader is not None
        if not self.ranges_table:
            return []
        bounds = self._bounds.get(table.name)
        if bounds is None:
            rows = list(self.reader.execute(
                f"SELECT ord, hi FROM {MIRROR_RANGES_TABLE} WHERE tbl = ? ORDER BY ord",
                (table.name,)))
            if not rows or any(hi is None for _, hi in rows[:-1]):
                bounds = ([], [])  # none, or unusable: the next reconcile reads it whole
            else:
                bounds = ([o for o, _ in rows], [_key_of(table, hi) for _, hi in rows[:-1]])
            self._bounds[table.name] = bounds
        ords, highs = bounds
        if not ords:
            return []
        return [ords[i] for i in sorted({bisect_left(highs, key) for key in keys})]

    def _read_ranges(self, table: TableConfig, low: Key | None,
                     high: Key | None) -> Iterator[KeyRange]:
        """SQLite's rows above `low` up to `high`, as ranges of `range_rows` keys."""
        assert self.reader is not None
        pk = table.primary_key
        width = len(pk)
        where, params = _sqlite_range_where(table, low, high)
        cursor = self.reader.execute(
            f"SELECT {column_list(pk)}, {sqlite_canonical(table)} FROM {quote(table.name)} "
            f"{where} ORDER BY {column_list(pk)}", params)
        crc = zlib.crc32
        cutter = _Cutter(self.mirror.range_rows, low, keep_rows=True)
        for row in cursor:
            done = cutter.add(row[:width], crc(row[width].encode("utf-8", "surrogatepass")))
            if done is not None:
                yield done
        yield from cutter.finish(high)

    def _ranges(self, table: TableConfig, stored: list[KeyRange] | None) -> Iterator[KeyRange]:
        """The ranges to compare: stored ones still known as they are, the rest read."""
        if stored is None:
            yield from self._read_ranges(table, None, None)
            return
        for known in stored:
            if known.digest is not None:
                yield known
            else:
                yield from self._read_ranges(table, known.low, known.high)

    # --- comparing ----------------------------------------------------------------------

    def _range_where(self, table: TableConfig, low: Key | None,
                     high: Key | None) -> tuple[str, list[Any]]:
        where = f"{mq(self.mirror.scope_column)} = %s"
        params: list[Any] = [self.mirror.scope]
        if low is not None:
            where += " AND " + key_after(table.primary_key, mq)
            params += key_params(low)
        if high is not None:
            where += " AND " + key_upto(table.primary_key, mq)
            params += key_params(high)
        return where, params

    def _compare(self, table: TableConfig, report: TableReport, stored: list[KeyRange] | None,
                 *, apply: bool) -> list[KeyRange]:
        """Compare range by range (repairing with `apply`); returns SQLite's ranges."""
        out: list[KeyRange] = []
        done = 0
        for r in self._ranges(table, stored):
            self._check_stop()
            report.ranges += 1
            where, params = self._range_where(table, r.low, r.high)
            (count, digest_sum), = self._query(
                f"SELECT COUNT(*), COALESCE(SUM({mq(DIGEST_COLUMN)}), 0) FROM {mq(table.name)} "
                # The narrow (scope, key, digest) index, not the rows: measured 3x faster.
                f"FORCE INDEX ({mq(DIGEST_COLUMN)}) WHERE {where}", params)
            mirror = (int(count), int(digest_sum))
            report.mirror_rows += mirror[0]
            if r.chunk is None and mirror != (r.rows, r.digest):
                # A stored range the mirror disagrees with: read SQLite's rows of it.
                r.chunk = [pair for piece in self._read_ranges(table, r.low, r.high)
                           for pair in piece.chunk or ()]
                r.rows, r.digest = len(r.chunk), sum(d for _, d in r.chunk)
            if r.chunk is not None:
                report.sqlite_read += r.rows
            done += r.rows
            if mirror != (r.rows, r.digest):
                report.differing.append(RangeDiff(low=r.low, high=r.high, sqlite_rows=r.rows,
                                                  mirror_rows=mirror[0]))
                if apply:
                    copied, deleted = self._repair(table, r.chunk or [], where, params)
                    report.copied += copied
                    report.deleted += deleted
            self._progress(table.name, done, report.sqlite_rows)
            r.chunk = None
            out.append(r)
        return out

    def _mirror_digests(self, table: TableConfig, where: str,
                        params: Sequence[Any]) -> Iterator[tuple[Key, int]]:
        names = ", ".join(mq(c) for c in table.primary_key)
        cursor = self.conn.cursor(buffered=False)
        try:
            cursor.execute(f"SELECT {names}, {mq(DIGEST_COLUMN)} FROM {mq(table.name)} "
                           f"WHERE {where} ORDER BY {names}", tuple(params))
            width = len(table.primary_key)
            while True:
                rows = cursor.fetchmany(5000)
                if not rows:
                    break
                for row in rows:
                    key = tuple(bytes(v) if isinstance(v, bytearray) else v
                                for v in row[:width])
                    yield key, int(row[width])
        finally:
            cursor.close()

    def _repair(self, table: TableConfig, chunk: list[tuple[Key, int]], where: str,
                params: Sequence[Any]) -> tuple[int, int]:
        """Merge the range's two sorted (key, digest) streams; fix what differs."""
        assert self.reader is not None and self.literals is not None
        mirror = list(self._mirror_digests(table, where, params))
        orphans: list[Key] = []
        wanted: list[Key] = []
        i = j = 0
        while i < len(chunk) or j < len(mirror):
            if j >= len(mirror) or (i < len(chunk) and chunk[i][0] < mirror[j][0]):
                wanted.append(chunk[i][0])
                i += 1
            elif i >= len(chunk) or mirror[j][0] < chunk[i][0]:
                orphans.append(mirror[j][0])
                j += 1
            else:
                if chunk[i][1] != mirror[j][1]:
                    wanted.append(chunk[i][0])
                i += 1
                j += 1
        cursor = self._cursor()
        try:
            for sql in delete_statements(table, self.mirror, self.literals, orphans,
                                         self.mirror.batch_rows):
                cursor.execute(sql)
            rows = _rows_by_keys(self.reader, table, wanted)
            for sql in upsert_statements(table, self.mirror, self.literals, rows,
                                         self.mirror.batch_rows):
                cursor.execute(sql)
            self.conn.commit()
        finally:
            cursor.close()
        return len(rows), len(orphans)


def _ahead(items: Iterable[bytes], depth: int = 2) -> Iterator[bytes]:
    """Produce `items` on another thread, `depth` ahead, so building overlaps sending."""
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(done)
        except BaseException as exc:  # handed to the consumer
            out.put(exc)

    thread = threading.Thread(target=produce, name="sqlwarden-mirror-read", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


# --- the worker thread ------------------------------------------------------------------


def table_check(report: TableReport, shown: int = 20) -> TableCheck:
    return TableCheck(
        table=report.table, sqlite_rows=report.sqlite_rows, mirror_rows=report.mirror_rows,
        ranges=report.ranges, differing=len(report.differing), copied=report.copied,
        deleted=report.deleted, skipped=report.skipped, seconds=round(report.seconds, 3),
        sqlite_read=report.sqlite_read,
        ranges_shown=tuple((_shown(d.low), _shown(d.high), d.sqlite_rows, d.mirror_rows)
                           for d in report.differing[:shown]))


class MirrorWorker:
    """The thread that does the mirror's blocking I/O for the Mirror actor.

    It connects (backing off while the server is out of reach), runs one
    reconcile after every successful connect, then drains the outbox. The
    actor asks for reconciles and verifies through `request_reconcile` and
    `request_verify`; everything the worker learns goes back as messages
    (`tell`), and the outbox rows it drained are deleted by the Writer
    (`ask`, which blocks this thread only).
    """

    def __init__(self, config: Config, *, tell: Callable[[str, Message], None],
                 ask: Callable[[Message], Any], redactor: Redactor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert config.mirror is not None
        self.config = config
        self.mirror = config.mirror
        self._tell = tell
        self._ask = ask
        self._redactor = redactor
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pending = False
        self._running = False
        self._started = 0
        self._verifies: list[int] = []
        self._verify_ids = 0
        self._lags: deque[float] = deque(maxlen=5000)
        self._backoff = self.mirror.backoff_initial_s
        self._attempt = 0
        self._thread = threading.Thread(target=self._run, name="sqlwarden-mirror", daemon=True)
        self.session = MirrorSession(config, redactor=redactor,
                                     should_stop=self._stopping.is_set,
                                     on_progress=self._on_progress, on_ranges=self._ask)

    # --- called from the actor's thread --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def request_reconcile(self) -> int:
        """The number of the reconcile whose result the caller will get (single flight)."""
        with self._lock:
            if self._running and not self._pending:
                return self._started
            self._pending = True
        self._wake.set()
        return self._started + 1

    def request_verify(self) -> int:
        with self._lock:
            self._verify_ids += 1
            self._verifies.append(self._verify_ids)
            number = self._verify_ids
        self._wake.set()
        return number

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.session.conn is None:
                    try:
                        self.session.open()
                    except MirrorError as exc:
                        self._down(exc)
                        continue
                    self._backoff, self._attempt = self.mirror.backoff_initial_s, 0
                    self._tell(ACTOR, MirrorUp(driver=self.session.driver,
                                               server=self.session.server_version))
                    with self._lock:  # one reconcile per successful connect
                        self._pending = True
                try:
                    if not self._step():
                        self._wake.wait(self.mirror.poll_ms / 1000)
                        self._wake.clear()
                except (Stopped, EngineStopped):
                    raise
                except Exception as exc:
                    # Whatever went wrong, the worker lives on: classified, reported, retried.
                    self.session.close()
                    self._down(exc if isinstance(exc, MirrorError)
                               else self.session.error(exc, "mirror"))
        except (Stopped, EngineStopped):
            pass
        finally:
            self.session.close()

    def _down(self, exc: MirrorError) -> None:
        """Report the failure, then wait: the backoff when retryable, else until asked."""
        self._attempt += 1
        wait = self._backoff if exc.retryable else None
        if exc.retryable:
            self._backoff = min(self._backoff * 2, self.mirror.backoff_max_s)
        with self._lock:
            started = self._started
            verifies, self._verifies = self._verifies, []
        for number in verifies:
            self._tell(ACTOR, Reconciled(number=number, verify=True, error=str(exc)))
        self._tell(ACTOR, MirrorDown(error=str(exc), retryable=exc.retryable,
                                     attempt=self._attempt, retry_in_s=wait, started=started))
        # An ask for a reconcile wakes this early: it is worth a try now.
        self._wake.wait(wait)
        self._wake.clear()
        if self._stopping.is_set():
            raise Stopped()

    def _step(self) -> bool:
        """Run one reconcile, verify or drain batch; False when there was nothing to do."""
        with self._lock:
            reconcile = self._pending
            if reconcile:
                self._pending, self._running = False, True
                self._started += 1
                number = self._started
            verify = self._verifies.pop(0) if not reconcile and self._verifies else None
        if reconcile:
            try:
                self._reconcile(number, verify=False)
            finally:
                with self._lock:
                    self._running = False
            return True
        if verify is not None:
            # Changes still in the outbox are not drift: send what is pending first
            # (bounded, so a busy device still gets its answer).
            for _ in range(VERIFY_DRAIN_BATCHES):
                if not self._drain():
                    break
            self._reconcile(verify, verify=True)
            return True
        return self._drain()

    def _reconcile(self, number: int, *, verify: bool) -> None:
        self._tell(ACTOR, ReconcileBegun(number=number, verify=verify))
        start = self._clock()
        try:
            reports = self.session.reconcile(apply=not verify)
        except MirrorError as exc:
            self._tell(ACTOR, Reconciled(number=number, verify=verify, error=str(exc),
                                  seconds=self._clock() - start))
            raise
        self._tell(ACTOR, Reconciled(number=number, verify=verify,
                              tables=tuple(table_check(r) for r in reports),
                              seconds=round(self._clock() - start, 3)))

    def _drain(self) -> bool:
        try:
            batch = self.session.read_batch()
        except apsw.Error as exc:
            raise MirrorError(f"reading the outbox: {exc}") from None
        if batch is None:
            return False
        self.session.apply_batch(batch)
        now = time.time()
        self._lags.extend(max(0.0, (now - at) * 1000) for at in batch.changed_at)
        self._ask(OutboxDrained(upto_seq=batch.upto_seq, stale_ranges=batch.stale_ranges))
        lags = sorted(self._lags)
        self._tell(ACTOR, Drained(
            entries=batch.entries, upserts=sum(len(r) for r in batch.upserts.values()),
            deletes=sum(len(k) for k in batch.deletes.values()), upto_seq=batch.upto_seq,
            lag_p50_ms=round(_percentile(lags, 0.50), 1),
            lag_p99_ms=round(_percentile(lags, 0.99), 1), lag_max_ms=round(lags[-1], 1)))
        return True

    def _on_progress(self, table: str, done: int, total: int | None) -> None:
        ended = total is not None and done >= total
        self._tell("progress", ProgressEvent(scope="mirror", name=table, processed=done,
                                             total=total, state="done" if ended else "running",
                                             terminal=ended))


def _percentile(ordered: Sequence[float], share: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
