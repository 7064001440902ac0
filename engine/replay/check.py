"""`sqlwarden replay --check`: the protocol rules of ARCHITECTURE.md, checked on a log.

The checker folds records one at a time and keeps only what is in flight (the
messages of the current run not yet answered, the chunk under way, the
reconcile under way, the last progress save per task), so its memory does not
grow with the log. What it checks, by rule number:

1. single writer: a message that changes the database goes to the Writer.
2. bounded chunks: one background chunk in flight at a time, and a foreground
   write queued at the Writer before a chunk is answered before that chunk.
3. atomic deferral: FTS triggers are not deferred twice without a restore,
   nor restored without a deferral; a deferral still in effect at the end of
   the log was persisted (its transaction's reply is in the log).
4. single flight: one mirror reconcile (or verify) in flight at a time.
6. cheap progress: a task's progress is saved at most once per second, plus
   the terminal save.
7. everything logged: sequence numbers without gaps (across rotated files and
   runs), every ask answered exactly once, every line a whole record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlwarden.protocol import DATABASE_WRITES, FOREGROUND_WRITES, RunChunk
from sqlwarden.replay.read import Damaged, Record, keep_example

RULES = {1: "single writer", 2: "bounded chunks", 3: "atomic deferral", 4: "single flight",
         6: "cheap progress", 7: "everything logged"}
WRITE_KINDS = frozenset(m.kind for m in DATABASE_WRITES)
FOREGROUND_KINDS = frozenset(m.kind for m in FOREGROUND_WRITES)
CHUNK = RunChunk.kind
WRITER = "writer"
#: Violations kept with their text; the counts per rule are always complete.
KEPT = 1000
#: Progress saves closer than this (seconds) break rule 6; a millisecond of slack
#: for clocks read a moment apart.
PROGRESS_INTERVAL_S = 1.0 - 1e-3


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which, at which sequence numbers, and what happened."""

    rule: int
    seqs: tuple[int, ...]
    text: str

    def __str__(self) -> str:
        where = ", ".join(str(s) for s in self.seqs)
        return f"rule {self.rule} ({RULES[self.rule]}) at seq {where}: {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "name": RULES[self.rule], "seqs": list(self.seqs),
                "text": self.text}


@dataclass(slots=True)
class _Sent:
    """A message sent and not answered yet."""

    seq: int
    kind: str
    message: str
    sender: str
    receiver: str


