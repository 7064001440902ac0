"""`sqlwarden replay LOG --html OUT`: a message log as one self-contained HTML page.

The page is a swimlane timeline: one lane per actor, each message a mark in
the lane of the actor that sent it (an answer in the lane of the actor that
handled it), and spans for chunks, task runs, FTS deferrals, mirror
reconciles and sync runs. It zooms, pans and shows a card per mark or span.
Styles, data and script are inline and the chart is plain SVG, so viewing it
needs no network. The head, styles and script are package data files in
`assets/`: `head.html` (a `str.format` template of `{title}`, `{css}`,
`{files}` and `{counts}`), `page.css` and `page.js`; this module writes the
page around them.

Memory does not grow with the log. `write_html` reads it twice, streaming:
the first pass (`spans.take_survey`) counts kept records, errors, time span,
actors and spans per kind; the second writes the page as it reads: the head,
then one JSON item per drawn mark or span, then the script. Past `MARK_CAP`
records only every k-th one is drawn (errors always, up to `ERROR_CAP`);
past `SPAN_CAP` spans of one kind, adjacent ones are merged.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import IO, Any

from sqlwarden.errors import ReplayError
from sqlwarden.replay.read import Filter, Record
from sqlwarden.replay.spans import NAME_CAP, SPAN_KINDS, Brief, Span, Spans, Survey, take_survey

#: Marks drawn at most (about): past it every k-th record is drawn.
MARK_CAP = 20_000
#: Error marks drawn at most; below it every error is drawn, sampled or not.
ERROR_CAP = 5_000
#: Spans drawn per kind at most: past it adjacent spans of a kind are merged.
SPAN_CAP = 2_500

_MERGED = {"chunk": "chunks", "task": "task runs", "fts": "FTS deferrals",
           "mirror": "reconciles", "sync": "sync runs"}
_STATES = ("ok", "error", "open")
_CODES = {"tell": 0, "ask": 1, "reply": 2, "error": 3}


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
        return text + _skipped(self.damaged)


def write_html(files: Sequence[Path], out: Path, keep: Filter) -> HtmlReport:
    """Write the timeline of the log `files` (oldest first) to `out`.

    Records `keep` refuses are not drawn; a span is drawn when the record
    that opens it or the one that closes it is kept. The page is written
    next to `out` and renamed over it when complete.
    """
    survey = take_survey(files, keep)
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


def _skipped(damaged: int) -> str:
    if not damaged:
        return ""
    return f"; {damaged:,} damaged line{'s' if damaged != 1 else ''} skipped"


@functools.cache
def _asset(name: str) -> str:
    """A file of the page from the package's `assets/` (the head, its styles, its script)."""
    return package_files("sqlwarden.replay").joinpath("assets").joinpath(name).read_text(
        encoding="utf-8")


# --- second pass: the page ---------------------------------------------------------------


def _js(value: Any) -> str:
    """JSON that cannot end the <script> element it sits in (nor open a comment)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(slots=True)
class _Merge:
    """Adjacent spans of one kind drawn as one, once a kind has more than `SPAN_CAP`."""

    first: Span
    last: Span
    count: int = 1
    error: bool = False
    open: bool = False


class _Page:
    """Writes the page to `out` while the second pass reads the log."""

    def __init__(self, out: IO[str], survey: Survey, files: Sequence[Path]) -> None:
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
        for seen in Spans(self._span, detail=True).walk(files, keep):
            if seen is not None and seen[2] and self._sampled(seen[0]):
                self._item([0, self._record(Brief.of(seen[0], seen[1], True, True))])
        for kind in list(self._merging):
            self._flush(kind)
        self._out.write("]</script>\n")
        self._meta()
        self._out.write(f"<script>\n{_asset('page.js')}</script>\n</body>\n</html>\n")

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

    def _record(self, brief: Brief) -> list[Any]:
        return [brief.us, self._name(brief.sender), self._name(brief.receiver),
                _CODES[brief.kind], brief.seq, self._name(brief.message), brief.corr,
                brief.duration_ms, self._name(brief.run), brief.text, brief.error]

    # --- spans ---------------------------------------------------------------------------

    def _span(self, span: Span) -> None:
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
                    end_us: int, count: int, opened: Brief, closed: Brief | None) -> None:
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
        self._out.write(_asset("head.html").format(
            title=html.escape(self._title()),
            css=_asset("page.css"),
            files=html.escape(files),
            counts=html.escape(f"{survey.records:,} records, {len(survey.lanes)} lanes"
                               f"{sampled}{_skipped(survey.damaged)}")))

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

