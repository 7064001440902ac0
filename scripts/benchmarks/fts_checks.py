"""The `docs` table's FTS5 index as fts, fts-share and sync check it after a run: its
triggers, the rowids a query matches, FTS5's integrity-check, and its restore as JSON
and as text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import apsw

from sqlwarden.views import FtsRestoreResult

#: The start of a config with the `docs` table (fts and sync add to it): its first columns.
DOCS_YAML = """
database:
  path: {path}
tables:
  docs:
    columns:
      id: {{type: integer, primary_key: true}}
      title: {{type: text, not_null: true}}
      body: text"""
#: The `docs` table's FTS index, after its columns (and indexes).
DOCS_FTS_YAML = """
    fts:
      columns: [title, body]"""
FTS_TABLE = "docs"
FTS_INDEX = "docs_fts"
FTS_TRIGGERS = ("docs_fts_ai", "docs_fts_ad", "docs_fts_au")
#: Per query: the expression, how many rowids it matched, sha256 over them in order.
Fingerprint = tuple[tuple[str, int, str], ...]


def trigger_problem(conn: apsw.Connection) -> str | None:
    """None when the index's triggers on `docs` are all there (and no other), else what is
    wrong: `triggers on docs are [...], expected [...]`."""
    triggers = {name for name, in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (FTS_TABLE,))}
    if triggers == set(FTS_TRIGGERS):
        return None
    return f"triggers on {FTS_TABLE} are {sorted(triggers)}, expected {list(FTS_TRIGGERS)}"


def row_count(conn: apsw.Connection) -> int:
    (count,), = conn.execute(f"SELECT count(*) FROM {FTS_TABLE}")
    return int(count)


def matching_rowids(conn: apsw.Connection, expr: str) -> list[int]:
    """The rowids the MATCH expression `expr` finds, in order."""
    return [rowid for rowid, in conn.execute(
        f"SELECT rowid FROM {FTS_INDEX} WHERE {FTS_INDEX} MATCH ? ORDER BY rowid", (expr,))]


def fingerprint_entry(expr: str, hits: list[int]) -> tuple[str, int, str]:
    """One query's part of a Fingerprint."""
    return expr, len(hits), hashlib.sha256(",".join(map(str, hits)).encode()).hexdigest()


def integrity_problem(conn: apsw.Connection) -> str | None:
    """None when FTS5's integrity-check passes (with rank 1, which also compares the index
    with the content table), else its error."""
    try:
        conn.execute(f"INSERT INTO {FTS_INDEX} ({FTS_INDEX}, rank) VALUES ('integrity-check', 1)")
    except apsw.Error as exc:
        return str(exc)
    return None


def fingerprint(conn: apsw.Connection, expressions: Sequence[str]) -> Fingerprint:
    """What each MATCH expression finds, to compare with another database's."""
    return tuple(fingerprint_entry(expr, matching_rowids(conn, expr)) for expr in expressions)


def restore_json(result: FtsRestoreResult) -> dict[str, Any]:
    """A restore's duration and, per index, its mode and size."""
    return {"duration_ms": round(result.duration_ms, 1),
            "tables": [{"fts": t.fts, "mode": t.mode, "changed_rows": t.changed_rows,
                        "table_rows": t.table_rows} for t in result.tables]}


def describe_restore(restore: dict[str, Any]) -> str:
    """`restore_json`'s result as printed: `rebuild (2,000 of 12,000 rows) in 0.41 s`."""
    return ", ".join(f"{t['mode']} ({t['changed_rows']:,} of {t['table_rows']:,} rows)"
                     for t in restore["tables"]) + f" in {restore['duration_ms'] / 1000:.2f} s"
