"""Declared tables, indexes and FTS tables, created or checked on every start.

`apply_schema` compares the database with the config inside one write
transaction. What can be applied safely is applied: missing tables, nullable
columns, and derived objects (indexes, FTS tables and their triggers), which
are rebuilt from the data when their definition changed. A change that could
lose or reinterpret data (a changed column type, a dropped column, a new
NOT NULL column without a default) raises `SchemaError` before anything is
changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import apsw

from sqlwarden.config import ColumnConfig, Config, FtsConfig, TableConfig
from sqlwarden.db.connect import transaction
from sqlwarden.db.faults import wait_reason
from sqlwarden.db.sql import column_list, literal, quote
from sqlwarden.errors import SchemaError
from sqlwarden.fts.adopt import plan_existing

log = logging.getLogger(__name__)

#: Version of the engine's own tables (`_sw_*`); stored in `_sw_meta`.
ENGINE_SCHEMA_VERSION = 5
META_TABLE = "_sw_meta"
_META_DDL = (f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
             "(key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT")
#: `_sw_meta` key of the FTS deferral record (see `engine.fts`).
FTS_DEFERRAL_KEY = "fts_deferral"
TASKS_TABLE = "_sw_tasks"
TASK_STATUSES = ("pending", "running", "paused", "done", "failed", "cancelled")
#: One row per task version (`name@version`). `checkpoint` is the last key a
#: committed chunk covered (NULL: none yet); `bound` the key snapshot past
#: which the task does not go. Times are Unix seconds.
_TASKS_DDL = f"""CREATE TABLE IF NOT EXISTS {TASKS_TABLE} (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    change TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(map(literal, TASK_STATUSES))})),
    rows_processed INTEGER NOT NULL DEFAULT 0,
    rows_total INTEGER,
    checkpoint ANY,
    bound ANY,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    started_at REAL,
    ended_at REAL,
    last_update_at REAL,
    rate_rows_s REAL,
    eta_s REAL,
    waiting TEXT,
    error TEXT,
    PRIMARY KEY (name, version)
) STRICT"""


SYNC_RUNS_TABLE = "_sw_sync_runs"
SYNC_FILES_TABLE = "_sw_sync_files"
REJECTS_TABLE = "_sw_rejects"
SYNC_MODES = ("full", "incremental")
SYNC_STATUSES = ("running", "ok", "failed", "stopped")
#: One row per catch-up run of a source. `engine_run` is the run id of the
#: engine that started it (a row left `running` by another one is stale);
#: `batches` counts the write transactions the run committed, and each batch
#: names the count it expects, so none is applied twice or after a gap.
_SYNC_DDL = (f"""CREATE TABLE IF NOT EXISTS {SYNC_RUNS_TABLE} (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ({", ".join(map(literal, SYNC_MODES))})),
    status TEXT NOT NULL CHECK (status IN ({", ".join(map(literal, SYNC_STATUSES))})),
    reason TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    engine_run TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    rows_written INTEGER NOT NULL DEFAULT 0,
    rejects INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    cursor TEXT,
    note TEXT,
    error TEXT
) STRICT""",
             f"CREATE INDEX IF NOT EXISTS {SYNC_RUNS_TABLE}_source ON {SYNC_RUNS_TABLE} "
             "(source, id)",
             # How far each ndjson file is read: `position` is the byte after the
             # last line whose rows are committed; `done` once it was read to its end.
             f"""CREATE TABLE IF NOT EXISTS {SYNC_FILES_TABLE} (
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    position INTEGER NOT NULL,
    size INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, file)
) STRICT""",
             # `record` says which record a reject is from run to run (its position, or
             # for an API its key; see `protocol.Reject.record`), `cursor` its `updated`
             # value. Both came after the table: `_upgrade_rejects` adds them to an
             # older database, where earlier rejects keep NULL in both.
             f"""CREATE TABLE IF NOT EXISTS {REJECTS_TABLE} (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    run INTEGER,
    position TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    at REAL NOT NULL,
    record TEXT,
    cursor ANY
) STRICT""",
             f"CREATE INDEX IF NOT EXISTS {REJECTS_TABLE}_source ON {REJECTS_TABLE} (source, id)")
#: Columns of `_sw_rejects` an older database lacks, with their DDL.
_REJECTS_ADDED = (("record", "record TEXT"), ("cursor", "cursor ANY"))
#: A record met again with the same raw text is the same reject: stored once. Rows
#: from before `record` existed hold NULL there, which never conflicts.
_REJECTS_ONCE_DDL = (f"CREATE UNIQUE INDEX IF NOT EXISTS {REJECTS_TABLE}_record ON "
                     f"{REJECTS_TABLE} (source, record, raw)")


OUTBOX_TABLE = "_sw_outbox"
#: Pending mirror changes: one row per (table, key), written by triggers in the
#: transaction of the change. `k` is the key value, or a JSON array for a
#: compound key. A key changed again is deleted and inserted anew, so its
#: `seq` (never reused: AUTOINCREMENT) is always past any drain that read it.
_OUTBOX_DDL = (f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    k ANY NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at REAL NOT NULL
) STRICT""", f"CREATE UNIQUE INDEX IF NOT EXISTS {OUTBOX_TABLE}_key ON {OUTBOX_TABLE} (tbl, k)")
OUTBOX_TRIGGER_PREFIX = "_sw_outbox_"
#: Now in Unix seconds to the millisecond, in SQL every SQLite from 3.37 runs:
#: other programs on the device (Python's `sqlite3`, the shell, sqlite-utils)
#: fire the outbox triggers too. The same value `unixepoch('subsec')` gives,
#: which is NULL before SQLite 3.42.
OUTBOX_NOW_SQL = "round((julianday('now') - 2440587.5) * 86400.0, 3)"
#: What earlier engines wrote in the triggers instead; such a trigger recorded
#: every change it saw, so replacing it leaves the mirror's digests valid.
_LEGACY_OUTBOX_NOW_SQL = "unixepoch('subsec')"