class Checker:
    """Feed it every record and damaged line in order, then call `finish()`."""

    def __init__(self) -> None:
        self.records = 0
        self.violations: list[Violation] = []
        self.counts: Counter[int] = Counter()
        self.notes: list[str] = []
        self._prev_seq: int | None = None
        self._run: object = None
        #: The current run did not start inside the log: answers to messages sent
        #: before it began are not reported.
        self._partial = False
        self._sent: dict[int, _Sent] = {}
        self._chunk: tuple[int, int] | None = None  # (corr, seq) in flight
        self._queued_writes: dict[int, int] = {}  # corr -> seq of foreground writes
        self._reconcile: tuple[int, Any] | None = None  # (seq, number) in flight
        self._progress: dict[tuple[Any, Any], tuple[float, int]] = {}
        self._deferred: int | None = None  # seq of the FTS deferral in effect
        self._deferred_since: Any = None  # its started_at
        self._fts_known = False

    def _report(self, rule: int, seqs: tuple[int, ...], text: str) -> None:
        self.counts[rule] += 1
        keep_example(self.violations, Violation(rule, seqs, text), KEPT)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    # --- input --------------------------------------------------------------------------

    def damaged(self, line: Damaged) -> None:
        seqs = () if line.after_seq is None else (line.after_seq,)
        self._report(7, seqs, f"damaged line skipped: {line}")

    def add(self, record: Record) -> None:
        self.records += 1
        seq: int = record["seq"]
        prev = self._prev_seq
        if prev is not None and seq != prev + 1:
            if seq > prev:
                self._report(7, (prev, seq), f"sequence gap: {seq - prev - 1} record(s) "
                             f"missing between seq {prev} and {seq}")
            else:
                self._report(7, (prev, seq), f"sequence goes back from {prev} to {seq}")
        self._prev_seq = seq
        run = record.get("run")
        if run != self._run:
            self._end_run()
            # A log that begins mid-run may hold answers to messages it lacks.
            self._partial = prev is None and seq != 1
            self._run = run
        kind = record["kind"]
        message = record.get("message", "")
        corr = record.get("corr")
        if kind == "tell" or kind == "ask":
            self._on_send(record, seq, kind, message, corr)
        else:
            self._on_answer(record, seq, kind, message, corr)

    def _on_send(self, record: Record, seq: int, kind: str, message: str, corr: Any) -> None:
        receiver = record.get("receiver", "")
        sender = record.get("sender", "")
        if corr is not None:
            self._sent[corr] = _Sent(seq, kind, message, sender, receiver)
        if message in WRITE_KINDS:
            if receiver != WRITER:
                self._report(1, (seq,), f"{message} from {sender} was sent to {receiver}, "
                             "not to the writer")
                return
            if message in FOREGROUND_KINDS:
                self._queued_writes[corr] = seq
            elif message == CHUNK:
                if self._chunk is not None:
                    self._report(2, (self._chunk[1], seq), f"a chunk was sent at seq {seq} "
                                 f"while the chunk of seq {self._chunk[1]} was in flight")
                self._chunk = (corr, seq)
            elif message == "writer.task_progress":
                self._on_progress(record, seq)
        elif kind == "tell" and message == "mirror.reconcile_begun":
            number = (record.get("fields") or {}).get("number")
            if self._reconcile is not None:
                self._report(4, (self._reconcile[0], seq),
                             f"mirror reconcile {number} began at seq {seq} while reconcile "
                             f"{self._reconcile[1]} (seq {self._reconcile[0]}) was running")
            self._reconcile = (seq, number)
        elif kind == "tell" and message == "mirror.reconciled":
            self._reconcile = None

    def _on_progress(self, record: Record, seq: int) -> None:
        fields = record.get("fields") or {}
        # The limiter's own clock when logged (a wall clock may step back), else `at`.
        at = fields.get("clock_s")
        if not isinstance(at, (int, float)):
            at = fields.get("at")
        if not isinstance(at, (int, float)):
            try:
                at = datetime.fromisoformat(record.get("ts", "")).timestamp()
            except ValueError:
                return
        task = (fields.get("task"), fields.get("version"))
        if fields.get("terminal"):
            # The run's forced last save, outside the budget; a next run starts afresh.
            self._progress.pop(task, None)
            return
        last = self._progress.get(task)
        if last is not None and at - last[0] < PROGRESS_INTERVAL_S:
            self._report(6, (last[1], seq), f"progress of task {task[0]}@{task[1]} saved "
                         f"{at - last[0]:.3f} s after the save of seq {last[1]} (at most one "
                         "a second, plus the terminal one)")
        self._progress[task] = (at, seq)

    def _on_answer(self, record: Record, seq: int, kind: str, message: str, corr: Any) -> None:
        sent = self._sent.pop(corr, None)
        if sent is None:
            if not self._partial:
                self._report(7, (seq,), f"{kind} to {message} #{corr} answers nothing in flight "
                             "(answered twice, or never sent)")
            return
        if sent.message != message or sent.receiver != record.get("sender"):
            self._report(7, (sent.seq, seq), f"{kind} #{corr} from {record.get('sender')} for "
                         f"{message} answers {sent.message} sent to {sent.receiver}")
        self._queued_writes.pop(corr, None)
        if self._chunk is not None and self._chunk[0] == corr:
            chunk_seq = self._chunk[1]
            self._chunk = None
            for write_corr, write_seq in list(self._queued_writes.items()):
                if write_seq < chunk_seq:
                    del self._queued_writes[write_corr]
                    self._report(2, (write_seq, chunk_seq, seq),
                                 f"the foreground write of seq {write_seq} was queued before "
                                 f"the chunk of seq {chunk_seq} but still waiting when that "
                                 f"chunk was answered (seq {seq})")
        if kind != "reply":
            return
        if message == "writer.fts_defer":
            fields = record.get("fields") or {}
            if fields.get("sources") is not None:  # None: nothing needed deferring
                since = fields.get("started_at")
                if self._deferred is not None and since is not None and \
                        since == self._deferred_since:
                    return  # more tables joined the deferral in effect (same start)
                if self._deferred is not None:
                    self._report(3, (self._deferred, seq), "FTS triggers deferred again while "
                                 f"the deferral of seq {self._deferred} was in effect")
                self._deferred, self._fts_known = seq, True
                self._deferred_since = fields.get("started_at")
        elif message == "writer.fts_restore":
            restored = _items((record.get("fields") or {}).get("tables"))
            if isinstance((record.get("fields") or {}).get("remaining"), dict):
                return  # some tables restored, the rest still deferred
            if restored:
                if self._deferred is None and self._fts_known:
                    self._report(3, (seq,), "FTS triggers restored without a deferral")
                self._deferred, self._fts_known = None, True
        elif message == "writer.fts_inspect":
            deferral = (record.get("fields") or {}).get("deferral")
            self._deferred = seq if isinstance(deferral, dict) else None
            self._deferred_since = deferral.get("started_at") if isinstance(deferral,
                                                                            dict) else None
            self._fts_known = True

    def _end_run(self) -> None:
        for corr, sent in self._sent.items():
            if sent.kind == "ask":
                self._report(7, (sent.seq,), f"ask {sent.message} #{corr} from {sent.sender} to "
                             f"{sent.receiver} was never answered")
        self._sent.clear()
        self._queued_writes.clear()
        self._chunk = None
        self._reconcile = None
        self._progress.clear()

    def finish(self) -> None:
        """The log ended: report what is still in flight."""
        self._end_run()
        if self._deferred is not None:
            self.notes.append(f"the log ends with FTS upkeep deferred since seq {self._deferred} "
                              "(persisted in that transaction; the next start restores it)")

    # --- output -------------------------------------------------------------------------

    def lines(self) -> list[str]:
        out = [str(v) for v in self.violations]
        if self.total > len(self.violations):
            out.append(f"... and {self.total - len(self.violations):,} more")
        out.extend(f"note: {n}" for n in self.notes)
        checked = ", ".join(str(r) for r in RULES)
        if self.total:
            per_rule = ", ".join(f"rule {r}: {n:,}" for r, n in sorted(self.counts.items()))
            out.append(f"{self.total:,} violation{'s' if self.total != 1 else ''} in "
                       f"{self.records:,} records ({per_rule})")
        else:
            out.append(f"no violations in {self.records:,} records (rules {checked} checked)")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "violations": self.total,
                "per_rule": {str(r): n for r, n in sorted(self.counts.items())},
                "shown": [v.as_dict() for v in self.violations], "notes": self.notes}


def _items(value: Any) -> int:
    """How many items a logged sequence holds (a list, or a summary `{"items": n}`)."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        return int(value.get("items", 0))
    return 0
