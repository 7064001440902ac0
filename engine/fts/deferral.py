"""Deferring FTS triggers around a bulk catch-up, and restoring them.

During a bulk catch-up every inserted row fires an FTS trigger, and every
commit flushes a small index segment that later has to be merged: indexing
the whole table once at the end is several times cheaper. This module holds
the SQL for that, as plain functions the Writer runs inside one transaction
each (the FtsController actor decides when):

- `defer` finds the FTS tables and their triggers (`indexes`), snapshots
  those triggers' DDL, drops them, and persists a `Deferral` record in
  `_sw_meta` with the source table's rowid high-water mark. For tables that
  can be caught up incrementally it also installs small capture triggers
  that note, per row at or below the mark, the values the index still holds
  for it (the first change wins), because an FTS5 'delete' needs the old
  text and the content row no longer has it.
- `restore` recreates the triggers from the snapshot and brings the index up
  to date, either by a full rebuild (then 'optimize', without which later
  trigger inserts are several times slower) or on just the rows changed since
  the deferral. Both replay the snapshot's own trigger bodies (through INSTEAD
  OF triggers on temporary views), which works for any trigger shape a
  database already has (rows skipped by WHEN, computed text) with no parsing
  of what they do.

Both `defer` and `restore` are one transaction with the record, so the record
and the triggers present never disagree, whatever point a crash hits.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass

import apsw

from sqlwarden.db.schema import FTS_DEFERRAL_KEY, META_TABLE
from sqlwarden.db.sql import column_list, quote
from sqlwarden.errors import FtsError
from sqlwarden.fts.indexes import (
    CAPTURE_PREFIX,
    Trigger,
    find_indexes,
    scalar,
    trigger_event,
)
from sqlwarden.views import FtsRestored, FtsTableView

#: FTS5's own default for its in-memory term buffer.
FTS5_DEFAULT_HASHSIZE = 1024 * 1024


# --- the persisted record ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferredTable:
    fts: str
    kind: str
    source: str
    #: The source's highest rowid when deferred (None: it was empty or has no rowid).
    hwm: int | None
    #: Capture triggers and the old-values table exist (incremental restore possible).
    capture: bool
    has_rowid: bool = True
    #: FTS5's 'rebuild' reproduces what the triggers do (see `FtsIndex.plain`).
    plain: bool = False
    #: (name, CREATE TRIGGER ...) as read from sqlite_master when deferred.
    triggers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferral:
    """What is deferred, since when, and which sources are catching up (by count)."""

    sources: tuple[tuple[str, int], ...]
    started_at: float
    tables: tuple[DeferredTable, ...]
    last_error: str | None = None
    attempts: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Deferral:
        raw = json.loads(text)
        tables = tuple(DeferredTable(**{**t, "triggers": tuple(map(tuple, t["triggers"]))})
                       for t in raw["tables"])
        return cls(sources=tuple((s, int(n)) for s, n in raw["sources"]),
                   started_at=float(raw["started_at"]), tables=tables,
                   last_error=raw.get("last_error"), attempts=int(raw.get("attempts", 0)))

    def covers(self, name: str) -> bool:
        """True when `name` is a deferred FTS table or the table one indexes."""
        lowered = name.lower()
        return any(lowered in (t.fts.lower(), t.source.lower()) for t in self.tables)


def read_deferral(conn: apsw.Connection) -> Deferral | None:
    """The persisted deferral record, or None when every FTS trigger is live."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (META_TABLE,)).fetchone()
    if exists is None:
        return None
    row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?",
                       (FTS_DEFERRAL_KEY,)).fetchone()
    if row is None:
        return None
    try:
        return Deferral.from_json(row[0])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FtsError(f"the FTS deferral record in {META_TABLE} (key {FTS_DEFERRAL_KEY!r}) "
                       f"cannot be read: {exc}") from None


def write_deferral(conn: apsw.Connection, deferral: Deferral | None) -> None:
    if deferral is None:
        conn.execute(f"DELETE FROM {META_TABLE} WHERE key = ?", (FTS_DEFERRAL_KEY,))
        return
    conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) "
                 "DO UPDATE SET value = excluded.value", (FTS_DEFERRAL_KEY, deferral.to_json()))


# --- deferring --------------------------------------------------------------------------


