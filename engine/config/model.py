"""The engine's configuration: frozen dataclasses, validated before anything starts.

`load_config` reads a file; `parse_config` turns text into a `Config` or raises
a `ConfigError` that names the file, the line and the dotted key path, and says
what was expected. Relative paths in the file are taken from the file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlwarden.config.yamldoc import Document, KeyPath, parse_yaml
from sqlwarden.db.sql import IDENTIFIER, is_identifier
from sqlwarden.errors import ConfigError

#: Logical column types and the storage type each gets in SQLite.
#: Timestamps are ISO-8601 text, so they sort and compare as stored.
STORAGE_TYPES = {
    "integer": "INTEGER",
    "real": "REAL",
    "text": "TEXT",
    "blob": "BLOB",
    "boolean": "INTEGER",
    "timestamp": "TEXT",
    "any": "ANY",
}
JOURNAL_MODES = ("wal", "delete", "truncate", "persist")
SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")
FK_ACTIONS = ("no action", "restrict", "set null", "set default", "cascade")
PAYLOAD_MODES = ("summary", "full")
SOURCE_KINDS = ("ndjson", "http", "generator")
REJECT_POLICIES = ("keep", "fail")
TOP_LEVEL_KEYS = ("database", "tables", "tasks", "sources", "progress", "fts_deferral",
                  "mirror", "message_log", "status")
MIRROR_KEYS = ("enabled", "dsn", "tables", "scope", "scope_column", "key_chars", "batch_rows",
               "range_rows", "poll_ms", "connect_timeout_s", "backoff_initial_s",
               "backoff_max_s")
TASK_KEYS = ("version", "table", "key", "set", "call", "reads", "writes", "sql", "where",
             "target_ms", "min_rows", "max_rows", "yield_ms", "provides")
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ForeignKey:
    """A column's reference to another table's column."""

    table: str
    column: str
    on_delete: str = "no action"


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnConfig:
    """One declared column."""

    name: str
    type: str
    not_null: bool = False
    unique: bool = False
    default: str | int | float | None = None
    references: ForeignKey | None = None

    @property
    def storage_type(self) -> str:
        return STORAGE_TYPES[self.type]


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexConfig:
    """A secondary index on declared columns."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsConfig:
    """An external-content FTS5 table kept in step with its table by triggers."""

    name: str
    columns: tuple[str, ...]
    tokenize: str | None = None

    @property
    def trigger_names(self) -> tuple[str, str, str]:
        """Insert, delete and update trigger names, predictable from the FTS name."""
        return (f"{self.name}_ai", f"{self.name}_ad", f"{self.name}_au")


