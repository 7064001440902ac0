"""Rows the mirror cannot send, set aside one by one so every other row keeps flowing.

A row is quarantined when a value has no MySQL form (`dialect.RowCheck`: a
non-finite float, a key or a timestamp longer than its column), when the
driver cannot encode it, or when the server refuses it for its data
(`dialect.ROW_ERRNOS`). Rows are sent in multi-row statements; one the
server refuses is split in halves until the refused rows are alone, inside
the same transaction (the server undoes only the failed statement), so a
poison row costs a few statements, never the batch.

A quarantined key is recorded in `_sw_mirror_quarantine` (through the
Writer), deleted from the mirror (an older version there would be a silent
lie), and left out of reconcile checksums on both sides: SQLite's side skips
it and the mirror does not hold it, so its range agrees and no reconcile
copies it again and again. The next change of its row (a new outbox entry)
sends it again; it leaves the quarantine once it is on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from sqlwarden.config import MirrorConfig, TableConfig
from sqlwarden.db.schema import MIRROR_QUARANTINE_TABLE
from sqlwarden.mirror.dialect import (
    Literals,
    RowCheck,
    is_row_error,
    mysql_error,
    upsert_prefix,
    upsert_suffix,
)
from sqlwarden.mirror.local import has_table
from sqlwarden.mirror.ranges import Key, key_of, stored_key

#: How many quarantined rows status and verify list (the newest first).
SHOWN = 20


@dataclass(frozen=True, slots=True)
class Refused:
    """A row the mirror could not send: its table, key and why."""

    table: str
    key: Key
    reason: str


class Quarantined:
    """The keys in quarantine, by table, as the mirror's session knows them.

    Loaded when the session opens and kept up to date as it quarantines and
    releases keys (the Writer records each change; a session that fails is
    closed and loads afresh).
    """

    def __init__(self) -> None:
        self.keys: dict[str, set[Key]] = {}

    @classmethod
    def load(cls, conn: apsw.Connection, tables: Iterable[TableConfig]) -> Quarantined:
        found = cls()
        if not has_table(conn, MIRROR_QUARANTINE_TABLE):
            return found  # a database no engine of this version opened yet
        by_name = {t.name: t for t in tables}
        for name, stored in conn.execute(f"SELECT tbl, k FROM {MIRROR_QUARANTINE_TABLE}"):
            table = by_name.get(name)
            if table is not None:
                found.keys.setdefault(name, set()).add(key_of(table, stored))
        return found

    def of(self, table: str) -> set[Key]:
        return self.keys.get(table, set())

    def add(self, table: str, key: Key) -> None:
        self.keys.setdefault(table, set()).add(key)

    def discard(self, table: str, key: Key) -> bool:
        """Forget `key`; True when it was quarantined."""
        keys = self.keys.get(table)
        if keys is None or key not in keys:
            return False
        keys.discard(key)
        return True


def entries(conn: apsw.Connection, *, shown: int = SHOWN) -> tuple[int, list[dict[str, Any]]]:
    """How many rows are quarantined, and the newest `shown` as plain data."""
    if not has_table(conn, MIRROR_QUARANTINE_TABLE):
        return 0, []
    row = conn.execute(f"SELECT count(*) FROM {MIRROR_QUARANTINE_TABLE}").fetchone()
    count = int(row[0]) if row is not None else 0
    recent = [{"table": t, "key": k.hex() if isinstance(k, bytes) else k, "reason": r,
               "at": at} for t, k, r, at in conn.execute(
        f"SELECT tbl, k, reason, at FROM {MIRROR_QUARANTINE_TABLE} "
        "ORDER BY at DESC, tbl, k LIMIT ?", (shown,))]
    return count, recent


def row_key(table: TableConfig) -> Callable[[Sequence[Any]], Key]:
    """The key of a row of `table` (its columns in declared order)."""
    positions = [table.column_names.index(c) for c in table.primary_key]
    return lambda row: tuple(row[i] for i in positions)


def recorded(table: TableConfig, refused: Iterable[Refused], at: float
             ) -> tuple[tuple[str, Any, str, float], ...]:
    """Refused rows as `QuarantineMirrorRows.add` holds them."""
    return tuple((r.table, stored_key(table, r.key), r.reason, at) for r in refused)


#: A row with its SQL literal, ready to go into a multi-row statement.
Item = tuple[Sequence[Any], bytes]


class RowSender:
    """Upserts rows of one table, setting aside those the mirror cannot hold."""

    def __init__(self, table: TableConfig, config: MirrorConfig, literals: Literals,
                 per_statement: int) -> None:
        self.table = table
        self.check = RowCheck(table, config)
        self.literals = literals
        self.scope = literals.value(config.scope)
        self.prefix = upsert_prefix(table, config)
        self.suffix = upsert_suffix(table)
        self.per_statement = per_statement
        self.key = row_key(table)

    def batches(self, rows: Iterable[Sequence[Any]], refused: list[Refused]
                ) -> Iterator[list[Item]]:
        """`rows` as statement-sized batches of literals; rows that cannot be sent go to
        `refused` instead (may run on another thread than `send`)."""
        batch: list[Item] = []
        for row in rows:
            reason = self.check.refusal(row)
            if reason is None:
                try:
                    batch.append((row, self.literals.row(self.scope, row)))
                except (UnicodeError, ValueError, TypeError) as exc:
                    reason = f"the driver cannot encode the row: {exc}"
            if reason is not None:
                refused.append(Refused(self.table.name, self.key(row), reason))
            elif len(batch) >= self.per_statement:
                yield batch
                batch = []
        if batch:
            yield batch

    def statement(self, batch: Sequence[Item]) -> bytes:
        return self.prefix + b",".join(literal for _, literal in batch) + self.suffix

    def send(self, cursor: Any, batch: Sequence[Item], refused: list[Refused],
             statement: bytes | None = None) -> None:
        """Execute one batch; one the server refuses for a row's data is halved until
        the refused rows are alone (those go to `refused`). Other errors propagate."""
        try:
            cursor.execute(statement if statement is not None else self.statement(batch))
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(batch) == 1:
                refused.append(Refused(self.table.name, self.key(batch[0][0]),
                                       f"the server refused it: {mysql_error(exc)}"))
                return
            half = len(batch) // 2
            self.send(cursor, batch[:half], refused)
            self.send(cursor, batch[half:], refused)

    def upsert(self, cursor: Any, rows: Iterable[Sequence[Any]]) -> list[Refused]:
        """Upsert `rows` in the caller's transaction; returns those set aside."""
        refused: list[Refused] = []
        for batch in self.batches(rows, refused):
            self.send(cursor, batch, refused)
        return refused
