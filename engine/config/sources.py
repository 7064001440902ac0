"""The `sources` section: the kinds of source, their schedules, and record mapping.

A mapped source (ndjson, http) writes one declared table: `fields` says which
record field fills each column, and `key` which columns upserts match on. The
generator source writes the demo's two tables, which must have the columns it
writes (`GENERATOR_COLUMNS`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlwarden.config.at import At, converted, hint, optional
from sqlwarden.config.model import (
    GENERATOR_COLUMNS,
    ColumnConfig,
    FieldMap,
    GeneratorSourceConfig,
    HttpSourceConfig,
    NdjsonSourceConfig,
    SourceConfig,
    TableConfig,
)
from sqlwarden.config.paths import resolve
from sqlwarden.redact import Redactor

SOURCE_KINDS = ("ndjson", "http", "generator")
REJECT_POLICIES = ("keep", "fail")
_COMMON_SOURCE_KEYS = ("kind", "every", "retries", "on_reject", "memory_limit_mb", "batch_rows")
_MAPPED_SOURCE_KEYS = (*_COMMON_SOURCE_KEYS, "table", "key", "fields")
_SOURCE_KEYS = {
    "generator": (*_COMMON_SOURCE_KEYS, "registry_table", "observations_table",
                  "registry_rows", "observation_rows", "seed"),
    "ndjson": (*_MAPPED_SOURCE_KEYS, "path", "max_record_mb"),
    "http": (*_MAPPED_SOURCE_KEYS, "url", "updated", "since_param", "page_param",
             "page_size_param", "page_size", "records_at", "total_at", "next_at", "full_every",
             "timeout_s", "headers", "secret_headers", "max_pages", "max_page_mb"),
}
#: What a header name may be (an RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_sources(at: At, tables: tuple[TableConfig, ...], base: Path,
                  check_paths: bool) -> tuple[SourceConfig, ...]:
    """The `sources` section; a mapped source's table must be among `tables`."""
    by_name = {t.name: t for t in tables}
    sources: list[SourceConfig] = []
    for name, spec in at.named_items("source"):
        kind_at = spec.mapping_value("kind")
        if kind_at is None:
            raise spec.error(f"expected a 'kind' (one of: {', '.join(SOURCE_KINDS)})")
        kind = kind_at.choice(SOURCE_KINDS)
        keys = spec.mapping(_SOURCE_KEYS[kind])
        # What every kind has; a key left out keeps the dataclass's default.
        common: dict[str, Any] = {
            "name": name,
            "every_s": optional(keys, "every", lambda a: a.duration(minimum=0.001), None)}
        if "retries" in keys:
            common["retries_s"] = tuple(v.duration() for v in keys["retries"].sequence())
        common |= converted(keys, {
            "on_reject": lambda a: a.choice(REJECT_POLICIES),
            "memory_limit_mb": lambda a: a.integer(1, 1 << 20),
            "batch_rows": lambda a: a.integer(1, 1_000_000),
        })
        if kind == "generator":
            sources.append(_generator_source(spec, keys, by_name, common))
            continue
        table_at = keys.get("table")
        if table_at is None:
            raise spec.error("missing required key 'table' (the table its records go to)")
        table = by_name.get(table_at.identifier("table name"))
        if table is None:
            raise table_at.error(f"table {table_at.value!r} is not declared"
                                 + hint(str(table_at.value), by_name))
        common["table"] = table.name
        common["fields"] = _fields(keys.get("fields"), table)
        common["key"] = _source_key(keys.get("key"), spec, table, common["fields"])
        if kind == "ndjson":
            sources.append(_ndjson_source(spec, keys, base, check_paths, common))
        else:
            sources.append(_http_source(spec, keys, table, common))
    return tuple(sources)


