"""What re-executing a log did, and how its tables compare: `Reexecution` and its report.

`reexecute` fills a `Reexecution` as it goes: records and runs read,
writes re-applied, skipped, failed or diverging from the answers the log
holds, damaged lines; then the checksum of every declared table in the
re-executed database beside the live one's (`TableComparison`) and beside
those the engine recorded in the log at a stop (`RecordedCheck`). It prints
as text (`lines`) or JSON (`as_dict`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from sqlwarden.protocol import Checkpoint, IdleCheck, InspectFts, WriterStatus
from sqlwarden.replay.read import Damaged, damaged_lines, files_line, keep_example
from sqlwarden.views import TableChecksum

#: Writer messages that change no rows, with why they are not re-applied.
SKIPPED = {
    Checkpoint.kind: "a WAL checkpoint moves pages, not rows",
    WriterStatus.kind: "a status read",
    IdleCheck.kind: "the idle timer's checkpoint",
    InspectFts.kind: "a read of the FTS state",
}
_SHOWN_DIGEST = 16


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
        keep_example(self.failure_examples, f"seq {seq} {kind}: {' '.join(why.split())}")

    def diverged(self, seq: int, kind: str, what: str) -> None:
        self.divergences += 1
        keep_example(self.divergence_examples, f"seq {seq} {kind}: {what}")

    def add_damaged(self, damaged: Damaged) -> None:
        self.damaged += 1
        keep_example(self.damaged_examples, damaged)

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
            out.append(files_line(self.files))
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
        out.extend(damaged_lines(self.damaged, self.damaged_examples))
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
