"""What a sender's own SQL may not do: the rules the Writer's authorizer enforces.

SQL sent through `engine.write` (and a task's SQL) runs on the engine's own
connection, so without these rules it could break what the engine relies
on: delete pending mirror changes from `_sw_outbox`, drop an FTS trigger and
leave the index stale for good, or ATTACH another file and write there.
`refusal` answers, for one authorizer call made while such SQL is prepared,
why it is refused (None: allowed). Reading the engine's tables stays allowed.

What the engine installs fires inside a sender's statement too (an INSERT
into a mirrored table runs the outbox trigger, which writes `_sw_outbox`):
SQLite names the trigger in the call, and the engine's triggers may do what
they do. A trigger that is not the engine's may never write `_sw_*` tables,
guarded or not, since the engine's own writes fire it too.

A declared table keeps the name and columns the config gives it: the
engine's statements, its triggers and the mirror know it by them, so ALTER
TABLE may add a column to it but not rename it, rename a column or drop a
declared one. SQLite tells the authorizer only "ALTER TABLE" and then which
of its own functions the statement calls (`sqlite_rename_table`, ...); a
`Preparing` carries that, and whether SQLite's own bookkeeping of an ALTER
or DROP TABLE is what writes `sqlite_sequence`, from one step to the next.
TEMP tables, views and triggers are refused: they would stay on the
Writer's connection after the message, acting on every later write (a TEMP
trigger on a table fires for the engine's own writes too) until a restart.

SQLite asks the authorizer nothing about VACUUM, so `statement_refusal`
looks at each statement itself once SQLite has cut it from the text (the
Writer's cursors call it before a statement runs); `pragma_refusal` says
which PRAGMAs a sender may not run.

FTS5's shadow tables (`<fts>_data`, ...) are not checked here: FTS5 prepares
its own statements on them while a sender's INSERT runs, with no trigger
named. The Writer's connection is DEFENSIVE instead (see
`sqlwarden.db.connect.enable_defensive`), where SQLite itself refuses
direct writes to shadow tables and allows FTS5's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import apsw

from sqlwarden.config import Config
from sqlwarden.config.tables import FTS_SHADOW_TABLES
from sqlwarden.fts.deferral import read_deferral

#: The prefix of every table, index and trigger the engine owns.
ENGINE_PREFIX = "_sw_"

_WRITES = {apsw.SQLITE_INSERT: "insert into", apsw.SQLITE_UPDATE: "update",
           apsw.SQLITE_DELETE: "delete from"}
_CREATE_TRIGGER = (apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_TEMP_TRIGGER)
_DROP_TRIGGER = (apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_DROP_TEMP_TRIGGER)
#: Codes whose first argument names a new table, view or index.
_CREATE_NAMED = {
    apsw.SQLITE_CREATE_TABLE: "table", apsw.SQLITE_CREATE_TEMP_TABLE: "table",
    apsw.SQLITE_CREATE_VIEW: "view", apsw.SQLITE_CREATE_TEMP_VIEW: "view",
    apsw.SQLITE_CREATE_VTABLE: "table", apsw.SQLITE_CREATE_INDEX: "index",
    apsw.SQLITE_CREATE_TEMP_INDEX: "index"}
#: DDL on an existing table: code -> (which argument names the table, what is done).
_TABLE_DDL = {
    apsw.SQLITE_DROP_TABLE: (0, "dropping table"),
    apsw.SQLITE_DROP_TEMP_TABLE: (0, "dropping table"),
    apsw.SQLITE_DROP_VTABLE: (0, "dropping table"),
    apsw.SQLITE_ALTER_TABLE: (1, "altering table"),
    apsw.SQLITE_CREATE_INDEX: (1, "creating an index on"),
    apsw.SQLITE_CREATE_TEMP_INDEX: (1, "creating an index on"),
    apsw.SQLITE_DROP_INDEX: (1, "dropping an index of"),
    apsw.SQLITE_DROP_TEMP_INDEX: (1, "dropping an index of")}
_ONLY_THROUGH_ENGINE = "it is the engine's and changes only through the engine"
#: CREATE TEMP ...: code -> what is made.
_CREATE_TEMP = {
    apsw.SQLITE_CREATE_TEMP_TABLE: "table", apsw.SQLITE_CREATE_TEMP_VIEW: "view",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "trigger", apsw.SQLITE_CREATE_TEMP_INDEX: "index"}
_TEMP_STAYS = ("a TEMP object would stay on the engine's connection after this message and "
               "act on every later write until the engine restarts; create it in the main "
               "database, or use a WITH clause or a subquery")
#: The functions SQLite's ALTER TABLE calls for what it does to a table.
_ALTER_FUNCTIONS = {"sqlite_rename_table": "RENAME TO", "sqlite_rename_column": "RENAME COLUMN",
                    "sqlite_drop_column": "DROP COLUMN"}

#: PRAGMAs a sender may read but not set: the connection settings the engine relies
#: on, and those that would loosen its guarantees for every write after.
_SET_BY_ENGINE = {
    name: "is set by the engine and cannot be changed" for name in (
        "journal_mode", "locking_mode", "synchronous", "wal_autocheckpoint",
        "journal_size_limit", "foreign_keys", "recursive_triggers", "query_only",
        "busy_timeout")} | {
    "writable_schema": "would let SQL write the schema itself, past every rule here",
    "schema_version": "would make SQLite misread the schema (and can corrupt the database)",
    "ignore_check_constraints": "would let rows past the CHECK constraints the engine's "
                                "tables rely on",
    "defer_foreign_keys": "would change how every write in the same transaction is checked",
    "legacy_alter_table": "would let ALTER TABLE leave the engine's triggers pointing at "
                          "old names",
    "trusted_schema": "is a safety setting of the engine's connection",
    "case_sensitive_like": "would change what LIKE matches in the engine's own SQL",
    "count_changes": "would make the engine's own writes return rows",
    "max_page_count": "would cap the database file and fail later writes",
    "hard_heap_limit": "limits the memory of the whole engine",
    "soft_heap_limit": "limits the memory of the whole engine",
    "temp_store_directory": "is a setting of the whole process",
    "data_store_directory": "is a setting of the whole process",
}
#: PRAGMAs that act even when only read.
_ALWAYS_REFUSED = {
    "wal_checkpoint": "the engine runs WAL checkpoints itself, between writes (see "
                      "`database.wal_threshold_mb`)",
}
#: What SQLite's tokenizer skips before a statement's first word: white space
#: (`sqlite3Isspace`) and the semicolons of empty statements; comments apart.
_BLANK = frozenset(" \t\n\v\f\r;")


@dataclass(frozen=True, slots=True)
class EngineObjects:
    """The objects of one config the engine owns besides `_sw_*`, by lower-cased name."""

    #: FTS table -> the table it indexes.
    fts_tables: dict[str, str]
    #: FTS5 shadow tables of those, -> their FTS table.
    fts_shadows: dict[str, str]
    #: FTS maintenance trigger -> its FTS table.
    fts_triggers: dict[str, str]
    #: Declared table -> its declared columns.
    declared: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, config: Config, conn: apsw.Connection | None = None) -> EngineObjects:
        """From the config, and with `conn` the FTS triggers found in the database too.

        An adopted FTS index keeps the triggers another tool made (sqlite-utils'
        `<t>_ai`, say); they are the engine's from then on, as are those its
        deferral record holds while they are dropped.
        """
        fts = [t.fts for t in config.tables if t.fts is not None]
        sources = {t.name.lower(): f.name for t in config.tables if (f := t.fts) is not None}
        triggers = {n.lower(): f.name for f in fts for n in f.trigger_names}
        if conn is not None:
            for name, table, sql in conn.execute(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"):
                index = sources.get(table.lower())
                if index is not None and index.lower() in (sql or "").lower():
                    triggers.setdefault(name.lower(), index)
            deferral = read_deferral(conn)
            for deferred in deferral.tables if deferral is not None else ():
                triggers.update((name.lower(), deferred.fts) for name, _ in deferred.triggers)
        return cls(
            fts_tables={f.name.lower(): t.name for t in config.tables
                        if (f := t.fts) is not None},
            fts_shadows={f"{f.name}_{part}".lower(): f.name for f in fts
                         for part in (*FTS_SHADOW_TABLES, "content")},
            fts_triggers=triggers,
            declared={t.name.lower(): frozenset(c.lower() for c in t.column_names)
                      for t in config.tables})

    def owned_trigger(self, name: str) -> str | None:
        """What the trigger `name` does for the engine, or None if it is not the engine's."""
        lowered = name.lower()
        if lowered.startswith(f"{ENGINE_PREFIX}outbox_"):
            return "records changes for the mirror"
        if lowered.startswith(ENGINE_PREFIX):
            return "is part of the engine's upkeep"
        if lowered in self.fts_triggers:
            return f"keeps the FTS index {self.fts_triggers[lowered]} up to date"
        return None

    def owned_table(self, name: str) -> str | None:
        """Why the table `name` is the engine's, or None if it is not."""
        lowered = name.lower()
        if lowered.startswith(ENGINE_PREFIX):
            return "it is one of the engine's bookkeeping tables"
        if lowered in self.fts_tables:
            return f"it is the FTS index the engine keeps for {self.fts_tables[lowered]}"
        if lowered in self.fts_shadows:
            return f"it holds the FTS index {self.fts_shadows[lowered]}"
        return None


