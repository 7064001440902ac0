"""The `tables` section: columns, primary keys, indexes, FTS tables and references.

`parse_tables` checks each table on its own and that no two of the names
SQLite keeps in one namespace (tables, indexes, triggers, FTS shadow tables)
collide; `check_references` then checks every foreign key against the
declared tables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlwarden.config.at import At, hint, optional
from sqlwarden.config.model import (
    STORAGE_TYPES,
    ColumnConfig,
    ForeignKey,
    FtsConfig,
    IndexConfig,
    TableConfig,
)
from sqlwarden.db.sql import is_identifier

FK_ACTIONS = ("no action", "restrict", "set null", "set default", "cascade")
#: Tables FTS5 creates beside an external-content FTS table.
FTS_SHADOW_TABLES = ("data", "idx", "docsize", "config")
#: FTS5's built-in tokenizers (`porter` wraps another one).
FTS_TOKENIZERS = ("unicode61", "ascii", "porter", "trigram")
#: Names that mean the rowid to SQLite; a column by that name would hide it.
ROWID_NAMES = ("rowid", "oid", "_rowid_")
#: Python types a default may have, by logical column type.
DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "boolean": (int,), "real": (int, float), "text": (str,),
    "timestamp": (str,), "blob": (), "any": (str, int, float)}


def parse_tables(at: At) -> tuple[TableConfig, ...]:
    """The `tables` section, each table checked on its own and against the others' names."""
    items = at.named_items("table")
    tables = tuple(_table(name, spec) for name, spec in items)
    # Tables, indexes, triggers and FTS shadow tables share one namespace in SQLite.
    taken: dict[str, str] = {t.name.lower(): f"table {t.name!r}" for t in tables}
    for table, (_, spec) in zip(tables, items, strict=True):
        names: list[tuple[str, str, At]] = [
            (index.name, "index", spec.child("indexes").child(i))
            for i, index in enumerate(table.indexes)]
        if table.fts is not None:
            fts = table.fts
            names.append((fts.name, "FTS table", spec.child("fts")))
            names += [(f"{fts.name}_{part}", "FTS shadow table", spec.child("fts"))
                      for part in FTS_SHADOW_TABLES]
            names += [(trigger, "FTS trigger", spec.child("fts")) for trigger in fts.trigger_names]
        for name, kind, where in names:
            if name.lower() in taken:
                raise where.error(f"the {kind} name {name!r} is already used by "
                                  f"{taken[name.lower()]}; tables, indexes and triggers share "
                                  "one namespace")
            taken[name.lower()] = f"the {kind} of table {table.name!r}"
    return tables


def _table(name: str, at: At) -> TableConfig:
    keys = at.mapping(("columns", "primary_key", "indexes", "fts", "strict"),
                      required=("columns",))
    columns: list[ColumnConfig] = []
    column_pk: list[str] = []
    for col_name, col_spec in keys["columns"].named_items("column"):
        if col_name.lower() in ROWID_NAMES:
            raise col_spec.error(f"column name {col_name!r} is SQLite's name for the rowid; "
                                 "choose another")
        column, is_pk = _column(col_name, col_spec)
        columns.append(column)
        if is_pk:
            column_pk.append(col_name)
    if not columns:
        raise keys["columns"].error("expected at least one column")
    known = [c.name for c in columns]

    if "primary_key" in keys:
        if column_pk:
            raise keys["primary_key"].error(
                "primary key is given both here and on column "
                f"{column_pk[0]!r}; give it in one place")
        primary_key = keys["primary_key"].column_names(known)
    elif column_pk:
        if len(column_pk) > 1:
            raise keys["columns"].error(
                "several columns say primary_key: true; list them in the table's "
                "primary_key instead")
        primary_key = tuple(column_pk)
    else:
        raise at.error("expected a primary key (`primary_key: <column>` on the table "
                       "or `primary_key: true` on a column)")
    columns = [dataclasses.replace(c, not_null=True) if c.name in primary_key else c
               for c in columns]

    indexes = tuple(_index(name, i, spec, known)
                    for i, spec in enumerate(keys["indexes"].sequence())) \
        if "indexes" in keys else ()
    table = TableConfig(name=name, columns=tuple(columns), primary_key=primary_key,
                        indexes=indexes, strict=optional(keys, "strict", At.boolean, True))
    if "fts" in keys:
        table = _with_fts(table, keys["fts"])
    return table


