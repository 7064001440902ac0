"""The `mirror` section: the MySQL DSN, the mirrored tables and the device's scope.

`parse_dsn` is public (tests read DSNs with it too). A table is mirrored only
when its values stay comparable on both sides (see `_unmirrorable`).
"""

from __future__ import annotations

import re
import urllib.parse

from sqlwarden.config.at import At, converted, hint, optional
from sqlwarden.config.model import MirrorConfig, MysqlDsn, TableConfig
from sqlwarden.db.sql import IDENTIFIER

MIRROR_KEYS = ("enabled", "dsn", "tables", "scope", "scope_column", "key_chars", "batch_rows",
               "range_rows", "poll_ms", "connect_timeout_s", "backoff_initial_s",
               "backoff_max_s", "hosts")
_DSN_FORM = "mysql://user:${PASSWORD_VARIABLE}@host[:port]/database"
_DSN = re.compile(r"(?:mysql|mariadb)://(?P<user>[^:@/?#\s]+)(?::(?P<password>.*))?@"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\s]+)(?::(?P<port>[^/?#]*))?"
                  r"/(?P<database>[^/?#\s]+)(?:\?(?P<query>[^#\s]*))?")
#: One entry of `hosts`: a name or IPv4 address, or an IPv6 address in brackets, and a port.
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")
#: Most entries of `hosts` (a cluster of more nodes is reached through some of them).
MAX_HOSTS = 16


def parse_dsn(text: str) -> MysqlDsn:
    """A `MysqlDsn` from `mysql://user:password@host:port/database[?socket=PATH]`.

    The password runs to the last `@` and is not URL-decoded, so one from the
    environment may hold any character.

    Raises `ValueError` with a message that never repeats the password.
    """
    match = _DSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a DSN of the form {_DSN_FORM}")
    port_text = match.group("port")
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"the DSN's port {port_text!r} is not a number from 1 to 65535")
    options = urllib.parse.parse_qs(match.group("query") or "", keep_blank_values=True)
    unknown = sorted(set(options) - {"socket"})
    if unknown:
        raise ValueError(f"unknown DSN option {unknown[0]!r}; the only option is socket=PATH")
    database = match.group("database")
    if IDENTIFIER.fullmatch(database) is None:
        raise ValueError(f"the DSN's database name {database!r} is not allowed: use letters, "
                         "digits and underscores")
    host = match.group("host")
    # Taken as written, not URL-decoded: a password from the environment is raw.
    return MysqlDsn(user=match.group("user"), password=match.group("password") or "",
                    host=host.strip("[]"), port=int(port_text) if port_text else 3306,
                    database=database, socket=options["socket"][0] if "socket" in options
                    else None)


def parse_mirror(at: At, tables: tuple[TableConfig, ...]) -> MirrorConfig:
    """The `mirror` section; every mirrored table must be declared and mirrorable."""
    keys = at.mapping(MIRROR_KEYS, required=("dsn", "scope"))
    try:
        dsn = parse_dsn(keys["dsn"].string())
    except ValueError as exc:
        raise keys["dsn"].error(str(exc)) from None
    by_name = {t.name: t for t in tables}
    if "tables" in keys:
        names = [item.identifier("table name") for item in keys["tables"].sequence()]
    else:
        names = list(by_name)
    if not names:
        raise keys.get("tables", at).error("expected at least one table to mirror")
    for i, name in enumerate(names):
        where = keys["tables"].child(i) if "tables" in keys else at
        table = by_name.get(name)
        if table is None:
            raise where.error(f"table {name!r} is not declared under 'tables'"
                              f"{hint(name, by_name)}; only declared tables can be mirrored")
        if names.index(name) != i:
            raise where.error(f"table {name!r} is listed twice")
        problem = _unmirrorable(table)
        if problem:
            raise where.error(f"table {name!r} cannot be mirrored: {problem}")
    scope = str(keys["scope"].scalar())
    if not scope or len(scope) > 64:
        raise keys["scope"].error("expected the device's scope value: 1 to 64 characters")
    scope_column = optional(keys, "scope_column", lambda a: a.identifier("column name"),
                            MirrorConfig(dsn=dsn, tables=(), scope="").scope_column)
    for name in names:
        if scope_column in by_name[name].column_names:
            raise keys.get("scope_column", at).error(
                f"table {name!r} already has a column {scope_column!r}; choose another "
                "scope_column")
    values = converted(keys, {
        "enabled": At.boolean,
        "key_chars": lambda a: a.integer(1, 768),
        "batch_rows": lambda a: a.integer(1, 100_000),
        "range_rows": lambda a: a.integer(10, 10_000_000),
        "poll_ms": lambda a: a.integer(10, 60_000),
        "connect_timeout_s": lambda a: a.number(0.1, 600.0),
        "backoff_initial_s": lambda a: a.number(0.01, 3600.0),
        "backoff_max_s": lambda a: a.number(0.01, 86400.0),
    })
    if "hosts" in keys:
        values["hosts"] = _hosts(keys["hosts"])
        if dsn.socket:
            raise keys["hosts"].error("hosts replace the DSN's host and port; a DSN with "
                                      "?socket= has none: leave out one or the other")
    config = MirrorConfig(dsn=dsn, tables=tuple(names), scope=scope, scope_column=scope_column,
                          **values)
    if config.backoff_max_s < config.backoff_initial_s:
        raise keys.get("backoff_max_s", at).error(
            f"backoff_max_s ({config.backoff_max_s:g}) is less than backoff_initial_s "
            f"({config.backoff_initial_s:g})")
    return config


def split_host(text: str) -> tuple[str, int]:
    """(host, port) of a `hosts` entry already validated: `[::1]:3306` -> ('::1', 3306)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _hosts(at: At) -> tuple[str, ...]:
    """The `hosts` list: 1 to 16 distinct "host:port" entries, each port 1 to 65535."""
    items = at.sequence()
    if not 1 <= len(items) <= MAX_HOSTS:
        raise at.error(f"expected 1 to {MAX_HOSTS} entries of the form host:port, got "
                       f"{len(items)}")
    seen: list[str] = []
    for item in items:
        text = item.string().strip()
        match = _HOST.fullmatch(text)
        if match is None:
            raise item.error(f"expected host:port (an IPv6 address as [::1]:3306), got "
                             f"{text[:60]!r}")
        port = int(match.group("port"))
        if not 0 < port < 65536:
            raise item.error(f"the port of {text!r} is not a number from 1 to 65535")
        host = match.group("host")
        # One spelling per host, so a duplicate is found whatever the case.
        entry = f"{host.lower()}:{port}"
        if entry in seen:
            raise item.error(f"host {text!r} is listed twice")
        seen.append(entry)
    return tuple(seen)


def _unmirrorable(table: TableConfig) -> str:
    """Why `table` cannot be mirrored with comparable values, or ''."""
    if not table.strict:
        return "it is not STRICT, so a column may hold values of any type"
    for column in table.columns:
        if column.type == "any":
            return f"column {column.name!r} has type 'any'; the mirror needs one type per column"
    if len(table.primary_key) > 1:
        for name in table.primary_key:
            if table.column(name).type == "blob":
                return f"blob column {name!r} is part of a compound primary key"
    return ""
