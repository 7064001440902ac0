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

FTS5's shadow tables (`<fts>_data`, ...) are not checked here: FTS5 prepares
its own statements on them while a sender's INSERT runs, with no trigger
named. The Writer's connection is DEFENSIVE instead (see
`sqlwarden.db.connect.enable_defensive`), where SQLite itself refuses
direct writes to shadow tables and allows FTS5's own.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class EngineObjects:
    """The objects of one config the engine owns besides `_sw_*`, by lower-cased name."""

    #: FTS table -> the table it indexes.
    fts_tables: dict[str, str]
    #: FTS5 shadow tables of those, -> their FTS table.
    fts_shadows: dict[str, str]
    #: FTS maintenance trigger -> its FTS table.
    fts_triggers: dict[str, str]

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
            fts_triggers=triggers)

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


def trigger_refusal(objects: EngineObjects, code: int, first: str | None,
                    trigger: str) -> str | None:
    """Why a statement in the body of `trigger` is refused (None: allowed).

    Applies to every statement, guarded or not: a trigger that is not the
    engine's would otherwise change the engine's tables whenever the engine
    itself writes the table it is on.
    """
    if code not in _WRITES or first is None or not first.lower().startswith(ENGINE_PREFIX):
        return None
    if objects.owned_trigger(trigger) is not None:
        return None
    return (f"trigger {trigger} may not {_WRITES[code]} {first}: only the engine's own "
            "triggers write its bookkeeping tables")


def refusal(objects: EngineObjects, code: int, first: str | None,
            second: str | None) -> str | None:
    """Why one step of a sender's own SQL is refused (None: allowed).

    `code`, `first` and `second` are the authorizer's arguments, outside any
    trigger body (see `trigger_refusal` for those).
    """
    if code in _WRITES and first is not None:
        if first.lower() == "sqlite_sequence":
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
        return None
    if code == apsw.SQLITE_ATTACH:
        return (f"ATTACH {first!r} is not accepted: SQL sent to the engine works on its "
                "own database only")
    if code == apsw.SQLITE_DETACH:
        return f"DETACH {first} is not accepted: SQL sent to the engine works on its own database"
    if code == apsw.SQLITE_FUNCTION and second is not None \
            and second.lower() == "load_extension":
        return "load_extension() is not accepted: the engine loads no extensions"
    return None
