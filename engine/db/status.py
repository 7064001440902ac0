"""Status read from the database file alone, for `sqlwarden status`.

It opens a read-only connection, so it works while another process runs the
engine on the same database.
"""

from __future__ import annotations

from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.db.connect import file_size, open_peek
from sqlwarden.db.schema import META_TABLE, REJECTS_TABLE, SYNC_RUNS_TABLE
from sqlwarden.db.sql import quote
from sqlwarden.fts.deferral import Deferral, read_deferral, table_states
from sqlwarden.mirror.quarantine import entries as quarantine_entries
from sqlwarden.sync.runs import history, last_run, reject_counts
from sqlwarden.tasks.chunks import read_task_rows
from sqlwarden.views import FtsTableView, SyncRunView

#: Quarantined rows `status` lists (the newest first); the count says how many in all.
QUARANTINE_SHOWN = 5


def read_status(config: Config) -> dict[str, Any]:
    """Tables with row counts, engine metadata, file sizes, each source's last run and
    rejects, and the mirror's quarantine."""
    path = str(config.database.path)
    conn = open_peek(config.database)
    try:
        existing = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta: dict[str, str] = {}
        if META_TABLE in existing:
            meta = {str(k): str(v) for k, v in conn.execute(
                f"SELECT key, value FROM {META_TABLE}")}
        tables = {}
        for table in config.tables:
            if table.name in existing:
                (rows,) = conn.execute(f"SELECT count(*) FROM {quote(table.name)}").fetchall()[0]
                tables[table.name] = {"rows": rows}
            else:
                tables[table.name] = {"rows": None, "missing": True}
        rows = read_task_rows(conn)
        deferral = read_deferral(conn)
        sources = _sources(conn, config, existing)
        # Rows the mirror could not send wait there until they change or are retried.
        held, recent = quarantine_entries(conn, shown=QUARANTINE_SHOWN)
    finally:
        conn.close()
    tasks = []
    for task in config.tasks:
        row = rows.get((task.name, task.version)) or {}
        tasks.append({
            "task": task.ident, "name": task.name, "version": task.version,
            "status": row.get("status", "not started"),
            "rows_processed": row.get("rows_processed", 0), "rows_total": row.get("rows_total"),
            "rate_rows_s": row.get("rate_rows_s"), "eta_s": row.get("eta_s"),
            "waiting": row.get("waiting"), "attempts": row.get("attempts", 0),
            "checkpoint": row.get("checkpoint"), "bound": row.get("bound"),
            "error": row.get("error"), "last_update_at": row.get("last_update_at"),
            "provides": task.provides})
    return {
        "database": {
            "path": path,
            "size_bytes": file_size(path),
            "wal_bytes": file_size(path + "-wal"),
            "schema_version": meta.get("schema_version"),
        },
        "tables": tables,
        "tasks": tasks,
        "fts_deferral": None if deferral is None else {
            "tables": [t.fts for t in deferral.tables], "since": deferral.started_at,
            "sources": [s for s, _ in deferral.sources], "last_error": deferral.last_error},
        "sources": sources,
        "mirror": None if config.mirror is None and not held else {
            "quarantine": {"count": held, "recent": recent}},
    }


def _sources(conn: apsw.Connection, config: Config,
             existing: set[str]) -> dict[str, dict[str, Any]]:
    """Each declared source's stored rejects and last run (None before its first)."""
    if SYNC_RUNS_TABLE not in existing:
        return {s.name: {"rejects_stored": 0, "last_run": None} for s in config.sources}
    rejects = reject_counts(conn)
    out: dict[str, dict[str, Any]] = {}
    for source in config.sources:
        run = last_run(conn, source.name)
        out[source.name] = {
            "rejects_stored": rejects.get(source.name, 0),
            "last_run": None if run is None else {
                "status": run.status, "mode": run.mode, "started_at": run.started_at,
                "ended_at": run.ended_at, "rows": run.rows, "rejects": run.rejects,
                "error": run.error}}
    return out


def running_engine(config: Config) -> tuple[str, str] | None:
    """(status URL, run id) the engine running on this database recorded, if any."""
    if not config.database.path.exists():
        return None
    conn = open_peek(config.database)
    try:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                              (META_TABLE,)).fetchone()
        meta = dict(conn.execute(f"SELECT key, value FROM {META_TABLE} "
                                 "WHERE key IN ('status_url', 'run_id')")) if exists else {}
    finally:
        conn.close()
    if "status_url" not in meta:
        return None
    return str(meta["status_url"]), str(meta.get("run_id", ""))


def read_fts(config: Config) -> tuple[tuple[FtsTableView, ...], Deferral | None]:
    """FTS tables, the triggers present, and the deferral record, read-only."""
    conn = open_peek(config.database)  # refuses a database that does not exist
    try:
        return table_states(conn)
    finally:
        conn.close()


def read_sync(config: Config, source: str | None,
              limit: int) -> tuple[list[SyncRunView], list[dict[str, Any]]]:
    """Source runs (newest first) and the latest rejects, read-only."""
    conn = open_peek(config.database)  # refuses a database that does not exist
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                        (SYNC_RUNS_TABLE,)).fetchone() is None:
            return [], []
        runs = history(conn, source, limit)
        where, params = ("WHERE source = ?", (source,)) if source else ("", ())
        rejects = [{"source": s, "run": r, "position": p, "reason": why, "at": at}
                   for s, r, p, why, at in conn.execute(
                       f"SELECT source, run, position, reason, at FROM {REJECTS_TABLE} "
                       f"{where} ORDER BY id DESC LIMIT 10", params)]
    finally:
        conn.close()
    return runs, rejects