MIRROR_RANGES_TABLE = "_sw_mirror_ranges"
#: SQLite's side of the last reconcile, so the next one need not read every
#: row again: a mirrored table's keys cut into consecutive ranges, each with
#: its row count and sum of row digests. Range `ord` holds the keys above
#: range `ord - 1`'s `hi` up to its own `hi` (the key, or a JSON array for a
#: compound key); the last range's `hi` is NULL, open above. `shape` names
#: the row encoding the digests were computed with. A drained change sets its
#: range's `digest` to NULL in the transaction that deletes it from the
#: outbox, so a range with a digest and no pending change is unchanged.
_MIRROR_RANGES_DDL = f"""CREATE TABLE IF NOT EXISTS {MIRROR_RANGES_TABLE} (
    tbl TEXT NOT NULL,
    ord INTEGER NOT NULL,
    hi ANY,
    rows INTEGER NOT NULL,
    digest INTEGER,
    shape TEXT NOT NULL,
    PRIMARY KEY (tbl, ord)
) STRICT"""

MIRROR_QUARANTINE_TABLE = "_sw_mirror_quarantine"
#: Rows the mirror could not send (the server refused them, or a value has no
#: MySQL form): table, key (as `_sw_outbox.k` holds it), why and when (Unix
#: seconds). A quarantined key is kept off the mirror and out of reconcile
#: checksums on both sides; the next change of its row, or a retry asked for,
#: sends it again and removes it from here once it is on the server.
_MIRROR_QUARANTINE_DDL = f"""CREATE TABLE IF NOT EXISTS {MIRROR_QUARANTINE_TABLE} (
    tbl TEXT NOT NULL,
    k ANY NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (tbl, k)
) STRICT"""


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What `apply_schema` changed, one line per action."""

    actions: tuple[str, ...]


# --- DDL --------------------------------------------------------------------------------


def declared_type(column: ColumnConfig, table: TableConfig) -> str:
    """The type written in CREATE TABLE (`ANY` exists only in STRICT tables)."""
    if column.type == "any" and not table.strict:
        return ""
    return column.storage_type


def column_ddl(column: ColumnConfig, table: TableConfig) -> str:
    parts = [quote(column.name), declared_type(column, table)]
    if column.name == table.rowid_alias:
        parts.append("PRIMARY KEY")
    elif column.not_null:
        parts.append("NOT NULL")
    if column.unique:
        parts.append("UNIQUE")
    if column.default is not None:
        parts.append(f"DEFAULT {literal(column.default)}")
    ref = column.references
    if ref is not None:
        parts.append(f"REFERENCES {quote(ref.table)} ({quote(ref.column)})")
        if ref.on_delete != "no action":
            parts.append(f"ON DELETE {ref.on_delete.upper()}")
    return " ".join(p for p in parts if p)


def create_table_sql(table: TableConfig) -> str:
    parts = [column_ddl(c, table) for c in table.columns]
    if table.rowid_alias is None:
        parts.append(f"PRIMARY KEY ({column_list(table.primary_key)})")
    strict = " STRICT" if table.strict else ""
    return f"CREATE TABLE {quote(table.name)} (\n  " + ",\n  ".join(parts) + f"\n){strict}"


def create_index_sql(table: TableConfig, index_name: str) -> str:
    index = next(i for i in table.indexes if i.name == index_name)
    unique = "UNIQUE " if index.unique else ""
    return (f"CREATE {unique}INDEX {quote(index.name)} ON {quote(table.name)} "
            f"({column_list(index.columns)})")


def create_fts_sql(table: TableConfig, fts: FtsConfig) -> str:
    args = [quote(c) for c in fts.columns]
    args.append(f"content={literal(table.name)}")
    args.append(f"content_rowid={literal(table.rowid_alias)}")
    if fts.tokenize:
        args.append(f"tokenize={literal(fts.tokenize)}")
    return f"CREATE VIRTUAL TABLE {quote(fts.name)} USING fts5({', '.join(args)})"


def fts_trigger_sql(table: TableConfig, fts: FtsConfig) -> dict[str, str]:
    """The three triggers that keep an external-content FTS table in step, by name."""
    rowid = table.rowid_alias
    assert rowid is not None
    cols = column_list(fts.columns)
    new = ", ".join(f"new.{quote(c)}" for c in (rowid, *fts.columns))
    old = ", ".join(f"old.{quote(c)}" for c in (rowid, *fts.columns))
    add = f"INSERT INTO {quote(fts.name)} (rowid, {cols}) VALUES ({new});"
    remove = (f"INSERT INTO {quote(fts.name)} ({quote(fts.name)}, rowid, {cols}) "
              f"VALUES ('delete', {old});")
    ai, ad, au = fts.trigger_names
    watched = column_list((rowid, *fts.columns))
    t = quote(table.name)
    return {
        ai: f"CREATE TRIGGER {quote(ai)} AFTER INSERT ON {t} BEGIN\n  {add}\nEND",
        ad: f"CREATE TRIGGER {quote(ad)} AFTER DELETE ON {t} BEGIN\n  {remove}\nEND",
        # Only changes to indexed columns (or the rowid) touch the index.
        au: f"CREATE TRIGGER {quote(au)} AFTER UPDATE OF {watched} ON {t} BEGIN\n"
            f"  {remove}\n  {add}\nEND",
    }


# --- introspection ----------------------------------------------------------------------


def outbox_trigger_sql(table: TableConfig, *, now: str = OUTBOX_NOW_SQL) -> dict[str, str]:
    """Triggers recording every change of `table` in the outbox (never deferred)."""
    t = quote(table.name)
    name = literal(table.name)

    def key(row: str) -> str:
        if len(table.primary_key) == 1:
            # Unary + drops the column's affinity: compared with `k` (no affinity) it
            # would otherwise convert every `k` and scan the outbox instead of its index.
            return f"+{row}.{quote(table.primary_key[0])}"
        return "json_array(" + ", ".join(f"{row}.{quote(c)}" for c in table.primary_key) + ")"

    def record(row: str, op: str, when: str = "") -> str:
        # Delete, then insert: the key gets a new sequence number, so a drain
        # that read the old one does not delete the new change.
        return (f"DELETE FROM {OUTBOX_TABLE} WHERE tbl = {name} AND k = {key(row)};\n  "
                f"INSERT INTO {OUTBOX_TABLE} (tbl, k, op, at) SELECT {name}, {key(row)}, "
                f"'{op}', {now}{when};")

    prefix = f"{OUTBOX_TRIGGER_PREFIX}{table.name}"
    moved = f" WHERE {key('OLD')} IS NOT {key('NEW')}"
    return {
        f"{prefix}_ai": f"CREATE TRIGGER {quote(prefix + '_ai')} AFTER INSERT ON {t} BEGIN\n  "
                        f"{record('NEW', 'upsert')}\nEND",
        f"{prefix}_au": f"CREATE TRIGGER {quote(prefix + '_au')} AFTER UPDATE ON {t} BEGIN\n  "
                        f"{record('OLD', 'delete', moved)}\n  {record('NEW', 'upsert')}\nEND",
        f"{prefix}_ad": f"CREATE TRIGGER {quote(prefix + '_ad')} AFTER DELETE ON {t} BEGIN\n  "
                        f"{record('OLD', 'delete')}\nEND",
    }


def _plan_outbox(objects: dict[str, tuple[str, str, str | None]],
                 config: Config) -> list[tuple[str, str]]:
    """Create the outbox triggers of mirrored tables; drop those of tables no longer mirrored."""
    mirrored = config.mirror.tables if config.mirror is not None else ()
    wanted: dict[str, str] = {}
    for name in mirrored:
        wanted.update(outbox_trigger_sql(config.table(name)))
    plan: list[tuple[str, str]] = []
    for lowered, (kind, _, sql) in objects.items():
        if kind == "trigger" and lowered.startswith(OUTBOX_TRIGGER_PREFIX) and not any(
                lowered == w.lower() and _same_sql(sql, s) for w, s in wanted.items()):
            plan.append((f"DROP TRIGGER {quote(lowered)}", ""))
    for name in mirrored:
        triggers = outbox_trigger_sql(config.table(name))
        legacy = outbox_trigger_sql(config.table(name), now=_LEGACY_OUTBOX_NOW_SQL)
        current = {t: objects.get(t.lower(), (None, None, None))[2] for t in triggers}
        missing = [t for t, sql in triggers.items() if not _same_sql(current[t], sql)]
        if any(not _same_sql(current[t], legacy[t]) for t in missing):
            # Changes made while a trigger was missing (a table dropped and made
            # again, say) never reached the outbox: the stored digests may be stale.
            # An earlier engine's trigger recorded every change: nothing is stale.
            plan.append((f"DELETE FROM {MIRROR_RANGES_TABLE} WHERE tbl = {literal(name)}", ""))
        plan.extend((triggers[t], f"created mirror outbox trigger {t}") for t in missing)
    keep = ", ".join(literal(n) for n in mirrored) or "NULL"
    # Changes of a table no longer mirrored have nowhere to go, and its digests
    # go stale from now on.
    plan.append((f"DELETE FROM {OUTBOX_TABLE} WHERE tbl NOT IN ({keep})", ""))
    plan.append((f"DELETE FROM {MIRROR_RANGES_TABLE} WHERE tbl NOT IN ({keep})", ""))
    return plan


def _objects(conn: apsw.Connection) -> dict[str, tuple[str, str, str | None]]:
    """sqlite_master by lower-cased name: (type, table name, sql)."""
    return {name.lower(): (kind, tbl, sql) for kind, name, tbl, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master")}


def _rows(conn: apsw.Connection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return list(conn.execute(sql, params))


def _same_sql(a: str | None, b: str) -> bool:
    return a is not None and " ".join(a.split()) == " ".join(b.split())


# --- planning and applying --------------------------------------------------------------


def apply_schema(conn: apsw.Connection, config: Config) -> SchemaReport:
    """Bring the database to the declared schema in one transaction, or raise."""
    actions: list[str] = []
    with transaction(conn):
        conn.execute(_META_DDL)
        _check_engine_version(conn, actions)
        conn.execute(_TASKS_DDL)
        for ddl in (*_SYNC_DDL, *_OUTBOX_DDL, _MIRROR_RANGES_DDL, _MIRROR_QUARANTINE_DDL):
            conn.execute(ddl)
        _upgrade_rejects(conn, actions)
        objects = _objects(conn)
        deferred = _deferred_fts(conn)
        statements: list[tuple[str, str]] = []
        # Check every table before changing any, so an error changes nothing.
        for table in config.tables:
            statements.extend(_plan_table(conn, objects, table, deferred))
        statements.extend(_plan_outbox(objects, config))
        for sql, action in statements:
            try:
                conn.execute(sql)
            except apsw.Error as exc:
                if wait_reason(exc, path=conn.filename or None) is not None:
                    raise  # a full disk, not the schema's fault: the start waits it out
                statement = " ".join(sql.split())
                statement = statement if len(statement) <= 120 else statement[:117] + "..."
                raise SchemaError(f"SQLite refused the declared schema: {exc} (in: {statement})"
                                  ) from exc
            if action:
                actions.append(action)
    return SchemaReport(tuple(actions))


def _check_engine_version(conn: apsw.Connection, actions: list[str]) -> None:
    row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > ENGINE_SCHEMA_VERSION:
        raise SchemaError(f"the database was written by a newer sqlwarden (engine schema "
                          f"version {row[0]}, this one knows {ENGINE_SCHEMA_VERSION})")
    if row is None or int(row[0]) != ENGINE_SCHEMA_VERSION:
        conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('schema_version', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (str(ENGINE_SCHEMA_VERSION),))
        actions.append(f"engine schema version {ENGINE_SCHEMA_VERSION}")


def _upgrade_rejects(conn: apsw.Connection, actions: list[str]) -> None:
    """Add the columns `_sw_rejects` gained since it was made, then its once-only index."""
    have = {name for (name,) in conn.execute("SELECT name FROM pragma_table_info(?)",
                                             (REJECTS_TABLE,))}
    for column, ddl in _REJECTS_ADDED:
        if column not in have:
            conn.execute(f"ALTER TABLE {REJECTS_TABLE} ADD COLUMN {ddl}")
            actions.append(f"added column {REJECTS_TABLE}.{column}")
    conn.execute(_REJECTS_ONCE_DDL)


def _deferred_fts(conn: apsw.Connection) -> set[str]:
    """FTS tables whose triggers the FtsController has dropped on purpose."""
    row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?",
                       (FTS_DEFERRAL_KEY,)).fetchone()
    if row is None:
        return set()
    try:
        return {t["fts"].lower() for t in json.loads(row[0])["tables"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SchemaError(f"the FTS deferral record in {META_TABLE} (key "
                          f"{FTS_DEFERRAL_KEY!r}) cannot be read: {exc}") from None


def _plan_table(conn: apsw.Connection, objects: dict[str, tuple[str, str, str | None]],
                table: TableConfig, deferred_fts: set[str]) -> list[tuple[str, str]]:
    plan: list[tuple[str, str]] = []
    existing = objects.get(table.name.lower())
    if existing is None:
        plan.append((create_table_sql(table), f"created table {table.name}"))
    elif existing[0] != "table":
        raise SchemaError(f"{table.name!r} exists in the database as a {existing[0]}, "
                          "not a table", table=table.name)
    else:
        plan.extend(_plan_columns(conn, table))
    for index in table.indexes:
        plan.extend(_plan_index(objects, table, index.name))
    if table.fts is not None and table.fts.name.lower() in deferred_fts:
        # Its triggers are dropped until the FtsController restores them from
        # its snapshot; recreating them here would index the catch-up twice.
        log.info("FTS table %s is deferred; it is checked again once restored", table.fts.name)
    elif table.fts is not None:
        plan.extend(_plan_fts(conn, objects, table, table.fts))
    return plan


def _plan_columns(conn: apsw.Connection, table: TableConfig) -> list[tuple[str, str]]:
    name = table.name
    actual = {row[1]: row for row in _rows(
        conn, "SELECT cid, name, type, \"notnull\", dflt_value, pk, hidden "
              "FROM pragma_table_xinfo(?)", name)}
    strict_row = conn.execute("SELECT strict FROM pragma_table_list WHERE schema = 'main' "
                              "AND name = ?", (name,)).fetchone()
    if strict_row is not None and bool(strict_row[0]) != table.strict:
        is_strict = "STRICT" if strict_row[0] else "not STRICT"
        raise SchemaError(f"table {name} is {is_strict} in the database but declared "
                          f"strict: {str(table.strict).lower()}; this cannot be changed in "
                          "place", table=name)
    declared = {c.name for c in table.columns}
    for column_name in actual:
        if column_name not in declared:
            raise SchemaError(f"column {name}.{column_name} exists in the database but is not "
                              "declared; declare it (dropping columns is not done "
                              "automatically)", table=name, column=column_name)
    unique = _unique_columns(conn, name)
    foreign = {(row[3], row[2], row[4], row[6].lower()) for row in _rows(
        conn, "SELECT id, seq, \"table\", \"from\", \"to\", on_update, on_delete "
              "FROM pragma_foreign_key_list(?)", name)}
    plan = []
    for column in table.columns:
        row = actual.get(column.name)
        if row is None:
            plan.append(_plan_add_column(table, column))
            continue
        _check_column(table, column, row, unique, foreign)
    return plan


def _unique_columns(conn: apsw.Connection, table: str) -> set[str]:
    out = set()
    for _, index_name, _unique, origin, _partial in _rows(
            conn, "SELECT seq, name, \"unique\", origin, partial FROM pragma_index_list(?)",
            table):
        if origin == "u":
            cols = [r[2] for r in _rows(conn, "SELECT seqno, cid, name FROM pragma_index_info(?)",
                                        index_name)]
            if len(cols) == 1:
                out.add(cols[0])
    return out


def _check_column(table: TableConfig, column: ColumnConfig, row: tuple[Any, ...],
                  unique: set[str], foreign: set[tuple[str, str, str, str]]) -> None:
    where = f"{table.name}.{column.name}"
    _, _, actual_type, notnull, default, pk, _ = row
    want_type = declared_type(column, table)
    if actual_type.upper() != want_type:
        raise SchemaError(f"column {where} is {actual_type or 'untyped'} in the database but "
                          f"declared {column.type} ({want_type or 'untyped'}); changing a "
                          "column's type in place is not supported", table=table.name,
                          column=column.name)
    want_pk = table.primary_key.index(column.name) + 1 if column.name in table.primary_key else 0
    if pk != want_pk:
        raise SchemaError(f"column {where}: the primary key in the database differs from the "
                          "declared one", table=table.name, column=column.name)
    if column.name != table.rowid_alias and bool(notnull) != column.not_null:
        state = "NOT NULL" if notnull else "nullable"
        raise SchemaError(f"column {where} is {state} in the database but declared "
                          f"not_null: {str(column.not_null).lower()}", table=table.name,
                          column=column.name)
    want_default = literal(column.default) if column.default is not None else None
    if (default or None) != want_default:
        raise SchemaError(f"column {where} has default {default} in the database but "
                          f"{want_default} is declared", table=table.name, column=column.name)
    if column.unique != (column.name in unique):
        raise SchemaError(f"column {where}: UNIQUE differs between the database and the "
                          "config", table=table.name, column=column.name)
    ref = column.references
    mine = {f for f in foreign if f[0] == column.name}
    want = {(column.name, ref.table, ref.column, ref.on_delete)} if ref else set()
    if mine != want:
        raise SchemaError(f"column {where}: the foreign key in the database differs from the "
                          "declared one", table=table.name, column=column.name)


def _plan_add_column(table: TableConfig, column: ColumnConfig) -> tuple[str, str]:
    where = f"{table.name}.{column.name}"
    reason = None
    if column.name in table.primary_key:
        reason = "it is part of the primary key"
    elif column.unique:
        reason = "it is UNIQUE"
    elif column.not_null and column.default is None:
        reason = "it is NOT NULL without a default, and existing rows have no value for it"
    elif column.references is not None and column.default is not None:
        reason = "a new column with a foreign key must default to NULL"
    if reason:
        raise SchemaError(f"column {where} is declared but missing from the database, and it "
                          f"cannot be added to an existing table: {reason}", table=table.name,
                          column=column.name)
    return (f"ALTER TABLE {quote(table.name)} ADD COLUMN {column_ddl(column, table)}",
            f"added column {where}")


def _plan_index(objects: dict[str, tuple[str, str, str | None]], table: TableConfig,
                index_name: str) -> list[tuple[str, str]]:
    sql = create_index_sql(table, index_name)
    existing = objects.get(index_name.lower())
    if existing is None:
        return [(sql, f"created index {index_name}")]
    if existing[0] != "index" or existing[1].lower() != table.name.lower():
        raise SchemaError(f"{index_name!r} already exists in the database as a {existing[0]} "
                          f"on {existing[1]}", table=table.name)
    if _same_sql(existing[2], sql):
        return []
    # An index holds nothing but derived data: rebuilding it is safe.
    return [(f"DROP INDEX {quote(index_name)}", ""),
            (sql, f"rebuilt index {index_name} (its definition changed)")]


def _plan_fts(conn: apsw.Connection, objects: dict[str, tuple[str, str, str | None]],
              table: TableConfig, fts: FtsConfig) -> list[tuple[str, str]]:
    # An FTS index another tool made keeps its own triggers (or start is refused):
    # ours beside them would index every row twice.
    adopted = plan_existing(conn, table, fts)
    if adopted is not None:
        return adopted
    plan: list[tuple[str, str]] = []
    rebuild = False
    sql = create_fts_sql(table, fts)
    existing = objects.get(fts.name.lower())
    if existing is not None and existing[0] != "table":
        raise SchemaError(f"{fts.name!r} exists in the database as a {existing[0]}",
                          table=table.name)
    if existing is None or not _same_sql(existing[2], sql):
        if existing is not None:
            plan.append((f"DROP TABLE {quote(fts.name)}", ""))
        plan.append((sql, f"created FTS table {fts.name}"))
        rebuild = True
    for name, trigger_sql in fts_trigger_sql(table, fts).items():
        current = objects.get(name.lower())
        if current is not None and current[0] != "trigger":
            raise SchemaError(f"{name!r} exists in the database as a {current[0]}, but the "
                              f"engine needs that name for a trigger of {fts.name}",
                              table=table.name)
        if current is not None and _same_sql(current[2], trigger_sql):
            continue
        if current is not None:
            plan.append((f"DROP TRIGGER {quote(name)}", ""))
        plan.append((trigger_sql, f"created trigger {name}"))
        # Writes made while the trigger was missing are not in the index.
        rebuild = True
    if rebuild:
        plan.append((f"INSERT INTO {quote(fts.name)} ({quote(fts.name)}) VALUES ('rebuild')",
                     f"rebuilt FTS index {fts.name}"))
    return plan
