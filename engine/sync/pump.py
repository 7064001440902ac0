"""The pump: one source run's reading, on a thread of its own.

The Sync actor launches a `Pump` per run, so its handlers never wait on a
file or an upstream. The pump reads the source's batches, sends each to the
Writer as a `SyncBatch` and keeps a few in flight, so reading the next batch
overlaps writing the last one. It announces a large backlog to the
FtsController (and ends that catch-up however the run ends), reports each
committed batch (`PumpProgress`) and, once every batch it sent is answered,
how the run ended (`PumpEnded`).

A batch the Writer could not apply for a reason that passes by itself (the
database locked by another program past the busy timeout, a full disk) does
not end the run: the pump says what it waits for, waits with backoff (a stop
ends the wait at once) and sends that batch and the ones after it again. Each
batch names the count of batches before it, so none is applied twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlwarden.config import Config, SourceConfig
from sqlwarden.db import faults
from sqlwarden.errors import EngineError, EngineStopped, SyncError
from sqlwarden.protocol import (
    BeginCatchUp,
    EndCatchUp,
    Message,
    PumpEnded,
    PumpProgress,
    SyncBatch,
)
from sqlwarden.sync.sources.base import Reader, SourceError
from sqlwarden.views import FtsLease, FtsView, SyncBatchResult

log = logging.getLogger(__name__)

#: Batches a pump keeps at the Writer at once.
IN_FLIGHT = 3


def resident_mb() -> float:
    """This process's resident memory now, in MB."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Ask = Callable[[str, Message], Any]
Tell = Callable[[str, Message], None]