def _generator_source(spec: At, keys: dict[str, At], by_name: dict[str, TableConfig],
                      common: dict[str, Any]) -> GeneratorSourceConfig:
    defaults = GeneratorSourceConfig(name=common["name"])
    for role, needed in GENERATOR_COLUMNS.items():
        table_name = (keys[role].identifier("table name") if role in keys
                      else getattr(defaults, role))
        where = keys.get(role, spec)
        table = by_name.get(table_name)
        if table is None:
            raise where.error(f"table {table_name!r} is not declared"
                              + hint(table_name, by_name))
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise where.error(f"the generator writes columns {', '.join(needed)}; table "
                              f"{table_name!r} lacks {', '.join(missing)}")
    return GeneratorSourceConfig(**common, **converted(keys, {
        "registry_table": lambda a: a.identifier("table name"),
        "observations_table": lambda a: a.identifier("table name"),
        "registry_rows": lambda a: a.integer(1, 10**9),
        "observation_rows": lambda a: a.integer(0, 10**10),
        "seed": lambda a: a.integer(0, 2**62),
    }))


def _fields(at: At | None, table: TableConfig) -> tuple[FieldMap, ...]:
    """The column mapping; without `fields`, every column from the record field of its name."""
    if at is None:
        return tuple(FieldMap(column=c.name, path=(c.name,), type=c.type,
                              required=_needs_value(table, c)) for c in table.columns)
    if not isinstance(at.value, dict) or not at.value:
        raise at.error("expected a mapping of column: record field (or {from, required, "
                       "default})")
    fields = []
    for column_name in at.value:
        item = at.child(column_name)
        if column_name not in table.column_names:
            raise item.error(f"table {table.name!r} has no column {column_name!r}"
                             + hint(str(column_name), table.column_names))
        column = table.column(column_name)
        required = _needs_value(table, column)
        default = None
        if isinstance(item.value, str):
            path_text = item.value
        else:
            spec = item.mapping(("from", "required", "default"))
            path_text = spec["from"].string() if "from" in spec else column.name
            required = optional(spec, "required", At.boolean, required)
            if "default" in spec:
                default = spec["default"].scalar()
        path = tuple(path_text.split("."))
        if not all(path):
            raise item.error(f"record field {path_text!r} is not a dotted path of keys")
        fields.append(FieldMap(column=column.name, path=path, type=column.type,
                               required=required and default is None, default=default))
    return tuple(fields)


def _needs_value(table: TableConfig, column: ColumnConfig) -> bool:
    """A column a record must give: part of the key, or NOT NULL without a default."""
    return column.name in table.primary_key or (column.not_null and column.default is None)


def _source_key(at: At | None, spec: At, table: TableConfig,
                fields: tuple[FieldMap, ...]) -> tuple[str, ...]:
    mapped = {f.column for f in fields}
    if at is None:
        key = table.primary_key
        where = spec
    else:
        key = at.column_names(list(table.column_names))
        where = at
        unique = {c.name for c in table.columns if c.unique}
        if key != table.primary_key and not (len(key) == 1 and key[0] in unique):
            raise at.error(f"the key {', '.join(key)} is neither the primary key of "
                           f"{table.name!r} nor a unique column; upserts need one of those")
    if not key:
        raise where.error(f"table {table.name!r} has no primary key for upserts to match on")
    missing = [c for c in key if c not in mapped]
    if missing:
        raise where.error(f"key column {', '.join(missing)} is not mapped from the record")
    return key


def _ndjson_source(spec: At, keys: dict[str, At], base: Path, check_paths: bool,
                   common: dict[str, Any]) -> NdjsonSourceConfig:
    path_at = keys.get("path")
    if path_at is None:
        raise spec.error("missing required key 'path' (the directory of .ndjson files)")
    path = resolve(base, path_at)
    if check_paths and path.exists() and not path.is_dir():
        raise path_at.error(f"{path} is not a directory")
    return NdjsonSourceConfig(**common, path=path, **converted(keys, {
        "max_record_mb": lambda a: a.number(0.001, 1024.0)}))