class Preparing:
    """What the earlier steps of the statement SQLite is preparing did, for the later ones.

    The Writer starts one afresh before each statement is prepared and notes
    every step it allows.
    """

    __slots__ = ("altering", "schema_change")

    def __init__(self) -> None:
        #: The declared table an ALTER TABLE works on.
        self.altering: str | None = None
        #: An ALTER or DROP TABLE, whose own bookkeeping writes `sqlite_sequence`.
        self.schema_change = False

    def note(self, objects: EngineObjects, code: int, first: str | None,
             second: str | None) -> None:
        """Remember an allowed step that matters to the steps after it."""
        if code == apsw.SQLITE_ALTER_TABLE:
            self.schema_change = True
            if second is not None and second.lower() in objects.declared:
                self.altering = second
        elif code in (apsw.SQLITE_DROP_TABLE, apsw.SQLITE_DROP_TEMP_TABLE):
            self.schema_change = True


def trigger_refusal(objects: EngineObjects, code: int, first: str | None,
                    trigger: str) -> str | None:
    """Why a statement in the body of `trigger` is refused (None: allowed).

    Applies to every statement, guarded or not: a trigger that is not the
    engine's would otherwise change the engine's tables whenever the engine
    itself writes the table it is on.
    """
    if code not in _WRITES or first is None:
        return None
    lowered = first.lower()
    if not lowered.startswith(ENGINE_PREFIX) and lowered != "sqlite_sequence":
        return None
    if objects.owned_trigger(trigger) is not None:
        return None
    return (f"trigger {trigger} may not {_WRITES[code]} {first}: only the engine's own "
            "triggers write its bookkeeping tables")


