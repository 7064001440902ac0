"""`sqlwarden replay LOG --html OUT`: a message log as one self-contained HTML page.

The page is a swimlane timeline: one lane per actor, each message a mark in
the lane of the actor that sent it (an answer in the lane of the actor that
handled it), and spans for chunks, task runs, FTS deferrals, mirror
reconciles and sync runs. It zooms, pans and shows a card per mark or span.
Styles, data and script are inline and the chart is plain SVG, so viewing it
needs no network.

Memory does not grow with the log. `write_html` reads it twice, streaming:
the first pass counts (kept records, errors, time span, actors, spans per
kind); the second writes the page as it reads: the head, then one JSON item
per drawn mark or span, then the script. Past `MARK_CAP` records only every
k-th one is drawn (errors always, up to `ERROR_CAP`); past `SPAN_CAP` spans
of one kind, adjacent ones are merged. Spans still waiting for their end live
in small dicts, capped and cleared at each run's end.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple

from sqlwarden.errors import ReplayError
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
from sqlwarden.replay.read import Damaged, Filter, Record, read_records
from sqlwarden.tasks.chunks import TERMINAL

#: Marks drawn at most (about): past it every k-th record is drawn.
MARK_CAP = 20_000
#: Error marks drawn at most; below it every error is drawn, sampled or not.
ERROR_CAP = 5_000
#: Spans drawn per kind at most: past it adjacent spans of a kind are merged.
SPAN_CAP = 2_500
#: Spans waiting for their end, per kind; past it the oldest is forgotten.
PENDING_CAP = 4_096
#: Distinct names (actors, message kinds, runs) written once and referred to by number.
NAME_CAP = 10_000
#: A card shows a record's fields as JSON cut to this many characters.
FIELD_CHARS = 400

SPAN_KINDS = ("chunk", "task", "fts", "mirror", "sync")
_MERGED = {"chunk": "chunks", "task": "task runs", "fts": "FTS deferrals",
           "mirror": "reconciles", "sync": "sync runs"}
_STATES = ("ok", "error", "open")
_CODES = {"tell": 0, "ask": 1, "reply": 2, "error": 3}
#: Lanes in this order first (the way work flows), then any other actor by name.
_LANE_ORDER = ("facade", "sync", "fts", "writer", "backfill", "mirror", "progress")
#: Actor, message and run names longer than this are cut (they are lane labels).
_NAME_CHARS = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class HtmlReport:
    """What `write_html` wrote: counts for the one line the CLI prints."""

    path: Path
    records: int
    marks: int
    spans: int
    lanes: int
    damaged: int = 0
    #: Every `every`-th record was drawn (1: all of them).
    every: int = 1

    def line(self) -> str:
        text = (f"wrote {self.path}: {self.records:,} records, {self.lanes} lanes, "
                f"{self.marks:,} marks, {self.spans:,} spans")
        if self.every > 1:
            text += f" (1 in {self.every:,} records drawn, and the errors)"
        if self.damaged:
            text += f"; {self.damaged:,} damaged line{'s' if self.damaged != 1 else ''} skipped"
        return text


def write_html(files: Sequence[Path], out: Path, keep: Filter) -> HtmlReport:
    """Write the timeline of the log `files` (oldest first) to `out`.

    Records `keep` refuses are not drawn; a span is drawn when the record
    that opens it or the one that closes it is kept. The page is written
    next to `out` and renamed over it when complete.
    """
    survey = _survey(files, keep)
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8", errors="replace", newline="\n") as handle:
            page = _Page(handle, survey, files)
            page.write(files, keep)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ReplayError(f"{out}: cannot write the page: {exc.strerror or exc}") from None
    return HtmlReport(path=out, records=survey.records, marks=page.marks, spans=page.spans,
                      lanes=len(survey.lanes), damaged=survey.damaged, every=page.every)


# --- records in brief --------------------------------------------------------------------


class _Brief(NamedTuple):
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


def _epoch_us(ts: Any) -> int | None:
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


def _name(value: Any) -> str:
    text = value if isinstance(value, str) else "?" if value is None else str(value)
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS - 1] + "\u2026"


def _corr(value: Any) -> int | str | None:
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fields_text(value: Any, limit: int = FIELD_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _brief(record: Record, us: int, kept: bool, detail: bool) -> _Brief:
    error = ""
    text = ""
    if detail:
        text = _fields_text(record.get("fields") or {})
        if record["kind"] == "error":
            problem = record.get("error")
            if isinstance(problem, dict):
                error = f"{_name(problem.get('type'))}: {_name(problem.get('message'))}"
            else:
                error = _name(problem)
            if len(error) > FIELD_CHARS:
                error = error[:FIELD_CHARS - 1] + "\u2026"
    return _Brief(us, record["seq"], record["kind"], _name(record.get("sender")),
                  _name(record.get("receiver")), _name(record.get("message")),
                  _corr(record.get("corr")), _number(record.get("duration_ms")),
                  _name(record.get("run")), text, error, kept)


# --- spans -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Span:
    kind: str
    lane: str
    label: str
    state: str
    start: _Brief
    end: _Brief | None
    end_us: int

    @property
    def kept(self) -> bool:
        return self.start.kept or (self.end is not None and self.end.kept)


@dataclass(slots=True)
class _TaskRun:
    start: _Brief
    name: str
    status: str = "running"
    last_save: int | str | None = None
    last_answer: _Brief | None = None
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


class _Spans:
    """Pairs records into spans and hands each finished one to `emit`.

    Fed every record of the log in order (kept or not, so pairs are found
    whatever the filter). What waits for its end is keyed by correlation id,
    task, sync run or reconcile number, and is dropped at each run's end.
    """

    def __init__(self, emit: Callable[[_Span], None], *, detail: bool) -> None:
        self._emit = emit
        self._detail = detail
        self._run: str | None = None
        self._last_us = 0
        self._chunks: dict[Any, tuple[_Brief, str]] = {}
        self._tasks: dict[tuple[str, Any], _TaskRun] = {}
        self._saves: dict[Any, tuple[str, Any]] = {}
        self._sync_starts: dict[Any, tuple[_Brief, str]] = {}
        self._syncs: dict[Any, tuple[_Brief, str]] = {}
        self._sync_ends: dict[Any, tuple[Any, str]] = {}
        self._reconciles: dict[Any, tuple[_Brief, str]] = {}
        self._fts: tuple[_Brief, str] | None = None

    def add(self, record: Record, us: int, kept: bool) -> None:
        run = _name(record.get("run"))
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

    def _brief(self, record: Record, us: int, kept: bool) -> _Brief:
        return _brief(record, us, kept, self._detail)

    def _chunk(self, record: Record, us: int, kept: bool, fields: dict[str, Any], corr: Any,
               answer: bool) -> None:
        if not answer:
            brief = self._brief(record, us, kept)
            task = _name(fields.get("task"))
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

    def _task_seen(self, task: str, version: Any, brief: _Brief) -> _TaskRun:
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
            key = (_name(fields.get("task")), _hashable(fields.get("version")))
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
        key = (_name(fields.get("name")), _hashable(fields.get("version")))
        run = self._tasks.get(key)
        if run is None or run.ending is not None:
            return
        run.status = _name(fields.get("state"))
        if run.last_save is not None and self._saves.get(run.last_save) == key:
            run.ending = run.last_save  # ends when that save is answered
            return
        end = run.last_answer or self._brief(record, us, kept)
        self._end_task(key, run, end, "error" if run.status == "failed" else "ok")

    def _end_task(self, key: tuple[str, Any], run: _TaskRun, end: _Brief, state: str) -> None:
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
                label = f"sync {_name(fields.get('source'))} {_name(fields.get('mode'))}"
                _put(self._sync_starts, corr, (self._brief(record, us, kept), label))
            else:
                _put(self._sync_ends, corr, (_hashable(fields.get("run")),
                                             _name(fields.get("status"))))
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

    def _close(self, kind: str, lane: str, label: str, state: str, start: _Brief,
               end: _Brief) -> None:
        self._emit(_Span(kind, lane, label, state, start, end, max(end.us, start.us)))

    def _open(self, kind: str, lane: str, label: str, start: _Brief) -> None:
        self._emit(_Span(kind, lane, label, "open", start, None, max(self._last_us, start.us)))


# --- first pass --------------------------------------------------------------------------


@dataclass(slots=True)
class _Survey:
    """What the first pass learns: counts, time span, lanes, spans per kind."""

    records: int = 0
    errors: int = 0
    damaged: int = 0
    first_us: int | None = None
    last_us: int | None = None
    lanes: tuple[str, ...] = ()
    spans: Counter[str] = field(default_factory=Counter)


def _survey(files: Sequence[Path], keep: Filter) -> _Survey:
    survey = _Survey()
    actors: dict[str, None] = {}

    def count(span: _Span) -> None:
        if span.kept:
            survey.spans[span.kind] += 1

    spans = _Spans(count, detail=False)
    for item in read_records(files):
        if isinstance(item, Damaged):
            survey.damaged += 1
            continue
        us = _epoch_us(item.get("ts"))
        if us is None:
            survey.damaged += 1
            continue
        kept = keep(item)
        spans.add(item, us, kept)
        if not kept:
            continue
        survey.records += 1
        survey.errors += item["kind"] == "error"
        if survey.first_us is None or us < survey.first_us:
            survey.first_us = us
        if survey.last_us is None or us > survey.last_us:
            survey.last_us = us
        for actor in (_name(item.get("sender")), _name(item.get("receiver"))):
            if actor not in actors and len(actors) < NAME_CAP:
                actors[actor] = None
    spans.finish()
    order = {name: i for i, name in enumerate(_LANE_ORDER)}
    survey.lanes = tuple(sorted(actors, key=lambda a: (order.get(a, len(order)), a)))
    return survey


# --- second pass: the page ---------------------------------------------------------------


def _js(value: Any) -> str:
    """JSON that cannot end the <script> element it sits in (nor open a comment)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(slots=True)
