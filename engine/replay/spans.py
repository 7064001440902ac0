"""What the replay page draws, read from a log: records in brief, spans, the first pass.

A record becomes a `Brief`: what its card shows, its names and fields cut
to size. `Spans` pairs records into spans (chunks, task runs, FTS
deferrals, mirror reconciles, sync runs) while the log streams past; what
waits for its end lives in small capped dicts, cleared at each run's end.
`take_survey` is the page's first pass: it counts kept records, errors, the
time span, the actors (the lanes) and the spans per kind, so the second pass
(`html`) knows how much to sample and merge before it writes anything.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlwarden.protocol import (
    DeferFts,
    EndSyncRun,
    ProgressEvent,
    ReconcileBegun,
    Reconciled,
    RestoreFts,
    RunChunk,
    SaveTask,
    StartSyncRun,
)
from sqlwarden.replay.read import Damaged, Filter, Record, cut, read_records
from sqlwarden.tasks.chunks import TERMINAL

#: Spans waiting for their end, per kind; past it the oldest is forgotten.
PENDING_CAP = 4_096
#: Distinct names (actors, message kinds, runs) written once and referred to by number.
NAME_CAP = 10_000
#: A card shows a record's fields as JSON cut to this many characters.
FIELD_CHARS = 400

#: What a span can be, in the order the page numbers them.
SPAN_KINDS = ("chunk", "task", "fts", "mirror", "sync")
#: Lanes in this order first (the way work flows), then any other actor by name.
_LANE_ORDER = ("facade", "sync", "fts", "writer", "backfill", "mirror", "progress")
#: Actor, message and run names longer than this are cut (they are lane labels).
_NAME_CHARS = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ELLIPSIS = "\u2026"


# --- records in brief --------------------------------------------------------------------


class Brief(NamedTuple):
    """What a card shows of one record, its fields already cut to size."""

    us: int
    seq: int
    kind: str
    sender: str
    receiver: str
    message: str
    corr: int | str | None
    duration_ms: float | None
    run: str
    text: str
    error: str
    kept: bool

    @classmethod
    def of(cls, record: Record, us: int, kept: bool, detail: bool) -> Brief:
        """`record` in brief; its fields and error only with `detail` (the page, not
        the first pass)."""
        error = ""
        text = ""
        if detail:
            text = cut(json.dumps(record.get("fields") or {}, ensure_ascii=False,
                                  separators=(",", ":"), default=str), FIELD_CHARS, _ELLIPSIS)
            if record["kind"] == "error":
                problem = record.get("error")
                if isinstance(problem, dict):
                    error = (f"{short_name(problem.get('type'))}: "
                             f"{short_name(problem.get('message'))}")
                else:
                    error = short_name(problem)
                error = cut(error, FIELD_CHARS, _ELLIPSIS)
        return cls(us, record["seq"], record["kind"], short_name(record.get("sender")),
                   short_name(record.get("receiver")), short_name(record.get("message")),
                   _corr(record.get("corr")), _number(record.get("duration_ms")),
                   short_name(record.get("run")), text, error, kept)


def epoch_us(ts: Any) -> int | None:
    """A record's ISO time as microseconds since the epoch; None when it is not a time."""
    if not isinstance(ts, str):
        return None
    try:
        value = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def short_name(value: Any) -> str:
    """An actor, message or run name as text, cut to a lane label's length."""
    text = value if isinstance(value, str) else "?" if value is None else str(value)
    return cut(text, _NAME_CHARS, _ELLIPSIS)


def _corr(value: Any) -> int | str | None:
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- spans -------------------------------------------------------------------------------


@dataclass(slots=True)
class Span:
    """A bar on the page: its kind, the lane it is drawn in, the records that open and
    close it (no close: still open at its run's end, drawn up to the run's last record)."""

    kind: str
    lane: str
    label: str
    state: str
    start: Brief
    end: Brief | None
    end_us: int

    @property
    def kept(self) -> bool:
        return self.start.kept or (self.end is not None and self.end.kept)


