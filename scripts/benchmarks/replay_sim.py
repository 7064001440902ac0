"""The machinery of the made-up message log (`scripts/bench replay`): records written as
`MessageLog` writes and rotates them, a clock and a queue of timed events, the Writer
that answers asks in arrival order with group commits, and the Progress actor that
every part reports to. What the engine's other actors do is built on this in
replay_source.py and replay_log.py.

Everything is drawn from one seeded `random.Random`, in event order: the log is the
same for the same seed and size (moving code between these modules must not reorder
a draw).
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import bench_fail

REPLAY_SEED = 8
#: Rotate as `message_log.max_mb: 64` does.
REPLAY_FILE_BYTES = 64 * 1024 * 1024
REPLAY_EPOCH_US = 1_795_000_000_000_000  # 2026-11-18T09:46:40Z
#: The Progress actor's monotonic clock (`clock_s` of its saves) at REPLAY_EPOCH_US.
REPLAY_MONOTONIC_S = 86_412.25
#: The Writer, in microseconds of log time: a group commit's own cost, and at most how
#: many foreground writes it joins; an actor takes a message PICKUP_US (the Writer) or
#: HANDLE_DELAY_US (the others) after it arrives and handles it in HANDLE_US.
COMMIT_US = 250
GROUP_MAX = 500
PICKUP_US = 15
HANDLE_DELAY_US = 30
HANDLE_US = 20
PROGRESS_SAVE_US = 1_000_000
FACADE, WRITER, SYNC, FTS, BACKFILL, PROGRESS, MIRROR = (
    "facade", "writer", "sync", "fts", "backfill", "progress", "mirror")
OK_WRITE = '{"changes":1,"last_rowid":0}'


def replay_fail(message: str) -> SystemExit:
    return bench_fail("replay", message)


def jsonl(value: Any) -> str:
    """`value` as the message log writes it: compact, not ASCII-escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RotatingFiles:
    """Lines into a message log's files as `MessageLog` rotates them: a file is full when the
    next line would take it past `max_bytes`. Closed, the newest is `base`, the one before
    `base.1`, and so on."""

    def __init__(self, base: Path, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.parts: list[Path] = []
        self.bytes = 0
        self._size = 0
        self._file = self._open()

    def _open(self) -> Any:
        self.parts.append(self.base.with_name(f"{self.base.name}.part{len(self.parts)}"))
        self._size = 0
        return open(self.parts[-1], "wb", buffering=1 << 20)

    def write(self, line: str) -> None:
        data = line.encode()
        if self._size and self._size + len(data) > self.max_bytes:
            self._file.close()
            self._file = self._open()
        self._file.write(data)
        self._size += len(data)
        self.bytes += len(data)

    def close(self) -> list[Path]:
        """Close the last file and give every file its rotated name; returns them oldest first."""
        self._file.close()
        files = []
        for age, part in enumerate(reversed(self.parts)):
            files.append(self.base if age == 0 else self.base.with_name(f"{self.base.name}.{age}"))
            part.rename(files[-1])
        return files[::-1]


@dataclass(slots=True)
class Job:
    """An ask waiting at the simulated Writer, and what its answer will be."""

    corr: int
    sender: str
    message: str
    service_us: int
    answer: str
    then: Callable[[], None] | None = None
    #: A foreground write: consecutive ones commit together.
    group: bool = False
    #: The `error` of the error record that answers it, when it fails.
    error: str | None = None


@dataclass(slots=True)
class TaskState:
    """A backfill task as the simulated Backfill and Progress actors track it."""

    name: str
    version: int
    bound: int
    after: int | None = None
    processed: int = 0
    rows: int = 100
    started_us: int = 0
    last_chunk_us: int = 0
    last_save_us: int | None = None


class Simulation:
    """The log, the clock and the event queue, the Writer and Progress: what every actor
    of the simulated engine sends through. `generate` in a subclass runs the engine."""

    def __init__(self, base: Path, records: int, seed: int = REPLAY_SEED) -> None:
        self.files = RotatingFiles(base, REPLAY_FILE_BYTES)
        self.records = records
        self.rng = random.Random(seed)
        self.seq = 0
        self.now = REPLAY_EPOCH_US
        self.last_ts = 0
        self.runs: list[str] = []
        self.run = ""
        self._sec = -1
        self._prefix = ""
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._corr = itertools.count(1)
        self._queue: deque[Job] = deque()
        self._writer_busy = False
        self.stopping = False
        self._stop_at = 0
        self._run_us = 0
        self.rowid = 5_000_000
        self.writer_messages = 0
        self.transactions = 0
        self.failed = 0

    # --- records ------------------------------------------------------------------------

    def _emit(self, kind: str, sender: str, receiver: str, message: str, payload: str,
              corr: int, started: int | None = None, error: str | None = None) -> None:
        self.seq += 1
        ts = self.now if self.now > self.last_ts else self.last_ts + 1
        self.now = self.last_ts = ts
        sec, micro = divmod(ts, 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        line = (f'{{"seq":{self.seq},"ts":"{self._prefix}.{micro:06d}+00:00","run":"{self.run}",'
                f'"kind":"{kind}","sender":"{sender}","receiver":"{receiver}",'
                f'"message":"{message}","fields":{payload},"corr":{corr}')
        if started is not None:
            line += f',"duration_ms":{round((ts - started) / 1000, 3)!r}'
        if error is not None:
            line += f',"error":{error}'
        self.files.write(line + "}\n")

    def tell(self, sender: str, receiver: str, message: str, payload: str = "{}") -> int:
        corr = next(self._corr)
        self._emit("tell", sender, receiver, message, payload, corr)
        return corr

    def ask(self, sender: str, receiver: str, message: str, payload: str = "{}") -> int:
        corr = next(self._corr)
        self._emit("ask", sender, receiver, message, payload, corr)
        return corr

    def reply(self, handler: str, sender: str, message: str, corr: int, payload: str,
              started: int) -> None:
        self._emit("reply", handler, sender, message, payload, corr, started)

    def later(self, delay_us: int, then: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay_us, next(self._order), then))

    def _run_events(self) -> None:
        """Fire the timed events in order until none is left, moving the clock to each."""
        while self._events:
            when, _, then = heapq.heappop(self._events)
            if when > self.now:
                self.now = when
            then()

    def handle(self, handler: str, sender: str, message: str, corr: int, answer: str = "{}",
               work: Callable[[], None] | None = None) -> None:
        """`handler` handles the message soon: `work` (which may send), then the reply."""
        def run() -> None:
            started = self.now
            if work is not None:
                work()
            self.now += HANDLE_US
            self.reply(handler, sender, message, corr, answer, started)
        self.later(HANDLE_DELAY_US, run)

    def notify(self, sender: str, receiver: str, message: str, payload: str = "{}",
               work: Callable[[], None] | None = None) -> None:
        """A tell, handled and answered soon."""
        corr = self.tell(sender, receiver, message, payload)
        self.handle(receiver, sender, message, corr, work=work)

    # --- the Writer ---------------------------------------------------------------------

    def write(self, sender: str, message: str, payload: str, service_us: int, answer: str,
              then: Callable[[], None] | None = None, *, group: bool = False,
              error: str | None = None) -> None:
        """Ask the Writer; it answers in arrival order (which keeps rule 2)."""
        corr = self.ask(sender, WRITER, message, payload)
        self._queue.append(Job(corr, sender, message, service_us, answer, then, group, error))
        if not self._writer_busy:
            self._writer_busy = True
            self.later(PICKUP_US, self._writer_start)

    def _writer_start(self) -> None:
        queue = self._queue
        jobs = [queue.popleft()]
        service = jobs[0].service_us
        if jobs[0].group:
            service += COMMIT_US
            while queue and queue[0].group and len(jobs) < GROUP_MAX:
                jobs.append(queue.popleft())
                service += jobs[-1].service_us
        started = self.now
        self.later(service, lambda: self._writer_done(jobs, started))

    def _writer_done(self, jobs: list[Job], started: int) -> None:
        self.transactions += 1
        for job in jobs:
            self.writer_messages += 1
            if job.error is None:
                self._emit("reply", WRITER, job.sender, job.message, job.answer, job.corr,
                           started)
            else:
                self.failed += 1
                self._emit("error", WRITER, job.sender, job.message, "{}", job.corr, started,
                           job.error)
            if job.then is not None:
                job.then()
        if self._queue:
            self.later(PICKUP_US, self._writer_start)
        else:
            self._writer_busy = False

    def _writer_status(self) -> str:
        return jsonl({"messages": self.writer_messages, "transactions": self.transactions,
                      "rows_written": self.writer_messages * 3, "failed_messages": self.failed,
                      "wal_frames": 4_000 + self.seq % 12_000, "wal_file_bytes": 67_108_864,
                      "wal_threshold_bytes": 67_108_864, "checkpoints": self.transactions // 900,
                      "forced_checkpoints": self.transactions // 900, "busy_checkpoints": 0,
                      "page_size": 4096, "variable_limit": 32766})

    # --- progress -----------------------------------------------------------------------

    def _progress(self, sender: str, task: TaskState | None, event: dict[str, Any]) -> None:
        """Tell the Progress actor; for a task it saves the progress at most once a second,
        and the terminal event always."""
        def work() -> None:
            if task is None:
                return
            now = self.now
            if not (event["terminal"] or task.last_save_us is None
                    or now - task.last_save_us >= PROGRESS_SAVE_US):
                return
            rate = (event["processed"] / max(1e-3, (now - task.started_us) / 1e6)
                    if event["processed"] else None)
            left = event["total"] - event["processed"]
            task.last_save_us = now
            self.write(PROGRESS, "writer.task_progress", jsonl({
                "task": task.name, "version": task.version, "rate_rows_s": rate,
                "eta_s": None if event["terminal"] or not rate else left / rate,
                "waiting": None, "at": now / 1e6, "terminal": event["terminal"],
                "clock_s": (now - REPLAY_EPOCH_US) / 1e6 + REPLAY_MONOTONIC_S}),
                120, OK_WRITE)
        self.notify(sender, PROGRESS, "progress.event", jsonl(event), work=work)