class _Merge:
    """Adjacent spans of one kind drawn as one, once a kind has more than `SPAN_CAP`."""

    first: _Span
    last: _Span
    count: int = 1
    error: bool = False
    open: bool = False


class _Page:
    """Writes the page to `out` while the second pass reads the log."""

    def __init__(self, out: IO[str], survey: _Survey, files: Sequence[Path]) -> None:
        self._out = out
        self._survey = survey
        self._files = files
        self._names: dict[str, int] = {}
        self._lanes = set(survey.lanes)
        self._items = 0
        self.marks = 0
        self.spans = 0
        self.every = self._error_every = 1
        if survey.records > MARK_CAP:
            budget = MARK_CAP - min(survey.errors, ERROR_CAP)
            self.every = max(1, math.ceil((survey.records - survey.errors) / budget))
            self._error_every = max(1, math.ceil(survey.errors / ERROR_CAP))
        self._merge_by = {kind: max(1, math.ceil(survey.spans[kind] / SPAN_CAP))
                          for kind in SPAN_KINDS}
        self._merging: dict[str, _Merge] = {}
        self._kept = 0
        self._kept_errors = 0

    def write(self, files: Sequence[Path], keep: Filter) -> None:
        self._head()
        self._out.write('<script type="application/json" id="sw-data">[')
        spans = _Spans(self._span, detail=True)
        for item in read_records(files):
            if isinstance(item, Damaged):
                continue
            us = _epoch_us(item.get("ts"))
            if us is None:
                continue
            kept = keep(item)
            spans.add(item, us, kept)
            if kept and self._sampled(item):
                self._item([0, self._record(_brief(item, us, True, True))])
        spans.finish()
        for kind in list(self._merging):
            self._flush(kind)
        self._out.write("]</script>\n")
        self._meta()
        self._out.write(f"<script>\n{_SCRIPT}</script>\n</body>\n</html>\n")

    def _sampled(self, record: Record) -> bool:
        if record["kind"] == "error":
            self._kept_errors += 1
            return (self._kept_errors - 1) % self._error_every == 0
        self._kept += 1
        return (self._kept - 1) % self.every == 0

    def _item(self, value: list[Any]) -> None:
        self._out.write(("," if self._items else "") + _js(value) + "\n")
        self._items += 1
        if value[0] == 0:
            self.marks += 1
        else:
            self.spans += 1

    def _name(self, text: str) -> int | str:
        number = self._names.get(text)
        if number is None:
            if len(self._names) >= NAME_CAP:
                return text
            number = self._names[text] = len(self._names)
        return number

    def _record(self, brief: _Brief) -> list[Any]:
        return [brief.us, self._name(brief.sender), self._name(brief.receiver),
                _CODES[brief.kind], brief.seq, self._name(brief.message), brief.corr,
                brief.duration_ms, self._name(brief.run), brief.text, brief.error]

    # --- spans ---------------------------------------------------------------------------

    def _span(self, span: _Span) -> None:
        if not span.kept or span.lane not in self._lanes:
            return
        if self._merge_by[span.kind] == 1:
            self._write_span(span.kind, span.lane, span.label, span.state, span.start.us,
                             span.end_us, 1, span.start, span.end)
            return
        merging = self._merging.get(span.kind)
        if merging is not None and merging.first.lane != span.lane:
            self._flush(span.kind)
            merging = None
        if merging is None:
            merging = self._merging[span.kind] = _Merge(first=span, last=span)
        else:
            merging.last = span
            merging.count += 1
        merging.error = merging.error or span.state == "error"
        merging.open = merging.open or span.state == "open"
        if merging.count >= self._merge_by[span.kind]:
            self._flush(span.kind)

    def _flush(self, kind: str) -> None:
        merging = self._merging.pop(kind)
        first, last = merging.first, merging.last
        if merging.count == 1:
            self._write_span(kind, first.lane, first.label, first.state, first.start.us,
                             first.end_us, 1, first.start, first.end)
            return
        state = "error" if merging.error else "open" if merging.open else "ok"
        label = f"{merging.count:,} {_MERGED[kind]}: {first.label} \u2026 {last.label}"
        self._write_span(kind, first.lane, label, state, first.start.us,
                         max(last.end_us, first.end_us), merging.count, first.start,
                         last.end or last.start)

    def _write_span(self, kind: str, lane: str, label: str, state: str, start_us: int,
                    end_us: int, count: int, opened: _Brief, closed: _Brief | None) -> None:
        self._item([1, SPAN_KINDS.index(kind), self._name(lane), start_us, end_us, label,
                    _STATES.index(state), count, self._record(opened),
                    None if closed is None else self._record(closed)])

    # --- page ----------------------------------------------------------------------------

    def _title(self) -> str:
        return f"sqlwarden replay: {self._files[-1].name if self._files else 'no log'}"

    def _head(self) -> None:
        survey = self._survey
        files = ", ".join(str(f) for f in self._files) or "(no files)"
        sampled = (f"; 1 in {self.every:,} records drawn, and the errors"
                   if self.every > 1 else "")
        damaged = (f"; {survey.damaged:,} damaged line{'s' if survey.damaged != 1 else ''} "
                   "skipped" if survey.damaged else "")
        self._out.write(_HEAD.format(
            title=html.escape(self._title()),
            css=_CSS,
            files=html.escape(files),
            counts=html.escape(f"{survey.records:,} records, {len(survey.lanes)} lanes"
                               f"{sampled}{damaged}")))

    def _meta(self) -> None:
        survey = self._survey
        meta = {
            "t0": survey.first_us or 0, "t1": survey.last_us or 0,
            "lanes": list(survey.lanes),
            "names": list(self._names),
            "spanKinds": list(SPAN_KINDS),
            "states": list(_STATES),
            "records": survey.records,
            "every": self.every,
            "damaged": survey.damaged,
        }
        self._out.write(f'<script type="application/json" id="sw-meta">{_js(meta)}</script>\n')


