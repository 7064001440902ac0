"""The YAML config: frozen dataclasses, loading, and validation before anything starts.

`load_config(path)` reads one file and returns a `Config`; every error names
the file, the line and the dotted key path. The model lives in `model`,
YAML text with line numbers in `yamldoc`.
"""

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
    load_config,
    parse_config,
    parse_dsn,
    validate_task,
)

__all__ = [
    "GENERATOR_COLUMNS", "ColumnConfig", "Config", "DatabaseConfig", "FieldMap", "ForeignKey",
    "FtsConfig", "FtsDeferralConfig", "GeneratorSourceConfig", "HttpSourceConfig",
    "IndexConfig", "MessageLogConfig", "MirrorConfig", "MysqlDsn", "NdjsonSourceConfig",
    "ProgressConfig", "SourceConfig", "StatusConfig", "TableConfig", "TaskConfig",
    "load_config", "parse_config", "parse_dsn", "validate_task",
]
