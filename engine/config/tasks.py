"""The `tasks` section, and the checks every task passes, from YAML or from Python.

`check_task` holds the rules (a known table, a unique key to cut chunks
along, exactly one kind of change, names provided once); `parse_tasks` and
`validate_task` turn a broken rule into a `ConfigError` at the right key path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from sqlwarden.config.at import At, converted, hint
from sqlwarden.config.model import Config, TableConfig, TaskConfig
from sqlwarden.db.sql import is_identifier
from sqlwarden.errors import ConfigError

TASK_KEYS = ("version", "table", "key", "set", "call", "reads", "writes", "sql", "where",
             "target_ms", "min_rows", "max_rows", "yield_ms", "provides")


def parse_tasks(at: At, tables: tuple[TableConfig, ...]) -> tuple[TaskConfig, ...]:
    """The `tasks` section, each task passed through `check_task`."""
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
        try:
            task = check_task(task, tables, tasks)
        except _TaskProblem as problem:
            raise keys.get(problem.field, spec).error(problem.message) from None
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
