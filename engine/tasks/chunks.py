"""Chunked background tasks as plain code: the SQL of a chunk, its size, and rates.

A task walks its table's key from its checkpoint up to a bound snapshotted
when it started, one key range per chunk. `run_chunk` does one chunk on the
writer connection inside the caller's transaction: it finds the range's last
key, changes the eligible rows in the range, and advances the checkpoint in
`_sw_tasks`, so the checkpoint never passes a row that was not written.
The Backfill actor decides when chunks run; this module only knows how.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from sqlwarden.config import TableConfig, TaskConfig
from sqlwarden.config.tasks import CallNotFound, import_call
from sqlwarden.db.schema import TASKS_TABLE
from sqlwarden.db.sql import quote
from sqlwarden.errors import TaskError
from sqlwarden.views import SqlValue

#: What an `sql` task's first chunk binds to `:lo`: below every number. Its
#: key must be numeric (checked with the config), since a TEXT column would
#: compare it as the text '-Inf'. Engine-built SQL has no lower bound instead.
BEFORE_FIRST = float("-inf")
_LO = "\x00lo\x00"
#: Columns of `_sw_tasks` the Backfill actor may set with `SaveTask`.
TASK_FIELDS = frozenset({
    "tbl", "change", "status", "rows_processed", "rows_total", "checkpoint", "bound",
    "attempts", "run_id", "started_at", "ended_at", "last_update_at", "rate_rows_s", "eta_s",
    "waiting", "error"})
TERMINAL = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What `run_chunk` did."""

    last: SqlValue
    scanned: int
    processed: int
    exhausted: bool


class TaskPlan:
    """The SQL of one task, built once from its config with quoted names."""

    def __init__(self, task: TaskConfig, table: TableConfig) -> None:
        assert task.key is not None, "validate the task first"
        self.task = task
        self.table = table
        t, k = quote(table.name), quote(task.key)
        self.where = f"({task.where})" if task.where else "1"
        # Each ranged statement comes in two forms: index 0 for keys after
        # :lo, index 1 for the first range, which has no lower bound.
        in_range = f"{_LO}{k} <= :hi"
        self.bound_sql = f"SELECT max({k}) FROM {t}"
        self.count_sql = self._pair(f"SELECT count(*) FROM {t} WHERE {in_range} AND {self.where}")
        self.first_eligible_sql = self._pair(f"SELECT min({k}), count(*) FROM {t} "
                                             f"WHERE {in_range} AND {self.where}")
        # A NULL key is outside every range: such a row would never be changed.
        self.null_keys_sql = f"SELECT count(*) FROM {t} WHERE {k} IS NULL AND {self.where}"
        self.key_before_sql = f"SELECT max({k}) FROM {t} WHERE {k} < :key"
        self.range_sql = self._pair(f"SELECT count(*), max(k) FROM (SELECT {k} AS k FROM {t} "
                                    f"WHERE {in_range} ORDER BY {k} LIMIT :rows)")
        self.update_sql = self.select_sql = ("", "")
        self.write_sql = self.user_sql = ""
        if task.change == "set":
            assignments = ", ".join(f"{quote(c)} = ({e})" for c, e in task.updates)
            self.update_sql = self._pair(f"UPDATE {t} SET {assignments} "
                                         f"WHERE {in_range} AND {self.where}")
        elif task.change == "call":
            reads = [c for c in task.reads if c != task.key]
            self.reads = (task.key, *reads)
            self.select_sql = self._pair(f"SELECT {', '.join(map(quote, self.reads))} FROM {t} "
                                         f"WHERE {in_range} AND {self.where} ORDER BY {k}")
            sets = ", ".join(f"{quote(c)} = ?" for c in task.writes)
            self.write_sql = f"UPDATE {t} SET {sets} WHERE {k} = ?"
        else:
            assert task.sql is not None
            self.user_sql = task.sql
        self.checkpoint_sql = (
            f"UPDATE {TASKS_TABLE} SET checkpoint = :last, "
            "rows_processed = rows_processed + :processed, last_update_at = :now "
            "WHERE name = :name AND version = :version AND run_id = :run_id "
            "AND status = 'running'")

    def _pair(self, template: str) -> tuple[str, str]:
        after = template.replace(_LO, f"{quote(self.task.key or '')} > :lo AND ")
        return after, template.replace(_LO, "")

    def statements(self) -> dict[str, str]:
        """Every statement the task runs, by what it is for (to compile them up front)."""
        out = {"where": self.count_sql[0], "key range": self.range_sql[0]}
        for what, sql in (("set", self.update_sql[0]), ("call", self.select_sql[0]),
                          ("sql", self.user_sql)):
            if sql:
                out[what] = sql
        return out