def _http_source(spec: At, keys: dict[str, At], table: TableConfig,
                 common: dict[str, Any]) -> HttpSourceConfig:
    d = HttpSourceConfig(name="", table="")
    url_at = keys.get("url")
    if url_at is None:
        raise spec.error("missing required key 'url' (the API's first page)")
    url, basic_auth = _http_url(url_at)
    updated = optional(keys, "updated", lambda a: a.identifier("column name"), d.updated)
    if updated not in {f.column for f in common["fields"]}:
        raise keys.get("updated", spec).error(
            f"the cursor column {updated!r} is not mapped from the record (set 'updated' to "
            "the column holding each record's last change)")
    headers: tuple[tuple[str, str], ...] = ()
    if "headers" in keys:
        head = keys["headers"]
        if not isinstance(head.value, dict):
            raise head.error("expected a mapping of header name: value")
        headers = tuple((_header_name(head.child(k), str(k)), _header_value(head.child(k)))
                        for k in head.value)
    secret_headers: tuple[str, ...] = ()
    if "secret_headers" in keys:
        secret_headers = tuple(_header_name(a, a.string())
                               for a in keys["secret_headers"].sequence())
    optional_text: Callable[[At], str | None] = lambda a: (  # noqa: E731
        None if a.value is None else a.string())
    if "max_page_mb" not in keys:
        # Parsed, a page of small objects takes several times its bytes: with a low
        # `memory_limit_mb`, the default page cap shrinks so one page cannot pass it.
        memory = common.get("memory_limit_mb", d.memory_limit_mb)
        common["max_page_mb"] = min(d.max_page_mb, memory / 8)
    return HttpSourceConfig(
        **common, url=url, updated=updated, **converted(keys, {
            "since_param": At.string,
            "page_param": At.string,
            "page_size_param": optional_text,
            "page_size": lambda a: a.integer(1, 1_000_000),
            "records_at": optional_text,
            "total_at": optional_text,
            "next_at": optional_text,
            "timeout_s": lambda a: a.number(0.01, 3600.0),
            "max_pages": lambda a: a.integer(1, 10_000_000),
            "max_page_mb": lambda a: a.number(0.001, 4096.0),
        }),
        full_every_s=optional(keys, "full_every",
                              lambda a: None if a.value is None else a.duration(minimum=1.0),
                              d.full_every_s),
        headers=headers, secret_headers=secret_headers, basic_auth=basic_auth)


def _http_url(at: At) -> tuple[str, tuple[str, str] | None]:
    """The URL without its userinfo, and the userinfo as (user, password) for Basic auth.

    A password in the URL is a credential: it must never reach a host lookup, a
    log line or an error, so an error here shows the URL with it redacted.
    """
    url = at.string()
    shown = Redactor().text(url)
    if not re.match(r"https?://[^/\s]+", url):
        raise at.error(f"expected an http:// or https:// URL, got {shown!r}")
    parts = urllib.parse.urlsplit(url)
    userinfo, at_sign, host = parts.netloc.rpartition("@")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or any(c.isspace() for c in host):
        raise at.error(f"expected an http:// or https:// URL with a host and a valid port, "
                       f"got {shown!r} (percent-encode '/', '?', '#' and '@' in a password)")
    if not at_sign:
        if "@" in url.partition("://")[2]:
            # `http://user:12/secret@host/`: a '/' in the password ends the host part at
            # "user:12", and the rest would go to a host named "user". Which '@' was
            # meant cannot be told apart from a path holding one: refused.
            raise at.error(f"the URL {shown!r} has an '@' after its host: percent-encode "
                           "'/', '?' and '#' in a user or password (and write an '@' in "
                           "the path as %40)")
        return url, None
    user, _, password = userinfo.partition(":")
    return (urllib.parse.urlunsplit(parts._replace(netloc=host)),
            (urllib.parse.unquote(user), urllib.parse.unquote(password)))


def _header_name(at: At, name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise at.error(f"{name!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
    return name


def _header_value(at: At) -> str:
    value = at.string()
    # A line break would start a header (or a request) the config never named.
    if any(c in value for c in "\r\n\0"):
        raise at.error("a header value may not hold a line break or a NUL character")
    return value