@dataclass(slots=True)
class _TaskRun:
    """A task run under way: from its first chunk or save to the save that ends it."""

    start: Brief
    name: str
    status: str = "running"
    last_save: int | str | None = None
    last_answer: Brief | None = None
    #: The `writer.task_state` ask whose answer ends the run, once known.
    ending: int | str | None = None


def _put(pending: dict[Any, Any], key: Any, value: Any) -> None:
    """Remember `value`; the oldest entry goes when the dict is full (answers lost)."""
    if key not in pending and len(pending) >= PENDING_CAP:
        del pending[next(iter(pending))]
    pending[key] = value


def _task_status(fields: dict[str, Any]) -> str | None:
    """The status a `writer.task_state` sets, when the log kept its columns."""
    columns = fields.get("fields")
    if isinstance(columns, dict):  # a summary keeps only {"items": n}
        status = columns.get("status")
        return status if isinstance(status, str) else None
    if isinstance(columns, list):
        for pair in columns:
            if isinstance(pair, list) and len(pair) == 2 and pair[0] == "status":
                return pair[1] if isinstance(pair[1], str) else None
    return None


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (int, str, float, type(None))) else str(value)


class Spans:
    """Pairs records into spans and hands each finished one to `emit`.

    Fed every record of the log in order (kept or not, so pairs are found
    whatever the filter). What waits for its end is keyed by correlation id,
    task, sync run or reconcile number, and is dropped at each run's end.
    """

    def __init__(self, emit: Callable[[Span], None], *, detail: bool) -> None:
        self._emit = emit
        self._detail = detail
        self._run: str | None = None
        self._last_us = 0
        self._chunks: dict[Any, tuple[Brief, str]] = {}
        self._tasks: dict[tuple[str, Any], _TaskRun] = {}
        self._saves: dict[Any, tuple[str, Any]] = {}
        self._sync_starts: dict[Any, tuple[Brief, str]] = {}
        self._syncs: dict[Any, tuple[Brief, str]] = {}
        self._sync_ends: dict[Any, tuple[Any, str]] = {}
        self._reconciles: dict[Any, tuple[Brief, str]] = {}
        self._fts: tuple[Brief, str] | None = None

    def walk(self, files: Sequence[Path],
             keep: Filter) -> Iterator[tuple[Record, int, bool] | None]:
        """Feed every record of `files` in order, and yield each line as it goes by.

        A record comes as (record, its time in microseconds since the epoch,
        whether `keep` keeps it); a damaged line or a record without a
        readable time as None. At the end, what is still open is drawn.
        """
        for item in read_records(files):
            if isinstance(item, Damaged) or (us := epoch_us(item.get("ts"))) is None:
                yield None
                continue
            kept = keep(item)
            self.add(item, us, kept)
            yield item, us, kept
        self.finish()

    def add(self, record: Record, us: int, kept: bool) -> None:
        """One record of the log, kept or not (so pairs are found whatever the filter)."""
        run = short_name(record.get("run"))
        if run != self._run:
            if self._run is not None:
                self.finish()
            self._run, self._last_us = run, us
        self._last_us = max(self._last_us, us)
        message = record.get("message")
        kind = record["kind"]
        fields = record.get("fields")
        if not isinstance(fields, dict):
            fields = {}
        corr = _hashable(record.get("corr"))
        answer = kind == "reply" or kind == "error"
        if message == RunChunk.kind:
            self._chunk(record, us, kept, fields, corr, answer)
        elif message == SaveTask.kind:
            self._task_state(record, us, kept, fields, corr, answer)
        elif message == ProgressEvent.kind and kind == "tell":
            self._progress(record, us, kept, fields)
        elif message == DeferFts.kind and kind == "reply":
            if self._fts is None and "sources" in fields:
                tables = fields.get("tables")
                names = (", ".join(str(t) for t in tables) if isinstance(tables, list)
                         and tables else "FTS")
                self._fts = (self._brief(record, us, kept), f"{names} deferred")
        elif message == RestoreFts.kind and kind == "reply":
            if self._fts is not None:
                start, label = self._fts
                self._fts = None
                self._close("fts", start.receiver, f"{label}, then restored", "ok", start,
                            self._brief(record, us, kept))
        elif message in (ReconcileBegun.kind, Reconciled.kind) and kind == "tell":
            self._reconcile(record, us, kept, fields)
        elif message in (StartSyncRun.kind, EndSyncRun.kind):
            self._sync(record, us, kept, fields, corr, answer)

    def finish(self) -> None:
        """The run (or the log) ended: draw what is still open up to its last record."""
        for start, label in self._chunks.values():
            self._open("chunk", start.receiver, f"{label} (no answer)", start)
        for task in self._tasks.values():
            self._open("task", task.start.sender, f"{task.name}: {task.status} (open at end)",
                       task.start)
        if self._fts is not None:
            self._open("fts", self._fts[0].receiver, "deferred (persisted)", self._fts[0])
        for start, label in self._syncs.values():
            self._open("sync", start.sender, f"{label} (open at end)", start)
        for start, label in self._reconciles.values():
            self._open("mirror", start.receiver, f"{label} (open at end)", start)
        self._chunks.clear()
        self._tasks.clear()
        self._saves.clear()
        self._sync_starts.clear()
        self._syncs.clear()
        self._sync_ends.clear()
        self._reconciles.clear()
        self._fts = None

    # --- kinds ---------------------------------------------------------------------------

    def _brief(self, record: Record, us: int, kept: bool) -> Brief:
        return Brief.of(record, us, kept, self._detail)

    def _chunk(self, record: Record, us: int, kept: bool, fields: dict[str, Any], corr: Any,
               answer: bool) -> None:
        if not answer:
            brief = self._brief(record, us, kept)
            task = short_name(fields.get("task"))
            self._task_seen(task, fields.get("version"), brief)
            _put(self._chunks, corr, (brief, f"chunk of {task}"))
            return
        pending = self._chunks.pop(corr, None)
        if pending is None:
            return
        start, label = pending
        if record["kind"] == "error":
            state = "error"
        else:
            state = "ok"
            processed = fields.get("processed")
            if isinstance(processed, int):
                label += f": {processed:,} rows"
        self._close("chunk", start.receiver, label, state, start, self._brief(record, us, kept))

    def _task_seen(self, task: str, version: Any, brief: Brief) -> _TaskRun:
        key = (task, _hashable(version))
        run = self._tasks.get(key)
        if run is None:
            name = task if version is None else f"{task}@{version}"
            run = _TaskRun(start=brief, name=name)
            _put(self._tasks, key, run)
        return run

    def _task_state(self, record: Record, us: int, kept: bool, fields: dict[str, Any],
                    corr: Any, answer: bool) -> None:
        if not answer:
            key = (short_name(fields.get("task")), _hashable(fields.get("version")))
            run = self._task_seen(key[0], fields.get("version"), self._brief(record, us, kept))
            run.last_save = corr
            _put(self._saves, corr, key)
            status = _task_status(fields)
            if status is not None:
                run.status = status
                if status in TERMINAL:
                    run.ending = corr
            return
        saved = self._saves.pop(corr, None)
        task = self._tasks.get(saved) if saved is not None else None
        if saved is None or task is None:
            return
        brief = self._brief(record, us, kept)
        task.last_answer = brief
        if task.ending == corr:
            failed = record["kind"] == "error" or task.status == "failed"
            self._end_task(saved, task, brief, "error" if failed else "ok")

    def _progress(self, record: Record, us: int, kept: bool, fields: dict[str, Any]) -> None:
        # A summarised log does not keep the columns a task_state sets; the
        # terminal progress event, sent right after the last save, says it ended.
        if fields.get("scope") != "task" or fields.get("terminal") is not True:
            return
        key = (short_name(fields.get("name")), _hashable(fields.get("version")))
        run = self._tasks.get(key)
        if run is None or run.ending is not None:
            return
        run.status = short_name(fields.get("state"))
        if run.last_save is not None and self._saves.get(run.last_save) == key:
            run.ending = run.last_save  # ends when that save is answered
            return
        end = run.last_answer or self._brief(record, us, kept)
        self._end_task(key, run, end, "error" if run.status == "failed" else "ok")

    def _end_task(self, key: tuple[str, Any], run: _TaskRun, end: Brief, state: str) -> None:
        del self._tasks[key]
        self._close("task", run.start.sender, f"{run.name}: {run.status}", state, run.start, end)

    def _reconcile(self, record: Record, us: int, kept: bool, fields: dict[str, Any]) -> None:
        number = _hashable(fields.get("number"))
        verify = fields.get("verify") is True
        if record.get("message") == ReconcileBegun.kind:
            label = f"{'verify' if verify else 'reconcile'} #{number}"
            _put(self._reconciles, (verify, number), (self._brief(record, us, kept), label))
            return
        pending = self._reconciles.pop((verify, number), None)
        if pending is None:
            return
        start, label = pending
        failed = fields.get("error") not in (None, "")
        seconds = _number(fields.get("seconds"))
        if failed:
            label += ": failed"
        elif seconds is not None:
            label += f": {seconds:.2f} s"
        self._close("mirror", start.receiver, label, "error" if failed else "ok", start,
                    self._brief(record, us, kept))

    def _sync(self, record: Record, us: int, kept: bool, fields: dict[str, Any], corr: Any,
              answer: bool) -> None:
        starting = record.get("message") == StartSyncRun.kind
        if not answer:
            if starting:
                label = f"sync {short_name(fields.get('source'))} {short_name(fields.get('mode'))}"
                _put(self._sync_starts, corr, (self._brief(record, us, kept), label))
            else:
                _put(self._sync_ends, corr, (_hashable(fields.get("run")),
                                             short_name(fields.get("status"))))
            return
        if starting:
            begun = self._sync_starts.pop(corr, None)
            if begun is not None and record["kind"] == "reply":
                # The writer answers with the new `_sw_sync_runs` row's id.
                _put(self._syncs, _hashable(fields.get("last_rowid")), begun)
            return
        ending = self._sync_ends.pop(corr, None)
        if ending is None:
            return
        run_id, status = ending
        pending = self._syncs.pop(run_id, None)
        if pending is None:
            return
        start, label = pending
        failed = record["kind"] == "error" or status == "failed"
        self._close("sync", start.sender, f"{label}: {status}", "error" if failed else "ok",
                    start, self._brief(record, us, kept))

    # --- emitting ------------------------------------------------------------------------

    def _close(self, kind: str, lane: str, label: str, state: str, start: Brief,
               end: Brief) -> None:
        self._emit(Span(kind, lane, label, state, start, end, max(end.us, start.us)))

    def _open(self, kind: str, lane: str, label: str, start: Brief) -> None:
        self._emit(Span(kind, lane, label, "open", start, None, max(self._last_us, start.us)))


