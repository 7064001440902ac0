"""FTS5 tables, the triggers that keep them in step, and deferring those triggers.

During a bulk catch-up every inserted row fires an FTS trigger, and every
commit flushes a small index segment that later has to be merged: indexing
the whole table once at the end is several times cheaper. This module holds
the SQL for that, as plain functions the Writer runs inside one transaction
each (the FtsController actor decides when):

- `find_indexes` reads `sqlite_master`: every FTS5 table, what kind it is
  (external content, contentless, or holding its own copy of the text), and
  the triggers that maintain it, whoever created them.
- `defer` snapshots those triggers' DDL, drops them, and persists a
  `Deferral` record in `_sw_meta` with the source table's rowid high-water
  mark. For tables that can be caught up incrementally it also installs
  small capture triggers that note, per row at or below the mark, the values
  the index still holds for it (the first change wins), because an FTS5
  'delete' needs the old text and the content row no longer has it.
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

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import apsw

from sqlwarden.db.schema import FTS_DEFERRAL_KEY, META_TABLE
from sqlwarden.db.sql import column_list, quote
from sqlwarden.errors import FtsError
from sqlwarden.views import FtsRestored, FtsTableView

#: Objects the controller creates while a table is deferred start with this.
CAPTURE_PREFIX = "_sw_fts_"
#: FTS5's own default for its in-memory term buffer.
FTS5_DEFAULT_HASHSIZE = 1024 * 1024

_ID = r'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[A-Za-z_][\w$]*)'
_TRIGGER_HEAD = re.compile(
    rf"\s*CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:{_ID}\s*\.\s*)?{_ID}\s+(?:(?:BEFORE|AFTER|INSTEAD\s+OF)\s+)?"
    rf"(?P<event>DELETE|INSERT|UPDATE(?:\s+OF\s+{_ID}(?:\s*,\s*{_ID})*)?)\s+"
    rf"ON\s+(?:{_ID}\s*\.\s*)?{_ID}\s*", re.IGNORECASE)
# Tokens of a trigger body: string literals (skipped), identifiers, anything else.
_TOKENS = re.compile(rf"'(?:[^']|'')*'|(?P<id>{_ID})|\S", re.IGNORECASE)
_WRITE_VERBS = {"insert", "replace", "delete", "update"}


# --- what a database has ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    name: str
    table: str
    event: str  # insert, delete or update
    sql: str

    @property
    def body(self) -> str:
        """Everything after `ON <table>` (comments removed): FOR EACH ROW, WHEN and the
        BEGIN..END block. Empty when the header could not be read."""
        text = strip_comments(self.sql)
        match = _TRIGGER_HEAD.match(text)
        return text[match.end():] if match else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsIndex:
    """One FTS5 table and the triggers that maintain it."""

    name: str
    #: `external` (content=), `contentless` (content='') or `own` (it stores the text).
    kind: str
    source: str | None
    triggers: tuple[Trigger, ...]
    #: Why its triggers cannot be deferred, if they cannot.
    problem: str | None = None
    #: The source table has a rowid, so changed rows can be found by rowid.
    has_rowid: bool = True
    #: External content whose one insert trigger copies the columns as they are, so
    #: FTS5's own 'rebuild' gives exactly what the triggers would.
    plain: bool = False

    @property
    def incremental(self) -> bool:
        """Changed rows can be re-indexed alone: there are insert and delete triggers."""
        events = {t.event for t in self.triggers}
        return self.has_rowid and {"insert", "delete"} <= events


def find_indexes(conn: apsw.Connection) -> tuple[FtsIndex, ...]:
    """Every FTS5 table in the main database, with its maintaining triggers."""
    fts_tables = [(name, sql) for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name")
        if _module(sql) == "fts5"]
    # Creation order (rowid): SQLite fires the newest trigger first, so the
    # snapshot must recreate them in the order they were made.
    triggers = [Trigger(name=name, table=tbl, event=_event(sql), sql=sql)
                for name, tbl, sql in conn.execute(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
                    "ORDER BY rowid")
                if not name.lower().startswith(CAPTURE_PREFIX)]
    return tuple(_index(conn, name, sql, triggers) for name, sql in fts_tables)


def _index(conn: apsw.Connection, name: str, sql: str, triggers: list[Trigger]) -> FtsIndex:
    options = _fts_options(sql)
    content = options.get("content")
    kind = "own" if content is None else "contentless" if content == "" else "external"
    mine: list[Trigger] = []
    problem = None
    for trigger in triggers:
        if not trigger.event:
            # A header this module cannot read: never leave it live beside a
            # deferral, nor drop what it cannot recreate faithfully.
            if name.lower() in _written_tables(strip_comments(trigger.sql)) and problem is None:
                problem = f"trigger {trigger.name} could not be read"
            continue
        written = _written_tables(trigger.body)
        if name.lower() not in written:
            continue
        mine.append(trigger)
        others = written - {name.lower()}
        if others and problem is None:
            problem = (f"trigger {trigger.name} also writes to {', '.join(sorted(others))}; "
                       "dropping it would lose more than index updates")
    sources = sorted({t.table for t in mine})
    source = sources[0] if len(sources) == 1 else None
    if problem is None:
        if not mine:
            problem = "no triggers maintain it"
        elif len(sources) > 1:
            problem = f"it is maintained from several tables ({', '.join(sources)})"
        elif not any(t.event == "insert" for t in mine):
            problem = "no insert trigger maintains it, so it could not be rebuilt"
    has_rowid = True
    if source is not None:
        row = conn.execute("SELECT type, wr FROM pragma_table_list WHERE schema = 'main' "
                           "AND name = ?", (source,)).fetchone()
        if row is None or row[0] != "table":
            problem = problem or f"its triggers are on {source}, which is not an ordinary table"
        else:
            has_rowid = not row[1]
    inserts = [t for t in mine if t.event == "insert"]
    plain = (kind == "external" and source is not None and content is not None
             and content.lower() == source.lower() and len(inserts) == 1
             and _copies_columns(inserts[0].body, name, options.get("content_rowid", "rowid")))
    return FtsIndex(name=name, kind=kind, source=source, triggers=tuple(mine), problem=problem,
                    has_rowid=has_rowid, plain=plain)


_PLAIN_INSERT = re.compile(
    rf"\s*(?:FOR\s+EACH\s+ROW\s+)?BEGIN\s+INSERT\s+INTO\s+(?:{_ID}\s*\.\s*)?(?P<fts>{_ID})"
    rf"\s*\((?P<cols>[^()]*)\)\s*VALUES\s*\((?P<vals>[^()]*)\)\s*;\s*END\s*$",
    re.IGNORECASE)


def _copies_columns(body: str, fts: str, content_rowid: str) -> bool:
    """True for `BEGIN INSERT INTO fts (rowid, a, b) VALUES (new.<id>, new.a, new.b); END`
    (no WHEN, nothing computed): the shape whose index FTS5's 'rebuild' reproduces."""
    match = _PLAIN_INSERT.match(body)
    if match is None or _unquote(match["fts"]).lower() != fts.lower():
        return False
    cols = [_unquote(c.strip()).lower() for c in match["cols"].split(",")]
    vals = [v.strip() for v in match["vals"].split(",")]
    if len(cols) != len(vals):
        return False
    for col, val in zip(cols, vals, strict=True):
        prefix, dot, name = val.partition(".")
        if prefix.strip().lower() != "new" or not dot:
            return False
        want = content_rowid.lower() if col == "rowid" else col
        if _unquote(name.strip()).lower() != want:
            return False
    return "rowid" in cols