def refusal(objects: EngineObjects, code: int, first: str | None, second: str | None,
            third: str | None = None, *, preparing: Preparing | None = None) -> str | None:
    """Why one step of a sender's own SQL is refused (None: allowed).

    `code`, `first`, `second` and `third` are the authorizer's arguments,
    outside any trigger body (see `trigger_refusal` for those); `preparing`
    says what the statement's earlier steps did.
    """
    # `CREATE TABLE temp.t` is asked as a CREATE_TABLE in database "temp".
    if code in _CREATE_TEMP or (third == "temp" and (code in _CREATE_NAMED
                                                     or code in _CREATE_TRIGGER)):
        made = _CREATE_TEMP.get(code) or _CREATE_NAMED.get(code, "trigger")
        return f"creating TEMP {made} {first} is not accepted: {_TEMP_STAYS}"
    if code in _WRITES and first is not None:
        if first.lower() == "sqlite_sequence":
            if preparing is not None and preparing.schema_change:
                return None  # SQLite renaming or dropping a table's own sequence row
            return (f"{_WRITES[code]} sqlite_sequence is not accepted: it numbers the "
                    "engine's pending mirror changes, which must never be reused")
        why = objects.owned_table(first)
        # Shadow tables are left to SQLite (see the module's docstring).
        if why is not None and first.lower() not in objects.fts_shadows:
            source = objects.fts_tables.get(first.lower())
            hint = f"; write to {source} and its triggers keep the index" if source else ""
            return f"{_WRITES[code]} {first} is not accepted: {why}{hint}"
        return None
    if code in _CREATE_TRIGGER and first is not None:
        if objects.owned_trigger(first) is not None:
            return (f"creating trigger {first} is not accepted: the name is the engine's "
                    f"(it {objects.owned_trigger(first)})")
        if second is not None and objects.owned_table(second) is not None:
            return (f"creating trigger {first} on {second} is not accepted: "
                    f"{objects.owned_table(second)}")
        return None
    if code in _DROP_TRIGGER and first is not None:
        what = objects.owned_trigger(first)
        if what is not None:
            # Also asked when its table is dropped, which would drop it with it.
            on = f" of table {second} (directly or with its table)" if second else ""
            return f"dropping trigger {first}{on} is not accepted: it {what}"
        return None
    if code in _CREATE_NAMED and first is not None and first.lower().startswith(ENGINE_PREFIX):
        return (f"creating {_CREATE_NAMED[code]} {first} is not accepted: names starting "
                f"{ENGINE_PREFIX} are the engine's")
    if code in _TABLE_DDL:
        index, verb = _TABLE_DDL[code]
        table = (first, second)[index]
        why = objects.owned_table(table) if table is not None else None
        if why is not None:
            return f"{verb} {table} is not accepted: {why}"
        if code == apsw.SQLITE_ALTER_TABLE and table is not None and third is not None \
                and third.lower() in objects.declared.get(table.lower(), ()):
            # DROP COLUMN names the column it drops.
            return _declared_alter(table, f"DROP COLUMN {third}")
        return None
    if code == apsw.SQLITE_ATTACH:
        return ("ATTACH of another database file is not accepted: SQL sent to the engine "
                "works on its own database only")
    if code == apsw.SQLITE_DETACH:
        return ("DETACH is not accepted: SQL sent to the engine works on its own database, "
                "which has nothing attached")
    if code == apsw.SQLITE_FUNCTION and second is not None:
        name = second.lower()
        if name == "load_extension":
            return "load_extension() is not accepted: the engine loads no extensions"
        if name in _ALTER_FUNCTIONS and preparing is not None and preparing.altering:
            return _declared_alter(preparing.altering, _ALTER_FUNCTIONS[name])
    return None