def compile_check(conn: apsw.Connection, plan: TaskPlan) -> None:
    """Prepare every statement of `plan` without running it; raises `TaskError`."""
    for what, sql in plan.statements().items():
        try:
            # EXPLAIN prepares the statement and lists its program; nothing runs.
            conn.execute("EXPLAIN " + sql, _dummy_params(sql)).fetchall()
        except apsw.Error as exc:
            label = "the task's sql" if what == "sql" else f"the {what} SQL"
            raise TaskError(f"task {plan.task.ident}: {label} does not compile: {exc}",
                            task=plan.task.name) from None


def chunk_name(after: object) -> str:
    """A chunk as messages name it: by the key it starts after."""
    return "the first chunk" if after is None else f"the chunk after key {after!r}"


def _dummy_params(sql: str) -> dict[str, SqlValue]:
    return {name: None for name in ("lo", "hi", "rows", "key") if f":{name}" in sql}


def load_callable(task: TaskConfig) -> Callable[[list[dict[str, Any]]], Any]:
    """The task's callable, imported from "module:function" if given by name."""
    target = task.call
    if callable(target):
        return target
    assert isinstance(target, str)
    # The rule `check-config` imports by: the config's folder first, then the import path.
    try:
        return import_call(target, task.call_from)
    except CallNotFound as exc:
        raise TaskError(f"task {task.ident}: {exc}", task=task.name) from None


def run_chunk(conn: apsw.Connection, plan: TaskPlan, *, run_id: str, after: SqlValue,
              bound: SqlValue, rows: int, fn: Callable[..., Any] | None = None,
              now: float | None = None) -> ChunkOutcome:
    """Change one key range and advance the checkpoint, inside the caller's transaction."""
    task = plan.task
    first = after is None
    scanned, last = _one(conn, plan.range_sql[first], {"lo": after, "hi": bound, "rows": rows})
    if not scanned:
        return ChunkOutcome(last=after, scanned=0, processed=0, exhausted=True)
    span = {"lo": after, "hi": last}
    if plan.update_sql[0]:
        conn.execute(plan.update_sql[first], span)
        processed = conn.changes()
    elif plan.select_sql[0]:
        assert fn is not None
        processed = _apply_callable(conn, plan, fn, span, first)
    else:
        (processed,) = _one(conn, plan.count_sql[first], span)
        conn.execute(plan.user_sql, {"lo": BEFORE_FIRST if first else after, "hi": last}
                     ).fetchall()
    conn.execute(plan.checkpoint_sql, {
        "last": last, "processed": processed, "now": time.time() if now is None else now,
        "name": task.name, "version": task.version, "run_id": run_id})
    if conn.changes() != 1:
        raise TaskError(f"task {task.ident} is no longer running in this run; its chunk was "
                        "not committed", task=task.name)
    return ChunkOutcome(last=last, scanned=scanned, processed=processed,
                        exhausted=scanned < rows or last == bound)


def _apply_callable(conn: apsw.Connection, plan: TaskPlan, fn: Callable[..., Any],
                    span: Mapping[str, SqlValue], first: bool) -> int:
    task = plan.task
    found = [dict(zip(plan.reads, row, strict=True))
             for row in conn.execute(plan.select_sql[first], span)]
    if not found:
        return 0
    keys = f"keys {found[0][plan.reads[0]]!r}..{found[-1][plan.reads[0]]!r}"
    try:
        results = fn([dict(row) for row in found])
    except Exception as exc:
        raise TaskError(f"task {task.ident}: the callable raised {type(exc).__name__}: {exc} "
                        f"(chunk of {keys})", task=task.name) from None
    if not isinstance(results, Sequence) or len(results) != len(found):
        size = len(results) if isinstance(results, Sequence) else type(results).__name__
        raise TaskError(f"task {task.ident}: the callable must return one mapping per row "
                        f"({len(found)}), got {size} (chunk of {keys})", task=task.name)
    params = []
    for row, values in zip(found, results, strict=True):
        if not isinstance(values, Mapping) or any(c not in values for c in task.writes):
            raise TaskError(f"task {task.ident}: the callable's result for key "
                            f"{row[plan.reads[0]]!r} must be a mapping with "
                            f"{', '.join(task.writes)}", task=task.name)
        params.append((*(values[c] for c in task.writes), row[plan.reads[0]]))
    try:
        conn.executemany(plan.write_sql, params)
    except TypeError as exc:  # a value SQLite cannot store
        raise TaskError(f"task {task.ident}: the callable returned a value SQLite cannot "
                        f"store: {exc} (chunk of {keys})", task=task.name) from None
    return len(found)


# --- reads on a reader connection -------------------------------------------------------


def snapshot_bound(conn: apsw.Connection, plan: TaskPlan) -> SqlValue:
    """The largest key now: rows inserted after this are the foreground path's job."""
    value: SqlValue = _one(conn, plan.bound_sql, {})[0]
    return value


def count_eligible(conn: apsw.Connection, plan: TaskPlan, after: SqlValue,
                   bound: SqlValue) -> int:
    """Rows in (`after`, `bound`] the task still has to change."""
    if bound is None:
        return 0
    count: int = _one(conn, plan.count_sql[after is None], {"lo": after, "hi": bound})[0]
    return count


