"""Declared FTS tables that another tool already made: adopt them or refuse at start.

A database made elsewhere (sqlite-utils' `enable_fts(..., create_triggers=True)`
gives `<table>_fts` kept by `<table>_ai`, `_ad` and `_au`) often has the FTS
index a config declares. Creating the engine's own triggers beside the ones
there would index every row twice and corrupt the index, so `plan_existing`
decides before the schema is applied:

- no FTS table indexes the declared table, or only the engine's own one
  does: nothing to decide, the usual plan applies;
- the declared FTS table exists, kept by triggers of another name, and it is
  external content over the declared table with the declared columns and
  tokenizer and one plain insert trigger: it is adopted as it is. Its triggers
  stay, whatever their names; deferral snapshots and restores them like any
  other. Engine-made triggers found beside them (left by an earlier version,
  which did index twice) are dropped and the index rebuilt;
- anything else (another FTS table over the declared table, a different
  column list or tokenizer, its own copy of the text) cannot be adopted
  safely: `SchemaError`, one line, before anything is changed.
"""

from __future__ import annotations

import logging

import apsw

from sqlwarden.config import FtsConfig, TableConfig
from sqlwarden.db.sql import quote
from sqlwarden.errors import SchemaError
from sqlwarden.fts.indexes import FtsIndex, Trigger, copied_columns, find_indexes, rowid_names

log = logging.getLogger(__name__)


def plan_existing(conn: apsw.Connection, table: TableConfig, fts: FtsConfig
                  ) -> list[tuple[str, str]] | None:
    """None when the declared FTS table is the engine's own or absent (plan it as usual);
    else the statements that adopt it (often none). Raises `SchemaError` when an FTS index
    already in the database cannot be adopted."""
    indexes = find_indexes(conn)
    for index in indexes:
        if index.name.lower() != fts.name.lower() and _indexes(index, table.name):
            raise SchemaError(
                f"table {table.name}: FTS table {index.name} already indexes it "
                f"({_how(index, table.name)}); declare `fts: {{name: {index.name}, ...}}` to "
                f"adopt it, or drop it, so {table.name} is not indexed twice",
                table=table.name)
    existing = next((i for i in indexes if i.name.lower() == fts.name.lower()), None)
    if existing is None:
        return None
    ours = {name.lower() for name in fts.trigger_names}
    foreign = [t for t in existing.triggers if t.name.lower() not in ours]
    if not foreign:
        return None
    why = _not_adoptable(conn, existing, foreign, table, fts)
    if why is not None:
        raise SchemaError(
            f"table {table.name}: the FTS table {existing.name} already in the database "
            f"(kept by {', '.join(t.name for t in foreign)}) cannot be adopted: {why}; "
            f"drop it and its triggers to have the engine make its own, or declare fts to "
            "match it", table=table.name)
    mine = [t for t in existing.triggers if t.name.lower() in ours]
    plan = [(f"DROP TRIGGER {quote(t.name)}",
             f"dropped trigger {t.name} ({existing.name} is kept by "
             f"{', '.join(t.name for t in foreign)})") for t in mine]
    if mine:
        # Both sets fired until now: every row may be in the index twice.
        plan.append((f"INSERT INTO {quote(existing.name)} ({quote(existing.name)}) "
                     "VALUES ('rebuild')", f"rebuilt FTS index {existing.name}"))
    log.info("adopted FTS table %s of %s, kept by its own triggers %s", existing.name,
             table.name, ", ".join(t.name for t in foreign))
    return plan


def _indexes(index: FtsIndex, table: str) -> bool:
    """`index` holds text of `table`: it is its content, or triggers on it feed it."""
    lowered = table.lower()
    return ((index.content or "").lower() == lowered
            or any(t.table.lower() == lowered for t in index.triggers))


def _how(index: FtsIndex, table: str) -> str:
    if (index.content or "").lower() == table.lower():
        return f"content={table}"
    fed = [t.name for t in index.triggers if t.table.lower() == table.lower()]
    return f"kept by triggers {', '.join(fed)} on {table}"


def _not_adoptable(conn: apsw.Connection, index: FtsIndex, foreign: list[Trigger],
                   table: TableConfig, fts: FtsConfig) -> str | None:
    """Why the index another tool made is not the declared one, or None when it is."""
    if index.problem is not None and index.problem != "no triggers maintain it":
        return index.problem
    if index.kind == "own":
        return "it stores its own copy of the text (no content=), not external content"
    if index.kind == "contentless":
        return "it is contentless (content=''), not external content"
    if (index.content or "").lower() != table.name.lower():
        return f"it is the external content of {index.content}, not of {table.name}"
    elsewhere = sorted({t.table for t in foreign if t.table.lower() != table.name.lower()})
    if elsewhere:
        return f"it is also kept from {', '.join(elsewhere)}"
    rowids = rowid_names(conn, table.name, index.content_rowid)
    if table.rowid_alias is None or table.rowid_alias.lower() not in rowids:
        return (f"its content_rowid is {index.content_rowid}, not the rowid of "
                f"{table.name}")
    have = [c.lower() for c in index.columns]
    if have != [c.lower() for c in fts.columns]:
        return (f"it indexes ({', '.join(index.columns)}) but fts declares "
                f"({', '.join(fts.columns)})")
    if _tokenizer(index.tokenize) != _tokenizer(fts.tokenize):
        return (f"its tokenizer is {index.tokenize or 'unicode61 (the default)'} but fts "
                f"declares {fts.tokenize or 'unicode61 (the default)'}")
    by_event = {event: [t for t in foreign if t.event == event]
                for event in ("insert", "delete", "update")}
    if len(by_event["insert"]) != 1:
        names = ", ".join(t.name for t in by_event["insert"])
        return (f"it has {len(by_event['insert'])} insert triggers ({names}), so rows would "
                "be indexed twice" if by_event["insert"] else "no insert trigger keeps it")
    for event, effect in (("delete", "deleted rows"), ("update", "updated rows")):
        if not by_event[event]:
            return f"no {event} trigger keeps it, so {effect} would stay in the index"
    (insert,) = by_event["insert"]
    copied = copied_columns(insert.body, index.name, rowids)
    if copied is None or sorted(copied) != sorted(have):
        return (f"its insert trigger {insert.name} does not copy the declared columns as "
                "they are")
    return None


def _tokenizer(spec: str | None) -> tuple[str, ...]:
    """A tokenizer spec in a form two equal specs share (FTS5's defaults filled in)."""
    words = tuple(w.strip("'\"").lower() for w in (spec or "").split())
    if not words:
        return ("unicode61",)
    if words == ("porter",):
        return ("porter", "unicode61")
    return words
