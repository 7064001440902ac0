"""Status read from the database file alone, for `sqlwarden status`.

It opens a read-only connection, so it works while another process runs the
engine on the same database.
"""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.schema import META_TABLE
from engine.sql import quote
from engine.sqlite import file_size, open_reader


def read_status(config: Config) -> dict[str, Any]:
    """Tables with row counts, engine metadata and file sizes."""
    path = str(config.database.path)
    conn = open_reader(config.database)
    try:
        existing = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta: dict[str, str] = {}
        if META_TABLE in existing:
            meta = {str(k): str(v) for k, v in conn.execute(
                f"SELECT key, value FROM {META_TABLE}")}
        tables = {}
        for table in config.tables:
            if table.name in existing:
                (rows,) = conn.execute(f"SELECT count(*) FROM {quote(table.name)}").fetchall()[0]
                tables[table.name] = {"rows": rows}
            else:
                tables[table.name] = {"rows": None, "missing": True}
    finally:
        conn.close()
    return {
        "database": {
            "path": path,
            "size_bytes": file_size(path),
            "wal_bytes": file_size(path + "-wal"),
            "schema_version": meta.get("schema_version"),
        },
        "tables": tables,
    }
