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
dataclass's field types (`rebuild`). That needs a log written with
`payload: full`; a summary (`{"items": n}` for a tuple, a string cut short)
is refused.

Afterwards every declared table gets a checksum (row count and a SHA-256 of
its rows in primary-key order, each value encoded with its storage class) in
the fresh database and in the live one, opened read-only; what it all came
to is a `Reexecution` (`reexecute_result`). Only the messages sent but not
yet answered are held in memory, never the log.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
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
from sqlwarden.protocol import (
    BOOKKEEPING_WRITES,
    FOREGROUND_WRITES,
    DeferFts,
    Message,
    RestoreFts,
    RunChunk,
    SetMeta,
    TableChecksums,
    UpdateFtsDeferral,
)
from sqlwarden.replay.read import Damaged, Record, cut, read_records
from sqlwarden.replay.rebuild import Rebuilder, Summarised, Unreadable, as_logged, compared
from sqlwarden.replay.reexecute_result import (
    SKIPPED,
    RecordedCheck,
    Reexecution,
    RunSpan,
    TableComparison,
)
from sqlwarden.tasks.chunks import TaskPlan
from sqlwarden.views import TableChecksum

WRITER = "writer"
_GROUPED = FOREGROUND_WRITES + BOOKKEEPING_WRITES
#: A value the log holds and the replay gave otherwise is shown cut to this many characters.
_SHOWN_CHARS = 80


# --- re-executing -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Sent:
    """A message to the Writer, waiting for its answer."""

    seq: int
    message: str
    fields: Any


class _Replay:
    """Folds records into writes on the fresh database, one at a time, in answer order."""

    def __init__(self, core: WriterCore, config: Config, result: Reexecution) -> None:
        self._core = core
        self._config = config
        self._result = result
        self._rebuilder = Rebuilder()
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
        except Summarised:
            raise ReplayError(
                f"seq {sent.seq} ({sent.message}): this log was written with summary "
                "payloads, which leave the values out; set `message_log: {payload: full}` "
                "in the config and re-execute a log written after that") from None
        except Unreadable as exc:
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
        keys = compared(message, outcome)
        if not keys or not isinstance(logged, dict):
            return
        then = {key: logged.get(key) for key in keys}
        now = {key: as_logged(getattr(outcome, key, None)) for key in keys}
        if then != now:
            self._result.diverged(sent.seq, sent.message, ", ".join(
                f"{key} {cut(repr(then[key]), _SHOWN_CHARS)} in the log, "
                f"{cut(repr(now[key]), _SHOWN_CHARS)} now"
                for key in keys if then[key] != now[key]))


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