class Pump:
    """Runs one source run on its own thread: read, send batches, end the FTS lease.

    It reports each committed batch to the Sync actor (`PumpProgress`) and,
    once every batch it sent is answered, how the run ended (`PumpEnded`).
    """

    def __init__(self, *, source: SourceConfig, run: int, reader: Reader, ask: Ask,
                 tell: Tell, config: Config, wall: Callable[[], float] = time.time,
                 memory_mb: Callable[[], float] = resident_mb) -> None:
        self.source = source
        self.run = run
        self.reader = reader
        self._ask = ask
        self._tell = tell
        self._fts = config.fts_deferral
        self._wall = wall
        self._memory_mb = memory_mb
        # A reader that waits on an upstream mid-batch (http) has a stop flag of
        # its own to look at while it waits: a stop sets that same flag.
        self.stop: threading.Event = getattr(reader, "stop", None) or threading.Event()
        self.rows = 0
        self.rejects = 0
        #: Records that went in (written or already equal); none with rejects fails the run.
        self.accepted = 0
        self.first_reject: str | None = None
        #: What the run waits out now (None while it goes on).
        self.waiting_for: str | None = None
        self.total: int | None = None
        self.lease: FtsLease | None = None
        self.fts_after: FtsView | None = None
        self.ended: PumpEnded | None = None
        #: True when `stop` ended the run before the source was read to its end.
        self.interrupted = False
        self._seq = 0
        self._thread = threading.Thread(target=self._main, name=f"sync-{source.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self._run()
            if self.rejects and not self.accepted and not self.interrupted:
                raise SyncError(f"source {self.source.name}: every record was rejected "
                                f"({self.rejects:,}); the first: {self.first_reject}",
                                source=self.source.name)
        except BaseException as exc:  # every way out is reported to the actor
            error = exc
        ended = self._ended(error)
        self.ended = ended
        with contextlib.suppress(EngineStopped):
            self._tell("sync", ended)

    def _ended(self, error: BaseException | None) -> PumpEnded:
        failure = None
        retry_after = None
        text = None
        if isinstance(error, SourceError):
            failure, retry_after, text = error.failure, error.retry_after_s, str(error)
        elif isinstance(error, SyncError):
            failure, text = "fatal", str(error)
        elif isinstance(error, EngineStopped):
            failure, text = "retry", f"the engine stopped: {error}"
        elif isinstance(error, EngineError):
            failure, text = "retry", str(error)
        elif error is not None:
            failure, text = "retry", f"{type(error).__name__}: {error}"
        return PumpEnded(source=self.source.name, run=self.run, rows=self.rows,
                         rejects=self.rejects, error=text, failure=failure,
                         retry_after_s=retry_after, note=self.reader.note,
                         stopped=self.interrupted and error is None,
                         fts_lease=self.lease, fts_after=self.fts_after)

    def _run(self) -> None:
        backlog = self.reader.backlog()
        log.info("source %s: run %d starts: %s", self.source.name, self.run, backlog.detail)
        self.total = backlog.rows
        self._progress(0, 0.0)
        if backlog.rows is not None:
            self._maybe_defer(backlog.rows)
        in_flight: deque[tuple[Any, SyncBatch, float]] = deque()
        primary: BaseException | None = None
        read = 0  # records read so far
        try:
            for prepared in self.reader.batches():
                if self.stop.is_set():
                    self.interrupted = True
                    break
                self._check_memory()
                read += prepared.rows + len(prepared.rejects)
                if self.lease is None and backlog.rows is None:
                    # The backlog shows itself as pages arrive.
                    self._maybe_defer(read)
                message = SyncBatch(source=self.source.name, run=self.run, seq=self._seq,
                                    tables=tuple(prepared.tables),
                                    rejects=tuple(prepared.rejects),
                                    files=tuple(prepared.files),
                                    on_reject=self.source.on_reject, at=self._wall())
                self._seq += 1
                in_flight.append((self._ask("writer", message), message, time.perf_counter()))
                while len(in_flight) >= IN_FLIGHT:
                    if not self._settle(in_flight):
                        break
        except BaseException as exc:
            primary = exc
            raise
        finally:
            # Whatever happened, learn what every batch sent did before ending. The
            # error that ended the loop stays the run's error: the batches after a
            # failed one are refused (they would leave a gap), which says nothing new.
            first_error: BaseException | None = None
            while in_flight:
                try:
                    if not self._settle(in_flight):
                        break
                except BaseException as exc:
                    in_flight.popleft()
                    first_error = first_error or exc
            try:
                if self.lease is not None:
                    self.fts_after = self._ask("fts", EndCatchUp(source=self.source.name)).get()
            except BaseException as exc:
                first_error = first_error or exc
            if first_error is not None and primary is None:
                raise first_error

    def _maybe_defer(self, rows: int) -> None:
        if self._fts.enabled and rows >= self._fts.threshold_rows and self.lease is None:
            self.lease = self._ask("fts", BeginCatchUp(source=self.source.name,
                                                       backlog_rows=rows)).get()

    def _settle(self, in_flight: deque[tuple[Any, SyncBatch, float]]) -> bool:
        """Take the oldest batch's answer off `in_flight`; False when a stop came first.

        A batch that met a wait (see `faults.wait_reason`) is sent again, with
        every batch after it (they were refused or failed alike), after a
        backoff; its error is raised only when it is not a wait.
        """
        attempt = 0
        while True:
            future, message, sent_at = in_flight[0]
            try:
                result: SyncBatchResult = future.get()
                break
            except EngineError as exc:
                reason = faults.wait_reason(exc)
                if reason is None:
                    raise
            # The batches after it were refused or failed alike; their answers say nothing.
            for later, _, _ in list(in_flight)[1:]:
                with contextlib.suppress(Exception):
                    later.get()
            attempt += 1
            self._wait(reason, attempt)
            if self.stop.wait(faults.backoff_s(attempt)):
                self.interrupted = True
                in_flight.clear()
                self._wait(None, 0)
                return False
            log.info("source %s: run %d sends batch %d again after waiting (%s)",
                     self.source.name, self.run, message.seq, reason)
            sent = [m for _, m, _ in in_flight]
            in_flight.clear()
            in_flight.extend((self._ask("writer", m), m, time.perf_counter()) for m in sent)
        in_flight.popleft()
        self.rows += result.rows
        self.rejects += result.rejects
        self.accepted += result.accepted
        if self.first_reject is None:
            self.first_reject = result.first_reject
        self.waiting_for = None
        self._progress(result.rows, time.perf_counter() - sent_at)
        return True

    def _wait(self, reason: str | None, attempt: int) -> None:
        if reason is not None and attempt == 1:
            log.warning("source %s: run %d waits: %s", self.source.name, self.run, reason)
        self.waiting_for = reason
        self._progress(0, 0.0)

    def _progress(self, batch_rows: int, batch_s: float) -> None:
        with contextlib.suppress(EngineStopped):
            self._tell("sync", PumpProgress(source=self.source.name, run=self.run,
                                            rows=self.rows, rejects=self.rejects,
                                            batch_rows=batch_rows, batch_s=batch_s,
                                            total=self.total, waiting_for=self.waiting_for))

    def _check_memory(self) -> None:
        limit = self.source.memory_limit_mb
        used = self._memory_mb()
        if used > limit:
            raise SourceError(f"memory guard: the process uses {used:,.0f} MB, over "
                              f"memory_limit_mb {limit:,} for source {self.source.name}; "
                              "the run stopped")


def stopped_note(note: str | None) -> str:
    return "stopped with the engine" + (f"; {note}" if note else "")