def defer(conn: apsw.Connection, sources: tuple[tuple[str, int], ...],
          started_at: float, *, content: tuple[str, ...] = ()) -> Deferral | None:
    """Drop the triggers of every deferrable FTS table that indexes one of the `content`
    tables (all of them when empty) and persist the record (call in a transaction).

    With a record already there, the tables it lacks join it (its start time stays;
    `sources` replaces its sources). Returns None, changing nothing, when there is
    nothing more to defer."""
    existing = read_deferral(conn)
    held = {t.fts.lower() for t in existing.tables} if existing is not None else set()
    wanted = {name.lower() for name in content}
    tables = []
    for index in find_indexes(conn):
        if index.problem is not None or index.source is None or index.name.lower() in held:
            continue
        if wanted and index.source.lower() not in wanted:
            continue
        hwm = None
        if index.has_rowid:
            hwm = scalar(conn, f"SELECT max(rowid) FROM {quote(index.source)}")
        capture = index.incremental and hwm is not None
        for trigger in index.triggers:
            conn.execute(f"DROP TRIGGER {quote(trigger.name)}")
        if capture:
            assert hwm is not None
            _install_capture(conn, index.name, index.source, hwm)
        tables.append(DeferredTable(
            fts=index.name, kind=index.kind, source=index.source, hwm=hwm, capture=capture,
            has_rowid=index.has_rowid, plain=index.plain,
            triggers=tuple((t.name, t.sql) for t in index.triggers)))
    if not tables:
        return None
    if existing is not None:
        deferral = dataclasses.replace(existing, sources=sources,
                                       tables=(*existing.tables, *tables))
    else:
        deferral = Deferral(sources=sources, started_at=started_at, tables=tuple(tables))
    write_deferral(conn, deferral)
    return deferral


def _names(fts: str) -> dict[str, str]:
    base = f"{CAPTURE_PREFIX}{fts}"
    return {"prev": f"{base}_prev", "insert": f"{base}_ci", "delete": f"{base}_cd",
            "update": f"{base}_cu"}


def _source_columns(conn: apsw.Connection, source: str) -> list[str]:
    # Generated columns too (hidden 2 and 3): a trigger body may read them.
    return [name for name, in conn.execute(
        "SELECT name FROM pragma_table_xinfo(?) WHERE hidden IN (0, 2, 3) ORDER BY cid",
        (source,))]


def _install_capture(conn: apsw.Connection, fts: str, source: str, hwm: int) -> None:
    """Note, once per rowid at or below `hwm`, the values the index holds for it."""
    names = _names(fts)
    cols = _source_columns(conn, source)
    prev, src = quote(names["prev"]), quote(source)
    conn.execute(f"CREATE TABLE {prev} (_sw_rowid INTEGER PRIMARY KEY, "
                 f"_sw_indexed INTEGER NOT NULL, {column_list(cols)})")
    old = ", ".join(f"old.{quote(c)}" for c in cols)
    # No conflict clause: an outer INSERT OR REPLACE would override it and let
    # a later change overwrite the values the index holds.
    keep_old = (f"INSERT INTO {prev} SELECT old.rowid, 1, {old} WHERE old.rowid <= {hwm} "
                f"AND NOT EXISTS (SELECT 1 FROM {prev} WHERE _sw_rowid = old.rowid);")
    note_new = (f"INSERT INTO {prev} (_sw_rowid, _sw_indexed) SELECT new.rowid, 0 "
                f"WHERE new.rowid <= {hwm} "
                f"AND NOT EXISTS (SELECT 1 FROM {prev} WHERE _sw_rowid = new.rowid);")
    # WHEN keeps the bulk of a catch-up (new rows above the mark) from running them.
    conn.execute(f"CREATE TRIGGER {quote(names['delete'])} AFTER DELETE ON {src} "
                 f"WHEN old.rowid <= {hwm} BEGIN {keep_old} END")
    conn.execute(f"CREATE TRIGGER {quote(names['update'])} AFTER UPDATE ON {src} "
                 f"WHEN old.rowid <= {hwm} OR new.rowid <= {hwm} BEGIN {keep_old} {note_new} END")
    # A row inserted at or below the mark (an explicit id) was never indexed.
    conn.execute(f"CREATE TRIGGER {quote(names['insert'])} AFTER INSERT ON {src} "
                 f"WHEN new.rowid <= {hwm} BEGIN {note_new} END")