# --- first pass --------------------------------------------------------------------------


@dataclass(slots=True)
class Survey:
    """What the first pass learns: counts, time span, lanes, spans per kind."""

    records: int = 0
    errors: int = 0
    damaged: int = 0
    first_us: int | None = None
    last_us: int | None = None
    lanes: tuple[str, ...] = ()
    spans: Counter[str] = field(default_factory=Counter)


def take_survey(files: Sequence[Path], keep: Filter) -> Survey:
    """The first pass over the log `files`, counting what `keep` keeps."""
    survey = Survey()
    actors: dict[str, None] = {}

    def count(span: Span) -> None:
        if span.kept:
            survey.spans[span.kind] += 1

    for seen in Spans(count, detail=False).walk(files, keep):
        if seen is None:
            survey.damaged += 1
            continue
        item, us, kept = seen
        if not kept:
            continue
        survey.records += 1
        survey.errors += item["kind"] == "error"
        if survey.first_us is None or us < survey.first_us:
            survey.first_us = us
        if survey.last_us is None or us > survey.last_us:
            survey.last_us = us
        for actor in (short_name(item.get("sender")), short_name(item.get("receiver"))):
            if actor not in actors and len(actors) < NAME_CAP:
                actors[actor] = None
    order = {name: i for i, name in enumerate(_LANE_ORDER)}
    survey.lanes = tuple(sorted(actors, key=lambda a: (order.get(a, len(order)), a)))
    return survey
