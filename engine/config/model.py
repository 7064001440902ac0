"""The configuration's shape: frozen dataclasses, with units in their field names.

Nothing here reads or checks YAML (see `load`); these are the values the rest
of the engine is given, already validated. A default on a field is the
default a config file gets when it leaves the key out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlwarden.redact import is_secret_key

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
    #: Wall-clock limit on one page: connecting, the headers and the whole body.
    timeout_s: float = 30.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Header names the config marks secret, beside those secret by default
    #: (`SECRET_HEADERS` and names that look secret): see `is_secret_header`.
    secret_headers: tuple[str, ...] = ()
    #: User and password from the URL's userinfo, sent as HTTP Basic auth; the
    #: URL itself is kept without them.
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    #: Pages one run may fetch; an API with more fails the run (it may be looping).
    max_pages: int = 10_000
    #: A page (its body, inflated) may not be larger than this; checked while reading.
    max_page_mb: float = 16.0

    def is_secret_header(self, name: str) -> bool:
        """True for a header that is a credential: dropped on a redirect to another origin."""
        lower = name.lower()
        return (lower in SECRET_HEADERS or lower in {h.lower() for h in self.secret_headers}
                or is_secret_key(lower.replace("-", "_")))

    def secret_values(self) -> frozenset[str]:
        """The credentials in this source's config, for the redactor: never shown anywhere."""
        values: set[str] = set()
        for name, value in self.headers:
            if self.is_secret_header(name) and value:
                values.add(value)
                # `Bearer <token>`: the token alone must not show either.
                _, _, credential = value.partition(" ")
                if len(credential.strip()) >= 4:
                    values.add(credential.strip())
        if self.basic_auth is not None and self.basic_auth[1]:
            values.add(self.basic_auth[1])
        return frozenset(values)


#: Headers that are credentials whatever the config says.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


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
    #: The config file's folder: a `call` module there is found before the import path's
    #: (see `sqlwarden.config.tasks.import_call`). None for a task declared from Python.
    call_from: Path | None = None

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
    #: Most characters of a text key column in the mirror (`VARCHAR(n)`). The mirror
    #: makes it as wide as an InnoDB index can hold (3072 bytes, 4 per character in
    #: utf8mb4, shared with the scope and the other key columns): 703 for a lone text
    #: key. A smaller value here narrows it.
    key_chars: int = 768
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
    #: Servers to try in order ("host:port", "[::1]:port"), each a node of one cluster (or
    #: one server reached by several addresses); when given they replace the DSN's own
    #: host and port, and the mirror fails over between them.
    hosts: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """`user@host:port/database` (every host, when there are several), safe to print."""
        if not self.hosts:
            return self.dsn.where
        return f"{self.dsn.user}@{','.join(self.hosts)}/{self.dsn.database}"


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


#: Columns the demo's generator source writes, by target table role.
GENERATOR_COLUMNS = {
    "registry_table": ("id", "org", "name", "body", "updated_at"),
    "observations_table": ("id", "registry_id", "observed_at", "value", "unit"),
}