def _module(sql: str) -> str | None:
    match = re.search(r"\bUSING\s+(\w+)", sql, re.IGNORECASE)
    return match.group(1).lower() if match else None


def _fts_options(sql: str) -> dict[str, str]:
    """The `key=value` arguments of `CREATE VIRTUAL TABLE ... USING fts5(...)`."""
    using = re.search(r"\bUSING\s+\w+\s*\(", sql, re.IGNORECASE)
    if using is None:
        return {}
    args, depth, quote_char, current = [], 0, "", ""
    for ch in sql[using.end():]:
        if quote_char:
            current += ch
            if ch == quote_char:
                quote_char = ""
        elif ch in "'\"`[":
            quote_char = "]" if ch == "[" else ch
            current += ch
        elif ch == "(":
            depth += 1
            current += ch
        elif ch == ")" and depth == 0:
            break
        elif ch == ")":
            depth -= 1
            current += ch
        elif ch == "," and depth == 0:
            args.append(current)
            current = ""
        else:
            current += ch
    args.append(current)
    options = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq:
            options[key.strip().lower()] = _unquote(value.strip())
    return options


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in "'\"`[":
        inner = text[1:-1]
        return inner.replace(text[0] * 2, text[0]) if text[0] != "[" else inner
    return text


def _event(sql: str) -> str:
    match = _TRIGGER_HEAD.match(strip_comments(sql))
    return match.group("event").split()[0].lower() if match else ""


