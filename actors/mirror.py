"""The Mirror actor: owns the MySQL connection and does the mirror's work, one step a message.

Each `mirror.step` does one unit the state machine (`sqlwarden.mirror.state`)
picks: a connect, one range of a reconcile or verify, or one outbox batch.
Outcomes go back to the machine as messages this actor tells itself, so the
message log shows them. Between two steps every other message is answered:
status, reconcile and verify asks, and stop.

What the mirror needs the Writer to apply (drained outbox rows, stored
ranges, quarantined rows) is asked for without waiting; an answer that
says the database waits (locked by another program, disk full) keeps the
request to send again (`resend`) after a backoff the machine decides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
from typing import Any

from sqlwarden.actors.base import DEFERRED, BaseActor
from sqlwarden.actors.bus import Answer, Envelope
from sqlwarden.config import Config
from sqlwarden.db.faults import wait_reason
from sqlwarden.effects import Tell
from sqlwarden.errors import MirrorError, UnexpectedMessage
from sqlwarden.mirror.quarantine import recorded
from sqlwarden.mirror.ranges import TableReport, stored_key, table_check
from sqlwarden.mirror.reconcile import Step
from sqlwarden.mirror.session import DrainOutcome, MirrorSession
from sqlwarden.mirror.state import Job, MirrorState, ViewBoard
from sqlwarden.protocol import (
    MIRROR,
    PROGRESS,
    WRITER,
    Drained,
    Message,
    MirrorBoot,
    MirrorDown,
    MirrorStatus,
    MirrorStep,
    MirrorUp,
    OutboxDrained,
    ProgressEvent,
    QuarantineMirrorRows,
    Reconcile,
    ReconcileBegun,
    Reconciled,
    Verify,
)
from sqlwarden.redact import Redactor


class _Run:
    """A reconcile or verify under way: its steps and when it began."""

    def __init__(self, job: Job, steps: Generator[Step, None, list[TableReport]],
                 started: float) -> None:
        self.job = job
        self.steps = steps
        self.started = started

    def ended(self, **outcome: Any) -> Reconciled:
        """The message that says this run ended, with `outcome` (tables, or error)."""
        return Reconciled(number=self.job.number, verify=self.job.kind == "verify",
                          seconds=round(time.monotonic() - self.started, 3), **outcome)


class MirrorActor(BaseActor):
    """Feeds the mirror's state machine; owns the session and the reconcile under way."""

    name = MIRROR

    #: A step blocked on a server that went silent lasts until the statement times out
    #: (`dialect.QUERY_TIMEOUT_S`); stopping the engine waits this long for it at most.
    stop_timeout_s = 30.0

    def __init__(self, *, config: Config, board: ViewBoard | None = None,
                 wall: Callable[[], float] = time.time, **kwargs: Any) -> None:
        """`board` is where the actor puts up its view for readers on other threads."""
        super().__init__(**kwargs)
        assert config.mirror is not None
        self.config = config
        self._wall = wall
        self.state = MirrorState(config.mirror, wall=wall)
        self.board = board if board is not None else ViewBoard()
        self.board.view = self.state.view
        self.session: MirrorSession | None = None
        self._run: _Run | None = None
        #: A Writer request that met a wait, kept to be sent again, and what follows it.
        self._held: tuple[Message, Callable[[], None]] | None = None

    def setup(self) -> None:
        # The connector is imported here, in the engine's process (see mirror.driver);
        # connecting waits for the first step, so a server away never delays the start.
        self.session = MirrorSession(self.config, redactor=Redactor(self.config.secrets),
                                     on_progress=self._progress, on_retry=self._retried)

    def teardown(self) -> None:
        # Still on the bus: it goes down and is built again, rather than stopped.
        down = self.bus.holds(self.name, self.actor_ref)
        run = self._end_run()
        if run is not None and down:
            # The successor runs the next reconcile in this same log: the log says this
            # one ended, without a message this stopping actor would never handle.
            self.bus.note(self.name, self.name, run.ended(error="the mirror actor went down"))
        if self.session is not None:
            self.session.close()
        self.perform(self.state.stop("the mirror actor went down; it is restarted and "
                                     "reconciles once connected" if down
                                     else "the engine is stopping"))

    def handle(self, message: Message, envelope: Envelope) -> Any:
        try:
            return self._route(message, envelope)
        finally:
            self.board.view = self.state.view

    def _route(self, message: Message, envelope: Envelope) -> Any:
        match message:
            case MirrorStatus():
                return self.state.view
            case MirrorStep(token=token):
                job = self.state.step(token)
                if job is not None:
                    self._do(job)
                return None
            case MirrorBoot():
                self.perform(self.state.boot())
                return None
            case Reconcile():
                self.perform(self.state.reconcile(envelope))
                return DEFERRED
            case Verify():
                self.perform(self.state.verify(envelope))
                return DEFERRED
            case MirrorUp():
                self.perform(self.state.up(message))
            case MirrorDown():
                self.perform(self.state.down(message))
            case ReconcileBegun():
                self.perform(self.state.begun(message))
            case Reconciled():
                self.perform(self.state.reconciled(message))
            case Drained():
                self.perform(self.state.drained(message))
            case _:
                raise UnexpectedMessage(self.name, message)
        return None

    # --- steps --------------------------------------------------------------------------

    def _do(self, job: Job) -> None:
        """One unit of work; any failure takes the mirror down (classified, retried)."""
        assert self.session is not None
        try:
            match job.kind:
                case "connect":
                    self.session.open()
                    self._tell(MirrorUp(driver=self.session.driver,
                                        server=self.session.server_version,
                                        node=self.session.node,
                                        reconcile=not self.session.holds_all))
                case "drain":
                    self._drain()
                case "resend":
                    assert self._held is not None
                    self._write(*self._held)
                case _:
                    self._advance(job)
        except Exception as exc:
            self._failed(exc)

    def _drain(self) -> None:
        assert self.session is not None
        batch = self.session.read_batch()
        if batch is None:
            self.perform(self.state.outbox_empty())
            return
        outcome = self.session.apply_batch(batch)
        refused = len(outcome.refused) - len(batch.unreadable)  # those were no upserts
        drained = self.state.applied(
            entries=batch.entries,
            upserts=sum(len(r) for r in batch.upserts.values()) - refused,
            deletes=sum(len(k) for k in batch.deletes.values()), upto_seq=batch.upto_seq,
            changed_at=batch.changed_at)
        done = OutboxDrained(upto_seq=batch.upto_seq, stale_ranges=batch.stale_ranges)
        quarantine = self._quarantine_of(outcome)
        if quarantine is None:
            self._write(done, lambda: self._tell(drained))
        else:
            # Recorded before the outbox rows go: a crash between repeats the batch.
            self._write(quarantine, lambda: self._write(done, lambda: self._tell(drained)))

    def _quarantine_of(self, outcome: DrainOutcome) -> QuarantineMirrorRows | None:
        """What the Writer must record of a drain's quarantined and released keys."""
        if not outcome.refused and not outcome.released:
            return None
        tables = {t.name: t for t in self.config.tables}
        add: list[tuple[str, Any, str, float]] = []
        for name in {r.table for r in outcome.refused}:
            add += recorded(tables[name], [r for r in outcome.refused if r.table == name],
                            self._wall())
        return QuarantineMirrorRows(
            add=tuple(add),
            clear=tuple((name, stored_key(tables[name], key))
                        for name, key in outcome.released))

    def _advance(self, job: Job) -> None:
        """The next range of the reconcile or verify `job`, starting it if need be."""
        assert self.session is not None
        if self._run is None:
            verify = job.kind == "verify"
            self._run = _Run(job, self.session.reconcile_steps(apply=not verify),
                             time.monotonic())
            self._tell(ReconcileBegun(number=job.number, verify=verify))
        run = self._run
        try:
            request = next(run.steps)
        except StopIteration as done:
            self._run = None
            reports: list[TableReport] = done.value
            self._tell(run.ended(tables=tuple(table_check(r) for r in reports)))
            return
        if request is None:
            self.perform(self.state.go_on())
            return
        self._write(request, lambda: self.perform(self.state.go_on()))

    def _write(self, message: Message, then: Callable[[], None]) -> None:
        """Ask the Writer to apply `message`, and `then()` once it has. An answer that
        waits (`faults.wait_reason`) holds the request to be sent again; any other
        failure takes the mirror down."""
        def answered(answer: Answer) -> None:
            try:
                reason = None if answer.error is None else wait_reason(
                    answer.error, path=self.config.database.path)
                if answer.error is None:
                    self._held = None
                    self.state.writer_done()
                    then()
                elif reason is not None:
                    self._held = (message, then)
                    self.perform(self.state.writer_waits(reason))
                else:
                    self._held = None
                    self._failed(answer.error)
            finally:
                self.board.view = self.state.view  # an answer is no message: put it up here

        try:
            self.request(WRITER, message, answered)
        except Exception as exc:  # never sent (the Writer stopped): the loop must not stall
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Whatever went wrong, the mirror lives on: classified, reported, retried."""
        assert self.session is not None
        reason = wait_reason(exc, path=self.config.database.path)
        if isinstance(exc, MirrorError):
            error = exc
        elif reason is not None:  # the local database, not the server: retried all the same
            error = MirrorError(f"mirror: {reason}: {exc}", retryable=True)
        else:
            error = self.session.error(exc, "mirror")
        run = self._end_run()
        # The server failed us (not the local database): the next connect starts with the
        # host after it.
        self.session.close(lost=reason is None and error.retryable)
        if run is not None:
            self._tell(run.ended(error=str(error)))
        self._tell(self.state.failure(error, waiting_for=reason))

    def _end_run(self) -> _Run | None:
        run, self._run = self._run, None
        if run is not None:
            with contextlib.suppress(Exception):  # it rolls back what it had not committed
                run.steps.close()
        return run

    def _tell(self, message: Message) -> None:
        """An outcome, told to this actor itself (so the message log has it)."""
        self.perform([Tell(MIRROR, message)])

    def _retried(self, total: int) -> None:
        """A transaction is sent again after a conflict: status shows it while it is."""
        self.state.retried(total)
        self.board.view = self.state.view

    def _progress(self, table: str, done: int, total: int | None) -> None:
        ended = total is not None and done >= total
        self.perform([Tell(PROGRESS, ProgressEvent(
            scope="mirror", name=table, processed=done, total=total,
            state="done" if ended else "running", terminal=ended))])
