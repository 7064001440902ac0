"""The MySQL dialect of the mirror: driver, connection, type mapping, digests, statements.

Type mapping (SQLite logical type -> mirror column), chosen so that a value
reads back equal to what SQLite holds and both sides order keys alike:

| logical type        | key column                          | other column          |
|---------------------|-------------------------------------|-----------------------|
| integer, boolean    | BIGINT                              | BIGINT                |
| real                | DOUBLE                              | DOUBLE                |
| text                | VARCHAR(n) utf8mb4_nopad_bin        | LONGTEXT utf8mb4_bin  |
| timestamp           | VARCHAR(64) utf8mb4_nopad_bin       | VARCHAR(64) utf8mb4_bin |
| blob                | VARBINARY(767)                      | LONGBLOB              |

A text key column is as wide as an InnoDB index can hold: every index of
a mirror table is at most 3072 bytes, utf8mb4 counts 4 bytes a character,
and the scope column (64 characters) and the digest share it, so a table
with one text key holds keys of up to 703 characters (`key_widths`; the
config's `key_chars` can only narrow it).

A value the mirror cannot hold as it is (a non-finite float, a key or a
timestamp longer than its column) is never sent: `refusal` names why, and
the row is quarantined (`sqlwarden.mirror.quarantine`). So is a row the
server refuses (`ROW_ERRNOS`): those errors are about one row's data, not
the table or the connection.

Timestamps stay the exact text SQLite stores (ISO-8601), so fractional
seconds and offsets are never rounded away. Text keys use a binary NO PAD
collation: it orders by code point, as SQLite's BINARY collation orders
UTF-8, and does not treat 'a' and 'a ' as the same key. Every table gains
the scope column, which leads its primary key, and `sw_digest`, a stored
generated column holding CRC32 of the row's canonical encoding (below),
computed by the server itself so an edit made behind the engine's back
changes it too.

Canonical encoding of a row: each column in declared order, then `;`:
NULL is `N`; an integer `I` and its decimal digits; a real `R` and the
shortest text that reads back as the same double, in MariaDB's layout (see
`mariadb_real`); text `T`, its length in UTF-8 bytes, `:`, the text; a blob
`B` and its upper-case hex. Both sides build the same bytes: SQLite in SQL
(with `sw_real` for reals), the server in the generated column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlwarden.config import ColumnConfig, IndexConfig, MirrorConfig, MysqlDsn, TableConfig
from sqlwarden.db.sql import quote
from sqlwarden.errors import MirrorError
from sqlwarden.mirror.driver import load_driver
from sqlwarden.redact import Redactor

#: Column holding each mirror row's CRC32 of its canonical encoding.
DIGEST_COLUMN = "sw_digest"
TIMESTAMP_CHARS = 64
BLOB_KEY_BYTES = 767
#: Characters of the scope column (the value is validated to fit).
SCOPE_CHARS = 64
#: What one InnoDB index may hold (utf8mb4 counts 4 bytes per character).
INDEX_BYTES = 3072
CHAR_BYTES = 4
#: Bytes a fixed-width column takes in an index, by logical type.
_FIXED_KEY_BYTES = {"integer": 8, "boolean": 8, "real": 8,
                    "timestamp": TIMESTAMP_CHARS * CHAR_BYTES, "blob": BLOB_KEY_BYTES}
#: Seconds a statement may take before the connection counts as lost.
QUERY_TIMEOUT_S = 120

#: Errors that mean the server is (for now) out of reach or too busy: the
#: mirror goes `down` and reconnects with backoff.
RETRYABLE_ERRNOS = frozenset({
    1040,  # too many connections
    1047,  # a cluster node not ready: "WSREP has not yet prepared node for application use"
    1053,  # server shutdown in progress
    1152, 1153, 1158, 1159, 1160, 1161,  # aborted connection, packet errors
    # An error during COMMIT: nothing was committed. On Galera it is a node that lost
    # the primary component mid-transaction ("Not connected to Primary Component"),
    # which the next host takes over.
    1180,
    1129,  # host blocked after too many connection errors (until FLUSH HOSTS)
    1203, 1226,  # the user's connection or resource limit: others may disconnect
    # Lock wait timeout and deadlock (Galera's certification conflict too): retried whole
    # on the same connection first (`CONFLICT_ERRNOS`); only when that keeps failing is
    # the connection given up like an outage.
    1205,
    1213,
    1317,  # query interrupted
    1927,  # connection killed
    2002,  # can't connect through the socket
    2003,  # can't connect to host
    2005,  # unknown host (DNS may come back)
    2006,  # server has gone away
    2013,  # lost connection during query
    2026,  # SSL connection error
    2055,  # lost connection at ...
    4031,  # disconnected by the server because of inactivity
})
#: The transaction lost to another one: a deadlock, a lock wait that timed out, or on
#: Galera a certification conflict (1213 on a statement or on COMMIT). Nothing is wrong
#: with the connection: the whole transaction is rolled back and sent again on it.
CONFLICT_ERRNOS = frozenset({1205, 1213})
#: Tries of one transaction that keeps meeting conflicts before the connection is given up,
#: and the time they may take in all (each lock wait timeout costs the server's
#: `innodb_lock_wait_timeout`, 50 s by default): no new try starts past it.
CONFLICT_TRIES = 8
CONFLICT_BUDGET_S = 60.0
#: The first wait after a conflict; it doubles up to `CONFLICT_WAIT_MAX_S`.
CONFLICT_WAIT_S = 0.05
CONFLICT_WAIT_MAX_S = 2.0
#: The server refused the login or the database: the config (DSN, password) is at fault.
LOGIN_ERRNOS = frozenset({1044, 1045, 1698, 1049})
#: Errors that trying again will not fix: the mirror stops (state `failed`)
#: until it is asked again or the engine restarts.
FATAL_ERRNOS = frozenset({
    1044, 1045, 1698,  # access denied
    1049,  # unknown database
    1064,  # syntax error
    1142, 1143,  # command or column denied
    1146,  # table does not exist
    1054,  # unknown column
    1366, 1406, 1264,  # value does not fit the column
    1118,  # row size too large
    1071,  # key too long
})
#: Errors about one row's data, not the table or the connection: a statement that
#: meets one is retried in halves to find the row(s), which are quarantined.
ROW_ERRNOS = frozenset({
    1048,  # column cannot be null
    1264, 1690,  # value out of range
    1292,  # incorrect (date, number) value
    1366,  # incorrect string value (not valid in the column's character set)
    1406,  # data too long for the column
    3140,  # invalid JSON
    4025,  # CHECK constraint failed
})


def is_row_error(exc: BaseException) -> bool:
    """Whether the server refused a statement for a row's data (see `ROW_ERRNOS`)."""
    errno = getattr(exc, "errno", None)
    return errno in ROW_ERRNOS


