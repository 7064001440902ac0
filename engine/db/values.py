"""The number rule for what a caller hands `Engine.write_many`, `upsert` and `write`.

SQLite keeps `inf` as a REAL and turns `nan` into NULL, and cannot bind an
integer outside signed 64 bits: none of these is data a caller meant to
store. Sources refuse them record by record (`unstorable`, with the same
reasons); the API refuses them before a message is sent, naming the row and
column (or the parameter), so nothing of that write is stored.

The facade checks floats on the caller's thread. Every value of every bulk
write passes through `may_hold_bad_numbers`, which sums each column in C
(inf or nan makes the sum non-finite) and only on a suspicion scans row by
row (`bad_row`). Integers past 64 bits are left to apsw, which refuses to
bind them: the Writer names the row and column from the same `bad_row`, an
error path only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

from sqlwarden.errors import BadRowError, WriteError
from sqlwarden.sync.sources.mapping import INT_MIN, unstorable

_GETTERS = tuple(itemgetter(i) for i in range(64))
#: A text or blob column is checked by joining it: one value of another type fails that.
_JOINS: dict[type, Callable[[Iterable[Any]], object]] = {str: "".join, bytes: b"".join}


def number_refusal(value: Any) -> str | None:
    """Why the number `value` is refused (None: anything else, or a storable number)."""
    if isinstance(value, float):
        # A float subclass (numpy's float64) binds as a float too.
        return None if value - value == 0 else unstorable(float(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return unstorable(int(value))
    return None


def may_hold_bad_numbers(rows: Sequence[Sequence[Any]]) -> bool:
    """False when no value in `rows` can be a non-finite float; True means: look closer.

    Runs on the caller's thread for every bulk write, so it stays in C loops:
    each column's values are joined (text) or summed (numbers; inf or nan
    makes the sum non-finite), NULLs left out only where the column has
    some. A column it cannot take whole (mixed types, a row of another
    width, a sum that overflows) is only a suspicion, settled by `bad_row`.
    Values past row 0's width are not looked at: the Writer refuses a row of
    another width before anything is written.
    Measured on `scripts/bench ingest` rows (five values each): 100 ms a
    million rows, against 112 ms for the fastest per-value loop
    (`type(v) is float` and `v - v`); most of it is taking the values out of
    their tuples, which any check must do.
    """
    if not rows:
        return False
    try:
        for column, sample in enumerate(rows[0]):
            get = _GETTERS[column] if column < len(_GETTERS) else itemgetter(column)
            join = _JOINS.get(type(sample))
            if join is not None:
                try:
                    join(map(get, rows))
                except TypeError:
                    join(filter(None, map(get, rows)))
                continue
            try:
                total = sum(map(get, rows))
            except TypeError:
                total = sum(filter(None, map(get, rows)))
            if total - total:
                return True
    except Exception:  # any surprise is only a suspicion, settled exactly
        return True
    return False


def bad_row(kind: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
            text: bool = False) -> BadRowError | None:
    """The refusal of the first value in `rows` that breaks the rule (row order), or None.

    With `text`, a lone surrogate (which no text column can hold) counts too:
    the Writer asks for it once binding failed.
    """
    check = unstorable if text else number_refusal
    for index, row in enumerate(rows):
        for name, value in zip(columns, row, strict=False):
            why = check(value)
            if text and why is None:
                why = number_refusal(value)  # a float subclass `unstorable` lets through
            if why is not None:
                return BadRowError(f"{kind}: row {index}, column {name!r}: {why}; nothing "
                                   "was written", message_kind=kind, row_index=index)
    return None


def bad_param(kind: str, params: Sequence[Any], *,
              statement: int | None = None) -> WriteError | None:
    """The refusal of the first parameter in `params` that breaks the rule, or None.

    Parameters are named as SQLite numbers them (`?1` is the first); in a
    batch, statements are counted from 0 like rows.
    """
    for position, value in enumerate(params, start=1):
        why = number_refusal(value)
        if why is not None:
            where = f"statement {statement}, " if statement is not None else ""
            return WriteError(f"{kind}: {where}parameter ?{position}: {why}; nothing was "
                              "written", message_kind=kind)
    return None


def bad_rowid(kind: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              rowid: str) -> BadRowError | None:
    """The first row whose `rowid` column (an INTEGER PRIMARY KEY) SQLite cannot take, or None.

    SQLite says only "datatype mismatch" for it; the Writer asks this once
    it did. Takes what SQLite takes there: NULL (the next rowid), an integer,
    and a float or text that is a whole number within signed 64 bits.
    """
    if rowid not in columns:
        return None
    at = list(columns).index(rowid)
    for index, row in enumerate(rows):
        value = row[at] if at < len(row) else None
        if not _fits_rowid(value):
            shown = repr(value) if not isinstance(value, (str, bytes)) or len(value) <= 40 \
                else f"{value[:40]!r}..."
            return BadRowError(f"{kind}: row {index}, column {rowid!r}: {shown} is not a whole "
                               f"number within signed 64 bits, which {rowid} (the table's "
                               "INTEGER PRIMARY KEY) must be; nothing was written",
                               message_kind=kind, row_index=index)
    return None


def _fits_rowid(value: Any) -> bool:
    if value is None or (isinstance(value, int) and number_refusal(value) is None):
        return True
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return False
    if isinstance(value, int):
        return number_refusal(value) is None
    return isinstance(value, float) and value.is_integer() and INT_MIN <= value < -INT_MIN
