"""The engine's own settings: the `database`, `progress`, `fts_deferral`,
`message_log` and `status` sections.

Each `parse_*` takes its section and returns its dataclass, with the
dataclass's defaults for the keys the file leaves out.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlwarden.config.at import At, converted, optional
from sqlwarden.config.model import (
    DatabaseConfig,
    FtsDeferralConfig,
    MessageLogConfig,
    ProgressConfig,
    StatusConfig,
)
from sqlwarden.config.paths import check_writable, resolve

JOURNAL_MODES = ("wal", "delete", "truncate", "persist")
SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")
PAYLOAD_MODES = ("summary", "full")


def parse_database(at: At, base: Path, check_paths: bool) -> DatabaseConfig:
    """The `database` section; its file must be creatable unless `check_paths` is off."""
    keys = at.mapping(("path", "journal_mode", "synchronous", "busy_timeout_ms",
                       "wal_threshold_mb", "checkpoint_idle_ms", "readers"), required=("path",))
    raw_path = keys["path"].string()
    if raw_path in ("", ":memory:") or raw_path.startswith("file:"):
        raise keys["path"].error("expected the path of a database file")
    path = resolve(base, keys["path"])
    if check_paths:
        check_writable(keys["path"], path)
        # The engine lock (see `sqlwarden.db.lock`) is written and removed by the engine:
        # a link there would have it write through, or remove, what it names.
        lock = Path(f"{os.path.realpath(path)}.lock")
        if lock.is_symlink():
            raise keys["path"].error(f"the engine's lock file {lock} is a symbolic link; the "
                                     "engine does not write through it (remove the link)")
    return DatabaseConfig(path=path, **converted(keys, {
        "journal_mode": lambda a: a.choice(JOURNAL_MODES),
        "synchronous": lambda a: a.choice(SYNCHRONOUS_MODES),
        "busy_timeout_ms": lambda a: a.integer(0, 600_000),
        "wal_threshold_mb": lambda a: a.number(0.01, 1_000_000),
        "checkpoint_idle_ms": lambda a: a.integer(10, 3_600_000),
        "readers": lambda a: a.integer(1, 64),
    }))


def parse_message_log(at: At, base: Path, check_paths: bool) -> MessageLogConfig:
    """The `message_log` section (its default path is checked by `parse_config`)."""
    keys = at.mapping(("enabled", "path", "payload", "max_mb", "backups", "compress"))
    path = resolve(base, keys["path"]) if "path" in keys else None
    enabled = optional(keys, "enabled", At.boolean, MessageLogConfig().enabled)
    if path is not None and enabled and check_paths:
        check_writable(keys["path"], path, link_ok=False)
    return MessageLogConfig(enabled=enabled, path=path, **converted(keys, {
        "payload": lambda a: a.choice(PAYLOAD_MODES),
        "max_mb": lambda a: a.number(0.01, 100_000),
        "backups": lambda a: a.integer(0, 1000),
        "compress": At.boolean,
    }))


def parse_status(at: At) -> StatusConfig:
    """The `status` section."""
    keys = at.mapping(("enabled", "host", "port"))
    host = optional(keys, "host", At.string, StatusConfig().host)
    if not host:
        raise keys["host"].error("expected a host name or address to listen on")
    return StatusConfig(host=host, **converted(keys, {
        "enabled": At.boolean,
        "port": lambda a: a.integer(0, 65535),
    }))


def parse_progress(at: At) -> ProgressConfig:
    """The `progress` section."""
    keys = at.mapping(("persist_interval_s",))
    return ProgressConfig(**converted(keys, {
        "persist_interval_s": lambda a: a.number(1.0, 3600.0),
    }))


def parse_fts_deferral(at: At) -> FtsDeferralConfig:
    """The `fts_deferral` section; `retry_max_s` may not be below `retry_initial_s`."""
    keys = at.mapping(("enabled", "threshold_rows", "max_age_s", "rebuild_share",
                       "restore_buffer_mb", "retry_initial_s", "retry_max_s"))
    config = FtsDeferralConfig(**converted(keys, {
        "enabled": At.boolean,
        "threshold_rows": lambda a: a.integer(1, 10**12),
        "max_age_s": lambda a: a.number(1.0, 30 * 86400.0),
        "rebuild_share": lambda a: a.number(0.0, 1.0),
        "restore_buffer_mb": lambda a: a.integer(1, 1024),
        "retry_initial_s": lambda a: a.number(0.1, 3600.0),
        "retry_max_s": lambda a: a.number(0.1, 86400.0),
    }))
    if config.retry_max_s < config.retry_initial_s:
        raise keys.get("retry_max_s", keys["retry_initial_s"]).error(
            f"retry_max_s ({config.retry_max_s}) is less than retry_initial_s "
            f"({config.retry_initial_s})")
    return config
