"""The `tasks` section, and the checks every task passes, from YAML or from Python.

`check_task` holds the rules (a known table, a unique key to cut chunks
along, exactly one kind of change, names provided once); `parse_tasks` and
`validate_task` turn a broken rule into a `ConfigError` at the right key path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from sqlwarden.config.at import At, converted, hint
from sqlwarden.config.model import Config, TableConfig, TaskConfig
from sqlwarden.db.sql import is_identifier
from sqlwarden.errors import ConfigError

TASK_KEYS = ("version", "table", "key", "set", "call", "reads", "writes", "sql", "where",
             "target_ms", "min_rows", "max_rows", "yield_ms", "provides")


def parse_tasks(at: At, tables: tuple[TableConfig, ...], *, base: Path | None = None,
                import_calls: bool = False) -> tuple[TaskConfig, ...]:
    """The `tasks` section, each task passed through `check_task`.

    `base` is the config file's folder, where `call` modules are looked for
    first; with `import_calls` each `call` is imported now, as `run` will, so a
    missing module or function is an error at its line.
    """
    tasks: list[TaskConfig] = []
    for name, spec in at.named_items("task"):
        keys = spec.mapping(TASK_KEYS, required=("table",))
        updates: tuple[tuple[str, str], ...] = ()
        if "set" in keys:
            set_at = keys["set"]
            if not isinstance(set_at.value, dict) or not set_at.value:
                raise set_at.error("expected a mapping of column: SQL expression")
            updates = tuple((str(column), set_at.child(column).string())
                            for column in set_at.value)
        table = keys["table"].identifier("table name")
        task = TaskConfig(name=name, table=table, updates=updates, **converted(keys, {
            "key": lambda a: a.identifier("column name"),
            "version": lambda a: a.integer(1, 2**31),
            "call": At.string,
            "reads": _strings,
            "writes": _strings,
            "sql": At.string,
            "where": At.string,
            "target_ms": lambda a: a.number(1, 60_000),
            "min_rows": lambda a: a.integer(1, 10**7),
            "max_rows": lambda a: a.integer(1, 10**7),
            "yield_ms": lambda a: a.number(0, 60_000),
            "provides": At.string,
        }))
        if base is not None:
            task = dataclasses.replace(task, call_from=base)
        try:
            task = check_task(task, tables, tasks)
        except _TaskProblem as problem:
            raise keys.get(problem.field, spec).error(problem.message) from None
        if import_calls and isinstance(task.call, str):
            try:
                import_call(task.call, task.call_from)
            except CallNotFound as exc:
                raise keys["call"].error(str(exc)) from None
        tasks.append(task)
    return tuple(tasks)


def _strings(at: At) -> tuple[str, ...]:
    return tuple(v.string() for v in at.sequence())


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
                           + hint(task.table, by_name))
    columns = table.column_names
    key = task.key
    if key is None:
        if len(table.primary_key) != 1:
            raise _TaskProblem("key", f"table {table.name!r} has no single-column primary key; "
                               "name the unique column to cut chunks along with 'key'")
        key = table.primary_key[0]
    elif key not in columns:
        raise _TaskProblem("key", f"unknown column {key!r}{hint(key, columns)}")
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
                               + hint(column, columns))
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
                                   + hint(column, columns))
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
    # A task declared from Python skips the YAML ranges: `target_ms=nan` would run for ever.
    for field_name, number, low, high in (("target_ms", task.target_ms, 1, 60_000),
                                          ("yield_ms", task.yield_ms, 0, 60_000),
                                          ("min_rows", task.min_rows, 1, 10**7),
                                          ("max_rows", task.max_rows, 1, 10**7)):
        if not (isinstance(number, (int, float)) and low <= number <= high):
            raise _TaskProblem(field_name, f"expected a number from {low} to {high}, got "
                               f"{number!r}")
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


class CallNotFound(Exception):
    """A task's `call` target could not be imported, or is not callable."""


#: One import with a config's folder on the import path at a time (`sys.path` is global).
_IMPORTING = threading.Lock()


def import_call(target: str, folder: Path | None) -> Callable[..., Any]:
    """Import "module:function", looking in `folder` (the config's) before the import path.

    `check-config` and `run` both import through here, so a module beside the
    config resolves in both, wherever they are started from. The folder is on
    `sys.path` only while the module is imported (imports its code makes at
    that time resolve there too); a module imported before is used as it is.
    """
    module_name, _, attr = target.partition(":")
    with _IMPORTING:
        # `run` imports calls while loading the config, before any engine thread runs;
        # a task starting later finds its module imported and leaves `sys.path` alone,
        # so no other thread's import can meet the config's folder on it.
        added = (folder is not None and module_name not in sys.modules
                 and str(folder) not in sys.path)
        if added:
            sys.path.insert(0, str(folder))
        # No __pycache__ beside the user's module: `check-config` creates nothing.
        writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            found: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                found = getattr(found, part)
        except Exception as exc:
            where = f" (looked in {folder} and on the import path)" if folder else ""
            raise CallNotFound(f"cannot import {target!r}: {type(exc).__name__}: "
                               f"{exc}{where}") from None
        finally:
            sys.dont_write_bytecode = writes_bytecode
            if added:
                with contextlib.suppress(ValueError):
                    sys.path.remove(str(folder))
    if not callable(found):
        raise CallNotFound(f"{target!r} is not callable")
    return cast("Callable[..., Any]", found)