_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="about"><span id="files">{files}</span><br><span id="counts">{counts}</span><span
id="drawn"></span></p>
<div class="controls">
<button type="button" id="zoom-in" title="zoom in (+)">+</button>
<button type="button" id="zoom-out" title="zoom out (-)">&minus;</button>
<button type="button" id="zoom-reset" title="show everything (0)">reset</button>
<span id="range"></span>
<span class="legend"><i class="key tell"></i>tell <i class="key ask"></i>ask
<i class="key answer"></i>reply
<i class="key fail"></i>error <i class="key bar chunk"></i>chunk <i class="key bar task"></i>task
run <i class="key bar fts"></i>FTS deferral <i class="key bar mirror"></i>reconcile
<i class="key bar sync"></i>sync run</span>
</div>
<p class="hint">Wheel to zoom around the pointer, drag to pan, hover a mark or a span for
its card.</p>
</header>
<div id="view"><svg id="chart" role="img" aria-label="message timeline"></svg></div>
<div id="card" class="card" role="tooltip"></div>
"""

_CSS = """:root { color-scheme: light; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: #fff; }
header { padding: 10px 16px 4px; border-bottom: 1px solid var(--line); }
h1 { font-size: 16px; margin: 0 0 4px; }
.about, .hint { margin: 0 0 6px; color: var(--muted); }
.controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 4px; }
.controls button { min-width: 34px; padding: 2px 8px; font: inherit; cursor: pointer;
  border: 1px solid var(--line); border-radius: 4px; background: #f6f8fa; }
.controls button:hover { background: #eaeef2; }
#range { margin: 0 12px; font-variant-numeric: tabular-nums; }
.legend { color: var(--muted); }
.key { display: inline-block; width: 9px; height: 9px; margin: 0 3px 0 8px; border-radius: 50%;
  vertical-align: -1px; }
.key.tell { background: #0969da; } .key.ask { background: #8250df; }
.key.answer { background: #8c959f; }
.key.fail { background: #cf222e; box-shadow: 0 0 0 2px #ffcecb; }
.key.bar { width: 16px; height: 7px; border-radius: 2px; }
#view { overflow: hidden; user-select: none; }
#chart { display: block; width: 100%; cursor: grab; }
#chart.dragging { cursor: grabbing; }
.lane-bg { fill: #fff; } .lane:nth-child(even) .lane-bg { fill: #f6f8fa; }
.lane-rule { stroke: var(--line); }
.lane-name { font-weight: 600; fill: var(--ink); }
.grid line { stroke: #eaeef2; }
.axis text { fill: var(--muted); font-size: 11px; font-variant-numeric: tabular-nums; }
.axis line { stroke: var(--muted); }
.axis .base { stroke: var(--line); }
.mark { stroke: #fff; stroke-width: 0.8; }
.mark.tell { fill: #0969da; } .mark.ask { fill: #8250df; } .mark.reply { fill: #8c959f; }
.mark.error { fill: #cf222e; stroke: #ffcecb; stroke-width: 2.5; }
.mark.hot, .span.hot { stroke: #1f2328; stroke-width: 2; }
.span { stroke: rgba(0,0,0,0.15); stroke-width: 0.5; }
.span.chunk, .key.chunk { fill: #54aeff; background: #54aeff; }
.span.task, .key.task { fill: #4ac26b; background: #4ac26b; }
.span.fts, .key.fts { fill: #d4a72c; background: #d4a72c; }
.span.mirror, .key.mirror { fill: #a475f9; background: #a475f9; }
.span.sync, .key.sync { fill: #76b7b2; background: #76b7b2; }
.span.state-error { fill: #cf222e; }
.span.state-open { fill-opacity: 0.55; stroke: #1f2328; stroke-dasharray: 3 2; }
.span-label { font-size: 10px; fill: #1f2328; pointer-events: none; }
.empty { fill: var(--muted); font-size: 14px; }
.card { display: none; position: fixed; z-index: 10; max-width: 480px; padding: 8px 10px;
  background: #fff; border: 1px solid var(--line); border-radius: 6px;
  box-shadow: 0 4px 14px rgba(0,0,0,0.15); pointer-events: none; }
.card.visible { display: block; }
.card h2 { font-size: 13px; margin: 0 0 4px; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 0; }
.card dt { color: var(--muted); } .card dd { margin: 0; overflow-wrap: anywhere; }
.card pre { margin: 4px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 11px;
  background: #f6f8fa; padding: 4px 6px; border-radius: 4px; }
.card .failure { color: #cf222e; }
.card h3 { font-size: 12px; margin: 6px 0 2px; color: var(--muted); }
"""

_SCRIPT = r"""(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("sw-meta").textContent);
  var items = JSON.parse(document.getElementById("sw-data").textContent);
  var svg = document.getElementById("chart");
  var NS = svg.namespaceURI;
  var card = document.getElementById("card");
  var rangeText = document.getElementById("range");
  var GUTTER = 132, RIGHT = 14, AXIS = 30, BAND = 26, ROW = 12, PAD = 6, MAX_ROWS = 6;
  var KINDS = ["tell", "ask", "reply", "error"];
  var ARROW = " \u2192 ";
  var names = meta.names;
  var t0 = meta.t0, span = Math.max(meta.t1 - meta.t0, 1000), margin = span * 0.02;
  var home = [t0 - margin, t0 + span + margin];
  var vs = home[0], ve = home[1];
  var MIN_WIDTH = 5, MAX_WIDTH = (home[1] - home[0]) * 8;
  // Keyed by actor names from the log, so without a prototype ("__proto__" is a name too).
  var plotW = 600, laneTop = dict(), laneRows = dict(), height = AXIS;
  var marks = [], bars = [], labels = [], hot = null, drag = null, frame = 0;

  function nm(v) { return typeof v === "number" ? names[v] : v; }
  function dict() { return Object.create(null); }
  function el(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function pad(n, w) { var s = String(n); while (s.length < w) { s = "0" + s; } return s; }
  function iso(us) {
    var d = new Date(Math.floor(us / 1000));
    return d.toISOString().slice(0, 23) + pad(((us % 1000) + 1000) % 1000, 3) + "Z";
  }
  function clock(us, step) {
    var d = new Date(Math.floor(us / 1000));
    var text = pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2);
    if (step >= 3600e6) { return d.toISOString().slice(5, 10) + " " + text; }
    text += ":" + pad(d.getUTCSeconds(), 2);
    if (step < 1e6) { text += "." + pad(d.getUTCMilliseconds(), 3); }
    if (step < 1e3) { text += pad(((us % 1000) + 1000) % 1000, 3); }
    return text;
  }
  function duration(us) {
    var ms = us / 1000;
    if (ms < 1) { return (us).toFixed(0) + " \u00b5s"; }
    if (ms < 1000) { return ms.toFixed(ms < 10 ? 3 : 1) + " ms"; }
    if (ms < 120000) { return (ms / 1000).toFixed(3) + " s"; }
    return (ms / 60000).toFixed(1) + " min";
  }

  // --- layout: lanes, with rows below the marks for spans that overlap ---
  var byLane = dict();
  items.forEach(function (it, i) {
    if (it[0] !== 1) { return; }
    var lane = nm(it[2]);
    (byLane[lane] = byLane[lane] || []).push(i);
  });
  var rowOf = {};
  Object.keys(byLane).forEach(function (lane) {
    var ends = [];
    byLane[lane].sort(function (a, b) { return items[a][3] - items[b][3]; });
    byLane[lane].forEach(function (i) {
      var it = items[i], row = -1;
      for (var r = 0; r < ends.length; r++) { if (ends[r] <= it[3]) { row = r; break; } }
      if (row < 0) {
        if (ends.length < MAX_ROWS) { row = ends.length; ends.push(0); }
        else { row = ends.indexOf(Math.min.apply(null, ends)); }
      }
      ends[row] = Math.max(it[4], it[3] + 1);
      rowOf[i] = row;
    });
    laneRows[lane] = ends.length;
  });

  var grid = el("g", {"class": "grid"}, svg);
  var lanesG = el("g", {"class": "lanes"}, svg);
  var axis = el("g", {"class": "axis"}, svg);
  var clipRect = el("rect", {x: GUTTER, y: 0, width: 1, height: 1},
                    el("clipPath", {id: "plot-clip"}, el("defs", {}, svg)));
  var plots = dict(), laneRule = [];
  meta.lanes.forEach(function (lane) {
    var h = BAND + (laneRows[lane] || 0) * ROW + PAD;
    laneTop[lane] = height;
    var g = el("g", {"class": "lane", "data-actor": lane, transform: "translate(0," + height + ")"},
               lanesG);
    laneRule.push(el("rect", {"class": "lane-bg", x: 0, y: 0, width: 1, height: h}, g));
    laneRule.push(el("line", {"class": "lane-rule", x1: 0, y1: h, x2: 1, y2: h}, g));
    var name = el("text", {"class": "lane-name", x: 8, y: 17}, g);
    name.textContent = lane.length > 18 ? lane.slice(0, 17) + "\u2026" : lane;
    el("title", {}, name).textContent = lane;
    plots[lane] = el("g", {"class": "plot", "clip-path": "url(#plot-clip)",
                           transform: "translate(0," + (-height) + ")"}, g);
    height += h;
  });
  svg.setAttribute("height", height + 4);
  clipRect.setAttribute("height", height);
  if (!items.length) {
    el("text", {"class": "empty", x: GUTTER + 10, y: AXIS + 20}, svg).textContent =
      meta.records ? "nothing drawn" : "no records";
  }

  function addMarks(errors) {
    items.forEach(function (it, i) {
      if (it[0] !== 0 || (it[1][3] === 3) !== errors) { return; }
      var rec = it[1], lane = nm(rec[1]);
      if (!(lane in plots)) { return; }
      var node = el("circle", {"class": "mark " + KINDS[rec[3]], r: errors ? 5 : 3.5,
                               cy: laneTop[lane] + (rec[3] >= 2 ? 18 : 8), cx: 0,
                               "data-i": i, "data-seq": rec[4]}, plots[lane]);
      marks.push([node, rec[0]]);
    });
  }
  addMarks(false);
  addMarks(true);  // errors last, so nothing covers them
  items.forEach(function (it, i) {
    if (it[0] !== 1) { return; }
    var lane = nm(it[2]);
    if (!(lane in plots)) { return; }
    var kind = meta.spanKinds[it[1]], state = meta.states[it[6]];
    var y = laneTop[lane] + BAND + rowOf[i] * ROW;
    var node = el("rect", {"class": "span " + kind + " state-" + state, y: y,
                           height: ROW - 3, rx: 2, x: 0, width: 1, "data-i": i,
                           "data-kind": kind, "data-state": state, "data-label": it[5],
                           "data-seq": it[8][4]}, null);
    plots[lane].insertBefore(node, plots[lane].firstChild);
    bars.push([node, it[3], it[4]]);
    if (kind !== "chunk" || it[7] > 1) {
      var text = el("text", {"class": "span-label", y: y + ROW - 5, x: 0}, plots[lane]);
      text.textContent = it[5];
      labels.push([text, it[3], it[4], it[5].length * 5.6 + 8]);
    }
  });
  document.getElementById("drawn").textContent = "; drawn: " + marks.length + " marks, " +
    bars.length + " spans";

  // --- drawing at the current zoom ---
  function px(us) {
    var x = GUTTER + (us - vs) / (ve - vs) * plotW;
    return Math.max(GUTTER - 60, Math.min(GUTTER + plotW + 60, x));
  }
  function niceStep(raw) {
    var p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function drawAxis() {
    while (grid.firstChild) { grid.removeChild(grid.firstChild); }
    while (axis.firstChild) { axis.removeChild(axis.firstChild); }
    if (!meta.records) { return; }
    el("line", {"class": "base", x1: GUTTER, x2: GUTTER + plotW, y1: AXIS - 1, y2: AXIS - 1},
       axis);
    var step = Math.max(1, niceStep((ve - vs) / Math.max(2, plotW / 120)));
    for (var t = Math.ceil(vs / step) * step; t <= ve; t += step) {
      var x = px(t);
      el("line", {x1: x, x2: x, y1: AXIS, y2: height}, grid);
      el("line", {x1: x, x2: x, y1: AXIS - 6, y2: AXIS - 1}, axis);
      el("text", {"class": "tick", x: x, y: AXIS - 10, "text-anchor": "middle"}, axis)
        .textContent = clock(t, step);
    }
  }
  function draw() {
    frame = 0;
    var i;
    for (i = 0; i < marks.length; i++) { marks[i][0].setAttribute("cx", px(marks[i][1])); }
    for (i = 0; i < bars.length; i++) {
      var x0 = px(bars[i][1]), x1 = px(bars[i][2]);
      bars[i][0].setAttribute("x", x0);
      bars[i][0].setAttribute("width", Math.max(2, x1 - x0));
    }
    for (i = 0; i < labels.length; i++) {
      var a = px(labels[i][1]), b = px(labels[i][2]), room = b - a >= labels[i][3];
      labels[i][0].setAttribute("x", a + 4);
      labels[i][0].setAttribute("visibility", room ? "visible" : "hidden");
    }
    drawAxis();
  }
  function changed() {
    svg.setAttribute("data-t0", ((vs - t0) / 1000).toFixed(3));
    svg.setAttribute("data-t1", ((ve - t0) / 1000).toFixed(3));
    rangeText.textContent = "showing " + duration(ve - vs) + " from " + iso(Math.round(vs));
    if (!frame) { frame = requestAnimationFrame(draw); }
  }
  function resize() {
    var width = Math.max(400, svg.parentNode.clientWidth);
    plotW = width - GUTTER - RIGHT;
    svg.setAttribute("width", width);
    svg.setAttribute("viewBox", "0 0 " + width + " " + (height + 4));
    clipRect.setAttribute("width", plotW);
    laneRule.forEach(function (node) {
      node.setAttribute(node.tagName === "line" ? "x2" : "width", width);
    });
    changed();
  }

  // --- zoom and pan ---
  function zoom(factor, at) {
    var width = Math.max(MIN_WIDTH, Math.min(MAX_WIDTH, (ve - vs) * factor));
    var share = (at - vs) / (ve - vs);
    vs = at - share * width;
    ve = vs + width;
    changed();
  }
  function timeAt(clientX) {
    var box = svg.getBoundingClientRect();
    var x = Math.max(0, Math.min(plotW, clientX - box.left - GUTTER));
    return vs + x / plotW * (ve - vs);
  }
  function middle() { return (vs + ve) / 2; }
  function reset() { vs = home[0]; ve = home[1]; changed(); }
  svg.addEventListener("wheel", function (event) {
    event.preventDefault();
    var unit = event.deltaMode === 1 ? 0.05 : event.deltaMode === 2 ? 1 : 0.0015;
    zoom(Math.exp(event.deltaY * unit), timeAt(event.clientX));
  }, {passive: false});
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoom(0.5, middle());
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoom(2, middle());
  });
  document.getElementById("zoom-reset").addEventListener("click", reset);
  document.addEventListener("keydown", function (event) {
    if (event.key === "+" || event.key === "=") { zoom(0.5, middle()); }
    else if (event.key === "-") { zoom(2, middle()); }
    else if (event.key === "0") { reset(); }
  });
  svg.addEventListener("mousedown", function (event) {
    if (event.button !== 0) { return; }
    drag = {x: event.clientX, vs: vs, ve: ve};
    svg.classList.add("dragging");
    hide();
    event.preventDefault();
  });
  window.addEventListener("mousemove", function (event) {
    if (!drag) { return; }
    var shift = (drag.x - event.clientX) / plotW * (drag.ve - drag.vs);
    vs = drag.vs + shift;
    ve = drag.ve + shift;
    changed();
  });
  window.addEventListener("mouseup", function () {
    drag = null;
    svg.classList.remove("dragging");
  });
  window.addEventListener("resize", resize);

  // --- the card ---
  function add(parent, tag, text, cls) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    parent.appendChild(node);
    return node;
  }
  function describe(rec, parent, brief) {
    var dl = add(parent, "dl");
    function row(key, value, cls) { add(dl, "dt", key); add(dl, "dd", value, cls); }
    row("seq", String(rec[4]));
    row("ts", iso(rec[0]));
    row("kind", KINDS[rec[3]]);
    row("from" + ARROW + "to", nm(rec[1]) + ARROW + nm(rec[2]));
    row("message", nm(rec[5]));
    row("corr", rec[6] === null ? "-" : String(rec[6]));
    if (rec[7] !== null) { row("duration", rec[7].toFixed(3) + " ms"); }
    if (!brief) { row("run", nm(rec[8])); }
    if (rec[10]) { row("error", rec[10], "failure"); }
    if (rec[9] && rec[9] !== "{}") { add(parent, "pre", rec[9]); }
  }
  function show(i, event) {
    var it = items[i];
    while (card.firstChild) { card.removeChild(card.firstChild); }
    if (it[0] === 0) {
      add(card, "h2", nm(it[1][5]));
      describe(it[1], card, false);
    } else {
      add(card, "h2", it[5]);
      var dl = add(card, "dl");
      add(dl, "dt", "span"); add(dl, "dd", meta.spanKinds[it[1]] + ", " + meta.states[it[6]]);
      add(dl, "dt", "lasts"); add(dl, "dd", duration(it[4] - it[3]));
      if (it[7] > 1) { add(dl, "dt", "merged"); add(dl, "dd", it[7] + " spans"); }
      add(card, "h3", "opened by");
      describe(it[8], card, true);
      if (it[9]) { add(card, "h3", "closed by"); describe(it[9], card, true); }
    }
    card.classList.add("visible");
    place(event);
  }
  function place(event) {
    var w = card.offsetWidth, h = card.offsetHeight;
    var x = event.clientX + 14, y = event.clientY + 14;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, event.clientX - w - 14); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, event.clientY - h - 14); }
    card.style.left = x + "px";
    card.style.top = y + "px";
  }
  function hide() {
    card.classList.remove("visible");
    if (hot) { hot.classList.remove("hot"); hot = null; }
  }
  svg.addEventListener("mouseover", function (event) {
    var target = event.target, i = target.getAttribute && target.getAttribute("data-i");
    if (drag || i === null || i === undefined) { return; }
    if (hot) { hot.classList.remove("hot"); }
    hot = target;
    hot.classList.add("hot");
    show(Number(i), event);
  });
  svg.addEventListener("mousemove", function (event) {
    if (hot && !drag) { place(event); }
  });
  svg.addEventListener("mouseout", function (event) {
    var to = event.relatedTarget;
    if (!to || !to.getAttribute || to.getAttribute("data-i") === null) { hide(); }
  });

  resize();
  draw();
})();
"""
