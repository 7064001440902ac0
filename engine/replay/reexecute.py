"""Re-execution of a message log: the recorded writes applied again to a fresh database.

`reexecute` builds a new database from the config (in a temporary directory,
as the Writer builds one at start), reads the log one record at a time, and
applies every message the Writer answered with a `reply` through the same
plain `WriterCore` the Writer actor drives: foreground and bookkeeping writes
each in its own transaction (a group commit gives the same rows), chunks
through `run_chunk` with the config's task plans, FTS deferral, restore and
record updates. Messages answered with an `error` changed nothing and are
left out; checkpoints and status reads change no rows and are skipped.

Writes are applied in the order of their answers. That is the order the
Writer committed them in: it holds a chunk back until the writes queued
behind it have run, so the mailbox order (the tell and ask records) is not
always the handling order.

Each message is rebuilt from its logged fields by its kind and the protocol
dataclass's field types. That needs a log written with `payload: full`; a
summary (`{"items": n}` for a tuple, a string cut short) is refused.

Afterwards every declared table gets a checksum (row count and a SHA-256 of
its rows in primary-key order, each value encoded with its storage class) in
the fresh database and in the live one, opened read-only. Only the messages
sent but not yet answered are held in memory, never the log.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import re
import tempfile
import types
import typing
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw

from sqlwarden.config import Config
from sqlwarden.db.checksum import table_checksum
from sqlwarden.db.connect import new_database_undone_on_error, open_reader, open_scratch
from sqlwarden.db.schema import apply_schema
from sqlwarden.db.writer import WriterCore
from sqlwarden.errors import EngineError, ReplayError, UnexpectedMessage
from sqlwarden.msglog.log import STRING_SUMMARY_CHARS
from sqlwarden.protocol import (
    BOOKKEEPING_WRITES,
    FOREGROUND_WRITES,
    Checkpoint,
    DeferFts,
    Execute,
    ExecuteBatch,
    IdleCheck,
    InspectFts,
    Message,
    RestoreFts,
    RunChunk,
    SetMeta,
    StartSyncRun,
    TableChecksums,
    UpdateFtsDeferral,
    WriterStatus,
    message_kinds,
)
from sqlwarden.redact import REDACTED
from sqlwarden.replay.read import EXAMPLES, Damaged, Record, read_records
from sqlwarden.tasks.chunks import TaskPlan
from sqlwarden.views import (
    ChunkResult,
    FtsDeferralView,
    FtsRestoreResult,
    SyncBatchResult,
    TableChecksum,
    WriteResult,
)

WRITER = "writer"
#: Writer messages that change no rows, with why they are not re-applied.
SKIPPED = {
    Checkpoint.kind: "a WAL checkpoint moves pages, not rows",
    WriterStatus.kind: "a status read",
    IdleCheck.kind: "the idle timer's checkpoint",
    InspectFts.kind: "a read of the FTS state",
}
_GROUPED = FOREGROUND_WRITES + BOOKKEEPING_WRITES
_CUT_SHORT = re.compile(r"\.\.\.\((\d+) chars\)\Z")
_DML = frozenset({"insert", "update", "delete", "replace"})
_SHOWN_DIGEST = 16


# --- rebuilding messages ----------------------------------------------------------------


class _Summarised(Exception):
    """A field holds the log's summary of a value, not the value."""


