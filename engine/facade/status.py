"""What `Engine.status()` and `Engine.health()` say, assembled from the actors' answers.

Each section asks its actor with a short timeout: a busy actor makes its
section say so instead of holding the whole status up. Secrets are redacted
from everything on the way out.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import apsw

from sqlwarden import views
from sqlwarden.db.connect import file_size
from sqlwarden.errors import EngineError
from sqlwarden.futures import Timeout
from sqlwarden.mirror import local as mirror_sql
from sqlwarden.mirror import quarantine as mirror_quarantine
from sqlwarden.protocol import (
    FtsStatus,
    Message,
    ProgressSnapshot,
    SyncStatus,
    TasksStatus,
    WriterStatus,
)
from sqlwarden.redact import Redactor
from sqlwarden.sync import runs as sync_sql

if TYPE_CHECKING:
    from sqlwarden.facade.engine import Engine

#: How long status waits for an actor's answer before saying it is busy.
STATUS_TIMEOUT_S = 2.0


def engine_status(engine: Engine) -> dict[str, Any]:
    """Everything worth knowing about the running engine, with secrets removed."""
    path = str(engine.config.database.path)
    out: dict[str, Any] = {
        "state": engine._state,
        "run_id": engine.run_id,
        "database": {"path": path, "size_bytes": file_size(path),
                     "wal_bytes": file_size(path + "-wal")},
    }
    if engine._state == "running":
        try:
            state: views.WriterState = engine._ask("writer", WriterStatus(),
                                           timeout=STATUS_TIMEOUT_S)
            out["writer"] = dataclasses.asdict(state)
        except Timeout:
            out["writer"] = {"error": f"no answer within {STATUS_TIMEOUT_S}s (busy)"}
        except EngineError as exc:
            out["writer"] = {"error": str(exc)}
        out["writer"]["queue_depth"] = engine.queue_depth("writer")
    if engine._state == "running" and engine._plans:
        out["tasks"] = task_status(engine)
    if engine._state == "running":
        out["fts"] = fts_status(engine)
    if engine._state == "running" and engine.config.sources:
        out["sync"] = sync_status(engine)
    if engine._state == "running" and engine.mirror.enabled:
        out["mirror"] = mirror_status(engine)
    if engine._readers is not None:
        out["readers"] = {"size": engine._readers.size, "lent": engine._readers.lent}
    if engine._log is not None:
        # The queue (bounded: `blocked` sends waited for room, `dropped` records found
        # none) and the appends (`write_errors` records lost, `waiting_for` "disk full").
        out["message_log"] = {"path": engine.message_log_path, **engine._log.stats()}
    out["failures"] = {"total": engine.supervisor.total,
                       "recent": [dataclasses.asdict(f)
                                  for f in engine.supervisor.failures()],
                       # Actors the supervisor restarted, and those down waiting for it.
                       "restarts": engine.supervisor.restarts(),
                       "restarting": list(engine.supervisor.restarting())}
    if engine._fatal is not None:
        out["fatal"] = dataclasses.asdict(engine._fatal)
    return _redact(engine._redactor, out)

def _answers(engine: Engine, *asks: tuple[str, Message]) -> tuple[Any, ...] | dict[str, str]:
    """The answers to `asks`, or, if one does not come in time, what went wrong."""
    try:
        return tuple(engine._ask(receiver, message, timeout=STATUS_TIMEOUT_S)
                     for receiver, message in asks)
    except Timeout:
        return {"error": f"no answer within {STATUS_TIMEOUT_S}s (busy)"}
    except EngineError as exc:
        return {"error": str(exc)}

def task_status(engine: Engine) -> list[dict[str, Any]] | dict[str, str]:
    answers = _answers(engine, ("backfill", TasksStatus()),
                                   ("progress", ProgressSnapshot()))
    if isinstance(answers, dict):
        return answers
    found: tuple[views.TaskView, ...] = answers[0]
    progress: tuple[views.ProgressView, ...] = answers[1]
    live = {p.name: p for p in progress if p.scope == "task"}
    out = []
    for view in found:
        entry = dataclasses.asdict(view)
        seen = live.get(view.name)
        entry["rate_rows_s"] = seen.rate_rows_s if seen else None
        entry["eta_s"] = seen.eta_s if seen else None
        entry["progress_saved"] = seen.persisted if seen else 0
        entry["progress_save_failures"] = seen.persist_failures if seen else 0
        entry["last_progress_save_error"] = seen.last_persist_error if seen else None
        out.append(entry)
    return out

def fts_status(engine: Engine) -> dict[str, Any]:
    answers = _answers(engine, ("fts", FtsStatus()))
    return answers if isinstance(answers, dict) else fts_view_dict(answers[0])

def sync_status(engine: Engine) -> list[dict[str, Any]] | dict[str, str]:
    answers = _answers(engine, ("sync", SyncStatus()), ("progress", ProgressSnapshot()))
    if isinstance(answers, dict):
        return answers
    found: tuple[views.SourceView, ...] = answers[0]
    progress: tuple[views.ProgressView, ...] = answers[1]
    live = {p.name: p for p in progress if p.scope == "sync"}
    assert engine._readers is not None
    with engine._readers.lend(STATUS_TIMEOUT_S) as conn:
        rejects = sync_sql.reject_counts(conn)
    out = []
    for view in found:
        entry = source_view_dict(view)
        seen = live.get(view.name)
        running = view.current is not None and seen is not None
        entry["rate_rows_s"] = seen.rate_rows_s if running and seen else None
        entry["eta_s"] = seen.eta_s if running and seen else None
        entry["rejects_stored"] = rejects.get(view.name, 0)
        out.append(entry)
    return out

def mirror_status(engine: Engine) -> dict[str, Any]:
    # The outbox first: a batch is counted in the view before its outbox rows go, so an
    # empty outbox read here means the view asked for next counts every change.
    assert engine._readers is not None
    try:
        with engine._readers.lend(STATUS_TIMEOUT_S) as conn:
            depth, oldest = mirror_sql.outbox_depth(conn)
            held, recent = mirror_quarantine.entries(conn)
    except (EngineError, apsw.Error) as exc:
        outbox: dict[str, Any] = {"error": str(exc)}
        quarantine: dict[str, Any] = {"error": str(exc)}
    else:
        outbox = {"depth": depth, "oldest_age_s": None if oldest is None
                  else round(max(0.0, time.time() - oldest), 3)}
        # Rows the mirror could not send: kept off it until they change or are retried.
        quarantine = {"count": held, "recent": recent}
    out = mirror_view_dict(engine.mirror.view())
    out["outbox"] = outbox
    out["quarantine"] = quarantine
    return out


def engine_health(engine: Engine) -> tuple[bool, list[str]]:
    """(steady, reasons): not steady while a required task (one that `provides`
    something) is under way, or while any task has failed."""
    reasons: list[str] = []
    if engine._state != "running":
        reasons.append(f"engine is {engine._state}")
        return False, reasons
    fts = fts_status(engine)
    if fts.get("state") == "restore_failed":
        reasons.append(f"FTS index of {', '.join(fts['tables'])} is stale: {fts['error']}")
    tasks = task_status(engine) if engine._plans else []
    if isinstance(tasks, dict):
        return False, [*reasons, f"tasks: {tasks['error']}"]
    for task in tasks:
        ident = f"{task['name']}@{task['version']}"
        if task["status"] == "failed":
            reasons.append(f"task {ident} failed: {task['error']}")
        elif task["provides"] and task["status"] in ("pending", "running", "paused"):
            # Cancelled is a person's decision, not a state to wait out.
            reasons.append(f"task {ident} (provides {task['provides']}) is "
                           f"{task['status']}: {task['processed']:,} of "
                           f"{task['total'] if task['total'] is not None else '?'} rows")
        if task.get("waiting_for"):
            reasons.append(f"task {ident} waits: {task['waiting_for']}")
        if task["last_progress_save_error"]:
            reasons.append(f"task {ident}: saving progress failed "
                           f"({task['progress_save_failures']} times so far): "
                           f"{task['last_progress_save_error']}")
    reasons.extend(_waits(engine))
    return not reasons, reasons


def _waits(engine: Engine) -> list[str]:
    """What the sync sources, the mirror and the message log wait for (a lock, a full
    disk, a server)."""
    waits: list[str] = []
    if engine.config.sources:
        # The Sync actor's views alone: health needs no rates and no reject counts
        # (a scan of _sw_rejects on every /healthz).
        answers = _answers(engine, ("sync", SyncStatus()))
        if isinstance(answers, dict):
            waits.append(f"sync: {answers['error']}")
        else:
            found: tuple[views.SourceView, ...] = answers[0]
            waits.extend(f"source {s.name} waits: {s.waiting_for}"
                         for s in found if s.waiting_for)
    if engine.mirror.enabled:
        waiting_for = engine.mirror.view().waiting_for
        if waiting_for:
            waits.append(f"mirror waits: {waiting_for}")
    if engine._log is not None:
        # The log's appends wait for room on a full disk (records queue meanwhile).
        logged = engine._log.stats().get("waiting_for")
        if logged:
            waits.append(f"message log waits: {logged}")
    return waits


def run_view_dict(run: views.SyncRunView) -> dict[str, Any]:
    """A run as plain data, with the FTS answers summarised."""
    out = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)
           if f.name not in ("fts_lease", "fts_after")}
    lease = run.fts_lease
    out["fts_deferred"] = bool(lease and lease.deferred)
    return out


def source_view_dict(view: views.SourceView) -> dict[str, Any]:
    out = {f.name: getattr(view, f.name) for f in dataclasses.fields(view)}
    out["current"] = run_view_dict(view.current) if view.current else None
    out["last"] = run_view_dict(view.last) if view.last else None
    return out


def fts_view_dict(view: views.FtsView) -> dict[str, Any]:
    """An `views.FtsView` as plain JSON-able data, for status output."""
    out = dataclasses.asdict(view)
    out["sources"] = dict(view.sources)
    out["tables"] = list(view.tables)
    out["not_deferrable"] = dict(view.not_deferrable)
    return out


def reconcile_view_dict(view: views.ReconcileView) -> dict[str, Any]:
    out = dataclasses.asdict(view)
    out["in_sync"] = view.in_sync
    return out


def mirror_view_dict(view: views.MirrorView) -> dict[str, Any]:
    out = dataclasses.asdict(view)
    if view.last_reconcile is not None:
        out["last_reconcile"] = reconcile_view_dict(view.last_reconcile)
    return out


def _redact(redactor: Redactor, value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(redactor, v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(redactor, v, key) for v in value]
    return redactor.value(key, value)
