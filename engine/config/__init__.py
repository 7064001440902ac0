"""The YAML config: frozen dataclasses, loading, and validation before anything starts.

`load_config(path)` reads one file and returns a `Config`; every error names
the file, the line and the dotted key path. The modules, in reading order:

- `model`: the dataclasses (`Config` and one per section) and their constants.
- `load`: `load_config` reads the file, `parse_config` validates its text and
  assembles the `Config` from the sections below.
- `yamldoc`: YAML text to plain values, with the line of every key path and
  `${VAR}` taken from the environment.
- `at`: `At`, a value with its key path, whose typed getters raise the
  `ConfigError`s every section shares.
- `paths`: paths taken from the config file's folder, checked writable.
- `settings`: the small sections (`database`, `progress`, `fts_deferral`,
  `message_log`, `status`).
- `tables`: tables, columns, indexes, FTS tables and references.
- `sources`: the sources and how records map onto columns.
- `tasks`: chunked tasks, and `validate_task` for those declared from Python.
- `mirror`: the MySQL mirror and `parse_dsn`.
"""

from sqlwarden.config.load import load_config, parse_config
from sqlwarden.config.mirror import parse_dsn
from sqlwarden.config.model import (
    GENERATOR_COLUMNS,
    ColumnConfig,
    Config,
    DatabaseConfig,
    FieldMap,
    ForeignKey,
    FtsConfig,
    FtsDeferralConfig,
    GeneratorSourceConfig,
    HttpSourceConfig,
    IndexConfig,
    MessageLogConfig,
    MirrorConfig,
    MysqlDsn,
    NdjsonSourceConfig,
    ProgressConfig,
    SourceConfig,
    StatusConfig,
    TableConfig,
    TaskConfig,
)
from sqlwarden.config.tasks import validate_task

__all__ = [
    "GENERATOR_COLUMNS", "ColumnConfig", "Config", "DatabaseConfig", "FieldMap", "ForeignKey",
    "FtsConfig", "FtsDeferralConfig", "GeneratorSourceConfig", "HttpSourceConfig",
    "IndexConfig", "MessageLogConfig", "MirrorConfig", "MysqlDsn", "NdjsonSourceConfig",
    "ProgressConfig", "SourceConfig", "StatusConfig", "TableConfig", "TaskConfig",
    "load_config", "parse_config", "parse_dsn", "validate_task",
]
