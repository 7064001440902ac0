"""sqlwarden: keeps a device's SQLite database healthy while data pours in.

The public surface is what `__all__` names; a service writes

    from sqlwarden import Engine

Importing this package is cheap and has no side effects: every name is
loaded the first time it is used, so `import sqlwarden` pulls in neither the
actor library nor the MySQL connector. Everything not named here is private
or lives in a documented sub-package:

- `config`: the YAML config, parsed into frozen dataclasses and validated
- `db`: connection set-up, schema, the bookkeeping SQL the Writer runs, readers
- `tasks`, `fts`, `sync`, `mirror`: the chunked tasks, FTS deferral, source
  runs and the MySQL mirror, each as plain code and state machines
- `msglog`, `replay`: the message log and the tool that reads it back
- `facade`, `cli`, `statusd`: the top floor; `actors`: the thin actors
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sqlwarden.config import Config, TaskConfig, load_config, parse_config
    from sqlwarden.errors import (
        BadRowError,
        ConfigError,
        DatabaseError,
        EngineError,
        EngineStopped,
        FtsError,
        MirrorError,
        MirrorUnavailable,
        NotReady,
        ReplayError,
        SchemaError,
        SyncBusy,
        SyncError,
        TaskConflict,
        TaskError,
        UnknownSource,
        UnknownTask,
        WriteError,
    )
    from sqlwarden.facade import Engine, RunHandle
    from sqlwarden.futures import Future, Timeout
    from sqlwarden.views import (
        CheckpointResult,
        FtsLease,
        FtsView,
        MirrorView,
        ProgressView,
        ReconcileView,
        SourceView,
        SyncRunView,
        TaskView,
        WriteResult,
        WriterState,
    )

__all__ = [
    "BadRowError", "CheckpointResult", "Config", "ConfigError", "DatabaseError", "Engine",
    "EngineError", "EngineStopped", "FtsError", "FtsLease", "FtsView", "Future", "MirrorError",
    "MirrorUnavailable", "MirrorView", "NotReady", "ProgressView", "ReconcileView",
    "ReplayError", "RunHandle", "SchemaError", "SourceView", "SyncBusy", "SyncError",
    "SyncRunView", "TaskConfig", "TaskConflict", "TaskError", "TaskView", "Timeout",
    "UnknownSource", "UnknownTask", "WriteError", "WriteResult", "WriterState", "__version__",
    "load_config", "parse_config",
]

#: The module each public name is imported from, on first use.
_HOMES = {
    "Engine": "sqlwarden.facade", "RunHandle": "sqlwarden.facade",
    "Config": "sqlwarden.config", "TaskConfig": "sqlwarden.config",
    "load_config": "sqlwarden.config", "parse_config": "sqlwarden.config",
    "Future": "sqlwarden.futures", "Timeout": "sqlwarden.futures",
    **dict.fromkeys((
        "EngineError", "ConfigError", "SchemaError", "DatabaseError", "WriteError",
        "BadRowError", "EngineStopped", "TaskError", "UnknownTask", "TaskConflict", "FtsError",
        "NotReady", "SyncError", "UnknownSource", "SyncBusy", "MirrorError",
        "MirrorUnavailable", "ReplayError",
    ), "sqlwarden.errors"),
    **dict.fromkeys((
        "WriteResult", "CheckpointResult", "WriterState", "TaskView", "ProgressView",
        "FtsLease", "FtsView", "SyncRunView", "SourceView", "ReconcileView", "MirrorView",
    ), "sqlwarden.views"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sqlwarden' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