_COMMENTS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])"""
                       r"|--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)


def strip_comments(sql: str) -> str:
    """`sql` with its comments replaced by a space; literals and quoted names kept."""
    return _COMMENTS.sub(lambda m: m.group(1) or " ", sql)


def _written_tables(body: str) -> set[str]:
    """Tables a trigger body inserts into, deletes from or updates."""
    # (lower-cased identifier, or "" for a literal or punctuation, raw text)
    tokens = [(_unquote(m.group("id")).lower() if m.group("id") else "", m.group(0))
              for m in _TOKENS.finditer(body)]
    out = set()
    for i, (word, _) in enumerate(tokens):
        if word not in _WRITE_VERBS:
            continue
        j = i + 1
        # INSERT OR IGNORE INTO t / DELETE FROM t / UPDATE OR ABORT t
        while j < len(tokens) and tokens[j][0] in ("or", "rollback", "abort", "fail", "ignore",
                                                   "replace", "into", "from"):
            j += 1
        if j + 2 < len(tokens) and tokens[j + 1][1] == "." and tokens[j + 2][0]:
            j += 2  # schema-qualified
        if j < len(tokens) and tokens[j][0]:
            out.add(tokens[j][0])
    return out


def _scalar(conn: apsw.Connection, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row is not None else None


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
          started_at: float) -> Deferral | None:
    """Drop every deferrable FTS table's triggers and persist the record (call in a
    transaction). Returns None, changing nothing, when there is nothing to defer."""
    if read_deferral(conn) is not None:
        raise FtsError("FTS triggers are already deferred")
    tables = []
    for index in find_indexes(conn):
        if index.problem is not None or index.source is None:
            continue
        hwm = None
        if index.has_rowid:
            hwm = _scalar(conn, f"SELECT max(rowid) FROM {quote(index.source)}")
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
            buffer_bytes: int = 16 * FTS5_DEFAULT_HASHSIZE) -> tuple[FtsRestored, ...]:
    """Recreate the snapshot's triggers, bring each index up to date and clear the
    record (call in a transaction; on an error nothing has changed once it rolls back)."""
    out = []
    for table in deferral.tables:
        out.append(_restore_table(conn, table, rebuild_share, buffer_bytes))
    write_deferral(conn, None)
    return tuple(out)


def _restore_table(conn: apsw.Connection, table: DeferredTable, rebuild_share: float,
                   buffer_bytes: int) -> FtsRestored:
    src = quote(table.source)
    total = _scalar(conn, f"SELECT count(*) FROM {src}")
    names = _names(table.fts)
    if table.capture:
        changed = _scalar(conn, f"SELECT (SELECT count(*) FROM {src} WHERE rowid > ?) + "
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
    if not _event(sql):
        raise FtsError(f"the saved definition of trigger {name} is not a CREATE TRIGGER "
                       "statement")
    return Trigger(name=name, table=table.source, event=_event(sql), sql=sql)


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