class _Unreadable(Exception):
    """Logged fields that do not fit the message's dataclass."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Rebuilder:
    """Turns logged fields back into protocol messages, counting redacted values."""

    def __init__(self) -> None:
        self.redacted = 0
        self._kinds = message_kinds()

    def message(self, kind: str, fields: Any) -> Message:
        """The message of `kind` with `fields`; raises `_Summarised` or `_Unreadable`."""
        cls = self._kinds.get(kind)
        if cls is None:
            raise _Unreadable(f"unknown message kind {kind!r}")
        message = self._dataclass(cls, fields)
        assert isinstance(message, Message)
        return message

    def _dataclass(self, cls: type, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Unreadable(f"{cls.__name__}: expected an object, got {_shape(value)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise _Unreadable(f"{cls.__name__} has no field {', '.join(unknown)} (a log from "
                              "a newer sqlwarden?)")
        hints = _hints(cls)
        try:
            return cls(**{name: self._value(item, hints[name], f"{cls.__name__}.{name}")
                          for name, item in value.items()})
        except TypeError as exc:  # a field without a default is missing
            raise _Unreadable(str(exc)) from None

    def _value(self, value: Any, hint: Any, where: str) -> Any:
        if hint is Any:
            return self._plain(value, where)
        origin = typing.get_origin(hint)
        if origin is types.UnionType or origin is typing.Union:
            return self._union(value, typing.get_args(hint), where)
        if origin is tuple:
            return self._tuple(value, typing.get_args(hint), where)
        if dataclasses.is_dataclass(hint):
            return self._dataclass(hint, value)  # type: ignore[arg-type]
        if hint is type(None):
            if value is not None:
                raise _Unreadable(f"{where}: expected null, got {_shape(value)}")
            return None
        if hint is bytes:
            return self._bytes(value, where)
        if hint is str:
            if not isinstance(value, str):
                raise _Unreadable(f"{where}: expected a string, got {_shape(value)}")
            return self._text(value)
        if hint is bool:
            if not isinstance(value, bool):
                raise _Unreadable(f"{where}: expected true or false, got {_shape(value)}")
            return value
        if hint is int or hint is float:
            allowed = (int,) if hint is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise _Unreadable(f"{where}: expected a number, got {_shape(value)}")
            return value
        raise _Unreadable(f"{where}: cannot rebuild a value of type {hint!r}")

    def _union(self, value: Any, options: tuple[Any, ...], where: str) -> Any:
        if value is None:
            if type(None) in options:
                return None
            raise _Unreadable(f"{where}: null is not allowed here")
        if isinstance(value, dict):
            if bytes in options and set(value) == {"base64"}:
                return self._bytes(value, where)
            _refuse_summary(value)
            for option in options:
                if dataclasses.is_dataclass(option):
                    return self._dataclass(option, value)  # type: ignore[arg-type]
        if isinstance(value, list):
            for option in options:
                if typing.get_origin(option) is tuple:
                    return self._tuple(value, typing.get_args(option), where)
        for option in options:
            if option in (bool, int, float, str) and _fits(value, option):
                return self._value(value, option, where)
        raise _Unreadable(f"{where}: {_shape(value)} fits none of the field's types")

    def _tuple(self, value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
        _refuse_summary(value)
        if not isinstance(value, list):
            raise _Unreadable(f"{where}: expected a list, got {_shape(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self._value(item, args[0], where) for item in value)
        if len(args) != len(value):
            raise _Unreadable(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(self._value(item, arg, where)
                     for item, arg in zip(value, args, strict=True))

    def _plain(self, value: Any, where: str) -> Any:
        """A value typed `Any`: lists become tuples, {"base64": ...} bytes."""
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, list):
            return tuple(self._plain(item, where) for item in value)
        if isinstance(value, dict):
            if set(value) == {"base64"}:
                return self._bytes(value, where)
            _refuse_summary(value)
            raise _Unreadable(f"{where}: unexpected object {sorted(value)}")
        return value

    def _bytes(self, value: Any, where: str) -> bytes:
        if isinstance(value, dict) and set(value) == {"base64"} \
                and isinstance(value["base64"], str):
            try:
                return base64.b64decode(value["base64"], validate=True)
            except ValueError:
                pass
        raise _Unreadable(f"{where}: expected {{\"base64\": ...}}, got {_shape(value)}")

    def _text(self, value: str) -> str:
        cut = _CUT_SHORT.search(value)
        if (cut is not None and cut.start() == STRING_SUMMARY_CHARS
                and int(cut.group(1)) > STRING_SUMMARY_CHARS):
            raise _Summarised
        if REDACTED in value:
            self.redacted += 1
        return value


def _refuse_summary(value: Any) -> None:
    if isinstance(value, dict) and set(value) == {"items"} and type(value["items"]) is int:
        raise _Summarised


def _fits(value: Any, option: type) -> bool:
    if isinstance(value, bool):
        return option is bool
    if option is float:
        return isinstance(value, (int, float))
    return isinstance(value, option)


def _shape(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- answers as the log holds them ------------------------------------------------------


def _as_logged(value: Any) -> Any:
    """`value` in the JSON form `payload: full` logs it in (to compare with a record)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (tuple, list)):
        return [_as_logged(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_logged(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _compared(message: Message, answer: Any) -> tuple[str, ...]:
    """The parts of an answer that a faithful replay reproduces exactly."""
    match answer:
        case ChunkResult():
            return ("last", "scanned", "processed", "exhausted")
        case SyncBatchResult():
            return ("rows", "rejects")
        case WriteResult() if isinstance(message, StartSyncRun):
            # The run's id: every batch of the run names it.
            return ("last_rowid",)
        case WriteResult() if _counts_changes(message):
            return ("changes",)
        case FtsRestoreResult() | FtsDeferralView():
            return ("tables",)
        case None if isinstance(message, (DeferFts, UpdateFtsDeferral)):
            return ("tables",)
        case _:
            return ()


def _counts_changes(message: Message) -> bool:
    # After a statement that is not INSERT, UPDATE or DELETE, SQLite's change
    # count is the last such statement's, which a group commit may not share.
    if isinstance(message, Execute):
        return _is_dml(message.sql)
    if isinstance(message, ExecuteBatch):
        return all(_is_dml(s.sql) for s in message.statements)
    return True


def _is_dml(sql: str) -> bool:
    words = sql.split(None, 1)
    return bool(words) and words[0].lower() in _DML


# --- checksums --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TableComparison:
    """One declared table in the re-executed database and in the live one."""

    table: str
    replay: TableChecksum
    live: TableChecksum | None
    #: Why there is no live checksum (no live database, the table cannot be read).
    problem: str | None = None

    @property
    def same(self) -> bool:
        return self.live is not None and self.live == self.replay


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedCheck:
    """Checksums the engine recorded in the log (at a stop), and the replay's at that point."""

    seq: int
    run: str
    #: (recorded, replayed; None when the table is not declared in the config)
    tables: tuple[tuple[TableChecksum, TableChecksum | None], ...]

    @property
    def same(self) -> bool:
        return all(replayed == recorded for recorded, replayed in self.tables)


# --- the result -------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class RunSpan:
    """The records of one engine run, and whether its start is in the log."""

    run: str
    first_seq: int
    last_seq: int
    records: int = 0
    began: bool = False


@dataclasses.dataclass(slots=True)
class Reexecution:
    """What re-executing a log did and how the tables compare with the live database."""

    files: tuple[Path, ...]
    live_path: Path
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    runs: dict[str, RunSpan] = dataclasses.field(default_factory=dict)
    applied: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    #: Writes answered with an error in the log: they changed nothing.
    errored: Counter[str] = dataclasses.field(default_factory=Counter)
    #: Writes sent but not answered when the log ends: whether they committed is unknown.
    unanswered: int = 0
    #: Answers from the Writer whose message is not in the log (damaged, or before it).
    orphans: int = 0
    failures: int = 0
    failure_examples: list[str] = dataclasses.field(default_factory=list)
    divergences: int = 0
    divergence_examples: list[str] = dataclasses.field(default_factory=list)
    damaged: int = 0
    damaged_examples: list[Damaged] = dataclasses.field(default_factory=list)
    #: Strings in re-applied writes that the log holds redacted.
    redacted: int = 0
    live_exists: bool = False
    tables: list[TableComparison] = dataclasses.field(default_factory=list)
    #: Checksums the engine recorded at each stop (a log with full payloads).
    recorded: list[RecordedCheck] = dataclasses.field(default_factory=list)
    #: Where the re-executed database was kept (None: it was deleted).
    kept: Path | None = None

    @property
    def matches(self) -> bool:
        """Every declared table equals the live database's, and every checksum recorded
        in the log equals the replay's at that point; at least one of the two compared."""
        if self.live_exists and not all(t.same for t in self.tables):
            return False
        if not all(check.same for check in self.recorded):
            return False
        return self.live_exists or bool(self.recorded)

    def failed(self, seq: int, kind: str, why: str) -> None:
        self.failures += 1
        if len(self.failure_examples) < EXAMPLES:
            self.failure_examples.append(f"seq {seq} {kind}: {' '.join(why.split())}")

    def diverged(self, seq: int, kind: str, what: str) -> None:
        self.divergences += 1
        if len(self.divergence_examples) < EXAMPLES:
            self.divergence_examples.append(f"seq {seq} {kind}: {what}")

    def add_damaged(self, damaged: Damaged) -> None:
        self.damaged += 1
        if len(self.damaged_examples) < EXAMPLES:
            self.damaged_examples.append(damaged)

    def notes(self) -> list[str]:
        """Why differences are to be expected: writes the log does not hold."""
        out = []
        if self.first_seq is not None and self.first_seq != 1:
            out.append(f"the log starts at seq {self.first_seq:,}, not 1: earlier records are "
                       "missing (rotated away?), so the writes before it are missing and "
                       "differences are expected")
        for span in self.runs.values():
            if not span.began:
                out.append(f"run {span.run} began before the log (its start is not in it): "
                           "the writes before it are missing, so differences are expected")
        if self.redacted:
            out.append(f"{self.redacted:,} values in re-applied writes are redacted in the "
                       "log; rows holding them cannot match")
        return out

    def lines(self) -> list[str]:
        out = []
        if self.files:
            more = f" (+{len(self.files) - 1} more)" if len(self.files) > 1 else ""
            out.append(f"log: {self.files[-1]}{more}")
        if not self.records:
            out.append("no records")
        else:
            runs = len(self.runs)
            out.append(f"{self.records:,} records, seq {self.first_seq}..{self.last_seq}, "
                       f"{runs} run{'s' if runs != 1 else ''}")
            for span in self.runs.values():
                before = "" if span.began else " (began before the log)"
                out.append(f"  run {span.run}: seq {span.first_seq}..{span.last_seq}{before}")
        out.append(f"re-applied to a fresh database: {sum(self.applied.values()):,} writes")
        width = max((len(k) for k in self.applied), default=0)
        out.extend(f"  {kind:<{width}}  {n:>9,}" for kind, n in sorted(self.applied.items()))
        if self.skipped:
            out.append("skipped, they change no rows: " + ", ".join(
                f"{kind} {n:,} ({SKIPPED[kind]})" for kind, n in sorted(self.skipped.items())))
        if self.errored:
            out.append(f"not re-applied, answered with an error in the log: "
                       f"{sum(self.errored.values()):,} (" + ", ".join(
                           f"{kind} {n:,}" for kind, n in sorted(self.errored.items())) + ")")
        if self.unanswered:
            out.append(f"not re-applied, never answered in the log (the engine stopped "
                       f"first?): {self.unanswered:,}")
        if self.orphans:
            out.append(f"answers whose message is not in the log, not re-applied: "
                       f"{self.orphans:,}")
        out.append(f"failed to re-apply: {self.failures:,}" if self.failures
                   else "failed to re-apply: none")
        out.extend(f"  {line}" for line in self.failure_examples)
        if self.divergences:
            out.append(f"answers that differ from the log: {self.divergences:,} (the first "
                       "shows where the replay parted from the device)")
            out.extend(f"  {line}" for line in self.divergence_examples)
        if self.damaged:
            out.append(f"damaged lines: {self.damaged:,} (skipped)")
            out.extend(f"  {d}" for d in self.damaged_examples)
        out.extend(f"note: {note}" for note in self.notes())
        out.append("")
        out.extend(self._table_lines())
        out.extend(self._recorded_lines())
        if self.kept is not None:
            out.append(f"the re-executed database is kept at {self.kept}")
        return out

    def _table_lines(self) -> list[str]:
        if not self.live_exists:
            out = [f"live database: {self.live_path} is missing; nothing to compare with"]
        else:
            out = [f"live database: {self.live_path}"]
        if not self.tables:
            out.append("no tables are declared in the config")
            return out
        width = max(5, *(len(t.table) for t in self.tables))
        out.append(f"{'table':<{width}}  {'replay rows':>11}  {'live rows':>11}  "
                   f"{'checksum':<{_SHOWN_DIGEST}}  live checksum")
        for t in self.tables:
            live_rows = f"{t.live.rows:,}" if t.live is not None else "-"
            live_digest = t.live.digest[:_SHOWN_DIGEST] if t.live is not None else "-"
            verdict = "same" if t.same else "DIFFERS" if self.live_exists else "unknown"
            line = (f"{t.table:<{width}}  {t.replay.rows:>11,}  {live_rows:>11}  "
                    f"{t.replay.digest[:_SHOWN_DIGEST]:<{_SHOWN_DIGEST}}  "
                    f"{live_digest:<{_SHOWN_DIGEST}}  {verdict}")
            out.append(line + (f" ({t.problem})" if t.problem and self.live_exists else ""))
        if self.live_exists:
            differing = sum(not t.same for t in self.tables)
            out.append(f"all {len(self.tables)} tables match the live database" if not differing
                       else f"{differing} of {len(self.tables)} tables differ from the live "
                            "database")
        return out

    def _recorded_lines(self) -> list[str]:
        if not self.recorded:
            return ["checksums recorded in the log: none (the engine records them at stop "
                    "when the log keeps full payloads)"]
        out = []
        for check in self.recorded:
            if check.same:
                out.append(f"checksums recorded at seq {check.seq} (run {check.run}, at stop): "
                           f"all {len(check.tables)} tables same")
                continue
            out.append(f"checksums recorded at seq {check.seq} (run {check.run}, at stop):")
            for recorded, replayed in check.tables:
                if replayed is None:
                    out.append(f"  {recorded.table}: not declared in the config")
                elif replayed != recorded:
                    out.append(f"  {recorded.table}: {recorded.rows:,} rows recorded "
                               f"({recorded.digest[:_SHOWN_DIGEST]}), {replayed.rows:,} in the "
                               f"replay ({replayed.digest[:_SHOWN_DIGEST]}) DIFFERS")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": [str(f) for f in self.files],
            "records": self.records, "first_seq": self.first_seq, "last_seq": self.last_seq,
            "runs": [dataclasses.asdict(span) for span in self.runs.values()],
            "applied": dict(sorted(self.applied.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "errored_in_log": dict(sorted(self.errored.items())),
            "unanswered": self.unanswered,
            "orphan_answers": self.orphans,
            "failures": self.failures, "failure_examples": list(self.failure_examples),
            "divergences": self.divergences,
            "divergence_examples": list(self.divergence_examples),
            "damaged": self.damaged, "damaged_examples": [str(d) for d in self.damaged_examples],
            "redacted": self.redacted,
            "notes": self.notes(),
            "live": {"path": str(self.live_path), "exists": self.live_exists},
            "tables": [{"table": t.table, "replay_rows": t.replay.rows,
                        "replay_checksum": t.replay.digest,
                        "live_rows": t.live.rows if t.live is not None else None,
                        "live_checksum": t.live.digest if t.live is not None else None,
                        "same": t.same, "problem": t.problem} for t in self.tables],
            "recorded": [{"seq": c.seq, "run": c.run, "same": c.same,
                          "tables": [{"table": r.table, "recorded_rows": r.rows,
                                      "recorded_checksum": r.digest,
                                      "replay_rows": None if p is None else p.rows,
                                      "replay_checksum": None if p is None else p.digest}
                                     for r, p in c.tables]} for c in self.recorded],
            "matches": self.matches,
            "kept": str(self.kept) if self.kept is not None else None,
        }


# --- re-executing -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Sent:
    seq: int
    message: str
    fields: Any


class _Replay:
    """Folds records into writes on the fresh database, one at a time, in answer order."""

    def __init__(self, core: WriterCore, config: Config, result: Reexecution) -> None:
        self._core = core
        self._config = config
        self._result = result
        self._rebuilder = _Rebuilder()
        #: Writer messages not answered yet, by (run, correlation id): ids restart per run.
        self._pending: dict[tuple[str, Any], _Sent] = {}

    def add(self, item: Record | Damaged) -> None:
        result = self._result
        if isinstance(item, Damaged):
            result.add_damaged(item)
            return
        seq, run = item["seq"], str(item.get("run", ""))
        result.records += 1
        if result.first_seq is None:
            result.first_seq = seq
        result.last_seq = seq
        span = result.runs.get(run)
        if span is None:
            if result.runs:
                self._next_run(seq)
            span = result.runs[run] = RunSpan(run=run, first_seq=seq, last_seq=seq)
        span.last_seq = seq
        span.records += 1
        kind = item["kind"]
        if kind in ("tell", "ask"):
            if item.get("receiver") != WRITER:
                return
            message, fields = str(item.get("message", "")), item.get("fields")
            if (message == SetMeta.kind and isinstance(fields, dict)
                    and fields.get("key") == "run_id" and fields.get("value") == run):
                span.began = True  # the facade's first write at start
            self._pending[(run, item.get("corr"))] = _Sent(seq, message, fields)
            return
        if item.get("sender") != WRITER:
            return
        sent = self._pending.pop((run, item.get("corr")), None)
        if sent is None:
            result.orphans += 1
        elif kind == "error":
            result.errored[sent.message] += 1
        else:
            self._apply(sent, item)

    def finish(self) -> None:
        self._result.unanswered = len(self._pending)
        self._result.redacted = self._rebuilder.redacted

    def _next_run(self, seq: int) -> None:
        # The next engine's Writer applied the schema to the database at start.
        try:
            apply_schema(self._core.conn, self._config)
        except EngineError as exc:
            self._result.failed(seq, "schema at start", str(exc))

    def _apply(self, sent: _Sent, answer: Record) -> None:
        result = self._result
        if sent.message == TableChecksums.kind:
            self._check_recorded(sent, answer)
            return
        if sent.message in SKIPPED:
            result.skipped[sent.message] += 1
            return
        try:
            message = self._rebuilder.message(sent.message, sent.fields)
        except _Summarised:
            raise ReplayError(
                f"seq {sent.seq} ({sent.message}): this log was written with summary "
                "payloads, which leave the values out; set `message_log: {payload: full}` "
                "in the config and re-execute a log written after that") from None
        except _Unreadable as exc:
            result.failed(sent.seq, sent.message, f"cannot rebuild the message: {exc}")
            return
        try:
            outcome = self._run(message)
            self._core.after_commit()
        except Exception as exc:
            result.failed(sent.seq, sent.message, f"{type(exc).__name__}: {exc}")
            return
        result.applied[sent.message] += 1
        self._compare(sent, message, outcome, answer.get("fields"))

    def _check_recorded(self, sent: _Sent, answer: Record) -> None:
        """Compare the checksums the engine recorded with the replay's, at this point."""
        logged = (answer.get("fields") or {}).get("tables")
        if not isinstance(logged, list):
            self._result.failed(sent.seq, sent.message, "recorded checksums are summarised")
            return
        declared = {table.name: table for table in self._config.tables}
        pairs = []
        for item in logged:
            try:
                recorded = TableChecksum(table=str(item["table"]), rows=int(item["rows"]),
                                         digest=str(item["digest"]))
            except (KeyError, TypeError, ValueError):
                self._result.failed(sent.seq, sent.message, f"unreadable checksum {item!r:.80}")
                continue
            table = declared.get(recorded.table)
            pairs.append((recorded, None if table is None
                          else table_checksum(self._core.conn, table)))
        self._result.recorded.append(RecordedCheck(seq=answer["seq"],
                                                   run=str(answer.get("run", "")),
                                                   tables=tuple(pairs)))

    def _run(self, message: Message) -> Any:
        """Apply one message as the Writer does: one transaction of its own."""
        match message:
            case RunChunk():
                return self._core.run_chunk(message)
            case DeferFts():
                return self._core.fts_defer(message)
            case RestoreFts():
                return self._core.fts_restore(message)
            case UpdateFtsDeferral():
                return self._core.fts_update(message)
            case _ if isinstance(message, _GROUPED):
                (outcome,) = self._core.commit_group([message])
                if isinstance(outcome, EngineError):
                    raise outcome
                return outcome
            case _:
                raise UnexpectedMessage(WRITER, message)

    def _compare(self, sent: _Sent, message: Message, outcome: Any, logged: Any) -> None:
        keys = _compared(message, outcome)
        if not keys or not isinstance(logged, dict):
            return
        then = {key: logged.get(key) for key in keys}
        now = {key: _as_logged(getattr(outcome, key, None)) for key in keys}
        if then != now:
            self._result.diverged(sent.seq, sent.message, ", ".join(
                f"{key} {_brief(then[key])} in the log, {_brief(now[key])} now"
                for key in keys if then[key] != now[key]))


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@contextmanager
def _fresh_database(config: Config, keep: str | os.PathLike[str] | None) -> Iterator[Path]:
    """Where the fresh database goes: a temporary folder, or `keep` (a new file)."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="sqlwarden-reexecute-") as folder:
            yield Path(folder) / config.database.path.name
        return
    path = Path(keep)
    if path.resolve() == config.database.path.resolve():
        raise ReplayError(f"{path} is the live database; keep the re-executed one elsewhere")
    if any(Path(f"{path}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        raise ReplayError(f"{path} already exists; the re-executed database is kept only in "
                          "a new file")
    with new_database_undone_on_error(path):
        yield path


def _compare_live(config: Config, replayed: Mapping[str, TableChecksum],
                  result: Reexecution) -> None:
    """Checksum the live database read-only and set `result.tables`."""
    live: dict[str, TableChecksum] = {}
    problems: dict[str, str] = {}
    result.live_exists = config.database.path.exists()
    if result.live_exists:
        conn = open_reader(config.database)
        try:
            for table in config.tables:
                try:
                    live[table.name] = table_checksum(conn, table)
                except apsw.Error as exc:
                    problems[table.name] = f"cannot be read in the live database: {exc}"
        finally:
            conn.close()
    result.tables = [TableComparison(table=t.name, replay=replayed[t.name],
                                     live=live.get(t.name), problem=problems.get(t.name))
                     for t in config.tables]


def reexecute(files: Sequence[Path], config: Config, *,
              keep: str | os.PathLike[str] | None = None) -> Reexecution:
    """Re-apply the writes recorded in `files` to a fresh database built from `config`,
    then compare each declared table with the live database at `config.database.path`.

    The fresh database is deleted afterwards unless `keep` names a new file to
    leave it in. Raises `ReplayError` for a log written with summary payloads.
    """
    result = Reexecution(files=tuple(files), live_path=config.database.path)
    with _fresh_database(config, keep) as path:
        fresh = dataclasses.replace(config, database=dataclasses.replace(config.database,
                                                                         path=path))
        conn = open_scratch(fresh.database)
        try:
            apply_schema(conn, fresh)
            plans = tuple(TaskPlan(task, config.table(task.table)) for task in config.tasks)
            replay = _Replay(WriterCore(conn, fresh, tasks=plans), fresh, result)
            for item in read_records(files):
                replay.add(item)
            replay.finish()
            replayed = {table.name: table_checksum(conn, table) for table in config.tables}
        finally:
            conn.close()
    result.kept = Path(keep) if keep is not None else None
    _compare_live(config, replayed, result)
    return result