def is_conflict(exc: BaseException) -> bool:
    """Whether a transaction lost to another and can be sent again whole (`CONFLICT_ERRNOS`)."""
    return getattr(exc, "errno", None) in CONFLICT_ERRNOS


def conflict_wait_s(attempt: int) -> float:
    """The wait before sending a transaction again after its `attempt`-th conflict."""
    return min(CONFLICT_WAIT_MAX_S, CONFLICT_WAIT_S * 2 ** max(0, attempt - 1))


def mysql_error(exc: BaseException, *, where: str = "",
                redactor: Redactor | None = None) -> MirrorError:
    """A one-line `MirrorError` for a driver error, classified by errno."""
    if isinstance(exc, MirrorError):
        return exc
    errno = getattr(exc, "errno", None)
    text = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    if errno is None or errno < 0:
        # The driver's own failures (a dropped socket, a timeout) are outages.
        retryable = isinstance(exc, (OSError, TimeoutError)) or _is_interface_error(exc)
    elif errno in RETRYABLE_ERRNOS:
        retryable = True
    elif errno in FATAL_ERRNOS:
        retryable = False
    else:
        # Client-side errors (2000 to 2999) are about the connection; server errors
        # are numbered below 2000 and from 3000 up.
        retryable = 2000 <= errno < 3000
    prefix = f"{where}: " if where else ""
    code = f"MySQL error {errno}: " if errno and errno > 0 else ""
    message = f"{prefix}{code}{text}"
    if redactor is not None:
        message = redactor.text(message)
    return MirrorError(message, errno=errno if errno and errno > 0 else None,
                       retryable=retryable)