@dataclass(frozen=True, slots=True, kw_only=True)
class TableConfig:
    """One declared table."""

    name: str
    columns: tuple[ColumnConfig, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[IndexConfig, ...] = ()
    fts: FtsConfig | None = None
    strict: bool = True

    def column(self, name: str) -> ColumnConfig:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def rowid_alias(self) -> str | None:
        """The column that is SQLite's rowid (a single INTEGER primary key), if any."""
        if len(self.primary_key) == 1 and self.column(self.primary_key[0]).type == "integer":
            return self.primary_key[0]
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    """Where the database lives and how the writer connection is set up."""

    path: Path
    journal_mode: str = "wal"
    synchronous: str = "normal"
    busy_timeout_ms: int = 5000
    #: Past this WAL size the writer forces a checkpoint (RESTART; TRUNCATE past twice it).
    wal_threshold_mb: float = 64.0
    #: A PASSIVE checkpoint runs once no write has come for this long.
    checkpoint_idle_ms: int = 1000
    #: Read-only connections `Engine.read()` may lend at once.
    readers: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageLogConfig:
    """Where and how every message is recorded."""

    enabled: bool = True
    path: Path | None = None
    payload: str = "summary"
    max_mb: float = 64.0
    backups: int = 5
    #: gzip each rotated file (on its own thread, so logging never waits for it)
    compress: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusConfig:
    """The HTTP status endpoint (`/healthz`, `/status`)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8470


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldMap:
    """Where one target column's value comes from in a source record."""

    column: str
    #: Keys into the record, outermost first (`a.b` in YAML is `("a", "b")`).
    path: tuple[str, ...]
    #: The column's logical type; values are converted to it or rejected.
    type: str
    #: A record without a value here is rejected.
    required: bool = False
    #: Used when the record has no value (null or missing) and the field is optional.
    default: str | int | float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceBase:
    """What every source has: its schedule, retries, rejects policy and memory guard."""

    name: str
    kind: str
    #: Seconds between runs, anchored at the last completion; None runs on request only.
    every_s: float | None = None
    #: Waits before retrying a failed run, one per retry (doubling in the defaults).
    retries_s: tuple[float, ...] = (30.0, 120.0, 480.0)
    #: `keep` stores a bad record in `_sw_rejects` and goes on; `fail` fails the run.
    on_reject: str = "keep"
    #: A run stops with an error once the process's resident memory passes this.
    memory_limit_mb: int = 1024
    #: Records per write transaction.
    batch_rows: int = 2_000


@dataclass(frozen=True, slots=True, kw_only=True)
class MappedSourceBase(SourceBase):
    """A source whose records map onto one table by `fields`."""

    table: str
    #: The key upserts match on (the table's primary key unless set).
    key: tuple[str, ...] = ()
    fields: tuple[FieldMap, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NdjsonSourceConfig(MappedSourceBase):
    """A directory of `.ndjson`/`.jsonl` files, read in name order, resumable mid-file."""

    kind: str = "ndjson"
    path: Path = Path(".")
    #: A longer line is rejected (its first 64 KiB kept in `_sw_rejects`).
    max_record_mb: float = 16.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSourceConfig(MappedSourceBase):
    """A paginated JSON API asked for what changed `since` the newest row stored."""

    kind: str = "http"
    url: str = ""
    #: The target column the cursor is derived from (`MAX(updated)` on the table).
    updated: str = "updated"
    since_param: str = "since"
    page_param: str = "page"
    page_size_param: str | None = "limit"
    page_size: int = 500
    #: Key of the record list in a response (None: the response is the list).
    records_at: str | None = "data"
    #: Key of the total count of matching records, when the API gives it.
    total_at: str | None = None
    #: Key of the next page's URL; when set it is followed instead of page numbers.
    next_at: str | None = None
    #: A full refetch (no `since`) runs when the last successful one is older than this.
    full_every_s: float | None = 86_400.0
    timeout_s: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorSourceConfig(SourceBase):
    """The built-in deterministic source behind the demo."""

    kind: str = "generator"
    registry_table: str = "registry"
    observations_table: str = "observations"
    registry_rows: int = 20_000
    observation_rows: int = 200_000
    seed: int = 1


SourceConfig = GeneratorSourceConfig | NdjsonSourceConfig | HttpSourceConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskConfig:
    """A chunked background task: change `table` one key range at a time.

    The change is one of: `updates` (column = SQL expression pairs, YAML
    `set`), `call` (a Python callable, or its "module:function" name, that
    gets a chunk of rows as dicts with the `reads` columns and returns one
    mapping of `writes` columns per row), or `sql` (a statement run once per
    chunk with `:lo` excluded and `:hi` included as the key range). `where`
    picks the rows the task must change; the task is done when none is left
    at or below the key bound it snapshotted when it started.
    """

    name: str
    table: str
    #: The column chunks are cut along; unique. Default: the single-column primary key.
    key: str | None = None
    version: int = 1
    updates: tuple[tuple[str, str], ...] = ()
    call: str | Callable[[list[dict[str, Any]]], Any] | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    sql: str | None = None
    where: str | None = None
    target_ms: float = 50.0
    min_rows: int = 100
    max_rows: int = 20_000
    #: Pause after each chunk. The Writer already runs queued foreground writes
    #: before a waiting chunk, so this is for gaps other processes need.
    yield_ms: float = 0.0
    #: A name readers can require (`Engine.read(requires=[...])`); the task name works too.
    provides: str | None = None

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def change(self) -> str:
        """`set`, `call` or `sql`: how the task changes a chunk."""
        if self.updates:
            return "set"
        return "call" if self.call is not None else "sql"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressConfig:
    """How progress of long work is persisted."""

    #: Progress is written to the database at most this often per task (plus once at the end).
    persist_interval_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FtsDeferralConfig:
    """When FTS maintenance triggers are dropped during a catch-up, and how they come back."""

    enabled: bool = True
    #: A catch-up of at least this many rows defers; smaller ones keep the triggers live.
    threshold_rows: int = 5000
    #: Past this age a deferral is restored even while sources are still catching up.
    max_age_s: float = 3600.0
    #: Restore by full rebuild when the rows changed since the deferral are more than
    #: this share of the table; otherwise index just those rows. Measured here
    #: (`scripts/bench fts-share`, 250,000-row table): indexing only the changed
    #: rows was 5.4x faster at 20%, 1.3x at 80% and about even at 95%, where the
    #: rebuild wins by also merging the index into one segment.
    rebuild_share: float = 0.95
    #: FTS5's in-memory term buffer while restoring (its default is 1 MB).
    restore_buffer_mb: int = 16
    #: A failed restore is retried after this long, doubling up to `retry_max_s`.
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MysqlDsn:
    """Where the mirror connects; `password` comes from the environment, never from logs."""

    user: str
    password: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 3306
    database: str = ""
    #: A unix socket path (`?socket=/run/mysqld/mysqld.sock`) instead of host:port.
    socket: str | None = None

    @property
    def where(self) -> str:
        """`user@host:port/database`, safe to print."""
        at = self.socket if self.socket else f"{self.host}:{self.port}"
        return f"{self.user}@{at}/{self.database}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorConfig:
    """The MySQL-compatible server that mirrors the device's tables."""

    enabled: bool = True
    dsn: MysqlDsn
    #: Mirrored tables, in the order they are reconciled.
    tables: tuple[str, ...]
    #: This device's value of the scope column; rows of other scopes are never touched.
    scope: str
    scope_column: str = "sw_scope"
    #: Width of a text key column in the mirror (`VARCHAR(n)`; InnoDB keys are limited
    #: to 3072 bytes, 4 per character in utf8mb4).
    key_chars: int = 191
    #: Outbox keys per drain transaction, and rows per multi-row statement.
    batch_rows: int = 1000
    #: Rows per key range when comparing checksums during a reconcile.
    range_rows: int = 10_000
    #: How often an idle mirror looks for new outbox rows.
    poll_ms: int = 200
    connect_timeout_s: float = 5.0
    #: Reconnects wait this long after the first failure, doubling up to `backoff_max_s`.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole validated configuration."""

    database: DatabaseConfig
    tables: tuple[TableConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    tasks: tuple[TaskConfig, ...] = ()
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    fts_deferral: FtsDeferralConfig = field(default_factory=FtsDeferralConfig)
    message_log: MessageLogConfig = field(default_factory=MessageLogConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    mirror: MirrorConfig | None = None
    #: The file this came from, for messages.
    source_file: str | None = None
    #: Values from the environment that must never be written anywhere.
    secrets: frozenset[str] = field(default=frozenset(), repr=False)

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    @property
    def message_log_path(self) -> Path:
        if self.message_log.path is not None:
            return self.message_log.path
        return self.database.path.with_name(self.database.path.name + ".messages.jsonl")


# Generator columns the demo source writes, by target table role.
GENERATOR_COLUMNS = {
    "registry_table": ("id", "org", "name", "body", "updated_at"),
    "observations_table": ("id", "registry_id", "observed_at", "value", "unit"),
}


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None,
                check_paths: bool = True) -> Config:
    """Read and validate the YAML config at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=file) from None
    return parse_config(text, file=str(file), base_dir=file.resolve().parent,
                        environ=environ, check_paths=check_paths)


def parse_config(text: str, *, file: str = "<config>", base_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None, check_paths: bool = True) -> Config:
    """Validate YAML `text` into a `Config`; relative paths are taken from `base_dir`."""
    doc = parse_yaml(text, file=file, environ=environ)
    root = _At(doc, (), doc.value)
    if doc.value is None:
        raise root.error("the config is empty; expected a mapping with a 'database' section")
    sections = root.mapping(TOP_LEVEL_KEYS, required=("database",))
    base = base_dir if base_dir is not None else Path.cwd()

    database = _database(sections["database"], base, check_paths)
    tables = _tables(sections["tables"]) if "tables" in sections else ()
    _check_references(sections.get("tables"), tables)
    sources = (_sources(sections["sources"], tables, base, check_paths) if "sources" in sections
               else ())
    tasks = _tasks(sections["tasks"], tables) if "tasks" in sections else ()
    progress = _progress(sections["progress"]) if "progress" in sections else ProgressConfig()
    fts_deferral = (_fts_deferral(sections["fts_deferral"]) if "fts_deferral" in sections
                    else FtsDeferralConfig())
    message_log = (_message_log(sections["message_log"], base, check_paths)
                   if "message_log" in sections else MessageLogConfig())
    status = _status(sections["status"]) if "status" in sections else StatusConfig()
    mirror = _mirror(sections["mirror"], tables) if "mirror" in sections else None
    config = Config(database=database, tables=tables, sources=sources, tasks=tasks,
                    progress=progress, fts_deferral=fts_deferral, message_log=message_log,
                    status=status, mirror=mirror, source_file=file,
                    secrets=doc.secrets | ({mirror.dsn.password} if mirror and mirror.dsn.password
                                           else set()))
    if check_paths and message_log.enabled and message_log.path is None:
        where = sections.get("message_log", sections["database"])
        _check_writable_path(where, config.message_log_path)
    return config


# --- sections ---------------------------------------------------------------------------


def _database(at: _At, base: Path, check_paths: bool) -> DatabaseConfig:
    keys = at.mapping(("path", "journal_mode", "synchronous", "busy_timeout_ms",
                       "wal_threshold_mb", "checkpoint_idle_ms", "readers"), required=("path",))
    raw_path = keys["path"].string()
    if raw_path in ("", ":memory:") or raw_path.startswith("file:"):
        raise keys["path"].error("expected the path of a database file")
    path = _resolve(base, raw_path)
    if check_paths:
        _check_writable_path(keys["path"], path)
    defaults = DatabaseConfig(path=path)
    return DatabaseConfig(
        path=path,
        journal_mode=_opt(keys, "journal_mode", lambda a: a.choice(JOURNAL_MODES),
                          defaults.journal_mode),
        synchronous=_opt(keys, "synchronous", lambda a: a.choice(SYNCHRONOUS_MODES),
                         defaults.synchronous),
        busy_timeout_ms=_opt(keys, "busy_timeout_ms", lambda a: a.integer(0, 600_000),
                             defaults.busy_timeout_ms),
        wal_threshold_mb=_opt(keys, "wal_threshold_mb", lambda a: a.number(0.01, 1_000_000),
                              defaults.wal_threshold_mb),
        checkpoint_idle_ms=_opt(keys, "checkpoint_idle_ms", lambda a: a.integer(10, 3_600_000),
                                defaults.checkpoint_idle_ms),
        readers=_opt(keys, "readers", lambda a: a.integer(1, 64), defaults.readers),
    )


def _message_log(at: _At, base: Path, check_paths: bool) -> MessageLogConfig:
    keys = at.mapping(("enabled", "path", "payload", "max_mb", "backups", "compress"))
    defaults = MessageLogConfig()
    path = _resolve(base, keys["path"].string()) if "path" in keys else None
    enabled = _opt(keys, "enabled", _At.boolean, defaults.enabled)
    if path is not None and enabled and check_paths:
        _check_writable_path(keys["path"], path)
    return MessageLogConfig(
        enabled=enabled,
        path=path,
        payload=_opt(keys, "payload", lambda a: a.choice(PAYLOAD_MODES), defaults.payload),
        max_mb=_opt(keys, "max_mb", lambda a: a.number(0.01, 100_000), defaults.max_mb),
        backups=_opt(keys, "backups", lambda a: a.integer(0, 1000), defaults.backups),
        compress=_opt(keys, "compress", _At.boolean, defaults.compress),
    )


def _status(at: _At) -> StatusConfig:
    keys = at.mapping(("enabled", "host", "port"))
    defaults = StatusConfig()
    host = _opt(keys, "host", _At.string, defaults.host)
    if not host:
        raise keys["host"].error("expected a host name or address to listen on")
    return StatusConfig(
        enabled=_opt(keys, "enabled", _At.boolean, defaults.enabled),
        host=host,
        port=_opt(keys, "port", lambda a: a.integer(0, 65535), defaults.port),
    )


def _tables(at: _At) -> tuple[TableConfig, ...]:
    items = at.named_items("table")
    tables = tuple(_table(name, spec) for name, spec in items)
    # Tables, indexes, triggers and FTS shadow tables share one namespace in SQLite.
    taken: dict[str, str] = {t.name.lower(): f"table {t.name!r}" for t in tables}
    for table, (_, spec) in zip(tables, items, strict=True):
        names: list[tuple[str, str, _At]] = [
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


def _table(name: str, at: _At) -> TableConfig:
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
                        indexes=indexes, strict=_opt(keys, "strict", _At.boolean, True))
    if "fts" in keys:
        table = _with_fts(table, keys["fts"])
    return table


def _column(name: str, at: _At) -> tuple[ColumnConfig, bool]:
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
        not_null=_opt(keys, "not_null", _At.boolean, False),
        unique=_opt(keys, "unique", _At.boolean, False),
        default=default,
        references=references,
    )
    return column, _opt(keys, "primary_key", _At.boolean, False)


def _references(at: _At) -> ForeignKey:
    if isinstance(at.value, str):
        table, _, column = at.value.partition(".")
        if not (is_identifier(table) and is_identifier(column)):
            raise at.error("expected `table.column` naming the referenced column")
        return ForeignKey(table=table, column=column)
    keys = at.mapping(("table", "column", "on_delete"), required=("table", "column"))
    return ForeignKey(
        table=keys["table"].identifier("table name"),
        column=keys["column"].identifier("column name"),
        on_delete=_opt(keys, "on_delete", lambda a: a.choice(FK_ACTIONS), "no action"),
    )


def _index(table: str, i: int, at: _At, known: list[str]) -> IndexConfig:
    if isinstance(at.value, list):
        columns = at.column_names(known)
        return IndexConfig(name=_index_name(table, columns), columns=columns)
    keys = at.mapping(("columns", "unique", "name"), required=("columns",))
    columns = keys["columns"].column_names(known)
    name = (keys["name"].identifier("index name") if "name" in keys
            else _index_name(table, columns))
    return IndexConfig(name=name, columns=columns,
                       unique=_opt(keys, "unique", _At.boolean, False))


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    return f"idx_{table}_{'_'.join(columns)}"[:64]


def _with_fts(table: TableConfig, at: _At) -> TableConfig:
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
                f"unknown tokenizer {words[0]!r}{_hint(words[0], FTS_TOKENIZERS)}; expected one "
                f"of {', '.join(FTS_TOKENIZERS)}")
    name = (keys["name"].identifier("FTS table name") if "name" in keys
            else f"{table.name}_fts")
    fts = FtsConfig(name=name, columns=columns, tokenize=tokenize)
    return dataclasses.replace(table, fts=fts)


def _check_references(at: _At | None, tables: tuple[TableConfig, ...]) -> None:
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
                                  + _hint(ref.table, by_name))
            if ref.column not in target.column_names:
                raise where.error(f"references column {ref.table}.{ref.column}, which is not "
                                  "declared" + _hint(ref.column, target.column_names))
            if target.primary_key != (ref.column,) and not target.column(ref.column).unique:
                raise where.error(f"references {ref.table}.{ref.column}, which is neither the "
                                  f"primary key of {ref.table} nor unique; SQLite needs one of "
                                  "those")


_COMMON_SOURCE_KEYS = ("kind", "every", "retries", "on_reject", "memory_limit_mb", "batch_rows")
_MAPPED_SOURCE_KEYS = (*_COMMON_SOURCE_KEYS, "table", "key", "fields")
_SOURCE_KEYS = {
    "generator": (*_COMMON_SOURCE_KEYS, "registry_table", "observations_table",
                  "registry_rows", "observation_rows", "seed"),
    "ndjson": (*_MAPPED_SOURCE_KEYS, "path", "max_record_mb"),
    "http": (*_MAPPED_SOURCE_KEYS, "url", "updated", "since_param", "page_param",
             "page_size_param", "page_size", "records_at", "total_at", "next_at", "full_every",
             "timeout_s", "headers"),
}


def _sources(at: _At, tables: tuple[TableConfig, ...], base: Path,
             check_paths: bool) -> tuple[SourceConfig, ...]:
    by_name = {t.name: t for t in tables}
    sources: list[SourceConfig] = []
    for name, spec in at.named_items("source"):
        kind_at = spec.mapping_value("kind")
        if kind_at is None:
            raise spec.error(f"expected a 'kind' (one of: {', '.join(SOURCE_KINDS)})")
        kind = kind_at.choice(SOURCE_KINDS)
        keys = spec.mapping(_SOURCE_KEYS[kind])
        d = GeneratorSourceConfig(name=name)
        common: dict[str, Any] = {
            "name": name,
            "every_s": _opt(keys, "every", lambda a: a.duration(minimum=0.001), None),
            "retries_s": (tuple(v.duration() for v in keys["retries"].sequence())
                          if "retries" in keys else d.retries_s),
            "on_reject": _opt(keys, "on_reject", lambda a: a.choice(REJECT_POLICIES),
                              d.on_reject),
            "memory_limit_mb": _opt(keys, "memory_limit_mb", lambda a: a.integer(1, 1 << 20),
                                    d.memory_limit_mb),
            "batch_rows": _opt(keys, "batch_rows", lambda a: a.integer(1, 1_000_000),
                               d.batch_rows),
        }
        if kind == "generator":
            sources.append(_generator_source(spec, keys, by_name, common))
            continue
        table_at = keys.get("table")
        if table_at is None:
            raise spec.error("missing required key 'table' (the table its records go to)")
        table = by_name.get(table_at.identifier("table name"))
        if table is None:
            raise table_at.error(f"table {table_at.value!r} is not declared"
                                 + _hint(str(table_at.value), by_name))
        common["table"] = table.name
        common["fields"] = _fields(keys.get("fields"), table)
        common["key"] = _source_key(keys.get("key"), spec, table, common["fields"])
        if kind == "ndjson":
            sources.append(_ndjson_source(spec, keys, base, check_paths, common))
        else:
            sources.append(_http_source(spec, keys, table, common))
    return tuple(sources)


def _generator_source(spec: _At, keys: dict[str, _At], by_name: dict[str, TableConfig],
                      common: dict[str, Any]) -> GeneratorSourceConfig:
    defaults = GeneratorSourceConfig(name=common["name"])
    for role, needed in GENERATOR_COLUMNS.items():
        table_name = (keys[role].identifier("table name") if role in keys
                      else getattr(defaults, role))
        where = keys.get(role, spec)
        table = by_name.get(table_name)
        if table is None:
            raise where.error(f"table {table_name!r} is not declared"
                              + _hint(table_name, by_name))
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise where.error(f"the generator writes columns {', '.join(needed)}; table "
                              f"{table_name!r} lacks {', '.join(missing)}")
    return GeneratorSourceConfig(
        **common,
        registry_table=_opt(keys, "registry_table", lambda a: a.identifier("table name"),
                            defaults.registry_table),
        observations_table=_opt(keys, "observations_table",
                                lambda a: a.identifier("table name"),
                                defaults.observations_table),
        registry_rows=_opt(keys, "registry_rows", lambda a: a.integer(1, 10**9),
                           defaults.registry_rows),
        observation_rows=_opt(keys, "observation_rows", lambda a: a.integer(0, 10**10),
                              defaults.observation_rows),
        seed=_opt(keys, "seed", lambda a: a.integer(0, 2**62), defaults.seed),
    )


def _fields(at: _At | None, table: TableConfig) -> tuple[FieldMap, ...]:
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
                             + _hint(str(column_name), table.column_names))
        column = table.column(column_name)
        required = _needs_value(table, column)
        default = None
        if isinstance(item.value, str):
            path_text = item.value
        else:
            spec = item.mapping(("from", "required", "default"))
            path_text = spec["from"].string() if "from" in spec else column.name
            required = _opt(spec, "required", _At.boolean, required)
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


def _source_key(at: _At | None, spec: _At, table: TableConfig,
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


def _ndjson_source(spec: _At, keys: dict[str, _At], base: Path, check_paths: bool,
                   common: dict[str, Any]) -> NdjsonSourceConfig:
    path_at = keys.get("path")
    if path_at is None:
        raise spec.error("missing required key 'path' (the directory of .ndjson files)")
    path = _resolve(base, path_at.string())
    if check_paths and path.exists() and not path.is_dir():
        raise path_at.error(f"{path} is not a directory")
    return NdjsonSourceConfig(
        **common, path=path,
        max_record_mb=_opt(keys, "max_record_mb", lambda a: a.number(0.001, 1024.0),
                           16.0))


def _http_source(spec: _At, keys: dict[str, _At], table: TableConfig,
                 common: dict[str, Any]) -> HttpSourceConfig:
    d = HttpSourceConfig(name="", table="")
    url_at = keys.get("url")
    if url_at is None:
        raise spec.error("missing required key 'url' (the API's first page)")
    url = url_at.string()
    if not re.match(r"https?://[^/\s]+", url):
        raise url_at.error(f"expected an http:// or https:// URL, got {url!r}")
    updated = _opt(keys, "updated", lambda a: a.identifier("column name"), d.updated)
    if updated not in {f.column for f in common["fields"]}:
        raise keys.get("updated", spec).error(
            f"the cursor column {updated!r} is not mapped from the record (set 'updated' to "
            "the column holding each record's last change)")
    headers: tuple[tuple[str, str], ...] = ()
    if "headers" in keys:
        head = keys["headers"]
        if not isinstance(head.value, dict):
            raise head.error("expected a mapping of header name: value")
        headers = tuple((str(k), head.child(k).string()) for k in head.value)
    optional_text: Callable[[_At], str | None] = lambda a: (  # noqa: E731
        None if a.value is None else a.string())
    return HttpSourceConfig(
        **common, url=url, updated=updated,
        since_param=_opt(keys, "since_param", _At.string, d.since_param),
        page_param=_opt(keys, "page_param", _At.string, d.page_param),
        page_size_param=_opt(keys, "page_size_param", optional_text, d.page_size_param),
        page_size=_opt(keys, "page_size", lambda a: a.integer(1, 1_000_000), d.page_size),
        records_at=_opt(keys, "records_at", optional_text, d.records_at),
        total_at=_opt(keys, "total_at", optional_text, d.total_at),
        next_at=_opt(keys, "next_at", optional_text, d.next_at),
        full_every_s=_opt(keys, "full_every",
                          lambda a: None if a.value is None else a.duration(minimum=1.0),
                          d.full_every_s),
        timeout_s=_opt(keys, "timeout_s", lambda a: a.number(0.01, 3600.0), d.timeout_s),
        headers=headers)


def _progress(at: _At) -> ProgressConfig:
    keys = at.mapping(("persist_interval_s",))
    return ProgressConfig(persist_interval_s=_opt(
        keys, "persist_interval_s", lambda a: a.number(1.0, 3600.0),
        ProgressConfig().persist_interval_s))


def _fts_deferral(at: _At) -> FtsDeferralConfig:
    keys = at.mapping(("enabled", "threshold_rows", "max_age_s", "rebuild_share",
                       "restore_buffer_mb", "retry_initial_s", "retry_max_s"))
    d = FtsDeferralConfig()
    config = FtsDeferralConfig(
        enabled=_opt(keys, "enabled", _At.boolean, d.enabled),
        threshold_rows=_opt(keys, "threshold_rows", lambda a: a.integer(1), d.threshold_rows),
        max_age_s=_opt(keys, "max_age_s", lambda a: a.number(1.0), d.max_age_s),
        rebuild_share=_opt(keys, "rebuild_share", lambda a: a.number(0.0, 1.0), d.rebuild_share),
        restore_buffer_mb=_opt(keys, "restore_buffer_mb", lambda a: a.integer(1, 1024),
                               d.restore_buffer_mb),
        retry_initial_s=_opt(keys, "retry_initial_s", lambda a: a.number(0.1, 3600.0),
                             d.retry_initial_s),
        retry_max_s=_opt(keys, "retry_max_s", lambda a: a.number(0.1, 86400.0), d.retry_max_s),
    )
    if config.retry_max_s < config.retry_initial_s:
        raise keys.get("retry_max_s", keys["retry_initial_s"]).error(
            f"retry_max_s ({config.retry_max_s}) is less than retry_initial_s "
            f"({config.retry_initial_s})")
    return config


_DSN_FORM = "mysql://user:${PASSWORD_VARIABLE}@host[:port]/database"
_DSN = re.compile(r"(?:mysql|mariadb)://(?P<user>[^:@/?#\s]+)(?::(?P<password>.*))?@"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\s]+)(?::(?P<port>[^/?#]*))?"
                  r"/(?P<database>[^/?#\s]+)(?:\?(?P<query>[^#\s]*))?")


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


def _mirror(at: _At, tables: tuple[TableConfig, ...]) -> MirrorConfig:
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
                              f"{_hint(name, by_name)}; only declared tables can be mirrored")
        if names.index(name) != i:
            raise where.error(f"table {name!r} is listed twice")
        problem = _unmirrorable(table)
        if problem:
            raise where.error(f"table {name!r} cannot be mirrored: {problem}")
    scope = str(keys["scope"].scalar())
    if not scope or len(scope) > 64:
        raise keys["scope"].error("expected the device's scope value: 1 to 64 characters")
    d = MirrorConfig(dsn=dsn, tables=(), scope="")
    scope_column = _opt(keys, "scope_column", lambda a: a.identifier("column name"),
                        d.scope_column)
    for name in names:
        if scope_column in by_name[name].column_names:
            raise keys.get("scope_column", at).error(
                f"table {name!r} already has a column {scope_column!r}; choose another "
                "scope_column")
    config = MirrorConfig(
        enabled=_opt(keys, "enabled", _At.boolean, d.enabled), dsn=dsn, tables=tuple(names),
        scope=scope, scope_column=scope_column,
        key_chars=_opt(keys, "key_chars", lambda a: a.integer(1, 760), d.key_chars),
        batch_rows=_opt(keys, "batch_rows", lambda a: a.integer(1, 100_000), d.batch_rows),
        range_rows=_opt(keys, "range_rows", lambda a: a.integer(10, 10_000_000), d.range_rows),
        poll_ms=_opt(keys, "poll_ms", lambda a: a.integer(10, 60_000), d.poll_ms),
        connect_timeout_s=_opt(keys, "connect_timeout_s", lambda a: a.number(0.1, 600.0),
                               d.connect_timeout_s),
        backoff_initial_s=_opt(keys, "backoff_initial_s", lambda a: a.number(0.01, 3600.0),
                               d.backoff_initial_s),
        backoff_max_s=_opt(keys, "backoff_max_s", lambda a: a.number(0.01, 86400.0),
                           d.backoff_max_s))
    if config.backoff_max_s < config.backoff_initial_s:
        raise keys.get("backoff_max_s", at).error(
            f"backoff_max_s ({config.backoff_max_s:g}) is less than backoff_initial_s "
            f"({config.backoff_initial_s:g})")
    return config


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


def _tasks(at: _At, tables: tuple[TableConfig, ...]) -> tuple[TaskConfig, ...]:
    tasks: list[TaskConfig] = []
    for name, spec in at.named_items("task"):
        keys = spec.mapping(TASK_KEYS, required=("table",))
        defaults = TaskConfig(name=name, table="")
        updates: tuple[tuple[str, str], ...] = ()
        if "set" in keys:
            set_at = keys["set"]
            if not isinstance(set_at.value, dict) or not set_at.value:
                raise set_at.error("expected a mapping of column: SQL expression")
            updates = tuple((str(column), set_at.child(column).string())
                            for column in set_at.value)

        task = TaskConfig(
            name=name,
            table=keys["table"].identifier("table name"),
            key=keys["key"].identifier("column name") if "key" in keys else None,
            version=_opt(keys, "version", lambda a: a.integer(1, 2**31), defaults.version),
            updates=updates,
            call=_opt(keys, "call", _At.string, None),
            reads=_strings(keys, "reads"), writes=_strings(keys, "writes"),
            sql=_opt(keys, "sql", _At.string, None),
            where=_opt(keys, "where", _At.string, None),
            target_ms=_opt(keys, "target_ms", lambda a: a.number(1, 60_000), defaults.target_ms),
            min_rows=_opt(keys, "min_rows", lambda a: a.integer(1, 10**7), defaults.min_rows),
            max_rows=_opt(keys, "max_rows", lambda a: a.integer(1, 10**7), defaults.max_rows),
            yield_ms=_opt(keys, "yield_ms", lambda a: a.number(0, 60_000), defaults.yield_ms),
            provides=_opt(keys, "provides", _At.string, None),
        )
        try:
            task = check_task(task, tables, tasks)
        except _TaskProblem as problem:
            raise keys.get(problem.field, spec).error(problem.message) from None
        tasks.append(task)
    return tuple(tasks)


def _strings(keys: Mapping[str, _At], key: str) -> tuple[str, ...]:
    return tuple(v.string() for v in keys[key].sequence()) if key in keys else ()


class _TaskProblem(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


def check_task(task: TaskConfig, tables: Iterable[TableConfig],
               earlier: Iterable[TaskConfig] = ()) -> TaskConfig:
    """Validate `task` against the declared tables; returns it with its key resolved.

    Raises `_TaskProblem(field, message)`; `validate_task` turns that into a
    `ConfigError` for tasks declared from Python.
    """
    by_name = {t.name: t for t in tables}
    table = by_name.get(task.table)
    if table is None:
        raise _TaskProblem("table", f"table {task.table!r} is not declared"
                           + _hint(task.table, by_name))
    columns = table.column_names
    key = task.key
    if key is None:
        if len(table.primary_key) != 1:
            raise _TaskProblem("key", f"table {table.name!r} has no single-column primary key; "
                               "name the unique column to cut chunks along with 'key'")
        key = table.primary_key[0]
    elif key not in columns:
        raise _TaskProblem("key", f"unknown column {key!r}{_hint(key, columns)}")
    elif table.primary_key != (key,) and not table.column(key).unique:
        raise _TaskProblem("key", f"column {key!r} is not unique; chunks are cut along a "
                           "primary key or unique column")
    elif table.primary_key != (key,) and not table.column(key).not_null:
        raise _TaskProblem("key", f"column {key!r} may be NULL, and a row with a NULL key is "
                           "in no key range; declare it not_null")
    changes = [k for k, present in (("set", bool(task.updates)), ("call", task.call is not None),
                                    ("sql", task.sql is not None)) if present]
    if len(changes) != 1:
        found = " and ".join(changes) if changes else "none"
        raise _TaskProblem(changes[-1] if changes else "",
                           f"a task needs exactly one of 'set', 'call' or 'sql'; found {found}")
    for column, expr in task.updates:
        if column not in columns:
            raise _TaskProblem("set", f"table {table.name!r} has no column {column!r}"
                               + _hint(column, columns))
        if column == key:
            raise _TaskProblem("set", f"column {column!r} is the key chunks are cut along; "
                               "a task cannot change it")
        if not expr.strip():
            raise _TaskProblem("set", f"the expression for {column!r} is empty")
    if task.call is not None:
        if isinstance(task.call, str) and not _is_import_path(task.call):
            raise _TaskProblem("call", f"expected 'module:function', got {task.call!r}")
        if not task.writes:
            raise _TaskProblem("call", "a 'call' task must list the columns it writes in "
                               "'writes'")
    for field_name, names in (("reads", task.reads), ("writes", task.writes)):
        for column in names:
            if column not in columns:
                raise _TaskProblem(field_name, f"table {table.name!r} has no column {column!r}"
                                   + _hint(column, columns))
    if key in task.writes:
        raise _TaskProblem("writes", f"column {key!r} is the key chunks are cut along; a task "
                           "cannot change it")
    if task.sql is not None and table.column(key).type not in ("integer", "real", "any"):
        raise _TaskProblem("key", f"an 'sql' task needs a numeric key ({key!r} is "
                           f"{table.column(key).type}): its first chunk binds :lo to -infinity")
    if task.sql is not None:
        missing = [p for p in (":lo", ":hi") if not re.search(re.escape(p) + r"\b", task.sql)]
        if missing:
            raise _TaskProblem("sql", f"the statement must use {' and '.join(missing)}: it runs "
                               "once per chunk for the keys above :lo up to :hi")
    for field_name, text in (("where", task.where), ("sql", task.sql)):
        if text is not None and not text.strip():
            raise _TaskProblem(field_name, "expected SQL text, got an empty string")
    if task.max_rows < task.min_rows:
        raise _TaskProblem("max_rows", f"max_rows ({task.max_rows}) is below min_rows "
                           f"({task.min_rows})")
    for other in earlier:
        if other.name == task.name:
            raise _TaskProblem("", f"task {task.name!r} is declared twice")
        if task.provides is not None and task.provides in (other.provides, other.name):
            raise _TaskProblem("provides", f"{task.provides!r} is already provided by task "
                               f"{other.name!r}")
        if other.provides == task.name:
            raise _TaskProblem("", f"task {other.name!r} already provides {task.name!r}; a "
                               "task's name is also what it provides")
    return dataclasses.replace(task, key=key)


def validate_task(task: TaskConfig, config: Config) -> TaskConfig:
    """Check a task declared from Python the way the YAML ones are; raises `ConfigError`."""
    if not is_identifier(task.name):
        raise ConfigError(f"task name {task.name!r} is not allowed: use letters, digits and "
                          "underscores", file="<python>", path=f"tasks.{task.name}")
    try:
        return check_task(task, config.tables, config.tasks)
    except _TaskProblem as problem:
        raise ConfigError(problem.message, file="<python>",
                          path=".".join(filter(None, ("tasks", task.name, problem.field)))
                          ) from None


def _is_import_path(text: str) -> bool:
    module, _, attr = text.partition(":")
    return bool(attr) and all(part.isidentifier() for part in (*module.split("."),
                                                                 *attr.split(".")))


# --- helpers ----------------------------------------------------------------------------


def _resolve(base: Path, raw: str) -> Path:
    path = Path(os.path.expanduser(raw))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _check_writable_path(at: _At, path: Path) -> None:
    """The file must be creatable or writable, without creating it."""
    if path.exists():
        if not path.is_file():
            raise at.error(f"{path} exists and is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise at.error(f"{path} is not readable and writable")
        return
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise at.error(f"cannot create {path}: {ancestor} is not a directory")
    # os.access says yes to root everywhere; creating a file is the real test.
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".sqlwarden-probe-"):
            pass
    except OSError as exc:
        raise at.error(f"cannot create {path}: directory {ancestor} is not writable "
                       f"({exc.strerror or exc})") from None


def _hint(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _opt(keys: Mapping[str, _At], key: str, convert: Callable[[_At], Any], default: Any) -> Any:
    return convert(keys[key]) if key in keys else default


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"{kind} {shown}"
    return kind


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _At:
    """A value in the document with its key path; typed accessors raise `ConfigError`."""

    __slots__ = ("doc", "path", "value")

    def __init__(self, doc: Document, path: KeyPath, value: Any) -> None:
        self.doc = doc
        self.path = path
        self.value = value

    def error(self, message: str) -> ConfigError:
        return self.doc.error(self.path, message)

    def child(self, key: str | int) -> _At:
        value = None
        if isinstance(self.value, dict):
            value = self.value.get(key)
        elif isinstance(self.value, list) and isinstance(key, int):
            value = self.value[key]
        return _At(self.doc, (*self.path, key), value)

    def _expect(self, what: str) -> ConfigError:
        return self.error(f"expected {what}, got {_describe(self.value)}")

    def mapping(self, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, _At]:
        if not isinstance(self.value, dict):
            raise self._expect("a mapping")
        allowed = tuple(allowed)
        for key in self.value:
            if key not in allowed:
                raise self.child(key).error(
                    f"unknown key {key!r}{_hint(key, allowed)}; expected one of: "
                    + ", ".join(allowed))
        for key in required:
            if key not in self.value:
                raise self.error(f"missing required key {key!r}")
        return {key: self.child(key) for key in self.value}

    def mapping_value(self, key: str) -> _At | None:
        if not isinstance(self.value, dict):
            raise self._expect("a mapping")
        return self.child(key) if key in self.value else None

    def named_items(self, what: str) -> list[tuple[str, _At]]:
        """Entries of a mapping whose keys are identifiers (`tables`, `columns`)."""
        if not isinstance(self.value, dict):
            raise self._expect(f"a mapping of {what} names to their settings")
        seen: dict[str, str] = {}
        items = []
        for key in self.value:
            at = self.child(key)
            if not is_identifier(key):
                raise at.error(f"{what} name {key!r} is not allowed: use letters, digits and "
                               "underscores, start with a letter or underscore, at most 64 "
                               "characters, and no 'sqlite_' or '_sw_' prefix")
            if key.lower() in seen:
                raise at.error(f"{what} name {key!r} differs from {seen[key.lower()]!r} only "
                               "in case; SQL names are case-insensitive")
            seen[key.lower()] = key
            items.append((key, at))
        return items

    def sequence(self) -> list[_At]:
        if not isinstance(self.value, list):
            raise self._expect("a list")
        return [self.child(i) for i in range(len(self.value))]

    def string(self) -> str:
        if not isinstance(self.value, str):
            raise self._expect("text")
        return self.value

    def identifier(self, what: str) -> str:
        value = self.string()
        if not is_identifier(value):
            raise self.error(f"{what} {value!r} is not allowed: use letters, digits and "
                             "underscores, start with a letter or underscore, at most 64 "
                             "characters, and no 'sqlite_' or '_sw_' prefix")
        return value

    def column_names(self, known: list[str]) -> tuple[str, ...]:
        values = [self.value] if isinstance(self.value, str) else self.value
        if not isinstance(values, list) or not values:
            raise self._expect("a column name or a non-empty list of column names")
        names: list[str] = []
        for i, name in enumerate(values):
            at = self if isinstance(self.value, str) else self.child(i)
            if not isinstance(name, str):
                raise at._expect("a column name")
            if name not in known:
                raise at.error(f"unknown column {name!r}{_hint(name, known)}")
            if name in names:
                raise at.error(f"column {name!r} is listed twice")
            names.append(name)
        return tuple(names)

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self._expect("an integer")
        if minimum is not None and self.value < minimum:
            raise self.error(f"expected an integer of at least {minimum}, got {self.value}")
        if maximum is not None and self.value > maximum:
            raise self.error(f"expected an integer of at most {maximum}, got {self.value}")
        return self.value

    def number(self, minimum: float | None = None, maximum: float | None = None) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self._expect("a number")
        if minimum is not None and self.value < minimum:
            raise self.error(f"expected a number of at least {minimum}, got {self.value}")
        if maximum is not None and self.value > maximum:
            raise self.error(f"expected a number of at most {maximum}, got {self.value}")
        return float(self.value)

    def duration(self, minimum: float = 0.0) -> float:
        """Seconds, from a number or text such as `500ms`, `30s`, `2m`, `8h` or `1d`."""
        value = self.value
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match is None:
                raise self.error(f"expected a duration such as 30s, 2m, 8h or 1d, got "
                                 f"{_describe(value)}")
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise self._expect("a duration (seconds, or text such as 30s, 2m, 8h)")
        if seconds < minimum:
            raise self.error(f"expected a duration of at least {minimum:g}s, got {value}")
        return seconds

    def scalar(self) -> str | int | float:
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int, float)):
            raise self._expect("text or a number")
        return self.value

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self._expect("true or false")
        return self.value

    def choice(self, options: tuple[str, ...]) -> str:
        if not isinstance(self.value, str) or self.value.lower() not in options:
            shown = _describe(self.value)
            hint = _hint(self.value, options) if isinstance(self.value, str) else ""
            raise self.error(f"expected one of {', '.join(options)}; got {shown}{hint}")
        return self.value.lower()