def _column(name: str, at: At) -> tuple[ColumnConfig, bool]:
    if isinstance(at.value, str):
        return ColumnConfig(name=name, type=at.choice(tuple(STORAGE_TYPES))), False
    keys = at.mapping(("type", "not_null", "unique", "default", "primary_key", "references"),
                      required=("type",))
    default: str | int | float | None = None
    if "default" in keys:
        raw: Any = keys["default"].value
        if isinstance(raw, bool):
            raw = int(raw)
        if raw is not None and not isinstance(raw, (str, int, float)):
            raise keys["default"].error("expected a constant (text, number, true/false or null)")
        if isinstance(raw, float | int) and not isinstance(keys["default"].value, bool):
            keys["default"].scalar()  # a number SQLite cannot store as given (.nan, 2**64)
        default = raw
    references = _references(keys["references"]) if "references" in keys else None
    kind = keys["type"].choice(tuple(STORAGE_TYPES))
    if default is not None and (not isinstance(default, DEFAULT_TYPES[kind])
                                or (kind == "boolean" and default not in (0, 1))):
        allowed = {"integer": "an integer", "boolean": "true or false", "real": "a number",
                   "text": "text", "timestamp": "a timestamp as text", "blob": "nothing (blob "
                   "columns take no default)", "any": "text or a number"}[kind]
        raise keys["default"].error(f"the default of a {kind} column must be {allowed}")
    column = ColumnConfig(
        name=name,
        type=kind,
        not_null=optional(keys, "not_null", At.boolean, False),
        unique=optional(keys, "unique", At.boolean, False),
        default=default,
        references=references,
    )
    return column, optional(keys, "primary_key", At.boolean, False)


def _references(at: At) -> ForeignKey:
    if isinstance(at.value, str):
        table, _, column = at.value.partition(".")
        if not (is_identifier(table) and is_identifier(column)):
            raise at.error("expected `table.column` naming the referenced column")
        return ForeignKey(table=table, column=column)
    keys = at.mapping(("table", "column", "on_delete"), required=("table", "column"))
    return ForeignKey(
        table=keys["table"].identifier("table name"),
        column=keys["column"].identifier("column name"),
        on_delete=optional(keys, "on_delete", lambda a: a.choice(FK_ACTIONS), "no action"),
    )


def _index(table: str, i: int, at: At, known: list[str]) -> IndexConfig:
    if isinstance(at.value, list):
        columns = at.column_names(known)
        return IndexConfig(name=_index_name(table, columns), columns=columns)
    keys = at.mapping(("columns", "unique", "name"), required=("columns",))
    columns = keys["columns"].column_names(known)
    name = (keys["name"].identifier("index name") if "name" in keys
            else _index_name(table, columns))
    return IndexConfig(name=name, columns=columns,
                       unique=optional(keys, "unique", At.boolean, False))


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    return f"idx_{table}_{'_'.join(columns)}"[:64]


def _with_fts(table: TableConfig, at: At) -> TableConfig:
    if isinstance(at.value, list):
        keys = {"columns": at}
    else:
        keys = at.mapping(("columns", "tokenize", "name"), required=("columns",))
    columns = keys["columns"].column_names(list(table.column_names))
    for col in columns:
        if col.lower() == "rank":
            raise keys["columns"].error("FTS5 keeps the column name 'rank' for itself; an FTS "
                                        "column cannot be called that")
        if table.column(col).type != "text":
            raise keys["columns"].error(
                f"FTS column {col!r} is {table.column(col).type}; only text columns "
                "can be indexed")
    if table.rowid_alias is None:
        raise at.error("an FTS table needs the table's primary key to be a single integer "
                       "column (external content is addressed by rowid, and a hidden rowid "
                       "may change on VACUUM)")
    tokenize = None
    if "tokenize" in keys:
        tokenize = keys["tokenize"].string()
        words = tokenize.split()
        if not words or not tokenize.replace(" ", "").replace("_", "").isalnum():
            raise keys["tokenize"].error(
                "expected tokenizer words such as 'unicode61 remove_diacritics 2'")
        if words[0] not in FTS_TOKENIZERS:
            raise keys["tokenize"].error(
                f"unknown tokenizer {words[0]!r}{hint(words[0], FTS_TOKENIZERS)}; expected one "
                f"of {', '.join(FTS_TOKENIZERS)}")
    name = (keys["name"].identifier("FTS table name") if "name" in keys
            else f"{table.name}_fts")
    fts = FtsConfig(name=name, columns=columns, tokenize=tokenize)
    return dataclasses.replace(table, fts=fts)


def check_references(at: At | None, tables: tuple[TableConfig, ...]) -> None:
    """Every foreign key names a declared column that is a primary key or unique.

    `at` is the `tables` section, where the errors point (None when there is none).
    """
    by_name = {t.name: t for t in tables}
    for table in tables:
        for col in table.columns:
            ref = col.references
            if ref is None:
                continue
            assert at is not None
            where = at.child(table.name).child("columns").child(col.name)
            target = by_name.get(ref.table)
            if target is None:
                raise where.error(f"references table {ref.table!r}, which is not declared"
                                  + hint(ref.table, by_name))
            if ref.column not in target.column_names:
                raise where.error(f"references column {ref.table}.{ref.column}, which is not "
                                  "declared" + hint(ref.column, target.column_names))
            if target.primary_key != (ref.column,) and not target.column(ref.column).unique:
                raise where.error(f"references {ref.table}.{ref.column}, which is neither the "
                                  f"primary key of {ref.table} nor unique; SQLite needs one of "
                                  "those")