def _is_interface_error(exc: BaseException) -> bool:
    errors = getattr(load_driver(), "errors", None)
    return errors is not None and isinstance(exc, (errors.InterfaceError,
                                                   errors.OperationalError))


def connect(dsn: MysqlDsn, *, timeout_s: float) -> Any:
    """Open a connection for the mirror: utf8mb4, UTC, strict, no autocommit."""
    driver = load_driver()
    args: dict[str, Any] = {
        "user": dsn.user, "password": dsn.password, "database": dsn.database,
        "connection_timeout": max(1, round(timeout_s)), "autocommit": False,
        "charset": "utf8mb4", "collation": "utf8mb4_bin", "use_pure": not driver.HAVE_CEXT,
        "get_warnings": False, "raise_on_warnings": False,
        # A server that stops answering (not one that refuses) must become `down`,
        # not hang the mirror: no statement the mirror sends runs anywhere near this.
        "read_timeout": QUERY_TIMEOUT_S, "write_timeout": QUERY_TIMEOUT_S,
    }
    if dsn.socket:
        args["unix_socket"] = dsn.socket
    else:
        args["host"], args["port"] = dsn.host, dsn.port
    conn = driver.connect(**args)
    cursor = conn.cursor()
    # Strict: a value that does not fit fails instead of being cut short.
    cursor.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,"
                   "NO_AUTO_VALUE_ON_ZERO', time_zone = '+00:00'")
    cursor.close()
    return conn


# --- names and types --------------------------------------------------------------------


def mq(name: str) -> str:
    """Quote an identifier for MySQL."""
    return "`" + name.replace("`", "``") + "`"


def column_type(column: ColumnConfig, *, key: bool, key_chars: int) -> str:
    """The mirror column type of a SQLite column (see the table in the module doc)."""
    kind = column.type
    if kind in ("integer", "boolean"):
        return "BIGINT"
    if kind == "real":
        return "DOUBLE"
    if kind == "timestamp":
        collation = "utf8mb4_nopad_bin" if key else "utf8mb4_bin"
        return f"VARCHAR({TIMESTAMP_CHARS}) CHARACTER SET utf8mb4 COLLATE {collation}"
    if kind == "text":
        if key:
            return f"VARCHAR({key_chars}) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
        return "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    if kind == "blob":
        return f"VARBINARY({BLOB_KEY_BYTES})" if key else "LONGBLOB"
    raise MirrorError(f"column {column.name!r} has type {kind!r}, which the mirror cannot "
                      "hold with comparable values")


def _mysql_field(column: ColumnConfig) -> str:
    c = mq(column.name)
    if column.type in ("integer", "boolean"):
        body = f"CONCAT('I',{c})"
    elif column.type == "real":
        body = f"CONCAT('R',{c})"
    elif column.type == "blob":
        body = f"CONCAT('B',HEX({c}))"
    else:
        # As bytes: key and other text columns have different collations.
        body = f"CONCAT('T',LENGTH({c}),':',CAST({c} AS BINARY))"
    return f"IFNULL({body},'N'),';'"


def _sqlite_field(column: ColumnConfig) -> str:
    c = quote(column.name)
    if column.type in ("integer", "boolean"):
        body = f"'I'||{c}"
    elif column.type == "real":
        body = f"'R'||sw_real({c})"
    elif column.type == "blob":
        body = f"'B'||hex({c})"
    else:
        body = f"'T'||octet_length({c})||':'||{c}"
    return f"CASE WHEN {c} IS NULL THEN 'N' ELSE {body} END||';'"


