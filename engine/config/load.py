"""Reading a config: `load_config` reads the file, `parse_config` validates its text.

`parse_config` parses the YAML (`yamldoc`), then hands each top-level section
to the module that owns it (`settings`, `tables`, `sources`, `tasks`,
`mirror`) in a fixed order, since later sections are checked against the
tables declared earlier, and assembles the `Config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlwarden.config.at import At
from sqlwarden.config.mirror import parse_mirror
from sqlwarden.config.model import (
    Config,
    FtsDeferralConfig,
    MessageLogConfig,
    ProgressConfig,
    StatusConfig,
)
from sqlwarden.config.paths import check_writable
from sqlwarden.config.settings import (
    parse_database,
    parse_fts_deferral,
    parse_message_log,
    parse_progress,
    parse_status,
)
from sqlwarden.config.sources import parse_sources
from sqlwarden.config.tables import check_references, parse_tables
from sqlwarden.config.tasks import parse_tasks
from sqlwarden.config.yamldoc import parse_yaml
from sqlwarden.errors import ConfigError

TOP_LEVEL_KEYS = ("database", "tables", "tasks", "sources", "progress", "fts_deferral",
                  "mirror", "message_log", "status")


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
    root = At(doc, (), doc.value)
    if doc.value is None:
        raise root.error("the config is empty; expected a mapping with a 'database' section")
    sections = root.mapping(TOP_LEVEL_KEYS, required=("database",))
    base = base_dir if base_dir is not None else Path.cwd()

    database = parse_database(sections["database"], base, check_paths)
    tables = parse_tables(sections["tables"]) if "tables" in sections else ()
    check_references(sections.get("tables"), tables)
    sources = (parse_sources(sections["sources"], tables, base, check_paths)
               if "sources" in sections else ())
    tasks = parse_tasks(sections["tasks"], tables) if "tasks" in sections else ()
    progress = parse_progress(sections["progress"]) if "progress" in sections else ProgressConfig()
    fts_deferral = (parse_fts_deferral(sections["fts_deferral"]) if "fts_deferral" in sections
                    else FtsDeferralConfig())
    message_log = (parse_message_log(sections["message_log"], base, check_paths)
                   if "message_log" in sections else MessageLogConfig())
    status = parse_status(sections["status"]) if "status" in sections else StatusConfig()
    mirror = parse_mirror(sections["mirror"], tables) if "mirror" in sections else None
    config = Config(database=database, tables=tables, sources=sources, tasks=tasks,
                    progress=progress, fts_deferral=fts_deferral, message_log=message_log,
                    status=status, mirror=mirror, source_file=file,
                    secrets=doc.secrets | ({mirror.dsn.password} if mirror and mirror.dsn.password
                                           else set()))
    if check_paths and message_log.enabled and message_log.path is None:
        where = sections.get("message_log", sections["database"])
        check_writable(where, config.message_log_path)
    return config