def _declared_alter(table: str, what: str) -> str:
    return (f"ALTER TABLE {table} {what} is not accepted: {table} is declared in the config, "
            "and the engine's statements, its triggers and the mirror know the table and its "
            "columns by the names declared there; change the config instead (ADD COLUMN is "
            "allowed)")


def pragma_refusal(name: str, argument: str | None) -> str | None:
    """Why `PRAGMA name` (`= argument`, when given) is refused (None: allowed)."""
    lowered = name.lower()
    if lowered in _ALWAYS_REFUSED:
        return f"PRAGMA {lowered} is not accepted: {_ALWAYS_REFUSED[lowered]}"
    if argument is not None and lowered in _SET_BY_ENGINE:
        return f"PRAGMA {lowered} = {argument} is not accepted: it {_SET_BY_ENGINE[lowered]}"
    return None


def first_word(sql: str) -> str:
    """The first word of one statement, read as SQLite's tokenizer reads it (lower case).

    White space, `--` and `/* */` comments and empty statements before it are
    skipped; a word runs over the characters SQLite takes in an identifier.
    """
    at, end = 0, len(sql)
    while at < end:
        if sql[at] in _BLANK:
            at += 1
        elif sql.startswith("--", at):
            newline = sql.find("\n", at)
            at = end if newline < 0 else newline + 1
        elif sql.startswith("/*", at):
            close = sql.find("*/", at + 2)
            at = end if close < 0 else close + 2  # an open comment runs to the end
        else:
            break
    start = at
    while at < end and (not sql[at].isascii() or sql[at].isalnum() or sql[at] in "_$"):
        at += 1
    return sql[start:at].lower()


def statement_refusal(sql: str) -> str | None:
    """Why one statement of a sender's SQL is refused before it runs (None: allowed).

    `sql` is one statement as SQLite cut it from the text sent, already
    prepared: its grammar puts VACUUM (and VACUUM INTO) first, so the first
    word decides. SQLite's authorizer is never asked about it.
    """
    if first_word(sql) == "vacuum":
        return ("VACUUM is not accepted: it rewrites the whole database while holding the "
                "engine's only writer, and VACUUM INTO writes another file; SQL sent to the "
                "engine works on its own database, a chunk at a time")
    return None
