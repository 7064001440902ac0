"""Rows as callers hand them to `Engine.write_many` and `upsert`, shaped into messages.

Tuples are in column order (all declared columns, or the `columns` given).
A dict names its columns. In an insert it may leave out any column the
database would fill by itself: a nullable one (NULL), one with a declared
default (that default, which config holds as a plain value), the integer
primary key (the next rowid); an insert writes every declared column, so its
statements keep one shape. An upsert writes only the columns its rows name,
so a column left out keeps its value on update and nothing is ever filled
in: every row of an upsert of dicts names the same columns.

Numbers follow one rule (`sqlwarden.db.values`): a non-finite float in a row
or a parameter is refused here, on the caller's thread, before a message is
sent; an integer outside signed 64 bits is refused by the Writer when it
cannot be bound. Either way the error names the row and column (or the
parameter) and nothing of that write is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlwarden.config import TableConfig
from sqlwarden.db.values import bad_param, bad_row, may_hold_bad_numbers
from sqlwarden.errors import BadRowError, WriteError
from sqlwarden.views import Row

Rows = Iterable[Sequence[Any] | Mapping[str, Any]]


def params(values: Sequence[Any], *, kind: str = "writer.execute",
           statement: int | None = None) -> Row:
    """Positional parameters for one statement, as a tuple (`statement`: its place in a batch)."""
    if isinstance(values, (Mapping, str, bytes)):
        raise WriteError(f"parameters must be a sequence for positional '?' placeholders, not "
                         f"{type(values).__name__}", message_kind=kind)
    out = tuple(values)
    error = bad_param(kind, out, statement=statement)
    if error is not None:
        raise error
    return out


def insert_rows(spec: TableConfig, rows: Rows,
                columns: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[Row, ...]]:
    """The columns and value tuples of an insert into `spec`."""
    kind = "writer.insert_rows"
    cols = _columns(spec, columns, kind)
    data = tuple(rows)
    if all(type(row) is tuple for row in data):
        return cols, _checked(kind, cols, cast(tuple[Row, ...], data))
    return cols, _checked(kind, cols, tuple(_values(spec, row, cols, i, kind, fill=True)
                                            for i, row in enumerate(data)))


def upsert_rows(spec: TableConfig, rows: Rows,
                columns: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[Row, ...]]:
    """The columns and value tuples of an upsert into `spec`.

    A column the upsert does not write keeps its value on update, so nothing
    is filled in: without `columns`, dict rows name the columns written and
    must all name the same ones; with `columns`, every row gives each of them.
    """
    kind = "writer.upsert_rows"
    data = tuple(rows)
    dicts = [isinstance(row, Mapping) for row in data]
    if columns is None and any(dicts):
        first = cast(Mapping[str, Any], data[dicts.index(True)])
        _unknown_keys(spec, first, dicts.index(True), kind)
        for i, row in enumerate(data):
            if not isinstance(row, Mapping):
                raise BadRowError(f"{kind}: row {i} is a {type(row).__name__} among dicts; an "
                                  "upsert of dicts takes its columns from their keys, so give "
                                  "every row as a dict, or pass columns=",
                                  message_kind=kind, row_index=i)
            if set(row) != set(first):
                _unknown_keys(spec, row, i, kind)
                differ = sorted(set(row) ^ set(first))
                raise BadRowError(f"{kind}: row {i} names other columns than row 0 (differing: "
                                  f"{', '.join(differ)}); an upsert writes the same columns for "
                                  "every row, so split it or pass columns=",
                                  message_kind=kind, row_index=i)
        cols = tuple(c for c in spec.column_names if c in first)
    else:
        cols = _columns(spec, columns, kind)
    if all(type(row) is tuple for row in data):
        return cols, _checked(kind, cols, cast(tuple[Row, ...], data))
    return cols, _checked(kind, cols, tuple(_values(spec, row, cols, i, kind, fill=False)
                                            for i, row in enumerate(data)))


def _checked(kind: str, cols: tuple[str, ...], data: tuple[Row, ...]) -> tuple[Row, ...]:
    """`data`, once no value breaks the number rule (see the module's docstring)."""
    if may_hold_bad_numbers(data):
        error = bad_row(kind, cols, data)
        if error is not None:
            raise error
    return data


def _columns(spec: TableConfig, columns: Sequence[str] | None, kind: str) -> tuple[str, ...]:
    cols = tuple(columns) if columns is not None else spec.column_names
    unknown = [c for c in cols if c not in spec.column_names]
    if unknown:
        raise WriteError(f"table {spec.name} has no column(s) {', '.join(unknown)}",
                         message_kind=kind)
    return cols


def _unknown_keys(spec: TableConfig, row: Mapping[str, Any], index: int, kind: str) -> None:
    unknown = [str(k) for k in row if k not in spec.column_names]
    if unknown:
        raise BadRowError(f"{kind}: row {index} names column(s) {', '.join(unknown)}, which "
                          f"table {spec.name} does not have", message_kind=kind, row_index=index)


def _values(spec: TableConfig, row: Any, cols: tuple[str, ...], index: int, kind: str, *,
            fill: bool) -> Row:
    """One row as a tuple of `cols`; with `fill`, a dict may leave out what SQLite fills."""
    if isinstance(row, tuple):
        return row
    if isinstance(row, Mapping):
        _unknown_keys(spec, row, index, kind)
        return tuple(row[c] if c in row else _filled(spec, c, index, kind, fill) for c in cols)
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        raise BadRowError(f"{kind}: row {index} is {type(row).__name__}, expected a tuple, "
                          "list or dict", message_kind=kind, row_index=index)
    return tuple(row)


def _filled(spec: TableConfig, name: str, index: int, kind: str, fill: bool) -> Any:
    """The value SQLite would give a column the row leaves out, or a `BadRowError`."""
    column = spec.column(name)
    if fill and column.default is not None:
        return column.default
    if fill and (not column.not_null or name == spec.rowid_alias):
        return None  # NULL, or for the rowid alias the next rowid
    why = ("which is NOT NULL without a default" if fill else
           "and an upsert writes every column it names (leave it out of columns= to keep it)")
    raise BadRowError(f"{kind}: row {index} has no value for column {name!r}, {why}",
                      message_kind=kind, row_index=index)