def _drop_capture(conn: apsw.Connection, fts: str) -> None:
    names = _names(fts)
    for event in ("insert", "delete", "update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {quote(names[event])}")
    conn.execute(f"DROP TABLE IF EXISTS {quote(names['prev'])}")


# --- restoring --------------------------------------------------------------------------


def restore(conn: apsw.Connection, deferral: Deferral, *, rebuild_share: float,
            buffer_bytes: int = 16 * FTS5_DEFAULT_HASHSIZE, only: tuple[str, ...] = (),
            sources: tuple[tuple[str, int], ...] | None = None
            ) -> tuple[tuple[FtsRestored, ...], Deferral | None]:
    """Recreate the snapshot's triggers, bring each index up to date and clear the
    record (call in a transaction; on an error nothing has changed once it rolls back).

    `only` names the FTS tables to restore (all when empty); the others stay deferred
    in the record, with `sources` as its sources when given. Returns what was restored
    and the record left (None when nothing stays deferred)."""
    names = {name.lower() for name in only}
    out, kept = [], []
    for table in deferral.tables:
        if names and table.fts.lower() not in names:
            kept.append(table)
            continue
        out.append(_restore_table(conn, table, rebuild_share, buffer_bytes))
    left = None
    if kept:
        left = dataclasses.replace(deferral, tables=tuple(kept),
                                   sources=deferral.sources if sources is None else sources)
    write_deferral(conn, left)
    return tuple(out), left


def _restore_table(conn: apsw.Connection, table: DeferredTable, rebuild_share: float,
                   buffer_bytes: int) -> FtsRestored:
    src = quote(table.source)
    total = scalar(conn, f"SELECT count(*) FROM {src}")
    names = _names(table.fts)
    if table.capture:
        changed = scalar(conn, f"SELECT (SELECT count(*) FROM {src} WHERE rowid > ?) + "
                                f"(SELECT count(*) FROM {quote(names['prev'])})", table.hwm)
    else:
        changed = total
    incremental = table.capture and changed <= rebuild_share * total
    triggers = [_trigger(table, name, sql) for name, sql in table.triggers]
    previous = _set_buffer(conn, table.fts, buffer_bytes)
    if incremental:
        _catch_up(conn, table, triggers)
    else:
        _rebuild(conn, table, triggers)
    _set_buffer(conn, table.fts, previous)
    _drop_capture(conn, table.fts)
    for _, sql in table.triggers:
        conn.execute(sql)
    _check_compiles(conn, table.source, {t.event for t in triggers})
    return FtsRestored(fts=table.fts, mode="incremental" if incremental else "rebuild",
                         changed_rows=changed, table_rows=total)


def _check_compiles(conn: apsw.Connection, source: str, events: set[str]) -> None:
    """Prepare a statement that fires each recreated trigger.

    SQLite resolves the column names in a trigger's body only when a statement
    that fires it is prepared, so a snapshot that no longer fits its table (a
    column renamed since, say) would be recreated without complaint and then
    break every later write. EXPLAIN compiles the triggers without running them.
    """
    src = quote(source)
    if "insert" in events:
        conn.execute(f"EXPLAIN INSERT INTO {src} DEFAULT VALUES").fetchall()
    if "delete" in events:
        conn.execute(f"EXPLAIN DELETE FROM {src}").fetchall()
    if "update" in events:
        cols = [name for name, in conn.execute(
            "SELECT name FROM pragma_table_info(?)", (source,))]
        assignments = ", ".join(f"{quote(c)} = {quote(c)}" for c in cols)
        conn.execute(f"EXPLAIN UPDATE {src} SET {assignments}").fetchall()


def _trigger(table: DeferredTable, name: str, sql: str) -> Trigger:
    if not trigger_event(sql):
        raise FtsError(f"the saved definition of trigger {name} is not a CREATE TRIGGER "
                       "statement")
    return Trigger(name=name, table=table.source, event=trigger_event(sql), sql=sql)