def mysql_canonical(table: TableConfig) -> str:
    """The server-side expression of a row's canonical encoding."""
    return "CONCAT(" + ",".join(_mysql_field(c) for c in table.columns) + ")"


def sqlite_canonical(table: TableConfig) -> str:
    """The SQLite expression of the same encoding (needs `sw_real` on the connection)."""
    return "||".join(_sqlite_field(c) for c in table.columns)


def mariadb_real(value: float) -> str:
    """A double as MariaDB's CONCAT() prints it: shortest round-trip digits.

    Positional notation for decimal exponents from -15 to 14 (and 15 when
    the value has a fraction), otherwise `d.ddde<exp>`; zero is `0`. Checked
    against the server on thousands of random doubles (tests/test_mirror.py).
    """
    if value == 0:
        return "0"
    text = repr(value)
    if 1e-4 <= abs(value) < 1e15:
        # Both print these positionally; repr only adds ".0" to whole numbers.
        return text[:-2] if text.endswith(".0") else text
    return _mariadb_layout(text)


def _mariadb_layout(text: str) -> str:
    sign = "-" if text.startswith("-") else ""
    mantissa, _, exp_text = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    exp = int(exp_text) if exp_text else 0
    if whole.strip("0"):
        point = len(whole.lstrip("0")) + exp
    else:
        point = exp - (len(fraction) - len(fraction.lstrip("0")))
    digits = (whole + fraction).lstrip("0").rstrip("0") or "0"
    sci = point - 1
    if sci >= -15 and (sci < 15 or len(digits) > point):
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        if point >= len(digits):
            return sign + digits + "0" * (point - len(digits))
        return f"{sign}{digits[:point]}.{digits[point:]}"
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{sci}"