def first_unfinished(conn: apsw.Connection, plan: TaskPlan, checkpoint: SqlValue,
                     bound: SqlValue) -> tuple[SqlValue, int]:
    """The verification query: (first key, count) of rows at or below `bound` left to do.

    With a `where`, every row up to the bound is checked, not just those the
    walk has not reached: a row the walk passed may still qualify. Without
    one, what is left is the rows past the checkpoint. Raises `TaskError`
    for eligible rows whose key is NULL, which no key range reaches.
    """
    (null_keys,) = _one(conn, plan.null_keys_sql, {})
    if null_keys:
        raise TaskError(f"task {plan.task.ident}: {null_keys:,} eligible rows have a NULL "
                        f"{plan.task.key!r}, which no key range reaches", task=plan.task.name)
    if bound is None:
        return None, 0
    after = checkpoint if plan.task.where is None else None
    key, count = _one(conn, plan.first_eligible_sql[after is None], {"lo": after, "hi": bound})
    return key, count


def key_before(conn: apsw.Connection, plan: TaskPlan, key: SqlValue) -> SqlValue:
    """The checkpoint that makes the next chunk start at `key`."""
    value: SqlValue = _one(conn, plan.key_before_sql, {"key": key})[0]
    return value


def _one(conn: apsw.Connection, sql: str, params: Mapping[str, SqlValue]) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, "an aggregate query returns one row"
    return tuple(row)


def read_task_rows(conn: apsw.Connection) -> dict[tuple[str, int], dict[str, Any]]:
    """Every row of `_sw_tasks`, by (name, version)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (TASKS_TABLE,)).fetchone()
    if exists is None:
        return {}
    names = ("name", "version", *sorted(TASK_FIELDS))
    cursor = conn.execute(f"SELECT {', '.join(names)} FROM {TASKS_TABLE} ORDER BY name, version")
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in cursor}


#: Rate, ETA and waiting reason, as the Progress actor saves them.
SAVE_PROGRESS_SQL = (f"UPDATE {TASKS_TABLE} SET rate_rows_s = ?, eta_s = ?, waiting = ?, "
                     "last_update_at = ? WHERE name = ? AND version = ?")


def save_task_sql(fields: Sequence[str]) -> str:
    """Upsert of a `_sw_tasks` row setting `fields` (checked against `TASK_FIELDS`)."""
    unknown = set(fields) - TASK_FIELDS
    if unknown:
        raise TaskError(f"_sw_tasks has no settable column(s) {', '.join(sorted(unknown))}",
                        task="")
    cols = ["name", "version", *fields]
    updates = ", ".join(f"{c} = excluded.{c}" for c in fields) or "name = name"
    return (f"INSERT INTO {TASKS_TABLE} ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT (name, version) DO UPDATE SET {updates}")


# --- sizes and rates --------------------------------------------------------------------


class ChunkSizer:
    """Picks the next chunk's row count from a decayed average of recent chunk speeds."""

    def __init__(self, target_ms: float, min_rows: int, max_rows: int, *,
                 decay: float = 0.5) -> None:
        self.target_ms = target_ms
        self.min_rows = min_rows
        self.max_rows = max_rows
        self._decay = decay
        self._rows_per_ms: float | None = None
        self.size = min_rows

    def observe(self, rows: int, duration_ms: float) -> int:
        """Note a chunk that scanned `rows` in `duration_ms`; returns the next size."""
        if rows > 0:
            speed = rows / max(duration_ms, 0.01)
            self._rows_per_ms = speed if self._rows_per_ms is None else (
                self._decay * speed + (1 - self._decay) * self._rows_per_ms)
            wanted = int(self.target_ms * self._rows_per_ms)
            # At most double per step: one fast chunk (a cache-warm range) must
            # not make the next one many times too long.
            wanted = min(wanted, 2 * self.size)
            self.size = max(self.min_rows, min(self.max_rows, wanted))
        return self.size


class RateMeter:
    """Rows per second: a decayed average of recent chunks, else the whole run's average."""

    def __init__(self, started: float, *, decay: float = 0.3, warmup: int = 3) -> None:
        self.started = started
        self._decay = decay
        self._warmup = warmup
        self._samples = 0
        self._recent: float | None = None
        self.rows = 0

    def add(self, rows: int, seconds: float) -> None:
        self.rows += rows
        if seconds <= 0:
            return
        speed = rows / seconds
        self._samples += 1
        self._recent = speed if self._recent is None else (
            self._decay * speed + (1 - self._decay) * self._recent)

    def rate(self, now: float) -> float | None:
        if self._samples >= self._warmup and self._recent is not None:
            return self._recent
        elapsed = now - self.started
        return self.rows / elapsed if elapsed > 0 and self.rows else None

    def eta_s(self, now: float, total: int | None) -> float | None:
        rate = self.rate(now)
        if total is None or rate is None or rate <= 0:
            return None
        return max(total - self.rows, 0) / rate