def _catch_up(conn: apsw.Connection, table: DeferredTable, triggers: list[Trigger]) -> None:
    """Take out what the index holds for changed rows, then index their current text."""
    names = _names(table.fts)
    prev = quote(names["prev"])
    # The columns captured when deferred: one added since is not in the old values.
    cols = column_list([name for name, in conn.execute(
        "SELECT name FROM pragma_table_info(?) WHERE name NOT IN ('_sw_rowid', '_sw_indexed') "
        "ORDER BY cid", (names["prev"],))])
    old_view = f"SELECT _sw_rowid AS rowid, {cols} FROM main.{prev} WHERE _sw_indexed"
    _replay(conn, [t for t in triggers if t.event == "delete"], "DELETE", old_view)
    new_view = (f"SELECT rowid AS rowid, * FROM main.{quote(table.source)} "
                f"WHERE rowid > {int(table.hwm or 0)} OR rowid IN (SELECT _sw_rowid FROM "
                f"main.{prev})")
    _replay(conn, [t for t in triggers if t.event == "insert"], "INSERT", new_view)


def _rebuild(conn: apsw.Connection, table: DeferredTable, triggers: list[Trigger]) -> None:
    fts = quote(table.fts)
    if table.plain:
        # Measured here: 15% faster than replaying the trigger for every row.
        conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('rebuild')")
    else:
        # Empty the index, then index every source row through the insert
        # triggers' own bodies. FTS5's 'rebuild' would index every content row
        # as it is, which is not what triggers that skip rows (WHEN) or compute
        # the text would do; for a table holding its own text it would re-read
        # the stale copy.
        if table.kind == "own":
            conn.execute(f"DELETE FROM {fts}")
        else:
            conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('delete-all')")
        rowid = "rowid AS rowid, " if table.has_rowid else ""
        view = f"SELECT {rowid}* FROM main.{quote(table.source)}"
        _replay(conn, [t for t in triggers if t.event == "insert"], "INSERT", view)
    # Merge the segments into one: trigger inserts after a rebuild are much slower without.
    conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('optimize')")


def _replay(conn: apsw.Connection, triggers: list[Trigger], event: str, view_sql: str) -> None:
    """Run each trigger's own body once per row of `view_sql` (as `new` or `old`)."""
    if not triggers:
        return
    view = quote(f"{CAPTURE_PREFIX}rows")
    conn.execute(f"CREATE TEMP VIEW {view} AS {view_sql}")
    try:
        for trigger in triggers:
            replay = quote(f"{CAPTURE_PREFIX}replay")
            conn.execute(f"CREATE TEMP TRIGGER {replay} INSTEAD OF {event} ON {view} "
                         f"{trigger.body}")
            try:
                if event == "INSERT":
                    conn.execute(f"INSERT INTO temp.{view} SELECT * FROM temp.{view}")
                else:
                    conn.execute(f"DELETE FROM temp.{view}")
            finally:
                conn.execute(f"DROP TRIGGER temp.{replay}")
    finally:
        conn.execute(f"DROP VIEW temp.{view}")


def _set_buffer(conn: apsw.Connection, fts: str, size: int) -> int:
    """Set FTS5's term buffer ('hashsize'); returns the previous size."""
    config = quote(f"{fts}_config")
    try:
        row = conn.execute(f"SELECT v FROM {config} WHERE k = 'hashsize'").fetchone()
        conn.execute(f"INSERT INTO {quote(fts)} ({quote(fts)}, rank) VALUES ('hashsize', ?)",
                     (size,))
    except apsw.SQLError:
        return size  # an SQLite without the option: leave it as it is
    return int(row[0]) if row is not None else FTS5_DEFAULT_HASHSIZE


# --- status -----------------------------------------------------------------------------


def table_states(conn: apsw.Connection) -> tuple[tuple[FtsTableView, ...], Deferral | None]:
    """Every FTS table with the triggers present now, and the deferral record."""
    deferral = read_deferral(conn)
    deferred = {t.fts.lower(): t for t in deferral.tables} if deferral else {}
    out = []
    for index in find_indexes(conn):
        held = deferred.get(index.name.lower())
        out.append(FtsTableView(
            name=index.name, kind=index.kind,
            source=index.source or (held.source if held else None),
            triggers=tuple(t.name for t in index.triggers),
            problem=None if held else index.problem, deferred=held is not None,
            saved_triggers=tuple(n for n, _ in held.triggers) if held else (),
            hwm=held.hwm if held else None))
    return tuple(out), deferral