def key_widths(table: TableConfig, config: MirrorConfig) -> dict[str, int]:
    """Characters of each text key column: what is left of one index's bytes once the
    scope, the other key columns and the digest are in, shared out (at most `key_chars`)."""
    texts = [c for c in table.primary_key if table.column(c).type == "text"]
    if not texts:
        return {}
    fixed = sum(_FIXED_KEY_BYTES.get(table.column(c).type, 0) for c in table.primary_key
                if c not in texts)
    left = INDEX_BYTES - SCOPE_CHARS * CHAR_BYTES - fixed - 4  # 4: the digest, INT
    width = max(1, min(config.key_chars, left // CHAR_BYTES // len(texts)))
    return {c: width for c in texts}


class RowCheck:
    """Finds, before sending, the values of a row the mirror cannot hold (`refusal`)."""

    def __init__(self, table: TableConfig, config: MirrorConfig) -> None:
        widths = key_widths(table, config)
        key = set(table.primary_key)
        #: (position, column name, most characters or bytes, what it is) to measure
        self._sized: list[tuple[int, str, int, str]] = []
        for i, column in enumerate(table.columns):
            if column.name in widths:
                self._sized.append((i, column.name, widths[column.name], "text key"))
            elif column.type == "timestamp":
                self._sized.append((i, column.name, TIMESTAMP_CHARS, "timestamp text"))
            elif column.type == "blob" and column.name in key:
                self._sized.append((i, column.name, BLOB_KEY_BYTES, "blob key"))
        # Mirrored tables are STRICT: only a REAL column can hold a float.
        self._reals = [(i, c.name) for i, c in enumerate(table.columns) if c.type == "real"]

    def refusal(self, row: Sequence[Any]) -> str | None:
        """Why the mirror cannot hold `row` as it is, or None when it can."""
        for i, name in self._reals:
            value = row[i]
            # A NaN or an infinity has no MySQL DOUBLE (nor a literal the server reads).
            if type(value) is float and not math.isfinite(value):
                return f"non-finite float in column {name} ({value!r})"
        for i, name, most, what in self._sized:
            value = row[i]
            if isinstance(value, (str, bytes)) and len(value) > most:
                unit = "bytes" if isinstance(value, bytes) else "characters"
                return (f"{what} in column {name} is {len(value):,} {unit}; the mirror "
                        f"column holds {most:,}")
        return None


def index_sql(table: TableConfig, config: MirrorConfig, index: IndexConfig) -> str:
    """The mirror's form of a declared secondary index: scope first, text cut to fit.

    Never UNIQUE: uniqueness is SQLite's to enforce, and a unique mirror index would
    make an upsert of one row update another (ON DUPLICATE KEY matches any unique key).
    """
    widths = key_widths(table, config)
    sized: dict[str, int] = {}
    fixed = 0
    for name in index.columns:
        column = table.column(name)
        if column.type in ("integer", "boolean", "real"):
            fixed += 8
        elif name in widths and column.type == "text":
            sized[name] = widths[name] * CHAR_BYTES
        elif column.type == "timestamp":
            sized[name] = TIMESTAMP_CHARS * CHAR_BYTES
        elif column.type == "blob" and name in table.primary_key:
            sized[name] = BLOB_KEY_BYTES
        else:
            sized[name] = 0  # LONGTEXT or LONGBLOB: only a prefix can be indexed
    share = (INDEX_BYTES - SCOPE_CHARS * CHAR_BYTES - fixed) // max(1, len(sized))
    parts = [mq(config.scope_column)]
    for name in index.columns:
        column = table.column(name)
        if name not in sized or (sized[name] and sized[name] <= share):
            parts.append(mq(name))
        elif column.type == "blob":
            parts.append(f"{mq(name)}({share})")
        else:
            parts.append(f"{mq(name)}({share // CHAR_BYTES})")
    return f"INDEX {mq(index.name)} ({', '.join(parts)})"


def create_table_sql(table: TableConfig, config: MirrorConfig) -> str:
    """CREATE TABLE for `table`'s mirror: scope column first, then columns, then the digest,
    with the declared secondary indexes."""
    key = set(table.primary_key)
    widths = key_widths(table, config)
    scope = (f"{mq(config.scope_column)} VARCHAR(64) CHARACTER SET utf8mb4 "
             "COLLATE utf8mb4_nopad_bin NOT NULL")
    columns = [scope]
    for column in table.columns:
        null = " NOT NULL" if column.not_null or column.name in key else " NULL"
        chars = widths.get(column.name, config.key_chars)
        columns.append(f"{mq(column.name)} "
                       f"{column_type(column, key=column.name in key, key_chars=chars)}"
                       f"{null}")
    columns.append(f"{mq(DIGEST_COLUMN)} INT UNSIGNED AS (CRC32({mysql_canonical(table)})) "
                   "STORED")
    pk = ", ".join(mq(n) for n in (config.scope_column, *table.primary_key))
    columns.append(f"PRIMARY KEY ({pk})")
    # Key and digest side by side: a checksum pass reads this narrow index, not the rows.
    columns.append(f"KEY {mq(DIGEST_COLUMN)} ({pk}, {mq(DIGEST_COLUMN)})")
    columns.extend(index_sql(table, config, index) for index in table.indexes)
    return (f"CREATE TABLE IF NOT EXISTS {mq(table.name)} (\n  " + ",\n  ".join(columns)
            + "\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")


def expected_columns(table: TableConfig, config: MirrorConfig) -> list[str]:
    return [config.scope_column, *table.column_names, DIGEST_COLUMN]


# --- statements -------------------------------------------------------------------------


def key_after(columns: Sequence[str], quoter: Any) -> str:
    """`(a, b) > (%s, %s)` spelled out so the server uses the index."""
    return _compare(columns, quoter, ">")


def key_upto(columns: Sequence[str], quoter: Any) -> str:
    return _compare(columns, quoter, "<=")


def _compare(columns: Sequence[str], quoter: Any, op: str) -> str:
    # (a, b) > (x, y)  <=>  a > x OR (a = x AND b > y)
    strict = op[0]
    parts = []
    for i, column in enumerate(columns):
        last = i == len(columns) - 1
        equal = [f"{quoter(c)} = %s" for c in columns[:i]]
        compare = f"{quoter(column)} {op if last else strict} %s"
        parts.append("(" + " AND ".join([*equal, compare]) + ")")
    return "(" + " OR ".join(parts) + ")"


def key_params(key: Sequence[Any]) -> list[Any]:
    """Parameters for `_compare`'s expansion of `key`, in placeholder order."""
    out: list[Any] = []
    for i in range(len(key)):
        out.extend(key[: i + 1])
    return out


def upsert_prefix(table: TableConfig, config: MirrorConfig) -> bytes:
    names = ", ".join(mq(n) for n in (config.scope_column, *table.column_names))
    return f"INSERT INTO {mq(table.name)} ({names}) VALUES ".encode()


def upsert_suffix(table: TableConfig) -> bytes:
    others = [c for c in table.column_names if c not in table.primary_key]
    if not others:
        first = mq(table.primary_key[0])
        return f" ON DUPLICATE KEY UPDATE {first} = {first}".encode()
    return (" ON DUPLICATE KEY UPDATE "
            + ", ".join(f"{mq(c)} = VALUES({mq(c)})" for c in others)).encode()


class Literals:
    """Rows as SQL literals, escaped by the driver (its C code when available)."""

    def __init__(self, conn: Any) -> None:
        cmysql = getattr(conn, "_cmysql", None)
        self._convert = getattr(cmysql, "convert_to_mysql", None)
        self._conn = conn

    def row(self, scope: bytes, row: Sequence[Any]) -> bytes:
        if self._convert is not None:
            return b"(" + scope + b"," + b",".join(self._convert(*row)) + b")"
        conn = self._conn
        parts = [conn.converter.quote(conn.converter.escape(conn.converter.to_mysql(v)))
                 if v is not None else b"NULL" for v in row]
        return b"(" + scope + b"," + b",".join(parts) + b")"

    def value(self, value: Any) -> bytes:
        if value is None:
            return b"NULL"
        if self._convert is not None:
            converted: bytes = self._convert(value)[0]
            return converted
        conn = self._conn
        quoted: bytes = conn.converter.quote(conn.converter.escape(conn.converter.to_mysql(value)))
        return quoted


def upsert_statements(table: TableConfig, config: MirrorConfig, literals: Literals,
                      rows: Iterable[Sequence[Any]], per_statement: int) -> Iterable[bytes]:
    """Multi-row INSERT ... ON DUPLICATE KEY UPDATE statements for `rows`."""
    prefix, suffix = upsert_prefix(table, config), upsert_suffix(table)
    scope = literals.value(config.scope)
    batch: list[bytes] = []
    for row in rows:
        batch.append(literals.row(scope, row))
        if len(batch) >= per_statement:
            yield prefix + b",".join(batch) + suffix
            batch = []
    if batch:
        yield prefix + b",".join(batch) + suffix


def delete_statements(table: TableConfig, config: MirrorConfig, literals: Literals,
                      keys: Sequence[tuple[Any, ...]], per_statement: int) -> Iterable[bytes]:
    """DELETE statements for the rows of this scope with `keys`."""
    scope = literals.value(config.scope)
    where = f"DELETE FROM {mq(table.name)} WHERE {mq(config.scope_column)} = ".encode()
    names = ", ".join(mq(n) for n in table.primary_key)
    for start in range(0, len(keys), per_statement):
        chunk = keys[start:start + per_statement]
        if len(table.primary_key) == 1:
            values = b",".join(literals.value(k[0]) for k in chunk)
            yield where + scope + f" AND {names} IN (".encode() + values + b")"
        else:
            values = b",".join(b"(" + b",".join(literals.value(v) for v in k) + b")"
                               for k in chunk)
            yield where + scope + f" AND ({names}) IN (".encode() + values + b")"
