"""Reading a config: `load_config` reads the file, `parse_config` validates its text.

`parse_config` parses the YAML (`yamldoc`), then hands each top-level section
to the module that owns it (`settings`, `tables`, `sources`, `tasks`,
`mirror`) in a fixed order, since later sections are checked against the
tables declared earlier, and assembles the `Config`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from sqlwarden.config.at import At
from sqlwarden.config.mirror import parse_mirror
from sqlwarden.config.model import (
    Config,
    FtsDeferralConfig,
    HttpSourceConfig,
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

#: The largest config file read; a longer one is refused before it is read whole.
MAX_CONFIG_BYTES = 1024 * 1024

TOP_LEVEL_KEYS = ("database", "tables", "tasks", "sources", "progress", "fts_deferral",
                  "mirror", "message_log", "status")


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None,
                check_paths: bool = True, import_calls: bool = False) -> Config:
    """Read and validate the YAML config at `path`; `import_calls` imports each task's
    `call` now (as `check-config` and `run` do), so a missing one is an error at its line."""
    file = Path(path)
    text = read_config_text(file)
    return parse_config(text, file=str(file), base_dir=file.resolve().parent,
                        environ=environ, check_paths=check_paths, import_calls=import_calls)


def read_config_text(file: Path) -> str:
    """The text of config `file`: a regular file of at most `MAX_CONFIG_BYTES`, in UTF-8.

    Opened without blocking (a FIFO with no writer would wait for ever) and
    checked on the open descriptor, so a device such as /dev/zero, a folder or
    a FIFO is refused before a byte is read, and at most one byte more than the
    cap is ever read, whatever the file does meanwhile.
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=file) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("the config is not a regular file", file=file)
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"the config file is larger than {_CAP_TEXT} (the most a config "
                              "may be)", file=file)
        chunks: list[bytes] = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=file) from None
    finally:
        os.close(fd)
    if left <= 0:  # it grew while read
        raise ConfigError(f"the config file is larger than {_CAP_TEXT} (the most a config may "
                          "be)", file=file)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file: it is not UTF-8 text ({exc.reason} at "
                          f"byte {exc.start})", file=file) from None


_CAP_TEXT = f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB"


def parse_config(text: str, *, file: str = "<config>", base_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None, check_paths: bool = True,
                 import_calls: bool = False) -> Config:
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
    tasks = (parse_tasks(sections["tasks"], tables, base=base, import_calls=import_calls)
             if "tasks" in sections else ())
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
                                           else set())
                    # An HTTP source's credentials: secret headers and a URL's password.
                    | {v for s in sources if isinstance(s, HttpSourceConfig)
                       for v in s.secret_values()})
    if check_paths and message_log.enabled and message_log.path is None:
        where = sections.get("message_log", sections["database"])
        check_writable(where, config.message_log_path, link_ok=False)
    return config
