"""Per-table checksums: a table's row count and a SHA-256 of its rows in key order.

The Writer records them in the message log at stop (when the log keeps full
payloads), and `sqlwarden replay --reexecute` computes the same over its
re-executed database, so the two can be compared even after the device's
database has moved on.
"""

from __future__ import annotations

from typing import Any

import apsw

from sqlwarden.config import TableConfig
from sqlwarden.db.sql import column_list, quote
from sqlwarden.views import TableChecksum


def canonical(value: Any) -> bytes:
    """One value with its storage class, unambiguous next to its neighbours."""
    if value is None:
        return b"N"
    if isinstance(value, int):
        return b"I%d;" % value
    if isinstance(value, float):
        # The exact bits, so 1.0 and 1.0000000000000002 stay apart.
        return b"F" + value.hex().encode("ascii") + b";"
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"T%d:" % len(data) + data
    data = bytes(value)
    return b"B%d:" % len(data) + data


def table_checksum(conn: apsw.Connection, table: TableConfig) -> TableChecksum:
    """`table`'s checksum over its declared columns, read in primary-key order."""
    # Imported here, not with the module: the engine's own imports must not load
    # OpenSSL before the mirror's driver does (see `mirror.driver`).
    import hashlib

    digest = hashlib.sha256()
    rows = 0
    for row in conn.execute(f"SELECT {column_list(table.column_names)} FROM "
                            f"{quote(table.name)} ORDER BY {column_list(table.primary_key)}"):
        rows += 1
        digest.update(b"R")
        for value in row:
            digest.update(canonical(value))
    return TableChecksum(table=table.name, rows=rows, digest=digest.hexdigest())
